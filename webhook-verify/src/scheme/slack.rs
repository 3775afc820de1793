//! Slack: `X-Slack-Signature: v0=<hex HMAC-SHA256(secret, "v0:" ts ":" body)>` with
//! `X-Slack-Request-Timestamp: ts`. Slack's docs reject |now − ts| > 5 minutes, so
//! future timestamps count too.

use std::time::Duration;

use super::{header, malformed, set, unix_seconds};
use crate::crypto::{ct_eq, hex_decode_exact, hmac_sha256};
use crate::verdict::{check_window, Future};
use crate::{SignedRequest, Verdict};

const SIGNATURE: &str = "X-Slack-Signature";
const TIMESTAMP: &str = "X-Slack-Request-Timestamp";

pub(crate) fn verify(
    key: &[u8],
    req: &SignedRequest<'_>,
    now: i64,
    tolerance: Duration,
) -> Result<(), Verdict> {
    let sig = header(req, SIGNATURE)?;
    let ts_text = header(req, TIMESTAMP)?;
    let ts = unix_seconds(TIMESTAMP, ts_text)?;
    let sig: [u8; 32] = sig
        .strip_prefix("v0=")
        .and_then(hex_decode_exact)
        .ok_or(malformed(SIGNATURE, "expected v0=<64 hex digits>"))?;
    // The base string uses the timestamp exactly as sent.
    if !ct_eq(&tag(key, ts_text, req.body), &sig) {
        return Err(Verdict::InvalidSignature);
    }
    check_window(ts, now, tolerance, Future::Reject)
}

pub(crate) fn sign(key: &[u8], req: &SignedRequest<'_>, now: i64) -> Vec<(String, String)> {
    let ts = now.to_string();
    let sig = hex::encode(tag(key, &ts, req.body));
    vec![set(TIMESTAMP, ts), set(SIGNATURE, format!("v0={sig}"))]
}

fn tag(key: &[u8], ts: &str, body: &[u8]) -> [u8; 32] {
    hmac_sha256(key, &[b"v0:", ts.as_bytes(), b":", body])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{flip_byte, flip_char, headers, remove_header};

    // Published vector: docs.slack.dev (api.slack.com) "Verifying requests from Slack",
    // the step-by-step walk-through of a slash-command request.
    const SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";
    const TS: i64 = 1_531_420_618;
    const BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
    const TOL: Duration = Duration::from_secs(300);

    fn hs(sig: &str, ts: &str) -> Vec<(String, Vec<u8>)> {
        headers(&[
            ("X-Slack-Request-Timestamp", ts),
            ("X-Slack-Signature", sig),
        ])
    }

    fn check(key: &[u8], sig: &str, body: &[u8], now: i64) -> Result<(), Verdict> {
        let hs = hs(sig, &TS.to_string());
        let req = SignedRequest {
            method: "POST",
            url: "https://x.example/slack",
            headers: &hs,
            body,
        };
        verify(key, &req, now, TOL)
    }

    #[test]
    fn published_vector_verifies_and_reproduces() {
        assert_eq!(check(SECRET, SIG, BODY, TS), Ok(()));
        let none = headers(&[]);
        let req = SignedRequest {
            method: "POST",
            url: "https://x.example/slack",
            headers: &none,
            body: BODY,
        };
        assert_eq!(
            sign(SECRET, &req, TS),
            vec![set(TIMESTAMP, TS.to_string()), set(SIGNATURE, SIG)]
        );
    }

    #[test]
    fn one_changed_byte_fails() {
        let bad = Err(Verdict::InvalidSignature);
        assert_eq!(check(SECRET, SIG, &flip_byte(BODY, 10), TS), bad);
        assert_eq!(check(&flip_byte(SECRET, 0), SIG, BODY, TS), bad);
        assert_eq!(check(SECRET, &flip_char(SIG, 10), BODY, TS), bad);
    }

    #[test]
    fn five_minutes_either_way() {
        assert_eq!(check(SECRET, SIG, BODY, TS + 300), Ok(()));
        assert_eq!(check(SECRET, SIG, BODY, TS - 300), Ok(()));
        assert_eq!(
            check(SECRET, SIG, BODY, TS + 301),
            Err(Verdict::StaleTimestamp {
                skew_secs: 301,
                tolerance_secs: 300
            })
        );
        assert_eq!(
            check(SECRET, SIG, BODY, TS - 301),
            Err(Verdict::FutureTimestamp {
                skew_secs: 301,
                tolerance_secs: 300
            })
        );
    }

    #[test]
    fn missing_and_malformed_headers() {
        let now = TS;
        let mut h = hs(SIG, &TS.to_string());
        remove_header(&mut h, TIMESTAMP);
        let req = SignedRequest {
            method: "POST",
            url: "https://x.example/slack",
            headers: &h,
            body: BODY,
        };
        assert_eq!(
            verify(SECRET, &req, now, TOL),
            Err(Verdict::MissingHeader(TIMESTAMP))
        );
        let h = hs(SIG, "yesterday");
        let req = SignedRequest { headers: &h, ..req };
        assert_eq!(
            verify(SECRET, &req, now, TOL),
            Err(malformed(TIMESTAMP, "expected a unix timestamp in seconds"))
        );
        for sig in [&SIG[3..], "v1=a2114d57", "v0=xyz"] {
            assert_eq!(
                check(SECRET, sig, BODY, now),
                Err(malformed(SIGNATURE, "expected v0=<64 hex digits>")),
                "{sig}"
            );
        }
    }
}

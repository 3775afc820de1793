//! Paddle Billing: `Paddle-Signature: ts=<unix>;h1=<hex HMAC-SHA256(secret, "ts:body")>`.
//! Several `h1` may appear while a secret rotates; any match will do. As in
//! paddle-node-sdk, only the age is bounded, 5 s by default.

use std::time::Duration;

use super::{set, TimestampedHex};
use crate::crypto::hmac_sha256;
use crate::verdict::Future;
use crate::{SignedRequest, Verdict};

const SIGNATURE: &str = "Paddle-Signature";

const LAYOUT: TimestampedHex = TimestampedHex {
    header: SIGNATURE,
    separator: ';',
    ts_key: "ts",
    sig_key: "h1",
    no_ts: "no ts=<timestamp> element",
    no_sig: "no h1=<signature> element",
};

pub(crate) fn verify(
    key: &[u8],
    req: &SignedRequest<'_>,
    now: i64,
    tolerance: Duration,
) -> Result<(), Verdict> {
    LAYOUT.verify(
        req,
        |ts| tag(key, ts, req.body),
        now,
        tolerance,
        Future::Accept,
    )
}

pub(crate) fn sign(key: &[u8], req: &SignedRequest<'_>, now: i64) -> Vec<(String, String)> {
    let sig = hex::encode(tag(key, now, req.body));
    vec![set(SIGNATURE, format!("ts={now};h1={sig}"))]
}

fn tag(key: &[u8], ts: i64, body: &[u8]) -> [u8; 32] {
    hmac_sha256(key, &[ts.to_string().as_bytes(), b":", body])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::malformed;
    use crate::testutil::{flip_byte, flip_char, headers};

    // Published vectors: PaddleHQ/paddle-node-sdk,
    // src/__tests__/notifications/webhooks-validator.test.ts. 1698796800 is
    // 2023-11-01T00:00:00Z, the test's fake "now".
    const SECRET: &[u8] = b"VALID_SECRET";
    const BODY: &[u8] = br#"{"data": ["1", "2"]}"#;
    const TS: i64 = 1_698_796_800;
    const VALUE: &str =
        "ts=1698796800;h1=a300428748dce5c70e4da19bffd60769591ea969c99dea3105d0ec9612cf43f9";
    const TOL: Duration = Duration::from_secs(5);

    fn check(key: &[u8], value: &str, body: &[u8], now: i64) -> Result<(), Verdict> {
        let hs = headers(&[("paddle-signature", value)]);
        let req = SignedRequest {
            method: "POST",
            url: "https://x.example/",
            headers: &hs,
            body,
        };
        verify(key, &req, now, TOL)
    }

    #[test]
    fn published_vectors_verify_and_reproduce() {
        assert_eq!(check(SECRET, VALUE, BODY, TS), Ok(()));
        // "Valid signature with multiple hashes".
        assert_eq!(
            check(
                SECRET,
                "ts=1698796800;h1=28981e941fae76e53db32f3d2a83cb69db41476595e84e1970a1b5d98f62b261;h1=28981e941fae76e53db32f3d2a83cb69db41476595e84e1970a1b5d98f62b261;h2=RANDOM_HASH",
                br#"{"data": "value"}"#,
                TS
            ),
            Ok(())
        );
        let hs = headers(&[]);
        let req = SignedRequest {
            method: "POST",
            url: "https://x.example/",
            headers: &hs,
            body: BODY,
        };
        assert_eq!(sign(SECRET, &req, TS), vec![set(SIGNATURE, VALUE)]);
    }

    #[test]
    fn one_changed_byte_fails() {
        let bad = Err(Verdict::InvalidSignature);
        // The SDK's own cases: another secret, and the body with more spaces.
        assert_eq!(check(b"INVALID_VALID_SECRET", VALUE, BODY, TS), bad);
        assert_eq!(check(SECRET, VALUE, br#"{ "data": [ "1", "2" ]}"#, TS), bad);
        assert_eq!(check(SECRET, VALUE, &flip_byte(BODY, 4), TS), bad);
        assert_eq!(check(&flip_byte(SECRET, 0), VALUE, BODY, TS), bad);
        assert_eq!(
            check(SECRET, &flip_char(VALUE, VALUE.len() - 6), BODY, TS),
            bad
        );
    }

    #[test]
    fn rotated_h1_list_passes_if_any_matches() {
        let other = "28981e941fae76e53db32f3d2a83cb69db41476595e84e1970a1b5d98f62b261";
        let value = format!("ts={TS};h1={other};h1={}", &VALUE[17..]);
        assert_eq!(check(SECRET, &value, BODY, TS), Ok(()));
    }

    #[test]
    fn five_second_tolerance_as_the_sdk_tests() {
        assert_eq!(check(SECRET, VALUE, BODY, TS + 1), Ok(()));
        assert_eq!(check(SECRET, VALUE, BODY, TS + 5), Ok(()));
        assert_eq!(
            check(SECRET, VALUE, BODY, TS + 6),
            Err(Verdict::StaleTimestamp {
                skew_secs: 6,
                tolerance_secs: 5
            })
        );
        // The SDK's "InValid timestamp" case (ts=9876 with the h1 made for 1698796800):
        // the signature covers ts, so it fails as a signature before age is considered.
        assert_eq!(
            check(SECRET, &VALUE.replace("1698796800", "9876"), BODY, TS),
            Err(Verdict::InvalidSignature)
        );
        // paddle-node-sdk bounds the age only.
        assert_eq!(check(SECRET, VALUE, BODY, TS - 60), Ok(()));
    }

    #[test]
    fn missing_and_malformed_headers() {
        // The SDK's "validate header" cases.
        for (value, reason) in [
            ("invalid_header", "no ts=<timestamp> element"),
            ("h1=invalid_header", "no ts=<timestamp> element"),
            ("ts=1234;h2=invalid_header", "no h1=<signature> element"),
        ] {
            assert_eq!(
                check(SECRET, value, BODY, TS),
                Err(malformed(SIGNATURE, reason)),
                "{value}"
            );
        }
        assert_eq!(
            check(SECRET, "ts=1234;h1=invalid_signature", BODY, TS),
            Err(Verdict::InvalidSignature)
        );
    }
}

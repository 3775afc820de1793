//! Webhook signatures on the client: each tunnel's verifiers (`--verify`, config
//! `verify`), the verdict recorded with every exchange, enforcement before the target
//! sees a request (`--verify-enforce`), and re-signing replays.
//!
//! Secrets stay on this machine; nothing here logs or prints them (`Verifier`'s
//! `Debug` masks keys). Verification runs on the raw body bytes as they crossed the
//! tunnel, against the public URL the sender used (`X-Forwarded-Proto` +
//! `X-Forwarded-Host` from the relay, then the request's path and query).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use webhook_verify::{SignedRequest, Verdict, Verifier};

/// Largest body read before forwarding when enforcing (413 beyond), and the most
/// bytes kept to verify in report-only mode (larger bodies are "unverifiable").
pub const VERIFY_BODY_CAP: usize = 25 * 1024 * 1024;

/// What the client does for one tunnel beyond forwarding.
#[derive(Debug, Clone, Default)]
pub struct TunnelRules {
    /// Verifiers; a request passes when any one of them verifies it.
    pub verifiers: Vec<Verifier>,
    /// Refuse (401) requests that do not verify, before the target sees them.
    pub enforce: bool,
    /// Replace the Host header with the target's `HOST:PORT` (applied here, not at
    /// the relay: only the client knows the target).
    pub rewrite_host: bool,
}

impl TunnelRules {
    /// Whether any signature work is needed.
    pub fn verifies(&self) -> bool {
        !self.verifiers.is_empty()
    }
}

/// A verdict as recorded with an exchange and shown in the console, `--json` events
/// and the inspector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureCheck {
    /// Provider spec name (`stripe`), empty when unverifiable before choosing one.
    pub provider: String,
    /// `valid`, `invalid_signature`, `stale_timestamp`, `future_timestamp`,
    /// `missing_header`, `malformed` or `unverifiable`.
    pub result: String,
    /// The verdict as a sentence (`signature valid but timestamp is 301 s old …`).
    pub detail: String,
}

impl SignatureCheck {
    /// Whether the request verified.
    pub fn is_valid(&self) -> bool {
        self.result == "valid"
    }

    fn of(provider: webhook_verify::Provider, v: &Verdict) -> Self {
        let result = match v {
            Verdict::Valid => "valid",
            Verdict::InvalidSignature => "invalid_signature",
            Verdict::StaleTimestamp { .. } => "stale_timestamp",
            Verdict::FutureTimestamp { .. } => "future_timestamp",
            Verdict::MissingHeader(_) => "missing_header",
            Verdict::Malformed { .. } => "malformed",
        };
        Self {
            provider: provider.spec_name().to_owned(),
            result: result.to_owned(),
            detail: v.to_string(),
        }
    }

    /// The verdict for a body that could not be kept whole.
    pub fn unverifiable(verifiers: &[Verifier], why: String) -> Self {
        Self {
            provider: verifiers
                .first()
                .map(|v| v.provider().spec_name().to_owned())
                .unwrap_or_default(),
            result: "unverifiable".to_owned(),
            detail: why,
        }
    }

    /// A console fragment: `✓ stripe` or `✗ stripe: signature does not match`.
    pub fn console(&self) -> String {
        if self.is_valid() {
            format!("sig ok ({})", self.provider)
        } else {
            format!("sig {} ({}: {})", self.result, self.provider, self.detail)
        }
    }
}

/// The public URL the sender signed: scheme and host from the relay's
/// `X-Forwarded-Proto`/`X-Forwarded-Host` (else `Host`), then `uri`.
pub fn public_url(headers: &[(String, Vec<u8>)], uri: &str) -> String {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .map(|v| v.split(',').next().unwrap_or(v).trim().to_owned())
    };
    let proto = get("x-forwarded-proto").unwrap_or_else(|| "http".into());
    let host = get("x-forwarded-host")
        .or_else(|| get("host"))
        .unwrap_or_default();
    format!("{proto}://{host}{uri}")
}

/// Seconds since the epoch of `t`.
pub fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Checks a request against the tunnel's verifiers at `at`; `None` without verifiers.
pub fn check(
    verifiers: &[Verifier],
    method: &str,
    uri: &str,
    headers: &[(String, Vec<u8>)],
    body: &[u8],
    at: SystemTime,
) -> Option<SignatureCheck> {
    let url = public_url(headers, uri);
    let req = SignedRequest {
        method,
        url: &url,
        headers,
        body,
    };
    webhook_verify::verify_any(verifiers, &req, unix(at)).map(|(p, v)| SignatureCheck::of(p, &v))
}

/// Signs a replay afresh: replaces the provider's signature headers in `headers`
/// (keeping the rest) so the app's own verification passes at `now`. Answers which
/// provider signed, `Ok(None)` when no verifier fits the request.
pub fn resign(
    verifiers: &[Verifier],
    method: &str,
    uri: &str,
    headers: &mut Vec<(String, Vec<u8>)>,
    body: &[u8],
    now: SystemTime,
) -> Result<Option<webhook_verify::Provider>, webhook_verify::SignError> {
    let url = public_url(headers, uri);
    let fresh = {
        let req = SignedRequest {
            method,
            url: &url,
            headers,
            body,
        };
        let Some(signer) = webhook_verify::signer_for(verifiers, &req) else {
            return Ok(None);
        };
        (signer.provider(), signer.sign(&req, unix(now))?)
    };
    let (provider, set) = fresh;
    for (name, value) in set {
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
        headers.push((name, value.into_bytes()));
    }
    Ok(Some(provider))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn public_url_uses_the_forwarded_headers() {
        let headers = h(&[
            ("host", "127.0.0.1:3000"),
            ("X-Forwarded-Proto", "https"),
            ("x-forwarded-host", "pay.tunnel.example"),
        ]);
        assert_eq!(
            public_url(&headers, "/sms?a=1"),
            "https://pay.tunnel.example/sms?a=1"
        );
        assert_eq!(
            public_url(&h(&[("host", "a.localhost:8080")]), "/"),
            "http://a.localhost:8080/"
        );
    }

    #[test]
    fn resigned_requests_verify_and_stale_ones_do_not() {
        let v = vec![Verifier::from_spec("stripe:whsec_test_secret").unwrap()];
        let body = br#"{"id":"evt_1"}"#;
        let then = UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let mut headers = h(&[("content-type", "application/json")]);
        assert_eq!(
            resign(&v, "POST", "/hook", &mut headers, body, then).unwrap(),
            Some(webhook_verify::Provider::Stripe)
        );
        let ok = check(&v, "POST", "/hook", &headers, body, then).unwrap();
        assert!(ok.is_valid(), "{ok:?}");
        let later = then + std::time::Duration::from_secs(301);
        let stale = check(&v, "POST", "/hook", &headers, body, later).unwrap();
        assert_eq!(stale.result, "stale_timestamp");
        let bad = check(&v, "POST", "/hook", &headers, b"{}", then).unwrap();
        assert_eq!(bad.result, "invalid_signature");
        let missing = check(&v, "POST", "/hook", &[], body, then).unwrap();
        assert_eq!(missing.result, "missing_header");
        assert!(check(&[], "POST", "/", &[], b"", then).is_none());
        let mut again = headers.clone();
        resign(&v, "POST", "/hook", &mut again, body, later).unwrap();
        assert_eq!(
            again
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("stripe-signature"))
                .count(),
            1
        );
        assert!(check(&v, "POST", "/hook", &again, body, later)
            .unwrap()
            .is_valid());
    }
}

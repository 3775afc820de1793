//! Standard Webhooks and Svix: `webhook-id`, `webhook-timestamp`, `webhook-signature`
//! (or the same under `svix-*`). The signed content is `<id>.<timestamp>.<body>`; the
//! signature header is a space-separated list of `v1,<base64 HMAC-SHA256>` (key = the
//! base64-decoded part of `whsec_…`) and/or `v1a,<base64 Ed25519>` entries, any of
//! which may match so that keys can rotate. Timestamps are bounded both ways.

use std::time::Duration;

use super::{header_any, malformed, set, unix_seconds};
use crate::crypto::{
    b64_decode_exact, b64_encode, ct_eq, ed25519_sign, ed25519_verify, hmac_sha256, sha256,
};
use crate::verdict::{check_window, Future};
use crate::verifier::Key;
use crate::{Provider, SignError, SignedRequest, Verdict};

/// Header names, the provider's own spelling first; each falls back to the other
/// spelling, as the Svix libraries do.
struct Names {
    id: [&'static str; 2],
    timestamp: [&'static str; 2],
    signature: [&'static str; 2],
}

const STANDARD: Names = Names {
    id: ["webhook-id", "svix-id"],
    timestamp: ["webhook-timestamp", "svix-timestamp"],
    signature: ["webhook-signature", "svix-signature"],
};

const SVIX: Names = Names {
    id: ["svix-id", "webhook-id"],
    timestamp: ["svix-timestamp", "webhook-timestamp"],
    signature: ["svix-signature", "webhook-signature"],
};

fn names(provider: Provider) -> &'static Names {
    if provider == Provider::Svix {
        &SVIX
    } else {
        &STANDARD
    }
}

pub(crate) fn verify(
    provider: Provider,
    key: &Key,
    req: &SignedRequest<'_>,
    now: i64,
    tolerance: Duration,
) -> Result<(), Verdict> {
    let names = names(provider);
    let sig_field = names.signature[0];
    let signatures = header_any(req, &names.signature)?;
    let id = header_any(req, &names.id)?;
    let ts = unix_seconds(names.timestamp[0], header_any(req, &names.timestamp)?)?;
    let (version, no_entry) = match key {
        Key::Hmac(_) => ("v1", "no v1,<base64> signature in the list"),
        Key::Ed25519Public(_) | Key::Ed25519Private { .. } => {
            ("v1a", "no v1a,<base64> signature in the list")
        }
    };
    let mut candidates = signatures
        .split_whitespace()
        .filter_map(|entry| entry.split_once(','))
        .filter(|(v, _)| *v == version)
        .map(|(_, sig)| sig)
        .peekable();
    if candidates.peek().is_none() {
        return Err(malformed(sig_field, no_entry));
    }
    let ts_text = ts.to_string();
    let content: [&[u8]; 5] = [id.as_bytes(), b".", ts_text.as_bytes(), b".", req.body];
    let matched = match key {
        Key::Hmac(secret) => {
            let expected = hmac_sha256(secret.expose(), &content);
            candidates
                .filter_map(b64_decode_exact::<32>)
                .any(|sig| ct_eq(&sig, &expected))
        }
        Key::Ed25519Public(public) | Key::Ed25519Private { public, .. } => candidates
            .filter_map(b64_decode_exact::<64>)
            .any(|sig| ed25519_verify(public, &content, &sig)),
    };
    if !matched {
        return Err(Verdict::InvalidSignature);
    }
    check_window(ts, now, tolerance, Future::Reject)
}

pub(crate) fn sign(
    provider: Provider,
    key: &Key,
    req: &SignedRequest<'_>,
    now: i64,
) -> Result<Vec<(String, String)>, SignError> {
    let names = names(provider);
    let ts = now.to_string();
    // Keep the sender's message id (receivers deduplicate on it); a request that has
    // none gets one derived from its content, since this crate has no randomness.
    let id = match header_any(req, &names.id) {
        Ok(id) => id.to_owned(),
        Err(_) => format!("msg_{}", hex::encode(&sha256(req.body)[..12])),
    };
    let content: [&[u8]; 5] = [id.as_bytes(), b".", ts.as_bytes(), b".", req.body];
    let signature = match key {
        Key::Hmac(secret) => format!("v1,{}", b64_encode(&hmac_sha256(secret.expose(), &content))),
        Key::Ed25519Private { seed, .. } => {
            // Verifier::new only stores seeds that ring accepted.
            let sig = ed25519_sign(seed.expose(), &content).expect("seed was validated");
            format!("v1a,{}", b64_encode(&sig))
        }
        Key::Ed25519Public(_) => return Err(SignError::PublicKeyOnly(provider)),
    };
    Ok(vec![
        set(names.id[0], id),
        set(names.timestamp[0], ts),
        set(names.signature[0], signature),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{flip_byte, flip_char, headers, remove_header};
    use crate::Verifier;

    // Published vector: the Standard Webhooks reference libraries' sign tests
    // (standard-webhooks/standard-webhooks, libraries/*: "testSignFunctionWorks") and
    // the Svix docs' "Verifying webhooks manually" example.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    // Published vector: standard-webhooks libraries/go/webhook_asymmetric_test.go,
    // TestAsymmetricWebhookSign (seed = base64 of "TESTSIGNINGKEYDONOTUSETHISFORANY").
    const ED_SEED: &str = "whsk_VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk=";
    const ED_SIG: &str = "v1a,tQ9V2XOqn7jL/DQenEFpqIugdBVtiMmER5mhSkXBNwM0mkATuDe6KYYUuxqtaiHeYGb7KaaBRdM5WqyeFiL8Ag==";
    // Its public key, derived independently (Python `cryptography`) from that seed.
    const ED_PUBLIC: &str = "whpk_ZlN4eg7dSSqi0moX9hQUk3orrOouK3QVQSlJa248c/g=";

    fn std_headers(prefix: &str, sig: &str) -> Vec<(String, Vec<u8>)> {
        headers(&[
            (&format!("{prefix}-id"), ID),
            (&format!("{prefix}-timestamp"), &TS.to_string()),
            (&format!("{prefix}-signature"), sig),
        ])
    }

    fn check_with(spec: &str, hs: &[(String, Vec<u8>)], body: &[u8], now: i64) -> Verdict {
        let req = SignedRequest {
            method: "POST",
            url: "https://x.example/",
            headers: hs,
            body,
        };
        Verifier::from_spec(spec).unwrap().verify(&req, now)
    }

    fn spec(provider: &str, key: &str) -> String {
        format!("{provider}:{key}")
    }

    #[test]
    fn published_hmac_vector_verifies_under_both_header_sets() {
        for provider in ["standardwebhooks", "svix"] {
            for prefix in ["webhook", "svix"] {
                let hs = std_headers(prefix, SIG);
                assert_eq!(
                    check_with(&spec(provider, SECRET), &hs, BODY, TS),
                    Verdict::Valid,
                    "{provider} {prefix}"
                );
            }
        }
        // The whsec_ prefix is optional.
        let hs = std_headers("webhook", SIG);
        assert_eq!(
            check_with("svix:MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &hs, BODY, TS),
            Verdict::Valid
        );
    }

    #[test]
    fn published_hmac_vector_reproduces() {
        let hs = headers(&[("webhook-id", ID)]);
        let req = SignedRequest {
            method: "POST",
            url: "https://x.example/",
            headers: &hs,
            body: BODY,
        };
        let v = Verifier::from_spec(&spec("standardwebhooks", SECRET)).unwrap();
        assert_eq!(
            v.sign(&req, TS).unwrap(),
            vec![
                set("webhook-id", ID),
                set("webhook-timestamp", TS.to_string()),
                set("webhook-signature", SIG),
            ]
        );
        let v = Verifier::from_spec(&spec("svix", SECRET)).unwrap();
        assert_eq!(v.sign(&req, TS).unwrap()[2], set("svix-signature", SIG));
    }

    #[test]
    fn published_ed25519_vector_signs_and_verifies() {
        let hs = headers(&[("webhook-id", ID)]);
        let req = SignedRequest {
            method: "POST",
            url: "https://x.example/",
            headers: &hs,
            body: BODY,
        };
        let signer = Verifier::from_spec(&spec("standardwebhooks", ED_SEED)).unwrap();
        assert_eq!(
            signer.sign(&req, TS).unwrap()[2],
            set("webhook-signature", ED_SIG)
        );
        let hs = std_headers("webhook", ED_SIG);
        for key in [ED_PUBLIC, ED_SEED] {
            assert_eq!(
                check_with(&spec("standardwebhooks", key), &hs, BODY, TS),
                Verdict::Valid,
                "{key}"
            );
        }
        let bad = Verdict::InvalidSignature;
        let s = spec("standardwebhooks", ED_PUBLIC);
        assert_eq!(check_with(&s, &hs, &flip_byte(BODY, 3), TS), bad);
        let flipped = std_headers("webhook", &flip_char(ED_SIG, 10));
        assert_eq!(check_with(&s, &flipped, BODY, TS), bad);
        // An HMAC key finds no v1 entry in an Ed25519-only list, and vice versa.
        assert_eq!(
            check_with(&spec("standardwebhooks", SECRET), &hs, BODY, TS),
            malformed("webhook-signature", "no v1,<base64> signature in the list")
        );
        let hmac_only = std_headers("webhook", SIG);
        assert_eq!(
            check_with(&s, &hmac_only, BODY, TS),
            malformed("webhook-signature", "no v1a,<base64> signature in the list")
        );
    }

    #[test]
    fn one_changed_byte_fails() {
        let s = spec("standardwebhooks", SECRET);
        let hs = std_headers("webhook", SIG);
        let bad = Verdict::InvalidSignature;
        assert_eq!(check_with(&s, &hs, &flip_byte(BODY, 2), TS), bad);
        assert_eq!(
            check_with(
                "standardwebhooks:whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSx",
                &hs,
                BODY,
                TS
            ),
            bad
        );
        let flipped = std_headers("webhook", &flip_char(SIG, 10));
        assert_eq!(check_with(&s, &flipped, BODY, TS), bad);
        // The id is signed.
        let mut other_id = hs.clone();
        other_id[0].1 = b"msg_p5jXN8AQM9LWM0D4loKWxJel".to_vec();
        assert_eq!(check_with(&s, &other_id, BODY, TS), bad);
    }

    #[test]
    fn rotated_signature_lists_pass_if_any_entry_matches() {
        let s = spec("standardwebhooks", SECRET);
        for list in [
            format!("v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= {SIG}"),
            format!("{SIG} v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="),
            format!("v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v1,!!notbase64 {SIG}"),
            format!("{ED_SIG} {SIG}"),
        ] {
            let hs = std_headers("webhook", &list);
            assert_eq!(check_with(&s, &hs, BODY, TS), Verdict::Valid, "{list}");
        }
        let hs = std_headers(
            "webhook",
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v1,bm9wZQ==",
        );
        assert_eq!(check_with(&s, &hs, BODY, TS), Verdict::InvalidSignature);
    }

    #[test]
    fn timestamps_bounded_both_ways() {
        let s = spec("svix", SECRET);
        let hs = std_headers("svix", SIG);
        assert_eq!(check_with(&s, &hs, BODY, TS + 300), Verdict::Valid);
        assert_eq!(check_with(&s, &hs, BODY, TS - 300), Verdict::Valid);
        assert_eq!(
            check_with(&s, &hs, BODY, TS + 301),
            Verdict::StaleTimestamp {
                skew_secs: 301,
                tolerance_secs: 300
            }
        );
        assert_eq!(
            check_with(&s, &hs, BODY, TS - 301),
            Verdict::FutureTimestamp {
                skew_secs: 301,
                tolerance_secs: 300
            }
        );
    }

    #[test]
    fn missing_and_malformed_headers() {
        let s = spec("standardwebhooks", SECRET);
        for (name, want) in [
            (
                "webhook-signature",
                Verdict::MissingHeader("webhook-signature"),
            ),
            ("webhook-id", Verdict::MissingHeader("webhook-id")),
            (
                "webhook-timestamp",
                Verdict::MissingHeader("webhook-timestamp"),
            ),
        ] {
            let mut hs = std_headers("webhook", SIG);
            remove_header(&mut hs, name);
            assert_eq!(check_with(&s, &hs, BODY, TS), want);
        }
        let mut hs = std_headers("webhook", SIG);
        hs[1].1 = b"2021-02-25T15:02:10Z".to_vec();
        assert_eq!(
            check_with(&s, &hs, BODY, TS),
            malformed("webhook-timestamp", "expected a unix timestamp in seconds")
        );
        for sig in ["v1a,", "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", "v1"] {
            let hs = std_headers("webhook", sig);
            assert_eq!(
                check_with(&s, &hs, BODY, TS),
                malformed("webhook-signature", "no v1,<base64> signature in the list"),
                "{sig}"
            );
        }
        // Present but undecodable v1 entries are simply wrong signatures.
        let hs = std_headers("webhook", "v1,");
        assert_eq!(check_with(&s, &hs, BODY, TS), Verdict::InvalidSignature);
        // Svix names its own headers in verdicts.
        let hs = headers(&[]);
        assert_eq!(
            check_with(&spec("svix", SECRET), &hs, BODY, TS),
            Verdict::MissingHeader("svix-signature")
        );
    }

    #[test]
    fn signing_without_an_id_derives_a_stable_one() {
        let hs = headers(&[]);
        let req = SignedRequest {
            method: "POST",
            url: "https://x.example/",
            headers: &hs,
            body: BODY,
        };
        let v = Verifier::from_spec(&spec("svix", SECRET)).unwrap();
        let a = v.sign(&req, TS).unwrap();
        let b = v.sign(&req, TS + 5).unwrap();
        assert_eq!(a[0], b[0]);
        assert_eq!(a[0].0, "svix-id");
        assert!(a[0].1.starts_with("msg_"));
    }
}

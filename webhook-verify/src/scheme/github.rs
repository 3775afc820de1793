//! GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`. No timestamp;
//! the legacy SHA-1 `X-Hub-Signature` header is deliberately not accepted.

use super::{header, malformed, set};
use crate::crypto::{ct_eq, hex_decode_exact, hmac_sha256};
use crate::{SignedRequest, Verdict};

const SIGNATURE: &str = "X-Hub-Signature-256";

pub(crate) fn verify(key: &[u8], req: &SignedRequest<'_>) -> Result<(), Verdict> {
    let value = header(req, SIGNATURE)?;
    let tag: [u8; 32] = value
        .strip_prefix("sha256=")
        .and_then(hex_decode_exact)
        .ok_or(malformed(SIGNATURE, "expected sha256=<64 hex digits>"))?;
    if ct_eq(&hmac_sha256(key, &[req.body]), &tag) {
        Ok(())
    } else {
        Err(Verdict::InvalidSignature)
    }
}

pub(crate) fn sign(key: &[u8], req: &SignedRequest<'_>) -> Vec<(String, String)> {
    let tag = hmac_sha256(key, &[req.body]);
    vec![set(SIGNATURE, format!("sha256={}", hex::encode(tag)))]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{flip_byte, flip_char, headers};

    // Published vector: docs.github.com, "Validating webhook deliveries", section
    // "Testing the webhook payload validation".
    const SECRET: &[u8] = b"It's a Secret to Everybody";
    const BODY: &[u8] = b"Hello, World!";
    const SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    fn check(key: &[u8], sig: &str, body: &[u8]) -> Result<(), Verdict> {
        let hs = headers(&[("x-hub-signature-256", sig)]);
        let req = SignedRequest {
            method: "POST",
            url: "https://x.example/",
            headers: &hs,
            body,
        };
        verify(key, &req)
    }

    #[test]
    fn published_vector_verifies_and_reproduces() {
        assert_eq!(check(SECRET, SIG, BODY), Ok(()));
        let hs = headers(&[]);
        let req = SignedRequest {
            method: "POST",
            url: "https://x.example/",
            headers: &hs,
            body: BODY,
        };
        assert_eq!(sign(SECRET, &req), vec![set(SIGNATURE, SIG)]);
        // Uppercase hex is the same digest.
        let upper = format!("sha256={}", SIG[7..].to_uppercase());
        assert_eq!(check(SECRET, &upper, BODY), Ok(()));
    }

    #[test]
    fn one_changed_byte_fails() {
        let bad = Err(Verdict::InvalidSignature);
        assert_eq!(check(SECRET, SIG, &flip_byte(BODY, 0)), bad);
        assert_eq!(check(&flip_byte(SECRET, 3), SIG, BODY), bad);
        assert_eq!(check(SECRET, &flip_char(SIG, SIG.len() - 6), BODY), bad);
    }

    #[test]
    fn malformed_headers_are_named() {
        for sig in [
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha1=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha256=757107ea",
            "sha256=zz7107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        ] {
            assert_eq!(
                check(SECRET, sig, BODY),
                Err(malformed(SIGNATURE, "expected sha256=<64 hex digits>")),
                "{sig}"
            );
        }
    }
}

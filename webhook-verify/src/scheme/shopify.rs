//! Shopify: `X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256(app secret, body)>`. No timestamp.

use super::{header, malformed, set};
use crate::crypto::{b64_decode_exact, b64_encode, ct_eq, hmac_sha256};
use crate::{SignedRequest, Verdict};

const SIGNATURE: &str = "X-Shopify-Hmac-Sha256";

pub(crate) fn verify(key: &[u8], req: &SignedRequest<'_>) -> Result<(), Verdict> {
    let sig: [u8; 32] = b64_decode_exact(header(req, SIGNATURE)?).ok_or(malformed(
        SIGNATURE,
        "expected base64 of a 32-byte HMAC-SHA256",
    ))?;
    if ct_eq(&hmac_sha256(key, &[req.body]), &sig) {
        Ok(())
    } else {
        Err(Verdict::InvalidSignature)
    }
}

pub(crate) fn sign(key: &[u8], req: &SignedRequest<'_>) -> Vec<(String, String)> {
    vec![set(SIGNATURE, b64_encode(&hmac_sha256(key, &[req.body])))]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{flip_byte, flip_char, headers};

    // Shopify publishes no test vector (shopify.dev, "Deliver webhooks through HTTPS",
    // section "Verify the webhook" describes the algorithm only). Constructed from that
    // description: HMAC-SHA256 keyed with the app's client secret over the raw body,
    // base64; the expected value was computed independently with Python's hmac module.
    const SECRET: &[u8] = b"hush";
    const BODY: &[u8] = br#"{"id":820982911946154508,"email":"jon@example.com"}"#;
    const SIG: &str = "D0UMXmhjwBRi4y66TmhJrDlhQABD7zI2fm3p6/QLMo8=";

    fn check(key: &[u8], sig: &str, body: &[u8]) -> Result<(), Verdict> {
        let hs = headers(&[("X-Shopify-Hmac-SHA256", sig)]);
        let req = SignedRequest {
            method: "POST",
            url: "https://x.example/",
            headers: &hs,
            body,
        };
        verify(key, &req)
    }

    #[test]
    fn vector_verifies_and_reproduces() {
        assert_eq!(check(SECRET, SIG, BODY), Ok(()));
        let hs = headers(&[]);
        let req = SignedRequest {
            method: "POST",
            url: "https://x.example/",
            headers: &hs,
            body: BODY,
        };
        assert_eq!(sign(SECRET, &req), vec![set(SIGNATURE, SIG)]);
    }

    #[test]
    fn one_changed_byte_fails() {
        let bad = Err(Verdict::InvalidSignature);
        assert_eq!(check(SECRET, SIG, &flip_byte(BODY, 1)), bad);
        assert_eq!(check(&flip_byte(SECRET, 0), SIG, BODY), bad);
        assert_eq!(check(SECRET, &flip_char(SIG, 5), BODY), bad);
    }

    #[test]
    fn malformed_signature() {
        for sig in ["not base64!", "AAAA", "0d450c5e6863c0146"] {
            assert_eq!(
                check(SECRET, sig, BODY),
                Err(malformed(
                    SIGNATURE,
                    "expected base64 of a 32-byte HMAC-SHA256"
                )),
                "{sig}"
            );
        }
    }
}

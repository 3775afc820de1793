//! Square: `x-square-hmacsha256-signature: <base64 HMAC-SHA256(signature key,
//! notification URL + body)>`. The notification URL is the public URL the
//! subscription was registered with, which is the request's public URL.

use super::{header, malformed, set};
use crate::crypto::{b64_decode_exact, b64_encode, ct_eq, hmac_sha256};
use crate::{SignedRequest, Verdict};

const SIGNATURE: &str = "x-square-hmacsha256-signature";

pub(crate) fn verify(key: &[u8], req: &SignedRequest<'_>) -> Result<(), Verdict> {
    let sig: [u8; 32] = b64_decode_exact(header(req, SIGNATURE)?).ok_or(malformed(
        SIGNATURE,
        "expected base64 of a 32-byte HMAC-SHA256",
    ))?;
    if ct_eq(&tag(key, req), &sig) {
        Ok(())
    } else {
        Err(Verdict::InvalidSignature)
    }
}

pub(crate) fn sign(key: &[u8], req: &SignedRequest<'_>) -> Vec<(String, String)> {
    vec![set(SIGNATURE, b64_encode(&tag(key, req)))]
}

fn tag(key: &[u8], req: &SignedRequest<'_>) -> [u8; 32] {
    hmac_sha256(key, &[req.url.as_bytes(), req.body])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{flip_byte, flip_char, headers};

    // Published vectors: square/square-nodejs-sdk, tests/integration/webhooks.test.ts
    // ("test signature validation pass", "test signature with escaped characters").
    const KEY: &[u8] = b"Ibxx_5AKakO-3qeNVR61Dw";
    const URL: &str = "https://webhook.site/679a4f3a-dcfa-49ee-bac5-9d0edad886b9";
    const BODY: &[u8] = br#"{"merchant_id":"MLEFBHHSJGVHD","type":"webhooks.test_notification","event_id":"ac3ac95b-f97d-458c-a6e6-18981597e05f","created_at":"2022-07-13T20:30:59.037339943Z","data":{"type":"webhooks","id":"bc368e64-01aa-407e-b46e-3231809b1129"}}"#;
    const SIG: &str = "GF4YkrJgGBDZ9NIYbNXBnMzqb2HoL4RW/S6vkZ9/2N4=";

    fn check(key: &[u8], url: &str, sig: &str, body: &[u8]) -> Result<(), Verdict> {
        let hs = headers(&[("X-Square-HmacSha256-Signature", sig)]);
        let req = SignedRequest {
            method: "POST",
            url,
            headers: &hs,
            body,
        };
        verify(key, &req)
    }

    #[test]
    fn published_vectors_verify_and_reproduce() {
        assert_eq!(check(KEY, URL, SIG, BODY), Ok(()));
        assert_eq!(
            check(
                b"signature-key",
                "https://webhook.site/webhooks",
                "Cxt7+aTi4rKgcA0bC4g9EHdVtLSDWdqccmL5MvihU4U=",
                br#"{"data":{"type":"webhooks","id":">id<"}}"#,
            ),
            Ok(())
        );
        let hs = headers(&[]);
        let req = SignedRequest {
            method: "POST",
            url: URL,
            headers: &hs,
            body: BODY,
        };
        assert_eq!(sign(KEY, &req), vec![set(SIGNATURE, SIG)]);
    }

    #[test]
    fn one_changed_byte_fails() {
        let bad = Err(Verdict::InvalidSignature);
        assert_eq!(check(KEY, URL, SIG, &flip_byte(BODY, 40)), bad);
        assert_eq!(check(&flip_byte(KEY, 0), URL, SIG, BODY), bad);
        assert_eq!(check(KEY, URL, &flip_char(SIG, 3), BODY), bad);
        // The SDK's own negative cases: another URL, another key.
        assert_eq!(
            check(
                KEY,
                "https://webhook.site/79a4f3a-dcfa-49ee-bac5-9d0edad886b9",
                SIG,
                BODY
            ),
            bad
        );
        assert_eq!(check(b"MCmhFRxGX82xMwg5FsaoQA", URL, SIG, BODY), bad);
    }

    #[test]
    fn malformed_signature() {
        // A SHA-1 sized value (the SDK's "invalid signature header" case) is not ours.
        assert_eq!(
            check(KEY, URL, "1z2n3DEJJiUPKcPzQo1ftvbxGdw=", BODY),
            Err(malformed(
                SIGNATURE,
                "expected base64 of a 32-byte HMAC-SHA256"
            ))
        );
    }
}

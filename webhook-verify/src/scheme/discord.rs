//! Discord interactions: `X-Signature-Ed25519: <hex Ed25519 signature>` over
//! `X-Signature-Timestamp` followed by the body, checked with the application's public
//! key. Discord's docs ask for no freshness check, so none is made; and with only the
//! public key, nothing can be signed.

use super::{header, malformed};
use crate::crypto::{ed25519_verify, hex_decode_exact};
use crate::{SignedRequest, Verdict};

const SIGNATURE: &str = "X-Signature-Ed25519";
const TIMESTAMP: &str = "X-Signature-Timestamp";

pub(crate) fn verify(public_key: &[u8; 32], req: &SignedRequest<'_>) -> Result<(), Verdict> {
    let sig = header(req, SIGNATURE)?;
    let ts = header(req, TIMESTAMP)?;
    let sig: [u8; 64] =
        hex_decode_exact(sig).ok_or(malformed(SIGNATURE, "expected 128 hex digits"))?;
    if ed25519_verify(public_key, &[ts.as_bytes(), req.body], &sig) {
        Ok(())
    } else {
        Err(Verdict::InvalidSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{flip_byte, flip_char, headers, remove_header};
    use crate::Verifier;

    // Discord publishes no request vector (discord.com/developers/docs, "Interactions
    // > Receiving and Responding", section "Security and Authorization", describes the
    // algorithm; discord-interactions-js tests generate keys at run time). Constructed:
    // the key pair is RFC 8032 section 7.1 TEST 1 (whose published vectors
    // crypto::tests checks), and the signature over "1700000000" + body was computed
    // independently with Python's `cryptography`.
    const PUBLIC_KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    const TS: &str = "1700000000";
    const BODY: &[u8] = br#"{"type":1}"#;
    const SIG: &str = "1695961a47c91a1ec033b819b7e87e3dbc583dd0cee6d1fd0216f58ac87b6228ae531ddbf91fb7bc28d7edf7f08604da16f54624f38a6bc0614e4dc13cd47f0f";

    fn hs(sig: &str, ts: &str) -> Vec<(String, Vec<u8>)> {
        headers(&[("x-signature-ed25519", sig), ("x-signature-timestamp", ts)])
    }

    fn check(key: &str, hs: &[(String, Vec<u8>)], body: &[u8]) -> Verdict {
        let req = SignedRequest {
            method: "POST",
            url: "https://x.example/interactions",
            headers: hs,
            body,
        };
        // Time is irrelevant to Discord: any `now` gives the same verdict.
        Verifier::from_spec(&format!("discord:{key}"))
            .unwrap()
            .verify(&req, 0)
    }

    #[test]
    fn vector_verifies() {
        assert_eq!(check(PUBLIC_KEY, &hs(SIG, TS), BODY), Verdict::Valid);
        assert_eq!(
            check(
                &PUBLIC_KEY.to_uppercase(),
                &hs(&SIG.to_uppercase(), TS),
                BODY
            ),
            Verdict::Valid
        );
    }

    #[test]
    fn one_changed_byte_fails() {
        let bad = Verdict::InvalidSignature;
        assert_eq!(check(PUBLIC_KEY, &hs(SIG, TS), &flip_byte(BODY, 2)), bad);
        assert_eq!(check(PUBLIC_KEY, &hs(SIG, "1700000001"), BODY), bad);
        assert_eq!(check(PUBLIC_KEY, &hs(&flip_char(SIG, 20), TS), BODY), bad);
        // RFC 8032 TEST 2's public key: a valid point, but not the signer.
        let other = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";
        assert_eq!(check(other, &hs(SIG, TS), BODY), bad);
        // A changed key byte that is no longer a valid point must fail, not panic.
        assert_eq!(check(&flip_char(PUBLIC_KEY, 0), &hs(SIG, TS), BODY), bad);
    }

    #[test]
    fn missing_and_malformed_headers() {
        let mut h = hs(SIG, TS);
        remove_header(&mut h, TIMESTAMP);
        assert_eq!(
            check(PUBLIC_KEY, &h, BODY),
            Verdict::MissingHeader(TIMESTAMP)
        );
        assert_eq!(
            check(PUBLIC_KEY, &hs(&SIG[..64], TS), BODY),
            malformed(SIGNATURE, "expected 128 hex digits")
        );
    }
}

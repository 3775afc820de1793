//! Checking one request against several verifiers at once (a tunnel may expect
//! webhooks from more than one provider, or one provider with a rotated secret).

use crate::{Provider, SignedRequest, Verdict, Verifier};

/// Checks `req` against every verifier and answers the most telling result: the first
/// valid one; else the first whose signature header is present (its failure is the
/// interesting one); else the first verifier's (a missing header). `None` when
/// `verifiers` is empty.
pub fn verify_any(
    verifiers: &[Verifier],
    req: &SignedRequest<'_>,
    now_unix: i64,
) -> Option<(Provider, Verdict)> {
    let mut fallback: Option<(Provider, Verdict)> = None;
    let mut present: Option<(Provider, Verdict)> = None;
    for v in verifiers {
        let verdict = v.verify(req, now_unix);
        if verdict.is_valid() {
            return Some((v.provider(), verdict));
        }
        if present.is_none() && req.header(v.provider().signature_header()).is_some() {
            present = Some((v.provider(), verdict.clone()));
        }
        if fallback.is_none() {
            fallback = Some((v.provider(), verdict));
        }
    }
    present.or(fallback)
}

/// The verifier to sign a replay of `req` with: the first that can sign and whose
/// provider's signature header the request carries, else the only one that can sign.
pub fn signer_for<'v>(verifiers: &'v [Verifier], req: &SignedRequest<'_>) -> Option<&'v Verifier> {
    let signers: Vec<&Verifier> = verifiers.iter().filter(|v| v.can_sign()).collect();
    signers
        .iter()
        .find(|v| req.header(v.provider().signature_header()).is_some())
        .copied()
        .or_else(|| (signers.len() == 1).then(|| signers[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(headers: &'a [(String, Vec<u8>)], body: &'a [u8]) -> SignedRequest<'a> {
        SignedRequest {
            method: "POST",
            url: "https://demo.example/hook",
            headers,
            body,
        }
    }

    #[test]
    fn the_present_provider_and_a_valid_signature_win() {
        let github = Verifier::from_spec("github:It's a Secret to Everybody").unwrap();
        let stripe = Verifier::from_spec("stripe:whsec_test").unwrap();
        let set = [stripe.clone(), github.clone()];
        let headers = vec![(
            "X-Hub-Signature-256".to_owned(),
            b"sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".to_vec(),
        )];
        let ok = verify_any(&set, &req(&headers, b"Hello, World!"), 0).unwrap();
        assert_eq!(ok, (Provider::GitHub, Verdict::Valid));
        let bad = verify_any(&set, &req(&headers, b"Hello, World?"), 0).unwrap();
        assert_eq!(bad, (Provider::GitHub, Verdict::InvalidSignature));
        let none = verify_any(&set, &req(&[], b"x"), 0).unwrap();
        assert_eq!(none.0, Provider::Stripe);
        assert!(matches!(none.1, Verdict::MissingHeader(_)));
        assert!(verify_any(&[], &req(&[], b"x"), 0).is_none());
        assert_eq!(
            signer_for(&set, &req(&headers, b"x")).map(|v| v.provider()),
            Some(Provider::GitHub)
        );
        assert!(signer_for(&set, &req(&[], b"x")).is_none());
        assert_eq!(
            signer_for(&[stripe], &req(&[], b"x")).map(|v| v.provider()),
            Some(Provider::Stripe)
        );
    }
}

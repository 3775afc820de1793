//! GitLab: `X-Gitlab-Token` carries the shared secret token itself. There is no
//! signature over the body, so this proves only that the sender knows the token.

use super::{header, set};
use crate::crypto::{ct_eq, sha256};
use crate::{SignedRequest, Verdict};

const TOKEN: &str = "X-Gitlab-Token";

pub(crate) fn verify(token: &[u8], req: &SignedRequest<'_>) -> Result<(), Verdict> {
    let sent = header(req, TOKEN)?;
    // Comparing digests keeps the comparison constant-time even when the lengths
    // differ, so the token's length does not leak either.
    if ct_eq(&sha256(sent.as_bytes()), &sha256(token)) {
        Ok(())
    } else {
        Err(Verdict::InvalidSignature)
    }
}

pub(crate) fn sign(token: &[u8]) -> Vec<(String, String)> {
    vec![set(TOKEN, String::from_utf8_lossy(token))]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{flip_byte, flip_char, headers};

    // GitLab publishes no vector (docs.gitlab.com, "Webhooks", section "Validate
    // payloads by using a secret token": the header carries the token verbatim);
    // constructed from that description.
    const TOKEN_VALUE: &str = "glwht-porthole-example";

    fn check(token: &[u8], sent: &str) -> Result<(), Verdict> {
        let hs = headers(&[("X-GITLAB-TOKEN", sent)]);
        let req = SignedRequest {
            method: "POST",
            url: "https://x.example/",
            headers: &hs,
            body: b"{\"object_kind\":\"push\"}",
        };
        verify(token, &req)
    }

    #[test]
    fn matching_token_verifies() {
        assert_eq!(check(TOKEN_VALUE.as_bytes(), TOKEN_VALUE), Ok(()));
        assert_eq!(sign(TOKEN_VALUE.as_bytes()), vec![set(TOKEN, TOKEN_VALUE)]);
    }

    #[test]
    fn one_changed_byte_fails() {
        let bad = Err(Verdict::InvalidSignature);
        assert_eq!(
            check(&flip_byte(TOKEN_VALUE.as_bytes(), 0), TOKEN_VALUE),
            bad
        );
        assert_eq!(
            check(TOKEN_VALUE.as_bytes(), &flip_char(TOKEN_VALUE, 4)),
            bad
        );
        assert_eq!(check(TOKEN_VALUE.as_bytes(), "glwht-porthole-exampl"), bad);
        assert_eq!(
            check(TOKEN_VALUE.as_bytes(), "glwht-porthole-examplee"),
            bad
        );
    }

    #[test]
    fn empty_token_is_malformed() {
        assert_eq!(
            check(TOKEN_VALUE.as_bytes(), "  "),
            Err(super::super::malformed(TOKEN, "empty value"))
        );
    }
}

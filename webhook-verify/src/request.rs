//! [`SignedRequest`]: the borrowed view of one received request that a scheme checks.

use std::fmt;

/// One webhook request exactly as received. Nothing here is parsed or normalized
/// beyond case-insensitive header lookup: signatures cover the raw bytes.
#[derive(Clone, Copy)]
pub struct SignedRequest<'a> {
    /// The HTTP method (`POST`); Twilio only reads form parameters from non-GET bodies.
    pub method: &'a str,
    /// The full public URL as the sender saw it (`https://name.relay.example/hook?x=1`),
    /// not the URL of the local target. Twilio and Square sign it.
    pub url: &'a str,
    /// The request headers in arrival order; names are matched case-insensitively and
    /// the first match wins.
    pub headers: &'a [(String, Vec<u8>)],
    /// The body bytes as received.
    pub body: &'a [u8],
}

impl<'a> SignedRequest<'a> {
    /// The value of the first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// Prints header names and the body length only: header values include secrets
/// (GitLab sends its token verbatim) and bodies can be large.
impl fmt::Debug for SignedRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("SignedRequest")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("header_names", &names)
            .field("body_len", &self.body.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lookup_is_case_insensitive_and_first_wins() {
        let headers = vec![
            ("X-Gitlab-Token".to_owned(), b"first".to_vec()),
            ("x-gitlab-token".to_owned(), b"second".to_vec()),
        ];
        let req = SignedRequest {
            method: "POST",
            url: "https://x.example/",
            headers: &headers,
            body: b"",
        };
        assert_eq!(req.header("X-GITLAB-TOKEN"), Some(&b"first"[..]));
        assert_eq!(req.header("X-Other"), None);
    }

    #[test]
    fn debug_shows_no_header_values() {
        let headers = vec![("X-Gitlab-Token".to_owned(), b"glpat-very-secret".to_vec())];
        let req = SignedRequest {
            method: "POST",
            url: "https://x.example/",
            headers: &headers,
            body: b"{}",
        };
        let shown = format!("{req:?}");
        assert!(shown.contains("X-Gitlab-Token"));
        assert!(!shown.contains("very-secret"));
    }
}

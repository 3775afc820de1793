//! [`Verifier`]: a provider plus its key, parsed from a `provider:secret` spec; it
//! dispatches [`Verifier::verify`] and [`Verifier::sign`] to the scheme modules.
//! It owns key parsing and must never put key material in an error or a `Debug`.

use std::fmt;
use std::time::Duration;

use crate::crypto;
use crate::scheme;
use crate::secret::Secret;
use crate::{Provider, SignedRequest, Verdict};

/// Verifies (and, where the key allows, re-signs) webhooks from one provider.
///
/// `Debug` shows the provider, the key kind and the tolerance; the key is `MASKED`.
#[derive(Clone)]
pub struct Verifier {
    provider: Provider,
    key: Key,
    tolerance: Duration,
}

/// The key material a scheme needs.
#[derive(Clone)]
pub(crate) enum Key {
    /// A shared secret: the HMAC key, or GitLab's token.
    Hmac(Secret),
    /// An Ed25519 public key: verification only.
    Ed25519Public([u8; 32]),
    /// An Ed25519 seed (Standard Webhooks `whsk_`), with its derived public key.
    Ed25519Private { seed: Secret, public: [u8; 32] },
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Key::Hmac(_) => "Hmac(MASKED)",
            Key::Ed25519Public(_) => "Ed25519Public(MASKED)",
            Key::Ed25519Private { .. } => "Ed25519Private(MASKED)",
        })
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("provider", &self.provider)
            .field("key", &self.key)
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

/// Why a `provider:secret` spec was rejected. Messages never contain the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The spec has no `:` between provider and secret.
    #[error("webhook verifier spec must look like PROVIDER:SECRET, for example github:SECRET")]
    MissingSeparator,
    /// The provider name is not one this crate knows. The name is not echoed, in case
    /// a secret was pasted into the wrong place.
    #[error(
        "unknown webhook provider (expected one of github, gitlab, stripe, slack, \
         standardwebhooks, svix, shopify, twilio, square, paddle, discord)"
    )]
    UnknownProvider,
    /// Nothing follows the `:`.
    #[error("{0} secret is empty")]
    EmptySecret(Provider),
    /// The key does not have the shape the provider issues.
    #[error("{provider} key is invalid: {reason}")]
    InvalidKey {
        /// The provider whose key was being parsed.
        provider: Provider,
        /// What shape was expected, as a short phrase.
        reason: &'static str,
    },
}

/// Why [`Verifier::sign`] could not produce headers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// Ed25519 schemes sign with the sender's private key; a verifier built from a
    /// public key (Discord, Standard Webhooks `whpk_`) can only verify.
    #[error("cannot sign {0} webhooks: only a public key is configured, the sender's private key is needed")]
    PublicKeyOnly(Provider),
    /// Twilio JSON requests carry the body hash in the URL's `bodySHA256` parameter;
    /// headers alone cannot fix a URL whose hash no longer matches the body.
    #[error("cannot re-sign for Twilio: the URL's bodySHA256 parameter does not match the body, and signing headers cannot change the URL")]
    BodyHashMismatch,
}

impl Verifier {
    /// Parses `provider:secret`, splitting at the first `:` (secrets may contain more).
    /// Provider names are case-insensitive; see [`Verifier::new`] for the key formats.
    pub fn from_spec(spec: &str) -> Result<Self, SpecError> {
        let (name, secret) = spec.split_once(':').ok_or(SpecError::MissingSeparator)?;
        Self::new(name.parse()?, secret)
    }

    /// Builds a verifier from a provider and its key as the provider's dashboard shows it.
    /// Surrounding whitespace is trimmed (a trailing newline from a file is a common slip).
    ///
    /// - GitHub, GitLab, Slack, Shopify, Twilio, Square, Paddle: the secret string as is.
    /// - Stripe: the whole `whsec_…` string is the HMAC key (Stripe does not decode it).
    /// - Standard Webhooks, Svix: `whsec_<base64>` (prefix optional) for HMAC,
    ///   `whpk_<base64>` for an Ed25519 public key (verify only), `whsk_<base64 seed>`
    ///   for an Ed25519 private key (verify and sign).
    /// - Discord: the application public key, 64 hex digits.
    pub fn new(provider: Provider, secret: &str) -> Result<Self, SpecError> {
        let secret = secret.trim();
        if secret.is_empty() {
            return Err(SpecError::EmptySecret(provider));
        }
        let key = match provider {
            Provider::StandardWebhooks | Provider::Svix => standard_key(provider, secret)?,
            Provider::Discord => Key::Ed25519Public(crypto::hex_decode_exact(secret).ok_or(
                SpecError::InvalidKey {
                    provider,
                    reason: "expected the application public key as 64 hex digits",
                },
            )?),
            _ => Key::Hmac(Secret::new(secret.as_bytes().to_vec())),
        };
        Ok(Self {
            provider,
            key,
            tolerance: provider.default_tolerance().unwrap_or(Duration::ZERO),
        })
    }

    /// Replaces the timestamp tolerance (defaults: [`Provider::default_tolerance`]).
    /// Ignored by schemes that sign no timestamp.
    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// The provider this verifier speaks.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// The timestamp tolerance in force.
    pub fn tolerance(&self) -> Duration {
        self.tolerance
    }

    /// Whether [`Verifier::sign`] can work: false for public-key-only verifiers.
    pub fn can_sign(&self) -> bool {
        !matches!(self.key, Key::Ed25519Public(_))
    }

    /// Checks `req` against this verifier's key at time `now_unix` (seconds).
    pub fn verify(&self, req: &SignedRequest<'_>, now_unix: i64) -> Verdict {
        let result = match (&self.key, self.provider) {
            (Key::Hmac(k), Provider::GitHub) => scheme::github::verify(k.expose(), req),
            (Key::Hmac(k), Provider::GitLab) => scheme::gitlab::verify(k.expose(), req),
            (Key::Hmac(k), Provider::Stripe) => {
                scheme::stripe::verify(k.expose(), req, now_unix, self.tolerance)
            }
            (Key::Hmac(k), Provider::Slack) => {
                scheme::slack::verify(k.expose(), req, now_unix, self.tolerance)
            }
            (key, Provider::StandardWebhooks | Provider::Svix) => {
                scheme::standard::verify(self.provider, key, req, now_unix, self.tolerance)
            }
            (Key::Hmac(k), Provider::Shopify) => scheme::shopify::verify(k.expose(), req),
            (Key::Hmac(k), Provider::Twilio) => scheme::twilio::verify(k.expose(), req),
            (Key::Hmac(k), Provider::Square) => scheme::square::verify(k.expose(), req),
            (Key::Hmac(k), Provider::Paddle) => {
                scheme::paddle::verify(k.expose(), req, now_unix, self.tolerance)
            }
            (Key::Ed25519Public(pk), Provider::Discord) => scheme::discord::verify(pk, req),
            // Verifier::new builds exactly the key kind each provider needs.
            _ => unreachable!("key kind does not match provider {}", self.provider),
        };
        result.err().unwrap_or(Verdict::Valid)
    }

    /// The headers to set (replacing any of the same name) so that `req` verifies afresh
    /// at `now_unix`: a new timestamp where the scheme signs one, the same body and URL.
    /// Standard Webhooks keeps the request's message id, or derives one from the body.
    pub fn sign(
        &self,
        req: &SignedRequest<'_>,
        now_unix: i64,
    ) -> Result<Vec<(String, String)>, SignError> {
        let k = match (&self.key, self.provider) {
            (Key::Ed25519Public(_), p) | (_, p @ Provider::Discord) => {
                return Err(SignError::PublicKeyOnly(p))
            }
            (key, p @ (Provider::StandardWebhooks | Provider::Svix)) => {
                return scheme::standard::sign(p, key, req, now_unix)
            }
            (Key::Hmac(k), _) => k.expose(),
            // Verifier::new only builds Ed25519 private keys for Standard Webhooks/Svix.
            (Key::Ed25519Private { .. }, p) => unreachable!("ed25519 private key for {p}"),
        };
        Ok(match self.provider {
            Provider::GitHub => scheme::github::sign(k, req),
            Provider::GitLab => scheme::gitlab::sign(k),
            Provider::Stripe => scheme::stripe::sign(k, req, now_unix),
            Provider::Slack => scheme::slack::sign(k, req, now_unix),
            Provider::Shopify => scheme::shopify::sign(k, req),
            Provider::Twilio => scheme::twilio::sign(k, req)?,
            Provider::Square => scheme::square::sign(k, req),
            Provider::Paddle => scheme::paddle::sign(k, req, now_unix),
            // Returned from the first match.
            Provider::StandardWebhooks | Provider::Svix | Provider::Discord => {
                unreachable!("handled above")
            }
        })
    }
}

fn standard_key(provider: Provider, secret: &str) -> Result<Key, SpecError> {
    if let Some(b64) = secret.strip_prefix("whpk_") {
        let public = crypto::b64_decode_exact(b64).ok_or(SpecError::InvalidKey {
            provider,
            reason: "expected whpk_ followed by a base64 32-byte Ed25519 public key",
        })?;
        return Ok(Key::Ed25519Public(public));
    }
    if let Some(b64) = secret.strip_prefix("whsk_") {
        let invalid = SpecError::InvalidKey {
            provider,
            reason: "expected whsk_ followed by a base64 32-byte Ed25519 seed",
        };
        let seed = crypto::b64_decode(b64).ok_or(invalid.clone())?;
        let public = crypto::ed25519_public_key(&seed).ok_or(invalid)?;
        return Ok(Key::Ed25519Private {
            seed: Secret::new(seed),
            public,
        });
    }
    // The reference libraries accept the bare base64 too.
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    match crypto::b64_decode(b64) {
        Some(key) if !key.is_empty() => Ok(Key::Hmac(Secret::new(key))),
        _ => Err(SpecError::InvalidKey {
            provider,
            reason: "expected whsec_ followed by base64",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{apply, headers, set_header};

    const NOW: i64 = 1_700_000_000;

    /// One spec per provider whose key can sign; the secrets are arbitrary.
    const SIGNING_SPECS: [&str; 11] = [
        "github:gh-secret",
        "gitlab:gl-token",
        "stripe:whsec_test_secret",
        "slack:8f742231b10e8888abcd99yyyzzz85a5",
        "standardwebhooks:whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "svix:whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "standardwebhooks:whsk_VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk=",
        "shopify:shpss_secret",
        "twilio:12345",
        "square:Ibxx_5AKakO-3qeNVR61Dw",
        "paddle:pdl_ntfset_secret",
    ];

    #[test]
    fn sign_then_verify_round_trips_for_every_signing_provider() {
        for spec in SIGNING_SPECS {
            let v = Verifier::from_spec(spec).unwrap();
            for (content_type, body) in [
                ("application/json", &br#"{"event":"ping","n":1}"#[..]),
                ("application/x-www-form-urlencoded", &b"b=2&a=1+x&a=%2F"[..]),
            ] {
                let base = headers(&[("Content-Type", content_type)]);
                let req = SignedRequest {
                    method: "POST",
                    url: "https://demo.porthole.example/hook?x=1",
                    headers: &base,
                    body,
                };
                let signed = v.sign(&req, NOW).unwrap();
                let hs = apply(&base, &signed);
                let req = SignedRequest {
                    headers: &hs,
                    ..req
                };
                assert_eq!(v.verify(&req, NOW), Verdict::Valid, "{spec}");
                // Re-signing an already signed request replaces, not appends.
                let again = apply(&hs, &v.sign(&req, NOW + 10).unwrap());
                assert_eq!(again.len(), hs.len(), "{spec}");
                let req = SignedRequest {
                    headers: &again,
                    ..req
                };
                assert_eq!(v.verify(&req, NOW + 10), Verdict::Valid, "{spec}");
            }
        }
    }

    #[test]
    fn signing_refreshes_the_timestamp() {
        let v = Verifier::from_spec("stripe:whsec_test_secret").unwrap();
        let base = headers(&[]);
        let req = SignedRequest {
            method: "POST",
            url: "https://x.example/",
            headers: &base,
            body: b"{}",
        };
        let old = apply(&base, &v.sign(&req, NOW - 3600).unwrap());
        let stale = SignedRequest {
            headers: &old,
            ..req
        };
        assert!(matches!(
            v.verify(&stale, NOW),
            Verdict::StaleTimestamp {
                skew_secs: 3600,
                ..
            }
        ));
        let fresh = apply(&old, &v.sign(&stale, NOW).unwrap());
        let req = SignedRequest {
            headers: &fresh,
            ..req
        };
        assert_eq!(v.verify(&req, NOW), Verdict::Valid);
    }

    #[test]
    fn public_key_verifiers_cannot_sign() {
        let base = headers(&[]);
        let req = SignedRequest {
            method: "POST",
            url: "https://x.example/",
            headers: &base,
            body: b"{}",
        };
        for spec in [
            "discord:d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "standardwebhooks:whpk_ZlN4eg7dSSqi0moX9hQUk3orrOouK3QVQSlJa248c/g=",
            "svix:whpk_ZlN4eg7dSSqi0moX9hQUk3orrOouK3QVQSlJa248c/g=",
        ] {
            let v = Verifier::from_spec(spec).unwrap();
            assert!(!v.can_sign());
            let err = v.sign(&req, NOW).unwrap_err();
            assert_eq!(err, SignError::PublicKeyOnly(v.provider()));
            assert!(err.to_string().contains("only a public key"), "{err}");
        }
    }

    #[test]
    fn debug_never_shows_a_secret() {
        for (spec, secret) in [
            ("github:It's a Secret to Everybody", "Secret to Everybody"),
            ("gitlab:glpat-abcdef", "abcdef"),
            ("stripe:whsec_test_secret", "test_secret"),
            (
                "svix:whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            ),
            (
                "standardwebhooks:whsk_VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk=",
                "VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk",
            ),
            ("twilio:12345", "12345"),
        ] {
            let v = Verifier::from_spec(spec).unwrap();
            for shown in [format!("{v:?}"), format!("{v:#?}")] {
                assert!(shown.contains("MASKED"), "{shown}");
                assert!(!shown.contains(secret), "{shown}");
                // Not even the raw bytes as a Debug list.
                assert!(!shown.contains('['), "{shown}");
            }
        }
    }

    #[test]
    fn spec_errors_never_echo_the_secret() {
        let cases = [
            ("no-colon-here", SpecError::MissingSeparator),
            ("bitbucket:topsecret", SpecError::UnknownProvider),
            ("github:", SpecError::EmptySecret(Provider::GitHub)),
            ("github:   ", SpecError::EmptySecret(Provider::GitHub)),
        ];
        for (spec, want) in cases {
            let err = Verifier::from_spec(spec).unwrap_err();
            assert_eq!(err, want, "{spec}");
            assert!(!err.to_string().contains("topsecret"));
        }
        for spec in [
            "discord:not-hex-topsecret",
            "discord:abcd",
            "svix:whsec_!!topsecret!!",
            "standardwebhooks:whpk_dG9wc2VjcmV0",
            "standardwebhooks:whsk_dG9wc2VjcmV0",
        ] {
            let err = Verifier::from_spec(spec).unwrap_err();
            assert!(matches!(err, SpecError::InvalidKey { .. }), "{spec}: {err}");
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("topsecret"), "{shown}");
            assert!(!shown.contains("dG9wc2VjcmV0"), "{shown}");
        }
    }

    #[test]
    fn spec_parsing_is_case_insensitive_and_splits_at_the_first_colon() {
        let v = Verifier::from_spec("GitHub:a:b:c").unwrap();
        assert_eq!(v.provider(), Provider::GitHub);
        let hs = headers(&[(
            "X-Hub-Signature-256",
            &format!(
                "sha256={}",
                hex::encode(crypto::hmac_sha256(b"a:b:c", &[b"x"]))
            ),
        )]);
        let req = SignedRequest {
            method: "POST",
            url: "https://x.example/",
            headers: &hs,
            body: b"x",
        };
        assert_eq!(v.verify(&req, NOW), Verdict::Valid);
        assert_eq!(
            Verifier::from_spec("STANDARD-WEBHOOKS:whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .unwrap()
                .provider(),
            Provider::StandardWebhooks
        );
        // A trailing newline (secret read from a file) is trimmed.
        let trimmed = Verifier::from_spec("github:a:b:c\n").unwrap();
        assert_eq!(trimmed.verify(&req, NOW), Verdict::Valid);
    }

    #[test]
    fn tolerance_defaults_follow_the_provider_and_can_be_changed() {
        let paddle = Verifier::from_spec("paddle:k").unwrap();
        assert_eq!(paddle.tolerance(), Duration::from_secs(5));
        let stripe = Verifier::from_spec("stripe:k").unwrap();
        assert_eq!(stripe.tolerance(), Duration::from_secs(300));
        let wide = stripe.with_tolerance(Duration::from_secs(3600));
        assert_eq!(wide.tolerance(), Duration::from_secs(3600));
    }

    #[test]
    fn every_provider_reports_its_missing_signature_header() {
        let specs = [
            "github:s",
            "gitlab:s",
            "stripe:s",
            "slack:s",
            "standardwebhooks:whsec_c2VjcmV0",
            "svix:whsec_c2VjcmV0",
            "shopify:s",
            "twilio:s",
            "square:s",
            "paddle:s",
            "discord:d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        ];
        let base = headers(&[("Content-Type", "application/json")]);
        for spec in specs {
            let v = Verifier::from_spec(spec).unwrap();
            let req = SignedRequest {
                method: "POST",
                url: "https://x.example/",
                headers: &base,
                body: b"{}",
            };
            assert_eq!(
                v.verify(&req, NOW),
                Verdict::MissingHeader(v.provider().signature_header()),
                "{spec}"
            );
        }
    }

    #[test]
    fn non_utf8_header_values_are_malformed_not_a_panic() {
        let v = Verifier::from_spec("github:s").unwrap();
        let mut hs = headers(&[]);
        set_header(&mut hs, "X-Hub-Signature-256", b"sha256=\xff\xfe");
        let req = SignedRequest {
            method: "POST",
            url: "https://x.example/",
            headers: &hs,
            body: b"{}",
        };
        assert!(matches!(v.verify(&req, NOW), Verdict::Malformed { .. }));
    }
}

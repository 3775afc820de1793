//! Verifies and re-signs webhook signatures for the common providers, on the raw
//! request bytes as received — never on a re-serialized body.
//!
//! Pure: no I/O, no clock (the caller passes `now` as unix seconds), no randomness.
//! The relay and the client decide what to do with a [`Verdict`]; this crate only
//! computes it.
//!
//! ```
//! use webhook_verify::{SignedRequest, Verdict, Verifier};
//!
//! let verifier = Verifier::from_spec("github:It's a Secret to Everybody").unwrap();
//! let headers = vec![(
//!     "X-Hub-Signature-256".to_owned(),
//!     b"sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".to_vec(),
//! )];
//! let req = SignedRequest {
//!     method: "POST",
//!     url: "https://demo.example/hook",
//!     headers: &headers,
//!     body: b"Hello, World!",
//! };
//! assert_eq!(verifier.verify(&req, 1_700_000_000), Verdict::Valid);
//! ```
//!
//! # Providers
//!
//! | spec name | signature header(s) | scheme | timestamp window (default) |
//! | --- | --- | --- | --- |
//! | `github` | `X-Hub-Signature-256` | `sha256=` hex HMAC-SHA256(body) | — |
//! | `gitlab` | `X-Gitlab-Token` | shared token, constant-time compare | — |
//! | `stripe` | `Stripe-Signature` | `t=…,v1=…` hex HMAC-SHA256(`t.body`), any v1 | 300 s, past only |
//! | `slack` | `X-Slack-Signature`, `X-Slack-Request-Timestamp` | `v0=` hex HMAC-SHA256(`v0:ts:body`) | 300 s, both ways |
//! | `standardwebhooks` | `webhook-id`, `webhook-timestamp`, `webhook-signature` | `v1,` base64 HMAC-SHA256(`id.ts.body`) or `v1a,` Ed25519 | 300 s, both ways |
//! | `svix` | `svix-id`, `svix-timestamp`, `svix-signature` | as Standard Webhooks | 300 s, both ways |
//! | `shopify` | `X-Shopify-Hmac-Sha256` | base64 HMAC-SHA256(body) | — |
//! | `twilio` | `X-Twilio-Signature` | base64 HMAC-SHA1(url + sorted form params), or `bodySHA256` | — |
//! | `square` | `x-square-hmacsha256-signature` | base64 HMAC-SHA256(url + body) | — |
//! | `paddle` | `Paddle-Signature` | `ts=…;h1=…` hex HMAC-SHA256(`ts:body`), any h1 | 5 s, past only |
//! | `discord` | `X-Signature-Ed25519`, `X-Signature-Timestamp` | hex Ed25519(`ts + body`) | — |
//!
//! Header lookup is case-insensitive. Where a provider's own libraries accept several
//! signatures (Stripe `v1`, Paddle `h1`, the Standard Webhooks space-separated list),
//! any one match is enough, which is what makes secret rotation work.
//!
//! The signature is checked before the timestamp, so [`Verdict::StaleTimestamp`] means
//! "authentic but old" — typically a replayed capture — rather than "could be anything".
//!
//! # Layout
//!
//! - [`Provider`]: the supported providers and their spec names.
//! - [`Verifier`]: a provider plus its secret; [`Verifier::verify`] and [`Verifier::sign`].
//! - [`SignedRequest`]: the borrowed request being checked.
//! - [`Verdict`]: the outcome, with a console-ready `Display`.
//! - `scheme::*`: one module per signing scheme, each with its published test vectors.

#![warn(missing_docs)]

mod crypto;
mod provider;
mod request;
mod scheme;
mod secret;
mod set;
mod verdict;
mod verifier;

pub use provider::Provider;
pub use request::SignedRequest;
pub use set::{signer_for, verify_any};
pub use verdict::Verdict;
pub use verifier::{SignError, SpecError, Verifier};

#[cfg(test)]
mod testutil;

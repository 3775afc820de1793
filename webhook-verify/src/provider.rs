//! [`Provider`]: which signing scheme a [`crate::Verifier`] speaks, and its spec names.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::SpecError;

/// A webhook sender whose signature scheme this crate understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(body)>`.
    GitHub,
    /// GitLab: `X-Gitlab-Token` carries the shared secret token itself.
    GitLab,
    /// Stripe: `Stripe-Signature: t=<ts>,v1=<hex>[,v1=<hex>…]` over `ts.body`.
    Stripe,
    /// Slack: `X-Slack-Signature: v0=<hex>` over `v0:ts:body`.
    Slack,
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    StandardWebhooks,
    /// Svix: Standard Webhooks under `svix-*` header names.
    Svix,
    /// Shopify: `X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256(body)>`.
    Shopify,
    /// Twilio: `X-Twilio-Signature: <base64 HMAC-SHA1(url + params)>`.
    Twilio,
    /// Square: `x-square-hmacsha256-signature: <base64 HMAC-SHA256(url + body)>`.
    Square,
    /// Paddle Billing: `Paddle-Signature: ts=<ts>;h1=<hex>` over `ts:body`.
    Paddle,
    /// Discord interactions: Ed25519 over `timestamp + body`, application public key.
    Discord,
}

impl Provider {
    /// Every provider, in the order of the crate documentation's table.
    pub const ALL: [Provider; 11] = [
        Provider::GitHub,
        Provider::GitLab,
        Provider::Stripe,
        Provider::Slack,
        Provider::StandardWebhooks,
        Provider::Svix,
        Provider::Shopify,
        Provider::Twilio,
        Provider::Square,
        Provider::Paddle,
        Provider::Discord,
    ];

    /// The lowercase name used in a spec (`github:SECRET`).
    pub fn spec_name(self) -> &'static str {
        match self {
            Provider::GitHub => "github",
            Provider::GitLab => "gitlab",
            Provider::Stripe => "stripe",
            Provider::Slack => "slack",
            Provider::StandardWebhooks => "standardwebhooks",
            Provider::Svix => "svix",
            Provider::Shopify => "shopify",
            Provider::Twilio => "twilio",
            Provider::Square => "square",
            Provider::Paddle => "paddle",
            Provider::Discord => "discord",
        }
    }

    /// The header whose absence means the request was not signed at all.
    pub fn signature_header(self) -> &'static str {
        match self {
            Provider::GitHub => "X-Hub-Signature-256",
            Provider::GitLab => "X-Gitlab-Token",
            Provider::Stripe => "Stripe-Signature",
            Provider::Slack => "X-Slack-Signature",
            Provider::StandardWebhooks => "webhook-signature",
            Provider::Svix => "svix-signature",
            Provider::Shopify => "X-Shopify-Hmac-Sha256",
            Provider::Twilio => "X-Twilio-Signature",
            Provider::Square => "x-square-hmacsha256-signature",
            Provider::Paddle => "Paddle-Signature",
            Provider::Discord => "X-Signature-Ed25519",
        }
    }

    /// How far a signed timestamp may be from `now`, as the provider's own libraries
    /// default it; `None` for schemes that sign no timestamp (or, like Discord, whose
    /// documentation asks for no freshness check).
    pub fn default_tolerance(self) -> Option<Duration> {
        match self {
            Provider::Stripe | Provider::Slack | Provider::StandardWebhooks | Provider::Svix => {
                Some(Duration::from_secs(300))
            }
            // paddle-node-sdk's WebhooksValidator: MAX_VALID_TIME_DIFFERENCE = 5.
            Provider::Paddle => Some(Duration::from_secs(5)),
            Provider::GitHub
            | Provider::GitLab
            | Provider::Shopify
            | Provider::Twilio
            | Provider::Square
            | Provider::Discord => None,
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Provider::GitHub => "GitHub",
            Provider::GitLab => "GitLab",
            Provider::Stripe => "Stripe",
            Provider::Slack => "Slack",
            Provider::StandardWebhooks => "Standard Webhooks",
            Provider::Svix => "Svix",
            Provider::Shopify => "Shopify",
            Provider::Twilio => "Twilio",
            Provider::Square => "Square",
            Provider::Paddle => "Paddle",
            Provider::Discord => "Discord",
        })
    }
}

impl FromStr for Provider {
    type Err = SpecError;

    /// Case-insensitive; `standard-webhooks` and `standard_webhooks` are accepted too.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "standard-webhooks" | "standard_webhooks" => Ok(Provider::StandardWebhooks),
            name => Provider::ALL
                .into_iter()
                .find(|p| p.spec_name() == name)
                .ok_or(SpecError::UnknownProvider),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_names_round_trip_case_insensitively() {
        for p in Provider::ALL {
            assert_eq!(p.spec_name().parse::<Provider>().unwrap(), p);
            assert_eq!(p.spec_name().to_uppercase().parse::<Provider>().unwrap(), p);
        }
        assert_eq!("GitHub".parse::<Provider>().unwrap(), Provider::GitHub);
        assert_eq!(
            "Standard-Webhooks".parse::<Provider>().unwrap(),
            Provider::StandardWebhooks
        );
    }

    #[test]
    fn unknown_provider_is_an_error() {
        assert_eq!(
            "bitbucket".parse::<Provider>(),
            Err(SpecError::UnknownProvider)
        );
        assert_eq!("".parse::<Provider>(), Err(SpecError::UnknownProvider));
    }
}

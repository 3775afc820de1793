//! [`Verdict`]: the outcome of verifying one request, and the timestamp-window rule
//! the timestamped schemes share.

use std::fmt;
use std::time::Duration;

/// What verifying a request concluded. `Display` gives a lowercase console line.
///
/// Messages are built from static text, header names and numbers only — never from
/// header values or key material.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The signature matches and any signed timestamp is within tolerance.
    Valid,
    /// The request carries a well-formed signature that does not match: wrong secret,
    /// altered body, or a URL that differs from the one the sender signed.
    InvalidSignature,
    /// The signature matches but its timestamp is older than the tolerance.
    StaleTimestamp {
        /// How many seconds before `now` the request was signed.
        skew_secs: u64,
        /// The tolerance that was exceeded, in seconds.
        tolerance_secs: u64,
    },
    /// The signature matches but its timestamp lies further ahead than the tolerance.
    FutureTimestamp {
        /// How many seconds after `now` the request claims to be signed.
        skew_secs: u64,
        /// The tolerance that was exceeded, in seconds.
        tolerance_secs: u64,
    },
    /// A header the scheme needs is absent; holds the provider's spelling of its name.
    MissingHeader(&'static str),
    /// A header (or the body, or a URL parameter) is present but cannot be parsed.
    Malformed {
        /// What was malformed: a header name, or `body` / `bodySHA256 query parameter`.
        field: &'static str,
        /// Why, as a short lowercase phrase.
        reason: &'static str,
    },
}

impl Verdict {
    /// Whether the request verified.
    pub fn is_valid(&self) -> bool {
        matches!(self, Verdict::Valid)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Valid => f.write_str("signature valid"),
            Verdict::InvalidSignature => f.write_str("signature does not match"),
            Verdict::StaleTimestamp {
                skew_secs,
                tolerance_secs,
            } => write!(
                f,
                "signature valid but timestamp is {skew_secs} s old (tolerance {tolerance_secs} s)"
            ),
            Verdict::FutureTimestamp {
                skew_secs,
                tolerance_secs,
            } => write!(
                f,
                "signature valid but timestamp is {skew_secs} s in the future (tolerance {tolerance_secs} s)"
            ),
            Verdict::MissingHeader(name) => write!(f, "missing {name} header"),
            Verdict::Malformed { field, reason } => write!(f, "malformed {field}: {reason}"),
        }
    }
}

/// Whether a scheme rejects timestamps ahead of `now`. Stripe's and Paddle's own
/// libraries only bound the age; Slack and Standard Webhooks bound both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Future {
    Reject,
    Accept,
}

/// The shared window rule: a skew of exactly `tolerance` passes, one second more fails
/// (every provider's reference code compares with `>`).
pub(crate) fn check_window(
    signed_at: i64,
    now: i64,
    tolerance: Duration,
    future: Future,
) -> Result<(), Verdict> {
    let tolerance_secs = tolerance.as_secs();
    // i128 so that hostile timestamps like i64::MIN cannot overflow the subtraction.
    let age = i128::from(now) - i128::from(signed_at);
    let skew_secs = u64::try_from(age.unsigned_abs()).unwrap_or(u64::MAX);
    if age > 0 && skew_secs > tolerance_secs {
        return Err(Verdict::StaleTimestamp {
            skew_secs,
            tolerance_secs,
        });
    }
    if age < 0 && future == Future::Reject && skew_secs > tolerance_secs {
        return Err(Verdict::FutureTimestamp {
            skew_secs,
            tolerance_secs,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: Duration = Duration::from_secs(300);

    #[test]
    fn window_boundaries_are_inclusive() {
        assert_eq!(check_window(1000, 1300, TOL, Future::Reject), Ok(()));
        assert_eq!(
            check_window(1000, 1301, TOL, Future::Reject),
            Err(Verdict::StaleTimestamp {
                skew_secs: 301,
                tolerance_secs: 300
            })
        );
        assert_eq!(check_window(1300, 1000, TOL, Future::Reject), Ok(()));
        assert_eq!(
            check_window(1301, 1000, TOL, Future::Reject),
            Err(Verdict::FutureTimestamp {
                skew_secs: 301,
                tolerance_secs: 300
            })
        );
        assert_eq!(check_window(1_000_000, 1000, TOL, Future::Accept), Ok(()));
    }

    #[test]
    fn extreme_timestamps_do_not_overflow() {
        assert!(matches!(
            check_window(i64::MIN, i64::MAX, TOL, Future::Reject),
            Err(Verdict::StaleTimestamp {
                skew_secs: u64::MAX,
                ..
            })
        ));
        assert!(matches!(
            check_window(i64::MAX, i64::MIN, TOL, Future::Reject),
            Err(Verdict::FutureTimestamp { .. })
        ));
    }

    #[test]
    fn display_is_a_console_line() {
        assert_eq!(Verdict::Valid.to_string(), "signature valid");
        assert_eq!(
            Verdict::InvalidSignature.to_string(),
            "signature does not match"
        );
        assert_eq!(
            Verdict::StaleTimestamp {
                skew_secs: 301,
                tolerance_secs: 300
            }
            .to_string(),
            "signature valid but timestamp is 301 s old (tolerance 300 s)"
        );
        assert_eq!(
            Verdict::FutureTimestamp {
                skew_secs: 9,
                tolerance_secs: 5
            }
            .to_string(),
            "signature valid but timestamp is 9 s in the future (tolerance 5 s)"
        );
        assert_eq!(
            Verdict::MissingHeader("Stripe-Signature").to_string(),
            "missing Stripe-Signature header"
        );
        assert_eq!(
            Verdict::Malformed {
                field: "X-Slack-Signature",
                reason: "expected v0=<64 hex digits>"
            }
            .to_string(),
            "malformed X-Slack-Signature: expected v0=<64 hex digits>"
        );
    }
}

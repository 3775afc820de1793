//! The delivery option of a bind ([`crate::options::DELIVERY`]) and the queue commands
//! a client may send on its control stream.
//!
//! Delivery says how the relay treats a tunnel's requests: `passthrough` (the visitor
//! waits for the app) or `queue` (the relay stores the request durably, answers at
//! once, and delivers it in arrival order), and what to do while no client holds a
//! reserved name (`queue` stores it for later, `reject` answers 503). The value is two
//! bytes: mode, then offline behaviour; unknown values are invalid, never guessed.

use crate::codec::Invalid;

/// How a tunnel's requests reach the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryMode {
    /// The visitor waits for the app's real response.
    #[default]
    Passthrough,
    /// The relay stores the request, answers at once, and delivers it later, in order.
    Queue,
}

/// What a reserved name does while no client holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OfflineMode {
    /// Store the request and answer at once; deliver when the client is back.
    #[default]
    Queue,
    /// Answer 503 with `Retry-After`, so the sender's own retries work.
    Reject,
}

/// The value of a [`crate::options::DELIVERY`] option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delivery {
    /// While the client is online.
    pub mode: DeliveryMode,
    /// While it is not.
    pub offline: OfflineMode,
}

impl Delivery {
    /// The two-byte option value.
    pub fn encode(&self) -> Vec<u8> {
        let mode = match self.mode {
            DeliveryMode::Passthrough => 0,
            DeliveryMode::Queue => 1,
        };
        let offline = match self.offline {
            OfflineMode::Queue => 0,
            OfflineMode::Reject => 1,
        };
        vec![mode, offline]
    }

    /// Parses an option value written by [`Delivery::encode`].
    pub fn decode(value: &[u8]) -> Result<Self, Invalid> {
        let [mode, offline] = value else {
            return Err(Invalid::BadValue("delivery option"));
        };
        let mode = match mode {
            0 => DeliveryMode::Passthrough,
            1 => DeliveryMode::Queue,
            _ => return Err(Invalid::BadValue("delivery mode")),
        };
        let offline = match offline {
            0 => OfflineMode::Queue,
            1 => OfflineMode::Reject,
            _ => return Err(Invalid::BadValue("offline mode")),
        };
        Ok(Self { mode, offline })
    }

    /// The option to put in a bind. It is critical: a relay that cannot queue must
    /// refuse the bind rather than let the client believe its webhooks are kept.
    pub fn to_option(&self) -> crate::TunnelOption {
        crate::TunnelOption::new(
            crate::options::DELIVERY | crate::TunnelOption::CRITICAL,
            self.encode(),
        )
    }
}

impl std::str::FromStr for DeliveryMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "passthrough" => Ok(Self::Passthrough),
            "queue" => Ok(Self::Queue),
            _ => Err(format!("expected `queue` or `passthrough`, got {s:?}")),
        }
    }
}

impl std::str::FromStr for OfflineMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "queue" => Ok(Self::Queue),
            "reject" => Ok(Self::Reject),
            _ => Err(format!("expected `queue` or `reject`, got {s:?}")),
        }
    }
}

impl DeliveryMode {
    /// `"passthrough"` or `"queue"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passthrough => "passthrough",
            Self::Queue => "queue",
        }
    }
}

impl OfflineMode {
    /// `"queue"` or `"reject"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queue => "queue",
            Self::Reject => "reject",
        }
    }
}

/// A queue command from `porthole queue …`, sent on a control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueOp {
    /// List the queued, delivered and dead exchanges of the token's names (newest
    /// first), optionally of one name.
    List {
        /// Only this name.
        name: Option<String>,
        /// At most this many entries.
        limit: u32,
    },
    /// Queue a dead (or delivered) exchange again.
    Retry {
        /// Its queue id.
        id: u64,
    },
    /// Delete an exchange from the queue.
    Drop {
        /// Its queue id.
        id: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_bad_ones_are_invalid() {
        for mode in [DeliveryMode::Passthrough, DeliveryMode::Queue] {
            for offline in [OfflineMode::Queue, OfflineMode::Reject] {
                let d = Delivery { mode, offline };
                assert_eq!(Delivery::decode(&d.encode()).unwrap(), d);
            }
        }
        assert_eq!(
            Delivery {
                mode: DeliveryMode::Queue,
                offline: OfflineMode::Reject
            }
            .encode(),
            vec![1, 1]
        );
        assert!(Delivery::decode(&[]).is_err());
        assert!(Delivery::decode(&[2, 0]).is_err());
        assert!(Delivery::decode(&[0, 2]).is_err());
        assert!(Delivery::decode(&[0, 0, 0]).is_err());
        assert!(Delivery::default().to_option().is_critical());
    }

    #[test]
    fn names_parse() {
        assert_eq!("queue".parse::<DeliveryMode>(), Ok(DeliveryMode::Queue));
        assert!("later".parse::<DeliveryMode>().is_err());
        assert_eq!("reject".parse::<OfflineMode>(), Ok(OfflineMode::Reject));
    }
}

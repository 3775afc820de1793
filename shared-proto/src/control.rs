//! Messages on a session's control stream, the first bidirectional stream the client
//! opens: hello and auth, tunnel binding, goaway.
//!
//! The exchange is strictly ordered: the client sends [`ClientMessage::Hello`] and the
//! relay answers [`ServerMessage::Welcome`] or [`ServerMessage::Refused`]; then each
//! [`ClientMessage::Bind`] gets exactly one [`ServerMessage::Bound`] or
//! [`ServerMessage::BindRefused`], in order. [`ServerMessage::GoAway`] may come at any
//! time after the welcome.

use bytes::{BufMut, BytesMut};

use crate::codec::{put_blob, put_opt_string, put_string, EncodeError, Frame, Invalid, Reader};
use crate::delivery::QueueOp;
use crate::limits::{MAX_STRING_LEN, MAX_TOKEN_LEN};
use crate::secret::Secret;

const TAG_HELLO: u8 = 0x01;
const TAG_BIND: u8 = 0x02;
const TAG_QUEUE: u8 = 0x03;
const TAG_LANE: u8 = 0x04;
const TAG_WELCOME: u8 = 0x81;
const TAG_REFUSED: u8 = 0x82;
const TAG_BOUND: u8 = 0x83;
const TAG_BIND_REFUSED: u8 = 0x84;
const TAG_GOAWAY: u8 = 0x85;
const TAG_EXCHANGE_REFUSED: u8 = 0x86;
const TAG_QUEUE_REPORT: u8 = 0x87;

/// What kind of traffic a tunnel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelKind {
    /// HTTP requests routed by Host name.
    Http,
    /// Raw TCP connections on a public port.
    Tcp,
}

impl TunnelKind {
    fn to_u8(self) -> u8 {
        match self {
            TunnelKind::Http => 0,
            TunnelKind::Tcp => 1,
        }
    }

    fn from_u8(v: u8) -> Result<Self, Invalid> {
        match v {
            0 => Ok(TunnelKind::Http),
            1 => Ok(TunnelKind::Tcp),
            _ => Err(Invalid::BadValue("tunnel kind")),
        }
    }
}

/// Why the relay refused a hello or a bind. Unknown codes decode as `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The client and relay speak different protocol versions.
    VersionMismatch,
    /// The token is missing, unknown or revoked.
    Unauthorized,
    /// The requested name is reserved by another token or held by another session.
    NameTaken,
    /// The requested name is not a valid DNS label or is not allowed.
    NameInvalid,
    /// A per-token limit (tunnels, rate) was reached.
    LimitExceeded,
    /// The relay is draining and takes no new tunnels.
    Draining,
    /// Too many failed attempts from this address; wait before retrying.
    Throttled,
    /// Anything else, including codes from a newer relay.
    Other(u16),
}

impl ErrorCode {
    fn to_u16(self) -> u16 {
        match self {
            ErrorCode::VersionMismatch => 1,
            ErrorCode::Unauthorized => 2,
            ErrorCode::NameTaken => 3,
            ErrorCode::NameInvalid => 4,
            ErrorCode::LimitExceeded => 5,
            ErrorCode::Draining => 6,
            ErrorCode::Throttled => 7,
            ErrorCode::Other(v) => v,
        }
    }

    fn from_u16(v: u16) -> Self {
        match v {
            1 => ErrorCode::VersionMismatch,
            2 => ErrorCode::Unauthorized,
            3 => ErrorCode::NameTaken,
            4 => ErrorCode::NameInvalid,
            5 => ErrorCode::LimitExceeded,
            6 => ErrorCode::Draining,
            7 => ErrorCode::Throttled,
            v => ErrorCode::Other(v),
        }
    }

    /// Whether retrying the same request later can succeed (a client should not loop
    /// on the others).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Draining | ErrorCode::Throttled | ErrorCode::Other(_)
        )
    }
}

/// One per-tunnel option carried in a bind, as a tag and an opaque value, so features
/// (edge policy, delivery mode, TCP ports…) add options without changing the bind
/// frame. A tag with [`TunnelOption::CRITICAL`] set must be understood: a relay that
/// does not know it refuses the bind instead of silently ignoring, say, a policy it
/// was asked to enforce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelOption {
    /// What the option is; the high bit marks it critical.
    pub tag: u16,
    /// The option's encoded value (its format belongs to the feature that owns it).
    pub value: Vec<u8>,
}

impl TunnelOption {
    /// Bit that marks an option the relay must understand.
    pub const CRITICAL: u16 = 0x8000;

    /// An option.
    pub fn new(tag: u16, value: impl Into<Vec<u8>>) -> Self {
        Self {
            tag,
            value: value.into(),
        }
    }

    /// Whether a relay that does not know this option must refuse the bind.
    pub fn is_critical(&self) -> bool {
        self.tag & Self::CRITICAL != 0
    }
}

/// Most options one bind may carry.
pub const MAX_TUNNEL_OPTIONS: usize = 64;

/// Messages the client sends on the control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// First message of a session: protocol version, credential, and who is asking.
    Hello {
        /// The client's [`crate::PROTOCOL_VERSION`]; always the first field, in every
        /// version, so any relay can answer a mismatch clearly.
        version: u16,
        /// The client token; never logged.
        token: Secret,
        /// Client software and version, for the relay's logs (`porthole/0.1.0`).
        agent: String,
    },
    /// Asks for one tunnel; answered in order by `Bound` or `BindRefused`.
    Bind {
        /// Requested name; `None` asks the relay for a random one.
        name: Option<String>,
        /// HTTP or TCP.
        kind: TunnelKind,
        /// Reserve the name for this token, persistently (`--name`). A client taking
        /// back a random name after a reconnect asks without reserving.
        reserve: bool,
        /// Per-tunnel options (policy, delivery mode, …).
        options: Vec<TunnelOption>,
    },
    /// A queue command (`porthole queue …`) on the names this token reserved; answered
    /// by one [`ServerMessage::QueueReport`].
    Queue(QueueOp),
    /// Instead of binds: this connection is the bulk lane of the session `session_id`
    /// (its [`ServerMessage::Welcome`] id), opened with the same token. The client
    /// sends large response bodies on it, one unidirectional stream each
    /// ([`crate::LaneHead`]), so that they can be carried by low-priority threads on
    /// both sides (docs/streaming.md). The relay does not answer; the connection
    /// lives as long as the session.
    Lane {
        /// The session this lane belongs to.
        session_id: u64,
    },
}

/// Messages the relay sends on the control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    /// The hello was accepted.
    Welcome {
        /// The relay's protocol version.
        version: u16,
        /// Relay-assigned id of this session, for correlating logs.
        session_id: u64,
    },
    /// The hello was refused; the relay closes the session after sending this.
    Refused {
        /// Machine-readable reason.
        code: ErrorCode,
        /// One sentence for the user.
        message: String,
    },
    /// A tunnel was bound.
    Bound {
        /// Id that data-stream heads carry for this tunnel.
        tunnel_id: u32,
        /// The name the tunnel got (the requested one, or a random one).
        name: String,
        /// The public URL (`http://NAME.DOMAIN:PORT`, or `tcp://HOST:PORT`).
        url: String,
    },
    /// A bind was refused; the session stays up.
    BindRefused {
        /// Machine-readable reason.
        code: ErrorCode,
        /// One sentence for the user.
        message: String,
    },
    /// The relay is draining: finish in-flight exchanges and reconnect.
    GoAway {
        /// Why, for the user.
        reason: String,
    },
    /// The relay refused a visitor's request for one of this session's tunnels (edge
    /// policy, operator signature check), so the request never crossed the tunnel.
    /// Sent only for tunnels whose bind carried
    /// [`crate::options::REFUSAL_NOTICES`]; the client records it for its inspector.
    ExchangeRefused {
        /// The tunnel the request was for.
        tunnel_id: u32,
        /// Request method.
        method: String,
        /// Request path and query.
        path: String,
        /// The status the visitor got (401, 403, 413).
        status: u16,
        /// Why, as the short text the visitor got.
        reason: String,
        /// The visitor's address as the relay saw it.
        visitor: Option<String>,
    },
    /// The answer to a [`ClientMessage::Queue`]: a JSON document (`{"entries": […]}`,
    /// `{"ok": …}` or `{"error": "…"}`), so the listing can grow fields without a new
    /// frame format.
    QueueReport {
        /// The JSON text.
        json: String,
    },
}

impl Frame for ClientMessage {
    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            ClientMessage::Hello {
                version,
                token,
                agent,
            } => {
                dst.put_u8(TAG_HELLO);
                dst.put_u16(*version);
                put_blob(dst, token.expose().as_bytes(), MAX_TOKEN_LEN, "token")?;
                put_string(dst, agent, "agent")
            }
            ClientMessage::Bind {
                name,
                kind,
                reserve,
                options,
            } => {
                dst.put_u8(TAG_BIND);
                dst.put_u8(kind.to_u8());
                dst.put_u8(u8::from(*reserve));
                put_opt_string(dst, name.as_deref(), "name")?;
                if options.len() > MAX_TUNNEL_OPTIONS {
                    return Err(EncodeError::TooLarge("tunnel options"));
                }
                // The count fits: MAX_TUNNEL_OPTIONS is below u16::MAX.
                dst.put_u16(options.len() as u16);
                for o in options {
                    dst.put_u16(o.tag);
                    put_blob(dst, &o.value, MAX_STRING_LEN, "tunnel option")?;
                }
                Ok(())
            }
            ClientMessage::Queue(op) => {
                dst.put_u8(TAG_QUEUE);
                match op {
                    QueueOp::List { name, limit } => {
                        dst.put_u8(0);
                        put_opt_string(dst, name.as_deref(), "name")?;
                        dst.put_u32(*limit);
                    }
                    QueueOp::Retry { id } => {
                        dst.put_u8(1);
                        dst.put_u64(*id);
                    }
                    QueueOp::Drop { id } => {
                        dst.put_u8(2);
                        dst.put_u64(*id);
                    }
                }
                Ok(())
            }
            ClientMessage::Lane { session_id } => {
                dst.put_u8(TAG_LANE);
                dst.put_u64(*session_id);
                Ok(())
            }
        }
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, Invalid> {
        match r.u8("tag")? {
            TAG_HELLO => {
                let version = r.u16("version")?;
                let token = r.str(MAX_TOKEN_LEN, "token")?;
                Ok(ClientMessage::Hello {
                    version,
                    token: Secret::new(token),
                    agent: r.string("agent")?,
                })
            }
            TAG_BIND => {
                let kind = TunnelKind::from_u8(r.u8("kind")?)?;
                let reserve = match r.u8("reserve")? {
                    0 => false,
                    1 => true,
                    _ => return Err(Invalid::BadValue("reserve")),
                };
                let name = r.opt_string("name")?;
                let count = r.u16("option count")? as usize;
                if count > MAX_TUNNEL_OPTIONS {
                    return Err(Invalid::BadValue("option count"));
                }
                let mut options = Vec::with_capacity(count);
                for _ in 0..count {
                    let tag = r.u16("option tag")?;
                    let value = r.blob(MAX_STRING_LEN, "tunnel option")?.to_vec();
                    options.push(TunnelOption { tag, value });
                }
                Ok(ClientMessage::Bind {
                    kind,
                    reserve,
                    name,
                    options,
                })
            }
            TAG_LANE => Ok(ClientMessage::Lane {
                session_id: r.u64("session id")?,
            }),
            TAG_QUEUE => Ok(ClientMessage::Queue(match r.u8("queue op")? {
                0 => QueueOp::List {
                    name: r.opt_string("name")?,
                    limit: r.u32("limit")?,
                },
                1 => QueueOp::Retry { id: r.u64("id")? },
                2 => QueueOp::Drop { id: r.u64("id")? },
                _ => return Err(Invalid::BadValue("queue op")),
            })),
            tag => Err(Invalid::UnknownTag(tag)),
        }
    }
}

impl Frame for ServerMessage {
    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            ServerMessage::Welcome {
                version,
                session_id,
            } => {
                dst.put_u8(TAG_WELCOME);
                dst.put_u16(*version);
                dst.put_u64(*session_id);
                Ok(())
            }
            ServerMessage::Refused { code, message } => {
                dst.put_u8(TAG_REFUSED);
                dst.put_u16(code.to_u16());
                put_string(dst, message, "message")
            }
            ServerMessage::Bound {
                tunnel_id,
                name,
                url,
            } => {
                dst.put_u8(TAG_BOUND);
                dst.put_u32(*tunnel_id);
                put_string(dst, name, "name")?;
                put_string(dst, url, "url")
            }
            ServerMessage::BindRefused { code, message } => {
                dst.put_u8(TAG_BIND_REFUSED);
                dst.put_u16(code.to_u16());
                put_string(dst, message, "message")
            }
            ServerMessage::GoAway { reason } => {
                dst.put_u8(TAG_GOAWAY);
                put_string(dst, reason, "reason")
            }
            ServerMessage::ExchangeRefused {
                tunnel_id,
                method,
                path,
                status,
                reason,
                visitor,
            } => {
                dst.put_u8(TAG_EXCHANGE_REFUSED);
                dst.put_u32(*tunnel_id);
                put_string(dst, method, "method")?;
                put_string(dst, path, "path")?;
                dst.put_u16(*status);
                put_string(dst, reason, "reason")?;
                put_opt_string(dst, visitor.as_deref(), "visitor")
            }
            ServerMessage::QueueReport { json } => {
                dst.put_u8(TAG_QUEUE_REPORT);
                put_string(dst, json, "queue report")
            }
        }
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, Invalid> {
        match r.u8("tag")? {
            TAG_WELCOME => Ok(ServerMessage::Welcome {
                version: r.u16("version")?,
                session_id: r.u64("session id")?,
            }),
            TAG_REFUSED => Ok(ServerMessage::Refused {
                code: ErrorCode::from_u16(r.u16("code")?),
                message: r.string("message")?,
            }),
            TAG_BOUND => Ok(ServerMessage::Bound {
                tunnel_id: r.u32("tunnel id")?,
                name: r.string("name")?,
                url: r.string("url")?,
            }),
            TAG_BIND_REFUSED => Ok(ServerMessage::BindRefused {
                code: ErrorCode::from_u16(r.u16("code")?),
                message: r.string("message")?,
            }),
            TAG_GOAWAY => Ok(ServerMessage::GoAway {
                reason: r.string("reason")?,
            }),
            TAG_EXCHANGE_REFUSED => Ok(ServerMessage::ExchangeRefused {
                tunnel_id: r.u32("tunnel id")?,
                method: r.string("method")?,
                path: r.string("path")?,
                status: r.u16("status")?,
                reason: r.string("reason")?,
                visitor: r.opt_string("visitor")?,
            }),
            TAG_QUEUE_REPORT => Ok(ServerMessage::QueueReport {
                json: r.string("queue report")?,
            }),
            tag => Err(Invalid::UnknownTag(tag)),
        }
    }
}

/// A protocol version mismatch, phrased for the user: it says which side to upgrade.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionMismatch {
    /// The client is older than the relay.
    #[error("this relay speaks porthole protocol {relay} and the client speaks {client}: upgrade the client (porthole)")]
    UpgradeClient {
        /// Client's version.
        client: u16,
        /// Relay's version.
        relay: u16,
    },
    /// The relay is older than the client.
    #[error("this relay speaks porthole protocol {relay} and the client speaks {client}: upgrade the relay (porthole-relay)")]
    UpgradeRelay {
        /// Client's version.
        client: u16,
        /// Relay's version.
        relay: u16,
    },
}

/// The relay's version rule: it accepts exactly its own version and names the side to
/// upgrade otherwise.
pub fn check_version(client: u16, relay: u16) -> Result<(), VersionMismatch> {
    use std::cmp::Ordering::*;
    match client.cmp(&relay) {
        Equal => Ok(()),
        Less => Err(VersionMismatch::UpgradeClient { client, relay }),
        Greater => Err(VersionMismatch::UpgradeRelay { client, relay }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::testing::{check, round_trip};
    use crate::codec::DecodeError;

    #[test]
    fn hello_golden() {
        check(
            &ClientMessage::Hello {
                version: 1,
                token: Secret::new("tok"),
                agent: "p/1".into(),
            },
            "0000001101000100000003746f6b00000003702f31",
        );
    }

    #[test]
    fn bind_golden() {
        check(
            &ClientMessage::Bind {
                name: Some("ab".into()),
                kind: TunnelKind::Http,
                reserve: true,
                options: vec![TunnelOption::new(0x8001, b"x".to_vec())],
            },
            "0000001302000101000000026162000180010000000178",
        );
        check(
            &ClientMessage::Bind {
                name: None,
                kind: TunnelKind::Tcp,
                reserve: false,
                options: vec![],
            },
            "00000006020100000000",
        );
    }

    #[test]
    fn server_messages_golden() {
        check(
            &ServerMessage::Welcome {
                version: 1,
                session_id: 7,
            },
            "0000000b8100010000000000000007",
        );
        check(
            &ServerMessage::Refused {
                code: ErrorCode::Unauthorized,
                message: "no".into(),
            },
            "00000009820002000000026e6f",
        );
    }

    #[test]
    fn exchange_refused_golden() {
        check(
            &ServerMessage::ExchangeRefused {
                tunnel_id: 1,
                method: "GET".into(),
                path: "/".into(),
                status: 403,
                reason: "no".into(),
                visitor: None,
            },
            "0000001a860000000100000003474554000000012f0193000000026e6f00",
        );
    }

    #[test]
    fn every_message_round_trips() {
        let msgs = [
            ServerMessage::Bound {
                tunnel_id: 3,
                name: "pay-hooks".into(),
                url: "http://pay-hooks.localhost:8080".into(),
            },
            ServerMessage::BindRefused {
                code: ErrorCode::NameTaken,
                message: "taken".into(),
            },
            ServerMessage::GoAway {
                reason: "draining".into(),
            },
            ServerMessage::Refused {
                code: ErrorCode::Other(999),
                message: String::new(),
            },
            ServerMessage::ExchangeRefused {
                tunnel_id: 2,
                method: "POST".into(),
                path: "/hook?x=1".into(),
                status: 401,
                reason: "porthole: authentication required".into(),
                visitor: Some("203.0.113.9:5000".into()),
            },
            ServerMessage::ExchangeRefused {
                tunnel_id: 1,
                method: "GET".into(),
                path: "/".into(),
                status: 403,
                reason: String::new(),
                visitor: None,
            },
            ServerMessage::QueueReport {
                json: "{\"entries\":[]}".into(),
            },
        ];
        for m in &msgs {
            round_trip(m);
        }
        for code in [
            ErrorCode::VersionMismatch,
            ErrorCode::LimitExceeded,
            ErrorCode::NameInvalid,
            ErrorCode::Draining,
            ErrorCode::Throttled,
        ] {
            round_trip(&ServerMessage::BindRefused {
                code,
                message: "m".into(),
            });
        }
    }

    #[test]
    fn lane_golden_and_round_trip() {
        check(
            &ClientMessage::Lane { session_id: 7 },
            "00000009040000000000000007",
        );
        round_trip(&ClientMessage::Lane {
            session_id: u64::MAX,
        });
    }

    #[test]
    fn queue_commands_golden_and_round_trip() {
        check(
            &ClientMessage::Queue(QueueOp::Retry { id: 5 }),
            "0000000a03010000000000000005",
        );
        for op in [
            QueueOp::List {
                name: Some("hooks".into()),
                limit: 100,
            },
            QueueOp::List {
                name: None,
                limit: 1,
            },
            QueueOp::Drop { id: u64::MAX },
        ] {
            round_trip(&ClientMessage::Queue(op));
        }
        assert!(matches!(
            ClientMessage::decode(&[0, 0, 0, 2, TAG_QUEUE, 9]),
            Err(DecodeError::Invalid(Invalid::BadValue("queue op")))
        ));
    }

    #[test]
    fn garbage_is_invalid_not_a_panic() {
        assert!(matches!(
            ClientMessage::decode(&[0, 0, 0, 1, 0x7f]),
            Err(DecodeError::Invalid(Invalid::UnknownTag(0x7f)))
        ));
        assert!(matches!(
            ServerMessage::decode(&[0, 0, 0, 1, TAG_HELLO]),
            Err(DecodeError::Invalid(Invalid::UnknownTag(_)))
        ));
        // A bind with a bad kind byte.
        assert!(matches!(
            ClientMessage::decode(&[0, 0, 0, 6, TAG_BIND, 9, 0, 0, 0, 0]),
            Err(DecodeError::Invalid(Invalid::BadValue("tunnel kind")))
        ));
        // A hello whose token is over the limit.
        let mut frame = vec![0, 0, 0, 0, TAG_HELLO, 0, 1];
        frame.extend_from_slice(&((MAX_TOKEN_LEN + 1) as u32).to_be_bytes());
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(
            ClientMessage::decode(&frame),
            Err(DecodeError::Invalid(_))
        ));
        // Every byte pattern of a short frame decodes or fails without panicking.
        for a in 0..=255u8 {
            for b in [0u8, 1, 2, 0x81, 0xff] {
                let _ = ClientMessage::decode(&[0, 0, 0, 3, a, b, a]);
                let _ = ServerMessage::decode(&[0, 0, 0, 3, a, b, a]);
            }
        }
    }

    #[test]
    fn critical_options_are_marked() {
        assert!(TunnelOption::new(0x8001, vec![]).is_critical());
        assert!(!TunnelOption::new(0x0001, vec![]).is_critical());
        let too_many = ClientMessage::Bind {
            name: None,
            kind: TunnelKind::Http,
            reserve: false,
            options: vec![TunnelOption::new(1, vec![]); MAX_TUNNEL_OPTIONS + 1],
        };
        let mut buf = BytesMut::new();
        assert!(too_many.encode(&mut buf).is_err());
        assert!(buf.is_empty());
    }

    #[test]
    fn version_rule_names_the_side_to_upgrade() {
        assert!(check_version(1, 1).is_ok());
        let old_client = check_version(1, 2).unwrap_err().to_string();
        assert!(old_client.contains("upgrade the client"), "{old_client}");
        let old_relay = check_version(3, 2).unwrap_err().to_string();
        assert!(old_relay.contains("upgrade the relay"), "{old_relay}");
    }

    #[test]
    fn hello_debug_masks_the_token() {
        let hello = ClientMessage::Hello {
            version: 1,
            token: Secret::new("ph_supersecret"),
            agent: "a".into(),
        };
        assert!(!format!("{hello:?}").contains("supersecret"));
    }
}

//! The Porthole wire protocol, sans-IO: message types, the framing codec and the
//! handshake rules shared by the relay and the client.
//!
//! Nothing here touches a socket, a runtime or a clock; the relay and the client drive
//! these types over QUIC streams. See `docs/internals.md` for the life of one webhook.
//!
//! # Layout
//!
//! - [`codec`]: length-prefixed frames and the primitive encoders/decoders.
//! - [`control`]: messages on a session's control stream ([`ClientMessage`],
//!   [`ServerMessage`]) and the version rule.
//! - [`data`]: the head frames that open a data stream ([`StreamHead`],
//!   [`ResponseHead`]) and the frames of a framed body ([`BodyChunk`]).
//! - [`delivery`]: the delivery option (queue / passthrough) and queue commands.
//! - [`name`]: [`TunnelName`], a validated DNS label.
//! - [`options`]: tags of per-tunnel bind options.
//! - [`secret`]: [`Secret`], a string that never prints its value.

#![warn(missing_docs)]

pub mod codec;
pub mod control;
pub mod data;
pub mod delivery;
pub mod name;
pub mod options;
pub mod secret;

pub use codec::{DecodeError, EncodeError, Frame, Invalid};
pub use control::{
    check_version, ClientMessage, ErrorCode, ServerMessage, TunnelKind, TunnelOption,
    VersionMismatch, MAX_TUNNEL_OPTIONS,
};
pub use data::{
    BodyChunk, Headers, LaneHead, RequestHead, ResponseHead, Scheme, StreamHead, TcpHead,
    MAX_CHUNK_DATA,
};
pub use name::{NameError, TunnelName};
pub use secret::Secret;

/// ALPN protocol identifier for the QUIC connection between client and relay.
pub const ALPN: &[u8] = b"porthole/1";

/// Version of the protocol spoken by this build; carried in the first control message.
pub const PROTOCOL_VERSION: u16 = 1;

/// Hard limits that both sides enforce when decoding.
pub mod limits {
    /// Largest frame body accepted, in bytes (the 4-byte length prefix not included).
    pub const MAX_FRAME_LEN: usize = 256 * 1024;
    /// Most headers one head frame may carry.
    pub const MAX_HEADERS: usize = 256;
    /// Longest header name, in bytes.
    pub const MAX_HEADER_NAME_LEN: usize = 1024;
    /// Longest header value, in bytes.
    pub const MAX_HEADER_VALUE_LEN: usize = 64 * 1024;
    /// Longest string field (URI, message, URL), in bytes.
    pub const MAX_STRING_LEN: usize = 64 * 1024;
    /// Longest token accepted in a hello, in bytes.
    pub const MAX_TOKEN_LEN: usize = 512;
}

/// QUIC application error codes used to close a session or reset a stream.
///
/// Closing with a code (and a reason string) lets the other side say *why* a session
/// ended, instead of reporting a bare timeout.
pub mod codes {
    /// Session closed normally (client exiting, relay shutting down).
    pub const CLOSE_NORMAL: u32 = 0;
    /// Session replaced: the same token connected again and took its names back.
    pub const CLOSE_REPLACED: u32 = 1;
    /// The token behind the session was revoked.
    pub const CLOSE_REVOKED: u32 = 2;
    /// The peer broke the protocol (bad frame, unexpected message).
    pub const CLOSE_PROTOCOL: u32 = 3;
    /// Authentication failed or the version is not supported.
    pub const CLOSE_REFUSED: u32 = 4;
    /// The relay is draining; reconnect (to this or another relay).
    pub const CLOSE_GOAWAY: u32 = 5;

    /// Stream reset: the exchange was cancelled (visitor went away, shutdown).
    pub const RESET_CANCELLED: u32 = 1;
    /// Stream reset: the body could not be carried to the end (peer or target failed).
    pub const RESET_FAILED: u32 = 2;
}

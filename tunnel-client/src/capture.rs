//! What the forwarder records about each exchange, and the seams through which the
//! console, the inspector and replay see it.
//!
//! The forwarder owns the bytes; this module only keeps copies of body *prefixes* (up
//! to a cap) as they stream past, so capture never buffers or slows an exchange. A
//! finished [`Exchange`] is handed to every [`ExchangeSink`]; sinks must not block.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};

/// Identifier of one captured exchange, unique within one client's history (it keeps
/// increasing across restarts when the history is persisted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExchangeId(pub u64);

impl std::fmt::Display for ExchangeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A body as captured: the first `cap` bytes exactly, and the full size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapturedBody {
    /// The first bytes of the body, byte-exact (not necessarily UTF-8).
    pub bytes: Bytes,
    /// The body's full size in bytes, as it crossed the tunnel.
    pub size: u64,
    /// Whether `bytes` holds only the start of the body.
    pub truncated: bool,
}

/// The request side of a captured exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedRequest {
    /// Method (`POST`).
    pub method: String,
    /// Path and query (`/stripe?x=1`).
    pub uri: String,
    /// Headers in order, values as raw bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body (prefix).
    pub body: CapturedBody,
}

/// The response side of a captured exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedResponse {
    /// Status code.
    pub status: u16,
    /// Headers in order, values as raw bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body (prefix).
    pub body: CapturedBody,
}

/// How an exchange ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The target answered and the whole response was carried back.
    Completed,
    /// The target could not be reached or failed; the client answered 502 with this
    /// reason.
    TargetError(String),
    /// The target did not answer in time; the client answered 504.
    TargetTimeout,
    /// The exchange was cut short (visitor went away, tunnel lost, body failed).
    Cancelled(String),
    /// The relay refused the request (edge policy, operator signature rule); it never
    /// crossed the tunnel. Holds the text the visitor got.
    RefusedAtEdge(String),
    /// The client refused the request before the target saw it (`--verify-enforce`).
    Rejected(String),
}

impl Outcome {
    /// A short machine-readable word: `completed`, `target_error`, `target_timeout`,
    /// `cancelled`, `refused_at_edge`, `rejected`.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::TargetError(_) => "target_error",
            Outcome::TargetTimeout => "target_timeout",
            Outcome::Cancelled(_) => "cancelled",
            Outcome::RefusedAtEdge(_) => "refused_at_edge",
            Outcome::Rejected(_) => "rejected",
        }
    }

    /// The reason, for outcomes that have one.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::TargetError(r)
            | Outcome::Cancelled(r)
            | Outcome::RefusedAtEdge(r)
            | Outcome::Rejected(r) => Some(r),
            Outcome::Completed | Outcome::TargetTimeout => None,
        }
    }
}

/// One exchange as captured, handed to sinks when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// This exchange's id.
    pub id: ExchangeId,
    /// The id of the exchange this one replays, if it is a replay.
    pub replay_of: Option<ExchangeId>,
    /// Name of the tunnel it came through (empty for replays of unknown tunnels).
    pub tunnel: String,
    /// The target it was forwarded to (`http://127.0.0.1:3000`).
    pub target: String,
    /// When the request head reached the client.
    pub started_at: SystemTime,
    /// Time until the response head arrived from the target.
    pub time_to_head: Option<Duration>,
    /// Time until the exchange ended (response body finished or failure).
    pub duration: Duration,
    /// The visitor's address as the relay saw it.
    pub visitor: Option<SocketAddr>,
    /// The request.
    pub request: CapturedRequest,
    /// The response, when one was produced (including the client's own 502/504).
    pub response: Option<CapturedResponse>,
    /// How it ended.
    pub outcome: Outcome,
    /// The webhook signature verdict, when the tunnel has verifiers.
    pub signature: Option<crate::signatures::SignatureCheck>,
}

/// Receives finished exchanges. Implementations must return quickly (hand off to a
/// channel or a background task), because they run on the forwarding path.
pub trait ExchangeSink: Send + Sync + 'static {
    /// Called once for every exchange, when it ends.
    fn record(&self, exchange: &Exchange);

    /// Like [`ExchangeSink::record`], for a shared exchange: a sink that keeps the
    /// exchange overrides this to hold the `Arc` instead of copying every header.
    fn record_shared(&self, exchange: &Arc<Exchange>) {
        self.record(exchange);
    }
}

/// A request to replay, possibly edited, as the inspector sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRequest {
    /// The exchange being replayed.
    pub replay_of: ExchangeId,
    /// Tunnel whose target receives the replay.
    pub tunnel: String,
    /// Method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole body to send.
    pub body: Bytes,
    /// Sign the request afresh when the tunnel has a verifier for its provider
    /// (`false`: `--no-resign`, keep the captured headers).
    pub resign: bool,
}

/// A boxed future, for object-safe async traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Sends replays to a tunnel's target; implemented by the forwarder. The replay is
/// recorded as a new exchange (linked by `replay_of`) and its id answered.
pub trait Replayer: Send + Sync + 'static {
    /// Sends `req` to its tunnel's target and answers the new exchange's id once the
    /// exchange has ended and been recorded.
    fn replay(&self, req: ReplayRequest) -> BoxFuture<'static, Result<ExchangeId, String>>;
}

/// Hands out exchange ids; seeded from the persisted history so ids keep increasing.
#[derive(Debug)]
pub struct IdSource(std::sync::atomic::AtomicU64);

impl IdSource {
    /// Ids start at `first` (at least 1).
    pub fn new(first: u64) -> Self {
        Self(std::sync::atomic::AtomicU64::new(first.max(1)))
    }

    /// The next id.
    pub fn next(&self) -> ExchangeId {
        ExchangeId(self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

/// Keeps the first `cap` bytes of a body as it streams past and counts the rest.
#[derive(Debug)]
pub struct BodyTap {
    cap: usize,
    buf: BytesMut,
    size: u64,
}

impl BodyTap {
    /// A tap that keeps at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            buf: BytesMut::new(),
            size: 0,
        }
    }

    /// Notes one chunk of the body.
    pub fn observe(&mut self, chunk: &[u8]) {
        self.size += chunk.len() as u64;
        let room = self.cap.saturating_sub(self.buf.len());
        if room > 0 {
            let take = room.min(chunk.len());
            if self.buf.capacity() - self.buf.len() < take {
                // Grow by doubling but never past the cap: a large body's prefix then
                // takes exactly `cap` bytes instead of the next power of two.
                let want = (self.buf.len() + take)
                    .max(self.buf.capacity() * 2)
                    .min(self.cap);
                self.buf.reserve(want - self.buf.len());
            }
            self.buf.extend_from_slice(&chunk[..take]);
        }
    }

    /// The body captured by a tap shared with the body's stream, leaving it empty.
    pub fn take(shared: &std::sync::Mutex<BodyTap>) -> CapturedBody {
        let mut tap = shared.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *tap, BodyTap::new(0)).finish()
    }

    /// The captured body.
    pub fn finish(self) -> CapturedBody {
        CapturedBody {
            truncated: self.size > self.buf.len() as u64,
            bytes: self.buf.freeze(),
            size: self.size,
        }
    }
}

/// Fans one exchange out to several sinks.
#[derive(Clone, Default)]
pub struct Sinks(Vec<Arc<dyn ExchangeSink>>);

impl Sinks {
    /// Adds a sink.
    pub fn push(&mut self, sink: Arc<dyn ExchangeSink>) {
        self.0.push(sink);
    }

    /// Whether any sink wants exchanges.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Hands `exchange` to every sink (shared, not copied).
    pub fn record(&self, exchange: Exchange) {
        let exchange = Arc::new(exchange);
        for sink in &self.0 {
            sink.record_shared(&exchange);
        }
    }
}

impl std::fmt::Debug for Sinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sinks({})", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_keeps_prefix_and_counts_everything() {
        let mut tap = BodyTap::new(4);
        tap.observe(b"ab");
        tap.observe(&[0xff, 0x00, 0x01]);
        tap.observe(b"zz");
        let body = tap.finish();
        assert_eq!(&body.bytes[..], &[b'a', b'b', 0xff, 0x00]);
        assert_eq!(body.size, 7);
        assert!(body.truncated);

        let mut tap = BodyTap::new(4);
        tap.observe(b"abcd");
        let body = tap.finish();
        assert!(!body.truncated);
        assert_eq!(body.size, 4);
    }

    #[test]
    fn ids_increase_from_seed() {
        let ids = IdSource::new(0);
        assert_eq!(ids.next(), ExchangeId(1));
        assert_eq!(ids.next(), ExchangeId(2));
        let ids = IdSource::new(40);
        assert_eq!(ids.next(), ExchangeId(40));
    }
}

//! The durable queue: exchanges kept for reserved names until their client takes
//! them, behind the [`QueueStore`] trait so that a relay fleet can later keep them in a
//! shared database (PostgreSQL) instead of the embedded SQLite file.
//!
//! The contract every store keeps: [`QueueStore::enqueue`] answers only once the
//! exchange is durable (a crash right after cannot lose it); a failed write leaves no
//! partial record; ids grow with arrival order, so "oldest queued first" is delivery
//! order. The store knows nothing of HTTP or QUIC; [`crate::queue`] drives it.

pub mod on_demand;
pub mod sqlite;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use shared_proto::delivery::Delivery;
use shared_proto::Scheme;

/// A boxed future answered by a store.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Id of a stored exchange: grows with arrival order, never reused.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct QueueId(pub u64);

impl std::fmt::Display for QueueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a stored exchange stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for (re)delivery.
    Queued,
    /// The target answered (2xx, 3xx or 4xx).
    Delivered,
    /// Out of attempts (or expired); kept for `queue retry` until retention drops it.
    Dead,
}

impl State {
    fn from_i64(v: i64) -> Self {
        match v {
            0 => State::Queued,
            1 => State::Delivered,
            _ => State::Dead,
        }
    }

    /// `queued`, `delivered` or `dead`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Delivered => "delivered",
            State::Dead => "dead",
        }
    }
}

/// An exchange to store, as the visitor sent it (after edge header processing).
#[derive(Debug, Clone)]
pub struct NewExchange {
    /// Tunnel name.
    pub name: String,
    /// Method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// Where the visitor connected from.
    pub visitor: Option<SocketAddr>,
    /// How it reached the relay.
    pub scheme: Scheme,
    /// The whole body (queued bodies are capped by `queue_max_body_bytes`).
    pub body: Bytes,
}

/// A stored exchange, ready to deliver.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its id.
    pub id: QueueId,
    /// The request.
    pub exchange: NewExchange,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Not before this time (ms since the Unix epoch).
    pub next_attempt_at: i64,
}

/// One exchange as listed (no body).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// Its id.
    pub id: QueueId,
    /// Tunnel name.
    pub name: String,
    /// Where it stands.
    pub state: State,
    /// Method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Body size in bytes.
    pub body_bytes: u64,
    /// Arrival (ms since the Unix epoch).
    pub received_at: i64,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Next attempt (ms since the Unix epoch), while queued.
    pub next_attempt_at: i64,
    /// Status of the last attempt's answer, if any.
    pub last_status: Option<u16>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
}

/// How an attempt ended, as recorded.
#[derive(Debug, Clone)]
pub enum Attempt {
    /// The target answered with this status (below 500).
    Delivered(u16),
    /// Failed; try again at this time (ms since the Unix epoch).
    Retry {
        /// The answer's status, if one came.
        status: Option<u16>,
        /// Why it failed.
        error: String,
        /// When to try again.
        at: i64,
    },
    /// Failed for the last time.
    Dead {
        /// The answer's status, if one came.
        status: Option<u16>,
        /// Why it failed.
        error: String,
    },
}

/// Retention limits of one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most exchanges kept (any state).
    pub max_count: u64,
    /// Most body bytes kept (any state).
    pub max_bytes: u64,
    /// Exchanges older than this are dropped (queued ones become dead first).
    pub max_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_count: 10_000,
            max_bytes: 256 * 1024 * 1024,
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Store errors, each mapped to a clear answer by the caller.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The disk (or the configured free-space reserve) is full: nothing was written.
    #[error("the queue storage is full: {0}")]
    DiskFull(String),
    /// The name's retention limit is reached by exchanges still waiting.
    #[error("the queue for {name} is full ({reason})")]
    QueueFull {
        /// Tunnel name.
        name: String,
        /// Which limit.
        reason: String,
    },
    /// The file is not a Porthole queue database, is corrupt, or is from a newer relay.
    #[error("{path} cannot be used as the queue database: {why}")]
    Refused {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
    /// Any other database failure.
    #[error("queue database: {0}")]
    Db(String),
    /// The store is shutting down.
    #[error("the queue store is closed")]
    Closed,
}

/// A durable queue of exchanges.
pub trait QueueStore: Send + Sync + 'static {
    /// A random id of this store, fixed at creation: with a queue id it names an
    /// exchange uniquely across relays and restarts (the client deduplicates by it).
    fn store_id(&self) -> &str;

    /// Stores an exchange; answers once it is durable. Evicts the name's oldest
    /// delivered or dead exchanges when `limits` require; refuses with
    /// [`StoreError::QueueFull`] when waiting ones alone reach them.
    fn enqueue(&self, exchange: NewExchange, limits: Limits) -> StoreFuture<'_, QueueId>;

    /// Up to `limit` of the name's oldest queued exchanges, in delivery order.
    fn next_queued(&self, name: &str, limit: usize) -> StoreFuture<'_, Vec<Stored>>;

    /// Records how an attempt ended.
    fn record(&self, id: QueueId, attempt: Attempt) -> StoreFuture<'_, ()>;

    /// Exchanges, newest first: of `names` (all when `None`), at most `limit`.
    fn list(&self, names: Option<Vec<String>>, limit: usize) -> StoreFuture<'_, Vec<Entry>>;

    /// Queues an exchange again with fresh attempts; answers its name, or `None` if
    /// there is no such id.
    fn retry(&self, id: QueueId) -> StoreFuture<'_, Option<String>>;

    /// Deletes an exchange; answers its name, or `None` if there is no such id.
    fn remove(&self, id: QueueId) -> StoreFuture<'_, Option<String>>;

    /// How many exchanges wait for delivery, over all names.
    fn queued_count(&self) -> StoreFuture<'_, u64>;

    /// Names that have queued exchanges.
    fn names_with_queued(&self) -> StoreFuture<'_, Vec<String>>;

    /// Remembers the delivery a client asked for on `name`, for when it is offline.
    fn save_delivery(&self, name: &str, delivery: Delivery) -> StoreFuture<'_, ()>;

    /// Every remembered delivery setting.
    fn deliveries(&self) -> StoreFuture<'_, Vec<(String, Delivery)>>;

    /// Applies age limits and drops what `limits_of` no longer keeps; answers how many
    /// exchanges were dropped and how many queued ones expired (became dead).
    fn prune(&self, limits_of: Box<dyn Fn(&str) -> Limits + Send>) -> StoreFuture<'_, (u64, u64)>;

    /// Whether another process (the `porthole-relay queue` commands) changed the store
    /// since the last call.
    fn changed_externally(&self) -> StoreFuture<'_, bool>;
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

//! The inspector: keeps a persistent history of captured exchanges and serves it as a
//! web UI and an HTTP API (list, detail, raw bodies, search, live events, HAR export,
//! replay).
//!
//! It sits beside the forwarding path, never on it: [`Inspector`] implements
//! [`ExchangeSink`] by handing each finished exchange to a background writer thread
//! through a bounded channel. When that channel is full the exchange is dropped and
//! counted rather than slowing a visitor down.
//!
//! # Layout
//!
//! - this file: [`InspectorConfig`], [`Inspector`] (sink, writer thread, reads).
//! - `store`: the SQLite schema, writes, eviction and queries (blocking code only).
//! - `api`: the axum router: JSON API, SSE, replay, the relay queue view (through
//!   [`QueueAccess`]), auth and the embedded UI.
//! - `har`: HAR 1.2 export.
//! - [`cli`]: `porthole requests` and `porthole replay`, clients of a running inspector.
//!
//! # Access
//!
//! On a loopback address the inspector needs no credential, but it answers only to
//! loopback `Host` names (a guard against DNS rebinding) and refuses cross-origin
//! writes. On any other address it refuses to start without a credential; with one,
//! every request must carry it as HTTP basic auth (any user name, the credential as
//! password; browsers prompt for it) or as `Authorization: Bearer <credential>`.

mod api;
pub mod cli;
mod har;
mod store;
pub(crate) mod time;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use shared_proto::Secret;
use tokio::sync::{broadcast, oneshot};

use crate::capture::{BoxFuture, Exchange, ExchangeId, ExchangeSink, Replayer};
pub use shared_proto::delivery::QueueOp;

pub use api::router;
pub use store::{Filter, StatusFilter};

/// How many captured bytes (bodies and heads) may wait for the writer before new
/// exchanges are dropped: with 1 MiB bodies a bound by count alone would let a flood of
/// large uploads hold gigabytes.
const QUEUE_MAX_BYTES: u64 = 16 << 20;
/// Under load the writer waits this long between batches (see [`Writer`]); the live
/// list then updates once a second, and a flood costs at most one history's worth of
/// writes per second.
const BATCH_LINGER: Duration = Duration::from_secs(1);
/// Exchanges stored per transaction, at most.
const CHUNK: usize = 32;
/// Captured bytes stored per transaction, at most (unless one exchange is larger).
const CHUNK_BYTES: u64 = 2 << 20;
/// The writer's pause between transactions of one batch.
const CHUNK_PAUSE: Duration = Duration::from_micros(200);
/// How many summaries a slow live-event subscriber may fall behind before it skips.
const EVENTS_CAPACITY: usize = 256;

/// Settings of the inspector's history and access.
#[derive(Debug, Clone)]
pub struct InspectorConfig {
    /// The SQLite file holding the history (created with its directory if missing).
    pub db_path: PathBuf,
    /// The largest body prefix the forwarder should capture. The inspector stores what
    /// it is given; this is here so the daemon configures `BodyTap` from one place.
    pub body_cap: usize,
    /// Oldest exchanges are evicted beyond this many.
    pub max_exchanges: usize,
    /// Oldest exchanges are evicted while the stored bytes (bodies, heads) exceed this.
    /// The newest exchange is always kept.
    pub max_bytes: u64,
    /// Required from every API and UI caller when set; mandatory on a non-loopback
    /// address.
    pub credential: Option<Secret>,
}

impl InspectorConfig {
    /// Default body capture cap: 1 MiB.
    pub const DEFAULT_BODY_CAP: usize = 1 << 20;
    /// Default history length.
    pub const DEFAULT_MAX_EXCHANGES: usize = 1000;
    /// Default history size: 256 MiB.
    pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;

    /// Defaults, with the history at `db_path`.
    pub fn new(db_path: impl Into<PathBuf>) -> Self {
        Self {
            db_path: db_path.into(),
            body_cap: Self::DEFAULT_BODY_CAP,
            max_exchanges: Self::DEFAULT_MAX_EXCHANGES,
            max_bytes: Self::DEFAULT_MAX_BYTES,
            credential: None,
        }
    }

    /// Defaults, with the history in the user's data directory (see [`default_db_path`]).
    pub fn with_default_path() -> anyhow::Result<Self> {
        Ok(Self::new(default_db_path()?))
    }
}

/// Where the history lives by default: `$PORTHOLE_DATA_DIR/history.sqlite3` when that
/// variable is set (tests use it), else `$XDG_DATA_HOME/porthole/history.sqlite3`, else
/// `~/.local/share/porthole/history.sqlite3`.
pub fn default_db_path() -> anyhow::Result<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let dir = if let Some(dir) = non_empty("PORTHOLE_DATA_DIR") {
        PathBuf::from(dir)
    } else if let Some(xdg) = non_empty("XDG_DATA_HOME") {
        PathBuf::from(xdg).join("porthole")
    } else if let Some(home) = non_empty("HOME") {
        PathBuf::from(home).join(".local/share/porthole")
    } else {
        anyhow::bail!("cannot find a data directory: set PORTHOLE_DATA_DIR or HOME");
    };
    Ok(dir.join("history.sqlite3"))
}

/// Why the inspector would not start.
#[derive(Debug, thiserror::Error)]
pub enum InspectorError {
    /// Listening beyond loopback without a credential would publish the history.
    #[error(
        "refusing to serve the inspector on non-loopback address {0} without a credential; \
         set one or listen on 127.0.0.1"
    )]
    CredentialRequired(SocketAddr),
}

/// One exchange as listed by `GET /api/requests` and sent by `GET /api/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeSummary {
    /// Exchange id.
    pub id: u64,
    /// The exchange this one replays, if any.
    pub replay_of: Option<u64>,
    /// Tunnel name.
    pub tunnel: String,
    /// Request method.
    pub method: String,
    /// Request path and query.
    pub path: String,
    /// Response status, if a response was produced.
    pub status: Option<u16>,
    /// Total duration in milliseconds (microsecond precision).
    pub duration_ms: f64,
    /// When the request head arrived, RFC 3339 UTC with milliseconds.
    pub started_at: String,
    /// `completed`, `target_error`, `target_timeout`, `cancelled`, `refused_at_edge`
    /// or `rejected`.
    pub outcome: String,
    /// The failure reason, for outcomes that have one.
    pub error: Option<String>,
    /// Full request body size in bytes.
    pub request_size: u64,
    /// Full response body size in bytes, if a response was produced.
    pub response_size: Option<u64>,
    /// The visitor's address as the relay saw it.
    pub visitor: Option<String>,
    /// The webhook signature verdict, when the tunnel verifies signatures.
    pub signature: Option<crate::signatures::SignatureCheck>,
}

impl ExchangeSummary {
    /// The summary of a captured exchange.
    pub fn of(ex: &Exchange) -> Self {
        Self {
            id: ex.id.0,
            replay_of: ex.replay_of.map(|r| r.0),
            tunnel: ex.tunnel.clone(),
            method: ex.request.method.clone(),
            path: ex.request.uri.clone(),
            status: ex.response.as_ref().map(|r| r.status),
            duration_ms: time::millis(ex.duration),
            started_at: time::rfc3339(ex.started_at),
            outcome: ex.outcome.kind().to_owned(),
            error: match &ex.outcome {
                crate::capture::Outcome::TargetTimeout => Some("target timed out".to_owned()),
                other => other.reason().map(str::to_owned),
            },
            request_size: ex.request.body.size,
            response_size: ex.response.as_ref().map(|r| r.body.size),
            visitor: ex.visitor.map(|v| v.to_string()),
            signature: ex.signature.clone(),
        }
    }
}

/// Work for the writer thread, in arrival order.
enum Command {
    Record(Arc<Exchange>, u64),
    Clear(oneshot::Sender<anyhow::Result<u64>>),
    Flush(oneshot::Sender<()>),
}

/// What waits for the writer thread, shared with the forwarding path.
#[derive(Default)]
struct Queue {
    commands: VecDeque<Command>,
    /// `Record` commands in `commands`.
    records: usize,
    /// Captured bytes of those.
    record_bytes: u64,
    /// Captured bytes in `commands` and in the batch being written (the memory bound).
    bytes: u64,
    /// The writer is waiting for work (so a new command must wake it).
    writer_idle: bool,
    /// A control command waits: the writer cuts its linger short.
    urgent: bool,
    /// The inspector is gone: the writer stores what is left and ends.
    closed: bool,
}

/// [`Queue`] and the writer's wake-up.
#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Only plain data is mutated under the lock; a panic elsewhere cannot leave it
        // inconsistent.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a control command and wakes the writer.
    fn control(&self, cmd: Command) {
        let mut q = self.lock();
        q.commands.push_back(cmd);
        q.urgent = true;
        self.wake.notify_one();
    }
}

/// The persistent exchange history behind the inspector UI and API.
///
/// Writes go through one background thread (so [`ExchangeSink::record`] never
/// blocks); reads use a second connection, which SQLite's WAL mode lets run alongside.
pub struct Inspector {
    config: InspectorConfig,
    shared: Arc<Shared>,
    limits: store::Limits,
    reader: Mutex<store::Store>,
    events: broadcast::Sender<Arc<ExchangeSummary>>,
    /// Highest id stored or handed to `record`, so ids keep increasing after restarts
    /// and clears.
    max_id: Arc<AtomicU64>,
    dropped: AtomicU64,
    /// The relay's durable queue, when the daemon has one (see [`Inspector::set_queue`]).
    queue: Mutex<Option<Arc<dyn QueueAccess>>>,
}

/// Runs `porthole queue` commands on the daemon's relay for the inspector's Queue
/// view; implemented by [`crate::queue_cmd::RelayQueue`].
pub trait QueueAccess: Send + Sync + 'static {
    /// Runs `op` and answers the relay's JSON report as it is (`{"entries": [...]}`,
    /// `{"ok": "..."}` or `{"error": "..."}`), or why the relay could not be asked.
    fn command(&self, op: QueueOp) -> BoxFuture<'static, Result<String, String>>;
}

impl std::fmt::Debug for Inspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspector")
            .field("db_path", &self.config.db_path)
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Inspector {
    /// Opens (or creates) the history and starts its writer thread.
    pub fn open(config: InspectorConfig) -> anyhow::Result<Arc<Self>> {
        if let Some(dir) = config
            .db_path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating history directory {}", dir.display()))?;
        }
        let mut writer = store::Store::open(&config.db_path)
            .with_context(|| format!("opening history {}", config.db_path.display()))?;
        let limits = store::Limits {
            max_exchanges: config.max_exchanges.max(1),
            max_bytes: config.max_bytes,
        };
        // Applies smaller limits right away, so a restart with new settings takes effect.
        writer.evict(&limits).context("evicting old history")?;
        let reader = store::Store::open(&config.db_path)
            .with_context(|| format!("opening history {}", config.db_path.display()))?;
        let max_id = Arc::new(AtomicU64::new(reader.max_id().context("reading history")?));
        let shared = Arc::new(Shared::default());
        let (events, _) = broadcast::channel(EVENTS_CAPACITY);
        let writer = Writer {
            store: writer,
            limits,
            events: events.clone(),
            shared: Arc::clone(&shared),
        };
        std::thread::Builder::new()
            .name("inspector-writer".into())
            .spawn(move || writer.run())
            .context("starting the inspector writer thread")?;
        Ok(Arc::new(Self {
            config,
            shared,
            limits,
            reader: Mutex::new(reader),
            events,
            max_id,
            dropped: AtomicU64::new(0),
            queue: Mutex::new(None),
        }))
    }

    /// Gives the API (`/api/queue`) access to the relay's durable queue.
    pub fn set_queue(&self, queue: Arc<dyn QueueAccess>) {
        *self.queue.lock().unwrap_or_else(|e| e.into_inner()) = Some(queue);
    }

    /// The relay queue access, if the daemon gave one.
    pub(crate) fn queue(&self) -> Option<Arc<dyn QueueAccess>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &InspectorConfig {
        &self.config
    }

    /// The first exchange id to hand out: one past the highest id ever stored or
    /// recorded (seed [`crate::capture::IdSource`] with it).
    pub fn next_id(&self) -> u64 {
        self.max_id.load(Ordering::Relaxed) + 1
    }

    /// How many exchanges were dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Summaries of exchanges as they are stored (what `GET /api/events` sends).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ExchangeSummary>> {
        self.events.subscribe()
    }

    /// Waits until every exchange recorded before this call is stored.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        self.shared.control(Command::Flush(tx));
        let _ = rx.await;
    }

    /// Deletes the whole history (ids keep increasing); answers how many were deleted.
    pub async fn clear(&self) -> anyhow::Result<u64> {
        let (tx, rx) = oneshot::channel();
        self.shared.control(Command::Clear(tx));
        rx.await.context("inspector writer stopped")?
    }

    /// Runs a read against the history on a blocking thread.
    pub(crate) async fn read<T, F>(self: &Arc<Self>, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&store::Store) -> anyhow::Result<T> + Send + 'static,
    {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave the connection inconsistent
            // (SQLite rolls back), so a poisoned lock is still usable.
            let store = this.reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&store)
        })
        .await
        .context("history read task failed")?
    }

    /// Lists summaries matching `filter`, newest first.
    pub async fn list(self: &Arc<Self>, filter: Filter) -> anyhow::Result<Vec<ExchangeSummary>> {
        self.read(move |s| s.list(&filter)).await
    }

    /// One exchange in full, if stored. An exchange already recorded but still waiting
    /// for the writer (which batches under load) is stored first, so an id seen in a
    /// live event or the console can be fetched and replayed at once.
    pub async fn exchange(self: &Arc<Self>, id: ExchangeId) -> anyhow::Result<Option<Exchange>> {
        if let Some(ex) = self.read(move |s| s.exchange(id)).await? {
            return Ok(Some(ex));
        }
        if id.0 > self.max_id.load(Ordering::Relaxed) {
            return Ok(None);
        }
        self.flush().await;
        self.read(move |s| s.exchange(id)).await
    }

    /// Serves the UI and API on `listener` until `shutdown` completes. Replays go to
    /// `replayer`. Fails at once when the listener is not on loopback and no credential
    /// is configured.
    pub async fn run(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        replayer: Arc<dyn Replayer>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = listener
            .local_addr()
            .context("reading the inspector address")?;
        if !addr.ip().is_loopback() && self.config.credential.is_none() {
            return Err(InspectorError::CredentialRequired(addr).into());
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let app = api::router_with_shutdown(Arc::clone(&self), replayer, stop_rx);
        tracing::info!(%addr, auth = self.config.credential.is_some(), "inspector listening");
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                // Live-event streams never end on their own; tell them to.
                let _ = stop_tx.send(true);
            })
            .await
            .context("serving the inspector")
    }

    /// Waits (bounded) until exchange `id` is stored, using `events` subscribed before
    /// the exchange could have been recorded.
    pub(crate) async fn wait_stored(
        self: &Arc<Self>,
        id: ExchangeId,
        mut events: broadcast::Receiver<Arc<ExchangeSummary>>,
        timeout: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if matches!(self.read(move |s| s.contains(id)).await, Ok(true)) {
                return true;
            }
            loop {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Err(_) => return false,
                    Ok(Ok(summary)) if summary.id == id.0 => return true,
                    Ok(Ok(_)) => continue,
                    // Missed some events, or the writer stopped: look in the store again.
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => break,
                    Ok(Err(broadcast::error::RecvError::Closed)) => return false,
                }
            }
        }
    }

    fn note_drop(&self) {
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        // Log the 1st, 2nd, 4th, 8th… drop so a flood cannot flood the log too.
        if n.is_power_of_two() {
            tracing::warn!(dropped = n, "inspector is behind; exchanges not recorded");
        }
    }
}

impl ExchangeSink for Inspector {
    fn record(&self, exchange: &Exchange) {
        self.record_shared(&Arc::new(exchange.clone()));
    }

    fn record_shared(&self, exchange: &Arc<Exchange>) {
        self.max_id.fetch_max(exchange.id.0, Ordering::Relaxed);
        let size = captured_bytes(exchange);
        let mut q = self.shared.lock();
        if q.closed || q.bytes + size > QUEUE_MAX_BYTES {
            drop(q);
            self.note_drop();
            return;
        }
        q.commands
            .push_back(Command::Record(Arc::clone(exchange), size));
        q.records += 1;
        q.record_bytes += size;
        q.bytes += size;
        // Under a flood, exchanges that the history's limits would evict as soon as the
        // batch is stored are let go here: the newest is always kept, and a control
        // command (flush, clear) stops the trimming so its order still holds.
        while q.records > 1
            && (q.records > self.limits.max_exchanges || q.record_bytes > self.limits.max_bytes)
        {
            let Some(&Command::Record(_, size)) = q.commands.front() else {
                break;
            };
            q.bytes -= size;
            q.record_bytes -= size;
            q.records -= 1;
            q.commands.pop_front();
        }
        if q.writer_idle {
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for Inspector {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

/// The writer thread: stores exchanges in batches, evicts, then announces them.
///
/// At a trickle each exchange is written as it arrives. Under load (more than one
/// exchange waiting when the writer comes for work) it sleeps for [`BATCH_LINGER`]
/// between batches; meanwhile [`Inspector::record_shared`] lets go of the oldest waiting
/// exchanges that the history's limits would evict at once. A flood therefore costs at
/// most one history's worth of writes per linger rather than a write per exchange,
/// and no thread wake-up per exchange.
struct Writer {
    store: store::Store,
    limits: store::Limits,
    events: broadcast::Sender<Arc<ExchangeSummary>>,
    shared: Arc<Shared>,
}

/// How much nicer than the daemon the writer thread runs: it is never urgent, and its
/// batches must not delay the threads that forward requests.
#[cfg(target_os = "linux")]
const WRITER_NICENESS: i32 = 10;

impl Writer {
    fn run(mut self) {
        #[cfg(target_os = "linux")]
        {
            // On Linux the nice value is per thread; best effort (the writer works either
            // way).
            let tid = rustix::thread::gettid();
            let nice = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
            if let Err(err) =
                rustix::process::setpriority_process(Some(tid), nice + WRITER_NICENESS)
            {
                tracing::debug!(error = %err, "cannot lower the inspector writer's priority");
            }
        }
        loop {
            let (commands, closed) = {
                let mut q = self.shared.lock();
                while q.commands.is_empty() && !q.closed {
                    q.writer_idle = true;
                    q = self.shared.wake.wait(q).unwrap_or_else(|p| p.into_inner());
                    q.writer_idle = false;
                }
                q.records = 0;
                q.record_bytes = 0;
                q.urgent = false;
                (std::mem::take(&mut q.commands), q.closed)
            };
            let busy = commands.len() > 1;
            let mut batch: Vec<(Arc<Exchange>, u64)> = Vec::new();
            for cmd in commands {
                match cmd {
                    Command::Record(ex, size) => batch.push((ex, size)),
                    Command::Flush(done) => {
                        self.write(&mut batch);
                        let _ = done.send(());
                    }
                    Command::Clear(done) => {
                        self.write(&mut batch);
                        let _ = done.send(self.store.clear());
                    }
                }
            }
            self.write(&mut batch);
            if closed {
                return;
            }
            if busy {
                self.linger();
            }
        }
    }

    /// Waits [`BATCH_LINGER`] while exchanges gather (recording does not wake the
    /// writer meanwhile); a flush, a clear or closing ends the wait early.
    fn linger(&self) {
        let deadline = Instant::now() + BATCH_LINGER;
        let mut q = self.shared.lock();
        while !q.urgent && !q.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            q = match self.shared.wake.wait_timeout(q, left) {
                Ok((q, _)) => q,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Stores `batch` a few exchanges per transaction, evicting and announcing after
    /// each; between them the thread steps aside for [`CHUNK_PAUSE`], so a long batch
    /// never holds a core that a forwarding thread is waiting for.
    fn write(&mut self, batch: &mut Vec<(Arc<Exchange>, u64)>) {
        let batch = std::mem::take(batch);
        let mut rest = &batch[..];
        while !rest.is_empty() {
            if rest.len() < batch.len() {
                std::thread::sleep(CHUNK_PAUSE);
            }
            // Up to CHUNK exchanges and CHUNK_BYTES (one transaction's dirty pages stay
            // in memory until it commits), at least one.
            let mut n = 0;
            let mut bytes = 0;
            while n < rest.len() && n < CHUNK && (n == 0 || bytes + rest[n].1 <= CHUNK_BYTES) {
                bytes += rest[n].1;
                n += 1;
            }
            let (chunk, tail) = rest.split_at(n);
            self.write_chunk(chunk, bytes);
            rest = tail;
        }
    }

    /// Stores `chunk` (`bytes` captured bytes in all) in one transaction.
    fn write_chunk(&mut self, chunk: &[(Arc<Exchange>, u64)], bytes: u64) {
        let stored = self.store.insert_all(chunk.iter().map(|(e, _)| &**e));
        self.shared.lock().bytes -= bytes;
        if let Err(err) = stored {
            tracing::warn!(error = format!("{err:#}"), "storing exchanges failed");
            return;
        }
        if let Err(err) = self.store.evict(&self.limits) {
            tracing::warn!(error = format!("{err:#}"), "evicting old exchanges failed");
        }
        if self.events.receiver_count() == 0 {
            // Nobody is watching live: skip building the summaries.
            return;
        }
        for (ex, _) in chunk {
            let _ = self.events.send(Arc::new(ExchangeSummary::of(ex)));
        }
    }
}

/// What an exchange holds in captured bytes (bodies and heads), for the queue's bound.
fn captured_bytes(ex: &Exchange) -> u64 {
    let headers = |h: &[(String, Vec<u8>)]| h.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    let request = ex.request.body.bytes.len() + headers(&ex.request.headers);
    let response = ex
        .response
        .as_ref()
        .map_or(0, |r| r.body.bytes.len() + headers(&r.headers));
    (256 + ex.request.uri.len() + request + response) as u64
}

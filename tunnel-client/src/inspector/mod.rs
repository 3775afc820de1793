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

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use shared_proto::Secret;
use tokio::sync::{broadcast, oneshot};

use crate::capture::{BoxFuture, Exchange, ExchangeId, ExchangeSink, Replayer};
pub use shared_proto::delivery::QueueOp;

pub use api::router;
pub use store::{Filter, StatusFilter};

/// How many finished exchanges may wait for the writer before new ones are dropped.
const QUEUE_CAPACITY: usize = 1024;
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
    Record(Arc<Exchange>),
    Clear(oneshot::Sender<anyhow::Result<u64>>),
    Flush(oneshot::Sender<()>),
}

/// The persistent exchange history behind the inspector UI and API.
///
/// Writes go through one background thread (so [`ExchangeSink::record`] never
/// blocks); reads use a second connection, which SQLite's WAL mode lets run alongside.
pub struct Inspector {
    config: InspectorConfig,
    commands: SyncSender<Command>,
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
        let (commands, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
        let (events, _) = broadcast::channel(EVENTS_CAPACITY);
        let thread_events = events.clone();
        std::thread::Builder::new()
            .name("inspector-writer".into())
            .spawn(move || run_writer(writer, limits, rx, thread_events))
            .context("starting the inspector writer thread")?;
        Ok(Arc::new(Self {
            config,
            commands,
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
        if self.send_blocking(Command::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Deletes the whole history (ids keep increasing); answers how many were deleted.
    pub async fn clear(&self) -> anyhow::Result<u64> {
        let (tx, rx) = oneshot::channel();
        self.send_blocking(Command::Clear(tx)).await?;
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

    /// One exchange in full, if stored.
    pub async fn exchange(self: &Arc<Self>, id: ExchangeId) -> anyhow::Result<Option<Exchange>> {
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

    async fn send_blocking(&self, cmd: Command) -> anyhow::Result<()> {
        let tx = self.commands.clone();
        tokio::task::spawn_blocking(move || tx.send(cmd))
            .await
            .context("inspector writer task failed")?
            .map_err(|_| anyhow::anyhow!("inspector writer stopped"))
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
        match self.commands.try_send(Command::Record(exchange.clone())) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.note_drop(),
        }
    }
}

/// The writer thread: stores exchanges in batches, evicts, then announces them.
fn run_writer(
    mut store: store::Store,
    limits: store::Limits,
    rx: mpsc::Receiver<Command>,
    events: broadcast::Sender<Arc<ExchangeSummary>>,
) {
    const BATCH: usize = 64;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        let mut pending: Vec<Arc<Exchange>> = Vec::new();
        for cmd in batch {
            match cmd {
                Command::Record(ex) => pending.push(ex),
                Command::Flush(done) => {
                    write_batch(&mut store, &limits, &mut pending, &events);
                    let _ = done.send(());
                }
                Command::Clear(done) => {
                    write_batch(&mut store, &limits, &mut pending, &events);
                    let _ = done.send(store.clear());
                }
            }
        }
        write_batch(&mut store, &limits, &mut pending, &events);
    }
}

fn write_batch(
    store: &mut store::Store,
    limits: &store::Limits,
    pending: &mut Vec<Arc<Exchange>>,
    events: &broadcast::Sender<Arc<ExchangeSummary>>,
) {
    if pending.is_empty() {
        return;
    }
    if let Err(err) = store.insert_all(pending.iter().map(|e| &**e)) {
        tracing::warn!(error = format!("{err:#}"), "storing exchanges failed");
        pending.clear();
        return;
    }
    if let Err(err) = store.evict(limits) {
        tracing::warn!(error = format!("{err:#}"), "evicting old exchanges failed");
    }
    if events.receiver_count() == 0 {
        // Nobody is watching live: skip building the summaries.
        pending.clear();
        return;
    }
    for ex in pending.drain(..) {
        let _ = events.send(Arc::new(ExchangeSummary::of(&ex)));
    }
}

//! Durable queueing and redelivery for reserved names: which requests are stored
//! (`Queue::decide`), storing and answering them (`accept`), delivering them in
//! arrival order to the client that holds the name (one worker per name), retries
//! with exponential backoff, dead-lettering, retention, and the queue commands.
//!
//! The storage itself is behind [`crate::store::QueueStore`]; this module never waits
//! for a disk write on its own: the store's writer thread commits in groups and each
//! visitor is answered once its request is durable.
//!
//! A delivery travels like any exchange, on its own data stream, with the queue id as
//! the `exchange_id` and an `x-porthole-queue-id: STORE-ID` header by which the client
//! deduplicates: delivery is at least once on the wire, once at the app. An attempt
//! counts as delivered when the client's response head shows the target answered
//! below 500; a 5xx, a reset or no answer within `--target-timeout` is retried.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, HOST, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use shared_proto::delivery::{Delivery, DeliveryMode, OfflineMode, QueueOp};
use shared_proto::{RequestHead, ResponseHead, Scheme, StreamHead, TunnelName};
use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

use crate::headers::{set_forwarded, strip_hop_by_hop, ERROR_HEADER};
use crate::ingress::text;
use crate::quic::{encode_head, read_head, GuardedSend, StreamError, TunnelBody};
use crate::registry::Route;
use crate::store::{now_ms, Attempt, Limits, NewExchange, QueueId, QueueStore, StoreError, Stored};
use crate::tokens::TokenName;
use crate::Relay;

/// The header that names a queued exchange to the client: `STORE_ID-QUEUE_ID`.
pub const QUEUE_ID_HEADER: http::HeaderName = http::HeaderName::from_static("x-porthole-queue-id");
/// The header that numbers delivery attempts (1 for the first).
pub const ATTEMPT_HEADER: http::HeaderName = http::HeaderName::from_static("x-porthole-attempt");
/// `Retry-After` of an offline name in `reject` mode, in seconds.
const OFFLINE_RETRY_AFTER: &str = "30";
/// Exchanges one worker takes from the store at a time.
const DELIVERY_BATCH: usize = 16;
/// Most entries one `porthole queue list` answer carries (the answer is one frame).
const MAX_LISTED: u32 = 100;

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("expected a duration like 30s or 500ms: {e}"))
}

/// `serve` flags of the queue; each has a key of the same name (without `queue_`)
/// in the `[queue]` table of `relay.toml`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct QueueArgs {
    /// Largest body a queued request may have; larger gets 413 [default: 1048576].
    #[arg(long)]
    pub queue_max_body_bytes: Option<u64>,
    /// Status answered once a request is queued [default: 202].
    #[arg(long)]
    pub queue_status: Option<u16>,
    /// Body answered once a request is queued [default: {"queued":true,"id":"ID"}].
    #[arg(long)]
    pub queue_body: Option<String>,
    /// Delivery attempts before an exchange is dead-lettered [default: 10].
    #[arg(long)]
    pub queue_max_attempts: Option<u32>,
    /// Wait after the first failed attempt; doubles each time [default: 1s].
    #[arg(long, value_parser = parse_duration)]
    pub queue_retry_base: Option<Duration>,
    /// Longest wait between attempts [default: 5m].
    #[arg(long, value_parser = parse_duration)]
    pub queue_retry_max: Option<Duration>,
    /// Exchanges kept per name, any state [default: 10000].
    #[arg(long)]
    pub queue_max_count: Option<u64>,
    /// Body bytes kept per name, any state [default: 268435456].
    #[arg(long)]
    pub queue_max_bytes: Option<u64>,
    /// Exchanges older than this are dropped; waiting ones become dead [default: 7d].
    #[arg(long, value_parser = parse_duration)]
    pub queue_max_age: Option<Duration>,
    /// Refuse new requests (507) when the data dir's file system would have less free
    /// space than this [default: 67108864].
    #[arg(long)]
    pub queue_min_free_bytes: Option<u64>,
}

mod duration_de {
    use super::*;
    pub fn opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

/// The `[queue]` table of `relay.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueFile {
    /// See [`QueueArgs::queue_max_body_bytes`].
    pub max_body_bytes: Option<u64>,
    /// See [`QueueArgs::queue_status`].
    pub status: Option<u16>,
    /// See [`QueueArgs::queue_body`].
    pub body: Option<String>,
    /// See [`QueueArgs::queue_max_attempts`].
    pub max_attempts: Option<u32>,
    /// See [`QueueArgs::queue_retry_base`].
    #[serde(default, deserialize_with = "duration_de::opt")]
    pub retry_base: Option<Duration>,
    /// See [`QueueArgs::queue_retry_max`].
    #[serde(default, deserialize_with = "duration_de::opt")]
    pub retry_max: Option<Duration>,
    /// See [`QueueArgs::queue_max_count`].
    pub max_count: Option<u64>,
    /// See [`QueueArgs::queue_max_bytes`].
    pub max_bytes: Option<u64>,
    /// See [`QueueArgs::queue_max_age`].
    #[serde(default, deserialize_with = "duration_de::opt")]
    pub max_age: Option<Duration>,
    /// See [`QueueArgs::queue_min_free_bytes`].
    pub min_free_bytes: Option<u64>,
    /// Per-name settings (`[queue.names.pay-hooks]`); they win over the client's.
    #[serde(default)]
    pub names: HashMap<String, NameFile>,
}

/// One `[queue.names.NAME]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameFile {
    /// `"queue"` or `"passthrough"`.
    pub delivery: Option<String>,
    /// `"queue"` or `"reject"`.
    pub offline: Option<String>,
    /// Status answered once a request is queued.
    pub status: Option<u16>,
    /// Body answered once a request is queued.
    pub body: Option<String>,
    /// Exchanges kept.
    pub max_count: Option<u64>,
    /// Body bytes kept.
    pub max_bytes: Option<u64>,
    /// Oldest kept.
    #[serde(default, deserialize_with = "duration_de::opt")]
    pub max_age: Option<Duration>,
}

/// The operator's settings for one name.
#[derive(Debug, Clone, Default)]
pub struct NameRule {
    /// Delivery mode, over the client's.
    pub delivery: Option<DeliveryMode>,
    /// Offline behaviour, over the client's.
    pub offline: Option<OfflineMode>,
    /// Queued answer's status.
    pub status: Option<u16>,
    /// Queued answer's body.
    pub body: Option<String>,
    /// Retention.
    pub limits: Limits,
}

/// Resolved queue settings.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Largest queued body.
    pub max_body_bytes: u64,
    /// Queued answer's status.
    pub status: u16,
    /// Queued answer's body (`None`: a JSON object with the id).
    pub body: Option<String>,
    /// Attempts before dead.
    pub max_attempts: u32,
    /// First retry wait.
    pub retry_base: Duration,
    /// Longest retry wait.
    pub retry_max: Duration,
    /// Default retention.
    pub limits: Limits,
    /// Free-space reserve.
    pub min_free_bytes: u64,
    /// Per-name rules.
    pub names: HashMap<String, NameRule>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            status: 202,
            body: None,
            max_attempts: 10,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            limits: Limits::default(),
            min_free_bytes: 64 * 1024 * 1024,
            names: HashMap::new(),
        }
    }
}

fn check_status(s: u16, what: &str) -> anyhow::Result<u16> {
    if (200..600).contains(&s) {
        Ok(s)
    } else {
        anyhow::bail!("{what} must be an HTTP status between 200 and 599, got {s}")
    }
}

impl QueueConfig {
    /// Flags over the `[queue]` table over defaults.
    pub fn resolve(args: &QueueArgs, file: Option<QueueFile>) -> anyhow::Result<Self> {
        let file = file.unwrap_or_default();
        let mut c = Self::default();
        if let Some(v) = args.queue_max_body_bytes.or(file.max_body_bytes) {
            c.max_body_bytes = v;
        }
        if let Some(v) = args.queue_status.or(file.status) {
            c.status = check_status(v, "--queue-status")?;
        }
        c.body = args.queue_body.clone().or(file.body);
        if let Some(v) = args.queue_max_attempts.or(file.max_attempts) {
            c.max_attempts = v.max(1);
        }
        if let Some(v) = args.queue_retry_base.or(file.retry_base) {
            c.retry_base = v;
        }
        if let Some(v) = args.queue_retry_max.or(file.retry_max) {
            c.retry_max = v;
        }
        if let Some(v) = args.queue_max_count.or(file.max_count) {
            c.limits.max_count = v.max(1);
        }
        if let Some(v) = args.queue_max_bytes.or(file.max_bytes) {
            c.limits.max_bytes = v;
        }
        if let Some(v) = args.queue_max_age.or(file.max_age) {
            c.limits.max_age = v;
        }
        if let Some(v) = args.queue_min_free_bytes.or(file.min_free_bytes) {
            c.min_free_bytes = v;
        }
        for (name, n) in file.names {
            let parsed = TunnelName::parse(&name)
                .with_context(|| format!("[queue.names.{name}]: not a valid tunnel name"))?;
            let rule = NameRule {
                delivery: n
                    .delivery
                    .map(|d| d.parse())
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("[queue.names.{name}] delivery: {e}"))?,
                offline: n
                    .offline
                    .map(|d| d.parse())
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("[queue.names.{name}] offline: {e}"))?,
                status: n
                    .status
                    .map(|s| check_status(s, &format!("[queue.names.{name}] status")))
                    .transpose()?,
                body: n.body,
                limits: Limits {
                    max_count: n.max_count.unwrap_or(c.limits.max_count).max(1),
                    max_bytes: n.max_bytes.unwrap_or(c.limits.max_bytes),
                    max_age: n.max_age.unwrap_or(c.limits.max_age),
                },
            };
            c.names.insert(parsed.as_str().to_owned(), rule);
        }
        Ok(c)
    }

    /// Retention of `name`.
    pub fn limits_for(&self, name: &str) -> Limits {
        self.names
            .get(name)
            .map(|r| r.limits)
            .unwrap_or(self.limits)
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let factor = 1u32 << attempts.saturating_sub(1).min(20);
        self.retry_base.saturating_mul(factor).min(self.retry_max)
    }
}

/// Queue counters for `/metrics`.
#[derive(Debug, Default)]
pub struct QueueMetrics {
    /// Requests stored.
    pub enqueued: AtomicU64,
    /// Exchanges delivered.
    pub delivered: AtomicU64,
    /// Exchanges dead-lettered.
    pub dead: AtomicU64,
    /// Attempts that failed and will be retried.
    pub retries: AtomicU64,
    /// Requests refused because storage or a retention limit was full.
    pub refused: AtomicU64,
}

/// What ingress does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Carry it to the client (or 404 if none).
    Pass,
    /// Store it and answer at once.
    Queue,
    /// 503 with `Retry-After`.
    Reject,
}

/// A running worker's wake-up: `woken` is set by each wake and cleared by the worker
/// before it looks for work, so it cannot retire past a wake it has not seen.
struct Worker {
    notify: Arc<Notify>,
    woken: bool,
}

/// The relay's queue: the store, delivery settings and one worker per name with work.
pub struct Queue {
    store: Arc<dyn QueueStore>,
    cfg: QueueConfig,
    /// What each client asked for in its last bind (persisted in the store).
    client_set: Mutex<HashMap<String, Delivery>>,
    /// The names whose worker runs. A worker retires when its name has nothing to
    /// deliver (nothing queued, or no client holding it), so a relay whose clients come
    /// and go under fresh names keeps no task per name it ever saw; every change that
    /// can give a name work (enqueue, bind, retry, start) wakes or starts its worker.
    workers: Mutex<HashMap<String, Worker>>,
    /// Counters.
    pub metrics: QueueMetrics,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").finish_non_exhaustive()
    }
}

impl Queue {
    /// A queue over `store`.
    pub fn new(store: Arc<dyn QueueStore>, cfg: QueueConfig) -> Self {
        Self {
            store,
            cfg,
            client_set: Mutex::new(HashMap::new()),
            workers: Mutex::new(HashMap::new()),
            metrics: QueueMetrics::default(),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn QueueStore> {
        &self.store
    }

    /// The settings.
    pub fn config(&self) -> &QueueConfig {
        &self.cfg
    }

    fn settings(&self, name: &str) -> (Option<&NameRule>, Option<Delivery>) {
        let client = self
            .client_set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied();
        (self.cfg.names.get(name), client)
    }

    /// The delivery in force for `name`: the operator's rule wins over the client's.
    pub fn delivery_of(&self, name: &str) -> Delivery {
        let (rule, client) = self.settings(name);
        let client = client.unwrap_or_default();
        Delivery {
            mode: rule.and_then(|r| r.delivery).unwrap_or(client.mode),
            offline: rule.and_then(|r| r.offline).unwrap_or(client.offline),
        }
    }

    pub(crate) fn decide(&self, relay: &Relay, name: &str, online: bool) -> Decision {
        let d = self.delivery_of(name);
        if online {
            return match d.mode {
                DeliveryMode::Queue => Decision::Queue,
                DeliveryMode::Passthrough => Decision::Pass,
            };
        }
        // Offline: only names someone reserved (or the operator configured) are kept;
        // a random name that nobody holds is simply not there (404).
        let reserved = self.cfg.names.contains_key(name)
            || TunnelName::parse(name)
                .ok()
                .and_then(|n| relay.tokens.reserved_by(&n).ok().flatten())
                .is_some();
        if !reserved {
            return Decision::Pass;
        }
        match d.offline {
            OfflineMode::Queue => Decision::Queue,
            OfflineMode::Reject => Decision::Reject,
        }
    }

    /// Records the delivery a client asked for when it bound `name`, and starts
    /// delivering what waits for it.
    pub(crate) fn on_bind(&self, relay: &Arc<Relay>, name: &str, delivery: Delivery) {
        let changed = self
            .client_set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), delivery)
            != Some(delivery);
        if changed {
            let relay2 = relay.clone();
            let name2 = name.to_owned();
            tokio::spawn(async move {
                if let Err(e) = relay2.queue.store.save_delivery(&name2, delivery).await {
                    warn!(tunnel = %name2, "remembering the delivery mode: {e}");
                }
            });
        }
        self.wake(relay, name);
    }

    /// Wakes (or starts) the worker of `name`.
    pub(crate) fn wake(&self, relay: &Arc<Relay>, name: &str) {
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = workers.get_mut(name) {
            w.woken = true;
            w.notify.notify_one();
            return;
        }
        let notify = Arc::new(Notify::new());
        workers.insert(
            name.to_owned(),
            Worker {
                notify: notify.clone(),
                woken: false,
            },
        );
        tokio::spawn(run_worker(relay.clone(), name.to_owned(), notify));
    }

    /// Clears the wake-up flag of `name`'s worker, before it looks for work.
    fn clear_woken(&self, name: &str) {
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = workers.get_mut(name) {
            w.woken = false;
        }
    }

    /// Ends `name`'s worker unless a wake came since it last looked for work: then it
    /// looks again. Returns whether it retired.
    fn retire(&self, name: &str) -> bool {
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        if workers.get(name).is_some_and(|w| w.woken) {
            return false;
        }
        workers.remove(name);
        true
    }

    /// Loads remembered settings, starts workers for names with queued exchanges, and
    /// runs retention and the watch for `porthole-relay queue` edits until draining.
    pub(crate) async fn run(relay: Arc<Relay>) {
        let q = &relay.queue;
        match q.store.deliveries().await {
            Ok(list) => {
                let mut set = q.client_set.lock().unwrap_or_else(|p| p.into_inner());
                for (name, d) in list {
                    set.entry(name).or_insert(d);
                }
            }
            Err(e) => warn!("reading remembered delivery modes: {e}"),
        }
        let wake_all = |relay: &Arc<Relay>, names: Vec<String>| {
            for n in names {
                relay.queue.wake(relay, &n);
            }
        };
        match q.store.names_with_queued().await {
            Ok(names) => {
                if !names.is_empty() {
                    info!(
                        names = names.len(),
                        "queued exchanges waiting for their clients"
                    );
                }
                wake_all(&relay, names);
            }
            Err(e) => warn!("reading the queue: {e}"),
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = relay.draining.cancelled() => break,
                _ = tick.tick() => {}
            }
            n += 1;
            if n % 5 == 1 {
                if let Ok(depth) = q.store.queued_count().await {
                    relay.metrics.queue_depth.store(depth, Ordering::Relaxed);
                }
            }
            if matches!(q.store.changed_externally().await, Ok(true)) {
                if let Ok(names) = q.store.names_with_queued().await {
                    wake_all(&relay, names);
                }
            }
            if n % 60 == 1 {
                let cfg = q.cfg.clone();
                match q
                    .store
                    .prune(Box::new(move |name| cfg.limits_for(name)))
                    .await
                {
                    Ok((0, 0)) => {}
                    Ok((dropped, expired)) => {
                        info!(dropped, expired, "queue retention applied")
                    }
                    Err(e) => warn!("queue retention: {e}"),
                }
            }
        }
    }
}

/// The answer for an offline name in `reject` mode: 503 with `Retry-After`.
pub(crate) fn offline_reject(name: &str, domain: &str) -> Response<TunnelBody> {
    let mut r = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "offline",
        format!("porthole: no client is online for {name}.{domain}; retry later"),
    );
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static(OFFLINE_RETRY_AFTER));
    r
}

/// Stores one request and answers the visitor once it is durable.
pub(crate) async fn accept(
    relay: &Arc<Relay>,
    name: &str,
    req: Request<Incoming>,
    peer: SocketAddr,
    scheme: Scheme,
    host: &str,
) -> Response<TunnelBody> {
    let q = &relay.queue;
    let max = q
        .cfg
        .max_body_bytes
        .min(relay.cfg.max_body_bytes.unwrap_or(u64::MAX));
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            format!("porthole: a queued request body may have at most {max} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|l| l > max) {
        return too_large();
    }
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    set_forwarded(
        &mut parts.headers,
        peer.ip(),
        scheme.as_str(),
        host,
        &relay.cfg.trusted_proxies,
    );
    if !parts.headers.contains_key(HOST) {
        if let Ok(v) = HeaderValue::from_str(host) {
            parts.headers.insert(HOST, v);
        }
    }
    let read = tokio::time::timeout(
        relay.cfg.target_timeout,
        Limited::new(body, max as usize).collect(),
    )
    .await;
    let body = match read {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(e)) => {
            debug!(tunnel = %name, "reading a body to queue: {e}");
            return text(
                StatusCode::BAD_REQUEST,
                "body-failed",
                "porthole: the request body could not be read".into(),
            );
        }
        Err(_) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                "porthole: the request body was not sent in time".into(),
            )
        }
    };
    let exchange = NewExchange {
        name: name.to_owned(),
        method: parts.method.as_str().to_owned(),
        uri: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into()),
        headers: parts.headers,
        visitor: Some(peer),
        scheme,
        body,
    };
    match q.store.enqueue(exchange, q.cfg.limits_for(name)).await {
        Ok(id) => {
            q.metrics.enqueued.fetch_add(1, Ordering::Relaxed);
            q.wake(relay, name);
            queued_answer(q, name, id)
        }
        Err(e @ StoreError::DiskFull(_)) => {
            q.metrics.refused.fetch_add(1, Ordering::Relaxed);
            error!(tunnel = %name, "refusing a request: {e}");
            text(
                StatusCode::INSUFFICIENT_STORAGE,
                "storage-full",
                "porthole: the relay's storage is full; this request was not stored".into(),
            )
        }
        Err(e @ StoreError::QueueFull { .. }) => {
            q.metrics.refused.fetch_add(1, Ordering::Relaxed);
            warn!(tunnel = %name, "refusing a request: {e}");
            let mut r = text(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue-full",
                format!("porthole: {e}; this request was not stored"),
            );
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("60"));
            r
        }
        Err(e) => {
            q.metrics.refused.fetch_add(1, Ordering::Relaxed);
            error!(tunnel = %name, "refusing a request: {e}");
            let mut r = text(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage-failed",
                "porthole: the relay could not store this request".into(),
            );
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("5"));
            r
        }
    }
}

fn queued_answer(q: &Queue, name: &str, id: QueueId) -> Response<TunnelBody> {
    let rule = q.cfg.names.get(name);
    let status = rule.and_then(|r| r.status).unwrap_or(q.cfg.status);
    let body = rule
        .and_then(|r| r.body.clone())
        .or_else(|| q.cfg.body.clone());
    let (body, json) = match body {
        Some(b) => {
            let json = b.trim_start().starts_with(['{', '[']);
            (b, json)
        }
        None => (format!("{{\"queued\":true,\"id\":\"{id}\"}}"), true),
    };
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED);
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(if json {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        }),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("{}-{id}", q.store.store_id())) {
        h.insert(QUEUE_ID_HEADER, v);
    }
    resp
}

/// How one delivery attempt ended.
enum Outcome {
    Delivered(u16),
    Failed {
        status: Option<u16>,
        error: String,
    },
    /// The client's connection went away: not the target's fault, not counted.
    Lost(String),
}

async fn wait(notify: &Notify, relay: &Relay, limit: Duration) {
    tokio::select! {
        _ = notify.notified() => {}
        _ = relay.draining.cancelled() => {}
        _ = tokio::time::sleep(limit) => {}
    }
}

/// Delivers `name`'s queued exchanges, in order, while a client holds the name; retires
/// when nothing is queued or no client holds it (see [`Queue::wake`]).
async fn run_worker(relay: Arc<Relay>, name: String, notify: Arc<Notify>) {
    let q = &relay.queue;
    while !relay.draining.is_cancelled() {
        q.clear_woken(&name);
        // A bind wakes the worker again; until then there is no one to deliver to.
        let Some(route) = relay.registry.lookup(&name) else {
            if q.retire(&name) {
                return;
            }
            continue;
        };
        let batch = match q.store.next_queued(&name, DELIVERY_BATCH).await {
            Ok(b) => b,
            Err(e) => {
                warn!(tunnel = %name, "reading the queue: {e}");
                wait(&notify, &relay, Duration::from_secs(1)).await;
                continue;
            }
        };
        // An enqueue wakes the worker again.
        if batch.is_empty() {
            if q.retire(&name) {
                return;
            }
            continue;
        }
        let mut pause = None;
        // Records are sent to the store's writer without waiting, so deliveries go on
        // while they commit; all are awaited before the next batch is read.
        let mut records = Vec::new();
        for rec in batch {
            let now = now_ms();
            if rec.next_attempt_at > now {
                pause = Some(Duration::from_millis((rec.next_attempt_at - now) as u64));
                break;
            }
            if route.conn.close_reason().is_some() {
                pause = Some(Duration::from_millis(500));
                break;
            }
            match deliver(&relay, &route, &rec).await {
                Outcome::Delivered(status) => {
                    q.metrics.delivered.fetch_add(1, Ordering::Relaxed);
                    debug!(tunnel = %name, id = %rec.id, status, "delivered");
                    records.push(q.store.record(rec.id, Attempt::Delivered(status)));
                }
                Outcome::Lost(why) => {
                    debug!(tunnel = %name, id = %rec.id, "client went away during delivery: {why}");
                    pause = Some(Duration::from_millis(500));
                    break;
                }
                Outcome::Failed { status, error } => {
                    let attempts = rec.attempts + 1;
                    if attempts >= q.cfg.max_attempts {
                        q.metrics.dead.fetch_add(1, Ordering::Relaxed);
                        warn!(tunnel = %name, id = %rec.id, attempts, "dead-lettered: {error}");
                        records.push(q.store.record(rec.id, Attempt::Dead { status, error }));
                        // Done with this one; the next goes on in order.
                    } else {
                        q.metrics.retries.fetch_add(1, Ordering::Relaxed);
                        let wait_for = q.cfg.backoff(attempts);
                        info!(tunnel = %name, id = %rec.id, attempts, retry_in = ?wait_for, "delivery failed: {error}");
                        records.push(q.store.record(
                            rec.id,
                            Attempt::Retry {
                                status,
                                error,
                                at: now_ms() + wait_for.as_millis() as i64,
                            },
                        ));
                        // Later exchanges wait behind this one: arrival order.
                        pause = Some(wait_for);
                        break;
                    }
                }
            }
        }
        for r in records {
            if let Err(e) = r.await {
                warn!(tunnel = %name, "recording a delivery: {e}");
                pause = Some(pause.unwrap_or(Duration::ZERO).max(Duration::from_secs(1)));
            }
        }
        if let Some(p) = pause {
            wait(&notify, &relay, p).await;
        }
    }
    relay
        .queue
        .workers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&name);
}

async fn deliver(relay: &Relay, route: &Route, rec: &Stored) -> Outcome {
    let ex = &rec.exchange;
    let mut headers = ex.headers.clone();
    let queue_id = format!("{}-{}", relay.queue.store.store_id(), rec.id);
    // Both values are digits and hyphens around a store id of letters and digits.
    if let Ok(v) = HeaderValue::try_from(queue_id) {
        headers.insert(QUEUE_ID_HEADER, v);
    }
    headers.insert(ATTEMPT_HEADER, HeaderValue::from(rec.attempts + 1));
    let head = StreamHead::Http(RequestHead {
        tunnel_id: route.tunnel_id,
        exchange_id: rec.id.0,
        method: ex.method.clone(),
        uri: ex.uri.clone(),
        headers,
        visitor: ex.visitor,
        scheme: ex.scheme,
    });
    let attempt = async {
        let (send, mut recv) = route
            .conn
            .open_bi()
            .await
            .map_err(|e| StreamError::Read(quinn::ReadError::ConnectionLost(e)))?;
        let mut send = GuardedSend::new(send);
        send.write(encode_head(&head)?).await?;
        if !ex.body.is_empty() {
            send.write(ex.body.clone()).await?;
        }
        send.finish();
        let (resp, _) = read_head::<ResponseHead>(&mut recv).await?;
        // Read the (small) answer to its end so the client's exchange completes
        // cleanly; its bytes are not kept.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let mut n = 0usize;
            while let Ok(Some(c)) = recv.read_chunk(64 * 1024, true).await {
                n += c.bytes.len();
                if n > 1024 * 1024 {
                    break;
                }
            }
        })
        .await;
        Ok::<_, StreamError>(resp)
    };
    let timeout = relay.cfg.target_timeout;
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(resp)) if resp.status < 500 => Outcome::Delivered(resp.status),
        Ok(Ok(resp)) => {
            let kind = resp
                .headers
                .get(&ERROR_HEADER)
                .map(|v| format!(" ({})", String::from_utf8_lossy(v.as_bytes())))
                .unwrap_or_default();
            Outcome::Failed {
                status: Some(resp.status),
                error: format!("the target answered {}{kind}", resp.status),
            }
        }
        Ok(Err(e)) if route.conn.close_reason().is_some() => Outcome::Lost(e.to_string()),
        Ok(Err(e)) => Outcome::Failed {
            status: None,
            error: format!("the tunnel client failed the exchange: {e}"),
        },
        Err(_) => Outcome::Failed {
            status: None,
            error: format!("no answer within {}", humantime::format_duration(timeout)),
        },
    }
}

/// Parses the delivery option of a bind, if there is one.
pub(crate) fn delivery_option(
    options: &[shared_proto::TunnelOption],
) -> Result<Option<Delivery>, String> {
    match options
        .iter()
        .find(|o| o.tag & !shared_proto::TunnelOption::CRITICAL == shared_proto::options::DELIVERY)
    {
        None => Ok(None),
        Some(o) => Delivery::decode(&o.value)
            .map(Some)
            .map_err(|e| format!("bad delivery option: {e}")),
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
}

/// Answers a `porthole queue …` command of a client, limited to the names its token
/// reserved. The answer is JSON (see [`shared_proto::ServerMessage::QueueReport`]).
pub(crate) async fn handle_op(relay: &Arc<Relay>, token: &TokenName, op: QueueOp) -> String {
    let reserved: Vec<String> = match relay.tokens.list() {
        Ok(list) => list
            .into_iter()
            .find(|t| &t.name == token)
            .map(|t| t.reserved)
            .unwrap_or_default(),
        Err(e) => {
            warn!("token store: {e}");
            return serde_json::json!({"error": "the relay's token store failed"}).to_string();
        }
    };
    let q = &relay.queue;
    let owned = |name: &str| reserved.iter().any(|r| r == name);
    let not_yours = |id: u64| {
        serde_json::json!({"error": format!("no queued exchange {id} for the names of this token")})
            .to_string()
    };
    match op {
        QueueOp::List { name, limit } => {
            let names = match name {
                Some(n) if !owned(&n) => {
                    return serde_json::json!({"error": format!("the name {n} is not reserved by this token")}).to_string()
                }
                Some(n) => vec![n],
                None => reserved.clone(),
            };
            let limit = limit.clamp(1, MAX_LISTED) as usize;
            match q.store.list(Some(names), limit).await {
                Ok(mut entries) => {
                    for e in &mut entries {
                        truncate(&mut e.uri, 200);
                        if let Some(m) = &mut e.last_error {
                            truncate(m, 200);
                        }
                    }
                    serde_json::json!({"entries": entries}).to_string()
                }
                Err(e) => serde_json::json!({"error": e.to_string()}).to_string(),
            }
        }
        QueueOp::Retry { id } | QueueOp::Drop { id } => {
            let retry = matches!(op, QueueOp::Retry { .. });
            match q.store.list(Some(reserved.clone()), usize::MAX).await {
                Ok(entries) if entries.iter().any(|e| e.id.0 == id) => {}
                Ok(_) => return not_yours(id),
                Err(e) => return serde_json::json!({"error": e.to_string()}).to_string(),
            }
            let result = if retry {
                q.store.retry(QueueId(id)).await
            } else {
                q.store.remove(QueueId(id)).await
            };
            match result {
                Ok(Some(name)) => {
                    if retry {
                        q.wake(relay, &name);
                    }
                    serde_json::json!({"ok": format!("{} {id} ({name})", if retry { "queued again" } else { "dropped" })}).to_string()
                }
                Ok(None) => not_yours(id),
                Err(e) => serde_json::json!({"error": e.to_string()}).to_string(),
            }
        }
    }
}

/// Appends the queue's counters and its running-worker gauge to a Prometheus text page.
pub(crate) fn render_metrics(q: &Queue, out: &mut String) {
    use std::fmt::Write as _;
    let m = &q.metrics;
    for (name, help, v) in [
        (
            "porthole_queue_enqueued_total",
            "Requests stored by the queue.",
            &m.enqueued,
        ),
        (
            "porthole_queue_delivered_total",
            "Queued exchanges delivered.",
            &m.delivered,
        ),
        (
            "porthole_queue_retries_total",
            "Delivery attempts that failed and will be retried.",
            &m.retries,
        ),
        (
            "porthole_queue_dead_total",
            "Queued exchanges dead-lettered.",
            &m.dead,
        ),
        (
            "porthole_queue_refused_total",
            "Requests refused because the queue storage or a retention limit was full.",
            &m.refused,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
    }
    let workers = q.workers.lock().unwrap_or_else(|p| p.into_inner()).len();
    let _ = writeln!(
        out,
        "# HELP porthole_queue_workers Names whose queued exchanges are being delivered."
    );
    let _ = writeln!(out, "# TYPE porthole_queue_workers gauge");
    let _ = writeln!(out, "porthole_queue_workers {workers}");
}

/// `porthole-relay queue …`: works on the data dir's queue file directly (with or
/// without a running relay, which notices changes within a second).
pub fn admin(
    data_dir: &std::path::Path,
    op: AdminOp,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    use crate::store::{on_demand::OnDemand, sqlite::SqliteOptions};
    // A data dir without a queue file lists as empty and has no ids; none is created
    // (a running relay would open it).
    let store = OnDemand::new(data_dir.to_path_buf(), SqliteOptions { min_free_bytes: 0 })
        .with_context(|| format!("opening the queue in {}", data_dir.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting runtime")?;
    rt.block_on(async {
        match op {
            AdminOp::List {
                name,
                state,
                json,
                limit,
            } => {
                let names = name.map(|n| vec![n]);
                let mut entries = store.list(names, limit).await?;
                if let Some(s) = state {
                    entries.retain(|e| e.state.as_str() == s);
                }
                if json {
                    for e in &entries {
                        writeln!(out, "{}", serde_json::to_string(e)?)?;
                    }
                } else {
                    print_entries(&entries, out)?;
                }
            }
            AdminOp::Retry { id } => match store.retry(QueueId(id)).await? {
                Some(name) => writeln!(out, "queued {id} ({name}) again")?,
                None => anyhow::bail!("no exchange {id} in the queue"),
            },
            AdminOp::Drop { id } => match store.remove(QueueId(id)).await? {
                Some(name) => writeln!(out, "dropped {id} ({name})")?,
                None => anyhow::bail!("no exchange {id} in the queue"),
            },
        }
        Ok::<_, anyhow::Error>(())
    })?;
    // Dropping the store stops its writer after what was sent to it.
    drop(store);
    Ok(())
}

/// Prints entries as a table for people.
pub fn print_entries(
    entries: &[crate::store::Entry],
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    if entries.is_empty() {
        return writeln!(out, "the queue is empty");
    }
    writeln!(
        out,
        "{:>8}  {:<20} {:<9} {:>8} {:>6}  {:<20} REQUEST",
        "ID", "NAME", "STATE", "ATTEMPTS", "STATUS", "RECEIVED"
    )?;
    for e in entries {
        let received = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_millis(e.received_at.max(0) as u64),
        );
        writeln!(
            out,
            "{:>8}  {:<20} {:<9} {:>8} {:>6}  {:<20} {} {}{}",
            e.id.0,
            e.name,
            e.state.as_str(),
            e.attempts,
            e.last_status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
            received.to_string(),
            e.method,
            e.uri,
            e.last_error
                .as_deref()
                .map(|m| format!("  ({m})"))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}

/// A `porthole-relay queue` command.
#[derive(Debug, Clone)]
pub enum AdminOp {
    /// List exchanges, newest first.
    List {
        /// Only this name.
        name: Option<String>,
        /// Only this state (`queued`, `delivered`, `dead`).
        state: Option<String>,
        /// One JSON object per line.
        json: bool,
        /// At most this many.
        limit: usize,
    },
    /// Queue an exchange again.
    Retry {
        /// Its id.
        id: u64,
    },
    /// Delete an exchange.
    Drop {
        /// Its id.
        id: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> QueueFile {
        #[derive(Deserialize)]
        struct Wrap {
            queue: QueueFile,
        }
        toml::from_str::<Wrap>(text).map(|w| w.queue).unwrap()
    }

    #[test]
    fn flags_override_the_table_and_names_are_checked() {
        let f = file(
            "[queue]\nstatus = 200\nmax_attempts = 3\nretry_base = \"2s\"\n\
             [queue.names.Pay-Hooks]\ndelivery = \"queue\"\noffline = \"reject\"\nmax_count = 5\n",
        );
        let args = QueueArgs {
            queue_status: Some(201),
            ..Default::default()
        };
        let c = QueueConfig::resolve(&args, Some(f)).unwrap();
        assert_eq!(c.status, 201);
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.backoff(1), Duration::from_secs(2));
        assert_eq!(c.backoff(3), Duration::from_secs(8));
        assert_eq!(c.backoff(40), c.retry_max);
        let rule = &c.names["pay-hooks"];
        assert_eq!(rule.delivery, Some(DeliveryMode::Queue));
        assert_eq!(rule.offline, Some(OfflineMode::Reject));
        assert_eq!(c.limits_for("pay-hooks").max_count, 5);
        assert_eq!(c.limits_for("other").max_count, Limits::default().max_count);

        let bad = file("[queue.names.x]\ndelivery = \"later\"\n");
        let err = QueueConfig::resolve(&QueueArgs::default(), Some(bad))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[queue.names.x] delivery") && err.contains("queue"),
            "{err}"
        );
        let bad = file("[queue.names.\"no way\"]\n");
        assert!(QueueConfig::resolve(&QueueArgs::default(), Some(bad)).is_err());
        let args = QueueArgs {
            queue_status: Some(99),
            ..Default::default()
        };
        assert!(QueueConfig::resolve(&args, None).is_err());
        assert!(toml::from_str::<QueueFile>("colour = 1").is_err());
    }

    #[test]
    fn delivery_options_are_found_and_checked() {
        assert_eq!(delivery_option(&[]), Ok(None));
        let d = Delivery {
            mode: DeliveryMode::Queue,
            offline: OfflineMode::Reject,
        };
        assert_eq!(delivery_option(&[d.to_option()]), Ok(Some(d)));
        let bad = shared_proto::TunnelOption::new(shared_proto::options::DELIVERY, vec![7]);
        assert!(delivery_option(&[bad]).is_err());
    }
}

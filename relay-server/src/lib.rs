//! Porthole relay (`porthole-relay`): public HTTP(S) ingress, the QUIC listener for
//! client sessions, the registry of tunnel names, tokens and the admin endpoint.
//!
//! # Layout
//!
//! - [`config`]: `relay.toml` and the `serve` flags.
//! - [`tls`]: the relay's certificate, its pin, rustls configurations.
//! - [`tokens`]: client tokens (hashed) and name reservations, in SQLite.
//! - [`registry`]: name → session route; the one piece of shared mutable state.
//! - [`session`]: one client's QUIC connection: hello, auth, binds, goaway.
//! - [`ingress`]: visitor HTTP(S): routing by Host, edge rules, forwarding an exchange
//!   over its own data stream.
//! - [`policy`]: per-tunnel edge policy (basic auth, IP lists, header edits, body
//!   limit) and the refusals it produces.
//! - [`headers`]: pure header rules (host matching, hop-by-hop, X-Forwarded-*).
//! - [`quic`]: QUIC tuning and data-stream I/O, shared with the client.
//! - [`tcp`]: TCP tunnels: public ports, one data stream per visitor connection.
//! - [`upgrade`]: HTTP/1.1 upgrades and the raw-byte splice (also TCP tunnels).
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`certs`]: hot-swappable certificates (file reload, TLS-ALPN-01 answers).
//! - [`acme`]: ACME issuance and renewal.
//! - [`limits`]: per-token limits and failed-auth throttling.
//! - [`store`]: the durable queue's storage (trait + SQLite).
//! - [`queue`]: queue and offline modes, redelivery, retries, dead letters.
//! - [`runtime`]: the tokio runtime both binaries run on.
//! - `udp`: the UDP socket under both sides' QUIC endpoints.
//!
//! [`Relay::run`] takes already-bound listeners and a shutdown future, so tests and the
//! client's local mode run relays on ephemeral ports. See `docs/internals.md` for the
//! life of one webhook.

#![warn(missing_docs)]

pub mod acme;
pub mod admin;
mod bulk;
pub mod certs;
pub mod config;
pub mod headers;
pub mod ingress;
pub mod lanes;
pub mod limits;
pub mod names;
pub mod policy;
pub mod queue;
pub mod quic;
pub mod registry;
pub mod runtime;
pub mod session;
pub mod store;
pub mod tcp;
pub mod tls;
pub mod tokens;
mod udp;
pub mod upgrade;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{RelayConfig, ServeArgs};
use registry::{LocalRegistry, Registry, SessionId};
use tokens::{TokenName, TokenStore};

/// How long in-flight exchanges may take to finish once the relay starts draining.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Already-bound sockets for a relay.
#[derive(Debug)]
pub struct Listeners {
    /// Public HTTP.
    pub http: Option<TcpListener>,
    /// Public HTTPS.
    pub https: Option<TcpListener>,
    /// QUIC for clients.
    pub tunnel: std::net::UdpSocket,
    /// Admin endpoint.
    pub admin: Option<TcpListener>,
}

/// The addresses a relay listens on, as bound.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BoundAddrs {
    /// Public HTTP.
    pub http: Option<SocketAddr>,
    /// Public HTTPS.
    pub https: Option<SocketAddr>,
    /// QUIC.
    pub tunnel: SocketAddr,
    /// Admin.
    pub admin: Option<SocketAddr>,
}

impl Listeners {
    /// Binds every listener the configuration asks for.
    pub async fn bind(cfg: &RelayConfig) -> anyhow::Result<Self> {
        async fn tcp(addr: Option<SocketAddr>, what: &str) -> anyhow::Result<Option<TcpListener>> {
            match addr {
                None => Ok(None),
                Some(a) => TcpListener::bind(a)
                    .await
                    .map(Some)
                    .with_context(|| format!("binding {what} listener on {a}")),
            }
        }
        let tunnel_addr = cfg
            .tunnel_addr
            .context("the relay needs a tunnel address")?;
        Ok(Self {
            http: tcp(cfg.http_addr, "HTTP").await?,
            https: tcp(cfg.https_addr, "HTTPS").await?,
            tunnel: quic::udp_socket(tunnel_addr)
                .with_context(|| format!("binding QUIC listener on udp {tunnel_addr}"))?,
            admin: tcp(cfg.admin_addr, "admin").await?,
        })
    }

    /// The bound addresses.
    pub fn addrs(&self) -> anyhow::Result<BoundAddrs> {
        Ok(BoundAddrs {
            http: self.http.as_ref().map(|l| l.local_addr()).transpose()?,
            https: self.https.as_ref().map(|l| l.local_addr()).transpose()?,
            tunnel: self.tunnel.local_addr()?,
            admin: self.admin.as_ref().map(|l| l.local_addr()).transpose()?,
        })
    }
}

/// A live session as the relay tracks it (for revocation and drain).
#[derive(Debug, Clone)]
pub(crate) struct SessionEntry {
    pub token: TokenName,
    pub conn: quinn::Connection,
    pub goaway: CancellationToken,
    /// Tunnels this session holds (for the per-token tunnel limit).
    pub tunnels: Arc<AtomicU64>,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Exchanges answered, by status class (index 1..=5 for 1xx..5xx).
    pub responses: [AtomicU64; 6],
    /// Exchanges answered by the relay itself with 404 (no tunnel).
    pub no_tunnel: AtomicU64,
    /// Sessions accepted since start.
    pub sessions_total: AtomicU64,
    /// Hellos refused (bad token, version).
    pub auth_failures: AtomicU64,
    /// Exchanges currently in flight.
    pub in_flight: AtomicU64,
    /// Request body bytes carried from visitors into tunnels.
    pub bytes_in: AtomicU64,
    /// Response body bytes carried from tunnels to visitors.
    pub bytes_out: AtomicU64,
    /// Response bodies that came on a session's bulk lane.
    pub lane_bodies: AtomicU64,
    /// Time to response head of tunnelled exchanges: counts per bucket of
    /// [`LATENCY_BUCKETS`] (not cumulative), the last one for +Inf.
    pub latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of those latencies, in microseconds.
    pub latency_sum_us: AtomicU64,
    /// Requests refused with 429 because of a per-token request rate.
    pub limited_rate: AtomicU64,
    /// Requests refused with 429 because of a per-token bandwidth.
    pub limited_bandwidth: AtomicU64,
    /// Binds refused because of a per-token tunnel limit.
    pub limited_tunnels: AtomicU64,
    /// Hellos refused because their address failed too often.
    pub auth_throttled: AtomicU64,
    /// Webhooks waiting in a delivery queue (kept at 0 until a queue exists).
    pub queue_depth: AtomicU64,
    /// Requests refused at the edge, by kind (see [`policy::REFUSAL_KINDS`]).
    pub edge_refusals: [AtomicU64; policy::REFUSAL_KINDS.len()],
}

/// Upper bounds (seconds) of the latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

impl Metrics {
    pub(crate) fn count_status(&self, status: u16) {
        let class = (status / 100).min(5) as usize;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn observe_latency(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

/// A relay: configuration, identity, tokens, registry and live sessions.
pub struct Relay {
    cfg: RelayConfig,
    pin: String,
    tokens: TokenStore,
    registry: Arc<dyn Registry>,
    sessions: Mutex<HashMap<SessionId, SessionEntry>>,
    /// Bulk lanes, by the `stable_id` of their session's connection.
    lanes: Mutex<HashMap<usize, Arc<bulk::LaneBodies>>>,
    next_session: AtomicU64,
    next_exchange: AtomicU64,
    metrics: Metrics,
    draining: CancellationToken,
    queue: queue::Queue,
    url_port: Mutex<Option<(u16, &'static str)>>,
    tcp: tcp::TcpTunnels,
    /// Certificate for QUIC (the identity; reloaded when its files change).
    quic_cert: Arc<certs::SwapResolver>,
    /// Certificate for HTTPS: the identity, or the ACME certificate.
    https_cert: Arc<certs::SwapResolver>,
    meter: limits::Meter,
    auth_throttle: limits::AuthThrottle,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("domain", &self.cfg.domain)
            .field("pin", &self.pin)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Loads (or creates) the identity and opens the token store.
    pub fn new(cfg: RelayConfig) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
        let identity = tls::Identity::resolve(
            &cfg.data_dir,
            &cfg.domain,
            cfg.tls_cert.as_ref(),
            cfg.tls_key.as_ref(),
        )?;
        let pin = identity.pin()?;
        // TCP tunnels listen on the public HTTP listener's address.
        let (cfg_tcp_ports, tcp_ip) = (cfg.tcp_ports, cfg.http_addr.map(|a| a.ip()));
        let tokens = TokenStore::open(&cfg.data_dir)
            .with_context(|| format!("opening token store in {}", cfg.data_dir.display()))?;
        let quic_cert = certs::SwapResolver::new(&identity)?;
        let https_cert = certs::SwapResolver::new(&identity)?;
        if let Some((cached, _)) = cfg
            .acme
            .as_ref()
            .and_then(|a| acme::load_cached(&cfg.data_dir, a))
        {
            https_cert.replace(&cached)?;
        }
        let auth_throttle = limits::AuthThrottle::new(cfg.auth_failures_per_minute);
        let store = store::on_demand::OnDemand::new(
            cfg.data_dir.clone(),
            store::sqlite::SqliteOptions {
                min_free_bytes: cfg.queue.min_free_bytes,
            },
        )
        .context("opening the queue")?;
        let store = Arc::new(store);
        let queue = queue::Queue::new(store, cfg.queue.clone());
        Ok(Arc::new(Self {
            quic_cert,
            https_cert,
            meter: limits::Meter::default(),
            auth_throttle,
            cfg,
            pin,
            tokens,
            registry: Arc::new(LocalRegistry::new()),
            sessions: Mutex::new(HashMap::new()),
            lanes: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            next_exchange: AtomicU64::new(1),
            metrics: Metrics::default(),
            draining: CancellationToken::new(),
            queue,
            url_port: Mutex::new(None),
            tcp: tcp::TcpTunnels::new(
                cfg_tcp_ports,
                tcp_ip.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            ),
        }))
    }

    /// The relay's pin, `sha256:<hex>`.
    pub fn pin(&self) -> &str {
        &self.pin
    }

    /// The configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.cfg
    }

    /// The token store.
    pub fn tokens(&self) -> &TokenStore {
        &self.tokens
    }

    /// Counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The durable queue.
    pub fn queue(&self) -> &queue::Queue {
        &self.queue
    }

    /// The public URL of tunnel `name`.
    pub fn public_url(&self, name: &str) -> String {
        let guard = self.url_port.lock().unwrap_or_else(|p| p.into_inner());
        let (port, scheme) = guard.unwrap_or((80, "http"));
        let default = matches!((scheme, port), ("http", 80) | ("https", 443));
        if default {
            format!("{scheme}://{name}.{}", self.cfg.domain)
        } else {
            format!("{scheme}://{name}.{}:{port}", self.cfg.domain)
        }
    }

    /// Runs the relay on `listeners` until `shutdown` resolves, then drains: new
    /// visitors are refused, clients get a goaway, in-flight exchanges get
    /// [`DRAIN_TIMEOUT`] to finish.
    pub async fn run(
        self: Arc<Self>,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let addrs = listeners.addrs()?;
        {
            // Public URLs use HTTPS only when the certificate is the operator's own;
            // a self-signed one would fail every webhook sender.
            let https = addrs
                .https
                .filter(|_| self.cfg.tls_cert.is_some() || self.cfg.acme.is_some());
            let (port, scheme) = match (https, addrs.http) {
                (Some(a), _) => (a.port(), "https"),
                (None, Some(a)) => (a.port(), "http"),
                (None, None) => (80, "http"),
            };
            *self.url_port.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((self.cfg.public_port.unwrap_or(port), scheme));
        }

        let stop_accepting = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();

        let quic_tls = certs::server_config(self.quic_cert.clone(), &[shared_proto::ALPN])?;
        let server_cfg = quic::server_config(quic_tls, &self.tuning())?;
        let endpoint =
            quic::endpoint(listeners.tunnel, Some(server_cfg)).context("starting QUIC endpoint")?;
        tasks.spawn(session::accept_loop(
            self.clone(),
            endpoint.clone(),
            stop_accepting.clone(),
        ));
        tasks.spawn(queue::Queue::run(self.clone()));
        tasks.spawn(session::watch_revocations(
            self.clone(),
            stop_accepting.clone(),
        ));

        if let Some(l) = listeners.http {
            tasks.spawn(ingress::serve(
                self.clone(),
                l,
                None,
                stop_accepting.clone(),
            ));
        }
        if let Some(l) = listeners.https {
            let tls = certs::server_config(
                self.https_cert.clone(),
                &[b"h2", b"http/1.1", certs::ACME_TLS_ALPN],
            )?;
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
            tasks.spawn(ingress::serve(
                self.clone(),
                l,
                Some(acceptor),
                stop_accepting.clone(),
            ));
        }
        if let (Some(cert), Some(key)) = (&self.cfg.tls_cert, &self.cfg.tls_key) {
            tasks.spawn(certs::watch_files(
                cert.clone(),
                key.clone(),
                vec![self.quic_cert.clone(), self.https_cert.clone()],
                stop_accepting.clone(),
            ));
        }
        if let Some(acme) = &self.cfg.acme {
            tasks.spawn(acme::run(
                acme.clone(),
                self.cfg.data_dir.clone(),
                self.https_cert.clone(),
                stop_accepting.clone(),
            ));
        }
        if let Some(l) = listeners.admin {
            tasks.spawn(admin::serve(self.clone(), l, stop_accepting.clone()));
        }

        tracing::info!(
            domain = %self.cfg.domain,
            http = %shown(addrs.http),
            https = %shown(addrs.https),
            tunnel = %addrs.tunnel,
            admin = %shown(addrs.admin),
            pin = %self.pin,
            "relay listening"
        );

        shutdown.await;
        tracing::info!("draining: refusing new visitors, telling clients to reconnect");
        self.draining.cancel();
        stop_accepting.cancel();
        let entries: Vec<SessionEntry> = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for e in &entries {
            e.goaway.cancel();
        }
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while self.metrics.in_flight.load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        endpoint.close(
            quinn::VarInt::from_u32(shared_proto::codes::CLOSE_GOAWAY),
            b"relay shutting down",
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        tasks.abort_all();
        Ok(())
    }

    fn tuning(&self) -> quic::TransportTuning {
        quic::TransportTuning {
            idle_timeout: self.cfg.idle_timeout,
            max_streams: quic::CLIENT_OPENED_STREAMS,
            ..Default::default()
        }
    }

    pub(crate) fn next_session_id(&self) -> SessionId {
        SessionId(self.next_session.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn next_exchange_id(&self) -> u64 {
        self.next_exchange.fetch_add(1, Ordering::Relaxed)
    }
}

/// A listener's address for the log, or `off` when it is not configured.
fn shown(addr: Option<std::net::SocketAddr>) -> String {
    addr.map_or_else(|| "off".to_owned(), |a| a.to_string())
}

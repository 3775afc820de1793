//! Visitor ingress: accepts HTTP/1.1 and HTTP/2 (cleartext or TLS), routes each request
//! by Host to a tunnel, and carries it over its own QUIC data stream.
//!
//! Every failure becomes an exact status and a short plain-text answer: 404 no tunnel,
//! 421 misdirected, 413 body too large, 502 tunnel or target unreachable, 504 target
//! too slow. Bodies stream both ways with QUIC flow control as backpressure; nothing
//! here collects a body, except for a name with an operator signature rule (read up
//! to a cap, checked, then forwarded). A tunnel's edge policy ([`crate::policy`]) is
//! applied here; refusals (401, 403, 413) are counted and noticed to the client.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE, HOST};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use shared_proto::{codes, RequestHead, ResponseHead, Scheme, ServerMessage, StreamHead};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::headers::{
    declared_length, match_host, normalize_host, set_forwarded, strip_hop_by_hop, HostMatch,
    ERROR_HEADER,
};
use crate::policy::Refusal;
use crate::queue::Decision;
use crate::quic::{
    encode_head, framed_body, pump_body, read_head, recv_body, GuardedSend, StreamError, TunnelBody,
};
use crate::upgrade;
use crate::Relay;

/// Bytes the kernel may hold unsent on a TCP socket the tunnel writes a body into (the
/// relay's to a visitor, the client's to its target) before the writer stops
/// (`TCP_NOTSENT_LOWAT`).
///
/// Without it, a body read at a steady rate at the far end moves in bursts: the kernel
/// reports the socket writable only once a third of its send buffer (autotuned up to 4
/// MiB) is free, so the tunnel refilled over a megabyte at a time and ran flat out (relay,
/// QUIC, client and target) for a millisecond or more while every small exchange on it
/// waited in line. With the mark, the socket is writable whenever less than this waits to
/// be sent, and the body moves in steps about this size. Bytes already sent and not yet
/// acknowledged do not count, so a long, fast path is not slowed; less of a body sits in
/// kernel buffers, too.
pub const NOTSENT_LOWAT: u32 = 128 * 1024;

/// Sets [`NOTSENT_LOWAT`] on `stream` (where the OS has the option); failing is not an
/// error.
pub fn limit_unsent(stream: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = socket2::SockRef::from(stream).set_tcp_notsent_lowat(NOTSENT_LOWAT);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = stream;
}

/// Socket options for a TCP connection the tunnel carries a body over (a visitor's at
/// the relay, for HTTP, HTTPS and TCP tunnels; a target's at the client): no
/// Nagle delay, and [`limit_unsent`]. Failing to set either is not an error.
pub fn tune_body_socket(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    limit_unsent(stream);
}

/// Concurrent HTTP/2 streams per visitor connection.
pub const H2_MAX_STREAMS: u32 = 256;
/// Streams reset by the visitor before the relay accepted them, per connection, before
/// the connection is closed (rapid reset, CVE-2023-44487).
pub const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams the relay had to reset because of visitor errors, per connection, before the
/// connection is closed.
pub const H2_MAX_LOCAL_RESETS: usize = 256;
/// Bytes buffered for sending per HTTP/2 stream.
pub const H2_MAX_SEND_BUF: usize = 400 * 1024;

/// What the relay knows about one visitor connection.
#[derive(Debug, Clone)]
struct VisitorConn {
    peer: SocketAddr,
    scheme: Scheme,
    /// TLS server name the visitor asked for, if any.
    sni: Option<String>,
    /// Moves the connection's task to the bulk lane while it writes a body that came
    /// on one ([`crate::bulk`]).
    lane: Arc<crate::lanes::Switch>,
}

/// Accepts visitor connections on `listener` until `stop` fires.
pub(crate) async fn serve(
    relay: Arc<Relay>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of
                    // spinning.
                    debug!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        tune_body_socket(&stream);
        let relay = relay.clone();
        // One task per connection, spawned per kind: a task is as large as its biggest
        // state, and a plain connection should not carry the TLS handshake's (2 KiB
        // more per connection, which a held request keeps for its whole life).
        let lane = crate::lanes::Switch::new();
        match &tls {
            None => {
                let v = VisitorConn {
                    peer,
                    scheme: Scheme::Http,
                    sni: None,
                    lane: lane.clone(),
                };
                crate::lanes::spawn(lane, serve_conn(relay, TokioIo::new(stream), v));
            }
            Some(acceptor) => {
                let tls = serve_tls(relay, acceptor.clone(), stream, peer, lane.clone());
                crate::lanes::spawn(lane, tls);
            }
        }
    }
}

/// A visitor's HTTPS connection: the TLS handshake (bounded by the header timeout),
/// then HTTP as on a plain one.
async fn serve_tls(
    relay: Arc<Relay>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    lane: Arc<crate::lanes::Switch>,
) {
    let timeout = relay.cfg.header_timeout;
    let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => return,
    };
    if stream.get_ref().1.alpn_protocol() == Some(crate::certs::ACME_TLS_ALPN) {
        // A TLS-ALPN-01 validation: the handshake was the whole answer.
        return;
    }
    let sni = stream.get_ref().1.server_name().map(str::to_owned);
    let v = VisitorConn {
        peer,
        scheme: Scheme::Https,
        sni,
        lane,
    };
    serve_conn(relay, TokioIo::new(stream), v).await;
}

async fn serve_conn<I>(relay: Arc<Relay>, io: I, visitor: VisitorConn)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let visitor = Arc::new(visitor);
    let svc_relay = relay.clone();
    let svc = hyper::service::service_fn(move |req| {
        let relay = svc_relay.clone();
        let visitor = visitor.clone();
        async move { Ok::<_, Infallible>(handle(relay, req, &visitor).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(relay.cfg.header_timeout)
        .max_buf_size(relay.cfg.max_header_bytes)
        .keep_alive(true);
    // HTTP/2 limits (docs/streaming.md): a visitor connection gets at most
    // H2_MAX_STREAMS concurrent streams; a rapid-reset flood (streams opened and reset
    // before the relay accepts them) or a client provoking many local resets ends the
    // connection with GOAWAY; a header block (CONTINUATION frames included) is
    // bounded by --max-header-bytes, so hyper refuses a flood before buffering it; and
    // each stream's send buffer is capped, so memory per connection stays bounded.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(relay.cfg.max_header_bytes as u32)
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS)
        .max_send_buf_size(H2_MAX_SEND_BUF)
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)));
    if let Err(e) = builder.serve_connection_with_upgrades(io, svc).await {
        debug!("visitor connection: {e}");
    }
}

/// Porthole's own plain-text answer, its kind named in [`ERROR_HEADER`].
pub(crate) fn text(status: StatusCode, kind: &'static str, msg: String) -> Response<TunnelBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(msg + "\n"))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(ERROR_HEADER, HeaderValue::from_static(kind));
    resp
}

/// The host a request is addressed to, and whether its parts agree.
fn request_host<B>(
    req: &Request<B>,
    visitor: &VisitorConn,
) -> Result<String, Box<Response<TunnelBody>>> {
    let header = req.headers().get(HOST).and_then(|h| h.to_str().ok());
    let authority = req.uri().authority().map(|a| a.as_str());
    let host = match (header, authority) {
        (Some(h), Some(a)) => {
            if normalize_host(h) != normalize_host(a) {
                return Err(Box::new(text(
                    StatusCode::MISDIRECTED_REQUEST,
                    "misdirected",
                    format!(
                        "porthole: the Host header ({h}) and the request target ({a}) disagree"
                    ),
                )));
            }
            h
        }
        (Some(h), None) => h,
        (None, Some(a)) => a,
        (None, None) => {
            return Err(Box::new(text(
                StatusCode::BAD_REQUEST,
                "no-host",
                "porthole: the request has no Host header".into(),
            )))
        }
    };
    if let Some(sni) = &visitor.sni {
        if normalize_host(sni) != normalize_host(host) {
            return Err(Box::new(text(
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected",
                format!("porthole: TLS server name {sni} does not match Host {host}"),
            )));
        }
    }
    Ok(host.to_owned())
}

async fn handle(
    relay: Arc<Relay>,
    req: Request<Incoming>,
    visitor: &VisitorConn,
) -> Response<TunnelBody> {
    let resp = route(&relay, req, visitor).await;
    relay.metrics.count_status(resp.status().as_u16());
    resp
}

async fn route(
    relay: &Arc<Relay>,
    mut req: Request<Incoming>,
    visitor: &VisitorConn,
) -> Response<TunnelBody> {
    let host = match request_host(&req, visitor) {
        Ok(h) => h,
        Err(resp) => return *resp,
    };
    let name = match match_host(&host, &relay.cfg.domain) {
        HostMatch::Tunnel(n) => n,
        HostMatch::Apex => {
            return text(
                StatusCode::OK,
                "apex",
                format!(
                    "porthole relay for {d}: tunnels are served at NAME.{d}",
                    d = relay.cfg.domain
                ),
            )
        }
        HostMatch::Foreign => {
            relay.metrics.no_tunnel.fetch_add(1, Ordering::Relaxed);
            return text(
                StatusCode::NOT_FOUND,
                "no-tunnel",
                format!(
                    "porthole: {} is not served by this relay (tunnels are NAME.{})",
                    normalize_host(&host),
                    relay.cfg.domain
                ),
            );
        }
    };
    let route = relay.registry.lookup(&name);
    match relay.queue.decide(relay, &name, route.is_some()) {
        Decision::Pass => {}
        Decision::Reject => return crate::queue::offline_reject(&name, &relay.cfg.domain),
        Decision::Queue => {
            // An online client's token limits apply to queued requests too.
            if let Some(r) = &route {
                let limits = relay.cfg.limits_for(&r.token.0);
                if let Err(over) = relay
                    .meter
                    .admit(&r.token.0, &limits, std::time::Instant::now())
                {
                    return too_many(relay, over, &name);
                }
            }
            // Boxed, like the other rare paths: the exchange's future is as large as its
            // largest state, and every request in flight keeps one.
            let accept =
                crate::queue::accept(relay, &name, req, visitor.peer, visitor.scheme, &host);
            return Box::pin(accept).await;
        }
    }
    let Some(route) = route else {
        relay.metrics.no_tunnel.fetch_add(1, Ordering::Relaxed);
        return text(
            StatusCode::NOT_FOUND,
            "no-tunnel",
            format!(
                "porthole: no tunnel is online at {name}.{} (start one with `porthole http PORT --name {name}`)",
                relay.cfg.domain
            ),
        );
    };
    let policy = route.edge.policy.as_ref();
    if let Some(policy) = policy {
        let ip =
            crate::policy::client_ip(visitor.peer.ip(), req.headers(), &relay.cfg.trusted_proxies);
        if let Err(r) = policy.admit(ip, req.headers()) {
            let path = path_and_query(req.uri());
            return refuse(relay, &route, req.method(), &path, visitor, r);
        }
    }
    if let (Some(max), Some(len)) = (relay.cfg.max_body_bytes, declared_length(req.headers())) {
        if len > max {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                format!(
                    "porthole: request body of {len} bytes exceeds this relay's limit of {max}"
                ),
            );
        }
    }

    let limits = relay.cfg.limits_for(&route.token.0);
    if let Err(over) = relay
        .meter
        .admit(&route.token.0, &limits, std::time::Instant::now())
    {
        return too_many(relay, over, &name);
    }

    // An HTTP/1.1 upgrade (WebSocket…) without a body keeps its Upgrade headers and
    // turns the data stream into raw bytes both ways after a 101.
    let upgrade = match upgrade::requested_upgrade(req.headers()) {
        Some(proto) if req.version() == http::Version::HTTP_11 && req.body().is_end_stream() => {
            Some((proto, hyper::upgrade::on(&mut req)))
        }
        _ => None,
    };
    // `te: trailers` says the visitor accepts trailers (gRPC needs them): kept, so the
    // client frames the response and its trailers cross the tunnel.
    let wants_trailers = wants_trailers(req.headers());
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // Only the relay's queue names a delivery: a visitor's own queue id would make the
    // client take a fresh webhook for one it had delivered, and answer it unsent.
    parts.headers.remove(&crate::queue::QUEUE_ID_HEADER);
    if wants_trailers {
        parts
            .headers
            .insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    let upgrade = upgrade.map(|(proto, on)| {
        upgrade::restore_upgrade(&mut parts.headers, proto);
        on
    });
    set_forwarded(
        &mut parts.headers,
        visitor.peer.ip(),
        visitor.scheme.as_str(),
        &host,
        &relay.cfg.trusted_proxies,
    );
    if !parts.headers.contains_key(HOST) {
        // HTTP/2 visitors carry the host in :authority; HTTP/1.1 targets need Host.
        if let Ok(v) = HeaderValue::from_str(&host) {
            parts.headers.insert(HOST, v);
        }
    }
    // An operator signature rule for this name: the body is read (up to a cap) and
    // checked before anything crosses the tunnel.
    let body: VisitorBody = match relay.cfg.verify.get(&name) {
        Some(verifiers) => match Box::pin(check_signature(verifiers, &parts, body)).await {
            Ok(bytes) => Full::new(bytes)
                .map_err(|never| match never {})
                .boxed_unsync(),
            Err(r) => {
                let path = path_and_query(&parts.uri);
                return refuse(relay, &route, &parts.method, &path, visitor, r);
            }
        },
        None => body.map_err(std::io::Error::other).boxed_unsync(),
    };
    if let Some(policy) = policy {
        policy.edit_request(&mut parts.headers);
    }
    // The tighter of the relay's and the tunnel's body limits.
    let tunnel_max = policy.and_then(|p| p.max_body_bytes);
    let max_body = match (relay.cfg.max_body_bytes, tunnel_max) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let head = StreamHead::Http(RequestHead {
        tunnel_id: route.tunnel_id,
        exchange_id: relay.next_exchange_id(),
        method: parts.method.as_str().to_owned(),
        uri: path_and_query(&parts.uri),
        // The visitor's header map moves into the head, so it does not live as long as
        // the exchange; a refusal after the exchange needs only the method and URI.
        headers: std::mem::take(&mut parts.headers),
        visitor: Some(visitor.peer),
        scheme: visitor.scheme,
    });

    relay.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
    let in_flight = InFlight(relay.clone());
    let timeout = relay.cfg.target_timeout;
    let started = std::time::Instant::now();
    let token = route.token.0.clone();
    // A body that continues on the bulk lane is written to an HTTP/1 visitor from the
    // bulk thread too (an HTTP/2 connection carries other streams, so it stays).
    let visitor_lane = (parts.version < http::Version::HTTP_2).then_some(&visitor.lane);
    let carried = exchange(
        relay,
        &route.conn,
        head,
        body,
        max_body,
        &token,
        upgrade,
        visitor_lane,
    );
    match tokio::time::timeout(timeout, carried).await {
        Ok(Ok(Answer::Upgraded(resp, io))) => {
            relay.metrics.observe_latency(started.elapsed());
            // The exchange stays in flight while its upgraded connection lives.
            tokio::spawn(async move {
                let _in_flight = in_flight;
                io.run().await;
            });
            resp
        }
        Ok(Ok(Answer::Http(mut resp))) => {
            relay.metrics.observe_latency(started.elapsed());
            if let Some(policy) = policy {
                policy.edit_response(resp.headers_mut());
            }
            // The exchange stays in flight until its response body has been carried
            // (or dropped), so a drain waits for bodies too, not just heads.
            let relay = relay.clone();
            resp.map(|body| {
                body.map_frame(move |f| {
                    let _ = &in_flight;
                    if let Some(d) = f.data_ref() {
                        let n = d.len() as u64;
                        relay.metrics.bytes_out.fetch_add(n, Ordering::Relaxed);
                        relay
                            .meter
                            .charge(&token, &limits, n, std::time::Instant::now());
                    }
                    f
                })
                .boxed_unsync()
            })
        }
        Ok(Err(ExchangeError::BodyTooLarge(max))) if tunnel_max == Some(max) => refuse(
            relay,
            &route,
            &parts.method,
            &path_and_query(&parts.uri),
            visitor,
            crate::policy::body_too_large(max),
        ),
        Ok(Err(ExchangeError::BodyTooLarge(max))) => text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            format!("porthole: request body exceeds this relay's limit of {max} bytes"),
        ),
        Ok(Err(ExchangeError::Tunnel(e))) => {
            debug!(tunnel = %name, "exchange failed: {e}");
            text(
                StatusCode::BAD_GATEWAY,
                "tunnel-unreachable",
                format!("porthole: the tunnel client for {name} did not answer ({e})"),
            )
        }
        Err(_) => text(
            StatusCode::GATEWAY_TIMEOUT,
            "target-timeout",
            format!(
                "porthole: the target behind {name} did not answer within {}",
                humantime::format_duration(timeout)
            ),
        ),
    }
}

/// 429 for a per-token limit, with `Retry-After` in whole seconds.
fn too_many(relay: &Relay, over: crate::limits::Over, name: &str) -> Response<TunnelBody> {
    use crate::limits::Over;
    let (wait, what) = match over {
        Over::Rate(w) => {
            relay.metrics.limited_rate.fetch_add(1, Ordering::Relaxed);
            (w, "requests per second")
        }
        Over::Bandwidth(w) => {
            relay
                .metrics
                .limited_bandwidth
                .fetch_add(1, Ordering::Relaxed);
            (w, "bandwidth")
        }
    };
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut resp = text(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        format!("porthole: the tunnel {name} is over its {what} limit; retry in {secs}s"),
    );
    resp.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

struct InFlight(Arc<Relay>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request body being carried into its data stream.
type BodyPump = Pin<Box<dyn Future<Output = Result<u64, ExchangeError>> + Send>>;

#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error("{0}")]
    Tunnel(#[from] StreamError),
    #[error("body over {0} bytes")]
    BodyTooLarge(u64),
}

impl From<quinn::ConnectionError> for ExchangeError {
    fn from(e: quinn::ConnectionError) -> Self {
        ExchangeError::Tunnel(StreamError::Read(quinn::ReadError::ConnectionLost(e)))
    }
}

/// Whether a request's `TE` says its sender accepts trailers (gRPC needs them).
pub fn wants_trailers(h: &HeaderMap) -> bool {
    h.get_all(http::header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
}

/// What an exchange answers.
enum Answer {
    /// A response whose body streams from the tunnel.
    Http(Response<TunnelBody>),
    /// A 101 to send to the visitor, and the splice to run once hyper hands over the
    /// upgraded connection.
    Upgraded(Response<TunnelBody>, UpgradedStream),
}

/// The data stream of an upgraded exchange, waiting for the visitor's connection.
struct UpgradedStream {
    on: hyper::upgrade::OnUpgrade,
    first: Bytes,
    send: GuardedSend,
    recv: quinn::RecvStream,
}

impl UpgradedStream {
    /// Carries raw bytes between the visitor and the tunnel until both sides end.
    async fn run(self) {
        let io = match self.on.await {
            Ok(io) => TokioIo::new(io),
            Err(e) => {
                debug!("visitor upgrade failed: {e}");
                return;
            }
        };
        if let Err(e) = upgrade::splice(io, self.first, self.send, self.recv).await {
            debug!("upgraded connection ended: {e}");
        }
    }
}

/// A visitor's request body: streamed as it arrives, or already read (and checked).
/// (A concrete error type: `Limited` over a boxed `dyn Error` trips a lifetime bug.)
type VisitorBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// Answers a request refused at the edge: counts it, tells the client (if it asked
/// for notices) so its inspector shows it, and gives the visitor the status and text.
fn refuse(
    relay: &Arc<Relay>,
    route: &crate::registry::Route,
    method: &http::Method,
    path: &str,
    visitor: &VisitorConn,
    r: Refusal,
) -> Response<TunnelBody> {
    if let Some(i) = crate::policy::REFUSAL_KINDS
        .iter()
        .position(|k| *k == r.kind)
    {
        relay.metrics.edge_refusals[i].fetch_add(1, Ordering::Relaxed);
    }
    debug!(
        kind = r.kind,
        status = r.status.as_u16(),
        "refused at the edge"
    );
    if let Some(notices) = &route.edge.notices {
        // Never wait on a slow client: a dropped notice only costs an inspector row.
        let _ = notices.try_send(Box::new(ServerMessage::ExchangeRefused {
            tunnel_id: route.tunnel_id,
            method: method.as_str().to_owned(),
            path: path.to_owned(),
            status: r.status.as_u16(),
            reason: r.message.clone(),
            visitor: Some(visitor.peer.to_string()),
        }));
    }
    let auth = r.kind == "auth-required";
    let mut resp = text(r.status, r.kind, r.message);
    if auth {
        let (n, v) = crate::policy::www_authenticate();
        resp.headers_mut().insert(n, v);
    }
    resp
}

fn path_and_query(uri: &http::Uri) -> String {
    uri.path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into())
}

/// Reads the body (up to [`crate::policy::VERIFY_BODY_CAP`]) and checks it against the
/// operator's verifiers, with the public URL the sender used.
async fn check_signature(
    verifiers: &[webhook_verify::Verifier],
    parts: &http::request::Parts,
    body: Incoming,
) -> Result<Bytes, Refusal> {
    let path = path_and_query(&parts.uri);
    let cap = crate::policy::VERIFY_BODY_CAP;
    let bytes = match Limited::new(body, cap as usize).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.to_string().contains("length limit") => {
            return Err(Refusal {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                kind: "body-too-large",
                message: format!(
                    "porthole: this tunnel checks webhook signatures and reads at most {cap} bytes of body"
                ),
            })
        }
        Err(e) => {
            return Err(Refusal {
                status: StatusCode::BAD_REQUEST,
                kind: "signature-invalid",
                message: format!("porthole: the request body could not be read: {e}"),
            })
        }
    };
    let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok());
    let url = format!(
        "{}://{}{}",
        header("x-forwarded-proto").unwrap_or("http"),
        header("x-forwarded-host")
            .or_else(|| header("host"))
            .unwrap_or_default(),
        path
    );
    let wire: Vec<(String, Vec<u8>)> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    let req = webhook_verify::SignedRequest {
        method: parts.method.as_str(),
        url: &url,
        headers: &wire,
        body: &bytes,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    match webhook_verify::verify_any(verifiers, &req, now) {
        Some((_, v)) if v.is_valid() => Ok(bytes),
        Some((provider, v)) => Err(Refusal {
            status: StatusCode::UNAUTHORIZED,
            kind: "signature-invalid",
            message: format!("porthole: {provider} webhook refused by the relay: {v}"),
        }),
        None => Ok(bytes),
    }
}

/// Carries one exchange over a new data stream and answers the response, whose body
/// streams from the tunnel as the visitor reads it. A body over `max` bytes fails the
/// exchange with [`ExchangeError::BodyTooLarge`]. With `upgrade`, the request body half
/// of the stream stays open for the raw bytes that follow a 101. `visitor_lane` moves
/// the visitor's connection to the bulk thread if the body continues on the lane.
#[allow(clippy::too_many_arguments)]
async fn exchange(
    relay: &Arc<Relay>,
    conn: &quinn::Connection,
    head: StreamHead,
    body: VisitorBody,
    max: Option<u64>,
    token: &str,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    visitor_lane: Option<&Arc<crate::lanes::Switch>>,
) -> Result<Answer, ExchangeError> {
    let (send, mut recv) = conn.open_bi().await?;
    let mut send = GuardedSend::new(send);
    send.write(encode_head(&head)?).await?;
    if let Some(on) = upgrade {
        return Box::pin(exchange_upgrade(on, send, recv)).await;
    }

    // The request body is pumped concurrently with waiting for the response head: a
    // target may answer (say 413 or 401) before it has read the whole body. Usually
    // the body is done first, so it is pumped on this task; only a body still flowing
    // when the head arrives moves to a task of its own.
    let mut pump: Option<BodyPump> = if body.is_end_stream() {
        send.finish();
        None
    } else {
        let relay = relay.clone();
        let token = token.to_owned();
        Some(Box::pin(async move {
            let result = match max {
                Some(max) => pump_body(Limited::new(body, max as usize), send)
                    .await
                    .map_err(|e| match e {
                        StreamError::Body(m) if m.contains("length limit") => {
                            ExchangeError::BodyTooLarge(max)
                        }
                        e => ExchangeError::Tunnel(e),
                    }),
                None => pump_body(body, send).await.map_err(ExchangeError::Tunnel),
            };
            if let Ok(n) = result {
                relay.metrics.bytes_in.fetch_add(n, Ordering::Relaxed);
                let limits = relay.cfg.limits_for(&token);
                relay
                    .meter
                    .charge(&token, &limits, n, std::time::Instant::now());
            }
            result
        }))
    };

    let head = {
        let head_read = read_head::<ResponseHead>(&mut recv);
        tokio::pin!(head_read);
        loop {
            let Some(p) = pump.as_mut() else {
                break (&mut head_read).await.map_err(ExchangeError::Tunnel);
            };
            tokio::select! {
                biased;
                r = &mut head_read => {
                    if let Some(rest) = pump.take() {
                        tokio::spawn(async move {
                            let _ = rest.await;
                        });
                    }
                    break r.map_err(ExchangeError::Tunnel);
                }
                r = p => {
                    pump = None;
                    if let Err(e @ ExchangeError::BodyTooLarge(_)) = r {
                        break Err(e);
                    }
                    // Other body failures (the visitor went away mid-upload) reset the
                    // stream; the target's answer, if any, still decides.
                }
            }
        }
    };
    let (resp_head, first) = match head {
        Ok(h) => h,
        Err(e) => {
            if matches!(e, ExchangeError::BodyTooLarge(_)) {
                let _ = recv.stop(quinn::VarInt::from_u32(codes::RESET_CANCELLED));
            }
            return Err(e);
        }
    };

    if resp_head.lane {
        let id = recv.id();
        let resp = response(resp_head, recv_body(first, recv))?;
        let declared = declared_length(resp.headers()).unwrap_or(0);
        return Ok(Answer::Http(resp.map(|main| {
            crate::bulk::continued_body(relay, conn, id, main, declared, visitor_lane.cloned())
        })));
    }
    let body = if resp_head.framed {
        framed_body(first, recv)
    } else {
        recv_body(first, recv)
    };
    response(resp_head, body).map(Answer::Http)
}

/// The visitor's response from a response head and a body; hop-by-hop headers are
/// dropped, except the two that a 101 needs.
fn response(head: ResponseHead, body: TunnelBody) -> Result<Response<TunnelBody>, ExchangeError> {
    let status = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut builder = Response::builder().status(status);
    if let Some(h) = builder.headers_mut() {
        *h = head.headers;
        let proto = (status == StatusCode::SWITCHING_PROTOCOLS)
            .then(|| h.get(http::header::UPGRADE).cloned())
            .flatten();
        strip_hop_by_hop(h);
        if let Some(proto) = proto {
            upgrade::restore_upgrade(h, proto);
        }
    }
    builder
        .body(body)
        .map_err(|e| ExchangeError::Tunnel(StreamError::Body(e.to_string())))
}

/// The rest of an upgrade exchange once its head is sent: a 101 hands the stream to
/// the splice; any other answer is an ordinary response (the request had no body).
async fn exchange_upgrade(
    on: hyper::upgrade::OnUpgrade,
    send: GuardedSend,
    mut recv: quinn::RecvStream,
) -> Result<Answer, ExchangeError> {
    let (resp_head, first) = read_head::<ResponseHead>(&mut recv).await?;
    if resp_head.status == 101 {
        let resp = response(resp_head, empty())?;
        let io = UpgradedStream {
            on,
            first,
            send,
            recv,
        };
        return Ok(Answer::Upgraded(resp, io));
    }
    send.finish();
    response(resp_head, recv_body(first, recv)).map(Answer::Http)
}

fn empty() -> TunnelBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

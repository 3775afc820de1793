//! The forwarder: takes each data stream the relay opens, sends the exchange to the
//! tunnel's target with a pooled keep-alive client, and streams the response back.
//! It records every exchange (heads, body prefixes, timings, outcome) for the sinks
//! and implements [`Replayer`] for the inspector.
//!
//! Failures toward the target become answers the visitor can read (502 naming the
//! cause); failures toward the relay reset the stream, never a silent truncation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use quinn::{RecvStream, SendStream};
use relay_server::headers::strip_hop_by_hop;
use relay_server::quic::BULK_AFTER;
use relay_server::quic::{
    encode_head, pump_body_framed, pump_body_observed, read_head, recv_body, GuardedSend,
    StreamError, TunnelBody,
};
use shared_proto::{codes, Headers, RequestHead, ResponseHead, StreamHead};

use crate::capture::{
    BodyTap, BoxFuture, CapturedRequest, CapturedResponse, Exchange, ExchangeId, IdSource, Outcome,
    ReplayRequest, Replayer, Sinks,
};
use crate::lane::{pump_body_laned, BulkLane};
use crate::signatures::{self, SignatureCheck, TunnelRules};
use crate::target_tls::TargetOptions;

/// How long a finished response waits for the relay's acknowledgement.
const DELIVERY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where a tunnel forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `http://HOST:PORT`, no trailing slash.
    base: String,
    /// See [`Target::is_direct`]; worked out once, not per request.
    direct: bool,
    /// Scheme and authority of an `http://` or `https://` target, for building each
    /// request's URI without parsing the whole of it.
    origin: Option<(http::uri::Scheme, http::uri::Authority)>,
}

impl Target {
    /// Parses `PORT`, `HOST:PORT`, `http://HOST:PORT` or `https://HOST[:PORT]`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let s = s.trim().trim_end_matches('/');
        if let Ok(port) = s.parse::<u16>() {
            return Ok(Self::new(format!(
                "http://{}:{port}",
                crate::loopback::LOCALHOST
            )));
        }
        let usage = || {
            anyhow::anyhow!(
                "a target is PORT, HOST:PORT, http://HOST:PORT or https://HOST[:PORT], got {s:?}"
            )
        };
        let https = s.starts_with("https://");
        let base = if https || s.starts_with("http://") {
            s.to_owned()
        } else if s.contains("://") {
            return Err(usage());
        } else {
            format!("http://{s}")
        };
        let uri: Uri = base.parse().map_err(|_| usage())?;
        if uri.host().is_none() || (!https && uri.port_u16().is_none()) {
            anyhow::bail!("the target {s:?} needs a port (like localhost:3000)");
        }
        if uri.path() != "/" && !uri.path().is_empty() {
            anyhow::bail!("the target {s:?} must not have a path");
        }
        Ok(Self::new(format!(
            "{}://{}",
            if https { "https" } else { "http" },
            uri.authority().map(|a| a.as_str()).unwrap_or_default()
        )))
    }

    /// Parses the target of a TCP tunnel: `PORT`, `HOST:PORT` or `tcp://HOST:PORT`.
    pub fn parse_tcp(s: &str) -> anyhow::Result<Self> {
        let t = s.trim();
        let t = t.strip_prefix("tcp://").unwrap_or(t);
        if let Ok(port) = t.parse::<u16>() {
            return Ok(Self::new(format!(
                "tcp://{}:{port}",
                crate::loopback::LOCALHOST
            )));
        }
        let uri: Uri = format!("tcp://{t}")
            .parse()
            .map_err(|_| anyhow::anyhow!("a TCP target is PORT or HOST:PORT, got {s:?}"))?;
        match (uri.host(), uri.port_u16(), uri.path()) {
            (Some(_), Some(_), "" | "/") => {
                Ok(Self::new(format!("tcp://{}", t.trim_end_matches('/'))))
            }
            _ => anyhow::bail!("a TCP target is PORT or HOST:PORT, got {s:?}"),
        }
    }

    /// Whether this is a TCP tunnel's target (raw bytes, no HTTP).
    pub fn is_tcp(&self) -> bool {
        self.base.starts_with("tcp://")
    }

    /// Whether the target is reached over TLS.
    pub fn is_https(&self) -> bool {
        self.base.starts_with("https://")
    }

    /// Whether this is a plain `http://` target at an IP address or `localhost`: one
    /// address (or the two loopback ones) to connect to, no DNS.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    fn new(base: String) -> Self {
        let origin = base.parse::<Uri>().ok().and_then(|u| {
            let p = u.into_parts();
            let scheme = p
                .scheme
                .filter(|s| *s == http::uri::Scheme::HTTP || *s == http::uri::Scheme::HTTPS)?;
            Some((scheme, p.authority?))
        });
        let direct = origin.as_ref().is_some_and(|(scheme, authority)| {
            let host = authority.host();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            *scheme == http::uri::Scheme::HTTP
                && (crate::loopback::is_localhost(host) || host.parse::<std::net::IpAddr>().is_ok())
        });
        Self {
            base,
            direct,
            origin,
        }
    }

    /// The absolute URI of a request for `path_and_query` (origin form, `/hook?x=1`)
    /// at this target; `None` when it is not a valid path and query.
    fn uri_for(&self, path_and_query: &str) -> Option<Uri> {
        let (scheme, authority) = self.origin.clone()?;
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(scheme);
        parts.authority = Some(authority);
        parts.path_and_query = Some(path_and_query.parse().ok()?);
        Uri::from_parts(parts).ok()
    }

    /// `http://HOST:PORT` or `https://HOST[:PORT]`.
    pub fn as_str(&self) -> &str {
        &self.base
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.base)
    }
}

/// A tunnel as the forwarder sees it.
#[derive(Debug, Clone)]
pub struct TunnelTarget {
    /// Public name.
    pub name: String,
    /// Where it forwards.
    pub target: Target,
    /// Signature checks and Host rewrite.
    pub rules: Arc<TunnelRules>,
}

/// Tunnel ids of one session → targets (ids are per connection).
pub type TunnelMap = Arc<HashMap<u32, TunnelTarget>>;

/// Forwards exchanges to targets and records them.
pub struct Forwarder {
    /// HTTP/1.1 to `http://` targets.
    h1: crate::target_pool::Http1Pool,
    /// ALPN `h2` or HTTP/1.1 to `https://` targets.
    client: Client<HttpsConnector<TargetConnector>, TunnelBody>,
    /// HTTP/2 by prior knowledge to `http://` targets (`--target-h2`).
    h2c: Option<Client<TargetConnector, TunnelBody>>,
    sinks: Sinks,
    ids: IdSource,
    body_cap: usize,
    /// Name → target, for replays.
    by_name: Mutex<HashMap<String, Target>>,
    /// Name → rules, for re-signing replays.
    rules_by_name: Mutex<HashMap<String, Arc<TunnelRules>>>,
    /// Queued exchanges already delivered (redeliveries are not sent to the target).
    dedup: std::sync::OnceLock<Arc<crate::dedup::Dedup>>,
    /// Itself, for the `'static` futures of [`Replayer::replay`].
    weak: std::sync::Weak<Forwarder>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("sinks", &self.sinks)
            .field("body_cap", &self.body_cap)
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// A forwarder that hands exchanges to `sinks`, keeping up to `body_cap` bytes of
    /// each body, numbering exchanges from `first_id`.
    pub fn new(sinks: Sinks, body_cap: usize, first_id: u64) -> Arc<Self> {
        Self::with_target_options(sinks, body_cap, first_id, &TargetOptions::default())
            .expect("the default target options always build")
    }

    /// Like [`Forwarder::new`], reaching targets as `opts` says (TLS trust, HTTP/2).
    pub fn with_target_options(
        sinks: Sinks,
        body_cap: usize,
        first_id: u64,
        opts: &TargetOptions,
    ) -> anyhow::Result<Arc<Self>> {
        // `localhost` is both loopback addresses, without a DNS lookup (see loopback).
        let mut http = HttpConnector::new_with_resolver(crate::loopback::Resolver::new());
        http.set_nodelay(true);
        http.set_connect_timeout(Some(std::time::Duration::from_secs(10)));
        http.enforce_http(false);
        let http = TargetConnector(http);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(crate::target_tls::client_config(opts)?)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http.clone());
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(https);
        let h2c = opts.h2c.then(|| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(std::time::Duration::from_secs(60))
                .http2_only(true)
                .build(http)
        });
        Ok(Arc::new_cyclic(|weak| Self {
            h1: Default::default(),
            client,
            h2c,
            sinks,
            ids: IdSource::new(first_id),
            body_cap,
            by_name: Mutex::new(HashMap::new()),
            rules_by_name: Mutex::new(HashMap::new()),
            dedup: std::sync::OnceLock::new(),
            weak: weak.clone(),
        }))
    }

    fn self_ref(&self) -> Option<Arc<Self>> {
        self.weak.upgrade()
    }

    /// Sends a replay to `target` and records it; answers the new exchange's id.
    async fn replay_to(
        &self,
        target: Target,
        rules: Arc<TunnelRules>,
        req: ReplayRequest,
    ) -> ExchangeId {
        let started = Instant::now();
        let started_at = SystemTime::now();
        let id = self.ids.next();
        // An edited field that HTTP does not allow is left out, as hyper would refuse it.
        let wire: Headers = req
            .headers
            .iter()
            .filter_map(|(n, v)| {
                Some((
                    HeaderName::from_bytes(n.as_bytes()).ok()?,
                    HeaderValue::from_bytes(v).ok()?,
                ))
            })
            .collect();
        let mut req_tap = BodyTap::new(self.body_cap);
        req_tap.observe(&req.body);
        let body = Full::new(req.body.clone())
            .map_err(|never| match never {})
            .boxed_unsync();
        let signature = signatures::check(
            &rules.verifiers,
            &req.method,
            &req.uri,
            &req.headers,
            &req.body,
            started_at,
        );
        let result = self
            .send_to_target(
                &target,
                &req.method,
                &req.uri,
                wire,
                body,
                rules.rewrite_host,
            )
            .await;
        let time_to_head = started.elapsed();
        let (response, outcome) = match result {
            Ok(resp) => {
                let (parts, mut body) = resp.into_parts();
                let mut tap = BodyTap::new(self.body_cap);
                let mut outcome = Outcome::Completed;
                while let Some(frame) = body.frame().await {
                    match frame {
                        Ok(f) => {
                            if let Some(d) = f.data_ref() {
                                tap.observe(d);
                            }
                        }
                        Err(e) => {
                            outcome = Outcome::Cancelled(format!(
                                "the target's response body failed: {e}"
                            ));
                            break;
                        }
                    }
                }
                let response = CapturedResponse {
                    status: parts.status.as_u16(),
                    headers: capture_headers(&parts.headers),
                    body: tap.finish(),
                };
                (Some(response), outcome)
            }
            Err(reason) => (None, Outcome::TargetError(reason)),
        };
        let exchange = Exchange {
            id,
            replay_of: Some(req.replay_of),
            tunnel: req.tunnel,
            target: target.to_string(),
            started_at,
            time_to_head: Some(time_to_head),
            duration: started.elapsed(),
            visitor: None,
            request: CapturedRequest {
                method: req.method,
                uri: req.uri,
                headers: req.headers,
                body: req_tap.finish(),
            },
            response,
            outcome,
            signature,
        };
        self.sinks.record(exchange);
        id
    }

    /// Remembers a tunnel's rules by name (for re-signing replays).
    pub fn register_rules(&self, name: &str, rules: &Arc<TunnelRules>) {
        self.rules_by_name
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), rules.clone());
    }

    /// Records a request the relay refused at the edge (it never reached this client)
    /// so the console and the inspector show it.
    pub fn record_refused(&self, tunnel: &TunnelTarget, refused: RefusedExchange) {
        if self.sinks.is_empty() {
            return;
        }
        let body = Bytes::from(refused.reason.clone());
        let exchange = Exchange {
            id: self.ids.next(),
            replay_of: None,
            tunnel: tunnel.name.clone(),
            target: tunnel.target.to_string(),
            started_at: SystemTime::now(),
            time_to_head: None,
            duration: std::time::Duration::ZERO,
            visitor: refused.visitor.and_then(|v| v.parse().ok()),
            request: CapturedRequest {
                method: refused.method,
                uri: refused.path,
                headers: Vec::new(),
                body: crate::capture::CapturedBody::default(),
            },
            response: Some(CapturedResponse {
                status: refused.status,
                headers: vec![(
                    "content-type".to_owned(),
                    b"text/plain; charset=utf-8".to_vec(),
                )],
                body: crate::capture::CapturedBody {
                    size: body.len() as u64,
                    bytes: body,
                    truncated: false,
                },
            }),
            outcome: Outcome::RefusedAtEdge(refused.reason),
            signature: None,
        };
        self.sinks.record(exchange);
    }

    /// Deduplicates queued deliveries with `dedup` (set once).
    pub fn set_dedup(&self, dedup: Arc<crate::dedup::Dedup>) {
        let _ = self.dedup.set(dedup);
    }

    /// Remembers which target a tunnel name forwards to (for replays).
    pub fn register(&self, name: &str, target: &Target) {
        self.by_name
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), target.clone());
    }

    /// Handles one data stream opened by the relay.
    pub async fn handle_stream(
        self: Arc<Self>,
        send: SendStream,
        mut recv: RecvStream,
        tunnels: TunnelMap,
        bulk: Option<BulkLane>,
    ) {
        let send = GuardedSend::new(send);
        let (head, first) = match read_head::<StreamHead>(&mut recv).await {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!("bad data stream: {e}");
                let _ = recv.stop(quinn::VarInt::from_u32(codes::RESET_FAILED));
                send.reset(codes::RESET_FAILED);
                return;
            }
        };
        match head {
            StreamHead::Http(head) => {
                let Some(tunnel) = tunnels.get(&head.tunnel_id).cloned() else {
                    tracing::warn!(tunnel_id = head.tunnel_id, "exchange for an unknown tunnel");
                    send.reset(codes::RESET_FAILED);
                    return;
                };
                self.forward(tunnel, head, first, recv, send, bulk).await;
            }
            StreamHead::Tcp(head) => {
                let target = tunnels
                    .get(&head.tunnel_id)
                    .filter(|t| t.target.is_tcp())
                    .map(|t| t.target.clone());
                let Some(target) = target else {
                    tracing::warn!(
                        tunnel_id = head.tunnel_id,
                        "TCP stream for an unknown tunnel"
                    );
                    send.reset(codes::RESET_FAILED);
                    return;
                };
                // Boxed, like the other rare paths: an exchange's task is as large as
                // its largest state, and every in-flight request keeps one.
                Box::pin(carry_tcp(&target, first, send, recv)).await;
            }
        }
    }

    async fn forward(
        &self,
        tunnel: TunnelTarget,
        head: RequestHead,
        first: Bytes,
        mut recv: RecvStream,
        mut send: GuardedSend,
        bulk: Option<BulkLane>,
    ) {
        // A queued exchange carries its queue id; one already handed to the target is
        // answered with the recorded status, so the app sees each webhook once.
        let queue_key = head
            .headers
            .get(&relay_server::queue::QUEUE_ID_HEADER)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let dedup = queue_key.as_ref().and(self.dedup.get()).cloned();
        if let (Some(key), Some(dedup)) = (&queue_key, &dedup) {
            if let Some(status) = dedup.seen(key) {
                tracing::debug!(%key, status, "queued exchange delivered before: not sent again");
                let _ = recv.stop(quinn::VarInt::from_u32(codes::RESET_CANCELLED));
                let head = ResponseHead {
                    status,
                    headers: Headers::from_iter([(
                        HeaderName::from_static("x-porthole-duplicate"),
                        HeaderValue::from_static("1"),
                    )]),
                    framed: false,
                    lane: false,
                };
                if let Ok(h) = encode_head(&head) {
                    if send.write(h).await.is_ok() {
                        send.finish_tracked().wait(DELIVERY_WAIT).await;
                    }
                }
                return;
            }
        }
        let started = Instant::now();
        let started_at = SystemTime::now();
        let id = self.ids.next();
        let rules = tunnel.rules.clone();
        // Capture costs a copy of each body prefix and of the headers: only pay it when
        // someone (console, inspector) will see the exchange, or a verifier needs it.
        let capture = !self.sinks.is_empty();
        let body_cap = if capture { self.body_cap } else { 0 };
        let req_tap = Arc::new(Mutex::new(BodyTap::new(body_cap)));
        let captured_headers = if capture || rules.verifies() {
            capture_headers(&head.headers)
        } else {
            Vec::new()
        };
        let method = head.method.clone();
        let uri = head.uri.clone();
        let visitor = head.visitor;

        // Report-only verification keeps its own copy of the body (up to the cap) as
        // it streams past; enforcement reads the body before the target sees it.
        let verify_tap = (rules.verifies() && !rules.enforce)
            .then(|| Arc::new(Mutex::new(BodyTap::new(signatures::VERIFY_BODY_CAP))));
        let mut signature = None;
        // An upgrade request has no body: the stream's bytes after the head are the
        // upgraded protocol's, carried only after the target answers 101.
        let mut upgrade_stream = None;
        // A visitor that accepts trailers (gRPC) gets a framed response body, so the
        // target's trailers can follow its last byte.
        let wants_trailers = relay_server::ingress::wants_trailers(&head.headers);
        // The request body for the target, or the client's own refusal (401, 413) when
        // an enforced signature check fails before the target sees anything.
        let body = if relay_server::upgrade::requested_upgrade(&head.headers).is_some() {
            upgrade_stream = Some((first, recv));
            Ok(http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync())
        } else if rules.verifies() && rules.enforce {
            let collect =
                Limited::new(recv_body(first, recv), signatures::VERIFY_BODY_CAP).collect();
            let refusal = match Box::pin(collect).await {
                Ok(collected) => {
                    let bytes = collected.to_bytes();
                    req_tap
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .observe(&bytes);
                    let check = signatures::check(
                        &rules.verifiers,
                        &method,
                        &uri,
                        &captured_headers,
                        &bytes,
                        started_at,
                    );
                    match check {
                        Some(c) if !c.is_valid() => {
                            let text = format!(
                                "porthole: webhook signature rejected ({}: {})",
                                c.provider, c.detail
                            );
                            signature = Some(c);
                            Err((401, "signature-invalid", text))
                        }
                        c => {
                            signature = c;
                            Ok(Full::new(bytes)
                                .map_err(|never| match never {})
                                .boxed_unsync())
                        }
                    }
                }
                Err(e) if e.is::<http_body_util::LengthLimitError>() => Err((
                    413,
                    "body-too-large",
                    format!(
                        "porthole: this tunnel verifies signatures and reads at most {} bytes of body",
                        signatures::VERIFY_BODY_CAP
                    ),
                )),
                // The visitor or the relay gave up mid-body: nothing to answer.
                Err(_) => {
                    send.reset(codes::RESET_CANCELLED);
                    return;
                }
            };
            refusal
        } else if body_cap == 0 && verify_tap.is_none() {
            Ok(recv_body(first, recv))
        } else {
            let tap = req_tap.clone();
            let vtap = verify_tap.clone();
            Ok(recv_body(first, recv)
                .map_frame(move |f| {
                    if let Some(d) = f.data_ref() {
                        tap.lock().unwrap_or_else(|p| p.into_inner()).observe(d);
                        if let Some(v) = &vtap {
                            v.lock().unwrap_or_else(|p| p.into_inner()).observe(d);
                        }
                    }
                    f
                })
                .boxed_unsync())
        };

        let answered = match body {
            Ok(body) => Ok(self
                .send_to_target(
                    &tunnel.target,
                    &head.method,
                    &head.uri,
                    head.headers,
                    body,
                    rules.rewrite_host,
                )
                .await),
            Err(refusal) => Err(refusal),
        };
        let time_to_head = answered.is_ok().then(|| started.elapsed());
        // The finished response, waited for after the exchange is recorded; the
        // exchange's duration ends when it was finished (see `Delivery`).
        let mut delivery = None;

        let (response, outcome) = match answered {
            Err((status, kind, text)) => {
                let (response, d) =
                    Box::pin(answer_locally(send, status, kind, text.clone())).await;
                delivery = d;
                (Some(response), Outcome::Rejected(text))
            }
            Ok(Ok(mut resp)) => {
                let switching = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
                let upgraded = match upgrade_stream.take() {
                    Some(stream) if switching => Some((hyper::upgrade::on(&mut resp), stream)),
                    _ => None,
                };
                let (parts, body) = resp.into_parts();
                if let (Some(key), Some(dedup)) = (&queue_key, &dedup) {
                    if parts.status.as_u16() < 500 {
                        dedup.record(key, parts.status.as_u16());
                    }
                }
                let mut headers = parts.headers;
                let proto = headers.get(http::header::UPGRADE).cloned();
                strip_hop_by_hop(&mut headers);
                if let (Some(proto), Some(_)) = (proto, &upgraded) {
                    relay_server::upgrade::restore_upgrade(&mut headers, proto);
                }
                // A large body of known length may move to the session's bulk lane
                // (crate::lane), if the session has one.
                let hint = http_body::Body::size_hint(&body);
                let lane = bulk.as_ref().filter(|_| {
                    !wants_trailers
                        && upgraded.is_none()
                        && hint.exact().is_some_and(|n| n >= BULK_AFTER)
                });
                let resp_head = ResponseHead {
                    status: parts.status.as_u16(),
                    headers,
                    framed: wants_trailers,
                    lane: lane.is_some(),
                };
                let mut tap = BodyTap::new(body_cap);
                let outcome = match encode_head(&resp_head) {
                    Ok(bytes) => match (send.write(bytes).await, upgraded) {
                        (Ok(()), Some((on, (first, recv)))) => {
                            Box::pin(carry_upgraded(on, first, send, recv)).await
                        }
                        (Ok(()), None) => {
                            let pumped = match lane {
                                Some(lane) => {
                                    pump_body_laned(body, send, |d| tap.observe(d), lane).await
                                }
                                None if wants_trailers => {
                                    pump_body_framed(body, send, |d| tap.observe(d)).await
                                }
                                None => pump_body_observed(body, send, |d| tap.observe(d)).await,
                            };
                            match pumped {
                                Ok((_, send)) => {
                                    // Held until the relay has every byte, so a shutdown
                                    // waiting on this exchange never cuts its tail off.
                                    delivery = Some(send.finish_tracked());
                                    Outcome::Completed
                                }
                                Err(e) => Outcome::Cancelled(describe_stream_error(&e)),
                            }
                        }
                        (Err(e), _) => {
                            send.reset(codes::RESET_CANCELLED);
                            Outcome::Cancelled(describe_stream_error(&e))
                        }
                    },
                    Err(e) => {
                        send.reset(codes::RESET_FAILED);
                        Outcome::TargetError(format!("response head not transferable: {e}"))
                    }
                };
                let response = CapturedResponse {
                    status: resp_head.status,
                    headers: if capture {
                        capture_headers(&resp_head.headers)
                    } else {
                        Vec::new()
                    },
                    body: tap.finish(),
                };
                (Some(response), outcome)
            }
            Ok(Err(reason)) => {
                let text = format!(
                    "porthole: the target {} is unreachable: {reason}",
                    tunnel.target
                );
                let (response, d) =
                    Box::pin(answer_locally(send, 502, "target-unreachable", text)).await;
                delivery = d;
                (Some(response), Outcome::TargetError(reason))
            }
        };

        if !self.sinks.is_empty() {
            let request_body = BodyTap::take(&req_tap);
            if let Some(vtap) = verify_tap {
                let body = BodyTap::take(&vtap);
                let declared = captured_headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok());
                signature = if body.truncated {
                    Some(SignatureCheck::unverifiable(
                        &rules.verifiers,
                        format!(
                            "unverifiable: body over {} bytes",
                            signatures::VERIFY_BODY_CAP
                        ),
                    ))
                } else if declared.is_some_and(|d| d != body.size) {
                    Some(SignatureCheck::unverifiable(
                        &rules.verifiers,
                        "unverifiable: the body was not received in full".into(),
                    ))
                } else {
                    signatures::check(
                        &rules.verifiers,
                        &method,
                        &uri,
                        &captured_headers,
                        &body.bytes,
                        started_at,
                    )
                };
            }
            let exchange = Exchange {
                id,
                replay_of: None,
                tunnel: tunnel.name,
                target: tunnel.target.to_string(),
                started_at,
                time_to_head,
                duration: delivery
                    .as_ref()
                    .map_or_else(|| started.elapsed(), |d| d.finished_at() - started),
                visitor,
                request: CapturedRequest {
                    method,
                    uri,
                    headers: captured_headers,
                    body: request_body,
                },
                response,
                outcome,
                signature,
            };
            self.sinks.record(exchange);
        }
        // Held until the relay has every byte, so a shutdown waiting on this exchange
        // never cuts its tail off; after the record, which must not wait for the
        // relay's acknowledgement (up to 25 ms).
        if let Some(d) = delivery {
            d.wait(DELIVERY_WAIT).await;
        }
    }

    async fn send_to_target(
        &self,
        target: &Target,
        method: &str,
        uri: &str,
        headers: Headers,
        body: TunnelBody,
        rewrite_host: bool,
    ) -> Result<Response<Incoming>, String> {
        let full_uri = target
            .uri_for(uri)
            .ok_or_else(|| format!("request target {uri:?} is not a valid URI"))?;
        let mut req = Request::builder()
            .method(method)
            .uri(full_uri)
            .body(body)
            .map_err(|e| format!("bad request head: {e}"))?;
        let h = req.headers_mut();
        *h = headers;
        if let (true, Some((_, authority))) = (rewrite_host, &target.origin) {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                h.insert(http::header::HOST, v);
            }
        }
        match &self.h2c {
            Some(h2c) if !target.is_https() => h2c.request(req).await,
            // A target by name other than `localhost` may resolve to several addresses,
            // which hyper-util's connector tries the way browsers do (happy eyeballs).
            None if target.is_direct() => {
                return self
                    .h1
                    .send(req)
                    .await
                    .map_err(|e| describe_target_error(&e, target));
            }
            _ => self.client.request(req).await,
        }
        .map_err(|e| describe_target_error(&e, target))
    }
}

/// Whether a request head asks for an HTTP/1.1 upgrade (WebSocket…).
/// A header map as the inspector and the capture file keep it: names and raw values,
/// in the map's order.
fn capture_headers(headers: &Headers) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

/// Carries one TCP tunnel connection to the target until both sides end; a target
/// that refuses resets the stream, which closes the visitor's connection.
async fn carry_tcp(target: &Target, first: Bytes, send: GuardedSend, mut recv: RecvStream) {
    let addr = target.as_str().trim_start_matches("tcp://");
    let connect = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        crate::loopback::connect(addr),
    );
    let stream = match connect.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!("TCP target {addr} is unreachable: {e}");
            let _ = recv.stop(quinn::VarInt::from_u32(codes::RESET_FAILED));
            send.reset(codes::RESET_FAILED);
            return;
        }
        Err(_) => {
            tracing::warn!("TCP target {addr} did not accept within 10s");
            let _ = recv.stop(quinn::VarInt::from_u32(codes::RESET_FAILED));
            send.reset(codes::RESET_FAILED);
            return;
        }
    };
    relay_server::ingress::tune_body_socket(&stream);
    if let Err(e) = relay_server::upgrade::splice(stream, first, send, recv).await {
        tracing::debug!("TCP connection to {addr} ended: {e}");
    }
}

/// hyper's connector to the target, with [`relay_server::ingress::limit_unsent`] on each
/// new connection: an upload to a target that reads at a steady rate then moves through
/// the tunnel in small steps, not megabyte bursts that hold up the small exchanges.
#[derive(Clone, Debug)]
struct TargetConnector(HttpConnector<crate::loopback::Resolver>);

type ConnectError =
    <HttpConnector<crate::loopback::Resolver> as tower_service::Service<Uri>>::Error;
type TargetIo = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
type Connecting =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<TargetIo, ConnectError>> + Send>>;

impl tower_service::Service<Uri> for TargetConnector {
    type Response = TargetIo;
    type Error = ConnectError;
    type Future = Connecting;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            relay_server::ingress::limit_unsent(io.inner());
            Ok(io)
        })
    }
}

/// Carries an upgraded connection to the target until both sides end.
async fn carry_upgraded(
    on: hyper::upgrade::OnUpgrade,
    first: Bytes,
    send: GuardedSend,
    recv: RecvStream,
) -> Outcome {
    let io = match on.await {
        Ok(io) => hyper_util::rt::TokioIo::new(io),
        Err(e) => {
            send.reset(codes::RESET_FAILED);
            return Outcome::TargetError(format!("the target's upgrade failed: {e}"));
        }
    };
    match relay_server::upgrade::splice(io, first, send, recv).await {
        Ok(_) => Outcome::Completed,
        Err(e) => Outcome::Cancelled(describe_stream_error(&e)),
    }
}

/// Answers the relay with the client's own short plain-text response (401, 413, 502)
/// and answers what was sent, for the record, and its delivery to wait for afterwards.
async fn answer_locally(
    mut send: GuardedSend,
    status: u16,
    kind: &'static str,
    text: String,
) -> (CapturedResponse, Option<relay_server::quic::Delivery>) {
    let body = Bytes::from(format!("{text}\n"));
    let resp_head = ResponseHead {
        status,
        headers: Headers::from_iter([
            (
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (http::header::CONTENT_LENGTH, HeaderValue::from(body.len())),
            (
                relay_server::headers::ERROR_HEADER,
                HeaderValue::from_static(kind),
            ),
        ]),
        framed: false,
        lane: false,
    };
    let mut delivery = None;
    if let Ok(h) = encode_head(&resp_head) {
        if send.write(h).await.is_ok() && send.write(body.clone()).await.is_ok() {
            delivery = Some(send.finish_tracked());
        }
    }
    let response = CapturedResponse {
        status,
        headers: capture_headers(&resp_head.headers),
        body: crate::capture::CapturedBody {
            size: body.len() as u64,
            bytes: body,
            truncated: false,
        },
    };
    (response, delivery)
}

/// A request the relay refused, as its notice describes it.
#[derive(Debug, Clone)]
pub struct RefusedExchange {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The status the visitor got.
    pub status: u16,
    /// The text the visitor got.
    pub reason: String,
    /// The visitor's address.
    pub visitor: Option<String>,
}

/// Why the target could not be reached, in a sentence: a refused connection (the usual
/// case: the app is not running, or listens on another port) says so plainly instead of
/// hyper's chain of wrappers.
fn describe_target_error(e: &(dyn std::error::Error + 'static), target: &Target) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            let authority = target.as_str().split("://").last().unwrap_or_default();
            return format!(
                "connection refused by {authority}: is the app running and listening on that port?"
            );
        }
        source = s.source();
    }
    error_chain(e)
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn describe_stream_error(e: &StreamError) -> String {
    match e {
        StreamError::Write(quinn::WriteError::Stopped(_))
        | StreamError::Read(quinn::ReadError::Reset(_)) => {
            "the visitor or the relay gave up on the exchange".into()
        }
        StreamError::Write(quinn::WriteError::ConnectionLost(_))
        | StreamError::Read(quinn::ReadError::ConnectionLost(_)) => {
            "the connection to the relay was lost".into()
        }
        StreamError::Body(m) => format!("the target's response body failed: {m}"),
        other => other.to_string(),
    }
}

impl Replayer for Forwarder {
    fn replay(&self, req: ReplayRequest) -> BoxFuture<'static, Result<ExchangeId, String>> {
        let target = self
            .by_name
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&req.tunnel)
            .cloned()
            .or_else(|| {
                // A replay of an exchange from an earlier run whose tunnel is gone:
                // with a single tunnel, its target is the obvious choice.
                let map = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
                (map.len() == 1)
                    .then(|| map.values().next().cloned())
                    .flatten()
            });
        let rules = {
            let map = self.rules_by_name.lock().unwrap_or_else(|p| p.into_inner());
            // As for the target: with a single tunnel, its rules are the obvious choice.
            map.get(&req.tunnel)
                .or_else(|| (map.len() == 1).then(|| map.values().next()).flatten())
                .cloned()
                .unwrap_or_default()
        };
        let this = self.self_ref();
        Box::pin(async move {
            let target = target
                .ok_or_else(|| format!("no running tunnel named {:?} to replay to", req.tunnel))?;
            let this = this.ok_or_else(|| "forwarder is shutting down".to_string())?;
            let mut req = req;
            if req.resign {
                signatures::resign(
                    &rules.verifiers,
                    &req.method,
                    &req.uri,
                    &mut req.headers,
                    &req.body,
                    SystemTime::now(),
                )
                .map_err(|e| {
                    format!("{e} (replay with --no-resign to keep the captured headers)")
                })?;
            }
            Ok(this.replay_to(target, rules, req).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_their_schemes() {
        assert_eq!(
            Target::parse("3000").unwrap().as_str(),
            "http://localhost:3000"
        );
        assert_eq!(
            Target::parse("localhost:3000/").unwrap().as_str(),
            "http://localhost:3000"
        );
        for (target, direct) in [
            ("3000", true),
            ("localhost:3000", true),
            ("http://127.0.0.1:3000", true),
            ("http://[::1]:3000", true),
            ("http://app.internal:3000", false),
            ("https://localhost:8443", false),
        ] {
            assert_eq!(
                Target::parse(target).unwrap().is_direct(),
                direct,
                "{target}"
            );
        }
        let t = Target::parse("https://localhost:8443").unwrap();
        assert_eq!(t.as_str(), "https://localhost:8443");
        assert!(t.is_https() && !t.is_tcp());
        assert_eq!(
            Target::parse("https://dev.example").unwrap().as_str(),
            "https://dev.example"
        );
        for bad in ["ftp://x:1", "http://x", "http://x:1/path", "https://x:1/p"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tcp_targets_parse() {
        let t = Target::parse_tcp("22").unwrap();
        assert_eq!(t.as_str(), "tcp://localhost:22");
        assert!(t.is_tcp() && !t.is_https());
        assert_eq!(
            Target::parse_tcp("db.local:5432").unwrap().as_str(),
            "tcp://db.local:5432"
        );
        assert_eq!(
            Target::parse_tcp("tcp://[::1]:5432").unwrap().as_str(),
            "tcp://[::1]:5432"
        );
        for bad in ["", "db.local", "db.local:5432/x", "70000"] {
            let err = Target::parse_tcp(bad).unwrap_err().to_string();
            assert!(err.contains("PORT or HOST:PORT"), "{bad}: {err}");
        }
    }
}

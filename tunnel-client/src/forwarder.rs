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
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use quinn::{RecvStream, SendStream};
use relay_server::headers::strip_hop_by_hop;
use relay_server::quic::{
    encode_head, pump_body_observed, read_head, recv_body, GuardedSend, StreamError, TunnelBody,
};
use shared_proto::{codes, Header, RequestHead, ResponseHead, StreamHead};

use crate::capture::{
    BodyTap, BoxFuture, CapturedRequest, CapturedResponse, Exchange, ExchangeId, IdSource, Outcome,
    ReplayRequest, Replayer, Sinks,
};

/// How long a finished response waits for the relay's acknowledgement.
const DELIVERY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where a tunnel forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `http://HOST:PORT`, no trailing slash.
    base: String,
}

impl Target {
    /// Parses `PORT`, `HOST:PORT` or `http://HOST:PORT`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let s = s.trim().trim_end_matches('/');
        if let Ok(port) = s.parse::<u16>() {
            return Ok(Self {
                base: format!("http://127.0.0.1:{port}"),
            });
        }
        if s.starts_with("https://") {
            anyhow::bail!("HTTPS targets are not supported yet: use http://HOST:PORT");
        }
        let base = if s.starts_with("http://") {
            s.to_owned()
        } else if s.contains("://") {
            anyhow::bail!("a target is PORT, HOST:PORT or http://HOST:PORT, got {s:?}");
        } else {
            format!("http://{s}")
        };
        let uri: Uri = base.parse().map_err(|_| {
            anyhow::anyhow!("a target is PORT, HOST:PORT or http://HOST:PORT, got {s:?}")
        })?;
        if uri.host().is_none() || uri.port_u16().is_none() {
            anyhow::bail!("the target {s:?} needs a port (like localhost:3000)");
        }
        if uri.path() != "/" && !uri.path().is_empty() {
            anyhow::bail!("the target {s:?} must not have a path");
        }
        Ok(Self {
            base: format!(
                "http://{}",
                uri.authority().map(|a| a.as_str()).unwrap_or_default()
            ),
        })
    }

    /// `http://HOST:PORT`.
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
}

/// Tunnel ids of one session → targets (ids are per connection).
pub type TunnelMap = Arc<HashMap<u32, TunnelTarget>>;

/// Forwards exchanges to targets and records them.
pub struct Forwarder {
    client: Client<HttpConnector, TunnelBody>,
    sinks: Sinks,
    ids: IdSource,
    body_cap: usize,
    /// Name → target, for replays.
    by_name: Mutex<HashMap<String, Target>>,
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
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(std::time::Duration::from_secs(10)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(http);
        Arc::new_cyclic(|weak| Self {
            client,
            sinks,
            ids: IdSource::new(first_id),
            body_cap,
            by_name: Mutex::new(HashMap::new()),
            dedup: std::sync::OnceLock::new(),
            weak: weak.clone(),
        })
    }

    fn self_ref(&self) -> Option<Arc<Self>> {
        self.weak.upgrade()
    }

    /// Sends a replay to `target` and records it; answers the new exchange's id.
    async fn replay_to(&self, target: Target, req: ReplayRequest) -> ExchangeId {
        let started = Instant::now();
        let started_at = SystemTime::now();
        let id = self.ids.next();
        let wire: Vec<Header> = req
            .headers
            .iter()
            .map(|(n, v)| Header::new(n.clone(), v.clone()))
            .collect();
        let mut req_tap = BodyTap::new(self.body_cap);
        req_tap.observe(&req.body);
        let body = Full::new(req.body.clone())
            .map_err(|never| match never {})
            .boxed_unsync();
        let result = self
            .send_to_target(&target, &req.method, &req.uri, wire, body)
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
                    headers: parts
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
                        .collect(),
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
        };
        self.sinks.record(&exchange);
        id
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
                self.forward(tunnel, head, first, recv, send).await;
            }
            StreamHead::Tcp(_) => {
                send.reset(codes::RESET_FAILED);
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
    ) {
        // A queued exchange carries its queue id; one already handed to the target is
        // answered with the recorded status, so the app sees each webhook once.
        let queue_key = head
            .headers
            .iter()
            .find(|h| {
                h.name
                    .eq_ignore_ascii_case(relay_server::queue::QUEUE_ID_HEADER)
            })
            .map(|h| String::from_utf8_lossy(&h.value).into_owned());
        let dedup = queue_key.as_ref().and(self.dedup.get()).cloned();
        if let (Some(key), Some(dedup)) = (&queue_key, &dedup) {
            if let Some(status) = dedup.seen(key) {
                tracing::debug!(%key, status, "queued exchange delivered before: not sent again");
                let _ = recv.stop(quinn::VarInt::from_u32(codes::RESET_CANCELLED));
                let head = ResponseHead {
                    status,
                    headers: vec![Header::new("x-porthole-duplicate", b"1".to_vec())],
                };
                if let Ok(h) = encode_head(&head) {
                    if send.write(h).await.is_ok() {
                        send.finish_delivered(DELIVERY_WAIT).await;
                    }
                }
                return;
            }
        }
        let started = Instant::now();
        let started_at = SystemTime::now();
        let id = self.ids.next();
        // Capture costs a copy of each body prefix and of the headers: only pay it when
        // someone (console, inspector) will see the exchange.
        let capture = !self.sinks.is_empty();
        let req_tap = (capture && self.body_cap > 0)
            .then(|| Arc::new(Mutex::new(BodyTap::new(self.body_cap))));
        let body = match &req_tap {
            Some(tap) => {
                let tap = tap.clone();
                recv_body(first, recv)
                    .map_frame(move |f| {
                        if let Some(d) = f.data_ref() {
                            tap.lock().unwrap_or_else(|p| p.into_inner()).observe(d);
                        }
                        f
                    })
                    .boxed_unsync()
            }
            None => recv_body(first, recv),
        };
        let RequestHead {
            method,
            uri,
            headers,
            visitor,
            ..
        } = head;
        let captured_headers: Vec<(String, Vec<u8>)> = if capture {
            headers
                .iter()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect()
        } else {
            Vec::new()
        };

        let result = self
            .send_to_target(&tunnel.target, &method, &uri, headers, body)
            .await;
        let time_to_head = started.elapsed();

        let (response, outcome) = match result {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                if let (Some(key), Some(dedup)) = (&queue_key, &dedup) {
                    if parts.status.as_u16() < 500 {
                        dedup.record(key, parts.status.as_u16());
                    }
                }
                let mut headers = parts.headers;
                strip_hop_by_hop(&mut headers);
                let wire: Vec<Header> = headers
                    .iter()
                    .map(|(k, v)| Header::new(k.as_str(), v.as_bytes()))
                    .collect();
                let resp_head = ResponseHead {
                    status: parts.status.as_u16(),
                    headers: wire,
                };
                let mut tap = BodyTap::new(self.body_cap);
                let outcome = match encode_head(&resp_head) {
                    Ok(bytes) => match send.write(bytes).await {
                        Ok(()) => match pump_body_observed(body, send, |d| tap.observe(d)).await {
                            Ok((_, send)) => {
                                // Held until the relay has every byte, so a shutdown
                                // waiting on this exchange never cuts its tail off.
                                send.finish_delivered(DELIVERY_WAIT).await;
                                Outcome::Completed
                            }
                            Err(e) => Outcome::Cancelled(describe_stream_error(&e)),
                        },
                        Err(e) => {
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
                    headers: resp_head
                        .headers
                        .into_iter()
                        .map(|h| (h.name, h.value))
                        .collect(),
                    body: tap.finish(),
                };
                (Some(response), outcome)
            }
            Err(reason) => {
                let text = format!(
                    "porthole: the target {} is unreachable: {reason}\n",
                    tunnel.target
                );
                let resp_head = ResponseHead {
                    status: 502,
                    headers: vec![
                        Header::new("content-type", b"text/plain; charset=utf-8".to_vec()),
                        Header::new("content-length", text.len().to_string().into_bytes()),
                        Header::new("x-porthole-error", b"target-unreachable".to_vec()),
                    ],
                };
                let body = Bytes::from(text);
                if let Ok(h) = encode_head(&resp_head) {
                    if send.write(h).await.is_ok() && send.write(body.clone()).await.is_ok() {
                        send.finish_delivered(DELIVERY_WAIT).await;
                    }
                }
                let response = CapturedResponse {
                    status: 502,
                    headers: resp_head
                        .headers
                        .into_iter()
                        .map(|h| (h.name, h.value))
                        .collect(),
                    body: crate::capture::CapturedBody {
                        size: body.len() as u64,
                        bytes: body,
                        truncated: false,
                    },
                };
                (Some(response), Outcome::TargetError(reason))
            }
        };

        if !capture {
            return;
        }
        let request_body = req_tap
            .map(|tap| {
                std::mem::replace(
                    &mut *tap.lock().unwrap_or_else(|p| p.into_inner()),
                    BodyTap::new(0),
                )
                .finish()
            })
            .unwrap_or_default();
        let exchange = Exchange {
            id,
            replay_of: None,
            tunnel: tunnel.name,
            target: tunnel.target.to_string(),
            started_at,
            time_to_head: Some(time_to_head),
            duration: started.elapsed(),
            visitor,
            request: CapturedRequest {
                method,
                uri,
                headers: captured_headers,
                body: request_body,
            },
            response,
            outcome,
        };
        self.sinks.record(&exchange);
    }

    async fn send_to_target(
        &self,
        target: &Target,
        method: &str,
        uri: &str,
        headers: Vec<Header>,
        body: TunnelBody,
    ) -> Result<Response<Incoming>, String> {
        let full_uri: Uri = format!("{}{}", target.as_str(), uri)
            .parse()
            .map_err(|_| format!("request target {uri:?} is not a valid URI"))?;
        let mut req = Request::builder()
            .method(method)
            .uri(full_uri)
            .body(body)
            .map_err(|e| format!("bad request head: {e}"))?;
        let h = req.headers_mut();
        h.reserve(headers.len());
        for Header { name, value } in headers {
            // `from_maybe_shared` takes the Vec without copying it.
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_maybe_shared(Bytes::from(value)),
            ) {
                h.append(n, v);
            }
        }
        self.client.request(req).await.map_err(|e| error_chain(&e))
    }
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
        let this = self.self_ref();
        Box::pin(async move {
            let target = target
                .ok_or_else(|| format!("no running tunnel named {:?} to replay to", req.tunnel))?;
            let this = this.ok_or_else(|| "forwarder is shutting down".to_string())?;
            Ok(this.replay_to(target, req).await)
        })
    }
}

//! Shared test scaffolding for the inspector tests: a recording HTTP target on an
//! ephemeral port, a `Replayer` that stands in for the forwarder, exchange builders,
//! and (in `webdriver`) a minimal WebDriver client for driving headless Chromium.
#![allow(dead_code)]

pub mod webdriver;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Notify;
use tunnel_client::capture::{
    BoxFuture, CapturedBody, CapturedRequest, CapturedResponse, Exchange, ExchangeId, ExchangeSink,
    IdSource, Outcome, ReplayRequest, Replayer,
};

/// A request as the recording target received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
}

impl Received {
    /// The first value of header `name`, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// A local HTTP/1.1 server on 127.0.0.1:0 that records every request and answers
/// `200 {"ok":true,"path":...}`.
#[derive(Clone)]
pub struct RecordingTarget {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    notify: Arc<Notify>,
}

impl RecordingTarget {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Self {
            addr,
            received: Arc::default(),
            notify: Arc::default(),
        };
        let t = target.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let t = t.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let t = t.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let path = parts.uri.to_string();
                            t.received.lock().unwrap().push(Received {
                                method: parts.method.to_string(),
                                uri: path.clone(),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                                    .collect(),
                                body,
                            });
                            t.notify.notify_waiters();
                            let answer = serde_json::json!({"ok": true, "path": path});
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(answer.to_string())))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        target
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits (at most `timeout`) until at least `n` requests arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "target got {} of {n} requests", got.len());
            let _ = tokio::time::timeout(left, notified).await;
        }
    }
}

/// Stands in for the forwarder's replayer: sends the request to the target with a real
/// hyper client and records the result through the sink, as the forwarder does.
pub struct TestReplayer {
    pub target: SocketAddr,
    pub sink: Arc<dyn ExchangeSink>,
    pub ids: IdSource,
}

impl Replayer for TestReplayer {
    fn replay(&self, req: ReplayRequest) -> BoxFuture<'static, Result<ExchangeId, String>> {
        let id = self.ids.next();
        let target = self.target;
        let sink = Arc::clone(&self.sink);
        Box::pin(async move {
            let started_at = SystemTime::now();
            let t0 = Instant::now();
            let mut builder = hyper::Request::builder()
                .method(req.method.as_str())
                .uri(format!("http://{target}{}", req.uri));
            for (n, v) in &req.headers {
                builder = builder.header(n.as_str(), v.as_slice());
            }
            let request = builder
                .body(Full::new(req.body.clone()))
                .map_err(|e| e.to_string())?;
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            let resp = client.request(request).await.map_err(|e| e.to_string())?;
            let time_to_head = t0.elapsed();
            let status = resp.status().as_u16();
            let headers: Vec<(String, Vec<u8>)> = resp
                .headers()
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            let ex = Exchange {
                id,
                replay_of: Some(req.replay_of),
                tunnel: req.tunnel.clone(),
                target: format!("http://{target}"),
                started_at,
                time_to_head: Some(time_to_head),
                duration: t0.elapsed(),
                visitor: None,
                request: CapturedRequest {
                    method: req.method,
                    uri: req.uri,
                    headers: req.headers,
                    body: whole(req.body),
                },
                response: Some(CapturedResponse {
                    status,
                    headers,
                    body: whole(body),
                }),
                outcome: Outcome::Completed,
                signature: None,
            };
            sink.record(&ex);
            Ok(id)
        })
    }
}

/// A replayer for tests that never replay.
pub struct NoReplayer;

impl Replayer for NoReplayer {
    fn replay(&self, _req: ReplayRequest) -> BoxFuture<'static, Result<ExchangeId, String>> {
        Box::pin(async { Err("replay is not available in this test".to_owned()) })
    }
}

/// A body captured whole.
pub fn whole(bytes: impl Into<Bytes>) -> CapturedBody {
    let bytes = bytes.into();
    CapturedBody {
        size: bytes.len() as u64,
        bytes,
        truncated: false,
    }
}

/// A completed exchange: `method uri` with a JSON request body, answered `status`.
pub fn exchange(id: u64, method: &str, uri: &str, status: u16, req_body: &[u8]) -> Exchange {
    Exchange {
        id: ExchangeId(id),
        replay_of: None,
        tunnel: "pay-hooks".into(),
        target: "http://127.0.0.1:3000".into(),
        started_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_714_567_890_123 + id),
        time_to_head: Some(Duration::from_micros(1500)),
        duration: Duration::from_micros(2250),
        visitor: Some("203.0.113.7:55123".parse().unwrap()),
        request: CapturedRequest {
            method: method.into(),
            uri: uri.into(),
            headers: vec![
                ("host".into(), b"pay-hooks.localhost:8080".to_vec()),
                ("content-type".into(), b"application/json".to_vec()),
                (
                    "stripe-signature".into(),
                    format!("t=1,v1=sig{id}").into_bytes(),
                ),
                ("authorization".into(), b"Bearer sk_test_123".to_vec()),
            ],
            body: whole(req_body.to_vec()),
        },
        response: Some(CapturedResponse {
            status,
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            body: whole(format!("{{\"received\":{id}}}")),
        }),
        outcome: Outcome::Completed,
        signature: None,
    }
}

/// Waits until `cond` holds, polling every 20 ms, at most `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

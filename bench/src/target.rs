//! The neutral local target: a minimal hyper HTTP/1.1 server, run as a child process
//! (`porthole-bench target-server`) so that its CPU is separate from the load generator's.
//!
//! Routes: `GET /download/N` streams N bytes; `POST /upload` drains the body and answers
//! the byte count; `GET /hold` answers only once `POST /release` was called (or after
//! a minute), `GET /held` counts the requests being held and `POST /rearm` makes
//! `GET /hold` wait again (the in-flight memory scenario); any other `POST` drains the
//! body and answers a tiny JSON; anything else answers `ok`.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::body::{full, repeat, BenchBody};

/// Runs the target server on `addr` until killed; prints `listening ADDR` on stdout once
/// bound.
pub fn run(addr: &str, threads: usize) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .context("target: building tokio runtime")?;
    rt.block_on(async move {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("target: binding {addr}"))?;
        let local = listener.local_addr()?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening {local}")?;
            out.flush()?;
        }
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("target: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .await;
            });
        }
    })
}

/// Requests waiting in `GET /hold`.
static HELD: AtomicUsize = AtomicUsize::new(0);
/// Set by `POST /release`: held requests answer, new ones answer at once (until
/// `POST /rearm`, before the next measurement).
static RELEASED: AtomicBool = AtomicBool::new(false);
/// How long `GET /hold` waits at most.
const HOLD_LIMIT: Duration = Duration::from_secs(60);

fn release_signal() -> &'static tokio::sync::Notify {
    static SIGNAL: OnceLock<tokio::sync::Notify> = OnceLock::new();
    SIGNAL.get_or_init(tokio::sync::Notify::new)
}

async fn hold() {
    HELD.fetch_add(1, Ordering::SeqCst);
    let released = release_signal().notified();
    if !RELEASED.load(Ordering::SeqCst) {
        let _ = tokio::time::timeout(HOLD_LIMIT, released).await;
    }
    HELD.fetch_sub(1, Ordering::SeqCst);
}

async fn drain(body: Incoming) -> Result<u64, hyper::Error> {
    let mut body = body;
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            n += data.len() as u64;
        }
    }
    Ok(n)
}

async fn handle(req: Request<Incoming>) -> Result<Response<BenchBody>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let resp = if parts.method == Method::GET {
        if let Some(n) = path.strip_prefix("/download/") {
            match n.parse::<u64>() {
                Ok(n) => Response::builder()
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .header(header::CONTENT_LENGTH, n)
                    .body(repeat(n)),
                Err(_) => Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .body(full("bad size\n")),
            }
        } else if path == "/hold" {
            hold().await;
            Response::builder()
                .header(header::CONTENT_TYPE, "text/plain")
                .body(full(Bytes::from_static(b"released\n")))
        } else if path == "/held" {
            Response::builder()
                .header(header::CONTENT_TYPE, "text/plain")
                .body(full(HELD.load(Ordering::SeqCst).to_string()))
        } else {
            Response::builder()
                .header(header::CONTENT_TYPE, "text/plain")
                .body(full(Bytes::from_static(b"ok\n")))
        }
    } else {
        let n = drain(body).await?;
        if path == "/release" {
            RELEASED.store(true, Ordering::SeqCst);
            release_signal().notify_waiters();
        } else if path == "/rearm" {
            RELEASED.store(false, Ordering::SeqCst);
        }
        if path == "/upload" {
            Response::builder()
                .header(header::CONTENT_TYPE, "text/plain")
                .body(full(n.to_string()))
        } else {
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(full(Bytes::from_static(b"{\"ok\":true}")))
        }
    };
    Ok(resp.unwrap_or_else(|_| {
        let mut r = Response::new(full("internal\n"));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    }))
}

//! A minimal hyper HTTP/1.1 client for the scenarios wrk does not fit: bulk transfers,
//! sanity checks and time to URL.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::{full, repeat, BenchBody};

/// Upper bound for any single request, bulk included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

async fn connect(addr: SocketAddr) -> Result<http1::SendRequest<BenchBody>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends one request on a fresh connection; returns the status and the number of body
/// bytes read (and the body itself if it is small).
async fn send(
    addr: SocketAddr,
    host: &str,
    method: Method,
    path: &str,
    body: BenchBody,
    content_length: u64,
) -> Result<(StatusCode, u64, Bytes)> {
    let fut = async {
        let mut sender = connect(addr).await?;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, host)
            .header(header::CONTENT_LENGTH, content_length)
            .body(body)
            .context("building request")?;
        let resp = sender.send_request(req).await.context("sending request")?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut n = 0u64;
        let mut small = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.context("reading response body")?;
            if let Some(d) = frame.data_ref() {
                n += d.len() as u64;
                if small.len() < 4096 {
                    small.extend_from_slice(&d[..d.len().min(4096 - small.len())]);
                }
            }
        }
        Ok::<_, anyhow::Error>((status, n, Bytes::from(small)))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .map_err(|_| anyhow!("request {path} via {host} timed out after {REQUEST_TIMEOUT:?}"))?
}

/// `method path` with an empty body; returns the status and the start of the body.
pub async fn call(
    addr: SocketAddr,
    host: &str,
    method: Method,
    path: &str,
) -> Result<(StatusCode, Bytes)> {
    let (status, _, body) = send(addr, host, method, path, full(Bytes::new()), 0).await?;
    Ok((status, body))
}

/// GET `path`; returns the status.
pub async fn get_status(addr: SocketAddr, host: &str, path: &str) -> Result<StatusCode> {
    Ok(send(addr, host, Method::GET, path, full(Bytes::new()), 0)
        .await?
        .0)
}

/// POSTs the webhook payload once and checks for 200 and the target's answer.
pub async fn check_post(addr: SocketAddr, host: &str, payload: &str) -> Result<()> {
    let body = Bytes::from(payload.to_string());
    let len = body.len() as u64;
    let (status, _, resp) = send(addr, host, Method::POST, "/webhook", full(body), len).await?;
    if status != StatusCode::OK || &resp[..] != b"{\"ok\":true}" {
        bail!(
            "POST /webhook via {host} answered {status} {:?}, expected 200 {{\"ok\":true}}",
            String::from_utf8_lossy(&resp)
        );
    }
    Ok(())
}

/// Downloads `n` bytes in one response; returns MB/s (10^6 bytes per second).
pub async fn download(addr: SocketAddr, host: &str, n: u64) -> Result<f64> {
    let start = Instant::now();
    let (status, got, _) = send(
        addr,
        host,
        Method::GET,
        &format!("/download/{n}"),
        full(Bytes::new()),
        0,
    )
    .await?;
    let secs = start.elapsed().as_secs_f64();
    if status != StatusCode::OK || got != n {
        bail!("download via {host}: status {status}, {got} of {n} bytes");
    }
    Ok(n as f64 / 1e6 / secs)
}

/// Downloads up to `n` bytes, reading no faster than `rate` bytes/s, until `stop` is set
/// (then drops the connection mid-response). Returns the bytes read.
pub async fn download_throttled(
    addr: SocketAddr,
    host: &str,
    n: u64,
    rate: u64,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<u64> {
    use std::sync::atomic::Ordering;
    let mut sender = connect(addr).await?;
    let req = Request::builder()
        .uri(format!("/download/{n}"))
        .header(header::HOST, host)
        .body(full(Bytes::new()))
        .context("building request")?;
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| anyhow!("download via {host}: no response head"))?
        .context("sending request")?;
    if resp.status() != StatusCode::OK {
        bail!("download via {host}: status {}", resp.status());
    }
    let mut body = resp.into_body();
    let start = Instant::now();
    let mut got = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .map_err(|_| anyhow!("download via {host} stalled for 10 s after {got} bytes"))?;
        let Some(frame) = frame else { break };
        if let Some(d) = frame.context("reading response body")?.data_ref() {
            got += d.len() as u64;
        }
        let due = Duration::from_secs_f64(got as f64 / rate.max(1) as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    Ok(got)
}

/// Uploads `n` bytes in one request; returns MB/s.
pub async fn upload(addr: SocketAddr, host: &str, n: u64) -> Result<f64> {
    let start = Instant::now();
    let (status, _, resp) = send(addr, host, Method::POST, "/upload", repeat(n), n).await?;
    let secs = start.elapsed().as_secs_f64();
    let counted: Option<u64> = std::str::from_utf8(&resp)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    if status != StatusCode::OK || counted != Some(n) {
        bail!(
            "upload via {host}: status {status}, target counted {:?} of {n} bytes",
            String::from_utf8_lossy(&resp)
        );
    }
    Ok(n as f64 / 1e6 / secs)
}

/// Polls `GET /` until it answers 200 or `deadline` passes; returns when it did.
pub async fn wait_for_200(addr: SocketAddr, host: &str, deadline: Instant) -> Result<Instant> {
    let mut last = String::from("no attempt");
    while Instant::now() < deadline {
        match get_status(addr, host, "/").await {
            Ok(StatusCode::OK) => return Ok(Instant::now()),
            Ok(s) => last = format!("status {s}"),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    bail!("GET / via {host} never answered 200 (last: {last})")
}

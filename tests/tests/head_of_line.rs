//! Head-of-line benchmark (ignored by default; never a timed assertion): the p99 of
//! small POSTs through a tunnel while a 1 GiB download runs through the same tunnel,
//! against their p99 with the tunnel otherwise idle. Rounds are interleaved (idle,
//! loaded, idle, loaded, …) and medians reported, since the machine is shared.
//!
//! Run: `cargo test -p porthole-tests --test head_of_line -- --ignored --nocapture`
//! (`--release` for release-build figures; `PORTHOLE_HOL_BYTES` sets the download size).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper_util::rt::TokioIo;
use porthole_tests::*;
use tokio::net::TcpListener;

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// A neutral target: `/big?bytes=N` streams N bytes from one shared buffer (no
/// per-byte work), anything else answers `ok` after reading the body.
async fn fast_target() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let block = Bytes::from(vec![7u8; 1 << 20]);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let block = block.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let block = block.clone();
                        async move {
                            let total: u64 = req
                                .uri()
                                .query()
                                .and_then(|q| q.strip_prefix("bytes="))
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(0);
                            let _ = req.into_body().collect().await;
                            let body: Body = if total > 0 {
                                let s = futures_util::stream::unfold(0u64, move |off| {
                                    let block = block.clone();
                                    async move {
                                        if off >= total {
                                            return None;
                                        }
                                        let n = (block.len() as u64).min(total - off);
                                        let frame =
                                            hyper::body::Frame::data(block.slice(..n as usize));
                                        Some((Ok::<_, std::io::Error>(frame), off + n))
                                    }
                                });
                                StreamBody::new(s).boxed_unsync()
                            } else {
                                http_body_util::Full::new(Bytes::from_static(b"ok"))
                                    .map_err(|never| match never {})
                                    .boxed_unsync()
                            };
                            Ok::<_, std::convert::Infallible>(http::Response::new(body))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

async fn small_posts(relay: &Relay, host: &str, n: usize) -> Vec<Duration> {
    let mut conn = connect(relay.http).await.unwrap();
    let body = Bytes::from(vec![b'x'; 512]);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let a = send(&mut conn, host, "POST", "/small", &[], body.clone())
            .await
            .unwrap();
        assert_eq!(a.status, 200);
        out.push(t.elapsed());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn small_request_p99_during_a_bulk_download() {
    let bytes: u64 = std::env::var("PORTHOLE_HOL_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);
    let relay = Relay::start(&[]).await.unwrap();
    let token = relay.token("dev").unwrap();
    let target = fast_target().await;
    let client = Client::start(&relay, &target.to_string(), &token, &["--quiet"])
        .await
        .unwrap();
    let host = client.host();
    let n = 400;
    // Warm up the pools on both sides.
    small_posts(&relay, &host, 50).await;

    let mut idle = Vec::new();
    let mut loaded = Vec::new();
    let mut rates = Vec::new();
    for round in 0..3 {
        idle.push(p99(small_posts(&relay, &host, n).await));

        let running = Arc::new(AtomicBool::new(true));
        let flag = running.clone();
        let http = relay.http;
        let dl_host = host.clone();
        let download = tokio::spawn(async move {
            let mut conn = connect(http).await.unwrap();
            let t = Instant::now();
            let req = http::Request::builder()
                .uri(format!("/big?bytes={bytes}"))
                .header("host", dl_host)
                .body(
                    http_body_util::Empty::new()
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                )
                .unwrap();
            conn.ready().await.unwrap();
            let resp = conn.send_request(req).await.unwrap();
            let mut body = resp.into_body();
            let mut got = 0u64;
            let mut overlapped = 0u64;
            while let Some(f) = body.frame().await {
                if let Ok(d) = f.unwrap().into_data() {
                    got += d.len() as u64;
                    if flag.load(Ordering::Relaxed) {
                        overlapped = got;
                    }
                }
            }
            (got, overlapped, t.elapsed())
        });
        // Let the download reach full speed before measuring.
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Small POSTs for as long as the download runs (bounded).
        let mut during = Vec::new();
        while !download.is_finished() && during.len() < 20 * n {
            during.extend(small_posts(&relay, &host, 10).await);
        }
        running.store(false, Ordering::Relaxed);
        let (got, overlapped, took) = download.await.unwrap();
        assert_eq!(got, bytes);
        assert!(
            during.len() >= 100,
            "round {round}: only {} POSTs overlapped the download (raise PORTHOLE_HOL_BYTES)",
            during.len()
        );
        eprintln!(
            "round {round}: {} POSTs during the download ({} MiB overlapped, {took:?})",
            during.len(),
            overlapped >> 20
        );
        rates.push(got as f64 / took.as_secs_f64() / 1e6);
        loaded.push(p99(during));
    }
    idle.sort();
    loaded.sort();
    rates.sort_by(|a, b| a.total_cmp(b));
    let (i, l) = (idle[1], loaded[1]);
    eprintln!(
        "head-of-line: small POST p99 idle {i:?}, during a {} MiB download {l:?} (ratio {:.2}); download {:.0} MB/s; rounds idle {idle:?} loaded {loaded:?}",
        bytes >> 20,
        l.as_secs_f64() / i.as_secs_f64(),
        rates[1],
    );
}

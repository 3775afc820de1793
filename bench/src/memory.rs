//! Memory under many tunnels and many requests, as `shared/PERFORMANCE.md` asks:
//! the relay's RSS per idle tunnel (real `porthole http` clients, one session and one
//! tunnel each), and the relay's and client's RSS while 10,000 requests are in flight
//! (held open by the target's `GET /hold` until released).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use http::{Method, StatusCode};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::client;
use crate::paths::{wait_ready, PathUnderTest, PortholeBins, RelayInfo};
use crate::procs;

/// How long the whole of one scenario may take before it is abandoned.
const SCENARIO_LIMIT: Duration = Duration::from_secs(120);
/// Clients started (or connections opened) at a time.
const BATCH: usize = 50;

/// The relay with many idle tunnels.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IdleTunnels {
    /// Clients started, each with one tunnel.
    pub tunnels: usize,
    /// Relay RSS before they connected, KiB.
    pub relay_before_kib: u64,
    /// Relay RSS with all of them connected and idle, KiB.
    pub relay_after_kib: u64,
    /// (after − before) ÷ tunnels, KiB.
    pub per_tunnel_kib: f64,
}

/// Starts `n` clients against the relay, waits until every one is ready and idle, and
/// reads the relay's RSS; then stops them all.
pub async fn idle_tunnels(
    bins: &PortholeBins,
    info: &RelayInfo,
    relay_pid: u32,
    target: SocketAddr,
    n: usize,
) -> Result<IdleTunnels> {
    let data = bins.work.join("idle-clients");
    std::fs::create_dir_all(&data)?;
    let before = procs::rss_kib(relay_pid)?;
    let deadline = Instant::now() + SCENARIO_LIMIT;
    let mut clients = Vec::with_capacity(n);
    let result = async {
        for start in (0..n).step_by(BATCH) {
            let mut batch = Vec::new();
            for i in start..(start + BATCH).min(n) {
                batch.push(bins.spawn_client_anon(info, target, &format!("idle-{i}"), &data)?);
            }
            for mut c in batch {
                let left = deadline.saturating_duration_since(Instant::now());
                wait_ready(&mut c, left.max(Duration::from_secs(1))).await?;
                clients.push(c);
            }
        }
        // Let the sessions settle (handshakes done, buffers returned).
        tokio::time::sleep(Duration::from_secs(2)).await;
        procs::rss_kib(relay_pid)
    }
    .await;
    let started = clients.len();
    let mut stops = JoinSet::new();
    for c in clients {
        stops.spawn(c.stop());
    }
    while stops.join_next().await.is_some() {}
    let after = result.with_context(|| format!("after starting {started} of {n} idle clients"))?;
    Ok(IdleTunnels {
        tunnels: n,
        relay_before_kib: before,
        relay_after_kib: after,
        per_tunnel_kib: after.saturating_sub(before) as f64 / n.max(1) as f64,
    })
}

/// Relay and client with many requests in flight.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InFlight {
    /// Requests sent (each on its own visitor connection).
    pub requests: usize,
    /// Requests the target held at once (should equal `requests`).
    pub held: usize,
    /// RSS of each tunnel process before, KiB.
    pub before_kib: Vec<(String, u64)>,
    /// RSS of each tunnel process with all requests in flight, KiB.
    pub during_kib: Vec<(String, u64)>,
    /// Requests that got their 200 once released.
    pub answered: usize,
}

/// Opens `n` visitor connections through `p`, each with a `GET /hold` that the target
/// keeps waiting; once the target holds them all, reads the tunnel processes' RSS, then
/// releases them and checks every answer.
pub async fn in_flight(p: &PathUnderTest, target: SocketAddr, n: usize) -> Result<InFlight> {
    // A measurement before this one left the target answering `GET /hold` at once.
    let (status, _) = client::call(target, &target.to_string(), Method::POST, "/rearm").await?;
    if status != StatusCode::OK {
        bail!("target /rearm answered {status}");
    }
    let before = rss_of(p)?;
    let deadline = Instant::now() + SCENARIO_LIMIT;
    let request = format!("GET /hold HTTP/1.1\r\nHost: {}\r\n\r\n", p.host);
    let mut streams = Vec::with_capacity(n);
    for start in (0..n).step_by(BATCH) {
        let mut opening = JoinSet::new();
        for _ in start..(start + BATCH).min(n) {
            let (addr, request) = (p.addr, request.clone());
            opening.spawn(async move {
                let mut s = TcpStream::connect(addr).await?;
                s.write_all(request.as_bytes()).await?;
                anyhow::Ok(s)
            });
        }
        while let Some(s) = opening.join_next().await {
            streams.push(s.map_err(|e| anyhow!("connect task: {e}"))??);
        }
    }
    let held = loop {
        let (status, body) =
            client::call(target, &target.to_string(), Method::GET, "/held").await?;
        if status != StatusCode::OK {
            bail!("target /held answered {status}");
        }
        let held: usize = std::str::from_utf8(&body)?.trim().parse()?;
        if held >= n || Instant::now() > deadline {
            break held;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let during = rss_of(p)?;
    client::call(target, &target.to_string(), Method::POST, "/release").await?;
    let mut reading = JoinSet::new();
    for mut s in streams {
        reading.spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            let read = async {
                loop {
                    let k = s.read(&mut chunk).await?;
                    buf.extend_from_slice(&chunk[..k]);
                    if k == 0 || buf.windows(9).any(|w| w == b"released\n") {
                        break;
                    }
                }
                std::io::Result::Ok(())
            };
            let ok = tokio::time::timeout(Duration::from_secs(30), read)
                .await
                .is_ok()
                && buf.starts_with(b"HTTP/1.1 200");
            ok
        });
    }
    let mut answered = 0;
    while let Some(r) = reading.join_next().await {
        if matches!(r, Ok(true)) {
            answered += 1;
        }
    }
    Ok(InFlight {
        requests: n,
        held,
        before_kib: before,
        during_kib: during,
        answered,
    })
}

/// RSS of each process of `p`, KiB.
fn rss_of(p: &PathUnderTest) -> Result<Vec<(String, u64)>> {
    p.pids()
        .into_iter()
        .map(|(name, pid)| Ok((name, procs::rss_kib(pid)?)))
        .collect()
}

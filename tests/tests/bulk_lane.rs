//! The bulk lane (docs/streaming.md): once small exchanges run beside a response body
//! of 1 MiB or more, the rest of the body travels on a second QUIC connection of the
//! session, driven on both sides by a thread in the idle scheduling class, so a big
//! download leaves CPU time to small exchanges. A lone download stays on its stream.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use porthole_tests::*;

const STEP: Duration = Duration::from_secs(30);

/// A target, a relay and a client (started with `env`) under the token `dev`.
async fn tunnel(env: &[(&str, &str)]) -> (Target, Relay, String, Client) {
    let target = Target::start().await.unwrap();
    let relay = Relay::start(&[]).await.unwrap();
    let token = relay.token("dev").unwrap();
    let client = Client::start_with_env(&relay, &target.addr.to_string(), &token, &[], env)
        .await
        .unwrap();
    (target, relay, token, client)
}

/// A download of pattern bytes through the tunnel, every byte checked as it arrives.
struct Download {
    _conn: Sender,
    body: Incoming,
    /// Bytes received so far.
    off: u64,
}

impl Download {
    async fn start(relay: &Relay, host: &str, size: u64) -> Self {
        let mut conn = connect(relay.http).await.unwrap();
        let path = format!("/download?bytes={size}");
        let resp = get(&mut conn, host, &path, STEP).await.unwrap();
        assert_eq!(resp.status(), 200);
        Self {
            _conn: conn,
            body: resp.into_body(),
            off: 0,
        }
    }

    /// Takes the next frame: `Ok(false)` at the end of the body, the error if it failed.
    /// Panics if a byte differs or nothing arrives within `STEP`.
    async fn next(&mut self) -> Result<bool, hyper::Error> {
        let Some(frame) = tokio::time::timeout(STEP, self.body.frame())
            .await
            .expect("the download keeps flowing")
        else {
            return Ok(false);
        };
        if let Ok(d) = frame?.into_data() {
            let at = self.off;
            assert!(
                d.iter()
                    .enumerate()
                    .all(|(i, b)| *b == pattern(at + i as u64)),
                "a byte differs after offset {at}"
            );
            self.off += d.len() as u64;
        }
        Ok(true)
    }

    /// Reads to the end of the body; answers the bytes received.
    async fn finish(mut self) -> u64 {
        while self.next().await.expect("no body error") {}
        self.off
    }

    /// Reads on, with a small POST through the tunnel now and then, until the rest of
    /// the body has moved to the lane.
    async fn read_until_moved(&mut self, relay: &Relay, host: &str) {
        let mut small = connect(relay.http).await.unwrap();
        let moved = Instant::now() + STEP;
        while lane_bodies(relay).await < 1.0 {
            assert!(
                Instant::now() < moved,
                "the download never moved to the lane"
            );
            let a = send(&mut small, host, "POST", "/x", &[], Bytes::from("x"))
                .await
                .unwrap();
            assert_eq!(a.status, 200);
            for _ in 0..16 {
                assert!(self.next().await.unwrap(), "the download ended unmoved");
            }
        }
    }
}

/// Downloads `size` pattern bytes through the tunnel and checks every byte.
async fn download(relay: &Relay, host: &str, size: u64) -> u64 {
    Download::start(relay, host, size).await.finish().await
}

/// The scheduling policies of the process's threads named `porthole-bulk`
/// (`SCHED_IDLE` is 5).
fn bulk_thread_policies(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim() == "porthole-bulk")
        })
        .filter_map(|t| {
            let sched = std::fs::read_to_string(t.path().join("sched")).ok()?;
            let line = sched.lines().find(|l| l.starts_with("policy"))?;
            Some(line.rsplit(':').next()?.trim().to_owned())
        })
        .collect()
}

async fn lane_bodies(relay: &Relay) -> f64 {
    metric(
        &relay.metrics().await.unwrap(),
        "porthole_bulk_lane_bodies_total",
    )
}

/// Downloads `size` pattern bytes (checked) through the tunnel, slowly, and sends
/// small POSTs on another connection once the first bytes are in, until the body has
/// moved to the lane or the download is over; answers the bytes downloaded.
async fn download_beside_posts(relay: &Relay, host: &str, size: u64) -> u64 {
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let mut big = Download::start(relay, host, size).await;
    let big = tokio::spawn(async move {
        let mut first = Some(first_tx);
        while big.next().await.unwrap() {
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
            // A slow reader, so the small exchanges overlap the transfer.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        big.off
    });
    first_rx.await.expect("the download started");
    let mut conn = connect(relay.http).await.unwrap();
    let moved = lane_bodies(relay).await + 1.0;
    let deadline = Instant::now() + STEP;
    let mut i = 0;
    while lane_bodies(relay).await < moved && !big.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the download neither moved nor ended"
        );
        i += 1;
        let body = Bytes::from(format!("small {i}"));
        let a = send(&mut conn, host, "POST", "/small", &[], body.clone())
            .await
            .unwrap();
        assert_eq!((a.status, a.body), (200, body));
    }
    big.await.unwrap()
}

#[tokio::test]
async fn a_download_moves_to_the_bulk_lane_once_small_exchanges_run_beside_it() {
    let (_target, relay, _token, client) = tunnel(&[]).await;
    let host = client.host();

    // Below the threshold, or alone: it stays on its data stream, and no lane opens.
    assert_eq!(download(&relay, &host, 256 << 10).await, 256 << 10);
    assert_eq!(download(&relay, &host, 8 << 20).await, 8 << 20);
    assert_eq!(lane_bodies(&relay).await, 0.0);
    assert!(!relay.proc.stderr().contains("bulk lane open"));

    // With small POSTs beside it, the rest moves; they are all answered.
    let size = 64u64 << 20;
    assert_eq!(download_beside_posts(&relay, &host, size).await, size);
    assert_eq!(lane_bodies(&relay).await, 1.0);
    // The lane is part of the session, not a session of its own.
    let m = relay.metrics().await.unwrap();
    assert_eq!(metric(&m, "porthole_sessions"), 1.0);

    // Both processes carried it on a thread in the idle scheduling class.
    assert_eq!(bulk_thread_policies(client.proc.pid()), vec!["5"]);
    assert_eq!(bulk_thread_policies(relay.proc.pid()), vec!["5"]);

    // The next one reuses the lane.
    assert_eq!(download_beside_posts(&relay, &host, size).await, size);
    assert_eq!(lane_bodies(&relay).await, 2.0);
    assert_eq!(relay.proc.stderr().matches("bulk lane open").count(), 1);
}

#[tokio::test]
async fn with_the_bulk_lane_off_large_downloads_stay_on_their_data_streams() {
    let (_target, relay, _token, client) = tunnel(&[("PORTHOLE_BULK_LANE", "off")]).await;
    let size = 8u64 << 20;
    assert_eq!(
        download_beside_posts(&relay, &client.host(), size).await,
        size
    );
    assert_eq!(lane_bodies(&relay).await, 0.0);
    assert!(bulk_thread_policies(client.proc.pid()).is_empty());
}

/// A client killed in the middle of a download on the lane: the visitor's body ends
/// in an error within a few seconds (never a hang), and the relay serves a new
/// client under the same token at once.
#[tokio::test]
async fn a_client_killed_during_a_lane_download_cuts_the_body_promptly() {
    let (target, relay, token, mut client) = tunnel(&[]).await;
    let size = 1u64 << 30;
    let mut big = Download::start(&relay, &client.host(), size).await;
    big.read_until_moved(&relay, &client.host()).await;
    // Read a few more MiB from the lane before the client goes.
    let until = big.off + (4 << 20);
    while big.off < until {
        assert!(big.next().await.unwrap());
    }
    client.proc.kill().await;
    let killed = Instant::now();
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), big.next()).await {
            Err(_) => panic!("the body hung after the client was killed"),
            Ok(Ok(false)) => break "end",
            Ok(Err(_)) => break "error",
            Ok(Ok(true)) => {}
        }
    };
    assert_eq!(ended, "error", "a cut body must not look complete");
    assert!(big.off < size);
    assert!(
        killed.elapsed() < Duration::from_secs(8),
        "took {:?}",
        killed.elapsed()
    );
    let again = Client::start(&relay, &target.addr.to_string(), &token, &[])
        .await
        .unwrap();
    let size = 2u64 << 20;
    assert_eq!(download(&relay, &again.host(), size).await, size);
}

/// The client moves both its QUIC endpoints to new UDP ports (SIGUSR1, as a network
/// change would) while a download runs on the lane, whose connection has a socket of
/// its own: both connections migrate, and the download completes byte-exact.
#[cfg(unix)]
#[tokio::test]
async fn a_lane_download_survives_the_client_moving_to_a_new_udp_address() {
    let (_target, relay, _token, client) = tunnel(&[]).await;
    let host = client.host();
    let size = 128u64 << 20;
    let mut big = Download::start(&relay, &host, size).await;
    big.read_until_moved(&relay, &host).await;
    assert!(client.proc.signal("USR1"), "SIGUSR1 to the client");
    let rebound = Instant::now() + STEP;
    loop {
        let log = client.proc.stderr();
        if log.contains("rebound the QUIC endpoint")
            && log.contains("rebound the bulk lane's QUIC endpoint")
        {
            break;
        }
        assert!(
            Instant::now() < rebound,
            "the client did not rebind both endpoints; stderr:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(big.off < size, "the download was still in flight");
    assert_eq!(big.finish().await, size, "the whole download arrived");
    let mut conn = connect(relay.http).await.unwrap();
    let a = send(&mut conn, &host, "POST", "/after", &[], Bytes::from("x"))
        .await
        .unwrap();
    assert_eq!(a.status, 200);
}

//! The bulk lane (docs/streaming.md): a response body of 1 MiB or more travels on a
//! second QUIC connection of the session, driven on both sides by a thread in the idle
//! scheduling class, so a big download leaves CPU time to small exchanges.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use porthole_tests::*;

const STEP: Duration = Duration::from_secs(30);

/// Downloads `size` pattern bytes through the tunnel and checks every byte.
async fn download(relay: &Relay, host: &str, size: u64) -> anyhow::Result<u64> {
    let mut conn = connect(relay.http).await?;
    let req = http::Request::builder()
        .uri(format!("/download?bytes={size}"))
        .header("host", host)
        .body(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        )?;
    conn.ready().await?;
    let resp = tokio::time::timeout(STEP, conn.send_request(req)).await??;
    anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
    let mut body = resp.into_body();
    let mut off = 0u64;
    while let Some(frame) = tokio::time::timeout(STEP, body.frame()).await? {
        if let Ok(d) = frame?.into_data() {
            for (i, b) in d.iter().enumerate() {
                let at = off + i as u64;
                anyhow::ensure!(*b == pattern(at), "byte {at} differs");
            }
            off += d.len() as u64;
        }
    }
    Ok(off)
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

#[tokio::test]
async fn large_downloads_take_the_bulk_lane_and_small_exchanges_do_not() {
    let target = Target::start().await.unwrap();
    let relay = Relay::start(&[]).await.unwrap();
    let token = relay.token("dev").unwrap();
    let client = Client::start(&relay, &target.addr.to_string(), &token, &[])
        .await
        .unwrap();
    let host = client.host();

    // Below the threshold: no lane, none opened.
    assert_eq!(download(&relay, &host, 256 << 10).await.unwrap(), 256 << 10);
    assert_eq!(lane_bodies(&relay).await, 0.0);
    assert!(!relay.proc.stderr().contains("bulk lane open"));

    // A 16 MiB download, with small POSTs answered while it runs.
    let size = 16u64 << 20;
    let big = {
        let host = host.clone();
        let relay_http = relay.http;
        tokio::spawn(async move {
            let mut conn = connect(relay_http).await.unwrap();
            let req = http::Request::builder()
                .uri(format!("/download?bytes={size}"))
                .header("host", &host)
                .body(
                    http_body_util::Empty::new()
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                )
                .unwrap();
            conn.ready().await.unwrap();
            let resp = conn.send_request(req).await.unwrap();
            let mut body = resp.into_body();
            let mut off = 0u64;
            while let Some(frame) = tokio::time::timeout(STEP, body.frame()).await.unwrap() {
                if let Ok(d) = frame.unwrap().into_data() {
                    assert!(d
                        .iter()
                        .enumerate()
                        .all(|(i, b)| *b == pattern(off + i as u64)));
                    off += d.len() as u64;
                    // A slow reader, so the small exchanges overlap the transfer.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            off
        })
    };
    let mut conn = connect(relay.http).await.unwrap();
    for i in 0..20 {
        let body = Bytes::from(format!("small {i}"));
        let a = send(&mut conn, &host, "POST", "/small", &[], body.clone())
            .await
            .unwrap();
        assert_eq!((a.status, a.body), (200, body));
    }
    assert_eq!(big.await.unwrap(), size, "the whole download arrived");
    assert_eq!(lane_bodies(&relay).await, 1.0);
    // The lane is part of the session, not a session of its own.
    let m = relay.metrics().await.unwrap();
    assert_eq!(metric(&m, "porthole_sessions"), 1.0);

    // Both processes carried it on a thread in the idle scheduling class.
    assert_eq!(bulk_thread_policies(client.proc.pid()), vec!["5"]);
    assert_eq!(bulk_thread_policies(relay.proc.pid()), vec!["5"]);

    // The next large body reuses the lane.
    assert_eq!(download(&relay, &host, 2 << 20).await.unwrap(), 2 << 20);
    assert_eq!(lane_bodies(&relay).await, 2.0);
    assert_eq!(relay.proc.stderr().matches("bulk lane open").count(), 1);
}

#[tokio::test]
async fn with_the_bulk_lane_off_large_downloads_stay_on_their_data_streams() {
    let target = Target::start().await.unwrap();
    let relay = Relay::start(&[]).await.unwrap();
    let token = relay.token("dev").unwrap();
    let env = [("PORTHOLE_BULK_LANE", "off")];
    let client = Client::start_with_env(&relay, &target.addr.to_string(), &token, &[], &env)
        .await
        .unwrap();
    let size = 8u64 << 20;
    assert_eq!(download(&relay, &client.host(), size).await.unwrap(), size);
    assert_eq!(lane_bodies(&relay).await, 0.0);
    assert!(bulk_thread_policies(client.proc.pid()).is_empty());
}

/// A client killed in the middle of a download on the lane: the visitor's body ends
/// in an error within a few seconds (never a hang), and the relay serves a new
/// client under the same token at once.
#[tokio::test]
async fn a_client_killed_during_a_lane_download_cuts_the_body_promptly() {
    let target = Target::start().await.unwrap();
    let relay = Relay::start(&[]).await.unwrap();
    let token = relay.token("dev").unwrap();
    let mut client = Client::start(&relay, &target.addr.to_string(), &token, &[])
        .await
        .unwrap();
    let mut conn = connect(relay.http).await.unwrap();
    let req = http::Request::builder()
        .uri(format!("/download?bytes={}", 1u64 << 30))
        .header("host", client.host())
        .body(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap();
    conn.ready().await.unwrap();
    let resp = conn.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut off = 0u64;
    while off < 4 << 20 {
        let frame = tokio::time::timeout(STEP, body.frame())
            .await
            .unwrap()
            .unwrap();
        off += frame.unwrap().into_data().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(lane_bodies(&relay).await, 1.0);
    client.proc.kill().await;
    let killed = Instant::now();
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), body.frame()).await {
            Err(_) => panic!("the body hung after the client was killed"),
            Ok(None) => break "end",
            Ok(Some(Err(_))) => break "error",
            Ok(Some(Ok(f))) => off += f.into_data().map_or(0, |d| d.len() as u64),
        }
    };
    assert_eq!(ended, "error", "a cut body must not look complete");
    assert!(off < 1 << 30);
    assert!(
        killed.elapsed() < Duration::from_secs(8),
        "took {:?}",
        killed.elapsed()
    );
    let again = Client::start(&relay, &target.addr.to_string(), &token, &[])
        .await
        .unwrap();
    let size = 2u64 << 20;
    assert_eq!(download(&relay, &again.host(), size).await.unwrap(), size);
}

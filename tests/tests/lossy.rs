//! Webhooks across a lossy link. The client runs in a network namespace the test makes
//! itself, joined to the host by a veth pair whose namespace end drops 5% of the UDP
//! packets each way (nftables), so QUIC must repair losses in every direction: the
//! handshake, requests, responses and bulk bodies. The relay and the recording target
//! stay on the host (the target on the veth's host address, so only QUIC sees loss).
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables); `scripts/test.sh` installs both.
//! `PORTHOLE_SKIP_NETNS=1` skips the test where network namespaces are not allowed.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use porthole_tests::*;

const STEP: Duration = Duration::from_secs(60);

/// A network namespace with a veth pair to the host, dropping `loss_percent` of the UDP
/// packets that cross it either way. Removed (namespace and both interfaces) on drop.
struct LossyNetns {
    name: String,
    host_if: String,
    /// The host's address on the pair; the namespace has the next one.
    host_addr: String,
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program).args(args).output().map_err(|e| {
        anyhow::anyhow!("running {program}: {e} (the lossy-link test needs iproute2 and nftables)")
    })?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {}: {} (the lossy-link test needs root; PORTHOLE_SKIP_NETNS=1 skips it)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl LossyNetns {
    fn create(loss_percent: u32) -> anyhow::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = std::process::id() % 100_000;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let net = format!("10.{}.{}", 100 + id % 100, (id / 100 + n * 7) % 250);
        let ns = Self {
            name: format!("porthole-test-{id}-{n}"),
            host_if: format!("pht{id}{n}a"),
            host_addr: format!("{net}.1"),
        };
        let peer_if = format!("pht{id}{n}b");
        let peer_addr = format!("{net}.2");
        let host_net = format!("{}/30", ns.host_addr);
        let peer_net = format!("{peer_addr}/30");
        run("ip", &["netns", "add", &ns.name])?;
        run(
            "ip",
            &[
                "link",
                "add",
                &ns.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &peer_if,
            ],
        )?;
        run("ip", &["link", "set", &peer_if, "netns", &ns.name])?;
        run("ip", &["addr", "add", &host_net, "dev", &ns.host_if])?;
        run("ip", &["link", "set", &ns.host_if, "up"])?;
        let inside = |args: &[&str]| -> anyhow::Result<()> {
            let mut all = vec!["netns", "exec", &ns.name];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        inside(&["ip", "addr", "add", &peer_net, "dev", &peer_if])?;
        inside(&["ip", "link", "set", &peer_if, "up"])?;
        inside(&["ip", "link", "set", "lo", "up"])?;
        let rules = format!(
            "table inet lossy {{\n\
             chain in {{ type filter hook input priority 0; iifname \"{peer_if}\" meta l4proto udp numgen random mod 100 < {loss_percent} counter drop; }}\n\
             chain out {{ type filter hook output priority 0; oifname \"{peer_if}\" meta l4proto udp numgen random mod 100 < {loss_percent} counter drop; }}\n\
             }}\n"
        );
        let rules_file = tempfile::NamedTempFile::new()?;
        std::fs::write(rules_file.path(), rules)?;
        inside(&["nft", "-f", &rules_file.path().display().to_string()])?;
        Ok(ns)
    }

    /// UDP packets dropped so far, both ways (the rules' counters).
    fn dropped(&self) -> anyhow::Result<u64> {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.name, "nft", "list", "table", "inet", "lossy",
            ])
            .output()?;
        anyhow::ensure!(out.status.success(), "nft list failed");
        let text = String::from_utf8_lossy(&out.stdout);
        let words: Vec<&str> = text.split_whitespace().collect();
        Ok(words
            .windows(2)
            .filter(|w| w[0] == "packets")
            .filter_map(|w| w[1].parse::<u64>().ok())
            .sum())
    }

    /// `ip netns exec NAME program args…`, as arguments for `ip`.
    fn exec_args(&self, program: &Path, args: &[String]) -> Vec<String> {
        let mut all = vec![
            "netns".to_owned(),
            "exec".to_owned(),
            self.name.clone(),
            program.display().to_string(),
        ];
        all.extend_from_slice(args);
        all
    }
}

impl Drop for LossyNetns {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// The body of webhook `i`: sizes from empty to 64 KiB, bytes that differ per webhook.
fn webhook_body(i: usize) -> Bytes {
    let len = [0, 120, 4096, 65_536][i % 4];
    (0..len)
        .map(|j| ((i * 31 + j) % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test]
async fn webhooks_cross_a_lossy_link_intact_and_once() {
    if std::env::var_os("PORTHOLE_SKIP_NETNS").is_some_and(|v| v == "1") {
        eprintln!("PORTHOLE_SKIP_NETNS=1: skipping the lossy-link test");
        return;
    }
    let ns = LossyNetns::create(5).expect("setting up the lossy network namespace");
    let target = Target::start_on(&format!("{}:0", ns.host_addr))
        .await
        .unwrap();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let relay = Relay::start_in(dir, "127.0.0.1:0", &format!("{}:0", ns.host_addr), &[])
        .await
        .unwrap();
    let token = relay.token("dev").unwrap();
    let args = Client::args(&relay, &format!("http://{}", target.addr), &[]);
    let mut client = Proc::spawn(
        Path::new("ip"),
        &ns.exec_args(&bin("porthole"), &args),
        &[("PORTHOLE_TOKEN", token.as_str())],
    )
    .unwrap();
    let ready = client
        .event("ready", STEP)
        .await
        .unwrap_or_else(|e| panic!("client over the lossy link: {e:#}\n{}", client.stderr()));
    let host = format!("{}.localhost", ready["name"].as_str().unwrap());

    // 160 webhooks, 8 keep-alive visitors at a time: every one answered with its own
    // body, and the target sees each exactly once (loss must not duplicate a webhook).
    const WEBHOOKS: usize = 160;
    const VISITORS: usize = 8;
    let http: SocketAddr = relay.http;
    let mut tasks = tokio::task::JoinSet::new();
    for v in 0..VISITORS {
        let host = host.clone();
        tasks.spawn(async move {
            let mut conn = connect(http).await?;
            for i in (v..WEBHOOKS).step_by(VISITORS) {
                let body = webhook_body(i);
                let path = format!("/hooks/{i}");
                let answer = tokio::time::timeout(
                    STEP,
                    send(&mut conn, &host, "POST", &path, &[], body.clone()),
                )
                .await
                .map_err(|_| anyhow::anyhow!("webhook {i}: no answer within {STEP:?}"))??;
                anyhow::ensure!(
                    answer.status == 200,
                    "webhook {i}: status {}",
                    answer.status
                );
                anyhow::ensure!(answer.body == body, "webhook {i}: body changed on the way");
                anyhow::ensure!(
                    answer.header("x-echo-uri").as_deref() == Some(path.as_str()),
                    "webhook {i}: answered for {:?}",
                    answer.header("x-echo-uri")
                );
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap()
            .unwrap_or_else(|e| panic!("{e:#}\nclient stderr:\n{}", client.stderr()));
    }
    let mut seen: Vec<String> = target
        .seen()
        .into_iter()
        .filter(|r| r.uri.starts_with("/hooks/"))
        .map(|r| r.uri)
        .collect();
    seen.sort();
    let mut expected: Vec<String> = (0..WEBHOOKS).map(|i| format!("/hooks/{i}")).collect();
    expected.sort();
    assert_eq!(
        seen, expected,
        "each webhook reaches the target exactly once"
    );

    // Bulk both ways: losses repaired mid-stream, bytes exact.
    const BULK: u64 = 4 << 20;
    let down = tokio::time::timeout(
        STEP,
        request(
            http,
            &host,
            "GET",
            &format!("/download?bytes={BULK}"),
            &[],
            Bytes::new(),
        ),
    )
    .await
    .expect("4 MiB download within a minute")
    .unwrap();
    assert_eq!(down.status, 200);
    assert_eq!(down.body.len() as u64, BULK);
    assert!(
        down.body
            .iter()
            .enumerate()
            .all(|(i, b)| *b == pattern(i as u64)),
        "download bytes differ"
    );
    let up = tokio::time::timeout(STEP, send_streamed(http, &host, "/sink", BULK))
        .await
        .expect("4 MiB upload within a minute")
        .unwrap();
    assert_eq!(up.status, 200);
    assert_eq!(
        up.body,
        Bytes::from(BULK.to_string()),
        "target counted the upload"
    );

    // The link really was lossy: QUIC repaired every one of these.
    let dropped = ns.dropped().unwrap();
    assert!(
        dropped > 0,
        "no packet was dropped: the loss rules did not apply"
    );
    eprintln!("lossy link: {dropped} UDP packets dropped and repaired");

    client.interrupt();
    assert_eq!(
        client.wait_exit(STEP).await.unwrap(),
        0,
        "clean exit after Ctrl-C"
    );
}

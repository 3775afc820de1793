//! The inspector end to end: webhooks sent through a real tunnel are captured by the
//! real daemon, served by its API and web UI (in headless Chromium), replayed to the
//! target, listed and replayed from the CLI, and kept across a daemon restart.

#[path = "../../tunnel-client/tests/support/webdriver.rs"]
#[allow(dead_code)]
mod webdriver;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use porthole_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

struct Setup {
    relay: Relay,
    target: Target,
    client: Client,
    token: String,
    inspect: String,
    data: tempfile::TempDir,
}

async fn setup(inspect: &str) -> Setup {
    let relay = Relay::start(&[]).await.unwrap();
    let target = Target::start().await.unwrap();
    let token = relay.token("dev").unwrap();
    let data = tempfile::tempdir().unwrap();
    let client = Client::start_with_env(
        &relay,
        &target.addr.to_string(),
        &token,
        &["--inspect", inspect, "--name", "hooks"],
        &[("PORTHOLE_DATA_DIR", data.path().to_str().unwrap())],
    )
    .await
    .unwrap();
    let inspect = client.ready["inspect"].as_str().unwrap().to_owned();
    Setup {
        relay,
        target,
        client,
        token,
        inspect,
        data,
    }
}

/// GET on the inspector API, parsed as JSON.
async fn api(inspect: &str, path: &str) -> Value {
    let addr = inspect.trim_start_matches("http://").parse().unwrap();
    let a = request(addr, "127.0.0.1", "GET", path, &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{path}: {:?}", a.body);
    serde_json::from_slice(&a.body).unwrap()
}

/// Polls the list until it holds `n` exchanges (capture is asynchronous).
async fn wait_for_list(inspect: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let list = api(inspect, "/api/requests").await;
        let items = list.as_array().unwrap().clone();
        if items.len() >= n {
            return items;
        }
        assert!(
            Instant::now() < deadline,
            "only {} exchanges: {list}",
            items.len()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn captures_exchanges_byte_exact_and_replays_them_through_the_cli() {
    let s = setup("127.0.0.1:0").await;
    let binary: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let a = request(
        s.relay.http,
        "hooks.localhost",
        "POST",
        "/bin?x=1",
        &[("content-type", b"application/octet-stream")],
        Bytes::from(binary.clone()),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);

    let items = wait_for_list(&s.inspect, 1).await;
    let first = &items[0];
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/bin?x=1");
    assert_eq!(first["status"], 200);
    assert_eq!(first["tunnel"], "hooks");
    let id = first["id"].as_u64().unwrap();

    let detail = api(&s.inspect, &format!("/api/requests/{id}")).await;
    let body = base64::engine::general_purpose::STANDARD
        .decode(detail["request"]["body_base64"].as_str().unwrap())
        .unwrap();
    assert!(body == binary, "captured body differs");
    let addr = s.inspect.trim_start_matches("http://").parse().unwrap();
    let raw = request(
        addr,
        "127.0.0.1",
        "GET",
        &format!("/api/requests/{id}/body?part=request"),
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert!(raw.body == binary, "raw body endpoint differs");

    // `porthole requests --json` and `porthole replay ID` against the running daemon.
    let inspect_addr = s.inspect.trim_start_matches("http://").to_owned();
    // tokio's Command: the target runs on this test's runtime and must keep serving.
    let out = tokio::process::Command::new(bin("porthole"))
        .args(["requests", "--json", "--inspect", &inspect_addr])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["id"].as_u64(), Some(id));

    let out = tokio::process::Command::new(bin("porthole"))
        .args([
            "replay",
            &id.to_string(),
            "--inspect",
            &inspect_addr,
            "-H",
            "X-Edited: yes",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_id: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(new_id > id);
    let seen = s.target.seen();
    assert_eq!(seen.len(), 2);
    let replayed = &seen[1];
    assert_eq!(replayed.uri, "/bin?x=1");
    assert!(replayed.body == binary, "replayed body differs");
    assert_eq!(replayed.header("porthole-replay"), Some(id.to_string()));
    assert_eq!(replayed.header("x-edited").as_deref(), Some("yes"));
    let detail = api(&s.inspect, &format!("/api/requests/{new_id}")).await;
    assert_eq!(detail["replay_of"].as_u64(), Some(id));
    let _ = (&s.token, &s.data);
}

#[tokio::test]
async fn history_survives_a_daemon_restart() {
    let mut s = setup("127.0.0.1:0").await;
    for i in 0..3 {
        request(
            s.relay.http,
            "hooks.localhost",
            "POST",
            &format!("/n/{i}"),
            &[],
            Bytes::from_static(b"{}"),
        )
        .await
        .unwrap();
    }
    wait_for_list(&s.inspect, 3).await;
    let port = s.inspect.rsplit(':').next().unwrap().to_owned();
    s.client.proc.interrupt();
    assert_eq!(s.client.proc.wait_exit(WAIT).await.unwrap(), 0);

    // Same data dir and inspector port: the same history, and new ids keep counting.
    let again = Client::start_with_env(
        &s.relay,
        &s.target.addr.to_string(),
        &s.token,
        &["--inspect", &format!("127.0.0.1:{port}"), "--name", "hooks"],
        &[("PORTHOLE_DATA_DIR", s.data.path().to_str().unwrap())],
    )
    .await
    .unwrap();
    let inspect = again.ready["inspect"].as_str().unwrap().to_owned();
    let items = wait_for_list(&inspect, 3).await;
    assert_eq!(items[0]["path"], "/n/2");
    request(
        s.relay.http,
        "hooks.localhost",
        "GET",
        "/after",
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    let items = wait_for_list(&inspect, 4).await;
    assert_eq!(items[0]["path"], "/after");
    assert!(items[0]["id"].as_u64() > items[1]["id"].as_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_through_the_tunnel_appears_live_in_the_browser_and_replays() {
    if std::env::var_os("PORTHOLE_SKIP_BROWSER").is_some_and(|v| v == "1") {
        eprintln!("PORTHOLE_SKIP_BROWSER=1: skipping the browser test");
        return;
    }
    let (chrome, chromedriver) = webdriver::find_browser().unwrap_or_else(|m| panic!("{m}"));
    let s = setup("127.0.0.1:0").await;
    let profile = tempfile::tempdir().unwrap();
    let driver = webdriver::Driver::start(&chromedriver).await.unwrap();
    let session = driver.session(&chrome, profile.path()).await.unwrap();
    session.goto(&format!("{}/", s.inspect)).await.unwrap();
    session
        .wait_until(
            "the live event stream",
            "return document.querySelector('#live').classList.contains('on')",
            WAIT,
        )
        .await
        .unwrap();

    // A Stripe-like webhook through the public URL, after the page loaded.
    let payload = br#"{"id":"evt_3PqL","type":"payment_intent.succeeded","data":{"object":{"amount":2599,"currency":"usd"}},"livemode":false}"#;
    let a = request(
        s.relay.http,
        "hooks.localhost",
        "POST",
        "/stripe/webhook",
        &[
            ("content-type", b"application/json"),
            (
                "stripe-signature",
                b"t=1700000000,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd",
            ),
            (
                "user-agent",
                b"Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            ),
        ],
        Bytes::from_static(payload),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);

    let row = session
        .wait_for("#list .row[data-id=\"1\"]", WAIT)
        .await
        .unwrap();
    assert!(session
        .text(&row)
        .await
        .unwrap()
        .contains("/stripe/webhook"));
    session.click(&row).await.unwrap();
    let pretty = session
        .wait_for("#req-body pre.pretty.json", WAIT)
        .await
        .unwrap();
    let text = session.text(&pretty).await.unwrap();
    assert!(
        text.contains("\"type\": \"payment_intent.succeeded\""),
        "{text}"
    );
    assert!(
        text.contains("\n  \"data\": {"),
        "not pretty-printed: {text}"
    );

    let replay = session.find("#btn-replay").await.unwrap().unwrap();
    session.click(&replay).await.unwrap();
    session
        .wait_for("#list .row[data-id=\"2\"]", WAIT)
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while s.target.seen().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the replay never reached the target"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let replayed = s.target.last().unwrap();
    assert_eq!(replayed.header("porthole-replay").as_deref(), Some("1"));
    assert_eq!(&replayed.body[..], payload);

    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("artifacts/inspector-tunnel.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    session
        .execute(
            "document.querySelector('#toast').hidden = true; return true;",
            serde_json::json!([]),
        )
        .await
        .unwrap();
    session.screenshot(&shot).await.unwrap();
    session.close().await.unwrap();
}

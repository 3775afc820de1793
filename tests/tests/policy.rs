//! Edge policy end to end: each rule enforced by the relay before a request crosses
//! the tunnel (the recording target never sees a refused request), refusals counted
//! in /metrics and shown by the client as `refused_at_edge` exchanges; and several
//! tunnels opened from one porthole.toml with `porthole start`.

use std::time::Duration;

use bytes::Bytes;
use porthole_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(10);

/// `Basic base64(ops:pw)` and `Basic base64(ops:nope)`.
const GOOD_AUTH: &[u8] = b"Basic b3BzOnB3";
const BAD_AUTH: &[u8] = b"Basic b3BzOm5vcGU=";

#[tokio::test]
async fn each_policy_is_enforced_at_the_relay_and_refusals_reach_the_client() {
    let relay = Relay::start(&[]).await.unwrap();
    let target = Target::start().await.unwrap();
    let token = relay.token("dev").unwrap();
    let mut client = Client::start(
        &relay,
        &target.addr.to_string(),
        &token,
        &[
            "--basic-auth",
            "ops:pw",
            "--max-body-bytes",
            "100",
            "--request-header-add",
            "X-Env: dev",
            "--request-header-remove",
            "x-drop",
            "--response-header-add",
            "X-Frame-Options: DENY",
            "--response-header-remove",
            "x-target-only",
            "--rewrite-host",
        ],
    )
    .await
    .unwrap();
    let host = client.host();

    // No credentials, then wrong ones: 401 with a challenge.
    let a = request(relay.http, &host, "POST", "/a", &[], Bytes::from("x"))
        .await
        .unwrap();
    assert_eq!(a.status, 401);
    assert!(a
        .header("www-authenticate")
        .is_some_and(|v| v.starts_with("Basic")));
    assert_eq!(
        a.header("x-porthole-error").as_deref(),
        Some("auth-required")
    );
    let b = request(
        relay.http,
        &host,
        "POST",
        "/b",
        &[("authorization", BAD_AUTH)],
        Bytes::from("x"),
    )
    .await
    .unwrap();
    assert_eq!(b.status, 401);

    // Authenticated but over the body limit: 413.
    let c = request(
        relay.http,
        &host,
        "POST",
        "/c",
        &[("authorization", GOOD_AUTH)],
        Bytes::from(vec![b'x'; 101]),
    )
    .await
    .unwrap();
    assert_eq!(c.status, 413);
    assert!(String::from_utf8_lossy(&c.body).contains("100"));
    assert!(
        target.seen().is_empty(),
        "the target saw a refused request: {:?}",
        target.seen()
    );

    // Allowed: header edits both ways, credentials stripped, Host rewritten.
    let d = request(
        relay.http,
        &host,
        "POST",
        "/d",
        &[("authorization", GOOD_AUTH), ("x-drop", b"1")],
        Bytes::from(vec![b'y'; 100]),
    )
    .await
    .unwrap();
    assert_eq!(d.status, 200);
    assert_eq!(d.header("x-frame-options").as_deref(), Some("DENY"));
    assert_eq!(d.header("x-target-only"), None);
    let seen = target.seen();
    assert_eq!(seen.len(), 1);
    let seen = &seen[0];
    assert_eq!(seen.uri, "/d");
    assert_eq!(seen.header("x-env").as_deref(), Some("dev"));
    assert_eq!(seen.header("x-drop"), None);
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("host"), Some(target.addr.to_string()));
    // The public host is still there for signature checks and logs.
    assert_eq!(seen.header("x-forwarded-host"), Some(host.clone()));

    // The client shows each refusal as an exchange that never crossed the tunnel.
    let mut refused = Vec::new();
    for _ in 0..4 {
        let ev = client.proc.event("request", T).await.unwrap();
        if ev["outcome"] == "refused_at_edge" {
            refused.push(ev);
        }
    }
    let summary: Vec<(String, u64)> = refused
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap_or_default().to_owned(),
                e["status"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![("/a".into(), 401), ("/b".into(), 401), ("/c".into(), 413)]
    );
    assert!(refused[2]["error"]
        .as_str()
        .is_some_and(|e| e.contains("limit")));

    let metrics = relay.metrics().await.unwrap();
    assert!(
        metrics.contains("porthole_edge_refusals_total{reason=\"auth-required\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("porthole_edge_refusals_total{reason=\"body-too-large\"} 1"),
        "{metrics}"
    );
    // The password never reaches the relay's log.
    assert!(!relay.proc.stderr().contains("ops:pw"));
}

#[tokio::test]
async fn ip_allow_and_deny_lists_answer_403() {
    let relay = Relay::start(&[]).await.unwrap();
    let target = Target::start().await.unwrap();
    let token = relay.token("dev").unwrap();
    // Loopback visitors are outside the allow list…
    let mut allow = Client::start(
        &relay,
        &target.addr.to_string(),
        &token,
        &["--allow-ip", "192.0.2.0/24,198.51.100.0/24"],
    )
    .await
    .unwrap();
    // …and inside the deny list (deny wins over allow).
    let deny = Client::start(
        &relay,
        &target.addr.to_string(),
        &token,
        &["--allow-ip", "127.0.0.0/8", "--deny-ip", "127.0.0.1/32"],
    )
    .await
    .unwrap();
    for host in [allow.host(), deny.host()] {
        let r = request(relay.http, &host, "GET", "/x", &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status, 403, "{host}");
        assert_eq!(r.header("x-porthole-error").as_deref(), Some("ip-denied"));
        assert!(String::from_utf8_lossy(&r.body).contains("127.0.0.1"));
    }
    assert!(target.seen().is_empty());
    let ev = allow.proc.event("request", T).await.unwrap();
    assert_eq!(ev["outcome"], "refused_at_edge");
    assert_eq!(ev["status"], 403);

    // A client that allows loopback gets through.
    let open = Client::start(
        &relay,
        &target.addr.to_string(),
        &token,
        &["--allow-ip", "127.0.0.0/8"],
    )
    .await
    .unwrap();
    let r = request(relay.http, &open.host(), "GET", "/ok", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(target.seen().len(), 1);
}

#[tokio::test]
async fn refusals_are_visible_in_the_inspector() {
    let relay = Relay::start(&[]).await.unwrap();
    let target = Target::start().await.unwrap();
    let token = relay.token("dev").unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut proc = Proc::spawn(
        &bin("porthole"),
        &[
            "http".into(),
            target.addr.to_string(),
            "--relay".into(),
            relay.tunnel.to_string(),
            "--relay-pin".into(),
            relay.pin.clone(),
            "--inspect".into(),
            "127.0.0.1:0".into(),
            "--json".into(),
            "--basic-auth".into(),
            "ops:pw".into(),
        ],
        &[
            ("PORTHOLE_TOKEN", token.as_str()),
            ("PORTHOLE_DATA_DIR", &data.path().display().to_string()),
        ],
    )
    .unwrap();
    let ready = proc.event("ready", READY_TIMEOUT).await.unwrap();
    let host = format!("{}.localhost", ready["name"].as_str().unwrap());
    let inspect: std::net::SocketAddr = ready["inspect"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let r = request(relay.http, &host, "POST", "/hook?q=1", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    let ev = proc.event("request", T).await.unwrap();
    let id = ev["id"].as_u64().unwrap();
    // The inspector stores exchanges on its own thread: poll until this one is in.
    let deadline = std::time::Instant::now() + T;
    let row = loop {
        let list = api(inspect, "/api/requests").await;
        if let Some(row) = list.as_array().unwrap().iter().find(|r| r["id"] == id) {
            break row.clone();
        }
        assert!(std::time::Instant::now() < deadline, "{list}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(row["outcome"], "refused_at_edge");
    assert_eq!(row["status"], 401);
    assert_eq!(row["path"], "/hook?q=1");
    assert!(row["visitor"].as_str().unwrap().starts_with("127.0.0.1:"));
    let detail = api(inspect, &format!("/api/requests/{id}")).await;
    assert_eq!(detail["response"]["status"], 401);
    assert!(target.seen().is_empty());
}

/// GETs an inspector API path and parses the JSON answer.
async fn api(addr: std::net::SocketAddr, path: &str) -> Value {
    let host = addr.to_string();
    let r = request(addr, &host, "GET", path, &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    serde_json::from_slice(&r.body).unwrap()
}

#[tokio::test]
async fn several_tunnels_from_one_config_file() {
    let relay = Relay::start(&[]).await.unwrap();
    let web = Target::start().await.unwrap();
    let hooks = Target::start().await.unwrap();
    let token = relay.token("dev").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("porthole.toml");
    std::fs::write(
        &path,
        format!(
            "relay = \"{relay}\"\nrelay_pin = \"{pin}\"\ntoken_env = \"CFG_TEST_TOKEN\"\n\
             inspect = \"off\"\n\n\
             [tunnels.web]\ntarget = \"{web}\"\nname = \"cfg-web\"\n\n\
             [tunnels.hooks]\ntarget = \"{hooks}\"\nname = \"cfg-hooks\"\n\
             [tunnels.hooks.policy]\nbasic_auth_env = [\"CFG_TEST_AUTH\"]\n\
             response_headers_add = {{ \"X-Tunnel\" = \"hooks\" }}\n",
            relay = relay.tunnel,
            pin = relay.pin,
            web = web.addr,
            hooks = hooks.addr,
        ),
    )
    .unwrap();
    let start = |names: &[&str]| {
        let mut args: Vec<String> = vec![
            "start".into(),
            "--config".into(),
            path.display().to_string(),
            "--json".into(),
        ];
        args.extend(names.iter().map(|s| s.to_string()));
        Proc::spawn(
            &bin("porthole"),
            &args,
            &[
                ("CFG_TEST_TOKEN", token.as_str()),
                ("CFG_TEST_AUTH", "ops:pw"),
            ],
        )
        .unwrap()
    };
    let mut all = start(&[]);
    let mut names = Vec::new();
    for _ in 0..2 {
        let ev = all.event("ready", READY_TIMEOUT).await.unwrap();
        names.push(ev["name"].as_str().unwrap().to_owned());
    }
    names.sort();
    assert_eq!(names, ["cfg-hooks", "cfg-web"]);

    let w = request(
        relay.http,
        "cfg-web.localhost",
        "GET",
        "/w",
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(w.status, 200);
    assert_eq!(web.last().unwrap().uri, "/w");
    let h = request(
        relay.http,
        "cfg-hooks.localhost",
        "GET",
        "/h",
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(h.status, 401, "the hooks tunnel's policy applies");
    let h = request(
        relay.http,
        "cfg-hooks.localhost",
        "GET",
        "/h",
        &[("authorization", GOOD_AUTH)],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(h.status, 200);
    assert_eq!(h.header("x-tunnel").as_deref(), Some("hooks"));
    assert_eq!(hooks.seen().len(), 1);
    assert_eq!(web.seen().len(), 1);
    all.interrupt();
    assert_eq!(all.wait_exit(T).await.unwrap(), 0);

    // Only the named tunnel, and flags override the file (an unknown name fails
    // clearly).
    let mut one = start(&["web"]);
    let ev = one.event("ready", READY_TIMEOUT).await.unwrap();
    assert_eq!(ev["name"], "cfg-web");
    one.interrupt();
    one.wait_exit(T).await.unwrap();
    let mut bad = start(&["nope"]);
    let ev = bad.event("error", T).await.unwrap();
    let msg = ev["message"].as_str().unwrap();
    assert!(
        msg.contains("porthole.toml") && msg.contains("\"nope\""),
        "{msg}"
    );
    assert_ne!(bad.wait_exit(T).await.unwrap(), 0);
}

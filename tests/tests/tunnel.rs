//! The tunnel end to end: relay and client processes, a recording target, real HTTP
//! over real loopback sockets, a real QUIC connection between them.

use std::time::{Duration, Instant};

use bytes::Bytes;
use porthole_tests::*;

async fn setup(relay_flags: &[&str]) -> (Relay, Target, Client, String) {
    let relay = Relay::start(relay_flags).await.unwrap();
    let target = Target::start().await.unwrap();
    let token = relay.token("dev").unwrap();
    let client = Client::start(&relay, &target.addr.to_string(), &token, &[])
        .await
        .unwrap();
    (relay, target, client, token)
}

#[tokio::test]
async fn get_and_post_round_trip_exact_headers_and_bodies() {
    let (relay, target, client, _) = setup(&[]).await;
    let url = client.ready["url"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with(&format!("http://{}.localhost:", client.name)),
        "{url}"
    );
    assert_eq!(client.ready["event"], "ready");

    let mut conn = connect(relay.http).await.unwrap();
    let host = client.host();

    // GET with a query and custom headers.
    let a = send(
        &mut conn,
        &host,
        "GET",
        "/hooks/a?x=1&y=%20z",
        &[("x-custom", b"Value With Spaces"), ("x-bytes", b"\x80\xff")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-echo-method").as_deref(), Some("GET"));
    assert_eq!(
        a.header("x-echo-uri").as_deref(),
        Some("/hooks/a?x=1&y=%20z")
    );
    assert_eq!(a.header("x-target-only").as_deref(), Some("1"));
    let seen = target.last().unwrap();
    assert_eq!(
        seen.header("x-custom").as_deref(),
        Some("Value With Spaces")
    );
    let raw = seen.headers.iter().find(|(n, _)| n == "x-bytes").unwrap();
    assert_eq!(raw.1, b"\x80\xff");
    assert_eq!(seen.header("host"), Some(host.clone()));

    // POST bodies: empty, non-UTF-8, 1 MiB, on one keep-alive connection.
    let non_utf8: Vec<u8> = (0..=255u8).rev().cycle().take(10_000).collect();
    let mib: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7 % 256) as u8).collect();
    for body in [Vec::new(), non_utf8, mib] {
        let a = send(
            &mut conn,
            &host,
            "POST",
            "/stripe",
            &[("content-type", b"application/octet-stream")],
            Bytes::from(body.clone()),
        )
        .await
        .unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.body.len(), body.len());
        assert!(a.body == body, "echoed body differs");
        let seen = target.last().unwrap();
        assert_eq!(seen.method, "POST");
        assert!(seen.body == body, "target received a different body");
    }
}

/// The duration a client reports for an exchange ends when the response's last byte
/// leaves for the relay, not when the relay acknowledges it (which QUIC may delay by
/// 25 ms): so it always fits within what the visitor saw from its side.
#[tokio::test]
async fn a_reported_duration_fits_within_what_the_visitor_saw() {
    let (relay, _target, mut client, _) = setup(&[]).await;
    let mut conn = connect(relay.http).await.unwrap();
    let host = client.host();
    for _ in 0..5 {
        let sent = Instant::now();
        let a = send(&mut conn, &host, "POST", "/hook", &[], Bytes::from("{}"))
            .await
            .unwrap();
        let seen_ms = sent.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(a.status, 200);
        let ev = client
            .proc
            .event("request", Duration::from_secs(10))
            .await
            .unwrap();
        let reported_ms = ev["duration_ms"].as_f64().unwrap();
        // The report is rounded to 0.1 ms.
        assert!(
            reported_ms <= seen_ms + 0.05,
            "the client reported {reported_ms} ms for an exchange the visitor saw take {seen_ms:.1} ms"
        );
    }
}

#[tokio::test]
async fn sixty_four_mib_streams_both_ways() {
    let (relay, target, client, _) = setup(&[]).await;
    let size = 64 * 1024 * 1024u64;
    let up = send_streamed(relay.http, &client.host(), "/sink", size)
        .await
        .unwrap();
    assert_eq!(up.status, 200);
    assert_eq!(std::str::from_utf8(&up.body).unwrap(), size.to_string());
    assert_eq!(target.last().unwrap().size, size);

    let down = request(
        relay.http,
        &client.host(),
        "GET",
        &format!("/download?bytes={size}"),
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(down.status, 200);
    assert_eq!(down.body.len() as u64, size);
    assert!(down
        .body
        .iter()
        .enumerate()
        .all(|(i, b)| *b == pattern(i as u64)));
}

#[tokio::test]
async fn two_hundred_concurrent_requests_are_all_correct() {
    two_hundred_concurrent(&[], &[]).await;
}

/// Both binaries run on one thread unless asked for more (`--threads`,
/// `PORTHOLE_THREADS`); the multi-threaded runtimes carry the same load.
#[tokio::test]
async fn multi_threaded_relay_and_client_carry_two_hundred_concurrent_requests() {
    two_hundred_concurrent(&["--threads", "2"], &[("PORTHOLE_THREADS", "2")]).await;
}

async fn two_hundred_concurrent(relay_flags: &[&str], client_env: &[(&str, &str)]) {
    let relay = Relay::start(relay_flags).await.unwrap();
    let target = Target::start().await.unwrap();
    let token = relay.token("dev").unwrap();
    let client = Client::start_with_env(&relay, &target.addr.to_string(), &token, &[], client_env)
        .await
        .unwrap();
    let host = client.host();
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let host = host.clone();
        let addr = relay.http;
        tasks.push(tokio::spawn(async move {
            let body = format!(
                "{{\"n\":{i},\"pad\":\"{}\"}}",
                "x".repeat((i * 37 % 5000) as usize)
            );
            let a = request(
                addr,
                &host,
                "POST",
                &format!("/c/{i}"),
                &[],
                Bytes::from(body.clone()),
            )
            .await
            .unwrap();
            assert_eq!(a.status, 200);
            assert_eq!(a.header("x-echo-uri"), Some(format!("/c/{i}")));
            assert_eq!(a.body, body.as_bytes());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(target.seen().len(), 200);
}

#[tokio::test]
async fn unknown_name_is_404_and_target_down_is_502() {
    let (relay, _target, _client, token) = setup(&[]).await;
    let a = request(
        relay.http,
        "nobody-here.localhost",
        "GET",
        "/",
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 404);
    let text = String::from_utf8_lossy(&a.body);
    assert!(
        text.contains("no tunnel is online at nobody-here.localhost"),
        "{text}"
    );

    // A tunnel whose target port has nothing listening.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let client = Client::start(&relay, &port.to_string(), &token, &[])
        .await
        .unwrap();
    let a = request(
        relay.http,
        &client.host(),
        "POST",
        "/x",
        &[],
        Bytes::from_static(b"{}"),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 502);
    let text = String::from_utf8_lossy(&a.body);
    assert!(text.contains("unreachable"), "{text}");
    assert!(
        text.contains(&format!("connection refused by localhost:{port}")),
        "names the cause and the address: {text}"
    );
    assert!(text.contains("is the app running"), "{text}");
}

#[tokio::test]
async fn slow_target_gets_504() {
    let (relay, _target, client, _) = setup(&["--target-timeout", "1s"]).await;
    let started = Instant::now();
    let a = request(
        relay.http,
        &client.host(),
        "GET",
        "/slow?ms=5000",
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 504);
    assert!(started.elapsed() < Duration::from_secs(4));
    // The tunnel still works afterwards.
    let a = request(
        relay.http,
        &client.host(),
        "GET",
        "/fine",
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn killed_client_mid_request_gives_502_within_5s() {
    let (relay, _target, mut client, _) = setup(&[]).await;
    let host = client.host();
    let addr = relay.http;
    let pending = tokio::spawn(async move {
        request(addr, &host, "GET", "/slow?ms=30000", &[], Bytes::new()).await
    });
    // Wait until the request is in flight at the target side of the tunnel.
    let deadline = Instant::now() + Duration::from_secs(10);
    while _target.seen().is_empty() {
        assert!(
            Instant::now() < deadline,
            "request never reached the target"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = Instant::now();
    client.proc.kill().await;
    let a = pending.await.unwrap().unwrap();
    let waited = killed_at.elapsed();
    assert_eq!(a.status, 502);
    assert!(waited < Duration::from_secs(5), "took {waited:?}");
}

#[tokio::test]
async fn wrong_token_is_refused_with_a_clear_error() {
    let relay = Relay::start(&[]).await.unwrap();
    let mut proc = Client::spawn(&relay, "3000", "ph_not-a-real-token", &[]).unwrap();
    let ev = proc.event("error", READY_TIMEOUT).await.unwrap();
    let msg = ev["message"].as_str().unwrap();
    assert!(msg.contains("refused the token"), "{msg}");
    assert!(!msg.contains("ph_not-a-real-token"), "never echo the token");
    assert_ne!(proc.wait_exit(Duration::from_secs(10)).await.unwrap(), 0);
    assert!(
        !relay.proc.stderr().contains("ph_not-a-real-token"),
        "relay never logs tokens"
    );
}

#[tokio::test]
async fn wrong_pin_is_refused_before_the_token_is_sent() {
    let relay = Relay::start(&[]).await.unwrap();
    let token = relay.token("dev").unwrap();
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let mut proc = Proc::spawn(
        &bin("porthole"),
        &[
            "http".into(),
            "3000".into(),
            "--relay".into(),
            relay.tunnel.to_string(),
            "--relay-pin".into(),
            wrong,
            "--inspect".into(),
            "off".into(),
            "--json".into(),
        ],
        &[("PORTHOLE_TOKEN", &token)],
    )
    .unwrap();
    let ev = proc.event("error", READY_TIMEOUT).await.unwrap();
    let msg = ev["message"].as_str().unwrap();
    assert!(msg.contains("pin"), "{msg}");
    assert_ne!(proc.wait_exit(Duration::from_secs(10)).await.unwrap(), 0);
    // The relay never saw a hello: no session, no auth attempt.
    let m = relay.metrics().await.unwrap();
    assert!(m.contains("porthole_sessions_total 0"), "{m}");
    assert!(m.contains("porthole_auth_failures_total 0"), "{m}");
}

#[tokio::test]
async fn reserved_names_stay_with_their_token() {
    let relay = Relay::start(&[]).await.unwrap();
    let target = Target::start().await.unwrap();
    let alice = relay.token("alice").unwrap();
    let mallory = relay.token("mallory").unwrap();
    let t = target.addr.to_string();
    let mut first = Client::start(&relay, &t, &alice, &["--name", "pay-hooks"])
        .await
        .unwrap();
    assert_eq!(first.name, "pay-hooks");

    // Another token cannot take it, neither while it is online…
    let mut thief = Client::spawn(&relay, &t, &mallory, &["--name", "pay-hooks"]).unwrap();
    let ev = thief.event("error", READY_TIMEOUT).await.unwrap();
    assert!(
        ev["message"]
            .as_str()
            .unwrap()
            .contains("reserved by another token"),
        "{ev}"
    );
    assert_ne!(thief.wait_exit(Duration::from_secs(10)).await.unwrap(), 0);

    // …nor after alice leaves: the reservation is persistent.
    first.proc.interrupt();
    first.proc.wait_exit(Duration::from_secs(15)).await.unwrap();
    let mut thief = Client::spawn(&relay, &t, &mallory, &["--name", "Pay-Hooks"]).unwrap();
    let ev = thief.event("error", READY_TIMEOUT).await.unwrap();
    assert!(ev["message"].as_str().unwrap().contains("reserved"), "{ev}");
    let out = relay.cli(&["token", "list"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("alice\t"));
}

#[tokio::test]
async fn same_token_reconnect_takes_the_name_back_at_once() {
    let relay = Relay::start(&[]).await.unwrap();
    let target = Target::start().await.unwrap();
    let token = relay.token("laptop").unwrap();
    let t = target.addr.to_string();
    let mut old = Client::start(&relay, &t, &token, &["--name", "sleepy"])
        .await
        .unwrap();
    // The laptop "sleeps": the process vanishes without closing its session, so the
    // relay still believes the old connection is alive.
    old.proc.kill().await;
    let started = Instant::now();
    let new = Client::start(&relay, &t, &token, &["--name", "sleepy"])
        .await
        .unwrap();
    assert_eq!(new.name, "sleepy");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "waited for the old session to time out"
    );
    let a = request(
        relay.http,
        "sleepy.localhost",
        "GET",
        "/after-sleep",
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn relay_restart_then_client_reconnects_to_the_same_url() {
    let (mut relay, _target, mut client, _) = setup(&[]).await;
    let url = client.ready["url"].as_str().unwrap().to_owned();
    let host = client.host();
    assert_eq!(
        request(relay.http, &host, "GET", "/before", &[], Bytes::new())
            .await
            .unwrap()
            .status,
        200
    );
    relay.restart(&[]).await.unwrap();
    let ev = client
        .proc
        .event("reconnected", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(ev["url"].as_str().unwrap(), url);
    let a = request(relay.http, &host, "GET", "/after", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn revoking_a_token_closes_its_session() {
    let (relay, _target, mut client, _) = setup(&[]).await;
    let out = relay.cli(&["token", "revoke", "dev"]).unwrap();
    assert!(out.status.success());
    let ev = client
        .proc
        .event("error", Duration::from_secs(15))
        .await
        .unwrap();
    assert!(ev["message"].as_str().unwrap().contains("revoked"), "{ev}");
    assert_ne!(
        client
            .proc
            .wait_exit(Duration::from_secs(15))
            .await
            .unwrap(),
        0
    );
    let a = request(relay.http, &client.host(), "GET", "/", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(a.status, 404);
}

#[tokio::test]
async fn hop_by_hop_and_forwarded_headers() {
    let (relay, target, client, _) = setup(&[]).await;
    let a = request(
        relay.http,
        &client.host(),
        "POST",
        "/h",
        &[
            ("connection", b"keep-alive, x-drop-me"),
            ("x-drop-me", b"1"),
            ("keep-alive", b"timeout=5"),
            ("te", b"gzip, trailers"),
            ("proxy-authorization", b"Basic Zm9vOmJhcg=="),
            ("x-forwarded-for", b"6.6.6.6"),
            ("x-forwarded-host", b"evil.example"),
            ("x-forwarded-proto", b"https"),
            ("x-keep-me", b"yes"),
        ],
        Bytes::from_static(b"{}"),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    // Hop-by-hop response headers from the target do not reach the visitor.
    assert!(a.header("keep-alive").is_none());
    let seen = target.last().unwrap();
    for gone in ["x-drop-me", "keep-alive", "proxy-authorization"] {
        assert!(seen.header(gone).is_none(), "{gone} crossed the tunnel");
    }
    // Only `te: trailers` is kept (gRPC servers expect it; docs/streaming.md).
    assert_eq!(seen.header("te").as_deref(), Some("trailers"));
    assert_eq!(seen.header("x-keep-me").as_deref(), Some("yes"));
    assert_eq!(seen.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some(client.host()));
}

#[tokio::test]
async fn trusted_proxy_chain_is_extended() {
    let (relay, target, client, _) = setup(&["--trusted-proxies", "127.0.0.0/8"]).await;
    request(
        relay.http,
        &client.host(),
        "GET",
        "/",
        &[
            ("x-forwarded-for", b"198.51.100.7"),
            ("x-forwarded-proto", b"https"),
        ],
        Bytes::new(),
    )
    .await
    .unwrap();
    let seen = target.last().unwrap();
    assert_eq!(
        seen.header("x-forwarded-for").as_deref(),
        Some("198.51.100.7, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("https"));
}

#[tokio::test]
async fn oversized_headers_get_431_and_mismatched_authority_421() {
    let (relay, target, client, _) = setup(&["--max-header-bytes", "16384"]).await;
    let big = "a".repeat(40_000);
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nX-Big: {big}\r\nConnection: close\r\n\r\n",
        client.host()
    );
    let resp = raw(relay.http, req.as_bytes(), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        resp.starts_with("HTTP/1.1 431"),
        "{}",
        &resp[..resp.len().min(200)]
    );

    // Absolute-form target naming another tunnel than the Host header.
    let req = format!(
        "GET http://other.localhost/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        client.host()
    );
    let resp = raw(relay.http, req.as_bytes(), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(resp.starts_with("HTTP/1.1 421"), "{resp}");
    assert!(
        target.seen().is_empty(),
        "neither request reached the target"
    );

    // Malformed HTTP gets a 400, not a hang or a crash; the relay keeps serving.
    let resp = raw(
        relay.http,
        b"NOT HTTP AT ALL\r\n\r\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let a = request(relay.http, &client.host(), "GET", "/ok", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn body_limit_gives_413() {
    let (relay, target, client, _) = setup(&["--max-body-bytes", "1000"]).await;
    let a = request(
        relay.http,
        &client.host(),
        "POST",
        "/big",
        &[],
        Bytes::from(vec![b'x'; 1001]),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 413);
    assert!(target.seen().is_empty());
    let a = request(
        relay.http,
        &client.host(),
        "POST",
        "/small",
        &[],
        Bytes::from(vec![b'x'; 1000]),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn large_upload_to_a_slow_target_keeps_memory_bounded() {
    let (relay, target, client, _) = setup(&[]).await;
    let relay_pid = relay.proc.pid();
    let client_pid = client.proc.pid();
    let base_relay = rss_kib(relay_pid).unwrap();
    let base_client = rss_kib(client_pid).unwrap();
    let size = 256 * 1024 * 1024u64;
    let host = client.host();
    let addr = relay.http;
    let upload = tokio::spawn(async move { send_streamed(addr, &host, "/sink-slow", size).await });
    let mut peak = (0u64, 0u64);
    while !upload.is_finished() {
        peak.0 = peak.0.max(rss_kib(relay_pid).unwrap_or(0));
        peak.1 = peak.1.max(rss_kib(client_pid).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = upload.await.unwrap().unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(target.last().unwrap().size, size);
    let limit = 64 * 1024;
    assert!(
        peak.0 - base_relay.min(peak.0) < limit,
        "relay grew by {} KiB",
        peak.0 - base_relay
    );
    assert!(
        peak.1 - base_client.min(peak.1) < limit,
        "client grew by {} KiB",
        peak.1 - base_client
    );
}

#[tokio::test]
async fn ctrl_c_lets_in_flight_exchanges_finish() {
    let (relay, _target, mut client, _) = setup(&[]).await;
    let host = client.host();
    let addr = relay.http;
    let pending = tokio::spawn(async move {
        request(addr, &host, "GET", "/slow?ms=1000", &[], Bytes::new()).await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while _target.seen().is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client.proc.interrupt();
    let a = pending.await.unwrap().unwrap();
    let code = client.proc.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(
        a.status,
        200,
        "{:?} {} {code:?}\nrelay: {}",
        a.body,
        client.proc.stderr(),
        relay.proc.stderr()
    );
    assert_eq!(&a.body[..], b"slow done");
    assert_eq!(
        client
            .proc
            .wait_exit(Duration::from_secs(15))
            .await
            .unwrap(),
        0
    );
    // Once it has gone, the name answers 404 at once.
    let a = request(relay.http, &client.host(), "GET", "/", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(a.status, 404);
}

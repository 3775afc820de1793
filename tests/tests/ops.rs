//! Running a relay in production: /metrics moving with traffic, SIGTERM drain (in-flight
//! requests finish, the client reconnects to the restarted relay), per-token limits with
//! clear statuses, throttled failed auth, and an ACME certificate from a local Pebble
//! served on the HTTPS port.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use porthole_tests::{bin, metric, request, Client, Proc, Relay, Target, READY_TIMEOUT};

#[tokio::test]
async fn metrics_move_with_traffic() {
    let relay = Relay::start(&[]).await.unwrap();
    let token = relay.token("m").unwrap();
    let target = Target::start().await.unwrap();
    let client = Client::start(&relay, &target.addr.to_string(), &token, &[])
        .await
        .unwrap();
    let before = relay.metrics().await.unwrap();
    assert_eq!(metric(&before, "porthole_sessions"), 1.0);
    assert_eq!(metric(&before, "porthole_tunnels"), 1.0);

    let body = Bytes::from(vec![b'x'; 10_000]);
    let r = request(relay.http, &client.host(), "POST", "/echo", &[], body)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = request(
        relay.http,
        &client.host(),
        "GET",
        "/status/503",
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 503);
    let r = request(
        relay.http,
        "nobody.localhost",
        "GET",
        "/",
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404);

    let after = relay.metrics().await.unwrap();
    let delta = |name: &str| metric(&after, name) - metric(&before, name);
    assert_eq!(
        delta("porthole_requests_total{status=\"2xx\"}"),
        1.0,
        "{after}"
    );
    assert_eq!(delta("porthole_requests_total{status=\"5xx\"}"), 1.0);
    assert_eq!(delta("porthole_requests_total{status=\"4xx\"}"), 1.0);
    assert_eq!(delta("porthole_requests_no_tunnel_total"), 1.0);
    assert!(delta("porthole_bytes_in_total") >= 10_000.0);
    assert!(delta("porthole_bytes_out_total") >= 10_000.0);
    assert_eq!(
        delta("porthole_exchange_duration_seconds_bucket{le=\"+Inf\"}"),
        2.0
    );
    assert_eq!(delta("porthole_exchange_duration_seconds_count"), 2.0);
    assert!(after.contains("# TYPE porthole_exchange_duration_seconds histogram"));
    assert!(after.contains("porthole_queue_depth 0"));

    // A refused hello counts as an auth failure.
    let mut bad = Client::spawn(&relay, &target.addr.to_string(), "wrong", &[]).unwrap();
    bad.wait_exit(READY_TIMEOUT).await.unwrap();
    let last = relay.metrics().await.unwrap();
    assert_eq!(
        metric(&last, "porthole_auth_failures_total")
            - metric(&after, "porthole_auth_failures_total"),
        1.0
    );
}

fn sigterm(p: &Proc) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &p.pid().to_string()])
        .status();
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_the_client_comes_back() {
    let mut relay = Relay::start(&[]).await.unwrap();
    let token = relay.token("d").unwrap();
    let target = Target::start().await.unwrap();
    let mut client = Client::start(
        &relay,
        &target.addr.to_string(),
        &token,
        &["--name", "drain"],
    )
    .await
    .unwrap();
    let host = client.host();

    // Two requests in flight when SIGTERM arrives.
    let http = relay.http;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move {
                request(http, &host, "GET", "/slow?ms=1500", &[], Bytes::new()).await
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    while target
        .seen()
        .iter()
        .filter(|r| r.uri.starts_with("/slow"))
        .count()
        < 2
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slow requests never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sigterm(&relay.proc);
    for s in slow {
        let r = s.await.unwrap().expect("in-flight request answered");
        assert_eq!(r.status, 200);
        assert_eq!(&r.body[..], b"slow done");
    }
    let code = relay.proc.wait_exit(Duration::from_secs(15)).await.unwrap();
    assert_eq!(code, 0, "{}", relay.proc.stderr());
    client
        .proc
        .event("reconnecting", READY_TIMEOUT)
        .await
        .unwrap();

    // The relay comes back on the same ports; the client takes its name back.
    let http = relay.http.to_string();
    let tunnel = relay.tunnel.to_string();
    relay = Relay::start_in(relay.dir.clone(), &http, &tunnel, &[])
        .await
        .unwrap();
    let ev = client
        .proc
        .event("reconnected", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(ev["name"], "drain");
    let r = request(relay.http, &host, "GET", "/after", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn per_token_limits_answer_429_and_refuse_extra_tunnels() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        "max_requests_per_second = 1000\n\
         [token_limits.small]\n\
         tunnels = 1\n\
         requests_per_second = 2\n\
         [token_limits.slim]\n\
         bandwidth = 1000\n",
    )
    .unwrap();
    let relay = Relay::start_in(
        dir.clone(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
    )
    .await
    .unwrap();
    let small = relay.token("small").unwrap();
    let big = relay.token("big").unwrap();
    let target = Target::start().await.unwrap();
    let a = Client::start(&relay, &target.addr.to_string(), &small, &["--name", "a"])
        .await
        .unwrap();

    // A second tunnel for the same token: refused, exit 3, a sentence that says why.
    let mut b = Client::spawn(&relay, &target.addr.to_string(), &small, &["--name", "b"]).unwrap();
    let err = b.event("error", READY_TIMEOUT).await.unwrap();
    let msg = err["message"].as_str().unwrap();
    assert!(msg.contains("at most 1 tunnels"), "{msg}");
    assert_eq!(b.wait_exit(READY_TIMEOUT).await.unwrap(), 3);
    // Another token is not affected.
    let c = Client::start(&relay, &target.addr.to_string(), &big, &["--name", "c"])
        .await
        .unwrap();

    // Requests per second: a burst of 2, then 429 with Retry-After.
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..6 {
        let r = request(relay.http, &a.host(), "GET", "/", &[], Bytes::new())
            .await
            .unwrap();
        if r.status == 429 {
            retry_after = r.header("retry-after");
            assert_eq!(
                r.header("x-porthole-error").as_deref(),
                Some("rate-limited")
            );
            assert!(String::from_utf8_lossy(&r.body).contains("requests per second limit"));
        }
        statuses.push(r.status);
    }
    assert!(statuses.starts_with(&[200, 200]), "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&secs));
    for _ in 0..6 {
        let r = request(relay.http, &c.host(), "GET", "/", &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status, 200, "the big token has its own budget");
    }

    // Bandwidth: 1000 bytes/s; a 5000-byte upload puts the token in debt, so the next
    // request waits for it to be paid back.
    let slim = relay.token("slim").unwrap();
    let d = Client::start(&relay, &target.addr.to_string(), &slim, &["--name", "d"])
        .await
        .unwrap();
    let r = request(
        relay.http,
        &d.host(),
        "POST",
        "/sink",
        &[],
        Bytes::from(vec![0u8; 5000]),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let r = request(relay.http, &d.host(), "GET", "/", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 429);
    assert!(String::from_utf8_lossy(&r.body).contains("bandwidth limit"));
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((3..=5).contains(&secs), "{secs}");

    let m = relay.metrics().await.unwrap();
    assert_eq!(
        metric(&m, "porthole_limited_total{limit=\"bandwidth\"}"),
        1.0
    );
    assert!(metric(&m, "porthole_limited_total{limit=\"requests_per_second\"}") >= 1.0);
    assert_eq!(metric(&m, "porthole_limited_total{limit=\"tunnels\"}"), 1.0);
}

#[tokio::test]
async fn failed_auth_is_throttled_per_address() {
    let relay = Relay::start(&["--auth-failures-per-minute", "2"])
        .await
        .unwrap();
    let good = relay.token("good").unwrap();
    let target = Target::start().await.unwrap();
    for _ in 0..2 {
        let mut p = Client::spawn(&relay, &target.addr.to_string(), "wrong", &[]).unwrap();
        let err = p.event("error", READY_TIMEOUT).await.unwrap();
        assert!(err["message"]
            .as_str()
            .unwrap()
            .contains("refused the token"));
    }
    // The third attempt from this address is throttled, even with a good token.
    let mut p = Client::spawn(&relay, &target.addr.to_string(), &good, &[]).unwrap();
    let ev = p.event("reconnecting", READY_TIMEOUT).await.unwrap();
    assert!(
        ev.to_string()
            .contains("too many failed attempts from 127.0.0.1"),
        "{ev}"
    );
    p.kill().await;
    let m = relay.metrics().await.unwrap();
    assert!(metric(&m, "porthole_auth_throttled_total") >= 1.0);
}

// ---------------------------------------------------------------------------------
// ACME against Pebble.

/// A loopback port that is free for both TCP and UDP right now (for programs that
/// cannot report the port they bound).
fn free_port() -> u16 {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}

fn curl(args: &[&str]) -> std::process::Output {
    std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .args(args)
        .output()
        .expect("curl runs")
}

async fn until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pebble_bin(name: &str) -> PathBuf {
    let p = Path::new("/usr/bin").join(name);
    assert!(
        p.exists(),
        "{name} is missing: install Debian's `pebble` package (scripts/test.sh does)"
    );
    p
}

fn spawn(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Proc {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    Proc::spawn(program, &args, env).unwrap()
}

#[tokio::test]
async fn acme_certificate_from_pebble_is_served_on_https() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // Pebble's own HTTPS certificate: a self-signed one for localhost, which the relay
    // trusts with --acme-ca.
    let out = std::process::Command::new(bin("porthole-relay"))
        .args(["fingerprint", "--domain", "localhost", "--data-dir"])
        .arg(w.join("pebble-tls"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let pebble_cert = w.join("pebble-tls/relay-cert.pem");
    let pebble_key = w.join("pebble-tls/relay-key.pem");

    let (dns, chall_mgmt, wfe, mgmt, https) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let _chall = spawn(
        &pebble_bin("pebble-challtestsrv"),
        &[
            "-dns01",
            &format!("127.0.0.1:{dns}"),
            "-management",
            &format!("127.0.0.1:{chall_mgmt}"),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
        ],
        &[],
    );
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{wfe}"),
        "managementListenAddress": format!("127.0.0.1:{mgmt}"),
        "certificate": pebble_cert,
        "privateKey": pebble_key,
        "httpPort": free_port(),
        "tlsPort": https,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
        // Short-lived certificates, so that renewal happens within the test.
        "certificateValidityPeriod": 40,
    }});
    std::fs::write(w.join("pebble.json"), config.to_string()).unwrap();
    let _pebble = spawn(
        &pebble_bin("pebble"),
        &[
            "-config",
            w.join("pebble.json").to_str().unwrap(),
            "-dnsserver",
            &format!("127.0.0.1:{dns}"),
        ],
        &[("PEBBLE_VA_NOSLEEP", "1"), ("PEBBLE_WFE_NONCEREJECT", "0")],
    );
    let directory = format!("https://localhost:{wfe}/dir");
    let ca = pebble_cert.to_str().unwrap().to_owned();
    until("pebble answers", READY_TIMEOUT, || {
        curl(&["--cacert", &ca, "-f", &directory])
            .status
            .success()
            .then_some(())
    })
    .await;

    // The DNS-01 hook publishes the TXT record in the challenge test server's DNS.
    let hook = w.join("dns-hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nset -e\ncase \"$1\" in\n\
             present) curl -sS -f -X POST -d \"{{\\\"host\\\":\\\"_acme-challenge.$2.\\\",\\\"value\\\":\\\"$3\\\"}}\" http://127.0.0.1:{chall_mgmt}/set-txt ;;\n\
             cleanup) curl -sS -f -X POST -d \"{{\\\"host\\\":\\\"_acme-challenge.$2.\\\"}}\" http://127.0.0.1:{chall_mgmt}/clear-txt ;;\n\
             esac\necho \"$1 $2\" >> {}\n",
            w.join("hook.log").display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&hook)
        .status()
        .unwrap();

    let domain = "tunnels.porthole.test";
    let https_addr = format!("127.0.0.1:{https}");
    let flags = [
        "--domain",
        domain,
        "--https-addr",
        &https_addr,
        "--acme-directory",
        &directory,
        "--acme-ca",
        &ca,
        "--acme-email",
        "ops@porthole.test",
        "--acme-dns-hook",
        hook.to_str().unwrap(),
        "--acme-renew-before",
        "30s",
    ];
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut relay = Relay::start_in(dir.clone(), "127.0.0.1:0", "127.0.0.1:0", &flags)
        .await
        .unwrap();

    // Pebble's issuing root, from its management endpoint.
    let root = w.join("root.pem");
    let out = curl(&["-k", "-f", &format!("https://127.0.0.1:{mgmt}/roots/0")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&root, &out.stdout).unwrap();
    let root = root.to_str().unwrap().to_owned();

    let visit = |host: &str| {
        curl(&[
            "--cacert",
            &root,
            "--resolve",
            &format!("{host}:{https}:127.0.0.1"),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("https://{host}:{https}/"),
        ])
    };
    // The relay's own name (TLS-ALPN-01) and a tunnel name under the wildcard (DNS-01).
    let code = until(
        "a verified HTTPS handshake",
        Duration::from_secs(90),
        || {
            let out = visit(domain);
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        },
    )
    .await;
    assert_eq!(code, "200", "{}", relay.proc.stderr());
    let out = visit(&format!("hook.{domain}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
    let hook_log = std::fs::read_to_string(w.join("hook.log")).unwrap();
    assert!(
        hook_log.contains(&format!("present {domain}")),
        "{hook_log}"
    );
    assert!(
        hook_log.contains(&format!("cleanup {domain}")),
        "{hook_log}"
    );

    // Renewed ahead of expiry (40s lifetime, renewed from half of it) and swapped in
    // without a restart: the served certificate's expiry moves.
    let expiry = |host: &str| {
        let out = curl(&[
            "-v",
            "--cacert",
            &root,
            "--resolve",
            &format!("{host}:{https}:127.0.0.1"),
            "-o",
            "/dev/null",
            &format!("https://{host}:{https}/"),
        ]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        err.lines()
            .find_map(|l| l.split_once("expire date: ").map(|(_, d)| d.to_owned()))
            .filter(|_| out.status.success())
    };
    let first = expiry(domain).expect("expiry of the first certificate");
    let renewed = until("a renewed certificate", Duration::from_secs(60), || {
        expiry(domain).filter(|e| *e != first)
    })
    .await;
    assert_ne!(renewed, first);

    // Cached in the data dir: a restarted relay serves it at once.
    relay.proc.kill().await;
    assert!(dir.path().join("acme/cert.pem").exists());
    assert!(dir.path().join("acme/account.json").exists());
    let _relay = Relay::start_in(dir.clone(), "127.0.0.1:0", "127.0.0.1:0", &flags)
        .await
        .unwrap();
    let out = visit(domain);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn certificate_files_are_reloaded_without_a_restart() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let make = |name: &str| {
        let out = std::process::Command::new(bin("porthole-relay"))
            .args(["fingerprint", "--domain", "localhost", "--data-dir"])
            .arg(w.join(name))
            .output()
            .unwrap();
        assert!(out.status.success());
        (
            w.join(name).join("relay-cert.pem"),
            w.join(name).join("relay-key.pem"),
        )
    };
    let (cert_a, key_a) = make("a");
    let (cert_b, key_b) = make("b");
    let cert = w.join("cert.pem");
    let key = w.join("key.pem");
    std::fs::copy(&cert_a, &cert).unwrap();
    std::fs::copy(&key_a, &key).unwrap();
    // The relay binds an ephemeral port and reports it (a port picked here and
    // handed over could be taken meanwhile by a test running beside this one).
    let relay = Relay::start(&[
        "--https-addr",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .await
    .unwrap();
    let https = relay
        .https
        .expect("the relay reports its HTTPS address")
        .port();
    let trusted_by = |ca: &Path| {
        curl(&[
            "--cacert",
            ca.to_str().unwrap(),
            "-o",
            "/dev/null",
            &format!("https://localhost:{https}/"),
        ])
        .status
        .success()
    };
    assert!(trusted_by(&cert_a));
    assert!(!trusted_by(&cert_b));
    // Whole-second mtimes on some filesystems: make the change visible to the poll.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::copy(&key_b, &key).unwrap();
    std::fs::copy(&cert_b, &cert).unwrap();
    until(
        "the new certificate served",
        Duration::from_secs(15),
        || trusted_by(&cert_b).then_some(()),
    )
    .await;
    assert!(!trusted_by(&cert_a));
}

/// Logs written to a pipe or a file (a journal, `> relay.log`) are plain text, without
/// terminal colour codes. (`Relay::start` asks for JSON logs, so this relay is started
/// by hand.)
#[tokio::test]
async fn logs_off_a_terminal_are_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "serve",
        "--domain",
        "localhost",
        "--http-addr",
        "127.0.0.1:0",
        "--tunnel-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "off",
        "--data-dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([dir.path().display().to_string()])
    .collect();
    let relay = Proc::spawn(&bin("porthole-relay"), &args, &[("PORTHOLE_LOG", "info")]).unwrap();
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    while !relay.stderr().contains("relay listening") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log line: {}",
            relay.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = relay.stderr();
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log: {log:?}"
    );
    assert!(log.contains("https=off"), "{log}");
}

/// `token list` shows when each token was made as a date, not as Unix seconds.
#[tokio::test]
async fn token_list_shows_creation_dates() {
    let relay = Relay::start(&[]).await.unwrap();
    relay.token("ops").unwrap();
    let out = relay.cli(&["token", "list"]).unwrap();
    assert!(out.status.success());
    let list = String::from_utf8_lossy(&out.stdout);
    let created = list
        .split('\t')
        .find_map(|f| f.strip_prefix("created "))
        .unwrap_or_else(|| panic!("no creation date in {list:?}"));
    let when = humantime::parse_rfc3339(created)
        .unwrap_or_else(|e| panic!("{created:?} is not an RFC 3339 date: {e}"));
    let age = std::time::SystemTime::now()
        .duration_since(when)
        .expect("created in the past");
    assert!(age < Duration::from_secs(600), "{list}");
}

//! The durable queue end to end: real relay and client processes, a target that can be
//! made to fail, webhooks over real loopback sockets. What a sender sees (202, 503,
//! 507) and what the app sees (each webhook once, in order) are the assertions.

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use porthole_tests::*;

/// A request the flaky target answered.
#[derive(Debug, Clone)]
struct Got {
    body: String,
    queue_id: Option<String>,
    attempt: Option<String>,
    status: u16,
}

/// A target that answers 200, or `fail` while it is non-zero.
struct Flaky {
    addr: std::net::SocketAddr,
    fail: Arc<AtomicU16>,
    got: Arc<Mutex<Vec<Got>>>,
}

impl Flaky {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fail = Arc::new(AtomicU16::new(0));
        let got = Arc::new(Mutex::new(Vec::new()));
        let (f, g) = (fail.clone(), got.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (f, g) = (f.clone(), g.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let (f, g) = (f.clone(), g.clone());
                            async move {
                                let header = |n: &str| {
                                    req.headers()
                                        .get(n)
                                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                                };
                                let queue_id = header("x-porthole-queue-id");
                                let attempt = header("x-porthole-attempt");
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let fail = f.load(Ordering::SeqCst);
                                let status = if fail == 0 { 200 } else { fail };
                                g.lock().unwrap().push(Got {
                                    body: String::from_utf8_lossy(&body).into_owned(),
                                    queue_id,
                                    attempt,
                                    status,
                                });
                                let mut r =
                                    http::Response::new(Full::new(Bytes::from_static(b"ok")));
                                *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                                Ok::<_, std::convert::Infallible>(r)
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, fail, got }
    }

    /// Bodies the target answered with 200, in the order they arrived.
    fn delivered(&self) -> Vec<Got> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.status == 200)
            .cloned()
            .collect()
    }

    fn all(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
async fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The numeric queue id from an `x-porthole-queue-id` value (`STORE-ID`).
fn queue_num(v: &str) -> u64 {
    v.rsplit('-').next().unwrap().parse().unwrap()
}

/// One answered webhook: its body, status and queue id (when queued).
#[derive(Debug, Clone)]
struct Sent {
    body: String,
    status: u16,
    id: Option<u64>,
}

/// Sends `n` webhooks to `host` over `conns` keep-alive connections; a connection that
/// fails stops its sender (the relay was killed). Answers are pushed to `out`.
async fn flood(
    addr: std::net::SocketAddr,
    host: String,
    n: usize,
    conns: usize,
    out: Arc<Mutex<Vec<Sent>>>,
) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (next, out, host) = (next.clone(), out.clone(), host.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut c) = connect(addr).await else {
                return;
            };
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    return;
                }
                let body = format!("{{\"n\":{i}}}");
                match send(
                    &mut c,
                    &host,
                    "POST",
                    "/hook",
                    &[("content-type", b"application/json")],
                    Bytes::from(body.clone()),
                )
                .await
                {
                    Ok(a) => out.lock().unwrap().push(Sent {
                        body,
                        status: a.status,
                        id: a.header("x-porthole-queue-id").map(|v| queue_num(&v)),
                    }),
                    Err(_) => return,
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Reserves `name` for `token` (a client binds it, then leaves).
async fn reserve(relay: &Relay, token: &str, name: &str, env: &[(&str, &str)], extra: &[&str]) {
    let mut args = vec!["--name", name];
    args.extend_from_slice(extra);
    let mut c = Client::start_with_env(relay, "127.0.0.1:9", token, &args, env)
        .await
        .unwrap();
    stop_client(&mut c).await;
}

/// Stops a client with Ctrl-C, as its user does; it must exit cleanly.
async fn stop_client(c: &mut Client) {
    c.proc.interrupt();
    assert_eq!(c.proc.wait_exit(Duration::from_secs(15)).await.unwrap(), 0);
}

/// `porthole-relay queue list --json` entries.
fn admin_list(relay: &Relay, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["queue", "list", "--json", "--limit", "100000"];
    args.extend_from_slice(extra);
    let out = relay.cli(&args).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Checks that the app saw each acknowledged webhook exactly once, in queue order,
/// and nothing twice.
fn assert_exactly_once_in_order(acked: &[Sent], delivered: &[Got]) {
    let mut seen = std::collections::HashMap::new();
    for g in delivered {
        *seen.entry(g.body.clone()).or_insert(0) += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "delivered more than once: {dups:?}");
    let mut acked: Vec<&Sent> = acked.iter().collect();
    acked.sort_by_key(|s| s.id);
    for s in &acked {
        assert_eq!(
            seen.get(&s.body),
            Some(&1),
            "{} was acknowledged but not delivered",
            s.body
        );
    }
    // Arrival order: the acknowledged webhooks reach the app in queue-id order.
    let position: std::collections::HashMap<&str, usize> = delivered
        .iter()
        .enumerate()
        .map(|(i, g)| (g.body.as_str(), i))
        .collect();
    let order: Vec<usize> = acked.iter().map(|s| position[s.body.as_str()]).collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "delivered out of queue order"
    );
}

/// A relay whose clients come and go under fresh names (CI previews) keeps no delivery
/// worker for names with nothing queued: each bind starts one, which finds nothing and
/// ends. Before, every name ever bound kept a task for the relay's lifetime.
#[tokio::test]
async fn names_with_nothing_queued_keep_no_delivery_worker() {
    let relay = Relay::start(&[]).await.unwrap();
    let token = relay.token("ci").unwrap();
    let target = Flaky::start().await;
    for n in 0..3 {
        let name = format!("preview-{n}");
        let client = Client::start(&relay, &target.addr.to_string(), &token, &["--name", &name])
            .await
            .unwrap();
        drop(client);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), relay.metrics())
            .await
            .expect("the relay answers /metrics")
            .unwrap();
        if metric(&m, "porthole_queue_workers") == 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivery workers still running for names with nothing queued:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A relay whose tunnels only pass requests through never creates its queue database
/// (no writer thread, no file), nor do `porthole-relay queue` commands; the first
/// webhook to be kept creates it, and a restart finds it and delivers what it holds.
#[tokio::test]
async fn the_queue_database_is_created_by_the_first_webhook_it_keeps() {
    let mut relay = Relay::start(&[]).await.unwrap();
    let token = relay.token("dev").unwrap();
    let target = Flaky::start().await;
    let data = tempfile::tempdir().unwrap();
    let env = [("PORTHOLE_DATA_DIR", data.path().to_str().unwrap())];
    let db = relay.dir.path().join("queue.sqlite3");

    let mut client = Client::start_with_env(
        &relay,
        &target.addr.to_string(),
        &token,
        &["--name", "hooks"],
        &env,
    )
    .await
    .unwrap();
    let host = client.host();
    let a = request(relay.http, &host, "POST", "/", &[], Bytes::from("live"))
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(target.delivered().len(), 1);
    assert!(!db.exists(), "passthrough alone created {}", db.display());
    // Listing an absent queue shows it empty and creates nothing either.
    assert!(admin_list(&relay, &[]).is_empty());
    let out = relay.cli(&["queue", "drop", "1"]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no exchange 1 in the queue"));
    assert!(
        !db.exists(),
        "`porthole-relay queue` created {}",
        db.display()
    );

    stop_client(&mut client).await;
    let a = request(relay.http, &host, "POST", "/", &[], Bytes::from("kept"))
        .await
        .unwrap();
    assert_eq!(a.status, 202, "{}", String::from_utf8_lossy(&a.body));
    assert!(db.exists());
    assert_eq!(admin_list(&relay, &["--state", "queued"]).len(), 1);

    // A restarted relay opens the database it finds and delivers its webhook.
    relay.restart(&[]).await.unwrap();
    let _client = Client::start_with_env(
        &relay,
        &target.addr.to_string(),
        &token,
        &["--name", "hooks"],
        &env,
    )
    .await
    .unwrap();
    wait_until(Duration::from_secs(30), "the kept webhook", || {
        target.delivered().len() == 2
    })
    .await;
    assert_eq!(target.delivered()[1].body, "kept");
}

#[tokio::test]
async fn a_thousand_webhooks_sent_offline_arrive_once_each_in_order() {
    let relay = Relay::start(&[]).await.unwrap();
    let token = relay.token("dev").unwrap();
    let target = Flaky::start().await;
    let data = tempfile::tempdir().unwrap();
    let env = [("PORTHOLE_DATA_DIR", data.path().to_str().unwrap())];
    reserve(&relay, &token, "hooks", &env, &[]).await;

    let sent = Arc::new(Mutex::new(Vec::new()));
    flood(relay.http, "hooks.localhost".into(), 1000, 16, sent.clone()).await;
    let sent = sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1000);
    assert!(
        sent.iter().all(|s| s.status == 202 && s.id.is_some()),
        "{:?}",
        sent.iter().find(|s| s.status != 202)
    );
    assert!(
        target.all().is_empty(),
        "nothing reaches the app while it is offline"
    );
    assert_eq!(admin_list(&relay, &["--state", "queued"]).len(), 1000);

    let _client = Client::start_with_env(
        &relay,
        &target.addr.to_string(),
        &token,
        &["--name", "hooks"],
        &env,
    )
    .await
    .unwrap();
    wait_until(Duration::from_secs(90), "1000 deliveries", || {
        target.delivered().len() >= 1000
    })
    .await;
    wait_until(Duration::from_secs(30), "the queue to drain", || {
        admin_list(&relay, &["--state", "queued"]).is_empty()
    })
    .await;
    let delivered = target.delivered();
    assert_eq!(delivered.len(), 1000);
    assert_exactly_once_in_order(&sent, &delivered);
    assert!(delivered.iter().all(|g| g.queue_id.is_some()));
    assert_eq!(admin_list(&relay, &["--state", "delivered"]).len(), 1000);
}

#[tokio::test]
async fn relay_killed_during_a_flood_loses_nothing_it_acknowledged() {
    let mut relay = Relay::start(&[]).await.unwrap();
    let token = relay.token("dev").unwrap();
    let target = Flaky::start().await;
    let data = tempfile::tempdir().unwrap();
    let env = [("PORTHOLE_DATA_DIR", data.path().to_str().unwrap())];
    reserve(&relay, &token, "hooks", &env, &[]).await;

    let sent = Arc::new(Mutex::new(Vec::new()));
    let flooding = tokio::spawn(flood(
        relay.http,
        "hooks.localhost".into(),
        20_000,
        32,
        sent.clone(),
    ));
    wait_until(Duration::from_secs(60), "300 acknowledgements", || {
        sent.lock().unwrap().len() >= 300
    })
    .await;
    // SIGKILL mid-flood, then start again on the same ports and data dir.
    relay.restart(&[]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), flooding)
        .await
        .unwrap()
        .unwrap();
    let sent: Vec<Sent> = sent.lock().unwrap().clone();
    assert!(
        sent.iter().all(|s| s.status == 202),
        "every answer before the kill was 202"
    );
    assert!(sent.len() < 20_000, "the kill came mid-flood");

    let _client = Client::start_with_env(
        &relay,
        &target.addr.to_string(),
        &token,
        &["--name", "hooks"],
        &env,
    )
    .await
    .unwrap();
    wait_until(Duration::from_secs(90), "the queue to drain", || {
        admin_list(&relay, &["--state", "queued"]).is_empty()
    })
    .await;
    let delivered = target.delivered();
    assert!(delivered.len() >= sent.len());
    assert_exactly_once_in_order(&sent, &delivered);
}

#[tokio::test]
async fn a_failing_target_gets_the_webhooks_once_it_recovers() {
    let relay = Relay::start(&[
        "--queue-retry-base",
        "100ms",
        "--queue-retry-max",
        "300ms",
        "--queue-max-attempts",
        "100",
    ])
    .await
    .unwrap();
    let token = relay.token("dev").unwrap();
    let target = Flaky::start().await;
    target.fail.store(503, Ordering::SeqCst);
    let data = tempfile::tempdir().unwrap();
    let env = [("PORTHOLE_DATA_DIR", data.path().to_str().unwrap())];
    let client = Client::start_with_env(
        &relay,
        &target.addr.to_string(),
        &token,
        &["--name", "flaky", "--delivery", "queue"],
        &env,
    )
    .await
    .unwrap();
    let mut sent = Vec::new();
    let mut c = connect(relay.http).await.unwrap();
    for i in 0..3 {
        let body = format!("{{\"n\":{i}}}");
        let a = send(
            &mut c,
            &client.host(),
            "POST",
            "/hook",
            &[],
            Bytes::from(body.clone()),
        )
        .await
        .unwrap();
        assert_eq!(a.status, 202, "queue mode answers at once");
        assert!(a.body.starts_with(b"{\"queued\":true"), "{:?}", a.body);
        sent.push(Sent {
            body,
            status: a.status,
            id: a.header("x-porthole-queue-id").map(|v| queue_num(&v)),
        });
    }
    wait_until(Duration::from_secs(20), "three failed attempts", || {
        target.all().iter().filter(|g| g.status == 503).count() >= 3
    })
    .await;
    // Order holds while failing: only the first webhook is tried.
    assert!(target.all().iter().all(|g| g.body == sent[0].body));
    target.fail.store(0, Ordering::SeqCst);
    wait_until(Duration::from_secs(20), "three deliveries", || {
        target.delivered().len() >= 3
    })
    .await;
    wait_until(Duration::from_secs(10), "the queue to drain", || {
        admin_list(&relay, &["--state", "queued"]).is_empty()
    })
    .await;
    let delivered = target.delivered();
    assert_exactly_once_in_order(&sent, &delivered);
    let attempt: u32 = delivered[0].attempt.as_deref().unwrap().parse().unwrap();
    assert!(attempt >= 4, "first delivered on attempt {attempt}");
    let entries = admin_list(&relay, &[]);
    assert!(
        entries.iter().all(|e| e["state"] == "delivered"),
        "{entries:?}"
    );
}

/// A visitor's own `x-porthole-queue-id` never reaches the client: only the relay's
/// queue names a delivery. Were it carried, the client would take the second request
/// for a redelivery of the first and answer it without the target (and a forged id
/// could mark a queued webhook as delivered before it was).
#[tokio::test]
async fn a_visitor_cannot_forge_a_queue_id() {
    let relay = Relay::start(&[]).await.unwrap();
    let token = relay.token("dev").unwrap();
    let target = Flaky::start().await;
    let data = tempfile::tempdir().unwrap();
    let env = [("PORTHOLE_DATA_DIR", data.path().to_str().unwrap())];
    let client = Client::start_with_env(
        &relay,
        &target.addr.to_string(),
        &token,
        &["--name", "forged"],
        &env,
    )
    .await
    .unwrap();
    let mut c = connect(relay.http).await.unwrap();
    for i in 0..2 {
        let a = send(
            &mut c,
            &client.host(),
            "POST",
            "/hook",
            &[("x-porthole-queue-id", b"s-1")],
            Bytes::from(format!("{{\"n\":{i}}}")),
        )
        .await
        .unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.header("x-porthole-duplicate"), None);
    }
    let got = target.all();
    assert_eq!(got.len(), 2, "the target saw both: {got:?}");
    assert!(got.iter().all(|g| g.queue_id.is_none()), "{got:?}");
}

fn porthole_queue(relay: &Relay, token: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin("porthole"))
        .arg("queue")
        .args(args)
        .args([
            "--relay",
            &relay.tunnel.to_string(),
            "--relay-pin",
            &relay.pin,
        ])
        .env("PORTHOLE_TOKEN", token)
        .env_remove("PORTHOLE_RELAY")
        .env_remove("PORTHOLE_RELAY_PIN")
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_target_that_never_recovers_ends_dead_lettered_and_visible() {
    let relay = Relay::start(&["--queue-retry-base", "50ms", "--queue-max-attempts", "3"])
        .await
        .unwrap();
    let token = relay.token("dev").unwrap();
    let other = relay.token("other").unwrap();
    let target = Flaky::start().await;
    target.fail.store(500, Ordering::SeqCst);
    let data = tempfile::tempdir().unwrap();
    let env = [("PORTHOLE_DATA_DIR", data.path().to_str().unwrap())];
    let client = Client::start_with_env(
        &relay,
        &target.addr.to_string(),
        &token,
        &["--name", "doomed", "--delivery", "queue"],
        &env,
    )
    .await
    .unwrap();
    for i in 0..2 {
        let a = request(
            relay.http,
            &client.host(),
            "POST",
            "/hook",
            &[],
            Bytes::from(format!("{{\"n\":{i}}}")),
        )
        .await
        .unwrap();
        assert_eq!(a.status, 202);
    }
    wait_until(Duration::from_secs(20), "two dead letters", || {
        admin_list(&relay, &["--state", "dead"]).len() == 2
    })
    .await;
    let dead = admin_list(&relay, &["--state", "dead"]);
    for e in &dead {
        assert_eq!(e["attempts"], 3, "{e}");
        assert_eq!(e["last_status"], 500, "{e}");
        assert!(e["last_error"].as_str().unwrap().contains("500"), "{e}");
    }
    assert_eq!(target.all().len(), 6, "three attempts each");

    // The client's view: `porthole queue list`.
    let out = porthole_queue(&relay, &token, &["list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches(" dead ").count(), 2, "{text}");
    // Another token sees none of it and cannot touch it.
    let out = porthole_queue(&relay, &other, &["list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("empty"));
    let id_new = dead[0]["id"].as_u64().unwrap();
    let id_old = dead[1]["id"].as_u64().unwrap();
    let out = porthole_queue(&relay, &other, &["retry", &id_new.to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no queued exchange"));

    // Retry one once the target is back; drop the other.
    target.fail.store(0, Ordering::SeqCst);
    let out = porthole_queue(&relay, &token, &["retry", &id_old.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(Duration::from_secs(20), "the retried delivery", || {
        target.delivered().len() == 1
    })
    .await;
    assert_eq!(target.delivered()[0].body, "{\"n\":0}");
    let out = porthole_queue(&relay, &token, &["drop", &id_new.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = admin_list(&relay, &[]);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["state"], "delivered");
}

#[tokio::test]
async fn queue_and_offline_modes_answer_the_sender_as_configured() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        "[queue]\nstatus = 200\nbody = \"accepted\"\n\n[queue.names.ops]\ndelivery = \"queue\"\nstatus = 201\n",
    )
    .unwrap();
    let cfg = config.display().to_string();
    let relay = Relay::start_in(
        dir.clone(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        &["--config", &cfg],
    )
    .await
    .unwrap();
    let token = relay.token("dev").unwrap();
    let target = Target::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let env = [("PORTHOLE_DATA_DIR", data.path().to_str().unwrap())];

    // Queue mode: the sender is answered (as configured) before the app answers.
    let client = Client::start_with_env(
        &relay,
        &target.addr.to_string(),
        &token,
        &["--delivery", "queue"],
        &env,
    )
    .await
    .unwrap();
    let started = Instant::now();
    let a = request(
        relay.http,
        &client.host(),
        "POST",
        "/slow?ms=3000",
        &[],
        Bytes::from("x"),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(&a.body[..], b"accepted");
    assert!(started.elapsed() < Duration::from_secs(2));
    wait_until(Duration::from_secs(20), "the slow delivery", || {
        !target.seen().is_empty()
    })
    .await;

    // The operator's table wins over a client that asked for nothing.
    let ops = Client::start_with_env(
        &relay,
        &target.addr.to_string(),
        &token,
        &["--name", "ops"],
        &env,
    )
    .await
    .unwrap();
    let a = request(relay.http, &ops.host(), "POST", "/", &[], Bytes::from("y"))
        .await
        .unwrap();
    assert_eq!(a.status, 201);

    // Offline, reject: 503 with Retry-After, so the sender's own retries work.
    reserve(&relay, &token, "rej", &env, &["--offline", "reject"]).await;
    let a = request(
        relay.http,
        "rej.localhost",
        "POST",
        "/",
        &[],
        Bytes::from("z"),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 503);
    assert_eq!(a.header("retry-after").as_deref(), Some("30"));

    // Offline, queue (the default for reserved names): stored and answered.
    reserve(&relay, &token, "keep", &env, &[]).await;
    let a = request(
        relay.http,
        "keep.localhost",
        "POST",
        "/",
        &[],
        Bytes::from("w"),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200, "the [queue] status applies");
    // A name nobody reserved is still simply absent.
    let a = request(
        relay.http,
        "nobody.localhost",
        "POST",
        "/",
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 404);
    // Passthrough (a client without flags) still waits for the app.
    let pass = Client::start_with_env(&relay, &target.addr.to_string(), &token, &[], &env)
        .await
        .unwrap();
    let a = request(
        relay.http,
        &pass.host(),
        "GET",
        "/status/418",
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 418);
}

#[tokio::test]
async fn a_foreign_or_corrupt_queue_file_is_refused_at_start() {
    for content in [
        &b"definitely not a database, just text"[..],
        &[0u8; 8192][..],
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("queue.sqlite3"), content).unwrap();
        let mut p = Proc::spawn(
            &bin("porthole-relay"),
            &[
                "serve".into(),
                "--http-addr".into(),
                "127.0.0.1:0".into(),
                "--tunnel-addr".into(),
                "127.0.0.1:0".into(),
                "--admin-addr".into(),
                "off".into(),
                "--data-dir".into(),
                dir.path().display().to_string(),
            ],
            &[],
        )
        .unwrap();
        assert_ne!(p.wait_exit(Duration::from_secs(15)).await.unwrap(), 0);
        // The exit can be seen before the stderr pipe has been read to its end.
        wait_until(
            Duration::from_secs(5),
            "the relay's error on stderr",
            || p.stderr().contains("move it away"),
        )
        .await;
        let err = p.stderr();
        assert!(
            err.contains("cannot be used as the queue database"),
            "{err}"
        );
        assert!(err.contains("move it away"), "{err}");
        // The file was left as it was.
        assert_eq!(
            std::fs::read(dir.path().join("queue.sqlite3")).unwrap(),
            content
        );
    }
}

/// A small tmpfs mounted on a fresh directory; unmounted on drop.
struct SmallDisk {
    dir: Arc<tempfile::TempDir>,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<Self> {
        let dir = Arc::new(tempfile::tempdir().ok()?);
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(Self { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_answers_507_and_the_queue_stays_readable() {
    let Some(disk) = SmallDisk::mount("2m") else {
        eprintln!("SKIPPED: mounting a 2 MiB tmpfs is not permitted here (needs root); the disk-full test did not run");
        return;
    };
    let mut relay = Relay::start_in(
        disk.dir.clone(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        &["--queue-min-free-bytes", "262144"],
    )
    .await
    .unwrap();
    let token = relay.token("dev").unwrap();
    let target = Flaky::start().await;
    let data = tempfile::tempdir().unwrap();
    let env = [("PORTHOLE_DATA_DIR", data.path().to_str().unwrap())];
    reserve(&relay, &token, "full", &env, &[]).await;

    // 8 KiB webhooks until the relay refuses: every answer is 202 or a clear 507.
    let mut c = connect(relay.http).await.unwrap();
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..2000 {
        let body = format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(8192));
        let a = send(
            &mut c,
            "full.localhost",
            "POST",
            "/hook",
            &[],
            Bytes::from(body.clone()),
        )
        .await
        .unwrap();
        match a.status {
            202 => acked.push(Sent {
                body,
                status: 202,
                id: a.header("x-porthole-queue-id").map(|v| queue_num(&v)),
            }),
            507 => {
                refused = Some(a);
                break;
            }
            s => panic!("unexpected status {s}: {:?}", a.body),
        }
    }
    let refused = refused.expect("the small disk filled up");
    assert!(String::from_utf8_lossy(&refused.body).contains("storage is full"));
    assert!(!acked.is_empty());
    // The next one is refused the same way, and the log says why.
    let a = send(
        &mut c,
        "full.localhost",
        "POST",
        "/hook",
        &[],
        Bytes::from("x".repeat(8192)),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 507);
    assert!(
        relay.proc.stderr().contains("storage is full"),
        "{}",
        relay.proc.stderr()
    );

    // Readable: the operator lists it, a restarted relay opens it, and the client gets
    // every acknowledged webhook once.
    assert_eq!(
        admin_list(&relay, &["--state", "queued"]).len(),
        acked.len()
    );
    relay
        .restart(&["--queue-min-free-bytes", "262144"])
        .await
        .unwrap();
    let _client = Client::start_with_env(
        &relay,
        &target.addr.to_string(),
        &token,
        &["--name", "full"],
        &env,
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !admin_list(&relay, &["--state", "queued"]).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the queue did not drain; relay log:\n{}",
            relay.proc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_exactly_once_in_order(&acked, &target.delivered());
    drop(relay);
    drop(disk);
}

/// One call on the inspector API of a running daemon: status and JSON body.
async fn inspector_api(inspect: &str, method: &str, path: &str) -> (u16, serde_json::Value) {
    let addr = inspect.trim_start_matches("http://").parse().unwrap();
    let a = request(addr, "127.0.0.1", method, path, &[], Bytes::new())
        .await
        .unwrap();
    let v = serde_json::from_slice(&a.body)
        .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {:?}", a.body));
    (a.status, v)
}

#[tokio::test]
async fn the_inspector_shows_dead_letters_and_drops_them() {
    let relay = Relay::start(&["--queue-retry-base", "50ms", "--queue-max-attempts", "2"])
        .await
        .unwrap();
    let token = relay.token("dev").unwrap();
    let target = Flaky::start().await;
    target.fail.store(500, Ordering::SeqCst);
    let data = tempfile::tempdir().unwrap();
    let env = [("PORTHOLE_DATA_DIR", data.path().to_str().unwrap())];
    let client = Client::start_with_env(
        &relay,
        &target.addr.to_string(),
        &token,
        &[
            "--name",
            "doomed",
            "--delivery",
            "queue",
            "--inspect",
            "127.0.0.1:0",
        ],
        &env,
    )
    .await
    .unwrap();
    let inspect = client.ready["inspect"].as_str().unwrap().to_owned();
    let a = request(
        relay.http,
        &client.host(),
        "POST",
        "/hook",
        &[],
        Bytes::from_static(b"{\"n\":1}"),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 202);

    // The Queue view's API: the entry ends dead after two attempts.
    let deadline = Instant::now() + Duration::from_secs(20);
    let entry = loop {
        let (status, v) = inspector_api(&inspect, "GET", "/api/queue").await;
        assert_eq!(status, 200, "{v}");
        let entries = v["entries"].as_array().unwrap().clone();
        assert!(entries.len() <= 1, "{v}");
        if let Some(e) = entries.first().filter(|e| e["state"] == "dead") {
            break e.clone();
        }
        assert!(Instant::now() < deadline, "never dead: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(entry["name"], "doomed", "{entry}");
    assert_eq!(entry["method"], "POST", "{entry}");
    assert_eq!(entry["uri"], "/hook", "{entry}");
    assert_eq!(entry["attempts"], 2, "{entry}");
    assert_eq!(entry["last_status"], 500, "{entry}");
    let id = entry["id"].as_u64().unwrap();

    // An id of no name of this token is the relay's refusal, passed on as 502.
    let (status, v) =
        inspector_api(&inspect, "POST", &format!("/api/queue/{}/drop", id + 1000)).await;
    assert_eq!(status, 502, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("no queued exchange"),
        "{v}"
    );

    let (status, v) = inspector_api(&inspect, "POST", &format!("/api/queue/{id}/drop")).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["ok"].as_str().unwrap().contains("dropped"), "{v}");
    let (status, v) = inspector_api(&inspect, "GET", "/api/queue").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["entries"], serde_json::json!([]), "{v}");
    assert!(admin_list(&relay, &[]).is_empty());
}

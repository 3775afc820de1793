//! Webhook signatures end to end: the verdict in `--json` events and the inspector
//! API, enforcement in the client (401 before the target sees the request), the
//! relay operator's rule for a reserved name, and replays signed afresh so the app's
//! own verification passes (checked at the target with webhook-verify).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use porthole_tests::*;
use serde_json::{json, Value};
use webhook_verify::{SignedRequest, Verdict, Verifier};

const T: Duration = Duration::from_secs(10);
const STRIPE: &str = "stripe:whsec_e2e_secret";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The headers a sender would attach to `body` posted to `url`, signed at `at`.
fn signed(spec: &str, url: &str, body: &[u8], at: i64) -> Vec<(String, String)> {
    let v = Verifier::from_spec(spec).unwrap();
    let req = SignedRequest {
        method: "POST",
        url,
        headers: &[],
        body,
    };
    v.sign(&req, at).unwrap()
}

async fn post(
    relay: &Relay,
    host: &str,
    path: &str,
    headers: &[(String, String)],
    body: &'static [u8],
) -> Answer {
    let hs: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    request(
        relay.http,
        host,
        "POST",
        path,
        &hs,
        Bytes::from_static(body),
    )
    .await
    .unwrap()
}

/// Verifies what the target received, as the app's own code would.
fn verify_at_target(spec: &str, rec: &Recorded, url: &str) -> Verdict {
    Verifier::from_spec(spec).unwrap().verify(
        &SignedRequest {
            method: &rec.method,
            url,
            headers: &rec.headers,
            body: &rec.body,
        },
        now(),
    )
}

struct Inspected {
    proc: Proc,
    host: String,
    inspect: SocketAddr,
    _data: tempfile::TempDir,
}

async fn start_inspected(relay: &Relay, target: &Target, extra: &[&str]) -> Inspected {
    let token = relay.token("dev").unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = vec![
        "http".into(),
        target.addr.to_string(),
        "--relay".into(),
        relay.tunnel.to_string(),
        "--relay-pin".into(),
        relay.pin.clone(),
        "--inspect".into(),
        "127.0.0.1:0".into(),
        "--json".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut proc = Proc::spawn(
        &bin("porthole"),
        &args,
        &[
            ("PORTHOLE_TOKEN", token.as_str()),
            ("PORTHOLE_DATA_DIR", &data.path().display().to_string()),
        ],
    )
    .unwrap();
    let ready = proc.event("ready", READY_TIMEOUT).await.unwrap();
    Inspected {
        host: format!("{}.localhost", ready["name"].as_str().unwrap()),
        inspect: ready["inspect"]
            .as_str()
            .unwrap()
            .trim_start_matches("http://")
            .parse()
            .unwrap(),
        proc,
        _data: data,
    }
}

async fn api(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Value {
    let host = addr.to_string();
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let r = request(
        addr,
        &host,
        method,
        path,
        &[("content-type", b"application/json")],
        body,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    serde_json::from_slice(&r.body).unwrap()
}

#[tokio::test]
async fn verdicts_show_in_json_events_and_the_inspector() {
    let relay = Relay::start(&[]).await.unwrap();
    let target = Target::start().await.unwrap();
    let mut c = start_inspected(&relay, &target, &["--verify", STRIPE]).await;
    let url = format!("http://{}/stripe", c.host);
    let body: &'static [u8] = br#"{"id":"evt_1","type":"charge.succeeded"}"#;

    let good = signed(STRIPE, &url, body, now());
    assert_eq!(
        post(&relay, &c.host, "/stripe", &good, body).await.status,
        200
    );
    let ev = c.proc.event("request", T).await.unwrap();
    assert_eq!(ev["signature"]["provider"], "stripe");
    assert_eq!(ev["signature"]["result"], "valid", "{ev}");
    let valid_id = ev["id"].as_u64().unwrap();

    // Report-only: a tampered body still reaches the target, marked invalid.
    let tampered: &'static [u8] = br#"{"id":"evt_1","type":"charge.refunded"}"#;
    assert_eq!(
        post(&relay, &c.host, "/stripe", &good, tampered)
            .await
            .status,
        200
    );
    let ev = c.proc.event("request", T).await.unwrap();
    assert_eq!(ev["signature"]["result"], "invalid_signature", "{ev}");
    let invalid_id = ev["id"].as_u64().unwrap();

    // Signed 400 s ago: authentic but stale, with the skew in the detail.
    let old = signed(STRIPE, &url, body, now() - 400);
    post(&relay, &c.host, "/stripe", &old, body).await;
    let ev = c.proc.event("request", T).await.unwrap();
    assert_eq!(ev["signature"]["result"], "stale_timestamp", "{ev}");
    assert!(ev["signature"]["detail"]
        .as_str()
        .unwrap()
        .contains("tolerance 300 s"));

    // No signature at all.
    post(&relay, &c.host, "/stripe", &[], body).await;
    let ev = c.proc.event("request", T).await.unwrap();
    assert_eq!(ev["signature"]["result"], "missing_header", "{ev}");
    assert_eq!(target.seen().len(), 4);

    let detail = api(c.inspect, "GET", &format!("/api/requests/{valid_id}"), None).await;
    assert_eq!(detail["signature"]["result"], "valid");
    let list = api(c.inspect, "GET", "/api/requests", None).await;
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == invalid_id)
        .cloned()
        .unwrap();
    assert_eq!(row["signature"]["result"], "invalid_signature");
    assert_eq!(row["signature"]["provider"], "stripe");
    // The secret is never printed.
    assert!(!c.proc.stderr().contains("whsec_e2e_secret"));
}

#[tokio::test]
async fn replays_are_signed_afresh_unless_told_not_to() {
    let relay = Relay::start(&[]).await.unwrap();
    let target = Target::start().await.unwrap();
    let mut c = start_inspected(&relay, &target, &["--verify", STRIPE]).await;
    let url = format!("http://{}/stripe", c.host);
    let body: &'static [u8] = br#"{"id":"evt_2"}"#;
    // Captured long ago: replaying the captured headers as they are would fail.
    let old = signed(STRIPE, &url, body, now() - 3600);
    post(&relay, &c.host, "/stripe", &old, body).await;
    let ev = c.proc.event("request", T).await.unwrap();
    assert_eq!(ev["signature"]["result"], "stale_timestamp");
    let id = ev["id"].as_u64().unwrap();
    assert!(matches!(
        verify_at_target(STRIPE, &target.last().unwrap(), &url),
        Verdict::StaleTimestamp { .. }
    ));

    let replay = api(
        c.inspect,
        "POST",
        &format!("/api/requests/{id}/replay"),
        None,
    )
    .await;
    let new_id = replay["id"].as_u64().unwrap();
    let at_target = target.last().unwrap();
    assert_eq!(at_target.body, body);
    assert_eq!(
        verify_at_target(STRIPE, &at_target, &url),
        Verdict::Valid,
        "the re-signed replay must pass the app's own check"
    );
    let ev = c.proc.event("request", T).await.unwrap();
    assert_eq!(ev["replay_of"], id);
    assert_eq!(ev["signature"]["result"], "valid", "{ev}");
    let detail = api(c.inspect, "GET", &format!("/api/requests/{new_id}"), None).await;
    assert_eq!(detail["signature"]["result"], "valid");

    // An edited replay is signed over the new body.
    let edited = api(
        c.inspect,
        "POST",
        &format!("/api/requests/{id}/replay"),
        Some(json!({"body": "{\"id\":\"evt_edited\"}"})),
    )
    .await;
    assert!(edited["id"].as_u64().is_some());
    let at_target = target.last().unwrap();
    assert_eq!(&at_target.body[..], br#"{"id":"evt_edited"}"#);
    assert_eq!(verify_at_target(STRIPE, &at_target, &url), Verdict::Valid);

    // `porthole replay --no-resign` keeps the captured (stale) headers. (An async
    // command: the recording target runs on this test's runtime.)
    let out = tokio::process::Command::new(bin("porthole"))
        .args([
            "replay",
            &id.to_string(),
            "--no-resign",
            "--inspect",
            &c.inspect.to_string(),
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(matches!(
        verify_at_target(STRIPE, &target.last().unwrap(), &url),
        Verdict::StaleTimestamp { .. }
    ));
}

#[tokio::test]
async fn the_client_enforces_before_the_target_sees_anything() {
    let relay = Relay::start(&[]).await.unwrap();
    let target = Target::start().await.unwrap();
    let token = relay.token("dev").unwrap();
    let gh = "github:e2e-github-secret";
    let mut c = Client::start(
        &relay,
        &target.addr.to_string(),
        &token,
        &["--verify", gh, "--verify-enforce"],
    )
    .await
    .unwrap();
    let host = c.host();
    let url = format!("http://{host}/gh");
    let body: &'static [u8] = br#"{"zen":"Keep it logically awesome."}"#;
    let bad = signed(gh, &url, b"something else", now());
    let r = post(&relay, &host, "/gh", &bad, body).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("x-porthole-error").as_deref(),
        Some("signature-invalid")
    );
    assert!(String::from_utf8_lossy(&r.body).contains("does not match"));
    let r = post(&relay, &host, "/gh", &[], body).await;
    assert_eq!(r.status, 401);
    assert!(
        target.seen().is_empty(),
        "the target saw a rejected request"
    );
    let ev = c.proc.event("request", T).await.unwrap();
    assert_eq!(ev["outcome"], "rejected");
    assert_eq!(ev["status"], 401);
    assert_eq!(ev["signature"]["result"], "invalid_signature");

    let good = signed(gh, &url, body, now());
    let r = post(&relay, &host, "/gh", &good, body).await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], body);
    let seen = target.last().unwrap();
    assert_eq!(verify_at_target(gh, &seen, &url), Verdict::Valid);
}

#[tokio::test]
async fn the_relay_operator_enforces_for_a_reserved_name() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("relay.toml");
    std::fs::write(
        &cfg,
        "[names.pay-hooks]\nverify_env = [\"E2E_OPERATOR_SPEC\"]\n",
    )
    .unwrap();
    // The relay reads its secret from the environment: start it by hand.
    let data = std::sync::Arc::new(tempfile::tempdir().unwrap());
    std::env::set_var("E2E_OPERATOR_SPEC", STRIPE);
    let relay = Relay::start_in(
        data,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &["--config", &cfg.display().to_string()],
    )
    .await
    .unwrap();
    let target = Target::start().await.unwrap();
    let token = relay.token("ops").unwrap();
    let mut c = Client::start(
        &relay,
        &target.addr.to_string(),
        &token,
        &["--name", "pay-hooks"],
    )
    .await
    .unwrap();
    let host = "pay-hooks.localhost";
    let url = format!("http://{host}/stripe");
    let body: &'static [u8] = br#"{"id":"evt_op"}"#;
    let forged = signed("stripe:whsec_wrong", &url, body, now());
    let r = post(&relay, host, "/stripe", &forged, body).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("x-porthole-error").as_deref(),
        Some("signature-invalid")
    );
    assert!(
        target.seen().is_empty(),
        "a forged webhook crossed the tunnel"
    );
    let ev = c.proc.event("request", T).await.unwrap();
    assert_eq!(ev["outcome"], "refused_at_edge");

    let good = signed(STRIPE, &url, body, now());
    let r = post(&relay, host, "/stripe", &good, body).await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], body);
    assert_eq!(target.seen().len(), 1);
    let metrics = relay.metrics().await.unwrap();
    assert!(
        metrics.contains("porthole_edge_refusals_total{reason=\"signature-invalid\"} 1"),
        "{metrics}"
    );
    assert!(!relay.proc.stderr().contains("whsec_e2e_secret"));
}

#[tokio::test]
async fn twilio_is_checked_against_the_public_url_the_sender_used() {
    let relay = Relay::start(&[]).await.unwrap();
    let target = Target::start().await.unwrap();
    let token = relay.token("dev").unwrap();
    let spec = "twilio:e2e_twilio_auth_token";
    let c = Client::start(
        &relay,
        &target.addr.to_string(),
        &token,
        &["--verify", spec, "--verify-enforce", "--rewrite-host"],
    )
    .await
    .unwrap();
    let host = c.host();
    let path = "/sms?account=AC1&x=%20y";
    let body: &'static [u8] = b"From=%2B15551234567&Body=Hello+there&NumMedia=0";
    let form = (
        "content-type".to_owned(),
        "application/x-www-form-urlencoded".to_owned(),
    );

    // Signed over the target's own URL (what a naive local check would use): refused,
    // even though the Host header the target sees is rewritten to that address.
    let local_url = format!("http://{}{path}", target.addr);
    let mut wrong = signed(spec, &local_url, body, now());
    wrong.push(form.clone());
    assert_eq!(post(&relay, &host, path, &wrong, body).await.status, 401);
    assert!(target.seen().is_empty());

    // Signed over the public URL, as Twilio does: accepted.
    let public_url = format!("http://{host}{path}");
    let mut right = signed(spec, &public_url, body, now());
    right.push(form);
    assert_eq!(post(&relay, &host, path, &right, body).await.status, 200);
    let seen = target.last().unwrap();
    assert_eq!(seen.uri, path);
    assert_eq!(seen.header("host"), Some(target.addr.to_string()));
    assert_eq!(verify_at_target(spec, &seen, &public_url), Verdict::Valid);
}

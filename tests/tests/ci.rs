//! Porthole from CI: a shell job (tests/ci/webhook-job.sh) starts the client, waits for
//! readiness through --ready-file, sends a webhook with curl and asserts it arrived
//! with `porthole wait`; and the same job times out with exit code 4 when no webhook
//! comes. Also: exit codes for a refused token and for usage errors.

use std::path::Path;
use std::time::Duration;

use porthole_tests::{bin, Client, Relay, Target};

async fn run_job(relay: &Relay, target: &Target, token: &str, mode: &str) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/webhook-job.sh");
    let child = tokio::process::Command::new("bash")
        .arg(script)
        .env("PORTHOLE", bin("porthole"))
        .env("PORTHOLE_RELAY", relay.tunnel.to_string())
        .env("PORTHOLE_RELAY_PIN", &relay.pin)
        .env("PORTHOLE_TOKEN", token)
        .env("TARGET", target.addr.to_string())
        .env("RELAY_HTTP", relay.http.to_string())
        .env("MODE", mode)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .expect("the CI job finished within 60s")
        .expect("bash runs")
}

#[tokio::test]
async fn scripted_ci_job_sees_its_webhook_arrive() {
    let relay = Relay::start(&[]).await.unwrap();
    let token = relay.token("ci").unwrap();
    let target = Target::start().await.unwrap();
    let out = run_job(&relay, &target, &token, "match").await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("pr-123.localhost"), "{stdout}");
    // `porthole wait` printed the matching exchange as JSON.
    let line = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line in {stdout}"));
    let ex: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(ex["method"], "POST");
    assert_eq!(ex["path"], "/stripe");
    assert_eq!(ex["tunnel"], "pr-123");
    let seen = target.last().expect("the target got the webhook");
    assert!(String::from_utf8_lossy(&seen.body).contains("payment_intent"));
}

#[tokio::test]
async fn scripted_ci_job_times_out_with_exit_code_4() {
    let relay = Relay::start(&[]).await.unwrap();
    let token = relay.token("ci").unwrap();
    let target = Target::start().await.unwrap();
    let started = std::time::Instant::now();
    let out = run_job(&relay, &target, &token, "timeout").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "stderr:\n{stderr}");
    assert!(
        stderr.contains("no exchange matching POST /never arrived within 2s"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn exit_codes_tell_refusals_from_usage_errors() {
    let relay = Relay::start(&[]).await.unwrap();
    let target = Target::start().await.unwrap();
    // A token the relay does not know: refused, exit 3.
    let mut p = Client::spawn(&relay, &target.addr.to_string(), "not-a-token", &[]).unwrap();
    assert_eq!(
        p.wait_exit(Duration::from_secs(20)).await.unwrap(),
        3,
        "{}",
        p.stderr()
    );
    // A target that is not one: usage error, exit 2.
    let mut p = Client::spawn(&relay, "not a target", "whatever", &[]).unwrap();
    assert_eq!(
        p.wait_exit(Duration::from_secs(20)).await.unwrap(),
        2,
        "{}",
        p.stderr()
    );
    // No inspector there: `porthole wait` cannot reach it, exit 1 at its timeout.
    let out = tokio::process::Command::new(bin("porthole"))
        .args(["wait", "--inspect", "127.0.0.1:9", "--timeout", "1s"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the inspector"));
}

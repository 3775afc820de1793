//! The inspector's web UI in real headless Chromium: live list, detail with a pretty
//! JSON body, replay from the page, keyboard focus. Saves screenshots to
//! `tests/artifacts/inspector.png` (and `inspector-dark.png`) at the workspace root.
//!
//! Needs Debian's `chromium` and `chromium-driver`; set `PORTHOLE_SKIP_BROWSER=1` to
//! skip it where they cannot be installed.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use support::webdriver::{find_browser, Driver};
use support::{exchange, whole, RecordingTarget, TestReplayer};
use tunnel_client::capture::{BoxFuture, ExchangeSink, IdSource, Outcome};
use tunnel_client::inspector::{Inspector, InspectorConfig, QueueAccess, QueueOp};
use tunnel_client::signatures::SignatureCheck;

const WAIT: Duration = Duration::from_secs(15);

/// A relay queue stand-in: one dead entry; records the commands.
#[derive(Default)]
struct FakeQueue {
    ops: std::sync::Mutex<Vec<QueueOp>>,
}

impl QueueAccess for FakeQueue {
    fn command(&self, op: QueueOp) -> BoxFuture<'static, Result<String, String>> {
        let answer = match &op {
            QueueOp::List { .. } => serde_json::json!({"entries": [{
                "id": 12, "name": "pay-hooks", "state": "dead", "method": "POST",
                "uri": "/stripe/webhook", "body_bytes": 120, "received_at": 1_764_000_000_000_i64,
                "attempts": 8, "next_attempt_at": 0, "last_status": 500,
                "last_error": "target answered 500"
            }]}),
            _ => serde_json::json!({"ok": "dropped 12 (pay-hooks)"}),
        };
        self.ops.lock().unwrap().push(op);
        Box::pin(async move { Ok(answer.to_string()) })
    }
}

/// A few varied exchanges so the list looks like a real session.
fn background(insp: &Inspector) {
    let mut form = exchange(
        1,
        "POST",
        "/twilio/sms",
        200,
        b"From=%2B15551234567&Body=Hello+there&NumMedia=0",
    );
    form.request.headers[1] = (
        "content-type".into(),
        b"application/x-www-form-urlencoded".to_vec(),
    );
    form.signature = Some(SignatureCheck {
        provider: "twilio".into(),
        result: "invalid_signature".into(),
        detail: "signature does not match".into(),
    });
    insp.record(&form);
    insp.record(&exchange(2, "GET", "/health", 204, b""));
    let mut fail = exchange(
        3,
        "POST",
        "/github/push?delivery=72d3162e",
        502,
        br#"{"ref":"refs/heads/main"}"#,
    );
    fail.response.as_mut().unwrap().body = whole("target unreachable: connection refused");
    fail.outcome = Outcome::TargetError("connection refused (127.0.0.1:3000)".into());
    insp.record(&fail);
    let mut xml = exchange(
        4,
        "POST",
        "/legacy/soap",
        500,
        b"<?xml version=\"1.0\"?><order id=\"9\"><item sku=\"A1\">2</item></order>",
    );
    xml.request.headers[1] = ("content-type".into(), b"application/xml".to_vec());
    insp.record(&xml);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_shows_live_exchanges_and_replays() {
    if std::env::var_os("PORTHOLE_SKIP_BROWSER").is_some_and(|v| v == "1") {
        eprintln!("PORTHOLE_SKIP_BROWSER=1: skipping the browser test");
        return;
    }
    let (chrome, chromedriver) = find_browser().unwrap_or_else(|msg| panic!("{msg}"));

    let dir = tempfile::tempdir().unwrap();
    let insp = Inspector::open(InspectorConfig::new(dir.path().join("history.sqlite3"))).unwrap();
    background(&insp);
    insp.flush().await;
    let target = RecordingTarget::start().await;
    let replayer = Arc::new(TestReplayer {
        target: target.addr,
        sink: insp.clone(),
        ids: IdSource::new(insp.next_id() + 1),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(insp.clone().run(listener, replayer, async {
        let _ = stop_rx.await;
    }));

    let driver = Driver::start(&chromedriver)
        .await
        .expect("starting chromedriver");
    let session = driver
        .session(&chrome, &dir.path().join("profile"))
        .await
        .expect("starting chromium");
    session.goto(&format!("http://{addr}/")).await.unwrap();
    session
        .wait_until(
            "the live event stream",
            "return document.querySelector('#live').classList.contains('on')",
            WAIT,
        )
        .await
        .unwrap();
    if let Err(e) = session.wait_for("#list .row[data-id=\"4\"]", WAIT).await {
        let dump = session.execute("return [document.querySelector('#list').outerHTML, document.querySelector('#toast').textContent, document.body.innerText]", serde_json::json!([])).await;
        panic!("{e}: {dump:?}");
    }

    // Recorded after the page loaded: it must appear without a reload.
    let id = insp.next_id();
    let body = br#"{"id":"evt_1PzX","type":"invoice.paid","data":{"object":{"amount_paid":4200,"currency":"eur","lines":[{"price":"price_basic","quantity":1}]}},"livemode":false}"#;
    let mut hook = exchange(id, "POST", "/stripe/webhook", 200, body);
    hook.request.headers.push((
        "user-agent".into(),
        b"Stripe/1.0 (+https://stripe.com/docs/webhooks)".to_vec(),
    ));
    hook.signature = Some(SignatureCheck {
        provider: "stripe".into(),
        result: "valid".into(),
        detail: "signature valid".into(),
    });
    insp.record(&hook);
    let row = session
        .wait_for(&format!("#list .row[data-id=\"{id}\"]"), WAIT)
        .await
        .unwrap();
    // Signature badges in the list: valid in green, invalid (row 1) in red.
    let ok = session
        .wait_for(&format!("#list .row[data-id=\"{id}\"] .sig-ok"), WAIT)
        .await
        .unwrap();
    assert!(session.text(&ok).await.unwrap().contains("stripe"));
    let bad = session
        .wait_for("#list .row[data-id=\"1\"] .sig-bad", WAIT)
        .await
        .unwrap();
    assert!(session.text(&bad).await.unwrap().contains("twilio"));
    assert!(session
        .text(&row)
        .await
        .unwrap()
        .contains("/stripe/webhook"));

    // Open it: the JSON body is pretty-printed and secrets are masked.
    session.click(&row).await.unwrap();
    let pretty = session
        .wait_for("#req-body pre.pretty.json", WAIT)
        .await
        .unwrap();
    let text = session.text(&pretty).await.unwrap();
    assert!(text.contains("\"type\": \"invoice.paid\""), "{text}");
    let sig = session.wait_for("#detail #signature", WAIT).await.unwrap();
    assert!(session
        .text(&sig)
        .await
        .unwrap()
        .contains("stripe · signature valid"));
    assert!(
        text.contains("\n  \"data\": {\n    \"object\": {"),
        "not indented: {text}"
    );
    let masked = session
        .find("#req-part .masked")
        .await
        .unwrap()
        .expect("authorization is masked");
    let headers = session
        .text(
            &session
                .find("#req-part table.headers")
                .await
                .unwrap()
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(
        !headers.contains("sk_test_123"),
        "secret shown before a click: {headers}"
    );
    session.click(&masked).await.unwrap();
    let headers = session
        .text(
            &session
                .find("#req-part table.headers")
                .await
                .unwrap()
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(headers.contains("Bearer sk_test_123"), "{headers}");

    // Replay from the page: the target receives it and the new exchange shows up live.
    let replay = session.find("#btn-replay").await.unwrap().unwrap();
    session.click(&replay).await.unwrap();
    let got = target.wait_for(1, WAIT).await;
    assert_eq!(got[0].header("porthole-replay"), Some(id.to_string()));
    assert_eq!(&got[0].body[..], body);
    let new_row = session
        .wait_for(&format!("#list .row[data-id=\"{}\"]", id + 1), WAIT)
        .await
        .unwrap();
    assert!(session
        .text(&new_row)
        .await
        .unwrap()
        .contains(&format!("↻{id}")));

    // Edit & replay: change the path and body in the dialog.
    let edit = session.find("#btn-edit").await.unwrap().unwrap();
    session.click(&edit).await.unwrap();
    session
        .wait_until(
            "the editor",
            "return document.querySelector('#editor').open",
            WAIT,
        )
        .await
        .unwrap();
    session
        .execute(
            "document.querySelector('#edit-path').value = '/stripe/webhook?edited=1';\
             document.querySelector('#edit-body').value = '{\"edited\":true}'; return true;",
            serde_json::json!([]),
        )
        .await
        .unwrap();
    let send = session.find("#edit-send").await.unwrap().unwrap();
    session.click(&send).await.unwrap();
    let got = target.wait_for(2, WAIT).await;
    assert_eq!(got[1].uri, "/stripe/webhook?edited=1");
    assert_eq!(&got[1].body[..], br#"{"edited":true}"#);
    assert_eq!(got[1].header("porthole-replay"), Some(id.to_string()));
    session
        .wait_until(
            "the editor to close",
            "return !document.querySelector('#editor').open",
            WAIT,
        )
        .await
        .unwrap();
    session
        .wait_for(&format!("#list .row[data-id=\"{}\"]", id + 2), WAIT)
        .await
        .unwrap();

    // Keyboard: `/` focuses the search box.
    let list = session.find("#list").await.unwrap().unwrap();
    session.send_keys(&list, "/").await.unwrap();
    session
        .wait_until(
            "search focus",
            "return document.activeElement.id === 'f-q'",
            WAIT,
        )
        .await
        .unwrap();
    session.execute("document.activeElement.blur(); document.querySelector('#toast').hidden = true; return true;", serde_json::json!([])).await.unwrap();

    // The Queue view: the relay's entries with their state; Drop runs on the relay.
    let queue = Arc::new(FakeQueue::default());
    insp.set_queue(queue.clone());
    let open_queue = session.find("#queue-open").await.unwrap().unwrap();
    session.click(&open_queue).await.unwrap();
    let dead = session
        .wait_for("#queue-rows td.qs-dead", WAIT)
        .await
        .unwrap();
    assert_eq!(session.text(&dead).await.unwrap(), "dead");
    session
        .execute(
            "window.confirm = () => true; return true;",
            serde_json::json!([]),
        )
        .await
        .unwrap();
    let drop_btn = session
        .find("#queue-rows tr:first-child button:last-child")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(session.text(&drop_btn).await.unwrap(), "Drop");
    session.click(&drop_btn).await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while !queue
        .ops
        .lock()
        .unwrap()
        .contains(&QueueOp::Drop { id: 12 })
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no drop reached the relay"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    session
        .execute(
            "document.querySelector('#queue').close(); document.querySelector('#toast').hidden = true; return true;",
            serde_json::json!([]),
        )
        .await
        .unwrap();

    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/artifacts/inspector.png");
    session.screenshot(&shot).await.unwrap();
    let dark = serde_json::json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]});
    session
        .cdp("Emulation.setEmulatedMedia", dark)
        .await
        .unwrap();
    session
        .screenshot(&shot.with_file_name("inspector-dark.png"))
        .await
        .unwrap();
    session.close().await.unwrap();
    drop(driver);

    stop_tx.send(()).unwrap();
    tokio::time::timeout(WAIT, server)
        .await
        .expect("shutdown")
        .unwrap()
        .unwrap();
}

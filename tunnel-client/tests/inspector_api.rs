//! Inspector store and API, end to end through its real input seam
//! (`ExchangeSink::record`) and its router; one test over a real socket.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use base64::Engine as _;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use support::{exchange, whole, NoReplayer, RecordingTarget, TestReplayer};
use tower::ServiceExt as _;
use tunnel_client::capture::{ExchangeSink, IdSource, Outcome, Replayer};
use tunnel_client::inspector::{self, Inspector, InspectorConfig, InspectorError};

fn open(dir: &tempfile::TempDir) -> Arc<Inspector> {
    Inspector::open(InspectorConfig::new(dir.path().join("history.sqlite3"))).unwrap()
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

async fn call(app: &axum::Router, method: &str, uri: &str, body: Option<&str>) -> Answer {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "127.0.0.1:4040")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .unwrap();
    call_req(app, req).await
}

async fn call_req(app: &axum::Router, req: Request<Body>) -> Answer {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

fn ids(list: &Value) -> Vec<u64> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn lists_newest_first_and_shows_detail() {
    let dir = tempfile::tempdir().unwrap();
    let insp = open(&dir);
    insp.record(&exchange(
        1,
        "POST",
        "/stripe",
        200,
        br#"{"type":"charge.succeeded"}"#,
    ));
    let mut failed = exchange(2, "GET", "/health?x=1", 502, b"");
    failed.outcome = Outcome::TargetError("connection refused".into());
    insp.record(&failed);
    insp.flush().await;
    let app = inspector::router(insp.clone(), Arc::new(NoReplayer));

    let list = call(&app, "GET", "/api/requests", None).await;
    assert_eq!(list.status, StatusCode::OK);
    let list = list.json();
    assert_eq!(ids(&list), [2, 1]);
    let first = &list[1];
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/stripe");
    assert_eq!(first["status"], 200);
    assert_eq!(first["tunnel"], "pay-hooks");
    assert_eq!(first["outcome"], "completed");
    assert_eq!(first["error"], Value::Null);
    assert_eq!(first["replay_of"], Value::Null);
    assert_eq!(first["duration_ms"], 2.25);
    assert_eq!(first["started_at"], "2024-05-01T12:51:30.124Z");
    assert_eq!(first["request_size"], 27);
    assert_eq!(first["response_size"], 14);
    assert_eq!(first["visitor"], "203.0.113.7:55123");
    assert_eq!(list[0]["outcome"], "target_error");
    assert_eq!(list[0]["error"], "connection refused");

    let detail = call(&app, "GET", "/api/requests/1", None).await.json();
    assert_eq!(detail["id"], 1);
    assert_eq!(detail["time_to_head_ms"], 1.5);
    assert_eq!(detail["target"], "http://127.0.0.1:3000");
    let req = &detail["request"];
    assert_eq!(req["method"], "POST");
    assert_eq!(
        req["headers"][1],
        json!(["content-type", "application/json"])
    );
    assert_eq!(req["body_text"], r#"{"type":"charge.succeeded"}"#);
    assert_eq!(req["body_size"], 27);
    assert_eq!(req["body_truncated"], false);
    let b64 = req["body_base64"].as_str().unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
        br#"{"type":"charge.succeeded"}"#
    );
    assert_eq!(detail["response"]["status"], 200);
    assert_eq!(detail["response"]["reason"], "OK");
    assert_eq!(detail["response"]["body_text"], r#"{"received":1}"#);
}

#[tokio::test]
async fn filters_and_search() {
    let dir = tempfile::tempdir().unwrap();
    let insp = open(&dir);
    insp.record(&exchange(
        1,
        "POST",
        "/stripe/events",
        200,
        br#"{"customer":"cus_ALPHA"}"#,
    ));
    insp.record(&exchange(2, "GET", "/github/hook", 500, b""));
    insp.record(&exchange(
        3,
        "POST",
        "/github/push",
        503,
        b"ref=refs/heads/main",
    ));
    let mut ex4 = exchange(4, "PUT", "/other", 201, b"");
    ex4.request
        .headers
        .push(("x-delivery".into(), b"Needle-In-Header".to_vec()));
    insp.record(&ex4);
    let mut ex5 = exchange(5, "DELETE", "/gone", 404, b"");
    ex5.response = None;
    ex5.outcome = Outcome::TargetTimeout;
    insp.record(&ex5);
    insp.flush().await;
    let app = inspector::router(insp, Arc::new(NoReplayer));
    let list = |q: &'static str| {
        let app = app.clone();
        async move {
            let a = call(&app, "GET", &format!("/api/requests{q}"), None).await;
            assert_eq!(a.status, StatusCode::OK, "{q}: {:?}", a.body);
            ids(&a.json())
        }
    };
    assert_eq!(list("?method=post").await, [3, 1]);
    assert_eq!(list("?status=5xx").await, [3, 2]);
    assert_eq!(list("?status=201").await, [4]);
    assert_eq!(list("?status=none").await, [5]);
    assert_eq!(list("?path=GITHUB").await, [3, 2]);
    assert_eq!(list("?q=cus_alpha").await, [1], "request body search");
    assert_eq!(list("?q=needle-in").await, [4], "header value search");
    assert_eq!(
        list("?q=x-delivery:%20needle").await,
        [4],
        "header line search"
    );
    assert_eq!(list("?q=received%22:3").await, [3], "response body search");
    assert_eq!(list("?q=%2Fgone").await, [5], "path search");
    assert_eq!(list("?q=nothing-matches").await, Vec::<u64>::new());
    assert_eq!(list("?limit=2").await, [5, 4]);
    assert_eq!(list("?limit=2&before=4").await, [3, 2]);
    assert_eq!(list("?method=post&status=2xx").await, [1]);
    assert_eq!(
        list("?status=&method=").await,
        [5, 4, 3, 2, 1],
        "empty params ignored"
    );
    let timeout = call(&app, "GET", "/api/requests/5", None).await.json();
    assert_eq!(timeout["outcome"], "target_timeout");
    assert_eq!(timeout["response"], Value::Null);
    assert_eq!(timeout["status"], Value::Null);
}

#[tokio::test]
async fn raw_bodies_are_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let insp = open(&dir);
    let binary: Vec<u8> = (0..=255u8).rev().chain([0xff, 0xfe, 0x00, 0xc3]).collect();
    let mut ex = exchange(7, "POST", "/upload", 200, &binary);
    ex.request.headers[1] = ("content-type".into(), b"application/octet-stream".to_vec());
    ex.request
        .headers
        .push(("x-latin1".into(), vec![b'a', 0xe9, b'b']));
    ex.response.as_mut().unwrap().body = whole(Bytes::from_static(&[0x89, b'P', b'N', b'G', 0]));
    ex.response.as_mut().unwrap().headers = vec![("content-type".into(), b"image/png".to_vec())];
    insp.record(&ex);
    insp.flush().await;
    let app = inspector::router(insp, Arc::new(NoReplayer));

    let raw = call(&app, "GET", "/api/requests/7/body?part=request", None).await;
    assert_eq!(raw.status, StatusCode::OK);
    assert_eq!(&raw.body[..], &binary[..]);
    assert_eq!(raw.headers["content-type"], "application/octet-stream");
    assert_eq!(raw.headers["x-porthole-body-truncated"], "false");
    let raw = call(&app, "GET", "/api/requests/7/body?part=response", None).await;
    assert_eq!(&raw.body[..], &[0x89, b'P', b'N', b'G', 0]);
    assert_eq!(raw.headers["content-type"], "image/png");
    assert!(raw.headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("sandbox"));

    let detail = call(&app, "GET", "/api/requests/7", None).await.json();
    assert_eq!(detail["request"]["body_text"], Value::Null);
    let b64 = detail["request"]["body_base64"].as_str().unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
        binary
    );
    let latin1 = &detail["request"]["headers"][4];
    assert_eq!(latin1[0], "x-latin1");
    assert_eq!(latin1[2], "base64");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(latin1[1].as_str().unwrap())
            .unwrap(),
        [b'a', 0xe9, b'b']
    );
}

/// Checks the HAR 1.2 fields that importers rely on.
fn assert_valid_har(doc: &Value, entries: usize) {
    let log = &doc["log"];
    assert_eq!(log["version"], "1.2");
    assert!(log["creator"]["name"].is_string() && log["creator"]["version"].is_string());
    let list = log["entries"].as_array().expect("entries array");
    assert_eq!(list.len(), entries);
    for e in list {
        assert!(e["startedDateTime"].as_str().unwrap().ends_with('Z'));
        assert!(e["time"].is_number());
        assert!(e["cache"].is_object());
        for t in ["send", "wait", "receive"] {
            assert!(e["timings"][t].as_f64().unwrap() >= 0.0, "timings.{t}");
        }
        let req = &e["request"];
        assert!(req["method"].is_string());
        assert!(req["url"].as_str().unwrap().starts_with("http://"));
        assert!(req["httpVersion"].is_string());
        for k in ["cookies", "headers", "queryString"] {
            assert!(req[k].is_array(), "request.{k}");
        }
        assert!(req["headersSize"].is_i64() && req["bodySize"].is_i64());
        let resp = &e["response"];
        assert!(resp["status"].is_u64() && resp["statusText"].is_string());
        assert!(resp["cookies"].is_array() && resp["headers"].is_array());
        assert!(resp["content"]["size"].is_i64() && resp["content"]["mimeType"].is_string());
        assert!(resp["redirectURL"].is_string());
        for h in req["headers"]
            .as_array()
            .unwrap()
            .iter()
            .chain(resp["headers"].as_array().unwrap())
        {
            assert!(h["name"].is_string() && h["value"].is_string());
        }
    }
}

#[tokio::test]
async fn exports_har() {
    let dir = tempfile::tempdir().unwrap();
    let insp = open(&dir);
    insp.record(&exchange(
        1,
        "POST",
        "/stripe?live=false&x",
        200,
        br#"{"a":1}"#,
    ));
    let mut bin = exchange(2, "POST", "/bin", 200, &[0xff, 0x00]);
    bin.response = None;
    bin.outcome = Outcome::Cancelled("visitor went away".into());
    insp.record(&bin);
    insp.flush().await;
    let app = inspector::router(insp, Arc::new(NoReplayer));

    let one = call(&app, "GET", "/api/requests/1/har", None).await;
    assert_eq!(one.status, StatusCode::OK);
    assert!(one.headers["content-disposition"]
        .to_str()
        .unwrap()
        .contains("porthole-1.har"));
    let doc = one.json();
    assert_valid_har(&doc, 1);
    let e = &doc["log"]["entries"][0];
    assert_eq!(
        e["request"]["url"],
        "http://pay-hooks.localhost:8080/stripe?live=false&x"
    );
    assert_eq!(
        e["request"]["queryString"][0],
        json!({"name": "live", "value": "false"})
    );
    assert_eq!(e["request"]["postData"]["text"], r#"{"a":1}"#);
    assert_eq!(e["request"]["postData"]["mimeType"], "application/json");
    assert_eq!(e["response"]["content"]["text"], r#"{"received":1}"#);
    assert_eq!(e["timings"]["wait"], 1.5);

    let all = call(&app, "GET", "/api/har", None).await.json();
    assert_valid_har(&all, 2);
    assert_eq!(
        all["log"]["entries"][0]["request"]["postData"]["encoding"],
        "base64"
    );
    assert_eq!(all["log"]["entries"][0]["response"]["status"], 0);
    let filtered = call(&app, "GET", "/api/har?path=stripe", None).await.json();
    assert_valid_har(&filtered, 1);
}

#[tokio::test]
async fn evicts_oldest_by_count_and_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = InspectorConfig::new(dir.path().join("count.sqlite3"));
    cfg.max_exchanges = 3;
    let insp = Inspector::open(cfg).unwrap();
    for id in 1..=5 {
        insp.record(&exchange(id, "POST", "/e", 200, b"x"));
    }
    insp.flush().await;
    let app = inspector::router(insp, Arc::new(NoReplayer));
    assert_eq!(
        ids(&call(&app, "GET", "/api/requests", None).await.json()),
        [5, 4, 3]
    );

    let mut cfg = InspectorConfig::new(dir.path().join("bytes.sqlite3"));
    cfg.max_bytes = 12_000;
    let insp = Inspector::open(cfg).unwrap();
    for id in 1..=10 {
        insp.record(&exchange(id, "POST", "/big", 200, &vec![b'z'; 3000]));
    }
    insp.flush().await;
    let app = inspector::router(insp.clone(), Arc::new(NoReplayer));
    let kept = ids(&call(&app, "GET", "/api/requests", None).await.json());
    assert_eq!(kept, [10, 9, 8], "~3.4 KB exchanges within a 12 KB budget");

    // One exchange larger than the whole budget is still kept, alone.
    insp.record(&exchange(11, "POST", "/huge", 200, &vec![b'z'; 20_000]));
    insp.flush().await;
    assert_eq!(
        ids(&call(&app, "GET", "/api/requests", None).await.json()),
        [11]
    );
}

#[tokio::test]
async fn a_flood_keeps_the_newest_exchanges_without_dropping_or_piling_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = InspectorConfig::new(dir.path().join("flood.sqlite3"));
    cfg.max_exchanges = 10;
    let insp = Inspector::open(cfg).unwrap();
    // 2,000 × 64 KiB = 125 MiB recorded far faster than it could be written one by one.
    let body = vec![b'f'; 64 << 10];
    for id in 1..=2000 {
        insp.record(&exchange(id, "POST", "/flood", 200, &body));
    }
    insp.flush().await;
    assert_eq!(insp.dropped(), 0, "superseded exchanges are not drops");
    let app = inspector::router(insp.clone(), Arc::new(NoReplayer));
    let kept = ids(&call(&app, "GET", "/api/requests", None).await.json());
    // The newest, contiguous; eviction trims to 90% of the limit once it is exceeded.
    assert!((9..=10).contains(&kept.len()), "{kept:?}");
    assert_eq!(
        kept,
        (2001 - kept.len() as u64..=2000)
            .rev()
            .collect::<Vec<u64>>()
    );
    let raw = call(&app, "GET", "/api/requests/2000/body?part=request", None).await;
    assert_eq!(raw.body.len(), body.len());
}

#[tokio::test]
async fn history_survives_reopen_and_ids_continue() {
    let dir = tempfile::tempdir().unwrap();
    let insp = open(&dir);
    assert_eq!(insp.next_id(), 1);
    let bytes: Vec<u8> = vec![0, 159, 146, 150, 255];
    insp.record(&exchange(1, "POST", "/a", 200, &bytes));
    insp.record(&exchange(2, "POST", "/b", 200, b"{}"));
    assert_eq!(
        insp.next_id(),
        3,
        "counts recorded ids before they are stored"
    );
    insp.flush().await;
    drop(insp);

    let insp = open(&dir);
    assert_eq!(insp.next_id(), 3);
    let ids_seeded = IdSource::new(insp.next_id());
    assert_eq!(ids_seeded.next().0, 3);
    let app = inspector::router(insp.clone(), Arc::new(NoReplayer));
    assert_eq!(
        ids(&call(&app, "GET", "/api/requests", None).await.json()),
        [2, 1]
    );
    let raw = call(&app, "GET", "/api/requests/1/body?part=request", None).await;
    assert_eq!(&raw.body[..], &bytes[..]);

    // Clearing keeps the id high-water mark, so old links never point at new exchanges.
    let cleared = call(&app, "DELETE", "/api/requests", None).await;
    assert_eq!(cleared.status, StatusCode::OK);
    assert_eq!(cleared.json(), json!({"deleted": 2}));
    assert_eq!(
        call(&app, "GET", "/api/requests", None).await.json(),
        json!([])
    );
    drop(app);
    drop(insp);
    let insp = open(&dir);
    assert_eq!(insp.next_id(), 3);
}

#[tokio::test]
async fn malformed_calls_get_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let insp = open(&dir);
    insp.record(&exchange(1, "POST", "/a", 200, b"{}"));
    insp.flush().await;
    let app = inspector::router(insp, Arc::new(NoReplayer));
    let cases: &[(&str, &str, Option<&str>, StatusCode, &str)] = &[
        (
            "GET",
            "/api/requests/abc",
            None,
            StatusCode::BAD_REQUEST,
            "invalid exchange id",
        ),
        (
            "GET",
            "/api/requests/-1",
            None,
            StatusCode::BAD_REQUEST,
            "invalid exchange id",
        ),
        (
            "GET",
            "/api/requests/99999999999999999999999",
            None,
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            "GET",
            "/api/requests/42",
            None,
            StatusCode::NOT_FOUND,
            "no exchange 42",
        ),
        (
            "GET",
            "/api/requests/42/har",
            None,
            StatusCode::NOT_FOUND,
            "no exchange",
        ),
        (
            "GET",
            "/api/requests?limit=lots",
            None,
            StatusCode::BAD_REQUEST,
            "invalid query",
        ),
        (
            "GET",
            "/api/requests?status=9xx",
            None,
            StatusCode::BAD_REQUEST,
            "invalid status",
        ),
        (
            "GET",
            "/api/requests?before=x",
            None,
            StatusCode::BAD_REQUEST,
            "invalid query",
        ),
        (
            "GET",
            "/api/requests/1/body?part=middle",
            None,
            StatusCode::BAD_REQUEST,
            "invalid part",
        ),
        (
            "POST",
            "/api/requests/1/replay",
            Some("{not json"),
            StatusCode::BAD_REQUEST,
            "invalid replay edits",
        ),
        (
            "POST",
            "/api/requests/1/replay",
            Some(r#"{"colour":"red"}"#),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            "POST",
            "/api/requests/1/replay",
            Some(r#"{"body_base64":"%%%"}"#),
            StatusCode::BAD_REQUEST,
            "invalid body_base64",
        ),
        (
            "POST",
            "/api/requests/1/replay",
            Some(r#"{"body":"a","body_base64":"YQ=="}"#),
            StatusCode::BAD_REQUEST,
            "either body",
        ),
        (
            "POST",
            "/api/requests/1/replay",
            Some(r#"{"method":"GE T"}"#),
            StatusCode::BAD_REQUEST,
            "invalid method",
        ),
        (
            "POST",
            "/api/requests/1/replay",
            Some(r#"{"path":"no-slash"}"#),
            StatusCode::BAD_REQUEST,
            "invalid path",
        ),
        (
            "POST",
            "/api/requests/1/replay",
            Some(r#"{"headers":[["only-name"]]}"#),
            StatusCode::BAD_REQUEST,
            "each header",
        ),
        (
            "POST",
            "/api/requests/1/replay",
            Some(r#"{"headers":[["bad name","v"]]}"#),
            StatusCode::BAD_REQUEST,
            "invalid header name",
        ),
        (
            "POST",
            "/api/requests/1/replay",
            Some(r#"{"headers":[["x","a\nb"]]}"#),
            StatusCode::BAD_REQUEST,
            "invalid value",
        ),
        (
            "POST",
            "/api/requests/1/replay",
            Some(r#"{"headers":[["x","!!","base64"]]}"#),
            StatusCode::BAD_REQUEST,
            "invalid base64",
        ),
        (
            "POST",
            "/api/requests/7/replay",
            None,
            StatusCode::NOT_FOUND,
            "no exchange 7",
        ),
        (
            "POST",
            "/api/requests/1/replay",
            None,
            StatusCode::BAD_GATEWAY,
            "replay failed",
        ),
        (
            "GET",
            "/api/nope",
            None,
            StatusCode::NOT_FOUND,
            "no such route",
        ),
        (
            "PUT",
            "/api/requests",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed",
        ),
    ];
    for (method, uri, body, status, needle) in cases {
        let a = call(&app, method, uri, *body).await;
        assert_eq!(a.status, *status, "{method} {uri} {body:?}");
        let err = a.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(
            err.contains(needle),
            "{method} {uri}: {err:?} lacks {needle:?}"
        );
    }
}

#[tokio::test]
async fn credential_is_required_off_loopback_and_enforced_when_set() {
    let dir = tempfile::tempdir().unwrap();
    let insp = open(&dir);
    // 0.0.0.0 is not loopback; run must refuse before serving anything.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let err = insp
        .clone()
        .run(listener, Arc::new(NoReplayer), std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(
        err.downcast_ref(),
        Some(InspectorError::CredentialRequired(_))
    ));
    assert!(err.to_string().contains("without a credential"), "{err}");

    let mut cfg = InspectorConfig::new(dir.path().join("auth.sqlite3"));
    cfg.credential = Some(shared_proto::Secret::new("s3cret-value"));
    let insp = Inspector::open(cfg).unwrap();
    assert!(!format!("{insp:?} {:?}", insp.config()).contains("s3cret-value"));
    let app = inspector::router(insp, Arc::new(NoReplayer));
    let get = |auth: Option<&str>, host: &str| {
        let mut req = Request::builder().uri("/api/requests").header("host", host);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.body(Body::empty()).unwrap()
    };
    let none = call_req(&app, get(None, "127.0.0.1:4040")).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert!(none.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    assert!(none.json()["error"]
        .as_str()
        .unwrap()
        .contains("credential"));
    let wrong = call_req(&app, get(Some("Bearer nope"), "127.0.0.1:4040")).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let ui = call_req(
        &app,
        Request::builder().uri("/").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(ui.status, StatusCode::UNAUTHORIZED, "the UI is guarded too");
    let bearer = call_req(
        &app,
        get(Some("Bearer s3cret-value"), "tunnel.example:4040"),
    )
    .await;
    assert_eq!(
        bearer.status,
        StatusCode::OK,
        "any host name once authenticated"
    );
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("me:s3cret-value")
    );
    assert_eq!(
        call_req(&app, get(Some(&basic), "h")).await.status,
        StatusCode::OK
    );

    // Without a credential, a non-loopback Host (DNS rebinding) is refused.
    let app = inspector::router(open(&dir), Arc::new(NoReplayer));
    let rebind = call_req(&app, get(None, "evil.example:4040")).await;
    assert_eq!(rebind.status, StatusCode::FORBIDDEN);
    let cross = Request::builder()
        .method("DELETE")
        .uri("/api/requests")
        .header("host", "127.0.0.1:4040")
        .header("origin", "http://evil.example")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call_req(&app, cross).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn replays_to_the_target_with_edits() {
    let dir = tempfile::tempdir().unwrap();
    let insp = open(&dir);
    let target = RecordingTarget::start().await;
    let replayer: Arc<dyn Replayer> = Arc::new(TestReplayer {
        target: target.addr,
        sink: insp.clone(),
        ids: IdSource::new(100),
    });
    insp.record(&exchange(1, "POST", "/stripe", 200, br#"{"n":1}"#));
    let mut truncated = exchange(2, "POST", "/big", 200, b"partial");
    truncated.request.body.size = 1_000_000;
    truncated.request.body.truncated = true;
    insp.record(&truncated);
    insp.flush().await;
    let app = inspector::router(insp.clone(), replayer);

    // Unedited: same request, plus Porthole-Replay.
    let a = call(&app, "POST", "/api/requests/1/replay", None).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.json(), json!({"id": 100}));
    let got = target.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].uri, "/stripe");
    assert_eq!(&got[0].body[..], br#"{"n":1}"#);
    assert_eq!(got[0].header("porthole-replay").as_deref(), Some("1"));
    assert_eq!(
        got[0].header("stripe-signature").as_deref(),
        Some("t=1,v1=sig1")
    );
    // The new exchange is stored by the time the id is answered.
    let new = call(&app, "GET", "/api/requests/100", None).await;
    assert_eq!(new.status, StatusCode::OK);
    let new = new.json();
    assert_eq!(new["replay_of"], 1);
    assert_eq!(new["response"]["status"], 200);

    // Edited: method, path, full header list, body.
    let edits = json!({
        "method": "PUT",
        "path": "/stripe/v2?retry=1",
        "headers": [["content-type", "text/plain"], ["x-edited", "yes"], ["x-bin", "/w==", "base64"]],
        "body": "edited body",
    });
    let a = call(
        &app,
        "POST",
        "/api/requests/1/replay",
        Some(&edits.to_string()),
    )
    .await;
    assert_eq!(a.json(), json!({"id": 101}));
    let got = target.wait_for(2, Duration::from_secs(5)).await;
    let r = &got[1];
    assert_eq!(
        (r.method.as_str(), r.uri.as_str()),
        ("PUT", "/stripe/v2?retry=1")
    );
    assert_eq!(&r.body[..], b"edited body");
    assert_eq!(r.header("x-edited").as_deref(), Some("yes"));
    assert_eq!(r.header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(r.header("content-length").as_deref(), Some("11"));
    assert_eq!(r.header("porthole-replay").as_deref(), Some("1"));
    assert!(
        r.header("stripe-signature").is_none(),
        "headers were replaced"
    );
    let bin = r.headers.iter().find(|(n, _)| n == "x-bin").unwrap();
    assert_eq!(bin.1, [0xff]);

    // Binary body edit.
    let a = call(
        &app,
        "POST",
        "/api/requests/1/replay",
        Some(r#"{"body_base64":"AP8="}"#),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let got = target.wait_for(3, Duration::from_secs(5)).await;
    assert_eq!(&got[2].body[..], &[0x00, 0xff]);

    // A body captured only in part cannot be replayed as is.
    let a = call(&app, "POST", "/api/requests/2/replay", None).await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert!(a.json()["error"].as_str().unwrap().contains("only in part"));
    let a = call(
        &app,
        "POST",
        "/api/requests/2/replay",
        Some(r#"{"body":"whole"}"#),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn recording_never_blocks_and_counts_drops() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = InspectorConfig::new(dir.path().join("h.sqlite3"));
    cfg.max_exchanges = 100_000;
    let insp = Inspector::open(cfg).unwrap();
    let ex = exchange(1, "POST", "/flood", 200, &vec![b'a'; 2048]);
    let t0 = Instant::now();
    for id in 1..=5000 {
        let mut e = ex.clone();
        e.id.0 = id;
        insp.record(&e);
    }
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "record took {:?}",
        t0.elapsed()
    );
    insp.flush().await;
    let app = inspector::router(insp.clone(), Arc::new(NoReplayer));
    let status = call(&app, "GET", "/api/status", None).await.json();
    let stored = status["exchanges"].as_u64().unwrap();
    assert_eq!(stored + insp.dropped(), 5000, "{status}");
    assert_eq!(status["next_id"], 5001);
}

/// Reads from `sse` into `seen` until it contains `needle` (at most 5 s).
async fn read_until(sse: &mut tokio::net::TcpStream, seen: &mut Vec<u8>, needle: &str) {
    use tokio::io::AsyncReadExt as _;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(seen).contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, sse.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in {:?}", String::from_utf8_lossy(seen)))
            .unwrap();
        assert!(n > 0, "event stream closed");
        seen.extend_from_slice(&buf[..n]);
    }
}

/// The one test over a real socket: SSE, CLI helpers, graceful shutdown.
#[tokio::test]
async fn serves_over_a_socket_with_live_events_and_cli() {
    let dir = tempfile::tempdir().unwrap();
    let insp = open(&dir);
    let target = RecordingTarget::start().await;
    let replayer = Arc::new(TestReplayer {
        target: target.addr,
        sink: insp.clone(),
        ids: IdSource::new(50),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(insp.clone().run(listener, replayer, async {
        let _ = stop_rx.await;
    }));

    // Live events: subscribe, then record, then read the event.
    let mut sse = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::AsyncWriteExt as _;
    sse.write_all(
        format!("GET /api/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    read_until(&mut sse, &mut seen, ": connected").await;
    insp.record(&exchange(7, "POST", "/live", 201, b"{}"));
    read_until(&mut sse, &mut seen, "\"id\":7").await;
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(text.contains("text/event-stream"));
    let data = text
        .lines()
        .find(|l| l.starts_with("data:") && l.contains("\"id\":7"))
        .unwrap();
    let summary: Value = serde_json::from_str(data.trim_start_matches("data:").trim()).unwrap();
    assert_eq!(summary["path"], "/live");
    assert_eq!(summary["status"], 201);

    // CLI helpers against the live daemon.
    use tunnel_client::inspector::cli;
    let at = cli::InspectorAddr {
        inspect: addr.to_string(),
        credential: None,
    };
    let mut out = Vec::new();
    let args = cli::RequestsArgs {
        inspector: at.clone(),
        json: false,
        limit: 10,
        method: None,
        status: None,
        search: None,
    };
    cli::requests(&args, &mut out).await.unwrap();
    let table = String::from_utf8(out).unwrap();
    assert!(
        table.contains("/live") && table.contains("201") && table.contains("POST"),
        "{table}"
    );
    let mut out = Vec::new();
    cli::requests(
        &cli::RequestsArgs {
            json: true,
            ..args.clone()
        },
        &mut out,
    )
    .await
    .unwrap();
    assert_eq!(ids(&serde_json::from_slice(&out).unwrap()), [7]);

    let mut out = Vec::new();
    let replay = cli::ReplayArgs {
        id: 7,
        inspector: at.clone(),
        method: Some("PATCH".into()),
        path: None,
        headers: vec!["X-From-Cli: 1".into(), "authorization:".into()],
        body: Some("cli body".into()),
        body_file: None,
        no_resign: false,
        json: false,
    };
    let new_id = cli::replay(&replay, &mut out).await.unwrap();
    assert_eq!(new_id, 50);
    assert_eq!(String::from_utf8(out).unwrap(), "50\n");
    let got = target.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got[0].method, "PATCH");
    assert_eq!(got[0].header("x-from-cli").as_deref(), Some("1"));
    assert!(got[0].header("authorization").is_none());
    assert_eq!(got[0].header("porthole-replay").as_deref(), Some("7"));
    assert_eq!(&got[0].body[..], b"cli body");

    let err = cli::replay(&cli::ReplayArgs { id: 999, ..replay }, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no exchange 999"), "{err:#}");

    // Shutdown ends the server even with an event stream open.
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("inspector did not shut down")
        .unwrap()
        .unwrap();
    let dead = cli::requests(
        &cli::RequestsArgs {
            inspector: at,
            ..args
        },
        &mut Vec::new(),
    )
    .await
    .unwrap_err();
    assert!(
        format!("{dead:#}").contains("cannot reach the inspector"),
        "{dead:#}"
    );
}

/// A relay queue stand-in: records the commands, answers `answer`.
struct FakeQueue {
    ops: std::sync::Mutex<Vec<inspector::QueueOp>>,
    answer: Result<String, String>,
}

impl inspector::QueueAccess for FakeQueue {
    fn command(
        &self,
        op: inspector::QueueOp,
    ) -> tunnel_client::capture::BoxFuture<'static, Result<String, String>> {
        self.ops.lock().unwrap().push(op);
        let answer = self.answer.clone();
        Box::pin(async move { answer })
    }
}

#[tokio::test]
async fn queue_api_answers_404_without_access_and_relays_commands_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let insp = open(&dir);
    let app = inspector::router(insp.clone(), Arc::new(NoReplayer));
    for (method, uri) in [
        ("GET", "/api/queue"),
        ("POST", "/api/queue/7/retry"),
        ("POST", "/api/queue/7/drop"),
    ] {
        let a = call(&app, method, uri, None).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{uri}");
        assert!(
            a.json()["error"]
                .as_str()
                .unwrap()
                .starts_with("the queue is not available: "),
            "{:?}",
            a.body
        );
    }

    let fake = Arc::new(FakeQueue {
        ops: Default::default(),
        answer: Ok(r#"{"entries":[{"id":7,"name":"hooks","state":"dead"}]}"#.into()),
    });
    insp.set_queue(fake.clone());
    let a = call(&app, "GET", "/api/queue?limit=5", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["entries"][0]["state"], "dead");
    let a = call(&app, "POST", "/api/queue/7/drop", None).await;
    assert_eq!(a.status, StatusCode::OK);
    let a = call(&app, "POST", "/api/queue/x/drop", None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        *fake.ops.lock().unwrap(),
        [
            inspector::QueueOp::List {
                name: None,
                limit: 5
            },
            inspector::QueueOp::Drop { id: 7 }
        ]
    );

    // The relay's refusals and failures to reach it are 502 with its message.
    insp.set_queue(Arc::new(FakeQueue {
        ops: Default::default(),
        answer: Ok(r#"{"error":"no queued exchange 9 for the names of this token"}"#.into()),
    }));
    let a = call(&app, "POST", "/api/queue/9/retry", None).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert!(a.json()["error"]
        .as_str()
        .unwrap()
        .contains("no queued exchange 9"));
    insp.set_queue(Arc::new(FakeQueue {
        ops: Default::default(),
        answer: Err("connecting to relay r:1: refused".into()),
    }));
    let a = call(&app, "GET", "/api/queue", None).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert!(a.json()["error"].as_str().unwrap().contains("refused"));
}

//! The inspector's HTTP surface: the JSON API, live events, HAR export, replay, the
//! access guard and the embedded single-page UI.
//!
//! Every failure is a 4xx/5xx with `{"error": "..."}`; nothing a caller sends can panic
//! a handler. The credential is compared in constant time and never logged.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq as _;
use tokio::sync::{broadcast, watch};

use super::{har, time, ExchangeSummary, Filter, Inspector, QueueOp, StatusFilter};
use crate::capture::{CapturedBody, Exchange, ExchangeId, ReplayRequest, Replayer};

/// The header that marks a replayed request, carrying the original exchange id.
pub const REPLAY_HEADER: &str = "porthole-replay";
/// How long a replay may take before the API gives up on it.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long after the replayer answers we wait for the new exchange to be stored.
const STORE_WAIT: Duration = Duration::from_secs(5);
/// How long a relay queue command may take before the API gives up on it.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(20);
const DEFAULT_LIMIT: usize = 100;
const DEFAULT_HAR_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");
/// Captured bodies are attacker-controlled; the UI never runs anything but its own code.
const UI_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

#[derive(Clone)]
struct AppState {
    inspector: Arc<Inspector>,
    replayer: Arc<dyn Replayer>,
    /// Ends live-event streams at shutdown; `None` when served without [`Inspector::run`].
    stop: Option<watch::Receiver<bool>>,
}

/// The inspector's UI and API as a router, for serving it yourself or calling it
/// without a socket in tests. Live-event streams end only when their client leaves;
/// [`Inspector::run`] also ends them at shutdown.
pub fn router(inspector: Arc<Inspector>, replayer: Arc<dyn Replayer>) -> Router {
    build(AppState {
        inspector,
        replayer,
        stop: None,
    })
}

pub(super) fn router_with_shutdown(
    inspector: Arc<Inspector>,
    replayer: Arc<dyn Replayer>,
    stop: watch::Receiver<bool>,
) -> Router {
    build(AppState {
        inspector,
        replayer,
        stop: Some(stop),
    })
}

fn build(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route(
            "/app.js",
            get(|| asset("text/javascript; charset=utf-8", APP_JS)),
        )
        .route(
            "/style.css",
            get(|| asset("text/css; charset=utf-8", STYLE_CSS)),
        )
        .route("/api/status", get(status))
        .route("/api/requests", get(list).delete(clear))
        .route("/api/requests/{id}", get(detail))
        .route("/api/requests/{id}/body", get(body))
        .route("/api/requests/{id}/har", get(har_one))
        .route("/api/requests/{id}/replay", axum::routing::post(replay))
        .route("/api/har", get(har_list))
        .route("/api/events", get(events))
        .route("/api/queue", get(queue_list))
        .route("/api/queue/{id}/retry", axum::routing::post(queue_retry))
        .route("/api/queue/{id}/drop", axum::routing::post(queue_drop))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// An API failure: a status and `{"error": message}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn internal(err: anyhow::Error) -> Self {
        tracing::warn!(error = format!("{err:#}"), "inspector request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {err:#}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

// ---- the relay's durable queue ----

#[derive(Debug, Deserialize)]
struct QueueParams {
    name: Option<String>,
    limit: Option<u32>,
}

/// Runs `op` on the relay: 404 without queue access, 502 when the relay cannot be
/// asked or answers an error; else its JSON report as it is.
async fn queue_op(st: &AppState, op: QueueOp) -> ApiResult<Json<Value>> {
    let access = st.inspector.queue().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "the queue is not available: this daemon has no relay queue access",
        )
    })?;
    let json = tokio::time::timeout(QUEUE_TIMEOUT, access.command(op))
        .await
        .map_err(|_| ApiError::new(StatusCode::BAD_GATEWAY, "the relay did not answer in time"))?
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e))?;
    let v: Value = serde_json::from_str(&json).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "the relay's queue answer is not JSON",
        )
    })?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        return Err(ApiError::new(StatusCode::BAD_GATEWAY, e));
    }
    Ok(Json(v))
}

async fn queue_list(
    State(st): State<AppState>,
    q: Result<Query<QueueParams>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let p = query(q)?;
    let op = QueueOp::List {
        name: p.name.filter(|n| !n.trim().is_empty()),
        limit: p.limit.unwrap_or(100),
    };
    let mut v = queue_op(&st, op).await?;
    if v.get("entries").is_none() {
        v.0["entries"] = json!([]);
    }
    Ok(v)
}

fn parse_queue_id(raw: &str) -> ApiResult<u64> {
    raw.parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("invalid queue id {raw:?}")))
}

async fn queue_retry(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let id = parse_queue_id(&id)?;
    queue_op(&st, QueueOp::Retry { id }).await
}

async fn queue_drop(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let id = parse_queue_id(&id)?;
    queue_op(&st, QueueOp::Drop { id }).await
}

// ---- access guard ----

async fn guard(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    if let Some(cred) = &st.inspector.config().credential {
        if !authorized(headers, cred.expose()) {
            let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "inspector credential required")
                .into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"porthole inspector\", charset=\"UTF-8\""),
            );
            return resp;
        }
    } else if !host_is_loopback(headers) {
        // Without a credential only loopback names are answered, so a web page cannot
        // reach the history by pointing its own domain at 127.0.0.1 (DNS rebinding).
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "the inspector answers only to loopback host names unless a credential is set",
        )
        .into_response();
    }
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe && !same_origin(headers) {
        return ApiError::new(StatusCode::FORBIDDEN, "cross-origin request refused")
            .into_response();
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// Basic auth (any user, the credential as password) or a bearer token.
fn authorized(headers: &HeaderMap, credential: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    let presented: Vec<u8> = if scheme.eq_ignore_ascii_case("bearer") {
        rest.trim().as_bytes().to_vec()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest.trim()) else {
            return false;
        };
        match decoded.iter().position(|&b| b == b':') {
            Some(i) => decoded[i + 1..].to_vec(),
            None => return false,
        }
    } else {
        return false;
    };
    bool::from(presented.as_slice().ct_eq(credential.as_bytes()))
}

fn host_of(authority: &str) -> &str {
    let authority = authority.trim();
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    authority.split(':').next().unwrap_or_default()
}

fn host_is_loopback(headers: &HeaderMap) -> bool {
    // No Host at all is not a browser (HTTP/1.1 browsers always send it).
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let host = host_of(host).to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A write from a browser must come from the inspector's own page.
fn same_origin(headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site" || v.as_bytes() == b"same-site")
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let (Ok(origin), Some(Ok(host))) = (
        origin.to_str(),
        headers.get(header::HOST).map(|h| h.to_str()),
    ) else {
        return false;
    };
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
}

// ---- UI ----

async fn index() -> Response {
    let mut resp = (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
        .into_response();
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(UI_CSP),
    );
    resp
}

async fn asset(content_type: &'static str, text: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], text).into_response()
}

// ---- API ----

async fn status(State(st): State<AppState>) -> ApiResult<Json<Value>> {
    let count = st
        .inspector
        .read(|s| s.count())
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "exchanges": count,
        "dropped": st.inspector.dropped(),
        "next_id": st.inspector.next_id(),
    })))
}

#[derive(Debug, Deserialize)]
struct ListParams {
    method: Option<String>,
    status: Option<String>,
    path: Option<String>,
    q: Option<String>,
    limit: Option<usize>,
    before: Option<u64>,
}

impl ListParams {
    fn into_filter(self, default_limit: usize) -> ApiResult<Filter> {
        let non_empty = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
        let status = match non_empty(self.status) {
            Some(s) => Some(s.parse::<StatusFilter>().map_err(ApiError::bad_request)?),
            None => None,
        };
        Ok(Filter {
            method: non_empty(self.method).map(|m| m.trim().to_owned()),
            status,
            path: non_empty(self.path),
            q: non_empty(self.q),
            before: self.before,
            limit: self.limit.unwrap_or(default_limit).clamp(1, MAX_LIMIT),
        })
    }
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))
}

fn parse_id(raw: &str) -> ApiResult<ExchangeId> {
    raw.parse::<u64>()
        .map(ExchangeId)
        .map_err(|_| ApiError::bad_request(format!("invalid exchange id {raw:?}")))
}

async fn load(st: &AppState, raw_id: &str) -> ApiResult<Exchange> {
    let id = parse_id(raw_id)?;
    st.inspector
        .exchange(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no exchange {id}")))
}

async fn list(
    State(st): State<AppState>,
    q: Result<Query<ListParams>, QueryRejection>,
) -> ApiResult<Json<Vec<ExchangeSummary>>> {
    let filter = query(q)?.into_filter(DEFAULT_LIMIT)?;
    st.inspector
        .list(filter)
        .await
        .map(Json)
        .map_err(ApiError::internal)
}

async fn clear(State(st): State<AppState>) -> ApiResult<Json<Value>> {
    let deleted = st.inspector.clear().await.map_err(ApiError::internal)?;
    Ok(Json(json!({ "deleted": deleted })))
}

async fn detail(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(detail_json(&load(&st, &id).await?)))
}

/// Header lists as JSON: `[name, value]` when the value is UTF-8, else
/// `[name, base64(value), "base64"]`.
fn headers_json(headers: &[(String, Vec<u8>)]) -> Value {
    headers
        .iter()
        .map(|(n, v)| match std::str::from_utf8(v) {
            Ok(text) => json!([n, text]),
            Err(_) => json!([
                n,
                base64::engine::general_purpose::STANDARD.encode(v),
                "base64"
            ]),
        })
        .collect()
}

fn body_fields(obj: &mut Value, body: &CapturedBody) {
    obj["body_base64"] = base64::engine::general_purpose::STANDARD
        .encode(&body.bytes)
        .into();
    obj["body_text"] = std::str::from_utf8(&body.bytes)
        .ok()
        .map_or(Value::Null, Value::from);
    obj["body_size"] = body.size.into();
    obj["body_truncated"] = body.truncated.into();
}

fn detail_json(ex: &Exchange) -> Value {
    let mut v = serde_json::to_value(ExchangeSummary::of(ex)).unwrap_or_else(|_| json!({}));
    v["target"] = ex.target.clone().into();
    v["time_to_head_ms"] = ex.time_to_head.map(time::millis).into();
    let mut req = json!({
        "method": ex.request.method,
        "path": ex.request.uri,
        "headers": headers_json(&ex.request.headers),
    });
    body_fields(&mut req, &ex.request.body);
    v["request"] = req;
    v["response"] = match &ex.response {
        Some(resp) => {
            let mut r = json!({
                "status": resp.status,
                "reason": http::StatusCode::from_u16(resp.status)
                    .ok()
                    .and_then(|s| s.canonical_reason()),
                "headers": headers_json(&resp.headers),
            });
            body_fields(&mut r, &resp.body);
            r
        }
        None => Value::Null,
    };
    v
}

#[derive(Debug, Deserialize)]
struct BodyParams {
    part: Option<String>,
}

async fn body(
    State(st): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<BodyParams>, QueryRejection>,
) -> ApiResult<Response> {
    let part = query(q)?.part.unwrap_or_else(|| "response".to_owned());
    let ex = load(&st, &id).await?;
    let (headers, body) = match part.as_str() {
        "request" => (&ex.request.headers, &ex.request.body),
        "response" => match &ex.response {
            Some(r) => (&r.headers, &r.body),
            None => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("exchange {} has no response", ex.id),
                ))
            }
        },
        other => {
            return Err(ApiError::bad_request(format!(
                "invalid part {other:?}: use request or response"
            )))
        }
    };
    let content_type = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        .and_then(|(_, v)| HeaderValue::from_bytes(v).ok())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let mut resp = Response::new(Body::from(body.bytes.clone()));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type);
    // The body is whatever a visitor or target sent; never let it run as a page here.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    h.insert("x-porthole-body-size", HeaderValue::from(body.size));
    h.insert(
        "x-porthole-body-truncated",
        HeaderValue::from_static(if body.truncated { "true" } else { "false" }),
    );
    Ok(resp)
}

async fn har_one(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let ex = load(&st, &id).await?;
    Ok(har_response(
        har::document(std::slice::from_ref(&ex)),
        &format!("porthole-{}.har", ex.id),
    ))
}

async fn har_list(
    State(st): State<AppState>,
    q: Result<Query<ListParams>, QueryRejection>,
) -> ApiResult<Response> {
    let filter = query(q)?.into_filter(DEFAULT_HAR_LIMIT)?;
    let exchanges = st
        .inspector
        .read(move |s| s.exchanges(&filter))
        .await
        .map_err(ApiError::internal)?;
    Ok(har_response(har::document(&exchanges), "porthole.har"))
}

fn har_response(doc: Value, filename: &str) -> Response {
    let mut resp = Json(doc).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

/// Edits applied to a replay; everything is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayEdits {
    method: Option<String>,
    path: Option<String>,
    /// Full replacement list, in the same shape as the detail's headers.
    headers: Option<Vec<Vec<String>>>,
    body: Option<String>,
    body_base64: Option<String>,
    /// `false` keeps the captured signature headers; by default a replay is signed
    /// afresh when the tunnel has a verifier for its provider.
    resign: Option<bool>,
}

async fn replay(
    State(st): State<AppState>,
    Path(id): Path<String>,
    payload: Bytes,
) -> ApiResult<Json<Value>> {
    let edits: ReplayEdits = if payload.iter().all(u8::is_ascii_whitespace) {
        ReplayEdits::default()
    } else {
        serde_json::from_slice(&payload)
            .map_err(|e| ApiError::bad_request(format!("invalid replay edits: {e}")))?
    };
    let original = load(&st, &id).await?;
    let req = replay_request(&original, edits)?;
    let events = st.inspector.subscribe();
    let new_id = tokio::time::timeout(REPLAY_TIMEOUT, st.replayer.replay(req))
        .await
        .map_err(|_| ApiError::new(StatusCode::GATEWAY_TIMEOUT, "replay timed out"))?
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("replay failed: {e}")))?;
    // So that a caller can fetch the new exchange as soon as it has the id.
    if !st.inspector.wait_stored(new_id, events, STORE_WAIT).await {
        tracing::debug!(id = %new_id, "replayed exchange not stored in time");
    }
    Ok(Json(json!({ "id": new_id.0 })))
}

fn replay_request(ex: &Exchange, edits: ReplayEdits) -> ApiResult<ReplayRequest> {
    let method = edits.method.unwrap_or_else(|| ex.request.method.clone());
    http::Method::from_bytes(method.as_bytes())
        .map_err(|_| ApiError::bad_request(format!("invalid method {method:?}")))?;
    let uri = edits.path.unwrap_or_else(|| ex.request.uri.clone());
    if !uri.starts_with('/') || uri.parse::<http::uri::PathAndQuery>().is_err() {
        return Err(ApiError::bad_request(format!(
            "invalid path {uri:?}: it must start with / and be a valid path and query"
        )));
    }
    let mut headers = match edits.headers {
        None => ex.request.headers.clone(),
        Some(list) => list
            .into_iter()
            .map(parse_header)
            .collect::<ApiResult<Vec<_>>>()?,
    };
    let body = match (edits.body, edits.body_base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give either body or body_base64, not both",
            ))
        }
        (Some(text), None) => Bytes::from(text),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map(Bytes::from)
            .map_err(|e| ApiError::bad_request(format!("invalid body_base64: {e}")))?,
        (None, None) if ex.request.body.truncated => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "the request body was captured only in part ({} of {} bytes); \
                     give body or body_base64 to replay it",
                    ex.request.body.bytes.len(),
                    ex.request.body.size
                ),
            ))
        }
        (None, None) => ex.request.body.bytes.clone(),
    };
    let had_length = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-length"));
    // The body is sent whole, so framing headers are recomputed rather than copied.
    headers.retain(|(n, _)| {
        !n.eq_ignore_ascii_case("content-length")
            && !n.eq_ignore_ascii_case("transfer-encoding")
            && !n.eq_ignore_ascii_case(REPLAY_HEADER)
    });
    if had_length || !body.is_empty() {
        headers.push(("content-length".to_owned(), body.len().to_string().into()));
    }
    headers.push(("porthole-replay".to_owned(), ex.id.to_string().into()));
    Ok(ReplayRequest {
        replay_of: ex.id,
        tunnel: ex.tunnel.clone(),
        method,
        uri,
        headers,
        body,
        resign: edits.resign.unwrap_or(true),
    })
}

fn parse_header(item: Vec<String>) -> ApiResult<(String, Vec<u8>)> {
    let mut it = item.into_iter();
    let (Some(name), Some(value), flag, None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(ApiError::bad_request(
            "each header must be [name, value] or [name, base64, \"base64\"]",
        ));
    };
    let value = match flag.as_deref() {
        None => value.into_bytes(),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(|e| ApiError::bad_request(format!("invalid base64 for header {name}: {e}")))?,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown header value encoding {other:?}"
            )))
        }
    };
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(ApiError::bad_request(format!(
            "invalid header name {name:?}"
        )));
    }
    if HeaderValue::from_bytes(&value).is_err() {
        return Err(ApiError::bad_request(format!(
            "invalid value for header {name}"
        )));
    }
    Ok((name, value))
}

async fn events(State(st): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = st.inspector.subscribe();
    let first = Event::default().comment("connected");
    let stream = futures_util::stream::unfold(
        (Some(first), rx, st.stop.clone()),
        |(first, mut rx, mut stop)| async move {
            if let Some(ev) = first {
                return Some((Ok(ev), (None, rx, stop)));
            }
            let ev = tokio::select! {
                r = rx.recv() => match r {
                    Ok(summary) => match serde_json::to_string(&*summary) {
                        Ok(data) => Event::default().data(data),
                        Err(_) => Event::default().comment("unencodable"),
                    },
                    // The UI reloads the list when it hears this.
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        Event::default().event("lagged").data(n.to_string())
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                () = stopped(&mut stop) => return None,
            };
            Some((Ok(ev), (None, rx, stop)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn stopped(stop: &mut Option<watch::Receiver<bool>>) {
    match stop {
        Some(rx) => {
            if rx.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn auth_accepts_basic_and_bearer_only_with_the_credential() {
        // "u:s3cret" and "u:wrong"
        assert!(authorized(
            &headers(&[("authorization", "Basic dTpzM2NyZXQ=")]),
            "s3cret"
        ));
        assert!(!authorized(
            &headers(&[("authorization", "Basic dTp3cm9uZw==")]),
            "s3cret"
        ));
        assert!(authorized(
            &headers(&[("authorization", "Bearer s3cret")]),
            "s3cret"
        ));
        assert!(!authorized(
            &headers(&[("authorization", "Bearer s3cre")]),
            "s3cret"
        ));
        assert!(!authorized(
            &headers(&[("authorization", "Basic !!")]),
            "s3cret"
        ));
        assert!(!authorized(&headers(&[]), "s3cret"));
    }

    #[test]
    fn loopback_hosts_and_origins() {
        assert!(host_is_loopback(&headers(&[("host", "127.0.0.1:4040")])));
        assert!(host_is_loopback(&headers(&[("host", "localhost:4040")])));
        assert!(host_is_loopback(&headers(&[("host", "[::1]:4040")])));
        assert!(!host_is_loopback(&headers(&[(
            "host",
            "evil.example:4040"
        )])));
        assert!(same_origin(&headers(&[("host", "127.0.0.1:4040")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:4040"),
            ("origin", "http://127.0.0.1:4040")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:4040"),
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "cross-site")])));
    }
}

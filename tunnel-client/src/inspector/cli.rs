//! `porthole requests` and `porthole replay`: small clients of a running daemon's
//! inspector API. The daemon's CLI wires these argument structs in as subcommands.
//!
//! They talk plain HTTP/1.1 to the inspector address (loopback by default) with
//! hyper; the credential, when one is needed, goes as a bearer token and is never
//! printed.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use shared_proto::Secret;

use super::ExchangeSummary;

/// How long one call to the inspector may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(130);

/// Where the running daemon's inspector listens, and how to get in.
#[derive(Debug, Clone, clap::Args)]
pub struct InspectorAddr {
    /// Address of the daemon's inspector (`HOST:PORT` or `http://HOST:PORT`).
    #[arg(
        long = "inspect",
        value_name = "ADDR",
        default_value = "127.0.0.1:4040"
    )]
    pub inspect: String,
    /// The inspector's credential, when the daemon was started with one.
    #[arg(
        long = "inspect-credential",
        value_name = "SECRET",
        env = "PORTHOLE_INSPECT_CREDENTIAL",
        hide_env_values = true
    )]
    pub credential: Option<Secret>,
}

/// `porthole requests`: recent exchanges, newest first.
#[derive(Debug, Clone, clap::Args)]
pub struct RequestsArgs {
    /// Where the inspector is.
    #[command(flatten)]
    pub inspector: InspectorAddr,
    /// Print the API's JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
    /// How many exchanges to show.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Only this method.
    #[arg(long)]
    pub method: Option<String>,
    /// Only this status or class (`200`, `5xx`, `none`).
    #[arg(long)]
    pub status: Option<String>,
    /// Only exchanges whose path, headers or bodies contain this text.
    #[arg(long, short = 'q')]
    pub search: Option<String>,
}

/// `porthole replay ID`: sends a captured request to the target again, optionally
/// edited, and prints the new exchange's id.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// The exchange to replay.
    pub id: u64,
    /// Where the inspector is.
    #[command(flatten)]
    pub inspector: InspectorAddr,
    /// Replace the method.
    #[arg(long, short = 'X')]
    pub method: Option<String>,
    /// Replace the path and query.
    #[arg(long)]
    pub path: Option<String>,
    /// Set a header (`Name: value`, replacing any of that name); `Name:` removes it.
    #[arg(long = "header", short = 'H', value_name = "HEADER")]
    pub headers: Vec<String>,
    /// Replace the body with this text.
    #[arg(long, conflicts_with = "body_file")]
    pub body: Option<String>,
    /// Replace the body with this file's bytes.
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<std::path::PathBuf>,
    /// Keep the captured signature headers instead of signing the replay afresh
    /// (re-signing happens when the tunnel has a verifier for the provider).
    #[arg(long)]
    pub no_resign: bool,
    /// Print `{"id": N}` instead of the bare id.
    #[arg(long)]
    pub json: bool,
}

/// Runs `porthole requests`, writing the table (or JSON) to `out`.
pub async fn requests(args: &RequestsArgs, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.inspector)?;
    let mut query = vec![format!("limit={}", args.limit.max(1))];
    for (key, value) in [
        ("method", &args.method),
        ("status", &args.status),
        ("q", &args.search),
    ] {
        if let Some(v) = value {
            query.push(format!("{key}={}", percent_encode(v)));
        }
    }
    let body = client
        .call(
            http::Method::GET,
            &format!("/api/requests?{}", query.join("&")),
            None,
        )
        .await?;
    if args.json {
        out.write_all(&body)?;
        out.write_all(b"\n")?;
        return Ok(());
    }
    let list: Vec<ExchangeSummary> =
        serde_json::from_slice(&body).context("reading the inspector's answer")?;
    write_table(&list, out)?;
    Ok(())
}

/// Runs `porthole replay`; prints and answers the new exchange's id.
pub async fn replay(args: &ReplayArgs, out: &mut (dyn Write + Send)) -> anyhow::Result<u64> {
    let client = ApiClient::new(&args.inspector)?;
    let mut edits = serde_json::Map::new();
    if let Some(m) = &args.method {
        edits.insert("method".into(), m.clone().into());
    }
    if let Some(p) = &args.path {
        edits.insert("path".into(), p.clone().into());
    }
    if !args.headers.is_empty() {
        let detail = client
            .call(
                http::Method::GET,
                &format!("/api/requests/{}", args.id),
                None,
            )
            .await?;
        let detail: Value = serde_json::from_slice(&detail).context("reading the exchange")?;
        let original = detail["request"]["headers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        edits.insert(
            "headers".into(),
            merge_headers(original, &args.headers)?.into(),
        );
    }
    if let Some(b) = &args.body {
        edits.insert("body".into(), b.clone().into());
    }
    if let Some(path) = &args.body_file {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading body file {}", path.display()))?;
        edits.insert(
            "body_base64".into(),
            base64::engine::general_purpose::STANDARD
                .encode(bytes)
                .into(),
        );
    }
    if args.no_resign {
        edits.insert("resign".into(), false.into());
    }
    let answer = client
        .call(
            http::Method::POST,
            &format!("/api/requests/{}/replay", args.id),
            Some(Value::Object(edits)),
        )
        .await?;
    let answer: Value = serde_json::from_slice(&answer).context("reading the replay answer")?;
    let Some(id) = answer["id"].as_u64() else {
        bail!("the inspector answered without an id: {answer}");
    };
    if args.json {
        writeln!(out, "{}", json!({ "id": id }))?;
    } else {
        writeln!(out, "{id}")?;
    }
    Ok(id)
}

/// Applies `-H` edits to the detail's header list (same JSON shape).
fn merge_headers(mut headers: Vec<Value>, edits: &[String]) -> anyhow::Result<Vec<Value>> {
    for edit in edits {
        let Some((name, value)) = edit.split_once(':') else {
            bail!("invalid header {edit:?}: use 'Name: value' (or 'Name:' to remove it)");
        };
        let name = name.trim();
        if name.is_empty() {
            bail!("invalid header {edit:?}: the name is empty");
        }
        headers.retain(|h| !h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)));
        let value = value.trim();
        if !value.is_empty() {
            headers.push(json!([name, value]));
        }
    }
    Ok(headers)
}

fn write_table(list: &[ExchangeSummary], out: &mut (dyn Write + Send)) -> std::io::Result<()> {
    if list.is_empty() {
        return writeln!(out, "no requests yet");
    }
    writeln!(
        out,
        "{:>6}  {:<7} {:>6}  {:>9}  {:<8}  PATH",
        "ID", "METHOD", "STATUS", "TIME", "AT"
    )?;
    for s in list {
        let status = match (s.status, s.outcome.as_str()) {
            (Some(code), _) => code.to_string(),
            (None, "target_timeout") => "timeout".into(),
            (None, _) => "error".into(),
        };
        let at = s.started_at.get(11..19).unwrap_or(&s.started_at);
        let replay = s
            .replay_of
            .map(|r| format!("  (replay of {r})"))
            .unwrap_or_default();
        writeln!(
            out,
            "{:>6}  {:<7} {:>6}  {:>7.1}ms  {:<8}  {}{}",
            s.id, s.method, status, s.duration_ms, at, s.path, replay
        )?;
    }
    Ok(())
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) struct ApiClient {
    base: String,
    credential: Option<Secret>,
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl ApiClient {
    pub(crate) fn new(addr: &InspectorAddr) -> anyhow::Result<Self> {
        let raw = addr.inspect.trim().trim_end_matches('/');
        let base = if raw.starts_with("http://") {
            raw.to_owned()
        } else if let Some(rest) = raw.strip_prefix("https://") {
            bail!("the inspector speaks plain HTTP; use http://{rest}");
        } else {
            format!("http://{raw}")
        };
        base.parse::<http::Uri>()
            .with_context(|| format!("invalid inspector address {:?}", addr.inspect))?;
        Ok(Self {
            base,
            credential: addr.credential.clone(),
            http: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// One call; answers the body of a 2xx, else the API's error as an error.
    pub(crate) async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Bytes> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(cred) = &self.credential {
            req = req.header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", cred.expose()),
            );
        }
        let body = match body {
            Some(v) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(serde_json::to_vec(&v)?))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req.body(body).context("building the inspector request")?;
        let resp = tokio::time::timeout(CALL_TIMEOUT, self.http.request(req))
            .await
            .with_context(|| format!("the inspector at {} did not answer in time", self.base))?
            .with_context(|| {
                format!(
                    "cannot reach the inspector at {} (is `porthole http` running?)",
                    self.base
                )
            })?;
        let status = resp.status();
        let bytes = tokio::time::timeout(CALL_TIMEOUT, resp.into_body().collect())
            .await
            .context("the inspector's answer stalled")?
            .context("reading the inspector's answer")?
            .to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            bail!("the inspector answered {status}: {message}");
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_edits_replace_add_and_remove() {
        let original = vec![json!(["Content-Type", "text/plain"]), json!(["X-A", "1"])];
        let merged = merge_headers(
            original,
            &[
                "content-type: application/json".into(),
                "X-A:".into(),
                "X-New: v".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            merged,
            vec![
                json!(["content-type", "application/json"]),
                json!(["X-New", "v"])
            ]
        );
        assert!(merge_headers(vec![], &["nocolon".into()]).is_err());
        assert!(merge_headers(vec![], &[": v".into()]).is_err());
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(percent_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}

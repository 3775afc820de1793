//! End-to-end harness: real `porthole-relay` and `porthole` processes, a recording
//! local target, and HTTP over real loopback sockets, all on ephemeral ports.
//!
//! Readiness is awaited through the processes' `--json` events, never a fixed sleep.
//! The binaries come from the same `cargo test --workspace` build (`target/<profile>/`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// How long any readiness wait may take before the test fails.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Path of a workspace binary built alongside the tests.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` so the binaries are built",
        path.display()
    );
    path
}

/// A child process whose stdout lines arrive on a channel and whose stderr is kept
/// for failure messages.
pub struct Proc {
    /// The child; killed on drop.
    pub child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
    seen: VecDeque<String>,
}

impl Proc {
    /// Spawns `program` with `args` and extra environment.
    pub fn spawn(program: &Path, args: &[String], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("PORTHOLE_TOKEN")
            .env_remove("PORTHOLE_RELAY")
            .env_remove("PORTHOLE_RELAY_PIN")
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", program.display()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("piped stdout");
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let buf = stderr.clone();
        let mut err = child.stderr.take().expect("piped stderr");
        tokio::spawn(async move {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = err.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                buf.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        Ok(Self {
            child,
            lines: rx,
            stderr,
            seen: VecDeque::new(),
        })
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next stdout line, or `None` at EOF; fails after `timeout`.
    pub async fn next_line(&mut self, timeout: Duration) -> anyhow::Result<Option<String>> {
        if let Some(l) = self.seen.pop_front() {
            return Ok(Some(l));
        }
        match tokio::time::timeout(timeout, self.lines.recv()).await {
            Ok(l) => Ok(l),
            Err(_) => bail!(
                "no output within {timeout:?}; stderr so far:\n{}",
                self.stderr()
            ),
        }
    }

    /// Waits for a JSON event line whose `event` is `kind`; other lines are skipped.
    pub async fn event(&mut self, kind: &str, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let line = self.next_line(left).await?.ok_or_else(|| {
                anyhow!(
                    "process ended before a {kind} event; stderr:\n{}",
                    self.stderr()
                )
            })?;
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["event"] == kind {
                    return Ok(v);
                }
            }
        }
    }

    /// Waits for the process to exit; answers its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<i32> {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .map_err(|_| anyhow!("process still running after {timeout:?}"))??;
        Ok(status.code().unwrap_or(-1))
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Sends SIGTERM-like Ctrl-C (SIGINT).
    pub fn interrupt(&self) {
        self.signal("INT");
    }

    /// Sends the signal named `name` (`INT`, `USR1`, …); whether `kill` delivered it.
    pub fn signal(&self, name: &str) -> bool {
        self.child.id().is_some_and(|pid| {
            std::process::Command::new("kill")
                .args([&format!("-{name}"), &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success())
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
}

/// A relay process with its own data dir.
pub struct Relay {
    /// The process.
    pub proc: Proc,
    /// Data dir (kept across restarts).
    pub dir: Arc<tempfile::TempDir>,
    /// Public HTTP address.
    pub http: SocketAddr,
    /// Public HTTPS address, when started with `--https-addr`.
    pub https: Option<SocketAddr>,
    /// QUIC address.
    pub tunnel: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// Pin.
    pub pin: String,
}

impl Relay {
    /// Starts a relay on ephemeral ports with extra `serve` flags.
    pub async fn start(extra: &[&str]) -> anyhow::Result<Self> {
        let dir = Arc::new(tempfile::tempdir()?);
        Self::start_in(dir, "127.0.0.1:0", "127.0.0.1:0", extra).await
    }

    /// Starts a relay in `dir` on the given addresses.
    pub async fn start_in(
        dir: Arc<tempfile::TempDir>,
        http: &str,
        tunnel: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut args: Vec<String> = [
            "serve",
            "--json",
            "--domain",
            "localhost",
            "--http-addr",
            http,
            "--tunnel-addr",
            tunnel,
            "--admin-addr",
            "127.0.0.1:0",
            "--data-dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(dir.path().display().to_string());
        if extra.contains(&"--domain") {
            // The caller's domain replaces the default one.
            args.drain(2..4);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut proc = Proc::spawn(&bin("porthole-relay"), &args, &[("PORTHOLE_LOG", "info")])?;
        let ev = proc.event("listening", READY_TIMEOUT).await?;
        let addr = |k: &str| -> anyhow::Result<SocketAddr> {
            ev[k]
                .as_str()
                .ok_or_else(|| anyhow!("no {k} in {ev}"))?
                .parse()
                .context("address")
        };
        Ok(Self {
            http: addr("http")?,
            https: ev["https"].as_str().and_then(|a| a.parse().ok()),
            tunnel: addr("tunnel")?,
            admin: addr("admin")?,
            pin: ev["pin"].as_str().unwrap_or_default().to_owned(),
            proc,
            dir,
        })
    }

    /// Restarts the relay (SIGKILL, then start again on the same ports and data dir).
    pub async fn restart(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        self.proc.kill().await;
        let http = self.http.to_string();
        let tunnel = self.tunnel.to_string();
        *self = Self::start_in(self.dir.clone(), &http, &tunnel, extra).await?;
        Ok(())
    }

    /// Creates a token with `porthole-relay token add`.
    pub fn token(&self, name: &str) -> anyhow::Result<String> {
        let out = std::process::Command::new(bin("porthole-relay"))
            .args(["token", "add", name, "--data-dir"])
            .arg(self.dir.path())
            .output()?;
        if !out.status.success() {
            bail!("token add failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let stdout = String::from_utf8(out.stdout)?;
        Ok(stdout.lines().last().unwrap_or_default().trim().to_owned())
    }

    /// Runs another `porthole-relay` subcommand against this relay's data dir.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Ok(std::process::Command::new(bin("porthole-relay"))
            .args(args)
            .arg("--data-dir")
            .arg(self.dir.path())
            .output()?)
    }

    /// Fetches `/metrics` from the admin listener.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let r = request(self.admin, "admin", "GET", "/metrics", &[], Bytes::new()).await?;
        Ok(String::from_utf8_lossy(&r.body).into_owned())
    }
}

/// The value of the first metric line in `text` (the relay's `/metrics`) that starts
/// with `name` (labels included).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

/// A `porthole http` process.
pub struct Client {
    /// The process.
    pub proc: Proc,
    /// The ready event.
    pub ready: Value,
    /// Its public name.
    pub name: String,
}

impl Client {
    /// Starts `porthole http TARGET --relay … --json` with `token` and the relay's pin,
    /// and waits for the ready event.
    pub async fn start(
        relay: &Relay,
        target: &str,
        token: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_with_env(relay, target, token, extra, &[]).await
    }

    /// [`Client::start`] with extra environment variables.
    pub async fn start_with_env(
        relay: &Relay,
        target: &str,
        token: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut proc = Self::spawn_with_env(relay, target, token, extra, env)?;
        let ready = proc.event("ready", READY_TIMEOUT).await?;
        let name = ready["name"].as_str().unwrap_or_default().to_owned();
        Ok(Self { proc, ready, name })
    }

    /// Spawns the client without waiting for readiness. The inspector is off unless
    /// `extra` passes `--inspect`.
    pub fn spawn(relay: &Relay, target: &str, token: &str, extra: &[&str]) -> anyhow::Result<Proc> {
        Self::spawn_with_env(relay, target, token, extra, &[])
    }

    /// [`Client::spawn`] with extra environment variables.
    pub fn spawn_with_env(
        relay: &Relay,
        target: &str,
        token: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Proc> {
        let mut all_env = vec![("PORTHOLE_TOKEN", token)];
        all_env.extend_from_slice(env);
        Proc::spawn(
            &bin("porthole"),
            &Self::args(relay, target, extra),
            &all_env,
        )
    }

    /// The arguments of `porthole http TARGET` against `relay` (`--json`, the relay's
    /// pin, the inspector off unless `extra` passes `--inspect`), for spawning it
    /// another way (in a network namespace, say).
    pub fn args(relay: &Relay, target: &str, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "http".into(),
            target.into(),
            "--relay".into(),
            relay.tunnel.to_string(),
            "--relay-pin".into(),
            relay.pin.clone(),
            "--json".into(),
        ];
        if !extra.contains(&"--inspect") {
            args.extend(["--inspect".to_owned(), "off".to_owned()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// The Host header that reaches this tunnel.
    pub fn host(&self) -> String {
        format!("{}.localhost", self.name)
    }
}

/// A request as the recording target saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Headers in order (lower-case names).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole body (bodies under /sink are only counted, see `size`).
    pub body: Bytes,
    /// Body size.
    pub size: u64,
}

impl Recorded {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// A local target that records what it receives. Routes:
/// - `/slow?ms=N`: answers after N ms;
/// - `/download?bytes=N`: streams N bytes of a known pattern;
/// - `/sink`: reads the body (counting, not keeping) and answers its size;
/// - `/sink-slow`: like `/sink` but sleeps 1 ms every 64 KiB read;
/// - `/status/N`: answers status N;
/// - anything else: 200, echoing the request body and `x-echo-method`/`x-echo-uri`.
pub struct Target {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests seen, in order.
    pub seen: Arc<Mutex<Vec<Recorded>>>,
}

/// The byte at offset `i` of a `/download` body.
pub fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

impl Target {
    /// Starts the target on an ephemeral loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0").await
    }

    /// Starts the target on `addr` (an ephemeral port of another local address).
    pub async fn start_on(addr: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| target_answer(req, s.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self { addr, seen })
    }

    /// Requests seen so far.
    pub fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    /// The last request seen.
    pub fn last(&self) -> Option<Recorded> {
        self.seen.lock().unwrap().last().cloned()
    }
}

type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn query_u64(uri: &http::Uri, key: &str) -> u64 {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

async fn target_answer(
    req: http::Request<Incoming>,
    seen: Arc<Mutex<Vec<Recorded>>>,
) -> Result<http::Response<BoxBody>, std::convert::Infallible> {
    let (parts, mut body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let counting = path.starts_with("/sink");
    let mut kept = Vec::new();
    let mut size = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(d) = frame.into_data() {
            size += d.len() as u64;
            if counting {
                if path == "/sink-slow" {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            } else {
                kept.extend_from_slice(&d);
            }
        }
    }
    let rec = Recorded {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect(),
        body: Bytes::from(kept),
        size,
    };
    seen.lock().unwrap().push(rec.clone());
    let resp = if path == "/slow" {
        tokio::time::sleep(Duration::from_millis(query_u64(&parts.uri, "ms"))).await;
        http::Response::new(full("slow done"))
    } else if path == "/download" {
        let total = query_u64(&parts.uri, "bytes");
        let chunk = 64 * 1024u64;
        let s = futures_util::stream::unfold(0u64, move |off| async move {
            if off >= total {
                return None;
            }
            let n = chunk.min(total - off);
            let data: Vec<u8> = (off..off + n).map(pattern).collect();
            Some((
                Ok::<_, std::io::Error>(hyper::body::Frame::data(Bytes::from(data))),
                off + n,
            ))
        });
        let mut r = http::Response::new(StreamBody::new(s).boxed_unsync());
        r.headers_mut()
            .insert("content-length", total.to_string().parse().unwrap());
        r
    } else if counting {
        http::Response::new(full(size.to_string()))
    } else if let Some(code) = path.strip_prefix("/status/") {
        let mut r = http::Response::new(full(format!("status {code}")));
        *r.status_mut() = code.parse().unwrap_or(http::StatusCode::OK);
        r
    } else {
        let mut r = http::Response::new(full(rec.body.clone()));
        let h = r.headers_mut();
        h.insert("x-echo-method", rec.method.parse().unwrap());
        if let Ok(v) = rec.uri.parse() {
            h.insert("x-echo-uri", v);
        }
        h.insert("x-target-only", "1".parse().unwrap());
        // A hop-by-hop header the relay must not pass on to the visitor.
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        r
    };
    Ok(resp)
}

/// A response as the visitor received it.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Answer {
    /// Header value as a string.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// Sends one HTTP/1.1 request to `addr` with `Host: host` over a new connection and
/// reads the whole answer.
pub async fn request(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: Bytes,
) -> anyhow::Result<Answer> {
    let mut sender = connect(addr).await?;
    send(&mut sender, host, method, path, headers, body).await
}

/// An HTTP/1.1 connection for several requests (keep-alive).
pub type Sender = hyper::client::conn::http1::SendRequest<BoxBody>;

/// Opens a keep-alive HTTP/1.1 connection to `addr`.
pub async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends one request on an open connection and reads the whole answer.
pub async fn send(
    sender: &mut Sender,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: Bytes,
) -> anyhow::Result<Answer> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(full(body))?;
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// Sends a GET for `path` with `Host: host` on an open connection and answers the
/// response as soon as its head arrives (within `timeout`), its body still streaming.
pub async fn get(
    sender: &mut Sender,
    host: &str,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<http::Response<Incoming>> {
    let req = http::Request::builder()
        .uri(path)
        .header("host", host)
        .body(full(Bytes::new()))?;
    sender.ready().await?;
    Ok(tokio::time::timeout(timeout, sender.send_request(req)).await??)
}

/// Sends a streamed body of `size` bytes (pattern bytes) and answers the response.
pub async fn send_streamed(
    addr: SocketAddr,
    host: &str,
    path: &str,
    size: u64,
) -> anyhow::Result<Answer> {
    let mut sender = connect(addr).await?;
    let chunk = 256 * 1024u64;
    let s = futures_util::stream::unfold(0u64, move |off| async move {
        if off >= size {
            return None;
        }
        let n = chunk.min(size - off);
        let data: Vec<u8> = (off..off + n).map(pattern).collect();
        Some((
            Ok::<_, std::io::Error>(hyper::body::Frame::data(Bytes::from(data))),
            off + n,
        ))
    });
    let req = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("host", host)
        .header("content-length", size.to_string())
        .body(StreamBody::new(s).boxed_unsync())?;
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// Writes raw bytes to `addr` and reads until the peer closes or `timeout`; for
/// malformed or unusual requests no client library would send.
pub async fn raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(bytes).await?;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let _ = tokio::time::timeout(timeout, async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Resident memory of a process in KiB, from /proc (Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

//! A minimal W3C WebDriver client over hyper, plus a launcher for Debian's
//! `chromedriver` driving headless Chromium. No extra dependencies; copy this file to
//! reuse it (the end-to-end harness can).
//!
//! Chromium on this offline machine needs the flags in [`CHROME_ARGS`] and a fresh
//! profile, or it stalls trying to reach the network.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// Flags Chromium needs here: headless, no sandbox (root), and no background network.
pub const CHROME_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1440,900",
];

/// The WebDriver element key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where Chromium and its driver are, or why the test cannot run.
pub fn find_browser() -> Result<(PathBuf, PathBuf), String> {
    let find = |names: &[&str]| -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        names.iter().find_map(|n| {
            std::env::split_paths(&path)
                .map(|d| d.join(n))
                .find(|p| p.is_file())
        })
    };
    let chrome = std::env::var_os("PORTHOLE_CHROME")
        .map(PathBuf::from)
        .or_else(|| find(&["chromium", "chromium-browser", "google-chrome"]));
    let driver = std::env::var_os("PORTHOLE_CHROMEDRIVER")
        .map(PathBuf::from)
        .or_else(|| find(&["chromedriver"]));
    match (chrome, driver) {
        (Some(c), Some(d)) => Ok((c, d)),
        _ => Err(
            "chromium and chromedriver are needed for the browser test: install them with \
             `apt-get update && apt-get install -y chromium chromium-driver` \
             (or set PORTHOLE_SKIP_BROWSER=1 to skip it)"
                .to_owned(),
        ),
    }
}

/// A running chromedriver. On drop it ends the sessions still open (so a failed test
/// leaves no Chromium behind; killing chromedriver alone would orphan the browser) and
/// then kills the driver.
pub struct Driver {
    child: tokio::process::Child,
    /// Where it listens.
    pub addr: SocketAddr,
    sessions: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let ids = std::mem::take(&mut *self.sessions.lock().unwrap_or_else(|p| p.into_inner()));
        for id in ids {
            delete_session_blocking(self.addr, &id);
        }
        let _ = self.child.start_kill();
    }
}

/// `DELETE /session/ID` over a plain blocking socket, bounded in time; usable in `Drop`.
fn delete_session_blocking(addr: SocketAddr, id: &str) {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let req = format!(
        "DELETE /session/{id} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).is_ok() {
        // The first bytes of the answer mean the session (and its browser) has ended.
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf);
    }
}

impl Driver {
    /// Starts `chromedriver` on a free loopback port and waits until it is ready.
    pub async fn start(driver: &Path) -> anyhow::Result<Self> {
        // chromedriver cannot report a port it picked, so take a free one and retry on
        // the (unlikely) race with another process.
        let mut last_err = anyhow!("chromedriver did not start");
        for _ in 0..3 {
            let port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0")?;
                l.local_addr()?.port()
            };
            let child = tokio::process::Command::new(driver)
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", driver.display()))?;
            let mut d = Self {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                sessions: Default::default(),
            };
            match d.wait_ready(Duration::from_secs(15)).await {
                Ok(()) => return Ok(d),
                Err(e) => {
                    let _ = d.child.start_kill();
                    last_err = e;
                }
            }
        }
        Err(last_err)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let http = client();
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("chromedriver exited: {status}");
            }
            if let Ok(v) =
                request(&http, "GET", &format!("http://{}/status", self.addr), None).await
            {
                if v["value"]["ready"] == true {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("chromedriver not ready after {timeout:?}")
    }

    /// Opens a headless Chromium session with a fresh profile in `profile`.
    pub async fn session(&self, chrome: &Path, profile: &Path) -> anyhow::Result<Session> {
        let mut args: Vec<String> = CHROME_ARGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": { "binary": chrome, "args": args },
                    "timeouts": { "implicit": 0, "pageLoad": 20000, "script": 20000 },
                }
            }
        });
        let http = client();
        let v = request(
            &http,
            "POST",
            &format!("http://{}/session", self.addr),
            Some(caps),
        )
        .await
        .context("creating a WebDriver session")?;
        let id = v["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no session id in {v}"))?
            .to_owned();
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id.clone());
        Ok(Session {
            http,
            base: format!("http://{}/session/{id}", self.addr),
            id,
            open: std::sync::Arc::clone(&self.sessions),
        })
    }
}

/// One browser session.
pub struct Session {
    http: Client<HttpConnector, Full<Bytes>>,
    base: String,
    id: String,
    /// The driver's list of open sessions, for cleanup on drop.
    open: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// An element handle.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Session {
    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let v = request(&self.http, method, &format!("{}{path}", self.base), body).await?;
        Ok(v["value"].clone())
    }

    /// Navigates to `url`.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.cmd("POST", "/url", Some(json!({ "url": url })))
            .await
            .map(drop)
    }

    /// Sets the window size.
    pub async fn resize(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.cmd(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .await
        .map(drop)
    }

    /// The first element matching `css`, if any.
    pub async fn find(&self, css: &str) -> anyhow::Result<Option<Element>> {
        let body = json!({ "using": "css selector", "value": css });
        let v = self.cmd("POST", "/elements", Some(body)).await?;
        Ok(v.as_array()
            .and_then(|a| a.first())
            .and_then(|e| e[ELEMENT].as_str())
            .map(|s| Element(s.to_owned())))
    }

    /// Waits (bounded) for an element matching `css`.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> anyhow::Result<Element> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.find(css).await? {
                return Ok(e);
            }
            if Instant::now() >= deadline {
                bail!("no element {css:?} after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (bounded) until `script` (a function body) returns true.
    pub async fn wait_until(
        &self,
        what: &str,
        script: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.execute(script, json!([])).await? == Value::Bool(true) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks an element.
    pub async fn click(&self, e: &Element) -> anyhow::Result<()> {
        self.cmd("POST", &format!("/element/{}/click", e.0), Some(json!({})))
            .await
            .map(drop)
    }

    /// Types into an element (or, for special keys, use the WebDriver key codes).
    pub async fn send_keys(&self, e: &Element, text: &str) -> anyhow::Result<()> {
        self.cmd(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(json!({ "text": text })),
        )
        .await
        .map(drop)
    }

    /// An element's rendered text.
    pub async fn text(&self, e: &Element) -> anyhow::Result<String> {
        let v = self
            .cmd("GET", &format!("/element/{}/text", e.0), None)
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and answers its value.
    pub async fn execute(&self, script: &str, args: Value) -> anyhow::Result<Value> {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Saves a PNG screenshot of the viewport to `path` (creating its directory).
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let v = self.cmd("GET", "/screenshot", None).await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().ok_or_else(|| anyhow!("no screenshot data"))?)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// Sends a Chrome DevTools Protocol command (Chromium only), e.g.
    /// `Emulation.setEmulatedMedia` to render the dark theme.
    pub async fn cdp(&self, cmd: &str, params: Value) -> anyhow::Result<Value> {
        self.cmd(
            "POST",
            "/goog/cdp/execute",
            Some(json!({ "cmd": cmd, "params": params })),
        )
        .await
    }

    /// Ends the session (closes the browser).
    pub async fn close(self) -> anyhow::Result<()> {
        request(&self.http, "DELETE", &self.base, None).await?;
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id| *id != self.id);
        Ok(())
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn request(
    http: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))?;
    let resp = tokio::time::timeout(Duration::from_secs(60), http.request(req))
        .await
        .context("webdriver call timed out")??;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let v: Value = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "webdriver answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        )
    })?;
    if !status.is_success() {
        bail!(
            "webdriver {method} {url} failed ({status}): {}",
            v["value"]["message"]
        );
    }
    Ok(v)
}

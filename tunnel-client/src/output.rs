//! What the user sees on stdout: for people, the URL, the inspector address and a line
//! per request; with `--json`, one JSON object per line (`ready`, `request`,
//! `reconnecting`, `reconnected`, `error`), the interface scripts rely on.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;

use crate::capture::{Exchange, ExchangeSink};

/// A tunnel that is online.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Online {
    /// Public name.
    pub name: String,
    /// Public URL.
    pub url: String,
    /// Where it forwards.
    pub target: String,
}

/// The console: human or JSON lines on stdout.
#[derive(Debug)]
pub struct Output {
    json: bool,
    quiet: bool,
    ready_file: Option<PathBuf>,
    lock: Mutex<()>,
}

impl Output {
    /// A console; `quiet` drops the per-request lines.
    pub fn new(json: bool, quiet: bool, ready_file: Option<PathBuf>) -> Self {
        Self {
            json,
            quiet,
            ready_file,
            lock: Mutex::new(()),
        }
    }

    fn line(&self, s: &str) {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = std::io::stdout().lock();
        // A closed stdout (piped to `head`) must not kill the tunnel.
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    }

    /// Tunnels are online for the first time.
    pub fn ready(&self, tunnels: &[Online], inspect: Option<&str>, local_mode: bool) {
        let mut events = Vec::new();
        for t in tunnels {
            events.push(json!({
                "event": "ready",
                "url": t.url,
                "name": t.name,
                "target": t.target,
                "inspect": inspect,
            }));
        }
        if let Some(path) = &self.ready_file {
            let text: String = events.iter().map(|e| format!("{e}\n")).collect();
            // Written whole then renamed, so a script polling for the file never
            // reads half of it.
            let tmp = path.with_extension("tmp");
            if std::fs::write(&tmp, text)
                .and_then(|_| std::fs::rename(&tmp, path))
                .is_err()
            {
                self.error(&format!("could not write --ready-file {}", path.display()));
            }
        }
        if self.json {
            for e in events {
                self.line(&e.to_string());
            }
            return;
        }
        let mut s = String::new();
        if local_mode {
            s.push_str("porthole · local mode (in-process relay on this machine)\n");
        } else {
            s.push_str("porthole · tunnel online\n");
        }
        for t in tunnels {
            s.push_str(&format!("  url      {}  →  {}\n", t.url, t.target));
        }
        if let Some(i) = inspect {
            s.push_str(&format!("  inspect  {i}\n"));
        }
        s.push_str("  (Ctrl-C to stop)");
        self.line(&s);
    }

    /// The session was lost; a reconnect is scheduled.
    pub fn reconnecting(&self, attempt: u32, delay: Duration, reason: &str) {
        if self.json {
            self.line(
                &json!({
                    "event": "reconnecting",
                    "attempt": attempt,
                    "delay_ms": delay.as_millis() as u64,
                    "reason": reason,
                })
                .to_string(),
            );
        } else {
            self.line(&format!(
                "reconnecting in {} (attempt {attempt}): {reason}",
                humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
            ));
        }
    }

    /// The session is back, with the same URLs.
    pub fn reconnected(&self, tunnels: &[Online]) {
        if self.json {
            for t in tunnels {
                self.line(
                    &json!({"event": "reconnected", "url": t.url, "name": t.name}).to_string(),
                );
            }
        } else {
            for t in tunnels {
                self.line(&format!("reconnected: {} is online again", t.url));
            }
        }
    }

    /// A fatal or notable error, one sentence.
    pub fn error(&self, message: &str) {
        if self.json {
            self.line(&json!({"event": "error", "message": message}).to_string());
        } else {
            eprintln!("porthole: {message}");
        }
    }
}

impl ExchangeSink for Output {
    fn record(&self, ex: &Exchange) {
        if self.quiet {
            return;
        }
        let status = ex.response.as_ref().map(|r| r.status);
        let ms = ex.duration.as_secs_f64() * 1000.0;
        if self.json {
            self.line(
                &json!({
                    "event": "request",
                    "id": ex.id.0,
                    "tunnel": ex.tunnel,
                    "method": ex.request.method,
                    "path": ex.request.uri,
                    "status": status,
                    "duration_ms": (ms * 10.0).round() / 10.0,
                    "outcome": ex.outcome.kind(),
                    "error": ex.outcome.reason(),
                    "replay_of": ex.replay_of.map(|r| r.0),
                    "signature": ex.signature,
                })
                .to_string(),
            );
        } else {
            let status = status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "---".into());
            let mut line = format!(
                "{:<7} {:<40} {status}  {ms:.1} ms",
                ex.request.method, ex.request.uri
            );
            if let Some(r) = ex.outcome.reason() {
                line.push_str(&format!("  ({r})"));
            }
            if let Some(sig) = &ex.signature {
                line.push_str(&format!("  {}", sig.console()));
            }
            if let Some(of) = ex.replay_of {
                line.push_str(&format!("  [replay of #{of}]"));
            }
            self.line(&line);
        }
    }
}

//! `porthole wait`: blocks until an exchange matching a method / path / body condition
//! shows up in a running daemon's inspector, so a CI job can assert that a webhook
//! reached its preview environment. Exit 0 on a match (its summary printed as JSON on
//! stdout), [`crate::exit::TIMEOUT`] when none arrives in time.
//!
//! It polls `GET /api/requests` (newest first) rather than following `/api/events`:
//! polling also sees exchanges that arrived before `wait` started, which is the usual
//! race in a script (send the webhook, then wait for it).

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use serde_json::Value;

use crate::exit;
use crate::inspector::cli::{ApiClient, InspectorAddr};
use crate::inspector::ExchangeSummary;

/// Pause between two looks at the inspector.
const POLL: Duration = Duration::from_millis(200);

/// Flags of `porthole wait`.
#[derive(Debug, Clone, clap::Args)]
pub struct WaitArgs {
    /// Where the daemon's inspector is.
    #[command(flatten)]
    pub inspector: InspectorAddr,
    /// Only this method (case-insensitive).
    #[arg(long)]
    pub method: Option<String>,
    /// Only this path: exact (`/stripe`, query ignored unless given) or a prefix
    /// ending in `*` (`/hooks/*`).
    #[arg(long)]
    pub path: Option<String>,
    /// Only requests whose body contains this text.
    #[arg(long)]
    pub body_contains: Option<String>,
    /// Only exchanges the target answered with this status.
    #[arg(long)]
    pub status: Option<u16>,
    /// Give up after this long, exiting 4.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Also accept exchanges that arrived up to this long before `wait` started
    /// (`all` for the whole history, `now` for new ones only).
    #[arg(long, default_value = "5m", value_parser = parse_since)]
    pub since: Since,
}

/// How far back `wait` looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// The whole history.
    All,
    /// This long before `wait` started.
    Ago(Duration),
}

fn parse_since(s: &str) -> Result<Since, String> {
    match s {
        "all" => Ok(Since::All),
        "now" => Ok(Since::Ago(Duration::ZERO)),
        _ => humantime::parse_duration(s)
            .map(Since::Ago)
            .map_err(|e| format!("expected a duration like 5m, `all` or `now`: {e}")),
    }
}

impl WaitArgs {
    fn describe(&self) -> String {
        let mut parts = vec![
            self.method.clone().unwrap_or_else(|| "any method".into()),
            self.path.clone().unwrap_or_else(|| "any path".into()),
        ];
        if let Some(b) = &self.body_contains {
            parts.push(format!("with a body containing {b:?}"));
        }
        if let Some(s) = self.status {
            parts.push(format!("answered {s}"));
        }
        parts.join(" ")
    }

    /// Whether the summary matches everything but the body.
    fn head_matches(&self, ex: &ExchangeSummary, cutoff: Option<&str>) -> bool {
        if let Some(c) = cutoff {
            // Both sides are RFC 3339 UTC with milliseconds: they sort as text.
            if ex.started_at.as_str() < c {
                return false;
            }
        }
        if let Some(m) = &self.method {
            if !ex.method.eq_ignore_ascii_case(m.trim()) {
                return false;
            }
        }
        if let Some(p) = &self.path {
            if !path_matches(p, &ex.path) {
                return false;
            }
        }
        if let Some(s) = self.status {
            if ex.status != Some(s) {
                return false;
            }
        }
        true
    }
}

fn path_matches(pattern: &str, path: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix('*') {
        return path.starts_with(prefix);
    }
    if pattern.contains('?') {
        return path == pattern;
    }
    path.split('?').next() == Some(pattern)
}

/// Runs `porthole wait`: prints the matching exchange's summary as one JSON line.
pub async fn run(args: &WaitArgs, out: &mut (dyn std::io::Write + Send)) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.inspector).map_err(exit::usage)?;
    let started = SystemTime::now();
    let cutoff = match args.since {
        Since::All => None,
        Since::Ago(d) => Some(crate::inspector::time::rfc3339(
            started.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH),
        )),
    };
    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut checked: HashSet<u64> = HashSet::new();
    let mut last_error: Option<anyhow::Error> = None;
    let mut reached = false;
    loop {
        match look(args, &client, cutoff.as_deref(), &mut checked).await {
            Ok(Some(found)) => {
                writeln!(out, "{}", serde_json::to_string(&found)?)?;
                return Ok(());
            }
            Ok(None) => reached = true,
            Err(e) => last_error = Some(e),
        }
        if tokio::time::Instant::now() + POLL > deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let waited = humantime::format_duration(args.timeout);
    match (reached, last_error) {
        (false, Some(e)) => Err(e.context(format!("waited {waited}"))),
        _ => Err(anyhow::Error::new(exit::Exit {
            code: exit::TIMEOUT,
            message: format!(
                "no exchange matching {} arrived within {waited}",
                args.describe()
            ),
        })),
    }
}

/// One look at the newest exchanges; answers the first match.
async fn look(
    args: &WaitArgs,
    client: &ApiClient,
    cutoff: Option<&str>,
    checked: &mut HashSet<u64>,
) -> anyhow::Result<Option<ExchangeSummary>> {
    let body = client
        .call(http::Method::GET, "/api/requests?limit=500", None)
        .await?;
    let list: Vec<ExchangeSummary> =
        serde_json::from_slice(&body).context("reading the inspector's answer")?;
    // Oldest first, so the first webhook to arrive is the one reported.
    for ex in list.into_iter().rev() {
        if checked.contains(&ex.id) || !args.head_matches(&ex, cutoff) {
            continue;
        }
        // An exchange still in flight has no status yet; look at it again later.
        if ex.status.is_none() && ex.outcome.is_empty() {
            continue;
        }
        checked.insert(ex.id);
        let Some(needle) = &args.body_contains else {
            return Ok(Some(ex));
        };
        let detail = client
            .call(http::Method::GET, &format!("/api/requests/{}", ex.id), None)
            .await?;
        let detail: Value =
            serde_json::from_slice(&detail).context("reading the inspector's answer")?;
        let text = detail["request"]["body_text"].as_str().unwrap_or("");
        if text.contains(needle.as_str()) {
            return Ok(Some(ex));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_exactly_or_by_prefix() {
        assert!(path_matches("/stripe", "/stripe"));
        assert!(path_matches("/stripe", "/stripe?x=1"));
        assert!(!path_matches("/stripe", "/stripe/2"));
        assert!(path_matches("/hooks/*", "/hooks/a"));
        assert!(!path_matches("/a?x=1", "/a?x=2"));
    }

    #[test]
    fn since_parses() {
        assert_eq!(parse_since("all"), Ok(Since::All));
        assert_eq!(parse_since("now"), Ok(Since::Ago(Duration::ZERO)));
        assert_eq!(parse_since("2m"), Ok(Since::Ago(Duration::from_secs(120))));
        assert!(parse_since("soon").is_err());
    }
}

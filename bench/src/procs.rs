//! Child processes: spawning with kill-on-drop, reading their stdout lines with timeouts,
//! and reading CPU time and memory from `/proc`.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Clock ticks per second for `/proc/PID/stat` times (`USER_HZ`, 100 on Linux).
const CLK_TCK: u64 = 100;

/// A running child process, killed when dropped.
pub struct Proc {
    /// Human name used in errors ("porthole-relay", "bore local", …).
    pub name: String,
    /// OS process id.
    pub pid: u32,
    child: Child,
    stderr_log: PathBuf,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// Spawns `cmd` with stdin closed, stdout piped (lines readable via [`Proc::wait_line`];
    /// always drained so the child never blocks on a full pipe) and stderr (or both streams,
    /// if `merge_stderr`) appended to `log_dir/<slug>.log`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Self> {
        let slug: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let stderr_log = log_dir.join(format!("{slug}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_log)
            .with_context(|| format!("creating log file {}", stderr_log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("spawning {name}"))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("{name} exited immediately"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("{name}: no stdout pipe"))?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                // Keep draining even when nobody listens or the queue is full.
                let _ = tx.try_send(line);
            }
        });
        Ok(Self {
            name: name.to_string(),
            pid,
            child,
            stderr_log,
            lines: rx,
        })
    }

    /// Waits up to `timeout` for a stdout line for which `pred` returns `Some`.
    pub async fn wait_line<T>(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Err(_) => bail!(
                    "{} did not print the expected line within {:?}{}",
                    self.name,
                    timeout,
                    self.stderr_tail()
                ),
                Ok(None) => {
                    let status = tokio::time::timeout(Duration::from_secs(2), self.child.wait())
                        .await
                        .ok()
                        .and_then(|r| r.ok());
                    bail!(
                        "{} closed stdout before printing the expected line (exit: {}){}",
                        self.name,
                        fmt_status(status),
                        self.stderr_tail()
                    )
                }
                Ok(Some(line)) => {
                    if let Some(v) = pred(&line) {
                        return Ok(v);
                    }
                }
            }
        }
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => bail!(
                "{} exited unexpectedly ({}){}",
                self.name,
                st,
                self.stderr_tail()
            ),
            Err(e) => bail!("{}: cannot query status: {e}", self.name),
        }
    }

    /// The last lines of the child's stderr log, formatted for an error message.
    pub fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            return format!(" (stderr empty: {})", self.stderr_log.display());
        }
        let tail = &lines[lines.len().saturating_sub(12)..];
        format!(
            "\n--- last stderr lines of {} ({}) ---\n{}",
            self.name,
            self.stderr_log.display(),
            tail.join("\n")
        )
    }

    /// Kills the process and waits for it (bounded).
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.child.wait()).await;
    }
}

fn fmt_status(st: Option<ExitStatus>) -> String {
    st.map(|s| s.to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

/// Runs a short command to completion (bounded by `timeout`) and returns the last
/// non-empty line of its stdout.
pub async fn last_line_of(name: &str, mut cmd: Command, timeout: Duration) -> Result<String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| anyhow!("{name} did not finish within {timeout:?}"))?
        .with_context(|| format!("running {name}"))?;
    if !out.status.success() {
        bail!(
            "{name} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{name} printed nothing on stdout"))
}

/// User + system CPU time of a process (all its threads, live or exited), in µs.
pub fn cpu_us(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Field 2 (comm) may contain spaces; the rest starts after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11).and_then(|s| s.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((utime + stime) * 1_000_000 / CLK_TCK)
}

fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no {key} in /proc/{pid}/status"))
}

/// Current resident set size, KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// The anonymous part of the resident set (heap, stacks), KiB: memory private to the
/// process. The rest of VmRSS is mostly the executable's and libraries' code pages,
/// which are shared with the page cache and so count once for all processes that map
/// them.
pub fn rss_anon_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "RssAnon:")
}

/// Peak resident set size since start or the last [`reset_peak_rss`], KiB.
pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmHWM:")
}

/// Resets the peak RSS counter (`echo 5 > /proc/PID/clear_refs`). Returns false when the
/// kernel refuses, in which case [`peak_rss_kib`] is the peak since process start.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

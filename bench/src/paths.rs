//! The paths under test: direct to the target, through Porthole, and optionally through
//! the peers bore and rathole. Each path is an address plus a Host header, and the
//! tunnel processes whose CPU and memory are charged to it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use tokio::process::Command;

use crate::client;
use crate::procs::{last_line_of, Proc};

/// How long a daemon may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Process label of the `--inspector` path's client.
pub const INSPECT_CLIENT: &str = "porthole (inspect)";

/// A way to reach the target.
pub struct PathUnderTest {
    /// Row label: `direct`, `porthole`, `bore`, `rathole-noise`, …
    pub name: String,
    /// Where visitors connect.
    pub addr: SocketAddr,
    /// Host header visitors send.
    pub host: String,
    /// Tunnel processes (CPU and RSS are charged to the path); empty for direct.
    pub procs: Vec<Proc>,
    /// Processes this path shares with another (the relay of a second client), charged
    /// to both but stopped by their owner.
    pub shared: Vec<(String, u32)>,
}

impl PathUnderTest {
    /// Direct to the target.
    pub fn direct(target: SocketAddr) -> Self {
        Self {
            name: "direct".into(),
            addr: target,
            host: target.to_string(),
            procs: Vec::new(),
            shared: Vec::new(),
        }
    }

    /// Process ids and names of the tunnel processes.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let shared = self.shared.iter().cloned();
        shared
            .chain(self.procs.iter().map(|p| (p.name.clone(), p.pid)))
            .collect()
    }

    /// Fails if any tunnel process died.
    pub fn check_alive(&mut self) -> Result<()> {
        for p in &mut self.procs {
            p.check_alive()?;
        }
        Ok(())
    }

    /// Stops the tunnel processes.
    pub async fn stop(self) {
        for p in self.procs {
            p.stop().await;
        }
    }
}

/// Removes ANSI escape sequences (colored tracing output).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn parse_json_event(line: &str, event: &str) -> Option<Value> {
    let v: Value = serde_json::from_str(line.trim()).ok()?;
    (v.get("event")?.as_str()? == event).then_some(v)
}

fn json_addr(v: &Value, key: &str) -> Result<SocketAddr> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("listening event has no {key:?}: {v}"))?
        .parse()
        .with_context(|| format!("parsing {key:?} address in {v}"))
}

/// A free loopback TCP port (bound then released; used only where a tool cannot be told
/// to bind port 0 and report it).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// A running Porthole relay.
pub struct Relay {
    /// The relay process.
    pub proc: Proc,
    /// Its addresses and credentials.
    pub info: RelayInfo,
}

/// Binaries and scratch space for Porthole.
pub struct PortholeBins {
    /// `porthole-relay`.
    pub relay: PathBuf,
    /// `porthole`.
    pub client: PathBuf,
    /// Scratch directory (data dir, logs).
    pub work: PathBuf,
    /// Whether `porthole http` accepts `--quiet`.
    pub client_has_quiet: bool,
}

impl PortholeBins {
    /// Checks the binaries exist and probes `porthole http --help` for `--quiet`.
    pub async fn probe(relay: PathBuf, client: PathBuf, work: PathBuf) -> Result<Self> {
        for b in [&relay, &client] {
            if !b.is_file() {
                bail!(
                    "{} not found; build it with `cargo build --release --bins` or pass --bin-dir",
                    b.display()
                );
            }
        }
        let mut help = Command::new(&client);
        help.args(["http", "--help"]).kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(10), help.output())
            .await
            .map_err(|_| anyhow!("`porthole http --help` hung"))?
            .context("running `porthole http --help`")?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(Self {
            relay,
            client,
            work,
            client_has_quiet: text.contains("--quiet"),
        })
    }

    /// Creates a token and the certificate, starts `porthole-relay serve` on ephemeral
    /// ports and waits for its `listening` event.
    pub async fn start_relay(&self) -> Result<Relay> {
        // A data dir of its own for each relay started (the in-flight scenario starts a
        // fresh one next to the main relay).
        let data = (1..)
            .map(|i| match i {
                1 => self.work.join("relay-data"),
                i => self.work.join(format!("relay-data-{i}")),
            })
            .find(|d| !d.exists())
            .expect("an unused directory name");
        std::fs::create_dir_all(&data)?;
        let mut cmd = Command::new(&self.relay);
        cmd.args(["token", "add", "bench", "--data-dir"]).arg(&data);
        let token = last_line_of("porthole-relay token add", cmd, Duration::from_secs(20)).await?;
        let mut cmd = Command::new(&self.relay);
        cmd.args(["fingerprint", "--data-dir"]).arg(&data);
        let pin = last_line_of("porthole-relay fingerprint", cmd, Duration::from_secs(20)).await?;
        if !pin.starts_with("sha256:") {
            bail!("porthole-relay fingerprint printed {pin:?}, expected sha256:<hex>");
        }
        let mut cmd = Command::new(&self.relay);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--domain",
                "localhost",
                "--http-addr",
                "127.0.0.1:0",
                "--tunnel-addr",
                "127.0.0.1:0",
                "--admin-addr",
                "off",
                "--json",
                // The queue-mode run stores far more than the default retention
                // (10,000 per name) while its backlog drains: keep it all, so every
                // answer is the 202 being measured.
                "--queue-max-count",
                "1000000000",
                "--queue-max-bytes",
                "1000000000000",
            ])
            .env("RUST_LOG", "warn");
        let mut proc = Proc::spawn("porthole-relay", cmd, &self.work)?;
        let ev = proc
            .wait_line(READY_TIMEOUT, |l| parse_json_event(l, "listening"))
            .await?;
        let http = json_addr(&ev, "http")?;
        let tunnel = json_addr(&ev, "tunnel")?;
        if let Some(p) = ev.get("pin").and_then(Value::as_str) {
            if p != pin {
                bail!("relay pin {p} differs from `fingerprint` output {pin}");
            }
        }
        Ok(Relay {
            proc,
            info: RelayInfo {
                http,
                tunnel,
                token,
                pin,
            },
        })
    }

    /// Spawns `porthole http` for `target` (not waiting for it).
    pub fn spawn_client(
        &self,
        relay: &RelayInfo,
        target: SocketAddr,
        name: &str,
        inspect: Option<&str>,
    ) -> Result<Proc> {
        self.spawn_client_with(relay, target, name, inspect, &[], &[])
    }

    /// [`PortholeBins::spawn_client`] with extra flags (`--delivery queue`) and
    /// environment variables.
    pub fn spawn_client_with(
        &self,
        relay: &RelayInfo,
        target: SocketAddr,
        name: &str,
        inspect: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Proc> {
        // History and the delivered set in the bench's own scratch dir, never the
        // user's (a big delivered set would skew start-up time and memory).
        let mut cmd = self.client_command(relay, target, &self.work);
        cmd.envs(env.iter().copied());
        cmd.arg("--name")
            .arg(name)
            .arg("--inspect")
            .arg(inspect.unwrap_or("off"))
            .args(extra);
        Proc::spawn(&format!("porthole http ({name})"), cmd, &self.work)
    }

    /// Spawns `porthole http` with a relay-chosen name, the inspector off, and its data
    /// directory in `data` (the memory scenario starts many of them).
    pub fn spawn_client_anon(
        &self,
        relay: &RelayInfo,
        target: SocketAddr,
        label: &str,
        data: &Path,
    ) -> Result<Proc> {
        let mut cmd = self.client_command(relay, target, data);
        cmd.args(["--inspect", "off"]);
        Proc::spawn(label, cmd, &self.work)
    }

    /// `porthole http` for `target` through `relay`, with JSON events (and `--quiet`
    /// when supported) and its data directory in `data`.
    fn client_command(&self, relay: &RelayInfo, target: SocketAddr, data: &Path) -> Command {
        let mut cmd = Command::new(&self.client);
        cmd.arg("http")
            .arg(target.to_string())
            .arg("--relay")
            .arg(relay.tunnel.to_string())
            .arg("--token")
            .arg(&relay.token)
            .arg("--relay-pin")
            .arg(&relay.pin)
            .arg("--json")
            .env("PORTHOLE_DATA_DIR", data)
            .env("RUST_LOG", "warn");
        if self.client_has_quiet {
            cmd.arg("--quiet");
        }
        cmd
    }
}

/// What `porthole http --json` announced.
pub struct Ready {
    /// Host header (authority of the public URL).
    pub host: String,
}

/// Waits for the client's `ready` event.
pub async fn wait_ready(client: &mut Proc, timeout: Duration) -> Result<Ready> {
    let ev = client
        .wait_line(timeout, |l| parse_json_event(l, "ready"))
        .await?;
    let url = ev
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("ready event has no url: {ev}"))?;
    let host = url
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(url)
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    if host.is_empty() {
        bail!("cannot take a host out of url {url:?}");
    }
    Ok(Ready { host })
}

/// Runs `measure` on a relay and client of their own (see [`porthole`]), then stops them
/// (see [`measure_then_stop`]).
pub async fn on_fresh_porthole<T>(
    bins: &PortholeBins,
    target: SocketAddr,
    measure: impl AsyncFnOnce(&PathUnderTest, &RelayInfo) -> Result<T>,
) -> Result<T> {
    let (fresh, info) = porthole(bins, target).await?;
    measure_then_stop(fresh, async |p| measure(p, &info).await).await
}

/// Runs `measure` on `path`, then stops its processes; their dying during the
/// measurement is the error.
pub async fn measure_then_stop<T>(
    mut path: PathUnderTest,
    measure: impl AsyncFnOnce(&PathUnderTest) -> Result<T>,
) -> Result<T> {
    let measured = measure(&path).await;
    let alive = path.check_alive();
    path.stop().await;
    alive.and(measured)
}

/// Starts a relay and one client for `target`; returns the path (processes: relay, then
/// client) and the relay's coordinates for spawning more clients later.
pub async fn porthole(
    bins: &PortholeBins,
    target: SocketAddr,
) -> Result<(PathUnderTest, RelayInfo)> {
    let relay = bins.start_relay().await?;
    let info = relay.info;
    let mut client = bins.spawn_client(&info, target, "bench", None)?;
    let ready = wait_ready(&mut client, READY_TIMEOUT).await?;
    let mut relay_proc = relay.proc;
    relay_proc.name = "porthole-relay".into();
    client.name = "porthole".into();
    Ok((
        PathUnderTest {
            name: "porthole".into(),
            addr: info.http,
            host: ready.host,
            procs: vec![relay_proc, client],
            shared: Vec::new(),
        },
        info,
    ))
}

/// A second client on the same relay in queue mode (`--delivery queue`): the relay
/// answers 202 once each request is durably stored and delivers it afterwards. Only
/// its c=64 throughput is measured (queued bodies are capped, so no bulk runs); the
/// relay's CPU is charged to the passthrough path, so none is reported here.
pub async fn porthole_queue(
    bins: &PortholeBins,
    info: &RelayInfo,
    target: SocketAddr,
) -> Result<PathUnderTest> {
    let client = bins.spawn_client_with(
        info,
        target,
        "bench-queue",
        None,
        &["--delivery", "queue"],
        &[],
    )?;
    second_client(
        info,
        client,
        "porthole (queue)",
        "porthole-queue",
        Vec::new(),
    )
    .await
}

/// A second passthrough client on the same relay with the inspector on (history in the
/// bench's scratch dir, default limits): measured in every round beside `porthole`, so
/// the cost of capture is a same-round ratio. The relay is charged to both paths.
pub async fn porthole_inspect(
    bins: &PortholeBins,
    info: &RelayInfo,
    relay_pid: u32,
    target: SocketAddr,
) -> Result<PathUnderTest> {
    // Not `bench-inspect`: the idle-RSS probe uses that name and would take it over.
    let client = bins.spawn_client(info, target, "bench-inspector", Some("127.0.0.1:0"))?;
    let relay = vec![("porthole-relay".into(), relay_pid)];
    second_client(info, client, INSPECT_CLIENT, "porthole+inspect", relay).await
}

/// A second passthrough client on the same relay with its bulk lane off
/// (`PORTHOLE_BULK_LANE=off`): the head-of-line control, measured in every round beside
/// `porthole`, whose large bodies take the lane. The relay is charged to both paths.
pub async fn porthole_lane_off(
    bins: &PortholeBins,
    info: &RelayInfo,
    relay_pid: u32,
    target: SocketAddr,
) -> Result<PathUnderTest> {
    let env = [("PORTHOLE_BULK_LANE", "off")];
    let client = bins.spawn_client_with(info, target, "bench-lane-off", None, &[], &env)?;
    let relay = vec![("porthole-relay".into(), relay_pid)];
    second_client(info, client, "porthole (lane off)", LANE_OFF, relay).await
}

/// The row of [`porthole_lane_off`]'s client.
pub const LANE_OFF: &str = "porthole, bulk lane off";

/// Waits for a further client on the relay of `info` and makes it a path: its process
/// is labelled `label`, the row `name`; `shared` are processes charged to it too.
async fn second_client(
    info: &RelayInfo,
    mut client: Proc,
    label: &str,
    name: &str,
    shared: Vec<(String, u32)>,
) -> Result<PathUnderTest> {
    let ready = wait_ready(&mut client, READY_TIMEOUT).await?;
    client.name = label.into();
    Ok(PathUnderTest {
        name: name.into(),
        addr: info.http,
        host: ready.host,
        procs: vec![client],
        shared,
    })
}

/// Relay coordinates for spawning more clients after setup.
#[derive(Clone)]
pub struct RelayInfo {
    /// Public HTTP ingress.
    pub http: SocketAddr,
    /// QUIC listener.
    pub tunnel: SocketAddr,
    /// Client token.
    pub token: String,
    /// Certificate pin.
    pub pin: String,
}

/// bore: `bore server` on loopback + `bore local` toward the target.
pub async fn bore(bin: &Path, target: SocketAddr, work: &Path) -> Result<PathUnderTest> {
    // bore's control port is fixed (7835); refuse to collide with something else.
    if std::net::TcpStream::connect("127.0.0.1:7835").is_ok() {
        bail!("port 7835 (bore's fixed control port) is already in use");
    }
    let mut cmd = Command::new(bin);
    cmd.args(["server", "--bind-addr", "127.0.0.1", "--min-port", "20000"])
        .env("NO_COLOR", "1");
    let mut server = Proc::spawn("bore server", cmd, work)?;
    server
        .wait_line(READY_TIMEOUT, |l| {
            strip_ansi(l).contains("server listening").then_some(())
        })
        .await?;
    let mut cmd = Command::new(bin);
    cmd.arg("local")
        .arg(target.port().to_string())
        .args([
            "--local-host",
            &target.ip().to_string(),
            "--to",
            "127.0.0.1",
        ])
        .env("NO_COLOR", "1");
    let mut local = Proc::spawn("bore local", cmd, work)?;
    let addr: SocketAddr = local
        .wait_line(READY_TIMEOUT, |l| {
            let l = strip_ansi(l);
            let (_, rest) = l.split_once("listening at ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .await?;
    let addr = SocketAddr::new([127, 0, 0, 1].into(), addr.port());
    wait_reachable(addr, Instant::now() + READY_TIMEOUT).await?;
    Ok(PathUnderTest {
        name: "bore".into(),
        addr,
        host: addr.to_string(),
        procs: vec![server, local],
        shared: Vec::new(),
    })
}

/// rathole with the given transport (`"noise"` or `"tcp"`).
pub async fn rathole(
    bin: &Path,
    target: SocketAddr,
    work: &Path,
    transport: &str,
) -> Result<PathUnderTest> {
    let ctrl = free_port()?;
    let public = free_port()?;
    let (server_tr, client_tr) = if transport == "noise" {
        let mut cmd = Command::new(bin);
        cmd.arg("--genkey");
        cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(10), cmd.output())
            .await
            .map_err(|_| anyhow!("rathole --genkey hung"))?
            .context("running rathole --genkey")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let mut private = None;
        let mut public_key = None;
        while let Some(l) = lines.next() {
            if l.starts_with("Private Key") {
                private = lines.next().map(str::to_string);
            } else if l.starts_with("Public Key") {
                public_key = lines.next().map(str::to_string);
            }
        }
        let (Some(private), Some(public_key)) = (private, public_key) else {
            bail!("cannot parse `rathole --genkey` output:\n{text}");
        };
        (
            format!("[server.transport]\ntype = \"noise\"\n[server.transport.noise]\nlocal_private_key = \"{private}\"\n"),
            format!("[client.transport]\ntype = \"noise\"\n[client.transport.noise]\nremote_public_key = \"{public_key}\"\n"),
        )
    } else {
        (
            "[server.transport]\ntype = \"tcp\"\n".to_string(),
            "[client.transport]\ntype = \"tcp\"\n".to_string(),
        )
    };
    let server_toml = format!(
        "[server]\nbind_addr = \"127.0.0.1:{ctrl}\"\n{server_tr}\n[server.services.bench]\ntoken = \"porthole-bench-token\"\nbind_addr = \"127.0.0.1:{public}\"\n"
    );
    let client_toml = format!(
        "[client]\nremote_addr = \"127.0.0.1:{ctrl}\"\n{client_tr}\n[client.services.bench]\ntoken = \"porthole-bench-token\"\nlocal_addr = \"{target}\"\n"
    );
    let sp = work.join(format!("rathole-{transport}-server.toml"));
    let cp = work.join(format!("rathole-{transport}-client.toml"));
    std::fs::write(&sp, server_toml)?;
    std::fs::write(&cp, client_toml)?;
    let mut cmd = Command::new(bin);
    cmd.arg("-s").arg(&sp).env("RUST_LOG", "warn");
    let server = Proc::spawn(&format!("rathole-{transport} server"), cmd, work)?;
    let mut cmd = Command::new(bin);
    cmd.arg("-c").arg(&cp).env("RUST_LOG", "warn");
    let client = Proc::spawn(&format!("rathole-{transport} client"), cmd, work)?;
    let addr = SocketAddr::new([127, 0, 0, 1].into(), public);
    let mut path = PathUnderTest {
        name: format!("rathole-{transport}"),
        addr,
        host: addr.to_string(),
        procs: vec![server, client],
        shared: Vec::new(),
    };
    // rathole prints no machine-readable ready line: poll until a request goes through.
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        path.check_alive()?;
        if matches!(
            client::get_status(addr, &path.host, "/").await,
            Ok(http::StatusCode::OK)
        ) {
            break;
        }
        if Instant::now() > deadline {
            bail!("rathole-{transport} never forwarded a request within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(path)
}

async fn wait_reachable(addr: SocketAddr, deadline: Instant) -> Result<()> {
    client::wait_for_200(addr, &addr.to_string(), deadline)
        .await
        .map(|_| ())
}

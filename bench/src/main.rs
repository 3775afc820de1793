//! `porthole-bench`: measures what the tunnel adds over talking to the target directly.
//!
//! One run sets up a neutral target, the direct path, Porthole (relay + client) and, with
//! `--peers`, bore and rathole; then runs the scenarios of `PERFORMANCE.md` interleaved
//! over several rounds (webhook latency at c=1, throughput and CPU per request at c=64,
//! bulk download and upload), measures idle memory and time to URL, prints a table of
//! medians and same-run ratios against direct, and writes it as JSON.
//!
//! Run it with `cargo run --release -p porthole-bench -- [--quick] [--peers]`.

mod body;
mod client;
mod memory;
mod paths;
mod procs;
mod report;
mod target;
mod wrk;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use tokio::process::Command;

use paths::{PathUnderTest, PortholeBins, RelayInfo};
use procs::Proc;
use report::{PathReport, Report, Round, TimeToUrl};

/// Porthole benchmark: direct vs through the tunnel, interleaved, same run.
#[derive(Parser, Debug)]
#[command(name = "porthole-bench", version)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Sub>,
    /// Short run (~1 minute): 2 rounds, shorter load runs, 5 time-to-URL samples.
    #[arg(long)]
    quick: bool,
    /// Interleaved rounds (default 5, or 2 with --quick).
    #[arg(long)]
    rounds: Option<u32>,
    /// Also measure bore and rathole (noise and tcp) if their binaries are on PATH.
    #[arg(long)]
    peers: bool,
    /// Measure only the direct baseline (validates the harness without Porthole).
    #[arg(long)]
    direct_only: bool,
    /// Also measure queue-mode throughput (durable store, fsync on). It runs after
    /// everything else: its backlog drains through the tunnel afterwards and would
    /// disturb any measurement taken meanwhile.
    #[arg(long)]
    queue: bool,
    /// Also measure a second client with the inspector on, in every round beside the
    /// plain one (capture cost as a same-round ratio), then flood it with large bodies
    /// and report its peak RSS.
    #[arg(long)]
    inspector: bool,
    /// Idle clients (one session and one tunnel each) for the relay's memory per idle
    /// tunnel (default 1000, or 100 with --quick; 0 skips).
    #[arg(long)]
    idle_tunnels: Option<usize>,
    /// Requests held in flight at once for the relay's and client's memory (default
    /// 10000, or 1000 with --quick; 0 skips).
    #[arg(long)]
    in_flight: Option<usize>,
    /// Do not run `cargo build --release` for porthole and porthole-relay first.
    #[arg(long)]
    no_build: bool,
    /// Directory holding `porthole` and `porthole-relay` (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where to write the JSON results (default: bench-results.json in the target directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seconds per c=1 latency run (default 3, or 1 with --quick).
    #[arg(long)]
    latency_secs: Option<u32>,
    /// Seconds per c=64 throughput run (default 4, or 2 with --quick).
    #[arg(long)]
    throughput_secs: Option<u32>,
    /// Connections for the throughput scenario.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Size of the bulk download and upload, MiB.
    #[arg(long, default_value_t = 100)]
    bulk_mib: u64,
    /// Size of the background download in the head-of-line scenario, MiB (0 skips it).
    #[arg(long, default_value_t = 1024)]
    hol_mib: u64,
    /// Read rate of that background download, MB/s.
    #[arg(long, default_value_t = 100)]
    hol_rate_mbps: u64,
    /// Time-to-URL samples (default 20, or 5 with --quick).
    #[arg(long)]
    ttu_samples: Option<u32>,
    /// Worker threads of the target server.
    #[arg(long, default_value_t = 2)]
    target_threads: usize,
    /// Keep the scratch directory (logs, relay data) after the run.
    #[arg(long)]
    keep_work: bool,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Run the neutral target server (used internally as a child process).
    #[command(hide = true)]
    TargetServer {
        /// Address to bind.
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: String,
        /// Worker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
}

/// Resolved settings.
#[derive(Debug, Clone, serde::Serialize)]
struct Config {
    rounds: u32,
    latency_secs: u32,
    throughput_secs: u32,
    warmup_secs: u32,
    connections: u32,
    bulk_bytes: u64,
    hol_bytes: u64,
    hol_rate: u64,
    ttu_samples: u32,
    quick: bool,
    peers: bool,
    direct_only: bool,
}

impl Config {
    fn from_args(a: &Args) -> Self {
        let q = a.quick;
        Self {
            rounds: a.rounds.unwrap_or(if q { 2 } else { 5 }).max(1),
            latency_secs: a.latency_secs.unwrap_or(if q { 1 } else { 3 }).max(1),
            throughput_secs: a.throughput_secs.unwrap_or(if q { 2 } else { 4 }).max(1),
            warmup_secs: 1,
            connections: a.connections.max(1),
            bulk_bytes: a.bulk_mib.max(1) * 1024 * 1024,
            hol_bytes: a.hol_mib * 1024 * 1024,
            hol_rate: a.hol_rate_mbps.max(1) * 1_000_000,
            ttu_samples: a.ttu_samples.unwrap_or(if q { 5 } else { 20 }),
            quick: q,
            peers: a.peers,
            direct_only: a.direct_only,
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(Sub::TargetServer { addr, threads }) = &args.cmd {
        return match target::run(addr, *threads) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("target server: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("porthole-bench: cannot build tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        tokio::select! {
            r = run(args) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    });
    // Dropping the runtime drops every child handle; kill_on_drop ends them.
    drop(rt);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("porthole-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Removes the scratch directory on drop unless asked to keep it.
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("scratch directory kept: {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn default_target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

async fn build_porthole() -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    log("building porthole and porthole-relay (release)…");
    let status = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "--bin",
            "porthole-relay",
            "--bin",
            "porthole",
        ])
        .current_dir(workspace_root())
        .kill_on_drop(true)
        .status()
        .await
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release of porthole/porthole-relay failed ({status})");
    }
    Ok(())
}

async fn spawn_target(work: &Path, threads: usize) -> Result<(Proc, SocketAddr)> {
    let exe = std::env::current_exe().context("locating porthole-bench executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(["target-server", "--threads", &threads.to_string()]);
    let mut p = Proc::spawn("target server", cmd, work)?;
    let addr = p
        .wait_line(Duration::from_secs(10), |l| {
            l.strip_prefix("listening ")?.trim().parse().ok()
        })
        .await?;
    Ok((p, addr))
}

/// Runs everything; every child is killed when the returned future completes or is
/// dropped.
async fn run(args: Args) -> Result<()> {
    let cfg = Config::from_args(&args);
    let started = Instant::now();
    if cfg!(debug_assertions) {
        log("warning: porthole-bench is a debug build; run it with --release");
    }
    let wrk_bin = wrk::find_wrk()?;
    let work = WorkDir {
        path: std::env::temp_dir().join(format!("porthole-bench-{}", std::process::id())),
        keep: args.keep_work,
    };
    std::fs::create_dir_all(&work.path)
        .with_context(|| format!("creating {}", work.path.display()))?;
    let script = wrk::write_script(&work.path)?;
    let payload = body::webhook_payload();
    let mut report = Report {
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        config: serde_json::to_value(&cfg)?,
        loadavg: [report::loadavg(), f64::NAN],
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        ..Default::default()
    };

    let (mut target_proc, target_addr) = spawn_target(&work.path, args.target_threads).await?;
    log(format!("target server on {target_addr}"));
    let mut paths = vec![PathUnderTest::direct(target_addr)];
    let mut porthole_ctx: Option<(PortholeBins, RelayInfo)> = None;
    let mut queue_path: Option<PathUnderTest> = None;
    let mut porthole_idle: Option<IdleMemory> = None;

    if !cfg.direct_only {
        if !args.no_build {
            build_porthole().await?;
        }
        let bin_dir = match &args.bin_dir {
            Some(d) => d.clone(),
            None => std::env::current_exe()?
                .parent()
                .map(Path::to_path_buf)
                .ok_or_else(|| anyhow!("cannot find the directory of porthole-bench"))?,
        };
        let bins = PortholeBins::probe(
            bin_dir.join("porthole-relay"),
            bin_dir.join("porthole"),
            work.path.clone(),
        )
        .await?;
        if !bins.client_has_quiet {
            report.notes.push(
                "`porthole http` has no --quiet: per-request JSON lines are printed (and drained) during load".into(),
            );
        }
        log("starting porthole-relay and porthole http…");
        let (p, info) = paths::porthole(&bins, target_addr)
            .await
            .context("setting up the porthole tunnel")?;
        log(format!(
            "porthole: relay http {} tunnel {} host {}",
            info.http, info.tunnel, p.host
        ));
        // Idle memory as the peers' is measured: one tunnel, after one request. The
        // paths set up below attach more clients (one in queue mode, which opens the
        // relay's queue store) to this relay.
        client::check_post(p.addr, &p.host, &payload)
            .await
            .context("sanity POST through porthole")?;
        tokio::time::sleep(IDLE_SETTLE).await;
        porthole_idle = Some(idle_memory(&p));
        paths.push(p);
        if args.queue {
            match paths::porthole_queue(&bins, &info, target_addr).await {
                Ok(q) => queue_path = Some(q),
                Err(e) => report.notes.push(format!("queue mode not measured: {e:#}")),
            }
        }
        // The same tunnel without its bulk lane, in every round: what the lane changes
        // (head-of-line above all).
        if cfg.hol_bytes > 0 {
            let relay_pid = paths[1].procs[0].pid;
            match paths::porthole_lane_off(&bins, &info, relay_pid, target_addr).await {
                Ok(p) => paths.push(p),
                Err(e) => report
                    .notes
                    .push(format!("bulk lane off not measured: {e:#}")),
            }
        }
        if args.inspector {
            let relay_pid = paths[1].procs[0].pid;
            match paths::porthole_inspect(&bins, &info, relay_pid, target_addr).await {
                Ok(p) => paths.push(p),
                Err(e) => report
                    .notes
                    .push(format!("inspector on not measured: {e:#}")),
            }
        }
        porthole_ctx = Some((bins, info));
    }

    if cfg.peers {
        setup_peers(&mut paths, target_addr, &work.path, &mut report.notes).await;
    }

    // Sanity check, then idle memory of each path.
    let mut reports: Vec<PathReport> = Vec::new();
    for p in &mut paths {
        client::check_post(p.addr, &p.host, &payload)
            .await
            .with_context(|| format!("sanity POST through {}", p.name))?;
        p.check_alive()?;
    }
    tokio::time::sleep(IDLE_SETTLE).await;
    for p in &paths {
        let now = idle_memory(p);
        let (idle_rss_kib, idle_rss_anon_kib) = match (&porthole_idle, p.name.as_str()) {
            (Some(one_tunnel), "porthole") => {
                // The same relay now, with every tunnel the run set up attached.
                let relay = |m: &BTreeMap<String, u64>| m.get("porthole-relay").copied();
                report.relay_idle_rss_all_kib = relay(&now.0).zip(relay(&now.1));
                one_tunnel.clone()
            }
            _ => now,
        };
        reports.push(PathReport {
            name: p.name.clone(),
            processes: p.pids().into_iter().map(|(n, _)| n).collect(),
            idle_rss_kib,
            idle_rss_anon_kib,
            ..Default::default()
        });
    }
    if let Some((bins, info)) = &porthole_ctx {
        match inspector_on_rss(bins, info, target_addr).await {
            Ok((v, anon)) => {
                report.client_idle_rss_inspect_on_kib = Some(v);
                report.client_idle_rss_anon_inspect_on_kib = Some(anon);
            }
            Err(e) => report
                .notes
                .push(format!("client RSS with inspector on not measured: {e:#}")),
        }
    }

    // The relay's memory per idle tunnel, on a relay of its own: load would leave its
    // allocator holding memory that blurs the difference, and the sessions' memory,
    // kept by the allocator after they end, would count in the measured relay's peak
    // RSS under load.
    if let Some((bins, _)) = &porthole_ctx {
        let n = args
            .idle_tunnels
            .unwrap_or(if cfg.quick { 100 } else { 1000 });
        if n > 0 {
            log(format!("{n} idle tunnels (fresh relay)"));
            let measured = paths::on_fresh_porthole(bins, target_addr, async |fresh, info| {
                let relay_pid = fresh.procs[0].pid;
                memory::idle_tunnels(bins, info, relay_pid, target_addr, n).await
            });
            match measured.await {
                Ok(m) => report.idle_tunnels = Some(m),
                Err(e) => report
                    .notes
                    .push(format!("idle-tunnel memory not measured: {e:#}")),
            }
        }
    }

    // Warm-up: a short c=64 run per path.
    for p in &paths {
        log(format!("warm-up {}", p.name));
        wrk_run(&wrk_bin, &script, p, cfg.connections, cfg.warmup_secs).await?;
    }

    // Interleaved rounds.
    let n = paths.len();
    for round in 0..cfg.rounds as usize {
        log(format!("round {}/{}", round + 1, cfg.rounds));
        let order: Vec<usize> = (0..n).map(|i| (i + round) % n).collect();
        let mut figs: Vec<Round> = vec![Round::default(); n];
        for &i in &order {
            let p = &mut paths[i];
            let r = wrk_run(&wrk_bin, &script, p, 1, cfg.latency_secs).await?;
            figs[i].lat_p50_us = Some(r.p50_us);
            figs[i].lat_p99_us = Some(r.p99_us);
            figs[i].lat_rps = Some(r.rps());
            figs[i].errors += r.socket_errors + r.bad_status;
            p.check_alive()?;
        }
        for &i in &order {
            let p = &mut paths[i];
            throughput(&wrk_bin, &script, p, target_proc.pid, &cfg, &mut figs[i]).await?;
            p.check_alive()?;
        }
        for &i in &order {
            let p = &mut paths[i];
            figs[i].download_mbps = Some(
                client::download(p.addr, &p.host, cfg.bulk_bytes)
                    .await
                    .with_context(|| format!("bulk download through {}", p.name))?,
            );
            figs[i].upload_mbps = Some(
                client::upload(p.addr, &p.host, cfg.bulk_bytes)
                    .await
                    .with_context(|| format!("bulk upload through {}", p.name))?,
            );
            p.check_alive()?;
        }
        if cfg.hol_bytes > 0 {
            for &i in &order {
                let p = &mut paths[i];
                let p99 = head_of_line(&wrk_bin, &script, p, p, &cfg, &payload).await?;
                figs[i].hol_p99_us = Some(p99);
                figs[i].hol_vs_idle = figs[i].lat_p99_us.map(|idle| p99 / idle.max(1.0));
                p.check_alive()?;
            }
            let ours = paths.iter().position(|p| p.name == "porthole");
            if let Some(i) = ours {
                let (direct, p) = (&paths[0], &paths[i]);
                let direct = head_of_line(&wrk_bin, &script, p, direct, &cfg, &payload).await?;
                report.hol_control.push(report::HolControl {
                    idle_p99_us: figs[i].lat_p99_us.unwrap_or(f64::NAN),
                    same_tunnel_p99_us: figs[i].hol_p99_us.unwrap_or(f64::NAN),
                    direct_download_p99_us: direct,
                });
            }
        }
        for (i, f) in figs.into_iter().enumerate() {
            if f.errors > 0 {
                report.notes.push(format!(
                    "round {}: {} saw {} socket errors / bad statuses",
                    round + 1,
                    paths[i].name,
                    f.errors
                ));
            }
            reports[i].rounds.push(f);
        }
        target_proc.check_alive()?;
    }

    if let Some((bins, info)) = &porthole_ctx {
        if cfg.ttu_samples > 0 {
            log(format!("time to URL ({} samples)", cfg.ttu_samples));
            report.time_to_url = Some(time_to_url(bins, info, target_addr, cfg.ttu_samples).await?);
        }
    }

    if let Some(i) = paths.iter().position(|p| p.name == "porthole+inspect") {
        let off = paths.iter().position(|p| p.name == "porthole");
        for (round, on) in reports[i].rounds.iter().enumerate() {
            let off = off.and_then(|o| reports[o].rounds.get(round)?.thr_rps);
            if let (Some(on), Some(off)) = (on.thr_rps, off) {
                report.inspect_on_vs_off.push(on / off.max(1.0));
            }
        }
        log("large-body flood, inspector off and on");
        if let Some(o) = off {
            report.flood_inspect_off = Some(
                large_body_flood(&paths[o])
                    .await
                    .context("large-body flood through the plain path")?,
            );
            paths[o].check_alive()?;
        }
        report.inspect_flood = Some(
            large_body_flood(&paths[i])
                .await
                .context("large-body flood through the inspector path")?,
        );
        paths[i].check_alive()?;
    }

    // Memory with many requests in flight, on a fresh relay and client: after the load
    // above, their allocators would serve the held requests from memory kept from it.
    // Before queue mode, whose backlog would still be draining.
    if let Some((bins, _)) = &porthole_ctx {
        let n = args
            .in_flight
            .unwrap_or(if cfg.quick { 1000 } else { 10_000 });
        if n > 0 {
            log(format!("{n} requests in flight (fresh relay and client)"));
            let measured = paths::on_fresh_porthole(bins, target_addr, async |fresh, _| {
                memory::in_flight(fresh, target_addr, n).await
            });
            match measured.await {
                Ok(m) => report.in_flight = Some(m),
                Err(e) => report
                    .notes
                    .push(format!("in-flight memory not measured: {e:#}")),
            }
            if cfg.peers {
                in_flight_peers(target_addr, &work.path, n, &mut report).await;
            }
        }
    }

    // Queue mode last: see `Args::queue`.
    if let Some(q) = queue_path.as_mut() {
        log("queue mode");
        wrk_run(&wrk_bin, &script, q, cfg.connections, cfg.warmup_secs).await?;
        let med = |name: &str| {
            let i = paths.iter().position(|p| p.name == name)?;
            let mut v: Vec<f64> = reports[i].rounds.iter().filter_map(|r| r.thr_rps).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            v.get(v.len() / 2).copied()
        };
        let (direct, pass) = (med("direct"), med("porthole"));
        for round in 0..cfg.rounds {
            let r = wrk_run(&wrk_bin, &script, q, cfg.connections, cfg.throughput_secs).await?;
            q.check_alive()?;
            let rps = r.rps();
            report.queue_thr_rps.push(rps);
            if let Some(pass) = pass {
                report.queue_vs_passthrough.push(rps / pass.max(1.0));
            }
            if let Some(direct) = direct {
                report.queue_vs_direct.push(rps / direct.max(1.0));
            }
            if r.socket_errors + r.bad_status > 0 {
                report.notes.push(format!(
                    "queue run {}: {} socket errors / bad statuses",
                    round + 1,
                    r.socket_errors + r.bad_status
                ));
            }
        }
    }

    for (p, r) in paths.iter().zip(reports.iter_mut()) {
        for (n, pid) in p.pids() {
            if let Ok(v) = procs::rss_kib(pid) {
                r.final_rss_kib.insert(n, v);
            }
        }
    }
    report::summarize(&mut reports);
    report.paths = reports;
    report.wall_secs = started.elapsed().as_secs_f64();
    report.loadavg[1] = report::loadavg();

    println!("\n{}", report::table(&report));
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| default_target_dir().join("bench-results.json"));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", out.display()))?;
    log(format!(
        "results written to {} ({:.0} s)",
        out.display(),
        report.wall_secs
    ));

    for p in paths {
        p.stop().await;
    }
    if let Some(q) = queue_path {
        q.stop().await;
    }
    target_proc.stop().await;
    Ok(())
}

async fn wrk_run(
    wrk_bin: &Path,
    script: &Path,
    p: &PathUnderTest,
    connections: u32,
    secs: u32,
) -> Result<wrk::WrkResult> {
    wrk::WrkRun {
        wrk: wrk_bin,
        script,
        addr: p.addr,
        host: &p.host,
        connections,
        threads: 2,
        secs,
    }
    .run()
    .await
    .with_context(|| format!("wrk c={connections} through {}", p.name))
}

/// c=64 run with CPU accounting of the tunnel processes and the target, and peak RSS.
async fn throughput(
    wrk_bin: &Path,
    script: &Path,
    p: &PathUnderTest,
    target_pid: u32,
    cfg: &Config,
    fig: &mut Round,
) -> Result<()> {
    let pids = p.pids();
    for (_, pid) in &pids {
        procs::reset_peak_rss(*pid);
    }
    let cpu_before: Vec<u64> = pids
        .iter()
        .map(|(_, pid)| procs::cpu_us(*pid))
        .collect::<Result<_>>()?;
    let target_before = procs::cpu_us(target_pid)?;
    let r = wrk_run(wrk_bin, script, p, cfg.connections, cfg.throughput_secs).await?;
    let cpu_after: Vec<u64> = pids
        .iter()
        .map(|(_, pid)| procs::cpu_us(*pid))
        .collect::<Result<_>>()?;
    let target_after = procs::cpu_us(target_pid)?;
    let reqs = r.requests.max(1) as f64;
    if !pids.is_empty() {
        let spent: u64 = cpu_after
            .iter()
            .zip(&cpu_before)
            .map(|(a, b)| a.saturating_sub(*b))
            .sum();
        fig.tunnel_cpu_us_per_req = Some(spent as f64 / reqs);
    }
    fig.target_cpu_us_per_req = Some(target_after.saturating_sub(target_before) as f64 / reqs);
    let mut peaks = BTreeMap::new();
    for (n, pid) in &pids {
        if let Ok(v) = procs::peak_rss_kib(*pid) {
            peaks.insert(n.clone(), v);
        }
    }
    fig.peak_rss_kib = peaks;
    fig.thr_rps = Some(r.rps());
    fig.thr_p99_us = Some(r.p99_us);
    fig.thr_requests = Some(r.requests);
    fig.errors += r.socket_errors + r.bad_status;
    Ok(())
}

/// c=1 POST p99 through `p` while a bulk download of up to `cfg.hol_bytes` runs through
/// `bulk`: the same path for the head-of-line figure, another for its control.
///
/// The download is read at a bounded rate (`--hol-rate-mbps`) so that its buffers stay full
/// — the worst case for head-of-line blocking in a multiplexed tunnel — without letting
/// the reader itself saturate the two cores. It is dropped when the latency run ends, and
/// `bulk` must then still answer.
async fn head_of_line(
    wrk_bin: &Path,
    script: &Path,
    p: &PathUnderTest,
    bulk: &PathUnderTest,
    cfg: &Config,
    payload: &str,
) -> Result<f64> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (addr, host, size, rate) = (bulk.addr, bulk.host.clone(), cfg.hol_bytes, cfg.hol_rate);
    let bg_stop = stop.clone();
    let bg =
        tokio::spawn(
            async move { client::download_throttled(addr, &host, size, rate, &bg_stop).await },
        );
    // Let the transfer fill the pipes before measuring.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let finished_early = bg.is_finished();
    let r = wrk_run(wrk_bin, script, p, 1, cfg.latency_secs).await;
    stop.store(true, Ordering::Relaxed);
    let got = tokio::time::timeout(Duration::from_secs(15), bg)
        .await
        .map_err(|_| anyhow!("head-of-line download through {} did not stop", bulk.name))?
        .map_err(|e| anyhow!("head-of-line download task: {e}"))?
        .with_context(|| format!("head-of-line download through {}", bulk.name))?;
    if finished_early {
        bail!(
            "head-of-line download through {} ended before the latency run ({got} bytes)",
            bulk.name
        );
    }
    client::check_post(bulk.addr, &bulk.host, payload)
        .await
        .with_context(|| format!("{} after a visitor dropped a download mid-body", bulk.name))?;
    Ok(r?.p99_us)
}

/// Concurrent large uploads through a Porthole path; the client's memory is measured.
/// With the inspector on, every body is captured up to the 1 MiB cap and stored: the
/// worst case for the history's memory.
async fn large_body_flood(p: &PathUnderTest) -> Result<report::Flood> {
    const REQUESTS: u64 = 96;
    const CONCURRENCY: u64 = 32;
    const BODY: u64 = 8 << 20;
    let client = p
        .procs
        .iter()
        .find(|c| c.name.starts_with("porthole ") || c.name == "porthole")
        .ok_or_else(|| anyhow!("{} has no porthole client", p.name))?;
    let before = procs::rss_kib(client.pid)?;
    procs::reset_peak_rss(client.pid);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..CONCURRENCY {
        let (addr, host) = (p.addr, p.host.clone());
        tasks.spawn(async move {
            let mut n = w;
            while n < REQUESTS {
                client::upload(addr, &host, BODY).await?;
                n += CONCURRENCY;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| anyhow!("flood task: {e}"))??;
    }
    let secs = started.elapsed().as_secs_f64();
    let peak = procs::peak_rss_kib(client.pid)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(report::Flood {
        requests: REQUESTS,
        concurrency: CONCURRENCY,
        body_bytes: BODY,
        mbps: (REQUESTS * BODY) as f64 / 1e6 / secs,
        rss_before_kib: before,
        peak_rss_kib: peak,
        rss_after_kib: procs::rss_kib(client.pid)?,
    })
}

/// RSS and its anonymous part (KiB) of a second client started with the inspector on,
/// after one request.
async fn inspector_on_rss(
    bins: &PortholeBins,
    info: &RelayInfo,
    target: SocketAddr,
) -> Result<(u64, u64)> {
    let mut c = bins.spawn_client(info, target, "bench-inspect", Some("127.0.0.1:0"))?;
    let ready = paths::wait_ready(&mut c, Duration::from_secs(20)).await?;
    client::check_post(info.http, &ready.host, &body::webhook_payload()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v = procs::rss_kib(c.pid)?;
    let anon = procs::rss_anon_kib(c.pid)?;
    c.stop().await;
    Ok((v, anon))
}

/// Spawn `porthole http` → first 200 through the public URL, `samples` times.
async fn time_to_url(
    bins: &PortholeBins,
    info: &RelayInfo,
    target: SocketAddr,
    samples: u32,
) -> Result<TimeToUrl> {
    let mut t = TimeToUrl::default();
    for i in 0..samples {
        let name = format!("ttu{i}");
        let start = Instant::now();
        let mut c = bins.spawn_client(info, target, &name, None)?;
        let ready = paths::wait_ready(&mut c, Duration::from_secs(20))
            .await
            .with_context(|| format!("time to URL sample {i}"))?;
        let t_ready = start.elapsed();
        let at = client::wait_for_200(info.http, &ready.host, start + Duration::from_secs(20))
            .await
            .with_context(|| format!("time to URL sample {i}"))?;
        t.ready_ms.push(t_ready.as_secs_f64() * 1e3);
        t.first_200_ms
            .push(at.duration_since(start).as_secs_f64() * 1e3);
        c.stop().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.median_first_200_ms = report::median(&t.first_200_ms);
    t.median_ready_ms = report::median(&t.ready_ms);
    Ok(t)
}

/// The same in-flight measurement through fresh rathole tunnels (noise and tcp), for
/// comparison; bore is left out, as a second bore server cannot take its fixed port.
/// At most 1,000 requests: with 5,000, rathole-noise had 489 held at the target after
/// the scenario's two minutes (a noise handshake per visitor connection), and a rathole
/// server holds two sockets per visitor connection against a common limit of 20,000
/// open files.
async fn in_flight_peers(target: SocketAddr, work: &Path, n: usize, report: &mut Report) {
    let Some(bin) = wrk::find_on_path("rathole") else {
        return;
    };
    let n = n.min(1_000);
    for transport in ["noise", "tcp"] {
        log(format!(
            "{n} requests in flight (fresh rathole-{transport})"
        ));
        let dir = work.join(format!("in-flight-rathole-{transport}"));
        let measured = async {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let p = paths::rathole(&bin, target, &dir, transport).await?;
            let name = p.name.clone();
            let m = paths::measure_then_stop(p, async |p| memory::in_flight(p, target, n).await)
                .await?;
            anyhow::Ok((name, m))
        };
        match measured.await {
            Ok(m) => report.in_flight_peers.push(m),
            Err(e) => report.notes.push(format!(
                "in-flight memory of rathole-{transport} not measured: {e:#}"
            )),
        }
    }
}

/// Adds bore and rathole rows when their binaries are on PATH; failures become notes.
async fn setup_peers(
    paths: &mut Vec<PathUnderTest>,
    target: SocketAddr,
    work: &Path,
    notes: &mut Vec<String>,
) {
    match wrk::find_on_path("bore") {
        None => notes.push("bore not on PATH (cargo install bore-cli): skipped".into()),
        Some(bin) => match paths::bore(&bin, target, work).await {
            Ok(p) => {
                log(format!("bore on {}", p.addr));
                paths.push(p);
            }
            Err(e) => notes.push(format!("bore skipped: {e:#}")),
        },
    }
    match wrk::find_on_path("rathole") {
        None => notes.push("rathole not on PATH (cargo install rathole): skipped".into()),
        Some(bin) => {
            for transport in ["noise", "tcp"] {
                match paths::rathole(&bin, target, work, transport).await {
                    Ok(p) => {
                        log(format!("rathole-{transport} on {}", p.addr));
                        paths.push(p);
                    }
                    Err(e) => notes.push(format!("rathole-{transport} skipped: {e:#}")),
                }
            }
        }
    }
}

/// How long a path rests after its last request before its idle memory is read.
const IDLE_SETTLE: Duration = Duration::from_millis(500);

/// RSS and its anonymous part of each tunnel process, KiB, by process name.
type IdleMemory = (BTreeMap<String, u64>, BTreeMap<String, u64>);

/// Reads [`IdleMemory`] for `path`'s processes (those that can be read).
fn idle_memory(path: &PathUnderTest) -> IdleMemory {
    let (mut rss, mut anon) = (BTreeMap::new(), BTreeMap::new());
    for (n, pid) in path.pids() {
        if let Ok(v) = procs::rss_kib(pid) {
            rss.insert(n.clone(), v);
        }
        if let Ok(v) = procs::rss_anon_kib(pid) {
            anon.insert(n, v);
        }
    }
    (rss, anon)
}

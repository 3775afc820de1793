//! Results: per-round figures, medians, same-run ratios against direct, the printed table
//! and the JSON file.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// Figures of one path in one round. `None` where a scenario did not run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Round {
    /// c=1 latency p50, µs.
    pub lat_p50_us: Option<f64>,
    /// c=1 latency p99, µs.
    pub lat_p99_us: Option<f64>,
    /// c=1 requests/s.
    pub lat_rps: Option<f64>,
    /// c=64 requests/s.
    pub thr_rps: Option<f64>,
    /// c=64 latency p99, µs.
    pub thr_p99_us: Option<f64>,
    /// Requests completed in the c=64 run.
    pub thr_requests: Option<u64>,
    /// CPU µs per request of the tunnel processes (summed) in the c=64 run.
    pub tunnel_cpu_us_per_req: Option<f64>,
    /// CPU µs per request of the target in the c=64 run.
    pub target_cpu_us_per_req: Option<f64>,
    /// Peak RSS of each tunnel process during the c=64 run, KiB.
    pub peak_rss_kib: BTreeMap<String, u64>,
    /// 100 MiB (or `--bulk-mib`) download, MB/s.
    pub download_mbps: Option<f64>,
    /// Upload, MB/s.
    pub upload_mbps: Option<f64>,
    /// c=1 latency p99 while a large download runs through the same path, µs.
    pub hol_p99_us: Option<f64>,
    /// `hol_p99_us` ÷ `lat_p99_us` of the same path and round (head-of-line blocking).
    pub hol_vs_idle: Option<f64>,
    /// Socket errors and bad statuses wrk saw in this round.
    pub errors: u64,
}

/// All rounds of one path plus one-off figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PathReport {
    /// Row label.
    pub name: String,
    /// Tunnel process names.
    pub processes: Vec<String>,
    /// Per-round figures.
    pub rounds: Vec<Round>,
    /// RSS of each tunnel process right after setup and one request, KiB.
    pub idle_rss_kib: BTreeMap<String, u64>,
    /// The anonymous part of that (heap, stacks: not code pages), KiB.
    pub idle_rss_anon_kib: BTreeMap<String, u64>,
    /// RSS of each tunnel process at the end of the run, KiB.
    pub final_rss_kib: BTreeMap<String, u64>,
    /// Filled by [`summarize`].
    pub summary: BTreeMap<String, Summary>,
    /// Highest per-round peak RSS of each tunnel process under c=64 load, KiB.
    pub peak_rss_kib: BTreeMap<String, u64>,
}

/// Median of one figure and how it compares with direct in the same rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Median over rounds.
    pub median: f64,
    /// Median over rounds of (this path ÷ direct), paired by round.
    pub vs_direct: Option<f64>,
    /// Median over rounds of (this path − direct), paired by round (latencies only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub added: Option<f64>,
}

/// Time to URL figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TimeToUrl {
    /// Spawn → first 200 through the public URL, ms, per sample.
    pub first_200_ms: Vec<f64>,
    /// Spawn → `ready` line, ms, per sample.
    pub ready_ms: Vec<f64>,
    /// Median of `first_200_ms`.
    pub median_first_200_ms: Option<f64>,
    /// Median of `ready_ms`.
    pub median_ready_ms: Option<f64>,
}

/// The whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Unix time the run started.
    pub started_unix: u64,
    /// Wall time of the run, s.
    pub wall_secs: f64,
    /// Settings used.
    pub config: serde_json::Value,
    /// Online CPUs.
    pub cpus: usize,
    /// 1-minute load average at the start and at the end of the run (other users of the
    /// machine make absolute figures drift; only same-run ratios are comparable).
    pub loadavg: [f64; 2],
    /// One entry per path, direct first.
    pub paths: Vec<PathReport>,
    /// The relay's RSS and its anonymous part, KiB, idle with every tunnel the run
    /// attached to it (its `idle_rss_kib` is with one tunnel, like the peers').
    pub relay_idle_rss_all_kib: Option<(u64, u64)>,
    /// Client RSS with the inspector on, KiB (after one request), if measured.
    pub client_idle_rss_inspect_on_kib: Option<u64>,
    /// The anonymous part of that, KiB.
    pub client_idle_rss_anon_inspect_on_kib: Option<u64>,
    /// Porthole time to URL.
    pub time_to_url: Option<TimeToUrl>,
    /// Queue mode (`--delivery queue`: 202 once the request is durably stored, fsync
    /// on): c=64 requests/s per round, measured right after the passthrough path.
    pub queue_thr_rps: Vec<f64>,
    /// Those over the same round's direct c=64 requests/s.
    pub queue_vs_direct: Vec<f64>,
    /// And over the same round's passthrough (porthole) c=64 requests/s.
    pub queue_vs_passthrough: Vec<f64>,
    /// c=64 requests/s with the inspector on over the same round's plain client.
    pub inspect_on_vs_off: Vec<f64>,
    /// Large-body flood through the inspector-on client.
    pub inspect_flood: Option<Flood>,
    /// The same flood through the plain client, for comparison.
    pub flood_inspect_off: Option<Flood>,
    /// Where Porthole's head-of-line figure comes from, per round: see [`HolControl`].
    pub hol_control: Vec<HolControl>,
    /// The relay with many idle tunnels.
    pub idle_tunnels: Option<crate::memory::IdleTunnels>,
    /// The relay and client with many requests in flight.
    pub in_flight: Option<crate::memory::InFlight>,
    /// The same through fresh peer tunnels (with `--peers`): (path, figures).
    pub in_flight_peers: Vec<(String, crate::memory::InFlight)>,
    /// Things that were skipped or looked off.
    pub notes: Vec<String>,
}

/// p99 of Porthole's small POSTs (c=1, µs) while the same throttled download runs
/// through the tunnel, or straight from the target. On a small machine a download
/// slows small requests by taking CPU from them wherever it runs; the direct one is
/// the floor no tunnel can go below.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HolControl {
    /// Without a download, the same round (the table's c=1 p99).
    pub idle_p99_us: f64,
    /// Through the same tunnel (the head-of-line figure of the table).
    pub same_tunnel_p99_us: f64,
    /// Straight from the target: no tunnel process carries it.
    pub direct_download_p99_us: f64,
}

/// Concurrent large uploads through the client with the inspector on.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Flood {
    /// Uploads sent.
    pub requests: u64,
    /// Uploads in flight at once.
    pub concurrency: u64,
    /// Size of each body, bytes.
    pub body_bytes: u64,
    /// Aggregate upload rate, MB/s.
    pub mbps: f64,
    /// Client RSS before the flood, KiB.
    pub rss_before_kib: u64,
    /// Client peak RSS during the flood, KiB.
    pub peak_rss_kib: u64,
    /// Client RSS a second after it, KiB.
    pub rss_after_kib: u64,
}

/// The 1-minute load average, or NaN if unreadable.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Median of the values (NaN-free); `None` if empty.
pub fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

type Getter = fn(&Round) -> Option<f64>;

/// Figures summarized for every path: key, accessor, whether "added over direct" is
/// meaningful.
const METRICS: &[(&str, Getter, bool)] = &[
    ("lat_p50_us", |r| r.lat_p50_us, true),
    ("lat_p99_us", |r| r.lat_p99_us, true),
    ("lat_rps", |r| r.lat_rps, false),
    ("thr_rps", |r| r.thr_rps, false),
    ("thr_p99_us", |r| r.thr_p99_us, true),
    ("tunnel_cpu_us_per_req", |r| r.tunnel_cpu_us_per_req, false),
    ("target_cpu_us_per_req", |r| r.target_cpu_us_per_req, false),
    ("hol_p99_us", |r| r.hol_p99_us, true),
    ("hol_vs_idle", |r| r.hol_vs_idle, false),
    ("download_mbps", |r| r.download_mbps, false),
    ("upload_mbps", |r| r.upload_mbps, false),
];

/// `name total (anon)` of one idle process, in MiB.
fn resident(name: &str, total_kib: u64, anon_kib: Option<u64>) -> String {
    match anon_kib {
        Some(a) => format!("{name} {} ({})", mib(total_kib), mib(a)),
        None => format!("{name} {}", mib(total_kib)),
    }
}

/// Fills each path's `summary` and `peak_rss_kib`; `paths[0]` must be direct.
pub fn summarize(paths: &mut [PathReport]) {
    let direct = paths.first().map(|p| p.rounds.clone()).unwrap_or_default();
    for p in paths.iter_mut() {
        p.summary.clear();
        for &(key, get, additive) in METRICS {
            let vals: Vec<f64> = p.rounds.iter().filter_map(get).collect();
            let Some(med) = median(&vals) else { continue };
            let mut ratios = Vec::new();
            let mut diffs = Vec::new();
            for (r, d) in p.rounds.iter().zip(&direct) {
                if let (Some(a), Some(b)) = (get(r), get(d)) {
                    if b > 0.0 {
                        ratios.push(a / b);
                    }
                    diffs.push(a - b);
                }
            }
            p.summary.insert(
                key.to_string(),
                Summary {
                    median: med,
                    vs_direct: median(&ratios),
                    added: if additive { median(&diffs) } else { None },
                },
            );
        }
        p.peak_rss_kib.clear();
        for r in &p.rounds {
            for (k, v) in &r.peak_rss_kib {
                let e = p.peak_rss_kib.entry(k.clone()).or_default();
                *e = (*e).max(*v);
            }
        }
    }
}

/// One line of the in-flight memory figures of `path`.
fn in_flight_line(path: &str, m: &crate::memory::InFlight) -> String {
    let show = |v: &[(String, u64)]| {
        v.iter()
            .map(|(n, k)| format!("{n} {} MiB", mib(*k)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // Growth per held request means something only if (nearly) all of them got to the
    // target: otherwise the rest are still connecting, and dividing by the few held
    // gives a figure of nothing.
    let per_request: Vec<String> = if m.held * 10 < m.requests * 9 {
        vec![format!(
            "not measured, as only {} of {} reached the target",
            m.held, m.requests
        )]
    } else {
        m.during_kib
            .iter()
            .zip(&m.before_kib)
            .map(|((n, d), (_, b))| {
                let kib = d.saturating_sub(*b) as f64 / m.held.max(1) as f64;
                format!(
                    "{n} {kib:.1} KiB ({:.0} MiB per 10,000)",
                    kib * 10_000.0 / 1024.0
                )
            })
            .collect()
    };
    format!(
        "{} requests in flight through {path} (target held {}, {} answered 200 once released): RSS {} (before: {}); per request: {}",
        m.requests,
        m.held,
        m.answered,
        show(&m.during_kib),
        show(&m.before_kib),
        per_request.join(", ")
    )
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn cell_added(p: &PathReport, key: &str, is_direct: bool) -> String {
    match p.summary.get(key) {
        None => "-".into(),
        Some(s) if is_direct => format!("{:.0}", s.median),
        Some(s) => format!("{:.0} ({:+.0})", s.median, s.added.unwrap_or(f64::NAN)),
    }
}

fn cell_ratio(p: &PathReport, key: &str) -> String {
    match p.summary.get(key) {
        None => "-".into(),
        Some(s) => format!("{:.0} ({:.2}x)", s.median, s.vs_direct.unwrap_or(f64::NAN)),
    }
}

/// The compact human table.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    let headers = [
        "path",
        "c1 p50 µs (+dir)",
        "c1 p99 µs (+dir)",
        "c64 req/s (×dir)",
        "CPU µs/req",
        "target CPU µs/req",
        "peak RSS MiB",
        "DL MB/s (×dir)",
        "UL MB/s (×dir)",
        "HOL p99 µs (×idle)",
    ];
    let mut rows: Vec<Vec<String>> = vec![headers.iter().map(|s| s.to_string()).collect()];
    for (i, p) in r.paths.iter().enumerate() {
        let direct = i == 0;
        let cpu = p
            .summary
            .get("tunnel_cpu_us_per_req")
            .map(|s| format!("{:.1}", s.median))
            .unwrap_or_else(|| "-".into());
        let rss = if p.peak_rss_kib.is_empty() {
            "-".to_string()
        } else {
            p.processes
                .iter()
                .filter_map(|n| p.peak_rss_kib.get(n).map(|v| mib(*v)))
                .collect::<Vec<_>>()
                .join(" + ")
        };
        rows.push(vec![
            p.name.clone(),
            cell_added(p, "lat_p50_us", direct),
            cell_added(p, "lat_p99_us", direct),
            cell_ratio(p, "thr_rps"),
            cpu,
            p.summary
                .get("target_cpu_us_per_req")
                .map(|s| format!("{:.1}", s.median))
                .unwrap_or_else(|| "-".into()),
            rss,
            cell_ratio(p, "download_mbps"),
            cell_ratio(p, "upload_mbps"),
            match (p.summary.get("hol_p99_us"), p.summary.get("hol_vs_idle")) {
                (Some(a), Some(b)) => format!("{:.0} ({:.2}x)", a.median, b.median),
                _ => "-".into(),
            },
        ]);
    }
    let widths: Vec<usize> = (0..headers.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for (i, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}", w = *w))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
        if i == 0 {
            let _ = writeln!(
                out,
                "{}",
                "-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1))
            );
        }
    }
    let _ = writeln!(
        out,
        "(medians of {} interleaved rounds; ratios and +µs paired per round against direct; target CPU µs/req = the target server's own cost; HOL = c=1 p99 during a rate-limited bulk download on the same path, ×its own idle p99)",
        r.paths.first().map(|p| p.rounds.len()).unwrap_or(0),
    );
    if r.paths.len() > 1 {
        let _ = writeln!(
            out,
            "(CPU µs/req and peak RSS under c=64 are of the tunnel processes: {})",
            r.paths
                .iter()
                .skip(1)
                .map(|p| format!("{} = {}", p.name, p.processes.join(" + ")))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let mut mem = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for p in r.paths.iter().skip(1) {
        // The `--inspector` path's client is set up as the inspector-on probe printed
        // below, so it is not listed twice.
        let listed = p
            .processes
            .iter()
            .filter(|n| n.as_str() != crate::paths::INSPECT_CLIENT);
        for n in listed.filter(|n| seen.insert(n.as_str())) {
            if let Some(v) = p.idle_rss_kib.get(n) {
                let label = if p.name == "porthole" && n == "porthole" {
                    "porthole (inspect off)".to_string()
                } else {
                    n.clone()
                };
                mem.push(resident(&label, *v, p.idle_rss_anon_kib.get(n).copied()));
            }
        }
        if p.name == "porthole" {
            if let Some(v) = r.client_idle_rss_inspect_on_kib {
                let anon = r.client_idle_rss_anon_inspect_on_kib;
                mem.push(resident("porthole (inspect on)", v, anon));
            }
            if let Some((v, anon)) = r.relay_idle_rss_all_kib {
                mem.push(resident(
                    "porthole-relay with all the run's tunnels",
                    v,
                    Some(anon),
                ));
            }
        }
    }
    if !mem.is_empty() {
        let _ = writeln!(
            out,
            "idle RSS, MiB (anonymous part: heap and stacks, without code pages): {}",
            mem.join("; ")
        );
    }
    if let Some(q) = median(&r.queue_thr_rps) {
        let _ = writeln!(
            out,
            "queue mode c={}: median {q:.0} req/s (202 after fsync; {:.2} of direct, {:.2} of passthrough, same rounds)",
            r.config.get("connections").and_then(|c| c.as_u64()).unwrap_or(64),
            median(&r.queue_vs_direct).unwrap_or(f64::NAN),
            median(&r.queue_vs_passthrough).unwrap_or(f64::NAN),
        );
    }
    if let Some(m) = median(&r.inspect_on_vs_off) {
        let _ = writeln!(
            out,
            "inspector on: c={} throughput {m:.2} of the plain client's (median of per-round ratios: {})",
            r.config.get("connections").and_then(|c| c.as_u64()).unwrap_or(64),
            r.inspect_on_vs_off
                .iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for (label, f) in [
        ("inspector off", &r.flood_inspect_off),
        ("inspector on", &r.inspect_flood),
    ] {
        let Some(f) = f else { continue };
        let _ = writeln!(
            out,
            "large-body flood, {label}: {} × {} MiB uploads, {} at once, {:.0} MB/s; client RSS {} MiB before, peak {} MiB, {} MiB after",
            f.requests,
            f.body_bytes >> 20,
            f.concurrency,
            f.mbps,
            mib(f.rss_before_kib),
            mib(f.peak_rss_kib),
            mib(f.rss_after_kib)
        );
    }
    if !r.hol_control.is_empty() {
        // Medians of per-round figures, each over its own round's idle p99, as the
        // table's head-of-line column.
        let med = |get: fn(&HolControl) -> f64| {
            median(&r.hol_control.iter().map(get).collect::<Vec<_>>()).unwrap_or(f64::NAN)
        };
        let _ = writeln!(
            out,
            "head-of-line control, porthole small-POST p99 (idle {:.0} µs) while the throttled download runs: through the same tunnel {:.0} µs ({:.2}x idle), straight from the target {:.0} µs ({:.2}x) (medians of per-round figures; the row \"{}\" is the same tunnel without its bulk lane)",
            med(|h| h.idle_p99_us),
            med(|h| h.same_tunnel_p99_us),
            med(|h| h.same_tunnel_p99_us / h.idle_p99_us.max(1.0)),
            med(|h| h.direct_download_p99_us),
            med(|h| h.direct_download_p99_us / h.idle_p99_us.max(1.0)),
            crate::paths::LANE_OFF,
        );
    }
    if let Some(m) = &r.in_flight {
        let _ = writeln!(
            out,
            "{}",
            in_flight_line("Porthole (fresh relay and client)", m)
        );
    }
    for (name, m) in &r.in_flight_peers {
        let _ = writeln!(out, "{}", in_flight_line(&format!("{name} (fresh)"), m));
    }
    if let Some(m) = &r.idle_tunnels {
        let _ = writeln!(
            out,
            "{} idle tunnels (one client each): relay RSS {} → {} MiB, {:.1} KiB per tunnel",
            m.tunnels,
            mib(m.relay_before_kib),
            mib(m.relay_after_kib),
            m.per_tunnel_kib
        );
    }
    if let Some(t) = &r.time_to_url {
        if let Some(m) = t.median_first_200_ms {
            let min = t.first_200_ms.iter().copied().fold(f64::INFINITY, f64::min);
            let max = t.first_200_ms.iter().copied().fold(0.0, f64::max);
            let _ = writeln!(
                out,
                "time to URL: median {m:.1} ms to first 200 (min {min:.1}, max {max:.1}, n={}); ready line at {:.1} ms",
                t.first_200_ms.len(),
                t.median_ready_ms.unwrap_or(f64::NAN)
            );
        }
    }
    let _ = writeln!(
        out,
        "machine: {} CPUs, load average {:.1} at start, {:.1} at end; wall time {:.0} s",
        r.cpus, r.loadavg[0], r.loadavg[1], r.wall_secs
    );
    for n in &r.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

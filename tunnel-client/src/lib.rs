//! Porthole client daemon (`porthole`): holds one QUIC session to a relay, forwards
//! each exchange the relay sends to a local target, and records it for the console and
//! the inspector.
//!
//! # Layout
//!
//! - [`cli`]: flags and subcommands.
//! - [`session`]: connect, verify, hello, bind, reconnect.
//! - [`trust`]: pin / CA / system-root verification of the relay.
//! - [`target_tls`]: TLS and HTTP/2 toward targets.
//! - [`tcp`]: `porthole tcp`, TCP tunnels.
//! - [`forwarder`]: data stream → target → data stream, with capture and replay.
//! - [`capture`]: what an exchange record holds; the sink and replay seams.
//! - [`config`]: `porthole.toml` and the per-tunnel settings (verify, edge policy).
//! - [`signatures`]: webhook verdicts, enforcement and re-signing replays.
//! - [`inspector`]: history in SQLite, the web UI and its API, replay.
//! - [`output`]: console lines and `--json` events.
//! - [`local`]: local mode (in-process relay) and the built-in target.
//! - [`roam`]: SIGUSR1 moves the QUIC endpoint to a new UDP port (roaming aid).
//! - [`wait`]: `porthole wait`, for CI.
//! - [`exit`]: exit codes.
//! - [`dedup`]: queued exchanges already delivered, so redeliveries reach the app once.
//! - [`queue_cmd`]: `porthole queue list | retry | drop`.

#![warn(missing_docs)]

pub mod capture;
pub mod cli;
pub mod config;
pub mod dedup;
pub mod exit;
pub mod forwarder;
pub mod inspector;
pub mod lane;
pub mod local;
pub mod loopback;
pub mod output;
pub mod queue_cmd;
pub mod roam;
pub mod session;
pub mod signatures;
pub mod target_pool;
pub mod target_tls;
pub mod tcp;
pub mod trust;
pub mod wait;

use std::sync::Arc;

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;

use crate::capture::Sinks;
use crate::cli::HttpArgs;
use crate::forwarder::{Forwarder, Target};
use crate::output::Output;
use crate::session::{SessionConfig, TunnelSpec};
use crate::trust::Trust;

/// Runs `porthole http` until `shutdown` fires or a fatal error.
pub async fn run_http(args: HttpArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let output = Arc::new(Output::new(args.json, args.quiet, args.ready_file.clone()));
    let result = match args
        .tunnel
        .settings(args.name.clone(), args.target.clone())
        .plan("edge policy flags")
    {
        Ok(plan) => run_http_inner(args, vec![plan], output.clone(), shutdown).await,
        Err(e) => Err(e),
    };
    if let Err(e) = &result {
        output.error(&format!("{e:#}"));
    }
    result
}

/// Runs `porthole start`: the tunnels of porthole.toml (or the named ones) in one
/// session, with flags and env over the file.
pub async fn run_start(args: cli::StartArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let output = Arc::new(Output::new(args.json, args.quiet, args.ready_file.clone()));
    let result = match start_plan(&args) {
        Ok((http, plans)) => run_http_inner(http, plans, output.clone(), shutdown).await,
        Err(e) => Err(e),
    };
    if let Err(e) = &result {
        output.error(&format!("{e:#}"));
    }
    result
}

fn start_plan(args: &cli::StartArgs) -> anyhow::Result<(HttpArgs, Vec<config::TunnelPlan>)> {
    let path = match &args.config {
        Some(p) => p.clone(),
        None => config::default_path()
            .context("no config file: pass --config FILE (HOME and XDG_CONFIG_HOME are unset)")?,
    };
    if args.config.is_none() && !path.exists() {
        bail!(
            "no config file at {}: create it, or pass --config FILE",
            path.display()
        );
    }
    let file_name = path.display().to_string();
    let file = config::ClientFile::load(&path)?;
    let plans = file.plans(&file_name, &args.names)?;
    let token = match &args.token {
        Some(t) => Some(t.clone()),
        None => file.token(&file_name)?,
    };
    let http = HttpArgs {
        target: None,
        relay: args.relay.clone().or(file.relay.clone()),
        token,
        relay_pin: args.relay_pin.clone().or(if args.relay_ca.is_some() {
            None
        } else {
            file.relay_pin.clone()
        }),
        relay_ca: args.relay_ca.clone().or(file.relay_ca.clone()),
        name: None,
        inspect: args
            .inspect
            .clone()
            .or(file.inspect.clone())
            .unwrap_or_else(|| "127.0.0.1:4040".into()),
        inspect_credential: args.inspect_credential.clone(),
        history_size: args.history_size,
        json: args.json,
        quiet: args.quiet,
        ready_file: args.ready_file.clone(),
        local_addr: ([127, 0, 0, 1], 8080).into(),
        capture_body_bytes: args.capture_body_bytes,
        tunnel: cli::TunnelFlags::default(),
        target_insecure: false,
        target_ca: None,
        target_h2: false,
        delivery: None,
        offline: None,
    };
    Ok((http, plans))
}

async fn run_http_inner(
    args: HttpArgs,
    plans: Vec<config::TunnelPlan>,
    output: Arc<Output>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let stop_local = CancellationToken::new();
    let _stop_local_on_exit = stop_local.clone().drop_guard();

    let mut tunnels = Vec::with_capacity(plans.len());
    let mut builtin: Option<Target> = None;
    for plan in plans {
        let target = match &plan.target {
            Some(t) => Target::parse(t).map_err(exit::usage)?,
            None => match &builtin {
                Some(t) => t.clone(),
                None => {
                    let addr = local::start_builtin_target(stop_local.clone()).await?;
                    let t = Target::parse(&addr.to_string())?;
                    builtin = Some(t.clone());
                    t
                }
            },
        };
        tunnels.push(TunnelSpec {
            name: plan.name,
            target,
            options: plan
                .options
                .into_iter()
                .chain(delivery_options(&args))
                .collect(),
            rules: plan.rules,
        });
    }

    // A local relay lives as long as this run (its data dir is removed on drop).
    let mut local_relay = None;
    let (relay, token, trust, local_mode) = match &args.relay {
        Some(relay) => {
            let token = args
                .token
                .clone()
                .filter(|t| !t.is_empty())
                .context("a token is needed to use a relay: pass --token or set PORTHOLE_TOKEN")
                .map_err(exit::usage)?;
            let trust = Trust::from_flags(args.relay_pin.as_deref(), args.relay_ca.as_deref())
                .map_err(exit::usage)?;
            (relay.clone(), token, trust, false)
        }
        None => {
            if args.token.is_some() || args.relay_pin.is_some() {
                return Err(exit::usage(anyhow::anyhow!("--token and --relay-pin need --relay (without it, porthole runs a local relay)")));
            }
            let local = local::start_relay(args.local_addr, stop_local.clone()).await?;
            let relay = local.tunnel.to_string();
            let token = local.token.clone();
            let pin = local.pin.clone();
            local_relay = Some(local);
            (relay, token, Trust::Pin(pin), true)
        }
    };

    let mut sinks = Sinks::default();
    if !args.quiet {
        sinks.push(output.clone());
    }
    let inspector = start_inspector(&args).await.map_err(exit::usage)?;
    let (body_cap, first_id) = match &inspector {
        Some((i, _, _)) => {
            sinks.push(i.clone());
            (args.capture_body_bytes, i.next_id())
        }
        // Without an inspector only sizes are counted, no bytes kept.
        None => (0, 1),
    };
    let target_opts = target_tls::TargetOptions {
        insecure: args.target_insecure,
        ca: args.target_ca.clone(),
        h2c: args.target_h2,
    };
    let forwarder = Forwarder::with_target_options(sinks, body_cap, first_id, &target_opts)?;
    // Only reserved names (`--name`) can have webhooks queued for them, so only they
    // need the delivered set (and its memory). Without a place to remember
    // deliveries, queued webhooks still arrive, but a redelivery after a relay crash
    // could reach the app twice: say so and go on.
    if tunnels.iter().any(|t| t.name.is_some()) {
        match inspector::default_db_path()
            .and_then(|p| dedup::Dedup::open(&p.with_file_name(dedup::FILE)))
        {
            Ok(d) => forwarder.set_dedup(Arc::new(d)),
            Err(e) => tracing::warn!(
                "cannot keep the delivered-webhook set ({e:#}): redeliveries of queued webhooks will not be deduplicated"
            ),
        }
    }
    let history = inspector.as_ref().map(|(i, _, _)| Arc::clone(i));
    let inspect_url = match inspector {
        Some((inspector, listener, url)) => {
            // The Queue view runs `porthole queue` commands with this daemon's relay
            // settings (the local relay has a queue too).
            inspector.set_queue(Arc::new(queue_cmd::RelayQueue {
                relay: relay.clone(),
                token: token.clone(),
                trust: trust.clone(),
            }));
            let replayer: Arc<dyn capture::Replayer> = forwarder.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                if let Err(e) = inspector
                    .run(listener, replayer, stop.cancelled_owned())
                    .await
                {
                    tracing::error!("inspector: {e:#}");
                }
            });
            Some(url)
        }
        None => None,
    };

    let cfg = SessionConfig {
        relay,
        token,
        trust,
        tunnels,
        local_mode,
        inspect_url,
    };
    let result = session::run(cfg, forwarder, output, shutdown).await;
    if let Some(history) = history {
        // Exchanges still waiting for the writer (it batches under load) are kept.
        history.flush().await;
    }
    drop(local_relay);
    result
}

/// The delivery option of the bind, when a flag asks for one (without flags the
/// relay's defaults apply and older relays keep working).
fn delivery_options(args: &HttpArgs) -> Vec<shared_proto::TunnelOption> {
    if args.delivery.is_none() && args.offline.is_none() {
        return Vec::new();
    }
    let d = shared_proto::delivery::Delivery {
        mode: args.delivery.unwrap_or_default(),
        offline: args.offline.unwrap_or_default(),
    };
    vec![d.to_option()]
}

/// Opens the inspector's history and binds its listener, unless `--inspect off`.
/// A taken default port falls back to the next ones (4041, 4042, …) so a second
/// porthole still gets an inspector; each port keeps its own history file.
async fn start_inspector(
    args: &HttpArgs,
) -> anyhow::Result<Option<(Arc<inspector::Inspector>, tokio::net::TcpListener, String)>> {
    if args.inspect.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let addr: std::net::SocketAddr = args
        .inspect
        .trim_start_matches("http://")
        .parse()
        .with_context(|| format!("--inspect must be HOST:PORT or off, got {:?}", args.inspect))?;
    let mut listener = None;
    for offset in 0..10u16 {
        let try_addr = std::net::SocketAddr::new(addr.ip(), addr.port().saturating_add(offset));
        match tokio::net::TcpListener::bind(try_addr).await {
            Ok(l) => {
                listener = Some(l);
                break;
            }
            Err(e) if offset == 0 && addr.port() == 0 => {
                return Err(e).with_context(|| format!("binding the inspector on {addr}"))
            }
            Err(_) if addr.port() != 0 => continue,
            Err(e) => return Err(e).with_context(|| format!("binding the inspector on {addr}")),
        }
    }
    let listener = listener
        .with_context(|| format!("binding the inspector on {addr} (and the next 9 ports)"))?;
    let bound = listener.local_addr()?;
    let default = inspector::default_db_path()?;
    let mut cfg = inspector::InspectorConfig::new(
        default.with_file_name(format!("history-{}.sqlite3", bound.port())),
    );
    cfg.body_cap = args.capture_body_bytes;
    cfg.max_exchanges = args.history_size.max(1);
    cfg.credential = args.inspect_credential.clone();
    if !bound.ip().is_loopback() && cfg.credential.is_none() {
        bail!("the inspector on {bound} would be reachable from other machines: pass --inspect-credential (or PORTHOLE_INSPECT_CREDENTIAL), or bind it to 127.0.0.1");
    }
    let inspector = inspector::Inspector::open(cfg)?;
    Ok(Some((inspector, listener, format!("http://{bound}"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn start_flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("porthole.toml");
        std::fs::write(
            &path,
            "relay = \"file.example:4443\"\ntoken = \"file-token\"\ninspect = \"off\"\n\
             [tunnels.a]\ntarget = \"3000\"\n[tunnels.b]\ntarget = \"4000\"\nname = \"bee\"\n",
        )
        .unwrap();
        let cli = cli::Cli::try_parse_from([
            "porthole",
            "start",
            "b",
            "--config",
            path.to_str().unwrap(),
            "--relay",
            "flag.example:4443",
            "--inspect",
            "127.0.0.1:0",
        ])
        .unwrap();
        let cli::Command::Start(args) = cli.command else {
            panic!("not start")
        };
        let (http, plans) = start_plan(&args).unwrap();
        assert_eq!(http.relay.as_deref(), Some("flag.example:4443"));
        assert_eq!(http.inspect, "127.0.0.1:0");
        // PORTHOLE_TOKEN may be set by the environment running the tests.
        if std::env::var_os("PORTHOLE_TOKEN").is_none() {
            assert_eq!(http.token.unwrap().expose(), "file-token");
        }
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].name.as_deref(), Some("bee"));
        assert_eq!(plans[0].target.as_deref(), Some("4000"));
    }

    #[test]
    fn bad_verify_flags_name_the_flag_not_the_secret() {
        let cli = cli::Cli::try_parse_from([
            "porthole",
            "http",
            "3000",
            "--verify",
            "strype:whsec_topsecret",
        ])
        .unwrap();
        let cli::Command::Http(args) = cli.command else {
            panic!("not http")
        };
        let err = args
            .tunnel
            .settings(None, None)
            .plan("edge policy flags")
            .unwrap_err()
            .to_string();
        assert!(err.contains("--verify"), "{err}");
        assert!(!err.contains("topsecret"), "{err}");
        assert!(!format!("{args:?}").contains("topsecret"));
    }
}

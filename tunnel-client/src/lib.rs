//! Porthole client daemon (`porthole`): holds one QUIC session to a relay, forwards
//! each exchange the relay sends to a local target, and records it for the console and
//! the inspector.
//!
//! # Layout
//!
//! - [`cli`]: flags and subcommands.
//! - [`session`]: connect, verify, hello, bind, reconnect.
//! - [`trust`]: pin / CA / system-root verification of the relay.
//! - [`forwarder`]: data stream → target → data stream, with capture and replay.
//! - [`capture`]: what an exchange record holds; the sink and replay seams.
//! - [`output`]: console lines and `--json` events.
//! - [`local`]: local mode (in-process relay) and the built-in target.

#![warn(missing_docs)]

pub mod capture;
pub mod cli;
pub mod forwarder;
pub mod local;
pub mod output;
pub mod session;
pub mod trust;

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
    let result = run_http_inner(args, output.clone(), shutdown).await;
    if let Err(e) = &result {
        output.error(&format!("{e:#}"));
    }
    result
}

async fn run_http_inner(
    args: HttpArgs,
    output: Arc<Output>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let stop_local = CancellationToken::new();
    let _stop_local_on_exit = stop_local.clone().drop_guard();

    let target = match &args.target {
        Some(t) => Target::parse(t)?,
        None => {
            let addr = local::start_builtin_target(stop_local.clone()).await?;
            Target::parse(&addr.to_string())?
        }
    };

    // A local relay lives as long as this run (its data dir is removed on drop).
    let mut local_relay = None;
    let (relay, token, trust, local_mode) = match &args.relay {
        Some(relay) => {
            let token =
                args.token.clone().filter(|t| !t.is_empty()).context(
                    "a token is needed to use a relay: pass --token or set PORTHOLE_TOKEN",
                )?;
            let trust = match (&args.relay_pin, &args.relay_ca) {
                (Some(pin), _) => Trust::Pin(trust::parse_pin(pin)?),
                (None, Some(ca)) => Trust::CaFile(ca.clone()),
                (None, None) => Trust::SystemRoots,
            };
            (relay.clone(), token, trust, false)
        }
        None => {
            if args.token.is_some() || args.relay_pin.is_some() {
                bail!("--token and --relay-pin need --relay (without it, porthole runs a local relay)");
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
    sinks.push(output.clone());
    let forwarder = Forwarder::new(sinks, args.capture_body_bytes, 1);

    let cfg = SessionConfig {
        relay,
        token,
        trust,
        tunnels: vec![TunnelSpec {
            name: args.name.clone(),
            target,
        }],
        local_mode,
        inspect_url: None,
    };
    let result = session::run(cfg, forwarder, output, shutdown).await;
    drop(local_relay);
    result
}

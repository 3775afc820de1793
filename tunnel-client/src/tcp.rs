//! `porthole tcp`: one TCP tunnel. The relay gives it a public port and opens a data
//! stream per visitor connection; the forwarder connects each to the target and
//! carries raw bytes both ways. Sessions, trust and reconnection are the same as for
//! HTTP tunnels (a reconnect asks for the same port again).

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::capture::Sinks;
use crate::cli::TcpArgs;
use crate::forwarder::{Forwarder, Target};
use crate::output::Output;
use crate::session::{self, SessionConfig, TunnelSpec};
use crate::trust::Trust;

/// Runs `porthole tcp` until `shutdown` fires or a fatal error.
pub async fn run_tcp(args: TcpArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let output = Arc::new(Output::new(args.json, false, args.ready_file.clone()));
    let result = run_inner(args, output.clone(), shutdown).await;
    if let Err(e) = &result {
        output.error(&format!("{e:#}"));
    }
    result
}

async fn run_inner(
    args: TcpArgs,
    output: Arc<Output>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let target = Target::parse_tcp(&args.target)?;
    let token = args
        .token
        .clone()
        .filter(|t| !t.is_empty())
        .context("a token is needed to use a relay: pass --token or set PORTHOLE_TOKEN")?;
    let trust = Trust::from_flags(args.relay_pin.as_deref(), args.relay_ca.as_deref())?;
    if args.port == Some(0) {
        anyhow::bail!("--port must be between 1 and 65535");
    }
    let forwarder = Forwarder::new(Sinks::default(), 0, 1);
    let cfg = SessionConfig {
        relay: args.relay.clone(),
        token,
        trust,
        tunnels: vec![TunnelSpec {
            name: args.port.map(relay_server::tcp::port_name),
            target,
            options: Vec::new(),
            rules: Arc::default(),
        }],
        local_mode: false,
        inspect_url: None,
    };
    session::run(cfg, forwarder, output, shutdown).await
}

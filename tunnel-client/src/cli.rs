//! The `porthole` command line: subcommands and their flags (each flag with an env
//! variable where DESIGN.md gives one; secrets never echoed by `--help`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use shared_proto::Secret;

/// Porthole: a secure tunnel for local webhook development.
#[derive(Debug, Parser)]
#[command(name = "porthole", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open an HTTP tunnel to TARGET (without --relay: local mode, an in-process relay).
    Http(HttpArgs),
    /// List recent exchanges from a running porthole's inspector.
    Requests(crate::inspector::cli::RequestsArgs),
    /// Replay a captured exchange (optionally edited) through a running porthole.
    Replay(crate::inspector::cli::ReplayArgs),
    /// Wait until a matching exchange reaches a running porthole (exit 0), or time out
    /// (exit 4): for CI jobs that assert a webhook arrived.
    Wait(crate::wait::WaitArgs),
    /// List, retry or drop exchanges in the relay's durable queue for your names.
    Queue(crate::queue_cmd::QueueArgs),
}

/// Flags of `porthole http`.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// PORT, HOST:PORT or http://HOST:PORT; omit it to use the built-in target, which
    /// answers every request with 200 so you can watch webhooks arrive.
    pub target: Option<String>,
    /// The relay's tunnel address, HOST:PORT; omit it for local mode.
    #[arg(long, env = "PORTHOLE_RELAY")]
    pub relay: Option<String>,
    /// Client token from `porthole-relay token add`.
    #[arg(long, env = "PORTHOLE_TOKEN", hide_env_values = true)]
    pub token: Option<Secret>,
    /// Trust the relay whose certificate has this pin (`porthole-relay fingerprint`).
    #[arg(long, env = "PORTHOLE_RELAY_PIN", conflicts_with = "relay_ca")]
    pub relay_pin: Option<String>,
    /// Trust the relay by this CA certificate (PEM) instead of the system roots.
    #[arg(long, env = "PORTHOLE_RELAY_CA")]
    pub relay_ca: Option<PathBuf>,
    /// Public name to request (reserved for your token on first use).
    #[arg(long)]
    pub name: Option<String>,
    /// Inspector address, or `off`.
    #[arg(long, default_value = "127.0.0.1:4040", env = "PORTHOLE_INSPECT")]
    pub inspect: String,
    /// Credential required by the inspector (mandatory when --inspect is not loopback).
    #[arg(long, env = "PORTHOLE_INSPECT_CREDENTIAL", hide_env_values = true)]
    pub inspect_credential: Option<Secret>,
    /// Exchanges kept in the inspector's history (oldest evicted first).
    #[arg(long, default_value_t = 1000)]
    pub history_size: usize,
    /// Print one JSON object per line (ready, request, reconnecting, error).
    #[arg(long)]
    pub json: bool,
    /// No line per request.
    #[arg(long)]
    pub quiet: bool,
    /// Write the ready event(s) as JSON to this file once the tunnel is online.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Local mode: the in-process relay's public HTTP address (an ephemeral port is
    /// used if it is taken).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub local_addr: SocketAddr,
    /// Bytes of each body kept for the inspector.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub capture_body_bytes: usize,
    /// `queue`: the relay stores each request, answers 202 at once and delivers it in
    /// order; `passthrough`: the sender waits for your app [relay default: passthrough].
    #[arg(long)]
    pub delivery: Option<shared_proto::delivery::DeliveryMode>,
    /// While this client is offline, a reserved name's requests are stored (`queue`)
    /// or answered 503 with Retry-After (`reject`) [relay default: queue].
    #[arg(long)]
    pub offline: Option<shared_proto::delivery::OfflineMode>,
}

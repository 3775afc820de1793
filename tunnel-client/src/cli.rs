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
// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open an HTTP tunnel to TARGET (without --relay: local mode, an in-process relay).
    Http(HttpArgs),
    /// Open a TCP tunnel to TARGET: the relay gives it a public port (ssh, databases…).
    Tcp(TcpArgs),
    /// List recent exchanges from a running porthole's inspector.
    Requests(crate::inspector::cli::RequestsArgs),
    /// Replay a captured exchange (optionally edited) through a running porthole.
    Replay(crate::inspector::cli::ReplayArgs),
    /// Wait until a matching exchange reaches a running porthole (exit 0), or time out
    /// (exit 4): for CI jobs that assert a webhook arrived.
    Wait(crate::wait::WaitArgs),
    /// List, retry or drop exchanges in the relay's durable queue for your names.
    Queue(crate::queue_cmd::QueueArgs),
    /// Open the tunnels declared in porthole.toml (all, or the NAMEs given) in one
    /// session.
    Start(StartArgs),
}

/// Per-tunnel signature and edge-policy flags of `porthole http` (the same keys as a
/// `[tunnels.NAME]` table in porthole.toml).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TunnelFlags {
    /// Verify webhook signatures: PROVIDER:SECRET (github, gitlab, stripe, slack,
    /// standardwebhooks, svix, shopify, twilio, square, paddle, discord); repeatable.
    #[arg(
        long,
        env = "PORTHOLE_VERIFY",
        hide_env_values = true,
        value_name = "PROVIDER:SECRET"
    )]
    pub verify: Vec<Secret>,
    /// Refuse (401) requests whose signature does not verify, before the target sees
    /// them (the body is read first, up to 25 MiB; larger gets 413).
    #[arg(long, requires = "verify")]
    pub verify_enforce: bool,
    /// Edge policy: visitors must log in with USER:PASSWORD (401 otherwise); the
    /// relay receives only a hash.
    #[arg(
        long,
        env = "PORTHOLE_BASIC_AUTH",
        hide_env_values = true,
        value_name = "USER:PASSWORD"
    )]
    pub basic_auth: Option<Secret>,
    /// Edge policy: only these visitor networks (CIDR), comma-separated (403 otherwise).
    #[arg(long, value_delimiter = ',', value_name = "CIDR", value_parser = crate::config::parse_cidr)]
    pub allow_ip: Vec<ipnet::IpNet>,
    /// Edge policy: refuse these visitor networks (CIDR), comma-separated (403).
    #[arg(long, value_delimiter = ',', value_name = "CIDR", value_parser = crate::config::parse_cidr)]
    pub deny_ip: Vec<ipnet::IpNet>,
    /// Edge policy: set this request header ("Name: value"); repeatable.
    #[arg(long, value_name = "HEADER")]
    pub request_header_add: Vec<String>,
    /// Edge policy: remove this request header; repeatable.
    #[arg(long, value_name = "NAME")]
    pub request_header_remove: Vec<String>,
    /// Edge policy: set this response header ("Name: value"); repeatable.
    #[arg(long, value_name = "HEADER")]
    pub response_header_add: Vec<String>,
    /// Edge policy: remove this response header; repeatable.
    #[arg(long, value_name = "NAME")]
    pub response_header_remove: Vec<String>,
    /// Edge policy: largest request body in bytes (413 beyond).
    #[arg(long, value_name = "BYTES")]
    pub max_body_bytes: Option<u64>,
    /// Send the target's HOST:PORT as the Host header (done by this client, which
    /// alone knows the target) instead of the public host.
    #[arg(long)]
    pub rewrite_host: bool,
}

impl TunnelFlags {
    /// The settings these flags describe, each value tagged with its flag for errors.
    pub fn settings(
        &self,
        name: Option<String>,
        target: Option<String>,
    ) -> crate::config::TunnelSettings {
        let tag = |flag: &str, list: &[String]| -> Vec<(String, String)> {
            list.iter().map(|v| (flag.to_owned(), v.clone())).collect()
        };
        crate::config::TunnelSettings {
            name,
            target,
            verify: self
                .verify
                .iter()
                .map(|s| ("--verify".to_owned(), s.clone()))
                .collect(),
            verify_enforce: self.verify_enforce,
            rewrite_host: self.rewrite_host,
            basic_auth: self
                .basic_auth
                .iter()
                .map(|s| ("--basic-auth".to_owned(), s.clone()))
                .collect(),
            allow_ips: self.allow_ip.clone(),
            deny_ips: self.deny_ip.clone(),
            request_headers_add: tag("--request-header-add", &self.request_header_add),
            request_headers_remove: self.request_header_remove.clone(),
            response_headers_add: tag("--response-header-add", &self.response_header_add),
            response_headers_remove: self.response_header_remove.clone(),
            max_body_bytes: self.max_body_bytes,
        }
    }
}

/// Flags of `porthole start`; each overrides the config file's key of the same name.
#[derive(Debug, Clone, clap::Args)]
pub struct StartArgs {
    /// Tunnels to open (keys of [tunnels.NAME]); all of them when none is given.
    pub names: Vec<String>,
    /// Config file [default: $XDG_CONFIG_HOME/porthole/porthole.toml].
    #[arg(long, env = "PORTHOLE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The relay's tunnel address, HOST:PORT (overrides `relay`).
    #[arg(long, env = "PORTHOLE_RELAY")]
    pub relay: Option<String>,
    /// Client token (overrides `token` / `token_env`).
    #[arg(long, env = "PORTHOLE_TOKEN", hide_env_values = true)]
    pub token: Option<Secret>,
    /// Relay pin (overrides `relay_pin`).
    #[arg(long, env = "PORTHOLE_RELAY_PIN", conflicts_with = "relay_ca")]
    pub relay_pin: Option<String>,
    /// Relay CA file (overrides `relay_ca`).
    #[arg(long, env = "PORTHOLE_RELAY_CA")]
    pub relay_ca: Option<PathBuf>,
    /// Inspector address, or `off` (overrides `inspect`) [default: 127.0.0.1:4040].
    #[arg(long, env = "PORTHOLE_INSPECT")]
    pub inspect: Option<String>,
    /// Credential required by the inspector.
    #[arg(long, env = "PORTHOLE_INSPECT_CREDENTIAL", hide_env_values = true)]
    pub inspect_credential: Option<Secret>,
    /// Exchanges kept in the inspector's history.
    #[arg(long, default_value_t = 1000)]
    pub history_size: usize,
    /// Print one JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// No line per request.
    #[arg(long)]
    pub quiet: bool,
    /// Write the ready events as JSON to this file once the tunnels are online.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Bytes of each body kept for the inspector.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub capture_body_bytes: usize,
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
    /// Signature verification and edge policy for this tunnel.
    #[command(flatten)]
    pub tunnel: TunnelFlags,
    /// `queue`: the relay stores each request, answers 202 at once and delivers it in
    /// order; `passthrough`: the sender waits for your app [relay default: passthrough].
    #[arg(long)]
    pub delivery: Option<shared_proto::delivery::DeliveryMode>,
    /// While this client is offline, a reserved name's requests are stored (`queue`)
    /// or answered 503 with Retry-After (`reject`) [relay default: queue].
    #[arg(long)]
    pub offline: Option<shared_proto::delivery::OfflineMode>,
    /// Accept any certificate from an https:// target (a self-signed local one).
    #[arg(long, conflicts_with = "target_ca")]
    pub target_insecure: bool,
    /// Trust an https:// target by this CA certificate (PEM) instead of public roots.
    #[arg(long)]
    pub target_ca: Option<PathBuf>,
    /// Speak HTTP/2 in clear (prior knowledge, h2c) to an http:// target, e.g. a gRPC
    /// server; https:// targets negotiate HTTP/2 by ALPN without this flag.
    #[arg(long)]
    pub target_h2: bool,
}

/// Flags of `porthole tcp`.
#[derive(Debug, Clone, clap::Args)]
pub struct TcpArgs {
    /// PORT or HOST:PORT of the local TCP service (like 22 or localhost:5432).
    pub target: String,
    /// Public port to request, reserved for your token on first use (else any free
    /// port of the relay's range).
    #[arg(long)]
    pub port: Option<u16>,
    /// The relay's tunnel address, HOST:PORT.
    #[arg(long, env = "PORTHOLE_RELAY")]
    pub relay: String,
    /// Client token from `porthole-relay token add`.
    #[arg(long, env = "PORTHOLE_TOKEN", hide_env_values = true)]
    pub token: Option<Secret>,
    /// Trust the relay whose certificate has this pin (`porthole-relay fingerprint`).
    #[arg(long, env = "PORTHOLE_RELAY_PIN", conflicts_with = "relay_ca")]
    pub relay_pin: Option<String>,
    /// Trust the relay by this CA certificate (PEM) instead of the system roots.
    #[arg(long, env = "PORTHOLE_RELAY_CA")]
    pub relay_ca: Option<PathBuf>,
    /// Print one JSON object per line (ready, reconnecting, error).
    #[arg(long)]
    pub json: bool,
    /// Write the ready event(s) as JSON to this file once the tunnel is online.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

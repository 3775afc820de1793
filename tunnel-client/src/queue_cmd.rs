//! `porthole queue list | retry ID | drop ID`: asks the relay about the durable queue
//! of the names this token reserved, over a short control-stream session (hello, one
//! queue command, its JSON report). It binds no tunnel, so it runs beside a
//! `porthole http` of the same token without disturbing it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use relay_server::quic::{encode_head, FrameReader, TransportTuning};
use shared_proto::delivery::QueueOp;
use shared_proto::{codes, ClientMessage, Secret, ServerMessage, PROTOCOL_VERSION};

use crate::trust::{self, Trust};

/// Flags of `porthole queue`.
#[derive(Debug, Clone, clap::Args)]
pub struct QueueArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: QueueCommand,
    /// The relay's tunnel address, HOST:PORT.
    #[arg(long, env = "PORTHOLE_RELAY", global = true)]
    pub relay: Option<String>,
    /// Client token.
    #[arg(long, env = "PORTHOLE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<Secret>,
    /// Trust the relay whose certificate has this pin.
    #[arg(long, env = "PORTHOLE_RELAY_PIN", global = true)]
    pub relay_pin: Option<String>,
    /// Trust the relay by this CA certificate (PEM).
    #[arg(long, env = "PORTHOLE_RELAY_CA", global = true)]
    pub relay_ca: Option<std::path::PathBuf>,
    /// Print the relay's JSON answer as it is.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `porthole queue` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum QueueCommand {
    /// Queued, delivered and dead exchanges of your reserved names, newest first.
    List {
        /// Only this name.
        #[arg(long)]
        name: Option<String>,
        /// At most this many (the relay answers at most 100).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Queue an exchange (a dead one, say) again, with fresh attempts.
    Retry {
        /// Its id, from `porthole queue list`.
        id: u64,
    },
    /// Delete an exchange from the relay's queue.
    Drop {
        /// Its id, from `porthole queue list`.
        id: u64,
    },
}

/// Runs one queue command and prints the answer.
pub async fn run(args: &QueueArgs, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let relay = args
        .relay
        .clone()
        .context("`porthole queue` talks to a relay: pass --relay or set PORTHOLE_RELAY")?;
    let token = args
        .token
        .clone()
        .filter(|t| !t.is_empty())
        .context("a token is needed: pass --token or set PORTHOLE_TOKEN")?;
    let trust = Trust::from_flags(args.relay_pin.as_deref(), args.relay_ca.as_deref())?;
    let op = match &args.command {
        QueueCommand::List { name, limit } => QueueOp::List {
            name: name.clone(),
            limit: *limit,
        },
        QueueCommand::Retry { id } => QueueOp::Retry { id: *id },
        QueueCommand::Drop { id } => QueueOp::Drop { id: *id },
    };
    let json = command(&relay, token, &trust, op).await?;
    let v: serde_json::Value =
        serde_json::from_str(&json).context("the relay's queue answer is not JSON")?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("{e}");
    }
    if args.json {
        writeln!(out, "{json}")?;
        return Ok(());
    }
    if let Some(ok) = v.get("ok").and_then(|e| e.as_str()) {
        writeln!(out, "{ok}")?;
        return Ok(());
    }
    let entries: Vec<relay_server::store::Entry> = match v.get("entries") {
        Some(e) => serde_json::from_value(e.clone()).context("reading the queue listing")?,
        None => Vec::new(),
    };
    relay_server::queue::print_entries(&entries, out)?;
    Ok(())
}

/// Runs one queue command on `relay` (bounded to 15 s) and answers the relay's JSON
/// report as it is: `{"entries": [...]}`, `{"ok": "..."}` or `{"error": "..."}`.
pub async fn command(
    relay: &str,
    token: Secret,
    trust: &Trust,
    op: QueueOp,
) -> anyhow::Result<String> {
    tokio::time::timeout(Duration::from_secs(15), ask(relay, token, trust, op))
        .await
        .map_err(|_| anyhow!("no answer from relay {relay} within 15s"))?
}

/// The daemon's access to its relay's queue, for the inspector: each command opens a
/// short session of its own with the daemon's relay address, token and trust.
pub struct RelayQueue {
    /// The relay's tunnel address, HOST:PORT.
    pub relay: String,
    /// Client token.
    pub token: Secret,
    /// How the relay's certificate is trusted.
    pub trust: Trust,
}

impl crate::inspector::QueueAccess for RelayQueue {
    fn command(&self, op: QueueOp) -> crate::capture::BoxFuture<'static, Result<String, String>> {
        let (relay, token, trust) = (self.relay.clone(), self.token.clone(), self.trust.clone());
        Box::pin(async move {
            command(&relay, token, &trust, op)
                .await
                .map_err(|e| format!("{e:#}"))
        })
    }
}

async fn ask(relay: &str, token: Secret, trust: &Trust, op: QueueOp) -> anyhow::Result<String> {
    let crypto = trust::client_config(trust)?;
    let mut client_cfg = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
            .map_err(|e| anyhow!("TLS configuration: {e}"))?,
    ));
    client_cfg.transport_config(Arc::new(TransportTuning::default().transport_config()));
    let addr: SocketAddr = tokio::net::lookup_host(relay)
        .await
        .with_context(|| format!("resolving relay {relay}"))?
        .next()
        .ok_or_else(|| anyhow!("relay {relay} resolves to no address"))?;
    let host = relay
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(relay)
        .to_owned();
    let (ep, _) = crate::session::client_endpoint(addr)?;
    let conn = ep
        .connect_with(client_cfg, addr, &host)
        .map_err(|e| anyhow!("cannot connect to {relay}: {e}"))?
        .await
        .map_err(|e| anyhow!("connecting to relay {relay}: {}", trust::explain(&e)))?;
    let (mut send, recv) = conn.open_bi().await?;
    let mut recv = FrameReader::new(recv);
    let hello = ClientMessage::Hello {
        version: PROTOCOL_VERSION,
        token,
        agent: format!("porthole/{} queue", env!("CARGO_PKG_VERSION")),
    };
    send.write_chunk(encode_head(&hello)?).await?;
    match recv.next::<ServerMessage>().await? {
        Some(ServerMessage::Welcome { .. }) => {}
        Some(ServerMessage::Refused { message, .. }) => bail!("the relay refused: {message}"),
        other => bail!("unexpected answer from relay: {other:?}"),
    }
    send.write_chunk(encode_head(&ClientMessage::Queue(op))?)
        .await?;
    let answer = loop {
        match recv.next::<ServerMessage>().await? {
            Some(ServerMessage::QueueReport { json }) => break json,
            Some(ServerMessage::GoAway { .. }) => continue,
            Some(other) => bail!("unexpected answer from relay: {other:?}"),
            None => bail!(
                "the relay closed the session without answering (is it older than this client?)"
            ),
        }
    };
    let _ = send.finish();
    conn.close(quinn::VarInt::from_u32(codes::CLOSE_NORMAL), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
    Ok(answer)
}

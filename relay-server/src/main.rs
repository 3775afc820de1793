//! `porthole-relay`: parse arguments, start tracing, run.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

// glibc's allocator showed up at ~10% of the relay's CPU under load; mimalloc is cheaper
// for the many short-lived per-exchange buffers.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use relay_server::config::{default_data_dir, RelayConfig, ServeArgs};
use relay_server::{Listeners, Relay};

/// The Porthole relay: public HTTP(S) ingress for webhook tunnels.
#[derive(Debug, Parser)]
#[command(name = "porthole-relay", version, about)]
struct Cli {
    /// Log as JSON lines (on stderr).
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up; the size difference between variants is irrelevant.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay.
    Serve {
        #[command(flatten)]
        args: ServeArgs,
        /// Print a JSON `listening` event on stdout when ready.
        #[arg(long)]
        json: bool,
    },
    /// Manage client tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Inspect and manage the durable queue (works on the data dir's file directly).
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Print the relay's pin (`sha256:<hex>`), creating its certificate if needed.
    Fingerprint {
        #[command(flatten)]
        dir: DataDir,
        /// Domain for a certificate created now [default: localhost].
        #[arg(long, default_value = "localhost")]
        domain: String,
        /// Pin of this PEM certificate instead of the data dir's.
        #[arg(long)]
        tls_cert: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct DataDir {
    /// Data directory [default: $XDG_DATA_HOME/porthole-relay].
    #[arg(long, env = "PORTHOLE_RELAY_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

impl DataDir {
    fn path(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token; it is printed once, as the last line of stdout.
    Add {
        /// A name for the token (who or what uses it).
        name: String,
        #[command(flatten)]
        dir: DataDir,
    },
    /// List tokens and the names they reserve.
    List {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Revoke a token; its live sessions are closed.
    Revoke {
        /// The token's name.
        name: String,
        #[command(flatten)]
        dir: DataDir,
    },
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// List queued, delivered and dead exchanges, newest first.
    List {
        /// Only this tunnel name.
        #[arg(long)]
        name: Option<String>,
        /// Only this state: queued, delivered or dead.
        #[arg(long, value_parser = ["queued", "delivered", "dead"])]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: DataDir,
    },
    /// Queue an exchange again (a dead one, say), with fresh attempts.
    Retry {
        /// Its id (from `queue list`).
        id: u64,
        #[command(flatten)]
        dir: DataDir,
    },
    /// Delete an exchange from the queue.
    Drop {
        /// Its id (from `queue list`).
        id: u64,
        #[command(flatten)]
        dir: DataDir,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("porthole-relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTHOLE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only on a terminal: a journal or a log file gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { args, json } => {
            let cfg = RelayConfig::resolve(&args)?;
            let rt = relay_server::runtime::build(cfg.threads).context("starting runtime")?;
            rt.block_on(serve(cfg, json))
        }
        Command::Token { command } => token(command),
        Command::Queue { command } => {
            use relay_server::queue::{admin, AdminOp};
            let (dir, op) = match command {
                QueueCommand::List {
                    name,
                    state,
                    limit,
                    json,
                    dir,
                } => (
                    dir,
                    AdminOp::List {
                        name,
                        state,
                        json,
                        limit,
                    },
                ),
                QueueCommand::Retry { id, dir } => (dir, AdminOp::Retry { id }),
                QueueCommand::Drop { id, dir } => (dir, AdminOp::Drop { id }),
            };
            admin(&dir.path(), op, &mut std::io::stdout())
        }
        Command::Fingerprint {
            dir,
            domain,
            tls_cert,
        } => {
            let pin = match tls_cert {
                Some(c) => {
                    let pem =
                        std::fs::read(&c).with_context(|| format!("reading {}", c.display()))?;
                    let cert = rustls_pemfile::certs(&mut &pem[..])
                        .next()
                        .with_context(|| format!("no certificate in {}", c.display()))??;
                    relay_server::tls::spki_pin(&cert)?
                }
                None => relay_server::tls::Identity::load_or_create(&dir.path(), &domain)?.pin()?,
            };
            println!("{pin}");
            Ok(())
        }
    }
}

async fn serve(cfg: RelayConfig, json: bool) -> anyhow::Result<()> {
    let relay = Relay::new(cfg.clone())?;
    let listeners = Listeners::bind(&cfg).await?;
    let addrs = listeners.addrs()?;
    if json {
        let event = serde_json::json!({
            "event": "listening",
            "http": addrs.http,
            "https": addrs.https,
            "tunnel": addrs.tunnel,
            "admin": addrs.admin,
            "pin": relay.pin(),
            "domain": cfg.domain,
        });
        println!("{event}");
    } else {
        eprintln!(
            "porthole-relay serving *.{} — http {} · https {} · tunnel udp {} · pin {}",
            cfg.domain,
            addrs
                .http
                .map(|a| a.to_string())
                .unwrap_or_else(|| "off".into()),
            addrs
                .https
                .map(|a| a.to_string())
                .unwrap_or_else(|| "off".into()),
            addrs.tunnel,
            relay.pin()
        );
    }
    relay.run(listeners, shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    use relay_server::tokens::TokenStore;
    let open = |dir: &DataDir| {
        let path = dir.path();
        TokenStore::open(&path)
            .with_context(|| format!("opening token store in {}", path.display()))
    };
    match cmd {
        TokenCommand::Add { name, dir } => {
            let store = open(&dir)?;
            let token = store.add(&name)?;
            eprintln!("created token {name}; it is shown only once:");
            println!("{}", token.expose());
        }
        TokenCommand::List { dir } => {
            let store = open(&dir)?;
            let tokens = store.list()?;
            if tokens.is_empty() {
                eprintln!("no tokens (create one with `porthole-relay token add NAME`)");
            }
            for t in tokens {
                let created = std::time::UNIX_EPOCH
                    + std::time::Duration::from_secs(t.created_at.max(0).unsigned_abs());
                println!(
                    "{}\tcreated {}\treserved: {}",
                    t.name,
                    humantime::format_rfc3339_seconds(created),
                    if t.reserved.is_empty() {
                        "-".into()
                    } else {
                        t.reserved.join(",")
                    }
                );
            }
        }
        TokenCommand::Revoke { name, dir } => {
            let store = open(&dir)?;
            store.revoke(&name)?;
            eprintln!("revoked token {name}; its sessions close within a second");
        }
    }
    Ok(())
}

//! `porthole`: parse arguments, start tracing, run.

use std::io::IsTerminal;
use std::process::ExitCode;

// glibc's allocator spent a fifth of the client's CPU under load (malloc_consolidate
// on the many short-lived buffers of an exchange); mimalloc's thread-local pages don't.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tunnel_client::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTHOLE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only on a terminal: a journal or a log file gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("porthole: starting runtime: {e}");
            return ExitCode::from(tunnel_client::exit::RUNTIME);
        }
    };
    let result = rt.block_on(async {
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            on_signal.cancel();
        });
        match cli.command {
            Command::Http(args) => tunnel_client::run_http(args, shutdown).await,
            Command::Tcp(args) => tunnel_client::tcp::run_tcp(args, shutdown).await,
            Command::Start(args) => tunnel_client::run_start(args, shutdown).await,
            Command::Requests(args) => {
                let mut out = std::io::stdout();
                report(tunnel_client::inspector::cli::requests(&args, &mut out).await)
            }
            Command::Wait(args) => {
                let mut out = std::io::stdout();
                report(tunnel_client::wait::run(&args, &mut out).await)
            }
            Command::Queue(args) => {
                let mut out = std::io::stdout();
                report(tunnel_client::queue_cmd::run(&args, &mut out).await)
            }
            Command::Replay(args) => {
                let mut out = std::io::stdout();
                report(
                    tunnel_client::inspector::cli::replay(&args, &mut out)
                        .await
                        .map(|_| ()),
                )
            }
        }
    });
    // Don't wait for stray tasks (pooled connections) on the way out.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    // Exit codes are documented in tunnel_client::exit (and README).
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => ExitCode::from(tunnel_client::exit::code(&e)),
    }
}

/// The client's runtime: one thread by default (see `relay_server::runtime`); a tunnel
/// daemon forwards a handful of exchanges at a time. `PORTHOLE_THREADS=N` asks for a
/// multi-threaded one.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    relay_server::runtime::build(
        std::env::var("PORTHOLE_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok()),
    )
}

/// Prints a one-line error for the commands that have no JSON event stream.
fn report(result: anyhow::Result<()>) -> anyhow::Result<()> {
    if let Err(e) = &result {
        eprintln!("porthole: {e:#}");
    }
    result
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

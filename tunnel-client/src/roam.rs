//! Roaming aid: on SIGUSR1 the client moves its QUIC endpoints to fresh UDP sockets
//! (new ephemeral ports), as if the laptop had changed networks. The session's
//! connection (and its bulk lane's, which has an endpoint of its own) migrates to the
//! new address (the relay accepts migration) and exchanges in flight carry on. A
//! debugging aid, and what the roaming end-to-end tests use to trigger a real address
//! change on the real binary; it never closes anything.

use std::future::Future;
use std::net::SocketAddr;

/// Rebinds `endpoint` (`what` names it in the log) to a new socket on `bind`'s
/// address family each time the process receives SIGUSR1, until `until` completes.
/// Does nothing off Unix.
pub fn spawn_rebind_on_sigusr1(
    endpoint: quinn::Endpoint,
    bind: SocketAddr,
    what: &'static str,
    until: impl Future<Output = ()> + Send + 'static,
) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
            return;
        };
        let mut until = std::pin::pin!(until);
        loop {
            tokio::select! {
                got = usr1.recv() => if got.is_none() { return },
                () = &mut until => return,
            }
            let before = endpoint.local_addr().ok();
            let result = relay_server::quic::udp_socket(bind).and_then(|s| endpoint.rebind(s));
            match result {
                Ok(()) => tracing::warn!(
                    "SIGUSR1: rebound the {what} from {} to {}",
                    before.map(|a| a.to_string()).unwrap_or_default(),
                    endpoint
                        .local_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_default()
                ),
                Err(e) => tracing::warn!("SIGUSR1: rebinding the {what} failed: {e}"),
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (endpoint, bind, what, until);
}

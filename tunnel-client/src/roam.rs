//! Roaming aid: on SIGUSR1 the client moves its QUIC endpoint to a fresh UDP socket
//! (a new ephemeral port), as if the laptop had changed networks. The session's
//! connection migrates to the new address (the relay accepts migration) and exchanges
//! in flight carry on. A debugging aid, and what the roaming end-to-end test uses to
//! trigger a real address change on the real binary; it never closes anything.

use std::net::SocketAddr;

/// Rebinds `endpoint` to a new socket on `bind`'s address family each time the process
/// receives SIGUSR1, until the endpoint is gone. Does nothing off Unix.
pub fn spawn_rebind_on_sigusr1(endpoint: quinn::Endpoint, bind: SocketAddr) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
            return;
        };
        while usr1.recv().await.is_some() {
            let before = endpoint.local_addr().ok();
            let result = relay_server::quic::udp_socket(bind).and_then(|s| endpoint.rebind(s));
            match result {
                Ok(()) => tracing::warn!(
                    "SIGUSR1: rebound the QUIC endpoint from {} to {}",
                    before.map(|a| a.to_string()).unwrap_or_default(),
                    endpoint
                        .local_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_default()
                ),
                Err(e) => tracing::warn!("SIGUSR1: rebinding the QUIC endpoint failed: {e}"),
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (endpoint, bind);
}

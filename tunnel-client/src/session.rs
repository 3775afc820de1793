//! The client's session with a relay: connect (verifying the relay), hello, bind the
//! tunnels, accept data streams, and reconnect with capped exponential backoff and
//! jitter after any loss, taking the same names back.
//!
//! Errors that retrying cannot fix (bad token, wrong pin, version mismatch, a name
//! held by another token, revocation) end the session with one clear sentence.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use quinn::VarInt;
use rand::Rng;
use relay_server::quic::{
    encode_head, FrameReader, StreamAllowance, TransportTuning, INITIAL_STREAMS,
};
use shared_proto::{
    codes, ClientMessage, ErrorCode, Secret, ServerMessage, TunnelKind, PROTOCOL_VERSION,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::forwarder::{Forwarder, Target, TunnelMap, TunnelTarget};
use crate::lane::{BulkLane, LaneConnector};
use crate::output::{Online, Output};
use crate::trust::{self, Trust};
use relay_server::lanes::Switch;

/// How long Ctrl-C waits for in-flight exchanges.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Deadline for connecting and the hello.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts before giving up when the very first connection fails.
const FIRST_ATTEMPTS: u32 = 5;

/// One tunnel to open.
#[derive(Debug, Clone)]
pub struct TunnelSpec {
    /// Requested name (reserved for the token), or a random one.
    pub name: Option<String>,
    /// Where it forwards.
    pub target: Target,
    /// Options sent with the bind (policy, delivery mode, …).
    pub options: Vec<shared_proto::TunnelOption>,
    /// What the client itself does for this tunnel (signatures, Host rewrite).
    pub rules: Arc<crate::signatures::TunnelRules>,
}

/// What a session needs.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// `HOST:PORT` of the relay's QUIC listener.
    pub relay: String,
    /// Client token.
    pub token: Secret,
    /// How to trust the relay.
    pub trust: Trust,
    /// Tunnels to open.
    pub tunnels: Vec<TunnelSpec>,
    /// Whether the relay runs in this process (for the console).
    pub local_mode: bool,
    /// Inspector URL to announce, if any.
    pub inspect_url: Option<String>,
}

/// Why a connection attempt or a session ended.
enum Ended {
    /// Retry after a backoff.
    Retry(String),
    /// Reconnect now (goaway): the old connection finishes its in-flight exchanges.
    Now(String),
    /// Give up with this sentence.
    Fatal(String),
    /// Ctrl-C: done.
    Shutdown,
}

struct Connected {
    conn: quinn::Connection,
    /// The relay's id for this session (a bulk lane names it).
    session_id: u64,
    ctrl_send: quinn::SendStream,
    ctrl_recv: FrameReader,
    online: Vec<Online>,
    map: TunnelMap,
}

fn backoff(attempt: u32) -> Duration {
    let base = 200u64.saturating_mul(1u64 << attempt.min(6)).min(10_000);
    // Full jitter on the upper half, so a fleet of clients does not reconnect in step
    // after a relay restart.
    let ms = rand::thread_rng().gen_range(base / 2..=base);
    Duration::from_millis(ms)
}

/// Runs the session until `shutdown` fires (Ok) or a fatal error (Err, one sentence).
pub async fn run(
    cfg: SessionConfig,
    forwarder: Arc<Forwarder>,
    output: Arc<Output>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let crypto = trust::client_config(&cfg.trust)?;
    let mut client_cfg = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
            .map_err(|e| anyhow!("TLS configuration: {e}"))?,
    ));
    // The relay may open INITIAL_STREAMS data streams at first; each connection's
    // StreamAllowance raises that as exchanges pile up.
    let tuning = TransportTuning {
        max_streams: INITIAL_STREAMS,
        ..TransportTuning::default()
    };
    client_cfg.transport_config(Arc::new(tuning.transport_config()));

    let (host, _) = split_host(&cfg.relay)?;
    let mut endpoint: Option<quinn::Endpoint> = None;
    // Names the relay gave us, requested again on every reconnect.
    let mut names: Vec<Option<String>> = cfg.tunnels.iter().map(|t| t.name.clone()).collect();
    let reserve: Vec<bool> = cfg.tunnels.iter().map(|t| t.name.is_some()).collect();
    let tracker = TaskTracker::new();
    let mut ever_connected = false;
    let mut attempt = 0u32;
    let mut old_conns: Vec<quinn::Connection> = Vec::new();
    // Large response bodies go on a bulk lane (crate::lane) unless
    // PORTHOLE_BULK_LANE=off.
    let bulk_lanes = std::env::var("PORTHOLE_BULK_LANE").map_or(true, |v| v != "off");

    let result = loop {
        let addr = match resolve(&cfg.relay).await {
            Ok(a) => a,
            Err(e) => {
                if let Some(r) = wait_retry(
                    &cfg,
                    &output,
                    &shutdown,
                    ever_connected,
                    &mut attempt,
                    e.to_string(),
                )
                .await
                {
                    break r;
                }
                continue;
            }
        };
        let ep = match &endpoint {
            Some(ep) => ep.clone(),
            None => {
                let (ep, bind) = client_endpoint(addr)?;
                crate::roam::spawn_rebind_on_sigusr1(
                    ep.clone(),
                    bind,
                    "QUIC endpoint",
                    std::future::pending(),
                );
                endpoint = Some(ep.clone());
                ep
            }
        };
        let attempt_result = tokio::select! {
            _ = shutdown.cancelled() => Err(Ended::Shutdown),
            r = tokio::time::timeout(
                CONNECT_TIMEOUT,
                connect(&ep, &client_cfg, addr, &host, &cfg, &names, &reserve),
            ) => r.unwrap_or_else(|_| Err(Ended::Retry(format!("no answer from relay {} within {}s", cfg.relay, CONNECT_TIMEOUT.as_secs())))),
        };
        let connected = match attempt_result {
            Ok(c) => c,
            Err(Ended::Shutdown) => break Ok(()),
            Err(Ended::Fatal(m)) => break Err(crate::exit::refused(m)),
            Err(Ended::Retry(m)) | Err(Ended::Now(m)) => {
                if let Some(r) =
                    wait_retry(&cfg, &output, &shutdown, ever_connected, &mut attempt, m).await
                {
                    break r;
                }
                continue;
            }
        };
        for (slot, online) in names.iter_mut().zip(&connected.online) {
            *slot = Some(online.name.clone());
        }
        for (t, spec) in connected.online.iter().zip(&cfg.tunnels) {
            forwarder.register(&t.name, &spec.target);
            forwarder.register_rules(&t.name, &spec.rules);
        }
        if ever_connected {
            output.reconnected(&connected.online);
        } else {
            output.ready(
                &connected.online,
                cfg.inspect_url.as_deref(),
                cfg.local_mode,
            );
            ever_connected = true;
        }
        let connected_at = tokio::time::Instant::now();
        let conn = connected.conn.clone();
        let lane = bulk_lanes.then(|| {
            Arc::new(LaneConnector::new(
                client_cfg.clone(),
                addr,
                host.clone(),
                cfg.token.clone(),
                connected.session_id,
            ))
        });
        match serve(connected, lane, &forwarder, &tracker, &shutdown).await {
            Ended::Shutdown => break Ok(()),
            Ended::Fatal(m) => break Err(crate::exit::refused(m)),
            Ended::Now(m) => {
                // Goaway: reconnect at once; the old connection keeps serving what
                // it has in flight until the relay closes it.
                old_conns.push(conn);
                output.reconnecting(1, Duration::ZERO, &m);
                attempt = 0;
            }
            Ended::Retry(m) => {
                if connected_at.elapsed() > Duration::from_secs(30) {
                    attempt = 0;
                }
                if let Some(r) =
                    wait_retry(&cfg, &output, &shutdown, ever_connected, &mut attempt, m).await
                {
                    break r;
                }
            }
        }
    };

    // Let in-flight exchanges finish, within a bound.
    tracker.close();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await;
    if let Some(ep) = endpoint {
        ep.close(VarInt::from_u32(codes::CLOSE_NORMAL), b"client exiting");
        let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
    }
    drop(old_conns);
    result
}

/// A client QUIC endpoint on an ephemeral port of the relay's address family;
/// answers it and the address it was bound to.
pub(crate) fn client_endpoint(relay: SocketAddr) -> anyhow::Result<(quinn::Endpoint, SocketAddr)> {
    let bind: SocketAddr = if relay.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .expect("literal address");
    let sock = relay_server::quic::udp_socket(bind).context("opening UDP socket")?;
    let ep = relay_server::quic::endpoint(sock, None).context("starting QUIC endpoint")?;
    Ok((ep, bind))
}

/// Sleeps for the next backoff (or gives up). Answers `Some(result)` to stop.
async fn wait_retry(
    cfg: &SessionConfig,
    output: &Output,
    shutdown: &CancellationToken,
    ever_connected: bool,
    attempt: &mut u32,
    reason: String,
) -> Option<anyhow::Result<()>> {
    *attempt += 1;
    if !ever_connected && *attempt >= FIRST_ATTEMPTS {
        return Some(Err(anyhow!(
            "could not reach relay {}: {reason}",
            cfg.relay
        )));
    }
    let delay = backoff(*attempt);
    output.reconnecting(*attempt, delay, &reason);
    tokio::select! {
        _ = shutdown.cancelled() => Some(Ok(())),
        _ = tokio::time::sleep(delay) => None,
    }
}

fn split_host(relay: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = relay.rsplit_once(':').ok_or_else(|| {
        anyhow!("--relay must be HOST:PORT (the relay's tunnel address), got {relay:?}")
    })?;
    let port: u16 = port
        .parse()
        .map_err(|_| anyhow!("--relay must be HOST:PORT, got {relay:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(anyhow!("--relay must be HOST:PORT, got {relay:?}"));
    }
    Ok((host.to_owned(), port))
}

async fn resolve(relay: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(relay)
        .await
        .with_context(|| format!("resolving relay {relay}"))?
        .next()
        .ok_or_else(|| anyhow!("relay {relay} resolves to no address"))
}

async fn connect(
    ep: &quinn::Endpoint,
    client_cfg: &quinn::ClientConfig,
    addr: SocketAddr,
    host: &str,
    cfg: &SessionConfig,
    names: &[Option<String>],
    reserve: &[bool],
) -> Result<Connected, Ended> {
    let connecting = ep
        .connect_with(client_cfg.clone(), addr, host)
        .map_err(|e| Ended::Fatal(format!("cannot connect to {}: {e}", cfg.relay)))?;
    let conn = match connecting.await {
        Ok(c) => c,
        Err(e) if trust::is_trust_error(&e) => {
            return Err(Ended::Fatal(format!(
                "refusing relay {}: {}",
                cfg.relay,
                trust::explain(&e)
            )))
        }
        Err(e) => {
            return Err(Ended::Retry(format!(
                "connecting to relay {}: {}",
                cfg.relay,
                trust::explain(&e)
            )))
        }
    };
    let lost = |e: &dyn std::fmt::Display| Ended::Retry(format!("relay {}: {e}", cfg.relay));
    let (mut send, recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
    let mut recv = FrameReader::new(recv);
    let hello = ClientMessage::Hello {
        version: PROTOCOL_VERSION,
        token: cfg.token.clone(),
        agent: format!("porthole/{}", env!("CARGO_PKG_VERSION")),
    };
    send_msg(&mut send, &hello).await.map_err(|e| lost(&e))?;
    let session_id = match next_msg(&mut recv, &conn).await? {
        ServerMessage::Welcome { session_id, .. } => session_id,
        ServerMessage::Refused { code, message } => {
            let sentence = match code {
                ErrorCode::Unauthorized => format!("the relay refused the token: {message}"),
                _ => format!("the relay refused the session: {message}"),
            };
            conn.close(VarInt::from_u32(codes::CLOSE_NORMAL), b"refused");
            return Err(if code.is_retryable() {
                Ended::Retry(sentence)
            } else {
                Ended::Fatal(sentence)
            });
        }
        other => {
            return Err(Ended::Fatal(format!(
                "unexpected answer from relay: {other:?}"
            )))
        }
    };
    let mut online = Vec::new();
    let mut map = HashMap::new();
    for (i, spec) in cfg.tunnels.iter().enumerate() {
        let bind = ClientMessage::Bind {
            name: names[i].clone(),
            kind: if spec.target.is_tcp() {
                TunnelKind::Tcp
            } else {
                TunnelKind::Http
            },
            reserve: reserve[i],
            options: spec
                .options
                .iter()
                .cloned()
                .chain([shared_proto::TunnelOption::new(
                    shared_proto::options::REFUSAL_NOTICES,
                    Vec::new(),
                )])
                .collect(),
        };
        send_msg(&mut send, &bind).await.map_err(|e| lost(&e))?;
        match next_msg(&mut recv, &conn).await? {
            ServerMessage::Bound {
                tunnel_id,
                name,
                url,
            } => {
                map.insert(
                    tunnel_id,
                    TunnelTarget {
                        name: name.clone(),
                        target: spec.target.clone(),
                        rules: spec.rules.clone(),
                    },
                );
                online.push(Online {
                    name,
                    url,
                    target: spec.target.to_string(),
                });
            }
            ServerMessage::BindRefused { code, message } => {
                let sentence = format!("the relay refused the tunnel: {message}");
                conn.close(VarInt::from_u32(codes::CLOSE_NORMAL), b"bind refused");
                return Err(if code.is_retryable() {
                    Ended::Retry(sentence)
                } else {
                    Ended::Fatal(sentence)
                });
            }
            other => {
                return Err(Ended::Fatal(format!(
                    "unexpected answer from relay: {other:?}"
                )))
            }
        }
    }
    Ok(Connected {
        conn,
        session_id,
        ctrl_send: send,
        ctrl_recv: recv,
        online,
        map: Arc::new(map),
    })
}

async fn send_msg(send: &mut quinn::SendStream, msg: &ClientMessage) -> anyhow::Result<()> {
    let bytes = encode_head(msg)?;
    send.write_chunk(bytes).await?;
    Ok(())
}

async fn next_msg(
    recv: &mut FrameReader,
    conn: &quinn::Connection,
) -> Result<ServerMessage, Ended> {
    match recv.next::<ServerMessage>().await {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(closed_reason(conn).await),
        Err(e) => match conn.close_reason() {
            Some(_) => Err(closed_reason(conn).await),
            None => Err(Ended::Retry(format!("relay control stream: {e}"))),
        },
    }
}

async fn closed_reason(conn: &quinn::Connection) -> Ended {
    let e = conn.closed().await;
    match &e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            let code = c.error_code.into_inner();
            let reason = trust::explain(&e);
            if code == u64::from(codes::CLOSE_REPLACED) {
                Ended::Fatal(format!(
                    "{reason}: another porthole with the same token took over this tunnel"
                ))
            } else if code == u64::from(codes::CLOSE_REVOKED) {
                Ended::Fatal(format!("{reason} (ask the relay operator for a new token)"))
            } else if code == u64::from(codes::CLOSE_REFUSED) {
                Ended::Fatal(reason)
            } else if code == u64::from(codes::CLOSE_GOAWAY) {
                Ended::Now(reason)
            } else {
                Ended::Retry(reason)
            }
        }
        _ => Ended::Retry(format!("lost the relay: {}", trust::explain(&e))),
    }
}

/// Serves one connected session: accepts data streams, watches the control stream.
async fn serve(
    c: Connected,
    lane: Option<Arc<LaneConnector>>,
    forwarder: &Arc<Forwarder>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Ended {
    let Connected {
        conn,
        mut ctrl_send,
        mut ctrl_recv,
        map,
        ..
    } = c;
    let tunnels = map.clone();
    let accept = {
        let conn = conn.clone();
        let forwarder = forwarder.clone();
        let tracker = tracker.clone();
        let lane = lane.clone();
        tracker.clone().spawn(async move {
            let ceiling = TransportTuning::default().max_streams;
            let mut allowance = StreamAllowance::new(conn.clone(), INITIAL_STREAMS, ceiling);
            while let Ok((send, recv)) = conn.accept_bi().await {
                let f = forwarder.clone();
                let map = map.clone();
                let open = allowance.opened();
                // With a lane, the exchange's task can move to the bulk thread; without
                // one (PORTHOLE_BULK_LANE=off) it is spawned as any task.
                let bulk = lane.clone().map(|lane| {
                    lane.exchange_started();
                    BulkLane {
                        lane,
                        switch: Switch::new(),
                    }
                });
                let switch = bulk.as_ref().map(|b| b.switch.clone());
                let exchange = tracker.track_future(async move {
                    f.handle_stream(send, recv, map, bulk).await;
                    drop(open);
                });
                match switch {
                    Some(switch) => relay_server::lanes::spawn(switch, exchange),
                    None => {
                        tokio::spawn(exchange);
                    }
                }
            }
        })
    };
    let ended = loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                // Tell the relay we are leaving: it unbinds our names at once, so
                // new visitors get a clear 404 while in-flight exchanges finish.
                let _ = ctrl_send.finish();
                break Ended::Shutdown;
            }
            msg = ctrl_recv.next::<ServerMessage>() => match msg {
                Ok(Some(ServerMessage::GoAway { reason })) => break Ended::Now(format!("relay is draining: {reason}")),
                Ok(Some(ServerMessage::ExchangeRefused { tunnel_id, method, path, status, reason, visitor })) => {
                    if let Some(t) = tunnels.get(&tunnel_id) {
                        forwarder.record_refused(t, crate::forwarder::RefusedExchange { method, path, status, reason, visitor });
                    }
                }
                Ok(Some(other)) => tracing::debug!("ignoring control message {other:?}"),
                Ok(None) | Err(_) => break closed_reason(&conn).await,
            },
        }
    };
    if matches!(ended, Ended::Shutdown) {
        accept.abort();
        tracker.close();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await;
        conn.close(VarInt::from_u32(codes::CLOSE_NORMAL), b"client exiting");
    }
    drop(accept);
    if let Some(lane) = lane {
        lane.close();
    }
    ended
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 0..20 {
            let d = backoff(attempt);
            assert!(d <= Duration::from_secs(10), "{d:?}");
        }
        assert!(backoff(1) <= Duration::from_millis(400));
        assert!(backoff(10) >= Duration::from_secs(5));
    }

    #[test]
    fn relay_addresses_are_checked() {
        assert_eq!(
            split_host("relay.example.com:4443").unwrap(),
            ("relay.example.com".into(), 4443)
        );
        assert_eq!(split_host("[::1]:4443").unwrap(), ("::1".into(), 4443));
        assert!(split_host("relay.example.com").is_err());
        assert!(split_host(":4443").is_err());
    }
}

//! Client sessions: accepting QUIC connections, the control stream (hello, auth,
//! binds, goaway), and cleanup when a session ends or its token is revoked.
//!
//! A session never touches visitor traffic; [`crate::ingress`] opens data streams on the
//! connection that the registry names.

use std::sync::Arc;
use std::time::Duration;

use quinn::VarInt;
use shared_proto::{
    check_version, codes, ClientMessage, ErrorCode, ServerMessage, TunnelKind, TunnelName,
    TunnelOption, PROTOCOL_VERSION,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::policy::{EdgePolicy, Notices, PolicyError, TunnelEdge};
use crate::quic::{encode_head, FrameReader, StreamError};
use crate::registry::{Route, SessionId};
use crate::tokens::{Reservation, TokenName};
use crate::{Relay, SessionEntry};

/// Deadline for the QUIC handshake and the hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most tunnels one session may hold.
const MAX_TUNNELS_PER_SESSION: usize = 64;

/// Accepts client connections until `stop` fires.
pub(crate) async fn accept_loop(
    relay: Arc<Relay>,
    endpoint: quinn::Endpoint,
    stop: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            _ = stop.cancelled() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        let relay = relay.clone();
        let remote = incoming.remote_address();
        let connecting = match incoming.accept() {
            Ok(c) => c,
            Err(e) => {
                debug!(%remote, "refused connection: {e}");
                continue;
            }
        };
        // The connection's driver, spawned by `accept`: moved to the bulk thread if
        // the connection turns out to be a bulk lane.
        let driver = crate::lanes::last_spawned();
        tokio::spawn(async move {
            let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    debug!(%remote, "handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    debug!(%remote, "handshake timed out");
                    return;
                }
            };
            let id = relay.next_session_id();
            let span = tracing::info_span!("session", id = %id, %remote);
            run_session(relay, conn, id, driver).instrument(span).await;
        });
    }
}

/// Closes the sessions of revoked tokens, checking the token file every second.
pub(crate) async fn watch_revocations(relay: Arc<Relay>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        match relay.tokens.refresh() {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                warn!("reading tokens: {e}");
                continue;
            }
        }
        let revoked: Vec<(SessionId, SessionEntry)> = relay
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, e)| !relay.tokens.exists(&e.token))
            .map(|(id, e)| (*id, e.clone()))
            .collect();
        for (id, e) in revoked {
            info!(session = %id, token = %e.token, "token revoked: closing session");
            e.conn.close(
                VarInt::from_u32(codes::CLOSE_REVOKED),
                b"the token of this session was revoked",
            );
        }
    }
}

struct Control {
    send: quinn::SendStream,
    recv: FrameReader,
    /// The switch of the connection's driver: a bulk lane's moves to the bulk thread.
    driver: Option<Arc<crate::lanes::Switch>>,
}

impl Control {
    async fn send(&mut self, msg: &ServerMessage) -> Result<(), StreamError> {
        let bytes = encode_head(msg)?;
        self.send.write_chunk(bytes).await?;
        Ok(())
    }
}

/// Refuses a hello: tells the client why, then closes once it has read the answer (or
/// after a short grace period).
async fn refuse(conn: &quinn::Connection, mut ctrl: Control, code: ErrorCode, message: String) {
    let _ = ctrl
        .send(&ServerMessage::Refused {
            code,
            message: message.clone(),
        })
        .await;
    let _ = ctrl.send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(3), conn.closed()).await;
    conn.close(VarInt::from_u32(codes::CLOSE_REFUSED), message.as_bytes());
}

async fn run_session(
    relay: Arc<Relay>,
    conn: quinn::Connection,
    id: SessionId,
    driver: Option<Arc<crate::lanes::Switch>>,
) {
    let (send, recv) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        _ => {
            conn.close(
                VarInt::from_u32(codes::CLOSE_PROTOCOL),
                b"no control stream",
            );
            return;
        }
    };
    let mut ctrl = Control {
        send,
        recv: FrameReader::new(recv),
        driver,
    };
    let hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, ctrl.recv.next::<ClientMessage>()).await;
    let (version, token, agent) = match hello {
        Ok(Ok(Some(ClientMessage::Hello {
            version,
            token,
            agent,
        }))) => (version, token, agent),
        Ok(Err(StreamError::Invalid(e))) => {
            // The version is the first field of every hello; a frame we cannot parse
            // from a client that announced another version is a version problem.
            debug!("bad hello: {e}");
            conn.close(VarInt::from_u32(codes::CLOSE_PROTOCOL), b"malformed hello");
            return;
        }
        _ => {
            conn.close(VarInt::from_u32(codes::CLOSE_PROTOCOL), b"expected hello");
            return;
        }
    };
    if let Err(e) = check_version(version, PROTOCOL_VERSION) {
        relay
            .metrics
            .auth_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        info!(%agent, "refused: {e}");
        refuse(&conn, ctrl, ErrorCode::VersionMismatch, e.to_string()).await;
        return;
    }
    let source = conn.remote_address().ip();
    if let Some(wait) = relay
        .auth_throttle
        .blocked(source, std::time::Instant::now())
    {
        relay
            .metrics
            .auth_throttled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        info!(%agent, "refused: too many failed hellos from this address");
        refuse(
            &conn,
            ctrl,
            ErrorCode::Throttled,
            format!(
                "too many failed attempts from {source}; retry in {}s",
                wait.as_secs().max(1)
            ),
        )
        .await;
        return;
    }
    let token_name = match relay.tokens.authenticate(&token) {
        Ok(Some(t)) => t,
        Ok(None) => {
            relay.auth_throttle.fail(source, std::time::Instant::now());
            relay
                .metrics
                .auth_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            info!(%agent, "refused: unknown or revoked token");
            refuse(
                &conn,
                ctrl,
                ErrorCode::Unauthorized,
                "the relay does not know this token (check --token or PORTHOLE_TOKEN; it may have been revoked)".into(),
            )
            .await;
            return;
        }
        Err(e) => {
            warn!("token store: {e}");
            refuse(
                &conn,
                ctrl,
                ErrorCode::Other(500),
                "relay token store failed".into(),
            )
            .await;
            return;
        }
    };
    drop(token);
    if relay.draining.is_cancelled() {
        refuse(
            &conn,
            ctrl,
            ErrorCode::Draining,
            "relay is shutting down".into(),
        )
        .await;
        return;
    }
    let goaway = CancellationToken::new();
    relay
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            id,
            SessionEntry {
                token: token_name.clone(),
                conn: conn.clone(),
                goaway: goaway.clone(),
                tunnels: Default::default(),
            },
        );
    relay
        .metrics
        .sessions_total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    info!(token = %token_name, %agent, "session open");

    let mut bound: Vec<TunnelName> = Vec::new();
    let result = serve_control(
        &relay,
        &conn,
        id,
        &token_name,
        &mut ctrl,
        &mut bound,
        &goaway,
    )
    .await;
    match result {
        Ok(()) => {}
        Err(e) => debug!("control stream ended: {e}"),
    }
    for name in &bound {
        relay.registry.release(name, id);
    }
    relay
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    info!(reason = %conn.close_reason().map(|r| r.to_string()).unwrap_or_default(), "session closed");
}

async fn serve_control(
    relay: &Arc<Relay>,
    conn: &quinn::Connection,
    id: SessionId,
    token: &TokenName,
    ctrl: &mut Control,
    bound: &mut Vec<TunnelName>,
    goaway: &CancellationToken,
) -> Result<(), StreamError> {
    ctrl.send(&ServerMessage::Welcome {
        version: PROTOCOL_VERSION,
        session_id: id.0,
    })
    .await?;
    let mut told_goaway = false;
    // Refusal notices from the ingress for this session's tunnels; bounded, and the
    // ingress drops notices rather than wait when the client reads slowly.
    let (notice_tx, mut notice_rx) = tokio::sync::mpsc::channel::<Box<ServerMessage>>(256);
    loop {
        let msg = tokio::select! {
            m = ctrl.recv.next::<ClientMessage>() => m,
            Some(notice) = notice_rx.recv() => {
                ctrl.send(&notice).await?;
                continue;
            }
            _ = conn.closed() => return Ok(()),
            _ = goaway.cancelled(), if !told_goaway => {
                told_goaway = true;
                ctrl.send(&ServerMessage::GoAway { reason: "relay is shutting down".into() }).await?;
                continue;
            }
        };
        match msg? {
            None => {
                // The client finished its control stream: it is leaving. Free its names
                // at once (new visitors get a clear 404), and let its in-flight
                // exchanges finish before it closes the connection.
                for name in bound.drain(..) {
                    relay.registry.release(&name, id);
                }
                set_tunnel_count(relay, id, 0);
                let _ = tokio::time::timeout(crate::DRAIN_TIMEOUT, conn.closed()).await;
                conn.close(VarInt::from_u32(codes::CLOSE_NORMAL), b"bye");
                return Ok(());
            }
            Some(ClientMessage::Bind {
                name,
                kind,
                reserve,
                options,
            }) => {
                let answer = bind(
                    relay, conn, id, token, bound, name, kind, reserve, &options, &notice_tx,
                )
                .await;
                ctrl.send(&answer).await?;
            }
            Some(ClientMessage::Queue(op)) => {
                let json = crate::queue::handle_op(relay, token, op).await;
                ctrl.send(&ServerMessage::QueueReport { json }).await?;
            }
            Some(ClientMessage::Lane { session_id }) if bound.is_empty() => {
                let main = SessionId(session_id);
                let driver = ctrl.driver.take();
                crate::bulk::serve_lane(relay, conn, id, token, main, driver).await;
                return Ok(());
            }
            Some(ClientMessage::Hello { .. } | ClientMessage::Lane { .. }) => {
                conn.close(
                    VarInt::from_u32(codes::CLOSE_PROTOCOL),
                    b"unexpected message",
                );
                return Ok(());
            }
        }
    }
}

/// [`crate::tokens::TokenStore::claim`] on a blocking thread: a first reservation is a
/// SQLite commit (an fsync), and the runtime's one thread carries every tunnel's traffic.
async fn claim(
    relay: &Arc<Relay>,
    name: &TunnelName,
    token: &TokenName,
    reserve: bool,
) -> Result<Reservation, crate::tokens::TokenError> {
    let (r, n, t) = (relay.clone(), name.clone(), token.clone());
    tokio::task::spawn_blocking(move || r.tokens.claim(&n, &t, reserve))
        .await
        .unwrap_or(Err(crate::tokens::TokenError::Interrupted))
}

#[allow(clippy::too_many_arguments)]
async fn bind(
    relay: &Arc<Relay>,
    conn: &quinn::Connection,
    id: SessionId,
    token: &TokenName,
    bound: &mut Vec<TunnelName>,
    name: Option<String>,
    kind: TunnelKind,
    reserve: bool,
    options: &[TunnelOption],
    notices: &Notices,
) -> ServerMessage {
    let refused = |code, message: String| ServerMessage::BindRefused { code, message };
    if let Some(o) = options
        .iter()
        .find(|o| o.is_critical() && !shared_proto::options::is_known(o.tag))
    {
        return refused(
            ErrorCode::Other(501),
            format!(
                "this relay does not support tunnel option {:#06x}: upgrade the relay (porthole-relay)",
                o.tag
            ),
        );
    }
    let edge = match tunnel_edge(options, notices) {
        Ok(e) => Arc::new(e),
        Err(e) => return refused(ErrorCode::Other(400), e.to_string()),
    };
    let delivery = match crate::queue::delivery_option(options) {
        Ok(d) => d.unwrap_or_default(),
        Err(m) => return refused(ErrorCode::Other(400), m),
    };
    if bound.len() >= MAX_TUNNELS_PER_SESSION {
        return refused(
            ErrorCode::LimitExceeded,
            format!("a session may hold at most {MAX_TUNNELS_PER_SESSION} tunnels"),
        );
    }
    if relay.draining.is_cancelled() {
        return refused(ErrorCode::Draining, "relay is shutting down".into());
    }
    if let Some(max) = relay.cfg.limits_for(&token.0).tunnels {
        // Taking back a name this token already holds (a reconnect) adds no tunnel.
        let takeover = name
            .as_deref()
            .and_then(|n| relay.registry.lookup(&n.to_ascii_lowercase()))
            .is_some_and(|r| &r.token == token);
        let held: u64 = relay
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|e| &e.token == token)
            .map(|e| e.tunnels.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        if !takeover && held >= u64::from(max) {
            relay
                .metrics
                .limited_tunnels
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return refused(
                ErrorCode::LimitExceeded,
                format!("token {token} may hold at most {max} tunnels at once (it holds {held})"),
            );
        }
    }
    // Tunnel ids are indexes into this session's list, starting at 1.
    let tunnel_id = bound.len() as u32 + 1;
    let route = Route {
        session: id,
        token: token.clone(),
        tunnel_id,
        conn: conn.clone(),
        edge,
    };
    if kind == TunnelKind::Tcp {
        return bind_tcp(relay, token, bound, name, reserve, route).await;
    }
    let name = match name {
        Some(n) => {
            let name = match TunnelName::parse(&n) {
                Ok(n) => n,
                Err(e) => return refused(ErrorCode::NameInvalid, format!("{n:?}: {e}")),
            };
            match claim(relay, &name, token, reserve).await {
                Ok(Reservation::Granted) => {}
                Ok(Reservation::HeldBy(_)) => {
                    return refused(
                        ErrorCode::NameTaken,
                        format!("the name {name} is reserved by another token"),
                    )
                }
                Err(e) => {
                    warn!("reservation store: {e}");
                    return refused(
                        ErrorCode::Other(500),
                        "relay reservation store failed".into(),
                    );
                }
            }
            match relay.registry.bind(&name, route) {
                Ok(old) => {
                    if let Some(old) = old.filter(|o| o.session != id) {
                        info!(%name, old_session = %old.session, "same token reconnected: name taken over");
                        close_if_empty(relay, old.session);
                    }
                    name
                }
                Err(e) => return refused(ErrorCode::NameTaken, e.to_string()),
            }
        }
        None => {
            let mut chosen = None;
            for _ in 0..16 {
                let Ok(candidate) = TunnelName::parse(&crate::names::random_name()) else {
                    continue;
                };
                if !matches!(relay.tokens.reserved_by(&candidate), Ok(None)) {
                    continue;
                }
                if relay.registry.lookup(candidate.as_str()).is_some() {
                    continue;
                }
                if relay.registry.bind(&candidate, route.clone()).is_ok() {
                    chosen = Some(candidate);
                    break;
                }
            }
            match chosen {
                Some(n) => n,
                None => return refused(ErrorCode::Other(500), "could not find a free name".into()),
            }
        }
    };
    info!(%name, tunnel_id, "tunnel bound");
    relay.queue.on_bind(relay, name.as_str(), delivery);
    let url = relay.public_url(name.as_str());
    bound.push(name.clone());
    set_tunnel_count(relay, id, bound.len() as u64);
    ServerMessage::Bound {
        tunnel_id,
        name: name.to_string(),
        url,
    }
}

/// Binds a TCP tunnel: `name` is `tcp-PORT` for a requested port (reserved for the
/// token when `reserve`), or none for any free port in the relay's range.
async fn bind_tcp(
    relay: &Arc<Relay>,
    token: &TokenName,
    bound: &mut Vec<TunnelName>,
    name: Option<String>,
    reserve: bool,
    route: Route,
) -> ServerMessage {
    let refused = |code, message: String| ServerMessage::BindRefused { code, message };
    let wanted = match name.as_deref() {
        None => None,
        Some(n) => match crate::tcp::requested_port(n) {
            Some(p) => Some(p),
            None => {
                return refused(
                    ErrorCode::NameInvalid,
                    format!("a TCP tunnel asks for tcp-PORT, got {n:?}"),
                )
            }
        },
    };
    if let Some(port) = wanted {
        let Ok(name) = TunnelName::parse(&crate::tcp::port_name(port)) else {
            return refused(ErrorCode::NameInvalid, format!("bad port {port}"));
        };
        match claim(relay, &name, token, reserve).await {
            Ok(Reservation::Granted) => {}
            Ok(Reservation::HeldBy(_)) => {
                return refused(
                    ErrorCode::NameTaken,
                    format!("TCP port {port} is reserved by another token"),
                )
            }
            Err(e) => {
                warn!("reservation store: {e}");
                return refused(
                    ErrorCode::Other(500),
                    "relay reservation store failed".into(),
                );
            }
        }
    }
    let (tunnel_id, session) = (route.tunnel_id, route.session);
    let port = match relay.tcp.bind(wanted, route) {
        Ok(p) => p,
        Err(e @ crate::tcp::PortError::InUse(_)) => {
            return refused(ErrorCode::NameTaken, e.to_string())
        }
        // Nothing to retry: the relay offers no such port.
        Err(e @ (crate::tcp::PortError::Disabled | crate::tcp::PortError::OutOfRange(..))) => {
            return refused(ErrorCode::NameInvalid, e.to_string())
        }
        Err(e @ crate::tcp::PortError::Exhausted(..)) => {
            return refused(ErrorCode::Throttled, e.to_string())
        }
    };
    let name = crate::tcp::port_name(port);
    info!(%name, tunnel_id, "TCP tunnel bound");
    if let Ok(n) = TunnelName::parse(&name) {
        bound.push(n);
    }
    set_tunnel_count(relay, session, bound.len() as u64);
    ServerMessage::Bound {
        tunnel_id,
        url: format!("tcp://{}:{port}", relay.cfg.domain),
        name,
    }
}

fn set_tunnel_count(relay: &Relay, id: SessionId, n: u64) {
    if let Some(e) = relay
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
    {
        e.tunnels.store(n, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The edge rules a bind's options ask for.
fn tunnel_edge(options: &[TunnelOption], notices: &Notices) -> Result<TunnelEdge, PolicyError> {
    let tag = |o: &&TunnelOption| o.tag & !TunnelOption::CRITICAL;
    let policy = match options
        .iter()
        .find(|o| tag(o) == shared_proto::options::EDGE_POLICY)
    {
        Some(o) => Some(EdgePolicy::from_option_value(&o.value)?.compile()?),
        None => None,
    };
    let wants_notices = options
        .iter()
        .any(|o| tag(&o) == shared_proto::options::REFUSAL_NOTICES);
    Ok(TunnelEdge {
        policy,
        notices: wants_notices.then(|| notices.clone()),
    })
}

/// Closes a session that a newer session of the same token has replaced, once it holds
/// no name any more (it may hold other tunnels that nobody took over).
fn close_if_empty(relay: &Arc<Relay>, session: SessionId) {
    let entry = relay
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&session)
        .cloned();
    let Some(entry) = entry else { return };
    if !relay.registry.holds_session(session) {
        entry.conn.close(
            VarInt::from_u32(codes::CLOSE_REPLACED),
            b"replaced by a newer session of the same token",
        );
    }
}

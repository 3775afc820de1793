//! The client's side of the bulk lane (docs/streaming.md, "The bulk lane"): a second
//! QUIC connection to the relay, opened in the background with the session's token
//! when first needed, from a UDP socket of its own, whose packets, timers and driver
//! are all handled on the bulk thread ([`relay_server::lanes`]).
//! A response body of known length, at least [`relay_server::quic::BULK_AFTER`]
//! bytes, starts on its data stream; once other exchanges of the session run beside
//! it, the rest moves to a unidirectional stream of the lane and the exchange's task to
//! the bulk thread, so a big download does not take CPU time from the session's small
//! exchanges. A lone download stays where it is: handing work between threads costs a
//! third of its speed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use bytes::Bytes;
use quinn::VarInt;
use relay_server::lanes::Switch;
use relay_server::quic::{
    encode_head, pump_body_rerouted, FrameReader, GuardedSend, Reroute, StreamError,
};
use shared_proto::{codes, ClientMessage, LaneHead, Secret, ServerMessage, PROTOCOL_VERSION};

/// How long opening the lane may take before the body goes on its data stream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// After a failed attempt, bodies use their data streams this long before the next.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// Whether a session's lane can take a body now.
pub enum Lane {
    /// It can, on this connection.
    Up(quinn::Connection),
    /// It is being opened.
    NotYet,
    /// It could not be opened lately.
    Unavailable,
}

/// What a session's exchange needs to put its body on the bulk lane.
#[derive(Clone)]
pub struct BulkLane {
    /// The session's lane connection, opened on first use.
    pub lane: Arc<LaneConnector>,
    /// Moves the exchange's task to the bulk thread.
    pub switch: Arc<Switch>,
}

enum State {
    Closed,
    Connecting,
    Up(quinn::Connection),
    Failed(Instant),
}

/// Opens (once) and hands out a session's lane connection.
pub struct LaneConnector {
    config: quinn::ClientConfig,
    relay: SocketAddr,
    host: String,
    token: Secret,
    session_id: u64,
    state: std::sync::Mutex<State>,
    /// Exchanges the session has started: a body moves to the lane once this changes
    /// under it.
    started: AtomicU64,
}

impl LaneConnector {
    /// A connector for session `session_id` on the relay at `relay` (`host` names it
    /// for TLS), with the session's QUIC configuration and token.
    pub fn new(
        config: quinn::ClientConfig,
        relay: SocketAddr,
        host: String,
        token: Secret,
        session_id: u64,
    ) -> Self {
        Self {
            config,
            relay,
            host,
            token,
            session_id,
            state: std::sync::Mutex::new(State::Closed),
            started: AtomicU64::new(0),
        }
    }

    /// Counts an exchange of the session.
    pub fn exchange_started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lane's connection if it is up. If it is not, starts opening it in the
    /// background (unless that failed less than `RETRY_AFTER`, 30 s, ago) and answers
    /// `Lane::NotYet` or `Lane::Unavailable`; the body stays on its data stream
    /// meanwhile, so it never waits for a handshake.
    pub fn connection(self: &Arc<Self>) -> Lane {
        let mut state = self.state();
        match &*state {
            State::Up(c) if c.close_reason().is_none() => return Lane::Up(c.clone()),
            State::Connecting => return Lane::NotYet,
            State::Failed(at) if at.elapsed() < RETRY_AFTER => return Lane::Unavailable,
            _ => {}
        }
        *state = State::Connecting;
        let this = self.clone();
        // Opened from the bulk thread, the lane's socket, endpoint and connection
        // belong to its runtime: their packets and timers never wake the main thread.
        let on_bulk = Switch::new();
        on_bulk.to_bulk();
        relay_server::lanes::spawn(on_bulk, async move {
            let opened = tokio::time::timeout(CONNECT_TIMEOUT, this.open())
                .await
                .unwrap_or_else(|_| Err(anyhow!("no answer within {CONNECT_TIMEOUT:?}")));
            *this.state() = match opened {
                Ok(c) => {
                    tracing::debug!("bulk lane open");
                    State::Up(c)
                }
                Err(e) => {
                    tracing::debug!("bulk lane unavailable: {e:#}");
                    State::Failed(Instant::now())
                }
            };
        });
        Lane::NotYet
    }

    async fn open(&self) -> anyhow::Result<quinn::Connection> {
        // An endpoint of its own: the session's endpoint is the main thread's.
        let (endpoint, bind) = crate::session::client_endpoint(self.relay)?;
        let connecting = endpoint.connect_with(self.config.clone(), self.relay, &self.host)?;
        // quinn spawned the connection's driver in `connect_with`: the whole lane runs
        // on the bulk thread.
        if let Some(driver) = relay_server::lanes::last_spawned() {
            driver.to_bulk();
        }
        let conn = connecting.await?;
        let closed = conn.clone();
        crate::roam::spawn_rebind_on_sigusr1(
            endpoint,
            bind,
            "bulk lane's QUIC endpoint",
            async move {
                closed.closed().await;
            },
        );
        let (mut send, recv) = conn.open_bi().await?;
        let mut recv = FrameReader::new(recv);
        let hello = ClientMessage::Hello {
            version: PROTOCOL_VERSION,
            token: self.token.clone(),
            agent: format!("porthole/{} (bulk lane)", env!("CARGO_PKG_VERSION")),
        };
        send.write_chunk(encode_head(&hello)?).await?;
        match recv.next::<ServerMessage>().await? {
            Some(ServerMessage::Welcome { .. }) => {}
            other => bail!("relay refused the lane: {other:?}"),
        }
        let lane = ClientMessage::Lane {
            session_id: self.session_id,
        };
        send.write_chunk(encode_head(&lane)?).await?;
        let _ = send.finish();
        Ok(conn)
    }

    /// Closes the lane (the session it belongs to has ended).
    pub fn close(&self) {
        if let State::Up(c) = &*self.state() {
            c.close(VarInt::from_u32(codes::CLOSE_NORMAL), b"session ended");
        }
    }
}

/// Pumps a response body whose head was marked `lane`: onto the data stream `send`
/// until other exchanges of the session start, then (if the lane can be had) the rest
/// onto a stream of the lane, from the bulk thread. Answers the bytes pumped and the
/// stream the body ended on, to be finished by the caller.
pub async fn pump_body_laned<B>(
    body: B,
    send: GuardedSend,
    observe: impl FnMut(&Bytes),
    bulk: &BulkLane,
) -> Result<(u64, GuardedSend), StreamError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut to_lane = ToLane {
        bulk,
        started: bulk.lane.started.load(Ordering::Relaxed),
        may_move: true,
    };
    pump_body_rerouted(body, send, observe, &mut to_lane).await
}

/// Moves a body to the lane before its next chunk once the session has started another
/// exchange since the body began (`started` counts them).
struct ToLane<'a> {
    bulk: &'a BulkLane,
    started: u64,
    may_move: bool,
}

impl Reroute for ToLane<'_> {
    async fn reroute(&mut self, send: GuardedSend) -> Result<GuardedSend, StreamError> {
        if !self.may_move || self.bulk.lane.started.load(Ordering::Relaxed) == self.started {
            return Ok(send);
        }
        match self.bulk.lane.connection() {
            Lane::Up(conn) => {
                // Tried once: if no stream can be had, the body stays.
                self.may_move = false;
                match conn.open_uni().await {
                    Ok(lane) => move_to_lane(send, GuardedSend::new(lane), &self.bulk.switch).await,
                    Err(_) => Ok(send),
                }
            }
            Lane::Unavailable => {
                self.may_move = false;
                Ok(send)
            }
            // Asked again at the next chunk.
            Lane::NotYet => Ok(send),
        }
    }
}

/// Ends the data stream `data` short of its declared length and starts the body's
/// continuation on the lane with the [`LaneHead`] that names it; moves the task to the
/// bulk thread. Answers the stream the rest goes on.
async fn move_to_lane(
    mut data: GuardedSend,
    mut lane: GuardedSend,
    switch: &Switch,
) -> Result<GuardedSend, StreamError> {
    let stream_id = VarInt::from(data.stream().id()).into_inner();
    data.finish();
    if let Err(e) = lane.write(encode_head(&LaneHead { stream_id })?).await {
        lane.reset(codes::RESET_FAILED);
        return Err(e);
    }
    switch.to_bulk();
    Ok(lane)
}

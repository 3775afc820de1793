//! The client's side of the bulk lane (docs/streaming.md, "The bulk lane"): a second
//! QUIC connection to the relay, opened with the session's token on the first large
//! response, whose driver runs on the bulk thread ([`relay_server::lanes`]). A
//! response body of at least [`relay_server::quic::BULK_AFTER`] bytes goes on it, one
//! unidirectional stream each, so a big download does not take CPU time from the
//! small exchanges of the session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use quinn::VarInt;
use relay_server::lanes::Switch;
use relay_server::quic::{encode_head, FrameReader};
use shared_proto::{codes, ClientMessage, Secret, ServerMessage, PROTOCOL_VERSION};

/// How long opening the lane may take before the body goes on its data stream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// After a failed attempt, bodies use their data streams this long before the next.
const RETRY_AFTER: Duration = Duration::from_secs(30);

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
    Up(quinn::Connection),
    Failed(Instant),
}

/// Opens (once) and hands out a session's lane connection.
pub struct LaneConnector {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    relay: SocketAddr,
    host: String,
    token: Secret,
    session_id: u64,
    state: tokio::sync::Mutex<State>,
}

impl LaneConnector {
    /// A connector for session `session_id` on the relay at `relay` (`host` names it
    /// for TLS), with the session's QUIC configuration and token.
    pub fn new(
        endpoint: quinn::Endpoint,
        config: quinn::ClientConfig,
        relay: SocketAddr,
        host: String,
        token: Secret,
        session_id: u64,
    ) -> Self {
        Self {
            endpoint,
            config,
            relay,
            host,
            token,
            session_id,
            state: tokio::sync::Mutex::new(State::Closed),
        }
    }

    /// The lane's connection, opened now if need be; `None` if it cannot be had (the
    /// body then goes on its data stream, as without a lane).
    pub async fn connection(&self) -> Option<quinn::Connection> {
        let mut state = self.state.lock().await;
        match &*state {
            State::Up(c) if c.close_reason().is_none() => return Some(c.clone()),
            State::Failed(at) if at.elapsed() < RETRY_AFTER => return None,
            _ => {}
        }
        let opened = tokio::time::timeout(CONNECT_TIMEOUT, self.open())
            .await
            .unwrap_or_else(|_| Err(anyhow!("no answer within {CONNECT_TIMEOUT:?}")));
        match opened {
            Ok(c) => {
                tracing::debug!("bulk lane open");
                *state = State::Up(c.clone());
                Some(c)
            }
            Err(e) => {
                tracing::debug!("bulk lane unavailable: {e:#}");
                *state = State::Failed(Instant::now());
                None
            }
        }
    }

    async fn open(&self) -> anyhow::Result<quinn::Connection> {
        let connecting = self
            .endpoint
            .connect_with(self.config.clone(), self.relay, &self.host)?;
        // quinn spawned the connection's driver in `connect_with`: the whole lane runs
        // on the bulk thread.
        if let Some(driver) = relay_server::lanes::last_spawned() {
            driver.to_bulk();
        }
        let conn = connecting.await?;
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
        if let Ok(state) = self.state.try_lock() {
            if let State::Up(c) = &*state {
                c.close(VarInt::from_u32(codes::CLOSE_NORMAL), b"session ended");
            }
        }
    }
}

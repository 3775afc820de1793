//! The relay's side of bulk lanes (docs/streaming.md, "The bulk lane").
//!
//! A client may open a second QUIC connection for its session, authenticated with the
//! same token, and move large response bodies to it. A response head marked
//! [`shared_proto::ResponseHead::lane`] (it declares its length) says the body may do
//! so: its bytes come on the data stream until that stream's FIN, and if that is short
//! of the declared length, the rest comes on a unidirectional stream of the lane that
//! starts with a [`LaneHead`] naming the data stream. The client moves a body once
//! other exchanges of the session are running beside it, so a lone download keeps the
//! single-connection path. The lane's connection driver runs on the bulk thread
//! ([`crate::lanes`]), and so does an HTTP/1 visitor's connection while it writes the
//! rest of such a body.
//!
//! The continuation's stream and the data stream's FIN may arrive in either order;
//! [`LaneBodies`] pairs them up.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use quinn::{RecvStream, VarInt};
use shared_proto::{codes, LaneHead};
use tokio::sync::oneshot;
use tracing::{debug, info};

use crate::lanes::{BackToMain, Switch};
use crate::quic::{read_head, recv_body, StreamError, TunnelBody};
use crate::registry::SessionId;
use crate::tokens::TokenName;
use crate::Relay;

/// Unidirectional streams a lane may have open at once: bodies in flight.
const LANE_STREAMS: u32 = 256;
/// How long a body that arrived before its head (or whose exchange is gone) waits to
/// be claimed before it is stopped.
const UNCLAIMED_FOR: Duration = Duration::from_secs(10);
/// Deadline for a lane stream's first frame, and for a body's continuation to come
/// once its data stream has ended short.
const LANE_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

type Body = (RecvStream, Bytes);

enum Slot {
    /// An exchange has the head and waits for the body.
    Waiting(oneshot::Sender<Body>),
    /// The body came first.
    Arrived(Body, Instant),
}

/// Bodies on one session's lane, by the id of their exchange's data stream.
pub(crate) struct LaneBodies {
    slots: Mutex<HashMap<u64, Slot>>,
    /// The lane's connection.
    conn: quinn::Connection,
}

impl LaneBodies {
    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops bodies nobody claimed in time (dropping a stream stops it, so the
    /// client stops sending).
    fn purge(slots: &mut HashMap<u64, Slot>, now: Instant) {
        slots.retain(|_, s| match s {
            Slot::Waiting(tx) => !tx.is_closed(),
            Slot::Arrived(_, at) => now.duration_since(*at) < UNCLAIMED_FOR,
        });
    }

    fn arrive(&self, stream_id: u64, body: Body) {
        let mut slots = self.slots();
        match slots.remove(&stream_id) {
            Some(Slot::Waiting(tx)) => {
                // An exchange that gave up meanwhile drops the body: the stream stops.
                let _ = tx.send(body);
            }
            _ => {
                Self::purge(&mut slots, Instant::now());
                if slots.len() < LANE_STREAMS as usize * 2 {
                    slots.insert(stream_id, Slot::Arrived(body, Instant::now()));
                }
            }
        }
    }

    /// The body of the exchange on data stream `stream_id`, when it arrives.
    async fn take(&self, stream_id: u64) -> Option<Body> {
        let rx = {
            let mut slots = self.slots();
            match slots.remove(&stream_id) {
                Some(Slot::Arrived(body, _)) => return Some(body),
                _ => {
                    Self::purge(&mut slots, Instant::now());
                    let (tx, rx) = oneshot::channel();
                    slots.insert(stream_id, Slot::Waiting(tx));
                    rx
                }
            }
        };
        // An exchange dropped while waiting closes `rx`, and the next purge drops
        // its slot.
        rx.await.ok()
    }
}

/// The body of a response head marked `lane`: `main` (the data stream's bytes), then,
/// if that ended short of `declared` bytes, the rest from the session's lane. When the
/// rest comes from the lane, `visitor_lane` moves the visitor's connection (which
/// writes this body) to the bulk thread until the body is done.
pub(crate) fn continued_body(
    relay: &Arc<Relay>,
    conn: &quinn::Connection,
    data: quinn::StreamId,
    main: TunnelBody,
    declared: u64,
    visitor_lane: Option<Arc<Switch>>,
) -> TunnelBody {
    enum Part {
        Main(TunnelBody),
        Lane(TunnelBody),
        Done,
    }
    struct State {
        part: Part,
        seen: u64,
        declared: u64,
        relay: Arc<Relay>,
        conn: quinn::Connection,
        data: quinn::StreamId,
        visitor_lane: Option<Arc<Switch>>,
        /// Brings the visitor's connection back when the body is done or dropped.
        _back: Option<BackToMain>,
    }
    let state = State {
        part: Part::Main(main),
        seen: 0,
        declared,
        relay: relay.clone(),
        conn: conn.clone(),
        data,
        visitor_lane,
        _back: None,
    };
    let frames = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            let body = match &mut st.part {
                Part::Main(b) | Part::Lane(b) => b,
                Part::Done => return None,
            };
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(d) = frame.data_ref() {
                        st.seen += d.len() as u64;
                    }
                    return Some((Ok(frame), st));
                }
                Some(Err(e)) => {
                    st.part = Part::Done;
                    return Some((Err(e), st));
                }
                None if matches!(st.part, Part::Lane(_)) || st.seen >= st.declared => return None,
                None => {}
            }
            // The data stream ended short: the rest is on the lane.
            let rest =
                tokio::time::timeout(LANE_HEAD_TIMEOUT, lane_body(&st.relay, &st.conn, st.data))
                    .await
                    .unwrap_or_else(|_| {
                        Err(StreamError::Body(
                            "the rest of the body did not come on the bulk lane".into(),
                        ))
                    });
            match rest {
                Ok((recv, first)) => {
                    st.relay.metrics.lane_bodies.fetch_add(1, Ordering::Relaxed);
                    if let Some(s) = &st.visitor_lane {
                        s.to_bulk();
                        st._back = Some(BackToMain(s.clone()));
                    }
                    st.part = Part::Lane(recv_body(first, recv));
                }
                Err(e) => {
                    st.part = Part::Done;
                    return Some((Err(e), st));
                }
            }
        }
    });
    http_body_util::StreamBody::new(frames).boxed_unsync()
}

/// The rest of the body of the exchange on `data` (a data stream of `conn`), sent on
/// the session's lane. Fails if the session has no lane.
async fn lane_body(
    relay: &Relay,
    conn: &quinn::Connection,
    data: quinn::StreamId,
) -> Result<Body, StreamError> {
    let bodies = relay
        .lanes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&conn.stable_id())
        .cloned();
    let Some(bodies) = bodies else {
        return Err(StreamError::Body(
            "the client sent a body on a bulk lane it has not opened".into(),
        ));
    };
    bodies
        .take(VarInt::from(data).into_inner())
        .await
        .ok_or_else(|| StreamError::Body("the bulk lane closed before the body came".into()))
}

/// Serves connection `conn` (session `id`, token `token`) as the bulk lane of session
/// `main`, until either connection ends. `driver` moves the connection's driver to
/// the bulk thread.
pub(crate) async fn serve_lane(
    relay: &Arc<Relay>,
    conn: &quinn::Connection,
    id: SessionId,
    token: &TokenName,
    main: SessionId,
    driver: Option<Arc<Switch>>,
) {
    let main_conn = {
        let mut sessions = relay.sessions.lock().unwrap_or_else(|p| p.into_inner());
        // A lane is not a session of its own (not listed, not counted as one).
        sessions.remove(&id);
        sessions
            .get(&main)
            .filter(|e| e.token == *token)
            .map(|e| e.conn.clone())
    };
    let Some(main_conn) = main_conn else {
        debug!(%main, "bulk lane for an unknown session");
        conn.close(
            VarInt::from_u32(codes::CLOSE_PROTOCOL),
            b"no such session for this token",
        );
        return;
    };
    if let Some(d) = driver {
        d.to_bulk();
    }
    let key = main_conn.stable_id();
    let bodies = Arc::new(LaneBodies {
        slots: Mutex::default(),
        conn: conn.clone(),
    });
    let older = relay
        .lanes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, bodies.clone());
    // One lane per session: a newer one replaces it (a client opens one per session,
    // so more would only hold connections open).
    if let Some(older) = older {
        older.conn.close(
            VarInt::from_u32(codes::CLOSE_NORMAL),
            b"replaced by a newer lane",
        );
    }
    conn.set_max_concurrent_uni_streams(VarInt::from_u32(LANE_STREAMS));
    info!(%main, "bulk lane open");
    loop {
        let mut recv = tokio::select! {
            _ = main_conn.closed() => break,
            s = conn.accept_uni() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let bodies = bodies.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(LANE_HEAD_TIMEOUT, read_head::<LaneHead>(&mut recv)).await {
                Ok(Ok((head, first))) => bodies.arrive(head.stream_id, (recv, first)),
                _ => {
                    let _ = recv.stop(VarInt::from_u32(codes::RESET_FAILED));
                }
            }
        });
    }
    {
        let mut lanes = relay.lanes.lock().unwrap_or_else(|p| p.into_inner());
        if lanes.get(&key).is_some_and(|b| Arc::ptr_eq(b, &bodies)) {
            lanes.remove(&key);
        }
    }
    conn.close(VarInt::from_u32(codes::CLOSE_NORMAL), b"session ended");
}

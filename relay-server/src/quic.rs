//! QUIC plumbing shared by the relay and the client: transport tuning, endpoint
//! sockets, and data-stream I/O (head frames, streamed bodies, reset-on-drop).
//!
//! This module moves bytes; it knows nothing of tunnels, tokens or HTTP semantics.
//! Body bytes travel as `Bytes` chunks end to end (`read_chunk` / `write_chunk`), so a
//! body is never copied or collected here.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{stream, FutureExt};
use http_body::Frame as BodyFrame;
use http_body_util::{BodyExt, StreamBody};
use quinn::{RecvStream, SendStream, VarInt};
use shared_proto::{codes, BodyChunk, DecodeError, Frame};

/// Errors reading or writing a data stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The peer sent bytes that are not a valid frame.
    #[error("peer sent an invalid frame: {0}")]
    Invalid(#[from] shared_proto::Invalid),
    /// The stream ended before a whole head frame arrived.
    #[error("stream ended before its head frame")]
    Truncated,
    /// Reading failed (reset, connection lost).
    #[error("reading stream: {0}")]
    Read(#[from] quinn::ReadError),
    /// Writing failed (stopped, connection lost).
    #[error("writing stream: {0}")]
    Write(#[from] quinn::WriteError),
    /// A message could not be encoded (a field over a protocol limit).
    #[error("encoding frame: {0}")]
    Encode(#[from] shared_proto::EncodeError),
    /// A body carried by a stream failed.
    #[error("body: {0}")]
    Body(String),
}

/// In-flight exchanges one session can always carry (see
/// [`TransportTuning::max_streams`]).
pub const GUARANTEED_STREAMS: u32 = 10_000;

/// Streams a client may open toward the relay at once. It opens one, the control
/// stream; every data stream is opened by the relay. quinn keeps state for every
/// stream the peer may open, allocated up front (about 70 bytes each), so the
/// client's 10,000 here cost the relay ~700 KiB per idle session.
pub const CLIENT_OPENED_STREAMS: u32 = 4;

/// Data streams a client first lets the relay open at once; [`StreamAllowance`] raises
/// the limit as exchanges pile up, up to the default [`TransportTuning::max_streams`].
pub const INITIAL_STREAMS: u32 = 256;

/// How many data streams the relay may open at once, raised as they are used.
///
/// quinn keeps an entry for every stream the peer may open, in hash tables it updates
/// whenever a stream opens or closes: allowing all 11,430 from the start cost the client
/// 1.3 MiB of heap at idle. The limit starts at [`INITIAL_STREAMS`] and is quadrupled whenever
/// half of it is in use, so a burst waits at most a round trip per step (three steps to
/// the ceiling). It never shrinks.
#[derive(Debug)]
pub struct StreamAllowance {
    conn: quinn::Connection,
    limit: u32,
    ceiling: u32,
    open: Arc<AtomicU32>,
}

/// One accepted data stream, counted against the allowance until dropped.
#[derive(Debug)]
pub struct OpenStream(Arc<AtomicU32>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl StreamAllowance {
    /// The allowance of a connection whose transport allowed `initial` streams.
    pub fn new(conn: quinn::Connection, initial: u32, ceiling: u32) -> Self {
        Self {
            conn,
            limit: initial,
            ceiling,
            open: Arc::default(),
        }
    }

    /// Counts a stream just accepted, raising the limit if half of it is now in use.
    pub fn opened(&mut self) -> OpenStream {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        if open.saturating_mul(2) >= self.limit && self.limit < self.ceiling {
            self.limit = self.limit.saturating_mul(4).min(self.ceiling);
            self.conn
                .set_max_concurrent_bi_streams(VarInt::from_u32(self.limit));
        }
        OpenStream(self.open.clone())
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }
}

/// The largest UDP payload either side sends or accepts: the ceiling of path MTU
/// discovery (quinn's default ceiling is 1,452, Ethernet's).
///
/// A QUIC transfer's CPU goes mostly per packet (header protection, AEAD set-up,
/// acknowledgement tracking, a GSO segment), so where the path carries bigger packets
/// (loopback, jumbo-frame LANs) fewer, larger packets are cheaper: on loopback, 6,550
/// against 1,452 gave 12% more requests/s at c=64 with 13% less CPU per request, a
/// 100 MiB download 40% faster, and a 100 MB/s download took 16% instead of 22% of a
/// core (paired runs). The value is the largest at which a full GSO batch (quinn sends
/// up to 10 segments per `sendmsg`) still fits one UDP datagram, 65,507 bytes over
/// IPv4: at 9,000 the kernel refused whole batches, quinn took that for a black hole
/// and fell back to 1,200 bytes. On an Ethernet path the probes above 1,452 are lost
/// and discovery settles where quinn's default would have, a few round trips later;
/// until then, and after any black hole, packets are 1,200 bytes.
pub const MAX_UDP_PAYLOAD: u16 = 6_550;

/// The congestion window a connection starts with: four packets of
/// [`MAX_UDP_PAYLOAD`] (quinn's default is 14,720 bytes, ten 1,472-byte packets).
///
/// quinn counts the packet it is about to send as a full-size one, and discovery keeps
/// a probe of up to [`MAX_UDP_PAYLOAD`] in flight during the first round trips. With
/// the default window, one probe and one full-size packet filled it: the relay's answer
/// to a bind waited for the probe's acknowledgement, and a client that exited at once
/// could not send its CONNECTION_CLOSE at all (quinn holds it behind the window while
/// stream data is pending), so the relay kept its names until the idle timeout.
pub const INITIAL_WINDOW: u64 = 4 * MAX_UDP_PAYLOAD as u64;

/// A QUIC endpoint of either side on `socket` (from [`udp_socket`]): a server with
/// `server`, else a client only; datagrams up to [`MAX_UDP_PAYLOAD`] either way. Its
/// connections' drivers can move to the bulk lane ([`crate::lanes`]).
pub fn endpoint(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    let mut cfg = quinn::EndpointConfig::default();
    cfg.max_udp_payload_size(MAX_UDP_PAYLOAD)
        .expect("MAX_UDP_PAYLOAD is within QUIC's 1,200..=65,527");
    quinn::Endpoint::new(cfg, server, socket, Arc::new(crate::lanes::LanedRuntime))
}

/// How the QUIC transport is tuned, in one place for both sides: the client uses the
/// defaults; the relay the same but for [`CLIENT_OPENED_STREAMS`].
#[derive(Debug, Clone)]
pub struct TransportTuning {
    /// Concurrent data streams the peer may open (quinn's default of 100 would cap a
    /// tunnel at 100 in-flight requests). quinn hands closed streams' slots back to the
    /// peer only once an eighth of this many are free, so the peer can count on 7/8 of
    /// it at any moment: the default keeps that at 10,000 in-flight requests.
    pub max_streams: u32,
    /// Per-stream receive window. It bounds how much of one bulk transfer can sit in
    /// flight (and in the receiver's UDP queue) ahead of small exchanges on the same
    /// connection: 1 MiB keeps their p99 near idle during a 1 GiB download, where 4 MiB
    /// made it 4× worse, and still allows ~20 MB/s per stream at 50 ms RTT
    /// (docs/streaming.md).
    pub stream_window: u32,
    /// Per-connection receive window, shared by all streams.
    pub connection_window: u32,
    /// Session closes after this long without any packet from the peer.
    pub idle_timeout: Duration,
    /// Keep-alive interval (sent when idle), keeping NAT mappings and liveness fresh.
    pub keep_alive: Duration,
    /// Ack-eliciting packets the peer may receive before it must acknowledge them.
    /// quinn's default (1) acknowledges every second packet, so a 4 KiB webhook (four
    /// packets) drew an acknowledgement of its own before the response; at 10, the
    /// acknowledgements ride on the response and on the next request, and an exchange
    /// is one datagram each way (bench: CPU per exchange at c=1 down 12%).
    pub ack_threshold: u32,
    /// Longest the peer may hold an acknowledgement back (asked for with the same
    /// extension; quinn's floor is 1 ms, its default 25 ms). It bounds how long a lost
    /// packet goes unnoticed when nothing follows it: the probe timeout is the RTT plus
    /// its variance plus this delay, so a lost webhook or response was resent after
    /// about 26 ms on a fast path. At 1 ms, with 0.5% of packets dropped each way between
    /// relay and client (`scripts/lossy-link.sh`), small-POST p99 fell from 51–53 ms to
    /// 4–5 ms and 2.6× as many requests completed, with bulk downloads as fast; on
    /// loopback without loss nothing moved (exchanges answered within 1 ms still carry
    /// their acknowledgement in the response).
    pub max_ack_delay: Duration,
    /// The RTT assumed before the first sample (quinn's default is RFC 9002's 333 ms).
    /// A lost handshake packet is resent after three times this: a client starting on
    /// a lossy link waited about 1 s for its URL whenever a handshake packet was lost.
    /// At 100 ms, with 5% of packets dropped each way, time to URL over 30 starts fell
    /// from a mean of 108–121 ms (p90 0.12–1.0 s, max 1.0–2.3 s) to 17–50 ms (max 0.31
    /// s). On a path slower than 300 ms the first handshake packet may be sent twice; the
    /// first sample replaces the guess.
    pub initial_rtt: Duration,
}

impl Default for TransportTuning {
    fn default() -> Self {
        Self {
            max_streams: GUARANTEED_STREAMS + GUARANTEED_STREAMS / 7 + 1,
            stream_window: 1024 * 1024,
            connection_window: 32 * 1024 * 1024,
            // A client that vanishes (killed, lid shut) is noticed within this bound,
            // so its visitors get a 502 quickly instead of a hang.
            // QUIC restarts the idle timer when it sends after receiving, so the
            // bound seen by a visitor is about idle_timeout + keep_alive: under 5 s.
            idle_timeout: Duration::from_secs(3),
            keep_alive: Duration::from_millis(750),
            ack_threshold: 10,
            max_ack_delay: Duration::from_millis(1),
            initial_rtt: Duration::from_millis(100),
        }
    }
}

impl TransportTuning {
    /// The quinn transport configuration for these numbers.
    pub fn transport_config(&self) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        t.max_concurrent_bidi_streams(VarInt::from_u32(self.max_streams))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .stream_receive_window(VarInt::from_u32(self.stream_window))
            .receive_window(VarInt::from_u32(self.connection_window))
            .send_window(u64::from(self.connection_window))
            .keep_alive_interval(Some(self.keep_alive))
            .datagram_receive_buffer_size(None);
        // Both ends are quinn, which speaks the ACK frequency extension: ask the peer to
        // acknowledge only every `ack_threshold`+1 packets, or `max_ack_delay` after the
        // first unacknowledged one. Out-of-order packets are still acknowledged at once
        // (quinn's reordering threshold of 2), so loss is detected as quickly as before.
        let mut ack = quinn::AckFrequencyConfig::default();
        ack.ack_eliciting_threshold(VarInt::from_u32(self.ack_threshold))
            .max_ack_delay(Some(self.max_ack_delay));
        t.ack_frequency_config(Some(ack));
        // Streams of one priority are sent in the order they were written, not round
        // robin: an exchange's head and body leave together instead of being interleaved
        // with 63 others' (bench, c=64: 5% less CPU per request). A bulk body drops to a
        // lower priority after BULK_AFTER, so it cannot hold small exchanges back; two
        // concurrent 500 MB downloads through one tunnel still finished together.
        t.send_fairness(false);
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(MAX_UDP_PAYLOAD);
        t.mtu_discovery_config(Some(mtu));
        let mut cubic = quinn::congestion::CubicConfig::default();
        cubic.initial_window(INITIAL_WINDOW);
        t.congestion_controller_factory(Arc::new(cubic));
        t.initial_rtt(self.initial_rtt);
        // The idle timeout fits quinn's VarInt range (checked in tests for the default).
        if let Ok(idle) = quinn::IdleTimeout::try_from(self.idle_timeout) {
            t.max_idle_timeout(Some(idle));
        }
        t
    }
}

/// A UDP socket for a QUIC endpoint with large kernel buffers, so bursts of packets are
/// not dropped before quinn reads them. Failing to enlarge the buffers is not an error.
pub fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Best effort: dual-stack where the OS allows it.
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(8 * 1024 * 1024);
    let _ = socket.set_send_buffer_size(8 * 1024 * 1024);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Reads one head frame from the front of a stream. Answers the message and whatever
/// body bytes arrived in the same chunks after it.
pub async fn read_head<T: Frame>(recv: &mut RecvStream) -> Result<(T, Bytes), StreamError> {
    let mut buf = BytesMut::new();
    loop {
        match T::decode(&buf) {
            Ok((msg, used)) => {
                let rest = buf.split_off(used).freeze();
                return Ok((msg, rest));
            }
            Err(DecodeError::Invalid(e)) => return Err(e.into()),
            Err(DecodeError::Incomplete) => {}
        }
        match recv.read_chunk(usize::MAX, true).await? {
            Some(chunk) => {
                if buf.is_empty() {
                    // Common case: the whole frame is in the first chunk; the split
                    // above is then a cheap refcount operation.
                    buf = BytesMut::from(chunk.bytes);
                } else {
                    buf.extend_from_slice(&chunk.bytes);
                }
            }
            None => return Err(StreamError::Truncated),
        }
    }
}

/// Reads a sequence of frames from one stream (the control stream).
#[derive(Debug)]
pub struct FrameReader {
    recv: RecvStream,
    buf: BytesMut,
}

impl FrameReader {
    /// Reads frames from `recv`.
    pub fn new(recv: RecvStream) -> Self {
        Self {
            recv,
            buf: BytesMut::new(),
        }
    }

    /// The next frame, or `None` when the peer finished the stream cleanly between
    /// frames. Cancel-safe: bytes read so far stay buffered.
    pub async fn next<T: Frame>(&mut self) -> Result<Option<T>, StreamError> {
        loop {
            match T::decode(&self.buf) {
                Ok((msg, used)) => {
                    let _ = self.buf.split_to(used);
                    return Ok(Some(msg));
                }
                Err(DecodeError::Invalid(e)) => return Err(e.into()),
                Err(DecodeError::Incomplete) => {}
            }
            match self.recv.read_chunk(usize::MAX, true).await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(StreamError::Truncated),
            }
        }
    }
}

/// Encodes a head frame into one chunk, ready for `write_chunk`.
pub fn encode_head<T: Frame>(msg: &T) -> Result<Bytes, StreamError> {
    let mut buf = BytesMut::with_capacity(msg.encoded_len_hint());
    msg.encode(&mut buf)?;
    Ok(buf.freeze())
}

/// A boxed body whose errors are strings, used for bodies crossing the tunnel.
pub type TunnelBody = http_body_util::combinators::UnsyncBoxBody<Bytes, StreamError>;

/// A body that yields `first` (bytes read along with the head frame) and then the rest of
/// the stream until FIN. A reset or lost connection surfaces as a body error, so hyper
/// aborts the message instead of presenting a truncated one as complete.
///
/// After each read the stream is checked, without waiting, for its end: hyper stops
/// polling a body once its Content-Length is written, and quinn answers a stream dropped
/// before its FIN was read with STOP_SENDING, one extra packet per exchange.
pub fn recv_body(first: Bytes, recv: RecvStream) -> TunnelBody {
    struct State {
        /// Read but not yet yielded: `first`, or what the check for the end found.
        ready: Option<Result<Bytes, StreamError>>,
        /// `None` once the stream has ended (or failed).
        recv: Option<RecvStream>,
    }
    let state = State {
        ready: (!first.is_empty()).then_some(Ok(first)),
        recv: Some(recv),
    };
    let s = stream::unfold(state, |mut st| async move {
        let item = match st.ready.take() {
            Some(item) => item,
            None => match read_coalesced(st.recv.as_mut()?).await {
                Ok(Some(bytes)) => Ok(bytes),
                Ok(None) => return None,
                Err(e) => Err(StreamError::Read(e)),
            },
        };
        match (&item, st.recv.as_mut()) {
            (Ok(_), Some(r)) => match read_coalesced(r).now_or_never() {
                Some(Ok(None)) => st.recv = None,
                Some(Ok(Some(more))) => st.ready = Some(Ok(more)),
                Some(Err(e)) => st.ready = Some(Err(StreamError::Read(e))),
                None => {}
            },
            (Err(_), _) => st.recv = None,
            (Ok(_), None) => {}
        }
        Some((item.map(BodyFrame::data), st))
    });
    StreamBody::new(s).boxed_unsync()
}

/// A body read from a framed data stream ([`shared_proto::BodyChunk`] frames after a
/// framed [`shared_proto::ResponseHead`]): data frames become body data, a trailers
/// frame becomes the body's trailers. `first` holds bytes read along with the head.
pub fn framed_body(first: Bytes, recv: RecvStream) -> TunnelBody {
    struct State {
        buf: BytesMut,
        recv: Option<RecvStream>,
    }
    let state = State {
        buf: BytesMut::from(first),
        recv: Some(recv),
    };
    let s = stream::unfold(state, |mut st| async move {
        let recv = st.recv.as_mut()?;
        loop {
            match BodyChunk::decode(&st.buf) {
                Ok((chunk, used)) => {
                    let _ = st.buf.split_to(used);
                    let frame = match chunk {
                        BodyChunk::Data(b) => BodyFrame::data(b),
                        BodyChunk::Trailers(fields) => {
                            // The trailers end the body: take the FIN if it is here
                            // already, so dropping the stream draws no STOP_SENDING.
                            let _ = recv.read_chunk(usize::MAX, true).now_or_never();
                            st.recv = None;
                            BodyFrame::trailers(fields)
                        }
                    };
                    return Some((Ok(frame), st));
                }
                Err(DecodeError::Invalid(e)) => {
                    st.recv = None;
                    return Some((Err(StreamError::Invalid(e)), st));
                }
                Err(DecodeError::Incomplete) => {}
            }
            match recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => st.buf.extend_from_slice(&chunk.bytes),
                Ok(None) if st.buf.is_empty() => return None,
                Ok(None) => {
                    st.recv = None;
                    return Some((Err(StreamError::Truncated), st));
                }
                Err(e) => {
                    st.recv = None;
                    return Some((Err(StreamError::Read(e)), st));
                }
            }
        }
    });
    StreamBody::new(s).boxed_unsync()
}

/// Copies a body into a send stream as [`BodyChunk`] frames (data split at
/// [`shared_proto::MAX_CHUNK_DATA`], trailers as the last frame), showing each data
/// chunk to `observe`; hands the stream back unfinished. On failure the stream is reset.
pub async fn pump_body_framed<B>(
    body: B,
    mut send: GuardedSend,
    mut observe: impl FnMut(&Bytes),
) -> Result<(u64, GuardedSend), StreamError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut body = std::pin::pin!(body);
    let mut total = 0u64;
    loop {
        let chunks: Vec<BodyChunk> = match body.frame().await {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    total += data.len() as u64;
                    observe(&data);
                    let mut out = Vec::new();
                    while !data.is_empty() {
                        let n = data.len().min(shared_proto::MAX_CHUNK_DATA);
                        out.push(BodyChunk::Data(data.split_to(n)));
                    }
                    out
                }
                Err(frame) => match frame.into_trailers() {
                    Ok(t) => vec![BodyChunk::Trailers(t)],
                    Err(_) => Vec::new(),
                },
            },
            Some(Err(e)) => {
                send.reset(codes::RESET_FAILED);
                return Err(StreamError::Body(e.to_string()));
            }
        };
        for chunk in chunks {
            let written = match encode_head(&chunk) {
                Ok(bytes) => send.write(bytes).await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                send.reset(codes::RESET_FAILED);
                return Err(e);
            }
        }
    }
    Ok((total, send))
}

/// Chunks taken from quinn per read: one lock of the connection state instead of one per
/// received packet.
const CHUNKS_PER_READ: usize = 32;

/// Reads whatever the stream has ready (at least one chunk, waiting if needed) as one
/// buffer. A bulk transfer arrives as ~1.2 KB packet-sized chunks; handing each to the
/// visitor's socket separately costs a frame, a wake-up and often a syscall per packet,
/// so ready chunks are joined (one copy, far cheaper than the per-chunk overhead).
async fn read_coalesced(recv: &mut RecvStream) -> Result<Option<Bytes>, quinn::ReadError> {
    let mut bufs: [Bytes; CHUNKS_PER_READ] = Default::default();
    match recv.read_chunks(&mut bufs).await? {
        None => Ok(None),
        Some(0) => Ok(Some(Bytes::new())),
        Some(1) => Ok(Some(std::mem::take(&mut bufs[0]))),
        Some(n) => {
            let total = bufs[..n].iter().map(Bytes::len).sum();
            let mut joined = BytesMut::with_capacity(total);
            for b in &bufs[..n] {
                joined.extend_from_slice(b);
            }
            Ok(Some(joined.freeze()))
        }
    }
}

/// A send stream that is reset (not silently finished) if dropped before
/// [`GuardedSend::finish`]: quinn finishes a dropped stream cleanly, which would present
/// a truncated body to the peer as complete.
#[derive(Debug)]
pub struct GuardedSend {
    inner: Option<SendStream>,
}

impl GuardedSend {
    /// Guards `send`.
    pub fn new(send: SendStream) -> Self {
        Self { inner: Some(send) }
    }

    /// The guarded stream.
    pub fn stream(&mut self) -> &mut SendStream {
        // The option is only emptied by `finish`/`reset`, which consume `self`.
        self.inner
            .as_mut()
            .expect("stream present until finish or reset")
    }

    /// Writes one chunk.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StreamError> {
        Ok(self.stream().write_chunk(chunk).await?)
    }

    /// Finishes the stream: the peer sees a clean end.
    pub fn finish(mut self) {
        if let Some(mut s) = self.inner.take() {
            let _ = s.finish();
        }
    }

    /// Finishes the stream and hands back what is needed to wait until the peer has
    /// acknowledged every byte ([`Delivery::wait`]).
    pub fn finish_tracked(mut self) -> Delivery {
        let mut stream = self.inner.take();
        if let Some(s) = stream.as_mut() {
            let _ = s.finish();
        }
        Delivery {
            stream,
            finished: std::time::Instant::now(),
        }
    }

    /// Resets the stream with `code`.
    pub fn reset(mut self, code: u32) {
        if let Some(mut s) = self.inner.take() {
            let _ = s.reset(VarInt::from_u32(code));
        }
    }
}

/// A finished stream whose delivery can be awaited.
#[derive(Debug)]
pub struct Delivery {
    stream: Option<SendStream>,
    finished: std::time::Instant,
}

impl Delivery {
    /// When the stream was finished: its last byte was handed to QUIC then.
    pub fn finished_at(&self) -> std::time::Instant {
        self.finished
    }

    /// Waits (at most `limit`) until the peer has acknowledged every byte: closing a
    /// connection right after `finish` would discard data still in flight, so a
    /// draining side waits here first. The acknowledgement may come up to the peer's
    /// max_ack_delay ([`TransportTuning::max_ack_delay`]) after the last byte, so nothing
    /// a user sees (a recorded exchange, its duration) should wait for it.
    pub async fn wait(self, limit: std::time::Duration) {
        if let Some(s) = self.stream {
            let _ = tokio::time::timeout(limit, s.stopped()).await;
        }
    }
}

impl Drop for GuardedSend {
    fn drop(&mut self) {
        if let Some(mut s) = self.inner.take() {
            let _ = s.reset(VarInt::from_u32(codes::RESET_CANCELLED));
        }
    }
}

/// Copies a body into a send stream chunk by chunk, with backpressure from QUIC flow
/// control, then finishes it. On any failure the stream is reset. Answers the bytes
/// carried.
pub async fn pump_body<B>(body: B, send: GuardedSend) -> Result<u64, StreamError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let (total, send) = pump_body_observed(body, send, |_| {}).await?;
    send.finish();
    Ok(total)
}

/// Copies a body like [`pump_body`], showing each chunk to `observe` before it is sent
/// (for capture), and hands the stream back unfinished so the caller chooses how to
/// finish it.
pub async fn pump_body_observed<B>(
    body: B,
    send: GuardedSend,
    observe: impl FnMut(&Bytes),
) -> Result<(u64, GuardedSend), StreamError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    pump_body_rerouted(body, send, observe, &mut Stay).await
}

/// Where the rest of a body goes, asked before each of its chunks by
/// [`pump_body_rerouted`].
pub trait Reroute {
    /// The stream for the next chunk and the rest: `send` itself, or another stream the
    /// body has moved to (the client's bulk lane).
    fn reroute(
        &mut self,
        send: GuardedSend,
    ) -> impl std::future::Future<Output = Result<GuardedSend, StreamError>> + Send;
}

/// Keeps a body on its stream.
struct Stay;

impl Reroute for Stay {
    async fn reroute(&mut self, send: GuardedSend) -> Result<GuardedSend, StreamError> {
        Ok(send)
    }
}

/// Copies a body like [`pump_body_observed`], asking `reroute` before each chunk which
/// stream the chunk and the rest go on.
pub async fn pump_body_rerouted<B>(
    body: B,
    mut send: GuardedSend,
    mut observe: impl FnMut(&Bytes),
    reroute: &mut impl Reroute,
) -> Result<(u64, GuardedSend), StreamError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut body = std::pin::pin!(body);
    let mut total = 0u64;
    loop {
        let data = match body.frame().await {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
            Some(Err(e)) => {
                send.reset(codes::RESET_FAILED);
                return Err(StreamError::Body(e.to_string()));
            }
        };
        send = reroute.reroute(send).await?;
        mark_bulk_past(&mut send, total, data.len());
        total += data.len() as u64;
        observe(&data);
        if let Err(e) = send.write(data).await {
            send.reset(codes::RESET_FAILED);
            return Err(e);
        }
    }
    Ok((total, send))
}

/// Bytes after which a body counts as a bulk transfer and its stream yields to the
/// others: small exchanges sharing the connection are sent first (head-of-line).
pub const BULK_AFTER: u64 = 1024 * 1024;

/// Drops a body's stream to the bulk priority when its next chunk, of `len` bytes after
/// `sent`, takes it past [`BULK_AFTER`].
fn mark_bulk_past(send: &mut GuardedSend, sent: u64, len: usize) {
    if sent < BULK_AFTER && sent + len as u64 >= BULK_AFTER {
        // Lower than the default 0 of every new stream; failure means the stream is
        // gone, which the next write reports.
        let _ = send.stream().set_priority(-1);
    }
}

/// The rustls-backed QUIC server configuration for the relay's identity.
pub fn server_config(
    tls: rustls::ServerConfig,
    tuning: &TransportTuning,
) -> anyhow::Result<quinn::ServerConfig> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(Arc::new(tuning.transport_config()));
    // Clients may roam (new address, same connection): accept migration.
    cfg.migration(true);
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_tuning_builds_a_transport() {
        let t = TransportTuning::default();
        // What the peer can count on while quinn holds back up to an eighth of the
        // window before announcing freed slots.
        assert!(t.max_streams - t.max_streams / 8 >= GUARANTEED_STREAMS);
        assert!(quinn::IdleTimeout::try_from(t.idle_timeout).is_ok());
        let _ = t.transport_config();
    }

    /// A client and a relay-side endpoint connected over loopback, the relay with its
    /// own self-signed identity.
    async fn connected() -> (quinn::Endpoint, quinn::Connection, quinn::Connection) {
        connected_with(TransportTuning::default()).await
    }

    async fn connected_with(
        client_tuning: TransportTuning,
    ) -> (quinn::Endpoint, quinn::Connection, quinn::Connection) {
        let dir = tempfile::tempdir().unwrap();
        let identity = crate::tls::Identity::load_or_create(dir.path(), "localhost").unwrap();
        let tuning = TransportTuning::default();
        let tls = identity.server_config(&[b"test"]).unwrap();
        let server_cfg = server_config(tls, &tuning).unwrap();
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let server = endpoint(udp_socket(loopback).unwrap(), Some(server_cfg)).unwrap();

        let mut roots = rustls::RootCertStore::empty();
        roots.add(identity.certs[0].clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        crypto.alpn_protocols = vec![b"test".to_vec()];
        let mut client_cfg = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap(),
        ));
        client_cfg.transport_config(Arc::new(client_tuning.transport_config()));
        let mut client = endpoint(udp_socket(loopback).unwrap(), None).unwrap();
        client.set_default_client_config(client_cfg);

        let addr = server.local_addr().unwrap();
        let (relay_side, conn) = tokio::join!(
            async { server.accept().await.unwrap().await.unwrap() },
            async { client.connect(addr, "localhost").unwrap().await.unwrap() }
        );
        (client, conn, relay_side)
    }

    /// On loopback, path MTU discovery climbs past Ethernet's 1,452 bytes to
    /// [`MAX_UDP_PAYLOAD`], and a bulk transfer at that size keeps it: a full GSO batch of
    /// such packets still fits one datagram (at 9,000 bytes the kernel refused batches,
    /// which quinn took for a black hole, falling back to 1,200).
    #[tokio::test]
    async fn loopback_carries_the_largest_packets_through_a_bulk_transfer() {
        let (_client, conn, relay_side) = connected().await;
        // quinn probes when it has nothing else to send: right after the handshake.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while conn.stats().path.current_mtu < MAX_UDP_PAYLOAD {
            assert!(
                tokio::time::Instant::now() < deadline,
                "path MTU stuck at {}",
                conn.stats().path.current_mtu
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        let size = 16 * 1024 * 1024;
        let reading = tokio::spawn(async move {
            let (_send, mut recv) = relay_side.accept_bi().await.unwrap();
            recv.read_to_end(size + 1).await.unwrap().len()
        });
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(&vec![7u8; size]).await.unwrap();
        send.finish().unwrap();
        let got = tokio::time::timeout(Duration::from_secs(30), reading)
            .await
            .expect("the transfer finished in time")
            .unwrap();
        assert_eq!(got, size);

        let path = conn.stats().path;
        assert_eq!(path.black_holes_detected, 0);
        assert_eq!(path.current_mtu, MAX_UDP_PAYLOAD);
    }

    /// A client that starts by allowing few streams still takes every exchange the relay
    /// opens at once: its allowance grows as they pile up.
    #[tokio::test]
    async fn a_growing_allowance_takes_more_streams_than_it_started_with() {
        let initial = 8;
        let held = 100;
        let (_client, conn, relay_side) = connected_with(TransportTuning {
            max_streams: initial,
            ..TransportTuning::default()
        })
        .await;
        let accepting = tokio::spawn(async move {
            let mut allowance = StreamAllowance::new(conn.clone(), initial, 1000);
            let mut streams = Vec::new();
            while streams.len() < held {
                let (send, recv) = conn.accept_bi().await.unwrap();
                streams.push((send, recv, allowance.opened()));
            }
            (allowance.limit(), streams)
        });
        // Every stream is held open: without a raised limit the ninth open would wait
        // forever.
        let mut opened = Vec::new();
        for _ in 0..held {
            let (mut send, recv) =
                tokio::time::timeout(Duration::from_secs(10), relay_side.open_bi())
                    .await
                    .expect("the client's allowance grew in time")
                    .unwrap();
            // quinn announces a stream to the peer only when it carries data.
            send.write_all(b"x").await.unwrap();
            opened.push((send, recv));
        }
        let (limit, streams) = tokio::time::timeout(Duration::from_secs(10), accepting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(streams.len(), held);
        assert_eq!(
            limit, 512,
            "8 -> 32 -> 128 -> 512, each step at half in use"
        );
    }

    /// hyper stops polling a body once its Content-Length is written and drops it; the
    /// sender must still see its stream read to the end, not stopped (quinn answers a
    /// stream dropped before its FIN was read with STOP_SENDING, a packet per exchange).
    #[tokio::test]
    async fn a_body_taken_to_its_last_byte_counts_as_read_to_the_end() {
        let (_client, conn, relay_side) = connected().await;
        // A response as the client sends it: head frame, body and FIN in one write.
        let head = shared_proto::ResponseHead {
            status: 200,
            headers: http::HeaderMap::from_iter([(
                http::header::CONTENT_LENGTH,
                http::HeaderValue::from(11),
            )]),
            framed: false,
            lane: false,
        };
        let mut bytes = BytesMut::from(&encode_head(&head).unwrap()[..]);
        bytes.extend_from_slice(b"{\"ok\":true}");
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(&bytes).await.unwrap();
        send.finish().unwrap();

        // The relay's side, as for a visitor's response: the head, then the body until
        // its Content-Length, where hyper stops.
        let (_relay_send, mut recv) = relay_side.accept_bi().await.unwrap();
        let (got_head, first) = read_head::<shared_proto::ResponseHead>(&mut recv)
            .await
            .unwrap();
        assert_eq!(got_head, head);
        let mut body = recv_body(first, recv);
        let mut got = Vec::new();
        while got.len() < 11 {
            let frame = body.frame().await.unwrap().unwrap();
            got.extend_from_slice(&frame.into_data().unwrap());
        }
        assert_eq!(got, b"{\"ok\":true}");
        drop(body);
        assert_no_stop_sending(&conn, &relay_side).await;
    }

    /// Asserts that the relay side has sent no STOP_SENDING, after one more exchange so
    /// that anything a dropped stream queued has gone out by then.
    async fn assert_no_stop_sending(conn: &quinn::Connection, relay_side: &quinn::Connection) {
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(b"next").await.unwrap();
        send.finish().unwrap();
        let (_relay_send, mut recv) = relay_side.accept_bi().await.unwrap();
        assert_eq!(recv.read_to_end(16).await.unwrap(), b"next");
        assert_eq!(
            relay_side.stats().frame_tx.stop_sending,
            0,
            "a stream was stopped instead of read to its end"
        );
    }

    /// The same for a framed body (gRPC): its trailers frame ends it.
    #[tokio::test]
    async fn a_framed_body_taken_to_its_trailers_counts_as_read_to_the_end() {
        let (_client, conn, relay_side) = connected().await;
        let mut bytes = BytesMut::new();
        for chunk in [
            BodyChunk::Data(Bytes::from_static(b"reply")),
            BodyChunk::Trailers(http::HeaderMap::from_iter([(
                http::HeaderName::from_static("grpc-status"),
                http::HeaderValue::from(0),
            )])),
        ] {
            bytes.extend_from_slice(&encode_head(&chunk).unwrap());
        }
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(&bytes).await.unwrap();
        send.finish().unwrap();

        let (_relay_send, recv) = relay_side.accept_bi().await.unwrap();
        let mut body = framed_body(Bytes::new(), recv);
        let data = body.frame().await.unwrap().unwrap();
        assert_eq!(data.into_data().unwrap(), "reply");
        let trailers = body
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_trailers()
            .unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        drop(body);
        assert_no_stop_sending(&conn, &relay_side).await;
    }
}

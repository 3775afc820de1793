//! HTTP/1.1 upgrades (WebSocket and any other `Upgrade` protocol) and raw byte
//! streams: which requests are upgrades, which headers they keep, and the splice that
//! carries raw bytes both ways between a socket (or an upgraded connection) and a data
//! stream. Shared by the relay (visitor side) and the client (target side); TCP
//! tunnels use the same splice.
//!
//! Half-close is carried both ways: EOF read from the socket finishes the QUIC send
//! side, and the peer's FIN shuts down the socket's write side. Any failure resets the
//! stream (never a silent FIN), so the far end sees an abort, not a clean end.

use bytes::BytesMut;
use http::header::{HeaderMap, HeaderValue, CONNECTION, UPGRADE};
use quinn::{RecvStream, VarInt};
use shared_proto::codes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::quic::{GuardedSend, StreamError};

/// Largest chunk read from a socket before it is sent on the stream.
const CHUNK: usize = 64 * 1024;

/// The protocol an HTTP/1.1 request asks to upgrade to (`websocket`), when it is an
/// upgrade request: `Connection` names `upgrade` and `Upgrade` is present. `h2c` is not
/// carried (the relay speaks HTTP/2 to visitors itself).
pub fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let proto = headers.get(UPGRADE)?;
    if !asks || proto.as_bytes().eq_ignore_ascii_case(b"h2c") {
        return None;
    }
    Some(proto.clone())
}

/// Puts back the two headers that make a message an upgrade, after hop-by-hop headers
/// were stripped: `Connection: upgrade` and `Upgrade: PROTO`.
pub fn restore_upgrade(headers: &mut HeaderMap, proto: HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, proto);
}

/// Bytes carried by a finished splice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spliced {
    /// From the socket onto the stream.
    pub sent: u64,
    /// From the stream onto the socket.
    pub received: u64,
}

/// Carries raw bytes both ways between `io` and a data stream until both directions
/// have ended (EOF on the socket and FIN on the stream), with half-close. `first` is
/// whatever stream bytes were read along with a head frame. On failure the stream is
/// reset and stopped.
pub async fn splice<IO>(
    io: IO,
    first: bytes::Bytes,
    send: GuardedSend,
    mut recv: RecvStream,
) -> Result<Spliced, StreamError>
where
    IO: AsyncRead + AsyncWrite + Send,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let up = async move {
        let mut send = send;
        let mut total = 0u64;
        let mut buf = BytesMut::with_capacity(CHUNK);
        loop {
            if buf.capacity() < CHUNK / 4 {
                buf.reserve(CHUNK);
            }
            let n = rd
                .read_buf(&mut buf)
                .await
                .map_err(|e| StreamError::Body(format!("reading socket: {e}")))?;
            if n == 0 {
                send.finish();
                return Ok::<u64, StreamError>(total);
            }
            total += n as u64;
            // Dropping `send` on an error resets the stream.
            send.write(buf.split().freeze()).await?;
        }
    };
    let down = async {
        let mut total = 0u64;
        let io_err = |e: std::io::Error| StreamError::Body(format!("writing socket: {e}"));
        if !first.is_empty() {
            total += first.len() as u64;
            wr.write_all(&first).await.map_err(io_err)?;
        }
        loop {
            match recv.read_chunk(CHUNK, true).await {
                Ok(Some(chunk)) => {
                    total += chunk.bytes.len() as u64;
                    wr.write_all(&chunk.bytes).await.map_err(io_err)?;
                }
                Ok(None) => break,
                Err(e) => return Err(StreamError::Read(e)),
            }
        }
        // The peer finished: half-close the socket, keep reading from it.
        let _ = wr.shutdown().await;
        Ok::<u64, StreamError>(total)
    };
    let result = tokio::try_join!(up, down);
    if result.is_err() {
        let _ = recv.stop(VarInt::from_u32(codes::RESET_FAILED));
    }
    let (sent, received) = result?;
    Ok(Spliced { sent, received })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn upgrades_are_recognised() {
        let ws = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(requested_upgrade(&ws).unwrap(), "websocket");
        assert!(requested_upgrade(&map(&[("upgrade", "websocket")])).is_none());
        assert!(requested_upgrade(&map(&[("connection", "upgrade")])).is_none());
        assert!(
            requested_upgrade(&map(&[("connection", "upgrade"), ("upgrade", "h2c")])).is_none()
        );
    }

    #[test]
    fn upgrade_headers_survive_stripping_when_restored() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        let proto = requested_upgrade(&h).unwrap();
        crate::headers::strip_hop_by_hop(&mut h);
        restore_upgrade(&mut h, proto);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["sec-websocket-key"], "k");
    }
}

//! Cheap HTTP bodies shared by the target server and the bench client.
//!
//! Bulk transfers must not be limited by the harness itself, so a [`RepeatBody`] hands out
//! slices of one static buffer: no allocation and no copy per chunk.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};

/// Size of the chunks a [`RepeatBody`] yields.
pub const CHUNK_SIZE: usize = 256 * 1024;

static CHUNK: [u8; CHUNK_SIZE] = [b'x'; CHUNK_SIZE];

/// A body of `len` bytes of `x`, streamed in [`CHUNK_SIZE`] slices of a static buffer.
#[derive(Debug, Clone)]
pub struct RepeatBody {
    remaining: u64,
}

impl RepeatBody {
    /// A body that yields exactly `len` bytes.
    pub fn new(len: u64) -> Self {
        Self { remaining: len }
    }
}

impl Body for RepeatBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(CHUNK_SIZE as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Body type used for every request and response the harness produces itself.
pub type BenchBody = Either<Full<Bytes>, RepeatBody>;

/// A small in-memory body.
pub fn full(data: impl Into<Bytes>) -> BenchBody {
    Either::Left(Full::new(data.into()))
}

/// A streamed body of `len` bytes.
pub fn repeat(len: u64) -> BenchBody {
    Either::Right(RepeatBody::new(len))
}

/// The 4 KiB JSON webhook payload used by the latency and throughput scenarios.
///
/// Shaped like a payment provider's event; exactly 4096 bytes, no `]]` (it is embedded in
/// a Lua long string for wrk).
pub fn webhook_payload() -> String {
    const SIZE: usize = 4096;
    let head = r#"{"id":"evt_1PbenchPortholeWebhook","object":"event","type":"payment_intent.succeeded","api_version":"2024-06-20","created":1718000000,"livemode":false,"data":{"object":{"id":"pi_3PbenchPortholeIntent","amount":4200,"currency":"eur","status":"succeeded","metadata":{"order":"bench-0001"},"description":""#;
    let tail = r#""}}}"#;
    let pad = SIZE - head.len() - tail.len();
    let filler: String = "lorem ipsum dolor sit amet "
        .chars()
        .cycle()
        .take(pad)
        .collect();
    let s = format!("{head}{filler}{tail}");
    debug_assert_eq!(s.len(), SIZE);
    s
}

//! The UDP socket under every QUIC endpoint, the relay's and the client's.
//!
//! quinn's own tokio socket registers for readability and writability. A UDP socket
//! on Linux signals writability again each time the kernel frees a sent datagram, so
//! every send costs a second wake-up of the runtime, one that finds nothing to do.
//! This socket registers for readability only. Writability is asked for only after a
//! send found the socket's buffer full: a duplicate of the descriptor is registered
//! for it, for as long as a sender waits.
//!
//! quinn offers 32 buffers to every read, and the socket prepares a message header
//! for each. A read here mostly finds one or two datagrams, and each buffer takes a
//! whole GRO batch (up to 64 KiB of packets from one sender), so reads take at most
//! [`RECV_BATCH`].

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Most datagrams read by one system call.
const RECV_BATCH: usize = 8;

/// A non-blocking UDP socket registered for readability only.
#[derive(Debug)]
pub(crate) struct Socket {
    io: AsyncFd<std::net::UdpSocket>,
    state: UdpSocketState,
    /// Set when a send found the buffer full, cleared when one goes through: until
    /// then, senders wait for writability before trying.
    full: AtomicBool,
}

impl Socket {
    /// Wraps `sock` (made non-blocking here) for a tokio runtime; must be called on one.
    pub(crate) fn new(sock: std::net::UdpSocket) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        Ok(Self {
            state: UdpSocketState::new((&sock).into())?,
            io: register(sock, Interest::READABLE)?,
            full: AtomicBool::new(false),
        })
    }
}

impl quinn::AsyncUdpSocket for Socket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        Box::pin(Writable {
            socket: self,
            waiting: None,
        })
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let sent = self.state.send(self.io.get_ref().into(), transmit);
        let full = matches!(&sent, Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        if full != self.full.load(Ordering::Relaxed) {
            self.full.store(full, Ordering::Relaxed);
        }
        sent
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let n = bufs.len().min(meta.len()).min(RECV_BATCH);
        loop {
            let mut guard = ready!(self.io.poll_read_ready(cx))?;
            match guard.try_io(|io| {
                self.state
                    .recv(io.get_ref().into(), &mut bufs[..n], &mut meta[..n])
            }) {
                Ok(Ok(read)) => {
                    // Fewer datagrams than asked for: the queue was empty when the
                    // read returned, so the next read would only fail with WouldBlock.
                    // Clearing readiness saves that system call; a datagram that came
                    // after this read's readiness event has raised a newer one, which
                    // tokio keeps.
                    if read < n {
                        guard.clear_ready();
                    }
                    return Poll::Ready(Ok(read));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Not readable after all: readiness is cleared, wait again.
                Err(_would_block) => continue,
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.io.get_ref().local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }
}

/// Registers `io` with the runtime for `interest` alone.
///
/// tokio deprecates its safe constructors for any `T`, because a `T` could change the
/// descriptor it owns while registered; the safe alternative is an `unsafe fn`, and
/// this workspace forbids unsafe code. The two types registered here own their
/// descriptor for life and never swap it, the soundness condition the unsafe
/// constructor states.
#[allow(deprecated)]
fn register<T: std::os::fd::AsRawFd>(io: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    AsyncFd::with_interest(io, interest)
}

/// One sender's wait for writability (quinn asks before every send).
#[derive(Debug)]
struct Writable {
    socket: Arc<Socket>,
    /// A duplicate of the socket's descriptor registered for writability, while this
    /// sender waits.
    waiting: Option<AsyncFd<OwnedFd>>,
}

impl quinn::UdpPoller for Writable {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.socket.full.load(Ordering::Relaxed) {
            this.waiting = None;
            return Poll::Ready(Ok(()));
        }
        let waiting = match &mut this.waiting {
            Some(w) => w,
            None => {
                let dup = this.socket.io.get_ref().as_fd().try_clone_to_owned()?;
                this.waiting.insert(register(dup, Interest::WRITABLE)?)
            }
        };
        // Registration reports a socket that is writable already at once.
        let writable = ready!(waiting.poll_write_ready(cx)).map(|_guard| ());
        this.waiting = None;
        this.socket.full.store(false, Ordering::Relaxed);
        Poll::Ready(writable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::AsyncUdpSocket;

    fn transmit(to: std::net::SocketAddr, payload: &[u8]) -> Transmit<'_> {
        Transmit {
            destination: to,
            ecn: None,
            contents: payload,
            segment_size: None,
            src_ip: None,
        }
    }

    /// A socket on an ephemeral loopback port.
    fn bound() -> Arc<Socket> {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        Arc::new(Socket::new(sock).unwrap())
    }

    /// One read of `socket` into 2 KiB slices of `buf`: each datagram's sender and bytes.
    async fn read(
        socket: &Socket,
        buf: &mut [u8],
        missing: &str,
    ) -> Vec<(std::net::SocketAddr, Vec<u8>)> {
        let mut bufs: Vec<IoSliceMut<'_>> = buf.chunks_mut(2048).map(IoSliceMut::new).collect();
        let mut meta = vec![RecvMeta::default(); bufs.len()];
        let read = std::future::poll_fn(|cx| socket.poll_recv(cx, &mut bufs, &mut meta));
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect(missing)
            .unwrap();
        meta[..n]
            .iter()
            .zip(&bufs)
            .map(|(m, b)| (m.addr, b[..m.len].to_vec()))
            .collect()
    }

    /// Datagrams go out and come in, at most [`RECV_BATCH`] per read.
    #[tokio::test]
    async fn sends_and_receives_in_short_batches() {
        let (a, b) = (bound(), bound());
        let to = b.local_addr().unwrap();
        let mut poller = a.clone().create_io_poller();
        let count = RECV_BATCH * 3;
        for i in 0..count {
            std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx))
                .await
                .unwrap();
            a.try_send(&transmit(to, &[i as u8; 100])).unwrap();
        }
        let mut buf = vec![0u8; 2048 * 32];
        let mut got = Vec::new();
        while got.len() < count {
            let datagrams = read(&b, &mut buf, "a datagram never arrived").await;
            assert!(
                (1..=RECV_BATCH).contains(&datagrams.len()),
                "{} datagrams in one read",
                datagrams.len()
            );
            for (from, payload) in datagrams {
                assert_eq!(payload.len(), 100);
                assert_eq!(from, a.local_addr().unwrap());
                got.push(payload[0]);
            }
        }
        assert_eq!(got, (0..count).map(|i| i as u8).collect::<Vec<_>>());
    }

    /// A read that finds fewer datagrams than it asked for clears readiness without a
    /// second read; each datagram sent after that still wakes the reader.
    #[tokio::test]
    async fn a_short_read_misses_no_later_datagram() {
        let (a, b) = (bound(), bound());
        let to = b.local_addr().unwrap();
        let mut buf = vec![0u8; 2048 * RECV_BATCH];
        for i in 0..50u8 {
            a.try_send(&transmit(to, &[i; 10])).unwrap();
            let datagrams = read(
                &b,
                &mut buf,
                "a datagram sent after a short read never woke the reader",
            )
            .await;
            assert_eq!(datagrams, vec![(a.local_addr().unwrap(), vec![i; 10])]);
        }
    }

    /// A sender that found the buffer full waits on a registration for writability,
    /// which a writable socket answers at once; a send that goes through lifts the
    /// wait for every sender. (On loopback the kernel frees a datagram as it is sent,
    /// so a full buffer is set here by hand.)
    #[tokio::test]
    async fn a_full_buffer_is_waited_out() {
        let a = bound();
        let to = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut poller = a.clone().create_io_poller();
        a.full.store(true, Ordering::Relaxed);
        let wait = std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx));
        tokio::time::timeout(std::time::Duration::from_secs(10), wait)
            .await
            .expect("a writable socket kept its sender waiting")
            .unwrap();
        assert!(!a.full.load(Ordering::Relaxed));
        a.full.store(true, Ordering::Relaxed);
        a.try_send(&transmit(to, b"x")).unwrap();
        assert!(!a.full.load(Ordering::Relaxed));
    }
}

//! The tokio runtime both binaries run on (the client's local mode runs a relay in it).

use tokio::runtime::{Builder, Runtime};

/// I/O events one scheduler tick takes from epoll (tokio's default: 1,024).
///
/// On one thread, every task woken by one batch of events runs before the QUIC
/// connection's driver, which those tasks woke when they wrote into their streams: 64
/// visitors' requests were all read before the first left for the client, and the
/// stages of a busy tunnel (relay, client, target) took turns instead of overlapping.
/// Smaller batches send sooner: at c=64 on 2 cores, 16 served 2–5% more requests/s
/// than 1,024 at the same or lower CPU per request (median of paired rounds; in 8
/// interleaved rounds every pair favoured 16; 4 and 8 gained less).
pub const IO_EVENTS_PER_TICK: usize = 16;

/// One thread by default; `threads` > 1 asks for a multi-threaded runtime.
///
/// Every exchange crosses one QUIC connection, which one task drives, so a second
/// worker mostly adds hand-offs: on a 2-core machine a multi-threaded relay woke its
/// other worker twice per exchange (futex and eventfd). One thread cut the relay's CPU
/// per exchange at c=64 from 21 to 15 µs and c=1 p50 by about 40 µs, at equal or better
/// requests/s (bench target with two threads, 6 interleaved rounds). More threads
/// spread visitor connections and TLS handshakes over cores, for a relay whose
/// visitors outgrow one.
pub fn build(threads: Option<usize>) -> std::io::Result<Runtime> {
    match threads {
        Some(n) if n > 1 => Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        _ => Builder::new_current_thread()
            .enable_all()
            .max_io_events_per_tick(IO_EVENTS_PER_TICK)
            .build(),
    }
}

/// `pow`, the one function of the system's libm that anything in either binary calls:
/// tokio's multi-threaded scheduler averages its poll times with `f64::powf`. Defined
/// here (the `libm` crate's port of musl's), the binaries need no `libm.so` at all.
/// Loading it cost every process about 0.3 MiB of resident memory for nothing it ran:
/// the dynamic loader runs the CPU-feature selectors of all of libm's functions, which
/// are spread over its code, and the kernel maps 64 KiB around each. Should another
/// libm function be called one day, the linker takes the system's libm back, and
/// `binaries_load_no_libm` in tests/tests/linking.rs says so.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // `no_mangle` alone: the body is safe Rust.
#[no_mangle]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

//! The admin endpoint: `/healthz` (process up), `/readyz` (accepting, not draining) and
//! Prometheus `/metrics`. Bind it to a private address.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{Relay, LATENCY_BUCKETS};

/// Serves admin requests on `listener` until `stop` fires.
pub(crate) async fn serve(relay: Arc<Relay>, listener: TcpListener, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
        };
        let relay = relay.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let relay = relay.clone();
                    async move { Ok::<_, Infallible>(answer(&relay, req.uri().path())) }
                });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn answer(relay: &Relay, path: &str) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
        "/readyz" if relay.draining.is_cancelled() => {
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_owned())
        }
        "/readyz" => (StatusCode::OK, "ready\n".to_owned()),
        "/metrics" => (StatusCode::OK, render_metrics(relay)),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}

/// The metrics in Prometheus text format.
pub fn render_metrics(relay: &Relay) -> String {
    let m = relay.metrics();
    let mut out = String::new();
    let sessions = relay
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .len();
    let _ = writeln!(
        out,
        "# HELP porthole_sessions Client sessions connected now."
    );
    let _ = writeln!(out, "# TYPE porthole_sessions gauge");
    let _ = writeln!(out, "porthole_sessions {sessions}");
    let _ = writeln!(out, "# HELP porthole_tunnels Tunnel names bound now.");
    let _ = writeln!(out, "# TYPE porthole_tunnels gauge");
    let _ = writeln!(out, "porthole_tunnels {}", relay.registry.len());
    let _ = writeln!(
        out,
        "# HELP porthole_sessions_total Sessions accepted since start."
    );
    let _ = writeln!(out, "# TYPE porthole_sessions_total counter");
    let _ = writeln!(
        out,
        "porthole_sessions_total {}",
        m.sessions_total.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP porthole_auth_failures_total Refused client hellos."
    );
    let _ = writeln!(out, "# TYPE porthole_auth_failures_total counter");
    let _ = writeln!(
        out,
        "porthole_auth_failures_total {}",
        m.auth_failures.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP porthole_requests_total Visitor requests answered, by status class."
    );
    let _ = writeln!(out, "# TYPE porthole_requests_total counter");
    for (class, c) in m.responses.iter().enumerate().skip(1) {
        let _ = writeln!(
            out,
            "porthole_requests_total{{status=\"{class}xx\"}} {}",
            c.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP porthole_edge_refusals_total Visitor requests refused at the edge, by reason."
    );
    let _ = writeln!(out, "# TYPE porthole_edge_refusals_total counter");
    for (kind, c) in crate::policy::REFUSAL_KINDS.iter().zip(&m.edge_refusals) {
        let _ = writeln!(
            out,
            "porthole_edge_refusals_total{{reason=\"{kind}\"}} {}",
            c.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP porthole_requests_in_flight Exchanges in flight now."
    );
    let _ = writeln!(out, "# TYPE porthole_requests_in_flight gauge");
    let _ = writeln!(
        out,
        "porthole_requests_in_flight {}",
        m.in_flight.load(Ordering::Relaxed)
    );
    let counters: [(&str, &str, &AtomicU64); 5] = [
        (
            "porthole_requests_no_tunnel_total",
            "Visitor requests for a name with no tunnel online (404).",
            &m.no_tunnel,
        ),
        (
            "porthole_bytes_in_total",
            "Request body bytes carried from visitors into tunnels.",
            &m.bytes_in,
        ),
        (
            "porthole_bytes_out_total",
            "Response body bytes carried from tunnels to visitors.",
            &m.bytes_out,
        ),
        (
            "porthole_bulk_lane_bodies_total",
            "Response bodies carried on a session's bulk lane (large downloads).",
            &m.lane_bodies,
        ),
        (
            "porthole_auth_throttled_total",
            "Client hellos refused because their address failed authentication too often.",
            &m.auth_throttled,
        ),
    ];
    for (name, help, c) in counters {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name} {}", c.load(Ordering::Relaxed));
    }
    let _ = writeln!(
        out,
        "# HELP porthole_limited_total Requests (429) and binds refused by per-token limits."
    );
    let _ = writeln!(out, "# TYPE porthole_limited_total counter");
    for (limit, c) in [
        ("requests_per_second", &m.limited_rate),
        ("bandwidth", &m.limited_bandwidth),
        ("tunnels", &m.limited_tunnels),
    ] {
        let _ = writeln!(
            out,
            "porthole_limited_total{{limit=\"{limit}\"}} {}",
            c.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP porthole_exchange_duration_seconds Time from a visitor request to the response head from the tunnel."
    );
    let _ = writeln!(out, "# TYPE porthole_exchange_duration_seconds histogram");
    let mut cumulative = 0u64;
    for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
        cumulative += m.latency[i].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "porthole_exchange_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
        );
    }
    cumulative += m.latency[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "porthole_exchange_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
    );
    let _ = writeln!(
        out,
        "porthole_exchange_duration_seconds_sum {}",
        m.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(out, "porthole_exchange_duration_seconds_count {cumulative}");
    let _ = writeln!(
        out,
        "# HELP porthole_queue_depth Webhooks waiting in delivery queues."
    );
    let _ = writeln!(out, "# TYPE porthole_queue_depth gauge");
    let _ = writeln!(
        out,
        "porthole_queue_depth {}",
        m.queue_depth.load(Ordering::Relaxed)
    );
    crate::queue::render_metrics(relay.queue(), &mut out);
    out
}

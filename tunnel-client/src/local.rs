//! Local mode and the built-in target, so the first run needs nothing else installed:
//! an in-process relay on loopback (domain `localhost`, a real QUIC connection), and a
//! catch-all target that answers every request with 200 (what people use
//! webhook.site or RequestBin for); the inspector records what arrives.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use relay_server::{Listeners, Relay, RelayConfig};
use shared_proto::Secret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A relay running inside this process.
#[derive(Debug)]
pub struct LocalRelay {
    /// Its QUIC address, for the session.
    pub tunnel: SocketAddr,
    /// Its public HTTP address.
    pub http: SocketAddr,
    /// Its pin.
    pub pin: String,
    /// A token made for this run.
    pub token: Secret,
    _dir: tempfile::TempDir,
}

/// Binds `preferred` for the public HTTP listener, or an ephemeral port on the same
/// address when it is taken (a second `porthole` in local mode still works).
async fn bind_http(preferred: SocketAddr) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(preferred).await {
        Ok(l) => Ok(l),
        Err(_) => {
            let fallback = SocketAddr::new(preferred.ip(), 0);
            TcpListener::bind(fallback)
                .await
                .with_context(|| format!("binding local relay on {fallback}"))
        }
    }
}

/// Starts an in-process relay on loopback; it stops when `stop` fires.
pub async fn start_relay(
    http_addr: SocketAddr,
    stop: CancellationToken,
) -> anyhow::Result<LocalRelay> {
    let dir = tempfile::Builder::new()
        .prefix("porthole-local-")
        .tempdir()
        .context("creating a temporary data dir")?;
    let cfg = RelayConfig::new("localhost", dir.path().to_path_buf());
    let relay = Relay::new(cfg)?;
    let token = relay.tokens().add("local")?;
    let listeners = Listeners {
        http: Some(bind_http(http_addr).await?),
        https: None,
        tunnel: relay_server::quic::udp_socket(SocketAddr::new(http_addr.ip(), 0))
            .context("binding local relay's QUIC socket")?,
        admin: None,
    };
    let addrs = listeners.addrs()?;
    let pin = relay.pin().to_owned();
    tokio::spawn(async move {
        if let Err(e) = relay.run(listeners, stop.cancelled_owned()).await {
            tracing::error!("local relay: {e:#}");
        }
    });
    Ok(LocalRelay {
        tunnel: addrs.tunnel,
        http: addrs.http.context("local relay has an HTTP listener")?,
        pin,
        token,
        _dir: dir,
    })
}

/// Starts the built-in target on an ephemeral loopback port: every request gets 200
/// with a small JSON body, after its body has been read in full.
pub async fn start_builtin_target(stop: CancellationToken) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the built-in target")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.cancelled() => break,
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let size = match req.into_body().collect().await {
                            Ok(b) => b.to_bytes().len(),
                            Err(_) => 0,
                        };
                        let body = format!("{{\"ok\":true,\"received_bytes\":{size}}}\n");
                        let resp = Response::builder()
                            .status(StatusCode::OK)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body)))
                            .expect("static response parts are valid");
                        Ok::<_, Infallible>(resp)
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

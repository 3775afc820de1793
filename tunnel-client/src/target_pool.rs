//! Keep-alive HTTP/1.1 connections to plain `http://` targets at an IP address or
//! `localhost`, the everyday case of a local app.
//!
//! hyper-util's general-purpose client pool (which still carries `https://` and h2c
//! targets, and targets by name, whose several addresses its connector tries the way
//! browsers do) costs about a tenth of the client's instructions per exchange: a hashed
//! checkout, a race between checkout and connect, boxed futures and a second channel.
//! This one keeps, per target, a list of hyper connections: a request takes the most
//! recently used one that is ready, or opens one, and hands it back as soon as the
//! response head arrives. hyper will not take a second request on a connection until
//! the first response body has been read, so taking checks readiness and skips
//! connections still busy with a body.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use relay_server::quic::TunnelBody;

/// How long a connection may wait unused before it is closed (when next looked at).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections kept per target beyond those in use.
const MAX_PER_TARGET: usize = 256;
/// How long opening a connection to the target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The pool: target authority (`HOST:PORT`) → its connections.
#[derive(Default)]
pub struct Http1Pool {
    idle: Mutex<HashMap<String, Vec<Pooled>>>,
}

impl std::fmt::Debug for Http1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Pool").finish_non_exhaustive()
    }
}

struct Pooled {
    sender: SendRequest<TunnelBody>,
    since: Instant,
}

/// Why a request did not get a response from the target.
#[derive(Debug)]
pub enum SendError {
    /// The connection could not be opened.
    Connect(std::io::Error),
    /// HTTP on the connection failed.
    Http(hyper::Error),
    /// The request's URI names no target.
    NoAuthority,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connecting to the target failed: {e}"),
            Self::Http(e) => e.fmt(f),
            Self::NoAuthority => f.write_str("the request URI names no target"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(e) => Some(e),
            Self::Http(e) => e.source(),
            Self::NoAuthority => None,
        }
    }
}

impl Http1Pool {
    /// Sends `req` (absolute URI, `http://HOST:PORT/…`) to its target and returns the
    /// response head. On the wire it goes in origin form (path and query), with a Host
    /// header from the URI if it has none, as hyper-util's client sends it. A pooled
    /// connection that turns out closed before the request went out is dropped and the
    /// request tried on another, as hyper-util does: a target's keep-alive timeout must
    /// not fail a webhook.
    pub async fn send(
        &self,
        mut req: Request<TunnelBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let authority = req
            .uri()
            .authority()
            .cloned()
            .ok_or(SendError::NoAuthority)?;
        if !req.headers().contains_key(http::header::HOST) {
            if let Ok(v) = http::HeaderValue::from_str(authority.as_str()) {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
        *req.uri_mut() = req
            .uri()
            .path_and_query()
            .cloned()
            .map_or_else(|| http::Uri::from_static("/"), http::Uri::from);
        let authority = authority.as_str();
        loop {
            let (mut sender, reused) = match self.take(authority) {
                Some(s) => (s, true),
                None => (connect(authority).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(response) => {
                    self.put(authority, sender);
                    return Ok(response);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }

    /// The most recently returned connection to `authority` that is ready for a
    /// request. Closed ones met on the way are dropped, and long-idle ones once the
    /// oldest has waited too long: the list is in the order connections came back, so
    /// a busy target costs a look at each end of it, not a pass over every connection.
    fn take(&self, authority: &str) -> Option<SendRequest<TunnelBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(authority)?;
        let now = Instant::now();
        if list
            .first()
            .is_some_and(|p| now.duration_since(p.since) >= IDLE_TIMEOUT)
        {
            list.retain(|p| !p.sender.is_closed() && now.duration_since(p.since) < IDLE_TIMEOUT);
        }
        while let Some(i) = list
            .iter()
            .rposition(|p| p.sender.is_ready() || p.sender.is_closed())
        {
            let pooled = list.remove(i);
            if !pooled.sender.is_closed() {
                return Some(pooled.sender);
            }
        }
        None
    }

    fn put(&self, authority: &str, sender: SendRequest<TunnelBody>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = match idle.get_mut(authority) {
            Some(list) => list,
            None => idle.entry(authority.to_owned()).or_default(),
        };
        if list.len() < MAX_PER_TARGET {
            list.push(Pooled {
                sender,
                since: Instant::now(),
            });
        }
    }
}

/// Opens a connection to `authority` (`localhost` is both loopback addresses) and
/// starts driving it, with upgrades (WebSocket) allowed.
async fn connect(authority: &str) -> Result<SendRequest<TunnelBody>, SendError> {
    let stream =
        match tokio::time::timeout(CONNECT_TIMEOUT, crate::loopback::connect(authority)).await {
            Ok(s) => s.map_err(SendError::Connect)?,
            Err(_) => {
                return Err(SendError::Connect(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
                )))
            }
        };
    relay_server::ingress::tune_body_socket(&stream);
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(SendError::Http)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("connection to the target ended: {e}");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn get(authority: &str) -> Request<TunnelBody> {
        Request::get(format!("http://{authority}/"))
            .body(
                Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .unwrap()
    }

    /// Reads one request head from `s`, answers it with `body`, and says whether the
    /// head was complete.
    async fn answer(s: &mut tokio::net::TcpStream, body: &str, close: bool) -> bool {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.unwrap() == 0 {
                return false;
            }
            head.push(byte[0]);
        }
        let conn = if close { "connection: close\r\n" } else { "" };
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{conn}\r\n{body}",
            body.len()
        );
        s.write_all(reply.as_bytes()).await.unwrap();
        true
    }

    /// Two requests in turn share one connection; a target that closes its end
    /// between them (its keep-alive timeout) costs the second one nothing.
    #[tokio::test]
    async fn connections_are_reused_and_a_closed_one_is_replaced() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let target = tokio::spawn(async move {
            let mut accepted = 0;
            // First connection: two requests, then the target closes it.
            let (mut s, _) = listener.accept().await.unwrap();
            accepted += 1;
            assert!(answer(&mut s, "one", false).await);
            assert!(answer(&mut s, "two", true).await);
            drop(s);
            // The third request needs a new connection.
            let (mut s, _) = listener.accept().await.unwrap();
            accepted += 1;
            assert!(answer(&mut s, "three", false).await);
            accepted
        });
        let pool = Http1Pool::default();
        let requests = async {
            for want in ["one", "two", "three"] {
                let response = pool.send(get(&authority)).await.unwrap();
                assert_eq!(response.status(), 200);
                let body = response.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body, want.as_bytes());
            }
        };
        // Without reuse, the second request would wait for a connection the target
        // never accepts.
        tokio::time::timeout(Duration::from_secs(10), requests)
            .await
            .expect("the second request went out on the first connection");
        assert_eq!(target.await.unwrap(), 2, "connections opened");
    }

    /// A target that is not listening gives an error that names the refusal.
    #[tokio::test]
    async fn a_refused_connection_is_an_error_with_its_cause() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        drop(listener);
        let err = Http1Pool::default()
            .send(get(&authority))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, SendError::Connect(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
            "{err:?}"
        );
    }
}

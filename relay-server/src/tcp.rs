//! TCP tunnels: the relay gives a tunnel a public TCP port from `--tcp-ports`, accepts
//! visitor connections there, and carries each one on its own data stream
//! ([`shared_proto::StreamHead::Tcp`], then raw bytes both ways, with half-close).
//!
//! A port is named `tcp-PORT` in the reservation store, so `--port` on the client
//! reserves it for the token the way `--name` reserves a name. A session of the same
//! token that binds a port again (a reconnect) takes the listener over at once; the
//! listener closes when the session holding it ends. No I/O under the table's lock
//! except binding a listening socket, which does not block.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use shared_proto::{StreamHead, TcpHead};
use tracing::{debug, info};

use crate::quic::{encode_head, GuardedSend};
use crate::registry::Route;

/// An inclusive range of TCP ports, written `LOW-HIGH` (`20000-20100`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub low: u16,
    /// Last port (inclusive).
    pub high: u16,
}

impl PortRange {
    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("a port range looks like 20000-20100, got {s:?}");
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let low: u16 = a.trim().parse().map_err(|_| bad())?;
        let high: u16 = b.trim().parse().map_err(|_| bad())?;
        if low == 0 || high < low {
            return Err(bad());
        }
        Ok(Self { low, high })
    }
}

impl<'de> serde::Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The reservation-store name of a TCP port.
pub fn port_name(port: u16) -> String {
    format!("tcp-{port}")
}

/// The port a `tcp-PORT` bind name asks for.
pub fn requested_port(name: &str) -> Option<u16> {
    name.strip_prefix("tcp-")?.parse().ok().filter(|p| *p != 0)
}

/// Why a TCP port could not be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// The relay offers no TCP tunnels.
    #[error("this relay offers no TCP tunnels (start it with --tcp-ports LOW-HIGH)")]
    Disabled,
    /// The requested port is outside the range.
    #[error("port {0} is outside this relay's TCP ports {1}-{2}")]
    OutOfRange(u16, u16, u16),
    /// Another token's tunnel holds the port, or another program does.
    #[error("port {0} is in use")]
    InUse(u16),
    /// Every port in the range is taken.
    #[error("no free TCP port in {0}-{1}")]
    Exhausted(u16, u16),
}

struct Entry {
    route: Route,
}

/// The relay's TCP tunnels: port → the route that currently holds it.
#[derive(Default)]
pub struct TcpTunnels {
    range: Option<PortRange>,
    ip: Option<IpAddr>,
    ports: Arc<Mutex<HashMap<u16, Entry>>>,
}

impl std::fmt::Debug for TcpTunnels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTunnels")
            .field("range", &self.range)
            .field("ip", &self.ip)
            .finish_non_exhaustive()
    }
}

impl TcpTunnels {
    /// TCP tunnels on `range` (none when `None`), listening on `ip`.
    pub fn new(range: Option<PortRange>, ip: IpAddr) -> Self {
        Self {
            range,
            ip: Some(ip),
            ports: Arc::default(),
        }
    }

    /// Binds a port for `route`: `wanted`, or the first free one in the range from a
    /// random start. A port held by the same token is taken over.
    pub fn bind(&self, wanted: Option<u16>, route: Route) -> Result<u16, PortError> {
        let range = self.range.ok_or(PortError::Disabled)?;
        let ip = self.ip.ok_or(PortError::Disabled)?;
        let mut ports = self.ports.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(port) = wanted {
            if !range.contains(port) {
                return Err(PortError::OutOfRange(port, range.low, range.high));
            }
            if let Some(e) = ports.get_mut(&port) {
                if e.route.token != route.token {
                    return Err(PortError::InUse(port));
                }
                info!(port, old_session = %e.route.session, "same token reconnected: TCP port taken over");
                e.route = route;
                return Ok(port);
            }
            let listener = listen(SocketAddr::new(ip, port)).ok_or(PortError::InUse(port))?;
            self.start(&mut ports, port, listener, route);
            return Ok(port);
        }
        let span = u32::from(range.high - range.low) + 1;
        let start = rand::random::<u32>() % span;
        for i in 0..span {
            let port = range.low + ((start + i) % span) as u16;
            if ports.contains_key(&port) {
                continue;
            }
            if let Some(listener) = listen(SocketAddr::new(ip, port)) {
                self.start(&mut ports, port, listener, route);
                return Ok(port);
            }
        }
        Err(PortError::Exhausted(range.low, range.high))
    }

    fn start(
        &self,
        ports: &mut HashMap<u16, Entry>,
        port: u16,
        listener: std::net::TcpListener,
        route: Route,
    ) {
        ports.insert(port, Entry { route });
        tokio::spawn(accept_loop(self.ports.clone(), port, listener));
    }
}

fn listen(addr: SocketAddr) -> Option<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr).ok()?;
    l.set_nonblocking(true).ok()?;
    Some(l)
}

async fn accept_loop(
    ports: Arc<Mutex<HashMap<u16, Entry>>>,
    port: u16,
    listener: std::net::TcpListener,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        ports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&port);
        return;
    };
    info!(port, "TCP tunnel listening");
    loop {
        let current = {
            let ports = ports.lock().unwrap_or_else(|p| p.into_inner());
            match ports.get(&port) {
                Some(e) => e.route.clone(),
                None => break,
            }
        };
        tokio::select! {
            _ = current.conn.closed() => {
                // The holder left; unless a newer session of its token took over.
                let mut ports = ports.lock().unwrap_or_else(|p| p.into_inner());
                if ports.get(&port).is_some_and(|e| e.route.session == current.session) {
                    ports.remove(&port);
                    break;
                }
            }
            a = listener.accept() => match a {
                Ok((stream, peer)) => {
                    // The route as of now: a takeover may have replaced `current`.
                    let route = ports
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&port)
                        .map(|e| e.route.clone());
                    let Some(route) = route else { break };
                    crate::ingress::tune_body_socket(&stream);
                    tokio::spawn(carry(route, stream, peer));
                }
                Err(e) => {
                    debug!(port, "accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
    info!(port, "TCP tunnel closed");
}

/// Carries one visitor connection over its own data stream.
async fn carry(route: Route, stream: tokio::net::TcpStream, peer: SocketAddr) {
    let head = StreamHead::Tcp(TcpHead {
        tunnel_id: route.tunnel_id,
        visitor: Some(peer),
    });
    let result = async {
        let (send, recv) =
            route.conn.open_bi().await.map_err(|e| {
                crate::quic::StreamError::Write(quinn::WriteError::ConnectionLost(e))
            })?;
        let mut send = GuardedSend::new(send);
        send.write(encode_head(&head)?).await?;
        crate::upgrade::splice(stream, bytes::Bytes::new(), send, recv).await
    }
    .await;
    match result {
        Ok(n) => debug!(%peer, sent = n.sent, received = n.received, "TCP connection done"),
        Err(e) => debug!(%peer, "TCP connection failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_and_refuse_nonsense() {
        assert_eq!(
            "20000-20100".parse::<PortRange>(),
            Ok(PortRange {
                low: 20000,
                high: 20100
            })
        );
        for bad in ["", "20000", "2-1", "0-5", "a-b", "1-70000"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
        assert_eq!(requested_port("tcp-22"), Some(22));
        assert_eq!(requested_port("tcp-0"), None);
        assert_eq!(requested_port("web"), None);
        assert_eq!(port_name(22), "tcp-22");
    }
}

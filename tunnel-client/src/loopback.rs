//! `localhost` targets reach both loopback addresses, without a DNS lookup.
//!
//! `porthole http 3000` forwards to `localhost:3000`. An app that says it listens on
//! "localhost" may have bound only 127.0.0.1 or only ::1 (Node 17 and later resolve
//! `localhost` to ::1 first, and dev servers bind what it resolves to), and a tunnel
//! that tried one of them answered 502 for a running app. Both are tried, IPv4 first: a
//! refused connection moves on to the other at once.

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use tokio::net::TcpStream;

/// The host a bare `PORT` target forwards to.
pub const LOCALHOST: &str = "localhost";

/// Whether `host` names this machine's loopback (`localhost`, any case, trailing dot).
pub fn is_localhost(host: &str) -> bool {
    host.trim_end_matches('.').eq_ignore_ascii_case(LOCALHOST)
}

/// Both loopback addresses at `port`, IPv4 first.
pub fn addrs(port: u16) -> [SocketAddr; 2] {
    [
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    ]
}

/// The target client's resolver: `localhost` is both loopback addresses (hyper's
/// connector tries them in turn); other names go to the system resolver.
#[derive(Clone, Debug)]
pub struct Resolver(GaiResolver);

impl Resolver {
    /// A resolver backed by the system's (`getaddrinfo`) for names other than localhost.
    pub fn new() -> Self {
        Self(GaiResolver::new())
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Self::new()
    }
}

type Resolving =
    Pin<Box<dyn Future<Output = std::io::Result<std::vec::IntoIter<SocketAddr>>> + Send>>;

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        if is_localhost(name.as_str()) {
            // The connector sets the port.
            let both = addrs(0).to_vec().into_iter();
            return Box::pin(std::future::ready(Ok(both)));
        }
        let lookup = self.0.call(name);
        Box::pin(async move { Ok(lookup.await?.collect::<Vec<_>>().into_iter()) })
    }
}

/// Connects to `HOST:PORT` (a TCP tunnel's target); `localhost` tries both loopback
/// addresses, IPv4 first.
pub async fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let local_port = addr
        .rsplit_once(':')
        .filter(|(host, _)| is_localhost(host))
        .and_then(|(_, port)| port.parse::<u16>().ok());
    let Some(port) = local_port else {
        return TcpStream::connect(addr).await;
    };
    let [v4, v6] = addrs(port);
    match TcpStream::connect(v4).await {
        Ok(s) => Ok(s),
        Err(e4) => TcpStream::connect(v6)
            .await
            .map_err(|e6| std::io::Error::new(e4.kind(), format!("{v4}: {e4}; {v6}: {e6}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_is_recognised_in_any_case_with_a_trailing_dot() {
        assert!(is_localhost("localhost"));
        assert!(is_localhost("LocalHost."));
        assert!(!is_localhost("localhost.example"));
        assert!(!is_localhost("127.0.0.1"));
    }

    /// An app listening on ::1 only is reached through `localhost:PORT`, and so is one
    /// on 127.0.0.1 only.
    #[tokio::test]
    async fn connect_reaches_either_loopback_address() {
        let v4 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = v4.local_addr().unwrap().port();
        let s = connect(&format!("localhost:{port}")).await.unwrap();
        assert_eq!(s.peer_addr().unwrap(), v4.local_addr().unwrap());

        let Ok(v6) = tokio::net::TcpListener::bind("[::1]:0").await else {
            eprintln!("skipped the ::1 half: this machine has no IPv6 loopback");
            return;
        };
        let port = v6.local_addr().unwrap().port();
        let s = connect(&format!("localhost:{port}")).await.unwrap();
        assert_eq!(s.peer_addr().unwrap(), v6.local_addr().unwrap());
    }

    #[tokio::test]
    async fn connect_names_both_addresses_when_neither_listens() {
        // A port nothing listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = connect(&format!("localhost:{port}")).await.unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(text.contains(&format!("[::1]:{port}")), "{text}");
    }
}

//! TCP tunnels end to end: `porthole-relay serve --tcp-ports` and `porthole tcp`, real
//! processes, a real TCP echo service, raw bytes both ways with half-close.

use std::net::SocketAddr;
use std::time::Duration;

use porthole_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const STEP: Duration = Duration::from_secs(30);

/// An echo service: copies what it reads back, and half-closes when the peer does.
async fn echo_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A port range unlikely to collide with other tests; taken ports are skipped anyway.
fn port_range() -> String {
    let base = 30_000 + (std::process::id() % 1000) as u16 * 20;
    format!("{base}-{}", base + 19)
}

fn spawn_tcp_client(relay: &Relay, target: &str, token: &str, extra: &[&str]) -> Proc {
    let mut args: Vec<String> = vec![
        "tcp".into(),
        target.into(),
        "--relay".into(),
        relay.tunnel.to_string(),
        "--relay-pin".into(),
        relay.pin.clone(),
        "--json".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Proc::spawn(&bin("porthole"), &args, &[("PORTHOLE_TOKEN", token)]).unwrap()
}

fn public_port(ready: &serde_json::Value) -> u16 {
    let url = ready["url"].as_str().unwrap();
    assert!(url.starts_with("tcp://localhost:"), "{url}");
    url.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_tcp_tunnel_carries_64_mib_both_ways_byte_exact() {
    let range = port_range();
    let relay = Relay::start(&["--tcp-ports", &range]).await.unwrap();
    let token = relay.token("dev").unwrap();
    let target = echo_target().await;
    let mut client = spawn_tcp_client(&relay, &target.to_string(), &token, &[]);
    let ready = client.event("ready", READY_TIMEOUT).await.unwrap();
    let port = public_port(&ready);

    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    let size = 64u64 << 20;
    let writer = tokio::spawn(async move {
        let chunk = 256 * 1024u64;
        let mut off = 0;
        while off < size {
            let n = chunk.min(size - off);
            let data: Vec<u8> = (off..off + n).map(pattern).collect();
            w.write_all(&data).await.unwrap();
            off += n;
        }
        // Half-close: the echo service sees EOF and closes its side after the echo.
        w.shutdown().await.unwrap();
    });
    let mut got = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = tokio::time::timeout(STEP, r.read(&mut buf))
            .await
            .expect("bytes keep flowing")
            .unwrap();
        if n == 0 {
            break;
        }
        for (i, b) in buf[..n].iter().enumerate() {
            assert_eq!(
                *b,
                pattern(got + i as u64),
                "byte {} differs",
                got + i as u64
            );
        }
        got += n as u64;
    }
    writer.await.unwrap();
    assert_eq!(got, size, "the whole stream came back, then a clean end");

    // Several connections at once, each its own stream.
    let mut tasks = Vec::new();
    for i in 0..10u8 {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let msg = vec![i; 1000 + i as usize];
            s.write_all(&msg).await.unwrap();
            s.shutdown().await.unwrap();
            let mut back = Vec::new();
            s.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, msg);
        }));
    }
    for t in tasks {
        tokio::time::timeout(STEP, t).await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_requested_port_is_reserved_for_its_token() {
    let range = port_range();
    let relay = Relay::start(&["--tcp-ports", &range]).await.unwrap();
    let dev = relay.token("dev").unwrap();
    let other = relay.token("other").unwrap();
    let target = echo_target().await;

    // Any free port first, then ask for that one by number.
    let mut first = spawn_tcp_client(&relay, &target.to_string(), &dev, &[]);
    let port = public_port(&first.event("ready", READY_TIMEOUT).await.unwrap());
    first.kill().await;
    let port_flag = port.to_string();
    let mut owner = spawn_tcp_client(&relay, &target.to_string(), &dev, &["--port", &port_flag]);
    // The old session may still hold the port until the relay notices it is gone; the
    // same token takes it over at once.
    let ready = owner.event("ready", READY_TIMEOUT).await.unwrap();
    assert_eq!(public_port(&ready), port);
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tokio::time::timeout(STEP, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"ping");

    // Another token cannot have it, with a sentence that says why.
    let mut thief = spawn_tcp_client(&relay, &target.to_string(), &other, &["--port", &port_flag]);
    let err = thief.event("error", READY_TIMEOUT).await.unwrap();
    let msg = err["message"].as_str().unwrap_or_default();
    assert!(msg.contains("reserved by another token"), "{msg}");
    assert_ne!(thief.wait_exit(READY_TIMEOUT).await.unwrap(), 0);

    // Outside the range: refused clearly.
    let mut out = spawn_tcp_client(&relay, &target.to_string(), &dev, &["--port", "1"]);
    let err = out.event("error", READY_TIMEOUT).await.unwrap();
    let msg = err["message"].as_str().unwrap_or_default();
    assert!(msg.contains("outside this relay's TCP ports"), "{msg}");
}

#[tokio::test]
async fn a_relay_without_tcp_ports_says_so() {
    let relay = Relay::start(&[]).await.unwrap();
    let token = relay.token("dev").unwrap();
    let mut client = spawn_tcp_client(&relay, "22", &token, &[]);
    let err = client.event("error", READY_TIMEOUT).await.unwrap();
    let msg = err["message"].as_str().unwrap_or_default();
    assert!(msg.contains("--tcp-ports"), "{msg}");
    assert_ne!(client.wait_exit(READY_TIMEOUT).await.unwrap(), 0);
}

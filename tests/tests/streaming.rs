//! What HTTP carries besides plain requests, end to end through real relay and client
//! processes: WebSocket (a real client library on both ends), server-sent events that
//! must arrive one by one, HTTP/2 cleartext (prior knowledge) with many concurrent
//! streams on one connection, and a client whose UDP socket moves mid-transfer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use porthole_tests::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Mutex};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

const STEP: Duration = Duration::from_secs(20);

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

/// A WebSocket echo server: every text or binary message comes back as it was; pings
/// are answered and a close is echoed by the library.
async fn ws_echo_target() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) =
                    tokio_tungstenite::accept_async_with_config(stream, Some(ws_config())).await
                else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn setup(target: &str) -> (Relay, Client) {
    let relay = Relay::start(&[]).await.unwrap();
    let token = relay.token("dev").unwrap();
    let client = Client::start(&relay, target, &token, &[]).await.unwrap();
    (relay, client)
}

async fn next_message<S>(ws: &mut S) -> Message
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    tokio::time::timeout(STEP, ws.next())
        .await
        .expect("a message within the step timeout")
        .expect("the connection is open")
        .expect("a valid message")
}

#[tokio::test]
async fn websocket_echo_is_byte_exact_with_ping_pong_and_close_codes() {
    let target = ws_echo_target().await;
    let (relay, client) = setup(&target.to_string()).await;
    let stream = TcpStream::connect(relay.http).await.unwrap();
    let url = format!("ws://{}/echo", client.host());
    let (mut ws, resp) =
        tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(ws_config()))
            .await
            .expect("the upgrade crosses the tunnel");
    assert_eq!(resp.status(), 101);

    // Text, including multi-byte characters.
    ws.send(Message::text("héllo wörld ✓")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("héllo wörld ✓"));

    // Binary, every byte value.
    let bin: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    ws.send(Message::binary(bin.clone())).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::binary(bin));

    // A fragmented text message: three frames, one message back.
    ws.send(Message::Frame(Frame::message(
        "frag-",
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        "ment-",
        OpCode::Data(Data::Continue),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        "ed",
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("frag-ment-ed"));

    // 16 MiB in one message.
    let big: Vec<u8> = (0..16u64 << 20).map(pattern).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    match next_message(&mut ws).await {
        Message::Binary(b) => {
            assert_eq!(b.len(), big.len());
            assert!(b[..] == big[..], "16 MiB message differs");
        }
        other => panic!("expected the 16 MiB binary message, got {other:?}"),
    }

    // Ping → pong with the same payload, answered by the target.
    ws.send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut ws).await,
        Message::Pong(Bytes::from_static(b"are you there"))
    );

    // Close with a code and reason: the target echoes them, then the connection ends.
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Library(4001),
        reason: "done here".into(),
    })))
    .await
    .unwrap();
    match next_message(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!(f.code, CloseCode::Library(4001));
            assert_eq!(f.reason.as_str(), "done here");
        }
        other => panic!("expected the echoed close frame, got {other:?}"),
    }
    let end = tokio::time::timeout(STEP, ws.next())
        .await
        .expect("the connection ends");
    assert!(end.is_none(), "nothing after the close: {end:?}");
}

#[tokio::test]
async fn a_target_refusing_the_upgrade_answers_an_ordinary_response() {
    let target = Target::start().await.unwrap();
    let (relay, client) = setup(&target.addr.to_string()).await;
    let a = request(
        relay.http,
        &client.host(),
        "GET",
        "/status/400",
        &[
            ("connection", b"upgrade"),
            ("upgrade", b"websocket"),
            ("sec-websocket-version", b"13"),
            ("sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 400);
    assert_eq!(a.body, "status 400");
    let seen = target.last().unwrap();
    assert_eq!(seen.header("upgrade").as_deref(), Some("websocket"));
}

type SseBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// A target that answers `GET /events` with an event stream fed by the test, one event
/// at a time, and never ends it on its own.
async fn sse_target() -> (std::net::SocketAddr, mpsc::Sender<Bytes>) {
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let rx = Arc::new(Mutex::new(Some(rx)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let rx = rx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let rx = rx.clone();
                    async move {
                        let rx = rx.lock().await.take();
                        let s = futures_util::stream::unfold(rx, |rx| async move {
                            let mut rx = rx?;
                            let b = rx.recv().await?;
                            Some((
                                Ok::<_, std::io::Error>(hyper::body::Frame::data(b)),
                                Some(rx),
                            ))
                        });
                        let body: SseBody = StreamBody::new(s).boxed_unsync();
                        let resp = http::Response::builder()
                            .header("content-type", "text/event-stream")
                            .header("cache-control", "no-cache")
                            .body(body)
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, tx)
}

/// Each event is written by the target only after the visitor has read the previous
/// one, so a tunnel that buffered the stream would hang this test instead of passing.
#[tokio::test]
async fn server_sent_events_arrive_one_by_one_while_the_stream_stays_open() {
    let (target, events) = sse_target().await;
    let (relay, client) = setup(&target.to_string()).await;
    let mut conn = connect(relay.http).await.unwrap();
    let req = http::Request::builder()
        .uri("/events")
        .header("host", client.host())
        .header("accept", "text/event-stream")
        .body(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap();
    // The head arrives before the target has written any event.
    conn.ready().await.unwrap();
    let resp = tokio::time::timeout(STEP, conn.send_request(req))
        .await
        .expect("response head before any event")
        .unwrap();
    events
        .send(Bytes::from_static(b": open\n\n"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut pending = Vec::new();
    let mut latencies = Vec::new();
    let total = 20;
    for i in 0..=total {
        let expected = if i == 0 {
            b": open\n\n".to_vec()
        } else {
            format!("id: {i}\ndata: {{\"n\":{i}}}\n\n").into_bytes()
        };
        let written = Instant::now();
        if i > 0 {
            events.send(Bytes::from(expected.clone())).await.unwrap();
        }
        while pending.len() < expected.len() {
            let frame = tokio::time::timeout(STEP, body.frame())
                .await
                .unwrap_or_else(|_| panic!("event {i} did not arrive while the stream is open"))
                .expect("the stream stays open")
                .expect("no body error");
            if let Ok(d) = frame.into_data() {
                pending.extend_from_slice(&d);
            }
        }
        if i > 0 {
            latencies.push(written.elapsed());
        }
        assert_eq!(
            String::from_utf8_lossy(&pending),
            String::from_utf8_lossy(&expected),
            "event {i} arrived whole and alone"
        );
        pending.clear();
    }
    latencies.sort();
    eprintln!(
        "SSE event latency (target write → visitor read), {} events: p50 {:?}, max {:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    // The stream is still open: closing it from the target ends the body cleanly.
    drop(events);
    let end = tokio::time::timeout(STEP, body.frame()).await.unwrap();
    assert!(end.is_none(), "the body ends when the target ends it");
}

#[tokio::test]
async fn h2c_prior_knowledge_carries_many_concurrent_streams_on_one_connection() {
    let target = Target::start().await.unwrap();
    let (relay, client) = setup(&target.addr.to_string()).await;
    let stream = TcpStream::connect(relay.http).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake::<_, _, http_body_util::Full<Bytes>>(
            TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let mut sender = sender.clone();
        let host = client.host();
        tasks.push(tokio::spawn(async move {
            let body = format!("request {i}");
            let req = http::Request::builder()
                .method("POST")
                .uri(format!("http://{host}/h2/{i}"))
                .body(http_body_util::Full::new(Bytes::from(body.clone())))
                .unwrap();
            sender.ready().await.unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.version(), http::Version::HTTP_2);
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["x-echo-uri"], format!("/h2/{i}").as_str());
            let got = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(got, body);
        }));
    }
    for t in tasks {
        tokio::time::timeout(STEP, t).await.unwrap().unwrap();
    }
    // The target saw HTTP/1.1 requests with the visitor's host.
    let seen = target.seen();
    assert_eq!(seen.len(), 200);
    assert!(seen
        .iter()
        .all(|r| r.header("host").as_deref() == Some(client.host().as_str())));
}

/// The client's QUIC endpoint moves to a new UDP port (SIGUSR1, as a network change
/// would) while a 64 MiB download is running; the download completes byte-exact.
#[cfg(unix)]
#[tokio::test]
async fn a_download_survives_the_client_moving_to_a_new_udp_address() {
    let target = Target::start().await.unwrap();
    let (relay, client) = setup(&target.addr.to_string()).await;
    let size = 64u64 << 20;
    let mut conn = connect(relay.http).await.unwrap();
    let path = format!("/download?bytes={size}");
    let resp = get(&mut conn, &client.host(), &path, STEP).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut off = 0u64;
    let mut rebound = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Some(frame) = tokio::time::timeout(STEP, body.frame())
        .await
        .expect("the download keeps flowing")
    {
        let frame = frame.expect("no body error across the address change");
        if let Ok(d) = frame.into_data() {
            for (i, b) in d.iter().enumerate() {
                assert_eq!(
                    *b,
                    pattern(off + i as u64),
                    "byte {} differs",
                    off + i as u64
                );
            }
            off += d.len() as u64;
        }
        if !rebound && off >= 8 << 20 {
            rebound = true;
            assert!(client.proc.signal("USR1"), "SIGUSR1 to the client");
            // Wait until the client has moved (bounded), reading slowly meanwhile so
            // the transfer is still in flight when it does.
            let moved = Instant::now() + STEP;
            while !client.proc.stderr().contains("rebound the QUIC endpoint") {
                assert!(
                    Instant::now() < moved,
                    "the client did not rebind; stderr:\n{}",
                    client.proc.stderr()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert!(Instant::now() < deadline, "download too slow");
    }
    assert!(rebound, "the rebind happened mid-transfer");
    assert_eq!(off, size, "the whole download arrived");
    // The session goes on serving on the new address.
    let a = send(
        &mut conn,
        &client.host(),
        "POST",
        "/after",
        &[],
        Bytes::from("x"),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
}

/// A target that upgrades any request asking for `Upgrade: echo` and then echoes raw
/// bytes until the visitor half-closes, then closes its side.
async fn raw_upgrade_target() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |mut req: http::Request<hyper::body::Incoming>| async move {
                        let on = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            if let Ok(io) = on.await {
                                let (mut r, mut w) = tokio::io::split(TokioIo::new(io));
                                let _ = tokio::io::copy(&mut r, &mut w).await;
                                let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
                            }
                        });
                        let resp = http::Response::builder()
                            .status(101)
                            .header("connection", "upgrade")
                            .header("upgrade", "echo")
                            .body(http_body_util::Empty::<Bytes>::new())
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// Any `Upgrade` protocol, not only WebSocket: after the 101 the bytes are raw, and a
/// half-close by the visitor reaches the target, whose own close comes back.
#[tokio::test]
async fn a_raw_upgrade_carries_bytes_and_half_close_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let target = raw_upgrade_target().await;
    let (relay, client) = setup(&target.to_string()).await;
    let mut s = TcpStream::connect(relay.http).await.unwrap();
    let head = format!(
        "GET /raw HTTP/1.1\r\nhost: {}\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
        client.host()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // Read the 101 head byte by byte so no upgraded byte is consumed with it.
    let mut resp = Vec::new();
    while !resp.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(STEP, s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "connection closed during the 101 head: {resp:?}");
        resp.push(b[0]);
        assert!(resp.len() < 4096);
    }
    let resp = String::from_utf8_lossy(&resp).to_lowercase();
    assert!(resp.starts_with("http/1.1 101"), "{resp}");
    assert!(resp.contains("upgrade: echo"), "{resp}");
    let payload: Vec<u8> = (0..3_000_000u64).map(pattern).collect();
    let (mut r, mut w) = s.into_split();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    tokio::time::timeout(STEP, r.read_to_end(&mut back))
        .await
        .expect("the target's close arrives after the echo")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "echoed bytes differ");
}

/// HTTPS ingress negotiates h2 by ALPN; requests carry the tunnel's name as SNI.
#[tokio::test]
async fn h2_over_tls_by_alpn() {
    let target = Target::start().await.unwrap();
    let relay = Relay::start(&["--https-addr", "127.0.0.1:0"])
        .await
        .unwrap();
    let https = relay.https.expect("the relay listens for HTTPS");
    let token = relay.token("dev").unwrap();
    let client = Client::start(&relay, &target.addr.to_string(), &token, &[])
        .await
        .unwrap();
    let host = client.host();
    let pem = std::fs::read(relay.dir.path().join("relay-cert.pem")).unwrap();
    // Trust exactly the relay's certificate (its name is checked by the relay's own
    // SNI rule; verifiers refuse a wildcard right under one label like `*.localhost`).
    let cert = rustls_pemfile_certs(&pem).remove(0);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ExactCert {
            cert,
            algorithms: provider.signature_verification_algorithms,
        }))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(https).await.unwrap();
    let sni = rustls::pki_types::ServerName::try_from(host.clone()).unwrap();
    let tls = connector.connect(sni, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<
        _,
        _,
        http_body_util::Full<Bytes>,
    >(TokioExecutor::new(), TokioIo::new(tls))
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("https://{}/tls", host.clone()))
        .body(http_body_util::Full::new(Bytes::from_static(b"secure")))
        .unwrap();
    let resp = tokio::time::timeout(STEP, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "secure"
    );
    assert_eq!(
        target
            .last()
            .unwrap()
            .header("x-forwarded-proto")
            .as_deref(),
        Some("https")
    );
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .map(|c| c.unwrap())
        .collect()
}

/// Accepts exactly one certificate, and checks the handshake signature.
#[derive(Debug)]
struct ExactCert {
    cert: rustls::pki_types::CertificateDer<'static>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for ExactCert {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the relay's certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The established TCP socket an `ss` port filter picks, as `ss -tni` shows it: (bytes
/// sent, bytes waiting unsent in the kernel).
fn socket_state(filter: &str) -> Option<(u64, u64)> {
    let out = std::process::Command::new("ss")
        .args(["-tniH", "state", "established", filter])
        .output()
        .expect("ss (iproute2) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse::<u64>().ok())
    };
    // `notsent` is left out when nothing is waiting.
    Some((field("bytes_sent:")?, field("notsent:").unwrap_or(0)))
}

/// Waits until the socket `filter` picks has stopped sending with bytes waiting (its
/// peer's window is full), and answers how many wait unsent.
async fn unsent_once_stalled(filter: &str) -> u64 {
    let deadline = Instant::now() + STEP;
    let mut last = None;
    let mut still = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "{filter}: the transfer never stalled: {last:?}"
        );
        let now = socket_state(filter);
        match now {
            Some((_, unsent)) if unsent > 0 && now == last => {
                still += 1;
                if still == 5 {
                    return unsent;
                }
            }
            _ => still = 0,
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The low-water mark (128 KiB) plus at most one write's worth; without it a stalled
/// socket held about 4 MiB.
const MAX_UNSENT: u64 = 192 * 1024;

#[tokio::test]
async fn a_visitor_that_stops_reading_has_little_of_its_download_waiting_in_the_relay() {
    // A visitor reading slower than the tunnel delivers: the relay keeps only a small
    // unsent backlog in its socket (`TCP_NOTSENT_LOWAT`), so the download moves in small
    // steps instead of megabyte bursts that hold up every other exchange on the
    // tunnel; then, once read, the body is complete and exact.
    let target = Target::start().await.unwrap();
    let (relay, client) = setup(&target.addr.to_string()).await;
    let size = 64u64 << 20;
    let mut visitor = TcpStream::connect(relay.http).await.unwrap();
    let me = visitor.local_addr().unwrap();
    let req = format!(
        "GET /download?bytes={size} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
        client.host()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    visitor.write_all(req.as_bytes()).await.unwrap();

    // Wait until the relay's writes stop against the visitor's full window.
    let unsent = unsent_once_stalled(&format!(
        "( sport = :{} and dport = :{} )",
        relay.http.port(),
        me.port()
    ))
    .await;
    assert!(
        unsent <= MAX_UNSENT,
        "{unsent} bytes wait unsent in the relay's socket to a stalled visitor"
    );

    let mut got = Vec::with_capacity(size as usize + 1024);
    tokio::time::timeout(STEP, visitor.read_to_end(&mut got))
        .await
        .expect("the rest of the download arrives")
        .unwrap();
    let body_at = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(got.starts_with(b"HTTP/1.1 200"), "{:?}", &got[..body_at]);
    let body = &got[body_at..];
    assert_eq!(body.len() as u64, size);
    assert!(body
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern(i as u64)));
}

#[tokio::test]
async fn a_target_that_stops_reading_an_upload_has_little_of_it_waiting_in_the_client() {
    // The other direction: the client keeps only a small unsent backlog in its socket
    // to a target that reads slower than the upload arrives.
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let held = tokio::spawn(async move {
        // Accept and never read.
        let (conn, _) = target.accept().await.unwrap();
        tokio::time::sleep(STEP * 2).await;
        drop(conn);
    });
    let (relay, client) = setup(&target_addr.to_string()).await;
    let size = 64usize << 20;
    let mut visitor = TcpStream::connect(relay.http).await.unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: {}\r\ncontent-length: {size}\r\n\r\n",
        client.host()
    );
    use tokio::io::AsyncWriteExt;
    visitor.write_all(head.as_bytes()).await.unwrap();
    let uploading = tokio::spawn(async move {
        let chunk = vec![7u8; 256 * 1024];
        for _ in 0..size / chunk.len() {
            if visitor.write_all(&chunk).await.is_err() {
                break;
            }
        }
        visitor
    });
    let unsent = unsent_once_stalled(&format!("( dport = :{} )", target_addr.port())).await;
    assert!(
        unsent <= MAX_UNSENT,
        "{unsent} bytes wait unsent in the client's socket to a stalled target"
    );
    uploading.abort();
    held.abort();
}

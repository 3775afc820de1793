//! Targets that are not plain HTTP/1.1, end to end through real relay and client
//! processes: an HTTPS target with a self-signed certificate (ALPN h2), and a gRPC-style
//! HTTP/2 exchange whose response trailers must reach the visitor.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use porthole_tests::*;
use tokio::net::{TcpListener, TcpStream};

const STEP: Duration = Duration::from_secs(20);

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// Answers with the HTTP version it saw; `/grpc` answers like a gRPC server: a
/// length-prefixed message, then `grpc-status` and `grpc-message` trailers.
async fn answer(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Body>, std::convert::Infallible> {
    let version = format!("{:?}", req.version());
    let te = req
        .headers()
        .get("te")
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let path = req.uri().path().to_owned();
    let got = req.into_body().collect().await.map(|b| b.to_bytes());
    let got = got.unwrap_or_default();
    if path == "/grpc" {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", "all good".parse().unwrap());
        let frames = vec![
            Ok::<_, std::io::Error>(hyper::body::Frame::data(got)),
            Ok(hyper::body::Frame::trailers(trailers)),
        ];
        let body: Body = StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
        let resp = http::Response::builder()
            .header("content-type", "application/grpc")
            .header("x-version", version)
            .header("x-te", te)
            .body(body)
            .unwrap();
        return Ok(resp);
    }
    let body: Body = Full::new(got)
        .map_err(|never| match never {})
        .boxed_unsync();
    Ok(http::Response::builder()
        .header("x-version", version)
        .body(body)
        .unwrap())
}

/// An HTTPS target with a fresh self-signed certificate for `localhost`, speaking h2 and
/// HTTP/1.1 by ALPN. Answers its address and the certificate (PEM).
async fn https_target() -> (std::net::SocketAddr, String) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let pem = cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), hyper::service::service_fn(answer))
                    .await;
            });
        }
    });
    (addr, pem)
}

/// A cleartext HTTP/2-only target (prior knowledge), like a gRPC server.
async fn h2c_target() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer))
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_https_target_with_a_self_signed_certificate() {
    let (target, pem) = https_target().await;
    let url = format!("https://localhost:{}", target.port());
    let relay = Relay::start(&[]).await.unwrap();
    let token = relay.token("dev").unwrap();

    // Accepted with --target-insecure, over h2 negotiated by ALPN.
    let client = Client::start(&relay, &url, &token, &["--target-insecure"])
        .await
        .unwrap();
    assert_eq!(client.ready["target"], url.as_str(), "{}", client.ready);
    let a = request(
        relay.http,
        &client.host(),
        "POST",
        "/x",
        &[],
        "over tls".into(),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body, "over tls");
    assert_eq!(a.header("x-version").as_deref(), Some("HTTP/2.0"));
    drop(client);

    // Trusted by its own certificate given as the CA.
    let ca = relay.dir.path().join("target-ca.pem");
    std::fs::write(&ca, &pem).unwrap();
    let ca = ca.display().to_string();
    let client = Client::start(&relay, &url, &token, &["--target-ca", &ca])
        .await
        .unwrap();
    let a = request(relay.http, &client.host(), "GET", "/", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    drop(client);

    // Refused by default (public roots): a 502 that names the certificate problem.
    let client = Client::start(&relay, &url, &token, &[]).await.unwrap();
    let a = request(relay.http, &client.host(), "GET", "/", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(a.status, 502);
    let text = String::from_utf8_lossy(&a.body).to_lowercase();
    assert!(text.contains("certificate"), "{text}");
}

/// gRPC's shape: HTTP/2 both ways, `te: trailers`, and the status in the trailers.
#[tokio::test]
async fn a_grpc_style_call_carries_its_trailers_end_to_end() {
    let target = h2c_target().await;
    let relay = Relay::start(&[]).await.unwrap();
    let token = relay.token("dev").unwrap();
    let client = Client::start(&relay, &target.to_string(), &token, &["--target-h2"])
        .await
        .unwrap();

    let stream = TcpStream::connect(relay.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // One gRPC message: uncompressed flag, 4-byte length, payload; big enough to be
    // split into several chunk frames.
    let payload: Vec<u8> = (0..600_000u64).map(pattern).collect();
    let mut msg = vec![0u8];
    msg.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    msg.extend_from_slice(&payload);
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}/grpc", client.host()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(msg.clone())))
        .unwrap();
    let resp = tokio::time::timeout(STEP, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    assert_eq!(
        resp.headers()["x-version"],
        "HTTP/2.0",
        "the target spoke h2"
    );
    assert_eq!(resp.headers()["x-te"], "trailers");
    let collected = tokio::time::timeout(STEP, resp.into_body().collect())
        .await
        .unwrap()
        .unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrived");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "all good");
    assert!(collected.to_bytes() == msg[..], "message differs");

    // The same target without trailers requested: a plain body.
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}/plain", client.host()))
        .body(Full::new(Bytes::from_static(b"plain")))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "plain"
    );
}

/// `porthole http PORT` forwards to localhost:PORT, and an app listening on "localhost"
/// may have bound ::1 only (Node 17 and later): the client reaches it there too.
#[tokio::test]
async fn a_port_target_reaches_an_app_listening_on_ipv6_loopback_only() {
    let Ok(listener) = TcpListener::bind("[::1]:0").await else {
        eprintln!("skipped: this machine has no IPv6 loopback");
        return;
    };
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer))
                    .await;
            });
        }
    });
    let relay = Relay::start(&[]).await.unwrap();
    let token = relay.token("dev").unwrap();
    let client = Client::start(&relay, &port.to_string(), &token, &[])
        .await
        .unwrap();
    assert_eq!(
        client.ready["target"],
        format!("http://localhost:{port}").as_str(),
        "{}",
        client.ready
    );
    for body in ["first", "second"] {
        let a = request(relay.http, &client.host(), "POST", "/x", &[], body.into())
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{:?}", String::from_utf8_lossy(&a.body));
        assert_eq!(a.body, body);
    }
}

//! Head frames of data streams.
//!
//! The relay opens one bidirectional stream per exchange (or per upgraded or TCP
//! connection). It writes one [`StreamHead`] frame and then raw request body bytes until
//! FIN; the client answers one [`ResponseHead`] frame and then raw response body bytes
//! until FIN. A failed exchange is a stream reset, never a silent FIN.
//!
//! A response that may end with trailers (gRPC's `grpc-status`) cannot be raw bytes,
//! since nothing would tell its last body byte from its trailers. The client marks such
//! a response head as framed ([`ResponseHead::framed`], tag 0x13 instead of 0x11);
//! its body is then a sequence of [`BodyChunk`] frames — data, then at most one
//! trailers frame — until FIN. The client frames a response only when the request
//! asked for trailers (`te: trailers`), so plain responses keep zero-copy raw bodies.
//!
//! A large response's body may travel on the session's bulk lane instead
//! ([`ResponseHead::lane`], tag 0x16): the data stream then ends after the head, and
//! the body comes as raw bytes on a unidirectional stream of the lane connection that
//! starts with a [`LaneHead`] naming the data stream.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{BufMut, BytesMut};
use http::{HeaderName, HeaderValue};

use crate::codec::{put_blob, put_string, EncodeError, Frame, Invalid, Reader};
use crate::limits::{MAX_HEADERS, MAX_HEADER_NAME_LEN, MAX_HEADER_VALUE_LEN, MAX_STRING_LEN};

const TAG_HTTP: u8 = 0x10;
const TAG_RESPONSE: u8 = 0x11;
const TAG_TCP: u8 = 0x12;
const TAG_RESPONSE_FRAMED: u8 = 0x13;
const TAG_CHUNK_DATA: u8 = 0x14;
const TAG_CHUNK_TRAILERS: u8 = 0x15;
const TAG_RESPONSE_LANE: u8 = 0x16;
const TAG_LANE_BODY: u8 = 0x17;

/// Most body bytes one [`BodyChunk::Data`] frame carries (the frame limit less the tag
/// and the length of the data field).
pub const MAX_CHUNK_DATA: usize = crate::limits::MAX_FRAME_LEN - 5;

/// Header fields as they travel: names lowercase (HTTP/1.1 names are
/// case-insensitive), values raw bytes that need not be UTF-8. On the wire a field list
/// is a count and then each field's name and value, in the map's order; decoding
/// refuses a name or value that HTTP does not allow, so both sides hand the map to
/// hyper without converting it.
pub use http::HeaderMap as Headers;

/// The scheme the visitor used to reach the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The head of an HTTP exchange, sent by the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Which of the session's tunnels this exchange is for.
    pub tunnel_id: u32,
    /// Relay-assigned exchange id, unique per relay run (0 when unknown).
    pub exchange_id: u64,
    /// Request method (`POST`).
    pub method: String,
    /// Origin-form target: path and query (`/stripe?x=1`).
    pub uri: String,
    /// Request headers after the relay's edge processing.
    pub headers: Headers,
    /// Where the visitor connected from, as the relay saw it.
    pub visitor: Option<SocketAddr>,
    /// How the visitor reached the relay.
    pub scheme: Scheme,
}

/// The head of a raw TCP connection carried on a data stream, sent by the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpHead {
    /// Which of the session's tunnels this connection is for.
    pub tunnel_id: u32,
    /// Where the visitor connected from.
    pub visitor: Option<SocketAddr>,
}

/// The first frame of every data stream, sent by the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamHead {
    /// An HTTP exchange; the request body follows.
    Http(RequestHead),
    /// A TCP connection; raw bytes follow both ways.
    Tcp(TcpHead),
}

/// The response head, sent by the client on the data stream; the body follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: Headers,
    /// Whether the body is a sequence of [`BodyChunk`] frames (it may end with
    /// trailers) instead of raw bytes.
    pub framed: bool,
    /// Whether the body (raw bytes) follows on the session's bulk lane, on a stream
    /// that starts with a [`LaneHead`], instead of on this stream. Never with `framed`.
    pub lane: bool,
}

/// The first frame of a unidirectional stream on a bulk lane: which exchange's
/// response body follows, as raw bytes until FIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneHead {
    /// The QUIC id of the exchange's data stream on the session's main connection.
    pub stream_id: u64,
}

impl Frame for LaneHead {
    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u8(TAG_LANE_BODY);
        dst.put_u64(self.stream_id);
        Ok(())
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, Invalid> {
        match r.u8("tag")? {
            TAG_LANE_BODY => Ok(LaneHead {
                stream_id: r.u64("stream id")?,
            }),
            tag => Err(Invalid::UnknownTag(tag)),
        }
    }
}

/// One frame of a framed response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyChunk {
    /// Body bytes, at most [`MAX_CHUNK_DATA`].
    Data(bytes::Bytes),
    /// The trailer fields; the last frame of the body.
    Trailers(Headers),
}

impl Frame for BodyChunk {
    fn encoded_len_hint(&self) -> usize {
        match self {
            BodyChunk::Data(b) => 9 + b.len(),
            BodyChunk::Trailers(h) => 5 + headers_len(h),
        }
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            BodyChunk::Data(b) => {
                dst.put_u8(TAG_CHUNK_DATA);
                put_blob(dst, b, MAX_CHUNK_DATA, "body chunk")
            }
            BodyChunk::Trailers(h) => {
                dst.put_u8(TAG_CHUNK_TRAILERS);
                put_headers(dst, h)
            }
        }
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, Invalid> {
        match r.u8("tag")? {
            TAG_CHUNK_DATA => Ok(BodyChunk::Data(bytes::Bytes::copy_from_slice(
                r.blob(MAX_CHUNK_DATA, "body chunk")?,
            ))),
            TAG_CHUNK_TRAILERS => Ok(BodyChunk::Trailers(read_headers(r)?)),
            tag => Err(Invalid::UnknownTag(tag)),
        }
    }
}

/// The bytes [`put_headers`] writes for `headers`.
fn headers_len(headers: &Headers) -> usize {
    2 + headers
        .iter()
        .map(|(n, v)| 8 + n.as_str().len() + v.len())
        .sum::<usize>()
}

fn put_headers(dst: &mut BytesMut, headers: &Headers) -> Result<(), EncodeError> {
    if headers.len() > MAX_HEADERS {
        return Err(EncodeError::TooLarge("header count"));
    }
    // The count fits: MAX_HEADERS is below u16::MAX.
    dst.put_u16(headers.len() as u16);
    for (name, value) in headers {
        put_blob(
            dst,
            name.as_str().as_bytes(),
            MAX_HEADER_NAME_LEN,
            "header name",
        )?;
        put_blob(dst, value.as_bytes(), MAX_HEADER_VALUE_LEN, "header value")?;
    }
    Ok(())
}

fn read_headers(r: &mut Reader<'_>) -> Result<Headers, Invalid> {
    let count = r.u16("header count")? as usize;
    if count > MAX_HEADERS {
        return Err(Invalid::BadValue("header count"));
    }
    let mut headers = Headers::with_capacity(count);
    for _ in 0..count {
        let name = HeaderName::from_bytes(r.blob(MAX_HEADER_NAME_LEN, "header name")?)
            .map_err(|_| Invalid::BadValue("header name"))?;
        let value = HeaderValue::from_bytes(r.blob(MAX_HEADER_VALUE_LEN, "header value")?)
            .map_err(|_| Invalid::BadValue("header value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn put_addr(dst: &mut BytesMut, addr: Option<SocketAddr>) {
    match addr {
        None => dst.put_u8(0),
        Some(SocketAddr::V4(a)) => {
            dst.put_u8(4);
            dst.put_slice(&a.ip().octets());
            dst.put_u16(a.port());
        }
        Some(SocketAddr::V6(a)) => {
            dst.put_u8(6);
            dst.put_slice(&a.ip().octets());
            dst.put_u16(a.port());
        }
    }
}

fn read_addr(r: &mut Reader<'_>) -> Result<Option<SocketAddr>, Invalid> {
    let ip = match r.u8("address family")? {
        0 => return Ok(None),
        4 => {
            let b = r.bytes(4, "ipv4 address")?;
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        }
        6 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(r.bytes(16, "ipv6 address")?);
            IpAddr::V6(Ipv6Addr::from(a))
        }
        _ => return Err(Invalid::BadValue("address family")),
    };
    Ok(Some(SocketAddr::new(ip, r.u16("port")?)))
}

impl Frame for StreamHead {
    fn encoded_len_hint(&self) -> usize {
        match self {
            // Length prefix, fixed fields, an IPv6 visitor; then what varies.
            StreamHead::Http(h) => 64 + h.method.len() + h.uri.len() + headers_len(&h.headers),
            StreamHead::Tcp(_) => 32,
        }
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            StreamHead::Http(h) => {
                dst.put_u8(TAG_HTTP);
                dst.put_u32(h.tunnel_id);
                dst.put_u64(h.exchange_id);
                dst.put_u8(match h.scheme {
                    Scheme::Http => 0,
                    Scheme::Https => 1,
                });
                put_addr(dst, h.visitor);
                put_string(dst, &h.method, "method")?;
                put_blob(dst, h.uri.as_bytes(), MAX_STRING_LEN, "uri")?;
                put_headers(dst, &h.headers)
            }
            StreamHead::Tcp(t) => {
                dst.put_u8(TAG_TCP);
                dst.put_u32(t.tunnel_id);
                put_addr(dst, t.visitor);
                Ok(())
            }
        }
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, Invalid> {
        match r.u8("tag")? {
            TAG_HTTP => {
                let tunnel_id = r.u32("tunnel id")?;
                let exchange_id = r.u64("exchange id")?;
                let scheme = match r.u8("scheme")? {
                    0 => Scheme::Http,
                    1 => Scheme::Https,
                    _ => return Err(Invalid::BadValue("scheme")),
                };
                let visitor = read_addr(r)?;
                let method = r.string("method")?;
                if method.is_empty() {
                    return Err(Invalid::BadValue("method"));
                }
                Ok(StreamHead::Http(RequestHead {
                    tunnel_id,
                    exchange_id,
                    scheme,
                    visitor,
                    method,
                    uri: r.string("uri")?,
                    headers: read_headers(r)?,
                }))
            }
            TAG_TCP => Ok(StreamHead::Tcp(TcpHead {
                tunnel_id: r.u32("tunnel id")?,
                visitor: read_addr(r)?,
            })),
            tag => Err(Invalid::UnknownTag(tag)),
        }
    }
}

impl Frame for ResponseHead {
    fn encoded_len_hint(&self) -> usize {
        7 + headers_len(&self.headers)
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u8(match (self.framed, self.lane) {
            (false, false) => TAG_RESPONSE,
            (true, false) => TAG_RESPONSE_FRAMED,
            (false, true) => TAG_RESPONSE_LANE,
            (true, true) => {
                return Err(EncodeError::Inconsistent(
                    "a framed body cannot go on a lane",
                ))
            }
        });
        dst.put_u16(self.status);
        put_headers(dst, &self.headers)
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, Invalid> {
        match r.u8("tag")? {
            tag @ (TAG_RESPONSE | TAG_RESPONSE_FRAMED | TAG_RESPONSE_LANE) => {
                let status = r.u16("status")?;
                if !(100..=999).contains(&status) {
                    return Err(Invalid::BadValue("status"));
                }
                Ok(ResponseHead {
                    status,
                    headers: read_headers(r)?,
                    framed: tag == TAG_RESPONSE_FRAMED,
                    lane: tag == TAG_RESPONSE_LANE,
                })
            }
            tag => Err(Invalid::UnknownTag(tag)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::testing::{check, round_trip};
    use crate::codec::DecodeError;
    use crate::limits::MAX_FRAME_LEN;

    /// A header map from name and value pairs, in order.
    fn headers<const N: usize>(pairs: [(&str, &[u8]); N]) -> Headers {
        let mut map = Headers::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        map
    }

    fn sample_request() -> RequestHead {
        RequestHead {
            tunnel_id: 1,
            exchange_id: 2,
            method: "POST".into(),
            uri: "/a".into(),
            headers: headers([("x", &[0xff])]),
            visitor: Some("127.0.0.1:80".parse().unwrap()),
            scheme: Scheme::Https,
        }
    }

    #[test]
    fn request_head_golden() {
        check(
            &StreamHead::Http(sample_request()),
            concat!(
                "0000002f",         // frame length 47
                "10",               // tag
                "00000001",         // tunnel id
                "0000000000000002", // exchange id
                "01",               // https
                "047f0000010050",   // 127.0.0.1:80
                "00000004504f5354", // POST
                "000000022f61",     // /a
                "0001",             // one header
                "0000000178",       // x
                "00000001ff",       // 0xff
            ),
        );
    }

    #[test]
    fn response_and_tcp_heads_golden() {
        check(
            &ResponseHead {
                status: 204,
                headers: Headers::new(),
                framed: false,
                lane: false,
            },
            "000000051100cc0000",
        );
        check(
            &ResponseHead {
                status: 200,
                headers: Headers::new(),
                framed: true,
                lane: false,
            },
            "000000051300c80000",
        );
        check(
            &ResponseHead {
                status: 200,
                headers: Headers::new(),
                framed: false,
                lane: true,
            },
            "000000051600c80000",
        );
        check(&LaneHead { stream_id: 4 }, "00000009170000000000000004");
        assert!(ResponseHead {
            status: 200,
            headers: Headers::new(),
            framed: true,
            lane: true,
        }
        .encode(&mut BytesMut::new())
        .is_err());
        check(
            &StreamHead::Tcp(TcpHead {
                tunnel_id: 9,
                visitor: None,
            }),
            "00000006120000000900",
        );
    }

    /// A head's size hint covers its frame, with little to spare.
    #[test]
    fn head_size_hints_cover_the_frame() {
        let mut v6 = sample_request();
        v6.visitor = Some("[2001:db8::1]:443".parse().unwrap());
        let heads = [
            StreamHead::Http(sample_request()),
            StreamHead::Http(v6),
            StreamHead::Tcp(TcpHead {
                tunnel_id: 1,
                visitor: Some("[2001:db8::1]:443".parse().unwrap()),
            }),
        ];
        for head in heads {
            let mut buf = BytesMut::new();
            head.encode(&mut buf).unwrap();
            let hint = head.encoded_len_hint();
            assert!(
                (buf.len()..buf.len() + 64).contains(&hint),
                "{hint} for {} bytes",
                buf.len()
            );
        }
        let resp = ResponseHead {
            status: 200,
            headers: headers([("content-type", b"text/plain"), ("x", b"")]),
            framed: false,
            lane: false,
        };
        let trailers = BodyChunk::Trailers(resp.headers.clone());
        let data = BodyChunk::Data(vec![1u8; 5000].into());
        for frame in [&resp as &dyn Hinted, &trailers, &data] {
            let (len, hint) = frame.lengths();
            assert_eq!(len, hint, "exact for a response head and body chunks");
        }
    }

    /// A frame's encoded length and its hint.
    trait Hinted {
        fn lengths(&self) -> (usize, usize);
    }

    impl<T: Frame> Hinted for T {
        fn lengths(&self) -> (usize, usize) {
            let mut buf = BytesMut::new();
            self.encode(&mut buf).unwrap();
            (buf.len(), self.encoded_len_hint())
        }
    }

    #[test]
    fn heads_round_trip() {
        let mut req = sample_request();
        req.visitor = Some("[2001:db8::1]:443".parse().unwrap());
        req.scheme = Scheme::Http;
        req.headers = (0..MAX_HEADERS)
            .map(|i| {
                let name = HeaderName::from_bytes(format!("h{}", i % 7).as_bytes()).unwrap();
                (name, HeaderValue::from(i))
            })
            .collect();
        round_trip(&StreamHead::Http(req));
        round_trip(&StreamHead::Tcp(TcpHead {
            tunnel_id: u32::MAX,
            visitor: Some("10.0.0.1:1".parse().unwrap()),
        }));
        round_trip(&ResponseHead {
            status: 502,
            headers: headers([("content-type", b"text/plain")]),
            framed: false,
            lane: false,
        });
        round_trip(&ResponseHead {
            status: 200,
            headers: headers([("content-type", b"application/grpc")]),
            framed: true,
            lane: false,
        });
        round_trip(&BodyChunk::Data(bytes::Bytes::from(vec![
            7u8;
            MAX_CHUNK_DATA
        ])));
        round_trip(&BodyChunk::Data(bytes::Bytes::new()));
        round_trip(&BodyChunk::Trailers(Headers::new()));
    }

    #[test]
    fn over_limit_heads_are_refused_both_ways() {
        let mut req = sample_request();
        req.headers = (0..=MAX_HEADERS)
            .map(|_| (HeaderName::from_static("h"), HeaderValue::from_static("")))
            .collect();
        let mut buf = BytesMut::new();
        assert_eq!(
            StreamHead::Http(req.clone()).encode(&mut buf),
            Err(EncodeError::TooLarge("header count"))
        );
        assert!(buf.is_empty(), "a refused frame leaves nothing behind");
        // Hand-craft a frame that claims too many headers.
        let mut ok = sample_request();
        ok.headers.clear();
        StreamHead::Http(ok).encode(&mut buf).unwrap();
        let n = buf.len();
        buf[n - 2..].copy_from_slice(&((MAX_HEADERS + 1) as u16).to_be_bytes());
        assert_eq!(
            StreamHead::decode(&buf),
            Err(DecodeError::Invalid(Invalid::BadValue("header count")))
        );
        // A frame over the size limit is refused when encoding.
        let mut huge = sample_request();
        let big = HeaderValue::from_bytes(&[b'a'; MAX_HEADER_VALUE_LEN]).unwrap();
        huge.headers = (0..5)
            .map(|_| (HeaderName::from_static("h"), big.clone()))
            .collect();
        let mut buf = BytesMut::new();
        assert_eq!(
            StreamHead::Http(huge).encode(&mut buf),
            Err(EncodeError::TooLarge("frame"))
        );
        assert!(buf.is_empty(), "a refused frame leaves nothing behind");
        let _ = MAX_FRAME_LEN;
    }

    #[test]
    fn header_fields_http_refuses_are_invalid() {
        // The golden request's one field is `x: 0xff`; its name and value bytes are
        // the frame's last bytes.
        let mut buf = BytesMut::new();
        StreamHead::Http(sample_request()).encode(&mut buf).unwrap();
        let n = buf.len();
        for (at, byte, field) in [
            (n - 6, b' ', "header name"),
            (n - 6, b':', "header name"),
            (n - 1, b'\n', "header value"),
            (n - 1, 0, "header value"),
        ] {
            let mut bad = buf.to_vec();
            bad[at] = byte;
            assert_eq!(
                StreamHead::decode(&bad),
                Err(DecodeError::Invalid(Invalid::BadValue(field))),
                "byte {byte:#x} at {at}"
            );
        }
        // Upper case in a name is taken and lowered, as HTTP/1.1 allows.
        let mut upper = buf.to_vec();
        upper[n - 6] = b'X';
        let (StreamHead::Http(head), _) = StreamHead::decode(&upper).unwrap() else {
            panic!("not an HTTP head")
        };
        assert_eq!(head.headers, sample_request().headers);
    }

    #[test]
    fn bad_status_and_fields_are_invalid() {
        let mut buf = BytesMut::new();
        ResponseHead {
            status: 200,
            headers: Headers::new(),
            framed: false,
            lane: false,
        }
        .encode(&mut buf)
        .unwrap();
        buf[5..7].copy_from_slice(&42u16.to_be_bytes());
        assert_eq!(
            ResponseHead::decode(&buf),
            Err(DecodeError::Invalid(Invalid::BadValue("status")))
        );
        assert!(StreamHead::decode(&[0, 0, 0, 1, 0x11]).is_err());
        assert!(ResponseHead::decode(&[0, 0, 0, 1, 0x10]).is_err());
    }

    #[test]
    fn body_chunks_golden_and_limits() {
        check(
            &BodyChunk::Data(bytes::Bytes::from_static(b"hi")),
            concat!("00000007", "14", "00000002", "6869"),
        );
        check(
            &BodyChunk::Trailers(headers([("grpc-status", b"0")])),
            concat!(
                "00000017",                 // frame length 23
                "15",                       // trailers
                "0001",                     // one field
                "0000000b677270632d737461", // "grpc-sta…
                "747573",                   // …tus"
                "0000000130",               // "0"
            ),
        );
        let mut buf = BytesMut::new();
        assert_eq!(
            BodyChunk::Data(bytes::Bytes::from(vec![0u8; MAX_CHUNK_DATA + 1])).encode(&mut buf),
            Err(EncodeError::TooLarge("body chunk"))
        );
        assert!(buf.is_empty());
        assert_eq!(
            BodyChunk::decode(&[0, 0, 0, 1, 0x11]),
            Err(DecodeError::Invalid(Invalid::UnknownTag(0x11)))
        );
    }

    /// A cheap deterministic fuzz: mutate valid frames byte by byte; decoding must
    /// answer without panicking, and anything it accepts must re-encode.
    #[test]
    fn mutated_frames_never_panic() {
        let mut buf = BytesMut::new();
        StreamHead::Http(sample_request()).encode(&mut buf).unwrap();
        let base = buf.to_vec();
        for i in 0..base.len() {
            for v in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut m = base.clone();
                m[i] = v;
                if let Ok((head, _)) = StreamHead::decode(&m) {
                    let mut again = BytesMut::new();
                    head.encode(&mut again).unwrap();
                }
                let _ = ResponseHead::decode(&m);
                let _ = BodyChunk::decode(&m);
            }
        }
    }
}

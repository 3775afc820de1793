//! Edge policy: what a client asks the relay to enforce for one tunnel before a
//! request crosses it — basic auth, IP allow and deny lists, request and response
//! header edits, a body limit — carried in the bind as the critical
//! [`shared_proto::options::EDGE_POLICY`] option, as compact JSON.
//!
//! Pure rules over request heads: [`crate::ingress`] applies them and answers each
//! refusal. Basic-auth passwords arrive as SHA-256 digests (the client hashes them),
//! are compared in constant time and never logged; `Debug` masks them.

use std::net::IpAddr;

use base64::Engine as _;
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use http::StatusCode;

use crate::headers::declared_length;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use shared_proto::TunnelOption;
use subtle::ConstantTimeEq;

/// Longest body a relay reads before forwarding, to check an operator's signature
/// rule; larger requests to such a name get 413.
pub const VERIFY_BODY_CAP: u64 = 25 * 1024 * 1024;

/// The `kind` of every refusal, in the order of the relay's refusal counters.
pub const REFUSAL_KINDS: [&str; 4] = [
    "auth-required",
    "ip-denied",
    "body-too-large",
    "signature-invalid",
];

/// What the ingress enforces for one bound tunnel beyond routing, and where it tells
/// the client about refusals.
#[derive(Debug, Default)]
pub struct TunnelEdge {
    /// The client's edge policy, if it declared one.
    pub policy: Option<CompiledPolicy>,
    /// Refusal notices for the session's control stream, if the client asked for them.
    pub notices: Option<Notices>,
}

/// Where a session's refusal notices go. The messages are boxed: a tokio channel
/// allocates its first block of 32 slots when it is made, once per session, and 32
/// `ServerMessage`s are 3 KiB where 32 boxes are 256 bytes.
pub type Notices = tokio::sync::mpsc::Sender<Box<shared_proto::ServerMessage>>;

/// One tunnel's edge policy as the client declares it (the option's JSON shape).
/// Every field is optional; an empty policy is not sent.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgePolicy {
    /// Visitors must send `Authorization: Basic` with one of these users (401 else).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub basic_auth: Vec<BasicAuthUser>,
    /// Only visitors in these networks get through (403 else); empty allows all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_ips: Vec<IpNet>,
    /// Visitors in these networks are refused (403); deny wins over allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_ips: Vec<IpNet>,
    /// Headers set on requests before they cross the tunnel (replacing any of the
    /// same name), as `[name, value]` pairs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_add: Vec<(String, String)>,
    /// Headers removed from requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_remove: Vec<String>,
    /// Headers set on responses before they reach the visitor.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_add: Vec<(String, String)>,
    /// Headers removed from responses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_remove: Vec<String>,
    /// Largest request body, in bytes (413 beyond).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
}

impl std::fmt::Debug for EdgePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgePolicy")
            .field("basic_auth", &self.basic_auth)
            .field("allow_ips", &self.allow_ips)
            .field("deny_ips", &self.deny_ips)
            .field("request_headers_add", &self.request_headers_add)
            .field("request_headers_remove", &self.request_headers_remove)
            .field("response_headers_add", &self.response_headers_add)
            .field("response_headers_remove", &self.response_headers_remove)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

/// One basic-auth user: the name and the SHA-256 of the password, in hex.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthUser {
    /// User name.
    pub user: String,
    /// Lowercase hex SHA-256 of the password.
    pub password_sha256: String,
}

impl BasicAuthUser {
    /// A user from a plain password, hashed here so it never leaves the client.
    pub fn new(user: &str, password: &str) -> Self {
        Self {
            user: user.to_owned(),
            password_sha256: hex::encode(sha256(password.as_bytes())),
        }
    }
}

impl std::fmt::Debug for BasicAuthUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BasicAuthUser({}, MASKED)", self.user)
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Why a policy option could not be used; the relay refuses the bind with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The option's value is not the expected JSON.
    #[error("edge policy is not valid: {0}")]
    Malformed(String),
    /// A header name or value cannot be used.
    #[error("edge policy header {0:?} is not a valid header name or value")]
    BadHeader(String),
    /// A basic-auth entry is unusable.
    #[error("edge policy basic_auth user {0:?} needs a 64-hex-digit password_sha256 and a user without ':'")]
    BadUser(String),
}

impl EdgePolicy {
    /// Whether the policy asks for nothing.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The bind option carrying this policy (critical: a relay that cannot enforce it
    /// must refuse the tunnel).
    pub fn to_option(&self) -> TunnelOption {
        // Serializing plain strings, numbers and networks cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        TunnelOption::new(
            shared_proto::options::EDGE_POLICY | TunnelOption::CRITICAL,
            json,
        )
    }

    /// Parses an option value.
    pub fn from_option_value(value: &[u8]) -> Result<Self, PolicyError> {
        serde_json::from_slice(value).map_err(|e| PolicyError::Malformed(e.to_string()))
    }

    /// Checks names and values once, at bind time.
    pub fn compile(&self) -> Result<CompiledPolicy, PolicyError> {
        let users = self
            .basic_auth
            .iter()
            .map(|u| {
                let digest = hex::decode(&u.password_sha256)
                    .ok()
                    .and_then(|d| <[u8; 32]>::try_from(d).ok())
                    .filter(|_| !u.user.contains(':'))
                    .ok_or_else(|| PolicyError::BadUser(u.user.clone()))?;
                Ok((u.user.clone(), digest))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CompiledPolicy {
            users,
            allow: self.allow_ips.clone(),
            deny: self.deny_ips.clone(),
            req_add: header_pairs(&self.request_headers_add)?,
            req_remove: header_names(&self.request_headers_remove)?,
            resp_add: header_pairs(&self.response_headers_add)?,
            resp_remove: header_names(&self.response_headers_remove)?,
            max_body_bytes: self.max_body_bytes,
        })
    }
}

fn header_pairs(pairs: &[(String, String)]) -> Result<Vec<(HeaderName, HeaderValue)>, PolicyError> {
    pairs
        .iter()
        .map(|(n, v)| {
            match (
                HeaderName::from_bytes(n.trim().as_bytes()),
                HeaderValue::from_str(v.trim()),
            ) {
                (Ok(n), Ok(v)) => Ok((n, v)),
                _ => Err(PolicyError::BadHeader(n.clone())),
            }
        })
        .collect()
}

fn header_names(names: &[String]) -> Result<Vec<HeaderName>, PolicyError> {
    names
        .iter()
        .map(|n| {
            HeaderName::from_bytes(n.trim().as_bytes())
                .map_err(|_| PolicyError::BadHeader(n.clone()))
        })
        .collect()
}

/// A policy checked and ready to apply to requests.
#[derive(Clone)]
pub struct CompiledPolicy {
    users: Vec<(String, [u8; 32])>,
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    req_add: Vec<(HeaderName, HeaderValue)>,
    req_remove: Vec<HeaderName>,
    resp_add: Vec<(HeaderName, HeaderValue)>,
    resp_remove: Vec<HeaderName>,
    /// Largest request body, in bytes.
    pub max_body_bytes: Option<u64>,
}

impl std::fmt::Debug for CompiledPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPolicy")
            .field(
                "users",
                &self.users.iter().map(|u| &u.0).collect::<Vec<_>>(),
            )
            .field("allow", &self.allow)
            .field("deny", &self.deny)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

/// A request the relay refuses at the edge: the status, a short kind for the
/// `x-porthole-error` header and metrics, and the text the visitor reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 401, 403 or 413.
    pub status: StatusCode,
    /// `auth-required`, `ip-denied`, `body-too-large`, `signature-invalid`.
    pub kind: &'static str,
    /// One sentence for the visitor (and the client's inspector).
    pub message: String,
}

impl CompiledPolicy {
    /// Whether a visitor at `ip` with these request headers may pass. IP rules come
    /// first (a denied network never learns whether auth exists), then basic auth,
    /// then a declared body length over the limit.
    pub fn admit(&self, ip: IpAddr, headers: &HeaderMap) -> Result<(), Refusal> {
        let ip = canonical(ip);
        if self.deny.iter().any(|n| n.contains(&ip))
            || (!self.allow.is_empty() && !self.allow.iter().any(|n| n.contains(&ip)))
        {
            return Err(Refusal {
                status: StatusCode::FORBIDDEN,
                kind: "ip-denied",
                message: format!("porthole: requests from {ip} are not allowed on this tunnel"),
            });
        }
        if !self.users.is_empty() && !self.authorized(headers) {
            return Err(Refusal {
                status: StatusCode::UNAUTHORIZED,
                kind: "auth-required",
                message: "porthole: this tunnel requires a user name and password".into(),
            });
        }
        if let (Some(max), Some(len)) = (self.max_body_bytes, declared_length(headers)) {
            if len > max {
                return Err(body_too_large(max));
            }
        }
        Ok(())
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(creds) = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("basic").then_some(rest.trim())
            })
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        else {
            return false;
        };
        let Some(colon) = creds.iter().position(|&b| b == b':') else {
            return false;
        };
        let (user, pass) = (&creds[..colon], &creds[colon + 1..]);
        let digest = sha256(pass);
        // Every user is compared, so timing does not tell which names exist.
        let mut ok = subtle::Choice::from(0u8);
        for (u, d) in &self.users {
            ok |= u.as_bytes().ct_eq(user) & d.ct_eq(&digest);
        }
        ok.into()
    }

    /// Whether basic auth is required (the 401 then carries `WWW-Authenticate`).
    pub fn wants_auth(&self) -> bool {
        !self.users.is_empty()
    }

    /// Applies the request header edits; with basic auth, the visitor's credentials
    /// are removed so they never reach the target or its inspector.
    pub fn edit_request(&self, headers: &mut HeaderMap) {
        if self.wants_auth() {
            headers.remove(AUTHORIZATION);
        }
        for n in &self.req_remove {
            headers.remove(n);
        }
        for (n, v) in &self.req_add {
            headers.insert(n.clone(), v.clone());
        }
    }

    /// Applies the response header edits.
    pub fn edit_response(&self, headers: &mut HeaderMap) {
        for n in &self.resp_remove {
            headers.remove(n);
        }
        for (n, v) in &self.resp_add {
            headers.insert(n.clone(), v.clone());
        }
    }
}

/// The 413 refusal for a body over `max` bytes.
pub fn body_too_large(max: u64) -> Refusal {
    Refusal {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        kind: "body-too-large",
        message: format!("porthole: request body exceeds this tunnel's limit of {max} bytes"),
    }
}

/// The `WWW-Authenticate` value of a 401.
pub fn www_authenticate() -> (HeaderName, HeaderValue) {
    (
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"porthole\", charset=\"UTF-8\""),
    )
}

/// IPv4-mapped IPv6 addresses compare as IPv4, so `127.0.0.0/8` matches a dual-stack
/// listener's `::ffff:127.0.0.1`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The visitor's address for IP rules: the peer, or — when the peer is a trusted
/// proxy — the nearest `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let chain: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    chain
        .into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn basic(user: &str, pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
    }

    #[test]
    fn option_round_trips_and_hides_the_password() {
        let p = EdgePolicy {
            basic_auth: vec![BasicAuthUser::new("ops", "hunter2")],
            allow_ips: vec!["10.0.0.0/8".parse().unwrap()],
            max_body_bytes: Some(10),
            ..Default::default()
        };
        let o = p.to_option();
        assert!(o.is_critical());
        let json = String::from_utf8(o.value.clone()).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        assert_eq!(EdgePolicy::from_option_value(&o.value).unwrap(), p);
        assert!(!format!("{p:?}").contains(&p.basic_auth[0].password_sha256));
        assert!(EdgePolicy::from_option_value(b"{\"nope\":1}").is_err());
        assert!(EdgePolicy::default().is_empty());
    }

    #[test]
    fn ip_lists_auth_and_length() {
        let p = EdgePolicy {
            basic_auth: vec![BasicAuthUser::new("ops", "pw:with:colons")],
            allow_ips: vec!["127.0.0.0/8".parse().unwrap()],
            deny_ips: vec!["127.0.0.2/32".parse().unwrap()],
            max_body_bytes: Some(10),
            ..Default::default()
        }
        .compile()
        .unwrap();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let auth = basic("ops", "pw:with:colons");
        let ok = headers(&[("authorization", &auth)]);
        assert_eq!(p.admit(local, &ok), Ok(()));
        assert_eq!(p.admit(mapped, &ok), Ok(()));
        let denied = p.admit("127.0.0.2".parse().unwrap(), &ok).unwrap_err();
        assert_eq!(denied.status, StatusCode::FORBIDDEN);
        let outside = p.admit("192.0.2.1".parse().unwrap(), &ok).unwrap_err();
        assert_eq!(outside.status, StatusCode::FORBIDDEN);
        for bad in [
            basic("ops", "wrong"),
            basic("root", "pw:with:colons"),
            "Bearer x".into(),
            "Basic !!!".into(),
        ] {
            let r = p.admit(local, &headers(&[("authorization", &bad)]));
            assert_eq!(r.unwrap_err().status, StatusCode::UNAUTHORIZED, "{bad}");
        }
        let big = headers(&[("authorization", &auth), ("content-length", "11")]);
        assert_eq!(
            p.admit(local, &big).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn header_edits() {
        let p = EdgePolicy {
            request_headers_add: vec![("x-env".into(), "dev".into())],
            request_headers_remove: vec!["x-secret".into()],
            response_headers_add: vec![("x-frame-options".into(), "DENY".into())],
            response_headers_remove: vec!["server".into()],
            ..Default::default()
        }
        .compile()
        .unwrap();
        let mut h = headers(&[("x-secret", "1"), ("x-env", "prod")]);
        p.edit_request(&mut h);
        assert!(h.get("x-secret").is_none());
        assert_eq!(h.get("x-env").unwrap(), "dev");
        let mut r = headers(&[("server", "nginx")]);
        p.edit_response(&mut r);
        assert!(r.get("server").is_none());
        assert_eq!(r.get("x-frame-options").unwrap(), "DENY");
        let bad = EdgePolicy {
            request_headers_add: vec![("bad name".into(), "v".into())],
            ..Default::default()
        };
        assert!(matches!(bad.compile(), Err(PolicyError::BadHeader(_))));
    }

    #[test]
    fn client_ip_trusts_only_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers(&[("x-forwarded-for", "198.51.100.7, 10.0.0.3")]);
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip("192.0.2.1".parse().unwrap(), &h, &trusted),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }
}

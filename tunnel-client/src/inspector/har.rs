//! HAR 1.2 export of captured exchanges (what browsers' devtools and many HTTP tools
//! import). Pure: exchanges in, JSON out.
//!
//! Bodies that are not UTF-8 are exported base64 with `"encoding": "base64"` (standard
//! on `content`; on `postData` it is the common extension that importers accept).
//! Porthole-specific fields start with `_`, as the format asks.

use base64::Engine as _;
use serde_json::{json, Value};

use super::time;
use crate::capture::{CapturedBody, Exchange};

/// A HAR 1.2 document holding `exchanges` in the given order.
pub(crate) fn document(exchanges: &[Exchange]) -> Value {
    json!({
        "log": {
            "version": "1.2",
            "creator": { "name": "porthole", "version": env!("CARGO_PKG_VERSION") },
            "pages": [],
            "entries": exchanges.iter().map(entry).collect::<Vec<_>>(),
        }
    })
}

fn entry(ex: &Exchange) -> Value {
    let total = time::millis(ex.duration);
    let wait = ex.time_to_head.map_or(total, time::millis);
    let req = &ex.request;
    let mut request = json!({
        "method": req.method,
        "url": url(ex),
        "httpVersion": "HTTP/1.1",
        "cookies": [],
        "headers": headers(&req.headers),
        "queryString": query_string(&req.uri),
        "headersSize": -1,
        "bodySize": req.body.size,
    });
    if req.body.size > 0 || !req.body.bytes.is_empty() {
        let mime = header(&req.headers, "content-type").unwrap_or_default();
        let mut post = json!({ "mimeType": mime, "params": [] });
        body_into(&mut post, &req.body);
        request["postData"] = post;
    }
    let response = match &ex.response {
        Some(resp) => {
            let mime = header(&resp.headers, "content-type").unwrap_or_default();
            let mut content = json!({ "size": resp.body.size, "mimeType": mime });
            body_into(&mut content, &resp.body);
            json!({
                "status": resp.status,
                "statusText": http::StatusCode::from_u16(resp.status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or(""),
                "httpVersion": "HTTP/1.1",
                "cookies": [],
                "headers": headers(&resp.headers),
                "content": content,
                "redirectURL": header(&resp.headers, "location").unwrap_or_default(),
                "headersSize": -1,
                "bodySize": resp.body.size,
            })
        }
        // HAR requires a response; status 0 is what browsers export for failed requests.
        None => json!({
            "status": 0,
            "statusText": "",
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": [],
            "content": { "size": 0, "mimeType": "" },
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": -1,
        }),
    };
    json!({
        "startedDateTime": time::rfc3339(ex.started_at),
        "time": total,
        "request": request,
        "response": response,
        "cache": {},
        "timings": { "send": 0, "wait": wait, "receive": (total - wait).max(0.0) },
        "_id": ex.id.0,
        "_replayOf": ex.replay_of.map(|r| r.0),
        "_tunnel": ex.tunnel,
        "_outcome": ex.outcome.kind(),
        "_error": ex.outcome.reason(),
    })
}

fn body_into(obj: &mut Value, body: &CapturedBody) {
    match std::str::from_utf8(&body.bytes) {
        Ok(text) => obj["text"] = Value::from(text),
        Err(_) => {
            obj["text"] = base64::engine::general_purpose::STANDARD
                .encode(&body.bytes)
                .into();
            obj["encoding"] = "base64".into();
        }
    }
    if body.truncated {
        obj["comment"] = format!("captured {} of {} bytes", body.bytes.len(), body.size).into();
    }
}

fn headers(headers: &[(String, Vec<u8>)]) -> Value {
    headers
        .iter()
        .map(|(n, v)| json!({ "name": n, "value": String::from_utf8_lossy(v) }))
        .collect()
}

fn header(headers: &[(String, Vec<u8>)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// An absolute URL: the request's Host when present, else the tunnel name.
fn url(ex: &Exchange) -> String {
    let uri = &ex.request.uri;
    if uri.starts_with("http://") || uri.starts_with("https://") {
        return uri.clone();
    }
    let host = header(&ex.request.headers, "host")
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| {
            if ex.tunnel.is_empty() {
                "localhost".to_owned()
            } else {
                ex.tunnel.clone()
            }
        });
    format!("http://{host}{uri}")
}

fn query_string(uri: &str) -> Value {
    let Some((_, query)) = uri.split_once('?') else {
        return json!([]);
    };
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
            json!({ "name": n, "value": v })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_split() {
        assert_eq!(query_string("/a"), json!([]));
        assert_eq!(
            query_string("/a?x=1&y&z=a=b"),
            json!([{"name":"x","value":"1"},{"name":"y","value":""},{"name":"z","value":"a=b"}])
        );
    }
}

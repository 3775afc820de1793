//! One module per signing scheme. Each exposes `verify(…) -> Result<(), Verdict>`
//! (`Ok` is [`Verdict::Valid`]) and `sign(…)` returning the headers to set, and keeps
//! the provider's published test vectors in its tests. Shared here: header access
//! that turns absence and garbage into the right [`Verdict`].

pub(crate) mod discord;
pub(crate) mod github;
pub(crate) mod gitlab;
pub(crate) mod paddle;
pub(crate) mod shopify;
pub(crate) mod slack;
pub(crate) mod square;
pub(crate) mod standard;
pub(crate) mod stripe;
pub(crate) mod twilio;

use crate::{SignedRequest, Verdict};

/// The trimmed text of header `name`: [`Verdict::MissingHeader`] when absent,
/// [`Verdict::Malformed`] when not UTF-8 or empty.
pub(crate) fn header<'a>(req: &SignedRequest<'a>, name: &'static str) -> Result<&'a str, Verdict> {
    header_any(req, &[name])
}

/// Like [`header`], trying each name in turn; a miss reports the first name.
pub(crate) fn header_any<'a>(
    req: &SignedRequest<'a>,
    names: &[&'static str],
) -> Result<&'a str, Verdict> {
    let (name, raw) = names
        .iter()
        .find_map(|&n| req.header(n).map(|v| (n, v)))
        .ok_or(Verdict::MissingHeader(names[0]))?;
    let text = std::str::from_utf8(raw)
        .map_err(|_| malformed(name, "not valid UTF-8"))?
        .trim();
    if text.is_empty() {
        return Err(malformed(name, "empty value"));
    }
    Ok(text)
}

/// Parses a unix-seconds timestamp.
pub(crate) fn unix_seconds(field: &'static str, text: &str) -> Result<i64, Verdict> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(field, "expected a unix timestamp in seconds"));
    }
    text.parse()
        .map_err(|_| malformed(field, "timestamp out of range"))
}

pub(crate) fn malformed(field: &'static str, reason: &'static str) -> Verdict {
    Verdict::Malformed { field, reason }
}

/// How a timestamped signature header is laid out: Stripe's `t=…,v1=…,v1=…` and
/// Paddle's `ts=…;h1=…;h1=…` differ only in these.
pub(crate) struct TimestampedHex {
    /// The header.
    pub header: &'static str,
    /// Separator between `key=value` elements.
    pub separator: char,
    /// Key of the timestamp (the first one counts).
    pub ts_key: &'static str,
    /// Key of each hex HMAC-SHA256 signature (any may match: secret rotation).
    pub sig_key: &'static str,
    /// Malformed reason when no timestamp is present.
    pub no_ts: &'static str,
    /// Malformed reason when no signature is present.
    pub no_sig: &'static str,
}

impl TimestampedHex {
    /// Verifies the header against `tag(timestamp)`, then the timestamp's age. A
    /// signature that is not 64 hex digits cannot match; it is skipped like a wrong one.
    pub(crate) fn verify(
        &self,
        req: &SignedRequest<'_>,
        tag: impl Fn(i64) -> [u8; 32],
        now: i64,
        tolerance: std::time::Duration,
        future: crate::verdict::Future,
    ) -> Result<(), Verdict> {
        let value = header(req, self.header)?;
        let mut ts = None;
        let mut sigs = Vec::new();
        for item in value.split(self.separator) {
            match item.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                Some((k, t)) if k == self.ts_key && ts.is_none() => ts = Some(t),
                Some((k, sig)) if k == self.sig_key => sigs.push(sig),
                _ => {}
            }
        }
        let ts = ts.ok_or(malformed(self.header, self.no_ts))?;
        let ts = unix_seconds(self.header, ts)?;
        if sigs.is_empty() {
            return Err(malformed(self.header, self.no_sig));
        }
        let expected = tag(ts);
        let matched = sigs
            .iter()
            .filter_map(|s| crate::crypto::hex_decode_exact::<32>(s))
            .any(|sig| crate::crypto::ct_eq(&sig, &expected));
        if !matched {
            return Err(Verdict::InvalidSignature);
        }
        crate::verdict::check_window(ts, now, tolerance, future)
    }
}

/// A header to set, as [`crate::Verifier::sign`] returns them.
pub(crate) fn set(name: &str, value: impl Into<String>) -> (String, String) {
    (name.to_owned(), value.into())
}

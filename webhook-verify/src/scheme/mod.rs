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

/// A header to set, as [`crate::Verifier::sign`] returns them.
pub(crate) fn set(name: &str, value: impl Into<String>) -> (String, String) {
    (name.to_owned(), value.into())
}

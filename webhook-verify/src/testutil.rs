//! Test helpers: owned header lists and applying signed headers to them.

/// Builds an owned header list from text pairs.
pub(crate) fn headers(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
        .collect()
}

/// Replaces (case-insensitively) or appends header `name`.
pub(crate) fn set_header(headers: &mut Vec<(String, Vec<u8>)>, name: &str, value: &[u8]) {
    headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    headers.push((name.to_owned(), value.to_vec()));
}

/// Removes header `name` (case-insensitively).
pub(crate) fn remove_header(headers: &mut Vec<(String, Vec<u8>)>, name: &str) {
    headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
}

/// `base` with every header from [`crate::Verifier::sign`] set, as a relay would.
pub(crate) fn apply(
    base: &[(String, Vec<u8>)],
    signed: &[(String, String)],
) -> Vec<(String, Vec<u8>)> {
    let mut out = base.to_vec();
    for (n, v) in signed {
        set_header(&mut out, n, v.as_bytes());
    }
    out
}

/// Changes one character of `text` at byte `at` (an ASCII position) to a different
/// character that is valid in both hex and base64, so the result still parses.
pub(crate) fn flip_char(text: &str, at: usize) -> String {
    let mut bytes = text.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    String::from_utf8(bytes).expect("ASCII in, ASCII out")
}

/// `body` with its byte at `at` changed.
pub(crate) fn flip_byte(body: &[u8], at: usize) -> Vec<u8> {
    let mut out = body.to_vec();
    out[at] ^= 0x01;
    out
}

//! [`Secret`]: key bytes that never print.

use std::fmt;

/// A shared secret or private key. `Debug` prints `MASKED`; the bytes are reachable
/// only through [`Secret::expose`], so leaking them takes intent.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(Vec<u8>);

impl Secret {
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The key bytes. Never log them.
    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let s = Secret::new(b"hunter2".to_vec());
        assert_eq!(format!("{s:?}"), "MASKED");
        assert_eq!(format!("{s:#?}"), "MASKED");
        assert_eq!(s.expose(), b"hunter2");
    }
}

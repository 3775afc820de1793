//! [`TunnelName`]: a public tunnel name, parsed once at the edge.
//!
//! A name is one DNS label: 1 to 63 characters of `a-z`, `0-9` and `-`, neither
//! starting nor ending with `-`. Upper case is folded to lower case, because DNS names
//! are case-insensitive and the relay routes `Pay-Hooks.example.com` to `pay-hooks`.

use std::fmt;

/// Why a string is not a valid tunnel name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty, or longer than 63 characters.
    #[error("a tunnel name must be 1 to 63 characters long")]
    Length,
    /// A character outside `a-z 0-9 -`.
    #[error("a tunnel name may contain only letters, digits and '-' (found {0:?})")]
    Char(char),
    /// Starts or ends with `-`.
    #[error("a tunnel name must not start or end with '-'")]
    Hyphen,
}

/// A valid, lower-case DNS label used as a public tunnel name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TunnelName(String);

impl TunnelName {
    /// Parses and lower-cases `s`.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() || s.len() > 63 {
            return Err(NameError::Length);
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(NameError::Char(c));
        }
        if s.starts_with('-') || s.ends_with('-') {
            return Err(NameError::Hyphen);
        }
        Ok(Self(s.to_ascii_lowercase()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TunnelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for TunnelName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_folds_case() {
        assert_eq!(
            TunnelName::parse("Pay-Hooks").unwrap().as_str(),
            "pay-hooks"
        );
        assert_eq!(TunnelName::parse("a").unwrap().as_str(), "a");
        assert!(TunnelName::parse(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(TunnelName::parse(""), Err(NameError::Length));
        assert_eq!(TunnelName::parse(&"a".repeat(64)), Err(NameError::Length));
        assert_eq!(TunnelName::parse("a.b"), Err(NameError::Char('.')));
        assert_eq!(TunnelName::parse("é"), Err(NameError::Char('é')));
        assert_eq!(TunnelName::parse("-a"), Err(NameError::Hyphen));
        assert_eq!(TunnelName::parse("a-"), Err(NameError::Hyphen));
    }
}

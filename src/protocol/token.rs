//! The bearer token every call carries: read from a file (the way a Secret is mounted), compared in
//! constant time, never printed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a token could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error("cannot read token file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The token is empty or holds characters a header cannot carry.
    #[error("token must be non-empty printable ASCII without spaces")]
    Invalid,
}

impl TokenError {
    /// A fixed string for metric labels and event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Read { .. } => "TokenUnreadable",
            Self::Invalid => "TokenInvalid",
        }
    }
}

/// A bearer token. `Debug` never shows it.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl Token {
    /// A token from its text (surrounding whitespace and a trailing newline are dropped).
    ///
    /// # Errors
    /// When the token is empty or not printable ASCII without spaces.
    pub fn new(text: &str) -> Result<Self, TokenError> {
        let t = text.trim();
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Invalid);
        }
        Ok(Self(Arc::from(t)))
    }

    /// Reads a token file.
    ///
    /// # Errors
    /// When the file cannot be read or holds no valid token.
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::new(&text)
    }

    /// The token text, to put in a header.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// Whether an `Authorization` header value is `Bearer <this token>`, compared in constant time
    /// for a given length.
    pub fn matches_header(&self, header: &[u8]) -> bool {
        header
            .strip_prefix(b"Bearer ")
            .is_some_and(|given| self.matches(given))
    }

    /// Whether `given` is this token (a STOMP CONNECT's `passcode`), compared in constant time
    /// for a given length.
    pub fn matches(&self, given: &[u8]) -> bool {
        let want = self.0.as_bytes();
        if given.len() != want.len() {
            return false;
        }
        given
            .iter()
            .zip(want)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_exact_bearer_token() {
        let t = Token::new("s3cret\n").expect("valid");
        assert!(t.matches_header(b"Bearer s3cret"));
        assert!(!t.matches_header(b"Bearer s3cre"));
        assert!(!t.matches_header(b"Bearer s3cretx"));
        assert!(!t.matches_header(b"Basic s3cret"));
        assert!(!t.matches_header(b"s3cret"));
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }

    #[test]
    fn rejects_empty_or_spaced_tokens() {
        assert!(Token::new("  \n").is_err());
        assert!(Token::new("a b").is_err());
    }
}

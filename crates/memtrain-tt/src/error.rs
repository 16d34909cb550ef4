//! The crate's one error type.

/// Every fallible memtrain-tt operation returns this error.
///
/// Messages name the offending value and what would have been accepted; they read exactly
/// like `memtrain::Error::Config`, into which `memtrain` converts them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value is out of range, shapes do not agree, or a factorization cannot run.
    #[error("invalid {what}: got {got:?}, expected {expected}")]
    Config {
        /// Which value (`rank`, `TT core`, `svd`, ...).
        what: String,
        /// The value given.
        got: String,
        /// What would have been accepted.
        expected: String,
    },
}

impl Error {
    /// Builds an [`Error::Config`].
    pub fn config(
        what: impl Into<String>,
        got: impl ToString,
        expected: impl Into<String>,
    ) -> Self {
        Error::Config {
            what: what.into(),
            got: got.to_string(),
            expected: expected.into(),
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

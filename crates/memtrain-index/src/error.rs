//! The index crate's one error type.

use std::path::PathBuf;

/// Every fallible memtrain-index operation returns this error.
///
/// Messages name the offending value and, where there is a fixed set, the valid choices.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting or an input is out of range, or shapes do not agree.
    #[error("invalid {what}: got {got}, expected {expected}")]
    Invalid {
        /// Which setting or input (`--shape`, `query`, ...).
        what: String,
        /// The value given.
        got: String,
        /// What would have been accepted.
        expected: String,
    },
    /// A data or index file is unreadable, truncated, corrupt or of another format.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// An I/O failure on a named path. The OS error is part of the message and not chained as
    /// a source, so that printing the chain (`anyhow`'s `{:#}`) names it once.
    #[error("{path}: {error}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// Work that would need more memory than [`crate::memory_limit`], refused before
    /// allocating: the message names the estimate (a lower bound) and the limit.
    #[error(
        "{what} needs an estimated {} for {settings}, more than the limit of {} ({limit_source}); \
         expected a smaller shape, rank or batch",
        crate::budget::human(*.estimate),
        crate::budget::human(Some(*.limit))
    )]
    TooLarge {
        /// The work refused ("training the TT cloud", "building the index").
        what: String,
        /// The inputs that decide its size.
        settings: String,
        /// Bytes it would allocate at least; `None`: more than `u64` holds.
        estimate: Option<u64>,
        /// The limit in bytes.
        limit: u64,
        /// Where the limit comes from.
        limit_source: &'static str,
    },
    /// Training the TT cloud failed inside a larger run ([`crate::bench::run`],
    /// [`crate::ood::run`]). The inner error is part of the message and not chained as a
    /// source, like [`Error::Io`], so that printing the chain names it once.
    #[error("training the TT cloud: {0}")]
    Fit(Box<Error>),
}

impl From<memtrain_tt::Error> for Error {
    /// A tensor-train error is an invalid input with the same words.
    fn from(e: memtrain_tt::Error) -> Self {
        match e {
            memtrain_tt::Error::Config {
                what,
                got,
                expected,
            } => Error::Invalid {
                what,
                got,
                expected,
            },
            other => Error::invalid("tensor train", other, "valid input"),
        }
    }
}

impl Error {
    /// Builds an [`Error::Invalid`].
    pub fn invalid(
        what: impl Into<String>,
        got: impl ToString,
        expected: impl Into<String>,
    ) -> Self {
        Error::Invalid {
            what: what.into(),
            got: got.to_string(),
            expected: expected.into(),
        }
    }

    /// Builds an [`Error::File`].
    pub fn file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// Builds an [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error: source,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! The crate's one error type.

use std::path::PathBuf;

/// Every fallible memtrain operation returns this error.
///
/// Messages name the offending value and, where there is a fixed set, the valid choices.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range or unknown.
    #[error("invalid {what}: got {got:?}, expected {expected}")]
    Config {
        /// Which setting (`--steps`, `policy key`, ...).
        what: String,
        /// The value the user gave.
        got: String,
        /// What would have been accepted.
        expected: String,
    },
    /// Reading a data file failed or its contents are unusable.
    #[error("data file {path}: {reason}")]
    Data {
        /// The file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// A checkpoint could not be written or read back.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// Why it failed.
        reason: String,
    },
    /// The training loss became NaN or infinite: the step is not applied, so the model and
    /// optimizer keep their state from before it, and a run stops without a checkpoint of it.
    #[error(
        "the loss diverged at step {step} (loss {loss}); the model is left as it was before that step: lower the learning rate or raise the warm-up"
    )]
    Diverged {
        /// The step (1-based) whose loss was not finite.
        step: u64,
        /// The loss it computed.
        loss: f32,
    },
    /// A device (wgpu, cuda) reported a failure while running.
    #[error("device error: {reason}")]
    Device {
        /// What the device reported.
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

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error: source,
        }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, reason: impl ToString) -> Self {
        Error::Checkpoint {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}

impl From<memtrain_tt::Error> for Error {
    /// A tensor-train or linear-algebra error is a configuration error with the same words.
    fn from(e: memtrain_tt::Error) -> Self {
        match e {
            memtrain_tt::Error::Config {
                what,
                got,
                expected,
            } => Error::Config {
                what,
                got,
                expected,
            },
            other => Error::config("tensor train", other, "valid input"),
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

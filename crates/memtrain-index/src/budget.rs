//! Refusing work that cannot fit in memory before allocating it: a shape of a million modes
//! cubed, or a batch of a billion points, must be an error that names the estimate and the
//! limit, not an allocation failure that aborts the process.
//!
//! The estimates are lower bounds (the largest buffers only, in bytes), so a refusal never
//! turns away a run that would have fitted.

use crate::{Error, Result};

/// The memory limit where the machine's memory is unknown (no `/proc/meminfo`): 64 GiB.
pub const DEFAULT_MEMORY_LIMIT: u64 = 64 << 30;

/// The bytes a fit, a build or a demo may plan to allocate, and where that number comes from:
/// this machine's physical memory ([`memtrain_tt::machine::physical_bytes`]), or
/// [`DEFAULT_MEMORY_LIMIT`] where that cannot be read.
pub fn memory_limit() -> (u64, &'static str) {
    match memtrain_tt::machine::physical_bytes() {
        Some(bytes) => (bytes, "this machine's memory"),
        None => (
            DEFAULT_MEMORY_LIMIT,
            "the default limit; this machine's memory is unknown",
        ),
    }
}

/// An error unless `estimate` (bytes; `None`: beyond `u64`) is within [`memory_limit`].
/// `what` names the work ("training the TT cloud"), `settings` the inputs that decide its
/// size.
pub(crate) fn check_bytes(what: &str, settings: &str, estimate: Option<u64>) -> Result<()> {
    let (limit, source) = memory_limit();
    match estimate {
        Some(bytes) if bytes <= limit => Ok(()),
        _ => Err(Error::TooLarge {
            what: what.to_string(),
            settings: settings.to_string(),
            estimate,
            limit,
            limit_source: source,
        }),
    }
}

/// `bytes` in the largest binary unit that keeps it at least 1 (`3.5 GiB`); `None` reads as
/// "more than 16 EiB".
pub(crate) fn human(bytes: Option<u64>) -> String {
    let Some(bytes) = bytes else {
        return "more than 16 EiB".to_string();
    };
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Checked arithmetic over `u64` for the estimates: `None` once anything overflows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bytes(pub(crate) Option<u64>);

impl Bytes {
    /// `a · b · ...` elements of `size` bytes.
    pub(crate) fn of(size: u64, factors: &[usize]) -> Self {
        Bytes(
            factors
                .iter()
                .try_fold(size, |acc, &f| acc.checked_mul(u64::try_from(f).ok()?)),
        )
    }

    pub(crate) fn plus(self, other: Bytes) -> Self {
        Bytes(self.0.zip(other.0).and_then(|(a, b)| a.checked_add(b)))
    }
}

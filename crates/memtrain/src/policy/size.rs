//! Sizes and budgets as a SPEC or a flag writes them: `64MiB`, `1.5GiB`, `4096B`, and the
//! fractions `1/4` or `0.25` of a reference.

use crate::error::{Error, Result};

/// Parses `64MiB`, `1.5GiB`, `4096B` or `4096` (bytes): units B, KiB, MiB, GiB (also KB, MB,
/// GB as powers of 1024).
///
/// # Errors
///
/// [`Error::Config`] naming the text and the accepted forms.
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "kb" | "k" => 1 << 10,
        "mib" | "mb" | "m" => 1 << 20,
        "gib" | "gb" | "g" => 1 << 30,
        _ => 0,
    };
    match num.parse::<f64>() {
        // At least one byte once rounded: ".1" (0.1 bytes) is not a positive size.
        Ok(v)
            if scale > 0
                && v.is_finite()
                && v * (scale as f64) >= 0.5
                && v * (scale as f64) < 1e18 =>
        {
            Ok((v * scale as f64).round() as u64)
        }
        _ => Err(Error::config(
            "size",
            text,
            "a positive size like 64MiB, 1.5GiB, 512KiB or 4096B",
        )),
    }
}

/// `bytes` in the largest binary unit it reaches (`64MiB`, `2.103515625MiB`, `512KiB`,
/// `100B`), written so that [`parse_size`] gives back exactly `bytes`.
///
/// ```
/// use memtrain::policy::{format_size, parse_size};
/// assert_eq!(format_size(64 << 20), "64MiB");
/// assert_eq!(format_size(2205696), "2.103515625MiB");
/// for b in [1, 1023, 1024, 2205696, 3 << 30, 123_456_789_012] {
///     assert_eq!(parse_size(&format_size(b)).unwrap(), b);
/// }
/// ```
pub fn format_size(bytes: u64) -> String {
    let (scale, unit) = match bytes {
        b if b >= 1 << 30 => (1u64 << 30, "GiB"),
        b if b >= 1 << 20 => (1 << 20, "MiB"),
        b if b >= 1 << 10 => (1 << 10, "KiB"),
        _ => return format!("{bytes}B"),
    };
    // A power-of-two scale divides exactly in f64 below 2^53 bytes, and the shortest decimal
    // that round-trips the quotient times the scale is `bytes` again.
    if bytes < 1 << 53 {
        format!("{}{unit}", bytes as f64 / scale as f64)
    } else {
        format!("{bytes}B")
    }
}

/// An activation budget as a flag writes it: a size (`64MiB`, `1.5GiB`, `4096B`) or a
/// fraction of a reference's bytes (`1/4`, `0.25`; in `(0, 1]`).
///
/// ```
/// use memtrain::policy::Budget;
/// assert_eq!("1/4".parse::<Budget>().unwrap().resolve(1000), 250);
/// assert_eq!("64MiB".parse::<Budget>().unwrap().resolve(1000), 64 << 20);
/// assert!("1.5".parse::<Budget>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// This many bytes.
    Bytes(u64),
    /// This fraction of the reference (in `(0, 1]`).
    Fraction(f64),
}

impl Budget {
    /// The budget in bytes, a fraction taken of `reference` bytes.
    pub fn resolve(&self, reference: usize) -> u64 {
        match *self {
            Budget::Bytes(b) => b,
            Budget::Fraction(f) => (f * reference as f64) as u64,
        }
    }
}

impl std::str::FromStr for Budget {
    type Err = Error;

    /// # Errors
    ///
    /// [`Error::Config`] naming the text: a fraction outside `(0, 1]`, or neither a fraction
    /// nor a size.
    fn from_str(text: &str) -> Result<Self> {
        let bad = || {
            Error::config(
                "budget",
                text,
                "a fraction in (0, 1] (1/4, 0.25) or a size like 64MiB",
            )
        };
        let fraction = match text.split_once('/') {
            Some((a, b)) => Some(
                a.trim().parse::<f64>().map_err(|_| bad())?
                    / b.trim().parse::<f64>().map_err(|_| bad())?,
            ),
            None if !text.chars().any(|c| c.is_ascii_alphabetic()) && text.contains('.') => {
                Some(text.trim().parse::<f64>().map_err(|_| bad())?)
            }
            None => None,
        };
        match fraction {
            Some(f) if f > 0.0 && f <= 1.0 => Ok(Budget::Fraction(f)),
            Some(_) => Err(bad()),
            None => parse_size(text).map(Budget::Bytes).map_err(|_| bad()),
        }
    }
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Budget::Bytes(b) => f.write_str(&format_size(*b)),
            // With a point, so that it parses back as a fraction: 1.0 is "1.0", not the
            // one-byte size "1".
            Budget::Fraction(x) if x.fract() == 0.0 => write!(f, "{x}.0"),
            Budget::Fraction(x) => write!(f, "{x}"),
        }
    }
}

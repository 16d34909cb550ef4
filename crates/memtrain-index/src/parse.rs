//! The text forms of the index's list settings, as `memtrain index` reads them from its flags:
//! a shape `16,16,16`, a beam `8` or `8,16`, classes `0,1,2,3,4`. Every parser takes any
//! string and either returns the values or an [`Error::Invalid`] that quotes the text.

use std::ops::RangeInclusive;

use crate::{Error, Result};

/// Comma-separated integers, each in `valid`, at least one; `what` names the setting and
/// `expected` says what each value may be.
///
/// # Errors
///
/// [`Error::Invalid`] quoting the first bad token and the whole text.
///
/// # Example
///
/// ```
/// use memtrain_index::parse::list;
///
/// assert_eq!(list("beam", "8, 16", 1..=usize::MAX, "positive integers").unwrap(), [8, 16]);
/// let err = list("beam", "8,x", 1..=usize::MAX, "positive integers").unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     r#"invalid beam: got "x" in "8,x", expected positive integers separated by commas"#
/// );
/// ```
pub fn list(
    what: &str,
    text: &str,
    valid: RangeInclusive<usize>,
    expected: &str,
) -> Result<Vec<usize>> {
    text.split(',')
        .map(|t| match t.trim().parse::<usize>() {
            Ok(v) if valid.contains(&v) => Ok(v),
            _ => Err(Error::invalid(
                what,
                format!("{t:?} in {text:?}"),
                format!("{expected} separated by commas"),
            )),
        })
        .collect()
}

/// The modes of a TT cloud, `N1,N2,...`: positive integers whose product fits in `usize`.
///
/// # Errors
///
/// [`Error::Invalid`] quoting the text.
pub fn shape(text: &str) -> Result<Vec<usize>> {
    let modes = list("shape", text, 1..=usize::MAX, "positive integers")?;
    if modes
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .is_none()
    {
        return Err(Error::invalid(
            "shape",
            format!("{text:?} (product overflow)"),
            format!("modes whose product is at most {}", usize::MAX),
        ));
    }
    Ok(modes)
}

/// Beam widths: one for every level, or one per level above the leaves (`8,16`), each at
/// least 1.
///
/// # Errors
///
/// [`Error::Invalid`] quoting the text.
pub fn beam(text: &str) -> Result<Vec<usize>> {
    list("beam", text, 1..=usize::MAX, "positive integers")
}

/// The in-distribution classes of the out-of-distribution demo: class numbers 0-9, distinct
/// after removing repeats, some but not all ten (the others are out of distribution).
/// Returned sorted without repeats.
///
/// # Errors
///
/// [`Error::Invalid`] quoting the text.
pub fn classes(text: &str) -> Result<Vec<usize>> {
    let mut classes = list("classes", text, 0..=9, "class numbers 0-9")?;
    classes.sort_unstable();
    classes.dedup();
    if classes.len() == 10 {
        return Err(Error::invalid(
            "classes",
            format!("{text:?} (all ten classes)"),
            "some classes held out as out of distribution",
        ));
    }
    Ok(classes)
}

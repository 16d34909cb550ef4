//! Choosing the modes of a tensor train: factorise a size into `d` balanced factors.

use crate::error::{Error, Result};

fn primes(mut n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut p = 2;
    while p * p <= n {
        while n.is_multiple_of(p) {
            out.push(p);
            n /= p;
        }
        p += 1;
    }
    if n > 1 {
        out.push(n);
    }
    out
}

/// `n` as a product of `d` factors, as balanced as the primes of `n` allow, in ascending
/// order (the largest prime goes to the smallest factor first).
///
/// ```
/// assert_eq!(memtrain_tt::factorize(384, 3).unwrap(), vec![6, 8, 8]);
/// assert_eq!(memtrain_tt::factorize(10_000, 4).unwrap(), vec![10, 10, 10, 10]);
/// ```
///
/// # Errors
///
/// [`Error::Config`] when `n` or `d` is zero, or `n` has fewer than `d` prime factors (a
/// factor of 1 would be a useless mode), naming `n`, its prime factors and `d`.
pub fn factorize(n: usize, d: usize) -> Result<Vec<usize>> {
    if d == 0 || n == 0 {
        return Err(Error::config(
            "factorize",
            format!("n = {n}, d = {d}"),
            "n >= 1 and d >= 1",
        ));
    }
    let ps = primes(n);
    if d > 1 && ps.len() < d {
        return Err(Error::config(
            "factorize",
            format!("{n} = {ps:?} into {d} modes"),
            format!("a size with at least {d} prime factors, or fewer modes"),
        ));
    }
    let mut out = vec![1usize; d];
    for p in ps.into_iter().rev() {
        let smallest = (0..d).min_by_key(|&i| out[i]).expect("d >= 1");
        out[smallest] *= p;
    }
    out.sort_unstable();
    Ok(out)
}

/// Row and column modes of a TT-matrix for a `[rows, cols]` matrix with `d` cores:
/// [`factorize`] of each side, paired so that the smallest row mode meets the smallest column
/// mode (the paper's pairing; it keeps `m_k n_k` balanced across cores).
///
/// ```
/// let (m, n) = memtrain_tt::matrix_modes(384, 1536, 3).unwrap();
/// assert_eq!((m, n), (vec![6, 8, 8], vec![8, 12, 16]));
/// ```
///
/// # Errors
///
/// As [`factorize`], for either side.
pub fn matrix_modes(rows: usize, cols: usize, d: usize) -> Result<(Vec<usize>, Vec<usize>)> {
    Ok((factorize(rows, d)?, factorize(cols, d)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_factorize_balanced_or_refuse() {
        assert_eq!(factorize(1536, 3).unwrap(), vec![8, 12, 16]);
        assert_eq!(factorize(7, 1).unwrap(), vec![7]);
        assert_eq!(factorize(1, 1).unwrap(), vec![1]);
        let e = factorize(7, 2).unwrap_err().to_string();
        assert!(e.contains("7 = [7] into 2 modes"), "{e}");
        assert!(factorize(0, 2).is_err() && factorize(8, 0).is_err());
        for (n, d) in [(384, 3), (1536, 4), (1000, 3), (97 * 4, 3)] {
            let f = factorize(n, d).unwrap();
            assert_eq!(f.iter().product::<usize>(), n);
            assert_eq!(f.len(), d);
        }
    }
}

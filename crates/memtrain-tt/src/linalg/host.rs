//! Small dense f64 linear algebra on the host: the `R x R` systems of CP and the `r x r`
//! submatrices of maxvol are too small for a device round trip to pay.

use burn::tensor::{DType, Device, Shape, Tensor, TensorData};

/// A tensor's entries as f64, row-major.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data().iter::<f64>().collect()
}

/// A tensor of `shape` from row-major f64 entries, on `device` in `dtype`.
pub fn tensor<const D: usize>(
    v: Vec<f64>,
    shape: [usize; D],
    device: &Device,
    dtype: DType,
) -> Tensor<D> {
    Tensor::from_data(
        TensorData::new(v, Shape::from(shape.to_vec())),
        (device, dtype),
    )
}

/// `a [n, k] · b [k, m]`, row-major.
pub fn matmul(a: &[f64], b: &[f64], n: usize, k: usize, m: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * m];
    for i in 0..n {
        for p in 0..k {
            let x = a[i * k + p];
            if x == 0.0 {
                continue;
            }
            for j in 0..m {
                out[i * m + j] += x * b[p * m + j];
            }
        }
    }
    out
}

/// The lower Cholesky factor of a symmetric `[n, n]` matrix, or `None` when a pivot is not
/// positive (the matrix is not positive definite, or holds NaN).
pub fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for j in 0..n {
        let mut d = a[j * n + j];
        for p in 0..j {
            d -= l[j * n + p] * l[j * n + p];
        }
        if !(d > 0.0 && d.is_finite()) {
            return None;
        }
        let d = d.sqrt();
        l[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for p in 0..j {
                s -= l[i * n + p] * l[j * n + p];
            }
            l[i * n + j] = s / d;
        }
    }
    Some(l)
}

/// Solves `x (L L^T) = b` for every row `b` of `rhs` `[rows, n]` in place (`L L^T` is
/// symmetric, so each row solves `L L^T x^T = b^T`).
pub fn cholesky_solve_rows(l: &[f64], n: usize, rhs: &mut [f64]) {
    for row in rhs.chunks_mut(n) {
        for i in 0..n {
            let mut s = row[i];
            for p in 0..i {
                s -= l[i * n + p] * row[p];
            }
            row[i] = s / l[i * n + i];
        }
        for i in (0..n).rev() {
            let mut s = row[i];
            for p in i + 1..n {
                s -= l[p * n + i] * row[p];
            }
            row[i] = s / l[i * n + i];
        }
    }
}

/// Cholesky of `a + δ I` with `δ` a tiny multiple of the mean diagonal, raised a
/// hundredfold until the factorization succeeds: a robust solve for normal equations whose
/// Gram matrix may be singular (collinear factors). `None` if even `δ = 1e-2 · mean` fails
/// (NaN input).
pub fn ridge_cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mean = (0..n).map(|i| a[i * n + i]).sum::<f64>() / n as f64;
    let base = if mean > 0.0 && mean.is_finite() {
        mean
    } else {
        1.0
    };
    let mut delta = 1e-12 * base;
    while delta <= 1e-2 * base {
        let mut m = a.to_vec();
        for i in 0..n {
            m[i * n + i] += delta;
        }
        if let Some(l) = cholesky(&m, n) {
            return Some(l);
        }
        delta *= 100.0;
    }
    None
}

/// The inverse of a square `[n, n]` matrix by Gauss-Jordan elimination with partial
/// pivoting, or `None` when it is singular to working precision.
pub fn inverse(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut m = a.to_vec();
    let mut inv = vec![0.0; n * n];
    for i in 0..n {
        inv[i * n + i] = 1.0;
    }
    let scale = a.iter().fold(0.0f64, |s, x| s.max(x.abs()));
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&x, &y| m[x * n + col].abs().total_cmp(&m[y * n + col].abs()))
            .expect("col < n");
        let p = m[piv * n + col];
        if p.abs() <= 1e-14 * scale || !p.is_finite() {
            return None;
        }
        if piv != col {
            for j in 0..n {
                m.swap(piv * n + j, col * n + j);
                inv.swap(piv * n + j, col * n + j);
            }
        }
        for j in 0..n {
            m[col * n + j] /= p;
            inv[col * n + j] /= p;
        }
        for i in 0..n {
            if i == col {
                continue;
            }
            let f = m[i * n + col];
            if f == 0.0 {
                continue;
            }
            for j in 0..n {
                m[i * n + j] -= f * m[col * n + j];
                inv[i * n + j] -= f * inv[col * n + j];
            }
        }
    }
    Some(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_solve_and_invert_a_small_spd_system() {
        // a = [[4, 2], [2, 3]]: det 8, inverse [[3, -2], [-2, 4]] / 8.
        let a = [4.0, 2.0, 2.0, 3.0];
        let inv = inverse(&a, 2).unwrap();
        let want = [3.0 / 8.0, -2.0 / 8.0, -2.0 / 8.0, 4.0 / 8.0];
        assert!(inv.iter().zip(want).all(|(x, y)| (x - y).abs() < 1e-12));
        let l = cholesky(&a, 2).unwrap();
        let mut rhs = vec![1.0, 0.0, 0.0, 1.0];
        cholesky_solve_rows(&l, 2, &mut rhs);
        assert!(rhs.iter().zip(want).all(|(x, y)| (x - y).abs() < 1e-12));
        assert!(cholesky(&[1.0, 2.0, 2.0, 1.0], 2).is_none());
        assert!(inverse(&[1.0, 2.0, 2.0, 4.0], 2).is_none());
        assert_eq!(matmul(&[1.0, 2.0], &[3.0, 4.0], 1, 2, 1), vec![11.0]);
    }
}

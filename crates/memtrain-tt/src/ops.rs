//! Primitive-level TT-matrix kernels on a backend's float tensors: what a TT-matrix layer's
//! custom forward and backward (`memtrain::linear::TtLinear`) run inside an autodiff op, where
//! only the backend's primitive ops are available.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, TensorMetadata};
use burn::tensor::Shape;

/// The dense matrix `[M, N]` of TT-matrix cores `[r, m_k, n_k, r']`, built left to right.
pub fn dense_of_cores<B: Backend>(
    cores: &[FloatTensor<B>],
    rows: &[usize],
    cols: &[usize],
    ranks: &[usize],
) -> FloatTensor<B> {
    let interleaved = chain::<B>(cores, rows, cols, ranks);
    from_interleaved::<B>(interleaved, rows, cols)
}

/// The cores' product in TT order `[(m_1 n_1), ..., (m_d n_d)]`, as `[Π m_k n_k, 1]`.
pub fn chain<B: Backend>(
    cores: &[FloatTensor<B>],
    rows: &[usize],
    cols: &[usize],
    ranks: &[usize],
) -> FloatTensor<B> {
    let mut acc: Option<FloatTensor<B>> = None;
    let mut p = 1;
    for (k, core) in cores.iter().enumerate() {
        let mn = rows[k] * cols[k];
        let core = B::float_reshape(core.clone(), Shape::from(vec![ranks[k], mn * ranks[k + 1]]));
        acc = Some(match acc {
            None => core,
            Some(a) => B::float_matmul(a, core),
        });
        p *= mn;
        acc = acc.map(|a| B::float_reshape(a, Shape::from(vec![p, ranks[k + 1]])));
    }
    acc.expect("at least one core")
}

/// `[m_1, n_1, ..., m_d, n_d]` (any layout with that many elements) to `[M, N]`.
pub fn from_interleaved<B: Backend>(
    w: FloatTensor<B>,
    rows: &[usize],
    cols: &[usize],
) -> FloatTensor<B> {
    let d = rows.len();
    let dims: Vec<usize> = (0..d).flat_map(|k| [rows[k], cols[k]]).collect();
    let axes: Vec<usize> = (0..d)
        .map(|k| 2 * k)
        .chain((0..d).map(|k| 2 * k + 1))
        .collect();
    let w = B::float_permute(B::float_reshape(w, Shape::from(dims)), &axes);
    let (m, n): (usize, usize) = (rows.iter().product(), cols.iter().product());
    B::float_reshape(w, Shape::from(vec![m, n]))
}

/// `[M, N]` to TT order `[m_1 n_1, ..., m_d n_d]` flattened to `[Π m_k n_k]`.
pub fn to_interleaved<B: Backend>(
    w: FloatTensor<B>,
    rows: &[usize],
    cols: &[usize],
) -> FloatTensor<B> {
    let d = rows.len();
    let dims: Vec<usize> = rows.iter().chain(cols).copied().collect();
    let axes: Vec<usize> = (0..d).flat_map(|k| [k, d + k]).collect();
    let w = B::float_permute(B::float_reshape(w, Shape::from(dims)), &axes);
    let total = rows.iter().product::<usize>() * cols.iter().product::<usize>();
    B::float_reshape(w, Shape::from(vec![total]))
}

/// Flops of `x W` for `b` rows by the core-by-core sweep and by dense reconstruction.
pub fn left_mul_flops(b: usize, rows: &[usize], cols: &[usize], ranks: &[usize]) -> (usize, usize) {
    let d = rows.len();
    let mut sweep = 0;
    for k in 0..d {
        // T [b, m_k, A_k, r_{k-1}] with A_k = m_{k+1}..m_d n_1..n_{k-1}.
        let a: usize =
            rows[k + 1..].iter().product::<usize>() * cols[..k].iter().product::<usize>();
        sweep += 2 * b * a * ranks[k] * rows[k] * cols[k] * ranks[k + 1];
    }
    let mut dense = 0;
    let mut p = 1;
    for k in 0..d {
        let mn = rows[k] * cols[k];
        dense += 2 * p * ranks[k] * mn * ranks[k + 1];
        p *= mn;
    }
    let (m, n): (usize, usize) = (rows.iter().product(), cols.iter().product());
    dense += 2 * b * m * n + m * n; // the product and the permutation
    (sweep, dense)
}

/// `x W` for `x` `[b, M]`, sweeping the cores left to right without forming `W`:
/// `T [b, m_k, A_k, r_{k-1}] -> [b A_k, r_{k-1} m_k] · core_k [r_{k-1} m_k, n_k r_k]`.
pub fn left_mul_sweep<B: Backend>(
    x: FloatTensor<B>,
    cores: &[FloatTensor<B>],
    rows: &[usize],
    cols: &[usize],
    ranks: &[usize],
) -> FloatTensor<B> {
    let b = x.shape()[0];
    let d = rows.len();
    let mut t = x;
    for k in 0..d {
        let a: usize =
            rows[k + 1..].iter().product::<usize>() * cols[..k].iter().product::<usize>();
        let t4 = B::float_reshape(t, Shape::from(vec![b, rows[k], a, ranks[k]]));
        let t2 = B::float_reshape(
            B::float_permute(t4, &[0, 2, 3, 1]),
            Shape::from(vec![b * a, ranks[k] * rows[k]]),
        );
        let core = B::float_reshape(
            cores[k].clone(),
            Shape::from(vec![ranks[k] * rows[k], cols[k] * ranks[k + 1]]),
        );
        t = B::float_matmul(t2, core);
    }
    let n = cols.iter().product();
    B::float_reshape(t, Shape::from(vec![b, n]))
}

/// `x W` by whichever of [`left_mul_sweep`] and the dense reconstruction costs fewer flops.
pub fn left_mul<B: Backend>(
    x: FloatTensor<B>,
    cores: &[FloatTensor<B>],
    rows: &[usize],
    cols: &[usize],
    ranks: &[usize],
) -> FloatTensor<B> {
    let (sweep, dense) = left_mul_flops(x.shape()[0], rows, cols, ranks);
    if sweep <= dense {
        left_mul_sweep::<B>(x, cores, rows, cols, ranks)
    } else {
        B::float_matmul(x, dense_of_cores::<B>(cores, rows, cols, ranks))
    }
}

/// Gradients of the cores of `W` given `dW` in TT order `[Π m_k n_k]`:
/// `dG_k[a, mn, b] = Σ L_{k-1}[P, a] dW[P, mn, Q] R_{k+1}[b, Q]` with `L`, `R` the partial
/// products of the cores left and right of `k`. Cost `O(d r M N)`, no batch dimension.
pub fn core_grads<B: Backend>(
    dw: FloatTensor<B>,
    cores: &[FloatTensor<B>],
    rows: &[usize],
    cols: &[usize],
    ranks: &[usize],
) -> Vec<FloatTensor<B>> {
    let d = rows.len();
    let mn: Vec<usize> = (0..d).map(|k| rows[k] * cols[k]).collect();
    // Left interfaces L_k [Π_{j<=k} mn_j, r_k] for k = 0..d-2.
    let mut lefts: Vec<FloatTensor<B>> = Vec::with_capacity(d);
    for k in 0..d.saturating_sub(1) {
        lefts.push(chain::<B>(
            &cores[..=k],
            &rows[..=k],
            &cols[..=k],
            &ranks[..=k + 1],
        ));
    }
    let mut grads = Vec::with_capacity(d);
    for k in 0..d {
        let p: usize = mn[..k].iter().product();
        let q: usize = mn[k + 1..].iter().product();
        let g = B::float_reshape(dw.clone(), Shape::from(vec![p, mn[k] * q]));
        // [a, mn q]
        let g = match k {
            0 => g,
            _ => B::float_matmul(B::float_transpose(lefts[k - 1].clone()), g),
        };
        let g = B::float_reshape(g, Shape::from(vec![ranks[k] * mn[k], q]));
        let g = if k + 1 < d {
            let r = right_interface::<B>(&cores[k + 1..], &mn[k + 1..], &ranks[k + 1..]);
            B::float_matmul(g, B::float_transpose(r))
        } else {
            g
        };
        grads.push(B::float_reshape(
            g,
            Shape::from(vec![ranks[k], rows[k], cols[k], ranks[k + 1]]),
        ));
    }
    grads
}

/// `R [r_0, Π mn]` of the cores `[r_{j-1}, mn_j, r_j]` (ending in rank 1), right to left.
fn right_interface<B: Backend>(
    cores: &[FloatTensor<B>],
    mn: &[usize],
    ranks: &[usize],
) -> FloatTensor<B> {
    let d = cores.len();
    let mut acc: Option<FloatTensor<B>> = None;
    let mut q = 1;
    for k in (0..d).rev() {
        let core = B::float_reshape(
            cores[k].clone(),
            Shape::from(vec![ranks[k] * mn[k], ranks[k + 1]]),
        );
        let r = match acc {
            None => core,
            Some(next) => B::float_matmul(core, next),
        };
        q *= mn[k];
        acc = Some(B::float_reshape(r, Shape::from(vec![ranks[k], q])));
    }
    acc.expect("at least one core")
}

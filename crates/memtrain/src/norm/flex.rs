//! The output-saving LayerNorm on burn's Flex CPU backend, fused: the forward reads each row
//! once and writes `y` and `rstd`; the backward reads `dy` and `y` once and writes `dx`, with
//! `dγ` and `dβ` summed per task and then across tasks. burn's primitive ops (the generic
//! path in `output.rs`) take about ten passes over the tensor each way.
//!
//! f32 only; other float types take the generic path. Row sums are in f32, in row order, as
//! burn's mean on Flex sums them; the results agree with the generic path to f32 rounding
//! (`tests/norm.rs` checks both against burn's `LayerNorm`).

use burn::backend::{Flex, TensorMetadata};
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

type Prim = burn::backend::tensor::FloatTensor<Flex>;

/// Rows per parallel task.
const ROWS: usize = 32;

/// Partial sums per row reduction: independent accumulators, so that the loop vectorizes
/// instead of waiting on one add chain.
const LANES: usize = 8;

/// `Σ f(i)` over `0..d` in [`LANES`] interleaved partial sums, then added in lane order.
#[inline(always)]
fn lanes_sum(d: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let whole = d - d % LANES;
    for i in (0..whole).step_by(LANES) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(i + l);
        }
    }
    for (l, i) in (whole..d).enumerate() {
        acc[l] += f(i);
    }
    acc.iter().sum()
}

/// One row of the forward: returns `rstd`.
#[inline(always)]
fn forward_row(x: &[f32], g: &[f32], b: &[f32], eps: f32, y: &mut [f32]) -> f32 {
    let d = x.len();
    let mean = lanes_sum(d, |i| x[i]) / d as f32;
    let var = lanes_sum(d, |i| (x[i] - mean) * (x[i] - mean)) / d as f32;
    let r = 1.0 / (var + eps).sqrt();
    for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(g).zip(b) {
        *y = (x - mean) * r * g + b;
    }
    r
}

/// The rows of one forward task.
#[inline(always)]
fn forward_rows(x: &[f32], g: &[f32], b: &[f32], eps: f32, y: &mut [f32], rstd: &mut [f32]) {
    let d = g.len();
    for ((y, x), r) in y.chunks_mut(d).zip(x.chunks(d)).zip(rstd.iter_mut()) {
        *r = forward_row(x, g, b, eps, y);
    }
}

/// [`forward_rows`] compiled for AVX2; the same operations, so the same results.
///
/// # Safety
///
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn forward_rows_avx2(
    x: &[f32],
    g: &[f32],
    b: &[f32],
    eps: f32,
    y: &mut [f32],
    rstd: &mut [f32],
) {
    forward_rows(x, g, b, eps, y, rstd);
}

/// What one backward task needs besides its rows.
struct Params<'a> {
    g: &'a [f32],
    b: &'a [f32],
}

/// The rows of one backward task: `dx` (when not empty) and the task's `(dγ, dβ)`.
#[inline(always)]
fn backward_rows(
    p: &Params<'_>,
    y: &[f32],
    dy: &[f32],
    rstd: &[f32],
    dx: &mut [f32],
) -> (Vec<f32>, Vec<f32>) {
    let (g, b) = (p.g, p.b);
    let d = g.len();
    let (mut dg, mut db) = (vec![0.0f32; d], vec![0.0f32; d]);
    let mut xhat = vec![0.0f32; d];
    for (r, (y, dy)) in y.chunks(d).zip(dy.chunks(d)).enumerate() {
        for ((xh, &y), (&g, &b)) in xhat.iter_mut().zip(y).zip(g.iter().zip(b)) {
            *xh = (y - b) / g;
        }
        for (((dg, db), &dy), &xh) in dg.iter_mut().zip(db.iter_mut()).zip(dy).zip(&xhat) {
            *dg += dy * xh;
            *db += dy;
        }
        if !dx.is_empty() {
            let m1 = lanes_sum(d, |j| dy[j] * g[j]) / d as f32;
            let m2 = lanes_sum(d, |j| dy[j] * g[j] * xhat[j]) / d as f32;
            let dx = &mut dx[r * d..(r + 1) * d];
            for (((dx, &dy), &g), &xh) in dx.iter_mut().zip(dy).zip(g).zip(&xhat) {
                *dx = rstd[r] * (dy * g - m1 - xh * m2);
            }
        }
    }
    (dg, db)
}

/// [`backward_rows`] compiled for AVX2; the same operations, so the same results.
///
/// # Safety
///
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn backward_rows_avx2(
    p: &Params<'_>,
    y: &[f32],
    dy: &[f32],
    rstd: &[f32],
    dx: &mut [f32],
) -> (Vec<f32>, Vec<f32>) {
    backward_rows(p, y, dy, rstd, dx)
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn f32s(t: &Prim) -> Option<&[f32]> {
    (t.dtype() == DType::F32 && t.is_contiguous())
        .then(|| t.as_slice::<f32>())
        .flatten()
}

fn tensor(data: Vec<f32>, shape: burn::tensor::Shape, like: &Prim) -> Prim {
    use burn::backend::ops::FloatTensorOps;
    Flex::float_from_data(TensorData::new(data, shape), &like.device())
}

/// `(y, rstd [n, 1])` of `x` viewed as `[n, d]`, or `None` when an input is not contiguous
/// f32 (the caller takes the generic path).
pub(super) fn forward(x: &Prim, gamma: &Prim, beta: &Prim, eps: f64) -> Option<(Prim, Prim)> {
    let (xs, g, b) = (f32s(x)?, f32s(gamma)?, f32s(beta)?);
    let (n, d) = crate::rows_and_width(&x.shape());
    if d == 0 || xs.len() != n * d || g.len() != d || b.len() != d {
        return None;
    }
    let eps = eps as f32;
    let avx2 = has_avx2();
    let mut y = vec![0.0f32; n * d];
    let mut rstd = vec![0.0f32; n];
    y.par_chunks_mut(ROWS * d)
        .zip(xs.par_chunks(ROWS * d))
        .zip(rstd.par_chunks_mut(ROWS))
        .for_each(|((y, x), rstd)| {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the CPU has AVX2 (`has_avx2`).
                return unsafe { forward_rows_avx2(x, g, b, eps, y, rstd) };
            }
            forward_rows(x, g, b, eps, y, rstd);
        });
    Some((tensor(y, x.shape(), x), tensor(rstd, [n, 1].into(), x)))
}

/// `[dx, dγ, dβ]` (each when asked for) from the output `y`, `rstd`, `γ`, `β` and `dy`, with
/// `x̂ = (y - β) / γ`; `None` when an input is not contiguous f32.
pub(super) fn backward(
    y: &Prim,
    rstd: &Prim,
    gamma: &Prim,
    beta: &Prim,
    dy: &Prim,
    want: [bool; 3],
) -> Option<[Option<Prim>; 3]> {
    let (ys, rs, g, b, dys) = (f32s(y)?, f32s(rstd)?, f32s(gamma)?, f32s(beta)?, f32s(dy)?);
    let (n, d) = crate::rows_and_width(&dy.shape());
    if d == 0 || ys.len() != n * d || rs.len() != n || g.len() != d || b.len() != d {
        return None;
    }
    let mut dx = vec![0.0f32; if want[0] { n * d } else { 0 }];
    let (p, avx2) = (Params { g, b }, has_avx2());
    let task = |y: &[f32], dy: &[f32], rstd: &[f32], dx: &mut [f32]| {
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU has AVX2 (`has_avx2`).
            return unsafe { backward_rows_avx2(&p, y, dy, rstd, dx) };
        }
        backward_rows(&p, y, dy, rstd, dx)
    };
    let partial: Vec<(Vec<f32>, Vec<f32>)> = if want[0] {
        dx.par_chunks_mut(ROWS * d)
            .zip(ys.par_chunks(ROWS * d))
            .zip(dys.par_chunks(ROWS * d))
            .zip(rs.par_chunks(ROWS))
            .map(|(((dx, y), dy), r)| task(y, dy, r, dx))
            .collect()
    } else {
        ys.par_chunks(ROWS * d)
            .zip(dys.par_chunks(ROWS * d))
            .zip(rs.par_chunks(ROWS))
            .map(|((y, dy), r)| task(y, dy, r, &mut []))
            .collect()
    };
    let (mut dg, mut db) = (vec![0.0f32; d], vec![0.0f32; d]);
    for (pg, pb) in &partial {
        dg.iter_mut().zip(pg).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
    Some([
        want[0].then(|| tensor(dx, dy.shape(), dy)),
        want[1].then(|| tensor(dg, [d].into(), dy)),
        want[2].then(|| tensor(db, [d].into(), dy)),
    ])
}

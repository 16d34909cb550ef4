//! The CPU kernel: tiled attention forward and backward over slices, one task per
//! (batch, head), matrix products by the `gemm` crate.
//!
//! Layout: inputs are `[batch, seq, heads, width]` with any strides on the first three axes
//! and unit stride on `width` (so views into a fused QKV projection need no copy); outputs are
//! contiguous `[batch, seq, heads, width]`; the log-sum-exp is contiguous `[batch, heads, seq_q]`.
//!
//! Memory: a task holds two `[BLOCK, seq_k]` scratch tiles and its head's outputs; nothing of
//! size `seq_q × seq_k` is ever allocated.

use rayon::prelude::*;

/// Query rows per tile.
pub const BLOCK: usize = 64;

/// The float types the kernel runs in (f32 in training, f64 for finite-difference tests).
pub trait Real:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + 'static
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::AddAssign
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// -infinity.
    const NEG_INF: Self;
    /// e^x.
    fn exp(self) -> Self;
    /// ln x.
    fn ln(self) -> Self;
    /// Conversion from f64.
    fn from_f64(x: f64) -> Self;
    /// `row[i] = exp(row[i] - shift)` (0 where `row[i]` is -infinity).
    fn exp_shifted(row: &mut [Self], shift: Self) {
        row.iter_mut().for_each(|x| *x = (*x - shift).exp());
    }
}

macro_rules! real {
    ($t:ty) => {
        const ZERO: Self = 0.0;
        const ONE: Self = 1.0;
        const NEG_INF: Self = <$t>::NEG_INFINITY;
        fn exp(self) -> Self {
            <$t>::exp(self)
        }
        fn ln(self) -> Self {
            <$t>::ln(self)
        }
        fn from_f64(x: f64) -> Self {
            x as $t
        }
    };
}

/// f32 exponentiates rows with [`exp_f32`], vectorized.
impl Real for f32 {
    real!(f32);
    fn exp_shifted(row: &mut [Self], shift: Self) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked above.
            return unsafe { exp_shifted_avx2(row, shift) };
        }
        exp_shifted_f32(row, shift);
    }
}

/// f64 (the finite-difference tests) uses the standard library's `exp`.
impl Real for f64 {
    real!(f64);
}

/// `e^x` in f32, branch-free so that a loop over it vectorizes: Cephes' `expf` (`x = n ln 2 + r`
/// with `ln 2` split in two, a degree-5 polynomial in `r`, the exponent `n` written into the
/// float's bits). Within 2 ulp of `exp` in f64 on `[-87, 88]`, 0 below -87.3 (and for -inf),
/// NaN for NaN (`should_exponentiate_within_two_ulps`). Above 88.3 it gives +infinity, a little
/// early (f32's `exp` overflows at 88.72): the attention only exponentiates scores minus their
/// row maximum or log-sum-exp, which are at most 0.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // 1.5 · 2²³: adding it to an f32 of magnitude below 2²² rounds it to an integer, which
    // then sits in the low bits of the sum's mantissa. No `as i32` below: Rust's saturating
    // casts compile to scalar code and would keep the loop from vectorizing.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.3, 88.3);
    let fx = xc * LOG2E + 0.5;
    // floor(fx) without SSE4.1: round to nearest, then step down where that rounded up.
    let t = (fx + ROUND) - ROUND;
    let n = t - if t > fx { 1.0 } else { 0.0 };
    let r = xc - n * C1 - n * C2;
    let z = r * r;
    let mut p = 1.987_569_1e-4 * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * z + r + 1.0;
    // 2ⁿ: n + 127 is in 1..=254 for the clamped x, the low byte of the rounding sum.
    let scale = f32::from_bits(((n + (127.0 + ROUND)).to_bits() & 0xff) << 23);
    let e = y * scale;
    if x < -87.3 {
        0.0
    } else if x > 88.3 {
        f32::INFINITY
    } else if x.is_nan() {
        x
    } else {
        e
    }
}

#[inline(always)]
fn exp_shifted_f32(row: &mut [f32], shift: f32) {
    row.iter_mut().for_each(|x| *x = exp_f32(*x - shift));
}

/// [`exp_shifted_f32`] compiled for AVX2; the same operations, so the same results.
///
/// # Safety
///
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp_shifted_avx2(row: &mut [f32], shift: f32) {
    exp_shifted_f32(row, shift);
}

/// A `[batch, seq, heads, width]` view with unit stride on `width`.
#[derive(Debug, Clone, Copy)]
pub struct Heads<'a, T> {
    data: &'a [T],
    offset: usize,
    /// Strides of batch, seq, head.
    strides: [usize; 3],
    /// Sizes of batch, seq, heads, width.
    dims: [usize; 4],
}

impl<'a, T> Heads<'a, T> {
    /// A view of `data` starting at `offset`.
    ///
    /// # Panics
    ///
    /// When the last element the view addresses lies outside `data`.
    pub fn new(data: &'a [T], offset: usize, strides: [usize; 3], dims: [usize; 4]) -> Self {
        let [b, s, h, w] = dims;
        if b * s * h * w > 0 {
            let last =
                offset + (b - 1) * strides[0] + (s - 1) * strides[1] + (h - 1) * strides[2] + w;
            assert!(
                last <= data.len(),
                "attention view {dims:?} with strides {strides:?} at {offset} overruns {} elements",
                data.len()
            );
        }
        Heads {
            data,
            offset,
            strides,
            dims,
        }
    }

    /// A contiguous `[batch, seq, heads, width]` tensor's view.
    pub fn contiguous(data: &'a [T], dims: [usize; 4]) -> Self {
        let [_, s, h, w] = dims;
        Heads::new(data, 0, [s * h * w, h * w, w], dims)
    }

    /// Sizes `[batch, seq, heads, width]`.
    pub fn dims(&self) -> [usize; 4] {
        self.dims
    }

    /// Pointer to row 0 of head `(b, h)` and the stride between its rows.
    fn head(&self, b: usize, h: usize) -> (*const T, usize) {
        let at = self.offset + b * self.strides[0] + h * self.strides[2];
        (self.data[at..].as_ptr(), self.strides[1])
    }
}

/// What the kernel needs besides the tensors.
#[derive(Debug, Clone, Copy)]
pub struct Params<'a, T> {
    /// Multiplies the scores (usually 1/sqrt(d_head)).
    pub scale: T,
    /// Query `i` sees key `j` only when `j <= i + seq_k - seq_q`.
    pub causal: bool,
    /// Additive `[seq_q, seq_k]` mask, the same for every batch and head.
    pub mask: Option<&'a [T]>,
}

/// `dst[m×n] (row stride dst_rs) = alpha·dst + beta·lhs·rhs`, all row-major with the given
/// (row, column) strides.
///
/// # Safety
///
/// Every pointer must address its whole matrix: `lhs` `m×k`, `rhs` `k×n`, `dst` `m×n`, with
/// the strides given, and `dst` must not alias the others.
#[allow(clippy::too_many_arguments)]
unsafe fn mm<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    lhs: (*const T, usize, usize),
    rhs: (*const T, usize, usize),
    beta: T,
) {
    if m == 0 || n == 0 {
        return;
    }
    // In a bf16 scope ([`crate::linear::with_precision`]) f32 products of dense tiles run in
    // bf16, as PyTorch's autocast runs its attention.
    if dst_rs == n && k > 0 && (!accumulate || beta == T::ONE) {
        let extent =
            |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs + 1;
        // SAFETY: by the caller's contract each operand addresses its whole matrix with these
        // strides, which is exactly `extent` elements from its pointer, and dst (row stride n)
        // holds m n elements and aliases neither.
        let (dst, l, r) = unsafe {
            (
                std::slice::from_raw_parts_mut(dst, m * n),
                std::slice::from_raw_parts(lhs.0, extent(m, k, lhs.1, lhs.2)),
                std::slice::from_raw_parts(rhs.0, extent(k, n, rhs.1, rhs.2)),
            )
        };
        if crate::linear::bf16_product(
            m,
            n,
            k,
            dst,
            accumulate,
            (l, lhs.1, lhs.2),
            (r, rhs.1, rhs.2),
        ) {
            if beta != T::ONE {
                dst.iter_mut().for_each(|v| *v = *v * beta);
            }
            return;
        }
    }
    // SAFETY: the caller's contract; gemm reads lhs/rhs and writes dst within these strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs.0,
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0,
            rhs.2 as isize,
            rhs.1 as isize,
            T::ONE,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Last key (exclusive) any row of the block `[r0, r1)` may see.
fn key_end(r1: usize, tq: usize, tk: usize, causal: bool) -> usize {
    if causal { (r1 + tk - tq).min(tk) } else { tk }
}

/// Fills `s[r, j]` (row stride `n`) with `scale · q_r · k_j` + mask for rows `r0..r1` and keys
/// `0..n`, and -inf where causality hides a key.
#[allow(clippy::too_many_arguments)]
fn scores<T: Real>(
    s: &mut [T],
    q: (*const T, usize),
    k: (*const T, usize),
    r0: usize,
    r1: usize,
    n: usize,
    width: usize,
    tq: usize,
    tk: usize,
    p: &Params<'_, T>,
) {
    let rows = r1 - r0;
    // SAFETY: q rows r0..r1 and k rows 0..n lie inside their views (checked by `Heads::new`
    // and n <= tk); s holds rows × n elements.
    unsafe {
        mm(
            rows,
            n,
            width,
            s.as_mut_ptr(),
            n,
            false,
            (q.0.add(r0 * q.1), q.1, 1),
            (k.0, 1, k.1),
            p.scale,
        );
    }
    for r in 0..rows {
        let row = &mut s[r * n..(r + 1) * n];
        let i = r0 + r;
        if let Some(mask) = p.mask {
            for (x, m) in row.iter_mut().zip(&mask[i * tk..i * tk + n]) {
                *x += *m;
            }
        }
        if p.causal {
            let visible = (i + tk - tq + 1).min(n);
            for x in &mut row[visible..] {
                *x = T::NEG_INF;
            }
        }
    }
}

/// Independent accumulators of the row reductions, so that they vectorize instead of waiting
/// on one chain of dependent operations.
const LANES: usize = 8;

/// The largest element of `row` (-infinity for an empty row); NaN elements are skipped.
#[inline(always)]
fn row_max<T: Real>(row: &[T]) -> T {
    let mut acc = [T::NEG_INF; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &b) in acc.iter_mut().zip(c) {
            *a = if b > *a { b } else { *a };
        }
    }
    let tail = chunks.remainder().iter().copied();
    acc.into_iter()
        .chain(tail)
        .fold(T::NEG_INF, |a, b| if b > a { b } else { a })
}

/// `Σ row` in [`LANES`] interleaved partial sums, added in lane order, then the tail.
#[inline(always)]
fn row_sum<T: Real>(row: &[T]) -> T {
    let mut acc = [T::ZERO; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &b) in acc.iter_mut().zip(c) {
            *a += b;
        }
    }
    let mut l = T::ZERO;
    for a in acc.into_iter().chain(chunks.remainder().iter().copied()) {
        l += a;
    }
    l
}

/// Forward of one head: `o` (`[seq_q, width_v]`, contiguous) and `lse` (`[seq_q]`).
fn forward_head<T: Real>(
    q: (*const T, usize),
    k: (*const T, usize),
    v: (*const T, usize),
    [tq, tk, dh, dv]: [usize; 4],
    p: &Params<'_, T>,
    o: &mut [T],
    lse: &mut [T],
) {
    let mut s = vec![T::ZERO; BLOCK.min(tq) * tk];
    for r0 in (0..tq).step_by(BLOCK) {
        let r1 = (r0 + BLOCK).min(tq);
        let n = key_end(r1, tq, tk, p.causal);
        let rows = r1 - r0;
        let s = &mut s[..rows * n];
        scores(s, q, k, r0, r1, n, dh, tq, tk, p);
        let mut inv = [T::ZERO; BLOCK];
        for r in 0..rows {
            let row = &mut s[r * n..(r + 1) * n];
            let m = row_max(row);
            if m == T::NEG_INF {
                // Every key is masked: the output row is 0 and backward passes nothing.
                row.iter_mut().for_each(|x| *x = T::ZERO);
                lse[r0 + r] = T::NEG_INF;
                continue;
            }
            T::exp_shifted(row, m);
            let l = row_sum(row);
            lse[r0 + r] = m + l.ln();
            inv[r] = T::ONE / l;
        }
        let ob = &mut o[r0 * dv..r1 * dv];
        // SAFETY: s is rows × n, v rows 0..n lie in the view, ob is rows × dv.
        unsafe {
            mm(
                rows,
                dv,
                n,
                ob.as_mut_ptr(),
                dv,
                false,
                (s.as_ptr(), n, 1),
                (v.0, v.1, 1),
                T::ONE,
            )
        };
        for r in 0..rows {
            for x in &mut ob[r * dv..(r + 1) * dv] {
                *x = *x * inv[r];
            }
        }
    }
}

/// Forward attention. Returns `o` (`[batch, seq_q, heads, width_v]`) and `lse`
/// (`[batch, heads, seq_q]`).
///
/// # Panics
///
/// When the views disagree on batch or heads, keys and values on length, queries and keys on
/// width, a causal call has more queries than keys, or the mask is not `seq_q × seq_k`.
pub fn forward<T: Real>(
    q: Heads<'_, T>,
    k: Heads<'_, T>,
    v: Heads<'_, T>,
    p: Params<'_, T>,
) -> (Vec<T>, Vec<T>) {
    let ([b, tq, h, dh], [_, tk, _, dv]) = check(&q, &k, &v, &p);
    let mut o = vec![T::ZERO; b * tq * h * dv];
    let mut lse = vec![T::ZERO; b * h * tq];
    let precision = crate::linear::current_precision();
    let heads: Vec<(Vec<T>, Vec<T>)> = (0..b * h)
        .into_par_iter()
        .map(|bh| {
            crate::linear::with_precision(precision, || {
                let (bi, hi) = (bh / h, bh % h);
                let mut oh = vec![T::ZERO; tq * dv];
                let mut lh = vec![T::ZERO; tq];
                forward_head(
                    q.head(bi, hi),
                    k.head(bi, hi),
                    v.head(bi, hi),
                    [tq, tk, dh, dv],
                    &p,
                    &mut oh,
                    &mut lh,
                );
                (oh, lh)
            })
        })
        .collect();
    for (bh, (oh, lh)) in heads.into_iter().enumerate() {
        let (bi, hi) = (bh / h, bh % h);
        for t in 0..tq {
            let at = ((bi * tq + t) * h + hi) * dv;
            o[at..at + dv].copy_from_slice(&oh[t * dv..(t + 1) * dv]);
        }
        lse[bh * tq..(bh + 1) * tq].copy_from_slice(&lh);
    }
    (o, lse)
}

fn check<T>(
    q: &Heads<'_, T>,
    k: &Heads<'_, T>,
    v: &Heads<'_, T>,
    p: &Params<'_, T>,
) -> ([usize; 4], [usize; 4]) {
    let ([b, tq, h, dh], [bk, tk, hk, dk], [bv, tv, hv, dv]) = (q.dims, k.dims, v.dims);
    assert!(
        b == bk && b == bv && h == hk && h == hv && tk == tv && dh == dk,
        "attention shapes disagree: q {:?}, k {:?}, v {:?} (as [batch, seq, heads, width])",
        q.dims,
        k.dims,
        v.dims
    );
    assert!(
        !p.causal || tq <= tk,
        "causal attention needs seq_q {tq} <= seq_k {tk}"
    );
    check_mask(p, tq, tk);
    ([b, tq, h, dh], [b, tk, h, dv])
}

fn check_mask<T>(p: &Params<'_, T>, tq: usize, tk: usize) {
    if let Some(m) = p.mask {
        assert_eq!(
            m.len(),
            tq * tk,
            "the mask must be [seq_q, seq_k] = [{tq}, {tk}]"
        );
    }
}

/// The forward's output, the output gradient and the log-sum-exp against the backward's
/// `[batch, seq_q, heads, width_v]`.
fn check_output<T>(o: &Heads<'_, T>, d_o: &Heads<'_, T>, lse: &[T], dims: [usize; 4]) {
    let [b, tq, h, _] = dims;
    assert!(
        o.dims == dims && d_o.dims == dims && lse.len() == b * h * tq,
        "attention backward: o {:?}, d_o {:?}, lse {} do not match [batch, seq_q, heads, width_v] = {:?}",
        o.dims,
        d_o.dims,
        lse.len(),
        dims
    );
}

/// Backward of one head into contiguous `dq [seq_q, dh]`, `dk [seq_k, dh]`, `dv [seq_k, dv]`.
#[allow(clippy::too_many_arguments)]
fn backward_head<T: Real>(
    q: (*const T, usize),
    k: (*const T, usize),
    v: (*const T, usize),
    o: (*const T, usize),
    d_o: (*const T, usize),
    lse: &[T],
    [tq, tk, dh, dv]: [usize; 4],
    p: &Params<'_, T>,
    dq: &mut [T],
    dk: &mut [T],
    dvv: &mut [T],
) {
    // D_i = dO_i · O_i, the softmax backward's row correction.
    let d: Vec<T> = (0..tq)
        .map(|i| {
            let mut acc = T::ZERO;
            for c in 0..dv {
                // SAFETY: row i, column c lies in the o and dO views.
                unsafe { acc += *o.0.add(i * o.1 + c) * *d_o.0.add(i * d_o.1 + c) };
            }
            acc
        })
        .collect();
    let mut s = vec![T::ZERO; BLOCK.min(tq) * tk];
    let mut dp = vec![T::ZERO; BLOCK.min(tq) * tk];
    for r0 in (0..tq).step_by(BLOCK) {
        let r1 = (r0 + BLOCK).min(tq);
        let n = key_end(r1, tq, tk, p.causal);
        let rows = r1 - r0;
        let (s, dp) = (&mut s[..rows * n], &mut dp[..rows * n]);
        scores(s, q, k, r0, r1, n, dh, tq, tk, p);
        for r in 0..rows {
            let l = lse[r0 + r];
            let row = &mut s[r * n..(r + 1) * n];
            if l == T::NEG_INF {
                row.iter_mut().for_each(|x| *x = T::ZERO);
            } else {
                T::exp_shifted(row, l);
            }
        }
        let dob = (d_o.0.wrapping_add(r0 * d_o.1), d_o.1);
        // SAFETY (all products below): every operand is a block of a view or buffer whose
        // extent was checked: s/dp rows × n, dO rows r0..r1, q rows r0..r1, k/v rows 0..n,
        // dq rows r0..r1, dk/dv rows 0..n.
        unsafe {
            // dV[0..n] += P^T dO_blk
            mm(
                n,
                dv,
                rows,
                dvv.as_mut_ptr(),
                dv,
                true,
                (s.as_ptr(), 1, n),
                (dob.0, dob.1, 1),
                T::ONE,
            );
            // dP = dO_blk V^T
            mm(
                rows,
                n,
                dv,
                dp.as_mut_ptr(),
                n,
                false,
                (dob.0, dob.1, 1),
                (v.0, 1, v.1),
                T::ONE,
            );
        }
        for r in 0..rows {
            let di = d[r0 + r];
            for (g, pr) in dp[r * n..(r + 1) * n]
                .iter_mut()
                .zip(&s[r * n..(r + 1) * n])
            {
                *g = *pr * (*g - di);
            }
        }
        unsafe {
            // dQ_blk = scale dS K[0..n]
            mm(
                rows,
                dh,
                n,
                dq[r0 * dh..].as_mut_ptr(),
                dh,
                false,
                (dp.as_ptr(), n, 1),
                (k.0, k.1, 1),
                p.scale,
            );
            // dK[0..n] += scale dS^T Q_blk
            mm(
                n,
                dh,
                rows,
                dk.as_mut_ptr(),
                dh,
                true,
                (dp.as_ptr(), 1, n),
                (q.0.add(r0 * q.1), q.1, 1),
                p.scale,
            );
        }
    }
}

/// Backward attention from the forward's `o` and `lse` and the output gradient `d_o`.
/// Returns `(dq, dk, dv)`, each contiguous `[batch, seq, heads, width]`.
///
/// # Panics
///
/// As [`forward`], and when `o`, `d_o` or `lse` do not match the forward's shapes.
pub fn backward<T: Real>(
    q: Heads<'_, T>,
    k: Heads<'_, T>,
    v: Heads<'_, T>,
    o: Heads<'_, T>,
    d_o: Heads<'_, T>,
    lse: &[T],
    p: Params<'_, T>,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let ([b, tq, h, dh], [_, tk, _, dv]) = check(&q, &k, &v, &p);
    let mut dq = vec![T::ZERO; b * tq * h * dh];
    let mut dk = vec![T::ZERO; b * tk * h * dh];
    let mut dvv = vec![T::ZERO; b * tk * h * dv];
    let sinks = [
        Sink::new(&mut dq, h, 0),
        Sink::new(&mut dk, h, 0),
        Sink::new(&mut dvv, h, 0),
    ];
    backward_into(q, k, v, o, d_o, lse, p, sinks);
    (dq, dk, dvv)
}

/// [`backward`] for self-attention whose `q`, `k` and `v` are the three thirds of one
/// `[batch, seq, 3 heads, width]` projection (heads `0..h`, `h..2h`, `2h..3h`): returns the
/// gradient of that projection, written in place, so no separate `dq`, `dk`, `dv` exist.
///
/// # Panics
///
/// As [`backward`], and when `q`, `k` and `v` do not share one shape.
pub fn backward_packed<T: Real>(
    q: Heads<'_, T>,
    k: Heads<'_, T>,
    v: Heads<'_, T>,
    o: Heads<'_, T>,
    d_o: Heads<'_, T>,
    lse: &[T],
    p: Params<'_, T>,
) -> Vec<T> {
    let ([b, t, h, d], kd) = (q.dims, k.dims);
    assert!(
        kd == q.dims && v.dims == q.dims,
        "packed attention needs q, k, v of one shape: {:?}, {:?}, {:?}",
        q.dims,
        k.dims,
        v.dims
    );
    let mut dqkv = vec![T::ZERO; b * t * 3 * h * d];
    let [sq, sk, sv] = [0, h, 2 * h].map(|offset| Sink::new(&mut dqkv, 3 * h, offset));
    backward_into(q, k, v, o, d_o, lse, p, [sq, sk, sv]);
    dqkv
}

/// One (batch, head) pair's backward into fresh contiguous buffers `[dq, dk, dv]`, from its
/// `q`, `k`, `v` rows (pointer, row stride), the forward's output and the output gradient, and
/// the log-sum-exp of all `heads` heads.
fn head_grads<T: Real>(
    [q, k, v]: [(*const T, usize); 3],
    [o, d_o]: [Heads<'_, T>; 2],
    lse: &[T],
    (bi, hi, heads): (usize, usize, usize),
    [tq, tk, dh, dv]: [usize; 4],
    p: &Params<'_, T>,
) -> [Vec<T>; 3] {
    let (mut dq, mut dk, mut dvv) = (
        vec![T::ZERO; tq * dh],
        vec![T::ZERO; tk * dh],
        vec![T::ZERO; tk * dv],
    );
    let bh = bi * heads + hi;
    backward_head(
        q,
        k,
        v,
        o.head(bi, hi),
        d_o.head(bi, hi),
        &lse[bh * tq..(bh + 1) * tq],
        [tq, tk, dh, dv],
        p,
        &mut dq,
        &mut dk,
        &mut dvv,
    );
    [dq, dk, dvv]
}

/// [`backward_packed`] written over the projection itself: `qkv` (`[batch, seq, 3 heads,
/// width]`, contiguous) holds `q`, `k`, `v` on entry and their gradients on return, so the
/// backward allocates nothing of the projection's size. Each (batch, head) task copies its
/// own three heads out, computes, and writes their gradients back into the same places, which
/// no other task reads or writes.
///
/// # Panics
///
/// When `qkv`'s length does not match `dims`, and as [`backward`].
#[allow(clippy::too_many_arguments)]
pub fn backward_packed_in_place<T: Real>(
    qkv: &mut [T],
    [b, t, h, d]: [usize; 4],
    o: Heads<'_, T>,
    d_o: Heads<'_, T>,
    lse: &[T],
    p: Params<'_, T>,
) {
    assert_eq!(
        qkv.len(),
        b * t * 3 * h * d,
        "packed projection of {:?}",
        [b, t, 3 * h, d]
    );
    check_output(&o, &d_o, lse, [b, t, h, d]);
    check_mask(&p, t, t);
    let base = Sink::new(qkv, 3 * h, 0);
    let precision = crate::linear::current_precision();
    (0..b * h).into_par_iter().for_each(|bh| {
        crate::linear::with_precision(precision, || {
            let (bi, hi) = (bh / h, bh % h);
            let sinks = [0, h, 2 * h].map(|offset| base.at_offset(offset));
            // This task's q, k, v heads, copied out before anything is written.
            let mut heads = [0, 1, 2].map(|_| vec![T::ZERO; t * d]);
            for (sink, head) in sinks.iter().zip(heads.iter_mut()) {
                // SAFETY: `qkv` is borrowed mutably for this whole function, and this task alone
                // touches the rows of heads `hi`, `h + hi` and `2h + hi` of batch `bi`.
                unsafe { sink.read_head(head, bi, hi, t, d) };
            }
            let [q, k, v] = &heads;
            let [dq, dk, dv] = head_grads(
                [(q.as_ptr(), d), (k.as_ptr(), d), (v.as_ptr(), d)],
                [o, d_o],
                lse,
                (bi, hi, h),
                [t, t, d, d],
                &p,
            );
            // SAFETY: as above: the same rows, read completely before this write.
            unsafe {
                sinks[0].write_head(&dq, bi, hi, t, d);
                sinks[1].write_head(&dk, bi, hi, t, d);
                sinks[2].write_head(&dv, bi, hi, t, d);
            }
        })
    });
}

/// Where one gradient goes: head `offset + hi` of a `[batch, seq, heads, width]` buffer. Holds
/// a raw pointer so that the three gradients of [`backward_packed`] can share one buffer.
#[derive(Clone, Copy)]
struct Sink<T> {
    data: *mut T,
    len: usize,
    heads: usize,
    offset: usize,
}

// SAFETY: a sink is only written through `Sink::write_head`, and the tasks of `backward_into`
// write disjoint rows (see there).
unsafe impl<T: Send> Send for Sink<T> {}
unsafe impl<T: Send> Sync for Sink<T> {}

impl<T: Copy> Sink<T> {
    fn new(buffer: &mut [T], heads: usize, offset: usize) -> Self {
        Sink {
            data: buffer.as_mut_ptr(),
            len: buffer.len(),
            heads,
            offset,
        }
    }

    /// The same buffer, heads counted from `offset`.
    fn at_offset(self, offset: usize) -> Self {
        Sink { offset, ..self }
    }

    /// Copies head `(b, h)`'s `[seq, width]` rows out of the buffer into `dst`.
    ///
    /// # Safety
    ///
    /// The buffer the sink was made from is alive and no other thread writes the same rows.
    unsafe fn read_head(&self, dst: &mut [T], b: usize, h: usize, seq: usize, width: usize) {
        for t in 0..seq {
            let at = ((b * seq + t) * self.heads + self.offset + h) * width;
            assert!(at + width <= self.len, "attention head row out of bounds");
            // SAFETY: in bounds (asserted); the caller guarantees liveness and exclusivity.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.data.add(at),
                    dst[t * width..(t + 1) * width].as_mut_ptr(),
                    width,
                )
            };
        }
    }

    /// Copies head `(b, h)`'s contiguous `[seq, width]` rows into place.
    ///
    /// # Safety
    ///
    /// The buffer the sink was made from is alive and no other thread writes the same rows.
    unsafe fn write_head(&self, src: &[T], b: usize, h: usize, seq: usize, width: usize) {
        for t in 0..seq {
            let at = ((b * seq + t) * self.heads + self.offset + h) * width;
            assert!(
                at + width <= self.len,
                "attention gradient row out of bounds"
            );
            // SAFETY: in bounds (asserted); the caller guarantees liveness and exclusivity.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    src[t * width..(t + 1) * width].as_ptr(),
                    self.data.add(at),
                    width,
                )
            };
        }
    }
}

/// The backward of every (batch, head) pair in parallel, each written into its rows of the
/// three sinks as soon as it is done.
#[allow(clippy::too_many_arguments)]
fn backward_into<T: Real>(
    q: Heads<'_, T>,
    k: Heads<'_, T>,
    v: Heads<'_, T>,
    o: Heads<'_, T>,
    d_o: Heads<'_, T>,
    lse: &[T],
    p: Params<'_, T>,
    [sq, sk, sv]: [Sink<T>; 3],
) {
    let ([b, tq, h, dh], [_, tk, _, dv]) = check(&q, &k, &v, &p);
    check_output(&o, &d_o, lse, [b, tq, h, dv]);
    let precision = crate::linear::current_precision();
    (0..b * h).into_par_iter().for_each(|bh| {
        crate::linear::with_precision(precision, || {
            let (bi, hi) = (bh / h, bh % h);
            let [dq, dk, dvv] = head_grads(
                [q.head(bi, hi), k.head(bi, hi), v.head(bi, hi)],
                [o, d_o],
                lse,
                (bi, hi, h),
                [tq, tk, dh, dv],
                &p,
            );
            // SAFETY: the sinks' buffers outlive this parallel loop (they belong to the caller),
            // and task (bi, hi) writes only the rows of head `offset + hi` of batch `bi`: distinct
            // tasks write distinct rows, also when the three sinks share one buffer (their head
            // offsets are 0, h and 2h, and hi < h).
            unsafe {
                sq.write_head(&dq, bi, hi, tq, dh);
                sk.write_head(&dk, bi, hi, tk, dh);
                sv.write_head(&dvv, bi, hi, tk, dv);
            }
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_exponentiate_within_two_ulps() {
        let mut worst = (0.0f64, 0.0f32);
        for i in -870_000..=880_000 {
            let x = i as f32 / 10_000.0;
            let exact = f64::from(x).exp();
            let ulps = (f64::from(exp_f32(x)) - exact).abs()
                / (f64::from(f32::EPSILON) * exact.max(f64::from(f32::MIN_POSITIVE)));
            if ulps > worst.0 {
                worst = (ulps, x);
            }
        }
        assert!(worst.0 <= 2.0, "{worst:?}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
        // Rows: the dispatched kernel, the portable one and one element at a time agree.
        let xs: Vec<f32> = (0..100).map(|i| i as f32 * 0.37 - 20.0).collect();
        let mut a = xs.clone();
        f32::exp_shifted(&mut a, 1.5);
        let mut b = xs.clone();
        exp_shifted_f32(&mut b, 1.5);
        let c: Vec<f32> = xs.iter().map(|&x| exp_f32(x - 1.5)).collect();
        assert_eq!(a, b);
        assert_eq!(a, c);
    }
}

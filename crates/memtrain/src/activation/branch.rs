//! The branch tables of inverted GELU and SiLU: `f'(f⁻¹(y))` on each side of the minimum.
//!
//! Novikov & Oseledets, "Inverted Activations: Reducing Memory Footprint in Neural Network
//! Training", <https://arxiv.org/abs/2407.15545>.
//!
//! Sigmoid, Tanh and Softplus are monotone and `f'(f⁻¹(y))` has a closed form:
//! `y (1 - y)`, `1 - y²`, `1 - e^{-y}`. GELU and SiLU have one minimum `x*`; one bit per
//! element (packed 8 to a byte) says on which side of it `x` lies, and on each side
//! `g(y) = f'(f⁻¹(y))` is approximated by a table fitted once:
//!
//! - the variable is `s = sqrt(y - f(x*))`, in which `g` is analytic at the minimum (near it
//!   `y - f(x*) ≈ f''(x*) (x - x*)² / 2`, so `x` is a smooth function of `±s`);
//! - each side's `s` range is cut into [`CELLS`] equal cells with a cubic per cell,
//!   interpolating `g` at the cell's Chebyshev nodes (exact inversion by bisection in f64);
//! - beyond the table's right end `g = 1` (GELU: `y > 6`, SiLU: `y > 20`, where
//!   `|f' - 1| < 1e-7`).
//!
//! Evaluation is a square root, a table lookup and three fused multiply-adds. Accuracy (test
//! `should_recover_the_derivative_within_the_documented_error`, f32 outputs of f32 inputs on
//! a 1e-3 grid over [-10, 10] and 10⁵ N(0, 1) samples): GELU max absolute error 5.8e-5 and
//! max relative error 2.5e-6 where `|f'| >= 0.05`; SiLU 8.4e-5 and 3.1e-6. The maximum
//! absolute error sits next to the minimum, where it is set by f32's rounding of `y` (the
//! table itself is exact to about 1e-7 there). The reference implementation (PgLoLo/optiacts)
//! fits small closed forms with about 1.9e-2 absolute error for GELU.

use std::sync::OnceLock;

use super::function::ActFn;

/// Cells per side of the minimum.
pub const CELLS: usize = 256;

impl ActFn {
    /// The derivative recovered from the output `y` and, for GELU and SiLU, the branch bit
    /// (`true` when `x` is left of the minimum).
    ///
    /// # Panics
    ///
    /// For a function that is not [`ActFn::is_invertible`].
    #[inline]
    pub fn derivative_from_output(self, y: f32, left: bool) -> f32 {
        match self {
            ActFn::Gelu | ActFn::Silu => table(self).eval(y, left),
            ActFn::Sigmoid => y * (1.0 - y),
            ActFn::Tanh => 1.0 - y * y,
            ActFn::Softplus => -(-y).exp_m1(),
            other => panic!("{other:?} is not invertible (ActFn::is_invertible)"),
        }
    }

    /// `g[i] *= derivative_from_output(y[i], left)` where `left` is bit `base + i` of the packed
    /// stream `bits` (least significant bit first; empty for a function without branch bits),
    /// with the table looked up once for the slice.
    ///
    /// # Panics
    ///
    /// For a function that is not [`ActFn::is_invertible`], when `y` and `g` differ in length,
    /// or when a needed bit is past the end of `bits`.
    pub fn scale_by_derivative(self, y: &[f32], bits: &[u8], base: usize, g: &mut [f32]) {
        assert_eq!(
            y.len(),
            g.len(),
            "scale_by_derivative: output and gradient lengths"
        );
        if !self.needs_bit() {
            for (g, &y) in g.iter_mut().zip(y) {
                *g *= self.derivative_from_output(y, false);
            }
            return;
        }
        let t = table(self);
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked above.
            return unsafe { scale_avx2(t, y, bits, base, g) };
        }
        scale(t, y, bits, base, g);
    }

    /// The minimiser `x*` (GELU, SiLU), where the branch bit switches.
    pub fn argmin(self) -> Option<f64> {
        self.needs_bit().then(|| table(self).x_min)
    }
}

/// The fitted `g(y) = f'(f⁻¹(y))` on both sides of the minimum.
#[derive(Debug)]
pub struct BranchTable {
    x_min: f64,
    y_min: f32,
    /// Right side: cells over `s ∈ [0, s_right]`; beyond, `g = 1`.
    s_right: f32,
    right: Vec<[f32; 4]>,
    /// Left side: cells over `s ∈ [0, s_left]` (`s_left² = -y_min`, `y → 0⁻`).
    s_left: f32,
    left: Vec<[f32; 4]>,
    /// `left` then `right`, flat: four coefficients a cell, for vector loads.
    flat: Vec<f32>,
}

/// Bisection for `f(x) = y` on `[lo, hi]` where `f` is monotone (`rising` says which way).
fn solve(f: impl Fn(f64) -> f64, y: f64, mut lo: f64, mut hi: f64, rising: bool) -> f64 {
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if (f(mid) < y) == rising {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Cubic through four points `(t_i, g_i)`, as monomial coefficients in `t` (Newton's divided
/// differences, expanded).
fn cubic_through(t: [f64; 4], g: [f64; 4]) -> [f32; 4] {
    let mut d = g;
    for j in 1..4 {
        for i in (j..4).rev() {
            d[i] = (d[i] - d[i - 1]) / (t[i] - t[i - j]);
        }
    }
    // p(t) = d0 + d1 (t - t0) + d2 (t - t0)(t - t1) + d3 (t - t0)(t - t1)(t - t2), expanded
    // by Horner into coefficients, highest degree first.
    let mut poly = vec![d[3]];
    for k in (0..3).rev() {
        let mut next = vec![0.0; poly.len() + 1];
        for (i, &p) in poly.iter().enumerate() {
            next[i] += p;
            next[i + 1] -= p * t[k];
        }
        *next.last_mut().expect("non-empty") += d[k];
        poly = next;
    }
    [
        poly[0] as f32,
        poly[1] as f32,
        poly[2] as f32,
        poly[3] as f32,
    ]
}

impl BranchTable {
    fn fit(func: ActFn) -> Self {
        let f = |x: f64| func.f(x);
        let df = |x: f64| func.df(x);
        let x_min = solve(df, 0.0, -5.0, 0.0, true);
        let y_min = f(x_min);
        let y_right_end = match func {
            ActFn::Gelu => 6.0,
            _ => 20.0,
        };
        let side = |s_end: f64, right: bool| -> Vec<[f32; 4]> {
            let h = s_end / CELLS as f64;
            (0..CELLS)
                .map(|c| {
                    let t: [f64; 4] = std::array::from_fn(|i| {
                        0.5 - 0.5 * ((2 * i + 1) as f64 * std::f64::consts::PI / 8.0).cos()
                    });
                    let g = t.map(|ti| {
                        let s = (c as f64 + ti) * h;
                        let y = y_min + s * s;
                        let x = if right {
                            solve(f, y, x_min, y.max(0.0) + 10.0, true)
                        } else {
                            solve(f, y, -60.0, x_min, false)
                        };
                        df(x)
                    });
                    cubic_through(t, g)
                })
                .collect()
        };
        let s_right = (y_right_end - y_min).sqrt();
        let s_left = (-y_min).sqrt();
        let (left, right) = (side(s_left, false), side(s_right, true));
        BranchTable {
            x_min,
            y_min: y_min as f32,
            s_right: s_right as f32,
            s_left: s_left as f32,
            flat: left.iter().chain(&right).flatten().copied().collect(),
            right,
            left,
        }
    }

    #[inline(always)]
    fn eval(&self, y: f32, left: bool) -> f32 {
        let s = (y - self.y_min).max(0.0).sqrt();
        let (cells, s_end) = if left {
            (&self.left, self.s_left)
        } else {
            (&self.right, self.s_right)
        };
        if !left && s >= s_end {
            return 1.0;
        }
        let u = (s / s_end).min(1.0) * CELLS as f32;
        let i = (u as usize).min(CELLS - 1);
        let t = u - i as f32;
        let [a, b, c, d] = cells[i];
        ((a * t + b) * t + c) * t + d
    }
}

/// `g[i] *= t.eval(y[i], bit base + i of bits)`.
#[inline(always)]
fn scale(t: &BranchTable, y: &[f32], bits: &[u8], base: usize, g: &mut [f32]) {
    for (i, (g, &y)) in g.iter_mut().zip(y).enumerate() {
        let k = base + i;
        let left = (bits[k >> 3] >> (k & 7)) & 1 == 1;
        *g *= t.eval(y, left);
    }
}

/// [`scale`] eight elements at a time with AVX2 (each lane's cubic loaded whole and the
/// eight transposed into four coefficient vectors): the same operations in the same order
/// on every lane (both branches computed, then blended), so the same results; the elements
/// before the first whole byte of bits and after the last whole group of eight go through
/// [`scale`].
///
/// # Safety
///
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scale_avx2(t: &BranchTable, y: &[f32], bits: &[u8], base: usize, g: &mut [f32]) {
    use std::arch::x86_64::*;
    let head = ((8 - base % 8) % 8).min(g.len());
    scale(t, &y[..head], bits, base, &mut g[..head]);
    let groups = (g.len() - head) / 8;
    let cells = CELLS as i32;
    // SAFETY: AVX2 is enabled for this function; every load and store below covers lanes
    // head + 8j .. head + 8j + 8 < g.len() = y.len(), and every cell loaded is the four
    // values from 4 (cell + side), with 4 (cell + side) + 4 <= 8 CELLS = t.flat.len(): cell
    // is clamped to CELLS - 1 (the cast of a NaN or huge u gives i32::MIN, clamped by max
    // with 0 below).
    unsafe {
        let y_min = _mm256_set1_ps(t.y_min);
        let zero = _mm256_setzero_ps();
        let one = _mm256_set1_ps(1.0);
        let (s_left, s_right) = (_mm256_set1_ps(t.s_left), _mm256_set1_ps(t.s_right));
        let n_cells = _mm256_set1_ps(CELLS as f32);
        let lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        for j in 0..groups {
            let at = head + 8 * j;
            let byte = i32::from(bits[(base + at) / 8]);
            let left = _mm256_castsi256_ps(_mm256_cmpeq_epi32(
                _mm256_and_si256(_mm256_set1_epi32(byte), lane_bit),
                lane_bit,
            ));
            let yv = _mm256_loadu_ps(y.as_ptr().add(at));
            // s = sqrt(max(y - y_min, 0)); max returns its second operand for a NaN.
            let s = _mm256_sqrt_ps(_mm256_max_ps(_mm256_sub_ps(yv, y_min), zero));
            let s_end = _mm256_blendv_ps(s_right, s_left, left);
            let u = _mm256_mul_ps(_mm256_min_ps(_mm256_div_ps(s, s_end), one), n_cells);
            let cell = _mm256_max_epi32(
                _mm256_min_epi32(_mm256_cvttps_epi32(u), _mm256_set1_epi32(cells - 1)),
                _mm256_setzero_si256(),
            );
            let tt = _mm256_sub_ps(u, _mm256_cvtepi32_ps(cell));
            let side = _mm256_andnot_si256(_mm256_castps_si256(left), _mm256_set1_epi32(cells));
            let idx = _mm256_slli_epi32(_mm256_add_epi32(cell, side), 2);
            // Each lane's cell is four consecutive coefficients: one 16-byte load a lane,
            // then a 4 x 8 transpose (faster than four gathers on Zen 4).
            let mut at_cell = [0i32; 8];
            _mm256_storeu_si256(at_cell.as_mut_ptr().cast(), idx);
            let p = t.flat.as_ptr();
            let row = |l: usize| _mm_loadu_ps(p.add(at_cell[l] as usize));
            let r04 = _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(row(0)), row(4));
            let r15 = _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(row(1)), row(5));
            let r26 = _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(row(2)), row(6));
            let r37 = _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(row(3)), row(7));
            let (t0, t1) = (_mm256_unpacklo_ps(r04, r15), _mm256_unpackhi_ps(r04, r15));
            let (t2, t3) = (_mm256_unpacklo_ps(r26, r37), _mm256_unpackhi_ps(r26, r37));
            let a = _mm256_shuffle_ps::<0x44>(t0, t2);
            let b = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let c = _mm256_shuffle_ps::<0x44>(t1, t3);
            let d = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let mut v = _mm256_add_ps(_mm256_mul_ps(a, tt), b);
            v = _mm256_add_ps(_mm256_mul_ps(v, tt), c);
            v = _mm256_add_ps(_mm256_mul_ps(v, tt), d);
            // Right of the table's end (and right of the minimum) the derivative is 1.
            let past = _mm256_andnot_ps(left, _mm256_cmp_ps::<_CMP_GE_OQ>(s, s_end));
            v = _mm256_blendv_ps(v, one, past);
            let gp = g.as_mut_ptr().add(at);
            _mm256_storeu_ps(gp, _mm256_mul_ps(_mm256_loadu_ps(gp), v));
        }
    }
    let done = head + 8 * groups;
    scale(t, &y[done..], bits, base + done, &mut g[done..]);
}

/// A branch table as flat f32 data for a device kernel: `(y_min, s_left, s_right, x_min,
/// cells)` with the left side's cubics, then the right side's, four coefficients a cell
/// (highest degree first). `None` for a function without a branch bit.
#[cfg(memtrain_cube)]
pub(crate) fn flat_table(func: ActFn) -> Option<(f32, f32, f32, f32, Vec<f32>)> {
    func.needs_bit().then(|| {
        let t = table(func);
        let cells: Vec<f32> = t.left.iter().chain(&t.right).flatten().copied().collect();
        (t.y_min, t.s_left, t.s_right, t.x_min as f32, cells)
    })
}

fn table(func: ActFn) -> &'static BranchTable {
    static GELU: OnceLock<BranchTable> = OnceLock::new();
    static SILU: OnceLock<BranchTable> = OnceLock::new();
    match func {
        ActFn::Gelu => GELU.get_or_init(|| BranchTable::fit(ActFn::Gelu)),
        ActFn::Silu => SILU.get_or_init(|| BranchTable::fit(ActFn::Silu)),
        other => unreachable!("{other:?} has an exact inverse and no table"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_find_the_published_minima() {
        // Golden: GELU x* = -0.75179, f(x*) = -0.169971; SiLU x* = -1.27846, f(x*) = -0.278465.
        let g = ActFn::Gelu.argmin().unwrap();
        assert!((g + 0.751_79).abs() < 1e-5 && (ActFn::Gelu.f(g) + 0.169_971).abs() < 1e-6);
        let s = ActFn::Silu.argmin().unwrap();
        assert!((s + 1.278_46).abs() < 1e-5 && (ActFn::Silu.f(s) + 0.278_465).abs() < 1e-6);
    }

    #[test]
    fn should_scale_by_the_same_derivative_in_every_build() {
        // Outputs over both sides and past both ends, odd starts and lengths, every bit.
        let n = 1000;
        let y: Vec<f32> = (0..n)
            .map(|i| -0.2 + 7.0 * ((i * 7919) % n) as f32 / n as f32)
            .chain([f32::NAN, -1.0, 0.0, -0.169_971, 6.5, 100.0])
            .collect();
        let bits: Vec<u8> = (0..y.len().div_ceil(8) + 2)
            .map(|i| (i * 37) as u8)
            .collect();
        for func in [ActFn::Gelu, ActFn::Silu] {
            let t = table(func);
            for (base, start) in [(0, 0), (3, 5), (8, 1), (13, 0)] {
                let ys = &y[start..];
                let grad: Vec<f32> = (0..ys.len()).map(|i| 1.0 + i as f32 * 1e-3).collect();
                let mut want = grad.clone();
                scale(t, ys, &bits, base, &mut want);
                let mut got = grad.clone();
                func.scale_by_derivative(ys, &bits, base, &mut got);
                for (k, (w, g)) in want.iter().zip(&got).enumerate() {
                    assert!(
                        w.to_bits() == g.to_bits(),
                        "{func:?} base {base} at {k}: {w} vs {g}"
                    );
                    let left = (bits[(base + k) >> 3] >> ((base + k) & 7)) & 1 == 1;
                    let d = func.derivative_from_output(ys[k], left);
                    assert_eq!(d * grad[k], *w);
                }
            }
        }
    }

    #[test]
    fn should_interpolate_a_cubic_exactly() {
        let p = |t: f64| 0.5 - 2.0 * t + 3.0 * t * t - 0.25 * t * t * t;
        let t = [0.1, 0.3, 0.7, 0.9];
        let c = cubic_through(t, t.map(p));
        for (got, want) in c.iter().zip([-0.25f32, 3.0, -2.0, 0.5]) {
            assert!((got - want).abs() < 1e-5, "{c:?}");
        }
    }
}

//! Tucker-2: a 4-D kernel compressed along its two channel modes.

use burn::tensor::Tensor;

use crate::error::{Error, Result};
use memtrain_tt::linalg::{compact, leading_left};

/// Settings of [`tucker2`]: the ranks of modes 0 and 1, and the HOOI sweeps after the HOSVD
/// initialisation (0 returns the truncated HOSVD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tucker2Params {
    /// `(r₁, r₂)`, the ranks along `c_out` and `c_in`.
    pub ranks: (usize, usize),
    /// Higher-order orthogonal iteration sweeps.
    pub iters: usize,
}

impl Tucker2Params {
    /// Ranks `(r1, r2)` and 10 HOOI sweeps.
    pub fn new(r1: usize, r2: usize) -> Self {
        Self {
            ranks: (r1, r2),
            iters: 10,
        }
    }

    /// The same ranks with `iters` HOOI sweeps.
    pub fn with_iters(mut self, iters: usize) -> Self {
        self.iters = iters;
        self
    }
}

/// `W ≈ core ×₁ U₁ ×₂ U₂`: `core [r₁, r₂, kh, kw]`, `U₁ [c_out, r₁]`, `U₂ [c_in, r₂]` with
/// orthonormal columns. As layers: a `1x1` conv `c_in -> r₂` (`U₂ᵀ`), the `kh x kw` conv
/// `r₂ -> r₁` (the core), a `1x1` conv `r₁ -> c_out` (`U₁`).
///
/// # Memory
///
/// `c_out r₁ + c_in r₂ + r₁ r₂ kh kw` elements ([`Tucker2::param_count`]) against
/// `c_out c_in kh kw` dense.
#[derive(Debug, Clone)]
pub struct Tucker2 {
    /// `[r₁, r₂, kh, kw]`.
    pub core: Tensor<4>,
    /// `[c_out, r₁]`, orthonormal columns.
    pub u1: Tensor<2>,
    /// `[c_in, r₂]`, orthonormal columns.
    pub u2: Tensor<2>,
}

impl Tucker2 {
    /// Elements in the core and both factors.
    pub fn param_count(&self) -> usize {
        let [r1, r2, h, w] = self.core.dims();
        let ([a, _], [b, _]) = (self.u1.dims(), self.u2.dims());
        a * r1 + b * r2 + r1 * r2 * h * w
    }

    /// The dense tensor `[c_out, c_in, kh, kw]`.
    pub fn full(&self) -> Tensor<4> {
        let t = mode0(self.core.clone(), self.u1.clone()); // [c_out, r2, kh, kw]
        mode0(t.permute([1, 0, 2, 3]), self.u2.clone()).permute([1, 0, 2, 3])
    }
}

/// `m ·₀ t`: `m [p, q]` times mode 0 of `t [q, x, y, z]`, giving `[p, x, y, z]`.
fn mode0(t: Tensor<4>, m: Tensor<2>) -> Tensor<4> {
    let [q, x, y, z] = t.dims();
    let p = m.dims()[0];
    m.matmul(t.reshape([q, x * y * z])).reshape([p, x, y, z])
}

/// The mode-0 unfolding `[n_0, n_1 n_2 n_3]`.
fn unfold0(t: Tensor<4>) -> Tensor<2> {
    let [a, b, h, w] = t.dims();
    t.reshape([a, b * h * w])
}

/// Tucker-2 decomposition of modes 0 and 1 of a 4-D tensor `[c_out, c_in, kh, kw]` (a conv
/// kernel; a linear weight `[d_out, d_in]` goes in as `[d_out, d_in, 1, 1]`, where it
/// becomes `U₁ core U₂ᵀ`): HOSVD initialisation (leading left singular vectors of the two
/// unfoldings), then `iters` sweeps of higher-order orthogonal iteration, each factor the
/// leading singular subspace of the tensor projected on the other.
///
/// [Kim et al. 2016, Compression of deep convolutional neural networks for fast and low
/// power mobile applications](https://arxiv.org/abs/1511.06530); HOOI from [De Lathauwer
/// et al. 2000](https://doi.org/10.1137/S0895479898346995).
///
/// # Errors
///
/// [`Error::Config`] for a rank outside `1..=c_out` or `1..=c_in`, or NaN/infinite
/// entries.
pub fn tucker2(w: Tensor<4>, params: Tucker2Params) -> Result<Tucker2> {
    let [a, b, h, wd] = w.dims();
    let (r1, r2) = params.ranks;
    if !(1..=a).contains(&r1) || !(1..=b).contains(&r2) {
        return Err(Error::config(
            "tucker2 ranks",
            format!("({r1}, {r2})"),
            format!("ranks in 1..={a} and 1..={b} for a [{a}, {b}, {h}, {wd}] tensor"),
        ));
    }
    let x = w.detach();
    // x with modes 0 and 1 swapped, [b, a, h, w]: its mode-0 unfolding is x's mode-1 one.
    let xt = compact(x.clone().permute([1, 0, 2, 3]));
    let mut u1 = leading_left(unfold0(x.clone()), r1)?;
    let mut u2 = leading_left(unfold0(xt.clone()), r2)?;
    for _ in 0..params.iters {
        // x ×₂ U₂ᵀ as [a, r2 h w]: project mode 1, then the leading subspace of mode 0.
        let y = mode0(xt.clone(), u2.clone().transpose()).permute([1, 0, 2, 3]);
        u1 = leading_left(unfold0(y), r1)?;
        let z = mode0(x.clone(), u1.clone().transpose()).permute([1, 0, 2, 3]);
        u2 = leading_left(unfold0(z), r2)?;
    }
    let core = mode0(x, u1.clone().transpose()).permute([1, 0, 2, 3]); // [b, r1, h, w]
    let core = compact(mode0(core, u2.clone().transpose()).permute([1, 0, 2, 3]));
    Ok(Tucker2 { core, u1, u2 })
}

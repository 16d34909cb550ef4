//! The pointwise activation functions: value and derivative in f64 (the math every
//! activation method here shares), names, and what the inverted op needs to recover the
//! derivative from the output.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A pointwise activation function: its value and derivative in f64, its name, and (for
/// the monotone ones and the two with one minimum) the derivative recovered from its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActFn {
    /// `x Φ(x)` (erf form).
    Gelu,
    /// GELU's tanh approximation `x/2 (1 + tanh(√(2/π)(x + 0.044715 x³)))`.
    GeluTanh,
    /// `x σ(x)`.
    Silu,
    /// `tanh x`.
    Tanh,
    /// `σ(x)`.
    Sigmoid,
    /// `ln(1 + eˣ)`.
    Softplus,
    /// `x` for `x > 0`, `eˣ - 1` otherwise (α = 1).
    Elu,
    /// `x` for `x > 0`, `0.01 x` otherwise: exact at 1 bit.
    LeakyRelu,
    /// `max(x, 0)`: exact at 1 bit.
    Relu,
    /// `x tanh(softplus(x))`.
    Mish,
}

impl ActFn {
    /// The functions whose derivative the inverted op recovers from the output.
    pub const INVERTIBLE: [ActFn; 5] = [
        ActFn::Gelu,
        ActFn::Silu,
        ActFn::Sigmoid,
        ActFn::Tanh,
        ActFn::Softplus,
    ];

    /// Every function, with its CLI name.
    pub const ALL: [(ActFn, &'static str); 10] = [
        (ActFn::Gelu, "gelu"),
        (ActFn::GeluTanh, "gelu_tanh"),
        (ActFn::Silu, "silu"),
        (ActFn::Tanh, "tanh"),
        (ActFn::Sigmoid, "sigmoid"),
        (ActFn::Softplus, "softplus"),
        (ActFn::Elu, "elu"),
        (ActFn::LeakyRelu, "leaky_relu"),
        (ActFn::Relu, "relu"),
        (ActFn::Mish, "mish"),
    ];

    /// The CLI name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(f, _)| *f == self)
            .expect("listed")
            .1
    }

    /// `f(x)` in f64.
    pub fn f(self, x: f64) -> f64 {
        match self {
            ActFn::Gelu => x * 0.5 * libm::erfc(-x / std::f64::consts::SQRT_2),
            ActFn::GeluTanh => 0.5 * x * (1.0 + (GELU_TANH_C * (x + 0.044715 * x.powi(3))).tanh()),
            ActFn::Silu => x * sigmoid(x),
            ActFn::Tanh => x.tanh(),
            ActFn::Sigmoid => sigmoid(x),
            ActFn::Softplus => softplus(x),
            ActFn::Elu => {
                if x > 0.0 {
                    x
                } else {
                    x.exp_m1()
                }
            }
            ActFn::LeakyRelu => {
                if x > 0.0 {
                    x
                } else {
                    0.01 * x
                }
            }
            ActFn::Relu => x.max(0.0),
            ActFn::Mish => x * softplus(x).tanh(),
        }
    }

    /// `f'(x)` in f64 (the right derivative at the kinks of ReLU, LeakyReLU and ELU).
    pub fn df(self, x: f64) -> f64 {
        match self {
            ActFn::Gelu => {
                0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
                    + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
            }
            ActFn::GeluTanh => {
                let u = GELU_TANH_C * (x + 0.044715 * x.powi(3));
                let t = u.tanh();
                0.5 * (1.0 + t)
                    + 0.5 * x * (1.0 - t * t) * GELU_TANH_C * (1.0 + 3.0 * 0.044715 * x * x)
            }
            ActFn::Silu => {
                let s = sigmoid(x);
                s * (1.0 + x * (1.0 - s))
            }
            ActFn::Tanh => 1.0 - x.tanh().powi(2),
            ActFn::Sigmoid => sigmoid(x) * (1.0 - sigmoid(x)),
            ActFn::Softplus => sigmoid(x),
            ActFn::Elu => {
                if x > 0.0 {
                    1.0
                } else {
                    x.exp()
                }
            }
            ActFn::LeakyRelu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.01
                }
            }
            ActFn::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            ActFn::Mish => {
                let sp = softplus(x);
                let t = sp.tanh();
                t + x * (1.0 - t * t) * sigmoid(x)
            }
        }
    }

    /// Whether the function needs a branch bit per element.
    pub fn needs_bit(self) -> bool {
        matches!(self, ActFn::Gelu | ActFn::Silu)
    }

    /// Whether the derivative can be recovered from the output (with a branch bit for GELU and
    /// SiLU): what [`super::InvertedConfig`] accepts.
    pub fn is_invertible(self) -> bool {
        Self::INVERTIBLE.contains(&self)
    }

    /// `f(x)` in f32, as the forward pass computes it.
    pub fn f32(self, x: f32) -> f32 {
        self.f(x as f64) as f32
    }

    /// burn's own activation for this function (what runs where no custom op does).
    pub fn exact<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        use burn::tensor::activation as a;
        match self {
            ActFn::Gelu => a::gelu(x),
            ActFn::GeluTanh => a::gelu_approximate(x),
            ActFn::Silu => a::silu(x),
            ActFn::Tanh => x.tanh(),
            ActFn::Sigmoid => a::sigmoid(x),
            ActFn::Softplus => a::softplus(x, 1.0),
            ActFn::Elu => {
                let neg = x.clone().clamp_max(0.0).exp().sub_scalar(1.0);
                x.clone().clamp_min(0.0) + neg
            }
            ActFn::LeakyRelu => a::leaky_relu(x, 0.01),
            ActFn::Relu => a::relu(x),
            ActFn::Mish => a::mish(x),
        }
    }

    /// The function's index in [`ActFn::ALL`]: how it crosses a backend-extension boundary.
    pub(crate) fn code(self) -> u32 {
        Self::ALL
            .iter()
            .position(|(f, _)| *f == self)
            .expect("every function is listed") as u32
    }
}

impl std::str::FromStr for ActFn {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ActFn::ALL
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(f, _)| *f)
            .ok_or_else(|| {
                let names: Vec<&str> = ActFn::ALL.iter().map(|(_, n)| *n).collect();
                Error::config("activation", s, format!("one of {}", names.join(", ")))
            })
    }
}

/// Elements per block of [`ActFn::apply_f32`]: a stack buffer's worth.
const BLOCK: usize = 64;

/// Below this input the f32 GELU takes the f64 path: `1 + erf(x/√2)` loses relative
/// precision to cancellation as it approaches 0 (at -2 it is 0.0455: up to 29 ulp of the
/// output just above -2, measured).
const GELU_FAST_FROM: f32 = -2.0;

/// `erf(x)` in f32 by the rational approximation of Eigen and XLA (odd numerator of degree 13
/// over an even denominator of degree 8, inputs clamped to ±4 where erf is ±1 in f32); written
/// branch-free so that a loop over it vectorizes. Absolute error below 1e-6
/// (`should_match_erf_in_f32` in this file).
#[inline(always)]
pub(crate) fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    // Plain products and sums, not `mul_add`: without the `fma` target feature that is a
    // call to the software `fmaf` per term.
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p - 2.101_024e-6;
    p = x2 * p - 5.692_506_4e-5;
    p = x2 * p - 7.349_906_3e-4;
    p = x2 * p - 2.954_600_1e-3;
    p = x2 * p - 1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 - 2.133_740_6e-4;
    q = x2 * q - 1.682_827e-3;
    q = x2 * q - 7.373_329e-3;
    q = x2 * q - 1.426_474e-2;
    x * p / q
}

impl ActFn {
    /// `y[i] = f(x[i])` in f32. GELU runs in f32 (`erf_f32`, vectorized) where its input is
    /// at least -2 and in f64 below, where `1 + erf` cancels; every other function in f64 and
    /// rounded. GELU is within 32 f32 ulp of `f` in f64, 29 measured just above -2 and a few
    /// elsewhere (`should_apply_gelu_in_f32_within_ulps`).
    ///
    /// # Panics
    ///
    /// When the lengths differ.
    pub fn apply_f32(self, x: &[f32], y: &mut [f32]) {
        assert_eq!(x.len(), y.len(), "apply_f32: input and output lengths");
        if self != ActFn::Gelu {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = self.f(f64::from(x)) as f32;
            }
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked above.
            return unsafe { gelu_avx2(x, y) };
        }
        gelu(x, y);
    }

    /// [`ActFn::apply_f32`] over `v`, writing each result over its input.
    pub fn apply_f32_in_place(self, v: &mut [f32]) {
        let mut x = [0.0f32; BLOCK];
        for v in v.chunks_mut(BLOCK) {
            let x = &mut x[..v.len()];
            x.copy_from_slice(v);
            self.apply_f32(x, v);
        }
    }
}

/// GELU in f32 over equal-length slices ([`ActFn::apply_f32`]).
#[inline(always)]
fn gelu(x: &[f32], y: &mut [f32]) {
    for (y, x) in y.chunks_mut(BLOCK).zip(x.chunks(BLOCK)) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = 0.5 * x * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2));
        }
        for (y, &x) in y.iter_mut().zip(x) {
            if x < GELU_FAST_FROM {
                *y = ActFn::Gelu.f(f64::from(x)) as f32;
            }
        }
    }
}

/// [`gelu`] compiled for AVX2 (eight lanes a vector instead of SSE2's four); the same
/// operations in the same order, so the same results.
///
/// # Safety
///
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gelu_avx2(x: &[f32], y: &mut [f32]) {
    gelu(x, y);
}

const GELU_TANH_C: f64 = 0.797_884_560_802_865_4; // sqrt(2 / pi)

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_match_erf_in_f32() {
        let mut worst = 0.0f64;
        for i in -80_000..=80_000 {
            let x = (i as f64 / 10_000.0) as f32;
            let err = (f64::from(erf_f32(x)) - libm::erf(f64::from(x))).abs();
            worst = worst.max(err);
        }
        assert!(worst < 1e-6, "worst absolute error {worst:e}");
        assert_eq!(erf_f32(0.0), 0.0);
        assert!((erf_f32(10.0) - 1.0).abs() <= f32::EPSILON);
        assert!((erf_f32(-10.0) + 1.0).abs() <= f32::EPSILON);
    }

    #[test]
    fn should_apply_gelu_in_f32_within_ulps() {
        let xs: Vec<f32> = (-120_000..=120_000).map(|i| i as f32 / 10_000.0).collect();
        let mut ys = vec![0.0; xs.len()];
        ActFn::Gelu.apply_f32(&xs, &mut ys);
        let mut worst = (0.0, 0.0);
        for (&x, &y) in xs.iter().zip(&ys) {
            let exact = ActFn::Gelu.f(f64::from(x));
            // In f32 ulps of the output (the ulp at 1e-3 where the output is nearer 0).
            let ulps =
                (f64::from(y) - exact).abs() / (f64::from(f32::EPSILON) * exact.abs().max(1e-3));
            if ulps > worst.0 {
                worst = (ulps, x);
            }
        }
        // Measured: 28.5 ulp (3.4e-6 relative) at -1.98, next to the f64 path's edge, where
        // 1 + erf cancels most; PyTorch's f32 GELU has the same form and the same cancellation.
        assert!(worst.0 <= 32.0, "{worst:?}");
        let mut v = xs.clone();
        ActFn::Gelu.apply_f32_in_place(&mut v);
        assert_eq!(v, ys);
        // The portable build of the kernel gives the same bits as the dispatched one.
        gelu(&xs, &mut v);
        assert_eq!(v, ys);
        let mut odd = [f32::NAN, f32::INFINITY, 0.0];
        ActFn::Gelu.apply_f32_in_place(&mut odd);
        assert!(odd[0].is_nan() && odd[1] == f32::INFINITY && odd[2] == 0.0);
        let mut silu = [0.0f32; 3];
        ActFn::Silu.apply_f32(&[-1.0, 0.0, 2.0], &mut silu);
        assert_eq!(silu, [-1.0f64, 0.0, 2.0].map(|x| ActFn::Silu.f(x) as f32));
    }
}

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

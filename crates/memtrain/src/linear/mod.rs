//! Linear layers under the memory policy, and the layers that keep less for training.
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | [`LinearPolicy`] (`linear=...`), the [`LinearLayer`] a model holds and its [`LinearLayerConfig`], what each keeps for backward, and [`Linears`]: a model whose linears can be visited and replaced |
//! | `sketched.rs` | [`SketchedLinear`]: keeps a random sketch of its input |
//! | `gemm.rs` | [`gemm_linear`]: burn's dense layer with each product written once |
//! | `tt.rs` | [`TtLinear`]: a TT-matrix weight; [`WeightsPolicy`] (`weights=...`) |
//! | `factored.rs` | [`FactoredLinear`]: low-rank, Tucker-2 or CP factors |

pub mod bf16;
mod factored;
mod gemm;
mod sketched;
mod tt;

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use factored::{FactoredKind, FactoredLinear, FactoredLinearConfig, grid_value};
pub(crate) use gemm::bf16_product;
pub use gemm::{
    GemmLinearBackend, GemmLinearKernel, bf16_products, current_precision, gemm_linear,
    linear_grads, with_precision,
};
pub use sketched::{
    SketchKind, SketchedLinear, SketchedLinearBackend, SketchedLinearConfig, sketch_rows,
};
pub use tt::{TtLinear, TtLinearBackend, TtLinearConfig, WeightsPolicy};

use crate::error::{Error, Result};
use crate::memory::SavedTensor;

/// The precision of the gemm linear's products: the `precision=` key of a policy SPEC.
///
/// `bf16` rounds both operands of each product of [`gemm_linear`] (forward `X W`, backward
/// `dY Wᵀ` and `Xᵀ dY`) and of the fused attention (`attn=memeff`) to bfloat16 and accumulates
/// in f32 ([`bf16::product_bf16`], AVX512-BF16 where the CPU has it; f32 products elsewhere),
/// in the scope of [`with_precision`]. Weights, gradients, optimizer state and every other
/// operation stay f32, as under PyTorch's CPU autocast. It needs `linear=gemm`: burn's own
/// linear and the compressed ones are not affected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrecisionPolicy {
    /// f32 products.
    #[default]
    Fp32,
    /// bf16 operands, f32 accumulation.
    Bf16,
}

/// How linear layers keep what the weight gradient needs: the `linear=` key of a policy SPEC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinearPolicy {
    /// burn's `Linear`: keeps its input.
    #[default]
    Exact,
    /// [`gemm_linear`]: burn's math and kept tensors, each product written
    /// once (burn's Flex matmul briefly holds every output twice).
    Gemm,
    /// [`SketchedLinear`]: keeps a sketch with `ratio_bp / 10000` of the
    /// input's rows.
    Sketch {
        /// The ratio in basis points, 1..=10000.
        ratio_bp: u16,
        /// Only the MLP's two linears are sketched.
        mlp_only: bool,
        /// How the sketch is drawn.
        kind: SketchKind,
    },
}

impl LinearPolicy {
    /// The sketch ratio, if sketched.
    pub fn ratio(&self) -> Option<f64> {
        match self {
            LinearPolicy::Exact | LinearPolicy::Gemm => None,
            LinearPolicy::Sketch { ratio_bp, .. } => Some(f64::from(*ratio_bp) / 1e4),
        }
    }

    /// Whether a linear of the MLP (`mlp`) or of attention is sketched.
    pub fn sketches(&self, mlp: bool) -> bool {
        match self {
            LinearPolicy::Exact | LinearPolicy::Gemm => false,
            LinearPolicy::Sketch { mlp_only, .. } => mlp || !mlp_only,
        }
    }
}

/// How one linear of a model is built: its widths, the policy's `linear` and `weights` keys,
/// whether it belongs to the MLP (`linear=sketch:R:mlp` and `weights=ttm:R` without `:all`
/// apply to the MLP's linears only), its initial weights and its sketch salt.
///
/// ```
/// use burn::tensor::{Device, Distribution, Tensor};
/// use memtrain::linear::{LinearLayer, LinearLayerConfig, LinearPolicy};
/// let device = Device::flex();
/// let layer = LinearLayerConfig::new(8, 4).with_linear(LinearPolicy::Gemm).init(&device).unwrap();
/// assert!(matches!(layer, LinearLayer::Gemm(_)));
/// let x = Tensor::<2>::random([3, 8], Distribution::Default, &device);
/// assert_eq!(layer.forward(x).dims(), [3, 4]);
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct LinearLayerConfig {
    /// Input width.
    pub d_input: usize,
    /// Output width.
    pub d_output: usize,
    /// What the layer keeps for the weight gradient.
    #[config(default = "LinearPolicy::Exact")]
    pub linear: LinearPolicy,
    /// How its weight is stored.
    #[config(default = "WeightsPolicy::Dense")]
    pub weights: WeightsPolicy,
    /// Whether it belongs to the MLP.
    #[config(default = false)]
    pub mlp: bool,
    /// The standard deviation of the initial weights, drawn N(0, std²) (a TT layer matches
    /// that variance in its dense product); the bias starts at zero.
    #[config(default = 0.02)]
    pub std: f64,
    /// Distinguishes a sketched layer's sketches from other layers'.
    #[config(default = 0)]
    pub salt: u64,
}

impl LinearLayerConfig {
    /// The TT rank, when the layer is a TT-matrix.
    fn tt_rank(&self) -> Option<usize> {
        self.weights.tt_rank(self.mlp)
    }

    /// The sketch ratio, when the layer is sketched (a TT layer never is).
    fn sketch_ratio(&self) -> Option<f64> {
        if self.tt_rank().is_some() || !self.linear.sketches(self.mlp) {
            return None;
        }
        self.linear.ratio()
    }

    /// The layer, on `device`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the field: a zero width, `std` not positive and finite, a
    /// TT rank of 0 or widths that do not split into three modes, a sketch ratio outside
    /// `(0, 1]`.
    pub fn init(&self, device: &Device) -> Result<LinearLayer> {
        for (name, v) in [("d_input", self.d_input), ("d_output", self.d_output)] {
            if v == 0 {
                return Err(Error::config(name, 0, "a positive width"));
            }
        }
        if !(self.std.is_finite() && self.std > 0.0) {
            return Err(Error::config("std", self.std, "a positive finite number"));
        }
        if let Some(rank) = self.tt_rank() {
            return Ok(LinearLayer::Tt(
                TtLinearConfig::new(self.d_input, self.d_output, rank)
                    .with_std(Some(self.std))
                    .init(device)?,
            ));
        }
        let dense = LinearConfig::new(self.d_input, self.d_output)
            .with_initializer(Initializer::Normal {
                mean: 0.0,
                std: self.std,
            })
            .init(device);
        Ok(match (self.sketch_ratio(), self.linear) {
            (Some(ratio), LinearPolicy::Sketch { kind, .. }) => LinearLayer::Sketched(
                SketchedLinearConfig::new(self.d_input, self.d_output, ratio)
                    .with_kind(kind)
                    .with_salt(self.salt)
                    .init_from(dense)?,
            ),
            (_, LinearPolicy::Gemm) => LinearLayer::Gemm(dense),
            _ => LinearLayer::Exact(dense),
        })
    }

    /// What the layer keeps for backward for an input of `shape` `[.., d_input]` (`name`
    /// says which input it is): the input itself, or a sketched layer's `S x`
    /// `[ceil(ratio n), d_input]` for `n` rows, plus the input when another op keeps it anyway
    /// (`kept_elsewhere`, where the sketch saves nothing). Weights are parameters and cost
    /// nothing here; a TT-matrix layer keeps what a dense one keeps.
    pub fn saved(
        &self,
        name: &'static str,
        shape: &[usize],
        kept_elsewhere: bool,
    ) -> Vec<SavedTensor> {
        match self.sketch_ratio() {
            None => vec![SavedTensor::f32(name, shape)],
            Some(ratio) => {
                let n = shape[..shape.len() - 1].iter().product();
                let mut v = Vec::new();
                if kept_elsewhere {
                    v.push(SavedTensor::f32(name, shape));
                }
                v.push(SavedTensor::f32(
                    "sketched linear: S x",
                    &[sketch_rows(n, ratio), self.d_input],
                ));
                v
            }
        }
    }

    /// Parameters of the layer (weight, or TT cores, and bias), without building it.
    ///
    /// # Errors
    ///
    /// As [`LinearLayerConfig::init`] for a TT layer.
    pub fn param_count(&self) -> Result<usize> {
        match self.tt_rank() {
            Some(rank) => TtLinearConfig::new(self.d_input, self.d_output, rank).param_count(),
            None => Ok((self.d_input + 1) * self.d_output),
        }
    }
}

/// A linear layer `y = x W + b` (`W: [d_input, d_output]`), computed as the policy says.
#[derive(Module, Debug)]
pub enum LinearLayer {
    /// burn's `Linear`: keeps its input `[.., d_input]` for the weight gradient.
    Exact(Linear),
    /// burn's `Linear` parameters run by [`crate::linear::gemm_linear`]: the same math and
    /// kept input, each product written once.
    Gemm(Linear),
    /// [`SketchedLinear`]: keeps a sketch of its input.
    Sketched(SketchedLinear),
    /// [`TtLinear`]: a TT-matrix weight; keeps its input.
    Tt(TtLinear),
    /// [`FactoredLinear`]: the factors of a low-rank, Tucker-2 or CP decomposition, applied
    /// one after the other (what compressing a pretrained model produces).
    Factored(FactoredLinear),
}

impl LinearLayer {
    /// The dense weight `[d_input, d_output]`; `None` for a TT-matrix or factored layer.
    pub fn weight(&self) -> Option<&burn::module::Param<Tensor<2>>> {
        match self {
            LinearLayer::Exact(l) | LinearLayer::Gemm(l) => Some(&l.weight),
            LinearLayer::Sketched(l) => Some(&l.weight),
            LinearLayer::Tt(_) | LinearLayer::Factored(_) => None,
        }
    }

    /// `[d_input, d_output]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            LinearLayer::Exact(l) | LinearLayer::Gemm(l) => l.weight.lazy_shape().dims(),
            LinearLayer::Sketched(l) => l.weight.lazy_shape().dims(),
            LinearLayer::Tt(l) => {
                let (rows, cols) = l.modes();
                [rows.iter().product(), cols.iter().product()]
            }
            LinearLayer::Factored(l) => l.dims(),
        }
    }

    /// The weight as a dense `[d_input, d_output]` tensor (rebuilt for a TT-matrix or
    /// factored layer).
    pub fn dense_weight(&self) -> Tensor<2> {
        match self {
            LinearLayer::Exact(l) | LinearLayer::Gemm(l) => l.weight.val(),
            LinearLayer::Sketched(l) => l.weight.val(),
            LinearLayer::Tt(l) => l.matrix().to_dense(),
            LinearLayer::Factored(l) => l.dense_weight(),
        }
    }

    /// The bias `[d_output]`, if any.
    pub fn bias(&self) -> Option<Tensor<1>> {
        match self {
            LinearLayer::Exact(l) | LinearLayer::Gemm(l) => l.bias.as_ref().map(|b| b.val()),
            LinearLayer::Sketched(l) => Some(l.bias.val()),
            LinearLayer::Tt(l) => l.bias.as_ref().map(|b| b.val()),
            LinearLayer::Factored(l) => l.bias.as_ref().map(|b| b.val()),
        }
    }

    /// Weight parameters (dense entries, TT cores or factors), without the bias.
    pub fn weight_param_count(&self) -> usize {
        match self {
            LinearLayer::Exact(_) | LinearLayer::Gemm(_) | LinearLayer::Sketched(_) => {
                let [a, b] = self.dims();
                a * b
            }
            LinearLayer::Tt(l) => l.matrix().param_count(),
            LinearLayer::Factored(l) => l.weight_param_count(),
        }
    }

    /// Adds `delta` to a dense weight in place of the parameter (same id, same
    /// `require_grad`).
    ///
    /// # Errors
    ///
    /// [`crate::Error::Config`] for a TT-matrix layer, which has no dense weight to add to.
    pub fn add_to_weight(&mut self, delta: Tensor<2>) -> Result<()> {
        let add = |p: &mut burn::module::Param<Tensor<2>>| {
            let param = std::mem::replace(p, burn::module::Param::from_tensor(delta.zeros_like()));
            *p = param.map(|w| {
                let grad = w.is_require_grad();
                let sum = (w.detach() + delta.clone()).detach();
                if grad { sum.require_grad() } else { sum }
            });
        };
        match self {
            LinearLayer::Exact(l) | LinearLayer::Gemm(l) => add(&mut l.weight),
            LinearLayer::Sketched(l) => add(&mut l.weight),
            LinearLayer::Tt(_) | LinearLayer::Factored(_) => {
                return Err(Error::config(
                    "merge",
                    "an adapter on a TT-matrix or factored layer",
                    "adapters on dense layers (factors cannot absorb a dense update)",
                ));
            }
        }
        Ok(())
    }

    /// A sketched layer with another salt (other sketches); an exact one unchanged.
    pub fn with_salt(self, salt: u64) -> Self {
        match self {
            LinearLayer::Sketched(l) => LinearLayer::Sketched(l.with_salt(salt)),
            exact => exact,
        }
    }

    /// `[.., d_input]` to `[.., d_output]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        // The gemm kernel times itself (also where the executor calls it directly).
        let _profile = (!matches!(self, LinearLayer::Gemm(_)))
            .then(|| {
                let [d_in, d_out] = self.dims();
                let rows = x.shape().num_elements() / d_in.max(1);
                match self {
                    LinearLayer::Tt(_) => crate::profile::scope("tt linear", String::new, || 0.0),
                    LinearLayer::Factored(_) => {
                        crate::profile::scope("factored linear", String::new, || 0.0)
                    }
                    LinearLayer::Sketched(_) => {
                        crate::profile::matmul("x·W sketched", rows, d_in, d_out)
                    }
                    _ => crate::profile::matmul("x·W burn", rows, d_in, d_out),
                }
            })
            .flatten();
        match self {
            LinearLayer::Exact(l) => l.forward(x),
            LinearLayer::Gemm(l) => match &l.bias {
                Some(b) => gemm_linear(x, l.weight.val(), b.val()),
                None => l.forward(x),
            },
            LinearLayer::Sketched(l) => l.forward(x),
            LinearLayer::Tt(l) => l.forward(x),
            LinearLayer::Factored(l) => l.forward(x),
        }
    }
}

/// A model whose linear layers can be visited by name and replaced: the GPT and the BERT
/// encoder, so that one compressor serves both.
///
/// Implementors list their linears ([`Linears::linears`], [`Linears::linears_mut`]); the
/// mapping ([`Linears::try_map_linears`]) is written once, here.
pub trait Linears: Sized {
    /// Every linear with its name, in module order.
    fn linears(&self) -> Vec<(String, &LinearLayer)>;

    /// Every linear with its name, in module order, to replace in place.
    fn linears_mut(&mut self) -> Vec<(String, &mut LinearLayer)>;

    /// The same model with every linear passed through `f(name, layer)`, in module order.
    ///
    /// # Errors
    ///
    /// The first error `f` returns; the model is dropped then.
    fn try_map_linears(
        mut self,
        mut f: impl FnMut(&str, LinearLayer) -> Result<LinearLayer>,
    ) -> Result<Self> {
        for (name, slot) in self.linears_mut() {
            // Clones share the tensors' storage: nothing is copied.
            *slot = f(&name, slot.clone())?;
        }
        Ok(self)
    }
}

//! Output-saving LayerNorm: keeps its output (which the next linear layer keeps anyway) and
//! one scalar per row, instead of its input.
//!
//! With `x̂ = (x - mean) · rstd` and `y = x̂ γ + β`, the backward needs only `x̂`, which is
//! `(y - β) / γ`, and `rstd`:
//! `dx = rstd (dx̂ - mean(dx̂) - x̂ mean(dx̂ x̂))` with `dx̂ = dy γ`, `dγ = Σ dy x̂`, `dβ = Σ dy`.
//! Where some `|γ_j| < GAMMA_MIN`, dividing by it would lose precision, so that call keeps
//! `x̂` instead (exact, no saving; it does not happen in practice).
//!
//! The idea is the same as inverted activations (Novikov & Oseledets,
//! <https://arxiv.org/abs/2407.15545>), applied to normalisation.

use burn::backend::backend_extension;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata};
use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::LayerNorm;
use burn::tensor::{Device, Shape, Tensor};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};

use crate::error::{Error, Result};
use crate::has_kernels;

/// Below this `|γ_j|` the op keeps `x̂` rather than recovering it from the output.
pub const GAMMA_MIN: f32 = 1e-3;

fn rows<B: Backend>(x: &FloatTensor<B>) -> (usize, usize) {
    crate::rows_and_width(&x.shape())
}

/// `(y, x̂, rstd)` for `x` viewed as `[n, d]`; `y` has `x`'s shape, `rstd` is `[n, 1]`.
fn forward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    eps: f64,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let shape = x.shape();
    let (n, d) = rows::<B>(&x);
    let x = B::float_reshape(x, Shape::from(vec![n, d]));
    let mean = B::float_mean_dim(x.clone(), 1);
    let xc = B::float_sub(x, mean);
    let var = B::float_mean_dim(B::float_mul(xc.clone(), xc.clone()), 1);
    let rstd = B::float_recip(B::float_sqrt(B::float_add_scalar(var, eps.into())));
    let xhat = B::float_mul(xc, rstd.clone());
    let g = B::float_reshape(gamma, Shape::from(vec![1, d]));
    let b = B::float_reshape(beta, Shape::from(vec![1, d]));
    let y = B::float_add(B::float_mul(xhat.clone(), g), b);
    (B::float_reshape(y, shape), xhat, rstd)
}

/// The op's forward and backward on one backend: fused on Flex (`flex.rs`), burn's primitive
/// ops elsewhere.
pub trait OutputLayerNormKernel: Backend {
    /// `(y, x̂, rstd)`; `x̂` only when `keep_xhat`.
    fn output_norm_forward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
        keep_xhat: bool,
    ) -> (
        FloatTensor<Self>,
        Option<FloatTensor<Self>>,
        FloatTensor<Self>,
    ) {
        forward_keeping::<Self>(x, gamma, beta, eps, keep_xhat)
    }

    /// `[dx, dγ, dβ]`, each where `want` says, from what the forward kept.
    #[allow(clippy::too_many_arguments)]
    fn output_norm_backward(
        y: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        kept: Option<FloatTensor<Self>>,
        dy: FloatTensor<Self>,
        want: [bool; 3],
    ) -> [Option<FloatTensor<Self>>; 3] {
        backward::<Self>(y, rstd, gamma, beta, kept, dy, want)
    }
}

impl OutputLayerNormKernel for Flex {
    fn output_norm_forward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
        keep_xhat: bool,
    ) -> (
        FloatTensor<Self>,
        Option<FloatTensor<Self>>,
        FloatTensor<Self>,
    ) {
        if !keep_xhat && let Some((y, rstd)) = super::flex::forward(&x, &gamma, &beta, eps) {
            return (y, None, rstd);
        }
        forward_keeping::<Self>(x, gamma, beta, eps, keep_xhat)
    }

    fn output_norm_backward(
        y: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        kept: Option<FloatTensor<Self>>,
        dy: FloatTensor<Self>,
        want: [bool; 3],
    ) -> [Option<FloatTensor<Self>>; 3] {
        if kept.is_none()
            && let Some(grads) = super::flex::backward(&y, &rstd, &gamma, &beta, &dy, want)
        {
            return grads;
        }
        backward::<Self>(y, rstd, gamma, beta, kept, dy, want)
    }
}

#[cfg(memtrain_cube)]
impl OutputLayerNormKernel for burn_cubecl::CubeBackend {}

/// [`forward`] on burn's primitive ops, returning `x̂` only when `keep_xhat`.
#[allow(clippy::type_complexity)]
fn forward_keeping<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    eps: f64,
    keep_xhat: bool,
) -> (FloatTensor<B>, Option<FloatTensor<B>>, FloatTensor<B>) {
    let (y, xhat, rstd) = forward::<B>(x, gamma, beta, eps);
    (y, keep_xhat.then_some(xhat), rstd)
}

/// The backward on burn's primitive ops: `x̂` from the output (or as kept), then
/// `dβ = Σ dy`, `dγ = Σ dy x̂`, `dx = rstd (dx̂ - mean(dx̂) - x̂ mean(dx̂ x̂))`.
fn backward<B: Backend>(
    y: FloatTensor<B>,
    rstd: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    kept: Option<FloatTensor<B>>,
    dy: FloatTensor<B>,
    want: [bool; 3],
) -> [Option<FloatTensor<B>>; 3] {
    let shape = dy.shape();
    let (n, d) = rows::<B>(&dy);
    let flat = |t: FloatTensor<B>| B::float_reshape(t, Shape::from(vec![n, d]));
    let row = |t: FloatTensor<B>| B::float_reshape(t, Shape::from(vec![1, d]));
    let dy = flat(dy);
    let xhat =
        kept.unwrap_or_else(|| B::float_div(B::float_sub(flat(y), row(beta)), row(gamma.clone())));
    let dbeta =
        want[2].then(|| B::float_reshape(B::float_sum_dim(dy.clone(), 0), Shape::from(vec![d])));
    let dgamma = want[1].then(|| {
        let dg = B::float_sum_dim(B::float_mul(dy.clone(), xhat.clone()), 0);
        B::float_reshape(dg, Shape::from(vec![d]))
    });
    let dx = want[0].then(|| {
        let dxhat = B::float_mul(dy, row(gamma));
        let m1 = B::float_mean_dim(dxhat.clone(), 1);
        let m2 = B::float_mean_dim(B::float_mul(dxhat.clone(), xhat.clone()), 1);
        let inner = B::float_sub(B::float_sub(dxhat, m1), B::float_mul(xhat, m2));
        B::float_reshape(B::float_mul(inner, rstd), shape)
    });
    [dx, dgamma, dbeta]
}

/// The output-saving LayerNorm op as a burn backend extension.
#[backend_extension(Flex, Cube: cfg(memtrain_cube), Autodiff)]
pub trait OutputLayerNormBackend: Backend {
    /// LayerNorm over the last axis, keeping the output and `rstd` for backward.
    fn output_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self>;
}

impl OutputLayerNormBackend for Flex {
    fn output_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        Self::output_norm_forward(x, gamma, beta, eps, false).0
    }
}

#[cfg(memtrain_cube)]
impl OutputLayerNormBackend for burn_cubecl::CubeBackend {
    fn output_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        forward::<Self>(x, gamma, beta, eps).0
    }
}

#[derive(Debug)]
struct OutputLayerNormBackward;

/// What the backward keeps: the output, `rstd [n, 1]`, `γ`, `β`, and `x̂` only when some
/// `|γ_j| < GAMMA_MIN`.
type Saved<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    Option<FloatTensor<B>>,
);

impl<B: Backend + OutputLayerNormKernel> Backward<B, 3> for OutputLayerNormBackward {
    type State = Saved<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let _profile = crate::profile::scope("norm", || "backward".into(), || 0.0);
        let (y, rstd, gamma, beta, kept) = ops.state;
        let want = [node_x.is_some(), node_gamma.is_some(), node_beta.is_some()];
        let out = B::output_norm_backward(y, rstd, gamma, beta, kept, dy, want);
        for (node, grad) in [node_x, node_gamma, node_beta].into_iter().zip(out) {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: Backend + OutputLayerNormKernel, C: CheckpointStrategy> OutputLayerNormBackend
    for Autodiff<B, C>
{
    fn output_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        let (xp, gp, bp) = (
            x.primitive().clone(),
            gamma.primitive().clone(),
            beta.primitive().clone(),
        );
        match OutputLayerNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let small_gamma =
                    burn::backend::read_sync(B::float_into_data(B::float_abs(gp.clone())))
                        .map(|data| data.iter::<f32>().any(|g| g < GAMMA_MIN))
                        .unwrap_or(true);
                let (y, kept, rstd) =
                    B::output_norm_forward(xp, gp.clone(), bp.clone(), eps, small_gamma);
                prep.finish((y.clone(), rstd, gp, bp, kept), y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::output_norm_forward(xp, gp, bp, eps, false).0)
            }
        }
    }
}

/// LayerNorm over the last axis (`γ` initialised to 1, `β` to 0) that keeps its output and
/// one scalar per row for backward.
///
/// Same parameters and forward as burn's `LayerNorm` (`x̂ γ + β`, biased variance), and
/// convertible from it ([`OutputLayerNormConfig::init_from`]).
///
/// # Memory
///
/// Kept for backward: the output (shared with the next layer) and `rstd`, `4 n` bytes for `n`
/// rows ([`OutputLayerNorm::saved_bytes`]). burn's LayerNorm keeps the centred input and the
/// normalised input, `8 n d` bytes, plus `8 n` bytes of row statistics. The allocator measures
/// both in the GPT (`tests/memory.rs`, `should_match_the_activation_estimate_output_layernorm`).
///
/// On Flex a slice kernel computes it; on burn's Cube backend (wgpu, cuda) burn's own Cube ops do,
/// under the same backward that keeps the same bytes. On backends without memtrain's kernels (see
/// [`crate::device`]) the forward and backward are burn's own ops (no saving).
#[derive(Module, Debug)]
pub struct OutputLayerNorm {
    /// Scale `[d]`.
    pub gamma: Param<Tensor<1>>,
    /// Shift `[d]`.
    pub beta: Param<Tensor<1>>,
    epsilon: f64,
}

/// Configuration of an [`OutputLayerNorm`] over the last axis, of width `d_model`.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use memtrain::norm::OutputLayerNormConfig;
/// let device = Device::flex();
/// let ln = OutputLayerNormConfig::new(4).init(&device).unwrap();
/// let y = ln.forward(Tensor::<2>::from_floats([[1.0, 2.0, 3.0, 4.0]], &device));
/// assert!(y.mean().into_scalar::<f32>().abs() < 1e-6);
/// assert!(OutputLayerNormConfig::new(0).init(&device).is_err());
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct OutputLayerNormConfig {
    /// Width of the normalised axis.
    pub d_model: usize,
    /// Added to the variance (burn's default).
    #[config(default = 1e-5)]
    pub epsilon: f64,
}

impl OutputLayerNormConfig {
    fn check(&self) -> Result<()> {
        if self.d_model == 0 {
            return Err(Error::config("d_model", 0, "a positive width"));
        }
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return Err(Error::config(
                "epsilon",
                self.epsilon,
                "a positive finite number",
            ));
        }
        Ok(())
    }

    /// `γ = 1`, `β = 0` on `device`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming `d_model` (zero) or `epsilon` (not positive and finite).
    pub fn init(&self, device: &Device) -> Result<OutputLayerNorm> {
        self.check()?;
        Ok(OutputLayerNorm {
            gamma: Param::from_tensor(Tensor::ones([self.d_model], device)),
            beta: Param::from_tensor(Tensor::zeros([self.d_model], device)),
            epsilon: self.epsilon,
        })
    }

    /// Takes over the parameters of a burn `LayerNorm` (a bias of zeros when it has none);
    /// `epsilon` must be the one `ln` was built with (burn does not expose it).
    ///
    /// # Errors
    ///
    /// As [`OutputLayerNormConfig::init`], and [`Error::Config`] naming `d_model` when `ln`
    /// normalises another width.
    pub fn init_from(&self, ln: LayerNorm) -> Result<OutputLayerNorm> {
        self.check()?;
        let d = ln.gamma.dims()[0];
        if d != self.d_model {
            return Err(Error::config(
                "d_model",
                self.d_model,
                format!("the LayerNorm's width {d}"),
            ));
        }
        let device = ln.gamma.device();
        Ok(OutputLayerNorm {
            gamma: ln.gamma,
            beta: ln
                .beta
                .unwrap_or_else(|| Param::from_tensor(Tensor::zeros([d], &device))),
            epsilon: self.epsilon,
        })
    }
}

impl OutputLayerNorm {
    /// Bytes kept for backward for `rows` rows besides the (shared) output: one f32 `rstd` a
    /// row.
    pub fn saved_bytes(rows: usize) -> usize {
        4 * rows
    }

    /// `[.., d]` to `[.., d]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let (gamma, beta) = (self.gamma.val(), self.beta.val());
        if !has_kernels(&x.device()) {
            let [d] = gamma.dims();
            let mean = x.clone().mean_dim(D - 1);
            let xc = x - mean;
            let var = xc.clone().square().mean_dim(D - 1);
            let mut shape = [1; D];
            shape[D - 1] = d;
            return xc.div(var.add_scalar(self.epsilon).sqrt()) * gamma.reshape(shape)
                + beta.reshape(shape);
        }
        Tensor::from_dispatch(<Dispatch as OutputLayerNormBackend>::output_layer_norm(
            x.into_dispatch(),
            gamma.into_dispatch(),
            beta.into_dispatch(),
            self.epsilon,
        ))
    }
}

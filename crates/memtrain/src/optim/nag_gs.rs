//! NAG-GS: the Nesterov accelerated gradient flow discretised by a semi-implicit
//! Gauss-Seidel scheme ("NAG-GS: Semi-Implicit, Accelerated and Robust Stochastic
//! Optimizer", Leplat, Merkulov, Katrutsa, Bershatsky, Tsymboi, Oseledets,
//! <https://arxiv.org/abs/2209.14937>; reference code skolai/nag-gs).

use burn::config::Config;
use burn::optim::{LearningRate, ModuleOptimizer, Optimizer, RecordState, StateSink, StateSource};
use burn::store::burn_pack::Scalar;
use burn::tensor::{Device, Tensor};

use crate::error::{Error, Result};

/// Configuration of [`NagGs`]: `μ` and the initial `γ_0`. The step `α` is the learning rate
/// passed to `step`.
///
/// ```
/// use memtrain::optim::NagGsConfig;
/// let optim = NagGsConfig::new().with_mu(0.5).init().unwrap();
/// let e = NagGsConfig::new().with_gamma(-1.0).build().unwrap_err().to_string();
/// assert!(e.contains("gamma"), "{e}");
/// ```
#[derive(Config, Debug, Copy, PartialEq)]
pub struct NagGsConfig {
    /// `μ > 0` (the convexity parameter of the flow; the reference's default 1).
    #[config(default = 1.0)]
    pub mu: f64,
    /// `γ_0 > 0` (the reference's default 1).
    #[config(default = 1.0)]
    pub gamma: f64,
}

impl Default for NagGsConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl NagGsConfig {
    /// Checks the values.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming `mu` or `gamma` when it is not a positive finite number.
    pub fn check(&self) -> Result<()> {
        for (what, v) in [("mu", self.mu), ("gamma", self.gamma)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::config(
                    format!("NAG-GS {what}"),
                    v,
                    "a positive finite number",
                ));
            }
        }
        Ok(())
    }

    /// The bare optimizer (for `ModuleOptimizer::with_group`, or stepping tensors directly).
    ///
    /// # Errors
    ///
    /// As [`NagGsConfig::check`].
    pub fn build(&self) -> Result<NagGs> {
        self.check()?;
        Ok(NagGs { config: *self })
    }

    /// The optimizer, wrapped for a whole module.
    ///
    /// # Errors
    ///
    /// As [`NagGsConfig::check`].
    pub fn init(&self) -> Result<ModuleOptimizer> {
        Ok(self.build()?.into())
    }
}

/// NAG-GS as a burn [`Optimizer`]: Algorithm 1 of the paper, the Gauss-Seidel (semi-implicit)
/// discretisation of the accelerated flow `x' = v - x`, `v' = (μ/γ)(x - v) - ∇f(x)/γ`,
/// `γ' = μ - γ` with step `α` (the learning rate):
///
/// ```text
/// a       = α / (1 + α)
/// x_{k+1} = (1 - a) x_k + a v_k                       (x implicit in itself)
/// γ_{k+1} = (1 - a) γ_k + a μ                         (γ implicit: (γ_{k+1} - γ_k)/α = μ - γ_{k+1})
/// b       = α μ / (α μ + γ_{k+1})
/// v_{k+1} = (1 - b) v_k + b x_{k+1} - (b / μ) ∇f(x_{k+1})
/// ```
///
/// from `v_0 = x_0`. A burn step receives the gradient at the current parameters, so one call
/// takes the parameters as `x_{k+1}` (the first `x` update is the identity since `v_0 = x_0`),
/// updates `v`, and returns `x_{k+2}` with `γ_{k+2}`: the same iterates. `γ` evolves as the
/// algorithm states (the PyTorch reference computes `b` from the old `γ` and then discards the
/// new one, so its `γ` never moves; the authors' JAX code and notebook do as here).
///
/// On a quadratic with Hessian eigenvalues in `[μ, L]` and `γ = μ`, the iteration matrix per
/// eigenvalue has spectral radius `1/(1+α)` up to the step `α* = 2/(√κ - 1)`, `κ = L/μ`
/// (where its discriminant vanishes at `λ = L`), giving the rate
/// `ρ(α*) = (√κ - 1)/(√κ + 1)`: Nesterov's accelerated rate (`tests/optim.rs` measures it).
/// No weight decay (the paper's runs use none).
///
/// # Memory
///
/// One vector `v` per parameter (`4 numel` bytes) and two host scalars (`γ`, the step).
#[derive(Debug, Clone)]
pub struct NagGs {
    config: NagGsConfig,
}

/// The state of one parameter.
#[derive(Debug, Clone)]
pub struct NagGsState<const D: usize> {
    /// Steps taken.
    pub time: usize,
    /// `γ` of the next call's parameters.
    pub gamma: f64,
    /// `v_k`.
    pub v: Tensor<D>,
}

impl<const D: usize> RecordState for NagGsState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        out.push_scalar(prefix, "time", Scalar::from(self.time));
        out.push_scalar(prefix, "gamma", Scalar::from(self.gamma));
        out.push_tensor(prefix, "v", self.v.to_data());
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        Some(Self {
            time: usize::try_from(src.take_scalar(prefix, "time")?).ok()?,
            gamma: f64::try_from(src.take_scalar(prefix, "gamma")?).ok()?,
            v: Tensor::from_data(src.take_tensor(prefix, "v")?, device),
        })
    }
}

impl NagGs {
    /// `a = α/(1+α)` and `γ_{k+1} = (1-a) γ_k + a μ`.
    fn relax(&self, alpha: f64, gamma: f64) -> (f64, f64) {
        let a = alpha / (1.0 + alpha);
        (a, (1.0 - a) * gamma + a * self.config.mu)
    }
}

impl Optimizer for NagGs {
    type State<const D: usize> = NagGsState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let mu = self.config.mu;
        let (a, _) = self.relax(lr, 0.0);
        // The parameters are x_{k+1}; `gamma` is γ_{k+1}. On the first call the algorithm's
        // first x update is the identity (v_0 = x_0) and γ_1 = (1-a) γ_0 + a μ.
        let (time, gamma, v) = match state {
            Some(s) => (s.time, s.gamma, s.v),
            None => (0, self.relax(lr, self.config.gamma).1, tensor.clone()),
        };
        let b = lr * mu / (lr * mu + gamma);
        let v = v.mul_scalar(1.0 - b) + tensor.clone().mul_scalar(b) - grad.mul_scalar(b / mu);
        let x = tensor.mul_scalar(1.0 - a) + v.clone().mul_scalar(a);
        let state = NagGsState {
            time: time + 1,
            gamma: self.relax(lr, gamma).1,
            v,
        };
        (x, Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        NagGsState {
            v: state.v.to_device(device),
            ..state
        }
    }
}

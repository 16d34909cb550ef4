//! GaLore: Adam in a low-rank projection of each matrix's gradient ("GaLore: Memory-Efficient
//! LLM Training by Gradient Low-Rank Projection", Zhao et al., <https://arxiv.org/abs/2403.03507>).

use burn::config::Config;
use burn::optim::{LearningRate, ModuleOptimizer, Optimizer, RecordState, StateSink, StateSource};
use burn::store::burn_pack::Scalar;
use burn::tensor::{Device, Tensor};

use crate::error::{Error, Result};

/// Configuration of [`Galore`]. Defaults: gap 200, scale 0.25 (the paper's), and burn's AdamW
/// constants (β 0.9/0.999, ε 1e-5, weight decay 1e-4) so that `optim=galore` and
/// `optim=adamw` differ only in the projection.
///
/// ```
/// use memtrain::optim::GaloreConfig;
/// let optim = GaloreConfig::new(8).with_update_proj_gap(50).init().unwrap();
/// let e = GaloreConfig::new(8).with_scale(0.0).build().unwrap_err().to_string();
/// assert!(e.contains("scale"), "{e}");
/// ```
#[derive(Config, Debug, Copy, PartialEq)]
pub struct GaloreConfig {
    /// Rank `r` of the projection, at least 1 and at most `min(m, n)` of every matrix.
    pub rank: usize,
    /// Steps between projector updates (SVD of the current gradient), at least 1.
    #[config(default = 200)]
    pub update_proj_gap: usize,
    /// Scale `α` of the back-projected update, positive.
    #[config(default = 0.25)]
    pub scale: f64,
    /// First-moment decay, in `[0, 1)`.
    #[config(default = 0.9)]
    pub beta_1: f64,
    /// Second-moment decay, in `[0, 1)`.
    #[config(default = 0.999)]
    pub beta_2: f64,
    /// Added to the root of the second moment, positive.
    #[config(default = 1e-5)]
    pub epsilon: f64,
    /// Decoupled weight decay (times the learning rate), at least 0.
    #[config(default = 1e-4)]
    pub weight_decay: f64,
}

impl GaloreConfig {
    /// Checks every value.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the field: `rank` or `update_proj_gap` 0, `scale` or
    /// `epsilon` not positive and finite, a `beta` outside `[0, 1)`, a negative
    /// `weight_decay`.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::config("rank", 0, "a GaLore rank of at least 1"));
        }
        if self.update_proj_gap == 0 {
            return Err(Error::config(
                "update_proj_gap",
                0,
                "a positive number of steps",
            ));
        }
        for (name, v) in [("scale", self.scale), ("epsilon", self.epsilon)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::config(name, v, "a positive finite number"));
            }
        }
        for (name, v) in [("beta_1", self.beta_1), ("beta_2", self.beta_2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(Error::config(name, v, "a decay in [0, 1)"));
            }
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::config(
                "weight_decay",
                self.weight_decay,
                "a finite number >= 0",
            ));
        }
        Ok(())
    }

    /// [`GaloreConfig::validate`], and that `rank` fits matrices whose smaller side is
    /// `min_side`.
    ///
    /// # Errors
    ///
    /// As [`GaloreConfig::validate`], and [`Error::Config`] naming `rank` when it is above
    /// `min_side`.
    pub fn check(&self, min_side: usize) -> Result<()> {
        self.validate()?;
        if self.rank > min_side {
            return Err(Error::config(
                "GaLore rank",
                self.rank,
                format!("1..={min_side} (the smaller side of the smallest matrix)"),
            ));
        }
        Ok(())
    }

    /// The bare optimizer (for `ModuleOptimizer::with_group`, or stepping tensors directly).
    ///
    /// # Errors
    ///
    /// As [`GaloreConfig::validate`].
    pub fn build(&self) -> Result<Galore> {
        self.validate()?;
        Ok(Galore { config: *self })
    }

    /// The optimizer, wrapped for a whole module.
    ///
    /// # Errors
    ///
    /// As [`GaloreConfig::validate`].
    pub fn init(&self) -> Result<ModuleOptimizer> {
        Ok(self.build()?.into())
    }
}

/// GaLore as a burn [`Optimizer`]: for a 2-D parameter `W [m, n]`, every `update_proj_gap`
/// steps `P` is taken from the SVD of the current gradient `G` — the top-`r` right singular
/// vectors `P [r, n]` when `m >= n` (`R = G Pᵀ [m, r]`), else the top-`r` left ones
/// `P [m, r]` (`R = Pᵀ G [r, n]`). Adam runs on `R` (its moments are kept across projector
/// changes, as the reference does), and the update `N = M̂ / (√V̂ + ε)` is projected back
/// (`N P` or `P N`), scaled by `α` and applied with decoupled weight decay:
/// `W ← W (1 - lr λ) - lr α N_back`. Parameters of other ranks get plain AdamW.
///
/// # Memory
///
/// Per matrix `[m, n]`: the projector `r min(m, n)` and two moments `2 r max(m, n)` floats,
/// instead of AdamW's `2 m n`; other parameters `2 numel`
/// ([`super::OptimPolicy::state_bytes`]).
///
/// A matrix whose smaller side is below the rank is projected with that side's rank (check
/// with [`GaloreConfig::check`] to refuse it instead); a gradient whose SVD fails (NaN
/// entries) gives a NaN update, which the trainer reports as a diverged loss at the next step.
#[derive(Debug, Clone)]
pub struct Galore {
    config: GaloreConfig,
}

/// The state of one parameter.
#[derive(Debug, Clone)]
pub struct GaloreState<const D: usize> {
    /// Steps taken.
    pub time: usize,
    /// First moment (of `R` for a projected matrix).
    pub moment_1: Tensor<D>,
    /// Second moment (of `R` for a projected matrix).
    pub moment_2: Tensor<D>,
    /// The projector of a 2-D parameter.
    pub projector: Option<Tensor<D>>,
}

impl<const D: usize> RecordState for GaloreState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        out.push_scalar(prefix, "time", Scalar::from(self.time));
        out.push_tensor(prefix, "moment_1", self.moment_1.to_data());
        out.push_tensor(prefix, "moment_2", self.moment_2.to_data());
        if let Some(p) = &self.projector {
            out.push_tensor(prefix, "projector", p.to_data());
        }
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        Some(Self {
            time: usize::try_from(src.take_scalar(prefix, "time")?).ok()?,
            moment_1: Tensor::from_data(src.take_tensor(prefix, "moment_1")?, device),
            moment_2: Tensor::from_data(src.take_tensor(prefix, "moment_2")?, device),
            projector: src
                .take_tensor(prefix, "projector")
                .map(|d| Tensor::from_data(d, device)),
        })
    }
}

fn to_rank<const A: usize, const B: usize>(t: Tensor<A>) -> Tensor<B> {
    let dims = t.dims();
    let mut shape = [1; B];
    shape.copy_from_slice(&dims[..B]);
    t.reshape(shape)
}

impl Galore {
    /// The projector `P` from the gradient `g [m, n]`, of rank `min(r, m, n)` (a matrix
    /// smaller than the rank is projected onto all of it; [`GaloreConfig::check`] refuses
    /// such a rank up front). A gradient whose SVD fails (NaN or infinite entries) gives a NaN
    /// projector: the update poisons the weights, and the next loss says so
    /// ([`crate::Error::Diverged`] from the trainer) instead of a panic here.
    fn projector(&self, g: Tensor<2>) -> Tensor<2> {
        let [m, n] = g.dims();
        let r = self.config.rank.min(m).min(n);
        let shape = if m >= n { [r, n] } else { [m, r] };
        let device = g.device();
        let Ok((u, _, vt)) = memtrain_tt::linalg::svd(g) else {
            return Tensor::full(shape, f32::NAN, &device);
        };
        // Compact: the slice alone would keep the whole `[k, k]` factor alive.
        memtrain_tt::linalg::compact(if m >= n {
            vt.slice([0..r, 0..n])
        } else {
            u.slice([0..m, 0..r])
        })
    }

    fn adam<const D: usize>(
        &self,
        g: Tensor<D>,
        state: Option<(usize, Tensor<D>, Tensor<D>)>,
    ) -> (Tensor<D>, usize, Tensor<D>, Tensor<D>) {
        let c = &self.config;
        let (time, m1, m2) = match state {
            Some((t, m1, m2)) => (
                t + 1,
                m1.mul_scalar(c.beta_1) + g.clone().mul_scalar(1.0 - c.beta_1),
                m2.mul_scalar(c.beta_2) + g.powi_scalar(2).mul_scalar(1.0 - c.beta_2),
            ),
            None => (
                1,
                g.clone().mul_scalar(1.0 - c.beta_1),
                g.powi_scalar(2).mul_scalar(1.0 - c.beta_2),
            ),
        };
        let b1 = 1.0 - c.beta_1.powi(time as i32);
        let b2 = 1.0 - c.beta_2.powi(time as i32);
        let n =
            m1.clone().div_scalar(b1) / (m2.clone().div_scalar(b2).sqrt().add_scalar(c.epsilon));
        (n, time, m1, m2)
    }
}

impl Optimizer for Galore {
    type State<const D: usize> = GaloreState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let c = &self.config;
        let decayed = tensor.mul_scalar(1.0 - lr * c.weight_decay);
        if D != 2 {
            let prev = state.map(|s| (s.time, s.moment_1, s.moment_2));
            let (n, time, moment_1, moment_2) = self.adam(grad, prev);
            let state = GaloreState {
                time,
                moment_1,
                moment_2,
                projector: None,
            };
            return (decayed - n.mul_scalar(lr), Some(state));
        }
        let g: Tensor<2> = to_rank(grad);
        let [m, n] = g.dims();
        let time = state.as_ref().map_or(0, |s| s.time);
        let (projector, prev) = match state {
            Some(s) => (
                s.projector.map(to_rank::<D, 2>),
                Some((
                    s.time,
                    to_rank::<D, 2>(s.moment_1),
                    to_rank::<D, 2>(s.moment_2),
                )),
            ),
            None => (None, None),
        };
        let p = match projector {
            Some(p) if time % c.update_proj_gap != 0 => p,
            _ => self.projector(g.clone()),
        };
        let rows = m >= n; // P [r, n] on the right; else P [m, r] on the left.
        let r = if rows {
            g.matmul(p.clone().transpose())
        } else {
            p.clone().transpose().matmul(g)
        };
        let (upd, time, moment_1, moment_2) = self.adam(r, prev);
        let back = if rows {
            upd.matmul(p.clone())
        } else {
            p.clone().matmul(upd)
        };
        let state = GaloreState {
            time,
            moment_1: to_rank(moment_1),
            moment_2: to_rank(moment_2),
            projector: Some(to_rank(p)),
        };
        (
            decayed - to_rank::<2, D>(back).mul_scalar(lr * c.scale),
            Some(state),
        )
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        GaloreState {
            time: state.time,
            moment_1: state.moment_1.to_device(device),
            moment_2: state.moment_2.to_device(device),
            projector: state.projector.map(|p| p.to_device(device)),
        }
    }
}

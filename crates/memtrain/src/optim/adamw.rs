//! AdamW in one pass: burn's AdamW update (the same state, records and arithmetic), with each
//! step after the first fused on Flex into a single read of `(θ, g, m, v)` that writes
//! `(θ, m, v)` over their own buffers.
//!
//! burn's AdamW runs one tensor operation per term of the update: about fifteen passes over
//! every parameter, and a parameter-sized temporary at its peak. On `small` that was 29 ms of
//! a 0.90 s step (`memtrain bench --profile`), 6 ms fused. The fused pass reads and writes
//! each element once and allocates nothing when the step holds the parameter and the moments
//! alone, as it does in training (`tests/memory.rs`); what is held elsewhere is copied first
//! and left as it was.
//!
//! The arithmetic is burn's, term by term in f32 and in burn's order, so a step gives the
//! same bits as burn's AdamW (`tests/optim.rs` checks several steps bit for bit). burn's
//! AdamW itself takes the first step (which creates the moments), parameters that are not
//! f32, states with an AMSGrad maximum, and tensors on other backends. The state is burn's
//! [`AdamWState`], so checkpoints written with burn's AdamW load into this one and back.
//!
//! ```
//! use burn::optim::Optimizer;
//! use burn::tensor::{Device, Tensor};
//! use memtrain::optim::FusedAdamW;
//!
//! let device = Device::default();
//! let adamw = FusedAdamW::default();
//! let (mut theta, mut state) = (Tensor::<1>::ones([4], &device), None);
//! for _ in 0..3 {
//!     let grad = Tensor::<1>::from_floats([0.5, -1.0, 2.0, 0.0], &device);
//!     let (t, s) = adamw.step(1e-2, theta, grad, state);
//!     (theta, state) = (t, s);
//! }
//! let theta: Vec<f32> = theta.into_data().to_vec().unwrap();
//! assert!(theta[0] < 1.0 && theta[1] > 1.0);
//! ```

use burn::backend::backend_extension;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata};
use burn::optim::{AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, LearningRate, Optimizer};
use burn::tensor::{DType, Device, Tensor, TensorData};
use rayon::prelude::*;

type Prim = FloatTensor<Flex>;

/// Elements per parallel task.
const TASK: usize = 1 << 14;

/// AdamW with burn's defaults and state (β₁ 0.9, β₂ 0.999, ε 1e-5, weight decay 1e-4), fused
/// on Flex (see the module docs). Wrap it in a [`burn::optim::ModuleOptimizer`] to optimize a
/// module: `ModuleOptimizer::from(FusedAdamW::default())`.
#[derive(Clone)]
pub struct FusedAdamW {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
    /// burn's AdamW with the same constants: the first step and every unfused case.
    burn: AdamW,
}

impl Default for FusedAdamW {
    fn default() -> Self {
        Self::new(0.9, 0.999, 1e-5, 1e-4)
    }
}

impl FusedAdamW {
    /// AdamW with the given constants (burn's `AdamWConfig` names: `beta_1`, `beta_2`,
    /// `epsilon`, `weight_decay`).
    pub fn new(beta_1: f32, beta_2: f32, epsilon: f32, weight_decay: f32) -> Self {
        let burn = AdamWConfig::new()
            .with_beta_1(beta_1)
            .with_beta_2(beta_2)
            .with_epsilon(epsilon)
            .with_weight_decay(weight_decay)
            .build();
        Self {
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
            burn,
        }
    }

    /// The constants of one update at step `time` (counted from 1), as burn's AdamW rounds
    /// them to f32.
    fn constants(&self, lr: LearningRate, time: usize) -> Constants {
        let t = time as i32;
        Constants {
            b1: self.beta_1,
            f1: 1.0 - self.beta_1,
            b2: self.beta_2,
            f2: 1.0 - self.beta_2,
            c1: 1.0 - self.beta_1.powi(t),
            c2: 1.0 - self.beta_2.powi(t),
            eps: self.epsilon,
            decay: (1.0 - lr * f64::from(self.weight_decay)) as f32,
            lr: lr as f32,
        }
    }
}

/// The f32 constants of one update.
#[derive(Clone, Copy)]
struct Constants {
    b1: f32,
    f1: f32,
    b2: f32,
    f2: f32,
    c1: f32,
    c2: f32,
    eps: f32,
    decay: f32,
    lr: f32,
}

impl Constants {
    fn to_array(self) -> [f64; 9] {
        [
            self.b1, self.f1, self.b2, self.f2, self.c1, self.c2, self.eps, self.decay, self.lr,
        ]
        .map(f64::from)
    }

    fn from_array(a: [f64; 9]) -> Self {
        let [b1, f1, b2, f2, c1, c2, eps, decay, lr] = a.map(|v| v as f32);
        Self {
            b1,
            f1,
            b2,
            f2,
            c1,
            c2,
            eps,
            decay,
            lr,
        }
    }
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let fusable = |s: &AdaptiveMomentumState<D>| {
            s.max_moment_2.is_none()
                && crate::on_flex(&tensor.device())
                && [&tensor, &grad, &s.moment_1, &s.moment_2]
                    .iter()
                    .all(|t| t.dtype() == DType::F32 && t.dims() == tensor.dims())
        };
        let Some(AdamWState { momentum }) = state else {
            return self.burn.step(lr, tensor, grad, None);
        };
        if !fusable(&momentum) {
            return self
                .burn
                .step(lr, tensor, grad, Some(AdamWState { momentum }));
        }
        // Moved out of the state, so that the step holds the moments alone and writes them
        // in place.
        let AdaptiveMomentumState {
            time,
            moment_1,
            moment_2,
            max_moment_2,
        } = momentum;
        let time = time + 1;
        let (theta, m1, m2) = <Dispatch as FusedAdamWBackend>::fused_adamw(
            tensor.into_dispatch(),
            grad.into_dispatch(),
            moment_1.into_dispatch(),
            moment_2.into_dispatch(),
            self.constants(lr, time).to_array(),
        );
        let momentum = AdaptiveMomentumState {
            time,
            moment_1: Tensor::from_dispatch(m1),
            moment_2: Tensor::from_dispatch(m2),
            max_moment_2,
        };
        (Tensor::from_dispatch(theta), Some(AdamWState { momentum }))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        <AdamW as Optimizer>::to_device(state, device)
    }
}

/// The fused update as a burn backend extension (Flex only: the caller checks the device).
#[backend_extension(Flex)]
pub trait FusedAdamWBackend: Backend {
    /// `(θ, m, v)` after one AdamW update with gradient `grad`; `constants` are
    /// [`Constants::to_array`]'s.
    fn fused_adamw(
        theta: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        m1: FloatTensor<Self>,
        m2: FloatTensor<Self>,
        constants: [f64; 9],
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

impl FusedAdamWBackend for Flex {
    fn fused_adamw(
        theta: Prim,
        grad: Prim,
        m1: Prim,
        m2: Prim,
        constants: [f64; 9],
    ) -> (Prim, Prim, Prim) {
        let c = Constants::from_array(constants);
        let _profile = crate::profile::scope("optimizer", || "AdamW fused".into(), || 0.0);
        let grad = crate::flex_contiguous(grad);
        let g = grad.as_slice::<f32>().expect("contiguous f32");
        let (mut theta, mut m1, mut m2) = (owned(theta), owned(m1), owned(m2));
        let p = theta.try_storage_mut::<f32>().expect("owned");
        let m = m1.try_storage_mut::<f32>().expect("owned");
        let v = m2.try_storage_mut::<f32>().expect("owned");
        p.par_chunks_mut(TASK)
            .zip(m.par_chunks_mut(TASK))
            .zip(v.par_chunks_mut(TASK))
            .zip(g.par_chunks(TASK))
            .for_each(|(((p, m), v), g)| update(c, p, m, v, g));
        (theta, m1, m2)
    }
}

/// `t` itself when the step holds its only reference and its buffer is exactly its elements
/// in order (then it is written in place), a fresh copy otherwise.
fn owned(mut t: Prim) -> Prim {
    if crate::flex_whole(&t, DType::F32) && t.try_storage_mut::<f32>().is_some() {
        return t;
    }
    let t = crate::flex_contiguous(t);
    let data = t.as_slice::<f32>().expect("contiguous f32").to_vec();
    Flex::float_from_data(TensorData::new(data, t.shape()), &t.device())
}

/// One chunk of the update, in burn's AdamW order of f32 operations.
#[inline(always)]
fn update_portable(c: Constants, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
    for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
        *m = *m * c.b1 + g * c.f1;
        *v = *v * c.b2 + (g * g) * c.f2;
        let m_hat = *m / c.c1;
        let v_hat = *v / c.c2;
        let delta = m_hat / (v_hat.sqrt() + c.eps);
        *p = *p * c.decay - delta * c.lr;
    }
}

/// [`update_portable`] compiled for AVX2 (the same IEEE operations, so the same bits).
///
/// # Safety
///
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn update_avx2(c: Constants, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
    update_portable(c, p, m, v, g);
}

fn update(c: Constants, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected at run time.
        return unsafe { update_avx2(c, p, m, v, g) };
    }
    update_portable(c, p, m, v, g);
}

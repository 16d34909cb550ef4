//! Activations that keep less than their input for backward.
//!
//! - [`inverted`]: keep the output (shared with the next layer) and, for GELU and SiLU, one
//!   branch bit per element; the derivative is recovered from the output.
//! - [`codes`]: bit packing of per-element codes.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use memtrain::activation::InvertedGelu;
//! let device = Device::flex().autodiff();
//! let x = Tensor::<2>::from_floats([[-1.0, 0.5], [2.0, -3.0]], &device).require_grad();
//! let y = InvertedGelu::new().forward(x.clone());
//! let dx = x.grad(&y.sum().backward()).unwrap();
//!
//! let x2 = x.clone().detach().require_grad();
//! let exact = burn::tensor::activation::gelu(x2.clone());
//! let dx_exact = x2.grad(&exact.sum().backward()).unwrap();
//! assert!(dx.all_close(dx_exact, Some(1e-4), Some(1e-4)));
//! ```

pub mod codes;
pub mod inverted;

use burn::backend::backend_extension;
use burn::backend::ops::{FloatTensorOps, IntTensorOps};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::{DType, Tensor, TensorData};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind, unary};
use rayon::prelude::*;

use crate::on_flex;

pub use inverted::Invertible;

/// Elements per parallel task (a multiple of 8, so tasks own whole bytes of branch bits).
const TASK: usize = 1 << 15;

/// The two halves of an inverted activation on one backend.
pub trait InvertedKernel: Backend {
    /// `y = f(x)` and, when `func` needs one, the packed branch bits (`x < x*`, 8 a byte).
    fn inverted_forward(
        x: FloatTensor<Self>,
        func: Invertible,
    ) -> (FloatTensor<Self>, Option<IntTensor<Self>>);

    /// `dx = dy · f'(f⁻¹(y))`.
    fn inverted_backward(
        y: FloatTensor<Self>,
        bits: Option<IntTensor<Self>>,
        dy: FloatTensor<Self>,
        func: Invertible,
    ) -> FloatTensor<Self>;
}

fn f32_slice(t: &FloatTensor<Flex>) -> &[f32] {
    assert_eq!(
        t.dtype(),
        DType::F32,
        "inverted activations run in f32, got {:?}",
        t.dtype()
    );
    t.as_slice::<f32>().expect("made contiguous by the caller")
}

impl InvertedKernel for Flex {
    fn inverted_forward(
        x: FloatTensor<Self>,
        func: Invertible,
    ) -> (FloatTensor<Self>, Option<IntTensor<Self>>) {
        let x = x.to_contiguous();
        let (shape, device) = (x.shape(), x.device());
        let xs = f32_slice(&x);
        let mut y = vec![0f32; xs.len()];
        y.par_chunks_mut(TASK)
            .zip(xs.par_chunks(TASK))
            .for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, &x)| *y = func.f32(x)));
        let bits = func.argmin().map(|x_min| {
            let x_min = x_min as f32;
            let mut packed = vec![0u8; codes::packed_len(xs.len(), 1)];
            packed
                .par_chunks_mut(TASK / 8)
                .zip(xs.par_chunks(TASK))
                .for_each(|(bytes, x)| {
                    for (byte, chunk) in bytes.iter_mut().zip(x.chunks(8)) {
                        *byte = chunk
                            .iter()
                            .enumerate()
                            .fold(0u8, |acc, (j, &v)| acc | (u8::from(v < x_min) << j));
                    }
                });
            let n = packed.len();
            Flex::int_from_data(TensorData::new(packed, [n]), &device)
        });
        (
            Flex::float_from_data(TensorData::new(y, shape), &device),
            bits,
        )
    }

    fn inverted_backward(
        y: FloatTensor<Self>,
        bits: Option<IntTensor<Self>>,
        dy: FloatTensor<Self>,
        func: Invertible,
    ) -> FloatTensor<Self> {
        let (y, dy) = (y.to_contiguous(), dy.to_contiguous());
        let (shape, device) = (dy.shape(), dy.device());
        let (ys, gs) = (f32_slice(&y), f32_slice(&dy));
        let packed: &[u8] = bits
            .as_ref()
            .map(|b| b.as_slice::<u8>().expect("contiguous bits"))
            .unwrap_or(&[]);
        let mut dx = vec![0f32; ys.len()];
        dx.par_chunks_mut(TASK).enumerate().for_each(|(task, dx)| {
            let base = task * TASK;
            for (i, d) in dx.iter_mut().enumerate() {
                let k = base + i;
                let left = !packed.is_empty() && codes::get(packed, k, 1) == 1;
                *d = gs[k] * func.derivative_from_output(ys[k], left);
            }
        });
        Flex::float_from_data(TensorData::new(dx, shape), &device)
    }
}

/// The inverted activation as a burn backend extension (Flex for inference, `Autodiff` for
/// training). `func` is the index of an [`Invertible`] in [`Invertible::ALL`].
#[backend_extension(Flex, Autodiff)]
pub trait InvertedActivationBackend: Backend {
    /// `f(x)`, keeping only `f(x)` and the branch bits for backward.
    fn inverted_activation(x: FloatTensor<Self>, func: u32) -> FloatTensor<Self>;
}

impl InvertedActivationBackend for Flex {
    fn inverted_activation(x: FloatTensor<Self>, func: u32) -> FloatTensor<Self> {
        Self::inverted_forward(x, Invertible::ALL[func as usize]).0
    }
}

#[derive(Debug)]
struct InvertedBackward {
    func: Invertible,
}

impl<B: Backend + InvertedKernel> Backward<B, 1> for InvertedBackward {
    /// The output (shared with the next layer) and the packed branch bits.
    type State = (FloatTensor<B>, Option<IntTensor<B>>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (y, bits) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |dy| {
            B::inverted_backward(y, bits, dy, self.func)
        });
    }
}

impl<B: Backend + InvertedKernel, C: CheckpointStrategy> InvertedActivationBackend
    for Autodiff<B, C>
{
    fn inverted_activation(x: FloatTensor<Self>, func: u32) -> FloatTensor<Self> {
        let func = Invertible::ALL[func as usize];
        let xp = x.primitive().clone();
        match (InvertedBackward { func })
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, bits) = B::inverted_forward(xp, func);
                prep.finish((y.clone(), bits), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::inverted_forward(xp, func).0),
        }
    }
}

/// `f(x)` element-wise, keeping for backward only the output and (GELU, SiLU) one bit per
/// element.
///
/// # Memory
///
/// Kept for backward: the output (`4 n` bytes, shared with whatever layer consumes it) and
/// `n / 8` bytes of branch bits for GELU and SiLU; an exact activation keeps its input
/// (`4 n` bytes) besides. Saved: `4 n (1 - 1/32)` bytes when the next layer keeps the output.
///
/// On backends other than Flex the exact burn activation is used (no saving).
pub fn inverted_activation<const D: usize>(x: Tensor<D>, func: Invertible) -> Tensor<D> {
    if !on_flex(&x.device()) {
        use burn::tensor::activation as a;
        return match func {
            Invertible::Gelu => a::gelu(x),
            Invertible::Silu => a::silu(x),
            Invertible::Sigmoid => a::sigmoid(x),
            Invertible::Tanh => x.tanh(),
            Invertible::Softplus => a::softplus(x, 1.0),
        };
    }
    let code = Invertible::ALL
        .iter()
        .position(|f| *f == func)
        .expect("every function is listed") as u32;
    Tensor::from_dispatch(
        <Dispatch as InvertedActivationBackend>::inverted_activation(x.into_dispatch(), code),
    )
}

macro_rules! inverted_module {
    ($(#[$doc:meta])* $name:ident, $func:expr) => {
        $(#[$doc])*
        ///
        /// # Memory
        ///
        /// See [`inverted_activation`].
        #[derive(burn::module::Module, Debug, Default)]
        pub struct $name;

        impl $name {
            /// The activation (stateless).
            pub fn new() -> Self {
                $name
            }

            /// Applies the function element-wise, any shape.
            pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
                inverted_activation(x, $func)
            }
        }
    };
}

inverted_module!(
    /// GELU (erf form) keeping its output and one branch bit per element.
    InvertedGelu, Invertible::Gelu
);
inverted_module!(
    /// SiLU keeping its output and one branch bit per element.
    InvertedSilu, Invertible::Silu
);
inverted_module!(
    /// Sigmoid keeping its output (`f' = y (1 - y)`).
    InvertedSigmoid, Invertible::Sigmoid
);
inverted_module!(
    /// Tanh keeping its output (`f' = 1 - y²`).
    InvertedTanh, Invertible::Tanh
);
inverted_module!(
    /// Softplus keeping its output (`f' = 1 - e^{-y}`).
    InvertedSoftplus, Invertible::Softplus
);

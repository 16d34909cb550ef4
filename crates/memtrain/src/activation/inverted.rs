//! Inverted activations: keep the output `y = f(x)` (which the next linear layer keeps
//! anyway) and recover `f'(x)` from it in backward.
//!
//! Novikov & Oseledets, "Inverted Activations: Reducing Memory Footprint in Neural Network
//! Training", <https://arxiv.org/abs/2407.15545>.
//!
//! The function's math and branch tables are in [`super::function`] and `branch.rs`; the
//! kernels per backend in `flex.rs` (burn's Flex CPU backend) and `cube.rs` (burn's Cube
//! backend: wgpu, cuda; f32). Elsewhere, and for non-f32 tensors on Cube, the exact burn
//! activation runs (no saving).

use burn::backend::backend_extension;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Dispatch};
use burn::config::Config;
use burn::tensor::Tensor;
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind, unary};

use super::codes;
use super::function::ActFn;
use crate::error::{Error, Result};
use crate::has_activation_kernels;

/// The two halves of an inverted activation on one backend.
pub trait InvertedKernel: Backend {
    /// `y = f(x)` and, when `func` needs one, the packed branch bits (`x < x*`, 8 a byte).
    fn inverted_forward(
        x: FloatTensor<Self>,
        func: ActFn,
    ) -> (FloatTensor<Self>, Option<IntTensor<Self>>);

    /// `dx = dy · f'(f⁻¹(y))`.
    fn inverted_backward(
        y: FloatTensor<Self>,
        bits: Option<IntTensor<Self>>,
        dy: FloatTensor<Self>,
        func: ActFn,
    ) -> FloatTensor<Self>;
}

/// The inverted activation as a burn backend extension (Flex for inference, `Autodiff` for
/// training). `func` is the index of an [`ActFn`] in [`ActFn::ALL`].
#[backend_extension(Flex, Cube: cfg(memtrain_cube), Autodiff)]
pub trait InvertedActivationBackend: Backend {
    /// `f(x)`, keeping only `f(x)` and the branch bits for backward.
    fn inverted_activation(x: FloatTensor<Self>, func: u32) -> FloatTensor<Self>;

    /// The packed branch bits the op keeps for `x` (GELU and SiLU).
    fn inverted_bits(x: FloatTensor<Self>, func: u32) -> IntTensor<Self>;
}

#[derive(Debug)]
struct InvertedBackward {
    func: ActFn,
}

impl<B: Backend + InvertedKernel> Backward<B, 1> for InvertedBackward {
    /// The output (shared with the next layer) and the packed branch bits.
    type State = (FloatTensor<B>, Option<IntTensor<B>>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (y, bits) = ops.state;
        let _profile = crate::profile::scope("activation", || "backward".into(), || 0.0);
        unary::<B, _>(ops.parents, ops.node, grads, |dy| {
            B::inverted_backward(y, bits, dy, self.func)
        });
    }
}

impl<B: Backend + InvertedKernel, C: CheckpointStrategy> InvertedActivationBackend
    for Autodiff<B, C>
{
    fn inverted_activation(x: FloatTensor<Self>, func: u32) -> FloatTensor<Self> {
        let func = ActFn::ALL[func as usize].0;
        // The primitive is taken, not cloned, so that the kernel may write the output over
        // it when nothing else holds it (backward needs only the output and the bits).
        let node = x.node();
        let xp = x.into_primitive();
        match (InvertedBackward { func })
            .prepare::<C>([node])
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

    fn inverted_bits(x: FloatTensor<Self>, func: u32) -> IntTensor<Self> {
        let func = ActFn::ALL[func as usize].0;
        B::inverted_forward(x.primitive().clone(), func)
            .1
            .expect("a function with branch bits")
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
/// On Flex the output is written over the input when the op holds the input's only
/// reference (a linear layer's fresh product), so the forward allocates only the bits and the
/// input and output never coexist (`tests/memory.rs`).
///
/// On backends without memtrain's kernels (see [`crate::device`]) the exact burn activation is
/// used (no saving).
///
/// # Panics
///
/// When `func` is not [`ActFn::is_invertible`] ([`InvertedConfig::init`] checks it).
pub fn inverted_activation<const D: usize>(x: Tensor<D>, func: ActFn) -> Tensor<D> {
    assert!(
        func.is_invertible(),
        "{func:?} is not invertible; expected one of {:?}",
        ActFn::INVERTIBLE
    );
    if !has_activation_kernels(&x) {
        return func.exact(x);
    }
    let code = func.code();
    Tensor::from_dispatch(
        <Dispatch as InvertedActivationBackend>::inverted_activation(x.into_dispatch(), code),
    )
}

/// Configuration of an [`Inverted`] activation: which function.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use memtrain::activation::{ActFn, InvertedConfig};
/// let device = Device::flex().autodiff();
/// let gelu = InvertedConfig::new(ActFn::Gelu).init().unwrap();
/// let x = Tensor::<2>::from_floats([[-1.0, 0.5], [2.0, -3.0]], &device).require_grad();
/// let dx = x.grad(&gelu.forward(x.clone()).sum().backward()).unwrap();
///
/// let x2 = x.clone().detach().require_grad();
/// let exact = burn::tensor::activation::gelu(x2.clone());
/// let dx_exact = x2.grad(&exact.sum().backward()).unwrap();
/// assert!(dx.all_close(dx_exact, Some(1e-4), Some(1e-4)));
/// assert!(InvertedConfig::new(ActFn::Relu).init().is_err()); // not invertible
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct InvertedConfig {
    /// The function: one of [`ActFn::INVERTIBLE`].
    pub func: ActFn,
}

impl InvertedConfig {
    /// Bytes an [`Inverted`] of this configuration keeps for backward besides its output, for
    /// an input of `n` elements: `ceil(n / 8) + 1` bytes of branch bits for GELU and SiLU,
    /// nothing for the monotone functions.
    pub fn saved_bytes(&self, n: usize) -> usize {
        if self.func.needs_bit() {
            codes::packed_len(n, 1)
        } else {
            0
        }
    }

    /// Builds the activation (stateless, like burn's activations: no device).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming `func` when it is not [`ActFn::is_invertible`].
    pub fn init(&self) -> Result<Inverted> {
        if !self.func.is_invertible() {
            let names: Vec<&str> = ActFn::INVERTIBLE.iter().map(|f| f.name()).collect();
            return Err(Error::config(
                "func",
                self.func.name(),
                format!("an invertible function: {}", names.join(", ")),
            ));
        }
        Ok(Inverted { func: self.func })
    }
}

/// An activation that keeps its output and (GELU, SiLU) one branch bit per element for
/// backward, and recovers the derivative from them ([`inverted_activation`]).
///
/// Not a burn `Module` (it has no parameters): keep it in a module field marked
/// `#[module(skip)]`.
///
/// # Memory
///
/// Kept for backward besides the output (which the next layer keeps anyway):
/// [`Inverted::saved_bytes`] `= ceil(n / 8) + 1` bytes of branch bits for `n` elements of GELU
/// or SiLU, nothing for the monotone functions; an exact activation keeps its `4 n`-byte
/// input. Measured with the counting allocator in `tests/memory.rs`
/// (`should_match_the_activation_estimate_inverted_gelu`: the GPT's activation bytes within
/// the formula's slack).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inverted {
    func: ActFn,
}

impl Inverted {
    /// The function.
    pub fn func(&self) -> ActFn {
        self.func
    }

    /// Bytes kept for backward besides the (shared) output, for an input of `n` elements
    /// (see [`InvertedConfig::saved_bytes`]).
    pub fn saved_bytes(&self, n: usize) -> usize {
        InvertedConfig::new(self.func).saved_bytes(n)
    }

    /// Applies the function element-wise, any shape.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        inverted_activation(x, self.func)
    }

    /// The branch bits the op keeps for `x` (one an element, `x < x*`, packed LSB first), as
    /// the `ceil(n / 8)` bytes of the stream; empty for a function without a branch bit.
    ///
    /// # Panics
    ///
    /// On a backend without memtrain's kernels (see [`crate::device`]): it keeps no bits.
    pub fn branch_bits<const D: usize>(&self, x: Tensor<D>) -> Vec<u8> {
        assert!(
            has_activation_kernels(&x),
            "branch bits are kept on Flex and Cube devices only (f32 on Cube)"
        );
        if !self.func.needs_bit() {
            return Vec::new();
        }
        let bytes = x.shape().num_elements().div_ceil(8);
        let bits = Tensor::<1, burn::tensor::Int>::from_dispatch(
            <Dispatch as InvertedActivationBackend>::inverted_bits(
                x.into_dispatch(),
                self.func.code(),
            ),
        );
        super::few_bit::stream_bytes(bits, bytes)
    }
}

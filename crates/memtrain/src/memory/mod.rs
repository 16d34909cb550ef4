//! The meter and the vocabulary of byte accounting.
//!
//! Training memory is four things: parameters, gradients, optimizer state and the
//! activations kept for backward. The meter ([`CountingAllocator`], read through nestable
//! [`Region`]s) measures each of them for a real training step ([`MemoryReport`]). The
//! formulas that predict them live with what they describe: each layer says what it keeps
//! ([`SavedTensor`]s, e.g. [`crate::activation::ActPolicy::saved`]), and
//! [`crate::model::model_saved`] sums the reference GPT's; the tests check that formulas and
//! meter agree.

mod heap;
mod meter;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

pub use heap::keep_freed_memory;
pub use meter::{CountingAllocator, Region, is_installed, live_bytes, live_bytes_on, sample};

/// Bytes of one f32.
pub const F32: usize = 4;

/// The memory of one training step, measured with [`CountingAllocator`]: every field is
/// bytes, read from the allocator in the step itself ([`crate::train::Trainer::try_step`]),
/// never computed. Without the allocator installed every field reads zero
/// ([`is_installed`]).
///
/// On a plain step the forward, backward and update run inside one [`Region`] opened before
/// the forward; under `remat=...` the executor's stages are regions nested in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemoryReport {
    /// Live bytes after building the model minus live bytes before: the parameters (and their
    /// host bookkeeping, about 2 KiB a tensor).
    pub param_bytes: u64,
    /// Live bytes after backward and gradient collection minus live bytes before the forward
    /// (the graph is freed by then): the gradients.
    pub grad_bytes: u64,
    /// The change of live bytes across the first optimizer update (AdamW allocates its state
    /// then) plus the bytes of the gradient tensors that update consumed, so that a thread
    /// growing its matmul scratch in the forward is not counted as optimizer state; measured
    /// once and repeated.
    pub optimizer_bytes: u64,
    /// Live bytes right after the forward pass and loss minus live bytes before it: what the
    /// autodiff graph keeps for backward. Under `remat=...`: the chain's measured peak (what
    /// it keeps, recomputes and needs in backward, parameter gradients excluded).
    pub activation_bytes: u64,
    /// The peak of live bytes from the forward to the end of the optimizer update, above the
    /// live bytes before the forward.
    pub peak_bytes: u64,
    /// Under `remat=...` or `update=per-stage`: the remat executor's measured peak,
    /// activations and the parameter gradients held at each moment (and, per stage, the
    /// updates) included: what a plan's predicted peak predicts. 0 otherwise.
    #[serde(default)]
    pub chain_bytes: u64,
}

/// Bytes of the gradient tensors `grads` holds for `module`'s parameters.
pub fn gradient_bytes<M: Module>(module: &M, grads: &GradientsParams) -> usize {
    struct Sum<'a> {
        grads: &'a GradientsParams,
        bytes: usize,
    }
    impl ModuleVisitor for Sum<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                self.bytes += g.shape().num_elements() * g.dtype().size();
            }
        }
    }
    let mut sum = Sum { grads, bytes: 0 };
    module.visit(&mut sum);
    sum.bytes
}

/// One tensor a layer keeps for backward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SavedTensor {
    /// Which op keeps it and why.
    pub name: &'static str,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Bytes per element.
    pub elem_bytes: usize,
}

impl SavedTensor {
    /// An f32 tensor of `shape`.
    pub fn f32(name: &'static str, shape: &[usize]) -> Self {
        SavedTensor {
            name,
            shape: shape.to_vec(),
            elem_bytes: F32,
        }
    }

    /// A buffer of `bytes` bytes (packed codes or bits).
    pub fn packed(name: &'static str, bytes: usize) -> Self {
        SavedTensor {
            name,
            shape: vec![bytes],
            elem_bytes: 1,
        }
    }

    /// Bytes of the tensor.
    pub fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.elem_bytes
    }
}

/// Sum of [`SavedTensor::bytes`].
pub fn total_bytes(tensors: &[SavedTensor]) -> usize {
    tensors.iter().map(SavedTensor::bytes).sum()
}

/// AdamW state bytes for `n_params` f32 parameters: two moments, `8 × n_params`.
///
/// burn's AdamW also keeps one step counter per parameter tensor, which is host metadata of
/// a few bytes and not counted here.
pub fn adamw_state_bytes(n_params: usize) -> usize {
    2 * F32 * n_params
}

/// This machine's physical memory in bytes, or `None` where the system does not say
/// ([`memtrain_tt::machine::physical_bytes`], which `memtrain-index`'s memory limit reads too).
pub fn physical_bytes() -> Option<u64> {
    memtrain_tt::machine::physical_bytes()
}

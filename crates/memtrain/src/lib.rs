//! memtrain trains and compresses neural networks in a fraction of the memory, on
//! [burn](https://burn.dev).
//!
//! Training memory is four things: weights, gradients, optimizer state and the activations
//! saved for backward. Each module attacks one of them, and [`memory`] measures all four:
//!
//! | module | what it holds |
//! |---|---|
//! | [`memory`] | the counting allocator, nestable [`memory::Region`]s, [`memory::MemoryReport`] |
//! | [`attention`] | fused attention: no `[seq, seq]` tensor kept (`attn=memeff`) |
//! | [`activation`] | inverted activations: keep the output and a bit (`act=inverted`) |
//! | [`norm`] | output-saving LayerNorm (`norm=output`) |
//! | [`linear`] | sketched linear backward (`linear=sketch:RATIO`), TT-matrix layers (`weights=ttm:RANK`) |
//! | [`tt`] | tensor trains (TT-SVD, rounding, products, norms) and the linear-algebra floor: the `memtrain-tt` crate |
//! | [`decompose`] | SVD, Tucker-2, CP (and quantization-aware CP by ADMM), maxvol, rank selection |
//! | [`compress`] | trained weights to TT-matrices, with a per-layer report |
//! | [`optim`] | NAG-GS and GaLore: less optimizer state than AdamW (`optim=...`); AdamW fused into one pass ([`optim::FusedAdamW`]) |
//! | [`remat`] | rematerialization of blocks under a memory budget (`remat=...`) |
//! | [`adapter`] | LoRA and LoTR adapters on a frozen base (`adapt=...`) |
//! | [`plan`] | the memory planner: variants per block and remat for a budget |
//! | [`policy`] | [`policy::MemoryPolicy`]: which method computes each part, and its SPEC grammar |
//! | [`model`] | the reference GPT-2, built under a policy, and what it keeps (formulas) |
//! | [`bert`] | a pretrained BERT sentence encoder (all-MiniLM-L6-v2) from Hugging Face files, compressed by a parameter ratio |
//! | [`data`] | byte and GPT-2 BPE tokenizers, the built-in corpus, deterministic batches |
//! | [`train`] | the measured training step, evaluation, checkpoints |
//! | [`run`] | whole runs: the training loop with evaluations and checkpoints ([`run::fit`]), policies side by side ([`run::bench`]) |
//! | [`stats`] | the median of repeated measurements |
//! | [`device`] | `cpu`, `wgpu`, `cuda[:N]`: choosing a device, and which of memtrain's kernels run on it |
//!
//! One method, one module: a method's op, its kernels per backend, its byte formula and its
//! policy value live together, and every layer and optimizer is built from a
//! `#[derive(Config)]` configuration's `init`. How to add a method is in [`model`]'s docs.
//!
//! # Quick start
//!
//! ```
//! use burn::tensor::Device;
//! use memtrain::data::{Dataset, Tokenizer, synthetic_corpus};
//! use memtrain::model::Preset;
//! use memtrain::train::{TrainConfig, Trainer};
//!
//! let device = Device::flex().autodiff();
//! let mut config = TrainConfig::new(Preset::Tiny);
//! config.seq = 16;
//! config.batch = 2;
//! let data = Dataset::new(&synthetic_corpus(300, 0), Tokenizer::Byte, config.seq).unwrap();
//! let mut trainer = Trainer::new(config, &device).unwrap();
//! let batch = trainer.next_batch(&data);
//! let stats = trainer.step(&batch);
//! assert!(stats.loss.is_finite());
//! ```

pub mod activation;
pub mod adapter;
pub mod attention;
pub mod bert;
pub mod compress;
pub mod data;
pub mod decompose;
pub mod device;
mod error;
pub mod linear;
pub mod memory;
pub mod model;
pub mod norm;
pub mod optim;
pub mod plan;
pub mod policy;
pub mod profile;
pub mod remat;
pub mod run;
pub mod stats;
pub mod train;

pub use error::{Error, Result};
/// Tensor trains and the linear-algebra floor: the `memtrain-tt` crate, re-exported.
pub use memtrain_tt as tt;

/// A tensor of `shape` viewed as a matrix: `(rows, width)`, the width being the last axis and
/// the rows every leading axis together.
pub(crate) fn rows_and_width(shape: &burn::tensor::Shape) -> (usize, usize) {
    let d = shape[shape.num_dims() - 1];
    (shape.num_elements() / d.max(1), d)
}

/// Whether tensors on `device` (with or without autodiff) run on Flex.
pub(crate) fn on_flex(device: &burn::tensor::Device) -> bool {
    device::kernels(device) == device::Kernels::Flex
}

/// A Flex tensor itself when contiguous (held as it was, so that a sole holder can still write
/// it in place), otherwise a contiguous copy.
pub(crate) fn flex_contiguous(
    t: burn::backend::tensor::FloatTensor<burn::backend::Flex>,
) -> burn::backend::tensor::FloatTensor<burn::backend::Flex> {
    if t.is_contiguous() {
        t
    } else {
        t.to_contiguous()
    }
}

/// Whether a Flex tensor is of `dtype` and its buffer holds exactly its elements in row-major
/// order (so that, held alone, it can be written over in place).
pub(crate) fn flex_whole(
    t: &burn::backend::tensor::FloatTensor<burn::backend::Flex>,
    dtype: burn::tensor::DType,
) -> bool {
    use burn::backend::TensorMetadata;
    let n = t.shape().num_elements();
    t.dtype() == dtype
        && t.is_contiguous()
        && t.layout().start_offset() == 0
        && t.bytes().len() == dtype.size() * n
}

/// Whether memtrain's custom ops are routed on `device`: Flex, or burn's Cube backend (wgpu,
/// cuda) when the `wgpu` or `cuda` feature compiled its kernels. Elsewhere the ops fall back
/// to burn's own (correct, but keeping every byte).
pub(crate) fn has_kernels(device: &burn::tensor::Device) -> bool {
    device::kernels(device) != device::Kernels::None
}

/// Whether memtrain's element-wise activation kernels take `x`: its device has them, and on
/// Cube its dtype is f32 (the CubeCL kernels are f32 only; bf16 and the rest take burn's exact
/// activation, which keeps its input).
pub(crate) fn has_activation_kernels<const D: usize>(x: &burn::tensor::Tensor<D>) -> bool {
    match device::kernels(&x.device()) {
        device::Kernels::Flex => true,
        device::Kernels::Cube => x.dtype() == burn::tensor::DType::F32,
        device::Kernels::None => false,
    }
}

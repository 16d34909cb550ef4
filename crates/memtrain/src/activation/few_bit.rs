//! Few-bit backward: an activation keeps a `b`-bit code of its input instead of the input.
//!
//! Novikov, Bershatsky, Gusak, Shonenkov, Dimitrov, Oseledets, "Few-Bit Backward: Quantized
//! Gradients of Activation Functions for Memory Footprint Reduction", ICML 2023,
//! <https://arxiv.org/abs/2202.00441>.
//!
//! Forward computes `y = f(x)` exactly and keeps the index of `x`'s interval in the optimal
//! derivative table ([`super::quantize`]); backward returns `dy · levels[index]`. The kernels
//! per backend are in `flex.rs` (Flex) and `cube.rs` (Cube: wgpu, cuda; f32); elsewhere, and
//! for non-f32 tensors on Cube, the exact burn activation runs.

use std::sync::{Arc, Mutex};

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
use super::quantize::{FewBitTable, default_table};
use crate::error::Result;
use crate::has_activation_kernels;

/// Tables in use by few-bit ops, by id (the id crosses the backend-extension boundary).
fn registry() -> &'static Mutex<Vec<Arc<FewBitTable>>> {
    static TABLES: std::sync::OnceLock<Mutex<Vec<Arc<FewBitTable>>>> = std::sync::OnceLock::new();
    TABLES.get_or_init(Default::default)
}

fn register(table: &Arc<FewBitTable>) -> u32 {
    let mut tables = registry().lock().expect("no panic holds the lock");
    if let Some(i) = tables.iter().position(|t| Arc::ptr_eq(t, table)) {
        return i as u32;
    }
    tables.push(table.clone());
    (tables.len() - 1) as u32
}

pub(crate) fn registered(id: u32) -> Arc<FewBitTable> {
    registry().lock().expect("no panic holds the lock")[id as usize].clone()
}

/// The two halves of a few-bit activation on one backend.
pub trait FewBitKernel: Backend {
    /// `y = f(x)` and the packed `b`-bit interval codes of `x`.
    fn few_bit_forward(
        x: FloatTensor<Self>,
        table: &FewBitTable,
    ) -> (FloatTensor<Self>, IntTensor<Self>);

    /// `dx = dy · levels[code]`.
    fn few_bit_backward(
        codes: IntTensor<Self>,
        dy: FloatTensor<Self>,
        table: &FewBitTable,
    ) -> FloatTensor<Self>;
}

/// The few-bit activation as a burn backend extension. `table` is a registry id.
#[backend_extension(Flex, Cube: cfg(memtrain_cube), Autodiff)]
pub trait FewBitActivationBackend: Backend {
    /// `f(x)` exactly, keeping only the packed interval codes for backward.
    fn few_bit_activation(x: FloatTensor<Self>, table: u32) -> FloatTensor<Self>;

    /// The packed interval codes the op keeps for `x` (bytes on Flex, `u32` words on Cube:
    /// the same bit stream).
    fn few_bit_codes(x: FloatTensor<Self>, table: u32) -> IntTensor<Self>;
}

#[derive(Debug)]
struct FewBitBackward {
    table: Arc<FewBitTable>,
}

impl<B: Backend + FewBitKernel> Backward<B, 1> for FewBitBackward {
    /// The packed codes only.
    type State = IntTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let codes = ops.state;
        let _profile = crate::profile::scope("activation", || "backward".into(), || 0.0);
        unary::<B, _>(ops.parents, ops.node, grads, |dy| {
            B::few_bit_backward(codes, dy, &self.table)
        });
    }
}

impl<B: Backend + FewBitKernel, C: CheckpointStrategy> FewBitActivationBackend for Autodiff<B, C> {
    fn few_bit_activation(x: FloatTensor<Self>, table: u32) -> FloatTensor<Self> {
        let table = registered(table);
        let xp = x.primitive().clone();
        match (FewBitBackward {
            table: table.clone(),
        })
        .prepare::<C>([x.node()])
        .compute_bound()
        .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, codes) = B::few_bit_forward(xp, &table);
                prep.finish(codes, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::few_bit_forward(xp, &table).0),
        }
    }

    fn few_bit_codes(x: FloatTensor<Self>, table: u32) -> IntTensor<Self> {
        B::few_bit_forward(x.primitive().clone(), &registered(table)).1
    }
}

/// An activation whose backward uses a `b`-bit quantized derivative.
///
/// Not a burn `Module` (it has no parameters): keep it in a module field marked
/// `#[module(skip)]`.
///
/// # Memory
///
/// Kept for backward: `ceil(n b / 8) + 1` bytes of packed codes for `n` elements, i.e. `b/32`
/// of the input's f32 bytes, plus the table (`4 (2^{b+1} - 1)` bytes, shared by all calls). An
/// exact activation keeps its `4 n`-byte input. The output is computed exactly.
/// [`FewBit::saved_bytes`] is the formula; `tests/memory.rs`
/// (`should_match_the_activation_estimate_few_bit_gelu`) measures it in the GPT with the
/// counting allocator.
///
/// On backends without memtrain's kernels (see [`crate::device`]) the exact burn activation is
/// used.
#[derive(Debug, Clone)]
pub struct FewBit {
    table: Arc<FewBitTable>,
    id: u32,
}

impl FewBit {
    /// The table in use.
    pub fn table(&self) -> &FewBitTable {
        &self.table
    }

    /// Bytes kept for backward for an input of `n` elements (see [`FewBitConfig::saved_bytes`]).
    pub fn saved_bytes(&self, n: usize) -> usize {
        codes::packed_len(n, self.table.bits)
    }

    /// The codes the op keeps for `x`: the `bits`-bit interval codes packed LSB first, as the
    /// `ceil(n bits / 8)` bytes of the stream, on every backend with memtrain's kernels (Flex
    /// keeps bytes, Cube `u32` words of the same stream).
    ///
    /// # Panics
    ///
    /// On a backend without memtrain's kernels (see [`crate::device`]): it keeps no codes.
    pub fn codes<const D: usize>(&self, x: Tensor<D>) -> Vec<u8> {
        assert!(
            has_activation_kernels(&x),
            "few-bit codes are kept on Flex and Cube devices only (f32 on Cube)"
        );
        let bytes = (x.shape().num_elements() * self.table.bits as usize).div_ceil(8);
        let codes = Tensor::<1, burn::tensor::Int>::from_dispatch(
            <Dispatch as FewBitActivationBackend>::few_bit_codes(x.into_dispatch(), self.id),
        );
        stream_bytes(codes, bytes)
    }

    /// Applies the function element-wise, any shape.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if !has_activation_kernels(&x) {
            return self.table.func.exact(x);
        }
        Tensor::from_dispatch(<Dispatch as FewBitActivationBackend>::few_bit_activation(
            x.into_dispatch(),
            self.id,
        ))
    }
}

/// Configuration of a [`FewBit`] activation: the function and the bits per element.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use memtrain::activation::{ActFn, FewBitConfig};
/// let act = FewBitConfig::new(ActFn::Gelu, 2).init().unwrap();
/// let x = Tensor::<1>::from_floats([-1.0, 0.0, 2.0], &Device::flex());
/// assert_eq!(act.forward(x).dims(), [3]);
/// assert_eq!(act.saved_bytes(1000), 251); // 2 bits an element and one spare byte
/// assert!(FewBitConfig::new(ActFn::Gelu, 9).init().is_err());
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct FewBitConfig {
    /// The function.
    pub func: ActFn,
    /// Bits per code, 1..=8.
    pub bits: u32,
}

impl FewBitConfig {
    /// Bytes a [`FewBit`] of this configuration keeps for backward for an input of `n`
    /// elements: `ceil(n bits / 8) + 1` bytes of packed codes.
    pub fn saved_bytes(&self, n: usize) -> usize {
        codes::packed_len(n, self.bits)
    }

    /// The activation with a given table (e.g. from
    /// [`quantize_derivative`](super::quantize_derivative) with your own parameters).
    ///
    /// # Errors
    ///
    /// [`crate::Error::Config`] naming `func` or `bits` when the table is another function's
    /// or another width's.
    pub fn init_from(&self, table: FewBitTable) -> Result<FewBit> {
        if (table.func, table.bits) != (self.func, self.bits) {
            return Err(crate::Error::config(
                "func/bits",
                format!("{} at {} bits", self.func.name(), self.bits),
                format!("the table's {} at {} bits", table.func.name(), table.bits),
            ));
        }
        let table = Arc::new(table);
        let id = register(&table);
        Ok(FewBit { table, id })
    }

    /// Builds the activation (stateless, like burn's activations: no device); the table is
    /// computed once per process and cached.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Config`] naming `bits` when it is outside 1..=8.
    pub fn init(&self) -> Result<FewBit> {
        let table = default_table(self.func, self.bits)?;
        let id = register(&table);
        Ok(FewBit { table, id })
    }
}

/// The first `bytes` bytes of a packed code stream held as bytes or as little-endian `u32`
/// words.
pub(crate) fn stream_bytes(codes: Tensor<1, burn::tensor::Int>, bytes: usize) -> Vec<u8> {
    let data = codes.into_data();
    let mut out: Vec<u8> = match data.dtype() {
        burn::tensor::DType::U32 => data
            .try_to_vec::<u32>()
            .expect("u32 words")
            .into_iter()
            .flat_map(u32::to_le_bytes)
            .collect(),
        _ => data.try_to_vec::<u8>().expect("packed bytes"),
    };
    out.truncate(bytes);
    out
}

//! Activations that keep less than their input for backward.
//!
//! - [`inverted`]: keep the output (shared with the next layer) and, for GELU and SiLU, one
//!   branch bit per element; the derivative is recovered from the output.
//! - [`few_bit`]: keep a 1-8-bit code of the input; the derivative is quantized to the
//!   optimal `2^b` levels.
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
pub mod few_bit;
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

pub use few_bit::{
    FewBitFn, FewBitTable, QuantizeParams, Weight, default_table, quantize_derivative,
};
pub use inverted::Invertible;

use std::sync::{Arc, Mutex};

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

/// `dx[k] = dy[k] · d(k)` over the elements of `dy` in row-major order. Written over `dy`'s
/// own buffer when the backward pass holds its only reference (the gradient the next layer's
/// backward just produced), so an activation's backward allocates nothing; into a new buffer
/// otherwise.
fn scale_gradient(mut dy: FloatTensor<Flex>, d: impl Fn(usize) -> f32 + Sync) -> FloatTensor<Flex> {
    let n = dy.shape().num_elements();
    let whole = dy.dtype() == DType::F32
        && dy.is_contiguous()
        && dy.layout().start_offset() == 0
        && dy.bytes().len() == 4 * n;
    if whole && let Some(g) = dy.try_storage_mut::<f32>() {
        g.par_chunks_mut(TASK).enumerate().for_each(|(task, g)| {
            let base = task * TASK;
            g.iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v *= d(base + i));
        });
        return dy;
    }
    let dy = dy.to_contiguous();
    let (shape, device) = (dy.shape(), dy.device());
    let gs = f32_slice(&dy);
    let mut dx = vec![0f32; gs.len()];
    dx.par_chunks_mut(TASK).enumerate().for_each(|(task, dx)| {
        let base = task * TASK;
        for (i, v) in dx.iter_mut().enumerate() {
            *v = gs[base + i] * d(base + i);
        }
    });
    Flex::float_from_data(TensorData::new(dx, shape), &device)
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
                    let left: Vec<u8> = x.iter().map(|&v| u8::from(v < x_min)).collect();
                    codes::pack_into(&left, 1, bytes);
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
        let y = y.to_contiguous();
        let ys = f32_slice(&y);
        let packed: &[u8] = bits
            .as_ref()
            .map(|b| b.as_slice::<u8>().expect("contiguous bits"))
            .unwrap_or(&[]);
        scale_gradient(dy, |k| {
            let left = !packed.is_empty() && codes::get(packed, k, 1) == 1;
            func.derivative_from_output(ys[k], left)
        })
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

fn registered(id: u32) -> Arc<FewBitTable> {
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

impl FewBitKernel for Flex {
    fn few_bit_forward(
        x: FloatTensor<Self>,
        table: &FewBitTable,
    ) -> (FloatTensor<Self>, IntTensor<Self>) {
        let x = x.to_contiguous();
        let (shape, device) = (x.shape(), x.device());
        let xs = f32_slice(&x);
        let (borders, _) = table.f32_parts();
        let (func, bits) = (table.func, table.bits);
        let mut y = vec![0f32; xs.len()];
        let mut packed = vec![0u8; codes::packed_len(xs.len(), bits)];
        // TASK · bits is a multiple of 8, so every task starts on a byte of the stream.
        let task_bytes = TASK * bits as usize / 8;
        y.par_chunks_mut(TASK)
            .zip(xs.par_chunks(TASK))
            .zip(packed.par_chunks_mut(task_bytes))
            .for_each(|((y, x), out)| {
                let mut c = [0u8; TASK];
                for (i, (y, &x)) in y.iter_mut().zip(x).enumerate() {
                    *y = func.f(x as f64) as f32;
                    c[i] = borders.partition_point(|&b| b <= x) as u8;
                }
                codes::pack_into(&c[..x.len()], bits, out);
            });
        let n = packed.len();
        (
            Flex::float_from_data(TensorData::new(y, shape), &device),
            Flex::int_from_data(TensorData::new(packed, [n]), &device),
        )
    }

    fn few_bit_backward(
        codes_t: IntTensor<Self>,
        dy: FloatTensor<Self>,
        table: &FewBitTable,
    ) -> FloatTensor<Self> {
        let packed = codes_t.as_slice::<u8>().expect("contiguous codes");
        let (_, levels) = table.f32_parts();
        let bits = table.bits;
        scale_gradient(dy, |k| levels[codes::get(packed, k, bits) as usize])
    }
}

/// The few-bit activation as a burn backend extension. `table` is a registry id.
#[backend_extension(Flex, Autodiff)]
pub trait FewBitActivationBackend: Backend {
    /// `f(x)` exactly, keeping only the packed interval codes for backward.
    fn few_bit_activation(x: FloatTensor<Self>, table: u32) -> FloatTensor<Self>;
}

impl FewBitActivationBackend for Flex {
    fn few_bit_activation(x: FloatTensor<Self>, table: u32) -> FloatTensor<Self> {
        Self::few_bit_forward(x, &registered(table)).0
    }
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
}

/// An activation whose backward uses a `b`-bit quantized derivative (see [`few_bit`]).
///
/// Not a burn `Module` (it has no parameters): keep it in a module field marked
/// `#[module(skip)]`.
///
/// # Memory
///
/// Kept for backward: `ceil(n b / 8) + 1` bytes of packed codes for `n` elements, i.e. `b/32`
/// of the input's f32 bytes, plus the table (`4 (2^{b+1} - 1)` bytes, shared by all calls). An
/// exact activation keeps its `4 n`-byte input. The output is computed exactly.
///
/// On backends other than Flex the exact burn activation is used.
#[derive(Debug, Clone)]
pub struct FewBit {
    table: Arc<FewBitTable>,
    id: u32,
}

impl FewBit {
    /// The activation with a given table (e.g. from [`quantize_derivative`] with your own
    /// parameters).
    pub fn from_table(table: FewBitTable) -> Self {
        let table = Arc::new(table);
        let id = register(&table);
        FewBit { table, id }
    }

    /// The table in use.
    pub fn table(&self) -> &FewBitTable {
        &self.table
    }

    /// Bytes kept for backward for an input of `n` elements.
    pub fn saved_bytes(&self, n: usize) -> usize {
        codes::packed_len(n, self.table.bits)
    }

    /// Applies the function element-wise, any shape.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if !on_flex(&x.device()) {
            return exact_few_bit_fn(x, self.table.func);
        }
        Tensor::from_dispatch(<Dispatch as FewBitActivationBackend>::few_bit_activation(
            x.into_dispatch(),
            self.id,
        ))
    }
}

/// burn's own activation for `func` (the fallback off Flex).
fn exact_few_bit_fn<const D: usize>(x: Tensor<D>, func: FewBitFn) -> Tensor<D> {
    use burn::tensor::activation as a;
    match func {
        FewBitFn::Gelu => a::gelu(x),
        FewBitFn::GeluTanh => a::gelu_approximate(x),
        FewBitFn::Silu => a::silu(x),
        FewBitFn::Tanh => x.tanh(),
        FewBitFn::Sigmoid => a::sigmoid(x),
        FewBitFn::Softplus => a::softplus(x, 1.0),
        FewBitFn::Elu => {
            let neg = x.clone().clamp_max(0.0).exp().sub_scalar(1.0);
            x.clone().clamp_min(0.0) + neg
        }
        FewBitFn::LeakyRelu => a::leaky_relu(x, 0.01),
        FewBitFn::Relu => a::relu(x),
        FewBitFn::Mish => a::mish(x),
    }
}

/// Configuration of a [`FewBit`] activation: the function and the bits per element.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FewBitConfig {
    /// The function.
    pub func: FewBitFn,
    /// Bits per code, 1..=8.
    pub bits: u32,
}

impl FewBitConfig {
    /// `bits` for `func`, with the default table parameters.
    pub fn new(func: FewBitFn, bits: u32) -> Self {
        FewBitConfig { func, bits }
    }

    /// Builds the activation (the table is computed once per process and cached).
    ///
    /// # Errors
    ///
    /// [`crate::Error::Config`] when `bits` is outside 1..=8.
    pub fn init(&self) -> crate::Result<FewBit> {
        let table = default_table(self.func, self.bits)?;
        let id = register(&table);
        Ok(FewBit { table, id })
    }
}

macro_rules! few_bit_config {
    ($(#[$doc:meta])* $name:ident, $func:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq)]
        pub struct $name {
            /// Bits per code, 1..=8.
            pub bits: u32,
        }

        impl $name {
            /// `bits` bits per element.
            pub fn new(bits: u32) -> Self {
                $name { bits }
            }

            /// Builds the activation.
            ///
            /// # Errors
            ///
            /// [`crate::Error::Config`] when `bits` is outside 1..=8.
            pub fn init(&self) -> crate::Result<FewBit> {
                FewBitConfig::new($func, self.bits).init()
            }
        }
    };
}

few_bit_config!(
    /// Few-bit GELU (erf form): `FewBitGeluConfig::new(2).init()?.forward(x)`.
    FewBitGeluConfig, FewBitFn::Gelu
);
few_bit_config!(
    /// Few-bit GELU, tanh approximation.
    FewBitGeluTanhConfig, FewBitFn::GeluTanh
);
few_bit_config!(
    /// Few-bit SiLU.
    FewBitSiluConfig, FewBitFn::Silu
);
few_bit_config!(
    /// Few-bit Tanh.
    FewBitTanhConfig, FewBitFn::Tanh
);
few_bit_config!(
    /// Few-bit Sigmoid.
    FewBitSigmoidConfig, FewBitFn::Sigmoid
);
few_bit_config!(
    /// Few-bit Softplus.
    FewBitSoftplusConfig, FewBitFn::Softplus
);
few_bit_config!(
    /// Few-bit ELU (α = 1).
    FewBitEluConfig, FewBitFn::Elu
);
few_bit_config!(
    /// Few-bit LeakyReLU (slope 0.01): exact at 1 bit.
    FewBitLeakyReluConfig, FewBitFn::LeakyRelu
);
few_bit_config!(
    /// Few-bit ReLU: exact at 1 bit.
    FewBitReluConfig, FewBitFn::Relu
);
few_bit_config!(
    /// Few-bit Mish.
    FewBitMishConfig, FewBitFn::Mish
);

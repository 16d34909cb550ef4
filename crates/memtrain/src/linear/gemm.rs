//! [`gemm_linear`]: burn's dense linear layer, computed by one `gemm` call into a buffer of
//! exactly the output's size.
//!
//! The math and what is kept for backward are burn's (`Y = X W + b`; the input `X` for
//! `dW = Xᵀ dY`, the weight for `dX = dY Wᵀ`). What differs is the allocation: burn 0.22's Flex
//! matmul creates every output as a byte vector and then copies it into a 16-byte-aligned
//! buffer (`FlexTensor::empty`, `Bytes::from_bytes_vec`), so each product briefly holds its
//! output twice and pays a copy. A linear layer's outputs are the largest tensors of a
//! transformer block (the MLP's `[rows, 4d]`), so in backward the transient copy of `dX` sets
//! the block's peak. This op writes each result once.
//!
//! # Memory
//!
//! Kept for backward: the input (`4 rows d_in` bytes, shared with whatever produced it) and
//! the weight (a parameter), as [`burn::nn::Linear`]. Transient: in forward the output, in
//! backward `dX`, `dW` and `db`, each allocated once; burn's adds a second copy of `Y` in
//! forward and of `dX` and `dW` in backward (measured in `tests/linear.rs`).
//!
//! ```
//! use burn::nn::LinearConfig;
//! use burn::tensor::{Device, Distribution, Tensor};
//! use memtrain::linear::gemm_linear;
//! let device = Device::flex();
//! let layer = LinearConfig::new(8, 16).init(&device);
//! let x = Tensor::<3>::random([2, 5, 8], Distribution::Default, &device);
//! let ours = gemm_linear(x.clone(), layer.weight.val(), layer.bias.as_ref().unwrap().val());
//! assert!(ours.all_close(layer.forward(x), Some(1e-5), Some(1e-6)));
//! ```

use burn::backend::backend_extension;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::{DType, Shape, Tensor, TensorData};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use rayon::prelude::*;

use crate::{flex_contiguous, on_flex, rows_and_width};

/// The float types the kernels run in: f32 in training, f64 in the gradient checks.
trait Real: Copy + Send + Sync + 'static + std::ops::AddAssign {
    const ZERO: Self;
    const ONE: Self;
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

/// Products of at least this many multiply-adds use every rayon thread (Flex's threshold).
const PARALLEL: usize = 192 * 192 * 192;

thread_local! {
    /// Whether this thread's f32 gemm products run in bf16 ([`with_precision`]).
    static BF16: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with this thread's [`gemm_linear`] products (forward and backward, and
/// [`linear_grads`]) and the fused attention's products in `precision`, then restores the
/// previous setting, also when `f` panics. A scope, like PyTorch's `autocast`: the trainer
/// opens one around each step and evaluation of a `precision=bf16` policy, and the attention
/// kernel carries it into its rayon tasks ([`current_precision`]). Only f32 products on Flex
/// are affected, and only where [`super::bf16::is_available`]; elsewhere they stay f32.
///
/// ```
/// use burn::tensor::{Device, Distribution, Tensor};
/// use memtrain::linear::{bf16_products, gemm_linear, with_precision};
/// use memtrain::policy::PrecisionPolicy;
/// let device = Device::flex();
/// let x = Tensor::<2>::random([4, 64], Distribution::Default, &device);
/// let w = Tensor::<2>::random([64, 8], Distribution::Default, &device);
/// let b = Tensor::<1>::zeros([8], &device);
/// let fp32 = gemm_linear(x.clone(), w.clone(), b.clone());
/// let bf16 = with_precision(PrecisionPolicy::Bf16, || gemm_linear(x, w, b));
/// // bf16 keeps 8 significant bits: products differ from f32 by about 2^-8 relative.
/// assert!(bf16.all_close(fp32, Some(2e-2), Some(2e-2)));
/// assert!(!bf16_products());
/// ```
pub fn with_precision<R>(precision: super::PrecisionPolicy, f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            BF16.with(|b| b.set(self.0));
        }
    }
    let on = precision == super::PrecisionPolicy::Bf16;
    let _restore = Restore(BF16.with(|b| b.replace(on)));
    f()
}

/// This thread's precision scope, to carry into the tasks it spawns (the scope is per thread).
pub fn current_precision() -> super::PrecisionPolicy {
    if BF16.with(std::cell::Cell::get) {
        super::PrecisionPolicy::Bf16
    } else {
        super::PrecisionPolicy::Fp32
    }
}

/// Whether this thread's gemm products run in bf16 now: inside
/// [`with_precision`]`(Bf16, ..)` on a CPU with AVX512-BF16.
pub fn bf16_products() -> bool {
    BF16.with(std::cell::Cell::get) && super::bf16::is_available()
}

/// `dst [m, n] (row stride n) = (dst if accumulate) + lhs · rhs` by
/// [`super::bf16::product_bf16`] when `T` is f32 and this thread's products run in bf16
/// ([`bf16_products`]): then true; otherwise false, and `dst` is untouched. The one place
/// the gemm linear and the fused attention switch to bf16.
pub(crate) fn bf16_product<T: 'static>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    accumulate: bool,
    lhs: (&[T], usize, usize),
    rhs: (&[T], usize, usize),
) -> bool {
    if std::any::TypeId::of::<T>() != std::any::TypeId::of::<f32>() || !bf16_products() {
        return false;
    }
    // SAFETY: T is f32 (same type id), so the slices are f32 slices of the same lengths.
    let (dst, lhs0, rhs0) = unsafe {
        (
            std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<f32>(), dst.len()),
            std::slice::from_raw_parts(lhs.0.as_ptr().cast::<f32>(), lhs.0.len()),
            std::slice::from_raw_parts(rhs.0.as_ptr().cast::<f32>(), rhs.0.len()),
        )
    };
    super::bf16::product_bf16(
        m,
        n,
        k,
        dst,
        accumulate,
        (lhs0, lhs.1, lhs.2),
        (rhs0, rhs.1, rhs.2),
    )
}

/// The three products of a linear layer on one backend.
pub trait GemmLinearKernel: Backend {
    /// `x [.., d_in] w [d_in, d_out] + b [d_out]`.
    fn gemm_linear_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
    /// `dX = dY Wᵀ`, shaped like `x` (`dy`'s shape with `d_in` last).
    fn gemm_linear_dx(weight: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `dW = Xᵀ dY` over all leading axes.
    fn gemm_linear_dw(x: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `db`: the sum of `dY` over all leading axes.
    fn gemm_linear_db(dy: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `dY` in the layout the three products read (on Flex: contiguous), made once for all
    /// three instead of once in each.
    fn gemm_linear_grad_layout(dy: FloatTensor<Self>) -> FloatTensor<Self>;
}

type Prim = FloatTensor<Flex>;

fn slice<T: bytemuck::Pod + burn::tensor::Element>(t: &Prim) -> &[T] {
    t.as_slice::<T>()
        .expect("made contiguous by `flex_contiguous`")
}

fn parallelism(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    if m.saturating_mul(n).saturating_mul(k) >= PARALLEL {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    }
}

/// `dst [m, n] (row-major) = (dst if accumulate) + lhs · rhs`, the operands given by their
/// (row, column) strides.
#[allow(clippy::too_many_arguments)]
fn product<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    accumulate: bool,
    lhs: (&[T], usize, usize),
    rhs: (&[T], usize, usize),
) {
    assert!(dst.len() >= m * n, "gemm_linear: output too small");
    assert!(m == 0 || k == 0 || (m - 1) * lhs.1 + (k - 1) * lhs.2 < lhs.0.len());
    assert!(k == 0 || n == 0 || (k - 1) * rhs.1 + (n - 1) * rhs.2 < rhs.0.len());
    if m == 0 || n == 0 {
        return;
    }
    if bf16_product(m, n, k, dst, accumulate, lhs, rhs) {
        return;
    }
    // SAFETY: the asserts above keep every index gemm forms within the three slices, and
    // `dst` is a unique borrow, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.0.as_ptr(),
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0.as_ptr(),
            rhs.2 as isize,
            rhs.1 as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            parallelism(m, n, k),
        );
    }
}

/// A product's profile label: `bf16` while [`bf16_products`].
fn label(fp32: &'static str, bf16: &'static str) -> &'static str {
    if bf16_products() { bf16 } else { fp32 }
}

fn output<T: burn::tensor::Element>(data: Vec<T>, shape: Shape, like: &Prim) -> Prim {
    Flex::float_from_data(TensorData::new(data, shape), &like.device())
}

fn with_last(shape: &Shape, last: usize) -> Shape {
    let mut s = shape.clone();
    let l = s.num_dims() - 1;
    s[l] = last;
    s
}

fn forward_in<T>(x: Prim, weight: Prim, bias: Prim) -> Prim
where
    T: Real + bytemuck::Pod + burn::tensor::Element,
{
    let (x, weight, bias) = (
        flex_contiguous(x),
        flex_contiguous(weight),
        flex_contiguous(bias),
    );
    let (n, d_in) = rows_and_width(&x.shape());
    let d_out = weight.shape()[1];
    let _profile = crate::profile::matmul(label("x·W", "x·W bf16"), n, d_in, d_out);
    let b = slice::<T>(&bias);
    // Every row starts as the bias; the product accumulates onto it.
    let mut y: Vec<T> = Vec::with_capacity(n * d_out);
    for _ in 0..n {
        y.extend_from_slice(b);
    }
    product(
        n,
        d_out,
        d_in,
        &mut y,
        true,
        (slice::<T>(&x), d_in, 1),
        (slice::<T>(&weight), d_out, 1),
    );
    output(y, with_last(&x.shape(), d_out), &x)
}

fn dx_in<T>(weight: Prim, dy: Prim) -> Prim
where
    T: Real + bytemuck::Pod + burn::tensor::Element,
{
    let (weight, dy) = (flex_contiguous(weight), flex_contiguous(dy));
    let (n, d_out) = rows_and_width(&dy.shape());
    let d_in = weight.shape()[0];
    let _profile = crate::profile::matmul(label("dY·Wᵀ", "dY·Wᵀ bf16"), n, d_out, d_in);
    let mut dx = vec![T::ZERO; n * d_in];
    // Wᵀ [d_out, d_in]: element (o, i) is W[i, o] at i·d_out + o.
    product(
        n,
        d_in,
        d_out,
        &mut dx,
        false,
        (slice::<T>(&dy), d_out, 1),
        (slice::<T>(&weight), 1, d_out),
    );
    output(dx, with_last(&dy.shape(), d_in), &dy)
}

fn dw_in<T>(x: Prim, dy: Prim) -> Prim
where
    T: Real + bytemuck::Pod + burn::tensor::Element,
{
    let (x, dy) = (flex_contiguous(x), flex_contiguous(dy));
    let (n, d_in) = rows_and_width(&x.shape());
    let d_out = rows_and_width(&dy.shape()).1;
    let _profile = crate::profile::matmul(label("Xᵀ·dY", "Xᵀ·dY bf16"), d_in, n, d_out);
    let mut dw = vec![T::ZERO; d_in * d_out];
    // Xᵀ [d_in, n]: element (i, r) is X[r, i] at r·d_in + i.
    product(
        d_in,
        d_out,
        n,
        &mut dw,
        false,
        (slice::<T>(&x), 1, d_in),
        (slice::<T>(&dy), d_out, 1),
    );
    output(dw, Shape::from(vec![d_in, d_out]), &x)
}

fn db_in<T>(dy: Prim) -> Prim
where
    T: Real + bytemuck::Pod + burn::tensor::Element,
{
    let dy = flex_contiguous(dy);
    let (rows, d_out) = rows_and_width(&dy.shape());
    let _profile = crate::profile::scope("bias grad", String::new, || (rows * d_out) as f64);
    let g = slice::<T>(&dy);
    let rows_per_task = (1 << 16) / d_out.max(1) + 1;
    let sum = |a: Vec<T>, b: Vec<T>| {
        a.into_iter()
            .zip(b)
            .map(|(mut a, b)| {
                a += b;
                a
            })
            .collect::<Vec<T>>()
    };
    let db = g
        .par_chunks(rows_per_task * d_out.max(1))
        .map(|rows| {
            let mut acc = vec![T::ZERO; d_out];
            for row in rows.chunks(d_out.max(1)) {
                acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
            }
            acc
        })
        .reduce(|| vec![T::ZERO; d_out], sum);
    output(db, Shape::from(vec![d_out]), &dy)
}

macro_rules! by_dtype {
    ($t:expr, $f:ident ( $($arg:expr),* )) => {
        match $t.dtype() {
            DType::F32 => $f::<f32>($($arg),*),
            DType::F64 => $f::<f64>($($arg),*),
            other => panic!("gemm_linear runs in f32 or f64, got {other:?}"),
        }
    };
}

impl GemmLinearKernel for Flex {
    fn gemm_linear_forward(x: Prim, weight: Prim, bias: Prim) -> Prim {
        by_dtype!(x, forward_in(x, weight, bias))
    }
    fn gemm_linear_dx(weight: Prim, dy: Prim) -> Prim {
        by_dtype!(dy, dx_in(weight, dy))
    }
    fn gemm_linear_dw(x: Prim, dy: Prim) -> Prim {
        by_dtype!(dy, dw_in(x, dy))
    }
    fn gemm_linear_db(dy: Prim) -> Prim {
        by_dtype!(dy, db_in(dy))
    }
    fn gemm_linear_grad_layout(dy: Prim) -> Prim {
        flex_contiguous(dy)
    }
}

/// The linear op as a burn backend extension.
#[backend_extension(Flex, Autodiff)]
pub trait GemmLinearBackend: Backend {
    /// `x w + b`, keeping `x` and `w` for backward.
    fn gemm_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `dy wᵀ` outside autodiff: the input gradient of `x w + b` (see [`linear_grads`]).
    fn gemm_linear_input_grad(
        weight: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `xᵀ dy` over all leading axes, outside autodiff: the weight gradient.
    fn gemm_linear_weight_grad(x: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self>;

    /// The sum of `dy` over all leading axes, outside autodiff: the bias gradient.
    fn gemm_linear_bias_grad(dy: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl GemmLinearBackend for Flex {
    fn gemm_linear(x: Prim, weight: Prim, bias: Prim) -> Prim {
        Self::gemm_linear_forward(x, weight, bias)
    }
    fn gemm_linear_input_grad(weight: Prim, dy: Prim) -> Prim {
        Self::gemm_linear_dx(weight, dy)
    }
    fn gemm_linear_weight_grad(x: Prim, dy: Prim) -> Prim {
        Self::gemm_linear_dw(x, dy)
    }
    fn gemm_linear_bias_grad(dy: Prim) -> Prim {
        Self::gemm_linear_db(dy)
    }
}

#[derive(Debug)]
struct GemmBackward;

impl<B: Backend + GemmLinearKernel> Backward<B, 3> for GemmBackward {
    /// The input when the weight needs a gradient, the weight when the input does.
    type State = (Option<FloatTensor<B>>, Option<FloatTensor<B>>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let dy = B::gemm_linear_grad_layout(grads.consume::<B>(&ops.node));
        let (x, weight) = ops.state;
        if let Some(node) = node_b {
            grads.register::<B>(node.id, B::gemm_linear_db(dy.clone()));
        }
        if let Some(node) = node_w {
            let x = x.expect("kept when the weight is tracked");
            grads.register::<B>(node.id, B::gemm_linear_dw(x, dy.clone()));
        }
        if let Some(node) = node_x {
            let w = weight.expect("kept when the input is tracked");
            grads.register::<B>(node.id, B::gemm_linear_dx(w, dy));
        }
    }
}

impl<B: Backend + GemmLinearKernel, C: CheckpointStrategy> GemmLinearBackend for Autodiff<B, C> {
    fn gemm_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (x_tracked, w_tracked) = (x.is_tracked(), weight.is_tracked());
        let (xp, wp, bp) = (
            x.primitive().clone(),
            weight.primitive().clone(),
            bias.primitive().clone(),
        );
        match GemmBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = (w_tracked.then(|| xp.clone()), x_tracked.then(|| wp.clone()));
                prep.finish(state, B::gemm_linear_forward(xp, wp, bp))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::gemm_linear_forward(xp, wp, bp)),
        }
    }

    // The gradients are computed on the inner backend and come back untracked: they are
    // results of a backward, never inputs of one.
    fn gemm_linear_input_grad(
        weight: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::gemm_linear_dx(
            weight.into_primitive(),
            B::gemm_linear_grad_layout(dy.into_primitive()),
        ))
    }

    fn gemm_linear_weight_grad(x: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::from_inner(B::gemm_linear_dw(
            x.into_primitive(),
            B::gemm_linear_grad_layout(dy.into_primitive()),
        ))
    }

    fn gemm_linear_bias_grad(dy: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::from_inner(B::gemm_linear_db(B::gemm_linear_grad_layout(
            dy.into_primitive(),
        )))
    }
}

/// `x [.., d_in] · weight [d_in, d_out] + bias [d_out]`, with burn's gradients and kept
/// tensors but each product written once (see the module docs). On backends other than Flex
/// it is burn's `linear`.
pub fn gemm_linear<const D: usize>(x: Tensor<D>, weight: Tensor<2>, bias: Tensor<1>) -> Tensor<D> {
    if !on_flex(&x.device()) {
        return burn::tensor::module::linear(x, weight, Some(bias));
    }
    Tensor::from_dispatch(<Dispatch as GemmLinearBackend>::gemm_linear(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
    ))
}

/// The gradients of `y = x · weight + bias` given `dy`, computed outside autodiff: `dx`, and
/// when `weights` also `(dweight, dbias)`. Each product is written once, as in
/// [`gemm_linear`]'s backward; on backends other than Flex they are burn's products.
///
/// For a caller that back-propagates a linear layer without having run its forward: the
/// remat executor skips the last product of a block half whose output it does not need
/// ([`crate::model::Gpt::stage_split`]). All three tensors are taken without autodiff.
///
/// ```
/// use burn::tensor::{Device, Distribution, Tensor};
/// use memtrain::linear::{gemm_linear, linear_grads};
/// let device = Device::flex();
/// let x = Tensor::<3>::random([2, 5, 8], Distribution::Default, &device);
/// let w = Tensor::<2>::random([8, 4], Distribution::Default, &device);
/// let b = Tensor::<1>::zeros([4], &device);
/// let dy = Tensor::<3>::random([2, 5, 4], Distribution::Default, &device);
/// let (xa, wa) = (x.clone().autodiff().require_grad(), w.clone().autodiff().require_grad());
/// let grads = (gemm_linear(xa.clone(), wa.clone(), b.autodiff()) * dy.clone().autodiff()).sum().backward();
/// let (dx, weights) = linear_grads(x, w, dy, true);
/// assert!(dx.all_close(xa.grad(&grads).unwrap(), Some(1e-5), Some(1e-6)));
/// assert!(weights.unwrap().0.all_close(wa.grad(&grads).unwrap(), Some(1e-5), Some(1e-6)));
/// ```
pub fn linear_grads<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    dy: Tensor<D>,
    weights: bool,
) -> (Tensor<D>, Option<(Tensor<2>, Tensor<1>)>) {
    if !on_flex(&dy.device()) {
        let [d_in, d_out] = weight.dims();
        let rows = dy.shape().num_elements() / d_out.max(1);
        let dy2 = dy.clone().reshape([rows, d_out]);
        let grads = weights.then(|| {
            let dw = x.reshape([rows, d_in]).transpose().matmul(dy2.clone());
            (dw, dy2.sum_dim(0).reshape([d_out]))
        });
        return (dy.matmul(weight.transpose().unsqueeze()), grads);
    }
    let grads = weights.then(|| {
        let dw = Tensor::from_dispatch(<Dispatch as GemmLinearBackend>::gemm_linear_weight_grad(
            x.into_dispatch(),
            dy.clone().into_dispatch(),
        ));
        let db = Tensor::from_dispatch(<Dispatch as GemmLinearBackend>::gemm_linear_bias_grad(
            dy.clone().into_dispatch(),
        ));
        (dw, db)
    });
    let dx = Tensor::from_dispatch(<Dispatch as GemmLinearBackend>::gemm_linear_input_grad(
        weight.into_dispatch(),
        dy.into_dispatch(),
    ));
    (dx, grads)
}

//! The activation kernels on burn's Flex CPU backend: inverted and few-bit, forward and
//! backward, parallel over chunks of elements; the backwards scale the incoming gradient in
//! place when they hold its only reference.
//!
//! The kernels run in f32 (training) and in f64 (gradient checks: the same code paths, with
//! the inverted op's derivative still read from its f32 branch tables, and the few-bit op's
//! borders and levels in f64); other float types (f16, bf16) go through f32 and back.

use std::ops::MulAssign;

use burn::backend::ops::{FloatTensorOps, IntTensorOps};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Flex, TensorMetadata};
use burn::tensor::{DType, Element, TensorData};
use rayon::prelude::*;

use super::codes;
use super::few_bit::{FewBitActivationBackend, FewBitKernel, registered};
use super::function::ActFn;
use super::inverted::{InvertedActivationBackend, InvertedKernel};
use super::quantize::FewBitTable;

/// Elements per parallel task (a multiple of 8, so tasks own whole bytes of branch bits).
const TASK: usize = 1 << 15;

/// The element types the kernels run in natively: f32 and f64.
trait Real: Element + bytemuck::Pod + PartialOrd + MulAssign + Send + Sync {
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    /// `v[i] = f(v[i])`.
    fn apply_in_place(func: ActFn, v: &mut [Self]);
    /// `y[i] = f(x[i])`.
    fn apply(func: ActFn, x: &[Self], y: &mut [Self]);
    /// `g[i] *= f'(x)` recovered from the output `y[i]` and the branch bit `base + i` of
    /// `packed` (empty for a function without one).
    fn scale_by_derivative(func: ActFn, y: &[Self], packed: &[u8], base: usize, g: &mut [Self]);
}

/// f32 runs GELU in f32 ([`ActFn::apply_f32`]).
impl Real for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn apply_in_place(func: ActFn, v: &mut [Self]) {
        func.apply_f32_in_place(v);
    }
    fn apply(func: ActFn, x: &[Self], y: &mut [Self]) {
        func.apply_f32(x, y);
    }
    fn scale_by_derivative(func: ActFn, y: &[Self], packed: &[u8], base: usize, g: &mut [Self]) {
        func.scale_by_derivative(y, packed, base, g);
    }
}

/// f64 (the gradient checks) evaluates `f` exactly.
impl Real for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn apply_in_place(func: ActFn, v: &mut [Self]) {
        v.iter_mut().for_each(|v| *v = func.f(*v));
    }
    fn apply(func: ActFn, x: &[Self], y: &mut [Self]) {
        y.iter_mut().zip(x).for_each(|(y, &x)| *y = func.f(x));
    }
    /// The branch tables are f32: f64 outputs read the same tables.
    fn scale_by_derivative(func: ActFn, y: &[Self], packed: &[u8], base: usize, g: &mut [Self]) {
        for (i, (g, &y)) in g.iter_mut().zip(y).enumerate() {
            let left = !packed.is_empty() && codes::get(packed, base + i, 1) == 1;
            *g *= f64::from(func.derivative_from_output(y as f32, left));
        }
    }
}

fn slice_of<T: Real>(t: &FloatTensor<Flex>) -> &[T] {
    assert_eq!(
        t.dtype(),
        T::dtype(),
        "activation kernel in {:?}, got a {:?} tensor",
        T::dtype(),
        t.dtype()
    );
    t.as_slice::<T>().expect("made contiguous by the caller")
}

fn cast(t: FloatTensor<Flex>, dtype: DType) -> FloatTensor<Flex> {
    Flex::float_cast(t, dtype.into())
}

/// `dx[k] = dy[k] · d(k)` over the elements of `dy` in row-major order
/// ([`scale_gradient_by`] element by element).
fn scale_gradient<T: Real>(
    dy: FloatTensor<Flex>,
    d: impl Fn(usize) -> T + Sync,
) -> FloatTensor<Flex> {
    scale_gradient_by::<T>(dy, |base, g| {
        g.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v *= d(base + i))
    })
}

/// `scale(base, g)` over chunks of `dy`'s elements in row-major order, `base` the index of the
/// chunk's first element (a multiple of [`TASK`]), to multiply each by its derivative. Written
/// over `dy`'s own buffer when the backward pass holds its only reference (the gradient the next
/// layer's backward just produced), so an activation's backward allocates nothing; into a new
/// buffer otherwise.
fn scale_gradient_by<T: Real>(
    mut dy: FloatTensor<Flex>,
    scale: impl Fn(usize, &mut [T]) + Sync,
) -> FloatTensor<Flex> {
    if crate::flex_whole(&dy, T::dtype())
        && let Some(g) = dy.try_storage_mut::<T>()
    {
        g.par_chunks_mut(TASK)
            .enumerate()
            .for_each(|(task, g)| scale(task * TASK, g));
        return dy;
    }
    let dy = dy.to_contiguous();
    let (shape, device) = (dy.shape(), dy.device());
    let gs = slice_of::<T>(&dy);
    let mut dx = gs.to_vec();
    dx.par_chunks_mut(TASK)
        .enumerate()
        .for_each(|(task, dx)| scale(task * TASK, dx));
    Flex::float_from_data(TensorData::new(dx, shape), &device)
}

/// `f(x)` and the branch bits. The output is written over `x`'s own buffer when the op holds
/// its only reference (the product of the layer before, which nothing else keeps: in a
/// forward without autodiff, and under autodiff when the producer keeps only its input), so
/// the 4d-wide input and output of an MLP's activation never coexist; into a new buffer
/// otherwise. The bits are read from `x` first.
fn inverted_forward<T: Real>(
    x: FloatTensor<Flex>,
    func: ActFn,
) -> (FloatTensor<Flex>, Option<IntTensor<Flex>>) {
    let mut x = crate::flex_contiguous(x);
    let device = x.device();
    let x_min = func.argmin().map(T::from_f64);
    let n = x.shape().num_elements();
    // The bits of each chunk are read from `x` just before the chunk is overwritten.
    let mut packed = vec![0u8; x_min.map_or(0, |_| codes::packed_len(n, 1))];
    let finish = |packed: Vec<u8>| {
        x_min.map(|_| {
            let len = packed.len();
            Flex::int_from_data(TensorData::new(packed, [len]), &device)
        })
    };
    if crate::flex_whole(&x, T::dtype())
        && let Some(v) = x.try_storage_mut::<T>()
    {
        match x_min {
            Some(m) => v
                .par_chunks_mut(TASK)
                .zip(packed.par_chunks_mut(TASK / 8))
                .for_each(|(v, bits)| {
                    bits_into(v, m, bits);
                    T::apply_in_place(func, v);
                }),
            None => v
                .par_chunks_mut(TASK)
                .for_each(|v| T::apply_in_place(func, v)),
        }
        return (x, finish(packed));
    }
    let shape = x.shape();
    let xs = slice_of::<T>(&x);
    let mut y = vec![T::from_f64(0.0); xs.len()];
    match x_min {
        Some(m) => y
            .par_chunks_mut(TASK)
            .zip(xs.par_chunks(TASK))
            .zip(packed.par_chunks_mut(TASK / 8))
            .for_each(|((y, x), bits)| {
                bits_into(x, m, bits);
                T::apply(func, x, y);
            }),
        None => y
            .par_chunks_mut(TASK)
            .zip(xs.par_chunks(TASK))
            .for_each(|(y, x)| T::apply(func, x, y)),
    }
    (
        Flex::float_from_data(TensorData::new(y, shape), &device),
        finish(packed),
    )
}

/// Bit `j` of `out[i]` is `x[8 i + j] < x_min` (the branch bits, least significant first).
fn bits_into<T: Real>(x: &[T], x_min: T, out: &mut [u8]) {
    for (byte, x) in out.iter_mut().zip(x.chunks(8)) {
        *byte = x
            .iter()
            .enumerate()
            .fold(0u8, |b, (j, &v)| b | (u8::from(v < x_min) << j));
    }
}

fn inverted_backward<T: Real>(
    y: FloatTensor<Flex>,
    bits: Option<IntTensor<Flex>>,
    dy: FloatTensor<Flex>,
    func: ActFn,
) -> FloatTensor<Flex> {
    let y = y.to_contiguous();
    let ys = slice_of::<T>(&y);
    let packed: &[u8] = bits
        .as_ref()
        .map(|b| b.as_slice::<u8>().expect("contiguous bits"))
        .unwrap_or(&[]);
    scale_gradient_by::<T>(dy, |base, g| {
        T::scale_by_derivative(func, &ys[base..base + g.len()], packed, base, g)
    })
}

/// The forward with the table's inner `borders` in `T`.
fn few_bit_forward<T: Real>(
    x: FloatTensor<Flex>,
    func: ActFn,
    bits: u32,
    borders: &[T],
) -> (FloatTensor<Flex>, IntTensor<Flex>) {
    let x = x.to_contiguous();
    let (shape, device) = (x.shape(), x.device());
    let xs = slice_of::<T>(&x);
    let mut y = vec![T::from_f64(0.0); xs.len()];
    let mut packed = vec![0u8; codes::packed_len(xs.len(), bits)];
    // TASK · bits is a multiple of 8, so every task starts on a byte of the stream.
    let task_bytes = TASK * bits as usize / 8;
    y.par_chunks_mut(TASK)
        .zip(xs.par_chunks(TASK))
        .zip(packed.par_chunks_mut(task_bytes))
        .for_each(|((y, x), out)| {
            let mut c = [0u8; TASK];
            for (i, (y, &x)) in y.iter_mut().zip(x).enumerate() {
                *y = T::from_f64(func.f(x.to_f64()));
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

impl InvertedKernel for Flex {
    fn inverted_forward(
        x: FloatTensor<Self>,
        func: ActFn,
    ) -> (FloatTensor<Self>, Option<IntTensor<Self>>) {
        match x.dtype() {
            DType::F32 => inverted_forward::<f32>(x, func),
            DType::F64 => inverted_forward::<f64>(x, func),
            other => {
                let (y, bits) = inverted_forward::<f32>(cast(x, DType::F32), func);
                (cast(y, other), bits)
            }
        }
    }

    fn inverted_backward(
        y: FloatTensor<Self>,
        bits: Option<IntTensor<Self>>,
        dy: FloatTensor<Self>,
        func: ActFn,
    ) -> FloatTensor<Self> {
        match dy.dtype() {
            DType::F32 => inverted_backward::<f32>(y, bits, dy, func),
            DType::F64 => inverted_backward::<f64>(y, bits, dy, func),
            other => {
                let (y, dy) = (cast(y, DType::F32), cast(dy, DType::F32));
                cast(inverted_backward::<f32>(y, bits, dy, func), other)
            }
        }
    }
}

impl InvertedActivationBackend for Flex {
    fn inverted_bits(x: FloatTensor<Self>, func: u32) -> IntTensor<Self> {
        Self::inverted_forward(x, ActFn::ALL[func as usize].0)
            .1
            .expect("a function with branch bits")
    }

    fn inverted_activation(x: FloatTensor<Self>, func: u32) -> FloatTensor<Self> {
        Self::inverted_forward(x, ActFn::ALL[func as usize].0).0
    }
}

impl FewBitKernel for Flex {
    fn few_bit_forward(
        x: FloatTensor<Self>,
        table: &FewBitTable,
    ) -> (FloatTensor<Self>, IntTensor<Self>) {
        let (func, bits) = (table.func, table.bits);
        match x.dtype() {
            DType::F64 => {
                let inner = &table.borders[1..table.borders.len() - 1];
                few_bit_forward::<f64>(x, func, bits, inner)
            }
            DType::F32 => few_bit_forward::<f32>(x, func, bits, &table.f32_parts().0),
            other => {
                let x = cast(x, DType::F32);
                let (y, c) = few_bit_forward::<f32>(x, func, bits, &table.f32_parts().0);
                (cast(y, other), c)
            }
        }
    }

    fn few_bit_backward(
        codes_t: IntTensor<Self>,
        dy: FloatTensor<Self>,
        table: &FewBitTable,
    ) -> FloatTensor<Self> {
        let packed = codes_t.as_slice::<u8>().expect("contiguous codes");
        let bits = table.bits;
        match dy.dtype() {
            DType::F64 => {
                let levels = &table.levels;
                scale_gradient::<f64>(dy, |k| levels[codes::get(packed, k, bits) as usize])
            }
            dtype => {
                let (_, levels) = table.f32_parts();
                let dy = if dtype == DType::F32 {
                    dy
                } else {
                    cast(dy, DType::F32)
                };
                let dx =
                    scale_gradient::<f32>(dy, |k| levels[codes::get(packed, k, bits) as usize]);
                if dtype == DType::F32 {
                    dx
                } else {
                    cast(dx, dtype)
                }
            }
        }
    }
}

impl FewBitActivationBackend for Flex {
    fn few_bit_activation(x: FloatTensor<Self>, table: u32) -> FloatTensor<Self> {
        Self::few_bit_forward(x, &registered(table)).0
    }

    fn few_bit_codes(x: FloatTensor<Self>, table: u32) -> IntTensor<Self> {
        Self::few_bit_forward(x, &registered(table)).1
    }
}

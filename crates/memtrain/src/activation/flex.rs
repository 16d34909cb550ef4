//! The activation kernels on burn's Flex CPU backend: inverted and few-bit, forward and
//! backward, parallel over chunks of elements; the backwards scale the incoming gradient in
//! place when they hold its only reference.

use burn::backend::ops::{FloatTensorOps, IntTensorOps};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Flex, TensorMetadata};
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

use super::codes;
use super::few_bit::{FewBitActivationBackend, FewBitKernel, registered};
use super::function::ActFn;
use super::inverted::{InvertedActivationBackend, InvertedKernel};
use super::quantize::FewBitTable;

/// Elements per parallel task (a multiple of 8, so tasks own whole bytes of branch bits).
const TASK: usize = 1 << 15;

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
        func: ActFn,
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
        func: ActFn,
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

impl FewBitActivationBackend for Flex {
    fn few_bit_activation(x: FloatTensor<Self>, table: u32) -> FloatTensor<Self> {
        Self::few_bit_forward(x, &registered(table)).0
    }

    fn few_bit_codes(x: FloatTensor<Self>, table: u32) -> IntTensor<Self> {
        Self::few_bit_forward(x, &registered(table)).1
    }
}

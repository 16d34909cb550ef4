//! The activation kernels on burn's Cube backend (wgpu, cuda) in CubeCL: inverted and few-bit,
//! forward and backward. Codes are packed LSB first into `u32` words (wgpu has no 8-bit
//! integers), which is the same bit stream as Flex's bytes read as little-endian words: the
//! tests compare the two bit for bit. The backwards scale the incoming gradient in place when
//! they hold its only reference, as on Flex.

use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{DType, Shape, TensorMetadata};
use burn::tensor::TensorData;
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use cubecl::{CubeCount, CubeDim, calculate_cube_count_elemwise};

use super::branch::{CELLS, flat_table};
use super::few_bit::{FewBitActivationBackend, FewBitKernel, registered};
use super::function::ActFn;
use super::inverted::{InvertedActivationBackend, InvertedKernel};
use super::quantize::FewBitTable;

/// `sqrt(2 / pi)`, GELU's tanh approximation.
const GELU_TANH_C: f32 = 0.797_884_6;

#[cube]
fn sigmoid(x: f32) -> f32 {
    f32::new(1.0) / (f32::new(1.0) + f32::exp(-x))
}

#[cube]
fn softplus(x: f32) -> f32 {
    f32::max(x, f32::new(0.0)) + f32::log1p(f32::exp(-f32::abs(x)))
}

/// `f(x)` for the function whose index in [`ActFn::ALL`] is `func` (a comptime branch: each
/// function compiles to its own kernel).
#[cube]
fn act(x: f32, #[comptime] func: u32) -> f32 {
    let zero = f32::new(0.0);
    if func == 0 {
        // GELU, erf form.
        x * f32::new(0.5) * (f32::new(1.0) + Erf::erf(x * f32::new(0.707_106_77)))
    } else if func == 1 {
        let u = x + f32::new(0.044_715) * x * x * x;
        f32::new(0.5) * x * (f32::new(1.0) + f32::tanh(f32::new(GELU_TANH_C) * u))
    } else if func == 2 {
        x * sigmoid(x)
    } else if func == 3 {
        f32::tanh(x)
    } else if func == 4 {
        sigmoid(x)
    } else if func == 5 {
        softplus(x)
    } else if func == 6 {
        select(x > zero, x, f32::exp(x) - f32::new(1.0))
    } else if func == 7 {
        select(x > zero, x, x * f32::new(0.01))
    } else if func == 8 {
        f32::max(x, zero)
    } else {
        x * f32::tanh(softplus(x))
    }
}

/// `y = f(x)` and, with `with_bits`, one bit an element (`x < x_min`) packed 32 a word: one
/// unit a word.
#[cube(launch)]
fn inverted_forward_kernel(
    x: &Tensor<f32>,
    y: &mut Tensor<f32>,
    bits: &mut Tensor<u32>,
    x_min: f32,
    #[comptime] func: u32,
    #[comptime] with_bits: bool,
) {
    let word = ABSOLUTE_POS;
    let n = x.len();
    if word * 32 >= n {
        terminate!();
    }
    let base = word * 32;
    let mut acc = 0u32;
    for j in 0..32usize {
        let i = base + j;
        if i < n {
            let v = x[i];
            y[i] = act(v, func);
            if with_bits && v < x_min {
                acc |= 1u32 << (j as u32);
            }
        }
    }
    if with_bits {
        bits[word] = acc;
    }
}

/// The derivative recovered from the output (and the branch bit of element `i`).
#[cube]
fn derivative_from_output(
    yv: f32,
    bits: &Tensor<u32>,
    i: usize,
    cells: &Tensor<f32>,
    y_min: f32,
    s_left: f32,
    s_right: f32,
    #[comptime] func: u32,
) -> f32 {
    if func == 0 || func == 2 {
        // GELU, SiLU: the branch table in `s = sqrt(y - y_min)`; beyond the right side's end
        // the derivative is 1.
        let left = ((bits[i / 32] >> ((i % 32) as u32)) & 1u32) == 1u32;
        let s = f32::sqrt(f32::max(yv - y_min, f32::new(0.0)));
        let s_end = select(left, s_left, s_right);
        let offset = select(left, 0usize, CELLS * 4);
        let u = f32::min(s / s_end, f32::new(1.0)) * f32::new(CELLS as f32);
        let cell = usize::min(u32::cast_from(u) as usize, CELLS - 1);
        let t = u - f32::cast_from(cell);
        let at = offset + cell * 4;
        let d = ((cells[at] * t + cells[at + 1]) * t + cells[at + 2]) * t + cells[at + 3];
        select(left || s < s_right, d, f32::new(1.0))
    } else if func == 4 {
        yv * (f32::new(1.0) - yv)
    } else if func == 3 {
        f32::new(1.0) - yv * yv
    } else {
        // Softplus: 1 - e^{-y}.
        -(f32::exp(-yv) - f32::new(1.0))
    }
}

/// `dx = dy · f'(f⁻¹(y))`, into a new buffer.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn inverted_backward_kernel(
    y: &Tensor<f32>,
    bits: &Tensor<u32>,
    dy: &Tensor<f32>,
    dx: &mut Tensor<f32>,
    cells: &Tensor<f32>,
    y_min: f32,
    s_left: f32,
    s_right: f32,
    #[comptime] func: u32,
) {
    let i = ABSOLUTE_POS;
    if i >= dx.len() {
        terminate!();
    }
    let d = derivative_from_output(y[i], bits, i, cells, y_min, s_left, s_right, func);
    dx[i] = dy[i] * d;
}

/// The same, written over `dy`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn inverted_backward_in_place_kernel(
    y: &Tensor<f32>,
    bits: &Tensor<u32>,
    dy: &mut Tensor<f32>,
    cells: &Tensor<f32>,
    y_min: f32,
    s_left: f32,
    s_right: f32,
    #[comptime] func: u32,
) {
    let i = ABSOLUTE_POS;
    if i >= dy.len() {
        terminate!();
    }
    let d = derivative_from_output(y[i], bits, i, cells, y_min, s_left, s_right, func);
    dy[i] *= d;
}

/// `y = f(x)` and the `bits`-bit interval codes of `x` packed LSB first: one unit a word of the
/// code stream, computing the codes of every element whose bits touch it (an element that
/// straddles two words is coded twice) and writing `y` of the elements that start in it.
#[cube(launch)]
fn few_bit_forward_kernel(
    x: &Tensor<f32>,
    y: &mut Tensor<f32>,
    codes: &mut Tensor<u32>,
    borders: &Tensor<f32>,
    #[comptime] func: u32,
    #[comptime] bits: u32,
) {
    let word = ABSOLUTE_POS;
    if word >= codes.len() {
        terminate!();
    }
    let n = x.len();
    let b = bits as usize;
    let first = word * 32;
    let mut e = first / b;
    let mut acc = 0u32;
    while e < n && e * b < first + 32 {
        let v = x[e];
        let mut c = 0u32;
        for j in 0..borders.len() {
            if borders[j] <= v {
                c += 1u32;
            }
        }
        let start = e * b;
        if start >= first {
            acc |= c << ((start - first) as u32);
            y[e] = act(v, func);
        } else {
            acc |= c >> ((first - start) as u32);
        }
        e += 1;
    }
    codes[word] = acc;
}

/// The code of element `i` in a `bits`-bit stream.
#[cube]
fn code_at(codes: &Tensor<u32>, i: usize, #[comptime] bits: u32) -> u32 {
    let start = i * (bits as usize);
    let w = start / 32;
    let off = (start % 32) as u32;
    let mut c = codes[w] >> off;
    if off + bits > 32u32 {
        c |= codes[w + 1] << (32u32 - off);
    }
    c & ((1u32 << bits) - 1u32)
}

/// `dx = dy · levels[code]`, into a new buffer.
#[cube(launch)]
fn few_bit_backward_kernel(
    codes: &Tensor<u32>,
    dy: &Tensor<f32>,
    dx: &mut Tensor<f32>,
    levels: &Tensor<f32>,
    #[comptime] bits: u32,
) {
    let i = ABSOLUTE_POS;
    if i >= dx.len() {
        terminate!();
    }
    dx[i] = dy[i] * levels[code_at(codes, i, bits) as usize];
}

/// The same, written over `dy`.
#[cube(launch)]
fn few_bit_backward_in_place_kernel(
    codes: &Tensor<u32>,
    dy: &mut Tensor<f32>,
    levels: &Tensor<f32>,
    #[comptime] bits: u32,
) {
    let i = ABSOLUTE_POS;
    if i >= dy.len() {
        terminate!();
    }
    dy[i] *= levels[code_at(codes, i, bits) as usize];
}

/// Cubes and units for `units` independent units.
fn grid(client: &cubecl::client::Client, units: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(client, units.max(1));
    (
        calculate_cube_count_elemwise(client, units.max(1), dim),
        dim,
    )
}

/// A small f32 table on `like`'s device.
fn table_tensor(values: Vec<f32>, like: &CubeTensor) -> CubeTensor {
    let n = values.len().max(1);
    let mut values = values;
    values.resize(n, 0.0);
    CubeBackend::float_from_data(TensorData::new(values, [n]), &like.device)
}

fn check_f32(t: &CubeTensor) {
    assert_eq!(
        t.dtype,
        DType::F32,
        "memtrain's CubeCL activations run in f32, got {:?}",
        t.dtype
    );
}

/// The tensor to write a gradient into: `dy` itself when this op holds its only reference and
/// it is contiguous, else `None`.
fn reusable(dy: &CubeTensor) -> bool {
    dy.can_mut() && dy.is_contiguous()
}

impl InvertedKernel for CubeBackend {
    fn inverted_forward(
        x: FloatTensor<Self>,
        func: ActFn,
    ) -> (FloatTensor<Self>, Option<IntTensor<Self>>) {
        crate::memory::sample();
        check_f32(&x);
        let x = into_contiguous(x);
        let n = x.shape().num_elements();
        let (client, device) = (x.client.clone(), x.device.clone());
        let y =
            empty_device_contiguous_dtype(client.clone(), device.clone(), x.shape(), DType::F32);
        let with_bits = func.needs_bit();
        let words = if with_bits { n.div_ceil(32) } else { 1 };
        let bits =
            empty_device_contiguous_dtype(client.clone(), device, Shape::new([words]), DType::U32);
        let x_min = flat_table(func).map_or(0.0, |t| t.3);
        let (count, dim) = grid(&client, n.div_ceil(32));
        inverted_forward_kernel::launch(
            &client,
            count,
            dim,
            x.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            bits.clone().into_tensor_arg(),
            x_min,
            func.code(),
            with_bits,
        );
        crate::memory::sample();
        (y, with_bits.then_some(bits))
    }

    fn inverted_backward(
        y: FloatTensor<Self>,
        bits: Option<IntTensor<Self>>,
        dy: FloatTensor<Self>,
        func: ActFn,
    ) -> FloatTensor<Self> {
        crate::memory::sample();
        check_f32(&dy);
        let y = into_contiguous(y);
        let n = y.shape().num_elements();
        let (client, device) = (y.client.clone(), y.device.clone());
        let (y_min, s_left, s_right, _, cells) =
            flat_table(func).unwrap_or((0.0, 1.0, 1.0, 0.0, Vec::new()));
        let cells = table_tensor(cells, &y);
        let bits = bits.unwrap_or_else(|| {
            empty_device_contiguous_dtype(
                client.clone(),
                device.clone(),
                Shape::new([1]),
                DType::U32,
            )
        });
        let (count, dim) = grid(&client, n);
        if reusable(&dy) {
            inverted_backward_in_place_kernel::launch(
                &client,
                count,
                dim,
                y.into_tensor_arg(),
                bits.into_tensor_arg(),
                dy.clone().into_tensor_arg(),
                cells.into_tensor_arg(),
                y_min,
                s_left,
                s_right,
                func.code(),
            );
            return dy;
        }
        let dy = into_contiguous(dy);
        let dx = empty_device_contiguous_dtype(client.clone(), device, dy.shape(), DType::F32);
        inverted_backward_kernel::launch(
            &client,
            count,
            dim,
            y.into_tensor_arg(),
            bits.into_tensor_arg(),
            dy.into_tensor_arg(),
            dx.clone().into_tensor_arg(),
            cells.into_tensor_arg(),
            y_min,
            s_left,
            s_right,
            func.code(),
        );
        dx
    }
}

impl InvertedActivationBackend for CubeBackend {
    fn inverted_bits(x: FloatTensor<Self>, func: u32) -> IntTensor<Self> {
        Self::inverted_forward(x, ActFn::ALL[func as usize].0)
            .1
            .expect("a function with branch bits")
    }

    fn inverted_activation(x: FloatTensor<Self>, func: u32) -> FloatTensor<Self> {
        Self::inverted_forward(x, ActFn::ALL[func as usize].0).0
    }
}

impl FewBitKernel for CubeBackend {
    fn few_bit_forward(
        x: FloatTensor<Self>,
        table: &FewBitTable,
    ) -> (FloatTensor<Self>, IntTensor<Self>) {
        crate::memory::sample();
        check_f32(&x);
        let x = into_contiguous(x);
        let n = x.shape().num_elements();
        let (client, device) = (x.client.clone(), x.device.clone());
        let (borders, _) = table.f32_parts();
        let borders = table_tensor(borders, &x);
        let y =
            empty_device_contiguous_dtype(client.clone(), device.clone(), x.shape(), DType::F32);
        let words = (n * table.bits as usize).div_ceil(32).max(1);
        let codes =
            empty_device_contiguous_dtype(client.clone(), device, Shape::new([words]), DType::U32);
        let (count, dim) = grid(&client, words);
        few_bit_forward_kernel::launch(
            &client,
            count,
            dim,
            x.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            codes.clone().into_tensor_arg(),
            borders.into_tensor_arg(),
            table.func.code(),
            table.bits,
        );
        crate::memory::sample();
        (y, codes)
    }

    fn few_bit_backward(
        codes: IntTensor<Self>,
        dy: FloatTensor<Self>,
        table: &FewBitTable,
    ) -> FloatTensor<Self> {
        crate::memory::sample();
        check_f32(&dy);
        let n = dy.shape().num_elements();
        let client = dy.client.clone();
        let (_, levels) = table.f32_parts();
        let levels = table_tensor(levels, &dy);
        let (count, dim) = grid(&client, n);
        if reusable(&dy) {
            few_bit_backward_in_place_kernel::launch(
                &client,
                count,
                dim,
                codes.into_tensor_arg(),
                dy.clone().into_tensor_arg(),
                levels.into_tensor_arg(),
                table.bits,
            );
            return dy;
        }
        let dy = into_contiguous(dy);
        let dx = empty_device_contiguous_dtype(
            client.clone(),
            dy.device.clone(),
            dy.shape(),
            DType::F32,
        );
        few_bit_backward_kernel::launch(
            &client,
            count,
            dim,
            codes.into_tensor_arg(),
            dy.into_tensor_arg(),
            dx.clone().into_tensor_arg(),
            levels.into_tensor_arg(),
            table.bits,
        );
        dx
    }
}

impl FewBitActivationBackend for CubeBackend {
    fn few_bit_activation(x: FloatTensor<Self>, table: u32) -> FloatTensor<Self> {
        Self::few_bit_forward(x, &registered(table)).0
    }

    fn few_bit_codes(x: FloatTensor<Self>, table: u32) -> IntTensor<Self> {
        Self::few_bit_forward(x, &registered(table)).1
    }
}

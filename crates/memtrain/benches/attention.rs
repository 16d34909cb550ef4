//! Attention forward + backward, plain burn (matmul + softmax) against the fused op, at the
//! `small` geometry's heads (6 × 64). Run with `cargo bench -p memtrain --bench attention`;
//! the plain function is the baseline of each shape.

use burn::tensor::{Device, Distribution, Tensor};
use memtrain::attention::{AttentionParams, fused_attention, reference_attention};

fn main() {
    // As the `memtrain` binary: freed tensors stay in the process between iterations.
    memtrain::memory::keep_freed_memory();
    divan::main();
}

/// (batch, seq): seq 256 at the training batch, seq 1024 at the same token count / 2.
const SHAPES: &[(usize, usize)] = &[(8, 256), (2, 1024)];
const HEADS: usize = 6;
const D_HEAD: usize = 64;

type Attention =
    fn(Tensor<4>, Tensor<4>, Tensor<4>, Option<Tensor<2>>, AttentionParams) -> Tensor<4>;

fn forward_backward(bencher: divan::Bencher, (batch, seq): (usize, usize), f: Attention) {
    let device = Device::flex().autodiff();
    device.seed(0);
    let shape = [batch, seq, HEADS, D_HEAD];
    let [q, k, v] = [0, 1, 2]
        .map(|_| Tensor::<4>::random(shape, Distribution::Default, &device).require_grad());
    let w = Tensor::<4>::random(shape, Distribution::Default, &device);
    bencher.bench_local(|| {
        let o = f(
            q.clone(),
            k.clone(),
            v.clone(),
            None,
            AttentionParams::causal(),
        );
        (o * w.clone()).sum().backward()
    });
}

#[divan::bench(args = SHAPES, sample_count = 10)]
fn plain(bencher: divan::Bencher, shape: (usize, usize)) {
    forward_backward(bencher, shape, reference_attention);
}

#[divan::bench(args = SHAPES, sample_count = 10)]
fn fused(bencher: divan::Bencher, shape: (usize, usize)) {
    forward_backward(bencher, shape, fused_attention);
}

//! Forward + backward of the activation and norm savers against burn's ops, at the `small` MLP and
//! residual shapes (batch 8 × seq 256 rows). Run with `cargo bench -p memtrain --bench activation`.

use burn::nn::LayerNormConfig;
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Distribution, Tensor};
use memtrain::activation::{ActFn, FewBitConfig, InvertedConfig};
use memtrain::norm::OutputLayerNormConfig;

fn main() {
    // As the `memtrain` binary: freed tensors stay in the process between iterations.
    memtrain::memory::keep_freed_memory();
    divan::main();
}

const ROWS: usize = 2048;
const D_MODEL: usize = 384;

fn bench_op(bencher: divan::Bencher, width: usize, f: impl Fn(Tensor<2>) -> Tensor<2>) {
    let device = Device::flex().autodiff();
    device.seed(0);
    let x =
        Tensor::<2>::random([ROWS, width], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let w = Tensor::<2>::random([ROWS, width], Distribution::Default, &device);
    bencher.bench_local(|| (f(x.clone()) * w.clone()).sum().backward());
}

#[divan::bench(sample_count = 20)]
fn gelu_exact(bencher: divan::Bencher) {
    bench_op(bencher, 4 * D_MODEL, gelu);
}

#[divan::bench(sample_count = 20)]
fn gelu_inverted(bencher: divan::Bencher) {
    let act = InvertedConfig::new(ActFn::Gelu)
        .init()
        .expect("GELU inverts");
    bench_op(bencher, 4 * D_MODEL, |x| act.forward(x));
}

#[divan::bench(args = [1, 2, 3, 4], sample_count = 20)]
fn gelu_fewbit(bencher: divan::Bencher, bits: u32) {
    let act = FewBitConfig::new(ActFn::Gelu, bits)
        .init()
        .expect("1..=4 bits");
    bench_op(bencher, 4 * D_MODEL, |x| act.forward(x));
}

#[divan::bench(sample_count = 20)]
fn layernorm_exact(bencher: divan::Bencher) {
    let ln = LayerNormConfig::new(D_MODEL).init(&Device::flex().autodiff());
    bench_op(bencher, D_MODEL, |x| ln.forward(x));
}

#[divan::bench(sample_count = 20)]
fn layernorm_output(bencher: divan::Bencher) {
    let ln = OutputLayerNormConfig::new(D_MODEL)
        .init(&Device::flex().autodiff())
        .expect("a positive width");
    bench_op(bencher, D_MODEL, |x| ln.forward(x));
}

//! The t3f benchmark suite on CPU: TT-matrices of size 10^10 × 10^10 (d = 10, every mode 10)
//! at rank 10 for matvec (by a rank-10 TT vector), matmul, norm and rounding from rank 100 to
//! 10, and TT-SVD of a dense 10^4 tensor (10 × 10 × 10 × 10) to rank 10. Run with
//! `cargo bench -p memtrain --bench tt`.

use burn::tensor::{Device, Distribution, Tensor};
use memtrain::tt::{Truncation, TtMatrix, TtTensor, tt_svd};

fn main() {
    // As the `memtrain` binary: freed tensors stay in the process between iterations.
    memtrain::memory::keep_freed_memory();
    divan::main();
}

const MODES: [usize; 10] = [10; 10];

fn matrix(rank: usize) -> TtMatrix {
    let device = Device::flex();
    device.seed(0);
    TtMatrix::random(&MODES, &MODES, rank, 1.0, &device).expect("valid modes")
}

#[divan::bench(sample_count = 20)]
fn matvec(bencher: divan::Bencher) {
    let (m, x) = (
        matrix(10),
        TtTensor::random(&MODES, 10, &Device::flex()).expect("valid modes"),
    );
    bencher.bench_local(|| m.matvec(&x).expect("same modes"));
}

#[divan::bench(sample_count = 20)]
fn matmul(bencher: divan::Bencher) {
    let (a, b) = (matrix(10), matrix(10));
    bencher.bench_local(|| a.matmul(&b).expect("same modes"));
}

#[divan::bench(sample_count = 20)]
fn norm(bencher: divan::Bencher) {
    let a = matrix(10);
    bencher.bench_local(|| a.norm());
}

#[divan::bench(sample_count = 5)]
fn round_100_to_10(bencher: divan::Bencher) {
    let a = matrix(100);
    bencher.bench_local(|| a.round(Truncation::rank(10)).expect("valid truncation"));
}

#[divan::bench(sample_count = 20)]
fn tt_svd_10000_to_rank_10(bencher: divan::Bencher) {
    let device = Device::flex();
    device.seed(0);
    let a = Tensor::<4>::random([10, 10, 10, 10], Distribution::Normal(0.0, 1.0), &device);
    bencher.bench_local(|| tt_svd(a.clone(), Truncation::rank(10)).expect("valid truncation"));
}

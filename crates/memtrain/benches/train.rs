//! One training step of the reference GPT per policy; the plain policy is the baseline of the
//! group. Run with `cargo bench -p memtrain --bench train`.

use burn::tensor::Device;
use memtrain::data::{Dataset, Tokenizer, synthetic_corpus};
use memtrain::model::Preset;
use memtrain::policy::MemoryPolicy;
use memtrain::train::{TrainConfig, Trainer};

fn main() {
    // As the `memtrain` binary: freed tensors stay in the process between iterations.
    memtrain::memory::keep_freed_memory();
    divan::main();
}

/// Policies compared in this file; the first is the baseline.
const POLICIES: &[&str] = &["act=exact"];

#[divan::bench(args = POLICIES, sample_count = 20)]
fn tiny_step(bencher: divan::Bencher, spec: &str) {
    let device = Device::flex().autodiff();
    let mut config = TrainConfig::new(Preset::Tiny);
    config.policy = spec.parse::<MemoryPolicy>().expect("a valid SPEC");
    let data = Dataset::new(&synthetic_corpus(2000, 0), Tokenizer::Byte, config.seq).unwrap();
    let mut trainer = Trainer::new(config, &device).unwrap();
    let batch = trainer.next_batch(&data);
    trainer.step(&batch);
    bencher.bench_local(|| trainer.step(&batch));
}

//! The meter against the formulas. Every test here measures the whole process's heap, so they
//! take one lock and run one at a time.

use std::sync::Mutex;

use burn::tensor::{Device, Tensor};
use memtrain::data::{Dataset, Tokenizer, synthetic_corpus};
use memtrain::memory::{
    self, CountingAllocator, Region, adamw_state_bytes, param_bytes, plain_block_saved,
    plain_model_saved, total_bytes,
};
use memtrain::model::{GptConfig, Preset};
use memtrain::train::{TrainConfig, Trainer};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

static SERIAL: Mutex<()> = Mutex::new(());

/// Host bookkeeping the meter sees per parameter tensor besides its data (autodiff leaf node,
/// parameter id, optimizer map entry): measured at about 2.1 KiB, allowed 4 KiB.
const PER_TENSOR_SLACK: usize = 4096;

fn tensors_per_gpt(c: &GptConfig) -> usize {
    // wte, wpe, ln_f (2) + per block: 2 LayerNorms (4), 4 linears (8).
    4 + 12 * c.n_layers
}

#[test]
fn should_raise_live_bytes_by_the_size_of_a_new_tensor() {
    let _g = SERIAL.lock().unwrap();
    assert!(memory::is_installed());
    let device = Device::flex();
    let warm = Tensor::<2>::zeros([8, 8], &device);
    let region = Region::start();
    let t = Tensor::<2>::ones([256, 1024], &device);
    let grown = region.live();
    let expect = 256 * 1024 * 4;
    assert!(
        grown >= expect as i64 && grown <= expect as i64 + 1024,
        "allocating a 1 MiB f32 tensor raised live bytes by {grown}"
    );
    drop(t);
    assert!(
        region.live().abs() <= 1024,
        "dropping it left {} bytes",
        region.live()
    );
    assert!(region.peak() >= expect);
    drop(warm);
}

fn data_for(seq: usize) -> Dataset {
    Dataset::new(&synthetic_corpus(3000, 1), Tokenizer::Byte, seq).unwrap()
}

#[test]
fn should_match_param_and_adamw_formulas() {
    let _g = SERIAL.lock().unwrap();
    let device = Device::flex().autodiff();
    for (preset, batch, seq) in [(Preset::Tiny, 4, 32), (Preset::Small, 1, 16)] {
        let mut cfg = TrainConfig::new(preset);
        cfg.batch = batch;
        cfg.seq = seq;
        let model = cfg.model_config();
        let data = data_for(seq);
        let mut trainer = Trainer::new(cfg, &device).unwrap();
        let batch = trainer.next_batch(&data);
        let r = trainer.step(&batch).memory;
        let slack = PER_TENSOR_SLACK * tensors_per_gpt(&model);
        let (p, o) = (param_bytes(&model), adamw_state_bytes(model.param_count()));
        assert!(
            r.param_bytes as usize >= p && r.param_bytes as usize <= p + slack,
            "{preset}: params measured {} formula {p}",
            r.param_bytes
        );
        assert!(
            r.optimizer_bytes as usize >= o && r.optimizer_bytes as usize <= o + slack,
            "{preset}: AdamW state measured {} formula {o}",
            r.optimizer_bytes
        );
        // Gradients: one per parameter, freed graph; within the same slack either way.
        assert!(
            (r.grad_bytes as i64 - p as i64).unsigned_abs() as usize <= slack,
            "{preset}: gradients measured {} params {p}",
            r.grad_bytes
        );
    }
}

#[test]
fn should_match_the_plain_activation_estimate() {
    let _g = SERIAL.lock().unwrap();
    let device = Device::flex().autodiff();
    // Two geometries: tiny, and small's width with two blocks (quick, and d/h as in small).
    let mut wide = TrainConfig::new(Preset::Small);
    wide.batch = 2;
    wide.seq = 128;
    let mut tiny = TrainConfig::new(Preset::Tiny);
    tiny.batch = 8;
    for cfg in [tiny, wide] {
        let model = cfg.model_config();
        let expect = total_bytes(&plain_model_saved(&model, cfg.batch, cfg.seq)) as f64;
        let data = data_for(cfg.seq);
        let mut trainer = Trainer::new(cfg.clone(), &device).unwrap();
        let batch = trainer.next_batch(&data);
        trainer.step(&batch);
        let measured = trainer
            .step(&trainer.next_batch(&data))
            .memory
            .activation_bytes as f64;
        let err = (measured - expect).abs() / expect;
        assert!(
            err < 0.05,
            "{}: measured {measured} analytic {expect} ({:.2}% off)",
            cfg.preset,
            100.0 * err
        );
    }
}

#[test]
fn should_sum_the_block_formula() {
    // Golden value: 4 (18 b t d + 3 b h t^2 + b h t + 4 b t) at small, batch 8.
    let c = Preset::Small.config(256);
    let (b, t, d, h) = (8, 256, 384, 6);
    let golden = 4 * (18 * b * t * d + 3 * b * h * t * t + b * h * t + 4 * b * t);
    assert_eq!(total_bytes(&plain_block_saved(&c, b, t)), golden);
    assert_eq!(golden, 94_453_760);
}

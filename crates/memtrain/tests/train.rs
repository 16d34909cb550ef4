//! Training behaviour of the reference GPT: causality, learning, determinism.

use burn::tensor::{Device, Int, Tensor, TensorData};
use memtrain::data::{Dataset, Tokenizer, synthetic_corpus};
use memtrain::model::Preset;
use memtrain::policy::MemoryPolicy;
use memtrain::train::{TrainConfig, Trainer};

#[test]
fn should_not_let_a_future_token_change_past_logits() {
    let device = Device::flex();
    let gpt = (Preset::Tiny.config(256))
        .init(&MemoryPolicy::default(), &device)
        .unwrap();
    let a: Vec<i64> = (0..12).map(|i| (i * 17 % 256) as i64).collect();
    let mut b = a.clone();
    b[8] = 200;
    let run = |v: Vec<i64>| {
        gpt.forward(Tensor::<2, Int>::from_data(
            TensorData::new(v, [1, 12]),
            &device,
        ))
        .to_data()
        .iter::<f32>()
        .collect::<Vec<f32>>()
    };
    let (la, lb) = (run(a), run(b));
    let vocab = 256;
    for (i, (x, y)) in la.iter().zip(&lb).enumerate() {
        if i / vocab < 8 {
            assert!((x - y).abs() < 1e-5, "position {} changed", i / vocab);
        }
    }
    assert!(
        la[8 * vocab..]
            .iter()
            .zip(&lb[8 * vocab..])
            .any(|(x, y)| (x - y).abs() > 1e-4)
    );
}

#[test]
fn should_lower_validation_loss_on_the_builtin_corpus() {
    let device = Device::flex().autodiff();
    let mut config = TrainConfig::new(Preset::Tiny);
    config.batch = 8;
    config.seq = 32;
    let data = Dataset::new(&synthetic_corpus(5000, 0), Tokenizer::Byte, config.seq).unwrap();
    let mut trainer = Trainer::new(config, &device).unwrap();
    let before = trainer.evaluate(&data, 4);
    for _ in 0..150 {
        let batch = trainer.next_batch(&data);
        assert!(trainer.step(&batch).loss.is_finite());
    }
    let after = trainer.evaluate(&data, 4);
    // ln(256) = 5.55 at start; the digits and symbols of the corpus are a few dozen bytes.
    assert!(before > 5.0, "initial loss {before}");
    assert!(after < before - 2.0, "validation loss {before} -> {after}");
}

#[test]
fn should_train_identically_from_the_same_seed() {
    let device = Device::flex().autodiff();
    let mut config = TrainConfig::new(Preset::Tiny);
    config.batch = 2;
    config.seq = 16;
    let data = Dataset::new(&synthetic_corpus(500, 0), Tokenizer::Byte, config.seq).unwrap();
    let losses = |c: TrainConfig| {
        let mut t = Trainer::new(c, &device).unwrap();
        // Bit patterns: the property is bitwise reproducibility.
        (0..5)
            .map(|_| t.step(&t.next_batch(&data)).loss.to_bits())
            .collect::<Vec<u32>>()
    };
    let (a, b) = (losses(config.clone()), losses(config.clone()));
    assert_eq!(a, b);
    config.seed += 1;
    assert_ne!(a, losses(config));
}

#[test]
fn should_start_every_policy_from_the_same_weights() {
    // Same seed, same weights, whatever the layers keep: the first loss agrees to round-off
    // (the fused and sketched forwards multiply in another order).
    let device = Device::flex().autodiff();
    let mut config = TrainConfig::new(Preset::Tiny);
    config.batch = 2;
    config.seq = 16;
    let data = Dataset::new(&synthetic_corpus(500, 0), Tokenizer::Byte, config.seq).unwrap();
    let first_loss = |spec: &str| {
        let mut c = config.clone();
        c.policy = spec.parse().unwrap();
        let mut t = Trainer::new(c, &device).unwrap();
        let batch = t.next_batch(&data);
        t.step(&batch).loss
    };
    let exact = first_loss("");
    for spec in [
        "linear=sketch:0.25",
        "linear=sketch:0.5:mlp:gaussian",
        "act=inverted,norm=output,attn=memeff",
        "act=fewbit:2",
    ] {
        let l = first_loss(spec);
        assert!(
            (l - exact).abs() < 1e-5,
            "{spec}: first loss {l}, exact {exact}"
        );
    }
}

/// A planner's schedule runs as given: the trainer executes it instead of solving its own,
/// its peak is the schedule's simulated one, and a plan for another model is refused.
#[test]
fn should_run_a_given_remat_plan_and_refuse_a_mismatched_one() {
    use memtrain::remat::{plan_for, profile};
    let device = Device::flex().autodiff();
    let mut config = TrainConfig::new(Preset::Tiny);
    config.batch = 4;
    config.seq = 32;
    config.policy = "remat=budget:1GiB".parse().unwrap();
    let data = Dataset::new(&synthetic_corpus(300, 1), Tokenizer::Byte, config.seq).unwrap();
    let mut trainer = Trainer::new(config.clone(), &device).unwrap();
    let batch = trainer.next_batch(&data);
    // Every second block input kept: not what a 1 GiB budget would choose (keep everything).
    let chain = profile(trainer.model(), &batch, 1);
    let every = plan_for(chain.clone(), memtrain::policy::RematPolicy::Every(1)).unwrap();
    let wanted = every.schedule.to_string();
    trainer.use_remat_plan(every).unwrap();
    trainer.step(&batch);
    assert_eq!(
        trainer.remat_plan().unwrap().schedule.to_string(),
        wanted,
        "the trainer replaced the given schedule"
    );
    // A chain of another length (a model with one block more) is refused.
    let mut longer = chain.clone();
    longer.insert(0, chain[0].clone());
    longer.insert(0, chain[1].clone());
    let other = plan_for(longer, memtrain::policy::RematPolicy::None).unwrap();
    let err = trainer.use_remat_plan(other).unwrap_err().to_string();
    assert!(err.contains("stages"), "{err}");
    // So is any plan when the policy asks for no rematerialization.
    config.policy = MemoryPolicy::default();
    let mut plain = Trainer::new(config, &device).unwrap();
    let keep = plan_for(chain, memtrain::policy::RematPolicy::None).unwrap();
    let err = plain.use_remat_plan(keep).unwrap_err().to_string();
    assert!(err.contains("remat"), "{err}");
}

fn tiny_trainer() -> (Trainer, Dataset) {
    let mut config = TrainConfig::new(Preset::Tiny);
    config.batch = 2;
    config.seq = 16;
    let data = Dataset::new(&synthetic_corpus(2000, 1), Tokenizer::Byte, 16).unwrap();
    (
        Trainer::new(config, &Device::flex().autodiff()).unwrap(),
        data,
    )
}

fn latest_dir(out: &std::path::Path) -> std::path::PathBuf {
    let name = std::fs::read_to_string(out.join(memtrain::train::LATEST)).unwrap();
    out.join(name.trim())
}

fn dirs(out: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    names.sort();
    names
}

/// Was: a second save of the same step deleted the directory `latest` named before renaming
/// the new one in (a kill between the two left `latest` naming nothing); and pruning sorted
/// by name and kept two, deleting the checkpoint it had just written when older runs' higher
/// steps were in the directory.
#[test]
fn should_never_remove_the_checkpoint_latest_names() {
    let out = std::env::temp_dir().join(format!("memtrain-latest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let (mut trainer, data) = tiny_trainer();
    let source = memtrain::data::DataSource::Builtin;
    let batch = trainer.next_batch(&data);
    trainer.step(&batch);
    let first = trainer.save_checkpoint(&out, &source, 2).unwrap();
    let first_model = std::fs::read(first.join("model.safetensors")).unwrap();
    // The same step again: a new directory; the first is never replaced in place.
    let again = trainer.save_checkpoint(&out, &source, 2).unwrap();
    assert_ne!(first, again);
    assert_eq!(latest_dir(&out), again);
    assert_eq!(
        std::fs::read(first.join("model.safetensors")).unwrap(),
        first_model
    );
    assert_eq!(dirs(&out), ["step-000001", "step-000001.1"]);
    // Another run's later checkpoints in the same directory: the new one is still kept.
    for stale in ["step-000080", "step-000100"] {
        std::fs::create_dir_all(out.join(stale)).unwrap();
    }
    let batch = trainer.next_batch(&data);
    trainer.step(&batch);
    let new = trainer.save_checkpoint(&out, &source, 2).unwrap();
    assert_eq!(latest_dir(&out), new);
    assert!(new.join("state.json").is_file());
    assert_eq!(dirs(&out), ["step-000002", "step-000100"]);
    // keep 1: only what latest names.
    trainer.save_checkpoint(&out, &source, 1).unwrap();
    assert_eq!(dirs(&out), ["step-000002.1"]);
    assert!(trainer.save_checkpoint(&out, &source, 0).is_err());
    let (resumed, state) = Trainer::resume(&out, &Device::flex().autodiff()).unwrap();
    assert_eq!((resumed.step_count(), state.step), (2, 2));
    std::fs::remove_dir_all(&out).unwrap();
}

/// Was: a NaN loss went into the update (and GaLore's projector refresh panicked on it).
#[test]
fn should_refuse_to_apply_a_step_whose_loss_is_not_finite() {
    for spec in ["", "optim=galore:4:1"] {
        let mut config = TrainConfig::new(Preset::Tiny);
        config.batch = 2;
        config.seq = 16;
        config.lr = 1e30;
        config.warmup = 0;
        config.policy = spec.parse().unwrap();
        let data = Dataset::new(&synthetic_corpus(2000, 1), Tokenizer::Byte, 16).unwrap();
        let mut trainer = Trainer::new(config, &Device::flex().autodiff()).unwrap();
        let mut diverged = None;
        for _ in 0..6 {
            let batch = trainer.next_batch(&data);
            match trainer.try_step(&batch) {
                Ok(stats) => assert!(stats.loss.is_finite()),
                Err(e) => {
                    diverged = Some(e);
                    break;
                }
            }
        }
        let e = diverged.unwrap_or_else(|| panic!("{spec:?}: lr 1e30 did not diverge"));
        let step = trainer.step_count();
        assert!(
            matches!(e, memtrain::Error::Diverged { step: s, .. } if s == step + 1),
            "{spec:?}: {e}"
        );
        // The failed step was not applied: the count stays, and it fails the same way again.
        let batch = trainer.next_batch(&data);
        assert!(trainer.try_step(&batch).is_err());
        assert_eq!(trainer.step_count(), step);
    }
}

#[test]
fn should_train_in_bf16_close_to_fp32() {
    let data = Dataset::new(&synthetic_corpus(4000, 1), Tokenizer::Byte, 32).unwrap();
    let run = |spec: &str| {
        let mut config = TrainConfig::new(Preset::Tiny);
        config.batch = 4;
        config.seq = 32;
        config.policy = spec.parse().unwrap();
        let mut trainer = Trainer::new(config, &Device::flex().autodiff()).unwrap();
        let losses: Vec<f32> = (0..20)
            .map(|_| {
                let batch = trainer.next_batch(&data);
                trainer.step(&batch).loss
            })
            .collect();
        (losses, trainer.evaluate(&data, 2))
    };
    let (fp32, fp32_valid) = run("linear=gemm");
    let (bf16, bf16_valid) = run("linear=gemm,precision=bf16");
    assert!(
        !memtrain::linear::bf16_products(),
        "the step's scope is closed"
    );
    // Same start, same batches: the first loss differs only by the products' rounding.
    assert!(
        (fp32[0] - bf16[0]).abs() < 1e-2 * fp32[0],
        "{fp32:?} {bf16:?}"
    );
    assert!(bf16[19] < bf16[0] - 0.3, "bf16 learns: {bf16:?}");
    assert!(
        (fp32_valid - bf16_valid).abs() < 0.03 * fp32_valid,
        "validation {fp32_valid} against {bf16_valid}"
    );
    if memtrain::linear::bf16::is_available() {
        assert_ne!(fp32, bf16, "bf16 products change the losses' last digits");
    }
}

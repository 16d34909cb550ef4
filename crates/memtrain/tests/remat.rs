//! Rematerialization: gradients under any schedule (sliced stages included) equal plain
//! autodiff's; per-stage updates equal one ordinary step; the dynamic program equals brute
//! force over every schedule; infeasible budgets name the smallest feasible one.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use memtrain::adapter::{AdapterConfig, Targets};
use memtrain::data::{Dataset, Tokenizer, synthetic_corpus};
use memtrain::model::{Gpt, Preset};
use memtrain::policy::MemoryPolicy;
use memtrain::remat::{
    Schedule, SlicedCost, StageCost, all_schedules, all_schedules_with, median_profile, optimal,
    simulate, step,
};
use memtrain::train::{TrainConfig, Trainer};
use proptest::prelude::*;

/// Largest |a - b| / (1 + |b|) over every parameter gradient.
fn max_diff(model: &Gpt, a: &GradientsParams, b: &GradientsParams) -> f32 {
    struct Cmp<'a> {
        a: &'a GradientsParams,
        b: &'a GradientsParams,
        worst: f32,
        count: usize,
    }
    impl ModuleVisitor for Cmp<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let Some(gb) = self.b.get::<D>(param.id) else {
                // Frozen (under adapters): no gradient either way.
                assert!(
                    self.a.get::<D>(param.id).is_none(),
                    "a frozen parameter's gradient"
                );
                return;
            };
            let ga = self.a.get::<D>(param.id).expect("gradient under remat");
            let scale = gb.clone().abs().max().into_scalar::<f32>();
            let d = (ga - gb).abs().max().into_scalar::<f32>() / (1e-3 + scale);
            self.worst = self.worst.max(d);
            self.count += 1;
        }
    }
    let mut cmp = Cmp {
        a,
        b,
        worst: 0.0,
        count: 0,
    };
    model.visit(&mut cmp);
    assert!(cmp.count > 0, "no gradient compared");
    cmp.worst
}

#[test]
fn should_give_plain_gradients_under_every_schedule() {
    let device = Device::flex().autodiff();
    for spec in ["", "act=inverted,norm=output,attn=memeff,weights=ttm:4"] {
        let policy: MemoryPolicy = spec.parse().unwrap();
        let mut config = Preset::Tiny.config(256);
        config.n_layers = 2;
        let model = (config).init_seeded(&policy, &device, 7).unwrap();
        let data = Dataset::new(&synthetic_corpus(300, 1), Tokenizer::Byte, 32).unwrap();
        let batch = data.train_batch(3, 0, 4, 32, &device);
        let loss = model.loss(batch.inputs.clone(), batch.targets.clone());
        let want_loss = loss.clone().into_scalar::<f32>();
        let plain = GradientsParams::from_grads(loss.backward(), &model);
        // Every schedule of the 2 blocks' 4 halves and the head, each half also run back to
        // back whole and in slices (batch 4 in 3 slices: two of 2 sequences).
        let unsliced = all_schedules(0, 4);
        let schedules = all_schedules_with(0, 4, &|i| if i < 4 { vec![1, 3] } else { vec![] });
        assert!(unsliced.len() > 20, "{}", unsliced.len());
        assert!(schedules.len() > 3 * unsliced.len(), "{}", schedules.len());
        assert!(schedules.iter().any(|s| s.sliced_stages() == 4));
        for s in &schedules {
            let (grads, stats) = step(&model, &batch, s);
            assert_eq!(stats.loss, want_loss, "{spec} {s}");
            let d = max_diff(&model, &grads, &plain);
            assert!(d < 1e-5, "{spec} schedule {s}: gradients differ by {d}");
        }
    }
}

fn chain_strategy() -> impl Strategy<Value = Vec<StageCost>> {
    prop::collection::vec(
        (
            1usize..8,
            1usize..6,
            1usize..20,
            0usize..10,
            1usize..10,
            0usize..12,
            (
                0usize..6,
                prop::collection::vec((1usize..30, 1usize..12), 0..4),
            ),
        ),
        2..6,
    )
    .prop_map(|v| {
        v.into_iter()
            .map(
                |(f, b, kept, bp, out, transient, (grad, sliced))| StageCost {
                    forward: f as f64,
                    backward: b as f64 + 0.5,
                    output: out,
                    kept: kept + out,
                    keep_peak: kept + out + transient,
                    backward_peak: bp + out,
                    forward_peak: out + bp / 2,
                    grad,
                    sliced: sliced
                        .into_iter()
                        .zip([1, 2, 4])
                        .map(|((time, peak), slices)| SlicedCost {
                            slices,
                            time: time as f64 * 0.5,
                            peak: peak + out,
                        })
                        .collect(),
                },
            )
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn should_match_brute_force(chain in chain_strategy(), budget_frac in 0.0f64..1.0, base in 1usize..10) {
        let n = chain.len();
        let (keep_peak, _) = simulate(&chain, &Schedule::keep_all(0, n - 1), base);
        let budget = base + ((keep_peak - base) as f64 * budget_frac) as usize;
        // Brute force: every schedule, simulated event by event.
        let best = all_schedules_with(0, n - 1, &|i| chain[i].sliced.iter().map(|c| c.slices).collect())
            .into_iter()
            .map(|s| simulate(&chain, &s, base))
            .filter(|(peak, _)| *peak <= budget)
            .map(|(_, time)| time)
            .fold(f64::INFINITY, f64::min);
        match optimal(&chain, base, budget, 1) {
            Ok(s) => {
                let (peak, time) = simulate(&chain, &s, base);
                prop_assert!(peak <= budget, "DP schedule {} peaks at {} > {}", s, peak, budget);
                prop_assert!((time - best).abs() < 1e-9, "DP {} vs brute force {}", time, best);
            }
            Err(e) => {
                prop_assert!(best.is_infinite(), "DP found nothing, brute force {}: {}", best, e);
            }
        }
    }
}

/// Profiles taken in rounds combine time by time: each forward, backward and sliced time is
/// its median over the rounds (one slow round moves none of them), sizes are the last round's.
#[test]
fn should_take_the_median_of_every_time_across_profile_rounds() {
    let round = |t: f64, kept: usize| {
        vec![StageCost {
            forward: t,
            backward: 2.0 * t,
            output: 1,
            kept,
            keep_peak: kept,
            backward_peak: 1,
            forward_peak: 1,
            grad: 0,
            sliced: vec![
                SlicedCost {
                    slices: 1,
                    time: 3.0 * t,
                    peak: 2,
                },
                SlicedCost {
                    slices: 2,
                    time: 4.0 * t,
                    peak: 2,
                },
            ],
        }]
    };
    let chain = median_profile(&[round(1.0, 5), round(9.0, 6), round(2.0, 7)]);
    let c = &chain[0];
    assert_eq!((c.forward, c.backward), (2.0, 4.0));
    assert_eq!((c.sliced[0].time, c.sliced[1].time), (6.0, 8.0));
    assert_eq!(c.kept, 7, "sizes come from the last round");
}

#[test]
fn should_name_the_smallest_feasible_budget() {
    let stage = StageCost {
        forward: 1.0,
        backward: 2.0,
        output: 100,
        kept: 400,
        keep_peak: 400,
        backward_peak: 300,
        forward_peak: 200,
        grad: 0,
        sliced: vec![],
    };
    let chain = vec![stage; 5];
    let e = optimal(&chain, 100, 500, 1).unwrap_err().to_string();
    assert!(e.contains("500 bytes") && e.contains("at least"), "{e}");
    let smallest: usize = e
        .split("at least ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("a number in the message");
    assert!(optimal(&chain, 100, smallest, 1).is_ok());
    assert!(optimal(&chain, 100, smallest - 1, 1).is_err());
    // Keep-every-K is a valid schedule of the right span with K - 1 stages recomputed per
    // segment.
    let every = Schedule::every(2, 0, 4);
    assert_eq!(every.span(), (0, 4));
    assert_eq!(every.recomputed_forwards(), 4);
}

/// Every parameter of `model`, flattened in visiting order.
fn params_of(model: &Gpt) -> Vec<Vec<f32>> {
    struct Collect(Vec<Vec<f32>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(
                param
                    .val()
                    .into_data()
                    .try_to_vec::<f32>()
                    .expect("f32 parameters"),
            );
        }
    }
    let mut c = Collect(Vec::new());
    model.visit(&mut c);
    c.0
}

/// Per-stage updates give the parameters and losses of ordinary steps, for every optimizer,
/// with and without a remat schedule (sliced stages included), over three steps.
#[test]
fn should_update_per_stage_as_one_step() {
    let device = Device::flex().autodiff();
    let data = Dataset::new(&synthetic_corpus(400, 3), Tokenizer::Byte, 32).unwrap();
    for spec in [
        "optim=adamw",
        "optim=naggs",
        "optim=galore:4:2",
        "act=inverted,norm=output,attn=memeff,remat=every:1",
        "adapt=lora:4",
    ] {
        let run = |update: &str| {
            let mut cfg = TrainConfig::new(Preset::Tiny);
            cfg.batch = 4;
            cfg.seq = 32;
            cfg.policy = format!("{spec},update={update}").parse().unwrap();
            let mut trainer = Trainer::new(cfg, &device).unwrap();
            let init = params_of(trainer.model());
            let mut losses = Vec::new();
            for _ in 0..3 {
                let batch = trainer.next_batch(&data);
                losses.push(trainer.step(&batch).loss);
            }
            (init, params_of(trainer.model()), losses)
        };
        let (init, want, want_losses) = run("step");
        let (_, got, got_losses) = run("per-stage");
        assert!(
            want.iter().zip(&init).any(|(a, b)| a != b),
            "{spec}: nothing trained"
        );
        assert_eq!(got_losses[0], want_losses[0], "{spec}: first loss");
        for (a, b) in got_losses.iter().zip(&want_losses) {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs(),
                "{spec}: losses {got_losses:?} vs {want_losses:?}"
            );
        }
        assert_eq!(got.len(), want.len());
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                    "{spec}: parameter {i} differs: {x} vs {y}"
                );
            }
        }
    }
}

/// Stages `0..head` (block halves) each run in `slices` slices behind a checkpoint, then the
/// head (stage `head`) kept.
fn all_sliced(head: usize, slices: usize) -> Schedule {
    let mut schedule = Schedule::Keep {
        stage: head,
        rest: None,
    };
    for stage in (0..head).rev() {
        schedule = Schedule::Checkpoint {
            split: stage + 1,
            right: Box::new(schedule),
            left: Box::new(Schedule::Sliced { stage, slices }),
        };
    }
    schedule
}

/// A half run back to back skips its last product where that is a dense layer without an
/// adapter, and back-propagates it by hand: the gradients are plain autodiff's, for burn's
/// and the gemm linear, and with the skipped layer frozen (LoRA on the other linears).
#[test]
fn should_back_propagate_skipped_products_exactly() {
    let device = Device::flex().autodiff();
    let lora = AdapterConfig::lora(2)
        .with_targets(Targets::Regex(r"block\.\d+\.(attn\.qkv|mlp\.fc)".into()));
    for (spec, adapters) in [
        ("", None),
        ("linear=gemm", None),
        ("act=inverted,norm=output", Some(&lora)),
    ] {
        let policy: MemoryPolicy = spec.parse().unwrap();
        let mut config = Preset::Tiny.config(256);
        config.n_layers = 2;
        let mut model = config.init_seeded(&policy, &device, 11).unwrap();
        if let Some(a) = adapters {
            model = model.with_adapters(a).unwrap();
        }
        let data = Dataset::new(&synthetic_corpus(300, 4), Tokenizer::Byte, 32).unwrap();
        let batch = data.train_batch(2, 0, 4, 32, &device);
        let x = model.embed(batch.inputs.clone());
        for stage in 0..4 {
            let split = model.stage_split(stage, x.clone());
            assert!(
                split.is_some(),
                "{spec}: stage {stage} has a dense last linear"
            );
        }
        let loss = model.loss(batch.inputs.clone(), batch.targets.clone());
        let want_loss = loss.clone().into_scalar::<f32>();
        let plain = GradientsParams::from_grads(loss.backward(), &model);
        for slices in [1, 2] {
            let (grads, stats) = step(&model, &batch, &all_sliced(4, slices));
            assert_eq!(stats.loss, want_loss, "{spec}");
            let d = max_diff(&model, &grads, &plain);
            assert!(d < 1e-5, "{spec}, {slices} slices: gradients differ by {d}");
        }
    }
    // Not a dense last linear: the half runs whole.
    let policy: MemoryPolicy = "weights=ttm:4".parse().unwrap();
    let config = Preset::Tiny.config(256);
    let model = config.init_seeded(&policy, &device, 11).unwrap();
    let x = Tensor::<3>::zeros([1, 4, config.d_model], &device);
    assert!(model.stage_split(1, x).is_none());
}

/// A sliced schedule whose slices run with per-stage updates, against the executor's own
/// ordinary step: the same loss and gradients.
#[test]
fn should_slice_every_half_block_exactly() {
    let device = Device::flex().autodiff();
    let policy: MemoryPolicy = "act=inverted,norm=output,attn=memeff,linear=gemm"
        .parse()
        .unwrap();
    let mut config = Preset::Tiny.config(256);
    config.n_layers = 2;
    let model = config.init_seeded(&policy, &device, 5).unwrap();
    let data = Dataset::new(&synthetic_corpus(300, 2), Tokenizer::Byte, 32).unwrap();
    let batch = data.train_batch(1, 0, 5, 32, &device);
    let loss = model.loss(batch.inputs.clone(), batch.targets.clone());
    let want_loss = loss.clone().into_scalar::<f32>();
    let plain = GradientsParams::from_grads(loss.backward(), &model);
    // Keep the head, slice every half (5 sequences in slices of 1, 2 and 5).
    for slices in [5, 3, 1] {
        let schedule = all_sliced(4, slices);
        assert_eq!(schedule.sliced_stages(), 4);
        let (grads, stats) = step(&model, &batch, &schedule);
        assert_eq!(stats.loss, want_loss);
        let d = max_diff(&model, &grads, &plain);
        assert!(d < 1e-5, "{slices} slices: gradients differ by {d}");
    }
}

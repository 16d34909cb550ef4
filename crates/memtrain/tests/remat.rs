//! Rematerialization: gradients under any schedule (sliced stages included) equal plain
//! autodiff's; per-stage updates equal one ordinary step; the dynamic program equals brute
//! force over every schedule; infeasible budgets name the smallest feasible one.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use memtrain::data::{Dataset, Tokenizer, synthetic_corpus};
use memtrain::model::{Gpt, Preset};
use memtrain::policy::MemoryPolicy;
use memtrain::remat::{
    Schedule, SlicedCost, StageCost, all_schedules, all_schedules_with, optimal, simulate, step,
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
            let ga = self.a.get::<D>(param.id).expect("gradient under remat");
            let gb = self.b.get::<D>(param.id).expect("plain gradient");
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
    assert_eq!(cmp.count, 4 + 12 * model.blocks().len());
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
        // Every schedule of the 2 blocks' 4 halves and the head, each half also run in
        // slices (batch 4 in 3 slices: two of 2 sequences).
        let unsliced = all_schedules(0, 4);
        let schedules = all_schedules_with(0, 4, &|i| (i < 4).then_some(3));
        assert!(unsliced.len() > 20, "{}", unsliced.len());
        assert!(schedules.len() > 2 * unsliced.len(), "{}", schedules.len());
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
            (0usize..6, prop::option::of((1usize..30, 1usize..12))),
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
                    sliced: sliced.map(|(time, peak)| SlicedCost {
                        slices: 4,
                        time: time as f64 * 0.5,
                        peak: peak + out,
                    }),
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
        let best = all_schedules_with(0, n - 1, &|i| chain[i].sliced.map(|c| c.slices))
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
        sliced: None,
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
        let mut schedule = Schedule::Keep {
            stage: 4,
            rest: None,
        };
        for stage in (0..4).rev() {
            schedule = Schedule::Checkpoint {
                split: stage + 1,
                right: Box::new(schedule),
                left: Box::new(Schedule::Sliced { stage, slices }),
            };
        }
        assert_eq!(schedule.sliced_stages(), 4);
        let (grads, stats) = step(&model, &batch, &schedule);
        assert_eq!(stats.loss, want_loss);
        let d = max_diff(&model, &grads, &plain);
        assert!(d < 1e-5, "{slices} slices: gradients differ by {d}");
    }
}

//! Rematerialization: gradients under any schedule equal plain autodiff's; the dynamic
//! program equals brute force over every schedule; infeasible budgets name the smallest
//! feasible one.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use memtrain::data::{Dataset, Tokenizer, synthetic_corpus};
use memtrain::model::{Gpt, Preset};
use memtrain::policy::MemoryPolicy;
use memtrain::remat::{Schedule, StageCost, all_schedules, optimal, simulate, step};
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
        // Every schedule of the 2 blocks' 4 halves and the head.
        let schedules = all_schedules(0, 4);
        assert!(schedules.len() > 20, "{}", schedules.len());
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
        ),
        2..6,
    )
    .prop_map(|v| {
        v.into_iter()
            .map(|(f, b, kept, bp, out, transient)| StageCost {
                forward: f as f64,
                backward: b as f64 + 0.5,
                output: out,
                kept: kept + out,
                keep_peak: kept + out + transient,
                backward_peak: bp + out,
                forward_peak: out + bp / 2,
            })
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
        let best = all_schedules(0, n - 1)
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

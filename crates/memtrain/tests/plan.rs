//! The planner's solver on synthetic variants: never slower than the best uniform policy,
//! mixes variants when that is faster, and names the smallest budget when nothing fits.

use memtrain::plan::{Variant, solve};
use memtrain::policy::{ActPolicy, AttnPolicy, BlockPolicy};
use memtrain::remat::StageCost;
use proptest::prelude::*;

/// Sizes in units of 64 KiB (the planner discretises memory in quanta of at least 4 KiB).
const U: usize = 1 << 16;

fn stage(forward: f64, kept: usize, backward_peak: usize) -> StageCost {
    StageCost {
        forward,
        backward: 2.0 * forward,
        output: 10 * U,
        kept: kept * U,
        keep_peak: kept * U,
        backward_peak: backward_peak * U,
        forward_peak: 20 * U,
    }
}

fn head() -> StageCost {
    StageCost {
        forward: 0.1,
        backward: 0.2,
        output: 4 * U,
        kept: 15 * U,
        keep_peak: 15 * U,
        backward_peak: 10 * U,
        forward_peak: 0,
    }
}

fn variants(fast: (f64, usize), lean: (f64, usize)) -> Vec<Variant> {
    vec![
        Variant::new(
            BlockPolicy::default(),
            vec![stage(fast.0, fast.1, 30)],
            head(),
        ),
        Variant::new(
            BlockPolicy {
                act: ActPolicy::Inverted,
                attn: AttnPolicy::Memeff,
                ..BlockPolicy::default()
            },
            vec![stage(lean.0, lean.1, 30)],
            head(),
        ),
    ]
}

#[test]
fn should_mix_variants_when_that_beats_every_uniform_policy() {
    // Fast blocks keep 100, lean ones 40 but take 1.1× the time. With 4 blocks and room for
    // two fast and two lean blocks, a mix beats both uniform choices (all lean pays 10% on
    // every block; all fast must recompute a block's forward).
    let v = variants((1.0, 100), (1.1, 40));
    let budget = (10 + 4 + 2 * 100 + 2 * 40 + 30 + 15 + 10 + 8) * U;
    let (plan, uniform) = solve(&v, 4, budget as u64, 0.0).unwrap();
    assert!(
        plan.time < uniform.time,
        "plan {} vs uniform {}",
        plan.time,
        uniform.time
    );
    assert!(
        plan.assignment.contains(&0) && plan.assignment.contains(&1),
        "{:?}",
        plan.assignment
    );
    assert!(plan.peak <= budget);
    assert_eq!(
        plan.policy.overrides.len(),
        plan.assignment
            .iter()
            .filter(|&&a| a != uniform.assignment[0])
            .count()
    );
}

#[test]
fn should_name_the_smallest_feasible_budget() {
    let v = variants((1.0, 100), (1.5, 40));
    let e = solve(&v, 4, 50 * U as u64, 0.0).unwrap_err().to_string();
    assert!(
        e.contains("at least") && e.contains("backward's peak"),
        "{e}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn should_never_be_slower_than_the_best_uniform_plan(
        fast in (0.5f64..2.0, 50usize..150),
        lean in (0.5f64..3.0, 10usize..80),
        blocks in 1usize..6,
        budget in 80u64..1200,
    ) {
        let v = variants(fast, lean);
        let budget = budget * U as u64;
        if let Ok((plan, uniform)) = solve(&v, blocks, budget, 0.1) {
            prop_assert!(plan.time <= uniform.time + 1e-12);
            prop_assert!(plan.peak as u64 <= budget);
            prop_assert_eq!(plan.assignment.len(), blocks);
        }
    }
}

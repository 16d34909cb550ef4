//! The planner's solver on synthetic variants: as fast as brute force over every per-block
//! assignment, mixes variants when that is faster, turns per-stage updates on when they fit or
//! are faster, and names the smallest budget when nothing fits.

use memtrain::plan::{Variant, solve};
use memtrain::policy::{ActPolicy, AttnPolicy, BlockPolicy, UpdatePolicy};
use memtrain::remat::{StageCost, optimal, simulate};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

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
        grad: 0,
        sliced: vec![],
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
        grad: 0,
        sliced: vec![],
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

/// Three candidates with two stages a block (attention half, MLP half), as the GPT has: each
/// stage's time and kept bytes drawn apart, so that assignments differ stage by stage. The
/// head and the stage outputs are the same for all, so the chain's head and stored input do
/// not depend on which variant the policy names as its default.
fn mixed_variants(costs: &[[(f64, usize); 2]; 3]) -> Vec<Variant> {
    let policies = [
        BlockPolicy::default(),
        BlockPolicy {
            act: ActPolicy::Inverted,
            ..BlockPolicy::default()
        },
        BlockPolicy {
            act: ActPolicy::Inverted,
            attn: AttnPolicy::Memeff,
            ..BlockPolicy::default()
        },
    ];
    policies
        .into_iter()
        .zip(costs)
        .map(|(policy, halves)| {
            let stages = halves
                .iter()
                .map(|&(forward, kept)| stage(forward, kept, 30))
                .collect();
            Variant::new(policy, stages, head())
        })
        .collect()
}

/// The predicted step time of one per-block assignment, by the cost model `solve` documents:
/// the chain of the blocks' stages and the head, the Rotor schedule for the budget (memory in
/// quanta of `max(budget / 512, 4096)` bytes), its simulated time plus the constant. `None`
/// when no schedule fits.
fn predicted(
    v: &[Variant],
    assignment: &[usize],
    budget: u64,
    constant: f64,
) -> Option<(f64, usize)> {
    let mut chain: Vec<StageCost> = assignment
        .iter()
        .flat_map(|&a| v[a].stages.iter().cloned())
        .collect();
    chain.push(v[0].head.clone());
    let input = v[0].stages[v[0].stages.len() - 1].output;
    let quantum = (budget as usize / 512).max(4096);
    let schedule = optimal(&chain, input, budget as usize, quantum).ok()?;
    let (peak, time) = simulate(&chain, &schedule, input);
    Some((time + constant, peak))
}

/// Every assignment of `variants` to `blocks` blocks, in lexicographic order.
fn assignments(variants: usize, blocks: usize) -> Vec<Vec<usize>> {
    (0..variants.pow(blocks as u32))
        .map(|mut code| {
            (0..blocks)
                .map(|_| {
                    let a = code % variants;
                    code /= variants;
                    a
                })
                .collect()
        })
        .collect()
}

proptest! {
    // A fixed seed: the bound on the gap to brute force below is empirical.
    #![proptest_config(ProptestConfig {
        cases: 256,
        rng_seed: RngSeed::Fixed(2026),
        ..ProptestConfig::default()
    })]

    /// Brute force over the 3^blocks per-block assignments, each with its optimal schedule,
    /// is the oracle. `solve` (every uniform assignment, then single-block changes while the
    /// time drops by a relative 1e-6) must: fit exactly when some assignment fits; predict for
    /// its assignment what the cost model gives; be no slower than the best uniform assignment
    /// and no single-block change from it faster (its local optimum, checked here on all
    /// neighbours); and come within 5% of the global optimum. The search is local: on 3000
    /// random chains it missed the optimum on 15 (0.5%), by at most 2.5% (e.g. [1, 1, 2] at
    /// 20.73 s against [2, 2, 1] at 20.54 s, 3 blocks): a pair of blocks had to change at once.
    #[test]
    fn should_come_near_brute_force_over_per_block_assignments(
        costs in prop::array::uniform3(prop::array::uniform2((0.3f64..2.0, 5usize..120))),
        blocks in 1usize..5,
        budget in 60u64..900,
    ) {
        let v = mixed_variants(&costs);
        let budget = budget * U as u64;
        let constant = 0.05;
        let all: Vec<(f64, Vec<usize>)> = assignments(v.len(), blocks)
            .into_iter()
            .filter_map(|a| predicted(&v, &a, budget, constant).map(|(t, _)| (t, a)))
            .collect();
        let best = all.iter().min_by(|x, y| x.0.total_cmp(&y.0));
        match (solve(&v, blocks, budget, constant), best) {
            (Ok((plan, _)), Some((t_best, a_best))) => {
                let (t, peak) = predicted(&v, &plan.assignment, budget, constant)
                    .expect("the plan's assignment fits");
                prop_assert!((t - plan.time).abs() <= 1e-12 * t, "{} vs {t}", plan.time);
                prop_assert_eq!(peak, plan.peak);
                prop_assert!(plan.peak as u64 <= budget);
                prop_assert_eq!(plan.assignment.len(), blocks);
                prop_assert!(plan.time >= t_best * (1.0 - 1e-12));
                let uniform = all
                    .iter()
                    .filter(|(_, a)| a.iter().all(|&x| x == a[0]))
                    .map(|(t, _)| *t)
                    .fold(f64::INFINITY, f64::min);
                prop_assert!(plan.time <= uniform * (1.0 + 1e-12), "{} vs uniform {uniform}", plan.time);
                for i in 0..blocks {
                    for other in 0..v.len() {
                        let mut a = plan.assignment.clone();
                        a[i] = other;
                        if let Some((t, _)) = predicted(&v, &a, budget, constant) {
                            prop_assert!(
                                t >= plan.time * (1.0 - 1e-6),
                                "{:?} at {} s beats the plan {:?} at {} s",
                                a,
                                t,
                                plan.assignment,
                                plan.time
                            );
                        }
                    }
                }
                prop_assert!(
                    plan.time <= t_best * 1.05,
                    "plan {:?} at {} s; brute force {:?} at {} s",
                    plan.assignment,
                    plan.time,
                    a_best,
                    t_best
                );
            }
            (Err(e), None) => prop_assert!(e.to_string().contains("at least"), "{}", e),
            (Ok((plan, _)), None) => {
                prop_assert!(false, "plan {:?} where none fits", plan.assignment)
            }
            (Err(e), Some((_, a))) => prop_assert!(false, "{} although {:?} fits", e, a),
        }
    }
}

/// With gradients as large as a block's kept tensors, the planner turns per-stage updates on
/// where ordinary updates need more recomputation or do not fit, and leaves them off where
/// the budget holds everything.
#[test]
fn should_update_per_stage_when_that_fits_or_is_faster() {
    let with_grads = |mut v: Vec<Variant>| {
        for variant in &mut v {
            for s in &mut variant.stages {
                s.grad = 40 * U;
            }
        }
        v
    };
    let v = with_grads(variants((1.0, 100), (1.1, 40)));
    // Room for everything and every gradient: ordinary updates.
    let roomy = 4 * (100 + 40 + 10) * U + 200 * U;
    let (plan, _) = solve(&v, 4, roomy as u64, 0.0).unwrap();
    assert_eq!(plan.policy.update, UpdatePolicy::Step, "{}", plan.policy);
    // The predicted peak counts the gradients: all four blocks' at the end.
    assert!(plan.peak >= 4 * 40 * U, "{}", plan.peak);
    // Tight: four blocks' gradients (160 U) do not fit next to the chain's working set.
    let tight = 160 * U;
    let (plan, _) = solve(&v, 4, tight as u64, 0.0).unwrap();
    assert_eq!(
        plan.policy.update,
        UpdatePolicy::PerStage,
        "{}",
        plan.policy
    );
    assert!(plan.peak <= tight);
    // Per-stage updates hold no block's gradients: the same plan as a chain without any.
    let (without, _) = solve(&variants((1.0, 100), (1.1, 40)), 4, tight as u64, 0.0).unwrap();
    assert!((without.time - plan.time).abs() < 1e-9);
}

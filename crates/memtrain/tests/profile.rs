//! `bench` with a profile: every linear's products counted with their shapes and FLOPs, the
//! phases covering the scopes, nothing recorded when off.

use burn::tensor::Device;
use memtrain::memory::CountingAllocator;
use memtrain::model::Preset;
use memtrain::profile::{Pass, Profile};
use memtrain::run::{BenchConfig, bench};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

fn profiled(policy: &str, steps: usize) -> (Profile, f64) {
    let mut config = BenchConfig::new(Preset::Tiny, vec![policy.parse().unwrap()]);
    config.batch = 2;
    config.steps = steps;
    config.profile = true;
    let report = bench(&config, &Device::flex().autodiff(), |_, _| {}).unwrap();
    assert_eq!(report.profiles.len(), 1);
    let seconds = report.rows[0].step_seconds_median;
    (report.profiles.into_iter().next().unwrap(), seconds)
}

fn entry<'a>(p: &'a Profile, pass: Pass, kind: &str, detail: &str) -> &'a memtrain::profile::Entry {
    p.entries
        .iter()
        .find(|e| e.pass == pass && e.kind == kind && e.detail == detail)
        .unwrap_or_else(|| panic!("no {kind} {detail:?} in {pass:?}: {:#?}", p.entries))
}

// One test: the profile is process-wide, so two benches must not run at once.
#[test]
fn should_profile_every_product_with_its_flops() {
    // tiny: 2 blocks, d 64, seq 64; batch 2 gives 128 rows. Three steps, two timed.
    let (p, step) = profiled("act=inverted,norm=output,attn=memeff,linear=gemm", 3);
    let rows = 128;
    for (d_in, d_out) in [(64, 192), (64, 64), (64, 256), (256, 64)] {
        let flops = (2 * rows * d_in * d_out) as f64;
        let fwd = entry(
            &p,
            Pass::Forward,
            "matmul",
            &format!("x·W [{rows}x{d_in}]·[{d_in}x{d_out}]"),
        );
        // Two blocks, two timed steps.
        assert_eq!(fwd.calls, 4, "{fwd:?}");
        assert_eq!(fwd.flops, 4.0 * flops);
        let dx = entry(
            &p,
            Pass::Backward,
            "matmul",
            &format!("dY·Wᵀ [{rows}x{d_out}]·[{d_out}x{d_in}]"),
        );
        let dw = entry(
            &p,
            Pass::Backward,
            "matmul",
            &format!("Xᵀ·dY [{d_in}x{rows}]·[{rows}x{d_out}]"),
        );
        assert_eq!((dx.flops, dw.flops), (4.0 * flops, 4.0 * flops));
    }
    // Causal attention: 2 products of the 64·65/2 query-key pairs a head, 4 heads of 16.
    let attn = entry(&p, Pass::Forward, "attention", "forward");
    assert_eq!(
        attn.flops,
        4.0 * (2 * 2 * 2 * 4 * 16 * (64 * 65 / 2)) as f64
    );
    for kind in [
        "norm",
        "activation",
        "embedding",
        "cross-entropy",
        "optimizer",
    ] {
        assert!(p.entries.iter().any(|e| e.kind == kind), "no {kind}");
    }
    // The scopes lie inside their phases, and the phases inside the timed steps.
    for pass in [Pass::Forward, Pass::Backward, Pass::Update] {
        let claimed: f64 = p
            .entries
            .iter()
            .filter(|e| e.pass == pass)
            .map(|e| e.seconds)
            .sum();
        assert!(claimed <= p.phase_seconds(pass) + 1e-9, "{pass:?}");
        assert!(p.phase_seconds(pass) > 0.0, "{pass:?}");
    }
    assert!(
        p.total_seconds() <= 2.0 * step * 1.5 + 0.05,
        "{} vs {step}",
        p.total_seconds()
    );
    if cfg!(target_os = "linux") {
        let cpu = p.cpu_seconds.expect("/proc/self/stat on Linux");
        assert!(cpu >= 0.0 && p.minor_faults.is_some());
    }

    // burn's own linear and attention are timed forward only; their backward is unclaimed.
    let (plain, _) = profiled("act=exact", 2);
    entry(
        &plain,
        Pass::Forward,
        "matmul",
        &format!("x·W burn [{rows}x64]·[64x256]"),
    );
    entry(&plain, Pass::Forward, "attention", "forward (burn)");
    assert!(
        !plain
            .entries
            .iter()
            .any(|e| e.pass == Pass::Backward && e.kind == "matmul")
    );
    assert!(plain.unclaimed_seconds(Pass::Backward) > 0.0);

    // Off: no profile, and nothing recorded.
    let mut config = BenchConfig::new(Preset::Tiny, vec!["act=exact".parse().unwrap()]);
    config.batch = 2;
    config.steps = 1;
    let report = bench(&config, &Device::flex().autodiff(), |_, _| {}).unwrap();
    assert!(report.profiles.is_empty());
    assert_eq!(memtrain::profile::take(), Profile::default());
}

//! LoRA and LoTR adapters: trainable counts against the formulas, the adapted model equal to
//! the base at step 0, merge/unmerge round trips, parity with burn's `apply_lora`, and bad
//! configurations.

use burn::module::{Lora as BurnLora, Module, ModuleVisitor, Param};
use burn::nn::LinearConfig;
use burn::tensor::{Device, Distribution, Int, Tensor};
use memtrain::adapter::{AdapterConfig, AdapterKind, LoraConfig, LotrInit, Targets};
use memtrain::model::{Gpt, Preset};
use memtrain::policy::MemoryPolicy;

fn model(device: &Device) -> Gpt {
    (Preset::Tiny.config(256))
        .init_seeded(&MemoryPolicy::default(), device, 3)
        .unwrap()
}

/// (trainable, frozen) parameter counts.
fn counts(m: &Gpt) -> (usize, usize) {
    struct Count(usize, usize);
    impl ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let n = p.val().shape().num_elements();
            if p.val().is_require_grad() {
                self.0 += n;
            } else {
                self.1 += n;
            }
        }
    }
    let mut c = Count(0, 0);
    m.visit(&mut c);
    (c.0, c.1)
}

fn tokens(device: &Device) -> Tensor<2, Int> {
    Tensor::<2, Int>::from_data(
        [[1, 5, 9, 200, 3, 7, 7, 0], [4, 4, 2, 90, 11, 6, 1, 2]],
        device,
    )
}

fn max_abs(a: Tensor<3>, b: Tensor<3>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

/// Sets every trainable parameter to random values (as training would).
fn perturb(m: Gpt) -> Gpt {
    struct Rand;
    impl burn::module::ModuleMapper for Rand {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if !p.val().is_require_grad() {
                return p;
            }
            p.map(|t| {
                let r = Tensor::random(t.shape(), Distribution::Normal(0.0, 0.05), &t.device());
                (t.detach() + r).detach().require_grad()
            })
        }
    }
    m.map(&mut Rand)
}

#[test]
fn should_count_trainable_parameters_as_the_formulas_say() {
    let device = Device::flex().autodiff();
    let base = model(&device);
    let total = Preset::Tiny.config(256).param_count();
    let d = 64;
    let layers = 2; // tiny: 2 blocks
    let shapes = [(d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)];
    for r in [1, 4, 8] {
        let lora = base.clone().with_adapters(&AdapterConfig::lora(r)).unwrap();
        let want: usize = layers * shapes.iter().map(|(a, b)| (a + b) * r).sum::<usize>();
        assert_eq!(counts(&lora), (want, total), "LoRA r={r}");
        let lotr = base.clone().with_adapters(&AdapterConfig::lotr(r)).unwrap();
        // Per slot (a group of `layers` same-shaped layers): (d_in + d_out) r + layers r².
        let want: usize = shapes
            .iter()
            .map(|(a, b)| (a + b) * r + layers * r * r)
            .sum();
        assert_eq!(counts(&lotr), (want, total), "LoTR r={r}");
        let formula = AdapterConfig::lotr(r).trainable(
            &(0..layers)
                .flat_map(|_| shapes.iter().enumerate().map(|(g, (a, b))| (g, [*a, *b])))
                .collect::<Vec<_>>(),
        );
        assert_eq!(formula, want);
    }
    // The policy builds the same.
    let p: MemoryPolicy = "adapt=lotr:4".parse().unwrap();
    let m = (Preset::Tiny.config(256))
        .init_seeded(&p, &device, 3)
        .unwrap();
    assert_eq!(
        counts(&m).0,
        shapes
            .iter()
            .map(|(a, b)| (a + b) * 4 + 2 * 16)
            .sum::<usize>()
    );
    assert_eq!(
        Preset::Tiny.config(256).param_count_for(&p),
        counts(&m).0 + counts(&m).1
    );
}

#[test]
fn should_equal_the_base_at_step_zero_and_round_trip_merges() {
    let device = Device::flex().autodiff();
    let base = model(&device);
    let want = base.forward(tokens(&device));
    for config in [
        AdapterConfig::lora(4),
        AdapterConfig::lotr(4),
        AdapterConfig {
            kind: AdapterKind::Lotr {
                rank: 4,
                alpha: 8.0,
                init: LotrInit::Svd,
            },
            targets: Targets::Regex(r"block\.\d\.mlp\..*".into()),
        },
    ] {
        let adapted = base.clone().with_adapters(&config).unwrap();
        assert_eq!(
            max_abs(adapted.forward(tokens(&device)), want.clone()),
            0.0,
            "{config:?}"
        );
        // After "training", merging gives the adapted function with plain linears, and
        // unmerging gives the base weights back.
        let trained = perturb(adapted);
        let y = trained.forward(tokens(&device));
        assert!(
            max_abs(y.clone(), want.clone()) > 1e-3,
            "perturbation did nothing"
        );
        let merged = trained.merge_adapters().unwrap();
        assert!(max_abs(merged.forward(tokens(&device)), y.clone()) < 1e-5);
        let back = merged.unmerge_adapters().unwrap();
        assert!(max_abs(back.forward(tokens(&device)), y) < 1e-5);
        // The base weights are restored within f32 round-off.
        let names = back.linear_names();
        assert_eq!(names.len(), 8);
        let d = (base.mlp_fc(1).weight().unwrap().val() - back.mlp_fc(1).weight().unwrap().val())
            .abs()
            .max()
            .into_scalar::<f32>();
        assert!(d < 1e-6, "{d}");
        assert!(back.clone().unmerge_adapters().is_err());
        assert!(back.merge_adapters().unwrap().merge_adapters().is_err());
    }
}

#[test]
fn should_match_burns_lora_output_for_output() {
    use burn::optim::{AdamWConfig, GradientsParams};
    let device = Device::flex().autodiff();
    device.seed(5);
    let linear = LinearConfig::new(12, 20).init(&device);
    let mut burn_lora = linear.clone().apply_lora(BurnLora::new(4, 8.0));
    // One AdamW step so that burn's B is no longer zero.
    let x = Tensor::<2>::random([5, 12], Distribution::Normal(0.0, 1.0), &device);
    let w = Tensor::<2>::random([5, 20], Distribution::Normal(0.0, 1.0), &device);
    let grads = (burn_lora.forward(x.clone()) * w).sum().backward();
    let grads = GradientsParams::from_grads(grads, &burn_lora);
    burn_lora = AdamWConfig::new().init().step(0.05, burn_lora, grads);
    let adapter = burn_lora.weight.adapter().expect("an adapted weight");
    let (a, b) = (adapter.a.val(), adapter.b.val());
    assert!(b.clone().abs().max().into_scalar::<f32>() > 1e-3);
    let ours = LoraConfig::new(12, 20, 4)
        .with_alpha(Some(8.0))
        .init_from(a, b)
        .unwrap();
    let y_burn = burn_lora.forward(x.clone());
    let y_ours = linear.forward(x.clone()) + ours.forward(x);
    let d = (y_burn - y_ours).abs().max().into_scalar::<f32>();
    assert!(d < 1e-5, "{d}");
    // Parameter for parameter: the same trainable shapes ([d_in, r], [r, d_out]) and init
    // (B = 0).
    let fresh = LoraConfig::new(12, 20, 4)
        .with_alpha(Some(8.0))
        .init(&device)
        .unwrap();
    assert_eq!(fresh.a.val().dims(), adapter.a.val().dims());
    assert_eq!(fresh.b.val().dims(), adapter.b.val().dims());
    assert_eq!(fresh.b.val().abs().max().into_scalar::<f32>(), 0.0);
}

#[test]
fn should_reject_bad_targets_and_ranks() {
    let device = Device::flex();
    let base = model(&device);
    for (config, needle) in [
        (
            AdapterConfig::lora(4).with_targets(Targets::Regex("block\\.9\\..*".into())),
            "matches nothing",
        ),
        (
            AdapterConfig::lora(4).with_targets(Targets::Names(vec!["block.0.mlp.gate".into()])),
            "block.0.mlp.gate",
        ),
        (
            AdapterConfig::lora(4).with_targets(Targets::Regex("(".into())),
            "valid regex",
        ),
        (AdapterConfig::lora(0), "adapter rank"),
        (AdapterConfig::lotr(65), "1..=64"),
    ] {
        let e = base.clone().with_adapters(&config).unwrap_err().to_string();
        assert!(e.contains(needle), "{needle}: {e}");
    }
    let twice = base.with_adapters(&AdapterConfig::lora(2)).unwrap();
    assert!(twice.with_adapters(&AdapterConfig::lora(2)).is_err());
    for bad in [
        "adapt=lora:0",
        "adapt=lotr",
        "adapt=lora:4:-1",
        "adapt=dora:4",
    ] {
        let e = bad.parse::<MemoryPolicy>().unwrap_err().to_string();
        assert!(e.contains("lora:RANK"), "{e}");
    }
}

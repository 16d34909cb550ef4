//! memtrain's ops on burn's Cube backend against the same ops on Flex: forward values and every
//! input gradient, the codes kept bit for bit, and the device meter against the formulas.
//! Built with `--features wgpu` (CI: Mesa's lavapipe) or `--features cuda`; the device is
//! `MEMTRAIN_TEST_DEVICE` (default `wgpu`; `scripts/gpu-check.sh` sets `cuda`). Shapes are small
//! (lavapipe is a CPU emulating a GPU). Tolerances are f32's, scaled by the size of the
//! reduction behind each value.
#![cfg(feature = "cube")]

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use memtrain::activation::{ActFn, FewBitConfig, InvertedConfig};
use memtrain::attention::{AttentionParams, fused_attention, fused_attention_qkv};
use memtrain::data::{Dataset, Tokenizer, synthetic_corpus};
use memtrain::linear::{SketchKind, SketchedLinearConfig, TtLinearConfig};
use memtrain::memory::total_bytes;
use memtrain::model::{Preset, model_saved};
use memtrain::norm::OutputLayerNormConfig;
use memtrain::remat::backward_from;
use memtrain::train::{TrainConfig, Trainer};

fn gpu() -> Device {
    let name = std::env::var("MEMTRAIN_TEST_DEVICE").unwrap_or_else(|_| "wgpu".into());
    memtrain::device::parse_device(&name).expect("a build with the device's feature")
}

/// The same values on `device`.
fn on<const D: usize>(t: &Tensor<D>, device: &Device) -> Tensor<D> {
    Tensor::from_data(t.to_data(), device)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 values")
}

/// The largest absolute difference, and the largest magnitude of `a` (for relative checks).
fn diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len(), "lengths");
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    let m = a.iter().map(|x| x.abs()).fold(0.0, f32::max);
    (d, m)
}

/// `a` and `b` agree within `tol` times the largest magnitude of `a` (at least 1).
fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    let (d, m) = diff(a, b);
    eprintln!("{what}: max difference {d:.2e} (scale {m:.2e})");
    assert!(
        d <= tol * m.max(1.0),
        "{what}: Flex and Cube differ by {d} (scale {m})"
    );
}

#[test]
fn should_match_flex_for_inverted_activations_and_keep_the_same_bits() {
    let (cpu, gpu) = (Device::flex().autodiff(), gpu().autodiff());
    cpu.seed(1);
    let x = Tensor::<2>::random([37, 29], Distribution::Normal(0.0, 2.0), &cpu);
    let w = Tensor::<2>::random([37, 29], Distribution::Default, &cpu);
    for func in ActFn::INVERTIBLE {
        let layer = InvertedConfig::new(func).init().unwrap();
        let run = |device: &Device| {
            let xi = on(&x, device).require_grad();
            let y = layer.forward(xi.clone());
            let g = (y.clone() * on(&w, device)).sum().backward();
            (values(y.inner()), values(xi.grad(&g).unwrap()))
        };
        let ((y1, g1), (y2, g2)) = (run(&cpu), run(&gpu));
        assert_close(&format!("{func:?} forward"), &y1, &y2, 1e-5);
        assert_close(&format!("{func:?} gradient"), &g1, &g2, 1e-5);
        let (b1, b2) = (
            layer.branch_bits(on(&x, &cpu.clone().without_autodiff())),
            layer.branch_bits(on(&x, &gpu.clone().without_autodiff())),
        );
        assert_eq!(b1, b2, "{func:?}: branch bits differ");
        assert_eq!(b1.len(), if func.needs_bit() { 37 * 29 / 8 + 1 } else { 0 });
    }
}

#[test]
fn should_match_flex_for_few_bit_activations_bit_for_bit() {
    let (cpu, gpu) = (Device::flex().autodiff(), gpu().autodiff());
    cpu.seed(2);
    // 1001 elements: codes of 3, 5 and 7 bits straddle words and the stream ends mid-word.
    let x = Tensor::<2>::random([7, 143], Distribution::Normal(0.0, 2.0), &cpu);
    let w = Tensor::<2>::random([7, 143], Distribution::Default, &cpu);
    for (func, bits) in [
        (ActFn::Gelu, 1),
        (ActFn::Gelu, 2),
        (ActFn::Gelu, 3),
        (ActFn::Silu, 4),
        (ActFn::Mish, 5),
        (ActFn::Elu, 7),
        (ActFn::GeluTanh, 8),
    ] {
        let act = FewBitConfig::new(func, bits).init().unwrap();
        let (c1, c2) = (
            act.codes(on(&x, &cpu.clone().without_autodiff())),
            act.codes(on(&x, &gpu.clone().without_autodiff())),
        );
        assert_eq!(c1.len(), (7 * 143 * bits as usize).div_ceil(8));
        assert_eq!(c1, c2, "{func:?} at {bits} bits: codes differ");
        let run = |device: &Device| {
            let xi = on(&x, device).require_grad();
            let y = act.forward(xi.clone());
            let g = (y.clone() * on(&w, device)).sum().backward();
            (values(y.inner()), values(xi.grad(&g).unwrap()))
        };
        let ((y1, g1), (y2, g2)) = (run(&cpu), run(&gpu));
        assert_close(&format!("{func:?}/{bits} forward"), &y1, &y2, 1e-5);
        // Same codes, same levels: the gradients agree to f32 rounding of one product.
        assert_close(&format!("{func:?}/{bits} gradient"), &g1, &g2, 1e-6);
    }
}

#[test]
fn should_match_flex_for_fused_attention_plain_and_packed() {
    let (cpu, gpu) = (Device::flex().autodiff(), gpu().autodiff());
    cpu.seed(3);
    // One partial tile; several tiles with a ragged last one (head size 64: 32-row tiles);
    // head size 80 (16-row tiles).
    for ((b, t, h, d), causal) in [(2, 37, 3, 16), (1, 70, 2, 64), (1, 40, 1, 80)]
        .into_iter()
        .flat_map(|shape| [(shape, true), (shape, false)])
    {
        let qkv = Tensor::<4>::random([b, t, 3 * h, d], Distribution::Normal(0.0, 1.0), &cpu);
        let w = Tensor::<4>::random([b, t, h, d], Distribution::Default, &cpu);
        let at = format!("[{b},{t},{h},{d}] causal={causal}");
        let params = AttentionParams {
            causal,
            ..AttentionParams::causal()
        };
        let packed = |device: &Device| {
            let x = on(&qkv, device).require_grad();
            let y = fused_attention_qkv(x.clone(), h, params);
            let g = (y.clone() * on(&w, device)).sum().backward();
            (values(y.inner()), values(x.grad(&g).unwrap()))
        };
        let ((y1, g1), (y2, g2)) = (packed(&cpu), packed(&gpu));
        assert_close(&format!("packed {at} forward"), &y1, &y2, 1e-5);
        assert_close(&format!("packed {at} dqkv"), &g1, &g2, 1e-4);
        // An additive mask (the generic chunked path on Cube): a bias, -1e9 on every third key.
        let bias = Tensor::<2>::random([t, t], Distribution::Normal(0.0, 1.0), &cpu)
            .inner()
            .mask_fill(
                Tensor::<1, burn::tensor::Int>::arange(
                    0..t as i64,
                    &cpu.clone().without_autodiff(),
                )
                .remainder_scalar(3)
                .equal_elem(1)
                .reshape([1, t])
                .expand([t, t]),
                -1e9,
            );
        for masked in [false, true] {
            let split = |device: &Device| {
                let part = |i: usize| {
                    on(&qkv, device)
                        .slice([0..b, 0..t, i * h..(i + 1) * h, 0..d])
                        .require_grad()
                };
                let (q, k, v) = (part(0), part(1), part(2));
                let mask = masked.then(|| Tensor::from_data(bias.to_data(), device));
                let y = fused_attention(q.clone(), k.clone(), v.clone(), mask, params);
                let g = (y.clone() * on(&w, device)).sum().backward();
                let grads = [&q, &k, &v].map(|t| values(t.grad(&g).unwrap()));
                (values(y.inner()), grads)
            };
            let ((y1, g1), (y2, g2)) = (split(&cpu), split(&gpu));
            let at = format!("{at} masked={masked}");
            assert_close(&format!("q,k,v {at} forward"), &y1, &y2, 1e-5);
            for (name, (a, b)) in ["dq", "dk", "dv"].iter().zip(g1.iter().zip(&g2)) {
                assert_close(&format!("{at} {name}"), a, b, 1e-4);
            }
        }
    }
}

#[test]
fn should_match_flex_for_output_layernorm_sketched_and_tt_linears_and_the_seed() {
    let (cpu, gpu) = (Device::flex().autodiff(), gpu().autodiff());
    cpu.seed(4);
    let x = Tensor::<2>::random([24, 32], Distribution::Normal(0.0, 1.0), &cpu);
    let w = Tensor::<2>::random([24, 32], Distribution::Default, &cpu);
    let run = |device: &Device| {
        // γ = 1, β = 0 on both devices.
        let ln = OutputLayerNormConfig::new(32).init(device).unwrap();
        let xi = on(&x, device).require_grad();
        let y = ln.forward(xi.clone());
        let g = (y.clone() * on(&w, device)).sum().backward();
        (
            values(y.inner()),
            values(xi.grad(&g).unwrap()),
            values(ln.gamma.grad(&g).unwrap()),
        )
    };
    let ((y1, dx1, dg1), (y2, dx2, dg2)) = (run(&cpu), run(&gpu));
    assert_close("layernorm forward", &y1, &y2, 1e-5);
    assert_close("layernorm dx", &dx1, &dx2, 1e-4);
    assert_close("layernorm dgamma", &dg1, &dg2, 1e-4);

    // A sketched linear: the same seed draws the same sketch (rows: a gather, exact).
    let w_out = Tensor::<2>::random([24, 16], Distribution::Default, &cpu);
    let sketched = SketchedLinearConfig::new(32, 16, 0.5)
        .with_kind(SketchKind::Rows)
        .with_salt(7)
        .init(&cpu)
        .unwrap();
    let tt = TtLinearConfig::new(32, 16, 3).init(&cpu).unwrap();
    let linear = |device: &Device, which: u8| {
        let xi = on(&x, device).require_grad();
        let y = match which {
            0 => sketched.clone().to_device(device).forward(xi.clone()),
            _ => tt.clone().to_device(device).forward(xi.clone()),
        };
        // The seeding op: the same gradients as `(y * w).sum().backward()`.
        let g = backward_from(y.clone(), on(&w_out, device).inner());
        (values(y.inner()), values(xi.grad(&g).unwrap()))
    };
    for (which, name) in [(0, "sketched"), (1, "tt")] {
        let ((y1, g1), (y2, g2)) = (linear(&cpu, which), linear(&gpu, which));
        assert_close(&format!("{name} forward"), &y1, &y2, 1e-5);
        assert_close(&format!("{name} dx"), &g1, &g2, 1e-4);
    }
}

/// Activation bytes of a tiny-GPT step measured on the device, against the formula; the
/// savers keep at most half of plain's at the same loss.
#[test]
fn should_meter_the_device_within_five_percent_of_the_formula() {
    let data = Dataset::new(&synthetic_corpus(3000, 1), Tokenizer::Byte, 64).unwrap();
    let run = |spec: &str, device: &Device| {
        let mut config = TrainConfig::new(Preset::Tiny);
        config.batch = 8;
        config.policy = spec.parse().unwrap();
        let mut trainer = Trainer::new(config.clone(), device).unwrap();
        let mut last = None;
        for _ in 0..2 {
            let batch = trainer.next_batch(&data);
            last = Some(trainer.try_step(&batch).unwrap());
        }
        let stats = last.unwrap();
        let formula = total_bytes(&model_saved(
            &config.model_config(),
            &config.policy,
            config.batch,
            config.seq,
        ));
        (stats, formula)
    };
    let gpu = gpu().autodiff();
    let (plain, plain_formula) = run("act=exact", &gpu);
    let (savers, savers_formula) = run("act=inverted,norm=output,attn=memeff", &gpu);
    for (name, stats, formula) in [
        ("plain", &plain, plain_formula),
        ("savers", &savers, savers_formula),
    ] {
        let measured = stats.memory.activation_bytes as f64;
        let off = measured / formula as f64 - 1.0;
        eprintln!(
            "{name}: device {measured} bytes, formula {formula} ({:+.2}%), peak {}",
            100.0 * off,
            stats.memory.peak_bytes
        );
        assert!(
            off.abs() <= 0.05,
            "{name}: {:+.2}% off the formula",
            100.0 * off
        );
    }
    assert!(
        savers.memory.activation_bytes * 2 <= plain.memory.activation_bytes,
        "savers keep {} of plain's {}",
        savers.memory.activation_bytes,
        plain.memory.activation_bytes
    );
    // Exact savers, the same weights and batches: the same loss.
    assert!(
        (savers.loss - plain.loss).abs() <= 1e-3,
        "loss {} with the savers, {} plain",
        savers.loss,
        plain.loss
    );
}

/// What has no kernel of its own runs on the device unchanged: from the same weights and
/// batches, Cube gives Flex's losses step after step (each the loss before an update, so the
/// updates are compared too). The sketched linear is left to the op test above: its sketch is
/// seeded by a hash of its input's bits, which the devices round differently.
#[test]
fn should_train_remat_tt_adapters_and_optimizers_on_the_device_as_on_flex() {
    let data = Dataset::new(&synthetic_corpus(3000, 1), Tokenizer::Byte, 64).unwrap();
    let (cpu, gpu) = (Device::flex().autodiff(), gpu().autodiff());
    for spec in [
        "remat=every:1,act=inverted,norm=output,attn=memeff",
        "act=fewbit:2",
        "weights=ttm:4",
        "adapt=lora:4",
        "adapt=lotr:4",
        "optim=naggs",
        "optim=galore:4:1",
    ] {
        let mut config = TrainConfig::new(Preset::Tiny);
        config.batch = 4;
        config.policy = spec.parse().unwrap();
        let model = config
            .model_config()
            .init_seeded(&config.policy, &cpu, 7)
            .unwrap();
        let losses = |device: &Device| {
            let mut trainer =
                Trainer::from_model(config.clone(), model.clone().to_device(device), 0, device)
                    .unwrap();
            (0..3)
                .map(|_| {
                    let batch = trainer.next_batch(&data);
                    trainer.try_step(&batch).unwrap().loss
                })
                .collect::<Vec<f32>>()
        };
        let (flex, cube) = (losses(&cpu), losses(&gpu));
        eprintln!("{spec}: Flex {flex:?}, Cube {cube:?}");
        for (a, b) in flex.iter().zip(&cube) {
            assert!(
                (a - b).abs() <= 1e-4,
                "{spec}: Flex {flex:?}, Cube {cube:?}"
            );
        }
    }
}

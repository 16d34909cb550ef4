//! NAG-GS and GaLore: golden iterates, the quadratic convergence rate, the projector, AdamW
//! parity where it holds, and bad configurations.

use burn::optim::{AdamWConfig, Optimizer};
use burn::tensor::{DType, Device, Distribution, Tensor, TensorData};
use memtrain::optim::{Galore, GaloreConfig, NagGsConfig};
use proptest::prelude::*;

fn device() -> Device {
    Device::flex()
}

fn f64_vec<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data().convert::<f64>().iter::<f64>().collect()
}

/// `x` and the gradient `λ ⊙ x` of the quadratic `½ Σ λ_i x_i²`, in f64.
fn quad_grad(x: &Tensor<1>, lambda: &[f64]) -> Tensor<1> {
    let l = Tensor::<1>::from_data(
        TensorData::new(lambda.to_vec(), [lambda.len()]),
        (&x.device(), DType::F64),
    );
    x.clone() * l
}

#[test]
fn should_match_golden_nag_gs_iterates() {
    // Algorithm 1 by hand (Python, f64, in the paper's order: x, then γ, then v with the
    // gradient at the new x) for α = 0.1, μ = 1, γ_0 = 1.5 on ½ (2 x_1² + 0.5 x_2²) from
    // x_0 = v_0 = (1, -2): x_1 = x_0, and x_2, x_3, x_4 with γ_2, γ_3, γ_4 are
    let golden = [
        (
            [0.9883040935672515, -1.9941520467836256],
            1.4132231404958675,
        ),
        (
            [0.9664993375649042, -1.9831969701324956],
            1.3756574004507884,
        ),
        (
            [0.9361117343572007, -1.9678038818410966],
            1.3415067276825348,
        ),
    ];
    let opt = NagGsConfig::new().with_gamma(1.5).build().unwrap();
    let lambda = [2.0, 0.5];
    let mut x = Tensor::<1>::from_data(
        TensorData::new(vec![1.0f64, -2.0], [2]),
        (&device(), DType::F64),
    );
    let mut state = None;
    for (want_x, want_gamma) in golden {
        let g = quad_grad(&x, &lambda);
        let (next, s) = opt.step(0.1, x, g, state);
        let s = s.unwrap();
        let got = f64_vec(next.clone());
        for (a, b) in got.iter().zip(want_x) {
            assert!((a - b).abs() < 1e-14, "x: {got:?} vs {want_x:?}");
        }
        assert!((s.gamma - want_gamma).abs() < 1e-14, "gamma {}", s.gamma);
        x = next;
        state = Some(s);
    }
}

/// The measured linear rate of NAG-GS at step `alpha` on `½ Σ λ_i x_i²` with `λ` spread over
/// `[1, 100]` and `μ = γ = 1`: `(‖x_200‖ / ‖x_100‖)^(1/100)`.
fn nag_gs_rate(alpha: f64) -> f64 {
    let lambda: Vec<f64> = (0..20).map(|i| 1.0 + 99.0 * i as f64 / 19.0).collect();
    let opt = NagGsConfig::new().build().unwrap();
    let mut x = Tensor::<1>::from_data(
        TensorData::new(vec![1.0f64; 20], [20]),
        (&device(), DType::F64),
    );
    let mut state = None;
    let norm = |x: &Tensor<1>| f64_vec(x.clone()).iter().map(|v| v * v).sum::<f64>().sqrt();
    let mut at_100 = 0.0;
    for k in 1..=200 {
        let g = quad_grad(&x, &lambda);
        let (next, s) = opt.step(alpha, x, g, state);
        (x, state) = (next, s);
        if k == 100 {
            at_100 = norm(&x);
        }
    }
    (norm(&x) / at_100).powf(1.0 / 100.0)
}

#[test]
fn should_converge_at_the_predicted_rate() {
    // κ = 100, γ = μ: the recommended step α* = 2/(√κ - 1) = 2/9 gives the accelerated rate
    // (√κ - 1)/(√κ + 1) = 9/11; below it the rate is 1/(1 + α). The error at α* carries a
    // factor k (a double eigenvalue at λ = L), worth (200/100)^(1/100) = 1.007 here.
    let alpha = 2.0 / 9.0;
    let rate = nag_gs_rate(alpha);
    let predicted = 9.0 / 11.0;
    assert!(
        rate >= predicted - 1e-3 && rate <= predicted * 1.01,
        "rate {rate} at α* vs predicted {predicted}"
    );
    // At α*/2 the slowest mode, λ = μ, is a double eigenvalue 1/(1+α) too (same factor k).
    let half = nag_gs_rate(alpha / 2.0);
    let predicted = 1.0 / (1.0 + alpha / 2.0);
    assert!(
        half >= predicted - 1e-3 && half <= predicted * 1.01,
        "rate {half} at α*/2 vs predicted {predicted}"
    );
    // Plain gradient descent at its best step 2/(L + μ) converges at (κ-1)/(κ+1) = 0.98.
    assert!(rate < 0.9);
}

#[test]
fn should_reject_bad_nag_gs_constants() {
    for (mu, gamma) in [(0.0, 1.0), (1.0, -1.0), (f64::NAN, 1.0)] {
        let e = NagGsConfig::new()
            .with_mu(mu)
            .with_gamma(gamma)
            .init()
            .err()
            .expect("rejected")
            .to_string();
        assert!(e.contains("NAG-GS") && e.contains("positive"), "{e}");
    }
}

fn galore(rank: usize, gap: usize, scale: f64) -> Galore {
    GaloreConfig::new(rank)
        .with_update_proj_gap(gap)
        .with_scale(scale)
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn should_keep_an_orthonormal_projector(
        m in 2usize..24,
        n in 2usize..24,
        r_frac in 0.0f64..1.0,
        seed in 0u64..1000,
    ) {
        let d = device();
        d.seed(seed);
        let r = 1 + ((m.min(n) - 1) as f64 * r_frac) as usize;
        let w = Tensor::<2>::random([m, n], Distribution::Normal(0.0, 1.0), &d);
        let g = Tensor::<2>::random([m, n], Distribution::Normal(0.0, 1.0), &d);
        let (_, state) = galore(r, 1, 0.25).step(1e-3, w, g, None);
        let state = state.unwrap();
        let p = state.projector.unwrap();
        // m >= n: P [r, n], P Pᵀ = I; else P [m, r], Pᵀ P = I.
        let gram = if m >= n {
            prop_assert_eq!(p.dims(), [r, n]);
            p.clone().matmul(p.transpose())
        } else {
            prop_assert_eq!(p.dims(), [m, r]);
            p.clone().transpose().matmul(p)
        };
        let eye = Tensor::<2>::eye(r, &d);
        let err = (gram - eye).abs().max().into_scalar::<f32>();
        prop_assert!(err < 1e-4, "‖PPᵀ - I‖_max = {}", err);
        // The moments live in the projected space: [m, r] or [r, n].
        let want = if m >= n { [m, r] } else { [r, n] };
        prop_assert_eq!(state.moment_1.dims(), want);
    }
}

/// A gradient whose singular vectors are the standard basis: diagonal, positive,
/// descending (so every SVD picks the same basis and signs).
fn diagonal_grad(m: usize, n: usize, step: usize) -> Tensor<2> {
    let k = m.min(n);
    let mut v = vec![0.0f32; m * n];
    for i in 0..k {
        v[i * n + i] = (k - i) as f32 * (1.0 + 0.3 * ((step * 7 + i * 3) % 5) as f32 / 5.0)
            + 0.5 * (k - i) as f32;
    }
    Tensor::from_data(TensorData::new(v, [m, n]), &device())
}

#[test]
fn should_equal_adamw_at_full_rank_in_the_gradient_basis() {
    // With r = min(m, n), gap 1 and scale 1, GaLore is Adam in the rotated basis Vᵀ (or U):
    // it equals AdamW exactly when that basis is a signed permutation of the standard one,
    // since Adam's elementwise maps commute with those (not with a general rotation; see
    // should_differ_from_adamw_in_a_rotated_basis).
    for (m, n) in [(6, 4), (4, 6), (5, 5)] {
        let w0 = Tensor::<2>::random([m, n], Distribution::Normal(0.0, 1.0), &device());
        let adamw = AdamWConfig::new().build();
        let g_opt = galore(m.min(n), 1, 1.0);
        let (mut wa, mut wg) = (w0.clone(), w0);
        let (mut sa, mut sg) = (None, None);
        for step in 0..5 {
            let g = diagonal_grad(m, n, step);
            let (a, s) = adamw.step(1e-2, wa, g.clone(), sa);
            (wa, sa) = (a, s);
            let (b, s) = g_opt.step(1e-2, wg, g, sg);
            (wg, sg) = (b, s);
            let err = (wa.clone() - wg.clone()).abs().max().into_scalar::<f32>();
            assert!(
                err < 1e-6,
                "[{m}, {n}] step {step}: GaLore vs AdamW differ by {err}"
            );
        }
    }
}

#[test]
fn should_differ_from_adamw_in_a_rotated_basis() {
    // The same full-rank GaLore on a generic gradient: Adam's per-coordinate normalisation in
    // the singular basis is not AdamW's (sign(G Vᵀ) V ≠ sign(G)): the issue's "equals AdamW
    // at r = min(m, n)" holds only for gradients whose singular basis is the standard one.
    let d = device();
    d.seed(3);
    let w = Tensor::<2>::random([6, 4], Distribution::Normal(0.0, 1.0), &d);
    let g = Tensor::<2>::random([6, 4], Distribution::Normal(0.0, 1.0), &d);
    let (a, _) = AdamWConfig::new()
        .build()
        .step(1e-2, w.clone(), g.clone(), None);
    let (b, _) = galore(4, 1, 1.0).step(1e-2, w, g, None);
    let err = (a - b).abs().max().into_scalar::<f32>();
    assert!(err > 1e-3, "expected a difference, got {err}");
}

#[test]
fn should_refresh_the_projector_every_gap_steps() {
    let d = device();
    d.seed(9);
    let opt = galore(2, 3, 0.25);
    let mut w = Tensor::<2>::random([8, 5], Distribution::Normal(0.0, 1.0), &d);
    let mut state = None;
    let mut projectors = Vec::new();
    for _ in 0..5 {
        let g = Tensor::<2>::random([8, 5], Distribution::Normal(0.0, 1.0), &d);
        let (next, s) = opt.step(1e-3, w, g, state);
        let s = s.unwrap();
        projectors.push(f64_vec(s.projector.clone().unwrap()));
        w = next;
        state = Some(s);
    }
    // Steps 1-3 share the first projector, step 4 takes a new one, step 5 keeps it.
    assert_eq!(projectors[0], projectors[1]);
    assert_eq!(projectors[0], projectors[2]);
    assert_ne!(projectors[2], projectors[3]);
    assert_eq!(projectors[3], projectors[4]);
    // A 1-D parameter gets plain Adam (full-size moments, no projector).
    let b = Tensor::<1>::zeros([5], &d);
    let (_, s) = opt.step(1e-3, b.clone(), b + 1.0, None);
    let s = s.unwrap();
    assert!(s.projector.is_none());
    assert_eq!(s.moment_1.dims(), [5]);
}

#[test]
fn should_reject_bad_galore_configurations() {
    for (config, needle) in [
        (GaloreConfig::new(0), "invalid rank"),
        (GaloreConfig::new(65), "1..=64"),
        (
            GaloreConfig::new(8).with_update_proj_gap(0),
            "update_proj_gap",
        ),
        (GaloreConfig::new(8).with_scale(0.0), "invalid scale"),
        (GaloreConfig::new(8).with_scale(f64::NAN), "invalid scale"),
        (GaloreConfig::new(8).with_beta_1(1.0), "beta_1"),
        (GaloreConfig::new(8).with_epsilon(0.0), "epsilon"),
        (GaloreConfig::new(8).with_weight_decay(-1.0), "weight_decay"),
    ] {
        let e = config.check(64).unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    }
    assert!(GaloreConfig::new(64).check(64).is_ok());
}

fn bits<const D: usize>(t: &Tensor<D>) -> Vec<u64> {
    let data = t.clone().into_data();
    match data.dtype() {
        DType::F64 => data.iter::<f64>().map(f64::to_bits).collect(),
        _ => data.iter::<f32>().map(|v| u64::from(v.to_bits())).collect(),
    }
}

/// `(θ, m, v)` of an AdamW state after a step, as bits.
fn adamw_bits<const D: usize>(
    theta: &Tensor<D>,
    state: &Option<burn::optim::AdamWState<D>>,
) -> [Vec<u64>; 3] {
    let m = &state.as_ref().expect("a state").momentum;
    [bits(theta), bits(&m.moment_1), bits(&m.moment_2)]
}

#[test]
fn should_equal_burn_adamw_bit_for_bit() {
    // Shapes across the fused kernel's tasks of 2^14 elements (a tail, several tasks, one
    // small tensor), default and other constants, a varying learning rate, and f64 (which
    // takes burn's AdamW itself).
    let d = device();
    d.seed(11);
    let cases = [
        (
            vec![3, 20_000],
            memtrain::optim::FusedAdamW::default(),
            AdamWConfig::new(),
            DType::F32,
        ),
        (
            vec![7],
            memtrain::optim::FusedAdamW::new(0.8, 0.99, 1e-8, 0.1),
            AdamWConfig::new()
                .with_beta_1(0.8)
                .with_beta_2(0.99)
                .with_epsilon(1e-8)
                .with_weight_decay(0.1),
            DType::F32,
        ),
        (
            vec![5, 4],
            memtrain::optim::FusedAdamW::default(),
            AdamWConfig::new(),
            DType::F64,
        ),
    ];
    for (shape, fused, config, dtype) in cases {
        let burn_adamw = config.build();
        let shape: [usize; 2] = match shape.as_slice() {
            [n] => [1, *n],
            [m, n] => [*m, *n],
            _ => unreachable!(),
        };
        let w0 = Tensor::<2>::random(shape, Distribution::Normal(0.0, 1.0), (&d, dtype));
        let (mut wa, mut wb) = (w0.clone(), w0);
        let (mut sa, mut sb) = (None, None);
        for step in 0..6 {
            let g = Tensor::<2>::random(shape, Distribution::Normal(0.0, 1.0), (&d, dtype));
            let lr = 1e-2 / (1.0 + step as f64);
            let (a, s) = burn_adamw.step(lr, wa, g.clone(), sa);
            (wa, sa) = (a, s);
            let (b, s) = fused.step(lr, wb, g, sb);
            (wb, sb) = (b, s);
            assert_eq!(
                adamw_bits(&wa, &sa),
                adamw_bits(&wb, &sb),
                "{shape:?} {dtype:?} step {step}: fused AdamW differs from burn's"
            );
        }
        assert!(bits(&wa) != bits(&w0_like(&wa)), "the parameter moved");
    }
}

/// A zero tensor like `t` (to check that a parameter moved from zero is not trivially equal).
fn w0_like(t: &Tensor<2>) -> Tensor<2> {
    t.zeros_like()
}

#[test]
fn should_leave_a_shared_parameter_and_gradient_untouched() {
    // The fused step writes in place only what it holds alone: a parameter or gradient held
    // elsewhere keeps its values, and the result is still burn's.
    let d = device();
    d.seed(12);
    let fused = memtrain::optim::FusedAdamW::default();
    let burn_adamw = AdamWConfig::new().build();
    let w = Tensor::<2>::random([40, 30], Distribution::Normal(0.0, 1.0), &d);
    let g = Tensor::<2>::random([40, 30], Distribution::Normal(0.0, 1.0), &d);
    let (w1, s1) = fused.step(1e-2, w.clone(), g.clone(), None);
    let (b1, t1) = burn_adamw.step(1e-2, w.clone(), g.clone(), None);
    let (held_w, held_g, held_m) = (
        bits(&w1),
        bits(&g),
        bits(&s1.as_ref().unwrap().momentum.moment_1),
    );
    let keep = (
        w1.clone(),
        g.clone(),
        s1.as_ref().unwrap().momentum.moment_1.clone(),
    );
    let (w2, s2) = fused.step(1e-2, w1, g.clone(), s1);
    let (b2, t2) = burn_adamw.step(1e-2, b1, g, t1);
    assert_eq!(bits(&keep.0), held_w, "a held parameter was written over");
    assert_eq!(bits(&keep.1), held_g, "a held gradient was written over");
    assert_eq!(bits(&keep.2), held_m, "a held moment was written over");
    assert_eq!(adamw_bits(&w2, &s2), adamw_bits(&b2, &t2));
}

#[test]
fn should_load_burn_adamw_records_into_the_fused_adamw() {
    // The state is burn's AdamWState: a record saved by burn's AdamW continues under the
    // fused one with burn's results, and the other way round.
    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::{GradientsParams, ModuleOptimizer};
    use memtrain::optim::FusedAdamW;

    let d = device().autodiff();
    d.seed(13);
    let x = Tensor::<2>::random([8, 6], Distribution::Normal(0.0, 1.0), &d);
    let grads = |m: &Linear| {
        GradientsParams::from_grads(m.forward(x.clone()).powi_scalar(2).sum().backward(), m)
    };
    let run = |mut model: Linear, mut opt: ModuleOptimizer, steps: usize| {
        for _ in 0..steps {
            let g = grads(&model);
            model = opt.step(1e-2, model, g);
        }
        (model, opt)
    };
    let weight = |m: &Linear| bits(&m.weight.val().inner());
    let model = LinearConfig::new(6, 5).init(&d);
    let (model, burn_opt) = run(model, burn::optim::AdamWConfig::new().init(), 2);
    let record = burn_opt.to_record();
    let (by_burn, _) = run(model.clone(), burn_opt, 3);
    let fused = ModuleOptimizer::from(FusedAdamW::default()).load_record(record);
    let (by_fused, fused) = run(model.clone(), fused, 3);
    assert_eq!(weight(&by_burn), weight(&by_fused));
    // And back: the fused optimizer's record under burn's AdamW.
    let (after_fused, _) = run(by_fused.clone(), fused.clone(), 1);
    let burn_again = burn::optim::AdamWConfig::new()
        .init()
        .load_record(fused.to_record());
    let (after_burn, _) = run(by_fused, burn_again, 1);
    assert_eq!(weight(&after_fused), weight(&after_burn));
    let _ = model.num_params();
}

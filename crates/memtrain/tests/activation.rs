//! Inverted activations: the derivative recovered from the output against the exact one,
//! the op against burn's exact activations, and finite differences in f64.

use burn::tensor::activation::{gelu, sigmoid, silu, softplus};
use burn::tensor::{Device, Distribution, Tensor};
use memtrain::activation::{ActFn, InvertedConfig, inverted_activation};

/// Inputs: a 1e-3 grid over [-10, 10] and 1e5 N(0, 1) samples (seeded).
fn inputs() -> Vec<f32> {
    let mut xs: Vec<f32> = (0..=20_000).map(|i| -10.0 + i as f32 * 1e-3).collect();
    let mut state = 7u64;
    let mut uniform = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    for _ in 0..50_000 {
        // Box-Muller: two N(0, 1) samples.
        let (u, v) = (uniform(), uniform());
        let r = (-2.0 * u.ln()).sqrt();
        xs.push((r * (2.0 * std::f64::consts::PI * v).cos()) as f32);
        xs.push((r * (2.0 * std::f64::consts::PI * v).sin()) as f32);
    }
    xs
}

/// (max absolute error, max relative error where |f'| >= 0.05) of the recovered derivative.
fn errors(func: ActFn) -> (f64, f64) {
    let x_min = func.argmin().unwrap_or(f64::NEG_INFINITY) as f32;
    let (mut abs, mut rel) = (0f64, 0f64);
    for x in inputs() {
        let y = func.f32(x);
        let got = func.derivative_from_output(y, x < x_min) as f64;
        let want = func.df(x as f64);
        let e = (got - want).abs();
        abs = abs.max(e);
        if want.abs() >= 0.05 {
            rel = rel.max(e / want.abs());
        }
    }
    (abs, rel)
}

#[test]
fn should_recover_the_derivative_within_the_documented_error() {
    for func in ActFn::INVERTIBLE {
        let (abs, rel) = errors(func);
        println!("{func:?}: max abs {abs:.2e}, max rel (|f'| >= 0.05) {rel:.2e}");
        assert!(abs <= 1e-3, "{func:?}: max absolute error {abs:e}");
        assert!(rel <= 1e-4, "{func:?}: max relative error {rel:e}");
    }
}

#[test]
fn should_match_f_prime_by_finite_differences_in_f64() {
    // The f64 derivatives the tables are fitted to, against central differences.
    for func in ActFn::INVERTIBLE {
        for i in 0..=400 {
            let x = -10.0 + i as f64 * 0.05;
            let h = 1e-6;
            let numeric = (func.f(x + h) - func.f(x - h)) / (2.0 * h);
            assert!(
                (numeric - func.df(x)).abs() <= 1e-8 + 1e-7 * numeric.abs(),
                "{func:?} at {x}: f' {} vs numeric {numeric}",
                func.df(x)
            );
        }
    }
}

#[test]
fn should_match_golden_values() {
    // GELU(1) = Φ(1) = 0.841345; GELU'(1) = Φ(1) + φ(1) = 0.841345 + 0.241971 = 1.083315.
    // SiLU(-1) = -σ(-1) = -0.268941; SiLU'(-1) = σ(-1)(1 - (1 - σ(-1))) = σ(-1)² = 0.072329.
    let close = |a: f64, b: f64| (a - b).abs() < 1e-5;
    assert!(close(ActFn::Gelu.f(1.0), 0.841_345) && close(ActFn::Gelu.df(1.0), 1.083_315));
    assert!(close(ActFn::Silu.f(-1.0), -0.268_941) && close(ActFn::Silu.df(-1.0), 0.072_329));
    let y = ActFn::Gelu.f32(1.0);
    assert!((ActFn::Gelu.derivative_from_output(y, false) - 1.083_315).abs() < 1e-5);
    let y = ActFn::Silu.f32(-1.0);
    assert!((ActFn::Silu.derivative_from_output(y, false) - 0.072_329).abs() < 1e-5);
}

type Exact = fn(Tensor<3>) -> Tensor<3>;

#[test]
fn should_match_burn_exact_activations_output_and_gradient() {
    let device = Device::flex().autodiff();
    device.seed(3);
    let x0 = Tensor::<3>::random([4, 33, 17], Distribution::Normal(0.0, 2.0), &device);
    let w = Tensor::<3>::random([4, 33, 17], Distribution::Default, &device);
    let cases: [(ActFn, Exact); 5] = [
        (ActFn::Gelu, gelu),
        (ActFn::Silu, silu),
        (ActFn::Sigmoid, sigmoid),
        (ActFn::Tanh, |x| x.tanh()),
        (ActFn::Softplus, |x| softplus(x, 1.0)),
    ];
    for (func, exact) in cases {
        let layer = InvertedConfig::new(func).init().unwrap();
        let module = |x| layer.forward(x);
        let run = |f: &dyn Fn(Tensor<3>) -> Tensor<3>| {
            let x = x0.clone().require_grad();
            let y = f(x.clone());
            let g = (y.clone() * w.clone()).sum().backward();
            (y.inner(), x.grad(&g).unwrap())
        };
        let (y1, g1) = run(&exact);
        let (y2, g2) = run(&module);
        let (y3, _) = run(&|x| inverted_activation(x, func));
        assert!(
            y2.clone().all_close(y1, Some(1e-5), Some(1e-6)),
            "{func:?} output"
        );
        assert!(
            y3.all_close(y2, Some(0.0), Some(0.0)),
            "{func:?}: module and function differ"
        );
        // The recovered derivative is within 1e-4 absolute (f32 rounding of y near the
        // minimum) and 1e-5 relative elsewhere; the weights w are below 1.
        let diff = (g2.clone() - g1.clone()).abs().max().into_scalar::<f32>();
        assert!(
            g2.all_close(g1, Some(1e-4), Some(1e-4)),
            "{func:?} gradient: max difference {diff}"
        );
    }
}

#[test]
fn should_refuse_a_function_it_cannot_invert() {
    for func in [
        ActFn::Relu,
        ActFn::Elu,
        ActFn::Mish,
        ActFn::GeluTanh,
        ActFn::LeakyRelu,
    ] {
        let e = InvertedConfig::new(func).init().unwrap_err().to_string();
        assert!(e.contains(func.name()) && e.contains("gelu"), "{e}");
    }
}

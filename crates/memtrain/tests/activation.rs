//! Inverted activations: the derivative recovered from the output against the exact one,
//! the op against burn's exact activations, and finite differences in f64.

use burn::tensor::activation::{gelu, sigmoid, silu, softplus};
use burn::tensor::{DType, Device, Distribution, Tensor, TensorData};
use memtrain::activation::{ActFn, InvertedConfig, inverted_activation};

mod common;

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
        let run = |f: &dyn Fn(Tensor<3>) -> Tensor<3>| {
            let x = x0.clone().require_grad();
            let y = f(x.clone());
            let g = (y.clone() * w.clone()).sum().backward();
            (y.inner(), x.grad(&g).unwrap())
        };
        let (y_exact, g_exact) = run(&exact);
        // The layer and the free function, each against burn's activation.
        let ours: [(&str, &dyn Fn(Tensor<3>) -> Tensor<3>); 2] = [
            ("module", &|x| layer.forward(x)),
            ("function", &|x| inverted_activation(x, func)),
        ];
        for (name, f) in ours {
            let (y, g) = run(f);
            assert!(
                y.all_close(y_exact.clone(), Some(1e-5), Some(1e-6)),
                "{func:?} {name}: output"
            );
            // The recovered derivative is within 1e-4 absolute (f32 rounding of y near the
            // minimum) and 1e-5 relative elsewhere; the weights w are below 1.
            let diff = (g.clone() - g_exact.clone())
                .abs()
                .max()
                .into_scalar::<f32>();
            assert!(
                g.all_close(g_exact.clone(), Some(1e-4), Some(1e-4)),
                "{func:?} {name}: gradient, max difference {diff}"
            );
        }
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

/// The op's backward in f64 (output kept, derivative recovered from it and the branch bit)
/// against central differences of `L(x) = Σ w ∘ f(x)` in plain f64. Inputs include points just
/// either side of GELU's and SiLU's minimum, where a wrong branch bit flips the derivative's
/// sign. Tolerance: the branch tables' documented accuracy (max absolute error below 1e-4,
/// relative 1e-5 away from the minimum) with |w| < 1.
#[test]
fn should_match_central_differences_in_f64() {
    let device = Device::flex().autodiff();
    let mut state = 21u64;
    for func in ActFn::INVERTIBLE {
        let mut xs: Vec<f64> = common::uniform(&mut state, 48)
            .iter()
            .map(|u| 6.0 * u)
            .collect();
        xs.extend([-9.0, 9.0]);
        if let Some(m) = func.argmin() {
            xs.extend([m - 0.5, m - 1e-2, m + 1e-2, m + 0.5]);
        }
        let ws = common::uniform(&mut state, xs.len());
        let f64s = (&device, DType::F64);
        let n = xs.len();
        let x = Tensor::<1>::from_data(TensorData::new(xs.clone(), [n]), f64s).require_grad();
        let w = Tensor::<1>::from_data(TensorData::new(ws.clone(), [n]), f64s);
        let y = inverted_activation(x.clone(), func);
        assert_eq!(y.dtype(), DType::F64, "{func:?}");
        let ys: Vec<f64> = y.clone().inner().into_data().iter::<f64>().collect();
        for (i, (&got, &x)) in ys.iter().zip(&xs).enumerate() {
            let want = func.f(x);
            assert!(
                (got - want).abs() <= 1e-12 * (1.0 + want.abs()),
                "{func:?}: y[{i}] = {got}, f({x}) = {want}"
            );
        }
        let grads = (y * w).sum().backward();
        let dx: Vec<f64> = x.grad(&grads).unwrap().into_data().iter::<f64>().collect();
        common::assert_matches_central_differences(
            &[xs],
            &[dx],
            |p| p[0].iter().zip(&ws).map(|(&x, w)| w * func.f(x)).sum(),
            (1e-5, 1e-4, 1e-4),
            &format!("inverted {func:?} in f64"),
        );
    }
}

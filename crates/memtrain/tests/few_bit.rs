//! Few-bit activations: golden values, the exact activations, the DP's predicted error
//! against the measured gradient error (statistics), and the CLI-facing validation.

use burn::tensor::activation::{gelu, relu};
use burn::tensor::{DType, Device, Distribution, Tensor, TensorData};
use memtrain::activation::{ActFn, FewBitConfig, QuantizeParams, Weight, quantize_derivative};

#[allow(dead_code)] // uses `uniform` only
mod common;

fn grad_of(
    act: &dyn Fn(Tensor<1>) -> Tensor<1>,
    xs: &[f32],
    device: &Device,
) -> (Vec<f32>, Vec<f32>) {
    let x = Tensor::<1>::from_data(TensorData::new(xs.to_vec(), [xs.len()]), device).require_grad();
    let y = act(x.clone());
    let g = y.clone().sum().backward();
    let dx: Vec<f32> = x.grad(&g).unwrap().into_data().iter::<f32>().collect();
    (y.inner().into_data().iter::<f32>().collect(), dx)
}

#[test]
fn should_give_relu_exactly_at_one_bit() {
    // Golden: one border at 0, levels 0 and 1: the exact ReLU derivative.
    let device = Device::flex().autodiff();
    let act = FewBitConfig::new(ActFn::Relu, 1).init().unwrap();
    let t = act.table();
    assert_eq!(t.borders.len(), 3);
    assert!(
        t.borders[1].abs() < 1e-9 && t.levels[0].abs() < 1e-12 && (t.levels[1] - 1.0).abs() < 1e-12
    );
    let xs = [-3.0f32, -0.5, 0.25, 2.0];
    let (y, dx) = grad_of(&|x| act.forward(x), &xs, &device);
    let close = |a: &[f32], b: &[f32], what: &str| {
        for (i, (u, v)) in a.iter().zip(b).enumerate() {
            assert!((u - v).abs() <= 1e-7, "{what}[{i}]: {u} vs {v}");
        }
    };
    close(&y, &[0.0, 0.0, 0.25, 2.0], "y");
    close(&dx, &[0.0, 0.0, 1.0, 1.0], "dx");
    let (_, exact) = grad_of(&relu, &xs, &device);
    close(&dx, &exact, "dx against burn's ReLU");
}

#[test]
fn should_compute_the_forward_exactly_and_the_gradient_from_the_table() {
    let device = Device::flex().autodiff();
    device.seed(11);
    let x = Tensor::<1>::random([5000], Distribution::Normal(0.0, 2.0), &device);
    let xs: Vec<f32> = x.into_data().iter::<f32>().collect();
    for bits in [1, 2, 3, 4, 8] {
        let act = FewBitConfig::new(ActFn::Gelu, bits).init().unwrap();
        let (y, dx) = grad_of(&|x| act.forward(x), &xs, &device);
        let (y_exact, _) = grad_of(&gelu, &xs, &device);
        for (a, b) in y.iter().zip(&y_exact) {
            assert!(
                (a - b).abs() <= 1e-6 + 1e-6 * b.abs(),
                "bits {bits}: forward {a} vs {b}"
            );
        }
        for (x, d) in xs.iter().zip(&dx) {
            let want = act.table().derivative(*x as f64) as f32;
            assert!(
                (d - want).abs() <= 1e-6,
                "bits {bits}: dx at {x} = {d}, table says {want}"
            );
        }
    }
}

#[test]
fn should_match_the_exact_derivative_to_the_grid_resolution_at_eight_bits() {
    // With 256 levels each interval is narrow, so |q - f'| is at most about the largest
    // |f''| (0.6 for GELU... below 1 for all of these) times the widest interval.
    for func in [ActFn::Gelu, ActFn::Silu, ActFn::Tanh] {
        let t = quantize_derivative(
            func,
            8,
            QuantizeParams {
                grid: 2048,
                ..Default::default()
            },
        )
        .unwrap();
        let widest = t
            .borders
            .windows(2)
            .map(|b| b[1] - b[0])
            .fold(0.0, f64::max);
        let worst = (0..=20_000)
            .map(|i| -10.0 + i as f64 * 1e-3)
            .map(|x| (t.derivative(x) - func.df(x)).abs())
            .fold(0.0, f64::max);
        assert!(
            worst <= 1.1 * widest && worst < 0.06,
            "{func:?}: worst {worst}, widest interval {widest}"
        );
    }
}

#[test]
fn should_measure_the_error_the_dp_predicts_on_gaussian_inputs() {
    // With the Gaussian weight the DP objective is E[(f'(x) - q(x))²] for x ~ N(0, 1) (the
    // tails beyond ±10 are negligible). The sample mean of the squared gradient error over n
    // inputs must fall within 4 standard errors of it.
    let device = Device::flex().autodiff();
    device.seed(99);
    let n = 200_000;
    let x = Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &device);
    let xs: Vec<f32> = x.into_data().iter::<f32>().collect();
    for bits in [1, 2, 3] {
        let params = QuantizeParams {
            weight: Weight::Gaussian,
            ..Default::default()
        };
        let table = quantize_derivative(ActFn::Gelu, bits, params).unwrap();
        let predicted = table.error / table.total_weight;
        let act = FewBitConfig::new(ActFn::Gelu, bits)
            .init_from(table)
            .unwrap();
        let (_, dx) = grad_of(&|x| act.forward(x), &xs, &device);
        let sq: Vec<f64> = xs
            .iter()
            .zip(&dx)
            .map(|(&x, &d)| (d as f64 - ActFn::Gelu.df(x as f64)).powi(2))
            .collect();
        let mean = sq.iter().sum::<f64>() / n as f64;
        let var = sq.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let se = (var / n as f64).sqrt();
        assert!(
            (mean - predicted).abs() <= 4.0 * se,
            "bits {bits}: measured {mean:e}, predicted {predicted:e}, standard error {se:e}"
        );
    }
}

#[test]
fn should_reject_bad_bits_at_config_time() {
    for bits in [0, 9, 32] {
        let e = FewBitConfig::new(ActFn::Silu, bits)
            .init()
            .unwrap_err()
            .to_string();
        assert!(e.contains(&bits.to_string()) && e.contains("1..=8"), "{e}");
    }
}

/// In f64 the op's gradient is `dy · q(x)` with `q` the piecewise-constant derivative of its
/// table, and `q` on each interval `[a, b]` is the mean of `f'` there (the uniform-weight L2
/// optimum), i.e. the secant slope `(f(b) - f(a)) / (b - a)`, a central difference of `f` in
/// f64. Inputs: random points, every inner border and its two f64 neighbours (the border
/// belongs to the interval on its right, as `FewBitTable::code` says), and points beyond the
/// grid's range. Tolerances: 1e-12 against `q` itself (one product), 1e-5 against the secant
/// (the levels are midpoint sums over grid cells of width h = 20/4096: error about
/// h² |f'''| / 24).
#[test]
fn should_use_the_piecewise_constant_derivative_of_its_table_in_f64() {
    let device = Device::flex().autodiff();
    let mut state = 5u64;
    for func in [ActFn::Gelu, ActFn::Silu, ActFn::Tanh] {
        for bits in [1, 2, 3, 4] {
            let act = FewBitConfig::new(func, bits).init().unwrap();
            let t = act.table().clone();
            let inner = &t.borders[1..t.borders.len() - 1];
            let mut xs: Vec<f64> = common::uniform(&mut state, 40)
                .iter()
                .map(|u| 5.0 * u)
                .collect();
            for &b in inner {
                xs.extend([b.next_down(), b, b.next_up()]);
            }
            xs.extend([-12.0, 12.5]);
            let n = xs.len();
            let ws = common::uniform(&mut state, n);
            let f64s = (&device, DType::F64);
            let x = Tensor::<1>::from_data(TensorData::new(xs.clone(), [n]), f64s).require_grad();
            let w = Tensor::<1>::from_data(TensorData::new(ws.clone(), [n]), f64s);
            let y = act.forward(x.clone());
            assert_eq!(y.dtype(), DType::F64);
            let ys: Vec<f64> = y.clone().inner().into_data().iter::<f64>().collect();
            let grads = (y * w).sum().backward();
            let dx: Vec<f64> = x.grad(&grads).unwrap().into_data().iter::<f64>().collect();
            for i in 0..n {
                let (x, w) = (xs[i], ws[i]);
                let what = format!("{func:?} at {bits} bits, x = {x:e}");
                let fx = func.f(x);
                assert!(
                    (ys[i] - fx).abs() <= 1e-12 * (1.0 + fx.abs()),
                    "{what}: y {} vs f(x) {fx}",
                    ys[i]
                );
                let c = t.code(x);
                let q = t.levels[c];
                assert!(
                    (dx[i] - w * q).abs() <= 1e-12 * (1.0 + q.abs()),
                    "{what}: dx {} vs w q(x) {} (interval {c})",
                    dx[i],
                    w * q
                );
                let (a, b) = (t.borders[c], t.borders[c + 1]);
                let secant = (func.f(b) - func.f(a)) / (b - a);
                assert!(
                    (dx[i] - w * secant).abs() <= 1e-5,
                    "{what}: dx {} vs w × secant on [{a}, {b}] {}",
                    dx[i],
                    w * secant
                );
            }
        }
    }
}

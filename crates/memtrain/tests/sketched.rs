//! Sketched linear backward: exact dX and db, unbiased dW (statistics over seeds), and the
//! Gaussian and row-sampling sketches' variances against their closed forms.

use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{DType, Device, Distribution, Tensor, TensorData};
use memtrain::linear::{SketchKind, SketchedLinearConfig, sketch_rows};

mod common;

const N: usize = 32;
const D_IN: usize = 4;
const D_OUT: usize = 3;
const RATIO: f64 = 0.25;

struct Grads {
    dx: Vec<f32>,
    dw: Vec<f32>,
    db: Vec<f32>,
}

fn setup(device: &Device) -> (Linear, Tensor<2>, Tensor<2>) {
    device.seed(17);
    let linear = LinearConfig::new(D_IN, D_OUT).init(device);
    let x = Tensor::<2>::random([N, D_IN], Distribution::Normal(0.0, 1.0), device);
    let w = Tensor::<2>::random([N, D_OUT], Distribution::Normal(0.0, 1.0), device);
    (linear, x, w)
}

fn vec_of<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

fn exact(linear: &Linear, x: &Tensor<2>, w: &Tensor<2>) -> Grads {
    let xg = x.clone().require_grad();
    let g = (linear.forward(xg.clone()) * w.clone()).sum().backward();
    Grads {
        dx: vec_of(xg.grad(&g).unwrap()),
        dw: vec_of(linear.weight.grad(&g).unwrap()),
        db: vec_of(linear.bias.as_ref().unwrap().grad(&g).unwrap()),
    }
}

fn sketched(linear: &Linear, x: &Tensor<2>, w: &Tensor<2>, kind: SketchKind, salt: u64) -> Grads {
    let layer = SketchedLinearConfig::new(D_IN, D_OUT, RATIO)
        .with_kind(kind)
        .with_salt(salt)
        .init_from(linear.clone())
        .unwrap();
    let xg = x.clone().require_grad();
    let g = (layer.forward(xg.clone()) * w.clone()).sum().backward();
    Grads {
        dx: vec_of(xg.grad(&g).unwrap()),
        dw: vec_of(layer.weight.grad(&g).unwrap()),
        db: vec_of(layer.bias.grad(&g).unwrap()),
    }
}

fn close(a: &[f32], b: &[f32], what: &str) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 + 1e-5 * y.abs(),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

#[test]
fn should_keep_dx_db_and_the_output_exact() {
    let device = Device::flex().autodiff();
    let (linear, x, w) = setup(&device);
    let reference = exact(&linear, &x, &w);
    for kind in SketchKind::ALL {
        let got = sketched(&linear, &x, &w, kind, 1);
        close(&got.dx, &reference.dx, "dx");
        close(&got.db, &reference.db, "db");
        let layer = SketchedLinearConfig::new(D_IN, D_OUT, RATIO)
            .with_kind(kind)
            .with_salt(1)
            .init_from(linear.clone())
            .unwrap();
        close(
            &vec_of(layer.forward(x.clone())),
            &vec_of(linear.forward(x.clone())),
            "y",
        );
        assert!(
            got.dw
                .iter()
                .zip(&reference.dw)
                .any(|(a, b)| (a - b).abs() > 1e-3),
            "{kind:?}: dW exact?"
        );
    }
}

#[test]
fn should_estimate_dw_without_bias_and_with_the_predicted_variance() {
    let device = Device::flex().autodiff();
    let (linear, x, w) = setup(&device);
    let dw_exact = exact(&linear, &x, &w).dw;
    let xs = vec_of(x.clone());
    let gs = vec_of(w.clone()); // dY = w for the loss sum(y * w)
    let k = sketch_rows(N, RATIO) as f64;
    let trials = 3000;
    for kind in SketchKind::ALL {
        let samples: Vec<Vec<f32>> = (0..trials)
            .map(|s| sketched(&linear, &x, &w, kind, s as u64 + 100).dw)
            .collect();
        for e in 0..D_IN * D_OUT {
            let v: Vec<f64> = samples.iter().map(|s| f64::from(s[e])).collect();
            let mean = v.iter().sum::<f64>() / trials as f64;
            let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (trials - 1) as f64;
            let se = (var / trials as f64).sqrt();
            assert!(
                (mean - f64::from(dw_exact[e])).abs() <= 4.0 * se,
                "{kind:?} dW[{e}]: mean {mean} exact {} (standard error {se})",
                dw_exact[e]
            );
            let (a, b) = (e / D_OUT, e % D_OUT);
            if kind == SketchKind::Rows {
                // Horvitz-Thompson over a simple random sample of k of the n products
                // t_r = x_ra g_rb: Var = n² (1 - k/n) s² / k, s² their sample variance.
                let t: Vec<f64> = (0..N)
                    .map(|r| f64::from(xs[r * D_IN + a]) * f64::from(gs[r * D_OUT + b]))
                    .collect();
                let tm = t.iter().sum::<f64>() / N as f64;
                let s2 = t.iter().map(|u| (u - tm).powi(2)).sum::<f64>() / (N - 1) as f64;
                let n = N as f64;
                let predicted = n * n * (1.0 - k / n) * s2 / k;
                assert!(
                    (var - predicted).abs() <= 0.2 * predicted,
                    "rows dW[{e}]: variance {var}, closed form {predicted}"
                );
            }
            if kind == SketchKind::Gaussian {
                // Var[(S x_a)·(S g_b)] = (|x_a|² |g_b|² + (x_a·g_b)²) / k for S ~ N(0, 1/k).
                let col = |m: &[f32], c: usize, w: usize| {
                    (0..N)
                        .map(|r| f64::from(m[r * w + c]))
                        .collect::<Vec<f64>>()
                };
                let (xa, gb) = (col(&xs, a, D_IN), col(&gs, b, D_OUT));
                let dot = |p: &[f64], q: &[f64]| p.iter().zip(q).map(|(u, v)| u * v).sum::<f64>();
                let predicted = (dot(&xa, &xa) * dot(&gb, &gb) + dot(&xa, &gb).powi(2)) / k;
                // The sample variance of 3000 draws is within about 3·sqrt(2/3000) = 8% (more
                // for these heavy-tailed products): allow 20%.
                assert!(
                    (var - predicted).abs() <= 0.2 * predicted,
                    "Gaussian dW[{e}]: variance {var}, closed form {predicted}"
                );
            }
        }
    }
}

#[test]
fn should_reject_a_bad_ratio_or_shape() {
    let device = Device::flex();
    for ratio in [0.0, -0.5, 1.5, f64::NAN] {
        let e = SketchedLinearConfig::new(4, 3, ratio)
            .init(&device)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ratio") && e.contains("(0, 1]"), "{e}");
    }
    let e = SketchedLinearConfig::new(5, 3, 0.5)
        .init_from(LinearConfig::new(4, 3).init(&device))
        .unwrap_err();
    assert!(e.to_string().contains("[4, 3]"), "{e}");
}

/// In f64: `dX` and `db` (exact by design) against central differences of
/// `L = Σ g ∘ (X W + b)` in plain f64 (tolerance 1e-8 absolute + 1e-7 relative), and `dW`
/// (unbiased by design) averaged over 1000 sketches within 4 standard errors of its central
/// differences, for every sketch kind. One draw must differ from the exact `dW`: the f64 path
/// does sketch.
#[test]
fn should_match_central_differences_in_f64() {
    let device = Device::flex().autodiff();
    let f64s = (&device, DType::F64);
    let mut state = 23u64;
    let mut rnd = |len: usize| common::uniform(&mut state, len);
    let (xs, ws, bs, gs) = (rnd(N * D_IN), rnd(D_IN * D_OUT), rnd(D_OUT), rnd(N * D_OUT));
    let loss = |p: &[Vec<f64>]| -> f64 {
        let (x, w, b) = (&p[0], &p[1], &p[2]);
        let mut total = 0.0;
        for r in 0..N {
            for o in 0..D_OUT {
                let y = b[o]
                    + (0..D_IN)
                        .map(|i| x[r * D_IN + i] * w[i * D_OUT + o])
                        .sum::<f64>();
                total += gs[r * D_OUT + o] * y;
            }
        }
        total
    };
    let inputs = [xs.clone(), ws.clone(), bs.clone()];
    let dw_numeric = common::central_differences(&inputs, 1, loss, 1e-6);
    let t2 =
        |v: &[f64], s: [usize; 2]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), s), f64s);
    let linear = Linear {
        weight: Param::from_tensor(t2(&ws, [D_IN, D_OUT])),
        bias: Some(Param::from_tensor(Tensor::<1>::from_data(
            TensorData::new(bs.clone(), [D_OUT]),
            f64s,
        ))),
    };
    let g = t2(&gs, [N, D_OUT]);
    let vals = |t: Tensor<2>| -> Vec<f64> { t.into_data().iter::<f64>().collect() };
    let trials = 1000;
    for kind in SketchKind::ALL {
        let run = |salt: u64| {
            let layer = SketchedLinearConfig::new(D_IN, D_OUT, RATIO)
                .with_kind(kind)
                .with_salt(salt)
                .init_from(linear.clone())
                .unwrap();
            let x = t2(&xs, [N, D_IN]).require_grad();
            let y = layer.forward(x.clone());
            assert_eq!(y.dtype(), DType::F64);
            let grads = (y * g.clone()).sum().backward();
            (
                vals(x.grad(&grads).unwrap()),
                vals(layer.weight.grad(&grads).unwrap()),
                layer
                    .bias
                    .grad(&grads)
                    .unwrap()
                    .into_data()
                    .iter::<f64>()
                    .collect::<Vec<f64>>(),
            )
        };
        let (dx, dw, db) = run(0);
        common::assert_matches_central_differences(
            &[xs.clone(), bs.clone()],
            &[dx, db],
            |p| loss(&[p[0].clone(), ws.clone(), p[1].clone()]),
            (1e-6, 1e-8, 1e-7),
            &format!("{kind:?} dX, db"),
        );
        assert!(
            dw.iter()
                .zip(&dw_numeric)
                .any(|(a, b)| (a - b).abs() > 1e-3),
            "{kind:?}: dW exact, not sketched?"
        );
        let samples: Vec<Vec<f64>> = (0..trials).map(|s| run(s as u64 + 1).1).collect();
        for (e, &want) in dw_numeric.iter().enumerate() {
            let v: Vec<f64> = samples.iter().map(|s| s[e]).collect();
            let mean = v.iter().sum::<f64>() / trials as f64;
            let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (trials - 1) as f64;
            let se = (var / trials as f64).sqrt();
            assert!(
                (mean - want).abs() <= 4.0 * se,
                "{kind:?} dW[{e}]: mean of {trials} sketches {mean}, central differences {want} \
                 (standard error {se})"
            );
        }
    }
}

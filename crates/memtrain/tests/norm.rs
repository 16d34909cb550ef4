//! Output-saving LayerNorm against burn's LayerNorm, and finite differences in f64.

use burn::nn::LayerNormConfig;
use burn::tensor::{DType, Device, Distribution, Tensor, TensorData};
use memtrain::norm::{OutputLayerNorm, OutputLayerNormConfig};

mod common;

fn setup(device: &Device, d: usize, gamma: Vec<f32>) -> (OutputLayerNorm, burn::nn::LayerNorm) {
    let mut ours = OutputLayerNormConfig::new(d).init(device).unwrap();
    let beta: Vec<f32> = (0..d).map(|i| (i as f32 * 0.37).sin() * 0.5).collect();
    ours.gamma = burn::module::Param::from_tensor(Tensor::from_data(
        TensorData::new(gamma.clone(), [d]),
        device,
    ));
    ours.beta = burn::module::Param::from_tensor(Tensor::from_data(
        TensorData::new(beta.clone(), [d]),
        device,
    ));
    let mut theirs = LayerNormConfig::new(d).init(device);
    theirs.gamma =
        burn::module::Param::from_tensor(Tensor::from_data(TensorData::new(gamma, [d]), device));
    theirs.beta = Some(burn::module::Param::from_tensor(Tensor::from_data(
        TensorData::new(beta, [d]),
        device,
    )));
    (ours, theirs)
}

fn compare(gamma: Vec<f32>) {
    let device = Device::flex().autodiff();
    device.seed(5);
    let d = gamma.len();
    let (ours, theirs) = setup(&device, d, gamma);
    // 210 rows: several of the fused kernel's 32-row tasks, and a partial last one.
    let x0 = Tensor::<3>::random([3, 70, d], Distribution::Normal(0.5, 2.0), &device);
    let w = Tensor::<3>::random([3, 70, d], Distribution::Default, &device);
    let x1 = x0.clone().require_grad();
    let y1 = ours.forward(x1.clone());
    let g1 = (y1.clone() * w.clone()).sum().backward();
    let x2 = x0.require_grad();
    let y2 = theirs.forward(x2.clone());
    let g2 = (y2.clone() * w).sum().backward();
    assert!(
        y1.inner().all_close(y2.inner(), Some(1e-5), Some(1e-5)),
        "output"
    );
    assert!(
        x1.grad(&g1)
            .unwrap()
            .all_close(x2.grad(&g2).unwrap(), Some(1e-4), Some(1e-5)),
        "dx"
    );
    let dg = |g| ours.gamma.grad(g).unwrap();
    assert!(
        dg(&g1).all_close(theirs.gamma.grad(&g2).unwrap(), Some(1e-4), Some(1e-5)),
        "dgamma"
    );
    assert!(
        ours.beta.grad(&g1).unwrap().all_close(
            theirs.beta.as_ref().unwrap().grad(&g2).unwrap(),
            Some(1e-5),
            Some(1e-5)
        ),
        "dbeta"
    );
}

#[test]
fn should_match_burn_layer_norm() {
    compare(
        (0..24)
            .map(|i| 0.5 + (i as f32 * 0.13).cos().abs())
            .collect(),
    );
    // Negative scales are fine too.
    compare(
        (0..16)
            .map(|i| if i % 2 == 0 { -0.7 } else { 1.3 })
            .collect(),
    );
}

#[test]
fn should_stay_exact_when_a_scale_is_zero() {
    // gamma_3 = 0: x̂ cannot be recovered from the output, so the op keeps it.
    let mut gamma: Vec<f32> = (0..12).map(|i| 1.0 + i as f32 * 0.1).collect();
    gamma[3] = 0.0;
    compare(gamma);
}

#[test]
fn should_match_finite_differences_in_f64() {
    let device = Device::flex().autodiff();
    let (n, d) = (3, 5);
    let xs: Vec<f64> = (0..n * d)
        .map(|i| ((i * 7 % 11) as f64 - 5.0) / 3.0)
        .collect();
    let ws: Vec<f64> = (0..n * d)
        .map(|i| ((i * 3 % 7) as f64 - 3.0) / 2.0)
        .collect();
    let gamma: Vec<f64> = (0..d).map(|i| 0.8 + 0.1 * i as f64).collect();
    let beta: Vec<f64> = (0..d).map(|i| 0.05 * i as f64).collect();
    let f64s = (&device, DType::F64);
    let mut ln = OutputLayerNormConfig::new(d).init(&device).unwrap();
    ln.gamma = burn::module::Param::from_tensor(Tensor::from_data(
        TensorData::new(gamma.clone(), [d]),
        f64s,
    ));
    ln.beta = burn::module::Param::from_tensor(Tensor::from_data(
        TensorData::new(beta.clone(), [d]),
        f64s,
    ));
    let w = Tensor::<2>::from_data(TensorData::new(ws.clone(), [n, d]), f64s);
    let x = Tensor::<2>::from_data(TensorData::new(xs.clone(), [n, d]), f64s).require_grad();
    assert_eq!(x.dtype(), DType::F64);
    let grads = (ln.forward(x.clone()) * w).sum().backward();
    let analytic: Vec<f64> = x.grad(&grads).unwrap().into_data().iter::<f64>().collect();
    // L(x) = Σ w ∘ LayerNorm(x), in plain f64.
    let loss = |xs: &[f64]| -> f64 {
        let mut total = 0.0;
        for r in 0..n {
            let row = &xs[r * d..(r + 1) * d];
            let mean = row.iter().sum::<f64>() / d as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
            let rstd = 1.0 / (var + 1e-5).sqrt();
            for j in 0..d {
                total += ws[r * d + j] * ((row[j] - mean) * rstd * gamma[j] + beta[j]);
            }
        }
        total
    };
    for i in 0..n * d {
        let mut up = xs.clone();
        up[i] += 1e-6;
        let mut down = xs.clone();
        down[i] -= 1e-6;
        let numeric = (loss(&up) - loss(&down)) / 2e-6;
        assert!(
            (numeric - analytic[i]).abs() <= 1e-7 + 1e-6 * numeric.abs(),
            "element {i}: analytic {} numeric {numeric}",
            analytic[i]
        );
    }
}

/// Every gradient (`dx`, `dγ`, `dβ`) against central differences of `L = Σ w ∘ LayerNorm(x)`
/// in plain f64, both when `x̂` is recovered from the output (every `γ_j` away from zero) and
/// when the op keeps it (one `γ_j = 0`). Tolerance 1e-8 absolute + 1e-6 relative.
#[test]
fn should_match_finite_differences_in_f64_for_every_parameter() {
    let device = Device::flex().autodiff();
    let f64s = (&device, DType::F64);
    let (n, d) = (4, 6);
    let mut state = 41u64;
    let mut rnd = |len: usize| common::uniform(&mut state, len);
    let (xs, ws, beta) = (
        rnd(n * d)
            .iter()
            .map(|v| 2.0 * v + 0.3)
            .collect::<Vec<f64>>(),
        rnd(n * d),
        rnd(d),
    );
    let scales: Vec<f64> = rnd(d).iter().map(|v| 0.5 + v.abs()).collect();
    let mut with_zero = scales.clone();
    with_zero[2] = 0.0;
    let loss = |p: &[Vec<f64>]| -> f64 {
        let (x, gamma, beta) = (&p[0], &p[1], &p[2]);
        let mut total = 0.0;
        for r in 0..n {
            let row = &x[r * d..(r + 1) * d];
            let mean = row.iter().sum::<f64>() / d as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
            let rstd = 1.0 / (var + 1e-5).sqrt();
            for j in 0..d {
                total += ws[r * d + j] * ((row[j] - mean) * rstd * gamma[j] + beta[j]);
            }
        }
        total
    };
    for gamma in [scales, with_zero] {
        let t1 = |v: &[f64]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [d]), f64s);
        let mut ln = OutputLayerNormConfig::new(d).init(&device).unwrap();
        ln.gamma = burn::module::Param::from_tensor(t1(&gamma));
        ln.beta = burn::module::Param::from_tensor(t1(&beta));
        let x = Tensor::<2>::from_data(TensorData::new(xs.clone(), [n, d]), f64s).require_grad();
        let w = Tensor::<2>::from_data(TensorData::new(ws.clone(), [n, d]), f64s);
        let y = ln.forward(x.clone());
        assert_eq!(y.dtype(), DType::F64);
        let grads = (y * w).sum().backward();
        let vals = |t: Tensor<1>| -> Vec<f64> { t.into_data().iter::<f64>().collect() };
        let analytic = [
            x.grad(&grads).unwrap().into_data().iter::<f64>().collect(),
            vals(ln.gamma.grad(&grads).unwrap()),
            vals(ln.beta.grad(&grads).unwrap()),
        ];
        common::assert_matches_central_differences(
            &[xs.clone(), gamma.clone(), beta.clone()],
            &analytic,
            loss,
            (1e-6, 1e-8, 1e-6),
            &format!("output LayerNorm, γ = {gamma:?} (inputs: x, γ, β)"),
        );
    }
}

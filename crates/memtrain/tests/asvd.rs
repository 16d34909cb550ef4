//! Activation-whitened SVD (`compress --method asvd`, issue 22): the truncation that is
//! optimal in the metric of the layer's inputs, checked against Eckart–Young on `XW` and on
//! inputs of known low dimension.

use burn::tensor::{Device, Distribution, Tensor};
use memtrain::bert::{
    Calibration, CompressMethod, CompressParams, compress_linear, compress_linear_calibrated,
    whitened_factors,
};
use memtrain::linear::{LinearLayer, LinearLayerConfig};

fn values(t: Tensor<2>) -> Vec<f64> {
    t.into_data().iter::<f64>().collect()
}

fn matmul(a: &[f64], b: &[f64], n: usize, k: usize, m: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * m];
    for i in 0..n {
        for p in 0..k {
            for j in 0..m {
                out[i * m + j] += a[i * k + p] * b[p * m + j];
            }
        }
    }
    out
}

fn gram(x: &[f64], n: usize, d: usize) -> Vec<f64> {
    let mut g = vec![0.0; d * d];
    for r in 0..n {
        for i in 0..d {
            for j in 0..d {
                g[i * d + j] += x[r * d + i] * x[r * d + j];
            }
        }
    }
    g
}

fn frob(a: &[f64]) -> f64 {
    a.iter().map(|v| v * v).sum::<f64>().sqrt()
}

fn diff(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

/// `‖X(W − AB)‖ / ‖XW‖`.
fn activation_error(
    x: &[f64],
    w: &[f64],
    a: &[f64],
    b: &[f64],
    n: usize,
    d: usize,
    o: usize,
) -> f64 {
    let r = a.len() / d;
    let xw = matmul(x, w, n, d, o);
    let xab = matmul(&matmul(x, a, n, d, r), b, n, r, o);
    frob(&diff(&xw, &xab)) / frob(&xw)
}

#[test]
fn should_reach_the_eckart_young_error_of_xw() {
    let device = Device::flex();
    let (n, d, o, r) = (200, 24, 16, 5);
    // Inputs with very different scales per direction, so that whitening matters.
    let scales = Tensor::<2>::from_data(
        burn::tensor::TensorData::new(
            (0..d)
                .map(|i| 10f32.powf(-(i as f32) / 8.0))
                .collect::<Vec<_>>(),
            [1, d],
        ),
        &device,
    );
    let x = Tensor::<2>::random([n, d], Distribution::Normal(0.0, 1.0), &device) * scales;
    let w = Tensor::<2>::random([d, o], Distribution::Normal(0.0, 1.0), &device);
    let (x, w) = (values(x), values(w));
    let (a, b) = whitened_factors(&w, &gram(&x, n, d), d, o, r, &device).unwrap();
    assert_eq!((a.len(), b.len()), (d * r, r * o));
    let err = activation_error(&x, &w, &a, &b, n, d, o);
    // The best any rank-r Ŵ can do: the tail singular values of XW (X has full column rank).
    let xw = matmul(&x, &w, n, d, o);
    let (_, s, _) = memtrain_tt::linalg::svd(Tensor::<2>::from_data(
        burn::tensor::TensorData::new(xw.clone(), [n, o]),
        (&device, burn::tensor::DType::F64),
    ))
    .unwrap();
    let s = values(s.reshape([1, o]));
    let best =
        (s[r..].iter().map(|v| v * v).sum::<f64>() / s.iter().map(|v| v * v).sum::<f64>()).sqrt();
    assert!(
        (err - best).abs() <= 1e-3 * best.max(1e-3) + 1e-4,
        "asvd {err:.6} vs Eckart-Young {best:.6}"
    );
    // Plain SVD of W at the same rank is worse in this metric.
    let (u, sv, vt) = memtrain_tt::linalg::svd(Tensor::<2>::from_data(
        burn::tensor::TensorData::new(w.clone(), [d, o]),
        (&device, burn::tensor::DType::F64),
    ))
    .unwrap();
    let (u, sv, vt) = (values(u), values(sv.reshape([1, o])), values(vt));
    let mut pa = vec![0.0; d * r];
    for i in 0..d {
        for j in 0..r {
            pa[i * r + j] = u[i * o + j] * sv[j];
        }
    }
    let plain = activation_error(&x, &w, &pa, &vt[..r * o], n, d, o);
    assert!(plain > 1.5 * err, "plain SVD {plain:.4} vs asvd {err:.4}");
}

#[test]
fn should_be_lossless_on_inputs_of_lower_dimension_than_the_rank() {
    let device = Device::flex();
    let (n, d, o, k, r) = (120, 32, 32, 4, 6);
    let z = Tensor::<2>::random([n, k], Distribution::Normal(0.0, 1.0), &device);
    let p = Tensor::<2>::random([k, d], Distribution::Normal(0.0, 1.0), &device);
    let x = values(z.matmul(p));
    let w = values(Tensor::<2>::random(
        [d, o],
        Distribution::Normal(0.0, 1.0),
        &device,
    ));
    let (a, b) = whitened_factors(&w, &gram(&x, n, d), d, o, r, &device).unwrap();
    let err = activation_error(&x, &w, &a, &b, n, d, o);
    assert!(
        err < 1e-3,
        "inputs span {k} < rank {r} dimensions, error {err}"
    );
}

#[test]
fn should_compress_a_layer_only_with_its_calibration() {
    let device = Device::flex();
    let layer: LinearLayer = LinearLayerConfig::new(16, 12).init(&device).unwrap();
    let params = CompressParams::new(CompressMethod::Asvd, 2.0);
    let e = compress_linear("fc", &layer, &params)
        .unwrap_err()
        .to_string();
    assert!(e.contains("asvd") && e.contains("calibration"), "{e}");
    let x = values(Tensor::<2>::random(
        [64, 16],
        Distribution::Normal(0.0, 1.0),
        &device,
    ));
    let calibration =
        Calibration::from_grams(vec![("fc".to_string(), 16, gram(&x, 64, 16))], 64).unwrap();
    let (new, report) =
        compress_linear_calibrated("fc", &layer, &params, Some(&calibration)).unwrap();
    assert!(
        report.params_after * 2 <= report.params_before,
        "{report:?}"
    );
    assert_eq!(new.dims(), [16, 12]);
    assert!(Calibration::from_grams(vec![("fc".into(), 16, vec![0.0; 3])], 1).is_err());
    // "asvd" parses and is listed in the error for an unknown method.
    assert_eq!(
        "asvd".parse::<CompressMethod>().unwrap(),
        CompressMethod::Asvd
    );
    let e = "pca".parse::<CompressMethod>().unwrap_err().to_string();
    assert!(e.contains("asvd"), "{e}");
}

#[test]
fn should_give_ranks_where_they_keep_the_most_energy_within_the_budget() {
    use memtrain::bert::{Spectrum, allocate_ranks};
    let device = Device::flex();
    let (d_in, d_out) = (16, 12);
    // One layer of rank 2 (two directions hold all its energy), one of full rank.
    let low = values(
        Tensor::<2>::random([d_in, 2], Distribution::Normal(0.0, 1.0), &device).matmul(
            Tensor::<2>::random([2, d_out], Distribution::Normal(0.0, 1.0), &device),
        ),
    );
    let full = values(Tensor::<2>::random(
        [d_in, d_out],
        Distribution::Normal(0.0, 1.0),
        &device,
    ));
    let spectra: Vec<Spectrum> = [&low, &full]
        .iter()
        .map(|w| Spectrum::new(w, None, d_in, d_out, &device).unwrap())
        .collect();
    assert!(
        spectra[0].tail_energy(2) < 1e-10,
        "{}",
        spectra[0].tail_energy(2)
    );
    let shapes = [[d_in, d_out]; 2];
    let cost = d_in + d_out;
    let mut previous = vec![0, 0];
    for budget in [2 * cost, 4 * cost, 6 * cost, 9 * cost] {
        let ranks = allocate_ranks(&shapes, &spectra, budget).unwrap();
        assert!(
            ranks.iter().sum::<usize>() * cost <= budget,
            "{ranks:?} over {budget}"
        );
        assert!(ranks.iter().all(|&r| r >= 1));
        assert!(
            ranks.iter().zip(&previous).all(|(r, p)| r >= p),
            "{ranks:?} after {previous:?}"
        );
        // The rank-2 layer never gets more than the two ranks that hold its energy.
        assert!(ranks[0] <= 2, "{ranks:?}");
        previous = ranks;
    }
    assert_eq!(previous[0], 2);
    let e = allocate_ranks(&shapes, &spectra, cost)
        .unwrap_err()
        .to_string();
    assert!(e.contains("rank 1 in every layer"), "{e}");
    // The plain spectrum's factors are the truncated SVD: rank 2 reproduces the rank-2 layer.
    let (a, b) = spectra[0].factors(2);
    let rebuilt = matmul(&a, &b, d_in, 2, d_out);
    // `low` is an f32 product: rank 2 up to f32 rounding.
    assert!(frob(&diff(&rebuilt, &low)) < 1e-5 * frob(&low));
}

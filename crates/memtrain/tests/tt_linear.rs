//! TT-matrix linear layer: forward equals the dense product with the reconstructed weight;
//! the custom backward climbs the oracle ladder (golden values, the autodiff reference op,
//! finite differences in f64); bad configurations give clear errors.

use burn::module::Param;
use burn::nn::LinearConfig;
use burn::tensor::{DType, Device, Distribution, Tensor, TensorData};
use memtrain::linear::{TtLinear, TtLinearConfig};
use memtrain::tt::TtMatrix;
use proptest::prelude::*;

fn ad() -> Device {
    Device::flex().autodiff()
}

fn vals<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data().convert::<f64>().iter::<f64>().collect()
}

fn f64_tensor<const D: usize>(v: Vec<f64>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v, shape), (device, DType::F64))
}

struct Grads {
    dx: Vec<f64>,
    dcores: Vec<f64>,
    db: Vec<f64>,
}

/// Gradients of `sum(layer(x) * w)` through the custom op or the reference.
fn grads(layer: &TtLinear, x: &Tensor<2>, w: &Tensor<2>, reference: bool) -> Grads {
    let xg = x.clone().require_grad();
    let y = if reference {
        layer.forward_reference(xg.clone())
    } else {
        layer.forward(xg.clone())
    };
    let g = (y * w.clone()).sum().backward();
    Grads {
        dx: vals(xg.grad(&g).unwrap()),
        dcores: vals(layer.cores.grad(&g).unwrap()),
        db: vals(layer.bias.as_ref().unwrap().grad(&g).unwrap()),
    }
}

fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    let scale = b.iter().map(|v| v.abs()).fold(1.0, f64::max);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * scale, "{what}[{i}]: {x} vs {y}");
    }
}

#[test]
fn should_match_golden_gradients_of_a_rank_one_outer_product() {
    // rows [2, 1], cols [1, 2], rank 1: W[i, j] = a_i b_j. With x = [1, 2], a = [3, 4],
    // b = [5, 6], w = [1, -1]: b·w = -1, x·a = 11, so dL/da = x (b·w) = [-1, -2],
    // dL/db = (x·a) w = [11, -11], dL/dx = a (b·w) = [-3, -4], dL/dbias = w.
    let device = ad();
    let cores = vec![
        Tensor::<4>::from_data(TensorData::new(vec![3.0f32, 4.0], [1, 2, 1, 1]), &device),
        Tensor::<4>::from_data(TensorData::new(vec![5.0f32, 6.0], [1, 1, 2, 1]), &device),
    ];
    let m = TtMatrix::new(cores).unwrap();
    let layer = TtLinearConfig::for_matrix(&m, true)
        .init_from_matrix(&m, Some(Tensor::zeros([2], &device)))
        .unwrap();
    let x = Tensor::<2>::from_data([[1.0f32, 2.0]], &device);
    let w = Tensor::<2>::from_data([[1.0f32, -1.0]], &device);
    let y = vals(layer.forward(x.clone()));
    // Small integers: f32 computes them exactly, the tolerance is only there to avoid `==`.
    close(&y, &[55.0, 66.0], 1e-6, "y");
    let g = grads(&layer, &x, &w, false);
    close(&g.dcores, &[-1.0, -2.0, 11.0, -11.0], 1e-6, "dcores");
    close(&g.dx, &[-3.0, -4.0], 1e-6, "dx");
    close(&g.db, &[1.0, -1.0], 1e-6, "db");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn should_equal_the_dense_product_and_the_reference_gradients(
        rows in prop::collection::vec(2usize..4, 2..4),
        rank in 1usize..5,
        batch in 1usize..6,
        seed in 0u64..1000,
    ) {
        let device = ad();
        device.seed(seed);
        let cols: Vec<usize> = rows.iter().rev().map(|m| m + 1).collect();
        let (d_in, d_out) = (rows.iter().product(), cols.iter().product());
        let layer = TtLinearConfig::new(d_in, d_out, rank)
            .with_modes(Some((rows.clone(), cols.clone())))
            .init(&device)
            .unwrap();
        let x = Tensor::<2>::random([batch, d_in], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<2>::random([batch, d_out], Distribution::Normal(0.0, 1.0), &device);
        // Forward: the dense product with the reconstructed weight.
        let dense = layer.to_linear();
        close(&vals(layer.forward(x.clone())), &vals(dense.forward(x.clone())), 1e-5, "y");
        // Backward: the custom op against autodiff through the contraction.
        let (got, want) = (grads(&layer, &x, &w, false), grads(&layer, &x, &w, true));
        close(&got.dx, &want.dx, 1e-5, "dx");
        close(&got.dcores, &want.dcores, 1e-5, "dcores");
        close(&got.db, &want.db, 1e-6, "db");
    }
}

#[test]
fn should_match_finite_differences_in_f64() {
    let device = ad();
    let (rows, cols, ranks) = ([2usize, 3, 2], [3usize, 2, 2], [1usize, 3, 2, 1]);
    let mut seed = 1u64;
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    };
    let cores: Vec<Tensor<4>> = (0..3)
        .map(|k| {
            let dims = [ranks[k], rows[k], cols[k], ranks[k + 1]];
            let n = dims.iter().product();
            f64_tensor((0..n).map(|_| next()).collect(), dims, &device)
        })
        .collect();
    let m = TtMatrix::new(cores).unwrap();
    let bias = f64_tensor((0..12).map(|_| next()).collect(), [12], &device);
    let layer = TtLinearConfig::for_matrix(&m, true)
        .init_from_matrix(&m, Some(bias))
        .unwrap();
    let x = f64_tensor((0..2 * 12).map(|_| next()).collect(), [2, 12], &device);
    let w = f64_tensor((0..2 * 12).map(|_| next()).collect(), [2, 12], &device);
    let g = grads(&layer, &x, &w, false);
    let loss = |layer: &TtLinear, x: &Tensor<2>| -> f64 {
        (layer.forward(x.clone().detach()) * w.clone())
            .sum()
            .into_scalar::<f64>()
    };
    let h = 1e-6;
    let flat = vals(layer.cores.val());
    for i in (0..flat.len()).step_by(5) {
        let bump = |delta: f64| {
            let mut v = flat.clone();
            v[i] += delta;
            let mut l2 = layer.clone();
            l2.cores = Param::from_tensor(f64_tensor(v, [flat.len()], &device));
            loss(&l2, &x)
        };
        let fd = (bump(h) - bump(-h)) / (2.0 * h);
        assert!(
            (fd - g.dcores[i]).abs() <= 1e-6 * fd.abs().max(1.0),
            "core {i}: {fd} vs {}",
            g.dcores[i]
        );
    }
    let bv = vals(layer.bias.as_ref().unwrap().val());
    for i in 0..bv.len() {
        let bump = |delta: f64| {
            let mut v = bv.clone();
            v[i] += delta;
            let mut l2 = layer.clone();
            l2.bias = Some(Param::from_tensor(f64_tensor(v, [bv.len()], &device)));
            loss(&l2, &x)
        };
        let fd = (bump(h) - bump(-h)) / (2.0 * h);
        assert!(
            (fd - g.db[i]).abs() <= 1e-6 * fd.abs().max(1.0),
            "bias {i}: {fd} vs {}",
            g.db[i]
        );
    }
    let xv = vals(x.clone());
    for i in (0..xv.len()).step_by(3) {
        let bump = |delta: f64| {
            let mut v = xv.clone();
            v[i] += delta;
            loss(&layer, &f64_tensor(v, [2, 12], &device))
        };
        let fd = (bump(h) - bump(-h)) / (2.0 * h);
        assert!(
            (fd - g.dx[i]).abs() <= 1e-6 * fd.abs().max(1.0),
            "x {i}: {fd} vs {}",
            g.dx[i]
        );
    }
}

#[test]
fn should_convert_from_and_to_a_dense_layer() {
    let device = Device::flex();
    device.seed(3);
    let dense = LinearConfig::new(24, 30).init(&device);
    // Full rank: exact up to f32 round-off.
    let full = TtLinearConfig::new(24, 30, 1000)
        .with_modes(Some((vec![2, 3, 4], vec![2, 3, 5])))
        .init_from(&dense, 0.0)
        .unwrap();
    close(
        &vals(full.to_linear().weight.val()),
        &vals(dense.weight.val()),
        1e-5,
        "W",
    );
    close(
        &vals(full.bias.as_ref().unwrap().val()),
        &vals(dense.bias.as_ref().unwrap().val()),
        1e-7,
        "b",
    );
    let low = TtLinearConfig::new(24, 30, 2)
        .with_modes(Some((vec![2, 3, 4], vec![2, 3, 5])))
        .init_from(&dense, 0.0)
        .unwrap();
    assert_eq!(low.ranks(), vec![1, 2, 2, 1]);
    assert!(low.param_count() < full.param_count());
}

#[test]
fn should_init_like_a_dense_layer() {
    let device = Device::flex();
    device.seed(4);
    let layer = TtLinearConfig::new(384, 1536, 48).init(&device).unwrap();
    assert_eq!(layer.modes(), (vec![6, 8, 8], vec![8, 12, 16]));
    assert_eq!(
        layer.param_count(),
        48 * 48 + 48 * 96 * 48 + 48 * 128 + 1536
    );
    let w = vals(layer.to_linear().weight.val());
    let var = w.iter().map(|x| x * x).sum::<f64>() / w.len() as f64;
    let want = 1.0 / (3.0 * 384.0);
    assert!(
        (var / want - 1.0).abs() < 0.25,
        "variance {var}, Kaiming {want}"
    );
}

#[test]
fn should_reject_bad_configurations() {
    let device = Device::flex();
    let e = TtLinearConfig::new(24, 30, 0)
        .init(&device)
        .unwrap_err()
        .to_string();
    assert!(e.contains("TT rank") && e.contains("at least 1"), "{e}");
    let e = TtLinearConfig::new(7, 30, 2)
        .init(&device)
        .unwrap_err()
        .to_string();
    assert!(e.contains("7 = [7] into 3 modes"), "{e}");
    let e = TtLinearConfig::new(24, 30, 2)
        .with_modes(Some((vec![2, 12], vec![5, 7])))
        .init(&device)
        .unwrap_err()
        .to_string();
    assert!(e.contains("products 24 and 30"), "{e}");
    let e = TtLinearConfig::new(24, 30, 2)
        .init_from(&LinearConfig::new(30, 24).init(&device), 0.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[30, 24]") && e.contains("[24, 30]"), "{e}");
}

#[test]
fn should_agree_on_both_contraction_orders() {
    // Rank 48 at 384 -> 1536 makes the sweep costlier than the dense product for many rows,
    // rank 2 the other way round: both paths against the dense layer, with gradients.
    let device = ad();
    device.seed(11);
    for (rank, n) in [(48, 256), (2, 256), (48, 2)] {
        let layer = TtLinearConfig::new(384, 1536, rank).init(&device).unwrap();
        let x = Tensor::<3>::random([2, n / 2, 384], Distribution::Normal(0.0, 1.0), &device);
        let dense = layer.to_linear();
        close(
            &vals(layer.forward(x.clone())),
            &vals(dense.forward(x.clone())),
            1e-4,
            "y",
        );
        let x2 = x.reshape([n, 384]);
        let w = Tensor::<2>::random([n, 1536], Distribution::Normal(0.0, 1.0), &device);
        let (got, want) = (grads(&layer, &x2, &w, false), grads(&layer, &x2, &w, true));
        close(&got.dx, &want.dx, 1e-4, "dx");
        close(&got.dcores, &want.dcores, 1e-4, "dcores");
    }
}

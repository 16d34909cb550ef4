//! Tensor-train core: TT-SVD, rounding, products and norms against dense f64 references
//! (property tests), and clear errors for bad input.

use burn::tensor::{DType, Device, Tensor, TensorData};
use memtrain_tt::{Truncation, TtMatrix, TtTensor, factorize, tt_svd, tt_svd_shaped};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn device() -> Device {
    Device::flex()
}

/// A f64 tensor with N(0, 1)-ish entries from `seed`.
fn random_f64(shape: &[usize], seed: u64) -> Tensor<1> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| rng.random::<f64>() * 2.0 - 1.0 + (rng.random::<f64>() - 0.5))
        .collect();
    Tensor::from_data(TensorData::new(v, [n]), (&device(), DType::F64))
}

fn values(t: Tensor<1>) -> Vec<f64> {
    t.into_data().iter::<f64>().collect()
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// A random f64 TT with the given inner ranks.
fn random_tt(shape: &[usize], ranks: &[usize], seed: u64) -> TtTensor {
    let cores = shape
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            let dims = [ranks[k], n, ranks[k + 1]];
            random_f64(&dims, seed + k as u64).reshape(dims)
        })
        .collect();
    TtTensor::new(cores).unwrap()
}

fn shape_strategy() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(2usize..5, 2..5)
}

fn ranks_for(shape: &[usize], r: usize) -> Vec<usize> {
    let mut ranks = vec![1; shape.len() + 1];
    for k in 1..shape.len() {
        let left: usize = shape[..k].iter().product();
        let right: usize = shape[k..].iter().product();
        ranks[k] = r.min(left).min(right);
    }
    ranks
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn should_reconstruct_at_full_rank(shape in shape_strategy(), seed in 0u64..1000) {
        let a = random_f64(&shape, seed);
        let tt = tt_svd_shaped(a.clone(), &shape, Truncation::accuracy(0.0)).unwrap();
        let (full, dense) = (values(tt.full_flat()), values(a));
        prop_assert!(diff(&full, &dense) <= 1e-10 * norm(&dense));
        prop_assert_eq!(tt.shape(), shape);
    }

    #[test]
    fn should_truncate_within_eps(
        shape in shape_strategy(),
        seed in 0u64..1000,
        eps in 0.01f64..0.6,
    ) {
        // Low-rank structure plus noise, so truncation has something to cut.
        let base = random_tt(&shape, &ranks_for(&shape, 2), seed).full_flat();
        let noise = random_f64(&shape, seed + 77).mul_scalar(0.05);
        let a = base + noise;
        let tt = tt_svd_shaped(a.clone(), &shape, Truncation::accuracy(eps)).unwrap();
        let (full, dense) = (values(tt.full_flat()), values(a));
        prop_assert!(diff(&full, &dense) <= eps * norm(&dense) * (1.0 + 1e-9));
    }

    #[test]
    fn should_round_without_raising_ranks_and_idempotently(
        shape in shape_strategy(),
        seed in 0u64..1000,
        r in 1usize..4,
        eps in 0.0f64..0.3,
    ) {
        let a = random_tt(&shape, &ranks_for(&shape, r), seed);
        // a + a has doubled ranks but the rank of a: rounding must find it.
        let doubled = a.add(&a).unwrap();
        let rounded = doubled.round(Truncation::accuracy(1e-8)).unwrap();
        for (x, y) in rounded.ranks().iter().zip(a.ranks()) {
            prop_assert!(*x <= y);
        }
        let want = values(a.scale(2.0).full_flat());
        prop_assert!(diff(&values(rounded.full_flat()), &want) <= 1e-7 * norm(&want));
        // Truncating rounding: never raises ranks, error bound, idempotent.
        let once = doubled.round(Truncation::accuracy(eps)).unwrap();
        for (x, y) in once.ranks().iter().zip(doubled.ranks()) {
            prop_assert!(*x <= y);
        }
        let full2 = values(doubled.full_flat());
        prop_assert!(diff(&values(once.full_flat()), &full2) <= (eps + 1e-9) * norm(&full2));
        // Idempotent at its own ranks: rounding again changes nothing.
        let max_rank = *once.ranks().iter().max().unwrap();
        let twice = once.round(Truncation::rank(max_rank)).unwrap();
        prop_assert_eq!(twice.ranks(), once.ranks());
        let f1 = values(once.full_flat());
        prop_assert!(diff(&values(twice.full_flat()), &f1) <= 1e-9 * norm(&f1).max(1e-300));
        // With an accuracy target a second pass gets a fresh error budget (the first spent
        // part of it), so it may cut further, but never raises a rank and stays within eps.
        let again = once.round(Truncation::accuracy(eps)).unwrap();
        for (x, y) in again.ranks().iter().zip(once.ranks()) {
            prop_assert!(*x <= y);
        }
        prop_assert!(diff(&values(again.full_flat()), &f1) <= (eps + 1e-9) * norm(&f1));
        // A rank cap holds.
        let capped = doubled.round(Truncation::rank(1)).unwrap();
        prop_assert!(capped.ranks().iter().all(|&x| x == 1));
    }

    #[test]
    fn should_dot_norm_and_add_like_the_dense_tensors(
        shape in shape_strategy(),
        seed in 0u64..1000,
        r in 1usize..4,
    ) {
        let a = random_tt(&shape, &ranks_for(&shape, r), seed);
        let b = random_tt(&shape, &ranks_for(&shape, r + 1), seed + 500);
        let (fa, fb) = (values(a.full_flat()), values(b.full_flat()));
        let dot: f64 = fa.iter().zip(&fb).map(|(x, y)| x * y).sum();
        prop_assert!((a.dot(&b).unwrap() - dot).abs() <= 1e-9 * norm(&fa) * norm(&fb));
        prop_assert!((a.norm() - norm(&fa)).abs() <= 1e-9 * norm(&fa));
        let sum: Vec<f64> = fa.iter().zip(&fb).map(|(x, y)| x + y).collect();
        prop_assert!(diff(&values(a.add(&b).unwrap().full_flat()), &sum) <= 1e-9 * norm(&sum));
    }

    #[test]
    fn should_multiply_tt_matrices_like_dense_ones(
        rows in prop::collection::vec(2usize..4, 2..4),
        seed in 0u64..1000,
        r in 1usize..4,
        batch in 1usize..5,
    ) {
        let d = rows.len();
        let cols: Vec<usize> = rows.iter().map(|m| m + 1).collect();
        let a = tt_matrix(&rows, &cols, r, seed);
        let b = tt_matrix(&cols, &rows, r, seed + 1);
        let (da, db) = (a.to_dense(), b.to_dense());
        // TT x TT.
        let want = values(flat(da.clone().matmul(db.clone())));
        let got = values(flat(a.matmul(&b).unwrap().to_dense()));
        prop_assert!(diff(&got, &want) <= 1e-9 * norm(&want));
        // Transpose.
        prop_assert!(diff(&values(flat(a.transpose().to_dense())), &values(flat(da.clone().transpose()))) == 0.0);
        // TT matrix x TT vector.
        let x = random_tt(&cols, &ranks_for(&cols, 2), seed + 2);
        let xd = x.full_flat();
        let n: usize = cols.iter().product();
        let want = values(flat(da.clone().matmul(xd.reshape([n, 1]))));
        let got = values(a.matvec(&x).unwrap().full_flat());
        prop_assert!(diff(&got, &want) <= 1e-9 * norm(&want));
        // Dense rows x TT matrix, both contraction orders agree with the dense product.
        let m: usize = rows.iter().product();
        let xr = random_f64(&[batch, m], seed + 3).reshape([batch, m]);
        let want = values(flat(xr.clone().matmul(da.clone())));
        let got = values(flat(a.left_mul(xr.clone()).unwrap()));
        prop_assert!(diff(&got, &want) <= 1e-9 * norm(&want));
        // Norm and dot through the TT-tensor view.
        let fa = values(flat(da));
        prop_assert!((a.norm() - norm(&fa)).abs() <= 1e-9 * norm(&fa));
        prop_assert_eq!(a.ranks().len(), d + 1);
    }
}

fn flat(t: Tensor<2>) -> Tensor<1> {
    let [a, b] = t.dims();
    t.reshape([a * b])
}

fn tt_matrix(rows: &[usize], cols: &[usize], r: usize, seed: u64) -> TtMatrix {
    let sizes: Vec<usize> = rows.iter().zip(cols).map(|(a, b)| a * b).collect();
    let ranks = ranks_for(&sizes, r);
    let cores = (0..rows.len())
        .map(|k| {
            let dims = [ranks[k], rows[k], cols[k], ranks[k + 1]];
            random_f64(&dims, seed * 31 + k as u64).reshape(dims)
        })
        .collect();
    TtMatrix::new(cores).unwrap()
}

#[test]
fn should_roundtrip_a_dense_matrix_and_cap_ranks() {
    let (rows, cols) = ([3, 4, 2], [2, 3, 5]);
    let w = random_f64(&[24, 30], 9).reshape([24, 30]);
    let tt = TtMatrix::from_dense(w.clone(), &rows, &cols, Truncation::accuracy(0.0)).unwrap();
    let (got, want) = (values(flat(tt.to_dense())), values(flat(w.clone())));
    assert!(diff(&got, &want) <= 1e-10 * norm(&want));
    assert_eq!(tt.row_modes(), rows);
    assert_eq!(tt.col_modes(), cols);
    let small = TtMatrix::from_dense(w, &rows, &cols, Truncation::rank(3)).unwrap();
    assert_eq!(small.ranks(), vec![1, 3, 3, 1]);
    assert!(small.param_count() < tt.param_count());
}

#[test]
fn should_svd_a_dense_tensor_of_any_order() {
    let a = random_f64(&[3, 4, 5], 4).reshape([3, 4, 5]);
    let tt = tt_svd(a.clone(), Truncation::accuracy(0.0)).unwrap();
    assert_eq!(tt.ranks(), vec![1, 3, 5, 1]);
    let full = tt.full::<3>().unwrap();
    let err = (full - a.clone()).abs().max().into_scalar::<f64>();
    assert!(err < 1e-10, "{err}");
    assert!(tt.full::<2>().unwrap_err().to_string().contains("D = 3"));
    // On an autodiff device too (the SVD runs off the graph), and rounding there.
    let ad = Device::flex().autodiff();
    let b = Tensor::<3>::from_data(a.clone().into_data(), (&ad, DType::F64));
    let tt = tt_svd(b, Truncation::rank(2)).unwrap();
    assert_eq!(
        tt.round(Truncation::rank(1)).unwrap().ranks(),
        vec![1, 1, 1, 1]
    );
    // NaN input is an error, not a panic.
    let nan = a.mask_fill(
        Tensor::<3>::ones([3, 4, 5], &device()).equal_elem(1.0),
        f64::NAN,
    );
    let e = tt_svd(nan, Truncation::rank(2)).unwrap_err().to_string();
    assert!(e.contains("NaN"), "{e}");
}

#[test]
fn should_reject_bad_input_clearly() {
    let d = device();
    // Mismatched cores.
    let e = TtTensor::new(vec![
        Tensor::zeros([1, 2, 3], &d),
        Tensor::zeros([2, 2, 1], &d),
    ])
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("core 1 with left rank 2 after right rank 3"),
        "{e}"
    );
    let e = TtTensor::new(vec![Tensor::zeros([1, 2, 3], &d)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("right rank 3"), "{e}");
    assert!(
        TtTensor::new(vec![])
            .unwrap_err()
            .to_string()
            .contains("at least one core")
    );
    // Rank 0.
    let a = random_f64(&[4, 4], 1).reshape([4, 4]);
    let e = tt_svd(a.clone(), Truncation::rank(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("rank") && e.contains("at least 1"), "{e}");
    let e = tt_svd(a.clone(), Truncation::accuracy(-1.0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("eps"), "{e}");
    // A shape that cannot be factorised as requested.
    let e = factorize(7, 2).unwrap_err().to_string();
    assert!(e.contains("7 = [7] into 2 modes"), "{e}");
    let e = TtMatrix::from_dense(a.clone(), &[2, 3], &[2, 2], Truncation::rank(2))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rows [2, 3]") && e.contains("products 4 and 4"),
        "{e}"
    );
    let e = tt_svd_shaped(random_f64(&[6], 1), &[4, 2], Truncation::rank(2))
        .unwrap_err()
        .to_string();
    assert!(e.contains("[4, 2] for 6 elements"), "{e}");
    // Mismatched operands.
    let x = random_tt(&[2, 3], &[1, 2, 1], 1);
    let y = random_tt(&[3, 2], &[1, 2, 1], 2);
    assert!(
        x.dot(&y)
            .unwrap_err()
            .to_string()
            .contains("[2, 3] against [3, 2]")
    );
    let m = tt_matrix(&[2, 3], &[2, 2], 2, 3);
    assert!(m.left_mul(Tensor::zeros([2, 5], &d)).is_err());
    assert!(m.matvec(&x).is_err());
    assert!(TtMatrix::random(&[2, 3], &[2, 2], 0, 1.0, &d).is_err());
}

#[test]
fn should_init_random_tt_matrices_at_the_requested_variance() {
    let d = device();
    d.seed(5);
    let m = TtMatrix::random(&[8, 8, 6], &[8, 12, 16], 16, 0.01, &d).unwrap();
    let w: Vec<f64> = m.to_dense().into_data().iter::<f64>().collect();
    let var = w.iter().map(|x| x * x).sum::<f64>() / w.len() as f64;
    // Entries are sums of 256 products: close to Gaussian; 590k of them, but correlated
    // through shared cores: allow 25%.
    assert!((var / 0.01 - 1.0).abs() < 0.25, "variance {var}");
}

//! `gemm_linear` climbs the oracle ladder: golden values, burn's `Linear` as the reference op,
//! and central differences in f64. Its memory is checked in `tests/memory.rs`.

use burn::nn::LinearConfig;
use burn::tensor::{DType, Device, Distribution, Tensor, TensorData};
use memtrain::linear::gemm_linear;

mod common;

fn vec_of<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .expect("float data")
}

fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}[{i}]: {x} against {y}"
        );
    }
}

#[test]
fn should_give_hand_computed_values_and_gradients() {
    let device = Device::flex().autodiff();
    let x = Tensor::<2>::from_data([[1.0, 2.0]], &device).require_grad();
    let w = Tensor::<2>::from_data([[1.0, 0.0, 2.0], [0.0, 1.0, 3.0]], &device).require_grad();
    let b = Tensor::<1>::from_data([1.0, -1.0, 0.5], &device).require_grad();
    let y = gemm_linear(x.clone(), w.clone(), b.clone());
    // Exact in f32 (small integers and halves): the tolerance only avoids `==`.
    assert_close(&vec_of(y.clone()), &[2.0, 1.0, 8.5], 1e-6, "y");
    // L = y · [1, 2, 3]: dx = W [1, 2, 3] = [7, 11], dW = xᵀ [1, 2, 3], db = [1, 2, 3].
    let weights = Tensor::<2>::from_data([[1.0, 2.0, 3.0]], &device);
    let grads = (y * weights).sum().backward();
    assert_close(&vec_of(x.grad(&grads).unwrap()), &[7.0, 11.0], 1e-6, "dx");
    assert_close(
        &vec_of(w.grad(&grads).unwrap()),
        &[1.0, 2.0, 3.0, 2.0, 4.0, 6.0],
        1e-6,
        "dW",
    );
    assert_close(
        &vec_of(b.grad(&grads).unwrap()),
        &[1.0, 2.0, 3.0],
        1e-6,
        "db",
    );
}

#[test]
fn should_match_burns_linear_forward_and_backward() {
    let device = Device::flex().autodiff();
    for (shape, d_out) in [([3, 5, 8], 16), ([2, 1, 33], 7), ([4, 64, 96], 384)] {
        let layer = LinearConfig::new(shape[2], d_out).init(&device);
        let x = Tensor::<3>::random(shape, Distribution::Default, &device).require_grad();
        let dy = Tensor::<3>::random([shape[0], shape[1], d_out], Distribution::Default, &device);
        let (w, b) = (layer.weight.val(), layer.bias.as_ref().unwrap().val());
        let ours = gemm_linear(x.clone(), w.clone(), b.clone());
        let theirs = layer.forward(x.clone());
        assert_close(&vec_of(ours.clone()), &vec_of(theirs.clone()), 1e-5, "y");
        let g_ours = (ours * dy.clone()).sum().backward();
        let g_theirs = (theirs * dy).sum().backward();
        assert_close(
            &vec_of(x.grad(&g_ours).unwrap()),
            &vec_of(x.grad(&g_theirs).unwrap()),
            1e-4,
            "dx",
        );
        assert_close(
            &vec_of(w.grad(&g_ours).unwrap()),
            &vec_of(w.grad(&g_theirs).unwrap()),
            1e-4,
            "dW",
        );
        assert_close(
            &vec_of(b.grad(&g_ours).unwrap()),
            &vec_of(b.grad(&g_theirs).unwrap()),
            1e-4,
            "db",
        );
    }
}

#[test]
fn should_accept_a_strided_input() {
    let device = Device::flex();
    let layer = LinearConfig::new(6, 4).init(&device);
    // [5, 6] seen through a transpose: not contiguous.
    let x = Tensor::<2>::random([6, 5], Distribution::Default, &device).transpose();
    let ours = gemm_linear(
        x.clone(),
        layer.weight.val(),
        layer.bias.as_ref().unwrap().val(),
    );
    assert_close(&vec_of(ours), &vec_of(layer.forward(x)), 1e-5, "y");
}

/// Every gradient against central differences of `L = Σ g ∘ (x W + b)`, all in f64.
#[test]
fn should_match_finite_differences_in_f64() {
    let device = Device::flex().autodiff();
    let (n, d_in, d_out) = (6, 4, 5);
    let mut state = 7u64;
    let mut rnd = |len: usize| common::uniform(&mut state, len);
    let (x, w, b, g) = (rnd(n * d_in), rnd(d_in * d_out), rnd(d_out), rnd(n * d_out));
    let t2 = |v: &[f64], s: [usize; 2]| {
        Tensor::<2>::from_data(TensorData::new(v.to_vec(), s), (&device, DType::F64))
    };
    let t1 = |v: &[f64]| {
        Tensor::<1>::from_data(
            TensorData::new(v.to_vec(), [v.len()]),
            (&device, DType::F64),
        )
    };
    let loss = |x: &[f64], w: &[f64], b: &[f64]| -> f64 {
        let y = gemm_linear(t2(x, [n, d_in]), t2(w, [d_in, d_out]), t1(b));
        assert_eq!(y.dtype(), DType::F64);
        vec_of(y).iter().zip(&g).map(|(y, g)| y * g).sum()
    };
    let (xt, wt, bt) = (
        t2(&x, [n, d_in]).require_grad(),
        t2(&w, [d_in, d_out]).require_grad(),
        t1(&b).require_grad(),
    );
    let grads = (gemm_linear(xt.clone(), wt.clone(), bt.clone()) * t2(&g, [n, d_out]))
        .sum()
        .backward();
    let analytic = [
        vec_of(xt.grad(&grads).unwrap()),
        vec_of(wt.grad(&grads).unwrap()),
        vec_of(bt.grad(&grads).unwrap()),
    ];
    common::assert_matches_central_differences(
        &[x, w, b],
        &analytic,
        |p| loss(&p[0], &p[1], &p[2]),
        (1e-6, 1e-8, 1e-7),
        "gemm_linear",
    );
}

/// A strided output gradient (here a transposed view) gives burn's gradients: the backward
/// lays it out once for its three products.
#[test]
fn should_accept_a_strided_output_gradient() {
    let device = Device::flex().autodiff();
    let layer = LinearConfig::new(6, 4).init(&device);
    let x = Tensor::<2>::random([5, 6], Distribution::Default, &device).require_grad();
    let dy = Tensor::<2>::random([4, 5], Distribution::Default, &device)
        .inner()
        .transpose();
    let (w, b) = (layer.weight.val(), layer.bias.as_ref().unwrap().val());
    // `backward_from` hands `dy` itself, strides and all, to the op as its output gradient.
    let ours =
        memtrain::remat::backward_from(gemm_linear(x.clone(), w.clone(), b.clone()), dy.clone());
    let theirs = (layer.forward(x.clone()) * dy).sum().backward();
    assert_close(
        &vec_of(x.grad(&ours).unwrap()),
        &vec_of(x.grad(&theirs).unwrap()),
        1e-5,
        "dx",
    );
    assert_close(
        &vec_of(w.grad(&ours).unwrap()),
        &vec_of(w.grad(&theirs).unwrap()),
        1e-5,
        "dW",
    );
    assert_close(
        &vec_of(b.grad(&ours).unwrap()),
        &vec_of(b.grad(&theirs).unwrap()),
        1e-5,
        "db",
    );
}

/// `a [m, k] · b [k, n]` in f64 of the bf16-rounded operands (row-major).
fn bf16_reference(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    use memtrain::linear::bf16::round_bf16;
    let r = |v: f64| f64::from(round_bf16(v as f32));
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k).map(|p| r(a[i * k + p]) * r(b[p * n + j])).sum();
        }
    }
    out
}

fn transpose(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    (0..cols * rows)
        .map(|i| a[(i % rows) * cols + i / rows])
        .collect()
}

#[test]
fn should_run_the_three_products_in_bf16_inside_the_scope() {
    use memtrain::linear::{bf16, bf16_products, with_precision};
    use memtrain::policy::PrecisionPolicy;
    if !bf16::is_available() {
        eprintln!("skipped: this CPU has no AVX512-BF16 (the products stay f32)");
        return;
    }
    let device = Device::flex().autodiff();
    let (m, k, n) = (37, 70, 19);
    let x = Tensor::<2>::random([m, k], Distribution::Default, &device).require_grad();
    let w = Tensor::<2>::random([k, n], Distribution::Default, &device).require_grad();
    let b = Tensor::<1>::random([n], Distribution::Default, &device).require_grad();
    let dy = Tensor::<2>::random([m, n], Distribution::Default, &device);
    let (y, grads) = with_precision(PrecisionPolicy::Bf16, || {
        assert!(bf16_products());
        let y = gemm_linear(x.clone(), w.clone(), b.clone());
        let grads = (y.clone() * dy.clone()).sum().backward();
        (y, grads)
    });
    assert!(!bf16_products(), "the scope restores f32");
    let (xs, ws, bs, dys) = (
        vec_of(x.clone()),
        vec_of(w.clone()),
        vec_of(b.clone()),
        vec_of(dy.clone()),
    );
    let mut want = bf16_reference(&xs, &ws, m, k, n);
    want.iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v += bs[i % n]);
    assert_close(&vec_of(y.clone()), &want, 1e-5, "bf16 y");
    // The f32 result differs by bf16's rounding (8 significant bits), not by f32's.
    let fp32 = vec_of(gemm_linear(x.clone(), w.clone(), b.clone()));
    let gap = fp32
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(gap > 1e-4 && gap < 0.5, "bf16 against f32: {gap}");
    // dX = dY Wᵀ and dW = Xᵀ dY, both operands rounded; db is an f32 sum.
    let dx = bf16_reference(&dys, &transpose(&ws, k, n), m, n, k);
    assert_close(&vec_of(x.grad(&grads).unwrap()), &dx, 1e-5, "bf16 dx");
    let dw = bf16_reference(&transpose(&xs, m, k), &dys, k, m, n);
    assert_close(&vec_of(w.grad(&grads).unwrap()), &dw, 1e-5, "bf16 dw");
    let db: Vec<f64> = (0..n)
        .map(|j| (0..m).map(|i| dys[i * n + j]).sum())
        .collect();
    assert_close(&vec_of(b.grad(&grads).unwrap()), &db, 1e-5, "db");
}

//! The oracle ladder for fused attention: golden values, the plain burn attention, finite
//! differences in f64, and the generic (non-Flex) path.

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use memtrain::attention::kernel::{self, Heads, Params};
use memtrain::attention::{
    AttentionParams, fused_attention, fused_attention_qkv, reference_attention,
};

mod common;

fn vec_of(t: Tensor<4>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

fn assert_close(a: &[f32], b: &[f32], rtol: f32, atol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= atol + rtol * y.abs(),
            "{what}[{i}]: fused {x} vs reference {y}"
        );
    }
}

/// The same f64 arithmetic done in another order or place: equal to round-off (1e-12
/// absolute + relative; the values are of order 1).
fn assert_close_f64(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-12 * (1.0 + y.abs()),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

#[test]
fn should_match_golden_values_on_two_tokens() {
    // One head, d = 1, causal, scale 1: q = [1, 2], k = [0, 1], v = [10, 20], loss = sum(o).
    // Row 0 sees key 0 only: o0 = 10. Row 1: scores [0, 2], p = [1, e²] / (1 + e²),
    // o1 = 10 p0 + 20 p1. dS_1j = p_j (v_j - o1); dq1 = Σ dS_1j k_j; dk_j = Σ_i dS_ij q_i
    // (row 0 contributes nothing: a single key's softmax is constant); dv_j = Σ_i p_ij.
    let device = Device::flex().autodiff();
    let t = |v: [f32; 2]| {
        Tensor::<4>::from_data(TensorData::new(v.to_vec(), [1, 2, 1, 1]), &device).require_grad()
    };
    let (q, k, v) = (t([1.0, 2.0]), t([0.0, 1.0]), t([10.0, 20.0]));
    let params = AttentionParams {
        causal: true,
        scale: Some(1.0),
    };
    let o = fused_attention(q.clone(), k.clone(), v.clone(), None, params);
    let grads = o.clone().sum().backward();
    let e2 = 2f32.exp();
    let (p0, p1) = (1.0 / (1.0 + e2), e2 / (1.0 + e2));
    let o1 = 10.0 * p0 + 20.0 * p1;
    let (ds0, ds1) = (p0 * (10.0 - o1), p1 * (20.0 - o1));
    let got = |x: Tensor<4>| x.into_data().iter::<f32>().collect::<Vec<f32>>();
    assert_close(&got(o.inner()), &[10.0, o1], 1e-6, 1e-5, "o");
    assert_close(&got(q.grad(&grads).unwrap()), &[0.0, ds1], 1e-5, 1e-5, "dq");
    assert_close(
        &got(k.grad(&grads).unwrap()),
        &[2.0 * ds0, 2.0 * ds1],
        1e-5,
        1e-5,
        "dk",
    );
    assert_close(
        &got(v.grad(&grads).unwrap()),
        &[1.0 + p0, p1],
        1e-5,
        1e-5,
        "dv",
    );
}

/// Fused vs plain: output and the three input gradients, under a random output weighting.
#[allow(clippy::too_many_arguments)]
fn compare(
    b: usize,
    tq: usize,
    tk: usize,
    h: usize,
    dh: usize,
    dv: usize,
    params: AttentionParams,
    masked: bool,
) {
    let device = Device::flex().autodiff();
    device.seed(tq as u64 * 31 + tk as u64);
    let rnd = |s: [usize; 4]| Tensor::<4>::random(s, Distribution::Normal(0.0, 1.0), &device);
    let (q0, k0, v0) = (
        rnd([b, tq, h, dh]),
        rnd([b, tk, h, dh]),
        rnd([b, tk, h, dv]),
    );
    let w = rnd([b, tq, h, dv]);
    let mask = masked.then(|| {
        // Gaussian noise, and about a fifth of the keys hidden; key 0 stays visible to all.
        let data: Vec<f32> = (0..tq * tk)
            .map(|x| {
                let (i, j) = (x / tk, x % tk);
                if j > 0 && (i * 7 + j * 3) % 5 == 0 {
                    f32::NEG_INFINITY
                } else {
                    ((x * 37 % 101) as f32 - 50.0) / 25.0
                }
            })
            .collect();
        Tensor::<2>::from_data(TensorData::new(data, [tq, tk]), &device)
    });
    let run = |f: fn(
        Tensor<4>,
        Tensor<4>,
        Tensor<4>,
        Option<Tensor<2>>,
        AttentionParams,
    ) -> Tensor<4>| {
        let (q, k, v) = (
            q0.clone().require_grad(),
            k0.clone().require_grad(),
            v0.clone().require_grad(),
        );
        let o = f(q.clone(), k.clone(), v.clone(), mask.clone(), params);
        let g = (o.clone() * w.clone()).sum().backward();
        [
            o.inner(),
            q.grad(&g).unwrap(),
            k.grad(&g).unwrap(),
            v.grad(&g).unwrap(),
        ]
        .map(vec_of)
    };
    let fused = run(fused_attention);
    let plain = run(reference_attention);
    for (i, name) in ["o", "dq", "dk", "dv"].iter().enumerate() {
        assert_close(
            &fused[i],
            &plain[i],
            1e-4,
            2e-5,
            &format!("{name} b{b} tq{tq} tk{tk} h{h} {params:?} masked {masked}"),
        );
    }
}

#[test]
fn should_match_plain_attention_causal() {
    compare(2, 70, 70, 3, 16, 16, AttentionParams::causal(), false);
    compare(1, 130, 130, 2, 8, 8, AttentionParams::causal(), false);
    // Fewer queries than keys: the last query sees every key.
    compare(1, 33, 100, 2, 8, 12, AttentionParams::causal(), false);
}

#[test]
fn should_match_plain_attention_full_and_masked() {
    compare(2, 65, 65, 2, 8, 8, AttentionParams::full(), false);
    compare(
        1,
        40,
        90,
        3,
        8,
        4,
        AttentionParams {
            causal: false,
            scale: Some(0.3),
        },
        true,
    );
    compare(1, 70, 70, 2, 8, 8, AttentionParams::causal(), true);
}

#[test]
fn should_accept_strided_views_of_a_fused_projection() {
    // q, k, v as views of one [b, t, 3h, dh] tensor, as the GPT block passes them.
    let device = Device::flex();
    let (b, t, h, dh) = (2, 50, 3, 8);
    let qkv = Tensor::<4>::random([b, t, 3 * h, dh], Distribution::Default, &device);
    let part = |i: usize| qkv.clone().slice([0..b, 0..t, i * h..(i + 1) * h, 0..dh]);
    let fused = fused_attention(part(0), part(1), part(2), None, AttentionParams::causal());
    let plain = reference_attention(part(0), part(1), part(2), None, AttentionParams::causal());
    assert_close(&vec_of(fused), &vec_of(plain), 1e-4, 1e-5, "strided");
}

/// The kernel's f64 backward against central differences of `L = Σ w ∘ o`.
#[test]
fn should_match_finite_differences_in_f64() {
    let (b, tq, tk, h, d) = (1, 5, 7, 2, 3);
    let mut state = 12345u64;
    let mut rnd = |n: usize| common::uniform(&mut state, n);
    let (q, k, v, w) = (
        rnd(b * tq * h * d),
        rnd(b * tk * h * d),
        rnd(b * tk * h * d),
        rnd(b * tq * h * d),
    );
    let mask = rnd(tq * tk);
    for (causal, masked) in [(true, false), (false, true), (true, true)] {
        let p = Params {
            scale: 0.7,
            causal,
            mask: masked.then_some(mask.as_slice()),
        };
        let loss = |q: &[f64], k: &[f64], v: &[f64]| {
            let (o, _) = kernel::forward(
                Heads::contiguous(q, [b, tq, h, d]),
                Heads::contiguous(k, [b, tk, h, d]),
                Heads::contiguous(v, [b, tk, h, d]),
                p,
            );
            o.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>()
        };
        let (o, lse) = kernel::forward(
            Heads::contiguous(&q, [b, tq, h, d]),
            Heads::contiguous(&k, [b, tk, h, d]),
            Heads::contiguous(&v, [b, tk, h, d]),
            p,
        );
        let (dq, dk, dv) = kernel::backward(
            Heads::contiguous(&q, [b, tq, h, d]),
            Heads::contiguous(&k, [b, tk, h, d]),
            Heads::contiguous(&v, [b, tk, h, d]),
            Heads::contiguous(&o, [b, tq, h, d]),
            Heads::contiguous(&w, [b, tq, h, d]),
            &lse,
            p,
        );
        common::assert_matches_central_differences(
            &[q.clone(), k.clone(), v.clone()],
            &[dq, dk, dv],
            |x| loss(&x[0], &x[1], &x[2]),
            (1e-6, 1e-7, 1e-6),
            &format!("causal {causal}, masked {masked}"),
        );
    }
}

#[test]
fn should_output_zero_for_a_fully_hidden_row() {
    let device = Device::flex();
    let q = Tensor::<4>::ones([1, 2, 1, 2], &device);
    let mut m = vec![0.0f32; 4];
    m[0] = f32::NEG_INFINITY;
    m[1] = f32::NEG_INFINITY;
    let mask = Tensor::<2>::from_data(TensorData::new(m, [2, 2]), &device);
    let o = vec_of(fused_attention(
        q.clone(),
        q.clone(),
        q,
        Some(mask),
        AttentionParams::full(),
    ));
    // Zero, not NaN (a NaN fails the comparison).
    assert!(o[..2].iter().all(|x| x.abs() <= 1e-30), "{:?}", &o[..2]);
    assert!(o[2..].iter().all(|x| (x - 1.0).abs() < 1e-6));
}

#[test]
#[should_panic(expected = "attention shapes disagree")]
fn should_name_both_shapes_on_mismatch() {
    let device = Device::flex();
    let q = Tensor::<4>::zeros([1, 4, 2, 8], &device);
    let k = Tensor::<4>::zeros([1, 4, 2, 4], &device);
    fused_attention(q, k.clone(), k, None, AttentionParams::causal());
}

/// The packed op against the fused op on the three slices of the same projection: equal
/// outputs and an equal gradient of the projection (the slices' gradients, summed by autodiff).
#[test]
fn should_give_the_packed_projection_the_sliced_gradient() {
    let device = Device::flex().autodiff();
    let (b, t, h, d) = (2, 19, 3, 8);
    let qkv = Tensor::<4>::random([b, t, 3 * h, d], Distribution::Default, &device).require_grad();
    let w = Tensor::<4>::random([b, t, h, d], Distribution::Default, &device);
    let part = |i: usize| qkv.clone().slice([0..b, 0..t, i * h..(i + 1) * h, 0..d]);
    for params in [AttentionParams::causal(), AttentionParams::full()] {
        let packed = fused_attention_qkv(qkv.clone(), h, params);
        let sliced = fused_attention(part(0), part(1), part(2), None, params);
        assert_close(
            &vec_of(packed.clone().inner()),
            &vec_of(sliced.clone().inner()),
            1e-6,
            1e-7,
            "o",
        );
        let g_packed = (packed * w.clone()).sum().backward();
        let g_sliced = (sliced * w.clone()).sum().backward();
        assert_close(
            &vec_of(qkv.grad(&g_packed).unwrap()),
            &vec_of(qkv.grad(&g_sliced).unwrap()),
            1e-5,
            1e-6,
            "d qkv",
        );
    }
}

/// The packed kernel writes exactly the three gradients of the unpacked one, each in its third
/// of the heads axis.
#[test]
fn should_pack_the_kernel_gradients_head_by_head() {
    let (b, t, h, d) = (2, 6, 3, 4);
    let mut state = 99u64;
    let qkv = common::uniform(&mut state, b * t * 3 * h * d);
    let d_o = common::uniform(&mut state, b * t * h * d);
    let view = |i: usize| Heads::new(&qkv, i * h * d, [t * 3 * h * d, 3 * h * d, d], [b, t, h, d]);
    let p = Params {
        scale: 0.5,
        causal: true,
        mask: None,
    };
    let (o, lse) = kernel::forward(view(0), view(1), view(2), p);
    let dout = Heads::contiguous(&d_o, [b, t, h, d]);
    let oh = Heads::contiguous(&o, [b, t, h, d]);
    let (dq, dk, dv) = kernel::backward(view(0), view(1), view(2), oh, dout, &lse, p);
    let packed = kernel::backward_packed(view(0), view(1), view(2), oh, dout, &lse, p);
    for (third, grad) in [&dq, &dk, &dv].into_iter().enumerate() {
        for bi in 0..b {
            for ti in 0..t {
                for hi in 0..h {
                    let from = ((bi * t + ti) * h + hi) * d;
                    let to = ((bi * t + ti) * 3 * h + third * h + hi) * d;
                    assert_close_f64(
                        &packed[to..to + d],
                        &grad[from..from + d],
                        &format!("third {third}, batch {bi}, token {ti}, head {hi}"),
                    );
                }
            }
        }
    }
}

/// Writing the gradients over the projection gives exactly what the allocating packed
/// backward gives.
#[test]
fn should_write_the_packed_gradient_over_the_projection() {
    let (b, t, h, d) = (2, 7, 3, 4);
    let mut state = 5u64;
    let qkv = common::uniform(&mut state, b * t * 3 * h * d);
    let d_o = common::uniform(&mut state, b * t * h * d);
    for causal in [true, false] {
        let view =
            |i: usize| Heads::new(&qkv, i * h * d, [t * 3 * h * d, 3 * h * d, d], [b, t, h, d]);
        let p = Params {
            scale: 0.3,
            causal,
            mask: None,
        };
        let (o, lse) = kernel::forward(view(0), view(1), view(2), p);
        let oh = Heads::contiguous(&o, [b, t, h, d]);
        let dout = Heads::contiguous(&d_o, [b, t, h, d]);
        let allocated = kernel::backward_packed(view(0), view(1), view(2), oh, dout, &lse, p);
        let mut in_place = qkv.clone();
        kernel::backward_packed_in_place(&mut in_place, [b, t, h, d], oh, dout, &lse, p);
        assert_close_f64(&in_place, &allocated, &format!("causal {causal}"));
    }
}

#[test]
fn should_run_attention_products_in_bf16_inside_the_scope() {
    use memtrain::linear::{bf16, with_precision};
    use memtrain::policy::PrecisionPolicy;
    if !bf16::is_available() {
        eprintln!("skipped: this CPU has no AVX512-BF16 (the products stay f32)");
        return;
    }
    let device = Device::flex().autodiff();
    let (b, t, h, d) = (2, 96, 3, 32);
    let qkv = Tensor::<4>::random([b, t, 3 * h, d], Distribution::Default, &device);
    let run = |precision| {
        let x = qkv.clone().require_grad();
        with_precision(precision, || {
            let o = fused_attention_qkv(x.clone(), h, AttentionParams::causal());
            let g = (o.clone() * o.clone()).sum().backward();
            (vec_of(o), vec_of(x.grad(&g).unwrap()))
        })
    };
    let (o32, g32) = run(PrecisionPolicy::Fp32);
    let (o16, g16) = run(PrecisionPolicy::Bf16);
    // The tasks run on rayon's threads: the scope reaches them. bf16 keeps 8 significant bits.
    for (what, a, b) in [("output", &o32, &o16), ("gradient", &g32, &g16)] {
        let gap = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        let size = a.iter().map(|x| x.abs()).fold(0.0, f32::max);
        assert!(
            gap > 1e-6 * size && gap < 2e-2 * size,
            "{what}: {gap} of {size}"
        );
    }
}

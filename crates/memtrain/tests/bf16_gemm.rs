//! `product_bf16` against golden values and an f64 product of the bf16-rounded operands, over
//! edge shapes, every transposition, padded strides and accumulation. Each test skips (and
//! says so) on a CPU without AVX512-BF16. The ignored `should_report_gflops` measures speed.

use memtrain::linear::bf16::{is_available, product_bf16, round_bf16};

/// Whether this CPU lacks the instructions, said once per test.
fn skipped() -> bool {
    let skip = !is_available();
    if skip {
        eprintln!("skipped: this CPU lacks AVX512-BF16");
    }
    skip
}

/// A fixed linear congruential generator: the same cases on every machine.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    /// Uniform in [-1, 1).
    fn value(&mut self) -> f32 {
        (self.next() as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.next() as usize % from.len()]
    }
}

/// How an operand `[rows, cols]` lies in its slice.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// Row-major, each row followed by `pad` unused elements.
    Rows { pad: usize },
    /// Column-major (the transpose of a row-major matrix), each column followed by `pad`.
    Cols { pad: usize },
    /// Neither stride is 1: every other element of a row-major matrix with padded rows.
    Sparse,
}

/// A random `[rows, cols]` operand: its slice (unused elements NaN, so reading one shows),
/// row stride and column stride, exactly as long as its last element needs.
fn operand(rows: usize, cols: usize, layout: Layout, rng: &mut Lcg) -> (Vec<f32>, usize, usize) {
    let (rs, cs) = match layout {
        Layout::Rows { pad } => (cols + pad, 1),
        Layout::Cols { pad } => (1, rows + pad),
        Layout::Sparse => (2 * cols + 1, 2),
    };
    let len = if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    };
    let mut data = vec![f32::NAN; len];
    for i in 0..rows {
        for j in 0..cols {
            data[i * rs + j * cs] = rng.value();
        }
    }
    (data, rs, cs)
}

/// `(value, magnitude)` of `init + lhs · rhs` in f64 from the bf16-rounded operands;
/// `magnitude` sums `|init|` and every `|a b|`, the scale of an f32 sum's error.
fn reference(
    (m, n, k): (usize, usize, usize),
    init: Option<&[f32]>,
    lhs: (&[f32], usize, usize),
    rhs: (&[f32], usize, usize),
) -> (Vec<f64>, Vec<f64>) {
    let mut value = vec![0.0; m * n];
    let mut magnitude = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let (mut v, mut s) = init.map_or((0.0, 0.0), |c| {
                let c = f64::from(c[i * n + j]);
                (c, c.abs())
            });
            for p in 0..k {
                let a = f64::from(round_bf16(lhs.0[i * lhs.1 + p * lhs.2]));
                let b = f64::from(round_bf16(rhs.0[p * rhs.1 + j * rhs.2]));
                v += a * b;
                s += (a * b).abs();
            }
            value[i * n + j] = v;
            magnitude[i * n + j] = s;
        }
    }
    (value, magnitude)
}

/// Runs one product and checks every element: `|got - exact| <= 1e-5 magnitude + 1e-30`.
fn check(
    (m, n, k): (usize, usize, usize),
    (la, lb): (Layout, Layout),
    accumulate: bool,
    rng: &mut Lcg,
) {
    let (a, ars, acs) = operand(m, k, la, rng);
    let (b, brs, bcs) = operand(k, n, lb, rng);
    let init: Vec<f32> = (0..m * n).map(|_| rng.value()).collect();
    let mut dst = init.clone();
    assert!(product_bf16(
        m,
        n,
        k,
        &mut dst,
        accumulate,
        (&a, ars, acs),
        (&b, brs, bcs)
    ));
    let (value, magnitude) = reference(
        (m, n, k),
        accumulate.then_some(&init[..]),
        (&a, ars, acs),
        (&b, brs, bcs),
    );
    for (idx, ((&got, &v), &s)) in dst.iter().zip(&value).zip(&magnitude).enumerate() {
        assert!(
            (f64::from(got) - v).abs() <= 1e-5 * s + 1e-30,
            "[{m}, {k}] · [{k}, {n}] {la:?} {lb:?} accumulate {accumulate}: \
             element ({}, {}) is {got}, expected {v} (scale {s})",
            idx / n,
            idx % n
        );
    }
}

#[test]
fn should_give_hand_computed_values() {
    if skipped() {
        return;
    }
    // [[1, 2, 3], [4, 5, 6]] · [[7, 8], [9, 10], [11, 12]]
    //   = [[7 + 18 + 33, 8 + 20 + 36], [28 + 45 + 66, 32 + 50 + 72]] = [[58, 64], [139, 154]],
    // all exact in bf16 and f32; accumulating onto [[1, 2], [3, 4]] adds them.
    let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let b = [7.0, 8.0, 9.0, 10.0, 11.0, 12.0];
    let mut dst = [f32::NAN; 4];
    assert!(product_bf16(
        2,
        2,
        3,
        &mut dst,
        false,
        (&a, 3, 1),
        (&b, 2, 1)
    ));
    for (got, want) in dst.iter().zip([58.0, 64.0, 139.0, 154.0]) {
        assert!((got - want).abs() < 1e-6, "{dst:?}");
    }
    let mut dst = [1.0, 2.0, 3.0, 4.0];
    assert!(product_bf16(
        2,
        2,
        3,
        &mut dst,
        true,
        (&a, 3, 1),
        (&b, 2, 1)
    ));
    for (got, want) in dst.iter().zip([59.0, 66.0, 142.0, 158.0]) {
        assert!((got - want).abs() < 1e-6, "{dst:?}");
    }
}

#[test]
fn should_round_to_nearest_even_bf16() {
    let ulp = 2f32.powi(-7);
    // Below half an ulp of 1 rounds down; a tie rounds to the even neighbour (1, not 1 + ulp);
    // 1 + 1.5 ulp is a tie between 1 + ulp (odd) and 1 + 2 ulp (even).
    assert!((round_bf16(1.0 + 2f32.powi(-10)) - 1.0).abs() < 1e-9);
    assert!((round_bf16(1.0 + ulp / 2.0) - 1.0).abs() < 1e-9);
    assert!((round_bf16(1.0 + 1.5 * ulp) - (1.0 + 2.0 * ulp)).abs() < 1e-9);
    assert!((round_bf16(-1.0 - 0.75 * ulp) + 1.0 + ulp).abs() < 1e-9);
    assert!(round_bf16(f32::NAN).is_nan());
    assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
    assert_eq!(round_bf16(f32::NEG_INFINITY), f32::NEG_INFINITY);
    assert_eq!(round_bf16(-1.0e-40).to_bits(), (-0.0f32).to_bits());
}

#[test]
fn should_multiply_the_bf16_rounded_operands() {
    if skipped() {
        return;
    }
    // (1 + 2^-10)² is 1 + 2^-9 + 2^-20 in f32, but both factors round to 1 in bf16. The second
    // pair: 3 + 2^-7 ties between 3 and 3 + 2^-6 and goes to the even 3; 1 + 3·2^-8 ties
    // between 1 + 2^-7 and 1 + 2^-6 and goes to the even 1 + 2^-6. The sum is
    // 1 + 3 (1 + 2^-6) = 4.046875, exact in f32.
    let e = 2f32.powi(-10);
    let a = [1.0 + e, 3.0 + 8.0 * e];
    let b = [1.0 + e, 1.0 + 12.0 * e];
    let mut dst = [0.0];
    assert!(product_bf16(
        1,
        1,
        1,
        &mut dst,
        false,
        (&a, 2, 1),
        (&b, 1, 1)
    ));
    assert!((dst[0] - 1.0).abs() < 1e-9, "{dst:?}");
    assert!(product_bf16(
        1,
        1,
        2,
        &mut dst,
        false,
        (&a, 2, 1),
        (&b, 1, 1)
    ));
    assert!((dst[0] - 4.046875).abs() < 1e-9, "{dst:?}");
}

#[test]
fn should_handle_empty_dimensions() {
    if skipped() {
        return;
    }
    let a = [1.0; 6];
    let b = [1.0; 6];
    let mut dst = [5.0; 6];
    // k = 0: the empty sum is zero; accumulating leaves dst.
    assert!(product_bf16(
        2,
        3,
        0,
        &mut dst,
        true,
        (&[], 0, 1),
        (&[], 3, 1)
    ));
    assert!(dst.iter().all(|&x| (x - 5.0).abs() < 1e-9));
    assert!(product_bf16(
        2,
        3,
        0,
        &mut dst,
        false,
        (&[], 0, 1),
        (&[], 3, 1)
    ));
    assert!(dst.iter().all(|&x| x.abs() < 1e-9));
    // m = 0 or n = 0: nothing to write.
    let mut dst = [5.0; 6];
    assert!(product_bf16(
        0,
        3,
        2,
        &mut dst,
        false,
        (&a, 2, 1),
        (&b, 3, 1)
    ));
    assert!(product_bf16(
        2,
        0,
        2,
        &mut dst,
        false,
        (&a, 2, 1),
        (&b, 3, 1)
    ));
    assert!(product_bf16(
        0,
        0,
        0,
        &mut [],
        false,
        (&[], 0, 0),
        (&[], 0, 0)
    ));
    assert!(dst.iter().all(|&x| (x - 5.0).abs() < 1e-9));
}

#[test]
#[should_panic(expected = "lhs")]
fn should_panic_when_an_operand_is_too_short() {
    let mut dst = [0.0; 4];
    product_bf16(
        2,
        2,
        3,
        &mut dst,
        false,
        (&[1.0; 5], 3, 1),
        (&[1.0; 6], 2, 1),
    );
}

#[test]
fn should_match_f64_on_edge_shapes_and_layouts() {
    if skipped() {
        return;
    }
    let sizes = [1, 2, 3, 15, 16, 17, 31, 33, 64, 100, 257];
    let layouts = |pad| [Layout::Rows { pad }, Layout::Cols { pad }];
    let mut rng = Lcg(7);
    // Every size in each dimension, the other two drawn, under all four transpositions.
    for dim in 0..3 {
        for &size in &sizes {
            let mut shape = [rng.pick(&sizes), rng.pick(&sizes), rng.pick(&sizes)];
            shape[dim] = size;
            if shape.iter().filter(|&&s| s == 257).count() > 1 {
                shape[(dim + 1) % 3] = 33;
            }
            let pad = rng.pick(&[0, 0, 5]);
            for la in layouts(pad) {
                for lb in layouts(pad) {
                    let accumulate = rng.next().is_multiple_of(2);
                    check(
                        (shape[0], shape[1], shape[2]),
                        (la, lb),
                        accumulate,
                        &mut rng,
                    );
                }
            }
        }
    }
}

#[test]
fn should_match_f64_with_any_strides() {
    if skipped() {
        return;
    }
    let mut rng = Lcg(11);
    for (m, n, k) in [(1, 1, 1), (13, 35, 7), (17, 33, 64), (40, 20, 101)] {
        for (la, lb) in [
            (Layout::Sparse, Layout::Rows { pad: 0 }),
            (Layout::Rows { pad: 1 }, Layout::Sparse),
            (Layout::Sparse, Layout::Sparse),
        ] {
            check((m, n, k), (la, lb), true, &mut rng);
        }
    }
}

#[test]
fn should_match_f64_across_blocks_of_k_and_threads() {
    if skipped() {
        return;
    }
    // Large enough to run on every thread, with several blocks of k and an odd last one.
    let mut rng = Lcg(3);
    for (m, n, k) in [(130, 97, 1101), (41, 300, 600)] {
        for la in [Layout::Rows { pad: 2 }, Layout::Cols { pad: 0 }] {
            for lb in [Layout::Rows { pad: 0 }, Layout::Cols { pad: 3 }] {
                check((m, n, k), (la, lb), rng.next().is_multiple_of(2), &mut rng);
            }
        }
    }
}

/// Median seconds of `runs` calls of `f`, after one warm-up call.
fn median_seconds(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = std::time::Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

/// The products of a transformer step at d_model 384, batch × sequence 2048: GFLOP/s of
/// `product_bf16` and of the f32 `gemm` crate, median of 20, on all rayon threads and on one.
#[test]
#[ignore = "measures speed; run with --ignored --nocapture"]
fn should_report_gflops() {
    if skipped() {
        return;
    }
    // (name, m, k, n, lhs transposed, rhs transposed)
    let shapes = [
        ("x·W qkv", 2048, 384, 1152, false, false),
        ("x·W up", 2048, 384, 1536, false, false),
        ("x·W down", 2048, 1536, 384, false, false),
        ("x·W proj", 2048, 384, 384, false, false),
        ("xᵀ·dy up", 384, 2048, 1536, true, false),
        ("xᵀ·dy down", 1536, 2048, 384, true, false),
        ("dy·Wᵀ up", 2048, 1536, 384, false, true),
        ("dy·Wᵀ qkv", 2048, 1152, 384, false, true),
        ("dy·Wᵀ down", 2048, 384, 1536, false, true),
        ("square", 2048, 2048, 2048, false, false),
    ];
    let mut rng = Lcg(1);
    let run_all = |rng: &mut Lcg| {
        for &(name, m, k, n, ta, tb) in &shapes {
            let (a, ars, acs) = operand(
                m,
                k,
                if ta {
                    Layout::Cols { pad: 0 }
                } else {
                    Layout::Rows { pad: 0 }
                },
                rng,
            );
            let (b, brs, bcs) = operand(
                k,
                n,
                if tb {
                    Layout::Cols { pad: 0 }
                } else {
                    Layout::Rows { pad: 0 }
                },
                rng,
            );
            let mut dst = vec![0.0f32; m * n];
            let flops = 2.0 * (m * n * k) as f64;
            let bf16 = median_seconds(20, || {
                assert!(product_bf16(
                    m,
                    n,
                    k,
                    &mut dst,
                    false,
                    (&a, ars, acs),
                    (&b, brs, bcs)
                ));
            });
            let f32 = median_seconds(20, || {
                // SAFETY: the strides address exactly the operands built above, and `dst`
                // is a distinct [m, n] buffer.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        dst.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr(),
                        acs as isize,
                        ars as isize,
                        b.as_ptr(),
                        bcs as isize,
                        brs as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::Rayon(0),
                    )
                }
            });
            println!(
                "{name:12} m {m:5} k {k:5} n {n:5}: bf16 {:6.1} GFLOP/s, f32 gemm {:6.1} GFLOP/s",
                flops / bf16 / 1e9,
                flops / f32 / 1e9
            );
        }
    };
    println!("{} rayon threads:", rayon::current_num_threads());
    run_all(&mut rng);
    println!("1 thread:");
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool")
        .install(|| run_all(&mut rng));
}

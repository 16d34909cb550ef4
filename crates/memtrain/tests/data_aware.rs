//! Data-aware compression beyond `asvd` (issue 22): the reduced-order MLP (`rom`), the active
//! subspace (`active`), Fisher-weighted SVD (`fwsvd`) on layers of known structure, the
//! gradient statistics they read against parameter gradients and finite differences, and a
//! save/load round trip of each on a tiny random BERT.

use std::path::PathBuf;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use memtrain::bert::{
    Bert, BertConfig, Calibration, CompressMethod, CompressParams, CompressedManifest, Site,
    Spectrum, active_factors, compress_bert_calibrated, load_compressed, rom_neurons,
    rom_output_error, rom_refit, save_compressed, sensitivity_batch,
};
use memtrain::linear::{LinearLayer, Linears};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn normal(rng: &mut StdRng, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let (u, v): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        })
        .collect()
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

fn transpose(a: &[f64], n: usize, m: usize) -> Vec<f64> {
    let mut t = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            t[j * n + i] = a[i * m + j];
        }
    }
    t
}

fn frob(a: &[f64]) -> f64 {
    a.iter().map(|v| v * v).sum::<f64>().sqrt()
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    frob(&d) / frob(b)
}

/// `H [n, width]` whose columns span exactly `rank` dimensions.
fn hidden_of_rank(rng: &mut StdRng, n: usize, width: usize, rank: usize) -> Vec<f64> {
    let basis = normal(rng, n * rank);
    let mix = normal(rng, rank * width);
    matmul(&basis, &mix, n, rank, width)
}

#[test]
fn should_reduce_an_mlp_whose_hidden_layer_has_rank_k_losslessly() {
    let device = Device::flex();
    let mut rng = StdRng::seed_from_u64(7);
    let (n, width, d_out, k) = (200, 12, 5, 4);
    let h = hidden_of_rank(&mut rng, n, width, k);
    let gram = matmul(&transpose(&h, n, width), &h, width, n, width);
    let w2 = normal(&mut rng, width * d_out);
    let target = matmul(&h, &w2, n, width, d_out);
    let error_at = |k: usize| {
        let neurons = rom_neurons(&gram, width, k, &device).unwrap();
        assert_eq!(neurons.len(), k);
        assert!(neurons.windows(2).all(|p| p[0] < p[1]), "{neurons:?}");
        let refit = rom_refit(&gram, width, &w2, d_out, &neurons).unwrap();
        let h_s: Vec<f64> = (0..n)
            .flat_map(|r| neurons.iter().map(move |&c| (r, c)))
            .map(|(r, c)| h[r * width + c])
            .collect();
        let err = rel(&matmul(&h_s, &refit, n, k, d_out), &target);
        let predicted = rom_output_error(&gram, width, &w2, d_out, &neurons, &refit);
        assert!(
            (err - predicted).abs() < 1e-6 + 1e-3 * err,
            "measured {err} vs from the Gram matrix {predicted}"
        );
        err
    };
    // k neurons of a rank-k layer interpolate the rest exactly (up to the 1e-4 ridge).
    let exact = error_at(k);
    assert!(exact < 1e-3, "rank-{k} hidden layer, {k} neurons: {exact}");
    // One neuron fewer cannot: the check above can fail.
    let short = error_at(k - 1);
    assert!(
        short > 0.05,
        "{} neurons of a rank-{k} layer: {short}",
        k - 1
    );
}

#[test]
fn should_refuse_rom_inputs_that_do_not_fit() {
    let device = Device::flex();
    let gram = vec![1.0, 0.0, 0.0, 1.0];
    let w2 = vec![1.0; 6];
    for k in [0, 3] {
        let e = rom_neurons(&gram, 2, k, &device).unwrap_err().to_string();
        assert!(e.contains("neurons") && e.contains("1..=2"), "{e}");
    }
    let e = rom_neurons(&gram[..3], 2, 1, &device)
        .unwrap_err()
        .to_string();
    assert!(e.contains("Gram") && e.contains("3 values"), "{e}");
    let e = rom_refit(&gram, 2, &w2, 3, &[1, 1])
        .unwrap_err()
        .to_string();
    assert!(e.contains("[1, 1]") && e.contains("distinct"), "{e}");
    let e = rom_refit(&gram, 2, &w2, 3, &[2]).unwrap_err().to_string();
    assert!(e.contains("below 2"), "{e}");
    let e = rom_refit(&gram, 2, &w2[..5], 3, &[0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("output weight"), "{e}");
}

#[test]
fn should_keep_a_layer_whole_on_the_active_subspace_of_its_gradients() {
    let device = Device::flex();
    let mut rng = StdRng::seed_from_u64(11);
    let (d_in, d_out, rank) = (10, 6, 3);
    // W of rank 3: the loss reaches x only through xW, so ∇ₓℓ = W ∇_yℓ lies in W's columns.
    let w = matmul(
        &normal(&mut rng, d_in * rank),
        &normal(&mut rng, rank * d_out),
        d_in,
        rank,
        d_out,
    );
    let gy = normal(&mut rng, 50 * d_out);
    let gx = matmul(&gy, &transpose(&w, d_in, d_out), 50, d_out, d_in);
    let cov = matmul(&transpose(&gx, 50, d_in), &gx, d_in, 50, d_in);
    let (a, b) = active_factors(&w, &cov, d_in, d_out, rank, &device).unwrap();
    assert_eq!((a.len(), b.len()), (d_in * rank, rank * d_out));
    let err = rel(&matmul(&a, &b, d_in, rank, d_out), &w);
    assert!(err < 1e-9, "rank {rank}: {err}");
    // V has orthonormal columns.
    let vtv = matmul(&transpose(&a, d_in, rank), &a, rank, d_in, rank);
    for i in 0..rank {
        for j in 0..rank {
            let want = if i == j { 1.0 } else { 0.0 };
            assert!((vtv[i * rank + j] - want).abs() < 1e-9, "{vtv:?}");
        }
    }
    let (a, b) = active_factors(&w, &cov, d_in, d_out, rank - 1, &device).unwrap();
    let err = rel(&matmul(&a, &b, d_in, rank - 1, d_out), &w);
    assert!(err > 0.05, "rank {}: {err}", rank - 1);
    let e = active_factors(&w, &cov[..50], d_in, d_out, rank, &device).unwrap_err();
    assert!(e.to_string().contains("gradient covariance"), "{e}");
}

#[test]
fn should_truncate_where_the_fisher_information_is() {
    let device = Device::flex();
    let mut rng = StdRng::seed_from_u64(5);
    let (d_in, d_out, r) = (10, 8, 2);
    // Rows 0..5 (Fisher 1) form a rank-2 block; rows 5..10 (Fisher 0) are large noise.
    let mut w = matmul(
        &normal(&mut rng, 5 * r),
        &normal(&mut rng, r * d_out),
        5,
        r,
        d_out,
    );
    w.extend(normal(&mut rng, 5 * d_out).iter().map(|v| 3.0 * v));
    let fisher: Vec<f64> = (0..d_in).map(|i| if i < 5 { 1.0 } else { 0.0 }).collect();
    let top = |a: &[f64], b: &[f64]| matmul(a, b, d_in, r, d_out)[..5 * d_out].to_vec();
    let (a, b) = Spectrum::row_weighted(&w, &fisher, d_in, d_out, &device)
        .unwrap()
        .factors(r);
    let weighted = rel(&top(&a, &b), &w[..5 * d_out]);
    let (a, b) = Spectrum::new(&w, None, d_in, d_out, &device)
        .unwrap()
        .factors(r);
    let plain = rel(&top(&a, &b), &w[..5 * d_out]);
    assert!(weighted < 2e-2, "Fisher-weighted rows 0..5: {weighted}");
    assert!(plain > 0.3, "plain SVD rows 0..5: {plain}");
    let e = Spectrum::row_weighted(&w, &fisher[..9], d_in, d_out, &device).unwrap_err();
    assert!(e.to_string().contains("row weights"), "{e}");
    let mut negative = fisher.clone();
    negative[0] = -1.0;
    assert!(Spectrum::row_weighted(&w, &negative, d_in, d_out, &device).is_err());
}

fn tiny_config(dir: &std::path::Path) -> BertConfig {
    let config = r#"{"model_type": "bert", "vocab_size": 50, "hidden_size": 24,
        "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 48,
        "hidden_act": "gelu", "max_position_embeddings": 16, "type_vocab_size": 2,
        "layer_norm_eps": 1e-12}"#;
    std::fs::write(dir.join("config.json"), config).unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    BertConfig::from_file(dir.join("config.json")).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("memtrain-data-aware-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ids(device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let ids = TensorData::new(vec![1i64, 7, 9, 30, 2, 4, 44, 0], [2, 4]);
    let mask = TensorData::new(vec![1i64, 1, 1, 1, 1, 1, 1, 0], [2, 4]);
    (
        Tensor::from_data(ids, device),
        Tensor::from_data(mask, device),
    )
}

fn probes(device: &Device) -> Tensor<2> {
    let z: Vec<f32> = normal(&mut StdRng::seed_from_u64(3), 2 * 24)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    Tensor::from_data(TensorData::new(z, [2, 24]), device)
}

/// A tiny BERT on the autodiff device, its sensitivity statistics for fixed probes, and the
/// plain model with the same weights.
fn tiny_calibrated(dir: &std::path::Path) -> (Bert, Bert, Calibration) {
    let autodiff = Device::flex().autodiff();
    let model = tiny_config(dir).init(&autodiff).unwrap();
    let (i, m) = ids(&autodiff);
    let cal = sensitivity_batch(&model, i, m, probes(&autodiff)).unwrap();
    let plain = model.clone().valid();
    (model, plain, cal)
}

#[test]
fn should_match_parameter_gradients_and_finite_differences_in_the_sensitivity() {
    let dir = scratch("sensitivity");
    let (model, plain, cal) = tiny_calibrated(&dir);
    assert_eq!(cal.tokens, 7);
    // Fisher row sums against burn's own weight gradients of the same probe loss.
    let autodiff = Device::flex().autodiff();
    let (i, m) = ids(&autodiff);
    let grads = (model.embed(i, m) * probes(&autodiff)).sum().backward();
    for (name, layer) in model.linears() {
        let LinearLayer::Exact(l) = layer else {
            panic!("{name} is dense when loaded")
        };
        let g = l.weight.val().grad(&grads).unwrap();
        let want: Vec<f64> = g
            .powi_scalar(2)
            .sum_dim(1)
            .into_data()
            .iter::<f64>()
            .collect();
        let got = cal.fisher(&name).unwrap();
        assert!(rel(got, &want) < 1e-4, "{name}: {got:?} vs {want:?}");
    }
    // The input-gradient covariance of two linears against central differences of the probe
    // loss in the linear's input, one token entry at a time.
    let device = Device::flex();
    let z = probes(&device);
    let loss = |layer: usize, slot: usize, at: Option<(usize, usize, usize, f32)>| -> f64 {
        let (i, m) = ids(&device);
        let e = plain.embed_probed(i, m, &mut |li, site, x| match at {
            Some((b, t, c, eps)) if li == layer && site == Site::input(slot) => {
                let mut bump = vec![0.0f32; x.dims().iter().product()];
                let d = x.dims()[2];
                bump[(b * 4 + t) * d + c] = eps;
                x.clone() + Tensor::<3>::from_data(TensorData::new(bump, x.dims()), &device)
            }
            _ => x,
        });
        (e * z.clone()).sum().into_scalar::<f64>()
    };
    for (layer, slot, name, width) in [
        (1, 4, "encoder.layer.1.intermediate.dense", 24),
        (0, 5, "encoder.layer.0.output.dense", 48),
    ] {
        let eps = 1e-2f32;
        let mut g = vec![0.0; 8 * width];
        for b in 0..2 {
            for t in 0..4 {
                for c in 0..width {
                    let up = loss(layer, slot, Some((b, t, c, eps)));
                    let down = loss(layer, slot, Some((b, t, c, -eps)));
                    g[(b * 4 + t) * width + c] = (up - down) / (2.0 * eps as f64);
                }
            }
        }
        // The padded token (sentence 1, position 3) gets no gradient.
        assert!(frob(&g[7 * width..]) < 1e-3 * frob(&g), "{name}: padding");
        let want = matmul(&transpose(&g, 8, width), &g, width, 8, width);
        let (got, d) = cal.grad_cov(name).unwrap();
        assert_eq!(d, width);
        let err = rel(got, &want);
        assert!(err < 2e-2, "{name}: gradient covariance off by {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn should_compress_a_tiny_bert_by_every_data_aware_method_and_load_it_back() {
    let dir = scratch("round-trip");
    let (_, plain, cal) = tiny_calibrated(&dir);
    let device = Device::flex();
    let (i, m) = ids(&device);
    let original = plain.embed(i.clone(), m.clone());
    for method in [
        CompressMethod::Asvd,
        CompressMethod::Fwsvd,
        CompressMethod::Active,
        CompressMethod::Rom,
    ] {
        let params = CompressParams::new(method, 2.0);
        // Without the statistics the method reads, it refuses and says what it needs.
        let partial = Calibration::from_grams(
            plain
                .linears()
                .iter()
                .map(|(n, l)| {
                    let d = l.dims()[0];
                    (n.clone(), d, cal.gram(n).unwrap().0.to_vec())
                })
                .collect(),
            7,
        )
        .unwrap();
        if method.needs_sensitivity() {
            let e = compress_bert_calibrated(plain.clone(), &params, Some(&partial), |_| {})
                .unwrap_err()
                .to_string();
            assert!(e.contains("calibrate_sensitivity"), "{method}: {e}");
        }
        let e = compress_bert_calibrated(plain.clone(), &params, None, |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&method.to_string()) && e.contains("calibration"),
            "{e}"
        );
        let (compressed, reports) =
            compress_bert_calibrated(plain.clone(), &params, Some(&cal), |_| {}).unwrap();
        assert_eq!(reports.len(), 12);
        let before: usize = reports.iter().map(|r| r.params_before).sum();
        let after: usize = reports.iter().map(|r| r.params_after).sum();
        assert!(after * 2 <= before, "{method}: {after} of {before}");
        if method == CompressMethod::Rom {
            for layer in &compressed.layers {
                assert_eq!(layer.ffn_in.dims(), [24, 24], "half of 48 neurons kept");
                assert_eq!(layer.ffn_out.dims(), [24, 24]);
            }
        }
        let out = dir.join(format!("out-{method}"));
        let manifest = CompressedManifest::describe(&compressed, method, 2.0, "one-shot");
        save_compressed(&compressed, &manifest, &dir, &out).unwrap();
        let (loaded, read) = load_compressed(&out, &device).unwrap();
        assert_eq!(read.method, method.to_string());
        let a = compressed.embed(i.clone(), m.clone());
        let b = loaded.embed(i.clone(), m.clone());
        let err = (a.clone() - b).abs().max().into_scalar::<f32>();
        assert!(err < 1e-6, "{method}: reloaded embeddings differ by {err}");
        let cos = (a * original.clone())
            .sum_dim(1)
            .mean()
            .into_scalar::<f32>();
        assert!(cos > 0.0 && cos.is_finite(), "{method}: cosine {cos}");
    }
    // A manifest whose MLP widths disagree is refused, naming the layer.
    let path = dir.join("out-rom/compressed.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let shape = &mut json["layers"][4]["factor_shapes"][0];
    assert_eq!(
        *shape,
        serde_json::json!([24, 24]),
        "the reduced intermediate"
    );
    *shape = serde_json::json!([24, 23]);
    std::fs::write(&path, json.to_string()).unwrap();
    let e = load_compressed(dir.join("out-rom"), &device)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("compressed.json") && e.contains("encoder.layer.0"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

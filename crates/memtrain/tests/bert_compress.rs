//! Compressing a BERT's linears: every factored forward against its dense reconstruction and
//! a save/load round trip for every method on a tiny random BERT (no download), bad ratios
//! and bit widths, and the MiniLM round trip at ratio 2 (skipped when it is not fetched).

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::nn::LinearConfig;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use memtrain::Error;
use memtrain::bert::{
    Bert, BertConfig, BertTokenizer, CompressMethod, CompressParams, CompressedManifest,
    compress_bert, compress_linear, load_compressed, save_compressed,
};
use memtrain::linear::{LinearLayer, Linears};

const METHODS: [CompressMethod; 7] = [
    CompressMethod::Svd,
    CompressMethod::Tucker2,
    CompressMethod::Cp,
    CompressMethod::CpQuant { bits: 4 },
    CompressMethod::CpQuant { bits: 8 },
    CompressMethod::CpPtq { bits: 4 },
    CompressMethod::Ttm,
];

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "memtrain-bert-compress-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn max_abs<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

fn random_linear(d_in: usize, d_out: usize, device: &Device) -> LinearLayer {
    LinearLayer::Exact(LinearConfig::new(d_in, d_out).init(device))
}

fn params(method: CompressMethod, ratio: f64) -> CompressParams {
    CompressParams {
        cp_iters: 5,
        ..CompressParams::new(method, ratio)
    }
}

#[test]
fn should_run_every_factored_forward_as_its_dense_reconstruction() {
    let device = Device::flex();
    for [d_in, d_out] in [[24, 48], [48, 24]] {
        let dense = random_linear(d_in, d_out, &device);
        let w = dense.dense_weight();
        for method in METHODS {
            let (layer, report) = compress_linear("l", &dense, &params(method, 2.0)).unwrap();
            let x = Tensor::<3>::random([2, 5, d_in], Distribution::Normal(0.0, 1.0), &device);
            let what = format!("{method} on [{d_in}, {d_out}]");
            // x Ŵ + b: the factored forward must equal the dense product of its factors.
            let w_hat = layer.dense_weight();
            let b = layer.bias().unwrap().reshape([1, d_out]);
            let reference = x.clone().reshape([10, d_in]).matmul(w_hat.clone()) + b;
            let err = max_abs(layer.forward(x).reshape([10, d_out]), reference);
            assert!(err < 1e-4, "{what}: forward differs by {err}");
            assert!(
                !matches!(layer, LinearLayer::Exact(_)),
                "{what}: still dense"
            );
            assert!(
                2 * report.params_after <= report.params_before,
                "{what}: {} -> {} parameters",
                report.params_before,
                report.params_after
            );
            assert_eq!(report.params_after, layer.weight_param_count(), "{what}");
            let norm = |t: Tensor<2>| t.powi_scalar(2).sum().into_scalar::<f64>().sqrt();
            let rel = norm(w.clone() - w_hat) / norm(w.clone());
            assert!(
                (rel - report.rel_error).abs() < 1e-4 && rel > 0.0 && rel < 1.0,
                "{what}: reported error {} vs {rel}",
                report.rel_error
            );
            match method {
                CompressMethod::CpQuant { .. } => {
                    let (ptq, als) = (report.ptq_rel_error.unwrap(), report.als_rel_error.unwrap());
                    assert!(
                        ptq >= als - 1e-3 && als > 0.0,
                        "{what}: ptq {ptq} als {als}"
                    );
                }
                CompressMethod::CpPtq { .. } => {
                    let als = report.als_rel_error.unwrap();
                    assert!(report.rel_error >= als - 1e-3, "{what}: {rel} vs als {als}");
                }
                _ => assert!(report.ptq_rel_error.is_none(), "{what}"),
            }
        }
    }
}

#[test]
fn should_give_the_optimal_svd_error_and_recompress_factored_layers() {
    // Ranks from the ratio, r = floor(m n / (ratio (m + n))); the rank-r' SVD of a rank-r
    // truncated SVD (r' < r) is the rank-r' SVD of the original, so re-compressing the
    // factors (what --iterative does between stages) loses nothing against compressing once.
    let device = Device::flex();
    let dense = random_linear(32, 64, &device);
    let (half, r2) = compress_linear("l", &dense, &params(CompressMethod::Svd, 2.0)).unwrap();
    assert_eq!(r2.rank, 32 * 64 / (2 * 96));
    let (quarter, r4) = compress_linear("l", &half, &params(CompressMethod::Svd, 4.0)).unwrap();
    assert_eq!(r4.rank, 32 * 64 / (4 * 96));
    assert_eq!(r4.params_before, r2.params_after);
    let direct = compress_linear("l", &dense, &params(CompressMethod::Svd, 4.0))
        .unwrap()
        .0;
    // Truncating the rank-r SVD to a lower rank is the rank-r' SVD of the original.
    let err = max_abs(quarter.dense_weight(), direct.dense_weight());
    assert!(err < 1e-4, "re-compressed differs from direct by {err}");
}

#[test]
fn should_reject_unreachable_ratios_and_bad_bits() {
    let device = Device::flex();
    let dense = random_linear(24, 48, &device);
    for method in METHODS {
        let err = compress_linear("l", &dense, &params(method, 1000.0))
            .err()
            .unwrap_or_else(|| panic!("{method} at ratio 1000 succeeded"));
        let msg = err.to_string();
        assert!(matches!(err, Error::Config { .. }), "{method}: {msg}");
        assert!(
            msg.contains("1000") && msg.contains("at most"),
            "{method}: {msg}"
        );
    }
    for bad in ["cp-q:9", "cp-q:1", "cp-q:x", "cp-ptq:9"] {
        let msg = bad.parse::<CompressMethod>().unwrap_err().to_string();
        assert!(msg.contains("2..=8"), "{bad}: {msg}");
    }
    let msg = "pca".parse::<CompressMethod>().unwrap_err().to_string();
    assert!(msg.contains("pca") && msg.contains("tucker2"), "{msg}");
    assert_eq!(
        "cp-q:4".parse::<CompressMethod>().unwrap(),
        CompressMethod::CpQuant { bits: 4 }
    );
}

/// A tiny BERT directory: a Hugging Face style config.json and a placeholder tokenizer
/// (save_compressed only copies it).
fn tiny_bert_dir(dir: &Path) -> Bert {
    let config = r#"{"model_type": "bert", "vocab_size": 50, "hidden_size": 24,
        "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 48,
        "hidden_act": "gelu", "max_position_embeddings": 16, "type_vocab_size": 2,
        "layer_norm_eps": 1e-12}"#;
    std::fs::write(dir.join("config.json"), config).unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    let device = Device::flex();
    let model = BertConfig::from_file(dir.join("config.json"))
        .unwrap()
        .init(&device)
        .unwrap();
    // Materialise the lazily initialised embeddings, so clones share their values.
    let (i, m) = ids(&device);
    model.embed(i, m);
    model
}

fn ids(device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let ids = TensorData::new(vec![1i64, 7, 9, 30, 2, 4, 44, 0], [2, 4]);
    let mask = TensorData::new(vec![1i64, 1, 1, 1, 1, 1, 1, 0], [2, 4]);
    (
        Tensor::from_data(ids, device),
        Tensor::from_data(mask, device),
    )
}

#[test]
fn should_save_and_load_every_method_on_a_tiny_bert() {
    let device = Device::flex();
    let root = scratch("tiny");
    let source = root.join("source");
    std::fs::create_dir_all(&source).unwrap();
    let mut file_bytes = Vec::new();
    for method in METHODS {
        let model = tiny_bert_dir(&source);
        let (compressed, reports) = compress_bert(model, &params(method, 2.0), |_| {}).unwrap();
        assert_eq!(reports.len(), 12);
        let manifest = CompressedManifest::describe(&compressed, method, 2.0, "one-shot");
        let out = root.join(format!("out-{method}").replace(':', "-"));
        save_compressed(&compressed, &manifest, &source, &out).unwrap();
        // Writing again replaces the previous compressed model in place.
        save_compressed(&compressed, &manifest, &source, &out).unwrap();
        let (loaded, read) = load_compressed(&out, &device).unwrap();
        assert!(
            read.weights_crc32.is_some(),
            "{method}: no checksum written"
        );
        let read = CompressedManifest {
            weights_crc32: None,
            ..read
        };
        assert_eq!(read, manifest, "{method}");
        assert_eq!(read.packed, method.bits().is_some(), "{method}");
        assert_eq!(loaded.num_params(), compressed.num_params(), "{method}");
        // Every factor comes back bit for bit (quantized ones from their packed codes).
        for ((name, a), (_, b)) in compressed.linears().into_iter().zip(loaded.linears()) {
            let bits = |l: &LinearLayer| -> Vec<u32> {
                l.dense_weight()
                    .into_data()
                    .iter::<f32>()
                    .map(f32::to_bits)
                    .collect()
            };
            assert!(bits(a) == bits(b), "{method}: {name} differs after loading");
        }
        let bytes = std::fs::metadata(out.join("compressed.safetensors"))
            .unwrap()
            .len();
        file_bytes.push((method, bytes));
        let (i, m) = ids(&device);
        let err = max_abs(compressed.embed(i.clone(), m.clone()), loaded.embed(i, m));
        assert!(err < 1e-6, "{method}: reloaded embeddings differ by {err}");
    }
    // Packed codes: 4-bit factors take an eighth of f32 factors' bytes, so the file shrinks
    // (the embeddings and norms stay f32 in both).
    let size = |m: CompressMethod| file_bytes.iter().find(|(x, _)| *x == m).unwrap().1;
    let (cp, cp4, cp8) = (
        size(CompressMethod::Cp),
        size(CompressMethod::CpQuant { bits: 4 }),
        size(CompressMethod::CpQuant { bits: 8 }),
    );
    assert!(
        cp4 < cp8 && cp8 < cp,
        "cp {cp}, cp-q:8 {cp8}, cp-q:4 {cp4} bytes"
    );
    // A directory that is not a compressed model is neither loaded nor overwritten.
    let err = load_compressed(&source, &device).unwrap_err().to_string();
    assert!(err.contains("compressed.json"), "{err}");
    let model = tiny_bert_dir(&source);
    let manifest = CompressedManifest::describe(&model, CompressMethod::Svd, 1.0, "none");
    let err = save_compressed(&model, &manifest, &source, &source)
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid out"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

fn minilm_dir() -> Option<PathBuf> {
    memtrain::bert::fetched_model_dir()
}

#[test]
fn should_round_trip_minilm_compressed_by_svd_at_ratio_2() {
    let Some(dir) = minilm_dir() else {
        eprintln!("skipping: run scripts/fetch-minilm.sh to fetch all-MiniLM-L6-v2");
        return;
    };
    let device = Device::flex();
    let model = Bert::load(&dir, &device).unwrap();
    let tokenizer = BertTokenizer::from_dir(&dir).unwrap();
    let texts = [
        "A man is eating food.",
        "Hi",
        "A man is eating a piece of bread.",
    ];
    let original = model.embed_texts(&tokenizer, &texts, 2, &device).unwrap();
    let (compressed, reports) =
        compress_bert(model, &params(CompressMethod::Svd, 2.0), |_| {}).unwrap();
    assert_eq!(reports.len(), 36);
    let before: usize = reports.iter().map(|r| r.params_before).sum();
    let after: usize = compressed
        .linears()
        .iter()
        .map(|(_, l)| l.weight_param_count())
        .sum();
    assert!(2 * after <= before, "{before} -> {after}");
    let out = scratch("minilm").join("svd2");
    let manifest = CompressedManifest::describe(&compressed, CompressMethod::Svd, 2.0, "one-shot");
    save_compressed(&compressed, &manifest, &dir, &out).unwrap();
    let (loaded, _) = load_compressed(&out, &device).unwrap();
    let tokenizer2 = BertTokenizer::from_dir(&out).unwrap();
    let a = compressed
        .embed_texts(&tokenizer, &texts, 2, &device)
        .unwrap();
    let b = loaded.embed_texts(&tokenizer2, &texts, 2, &device).unwrap();
    for ((x, y), o) in a.iter().zip(&b).zip(&original) {
        let diff = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-5, "reloaded embedding differs by {diff}");
        let norm = x.iter().map(|p| p * p).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
        // Compression changed the embedding (a model that silently stayed dense would not).
        let cos: f32 = x.iter().zip(o).map(|(p, q)| p * q).sum();
        assert!(
            cos < 0.9999,
            "embedding unchanged by compression: cos {cos}"
        );
    }
    let _ = std::fs::remove_dir_all(out.parent().unwrap());
}

/// Issue 21: a compressed model's files truncated at random offsets or with bytes flipped.
/// The weights carry a CRC-32 in the manifest, so every change to them is an error naming
/// `compressed.safetensors`; a changed manifest is an error naming `compressed.json` unless
/// the change leaves a consistent manifest (a digit of the descriptive `ratio`, say). Never a
/// panic, and the files are never modified.
#[test]
fn should_refuse_truncated_or_flipped_compressed_model_files() {
    let device = Device::flex();
    let root = scratch("corrupt");
    let source = root.join("source");
    std::fs::create_dir_all(&source).unwrap();
    let model = tiny_bert_dir(&source);
    let method = CompressMethod::Svd;
    let (compressed, _) = compress_bert(model, &params(method, 2.0), |_| {}).unwrap();
    let manifest = CompressedManifest::describe(&compressed, method, 2.0, "one-shot");
    let out = root.join("out");
    save_compressed(&compressed, &manifest, &source, &out).unwrap();
    let mut state = 0x2026_u64;
    let mut below = |n: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) % n as u64) as usize
    };
    let mut loaded_anyway = 0;
    for (file, strict) in [("compressed.safetensors", true), ("compressed.json", false)] {
        let path = out.join(file);
        let good = std::fs::read(&path).unwrap();
        for i in 0..24 {
            let mut bad = good.clone();
            let case = if i % 2 == 0 {
                let cut = below(good.len());
                bad.truncate(cut);
                format!("{file} cut at {cut}")
            } else {
                let at = below(good.len());
                bad[at] ^= 1 << below(8);
                format!("{file} flipped at {at}")
            };
            std::fs::write(&path, &bad).unwrap();
            let result = std::panic::catch_unwind(|| load_compressed(&out, &device));
            match result {
                Err(_) => panic!("{case}: load panicked"),
                Ok(Err(e)) => assert!(e.to_string().contains(file), "{case}: {e}"),
                Ok(Ok(_)) if strict => panic!("{case}: loaded"),
                Ok(Ok(_)) => loaded_anyway += 1,
            }
            assert_eq!(std::fs::read(&path).unwrap(), bad, "{case}: file changed");
        }
        std::fs::write(&path, &good).unwrap();
    }
    eprintln!("{loaded_anyway} of 24 manifest changes left a consistent manifest");
    load_compressed(&out, &device).unwrap();
    let _ = std::fs::remove_dir_all(&root);
}

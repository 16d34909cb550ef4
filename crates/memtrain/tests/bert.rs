//! The BERT encoder: all-MiniLM-L6-v2 against an independent NumPy forward pass (when the
//! model has been fetched), and load errors and padding invariance without it.

use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use memtrain::Error;
use memtrain::bert::{Bert, BertConfig, BertTokenizer};
use memtrain::linear::Linears;

fn minilm_dir() -> Option<PathBuf> {
    memtrain::bert::fetched_model_dir()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memtrain-bert-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[derive(serde::Deserialize)]
struct Fixture {
    max_seq_length: usize,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    embedding: Vec<f32>,
}

#[test]
fn should_match_the_numpy_reference_of_minilm() {
    let Some(dir) = minilm_dir() else {
        eprintln!("skipping: run scripts/fetch-minilm.sh (or set MEMTRAIN_MINILM_DIR)");
        return;
    };
    let fixture: Fixture = serde_json::from_str(include_str!("fixtures/minilm_reference.json"))
        .expect("the fixture parses");
    let device = Device::flex();
    let model = Bert::load(&dir, &device).unwrap();
    let tokenizer = BertTokenizer::from_dir(&dir).unwrap();
    assert_eq!(tokenizer.max_seq_length(), fixture.max_seq_length);
    assert_eq!(model.d_model(), 384);

    let texts: Vec<&str> = fixture.cases.iter().map(|c| c.text.as_str()).collect();
    // One padded batch: the short texts ride along with the 256-token one.
    let input = tokenizer
        .encode_batch(&texts, tokenizer.max_seq_length())
        .unwrap();
    for (i, case) in fixture.cases.iter().enumerate() {
        assert_eq!(
            input.unpadded_ids(i),
            case.ids,
            "token ids of {:?}",
            case.text
        );
    }
    let (ids, mask) = input.tensors(&device);
    let got = model
        .embed(ids, mask)
        .into_data()
        .iter::<f32>()
        .collect::<Vec<_>>();
    for (i, case) in fixture.cases.iter().enumerate() {
        let row = &got[i * 384..(i + 1) * 384];
        let max_err = row
            .iter()
            .zip(&case.embedding)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let head: String = case.text.chars().take(30).collect();
        eprintln!("{head:?}: max abs error {max_err:.2e}");
        assert!(
            max_err < 1e-4,
            "embedding of {:?}: max abs error {max_err}",
            case.text
        );
    }

    // The same through embed_texts, batch 2 (other padding): same vectors.
    let again = model.embed_texts(&tokenizer, &texts, 2, &device).unwrap();
    for (row, case) in again.iter().zip(&fixture.cases) {
        let max_err = row
            .iter()
            .zip(&case.embedding)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(max_err < 1e-4, "embed_texts of {:?}: {max_err}", case.text);
    }
    let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    assert!(cos(&again[0], &again[1]) > 0.6, "food vs bread");
    assert!(cos(&again[0], &again[2]) < 0.3, "food vs stock market");
}

#[test]
fn should_name_the_path_of_a_missing_or_foreign_model() {
    let device = Device::flex();
    let missing = std::env::temp_dir().join("memtrain-bert-does-not-exist");
    let err = Bert::load(&missing, &device).unwrap_err();
    assert!(matches!(err, Error::Data { .. }), "{err}");
    assert!(
        err.to_string().contains("memtrain-bert-does-not-exist"),
        "{err}"
    );

    // A directory without config.json.
    let empty = scratch("empty");
    let err = Bert::load(&empty, &device).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
    let err = BertTokenizer::from_dir(&empty).unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");

    // A GPT-2 config.
    let gpt = scratch("gpt2");
    std::fs::write(
        gpt.join("config.json"),
        r#"{"model_type": "gpt2", "vocab_size": 50257, "n_embd": 768, "n_layer": 12}"#,
    )
    .unwrap();
    let err = Bert::load(&gpt, &device).unwrap_err();
    assert!(matches!(err, Error::Data { .. }), "{err}");
    assert!(err.to_string().contains("config.json"), "{err}");

    // A BERT config with an activation this crate does not run.
    let tiny = r#"{"model_type": "bert", "vocab_size": 50, "hidden_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
        "hidden_act": "ACT", "max_position_embeddings": 32, "type_vocab_size": 2,
        "layer_norm_eps": 1e-12}"#;
    let bad_act = scratch("act");
    std::fs::write(bad_act.join("config.json"), tiny.replace("ACT", "swishy")).unwrap();
    let err = Bert::load(&bad_act, &device).unwrap_err();
    assert!(err.to_string().contains("\"swishy\""), "{err}");

    // A good config, then no weights, then weights of another model.
    let foreign = scratch("foreign");
    std::fs::write(foreign.join("config.json"), tiny.replace("ACT", "gelu")).unwrap();
    let err = Bert::load(&foreign, &device).unwrap_err();
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    std::fs::write(foreign.join("model.safetensors"), b"not a safetensors file").unwrap();
    let err = Bert::load(&foreign, &device).unwrap_err();
    assert!(matches!(err, Error::Data { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    let other = memtrain::model::Preset::Tiny.config(256);
    let policy = memtrain::policy::MemoryPolicy::default();
    let gpt_model = other.init(&policy, &device).unwrap();
    use burn::store::{ModuleSnapshot, SafetensorsStore};
    std::fs::remove_file(foreign.join("model.safetensors")).unwrap();
    gpt_model
        .save_into(&mut SafetensorsStore::from_file(
            foreign.join("model.safetensors"),
        ))
        .unwrap();
    let err = Bert::load(&foreign, &device).unwrap_err();
    assert!(matches!(err, Error::Data { .. }), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");

    // A bad truncation length is a config error, not a tokenizer panic.
    if let Some(dir) = minilm_dir() {
        let tokenizer = BertTokenizer::from_dir(dir).unwrap();
        assert!(tokenizer.encode_batch(&["x"], 2).is_err());
        let short = tokenizer.encode_batch(&["a b c d e f"], 4).unwrap();
        assert_eq!(short.seq(), 4);
    }
}

fn int_tensor(rows: &[&[i64]], device: &Device) -> Tensor<2, Int> {
    let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), rows[0].len()]), device)
}

#[test]
fn should_ignore_padding_when_embedding_a_shorter_sentence() {
    let device = Device::flex();
    let model = BertConfig::new(50, 32, 2, 4, 64)
        .with_max_position(16)
        .init(&device)
        .unwrap();
    let short = [1, 7, 9, 3];
    // Alone, then padded to 7 in a batch beside a longer sentence. The pad id 0 and the
    // garbage id 42 in the padding must both be invisible.
    let alone = model.embed(
        int_tensor(&[&short], &device),
        int_tensor(&[&[1; 4]], &device),
    );
    let batch = model.embed(
        int_tensor(&[&[1, 7, 9, 3, 0, 0, 42], &[1, 5, 6, 8, 2, 4, 3]], &device),
        int_tensor(&[&[1, 1, 1, 1, 0, 0, 0], &[1; 7]], &device),
    );
    let alone = alone.into_data().iter::<f32>().collect::<Vec<_>>();
    let batch = batch.into_data().iter::<f32>().collect::<Vec<_>>();
    let max_err = alone
        .iter()
        .zip(&batch[..32])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(max_err < 1e-5, "padding changed the embedding by {max_err}");
    let norm = alone.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    // The longer sentence is a different vector (the test is not vacuous).
    let diff = alone
        .iter()
        .zip(&batch[32..])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff > 1e-3, "two sentences embed alike: {diff}");

    // Without the mask the padding does change the embedding: the mask is what protects it.
    let unmasked = model.embed(
        int_tensor(&[&[1, 7, 9, 3, 0, 0, 42]], &device),
        int_tensor(&[&[1; 7]], &device),
    );
    let unmasked = unmasked.into_data().iter::<f32>().collect::<Vec<_>>();
    let diff = alone
        .iter()
        .zip(&unmasked)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        diff > 1e-3,
        "padding tokens had no effect even unmasked: {diff}"
    );

    // Every linear is reachable by name, the hook for compression.
    let names: Vec<String> = model.linears().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 12);
    assert!(names.contains(&"encoder.layer.1.intermediate.dense".to_string()));
}

//! A pretrained BERT sentence encoder (all-MiniLM-L6-v2) loaded from Hugging Face files.
//!
//! A sentence-transformers model directory holds `config.json` ([`BertConfig`]),
//! `model.safetensors` ([`Bert::load`]), `tokenizer.json` and `sentence_bert_config.json`
//! ([`BertTokenizer::from_dir`]). `scripts/fetch-minilm.sh` downloads all-MiniLM-L6-v2
//! (6 layers, d_model 384, 12 heads, 22.7M parameters) and prints its directory.
//!
//! ```no_run
//! use burn::tensor::Device;
//! use memtrain::bert::{Bert, BertTokenizer};
//!
//! # fn main() -> memtrain::Result<()> {
//! let device = Device::flex();
//! let dir = "minilm/model"; // what scripts/fetch-minilm.sh prints
//! let model = Bert::load(dir, &device)?;
//! let tokenizer = BertTokenizer::from_dir(dir)?;
//! let e = model.embed_texts(&tokenizer, &["A man is eating food."], 32, &device)?;
//! assert_eq!(e[0].len(), 384);
//! # Ok(())
//! # }
//! ```
//!
//! Every linear layer is a [`LinearLayer`](crate::linear::LinearLayer) reachable by its
//! Hugging Face name through [`Linears`](crate::linear::Linears), so compressed
//! layers can replace the dense ones: [`compress_bert`] does that by a target parameter
//! ratio (SVD, Tucker-2, CP, quantized CP, TT-matrix), [`compress_bert_calibrated`] with the
//! data-aware methods that read what each layer computes on calibration text ([`calibrate`],
//! [`calibrate_sensitivity`]: activation-whitened SVD, Fisher-weighted SVD, active subspaces,
//! reduced-order MLPs by maxvol in `rom.rs`), [`compress_bert_sequential`] layer by layer on
//! the partly compressed model, [`compress_bert_iterative`] in stages with distillation in
//! between ([`compress_model`] runs any of them on a model directory), and
//! [`save_compressed`] / [`load_compressed`] store the factors (quantized ones as packed
//! codes); [`compare_embeddings`] measures how close a compressed model's embeddings stay to
//! the original's.

mod calibrate;
mod compress;
mod config;
mod distill;
mod eval;
mod files;
mod model;
mod pipeline;
mod rom;
mod sequential;
mod spectrum;
mod tokenizer;

pub use calibrate::{
    CALIBRATION_BATCH, CALIBRATION_LINES, Calibration, calibrate, calibrate_sensitivity,
    sensitivity_batch,
};
pub use compress::{
    COMPRESSED_WEIGHTS_FILE, CompressMethod, CompressParams, CompressedManifest, LayerReport,
    LayerSpec, MANIFEST_FILE, compress_bert, compress_bert_calibrated, compress_linear,
    compress_linear_calibrated, load_compressed, save_compressed, ttm_rank_for_ratio,
};
pub use config::{BertActivation, BertConfig};
pub use distill::{IterativeParams, StageReport, compress_bert_iterative};
pub use eval::{
    EmbedReport, ModelStats, compare_embeddings, compare_embeddings_with, packed_bytes, text_lines,
};
pub use model::{Bert, BertEmbeddings, BertLayer, Site};
pub use pipeline::{CompressSummary, HELD_OUT_LINES, Iterative, compress_model, distill_lines};
pub use rom::{rom_neurons, rom_output_error, rom_refit, rom_refit_to};
pub use sequential::{SEQUENTIAL_RIDGE, compress_bert_sequential};
pub use spectrum::{RIDGE, Spectrum, active_factors, allocate_ranks, whitened_factors};
pub use tokenizer::{BertInput, BertTokenizer};

/// The model directory `scripts/fetch-minilm.sh` fills: `$MEMTRAIN_MINILM_DIR/model`, or
/// `~/.cache/memtrain/minilm/model`; `None` when no `model.safetensors` is there (the tests
/// and benchmarks that need the model skip then).
pub fn fetched_model_dir() -> Option<std::path::PathBuf> {
    let root = match std::env::var_os("MEMTRAIN_MINILM_DIR") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".cache/memtrain/minilm"),
    };
    let dir = root.join("model");
    dir.join("model.safetensors").is_file().then_some(dir)
}

//! How close a compressed BERT's sentence embeddings stay to the original's on a text corpus,
//! and what the compression bought in bytes and time.

use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;
use serde::Serialize;

use super::compress::load_compressed;
use super::model::Bert;
use super::tokenizer::BertTokenizer;
use crate::error::{Error, Result};
use crate::linear::Linears;

/// One model's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStats {
    /// Parameters held (all of them, embeddings included).
    pub params: usize,
    /// Bytes of those parameters as stored (f32).
    pub model_bytes: usize,
    /// Bytes of the encoder linears' weights alone (f32).
    pub linear_bytes: usize,
    /// For quantized CP: the model with the factor codes packed at `bits` bits plus one f32
    /// scale per factor (the factors are held as f32 grid values).
    pub packed_bytes: Option<usize>,
    /// Seconds encoding the lines (after one warm-up batch).
    pub encode_seconds: f64,
}

/// What [`compare_embeddings`] measured; serializes to the keys of `memtrain eval-embed --json`.
#[derive(Debug, Clone, Serialize)]
pub struct EmbedReport {
    /// Lines encoded.
    pub lines: usize,
    /// The original model.
    pub original: ModelStats,
    /// The compressed model, if one was given.
    pub compressed: Option<ModelStats>,
    /// Its method, as its manifest says.
    pub method: Option<String>,
    /// Its schedule, as its manifest says.
    pub schedule: Option<String>,
    /// Mean cosine of each line's compressed embedding with its original one.
    pub mean_cosine: Option<f64>,
    /// The smallest such cosine.
    pub min_cosine: Option<f64>,
    /// Fraction of lines whose nearest other line is the same under both models.
    pub neighbour_agreement: Option<f64>,
}

/// The first `n` non-empty lines of `text`, trimmed.
pub fn text_lines(text: &str, n: usize) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(n)
        .collect()
}

/// The bytes of `model`'s parameters with its encoder linears' weights packed at `bits` bits
/// a code plus one f32 scale per factor (four per layer), everything else f32.
pub fn packed_bytes(model: &Bert, bits: u32) -> usize {
    let linear: Vec<usize> = model
        .linears()
        .iter()
        .map(|(_, l)| l.weight_param_count())
        .collect();
    let linear_params: usize = linear.iter().sum();
    let codes = linear_params * bits as usize;
    (model.num_params() - linear_params) * 4 + codes.div_ceil(8) + 4 * 4 * linear.len()
}

fn stats(
    model: &Bert,
    tokenizer: &BertTokenizer,
    texts: &[&str],
    batch: usize,
    bits: Option<u32>,
    device: &Device,
    on_batch: &mut dyn FnMut(usize),
) -> Result<(Vec<Vec<f32>>, ModelStats)> {
    model.embed_texts(tokenizer, &texts[..texts.len().min(batch)], batch, device)?;
    let start = Instant::now();
    let e = model.embed_texts_with(tokenizer, texts, batch, device, on_batch)?;
    let encode_seconds = start.elapsed().as_secs_f64();
    let params = model.num_params();
    let linear_params: usize = model
        .linears()
        .iter()
        .map(|(_, l)| l.weight_param_count())
        .sum();
    Ok((
        e,
        ModelStats {
            params,
            model_bytes: params * 4,
            linear_bytes: linear_params * 4,
            packed_bytes: bits.map(|b| packed_bytes(model, b)),
            encode_seconds,
        },
    ))
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

/// For each row, the index of its most similar other row (rows are unit vectors).
fn nearest(e: &[Vec<f32>]) -> Vec<usize> {
    (0..e.len())
        .map(|i| {
            (0..e.len())
                .filter(|&j| j != i)
                .map(|j| (j, dot(&e[i], &e[j])))
                .fold((usize::MAX, f64::NEG_INFINITY), |best, (j, c)| {
                    if c > best.1 { (j, c) } else { best }
                })
                .0
        })
        .collect()
}

/// Encodes `texts` with the model in `model_dir` and, when given, the compressed model in
/// `compressed_dir` (written by [`super::save_compressed`]), `batch` lines per forward pass
/// on `device`, and compares them: the cosine between each line's two embeddings, the
/// nearest-neighbour agreement, parameter bytes and encode seconds.
///
/// ```no_run
/// use std::path::Path;
/// use burn::tensor::Device;
/// use memtrain::bert::{compare_embeddings, text_lines};
///
/// # fn main() -> memtrain::Result<()> {
/// let text = std::fs::read_to_string("sentences.txt").unwrap();
/// let lines = text_lines(&text, 500);
/// let report = compare_embeddings(
///     Path::new("minilm/model"),
///     Some(Path::new("minilm-svd2")),
///     &lines,
///     32,
///     &Device::flex(),
/// )?;
/// println!("mean cosine {:?}", report.mean_cosine);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// [`Error::Config`] naming `lines` (fewer than 2 texts) or `batch` (0); the loaders' errors
/// for the model directories.
pub fn compare_embeddings(
    model_dir: &Path,
    compressed_dir: Option<&Path>,
    texts: &[&str],
    batch: usize,
    device: &Device,
) -> Result<EmbedReport> {
    compare_embeddings_with(model_dir, compressed_dir, texts, batch, device, |_, _| {})
}

/// As [`compare_embeddings`], calling `on_lines(done, total)` after each batch: lines encoded
/// so far by either model, out of `total` (the lines once per model, for a progress display).
///
/// # Errors
///
/// As [`compare_embeddings`].
pub fn compare_embeddings_with(
    model_dir: &Path,
    compressed_dir: Option<&Path>,
    texts: &[&str],
    batch: usize,
    device: &Device,
    mut on_lines: impl FnMut(usize, usize),
) -> Result<EmbedReport> {
    if texts.len() < 2 {
        return Err(Error::config(
            "lines",
            texts.len(),
            "at least 2 non-empty lines (neighbours need two)",
        ));
    }
    if batch == 0 {
        return Err(Error::config("batch", 0, "at least 1"));
    }
    let original = Bert::load(model_dir, device)?;
    let tokenizer = BertTokenizer::from_dir(model_dir)?;
    let compressed = compressed_dir
        .map(|dir| load_compressed(dir, device))
        .transpose()?;
    let total = texts.len() * if compressed.is_some() { 2 } else { 1 };
    let (e0, s0) = stats(
        &original,
        &tokenizer,
        texts,
        batch,
        None,
        device,
        &mut |done| on_lines(done, total),
    )?;
    let mut report = EmbedReport {
        lines: texts.len(),
        original: s0,
        compressed: None,
        method: None,
        schedule: None,
        mean_cosine: None,
        min_cosine: None,
        neighbour_agreement: None,
    };
    if let Some((model, manifest)) = &compressed {
        let (e1, s1) = stats(
            model,
            &tokenizer,
            texts,
            batch,
            manifest.bits,
            device,
            &mut |done| on_lines(texts.len() + done, total),
        )?;
        let cos: Vec<f64> = e0.iter().zip(&e1).map(|(a, b)| dot(a, b)).collect();
        let agree = nearest(&e0)
            .iter()
            .zip(nearest(&e1))
            .filter(|(a, b)| **a == *b)
            .count();
        report.mean_cosine = Some(cos.iter().sum::<f64>() / cos.len() as f64);
        report.min_cosine = Some(cos.iter().copied().fold(f64::INFINITY, f64::min));
        report.neighbour_agreement = Some(agree as f64 / texts.len() as f64);
        report.method = Some(manifest.method.clone());
        report.schedule = Some(manifest.schedule.clone());
        report.compressed = Some(s1);
    }
    Ok(report)
}

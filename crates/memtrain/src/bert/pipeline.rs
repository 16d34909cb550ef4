//! Compressing a model directory end to end: load, compress one-shot or iteratively with
//! distillation, and summarise; what `memtrain compress --model` runs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;
use serde::Serialize;

use super::compress::{CompressParams, LayerReport, compress_bert_calibrated};
use super::distill::{IterativeParams, StageReport, compress_bert_iterative};
use super::model::Bert;
use super::tokenizer::BertTokenizer;
use crate::error::Result;

/// Non-empty lines at the start of a distillation text that distillation never trains on:
/// [`super::compare_embeddings`] measures on the first ones (`memtrain eval-embed` takes 500 by
/// default), so they stay held out.
pub const HELD_OUT_LINES: usize = 500;

/// The distillation lines of `text`: its non-empty lines after the first
/// [`HELD_OUT_LINES`], trimmed.
pub fn distill_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .skip(HELD_OUT_LINES)
        .collect()
}

/// Iterative compression: the schedule and the text it distills on.
#[derive(Debug, Clone, Copy)]
pub struct Iterative<'a> {
    /// Stages, steps, batch, learning rate.
    pub params: IterativeParams,
    /// The distillation lines ([`distill_lines`]).
    pub lines: &'a [&'a str],
}

/// What compressing a model did; serializes to the keys of `memtrain compress --model --json`.
#[derive(Debug, Clone, Serialize)]
pub struct CompressSummary {
    /// The model directory.
    pub model: PathBuf,
    /// The method, as [`super::CompressMethod`]'s `Display` writes it.
    pub method: String,
    /// The parameter ratio asked for.
    pub ratio: f64,
    /// `one-shot`, or the iterative schedule in words.
    pub schedule: String,
    /// One report per encoder linear.
    pub layers: Vec<LayerReport>,
    /// One report per iterative stage (none one-shot).
    pub stages: Vec<StageReport>,
    /// Weight parameters of the encoder linears before.
    pub linear_params_before: usize,
    /// And after.
    pub linear_params_after: usize,
    /// Parameters of the whole model before.
    pub model_params_before: usize,
    /// And after.
    pub model_params_after: usize,
    /// Mean relative error of the layers.
    pub mean_rel_error: f64,
    /// For quantized CP: the mean error of CP-ALS-then-quantize.
    pub mean_ptq_rel_error: Option<f64>,
    /// Wall seconds.
    pub seconds: f64,
}

/// Loads the model in `dir` onto `device` and compresses its encoder linears as `params` says
/// (the decompositions themselves run on the host): one-shot
/// ([`super::compress_bert`], calling `on_layer` after each layer), or in stages with
/// distillation in between ([`compress_bert_iterative`], calling `on_progress` with a line of
/// progress); with [`CompressParams::sequential`], one-shot layer by layer on
/// `calibration_lines` ([`super::compress_bert_sequential`]). A data-aware method
/// ([`super::CompressMethod::needs_calibration`]) one-shot calibrates the original on
/// `calibration_lines`, for example the first [`super::CALIBRATION_LINES`] of
/// [`distill_lines`], which never overlap the held-out evaluation lines (with the loss's
/// gradients, [`super::calibrate_sensitivity`] on `device` with autodiff, when it
/// [`needs_sensitivity`](super::CompressMethod::needs_sensitivity)); the iterative schedule
/// calibrates on its own lines every stage. The returned model runs without autodiff.
///
/// ```no_run
/// use std::path::Path;
/// use memtrain::bert::{CompressMethod, CompressParams, compress_model};
///
/// # fn main() -> memtrain::Result<()> {
/// let params = CompressParams::new(CompressMethod::Svd, 2.0);
/// let device = burn::tensor::Device::flex();
/// let (model, summary) =
///     compress_model(Path::new("minilm/model"), &params, None, &[], &device, |_| {}, |_| {})?;
/// println!("mean relative error {:.3}", summary.mean_rel_error);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// As [`CompressParams::validate`]; the loaders' errors for `dir`; as
/// [`super::compress_bert`], [`super::calibrate`] (no calibration lines) and
/// [`compress_bert_iterative`].
pub fn compress_model(
    dir: &Path,
    params: &CompressParams,
    iterative: Option<Iterative>,
    calibration_lines: &[&str],
    device: &Device,
    mut on_layer: impl FnMut(&LayerReport),
    on_progress: impl FnMut(&str),
) -> Result<(Bert, CompressSummary)> {
    params.validate()?;
    if params.sequential && iterative.is_some() {
        return Err(crate::error::Error::config(
            "sequential",
            "with the iterative schedule",
            "sequential calibration one-shot (the iterative schedule distills instead)",
        ));
    }
    let plain = device.clone().without_autodiff();
    let original = Bert::load(dir, &plain)?;
    let model_params_before = original.num_params();
    let start = Instant::now();
    let (model, layers, stages, schedule) = match iterative {
        Some(it) => {
            let tokenizer = BertTokenizer::from_dir(dir)?;
            let autodiff = plain.clone().autodiff();
            let student = Bert::load(dir, &autodiff)?;
            let (model, layers, stages) = compress_bert_iterative(
                student,
                &original,
                &tokenizer,
                it.lines,
                params,
                &it.params,
                &autodiff,
                &plain,
                on_progress,
            )?;
            layers.iter().for_each(&mut on_layer);
            (
                model.valid(),
                layers,
                stages,
                it.params.describe(params.ratio),
            )
        }
        None if params.sequential => {
            let tokenizer = BertTokenizer::from_dir(dir)?;
            let (model, layers) = super::compress_bert_sequential(
                original,
                params,
                &tokenizer,
                calibration_lines,
                super::CALIBRATION_BATCH,
                &plain,
                on_layer,
            )?;
            (
                model,
                layers,
                Vec::new(),
                "one-shot, sequential".to_string(),
            )
        }
        None => {
            let calibration = if params.method.needs_sensitivity() {
                let tokenizer = BertTokenizer::from_dir(dir)?;
                let autodiff = plain.clone().autodiff();
                Some(super::calibrate_sensitivity(
                    &Bert::load(dir, &autodiff)?,
                    &tokenizer,
                    calibration_lines,
                    super::CALIBRATION_BATCH,
                    &autodiff,
                    params.seed,
                )?)
            } else if params.method.needs_calibration() {
                let tokenizer = BertTokenizer::from_dir(dir)?;
                Some(super::calibrate(
                    &original,
                    &tokenizer,
                    calibration_lines,
                    super::CALIBRATION_BATCH,
                    &plain,
                )?)
            } else {
                None
            };
            let (model, layers) =
                compress_bert_calibrated(original, params, calibration.as_ref(), on_layer)?;
            (model, layers, Vec::new(), "one-shot".to_string())
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    let (before, after) = layers.iter().fold((0, 0), |(a, b), r| {
        (a + r.params_before, b + r.params_after)
    });
    let mean_rel_error = layers.iter().map(|r| r.rel_error).sum::<f64>() / layers.len() as f64;
    let ptq: Vec<f64> = layers.iter().filter_map(|r| r.ptq_rel_error).collect();
    let summary = CompressSummary {
        model: dir.to_path_buf(),
        method: params.method.to_string(),
        ratio: params.ratio,
        schedule,
        linear_params_before: before,
        linear_params_after: after,
        model_params_before,
        model_params_after: model.num_params(),
        mean_rel_error,
        mean_ptq_rel_error: (!ptq.is_empty()).then(|| ptq.iter().sum::<f64>() / ptq.len() as f64),
        seconds,
        layers,
        stages,
    };
    Ok((model, summary))
}

//! Iterative compression ("One time is not enough", [Gusak et al. 2019, Automated
//! multi-stage compression of neural networks](https://arxiv.org/abs/1908.03787)): compress
//! in stages of increasing ratio, fine-tuning between stages by distilling the original
//! model's sentence embeddings.
//!
//! Schedule: stage `s = 1..=S` compresses every encoder linear to the ratio
//! `ratio^(s/S)` (so the ranks fall from mild to the target; a layer that is already
//! factored is factorized again from the product of its factors, e.g. the SVD of `A B`),
//! then runs `steps` Adam steps on the weights and biases of the compressed layers (the
//! factored ones, and a reduced-order model's narrower dense MLP layers; the embeddings,
//! LayerNorms and every dense layer of the original shape stay frozen) minimising
//! `1 - cos(student(x), teacher(x))` over batches of text lines. Data-aware methods
//! recalibrate on the model as each stage finds it.

use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::compress::{CompressParams, LayerReport, compress_bert_calibrated};
use super::model::Bert;
use super::tokenizer::BertTokenizer;
use crate::error::{Error, Result};
use crate::linear::{LinearLayer, Linears};

/// Settings of [`compress_bert_iterative`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IterativeParams {
    /// Compression stages `S >= 1`.
    pub stages: usize,
    /// Fine-tuning steps after each stage.
    pub steps: usize,
    /// Text lines per step.
    pub batch: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Seed of the batch sampling.
    pub seed: u64,
}

impl IterativeParams {
    /// 3 stages of `steps` steps, batch 16, learning rate 1e-4, seed 0.
    pub fn new(steps: usize) -> Self {
        Self {
            stages: 3,
            steps,
            batch: 16,
            lr: 1e-4,
            seed: 0,
        }
    }

    /// The schedule in words, for manifests and reports.
    pub fn describe(&self, ratio: f64) -> String {
        let ratios: Vec<String> = (1..=self.stages)
            .map(|s| format!("{:.3}", stage_ratio(ratio, s, self.stages)))
            .collect();
        format!(
            "iterative: {} stages at ratios [{}], {} distillation steps after each (batch {}, Adam lr {})",
            self.stages,
            ratios.join(", "),
            self.steps,
            self.batch,
            self.lr
        )
    }
}

/// The ratio of stage `s` of `stages`: `ratio^(s / stages)`.
fn stage_ratio(ratio: f64, s: usize, stages: usize) -> f64 {
    ratio.powf(s as f64 / stages as f64)
}

/// What one stage did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageReport {
    /// 1-based.
    pub stage: usize,
    /// This stage's parameter ratio.
    pub ratio: f64,
    /// Mean distillation loss `1 - cos` over the first 10% of the stage's steps (at least one).
    pub loss_start: f64,
    /// Mean loss over the last 10% of its steps.
    pub loss_end: f64,
    /// Seconds compressing.
    pub compress_seconds: f64,
    /// Seconds fine-tuning.
    pub tune_seconds: f64,
}

/// Freezes everything but the compressed layers' parameters: the factored ones, and the dense
/// ones whose shape changed (a reduced-order MLP's, [`super::CompressMethod::Rom`]);
/// `shapes` are the original linears' `[d_in, d_out]` in [`Linears`] order.
fn freeze_unchanged(mut model: Bert, shapes: &[[usize; 2]]) -> Bert {
    let mut index = 0;
    let mut freeze = |l: LinearLayer| {
        let original = shapes[index];
        index += 1;
        match l {
            LinearLayer::Exact(_) | LinearLayer::Gemm(_) | LinearLayer::Sketched(_)
                if l.dims() == original =>
            {
                l.no_grad()
            }
            compressed => compressed,
        }
    };
    model.embeddings = model.embeddings.no_grad();
    model.layers = std::mem::take(&mut model.layers)
        .into_iter()
        .map(|mut l| {
            l.attn_norm = l.attn_norm.no_grad();
            l.ffn_norm = l.ffn_norm.no_grad();
            l.query = freeze(l.query);
            l.key = freeze(l.key);
            l.value = freeze(l.value);
            l.attn_out = freeze(l.attn_out);
            l.ffn_in = freeze(l.ffn_in);
            l.ffn_out = freeze(l.ffn_out);
            l
        })
        .collect();
    model
}

/// Iterative compression of `student` (the original model loaded on the autodiff device
/// `device`) towards `params.ratio`, distilling `teacher` (the original model on a plain
/// device `teacher_device`) on `lines`. Returns the compressed model (parameters still on
/// `device`; use `valid()` for inference), one report per layer whose `rel_error` is
/// against the original weight and whose `seconds` sum the stages, and one report per stage.
///
/// # Errors
///
/// [`Error::Config`] for zero stages, steps or batch, a learning rate that is not finite
/// and positive, fewer lines than a batch, or a quantized method (fine-tuning would move
/// the factors off their grid); as [`super::compress_bert`] and, for a data-aware method,
/// [`super::calibrate`] (on the first [`super::CALIBRATION_LINES`] of `lines`, every stage).
#[allow(clippy::too_many_arguments)]
pub fn compress_bert_iterative(
    student: Bert,
    teacher: &Bert,
    tokenizer: &BertTokenizer,
    lines: &[&str],
    params: &CompressParams,
    it: &IterativeParams,
    device: &Device,
    teacher_device: &Device,
    mut progress: impl FnMut(&str),
) -> Result<(Bert, Vec<LayerReport>, Vec<StageReport>)> {
    if it.stages == 0 || it.steps == 0 || it.batch == 0 {
        return Err(Error::config(
            "iterative schedule",
            format!(
                "{} stages, {} steps, batch {}",
                it.stages, it.steps, it.batch
            ),
            "at least one stage, one step and one line per batch",
        ));
    }
    if !(it.lr > 0.0 && it.lr.is_finite()) {
        return Err(Error::config("lr", it.lr, "a finite rate > 0"));
    }
    if params.method.bits().is_some() {
        return Err(Error::config(
            "method",
            params.method,
            "svd, tucker2, cp, ttm, asvd, fwsvd, active or rom for iterative compression (fine-tuning moves quantized \
             factors off their grid)",
        ));
    }
    if lines.len() < it.batch {
        return Err(Error::config(
            "distillation lines",
            lines.len(),
            format!("at least one batch of {} non-empty lines", it.batch),
        ));
    }
    let originals: Vec<Tensor<2>> = student
        .linears()
        .iter()
        .map(|(_, l)| l.dense_weight().detach())
        .collect();
    let shapes: Vec<[usize; 2]> = originals.iter().map(|w| w.dims()).collect();
    let max_len = tokenizer.max_seq_length().min(student.max_position());
    let mut rng = StdRng::seed_from_u64(it.seed);
    let mut model = student;
    let mut seconds = vec![0.0; originals.len()];
    let mut last: Vec<LayerReport> = Vec::new();
    let mut stages = Vec::with_capacity(it.stages);
    for s in 1..=it.stages {
        let ratio = stage_ratio(params.ratio, s, it.stages);
        let start = Instant::now();
        let stage_params = CompressParams { ratio, ..*params };
        // Data-aware methods calibrate on the model as this stage finds it.
        let n = lines.len().min(super::CALIBRATION_LINES);
        let calibration = if params.method.needs_sensitivity() {
            Some(super::calibrate_sensitivity(
                &model,
                tokenizer,
                &lines[..n],
                super::CALIBRATION_BATCH,
                device,
                params.seed.wrapping_add(s as u64),
            )?)
        } else if params.method.needs_calibration() {
            let plain = model.clone().valid();
            Some(super::calibrate(
                &plain,
                tokenizer,
                &lines[..n],
                super::CALIBRATION_BATCH,
                teacher_device,
            )?)
        } else {
            None
        };
        let (compressed, reports) =
            compress_bert_calibrated(model, &stage_params, calibration.as_ref(), |_| {})?;
        let compress_seconds = start.elapsed().as_secs_f64();
        for (t, r) in seconds.iter_mut().zip(&reports) {
            *t += r.seconds;
        }
        last = reports;
        progress(&format!(
            "stage {s}/{}: ratio {ratio:.3} compressed in {compress_seconds:.1} s",
            it.stages
        ));
        let mut student = freeze_unchanged(compressed, &shapes);
        let mut opt = AdamConfig::new().init();
        let start = Instant::now();
        let mut losses = Vec::with_capacity(it.steps);
        for _ in 0..it.steps {
            let batch: Vec<&str> = (0..it.batch)
                .map(|_| lines[rng.random_range(0..lines.len())])
                .collect();
            let target = teacher.embed_texts(tokenizer, &batch, batch.len(), teacher_device)?;
            let d = target[0].len();
            let flat: Vec<f32> = target.into_iter().flatten().collect();
            let target = Tensor::<2>::from_data(TensorData::new(flat, [batch.len(), d]), device);
            let input = tokenizer.encode_batch(&batch, max_len)?;
            let (ids, mask) = input.tensors(device);
            let e = student.embed(ids, mask);
            // Both are unit vectors: 1 - cos is 1 - their dot product.
            let loss = (e * target).sum_dim(1).neg().add_scalar(1.0).mean();
            losses.push(loss.clone().into_scalar::<f64>());
            let grads = GradientsParams::from_grads(loss.backward(), &student);
            student = opt.step(it.lr, student, grads);
        }
        let tenth = (it.steps / 10).max(1);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let report = StageReport {
            stage: s,
            ratio,
            loss_start: mean(&losses[..tenth]),
            loss_end: mean(&losses[losses.len() - tenth..]),
            compress_seconds,
            tune_seconds: start.elapsed().as_secs_f64(),
        };
        progress(&format!(
            "stage {s}/{}: {} steps in {:.1} s, loss 1-cos {:.5} -> {:.5}",
            it.stages, it.steps, report.tune_seconds, report.loss_start, report.loss_end
        ));
        stages.push(report);
        model = student;
    }
    let norm = |t: Tensor<2>| t.powi_scalar(2).sum().into_scalar::<f64>().sqrt();
    for (((r, (_, l)), w), t) in last
        .iter_mut()
        .zip(model.linears())
        .zip(&originals)
        .zip(&seconds)
    {
        let after = l.dense_weight().detach();
        // A reduced-order MLP's widths changed: it keeps the last stage's error measure.
        if after.dims() == w.dims() {
            r.rel_error = norm(w.clone() - after) / norm(w.clone()).max(f64::MIN_POSITIVE);
        }
        r.params_before = w.dims().iter().product();
        r.params_after = l.weight_param_count();
        r.seconds = *t;
    }
    Ok((model, last, stages))
}

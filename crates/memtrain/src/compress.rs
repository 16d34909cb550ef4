//! Compressing trained weights: every linear of a GPT to a TT-matrix by TT-SVD (dense
//! layers) or TT-rounding (layers that already are TT-matrices), with a per-layer report.
//!
//! ```
//! use burn::tensor::Device;
//! use memtrain::compress::gpt_to_ttm;
//! use memtrain::model::Preset;
//! use memtrain::policy::MemoryPolicy;
//! use memtrain::tt::Truncation;
//!
//! let device = Device::flex();
//! let model = Preset::Tiny.config(256).init(&MemoryPolicy::default(), &device).unwrap();
//! let (_tt, report) = gpt_to_ttm(model, Truncation::rank(4), true).unwrap();
//! assert_eq!(report.len(), 8); // 2 blocks x (qkv, proj, fc, mlp.proj)
//! assert!(report.iter().all(|l| l.params_after < l.params_before && l.rel_error < 1.0));
//! ```

use burn::tensor::Tensor;
use serde::Serialize;

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::error::{Error, Result};
use crate::linear::{LinearLayer, Linears, TtLinearConfig};
use crate::model::Gpt;
use crate::policy::WeightsPolicy;
use crate::train::{CheckpointState, Trainer};
use memtrain_tt::{Truncation, TtMatrix, matrix_modes};

/// Cores of the TT-matrices [`gpt_to_ttm`] builds (as `weights=ttm` does).
pub const TT_CORES: usize = 3;

/// What compressing one layer did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerReport {
    /// `block.I.attn.qkv`, `block.I.attn.proj`, `block.I.mlp.fc` or `block.I.mlp.proj`.
    pub name: String,
    /// `[d_input, d_output]`.
    pub shape: [usize; 2],
    /// Weight parameters before (dense `d_in d_out`, or the TT cores).
    pub params_before: usize,
    /// Weight parameters after (the TT cores); biases are unchanged and not counted.
    pub params_after: usize,
    /// The TT ranks `r_0..r_d` after.
    pub ranks: Vec<usize>,
    /// `‖W_before - W_after‖_F / ‖W_before‖_F`.
    pub rel_error: f64,
}

fn rel_error(before: Tensor<2>, after: Tensor<2>) -> f64 {
    let norm = |t: Tensor<2>| t.powi_scalar(2).sum().into_scalar::<f64>().sqrt();
    let base = norm(before.clone());
    norm(before - after) / base.max(f64::MIN_POSITIVE)
}

/// Converts the linears of `model`'s blocks (the MLP's two, or all four with `all`) to
/// TT-matrices with [`TT_CORES`] cores and modes from [`matrix_modes`], truncated as `trunc`
/// says: TT-SVD for a dense layer, TT-rounding for one that is a TT-matrix already.
///
/// # Errors
///
/// [`crate::Error::Config`] for a bad truncation or widths that do not split into three
/// modes.
pub fn gpt_to_ttm(model: Gpt, trunc: Truncation, all: bool) -> Result<(Gpt, Vec<LayerReport>)> {
    gpt_to_ttm_with(model, trunc, all, |_, _| {})
}

/// As [`gpt_to_ttm`], calling `on_layer(report, total)` after each layer, `total` being the
/// number of layers it converts (for a progress display).
///
/// # Errors
///
/// As [`gpt_to_ttm`].
pub fn gpt_to_ttm_with(
    model: Gpt,
    trunc: Truncation,
    all: bool,
    mut on_layer: impl FnMut(&LayerReport, usize),
) -> Result<(Gpt, Vec<LayerReport>)> {
    let picked = |name: &str| name.contains(".mlp.") || all;
    let total = model.linear_names().iter().filter(|n| picked(n)).count();
    let mut report = Vec::new();
    let model = model.try_map_linears(|name, layer| {
        if !picked(name) {
            return Ok(layer);
        }
        let (before, dense, bias, m) = match layer {
            LinearLayer::Tt(tt) => {
                let before = tt.matrix();
                let m = before.round(trunc)?;
                let bias = tt.bias.as_ref().map(|b| b.val().detach());
                (before.param_count(), before.to_dense(), bias, m)
            }
            LinearLayer::Factored(f) => {
                let before = f.weight_param_count();
                let w = f.dense_weight().detach();
                let [d_in, d_out] = w.dims();
                let (rows, cols) = matrix_modes(d_in, d_out, TT_CORES)?;
                let bias = f.bias.as_ref().map(|b| b.val().detach());
                let m = TtMatrix::from_dense(w.clone(), &rows, &cols, trunc)?;
                (before, w, bias, m)
            }
            other => {
                let w = other
                    .weight()
                    .expect("a dense layer has a weight")
                    .val()
                    .detach();
                let [d_in, d_out] = w.dims();
                let (rows, cols) = matrix_modes(d_in, d_out, TT_CORES)?;
                let bias = match &other {
                    LinearLayer::Exact(l) | LinearLayer::Gemm(l) => {
                        l.bias.as_ref().map(|b| b.val().detach())
                    }
                    LinearLayer::Sketched(l) => Some(l.bias.val().detach()),
                    LinearLayer::Tt(_) | LinearLayer::Factored(_) => {
                        unreachable!("matched above")
                    }
                };
                let m = TtMatrix::from_dense(w.clone(), &rows, &cols, trunc)?;
                (d_in * d_out, w, bias, m)
            }
        };
        let after = m.to_dense();
        report.push(LayerReport {
            name: name.to_string(),
            shape: dense.dims(),
            params_before: before,
            params_after: m.param_count(),
            ranks: m.ranks(),
            rel_error: rel_error(dense, after),
        });
        on_layer(report.last().expect("just pushed"), total);
        Ok(LinearLayer::Tt(
            TtLinearConfig::for_matrix(&m, bias.is_some()).init_from_matrix(&m, bias)?,
        ))
    })?;
    Ok((model.with_sequential_ids(), report))
}

/// A GPT checkpoint compressed by [`compress_checkpoint`].
#[derive(Debug)]
pub struct CheckpointCompression {
    /// The checkpoint that was compressed.
    pub state: CheckpointState,
    /// One report per converted layer.
    pub layers: Vec<LayerReport>,
    /// Parameters of the whole model before (under its policy).
    pub model_params_before: usize,
    /// And after.
    pub model_params_after: usize,
    /// The checkpoint written, if any.
    pub written: Option<PathBuf>,
}

/// Compresses the newest checkpoint in the run directory `from` ([`gpt_to_ttm`]) and, with
/// `out`, writes it as a checkpoint there: same step, fresh optimizer, the policy's weights
/// `weights=ttm:RANK[:all]` (one rank for every layer), so that training resumes from it and
/// fine-tunes the TT cores. `on_layer` is called after each layer as in [`gpt_to_ttm_with`].
///
/// ```no_run
/// use std::path::Path;
/// use burn::tensor::Device;
/// use memtrain::compress::compress_checkpoint;
/// use memtrain::tt::Truncation;
///
/// # fn main() -> memtrain::Result<()> {
/// let device = Device::flex().autodiff();
/// let c = compress_checkpoint(Path::new("run1"), Truncation::rank(32), false, Some(Path::new("run1-tt")), &device, |_, _| {})?;
/// println!("{} -> {} parameters", c.model_params_before, c.model_params_after);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// As [`Trainer::resume`] and [`gpt_to_ttm`]; [`Error::Config`] naming `out` when a
/// checkpoint is asked for with a truncation other than a rank cap alone.
pub fn compress_checkpoint(
    from: &Path,
    trunc: Truncation,
    all: bool,
    out: Option<&Path>,
    device: &Device,
    on_layer: impl FnMut(&LayerReport, usize),
) -> Result<CheckpointCompression> {
    let rank_alone = trunc.max_rank.filter(|_| trunc.eps == 0.0);
    let rank = match (out, rank_alone) {
        (Some(out), None) => {
            return Err(Error::config(
                "out",
                out.display(),
                "a truncation by rank alone (one rank for every layer of a checkpoint)",
            ));
        }
        (Some(_), rank) => rank,
        (None, _) => None,
    };
    let (trainer, state) = Trainer::resume(from, device)?;
    let model = trainer.model().clone();
    drop(trainer);
    let (compressed, layers) = gpt_to_ttm_with(model, trunc, all, on_layer)?;
    let model_params_before = state
        .config
        .model_config()
        .param_count_for(&state.config.policy);
    let (before, after) = layers.iter().fold((0, 0), |(a, b), l| {
        (a + l.params_before, b + l.params_after)
    });
    let mut written = None;
    if let (Some(out), Some(rank)) = (out, rank) {
        let mut config = state.config.clone();
        let rank =
            u32::try_from(rank).map_err(|_| Error::config("rank", rank, "a rank below 2^32"))?;
        config.policy = config.policy.with_weights(WeightsPolicy::Ttm { rank, all });
        let trainer = Trainer::from_model(config, compressed, state.step, device)?;
        written = Some(trainer.save_checkpoint(out, &state.data, crate::train::DEFAULT_KEEP)?);
    }
    Ok(CheckpointCompression {
        layers,
        model_params_before,
        model_params_after: model_params_before - before + after,
        written,
        state,
    })
}

//! Compressing a pretrained BERT's encoder linears by a target parameter ratio, saving the
//! factors and loading them back.
//!
//! [`compress_bert`] replaces every encoder linear (`query`, `key`, `value`,
//! `attention.output.dense`, `intermediate.dense`, `output.dense` of each layer) by the
//! factors of a [`CompressMethod`] whose rank [`rank_for_ratio`] chooses per layer, so each
//! layer holds at least `ratio` times fewer weight parameters. The factored layers run in
//! factored form ([`FactoredLinear`], [`TtLinear`]), so parameter bytes and encode time are
//! those of the compressed model. [`save_compressed`] writes a directory that
//! [`load_compressed`] reads back: the factors (`compressed.safetensors`, burn's
//! safetensors store), a manifest naming each layer's kind and factor shapes
//! (`compressed.json`) and the original `config.json` and tokenizer files.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::Calibration;
use super::config::BertConfig;
use super::files::{CONFIG_FILE, mismatch, require_file};
use super::model::Bert;
use crate::decompose::{
    CpParams, CpQuantParams, RankMethod, SvdParams, Tucker2Params, cp_admm_quantized_from,
    cp_als_shaped, cp_modes, rank_for_ratio, svd_lowrank, tucker2,
};
use crate::error::{Error, Result};
use crate::linear::{FactoredKind, FactoredLinearConfig, LinearLayer, Linears, TtLinearConfig};
use memtrain_tt::{Truncation, TtMatrix, matrix_modes};

/// The manifest [`save_compressed`] writes.
pub const MANIFEST_FILE: &str = "compressed.json";
/// The factors [`save_compressed`] writes.
pub const COMPRESSED_WEIGHTS_FILE: &str = "compressed.safetensors";
/// Files copied from the source model directory when present (`config.json` and
/// `tokenizer.json` are required).
const COPIED_FILES: [&str; 8] = [
    CONFIG_FILE,
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "modules.json",
];
/// The manifest format this code writes and reads.
const FORMAT: u32 = 1;
/// Cores of the TT-matrices of [`CompressMethod::Ttm`] (as `weights=ttm` for the GPT).
const TT_CORES: usize = 3;

/// How [`compress_bert`] factorizes each linear weight `W [d_in, d_out]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressMethod {
    /// Truncated SVD ([`svd_lowrank`]): `x A B`, two thin matmuls.
    Svd,
    /// Tucker-2 of `W` as `[d_in, d_out, 1, 1]` ([`tucker2`]): `x U₁ core U₂ᵀ`, three matmuls.
    Tucker2,
    /// CP-ALS ([`cp_als_shaped`]) of `Wᵀ` read as `[o₁, o₂, i₁, i₂]` ([`cp_modes`]).
    Cp,
    /// Quantization-aware CP ([`cp_admm_quantized_from`], AO-ADMM from the CP-ALS start) on a
    /// `bits`-bit grid per factor; the report also gives CP-ALS-then-quantize
    /// ([`crate::decompose::Cp::quantize`]) of the same start.
    CpQuant {
        /// Bits per factor entry, `2..=8`.
        bits: u32,
    },
    /// The post-training baseline of [`CompressMethod::CpQuant`]: CP-ALS, then every factor
    /// rounded to its own `bits`-bit grid ([`crate::decompose::Cp::quantize`]).
    CpPtq {
        /// Bits per factor entry, `2..=8`.
        bits: u32,
    },
    /// A 3-core TT-matrix by TT-SVD ([`TtLinear`](crate::linear::TtLinear)).
    Ttm,
    /// Activation-whitened SVD (ASVD / SVD-LLM): the rank-`r` factors `x A B` closest to `W`
    /// in the metric of the layer's inputs on calibration text, `‖X(W − Ŵ)‖`, rather than
    /// `‖W − Ŵ‖` ([`super::whitened_factors`]); needs a [`super::Calibration`].
    Asvd,
    /// Fisher-weighted SVD (FWSVD): the rank-`r` factors closest to `W` with each input row
    /// weighted by its Fisher information under the distillation loss
    /// ([`super::Spectrum::row_weighted`]); needs [`super::calibrate_sensitivity`].
    Fwsvd,
    /// Active subspace (ASNet): `x V (Vᵀ W)` with `V` the top-`r` eigenvectors of the
    /// distillation loss's input-gradient covariance ([`super::active_factors`]); needs
    /// [`super::calibrate_sensitivity`].
    Active,
    /// Reduced-order model by maxvol: each MLP keeps `d_ff / ratio` hidden neurons chosen on
    /// calibration activations and refits its output projection by least squares
    /// ([`super::rom_neurons`], [`super::rom_refit`]); the attention linears, whose heads are
    /// too few (12) to drop half of without losing whole heads, by
    /// [`CompressMethod::Asvd`]. Needs a [`super::Calibration`].
    Rom,
}

impl CompressMethod {
    /// Whether the method reads calibration data ([`super::calibrate`]).
    pub fn needs_calibration(self) -> bool {
        matches!(
            self,
            CompressMethod::Asvd
                | CompressMethod::Fwsvd
                | CompressMethod::Active
                | CompressMethod::Rom
        )
    }

    /// Whether the method reads the loss's gradients ([`super::calibrate_sensitivity`], on an
    /// autodiff device) besides the input statistics.
    pub fn needs_sensitivity(self) -> bool {
        matches!(self, CompressMethod::Fwsvd | CompressMethod::Active)
    }

    /// Bits per stored weight code: `Some(bits)` for the quantized CP methods.
    pub fn bits(self) -> Option<u32> {
        match self {
            CompressMethod::CpQuant { bits } | CompressMethod::CpPtq { bits } => Some(bits),
            _ => None,
        }
    }
}

impl fmt::Display for CompressMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompressMethod::Svd => write!(f, "svd"),
            CompressMethod::Tucker2 => write!(f, "tucker2"),
            CompressMethod::Cp => write!(f, "cp"),
            CompressMethod::CpQuant { bits } => write!(f, "cp-q:{bits}"),
            CompressMethod::CpPtq { bits } => write!(f, "cp-ptq:{bits}"),
            CompressMethod::Ttm => write!(f, "ttm"),
            CompressMethod::Asvd => write!(f, "asvd"),
            CompressMethod::Fwsvd => write!(f, "fwsvd"),
            CompressMethod::Active => write!(f, "active"),
            CompressMethod::Rom => write!(f, "rom"),
        }
    }
}

impl FromStr for CompressMethod {
    type Err = Error;

    /// `svd`, `tucker2`, `cp`, `cp-q:BITS`, `cp-ptq:BITS` (BITS in `2..=8`), `ttm`, `asvd`,
    /// `fwsvd`, `active` or `rom`.
    fn from_str(s: &str) -> Result<Self> {
        const CHOICES: &str = "svd, tucker2, cp, cp-q:BITS, cp-ptq:BITS (BITS in 2..=8), ttm, \
                               asvd, fwsvd, active or rom";
        match s {
            "asvd" => Ok(CompressMethod::Asvd),
            "fwsvd" => Ok(CompressMethod::Fwsvd),
            "active" => Ok(CompressMethod::Active),
            "rom" => Ok(CompressMethod::Rom),
            "svd" => Ok(CompressMethod::Svd),
            "tucker2" => Ok(CompressMethod::Tucker2),
            "cp" => Ok(CompressMethod::Cp),
            "ttm" => Ok(CompressMethod::Ttm),
            _ => {
                let (name, bits) = s
                    .split_once(':')
                    .filter(|(name, _)| ["cp-q", "cp-ptq"].contains(name))
                    .ok_or_else(|| Error::config("method", s, CHOICES))?;
                match bits.parse::<u32>() {
                    Ok(bits) if (2..=8).contains(&bits) => Ok(if name == "cp-q" {
                        CompressMethod::CpQuant { bits }
                    } else {
                        CompressMethod::CpPtq { bits }
                    }),
                    _ => Err(Error::config(
                        format!("{name} bits"),
                        bits,
                        "an integer in 2..=8",
                    )),
                }
            }
        }
    }
}

/// Settings of [`compress_bert`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompressParams {
    /// The factorization.
    pub method: CompressMethod,
    /// Each layer keeps at most `1 / ratio` of its weight parameters (`>= 1`).
    pub ratio: f64,
    /// CP-ALS sweeps (also the start of the quantized CP).
    pub cp_iters: usize,
    /// AO-ADMM outer sweeps and ADMM iterations per factor of the quantized CP.
    pub admm_iters: (usize, usize),
    /// HOOI sweeps of Tucker-2.
    pub tucker_iters: usize,
    /// Seed of the CP initialisation.
    pub seed: u64,
    /// Automatic ranks (`svd`, `asvd` and `fwsvd`): instead of `1 / ratio` of every layer, the whole
    /// model's linears keep `1 / ratio` of their weight parameters, and each layer's rank is
    /// chosen by how much of its (whitened) energy a rank keeps per parameter
    /// ([`super::allocate_ranks`]).
    pub auto_ranks: bool,
    /// Sequential calibration (`asvd` and `rom`, one-shot): compress layer by layer, each
    /// linear calibrated on the inputs it sees in the model whose earlier linears are already
    /// compressed, and fitted to reproduce the original's output on the same tokens
    /// ([`super::compress_bert_sequential`]), so that later layers correct the errors of
    /// earlier ones instead of compounding them.
    pub sequential: bool,
}

impl CompressParams {
    /// Checks the values.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming `ratio` (below 1 or not finite), `cp_iters`, `tucker_iters` or
    /// `admm_iters` (zero).
    pub fn validate(&self) -> Result<()> {
        if !(self.ratio >= 1.0 && self.ratio.is_finite()) {
            return Err(Error::config(
                "ratio",
                self.ratio,
                "a finite parameter reduction ratio >= 1",
            ));
        }
        if self.auto_ranks
            && !matches!(
                self.method,
                CompressMethod::Svd | CompressMethod::Asvd | CompressMethod::Fwsvd
            )
        {
            return Err(Error::config(
                "ranks",
                format!("auto with {}", self.method),
                "auto ranks with svd, asvd or fwsvd",
            ));
        }
        if self.sequential && !matches!(self.method, CompressMethod::Asvd | CompressMethod::Rom) {
            return Err(Error::config(
                "sequential",
                format!("with {}", self.method),
                "sequential calibration with asvd or rom",
            ));
        }
        if self.sequential && self.auto_ranks {
            return Err(Error::config(
                "sequential",
                "with auto ranks",
                "sequential calibration with uniform ranks",
            ));
        }
        for (name, v) in [
            ("cp_iters", self.cp_iters),
            ("tucker_iters", self.tucker_iters),
            ("admm_iters", self.admm_iters.0.min(self.admm_iters.1)),
        ] {
            if v == 0 {
                return Err(Error::config(name, 0, "at least 1 sweep"));
            }
        }
        Ok(())
    }

    /// `method` at `ratio`: 10 CP-ALS sweeps, 3 x 5 AO-ADMM iterations, 5 HOOI sweeps,
    /// seed 0 (CP of 384 x 1536 weights at ranks above 1000 costs seconds per sweep on the
    /// host's `R x R` solves, hence the few sweeps).
    pub fn new(method: CompressMethod, ratio: f64) -> Self {
        Self {
            method,
            ratio,
            cp_iters: 10,
            admm_iters: (3, 5),
            tucker_iters: 5,
            seed: 0,
            auto_ranks: false,
            sequential: false,
        }
    }
}

/// What compressing one linear did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerReport {
    /// The Hugging Face name, `encoder.layer.3.intermediate.dense`.
    pub name: String,
    /// `[d_in, d_out]`.
    pub shape: [usize; 2],
    /// The rank (CP rank, SVD/Tucker rank, largest TT bond).
    pub rank: usize,
    /// Weight parameters before (biases unchanged and not counted).
    pub params_before: usize,
    /// Weight parameters after.
    pub params_after: usize,
    /// `‖W - Ŵ‖_F / ‖W‖_F` against the weight before. For the MLP of a reduced-order model
    /// ([`CompressMethod::Rom`]), whose widths change: the share of `intermediate.dense`'s
    /// weight norm in the dropped neurons, and for `output.dense` the relative error of the
    /// MLP's output on the calibration data ([`super::rom_output_error`]).
    pub rel_error: f64,
    /// For quantized CP: the error of CP-ALS-then-quantize (same rank, same start).
    pub ptq_rel_error: Option<f64>,
    /// For quantized CP (either method): the error of the unquantized CP-ALS start.
    pub als_rel_error: Option<f64>,
    /// Wall-clock seconds of the decomposition.
    pub seconds: f64,
}

pub(super) fn rel_error(before: &Tensor<2>, after: Tensor<2>) -> f64 {
    let norm = |t: Tensor<2>| t.powi_scalar(2).sum().into_scalar::<f64>().sqrt();
    norm(before.clone() - after) / norm(before.clone()).max(f64::MIN_POSITIVE)
}

/// The largest TT rank whose 3-core TT-matrix of `[d_in, d_out]` holds at most `1 / ratio`
/// of `d_in d_out` parameters.
///
/// # Errors
///
/// [`Error::Config`] naming the ratio and the largest achievable one (rank 1) when no rank
/// fits, or widths that do not split into three modes.
pub fn ttm_rank_for_ratio(d_in: usize, d_out: usize, ratio: f64) -> Result<usize> {
    if !(ratio >= 1.0 && ratio.is_finite()) {
        return Err(Error::config(
            "ratio",
            ratio,
            "a finite parameter reduction ratio >= 1",
        ));
    }
    let dense = (d_in * d_out) as f64;
    let count = |r: usize| -> Result<usize> {
        TtLinearConfig::new(d_in, d_out, r)
            .with_bias(false)
            .with_cores(TT_CORES)
            .param_count()
    };
    let one = count(1)?;
    if one as f64 * ratio > dense {
        return Err(Error::config(
            "ratio",
            ratio,
            format!(
                "a ratio of at most {:.4} (rank 1 of a TT-matrix on [{d_in}, {d_out}])",
                dense / one as f64
            ),
        ));
    }
    let (mut r, mut params) = (1, one);
    while r < d_in.min(d_out) {
        let next = count(r + 1)?;
        if next as f64 * ratio > dense || next == params {
            break;
        }
        (r, params) = (r + 1, next);
    }
    Ok(r)
}

/// Compresses one linear layer (dense, or already factored: then its dense product is
/// factorized again) as `params` says; the report's error is against the layer's weight
/// before.
///
/// # Errors
///
/// [`Error::Config`] for a ratio that no rank achieves on this layer's shape (naming it and
/// the largest achievable), and the decompositions' errors.
pub fn compress_linear(
    name: &str,
    layer: &LinearLayer,
    params: &CompressParams,
) -> Result<(LinearLayer, LayerReport)> {
    compress_linear_calibrated(name, layer, params, None)
}

/// [`compress_linear`] with the layer inputs' statistics that data-aware methods
/// ([`CompressMethod::needs_calibration`]) read.
///
/// # Errors
///
/// As [`compress_linear`]; [`Error::Config`] naming the method when it needs a calibration
/// that is missing or does not cover `name`.
pub fn compress_linear_calibrated(
    name: &str,
    layer: &LinearLayer,
    params: &CompressParams,
    calibration: Option<&Calibration>,
) -> Result<(LinearLayer, LayerReport)> {
    let start = Instant::now();
    let w = layer.dense_weight().detach();
    let [d_in, d_out] = w.dims();
    let bias = layer.bias().map(|b| b.detach());
    let (mut ptq_rel_error, mut als_rel_error) = (None, None);
    let new = match params.method {
        CompressMethod::Svd => {
            let r = rank_for_ratio(&[d_in, d_out], params.ratio, RankMethod::Svd)?;
            let low = svd_lowrank(w.clone(), SvdParams::rank(r))?;
            LinearLayer::Factored(
                FactoredLinearConfig::new(FactoredKind::Chain)
                    .init_from(vec![low.a, low.b], bias)?,
            )
        }
        CompressMethod::Tucker2 => {
            let r = rank_for_ratio(&[d_in, d_out, 1, 1], params.ratio, RankMethod::Tucker2)?;
            let t = tucker2(
                w.clone().reshape([d_in, d_out, 1, 1]),
                Tucker2Params::new(r, r).with_iters(params.tucker_iters),
            )?;
            let chain = vec![t.u1, t.core.reshape([r, r]), t.u2.transpose()];
            LinearLayer::Factored(
                FactoredLinearConfig::new(FactoredKind::Chain).init_from(chain, bias)?,
            )
        }
        CompressMethod::Cp | CompressMethod::CpQuant { .. } | CompressMethod::CpPtq { .. } => {
            let modes = cp_modes(d_out, d_in, 2)?;
            let r = rank_for_ratio(&modes, params.ratio, RankMethod::Cp)?;
            let flat = w.clone().transpose().reshape([d_in * d_out]);
            let als = CpParams::new(r)
                .with_iters(params.cp_iters)
                .with_seed(params.seed);
            let init = cp_als_shaped(flat.clone(), &modes, als)?;
            let cp = match params.method {
                CompressMethod::CpPtq { bits } => {
                    let wt = w.clone().transpose();
                    let full = init.full_flat().reshape([d_out, d_in]);
                    als_rel_error = Some(rel_error(&wt, full));
                    init.quantize(bits)?
                }
                CompressMethod::CpQuant { bits } => {
                    let wt = w.clone().transpose();
                    let err = |cp: &crate::decompose::Cp| -> Result<f64> {
                        let full = cp.full_flat().reshape([d_out, d_in]);
                        Ok(rel_error(&wt, full))
                    };
                    als_rel_error = Some(err(&init)?);
                    ptq_rel_error = Some(err(&init.quantize(bits)?)?);
                    let (outer, admm) = params.admm_iters;
                    cp_admm_quantized_from(
                        flat,
                        &modes,
                        &init,
                        CpQuantParams::new(r, bits).with_iters(outer, admm),
                    )?
                }
                _ => init,
            };
            let layer = FactoredLinearConfig::new(FactoredKind::Cp).init_from(
                cp.factors.iter().map(|f| f.clone().detach()).collect(),
                bias,
            )?;
            LinearLayer::Factored(match cp.grid {
                Some(grid) => layer.with_grid(grid)?,
                None => layer,
            })
        }
        CompressMethod::Asvd | CompressMethod::Rom => {
            if params.method == CompressMethod::Rom && is_mlp(name) {
                return Err(Error::config(
                    "method",
                    format!("rom on the single linear {name}"),
                    "rom on a whole model (compress_bert_calibrated), which reduces each MLP's two linears together",
                ));
            }
            let gram = calibrated(calibration, name, d_in, params.method, Stat::Gram)?;
            let r = rank_for_ratio(&[d_in, d_out], params.ratio, RankMethod::Svd)?;
            let values: Vec<f64> = w.clone().into_data().iter::<f64>().collect();
            let (a, b) = super::whitened_factors(&values, gram, d_in, d_out, r, &w.device())?;
            chain_from_host(a, b, &w, bias)?
        }
        CompressMethod::Fwsvd => {
            let fisher = calibrated(calibration, name, d_in, params.method, Stat::Fisher)?;
            let r = rank_for_ratio(&[d_in, d_out], params.ratio, RankMethod::Svd)?;
            let values: Vec<f64> = w.clone().into_data().iter::<f64>().collect();
            let (a, b) = super::Spectrum::row_weighted(&values, fisher, d_in, d_out, &w.device())?
                .factors(r);
            chain_from_host(a, b, &w, bias)?
        }
        CompressMethod::Active => {
            let cov = calibrated(calibration, name, d_in, params.method, Stat::GradCov)?;
            let r = rank_for_ratio(&[d_in, d_out], params.ratio, RankMethod::Svd)?;
            let values: Vec<f64> = w.clone().into_data().iter::<f64>().collect();
            let (a, b) = super::active_factors(&values, cov, d_in, d_out, r, &w.device())?;
            chain_from_host(a, b, &w, bias)?
        }
        CompressMethod::Ttm => {
            let r = ttm_rank_for_ratio(d_in, d_out, params.ratio)?;
            let (rows, cols) = matrix_modes(d_in, d_out, TT_CORES)?;
            let m = TtMatrix::from_dense(w.clone(), &rows, &cols, Truncation::rank(r))?;
            LinearLayer::Tt(
                TtLinearConfig::for_matrix(&m, bias.is_some()).init_from_matrix(&m, bias)?,
            )
        }
    };
    let report = LayerReport {
        name: name.to_string(),
        shape: [d_in, d_out],
        rank: layer_rank(&new),
        params_before: layer.weight_param_count(),
        params_after: new.weight_param_count(),
        rel_error: rel_error(&w, new.dense_weight().detach()),
        ptq_rel_error,
        als_rel_error,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((new, report))
}

/// The rank of a layer as the report gives it: 0 for a dense layer.
fn layer_rank(layer: &LinearLayer) -> usize {
    match layer {
        LinearLayer::Factored(f) => f.rank(),
        LinearLayer::Tt(t) => t.ranks().into_iter().max().unwrap_or(0),
        LinearLayer::Exact(_) | LinearLayer::Gemm(_) | LinearLayer::Sketched(_) => 0,
    }
}

/// Compresses every encoder linear of `model` as `params` says, calling `progress` after
/// each layer (in [`Bert::linears`] order).
///
/// # Errors
///
/// As [`compress_linear`], for the first layer that fails (a ratio no rank achieves fails
/// on the first layer, naming the largest achievable ratio).
pub fn compress_bert(
    model: Bert,
    params: &CompressParams,
    progress: impl FnMut(&LayerReport),
) -> Result<(Bert, Vec<LayerReport>)> {
    compress_bert_calibrated(model, params, None, progress)
}

/// [`compress_bert`] with the calibration that data-aware methods read
/// ([`super::calibrate`] of the model being compressed).
///
/// # Errors
///
/// As [`compress_linear_calibrated`].
pub fn compress_bert_calibrated(
    model: Bert,
    params: &CompressParams,
    calibration: Option<&Calibration>,
    mut progress: impl FnMut(&LayerReport),
) -> Result<(Bert, Vec<LayerReport>)> {
    if params.auto_ranks {
        return compress_bert_auto(model, params, calibration, progress);
    }
    if params.method == CompressMethod::Rom {
        return compress_bert_rom(model, params, calibration, progress);
    }
    let mut reports = Vec::new();
    let model = model.try_map_linears(|name, layer| {
        let (new, report) = compress_linear_calibrated(name, &layer, params, calibration)?;
        progress(&report);
        reports.push(report);
        Ok(new)
    })?;
    Ok((model, reports))
}

/// Which calibration statistic a data-aware method reads.
#[derive(Debug, Clone, Copy)]
enum Stat {
    Gram,
    GradCov,
    Fisher,
}

/// The statistic `stat` that `method` reads for the linear `name` of width `d_in`.
fn calibrated<'a>(
    calibration: Option<&'a Calibration>,
    name: &str,
    d_in: usize,
    method: CompressMethod,
    stat: Stat,
) -> Result<&'a [f64]> {
    let found = calibration.and_then(|c| match stat {
        Stat::Gram => c.gram(name).filter(|(_, d)| *d == d_in).map(|(g, _)| g),
        Stat::GradCov => c.grad_cov(name).filter(|(_, d)| *d == d_in).map(|(g, _)| g),
        Stat::Fisher => c.fisher(name).filter(|f| f.len() == d_in),
    });
    found.ok_or_else(|| {
        let how = match stat {
            Stat::Gram => "compress_bert_calibrated with calibrate",
            Stat::GradCov | Stat::Fisher => "compress_bert_calibrated with calibrate_sensitivity",
        };
        Error::config(
            "method",
            method,
            format!("calibration data covering {name} ({how}; memtrain compress reads --data)"),
        )
    })
}

/// Whether `name` is one of an MLP's two linears (`intermediate.dense`, the layer's own
/// `output.dense`).
fn is_mlp(name: &str) -> bool {
    name.ends_with(".intermediate.dense")
        || (name.ends_with(".output.dense") && !name.ends_with(".attention.output.dense"))
}

/// A two-factor chain layer `x A B` from host factors `A [d_in, r]`, `B [r, d_out]`
/// (row-major), on the device and dtype of the weight `like` it replaces.
pub(super) fn chain_from_host(
    a: Vec<f64>,
    b: Vec<f64>,
    like: &Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Result<LinearLayer> {
    let [d_in, d_out] = like.dims();
    let r = a.len() / d_in;
    let (device, dtype) = (like.device(), like.dtype());
    let tensor = |v: Vec<f64>, shape: [usize; 2]| {
        Tensor::<2>::from_data(burn::tensor::TensorData::new(v, shape), (&device, dtype))
    };
    Ok(LinearLayer::Factored(
        FactoredLinearConfig::new(FactoredKind::Chain)
            .init_from(vec![tensor(a, [d_in, r]), tensor(b, [r, d_out])], bias)?,
    ))
}

/// The layer index and part of an MLP linear's name: `Some((i, true))` for
/// `encoder.layer.{i}.intermediate.dense`, `Some((i, false))` for its `output.dense`.
fn mlp_part(name: &str) -> Option<(usize, bool)> {
    if !is_mlp(name) {
        return None;
    }
    let rest = name.strip_prefix("encoder.layer.")?;
    let (index, part) = rest.split_once('.')?;
    Some((index.parse().ok()?, part == "intermediate.dense"))
}

/// One MLP's reduction: the kept neurons, the refit output weight and its error.
pub(super) struct RomPlan {
    pub(super) neurons: Vec<usize>,
    pub(super) refit: Vec<f64>,
    pub(super) output_error: f64,
    pub(super) seconds: f64,
}

/// The reduction of `layer`'s MLP to `configured_d_ff / ratio` neurons from `gram = H̃ᵀH̃`
/// and `cross = H̃ᵀH` of its hidden activations ([`super::rom_neurons`],
/// [`super::rom_refit_to`]; `cross = gram` for one-shot calibration). `seconds` is left 0.
pub(super) fn plan_rom(
    layer: &super::BertLayer,
    ratio: f64,
    gram: &[f64],
    cross: &[f64],
) -> Result<RomPlan> {
    let w2 = layer.ffn_out.dense_weight().detach();
    let [width, d_out] = w2.dims();
    let k = ((layer.configured_d_ff() as f64 / ratio).floor() as usize).clamp(1, width);
    let values: Vec<f64> = w2.clone().into_data().iter::<f64>().collect();
    let neurons = if k == width {
        (0..width).collect()
    } else {
        super::rom_neurons(gram, width, k, &w2.device())?
    };
    let refit = super::rom_refit_to(gram, cross, width, &values, d_out, &neurons)?;
    let output_error = super::rom_output_error(gram, width, &values, d_out, &neurons, &refit);
    Ok(RomPlan {
        neurons,
        refit,
        output_error,
        seconds: 0.0,
    })
}

/// A reduced-order MLP's input layer: the columns (and bias entries) of `neurons` of
/// `ffn_in`, and the share of its weight norm they drop.
pub(super) fn kept_neurons(ffn_in: &LinearLayer, neurons: &[usize]) -> (LinearLayer, f64) {
    let w = ffn_in.dense_weight().detach();
    let index = Tensor::<1, burn::tensor::Int>::from_data(
        burn::tensor::TensorData::new(
            neurons.iter().map(|&i| i as i64).collect::<Vec<_>>(),
            [neurons.len()],
        ),
        &w.device(),
    );
    let kept = w.clone().select(1, index.clone());
    let norm = |t: Tensor<2>| t.powi_scalar(2).sum().into_scalar::<f64>();
    let dropped = (1.0 - norm(kept.clone()) / norm(w).max(f64::MIN_POSITIVE))
        .max(0.0)
        .sqrt();
    let bias = ffn_in.bias().map(|b| b.detach().select(0, index));
    (dense(kept, bias), dropped)
}

/// A reduced-order MLP's output layer: the refit weight `[k, d_out]` (row-major) with
/// `ffn_out`'s bias, on its device and dtype.
pub(super) fn refit_output(ffn_out: &LinearLayer, refit: Vec<f64>, k: usize) -> LinearLayer {
    let w = ffn_out.dense_weight().detach();
    let d_out = w.dims()[1];
    let weight = Tensor::<2>::from_data(
        burn::tensor::TensorData::new(refit, [k, d_out]),
        (&w.device(), w.dtype()),
    );
    dense(weight, ffn_out.bias().map(|b| b.detach()))
}

/// A dense linear from its weight and bias.
pub(super) fn dense(weight: Tensor<2>, bias: Option<Tensor<1>>) -> LinearLayer {
    use burn::module::Param;
    LinearLayer::Exact(burn::nn::Linear {
        weight: Param::from_tensor(weight.detach()),
        bias: bias.map(|b| Param::from_tensor(b.detach())),
    })
}

/// [`compress_bert_calibrated`] for [`CompressMethod::Rom`]: each MLP keeps
/// `configured_d_ff / ratio` neurons ([`super::rom_neurons`] on the Gram matrix of
/// `output.dense`'s input, its refit by [`super::rom_refit`]); the attention linears by
/// [`CompressMethod::Asvd`] at the same ratio.
fn compress_bert_rom(
    model: Bert,
    params: &CompressParams,
    calibration: Option<&Calibration>,
    mut progress: impl FnMut(&LayerReport),
) -> Result<(Bert, Vec<LayerReport>)> {
    params.validate()?;
    let mut plans = Vec::with_capacity(model.layers.len());
    for (li, layer) in model.layers.iter().enumerate() {
        let start = Instant::now();
        let name = format!("encoder.layer.{li}.output.dense");
        let width = layer.ffn_out.dims()[0];
        let gram = calibrated(calibration, &name, width, params.method, Stat::Gram)?;
        let mut plan = plan_rom(layer, params.ratio, gram, gram)?;
        plan.seconds = start.elapsed().as_secs_f64();
        plans.push(plan);
    }
    let attention = CompressParams {
        method: CompressMethod::Asvd,
        ..*params
    };
    let mut reports = Vec::new();
    let model = model.try_map_linears(|name, layer| {
        let Some((li, is_in)) = mlp_part(name) else {
            let (new, report) = compress_linear_calibrated(name, &layer, &attention, calibration)?;
            progress(&report);
            reports.push(report);
            return Ok(new);
        };
        let start = Instant::now();
        let plan = &plans[li];
        let w = layer.dense_weight().detach();
        let [d_in, d_out] = w.dims();
        let (new, rel_error) = if is_in {
            kept_neurons(&layer, &plan.neurons)
        } else {
            (
                refit_output(&layer, plan.refit.clone(), plan.neurons.len()),
                plan.output_error,
            )
        };
        let report = LayerReport {
            name: name.to_string(),
            shape: [d_in, d_out],
            rank: plan.neurons.len(),
            params_before: layer.weight_param_count(),
            params_after: new.weight_param_count(),
            rel_error,
            ptq_rel_error: None,
            als_rel_error: None,
            seconds: plan.seconds / 2.0 + start.elapsed().as_secs_f64(),
        };
        progress(&report);
        reports.push(report);
        Ok(new)
    })?;
    Ok((model, reports))
}

/// [`compress_bert_calibrated`] with automatic ranks: every linear's (whitened) SVD first,
/// then the ranks for the model's budget ([`super::allocate_ranks`]), then the factors.
fn compress_bert_auto(
    model: Bert,
    params: &CompressParams,
    calibration: Option<&Calibration>,
    mut progress: impl FnMut(&LayerReport),
) -> Result<(Bert, Vec<LayerReport>)> {
    params.validate()?;
    let mut spectra = Vec::new();
    let mut shapes = Vec::new();
    let mut seconds = Vec::new();
    for (name, layer) in model.linears() {
        let start = Instant::now();
        let w = layer.dense_weight().detach();
        let [d_in, d_out] = w.dims();
        let values: Vec<f64> = w.clone().into_data().iter::<f64>().collect();
        let device = w.device();
        spectra.push(match params.method {
            CompressMethod::Fwsvd => {
                let fisher = calibrated(calibration, &name, d_in, params.method, Stat::Fisher)?;
                super::Spectrum::row_weighted(&values, fisher, d_in, d_out, &device)?
            }
            CompressMethod::Asvd => {
                let gram = calibrated(calibration, &name, d_in, params.method, Stat::Gram)?;
                super::Spectrum::new(&values, Some(gram), d_in, d_out, &device)?
            }
            _ => super::Spectrum::new(&values, None, d_in, d_out, &device)?,
        });
        shapes.push([d_in, d_out]);
        seconds.push(start.elapsed().as_secs_f64());
    }
    let dense: usize = shapes.iter().map(|[a, b]| a * b).sum();
    let budget = (dense as f64 / params.ratio).floor() as usize;
    let ranks = super::allocate_ranks(&shapes, &spectra, budget)?;
    let mut reports = Vec::new();
    let mut index = 0;
    let model = model.try_map_linears(|name, layer| {
        let start = Instant::now();
        let i = index;
        index += 1;
        let w = layer.dense_weight().detach();
        let [d_in, d_out] = shapes[i];
        let (a, b) = spectra[i].factors(ranks[i]);
        let r = a.len() / d_in;
        let new = chain_from_host(a, b, &w, layer.bias().map(|b| b.detach()))?;
        let report = LayerReport {
            name: name.to_string(),
            shape: [d_in, d_out],
            rank: r,
            params_before: layer.weight_param_count(),
            params_after: new.weight_param_count(),
            rel_error: rel_error(&w, new.dense_weight().detach()),
            ptq_rel_error: None,
            als_rel_error: None,
            seconds: seconds[i] + start.elapsed().as_secs_f64(),
        };
        progress(&report);
        reports.push(report);
        Ok(new)
    })?;
    Ok((model, reports))
}

/// One linear of a saved compressed model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSpec {
    /// The Hugging Face name.
    pub name: String,
    /// `dense` (unchanged, or a reduced-order MLP's narrower layer), `chain` (SVD-type
    /// methods, Tucker-2, active subspace), `cp` or `ttm`.
    pub kind: String,
    /// Each factor's shape (`[r, m, n, r']` for TT cores).
    pub factor_shapes: Vec<Vec<usize>>,
    /// Whether the layer has a bias.
    pub bias: bool,
}

/// The manifest of a saved compressed model (`compressed.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompressedManifest {
    /// The manifest format, 1.
    pub format: u32,
    /// The method, as [`CompressMethod`]'s `Display` writes it.
    pub method: String,
    /// The parameter ratio asked for.
    pub ratio: f64,
    /// Bits per factor code for quantized CP; `None` otherwise.
    pub bits: Option<u32>,
    /// Whether `compressed.safetensors` stores the quantized factors as packed `bits`-bit
    /// codes with one f64 step per factor (`packed.<linear>.<k>.codes` / `.scale`) instead of
    /// f32 values; absent (false) in manifests written before packing.
    #[serde(default)]
    pub packed: bool,
    /// How the model was made (one-shot, or the iterative schedule).
    pub schedule: String,
    /// Every encoder linear, in [`Bert::linears`] order.
    pub layers: Vec<LayerSpec>,
    /// CRC-32 of `compressed.safetensors`, written by [`save_compressed`] and checked by
    /// [`load_compressed`] before the weights are parsed (absent in older manifests, which
    /// load unverified).
    #[serde(default)]
    pub weights_crc32: Option<u32>,
}

impl CompressedManifest {
    /// Describes `model`'s linears.
    pub fn describe(
        model: &Bert,
        method: CompressMethod,
        ratio: f64,
        schedule: impl Into<String>,
    ) -> Self {
        let layers = model
            .linears()
            .into_iter()
            .map(|(name, l)| {
                let (kind, factor_shapes) = match l {
                    LinearLayer::Factored(f) => (
                        match f.kind() {
                            FactoredKind::Chain => "chain",
                            FactoredKind::Cp => "cp",
                        },
                        f.factor_shapes().iter().map(|s| s.to_vec()).collect(),
                    ),
                    LinearLayer::Tt(t) => (
                        "ttm",
                        t.matrix()
                            .cores()
                            .iter()
                            .map(|c| c.dims().to_vec())
                            .collect(),
                    ),
                    LinearLayer::Exact(_) | LinearLayer::Gemm(_) | LinearLayer::Sketched(_) => {
                        ("dense", vec![l.dims().to_vec()])
                    }
                };
                LayerSpec {
                    name,
                    kind: kind.to_string(),
                    factor_shapes,
                    bias: l.bias().is_some(),
                }
            })
            .collect();
        let packed = model
            .linears()
            .iter()
            .any(|(_, l)| matches!(l, LinearLayer::Factored(f) if f.grid().is_some()));
        CompressedManifest {
            format: FORMAT,
            method: method.to_string(),
            ratio,
            bits: method.bits(),
            packed,
            schedule: schedule.into(),
            layers,
            weights_crc32: None,
        }
    }
}

/// Writes `model` to the directory `out`: the factors, the manifest and the config and
/// tokenizer files of `source` (the original model directory). Everything is written to a
/// temporary sibling directory first and renamed into place, replacing a previous
/// compressed model at `out`.
///
/// # Errors
///
/// [`Error::Data`] when `source` lacks `config.json` or `tokenizer.json`;
/// [`Error::Config`] when `out` is a non-empty directory that is not a compressed model;
/// [`Error::Io`] / [`Error::Checkpoint`] when a file cannot be written.
pub fn save_compressed(
    model: &Bert,
    manifest: &CompressedManifest,
    source: &Path,
    out: &Path,
) -> Result<PathBuf> {
    require_file(&source.join(CONFIG_FILE))?;
    require_file(&source.join("tokenizer.json"))?;
    if out.is_dir() && !out.join(MANIFEST_FILE).is_file() {
        let empty = fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_none();
        if !empty {
            return Err(Error::config(
                "out",
                out.display(),
                "a new or empty directory, or one a previous compress wrote",
            ));
        }
    }
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "compressed".into());
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    for f in COPIED_FILES {
        let from = source.join(f);
        if from.is_file() {
            fs::copy(&from, tmp.join(f)).map_err(|e| Error::io(&from, e))?;
        }
    }
    let weights = tmp.join(COMPRESSED_WEIGHTS_FILE);
    if manifest.packed {
        let bytes = packed_weights(model)?;
        fs::write(&weights, bytes).map_err(|e| Error::io(&weights, e))?;
    } else {
        model
            .save_into(&mut SafetensorsStore::from_file(&weights))
            .map_err(|e| Error::checkpoint(&weights, e))?;
    }
    let written = fs::read(&weights).map_err(|e| Error::io(&weights, e))?;
    let manifest = CompressedManifest {
        weights_crc32: Some(crc32fast::hash(&written)),
        ..manifest.clone()
    };
    drop(written);
    let json = serde_json::to_vec_pretty(&manifest).expect("the manifest always serializes");
    fs::write(tmp.join(MANIFEST_FILE), json).map_err(|e| Error::io(tmp.join(MANIFEST_FILE), e))?;
    if out.exists() {
        fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    Ok(out.to_path_buf())
}

/// A layer of the manifest's shapes with zero weights, to load into.
fn skeleton(
    spec: &LayerSpec,
    device: &Device,
    data: &dyn Fn(String) -> Error,
) -> Result<LinearLayer> {
    let two = |s: &Vec<usize>| -> Result<[usize; 2]> {
        <[usize; 2]>::try_from(s.as_slice())
            .map_err(|_| data(format!("{}: factor shape {s:?} is not 2-D", spec.name)))
    };
    let kind = match spec.kind.as_str() {
        "chain" => Some(FactoredKind::Chain),
        "cp" => Some(FactoredKind::Cp),
        _ => None,
    };
    match (spec.kind.as_str(), kind) {
        ("dense", None) => {
            let [d_in, d_out] = match spec.factor_shapes.as_slice() {
                [shape] => two(shape)?,
                other => {
                    return Err(data(format!(
                        "{}: a dense layer lists {} shapes, not one",
                        spec.name,
                        other.len()
                    )));
                }
            };
            Ok(LinearLayer::Exact(
                burn::nn::LinearConfig::new(d_in, d_out)
                    .with_bias(spec.bias)
                    .init(device),
            ))
        }
        (_, Some(kind)) => {
            let shapes = spec
                .factor_shapes
                .iter()
                .map(two)
                .collect::<Result<Vec<_>>>()?;
            Ok(LinearLayer::Factored(
                FactoredLinearConfig::new(kind)
                    .with_factor_shapes(shapes)
                    .with_bias(spec.bias)
                    .init(device)?,
            ))
        }
        ("ttm", None) => {
            let cores = spec
                .factor_shapes
                .iter()
                .map(|s| {
                    <[usize; 4]>::try_from(s.as_slice())
                        .map(|d| Tensor::<4>::zeros(d, device))
                        .map_err(|_| data(format!("{}: TT core shape {s:?} is not 4-D", spec.name)))
                })
                .collect::<Result<Vec<_>>>()?;
            let m = TtMatrix::new(cores)?;
            let d_out = m.col_modes().iter().product::<usize>();
            let bias = spec.bias.then(|| Tensor::zeros([d_out], device));
            Ok(LinearLayer::Tt(
                TtLinearConfig::for_matrix(&m, bias.is_some()).init_from_matrix(&m, bias)?,
            ))
        }
        (other, _) => Err(data(format!(
            "{}: layer kind {other:?} is not one of dense, chain, cp, ttm",
            spec.name
        ))),
    }
}

/// Reads a directory [`save_compressed`] wrote: the model (factored layers in factored
/// form) and its manifest.
///
/// # Errors
///
/// [`Error::Data`] naming the path for a missing directory or file, a manifest that does
/// not parse or names other layers than the config implies, or factors that do not match
/// the manifest's shapes.
pub fn load_compressed(
    dir: impl AsRef<Path>,
    device: &Device,
) -> Result<(Bert, CompressedManifest)> {
    let dir = dir.as_ref();
    if !dir.is_dir() {
        return Err(Error::Data {
            path: dir.to_path_buf(),
            reason: "no such compressed model directory".into(),
        });
    }
    let manifest_path = dir.join(MANIFEST_FILE);
    if !manifest_path.is_file() {
        return Err(Error::Data {
            path: manifest_path,
            reason: "missing (not a compressed model directory?)".into(),
        });
    }
    let data = |path: &Path, reason: String| Error::Data {
        path: path.to_path_buf(),
        reason,
    };
    let raw = fs::read(&manifest_path).map_err(|e| Error::io(&manifest_path, e))?;
    let manifest: CompressedManifest = serde_json::from_slice(&raw).map_err(|e| {
        data(
            &manifest_path,
            format!("not a compressed-model manifest: {e}"),
        )
    })?;
    if manifest.format != FORMAT {
        return Err(data(
            &manifest_path,
            format!(
                "format {} is not the supported format {FORMAT}",
                manifest.format
            ),
        ));
    }
    let config = BertConfig::from_file(dir.join(CONFIG_FILE))?;
    let model = config
        .init(device)
        .map_err(|e| data(&dir.join(CONFIG_FILE), e.to_string()))?;
    let names: Vec<String> = model.linears().into_iter().map(|(n, _)| n).collect();
    let listed: Vec<&str> = manifest.layers.iter().map(|l| l.name.as_str()).collect();
    if names != listed {
        return Err(data(
            &manifest_path,
            format!(
                "lists {} layers that do not match the {} linears of config.json",
                listed.len(),
                names.len()
            ),
        ));
    }
    let manifest_err = |reason: String| data(&manifest_path, reason);
    let mut specs = manifest.layers.iter();
    let mut model = model.try_map_linears(|name, layer| {
        let spec = specs.next().expect("as many specs as linears");
        if spec.kind == "dense" && spec.factor_shapes == [layer.dims().to_vec()] {
            return Ok(layer);
        }
        let new = skeleton(spec, device, &manifest_err)?;
        // A reduced-order MLP keeps fewer hidden neurons: only its hidden width may change.
        let fits = match mlp_part(name) {
            Some((_, true)) => new.dims()[0] == layer.dims()[0],
            Some((_, false)) => new.dims()[1] == layer.dims()[1],
            None => new.dims() == layer.dims(),
        };
        if !fits {
            return Err(manifest_err(format!(
                "{}: factors of a {:?} weight where config.json implies {:?}",
                spec.name,
                new.dims(),
                layer.dims()
            )));
        }
        Ok(new)
    })?;
    for (li, layer) in model.layers.iter().enumerate() {
        let (hidden, back) = (layer.ffn_in.dims()[1], layer.ffn_out.dims()[0]);
        if hidden != back {
            return Err(manifest_err(format!(
                "encoder.layer.{li}: intermediate.dense has {hidden} outputs but output.dense {back} inputs"
            )));
        }
    }
    let path = dir.join(COMPRESSED_WEIGHTS_FILE);
    require_file(&path)?;
    if manifest.packed {
        return load_packed(model, manifest, &path, device);
    }
    if manifest.weights_crc32.is_some() {
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        check_crc(&manifest, &bytes, &path)?;
    }
    let applied = model
        .load_from(&mut SafetensorsStore::from_file(&path))
        .map_err(|e| data(&path, format!("cannot be loaded: {e}")))?;
    if let Some(why) = mismatch(&applied) {
        return Err(data(&path, format!("does not match the manifest: {why}")));
    }
    Ok((model, manifest))
}

/// Checks the checksum of `bytes` against the manifest's, naming `path`.
fn check_crc(manifest: &CompressedManifest, bytes: &[u8], path: &Path) -> Result<()> {
    if let Some(want) = manifest.weights_crc32 {
        let got = crc32fast::hash(bytes);
        if got != want {
            return Err(Error::Data {
                path: path.to_path_buf(),
                reason: format!(
                    "checksum {got:08x} is not the {want:08x} that {MANIFEST_FILE} lists (a truncated, changed or swapped file)"
                ),
            });
        }
    }
    Ok(())
}

/// [`load_compressed`] of a packed file: everything but the factors through burn's store,
/// then every quantized CP layer rebuilt from its codes ([`unpack_factors`]).
fn load_packed(
    mut model: Bert,
    manifest: CompressedManifest,
    path: &Path,
    device: &Device,
) -> Result<(Bert, CompressedManifest)> {
    let data = |reason: String| Error::Data {
        path: path.to_path_buf(),
        reason,
    };
    let bits = manifest
        .bits
        .filter(|b| (2..=8).contains(b))
        .ok_or_else(|| {
            data(format!(
                "packed codes need bits in 2..=8, the manifest says {:?}",
                manifest.bits
            ))
        })?;
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    check_crc(&manifest, &bytes, path)?;
    let applied = model
        .load_from(
            &mut SafetensorsStore::from_bytes(Some(bytes.clone()))
                .with_predicate(not_factor_path)
                .allow_partial(true),
        )
        .map_err(|e| data(format!("cannot be loaded: {e}")))?;
    let missing: Vec<&String> = applied
        .missing
        .iter()
        .map(|m| &m.0)
        .filter(|p| !is_factor_path(p, ""))
        .collect();
    if !applied.errors.is_empty() || !missing.is_empty() {
        return Err(data(format!(
            "does not match the manifest: {} missing, {} errors (first: {})",
            missing.len(),
            applied.errors.len(),
            applied
                .errors
                .first()
                .map(|e| e.to_string())
                .or(missing.first().map(|m| m.to_string()))
                .unwrap_or_default()
        )));
    }
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| data(format!("not a safetensors file: {e}")))?;
    let mut specs = manifest.layers.iter();
    let model = model.try_map_linears(|_, layer| {
        let spec = specs.next().expect("as many specs as linears");
        match layer {
            LinearLayer::Factored(f) if spec.kind == "cp" => {
                let (factors, grid) = unpack_factors(&file, spec, bits, device, &data)?;
                let bias = f.bias.as_ref().map(|b| b.val());
                Ok(LinearLayer::Factored(
                    FactoredLinearConfig::new(FactoredKind::Cp)
                        .init_from(factors, bias)?
                        .with_grid(grid)?,
                ))
            }
            other => Ok(other),
        }
    })?;
    Ok((model, manifest))
}

/// Whether a burn module path names a factor of a factored linear (what the packed format
/// stores as codes instead).
fn is_factor_path(path: &str, _container: &str) -> bool {
    path.contains(".factors.")
}

fn not_factor_path(path: &str, container: &str) -> bool {
    !is_factor_path(path, container)
}

/// The names of a packed factor's codes and step in `compressed.safetensors`.
fn packed_names(linear: &str, k: usize) -> (String, String) {
    (
        format!("packed.{linear}.{k}.codes"),
        format!("packed.{linear}.{k}.scale"),
    )
}

/// The safetensors bytes of `model` with every quantized factor as `bits`-bit codes (offset
/// by `2^(bits−1) − 1` to be non-negative, packed LSB first by
/// [`crate::activation::codes::pack`]) and its step as one f64, and every other tensor as
/// burn's store writes it.
fn packed_weights(model: &Bert) -> Result<Vec<u8>> {
    let mut packed: Vec<(String, Vec<u8>, Vec<usize>, safetensors::Dtype)> = Vec::new();
    for (name, layer) in model.linears() {
        let LinearLayer::Factored(f) = layer else {
            continue;
        };
        let (Some(grid), Some(codes)) = (f.grid(), f.codes()?) else {
            return Err(Error::config(
                "model",
                format!("{name} without a quantization grid next to quantized layers"),
                "every factored layer quantized (the packed format stores no f32 factors)",
            ));
        };
        let offset = (1i32 << (grid.bits - 1)) - 1;
        for (k, (codes, scale)) in codes.iter().zip(&grid.scales).enumerate() {
            let shifted: Vec<u8> = codes.iter().map(|&q| (q + offset) as u8).collect();
            let bytes = crate::activation::codes::pack(&shifted, grid.bits);
            let (c, s) = packed_names(&name, k);
            let n = bytes.len();
            packed.push((c, bytes, vec![n], safetensors::Dtype::U8));
            packed.push((
                s,
                scale.to_le_bytes().to_vec(),
                vec![1],
                safetensors::Dtype::F64,
            ));
        }
    }
    let mut store = SafetensorsStore::from_bytes(None).with_predicate(not_factor_path);
    let burn_err = |e: String| Error::config("compressed model", "not serializable", e);
    model
        .save_into(&mut store)
        .map_err(|e| burn_err(e.to_string()))?;
    let rest = store.get_bytes().map_err(|e| burn_err(e.to_string()))?;
    let parsed =
        safetensors::SafeTensors::deserialize(&rest).map_err(|e| burn_err(e.to_string()))?;
    let (_, metadata) =
        safetensors::SafeTensors::read_metadata(&rest).map_err(|e| burn_err(e.to_string()))?;
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = parsed.tensors();
    for (name, bytes, shape, dtype) in &packed {
        views.push((
            name.clone(),
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map_err(|e| burn_err(e.to_string()))?,
        ));
    }
    safetensors::serialize(views, metadata.metadata().clone()).map_err(|e| burn_err(e.to_string()))
}

/// The factors of the packed layer `spec` (a quantized CP) from `file`: each code times its
/// step, exactly the f32 values [`packed_weights`] stored.
fn unpack_factors(
    file: &safetensors::SafeTensors,
    spec: &LayerSpec,
    bits: u32,
    device: &Device,
    data: &dyn Fn(String) -> Error,
) -> Result<(Vec<Tensor<2>>, crate::decompose::QuantGrid)> {
    let offset = (1i32 << (bits - 1)) - 1;
    let mut factors = Vec::new();
    let mut scales = Vec::new();
    for (k, shape) in spec.factor_shapes.iter().enumerate() {
        let (c, s) = packed_names(&spec.name, k);
        let read = |name: &str| {
            file.tensor(name)
                .map_err(|e| data(format!("{}: packed factor {k}: {e}", spec.name)))
        };
        let (codes, scale) = (read(&c)?, read(&s)?);
        let n: usize = shape.iter().product();
        let step: [u8; 8] = scale
            .data()
            .try_into()
            .map_err(|_| data(format!("{}: factor {k}'s step is not one f64", spec.name)))?;
        let step = f64::from_le_bytes(step);
        if codes.data().len() != crate::activation::codes::packed_len(n, bits) || !step.is_finite()
        {
            return Err(data(format!(
                "{}: factor {k} holds {} code bytes for {n} {bits}-bit codes (step {step})",
                spec.name,
                codes.data().len()
            )));
        }
        let values: Vec<f32> = (0..n)
            .map(|i| {
                let q = i32::from(crate::activation::codes::get(codes.data(), i, bits)) - offset;
                crate::linear::grid_value(step, q)
            })
            .collect();
        let [rows, cols] = <[usize; 2]>::try_from(shape.as_slice())
            .map_err(|_| data(format!("{}: factor shape {shape:?} is not 2-D", spec.name)))?;
        factors.push(Tensor::<2>::from_data(
            burn::tensor::TensorData::new(values, [rows, cols]),
            device,
        ));
        scales.push(step);
    }
    Ok((factors, crate::decompose::QuantGrid { bits, scales }))
}

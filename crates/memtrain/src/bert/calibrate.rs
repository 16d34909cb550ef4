//! Calibration for data-aware compression: what each encoder linear sees on real text.
//!
//! [`calibrate`] runs the model on calibration lines and accumulates, for every linear, the
//! Gram matrix `XᵀX` of its inputs over the tokens the attention mask keeps (padding
//! excluded). Activation-whitened SVD ([`super::CompressMethod::Asvd`]) truncates a weight
//! in the metric that matrix defines, so that `‖XW − XŴ‖` is what is minimised.

use burn::tensor::{Device, Tensor};

use super::model::{Bert, key_bias};
use super::tokenizer::BertTokenizer;
use crate::error::{Error, Result};

/// Calibration lines `memtrain compress` passes to [`super::compress_model`] by default and
/// the iterative schedule reads (the first ones of the distillation lines): enough tokens (about 10k on tinyshakespeare) for `XᵀX` of the
/// 1536-wide input to be well conditioned, in about a second of forward passes.
pub const CALIBRATION_LINES: usize = 512;

/// Sentences per calibration batch.
pub const CALIBRATION_BATCH: usize = 32;

/// The input Gram matrix `XᵀX` of every encoder linear, in [`crate::linear::Linears`] order.
#[derive(Debug, Clone)]
pub struct Calibration {
    /// `(name, d_in, XᵀX row-major [d_in, d_in])`.
    grams: Vec<(String, usize, Vec<f64>)>,
    /// Tokens the matrices sum over.
    pub tokens: usize,
}

impl Calibration {
    /// A calibration from Gram matrices computed elsewhere: `(name, d_in, XᵀX [d_in, d_in]
    /// row-major)` per linear, over `tokens` tokens.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the linear whose matrix is not `d_in × d_in`.
    pub fn from_grams(grams: Vec<(String, usize, Vec<f64>)>, tokens: usize) -> Result<Self> {
        for (name, d, g) in &grams {
            if g.len() != d * d {
                return Err(Error::config(
                    format!("Gram matrix of {name}"),
                    format!("{} entries", g.len()),
                    format!("{} ({d} × {d})", d * d),
                ));
            }
        }
        Ok(Calibration { grams, tokens })
    }

    /// The Gram matrix of the linear `name` and its width, if calibrated.
    pub fn gram(&self, name: &str) -> Option<(&[f64], usize)> {
        self.grams
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, d, g)| (g.as_slice(), *d))
    }
}

/// Runs `model` on `lines` (in batches of `batch`, truncated to the tokenizer's and model's
/// length) and returns each linear's input Gram matrix over the unpadded tokens.
///
/// # Errors
///
/// [`Error::Config`] for no lines or `batch` 0; the tokenizer's errors.
pub fn calibrate(
    model: &Bert,
    tokenizer: &BertTokenizer,
    lines: &[&str],
    batch: usize,
    device: &Device,
) -> Result<Calibration> {
    if lines.is_empty() {
        return Err(Error::config(
            "calibration lines",
            0,
            "at least one line of text to calibrate on",
        ));
    }
    if batch == 0 {
        return Err(Error::config("batch size", 0, "at least 1"));
    }
    let (names, widths): (Vec<String>, Vec<usize>) = crate::linear::Linears::linears(model)
        .into_iter()
        .map(|(n, l)| (n, l.dims()[0]))
        .unzip();
    let mut grams: Vec<Vec<f64>> = widths.iter().map(|d| vec![0.0; d * d]).collect();
    let max_len = tokenizer.max_seq_length().min(model.max_position());
    let mut tokens = 0;
    for chunk in lines.chunks(batch) {
        let input = tokenizer.encode_batch(chunk, max_len)?;
        let (ids, mask) = input.tensors(device);
        let [b, t] = ids.dims();
        tokens += mask.clone().sum().into_scalar::<i64>() as usize;
        let keep: Tensor<3> = mask.clone().float().reshape([b, t, 1]);
        let bias = key_bias(mask, b, t);
        let mut x = model.embeddings.forward(ids);
        for (li, layer) in model.layers.iter().enumerate() {
            x = layer.forward_seeing(x, bias.clone(), &mut |slot, input| {
                let d = input.dims()[2];
                let rows = (input.clone() * keep.clone()).reshape([b * t, d]);
                let g: Vec<f64> = rows
                    .clone()
                    .transpose()
                    .matmul(rows)
                    .into_data()
                    .iter::<f64>()
                    .collect();
                // Slot 0 is the shared input of query, key and value.
                let slots: &[usize] = if slot == 0 { &[0, 1, 2] } else { &[slot] };
                for &s in slots {
                    for (acc, v) in grams[li * 6 + s].iter_mut().zip(&g) {
                        *acc += v;
                    }
                }
            });
        }
    }
    Ok(Calibration {
        grams: names
            .into_iter()
            .zip(widths)
            .zip(grams)
            .map(|((n, d), g)| (n, d, g))
            .collect(),
        tokens,
    })
}

/// The ridge added to `XᵀX` before whitening, relative to its mean diagonal: directions the
/// calibration text barely reaches keep a little of the plain SVD's weight-space metric
/// instead of being amplified by a near-singular whitening.
pub const RIDGE: f64 = 1e-4;

/// The SVD of a weight in the metric its truncation minimises, `M W = U S Vᵀ`, with
/// `M = Lᵀ` for activation whitening (`XᵀX + δI = L Lᵀ`, `δ` = [`RIDGE`] × the mean diagonal)
/// or `M = I` for the plain weight-space SVD. Truncating it to any rank gives that rank's
/// factors ([`Spectrum::factors`]); its singular values say what each rank costs
/// ([`Spectrum::tail_energy`]), which is what automatic ranks compare across layers.
#[derive(Debug, Clone)]
pub struct Spectrum {
    d_in: usize,
    d_out: usize,
    /// `L` row-major `[d_in, d_in]`, lower triangular; `None` for the plain SVD.
    l: Option<Vec<f64>>,
    u: Vec<f64>,
    /// Singular values, descending.
    pub s: Vec<f64>,
    vt: Vec<f64>,
}

impl Spectrum {
    /// The SVD of `w [d_in, d_out]` (row-major), whitened by `gram = XᵀX` when given.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the Gram matrix has NaN entries or cannot be made positive
    /// definite, or the SVD does not converge.
    pub fn new(
        w: &[f64],
        gram: Option<&[f64]>,
        d_in: usize,
        d_out: usize,
        device: &Device,
    ) -> Result<Self> {
        use memtrain_tt::linalg::host;
        let (l, m) = match gram {
            None => (None, w.to_vec()),
            Some(gram) => {
                let mean = (0..d_in).map(|i| gram[i * d_in + i]).sum::<f64>() / d_in as f64;
                let mut g = gram.to_vec();
                if mean.is_finite() && mean > 0.0 {
                    for i in 0..d_in {
                        g[i * d_in + i] += RIDGE * mean;
                    }
                }
                let l = host::cholesky(&g, d_in)
                    .or_else(|| host::ridge_cholesky(&g, d_in))
                    .ok_or_else(|| {
                        Error::config(
                            "calibration",
                            format!("a [{d_in}, {d_in}] input Gram matrix"),
                            "a finite Gram matrix (calibration text that reaches the layer)",
                        )
                    })?;
                let mut lt = vec![0.0; d_in * d_in];
                for i in 0..d_in {
                    for j in 0..=i {
                        lt[j * d_in + i] = l[i * d_in + j];
                    }
                }
                let m = host::matmul(&lt, w, d_in, d_in, d_out);
                (Some(l), m)
            }
        };
        let dtype = burn::tensor::DType::F64;
        let (u, s, vt) = memtrain_tt::linalg::svd(host::tensor(m, [d_in, d_out], device, dtype))?;
        Ok(Spectrum {
            d_in,
            d_out,
            l,
            u: host::values(u),
            s: host::values(s),
            vt: host::values(vt),
        })
    }

    /// The share of the (whitened) weight's energy that truncation to rank `r` drops:
    /// `Σ_{j ≥ r} s_j² / Σ s_j²`, the squared relative error of the truncation in its metric.
    pub fn tail_energy(&self, r: usize) -> f64 {
        let total: f64 = self.s.iter().map(|v| v * v).sum();
        let tail: f64 = self.s.iter().skip(r).map(|v| v * v).sum();
        if total > 0.0 { tail / total } else { 0.0 }
    }

    /// The rank-`r` factors `A [d_in, r]`, `B [r, d_out]` (row-major): `(M⁻¹ U_r S_r, V_rᵀ)`.
    pub fn factors(&self, r: usize) -> (Vec<f64>, Vec<f64>) {
        let (d_in, d_out) = (self.d_in, self.d_out);
        let k = self.s.len();
        let r = r.min(k);
        let mut a = vec![0.0; d_in * r];
        for i in 0..d_in {
            for j in 0..r {
                a[i * r + j] = self.u[i * k + j] * self.s[j];
            }
        }
        if let Some(l) = &self.l {
            // A = L⁻ᵀ A' by back substitution (Lᵀ is upper triangular).
            for j in 0..r {
                for i in (0..d_in).rev() {
                    let mut v = a[i * r + j];
                    for p in i + 1..d_in {
                        v -= l[p * d_in + i] * a[p * r + j];
                    }
                    a[i * r + j] = v / l[i * d_in + i];
                }
            }
        }
        (a, self.vt[..r * d_out].to_vec())
    }
}

/// Activation-whitened truncation of `w [d_in, d_out]` (row-major f64) to rank `r` in the
/// metric of `gram = XᵀX` ([`Spectrum`] with whitening, then [`Spectrum::factors`]): the
/// rank-`r` factors `A [d_in, r]`, `B [r, d_out]` closest to `W` in `‖X(W − Ŵ)‖_F` (exactly so
/// as the ridge goes to 0).
///
/// # Errors
///
/// As [`Spectrum::new`].
pub fn whitened_factors(
    w: &[f64],
    gram: &[f64],
    d_in: usize,
    d_out: usize,
    r: usize,
    device: &Device,
) -> Result<(Vec<f64>, Vec<f64>)> {
    Ok(Spectrum::new(w, Some(gram), d_in, d_out, device)?.factors(r))
}

/// Ranks for layers of `shapes` (`[d_in, d_out]`) and `spectra` within `budget` weight
/// parameters in all (a rank-`r` layer costs `r (d_in + d_out)`): greedily, each next rank
/// goes to the layer whose tail energy ([`Spectrum::tail_energy`]) it lowers most per
/// parameter, every layer keeping at least rank 1 and less than its dense size; a rank that
/// would keep less than 1e-12 of a layer's energy is not given (the budget may be left unspent).
///
/// # Errors
///
/// [`Error::Config`] naming the budget when rank 1 everywhere does not fit.
pub fn allocate_ranks(
    shapes: &[[usize; 2]],
    spectra: &[Spectrum],
    budget: usize,
) -> Result<Vec<usize>> {
    let cost = |i: usize| shapes[i][0] + shapes[i][1];
    let floor: usize = (0..shapes.len()).map(cost).sum();
    if floor > budget {
        return Err(Error::config(
            "ratio",
            format!("a budget of {budget} weight parameters"),
            format!("at least {floor} (rank 1 in every layer)"),
        ));
    }
    let mut ranks = vec![1; shapes.len()];
    let mut used = floor;
    let gain = |i: usize, r: usize| {
        let s = &spectra[i].s;
        let total: f64 = s.iter().map(|v| v * v).sum();
        let next = s.get(r).map_or(0.0, |v| v * v);
        if total > 0.0 {
            next / total / cost(i) as f64
        } else {
            0.0
        }
    };
    loop {
        let best = (0..shapes.len())
            .filter(|&i| {
                let r = ranks[i];
                r < spectra[i].s.len()
                    && (r + 1) * cost(i) < shapes[i][0] * shapes[i][1]
                    && used + cost(i) <= budget
                    // A rank that keeps (numerically) nothing is not worth its parameters.
                    && gain(i, r) * cost(i) as f64 > 1e-12
            })
            .max_by(|&a, &b| gain(a, ranks[a]).total_cmp(&gain(b, ranks[b])));
        let Some(i) = best else { break };
        ranks[i] += 1;
        used += cost(i);
    }
    Ok(ranks)
}

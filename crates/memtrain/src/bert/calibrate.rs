//! Calibration for data-aware compression: what each encoder linear sees on real text, and
//! how much the sentence embedding cares about it.
//!
//! [`calibrate`] runs the model on calibration lines and accumulates, for every linear, the
//! Gram matrix `XᵀX` of its inputs over the tokens the attention mask keeps (padding
//! excluded): what activation-whitened SVD ([`super::CompressMethod::Asvd`]) and the
//! reduced-order model ([`super::CompressMethod::Rom`]) read.
//!
//! [`calibrate_sensitivity`] adds the loss's gradients, for the active subspace
//! ([`super::CompressMethod::Active`]) and Fisher-weighted SVD
//! ([`super::CompressMethod::Fwsvd`]). The loss is the distillation loss `1 − cos(e', e)`
//! between the compressed and the original sentence embedding. At the original model it is 0
//! with a zero gradient, so what matters is its curvature: to second order it is
//! `½ ‖e' − e‖²` for unit embeddings, whose Gauss–Newton matrix is `JᵀJ` (`J` the Jacobian of
//! the unit embedding). A Gaussian probe `z ~ N(0, I)` per sentence and the loss `⟨z, e⟩`
//! estimate it without bias: `E_z[∇⟨z,e⟩ ∇⟨z,e⟩ᵀ] = JᵀJ`. So the statistics are the
//! Gauss–Newton (Fisher) matrix of the distillation loss, estimated with one probe per
//! sentence.

use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::model::Bert;
use super::tokenizer::BertTokenizer;
use crate::error::{Error, Result};

/// Calibration lines `memtrain compress` passes to [`super::compress_model`] by default and
/// the iterative schedule reads (the first ones of the distillation lines): enough tokens
/// (about 10k on tinyshakespeare) for `XᵀX` of the 1536-wide input to be well conditioned, in
/// about a second of forward passes.
pub const CALIBRATION_LINES: usize = 512;

/// Sentences per calibration batch.
pub const CALIBRATION_BATCH: usize = 32;

/// What one linear saw: its input Gram matrix and, from [`calibrate_sensitivity`], the
/// loss's gradient statistics.
#[derive(Debug, Clone)]
struct LayerStats {
    name: String,
    d_in: usize,
    /// `XᵀX`, row-major `[d_in, d_in]`.
    gram: Vec<f64>,
    /// `Σ_tokens ∇ₓℓ ∇ₓℓᵀ`, row-major `[d_in, d_in]`.
    grad_cov: Option<Vec<f64>>,
    /// `Σ_batches Σ_j (∂ℓ/∂W_ij)²`, one per input row `i` of `W [d_in, d_out]`.
    fisher: Option<Vec<f64>>,
}

/// The calibration statistics of every encoder linear, in [`crate::linear::Linears`] order.
#[derive(Debug, Clone)]
pub struct Calibration {
    layers: Vec<LayerStats>,
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
        let layers = grams
            .into_iter()
            .map(|(name, d_in, gram)| {
                check_len(&name, "Gram matrix", gram.len(), d_in * d_in)?;
                Ok(LayerStats {
                    name,
                    d_in,
                    gram,
                    grad_cov: None,
                    fisher: None,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Calibration { layers, tokens })
    }

    /// Adds gradient statistics computed elsewhere to the linear `name`: the input-gradient
    /// covariance `[d_in, d_in]` (row-major) and the Fisher row sums `[d_in]`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the linear when it is not calibrated or a length is wrong.
    pub fn with_sensitivity(
        mut self,
        name: &str,
        grad_cov: Vec<f64>,
        fisher: Vec<f64>,
    ) -> Result<Self> {
        let names: Vec<String> = self.layers.iter().map(|l| l.name.clone()).collect();
        let layer = self
            .layers
            .iter_mut()
            .find(|l| l.name == name)
            .ok_or_else(|| Error::config("linear", name, names.join(", ")))?;
        check_len(
            name,
            "gradient covariance",
            grad_cov.len(),
            layer.d_in * layer.d_in,
        )?;
        check_len(name, "Fisher row sums", fisher.len(), layer.d_in)?;
        layer.grad_cov = Some(grad_cov);
        layer.fisher = Some(fisher);
        Ok(self)
    }

    fn layer(&self, name: &str) -> Option<&LayerStats> {
        self.layers.iter().find(|l| l.name == name)
    }

    /// The input Gram matrix `XᵀX` of the linear `name` and its width, if calibrated.
    pub fn gram(&self, name: &str) -> Option<(&[f64], usize)> {
        self.layer(name).map(|l| (l.gram.as_slice(), l.d_in))
    }

    /// The covariance of the loss's gradient with respect to the input of the linear `name`,
    /// `Σ_tokens ∇ₓℓ ∇ₓℓᵀ` `[d_in, d_in]`, and its width, if [`calibrate_sensitivity`] ran.
    pub fn grad_cov(&self, name: &str) -> Option<(&[f64], usize)> {
        self.layer(name)
            .and_then(|l| l.grad_cov.as_deref().map(|g| (g, l.d_in)))
    }

    /// The Fisher information of the weight of the linear `name` summed over each input row,
    /// `[d_in]`, if [`calibrate_sensitivity`] ran.
    pub fn fisher(&self, name: &str) -> Option<&[f64]> {
        self.layer(name).and_then(|l| l.fisher.as_deref())
    }
}

fn check_len(name: &str, what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::config(
            format!("{what} of {name}"),
            format!("{got} entries"),
            format!("{want}"),
        ))
    }
}

pub(super) fn check_args(lines: &[&str], batch: usize) -> Result<()> {
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
    Ok(())
}

/// Host values of `aᵀ b` for `[rows, n]` and `[rows, m]` tensors.
fn gram_of(a: Tensor<2>, b: Tensor<2>) -> Vec<f64> {
    a.transpose().matmul(b).into_data().iter::<f64>().collect()
}

fn add(acc: &mut [f64], v: &[f64]) {
    for (a, x) in acc.iter_mut().zip(v) {
        *a += x;
    }
}

fn empty_stats(model: &Bert) -> Vec<LayerStats> {
    crate::linear::Linears::linears(model)
        .into_iter()
        .map(|(name, l)| {
            let d_in = l.dims()[0];
            LayerStats {
                name,
                d_in,
                gram: vec![0.0; d_in * d_in],
                grad_cov: None,
                fisher: None,
            }
        })
        .collect()
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
    check_args(lines, batch)?;
    let mut layers = empty_stats(model);
    let max_len = tokenizer.max_seq_length().min(model.max_position());
    let mut tokens = 0;
    for chunk in lines.chunks(batch) {
        let input = tokenizer.encode_batch(chunk, max_len)?;
        let (ids, mask) = input.tensors(device);
        let [b, t] = ids.dims();
        tokens += mask.clone().sum().into_scalar::<i64>() as usize;
        let keep: Tensor<3> = mask.clone().float().reshape([b, t, 1]);
        model.forward_probed(ids, mask, &mut |li, site, x| {
            // Query, key and value share one input: their Gram is taken once, at slot 0.
            if !site.output && !matches!(site.slot, 1 | 2) {
                let d = x.dims()[2];
                let rows = (x.clone() * keep.clone()).reshape([b * t, d]);
                add(
                    &mut layers[li * 6 + site.slot].gram,
                    &gram_of(rows.clone(), rows),
                );
            }
            x
        });
    }
    share_qkv_gram(&mut layers);
    Ok(Calibration { layers, tokens })
}

fn share_qkv_gram(layers: &mut [LayerStats]) {
    for li in 0..layers.len() / 6 {
        let g = layers[li * 6].gram.clone();
        layers[li * 6 + 1].gram.clone_from(&g);
        layers[li * 6 + 2].gram = g;
    }
}

/// [`calibrate`] plus the distillation loss's gradient statistics (module docs): per linear,
/// the covariance of the gradient with respect to its input over the unpadded tokens, and the
/// Fisher information of its weight summed over each input row (the squared gradient of each
/// batch's probe loss, whose cross-sentence terms vanish in expectation). `model` must be on
/// the autodiff device `device`; `seed` draws the probes. Each batch is
/// [`sensitivity_batch`] with Gaussian probes.
///
/// # Errors
///
/// As [`calibrate`]; [`Error::Config`] when `device` does not track gradients.
pub fn calibrate_sensitivity(
    model: &Bert,
    tokenizer: &BertTokenizer,
    lines: &[&str],
    batch: usize,
    device: &Device,
    seed: u64,
) -> Result<Calibration> {
    check_args(lines, batch)?;
    let max_len = tokenizer.max_seq_length().min(model.max_position());
    let mut rng = StdRng::seed_from_u64(seed);
    let mut total: Option<Calibration> = None;
    for chunk in lines.chunks(batch) {
        let input = tokenizer.encode_batch(chunk, max_len)?;
        let (ids, mask) = input.tensors(device);
        let (b, d) = (ids.dims()[0], model.d_model());
        let z: Vec<f32> = (0..b * d).map(|_| gaussian(&mut rng)).collect();
        let z = Tensor::<2>::from_data(TensorData::new(z, [b, d]), device);
        let one = sensitivity_batch(model, ids, mask, z)?;
        match &mut total {
            None => total = Some(one),
            Some(t) => t.add(&one),
        }
    }
    Ok(total.expect("at least one line"))
}

impl Calibration {
    /// Adds `other`'s sums (the same model's linears) to these.
    fn add(&mut self, other: &Calibration) {
        self.tokens += other.tokens;
        for (a, b) in self.layers.iter_mut().zip(&other.layers) {
            add(&mut a.gram, &b.gram);
            if let (Some(x), Some(y)) = (a.grad_cov.as_mut(), b.grad_cov.as_ref()) {
                add(x, y);
            }
            if let (Some(x), Some(y)) = (a.fisher.as_mut(), b.fisher.as_ref()) {
                add(x, y);
            }
        }
    }
}

/// The statistics of one batch (token ids and attention mask `[batch, seq]` on the autodiff
/// device of `model`) for the probe loss `ℓ = Σ_b ⟨z_b, e_b⟩`, `z` `[batch, d_model]`, `e` the
/// sentence embeddings ([`Bert::embed`]): per linear, `XᵀX` and `Σ ∇ₓℓ ∇ₓℓᵀ` over the
/// unpadded tokens and `Σ_j (∂ℓ/∂W_ij)²` (`∂ℓ/∂W = Xᵀ ∂ℓ/∂Y`). What
/// [`calibrate_sensitivity`] sums over its batches.
///
/// # Errors
///
/// [`Error::Config`] when the model's device does not track gradients, or `z` is not
/// `[batch, d_model]`.
pub fn sensitivity_batch(
    model: &Bert,
    ids: Tensor<2, burn::tensor::Int>,
    mask: Tensor<2, burn::tensor::Int>,
    z: Tensor<2>,
) -> Result<Calibration> {
    let [b, t] = ids.dims();
    if z.dims() != [b, model.d_model()] {
        return Err(Error::config(
            "probe",
            format!("{:?}", z.dims()),
            format!("[{b}, {}] (batch, d_model)", model.d_model()),
        ));
    }
    let device = ids.device();
    let mut layers = empty_stats(model);
    let tokens = mask.clone().sum().into_scalar::<i64>() as usize;
    let keep: Tensor<3> = mask.clone().float().reshape([b, t, 1]).inner();
    // Per linear: its input (no graph) and the zero probes on its input and output.
    let mut inputs: Vec<Option<(Tensor<3>, Tensor<3>)>> = vec![None; layers.len()];
    let mut outputs: Vec<Option<Tensor<3>>> = vec![None; layers.len()];
    let e = model.embed_probed(ids, mask, &mut |li, site, x| {
        let p = Tensor::<3>::zeros(x.dims(), &device).require_grad();
        let i = li * 6 + site.slot;
        if site.output {
            outputs[i] = Some(p.clone());
        } else {
            inputs[i] = Some((x.clone().inner(), p.clone()));
        }
        x + p
    });
    let grads = (e * z).sum().backward();
    let missing = || {
        Error::config(
            "calibration device",
            format!("{device:?}"),
            "an autodiff device (the sensitivity needs gradients)",
        )
    };
    for (i, stats) in layers.iter_mut().enumerate() {
        let (x, p_in) = inputs[i].take().expect("every linear is probed");
        let p_out = outputs[i].take().expect("every linear is probed");
        let gx = p_in.grad(&grads).ok_or_else(missing)?;
        let gy = p_out.grad(&grads).ok_or_else(missing)?;
        let (d_in, d_out) = (x.dims()[2], gy.dims()[2]);
        let x = (x * keep.clone()).reshape([b * t, d_in]);
        let gx = gx.reshape([b * t, d_in]);
        let gy = gy.reshape([b * t, d_out]);
        add(&mut stats.gram, &gram_of(x.clone(), x.clone()));
        stats.grad_cov = Some(gram_of(gx.clone(), gx));
        let gw = x.transpose().matmul(gy);
        stats.fisher = Some(
            gw.powi_scalar(2)
                .sum_dim(1)
                .into_data()
                .iter::<f64>()
                .collect(),
        );
    }
    Ok(Calibration { layers, tokens })
}

/// A standard normal draw (Box–Muller).
fn gaussian(rng: &mut StdRng) -> f32 {
    let u: f64 = 1.0 - rng.random::<f64>();
    let v: f64 = rng.random();
    ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
}

//! Sequential calibration for `asvd` and `rom` (`compress --sequential`): compress layer by
//! layer, each linear fitted on what it sees in the partly compressed model.
//!
//! One-shot calibration ([`super::calibrate`]) measures every linear's inputs `X` in the
//! original model, so each truncation is optimal for inputs that the compressed model no longer
//! produces: the errors of early layers compound through the later ones. Here the linears are
//! compressed in order (per layer: query, key and value; the attention output; the MLP), and
//! each one is calibrated on its inputs `X̃` in the model whose earlier linears are already
//! compressed, and fitted to the original's output on the same tokens:
//! `min ‖X̃ Ŵ − X W‖`. Its solution is the least-squares map `W* = (X̃ᵀX̃)⁻¹ X̃ᵀX W`
//! (shrunk towards `W` by a ridge, [`SEQUENTIAL_RIDGE`]) truncated in the metric of `X̃` (`‖X̃Ŵ − XW‖² = ‖X̃(Ŵ − W*)‖² + const`), which needs the
//! Gram matrix `X̃ᵀX̃` and the cross matrix `X̃ᵀX`. A reduced-order MLP
//! ([`super::rom_refit_to`]) likewise picks its neurons on `H̃` and refits its output
//! projection to the original's `H W₂`. The idea is GPTQ's and SVD-LLM's (sequential
//! updates); it costs one partial forward pass of both models per group of linears.

use std::time::Instant;

use burn::tensor::{Device, Int, Tensor};

use super::compress::{
    CompressMethod, CompressParams, LayerReport, chain_from_host, kept_neurons, plan_rom,
    refit_output, rel_error,
};
use super::model::{Bert, BertLayer, Site, key_bias};
use super::tokenizer::BertTokenizer;
use crate::decompose::{RankMethod, rank_for_ratio};
use crate::error::{Error, Result};
use crate::linear::{LinearLayer, Linears};
use memtrain_tt::linalg::host;

/// The ridge of the sequential least-squares map relative to the mean input variance. Measured
/// on MiniLM at 2x (asvd, 512 tinyshakespeare lines): mean cosine 0.810 at 1e-2, 0.818 at
/// 1e-1, 0.813 at 1 on held-out lines (one-shot without the sequential fit: 0.792); 0.667
/// at 1e-1 against 0.651 at 1 on another domain's text. Smaller ridges overfit the
/// calibration tokens (1e-4: 0.797).
pub const SEQUENTIAL_RIDGE: f64 = 1e-1;

fn slot(layer: &mut BertLayer, slot: usize) -> &mut LinearLayer {
    match slot {
        0 => &mut layer.query,
        1 => &mut layer.key,
        2 => &mut layer.value,
        3 => &mut layer.attn_out,
        4 => &mut layer.ffn_in,
        _ => &mut layer.ffn_out,
    }
}

/// The inputs `[tokens, d_in]` (padding rows zeroed) of the linears in `slots` of layer
/// `layer`, running only the layers up to it.
fn layer_inputs(
    model: &Bert,
    ids: Tensor<2, Int>,
    mask: Tensor<2, Int>,
    layer: usize,
    slots: &[usize],
) -> Vec<Tensor<2>> {
    let [b, t] = ids.dims();
    let keep: Tensor<3> = mask.clone().float().reshape([b, t, 1]);
    let bias = key_bias(mask, b, t);
    let mut seen: Vec<Option<Tensor<2>>> = vec![None; slots.len()];
    let mut x = model.embeddings.forward(ids);
    for l in model.layers.iter().take(layer) {
        x = l.forward(x, bias.clone());
    }
    model.layers[layer].forward_probed(x, bias, &mut |site: Site, y| {
        if !site.output
            && let Some(i) = slots.iter().position(|&s| s == site.slot)
        {
            let d = y.dims()[2];
            seen[i] = Some((y.clone() * keep.clone()).reshape([b * t, d]));
        }
        y
    });
    seen.into_iter()
        .map(|s| s.expect("every slot is probed"))
        .collect()
}

/// Per slot: `(X̃ᵀX̃, X̃ᵀX)` over `lines`, `X̃` the inputs in `current`, `X` in `original`.
#[allow(clippy::too_many_arguments)]
fn pair_stats(
    original: &Bert,
    current: &Bert,
    tokenizer: &BertTokenizer,
    lines: &[&str],
    batch: usize,
    device: &Device,
    layer: usize,
    slots: &[usize],
) -> Result<Vec<(Vec<f64>, Vec<f64>)>> {
    let max_len = tokenizer.max_seq_length().min(original.max_position());
    let mut sums: Vec<(Vec<f64>, Vec<f64>)> = Vec::new();
    for chunk in lines.chunks(batch) {
        let input = tokenizer.encode_batch(chunk, max_len)?;
        let (ids, mask) = input.tensors(device);
        let xs = layer_inputs(original, ids.clone(), mask.clone(), layer, slots);
        let xt = layer_inputs(current, ids, mask, layer, slots);
        for (i, (x, x_t)) in xs.into_iter().zip(xt).enumerate() {
            let host = |t: Tensor<2>| -> Vec<f64> { t.into_data().iter::<f64>().collect() };
            let gram = host(x_t.clone().transpose().matmul(x_t.clone()));
            let cross = host(x_t.transpose().matmul(x));
            match sums.get_mut(i) {
                None => sums.push((gram, cross)),
                Some((g, c)) => {
                    g.iter_mut().zip(&gram).for_each(|(a, v)| *a += v);
                    c.iter_mut().zip(&cross).for_each(|(a, v)| *a += v);
                }
            }
        }
    }
    Ok(sums)
}

/// `W* = (G̃ + δI)⁻¹ (C W + δ W)` for `W [d, d_out]`: the map that minimises
/// `‖X̃W* − XW‖² + δ‖W* − W‖²`, shrunk towards the original weight where the calibration
/// inputs carry little variance (`δ` = [`SEQUENTIAL_RIDGE`] × the mean diagonal of `G̃`).
fn least_squares_map(
    gram: &[f64],
    cross: &[f64],
    w: &[f64],
    d: usize,
    d_out: usize,
) -> Result<Vec<f64>> {
    let mut g = gram.to_vec();
    let mean = (0..d).map(|i| g[i * d + i]).sum::<f64>() / d as f64;
    let delta = if mean > 0.0 {
        SEQUENTIAL_RIDGE * mean
    } else {
        0.0
    };
    for i in 0..d {
        g[i * d + i] += delta;
    }
    let l = host::cholesky(&g, d)
        .or_else(|| host::ridge_cholesky(&g, d))
        .ok_or_else(|| {
            Error::config(
                "calibration",
                format!("a [{d}, {d}] input Gram matrix"),
                "a finite Gram matrix (calibration text that reaches the layer)",
            )
        })?;
    let mut rhs = host::matmul(cross, w, d, d, d_out);
    for (r, v) in rhs.iter_mut().zip(w) {
        *r += delta * v;
    }
    // Rows of rhsᵀ [d_out, d] solved against the symmetric G̃ give W*ᵀ.
    let mut t = vec![0.0; d_out * d];
    for i in 0..d {
        for j in 0..d_out {
            t[j * d + i] = rhs[i * d_out + j];
        }
    }
    host::cholesky_solve_rows(&l, d, &mut t);
    let mut out = vec![0.0; d * d_out];
    for i in 0..d {
        for j in 0..d_out {
            out[i * d_out + j] = t[j * d + i];
        }
    }
    Ok(out)
}

/// One-shot `asvd` or `rom` with sequential calibration (module docs) of `original` on
/// `lines` (in batches of `batch`, on `device`), calling `progress` after each linear; the
/// reports in [`Linears`] order, each linear's error against its original weight (for the
/// reduced MLP as [`LayerReport::rel_error`] says).
///
/// # Errors
///
/// [`Error::Config`] for another method, no lines or batch 0; as [`CompressParams::validate`],
/// the tokenizer's, the truncations' and [`super::rom_neurons`]'s errors.
#[allow(clippy::too_many_arguments)]
pub fn compress_bert_sequential(
    original: Bert,
    params: &CompressParams,
    tokenizer: &BertTokenizer,
    lines: &[&str],
    batch: usize,
    device: &Device,
    mut progress: impl FnMut(&LayerReport),
) -> Result<(Bert, Vec<LayerReport>)> {
    CompressParams {
        sequential: true,
        ..*params
    }
    .validate()?;
    super::calibrate::check_args(lines, batch)?;
    let rom = params.method == CompressMethod::Rom;
    let names: Vec<String> = original.linears().into_iter().map(|(n, _)| n).collect();
    let groups: &[&[usize]] = if rom {
        &[&[0, 1, 2], &[3], &[4, 5]]
    } else {
        &[&[0, 1, 2], &[3], &[4], &[5]]
    };
    let mut current = original.clone();
    let mut reports: Vec<Option<LayerReport>> = vec![None; names.len()];
    for l in 0..original.layers.len() {
        for group in groups {
            let start = Instant::now();
            let stats = pair_stats(
                &original, &current, tokenizer, lines, batch, device, l, group,
            )?;
            let per = start.elapsed().as_secs_f64() / group.len() as f64;
            if rom && group.len() == 2 {
                let (gram, cross) = &stats[1];
                let layer = &mut current.layers[l];
                let start = Instant::now();
                let plan = plan_rom(layer, params.ratio, gram, cross)?;
                let k = plan.neurons.len();
                let (new_in, dropped) = kept_neurons(&layer.ffn_in, &plan.neurons);
                let new_out = refit_output(&layer.ffn_out, plan.refit, k);
                let seconds = per + start.elapsed().as_secs_f64() / 2.0;
                for (s, new, err) in [(4, new_in, dropped), (5, new_out, plan.output_error)] {
                    let old = std::mem::replace(slot(layer, s), new);
                    let new = slot(layer, s);
                    let report = LayerReport {
                        name: names[l * 6 + s].clone(),
                        shape: old.dims(),
                        rank: k,
                        params_before: old.weight_param_count(),
                        params_after: new.weight_param_count(),
                        rel_error: err,
                        ptq_rel_error: None,
                        als_rel_error: None,
                        seconds,
                    };
                    progress(&report);
                    reports[l * 6 + s] = Some(report);
                }
                continue;
            }
            for (&s, (gram, cross)) in group.iter().zip(&stats) {
                let start = Instant::now();
                let layer = &mut current.layers[l];
                let old = slot(layer, s).clone();
                let w = old.dense_weight().detach();
                let [d_in, d_out] = w.dims();
                let r = rank_for_ratio(&[d_in, d_out], params.ratio, RankMethod::Svd)?;
                let values: Vec<f64> = w.clone().into_data().iter::<f64>().collect();
                let target = least_squares_map(gram, cross, &values, d_in, d_out)?;
                let (a, b) =
                    super::Spectrum::new(&target, Some(gram), d_in, d_out, &w.device())?.factors(r);
                let new = chain_from_host(a, b, &w, old.bias().map(|b| b.detach()))?;
                let report = LayerReport {
                    name: names[l * 6 + s].clone(),
                    shape: [d_in, d_out],
                    rank: r,
                    params_before: old.weight_param_count(),
                    params_after: new.weight_param_count(),
                    rel_error: rel_error(&w, new.dense_weight().detach()),
                    ptq_rel_error: None,
                    als_rel_error: None,
                    seconds: per + start.elapsed().as_secs_f64(),
                };
                *slot(layer, s) = new;
                progress(&report);
                reports[l * 6 + s] = Some(report);
            }
        }
    }
    Ok((
        current,
        reports
            .into_iter()
            .map(|r| r.expect("every linear is compressed"))
            .collect(),
    ))
}

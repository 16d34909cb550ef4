//! The gradient-variance report of the sketched linear backward, as in the paper
//! (Bershatsky et al., <https://arxiv.org/abs/2201.13195>, section on variance): the variance
//! the sketch adds to a layer's weight gradient, against the variance of the minibatch
//! gradient itself.

use burn::tensor::Device;
use serde::Serialize;

use super::TrainConfig;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::Gpt;
use crate::policy::{LinearPolicy, MemoryPolicy};

/// What [`gradient_variance`] measured for one layer (the MLP's first linear of a block).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VarianceReport {
    /// The layer.
    pub layer: String,
    /// The sketch policy.
    pub linear: String,
    /// `E ||g_b - E g||²` over training batches `b`, exact gradients.
    pub minibatch_variance: f64,
    /// `E ||g̃_s - g||²` over sketch seeds `s` on a fixed batch, averaged over batches.
    pub sketch_variance: f64,
    /// `sketch_variance / minibatch_variance`.
    pub ratio: f64,
}

fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum()
}

fn fc_grad(
    model: &Gpt,
    block: usize,
    data: &Dataset,
    config: &TrainConfig,
    step: u64,
    device: &Device,
) -> Vec<f32> {
    let batch = data.train_batch(config.seed, step, config.batch, config.seq, device);
    let grads = model.loss(batch.inputs, batch.targets).backward();
    let weight = model
        .mlp_fc(block)
        .weight()
        .expect("the variance models have dense weights");
    weight
        .grad(&grads)
        .expect("the weight is trained")
        .into_data()
        .iter::<f32>()
        .collect()
}

/// Measures the weight-gradient variance of block `block`'s MLP input layer under the
/// sketch `linear`, over `batches` training batches and `seeds` sketches per batch (the first
/// `min(batches, 4)` batches), with the weights at initialisation.
///
/// # Errors
///
/// [`Error::Config`] when `linear` is not a sketch covering the MLP, `block` is out of range,
/// or `batches < 2` or `seeds < 2`.
pub fn gradient_variance(
    config: &TrainConfig,
    linear: LinearPolicy,
    block: usize,
    batches: usize,
    seeds: usize,
    data: &Dataset,
    device: &Device,
) -> Result<VarianceReport> {
    config.validate()?;
    if !linear.sketches(true) {
        return Err(Error::config("linear", linear, "a sketch:RATIO policy"));
    }
    let model_config = config.model_config();
    if block >= model_config.n_layers {
        return Err(Error::config(
            "block",
            block,
            format!("0..{}", model_config.n_layers),
        ));
    }
    for (name, n) in [("batches", batches), ("seeds", seeds)] {
        if n < 2 {
            return Err(Error::config(name, n, "at least 2"));
        }
    }
    let exact = model_config.init_seeded(&MemoryPolicy::default(), device, config.seed)?;
    let grads: Vec<Vec<f32>> = (0..batches as u64)
        .map(|b| fc_grad(&exact, block, data, config, b, device))
        .collect();
    let len = grads[0].len();
    let mean: Vec<f32> = (0..len)
        .map(|i| grads.iter().map(|g| g[i]).sum::<f32>() / batches as f32)
        .collect();
    let minibatch_variance =
        grads.iter().map(|g| sq_dist(g, &mean)).sum::<f64>() / (batches - 1) as f64;

    let mut policy = MemoryPolicy::default();
    policy.block.linear = linear;
    let mut total = 0.0;
    let used = batches.min(4);
    for (b, exact_grad) in grads.iter().enumerate().take(used) {
        for s in 0..seeds as u64 {
            let model = model_config
                .init_seeded(&policy, device, config.seed)?
                .with_sketch_salt(s + 1);
            total += sq_dist(
                &fc_grad(&model, block, data, config, b as u64, device),
                exact_grad,
            );
        }
    }
    let sketch_variance = total / (used * seeds) as f64;
    Ok(VarianceReport {
        layer: format!("blocks[{block}].mlp.fc"),
        linear: linear.to_string(),
        minibatch_variance,
        sketch_variance,
        ratio: sketch_variance / minibatch_variance,
    })
}

//! `memtrain variance`: how much variance the sketched linear backward adds to a layer's
//! weight gradient, against the minibatch gradient's own variance.

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::Args;
use memtrain::data::{Dataset, Tokenizer};
use memtrain::model::Preset;
use memtrain::policy::MemoryPolicy;
use memtrain::train::{TrainConfig, gradient_variance};

use crate::{Common, load_text};

#[derive(Args, Debug)]
pub struct VarianceArgs {
    #[command(flatten)]
    common: Common,
    /// The sketch, as a policy SPEC with a linear key, e.g. "linear=sketch:0.25".
    #[arg(long, default_value = "linear=sketch:0.25")]
    policy: String,
    /// Which block's MLP input layer to measure.
    #[arg(long, default_value_t = 0)]
    block: usize,
    /// Training batches for the minibatch variance.
    #[arg(long, default_value_t = 16)]
    batches: usize,
    /// Sketch seeds per batch.
    #[arg(long, default_value_t = 16)]
    seeds: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: VarianceArgs) -> Result<()> {
    let preset: Preset = args.common.preset.parse()?;
    let policy: MemoryPolicy = args.policy.parse().context("--policy")?;
    if policy.block.linear.ratio().is_none() {
        bail!(
            "invalid --policy: got {:?}, expected a linear=sketch:RATIO policy",
            args.policy
        );
    }
    let mut config = TrainConfig::new(preset);
    config.batch = args.common.batch.unwrap_or(8);
    config.max_seq = args.common.max_seq;
    config.seq = args.common.seq.unwrap_or(config.model_config().max_seq);
    config.seed = args.common.seed;
    config.validate()?;
    let (text, _) = load_text(args.common.data.as_ref())?;
    let data = Dataset::new(&text, Tokenizer::Byte, config.seq).context("--data")?;
    let device = Device::flex().autodiff();
    let report = gradient_variance(
        &config,
        policy.block.linear,
        args.block,
        args.batches,
        args.seeds,
        &data,
        &device,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} under {} ({} preset, batch {}, seq {}, weights at initialisation):",
            report.layer, report.linear, preset, config.batch, config.seq
        );
        println!(
            "  minibatch gradient variance  E|g_b - E g|^2  = {:.4e}",
            report.minibatch_variance
        );
        println!(
            "  variance added by the sketch E|g~ - g|^2     = {:.4e}",
            report.sketch_variance
        );
        println!(
            "  ratio                                         = {:.3}",
            report.ratio
        );
    }
    Ok(())
}

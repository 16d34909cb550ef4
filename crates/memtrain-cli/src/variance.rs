//! `memtrain variance`: how much variance the sketched linear backward adds to a layer's
//! weight gradient, against the minibatch gradient's own variance.

use anyhow::{Context, Result, bail};
use clap::Args;
use memtrain::data::{Dataset, Tokenizer, load_text};
use memtrain::policy::MemoryPolicy;
use memtrain::train::gradient_variance;

use crate::Common;

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
    let mut config = args.common.config(8)?;
    let policy: MemoryPolicy = args.policy.parse().context("--policy")?;
    if policy.block.linear.ratio().is_none() {
        bail!(
            "invalid --policy: got {:?}, expected a linear=sketch:RATIO policy",
            args.policy
        );
    }
    config.lr = 1e-3;
    config.validate()?;
    let (text, _) = load_text(args.common.data.as_deref())?;
    let data = Dataset::new(&text, Tokenizer::Byte, config.seq).context("--data")?;
    let device = args.common.autodiff_device()?;
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
            report.layer, report.linear, config.preset, config.batch, config.seq
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

//! `memtrain compress --from RUN_DIR`: a GPT checkpoint to TT-matrices.

use std::path::Path;

use anyhow::{Context, Result, bail};
use memtrain::compress::compress_checkpoint;
use memtrain::tt::Truncation;

use super::{CompressArgs, warn_if_larger};
use crate::output::{Progress, factor};

pub(super) fn run(args: &CompressArgs, from: &Path) -> Result<()> {
    let bert_flags = [
        (args.method.is_some(), "--method"),
        (args.ratio.is_some(), "--ratio"),
        (args.iterative, "--iterative"),
    ];
    if let Some((_, flag)) = bert_flags.iter().find(|f| f.0) {
        bail!("{flag} applies to --model (a BERT); with --from use --rank and/or --eps");
    }
    let trunc = match (args.rank, args.eps) {
        (None, None) => bail!("missing --rank or --eps: give a rank cap, an accuracy, or both"),
        (Some(0), _) => bail!("invalid --rank: got 0, expected a rank of at least 1"),
        (_, Some(e)) if !(0.0..1.0).contains(&e) => {
            bail!("invalid --eps: got {e}, expected an accuracy in [0, 1)")
        }
        (rank, eps) => Truncation {
            max_rank: rank,
            eps: eps.unwrap_or(0.0),
        },
    };
    if args.out.is_some() && (args.rank.is_none() || args.eps.is_some()) {
        let why = if args.eps.is_some() {
            "--eps"
        } else {
            "no --rank"
        };
        bail!(
            "invalid --out with {why}: a checkpoint needs --rank alone (one rank for every layer)"
        );
    }
    let device = memtrain::device::parse_device(&args.device)?.autodiff();
    let mut progress: Option<Progress> = None;
    let mut done = 0;
    let c = compress_checkpoint(
        from,
        trunc,
        args.all,
        args.out.as_deref(),
        &device,
        |l, total| {
            let p = progress.get_or_insert_with(|| Progress::new("compress: layer", total as u64));
            done += 1;
            p.set(done, &l.name);
            p.suspend(|| {
                warn_if_larger(
                    &l.name,
                    l.params_before,
                    l.params_after,
                    "a lower --rank or a larger --eps makes it smaller",
                )
            });
        },
    )
    .context("--from")?;
    drop(progress);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&c.layers)?);
        return Ok(());
    }
    let scope = if args.all {
        "all linears"
    } else {
        "MLP linears"
    };
    println!(
        "memtrain compress: {} at step {} ({}), {scope}",
        from.display(),
        c.state.step,
        c.state.config.policy
    );
    println!(
        "{:<20} {:>13} {:>11} {:>9} {:>7} {:<18} {:>10}",
        "layer", "shape", "before", "after", "ratio", "ranks", "rel. error"
    );
    for l in &c.layers {
        println!(
            "{:<20} {:>13} {:>11} {:>9} {:>6.2}x {:<18} {:>10.4}",
            l.name,
            format!("{}x{}", l.shape[0], l.shape[1]),
            l.params_before,
            l.params_after,
            factor(l.params_before, l.params_after),
            format!("{:?}", l.ranks),
            l.rel_error
        );
    }
    let (before, after) = c.layers.iter().fold((0, 0), |(a, b), l| {
        (a + l.params_before, b + l.params_after)
    });
    println!(
        "compressed weights: {before} -> {after} parameters (ratio {:.2}x); model {} -> {}",
        factor(before, after),
        c.model_params_before,
        c.model_params_after
    );
    if let (Some(dir), Some(out)) = (&c.written, &args.out) {
        let (dir, out) = (dir.display(), out.display());
        println!("wrote {dir} (continue with: memtrain train --resume --out {out} --steps N)");
    }
    Ok(())
}

//! `memtrain compress --model DIR`: a pretrained BERT factorized by a parameter ratio.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use memtrain::bert::{
    BertConfig, CompressMethod, CompressParams, CompressedManifest, Iterative, IterativeParams,
    LayerReport, compress_model, distill_lines, save_compressed,
};

use super::{CompressArgs, DEFAULT_DATA, warn_if_larger};
use crate::output::{Progress, factor};

fn print_row(r: &LayerReport) {
    println!(
        "{:<40} {:>9} {:>5} {:>8} {:>8} {:>6.2}x {:>9.4} {:>9} {:>8.2}",
        r.name,
        format!("{}x{}", r.shape[0], r.shape[1]),
        r.rank,
        r.params_before,
        r.params_after,
        factor(r.params_before, r.params_after),
        r.rel_error,
        r.ptq_rel_error
            .map_or("-".to_string(), |e| format!("{e:.4}")),
        r.seconds
    );
}

pub(super) fn run(args: &CompressArgs, dir: &Path) -> Result<()> {
    let gpt_flags = [
        (args.rank.is_some(), "--rank"),
        (args.eps.is_some(), "--eps"),
        (args.all, "--all"),
    ];
    if let Some((_, flag)) = gpt_flags.iter().find(|f| f.0) {
        bail!("{flag} applies to --from (a GPT checkpoint); with --model use --method and --ratio");
    }
    let method: CompressMethod = match &args.method {
        Some(m) => m.parse().context("--method")?,
        None => bail!(
            "missing --method: expected svd, tucker2, cp, cp-q:BITS, cp-ptq:BITS, ttm, asvd, fwsvd, active or rom"
        ),
    };
    let Some(ratio) = args.ratio else {
        bail!("missing --ratio: expected a parameter reduction ratio >= 1, e.g. 2 or 4");
    };
    let auto_ranks = match args.ranks.as_str() {
        "uniform" => false,
        "auto" => true,
        other => bail!("invalid --ranks: got {other:?}, expected uniform or auto"),
    };
    let params = CompressParams {
        cp_iters: args.cp_iters,
        auto_ranks,
        sequential: args.sequential,
        ..CompressParams::new(method, ratio)
    };
    params.validate()?;
    let it = IterativeParams {
        stages: args.stages,
        batch: args.batch,
        lr: args.lr,
        ..IterativeParams::new(args.steps)
    };
    if args.calib_lines == 0 {
        bail!("invalid --calib-lines: got 0, expected at least 1 line");
    }
    let calib_text = match (&args.calib, method.needs_calibration()) {
        (Some(path), true) => {
            let text = memtrain::data::read_text(path).context("--calib")?;
            if text.lines().all(|l| l.trim().is_empty()) {
                bail!("--calib {}: no non-empty lines", path.display());
            }
            Some(text)
        }
        (Some(_), false) => {
            bail!(
                "invalid --calib: {method} reads no calibration data (asvd, fwsvd, active and rom do)"
            )
        }
        (None, _) => None,
    };
    let needs_data = args.iterative || (method.needs_calibration() && calib_text.is_none());
    let text = if !needs_data {
        None
    } else {
        let why = if args.iterative {
            "--iterative distills"
        } else {
            "a data-aware --method calibrates"
        };
        let data = match &args.data {
            Some(p) => p.clone(),
            None if Path::new(DEFAULT_DATA).is_file() => PathBuf::from(DEFAULT_DATA),
            None => bail!(
                "missing --data: {why} on text lines and the default {DEFAULT_DATA} does not exist"
            ),
        };
        let text = memtrain::data::read_text(&data).context("--data")?;
        if distill_lines(&text).is_empty() {
            bail!(
                "--data {}: no non-empty lines after the {} held out for eval-embed",
                data.display(),
                memtrain::bert::HELD_OUT_LINES
            );
        }
        Some(text)
    };
    let lines: Vec<&str> = text.as_deref().map(distill_lines).unwrap_or_default();
    // Calibration: --calib's non-empty lines, else --data's after the held-out ones.
    let calibration: Vec<&str> = match &calib_text {
        Some(t) => t.lines().map(str::trim).filter(|l| !l.is_empty()).collect(),
        None => lines.clone(),
    }
    .into_iter()
    .take(args.calib_lines)
    .collect();
    let iterative = args.iterative.then_some(Iterative {
        params: it,
        lines: &lines,
    });
    if !args.json {
        let schedule = match iterative {
            Some(_) => it.describe(ratio),
            None if args.sequential => "one-shot, sequential".to_string(),
            None => "one-shot".to_string(),
        };
        println!(
            "memtrain compress: {} with {method} at ratio {ratio} ({schedule})",
            dir.display()
        );
        println!(
            "{:<40} {:>9} {:>5} {:>8} {:>8} {:>7} {:>9} {:>9} {:>8}",
            "layer", "shape", "rank", "before", "after", "ratio", "rel.err", "ptq err", "seconds"
        );
    }
    let json = args.json;
    // One-shot compression reports each layer as it is done; the iterative one reports its
    // stages through `on_progress` and the layers at the end.
    let mut progress = match (&iterative, BertConfig::from_file(dir.join("config.json"))) {
        (None, Ok(config)) => Some(Progress::new(
            "compress: layer",
            config.linear_count() as u64,
        )),
        _ => None,
    };
    let mut done = 0;
    let (model, summary) = compress_model(
        dir,
        &params,
        iterative,
        &calibration,
        &memtrain::device::parse_device(&args.device)?,
        |r| {
            done += 1;
            let show = || {
                warn_if_larger(
                    &r.name,
                    r.params_before,
                    r.params_after,
                    "a larger --ratio makes it smaller",
                );
                if !json {
                    print_row(r)
                }
            };
            match &mut progress {
                Some(p) => {
                    p.suspend(show);
                    p.set(done, &r.name);
                }
                None => show(),
            }
        },
        |msg| eprintln!("{msg}"),
    )
    .with_context(|| format!("compressing {}", dir.display()))?;
    drop(progress);
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "encoder linears: {} -> {} weight parameters (ratio {:.2}x), mean rel. error {:.4}{}; model {} -> {} parameters; {:.1} s",
            summary.linear_params_before,
            summary.linear_params_after,
            factor(summary.linear_params_before, summary.linear_params_after),
            summary.mean_rel_error,
            summary
                .mean_ptq_rel_error
                .map_or(String::new(), |e| format!(
                    " (CP-ALS then quantize: {e:.4})"
                )),
            summary.model_params_before,
            summary.model_params_after,
            summary.seconds
        );
    }
    if let Some(out) = &args.out {
        let manifest = CompressedManifest::describe(&model, method, ratio, summary.schedule);
        let written = save_compressed(&model, &manifest, dir, out)
            .with_context(|| format!("--out {}", out.display()))?;
        if !args.json {
            println!(
                "wrote {} (evaluate with: memtrain eval-embed --model {} --compressed {} --data FILE)",
                written.display(),
                dir.display(),
                written.display()
            );
        }
    }
    Ok(())
}

//! What `memtrain train --resume` says about the flags it ignores.

use memtrain::policy::MemoryPolicy;
use memtrain::train::TrainConfig;

use super::TrainArgs;

/// One warning line for each flag given with `--resume` whose value the checkpoint overrides.
pub(super) fn warn_ignored(args: &TrainArgs, resumed: &TrainConfig) {
    let c = &args.common;
    let policy = args.policy.parse::<MemoryPolicy>().ok();
    let differs = [
        (
            "--preset",
            c.preset.clone(),
            resumed.preset.to_string(),
            c.preset != resumed.preset.to_string(),
        ),
        (
            "--batch",
            opt(c.batch),
            resumed.batch.to_string(),
            c.batch.is_some_and(|b| b != resumed.batch),
        ),
        (
            "--seq",
            opt(c.seq),
            resumed.seq.to_string(),
            c.seq.is_some_and(|s| s != resumed.seq),
        ),
        (
            "--max-seq",
            opt(c.max_seq),
            opt(resumed.max_seq),
            c.max_seq.is_some() && c.max_seq != resumed.max_seq,
        ),
        (
            "--lr",
            c.lr.to_string(),
            resumed.lr.to_string(),
            c.lr != resumed.lr,
        ),
        (
            "--seed",
            c.seed.to_string(),
            resumed.seed.to_string(),
            c.seed != resumed.seed,
        ),
        (
            "--warmup",
            args.warmup.to_string(),
            resumed.warmup.to_string(),
            args.warmup != resumed.warmup,
        ),
        (
            "--tokenizer",
            args.tokenizer.clone(),
            format!("{:?}", resumed.tokenizer).to_lowercase(),
            args.tokenizer.parse::<memtrain::data::Tokenizer>().ok() != Some(resumed.tokenizer),
        ),
        (
            "--policy",
            args.policy.clone(),
            resumed.policy.to_string(),
            policy.as_ref() != Some(&resumed.policy),
        ),
    ];
    for (flag, got, kept, differ) in differs {
        if differ && crate::given(flag) {
            eprintln!(
                "warning: {flag} {got} ignored: --resume continues with the checkpoint's {kept}"
            );
        }
    }
}

fn opt(v: Option<usize>) -> String {
    v.map_or_else(|| "default".to_string(), |v| v.to_string())
}

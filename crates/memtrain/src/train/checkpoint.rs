//! Checkpoints: written to a temporary directory, then renamed into place.
//!
//! Layout under `--out DIR`:
//!
//! ```text
//! DIR/latest                  name of the newest complete checkpoint (replaced by rename)
//! DIR/step-000200/model.safetensors   model parameters (burn-store, safetensors)
//! DIR/step-000200/optimizer.bpk       optimizer state (burn's burnpack)
//! DIR/step-000200/state.json          step, seed, data source, the full TrainConfig
//! DIR/step-000200/checksums.json      CRC-32 of each of the three files above
//! ```
//!
//! Resuming verifies every checksum before it parses anything, so a truncated, bit-flipped or
//! swapped file is an error naming it, never a model that loads with wrong weights (format 1
//! checkpoints, written before checksums, load unverified).
//!
//! A checkpoint directory is complete before it gets its final name, and `latest` is replaced
//! atomically after that, so a run killed at any instant leaves the previous checkpoint
//! intact and never a half-written one under a final name. No existing directory is ever
//! replaced: a step saved twice gets a new name (`step-000200.1`), so `latest` never names a
//! directory that is being removed. Pruning keeps the newest `keep` checkpoints by step and
//! never the one `latest` names.

use std::fs;
use std::path::{Path, PathBuf};

use burn::store::{ModuleSnapshot, SafetensorsStore};
use serde::{Deserialize, Serialize};

use super::{TrainConfig, Trainer};
use crate::data::DataSource;
use crate::error::{Error, Result};

/// The file in the output directory that names the newest checkpoint.
pub const LATEST: &str = "latest";
const MODEL: &str = "model.safetensors";
const OPTIM: &str = "optimizer.bpk";
const STATE: &str = "state.json";
const CHECKSUMS: &str = "checksums.json";
const METRICS: &str = "metrics.csv";
const FORMAT: u32 = 2;
/// Checkpoints a run keeps by default (`--keep`).
pub const DEFAULT_KEEP: usize = 2;

/// The non-tensor part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Checkpoint format version.
    pub format: u32,
    /// Steps completed. Batches are a pure function of `(seed, step)`, so this is also the
    /// position in the data.
    pub step: u64,
    /// The run's configuration, seed included.
    pub config: TrainConfig,
    /// The training text's origin.
    pub data: DataSource,
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

impl Trainer {
    /// Writes a checkpoint under `out`, points `out/latest` at it and removes all but the
    /// newest `keep` checkpoints (never the one `latest` names); returns its directory.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `keep` 0; [`Error::Io`] or [`Error::Checkpoint`] when a file
    /// cannot be written; the previous checkpoint stays valid.
    pub fn save_checkpoint(&self, out: &Path, data: &DataSource, keep: usize) -> Result<PathBuf> {
        if keep == 0 {
            return Err(Error::config("keep", 0, "at least 1 checkpoint to keep"));
        }
        fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let base = format!("step-{:06}", self.step);
        let name = (0..)
            .map(|i| match i {
                0 => base.clone(),
                i => format!("{base}.{i}"),
            })
            .find(|n| !out.join(n).exists())
            .expect("some suffix is free");
        let tmp = out.join(format!(".{name}.tmp-{}", std::process::id()));
        let dst = out.join(&name);
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;

        let mut store = SafetensorsStore::from_file(tmp.join(MODEL));
        self.model()
            .save_into(&mut store)
            .map_err(|e| Error::checkpoint(tmp.join(MODEL), e))?;
        self.optim
            .save(tmp.join(OPTIM))
            .map_err(|e| Error::checkpoint(tmp.join(OPTIM), format!("{e:?}")))?;
        let state = CheckpointState {
            format: FORMAT,
            step: self.step,
            config: self.config.clone(),
            data: data.clone(),
        };
        let json = serde_json::to_vec_pretty(&state).expect("the state always serializes");
        write_file(&tmp.join(STATE), &json)?;
        let mut sums = std::collections::BTreeMap::new();
        for file in [STATE, MODEL, OPTIM] {
            let path = tmp.join(file);
            let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
            sums.insert(file, crc32fast::hash(&bytes));
        }
        let sums = serde_json::to_vec_pretty(&sums).expect("checksums always serialize");
        write_file(&tmp.join(CHECKSUMS), &sums)?;

        fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
        let latest_tmp = out.join(format!(".{LATEST}.tmp-{}", std::process::id()));
        write_file(&latest_tmp, name.as_bytes())?;
        fs::rename(&latest_tmp, out.join(LATEST)).map_err(|e| Error::io(out.join(LATEST), e))?;
        prune(out, keep, &name);
        Ok(dst)
    }

    /// Loads the checkpoint `out/latest` names, onto `device`.
    ///
    /// burn 0.22 loads the AdamW state onto `Device::default()` and moves it to `device` at
    /// the next step; in a build with a GPU feature that default is the GPU, so a CPU program
    /// built so sets `BURN_DEVICE=flex` (the `memtrain` binary does) to keep the state on the
    /// host.
    ///
    /// # Errors
    ///
    /// [`Error::Checkpoint`] naming the file when the directory, `latest`, the state, the
    /// model or the optimizer state is missing or corrupt.
    pub fn resume(out: &Path, device: &burn::tensor::Device) -> Result<(Self, CheckpointState)> {
        let latest = out.join(LATEST);
        let name = fs::read_to_string(&latest).map_err(|e| {
            Error::checkpoint(
                &latest,
                format!("cannot read ({e}); is this a memtrain run directory?"),
            )
        })?;
        let name = name.trim();
        if checkpoint_order(name).is_none() {
            return Err(Error::checkpoint(
                &latest,
                format!("names {name:?}, not a checkpoint directory (step-NNNNNN)"),
            ));
        }
        let dir = out.join(name);
        if !dir.is_dir() {
            return Err(Error::checkpoint(
                &latest,
                format!(
                    "names {name:?}, which is not a directory in {}",
                    out.display()
                ),
            ));
        }
        let verified = verify_checksums(&dir)?;
        let state_path = dir.join(STATE);
        let raw = fs::read(&state_path).map_err(|e| Error::checkpoint(&state_path, e))?;
        let state: CheckpointState =
            serde_json::from_slice(&raw).map_err(|e| Error::checkpoint(&state_path, e))?;
        if !(1..=FORMAT).contains(&state.format) {
            return Err(Error::checkpoint(
                &state_path,
                format!(
                    "format {} is not a supported format (1..={FORMAT})",
                    state.format
                ),
            ));
        }
        if state.format >= 2 && !verified {
            return Err(Error::checkpoint(
                dir.join(CHECKSUMS),
                "missing (a format 2 checkpoint always has one)",
            ));
        }
        state
            .config
            .validate()
            .map_err(|e| Error::checkpoint(&state_path, e))?;
        let mut trainer = Trainer::new(state.config.clone(), device)
            .map_err(|e| Error::checkpoint(&state_path, e))?;

        let model_path = dir.join(MODEL);
        if !model_path.is_file() {
            return Err(Error::checkpoint(&model_path, "missing"));
        }
        let mut store = SafetensorsStore::from_file(&model_path);
        let mut model = trainer.model.take().expect("a new trainer holds its model");
        let applied = model
            .load_from(&mut store)
            .map_err(|e| Error::checkpoint(&model_path, e))?;
        if !applied.errors.is_empty() || !applied.missing.is_empty() {
            return Err(Error::checkpoint(
                &model_path,
                format!(
                    "does not match the model: {} missing, {} errors (first: {:?})",
                    applied.missing.len(),
                    applied.errors.len(),
                    applied
                        .errors
                        .first()
                        .map(|e| format!("{e:?}"))
                        .or(applied.missing.first().map(|m| m.0.clone())),
                ),
            ));
        }
        trainer.model = Some(model);

        let optim_path = dir.join(OPTIM);
        if !optim_path.is_file() {
            return Err(Error::checkpoint(&optim_path, "missing"));
        }
        trainer.optim = trainer
            .config
            .policy
            .optim
            .init()?
            .load(&optim_path)
            .map_err(|e| Error::checkpoint(&optim_path, format!("{e:?}")))?;
        trainer.step = state.step;
        Ok((trainer, state))
    }
}

/// Checks every file `checksums.json` lists against its CRC-32; `false` when the checkpoint
/// has no `checksums.json` (format 1).
fn verify_checksums(dir: &Path) -> Result<bool> {
    let path = dir.join(CHECKSUMS);
    if !path.exists() {
        return Ok(false);
    }
    let raw = fs::read(&path).map_err(|e| Error::checkpoint(&path, e))?;
    let sums: std::collections::BTreeMap<String, u32> =
        serde_json::from_slice(&raw).map_err(|e| Error::checkpoint(&path, e))?;
    for file in [STATE, MODEL, OPTIM] {
        let Some(&want) = sums.get(file) else {
            return Err(Error::checkpoint(
                &path,
                format!("lists no checksum of {file}"),
            ));
        };
        let target = dir.join(file);
        let bytes = fs::read(&target).map_err(|e| Error::checkpoint(&target, e))?;
        let got = crc32fast::hash(&bytes);
        if got != want {
            return Err(Error::checkpoint(
                &target,
                format!(
                    "checksum {got:08x} is not the {want:08x} that {CHECKSUMS} lists (a truncated, changed or swapped file)"
                ),
            ));
        }
    }
    Ok(true)
}

/// The step and save count a checkpoint directory's name encodes (`step-000200` is
/// `(200, 0)`, `step-000200.1` is `(200, 1)`).
fn checkpoint_order(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("step-")?;
    let (step, again) = rest.split_once('.').unwrap_or((rest, "0"));
    Some((step.parse().ok()?, again.parse().ok()?))
}

/// Removes all but the newest `keep` complete checkpoints (by step, then by save) and any
/// stale temporaries; `latest` (the one just written) is always kept.
fn prune(out: &Path, keep: usize, latest: &str) {
    let Ok(entries) = fs::read_dir(out) else {
        return;
    };
    let mut steps: Vec<((u64, u64), PathBuf)> = Vec::new();
    let ours = format!("-{}", std::process::id());
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == latest {
            continue;
        }
        if let Some(order) = checkpoint_order(&name) {
            steps.push((order, entry.path()));
        } else if name.starts_with(".step-") && !name.ends_with(&ours) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    steps.sort();
    let excess = steps.len().saturating_sub(keep - 1);
    for (_, old) in &steps[..excess] {
        let _ = fs::remove_dir_all(old);
    }
}

/// Whether `out` holds a memtrain run: `latest`, `metrics.csv` or a checkpoint directory.
pub fn holds_run(out: &Path) -> bool {
    let Ok(entries) = fs::read_dir(out) else {
        return false;
    };
    entries.flatten().any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name == LATEST || name == METRICS || checkpoint_order(&name).is_some()
    })
}

/// Makes `out` ready for a fresh run: an error when it holds a run ([`holds_run`]) unless
/// `overwrite`, which removes that run's files (`latest`, `metrics.csv`, checkpoint
/// directories and temporaries; nothing else in `out` is touched).
///
/// # Errors
///
/// [`Error::Config`] naming `out` when it holds a run and `overwrite` is false; [`Error::Io`]
/// when a file cannot be removed.
pub fn prepare_fresh_out(out: &Path, overwrite: bool) -> Result<()> {
    if !holds_run(out) {
        return Ok(());
    }
    if !overwrite {
        let latest = fs::read_to_string(out.join(LATEST)).unwrap_or_default();
        return Err(Error::config(
            "out",
            out.display(),
            format!(
                "a directory without a run (it holds one{}): resume it, or overwrite it",
                match latest.trim() {
                    "" => String::new(),
                    l => format!(", latest {l}"),
                }
            ),
        ));
    }
    // `latest` first: a kill part-way leaves no name pointing at a removed checkpoint.
    for entry in fs::read_dir(out).map_err(|e| Error::io(out, e))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == LATEST {
            fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
        }
    }
    for entry in fs::read_dir(out).map_err(|e| Error::io(out, e))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name == METRICS || name.starts_with(&format!(".{LATEST}.tmp-")) {
            fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        } else if checkpoint_order(&name).is_some() || name.starts_with(".step-") {
            fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

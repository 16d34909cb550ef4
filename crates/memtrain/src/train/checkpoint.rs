//! Checkpoints: written to a temporary directory, then renamed into place.
//!
//! Layout under `--out DIR`:
//!
//! ```text
//! DIR/latest                  name of the newest complete checkpoint (replaced by rename)
//! DIR/step-000200/model.safetensors   model parameters (burn-store, safetensors)
//! DIR/step-000200/optimizer.bpk       optimizer state (burn's burnpack)
//! DIR/step-000200/state.json          step, seed, data source, the full TrainConfig
//! ```
//!
//! A checkpoint directory is complete before it gets its final name, and `latest` is replaced
//! atomically after that, so a run killed at any instant leaves the previous checkpoint
//! intact and never a half-written one under a final name.

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
const FORMAT: u32 = 1;
const KEEP: usize = 2;

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
    /// Writes a checkpoint under `out` and points `out/latest` at it; returns its directory.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] or [`Error::Checkpoint`] when a file cannot be written; the previous
    /// checkpoint stays valid.
    pub fn save_checkpoint(&self, out: &Path, data: &DataSource) -> Result<PathBuf> {
        fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let name = format!("step-{:06}", self.step);
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

        if dst.exists() {
            fs::remove_dir_all(&dst).map_err(|e| Error::io(&dst, e))?;
        }
        fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
        let latest_tmp = out.join(format!(".{LATEST}.tmp-{}", std::process::id()));
        write_file(&latest_tmp, name.as_bytes())?;
        fs::rename(&latest_tmp, out.join(LATEST)).map_err(|e| Error::io(out.join(LATEST), e))?;
        prune(out, KEEP);
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
        let dir = out.join(name.trim());
        let state_path = dir.join(STATE);
        let raw = fs::read(&state_path).map_err(|e| Error::checkpoint(&state_path, e))?;
        let state: CheckpointState =
            serde_json::from_slice(&raw).map_err(|e| Error::checkpoint(&state_path, e))?;
        if state.format != FORMAT {
            return Err(Error::checkpoint(
                &state_path,
                format!(
                    "format {} is not the supported format {FORMAT}",
                    state.format
                ),
            ));
        }
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

/// Removes all but the newest `keep` complete checkpoints and any stale temporaries.
fn prune(out: &Path, keep: usize) {
    let Ok(entries) = fs::read_dir(out) else {
        return;
    };
    let mut steps: Vec<PathBuf> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("step-") {
            steps.push(entry.path());
        } else if name.starts_with(".step-") && !name.ends_with(&format!("-{}", std::process::id()))
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    steps.sort();
    let excess = steps.len().saturating_sub(keep);
    for old in &steps[..excess] {
        let _ = fs::remove_dir_all(old);
    }
}

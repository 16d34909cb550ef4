//! The files of a sentence-transformers model directory, and the checks every loader shares.

use std::path::Path;

use crate::error::{Error, Result};

/// File names inside a sentence-transformers model directory.
pub(crate) const CONFIG_FILE: &str = "config.json";
pub(crate) const WEIGHTS_FILE: &str = "model.safetensors";

/// [`Error::Data`] naming `path` when it is not a file: clearer than the I/O error of the
/// read that would follow.
pub(crate) fn require_file(path: &Path) -> Result<()> {
    if path.is_file() {
        Ok(())
    } else {
        Err(Error::Data {
            path: path.to_path_buf(),
            reason: "missing (not a Hugging Face BERT model directory?)".into(),
        })
    }
}

/// What went wrong when a store was applied to a model (missing tensors or load errors, the
/// first one named), or `None` when every tensor loaded.
pub(crate) fn mismatch(applied: &burn::store::ApplyResult) -> Option<String> {
    if applied.errors.is_empty() && applied.missing.is_empty() {
        return None;
    }
    let first = applied
        .errors
        .first()
        .map(|e| e.to_string())
        .or(applied.missing.first().map(|m| m.0.clone()))
        .unwrap_or_default();
    Some(format!(
        "{} missing, {} errors (first: {first})",
        applied.missing.len(),
        applied.errors.len()
    ))
}

//! WordPiece tokenization through Hugging Face `tokenizers`, reading `tokenizer.json`.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use tokenizers::{PaddingParams, PaddingStrategy, PostProcessor, Tokenizer, TruncationParams};

use crate::error::{Error, Result};

const TOKENIZER_FILE: &str = "tokenizer.json";
const SENTENCE_CONFIG_FILE: &str = "sentence_bert_config.json";

/// BERT's own position limit: the truncation length when the model directory says none.
const DEFAULT_MAX_SEQ_LENGTH: usize = 512;

/// A tokenized batch, padded to its longest sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BertInput {
    /// Token ids `[batch][seq]`, `[CLS] ... [SEP]` then the pad id.
    pub ids: Vec<Vec<u32>>,
    /// Attention mask `[batch][seq]`: 1 for a token, 0 for padding.
    pub mask: Vec<Vec<u32>>,
}

impl BertInput {
    /// Sequences in the batch.
    pub fn batch(&self) -> usize {
        self.ids.len()
    }

    /// Padded length of every sequence.
    pub fn seq(&self) -> usize {
        self.ids.first().map_or(0, Vec::len)
    }

    /// The ids of sequence `i` without its padding.
    ///
    /// # Panics
    ///
    /// When `i >= self.batch()`.
    pub fn unpadded_ids(&self, i: usize) -> &[u32] {
        let n = self.mask[i].iter().filter(|&&m| m != 0).count();
        &self.ids[i][..n]
    }

    /// `(ids, mask)` as `[batch, seq]` int tensors on `device`, ready for
    /// [`Bert::forward`](super::Bert::forward).
    pub fn tensors(&self, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
        let shape = [self.batch(), self.seq()];
        let tensor = |rows: &[Vec<u32>]| {
            let flat: Vec<i64> = rows.iter().flatten().map(|&v| i64::from(v)).collect();
            Tensor::<2, Int>::from_data(TensorData::new(flat, shape), device)
        };
        (tensor(&self.ids), tensor(&self.mask))
    }
}

/// The tokenizer of a sentence-transformers BERT model (`tokenizer.json`), truncating to the
/// model's `max_seq_length` (`sentence_bert_config.json`) and padding to the longest text.
#[derive(Debug, Clone)]
pub struct BertTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    max_seq_length: usize,
}

impl BertTokenizer {
    /// Reads `dir/tokenizer.json` and, when present, `max_seq_length` from
    /// `dir/sentence_bert_config.json` (otherwise 512, BERT's position limit).
    ///
    /// The file's own padding and truncation settings are replaced: all-MiniLM-L6-v2's
    /// `tokenizer.json` pads to a fixed 128 and truncates at 128, while sentence-transformers
    /// truncates at `max_seq_length` (256) and pads to the longest text of the batch.
    ///
    /// # Errors
    ///
    /// [`Error::Data`] naming the file when it is missing or cannot be parsed, or when
    /// `max_seq_length` is not a positive integer.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let path = dir.join(TOKENIZER_FILE);
        super::files::require_file(&path)?;
        let mut inner = Tokenizer::from_file(&path).map_err(|e| Error::Data {
            path: path.clone(),
            reason: format!("not a Hugging Face tokenizer: {e}"),
        })?;
        let max_seq_length = read_max_seq_length(&dir.join(SENTENCE_CONFIG_FILE))?;
        let padding = PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..inner.get_padding().cloned().unwrap_or_default()
        };
        inner.with_padding(Some(padding));
        let mut tokenizer = BertTokenizer {
            inner,
            path,
            max_seq_length,
        };
        tokenizer.inner = tokenizer.truncating_at(max_seq_length)?;
        Ok(tokenizer)
    }

    /// The model's truncation length in tokens, special tokens included.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// The file this tokenizer was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tokenizes `texts` as single sentences (`[CLS] text [SEP]`), truncating each to at most
    /// `max_len` tokens and padding all to the longest.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `max_len` leaves no room beside the special tokens;
    /// [`Error::Data`] when the tokenizer fails on a text.
    pub fn encode_batch(&self, texts: &[&str], max_len: usize) -> Result<BertInput> {
        let owned;
        let tokenizer = if max_len == self.max_seq_length {
            &self.inner
        } else {
            owned = self.truncating_at(max_len)?;
            &owned
        };
        let encodings = tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::Data {
                path: self.path.clone(),
                reason: format!("tokenization failed: {e}"),
            })?;
        Ok(BertInput {
            ids: encodings.iter().map(|e| e.get_ids().to_vec()).collect(),
            mask: encodings
                .iter()
                .map(|e| e.get_attention_mask().to_vec())
                .collect(),
        })
    }

    /// A copy of the inner tokenizer truncating at `max_len`.
    fn truncating_at(&self, max_len: usize) -> Result<Tokenizer> {
        let special = self
            .inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        if max_len <= special {
            return Err(Error::config(
                "max_len",
                max_len,
                format!("more than the {special} special tokens"),
            ));
        }
        let mut inner = self.inner.clone();
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..TruncationParams::default()
            }))
            .map_err(|e| Error::config("max_len", max_len, format!("a valid length ({e})")))?;
        Ok(inner)
    }
}

/// `max_seq_length` from a sentence-transformers `sentence_bert_config.json`; the default when
/// the file does not exist.
fn read_max_seq_length(path: &Path) -> Result<usize> {
    if !path.exists() {
        return Ok(DEFAULT_MAX_SEQ_LENGTH);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let data = |reason: String| Error::Data {
        path: path.to_path_buf(),
        reason,
    };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| data(e.to_string()))?;
    match value.get("max_seq_length") {
        None => Ok(DEFAULT_MAX_SEQ_LENGTH),
        Some(v) => v
            .as_u64()
            .filter(|&n| n > 0)
            .map(|n| n as usize)
            .ok_or_else(|| data(format!("max_seq_length {v} is not a positive integer"))),
    }
}

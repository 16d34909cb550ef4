//! Tokenizers, the built-in synthetic corpus, and deterministic batches.
//!
//! A batch is a pure function of `(seed, step)`: the training position in the data is the
//! step counter, so a resumed run draws exactly the batches the uninterrupted run would.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How text becomes token ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tokenizer {
    /// One token per UTF-8 byte: vocabulary 256, nothing to download.
    #[default]
    Byte,
    /// GPT-2's byte-pair encoding (`r50k_base`, vocabulary 50257) through `tiktoken-rs`.
    Gpt2,
}

impl Tokenizer {
    /// Size of the vocabulary.
    pub fn vocab_size(self) -> usize {
        match self {
            Tokenizer::Byte => 256,
            Tokenizer::Gpt2 => 50257,
        }
    }

    /// Token ids of `text`.
    pub fn encode(self, text: &str) -> Vec<u32> {
        match self {
            Tokenizer::Byte => text.bytes().map(u32::from).collect(),
            Tokenizer::Gpt2 => tiktoken_rs::r50k_base_singleton().encode_ordinary(text),
        }
    }

    /// The text of `tokens` (invalid UTF-8 replaced by U+FFFD).
    pub fn decode(self, tokens: &[u32]) -> String {
        match self {
            Tokenizer::Byte => {
                let bytes: Vec<u8> = tokens.iter().map(|&t| t.min(255) as u8).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Tokenizer::Gpt2 => {
                let bytes = tiktoken_rs::r50k_base_singleton()
                    .decode_bytes(tokens)
                    .unwrap_or_default();
                String::from_utf8_lossy(&bytes).into_owned()
            }
        }
    }
}

impl std::str::FromStr for Tokenizer {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "byte" => Ok(Tokenizer::Byte),
            "gpt2" => Ok(Tokenizer::Gpt2),
            other => Err(Error::config("tokenizer", other, "one of byte, gpt2")),
        }
    }
}

/// The built-in training text: `lines` lines of integer arithmetic, deterministic in `seed`.
///
/// Each line is `a+b=c`, `a-b=c` or `a*b=c` with operands below 100 and the exact result,
/// for example `48+17=65`. The text has real structure (the answer is a function of the
/// question) and needs no download, so a fresh machine can train and watch the loss fall:
/// the digits of the operands are noise, the rest is learnable.
pub fn synthetic_corpus(lines: usize, seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut text = String::with_capacity(lines * 10);
    for _ in 0..lines {
        let (a, b): (i64, i64) = (rng.random_range(0..100), rng.random_range(0..100));
        let line = match rng.random_range(0..3) {
            0 => format!("{a}+{b}={}\n", a + b),
            1 => format!("{a}-{b}={}\n", a - b),
            _ => format!("{a}*{b}={}\n", a * b),
        };
        text.push_str(&line);
    }
    text
}

/// Lines in the built-in corpus (about 1 MB of text).
pub const SYNTHETIC_LINES: usize = 100_000;

/// Reads a UTF-8 text file for training.
///
/// # Errors
///
/// [`Error::Data`] when the file is missing, unreadable, empty or not UTF-8.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::Data {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if bytes.is_empty() {
        return Err(Error::Data {
            path: path.to_owned(),
            reason: "the file is empty".into(),
        });
    }
    String::from_utf8(bytes).map_err(|e| Error::Data {
        path: path.to_owned(),
        reason: format!(
            "not valid UTF-8 (first bad byte at offset {})",
            e.utf8_error().valid_up_to()
        ),
    })
}

/// Where the training text came from, so a resumed run can check it reads the same data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataSource {
    /// The built-in synthetic corpus.
    Builtin,
    /// A text file; `fnv1a` is the 64-bit FNV-1a hash of its bytes.
    File {
        /// The path as given.
        path: PathBuf,
        /// Hash of the contents.
        fnv1a: u64,
    },
}

impl DataSource {
    /// The source for a file's text.
    pub fn file(path: &Path, text: &str) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        DataSource::File {
            path: path.to_owned(),
            fnv1a: h,
        }
    }
}

impl DataSource {
    /// The text of this source: the built-in corpus, or the file read again.
    ///
    /// # Errors
    ///
    /// As [`read_text`].
    pub fn load(&self) -> Result<String> {
        match self {
            DataSource::Builtin => Ok(synthetic_corpus(SYNTHETIC_LINES, 0)),
            DataSource::File { path, .. } => read_text(path),
        }
    }
}

/// The training text of `path`, or the built-in corpus ([`synthetic_corpus`] with
/// [`SYNTHETIC_LINES`] lines) for `None`, with its [`DataSource`].
///
/// # Errors
///
/// As [`read_text`].
pub fn load_text(path: Option<&Path>) -> Result<(String, DataSource)> {
    match path {
        Some(path) => {
            let text = read_text(path)?;
            let source = DataSource::file(path, &text);
            Ok((text, source))
        }
        None => Ok((synthetic_corpus(SYNTHETIC_LINES, 0), DataSource::Builtin)),
    }
}

/// A tokenized text split 90/10 into training and validation tokens.
#[derive(Debug, Clone)]
pub struct Dataset {
    train: Vec<u32>,
    valid: Vec<u32>,
}

/// One batch: inputs and next-token targets, both `[batch, seq]`.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Input token ids.
    pub inputs: Tensor<2, Int>,
    /// The token after each input token.
    pub targets: Tensor<2, Int>,
}

impl Dataset {
    /// Tokenizes `text` and splits it: the first 90% of tokens train, the last 10% validate.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when either part is too short for windows of `seq + 1` tokens.
    pub fn new(text: &str, tokenizer: Tokenizer, seq: usize) -> Result<Self> {
        let tokens = tokenizer.encode(text);
        let cut = tokens.len() * 9 / 10;
        let (train, valid) = (tokens[..cut].to_vec(), tokens[cut..].to_vec());
        if valid.len() <= seq + 1 {
            return Err(Error::config(
                "data size",
                format!("{} tokens", tokens.len()),
                format!(
                    "at least {} tokens so that the 10% validation split holds one window of seq + 1 = {}",
                    10 * (seq + 2),
                    seq + 1
                ),
            ));
        }
        Ok(Dataset { train, valid })
    }

    /// Training tokens.
    pub fn train_tokens(&self) -> &[u32] {
        &self.train
    }

    /// Validation tokens.
    pub fn valid_tokens(&self) -> &[u32] {
        &self.valid
    }

    /// The training batch of step `step`: `batch` random windows, a pure function of
    /// `(seed, step)`.
    pub fn train_batch(
        &self,
        seed: u64,
        step: u64,
        batch: usize,
        seq: usize,
        device: &Device,
    ) -> Batch {
        let mut rng = StdRng::seed_from_u64(seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let starts: Vec<usize> = (0..batch)
            .map(|_| rng.random_range(0..self.train.len() - seq))
            .collect();
        make_batch(&self.train, &starts, seq, device)
    }

    /// The `index`-th validation batch: evenly spaced windows, the same in every run.
    pub fn valid_batch(&self, index: usize, batch: usize, seq: usize, device: &Device) -> Batch {
        let span = self.valid.len() - seq - 1;
        let starts: Vec<usize> = (0..batch)
            .map(|i| ((index * batch + i) * 7919 * seq) % (span + 1))
            .collect();
        make_batch(&self.valid, &starts, seq, device)
    }
}

fn make_batch(tokens: &[u32], starts: &[usize], seq: usize, device: &Device) -> Batch {
    let mut inputs = Vec::with_capacity(starts.len() * seq);
    let mut targets = Vec::with_capacity(starts.len() * seq);
    for &s in starts {
        inputs.extend(tokens[s..s + seq].iter().map(|&t| t as i64));
        targets.extend(tokens[s + 1..s + seq + 1].iter().map(|&t| t as i64));
    }
    let shape = [starts.len(), seq];
    Batch {
        inputs: Tensor::from_data(TensorData::new(inputs, shape), device),
        targets: Tensor::from_data(TensorData::new(targets, shape), device),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_generate_correct_arithmetic() {
        let text = synthetic_corpus(200, 3);
        assert_eq!(text, synthetic_corpus(200, 3));
        for line in text.lines() {
            let (q, c) = line.split_once('=').unwrap();
            let c: i64 = c.parse().unwrap();
            let op = q
                .find(['+', '*'])
                .or_else(|| q[1..].find('-').map(|i| i + 1))
                .unwrap();
            let (a, b): (i64, i64) = (q[..op].parse().unwrap(), q[op + 1..].parse().unwrap());
            let expect = match &q[op..op + 1] {
                "+" => a + b,
                "-" => a - b,
                _ => a * b,
            };
            assert_eq!(c, expect, "{line}");
        }
    }

    #[test]
    fn should_round_trip_both_tokenizers() {
        let text = "Héllo, world!\n12+3=15";
        for t in [Tokenizer::Byte, Tokenizer::Gpt2] {
            assert_eq!(t.decode(&t.encode(text)), text);
            assert!(
                t.encode(text)
                    .iter()
                    .all(|&id| (id as usize) < t.vocab_size())
            );
        }
        assert!(Tokenizer::Gpt2.encode(text).len() < Tokenizer::Byte.encode(text).len());
    }

    #[test]
    fn should_draw_the_same_batch_for_the_same_step() {
        let device = Device::flex();
        let ds = Dataset::new(&synthetic_corpus(500, 1), Tokenizer::Byte, 16).unwrap();
        let a = ds.train_batch(7, 5, 4, 16, &device);
        let b = ds.train_batch(7, 5, 4, 16, &device);
        let c = ds.train_batch(7, 6, 4, 16, &device);
        assert_eq!(a.inputs.to_data(), b.inputs.to_data());
        assert_ne!(a.inputs.to_data(), c.inputs.to_data());
        // Targets are inputs shifted by one.
        let x: Vec<i64> = a.inputs.to_data().iter::<i64>().collect();
        let y: Vec<i64> = a.targets.to_data().iter::<i64>().collect();
        assert_eq!(x[1..16], y[..15]);
    }

    #[test]
    fn should_reject_too_little_data() {
        let e = Dataset::new("abc", Tokenizer::Byte, 16)
            .unwrap_err()
            .to_string();
        assert!(e.contains("3 tokens"), "{e}");
    }
}

//! The BERT geometry, read from a Hugging Face `config.json`.

use std::path::Path;

use serde::Deserialize;

use super::files::require_file;
use crate::error::{Error, Result};

/// The feed-forward nonlinearity, as `config.json`'s `hidden_act` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BertActivation {
    /// `"gelu"`: the exact (erf) GELU, BERT's and MiniLM's.
    Gelu,
    /// `"gelu_new"`, `"gelu_pytorch_tanh"`: the tanh approximation of GELU.
    GeluTanh,
    /// `"relu"`.
    Relu,
}

impl BertActivation {
    /// The `hidden_act` spellings this crate runs.
    pub const NAMES: &'static str = "gelu, gelu_new, gelu_pytorch_tanh, relu";

    /// Parses a `hidden_act` value; `None` for one this crate does not run.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(BertActivation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Some(BertActivation::GeluTanh),
            "relu" => Some(BertActivation::Relu),
            _ => None,
        }
    }
}

/// The geometry of a BERT encoder (`BertModel` in Hugging Face transformers).
///
/// Build one in code with [`BertConfig::new`] (tests, tiny models) or read a checkpoint's with
/// [`BertConfig::from_file`]; [`BertConfig::init`] makes a randomly initialised [`Bert`](super::Bert).
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    /// Tokens in the vocabulary (`vocab_size`; 30522 for uncased BERT).
    pub vocab_size: usize,
    /// Width of the hidden states (`hidden_size`).
    pub d_model: usize,
    /// Encoder layers (`num_hidden_layers`).
    pub n_layers: usize,
    /// Attention heads (`num_attention_heads`); must divide `d_model`.
    pub n_heads: usize,
    /// Width of the feed-forward layer (`intermediate_size`).
    pub d_ff: usize,
    /// Feed-forward nonlinearity (`hidden_act`).
    pub activation: BertActivation,
    /// Length of the learned position table (`max_position_embeddings`): the longest input.
    pub max_position: usize,
    /// Rows of the token-type (segment) table (`type_vocab_size`).
    pub type_vocab_size: usize,
    /// LayerNorm epsilon (`layer_norm_eps`).
    pub layer_norm_eps: f64,
}

/// `config.json` as written by transformers; only the fields a `BertModel` forward needs.
#[derive(Deserialize)]
struct RawConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    hidden_act: String,
    max_position_embeddings: usize,
    type_vocab_size: usize,
    layer_norm_eps: f64,
    position_embedding_type: Option<String>,
}

impl BertConfig {
    /// A geometry with BERT's defaults for the rest: erf GELU, 512 positions, 2 token types,
    /// LayerNorm epsilon 1e-12.
    pub fn new(
        vocab_size: usize,
        d_model: usize,
        n_layers: usize,
        n_heads: usize,
        d_ff: usize,
    ) -> Self {
        BertConfig {
            vocab_size,
            d_model,
            n_layers,
            n_heads,
            d_ff,
            activation: BertActivation::Gelu,
            max_position: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
        }
    }

    /// Sets [`BertConfig::max_position`].
    pub fn with_max_position(mut self, max_position: usize) -> Self {
        self.max_position = max_position;
        self
    }

    /// Sets [`BertConfig::activation`].
    pub fn with_activation(mut self, activation: BertActivation) -> Self {
        self.activation = activation;
        self
    }

    /// Reads a Hugging Face `config.json` of `model_type` `"bert"` with absolute positions.
    ///
    /// # Errors
    ///
    /// [`Error::Data`] naming the file when it is missing or not JSON, lacks a field
    /// (`missing field "hidden_size"`), belongs to another model type, names an activation
    /// outside [`BertActivation::NAMES`], or describes an impossible geometry (see
    /// [`BertConfig::validate`]); [`Error::Io`] when an existing file cannot be read.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        require_file(path)?;
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let data = |reason: String| Error::Data {
            path: path.to_path_buf(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| data(format!("not JSON: {e}")))?;
        // Checked before the fields, so a GPT-2 config is named as such rather than as a BERT
        // config missing `hidden_size`.
        if let Some(kind) = value.get("model_type").and_then(|v| v.as_str())
            && kind != "bert"
        {
            return Err(data(format!(
                "model_type {kind:?} is not a BERT model (expected \"bert\")"
            )));
        }
        let raw: RawConfig =
            serde_json::from_value(value).map_err(|e| data(format!("not a BERT config: {e}")))?;
        if let Some(kind) = raw.position_embedding_type.as_deref()
            && kind != "absolute"
        {
            return Err(data(format!(
                "position_embedding_type {kind:?} is not supported (expected \"absolute\")"
            )));
        }
        let activation = BertActivation::from_name(&raw.hidden_act).ok_or_else(|| {
            data(format!(
                "hidden_act {:?} is not supported (expected one of {})",
                raw.hidden_act,
                BertActivation::NAMES
            ))
        })?;
        let config = BertConfig {
            vocab_size: raw.vocab_size,
            d_model: raw.hidden_size,
            n_layers: raw.num_hidden_layers,
            n_heads: raw.num_attention_heads,
            d_ff: raw.intermediate_size,
            activation,
            max_position: raw.max_position_embeddings,
            type_vocab_size: raw.type_vocab_size,
            layer_norm_eps: raw.layer_norm_eps,
        };
        config.validate().map_err(|e| data(e.to_string()))?;
        Ok(config)
    }

    /// Checks that every size is positive and `n_heads` divides `d_model`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first offending field.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("d_ff", self.d_ff),
            ("max_position", self.max_position),
            ("type_vocab_size", self.type_vocab_size),
        ];
        if let Some((name, v)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(Error::config(
                format!("BertConfig::{name}"),
                v,
                "at least 1",
            ));
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return Err(Error::config(
                "BertConfig::n_heads",
                self.n_heads,
                format!("a divisor of d_model {}", self.d_model),
            ));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return Err(Error::config(
                "BertConfig::layer_norm_eps",
                self.layer_norm_eps,
                "a positive finite number",
            ));
        }
        Ok(())
    }
}

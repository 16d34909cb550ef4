//! GPT geometry and its named presets.

use burn::config::Config;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The geometry of the reference GPT; [`GptConfig::init`] builds the model under a
/// [`MemoryPolicy`](crate::policy::MemoryPolicy).
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use memtrain::model::{GptConfig, Preset};
/// use memtrain::policy::MemoryPolicy;
/// let device = Device::flex();
/// let gpt = Preset::Tiny.config(256).init(&MemoryPolicy::default(), &device).unwrap();
/// let tokens = Tensor::<2, Int>::zeros([2, 8], &device);
/// assert_eq!(gpt.forward(tokens).dims(), [2, 8, 256]);
/// let e = GptConfig::new(256, 2, 64, 5, 64).init(&MemoryPolicy::default(), &device);
/// assert!(e.unwrap_err().to_string().contains("n_heads"));
/// ```
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub struct GptConfig {
    /// Tokens in the vocabulary (256 for the byte tokenizer).
    pub vocab_size: usize,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Attention heads; must divide `d_model`.
    pub n_heads: usize,
    /// Longest sequence the learned position embedding covers.
    pub max_seq: usize,
}

/// Named GPT geometries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// 2 layers, d_model 64, 4 heads, seq 64: seconds per hundred steps, for tests and demos.
    Tiny,
    /// 6 layers, d_model 384, 6 heads, seq 256: the geometry of the published comparisons.
    Small,
    /// 12 layers, d_model 768, 12 heads, seq 1024: the GPT-2 124M geometry.
    Gpt2,
}

impl Preset {
    /// All presets, in size order.
    pub const ALL: [Preset; 3] = [Preset::Tiny, Preset::Small, Preset::Gpt2];

    /// The preset's name as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::Small => "small",
            Preset::Gpt2 => "gpt2",
        }
    }

    /// The geometry of this preset for a vocabulary of `vocab_size` tokens.
    pub fn config(self, vocab_size: usize) -> GptConfig {
        let (n_layers, d_model, n_heads, max_seq) = match self {
            Preset::Tiny => (2, 64, 4, 64),
            Preset::Small => (6, 384, 6, 256),
            Preset::Gpt2 => (12, 768, 12, 1024),
        };
        GptConfig {
            vocab_size,
            n_layers,
            d_model,
            n_heads,
            max_seq,
        }
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Preset {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| Error::config("preset", s, "one of tiny, small, gpt2"))
    }
}

impl GptConfig {
    /// Checks the geometry is usable.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when a size is zero or `n_heads` does not divide `d_model`.
    pub fn validate(&self) -> Result<()> {
        for (what, v) in [
            ("vocab_size", self.vocab_size),
            ("n_layers", self.n_layers),
            ("d_model", self.d_model),
            ("n_heads", self.n_heads),
            ("max_seq", self.max_seq),
        ] {
            if v == 0 {
                return Err(Error::config(what, v, "a positive integer"));
            }
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return Err(Error::config(
                "n_heads",
                self.n_heads,
                format!("a divisor of d_model = {}", self.d_model),
            ));
        }
        Ok(())
    }

    /// Width of one attention head.
    pub fn d_head(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// Number of trainable scalars (the LM head is tied to the token embedding).
    ///
    /// `V d + T d + L (12 d^2 + 13 d) + 2 d`: per block two LayerNorms (4 d), the fused QKV
    /// projection (3 d^2 + 3 d), the output projection (d^2 + d) and the MLP (8 d^2 + 5 d).
    pub fn param_count(&self) -> usize {
        let d = self.d_model;
        let per_block = 12 * d * d + 13 * d;
        self.vocab_size * d + self.max_seq * d + self.n_layers * per_block + 2 * d
    }

    /// The four linears of a block as `(d_input, d_output, in the MLP)`, in module order:
    /// the fused QKV projection, attention's output projection, the MLP's two layers.
    pub fn block_linears(&self) -> [(usize, usize, bool); 4] {
        let d = self.d_model;
        [
            (d, 3 * d, false),
            (d, d, false),
            (d, 4 * d, true),
            (4 * d, d, true),
        ]
    }
}

//! The BERT encoder: embeddings, post-LayerNorm layers, mean pooling.

use std::path::Path;

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, LinearConfig};
use burn::store::{ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use burn::tensor::activation::{gelu, gelu_approximate, relu, softmax};
use burn::tensor::{Device, Int, Tensor};

use super::config::{BertActivation, BertConfig};
use super::files::{CONFIG_FILE, WEIGHTS_FILE, mismatch, require_file};
use super::tokenizer::BertTokenizer;
use crate::error::{Error, Result};
use crate::linear::{LinearLayer, Linears};

/// The value added to the attention scores of padding keys: `exp` of it is exactly 0 in f32,
/// and unlike `-inf` it cannot turn a row into NaN.
const MASKED_SCORE: f32 = -1.0e9;

/// The additive attention mask `[batch, 1, 1, seq]` of an attention mask `[batch, seq]`.
pub(crate) fn key_bias(mask: Tensor<2, Int>, b: usize, t: usize) -> Tensor<4> {
    (mask.float().neg() + 1.0).reshape([b, 1, 1, t]) * MASKED_SCORE
}

/// How Hugging Face `BertModel` keys map onto this module's paths, applied in order by
/// burn-store's key remapper. Linear weights are also transposed (`[d_out, d_in]` to burn's
/// `[d_in, d_out]`) and LayerNorm `weight`/`bias` renamed `gamma`/`beta` by
/// [`PyTorchToBurnAdapter`].
const KEY_MAP: [(&str, &str); 7] = [
    (r"^embeddings\.LayerNorm\.", "embeddings.layer_norm."),
    (
        r"^encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.",
        "layers.$1.$2.",
    ),
    (
        r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.",
        "layers.$1.attn_out.",
    ),
    (
        r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.",
        "layers.$1.attn_norm.",
    ),
    (
        r"^encoder\.layer\.(\d+)\.intermediate\.dense\.",
        "layers.$1.ffn_in.",
    ),
    (
        r"^encoder\.layer\.(\d+)\.output\.dense\.",
        "layers.$1.ffn_out.",
    ),
    (
        r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.",
        "layers.$1.ffn_norm.",
    ),
];

/// Word, position and token-type embeddings, summed and normalised.
#[derive(Module, Debug)]
pub struct BertEmbeddings {
    /// `[vocab_size, d_model]`.
    pub word_embeddings: Embedding,
    /// `[max_position, d_model]`.
    pub position_embeddings: Embedding,
    /// `[type_vocab_size, d_model]`; every input is segment 0.
    pub token_type_embeddings: Embedding,
    /// LayerNorm over `d_model`.
    pub layer_norm: LayerNorm,
}

impl BertEmbeddings {
    /// Token ids `[batch, seq]` to hidden states `[batch, seq, d_model]`.
    ///
    /// # Panics
    ///
    /// When `seq` exceeds the position table.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [batch, seq] = ids.dims();
        let [max_position, d_model] = self.position_embeddings.weight.lazy_shape().dims();
        assert!(
            seq <= max_position,
            "BERT input of {seq} tokens exceeds the {max_position} learned positions"
        );
        let device = ids.device();
        let positions = Tensor::<1, Int>::arange(0..seq as i64, &device)
            .reshape([1, seq])
            .expand([batch, seq]);
        let segment = self
            .token_type_embeddings
            .weight
            .val()
            .slice([0..1, 0..d_model])
            .reshape([1, 1, d_model]);
        let x = self.word_embeddings.forward(ids) + self.position_embeddings.forward(positions);
        self.layer_norm.forward(x + segment)
    }
}

/// One post-LayerNorm encoder layer: self-attention, add & norm, feed-forward, add & norm.
///
/// Every linear is a [`LinearLayer`] (dense when loaded), so a compressed layer can replace it
/// through [`Linears::try_map_linears`].
#[derive(Module, Debug)]
pub struct BertLayer {
    /// `attention.self.query`, `[d_model, d_model]`.
    pub query: LinearLayer,
    /// `attention.self.key`, `[d_model, d_model]`.
    pub key: LinearLayer,
    /// `attention.self.value`, `[d_model, d_model]`.
    pub value: LinearLayer,
    /// `attention.output.dense`, `[d_model, d_model]`.
    pub attn_out: LinearLayer,
    /// `attention.output.LayerNorm`.
    pub attn_norm: LayerNorm,
    /// `intermediate.dense`, `[d_model, d_ff]`.
    pub ffn_in: LinearLayer,
    /// `output.dense`, `[d_ff, d_model]`.
    pub ffn_out: LinearLayer,
    /// `output.LayerNorm`.
    pub ffn_norm: LayerNorm,
    n_heads: usize,
    /// The hidden width `config.json` gives (`ffn_in` may keep fewer neurons after
    /// `compress --method rom`).
    d_ff: usize,
    #[module(skip)]
    activation: BertActivation,
}

impl BertLayer {
    fn new(config: &BertConfig, device: &Device) -> Self {
        let (d, f) = (config.d_model, config.d_ff);
        let linear = |i, o| LinearLayer::Exact(LinearConfig::new(i, o).init(device));
        let norm = || {
            LayerNormConfig::new(d)
                .with_epsilon(config.layer_norm_eps)
                .init(device)
        };
        BertLayer {
            query: linear(d, d),
            key: linear(d, d),
            value: linear(d, d),
            attn_out: linear(d, d),
            attn_norm: norm(),
            ffn_in: linear(d, f),
            ffn_out: linear(f, d),
            ffn_norm: norm(),
            n_heads: config.n_heads,
            d_ff: f,
            activation: config.activation,
        }
    }

    /// The MLP's hidden width as configured (`config.json`'s `intermediate_size`), which a
    /// reduced-order model ([`super::CompressMethod::Rom`]) measures its ratio against.
    pub fn configured_d_ff(&self) -> usize {
        self.d_ff
    }

    /// Hidden states `[batch, seq, d_model]` and the additive key mask `[batch, 1, 1, seq]`
    /// (0 for a token, a large negative number for padding) to `[batch, seq, d_model]`.
    pub fn forward(&self, x: Tensor<3>, key_bias: Tensor<4>) -> Tensor<3> {
        self.forward_probed(x, key_bias, &mut |_, x| x)
    }

    /// [`BertLayer::forward`] with `probe` called on the input and the output of every
    /// linear, in order, and its result used in their place: the input of slot `s` (0 query,
    /// 1 key, 2 value, 3 attention output, 4 intermediate, 5 output) as
    /// `probe(Site::input(s), x)`, the linear's result as `probe(Site::output(s), y)`, all
    /// `[batch, seq, width]`. Calibration ([`super::calibrate`]) reads the inputs, and
    /// [`super::calibrate_sensitivity`] adds zero tensors that require gradients to both
    /// to read the loss's gradients there. Returning the tensor unchanged gives
    /// [`BertLayer::forward`].
    pub fn forward_probed(
        &self,
        x: Tensor<3>,
        key_bias: Tensor<4>,
        probe: &mut dyn FnMut(Site, Tensor<3>) -> Tensor<3>,
    ) -> Tensor<3> {
        let mut linear = |slot: usize, layer: &LinearLayer, x: Tensor<3>| {
            let x = probe(Site::input(slot), x);
            probe(Site::output(slot), layer.forward(x))
        };
        let [b, t, d] = x.dims();
        let (h, dh) = (self.n_heads, d / self.n_heads);
        let heads = |y: Tensor<3>| y.reshape([b, t, h, dh]).swap_dims(1, 2);
        let q = heads(linear(0, &self.query, x.clone()));
        let k = heads(linear(1, &self.key, x.clone()));
        let v = heads(linear(2, &self.value, x.clone()));
        let scores = q.matmul(k.swap_dims(2, 3)) / (dh as f64).sqrt() + key_bias;
        let context = softmax(scores, 3)
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([b, t, d]);
        let x = self
            .attn_norm
            .forward(linear(3, &self.attn_out, context) + x);
        let inner = linear(4, &self.ffn_in, x.clone());
        let inner = match self.activation {
            BertActivation::Gelu => gelu(inner),
            BertActivation::GeluTanh => gelu_approximate(inner),
            BertActivation::Relu => relu(inner),
        };
        self.ffn_norm.forward(linear(5, &self.ffn_out, inner) + x)
    }
}

/// Where [`BertLayer::forward_probed`] calls its probe: the input or the output of the
/// linear in `slot` (0 query, 1 key, 2 value, 3 attention output, 4 intermediate, 5 output,
/// the order of [`Linears::linears`] within a layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Site {
    /// The linear's slot in its layer, `0..6`.
    pub slot: usize,
    /// The linear's output (`true`) or input (`false`).
    pub output: bool,
}

impl Site {
    /// The input of the linear in `slot`.
    pub fn input(slot: usize) -> Self {
        Site {
            slot,
            output: false,
        }
    }

    /// The output of the linear in `slot`.
    pub fn output(slot: usize) -> Self {
        Site { slot, output: true }
    }
}

/// A BERT encoder (Hugging Face `BertModel` without the pooler), e.g. all-MiniLM-L6-v2.
///
/// [`Bert::forward`] gives the last hidden states, [`Bert::embed`] the sentence-transformers
/// sentence embedding (mean over the attended tokens, L2-normalised).
#[derive(Module, Debug)]
pub struct Bert {
    /// Token, position and segment embeddings.
    pub embeddings: BertEmbeddings,
    /// The encoder layers, `encoder.layer.{i}` in Hugging Face names.
    pub layers: Vec<BertLayer>,
}

impl Bert {
    pub(crate) fn new(config: &BertConfig, device: &Device) -> Self {
        let (d, eps) = (config.d_model, config.layer_norm_eps);
        Bert {
            embeddings: BertEmbeddings {
                word_embeddings: EmbeddingConfig::new(config.vocab_size, d).init(device),
                position_embeddings: EmbeddingConfig::new(config.max_position, d).init(device),
                token_type_embeddings: EmbeddingConfig::new(config.type_vocab_size, d).init(device),
                layer_norm: LayerNormConfig::new(d).with_epsilon(eps).init(device),
            },
            layers: (0..config.n_layers)
                .map(|_| BertLayer::new(config, device))
                .collect(),
        }
    }

    /// Loads a Hugging Face BERT checkpoint: `dir/config.json` and `dir/model.safetensors`
    /// (a sentence-transformers model directory such as the one `scripts/fetch-minilm.sh`
    /// prints).
    ///
    /// Keys are Hugging Face `BertModel` names (`encoder.layer.0.attention.self.query.weight`,
    /// optionally prefixed `bert.`); linear weights are transposed from PyTorch's
    /// `[d_out, d_in]`. Extra tensors (the pooler, `position_ids`) are ignored.
    ///
    /// # Errors
    ///
    /// [`Error::Data`] naming the path for a missing directory or file, a foreign
    /// `config.json` (see [`BertConfig::from_file`]) or a safetensors file that is not
    /// one, lacks a tensor the config implies, or holds one of another shape.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Bert> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::Data {
                path: dir.to_path_buf(),
                reason: "no such model directory".into(),
            });
        }
        let config = BertConfig::from_file(dir.join(CONFIG_FILE))?;
        let path = dir.join(WEIGHTS_FILE);
        require_file(&path)?;
        let data = |reason: String| Error::Data {
            path: path.clone(),
            reason,
        };
        let mut store = SafetensorsStore::from_file(&path)
            .with_key_remapping(r"^bert\.", "")
            .skip_enum_variants(true)
            .with_from_adapter(PyTorchToBurnAdapter);
        for (from, to) in KEY_MAP {
            store = store.with_key_remapping(from, to);
        }
        let mut model = config.init(device).map_err(|e| data(e.to_string()))?;
        let applied = model.load_from(&mut store).map_err(|e| {
            data(format!(
                "cannot be loaded as the weights of config.json: {e}"
            ))
        })?;
        if let Some(why) = mismatch(&applied) {
            return Err(data(format!("does not match the BERT config: {why}")));
        }
        Ok(model)
    }

    /// Width of the hidden states.
    pub fn d_model(&self) -> usize {
        self.embeddings
            .word_embeddings
            .weight
            .lazy_shape()
            .dims::<2>()[1]
    }

    /// Longest input in tokens (the position table's length).
    pub fn max_position(&self) -> usize {
        self.embeddings
            .position_embeddings
            .weight
            .lazy_shape()
            .dims::<2>()[0]
    }

    /// Token ids `[batch, seq]` and attention mask `[batch, seq]` (1 for a token, 0 for
    /// padding) to the last hidden states `[batch, seq, d_model]`.
    ///
    /// Padding keys are masked out of every attention row, so a token's state does not depend
    /// on how much padding follows it; padded positions get states too (ignore them).
    ///
    /// # Panics
    ///
    /// When the two shapes differ or `seq` exceeds [`Bert::max_position`].
    pub fn forward(&self, ids: Tensor<2, Int>, mask: Tensor<2, Int>) -> Tensor<3> {
        self.forward_probed(ids, mask, &mut |_, _, x| x)
    }

    /// [`Bert::forward`] with `probe(layer, site, x)` called on every linear's input and
    /// output as [`BertLayer::forward_probed`] describes (`layer` counts from 0).
    ///
    /// # Panics
    ///
    /// As [`Bert::forward`].
    pub fn forward_probed(
        &self,
        ids: Tensor<2, Int>,
        mask: Tensor<2, Int>,
        probe: &mut dyn FnMut(usize, Site, Tensor<3>) -> Tensor<3>,
    ) -> Tensor<3> {
        let [b, t] = ids.dims();
        assert_eq!(
            [b, t],
            mask.dims(),
            "BERT ids {:?} and attention mask {:?} differ in shape",
            [b, t],
            mask.dims()
        );
        let key_bias = key_bias(mask, b, t);
        let mut x = self.embeddings.forward(ids);
        for (li, layer) in self.layers.iter().enumerate() {
            x = layer.forward_probed(x, key_bias.clone(), &mut |site, y| probe(li, site, y));
        }
        x
    }

    /// The sentence embedding `[batch, d_model]`: the hidden states averaged over the tokens
    /// the mask keeps, then divided by their L2 norm (sentence-transformers' `Pooling` with
    /// `pooling_mode_mean_tokens` followed by `Normalize`).
    ///
    /// # Panics
    ///
    /// As [`Bert::forward`].
    pub fn embed(&self, ids: Tensor<2, Int>, mask: Tensor<2, Int>) -> Tensor<2> {
        self.embed_probed(ids, mask, &mut |_, _, x| x)
    }

    /// [`Bert::embed`] with `probe(layer, site, x)` called on every linear's input and output
    /// as [`BertLayer::forward_probed`] describes (`layer` counts from 0).
    ///
    /// # Panics
    ///
    /// As [`Bert::forward`].
    pub fn embed_probed(
        &self,
        ids: Tensor<2, Int>,
        mask: Tensor<2, Int>,
        probe: &mut dyn FnMut(usize, Site, Tensor<3>) -> Tensor<3>,
    ) -> Tensor<2> {
        let [b, t] = mask.dims();
        let weights = mask.clone().float().reshape([b, t, 1]);
        let hidden = self.forward_probed(ids, mask, probe);
        let d = hidden.dims()[2];
        let summed = (hidden * weights.clone()).sum_dim(1).reshape([b, d]);
        let counts = weights.sum_dim(1).reshape([b, 1]).clamp_min(1e-9);
        let mean = summed / counts;
        let norm = mean
            .clone()
            .powi_scalar(2)
            .sum_dim(1)
            .sqrt()
            .clamp_min(1e-12);
        mean / norm
    }

    /// Embeds `texts` in batches of `batch_size`, in input order: one unit vector of
    /// `d_model` floats per text, truncated to the tokenizer's
    /// [`BertTokenizer::max_seq_length`].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a zero `batch_size`; the tokenizer's errors.
    pub fn embed_texts(
        &self,
        tokenizer: &BertTokenizer,
        texts: &[&str],
        batch_size: usize,
        device: &Device,
    ) -> Result<Vec<Vec<f32>>> {
        self.embed_texts_with(tokenizer, texts, batch_size, device, |_| {})
    }

    /// As [`Bert::embed_texts`], calling `on_batch(done)` after each batch with the number
    /// of texts embedded so far (for a progress display).
    ///
    /// # Errors
    ///
    /// As [`Bert::embed_texts`].
    pub fn embed_texts_with(
        &self,
        tokenizer: &BertTokenizer,
        texts: &[&str],
        batch_size: usize,
        device: &Device,
        mut on_batch: impl FnMut(usize),
    ) -> Result<Vec<Vec<f32>>> {
        if batch_size == 0 {
            return Err(Error::config("batch size", 0, "at least 1"));
        }
        let max_len = tokenizer.max_seq_length().min(self.max_position());
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(batch_size) {
            let input = tokenizer.encode_batch(chunk, max_len)?;
            let (ids, mask) = input.tensors(device);
            let e = self.embed(ids, mask);
            let d = e.dims()[1];
            let flat: Vec<f32> = e.into_data().iter::<f32>().collect();
            out.extend(flat.chunks(d).map(<[f32]>::to_vec));
            on_batch(out.len());
        }
        Ok(out)
    }
}

impl BertConfig {
    /// A randomly initialised encoder of this geometry (burn's default initialisers).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when [`BertConfig::validate`] fails.
    pub fn init(&self, device: &Device) -> Result<Bert> {
        self.validate()?;
        Ok(Bert::new(self, device))
    }

    /// The encoder linears of this geometry ([`compress_bert`](super::compress_bert)
    /// factorizes each): six a layer.
    pub fn linear_count(&self) -> usize {
        LINEAR_NAMES.len() * self.n_layers
    }
}

/// The names of a layer's six linears under `encoder.layer.I.`, in file order.
const LINEAR_NAMES: [&str; 6] = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
];

impl Linears for Bert {
    /// Every linear layer with its Hugging Face name (`encoder.layer.3.intermediate.dense`),
    /// in file order per layer: the hook where compressed (TT-matrix, factorised) layers
    /// replace the dense ones.
    fn linears(&self) -> Vec<(String, &LinearLayer)> {
        let mut out = Vec::with_capacity(6 * self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            let layers = [
                &l.query,
                &l.key,
                &l.value,
                &l.attn_out,
                &l.ffn_in,
                &l.ffn_out,
            ];
            for (suffix, layer) in LINEAR_NAMES.iter().zip(layers) {
                out.push((format!("encoder.layer.{i}.{suffix}"), layer));
            }
        }
        out
    }

    fn linears_mut(&mut self) -> Vec<(String, &mut LinearLayer)> {
        let mut out = Vec::with_capacity(6 * self.layers.len());
        for (i, l) in self.layers.iter_mut().enumerate() {
            let layers = [
                &mut l.query,
                &mut l.key,
                &mut l.value,
                &mut l.attn_out,
                &mut l.ffn_in,
                &mut l.ffn_out,
            ];
            for (suffix, layer) in LINEAR_NAMES.iter().zip(layers) {
                out.push((format!("encoder.layer.{i}.{suffix}"), layer));
            }
        }
        out
    }
}

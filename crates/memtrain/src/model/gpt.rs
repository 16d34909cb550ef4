//! The reference GPT-2: embeddings, pre-LayerNorm blocks, tied LM head.

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::tensor::{Device, Int, Tensor};

use super::config::GptConfig;
use crate::activation::ActPolicy;
use crate::adapter::{LayerAdapter, LotrFactors};
use crate::attention::AttnPolicy;
use crate::error::{Error, Result};
use crate::linear::{LinearLayer, LinearLayerConfig, Linears};
use crate::norm::Norm;
use crate::policy::{BlockPolicy, MemoryPolicy};

/// GPT-2's initialisation scale for weights.
const INIT_STD: f64 = 0.02;

/// The configuration of a block linear `[d_in, d_out]` under a block policy (`mlp`: one of the
/// MLP's two): what the block builds, and what the accounting asks what it keeps.
pub(super) fn linear_config(
    d_in: usize,
    d_out: usize,
    policy: &BlockPolicy,
    mlp: bool,
) -> LinearLayerConfig {
    LinearLayerConfig::new(d_in, d_out)
        .with_linear(policy.linear)
        .with_weights(policy.weights)
        .with_mlp(mlp)
}

/// Causal multi-head self-attention with a fused QKV projection, as in GPT-2.
#[derive(Module, Debug)]
pub struct SelfAttention {
    pub(super) qkv: LinearLayer,
    pub(super) proj: LinearLayer,
    pub(super) qkv_adapter: Option<LayerAdapter>,
    pub(super) proj_adapter: Option<LayerAdapter>,
    #[module(skip)]
    core: AttnPolicy,
    n_heads: usize,
}

impl SelfAttention {
    fn new(config: &GptConfig, policy: BlockPolicy, salt: u64, device: &Device) -> Result<Self> {
        let d = config.d_model;
        let proj_std = INIT_STD / (2.0 * config.n_layers as f64).sqrt();
        Ok(SelfAttention {
            qkv: linear_config(d, 3 * d, &policy, false)
                .with_std(INIT_STD)
                .with_salt(salt)
                .init(device)?,
            proj: linear_config(d, d, &policy, false)
                .with_std(proj_std)
                .with_salt(salt + 1)
                .init(device)?,
            qkv_adapter: None,
            proj_adapter: None,
            core: policy.attn,
            n_heads: config.n_heads,
        })
    }

    /// `[batch, seq, d_model]` to `[batch, seq, d_model]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_with(x, &Adapt::NONE)
    }

    fn forward_with(&self, x: Tensor<3>, ad: &Adapt) -> Tensor<3> {
        let y = self.hidden(x, ad);
        ad.linear(&self.proj, self.proj_adapter.as_ref(), 1, y)
    }

    /// The heads' outputs `[batch, seq, d_model]`: the input of `proj`.
    fn hidden(&self, x: Tensor<3>, ad: &Adapt) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let (h, dh) = (self.n_heads, d / self.n_heads);
        // [b, t, 3 h, dh]: q, k and v are views of the projection's output, no copies.
        let qkv = ad
            .linear(&self.qkv, self.qkv_adapter.as_ref(), 0, x)
            .reshape([b, t, 3 * h, dh]);
        self.core.forward_qkv(qkv, h).reshape([b, t, d])
    }
}

/// The 4x MLP: `fc` (d to 4d), GELU, `proj` (4d to d).
#[derive(Module, Debug)]
pub struct Mlp {
    pub(super) fc: LinearLayer,
    #[module(skip)]
    act: ActPolicy,
    pub(super) proj: LinearLayer,
    pub(super) fc_adapter: Option<LayerAdapter>,
    pub(super) proj_adapter: Option<LayerAdapter>,
}

impl Mlp {
    fn new(config: &GptConfig, policy: BlockPolicy, salt: u64, device: &Device) -> Result<Self> {
        let d = config.d_model;
        let proj_std = INIT_STD / (2.0 * config.n_layers as f64).sqrt();
        Ok(Mlp {
            fc: linear_config(d, 4 * d, &policy, true)
                .with_std(INIT_STD)
                .with_salt(salt)
                .init(device)?,
            act: policy.act,
            proj: linear_config(4 * d, d, &policy, true)
                .with_std(proj_std)
                .with_salt(salt + 1)
                .init(device)?,
            fc_adapter: None,
            proj_adapter: None,
        })
    }

    /// `[batch, seq, d_model]` to `[batch, seq, d_model]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_with(x, &Adapt::NONE)
    }

    fn forward_with(&self, x: Tensor<3>, ad: &Adapt) -> Tensor<3> {
        let h = self.hidden(x, ad);
        ad.linear(&self.proj, self.proj_adapter.as_ref(), 3, h)
    }

    /// The activation's output `[batch, seq, 4 d_model]`: the input of `proj`.
    fn hidden(&self, x: Tensor<3>, ad: &Adapt) -> Tensor<3> {
        let h = ad.linear(&self.fc, self.fc_adapter.as_ref(), 2, x);
        self.act.forward(h)
    }
}

/// A pre-LayerNorm transformer block: `x + attn(ln1(x))`, then `h + mlp(ln2(h))`.
#[derive(Module, Debug)]
pub struct Block {
    ln1: Norm,
    pub(super) attn: SelfAttention,
    ln2: Norm,
    pub(super) mlp: Mlp,
}

impl Block {
    fn new(config: &GptConfig, policy: BlockPolicy, index: usize, device: &Device) -> Result<Self> {
        let salt = 4 * index as u64;
        Ok(Block {
            ln1: policy.norm.init(config.d_model, device)?,
            attn: SelfAttention::new(config, policy, salt, device)?,
            ln2: policy.norm.init(config.d_model, device)?,
            mlp: Mlp::new(config, policy, salt + 2, device)?,
        })
    }

    /// `[batch, seq, d_model]` to `[batch, seq, d_model]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_with(x, &Adapt::NONE)
    }

    fn forward_with(&self, x: Tensor<3>, ad: &Adapt) -> Tensor<3> {
        self.mlp_half(self.attn_half(x, ad), ad)
    }

    /// The first half: `x + attn(ln1(x))`.
    fn attn_half(&self, x: Tensor<3>, ad: &Adapt) -> Tensor<3> {
        x.clone() + self.attn.forward_with(self.ln1.forward(x), ad)
    }

    /// The second half: `h + mlp(ln2(h))`.
    fn mlp_half(&self, h: Tensor<3>, ad: &Adapt) -> Tensor<3> {
        h.clone() + self.mlp.forward_with(self.ln2.forward(h), ad)
    }

    /// The adapter slots `(qkv, attn.proj, mlp.fc, mlp.proj)` with their base layers.
    pub(super) fn slots_mut(&mut self) -> [(&mut LinearLayer, &mut Option<LayerAdapter>); 4] {
        [
            (&mut self.attn.qkv, &mut self.attn.qkv_adapter),
            (&mut self.attn.proj, &mut self.attn.proj_adapter),
            (&mut self.mlp.fc, &mut self.mlp.fc_adapter),
            (&mut self.mlp.proj, &mut self.mlp.proj_adapter),
        ]
    }
}

/// The reference GPT-2 language model, built from a [`GptConfig`] and a [`MemoryPolicy`].
///
/// Token and learned position embeddings, `n_layers` pre-LayerNorm [`Block`]s, a final
/// LayerNorm and an LM head tied to the token embedding. Weights follow GPT-2's
/// initialisation (N(0, 0.02²), residual projections scaled by 1/sqrt(2 n_layers)).
/// Parameter ids are assigned in a fixed order (1, 2, ...), so that an optimizer state saved
/// with one instance loads into another built from the same config.
///
/// # Memory
///
/// Parameters: [`GptConfig::param_count`] × 4 bytes. What a block keeps for backward under
/// a policy is listed by [`super::block_saved`]. Built by [`GptConfig::init`].
#[derive(Module, Debug)]
pub struct Gpt {
    pub(super) wte: Embedding,
    wpe: Embedding,
    pub(super) blocks: Vec<Block>,
    ln_f: Norm,
    /// LoTR's shared factors per slot (`qkv`, `attn.proj`, `mlp.fc`, `mlp.proj`); empty
    /// without LoTR.
    pub(super) lotr: Vec<Option<LotrFactors>>,
    /// Whether the adapters' updates are folded into the base weights.
    #[module(skip)]
    pub(super) merged: bool,
}

/// A block half run up to its last linear layer ([`Gpt::stage_split`]): the half's output is
/// `x + h · weight + bias`.
#[derive(Debug)]
pub struct StageSplit<'a> {
    /// The last linear's input, tracked when the half's input was.
    pub h: Tensor<3>,
    /// The last linear's weight `[d_in, d_out]`.
    pub weight: &'a Param<Tensor<2>>,
    /// Its bias `[d_out]`, if any.
    pub bias: Option<&'a Param<Tensor<1>>>,
}

/// How a forward applies adapters: the shared LoTR factors, and whether they are merged.
struct Adapt<'a> {
    lotr: &'a [Option<LotrFactors>],
    merged: bool,
}

impl Adapt<'_> {
    const NONE: Adapt<'static> = Adapt {
        lotr: &[],
        merged: false,
    };

    /// `layer(x)` plus the adapter's output in slot `slot`.
    fn linear(
        &self,
        layer: &LinearLayer,
        adapter: Option<&LayerAdapter>,
        slot: usize,
        x: Tensor<3>,
    ) -> Tensor<3> {
        match adapter {
            Some(a) if !self.merged => {
                let group = self.lotr.get(slot).and_then(|g| g.as_ref());
                layer.forward(x.clone()) + a.forward(x, group)
            }
            _ => layer.forward(x),
        }
    }
}

/// The block linears' names in slot order.
pub(super) const SLOTS: [&str; 4] = ["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"];

/// Serialises weight initialisation: burn's generator is global to the device.
static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct SequentialIds(u64);

impl ModuleMapper for SequentialIds {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        self.0 += 1;
        let (_, tensor, mapper) = param.consume();
        Param::from_mapped_value(ParamId::from(self.0), tensor, mapper)
    }
}

impl Gpt {
    /// Builds the model under `policy` on `device`, with the device's generator seeded by
    /// `seed` first when given; seeding and initialisation happen under one lock, so models
    /// built on other threads at the same time cannot draw from the generator in between.
    pub(super) fn build(
        config: &GptConfig,
        policy: &MemoryPolicy,
        device: &Device,
        seed: Option<u64>,
    ) -> Result<Self> {
        let _init = INIT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(seed) = seed {
            device.seed(seed);
        }
        config.validate()?;
        policy.validate()?;
        check_tt_layouts(config, policy)?;
        let embed = |n| {
            EmbeddingConfig::new(n, config.d_model)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: INIT_STD,
                })
                .init(device)
        };
        let (wte, wpe) = (embed(config.vocab_size), embed(config.max_seq));
        // Exactly `n_layers` blocks of capacity: a `Result` collect would grow the vector by
        // doubling and hold unused block-sized slots in the parameters' bytes.
        let mut blocks = Vec::with_capacity(config.n_layers);
        for i in 0..config.n_layers {
            blocks.push(Block::new(config, policy.block(i), i, device)?);
        }
        let gpt = Gpt {
            wte,
            wpe,
            blocks,
            ln_f: policy.block.norm.init(config.d_model, device)?,
            lotr: Vec::new(),
            merged: false,
        };
        let gpt = gpt.map(&mut SequentialIds(0));
        match policy.adapt.config() {
            Some(adapter) => gpt.with_adapters(&adapter),
            None => Ok(gpt),
        }
    }

    /// The transformer blocks.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// The MLP's first linear layer of block `index` (`d_model` to `4 d_model`).
    ///
    /// # Panics
    ///
    /// When `index` is not a block.
    pub fn mlp_fc(&self, index: usize) -> &LinearLayer {
        &self.blocks[index].mlp.fc
    }

    /// The same model with every sketched linear drawing other sketches (`salt` is mixed into
    /// each layer's own).
    pub fn with_sketch_salt(mut self, salt: u64) -> Self {
        self.blocks = std::mem::take(&mut self.blocks)
            .into_iter()
            .enumerate()
            .map(|(i, mut b)| {
                let base = (salt << 16) + 4 * i as u64;
                b.attn.qkv = b.attn.qkv.with_salt(base);
                b.attn.proj = b.attn.proj.with_salt(base + 1);
                b.mlp.fc = b.mlp.fc.with_salt(base + 2);
                b.mlp.proj = b.mlp.proj.with_salt(base + 3);
                b
            })
            .collect();
        self
    }

    /// The same model with parameter ids reassigned in the fixed order [`GptConfig::init`] uses, so
    /// an optimizer state saved for it loads into a model built from the same config.
    pub fn with_sequential_ids(self) -> Self {
        self.map(&mut SequentialIds(0))
    }

    /// Token ids `[batch, seq]` to logits `[batch, seq, vocab]`.
    ///
    /// # Panics
    ///
    /// When `seq` exceeds the position embedding's `max_seq`.
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let mut x = self.embed(tokens);
        for i in 0..self.blocks.len() {
            x = self.block_forward(i, x);
        }
        self.logits(x)
    }

    /// Block `index` with its adapters (and the shared LoTR factors).
    ///
    /// # Panics
    ///
    /// When `index` is not a block.
    pub fn block_forward(&self, index: usize, x: Tensor<3>) -> Tensor<3> {
        self.blocks[index].forward_with(x, &self.adapt())
    }

    /// How this model's forwards apply its adapters.
    fn adapt(&self) -> Adapt<'_> {
        Adapt {
            lotr: &self.lotr,
            merged: self.merged,
        }
    }

    /// The stages rematerialization schedules, [`Gpt::stage_forward`]: two per block.
    pub fn n_stages(&self) -> usize {
        2 * self.blocks.len()
    }

    /// Stage `index` of the blocks: the attention half of block `index / 2` (`x + attn(ln1(x))`)
    /// when `index` is even, its MLP half (`h + mlp(ln2(h))`) when odd. Two stages in a row are
    /// [`Gpt::block_forward`].
    ///
    /// # Panics
    ///
    /// When `index >= n_stages()`.
    pub fn stage_forward(&self, index: usize, x: Tensor<3>) -> Tensor<3> {
        let ad = self.adapt();
        let block = &self.blocks[index / 2];
        if index.is_multiple_of(2) {
            block.attn_half(x, &ad)
        } else {
            block.mlp_half(x, &ad)
        }
    }

    /// Stage `index` (a block half, `index < n_stages()`) run up to its last linear layer
    /// (`attn.proj` or `mlp.proj`), when that layer is dense (`linear=exact` or `gemm`) and no
    /// adapter is applied to it: then `stage_forward(index, x)` is `x + h · weight + bias`.
    /// `None` otherwise, and for the head.
    ///
    /// For a caller that needs the half's gradients but not its output: the remat executor,
    /// just before a recomputed half's backward, skips that product (a quarter of the
    /// attention half's projections, half of the MLP's) and back-propagates it with
    /// [`crate::linear::linear_grads`].
    pub fn stage_split(&self, index: usize, x: Tensor<3>) -> Option<StageSplit<'_>> {
        let block = self.blocks.get(index / 2)?;
        let attn = index.is_multiple_of(2);
        let (layer, adapter) = if attn {
            (&block.attn.proj, block.attn.proj_adapter.as_ref())
        } else {
            (&block.mlp.proj, block.mlp.proj_adapter.as_ref())
        };
        let linear = match layer {
            LinearLayer::Exact(l) | LinearLayer::Gemm(l) if adapter.is_none() || self.merged => l,
            _ => return None,
        };
        let ad = self.adapt();
        let h = if attn {
            block.attn.hidden(block.ln1.forward(x), &ad)
        } else {
            block.mlp.hidden(block.ln2.forward(x), &ad)
        };
        Some(StageSplit {
            h,
            weight: &linear.weight,
            bias: linear.bias.as_ref(),
        })
    }

    /// Token plus position embeddings of `tokens [batch, seq]`: the blocks' input.
    ///
    /// # Panics
    ///
    /// When `seq` exceeds the position embedding's `max_seq`.
    pub fn embed(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let [_, t] = tokens.dims();
        let [max_seq, d] = self.wpe.weight.dims();
        assert!(
            t <= max_seq,
            "sequence length {t} exceeds max_seq {max_seq}"
        );
        let _profile = crate::profile::scope("embedding", || "forward".into(), || 0.0);
        let pos = self.wpe.weight.val().slice([0..t, 0..d]).unsqueeze::<3>();
        self.wte.forward(tokens) + pos
    }

    /// The final LayerNorm and the tied LM head: the last block's output to logits.
    pub fn logits(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let x = self.ln_f.forward(x).reshape([b * t, d]);
        let vocab = self.wte.weight.dims()[0];
        let profile = crate::profile::matmul("LM head x·Eᵀ burn", b * t, d, vocab);
        let logits = x.matmul(self.wte.weight.val().transpose());
        drop(profile);
        let [_, vocab] = logits.dims();
        logits.reshape([b, t, vocab])
    }

    /// Mean next-token cross-entropy of the last block's output `x` against `targets`.
    pub fn head_loss(&self, x: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
        let [b, t] = targets.dims();
        let logits = self.logits(x);
        let vocab = logits.dims()[2];
        let _profile = crate::profile::scope("cross-entropy", || "forward (burn)".into(), || 0.0);
        CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.reshape([b * t, vocab]), targets.reshape([b * t]))
    }

    /// Mean next-token cross-entropy of `tokens [batch, seq]` against `targets [batch, seq]`.
    pub fn loss(&self, tokens: Tensor<2, Int>, targets: Tensor<2, Int>) -> Tensor<1> {
        let mut x = self.embed(tokens);
        for i in 0..self.blocks.len() {
            x = self.block_forward(i, x);
        }
        self.head_loss(x, targets)
    }
}

impl GptConfig {
    /// Builds and initialises the model under `policy` on `device` (the device's random
    /// generator as it is).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the field when the geometry or the policy is invalid.
    pub fn init(&self, policy: &MemoryPolicy, device: &Device) -> Result<Gpt> {
        Gpt::build(self, policy, device, None)
    }

    /// [`GptConfig::init`] with the device's generator seeded by `seed` first, so that the
    /// same seed gives the same weights (seeding and initialisation under one lock).
    ///
    /// # Errors
    ///
    /// As [`GptConfig::init`].
    pub fn init_seeded(&self, policy: &MemoryPolicy, device: &Device, seed: u64) -> Result<Gpt> {
        Gpt::build(self, policy, device, Some(seed))
    }
}

/// Every TT-matrix layer the policy asks for can be built (its widths factorise into three
/// modes): a clear error here rather than a panic while building blocks.
fn check_tt_layouts(config: &GptConfig, policy: &MemoryPolicy) -> Result<()> {
    for i in 0..config.n_layers {
        let w = policy.block(i).weights;
        for (d_in, d_out, mlp) in config.block_linears() {
            if let Some(rank) = w.tt_rank(mlp) {
                crate::linear::TtLinearConfig::new(d_in, d_out, rank)
                    .param_count()
                    .map_err(|e| {
                        Error::config(
                            "weights",
                            format!("{w} for block {i} [{d_in}, {d_out}]"),
                            format!("widths that split into 3 modes ({e})"),
                        )
                    })?;
            }
        }
    }
    Ok(())
}

impl Linears for Gpt {
    /// The block linears, named `block.I.attn.qkv`, `block.I.attn.proj`, `block.I.mlp.fc`,
    /// `block.I.mlp.proj`, in block order.
    fn linears(&self) -> Vec<(String, &LinearLayer)> {
        let mut out = Vec::with_capacity(4 * self.blocks.len());
        for (i, b) in self.blocks.iter().enumerate() {
            let layers = [&b.attn.qkv, &b.attn.proj, &b.mlp.fc, &b.mlp.proj];
            for (slot, layer) in SLOTS.iter().zip(layers) {
                out.push((format!("block.{i}.{slot}"), layer));
            }
        }
        out
    }

    fn linears_mut(&mut self) -> Vec<(String, &mut LinearLayer)> {
        let mut out = Vec::with_capacity(4 * self.blocks.len());
        for (i, b) in self.blocks.iter_mut().enumerate() {
            for (slot, (layer, _)) in SLOTS.iter().zip(b.slots_mut()) {
                out.push((format!("block.{i}.{slot}"), layer));
            }
        }
        out
    }
}

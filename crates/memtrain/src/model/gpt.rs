//! The reference GPT-2: embeddings, pre-LayerNorm blocks, tied LM head.

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::tensor::{Device, Int, Tensor};

use super::config::GptConfig;
use super::layers::{Activation, AttentionCore, LinearLayer, Norm};
use super::policy::{BlockPolicy, MemoryPolicy};
use crate::adapter::{
    AdapterConfig, AdapterKind, LayerAdapter, Lora, LotrCore, LotrFactors, LotrInit,
};
use crate::error::{Error, Result};

/// GPT-2's initialisation scale for weights.
const INIT_STD: f64 = 0.02;

/// Causal multi-head self-attention with a fused QKV projection, as in GPT-2.
#[derive(Module, Debug)]
pub struct SelfAttention {
    qkv: LinearLayer,
    proj: LinearLayer,
    qkv_adapter: Option<LayerAdapter>,
    proj_adapter: Option<LayerAdapter>,
    #[module(skip)]
    core: AttentionCore,
    n_heads: usize,
}

impl SelfAttention {
    fn new(config: &GptConfig, policy: BlockPolicy, salt: u64, device: &Device) -> Self {
        let d = config.d_model;
        let proj_std = INIT_STD / (2.0 * config.n_layers as f64).sqrt();
        SelfAttention {
            qkv: LinearLayer::new(d, 3 * d, INIT_STD, policy, false, salt, device),
            proj: LinearLayer::new(d, d, proj_std, policy, false, salt + 1, device),
            qkv_adapter: None,
            proj_adapter: None,
            core: AttentionCore::new(policy.attn),
            n_heads: config.n_heads,
        }
    }

    /// `[batch, seq, d_model]` to `[batch, seq, d_model]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_with(x, &Adapt::NONE)
    }

    fn forward_with(&self, x: Tensor<3>, ad: &Adapt) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let (h, dh) = (self.n_heads, d / self.n_heads);
        // [b, t, 3 h, dh]: q, k and v are views of the projection's output, no copies.
        let qkv = ad
            .linear(&self.qkv, self.qkv_adapter.as_ref(), 0, x)
            .reshape([b, t, 3 * h, dh]);
        let y = self.core.forward_qkv(qkv, h);
        ad.linear(
            &self.proj,
            self.proj_adapter.as_ref(),
            1,
            y.reshape([b, t, d]),
        )
    }
}

/// The 4x MLP: `fc` (d to 4d), GELU, `proj` (4d to d).
#[derive(Module, Debug)]
pub struct Mlp {
    fc: LinearLayer,
    #[module(skip)]
    act: Activation,
    proj: LinearLayer,
    fc_adapter: Option<LayerAdapter>,
    proj_adapter: Option<LayerAdapter>,
}

impl Mlp {
    fn new(config: &GptConfig, policy: BlockPolicy, salt: u64, device: &Device) -> Self {
        let d = config.d_model;
        let proj_std = INIT_STD / (2.0 * config.n_layers as f64).sqrt();
        Mlp {
            fc: LinearLayer::new(d, 4 * d, INIT_STD, policy, true, salt, device),
            act: Activation::new(policy.act),
            proj: LinearLayer::new(4 * d, d, proj_std, policy, true, salt + 1, device),
            fc_adapter: None,
            proj_adapter: None,
        }
    }

    /// `[batch, seq, d_model]` to `[batch, seq, d_model]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_with(x, &Adapt::NONE)
    }

    fn forward_with(&self, x: Tensor<3>, ad: &Adapt) -> Tensor<3> {
        let h = ad.linear(&self.fc, self.fc_adapter.as_ref(), 2, x);
        let h = self.act.forward(h);
        ad.linear(&self.proj, self.proj_adapter.as_ref(), 3, h)
    }
}

/// A pre-LayerNorm transformer block: `x + attn(ln1(x))`, then `h + mlp(ln2(h))`.
#[derive(Module, Debug)]
pub struct Block {
    ln1: Norm,
    attn: SelfAttention,
    ln2: Norm,
    mlp: Mlp,
}

impl Block {
    fn new(config: &GptConfig, policy: BlockPolicy, index: usize, device: &Device) -> Self {
        let salt = 4 * index as u64;
        Block {
            ln1: Norm::new(config.d_model, policy.norm, device),
            attn: SelfAttention::new(config, policy, salt, device),
            ln2: Norm::new(config.d_model, policy.norm, device),
            mlp: Mlp::new(config, policy, salt + 2, device),
        }
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
    fn slots_mut(&mut self) -> [(&mut LinearLayer, &mut Option<LayerAdapter>); 4] {
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
/// a policy is listed by [`crate::memory::block_saved`].
///
/// ```
/// use memtrain::model::{Gpt, MemoryPolicy, Preset};
/// use burn::tensor::{Device, Int, Tensor};
/// let device = Device::flex();
/// let config = Preset::Tiny.config(256);
/// let gpt = Gpt::new(&config, &MemoryPolicy::default(), &device).unwrap();
/// let tokens = Tensor::<2, Int>::zeros([2, 8], &device);
/// assert_eq!(gpt.forward(tokens).dims(), [2, 8, 256]);
/// ```
#[derive(Module, Debug)]
pub struct Gpt {
    wte: Embedding,
    wpe: Embedding,
    blocks: Vec<Block>,
    ln_f: Norm,
    /// LoTR's shared factors per slot (`qkv`, `attn.proj`, `mlp.fc`, `mlp.proj`); empty
    /// without LoTR.
    lotr: Vec<Option<LotrFactors>>,
    /// Whether the adapters' updates are folded into the base weights.
    #[module(skip)]
    merged: bool,
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
const SLOTS: [&str; 4] = ["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"];

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
    /// Builds and initialises the model on `device`.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Config`] when the geometry or the policy is invalid.
    pub fn new(config: &GptConfig, policy: &MemoryPolicy, device: &Device) -> Result<Self> {
        let _init = INIT.lock().unwrap_or_else(|e| e.into_inner());
        Self::init(config, policy, device)
    }

    /// Like [`Gpt::new`], with the device's random generator seeded by `seed` first, so that
    /// the same seed gives the same weights. Seeding and initialisation happen under one lock,
    /// so models built on other threads at the same time cannot draw from the generator in
    /// between.
    ///
    /// # Errors
    ///
    /// As [`Gpt::new`].
    pub fn new_seeded(
        config: &GptConfig,
        policy: &MemoryPolicy,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        let _init = INIT.lock().unwrap_or_else(|e| e.into_inner());
        device.seed(seed);
        Self::init(config, policy, device)
    }

    fn init(config: &GptConfig, policy: &MemoryPolicy, device: &Device) -> Result<Self> {
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
        let gpt = Gpt {
            wte: embed(config.vocab_size),
            wpe: embed(config.max_seq),
            blocks: (0..config.n_layers)
                .map(|i| Block::new(config, policy.block(i), i, device))
                .collect(),
            ln_f: Norm::new(config.d_model, policy.block.norm, device),
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

    /// The same model with every block linear passed through `f(name, layer, mlp)`, in block
    /// order (`qkv`, `proj`, `fc`, `mlp.proj`); names read `block.I.attn.qkv` and so on.
    ///
    /// # Errors
    ///
    /// The first error `f` returns.
    pub fn try_map_linears(
        mut self,
        mut f: impl FnMut(&str, LinearLayer, bool) -> Result<LinearLayer>,
    ) -> Result<Self> {
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for (i, mut b) in std::mem::take(&mut self.blocks).into_iter().enumerate() {
            b.attn.qkv = f(&format!("block.{i}.attn.qkv"), b.attn.qkv, false)?;
            b.attn.proj = f(&format!("block.{i}.attn.proj"), b.attn.proj, false)?;
            b.mlp.fc = f(&format!("block.{i}.mlp.fc"), b.mlp.fc, true)?;
            b.mlp.proj = f(&format!("block.{i}.mlp.proj"), b.mlp.proj, true)?;
            blocks.push(b);
        }
        self.blocks = blocks;
        Ok(self)
    }

    /// The same model with parameter ids reassigned in the fixed order [`Gpt::new`] uses, so
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
        let ad = Adapt {
            lotr: &self.lotr,
            merged: self.merged,
        };
        self.blocks[index].forward_with(x, &ad)
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
        let ad = Adapt {
            lotr: &self.lotr,
            merged: self.merged,
        };
        let block = &self.blocks[index / 2];
        if index.is_multiple_of(2) {
            block.attn_half(x, &ad)
        } else {
            block.mlp_half(x, &ad)
        }
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
        let pos = self.wpe.weight.val().slice([0..t, 0..d]).unsqueeze::<3>();
        self.wte.forward(tokens) + pos
    }

    /// The final LayerNorm and the tied LM head: the last block's output to logits.
    pub fn logits(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let x = self.ln_f.forward(x).reshape([b * t, d]);
        let logits = x.matmul(self.wte.weight.val().transpose());
        let [_, vocab] = logits.dims();
        logits.reshape([b, t, vocab])
    }

    /// Mean next-token cross-entropy of the last block's output `x` against `targets`.
    pub fn head_loss(&self, x: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
        let [b, t] = targets.dims();
        let logits = self.logits(x);
        let vocab = logits.dims()[2];
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

    /// The names of the block linears adapters can target, in order:
    /// `block.I.attn.qkv`, `block.I.attn.proj`, `block.I.mlp.fc`, `block.I.mlp.proj`.
    pub fn linear_names(&self) -> Vec<String> {
        (0..self.blocks.len())
            .flat_map(|i| SLOTS.iter().map(move |s| format!("block.{i}.{s}")))
            .collect()
    }

    /// The same model with its base frozen (no gradients, no optimizer state) and adapters
    /// attached to the linears `config.targets` names: LoRA pairs, or LoTR cores with one
    /// pair of shared factors per slot. The adapted model computes exactly the base's function
    /// until it is trained (LoRA's `B` and LoTR's cores start at zero).
    ///
    /// # Errors
    ///
    /// [`crate::Error::Config`] when the model has adapters already, the targets match no
    /// linear (or name one that does not exist), or the rank is 0 or above a targeted layer's
    /// `min(d_in, d_out)`.
    pub fn with_adapters(self, config: &AdapterConfig) -> Result<Self> {
        if self.has_adapters() {
            return Err(Error::config(
                "adapters",
                "a model that has adapters already",
                "a model without adapters (merge and drop them first)",
            ));
        }
        let names = self.linear_names();
        let picked: Vec<String> = config
            .targets
            .select(&names)?
            .into_iter()
            .cloned()
            .collect();
        let device = self.wte.weight.device();
        let rank = config.kind.rank();
        let scale = config.kind.scale();
        let mut gpt = self.no_grad();
        let shape = |l: &LinearLayer| l.dims();
        // Check every targeted layer first, so nothing is half-attached on error.
        for (i, block) in gpt.blocks.iter_mut().enumerate() {
            for (slot, (layer, _)) in block.slots_mut().into_iter().enumerate() {
                let name = format!("block.{i}.{}", SLOTS[slot]);
                if picked.contains(&name) {
                    let [d_in, d_out] = shape(layer);
                    config.check(&name, d_in, d_out)?;
                }
            }
        }
        if let AdapterKind::Lotr { init, .. } = config.kind {
            let mut lotr = Vec::with_capacity(SLOTS.len());
            for (slot, slot_name) in SLOTS.iter().enumerate() {
                let mut weights = Vec::new();
                let mut dims = None;
                for (i, block) in gpt.blocks.iter_mut().enumerate() {
                    let (layer, _) = block.slots_mut().into_iter().nth(slot).expect("4 slots");
                    if picked.contains(&format!("block.{i}.{slot_name}")) {
                        dims = Some(layer.dims());
                        if init == LotrInit::Svd {
                            weights.push(layer.dense_weight());
                        }
                    }
                }
                lotr.push(match (dims, init) {
                    (None, _) => None,
                    (Some([d_in, d_out]), LotrInit::Random) => {
                        Some(LotrFactors::random(d_in, d_out, rank, &device))
                    }
                    (Some(_), LotrInit::Svd) => Some(LotrFactors::svd(&weights, rank)?),
                });
            }
            gpt.lotr = lotr;
        }
        for (i, block) in gpt.blocks.iter_mut().enumerate() {
            for (slot, (layer, adapter)) in block.slots_mut().into_iter().enumerate() {
                if !picked.contains(&format!("block.{i}.{}", SLOTS[slot])) {
                    continue;
                }
                let [d_in, d_out] = layer.dims();
                *adapter = Some(match config.kind {
                    AdapterKind::Lora { .. } => {
                        LayerAdapter::Lora(Lora::new(d_in, d_out, rank, scale, &device))
                    }
                    AdapterKind::Lotr { .. } => {
                        LayerAdapter::Lotr(LotrCore::zeros(rank, scale, &device))
                    }
                });
            }
        }
        Ok(gpt.with_sequential_ids())
    }

    /// Whether any linear has an adapter.
    pub fn has_adapters(&self) -> bool {
        self.blocks.iter().any(|b| {
            b.attn.qkv_adapter.is_some()
                || b.attn.proj_adapter.is_some()
                || b.mlp.fc_adapter.is_some()
                || b.mlp.proj_adapter.is_some()
        })
    }

    /// Folds every adapter's `ΔW` into its dense base weight, for inference without the
    /// adapter's extra products; the adapters stay (skipped in forward) for
    /// [`Gpt::unmerge_adapters`].
    ///
    /// # Errors
    ///
    /// [`crate::Error::Config`] when they are merged already, or a base is a TT-matrix.
    pub fn merge_adapters(self) -> Result<Self> {
        if self.merged {
            return Err(Error::config("adapters", "merged", "unmerged adapters"));
        }
        let mut gpt = self.fold(1.0)?;
        gpt.merged = true;
        Ok(gpt)
    }

    /// Subtracts the adapters' `ΔW` from the base weights again.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Config`] when they are not merged.
    pub fn unmerge_adapters(self) -> Result<Self> {
        if !self.merged {
            return Err(Error::config("adapters", "not merged", "merged adapters"));
        }
        let mut gpt = self.fold(-1.0)?;
        gpt.merged = false;
        Ok(gpt)
    }

    fn fold(mut self, sign: f64) -> Result<Self> {
        let lotr = std::mem::take(&mut self.lotr);
        for block in self.blocks.iter_mut() {
            for (slot, (layer, adapter)) in block.slots_mut().into_iter().enumerate() {
                if let Some(a) = adapter.as_ref() {
                    let delta = a
                        .delta(lotr.get(slot).and_then(|g| g.as_ref()))
                        .detach()
                        .mul_scalar(sign);
                    layer.add_to_weight(delta)?;
                }
            }
        }
        self.lotr = lotr;
        Ok(self)
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

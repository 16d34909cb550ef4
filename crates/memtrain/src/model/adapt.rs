//! Adapters on the GPT's block linears: attaching LoRA or LoTR to a frozen base, and folding
//! their updates into the base weights and back.

use burn::module::Module;

use super::gpt::{Gpt, SLOTS};
use crate::adapter::{
    AdapterConfig, AdapterKind, LayerAdapter, LoraConfig, LotrCoreConfig, LotrFactorsConfig,
    LotrInit,
};
use crate::error::{Error, Result};
use crate::linear::LinearLayer;

impl Gpt {
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
                        Some(LotrFactorsConfig::new(d_in, d_out, rank).init(&device)?)
                    }
                    (Some([d_in, d_out]), LotrInit::Svd) => {
                        Some(LotrFactorsConfig::new(d_in, d_out, rank).init_from(&weights)?)
                    }
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
                    AdapterKind::Lora { alpha, .. } => LayerAdapter::Lora(
                        LoraConfig::new(d_in, d_out, rank)
                            .with_alpha(Some(alpha))
                            .init(&device)?,
                    ),
                    AdapterKind::Lotr { alpha, .. } => LayerAdapter::Lotr(
                        LotrCoreConfig::new(rank)
                            .with_alpha(Some(alpha))
                            .init(&device)?,
                    ),
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

//! [`MemoryPolicy`]: how each part of the reference GPT is computed and what it keeps, and
//! its SPEC grammar.
//!
//! A policy is written as a SPEC, comma-separated `key=value` pairs, for example
//! `act=exact,attn=exact`. A missing key means the plain variant.
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | [`MemoryPolicy`], [`BlockPolicy`], the SPEC parser and printer, merging a planned policy into a user's |
//! | `keys.rs` | [`PolicyKey`]: each key's values as written, parsed and printed, and the planner's variants |
//! | `size.rs` | [`parse_size`] and [`Budget`]: sizes and fractions |
//!
//! Each key's value type lives with its method: [`ActPolicy`] (`act`) in
//! [`crate::activation`], [`NormPolicy`] (`norm`) in [`crate::norm`], [`LinearPolicy`]
//! (`linear`), [`WeightsPolicy`] (`weights`) and [`PrecisionPolicy`] (`precision`) in
//! [`crate::linear`], [`AttnPolicy`] (`attn`)
//! in [`crate::attention`], [`OptimPolicy`] (`optim`) in [`crate::optim`], [`AdaptPolicy`]
//! (`adapt`) in [`crate::adapter`]; [`RematPolicy`] (`remat`) and [`UpdatePolicy`] (`update`)
//! are here, below the model their executor ([`crate::remat`]) runs on.

mod keys;
mod size;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use keys::PolicyKey;
pub use size::{Budget, format_size, parse_size};

pub use crate::activation::ActPolicy;
pub use crate::adapter::AdaptPolicy;
pub use crate::attention::AttnPolicy;
pub use crate::linear::{LinearPolicy, PrecisionPolicy, WeightsPolicy};
pub use crate::norm::NormPolicy;
pub use crate::optim::OptimPolicy;

use crate::error::{Error, Result};

/// Which blocks are recomputed in backward instead of keeping their insides: the `remat=`
/// key of a policy SPEC, executed by [`crate::remat`] (which re-exports it). It lives here,
/// not with its method like the other keys, because the executor runs on the model that a
/// policy builds: the key must sit below the model, the executor above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RematPolicy {
    /// Keep everything.
    #[default]
    None,
    /// Keep the input of every K-th block; recompute each segment in backward.
    Every(u32),
    /// The Rotor schedule of least time whose predicted activation peak fits this many bytes.
    Budget(u64),
}

/// When the optimizer updates the parameters: the `update=` key of a policy SPEC, executed by
/// [`crate::remat::step_updating`].
///
/// Per-stage updates hold one block half's parameter gradients at a time instead of the
/// model's (LOMO, GaLore's per-layer updates): the step's result is the same as an ordinary
/// step's for the optimizers memtrain offers (AdamW, NAG-GS, GaLore), whose update of a
/// parameter depends only on its own gradient and state. memtrain has no global-norm gradient
/// clipping, which could not be per-stage (the norm needs every gradient before any update).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdatePolicy {
    /// One update after the whole backward: every gradient is held until then.
    #[default]
    Step,
    /// Each block half's parameters are updated as soon as its backward is done and their
    /// gradients freed; the head's and the embeddings' (the tied token embedding) after the
    /// embeddings' backward.
    PerStage,
}

/// The per-block part of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BlockPolicy {
    /// MLP activation.
    pub act: ActPolicy,
    /// LayerNorms.
    pub norm: NormPolicy,
    /// Linear layers.
    pub linear: LinearPolicy,
    /// Attention.
    pub attn: AttnPolicy,
    /// Weight format.
    pub weights: WeightsPolicy,
}

impl BlockPolicy {
    /// The block variants the memory planner profiles: every combination of each key's exact
    /// variants ([`PolicyKey::exact_variants`]: burn's or the gemm linear, exact or inverted
    /// GELU, burn's or the output-saving LayerNorm, plain or fused attention), and with
    /// `approx` each key's approximate variants ([`PolicyKey::approximate_variants`]: 2-bit
    /// GELU, MLP-only sketched linears at ratio 0.25) on top of the leanest exact block.
    /// Weights are not chosen (the default's).
    pub fn candidates(approx: bool) -> Vec<BlockPolicy> {
        let mut out = Vec::new();
        for &linear in &LinearPolicy::exact_variants() {
            for &act in &ActPolicy::exact_variants() {
                for &norm in &NormPolicy::exact_variants() {
                    for &attn in &AttnPolicy::exact_variants() {
                        out.push(BlockPolicy {
                            act,
                            norm,
                            attn,
                            linear,
                            ..BlockPolicy::default()
                        });
                    }
                }
            }
        }
        if approx {
            fn leanest<K: PolicyKey>() -> K {
                *K::exact_variants().last().expect("a key has a variant")
            }
            let lean = BlockPolicy {
                act: leanest(),
                norm: leanest(),
                attn: leanest(),
                linear: leanest(),
                ..BlockPolicy::default()
            };
            for act in ActPolicy::approximate_variants() {
                out.push(BlockPolicy { act, ..lean });
            }
            for norm in NormPolicy::approximate_variants() {
                out.push(BlockPolicy { norm, ..lean });
            }
            for attn in AttnPolicy::approximate_variants() {
                out.push(BlockPolicy { attn, ..lean });
            }
            for linear in LinearPolicy::approximate_variants() {
                out.push(BlockPolicy { linear, ..lean });
            }
        }
        out
    }
}

impl fmt::Display for BlockPolicy {
    /// `act=..,norm=..,linear=..,attn=..,weights=..`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "act={},norm={},linear={},attn={},weights={}",
            self.act, self.norm, self.linear, self.attn, self.weights
        )
    }
}

/// How every part of the reference GPT is computed.
///
/// `MemoryPolicy::default()` is plain burn. Parse one from a SPEC with [`str::parse`]:
///
/// ```
/// use memtrain::policy::MemoryPolicy;
/// let p: MemoryPolicy = "act=exact,optim=adamw".parse().unwrap();
/// assert_eq!(p, MemoryPolicy::default());
/// assert_eq!(p.to_string(), "act=exact,norm=exact,linear=exact,attn=exact,remat=none,weights=dense,optim=adamw");
/// let err = "act=relu".parse::<MemoryPolicy>().unwrap_err().to_string();
/// assert!(err.contains("relu") && err.contains("exact"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryPolicy {
    /// The policy of every block without an override.
    pub block: BlockPolicy,
    /// Per-block overrides, by block index.
    pub overrides: BTreeMap<usize, BlockPolicy>,
    /// Rematerialization across blocks.
    pub remat: RematPolicy,
    /// Optimizer.
    pub optim: OptimPolicy,
    /// Adapters (the base frozen).
    pub adapt: AdaptPolicy,
    /// When the optimizer updates the parameters.
    pub update: UpdatePolicy,
    /// The precision of the gemm linear's products.
    pub precision: PrecisionPolicy,
}

/// The keys a SPEC accepts.
pub const POLICY_KEYS: &str =
    "act, norm, linear, attn, remat, weights, optim, adapt, update, precision";

impl MemoryPolicy {
    /// Checks values a SPEC cannot express wrongly but a deserialized policy (a hand-edited
    /// `state.json`) can: each key's value must parse back from its own canonical SPEC, which
    /// applies every range check of the parser (few-bit widths, sketch ratios in (0, 1],
    /// positive NAG-GS constants and GaLore scales, ranks of at least 1, ...).
    ///
    /// ```
    /// use memtrain::policy::MemoryPolicy;
    /// let mut p: MemoryPolicy = "act=fewbit:2".parse().unwrap();
    /// assert!(p.validate().is_ok());
    /// p.block.act = memtrain::policy::ActPolicy::FewBit(0);
    /// assert!(p.validate().unwrap_err().to_string().contains("fewbit:0"));
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the key's value, as the parser would.
    pub fn validate(&self) -> Result<()> {
        fn round_trip<T: fmt::Display + PartialEq>(
            key: &str,
            value: &T,
            parse: fn(&str) -> Result<T>,
        ) -> Result<()> {
            let text = value.to_string();
            if parse(&text)? != *value {
                return Err(Error::config(
                    format!("policy {key}"),
                    text,
                    "a value that its own SPEC gives back",
                ));
            }
            Ok(())
        }
        for block in std::iter::once(&self.block).chain(self.overrides.values()) {
            round_trip(ActPolicy::KEY, &block.act, ActPolicy::parse)?;
            round_trip(NormPolicy::KEY, &block.norm, NormPolicy::parse)?;
            round_trip(LinearPolicy::KEY, &block.linear, LinearPolicy::parse)?;
            round_trip(AttnPolicy::KEY, &block.attn, AttnPolicy::parse)?;
            round_trip(WeightsPolicy::KEY, &block.weights, WeightsPolicy::parse)?;
        }
        round_trip(RematPolicy::KEY, &self.remat, RematPolicy::parse)?;
        round_trip(UpdatePolicy::KEY, &self.update, UpdatePolicy::parse)?;
        round_trip(OptimPolicy::KEY, &self.optim, OptimPolicy::parse)?;
        round_trip(AdaptPolicy::KEY, &self.adapt, AdaptPolicy::parse)?;
        round_trip(
            PrecisionPolicy::KEY,
            &self.precision,
            PrecisionPolicy::parse,
        )?;
        self.check_precision()
    }

    /// `precision=bf16` needs the gemm linear in every block: it is the op that runs in bf16.
    fn check_precision(&self) -> Result<()> {
        if self.precision == PrecisionPolicy::Fp32 {
            return Ok(());
        }
        let blocks = std::iter::once((None, &self.block))
            .chain(self.overrides.iter().map(|(i, b)| (Some(*i), b)));
        for (index, block) in blocks {
            if block.linear != LinearPolicy::Gemm {
                let at = index.map_or(String::new(), |i| format!(" in block {i}"));
                return Err(Error::config(
                    "policy precision",
                    format!("{} with linear={}{at}", self.precision, block.linear),
                    "linear=gemm (bf16 runs the gemm linear's products), or precision=fp32",
                ));
            }
        }
        Ok(())
    }

    /// The keys that differ from plain burn's, as a SPEC (`act=inverted,attn=memeff`), or
    /// `plain` when none does; per-block overrides are counted, not listed (`... +3 block
    /// overrides`). For tables; the canonical form is [`MemoryPolicy`]'s `Display`.
    ///
    /// ```
    /// use memtrain::policy::MemoryPolicy;
    /// let p: MemoryPolicy = "attn=memeff,act=inverted,remat=budget:64MiB".parse().unwrap();
    /// assert_eq!(p.short(), "act=inverted,attn=memeff,remat=budget:64MiB");
    /// assert_eq!(MemoryPolicy::default().short(), "plain");
    /// ```
    pub fn short(&self) -> String {
        let (b, d) = (&self.block, MemoryPolicy::default());
        let mut parts = Vec::new();
        let mut add = |key: &str, value: String, plain: String| {
            if value != plain {
                parts.push(format!("{key}={value}"));
            }
        };
        add(ActPolicy::KEY, b.act.to_string(), d.block.act.to_string());
        add(
            NormPolicy::KEY,
            b.norm.to_string(),
            d.block.norm.to_string(),
        );
        add(
            LinearPolicy::KEY,
            b.linear.to_string(),
            d.block.linear.to_string(),
        );
        add(
            AttnPolicy::KEY,
            b.attn.to_string(),
            d.block.attn.to_string(),
        );
        add(
            RematPolicy::KEY,
            self.remat.to_string(),
            d.remat.to_string(),
        );
        add(
            WeightsPolicy::KEY,
            b.weights.to_string(),
            d.block.weights.to_string(),
        );
        add(
            OptimPolicy::KEY,
            self.optim.to_string(),
            d.optim.to_string(),
        );
        add(
            AdaptPolicy::KEY,
            self.adapt.to_string(),
            d.adapt.to_string(),
        );
        add(
            UpdatePolicy::KEY,
            self.update.to_string(),
            d.update.to_string(),
        );
        add(
            PrecisionPolicy::KEY,
            self.precision.to_string(),
            d.precision.to_string(),
        );
        let mut text = if parts.is_empty() {
            "plain".to_string()
        } else {
            parts.join(",")
        };
        match self.overrides.len() {
            0 => {}
            1 => text.push_str(" +1 block override"),
            n => text.push_str(&format!(" +{n} block overrides")),
        }
        text
    }

    /// The policy of block `index`.
    pub fn block(&self, index: usize) -> BlockPolicy {
        self.overrides.get(&index).copied().unwrap_or(self.block)
    }

    /// The same policy with every block's weights stored as `weights` (the default block and
    /// every override).
    pub fn with_weights(mut self, weights: WeightsPolicy) -> Self {
        self.block.weights = weights;
        for o in self.overrides.values_mut() {
            o.weights = weights;
        }
        self
    }

    /// The memory planner's `planned` policy (per-block activation, norm, linear and attention
    /// variants, its remat schedule and whether it updates per stage) with what the planner
    /// does not choose taken from this policy: the weights' format, the optimizer and the
    /// adapters (and per-stage updates, when this policy asks for them).
    ///
    /// ```
    /// use memtrain::policy::MemoryPolicy;
    /// let user: MemoryPolicy = "weights=ttm:8,optim=naggs,attn=exact".parse().unwrap();
    /// let planned: MemoryPolicy = "attn=memeff,remat=budget:64MiB".parse().unwrap();
    /// let run = user.with_planned(&planned);
    /// assert_eq!(run.to_string(), "act=exact,norm=exact,linear=exact,attn=memeff,remat=budget:64MiB,weights=ttm:8,optim=naggs:1:1");
    /// ```
    pub fn with_planned(&self, planned: &MemoryPolicy) -> MemoryPolicy {
        MemoryPolicy {
            optim: self.optim,
            adapt: self.adapt,
            precision: self.precision,
            // Per-stage updates asked for stay on; the planner may turn them on.
            update: match self.update {
                UpdatePolicy::PerStage => UpdatePolicy::PerStage,
                UpdatePolicy::Step => planned.update,
            },
            ..planned.clone()
        }
        .with_weights(self.block.weights)
    }
}

impl FromStr for MemoryPolicy {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        let mut policy = MemoryPolicy::default();
        let mut seen: Vec<&str> = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item.split_once('=').ok_or_else(|| {
                Error::config(
                    "policy item",
                    item,
                    format!("key=value with key one of: {POLICY_KEYS}"),
                )
            })?;
            let (key, value) = (key.trim(), value.trim());
            if seen.contains(&key) {
                return Err(Error::config("policy key", key, "each key at most once"));
            }
            match key {
                ActPolicy::KEY => policy.block.act = ActPolicy::parse(value)?,
                NormPolicy::KEY => policy.block.norm = NormPolicy::parse(value)?,
                LinearPolicy::KEY => policy.block.linear = LinearPolicy::parse(value)?,
                AttnPolicy::KEY => policy.block.attn = AttnPolicy::parse(value)?,
                WeightsPolicy::KEY => policy.block.weights = WeightsPolicy::parse(value)?,
                RematPolicy::KEY => policy.remat = RematPolicy::parse(value)?,
                OptimPolicy::KEY => policy.optim = OptimPolicy::parse(value)?,
                AdaptPolicy::KEY => policy.adapt = AdaptPolicy::parse(value)?,
                UpdatePolicy::KEY => policy.update = UpdatePolicy::parse(value)?,
                PrecisionPolicy::KEY => policy.precision = PrecisionPolicy::parse(value)?,
                other => {
                    return Err(Error::config(
                        "policy key",
                        other,
                        format!("one of: {POLICY_KEYS}"),
                    ));
                }
            }
            seen.push(key);
        }
        policy.check_precision()?;
        Ok(policy)
    }
}

impl fmt::Display for MemoryPolicy {
    /// The canonical SPEC of the default block policy and the global keys; per-block
    /// overrides follow as ` [block N: SPEC]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.block;
        write!(
            f,
            "act={},norm={},linear={},attn={},remat={},weights={},optim={}",
            b.act, b.norm, b.linear, b.attn, self.remat, b.weights, self.optim
        )?;
        if self.adapt != AdaptPolicy::None {
            write!(f, ",adapt={}", self.adapt)?;
        }
        if self.update != UpdatePolicy::Step {
            write!(f, ",update={}", self.update)?;
        }
        if self.precision != PrecisionPolicy::Fp32 {
            write!(f, ",precision={}", self.precision)?;
        }
        for (i, o) in &self.overrides {
            write!(
                f,
                " [block {i}: act={},norm={},linear={},attn={},weights={}]",
                o.act, o.norm, o.linear, o.attn, o.weights
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_default_missing_keys_to_plain() {
        let p: MemoryPolicy = "".parse().unwrap();
        assert_eq!(p, MemoryPolicy::default());
        let p: MemoryPolicy = " attn = exact ".parse().unwrap();
        assert_eq!(p, MemoryPolicy::default());
    }

    #[test]
    fn should_name_bad_key_and_choices() {
        let e = "foo=1".parse::<MemoryPolicy>().unwrap_err().to_string();
        assert!(e.contains("foo") && e.contains("act, norm, linear"), "{e}");
        for bad in ["act=fewbit:0", "act=fewbit:9", "act=fewbit:x", "act=fewbit"] {
            let e = bad.parse::<MemoryPolicy>().unwrap_err().to_string();
            assert!(e.contains(&bad[4..]) && e.contains("fewbit:B"), "{e}");
        }
        let p: MemoryPolicy = "linear=sketch:0.25:mlp".parse().unwrap();
        assert_eq!(p.block.linear.ratio(), Some(0.25));
        assert!(p.block.linear.sketches(true) && !p.block.linear.sketches(false));
        assert_eq!(p.to_string().parse::<MemoryPolicy>().unwrap(), p);
        for bad in [
            "linear=sketch:0",
            "linear=sketch:1.5",
            "linear=sketch",
            "linear=sketch:0.5:fft",
        ] {
            let e = bad.parse::<MemoryPolicy>().unwrap_err().to_string();
            assert!(e.contains(&bad[7..]) && e.contains("sketch:RATIO"), "{e}");
        }
        let p: MemoryPolicy = "act=fewbit:3".parse().unwrap();
        assert_eq!(p.block.act, ActPolicy::FewBit(3));
        assert_eq!(p.to_string().parse::<MemoryPolicy>().unwrap(), p);
        let p: MemoryPolicy = "weights=ttm:48:all".parse().unwrap();
        assert_eq!(p.block.weights.tt_rank(false), Some(48));
        assert_eq!(p.to_string().parse::<MemoryPolicy>().unwrap(), p);
        let p: MemoryPolicy = "weights=ttm:8".parse().unwrap();
        assert_eq!(p.block.weights.tt_rank(false), None);
        assert_eq!(p.block.weights.tt_rank(true), Some(8));
        for bad in [
            "weights=ttm:0",
            "weights=ttm",
            "weights=ttm:4:mlp",
            "weights=tt:4",
        ] {
            let e = bad.parse::<MemoryPolicy>().unwrap_err().to_string();
            assert!(e.contains(&bad[8..]) && e.contains("ttm:RANK"), "{e}");
        }
        let p: MemoryPolicy = "remat=budget:64MiB".parse().unwrap();
        assert_eq!(p.remat, RematPolicy::Budget(64 << 20));
        assert_eq!(p.to_string().parse::<MemoryPolicy>().unwrap(), p);
        assert_eq!(
            "remat=every:2".parse::<MemoryPolicy>().unwrap().remat,
            RematPolicy::Every(2)
        );
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        for bad in [
            "remat=every:0",
            "remat=budget:0MiB",
            "remat=budget:12XB",
            "remat=budget:",
            "remat=all",
        ] {
            let e = bad.parse::<MemoryPolicy>().unwrap_err().to_string();
            assert!(e.contains(&bad[6..]) && e.contains("budget:SIZE"), "{e}");
        }
        let p: MemoryPolicy = "optim=galore:64".parse().unwrap();
        assert_eq!(p.optim.to_string(), "galore:64:200:0.25");
        assert_eq!(p.to_string().parse::<MemoryPolicy>().unwrap(), p);
        let p: MemoryPolicy = "optim=galore:8:10:1".parse().unwrap();
        assert_eq!(p.optim.galore().unwrap().update_proj_gap, 10);
        assert_eq!(p.optim.galore().unwrap().scale, 1.0);
        assert_eq!(
            "optim=naggs".parse::<MemoryPolicy>().unwrap().optim,
            OptimPolicy::NAG_GS
        );
        let p: MemoryPolicy = "optim=naggs:0.13:0.36".parse().unwrap();
        assert_eq!(p.optim.nag_gs().unwrap().gamma, 0.36);
        assert_eq!(p.to_string().parse::<MemoryPolicy>().unwrap(), p);
        for bad in ["optim=naggs:0", "optim=naggs:1:-1", "optim=naggs:1:1:1"] {
            let e = bad.parse::<MemoryPolicy>().unwrap_err().to_string();
            assert!(e.contains(&bad[6..]) && e.contains("naggs[:MU"), "{e}");
        }
        for bad in [
            "optim=galore:0",
            "optim=galore:8:0",
            "optim=galore:8:10:0",
            "optim=galore:8:10:-1",
            "optim=galore",
        ] {
            let e = bad.parse::<MemoryPolicy>().unwrap_err().to_string();
            assert!(e.contains(&bad[6..]) && e.contains("galore:RANK"), "{e}");
        }
        let e = "optim=sgd".parse::<MemoryPolicy>().unwrap_err().to_string();
        assert!(e.contains("sgd") && e.contains("adamw"), "{e}");
        let e = "act".parse::<MemoryPolicy>().unwrap_err().to_string();
        assert!(e.contains("key=value"), "{e}");
        let e = "act=exact,act=exact"
            .parse::<MemoryPolicy>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most once"), "{e}");
    }

    #[test]
    fn should_round_trip_through_display_and_serde() {
        let mut p = MemoryPolicy::default();
        p.overrides.insert(1, BlockPolicy::default());
        let back: MemoryPolicy = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        let q: MemoryPolicy = MemoryPolicy::default().to_string().parse().unwrap();
        assert_eq!(q, MemoryPolicy::default());
        let bad: MemoryPolicy =
            serde_json::from_str(r#"{"block": {"act": {"few_bit": 9}}}"#).unwrap();
        assert!(bad.validate().unwrap_err().to_string().contains("9"));
    }
}

//! Adapters for fine-tuning with a frozen base: LoRA and LoTR.
//!
//! - LoRA adds `(α / r) A B` to an adapted weight `W [d_in, d_out]` (`A [d_in, r]` drawn
//!   N(0, (1/r)²), `B [r, d_out]` zero): burn's `Lora` reparameterizer, computed as
//!   `x W + (α/r) (x A) B` so that no `[d_in, d_out]` sum is formed per step (outputs and
//!   parameters match burn's `apply_lora` given the same factors, `tests/adapter.rs`).
//! - LoTR ("LoTR: Low Tensor Rank Weight Adaptation", Bershatsky, Cherniuk, Daulbaev, Mikhalev,
//!   Oseledets, <https://arxiv.org/abs/2402.01376>) writes the updates of all adapted layers of
//!   one shape as one Tucker-2 tensor: `ΔW_l = (α/r) L M_l Rᵀ` with `L [d_in, r]` and
//!   `R [d_out, r]` shared and a per-layer core `M_l [r, r]`, zero at the start, so a layer costs
//!   `r²` parameters whatever its width.
//!
//! Trainable parameters, for `n` adapted layers of one shape `[d_in, d_out]`: LoRA
//! `n (d_in + d_out) r`, LoTR `(d_in + d_out) r + n r²` ([`AdapterConfig::trainable`]).
//!
//! Adapters attach to the reference GPT's block linears by name (`block.I.attn.qkv`,
//! `block.I.attn.proj`, `block.I.mlp.fc`, `block.I.mlp.proj`) with [`Targets`], through
//! [`crate::model::Gpt::with_adapters`] or the policy `adapt=lora:R` / `adapt=lotr:R`.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Tensor};

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Which linears get an adapter, by layer name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// Every block linear (peft's `all-linear`).
    AllLinear,
    /// Exactly these names.
    Names(Vec<String>),
    /// Names matching this regular expression (anchored at both ends).
    Regex(String),
}

impl Targets {
    /// The names of `all` that match.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid regex or a target that matches nothing (naming it and
    /// the available names).
    pub fn select<'a>(&self, all: &'a [String]) -> Result<Vec<&'a String>> {
        let picked: Vec<&String> = match self {
            Targets::AllLinear => all.iter().collect(),
            Targets::Names(names) => {
                for n in names {
                    if !all.contains(n) {
                        return Err(Error::config(
                            "adapter target",
                            n,
                            format!("one of {}", all.join(", ")),
                        ));
                    }
                }
                all.iter().filter(|a| names.contains(a)).collect()
            }
            Targets::Regex(pattern) => {
                let re = regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
                    Error::config(
                        "adapter target regex",
                        pattern,
                        format!("a valid regex ({e})"),
                    )
                })?;
                all.iter().filter(|a| re.is_match(a)).collect()
            }
        };
        if picked.is_empty() {
            return Err(Error::config(
                "adapter targets",
                format!("{self:?} (matches nothing)"),
                format!("names among {}", all.join(", ")),
            ));
        }
        Ok(picked)
    }
}

/// How LoTR's shared factors start (the cores always start at zero, so the adapted model
/// equals the base at step 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LotrInit {
    /// `L`, `R` with N(0, 1/d) entries (columns of about unit norm).
    Random,
    /// `L`, `R` the leading singular vectors of the frozen weights stacked over layers
    /// (Tucker-2 / HOSVD factors of the `[layers, d_in, d_out]` tensor).
    Svd,
}

/// What to attach.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AdapterKind {
    /// LoRA of rank `rank`, scale `alpha / rank`.
    Lora {
        /// Rank.
        rank: usize,
        /// Scale numerator.
        alpha: f64,
    },
    /// LoTR of rank `rank`, scale `alpha / rank`.
    Lotr {
        /// Rank.
        rank: usize,
        /// Scale numerator.
        alpha: f64,
        /// How `L`, `R` start.
        init: LotrInit,
    },
}

impl AdapterKind {
    /// The rank.
    pub fn rank(&self) -> usize {
        match *self {
            AdapterKind::Lora { rank, .. } | AdapterKind::Lotr { rank, .. } => rank,
        }
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        match *self {
            AdapterKind::Lora { rank, alpha } | AdapterKind::Lotr { rank, alpha, .. } => {
                alpha / rank as f64
            }
        }
    }
}

/// An adapter configuration: the kind and the targets.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    /// LoRA or LoTR.
    pub kind: AdapterKind,
    /// Which linears.
    pub targets: Targets,
}

impl AdapterConfig {
    /// LoRA of rank `rank` (`alpha = rank`, scale 1) on every block linear.
    pub fn lora(rank: usize) -> Self {
        Self {
            kind: AdapterKind::Lora {
                rank,
                alpha: rank as f64,
            },
            targets: Targets::AllLinear,
        }
    }

    /// LoTR of rank `rank` (`alpha = rank`, random factors) on every block linear.
    pub fn lotr(rank: usize) -> Self {
        Self {
            kind: AdapterKind::Lotr {
                rank,
                alpha: rank as f64,
                init: LotrInit::Random,
            },
            targets: Targets::AllLinear,
        }
    }

    /// The same with other targets.
    pub fn with_targets(mut self, targets: Targets) -> Self {
        self.targets = targets;
        self
    }

    /// Checks the rank against a layer `[d_in, d_out]`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for rank 0 or above `min(d_in, d_out)`, or a scale that is not
    /// finite and positive.
    pub fn check(&self, name: &str, d_in: usize, d_out: usize) -> Result<()> {
        let r = self.kind.rank();
        if r == 0 || r > d_in.min(d_out) {
            return Err(Error::config(
                "adapter rank",
                format!("{r} for {name} [{d_in}, {d_out}]"),
                format!("1..={}", d_in.min(d_out)),
            ));
        }
        let s = self.kind.scale();
        if !(s.is_finite() && s > 0.0) {
            return Err(Error::config(
                "adapter alpha",
                s,
                "a positive finite number",
            ));
        }
        Ok(())
    }

    /// Trainable parameters for layers of shapes `shapes` grouped by `group` (LoTR shares
    /// factors within a group): LoRA `Σ (d_in + d_out) r`, LoTR
    /// `Σ_groups (d_in + d_out) r + n r²`.
    pub fn trainable(&self, layers: &[(usize, [usize; 2])]) -> usize {
        let r = self.kind.rank();
        match self.kind {
            AdapterKind::Lora { .. } => layers.iter().map(|(_, [a, b])| (a + b) * r).sum(),
            AdapterKind::Lotr { .. } => {
                let mut groups: Vec<(usize, [usize; 2])> = Vec::new();
                for (g, s) in layers {
                    if !groups.iter().any(|(h, _)| h == g) {
                        groups.push((*g, *s));
                    }
                }
                groups.iter().map(|(_, [a, b])| (a + b) * r).sum::<usize>() + layers.len() * r * r
            }
        }
    }
}

/// A LoRA pair: `Δ(x) = scale · (x A) B`.
#[derive(Module, Debug)]
pub struct Lora {
    /// `[d_in, r]`.
    pub a: Param<Tensor<2>>,
    /// `[r, d_out]`.
    pub b: Param<Tensor<2>>,
    #[module(skip)]
    scale: f64,
}

/// Configuration of a [`Lora`] pair for a layer `[d_input, d_output]`: rank and scale
/// `alpha / rank` (`alpha` defaults to the rank: scale 1).
///
/// ```
/// use burn::tensor::Device;
/// use memtrain::adapter::LoraConfig;
/// let lora = LoraConfig::new(12, 20, 4).with_alpha(Some(8.0)).init(&Device::flex()).unwrap();
/// assert_eq!(lora.delta().dims(), [12, 20]); // B starts at zero: ΔW = 0
/// assert!(LoraConfig::new(12, 20, 13).init(&Device::flex()).is_err()); // rank > min side
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct LoraConfig {
    /// Input width of the adapted layer.
    pub d_input: usize,
    /// Output width of the adapted layer.
    pub d_output: usize,
    /// Rank, in `1..=min(d_input, d_output)`.
    pub rank: usize,
    /// Scale numerator (scale `alpha / rank`); `None`: the rank.
    pub alpha: Option<f64>,
}

impl LoraConfig {
    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha.unwrap_or(self.rank as f64) / self.rank as f64
    }

    fn check(&self) -> Result<()> {
        check_rank_and_scale("LoRA", self.rank, self.d_input, self.d_output, self.scale())
    }

    /// Burn's LoRA init: `A` N(0, (1/r)²), `B` zero.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming `rank` (0 or above `min(d_input, d_output)`) or `alpha` (a
    /// scale that is not positive and finite).
    pub fn init(&self, device: &Device) -> Result<Lora> {
        self.check()?;
        let std = 1.0 / self.rank as f64;
        Ok(Lora {
            a: Param::from_tensor(Tensor::random(
                [self.d_input, self.rank],
                Distribution::Normal(0.0, std),
                device,
            )),
            b: Param::from_tensor(Tensor::zeros([self.rank, self.d_output], device)),
            scale: self.scale(),
        })
    }

    /// From given factors `A [d_input, rank]`, `B [rank, d_output]`.
    ///
    /// # Errors
    ///
    /// As [`LoraConfig::init`], and [`Error::Config`] naming `a`/`b` when their shapes
    /// differ from the configuration's.
    pub fn init_from(&self, a: Tensor<2>, b: Tensor<2>) -> Result<Lora> {
        self.check()?;
        let want = ([self.d_input, self.rank], [self.rank, self.d_output]);
        if (a.dims(), b.dims()) != want {
            return Err(Error::config(
                "a/b",
                format!("{:?} and {:?}", a.dims(), b.dims()),
                format!("{:?} and {:?}", want.0, want.1),
            ));
        }
        Ok(Lora {
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
            scale: self.scale(),
        })
    }
}

/// The rank and scale checks every adapter shares.
fn check_rank_and_scale(
    what: &str,
    rank: usize,
    d_in: usize,
    d_out: usize,
    scale: f64,
) -> Result<()> {
    if rank == 0 || rank > d_in.min(d_out) {
        return Err(Error::config(
            "rank",
            format!("{rank} for a {what} adapter of [{d_in}, {d_out}]"),
            format!("1..={}", d_in.min(d_out)),
        ));
    }
    if !(scale.is_finite() && scale > 0.0) {
        return Err(Error::config(
            "alpha",
            format!("scale {scale}"),
            "a positive finite alpha",
        ));
    }
    Ok(())
}

impl Lora {
    /// `scale · A B`, `[d_in, d_out]`.
    pub fn delta(&self) -> Tensor<2> {
        self.a.val().matmul(self.b.val()).mul_scalar(self.scale)
    }

    /// `scale · (x A) B` for `x [.., d_in]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        x.matmul(self.a.val().unsqueeze())
            .matmul(self.b.val().unsqueeze())
            .mul_scalar(self.scale)
    }
}

/// LoTR's shared factors for one group of same-shaped layers.
#[derive(Module, Debug)]
pub struct LotrFactors {
    /// `L [d_in, r]`.
    pub left: Param<Tensor<2>>,
    /// `R [d_out, r]`.
    pub right: Param<Tensor<2>>,
}

/// Configuration of one group's [`LotrFactors`]: layers `[d_input, d_output]`, rank `rank`.
///
/// ```
/// use burn::tensor::Device;
/// use memtrain::adapter::LotrFactorsConfig;
/// let f = LotrFactorsConfig::new(12, 20, 4).init(&Device::flex()).unwrap();
/// assert_eq!((f.left.dims(), f.right.dims()), ([12, 4], [20, 4]));
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct LotrFactorsConfig {
    /// Input width of the group's layers.
    pub d_input: usize,
    /// Output width of the group's layers.
    pub d_output: usize,
    /// Rank, in `1..=min(d_input, d_output)`.
    pub rank: usize,
}

impl LotrFactorsConfig {
    fn check(&self) -> Result<()> {
        check_rank_and_scale("LoTR", self.rank, self.d_input, self.d_output, 1.0)
    }

    /// Random factors, N(0, 1/d) entries.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming `rank` (0 or above `min(d_input, d_output)`).
    pub fn init(&self, device: &Device) -> Result<LotrFactors> {
        self.check()?;
        let n = |d: usize| Distribution::Normal(0.0, 1.0 / (d as f64).sqrt());
        Ok(LotrFactors {
            left: Param::from_tensor(Tensor::random(
                [self.d_input, self.rank],
                n(self.d_input),
                device,
            )),
            right: Param::from_tensor(Tensor::random(
                [self.d_output, self.rank],
                n(self.d_output),
                device,
            )),
        })
    }

    /// The leading `rank` singular vectors of the group's stacked weights: `L` of
    /// `[W_1 .. W_n]` (`[d_in, n d_out]`), `R` of `[W_1ᵀ .. W_nᵀ]` (`[d_out, n d_in]`).
    ///
    /// # Errors
    ///
    /// As [`LotrFactorsConfig::init`], and [`Error::Config`] for no weights, a weight that
    /// is not `[d_input, d_output]`, or an SVD that fails (NaN weights).
    pub fn init_from(&self, weights: &[Tensor<2>]) -> Result<LotrFactors> {
        self.check()?;
        if weights.is_empty() {
            return Err(Error::config("weights", "none", "at least one weight"));
        }
        if let Some(w) = weights
            .iter()
            .find(|w| w.dims() != [self.d_input, self.d_output])
        {
            return Err(Error::config(
                "weights",
                format!("{:?}", w.dims()),
                format!("[{}, {}]", self.d_input, self.d_output),
            ));
        }
        let rank = self.rank;
        let lead = |m: Tensor<2>| -> Result<Tensor<2>> {
            let rows = m.dims()[0];
            let (u, _, _) = memtrain_tt::linalg::svd(m)?;
            Ok(memtrain_tt::linalg::compact(u.slice([0..rows, 0..rank])))
        };
        let left = lead(Tensor::cat(
            weights.iter().map(|w| w.clone().detach()).collect(),
            1,
        ))?;
        let right = lead(Tensor::cat(
            weights
                .iter()
                .map(|w| w.clone().detach().transpose())
                .collect(),
            1,
        ))?;
        Ok(LotrFactors {
            left: Param::from_tensor(left),
            right: Param::from_tensor(right),
        })
    }
}

/// One layer's LoTR core `M [r, r]` (zero at the start).
#[derive(Module, Debug)]
pub struct LotrCore {
    /// `M [r, r]`.
    pub core: Param<Tensor<2>>,
    #[module(skip)]
    scale: f64,
}

/// Configuration of one layer's [`LotrCore`]: rank and scale `alpha / rank` (`alpha`
/// defaults to the rank).
///
/// ```
/// use burn::tensor::Device;
/// use memtrain::adapter::LotrCoreConfig;
/// let core = LotrCoreConfig::new(4).init(&Device::flex()).unwrap();
/// assert_eq!(core.core.dims(), [4, 4]);
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct LotrCoreConfig {
    /// Rank, at least 1.
    pub rank: usize,
    /// Scale numerator (scale `alpha / rank`); `None`: the rank.
    pub alpha: Option<f64>,
}

impl LotrCoreConfig {
    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha.unwrap_or(self.rank as f64) / self.rank as f64
    }

    /// A zero core.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming `rank` (0) or `alpha` (a scale that is not positive and
    /// finite).
    pub fn init(&self, device: &Device) -> Result<LotrCore> {
        check_rank_and_scale("LoTR", self.rank, self.rank, self.rank, self.scale())?;
        Ok(LotrCore {
            core: Param::from_tensor(Tensor::zeros([self.rank, self.rank], device)),
            scale: self.scale(),
        })
    }
}

impl LotrCore {
    /// `scale · L M Rᵀ`, `[d_in, d_out]`.
    pub fn delta(&self, f: &LotrFactors) -> Tensor<2> {
        f.left
            .val()
            .matmul(self.core.val())
            .matmul(f.right.val().transpose())
            .mul_scalar(self.scale)
    }

    /// `scale · ((x L) M) Rᵀ` for `x [.., d_in]`: keeps `x L` and `x L M` (`[.., r]`), no
    /// `[d_in, d_out]` tensor.
    pub fn forward<const D: usize>(&self, f: &LotrFactors, x: Tensor<D>) -> Tensor<D> {
        x.matmul(f.left.val().unsqueeze())
            .matmul(self.core.val().unsqueeze())
            .matmul(f.right.val().transpose().unsqueeze())
            .mul_scalar(self.scale)
    }
}

/// The adapter of one layer.
#[derive(Module, Debug)]
pub enum LayerAdapter {
    /// A LoRA pair.
    Lora(Lora),
    /// A LoTR core; the factors are the model's, per group.
    Lotr(LotrCore),
}

impl LayerAdapter {
    /// The adapter's output for `x`, `group` the layer's shared LoTR factors.
    pub fn forward<const D: usize>(&self, x: Tensor<D>, group: Option<&LotrFactors>) -> Tensor<D> {
        match self {
            LayerAdapter::Lora(l) => l.forward(x),
            LayerAdapter::Lotr(c) => c.forward(group.expect("a LoTR layer has its group"), x),
        }
    }

    /// `ΔW`.
    pub fn delta(&self, group: Option<&LotrFactors>) -> Tensor<2> {
        match self {
            LayerAdapter::Lora(l) => l.delta(),
            LayerAdapter::Lotr(c) => c.delta(group.expect("a LoTR layer has its group")),
        }
    }
}

/// Adapters for fine-tuning with a frozen base, on every block linear: the `adapt=` key of a
/// policy SPEC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdaptPolicy {
    /// Train every parameter.
    #[default]
    None,
    /// LoRA of rank `rank`, scale `alpha / rank`.
    Lora {
        /// Rank.
        rank: u32,
        /// `alpha` in basis points.
        alpha_bp: u32,
    },
    /// LoTR of rank `rank`, scale `alpha / rank`, random shared factors.
    Lotr {
        /// Rank.
        rank: u32,
        /// `alpha` in basis points.
        alpha_bp: u32,
    },
}

impl AdaptPolicy {
    /// The adapter configuration, if any.
    pub fn config(&self) -> Option<crate::adapter::AdapterConfig> {
        let kind = match *self {
            AdaptPolicy::None => return None,
            AdaptPolicy::Lora { rank, alpha_bp } => AdapterKind::Lora {
                rank: rank as usize,
                alpha: f64::from(alpha_bp) / 1e4,
            },
            AdaptPolicy::Lotr { rank, alpha_bp } => AdapterKind::Lotr {
                rank: rank as usize,
                alpha: f64::from(alpha_bp) / 1e4,
                init: LotrInit::Random,
            },
        };
        Some(AdapterConfig {
            kind,
            targets: Targets::AllLinear,
        })
    }
}

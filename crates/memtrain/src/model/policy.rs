//! `MemoryPolicy`: how each part of the reference GPT is computed and what it keeps.
//!
//! A policy is written as a SPEC, comma-separated `key=value` pairs, for example
//! `act=exact,attn=exact`. A missing key means the plain variant. Every key is an enum here;
//! a method that adds a variant adds one enum variant, its parse arm, and one match arm where
//! the layer is built (see [`crate::model`]).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One key of a policy SPEC.
pub trait PolicyKey: Sized + Copy + Default + fmt::Display {
    /// The key as written in a SPEC (`act`, `linear`, ...).
    const KEY: &'static str;
    /// The accepted values, for error messages.
    const CHOICES: &'static str;
    /// Parses a value of this key.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the key, the value and [`Self::CHOICES`].
    fn parse(value: &str) -> Result<Self>;

    /// The error for an unknown value of this key.
    fn unknown(value: &str) -> Error {
        Error::config(
            format!("value for policy key `{}`", Self::KEY),
            value,
            format!("one of: {}", Self::CHOICES),
        )
    }
}

macro_rules! simple_key {
    (@join $first:literal $(, $rest:literal)*) => { concat!($first $(, ", ", $rest)*) };
    ($(#[$doc:meta])* $name:ident, $key:literal, { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl PolicyKey for $name {
            const KEY: &'static str = $key;
            const CHOICES: &'static str = simple_key!(@join $($text),+);
            fn parse(value: &str) -> Result<Self> {
                match value {
                    $($text => Ok(Self::$variant),)+
                    other => Err(Self::unknown(other)),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $(Self::$variant => $text,)+ })
            }
        }
    };
}

/// How the MLP nonlinearity (GELU) keeps what its backward needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActPolicy {
    /// burn's GELU: keeps its input, 4 bytes an element.
    #[default]
    Exact,
    /// [`crate::activation::InvertedGelu`]: keeps its output (shared with the next linear)
    /// and one bit an element.
    Inverted,
    /// [`crate::activation::FewBit`] GELU: keeps a code of this many bits (1..=8) an element.
    FewBit(u8),
}

impl PolicyKey for ActPolicy {
    const KEY: &'static str = "act";
    const CHOICES: &'static str = "exact, inverted, fewbit:B (B in 1..=8)";
    fn parse(value: &str) -> Result<Self> {
        match value {
            "exact" => Ok(ActPolicy::Exact),
            "inverted" => Ok(ActPolicy::Inverted),
            other => match other.strip_prefix("fewbit:").map(str::parse::<u8>) {
                Some(Ok(b)) if (1..=8).contains(&b) => Ok(ActPolicy::FewBit(b)),
                _ => Err(Self::unknown(other)),
            },
        }
    }
}

impl fmt::Display for ActPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActPolicy::Exact => f.write_str("exact"),
            ActPolicy::Inverted => f.write_str("inverted"),
            ActPolicy::FewBit(b) => write!(f, "fewbit:{b}"),
        }
    }
}

simple_key!(
    /// How LayerNorm keeps what its backward needs.
    NormPolicy, "norm", {
        /// burn's `LayerNorm`: keeps the centred and the normalised input.
        #[default]
        Exact => "exact",
        /// [`crate::norm::OutputLayerNorm`]: keeps its output (shared with the next linear)
        /// and one scalar per row.
        Output => "output",
    }
);

/// How linear layers keep what the weight gradient needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinearPolicy {
    /// burn's `Linear`: keeps its input.
    #[default]
    Exact,
    /// [`crate::linear::gemm_linear`]: burn's math and kept tensors, each product written
    /// once (burn's Flex matmul briefly holds every output twice).
    Gemm,
    /// [`crate::linear::SketchedLinear`]: keeps a sketch with `ratio_bp / 10000` of the
    /// input's rows.
    Sketch {
        /// The ratio in basis points, 1..=10000.
        ratio_bp: u16,
        /// Only the MLP's two linears are sketched.
        mlp_only: bool,
        /// How the sketch is drawn.
        kind: crate::linear::SketchKind,
    },
}

impl LinearPolicy {
    /// The sketch ratio, if sketched.
    pub fn ratio(&self) -> Option<f64> {
        match self {
            LinearPolicy::Exact | LinearPolicy::Gemm => None,
            LinearPolicy::Sketch { ratio_bp, .. } => Some(f64::from(*ratio_bp) / 1e4),
        }
    }

    /// Whether a linear of the MLP (`mlp`) or of attention is sketched.
    pub fn sketches(&self, mlp: bool) -> bool {
        match self {
            LinearPolicy::Exact | LinearPolicy::Gemm => false,
            LinearPolicy::Sketch { mlp_only, .. } => mlp || !mlp_only,
        }
    }
}

impl PolicyKey for LinearPolicy {
    const KEY: &'static str = "linear";
    const CHOICES: &'static str = "exact, gemm, sketch:RATIO[:mlp][:gaussian|rademacher|rows] (RATIO in (0, 1], default all linears, rows)";
    fn parse(value: &str) -> Result<Self> {
        match value {
            "exact" => return Ok(LinearPolicy::Exact),
            "gemm" => return Ok(LinearPolicy::Gemm),
            _ => {}
        }
        let mut parts = value.split(':');
        if parts.next() != Some("sketch") {
            return Err(Self::unknown(value));
        }
        let ratio: f64 = parts
            .next()
            .and_then(|r| r.parse().ok())
            .ok_or_else(|| Self::unknown(value))?;
        if !(ratio > 0.0 && ratio <= 1.0) {
            return Err(Self::unknown(value));
        }
        let (mut mlp_only, mut kind) = (false, crate::linear::SketchKind::Rows);
        for part in parts {
            match part {
                "mlp" => mlp_only = true,
                other => {
                    kind = crate::linear::SketchKind::ALL
                        .into_iter()
                        .find(|k| k.name() == other)
                        .ok_or_else(|| Self::unknown(value))?
                }
            }
        }
        Ok(LinearPolicy::Sketch {
            ratio_bp: (ratio * 1e4).round().max(1.0) as u16,
            mlp_only,
            kind,
        })
    }
}

impl fmt::Display for LinearPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinearPolicy::Exact => f.write_str("exact"),
            LinearPolicy::Gemm => f.write_str("gemm"),
            LinearPolicy::Sketch {
                ratio_bp,
                mlp_only,
                kind,
            } => {
                write!(f, "sketch:{}", f64::from(*ratio_bp) / 1e4)?;
                if *mlp_only {
                    f.write_str(":mlp")?;
                }
                write!(f, ":{}", kind.name())
            }
        }
    }
}

simple_key!(
    /// How causal self-attention is computed.
    AttnPolicy, "attn", {
        /// matmul + mask + softmax + matmul: keeps `[batch, heads, seq, seq]` tensors.
        #[default]
        Exact => "exact",
        /// [`crate::attention::fused_attention`]: keeps one log-sum-exp per row instead.
        Memeff => "memeff",
    }
);

/// Which blocks are recomputed in backward instead of keeping their insides
/// ([`crate::remat`]).
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

/// Parses `64MiB`, `1.5GiB`, `4096B` or `4096` (bytes): units B, KiB, MiB, GiB (also KB, MB,
/// GB as powers of 1024).
///
/// # Errors
///
/// [`Error::Config`] naming the text and the accepted forms.
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "kb" | "k" => 1 << 10,
        "mib" | "mb" | "m" => 1 << 20,
        "gib" | "gb" | "g" => 1 << 30,
        _ => 0,
    };
    match num.parse::<f64>() {
        Ok(v) if scale > 0 && v.is_finite() && v > 0.0 && v * (scale as f64) < 1e18 => {
            Ok((v * scale as f64).round() as u64)
        }
        _ => Err(Error::config(
            "size",
            text,
            "a positive size like 64MiB, 1.5GiB, 512KiB or 4096B",
        )),
    }
}

impl PolicyKey for RematPolicy {
    const KEY: &'static str = "remat";
    const CHOICES: &'static str =
        "none, every:K (K >= 1), budget:SIZE (SIZE like 64MiB, 1GiB, 512KiB, 4096B)";
    fn parse(value: &str) -> Result<Self> {
        if value == "none" {
            return Ok(RematPolicy::None);
        }
        if let Some(k) = value.strip_prefix("every:") {
            return k
                .parse::<u32>()
                .ok()
                .filter(|&k| k >= 1)
                .map(RematPolicy::Every)
                .ok_or_else(|| Self::unknown(value));
        }
        if let Some(size) = value.strip_prefix("budget:") {
            return parse_size(size)
                .map(RematPolicy::Budget)
                .map_err(|_| Self::unknown(value));
        }
        Err(Self::unknown(value))
    }
}

impl fmt::Display for RematPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RematPolicy::None => f.write_str("none"),
            RematPolicy::Every(k) => write!(f, "every:{k}"),
            RematPolicy::Budget(b) => write!(f, "budget:{b}B"),
        }
    }
}

/// How weight matrices are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightsPolicy {
    /// Dense `[d_input, d_output]` matrices.
    #[default]
    Dense,
    /// [`crate::linear::TtLinear`] TT-matrices with three cores and every inner rank `rank`
    /// for the MLP's two linears, or for every linear of the blocks with `all`. A TT layer is
    /// never sketched (`linear=sketch` applies to the dense ones).
    Ttm {
        /// Rank of every inner bond (capped by the unfolding sizes).
        rank: u32,
        /// Attention's linears too, not only the MLP's.
        all: bool,
    },
}

impl WeightsPolicy {
    /// The TT rank of a linear of the MLP (`mlp`) or of attention, if it is a TT-matrix.
    pub fn tt_rank(&self, mlp: bool) -> Option<usize> {
        match *self {
            WeightsPolicy::Ttm { rank, all } if mlp || all => Some(rank as usize),
            _ => None,
        }
    }
}

impl PolicyKey for WeightsPolicy {
    const KEY: &'static str = "weights";
    const CHOICES: &'static str = "dense, ttm:RANK[:all] (RANK >= 1; MLP linears, or all)";
    fn parse(value: &str) -> Result<Self> {
        if value == "dense" {
            return Ok(WeightsPolicy::Dense);
        }
        let mut parts = value.split(':');
        if parts.next() != Some("ttm") {
            return Err(Self::unknown(value));
        }
        let rank: u32 = parts
            .next()
            .and_then(|r| r.parse().ok())
            .filter(|&r| r >= 1)
            .ok_or_else(|| Self::unknown(value))?;
        let all = match parts.next() {
            None => false,
            Some("all") => true,
            Some(_) => return Err(Self::unknown(value)),
        };
        if parts.next().is_some() {
            return Err(Self::unknown(value));
        }
        Ok(WeightsPolicy::Ttm { rank, all })
    }
}

impl fmt::Display for WeightsPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightsPolicy::Dense => f.write_str("dense"),
            WeightsPolicy::Ttm { rank, all } => {
                write!(f, "ttm:{rank}")?;
                if *all {
                    f.write_str(":all")?;
                }
                Ok(())
            }
        }
    }
}

/// Adapters for fine-tuning with a frozen base ([`crate::adapter`]), on every block linear.
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
        use crate::adapter::{AdapterConfig, AdapterKind, LotrInit, Targets};
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

impl PolicyKey for AdaptPolicy {
    const KEY: &'static str = "adapt";
    const CHOICES: &'static str =
        "none, lora:RANK[:ALPHA], lotr:RANK[:ALPHA] (RANK >= 1, ALPHA > 0, default RANK)";
    fn parse(value: &str) -> Result<Self> {
        if value == "none" {
            return Ok(AdaptPolicy::None);
        }
        let bad = || Self::unknown(value);
        let mut parts = value.split(':');
        let kind = parts.next();
        let rank: u32 = parts
            .next()
            .and_then(|r| r.parse().ok())
            .filter(|&r| r >= 1)
            .ok_or_else(bad)?;
        let alpha: f64 = match parts.next() {
            None => f64::from(rank),
            Some(a) => a
                .parse()
                .ok()
                .filter(|a: &f64| a.is_finite() && *a > 0.0 && *a <= 1e5)
                .ok_or_else(bad)?,
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        let alpha_bp = (alpha * 1e4).round().max(1.0) as u32;
        match kind {
            Some("lora") => Ok(AdaptPolicy::Lora { rank, alpha_bp }),
            Some("lotr") => Ok(AdaptPolicy::Lotr { rank, alpha_bp }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for AdaptPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdaptPolicy::None => f.write_str("none"),
            AdaptPolicy::Lora { rank, alpha_bp } => {
                write!(f, "lora:{rank}:{}", f64::from(*alpha_bp) / 1e4)
            }
            AdaptPolicy::Lotr { rank, alpha_bp } => {
                write!(f, "lotr:{rank}:{}", f64::from(*alpha_bp) / 1e4)
            }
        }
    }
}

/// The optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimPolicy {
    /// burn's AdamW: two fp32 moments per parameter.
    #[default]
    Adamw,
    /// [`crate::optim::NagGs`]: one state vector per parameter; the learning rate is its step
    /// `α`.
    NagGs {
        /// `μ` in basis points (10000 = 1.0).
        mu_bp: u32,
        /// `γ_0` in basis points.
        gamma_bp: u32,
    },
    /// [`crate::optim::Galore`]: Adam in a rank-`rank` projection of each matrix's gradient.
    Galore {
        /// Projection rank.
        rank: u32,
        /// Steps between projector updates.
        gap: u32,
        /// Scale of the back-projected update, in basis points (2500 = 0.25).
        scale_bp: u32,
    },
}

impl OptimPolicy {
    /// NAG-GS with the reference's `μ = 1`, `γ_0 = 1`.
    pub const NAG_GS: OptimPolicy = OptimPolicy::NagGs {
        mu_bp: 10_000,
        gamma_bp: 10_000,
    };

    /// The NAG-GS configuration, if this is NAG-GS.
    pub fn nag_gs(&self) -> Option<crate::optim::NagGsConfig> {
        match *self {
            OptimPolicy::NagGs { mu_bp, gamma_bp } => Some(
                crate::optim::NagGsConfig::new()
                    .with_mu(f64::from(mu_bp) / 1e4)
                    .with_gamma(f64::from(gamma_bp) / 1e4),
            ),
            _ => None,
        }
    }

    /// The GaLore configuration, if this is GaLore.
    pub fn galore(&self) -> Option<crate::optim::GaloreConfig> {
        match *self {
            OptimPolicy::Galore {
                rank,
                gap,
                scale_bp,
            } => Some(
                crate::optim::GaloreConfig::new(rank as usize)
                    .with_gap(gap as usize)
                    .with_scale(f64::from(scale_bp) / 1e4),
            ),
            _ => None,
        }
    }
}

impl PolicyKey for OptimPolicy {
    const KEY: &'static str = "optim";
    const CHOICES: &'static str = "adamw, naggs[:MU[:GAMMA]] (positive, default 1 and 1), galore:RANK[:GAP[:SCALE]] (RANK >= 1, GAP >= 1 default 200, SCALE > 0 default 0.25)";
    fn parse(value: &str) -> Result<Self> {
        if value == "adamw" {
            return Ok(OptimPolicy::Adamw);
        }
        let bad = || Self::unknown(value);
        let positive = |x: Option<&str>| -> Result<u32> {
            match x {
                None => Ok(10_000),
                Some(x) => x
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x >= 1e-4 && *x <= 1e4)
                    .map(|x| (x * 1e4).round() as u32)
                    .ok_or_else(bad),
            }
        };
        let mut parts = value.split(':');
        match parts.next() {
            Some("naggs") => {
                let mu_bp = positive(parts.next())?;
                let gamma_bp = positive(parts.next())?;
                if parts.next().is_some() {
                    return Err(bad());
                }
                return Ok(OptimPolicy::NagGs { mu_bp, gamma_bp });
            }
            Some("galore") => {}
            _ => return Err(bad()),
        }
        let rank: u32 = parts
            .next()
            .and_then(|r| r.parse().ok())
            .filter(|&r| r >= 1)
            .ok_or_else(bad)?;
        let gap: u32 = match parts.next() {
            None => 200,
            Some(g) => g.parse().ok().filter(|&g| g >= 1).ok_or_else(bad)?,
        };
        let scale: f64 = match parts.next() {
            None => 0.25,
            Some(x) => x
                .parse()
                .ok()
                .filter(|x: &f64| x.is_finite() && *x > 0.0 && *x <= 100.0)
                .ok_or_else(bad)?,
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(OptimPolicy::Galore {
            rank,
            gap,
            scale_bp: (scale * 1e4).round().max(1.0) as u32,
        })
    }
}

impl fmt::Display for OptimPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptimPolicy::Adamw => f.write_str("adamw"),
            OptimPolicy::NagGs { mu_bp, gamma_bp } => write!(
                f,
                "naggs:{}:{}",
                f64::from(*mu_bp) / 1e4,
                f64::from(*gamma_bp) / 1e4
            ),
            OptimPolicy::Galore {
                rank,
                gap,
                scale_bp,
            } => write!(f, "galore:{rank}:{gap}:{}", f64::from(*scale_bp) / 1e4),
        }
    }
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

/// How every part of the reference GPT is computed.
///
/// `MemoryPolicy::default()` is plain burn. Parse one from a SPEC with [`str::parse`]:
///
/// ```
/// use memtrain::model::MemoryPolicy;
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
}

/// The keys a SPEC accepts.
pub const POLICY_KEYS: &str = "act, norm, linear, attn, remat, weights, optim, adapt";

impl MemoryPolicy {
    /// Checks values a SPEC cannot express wrongly but a deserialized policy can.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a few-bit width outside 1..=8.
    pub fn validate(&self) -> Result<()> {
        for block in std::iter::once(&self.block).chain(self.overrides.values()) {
            if let ActPolicy::FewBit(b) = block.act {
                crate::activation::few_bit::validate_bits(u32::from(b))?;
            }
        }
        Ok(())
    }

    /// The policy of block `index`.
    pub fn block(&self, index: usize) -> BlockPolicy {
        self.overrides.get(&index).copied().unwrap_or(self.block)
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

//! The grammar of each policy key: parsing a SPEC value, printing it back, and the variants
//! the planner may choose from. The values themselves live with their methods
//! ([`ActPolicy`] in `activation`, [`LinearPolicy`] and [`WeightsPolicy`] in `linear`, ...).

use std::fmt;

use super::size::parse_size;
use super::{PrecisionPolicy, RematPolicy, UpdatePolicy};
use crate::activation::ActPolicy;
use crate::adapter::AdaptPolicy;
use crate::attention::AttnPolicy;
use crate::error::{Error, Result};
use crate::linear::{LinearPolicy, SketchKind, WeightsPolicy};
use crate::norm::NormPolicy;
use crate::optim::OptimPolicy;

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

    /// The exact variants the memory planner chooses among for this key, the plain one first
    /// and the leanest last (a key the planner does not choose has only its default).
    fn exact_variants() -> Vec<Self> {
        vec![Self::default()]
    }

    /// The approximate variants the planner may use on top of the leanest exact ones when
    /// approximations are allowed (`--allow approx`).
    fn approximate_variants() -> Vec<Self> {
        Vec::new()
    }

    /// The error for an unknown value of this key.
    fn unknown(value: &str) -> Error {
        Error::config(
            format!("value for policy key `{}`", Self::KEY),
            value,
            format!("one of: {}", Self::CHOICES),
        )
    }
}

/// A key whose values are plain words.
macro_rules! word_key {
    ($name:ty, $key:literal, $choices:literal, [$($planned:path),+], { $($variant:path => $text:literal),+ $(,)? }) => {
        impl PolicyKey for $name {
            const KEY: &'static str = $key;
            const CHOICES: &'static str = $choices;
            fn exact_variants() -> Vec<Self> {
                vec![$($planned),+]
            }
            fn parse(value: &str) -> Result<Self> {
                match value {
                    $($text => Ok($variant),)+
                    other => Err(Self::unknown(other)),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $($variant => $text,)+ })
            }
        }
    };
}

word_key!(NormPolicy, "norm", "exact, output", [NormPolicy::Exact, NormPolicy::Output], {
    NormPolicy::Exact => "exact",
    NormPolicy::Output => "output",
});
word_key!(AttnPolicy, "attn", "exact, memeff", [AttnPolicy::Exact, AttnPolicy::Memeff], {
    AttnPolicy::Exact => "exact",
    AttnPolicy::Memeff => "memeff",
});

impl PolicyKey for ActPolicy {
    const KEY: &'static str = "act";
    const CHOICES: &'static str = "exact, inverted, fewbit:B (B in 1..=8)";
    fn exact_variants() -> Vec<Self> {
        vec![ActPolicy::Exact, ActPolicy::Inverted]
    }
    fn approximate_variants() -> Vec<Self> {
        vec![ActPolicy::FewBit(2)]
    }
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

impl PolicyKey for LinearPolicy {
    const KEY: &'static str = "linear";
    fn exact_variants() -> Vec<Self> {
        vec![LinearPolicy::Exact, LinearPolicy::Gemm]
    }
    fn approximate_variants() -> Vec<Self> {
        vec![LinearPolicy::Sketch {
            ratio_bp: 2500,
            mlp_only: true,
            kind: SketchKind::Rows,
        }]
    }
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
        let (mut mlp_only, mut kind) = (false, SketchKind::Rows);
        for part in parts {
            match part {
                "mlp" => mlp_only = true,
                other => {
                    kind = SketchKind::ALL
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
            RematPolicy::Budget(b) => write!(f, "budget:{}", super::size::format_size(*b)),
        }
    }
}

word_key!(UpdatePolicy, "update", "step, per-stage", [UpdatePolicy::Step], {
    UpdatePolicy::Step => "step",
    UpdatePolicy::PerStage => "per-stage",
});
word_key!(PrecisionPolicy, "precision", "fp32, bf16", [PrecisionPolicy::Fp32], {
    PrecisionPolicy::Fp32 => "fp32",
    PrecisionPolicy::Bf16 => "bf16",
});

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

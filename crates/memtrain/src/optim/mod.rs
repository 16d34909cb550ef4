//! Optimizers that keep less state than AdamW's two moments per parameter, and burn's AdamW
//! fused into one pass, as burn optimizers (`Config::new().init()` gives a
//! [`burn::optim::ModuleOptimizer`], stepped with `opt.step(lr, model, grads)`, saved and
//! loaded with its records; [`FusedAdamW`] is wrapped with `ModuleOptimizer::from`).
//!
//! | optimizer | state per parameter | policy |
//! |---|---|---|
//! | burn's AdamW, fused on Flex ([`FusedAdamW`]) | `2 numel` | `optim=adamw` |
//! | [`NagGs`] | `numel` (one vector) | `optim=naggs` |
//! | [`Galore`] | per matrix `r (min + 2 max)` | `optim=galore:RANK[:GAP[:SCALE]]` |

mod adamw;
mod galore;
mod nag_gs;

pub use adamw::FusedAdamW;
pub use galore::{Galore, GaloreConfig, GaloreState};
pub use nag_gs::{NagGs, NagGsConfig, NagGsState};

use burn::optim::ModuleOptimizer;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::memory::F32;

/// The optimizer: the `optim=` key of a policy SPEC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimPolicy {
    /// burn's AdamW: two fp32 moments per parameter.
    #[default]
    Adamw,
    /// [`NagGs`]: one state vector per parameter; the learning rate is its step
    /// `α`.
    NagGs {
        /// `μ` in basis points (10000 = 1.0).
        mu_bp: u32,
        /// `γ_0` in basis points.
        gamma_bp: u32,
    },
    /// [`Galore`]: Adam in a rank-`rank` projection of each matrix's gradient.
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
    pub fn nag_gs(&self) -> Option<NagGsConfig> {
        match *self {
            OptimPolicy::NagGs { mu_bp, gamma_bp } => Some(
                NagGsConfig::new()
                    .with_mu(f64::from(mu_bp) / 1e4)
                    .with_gamma(f64::from(gamma_bp) / 1e4),
            ),
            _ => None,
        }
    }

    /// The optimizer.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Config`] from the optimizer's config (the SPEC parser admits only
    /// valid constants; a hand-edited checkpoint may not).
    pub fn init(&self) -> Result<ModuleOptimizer> {
        match self {
            OptimPolicy::Adamw => Ok(ModuleOptimizer::from(FusedAdamW::default())),
            OptimPolicy::NagGs { .. } => self.nag_gs().expect("a NAG-GS policy").init(),
            OptimPolicy::Galore { .. } => self.galore().expect("a GaLore policy").init(),
        }
    }

    /// Optimizer-state bytes for parameters of `shapes`: AdamW `8 P`; NAG-GS `4 P` (one
    /// state vector); GaLore per matrix `[m, n]` `4 (r min(m, n) + 2 r max(m, n))` (projector
    /// and the two projected moments) and `8 numel` for every other parameter.
    ///
    /// burn's AdamW also keeps one step counter per parameter tensor, which is host metadata
    /// of a few bytes and not counted here.
    pub fn state_bytes(&self, shapes: &[Vec<usize>]) -> usize {
        let numel = |s: &Vec<usize>| s.iter().product::<usize>();
        match *self {
            OptimPolicy::Adamw => shapes.iter().map(|s| 2 * F32 * numel(s)).sum(),
            OptimPolicy::NagGs { .. } => shapes.iter().map(|s| F32 * numel(s)).sum(),
            OptimPolicy::Galore { rank, .. } => {
                let r = rank as usize;
                shapes
                    .iter()
                    .map(|s| match s.as_slice() {
                        [m, n] => F32 * (r * m.min(n) + 2 * r * m.max(n)),
                        _ => 2 * F32 * numel(s),
                    })
                    .sum()
            }
        }
    }

    /// The GaLore configuration, if this is GaLore.
    pub fn galore(&self) -> Option<GaloreConfig> {
        match *self {
            OptimPolicy::Galore {
                rank,
                gap,
                scale_bp,
            } => Some(
                GaloreConfig::new(rank as usize)
                    .with_update_proj_gap(gap as usize)
                    .with_scale(f64::from(scale_bp) / 1e4),
            ),
            _ => None,
        }
    }
}

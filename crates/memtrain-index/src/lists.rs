//! Inverted lists: the points of each leaf stored contiguously, scanned exactly.

use crate::data::Points;
use crate::kernel::{TopK, l2sq};

/// The points grouped by leaf: leaf `l` holds `ids[offsets[l]..offsets[l + 1]]`, and their
/// vectors lie in the same order in `vectors` (a copy of the raw data, reordered so that a
/// scan reads memory in sequence).
///
/// # Memory
///
/// The structure proper is `4 (N + leaves + 1)` bytes ([`Lists::structure_bytes`]); the
/// vectors are the raw data, `4 N D` bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Lists {
    pub(crate) offsets: Vec<u32>,
    pub(crate) ids: Vec<u32>,
    pub(crate) vectors: Vec<f32>,
    pub(crate) dim: usize,
}

impl Lists {
    /// Groups `points` by `leaf_of[i]` (`< leaves`), keeping the input order inside a leaf.
    pub fn new(points: &Points, leaf_of: &[u32], leaves: usize) -> Self {
        let mut counts = vec![0u32; leaves + 1];
        for &l in leaf_of {
            counts[l as usize + 1] += 1;
        }
        for l in 0..leaves {
            counts[l + 1] += counts[l];
        }
        let offsets = counts.clone();
        let mut next = counts;
        let d = points.dim();
        let mut ids = vec![0u32; points.len()];
        let mut vectors = vec![0.0f32; points.len() * d];
        for (i, &l) in leaf_of.iter().enumerate() {
            let at = next[l as usize] as usize;
            next[l as usize] += 1;
            ids[at] = i as u32;
            vectors[at * d..(at + 1) * d].copy_from_slice(points.row(i));
        }
        Self {
            offsets,
            ids,
            vectors,
            dim: d,
        }
    }

    /// Number of leaves.
    pub fn leaves(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Points in leaf `l`.
    pub fn len_of(&self, l: usize) -> usize {
        (self.offsets[l + 1] - self.offsets[l]) as usize
    }

    /// Bytes of the offsets and ids (the raw vectors excluded).
    pub fn structure_bytes(&self) -> usize {
        4 * (self.offsets.len() + self.ids.len())
    }

    /// Offers every point of leaf `l` to `top`, scored by squared distance to `query`.
    #[inline]
    pub fn scan(&self, l: usize, query: &[f32], top: &mut TopK) {
        let (a, b) = (self.offsets[l] as usize, self.offsets[l + 1] as usize);
        let d = self.dim;
        for at in a..b {
            top.push(
                l2sq(query, &self.vectors[at * d..(at + 1) * d]),
                self.ids[at],
            );
        }
    }
}

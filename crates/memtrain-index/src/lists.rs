//! Inverted lists: the points of each leaf stored contiguously, scanned exactly (f32) or
//! through 8-bit scalar codes (sq8).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use crate::data::Points;
use crate::kernel::{TopK, l2sq, l2sq_sq8};
use crate::{Error, Result};

/// How the lists hold the vectors they scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// The raw float32 vectors (`4 D` bytes a vector): distances are exact.
    #[default]
    F32,
    /// One byte per coordinate (`D` bytes a vector, plus `8 D` for the grid): coordinate `i`
    /// is stored as the nearest of 256 levels evenly spaced over its range in the data, and
    /// distances are computed from the float query to the decoded levels (asymmetric). The
    /// error of a coordinate is at most half its step, `(max_i - min_i) / 510`; data already
    /// on such a grid (8-bit pixels) is stored exactly.
    Sq8,
}

impl Storage {
    /// Every storage, in the order the CLI lists them.
    pub const ALL: [Storage; 2] = [Storage::F32, Storage::Sq8];
}

impl fmt::Display for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Storage::F32 => "f32",
            Storage::Sq8 => "sq8",
        })
    }
}

impl FromStr for Storage {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Storage::ALL
            .into_iter()
            .find(|st| st.to_string() == s)
            .ok_or_else(|| Error::invalid("storage", s, "f32 or sq8"))
    }
}

/// The vectors of the lists, in list order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Vectors {
    F32(Vec<f32>),
    /// Codes `[N, D]`; coordinate `i` decodes to `min[i] + step[i] · code`.
    Sq8 {
        codes: Vec<u8>,
        min: Vec<f32>,
        step: Vec<f32>,
    },
}

/// The points grouped by leaf: leaf `l` holds `ids[offsets[l]..offsets[l + 1]]`, and their
/// vectors lie in the same order (a copy of the data, reordered so that a scan reads memory
/// in sequence; float32 or 8-bit codes, see [`Storage`]).
///
/// # Memory
///
/// The structure proper is `4 (N + leaves + 1)` bytes ([`Lists::structure_bytes`]); the
/// vectors are [`Lists::vector_bytes`]: `4 N D` as f32, `N D + 8 D` as sq8.
#[derive(Debug, Clone, PartialEq)]
pub struct Lists {
    pub(crate) offsets: Vec<u32>,
    pub(crate) ids: Vec<u32>,
    pub(crate) vectors: Vectors,
    pub(crate) dim: usize,
}

impl Lists {
    /// Groups `points` by `leaf_of[i]` (`< leaves`), keeping the input order inside a leaf,
    /// stored as float32.
    pub fn new(points: &Points, leaf_of: &[u32], leaves: usize) -> Self {
        Self::with_storage(points, leaf_of, leaves, Storage::F32)
    }

    /// As [`Lists::new`], with the vectors stored as `storage` (the sq8 grid spans each
    /// coordinate's range over `points`).
    pub fn with_storage(points: &Points, leaf_of: &[u32], leaves: usize, storage: Storage) -> Self {
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
        let mut order = vec![0u32; points.len()];
        for (i, &l) in leaf_of.iter().enumerate() {
            let at = next[l as usize] as usize;
            next[l as usize] += 1;
            order[at] = i as u32;
        }
        let vectors = match storage {
            Storage::F32 => {
                let mut v = Vec::with_capacity(points.len() * d);
                order
                    .iter()
                    .for_each(|&i| v.extend_from_slice(points.row(i as usize)));
                Vectors::F32(v)
            }
            Storage::Sq8 => {
                let (min, step) = sq8_grid(points);
                let mut codes = Vec::with_capacity(points.len() * d);
                for &i in &order {
                    codes.extend(encode_sq8(points.row(i as usize), &min, &step));
                }
                Vectors::Sq8 { codes, min, step }
            }
        };
        Self {
            offsets,
            ids: order,
            vectors,
            dim: d,
        }
    }

    /// `leaves` empty lists of dimension `dim` (f32).
    pub(crate) fn empty(leaves: usize, dim: usize) -> Self {
        Self {
            offsets: vec![0; leaves + 1],
            ids: Vec::new(),
            vectors: Vectors::F32(Vec::new()),
            dim,
        }
    }

    /// Number of leaves.
    pub fn leaves(&self) -> usize {
        self.offsets.len() - 1
    }

    /// The list boundaries: leaf `l` holds positions `offsets()[l]..offsets()[l + 1]`.
    pub fn offsets(&self) -> &[u32] {
        &self.offsets
    }

    /// The id of the point at each position, in list order.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Points in leaf `l`.
    pub fn len_of(&self, l: usize) -> usize {
        (self.offsets[l + 1] - self.offsets[l]) as usize
    }

    /// How the vectors are stored.
    pub fn storage(&self) -> Storage {
        match self.vectors {
            Vectors::F32(_) => Storage::F32,
            Vectors::Sq8 { .. } => Storage::Sq8,
        }
    }

    /// Bytes of the offsets and ids (the vectors excluded).
    pub fn structure_bytes(&self) -> usize {
        4 * (self.offsets.len() + self.ids.len())
    }

    /// Bytes of the stored vectors: `4 N D` as f32, `N D + 8 D` as sq8 (codes and grid).
    pub fn vector_bytes(&self) -> usize {
        match &self.vectors {
            Vectors::F32(v) => 4 * v.len(),
            Vectors::Sq8 { codes, min, step } => codes.len() + 4 * (min.len() + step.len()),
        }
    }

    /// The query as [`Lists::scan`] takes it: itself for f32, shifted by the grid's minimum
    /// for sq8. Prepare once per query, scan many leaves.
    pub fn prepare<'a>(&self, query: &'a [f32]) -> Cow<'a, [f32]> {
        match &self.vectors {
            Vectors::F32(_) => Cow::Borrowed(query),
            Vectors::Sq8 { min, .. } => {
                Cow::Owned(query.iter().zip(min).map(|(q, m)| q - m).collect())
            }
        }
    }

    /// Offers every point of leaf `l` to `top`, scored by squared distance to the query
    /// (as [`Lists::prepare`] returned it).
    #[inline]
    pub fn scan(&self, l: usize, prepared: &[f32], top: &mut TopK) {
        let (a, b) = (self.offsets[l] as usize, self.offsets[l + 1] as usize);
        let d = self.dim;
        match &self.vectors {
            Vectors::F32(v) => {
                for at in a..b {
                    top.push(l2sq(prepared, &v[at * d..(at + 1) * d]), self.ids[at]);
                }
            }
            Vectors::Sq8 { codes, step, .. } => {
                for at in a..b {
                    top.push(
                        l2sq_sq8(prepared, step, &codes[at * d..(at + 1) * d]),
                        self.ids[at],
                    );
                }
            }
        }
    }

    /// The same grouping with the vectors stored as `storage`, encoded from `points` (the
    /// points the lists were built from, in their original order: id `i` is row `i`).
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when `points` does not hold one row of the lists' dimension per id.
    pub fn restored(&self, points: &Points, storage: Storage) -> Result<Self> {
        if points.len() != self.ids.len() || points.dim() != self.dim {
            return Err(Error::invalid(
                "points",
                format!("{} of dimension {}", points.len(), points.dim()),
                format!(
                    "the {} points of dimension {} indexed",
                    self.ids.len(),
                    self.dim
                ),
            ));
        }
        let mut leaf_of = vec![0u32; self.ids.len()];
        for l in 0..self.leaves() {
            for at in self.offsets[l] as usize..self.offsets[l + 1] as usize {
                leaf_of[self.ids[at] as usize] = l as u32;
            }
        }
        Ok(Self::with_storage(points, &leaf_of, self.leaves(), storage))
    }

    /// Appends `points` with their leaves `leaf_of` (`< leaves`) and ids `first_id..`,
    /// encoding them on the existing grid for sq8 (coordinates outside the grid's range are
    /// clamped to it).
    pub(crate) fn insert(&mut self, points: &Points, leaf_of: &[u32], first_id: u32) {
        let d = self.dim;
        let leaves = self.leaves();
        let mut per_leaf: Vec<Vec<usize>> = vec![Vec::new(); leaves];
        for (i, &l) in leaf_of.iter().enumerate() {
            per_leaf[l as usize].push(i);
        }
        let n_old = self.ids.len();
        let mut offsets = vec![0u32; leaves + 1];
        let mut ids = Vec::with_capacity(n_old + points.len());
        let mut f32s = Vec::new();
        let mut codes = Vec::new();
        for l in 0..leaves {
            let (a, b) = (self.offsets[l] as usize, self.offsets[l + 1] as usize);
            ids.extend_from_slice(&self.ids[a..b]);
            ids.extend(per_leaf[l].iter().map(|&i| first_id + i as u32));
            match &self.vectors {
                Vectors::F32(v) => {
                    f32s.extend_from_slice(&v[a * d..b * d]);
                    per_leaf[l]
                        .iter()
                        .for_each(|&i| f32s.extend_from_slice(points.row(i)));
                }
                Vectors::Sq8 {
                    codes: old,
                    min,
                    step,
                } => {
                    codes.extend_from_slice(&old[a * d..b * d]);
                    per_leaf[l]
                        .iter()
                        .for_each(|&i| codes.extend(encode_sq8(points.row(i), min, step)));
                }
            }
            offsets[l + 1] = ids.len() as u32;
        }
        self.offsets = offsets;
        self.ids = ids;
        match &mut self.vectors {
            Vectors::F32(v) => *v = f32s,
            Vectors::Sq8 { codes: c, .. } => *c = codes,
        }
    }
}

/// Per coordinate, the minimum over `points` and the step `(max - min) / 255` (0 for a
/// constant coordinate).
fn sq8_grid(points: &Points) -> (Vec<f32>, Vec<f32>) {
    let d = points.dim();
    let mut min = vec![f32::INFINITY; d];
    let mut max = vec![f32::NEG_INFINITY; d];
    for i in 0..points.len() {
        for ((lo, hi), &x) in min.iter_mut().zip(max.iter_mut()).zip(points.row(i)) {
            *lo = lo.min(x);
            *hi = hi.max(x);
        }
    }
    if points.is_empty() {
        return (vec![0.0; d], vec![0.0; d]);
    }
    let step = min
        .iter()
        .zip(&max)
        .map(|(lo, hi)| (hi - lo) / 255.0)
        .collect();
    (min, step)
}

/// The sq8 codes of `x` on the grid `(min, step)`, clamped to `0..=255`.
fn encode_sq8<'a>(x: &'a [f32], min: &'a [f32], step: &'a [f32]) -> impl Iterator<Item = u8> + 'a {
    x.iter().zip(min).zip(step).map(|((&x, &lo), &s)| {
        if s > 0.0 {
            ((x - lo) / s).round().clamp(0.0, 255.0) as u8
        } else {
            0
        }
    })
}

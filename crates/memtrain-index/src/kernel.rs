//! The distance kernels every method shares, so that their speeds compare fairly.

/// Squared Euclidean distance of two equal-length vectors.
#[inline]
pub fn l2sq(a: &[f32], b: &[f32]) -> f32 {
    sum_pairs(a, b, |x, y| (x - y) * (x - y))
}

/// Dot product of two equal-length vectors.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    sum_pairs(a, b, |x, y| x * y)
}

/// `Σ_i term(a_i, b_i)` with eight independent accumulators, so the compiler vectorises it.
#[inline(always)]
fn sum_pairs(a: &[f32], b: &[f32], term: impl Fn(f32, f32) -> f32) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += term(x[k], y[k]);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (&x, &y) in ra.iter().zip(rb) {
        s += term(x, y);
    }
    s
}

/// Items a [`TopK`] reserves room for up front; a larger selection grows as items arrive.
const PREALLOCATE: usize = 1024;

/// The `k` smallest `(score, id)` pairs seen, kept sorted ascending (ties: smaller id first).
#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
    items: Vec<(f32, u32)>,
}

impl TopK {
    /// An empty selection of at most `k` items.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            // A huge `k` (a user's `--k`) must not reserve memory up front: the selection holds
            // at most as many items as it is offered.
            items: Vec::with_capacity(k.min(PREALLOCATE) + 1),
        }
    }

    /// The score an item must beat to enter (infinity until `k` items are held).
    #[inline]
    pub fn bound(&self) -> f32 {
        if self.items.len() < self.k {
            f32::INFINITY
        } else {
            self.items[self.k - 1].0
        }
    }

    /// Offers `(score, id)`.
    #[inline]
    pub fn push(&mut self, score: f32, id: u32) {
        if self.k == 0 || (self.items.len() == self.k && !less(score, id, self.items[self.k - 1])) {
            return;
        }
        let at = self
            .items
            .partition_point(|&it| less(it.0, it.1, (score, id)));
        self.items.insert(at, (score, id));
        self.items.truncate(self.k);
    }

    /// The items, ascending by score.
    pub fn into_sorted(self) -> Vec<(f32, u32)> {
        self.items
    }
}

#[inline]
fn less(score: f32, id: u32, other: (f32, u32)) -> bool {
    score < other.0 || (score == other.0 && id < other.1)
}

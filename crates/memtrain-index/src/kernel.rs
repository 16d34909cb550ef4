//! The distance kernels every method shares, so that their speeds compare fairly.

/// Squared Euclidean distance of two equal-length vectors (AVX2 and FMA when the CPU has
/// them, detected at run time; otherwise portable code the compiler vectorises).
#[inline]
pub fn l2sq(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "l2sq of vectors of different lengths");
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has AVX-512F (checked just above), and the lengths are equal.
        return unsafe { x86::l2sq_512(a, b) };
    }
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above), and the lengths are equal.
        return unsafe { x86::l2sq(a, b) };
    }
    sum_pairs(a, b, |x, y| (x - y) * (x - y))
}

/// Dot product of two equal-length vectors (AVX2 and FMA when the CPU has them).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot of vectors of different lengths");
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: as in `l2sq`.
        return unsafe { x86::dot(a, b) };
    }
    sum_pairs(a, b, |x, y| x * y)
}

/// Squared distance from a query shifted by an sq8 grid's minimum (`q - min`) to the point
/// whose codes are `code`: `Σ_i (q_i - step_i · code_i)²`.
#[inline]
pub fn l2sq_sq8(shifted: &[f32], step: &[f32], code: &[u8]) -> f32 {
    assert!(
        shifted.len() == step.len() && step.len() == code.len(),
        "l2sq_sq8 of vectors of different lengths"
    );
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has AVX-512F, and the three lengths are equal.
        return unsafe { x86::l2sq_sq8_512(shifted, step, code) };
    }
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2 and FMA, and the three lengths are equal.
        return unsafe { x86::l2sq_sq8(shifted, step, code) };
    }
    l2sq_sq8_portable(shifted, step, code)
}

/// The portable [`l2sq_sq8`], for tests of the SIMD path against it.
pub fn l2sq_sq8_portable(shifted: &[f32], step: &[f32], code: &[u8]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut i = 0;
    while i + 8 <= code.len() {
        for k in 0..8 {
            let e = shifted[i + k] - step[i + k] * f32::from(code[i + k]);
            acc[k] += e * e;
        }
        i += 8;
    }
    let mut s: f32 = acc.iter().sum();
    while i < code.len() {
        let e = shifted[i] - step[i] * f32::from(code[i]);
        s += e * e;
        i += 1;
    }
    s
}

/// The portable [`l2sq`], for tests of the SIMD path against it.
pub fn l2sq_portable(a: &[f32], b: &[f32]) -> f32 {
    sum_pairs(a, b, |x, y| (x - y) * (x - y))
}

/// One implementation of the distance kernels.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    /// `portable`, `avx2` or `avx512`.
    pub name: &'static str,
    /// [`l2sq`] as this variant computes it.
    pub l2sq: fn(&[f32], &[f32]) -> f32,
    /// [`l2sq_sq8`] as this variant computes it.
    pub l2sq_sq8: fn(&[f32], &[f32], &[u8]) -> f32,
}

/// Every variant of the kernels this CPU can run (the portable one first), so that tests
/// check each SIMD path against the portable one, not only the path [`l2sq`] picks. Inputs
/// must have equal lengths, as for [`l2sq`].
pub fn variants() -> Vec<Variant> {
    let mut out = vec![Variant {
        name: "portable",
        l2sq: l2sq_portable,
        l2sq_sq8: l2sq_sq8_portable,
    }];
    #[cfg(target_arch = "x86_64")]
    {
        if avx2() {
            out.push(Variant {
                name: "avx2",
                // SAFETY: returned only where the CPU has AVX2 and FMA; callers pass equal
                // lengths (checked by the assertions the safe kernels make, repeated here).
                l2sq: |a, b| {
                    assert_eq!(a.len(), b.len());
                    unsafe { x86::l2sq(a, b) }
                },
                l2sq_sq8: |q, s, c| {
                    assert!(q.len() == s.len() && s.len() == c.len());
                    // SAFETY: as above.
                    unsafe { x86::l2sq_sq8(q, s, c) }
                },
            });
        }
        if avx512() {
            out.push(Variant {
                name: "avx512",
                // SAFETY: returned only where the CPU has AVX-512F; equal lengths asserted.
                l2sq: |a, b| {
                    assert_eq!(a.len(), b.len());
                    unsafe { x86::l2sq_512(a, b) }
                },
                l2sq_sq8: |q, s, c| {
                    assert!(q.len() == s.len() && s.len() == c.len());
                    // SAFETY: as above.
                    unsafe { x86::l2sq_sq8_512(q, s, c) }
                },
            });
        }
    }
    out
}

/// Whether the AVX-512 kernels run (std caches the CPU check).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// Whether the AVX2 + FMA kernels run (std caches the CPU check).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
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

/// The AVX2 + FMA kernels: four 8-lane accumulators (32 floats a step), so that the FMA
/// latency is hidden, then an 8-float step and a scalar tail.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    ///
    /// The CPU must have AVX2 and FMA, and `a.len() == b.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn l2sq(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: every load reads 8 floats at `i <= n - 8` of slices of length `n`.
        unsafe {
            reduce(
                a,
                b,
                |x, y, acc| {
                    let d = _mm256_sub_ps(x, y);
                    _mm256_fmadd_ps(d, d, acc)
                },
                |x, y| (x - y) * (x - y),
            )
        }
    }

    /// # Safety
    ///
    /// As [`l2sq`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: as in `l2sq`.
        unsafe { reduce(a, b, |x, y, acc| _mm256_fmadd_ps(x, y, acc), |x, y| x * y) }
    }

    /// # Safety
    ///
    /// The CPU must have AVX2 and FMA, and the three lengths must be equal.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn l2sq_sq8(shifted: &[f32], step: &[f32], code: &[u8]) -> f32 {
        let n = code.len();
        let (pq, ps, pc) = (shifted.as_ptr(), step.as_ptr(), code.as_ptr());
        // SAFETY (whole body): AVX2 and FMA by the caller; every load reads 8 floats or 8
        // bytes starting at `i` with `i + 8 <= n`, the common length.
        unsafe {
            let level = |at: usize| {
                let bytes = _mm_loadl_epi64(pc.add(at) as *const __m128i);
                _mm256_fnmadd_ps(
                    _mm256_loadu_ps(ps.add(at)),
                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes)),
                    _mm256_loadu_ps(pq.add(at)),
                )
            };
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 32 <= n {
                for (k, acc) in acc.iter_mut().enumerate() {
                    let e = level(i + 8 * k);
                    *acc = _mm256_fmadd_ps(e, e, *acc);
                }
                i += 32;
            }
            while i + 8 <= n {
                let e = level(i);
                acc[0] = _mm256_fmadd_ps(e, e, acc[0]);
                i += 8;
            }
            let mut s = hsum(_mm256_add_ps(
                _mm256_add_ps(acc[0], acc[1]),
                _mm256_add_ps(acc[2], acc[3]),
            ));
            while i < n {
                let e = *pq.add(i) - *ps.add(i) * f32::from(*pc.add(i));
                s += e * e;
                i += 1;
            }
            s
        }
    }

    /// [`l2sq`] on 16-lane registers: two accumulators of 16 floats, a masked tail.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX-512F, and `a.len() == b.len()`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn l2sq_512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        // SAFETY (whole body): AVX-512F by the caller; full loads read 16 floats at `i` with
        // `i + 16 <= n`; the tail's masked loads touch only the `n - i` remaining lanes.
        unsafe {
            let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut i = 0;
            while i + 32 <= n {
                let d0 = _mm512_sub_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)));
                let d1 = _mm512_sub_ps(
                    _mm512_loadu_ps(pa.add(i + 16)),
                    _mm512_loadu_ps(pb.add(i + 16)),
                );
                s0 = _mm512_fmadd_ps(d0, d0, s0);
                s1 = _mm512_fmadd_ps(d1, d1, s1);
                i += 32;
            }
            while i < n {
                let m: __mmask16 = if n - i >= 16 {
                    0xffff
                } else {
                    (1u16 << (n - i)) - 1
                };
                let d = _mm512_sub_ps(
                    _mm512_maskz_loadu_ps(m, pa.add(i)),
                    _mm512_maskz_loadu_ps(m, pb.add(i)),
                );
                s0 = _mm512_fmadd_ps(d, d, s0);
                i += 16;
            }
            _mm512_reduce_add_ps(_mm512_add_ps(s0, s1))
        }
    }

    /// [`l2sq_sq8`] on 16-lane registers, a masked tail.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX-512F, and the three lengths must be equal.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn l2sq_sq8_512(shifted: &[f32], step: &[f32], code: &[u8]) -> f32 {
        let n = code.len();
        let (pq, ps, pc) = (shifted.as_ptr(), step.as_ptr(), code.as_ptr());
        // SAFETY (whole body): AVX-512F by the caller; full loads read 16 floats or 16 bytes
        // at `i` with `i + 16 <= n`; the tail copies its bytes into a local block and masks
        // its float loads to the `n - i` remaining lanes.
        unsafe {
            let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let level = |at: usize, bytes: __m128i, m: __mmask16| {
                _mm512_fnmadd_ps(
                    _mm512_maskz_loadu_ps(m, ps.add(at)),
                    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes)),
                    _mm512_maskz_loadu_ps(m, pq.add(at)),
                )
            };
            let mut i = 0;
            while i + 32 <= n {
                let e0 = level(i, _mm_loadu_si128(pc.add(i) as *const __m128i), 0xffff);
                let e1 = level(
                    i + 16,
                    _mm_loadu_si128(pc.add(i + 16) as *const __m128i),
                    0xffff,
                );
                s0 = _mm512_fmadd_ps(e0, e0, s0);
                s1 = _mm512_fmadd_ps(e1, e1, s1);
                i += 32;
            }
            while i < n {
                let left = (n - i).min(16);
                let mut block = [0u8; 16];
                std::ptr::copy_nonoverlapping(pc.add(i), block.as_mut_ptr(), left);
                let m: __mmask16 = if left == 16 {
                    0xffff
                } else {
                    (1u16 << left) - 1
                };
                let e = level(i, _mm_loadu_si128(block.as_ptr() as *const __m128i), m);
                s0 = _mm512_fmadd_ps(e, e, s0);
                i += 16;
            }
            _mm512_reduce_add_ps(_mm512_add_ps(s0, s1))
        }
    }

    /// The sum of the 8 lanes.
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: register-only AVX operations; the caller has AVX.
        unsafe {
            let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
            _mm_cvtss_f32(h)
        }
    }

    #[inline(always)]
    unsafe fn reduce(
        a: &[f32],
        b: &[f32],
        step: impl Fn(__m256, __m256, __m256) -> __m256,
        tail: impl Fn(f32, f32) -> f32,
    ) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        // SAFETY (whole body): the caller guarantees AVX2 and FMA; every unaligned load reads
        // 8 floats starting at an index `i` with `i + 8 <= n`.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 32 <= n {
                for (k, acc) in acc.iter_mut().enumerate() {
                    let at = i + 8 * k;
                    *acc = step(
                        _mm256_loadu_ps(pa.add(at)),
                        _mm256_loadu_ps(pb.add(at)),
                        *acc,
                    );
                }
                i += 32;
            }
            while i + 8 <= n {
                acc[0] = step(
                    _mm256_loadu_ps(pa.add(i)),
                    _mm256_loadu_ps(pb.add(i)),
                    acc[0],
                );
                i += 8;
            }
            let mut s = hsum(_mm256_add_ps(
                _mm256_add_ps(acc[0], acc[1]),
                _mm256_add_ps(acc[2], acc[3]),
            ));
            while i < n {
                s += tail(*pa.add(i), *pb.add(i));
                i += 1;
            }
            s
        }
    }
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

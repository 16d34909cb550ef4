//! [`product_bf16`]: a dense matrix product with bf16 operands and f32 sums, for x86_64 CPUs
//! with AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake and Sapphire Rapids and later).
//!
//! `dst [m, n] = (dst if accumulate) + lhs [m, k] · rhs [k, n]`, where every operand element is
//! first rounded to bf16 (round to nearest even, as [`round_bf16`]) and the products are summed
//! in f32. The product of two bf16 values is exact in f32, so the only errors beyond the input
//! rounding are those of an f32 sum. Subnormal operands count as zero, as the conversion
//! instruction has it. Both operands are read through (row, column) strides, so the
//! transposed views of a linear layer's backward (`Xᵀ dY`, `dY Wᵀ`) cost no copy.
//!
//! The instruction that does the work, `VDPBF16PS`, multiplies 32 pairs of bf16 and adds
//! each pair's two products into 16 f32 lanes: one instruction does the work of two f32 fused
//! multiply-adds. For each block of 512 values of `k`, `rhs` is packed once into bf16 pairs,
//! 32 columns a panel (shared by all threads); each job packs its own 12-row panels of `lhs`
//! (while the previous panel computes, the next one's memory is prefetched), and a 12 × 32
//! register tile keeps 24 accumulators in registers across the block (the tile's step is
//! written in assembly, each `lhs` pair broadcast from memory, so no accumulator spills). Jobs
//! split the rows over every rayon thread, and the columns into spans of at most 512 KiB of
//! packed `rhs`, which stay in L2 while the job's row panels stream past (and when there are
//! few rows, more finely). Packing prefetches its source 8 pairs ahead. Row-major, column-major
//! and arbitrarily strided operands all have their own packing, so no layout costs a copy.
//!
//! Where the CPU lacks AVX512-BF16 (checked once at run time, [`is_available`]) or the target
//! is not x86_64, [`product_bf16`] returns `false` and leaves `dst` untouched, and the caller
//! uses its f32 product.
//!
//! # Speed
//!
//! GFLOP/s (`2 m n k` / seconds, median of 20) on 2 cores of an AMD EPYC (Zen 4), with the
//! `gemm` crate's f32 product on the same operands as the baseline. `lhsᵀ` is `lhs` given with
//! row stride 1 (a transposed view), `rhsᵀ` likewise:
//!
//! | `m k n` | operands | bf16, 2 threads | bf16, 1 thread | f32 `gemm`, 2 threads |
//! |---|---|---|---|---|
//! | 2048 384 1152 | `lhs · rhs` (`X W`, qkv) | 366 | 196 | 209 |
//! | 2048 384 1536 | `lhs · rhs` (MLP up) | 374 | 196 | 213 |
//! | 2048 1536 384 | `lhs · rhs` (MLP down) | 363 | 193 | 212 |
//! | 2048 384 384 | `lhs · rhs` (projection) | 369 | 195 | 220 |
//! | 384 2048 1536 | `lhsᵀ · rhs` (`Xᵀ dY`) | 376 | 196 | 198 |
//! | 1536 2048 384 | `lhsᵀ · rhs` (`Xᵀ dY`) | 396 | 202 | 198 |
//! | 2048 1536 384 | `lhs · rhsᵀ` (`dY Wᵀ`) | 379 | 192 | 213 |
//! | 2048 1152 384 | `lhs · rhsᵀ` (`dY Wᵀ`) | 377 | 193 | 210 |
//! | 2048 384 1536 | `lhs · rhsᵀ` (`dY Wᵀ`) | 376 | 198 | 210 |
//! | 2048 2048 2048 | `lhs · rhs` | 369 | 190 | 204 |
//!
//! That is 1.7 to 2 times the f32 product. One thread runs every shape at 190 to 200 GFLOP/s,
//! the speed of the kernel on operands already in cache, so memory is not what bounds it; two
//! threads run 1.87 to 1.97 times one. Measured with the machine otherwise idle (a busy second
//! core halves the two-thread numbers). Measure again with
//! `cargo test --release -p memtrain --test bf16_gemm -- --ignored --nocapture`.
//!
//! The table predates the assembly tile step: with it one thread runs the `lhs · rhs` and
//! `lhs · rhsᵀ` shapes at 207 to 220 GFLOP/s (the `lhsᵀ` shapes unchanged, 188 to 200), and
//! in `memtrain bench --precision bf16 --profile` the step's bf16 products take 685 to 702 ms
//! against 720 to 748 ms before (forward `x W` shapes +10%), both measured with another
//! process busy on the second core.
//!
//! # Memory
//!
//! Transient: one block of `rhs` packed, `4 · 256 · n` bytes (`n` rounded up to 32; less
//! when `k < 512`), plus a 12 KiB row panel on each job's stack.

use std::sync::OnceLock;

/// Whether this CPU runs [`product_bf16`]: x86_64 with AVX512F, AVX512BW, AVX512VL and
/// AVX512-BF16, detected once and cached.
pub fn is_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512bf16")
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> bool {
    false
}

/// `x` rounded to the nearest bf16 (ties to even) and widened back to f32, as
/// [`product_bf16`] rounds its operands.
///
/// NaN stays NaN (quieted), values beyond bf16's largest finite round to infinity, and
/// subnormal inputs become a zero of the same sign, because the conversion instruction
/// (`VCVTNE2PS2BF16`) treats them as zero.
///
/// ```
/// use memtrain::linear::bf16::round_bf16;
/// assert_eq!(round_bf16(1.0 + 2f32.powi(-10)), 1.0);
/// assert_eq!(round_bf16(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
/// assert!(round_bf16(f32::NAN).is_nan());
/// ```
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits(bf16_bits(x) << 16)
}

/// The 16 bits of `x` as bf16, rounded as `VCVTNE2PS2BF16` rounds.
fn bf16_bits(x: f32) -> u32 {
    let bits = x.to_bits();
    if x.is_nan() {
        (bits >> 16) | 0x0040
    } else if x.is_subnormal() {
        (bits >> 16) & 0x8000
    } else {
        // Adding just under half an ulp of bf16, plus the kept lowest bit, rounds to nearest
        // with ties to even; a carry into the exponent is the correct rounding up, up to
        // infinity. No non-NaN value overflows the u32.
        (bits + 0x7fff + ((bits >> 16) & 1)) >> 16
    }
}

/// `dst [m, n] (row-major, row stride n) = (dst if accumulate) + lhs · rhs`, every operand
/// element rounded to bf16 ([`round_bf16`]) and the products summed in f32.
///
/// Operands are (slice, row stride, column stride) in elements: lhs element `(i, p)` is
/// `lhs.0[i * lhs.1 + p * lhs.2]`, rhs element `(p, j)` is `rhs.0[p * rhs.1 + j * rhs.2]`, so a
/// transposed operand is the same slice with its strides swapped. `k == 0` writes zeros (or
/// leaves `dst` as it is when accumulating).
///
/// Returns `false`, and leaves `dst` untouched, when the CPU lacks AVX512-BF16
/// ([`is_available`]) or the target is not x86_64; `true` when `dst` holds the product.
///
/// # Memory
///
/// Transient: `1 KiB · n` for `rhs` packed as bf16 (less when `k < 512`), and 12 KiB of
/// stack per job.
///
/// # Panics
///
/// When `dst` is shorter than `m n`, or an operand's largest index is outside its slice.
///
/// ```
/// use memtrain::linear::bf16::{is_available, product_bf16};
/// // [[1, 2]] · [[3], [4]] = [[11]]
/// let mut dst = [0.0];
/// if is_available() {
///     assert!(product_bf16(1, 1, 2, &mut dst, false, (&[1.0, 2.0], 2, 1), (&[3.0, 4.0], 1, 1)));
///     assert_eq!(dst, [11.0]);
/// }
/// ```
#[allow(clippy::too_many_arguments)]
pub fn product_bf16(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: (&[f32], usize, usize),
    rhs: (&[f32], usize, usize),
) -> bool {
    assert!(
        dst.len() >= m * n,
        "product_bf16: output has {} elements, expected at least {m} x {n}",
        dst.len()
    );
    assert!(
        m == 0 || k == 0 || (m - 1) * lhs.1 + (k - 1) * lhs.2 < lhs.0.len(),
        "product_bf16: lhs [{m}, {k}] with strides ({}, {}) reaches past its {} elements",
        lhs.1,
        lhs.2,
        lhs.0.len()
    );
    assert!(
        k == 0 || n == 0 || (k - 1) * rhs.1 + (n - 1) * rhs.2 < rhs.0.len(),
        "product_bf16: rhs [{k}, {n}] with strides ({}, {}) reaches past its {} elements",
        rhs.1,
        rhs.2,
        rhs.0.len()
    );
    if !is_available() {
        return false;
    }
    if m == 0 || n == 0 {
        return true;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return true;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `is_available` found every feature the kernels enable, and the asserts above
    // keep every index they form within the three slices.
    unsafe {
        x86::product(m, n, k, dst, accumulate, lhs, rhs);
    }
    true
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use rayon::prelude::*;
    use std::arch::x86_64::*;
    use std::mem::transmute;

    /// Rows of the register tile: one broadcast `lhs` pair each.
    const MR: usize = 12;
    /// Registers of 16 columns per row of the tile.
    const NV: usize = 2;
    /// Columns of the register tile.
    const NR: usize = 16 * NV;
    /// Pairs of `k` per block: a packed row panel of `lhs` (`4 MR KC` = 12 KiB) stays in a
    /// 32 KiB L1 while the 32 KiB column panels of `rhs` stream from L2.
    const KC: usize = 256;
    /// Pairs of `k` between the kernel's prefetches of the next row panel.
    const AHEAD_STEP: usize = 8;
    /// Jobs per rayon thread: more balance the threads better, fewer split `n` less.
    const JOBS_PER_THREAD: usize = 8;
    const _: () = assert!(
        MR == 12 && NV == 2,
        "the `tile!` macro spells out a 12 x 2 tile"
    );
    /// Products of fewer multiply-adds than this run on the calling thread.
    const PARALLEL: usize = 1 << 21;
    /// Bytes of packed `rhs` that one job's columns span at most: every row panel of the job
    /// streams them, so they stay in the core's L2 (1 MiB on Zen 4) beside the output.
    const COLUMNS_BYTES: usize = 512 << 10;
    /// Pairs of `k` ahead that packing prefetches where lines hold one value of `k` each
    /// (and ahead by 32 values where they hold contiguous values).
    const PACK_AHEAD: usize = 8;

    /// An operand read as `count` lines of `k` values: element `(o, p)` at
    /// `data[o * outer + p * inner]`. `lhs` is read by rows, `rhs` by columns.
    #[derive(Clone, Copy)]
    struct Lines<'a> {
        data: &'a [f32],
        outer: usize,
        inner: usize,
        count: usize,
        k: usize,
    }

    /// The output, written by many jobs at disjoint tiles.
    #[derive(Clone, Copy)]
    struct Out(*mut f32);
    // SAFETY: jobs write disjoint tiles of the output, which outlives them (rayon joins
    // every job before `product` returns).
    unsafe impl Send for Out {}
    // SAFETY: as for `Send`: no two jobs touch one element.
    unsafe impl Sync for Out {}

    impl Out {
        /// The output element at `offset` (a method, so that closures capture the whole
        /// `Out` and with it `Send` and `Sync`).
        ///
        /// # Safety
        ///
        /// `offset` is inside the output.
        unsafe fn at(self, offset: usize) -> *mut f32 {
            // SAFETY: the caller keeps `offset` inside the output.
            unsafe { self.0.add(offset) }
        }
    }

    /// See `product_bf16`; `m`, `n` and `k` are nonzero.
    ///
    /// # Safety
    ///
    /// The CPU has AVX512F, AVX512BW, AVX512VL and AVX512-BF16, and the bounds asserted by
    /// `product_bf16` hold.
    pub(super) unsafe fn product(
        m: usize,
        n: usize,
        k: usize,
        dst: &mut [f32],
        accumulate: bool,
        lhs: (&[f32], usize, usize),
        rhs: (&[f32], usize, usize),
    ) {
        let a = Lines {
            data: lhs.0,
            outer: lhs.1,
            inner: lhs.2,
            count: m,
            k,
        };
        let b = Lines {
            data: rhs.0,
            outer: rhs.2,
            inner: rhs.1,
            count: n,
            k,
        };
        let pairs = k.div_ceil(2);
        let (pm, pn) = (m.div_ceil(MR), n.div_ceil(NR));
        let threads = rayon::current_num_threads();
        let parallel = threads > 1 && m * n * k >= PARALLEL;
        let max_ncp = (COLUMNS_BYTES / (4 * NR * pairs.min(KC))).max(1);
        let (mcp, ncp) = job_shape(pm, pn, if parallel { threads } else { 1 }, max_ncp);
        let (jobs_m, jobs_n) = (pm.div_ceil(mcp), pn.div_ceil(ncp));
        // A row-major `lhs` packs each row's pairs contiguously, a plain conversion; any other
        // `lhs` packs each pair's rows contiguously.
        let rows_layout = a.inner == 1;
        let mut packed_b = vec![0u32; pn * NR * pairs.min(KC)];
        let out = Out(dst.as_mut_ptr());
        for p0 in (0..pairs).step_by(KC) {
            let kc = KC.min(pairs - p0);
            let packed_b = &mut packed_b[..pn * NR * kc];
            let pack_b = |(t, panel): (usize, &mut [u32])| {
                // SAFETY: the caller's features and bounds; `panel` is `NR kc` long.
                unsafe { pack(b, p0, kc, t * NR, NR, panel, PACK_AHEAD) }
            };
            if parallel {
                packed_b
                    .par_chunks_mut(NR * kc)
                    .enumerate()
                    .for_each(pack_b);
            } else {
                packed_b.chunks_mut(NR * kc).enumerate().for_each(pack_b);
            }
            let packed_b = &*packed_b;
            let load = accumulate || p0 > 0;
            let job = |job: usize| {
                // Consecutive jobs share columns, so the threads stream the same `rhs`.
                let (jm, jn) = (job % jobs_m, job / jobs_m);
                let (row_panels, col_panels) = (
                    jm * mcp..((jm + 1) * mcp).min(pm),
                    jn * ncp..((jn + 1) * ncp).min(pn),
                );
                // Each row panel is packed here, once per job, and stays in L1 while the
                // columns stream past; the next panel's operand is fetched meanwhile.
                let mut panel = Panel([0; MR * KC]);
                for ir in row_panels.clone() {
                    let i0 = ir * MR;
                    // SAFETY: the caller's features and bounds; the panel holds `MR KC`.
                    unsafe {
                        if rows_layout {
                            pack_rows(a, p0, kc, i0, &mut panel.0);
                        } else {
                            pack(a, p0, kc, i0, MR, &mut panel.0[..MR * kc], 0);
                        }
                    }
                    let mut ahead = Ahead::new(a, i0 + MR, p0, kc, ir + 1 < row_panels.end);
                    // Spread evenly: a burst of prefetches stalls on full miss buffers.
                    let quota = ahead
                        .total
                        .div_ceil(col_panels.len() * kc.div_ceil(AHEAD_STEP));
                    let kernel = if rows_layout {
                        kernel::<1, KC>
                    } else {
                        kernel::<MR, 1>
                    };
                    for jr in col_panels.clone() {
                        let j0 = jr * NR;
                        // SAFETY: the caller's features; the tile's rows `i0..i0 + rows`
                        // and columns `j0..j0 + cols` lie inside `dst [m, n]`, and no other
                        // job writes them.
                        unsafe {
                            kernel(
                                kc,
                                panel.0.as_ptr(),
                                packed_b[jr * NR * kc..].as_ptr(),
                                out.at(i0 * n + j0),
                                n,
                                MR.min(m - i0),
                                NR.min(n - j0),
                                load,
                                (&mut ahead, quota),
                            );
                        }
                    }
                }
            };
            if parallel {
                (0..jobs_m * jobs_n).into_par_iter().for_each(job);
            } else {
                (0..jobs_m * jobs_n).for_each(job);
            }
        }
    }

    /// One packed row panel, aligned to a cache line.
    #[repr(align(64))]
    struct Panel([u32; MR * KC]);

    /// Prefetches of the `lhs` values that the next row panel packs, spread over the current
    /// panel's kernels: memory is read while the kernels compute.
    struct Ahead {
        /// The current run of contiguous values.
        run: *const i8,
        /// Bytes between runs.
        stride: usize,
        /// Runs left, counting the current one.
        runs: usize,
        /// Bytes per run, and the offset of the next line in the current one.
        bytes: usize,
        at: usize,
        /// Cache lines in all.
        total: usize,
    }

    impl Ahead {
        /// For the row panel from line `o0`, pairs `p0..p0 + kc`; nothing unless `wanted`.
        fn new(x: Lines, o0: usize, p0: usize, kc: usize, wanted: bool) -> Ahead {
            let k0 = 2 * p0;
            let values = (2 * kc).min(x.k - k0);
            let lines = MR.min(x.count.saturating_sub(o0));
            let run = x
                .data
                .as_ptr()
                .wrapping_add(o0 * x.outer + k0 * x.inner)
                .cast();
            let (stride, runs, bytes) = if !wanted || lines == 0 {
                (0, 0, 0)
            } else if x.inner == 1 {
                (4 * x.outer, lines, 4 * values)
            } else if x.outer == 1 {
                (4 * x.inner, values, 4 * lines)
            } else {
                (0, 0, 0)
            };
            // A run that starts mid-line touches one line more than its length rounds up to.
            let total = runs * (bytes.div_ceil(64) + 1);
            Ahead {
                run,
                stride,
                runs,
                bytes,
                at: 0,
                total,
            }
        }

        /// Prefetches about the next `count` lines.
        fn issue(&mut self, count: usize) {
            for _ in 0..count {
                if self.runs == 0 {
                    return;
                }
                // The lines from the run's start, then the one holding its last byte.
                let offset = self.at.min(self.bytes - 1);
                // SAFETY: SSE, part of x86_64; a prefetch never faults, whatever the address.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(self.run.wrapping_add(offset)) };
                if self.at < self.bytes {
                    self.at += 64;
                } else {
                    self.at = 0;
                    self.runs -= 1;
                    self.run = self.run.wrapping_add(self.stride);
                }
            }
        }
    }

    /// Row and column panels per job: one job on one thread; else about `JOBS_PER_THREAD`
    /// jobs a thread, so that the last ones balance the threads, splitting rows first (each
    /// job packs its row panels, so a split of columns packs them again).
    fn job_shape(pm: usize, pn: usize, threads: usize, max_ncp: usize) -> (usize, usize) {
        let chunks = pn.div_ceil(max_ncp);
        if threads == 1 {
            return (pm, pn.div_ceil(chunks));
        }
        let want = JOBS_PER_THREAD * threads;
        let mcp = pm.div_ceil(want.div_ceil(chunks)).max(2.min(pm));
        let jobs_m = pm.div_ceil(mcp);
        let ncp = if jobs_m * chunks >= want {
            pn.div_ceil(chunks)
        } else {
            pn.div_ceil(want.div_ceil(jobs_m))
        };
        (mcp, ncp)
    }

    /// The same 512 bits as 16 `u32` lanes.
    #[target_feature(enable = "avx512f")]
    fn as_si(x: __m512bh) -> __m512i {
        // SAFETY: both types are 64 bytes of plain bits, valid for any value.
        unsafe { transmute::<__m512bh, __m512i>(x) }
    }

    /// Masks of the first `lanes` of 16 (all 16 from 16 up).
    fn first(lanes: usize) -> __mmask16 {
        if lanes >= 16 {
            0xffff
        } else {
            (1u16 << lanes) - 1
        }
    }

    /// Packs pairs `p0..p0 + kc` of lines `o0..o0 + width` into `panel [kc, width]`: entry
    /// `(q, r)` holds line `o0 + r`'s values `2 (p0 + q)` (low half) and `2 (p0 + q) + 1`
    /// (high half) as bf16. Lines past `count` and the value past an odd `k` are zero.
    ///
    /// # Safety
    ///
    /// The CPU has AVX512F, AVX512BW and AVX512-BF16; every element `(o, p)` of `x` with
    /// `o < count` and `p < k` is inside `x.data`; `panel` is `kc width` long.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
    unsafe fn pack(
        x: Lines,
        p0: usize,
        kc: usize,
        o0: usize,
        width: usize,
        panel: &mut [u32],
        dist: usize,
    ) {
        debug_assert_eq!(panel.len(), kc * width);
        let lines = width.min(x.count - o0);
        let k0 = 2 * p0;
        let values = (2 * kc).min(x.k - k0);
        let data = x.data.as_ptr();
        if x.inner == 1 {
            // Each line's values are contiguous: convert 32 values of 16 lines at a time, 16
            // pairs a line, and transpose them into 16 pairs of 16 lines.
            for r0 in (0..width).step_by(16) {
                let group = 16.min(width - r0);
                let have = 16.min(lines.saturating_sub(r0));
                for c in (0..values).step_by(32) {
                    let left = values - c;
                    if dist > 0 && c + 32 * dist < values {
                        for r in 0..have {
                            let start = (o0 + r0 + r) * x.outer + k0 + c + 32 * dist;
                            let line = data.wrapping_add(start).cast::<i8>();
                            _mm_prefetch::<_MM_HINT_T0>(line);
                            _mm_prefetch::<_MM_HINT_T0>(line.wrapping_add(64));
                        }
                    }
                    let mut rows = [_mm512_setzero_si512(); 16];
                    for (r, row) in rows.iter_mut().enumerate().take(have) {
                        let start = (o0 + r0 + r) * x.outer + k0 + c;
                        // SAFETY: lanes below `left` are elements `(o0 + r0 + r, k0 + c +
                        // lane)` of `x`, inside `data`; the masks skip the rest.
                        unsafe {
                            let lo = _mm512_maskz_loadu_ps(first(left), data.add(start));
                            let hi = if left > 16 {
                                _mm512_maskz_loadu_ps(first(left - 16), data.add(start + 16))
                            } else {
                                _mm512_setzero_ps()
                            };
                            *row = as_si(_mm512_cvtne2ps_pbh(hi, lo));
                        }
                    }
                    let cols = transpose(rows);
                    for (q, col) in cols.iter().enumerate().take(left.div_ceil(2)) {
                        // SAFETY: entries `(c / 2 + q) width + r0 ..+ group` lie in `panel`:
                        // `c / 2 + q` is a pair below `kc`.
                        unsafe {
                            _mm512_mask_storeu_epi32(
                                panel.as_mut_ptr().add((c / 2 + q) * width + r0).cast(),
                                first(group),
                                *col,
                            );
                        }
                    }
                }
            }
        } else if x.outer == 1 {
            // Each value of `k` is contiguous across lines: convert 16 lines of two values
            // of `k` at a time and interleave them into pairs.
            // SAFETY: AVX512F; the array is 64 bytes.
            let interleave = unsafe { _mm512_loadu_si512(INTERLEAVE.as_ptr().cast()) };
            for q in 0..kc {
                let (even, odd) = (k0 + 2 * q, k0 + 2 * q + 1);
                if dist > 0 && q + dist < kc {
                    let ahead = data
                        .wrapping_add((even + 2 * dist) * x.inner + o0)
                        .cast::<i8>();
                    let last = 4 * lines - 1;
                    for line in [ahead, ahead.wrapping_add(4 * x.inner)] {
                        _mm_prefetch::<_MM_HINT_T0>(line);
                        _mm_prefetch::<_MM_HINT_T0>(line.wrapping_add(last.min(64)));
                        _mm_prefetch::<_MM_HINT_T0>(line.wrapping_add(last));
                    }
                }
                for c in (0..width).step_by(16) {
                    let have = lines.saturating_sub(c);
                    // SAFETY: lanes below `have` are elements `(o0 + c + lane, even)` and
                    // `(.., odd)` of `x`, inside `data` (`odd` only when below `k`); the
                    // masks skip the rest. The store's lanes below `width - c` lie in
                    // `panel`.
                    unsafe {
                        let (lo, hi) = if have == 0 {
                            (_mm512_setzero_ps(), _mm512_setzero_ps())
                        } else {
                            let lo = _mm512_maskz_loadu_ps(
                                first(have),
                                data.add(even * x.inner + o0 + c),
                            );
                            let hi = if odd < x.k {
                                _mm512_maskz_loadu_ps(first(have), data.add(odd * x.inner + o0 + c))
                            } else {
                                _mm512_setzero_ps()
                            };
                            (lo, hi)
                        };
                        let bf = as_si(_mm512_cvtne2ps_pbh(hi, lo));
                        let pairs = _mm512_permutexvar_epi16(interleave, bf);
                        _mm512_mask_storeu_epi32(
                            panel.as_mut_ptr().add(q * width + c).cast(),
                            first(width - c),
                            pairs,
                        );
                    }
                }
            }
        } else {
            for q in 0..kc {
                let (even, odd) = (k0 + 2 * q, k0 + 2 * q + 1);
                for r in 0..width {
                    panel[q * width + r] = if r < lines {
                        let line = &x.data[(o0 + r) * x.outer..];
                        let hi = if odd < x.k {
                            super::bf16_bits(line[odd * x.inner])
                        } else {
                            0
                        };
                        super::bf16_bits(line[even * x.inner]) | hi << 16
                    } else {
                        0
                    };
                }
            }
        }
    }

    /// Packs pairs `p0..p0 + kc` of lines `o0..o0 + MR` into `panel [MR, KC]`: entry `(r, q)`
    /// holds line `o0 + r`'s values `2 (p0 + q)` (low half) and `2 (p0 + q) + 1` (high half)
    /// as bf16. Lines past `count` and the value past an odd `k` are zero; pairs past `kc` are
    /// left as they are.
    ///
    /// # Safety
    ///
    /// The CPU has AVX512F, AVX512BW and AVX512-BF16; `x.inner` is 1; every element `(o, p)`
    /// of `x` with `o < count` and `p < k` is inside `x.data`; `panel` is `MR KC` long.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
    unsafe fn pack_rows(x: Lines, p0: usize, kc: usize, o0: usize, panel: &mut [u32]) {
        debug_assert_eq!(panel.len(), MR * KC);
        let k0 = 2 * p0;
        let values = (2 * kc).min(x.k - k0);
        let data = x.data.as_ptr();
        for (r, row) in panel.chunks_exact_mut(KC).enumerate() {
            if o0 + r >= x.count {
                row[..kc].fill(0);
                continue;
            }
            let start = (o0 + r) * x.outer + k0;
            for c in (0..values).step_by(32) {
                let left = values - c;
                // SAFETY: lanes below `left` are elements `(o0 + r, k0 + c + lane)` of `x`,
                // inside `data`; the masks skip the rest. The store's lanes, the pairs
                // `c / 2..(values + 1) / 2`, lie in `row[..kc]`.
                unsafe {
                    let lo = _mm512_maskz_loadu_ps(first(left), data.add(start + c));
                    let hi = if left > 16 {
                        _mm512_maskz_loadu_ps(first(left - 16), data.add(start + c + 16))
                    } else {
                        _mm512_setzero_ps()
                    };
                    let pairs = as_si(_mm512_cvtne2ps_pbh(hi, lo));
                    _mm512_mask_storeu_epi32(
                        row.as_mut_ptr().add(c / 2).cast(),
                        first(left.div_ceil(2)),
                        pairs,
                    );
                }
            }
        }
    }

    /// The 16 × 16 transpose of 32-bit lanes: lane `j` of row `i` becomes lane `i` of row `j`.
    #[target_feature(enable = "avx512f")]
    fn transpose(rows: [__m512i; 16]) -> [__m512i; 16] {
        // Interleave 32-bit lanes of row pairs, then 64-bit lanes of pair pairs: each 128-bit
        // lane of `quads[4 g + j]` holds rows `4 g..4 g + 4` of one column, `j`, `j + 4`,
        // `j + 8` or `j + 12` by lane.
        let mut pairs = [_mm512_setzero_si512(); 16];
        for i in (0..16).step_by(2) {
            pairs[i] = _mm512_unpacklo_epi32(rows[i], rows[i + 1]);
            pairs[i + 1] = _mm512_unpackhi_epi32(rows[i], rows[i + 1]);
        }
        let mut quads = [_mm512_setzero_si512(); 16];
        for g in 0..4 {
            let (lo, hi) = (pairs[4 * g], pairs[4 * g + 1]);
            let (lo2, hi2) = (pairs[4 * g + 2], pairs[4 * g + 3]);
            quads[4 * g] = _mm512_unpacklo_epi64(lo, lo2);
            quads[4 * g + 1] = _mm512_unpackhi_epi64(lo, lo2);
            quads[4 * g + 2] = _mm512_unpacklo_epi64(hi, hi2);
            quads[4 * g + 3] = _mm512_unpackhi_epi64(hi, hi2);
        }
        // Then gather the 128-bit lanes: column `j + 4 l` takes lane `l` of
        // `quads[j]`, `quads[4 + j]`, `quads[8 + j]`, `quads[12 + j]`.
        let mut cols = [_mm512_setzero_si512(); 16];
        for j in 0..4 {
            let even_a = _mm512_shuffle_i32x4::<0x88>(quads[j], quads[4 + j]);
            let odd_a = _mm512_shuffle_i32x4::<0xdd>(quads[j], quads[4 + j]);
            let even_b = _mm512_shuffle_i32x4::<0x88>(quads[8 + j], quads[12 + j]);
            let odd_b = _mm512_shuffle_i32x4::<0xdd>(quads[8 + j], quads[12 + j]);
            cols[j] = _mm512_shuffle_i32x4::<0x88>(even_a, even_b);
            cols[j + 8] = _mm512_shuffle_i32x4::<0xdd>(even_a, even_b);
            cols[j + 4] = _mm512_shuffle_i32x4::<0x88>(odd_a, odd_b);
            cols[j + 12] = _mm512_shuffle_i32x4::<0xdd>(odd_a, odd_b);
        }
        cols
    }

    /// 16-bit lanes `[0, 16, 1, 17, ..]`: the low halves of two 16-lane vectors interleaved,
    /// so that each 32-bit lane holds one pair.
    static INTERLEAVE: [u16; 32] = {
        let mut idx = [0u16; 32];
        let mut j = 0;
        while j < 16 {
            idx[2 * j] = j as u16;
            idx[2 * j + 1] = 16 + j as u16;
            j += 1;
        }
        idx
    };

    /// One step of the register tile: row `r`'s two accumulators gain the pair at byte
    /// `r step` from `pairs`, broadcast, times the two registers of `b`. Written out because
    /// the compiler, given intrinsics, hoisted all 12 broadcasts into registers and spilled
    /// 6 accumulators to the stack on every step; here each pair is broadcast from memory by
    /// the instruction itself (`{1to16}`), so the tile's 24 accumulators and 2 `b` registers
    /// fit the 32 vector registers. Same instruction, same results.
    macro_rules! tile {
        ($acc:ident, $b:ident, $pairs:expr, $step:expr) => {
            std::arch::asm!(
                "vdpbf16ps {a00}, {b0}, dword ptr [{p}]{{1to16}}",
                "vdpbf16ps {a01}, {b1}, dword ptr [{p}]{{1to16}}",
                "vdpbf16ps {a10}, {b0}, dword ptr [{p} + {o1}]{{1to16}}",
                "vdpbf16ps {a11}, {b1}, dword ptr [{p} + {o1}]{{1to16}}",
                "vdpbf16ps {a20}, {b0}, dword ptr [{p} + {o2}]{{1to16}}",
                "vdpbf16ps {a21}, {b1}, dword ptr [{p} + {o2}]{{1to16}}",
                "vdpbf16ps {a30}, {b0}, dword ptr [{p} + {o3}]{{1to16}}",
                "vdpbf16ps {a31}, {b1}, dword ptr [{p} + {o3}]{{1to16}}",
                "vdpbf16ps {a40}, {b0}, dword ptr [{p} + {o4}]{{1to16}}",
                "vdpbf16ps {a41}, {b1}, dword ptr [{p} + {o4}]{{1to16}}",
                "vdpbf16ps {a50}, {b0}, dword ptr [{p} + {o5}]{{1to16}}",
                "vdpbf16ps {a51}, {b1}, dword ptr [{p} + {o5}]{{1to16}}",
                "vdpbf16ps {a60}, {b0}, dword ptr [{p} + {o6}]{{1to16}}",
                "vdpbf16ps {a61}, {b1}, dword ptr [{p} + {o6}]{{1to16}}",
                "vdpbf16ps {a70}, {b0}, dword ptr [{p} + {o7}]{{1to16}}",
                "vdpbf16ps {a71}, {b1}, dword ptr [{p} + {o7}]{{1to16}}",
                "vdpbf16ps {a80}, {b0}, dword ptr [{p} + {o8}]{{1to16}}",
                "vdpbf16ps {a81}, {b1}, dword ptr [{p} + {o8}]{{1to16}}",
                "vdpbf16ps {a90}, {b0}, dword ptr [{p} + {o9}]{{1to16}}",
                "vdpbf16ps {a91}, {b1}, dword ptr [{p} + {o9}]{{1to16}}",
                "vdpbf16ps {aa0}, {b0}, dword ptr [{p} + {oa}]{{1to16}}",
                "vdpbf16ps {aa1}, {b1}, dword ptr [{p} + {oa}]{{1to16}}",
                "vdpbf16ps {ab0}, {b0}, dword ptr [{p} + {ob}]{{1to16}}",
                "vdpbf16ps {ab1}, {b1}, dword ptr [{p} + {ob}]{{1to16}}",
                a00 = inout(zmm_reg) $acc[0][0],
                a01 = inout(zmm_reg) $acc[0][1],
                a10 = inout(zmm_reg) $acc[1][0],
                a11 = inout(zmm_reg) $acc[1][1],
                a20 = inout(zmm_reg) $acc[2][0],
                a21 = inout(zmm_reg) $acc[2][1],
                a30 = inout(zmm_reg) $acc[3][0],
                a31 = inout(zmm_reg) $acc[3][1],
                a40 = inout(zmm_reg) $acc[4][0],
                a41 = inout(zmm_reg) $acc[4][1],
                a50 = inout(zmm_reg) $acc[5][0],
                a51 = inout(zmm_reg) $acc[5][1],
                a60 = inout(zmm_reg) $acc[6][0],
                a61 = inout(zmm_reg) $acc[6][1],
                a70 = inout(zmm_reg) $acc[7][0],
                a71 = inout(zmm_reg) $acc[7][1],
                a80 = inout(zmm_reg) $acc[8][0],
                a81 = inout(zmm_reg) $acc[8][1],
                a90 = inout(zmm_reg) $acc[9][0],
                a91 = inout(zmm_reg) $acc[9][1],
                aa0 = inout(zmm_reg) $acc[10][0],
                aa1 = inout(zmm_reg) $acc[10][1],
                ab0 = inout(zmm_reg) $acc[11][0],
                ab1 = inout(zmm_reg) $acc[11][1],
                b0 = in(zmm_reg) $b[0],
                b1 = in(zmm_reg) $b[1],
                p = in(reg) $pairs,
                o1 = const $step,
                o2 = const 2 * $step,
                o3 = const 3 * $step,
                o4 = const 4 * $step,
                o5 = const 5 * $step,
                o6 = const 6 * $step,
                o7 = const 7 * $step,
                o8 = const 8 * $step,
                o9 = const 9 * $step,
                oa = const 10 * $step,
                ob = const 11 * $step,
                options(pure, readonly, nostack, preserves_flags),
            )
        };
    }

    /// `c [rows, cols] (row stride ldc) = (c if load) + a · b` for one register tile, from
    /// packed panels of bf16 pairs: `a [MR, kc]` with pair `q` of row `r` at `q QS + r RS`,
    /// and `b [kc, NR]` with pair `q` of column `j` at `q NR + j`. Issues `quota` of `ahead`'s
    /// prefetches every `AHEAD_STEP` pairs.
    ///
    /// # Safety
    ///
    /// The CPU has AVX512F, AVX512BW and AVX512-BF16; `a` and `b` hold those entries for
    /// every `q < kc`, `r < MR`, `j < NR`; `rows <= MR`, `cols <= NR`, and `c [rows, cols]`
    /// with stride `ldc` is writable and touched by no other thread.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn kernel<const QS: usize, const RS: usize>(
        kc: usize,
        a: *const u32,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        load: bool,
        (ahead, quota): (&mut Ahead, usize),
    ) {
        for r in 0..rows {
            // A prefetch never faults, whatever the address.
            let row = c.wrapping_add(r * ldc).cast::<i8>();
            _mm_prefetch::<_MM_HINT_T0>(row);
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(64));
        }
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        let mut bq = [_mm512_setzero_si512(); NV];
        for q in 0..kc {
            if q % AHEAD_STEP == 0 {
                ahead.issue(quota);
            }
            for (v, reg) in bq.iter_mut().enumerate() {
                // SAFETY: entries `q NR + 16 v ..+ 16` are inside `b`.
                *reg = unsafe { _mm512_loadu_si512(b.add(q * NR + 16 * v).cast()) };
            }
            let pairs = a.wrapping_add(q * QS);
            // SAFETY: entries `q QS + r RS` are inside `a`.
            unsafe {
                if RS == 1 {
                    tile!(acc, bq, pairs, 4);
                } else {
                    debug_assert_eq!(RS, KC);
                    tile!(acc, bq, pairs, 4 * KC);
                }
            }
        }
        for (r, row) in acc.iter().enumerate().take(rows) {
            for (v, &sum) in row.iter().enumerate() {
                if cols <= 16 * v {
                    break;
                }
                let mask = first(cols - 16 * v);
                // SAFETY: column `16 v` of row `r` is inside the tile, and the mask keeps
                // the lanes past `cols` untouched.
                unsafe {
                    let p = c.add(r * ldc + 16 * v);
                    let sum = if load {
                        _mm512_add_ps(sum, _mm512_maskz_loadu_ps(mask, p))
                    } else {
                        sum
                    };
                    _mm512_mask_storeu_ps(p, mask, sum);
                }
            }
        }
    }
}

//! The counting global allocator: live and peak heap bytes of the whole process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static USED: AtomicBool = AtomicBool::new(false);

/// A global allocator that forwards to [`System`] and counts live and peak bytes.
///
/// Install it once per binary; every allocation of every thread is counted, which is what
/// makes it an honest meter for the CPU backends (Flex and NdArray allocate tensors through
/// the global allocator with no pool of their own).
///
/// ```
/// #[global_allocator]
/// static ALLOC: memtrain::memory::CountingAllocator = memtrain::memory::CountingAllocator;
///
/// fn main() {
///     let before = memtrain::memory::live_bytes();
///     let v = vec![0u8; 1 << 20];
///     assert!(memtrain::memory::live_bytes() >= before + (1 << 20));
///     drop(v);
/// }
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingAllocator;

#[inline]
fn grow(n: usize) {
    let live = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

#[inline]
fn shrink(n: usize) {
    LIVE.fetch_sub(n, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's layout unchanged and only
// updates counters after the underlying call succeeded.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            USED.store(true, Ordering::Relaxed);
            grow(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            USED.store(true, Ordering::Relaxed);
            grow(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) };
        shrink(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grow(new_size - layout.size());
            } else {
                shrink(layout.size() - new_size);
            }
        }
        p
    }
}

/// Heap bytes currently allocated through [`CountingAllocator`].
pub fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// The highest value [`live_bytes`] reached since the start or the last [`reset_peak`].
pub fn peak_bytes() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Sets the peak to the current live bytes, so that [`peak_bytes`] measures from now on.
pub fn reset_peak() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// Whether this process installed [`CountingAllocator`] as its global allocator.
///
/// Measurements taken without it read zero; [`crate::train`] refuses to report them.
pub fn is_installed() -> bool {
    // Make sure at least one allocation went through the global allocator.
    let probe = std::hint::black_box(Box::new(0u64));
    drop(probe);
    USED.load(Ordering::Relaxed)
}

/// Live bytes above a starting point and the peak above it, for one measured region.
///
/// ```no_run
/// # use memtrain::memory::Region;
/// let region = Region::start();
/// let v = vec![0u8; 4096];
/// let (live, peak) = (region.live(), region.peak());
/// # drop(v);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Region {
    base: usize,
}

impl Region {
    /// Resets the peak and remembers the live bytes now.
    pub fn start() -> Self {
        reset_peak();
        Region { base: live_bytes() }
    }

    /// Live bytes now minus live bytes at [`Region::start`] (negative when memory was freed).
    pub fn live(&self) -> i64 {
        live_bytes() as i64 - self.base as i64
    }

    /// Peak live bytes since [`Region::start`], above the live bytes at the start.
    pub fn peak(&self) -> usize {
        peak_bytes().saturating_sub(self.base)
    }

    /// Live bytes at the start.
    pub fn base(&self) -> usize {
        self.base
    }
}

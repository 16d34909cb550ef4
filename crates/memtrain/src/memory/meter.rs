//! The counting global allocator (live and peak heap bytes of the whole process) and
//! [`Region`], the one way to read a peak.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static USED: AtomicBool = AtomicBool::new(false);
/// The open regions, innermost last: each with the peak the enclosing measurement had reached
/// when it started (see [`Region`]).
static REGIONS: Mutex<Vec<(u64, usize)>> = Mutex::new(Vec::new());
static NEXT_REGION: AtomicU64 = AtomicU64::new(0);

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

/// Whether this process installed [`CountingAllocator`] as its global allocator.
///
/// Without it every reading is zero: [`crate::train::Trainer`] then reports a zero
/// [`super::MemoryReport`], and `memtrain::run::bench`, whose whole point is the measurement,
/// refuses to run.
pub fn is_installed() -> bool {
    // Make sure at least one allocation went through the global allocator.
    let probe = std::hint::black_box(Box::new(0u64));
    drop(probe);
    USED.load(Ordering::Relaxed)
}

fn regions() -> std::sync::MutexGuard<'static, Vec<(u64, usize)>> {
    REGIONS.lock().unwrap_or_else(|e| e.into_inner())
}

/// One measured region: live bytes and the peak above its start, correct when regions nest.
///
/// The allocator keeps one peak counter for the current (innermost) region. Starting a region
/// saves the counter's value (the enclosing region's peak so far) and restarts it at the live
/// bytes; ending one (dropping it) folds its peak back into the enclosing region's. So a
/// rematerialization step measuring each stage inside the trainer's step region, or a profile
/// inside a bench, never resets the reading of the region around it: [`Region::peak`] of
/// every open region is the true peak since its own start.
///
/// Regions are meant to nest (end in the reverse order they started), on one thread; the
/// counters count every thread's allocations, so two threads measuring at once read each
/// other's bytes anyway. A region dropped out of order still folds its peak into the region
/// that encloses it.
///
/// ```no_run
/// # use memtrain::memory::Region;
/// let step = Region::start();
/// let stage = Region::start();
/// let v = vec![0u8; 4096];
/// assert!(stage.peak() >= 4096);
/// drop(v);
/// drop(stage);
/// assert!(step.peak() >= 4096); // the inner region did not reset the outer one
/// assert!(step.live() < 4096);
/// ```
#[derive(Debug)]
pub struct Region {
    base: usize,
    id: u64,
}

impl Region {
    /// Opens a region at the live bytes now.
    pub fn start() -> Self {
        let mut open = regions();
        let base = LIVE.load(Ordering::Relaxed);
        let enclosing = PEAK.swap(base, Ordering::Relaxed);
        let id = NEXT_REGION.fetch_add(1, Ordering::Relaxed);
        open.push((id, enclosing));
        Region { base, id }
    }

    /// Live bytes now minus live bytes at [`Region::start`] (negative when memory was freed).
    pub fn live(&self) -> i64 {
        live_bytes() as i64 - self.base as i64
    }

    /// Peak live bytes since [`Region::start`], above the live bytes at the start.
    pub fn peak(&self) -> usize {
        let open = regions();
        let counter = PEAK.load(Ordering::Relaxed);
        // The regions opened inside this one saved the peaks reached before each of them.
        let inner = match open.iter().position(|&(id, _)| id == self.id) {
            Some(i) => open[i + 1..].iter().map(|&(_, p)| p).max().unwrap_or(0),
            None => 0,
        };
        counter.max(inner).saturating_sub(self.base)
    }

    /// Live bytes at the start.
    pub fn base(&self) -> usize {
        self.base
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        let mut open = regions();
        if let Some(i) = open.iter().position(|&(id, _)| id == self.id) {
            let (_, enclosing) = open.remove(i);
            match open.get_mut(i) {
                // Dropped out of order: the next inner region now carries the enclosing peak.
                Some((_, inner_saved)) => *inner_saved = (*inner_saved).max(enclosing),
                None => {
                    PEAK.fetch_max(enclosing, Ordering::Relaxed);
                }
            }
        }
    }
}

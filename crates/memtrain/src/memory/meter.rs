//! The counting global allocator (live and peak heap bytes of the whole process), the device
//! meter (bytes in use in a CubeCL device's memory pool), and [`Region`], the one way to read
//! a peak of either.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;

use burn::tensor::Device;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static USED: AtomicBool = AtomicBool::new(false);
/// The open regions, innermost last: each with the peak the enclosing measurement had reached
/// when it started (see [`Region`]).
static REGIONS: Mutex<Vec<(u64, usize)>> = Mutex::new(Vec::new());
static NEXT_REGION: AtomicU64 = AtomicU64::new(0);
/// A device's meter: the largest bytes in use sampled since the innermost device region
/// started, the open device regions, and the device that [`sample`] reads.
static DEVICE_PEAK: AtomicUsize = AtomicUsize::new(0);
static DEVICE_REGIONS: Mutex<Vec<(u64, usize)>> = Mutex::new(Vec::new());
static SAMPLED: Mutex<Option<Device>> = Mutex::new(None);

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

fn lock<T>(m: &'static Mutex<T>) -> std::sync::MutexGuard<'static, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bytes in use in `device`'s memory pool, if it reports one (CubeCL devices: wgpu, cuda).
fn pool_bytes(device: &Device) -> Option<usize> {
    device.memory_pool_usage().map(|u| u.bytes_in_use as usize)
}

/// Live bytes where `device`'s tensors live: the bytes in use in its memory pool on a device
/// that reports one ([`crate::device::Kernels::Cube`]), else the host allocator's
/// [`live_bytes`].
pub fn live_bytes_on(device: &Device) -> usize {
    match crate::device::kernels(device) {
        crate::device::Kernels::Cube => pool_bytes(device).unwrap_or(0),
        _ => live_bytes(),
    }
}

/// Reads the bytes in use on the device that the open device regions measure and raises their
/// peak. A device's memory manager reports bytes in use but no peak, so a device region's peak
/// is the largest of such samples: memtrain's CubeCL ops call this at their entry and exit,
/// and regions at their start, reads and end. Without an open device region it does nothing.
pub fn sample() {
    let device = lock(&SAMPLED).clone();
    if let Some(bytes) = device.as_ref().and_then(pool_bytes) {
        DEVICE_PEAK.fetch_max(bytes, Ordering::Relaxed);
    }
}

/// One measured region: live bytes and the peak above its start, correct when regions nest.
///
/// On the host ([`Region::start`], or [`Region::start_on`] a CPU device) it reads the counting
/// allocator, which keeps one peak counter for the current (innermost) region. Starting a
/// region saves the counter's value (the enclosing region's peak so far) and restarts it at the
/// live bytes; ending one (dropping it) folds its peak back into the enclosing region's. So a
/// rematerialization step measuring each stage inside the trainer's step region, or a profile
/// inside a bench, never resets the reading of the region around it: [`Region::peak`] of
/// every open region is the true peak since its own start.
///
/// On a CubeCL device ([`Region::start_on`] a wgpu or cuda device) it reads the bytes in use
/// in the device's memory pool, and the peak is the largest sample ([`sample`]) since the
/// start: exact for live bytes, a lower bound of the true peak (every memtrain op and region
/// boundary samples, burn's own ops between them do not). Device regions nest the same way.
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
    /// The device whose pool the region reads; `None` for the host allocator.
    device: Option<Device>,
}

impl Region {
    /// Opens a region on the host allocator at the live bytes now.
    pub fn start() -> Self {
        Self::open(None)
    }

    /// Opens a region where `device`'s tensors live: its memory pool on a CubeCL device
    /// (wgpu, cuda), the host allocator otherwise.
    pub fn start_on(device: &Device) -> Self {
        let pooled = crate::device::kernels(device) == crate::device::Kernels::Cube
            && pool_bytes(device).is_some();
        Self::open(pooled.then(|| device.clone().without_autodiff()))
    }

    fn open(device: Option<Device>) -> Self {
        let id = NEXT_REGION.fetch_add(1, Ordering::Relaxed);
        match device {
            None => {
                let mut open = lock(&REGIONS);
                let base = LIVE.load(Ordering::Relaxed);
                let enclosing = PEAK.swap(base, Ordering::Relaxed);
                open.push((id, enclosing));
                Region {
                    base,
                    id,
                    device: None,
                }
            }
            Some(device) => {
                *lock(&SAMPLED) = Some(device.clone());
                let mut open = lock(&DEVICE_REGIONS);
                let base = pool_bytes(&device).unwrap_or(0);
                let enclosing = DEVICE_PEAK.swap(base, Ordering::Relaxed);
                open.push((id, enclosing));
                Region {
                    base,
                    id,
                    device: Some(device),
                }
            }
        }
    }

    fn counters(&self) -> (&'static AtomicUsize, &'static Mutex<Vec<(u64, usize)>>) {
        match self.device {
            None => (&PEAK, &REGIONS),
            Some(_) => (&DEVICE_PEAK, &DEVICE_REGIONS),
        }
    }

    /// Live bytes now minus live bytes at the start (negative when memory was freed).
    pub fn live(&self) -> i64 {
        let now = match &self.device {
            None => live_bytes(),
            Some(device) => {
                sample();
                pool_bytes(device).unwrap_or(0)
            }
        };
        now as i64 - self.base as i64
    }

    /// Peak live bytes since the start, above the live bytes at the start.
    pub fn peak(&self) -> usize {
        if self.device.is_some() {
            sample();
        }
        let (peak, stack) = self.counters();
        let open = lock(stack);
        let counter = peak.load(Ordering::Relaxed);
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

    /// Whether the region reads a device's memory pool rather than the host allocator.
    pub fn on_device(&self) -> bool {
        self.device.is_some()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if self.device.is_some() {
            sample();
        }
        let (peak, stack) = self.counters();
        let mut open = lock(stack);
        if let Some(i) = open.iter().position(|&(id, _)| id == self.id) {
            let (_, enclosing) = open.remove(i);
            match open.get_mut(i) {
                // Dropped out of order: the next inner region now carries the enclosing peak.
                Some((_, inner_saved)) => *inner_saved = (*inner_saved).max(enclosing),
                None => {
                    peak.fetch_max(enclosing, Ordering::Relaxed);
                }
            }
        }
        if self.device.is_some() && open.is_empty() {
            *lock(&SAMPLED) = None;
        }
    }
}

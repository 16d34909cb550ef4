//! `memory::keep_freed_memory`: freed blocks come back without page faults.
//!
//! Its own test binary: the setting is the whole process's.

/// Minor page faults of this thread so far.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn minor_faults() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `getrusage` writes a `rusage` into the pointer it is given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage failed");
    // SAFETY: initialised by the successful call above.
    unsafe { usage.assume_init() }.ru_minflt
}

/// Faults taken by writing a fresh 48 MiB block, freeing it, and doing it again.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
/// Below the 64 MiB of glibc's per-thread heaps: the test runs on a worker thread, where larger
/// blocks are mmap-ed whatever the setting.
const BLOCK: usize = 48 << 20;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn faults_of_second_round() -> i64 {
    let n = BLOCK;
    drop(std::hint::black_box(vec![1u8; n]));
    let before = minor_faults();
    drop(std::hint::black_box(vec![1u8; n]));
    minor_faults() - before
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn should_reuse_freed_pages_once_asked_to() {
    let pages = (BLOCK / 4096) as i64;
    // glibc's default: a 48 MiB block (above its largest dynamic mmap threshold, 32 MiB) is mmap-ed and unmapped on free, so every page faults
    // again.
    let by_default = faults_of_second_round();
    assert!(
        by_default > pages / 2,
        "expected glibc's default to fault the block's {pages} pages again, saw {by_default} \
         faults"
    );
    assert!(memtrain::memory::keep_freed_memory());
    let kept = faults_of_second_round();
    assert!(
        kept < pages / 100,
        "freed memory was not reused: {kept} faults writing {pages} pages a second time"
    );
}

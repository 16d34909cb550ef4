//! Keeping freed memory in the process: the allocator setting a training loop wants.

/// Tells the C allocator to keep freed memory for reuse instead of returning it to the
/// kernel, and to serve large blocks from its heap instead of fresh `mmap` calls. Returns
/// whether the setting took effect: `true` on Linux with glibc, `false` elsewhere, where it
/// does nothing.
///
/// # Why
///
/// A training step allocates and frees the same activation tensors every step, most of them
/// megabytes in size. glibc's default serves blocks above a (dynamic) threshold with `mmap`
/// and gives them back with `munmap` on free, and trims the top of its heap when more than a
/// threshold is free. Either way the next step gets fresh pages, and the kernel faults and
/// zeroes every one of them again. On the `small` GPT at batch 8 that was 1.2 million extra
/// page faults in a bench of two policies, 5 steps each, and 13-16% of plain burn's step time
/// (1.434 s against 1.217 s once the memory is kept: docs/BENCHMARKS.md, "Keeping freed
/// memory"). It also made the planner's
/// predictions miss: a block profiled alone reuses its own pages, the same block inside the
/// whole step does not.
///
/// # Cost
///
/// The process's resident memory stays at its peak: what a step freed stays mapped for the
/// next one (a training loop reaches the same peak every step anyway). The counting
/// allocator ([`super::CountingAllocator`]) measures bytes the program holds, so its
/// readings do not change. Blocks of 64 MiB or more requested from a thread other than the
/// main one are still mapped and unmapped each time: glibc's per-thread heaps hold at most
/// 64 MiB (`tests/heap.rs` checks a 48 MiB block).
///
/// Call it once at the start of `main`, before the first tensor; the `memtrain` binary does.
/// Library code never calls it on its own: the setting is the whole process's.
///
/// ```
/// let kept = memtrain::memory::keep_freed_memory();
/// assert_eq!(kept, cfg!(all(target_os = "linux", target_env = "gnu")));
/// ```
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes the allocator's tuning parameters; it is safe to
        // call at any time from any thread (glibc takes its own lock).
        let no_mmap = unsafe { libc::mallopt(libc::M_MMAP_MAX, 0) };
        // -1 disables trimming (the value is stored unsigned).
        let no_trim = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, -1) };
        no_mmap == 1 && no_trim == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

//! Facts about the machine that the memory checks of both `memtrain` (training plans) and
//! `memtrain-index` (fits and builds) read, kept in one place.

/// This machine's physical memory in bytes (`MemTotal` of `/proc/meminfo`), or `None` where
/// the system does not say (no `/proc`, an unreadable or zero value).
///
/// ```
/// if let Some(bytes) = memtrain_tt::machine::physical_bytes() {
///     assert!(bytes > 0);
/// }
/// ```
pub fn physical_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024).filter(|&b| b > 0)
}

//! `memory::trim` hands memory freed in the middle of the heap back to the system, which
//! glibc's allocator does not do by itself: resident memory after a burst of allocations,
//! freed but for a few, falls once trimmed.

use hector_operator::memory;

/// This process's resident memory, in bytes (`VmRSS` of /proc/self/status).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

const MIB: u64 = 1024 * 1024;

#[test]
fn memory_freed_inside_the_heap_goes_back_to_the_system_when_trimmed() {
    let start = rss();
    // On its own thread, so from an arena glibc never shrinks by itself; every 64th block
    // stays, so what is freed lies between blocks in use, not at the heap's end.
    let kept = std::thread::spawn(|| {
        let blocks: Vec<Vec<u8>> = (0..200_000).map(|_| vec![1u8; 1024]).collect();
        blocks
            .into_iter()
            .enumerate()
            .filter_map(|(i, b)| (i % 64 == 0).then_some(b))
            .collect::<Vec<_>>()
    })
    .join()
    .expect("allocating thread");
    let freed = rss();
    assert!(
        freed > start + 150 * MIB,
        "the burst stays resident after it is freed: {} → {} MiB",
        start / MIB,
        freed / MIB
    );
    assert!(memory::trim(), "the trim released memory");
    let trimmed = rss();
    assert!(
        trimmed + 100 * MIB < freed,
        "resident memory falls once trimmed: {} → {} MiB",
        freed / MIB,
        trimmed / MIB
    );
    assert_eq!(kept.len(), 3125);
}

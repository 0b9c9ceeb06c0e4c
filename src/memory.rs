//! Returning freed memory to the system. glibc's allocator keeps freed memory inside its heaps
//! and hands back only the free tail of the main one: after a burst (a bulk apply of thousands
//! of plugins, whose reconciles hold statuses, requests and responses in flight), the
//! operator's resident memory would stay at the burst's peak for good. Fewer arenas and a
//! periodic trim make it follow what is in use.

use std::time::Duration;

/// How often freed memory is handed back.
pub const TRIM_EVERY: Duration = Duration::from_secs(30);

/// Allocator settings for a process with few threads; call before any thread starts.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc makes an arena per contending thread, up to 8 per core, and memory freed in
        // one arena serves only that arena; the runtime's two workers and the lease thread
        // need no more than two.
        // SAFETY: mallopt only changes allocator parameters; it is called before any other
        // thread exists, as glibc asks.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Hands the free pages of every arena back to the system; returns whether any were.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes the arenas' locks itself and only releases free pages.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Trims every [`TRIM_EVERY`] until dropped; runs on the blocking pool, since a trim of a
/// large heap takes milliseconds.
pub async fn trim_periodically() {
    let mut tick = tokio::time::interval(TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}

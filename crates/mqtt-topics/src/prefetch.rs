//! Asking the memory system for a line before it is needed.

/// Starts loading `value`'s cache line into every cache level, without waiting for it
/// and without reading it into the program. A lookup calls this for the edges it will
/// probe a few levels further down, so that their misses overlap the work on the levels
/// above instead of following it. A no-op where there is no safe way to ask (targets
/// other than x86 with SSE, for now).
#[inline(always)]
pub(crate) fn read<T>(value: &T) {
    #[cfg(all(
        any(target_arch = "x86", target_arch = "x86_64"),
        target_feature = "sse"
    ))]
    safe_arch::prefetch_t0(value);
    #[cfg(not(all(
        any(target_arch = "x86", target_arch = "x86_64"),
        target_feature = "sse"
    )))]
    let _ = value;
}

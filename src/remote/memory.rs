//! Keeping the daemon's resident memory down to what it uses (glibc malloc).
//!
//! Two effects inflate RSS without this: glibc raises its mmap threshold
//! (up to 32 MiB) each time a large mmapped block is freed, after which the
//! 16 MiB receive buffer every FUSE worker thread allocates comes from the
//! heap and is zeroed page by page (tens of MiB per mount); and the many
//! small objects of a parsed TOC, once freed, stay resident in the arenas.
//!
//! The second needs fastbins off: small chunks freed into a fastbin are not
//! merged with their neighbours until `malloc_trim` consolidates them, and
//! in a thread's arena (not the main one) what consolidation merges into
//! the arena's top is never given back (`malloc_trim` trims only the main
//! arena's top). A 100k-entry TOC parsed in an arena another layer had
//! used left ~25 MB resident that way (258 B per entry instead of ~90).

/// Fixes the mmap threshold, so buffers of 8 MiB and more are always fresh
/// lazily-zeroed mappings (unused parts cost nothing) and go back to the
/// kernel when freed (chunk buffers, 4 MiB by default, stay in the heap),
/// and turns fastbins off, so freed small objects coalesce at once (the
/// per-thread cache still serves hot small allocations).
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; it is called before
    // any thread of ours exists and takes the allocator's lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_MXFAST, 0);
    }
}

/// Hands heap pages that are free back to the kernel (after a TOC was parsed).
pub fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it
    // takes the allocator's own locks and touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

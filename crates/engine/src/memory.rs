//! Peak resident memory of this process, as the OS accounts it.

/// Peak resident set size in bytes. On Linux this is `VmHWM`, the high-water mark of this
/// process's own address space: `ru_maxrss` survives `execve`, so a child started by a large
/// parent (the bench and quantize probes) would report the parent's peak as its own.
pub fn peak_rss_bytes() -> u64 {
    vm_hwm_bytes().unwrap_or_else(ru_maxrss_bytes)
}

fn vm_hwm_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// `ru_maxrss` (Linux in KiB, macOS in bytes).
fn ru_maxrss_bytes() -> u64 {
    // SAFETY: getrusage fills the struct we pass; a zeroed rusage is a valid initial value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid out-pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let v = ru.ru_maxrss.max(0) as u64;
    if cfg!(target_os = "macos") {
        v
    } else {
        v * 1024
    }
}

/// Current resident set size in bytes, where the OS tells it (Linux); 0 elsewhere.
pub fn current_rss_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    pages * page
}

/// Hands the heap's free pages back to the OS (glibc `malloc_trim`, which also drops whole free
/// pages inside the heap). Called once a model is loaded: the GGUF metadata and the tokenizer's
/// build left tens of megabytes free but resident (Qwen2.5's vocabulary and merges), scattered
/// between live allocations where a prompt's megabyte-sized buffers could not reuse them.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the OS; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

//! How much freed memory the process keeps. glibc's malloc raises its mmap threshold to the
//! size of the largest mmapped buffer freed (up to 32 MiB); from then on, buffers of that size
//! come from its heaps and stay there when freed. With large events (20 MB batches) RSS sat at
//! twice the live heap (BENCHMARKS.md: 202 MiB for a 102 MB heap). A fixed threshold, which
//! glibc reads from `GLIBC_TUNABLES` only as the process starts, sends every buffer above it
//! back to the system when freed (108 MiB in the same run). Setting it from inside needs
//! `mallopt` (unsafe), so `run` replaces itself once with the same program and arguments and
//! the variable set, unless the variable is already there: an operator's own value, even an
//! empty one, is kept.

/// What `run` sets when `GLIBC_TUNABLES` is absent: a fixed 4 MiB mmap threshold. Request
/// bodies of small events (~70 KB at 100 per batch) stay below it, so S1 is unaffected.
pub const TUNABLES: &str = "glibc.malloc.mmap_threshold=4194304";

/// The environment variable glibc reads its tunables from.
pub const VARIABLE: &str = "GLIBC_TUNABLES";

/// Re-executes this process with [`TUNABLES`] when `GLIBC_TUNABLES` is unset and the C library
/// is glibc. Returns only when it did not: `None` when nothing was needed, the error when the
/// exec failed (the relay then runs with glibc's default).
pub fn bound_retention() -> Option<std::io::Error> {
    if std::env::var_os(VARIABLE).is_some() || !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return None;
    }
    reexec()
}

#[cfg(unix)]
fn reexec() -> Option<std::io::Error> {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return Some(e),
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    // The same pid, so supervisors and `kill` see one process.
    Some(command.args(args).env(VARIABLE, TUNABLES).exec())
}

#[cfg(not(unix))]
fn reexec() -> Option<std::io::Error> {
    None
}

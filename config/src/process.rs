//! What a long-running edgeroute process asks of the system at start.

/// Raises the process's soft limit on open files to its hard limit (each
/// connection, a client's, a backend's or a proxy's long poll, takes a
/// descriptor), and answers the limit in force.
pub fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit; taking it as 1024");
            return 1024;
        }
    };
    if soft >= hard {
        return soft;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => hard,
        Err(e) => {
            tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit to its hard limit; keeping the soft one");
            soft
        }
    }
}

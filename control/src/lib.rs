//! edgeroute's control plane.
//!
//! It mirrors the topology (Route 53 and the Aurora global cluster, or a
//! file) into one versioned routing table and serves it to every proxy,
//! which long-poll it and report back the table they route on and the health
//! they measure. The failover runbook runs as actions (switchover, failover,
//! drill, drain, undrain), optionally automated. Replicas hold no state of
//! their own beyond the table they built: epochs start from the clock, so a
//! restarted control plane never hands out an older epoch.

pub mod actions;
pub mod automation;
pub mod aws;
pub mod builder;
pub mod history;
pub mod kept;
pub mod metrics;
pub mod notify;
pub mod registry;
pub mod server;
pub mod source;

/// A named pipe with no writer at `dir/name`, for tests of paths that must
/// be regular files (opening one to read would wait forever).
#[cfg(test)]
pub(crate) fn fifo(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let made = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo {}", path.display());
    path
}

//! edgeroute's control plane.
//!
//! It mirrors the topology (from a file today; Route 53 and the Aurora global
//! cluster through the same interface) into one versioned routing table and
//! serves it to every proxy, which long-poll it. Replicas hold no state of
//! their own beyond the table they built: epochs start from the clock, so a
//! restarted control plane never hands out an older epoch.

pub mod aws;
pub mod builder;
pub mod metrics;
pub mod server;
pub mod source;

//! How the proxy judges its backends itself: active probes (fall/rise),
//! passive outlier detection from live traffic, and peak-EWMA latency.
//!
//! The state machines here are pure and take the time as an argument, so
//! their rules are tested without a clock; [`prober`] drives them.

pub mod ewma;
pub mod outlier;
pub mod probe;
pub mod prober;

pub use ewma::PeakEwma;
pub use outlier::{Outlier, OutlierPolicy};
pub use probe::ProbeState;

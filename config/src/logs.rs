//! The log filter both binaries start with: `log.level`, or `RUST_LOG`
//! when set, checked by `check` as `run` and `serve` use it.

use tracing_subscriber::EnvFilter;

/// The filter the logs go through: `RUST_LOG` when set and not empty, else
/// `level` (the config's `log.level`). The error names the one at fault.
pub fn log_filter(level: &str) -> Result<EnvFilter, String> {
    match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(&v)
            .map_err(|e| format!("RUST_LOG={v:?} is not a valid log filter: {e}")),
        _ => EnvFilter::try_new(level)
            .map_err(|e| format!("log.level {level:?} is not a valid log filter: {e}")),
    }
}

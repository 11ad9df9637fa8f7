//! Logs through `tracing`, as text or JSON lines on stdout. Pingora's own
//! `log` records are bridged into the same stream.

use edgeroute_config::LogFormat;
use tracing_subscriber::EnvFilter;

/// The filter the logs go through: `RUST_LOG` when set, else `level`.
pub fn filter(level: &str) -> anyhow::Result<EnvFilter> {
    edgeroute_config::log_filter(level).map_err(anyhow::Error::msg)
}

/// `RUST_LOG`, when set, overrides the configured level.
pub fn init(format: LogFormat, level: &str) -> anyhow::Result<()> {
    let filter = filter(level)?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_ansi(ansi);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second init (the demo after its own set-up) keeps the first subscriber.
    if let Err(e) = result {
        tracing::debug!(error = %e, "logging was already set up");
    }
    Ok(())
}

//! Logs through `tracing`, as text or JSON lines on stdout. Pingora's own
//! `log` records are bridged into the same stream.

use edgeroute_config::LogFormat;
use tracing_subscriber::EnvFilter;

/// The filter the logs go through: `RUST_LOG` when set, else `level`.
pub fn filter(level: &str) -> anyhow::Result<EnvFilter> {
    Ok(match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(&v)
            .map_err(|e| anyhow::anyhow!("RUST_LOG={v:?} is not a valid log filter: {e}"))?,
        _ => EnvFilter::try_new(level)
            .map_err(|e| anyhow::anyhow!("log.level {level:?} is not a valid log filter: {e}"))?,
    })
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

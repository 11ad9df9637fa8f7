//! Logs through `tracing`, as text or JSON lines on stdout. Pingora's own
//! `log` records are bridged into the same stream.

use edgeroute_config::LogFormat;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// How many lines of one kind that clients can cause (a failed request, a
/// client breaking HTTP/2) are written each second; the rest are left out
/// and counted, so that a flood of bad requests cannot flood the log.
/// Access lines are not bounded: `log.access` turns them off.
const LINES_PER_SECOND: u64 = 10;

/// A budget of [`LINES_PER_SECOND`] for one kind of line.
pub struct Budget {
    /// The second (Unix time) the count is for, and lines written in it,
    /// as `second << 16 | written`.
    window: AtomicU64,
    /// Lines left out since the last one written.
    left_out: AtomicU64,
}

impl Budget {
    pub const fn new() -> Budget {
        Budget {
            window: AtomicU64::new(0),
            left_out: AtomicU64::new(0),
        }
    }

    /// Whether a line may be written now: `Some(n)` with the lines left
    /// out since the last one written, or `None` (the line is counted as
    /// left out).
    pub fn take(&self) -> Option<u64> {
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.take_at(second)
    }

    fn take_at(&self, second: u64) -> Option<u64> {
        let taken = self
            .window
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                if w >> 16 != second {
                    Some(second << 16 | 1)
                } else if w & 0xffff < LINES_PER_SECOND {
                    Some(w + 1)
                } else {
                    None
                }
            });
        match taken {
            Ok(_) => Some(self.left_out.swap(0, Ordering::Relaxed)),
            Err(_) => {
                self.left_out.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::{Budget, LINES_PER_SECOND};

    #[test]
    fn a_budget_writes_ten_lines_a_second_and_counts_the_rest() {
        let budget = Budget::new();
        for _ in 0..LINES_PER_SECOND {
            assert_eq!(budget.take_at(100), Some(0));
        }
        for _ in 0..5 {
            assert_eq!(budget.take_at(100), None);
        }
        // The next second's first line says how many were left out.
        assert_eq!(budget.take_at(101), Some(5));
        assert_eq!(budget.take_at(101), Some(0));
    }
}

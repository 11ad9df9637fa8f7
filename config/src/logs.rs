//! The log filter both binaries start with: `log.level`, or `RUST_LOG`
//! when set, checked by `check` as `run` and `serve` use it; and a bound
//! on the lines clients can cause.

use std::sync::atomic::{AtomicU64, Ordering};
use tracing_subscriber::EnvFilter;

/// The filter the logs go through: `RUST_LOG` when set and not empty, else
/// `level` (the config's `log.level`). The error names the one at fault.
/// Either is refused when a part of it is a bare word that is no level
/// (see `bare_target`).
pub fn log_filter(level: &str) -> Result<EnvFilter, String> {
    let (filter, whose) = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => (v, "RUST_LOG"),
        _ => (level.to_owned(), "log.level"),
    };
    // RUST_LOG may name a target bare (`RUST_LOG=edgeroute_proxy`, every
    // level of it), as it is often written: only a word that reads as a
    // misspelt level is refused there.
    let bare = bare_target(&filter).filter(|word| whose == "log.level" || reads_as_level(word));
    if let Some(word) = bare {
        let meant = meant_level(word).map_or(String::new(), |l| format!(" (did you mean {l:?}?)"));
        return Err(format!(
            "{whose} {filter:?}: {word:?} is no level{meant}; use one of trace, debug, info, warn, \
             error or off, or a filter that gives each target its level, such as \
             \"info,edgeroute=debug\" (a target of that name, at every level, is written \
             \"{word}=trace\")"
        ));
    }
    EnvFilter::try_new(&filter)
        .map_err(|e| format!("{whose} {filter:?} is not a valid log filter: {e}"))
}

/// Whether `word` reads as a level someone meant: a common name for one
/// (`warning`, `verbose`, `fatal`), or a level's name misspelt.
fn reads_as_level(word: &str) -> bool {
    meant_level(word).is_some()
}

/// The level `word` most likely means: the one a common name stands for
/// (`warning` is `warn`, `fatal` is `error`), or the one it misspells.
fn meant_level(word: &str) -> Option<&'static str> {
    const MEANT: [(&str, &str); 10] = [
        ("warning", "warn"),
        ("verbose", "debug"),
        ("information", "info"),
        ("fatal", "error"),
        ("critical", "error"),
        ("notice", "info"),
        ("all", "trace"),
        ("none", "off"),
        ("quiet", "off"),
        ("err", "error"),
    ];
    let word = word.to_ascii_lowercase();
    MEANT
        .iter()
        .find(|(name, _)| *name == word)
        .map(|(_, level)| *level)
        .or_else(|| {
            LEVELS
                .iter()
                .find(|level| strsim::damerau_levenshtein(&word, level) <= 1)
                .copied()
        })
}

/// The levels a filter may give (`0` to `5` stand for them too).
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// A part of a filter that names a target without a level, if any. The
/// filter syntax takes one as "every level of that target, nothing of the
/// others": a misspelt level (`warning`, `verbose`) would silence the logs.
fn bare_target(filter: &str) -> Option<&str> {
    filter
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .find(|part| {
            !part.contains(['=', '['])
                && !LEVELS.iter().any(|l| part.eq_ignore_ascii_case(l))
                && !matches!(*part, "0" | "1" | "2" | "3" | "4" | "5")
        })
}

#[cfg(test)]
mod level_tests {
    #[test]
    fn a_word_that_is_no_level_is_refused_and_filters_are_taken() {
        for ok in [
            "info",
            "WARN",
            "off",
            "info,edgeroute=debug",
            "edgeroute::access=off,warn",
        ] {
            assert_eq!(super::bare_target(ok), None, "{ok}");
        }
        assert_eq!(super::bare_target("3"), None, "a level by number");
        assert_eq!(super::bare_target("warning"), Some("warning"));
        // In RUST_LOG only a word that reads as a level is refused.
        for (meant, level) in [
            ("warning", "warn"),
            ("Verbose", "debug"),
            ("infoo", "info"),
            ("wran", "warn"),
            ("fatal", "error"),
        ] {
            assert!(super::reads_as_level(meant), "{meant}");
            assert_eq!(super::meant_level(meant), Some(level), "{meant}");
        }
        assert_eq!(super::meant_level("edgeroute"), None);
        for target in [
            "edgeroute",
            "edgeroute_proxy",
            "hyper",
            "h2",
            "pingora_core",
        ] {
            assert!(!super::reads_as_level(target), "{target}");
        }
        assert_eq!(super::bare_target("info, verbose"), Some("verbose"));
        assert_eq!(super::bare_target("edgeroute"), Some("edgeroute"));
    }
}

/// How many lines of one kind that clients can cause (a failed request, a
/// client breaking HTTP/2) are written each second; the rest are left out
/// and counted, so that a flood of bad requests cannot flood the log.
/// Access lines are not bounded: `log.access` turns them off.
const LINES_PER_SECOND: u64 = 10;

/// The most of a request's path a warning quotes.
const MAX_LOGGED_PATH: usize = 1024;

/// `path` as far as a warning quotes it: its first KiB, cut on a
/// character, since a client chooses it (an access line, where there is
/// one, has it whole).
pub fn logged_path(path: &str) -> &str {
    &path[..path.floor_char_boundary(MAX_LOGGED_PATH)]
}

/// The end of `text` as far as a line quotes it: its last KiB, cut on a
/// character, for a list whose last items are the ones to trust
/// (`x-forwarded-for`: a client writes its start).
pub fn logged_end(text: &str) -> &str {
    &text[text.ceil_char_boundary(text.len().saturating_sub(MAX_LOGGED_PATH))..]
}

/// A budget of [`LINES_PER_SECOND`] for one kind of line.
pub struct LogBudget {
    /// The second (Unix time) the count is for, and lines written in it,
    /// as `second << 16 | written`.
    window: AtomicU64,
    /// Lines left out since the last one written.
    left_out: AtomicU64,
}

impl LogBudget {
    pub const fn new() -> LogBudget {
        LogBudget {
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

impl Default for LogBudget {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod budget_tests {
    use super::{LINES_PER_SECOND, LogBudget};

    #[test]
    fn a_budget_writes_ten_lines_a_second_and_counts_the_rest() {
        let budget = LogBudget::new();
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

    #[test]
    fn a_list_is_quoted_from_its_last_kib_on_a_character() {
        assert_eq!(super::logged_end("1.2.3.4, 5.6.7.8"), "1.2.3.4, 5.6.7.8");
        let long = format!("{}, 9.9.9.9", "é".repeat(1000));
        let quoted = super::logged_end(&long);
        assert!(long.ends_with(quoted), "{quoted}");
        assert_eq!(quoted.len(), 1023, "cut after the character the KiB splits");
    }

    #[test]
    fn a_path_is_quoted_up_to_a_kib_on_a_character() {
        assert_eq!(super::logged_path("/short"), "/short");
        let long = format!("/{}", "é".repeat(1000));
        let quoted = super::logged_path(&long);
        assert!(
            quoted.len() <= 1024 && long.starts_with(quoted),
            "{}",
            quoted.len()
        );
        assert_eq!(
            quoted.len(),
            1023,
            "cut before the character the KiB splits"
        );
    }
}

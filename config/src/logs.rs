//! The log filter both binaries start with: `log.level`, or `RUST_LOG`
//! when set, checked by `check` as `run` and `serve` use it.

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

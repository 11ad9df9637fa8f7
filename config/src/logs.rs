//! The log filter both binaries start with: `log.level`, or `RUST_LOG`
//! when set, checked by `check` as `run` and `serve` use it.

use tracing_subscriber::EnvFilter;

/// The filter the logs go through: `RUST_LOG` when set and not empty, else
/// `level` (the config's `log.level`). The error names the one at fault.
/// Either is refused when a part of it is a bare word that is no level
/// (see [`bare_target`]).
pub fn log_filter(level: &str) -> Result<EnvFilter, String> {
    let (filter, whose) = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => (v, "RUST_LOG"),
        _ => (level.to_owned(), "log.level"),
    };
    if let Some(word) = bare_target(&filter) {
        return Err(format!(
            "{whose} {filter:?}: {word:?} is no level; use one of trace, debug, info, warn, error or off, \
             or a filter that gives each target its level, such as \"info,edgeroute=debug\" \
             (every level of one target: \"{word}=trace\")"
        ));
    }
    EnvFilter::try_new(&filter)
        .map_err(|e| format!("{whose} {filter:?} is not a valid log filter: {e}"))
}

/// A part of a filter that names a target without a level, if any. The
/// filter syntax takes one as "every level of that target, nothing of the
/// others": a misspelt level (`warning`, `verbose`) would silence the logs.
fn bare_target(filter: &str) -> Option<&str> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    filter
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .find(|part| {
            !part.contains(['=', '[']) && !LEVELS.iter().any(|l| part.eq_ignore_ascii_case(l))
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
        assert_eq!(super::bare_target("warning"), Some("warning"));
        assert_eq!(super::bare_target("info, verbose"), Some("verbose"));
        assert_eq!(super::bare_target("edgeroute"), Some("edgeroute"));
    }
}

//! TOML read into a config's shape, with errors a reader can act on: text
//! that is not TOML is told from TOML that does not fit, every unknown key
//! is named at once (with the known key it is closest to), and a number
//! where a duration or size belongs says how those are written.

use serde::de::DeserializeOwned;

/// Unknown keys named before giving up on finding more.
const MAX_UNKNOWN: usize = 20;

/// `text` as a `T`, or what is wrong with it, starting with whether it is
/// TOML at all.
pub(crate) fn parse<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    if let Err(e) = text.parse::<toml::Table>() {
        return Err(format!("it is not valid TOML: {e}"));
    }
    let mut text = text.to_owned();
    let mut unknown = Vec::new();
    // What is wrong besides the unknown keys, if anything.
    let other = loop {
        let e = match toml::from_str::<T>(&text) {
            Ok(parsed) if unknown.is_empty() => return Ok(parsed),
            Ok(_) => break None,
            Err(e) => e,
        };
        match unknown_key(&text, &e) {
            Some((line, said)) if unknown.len() < MAX_UNKNOWN => {
                unknown.push((line, said));
                // Set aside, to find the next one.
                text = set_aside(&text, line);
            }
            _ if unknown.is_empty() => {
                return Err(format!(
                    "it does not fit the config's shape: {}",
                    detail(&text, &e)
                ));
            }
            _ => break Some(detail(&text, &e)),
        }
    };
    // In the order of the file.
    unknown.sort();
    let lines: Vec<String> = unknown.into_iter().map(|(_, said)| said).collect();
    let mut message = format!(
        "it does not fit the config's shape: {} unknown key(s):\n{}",
        lines.len(),
        lines.join("\n")
    );
    if let Some(other) = other {
        message.push_str("\nand ");
        message.push_str(&other);
    }
    Err(message)
}

/// What is wrong, for an error other than an unknown key: the line and
/// the key (with its table) when the error points at a `key = value` line.
fn detail(text: &str, e: &toml::de::Error) -> String {
    let hint = if e.message().starts_with("invalid type: integer")
        || e.message().starts_with("invalid type: floating point")
    {
        " (durations, sizes and rates are written as strings: \"5s\", \"10MiB\", \"1KiB/s\")"
    } else {
        ""
    };
    let key = e.span().and_then(|span| {
        let line = line_of(text, span.start);
        let (key, _) = text.lines().nth(line)?.split_once('=')?;
        Some((line, key_path(text, line, key.trim())))
    });
    match key {
        Some((line, path)) => format!("line {}: `{path}`: {}{hint}", line + 1, e.message()),
        None => format!("{e}{hint}"),
    }
}

/// The line (from 0) that byte `at` of `text` is on.
fn line_of(text: &str, at: usize) -> usize {
    text[..at].matches('\n').count()
}

/// `key` with the table it is under at `line`, as `table.key`.
fn key_path(text: &str, line: usize, key: &str) -> String {
    let table = text
        .lines()
        .take(line)
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix("[[")
                .and_then(|l| l.strip_suffix("]]"))
                .or_else(|| l.strip_prefix('[').and_then(|l| l.strip_suffix(']')))
        })
        .last();
    table.map_or_else(|| key.to_owned(), |t| format!("{}.{key}", t.trim()))
}

/// For an unknown-key error: the line it is on, and a line saying which
/// key (with its table) and which known key it is closest to.
fn unknown_key(text: &str, e: &toml::de::Error) -> Option<(usize, String)> {
    let rest = e.message().strip_prefix("unknown field `")?;
    let (key, rest) = rest.split_once('`')?;
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let line = line_of(text, e.span()?.start);
    // The key's own line must hold nothing else, to be set aside whole.
    let own = text.lines().nth(line)?.trim_start();
    if !own.starts_with(key) {
        return None;
    }
    let path = key_path(text, line, key);
    let closest = expected
        .iter()
        .map(|k| (strsim::damerau_levenshtein(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min()
        .map(|(_, k)| format!("; did you mean `{k}`?"))
        .unwrap_or_default();
    Some((
        line,
        format!("  line {}: `{path}` is no key here{closest}", line + 1),
    ))
}

/// `text` with line `n` (from 0) made a comment.
fn set_aside(text: &str, n: usize) -> String {
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            if i == n {
                format!("# {l}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Shape {
        name: Option<String>,
        health: Option<Health>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Health {
        interval: Option<String>,
        fall: Option<u32>,
    }

    #[test]
    fn every_unknown_key_is_named_with_its_table_and_the_closest_known_one() {
        let e =
            super::parse::<Shape>("nmae = \"x\"\n[health]\nintervall = \"5s\"\nfal = 3\nzzz = 1\n")
                .unwrap_err();
        assert!(e.contains("4 unknown key(s)"), "{e}");
        assert!(
            e.contains("line 1: `nmae` is no key here; did you mean `name`?"),
            "{e}"
        );
        assert!(
            e.contains("line 3: `health.intervall` is no key here; did you mean `interval`?"),
            "{e}"
        );
        assert!(
            e.contains("line 4: `health.fal` is no key here; did you mean `fall`?"),
            "{e}"
        );
        assert!(
            e.ends_with("line 5: `health.zzz` is no key here"),
            "in the file's order: {e}"
        );
    }

    #[test]
    fn text_that_is_no_toml_is_told_from_toml_of_another_shape() {
        let e = super::parse::<Shape>("name = ").unwrap_err();
        assert!(e.starts_with("it is not valid TOML"), "{e}");
        let e = super::parse::<Shape>("[health]\ninterval = 5\n").unwrap_err();
        assert!(e.starts_with("it does not fit the config's shape"), "{e}");
        assert!(e.contains("written as strings"), "{e}");
        // Unknown keys, and then what else is wrong.
        let e = super::parse::<Shape>("[health]\ninterval = 5\nfal = 3\n").unwrap_err();
        assert!(e.contains("`health.fal` is no key here"), "{e}");
        assert!(
            e.contains("\nand line 2: `health.interval`: invalid type"),
            "{e}"
        );
        assert!(e.contains("written as strings"), "{e}");
        assert!(super::parse::<Shape>("name = \"x\"\n").is_ok());
    }
}

//! TOML read into a config's shape, with errors a reader can act on: text
//! that is not TOML is told from TOML that does not fit, every unknown key
//! is named at once (with the known key it is closest to), and a number
//! where a duration or size belongs says how those are written.

use serde::de::DeserializeOwned;

/// Unknown keys, and other problems, named before giving up on finding
/// more.
const MAX_NAMED: usize = 20;

/// `text` as a `T`, or what is wrong with it, starting with whether it is
/// TOML at all. Every unknown key is named, and every value of the wrong
/// type or form that sits on a `key = value` line of its own; the search
/// stops at the first problem of another kind, which is named last.
pub(crate) fn parse<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    if let Err(e) = text.parse::<toml::Table>() {
        return Err(format!("it is not valid TOML: {}", syntax(text, &e)));
    }
    let mut text = text.to_owned();
    let mut unknown = Vec::new();
    // Values of the wrong type or form: (line, what is wrong), and the
    // keys set aside for them, each with the header line of its table
    // (none at the top level).
    let mut values = Vec::new();
    let mut set_keys: Vec<(Option<usize>, String)> = Vec::new();
    // What is wrong besides those, if anything.
    let other = loop {
        let e = match toml::from_str::<T>(&text) {
            Ok(parsed) if unknown.is_empty() && values.is_empty() => return Ok(parsed),
            Ok(_) => break None,
            Err(e) => e,
        };
        let room = unknown.len() + values.len() < MAX_NAMED;
        if let Some((lines, said)) = unknown_key(&text, &e).filter(|_| room) {
            unknown.push((lines.start, said));
            // Set aside, to find the next one.
            text = set_aside(&text, lines);
            continue;
        }
        if !room {
            break None;
        }
        // A required key that is missing because its wrong value was set
        // aside: already named. (The same name missing from another table
        // is not.)
        if let Some(field) = missing_field(&e) {
            let table = missing_from(&text, &e);
            if set_keys
                .iter()
                .any(|(owner, k)| k == field && table.is_none_or(|t| t == *owner))
            {
                break None;
            }
        }
        match value_line(&text, &e) {
            Some((line, key)) => {
                values.push((line, detail(&text, &e)));
                set_keys.push((table_header(&text, line), key));
                text = set_aside(&text, line..line + 1);
            }
            None => break Some(detail(&text, &e)),
        }
    };
    let mut others: Vec<String> = values.into_iter().map(|(_, said)| said).collect();
    others.extend(other);
    let mut message = String::from("it does not fit the config's shape: ");
    if !unknown.is_empty() {
        // In the order of the file.
        unknown.sort();
        let lines: Vec<String> = unknown.into_iter().map(|(_, said)| said).collect();
        message.push_str(&format!(
            "{} unknown key(s):\n{}",
            lines.len(),
            lines.join("\n")
        ));
        match others.len() {
            0 => {}
            1 => message.push_str("\nand "),
            n => message.push_str(&format!("\nand {n} other problems:\n")),
        }
    } else if others.len() > 1 {
        message.push_str(&format!("{} problems:\n", others.len()));
    }
    if others.len() == 1 {
        message.push_str(&others[0]);
    } else {
        let lines: Vec<String> = others.iter().map(|said| format!("  {said}")).collect();
        message.push_str(&lines.join("\n"));
    }
    Err(message)
}

/// The field a "missing field" error names.
fn missing_field(e: &toml::de::Error) -> Option<&str> {
    e.message()
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, _)| field)
}

/// The table a "missing field" error is about, when it can be told: the
/// top level (`Some(None)`) or a section by its header's line; `None`
/// for a table it cannot place (an inline one).
fn missing_from(text: &str, e: &toml::de::Error) -> Option<Option<usize>> {
    let Some(span) = e.span().filter(|span| !span.is_empty()) else {
        return Some(None);
    };
    let line = line_of(text, span.start);
    header(text.lines().nth(line)?).map(|_| Some(line))
}

/// The line of the header of the section `line` is in; `None` at the
/// top level.
fn table_header(text: &str, line: usize) -> Option<usize> {
    text.lines()
        .take(line)
        .enumerate()
        .filter(|(_, l)| header(l).is_some())
        .map(|(i, _)| i)
        .last()
}

/// For an error in a value on a `key = value` line of its own (not a
/// header, not part of a value spread over lines): the line (from 0) and
/// the key's last part, when the text stays TOML without that line.
fn value_line(text: &str, e: &toml::de::Error) -> Option<(usize, String)> {
    if missing_field(e).is_some() {
        return None;
    }
    let span = e.span()?;
    let line = line_of(text, span.start.min(text.len()));
    let own = text.lines().nth(line)?;
    if header(own).is_some() {
        return None;
    }
    let (key, _) = own.split_once('=')?;
    let key = key.trim();
    if !key.split('.').map(str::trim).all(bare_key) {
        return None;
    }
    set_aside(text, line..line + 1)
        .parse::<toml::Table>()
        .ok()?;
    let last = key.rsplit('.').next().unwrap_or(key).trim();
    Some((line, last.to_owned()))
}

/// A TOML bare key (letters, digits, `_` and `-`), not empty.
fn bare_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A syntax error as the parser words it, with the line it is on quoted,
/// unless that line holds a URL or names one (`notify.webhook_url`,
/// however the line is mistyped): a URL may hold credentials or a secret
/// path, and this goes to logs.
fn syntax(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return e.to_string();
    };
    let at = span.start.min(text.len());
    let line = line_of(text, at);
    let own = text.lines().nth(line).unwrap_or_default();
    if !(own.contains("://") || own.to_ascii_lowercase().contains("url")) {
        return e.to_string();
    }
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    format!(
        "line {}, column {}: {} (the line is not shown: it holds a URL, which may hold a secret)",
        line + 1,
        at - start + 1,
        e.message().trim_end()
    )
}

/// What is wrong, for an error other than an unknown key: the line and
/// the key (with its table) when the error points at a `key = value` line.
fn detail(text: &str, e: &toml::de::Error) -> String {
    let message = in_words(e.message());
    let hint = if e.message().starts_with("invalid type: integer")
        || e.message().starts_with("invalid type: floating point")
    {
        " (durations, sizes, rates and status ranges are written as strings: \"5s\", \"10MiB\", \"1KiB/s\", \"200-399\")"
    } else {
        ""
    };
    if let Some(field) = missing_field(e) {
        // The error points at the table that lacks the field: a section's
        // header, an inline table's key, or nowhere (an empty span) for
        // the file itself.
        let Some(span) = e.span().filter(|span| !span.is_empty()) else {
            return format!(
                "`{field}` is required at the top level of the file (as a key or a section)"
            );
        };
        let line = line_of(text, span.start);
        let own = text.lines().nth(line).unwrap_or_default();
        return match (header(own), own.split_once('=')) {
            // A dotted header may open the table that lacks the field or
            // one under it ([server.tls] alone makes [server] too).
            (Some(name), _) if name.contains('.') => format!(
                "line {}: `{field}` is required in [{name}], or in a table above it",
                line + 1
            ),
            (Some(name), _) => format!(
                "line {}: `{name}.{field}` is required in [{name}]",
                line + 1
            ),
            // `key = { ... }`: a bare key and one inline table on the line.
            (None, Some((key, value)))
                if bare_key(key.trim())
                    && value.trim_start().starts_with('{')
                    && value.matches('{').count() == 1 =>
            {
                let path = key_path(text, line, key.trim());
                format!("line {}: `{path}.{field}` is required", line + 1)
            }
            (None, _) => format!("line {}: `{field}` is required", line + 1),
        };
    }
    // A section header of the wrong kind: `[regions]` for a list of
    // tables, `[[admin]]` for one table.
    if let Some(span) = e.span() {
        let line = line_of(text, span.start.min(text.len()));
        let own = text.lines().nth(line).unwrap_or_default();
        if let Some(name) = header(own) {
            let list = own.trim_start().starts_with("[[");
            if !list && e.message().contains("expected a sequence") {
                return format!(
                    "line {}: `[{name}]` opens one table, but `{name}` is a list of them: write \
                     `[[{name}]]` above each one",
                    line + 1
                );
            }
            if list && e.message().starts_with("invalid type: map") {
                return format!(
                    "line {}: `[[{name}]]` opens a list of tables, but `{name}` is one table: \
                     write `[{name}]`",
                    line + 1
                );
            }
        }
    }
    let key = e.span().and_then(|span| {
        let line = line_of(text, span.start);
        let (key, _) = text.lines().nth(line)?.split_once('=')?;
        Some((line, key_path(text, line, key.trim())))
    });
    match key {
        Some((line, path)) => format!("line {}: `{path}`: {message}{hint}", line + 1),
        None => format!("{}{hint}", e.to_string().replace(e.message(), &message)),
    }
}

/// A shape error with the types it names in the config's words: a
/// number type is a whole number, a section's shape is a table of keys
/// (a pair of TLS files, `{ cert, key }`).
fn in_words(message: &str) -> String {
    let Some((head, expected)) = message.rsplit_once(", expected ") else {
        return message.to_owned();
    };
    let said = match expected {
        "u8" => "a whole number from 0 to 255",
        "u16" => "a whole number from 0 to 65535",
        "u32" => "a whole number from 0 to 4294967295",
        "u64" | "usize" => "a whole number, 0 or more",
        "struct RawTls" => "{ cert = \"...\", key = \"...\" } (the certificate and key files)",
        other if other.starts_with("struct ") => {
            "a table of keys, `{ key = value, ... }` or a [section]"
        }
        _ => return message.to_owned(),
    };
    format!("{head}, expected {said}")
}

/// The line (from 0) that byte `at` of `text` is on.
fn line_of(text: &str, at: usize) -> usize {
    text[..at].matches('\n').count()
}

/// The table a header line (`[name]` or `[[name]]`, a comment after it
/// or not) opens, if it is one.
fn header(line: &str) -> Option<&str> {
    let l = line.trim();
    let (open, close) = if l.starts_with("[[") {
        ("[[", "]]")
    } else {
        ("[", "]")
    };
    let (name, rest) = l.strip_prefix(open)?.split_once(close)?;
    let rest = rest.trim_start();
    (rest.is_empty() || rest.starts_with('#')).then_some(name.trim())
}

/// `key` with the table it is under at `line`, as `table.key`, or
/// `table[1].key` in the second of a list of tables (`[[table]]`).
fn key_path(text: &str, line: usize, key: &str) -> String {
    let headers: Vec<&str> = text
        .lines()
        .take(line)
        .filter(|l| header(l).is_some())
        .collect();
    let Some(last) = headers.last() else {
        return key.to_owned();
    };
    let table = header(last).unwrap_or_default();
    if !last.trim_start().starts_with("[[") {
        return format!("{table}.{key}");
    }
    let nth = headers
        .iter()
        .filter(|l| l.trim_start().starts_with("[[") && header(l) == Some(table))
        .count();
    format!("{table}[{}].{key}", nth.saturating_sub(1))
}

/// The lines (from 0, end excluded) of the section whose header is at
/// `line`: up to the next header or the end.
fn section(text: &str, line: usize) -> std::ops::Range<usize> {
    let end = text
        .lines()
        .enumerate()
        .skip(line + 1)
        .find(|(_, l)| header(l).is_some())
        .map_or_else(|| text.lines().count(), |(i, _)| i);
    line..end
}

/// For an unknown-key error: the lines to set aside (the key's, or a whole
/// section that is no known one), and a line saying which key (with its
/// table) and which known key it is closest to.
fn unknown_key(text: &str, e: &toml::de::Error) -> Option<(std::ops::Range<usize>, String)> {
    let rest = e.message().strip_prefix("unknown field `")?;
    let (key, rest) = rest.split_once('`')?;
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let closest = |open: &str, close: &str| {
        expected
            .iter()
            .map(|k| (strsim::damerau_levenshtein(key, k), *k))
            .filter(|(d, k)| *d <= 2.max(k.len() / 3))
            .min()
            .map(|(_, k)| format!("; did you mean {open}{k}{close}?"))
            .unwrap_or_default()
    };
    let at = line_of(text, e.span()?.start);
    let own = text.lines().nth(at)?;
    // A section the file's shape has no room for: set aside whole.
    if header(own) == Some(key) {
        return Some((
            section(text, at),
            format!(
                "  line {}: {} is no section here{}",
                at + 1,
                own.trim(),
                closest("[", "]")
            ),
        ));
    }
    // The error points at the key's line, or (for a section whose keys
    // depend on one of them, such as `[table]`'s `source`) at the
    // section's header: the key is then found among its lines.
    let line = if own.trim_start().starts_with(key) {
        at
    } else if header(own).is_some() {
        section(text, at).skip(1).find(|&i| {
            text.lines().nth(i).is_some_and(|l| {
                l.trim_start()
                    .strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            })
        })?
    } else {
        return None;
    };
    let path = key_path(text, line, key);
    let advice = match closest("`", "`") {
        near if !near.is_empty() => near,
        _ => other_kind(&path).map_or_else(String::new, |kind| format!("; it is a key of {kind}")),
    };
    Some((
        line..line + 1,
        format!("  line {}: `{path}` is no key here{advice}", line + 1),
    ))
}

/// The kinds of the sections whose keys depend on one of them, and the
/// keys of each kind that no other kind has: a key of another kind than
/// the one chosen is named as such.
pub(crate) const KIND_KEYS: &[(&str, &str, &[&str])] = &[
    ("table", "source = \"file\"", &["path", "watch_interval"]),
    (
        "table",
        "source = \"control\"",
        &[
            "url",
            "token_file",
            "ca_file",
            "client_tls",
            "wait",
            "max_backoff",
            "report",
            "report_interval",
            "hold_writes_after",
        ],
    ),
    ("source", "kind = \"file\"", &["path"]),
    (
        "source",
        "kind = \"aws\"",
        &[
            "endpoint_url",
            "hosted_zone_id",
            "record_name",
            "global_cluster_id",
            "global_cluster_region",
            "health_metric",
            "lag_metric",
        ],
    ),
];

/// For `section.key`, the kind of the section the key belongs to, when it
/// is one of [`KIND_KEYS`].
fn other_kind(path: &str) -> Option<&'static str> {
    let (section, key) = path.rsplit_once('.')?;
    KIND_KEYS
        .iter()
        .find(|(s, _, keys)| *s == section && keys.contains(&key))
        .map(|(_, kind, _)| *kind)
}

/// `text` with `lines` (from 0, end excluded) made comments.
fn set_aside(text: &str, lines: std::ops::Range<usize>) -> String {
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            if lines.contains(&i) {
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

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Typed {
        fall: Option<u32>,
        tls: Option<RawTls>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct RawTls {
        cert: String,
    }

    #[test]
    fn types_are_named_in_the_configs_words() {
        let e = super::parse::<Typed>("fall = -1\n").unwrap_err();
        assert!(
            e.contains("expected a whole number from 0 to 4294967295"),
            "{e}"
        );
        let e = super::parse::<Typed>("fall = 5000000000\n").unwrap_err();
        assert!(e.contains("from 0 to 4294967295"), "{e}");
        assert!(!e.contains("u32"), "{e}");
        let e = super::parse::<Typed>("tls = true\n").unwrap_err();
        assert!(
            e.contains("expected { cert = \"...\", key = \"...\" }"),
            "{e}"
        );
        assert!(!e.contains("RawTls"), "{e}");
    }

    #[test]
    fn a_section_that_is_no_known_one_is_named_and_the_search_goes_on() {
        let e =
            super::parse::<Shape>("[helth]\nfall = 3\nother = 1\n[health]\nfal = 3\n").unwrap_err();
        assert!(e.contains("2 unknown key(s)"), "{e}");
        assert!(
            e.contains("line 1: [helth] is no section here; did you mean [health]?"),
            "{e}"
        );
        assert!(
            e.contains("line 5: `health.fal` is no key here; did you mean `fall`?"),
            "{e}"
        );
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Needs {
        name: String,
        health: NeedsFall,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct NeedsFall {
        fall: u32,
    }

    #[test]
    fn a_missing_key_is_named_with_its_section_not_the_line_before() {
        let e = super::parse::<Needs>("[health]\nfall = 3\n").unwrap_err();
        assert!(e.contains("`name` is required"), "{e}");
        let e = super::parse::<Needs>("name = \"x\"\n[health]  # probes\n").unwrap_err();
        assert!(
            e.contains("line 2: `health.fall` is required in [health]"),
            "{e}"
        );
        let e = super::parse::<Needs>("name = \"x\"\nhealth = { }\n").unwrap_err();
        assert!(e.contains("line 2: `health.fall` is required"), "{e}");
        assert!(!e.contains("top level"), "{e}");
    }

    #[derive(Debug, Deserialize)]
    #[serde(tag = "source", deny_unknown_fields)]
    #[allow(dead_code)]
    enum Source {
        #[serde(rename = "file")]
        File {
            path: String,
            watch_interval: Option<String>,
        },
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Tagged {
        table: Source,
    }

    #[test]
    fn an_unknown_key_of_a_section_chosen_by_a_tag_is_found_on_its_line() {
        let e = super::parse::<Tagged>(
            "[table]\nsource = \"file\"\npath = \"t.json\"\nwatch_intervall = \"1s\"\n",
        )
        .unwrap_err();
        assert!(
            e.contains(
                "line 4: `table.watch_intervall` is no key here; did you mean `watch_interval`?"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_key_of_another_kind_of_section_says_which_kind() {
        let e = super::parse::<Tagged>(
            "[table]\nsource = \"file\"\npath = \"t.json\"\nurl = \"http://control\"\n",
        )
        .unwrap_err();
        assert!(
            e.contains("line 4: `table.url` is no key here; it is a key of source = \"control\""),
            "{e}"
        );
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Many {
        name: String,
        fall: Option<u32>,
        rise: Option<u32>,
        ports: Option<Vec<u16>>,
        health: Option<Health>,
    }

    #[test]
    fn every_value_of_the_wrong_type_is_named_at_once() {
        let e = super::parse::<Many>(
            "name = \"x\"\nfall = -1\nrise = \"2\"\n[health]\ninterval = 5\nfall = 3\n",
        )
        .unwrap_err();
        assert!(
            e.starts_with("it does not fit the config's shape: 3 problems:\n"),
            "{e}"
        );
        for said in [
            "\n  line 2: `fall`: invalid value: integer `-1`, expected a whole number from 0 to 4294967295",
            "\n  line 3: `rise`: invalid type: string \"2\"",
            "\n  line 5: `health.interval`: invalid type: integer `5`",
        ] {
            assert!(e.contains(said), "{said} in {e}");
        }
        // With unknown keys: those first, then the others.
        let e =
            super::parse::<Many>("name = \"x\"\nfal = 3\nfall = -1\nrise = true\n").unwrap_err();
        assert!(e.contains("1 unknown key(s):\n  line 2: `fal`"), "{e}");
        assert!(
            e.contains("\nand 2 other problems:\n  line 3: `fall`"),
            "{e}"
        );
        assert!(e.ends_with("\n  line 4: `rise`: invalid type: boolean `true`, expected a whole number from 0 to 4294967295"), "{e}");
    }

    #[test]
    fn a_required_key_of_the_wrong_type_is_not_also_called_missing() {
        let e = super::parse::<Many>("name = 5\nfall = -1\n").unwrap_err();
        assert!(e.contains("2 problems"), "{e}");
        assert!(
            e.contains("line 1: `name`: invalid type: integer `5`"),
            "{e}"
        );
        assert!(!e.contains("required"), "{e}");
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Listed {
        name: String,
        region: Vec<Named>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Named {
        name: String,
        weight: Option<u32>,
    }

    #[test]
    fn a_key_missing_from_one_table_is_named_though_another_tables_was_set_aside() {
        // The top level's `name` has the wrong type; the section's is not
        // there at all: both are named.
        let e = super::parse::<Listed>("name = 5\n[[region]]\nweight = 1\n").unwrap_err();
        assert!(
            e.contains("line 1: `name`: invalid type: integer `5`"),
            "{e}"
        );
        assert!(
            e.contains("line 2: `region.name` is required in [region]"),
            "{e}"
        );
        // A section's own key set aside is not also called missing.
        let e = super::parse::<Listed>("name = \"x\"\n[[region]]\nname = 5\n").unwrap_err();
        assert!(e.contains("line 3: `region[0].name`"), "{e}");
        assert!(!e.contains("required"), "{e}");
    }

    #[test]
    fn the_search_stops_at_a_value_spread_over_lines() {
        // The wrong item is on a line of its own, with no key: it cannot
        // be set aside, so it is the last problem named.
        let e = super::parse::<Many>(
            "name = \"x\"\nfall = -1\nports = [\n  80,\n  -1,\n]\nrise = -1\n",
        )
        .unwrap_err();
        assert!(e.contains("2 problems"), "{e}");
        assert!(e.contains("line 2: `fall`"), "{e}");
        assert!(e.contains("-1"), "{e}");
        assert!(!e.contains("`rise`"), "{e}");
    }

    #[test]
    fn text_that_is_no_toml_is_told_from_toml_of_another_shape() {
        let e = super::parse::<Shape>("name = ").unwrap_err();
        assert!(e.starts_with("it is not valid TOML"), "{e}");
        // The line is quoted, unless it sets a URL, which may hold a secret.
        let e = super::parse::<Shape>("[health]\ninterval = 5s\n").unwrap_err();
        assert!(e.contains("interval = 5s"), "{e}");
        for mistyped in [
            "[notify]\nwebhook_url = \"https://u:hunter2@hooks.example.com/T0\n",
            "[notify]\nwebhook_url \"https://u:hunter2@hooks.example.com/T0\"\n",
            "[notify]\nwebhook_url: \"https://u:hunter2@hooks.example.com/T0\"\n",
            "notify = { webhook_url = \"https://u:hunter2@hooks.example.com/T0\" x }\n",
        ] {
            let e = super::parse::<Shape>(mistyped).unwrap_err();
            assert!(!e.contains("hunter2"), "{e}");
            assert!(
                e.starts_with("it is not valid TOML: line ")
                    && e.ends_with(
                        "(the line is not shown: it holds a URL, which may hold a secret)"
                    ),
                "{e}"
            );
        }
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

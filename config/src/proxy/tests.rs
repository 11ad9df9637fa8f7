use super::*;

const MINIMAL: &str = r#"
local_region = "us-east-1"

[[listeners]]
address = "127.0.0.1:8080"

[[regions]]
name = "us-east-1"
backends = ["127.0.0.1:9001"]

[[regions]]
name = "eu-west-1"
backends = ["origin.eu.example.com:443"]
tls = true

[table]
source = "file"
path = "table.json"
"#;

fn parse(text: &str) -> Result<ProxyConfig, FromTomlError> {
    ProxyConfig::from_toml(text, Path::new("/etc/edgeroute"))
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = parse(MINIMAL).expect("valid");
    assert_eq!(c.local_region_name(), "us-east-1");
    assert_eq!(c.admin.address.to_string(), "127.0.0.1:9901");
    assert_eq!(c.health.path, "/health");
    assert_eq!(c.health.fall, 3);
    assert_eq!(c.methods.reads, ["GET", "HEAD", "OPTIONS"]);
    assert_eq!(c.timeouts.connect, Duration::from_secs(1));
    assert_eq!(c.timeouts.client_idle, Duration::from_secs(75));
    assert_eq!(c.timeouts.tunnel_idle, Duration::from_secs(3600));
    assert_eq!(c.timeouts.tls_handshake, Duration::from_secs(10));
    assert_eq!(c.timeouts.request_body, Some(Duration::from_secs(20)));
    assert_eq!(c.limits.max_request_body, 10 * 1024 * 1024);
    assert_eq!(c.limits.max_client_connections, None);
    assert_eq!(c.limits.min_request_body_rate, 1024);
    assert_eq!(c.limits.idle_per_backend, 128);
    assert_eq!(c.retries.max_attempts, 3);
    assert_eq!(c.read_your_writes.window, Duration::from_secs(5));
    assert_eq!(c.read_your_writes.cookie, "edgeroute-ryw");
    assert!(!c.runtime.work_stealing);
    let TableSource::File {
        path,
        watch_interval,
    } = &c.table
    else {
        panic!("a file table source")
    };
    assert_eq!(path, Path::new("/etc/edgeroute/table.json"));
    assert_eq!(*watch_interval, Duration::from_secs(1));
    assert_eq!(
        c.regions[1].backends[0].to_string(),
        "origin.eu.example.com:443"
    );
}

#[test]
fn every_bad_field_is_named_with_its_value() {
    let text = r#"
local_region = "us-west-9"

[[listeners]]
address = "nowhere"

[admin]
address = "127.0.0.1"
max_connections = 0

[[regions]]
name = "US East"
backends = ["10.0.0.1", "10.0.0.2:80"]

[[regions]]
name = "eu-west-1"
backends = []
host = "api.example.com\r\nx-injected: 1"

[health]
interval = "0s"
timeout = "soon"
fall = 0
expected_status = "2xx"

[methods]
reads = ["GET", "G E T"]

[[routes]]
prefix = "api"
route = "anywhere"

[timeouts]
connect = "-1s"
tls_handshake = "0s"
request_body = "soon"

[limits]
max_request_body = "huge"
max_client_connections = 0
min_request_body_rate = "1KiB"
idle_per_backend = 0

[retries]
max_attempts = 0

[read_your_writes]
window = "later"
cookie = "a b"

[table]
source = "file"
path = "t.json"
watch_interval = "0ms"

[log]
format = "xml"
"#;
    let Err(FromTomlError::Invalid(errs)) = parse(text) else {
        panic!("expected field errors")
    };
    let text = errs.to_string();
    let expected = [
        ("listeners[0].address", "\"nowhere\""),
        ("admin.address", "\"127.0.0.1\""),
        ("admin.max_connections", "leave it out to serve 64 at once"),
        ("regions[0].name", "\"US East\""),
        ("regions[0].backends[0]", "\"10.0.0.1\""),
        ("regions[1].backends", "got none"),
        ("regions[1].host", "x-injected"),
        ("local_region", "\"us-west-9\""),
        ("health.interval", "\"0s\""),
        ("health.timeout", "\"soon\""),
        ("health.fall", "got 0"),
        ("health.expected_status", "\"2xx\""),
        ("methods.reads[1]", "\"G E T\""),
        ("routes[0].prefix", "\"api\""),
        ("routes[0].route", "\"anywhere\""),
        ("timeouts.connect", "\"-1s\""),
        ("timeouts.tls_handshake", "\"0s\""),
        ("timeouts.request_body", "\"soon\""),
        ("limits.max_request_body", "\"huge\""),
        ("limits.max_client_connections", "at least 1"),
        ("limits.min_request_body_rate", "\"1KiB\""),
        ("limits.idle_per_backend", "got 0"),
        ("retries.max_attempts", "got 0"),
        ("read_your_writes.window", "\"later\""),
        ("read_your_writes.cookie", "\"a b\""),
        ("table.watch_interval", "\"0ms\""),
        ("log.format", "\"xml\""),
    ];
    for (path, value) in expected {
        assert!(
            errs.iter()
                .any(|e| e.path == path && e.message.contains(value)),
            "no error for {path} mentioning {value} in:\n{text}"
        );
    }
    assert_eq!(
        errs.len(),
        expected.len(),
        "unexpected extra errors:\n{text}"
    );
}

#[test]
fn a_read_your_writes_cookie_needing_https_is_refused() {
    for name in ["__Secure-ryw", "__host-ryw"] {
        let text = format!("{MINIMAL}\n[read_your_writes]\ncookie = \"{name}\"\n");
        let Err(FromTomlError::Invalid(errs)) = parse(&text) else {
            panic!("{name} accepted")
        };
        assert!(
            errs.iter()
                .any(|e| e.path == "read_your_writes.cookie" && e.message.contains(name)),
            "{errs}"
        );
    }
}

#[test]
fn unknown_fields_and_syntax_errors_are_parse_errors_with_location() {
    let Err(FromTomlError::Parse(msg)) =
        parse(&format!("{MINIMAL}\n[health]\nintervall = \"5s\"\n"))
    else {
        panic!("expected a parse error")
    };
    assert!(msg.contains("intervall"), "{msg}");
    let Err(FromTomlError::Parse(msg)) = parse("local_region = ") else {
        panic!("expected a parse error")
    };
    assert!(msg.contains("line 1"), "{msg}");
}

#[test]
fn tls_listener_files_must_exist_and_h2c_is_plain_text_only() {
    let text = format!(
        "{MINIMAL}\n[[listeners]]\naddress = \"127.0.0.1:8443\"\nh2c = true\ntls = {{ cert = \"missing.crt\", key = \"missing.key\" }}\n"
    );
    let Err(FromTomlError::Invalid(errs)) = parse(&text) else {
        panic!("expected field errors")
    };
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "listeners[1].tls.cert",
            "listeners[1].tls.key",
            "listeners[1].h2c"
        ]
    );
}

#[test]
fn a_public_admin_listener_needs_a_token() {
    let text = MINIMAL.replace("[table]", "[admin]\naddress = \"0.0.0.0:9901\"\n\n[table]");
    let Err(FromTomlError::Invalid(errs)) = parse(&text) else {
        panic!("expected field errors")
    };
    assert_eq!(errs.len(), 1, "{errs}");
    assert!(errs.0[0].message.contains("set admin.token_file"), "{errs}");
}

#[test]
fn route_rules_match_prefix_and_methods() {
    let rule = RouteRule {
        prefix: "/search".into(),
        methods: vec!["POST".into()],
        target: RouteTarget::Nearest,
    };
    assert!(rule.matches("POST", "/search/items"));
    assert!(!rule.matches("PUT", "/search"));
    assert!(!rule.matches("POST", "/orders"));
}

/// MINIMAL with `rules`, each `(prefix, route, methods)`.
fn with_routes(rules: &[(&str, &str, &str)]) -> Result<ProxyConfig, FromTomlError> {
    let mut text = MINIMAL.to_owned();
    for (prefix, route, methods) in rules {
        text.push_str(&format!(
            "\n[[routes]]\nprefix = {prefix:?}\nroute = {route:?}\nmethods = [{methods}]\n"
        ));
    }
    parse(&text)
}

fn route_errors(rules: &[(&str, &str, &str)]) -> Vec<(String, String)> {
    match with_routes(rules) {
        Ok(_) => Vec::new(),
        Err(FromTomlError::Invalid(errs)) => errs
            .iter()
            .map(|e| (e.path.clone(), e.message.clone()))
            .collect(),
        Err(other) => panic!("{other}"),
    }
}

/// A key of the other table source is named as such: each key of one
/// source under the other's [table].
#[test]
fn a_key_of_the_other_table_source_says_so() {
    for (section, kind, keys) in crate::schema::KIND_KEYS {
        if *section != "table" {
            continue;
        }
        let other = if kind.contains("file") {
            "source = \"control\"\nurl = \"http://control\"\ntoken_file = \"token\"".to_owned()
        } else {
            "source = \"file\"\npath = \"table.json\"".to_owned()
        };
        for key in *keys {
            let text = MINIMAL.replace(
                "source = \"file\"\npath = \"table.json\"",
                &format!("{other}\n{key} = \"x\""),
            );
            let Err(FromTomlError::Parse(e)) = parse(&text) else {
                panic!("{key} was taken beside {other}")
            };
            assert!(
                e.contains(&format!(
                    "`table.{key}` is no key here; it is a key of {kind}"
                )),
                "{key}: {e}"
            );
        }
    }
}

#[test]
fn a_jitter_past_the_interval_and_500ms_is_refused() {
    let with = |health: &str| {
        let text = format!("{MINIMAL}\n[health]\ntimeout = \"100ms\"\n{health}\n");
        match parse(&text) {
            Ok(_) => Vec::new(),
            Err(FromTomlError::Invalid(errs)) => {
                errs.iter().map(|e| e.path.clone()).collect::<Vec<_>>()
            }
            Err(other) => panic!("{other}"),
        }
    };
    // The default jitter (500ms) beside a short interval; up to 500ms.
    assert!(with("interval = \"250ms\"").is_empty());
    assert!(with("interval = \"250ms\"\njitter = \"400ms\"").is_empty());
    assert_eq!(
        with("interval = \"250ms\"\njitter = \"600ms\""),
        ["health.jitter"]
    );
    assert_eq!(
        with("interval = \"5s\"\njitter = \"1h\""),
        ["health.jitter"]
    );
}

#[test]
fn a_route_prefix_requests_cannot_match_is_refused() {
    for prefix in ["/w?a=1", "/a#b", "/a b", "/a\tb"] {
        let errs = route_errors(&[(prefix, "primary", "")]);
        assert_eq!(errs.len(), 1, "{prefix:?}: {errs:?}");
        assert_eq!(errs[0].0, "routes[0].prefix");
        assert!(errs[0].1.contains("must be a path alone"), "{errs:?}");
    }
    for prefix in ["/a/../b", "/a/./b", "/a%2fb", "/a//b", "/a\\b"] {
        let errs = route_errors(&[(prefix, "local", "")]);
        assert_eq!(errs.len(), 1, "{prefix:?}: {errs:?}");
        assert!(errs[0].1.contains("must be a plain path"), "{errs:?}");
    }
    for prefix in ["/", "/api/", "/api/v1", "/a;b", "/caf%C3%A9"] {
        assert_eq!(route_errors(&[(prefix, "local", "")]), [], "{prefix:?}");
    }
}

#[test]
fn a_route_an_earlier_one_hides_is_refused() {
    // A catch-all first.
    let errs = route_errors(&[("/", "nearest", ""), ("/orders", "local", "\"GET\"")]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].0, "routes[1]");
    assert!(errs[0].1.contains("routes[0]"), "{errs:?}");
    // The same prefix twice; a wider prefix and more methods first.
    assert_eq!(
        route_errors(&[("/a", "local", ""), ("/a", "nearest", "")]).len(),
        1
    );
    assert_eq!(
        route_errors(&[
            ("/a", "local", "\"GET\", \"POST\""),
            ("/a/b", "local", "\"GET\"")
        ])
        .len(),
        1
    );
    // Each takes requests the other does not.
    for rules in [
        [("/a/b", "local", ""), ("/a", "local", "")],
        [("/a", "local", "\"GET\""), ("/a", "local", "\"POST\"")],
        [("/a", "local", "\"GET\""), ("/a/b", "local", "")],
        [("/api/", "local", ""), ("/api", "local", "")],
        [("/ab", "local", ""), ("/abc", "local", "")],
    ] {
        assert_eq!(route_errors(&rules), [], "{rules:?}");
    }
    // Whatever the targets: a primary rule after a nearest one of the same
    // cover would see only paths that are not plain.
    assert_eq!(
        route_errors(&[("/a", "primary", ""), ("/a", "local", "")]).len(),
        1
    );
    assert_eq!(
        route_errors(&[
            ("/", "nearest", "\"GET\""),
            ("/account", "primary", "\"GET\"")
        ])
        .len(),
        1
    );
}

#[test]
fn a_control_table_source_needs_a_base_url_and_a_token_file() {
    let text = MINIMAL.replace(
        "source = \"file\"\npath = \"table.json\"",
        "source = \"control\"\nurl = \"https://control:9080/v1\"\ntoken_file = \"missing-token\"\nwait = \"0s\"",
    );
    let Err(FromTomlError::Invalid(errs)) = parse(&text) else {
        panic!("expected field errors")
    };
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["table.url", "table.token_file", "table.wait"],
        "{errs}"
    );
}

/// MINIMAL with a control table source of `url` and `extra` lines, its
/// token and CA files in `dir`.
fn control_source(dir: &Path, url: &str, extra: &str) -> Result<ProxyConfig, FromTomlError> {
    std::fs::write(dir.join("token"), "secret\n").unwrap();
    std::fs::write(dir.join("ca.pem"), "").unwrap();
    let text = MINIMAL.replace(
        "source = \"file\"\npath = \"table.json\"",
        &format!("source = \"control\"\nurl = {url:?}\ntoken_file = \"token\"\n{extra}"),
    );
    ProxyConfig::from_toml(&text, dir)
}

#[test]
fn a_control_plane_is_reached_by_http_or_https_with_its_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let c = control_source(
        dir.path(),
        "https://control.internal:9080/",
        "ca_file = \"ca.pem\"",
    )
    .expect("valid");
    let TableSource::Control { url, ca_file, .. } = c.table else {
        panic!("a control source")
    };
    assert_eq!(url, "https://control.internal:9080");
    assert_eq!(ca_file, Some(dir.path().join("ca.pem")));
    // Without a CA file, the system's CAs.
    let c = control_source(dir.path(), "https://control.internal", "").expect("valid");
    assert!(matches!(
        c.table,
        TableSource::Control { ca_file: None, .. }
    ));
    let c = control_source(dir.path(), "http://control:9080", "").expect("valid");
    assert!(matches!(
        c.table,
        TableSource::Control { ca_file: None, .. }
    ));
}

#[test]
fn a_ca_file_is_refused_for_plain_http_and_when_it_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let Err(FromTomlError::Invalid(errs)) =
        control_source(dir.path(), "http://control:9080", "ca_file = \"ca.pem\"")
    else {
        panic!("a CA file for http:// was accepted")
    };
    let only: Vec<_> = errs.iter().collect();
    assert_eq!(only.len(), 1, "{errs}");
    assert_eq!(only[0].path, "table.ca_file");
    assert!(only[0].message.contains("https://"), "{errs}");
    let Err(FromTomlError::Invalid(errs)) = control_source(
        dir.path(),
        "https://control:9080",
        "ca_file = \"missing.pem\"",
    ) else {
        panic!("a missing CA file was accepted")
    };
    let first = errs.iter().next().expect("an error");
    assert_eq!(first.path, "table.ca_file");
    assert!(first.message.contains("readable PEM file"), "{errs}");
    // Credentials stay out of an https:// URL as out of an http:// one.
    let Err(FromTomlError::Invalid(errs)) =
        control_source(dir.path(), "https://user:pw@control:9080", "")
    else {
        panic!("credentials in the URL were accepted")
    };
    assert!(!errs.to_string().contains("pw"), "{errs}");
    assert!(
        errs.iter()
            .any(|e| e.path == "table.url" && e.message.contains("must not hold credentials")),
        "{errs}"
    );
}

#[test]
fn hold_writes_after_must_outlast_one_long_poll() {
    let text = MINIMAL.replace(
        "source = \"file\"\npath = \"table.json\"",
        "source = \"control\"\nurl = \"http://control:9080\"\ntoken_file = \"missing-token\"\nwait = \"30s\"\nhold_writes_after = \"10s\"",
    );
    let Err(FromTomlError::Invalid(errs)) = parse(&text) else {
        panic!("expected field errors")
    };
    let hold = errs
        .iter()
        .find(|e| e.path == "table.hold_writes_after")
        .expect("hold_writes_after named");
    assert!(
        hold.to_string().contains("longer than table.wait"),
        "{errs}"
    );
}

#[test]
fn client_connections_come_from_the_open_file_limit_unless_set() {
    let mut limits = Limits {
        max_request_body: 0,
        max_client_connections: None,
        min_request_body_rate: 0,
        idle_per_backend: 1,
    };
    // Half of what is left after the reserve.
    assert_eq!(limits.client_connections(20_000), 9_872);
    assert_eq!(limits.client_connections(1_024), 384);
    // A limit at or under the reserve still serves one at a time.
    assert_eq!(limits.client_connections(100), 1);
    assert_eq!(
        limits.client_connections(u64::MAX),
        usize::try_from((u64::MAX - 256) / 2).unwrap_or(usize::MAX)
    );
    limits.max_client_connections = Some(50);
    assert_eq!(limits.client_connections(20_000), 50);
}

fn with_body_limits(request_body: &str, rate: &str) -> ProxyConfig {
    parse(&format!(
        "{MINIMAL}\n[timeouts]\nrequest_body = {request_body:?}\n[limits]\nmin_request_body_rate = {rate:?}\n"
    ))
    .expect("valid")
}

#[test]
fn a_request_body_may_be_waited_on_for_its_grace_and_a_second_per_rate_bytes() {
    let c = with_body_limits("20s", "500B/s");
    let t = &c.timeouts;
    let rate = c.limits.min_request_body_rate;
    assert_eq!(rate, 500);
    assert_eq!(t.body_allowance(0, rate), Some(Duration::from_secs(20)));
    assert_eq!(t.body_allowance(1_000, rate), Some(Duration::from_secs(22)));
    assert_eq!(
        t.body_allowance(250, rate),
        Some(Duration::from_millis(20_500))
    );
    // A rate of 0: the whole body within the grace.
    let whole = with_body_limits("5s", "0B/s");
    assert_eq!(
        whole.timeouts.body_allowance(1 << 30, 0),
        Some(Duration::from_secs(5))
    );
    // "0s": no pace at all.
    let off = with_body_limits("0s", "1KiB/s");
    assert_eq!(off.timeouts.request_body, None);
    assert_eq!(off.timeouts.body_allowance(0, 1024), None);
    // Sizes in any unit bytesize reads; "/s" may follow a space.
    assert_eq!(
        with_body_limits("20s", "2 MiB /s")
            .limits
            .min_request_body_rate,
        2 << 20
    );
}

proptest::proptest! {
    /// More bytes never shorten a body's allowance, it is never below
    /// the grace, and no count of bytes overflows it.
    #[test]
    fn a_body_allowance_grows_with_what_arrived(
        grace_ms in 1u64..100_000,
        rate in 0u64..u64::MAX,
        a in 0u64..u64::MAX,
        b in 0u64..u64::MAX,
    ) {
        let mut c = parse(MINIMAL).expect("valid");
        c.timeouts.request_body = Some(Duration::from_millis(grace_ms));
        let (less, more) = (a.min(b), a.max(b));
        let t = &c.timeouts;
        let due_less = t.body_allowance(less, rate).expect("a pace");
        let due_more = t.body_allowance(more, rate).expect("a pace");
        proptest::prop_assert!(due_less <= due_more);
        proptest::prop_assert!(due_less >= Duration::from_millis(grace_ms));
        proptest::prop_assert!(due_more <= crate::values::MAX_DURATION);
    }
}

#[test]
fn a_client_certificate_is_for_an_https_control_plane_and_its_files_must_be_readable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client.crt"), "").unwrap();
    std::fs::write(dir.path().join("client.key"), "").unwrap();
    let pair = "client_tls = { cert = \"client.crt\", key = \"client.key\" }";
    let c = control_source(dir.path(), "https://control:9443", pair).expect("valid");
    let TableSource::Control {
        client_tls: Some(files),
        ..
    } = c.table
    else {
        panic!("a client certificate")
    };
    assert_eq!(files.cert, dir.path().join("client.crt"));
    assert_eq!(files.key, dir.path().join("client.key"));
    let Err(FromTomlError::Invalid(errs)) = control_source(dir.path(), "http://control:9080", pair)
    else {
        panic!("a client certificate for http:// was accepted")
    };
    let only: Vec<_> = errs.iter().collect();
    assert_eq!(only.len(), 1, "{errs}");
    assert_eq!(only[0].path, "table.client_tls");
    assert!(only[0].message.contains("make it https://"), "{errs}");
    let Err(FromTomlError::Invalid(errs)) = control_source(
        dir.path(),
        "https://control:9443",
        "client_tls = { cert = \"client.crt\", key = \"missing.key\" }",
    ) else {
        panic!("a missing key was accepted")
    };
    let first = errs.iter().next().expect("an error");
    assert_eq!(first.path, "table.client_tls.key");
    assert!(first.message.contains("readable PEM file"), "{errs}");
}

/// A section header of the wrong kind says which to write, and a key in
/// the second of a list of tables is named with its index.
#[test]
fn a_section_header_of_the_wrong_kind_says_which_to_write() {
    let said = |text: &str| match parse(text) {
        Err(FromTomlError::Parse(message)) => message,
        other => panic!("{other:?}"),
    };
    let e = said(
        "local_region = \"us-east-1\"\n[[listeners]]\naddress = \"127.0.0.1:8080\"\n\
         [regions]\nname = \"us-east-1\"\nbackends = [\"127.0.0.1:9001\"]\n\
         [table]\nsource = \"file\"\npath = \"table.json\"\n",
    );
    assert!(
        e.contains("`[regions]` opens one table, but `regions` is a list of them: write `[[regions]]` above each one"),
        "{e}"
    );
    let e = said(&format!(
        "{MINIMAL}\n[[admin]]\naddress = \"127.0.0.1:9901\"\n"
    ));
    assert!(
        e.contains("`[[admin]]` opens a list of tables, but `admin` is one table: write `[admin]`"),
        "{e}"
    );
    let e = said(&MINIMAL.replace("tls = true", "tls = true\nbackend = 1"));
    assert!(e.contains("`regions[1].backend` is no key here"), "{e}");
    let e = said(&MINIMAL.replace(
        "backends = [\"origin.eu.example.com:443\"]",
        "backends = \"origin.eu.example.com:443\"",
    ));
    assert!(e.contains("`regions[1].backends`"), "{e}");
}

/// No character that NFKC folding turns into something with a `.`, `/`
/// or `\` passes for plain, raw or percent-encoded: every code point.
#[test]
fn no_character_that_folds_into_a_dot_or_slash_is_plain() {
    let nfkc = icu_normalizer::ComposingNormalizerBorrowed::new_nfkc();
    let mut folding = 0;
    for c in (0x80..=0x10FFFF).filter_map(char::from_u32) {
        let mut one = [0u8; 4];
        let one = c.encode_utf8(&mut one);
        if !nfkc.normalize(one).contains(['.', '/', '\\']) {
            continue;
        }
        folding += 1;
        let encoded: String = one.bytes().map(|b| format!("%{b:02x}")).collect();
        for path in [format!("/search/{c}/x"), format!("/search/{encoded}/x")] {
            assert!(!plain_path(&path), "{path} ({:04X})", c as u32);
        }
    }
    // ．, ‥, ︰, ℀, ℅ among them.
    assert!(folding >= 5, "{folding}");
}

#[test]
fn admin_connections_are_bounded_by_the_descriptors_kept_apart() {
    let at = |n: u64| parse(&format!("{MINIMAL}\n[admin]\nmax_connections = {n}\n"));
    assert_eq!(at(256).expect("valid").admin.max_connections, 256);
    let Err(FromTomlError::Invalid(errs)) = at(257) else {
        panic!("257 taken")
    };
    assert!(
        errs.to_string()
            .contains("admin.max_connections: must be at most 256"),
        "{errs}"
    );
}

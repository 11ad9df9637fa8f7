//! `edgeroute-proxy check` names every bad field of a broken config.

use edgeroute_tests::proxy::proxy_bin;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A valid config in `dir` with one region and the table file `table.json`
/// (left to the caller to write).
fn good_config(dir: &Path) -> std::path::PathBuf {
    let config = dir.join("good.toml");
    std::fs::write(
        &config,
        "local_region = \"us-east-1\"\n[[listeners]]\naddress = \"127.0.0.1:8080\"\n\
         [[regions]]\nname = \"us-east-1\"\nbackends = [\"127.0.0.1:9000\"]\n\
         [table]\nsource = \"file\"\npath = \"table.json\"\n",
    )
    .unwrap();
    config
}

/// Fails naming the first of `expected` that `stderr` does not hold.
fn assert_mentions(stderr: &str, expected: &[&str]) {
    for expected in expected {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

/// What `cmd` printed on its standard error, once it has failed.
fn refused(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "it succeeded:\n{stderr}");
    stderr
}

/// `BIN check --config CONFIG`, to run with `.output()`.
fn check(bin: &Path, config: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["check", "--config"]).arg(config);
    cmd
}

#[test]
fn check_names_every_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broken.toml");
    std::fs::write(
        &config,
        r#"
local_region = "us-west-9"

[[listeners]]
address = "0.0.0.0:80:80"

[[regions]]
name = "us-east-1"
backends = ["10.0.0.1"]

[health]
fall = 0
timeout = "forever"

[[routes]]
prefix = "/x"
route = "sideways"

[table]
source = "file"
path = "table.json"
"#,
    )
    .unwrap();
    let stderr = refused(&mut check(&proxy_bin(), &config));
    assert_mentions(
        &stderr,
        &[
            "listeners[0].address: must be an ip:port address such as \"0.0.0.0:8080\", got \"0.0.0.0:80:80\"",
            "regions[0].backends[0]: must be host:port",
            "\"10.0.0.1\"",
            "local_region: must name one of the configured regions [\"us-east-1\"], got \"us-west-9\"",
            "health.fall: must be at least 1, got 0",
            "health.timeout: must be a duration",
            "\"forever\"",
            "routes[0].route: must be one of \"local\", \"primary\", \"nearest\", got \"sideways\"",
            "6 invalid field(s)",
        ],
    );
}

#[test]
fn check_accepts_a_good_config_and_validates_its_table() {
    let dir = tempfile::tempdir().unwrap();
    let config = good_config(dir.path());
    let table = dir.path().join("table.json");
    std::fs::write(&table, r#"{"epoch":1,"version":1,"primary_region":"us-east-1","failover_in_progress":false,"regions":[{"name":"us-east-1","state":"active"}]}"#).unwrap();
    let out = check(&proxy_bin(), &config).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));

    std::fs::write(&table, r#"{"epoch":1,"version":1,"primary_region":"eu-west-1","failover_in_progress":false,"regions":[{"name":"eu-west-1","state":"active"}]}"#).unwrap();
    let stderr = refused(&mut check(&proxy_bin(), &config));
    assert!(stderr.contains("eu-west-1"), "{stderr}");

    // A key no field takes is ignored (a newer control plane's table may
    // carry more), and warned of: written by hand, it is likely misspelt.
    std::fs::write(&table, r#"{"epoch":1,"version":1,"primary_region":"us-east-1","failover_in_progress":false,"regions":[{"name":"us-east-1","state":"active","wieght":5}]}"#).unwrap();
    let out = check(&proxy_bin(), &config).output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: table.path: ")
            && stderr.contains("`regions[0].wieght` is no key of a routing table and is ignored"),
        "{stderr}"
    );
    // A required key misspelt is no table: writes would go on during a
    // failover the table holds them for.
    std::fs::write(&table, r#"{"epoch":1,"version":1,"primary_region":"us-east-1","failover_in_progres":true,"regions":[{"name":"us-east-1","state":"active"}]}"#).unwrap();
    let stderr = refused(&mut check(&proxy_bin(), &config));
    assert!(
        stderr.contains("missing field `failover_in_progress`")
            && stderr.contains("(keys no field takes: failover_in_progres)"),
        "{stderr}"
    );
}

/// A config read from a pipe (`--config <(...)`, here the standard
/// input) takes its relative paths from the working directory: the
/// pipe's own folder (`/dev/fd`) holds none of its files.
#[test]
fn a_piped_config_takes_relative_paths_from_the_working_directory() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(good_config(dir.path())).unwrap();
    std::fs::write(
        dir.path().join("table.json"),
        r#"{"epoch":1,"version":1,"primary_region":"us-east-1","failover_in_progress":false,"regions":[{"name":"us-east-1","state":"active"}]}"#,
    )
    .unwrap();
    let mut child = check(&proxy_bin(), Path::new("/dev/stdin"))
        .current_dir(dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("primary us-east-1"));
}

/// Once the fields are valid, `check` names every problem of the parts it
/// loads in one run: a listener's certificate, the log filter, the table.
#[test]
fn check_names_the_problems_of_every_part_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), "not PEM\n").unwrap();
    std::fs::write(dir.path().join("key.pem"), "not PEM\n").unwrap();
    let config = dir.path().join("parts.toml");
    std::fs::write(
        &config,
        "local_region = \"us-east-1\"\n\
         [[listeners]]\naddress = \"127.0.0.1:8443\"\ntls = { cert = \"cert.pem\", key = \"key.pem\" }\n\
         [[regions]]\nname = \"us-east-1\"\nbackends = [\"127.0.0.1:9000\"]\n\
         [table]\nsource = \"file\"\npath = \"missing.json\"\n\
         [log]\nlevel = \"verbose\"\n",
    )
    .unwrap();
    let stderr = refused(check(&proxy_bin(), &config).env_remove("RUST_LOG"));
    assert_mentions(
        &stderr,
        &[
            "listeners[0].tls.cert",
            "log.level \"verbose\": \"verbose\" is no level",
            "table.path: cannot read",
        ],
    );
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let stderr =
        refused(Command::new(proxy_bin()).args(["run", "--config", "/nonexistent/edgeroute.toml"]));
    assert!(
        stderr.contains("cannot read config file /nonexistent/edgeroute.toml"),
        "{stderr}"
    );
}

#[test]
fn the_documented_example_config_is_valid() {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples/edgeroute.toml");
    let out = check(&proxy_bin(), &example).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The control plane's `check` says what table the source gives: its
/// primary, and writes held; a source that names no primary is warned of
/// (every write would be refused), and one that leaves the key out is a
/// malformed topology.
#[test]
fn control_check_says_what_table_the_source_gives() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("control.toml");
    std::fs::write(
        &config,
        "[source]\nkind = \"file\"\npath = \"topology.json\"\n",
    )
    .unwrap();
    let bin = edgeroute_tests::proxy::workspace_bin("edgeroute-control", "EDGEROUTE_CONTROL_BIN");
    let run = |topology: &str| {
        std::fs::write(dir.path().join("topology.json"), topology).unwrap();
        let out = check(&bin, &config)
            .env(
                "EDGEROUTE_CONTROL_TOKEN",
                "0f4c2a9e1b7d3c5a8e6f0b2d4c6a8e0f",
            )
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = run(
        r#"{"primary_region": "eu-west-1", "failover_in_progress": false, "regions": [{"name": "us-east-1"}, {"name": "eu-west-1"}]}"#,
    );
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(": ok (2 regions, primary eu-west-1)"),
        "{stdout}"
    );
    assert!(!stderr.contains("warning"), "{stderr}");
    // A server other hosts reach, without TLS, is warned of.
    std::fs::write(
        &config,
        "[server]\naddress = \"0.0.0.0:9080\"\n[source]\nkind = \"file\"\npath = \"topology.json\"\n",
    )
    .unwrap();
    let (ok, _, open) = run(
        r#"{"primary_region": "eu-west-1", "failover_in_progress": false, "regions": [{"name": "eu-west-1"}]}"#,
    );
    assert!(ok, "{open}");
    assert!(
        open.contains("warning: server.address 0.0.0.0:9080 is reachable from other hosts and server.tls is not set"),
        "{open}"
    );
    std::fs::write(
        &config,
        "[source]\nkind = \"file\"\npath = \"topology.json\"\n",
    )
    .unwrap();
    // A token easy to guess is warned of, and not shown.
    let out = check(&bin, &config)
        .env("EDGEROUTE_CONTROL_TOKEN", "t0ken")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let weak = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{weak}");
    assert!(
        weak.contains("warning: EDGEROUTE_CONTROL_TOKEN: the token has fewer than 16 characters")
            && !weak.contains("t0ken"),
        "{weak}"
    );
    let (ok, stdout, stderr) = run(
        r#"{"primary_region": null, "failover_in_progress": true, "regions": [{"name": "us-east-1"}]}"#,
    );
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("primary none, failover in progress: writes held)"),
        "{stdout}"
    );
    assert!(
        stderr.contains("warning: the source names no primary region"),
        "{stderr}"
    );
    let (ok, _, stderr) =
        run(r#"{"failover_in_progress": false, "regions": [{"name": "us-east-1"}]}"#);
    assert!(!ok);
    assert!(
        stderr.contains("missing field `primary_region`"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(
        r#"{"primary_region": null, "failover_in_progres": true, "regions": [{"name": "us-east-1"}]}"#,
    );
    assert!(!ok);
    assert!(
        stderr.contains("unknown field `failover_in_progres`"),
        "{stderr}"
    );
}

/// An AWS source whose endpoint does not answer is named with the
/// setting that points at it.
#[test]
fn control_check_names_an_endpoint_that_does_not_answer() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = edgeroute_tests::proxy::free_addr();
    let config = dir.path().join("control.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nkind = \"aws\"\nhosted_zone_id = \"Z1\"\nrecord_name = \"api.example.com\"\n\
             global_cluster_id = \"g\"\nglobal_cluster_region = \"us-east-1\"\n\
             endpoint_url = \"http://{nowhere}\"\n"
        ),
    )
    .unwrap();
    control_check_stops_at(&config, nowhere, Some("t0ken"));
}

/// Runs the control plane's `check` on `config`, whose AWS source's
/// `endpoint_url` is `nowhere`, with dummy credentials (and `token` as the
/// control token, when given): it must stop there, naming the setting.
fn control_check_stops_at(config: &Path, nowhere: std::net::SocketAddr, token: Option<&str>) {
    let bin = edgeroute_tests::proxy::workspace_bin("edgeroute-control", "EDGEROUTE_CONTROL_BIN");
    let mut cmd = check(&bin, config);
    if let Some(token) = token {
        cmd.env("EDGEROUTE_CONTROL_TOKEN", token);
    }
    let stderr = refused(
        cmd.env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_MAX_ATTEMPTS", "1")
            .env_remove("RUST_LOG"),
    );
    assert!(
        stderr.contains(&format!(
            "the endpoint is source.endpoint_url, http://{nowhere}: is it up?"
        )),
        "{stderr}"
    );
}

#[test]
fn the_documented_control_plane_example_is_valid() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/examples/control-file.toml");
    let bin = edgeroute_tests::proxy::workspace_bin("edgeroute-control", "EDGEROUTE_CONTROL_BIN");
    let out = Command::new(&bin)
        .args(["show", "--config"])
        .arg(&example)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(table["primary_region"], "us-east-1");
    assert_eq!(table["regions"].as_array().unwrap().len(), 3);
}

#[test]
fn a_broken_control_config_names_its_fields() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("control.toml");
    std::fs::write(
        &config,
        "[server]\naddress = \"nowhere\"\n[source]\nkind = \"aws\"\nhosted_zone_id = \"\"\nrecord_name = \"api.example.com\"\nglobal_cluster_id = \"g\"\nglobal_cluster_region = \"Mars\"\nlag_metric = false\n\
         [actions]\ntimeout = \"soon\"\ncontrol_url = \"ftp://x\"\n\
         [automation]\nenabled = true\nafter = \"0s\"\n\
         [notify]\nsns_topic_arn = \"arn:aws:sqs:us-east-1:1:q\"\nwebhook_url = \"hooks.example.com\"\nwebhook_token_file = \"missing\"\n",
    )
    .unwrap();
    let bin = edgeroute_tests::proxy::workspace_bin("edgeroute-control", "EDGEROUTE_CONTROL_BIN");
    let stderr = refused(&mut check(&bin, &config));
    for field in [
        "server.address",
        "server.token_file",
        "source.hosted_zone_id",
        "source.global_cluster_region",
        "actions.timeout",
        "actions.control_url",
        "automation.enabled: needs source.lag_metric",
        "automation.after",
        "notify.sns_topic_arn",
        "notify.webhook_url",
        "notify.webhook_token_file",
    ] {
        assert!(stderr.contains(field), "{field} missing in:\n{stderr}");
    }
}

#[test]
fn the_control_token_may_come_from_the_environment_and_the_log_filter_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples/topology.json");
    let config = dir.path().join("control.toml");
    std::fs::write(
        &config,
        format!("[source]\nkind = \"file\"\npath = {example:?}\n"),
    )
    .unwrap();
    let bin = edgeroute_tests::proxy::workspace_bin("edgeroute-control", "EDGEROUTE_CONTROL_BIN");
    let without = refused(check(&bin, &config).env_remove("EDGEROUTE_CONTROL_TOKEN"));
    assert!(without.contains("EDGEROUTE_CONTROL_TOKEN"), "{without}");
    let stderr = refused(check(&bin, &config).env(
        "EDGEROUTE_CONTROL_TOKEN",
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"\xff"),
    ));
    assert!(
        stderr.contains("EDGEROUTE_CONTROL_TOKEN is not UTF-8"),
        "{stderr}"
    );
    let with = check(&bin, &config)
        .env("EDGEROUTE_CONTROL_TOKEN", "from-the-env")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    // The log filter is checked as `serve` reads it, naming its field.
    std::fs::write(
        &config,
        format!("[source]\nkind = \"file\"\npath = {example:?}\n[log]\nlevel = \"info,=[\"\n"),
    )
    .unwrap();
    let bad_level = check(&bin, &config)
        .env("EDGEROUTE_CONTROL_TOKEN", "from-the-env")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!bad_level.status.success());
    let stderr = String::from_utf8_lossy(&bad_level.stderr);
    assert!(
        stderr.contains("log.level \"info,=[\" is not a valid log filter"),
        "{stderr}"
    );
}

/// A config in `dir` (`tls.toml`, with its `table.json`) for one region,
/// with a listener on a free port for each of `listeners`, given the
/// options written there.
fn listeners_config(dir: &Path, listeners: &[&str]) -> PathBuf {
    let mut toml = String::from("local_region = \"us-east-1\"\n");
    for options in listeners {
        toml += &format!(
            "[[listeners]]\naddress = \"{}\"\n{options}\n",
            edgeroute_tests::proxy::free_addr()
        );
    }
    toml += &format!(
        "[admin]\naddress = \"{}\"\n\
         [[regions]]\nname = \"us-east-1\"\nbackends = [\"127.0.0.1:9000\"]\n\
         [table]\nsource = \"file\"\npath = \"table.json\"\n",
        edgeroute_tests::proxy::free_addr()
    );
    let config = dir.join("tls.toml");
    std::fs::write(&config, toml).unwrap();
    std::fs::write(
        dir.join("table.json"),
        r#"{"epoch":1,"version":1,"primary_region":"us-east-1","failover_in_progress":false,"regions":[{"name":"us-east-1","state":"active"}]}"#,
    )
    .unwrap();
    config
}

/// A TLS listener whose certificate has expired passes `check` with a
/// warning that says so, as `run` serves it (see the protocols tests):
/// some clients (a load balancer forwarding to the proxy) do not check it.
#[test]
fn an_expired_tls_certificate_is_a_warning_of_check() {
    let dir = tempfile::tempdir().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("old.crt"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("old.key"), key.serialize_pem()).unwrap();
    let config = listeners_config(
        dir.path(),
        &["tls = { cert = \"old.crt\", key = \"old.key\" }"],
    );
    let checked = check(&proxy_bin(), &config).output().unwrap();
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert!(checked.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: listeners[0].tls.cert (")
            && stderr
                .contains("old.crt): the server's certificate expired at 2001-01-01T00:00:00Z"),
        "{stderr}"
    );
}

/// Two self-signed certificates for `localhost` with their keys in `dir`:
/// `a.crt` and `a.key`, `b.crt` and `b.key`.
fn two_pairs(dir: &Path) {
    for name in ["a", "b"] {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(dir.join(format!("{name}.crt")), made.cert.pem()).unwrap();
        std::fs::write(
            dir.join(format!("{name}.key")),
            made.signing_key.serialize_pem(),
        )
        .unwrap();
    }
}

/// A TLS listener whose key is not its certificate's is refused by `check`
/// and by `run` before anything is served, naming the field and the files;
/// `check` names every such listener.
#[test]
fn a_tls_key_that_is_not_the_certificates_is_named_by_check_and_run() {
    let dir = tempfile::tempdir().unwrap();
    two_pairs(dir.path());
    let config = listeners_config(
        dir.path(),
        &[
            "",
            "tls = { cert = \"a.crt\", key = \"b.key\" }",
            "tls = { cert = \"b.crt\", key = \"b.crt\" }",
        ],
    );
    let checked = check(&proxy_bin(), &config).output().unwrap();
    let checked_stderr = checked.stderr.clone();
    let ran = run_to_exit(&config);
    for (what, out) in [("check", checked), ("run", ran)] {
        assert!(!out.status.success(), "{what} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("listeners[1].tls.key (")
                && stderr.contains("b.key): is not the key of the first certificate in")
                && stderr.contains("a.crt"),
            "{what}:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{what}:\n{stderr}");
    }
    // check names every listener that is wrong, not just the first.
    let stderr = String::from_utf8_lossy(&checked_stderr);
    assert!(
        stderr.contains("listeners[2].tls.key (") && stderr.contains("holds no private key"),
        "{stderr}"
    );
}

/// `run --config CONFIG` for a config that must not start: its output
/// once it exits; killed and failed if it is still running after 30 s.
fn run_to_exit(config: &Path) -> std::process::Output {
    let mut child = Command::new(proxy_bin())
        .args(["run", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > std::time::Duration::from_secs(30) {
            child.kill().ok();
            let out = child.wait_with_output().unwrap();
            panic!(
                "run is still serving after 30 s:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn check_refuses_values_that_would_break_the_running_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("limits.toml");
    std::fs::write(
        &config,
        r#"
local_region = "us-east-1"

[[listeners]]
address = "0.0.0.0:8080"
[[listeners]]
address = "127.0.0.1:8080"
[[listeners]]
address = "127.0.0.1:0"

[[regions]]
name = "us-east-1"
backends = ["127.0.0.1:9000"]

[health]
path = "/he alth"
listener_path = "/health?deep=1"
interval = "1ns"
eject_for = "4000000000000000h"

[dns]
min_ttl = "0s"

[timeouts]
connect = "18446744073709551615s"

[runtime]
threads = 100000

[table]
source = "control"
url = "http://edgeroute:hunter2@control.internal:9080"
token_file = "token"
max_backoff = "1ns"
"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("token"), "t0ken").unwrap();
    let stderr = refused(&mut check(&proxy_bin(), &config));
    assert_mentions(
        &stderr,
        &[
            "listeners[1].address: 127.0.0.1:8080 takes the same port as another listener (0.0.0.0:8080)",
            "listeners[2].address: must name a port (1-65535), got \"127.0.0.1:0\" (port 0)",
            "health.path: must be a path such as \"/health\"",
            "health.listener_path: must be a path such as \"/health\" (starting with '/', no query",
            "health.interval: must be at least 10ms, got \"1ns\"",
            "health.eject_for: must be at most 10 years",
            "dns.min_ttl: must be at least 100ms (answers are kept at least this long), got \"0s\"",
            "timeouts.connect: must be at most 10 years",
            "runtime.threads: must be at most 1024, got 100000",
            "table.url: must not hold credentials",
            "table.max_backoff: must be at least 100ms, got \"1ns\"",
            "11 invalid field(s)",
        ],
    );
    assert!(
        !stderr.contains("hunter2"),
        "the password is echoed:\n{stderr}"
    );
}

#[test]
fn check_reads_the_token_files_and_the_log_filter_as_run_does() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tokens.toml");
    std::fs::write(
        &config,
        "local_region = \"us-east-1\"\n[[listeners]]\naddress = \"127.0.0.1:8080\"\n\
         [admin]\naddress = \"127.0.0.1:9901\"\ntoken_file = \"admin-token\"\n\
         [[regions]]\nname = \"us-east-1\"\nbackends = [\"127.0.0.1:9000\"]\n\
         [table]\nsource = \"control\"\nurl = \"http://127.0.0.1:9080\"\ntoken_file = \"table-token\"\n\
         [log]\nlevel = \"info,=[\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("admin-token"), " \n").unwrap();
    std::fs::write(dir.path().join("table-token"), "s3cret with space\n").unwrap();
    let stderr = refused(check(&proxy_bin(), &config).env_remove("RUST_LOG"));
    assert_mentions(
        &stderr,
        &[
            "admin.token_file",
            "is empty; put the bearer token in it",
            "table.token_file",
            "holds characters a bearer token cannot",
            "log.level \"info,=[\" is not a valid log filter",
        ],
    );
    assert!(!stderr.contains("s3cret"), "a token is echoed:\n{stderr}");

    // Tokens that load but are easy to guess are warned of.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("info,=[", "info"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("admin-token"),
        "replace-me-with-a-long-random-token\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("table-token"), "s3cret\n").unwrap();
    // Read again every 10 s: whoever may write the file sets the token
    // (the admin token's is its owner's alone, whatever the umask).
    std::fs::set_permissions(
        dir.path().join("admin-token"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::fs::set_permissions(
        dir.path().join("table-token"),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let out = check(&proxy_bin(), &config)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_mentions(
        &stderr,
        &[
            "warning: admin.token_file: the token is a placeholder",
            "warning: table.token_file: the token has fewer than 16 characters",
            "other users may write the token file (mode 666)",
        ],
    );
    assert!(
        !stderr.contains("admin-token: other users"),
        "the admin token file is its owner's to write: {stderr}"
    );
    assert!(!stderr.contains("s3cret"), "a token is echoed:\n{stderr}");
}

#[test]
fn check_refuses_a_table_that_is_not_a_regular_file_or_past_the_epoch_range() {
    let dir = tempfile::tempdir().unwrap();
    let config = good_config(dir.path());
    let table = dir.path().join("table.json");
    std::fs::write(&table, r#"{"epoch":18446744073709551615,"version":1,"primary_region":"us-east-1","failover_in_progress":false,"regions":[{"name":"us-east-1","state":"active"}]}"#).unwrap();
    let stderr = refused(&mut check(&proxy_bin(), &config));
    assert!(
        stderr.contains("epoch: must be at most 9223372036854775807"),
        "{stderr}"
    );

    // A pipe would block the reader until someone writes to it.
    std::fs::remove_file(&table).unwrap();
    let made = Command::new("mkfifo").arg(&table).status().unwrap();
    assert!(made.success());
    let out = run_to_exit(&config);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a regular file"), "{stderr}");
}

/// A misspelt level would be taken by the filter syntax as a target name,
/// and every log line would be silenced: `check` refuses it, in
/// `log.level` and in `RUST_LOG` alike.
#[test]
fn a_log_level_that_is_no_level_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("level.toml");
    std::fs::write(
        &config,
        "local_region = \"us-east-1\"\n[[listeners]]\naddress = \"127.0.0.1:8080\"\n\
         [[regions]]\nname = \"us-east-1\"\nbackends = [\"127.0.0.1:9000\"]\n\
         [table]\nsource = \"file\"\npath = \"table.json\"\n\
         [log]\nlevel = \"warning\"\n",
    )
    .unwrap();
    let stderr = refused(check(&proxy_bin(), &config).env_remove("RUST_LOG"));
    assert_mentions(
        &stderr,
        &[
            "log.level \"warning\": \"warning\" is no level (did you mean \"warn\"?)",
            "trace, debug, info, warn, error or off",
        ],
    );
    // The same word in RUST_LOG, which overrides the config's level.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("\"warning\"", "\"info\""),
    )
    .unwrap();
    let stderr = refused(check(&proxy_bin(), &config).env("RUST_LOG", "warning"));
    assert_mentions(
        &stderr,
        &[
            "RUST_LOG \"warning\": \"warning\" is no level",
            "\"warning=trace\"",
        ],
    );
}

/// Keys the config does not know are named all at once, each with the
/// known key it is closest to, and then every value of the wrong type, by
/// line and key (the README shows this very output).
#[test]
fn every_unknown_key_is_named_at_once_and_a_number_for_a_size_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broken.toml");
    std::fs::write(
        &config,
        "local_region = \"us-east-1\"\n[[listeners]]\naddress = \"127.0.0.1:8080\"\n\
         [[regions]]\nname = \"us-east-1\"\nbackends = [\"127.0.0.1:9000\"]\n\
         [health]\ninterval = \"5s\"\nintervall = \"5s\"\nfal = 3\n\
         [table]\nsource = \"file\"\npath = \"table.json\"\n\
         [limits]\nmax_request_body = 10485760\n[retries]\nmax_attempts = \"3\"\n",
    )
    .unwrap();
    let stderr = refused(&mut check(&proxy_bin(), &config));
    assert_mentions(
        &stderr,
        &[
            "it does not fit the config's shape: 2 unknown key(s):",
            "line 9: `health.intervall` is no key here; did you mean `interval`?",
            "line 10: `health.fal` is no key here; did you mean `fall`?",
            "and 2 other problems:\n  line 15: `limits.max_request_body`: invalid type: integer `10485760`, expected a string",
            "written as strings",
            "\n  line 17: `retries.max_attempts`: invalid type: string \"3\", expected",
        ],
    );
}

/// An `https://` control plane's CA file that holds no certificate is
/// named by the proxy's `check` and `run`; a control plane's `server.tls`
/// key that is not its certificate's is named by its `check`.
#[test]
fn tls_files_of_the_control_plane_and_its_clients_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "t0ken\n").unwrap();
    std::fs::write(dir.path().join("ca.pem"), "not a certificate\n").unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        "local_region = \"us-east-1\"\n[[listeners]]\naddress = \"127.0.0.1:1\"\n\
         [[regions]]\nname = \"us-east-1\"\nbackends = [\"127.0.0.1:9000\"]\n\
         [table]\nsource = \"control\"\nurl = \"https://control.internal:9443\"\n\
         token_file = \"token\"\nca_file = \"ca.pem\"\n",
    )
    .unwrap();
    let checked = check(&proxy_bin(), &config).output().unwrap();
    for (what, out) in [("check", checked), ("run", run_to_exit(&config))] {
        assert!(!out.status.success(), "{what} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_mentions(
            &stderr,
            &["table.ca_file (", "ca.pem): holds no certificate"],
        );
        assert!(!stderr.contains("panicked"), "{what}:\n{stderr}");
    }

    two_pairs(dir.path());
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples/topology.json");
    let config = dir.path().join("control.toml");
    let write = |key: &str| {
        std::fs::write(
            &config,
            format!(
                "[server]\ntoken_file = \"token\"\ntls = {{ cert = \"a.crt\", key = {key:?} }}\n\
                 [source]\nkind = \"file\"\npath = {example:?}\n"
            ),
        )
        .unwrap();
    };
    let bin = edgeroute_tests::proxy::workspace_bin("edgeroute-control", "EDGEROUTE_CONTROL_BIN");
    write("b.key");
    let stderr = refused(&mut check(&bin, &config));
    assert_mentions(
        &stderr,
        &[
            "server.tls.key (",
            "b.key): is not the key of the first certificate in",
        ],
    );
    write("a.key");
    let out = check(&bin, &config).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The commands' CA file is read by check too.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!(
            "{text}[actions]\ncontrol_url = \"https://localhost:9080\"\nca_file = \"ca.pem\"\n"
        ),
    )
    .unwrap();
    let stderr = refused(&mut check(&bin, &config));
    assert_mentions(
        &stderr,
        &["actions.ca_file (", "ca.pem): holds no certificate"],
    );
}

/// A control plane on AWS with no credentials anywhere in the default
/// chain says where they are looked for, not the SDK's internals.
#[test]
fn missing_aws_credentials_are_named_with_where_they_come_from() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "t0ken\n").unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let config = dir.path().join("control.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ntoken_file = \"token\"\n[source]\nkind = \"aws\"\nhosted_zone_id = \"Z1\"\n\
             record_name = \"api.example.com\"\nglobal_cluster_id = \"g1\"\nendpoint_url = {endpoint:?}\n"
        ),
    )
    .unwrap();
    let bin = edgeroute_tests::proxy::workspace_bin("edgeroute-control", "EDGEROUTE_CONTROL_BIN");
    let mut cmd = check(&bin, &config);
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ] {
        cmd.env_remove(var);
    }
    let stderr = refused(
        cmd.env("HOME", dir.path())
            .env("AWS_CONFIG_FILE", dir.path().join("no-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                dir.path().join("no-credentials"),
            )
            .env("AWS_EC2_METADATA_DISABLED", "true"),
    );
    assert_mentions(
        &stderr,
        &[
            "ListResourceRecordSets",
            "AWS credentials could not be loaded for this process",
            "AWS_PROFILE",
        ],
    );
    assert!(!stderr.contains("DispatchFailure"), "{stderr}");
}

/// The Kubernetes example stays true to the product: its proxy config
/// passes `check` and its control-plane config is read up to its source
/// (no AWS here); the proxy's probes ask the admin port for `/ready` and
/// `/live`, the ALB probes the listener's health path on the traffic
/// port, and a pod is given longer to stop than `keep_accepting` and the
/// grace period take.
#[test]
fn the_kubernetes_example_agrees_with_its_configs_and_they_are_valid() {
    use serde_yaml::Value;
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples/kubernetes.yaml"),
    )
    .unwrap();
    let docs: Vec<Value> = text
        .split("\n---\n")
        .map(|doc| serde_yaml::from_str(doc).unwrap())
        .collect();
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    for name in ["admin-token", "control-token"] {
        std::fs::write(secret.join(name), "3f9a0c5e8d7b6a4f2e1d0c9b8a7f6e5d\n").unwrap();
    }
    let placed = |toml: &Value| {
        toml.as_str()
            .unwrap()
            .replace("/etc/edgeroute/secret", &secret.display().to_string())
            .replace("/var/lib/edgeroute", &dir.path().display().to_string())
    };

    let proxy_toml = placed(&find("ConfigMap", "edgeroute-proxy")["data"]["edgeroute.toml"]);
    let proxy_config = dir.path().join("edgeroute.toml");
    std::fs::write(&proxy_config, &proxy_toml).unwrap();
    let out = check(&proxy_bin(), &proxy_config).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: toml_line::Lines = toml_line::Lines(&proxy_toml);

    let pod = &find("Deployment", "edgeroute-proxy")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let port = |name: &str| {
        container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no port {name}"))
    };
    assert_eq!(
        port("admin").to_string(),
        parsed.value("address", 1).rsplit(':').next().unwrap(),
        "the admin port is the admin listener's"
    );
    assert_eq!(
        port("traffic").to_string(),
        parsed.value("address", 0).rsplit(':').next().unwrap(),
        "the traffic port is the listener's"
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/live");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "admin");
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[..2], ["run", "--config"]);
    let mounted = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "config")
        .and_then(|m| m["mountPath"].as_str())
        .unwrap();
    assert_eq!(args[2], format!("{mounted}/edgeroute.toml"));
    let seconds = |key: &str| {
        let v = parsed.value(key, 0);
        v.strip_suffix('s').unwrap().parse::<u64>().unwrap()
    };
    let stop = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        stop > seconds("keep_accepting") + seconds("grace_period"),
        "terminationGracePeriodSeconds {stop}"
    );
    let ingress = &find("Ingress", "edgeroute")["metadata"]["annotations"];
    assert_eq!(
        ingress["alb.ingress.kubernetes.io/healthcheck-path"].as_str(),
        Some(parsed.value("listener_path", 0).as_str())
    );

    // The control plane's config: read whole, then its source (AWS, not
    // reachable here) is what stops the check.
    let nowhere = edgeroute_tests::proxy::free_addr();
    let control_toml = placed(&find("ConfigMap", "edgeroute-control")["data"]["control.toml"])
        .replace(
            "[source]\n",
            &format!("[source]\nendpoint_url = \"http://{nowhere}\"\n"),
        );
    let control_config = dir.path().join("control.toml");
    std::fs::write(&control_config, &control_toml).unwrap();
    control_check_stops_at(&control_config, nowhere, None);
    let control =
        &find("Deployment", "edgeroute-control")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(control["command"][0], "/usr/local/bin/edgeroute-control");
    assert_eq!(control["args"][0], "serve");
}

/// The values of a TOML text's `key = value` lines, as written (a string's
/// quotes left out): enough for the example's few keys.
mod toml_line {
    pub struct Lines<'a>(pub &'a str);

    impl Lines<'_> {
        /// The `nth` (from 0) value of `key`.
        pub fn value(&self, key: &str, nth: usize) -> String {
            self.0
                .lines()
                .filter_map(|l| l.split_once('='))
                .filter(|(k, _)| k.trim() == key)
                .map(|(_, v)| {
                    let v = v.split('#').next().unwrap_or("").trim();
                    v.trim_matches('"').to_owned()
                })
                .nth(nth)
                .unwrap_or_else(|| panic!("no {key} number {nth}"))
        }
    }
}

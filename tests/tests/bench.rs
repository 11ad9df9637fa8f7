//! The benchmark suite stopped by a signal mid-run: nothing it started may
//! be left running, and nothing it wrote in its scratch folder left behind.

use edgeroute_tests::eventually;
use edgeroute_tests::proxy::workspace_bin;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The processes whose command line names a path under `folder`: what the
/// suite starts gets its config from its scratch folder there.
fn working_in(folder: &Path) -> Vec<u32> {
    let folder = folder.to_string_lossy();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains(&*folder))
        })
        .collect()
}

/// A process that has exited and been reaped is gone from /proc; one that
/// was only killed is a zombie there until its parent (or init) reaps it.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// Sends SIGTERM to the suite when dropped while armed: it stops what it
/// started and exits.
struct StopOnDrop(Option<u32>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
}

async fn stopped_by(signal: Signal, exit_code: i32) {
    let tmp = tempfile::tempdir().expect("temporary folder");
    let json = tmp.path().join("results.json");
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch).expect("scratch folder");
    let bench = Command::new(workspace_bin("edgeroute-bench", "EDGEROUTE_BENCH_BIN"))
        .args(["regions", "--json"])
        .arg(&json)
        .env("TMPDIR", &scratch)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start edgeroute-bench");
    let pid = bench.id();
    // Stopped if this test fails before it signals the suite itself, so
    // that what it started does not run on.
    let mut stop_on_failure = StopOnDrop(Some(pid));

    // The regions scenario runs an edgeroute proxy with its config there.
    eventually(
        "the suite to start its proxy",
        Duration::from_secs(60),
        || async { !working_in(&scratch).is_empty() },
    )
    .await;
    let kids = working_in(&scratch);
    assert!(
        std::fs::read_dir(&scratch).expect("scratch folder").count() > 0,
        "the run works in a folder under TMPDIR"
    );

    stop_on_failure.0 = None;
    kill(Pid::from_raw(pid as i32), signal).expect("signal the suite");
    let status = tokio::task::spawn_blocking(move || bench.wait_with_output())
        .await
        .expect("wait")
        .expect("the suite's exit status");
    for kid in kids {
        assert!(
            !running(kid),
            "process {kid}, started by the suite, still runs after it stopped"
        );
    }
    assert_eq!(
        status.status.code(),
        Some(exit_code),
        "the suite exits as a process stopped by {signal} is reported; stderr:\n{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .expect("scratch folder")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(
        !Path::new(&json).exists(),
        "a stopped run writes no results"
    );
}

#[tokio::test]
async fn sigterm_stops_what_the_suite_started() {
    stopped_by(Signal::SIGTERM, 143).await;
}

#[tokio::test]
async fn sigint_stops_what_the_suite_started() {
    stopped_by(Signal::SIGINT, 130).await;
}

//! The demo the README starts (`edgeroute-proxy demo`, which
//! `scripts/demo.sh` runs): three simulated regions behind a proxy for
//! us-east-1, and the guide it prints, followed step by step.

use edgeroute_tests::proxy::{free_addr, proxy_bin};
use edgeroute_tests::{client, eventually};
use std::process::Stdio;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// The region that served a request, from the proxy's answer; empty when
/// there was no successful answer (waits retry it).
async fn served_by(request: reqwest::RequestBuilder) -> String {
    match request.send().await {
        Ok(resp) if resp.status().is_success() => resp
            .headers()
            .get("x-edgeroute-region")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    }
}

/// The guide's shell commands that edit the table: each `sed -i` line with
/// the lines it continues onto.
fn table_edits(guide: &str) -> Vec<String> {
    let mut edits = Vec::new();
    let mut lines = guide.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if !line.starts_with("sed -i") {
            continue;
        }
        let mut command = line.to_owned();
        while command.ends_with('\\') {
            command.pop();
            command.push(' ');
            command.push_str(lines.next().unwrap_or_default());
        }
        edits.push(command);
    }
    edits
}

/// A running demo, started with `args` after its listen and admin
/// addresses, and what it printed once ready.
struct Demo {
    child: tokio::process::Child,
    listen: std::net::SocketAddr,
    guide: String,
    dir: tempfile::TempDir,
}

impl Demo {
    async fn start(args: &[&str]) -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let (listen, admin) = (free_addr(), free_addr());
        let out = dir.path().join("demo.out");
        let mut child = tokio::process::Command::new(proxy_bin())
            .args([
                "demo",
                "--listen",
                &listen.to_string(),
                "--admin",
                &admin.to_string(),
            ])
            .args(args)
            .env("TMPDIR", dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(dir.path().join("demo.err")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("start the demo");
        let output = || {
            std::fs::read_to_string(&out).unwrap_or_default()
                + &std::fs::read_to_string(dir.path().join("demo.err")).unwrap_or_default()
        };
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("poll the demo") {
                panic!("the demo exited with {status}:\n{}", output());
            }
            let ready = client()
                .get(format!("http://{admin}/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready {
                break;
            }
            assert!(
                started.elapsed() < WAIT,
                "the demo not ready:\n{}",
                output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let guide = std::fs::read_to_string(&out).unwrap_or_default();
        Demo {
            child,
            listen,
            guide,
            dir,
        }
    }
}

#[tokio::test]
async fn the_demo_routes_by_region_and_its_guide_moves_the_primary_and_takes_a_region_down() {
    let Demo {
        child: mut demo,
        listen,
        guide,
        dir,
    } = Demo::start(&[]).await;
    assert!(guide.contains("Stop with Ctrl-C."), "{guide}");
    // Its files are in a folder of its own under TMPDIR.
    let table = guide
        .lines()
        .find_map(|l| l.strip_prefix("table:"))
        .map(str::trim)
        .expect("the table file named");
    assert!(
        table.starts_with(&dir.path().join("edgeroute-demo-").display().to_string())
            && std::path::Path::new(table).is_file(),
        "{table}"
    );

    let read = || client().get(format!("http://{listen}/items"));
    let write = || client().post(format!("http://{listen}/orders")).body("{}");
    assert_eq!(served_by(read()).await, "us-east-1");
    assert_eq!(served_by(write()).await, "us-east-1");

    let edits = table_edits(&guide);
    assert_eq!(edits.len(), 2, "{edits:?} from:\n{guide}");
    let run = |command: &str| {
        let done = std::process::Command::new("sh")
            .args(["-c", command])
            .status()
            .expect("run the guide's command");
        assert!(done.success(), "{command}");
    };
    // Move the primary to eu-west-1.
    run(&edits[0]);
    eventually("writes go to eu-west-1", WAIT, || async {
        served_by(write()).await == "eu-west-1"
    })
    .await;
    assert_eq!(served_by(read()).await, "us-east-1", "reads stay local");
    // Take us-east-1 down.
    run(&edits[1]);
    eventually("reads go to eu-west-1, the nearest", WAIT, || async {
        served_by(read()).await == "eu-west-1"
    })
    .await;
    assert_eq!(served_by(write()).await, "eu-west-1");
    demo.start_kill().ok();
}

/// The demo taking its table from a control plane served over HTTPS, whose
/// certificate a CA file given with `--ca-file` signs.
#[tokio::test]
async fn the_demo_takes_its_table_from_a_control_plane_over_https() {
    use edgeroute_tests::control::{ControlPlane, topology};
    let regions = [
        ("us-east-1", 100, true),
        ("eu-west-1", 100, true),
        ("ap-southeast-1", 100, true),
    ];
    let cp = ControlPlane::start_tls(&topology(Some("eu-west-1"), false, &regions)).await;
    let (url, token, ca) = (
        cp.url(""),
        cp.token_path.display().to_string(),
        cp.dir.join("ca.pem").display().to_string(),
    );
    let mut demo =
        Demo::start(&["--control", &url, "--token-file", &token, "--ca-file", &ca]).await;
    assert!(
        demo.guide
            .contains(&format!("taking its table from the control plane at {url}")),
        "{}",
        demo.guide
    );
    let listen = demo.listen;
    let read = || client().get(format!("http://{listen}/items"));
    let write = || client().post(format!("http://{listen}/orders")).body("{}");
    assert_eq!(served_by(read()).await, "us-east-1");
    assert_eq!(served_by(write()).await, "eu-west-1", "the table's writer");
    demo.child.start_kill().ok();
}

//! `edgeroute-emulator`: the AWS API emulator with the three-region fixture
//! the tests use, and a control-plane config pointing at it, for trying the
//! failover runbook on one machine. Runs until interrupted.
//!
//! Usage: edgeroute-emulator --dir DIR [--address 127.0.0.1:5000]
//!        [--control 127.0.0.1:9080] [--failover-seconds 5]

use edgeroute_tests::moto::{self, GLOBAL_CLUSTER, Moto, RECORD};
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

struct Args {
    dir: PathBuf,
    address: SocketAddr,
    control: SocketAddr,
    failover_seconds: String,
}

/// The options, or `None` when help was asked for.
fn parse() -> Result<Option<Args>, String> {
    let mut args = Args {
        dir: PathBuf::new(),
        address: SocketAddr::from(([127, 0, 0, 1], 5000)),
        control: SocketAddr::from(([127, 0, 0, 1], 9080)),
        failover_seconds: "5".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let addr = |v: &str| {
            v.parse::<SocketAddr>()
                .ok()
                .filter(|a| a.ip().is_loopback())
                .ok_or(format!("{flag} must be a loopback ip:port, got {v:?}"))
        };
        match flag.as_str() {
            "--dir" => args.dir = PathBuf::from(value),
            "--address" => args.address = addr(&value)?,
            "--control" => args.control = addr(&value)?,
            "--failover-seconds" => {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|s| *s >= 0.0)
                    .ok_or(format!(
                        "--failover-seconds must be a number of seconds, got {value:?}"
                    ))?;
                args.failover_seconds = value;
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if args.dir.as_os_str().is_empty() {
        return Err("--dir is required: where the control-plane config is written".into());
    }
    Ok(Some(args))
}

/// Writes `text` to a new `path` only its owner may read (0600), as a
/// secret is kept.
fn write_private(path: &std::path::Path, text: String) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // A token file of an earlier run in the folder is replaced whole.
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())
}

/// 16 random bytes from the kernel, as hex.
fn token() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    const USAGE: &str = "usage: edgeroute-emulator --dir DIR [--address 127.0.0.1:5000] [--control 127.0.0.1:9080] [--failover-seconds 5]";
    let args = match parse() {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!(
                "The AWS API emulator (moto) with three regions, and a control-plane config in DIR\n\
                 pointing at it; runs until interrupted. Commands against it need\n\
                 AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing.\n{USAGE}"
            );
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let moto = match Moto::try_start_at(args.address, &args.failover_seconds).await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let fixture = moto::three_regions(&moto).await;
    let config = format!(
        "# edgeroute-control against the local AWS API emulator.\n\
         [server]\naddress = \"{control}\"\ntoken_file = \"token\"\n\n\
         [source]\nkind = \"aws\"\npoll_interval = \"1s\"\nendpoint_url = \"{endpoint}\"\n\
         hosted_zone_id = \"{zone}\"\nrecord_name = \"{RECORD}\"\n\
         global_cluster_id = \"{GLOBAL_CLUSTER}\"\nglobal_cluster_region = \"us-east-1\"\n\n\
         [actions]\nhistory_file = \"history.json\"\ntimeout = \"2m\"\nproxy_max_age = \"5s\"\n",
        control = args.control,
        endpoint = moto.endpoint,
        zone = fixture.zone_id,
    );
    let written = std::fs::create_dir_all(&args.dir)
        .and_then(|()| token())
        .and_then(|t| write_private(&args.dir.join("token"), t + "\n"))
        .and_then(|()| std::fs::write(args.dir.join("control.toml"), config));
    if let Err(e) = written {
        eprintln!("error: cannot write into {}: {e}", args.dir.display());
        return ExitCode::FAILURE;
    }
    println!(
        "AWS API emulator on {} with three regions (writer in us-east-1, writer changes take {} s)\n\
         control-plane config: {}\n\
         run the control plane and commands with AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing",
        moto.endpoint,
        args.failover_seconds,
        args.dir.join("control.toml").display()
    );
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot watch SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The lag metric stays current, as CloudWatch's would, for whichever
    // regions are secondaries now (a writer moved away from gets one).
    let mut minute = tokio::time::interval(std::time::Duration::from_secs(60));
    let mut writer = "us-east-1".to_owned();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = minute.tick() => {
                if let Some((now, _)) = moto::try_writer(&moto).await {
                    writer = now;
                }
                moto::put_lags(&moto, &fixture, &writer).await;
            }
        }
    }
    drop(moto);
    ExitCode::SUCCESS
}

//! `edgeroute-proxy demo`: three simulated regions behind a proxy for
//! us-east-1, on loopback and built-in defaults.

use crate::sim::serve_origin;
use anyhow::Context;
use edgeroute_config::ProxyConfig;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The simulated regions and their added delay, as seen from us-east-1:
/// in-region, transatlantic and transpacific round trips.
const REGIONS: [(&str, Duration); 3] = [
    ("us-east-1", Duration::from_millis(2)),
    ("eu-west-1", Duration::from_millis(75)),
    ("ap-southeast-1", Duration::from_millis(210)),
];

pub struct DemoOptions {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// A control plane to take the table from, instead of a table file.
    pub control: Option<DemoControl>,
}

/// A control plane the demo's proxy takes its table from.
pub struct DemoControl {
    pub url: String,
    pub token_file: std::path::PathBuf,
    /// CA certificates for an `https://` URL (`table.ca_file`); `None`: the
    /// system's.
    pub ca_file: Option<std::path::PathBuf>,
}

/// The demo's addresses, checked as its flags: a port each, an admin
/// listener on loopback (the demo sets no admin token), and both free,
/// before the guide says where to send requests.
fn check_addresses(opts: &DemoOptions) -> anyhow::Result<()> {
    for (flag, addr) in [("--listen", opts.listen), ("--admin", opts.admin)] {
        anyhow::ensure!(
            addr.port() != 0,
            "{flag} {addr}: give a port (1-65535), such as 127.0.0.1:8080"
        );
    }
    anyhow::ensure!(
        opts.admin.ip().is_loopback(),
        "--admin {}: the demo's admin listener has no token, so it listens on loopback only; \
         give a loopback address such as 127.0.0.1:9901",
        opts.admin
    );
    anyhow::ensure!(
        opts.listen != opts.admin,
        "--listen and --admin are both {}: give them different ports",
        opts.listen
    );
    for (flag, addr) in [("--listen", opts.listen), ("--admin", opts.admin)] {
        std::net::TcpListener::bind(addr).map_err(|e| {
            anyhow::anyhow!(edgeroute_config::accept::cannot_listen(flag, addr, &e))
        })?;
    }
    Ok(())
}

pub fn run(opts: DemoOptions) -> anyhow::Result<()> {
    check_addresses(&opts)?;
    // One folder per user and listening port, written afresh by each run:
    // the process ends by exiting, so a folder per run would be left behind
    // every time.
    let uid = nix::unistd::getuid();
    let dir = std::env::temp_dir().join(format!("edgeroute-demo-{uid}-{}", opts.listen.port()));
    own_folder(&dir, uid.as_raw())?;

    let origins = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("demo-origins")
        .enable_all()
        .build()?;
    let mut backends = Vec::new();
    for (region, delay) in REGIONS {
        let listener = origins
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .context("cannot bind a loopback port for a simulated origin")?;
        backends.push((region, listener.local_addr()?));
        origins.spawn(serve_origin(listener, Arc::from(region), delay));
    }

    let table_path = dir.join("table.json");
    std::fs::write(&table_path, initial_table())?;
    let config_text = config_toml(&opts, &backends);
    let config_path = dir.join("edgeroute.toml");
    std::fs::write(&config_path, &config_text)?;
    let config = ProxyConfig::from_toml(&config_text, &dir)
        .map_err(|e| anyhow::anyhow!("demo config: {e}"))?;

    match &opts.control {
        None => print_guide(&opts, &backends, &config_path, &table_path),
        Some(control) => print_control_guide(&opts, &backends, &control.url),
    }
    let result = crate::server::run(config);
    drop(origins);
    result
}

/// Makes `dir` a folder only `uid` can enter, or checks that it is one: a
/// folder of that name in a shared temporary folder could be someone
/// else's, or a link to somewhere the demo would then write.
fn own_folder(dir: &Path, uid: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    let meta =
        std::fs::symlink_metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    anyhow::ensure!(
        meta.is_dir() && meta.uid() == uid && meta.permissions().mode() & 0o077 == 0,
        "{} is not a folder of this user's that only it can enter; remove it and run the demo again",
        dir.display()
    );
    Ok(())
}

/// The table file as the guide's commands expect it: one field per line,
/// each region's `name` before its `state` (serde_json writes keys sorted).
fn initial_table() -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "epoch": 1,
        "version": 1,
        "primary_region": "us-east-1",
        "failover_in_progress": false,
        "regions": REGIONS.iter().map(|(name, _)| serde_json::json!({"name": name, "state": "active", "weight": 100})).collect::<Vec<_>>(),
    }))
    .unwrap_or_default()
        + "\n"
}

fn config_toml(opts: &DemoOptions, backends: &[(&str, SocketAddr)]) -> String {
    let mut s = format!(
        "# edgeroute demo: a proxy for us-east-1 in front of three simulated regions.\n\
         local_region = \"us-east-1\"\n\n\
         [[listeners]]\naddress = \"{}\"\nh2c = true\n\n\
         [admin]\naddress = \"{}\"\n\n\
         {table}\n\
         [runtime]\nthreads = 1\n",
        opts.listen,
        opts.admin,
        table = match &opts.control {
            None =>
                "[table]\nsource = \"file\"\npath = \"table.json\"\nwatch_interval = \"500ms\"\n"
                    .to_owned(),
            Some(control) => format!(
                "[table]\nsource = \"control\"\nurl = {}\ntoken_file = {}\n{}wait = \"10s\"\nreport_interval = \"2s\"\n",
                toml_string(&control.url),
                toml_string(&control.token_file.to_string_lossy()),
                control
                    .ca_file
                    .as_ref()
                    .map_or_else(String::new, |ca| format!(
                        "ca_file = {}\n",
                        toml_string(&ca.to_string_lossy())
                    )),
            ),
        }
    );
    for (region, addr) in backends {
        s.push_str(&format!(
            "\n[[regions]]\nname = \"{region}\"\nbackends = [\"{addr}\"]\n"
        ));
    }
    s
}

/// `text` as a TOML basic string: JSON's escapes are TOML's.
fn toml_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

fn origins_list(backends: &[(&str, SocketAddr)]) -> String {
    backends
        .iter()
        .zip(REGIONS)
        .map(|((r, a), (_, d))| format!("    {r:<15} {a}  (+{} ms)", d.as_millis()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn print_control_guide(opts: &DemoOptions, backends: &[(&str, SocketAddr)], url: &str) {
    println!(
        "\nedgeroute demo: a proxy for us-east-1 on http://{listen}, admin on http://{admin},\n\
         taking its table from the control plane at {url}\n\
         simulated regions:\n{origins}\n\n\
         Try, with C = the control-plane config the emulator wrote:\n\
         \x20 curl -i -X POST http://{listen}/orders -d '{{}}'         # a write, sent to the primary\n\
         \x20 edgeroute-control status   -c $C\n\
         \x20 edgeroute-control failover -c $C --to eu-west-1 --dry-run\n\
         \x20 edgeroute-control failover -c $C --to eu-west-1        # writes held, then sent to eu-west-1\n\
         \x20 edgeroute-control drain    -c $C us-east-1             # reads move away from us-east-1\n\
         \x20 edgeroute-control undrain  -c $C us-east-1\n\
         \x20 edgeroute-control failover -c $C --to us-east-1 --drill\n\
         Stop with Ctrl-C.\n",
        listen = opts.listen,
        admin = opts.admin,
        origins = origins_list(backends),
    );
}

fn print_guide(opts: &DemoOptions, backends: &[(&str, SocketAddr)], config: &Path, table: &Path) {
    println!(
        "\nedgeroute demo: a proxy for us-east-1 on http://{listen}, admin on http://{admin}\n\
         simulated regions:\n{origins}\n\
         config: {config}\ntable:  {table}\n\n\
         Try:\n\
         \x20 curl -i http://{listen}/items                  # a read, served by us-east-1 (local)\n\
         \x20 curl -i -X POST http://{listen}/orders -d '{{}}'  # a write, sent to the primary\n\
         \x20 curl -s http://{admin}/routing                 # the table in force and backend state\n\
         \x20 curl -s http://{admin}/metrics | grep edgeroute_requests_total\n\n\
         Move the primary to eu-west-1 (the file is reloaded within a second, or at once with SIGHUP):\n\
         \x20 sed -i -e 's/\"epoch\": 1/\"epoch\": 2/' -e 's/\"version\": 1/\"version\": 2/' \\\n\
         \x20        -e 's/\"primary_region\": \"us-east-1\"/\"primary_region\": \"eu-west-1\"/' {table}\n\
         \x20 curl -i -X POST http://{listen}/orders -d '{{}}'  # now x-edgeroute-region: eu-west-1\n\n\
         Take us-east-1 down (a digit appended to the version raises it), and reads move to eu-west-1:\n\
         \x20 sed -i -e 's/\"version\": \\([0-9]*\\)/\"version\": \\19/' \\\n\
         \x20        -e '/\"name\": \"us-east-1\"/,/\"state\"/ s/\"active\"/\"down\"/' {table}\n\
         \x20 curl -i http://{listen}/items                  # now x-edgeroute-region: eu-west-1, the nearest\n\n\
         Stop with Ctrl-C.\n",
        listen = opts.listen,
        admin = opts.admin,
        origins = origins_list(backends),
        config = config.display(),
        table = table.display(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(listen: &str, admin: &str) -> DemoOptions {
        DemoOptions {
            listen: listen.parse().expect("an address"),
            admin: admin.parse().expect("an address"),
            control: None,
        }
    }

    #[test]
    fn the_demos_addresses_are_checked_as_its_flags() {
        let said = |o: DemoOptions| check_addresses(&o).expect_err("refused").to_string();
        assert!(
            said(opts("127.0.0.1:0", "127.0.0.1:9901"))
                .starts_with("--listen 127.0.0.1:0: give a port")
        );
        let open = said(opts("127.0.0.1:18080", "0.0.0.0:9901"));
        assert!(
            open.starts_with("--admin 0.0.0.0:9901") && open.contains("loopback"),
            "{open}"
        );
        assert!(said(opts("127.0.0.1:18080", "127.0.0.1:18080")).contains("different ports"));
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let busy = held.local_addr().expect("its address").to_string();
        let taken = said(opts(&busy, "127.0.0.1:0"));
        assert!(taken.starts_with("--admin"), "ports come first: {taken}");
        let taken = said(opts(&busy, "127.0.0.1:1"));
        assert!(
            taken.starts_with(&format!("cannot listen on --listen {busy}")),
            "{taken}"
        );
    }
}

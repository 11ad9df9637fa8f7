//! Starts the real `edgeroute-proxy` binary from a config written for the test.

use crate::eventually;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The proxy binary next to the test executable (`target/<profile>/`), or
/// `EDGEROUTE_PROXY_BIN`. `scripts/test.sh` builds it before the tests run.
pub fn proxy_bin() -> PathBuf {
    workspace_bin("edgeroute-proxy", "EDGEROUTE_PROXY_BIN")
}

/// A workspace binary next to the test executable, or the path in `env`.
pub fn workspace_bin(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join(name);
    assert!(
        bin.is_file(),
        "{} not found: build it first with `cargo build --workspace --bins` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A loopback address of its own for each proxy a test starts, with a port
/// that was free a moment ago. A fresh 127.x.y.z per proxy keeps one test's
/// connections (and their TIME-WAIT remains) from ever sharing a 4-tuple with
/// another test's.
pub fn free_addr() -> SocketAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let salt = std::process::id() % 200;
    let ip = Ipv4Addr::new(
        127,
        10 + salt as u8,
        (n / 250 % 250) as u8,
        (n % 250 + 1) as u8,
    );
    let l = TcpListener::bind((ip, 0)).expect("bind an ephemeral port");
    l.local_addr().expect("local address")
}

pub struct ProxyBuilder {
    local: String,
    regions: Vec<(String, Vec<String>)>,
    table: Option<Value>,
    extra: String,
    listener: String,
    admin: String,
    table_file: bool,
    threads: usize,
    grace_period: String,
    keep_accepting: String,
    address: Option<SocketAddr>,
}

impl ProxyBuilder {
    pub fn new(local_region: &str) -> Self {
        ProxyBuilder {
            local: local_region.to_owned(),
            regions: Vec::new(),
            table: None,
            extra: String::new(),
            listener: String::new(),
            admin: String::new(),
            table_file: true,
            threads: 2,
            grace_period: "20s".into(),
            keep_accepting: "0s".into(),
            address: None,
        }
    }

    pub fn region(mut self, name: &str, backends: &[SocketAddr]) -> Self {
        self.regions.push((
            name.to_owned(),
            backends.iter().map(ToString::to_string).collect(),
        ));
        self
    }

    /// A region whose backends are given as `host:port` names.
    pub fn region_named(mut self, name: &str, backends: &[&str]) -> Self {
        self.regions.push((
            name.to_owned(),
            backends.iter().map(|b| (*b).to_owned()).collect(),
        ));
        self
    }

    pub fn table(mut self, table: Value) -> Self {
        self.table = Some(table);
        self
    }

    /// TOML appended to the generated config (extra sections).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    /// Extra keys for the traffic listener, such as `h2c = true`.
    pub fn listener_options(mut self, toml: &str) -> Self {
        self.listener.push_str(toml);
        self.listener.push('\n');
        self
    }

    /// `shutdown.grace_period` (20s unless set).
    pub fn grace_period(mut self, grace: &str) -> Self {
        self.grace_period = grace.to_owned();
        self
    }

    /// `shutdown.keep_accepting` (0s unless set).
    pub fn keep_accepting(mut self, time: &str) -> Self {
        self.keep_accepting = time.to_owned();
        self
    }

    /// The test's `extra` brings its own `[table]` section.
    pub fn without_table_file(mut self) -> Self {
        self.table_file = false;
        self
    }

    /// Extra keys for the admin listener, such as `token_file = "..."`.
    pub fn admin_options(mut self, toml: &str) -> Self {
        self.admin.push_str(toml);
        self.admin.push('\n');
        self
    }

    /// Worker threads (`runtime.threads`; 2 unless set).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// The traffic listener's address (a [`free_addr`] unless set): for a
    /// proxy that another, started before it, names as a backend.
    pub fn address(mut self, addr: SocketAddr) -> Self {
        self.address = Some(addr);
        self
    }

    /// Starts the proxy and waits until it is ready (`/ready`).
    pub async fn start(self) -> Proxy {
        self.start_until("/ready").await
    }

    /// Starts the proxy and waits until its admin listener says it is live
    /// (`/live`), ready or not (say, with no table yet).
    pub async fn start_live(self) -> Proxy {
        self.start_until("/live").await
    }

    async fn start_until(self, admin_path: &str) -> Proxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr = self.address.unwrap_or_else(free_addr);
        let admin = free_addr();
        let table_path = dir.path().join("table.json");
        let table = self.table.unwrap_or_else(|| {
            let names: Vec<(&str, &str)> = self
                .regions
                .iter()
                .map(|(n, _)| (n.as_str(), "active"))
                .collect();
            crate::table(1, 1, Some(&self.local), &names)
        });
        write_atomically(&table_path, &table.to_string());
        let mut config = format!(
            "local_region = \"{}\"\n\n[[listeners]]\naddress = \"{addr}\"\n{}\n[admin]\naddress = \"{admin}\"\n{}\n\
             [runtime]\nthreads = {}\n\n[shutdown]\ngrace_period = \"{}\"\nkeep_accepting = \"{}\"\n",
            self.local,
            self.listener,
            self.admin,
            self.threads,
            self.grace_period,
            self.keep_accepting
        );
        if self.table_file {
            config.push_str(
                "\n[table]\nsource = \"file\"\npath = \"table.json\"\nwatch_interval = \"100ms\"\n",
            );
        }
        for (name, backends) in &self.regions {
            let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
            config.push_str(&format!(
                "\n[[regions]]\nname = \"{name}\"\nbackends = [{}]\n",
                list.join(", ")
            ));
        }
        config.push_str(&self.extra);
        let config_path = dir.path().join("edgeroute.toml");
        std::fs::write(&config_path, &config).expect("write config");
        let log_path = dir.path().join("proxy.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(proxy_bin())
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info,pingora_core=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start edgeroute-proxy");
        let mut proxy = Proxy {
            child,
            addr,
            admin,
            table_path,
            log_path,
            _dir: dir,
        };
        proxy.wait_for(admin_path).await;
        proxy
    }
}

pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub table_path: PathBuf,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// POSTs a write and says where it went: the `x-edgeroute-region` that
    /// served it, or `refused <status>` when the proxy answered itself.
    pub async fn write_region(&self) -> String {
        let resp = crate::client()
            .post(self.url("/orders"))
            .body("{}")
            .send()
            .await
            .expect("the proxy answers");
        resp.headers()
            .get("x-edgeroute-region")
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| format!("refused {}", resp.status()), str::to_owned)
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The names of the process's threads.
    pub fn thread_names(&self) -> Vec<String> {
        let tasks = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(&tasks)
            .unwrap_or_else(|e| panic!("{tasks}: {e}"))
            .map(|t| {
                let comm = t.expect("task entry").path().join("comm");
                std::fs::read_to_string(comm)
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            })
            .collect()
    }

    /// Waits until the admin listener answers 200 at `path`.
    async fn wait_for(&mut self, path: &str) {
        let client = crate::client();
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("poll proxy") {
                panic!(
                    "edgeroute-proxy exited during start-up with {status}:\n{}",
                    self.log()
                );
            }
            if let Ok(r) = client.get(self.admin_url(path)).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "proxy's {path} not 200 after 30s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asserts that every admin path open without a token (the health,
    /// liveness and readiness paths) answers 200.
    pub async fn assert_open_admin_paths_ok(&self) {
        for path in [
            "/health",
            "/health/read",
            "/health/write",
            "/live",
            "/ready",
        ] {
            let resp = crate::client().get(self.admin_url(path)).send().await;
            assert_eq!(resp.unwrap().status(), 200, "{path}");
        }
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal the proxy");
    }

    /// Writes a new table file (atomically) without waiting for it to load.
    pub fn write_table(&self, table: &Value) {
        write_atomically(&self.table_path, &table.to_string());
    }

    pub fn write_table_text(&self, text: &str) {
        write_atomically(&self.table_path, text);
    }

    /// The routing view from the admin listener.
    pub async fn routing(&self) -> Value {
        crate::client()
            .get(self.admin_url("/routing"))
            .send()
            .await
            .expect("GET /routing")
            .json()
            .await
            .expect("/routing is JSON")
    }

    pub async fn table_version(&self) -> Option<u64> {
        self.routing().await["table"]["version"].as_u64()
    }

    pub async fn table_epoch(&self) -> Option<u64> {
        self.routing().await["table"]["epoch"].as_u64()
    }

    /// Writes `table`, sends SIGHUP, and waits until the proxy reports its version.
    pub async fn swap_table(&self, table: &Value) {
        self.write_table(table);
        self.signal(Signal::SIGHUP);
        let version = table["version"].as_u64().expect("table has a version");
        eventually(
            &format!("table version {version} in force"),
            Duration::from_secs(10),
            || async { self.table_version().await == Some(version) },
        )
        .await;
    }

    /// The value of a Prometheus sample such as `edgeroute_table_rejections_total{reason="stale_epoch"}`.
    pub async fn metric(&self, sample: &str) -> f64 {
        crate::sample(&self.metrics().await, sample)
    }

    /// The admin listener's `/metrics`, whole.
    pub async fn metrics(&self) -> String {
        crate::client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The first access line holding each of `parts` (`status=400`, a
    /// request id), once it is written: within 10 s.
    pub async fn access_line(&self, parts: &[&str]) -> String {
        let find = || {
            self.log()
                .lines()
                .find(|l| l.contains("edgeroute::access") && parts.iter().all(|p| l.contains(p)))
                .map(str::to_owned)
        };
        crate::eventually(
            &format!("an access line with {parts:?}"),
            Duration::from_secs(10),
            || async { find().is_some() },
        )
        .await;
        find().expect("the access line")
    }

    /// Waits for the process to exit, at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("poll proxy") {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "proxy still running after {limit:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // Only the process this harness started, by its PID.
            if let Err(e) = self.child.kill() {
                eprintln!("cannot stop proxy {}: {e}", self.child.id());
            }
            let _status = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- proxy log ---\n{}", self.log());
        }
    }
}

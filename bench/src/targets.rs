//! What the benchmarks talk to: one backend, and the proxies in front of it
//! (edgeroute, nginx, HAProxy), each a process on loopback that is stopped by
//! its PID when dropped.

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How to install the peers this suite compares against.
pub const PEERS_HINT: &str = "apt-get install -y nginx haproxy";

pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local address")
}

pub fn installed(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub struct Process {
    pub name: String,
    pub addr: SocketAddr,
    child: Child,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time of the process and its children.
    pub fn cpu(&self) -> CpuTime {
        std::iter::once(self.pid())
            .chain(children(self.pid()))
            .map(proc_cpu)
            .fold(CpuTime::default(), |a, b| a + b)
    }

    /// Resident memory of the process and its children, in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::iter::once(self.pid())
            .chain(children(self.pid()))
            .map(proc_rss_kib)
            .sum()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let mut live = live();
        live.pids.retain(|(p, _)| *p != self.pid());
        // Stopped with the registry held, so a stop signal's handler never
        // signals this PID once it is reaped (and free for another process).
        stop(self.pid(), &self.name);
    }
}

/// What a stop signal must not leave behind: the processes this run started
/// and the folders they work in, registered while they live.
struct Live {
    pids: Vec<(u32, String)>,
    dirs: Vec<PathBuf>,
}

static LIVE: Mutex<Live> = Mutex::new(Live {
    pids: Vec::new(),
    dirs: Vec::new(),
});

fn live() -> std::sync::MutexGuard<'static, Live> {
    LIVE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Stops one of this run's processes: SIGTERM first, so a master process
/// (nginx) stops its workers; SIGKILL for the process and any child left
/// after two seconds.
fn stop(pid: u32, name: &str) {
    let Ok(raw) = i32::try_from(pid) else { return };
    let target = Pid::from_raw(raw);
    // Reaps it once it has exited; an error means it was reaped already.
    let exited = || {
        !matches!(
            waitpid(target, Some(WaitPidFlag::WNOHANG)),
            Ok(WaitStatus::StillAlive)
        )
    };
    if exited() {
        return;
    }
    let kids = children(pid);
    if kill(target, Signal::SIGTERM).is_ok() {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && !exited() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if !exited() {
        if let Err(e) = kill(target, Signal::SIGKILL) {
            eprintln!("cannot stop {name} ({pid}): {e}");
        }
        waitpid(target, None).ok();
    }
    for kid in kids {
        if let Ok(raw) = i32::try_from(kid)
            && Path::new(&format!("/proc/{kid}")).exists()
        {
            kill(Pid::from_raw(raw), Signal::SIGKILL).ok();
        }
    }
}

/// A scenario's folder for configs and logs: removed when dropped, or by the
/// stop-signal handler if the run is stopped.
pub struct Scratch(tempfile::TempDir);

impl Scratch {
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("edgeroute-bench")
            .tempdir()
            .context("cannot create a scratch folder under the system's temporary folder")?;
        live().dirs.push(dir.path().to_owned());
        Ok(Self(dir))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        live().dirs.retain(|d| d != self.0.path());
    }
}

/// On SIGINT, SIGTERM or SIGHUP, stops every process the run started and
/// removes its scratch folders, then exits as a process killed by that
/// signal is reported (128 + its number). Without this, `kill` on the suite
/// would leave its proxies and backend running.
pub fn stop_on_signals() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let (mut int, mut term, mut hup) = {
        let _in_runtime = rt.enter();
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        )
    };
    std::thread::Builder::new()
        .name("stop-signals".into())
        .spawn(move || {
            let number = rt.block_on(async {
                tokio::select! {
                    _ = int.recv() => Signal::SIGINT,
                    _ = term.recv() => Signal::SIGTERM,
                    _ = hup.recv() => Signal::SIGHUP,
                }
            });
            eprintln!("\n{number}: stopping the processes this run started");
            let mut live = live();
            for (pid, name) in std::mem::take(&mut live.pids) {
                stop(pid, &name);
            }
            for dir in std::mem::take(&mut live.dirs) {
                std::fs::remove_dir_all(dir).ok();
            }
            std::process::exit(128 + number as i32);
        })?;
    Ok(())
}

/// CPU time of this process (the load generator), its children not counted.
pub fn own_cpu() -> CpuTime {
    proc_cpu(std::process::id())
}

/// CPU time in seconds: in the process's own code, and in the kernel on its
/// behalf (system calls, and the network stack's work they do).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct CpuTime {
    pub user: f64,
    pub kernel: f64,
}

impl CpuTime {
    pub fn total(self) -> f64 {
        self.user + self.kernel
    }
}

impl std::ops::Add for CpuTime {
    type Output = CpuTime;
    fn add(self, o: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user + o.user,
            kernel: self.kernel + o.kernel,
        }
    }
}

impl std::ops::Sub for CpuTime {
    type Output = CpuTime;
    fn sub(self, o: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user - o.user,
            kernel: self.kernel - o.kernel,
        }
    }
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn proc_cpu(pid: u32) -> CpuTime {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    cpu_of_stat(&stat, clock_ticks_per_second())
}

/// The CPU times in a `/proc/PID/stat` line (0 for a line that holds none).
fn cpu_of_stat(stat: &str, ticks_per_second: f64) -> CpuTime {
    // Fields after the command name (which may contain spaces) start at ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let seconds = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0) as f64
            / ticks_per_second
    };
    CpuTime {
        user: seconds(11),
        kernel: seconds(12),
    }
}

fn proc_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// Asked once: CPU times are read around every measured run, and asking
/// starts a process.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn spawn(name: &str, addr: SocketAddr, mut cmd: Command, log: &Path) -> anyhow::Result<Process> {
    let out = std::fs::File::create(log)?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    live().pids.push((child.id(), name.to_owned()));
    let mut p = Process {
        name: name.to_owned(),
        addr,
        child,
    };
    wait_listening(&mut p, log)?;
    Ok(p)
}

fn wait_listening(p: &mut Process, log: &Path) -> anyhow::Result<()> {
    let start = Instant::now();
    while std::net::TcpStream::connect(p.addr).is_err() {
        if let Ok(Some(status)) = p.child.try_wait() {
            bail!(
                "{} exited with {status}:\n{}",
                p.name,
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!(
                "{} did not listen on {} within 30 s:\n{}",
                p.name,
                p.addr,
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The backend every target forwards to: nginx with one worker answering a
/// fixed 2-byte body, the same as `shared/bench/peers.sh`.
pub fn nginx_backend(dir: &Path) -> anyhow::Result<Process> {
    let addr = free_addr();
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {dir}/nginx-backend.pid;\nerror_log {dir}/nginx-backend.err warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dir}/nb_body;\n  proxy_temp_path {dir}/nb_proxy;\n\
         fastcgi_temp_path {dir}/nb_fcgi;\n  uwsgi_temp_path {dir}/nb_uwsgi;\n  scgi_temp_path {dir}/nb_scgi;\n\
         keepalive_requests 1000000;\n  keepalive_timeout 60s;\n\
         server {{\n    listen {addr} backlog=4096;\n    default_type text/plain;\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n",
        dir = dir.display()
    );
    let path = dir.join("nginx-backend.conf");
    std::fs::write(&path, conf)?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-c").arg(&path);
    spawn("backend (nginx)", addr, cmd, &dir.join("nginx-backend.log"))
}

/// nginx in front of `backend` with `workers` worker processes.
pub fn nginx_proxy(dir: &Path, backend: SocketAddr, workers: usize) -> anyhow::Result<Process> {
    let addr = free_addr();
    let conf = format!(
        "worker_processes {workers};\ndaemon off;\npid {dir}/nginx-proxy.pid;\nerror_log {dir}/nginx-proxy.err warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dir}/np_body;\n  proxy_temp_path {dir}/np_proxy;\n\
         fastcgi_temp_path {dir}/np_fcgi;\n  uwsgi_temp_path {dir}/np_uwsgi;\n  scgi_temp_path {dir}/np_scgi;\n\
         keepalive_requests 1000000;\n\
         upstream backend {{ server {backend}; keepalive 64; keepalive_requests 1000000; }}\n\
         server {{\n    listen {addr} backlog=4096;\n    location / {{\n      proxy_pass http://backend;\n\
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
        dir = dir.display()
    );
    let path = dir.join("nginx-proxy.conf");
    std::fs::write(&path, conf)?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-c").arg(&path);
    spawn("nginx", addr, cmd, &dir.join("nginx-proxy.log"))
}

/// HAProxy in front of `backend` with `threads` threads.
pub fn haproxy(dir: &Path, backend: SocketAddr, threads: usize) -> anyhow::Result<Process> {
    let addr = free_addr();
    let conf = format!(
        "global\n  nbthread {threads}\n  maxconn 4096\n  pidfile {dir}/haproxy.pid\n\
         defaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n\
         option http-keep-alive\n  http-reuse always\n\
         frontend fe\n  bind {addr}\n  default_backend be\n\
         backend be\n  server b1 {backend} maxconn 1000\n",
        dir = dir.display()
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf)?;
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&path);
    spawn("haproxy", addr, cmd, &dir.join("haproxy.log"))
}

/// The edgeroute binary beside this one (`target/release/`), or `--proxy-bin`.
pub fn proxy_bin(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let bin = match explicit {
        Some(p) => p.to_owned(),
        None => std::env::current_exe()?
            .parent()
            .context("bench executable has no folder")?
            .join("edgeroute-proxy"),
    };
    anyhow::ensure!(
        bin.is_file(),
        "{} not found: build it with `cargo build --release -p edgeroute-proxy` or pass --proxy-bin",
        bin.display()
    );
    Ok(bin)
}

/// An edgeroute proxy with `regions` (name, backends), local first, and a
/// table file the caller may rewrite; probes, outlier detection and metrics
/// are on, the access log off (as for the peers).
pub struct Edgeroute {
    pub process: Process,
    pub admin: SocketAddr,
    pub table: PathBuf,
}

/// Starts an [`Edgeroute`] on `threads` worker threads, with `extra` added
/// to its configuration.
pub fn edgeroute(
    bin: &Path,
    dir: &Path,
    regions: &[(&str, Vec<SocketAddr>)],
    table: &serde_json::Value,
    threads: usize,
    extra: &str,
) -> anyhow::Result<Edgeroute> {
    let addr = free_addr();
    let admin = free_addr();
    let table_path = dir.join("table.json");
    std::fs::write(&table_path, table.to_string())?;
    let mut conf = format!(
        "local_region = \"{}\"\n[[listeners]]\naddress = \"{addr}\"\n[admin]\naddress = \"{admin}\"\n\
         [table]\nsource = \"file\"\npath = \"table.json\"\nwatch_interval = \"1s\"\n\
         [log]\naccess = false\nlevel = \"warn\"\n[runtime]\nthreads = {threads}\n{extra}\n",
        regions[0].0
    );
    for (name, backends) in regions {
        let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
        conf.push_str(&format!(
            "[[regions]]\nname = \"{name}\"\nbackends = [{}]\n",
            list.join(", ")
        ));
    }
    let path = dir.join("edgeroute.toml");
    std::fs::write(&path, conf)?;
    let mut cmd = Command::new(bin);
    cmd.arg("run").arg("--config").arg(&path);
    let process = spawn("edgeroute", addr, cmd, &dir.join("edgeroute.log"))?;
    // Listening is not enough: wait for the first probes too.
    let start = Instant::now();
    while !ready(admin) {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "edgeroute not ready within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Edgeroute {
        process,
        admin,
        table: table_path,
    })
}

fn ready(admin: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(admin) else {
        return false;
    };
    if s.write_all(b"GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && &buf[9..12] == b"200"
}

/// A routing table with every region active and `primary`.
pub fn table(
    epoch: u64,
    version: u64,
    primary: &str,
    regions: &[(&str, &str)],
    failover: bool,
) -> serde_json::Value {
    serde_json::json!({
        "epoch": epoch,
        "version": version,
        "primary_region": primary,
        "failover_in_progress": failover,
        "regions": regions.iter().map(|(n, s)| serde_json::json!({"name": n, "state": s})).collect::<Vec<_>>(),
    })
}

/// Where a running edgeroute's table lives and whom to signal; `Send`, so a
/// swapping thread can own it.
#[derive(Clone)]
pub struct TableHandle {
    pub path: PathBuf,
    pub pid: u32,
}

impl Edgeroute {
    pub fn table_handle(&self) -> TableHandle {
        TableHandle {
            path: self.table.clone(),
            pid: self.process.pid(),
        }
    }
}

/// Rewrites the table file atomically and signals the proxy to reload it.
pub fn swap_table(h: &TableHandle, table: &serde_json::Value) -> anyhow::Result<()> {
    let tmp = h.path.with_extension("tmp");
    std::fs::write(&tmp, table.to_string())?;
    std::fs::rename(&tmp, &h.path)?;
    // A system call, not a `kill` process: a thousand swaps would otherwise
    // start a thousand processes on the cores the measured run shares.
    let pid = Pid::from_raw(i32::try_from(h.pid)?);
    kill(pid, Signal::SIGHUP).context("cannot signal edgeroute to reload its table")
}

/// The table version the proxy reports, from its admin listener.
pub fn table_version(admin: SocketAddr) -> Option<u64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).ok()?;
    s.write_all(b"GET /routing HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let body = text.split_once("\r\n\r\n")?.1;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v["table"]["version"].as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_kernel_times_come_from_their_stat_fields() {
        // A command name with spaces and a parenthesis, as a process may have.
        let stat = "4242 (nginx: worker (x)) S 1 4242 4242 0 -1 4194624 \
                    610 0 0 0 250 75 3 1 20 0 1 0 123 4567 89";
        let cpu = cpu_of_stat(stat, 100.0);
        assert_eq!(
            cpu,
            CpuTime {
                user: 2.5,
                kernel: 0.75
            }
        );
        assert_eq!(cpu_of_stat("", 100.0), CpuTime::default());
        let later = CpuTime {
            user: 3.0,
            kernel: 1.0,
        };
        assert_eq!(
            later - cpu,
            CpuTime {
                user: 0.5,
                kernel: 0.25
            }
        );
        assert_eq!((cpu + later).total(), 7.25);
    }
}

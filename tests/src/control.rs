//! Starts the real `edgeroute-control` binary with a topology file the test
//! rewrites.

use crate::proxy::{free_addr, workspace_bin, write_atomically};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "control-test-token";

pub struct ControlPlane {
    child: Child,
    pub addr: SocketAddr,
    /// The CA that signed its certificate, when it serves HTTPS.
    pub ca: Option<TestCa>,
    /// The CA its clients' certificates must be signed by, when it asks
    /// for them (`server.client_ca`).
    pub clients: Option<TestCa>,
    /// A client that trusts [`ControlPlane::ca`].
    client: reqwest::Client,
    pub topology_path: PathBuf,
    pub token_path: PathBuf,
    pub config_path: PathBuf,
    pub dir: PathBuf,
    env: Vec<(String, String)>,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Ran {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Fails unless the command succeeded and printed every one of `parts`.
    pub fn assert_ok_saying(&self, parts: &[&str]) {
        assert!(self.ok, "{self:?}");
        for part in parts {
            assert!(
                self.stdout.contains(part),
                "{part:?} missing from:\n{}",
                self.stdout
            );
        }
    }
}

/// A certificate authority of the tests' own, and the server certificates
/// it signs.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    /// Its certificate, as PEM.
    pub pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // A name of its own: another test CA is another issuer.
        static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let nth = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("edgeroute test CA {}-{nth}", std::process::id()),
        );
        let key = rcgen::KeyPair::generate().expect("CA key");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        let pem = issuer.pem();
        TestCa { issuer, pem }
    }

    /// Writes a client certificate (for TLS client authentication) that
    /// expires on 1 January 2100, and its key.
    pub fn issue_client(&self, cert: &Path, key: &Path) {
        self.issue_client_until(cert, key, 2100);
    }

    /// [`TestCa::issue_client`], expiring on 1 January of `until`.
    pub fn issue_client_until(&self, cert: &Path, key: &Path, until: i32) {
        let mut params =
            rcgen::CertificateParams::new(vec!["proxy.test".to_owned()]).expect("client params");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
        self.sign(params, cert, key);
    }

    /// Writes a certificate for `localhost` and `ip` that expires on
    /// 1 January of `until`, and its key.
    pub fn issue(&self, cert: &Path, key: &Path, until: i32, ip: std::net::IpAddr) {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), ip.to_string()])
                .expect("server params");
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
        self.sign(params, cert, key);
    }

    /// Writes the certificate of `params` that this CA signs, with a new
    /// key, and the key.
    fn sign(&self, params: rcgen::CertificateParams, cert: &Path, key: &Path) {
        let pair = rcgen::KeyPair::generate().expect("a key");
        let made = params
            .signed_by(&pair, &self.issuer)
            .expect("a certificate");
        std::fs::write(cert, made.pem()).expect("write the certificate");
        std::fs::write(key, pair.serialize_pem()).expect("write the key");
    }
}

/// The first certificate in a PEM file, as DER.
pub fn certificate_der(path: &Path) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_file(path)
        .expect("a PEM certificate")
        .to_vec()
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// A topology document: `regions` as (name, weight, healthy).
pub fn topology(primary: Option<&str>, failover: bool, regions: &[(&str, u32, bool)]) -> Value {
    serde_json::json!({
        "primary_region": primary,
        "failover_in_progress": failover,
        "regions": regions.iter().map(|(n, w, h)| serde_json::json!({"name": n, "weight": w, "healthy": h})).collect::<Vec<_>>(),
    })
}

/// The entry of region `name` in a table's JSON; panics if it has none.
pub fn region<'a>(table: &'a Value, name: &str) -> &'a Value {
    table["regions"]
        .as_array()
        .expect("a table's regions")
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no region {name} in {table}"))
}

impl ControlPlane {
    /// With a file source holding `initial`.
    pub async fn start(initial: &Value) -> ControlPlane {
        let source =
            "[source]\nkind = \"file\"\npath = \"topology.json\"\npoll_interval = \"100ms\"\n";
        ControlPlane::start_with(Some(initial), source, &[]).await
    }

    /// With the `[source]` section given, and extra environment.
    pub async fn start_with(
        initial: Option<&Value>,
        source: &str,
        env: &[(&str, String)],
    ) -> ControlPlane {
        ControlPlane::launch(initial, "", source, env, None, None).await
    }

    /// [`ControlPlane::start`] with more lines in its `[server]` section.
    pub async fn start_serving(initial: &Value, server: &str) -> ControlPlane {
        let source =
            "[source]\nkind = \"file\"\npath = \"topology.json\"\npoll_interval = \"100ms\"\n";
        ControlPlane::launch(Some(initial), server, source, &[], None, None).await
    }

    /// [`ControlPlane::start`] serving HTTPS (`server.tls`) with a
    /// certificate for its address signed by a CA of its own, which its
    /// commands trust (`actions.ca_file`, `ca.pem` beside the config).
    pub async fn start_tls(initial: &Value) -> ControlPlane {
        let source =
            "[source]\nkind = \"file\"\npath = \"topology.json\"\npoll_interval = \"100ms\"\n";
        ControlPlane::launch(Some(initial), "", source, &[], Some(TestCa::new()), None).await
    }

    /// [`ControlPlane::start_tls`] asking every client for a certificate
    /// signed by a second CA of its own (`server.client_ca`,
    /// `clients-ca.pem`): its commands present one (`actions.client_tls`),
    /// as do the test's requests and proxies on
    /// [`ControlPlane::table_source`].
    pub async fn start_mtls(initial: &Value) -> ControlPlane {
        let source =
            "[source]\nkind = \"file\"\npath = \"topology.json\"\npoll_interval = \"100ms\"\n";
        let (ca, clients) = (Some(TestCa::new()), Some(TestCa::new()));
        ControlPlane::launch(Some(initial), "", source, &[], ca, clients).await
    }

    /// [`ControlPlane::start_mtls`] with the `[source]` (and any later
    /// sections) given, `actions` (lines of TOML) added to its `[actions]`,
    /// and extra environment.
    pub async fn start_mtls_with(
        actions: &str,
        source: &str,
        env: &[(&str, String)],
    ) -> ControlPlane {
        let (ca, clients) = (Some(TestCa::new()), Some(TestCa::new()));
        // The TLS lines end in `[actions]`: lines put before the source's
        // first header are that section's.
        let source = format!("{actions}\n{source}");
        ControlPlane::launch(None, "", &source, env, ca, clients).await
    }

    async fn launch(
        initial: Option<&Value>,
        server: &str,
        source: &str,
        env: &[(&str, String)],
        ca: Option<TestCa>,
        clients: Option<TestCa>,
    ) -> ControlPlane {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr = free_addr();
        let topology_path = dir.path().join("topology.json");
        if let Some(initial) = initial {
            write_atomically(&topology_path, &initial.to_string());
        }
        let token_path = dir.path().join("token");
        std::fs::write(&token_path, format!("{TOKEN}\n")).expect("write token");
        let mut client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none());
        let tls = match &ca {
            Some(ca) => {
                ca.issue(
                    &dir.path().join("cert.pem"),
                    &dir.path().join("key.pem"),
                    2100,
                    addr.ip(),
                );
                std::fs::write(dir.path().join("ca.pem"), &ca.pem).expect("write the CA");
                client = client.add_root_certificate(
                    reqwest::Certificate::from_pem(ca.pem.as_bytes()).expect("the CA as PEM"),
                );
                "tls = { cert = \"cert.pem\", key = \"key.pem\" }\n\n[actions]\nca_file = \"ca.pem\"\n"
            }
            None => "",
        };
        let tls = match &clients {
            Some(clients) => {
                let at = |file: &str| dir.path().join(file);
                std::fs::write(at("clients-ca.pem"), &clients.pem).expect("write the CA");
                clients.issue_client(&at("client.pem"), &at("client.key"));
                clients.issue_client(&at("proxy-client.pem"), &at("proxy-client.key"));
                let mut pem = std::fs::read(at("client.pem")).expect("the certificate");
                pem.extend(std::fs::read(at("client.key")).expect("the key"));
                client = client.identity(reqwest::Identity::from_pem(&pem).expect("the identity"));
                tls.replace(
                    "}\n\n[actions]\n",
                    "}\nclient_ca = \"clients-ca.pem\"\n\n[actions]\nclient_tls = { cert = \"client.pem\", key = \"client.key\" }\n",
                )
            }
            None => tls.to_owned(),
        };
        let config = format!(
            "[server]\naddress = \"{addr}\"\ntoken_file = \"token\"\n{server}{tls}\n{source}"
        );
        let config_path = dir.path().join("control.toml");
        std::fs::write(&config_path, config).expect("write config");
        let log_path = dir.path().join("control.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(workspace_bin("edgeroute-control", "EDGEROUTE_CONTROL_BIN"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start edgeroute-control");
        let mut cp = ControlPlane {
            child,
            addr,
            ca,
            clients,
            client: client.build().expect("http client"),
            topology_path,
            token_path,
            dir: dir.path().to_owned(),
            config_path,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            log_path,
            _dir: dir,
        };
        let start = Instant::now();
        loop {
            if let Some(status) = cp.child.try_wait().expect("poll control") {
                panic!("edgeroute-control exited with {status}:\n{}", cp.log());
            }
            if let Ok(r) = cp.client.get(cp.url("/health")).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "control plane not up after 30s:\n{}",
                cp.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cp
    }

    /// Runs `edgeroute-control ARGS --config <its config>` with its
    /// environment, without blocking the test's runtime.
    pub async fn command(&self, args: &[&str]) -> Ran {
        self.command_with(&self.config_path, args).await
    }

    /// [`ControlPlane::command`] with `actions.control_url` set to `url`, as
    /// run on another machine (see [`ControlPlane::command_elsewhere`]).
    pub async fn command_via(&self, url: &str, args: &[&str]) -> Ran {
        self.command_with_actions(&format!("control_url = {url:?}\n"), args)
            .await
    }

    /// [`ControlPlane::command_elsewhere`] with `lines` added to its
    /// `[actions]`.
    pub async fn command_with_actions(&self, lines: &str, args: &[&str]) -> Ran {
        let config = std::fs::read_to_string(&self.config_path).expect("read the config");
        let config = if config.contains("[actions]\n") {
            config.replace("[actions]\n", &format!("[actions]\n{lines}"))
        } else {
            format!("{config}\n[actions]\n{lines}")
        };
        self.command_elsewhere_with(&config, args).await
    }

    /// [`ControlPlane::command`] as run on another machine: its config and
    /// token copied to a folder of their own, so with a history file of
    /// its own.
    pub async fn command_elsewhere(&self, args: &[&str]) -> Ran {
        self.command_elsewhere_with(&self.config(), args).await
    }

    /// The control plane's config file, as written.
    pub fn config(&self) -> String {
        std::fs::read_to_string(&self.config_path).expect("read the config")
    }

    /// Runs a command with `config` in another folder, beside a copy of
    /// the token (and of a file source's topology).
    pub async fn command_elsewhere_with(&self, config: &str, args: &[&str]) -> Ran {
        let elsewhere = self.dir.join("elsewhere");
        std::fs::create_dir_all(&elsewhere).expect("another folder");
        let path = elsewhere.join("control.toml");
        std::fs::write(&path, config).expect("write the config");
        std::fs::copy(&self.token_path, elsewhere.join("token")).expect("copy the token");
        // The CAs, and the server's and commands' files the config names.
        for file in [
            "ca.pem",
            "cert.pem",
            "key.pem",
            "clients-ca.pem",
            "client.pem",
            "client.key",
        ] {
            if self.dir.join(file).exists() {
                std::fs::copy(self.dir.join(file), elsewhere.join(file)).expect("copy a TLS file");
            }
        }
        // A file source's topology, where the config names it beside itself.
        if self.topology_path.exists() {
            std::fs::copy(&self.topology_path, elsewhere.join("topology.json"))
                .expect("copy the topology");
        }
        self.command_with(&path, args).await
    }

    /// [`ControlPlane::command`] whose standard output nobody reads (a
    /// `| head` that has exited): every write to it fails, as a broken pipe.
    pub async fn command_unread(&self, args: &[&str]) -> Ran {
        let mut child = tokio::process::Command::new(workspace_bin(
            "edgeroute-control",
            "EDGEROUTE_CONTROL_BIN",
        ))
        .args(args)
        .arg("--config")
        .arg(&self.config_path)
        .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run edgeroute-control");
        drop(child.stdout.take());
        let out = child.wait_with_output().await.expect("its end");
        Ran {
            ok: out.status.success(),
            stdout: String::new(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn command_with(&self, config: &Path, args: &[&str]) -> Ran {
        let out = tokio::process::Command::new(workspace_bin(
            "edgeroute-control",
            "EDGEROUTE_CONTROL_BIN",
        ))
        .args(args)
        .arg("--config")
        .arg(config)
        .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("run edgeroute-control");
        let ran = Ran {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        eprintln!(
            "$ edgeroute-control {}\n{}{}",
            args.join(" "),
            ran.stdout,
            ran.stderr
        );
        ran
    }

    /// The history file the commands keep (`elsewhere`: that of
    /// [`ControlPlane::command_elsewhere`]), as JSON; `null` when none was
    /// written.
    pub fn history(&self, elsewhere: bool) -> Value {
        let dir = if elsewhere {
            self.dir.join("elsewhere")
        } else {
            self.dir.clone()
        };
        match std::fs::read_to_string(dir.join("history.json")) {
            Ok(text) => serde_json::from_str(&text).expect("a history file of JSON"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Null,
            Err(e) => panic!("cannot read the history file: {e}"),
        }
    }

    /// A proxy that takes its table from this control plane and reports to
    /// it every `report_interval`.
    pub fn proxy(
        &self,
        builder: crate::ProxyBuilder,
        report_interval: &str,
    ) -> crate::ProxyBuilder {
        builder
            .extra(&format!(
                "\n[table]\n{}wait = \"5s\"\nreport_interval = \"{report_interval}\"\n",
                self.table_source()
            ))
            .without_table_file()
    }

    /// A proxy's `[table]` keys that take its table from here: `source`,
    /// `url`, `token_file` and, with TLS, `ca_file`.
    pub fn table_source(&self) -> String {
        let mut ca = match &self.ca {
            Some(_) => format!("ca_file = {:?}\n", self.dir.join("ca.pem")),
            None => String::new(),
        };
        if self.clients.is_some() {
            ca += &format!(
                "client_tls = {{ cert = {:?}, key = {:?} }}\n",
                self.dir.join("proxy-client.pem"),
                self.dir.join("proxy-client.key")
            );
        }
        format!(
            "source = \"control\"\nurl = \"{}\"\ntoken_file = {:?}\n{ca}",
            self.url(""),
            self.token_path
        )
    }

    /// An authenticated GET of a JSON document.
    pub async fn get(&self, path: &str) -> Value {
        self.client
            .get(self.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("GET from the control plane")
            .json()
            .await
            .expect("JSON")
    }

    /// `path` on this control plane: `https://ADDRESS` with TLS, else
    /// `http://ADDRESS`.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    /// The certificate this control plane serves now, as DER, as a new
    /// connection to it by the name `localhost` sees it.
    pub async fn served_certificate(&self) -> Vec<u8> {
        let ca = self.ca.as_ref().expect("a control plane serving HTTPS");
        let client = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(ca.pem.as_bytes()).expect("the CA as PEM"),
            )
            .resolve("localhost", self.addr)
            .tls_info(true)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        let resp = client
            .get(format!("https://localhost:{}/health", self.addr.port()))
            .send()
            .await
            .expect("the control plane answers by the name localhost");
        let info = resp
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .expect("TLS details of the connection");
        info.peer_certificate()
            .expect("the server's certificate")
            .to_vec()
    }

    /// A client of this control plane, which trusts its certificate.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub async fn metric(&self, sample: &str) -> f64 {
        crate::sample(&self.metrics().await, sample)
    }

    /// Its metrics, all read at once.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics")
    }

    pub fn set_topology(&self, v: &Value) {
        write_atomically(&self.topology_path, &v.to_string());
    }

    /// The table it serves now.
    pub async fn table(&self) -> Value {
        self.client
            .get(self.url("/v1/table"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("GET /v1/table")
            .json()
            .await
            .expect("table JSON")
    }

    /// Sends it `signal`.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signal the control plane");
    }

    /// Stops it (SIGKILL), as an outage would.
    pub fn kill(&mut self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL).expect("kill control plane");
        self.child.wait().ok();
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.child.kill().ok();
            self.child.wait().ok();
        }
        if std::thread::panicking() {
            eprintln!("--- control plane log ---\n{}", self.log());
        }
    }
}

/// A stand-in for the control plane that answers table requests with the
/// tables it is given, in turn (each with its own ETag), then holds every
/// further one as a long poll with no change would; reports are taken and
/// dropped. For what the real one never sends: malformed or oversized
/// tables, answers without an ETag.
pub struct ScriptedControl {
    pub addr: SocketAddr,
    /// Table requests answered, and those that named no table.
    counts: std::sync::Arc<(
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
    )>,
    /// Each table request's `If-None-Match`, in turn.
    named: std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>,
    task: tokio::task::JoinHandle<()>,
    /// Holds the token file proxies are given (any token is taken).
    dir: tempfile::TempDir,
}

/// How a [`ScriptedControl`] answers table requests.
#[derive(Clone, Copy, PartialEq)]
enum Script {
    /// Each table in turn with an ETag of its own, then a long poll that
    /// never ends; 503 before the first.
    InTurn,
    /// The first table at once every time, no ETag (a static file
    /// server); 304 with none to give.
    Static,
    /// As `Static`, and a status that says its source cannot be read.
    StaleStatus,
    /// A request that names no table gets the table (ETag `"0"`); one
    /// that names one gets 304 with another ETag (a cache in between that
    /// holds another answer).
    Foreign304,
    /// The table with an ETag and `Age: 5`, as a cache serves a stored
    /// answer.
    Cached,
}

impl ScriptedControl {
    pub async fn start(tables: Vec<bytes::Bytes>) -> ScriptedControl {
        Self::serve(tables, Script::InTurn).await
    }

    /// Answers a request that names no table with `table` (ETag `"0"`),
    /// and every one that names a table `304 Not Modified` with another
    /// ETag, as a cache in between that holds another answer may.
    pub async fn start_foreign_304(table: bytes::Bytes) -> ScriptedControl {
        Self::serve(vec![table], Script::Foreign304).await
    }

    /// Answers every table request with `table` and `Age: 5`: a cache's
    /// stored answer.
    pub async fn start_cached(table: bytes::Bytes) -> ScriptedControl {
        Self::serve(vec![table], Script::Cached).await
    }

    /// Answers every table request at once with `table` and no ETag, as a
    /// static file server would.
    pub async fn start_without_etags(table: bytes::Bytes) -> ScriptedControl {
        Self::serve(vec![table], Script::Static).await
    }

    /// Serves `table`, no proxies, and a status that says its source
    /// cannot be read (`/v1/status`'s `source_stale`).
    pub async fn start_stale(table: bytes::Bytes) -> ScriptedControl {
        Self::serve(vec![table], Script::StaleStatus).await
    }

    /// Answers every table request `304 Not Modified`, whether it named a
    /// table or not: a control plane that has never given one.
    pub async fn start_not_modified() -> ScriptedControl {
        Self::serve(Vec::new(), Script::Static).await
    }

    /// Answers every table request `503`, as a control plane does before
    /// its first table, with no proxies and a status that says nothing of
    /// its source.
    pub async fn start_without_table() -> ScriptedControl {
        Self::serve(Vec::new(), Script::InTurn).await
    }

    /// Table requests answered so far.
    pub fn asks(&self) -> usize {
        self.counts.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Table requests so far that named no table (no `If-None-Match`).
    pub fn whole_asks(&self) -> usize {
        self.counts.1.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The `If-None-Match` of each table request so far, in turn.
    pub fn named(&self) -> Vec<Option<String>> {
        self.named.lock().expect("the requests' tags").clone()
    }

    async fn serve(tables: Vec<bytes::Bytes>, script: Script) -> ScriptedControl {
        use http_body_util::Full;
        use hyper::service::service_fn;
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        use std::sync::{Arc, Mutex};
        let listener = tokio::net::TcpListener::bind(free_addr())
            .await
            .expect("bind the scripted control plane");
        let addr = listener.local_addr().expect("its address");
        let left = Arc::new(Mutex::new(std::collections::VecDeque::from(tables)));
        let counts = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let (served, whole) = (Arc::clone(&counts), Arc::clone(&counts));
        let named: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let tags = Arc::clone(&named);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (left, counts) = (Arc::clone(&left), Arc::clone(&served));
                let tags = Arc::clone(&tags);
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (left, counts) = (Arc::clone(&left), Arc::clone(&counts));
                        let tags = Arc::clone(&tags);
                        async move {
                            let mut resp = http::Response::new(Full::new(bytes::Bytes::new()));
                            if req.method() == http::Method::POST {
                                *resp.status_mut() = http::StatusCode::NO_CONTENT;
                                return Ok::<_, std::convert::Infallible>(resp);
                            }
                            let stale = script == Script::StaleStatus;
                            let listing = match req.uri().path() {
                                "/v1/status" => Some(serde_json::json!({ "source_stale": stale })),
                                "/v1/proxies" => Some(serde_json::json!({ "proxies": [] })),
                                _ => None,
                            };
                            if let Some(listing) = listing {
                                *resp.body_mut() = Full::new(listing.to_string().into());
                                return Ok(resp);
                            }
                            let tag = req.headers().get(http::header::IF_NONE_MATCH);
                            tags.lock()
                                .expect("the requests' tags")
                                .push(tag.map(|t| t.to_str().unwrap_or("(not text)").to_owned()));
                            let named = tag.is_some();
                            if !named {
                                counts.1.fetch_add(1, SeqCst);
                            }
                            let served = &counts.0;
                            let next = {
                                let mut left = left.lock().expect("tables");
                                if script == Script::InTurn {
                                    left.pop_front()
                                } else {
                                    left.front().cloned()
                                }
                            };
                            let tag = |resp: &mut http::Response<_>, tag: &'static str| {
                                resp.headers_mut().insert(
                                    http::header::ETAG,
                                    http::HeaderValue::from_static(tag),
                                );
                            };
                            match (script, next) {
                                (Script::Foreign304, next) => {
                                    served.fetch_add(1, SeqCst);
                                    if named {
                                        *resp.status_mut() = http::StatusCode::NOT_MODIFIED;
                                        tag(&mut resp, "\"cached\"");
                                    } else {
                                        *resp.body_mut() = Full::new(next.unwrap_or_default());
                                        tag(&mut resp, "\"0\"");
                                    }
                                }
                                (Script::Cached, next) => {
                                    served.fetch_add(1, SeqCst);
                                    *resp.body_mut() = Full::new(next.unwrap_or_default());
                                    tag(&mut resp, "\"0\"");
                                    resp.headers_mut().insert(
                                        http::header::AGE,
                                        http::HeaderValue::from_static("5"),
                                    );
                                }
                                // Static, with nothing to serve.
                                (Script::Static | Script::StaleStatus, None) => {
                                    *resp.status_mut() = http::StatusCode::NOT_MODIFIED;
                                }
                                (Script::Static | Script::StaleStatus, Some(body)) => {
                                    served.fetch_add(1, SeqCst);
                                    *resp.body_mut() = Full::new(body);
                                }
                                (Script::InTurn, Some(body)) => {
                                    let n = served.fetch_add(1, SeqCst);
                                    resp.headers_mut().insert(
                                        http::header::ETAG,
                                        http::HeaderValue::from_str(&format!("\"{n}\""))
                                            .expect("an ETag"),
                                    );
                                    *resp.body_mut() = Full::new(body);
                                }
                                // Never given any: no table yet.
                                (Script::InTurn, None) if served.load(SeqCst) == 0 => {
                                    *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                                }
                                (Script::InTurn, None) => {
                                    // No change: a long poll that never ends.
                                    std::future::pending::<()>().await;
                                }
                            }
                            Ok(resp)
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
            }
        });
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("token"), "t0ken\n").expect("write token");
        ScriptedControl {
            addr,
            counts: whole,
            named,
            task,
            dir,
        }
    }

    /// A proxy that takes its tables from here.
    pub fn proxy(&self, builder: crate::ProxyBuilder) -> crate::ProxyBuilder {
        builder
            .extra(&format!(
                "\n[table]\nsource = \"control\"\nurl = \"http://{}\"\ntoken_file = {:?}\nmax_backoff = \"200ms\"\n",
                self.addr,
                self.dir.path().join("token")
            ))
            .without_table_file()
    }
}

impl Drop for ScriptedControl {
    fn drop(&mut self) {
        self.task.abort();
    }
}

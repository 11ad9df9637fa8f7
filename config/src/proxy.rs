//! The proxy's configuration file (TOML): raw form, validated form, defaults.
//!
//! Defaults are chosen for a proxy that runs beside its service in one region:
//! the admin listener is bound to loopback, health checks follow Route 53's
//! own (`/health`, 3 misses), and timeouts suit an API behind an ALB.

use crate::errors::FieldErrors;
use crate::tls::TlsFiles;
use crate::values;
use serde::Deserialize;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Routing keeps per-request sets of tried regions and backends as 64-bit
/// masks: no allocation on the request path. AWS has fewer regions than this.
pub const MAX_REGIONS: usize = 64;
/// The most worker threads `runtime.threads` may ask for.
pub const MAX_THREADS: usize = 1024;
/// Per region; an ALB or a service's pods behind it rarely need more addresses.
pub const MAX_BACKENDS_PER_REGION: usize = 64;

// ---------------------------------------------------------------- raw form --

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    local_region: String,
    #[serde(default)]
    listeners: Vec<RawListener>,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    regions: Vec<RawRegion>,
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    methods: RawMethods,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    retries: RawRetries,
    #[serde(default)]
    read_your_writes: RawReadYourWrites,
    #[serde(default)]
    shutdown: RawShutdown,
    table: RawTable,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    runtime: RawRuntime,
    #[serde(default)]
    dns: RawDns,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDns {
    nameservers: Vec<String>,
    min_ttl: String,
    max_ttl: String,
}

impl Default for RawDns {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            min_ttl: "1s".into(),
            max_ttl: "5m".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    address: String,
    #[serde(default)]
    h2c: bool,
    tls: Option<crate::tls::RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    address: String,
    token_file: Option<String>,
    max_connections: Option<u64>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:9901".into(),
            token_file: None,
            max_connections: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    name: String,
    #[serde(default)]
    backends: Vec<String>,
    #[serde(default)]
    tls: bool,
    sni: Option<String>,
    host: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHealth {
    probes: bool,
    start_healthy: bool,
    path: String,
    listener_path: String,
    interval: String,
    timeout: String,
    jitter: String,
    fall: u32,
    rise: u32,
    expected_status: String,
    eject_after: u32,
    eject_for: String,
    max_eject_for: String,
    max_ejection_percent: u32,
    panic_threshold: u32,
    latency_decay: String,
}

impl Default for RawHealth {
    fn default() -> Self {
        Self {
            probes: true,
            start_healthy: false,
            path: "/health".into(),
            listener_path: "/health".into(),
            interval: "5s".into(),
            timeout: "2s".into(),
            jitter: "500ms".into(),
            fall: 3,
            rise: 2,
            expected_status: "200-399".into(),
            eject_after: 5,
            eject_for: "10s".into(),
            max_eject_for: "5m".into(),
            max_ejection_percent: 50,
            panic_threshold: 50,
            latency_decay: "10s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMethods {
    reads: Vec<String>,
}

impl Default for RawMethods {
    fn default() -> Self {
        Self {
            reads: vec!["GET".into(), "HEAD".into(), "OPTIONS".into()],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    prefix: String,
    #[serde(default)]
    methods: Vec<String>,
    route: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTimeouts {
    connect: String,
    read: String,
    write: String,
    pool_idle: String,
    client_idle: String,
    tunnel_idle: String,
    tls_handshake: String,
    request_body: String,
}

impl Default for RawTimeouts {
    fn default() -> Self {
        Self {
            connect: "1s".into(),
            read: "30s".into(),
            write: "30s".into(),
            pool_idle: "60s".into(),
            client_idle: "75s".into(),
            tunnel_idle: "1h".into(),
            tls_handshake: "10s".into(),
            request_body: "20s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_request_body: String,
    max_client_connections: Option<u64>,
    min_request_body_rate: String,
    idle_per_backend: u64,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_request_body: "10MiB".into(),
            max_client_connections: None,
            min_request_body_rate: "1KiB/s".into(),
            idle_per_backend: 128,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRetries {
    max_attempts: u32,
}

impl Default for RawRetries {
    fn default() -> Self {
        Self { max_attempts: 3 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawReadYourWrites {
    window: String,
    cookie: String,
}

impl Default for RawReadYourWrites {
    fn default() -> Self {
        Self {
            window: "5s".into(),
            cookie: "edgeroute-ryw".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawShutdown {
    grace_period: String,
    keep_accepting: String,
}

impl Default for RawShutdown {
    fn default() -> Self {
        Self {
            grace_period: "30s".into(),
            keep_accepting: "0s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "source", rename_all = "snake_case")]
enum RawTable {
    File {
        path: String,
        #[serde(default = "default_watch_interval")]
        watch_interval: String,
    },
    Control {
        url: String,
        token_file: String,
        #[serde(default)]
        ca_file: Option<String>,
        #[serde(default)]
        client_tls: Option<crate::tls::RawTls>,
        #[serde(default = "default_wait")]
        wait: String,
        #[serde(default = "default_max_backoff")]
        max_backoff: String,
        #[serde(default = "default_report")]
        report: bool,
        #[serde(default = "default_report_interval")]
        report_interval: String,
        #[serde(default)]
        hold_writes_after: Option<String>,
    },
}

fn default_report() -> bool {
    true
}

fn default_report_interval() -> String {
    "10s".into()
}

fn default_watch_interval() -> String {
    "1s".into()
}

fn default_wait() -> String {
    "30s".into()
}

fn default_max_backoff() -> String {
    "30s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    format: String,
    access: bool,
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: "text".into(),
            access: true,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRuntime {
    threads: Option<usize>,
    work_stealing: bool,
}

// ---------------------------------------------------------- validated form --

/// A validated proxy configuration. Every field is known to be usable.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Where client traffic is accepted.
    pub listeners: Vec<Listener>,
    pub admin: AdminConfig,
    /// Index into `regions` of the region this proxy runs in.
    pub local_region: usize,
    /// Regions in the order the file lists them; names are unique.
    pub regions: Vec<Region>,
    pub health: HealthConfig,
    pub methods: MethodClasses,
    /// Checked in order; the first match decides.
    pub routes: Vec<RouteRule>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub retries: Retries,
    pub read_your_writes: ReadYourWrites,
    pub shutdown: ShutdownConfig,
    pub table: TableSource,
    pub log: LogConfig,
    pub runtime: RuntimeConfig,
    pub dns: DnsConfig,
}

/// How backend names (ALB DNS names) are resolved and refreshed.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Resolvers as `ip:port`; empty means the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// A name is re-resolved no sooner than this after an answer (default 1 s).
    pub min_ttl: Duration,
    /// ... and no later than this, whatever the record's TTL (default 5 min).
    pub max_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub address: SocketAddr,
    /// Accept HTTP/2 with prior knowledge on a plain-text listener.
    pub h2c: bool,
    /// Terminate TLS (rustls); HTTP/2 is then offered by ALPN.
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Default `127.0.0.1:9901`: loopback, so it is not reachable from outside
    /// the pod or host unless an operator chooses so.
    pub address: SocketAddr,
    /// File holding a bearer token that `/metrics` and `/routing` require.
    /// Mandatory when `address` is not loopback. Health and readiness stay
    /// open: load balancers and the kubelet probe them without credentials.
    pub token_file: Option<PathBuf>,
    /// Admin connections served at once (default
    /// [`ADMIN_MAX_CONNECTIONS`]). Its paths that need no token are open
    /// to whoever reaches the address, so the bound keeps such clients
    /// from taking the descriptors the traffic listeners need.
    pub max_connections: usize,
}

/// The default of `admin.max_connections`: room for health checks,
/// probes and scrapes, within the descriptors kept apart from the traffic
/// listeners' ([`crate::accept::RESERVED_FILES`]).
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

#[derive(Debug, Clone)]
pub struct Region {
    pub name: String,
    pub backends: Vec<Backend>,
    /// Speak TLS to this region's backends.
    pub tls: bool,
    /// SNI and certificate name for upstream TLS; defaults to the backend host.
    pub sni: Option<String>,
    /// `Host` header to send upstream; defaults to the client's.
    pub host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Backend {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Probe every backend actively (default on). Off: backends are in
    /// rotation unless live traffic ejects them.
    pub probes: bool,
    /// Put a backend in rotation before its first probe passes (default off:
    /// a new backend is unproven until a probe passes).
    pub start_healthy: bool,
    /// Path probed on every backend (default `/health`).
    pub path: String,
    /// The path a `GET` or `HEAD` on a traffic listener gets the proxy's
    /// own health for, as the admin `/health` answers it (default
    /// `/health`): what Route 53's health checks and the load balancer's
    /// target group probe through the load balancer. `None`: forwarded
    /// like any request.
    pub listener_path: Option<String>,
    /// Time between probes (default 5 s).
    pub interval: Duration,
    /// Probe timeout (default 2 s); must be below `interval`.
    pub timeout: Duration,
    /// Random delay added to each interval to spread probes (default 500 ms).
    pub jitter: Duration,
    /// Failed probes before a backend leaves rotation (default 3, as Route 53).
    pub fall: u32,
    /// Passed probes before it returns (default 2).
    pub rise: u32,
    /// Inclusive range of probe statuses that count as healthy (default 200-399).
    pub expected_status: (u16, u16),
    /// Consecutive failures on live traffic (5xx responses or failed
    /// connects) that eject a backend (default 5).
    pub eject_after: u32,
    /// First ejection time; each repeat in a row ejects for this much longer (default 10 s).
    pub eject_for: Duration,
    /// Longest single ejection (default 5 min).
    pub max_eject_for: Duration,
    /// At most this share of a region's backends is ejected at once, though
    /// one backend always may be (default 50).
    pub max_ejection_percent: u32,
    /// Below this share of backends in rotation, a region spreads requests
    /// over all of its backends instead of overloading the few left
    /// (default 50). A region with none in rotation takes no traffic.
    pub panic_threshold: u32,
    /// Time constant of the peak-EWMA latency estimate (default 10 s).
    pub latency_decay: Duration,
}

#[derive(Debug, Clone)]
pub struct MethodClasses {
    /// Methods routed as reads; every other method is a write.
    pub reads: Vec<String>,
}

impl MethodClasses {
    pub fn is_read(&self, method: &str) -> bool {
        self.reads.iter().any(|m| m == method)
    }
}

/// Where a route rule sends matching requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteTarget {
    /// The local region only; 503 when it cannot serve.
    Local,
    /// The primary region, with the same fencing as writes.
    Primary,
    /// The local region, else the nearest region that can serve.
    Nearest,
}

#[derive(Debug, Clone)]
pub struct RouteRule {
    pub prefix: String,
    /// Upper-case methods this rule applies to; empty means every method.
    pub methods: Vec<String>,
    pub target: RouteTarget,
}

impl RouteRule {
    /// Whether the rule applies: one of its methods, and its prefix on whole
    /// segments (`/search` takes `/search` and `/search/q`, not
    /// `/searchable` or `/search;x`; a prefix ending in `/` takes what
    /// follows it). A rule that sends requests away from the primary
    /// (`local`, `nearest`) takes only paths in [plain form](plain_path):
    /// any other path is routed by its method alone, so a write still goes
    /// to the primary. A `primary` rule takes any path under its prefix,
    /// since sending a request to the primary is always safe.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && self.covers(path)
            && (self.target == RouteTarget::Primary || plain_path(path))
    }

    /// Whether this rule, put first, takes every plain path's request
    /// `later` would: each of `later`'s methods, and a prefix that covers
    /// `later`'s. (A `local` or `nearest` rule first still lets paths that
    /// are not plain go on to a later `primary` one, which is no use for
    /// the plain paths its author meant it for.)
    pub fn hides(&self, later: &RouteRule) -> bool {
        let methods = self.methods.is_empty()
            || (!later.methods.is_empty()
                && later.methods.iter().all(|m| self.methods.contains(m)));
        methods && self.covers(&later.prefix)
    }

    /// Whether `path` is under the rule's prefix, on whole segments.
    fn covers(&self, path: &str) -> bool {
        path.strip_prefix(&self.prefix).is_some_and(|rest| {
            rest.is_empty() || rest.starts_with('/') || self.prefix.ends_with('/')
        })
    }
}

/// Whether every server reads `path` as written: no dot segments (`.`,
/// `..`, also before a `;` parameter, as Java servers read `..;`), no empty
/// segment but a trailing one, no `\`, none of the percent-encodings
/// servers decode into these or that hide them (`/`, `\`, `.`, `%` for a
/// second round of decoding, NUL, IIS's `%u`), nothing that decodes to
/// bytes that are not UTF-8 (overlong forms such as `%c0%ae` or
/// `%e0%80%ae`, which lenient decoders read as `.`), and, raw or encoded,
/// no character that Unicode compatibility folding (NFKC, which some
/// frameworks apply to paths) turns into a `.`, `/` or `\` (`．`, `‥`,
/// `︰`, `℀`). A path that a backend could resolve to another one (such
/// as `/search/..%2forders` to `/orders`) must not take a rule meant for
/// the one it names.
fn plain_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let encoded = |b: &[u8]| {
        b[0] == b'%'
            && matches!(
                [b[1].to_ascii_lowercase(), b[2].to_ascii_lowercase()],
                [b'2', b'f']
                    | [b'5', b'c']
                    | [b'2', b'e']
                    | [b'2', b'5']
                    | [b'0', b'0']
                    | [b'u', _]
            )
    };
    if path.contains('\\') || path.as_bytes().windows(3).any(encoded) {
        return false;
    }
    // Most paths are ASCII without escapes: nothing to decode or fold.
    if !path.is_ascii() || path.contains('%') {
        // A `%` not followed by two hex digits stays as it is.
        let Ok(decoded) = percent_encoding::percent_decode_str(path).decode_utf8() else {
            return false;
        };
        if !decoded.is_ascii() {
            let marks = |s: &str| s.chars().filter(|c| matches!(c, '.' | '/' | '\\')).count();
            let folded =
                icu_normalizer::ComposingNormalizerBorrowed::new_nfkc().normalize(&decoded);
            if marks(&folded) != marks(&decoded) {
                return false;
            }
        }
    }
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        let name = seg.split(';').next().unwrap_or_default();
        if name == "." || name == ".." || (seg.is_empty() && segments.peek().is_some()) {
            return false;
        }
    }
    true
}

#[derive(Debug, Clone)]
pub struct Timeouts {
    /// TCP (and TLS) connect to a backend (default 1 s).
    pub connect: Duration,
    /// Waiting on a backend's response bytes (default 30 s).
    pub read: Duration,
    /// Writing to a backend (default 30 s).
    pub write: Duration,
    /// Idle upstream connections are closed after this (default 60 s).
    pub pool_idle: Duration,
    /// An HTTP/1 client connection waiting for its next request is closed
    /// after this (default 75 s, longer than an ALB's default 60 s idle
    /// timeout so that the load balancer, not the proxy, closes first). It
    /// also bounds a client that stops mid-request: no bytes of its head or
    /// body, or no room taken for the response, for this long ends the
    /// connection, and so does a head not whole this long after its first
    /// byte.
    pub client_idle: Duration,
    /// A WebSocket tunnel with no bytes either way for this long is closed
    /// (default 1 h); `read` does not apply to a tunnel.
    pub tunnel_idle: Duration,
    /// A client's TLS handshake, counted from its first byte, must end
    /// within this (default 10 s); the wait for that first byte is an idle
    /// connection's, `client_idle`.
    pub tls_handshake: Duration,
    /// The proxy waits for a request body's bytes this long in all, plus a
    /// second for every `limits.min_request_body_rate` bytes that arrive
    /// (time spent on a backend, connecting or waiting for it to take the
    /// bytes, does not count); one that is not whole by then is answered
    /// 408 (default 20 s).
    /// `None` (`"0s"`): no pace is asked of a body, only `client_idle`
    /// between its bytes.
    pub request_body: Option<Duration>,
}

impl Timeouts {
    /// How long in all the proxy may wait for the bytes of a request body
    /// of which `received` bytes have arrived; `None` without a pace.
    pub fn body_allowance(&self, received: u64, min_rate: u64) -> Option<Duration> {
        let grace = self.request_body?;
        let earned = if min_rate == 0 {
            Duration::ZERO
        } else {
            // Exact in nanoseconds for any body under 18 EB; saturates past.
            let nanos = u128::from(received) * 1_000_000_000 / u128::from(min_rate);
            Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
        };
        Some(
            grace
                .saturating_add(earned)
                .min(crate::values::MAX_DURATION),
        )
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body accepted, in bytes (default 10 MiB); larger gets 413.
    pub max_request_body: u64,
    /// Client connections served at once, over all listeners; more wait
    /// in the listening sockets' backlog. `None`: from the open-file limit
    /// (see [`Limits::client_connections`]).
    pub max_client_connections: Option<usize>,
    /// Bytes per second a request body must keep up on average, after
    /// `timeouts.request_body` (default 1 KiB/s); 0: the whole body is due
    /// within `timeouts.request_body`.
    pub min_request_body_rate: u64,
    /// Idle keep-alive connections kept per backend by each worker thread
    /// (by all, with `runtime.work_stealing`), 1 to [`MAX_IDLE_PER_BACKEND`]
    /// (default 128); one more is closed when its exchange ends.
    pub idle_per_backend: usize,
}

/// The most idle connections `limits.idle_per_backend` may keep.
pub const MAX_IDLE_PER_BACKEND: u64 = 10_000;

impl Limits {
    /// The client connections served at once, given the process's limit
    /// on open files: `max_client_connections`, or else half of what the
    /// limit leaves after [`crate::accept::RESERVED_FILES`] (each client
    /// connection may hold a backend connection), at least 1.
    pub fn client_connections(&self, open_files: u64) -> usize {
        crate::accept::bound(self.max_client_connections, open_files, 2)
    }
}

#[derive(Debug, Clone)]
pub struct Retries {
    /// Attempts per request including the first (default 3, at least 1).
    pub max_attempts: u32,
}

/// Read-your-writes: after a write, its client's reads go to the primary
/// for a while, so that it reads what it wrote before the replicas have it.
#[derive(Debug, Clone)]
pub struct ReadYourWrites {
    /// How long after a write (default 5 s; zero turns it off).
    pub window: Duration,
    /// The cookie that carries the time until which it holds.
    pub cookie: String,
}

#[derive(Debug, Clone)]
pub struct ShutdownConfig {
    /// How long in-flight requests may run after SIGTERM (default 30 s).
    pub grace_period: Duration,
    /// How long after SIGTERM the listeners go on accepting and serving,
    /// not ready, before the grace period begins (default 0: at once), so
    /// that a load balancer still sending while it deregisters the proxy
    /// meets no closed port.
    pub keep_accepting: Duration,
}

#[derive(Debug, Clone)]
pub enum TableSource {
    /// A JSON file, reloaded on SIGHUP and when it changes.
    File {
        path: PathBuf,
        /// How often the file is checked for changes (default 1 s).
        watch_interval: Duration,
    },
    /// The control plane: long-polls `url` + `/v1/table`.
    Control {
        /// Base URL such as `http://edgeroute-control:9080`, or `https://`.
        url: String,
        /// File holding the bearer token the control plane expects.
        token_file: PathBuf,
        /// The CA certificates (PEM) that sign an `https://` control
        /// plane's certificate; the system's CAs when `None`.
        ca_file: Option<PathBuf>,
        /// The certificate and key presented to an `https://` control
        /// plane that asks for one (`server.client_ca`); reloaded when the
        /// files change.
        client_tls: Option<TlsFiles>,
        /// How long one long-poll may wait for a change (default 30 s).
        wait: Duration,
        /// Longest pause between attempts after errors (default 30 s).
        max_backoff: Duration,
        /// Report this proxy's table epoch and measured region health to
        /// the control plane (default on): at once when either changes, and
        /// every `report_interval` (default 10 s) as a heartbeat.
        report: Option<Duration>,
        /// Fail closed for writes: once the control plane has not confirmed
        /// the table for this long, writes get 503 (reads go on), because
        /// the primary may have moved unseen. Off unless set; must exceed
        /// `wait`.
        hold_writes_after: Option<Duration>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// One access line per request (default on).
    pub access: bool,
    /// A tracing filter such as `info` or `edgeroute=debug` (default `info`).
    pub level: String,
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Worker threads for the proxy listeners (default: the number of CPUs).
    pub threads: usize,
    /// Tokio work stealing between worker threads (default off: a
    /// thread-per-core runtime measured faster for proxying).
    pub work_stealing: bool,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// (`error` is no `source`: it is in the message already.)
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path} has {} invalid field(s):\n{errors}", errors.len())]
    Invalid { path: PathBuf, errors: FieldErrors },
}

impl ProxyConfig {
    /// Read, parse and validate a config file. Relative paths inside it
    /// (certificates, the table file) are taken relative to the file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = values::read_config_text(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let base = values::config_base(path);
        let base = base.as_path();
        Self::from_toml(&text, base).map_err(|e| match e {
            FromTomlError::Parse(message) => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            FromTomlError::Invalid(errors) => ConfigError::Invalid {
                path: path.to_owned(),
                errors,
            },
        })
    }

    /// Parse and validate TOML text; `base` anchors relative paths.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, FromTomlError> {
        let raw: RawConfig = crate::schema::parse(text).map_err(FromTomlError::Parse)?;
        raw.validate(base).map_err(FromTomlError::Invalid)
    }

    pub fn local_region_name(&self) -> &str {
        &self.regions[self.local_region].name
    }

    pub fn region_index(&self, name: &str) -> Option<usize> {
        self.regions.iter().position(|r| r.name == name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FromTomlError {
    #[error("{0}")]
    Parse(String),
    #[error("{0}")]
    Invalid(FieldErrors),
}

impl RawConfig {
    fn validate(self, base: &Path) -> Result<ProxyConfig, FieldErrors> {
        let mut e = FieldErrors::default();

        if self.listeners.is_empty() {
            e.push("listeners", "at least one listener is required, got none");
        }
        let mut seen_addrs: Vec<SocketAddr> = Vec::new();
        let listeners: Vec<Listener> = self
            .listeners
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let path = format!("listeners[{i}]");
                let address = values::listen_addr(&mut e, &format!("{path}.address"), &l.address);
                if let Some(a) = address {
                    if let Some(other) = seen_addrs.iter().find(|o| values::overlap(a, **o)) {
                        e.push(
                            format!("{path}.address"),
                            format!("{a} takes the same port as another listener ({other})"),
                        );
                    }
                    seen_addrs.push(a);
                }
                let tls = l
                    .tls
                    .as_ref()
                    .map(|t| t.validate(&mut e, base, &format!("{path}.tls")));
                if l.h2c && tls.is_some() {
                    e.push(
                        format!("{path}.h2c"),
                        "h2c is for plain-text listeners; a TLS listener offers HTTP/2 by ALPN",
                    );
                }
                Some(Listener {
                    address: address?,
                    h2c: l.h2c,
                    tls,
                })
            })
            .collect();

        let admin_addr = values::listen_addr(&mut e, "admin.address", &self.admin.address);
        if let Some(a) = admin_addr
            && let Some(other) = seen_addrs.iter().find(|o| values::overlap(a, **o))
        {
            e.push(
                "admin.address",
                format!("{a} takes the same port as a traffic listener ({other})"),
            );
        }
        let token_file = self
            .admin
            .token_file
            .as_deref()
            .map(|t| values::resolve(base, t));
        if let Some(raw) = &self.admin.token_file
            && let Some(why) = values::not_a_named_file(base, raw)
        {
            e.push(
                "admin.token_file",
                format!("must be a readable file holding the admin token, got {raw:?} ({why})"),
            );
        }
        if let Some(a) = admin_addr
            && !a.ip().is_loopback()
            && token_file.is_none()
        {
            e.push(
                "admin.address",
                format!("{a} is reachable from outside this host: set admin.token_file so /metrics and /routing require a bearer token, or bind to 127.0.0.1"),
            );
        }

        values::region_count(&mut e, self.regions.len());
        let mut names = HashSet::new();
        let regions: Vec<Region> = self
            .regions
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let path = format!("regions[{i}]");
                if let Err(why) = check_region_name(&r.name) {
                    e.push(format!("{path}.name"), why);
                } else if !names.insert(r.name.clone()) {
                    e.push(format!("{path}.name"), format!("{:?} is listed twice", r.name));
                }
                if r.backends.len() > MAX_BACKENDS_PER_REGION {
                    e.push(
                        format!("{path}.backends"),
                        format!("at most {MAX_BACKENDS_PER_REGION} backends per region are supported, got {}", r.backends.len()),
                    );
                }
                if r.backends.is_empty() {
                    e.push(format!("{path}.backends"), "at least one backend (host:port) is required, got none");
                }
                let mut seen = HashSet::new();
                let backends = r
                    .backends
                    .iter()
                    .enumerate()
                    .filter_map(|(j, b)| {
                        let bpath = format!("{path}.backends[{j}]");
                        let (host, port) = values::host_port(&mut e, &bpath, b)?;
                        let backend = Backend { host, port };
                        if !seen.insert(backend.clone()) {
                            e.push(bpath, format!("{b:?} is listed twice"));
                        }
                        Some(backend)
                    })
                    .collect();
                if r.sni.is_some() && !r.tls {
                    e.push(format!("{path}.sni"), "only applies with tls = true");
                }
                Region {
                    name: r.name.clone(),
                    backends,
                    tls: r.tls,
                    sni: r
                        .sni
                        .as_deref()
                        .and_then(|s| values::server_name(&mut e, &format!("{path}.sni"), s)),
                    host: r
                        .host
                        .as_deref()
                        .and_then(|h| values::host_header(&mut e, &format!("{path}.host"), h)),
                }
            })
            .collect();

        let local_region = regions.iter().position(|r| r.name == self.local_region);
        if local_region.is_none() {
            let known: Vec<&str> = regions.iter().map(|r| r.name.as_str()).collect();
            e.push(
                "local_region",
                format!(
                    "must name one of the configured regions {known:?}, got {:?}",
                    self.local_region
                ),
            );
        }

        let health = self.health.validate(&mut e);

        let mut reads = Vec::new();
        for (i, m) in self.methods.reads.iter().enumerate() {
            if let Some(m) = values::method(&mut e, &format!("methods.reads[{i}]"), m) {
                reads.push(m);
            }
        }

        let routes = self
            .routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let path = format!("routes[{i}]");
                if !r.prefix.starts_with('/') {
                    e.push(
                        format!("{path}.prefix"),
                        format!("must start with '/', got {:?}", r.prefix),
                    );
                } else if r.prefix.contains(['?', '#']) || r.prefix.contains(|c: char| c.is_whitespace() || c.is_control()) {
                    e.push(
                        format!("{path}.prefix"),
                        format!(
                            "must be a path alone: rules match the request's path without its query, and a path holds no '#' or blanks, got {:?}",
                            r.prefix
                        ),
                    );
                } else if !plain_path(&r.prefix) {
                    e.push(
                        format!("{path}.prefix"),
                        format!(
                            "must be a plain path (no '.' or '..' segment, empty segment, '\\' or encoded '/', '\\', '.' or '%'), which requests can match; got {:?}",
                            r.prefix
                        ),
                    );
                }
                let methods = r
                    .methods
                    .iter()
                    .enumerate()
                    .filter_map(|(j, m)| values::method(&mut e, &format!("{path}.methods[{j}]"), m))
                    .collect();
                let target = match r.route.as_str() {
                    "local" => RouteTarget::Local,
                    "primary" => RouteTarget::Primary,
                    "nearest" => RouteTarget::Nearest,
                    other => {
                        e.push(
                            format!("{path}.route"),
                            format!(
                                "must be one of \"local\", \"primary\", \"nearest\", got {other:?}"
                            ),
                        );
                        return None;
                    }
                };
                Some(RouteRule {
                    prefix: r.prefix.clone(),
                    methods,
                    target,
                })
            })
            .collect::<Vec<RouteRule>>();
        for (j, later) in routes.iter().enumerate() {
            if let Some(i) = routes[..j].iter().position(|earlier| earlier.hides(later)) {
                e.push(
                    format!("routes[{j}]"),
                    format!(
                        "can never apply to a plain path: routes[{i}] (prefix {:?}) comes first and takes every request it would; put the narrower rule first or remove it",
                        routes[i].prefix
                    ),
                );
            }
        }

        let timeouts = Timeouts {
            connect: values::positive_duration(&mut e, "timeouts.connect", &self.timeouts.connect),
            read: values::positive_duration(&mut e, "timeouts.read", &self.timeouts.read),
            write: values::positive_duration(&mut e, "timeouts.write", &self.timeouts.write),
            pool_idle: values::positive_duration(
                &mut e,
                "timeouts.pool_idle",
                &self.timeouts.pool_idle,
            ),
            client_idle: values::positive_duration(
                &mut e,
                "timeouts.client_idle",
                &self.timeouts.client_idle,
            ),
            tunnel_idle: values::positive_duration(
                &mut e,
                "timeouts.tunnel_idle",
                &self.timeouts.tunnel_idle,
            ),
            tls_handshake: values::positive_duration(
                &mut e,
                "timeouts.tls_handshake",
                &self.timeouts.tls_handshake,
            ),
            request_body: Some(values::duration(
                &mut e,
                "timeouts.request_body",
                &self.timeouts.request_body,
            ))
            .filter(|d| !d.is_zero()),
        };
        let limits = Limits {
            max_request_body: values::size(
                &mut e,
                "limits.max_request_body",
                &self.limits.max_request_body,
            ),
            max_client_connections: values::connection_bound(
                &mut e,
                "limits.max_client_connections",
                self.limits.max_client_connections,
                "take it from the open-file limit",
            ),
            min_request_body_rate: values::rate(
                &mut e,
                "limits.min_request_body_rate",
                &self.limits.min_request_body_rate,
            ),
            idle_per_backend: {
                let n = self.limits.idle_per_backend;
                if !(1..=MAX_IDLE_PER_BACKEND).contains(&n) {
                    e.push(
                        "limits.idle_per_backend",
                        format!("must be 1-{MAX_IDLE_PER_BACKEND} (idle connections kept per backend by each worker thread), got {n}"),
                    );
                }
                usize::try_from(n).unwrap_or(usize::MAX)
            },
        };
        if !(1..=10).contains(&self.retries.max_attempts) {
            e.push(
                "retries.max_attempts",
                format!(
                    "must be 1-10 (1 disables retries), got {}",
                    self.retries.max_attempts
                ),
            );
        }
        let read_your_writes = ReadYourWrites {
            window: values::duration(
                &mut e,
                "read_your_writes.window",
                &self.read_your_writes.window,
            ),
            cookie: self.read_your_writes.cookie.clone(),
        };
        let cookie = &read_your_writes.cookie;
        // RFC 6265 §4.1.1: a cookie's name is an HTTP token.
        if !values::token(cookie.as_bytes()) {
            e.push(
                "read_your_writes.cookie",
                format!(
                    "must be a cookie name (letters, digits and !#$%&'*+-.^_`|~), got {cookie:?}"
                ),
            );
        } else if ["__secure-", "__host-"]
            .iter()
            .any(|p| cookie.to_ascii_lowercase().starts_with(p))
        {
            // Browsers drop such a cookie unless it is Secure, which would
            // turn read-your-writes off without a word.
            e.push(
                "read_your_writes.cookie",
                format!(
                    "must not start with __Secure- or __Host- (browsers keep those only over HTTPS with attributes this cookie does not set), got {cookie:?}"
                ),
            );
        }
        let shutdown = ShutdownConfig {
            grace_period: values::duration(
                &mut e,
                "shutdown.grace_period",
                &self.shutdown.grace_period,
            ),
            keep_accepting: values::duration(
                &mut e,
                "shutdown.keep_accepting",
                &self.shutdown.keep_accepting,
            ),
        };
        let table = match &self.table {
            RawTable::File {
                path,
                watch_interval,
            } => {
                if path.is_empty() {
                    e.push("table.path", "must name the routing table file, got \"\"");
                }
                TableSource::File {
                    path: values::resolve(base, path),
                    watch_interval: values::period(&mut e, "table.watch_interval", watch_interval),
                }
            }
            RawTable::Control {
                url,
                token_file,
                ca_file,
                client_tls,
                wait,
                max_backoff,
                report,
                report_interval,
                hold_writes_after,
            } => {
                let base_url = url.trim_end_matches('/');
                let https = base_url.starts_with("https://");
                match base_url
                    .strip_prefix("http://")
                    .or_else(|| base_url.strip_prefix("https://"))
                {
                    // Not echoed: the URL holds a password.
                    Some(rest) if rest.contains('@') => e.push(
                        "table.url",
                        "must not hold credentials (user@ or user:password@); the control plane's token goes in table.token_file",
                    ),
                    Some(rest) if values::host_and_port(rest) => {}
                    _ => e.push(
                        "table.url",
                        format!("must be the control plane's base URL, http:// or https:// and a host with an optional port, such as \"https://edgeroute-control:9080\", got {url:?}"),
                    ),
                }
                let ca_file = ca_file.as_deref().map(|raw| {
                    crate::tls::ca_file(&mut e, base, "table.ca_file", raw, https, || {
                        format!("is for a control plane reached by https://, and table.url is {url:?}: make it https:// or leave ca_file out")
                    })
                });
                let client_tls = client_tls.as_ref().map(|raw| {
                    raw.validate_client(&mut e, base, "table.client_tls", ("table.url", url))
                });
                let token_path = values::resolve(base, token_file);
                if let Some(why) = values::not_a_named_file(base, token_file) {
                    e.push("table.token_file", format!("must be a readable file holding the control plane token, got {token_file:?} ({why})"));
                }
                let wait = values::positive_duration(&mut e, "table.wait", wait);
                // A control plane that is down is asked again no sooner.
                let max_backoff = values::at_least(
                    &mut e,
                    "table.max_backoff",
                    max_backoff,
                    Duration::from_millis(100),
                    "",
                );
                let hold_writes_after = hold_writes_after.as_deref().map(|raw| {
                    let d = values::positive_duration(&mut e, "table.hold_writes_after", raw);
                    // A table is confirmed once per long-poll, and one failed
                    // poll may pause up to max_backoff: shorter would hold
                    // writes on every blip.
                    let least = wait + max_backoff;
                    if !d.is_zero() && d <= least {
                        e.push(
                            "table.hold_writes_after",
                            format!("must be longer than table.wait + table.max_backoff ({least:?}), got {raw:?}"),
                        );
                    }
                    d
                });
                TableSource::Control {
                    url: base_url.to_owned(),
                    token_file: token_path,
                    ca_file,
                    client_tls,
                    wait,
                    hold_writes_after,
                    max_backoff,
                    report: report
                        .then(|| values::period(&mut e, "table.report_interval", report_interval)),
                }
            }
        };
        let format = values::log_format(&mut e, "log.format", &self.log.format);
        let threads = match self.runtime.threads {
            Some(0) => {
                e.push("runtime.threads", "must be at least 1, got 0");
                1
            }
            Some(n) if n > MAX_THREADS => {
                e.push(
                    "runtime.threads",
                    format!("must be at most {MAX_THREADS}, got {n}"),
                );
                1
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };

        let nameservers = self
            .dns
            .nameservers
            .iter()
            .enumerate()
            .filter_map(|(i, n)| values::listen_addr(&mut e, &format!("dns.nameservers[{i}]"), n))
            .collect();
        let dns = DnsConfig {
            nameservers,
            // A name whose TTL is 0 would otherwise be asked again and
            // again, without pause, for every backend it names.
            min_ttl: values::at_least(
                &mut e,
                "dns.min_ttl",
                &self.dns.min_ttl,
                Duration::from_millis(100),
                " (answers are kept at least this long)",
            ),
            max_ttl: values::positive_duration(&mut e, "dns.max_ttl", &self.dns.max_ttl),
        };
        if dns.max_ttl < dns.min_ttl {
            e.push(
                "dns.max_ttl",
                format!(
                    "must be at least dns.min_ttl ({}), got {:?}",
                    self.dns.min_ttl, self.dns.max_ttl
                ),
            );
        }

        let mut admin_max_connections = values::connection_bound(
            &mut e,
            "admin.max_connections",
            self.admin.max_connections,
            &format!("serve {ADMIN_MAX_CONNECTIONS} at once"),
        )
        .unwrap_or(ADMIN_MAX_CONNECTIONS);
        // Its connections come out of the descriptors kept apart from the
        // traffic listeners'.
        let most = crate::accept::RESERVED_FILES as usize;
        if admin_max_connections > most {
            e.push(
                "admin.max_connections",
                format!(
                    "must be at most {most} (the file descriptors kept apart from the traffic listeners'), got {admin_max_connections}"
                ),
            );
            admin_max_connections = most;
        }
        e.finish(|| ProxyConfig {
            dns,
            listeners,
            admin: AdminConfig {
                address: admin_addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9901))),
                token_file,
                max_connections: admin_max_connections,
            },
            local_region: local_region.unwrap_or(0),
            regions,
            health,
            methods: MethodClasses { reads },
            routes,
            timeouts,
            limits,
            retries: Retries {
                max_attempts: self.retries.max_attempts,
            },
            read_your_writes,
            shutdown,
            table,
            log: LogConfig {
                format,
                access: self.log.access,
                level: self.log.level.clone(),
            },
            runtime: RuntimeConfig {
                threads,
                work_stealing: self.runtime.work_stealing,
            },
        })
    }
}

impl RawHealth {
    fn validate(&self, e: &mut FieldErrors) -> HealthConfig {
        // It goes on the probe's request line as it is: a path and an
        // optional query, in visible ASCII (spaces and others percent-encoded).
        if !values::request_path(&self.path, true) {
            e.push(
                "health.path",
                format!(
                    "must be a path such as \"/health\" or \"/health?deep=1\": starting with '/', no spaces, '#' or non-ASCII (percent-encode them), got {:?}",
                    self.path
                ),
            );
        }
        // Compared with a request's path, which has no query.
        if !self.listener_path.is_empty() && !values::request_path(&self.listener_path, false) {
            e.push(
                "health.listener_path",
                format!(
                    "must be a path such as \"/health\" (starting with '/', no query, spaces, '#' or non-ASCII), or \"\" to forward every path to the backends, got {:?}",
                    self.listener_path
                ),
            );
        }
        let interval = values::period(e, "health.interval", &self.interval);
        let timeout = values::positive_duration(e, "health.timeout", &self.timeout);
        if !interval.is_zero() && timeout >= interval {
            e.push(
                "health.timeout",
                format!(
                    "must be shorter than health.interval ({}), got {:?}",
                    self.interval, self.timeout
                ),
            );
        }
        let jitter = values::duration(e, "health.jitter", &self.jitter);
        // Probes come every interval plus up to the jitter: one far past
        // the interval spaces them out further than the interval says.
        // (The default, 500ms, stands beside any interval.)
        if !interval.is_zero() && jitter > interval && jitter > Duration::from_millis(500) {
            e.push(
                "health.jitter",
                format!(
                    "must be at most health.interval ({}) or 500ms: probes come every interval plus up to the jitter, got {:?}",
                    self.interval, self.jitter
                ),
            );
        }
        for (field, v) in [
            ("fall", self.fall),
            ("rise", self.rise),
            ("eject_after", self.eject_after),
        ] {
            if v == 0 {
                e.push(format!("health.{field}"), "must be at least 1, got 0");
            }
        }
        for (field, v) in [
            ("max_ejection_percent", self.max_ejection_percent),
            ("panic_threshold", self.panic_threshold),
        ] {
            if v > 100 {
                e.push(
                    format!("health.{field}"),
                    format!("must be a percentage 0-100, got {v}"),
                );
            }
        }
        let eject_for = values::positive_duration(e, "health.eject_for", &self.eject_for);
        let max_eject_for =
            values::positive_duration(e, "health.max_eject_for", &self.max_eject_for);
        if !max_eject_for.is_zero() && max_eject_for < eject_for {
            e.push(
                "health.max_eject_for",
                format!(
                    "must be at least health.eject_for ({}), got {:?}",
                    self.eject_for, self.max_eject_for
                ),
            );
        }
        let expected_status = parse_status_range(&self.expected_status).unwrap_or_else(|| {
            e.push(
                "health.expected_status",
                format!(
                    "must be a status or range such as \"200\" or \"200-399\", got {:?}",
                    self.expected_status
                ),
            );
            (200, 399)
        });
        HealthConfig {
            probes: self.probes,
            start_healthy: self.start_healthy,
            path: self.path.clone(),
            listener_path: (!self.listener_path.is_empty()).then(|| self.listener_path.clone()),
            interval,
            timeout,
            jitter,
            fall: self.fall,
            rise: self.rise,
            expected_status,
            eject_after: self.eject_after,
            eject_for,
            max_eject_for,
            max_ejection_percent: self.max_ejection_percent,
            panic_threshold: self.panic_threshold,
            latency_decay: values::positive_duration(
                e,
                "health.latency_decay",
                &self.latency_decay,
            ),
        }
    }
}

fn parse_status_range(raw: &str) -> Option<(u16, u16)> {
    let (lo, hi) = raw.split_once('-').unwrap_or((raw, raw));
    let lo: u16 = lo.trim().parse().ok()?;
    let hi: u16 = hi.trim().parse().ok()?;
    ((100..=599).contains(&lo) && (lo..=599).contains(&hi)).then_some((lo, hi))
}

/// [`valid_region_name`], or what a region name must be.
pub fn check_region_name(name: &str) -> Result<(), String> {
    if valid_region_name(name) {
        Ok(())
    } else {
        Err(format!(
            "must be a region name of lower-case letters, digits and '-', such as \"eu-west-1\", got {name:?}"
        ))
    }
}

/// A region's name as edgeroute takes one (`us-east-1`, `eu-west-1`, or a
/// simulated region's): lower-case letters, digits and '-', neither first
/// nor last, at most 64 bytes.
pub fn valid_region_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests;

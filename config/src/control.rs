//! The control plane's configuration file (TOML), and the topology format
//! its file source reads.

use crate::errors::FieldErrors;
use crate::proxy::valid_region_name;
use crate::tls::TlsFiles;
use crate::values;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    #[serde(default)]
    server: RawServer,
    source: RawSource,
    #[serde(default)]
    log: RawControlLog,
    #[serde(default)]
    actions: RawActions,
    #[serde(default)]
    automation: RawAutomation,
    #[serde(default)]
    notify: RawNotify,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawActions {
    history_file: String,
    timeout: String,
    proxy_max_age: String,
    control_url: String,
    replica_urls: Vec<String>,
    ca_file: String,
    client_tls: Option<crate::tls::RawTls>,
}

impl Default for RawActions {
    fn default() -> Self {
        RawActions {
            history_file: "history.json".into(),
            timeout: "15m".into(),
            proxy_max_age: "30s".into(),
            control_url: String::new(),
            replica_urls: Vec::new(),
            ca_file: String::new(),
            client_tls: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAutomation {
    enabled: bool,
    after: String,
    max_replication_lag: String,
    min_interval: String,
}

impl Default for RawAutomation {
    fn default() -> Self {
        RawAutomation {
            enabled: false,
            after: "60s".into(),
            max_replication_lag: "1s".into(),
            min_interval: "1h".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawNotify {
    sns_topic_arn: String,
    webhook_url: String,
    webhook_token_file: String,
    timeout: String,
}

impl Default for RawNotify {
    fn default() -> Self {
        RawNotify {
            sns_topic_arn: String::new(),
            webhook_url: String::new(),
            webhook_token_file: String::new(),
            timeout: "5s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    address: String,
    token_file: String,
    max_wait: String,
    tls: Option<crate::tls::RawTls>,
    client_ca: String,
    max_connections: Option<u64>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            address: "127.0.0.1:9080".into(),
            token_file: String::new(),
            max_wait: "60s".into(),
            tls: None,
            client_ca: String::new(),
            max_connections: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
enum RawSource {
    File {
        path: String,
        #[serde(default = "default_poll")]
        poll_interval: String,
    },
    Aws {
        #[serde(default = "default_aws_poll")]
        poll_interval: String,
        endpoint_url: Option<String>,
        hosted_zone_id: String,
        record_name: String,
        global_cluster_id: String,
        #[serde(default = "default_home_region")]
        global_cluster_region: String,
        #[serde(default = "yes")]
        health_metric: bool,
        #[serde(default = "yes")]
        lag_metric: bool,
    },
}

fn default_aws_poll() -> String {
    "5s".into()
}

fn default_home_region() -> String {
    "us-east-1".into()
}

fn yes() -> bool {
    true
}

fn default_poll() -> String {
    "1s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawControlLog {
    format: String,
    level: String,
}

impl Default for RawControlLog {
    fn default() -> Self {
        RawControlLog {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

/// The shortest time a runbook command follows a change for: Route 53 and
/// Aurora take seconds at the least, so a shorter one would make the change
/// and then report it failed.
pub const MIN_ACTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Why `timeout` is too short for a runbook command to follow a change,
/// if it is: for `actions.timeout` and the commands' `--timeout` alike.
pub fn short_action_timeout(timeout: Duration) -> Option<String> {
    (timeout < MIN_ACTION_TIMEOUT).then(|| {
        format!(
            "must be at least {}: the change would be made and then reported failed",
            humantime::format_duration(MIN_ACTION_TIMEOUT)
        )
    })
}

/// Environment variable that gives the table server's bearer token instead
/// of `server.token_file` (for secrets injected as environment variables).
pub const TOKEN_ENV: &str = "EDGEROUTE_CONTROL_TOKEN";

/// A validated control-plane configuration.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub server: ServerConfig,
    pub source: SourceConfig,
    pub log: crate::LogConfig,
    pub actions: ActionsConfig,
    pub automation: AutomationConfig,
    pub notify: NotifyConfig,
}

/// The runbook commands (`failover`, `drain`, `undrain`, `status`).
#[derive(Debug, Clone)]
pub struct ActionsConfig {
    /// Where the outcome of every action, the last failover and the last
    /// drill are kept (default `history.json` beside the config file).
    pub history_file: PathBuf,
    /// Longest an action is followed before it is reported as not
    /// finished (default 15 min).
    pub timeout: Duration,
    /// A proxy counts as running while it reported within this (default
    /// 30 s); only those are waited for and asked about health.
    pub proxy_max_age: Duration,
    /// The control plane the commands ask for the table and the proxies
    /// (default: `server.address`, on loopback when it is a wildcard; by
    /// `https://localhost` when the server has TLS and listens on a
    /// wildcard, 127.0.0.1 or ::1).
    pub control_url: String,
    /// Every replica's own URL, when several run (empty: one control
    /// plane). Each proxy reports to one replica, so the commands read the
    /// proxies, and the table each replica serves, from every one of them.
    pub replica_urls: Vec<String>,
    /// The CA certificates (PEM) that sign an `https://` control plane's
    /// certificate; the system's CAs when `None`.
    pub ca_file: Option<PathBuf>,
    /// The certificate and key the commands present to a control plane
    /// that asks for one (`server.client_ca`).
    pub client_tls: Option<TlsFiles>,
}

/// Automated failover: off unless `enabled`.
#[derive(Debug, Clone)]
pub struct AutomationConfig {
    pub enabled: bool,
    /// Both health sources must report the primary unhealthy for this long
    /// (default 60 s).
    pub after: Duration,
    /// A secondary is a failover target only while its replication lag is
    /// known and at most this (default 1 s).
    pub max_replication_lag: Duration,
    /// Least time between two failovers (default 1 h).
    pub min_interval: Duration,
}

/// Where state changes are announced; both are optional.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    pub sns_topic_arn: Option<String>,
    pub webhook_url: Option<String>,
    /// File holding a bearer token sent to the webhook.
    pub webhook_token_file: Option<PathBuf>,
    /// Longest one notification may take (default 5 s).
    pub timeout: Duration,
}

impl NotifyConfig {
    /// The SNS topic's region, from its ARN.
    pub fn sns_region(&self) -> Option<&str> {
        self.sns_topic_arn.as_deref()?.split(':').nth(3)
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where proxies fetch the table (default `127.0.0.1:9080`).
    pub address: SocketAddr,
    /// File holding the bearer token proxies must present. Required unless
    /// the token is given in the environment as [`TOKEN_ENV`].
    pub token_file: Option<PathBuf>,
    /// Longest long-poll a proxy may ask for with `?wait=` (default 60 s).
    pub max_wait: Duration,
    /// Serve HTTPS with this certificate and key (reloaded when the files
    /// change); plain HTTP when `None`.
    pub tls: Option<TlsFiles>,
    /// With `tls`: every client (proxy or command) must present a
    /// certificate signed by a CA certificate in this PEM file.
    pub client_ca: Option<PathBuf>,
    /// Connections served at once (every proxy holds one for its long
    /// poll); more wait in the listening socket's backlog. `None`: from
    /// the open-file limit (see [`ServerConfig::connections`]).
    pub max_connections: Option<usize>,
}

impl ServerConfig {
    /// The connections served at once, given the process's limit on open
    /// files: `max_connections`, or else what the limit leaves after
    /// [`crate::accept::RESERVED_FILES`] (for AWS, the history file, the
    /// topology file), at least 1.
    pub fn connections(&self, open_files: u64) -> usize {
        crate::accept::bound(self.max_connections, open_files, 1)
    }
}

#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// A topology JSON file (local use, the demo, tests), re-read every
    /// `poll_interval`.
    File {
        path: PathBuf,
        poll_interval: Duration,
    },
    /// Route 53 and the Aurora global cluster, through the AWS SDK.
    Aws(AwsSourceConfig),
}

impl SourceConfig {
    /// The time between two reads of the source.
    pub fn poll_interval(&self) -> Duration {
        match self {
            SourceConfig::File { poll_interval, .. } => *poll_interval,
            SourceConfig::Aws(aws) => aws.poll_interval,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AwsSourceConfig {
    /// Time between reads of every API (default 5 s).
    pub poll_interval: Duration,
    /// Send every call here instead of AWS (an emulator); default none.
    pub endpoint_url: Option<String>,
    /// The hosted zone holding the API name's latency records.
    pub hosted_zone_id: String,
    /// The API name, such as `api.example.com`.
    pub record_name: String,
    /// The Aurora global cluster whose writer region is the primary.
    pub global_cluster_id: String,
    /// Region to call `DescribeGlobalClusters` in (default `us-east-1`).
    pub global_cluster_region: String,
    /// Also read CloudWatch `AWS/Route53 HealthCheckStatus` (default on).
    pub health_metric: bool,
    /// Read CloudWatch `AWS/RDS AuroraGlobalDBReplicationLag` (default on).
    pub lag_metric: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlConfigError {
    /// (`error` is no `source`: it is in the message already.)
    #[error("cannot read control config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("control config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("control config file {path} has {} invalid field(s):\n{errors}", errors.len())]
    Invalid { path: PathBuf, errors: FieldErrors },
}

/// The control plane's token from [`TOKEN_ENV`]: `None` when it is unset
/// or blank, an error (naming the variable, never quoting it) when it is
/// not one token of visible ASCII.
pub fn token_from_env() -> Result<Option<String>, String> {
    match std::env::var(TOKEN_ENV) {
        Ok(t) if t.trim().is_empty() => Ok(None),
        Ok(t) => crate::token(TOKEN_ENV, &t).map(Some),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!(
            "{TOKEN_ENV} is not UTF-8 text; a bearer token is visible ASCII"
        )),
    }
}

impl ControlConfig {
    pub fn load(path: &Path) -> Result<Self, ControlConfigError> {
        let text = values::read_config_text(path).map_err(|error| ControlConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let raw: RawControl =
            crate::schema::parse(&text).map_err(|message| ControlConfigError::Parse {
                path: path.to_owned(),
                message,
            })?;
        let base = values::config_base(path);
        let base = base.as_path();
        raw.validate(base)
            .map_err(|errors| ControlConfigError::Invalid {
                path: path.to_owned(),
                errors,
            })
    }
}

impl RawControl {
    fn validate(self, base: &Path) -> Result<ControlConfig, FieldErrors> {
        let mut e = FieldErrors::default();
        let address = values::listen_addr(&mut e, "server.address", &self.server.address);
        // Given but not a token counts as given: reading it says what is
        // wrong with it.
        let token_in_env = !matches!(token_from_env(), Ok(None));
        if self.server.token_file.is_empty() {
            if !token_in_env {
                e.push(
                    "server.token_file",
                    format!("is required (or {TOKEN_ENV} in the environment): a file holding the bearer token proxies present"),
                );
            }
        } else if let Some(why) = values::not_a_named_file(base, &self.server.token_file) {
            e.push(
                "server.token_file",
                format!(
                    "must be a readable file, got {:?} ({why})",
                    self.server.token_file
                ),
            );
        }
        let max_wait = values::positive_duration(&mut e, "server.max_wait", &self.server.max_wait);
        let max_connections = values::connection_bound(
            &mut e,
            "server.max_connections",
            self.server.max_connections,
            "take it from the open-file limit",
        );
        let source = match &self.source {
            RawSource::File {
                path,
                poll_interval,
            } => SourceConfig::File {
                path: values::resolve(base, path),
                poll_interval: values::period(&mut e, "source.poll_interval", poll_interval),
            },
            RawSource::Aws {
                poll_interval,
                endpoint_url,
                hosted_zone_id,
                record_name,
                global_cluster_id,
                global_cluster_region,
                health_metric,
                lag_metric,
            } => {
                for (field, v) in [
                    ("hosted_zone_id", hosted_zone_id),
                    ("record_name", record_name),
                    ("global_cluster_id", global_cluster_id),
                ] {
                    if v.trim().is_empty() {
                        e.push(format!("source.{field}"), "is required, got \"\"");
                    }
                }
                if let Err(why) = plain_record_name(record_name) {
                    e.push(
                        "source.record_name",
                        format!("{why}; give the API's own name, such as \"api.example.com\", got {record_name:?}"),
                    );
                }
                if !valid_region_name(global_cluster_region) {
                    e.push(
                        "source.global_cluster_region",
                        format!("must be an AWS region such as \"us-east-1\", got {global_cluster_region:?}"),
                    );
                }
                if let Some(url) = endpoint_url
                    && !values::http_url(url)
                {
                    e.push(
                        "source.endpoint_url",
                        format!("must be an http(s) URL with a host, such as \"http://127.0.0.1:5000\", got {url:?}"),
                    );
                }
                SourceConfig::Aws(AwsSourceConfig {
                    poll_interval: values::period(&mut e, "source.poll_interval", poll_interval),
                    endpoint_url: endpoint_url.clone(),
                    hosted_zone_id: hosted_zone_id.trim_start_matches("/hostedzone/").to_owned(),
                    record_name: record_name.trim_end_matches('.').to_ascii_lowercase(),
                    global_cluster_id: global_cluster_id.clone(),
                    global_cluster_region: global_cluster_region.clone(),
                    health_metric: *health_metric,
                    lag_metric: *lag_metric,
                })
            }
        };
        let format = values::log_format(&mut e, "log.format", &self.log.format);
        let tls = self
            .server
            .tls
            .as_ref()
            .map(|t| t.validate(&mut e, base, "server.tls"));
        let client_ca = (!self.server.client_ca.is_empty()).then(|| {
            let raw = &self.server.client_ca;
            crate::tls::ca_file(&mut e, base, "server.client_ca", raw, tls.is_some(), || {
                "asks clients for certificates in the TLS handshake, so it needs server.tls: give server.tls, or leave client_ca out".to_owned()
            })
        });
        let actions =
            self.actions
                .validate(&mut e, base, address, (tls.is_some(), client_ca.is_some()));
        let automation = self.automation.validate(&mut e, &source);
        let notify = self.notify.validate(&mut e, base);
        e.finish(|| ControlConfig {
            actions,
            automation,
            notify,
            server: ServerConfig {
                address: address.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9080))),
                token_file: (!self.server.token_file.is_empty())
                    .then(|| values::resolve(base, &self.server.token_file)),
                max_wait,
                tls,
                client_ca,
                max_connections,
            },
            source,
            log: crate::LogConfig {
                format,
                access: false,
                level: self.log.level.clone(),
            },
        })
    }
}

/// Whether the failover history can be kept at `path`: a regular file
/// there, or none yet in a folder that exists. (The record of a failover
/// AWS has accepted is written after the fact; a path that cannot take it
/// would be found only then.)
fn history_file_usable(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(format!(
            "{} is not a regular file; name a file (it is created when first needed)",
            path.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let folder = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if folder.is_dir() {
                Ok(())
            } else {
                Err(format!(
                    "its folder {} does not exist; create it, or name a file in a folder that does",
                    folder.display()
                ))
            }
        }
        Err(e) => Err(format!("cannot look at {}: {e}", path.display())),
    }
}

impl RawActions {
    fn validate(
        &self,
        e: &mut FieldErrors,
        base: &Path,
        server: Option<SocketAddr>,
        (server_tls, server_client_ca): (bool, bool),
    ) -> ActionsConfig {
        if self.history_file.trim().is_empty() {
            e.push(
                "actions.history_file",
                "must name a writable file, got \"\"",
            );
        } else if let Err(why) = history_file_usable(&values::resolve(base, &self.history_file)) {
            e.push("actions.history_file", why);
        }
        let control_url = if self.control_url.is_empty() {
            let mut addr = server.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9080)));
            let localhost = addr.ip().is_unspecified()
                || addr.ip() == std::net::Ipv4Addr::LOCALHOST
                || addr.ip() == std::net::Ipv6Addr::LOCALHOST;
            if addr.ip().is_unspecified() {
                addr.set_ip(if addr.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            match server_tls {
                // A certificate names hosts more often than loopback's
                // addresses.
                true if localhost => format!("https://localhost:{}", addr.port()),
                true => format!("https://{addr}"),
                false => format!("http://{addr}"),
            }
        } else {
            if !(self.control_url.starts_with("http://")
                || self.control_url.starts_with("https://"))
            {
                e.push(
                    "actions.control_url",
                    format!(
                        "must be the control plane's base URL such as \"http://127.0.0.1:9080\", got {:?}",
                        self.control_url
                    ),
                );
            } else if server_tls && self.control_url.starts_with("http://") {
                e.push(
                    "actions.control_url",
                    format!(
                        "is {:?}, but server.tls makes the control plane answer HTTPS only: give its https:// URL (with a host name its certificate holds), or leave control_url out",
                        self.control_url
                    ),
                );
            }
            self.control_url.trim_end_matches('/').to_owned()
        };
        let replica_urls = self.replica_urls(e, &control_url);
        let ca_file = (!self.ca_file.is_empty()).then(|| {
            let https = control_url.starts_with("https://");
            crate::tls::ca_file(e, base, "actions.ca_file", &self.ca_file, https, || {
                format!("is for a control plane reached by https://, and actions.control_url is {control_url:?}: give server.tls or an https:// control_url, or leave ca_file out")
            })
        });
        let client_tls = self.client_tls.as_ref().map(|raw| {
            raw.validate_client(
                e,
                base,
                "actions.client_tls",
                ("actions.control_url", &control_url),
            )
        });
        if server_client_ca && client_tls.is_none() && self.control_url.is_empty() {
            e.push(
                "actions.client_tls",
                "is needed: server.client_ca makes this control plane ask every client for a certificate, the commands (which ask it) too; give one signed by a CA in server.client_ca",
            );
        }
        ActionsConfig {
            history_file: values::resolve(base, &self.history_file),
            timeout: {
                let timeout = values::positive_duration(e, "actions.timeout", &self.timeout);
                if let Some(why) = short_action_timeout(timeout).filter(|_| !timeout.is_zero()) {
                    e.push("actions.timeout", format!("{why}, got {:?}", self.timeout));
                }
                timeout
            },
            proxy_max_age: values::positive_duration(
                e,
                "actions.proxy_max_age",
                &self.proxy_max_age,
            ),
            control_url,
            replica_urls,
            client_tls,
            ca_file,
        }
    }

    /// `replica_urls`, each as a base URL of the same scheme as
    /// `control_url` (the replicas of one control plane answer alike, and
    /// the commands' TLS settings serve them all), listed once each.
    fn replica_urls(&self, e: &mut FieldErrors, control_url: &str) -> Vec<String> {
        let (scheme, port) = if control_url.starts_with("https://") {
            ("https://", 9443)
        } else {
            ("http://", 9080)
        };
        let mut urls: Vec<String> = Vec::with_capacity(self.replica_urls.len());
        for (i, raw) in self.replica_urls.iter().enumerate() {
            let field = format!("actions.replica_urls[{i}]");
            let url = raw.trim_end_matches('/');
            let host = url.strip_prefix(scheme).unwrap_or_default();
            if host.contains('@') {
                // Not echoed: the URL holds a password.
                e.push(
                    &field,
                    "must not hold credentials (user@ or user:password@): the commands send the control plane's token",
                );
            } else if !crate::values::host_and_port(host) {
                e.push(
                    &field,
                    format!(
                        "must be one replica's base URL, {scheme} as actions.control_url {control_url:?} is, and a host with an optional port, such as \"{scheme}edgeroute-control-0.edgeroute-control:{port}\", got {raw:?}"
                    ),
                );
            } else if urls.iter().any(|u| u == url) {
                e.push(
                    &field,
                    format!("lists {raw:?} a second time: give each replica's URL once"),
                );
            } else {
                urls.push(url.to_owned());
            }
        }
        urls
    }
}

impl RawAutomation {
    fn validate(&self, e: &mut FieldErrors, source: &SourceConfig) -> AutomationConfig {
        if self.enabled {
            match source {
                SourceConfig::Aws(aws) if !aws.lag_metric => e.push(
                    "automation.enabled",
                    "needs source.lag_metric = true: a failover target is chosen by its replication lag",
                ),
                SourceConfig::Aws(_) => {}
                SourceConfig::File { .. } => e.push(
                    "automation.enabled",
                    "needs source.kind = \"aws\": automated failover acts on the Aurora global cluster",
                ),
            }
        }
        let after = values::positive_duration(e, "automation.after", &self.after);
        let min_interval = values::duration(e, "automation.min_interval", &self.min_interval);
        // A new primary that stumbles while it takes over would be failed
        // over again at once, with no `after` of its own.
        // (A value that is no duration is named once, as such.)
        let parsed = humantime::parse_duration(self.min_interval.trim()).is_ok();
        if self.enabled && parsed && min_interval < after {
            e.push(
                "automation.min_interval",
                format!(
                    "must be at least automation.after ({}), or a new primary that fails within it is failed over again without the wait; got {:?}",
                    humantime::format_duration(after),
                    self.min_interval
                ),
            );
        }
        AutomationConfig {
            enabled: self.enabled,
            after,
            max_replication_lag: values::duration(
                e,
                "automation.max_replication_lag",
                &self.max_replication_lag,
            ),
            min_interval,
        }
    }
}

impl RawNotify {
    fn validate(&self, e: &mut FieldErrors, base: &Path) -> NotifyConfig {
        let arn = self.sns_topic_arn.trim();
        if !arn.is_empty() {
            let parts: Vec<&str> = arn.split(':').collect();
            let ok = parts.len() == 6
                && parts[0] == "arn"
                && parts[2] == "sns"
                && valid_region_name(parts[3])
                && !parts[5].is_empty();
            if !ok {
                e.push(
                    "notify.sns_topic_arn",
                    format!("must be an SNS topic ARN such as \"arn:aws:sns:us-east-1:123456789012:edgeroute\", got {arn:?}"),
                );
            }
        }
        let url = self.webhook_url.trim();
        if !(url.is_empty() || values::http_url(url)) {
            // Not the URL itself: its user information or path may hold
            // a secret, and this goes to logs.
            e.push(
                "notify.webhook_url",
                format!("must be an http(s) URL with a host, such as \"https://hooks.example.com/edgeroute\" (percent-encode spaces); got {} (not shown: a webhook URL may hold a secret)", url_shape(url)),
            );
        }
        let token = self.webhook_token_file.trim();
        if let Some(why) = (!token.is_empty())
            .then(|| values::not_a_named_file(base, token))
            .flatten()
        {
            e.push(
                "notify.webhook_token_file",
                format!("must be a readable file, got {token:?} ({why})"),
            );
        }
        // A URL's user information is sent as Basic credentials.
        let authority = url.split_once("://").map_or("", |(_, rest)| {
            &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())]
        });
        if !token.is_empty() && authority.contains('@') {
            e.push(
                "notify.webhook_token_file",
                "cannot go with a notify.webhook_url that holds user information: the receiver would get two Authorization fields (Basic from the URL, Bearer from the file); keep one".to_owned(),
            );
        }
        NotifyConfig {
            sns_topic_arn: (!arn.is_empty()).then(|| arn.to_owned()),
            webhook_url: (!url.is_empty()).then(|| url.to_owned()),
            webhook_token_file: (!token.is_empty()).then(|| values::resolve(base, token)),
            timeout: values::positive_duration(e, "notify.timeout", &self.timeout),
        }
    }
}

/// What the sources see of the world: the regions, their health and weight,
/// and where the database writer is. The table builder turns it into a
/// routing table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyView {
    /// Region holding the writer, if known. Required in a topology file,
    /// `null` included, as in a routing table: a file that leaves it out
    /// (or misspells it) would otherwise refuse every write without a word.
    #[serde(deserialize_with = "Option::deserialize")]
    pub primary_region: Option<String>,
    /// A writer change is under way (false when left out; a misspelt key
    /// is refused, as every unknown key of a topology is).
    #[serde(default)]
    pub failover_in_progress: bool,
    pub regions: Vec<RegionView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionView {
    pub name: String,
    /// Route 53 weight; 0 means the region is being drained.
    #[serde(default)]
    pub weight: Option<u32>,
    /// What the health checks say; `None` when unknown (treated as healthy).
    #[serde(default)]
    pub healthy: Option<bool>,
    #[serde(default)]
    pub replication_lag_ms: Option<u64>,
    /// A health check of the region could not be read this time: `healthy`
    /// is its last reading, or unknown. Automated failover does not act
    /// on such a region.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub health_unread: bool,
    /// What found the region unhealthy (which health check, and which of
    /// its readings), when the source says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_because: Option<String>,
}

impl RegionView {
    /// What found the region unhealthy, while it is unhealthy and the
    /// source said.
    pub fn why_unhealthy(&self) -> Option<&str> {
        self.unhealthy_because
            .as_deref()
            .filter(|_| self.healthy == Some(false))
    }
}

impl TopologyView {
    /// Parses and checks a topology document; the error says what is
    /// wrong with it, as a topology.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let view: TopologyView = crate::table::from_json(bytes)
            .and_then(|view| crate::table::objects_as_documented(bytes).map(|()| view))
            .map_err(|e| format!("not a topology (JSON with primary_region and regions): {e}"))?;
        view.validate().map_err(|errs| {
            format!("invalid topology: {}", errs.to_string().replace('\n', "; "))
        })?;
        Ok(view)
    }

    /// What a routing table needs of the view, whatever its source: one
    /// region at least (at most `MAX_REGIONS`), valid names and weights,
    /// and a primary among the regions.
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut e = FieldErrors::default();
        if !values::region_count(&mut e, self.regions.len()) {
            return Err(e);
        }
        let mut names = HashSet::new();
        for (i, r) in self.regions.iter().enumerate() {
            values::region_entry(&mut e, i, &r.name, r.weight, &mut names);
        }
        if let Some(p) = &self.primary_region
            && !names.contains(p.as_str())
        {
            e.push(
                "primary_region",
                format!("must be one of the regions, got {p:?}"),
            );
        }
        e.finish(|| ())
    }
}

/// Whether `name` is a DNS name Route 53 lists as written (see
/// [`values::valid_dns_name`]). Others it lists escaped (a wildcard `*` as
/// `\052`), which would never match the configured name. (Empty: the "is
/// required" error says so.)
fn plain_record_name(name: &str) -> Result<(), &'static str> {
    let name = name.trim_end_matches('.');
    if name.is_empty() {
        return Ok(());
    }
    if name.split('.').any(|label| label == "*") {
        return Err(
            "a wildcard name is not supported: the control plane mirrors the records of one name",
        );
    }
    // A drain's record is named `_edgeroute-drained.<name>`, 19 more.
    if name.len() > 234 || !values::valid_dns_name(name) {
        return Err(
            "must be a DNS name of labels 1 to 63 characters long, of only letters, digits, '-' and '_' (not at a label's ends), at most 234 in all (a drain's record adds `_edgeroute-drained.` to reach DNS's 253)",
        );
    }
    Ok(())
}

/// What can be said of a URL without showing a part that may be secret:
/// its scheme, whether it has user information, and its length.
fn url_shape(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return format!("{} characters with no `://`", url.chars().count());
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    format!(
        "a {:?} URL of {} characters{}",
        scheme.chars().take(16).collect::<String>(),
        url.chars().count(),
        if authority.contains('@') {
            " with user information"
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests {
    use super::{ControlConfig, ControlConfigError, TopologyView, plain_record_name};

    #[test]
    fn a_record_name_is_a_plain_dns_name() {
        for ok in [
            "api.example.com",
            "api.example.com.",
            "_api.eu-1.example.com",
            "",
        ] {
            assert_eq!(plain_record_name(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("*.api.example.com", "wildcard"),
            ("api..example.com", "labels 1 to 63"),
            ("api example.com", "only letters"),
            ("api.\\052.example.com", "only letters"),
        ] {
            let got = plain_record_name(bad).unwrap_err();
            assert!(got.contains(why), "{bad}: {got}");
        }
        let long = format!("{}.example.com", "a".repeat(64));
        assert!(plain_record_name(&long).unwrap_err().contains("63"));
        let label = "a".repeat(63);
        let at_most = format!("{label}.{label}.{label}.{}", "b".repeat(42));
        assert_eq!(at_most.len(), 234);
        assert_eq!(plain_record_name(&at_most), Ok(()));
        let past = format!("{at_most}c");
        assert!(plain_record_name(&past).unwrap_err().contains("234"));
        // As a config file says it.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.toml");
        std::fs::write(
            &path,
            "[source]\nkind = \"aws\"\nhosted_zone_id = \"Z1\"\nrecord_name = \"*.api.example.com\"\n\
             global_cluster_id = \"g\"\nglobal_cluster_region = \"us-east-1\"\n",
        )
        .unwrap();
        let Err(ControlConfigError::Invalid { errors, .. }) = ControlConfig::load(&path) else {
            panic!("a wildcard record name was accepted")
        };
        assert!(
            errors
                .iter()
                .any(|e| e.path == "source.record_name" && e.message.contains("wildcard")),
            "{errors}"
        );
    }

    /// The message for `field` of a file-source config in `dir` with
    /// `more` after its `[source]`, or `None` when it loads.
    fn field_error(dir: &std::path::Path, more: &str, field: &str) -> Option<String> {
        let path = dir.join("control.toml");
        std::fs::write(
            &path,
            format!("[source]\nkind = \"file\"\npath = \"topology.json\"\n\n{more}"),
        )
        .unwrap();
        match ControlConfig::load(&path) {
            Ok(_) => None,
            Err(ControlConfigError::Invalid { errors, .. }) => errors
                .iter()
                .find(|e| e.path == field)
                .map(|e| e.message.clone()),
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn a_history_file_that_cannot_be_kept_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let load = |history: &str| {
            field_error(
                dir.path(),
                &format!("[actions]\nhistory_file = {history:?}\n"),
                "actions.history_file",
            )
        };
        assert!(load(".").unwrap().contains("not a regular file"));
        assert!(
            load("no/such/folder/h.json")
                .unwrap()
                .contains("does not exist")
        );
        // A file yet to be made in a folder that exists, or one that is.
        assert_eq!(load("history.json"), None);
        std::fs::write(dir.path().join("kept.json"), "").unwrap();
        assert_eq!(load("kept.json"), None);
    }

    #[test]
    fn a_webhook_gets_one_authorization_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hook-token"), "t\n").unwrap();
        let load = |url: &str| {
            field_error(
                dir.path(),
                &format!("[notify]\nwebhook_url = {url:?}\nwebhook_token_file = \"hook-token\"\n"),
                "notify.webhook_token_file",
            )
        };
        let both = load("https://user:pass@hooks.example.com/edgeroute").unwrap();
        assert!(both.contains("two Authorization fields"), "{both}");
        // An `@` past the host is no user information.
        assert_eq!(load("https://hooks.example.com/to/a@b"), None);
        assert_eq!(load("https://hooks.example.com/edgeroute"), None);
    }

    #[test]
    fn a_bad_webhook_url_is_described_not_shown() {
        let dir = tempfile::tempdir().unwrap();
        let said = |url: &str| {
            field_error(
                dir.path(),
                &format!("[notify]\nwebhook_url = {url:?}\n"),
                "notify.webhook_url",
            )
            .expect("refused")
        };
        let why = said("https://a:b@hooks example.com/T0/B1/s3cret");
        assert!(
            why.contains("got a \"https\" URL of 42 characters with user information (not shown"),
            "{why}"
        );
        for secret in ["a:b", "s3cret", "hooks example"] {
            assert!(!why.contains(secret), "{why}");
        }
        let why = said("hooks.example.com/s3cret");
        assert!(why.contains("got 24 characters with no `://`"), "{why}");
    }

    #[test]
    fn an_action_timeout_too_short_to_follow_a_change_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.toml");
        std::fs::write(
            &path,
            "[source]\nkind = \"file\"\npath = \"topology.json\"\n\n[actions]\ntimeout = \"1ms\"\n",
        )
        .unwrap();
        let Err(ControlConfigError::Invalid { errors, .. }) = ControlConfig::load(&path) else {
            panic!("a 1 ms timeout was accepted")
        };
        assert!(
            errors
                .iter()
                .any(|e| e.path == "actions.timeout" && e.message.contains("at least 5s")),
            "{errors}"
        );
    }

    #[test]
    fn the_automations_min_interval_is_at_least_its_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.toml");
        std::fs::write(dir.path().join("token"), "t0ken\n").unwrap();
        let config = |min_interval: &str| {
            format!(
                "[server]\ntoken_file = \"token\"\n\n[source]\nkind = \"aws\"\nhosted_zone_id = \"Z1\"\nrecord_name = \"api.example.com\"\n\
                 global_cluster_id = \"g\"\nglobal_cluster_region = \"us-east-1\"\n\n\
                 [automation]\nenabled = true\nafter = \"60s\"\nmin_interval = \"{min_interval}\"\n"
            )
        };
        for short in ["0s", "59s"] {
            std::fs::write(&path, config(short)).unwrap();
            let Err(ControlConfigError::Invalid { errors, .. }) = ControlConfig::load(&path) else {
                panic!("min_interval {short} was accepted")
            };
            assert!(
                errors.iter().any(|e| e.path == "automation.min_interval"
                    && e.message.contains("must be at least automation.after (1m)")),
                "{errors}"
            );
        }
        std::fs::write(&path, config("60s")).unwrap();
        ControlConfig::load(&path).expect("min_interval equal to after");
        std::fs::write(&path, config("soon")).unwrap();
        let Err(ControlConfigError::Invalid { errors, .. }) = ControlConfig::load(&path) else {
            panic!("min_interval \"soon\" was accepted")
        };
        let named = errors
            .iter()
            .filter(|e| e.path == "automation.min_interval")
            .count();
        assert_eq!(named, 1, "named once: {errors}");
    }

    #[test]
    fn replica_urls_share_the_control_urls_scheme_and_are_listed_once() {
        let dir = tempfile::tempdir().unwrap();
        let server = "[server]\ntoken_file = \"token\"\n";
        let c = with(dir.path(), server).unwrap();
        assert!(c.actions.replica_urls.is_empty());
        let c = with(
            dir.path(),
            &format!(
                "{server}[actions]\nreplica_urls = [\"http://10.0.1.5:9080/\", \"http://10.0.2.5:9080\"]\n"
            ),
        )
        .unwrap();
        assert_eq!(
            c.actions.replica_urls,
            ["http://10.0.1.5:9080", "http://10.0.2.5:9080"]
        );
        let Err(ControlConfigError::Invalid { errors, .. }) = with(
            dir.path(),
            &format!(
                "{server}[actions]\nreplica_urls = [\"https://10.0.1.5:9443\", \"10.0.2.5:9080\", \"http://\", \"http://a:1/v1\", \"http://a:1?x=1\", \"http://a:1\", \"http://a:1/\", \"http://u:s3cret@b:1\"]\n"
            ),
        ) else {
            panic!("bad replica URLs were accepted")
        };
        let said: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (e.path.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(said.len(), 7, "{errors}");
        for (i, (path, message)) in said[..5].iter().enumerate() {
            assert_eq!(*path, format!("actions.replica_urls[{i}]"));
            assert!(
                message.contains("http:// as actions.control_url \"http://127.0.0.1:9080\" is"),
                "{message}"
            );
        }
        assert_eq!(said[5].0, "actions.replica_urls[6]");
        assert!(said[5].1.contains("a second time"), "{}", said[5].1);
        assert_eq!(said[6].0, "actions.replica_urls[7]");
        assert!(said[6].1.contains("credentials"), "{}", said[6].1);
        assert!(!errors.to_string().contains("s3cret"), "{errors}");
    }

    /// A control config of `extra` lines after a file source, loaded
    /// from `dir`, which holds `token`, `cert.pem`, `key.pem` and
    /// `ca.pem`.
    fn with(dir: &std::path::Path, extra: &str) -> Result<ControlConfig, ControlConfigError> {
        for file in ["token", "cert.pem", "key.pem", "ca.pem"] {
            std::fs::write(dir.join(file), "x\n").unwrap();
        }
        let path = dir.join("control.toml");
        std::fs::write(
            &path,
            format!("[source]\nkind = \"file\"\npath = \"topology.json\"\n{extra}"),
        )
        .unwrap();
        ControlConfig::load(&path)
    }

    #[test]
    fn a_server_with_tls_is_asked_by_https_on_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let server = "[server]\ntoken_file = \"token\"\naddress = \"0.0.0.0:9443\"\ntls = { cert = \"cert.pem\", key = \"key.pem\" }\n";
        let c = with(dir.path(), server).unwrap();
        let tls = c.server.tls.expect("TLS files");
        assert_eq!(tls.cert, dir.path().join("cert.pem"));
        assert_eq!(tls.key, dir.path().join("key.pem"));
        assert_eq!(c.actions.control_url, "https://localhost:9443");
        assert_eq!(c.actions.ca_file, None);
        // A server on one address is asked there.
        let c = with(
            dir.path(),
            &format!(
                "{}[actions]\nca_file = \"ca.pem\"\n",
                server.replace("0.0.0.0", "10.0.0.7")
            ),
        )
        .unwrap();
        assert_eq!(c.actions.control_url, "https://10.0.0.7:9443");
        assert_eq!(c.actions.ca_file, Some(dir.path().join("ca.pem")));
        // Without TLS, plain HTTP.
        let c = with(dir.path(), "[server]\ntoken_file = \"token\"\n").unwrap();
        assert!(c.server.tls.is_none());
        assert_eq!(c.actions.control_url, "http://127.0.0.1:9080");
    }

    #[test]
    fn the_servers_connection_bound_is_given_or_taken_from_the_open_file_limit() {
        let dir = tempfile::tempdir().unwrap();
        let c = with(dir.path(), "[server]\ntoken_file = \"token\"\n").unwrap();
        assert_eq!(c.server.max_connections, None);
        assert_eq!(c.server.connections(65_536), 65_280);
        assert_eq!(c.server.connections(100), 1, "at least one");
        let c = with(
            dir.path(),
            "[server]\ntoken_file = \"token\"\nmax_connections = 5000\n",
        )
        .unwrap();
        assert_eq!(c.server.connections(1024), 5000);
        let Err(ControlConfigError::Invalid { errors, .. }) = with(
            dir.path(),
            "[server]\ntoken_file = \"token\"\nmax_connections = 0\n",
        ) else {
            panic!("accepted")
        };
        assert_eq!(errors.len(), 1, "{errors}");
        assert_eq!(errors.0[0].path, "server.max_connections");
        assert!(errors.to_string().contains("at least 1"), "{errors}");
    }

    #[test]
    fn tls_files_that_cannot_be_read_and_a_ca_file_for_http_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let Err(ControlConfigError::Invalid { errors, .. }) = with(
            dir.path(),
            "[server]\ntoken_file = \"token\"\ntls = { cert = \"missing.pem\", key = \"key.pem\" }\n[actions]\ncontrol_url = \"http://127.0.0.1:9080\"\nca_file = \"ca.pem\"\n",
        ) else {
            panic!("accepted")
        };
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["server.tls.cert", "actions.control_url", "actions.ca_file"],
            "{errors}"
        );
        let text = errors.to_string();
        assert!(text.contains("reached by https://"), "{errors}");
        assert!(
            text.contains("server.tls makes the control plane answer HTTPS only"),
            "{errors}"
        );
    }

    #[test]
    fn client_certificates_need_tls_on_both_ends() {
        let dir = tempfile::tempdir().unwrap();
        let Err(ControlConfigError::Invalid { errors, .. }) = with(
            dir.path(),
            "[server]\ntoken_file = \"token\"\nclient_ca = \"ca.pem\"\n[actions]\nclient_tls = { cert = \"cert.pem\", key = \"key.pem\" }\n",
        ) else {
            panic!("accepted")
        };
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["server.client_ca", "actions.client_tls"],
            "{errors}"
        );
        let text = errors.to_string();
        assert!(text.contains("it needs server.tls"), "{errors}");
        assert!(
            text.contains("actions.control_url is \"http://127.0.0.1:9080\""),
            "{errors}"
        );
        let c = with(
            dir.path(),
            "[server]\ntoken_file = \"token\"\ntls = { cert = \"cert.pem\", key = \"key.pem\" }\nclient_ca = \"ca.pem\"\n[actions]\nclient_tls = { cert = \"cert.pem\", key = \"key.pem\" }\n",
        )
        .unwrap();
        assert_eq!(c.server.client_ca, Some(dir.path().join("ca.pem")));
        let client = c.actions.client_tls.expect("the commands' certificate");
        assert_eq!(client.cert, dir.path().join("cert.pem"));
        assert_eq!(client.key, dir.path().join("key.pem"));
        let Err(ControlConfigError::Invalid { errors, .. }) = with(
            dir.path(),
            "[server]\ntoken_file = \"token\"\ntls = { cert = \"cert.pem\", key = \"key.pem\" }\nclient_ca = \"missing.pem\"\n",
        ) else {
            panic!("accepted")
        };
        assert_eq!(errors.iter().next().unwrap().path, "server.client_ca");
        assert!(
            errors.to_string().contains("must be a readable PEM file"),
            "{errors}"
        );
        // The commands ask this control plane: they need a certificate.
        let Err(ControlConfigError::Invalid { errors, .. }) = with(
            dir.path(),
            "[server]\ntoken_file = \"token\"\ntls = { cert = \"cert.pem\", key = \"key.pem\" }\nclient_ca = \"ca.pem\"\n",
        ) else {
            panic!("accepted")
        };
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["actions.client_tls"], "{errors}");
        assert!(errors.to_string().contains("is needed"), "{errors}");
    }

    #[test]
    fn a_topology_without_regions_gives_no_table() {
        let err = TopologyView::from_json(
            br#"{"primary_region": null, "failover_in_progress": false, "regions": []}"#,
        )
        .unwrap_err();
        assert!(
            err.contains("regions: at least one region is required"),
            "{err}"
        );
        let ok = TopologyView::from_json(
            br#"{"primary_region": "eu-west-1", "failover_in_progress": false, "regions": [{"name": "eu-west-1"}]}"#,
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn a_topology_names_its_primary_or_says_null() {
        let err = TopologyView::from_json(
            br#"{"failover_in_progress": false, "regions": [{"name": "eu-west-1"}]}"#,
        )
        .unwrap_err();
        assert!(err.contains("missing field `primary_region`"), "{err}");
        let err = TopologyView::from_json(
            br#"{"primary_region": null, "failover_in_progres": true, "regions": [{"name": "eu-west-1"}]}"#,
        )
        .unwrap_err();
        assert!(err.contains("unknown field `failover_in_progres`"), "{err}");
        let left_out = TopologyView::from_json(
            br#"{"primary_region": null, "regions": [{"name": "eu-west-1"}]}"#,
        )
        .expect("failover_in_progress left out is false");
        assert!(!left_out.failover_in_progress);
        let none = TopologyView::from_json(
            br#"{"primary_region": null, "failover_in_progress": false, "regions": [{"name": "eu-west-1"}]}"#,
        )
        .expect("null says no primary is known");
        assert_eq!(none.primary_region, None);
    }
}

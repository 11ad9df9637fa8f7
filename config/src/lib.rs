//! edgeroute's shared schema.
//!
//! Everything the proxy and the control plane must agree on lives here: the
//! proxy's configuration file and the routing table they exchange. Both are
//! parsed into plain `serde` types first, then validated into separate types
//! that the rest of the code can trust. Validation never stops at the first
//! problem: it reports every bad field with its path and value, so an operator
//! fixes a file in one pass.

pub mod accept;
mod control;
mod errors;
mod logs;
mod process;
mod proxy;
mod report;
mod schema;
mod secret;
mod table;
mod table_metrics;
pub mod tls;
mod values;

pub use control::{
    ActionsConfig, AutomationConfig, AwsSourceConfig, ControlConfig, ControlConfigError,
    NotifyConfig, RegionView, ServerConfig, SourceConfig, TOKEN_ENV, TopologyView,
    short_action_timeout, token_from_env,
};
pub use errors::{FieldError, FieldErrors, error_chain};
pub use logs::{LogBudget, log_filter, logged_end, logged_path};
pub use process::{ProcessMetrics, raise_open_file_limit};
pub use proxy::{
    AdminConfig, Backend, ConfigError, DnsConfig, FromTomlError, HealthConfig, Limits, Listener,
    LogConfig, LogFormat, MAX_BACKENDS_PER_REGION, MAX_REGIONS, MethodClasses, ProxyConfig,
    ReadYourWrites, Region, Retries, RouteRule, RouteTarget, RuntimeConfig, ShutdownConfig,
    TableSource, Timeouts, check_region_name, valid_region_name,
};
pub use report::{MAX_PROXY_ID, ProxyReport, RegionHealth};
pub use secret::{TokenFile, read_secret, token, weak_token, writable_by_others};
pub use table::{
    Admission, MAX_TABLE_BYTES, RegionEntry, RegionState, Rejection, RoutingTable, is_digest,
};
pub use table_metrics::TableGauges;
pub use tls::TlsFiles;
pub use values::authority as is_authority;
pub use values::read_regular;
pub use values::token as is_token;

/// A named pipe with no writer at `dir/name`, for tests of paths that must
/// be regular files (opening one to read would wait forever).
#[cfg(test)]
pub(crate) fn fifo(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let made = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo {}", path.display());
    path
}

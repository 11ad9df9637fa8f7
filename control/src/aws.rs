//! The AWS source: Route 53's latency records and health checks give the
//! regions, their weights and health; the Aurora global cluster gives the
//! writer region and whether a failover runs; CloudWatch gives each
//! secondary's replication lag.
//!
//! Credentials come from the default chain (environment, profile, IRSA on
//! EKS, instance role). Calls are retried by the SDK with backoff; a read
//! that still fails fails whole, so the table in force stays, but for
//! Route 53's records, whose last listing stands in (see
//! [`AwsSource::read`]).

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_cloudwatch::types::{Dimension, Statistic};
use aws_sdk_route53::config::interceptors::{
    BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_route53::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_route53::types::{Change, ChangeAction, ChangeBatch, ResourceRecordSet, RrType};
use aws_smithy_http_client::tls;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use edgeroute_config::{AwsSourceConfig, RegionView, TopologyView};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

/// A replication lag older than this is unknown: when a primary fails its
/// lag metric stops, and the last value would look better than the truth.
const LAG_MAX_AGE: Duration = Duration::from_secs(180);

/// Route 53 counts a check healthy while more than 18% of its checkers
/// report success.
const HEALTHY_SHARE: f64 = 0.18;

/// How long a read for the table waits for health checks and replication
/// lags, which are read side by side: what has not answered by then is
/// unread this time (a health check's last reading stands in, a lag is
/// unknown), so an endpoint that hangs delays the writer's moves by this
/// much for each of a read's two rounds (the regions' health beside the
/// global cluster; then the lags and the health of drained regions, which
/// need the cluster's members). An action's read waits for every answer.
const HEALTH_AND_LAG_WAIT: Duration = Duration::from_secs(5);

/// How long the global cluster is waited for in one region before the
/// next member region is asked: an RDS API that hangs there (the SDK
/// would try for 30 s) makes the read fail in seconds, so the source is
/// told stale, rather than the table standing still unnoticed.
const GLOBAL_CLUSTER_WAIT: Duration = Duration::from_secs(5);

/// Who a read is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadFor {
    /// The table, kept current: the last records listed stand in for a
    /// list that fails, and health and lags are waited for
    /// [`HEALTH_AND_LAG_WAIT`] at most.
    Table,
    /// An action: everything read now, every answer waited for.
    Action,
}

impl ReadFor {
    /// Until when what is read from now on is waited for (`None`: for
    /// every answer).
    fn wait_until(self) -> Option<tokio::time::Instant> {
        (self == ReadFor::Table).then(|| tokio::time::Instant::now() + HEALTH_AND_LAG_WAIT)
    }
}

/// A failed call, named by its API for the metrics.
#[derive(Debug, thiserror::Error)]
#[error("{api}: {message}")]
pub struct AwsError {
    pub api: &'static str,
    pub message: String,
}

impl AwsError {
    /// AWS turned the call away for the account's request rate, after
    /// the SDK's own retries: nothing was done, and the same call a few
    /// seconds later may go through.
    pub fn throttled(&self) -> bool {
        self.code_is(&[
            "Throttling",
            "ThrottlingException",
            "RequestLimitExceeded",
            "TooManyRequestsException",
            "PriorRequestNotComplete",
        ])
    }

    /// AWS failed on its side (a 5xx), after the SDK's own retries: not a
    /// refusal of what was asked.
    pub fn server_fault(&self) -> bool {
        self.code_is(&[
            "ServiceUnavailable",
            "InternalFailure",
            "InternalError",
            "InternalServerError",
        ])
    }

    /// The message starts with one of `codes` (`Code: what AWS said`).
    fn code_is(&self, codes: &[&str]) -> bool {
        codes.iter().any(|code| {
            self.message
                .strip_prefix(code)
                .is_some_and(|rest| rest.starts_with(':'))
        })
    }

    /// What to add to a refusal: for a throttled call, that nothing changed
    /// and when to try again.
    pub fn advice(&self) -> &'static str {
        if self.throttled() {
            " (AWS is throttling this account's calls and the SDK's retries ran out: nothing changed; run the command again in a few seconds)"
        } else {
            ""
        }
    }
}

/// How the message of a call that reached no endpoint begins (see
/// [`AwsSource::unreached_advice`]).
const UNREACHED: &str = "no answer from the endpoint";

/// A failed call to `api` as an [`AwsError`] (see [`sdk_message`]).
fn fail<E>(api: &'static str) -> impl FnOnce(aws_sdk_rds::error::SdkError<E>) -> AwsError
where
    E: std::error::Error + aws_sdk_rds::error::ProvideErrorMetadata + 'static,
    aws_sdk_rds::error::SdkError<E>: std::error::Error,
{
    move |e| AwsError {
        api,
        message: sdk_message(&e),
    }
}

/// What a failed SDK call (of any service) says, in one line: AWS's own
/// code and message when it answered with an error; the chain of causes
/// (connection refused, timeout, ...) when it did not, and where
/// credentials were missing, where they are looked for. Never the SDK's
/// whole error (its headers and body).
pub(crate) fn sdk_message<E>(e: &aws_sdk_rds::error::SdkError<E>) -> String
where
    E: std::error::Error + aws_sdk_rds::error::ProvideErrorMetadata + 'static,
    aws_sdk_rds::error::SdkError<E>: std::error::Error,
{
    use aws_sdk_rds::error::ProvideErrorMetadata;
    match (e, e.code(), e.message()) {
        (aws_sdk_rds::error::SdkError::ServiceError(_), Some(code), Some(message)) => {
            format!("{code}: {message}")
        }
        _ => {
            let mut message = edgeroute_config::error_chain(e);
            let unsent = matches!(
                e,
                aws_sdk_rds::error::SdkError::DispatchFailure(_)
                    | aws_sdk_rds::error::SdkError::TimeoutError(_)
            );
            if unsent && !no_credentials(e) {
                message = format!("{UNREACHED}: {message}");
            }
            // An answer that is not AWS's own (a proxy's 403 page, say).
            if let Some(raw) = e.raw_response() {
                message = format!("HTTP {}: {message}", raw.status().as_u16());
            }
            if no_credentials(e) {
                message.push_str("; ");
                message.push_str(NO_CREDENTIALS);
            }
            message
        }
    }
}

/// What to do when the SDK could not load credentials (found none, or
/// found some it could not use).
const NO_CREDENTIALS: &str = "AWS credentials could not be loaded for this process: \
    they come from the default chain, so check that one of AWS_ACCESS_KEY_ID with \
    AWS_SECRET_ACCESS_KEY, AWS_PROFILE, IRSA on EKS (AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE, \
    with the role trusting the service account) or an instance or task role is given and allowed";

/// Whether `error`, or an error it was caused by, is the SDK failing to
/// load credentials.
fn no_credentials(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<aws_credential_types::provider::error::CredentialsError>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// The SDK's shared config: rustls with ring, credentials from the default
/// chain, and `endpoint_url` instead of AWS when given.
pub async fn sdk_config(endpoint_url: Option<&str>, region: &str) -> SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new(region.to_owned()));
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    // A region that hangs must not stall a read, nor an action past its
    // deadline: every call is bounded (the SDK retries within the bound).
    loader = loader.timeout_config(
        aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(10))
            .operation_timeout(Duration::from_secs(30))
            .build(),
    );
    loader.load().await
}

/// Counts the requests the SDK sends to AWS, each attempt (its retries
/// too), as it sends them, in `edgeroute_control_aws_requests_total`, and
/// the answers, by status class, in `edgeroute_control_aws_answers_total`
/// (by service and operation): Route 53 allows an account five requests
/// a second, shared by all its callers, and this is the control plane's
/// part. Without metrics (a one-off command), nothing is counted.
#[derive(Debug, Clone, Default)]
pub struct AwsRequests(Option<(prometheus::IntCounterVec, prometheus::IntCounterVec)>);

impl AwsRequests {
    /// Counted in `metrics`, if any.
    pub fn of(metrics: Option<&crate::metrics::ControlMetrics>) -> Self {
        AwsRequests(metrics.map(|m| (m.aws_requests.clone(), m.aws_answers.clone())))
    }
}

/// The service and operation a request is for.
fn operation(cfg: &ConfigBag) -> (&str, &str) {
    cfg.load::<Metadata>()
        .map_or(("unknown", "unknown"), |m| (m.service(), m.name()))
}

impl Intercept for AwsRequests {
    fn name(&self) -> &'static str {
        "edgeroute_control_aws_requests"
    }

    fn read_before_transmit(
        &self,
        _: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some((requests, _)) = &self.0 {
            let (service, operation) = operation(cfg);
            requests.with_label_values(&[service, operation]).inc();
        }
        Ok(())
    }

    fn read_after_transmit(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some((_, answers)) = &self.0 {
            let (service, operation) = operation(cfg);
            let status = format!("{}xx", context.response().status().as_u16() / 100);
            answers
                .with_label_values(&[service, operation, status.as_str()])
                .inc();
        }
        Ok(())
    }
}

pub struct AwsSource {
    cfg: AwsSourceConfig,
    sdk: SdkConfig,
    requests: AwsRequests,
    route53: aws_sdk_route53::Client,
    /// Where `DescribeGlobalClusters` may be asked besides the home region:
    /// the member regions of the last read, and regions an action names.
    /// The region that answered last comes first.
    cluster_regions: std::sync::Mutex<Vec<String>>,
    /// The history file, whose regions drained by removing their record
    /// stay in the table as draining.
    history_file: Option<std::path::PathBuf>,
    /// Each health check's last reading and when it was read: it stands in
    /// for a reading that fails, for [`HEALTH_MEMORY`].
    health: std::sync::Mutex<Readings>,
    /// Per health check: since when its checkers alone have reported it
    /// unhealthy, in readings in a row (see [`confirmed`]).
    checkers_down: std::sync::Mutex<HashMap<String, Instant>>,
    /// Records of the API name that name no region, each warned of once.
    foreign: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The records of the last read that listed them whole: they stand in
    /// for the source's reads while Route 53 cannot be listed.
    last_records: std::sync::Mutex<Option<Records>>,
}

/// The API name's records and the drains' kept records, by region.
#[derive(Clone)]
struct Records {
    records: BTreeMap<String, Vec<ResourceRecordSet>>,
    kept: BTreeMap<String, ResourceRecordSet>,
}

/// Health check → its last reading, and when it was read.
type Readings = HashMap<String, (Verdict, Instant)>;

/// What a region's health checks say (see `region_healthy`).
#[derive(Debug, Default)]
struct RegionHealth {
    healthy: Option<bool>,
    unread: bool,
    because: Option<String>,
}

impl RegionHealth {
    /// The region `name` as the view shows it, with its Route 53 weight;
    /// its replication lag is read later.
    fn view(self, name: String, weight: Option<u32>) -> RegionView {
        RegionView {
            name,
            weight,
            healthy: self.healthy,
            replication_lag_ms: None,
            health_unread: self.unread,
            unhealthy_because: self.because,
        }
    }
}

/// A health check's reading: what found it unhealthy, if anything did.
#[derive(Debug, Clone, PartialEq)]
struct Verdict {
    because: Option<String>,
    /// Unhealthy by its checkers' last reports alone: the
    /// `HealthCheckStatus` metric, Route 53's own verdict after its
    /// failure threshold, says healthy or was not read.
    checkers_only: bool,
}

/// How long a health check's checkers must report it unhealthy, while its
/// metric does not, before the region counts as down. Each checker's
/// report is its last request's result, before Route 53's failure
/// threshold (3 requests in a row by default): one failed round of
/// requests is no failed check.
const CHECKERS_CONFIRM: Duration = Duration::from_secs(20);

/// `verdict` as it counts at `now`: unhealthy by the checkers alone only
/// once they have said so since `since` for [`CHECKERS_CONFIRM`] (`since`
/// is kept across readings: set by the first such reading, cleared by
/// any other).
fn confirmed(verdict: Verdict, since: &mut Option<Instant>, now: Instant) -> Verdict {
    if !verdict.checkers_only {
        *since = None;
        return verdict;
    }
    let first = *since.get_or_insert(now);
    if now.saturating_duration_since(first) >= CHECKERS_CONFIRM {
        verdict
    } else {
        Verdict {
            because: None,
            checkers_only: false,
        }
    }
}

/// What a health check's checkers last reported.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Checkers {
    succeeded: usize,
    reported: usize,
}

impl Checkers {
    /// Route 53's verdict: healthy while more than [`HEALTHY_SHARE`] of
    /// them report success.
    fn healthy(self) -> bool {
        self.succeeded as f64 / self.reported as f64 > HEALTHY_SHARE
    }
}

impl Verdict {
    /// A check's verdict from its checkers' reports and its newest
    /// `HealthCheckStatus` datapoint (time, minimum), either of which may
    /// be missing: unhealthy if one says so, and then which did.
    fn of(id: &str, checkers: Option<Checkers>, metric: Option<(SystemTime, f64)>) -> Self {
        let mut because = Vec::new();
        if let Some(c) = checkers.filter(|c| !c.healthy()) {
            because.push(format!(
                "{} of {} Route 53 checkers report success",
                c.succeeded, c.reported
            ));
        }
        let by_checkers = !because.is_empty();
        // (A value that is no number is no healthy one either.)
        if let Some((at, v)) = metric.filter(|(_, v)| v.is_nan() || *v < 1.0) {
            because.push(format!(
                "CloudWatch HealthCheckStatus minimum {v} in the minute from {}",
                humantime::format_rfc3339_seconds(at)
            ));
        }
        Self {
            checkers_only: by_checkers && because.len() == 1,
            because: (!because.is_empty())
                .then(|| format!("health check {id}: {}", because.join(", and "))),
        }
    }

    fn healthy(&self) -> bool {
        self.because.is_none()
    }
}

/// How long a health check's last reading stands in for failed reads
/// (throttling, a brief outage of the API): a region known down is not
/// shown active for that.
const HEALTH_MEMORY: Duration = Duration::from_secs(300);

impl AwsSource {
    /// For an error of a call that reached no endpoint: which endpoint it
    /// was, and the setting that names it.
    pub fn unreached_advice(&self, e: &AwsError) -> String {
        if !e.message.starts_with(UNREACHED) {
            return String::new();
        }
        match &self.cfg.endpoint_url {
            Some(url) => format!(" (the endpoint is source.endpoint_url, {url}: is it up?)"),
            None => " (the endpoint is AWS's own for the region: check this host's route to it)"
                .to_owned(),
        }
    }

    pub async fn new(
        cfg: &AwsSourceConfig,
        history_file: Option<&std::path::Path>,
        requests: AwsRequests,
    ) -> Self {
        let sdk = sdk_config(cfg.endpoint_url.as_deref(), &cfg.global_cluster_region).await;
        let route53 = aws_sdk_route53::Client::from_conf(
            aws_sdk_route53::config::Builder::from(&sdk)
                .region(Region::new(route53_region(&cfg.global_cluster_region)))
                .interceptor(requests.clone())
                .build(),
        );
        AwsSource {
            cfg: cfg.clone(),
            sdk,
            requests,
            route53,
            cluster_regions: std::sync::Mutex::new(Vec::new()),
            history_file: history_file.map(std::path::Path::to_path_buf),
            health: std::sync::Mutex::default(),
            checkers_down: std::sync::Mutex::default(),
            foreign: std::sync::Mutex::default(),
            last_records: std::sync::Mutex::default(),
        }
    }

    /// Also asks `region` for the global cluster (say, the target of an
    /// unplanned failover while the home region is down).
    pub fn hint_region(&self, region: &str) {
        let mut regions = self
            .cluster_regions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !regions.iter().any(|r| r == region) {
            regions.push(region.to_owned());
        }
    }

    fn rds(&self, region: &str) -> aws_sdk_rds::Client {
        aws_sdk_rds::Client::from_conf(
            aws_sdk_rds::config::Builder::from(&self.sdk)
                .region(Region::new(region.to_owned()))
                .interceptor(self.requests.clone())
                .build(),
        )
    }

    fn cloudwatch(&self, region: &str) -> aws_sdk_cloudwatch::Client {
        aws_sdk_cloudwatch::Client::from_conf(
            aws_sdk_cloudwatch::config::Builder::from(&self.sdk)
                .region(Region::new(region.to_owned()))
                .interceptor(self.requests.clone())
                .build(),
        )
    }

    /// Reads every API once and assembles the view, for the table. When
    /// Route 53's records cannot be listed (throttled, or its API down in
    /// us-east-1), the last ones listed stand in, with the error beside
    /// the view: the writer's moves, read from the global cluster, must
    /// still reach the proxies, or writes would go on to a demoted writer.
    /// The first read has none to stand in, and fails.
    pub async fn read(&self) -> Result<(TopologyView, Option<AwsError>), AwsError> {
        let (state, unlisted) = self.read_state(ReadFor::Table).await?;
        Ok((state.view, unlisted))
    }

    /// Reads every API once: the view, and what the actions act on (all
    /// of it read now: an action never starts from remembered records).
    pub async fn state(&self) -> Result<AwsState, AwsError> {
        Ok(self.read_state(ReadFor::Action).await?.0)
    }

    /// Reads every API once, as [`ReadFor`] says; for the table, the error
    /// of a list that failed (the last records listed standing in) is
    /// returned beside.
    async fn read_state(&self, purpose: ReadFor) -> Result<(AwsState, Option<AwsError>), AwsError> {
        let last = || self.last_records.lock().unwrap_or_else(|p| p.into_inner());
        let listed = async {
            Ok(Records {
                records: self.latency_records().await?,
                kept: self.kept_records().await?,
            })
        }
        .await;
        let (Records { records, kept }, unlisted) = match listed {
            Ok(now) => {
                *last() = Some(now.clone());
                (now, None)
            }
            Err(e) => match last().clone() {
                Some(before) if purpose == ReadFor::Table => (before, Some(e)),
                _ => return Err(e),
            },
        };
        let by = purpose.wait_until();
        let health = futures_util::future::join_all(
            records
                .iter()
                .map(|(region, rs)| self.region_healthy(region, rs, by)),
        );
        let (health, cluster) = tokio::join!(health, self.global_cluster());
        let mut regions = Vec::with_capacity(records.len());
        for ((region, rs), health) in records.iter().zip(health) {
            // Out of DNS only when every record of the region is.
            let weight = rs
                .iter()
                .filter_map(ResourceRecordSet::weight)
                .max()
                .map(|w| w.clamp(0, 255) as u32);
            regions.push(health.view(region.clone(), weight));
        }
        // A read that fails whole names the list's failure first.
        let whole = |e: AwsError| match &unlisted {
            Some(first) => AwsError {
                api: first.api,
                message: format!("{}; then {}: {}", first.message, e.api, e.message),
            },
            None => e,
        };
        let (members, failover) = cluster.map_err(whole)?;
        // What is read from here on waited on what came before.
        let by = purpose.wait_until();
        let writer_region = primary_of(&members, failover.as_ref()).ok_or_else(|| {
            whole(AwsError {
                api: "DescribeGlobalClusters",
                message: format!(
                    "global cluster {} has no writer member",
                    self.cfg.global_cluster_id
                ),
            })
        })?;
        // A region with no record gets no DNS traffic. The writer's region
        // (whose writes go on) and a region a drain removed (its records
        // kept in Route 53, or in the history file by an older version)
        // stay in the table as draining; other regions without a record
        // leave it. (Not every member: a secondary kept for recovery alone
        // is no region of the proxies, which would refuse the table.)
        let mut drained: Vec<String> = kept.keys().cloned().collect();
        match self
            .history_file
            .as_ref()
            .map(|p| crate::history::History::load(p))
        {
            Some(Ok(h)) => drained.extend(h.drained_records.into_keys()),
            Some(Err(e)) => {
                // Drained regions would leave the table: say why.
                tracing::warn!(error = %e, "cannot read the history file; regions it names as drained (by an older version) are out of the table until it can be read");
            }
            None => {}
        }
        for region in std::iter::once(writer_region.clone()).chain(drained) {
            if !regions.iter().any(|r| r.name == region) {
                // A drained region's health checks are those of its kept
                // records: out of DNS, its health still counts (a writer
                // move to it, the automation's view of a drained primary).
                let kept_records: Vec<ResourceRecordSet> = kept
                    .get(&region)
                    .and_then(|txt| crate::kept::records(txt).ok())
                    .into_iter()
                    .flatten()
                    .filter_map(|saved| saved.record().ok())
                    .collect();
                let health = self.region_healthy(&region, &kept_records, by).await;
                regions.push(health.view(region, Some(0)));
            }
        }
        if self.cfg.lag_metric {
            let secondaries: Vec<&Member> = members.iter().filter(|m| !m.writer).collect();
            let lags = futures_util::future::join_all(secondaries.iter().map(|m| {
                within(
                    by,
                    "GetMetricStatistics",
                    self.latest(
                        &m.region,
                        "AWS/RDS",
                        "AuroraGlobalDBReplicationLag",
                        "DBClusterIdentifier",
                        &m.cluster_id,
                        Statistic::Average,
                        LAG_MAX_AGE,
                    ),
                )
            }))
            .await;
            for (m, lag) in secondaries.into_iter().zip(lags) {
                let lag = lag.unwrap_or_else(|e| {
                    // Informational: unknown, as a missing datapoint is.
                    tracing::warn!(region = %m.region, error = %e, "cannot read the replication lag; it is unknown until it can be read");
                    None
                });
                if let Some(r) = regions.iter_mut().find(|r| r.name == m.region) {
                    r.replication_lag_ms = lag.map(|(_, v)| v.max(0.0).round() as u64);
                }
            }
        }
        let state = AwsState {
            view: TopologyView {
                primary_region: Some(writer_region),
                failover_in_progress: failover.is_some(),
                regions,
            },
            records,
            kept,
            members,
            failover,
            route53_unread: false,
        };
        Ok((state, unlisted))
    }

    /// What the health checks of a region's records say: unhealthy if one
    /// says so (and what found it so), healthy if the others do, unknown
    /// if none can be read; and whether one could not be read this time
    /// (its last reading stands for [`HEALTH_MEMORY`]). One check that
    /// cannot be read (deleted while its record still names it, its API
    /// down in us-east-1) must not hide the writer's moves.
    async fn region_healthy(
        &self,
        region: &str,
        records: &[ResourceRecordSet],
        by: Option<tokio::time::Instant>,
    ) -> RegionHealth {
        let mut ids: Vec<&str> = records
            .iter()
            .filter_map(ResourceRecordSet::health_check_id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        // A check is read by both calls when the metric is on: a wait that
        // runs out names both.
        let api = if self.cfg.health_metric {
            "GetHealthCheckStatus and GetMetricStatistics"
        } else {
            "GetHealthCheckStatus"
        };
        let readings = futures_util::future::join_all(
            ids.iter().map(|id| within(by, api, self.check_healthy(id))),
        )
        .await;
        let mut health = RegionHealth::default();
        let mut because = Vec::new();
        for (id, read) in ids.into_iter().zip(readings) {
            let reading = match read {
                Ok(h) => {
                    let h = {
                        let mut down = self
                            .checkers_down
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        let mut since = down.remove(id);
                        let h = confirmed(h, &mut since, Instant::now());
                        if let Some(since) = since {
                            down.insert(id.to_owned(), since);
                        }
                        h
                    };
                    self.remembered()
                        .insert(id.to_owned(), (h.clone(), std::time::Instant::now()));
                    Some(h)
                }
                Err(e) => {
                    health.unread = true;
                    let last = self
                        .remembered()
                        .get(id)
                        .filter(|(_, at)| at.elapsed() < HEALTH_MEMORY)
                        .map(|(h, at)| (h.clone(), at.elapsed()));
                    match &last {
                        Some((h, age)) => {
                            tracing::warn!(region, health_check = id, error = %e, last_reading = if h.healthy() { "healthy" } else { "unhealthy" }, age_s = age.as_secs(), "cannot read a health check of the region; its last reading stands")
                        }
                        None => {
                            tracing::warn!(region, health_check = id, error = %e, "cannot read a health check of the region; it counts as unknown until it can be read")
                        }
                    }
                    // What found it unhealthy then, and that it is no
                    // reading of now.
                    last.map(|(mut h, age)| {
                        h.because = h.because.map(|why| {
                            format!(
                                "{why} (last read {} s ago; it cannot be read now)",
                                age.as_secs()
                            )
                        });
                        h
                    })
                }
            };
            match reading {
                Some(Verdict {
                    because: Some(why), ..
                }) => {
                    health.healthy = Some(false);
                    because.push(why);
                }
                Some(Verdict { because: None, .. }) => {
                    health.healthy = health.healthy.or(Some(true));
                }
                None => {}
            }
        }
        health.because = (!because.is_empty()).then(|| because.join("; "));
        health
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, Readings> {
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn config(&self) -> &AwsSourceConfig {
        &self.cfg
    }

    /// Moves the writer to `target` (a member): a planned switchover (no
    /// data loss) or an unplanned failover that accepts losing the writes
    /// not yet replicated. Sent to the target's region, which answers when
    /// the writer's region does not.
    pub async fn move_writer(&self, target: &Member, planned: bool) -> Result<(), AwsError> {
        let rds = self.rds(&target.region);
        if planned {
            rds.switchover_global_cluster()
                .global_cluster_identifier(&self.cfg.global_cluster_id)
                .target_db_cluster_identifier(&target.arn)
                .send()
                .await
                .map_err(fail("SwitchoverGlobalCluster"))?;
        } else {
            rds.failover_global_cluster()
                .global_cluster_identifier(&self.cfg.global_cluster_id)
                .target_db_cluster_identifier(&target.arn)
                .allow_data_loss(true)
                .send()
                .await
                .map_err(fail("FailoverGlobalCluster"))?;
        }
        Ok(())
    }

    /// Changes to records of the API name, in one batch: Route 53 makes
    /// all of them or none.
    pub async fn change_records(
        &self,
        changes: Vec<(ChangeAction, ResourceRecordSet)>,
        comment: &str,
    ) -> Result<(), AwsError> {
        let invalid = |e: aws_sdk_route53::error::BuildError| AwsError {
            api: "ChangeResourceRecordSets",
            message: e.to_string(),
        };
        let changes = changes
            .into_iter()
            .map(|(action, record)| {
                Change::builder()
                    .action(action)
                    .resource_record_set(record)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let batch = ChangeBatch::builder()
            .comment(comment)
            .set_changes(Some(changes))
            .build()
            .map_err(invalid)?;
        self.route53
            .change_resource_record_sets()
            .hosted_zone_id(&self.cfg.hosted_zone_id)
            .change_batch(batch)
            .send()
            .await
            .map_err(fail("ChangeResourceRecordSets"))?;
        Ok(())
    }

    /// The API name's records by region: a region may have several (an A
    /// and an AAAA record, say).
    async fn latency_records(&self) -> Result<BTreeMap<String, Vec<ResourceRecordSet>>, AwsError> {
        let wanted = format!("{}.", self.cfg.record_name.trim_end_matches('.'));
        let found = self
            .records_named(&wanted, |r| {
                let region = region_of(r);
                if region.is_none() && r.set_identifier().is_some() {
                    self.warn_foreign(r);
                }
                region
            })
            .await?;
        if found.is_empty() {
            return Err(AwsError {
                api: "ListResourceRecordSets",
                message: format!(
                    "no latency records named {} in hosted zone {}",
                    self.cfg.record_name, self.cfg.hosted_zone_id
                ),
            });
        }
        Ok(found)
    }

    /// Warns, once per record, of a record of the API name with a set
    /// identifier that is no region's.
    fn warn_foreign(&self, r: &ResourceRecordSet) {
        let id = format!(
            "{} {}",
            r.r#type().as_str(),
            r.set_identifier().unwrap_or("")
        );
        let mut foreign = self.foreign.lock().unwrap_or_else(|p| p.into_inner());
        if foreign.insert(id.clone()) {
            tracing::warn!(
                record = %id,
                name = %self.cfg.record_name,
                "a record of the API name names no region (not an A, AAAA or CNAME record, or its set identifier is no region name such as eu-west-1); it is left out of the table"
            );
        }
    }

    /// The records kept by drains (see [`crate::kept`]), by region.
    async fn kept_records(&self) -> Result<BTreeMap<String, ResourceRecordSet>, AwsError> {
        let found = self
            .records_named(&crate::kept::name(&self.cfg.record_name), |r| {
                (*r.r#type() == RrType::Txt)
                    .then(|| r.set_identifier().map(str::to_owned))
                    .flatten()
            })
            .await?;
        Ok(found
            .into_iter()
            .filter_map(|(region, mut rs)| Some((region, rs.pop()?)))
            .collect())
    }

    /// The records of the zone named `wanted` (with its final dot), by the
    /// key `key` gives them (records without one are left out). Route 53
    /// lists a zone in name order from the name asked for, so the first
    /// other name ends the list.
    async fn records_named(
        &self,
        wanted: &str,
        key: impl Fn(&ResourceRecordSet) -> Option<String>,
    ) -> Result<BTreeMap<String, Vec<ResourceRecordSet>>, AwsError> {
        let mut found: BTreeMap<String, Vec<ResourceRecordSet>> = BTreeMap::new();
        // Where the next page starts: a name, and within it a type and a
        // set identifier (Route 53 takes an identifier only with its type).
        type Start = (String, Option<RrType>, Option<String>);
        let mut start: Option<Start> = Some((wanted.to_owned(), None, None));
        // Bounded: a zone is paged at most this many times per read.
        for _ in 0..100 {
            let Some((name, rr_type, identifier)) = start.take() else {
                break;
            };
            let out = self
                .route53
                .list_resource_record_sets()
                .hosted_zone_id(&self.cfg.hosted_zone_id)
                .start_record_name(&name)
                .set_start_record_type(rr_type.clone())
                .set_start_record_identifier(identifier.clone())
                .send()
                .await
                .map_err(fail("ListResourceRecordSets"))?;
            let mut past = false;
            for rrset in out.resource_record_sets() {
                if !rrset.name().eq_ignore_ascii_case(wanted) {
                    past = true;
                    break;
                }
                if let Some(key) = key(rrset) {
                    found.entry(key).or_default().push(rrset.clone());
                }
            }
            if past || !out.is_truncated() {
                break;
            }
            let next = out.next_record_name().map(|n| {
                (
                    n.to_owned(),
                    out.next_record_type().cloned(),
                    out.next_record_identifier().map(str::to_owned),
                )
            });
            // A page that does not advance would be asked for again and
            // again: the list cannot be read whole.
            if next.as_ref() == Some(&(name, rr_type, identifier)) {
                return Err(AwsError {
                    api: "ListResourceRecordSets",
                    message: format!(
                        "hosted zone {} lists the records named {wanted} without getting past them (more than one page of them); the list cannot be read whole",
                        self.cfg.hosted_zone_id
                    ),
                });
            }
            start = next;
        }
        if start.is_some() {
            return Err(AwsError {
                api: "ListResourceRecordSets",
                message: format!(
                    "hosted zone {} has more than 100 pages of records named {wanted}; they are not read in part",
                    self.cfg.hosted_zone_id
                ),
            });
        }
        Ok(found)
    }

    /// A health check's verdict: its checkers' reports, and with
    /// `health_metric` its `HealthCheckStatus` metric too (unhealthy if
    /// either says so). A calculated check, or one whose reports cannot be
    /// read, is judged by its metric alone when that has a datapoint
    /// (Route 53 has no checkers' reports of a calculated check).
    async fn check_healthy(&self, id: &str) -> Result<Verdict, AwsError> {
        let reports = self
            .route53
            .get_health_check_status()
            .health_check_id(id)
            .send()
            .await
            .map_err(fail("GetHealthCheckStatus"));
        let by_checkers = reports.and_then(|out| {
            let statuses = out
                .health_check_observations()
                .iter()
                .map(|o| o.status_report().and_then(|r| r.status()));
            checkers(statuses).ok_or_else(|| AwsError {
                api: "GetHealthCheckStatus",
                message: format!(
                    "no checker reports on health check {id} (a calculated check has none)"
                ),
            })
        });
        if !self.cfg.health_metric {
            return by_checkers.map(|c| Verdict::of(id, Some(c), None));
        }
        let metric = self
            .latest(
                route53_region(&self.cfg.global_cluster_region),
                "AWS/Route53",
                "HealthCheckStatus",
                "HealthCheckId",
                id,
                Statistic::Minimum,
                Duration::from_secs(600),
            )
            .await;
        match (by_checkers, metric) {
            (Ok(c), metric) => Ok(Verdict::of(id, Some(c), metric?)),
            (Err(_), Ok(Some(point))) => Ok(Verdict::of(id, None, Some(point))),
            (Err(e), _) => Err(e),
        }
    }

    /// The members, and the writer change under way if any.
    pub async fn global_cluster(&self) -> Result<(Vec<Member>, Option<FailoverInfo>), AwsError> {
        // The global cluster answers in every member region, and its home
        // may be the region that is down: the region that answered last
        // first, then the home region, then the others.
        let mut regions = self
            .cluster_regions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let home = self.cfg.global_cluster_region.clone();
        if !regions.contains(&home) {
            regions.insert(usize::from(!regions.is_empty()), home);
        }
        let mut first_error = None;
        for region in &regions {
            let asked = tokio::time::timeout(GLOBAL_CLUSTER_WAIT, self.global_cluster_in(region));
            let answer = asked.await.unwrap_or_else(|_| {
                Err(AwsError {
                    api: "DescribeGlobalClusters",
                    message: format!(
                        "RDS in {region} did not answer within {}s",
                        GLOBAL_CLUSTER_WAIT.as_secs()
                    ),
                })
            });
            match answer {
                Ok(found) => {
                    let mut known: Vec<String> = vec![region.clone()];
                    for r in found.0.iter().map(|m| &m.region).chain(&regions) {
                        if !known.contains(r) {
                            known.push(r.clone());
                        }
                    }
                    *self
                        .cluster_regions
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = known;
                    return Ok(found);
                }
                Err(e) => {
                    if region != &self.cfg.global_cluster_region {
                        tracing::debug!(region = %region, error = %e, "DescribeGlobalClusters failed here too");
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| AwsError {
            api: "DescribeGlobalClusters",
            message: "no region to ask".into(),
        }))
    }

    async fn global_cluster_in(
        &self,
        region: &str,
    ) -> Result<(Vec<Member>, Option<FailoverInfo>), AwsError> {
        let out = self
            .rds(region)
            .describe_global_clusters()
            .global_cluster_identifier(&self.cfg.global_cluster_id)
            .send()
            .await
            .map_err(fail("DescribeGlobalClusters"))?;
        let id = self.cfg.global_cluster_id.to_ascii_lowercase();
        let gc = out
            .global_clusters()
            .iter()
            .find(|g| {
                g.global_cluster_identifier()
                    .is_some_and(|i| i.eq_ignore_ascii_case(&id))
            })
            .ok_or_else(|| AwsError {
                api: "DescribeGlobalClusters",
                message: format!(
                    "no global cluster {} in {region}",
                    self.cfg.global_cluster_id
                ),
            })?;
        let members = gc
            .global_cluster_members()
            .iter()
            .filter_map(|m| {
                let arn = m.db_cluster_arn()?;
                let (region, cluster_id) = parse_arn(arn)?;
                Some(Member {
                    region,
                    arn: arn.to_owned(),
                    cluster_id,
                    writer: m.is_writer() == Some(true),
                })
            })
            .collect();
        let failover = gc.failover_state().and_then(|f| {
            Some(FailoverInfo {
                status: f.status()?.as_str().to_owned(),
                from_region: f.from_db_cluster_arn().and_then(parse_arn).map(|a| a.0),
                to_region: f.to_db_cluster_arn().and_then(parse_arn).map(|a| a.0),
                data_loss_allowed: f.is_data_loss_allowed().unwrap_or(false),
            })
        });
        Ok((members, failover))
    }

    /// The most recent datapoint of a metric within `max_age`: its time
    /// and value.
    #[allow(clippy::too_many_arguments)]
    async fn latest(
        &self,
        region: &str,
        namespace: &str,
        metric: &str,
        dimension: &str,
        value: &str,
        stat: Statistic,
        max_age: Duration,
    ) -> Result<Option<(SystemTime, f64)>, AwsError> {
        let now = SystemTime::now();
        let out = self
            .cloudwatch(region)
            .get_metric_statistics()
            .namespace(namespace)
            .metric_name(metric)
            .dimensions(Dimension::builder().name(dimension).value(value).build())
            .start_time((now - max_age).into())
            .end_time((now + Duration::from_secs(60)).into())
            .period(60)
            .statistics(stat.clone())
            .send()
            .await
            .map_err(fail("GetMetricStatistics"))?;
        let latest = out
            .datapoints()
            .iter()
            .filter_map(|d| {
                let v = match stat {
                    Statistic::Minimum => d.minimum(),
                    Statistic::Maximum => d.maximum(),
                    _ => d.average(),
                }?;
                Some((SystemTime::try_from(*d.timestamp()?).ok()?, v))
            })
            .max_by_key(|(at, _)| *at);
        Ok(latest)
    }
}

/// Where Route 53's API and its health checks' CloudWatch metrics live in
/// the partition of `region`: us-east-1 in AWS's commercial regions, and
/// the partition's own in China and GovCloud.
fn route53_region(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "cn-northwest-1"
    } else if region.starts_with("us-gov-") {
        "us-gov-west-1"
    } else {
        "us-east-1"
    }
}

/// `read`, unless `by` comes first: then a failure of `api` that says so.
async fn within<T>(
    by: Option<tokio::time::Instant>,
    api: &'static str,
    read: impl std::future::Future<Output = Result<T, AwsError>>,
) -> Result<T, AwsError> {
    let Some(by) = by else {
        return read.await;
    };
    tokio::time::timeout_at(by, read).await.unwrap_or_else(|_| {
        Err(AwsError {
            api,
            message: format!(
                "no answer within {}s; unread this time",
                HEALTH_AND_LAG_WAIT.as_secs()
            ),
        })
    })
}

/// Everything one read saw: the view the table is built from, and what the
/// runbook actions act on.
#[derive(Debug, Clone)]
pub struct AwsState {
    pub view: TopologyView,
    /// The API name's records, by region.
    pub records: BTreeMap<String, Vec<ResourceRecordSet>>,
    /// The TXT records that keep drained regions' records, by region (see
    /// [`crate::kept`]).
    pub kept: BTreeMap<String, ResourceRecordSet>,
    pub members: Vec<Member>,
    /// The writer change AWS reports under way.
    pub failover: Option<FailoverInfo>,
    /// Route 53 could not be read: the view is the global cluster's
    /// alone ([`crate::actions::cluster_alone`]), its health, weights and
    /// lags unknown.
    pub route53_unread: bool,
}

impl AwsState {
    pub fn writer(&self) -> Option<&Member> {
        self.members.iter().find(|m| m.writer)
    }

    pub fn member(&self, region: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.region == region)
    }
}

/// The region a record of the API name routes traffic to: an A, AAAA or
/// CNAME record's latency region, else its set identifier (weighted
/// records name their region there) when that has the form of an AWS
/// region's name. A weighted record named otherwise (`canary`, `blue`) is
/// some other use of the name: taken for a region, it would put a region
/// in every table that no proxy knows, and every proxy would refuse them.
fn region_of(r: &ResourceRecordSet) -> Option<String> {
    if !matches!(r.r#type(), RrType::A | RrType::Aaaa | RrType::Cname) {
        return None;
    }
    match r.region() {
        Some(latency) => Some(latency.as_str().to_owned()),
        None => r
            .set_identifier()
            .filter(|id| aws_region_name(id))
            .map(str::to_owned),
    }
    .filter(|name| edgeroute_config::valid_region_name(name))
}

/// Whether `name` has the form of an AWS region's name: a two-letter
/// area, words, and a number (`eu-west-1`, `us-gov-west-1`).
fn aws_region_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('-').collect();
    let [area, words @ .., number] = parts.as_slice() else {
        return false;
    };
    area.len() == 2
        && area.bytes().all(|b| b.is_ascii_lowercase())
        && !words.is_empty()
        && words
            .iter()
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
        && !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit())
}

/// A record as kept while its region is drained, to put it back exactly.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedRecord {
    pub name: String,
    #[serde(rename = "type")]
    pub rr_type: String,
    pub set_identifier: Option<String>,
    pub region: Option<String>,
    pub health_check_id: Option<String>,
    pub ttl: Option<i64>,
    #[serde(default)]
    pub values: Vec<String>,
    pub alias: Option<SavedAlias>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedAlias {
    pub hosted_zone_id: String,
    pub dns_name: String,
    pub evaluate_target_health: bool,
}

impl SavedRecord {
    pub fn of(r: &ResourceRecordSet) -> SavedRecord {
        SavedRecord {
            name: r.name().to_owned(),
            rr_type: r.r#type().as_str().to_owned(),
            set_identifier: r.set_identifier().map(str::to_owned),
            region: r.region().map(|g| g.as_str().to_owned()),
            health_check_id: r.health_check_id().map(str::to_owned),
            ttl: r.ttl(),
            values: r
                .resource_records()
                .iter()
                .map(|v| v.value().to_owned())
                .collect(),
            alias: r.alias_target().map(|a| SavedAlias {
                hosted_zone_id: a.hosted_zone_id().to_owned(),
                dns_name: a.dns_name().to_owned(),
                evaluate_target_health: a.evaluate_target_health(),
            }),
        }
    }

    pub fn record(&self) -> Result<ResourceRecordSet, String> {
        use aws_sdk_route53::types::{
            AliasTarget, ResourceRecord, ResourceRecordSetRegion, RrType,
        };
        let values = self
            .values
            .iter()
            .map(|v| ResourceRecord::builder().value(v).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let alias = match &self.alias {
            Some(a) => Some(
                AliasTarget::builder()
                    .hosted_zone_id(&a.hosted_zone_id)
                    .dns_name(&a.dns_name)
                    .evaluate_target_health(a.evaluate_target_health)
                    .build()
                    .map_err(|e| e.to_string())?,
            ),
            None => None,
        };
        ResourceRecordSet::builder()
            .name(&self.name)
            .r#type(RrType::from(self.rr_type.as_str()))
            .set_set_identifier(self.set_identifier.clone())
            .set_region(self.region.as_deref().map(ResourceRecordSetRegion::from))
            .set_health_check_id(self.health_check_id.clone())
            .set_ttl(self.ttl)
            .set_resource_records((!values.is_empty()).then_some(values))
            .set_alias_target(alias)
            .build()
            .map_err(|e| e.to_string())
    }
}

/// The region of the writer member, if there is one.
pub fn writer_region(members: &[Member]) -> Option<String> {
    members.iter().find(|m| m.writer).map(|m| m.region.clone())
}

/// The table's primary region: the writer's, or while a writer change
/// runs with no member the writer (as a global cluster may show in the
/// middle of one), the region it moves from (else to), with writes held
/// by the change under way. `None`: no writer, and no change to explain it.
fn primary_of(members: &[Member], failover: Option<&FailoverInfo>) -> Option<String> {
    writer_region(members).or_else(|| {
        let f = failover?;
        f.from_region.clone().or_else(|| f.to_region.clone())
    })
}

/// A member cluster of the global cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub region: String,
    pub arn: String,
    pub cluster_id: String,
    pub writer: bool,
}

/// The global cluster's `FailoverState`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverInfo {
    /// `switching-over`, `failing-over` or `cancelling`.
    pub status: String,
    pub from_region: Option<String>,
    pub to_region: Option<String>,
    pub data_loss_allowed: bool,
}

impl std::fmt::Display for FailoverInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = |r: &Option<String>| r.clone().unwrap_or_else(|| "?".into());
        write!(
            f,
            "{} from {} to {}",
            self.status,
            r(&self.from_region),
            r(&self.to_region)
        )
    }
}

/// `arn:aws:rds:REGION:ACCOUNT:cluster:NAME` → (region, name).
fn parse_arn(arn: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = arn.split(':').collect();
    (parts.len() >= 7 && parts[2] == "rds").then(|| (parts[3].to_owned(), parts[6].to_owned()))
}

/// What a health check's checkers report, from each one's last status;
/// `None` without a report (a calculated check has none).
fn checkers<'a>(statuses: impl ExactSizeIterator<Item = Option<&'a str>>) -> Option<Checkers> {
    let reported = statuses.len();
    let succeeded = statuses
        .filter(|s| s.is_some_and(|s| s.starts_with("Success")))
        .count();
    (reported > 0).then_some(Checkers {
        succeeded,
        reported,
    })
}

#[cfg(test)]
mod tests {
    use aws_sdk_rds::error::{ConnectorError, SdkError};
    use aws_sdk_rds::operation::describe_global_clusters::DescribeGlobalClustersError;

    /// A call that failed before it reached AWS, for `cause`.
    fn unsent(cause: ConnectorError) -> super::AwsError {
        let e: SdkError<DescribeGlobalClustersError> = SdkError::dispatch_failure(cause);
        super::fail("DescribeGlobalClusters")(e)
    }

    #[test]
    fn missing_credentials_say_where_they_are_looked_for_and_no_dump_of_the_sdk() {
        let e = unsent(ConnectorError::other(
            Box::new(
                aws_credential_types::provider::error::CredentialsError::not_loaded(
                    "no providers in chain provided credentials",
                ),
            ),
            None,
        ));
        assert!(
            e.message
                .contains("no providers in chain provided credentials"),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("AWS credentials could not be loaded")
                && e.message.contains("AWS_PROFILE"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("DispatchFailure"), "{}", e.message);
        assert!(!e.message.starts_with(super::UNREACHED), "{}", e.message);

        let e = unsent(ConnectorError::io(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        ))));
        assert!(e.message.contains("refused"), "{}", e.message);
        assert!(e.message.starts_with(super::UNREACHED), "{}", e.message);
        assert!(!e.message.contains("credentials"), "{}", e.message);
        assert!(!e.message.contains("DispatchFailure"), "{}", e.message);
    }

    #[test]
    fn no_checker_report_is_no_verdict() {
        let of = |statuses: &[Option<&'static str>]| {
            super::checkers(statuses.iter().copied()).map(super::Checkers::healthy)
        };
        assert_eq!(of(&[]), None, "a calculated check is judged otherwise");
        let success = Some("Success: HTTP Status Code 200, OK");
        let failure = Some("Failure: Connection timed out.");
        // 1 of 5 (20%) is more than 18%: healthy; 1 of 6 is not.
        assert_eq!(
            of(&[success, failure, failure, failure, failure]),
            Some(true)
        );
        assert_eq!(
            of(&[success, failure, failure, failure, failure, None]),
            Some(false)
        );
    }

    #[test]
    fn a_verdict_names_each_reading_that_found_the_check_unhealthy() {
        use super::{Checkers, Verdict};
        use std::time::{Duration, UNIX_EPOCH};
        let checkers = |succeeded| {
            Some(Checkers {
                succeeded,
                reported: 8,
            })
        };
        let at = UNIX_EPOCH + Duration::from_secs(1_790_000_040);
        let healthy = Verdict::of("hc-1", checkers(8), Some((at, 1.0)));
        assert_eq!(
            healthy,
            Verdict {
                because: None,
                checkers_only: false
            }
        );
        assert!(healthy.healthy());
        // No datapoint, or no checker report: the other reading decides.
        assert!(
            Verdict::of("hc-1", checkers(2), None).healthy(),
            "2 of 8 is 25%"
        );
        assert!(Verdict::of("hc-1", None, Some((at, 1.0))).healthy());

        let by_checkers = Verdict::of("hc-1", checkers(1), Some((at, 1.0)));
        assert!(!by_checkers.healthy());
        assert!(by_checkers.checkers_only);
        assert!(Verdict::of("hc-1", checkers(1), None).checkers_only);
        assert_eq!(
            by_checkers.because.as_deref(),
            Some("health check hc-1: 1 of 8 Route 53 checkers report success")
        );
        let by_metric = Verdict::of("hc-1", checkers(8), Some((at, 0.0)));
        assert!(!by_metric.healthy());
        assert_eq!(
            by_metric.because.as_deref(),
            Some(
                "health check hc-1: CloudWatch HealthCheckStatus minimum 0 in the minute from 2026-09-21T14:14:00Z"
            )
        );
        assert!(!Verdict::of("hc-1", checkers(8), Some((at, f64::NAN))).healthy());
        assert!(!Verdict::of("hc-1", checkers(8), Some((at, 0.0))).checkers_only);
        let by_both = Verdict::of("hc-1", checkers(0), Some((at, 0.0)));
        assert!(!by_both.checkers_only);
        assert_eq!(
            by_both.because.as_deref(),
            Some(
                "health check hc-1: 0 of 8 Route 53 checkers report success, and CloudWatch HealthCheckStatus minimum 0 in the minute from 2026-09-21T14:14:00Z"
            )
        );
    }

    /// The checkers' reports are each checker's last request, before Route
    /// 53's failure threshold: alone, they count once they have held for
    /// `CHECKERS_CONFIRM`; the metric, Route 53's verdict, counts at once.
    #[test]
    fn the_checkers_alone_count_once_they_have_held() {
        use super::{CHECKERS_CONFIRM, Checkers, Verdict, confirmed};
        use std::time::{Duration, Instant, UNIX_EPOCH};
        let failing = Some(Checkers {
            succeeded: 0,
            reported: 8,
        });
        let up = (UNIX_EPOCH + Duration::from_secs(1_790_000_040), 1.0);
        let down = (up.0, 0.0);
        let t0 = Instant::now();
        let mut since = None;
        let at = |secs: u64, metric, since: &mut Option<Instant>| {
            confirmed(
                Verdict::of("hc-1", failing, Some(metric)),
                since,
                t0 + Duration::from_secs(secs),
            )
            .healthy()
        };
        assert!(at(0, up, &mut since), "one round of failed requests");
        assert!(at(CHECKERS_CONFIRM.as_secs() - 1, up, &mut since));
        assert!(!at(CHECKERS_CONFIRM.as_secs(), up, &mut since), "held");
        // A healthy reading ends the run; the next starts anew.
        let healthy = Verdict::of("hc-1", None, Some(up));
        assert!(confirmed(healthy, &mut since, t0 + CHECKERS_CONFIRM).healthy());
        assert!(at(CHECKERS_CONFIRM.as_secs() + 1, up, &mut since));
        // The metric agreeing counts at once.
        let mut since = None;
        assert!(!at(0, down, &mut since));
        assert_eq!(since, None);
    }

    #[test]
    fn a_throttled_call_is_told_from_other_refusals() {
        let e = |message: &str| super::AwsError {
            api: "ChangeResourceRecordSets",
            message: message.into(),
        };
        assert!(e("Throttling: Rate exceeded").throttled());
        assert!(e("PriorRequestNotComplete: The request was rejected").throttled());
        assert!(
            e("Throttling: x")
                .advice()
                .contains("run the command again")
        );
        assert!(!e("InvalidChangeBatch: Throttling is not the code").throttled());
        assert!(!e("ThrottlingSomething: x").throttled());
        assert_eq!(e("InvalidChangeBatch: x").advice(), "");
        // A fault on AWS's side is neither a throttle nor a refusal.
        let fault = e("ServiceUnavailable: the service is unavailable");
        assert!(fault.server_fault() && !fault.throttled());
        assert!(!e("InvalidChangeBatch: x").server_fault());
    }

    #[test]
    fn only_records_that_route_to_a_named_region_are_regions() {
        use aws_sdk_route53::types::{ResourceRecordSet, ResourceRecordSetRegion, RrType};
        let record = |kind: RrType, id: &str, latency: Option<&str>| {
            ResourceRecordSet::builder()
                .name("api.example.com.")
                .r#type(kind)
                .set_identifier(id)
                .set_region(latency.map(ResourceRecordSetRegion::from))
                .set_weight(latency.is_none().then_some(10))
                .build()
                .unwrap()
        };
        let region = |r: ResourceRecordSet| super::region_of(&r);
        assert_eq!(
            region(record(RrType::A, "any", Some("eu-west-1"))).as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(
            region(record(RrType::Aaaa, "eu-west-1", None)).as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(
            region(record(RrType::Cname, "ap-southeast-1", None)).as_deref(),
            Some("ap-southeast-1")
        );
        assert_eq!(
            region(record(RrType::A, "us-gov-west-1", None)).as_deref(),
            Some("us-gov-west-1")
        );
        for other in [
            "Blue",
            "blue green",
            "canary",
            "blue-green",
            "prod-1",
            "legacy-eu-west-1",
            "eu-west-",
            "eu--1",
            "eu-west-1a",
        ] {
            assert_eq!(region(record(RrType::A, other, None)), None, "{other}");
        }
        assert_eq!(region(record(RrType::Txt, "eu-west-1", None)), None);
        assert_eq!(region(record(RrType::Mx, "eu-west-1", None)), None);
    }

    #[test]
    fn a_kept_record_rebuilds_the_same_record() {
        use aws_sdk_route53::types::{
            AliasTarget, ResourceRecordSet, ResourceRecordSetRegion, RrType,
        };
        let record = ResourceRecordSet::builder()
            .name("api.example.com.")
            .r#type(RrType::A)
            .set_identifier("eu-west-1")
            .region(ResourceRecordSetRegion::EuWest1)
            .health_check_id("hc-1")
            .alias_target(
                AliasTarget::builder()
                    .hosted_zone_id("Z35SXDOTRQ7X7K")
                    .dns_name("alb.example.com")
                    .evaluate_target_health(true)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let kept = super::SavedRecord::of(&record);
        let json = serde_json::to_string(&kept).unwrap();
        let back: super::SavedRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back.record().unwrap(), record);
    }

    #[test]
    fn with_no_writer_the_primary_is_where_a_running_change_moves_from() {
        let member = |region: &str, writer| super::Member {
            region: region.into(),
            arn: format!("arn:aws:rds:{region}:123456789012:cluster:c-{region}"),
            cluster_id: format!("c-{region}"),
            writer,
        };
        let change = |from: Option<&str>, to: Option<&str>| super::FailoverInfo {
            status: "failing-over".into(),
            from_region: from.map(Into::into),
            to_region: to.map(Into::into),
            data_loss_allowed: true,
        };
        let with_writer = [member("us-east-1", true), member("eu-west-1", false)];
        let without = [member("us-east-1", false), member("eu-west-1", false)];
        let moving = change(Some("us-east-1"), Some("eu-west-1"));
        let primary = |members: &[super::Member], f: Option<&super::FailoverInfo>| {
            super::primary_of(members, f)
        };
        assert_eq!(primary(&with_writer, None).as_deref(), Some("us-east-1"));
        assert_eq!(
            primary(&with_writer, Some(&change(Some("eu-west-1"), None))).as_deref(),
            Some("us-east-1"),
            "the writer, when there is one"
        );
        assert_eq!(
            primary(&without, Some(&moving)).as_deref(),
            Some("us-east-1")
        );
        assert_eq!(
            primary(&without, Some(&change(None, Some("eu-west-1")))).as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(primary(&without, Some(&change(None, None))), None);
        assert_eq!(primary(&without, None), None);
    }

    #[test]
    fn route_53_is_asked_in_its_partition() {
        for (home, route53) in [
            ("eu-west-1", "us-east-1"),
            ("us-east-1", "us-east-1"),
            ("cn-north-1", "cn-northwest-1"),
            ("us-gov-east-1", "us-gov-west-1"),
        ] {
            assert_eq!(super::route53_region(home), route53, "{home}");
        }
    }

    #[test]
    fn cluster_arns_name_their_region() {
        assert_eq!(
            super::parse_arn("arn:aws:rds:eu-west-1:123456789012:cluster:secondary-eu"),
            Some(("eu-west-1".into(), "secondary-eu".into()))
        );
        assert_eq!(super::parse_arn("not-an-arn"), None);
    }
}

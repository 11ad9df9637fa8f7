//! moto in server mode on a loopback port, started through our launcher
//! (`tests/moto/launcher.py`), and the three-region fixture the control
//! plane mirrors, created with real SDK calls over HTTP.

use crate::proxy::free_addr;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_route53::types::{
    AliasTarget, Change, ChangeAction, ChangeBatch, HealthCheckConfig, HealthCheckRegion,
    HealthCheckType, ResourceRecordSet, ResourceRecordSetRegion, RrType,
};
use aws_smithy_http_client::tls;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-southeast-1"];
pub const RECORD: &str = "api.example.com";
pub const GLOBAL_CLUSTER: &str = "global-database";
/// How long a switchover or failover runs in the emulator.
pub const FAILOVER_SECONDS: &str = "1.0";

/// The Python that has the pinned moto: `MOTO_PYTHON`, else the virtual
/// environment `scripts/emulator.sh` makes, else `python3`.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("MOTO_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/moto-venv/bin/python");
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

pub struct Moto {
    child: Child,
    pub endpoint: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// Why the emulator did not start.
#[derive(Debug)]
pub enum StartFailure {
    /// The launcher exited (its port taken, moto missing).
    Exited(String),
    /// Anything else: it cannot be run, or was not up in time.
    Other(String),
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartFailure::Exited(why) | StartFailure::Other(why) => f.write_str(why),
        }
    }
}

impl Moto {
    /// On a free loopback port. A port free when picked can be taken
    /// before the launcher binds it (by another test picking at the same
    /// time): a launcher that exits is started again on another, twice
    /// at most.
    pub async fn start() -> Moto {
        let mut tries = 0;
        loop {
            match Moto::try_start_at(free_addr(), FAILOVER_SECONDS).await {
                Ok(moto) => return moto,
                Err(StartFailure::Exited(_)) if tries < 2 => tries += 1,
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// On `addr` (loopback), with writer changes running `failover_seconds`.
    pub async fn start_at(addr: std::net::SocketAddr, failover_seconds: &str) -> Moto {
        Moto::try_start_at(addr, failover_seconds)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Moto::start_at`], or why it could not start: the Python cannot
    /// be run, the launcher exited (the port is taken, moto is missing),
    /// or it was not up within 60 s. Ready once the launcher started here
    /// answers on `addr` (not anything else listening there), and nothing
    /// else is asked of `addr` before.
    pub async fn try_start_at(
        addr: std::net::SocketAddr,
        failover_seconds: &str,
    ) -> Result<Moto, StartFailure> {
        let other = StartFailure::Other;
        let dir =
            tempfile::tempdir().map_err(|e| other(format!("cannot make a temp folder: {e}")))?;
        let log = dir.path().join("moto.log");
        let out = std::fs::File::create(&log)
            .map_err(|e| other(format!("cannot write the emulator's log: {e}")))?;
        let err = out
            .try_clone()
            .map_err(|e| other(format!("cannot write the emulator's log: {e}")))?;
        let launcher = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("moto/launcher.py");
        let python = python();
        let child = Command::new(&python)
            .arg(&launcher)
            .arg("--host")
            .arg(addr.ip().to_string())
            .arg("--port")
            .arg(addr.port().to_string())
            .env("EDGEROUTE_MOTO_FAILOVER_SECONDS", failover_seconds)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| {
                other(format!(
                    "cannot run {} ({e}): set MOTO_PYTHON to the Python that has moto (scripts/emulator.sh installs it and prints its path)",
                    python.display()
                ))
            })?;
        let mut moto = Moto {
            child,
            endpoint: format!("http://{addr}"),
            log,
            _dir: dir,
        };
        let ours = moto.child.id().to_string();
        let start = Instant::now();
        loop {
            match moto.child.try_wait() {
                Ok(Some(status)) => {
                    return Err(StartFailure::Exited(format!(
                        "the AWS API emulator exited with {status} (is {addr} taken, or moto missing from {}?):\n{}",
                        python.display(),
                        moto.log()
                    )));
                }
                Ok(None) => {}
                Err(e) => return Err(other(format!("cannot watch the AWS API emulator: {e}"))),
            }
            if let Ok(r) = crate::client()
                .get(format!("{}/edgeroute/pid", moto.endpoint))
                .send()
                .await
                && let Ok(pid) = r.text().await
                && pid.trim() == ours
            {
                return Ok(moto);
            }
            if start.elapsed() > Duration::from_secs(60) {
                return Err(other(format!(
                    "the AWS API emulator was not up after 60 s (MOTO_PYTHON must run Python itself, or exec it, so that the launcher is the process started):\n{}",
                    moto.log()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Environment for a process that talks to this emulator.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    pub async fn sdk(&self, region: &str) -> SdkConfig {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(region.to_owned()))
            .endpoint_url(&self.endpoint)
            .credentials_provider(aws_sdk_route53::config::Credentials::new(
                "testing", "testing", None, None, "tests",
            ))
            .load()
            .await
    }

    /// Writer changes started from now on keep running until released.
    pub async fn hold_failovers(&self) {
        self.post("/edgeroute/failover/hold").await;
    }

    /// Finishes every held writer change; new ones run on their own again.
    pub async fn release_failovers(&self) {
        self.post("/edgeroute/failover/release").await;
    }

    /// Requests of `action` (`ChangeResourceRecordSets`,
    /// `DescribeGlobalClusters`, `GetMetricStatistics/<namespace>`) sent
    /// from now on wait, unserved, until released (60 s at most).
    pub async fn hold(&self, action: &str) {
        self.post(&format!("/edgeroute/hold/{action}")).await;
    }

    /// How many requests of `action` wait.
    pub async fn held(&self, action: &str) -> usize {
        let r = crate::client()
            .get(format!("{}/edgeroute/held/{action}", self.endpoint))
            .send()
            .await
            .expect("reach the emulator");
        assert_eq!(r.status(), 200);
        r.text()
            .await
            .expect("a count")
            .trim()
            .parse()
            .expect("a count")
    }

    /// Lets the held requests of `action` go (changes one at a time); new
    /// ones no longer wait.
    pub async fn release(&self, action: &str) {
        self.post(&format!("/edgeroute/release/{action}")).await;
    }

    /// The answer to the next request of `action`
    /// (`SwitchoverGlobalCluster`, `ChangeResourceRecordSets`) is lost: AWS takes the request,
    /// and its client gets 503 instead.
    pub async fn lose_answer(&self, action: &str) {
        self.post(&format!("/edgeroute/lose-answer/{action}")).await;
    }

    /// Every request of `action` (`ListResourceRecordSets`, say) fails
    /// from now on, unserved, with 503, until [`Moto::mend`].
    pub async fn fail(&self, action: &str) {
        self.post(&format!("/edgeroute/fail/{action}")).await;
    }

    /// Requests of `action` are served again.
    pub async fn mend(&self, action: &str) {
        self.post(&format!("/edgeroute/mend/{action}")).await;
    }

    async fn post(&self, path: &str) {
        let r = crate::client()
            .post(format!("{}{path}", self.endpoint))
            .body("")
            .send()
            .await
            .expect("reach the emulator");
        assert_eq!(r.status(), 200, "{path}");
    }

    /// Stops it, as an AWS outage would.
    pub fn kill(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the fixture created.
pub struct Fixture {
    pub zone_id: String,
    pub health_checks: BTreeMap<&'static str, String>,
    /// Region → (cluster ARN, cluster id).
    pub clusters: BTreeMap<&'static str, (String, String)>,
}

/// Three regions: a hosted zone with latency alias records (a health check
/// each), a global cluster with its writer in us-east-1 and
/// secondaries in eu-west-1 and ap-southeast-1, and their replication lag.
pub async fn three_regions(moto: &Moto) -> Fixture {
    let r53 = aws_sdk_route53::Client::new(&moto.sdk("us-east-1").await);
    let zone = r53
        .create_hosted_zone()
        .name("example.com")
        .caller_reference("edgeroute-tests")
        .send()
        .await
        .expect("create hosted zone");
    let zone_id = zone
        .hosted_zone()
        .expect("zone")
        .id()
        .trim_start_matches("/hostedzone/")
        .to_owned();
    let mut health_checks = BTreeMap::new();
    for region in REGIONS {
        let hc = r53
            .create_health_check()
            .caller_reference(format!("hc-{region}"))
            .health_check_config(
                HealthCheckConfig::builder()
                    .r#type(HealthCheckType::Https)
                    .fully_qualified_domain_name(format!("alb-{region}.example.com"))
                    .resource_path("/health")
                    .request_interval(10)
                    .failure_threshold(3)
                    .set_regions(Some(
                        REGIONS
                            .iter()
                            .map(|r| HealthCheckRegion::from(*r))
                            .collect(),
                    ))
                    .build()
                    .expect("health check config"),
            )
            .send()
            .await
            .expect("create health check");
        health_checks.insert(
            region,
            hc.health_check().expect("health check").id().to_owned(),
        );
    }
    for region in REGIONS {
        change_record(
            &r53,
            &zone_id,
            ChangeAction::Upsert,
            latency_record(region, &health_checks[region]),
        )
        .await;
    }

    let mut clusters = BTreeMap::new();
    let home = aws_sdk_rds::Client::new(&moto.sdk("us-east-1").await);
    home.create_global_cluster()
        .global_cluster_identifier(GLOBAL_CLUSTER)
        .engine("aurora-postgresql")
        .engine_version("15.4")
        .send()
        .await
        .expect("create global cluster");
    for (i, region) in REGIONS.iter().enumerate() {
        let rds = aws_sdk_rds::Client::new(&moto.sdk(region).await);
        let id = format!("cluster-{region}");
        let mut req = rds
            .create_db_cluster()
            .db_cluster_identifier(&id)
            .engine("aurora-postgresql")
            .engine_version("15.4")
            .global_cluster_identifier(GLOBAL_CLUSTER);
        if i == 0 {
            req = req
                .master_username("admin")
                .master_user_password("not-a-secret-123");
        }
        let out = req.send().await.expect("create db cluster");
        clusters.insert(
            *region,
            (
                out.db_cluster()
                    .expect("cluster")
                    .db_cluster_arn()
                    .expect("arn")
                    .to_owned(),
                id,
            ),
        );
    }
    let fixture = Fixture {
        zone_id,
        health_checks,
        clusters,
    };
    put_lags(moto, &fixture, "us-east-1").await;
    fixture
}

/// The replication lag now of each secondary, every region but `writer`:
/// us-east-1 90 ms, eu-west-1 120 ms, ap-southeast-1 310 ms. A lag
/// datapoint counts for three minutes.
pub async fn put_lags(moto: &Moto, fixture: &Fixture, writer: &str) {
    for (region, lag) in [
        ("us-east-1", 90.0),
        ("eu-west-1", 120.0),
        ("ap-southeast-1", 310.0),
    ] {
        if region == writer {
            continue;
        }
        put_metric(
            moto,
            &Series::replication_lag(region, &fixture.clusters[region].1),
            lag,
            Duration::ZERO,
        )
        .await;
    }
}

/// The latency record of `region`: an alias to its load balancer, with
/// its health check (one routing policy per record, as Route 53 requires).
pub fn latency_record(region: &str, health_check: &str) -> ResourceRecordSet {
    latency_record_of(RrType::A, region, health_check)
}

/// [`latency_record`] of another type (`AAAA` beside the `A` of a
/// dual-stack load balancer).
pub fn latency_record_of(kind: RrType, region: &str, health_check: &str) -> ResourceRecordSet {
    ResourceRecordSet::builder()
        .name(RECORD)
        .r#type(kind)
        .set_identifier(region)
        .region(ResourceRecordSetRegion::from(region))
        .health_check_id(health_check)
        .alias_target(
            AliasTarget::builder()
                .hosted_zone_id("Z35SXDOTRQ7X7K")
                .dns_name(format!("alb-{region}.elb.amazonaws.com"))
                .evaluate_target_health(true)
                .build()
                .expect("alias target"),
        )
        .build()
        .expect("record set")
}

/// A weighted record of `region` (its set identifier), of type `kind`:
/// an alias to its load balancer, no health check.
pub fn weighted_record(kind: RrType, region: &str, weight: i64) -> ResourceRecordSet {
    let mut record = latency_record_of(kind, region, "");
    record.region = None;
    record.health_check_id = None;
    record.weight = Some(weight);
    record
}

/// One change to one record.
pub async fn change_record(
    r53: &aws_sdk_route53::Client,
    zone_id: &str,
    action: ChangeAction,
    record: ResourceRecordSet,
) {
    r53.change_resource_record_sets()
        .hosted_zone_id(zone_id)
        .change_batch(
            ChangeBatch::builder()
                .changes(
                    Change::builder()
                        .action(action)
                        .resource_record_set(record)
                        .build()
                        .expect("change"),
                )
                .build()
                .expect("change batch"),
        )
        .send()
        .await
        .expect("change a record");
}

/// One CloudWatch metric series.
pub struct Series<'a> {
    pub region: &'a str,
    pub namespace: &'a str,
    pub metric: &'a str,
    pub dimension: &'a str,
    pub value: &'a str,
}

impl<'a> Series<'a> {
    /// Route 53's status of a health check: 1 healthy, 0 not.
    pub fn health_check(id: &'a str) -> Self {
        Series {
            region: "us-east-1",
            namespace: "AWS/Route53",
            metric: "HealthCheckStatus",
            dimension: "HealthCheckId",
            value: id,
        }
    }

    /// An Aurora secondary's replication lag, in milliseconds.
    pub fn replication_lag(region: &'a str, cluster_id: &'a str) -> Self {
        Series {
            region,
            namespace: "AWS/RDS",
            metric: "AuroraGlobalDBReplicationLag",
            dimension: "DBClusterIdentifier",
            value: cluster_id,
        }
    }
}

/// Puts one datapoint, timestamped `ago` in the past.
pub async fn put_metric(moto: &Moto, series: &Series<'_>, v: f64, ago: Duration) {
    use aws_sdk_cloudwatch::types::{Dimension, MetricDatum};
    aws_sdk_cloudwatch::Client::new(&moto.sdk(series.region).await)
        .put_metric_data()
        .namespace(series.namespace)
        .metric_data(
            MetricDatum::builder()
                .metric_name(series.metric)
                .dimensions(
                    Dimension::builder()
                        .name(series.dimension)
                        .value(series.value)
                        .build(),
                )
                .value(v)
                .timestamp((std::time::SystemTime::now() - ago).into())
                .build(),
        )
        .send()
        .await
        .expect("put metric data");
}

/// An SNS topic with an SQS queue subscribed to it, in us-east-1:
/// (topic ARN, queue URL).
pub async fn topic_with_queue(moto: &Moto) -> (String, String) {
    let sdk = moto.sdk("us-east-1").await;
    let sns = aws_sdk_sns::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let topic = sns
        .create_topic()
        .name("edgeroute-events")
        .send()
        .await
        .expect("create topic")
        .topic_arn()
        .expect("topic ARN")
        .to_owned();
    let queue = sqs
        .create_queue()
        .queue_name("edgeroute-events")
        .send()
        .await
        .expect("create queue")
        .queue_url()
        .expect("queue URL")
        .to_owned();
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&queue)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("queue attributes");
    let queue_arn = attrs
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
        .expect("queue ARN")
        .clone();
    sns.subscribe()
        .topic_arn(&topic)
        .protocol("sqs")
        .endpoint(queue_arn)
        .send()
        .await
        .expect("subscribe the queue");
    (topic, queue)
}

/// Takes every message waiting in the queue (their bodies).
pub async fn drain_queue(moto: &Moto, queue_url: &str) -> Vec<String> {
    let sqs = aws_sdk_sqs::Client::new(&moto.sdk("us-east-1").await);
    let mut bodies = Vec::new();
    for _ in 0..100 {
        let out = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .send()
            .await
            .expect("receive messages");
        if out.messages().is_empty() {
            break;
        }
        for m in out.messages() {
            bodies.push(m.body().unwrap_or_default().to_owned());
            if let Some(h) = m.receipt_handle() {
                sqs.delete_message()
                    .queue_url(queue_url)
                    .receipt_handle(h)
                    .send()
                    .await
                    .expect("delete message");
            }
        }
    }
    bodies
}

/// What the emulator holds of Route 53 and the global cluster, to compare.
pub async fn snapshot(moto: &Moto, zone_id: &str) -> String {
    let records = list_records(moto, zone_id).await;
    let rds = aws_sdk_rds::Client::new(&moto.sdk("us-east-1").await);
    let clusters = rds
        .describe_global_clusters()
        .global_cluster_identifier(GLOBAL_CLUSTER)
        .send()
        .await
        .expect("describe global clusters");
    format!(
        "{:#?}\n{:#?}",
        records.resource_record_sets(),
        clusters.global_clusters()
    )
}

/// The zone's records (the first page: the fixture's all fit on it).
async fn list_records(
    moto: &Moto,
    zone_id: &str,
) -> aws_sdk_route53::operation::list_resource_record_sets::ListResourceRecordSetsOutput {
    aws_sdk_route53::Client::new(&moto.sdk("us-east-1").await)
        .list_resource_record_sets()
        .hosted_zone_id(zone_id)
        .send()
        .await
        .expect("list records")
}

/// The types of the API name's records for `region`, sorted.
pub async fn record_types(moto: &Moto, zone_id: &str, region: &str) -> Vec<String> {
    let mut types: Vec<String> = list_records(moto, zone_id)
        .await
        .resource_record_sets()
        .iter()
        .filter(|r| r.name().trim_end_matches('.') == RECORD && r.set_identifier() == Some(region))
        .map(|r| r.r#type().as_str().to_owned())
        .collect();
    types.sort();
    types
}

/// The TXT records that keep drained regions' latency records, by the
/// region they keep.
pub async fn kept_regions(moto: &Moto, zone_id: &str) -> Vec<String> {
    let kept = format!("_edgeroute-drained.{RECORD}");
    let mut regions: Vec<String> = list_records(moto, zone_id)
        .await
        .resource_record_sets()
        .iter()
        .filter(|r| r.name().trim_end_matches('.') == kept && r.r#type().as_str() == "TXT")
        .filter_map(|r| r.set_identifier().map(str::to_owned))
        .collect();
    regions.sort();
    regions
}

/// The region holding the global cluster's writer, and whether a writer
/// change runs.
pub async fn writer(moto: &Moto) -> (String, bool) {
    try_writer(moto)
        .await
        .expect("the global cluster and its writer")
}

/// [`writer`], or `None` when the global cluster cannot be read or has
/// no writer.
pub async fn try_writer(moto: &Moto) -> Option<(String, bool)> {
    let rds = aws_sdk_rds::Client::new(&moto.sdk("us-east-1").await);
    let out = rds
        .describe_global_clusters()
        .global_cluster_identifier(GLOBAL_CLUSTER)
        .send()
        .await
        .ok()?;
    let gc = out.global_clusters().first()?;
    let writer = gc
        .global_cluster_members()
        .iter()
        .find(|m| m.is_writer() == Some(true))
        .and_then(|m| m.db_cluster_arn())
        .and_then(|arn| arn.split(':').nth(3))?
        .to_owned();
    Some((writer, gc.failover_state().is_some()))
}

//! Polls the configured source and publishes every new table. A failing
//! source never yields half a table: the last good view stays in force,
//! marked stale in the metrics, until a read succeeds again (a part the
//! AWS source cannot read may stand in from its last reading: see
//! [`AwsSource::read`]).

use crate::aws::{AwsRequests, AwsSource};
use crate::builder::{Builder, Numbering};
use crate::metrics::ControlMetrics;
use crate::notify::{Event, Notifier};
use crate::server::Published;
use edgeroute_config::{RoutingTable, SourceConfig, TopologyView};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A failed read: which source and API, and why.
#[derive(Debug, thiserror::Error)]
#[error("{source_name} {api}: {message}")]
pub struct ReadError {
    pub source_name: &'static str,
    pub api: &'static str,
    pub message: String,
}

pub enum Source {
    File {
        path: PathBuf,
        interval: Duration,
    },
    Aws {
        aws: std::sync::Arc<AwsSource>,
        interval: Duration,
    },
}

impl Source {
    /// The AWS source, to be shared with what acts on AWS in this process
    /// (one memory of health readings for both).
    pub fn aws(&self) -> Option<std::sync::Arc<AwsSource>> {
        match self {
            Source::Aws { aws, .. } => Some(std::sync::Arc::clone(aws)),
            Source::File { .. } => None,
        }
    }

    /// `history_file` names the regions drained by removing their record;
    /// `requests` counts the requests sent to AWS.
    pub async fn new(
        cfg: &SourceConfig,
        history_file: Option<&std::path::Path>,
        requests: AwsRequests,
    ) -> Self {
        match cfg {
            SourceConfig::File {
                path,
                poll_interval,
            } => Source::File {
                path: path.clone(),
                interval: *poll_interval,
            },
            SourceConfig::Aws(aws) => Source::Aws {
                aws: std::sync::Arc::new(AwsSource::new(aws, history_file, requests).await),
                interval: aws.poll_interval,
            },
        }
    }

    fn interval(&self) -> Duration {
        match self {
            Source::File { interval, .. } | Source::Aws { interval, .. } => *interval,
        }
    }

    /// Reads the source once: the view, and what of it could not be read
    /// this time (its last reading stands in).
    pub async fn read(&self) -> Result<(TopologyView, Option<ReadError>), ReadError> {
        match self {
            Source::File { path, .. } => {
                let err = |api, message: String| ReadError {
                    source_name: "file",
                    api,
                    message,
                };
                // A regular file of at most a table's size: a pipe or a
                // device at the path is refused, not waited on or read
                // without end.
                let bytes = edgeroute_config::read_regular(
                    path,
                    edgeroute_config::MAX_TABLE_BYTES,
                    "a topology of 64 regions takes a few KiB",
                )
                .map_err(|e| {
                    err(
                        "read",
                        format!(
                            "cannot read topology file {} (source.path): {e}",
                            path.display()
                        ),
                    )
                })?;
                let view = TopologyView::from_json(&bytes).map_err(|why| {
                    err(
                        "parse",
                        format!("topology file {} (source.path): {why}", path.display()),
                    )
                })?;
                Ok((view, None))
            }
            Source::Aws { aws, .. } => {
                let of_aws = |e: crate::aws::AwsError| ReadError {
                    source_name: "aws",
                    api: e.api,
                    message: format!("{}{}", e.message, aws.unreached_advice(&e)),
                };
                let (view, unlisted) = aws.read().await.map_err(of_aws)?;
                view.validate().map_err(|e| ReadError {
                    source_name: "aws",
                    api: "view",
                    message: format!("Route 53 and Aurora give no valid topology: {e}"),
                })?;
                Ok((view, unlisted.map(of_aws)))
            }
        }
    }
}

/// Polls until the task is dropped. Every view read goes to `views` (for
/// automated failover); every table change that matters to people — the
/// primary, writes held or open, a region's state or weight — is announced.
/// Between reads, a higher numbering of the table served that proxies
/// name (another replica's, see [`Builder::adopt`]) is taken.
pub async fn run(
    source: Source,
    mut builder: Builder,
    tx: watch::Sender<Option<Arc<Published>>>,
    views: watch::Sender<Option<Arc<TopologyView>>>,
    mut numbering: mpsc::Receiver<(Numbering, String)>,
    notifier: Arc<Notifier>,
    metrics: Arc<ControlMetrics>,
) {
    let mut tick = tokio::time::interval(source.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = Failing::default();
    let publish = |table: &RoutingTable| {
        metrics.table.show(table);
        metrics.table_epoch.set(table.epoch as i64);
        metrics.table_version.set(table.version as i64);
        tx.send_replace(Some(Arc::new(Published::new(table.clone()))));
    };
    loop {
        let reported = tokio::select! {
            _ = tick.tick() => None,
            Some(n) = numbering.recv() => Some(n),
        };
        if let Some(first) = reported {
            // The highest of those waiting that this table can take.
            let mut renumbered = None;
            let mut next = Some(first);
            while let Some((n, named_by)) = next {
                if let Some(table) = builder.adopt(&n, now_ms()) {
                    renumbered = Some((table.clone(), named_by));
                }
                next = numbering.try_recv().ok();
            }
            if let Some((table, named_by)) = renumbered {
                tracing::info!(
                    epoch = table.epoch,
                    version = table.version,
                    named_by,
                    "serving the same table under the higher numbering a proxy routes on (another control plane replica's numbering of it)"
                );
                publish(&table);
            }
            continue;
        }
        let started = Instant::now();
        let outcome = source.read().await;
        metrics
            .poll_seconds
            .observe(started.elapsed().as_secs_f64());
        let view = match outcome {
            Ok((view, None)) => {
                failing.ended();
                metrics.source_stale.set(0);
                metrics.source_last_read.set((now_ms() / 1000) as i64);
                view
            }
            Ok((view, Some(e))) => {
                // Stale in part: changes that wait for the source
                // (drains, switchovers) are refused until it mends.
                count_failure(&metrics, &e);
                failing.log(&e, Part::Records);
                view
            }
            Err(e) => {
                count_failure(&metrics, &e);
                metrics.source_reads_failed.inc();
                failing.log(&e, Part::Whole(builder.current().map(|t| t.epoch)));
                continue;
            }
        };
        let before = builder.current().cloned();
        if let Some(table) = builder.apply(&view, now_ms()) {
            if let Some(change) = describe_change(before.as_ref(), table) {
                let event = Event::new("table.changed", change);
                let notifier = Arc::clone(&notifier);
                tokio::spawn(async move { notifier.send(&event).await });
            }
            tracing::info!(
                epoch = table.epoch,
                version = table.version,
                primary = table.primary_region.as_deref().unwrap_or("none"),
                failover_in_progress = table.failover_in_progress,
                "serving a new routing table"
            );
            publish(table);
            metrics.table_last_change.set((now_ms() / 1000) as i64);
        }
        views.send_replace(Some(Arc::new(view)));
    }
}

/// What a failed read failed to read.
#[derive(Debug, Clone, Copy)]
enum Part {
    /// All of it; the epoch of the table served, if any.
    Whole(Option<u64>),
    /// Route 53's records: the last ones listed stand in.
    Records,
}

/// A run of failed reads, whole or in part: its first failure (and any
/// that fails otherwise) is logged as a warning, the rest at debug level,
/// and its end (a read whole again) once; `edgeroute_control_source_errors_total` counts every one.
#[derive(Default)]
struct Failing {
    reads: u64,
    said: Option<String>,
}

impl Failing {
    fn log(&mut self, e: &ReadError, part: Part) {
        self.reads += 1;
        if self.said.as_deref() == Some(e.message.as_str()) {
            tracing::debug!(source = e.source_name, api = e.api, error = %e.message, failed_reads = self.reads, "source read failed again");
            return;
        }
        self.said = Some(e.message.clone());
        match part {
            Part::Whole(Some(epoch)) => {
                tracing::warn!(source = e.source_name, api = e.api, error = %e.message, epoch, "source read failed; serving the last good table (repeats of this failure are logged at debug level)")
            }
            Part::Whole(None) => {
                tracing::warn!(source = e.source_name, api = e.api, error = %e.message, "source read failed and no table was built yet: /v1/table answers 503 until the source can be read (repeats of this failure are logged at debug level)")
            }
            Part::Records => {
                tracing::warn!(source = e.source_name, api = e.api, error = %e.message, "source read failed in part: Route 53's records are the last ones listed; the writer's moves are still followed (repeats of this failure are logged at debug level)")
            }
        }
    }

    /// A read succeeded whole.
    fn ended(&mut self) {
        if self.reads > 0 {
            tracing::info!(failed_reads = self.reads, "source read again");
        }
        *self = Failing::default();
    }
}

/// Counts a failed read, in whole or in part, and marks the source stale.
fn count_failure(metrics: &ControlMetrics, e: &ReadError) {
    metrics
        .source_errors
        .with_label_values(&[e.source_name, e.api])
        .inc();
    metrics.source_stale.set(1);
}

/// What changed between two tables, for people; `None` when only versions
/// or replication lags moved.
pub fn describe_change(before: Option<&RoutingTable>, after: &RoutingTable) -> Option<String> {
    let before = before?;
    let mut parts = Vec::new();
    if before.primary_region != after.primary_region {
        parts.push(format!(
            "primary {} → {} (epoch {})",
            before.primary_region.as_deref().unwrap_or("none"),
            after.primary_region.as_deref().unwrap_or("none"),
            after.epoch
        ));
    }
    if before.failover_in_progress != after.failover_in_progress {
        parts.push(if after.failover_in_progress {
            "a writer change is running: writes held".to_owned()
        } else {
            "writes open".to_owned()
        });
    }
    for r in &after.regions {
        let old = before.region(&r.name);
        if old.is_none_or(|o| o.state != r.state || o.weight != r.weight) {
            parts.push(format!(
                "{} {} (weight {})",
                r.name,
                r.state.as_str(),
                r.weight
            ));
        }
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::describe_change;
    use edgeroute_config::{RegionEntry, RegionState, RoutingTable};

    fn table(epoch: u64, primary: &str, failover: bool, eu: RegionState, lag: u64) -> RoutingTable {
        RoutingTable {
            epoch,
            version: epoch * 10 + lag,
            primary_region: Some(primary.into()),
            failover_in_progress: failover,
            regions: vec![RegionEntry {
                name: "eu-west-1".into(),
                state: eu,
                weight: 100,
                replication_lag_ms: Some(lag),
            }],
        }
    }

    /// A pipe at the topology's path, with no writer: refused at once,
    /// not waited on.
    #[tokio::test]
    async fn a_topology_path_that_is_no_regular_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = crate::fifo(dir.path(), "topology.json");
        let source = super::Source::File {
            path: fifo,
            interval: std::time::Duration::from_secs(1),
        };
        let Err(err) = source.read().await else {
            panic!("a pipe is refused")
        };
        assert_eq!((err.source_name, err.api), ("file", "read"));
        assert!(
            err.message.contains("not a regular file"),
            "{}",
            err.message
        );
    }

    #[test]
    fn only_changes_that_matter_to_people_are_described() {
        let a = table(1, "us-east-1", false, RegionState::Active, 10);
        assert_eq!(
            describe_change(None, &a),
            None,
            "the first table is no change"
        );
        let lag_only = table(1, "us-east-1", false, RegionState::Active, 99);
        assert_eq!(describe_change(Some(&a), &lag_only), None);
        let held = table(1, "us-east-1", true, RegionState::Active, 10);
        assert_eq!(
            describe_change(Some(&a), &held).unwrap(),
            "a writer change is running: writes held"
        );
        let moved = table(2, "eu-west-1", false, RegionState::Draining, 10);
        assert_eq!(
            describe_change(Some(&held), &moved).unwrap(),
            "primary us-east-1 → eu-west-1 (epoch 2); writes open; eu-west-1 draining (weight 100)"
        );
    }
}

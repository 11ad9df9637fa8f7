//! Polls the configured source and publishes every new table. A failing
//! source never yields half a table: the last good view stays in force,
//! marked stale in the metrics, until a read succeeds again.

use crate::builder::Builder;
use crate::metrics::ControlMetrics;
use crate::server::Published;
use edgeroute_config::{SourceConfig, TopologyView};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Reads the source once.
pub async fn read(source: &SourceConfig) -> anyhow::Result<TopologyView> {
    match source {
        SourceConfig::File { path, .. } => read_file(path).await,
    }
}

async fn read_file(path: &Path) -> anyhow::Result<TopologyView> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read topology file {}: {e}", path.display()))?;
    TopologyView::from_json(&bytes)
        .map_err(|r| anyhow::anyhow!("topology file {}: {r}", path.display()))
}

fn interval(source: &SourceConfig) -> Duration {
    match source {
        SourceConfig::File { poll_interval, .. } => *poll_interval,
    }
}

fn source_name(source: &SourceConfig) -> &'static str {
    match source {
        SourceConfig::File { .. } => "file",
    }
}

/// Polls until the task is dropped.
pub async fn run(
    source: SourceConfig,
    mut builder: Builder,
    tx: watch::Sender<Option<Arc<Published>>>,
    metrics: Arc<ControlMetrics>,
) {
    let mut tick = tokio::time::interval(interval(&source));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let started = Instant::now();
        let outcome = read(&source).await;
        metrics
            .poll_seconds
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(view) => {
                metrics.source_stale.set(0);
                if let Some(table) = builder.apply(&view, now_ms()) {
                    metrics.table_epoch.set(table.epoch as i64);
                    metrics.table_version.set(table.version as i64);
                    metrics.table_last_change.set((now_ms() / 1000) as i64);
                    tracing::info!(epoch = table.epoch, version = table.version, primary = ?table.primary_region, failover_in_progress = table.failover_in_progress, "serving a new routing table");
                    tx.send_replace(Some(Arc::new(Published::new(table.clone()))));
                }
            }
            Err(e) => {
                metrics
                    .source_errors
                    .with_label_values(&[source_name(&source), "read"])
                    .inc();
                metrics.source_stale.set(1);
                tracing::warn!(error = %format!("{e:#}"), "source read failed; serving the last good table");
            }
        }
    }
}

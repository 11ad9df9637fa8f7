//! Where routing tables come from. The file source reloads on SIGHUP and
//! whenever the file's content changes (checked every `watch_interval`,
//! which also catches the symlink swaps Kubernetes uses for ConfigMaps).

use crate::state::AppState;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};

/// Loads the file once; used at start-up, where a missing or bad table is fatal.
pub fn load_initial(state: &AppState, path: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("cannot read routing table {}: {e}", path.display()))?;
    state
        .offer_table(&bytes, &path.display().to_string())
        .map_err(|r| anyhow::anyhow!("routing table {} rejected: {r}", path.display()))?;
    Ok(())
}

/// Watches the file until shutdown.
pub async fn watch_file(state: Arc<AppState>, path: PathBuf, interval: Duration) {
    let source = path.display().to_string();
    let mut last = std::fs::read(&path).ok();
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; the table file is still watched");
            None
        }
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = state.lifecycle.shutdown_started() => return,
            _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => true,
            _ = tick.tick() => false,
        };
        match tokio::fs::read(&path).await {
            Ok(bytes) => {
                if forced || last.as_deref() != Some(bytes.as_slice()) {
                    if forced {
                        tracing::info!(source = %source, "SIGHUP: reloading the routing table");
                    }
                    // The outcome is logged and counted inside offer_table.
                    let _outcome = state.offer_table(&bytes, &source);
                    last = Some(bytes);
                }
            }
            Err(e) => {
                if forced || last.is_some() {
                    state.table_unreadable(&source, &e);
                }
                last = None;
            }
        }
    }
}

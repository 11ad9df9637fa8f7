//! Where routing tables come from. The file source reloads on SIGHUP and
//! whenever the file's content changes (checked every `watch_interval`,
//! which also catches the symlink swaps Kubernetes uses for ConfigMaps).
//! The control source long-polls the control plane; on errors it keeps the
//! table in force and backs off.

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
                } else {
                    state.table_confirmed();
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

/// Long-polls `url/v1/table` until shutdown. Every answer is offered to the
/// router, which admits only valid tables that do not go back in epoch; on
/// errors the table in force stays and the poller backs off, doubling the
/// pause up to `max_backoff`.
pub async fn poll_control(
    state: Arc<AppState>,
    url: String,
    token: String,
    wait: Duration,
    max_backoff: Duration,
) {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let source = format!("{url}/v1/table");
    let mut etag: Option<http::HeaderValue> = None;
    let mut backoff = Duration::from_millis(100);
    let auth = match http::HeaderValue::from_str(&format!("Bearer {token}")) {
        Ok(v) => v,
        Err(_) => {
            tracing::error!(
                "table.token_file holds characters that cannot go in a header; the control source is off"
            );
            return;
        }
    };
    loop {
        let uri = format!("{source}?wait={}s", wait.as_secs().max(1));
        let mut req = http::Request::get(&uri).header(http::header::AUTHORIZATION, auth.clone());
        if let Some(tag) = &etag {
            req = req.header(http::header::IF_NONE_MATCH, tag.clone());
        }
        let req = match req.body(Empty::new()) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, url = %source, "cannot build the control request; the control source is off");
                return;
            }
        };
        let outcome = tokio::select! {
            _ = state.lifecycle.shutdown_started() => return,
            r = tokio::time::timeout(wait + Duration::from_secs(10), client.request(req)) => r,
        };
        let failure = match outcome {
            Err(_) => Some(format!(
                "no answer within {:?}",
                wait + Duration::from_secs(10)
            )),
            Ok(Err(e)) => Some(format!("cannot reach the control plane: {e}")),
            Ok(Ok(resp)) => {
                let status = resp.status();
                let tag = resp.headers().get(http::header::ETAG).cloned();
                match status {
                    http::StatusCode::NOT_MODIFIED => {
                        state.table_confirmed();
                        None
                    }
                    http::StatusCode::OK => match resp.into_body().collect().await {
                        Ok(body) => {
                            // Rejections are logged and counted inside offer_table.
                            let _outcome = state.offer_table(&body.to_bytes(), &source);
                            // Wait for the next change either way, rather
                            // than fetching a rejected table again at once.
                            etag = tag;
                            None
                        }
                        Err(e) => Some(format!("reading the table failed: {e}")),
                    },
                    http::StatusCode::UNAUTHORIZED => {
                        Some("the control plane refused the token in table.token_file".to_owned())
                    }
                    other => Some(format!("the control plane answered {other}")),
                }
            }
        };
        match failure {
            None => backoff = Duration::from_millis(100),
            Some(why) => {
                state.metrics.control_errors.inc();
                tracing::warn!(url = %source, retry_in = ?backoff, "{why}; keeping the table in force");
                let jitter = Duration::from_millis(
                    rand::random::<u64>() % (backoff.as_millis() as u64 / 4 + 1),
                );
                tokio::select! {
                    _ = state.lifecycle.shutdown_started() => return,
                    _ = tokio::time::sleep(backoff + jitter) => {}
                }
                backoff = (backoff * 2).min(max_backoff);
            }
        }
    }
}

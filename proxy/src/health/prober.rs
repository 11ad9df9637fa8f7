//! Active probes: one task per backend sends `GET health.path` every
//! `health.interval` (plus jitter) and feeds the result and its latency into
//! the backend's state. A probe that times out, cannot connect, or answers
//! outside `health.expected_status` fails.

use crate::state::AppState;
use crate::topology::Backend;
use pingora_core::connectors::http::Connector;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_http::RequestHeader;
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Upper bound on a probe response body that is read and discarded.
const MAX_PROBE_BODY: usize = 64 * 1024;

/// Starts probing `backend` on the current runtime until it is retired or
/// the proxy shuts down.
pub fn spawn(state: Arc<AppState>, backend: Arc<Backend>) {
    if state.config.health.probes {
        tokio::spawn(run(state, backend));
    }
}

async fn run(state: Arc<AppState>, backend: Arc<Backend>) {
    let health = &state.config.health;
    let connector = Connector::new(None);
    let region = Arc::clone(&state.topology.regions[backend.region].name);
    let host = state.topology.regions[backend.region]
        .host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .unwrap_or_else(|| host_of(&backend.label))
        .to_owned();
    loop {
        if backend.is_retired() {
            return;
        }
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            health.timeout,
            probe(&connector, &backend, &health.path, &host),
        )
        .await;
        let now = Instant::now();
        let (passed, detail) = match outcome {
            Ok(Ok(status))
                if (health.expected_status.0..=health.expected_status.1).contains(&status) =>
            {
                (true, status.to_string())
            }
            Ok(Ok(status)) => (false, format!("status {status}")),
            Ok(Err(e)) => (false, e.to_string()),
            Err(_) => (false, format!("no answer within {:?}", health.timeout)),
        };
        let latency = passed.then(|| now - started);
        state
            .metrics
            .probes
            .with_label_values(&[
                &*region,
                &backend.label,
                if passed { "pass" } else { "fail" },
            ])
            .inc();
        match backend.record_probe(passed, latency, health, now) {
            Some(true) => {
                tracing::info!(region = &*region, backend = %backend.label, address = %backend.addr, "backend in rotation: probe passed")
            }
            Some(false) => {
                tracing::warn!(region = &*region, backend = %backend.label, address = %backend.addr, reason = %detail, "backend out of rotation: probes failed")
            }
            None => {}
        }
        let jitter = if health.jitter.is_zero() {
            Duration::ZERO
        } else {
            rand::rng().random_range(Duration::ZERO..=health.jitter)
        };
        tokio::select! {
            _ = state.lifecycle.shutdown_started() => return,
            _ = tokio::time::sleep(health.interval + jitter) => {}
        }
    }
}

async fn probe(
    connector: &Connector,
    backend: &Backend,
    path: &str,
    host: &str,
) -> pingora_error::Result<u16> {
    let peer = &unbounded(backend.peer_template());
    let (mut session, _reused) = connector.get_http_session(peer).await?;
    let mut req = RequestHeader::build("GET", path.as_bytes(), None)?;
    req.insert_header(http::header::HOST, host)?;
    req.insert_header(http::header::USER_AGENT, "edgeroute-probe")?;
    session.write_request_header(Box::new(req)).await?;
    session.finish_request_body().await?;
    session.read_response_header().await?;
    let status = session.response_header().map_or(0, |r| r.status.as_u16());
    let mut read = 0;
    while let Some(chunk) = session.read_response_body().await? {
        read += chunk.len();
        if read > MAX_PROBE_BODY {
            return Ok(status);
        }
    }
    // Keep the connection for the next probe, so a probe measures one round
    // trip as live requests on pooled connections do.
    connector
        .release_http_session(session, peer, peer.idle_timeout())
        .await;
    Ok(status)
}

/// `peer` without limits of its own on connecting, reading, writing and
/// idling: the probe as a whole is bounded by `health.timeout` (tokio's
/// timer). Pingora's connector and pool bound each step with their own
/// timer, and its first use starts a clock thread that then wakes 100 times
/// a second for the life of the process, into the request path's CPUs.
fn unbounded(peer: &HttpPeer) -> HttpPeer {
    let mut peer = peer.clone();
    let options = &mut peer.options;
    options.connection_timeout = None;
    options.total_connection_timeout = None;
    options.read_timeout = None;
    options.write_timeout = None;
    options.idle_timeout = None;
    peer
}

/// `host` of a configured `host:port` (brackets removed from IPv6).
pub fn host_of(label: &str) -> &str {
    let host = label.rsplit_once(':').map_or(label, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_of_labels() {
        assert_eq!(super::host_of("alb.example.com:443"), "alb.example.com");
        assert_eq!(super::host_of("[::1]:80"), "::1");
        assert_eq!(super::host_of("10.0.0.1:8080"), "10.0.0.1");
    }
}

//! Active probes: one task per backend sends `GET health.path` every
//! `health.interval` (plus jitter) and feeds the result and its latency into
//! the backend's state. A probe that times out, cannot connect, or answers
//! outside `health.expected_status` fails.
//!
//! A probe is bounded as a whole by `health.timeout` and its connect by
//! `timeouts.connect`, both with tokio's timer, on the connector the
//! request path uses: Pingora's connection pool and client timeouts run on
//! a timer of their own whose first use starts a clock thread that wakes
//! 100 times a second for the life of the process. (A TLS backend's
//! handshake still goes through Pingora's connector, which starts it.)

use crate::connect;
use crate::h1::MAX_INTERIM;
use crate::state::AppState;
use crate::topology::Backend;
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::Stream;
use pingora_core::protocols::http::v1::client::HttpSession;
use pingora_error::{Error, ErrorType};
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
    // The connection of the last probe, kept for the next one (so a probe
    // measures one round trip, as live requests on pooled connections do),
    // and since when. It closes when the backend is retired.
    let mut kept: Option<(Stream, Instant)> = None;
    let region = Arc::clone(&state.topology.regions[backend.region].name);
    let host = state.topology.regions[backend.region]
        .host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .unwrap_or_else(|| host_of(&backend.label))
        .to_owned();
    // Whether the backend's failing has been logged since it was last in
    // rotation: a backend that has never been in rotation (or is out of it)
    // gets one line with the reason, not one per probe (nor one per probe
    // of a backend flapping short of `rise`) and not none.
    let mut failures_told = false;
    // Whether the backend was ejected at the last probe: the end of an
    // ejection (which runs out by time) is logged here.
    let mut was_ejected = false;
    loop {
        if backend.is_retired() {
            return;
        }
        let started = Instant::now();
        let ejected = backend.is_ejected(started);
        if was_ejected && !ejected {
            tracing::info!(region = &*region, backend = %backend.label, address = %backend.addr, "backend's ejection is over: in rotation again while its probes pass");
        }
        was_ejected = ejected;
        let reusable = kept
            .take()
            .filter(|(_, since)| started - *since < state.config.timeouts.pool_idle)
            .map(|(stream, _)| stream);
        // A task of its own: should the exchange panic on an answer no one
        // foresaw, the probe fails and probing goes on.
        let probing = tokio::spawn({
            let (state, backend, host) = (Arc::clone(&state), Arc::clone(&backend), host.clone());
            async move {
                let health = &state.config.health;
                tokio::time::timeout(
                    health.timeout,
                    probe(&state.connector, &backend, &health.path, &host, reusable),
                )
                .await
            }
        });
        let outcome = match probing.await {
            Ok(Ok(done)) => done.map_err(|e| e.to_string()),
            Ok(Err(_)) => Err(format!("no answer within {:?}", health.timeout)),
            Err(e) => Err(format!("the probe failed: {e}")),
        };
        let now = Instant::now();
        let (passed, detail) = match outcome {
            Ok((status, stream))
                if (health.expected_status.0..=health.expected_status.1).contains(&status) =>
            {
                kept = stream.map(|s| (s, now));
                (true, status.to_string())
            }
            Ok((status, stream)) => {
                kept = stream.map(|s| (s, now));
                (false, format!("status {status}"))
            }
            Err(detail) => (false, detail),
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
        let change = backend.record_probe(passed, latency, health, now);
        if change == Some(true) || backend.is_departing() {
            // A departed address of the same name may be done serving on.
            crate::dns::settle(&state, backend.region, &backend.label);
        }
        match change {
            Some(true) if backend.is_ejected(now) => {
                // Back with an ejection kept (its address left DNS and
                // returned): in rotation when the ejection ends, logged then.
                tracing::info!(region = &*region, backend = %backend.label, address = %backend.addr, "probe passed; the backend is still ejected, in rotation once its ejection ends");
                was_ejected = true;
                failures_told = false;
            }
            Some(true) => {
                tracing::info!(region = &*region, backend = %backend.label, address = %backend.addr, "backend in rotation: probe passed");
                failures_told = false;
            }
            Some(false) => {
                tracing::warn!(region = &*region, backend = %backend.label, address = %backend.addr, reason = %detail, "backend out of rotation: probes failed");
                failures_told = true;
            }
            None if !passed && !failures_told && !backend.probe_healthy() => {
                tracing::warn!(region = &*region, backend = %backend.label, address = %backend.addr, reason = %detail, "backend not in rotation: probe failed");
                failures_told = true;
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

/// One probe: on the kept connection if there is one, else (or if that
/// one fails: the backend may have closed it meanwhile) on a new one. The
/// status, and the connection if it can be kept.
async fn probe(
    connector: &TransportConnector,
    backend: &Backend,
    path: &str,
    host: &str,
    kept: Option<Stream>,
) -> pingora_error::Result<(u16, Option<Stream>)> {
    if let Some(stream) = kept
        && let Ok(done) = exchange(HttpSession::new(stream), path, host).await
    {
        return Ok(done);
    }
    let stream = connect::connect(connector, backend.peer_template()).await?;
    exchange(HttpSession::new(stream), path, host).await
}

/// `GET path` on `session`: the status, and the connection if the answer
/// leaves it open.
async fn exchange(
    mut session: HttpSession,
    path: &str,
    host: &str,
) -> pingora_error::Result<(u16, Option<Stream>)> {
    let mut req = RequestHeader::build("GET", path.as_bytes(), None)?;
    req.insert_header(http::header::HOST, host)?;
    req.insert_header(http::header::USER_AGENT, "edgeroute-probe")?;
    session.write_request_header(Box::new(req)).await?;
    session.finish_body().await?;
    // Interim answers (100, 103) come before the final one, as many as a
    // request's answer may have.
    let mut interim = 0;
    let status = loop {
        session.read_response().await?;
        match session.resp_header().map_or(0, |r| r.status.as_u16()) {
            101 => {
                return Err(Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    "101 Switching Protocols, to a probe that asked for no upgrade",
                ));
            }
            100..=199 if interim < MAX_INTERIM => interim += 1,
            100..=199 => {
                return Err(Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    format!("more than {MAX_INTERIM} interim (1xx) answers"),
                ));
            }
            status => break status,
        }
    };
    let mut read = 0;
    while let Some(chunk) = session.read_body_bytes().await? {
        read += chunk.len();
        if read > MAX_PROBE_BODY {
            return Ok((status, None));
        }
    }
    session.respect_keepalive();
    Ok((status, session.reuse().await))
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

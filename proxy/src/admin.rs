//! The admin listener: health for Route 53 and the ALB, readiness for
//! Kubernetes, Prometheus metrics, and the routing table in force.
//!
//! It is bound to loopback by default. It runs on its own runtime so it keeps
//! answering (`/ready` = 503) while the proxy drains after SIGTERM.

use crate::route::Refusal;
use crate::state::AppState;
use bytes::Bytes;
use edgeroute_config::accept::Room;
use edgeroute_config::{RegionState, RouteTarget};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::UNIX_EPOCH;
use tokio::net::TcpListener;

/// How long a client may take to send a request head, and how long a
/// connection may idle between requests (hyper counts both alike). Longer
/// than a scrape interval's usual 15 s.
const HEAD_TIME: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves the admin API on `listener`, at most `max_connections` at once
/// (its open paths need no token: without a bound, clients that hold
/// connections could take the descriptors the traffic listeners need),
/// until the process exits or the listening socket breaks (logged).
pub async fn serve(state: Arc<AppState>, listener: TcpListener, max_connections: usize) {
    let room = Room::new(
        max_connections,
        "admin.max_connections",
        state.metrics.admin_accept_waits.clone(),
    );
    loop {
        let (stream, _, permit) = match room.accept(&listener).await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::error!(error = %e, "admin listener stopped: its socket is broken; restart the proxy to serve it again");
                return;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, std::convert::Infallible>(handle(&state, &req)) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                // A client that never finishes its request head is closed
                // rather than held open.
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEAD_TIME)
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

fn json_reply(ok: bool, body: Value) -> Response<Full<Bytes>> {
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    reply(status, "application/json", body.to_string())
}

fn handle(state: &AppState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "admin endpoints answer GET and HEAD only\n",
        );
        resp.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, HEAD"),
        );
        return resp;
    }
    let path = req.uri().path();
    if matches!(path, "/metrics" | "/routing") && !authorized(state, req) {
        let mut resp = reply(
            StatusCode::UNAUTHORIZED,
            "text/plain",
            "this admin endpoint needs `Authorization: Bearer <token>` (the token in admin.token_file)\n",
        );
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        return resp;
    }
    match path {
        "/health" => {
            let (ok, body) = state.health();
            json_reply(ok, body)
        }
        "/health/read" | "/health/write" => {
            let write = req.uri().path() == "/health/write";
            let target = if write {
                RouteTarget::Primary
            } else {
                RouteTarget::Nearest
            };
            let outcome = match state.router.load() {
                None => Err("no_routing_table"),
                Some(_) if write && state.table_too_old_for_writes() => {
                    Err(Refusal::TableStale.code())
                }
                Some(s) => state
                    .choose_region(&s, target, 0, std::time::Instant::now())
                    .map(|r| &*state.topology.regions[r].name)
                    .map_err(|e| e.code()),
            };
            match outcome {
                Ok(region) => json_reply(true, json!({ "status": "ok", "served_by": region })),
                Err(reason) => {
                    json_reply(false, json!({ "status": "unavailable", "reason": reason }))
                }
            }
        }
        // What a liveness probe asks: whether a restart would help. Not
        // while a table is awaited or backends fail (a restart fixes
        // neither), nor while shutting down.
        "/live" => {
            let broken = state.lifecycle.is_broken() && !state.lifecycle.is_shutting_down();
            json_reply(
                !broken,
                json!({ "live": !broken, "reason": if broken { "listener_stopped" } else { "" } }),
            )
        }
        "/ready" => {
            let reason = not_ready_reason(state);
            state.metrics.ready.set(i64::from(reason.is_none()));
            json_reply(
                reason.is_none(),
                json!({ "ready": reason.is_none(), "reason": reason.unwrap_or("") }),
            )
        }
        "/metrics" => {
            state
                .metrics
                .ready
                .set(i64::from(not_ready_reason(state).is_none()));
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                state.metrics.render(&state.topology, state.table_age()),
            )
        }
        "/routing" => reply(
            StatusCode::OK,
            "application/json",
            routing_view(state).to_string(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "unknown admin path; try /health, /health/read, /health/write, /live, /ready, /metrics or /routing\n",
        ),
    }
}

/// True when no token is configured, or the request carries it. The
/// comparison takes the same time wherever the first difference is.
fn authorized(state: &AppState, req: &Request<Incoming>) -> bool {
    let Some(token) = &state.admin_token else {
        return true;
    };
    let presented = req.headers().get(http::header::AUTHORIZATION);
    token.accepts(presented.map(|v| v.as_bytes()))
}

/// Why the proxy should not get new traffic, if it should not.
fn not_ready_reason(state: &AppState) -> Option<&'static str> {
    if state.lifecycle.is_shutting_down() {
        Some("shutting_down")
    } else if state.router.load().is_none() {
        Some("no_routing_table")
    } else if !state.lifecycle.is_listening() || !state.first_probes_done() {
        Some("starting")
    } else {
        None
    }
}

/// The table in force and what this proxy makes of it, region by region.
pub fn routing_view(state: &AppState) -> Value {
    let snap = state.router.load();
    let topo = &state.topology;
    let now = std::time::Instant::now();
    let regions: Vec<Value> = topo
        .regions
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let table_state = snap.as_ref().map_or(RegionState::Down, |s| s.states[i]);
            // One reading of the list: DNS may change it between two, and
            // the count must be of the backends shown.
            let backends: Vec<Value> = r
                .backends()
                .iter()
                .map(|b| {
                    json!({
                        "backend": b.label,
                        "address": b.addr.to_string(),
                        "live": b.in_rotation(now),
                        "probe_healthy": b.probe_healthy(),
                        "ejected": b.is_ejected(now),
                        "departing": b.is_departing(),
                        "inflight": b.inflight(),
                        "latency_ms": b.measured_latency(now).map(|s| s * 1000.0),
                    })
                })
                .collect();
            let live = backends.iter().filter(|b| b["live"] == true).count();
            json!({
                "name": &*r.name,
                "state": table_state.as_str(),
                "weight": snap.as_ref().map_or(0, |s| s.weights[i]),
                "local": i == topo.local,
                "primary": snap.as_ref().is_some_and(|s| s.primary == Some(i)),
                "live_backends": live,
                "latency_ms": r.latency(now).map(|s| s * 1000.0),
                "backends": backends,
                "draining": r.draining().iter().map(|b| json!({
                    "backend": b.label,
                    "address": b.addr.to_string(),
                    "inflight": b.inflight(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "local_region": &*topo.regions[topo.local].name,
        "table": snap.as_ref().map(|s| serde_json::to_value(&s.table).unwrap_or(Value::Null)),
        "in_force_since": snap.as_ref().and_then(|s| s.loaded_at.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs()),
        "regions": regions,
        "shutting_down": state.lifecycle.is_shutting_down(),
    })
}

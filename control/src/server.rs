//! The table server: `GET /v1/table` with an ETag, `If-None-Match` and
//! long-poll (`?wait=30s`), behind a bearer token; `/health` and `/metrics`.

use crate::metrics::ControlMetrics;
use bytes::Bytes;
use edgeroute_config::RoutingTable;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A table as served: its JSON and ETag computed once.
pub struct Published {
    pub table: RoutingTable,
    pub json: Bytes,
    pub etag: HeaderValue,
}

impl Published {
    pub fn new(table: RoutingTable) -> Self {
        let json = Bytes::from(serde_json::to_vec(&table).unwrap_or_default());
        let etag = HeaderValue::from_str(&format!("\"{}-{}\"", table.epoch, table.version))
            .unwrap_or_else(|_| HeaderValue::from_static("\"0-0\""));
        Published { table, json, etag }
    }
}

pub struct ServerState {
    pub token: Vec<u8>,
    pub max_wait: Duration,
    pub table: watch::Receiver<Option<Arc<Published>>>,
    pub metrics: Arc<ControlMetrics>,
}

pub async fn serve(state: Arc<ServerState>, listener: TcpListener) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, std::convert::Infallible>(handle(&state, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "connection ended with an error");
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
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    reply(
        status,
        "application/json",
        serde_json::json!({ "error": code, "message": message }).to_string(),
    )
}

fn authorized(state: &ServerState, req: &Request<Incoming>) -> bool {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    bool::from(subtle::ConstantTimeEq::ct_eq(
        presented,
        state.token.as_slice(),
    ))
}

/// `?wait=30s` (or `?wait=30`, in seconds).
fn wait_param(req: &Request<Incoming>) -> Option<Duration> {
    let query = req.uri().query()?;
    let raw = query.split('&').find_map(|kv| kv.strip_prefix("wait="))?;
    raw.parse::<u64>()
        .map(Duration::from_secs)
        .ok()
        .or_else(|| humantime::parse_duration(raw).ok())
}

async fn handle(state: &ServerState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let resp = route(state, &req).await;
    state
        .metrics
        .requests
        .with_label_values(&[resp.status().as_str()])
        .inc();
    resp
}

async fn route(state: &ServerState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "only GET is served",
        );
    }
    match req.uri().path() {
        "/health" => match state.table.borrow().as_ref() {
            Some(p) => reply(
                StatusCode::OK,
                "application/json",
                serde_json::json!({ "status": "ok", "epoch": p.table.epoch, "version": p.table.version }).to_string(),
            ),
            None => error(StatusCode::SERVICE_UNAVAILABLE, "no_table", "no routing table built yet"),
        },
        "/metrics" if authorized(state, req) => reply(StatusCode::OK, "text/plain; version=0.0.4", state.metrics.render()),
        "/v1/table" if authorized(state, req) => table(state, req).await,
        "/metrics" | "/v1/table" => {
            let mut resp = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send `Authorization: Bearer <token>` with the token in the control plane's server.token_file",
            );
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            resp
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "try /v1/table, /health or /metrics"),
    }
}

async fn table(state: &ServerState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut rx = state.table.clone();
    let known = req.headers().get(header::IF_NONE_MATCH).cloned();
    let current = rx.borrow_and_update().clone();
    let Some(mut current) = current else {
        let mut resp = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_table",
            "no routing table built yet; retry shortly",
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return resp;
    };
    if known.as_ref() == Some(&current.etag)
        && let Some(wait) = wait_param(req)
    {
        // Long-poll: answer as soon as the table changes, or 304 at the deadline.
        let deadline = tokio::time::sleep(wait.min(state.max_wait));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                changed = rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    if let Some(p) = rx.borrow_and_update().clone() {
                        current = p;
                    }
                    if known.as_ref() != Some(&current.etag) {
                        break;
                    }
                }
            }
        }
    }
    if known.as_ref() == Some(&current.etag) {
        let mut resp = reply(StatusCode::NOT_MODIFIED, "application/json", Bytes::new());
        resp.headers_mut()
            .insert(header::ETAG, current.etag.clone());
        return resp;
    }
    let mut resp = reply(StatusCode::OK, "application/json", current.json.clone());
    resp.headers_mut()
        .insert(header::ETAG, current.etag.clone());
    resp
}

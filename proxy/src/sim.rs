//! A simulated regional origin for the demo and the benchmarks: it answers
//! every request with its region's name after an added delay that stands in
//! for the network distance to that region.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Serves until the task is dropped.
pub async fn serve_origin(listener: TcpListener, region: Arc<str>, delay: Duration) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let region = Arc::clone(&region);
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(Arc::clone(&region), delay, req));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "origin connection ended with an error");
            }
        });
    }
}

async fn answer(
    region: Arc<str>,
    delay: Duration,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let body_len = body.collect().await?.to_bytes().len();
    // Probes see the same distance as requests: it is the network, not the app.
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let body = serde_json::json!({
        "region": &*region,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "route": header("x-edgeroute-route"),
        "epoch": header("x-edgeroute-epoch"),
        "request_id": header("x-request-id"),
        "body_bytes": body_len,
    });
    let mut resp = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

//! Origins for the scenarios: the simulated regions of the demo, and one that
//! counts the writes it receives by the epoch that routed them.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// Writes seen, by (epoch, region).
pub type WriteLog = Arc<Mutex<BTreeMap<(u64, String), u64>>>;

/// Starts an origin for `region` on its own runtime thread; it answers every
/// request with 200 and logs writes into `writes`.
pub fn start(region: &str, writes: WriteLog) -> anyhow::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let region: Arc<str> = Arc::from(region);
    std::thread::Builder::new()
        .name(format!("origin-{region}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return eprintln!("origin runtime: {e}"),
            };
            rt.block_on(async move {
                let Ok(listener) = TcpListener::from_std(std_listener) else {
                    return;
                };
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    stream.set_nodelay(true).ok();
                    let (region, writes) = (Arc::clone(&region), Arc::clone(&writes));
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| {
                            answer(Arc::clone(&region), Arc::clone(&writes), req)
                        });
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await
                            .ok();
                    });
                }
            });
        })?;
    Ok(addr)
}

async fn answer(
    region: Arc<str>,
    writes: WriteLog,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = req.into_parts();
    body.collect().await?;
    if parts.method == http::Method::POST {
        let epoch = parts
            .headers
            .get("x-edgeroute-epoch")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut log = writes.lock().unwrap_or_else(|p| p.into_inner());
        *log.entry((epoch, region.to_string())).or_default() += 1;
    }
    Ok(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
}

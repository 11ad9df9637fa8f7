//! An origin server for tests: answers with its region's name and records
//! every request that reached it.

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// What reached an origin.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body_len: usize,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Answer 200 with the region name.
    Normal,
    /// Read a POST in full, record it, then drop the connection without answering.
    DieOnPost,
    /// Read any request in full, record it, then drop the connection
    /// without answering.
    DieOnAny,
    /// Record the request, then wait for [`Origin::release`] before answering.
    Hold,
}

struct Shared {
    region: String,
    seen: Mutex<Vec<Seen>>,
    behaviour: Mutex<Behaviour>,
    gate: Semaphore,
    /// Status of `/health`; probes are answered apart and not recorded.
    health_status: AtomicU16,
    probes: AtomicUsize,
    /// Added before every answer, probes included, in milliseconds.
    delay_ms: AtomicU64,
    /// Status of every other answer.
    status: AtomicU16,
    /// Bytes of padding after every other answer's JSON body.
    padding: AtomicUsize,
}

pub struct Origin {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    pub async fn start(region: &str) -> Origin {
        Origin::start_on(region, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Listens on `addr` (port 0: any free port).
    pub async fn start_on(region: &str, addr: SocketAddr) -> Origin {
        let listener = TcpListener::bind(addr).await.expect("bind origin");
        let addr = listener.local_addr().expect("origin address");
        let shared = Arc::new(Shared {
            region: region.to_owned(),
            seen: Mutex::new(Vec::new()),
            behaviour: Mutex::new(Behaviour::Normal),
            gate: Semaphore::new(0),
            health_status: AtomicU16::new(200),
            probes: AtomicUsize::new(0),
            delay_ms: AtomicU64::new(0),
            status: AtomicU16::new(200),
            padding: AtomicUsize::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Origin { addr, shared, task }
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock().expect("origin lock") = behaviour;
    }

    /// What `/health` answers from now on.
    pub fn set_health(&self, status: u16) {
        self.shared.health_status.store(status, Ordering::Relaxed);
    }

    /// What every other path answers from now on.
    pub fn set_status(&self, status: u16) {
        self.shared.status.store(status, Ordering::Relaxed);
    }

    /// Adds `bytes` spaces after the JSON body of every answer but the
    /// probes' (a large answer).
    pub fn set_padding(&self, bytes: usize) {
        self.shared.padding.store(bytes, Ordering::Relaxed);
    }

    /// Delay added to every answer, probes included (a simulated distance).
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.shared
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Health probes answered so far.
    pub fn probes(&self) -> usize {
        self.shared.probes.load(Ordering::Relaxed)
    }

    /// Lets `n` held requests answer.
    pub fn release(&self, n: usize) {
        self.shared.gate.add_permits(n);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().expect("origin lock").clone()
    }

    pub fn count(&self, method: &str) -> usize {
        self.seen().iter().filter(|s| s.method == method).count()
    }

    /// Requests carrying `x-request-id: id`.
    pub fn count_id(&self, id: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.header("x-request-id") == Some(id))
            .count()
    }

    pub fn region(&self) -> &str {
        &self.shared.region
    }

    /// Stops accepting, closes the listener and every connection it
    /// accepted; the port refuses connections after.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // The connections end with the loop: a stopped origin serves no one,
    // not even on a kept-alive connection.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = Arc::clone(&shared);
        connections.spawn(async move {
            let svc = service_fn(move |req| answer(Arc::clone(&shared), req));
            // A connection dropped on purpose ends with an error; that is the point.
            let _ended = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("origin dropped the connection on purpose")
    }
}

impl std::error::Error for Dropped {}

async fn answer(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
    if req.headers().contains_key(http::header::UPGRADE) {
        return Ok(upgrade_to_echo(&shared, &mut req));
    }
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let delay = shared.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    if parts.uri.path() == "/health" {
        shared.probes.fetch_add(1, Ordering::Relaxed);
        let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
        *resp.status_mut() = StatusCode::from_u16(shared.health_status.load(Ordering::Relaxed))?;
        return Ok(resp);
    }
    let seen = Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        headers: parts.headers.clone(),
        body_len: body.len(),
    };
    shared.seen.lock().expect("origin lock").push(seen);
    let behaviour = *shared.behaviour.lock().expect("origin lock");
    match behaviour {
        Behaviour::DieOnPost if parts.method == http::Method::POST => {
            return Err(Box::new(Dropped));
        }
        Behaviour::DieOnAny => return Err(Box::new(Dropped)),
        Behaviour::Hold => {
            let permit = shared.gate.acquire().await?;
            permit.forget();
        }
        _ => {}
    }
    let mut text =
        serde_json::json!({ "region": shared.region, "path": parts.uri.path() }).to_string();
    let padding = shared.padding.load(Ordering::Relaxed);
    text.extend(std::iter::repeat_n(' ', padding));
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = StatusCode::from_u16(shared.status.load(Ordering::Relaxed))?;
    Ok(resp)
}

/// Accepts any protocol upgrade, then echoes every byte back until the
/// client closes: enough to see a tunnel carry both directions.
fn upgrade_to_echo(shared: &Shared, req: &mut Request<Incoming>) -> Response<Full<Bytes>> {
    shared.seen.lock().expect("origin lock").push(Seen {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        headers: req.headers().clone(),
        body_len: 0,
    });
    let protocol = req.headers()[http::header::UPGRADE].clone();
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let (mut rx, mut tx) = tokio::io::split(TokioIo::new(upgraded));
        let _ended = tokio::io::copy(&mut rx, &mut tx).await;
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut().insert(http::header::UPGRADE, protocol);
    resp.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    resp
}

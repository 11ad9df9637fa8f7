//! Load generators on loopback, bounded in time and in count.
//!
//! `closed` keeps N connections busy back to back (like wrk): it measures
//! throughput. `open` sends at a fixed rate and measures each latency from the
//! moment the request was due, not from when it was sent, so a stall is not
//! hidden by the requests it delayed (coordinated omission).

use crate::lean;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Builds the n-th request of a connection.
pub type MakeRequest = Arc<dyn Fn(u64) -> Request<Empty<Bytes>> + Send + Sync>;
/// Sees every response header (status, routing headers).
pub type OnResponse = Arc<dyn Fn(&Response<Incoming>) + Send + Sync>;

#[derive(Debug, Clone)]
pub struct LoadResult {
    pub requests: u64,
    /// Transport failures and responses other than 2xx.
    pub errors: u64,
    pub elapsed: Duration,
    /// Latency in microseconds.
    pub latency: Histogram<u64>,
    /// Open loop only: how late requests went out after their due time on
    /// connections that were idle then, in microseconds (the load
    /// generator's own lateness).
    pub late: Histogram<u64>,
}

/// A histogram of microseconds, up to a minute.
fn micros() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

impl LoadResult {
    fn empty() -> Self {
        LoadResult {
            requests: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latency: micros(),
            late: micros(),
        }
    }

    fn merge(&mut self, other: &LoadResult) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.latency.add(&other.latency).ok();
        self.late.add(&other.late).ok();
    }

    /// One request's outcome, its latency counted from `since`.
    fn record(&mut self, since: Instant, ok: bool) {
        self.latency
            .record(since.elapsed().as_micros().max(1) as u64)
            .ok();
        self.requests += 1;
        self.errors += u64::from(!ok);
    }

    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Successful requests per second.
    pub fn ok_rps(&self) -> f64 {
        (self.requests - self.errors) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn percentile_us(&self, q: f64) -> u64 {
        self.latency.value_at_quantile(q)
    }
}

pub fn get(path: &'static str) -> MakeRequest {
    Arc::new(move |_| {
        Request::get(path)
            .header(http::header::HOST, "bench")
            .body(Empty::new())
            .expect("static request")
    })
}

/// One connection of a load.
trait Exchange: Send + 'static {
    /// Sends the `n`-th request and reads its answer: whether it was a
    /// success.
    fn exchange(&mut self, n: u64) -> impl Future<Output = bool> + Send;
}

/// hyper's client: a connection that died is opened again for the next
/// request.
struct HyperClient {
    sender: SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
    make: MakeRequest,
    on_response: Option<OnResponse>,
}

impl HyperClient {
    async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // The connection ends when the sender is dropped or the peer closes.
            conn.await.ok();
        });
        Ok(sender)
    }
}

impl Exchange for HyperClient {
    async fn exchange(&mut self, n: u64) -> bool {
        if self.sender.ready().await.is_err() {
            match Self::connect(self.addr).await {
                Ok(sender) => self.sender = sender,
                Err(_) => return false,
            }
        }
        match self.sender.send_request((self.make)(n)).await {
            Ok(resp) => {
                if let Some(f) = &self.on_response {
                    f(&resp);
                }
                let ok = resp.status().is_success();
                ok & resp.into_body().collect().await.is_ok()
            }
            Err(_) => false,
        }
    }
}

/// The lean client of [`lean`]: a connection that failed or was closed by
/// the server is opened again for the next request.
struct LeanClient {
    conn: Option<lean::Conn<tokio::net::TcpStream>>,
    addr: SocketAddr,
    request: Arc<[u8]>,
}

impl LeanClient {
    async fn connect(addr: SocketAddr) -> std::io::Result<lean::Conn<tokio::net::TcpStream>> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(lean::Conn::new(stream))
    }
}

impl Exchange for LeanClient {
    async fn exchange(&mut self, _n: u64) -> bool {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => match Self::connect(self.addr).await {
                Ok(conn) => self.conn.insert(conn),
                Err(_) => return false,
            },
        };
        match conn.exchange(&self.request).await {
            Ok(answer) => {
                if !answer.reusable {
                    self.conn = None;
                }
                (200..300).contains(&answer.status)
            }
            Err(_) => {
                self.conn = None;
                false
            }
        }
    }
}

async fn hyper_clients(
    addr: SocketAddr,
    conns: usize,
    make: MakeRequest,
    on_response: Option<OnResponse>,
) -> anyhow::Result<Vec<HyperClient>> {
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        clients.push(HyperClient {
            sender: HyperClient::connect(addr).await?,
            addr,
            make: Arc::clone(&make),
            on_response: on_response.clone(),
        });
    }
    Ok(clients)
}

async fn lean_clients(
    addr: SocketAddr,
    conns: usize,
    request: Arc<[u8]>,
) -> anyhow::Result<Vec<LeanClient>> {
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        clients.push(LeanClient {
            conn: Some(LeanClient::connect(addr).await?),
            addr,
            request: Arc::clone(&request),
        });
    }
    Ok(clients)
}

/// `conns` connections send back to back for `duration` or until
/// `max_requests` in all, whichever comes first.
pub async fn closed(
    addr: SocketAddr,
    conns: usize,
    duration: Duration,
    max_requests: u64,
    make: MakeRequest,
    on_response: Option<OnResponse>,
) -> anyhow::Result<LoadResult> {
    let clients = hyper_clients(addr, conns, make, on_response).await?;
    closed_loop(clients, duration, max_requests).await
}

/// As [`closed`], with the lean client: `request` (as bytes) over and over.
pub async fn closed_lean(
    addr: SocketAddr,
    conns: usize,
    duration: Duration,
    max_requests: u64,
    request: Arc<[u8]>,
) -> anyhow::Result<LoadResult> {
    let clients = lean_clients(addr, conns, request).await?;
    closed_loop(clients, duration, max_requests).await
}

async fn closed_loop<E: Exchange>(
    clients: Vec<E>,
    duration: Duration,
    max_requests: u64,
) -> anyhow::Result<LoadResult> {
    let start = Instant::now();
    let deadline = start + duration;
    let hard = deadline + grace(duration);
    let per_conn = max_requests.div_ceil(clients.len().max(1) as u64);
    let mut tasks = Vec::with_capacity(clients.len());
    for mut client in clients {
        tasks.push(tokio::spawn(async move {
            let mut r = LoadResult::empty();
            let mut n = 0;
            while n < per_conn && Instant::now() < deadline {
                let t = Instant::now();
                let ok = bounded(hard, client.exchange(n)).await;
                r.record(t, ok.unwrap_or(false));
                if ok.is_none() {
                    break;
                }
                n += 1;
            }
            r
        }));
    }
    gather(tasks, start).await
}

/// The connections' results as one, over the time since `start`.
async fn gather(
    tasks: Vec<tokio::task::JoinHandle<LoadResult>>,
    start: Instant,
) -> anyhow::Result<LoadResult> {
    let mut total = LoadResult::empty();
    for t in tasks {
        total.merge(&t.await?);
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

/// How long past its planned end a run may go before whatever is still in
/// flight counts as failed: a stalled target does not stall the suite.
fn grace(duration: Duration) -> Duration {
    duration + Duration::from_secs(5)
}

/// `exchange`, or `None` if it has not finished by `hard`.
async fn bounded(hard: Instant, exchange: impl Future<Output = bool>) -> Option<bool> {
    tokio::time::timeout_at(hard.into(), exchange).await.ok()
}

/// Sends `rate` requests per second over `conns` hyper connections for
/// `duration`; latency counts from each request's due time.
pub async fn open(
    addr: SocketAddr,
    rate: u64,
    conns: usize,
    duration: Duration,
    make: MakeRequest,
) -> anyhow::Result<LoadResult> {
    let clients = hyper_clients(addr, conns, make, None).await?;
    open_loop(clients, rate, duration).await
}

/// As [`open`], with the lean client.
pub async fn open_lean(
    addr: SocketAddr,
    rate: u64,
    conns: usize,
    duration: Duration,
    request: Arc<[u8]>,
) -> anyhow::Result<LoadResult> {
    let clients = lean_clients(addr, conns, request).await?;
    open_loop(clients, rate, duration).await
}

/// Request `i` is due at `start + i / rate` and goes on connection
/// `i % clients`; if that connection is still busy, it waits, and the wait
/// counts (coordinated omission). The due times come from a thread of
/// their own sleeping with the system's timer: the runtime's timer ticks
/// in milliseconds, which would add up to a millisecond of the load
/// generator's own lateness to every latency. How late a request went out
/// on a connection that was idle at its due time (the pacer's, the
/// hand-over's and this thread's lateness, none of it the target's) is
/// kept in [`LoadResult::late`]. Past the run's grace, requests in flight
/// and those not sent count as failed, with their wait so far.
async fn open_loop<E: Exchange>(
    clients: Vec<E>,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let conns = clients.len().max(1);
    let start = Instant::now() + Duration::from_millis(50);
    let hard = start + duration + grace(duration);
    let total_requests = (rate as f64 * duration.as_secs_f64()) as u64;
    let mut senders = Vec::with_capacity(conns);
    let mut tasks = Vec::with_capacity(conns);
    for mut client in clients {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        senders.push(tx);
        tasks.push(tokio::spawn(async move {
            let mut r = LoadResult::empty();
            let mut n = 0;
            let mut idle_since = Instant::now();
            let mut stalled = false;
            while let Some(due) = rx.recv().await {
                let ok = if stalled {
                    Some(false)
                } else {
                    let now = Instant::now();
                    if idle_since <= due {
                        r.late
                            .record(now.duration_since(due).as_micros() as u64)
                            .ok();
                    }
                    bounded(hard, client.exchange(n)).await
                };
                stalled |= ok.is_none();
                r.record(due, ok.unwrap_or(false));
                idle_since = Instant::now();
                n += 1;
            }
            r
        }));
    }
    let pacer = std::thread::Builder::new()
        .name("bench-pacer".into())
        .spawn(move || {
            // Sleeps end up to 50 µs late by default (the timer slack);
            // ask for none, best effort.
            nix::sys::prctl::set_timerslack(1).ok();
            for i in 0..total_requests {
                let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                if due < hard
                    && let Some(wait) = due.checked_duration_since(Instant::now())
                {
                    std::thread::sleep(wait);
                }
                if senders[(i % conns as u64) as usize].send(due).is_err() {
                    break;
                }
            }
            // The senders go here: each connection ends with its queue.
        })?;
    let total = gather(tasks, start).await?;
    pacer
        .join()
        .map_err(|_| anyhow::anyhow!("the load generator's pacer thread panicked"))?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server answering `200 ok` to every request head, or `503` when
    /// told to.
    async fn server(status: &'static str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\nok");
                    while let Ok(n) = conn.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        let heads = buf[..n].windows(4).filter(|w| w == b"\r\n\r\n").count();
                        for _ in 0..heads {
                            conn.write_all(answer.as_bytes()).await.unwrap();
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn the_open_loop_sends_every_planned_request_and_times_its_pacer() {
        let addr = server("200 OK").await;
        let request: Arc<[u8]> = lean::get("/", "bench").into();
        let r = open_lean(addr, 2000, 4, Duration::from_millis(150), request)
            .await
            .unwrap();
        assert_eq!(r.requests, 300, "2000 per second for 150 ms");
        assert_eq!(r.errors, 0);
        assert_eq!(r.latency.len(), 300);
        let late = r.late.len();
        assert!(late > 0 && late <= 300, "lateness of {late} requests");
    }

    /// A server that takes connections and never answers.
    async fn silent_server() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_target_that_stalls_ends_both_loops_with_every_request_failed() {
        let addr = silent_server().await;
        let request: Arc<[u8]> = lean::get("/", "bench").into();
        let (open, closed) = tokio::join!(
            open_lean(
                addr,
                100,
                2,
                Duration::from_millis(100),
                Arc::clone(&request)
            ),
            closed_lean(addr, 2, Duration::from_millis(100), 1000, request),
        );
        let (open, closed) = (open.unwrap(), closed.unwrap());
        assert_eq!(
            (open.requests, open.errors),
            (10, 10),
            "all planned, all failed"
        );
        assert_eq!(
            (closed.requests, closed.errors),
            (2, 2),
            "one stuck per connection"
        );
    }

    #[tokio::test]
    async fn answers_other_than_2xx_count_as_errors_in_both_loops() {
        let addr = server("503 Busy").await;
        let request: Arc<[u8]> = lean::get("/", "bench").into();
        let open = open_lean(
            addr,
            1000,
            2,
            Duration::from_millis(20),
            Arc::clone(&request),
        )
        .await
        .unwrap();
        assert_eq!((open.requests, open.errors), (20, 20));
        let closed = closed_lean(addr, 2, Duration::from_secs(5), 10, request)
            .await
            .unwrap();
        assert_eq!((closed.requests, closed.errors), (10, 10));
    }
}

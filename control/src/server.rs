//! The table server: `GET /v1/table` with an ETag, `If-None-Match` and
//! long-poll (`?wait=30s`), behind a bearer token; proxies' reports
//! (`POST /v1/report`) and their listing (`/v1/proxies`); `/v1/status`,
//! `/health` and `/metrics`.

use crate::builder::Numbering;
use crate::history::History;
use crate::metrics::ControlMetrics;
use crate::registry::Registry;
use bytes::Bytes;
use edgeroute_config::accept::{Open, Room};
use edgeroute_config::{ProxyReport, RoutingTable};
use headers::{ETag, HeaderMapExt, IfNoneMatch};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A table as served: its JSON and ETag computed once.
pub struct Published {
    pub table: RoutingTable,
    pub json: Bytes,
    /// `"epoch-version-digest"`: replicas that number two different
    /// tables alike (a change read in the same millisecond) still tag
    /// them apart.
    pub etag: HeaderValue,
    /// [`RoutingTable::routing_digest`].
    pub routing: String,
}

impl Published {
    pub fn new(table: RoutingTable) -> Self {
        let json = Bytes::from(serde_json::to_vec(&table).unwrap_or_default());
        let routing = table.routing_digest();
        let etag =
            HeaderValue::from_str(&format!("\"{}-{}-{routing}\"", table.epoch, table.version))
                .unwrap_or_else(|_| HeaderValue::from_static("\"0-0\""));
        Published {
            table,
            json,
            etag,
            routing,
        }
    }

    /// The numbering an entity tag written by [`Published::new`] names
    /// (weak or strong); `None` for any other tag.
    pub fn numbering_of(tag: &str) -> Option<Numbering> {
        let tag = tag.trim();
        let opaque = tag.strip_prefix("W/").unwrap_or(tag);
        let inner = opaque.strip_prefix('"')?.strip_suffix('"')?;
        let mut parts = inner.splitn(3, '-');
        // As written: no sign, no leading zeros.
        let number = |part: &str| {
            let n: u64 = part.parse().ok()?;
            (n.to_string() == part).then_some(n)
        };
        let epoch = number(parts.next()?)?;
        let version = number(parts.next()?)?;
        let routing = parts.next()?;
        edgeroute_config::is_digest(routing).then(|| Numbering {
            epoch,
            version,
            routing: routing.to_owned(),
        })
    }

    /// `n` numbers this table higher: the same table, as another replica
    /// numbers it.
    pub fn outnumbered_by(&self, n: &Numbering) -> bool {
        n.outnumbers(&self.table, &self.routing)
    }

    /// `n` is numbered as high as this table or higher, whatever it
    /// says: who holds it has nothing to learn from this table (the same
    /// table, which this replica takes up the numbering of, or a change
    /// another replica has read and this one has not yet, which a proxy
    /// holding it would refuse this table for).
    fn no_newer_than(&self, n: &Numbering) -> bool {
        (n.epoch, n.version) >= (self.table.epoch, self.table.version)
    }
}

pub struct ServerState {
    /// Read again every 10 s; the token before a change is accepted
    /// for 10 minutes after it.
    pub token: Arc<edgeroute_config::TokenFile>,
    pub max_wait: Duration,
    pub table: watch::Receiver<Option<Arc<Published>>>,
    pub metrics: Arc<ControlMetrics>,
    pub registry: Arc<Registry>,
    /// Proxies that reported within this are listed.
    pub proxy_max_age: Duration,
    pub history_file: PathBuf,
    pub automation: bool,
    /// Where a proxy's higher numbering of the table served goes, with
    /// who named it for the log (to the source's task, which owns the
    /// table's numbers).
    pub numbering: tokio::sync::mpsc::Sender<(Numbering, String)>,
    /// This process, among replicas: a random id of its own, in
    /// `/v1/status`, by which the commands tell one replica listed twice
    /// (or left out) in `actions.replica_urls`.
    pub instance: String,
}

/// At most ten lines a second for requests refused for want of the token
/// (see [`edgeroute_config::LogBudget`]).
static REFUSED: edgeroute_config::LogBudget = edgeroute_config::LogBudget::new();

/// Largest proxy report accepted.
const MAX_REPORT: usize = 64 * 1024;
/// How long a client may take to send a request head, and how long a
/// connection may idle between requests (hyper counts both alike). Longer
/// than a proxy's report interval, 10 s by default.
const HEAD_TIME: Duration = Duration::from_secs(30);
/// How long a client may take to send a report's body (at most
/// [`MAX_REPORT`] bytes), once its head has come: a client that stops
/// halfway does not hold its connection for good.
const BODY_TIME: Duration = Duration::from_secs(10);

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIME: Duration = Duration::from_secs(10);

/// What the table server speaks over TLS.
pub const ALPN: &[&[u8]] = &[b"http/1.1"];

/// The TLS configuration a new connection is served with: put in place
/// again when `server.client_ca` changes (see [`watch_certificate`]; the
/// server's certificate reloads within it).
pub type Tls = Arc<arc_swap::ArcSwap<rustls::ServerConfig>>;

/// `server.client_ca`, watched with the certificate: `read` holds the
/// bytes in force (those read at start, first).
pub struct ClientCa {
    pub path: std::path::PathBuf,
    pub tls: Tls,
    pub read: Option<Vec<u8>>,
}

/// Serves `listener` until the task is dropped: HTTPS with `tls`, else
/// plain HTTP; at most `room`'s bound of connections at once. Returns only
/// when the listening socket is broken, with its error.
pub async fn serve(
    state: Arc<ServerState>,
    listener: TcpListener,
    tls: Option<Tls>,
    room: Room,
) -> std::io::Error {
    loop {
        let (stream, peer, permit) = match room.accept(&listener).await {
            Ok(accepted) => accepted,
            Err(e) => return e,
        };
        let state = Arc::clone(&state);
        let tls = tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.load_full()));
        tokio::spawn(async move {
            let _open = (Open::new(&state.metrics.connections), permit);
            let Some(acceptor) = tls else {
                return serve_connection(state, stream, peer).await;
            };
            match tokio::time::timeout(HANDSHAKE_TIME, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => serve_connection(state, stream, peer).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake not done within {HANDSHAKE_TIME:?}");
                }
            }
        });
    }
}

async fn serve_connection<S>(state: Arc<ServerState>, stream: S, peer: std::net::SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let state = Arc::clone(&state);
        async move { Ok::<_, std::convert::Infallible>(handle(&state, req, peer).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        // A client that never finishes its request head is closed
        // rather than held open.
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEAD_TIME)
        .serve_connection(TokioIo::new(stream), svc)
        .await
    {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Until the task is dropped, every [`edgeroute_config::tls::WATCH_INTERVAL`]
/// and at once on SIGHUP: `server.tls`'s files read again and a changed
/// pair put in force for new connections. Files that cannot be used leave
/// the certificate in force, logged and counted in
/// `edgeroute_control_tls_certificate_reloads_total{result="failed"}`; the
/// expiry of the one in force is kept in
/// `edgeroute_control_tls_certificate_expiry_timestamp_seconds`, and one in
/// force outside its dates is logged once.
pub async fn watch_certificate(
    cert: Arc<edgeroute_config::tls::TlsCert>,
    metrics: Arc<ControlMetrics>,
    hangups: tokio::signal::unix::Signal,
    client_ca: Option<ClientCa>,
) {
    let watched = Watched {
        cert,
        reloads: metrics.tls_certificate_reloads.clone(),
        expiry: metrics.tls_certificate_expiry.clone(),
    };
    watched.watch(hangups, client_ca).await;
}

/// [`watch_certificate`] for the certificate the automation presents to
/// the other replicas (`actions.client_tls`), so that one renewed on disk
/// is presented from then on: its reloads and expiry in
/// `edgeroute_control_client_certificate_reloads_total` and
/// `edgeroute_control_client_certificate_expiry_timestamp_seconds`.
pub async fn watch_client_certificate(
    cert: Arc<edgeroute_config::tls::TlsCert>,
    metrics: Arc<ControlMetrics>,
    hangups: tokio::signal::unix::Signal,
) {
    for result in ["ok", "failed"] {
        metrics
            .client_certificate_reloads
            .with_label_values(&[result]);
    }
    let watched = Watched {
        cert,
        reloads: metrics.client_certificate_reloads.clone(),
        expiry: metrics.client_certificate_expiry.clone(),
    };
    watched.watch(hangups, None).await;
}

/// A certificate read again while the control plane runs, with where its
/// reloads (by result) and its expiry are counted.
struct Watched {
    cert: Arc<edgeroute_config::tls::TlsCert>,
    reloads: prometheus::IntCounterVec,
    expiry: prometheus::IntGaugeVec,
}

impl Watched {
    /// Every [`edgeroute_config::tls::WATCH_INTERVAL`] and at once on
    /// SIGHUP, until the task is dropped: the files read again, and then
    /// `client_ca`'s, for a server certificate.
    async fn watch(
        &self,
        mut hangups: tokio::signal::unix::Signal,
        mut client_ca: Option<ClientCa>,
    ) {
        use edgeroute_config::tls::{Reload, WATCH_INTERVAL, unix_now};
        let name = self.cert.name().to_owned();
        let mut faulty = false;
        let expires = || {
            self.expiry
                .with_label_values::<&str>(&[])
                .set(self.cert.validity().not_after);
        };
        expires();
        self.cert.log_dates(unix_now(), &mut faulty);
        let mut ticks = tokio::time::interval(WATCH_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            let forced = tokio::select! {
                _ = ticks.tick() => false,
                _ = hangups.recv() => {
                    tracing::info!("SIGHUP: reading {name}'s files again");
                    true
                }
            };
            let reloading = Arc::clone(&self.cert);
            match tokio::task::spawn_blocking(move || reloading.reload_logged(forced)).await {
                Ok(Reload::Unchanged) => {}
                Ok(Reload::Loaded) => {
                    self.reloads.with_label_values(&["ok"]).inc();
                    expires();
                    // A certificate put in force outside its dates is logged.
                    faulty = false;
                }
                Ok(Reload::Failed(_)) => self.reloads.with_label_values(&["failed"]).inc(),
                Err(e) => tracing::error!(tls = %name, error = %e, "one certificate reload failed"),
            }
            self.cert.log_dates(unix_now(), &mut faulty);
            if let Some(ca) = client_ca.as_mut() {
                reread_client_ca(ca, &self.cert, forced).await;
            }
        }
    }
}

/// Reads `server.client_ca` again and, when its bytes changed (or
/// `forced`), puts in place a TLS configuration that asks new
/// connections for certificates it signs. A file that cannot be used
/// leaves the CAs in force, with an error line, once per content.
async fn reread_client_ca(
    ca: &mut ClientCa,
    cert: &Arc<edgeroute_config::tls::TlsCert>,
    forced: bool,
) {
    const FIELD: &str = "server.client_ca";
    let path = ca.path.clone();
    // A regular file of at most 1 MiB, read without blocking on a pipe;
    // the verifier is built from the very bytes compared, only when they
    // changed.
    let read =
        tokio::task::spawn_blocking(move || edgeroute_config::tls::read_ca_file(&path, FIELD))
            .await;
    let pem = match read {
        Ok(Ok(pem)) => pem,
        Ok(Err(e)) => {
            if ca.read.take().is_some() || forced {
                tracing::error!(error = %e, "cannot read server.client_ca again; the CAs read before stay in force");
            }
            return;
        }
        Err(e) => return tracing::error!(error = %e, "one read of server.client_ca failed"),
    };
    if ca.read.as_ref() == Some(&pem) && !forced {
        return;
    }
    match edgeroute_config::tls::client_verifier_of(&pem, &ca.path, FIELD) {
        Ok(verifier) => {
            ca.tls.store(cert.server_config_for(ALPN, Some(verifier)));
            tracing::info!(path = %ca.path.display(), "server.client_ca read again: new connections need certificates its CAs sign");
        }
        Err(e) => {
            tracing::error!(error = %e, "server.client_ca changed but cannot be used; the CAs read before stay in force");
        }
    }
    ca.read = Some(pem);
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
    let presented = req.headers().get(header::AUTHORIZATION);
    state.token.accepts(presented.map(|v| v.as_bytes()))
}

/// `?wait=30s` (or `?wait=30`, in seconds): `Ok(None)` without one, an
/// error naming the value when it is not a duration.
fn wait_param(req: &Request<Incoming>) -> Result<Option<Duration>, String> {
    let Some(raw) = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("wait=")))
    else {
        return Ok(None);
    };
    raw.parse::<u64>()
        .map(Duration::from_secs)
        .ok()
        .or_else(|| humantime::parse_duration(raw).ok())
        .map(Some)
        .ok_or_else(|| {
            format!("wait must be a duration such as \"30s\" or a number of seconds, got {raw:?}")
        })
}

async fn handle(
    state: &ServerState,
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
) -> Response<Full<Bytes>> {
    // A client without the token (a health checker, or anyone) gets its
    // answer and the connection closed: kept open, such connections
    // could fill `server.max_connections` and lock the proxies out.
    let trusted = authorized(state, &req);
    // Said of a refusal for want of the token, below (`/health` needs none).
    let asked = (!trusted && req.uri().path() != "/health").then(|| {
        (
            edgeroute_config::logged_path(req.uri().path()).to_owned(),
            req.headers().contains_key(header::AUTHORIZATION),
        )
    });
    let mut resp = if req.uri().path() == "/v1/report" {
        report(state, req, trusted).await
    } else {
        route(state, &req, trusted).await
    };
    if let Some((path, presented)) = asked
        && resp.status() == StatusCode::UNAUTHORIZED
        && let Some(left_out) = REFUSED.take()
    {
        tracing::warn!(
            path,
            client = %peer,
            presented_a_token = presented,
            left_out,
            "a request without the token was refused (401): a proxy or command with an old or wrong token, or none; the token is in server.token_file"
        );
    }
    if !trusted {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    state
        .metrics
        .requests
        .with_label_values(&[resp.status().as_str()])
        .inc();
    resp
}

/// The paths read with `GET` (or `HEAD`).
const READ_PATHS: [&str; 5] = [
    "/health",
    "/metrics",
    "/v1/table",
    "/v1/proxies",
    "/v1/status",
];

/// A 405 that says, in `Allow`, which methods the path takes.
fn not_allowed(allow: &'static str, message: &str) -> Response<Full<Bytes>> {
    let mut resp = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        message,
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// `trusted`: the request presents the token.
async fn route(
    state: &ServerState,
    req: &Request<Incoming>,
    trusted: bool,
) -> Response<Full<Bytes>> {
    if !READ_PATHS.contains(&req.uri().path()) {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "try /v1/table, /v1/proxies, /v1/status, /health or /metrics",
        );
    }
    // HEAD is answered as GET is, without the body (the server leaves it
    // out), as a health checker may ask.
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return not_allowed("GET, HEAD", "only GET and HEAD are served here");
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
        "/metrics" if trusted => {
            refresh_gauges(state);
            reply(StatusCode::OK, "text/plain; version=0.0.4", state.metrics.render())
        }
        "/v1/table" if trusted => table(state, req).await,
        "/v1/proxies" if trusted => {
            let proxies = state.registry.fresh(state.proxy_max_age, Instant::now());
            json(&ProxiesReply { max_age_seconds: state.proxy_max_age.as_secs_f64(), proxies: &proxies })
        }
        "/v1/status" if trusted => status(state),
        // One of READ_PATHS, which all but /health keep for the token.
        _ => unauthorized(),
    }
}

fn unauthorized() -> Response<Full<Bytes>> {
    let mut resp = error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "send `Authorization: Bearer <token>` with the token in the control plane's server.token_file",
    );
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// A reply written straight from `v`: the proxies' reports are not
/// copied into a JSON tree first (10,000 large ones took hundreds of MB
/// that way).
fn json(v: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec(v) {
        Ok(body) => reply(StatusCode::OK, "application/json", body),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            &format!("cannot write the answer: {e}"),
        ),
    }
}

/// `GET /v1/proxies` (fields in name order, as before).
#[derive(serde::Serialize)]
struct ProxiesReply<'a> {
    max_age_seconds: f64,
    proxies: &'a [crate::registry::ProxyStatus],
}

/// `GET /v1/status` (fields in name order, as before).
#[derive(serde::Serialize)]
struct StatusReply<'a> {
    automation: Automation,
    history_error: Option<&'a str>,
    instance: &'a str,
    last_drill: Option<&'a crate::history::Operation>,
    last_failover: Option<&'a crate::history::Operation>,
    proxies: &'a [crate::registry::ProxyStatus],
    /// The last read of the source failed: the table is the last good one.
    source_stale: bool,
    table: Option<&'a edgeroute_config::RoutingTable>,
}

#[derive(serde::Serialize)]
struct Automation {
    enabled: bool,
}

/// The proxies' gauges, against the table served now.
fn refresh_gauges(state: &ServerState) {
    let proxies = state.registry.fresh(state.proxy_max_age, Instant::now());
    let behind = state
        .table
        .borrow()
        .as_ref()
        .map_or(0, |p| crate::registry::behind(&proxies, &p.table).count());
    state.metrics.proxies_reporting.set(proxies.len() as i64);
    state.metrics.proxies_behind.set(behind as i64);
    if let Ok(h) = History::load(&state.history_file) {
        let drill = h.last_drill();
        state
            .metrics
            .last_drill
            .set(drill.map_or(0, |o| (o.started_ms / 1000) as i64));
        state
            .metrics
            .last_drill_ok
            .set(i64::from(drill.is_some_and(|o| o.ok)));
    }
}

/// The table, the proxies, the last failover and the last drill.
fn status(state: &ServerState) -> Response<Full<Bytes>> {
    let table = state.table.borrow().as_ref().map(|p| p.table.clone());
    let proxies = state.registry.fresh(state.proxy_max_age, Instant::now());
    let history = History::load(&state.history_file);
    let (last_failover, last_drill, history_error) = match &history {
        Ok(h) => (h.last_writer_move(), h.last_drill(), None),
        Err(e) => (None, None, Some(e.as_str())),
    };
    json(&StatusReply {
        automation: Automation {
            enabled: state.automation,
        },
        history_error,
        instance: &state.instance,
        last_drill,
        last_failover,
        proxies: &proxies,
        source_stale: state.metrics.source_stale.get() == 1,
        table: table.as_ref(),
    })
}

/// `POST /v1/report`: a proxy's table and health, authenticated.
/// `trusted`: the request presents the token.
async fn report(
    state: &ServerState,
    req: Request<Incoming>,
    trusted: bool,
) -> Response<Full<Bytes>> {
    if req.method() != Method::POST {
        return not_allowed("POST", "POST a proxy report to /v1/report");
    }
    if !trusted {
        return unauthorized();
    }
    let body = match tokio::time::timeout(
        BODY_TIME,
        Limited::new(req.into_body(), MAX_REPORT).collect(),
    )
    .await
    {
        Ok(Ok(b)) => b.to_bytes(),
        Err(_) => {
            state.metrics.reports.with_label_values(&["invalid"]).inc();
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "bad_report",
                &format!(
                    "the report's body did not arrive within {} s",
                    BODY_TIME.as_secs()
                ),
            );
        }
        Ok(Err(e)) => {
            state.metrics.reports.with_label_values(&["invalid"]).inc();
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "bad_report",
                &format!("a report is at most {MAX_REPORT} bytes ({e})"),
            );
        }
    };
    match ProxyReport::from_json(&body) {
        Ok(r) => {
            if let Some(routing) = &r.routing {
                let n = Numbering {
                    epoch: r.epoch,
                    version: r.version,
                    routing: routing.clone(),
                };
                offer_numbering(state, n, &format_args!("the report of proxy {}", r.id));
            }
            let recorded = state.registry.record(r, Instant::now());
            state.metrics.reports.with_label_values(&["accepted"]).inc();
            if recorded.forgot_live {
                state.metrics.proxies_forgotten.inc();
            }
            if let Some(n) = recorded.warn {
                tracing::warn!(
                    forgotten = n,
                    max = crate::registry::MAX_PROXIES,
                    "the registry of reporting proxies is full: the proxies heard from longest ago were forgotten to make room (they count again with their next report); more proxy ids report than it holds, as when proxies restart often under new ids"
                );
            }
            reply(StatusCode::NO_CONTENT, "application/json", Bytes::new())
        }
        Err(why) => {
            state.metrics.reports.with_label_values(&["invalid"]).inc();
            error(StatusCode::BAD_REQUEST, "bad_report", &why)
        }
    }
}

/// Passes on a proxy's numbering of the table served when it is higher
/// than this replica's (another replica's, behind the same address):
/// the source's task takes it (see [`crate::builder::Builder::adopt`]).
/// `from` says where it came from, for the log. A numbering beyond the
/// clock is no replica's: it is not taken, and said (at most ten lines a
/// second).
fn offer_numbering(state: &ServerState, n: Numbering, from: &dyn std::fmt::Display) {
    let higher = state
        .table
        .borrow()
        .as_ref()
        .is_some_and(|p| p.outnumbered_by(&n));
    if !higher {
        return;
    }
    if !n.within_clock(crate::source::now_ms()) {
        if AHEAD_OF_CLOCK.take().is_some() {
            tracing::warn!(
                from = %from,
                epoch = n.epoch,
                version = n.version,
                "a proxy routes on this table under an epoch or version more than two seconds ahead of this control plane's clock: not taken (no replica hands such out; check that the replicas' clocks agree, and the control planes this proxy was given)"
            );
        }
        return;
    }
    // Full: the task is behind, and the proxies ask and report again.
    let _ = state.numbering.try_send((n, from.to_string()));
}

/// Lines for numberings ahead of the clock.
static AHEAD_OF_CLOCK: edgeroute_config::LogBudget = edgeroute_config::LogBudget::new();

/// Whether an `If-None-Match` names the table whose tag is `etag`: `*`, or
/// a list holding it, weak or strong (RFC 9110 §13.1.2).
fn names(if_none_match: Option<&IfNoneMatch>, etag: &HeaderValue) -> bool {
    let etag = etag.to_str().ok().and_then(|t| t.parse::<ETag>().ok());
    match (if_none_match, etag) {
        (Some(condition), Some(etag)) => !condition.precondition_passes(&etag),
        _ => false,
    }
}

async fn table(state: &ServerState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let wait = match wait_param(req) {
        Ok(w) => w,
        Err(why) => return error(StatusCode::BAD_REQUEST, "bad_wait", &why),
    };
    let mut rx = state.table.clone();
    let known: Option<IfNoneMatch> = req.headers().typed_get();
    // The tables this server's replicas wrote that the request names: a
    // proxy names the one it routes on, which may be another replica's
    // numbering of this replica's table.
    let held: Vec<Numbering> = req
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .take(8)
        .filter_map(Published::numbering_of)
        .collect();
    for n in &held {
        offer_numbering(state, n.clone(), &"a table request");
    }
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
    // The client has nothing to learn: it holds this table, or one
    // numbered as high or higher (this table as another replica numbers
    // it, or a change this replica has yet to read): it waits, for a
    // change or the deadline.
    let nothing_new =
        |p: &Published| names(known.as_ref(), &p.etag) || held.iter().any(|n| p.no_newer_than(n));
    if nothing_new(&current)
        && let Some(wait) = wait
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
                    if !nothing_new(&current) {
                        break;
                    }
                }
            }
        }
    }
    if names(known.as_ref(), &current.etag) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_etag_names_its_tables_numbering_and_nothing_else_names_one() {
        let table = RoutingTable {
            epoch: 1_800_000_000,
            version: 1_800_000_000_123,
            primary_region: Some("us-east-1".into()),
            failover_in_progress: false,
            regions: Vec::new(),
        };
        let p = Published::new(table.clone());
        let tag = p.etag.to_str().unwrap();
        let n = Published::numbering_of(tag).expect("its own tag");
        assert_eq!(
            (n.epoch, n.version, n.routing.as_str()),
            (table.epoch, table.version, p.routing.as_str())
        );
        assert_eq!(
            Published::numbering_of(&format!(" W/{tag}")),
            Some(n.clone())
        );
        assert!(!p.outnumbered_by(&n) && p.no_newer_than(&n));
        let higher = Numbering {
            version: n.version + 1,
            ..n.clone()
        };
        assert!(p.outnumbered_by(&higher) && p.no_newer_than(&higher));
        let other = Numbering {
            routing: "0000000000000000".into(),
            ..higher
        };
        assert!(!p.outnumbered_by(&other) && p.no_newer_than(&other));
        let lower = Numbering {
            epoch: n.epoch - 1,
            ..other
        };
        assert!(!p.no_newer_than(&lower));
        for foreign in [
            "*",
            "\"5-17\"",
            "5-17-0123456789abcdef",
            "\"5-17-0123456789abcdeX\"",
            "\"x-17-0123456789abcdef\"",
            "\"5-17-0123456789abcdef0\"",
            "\"5-17-0123456789ABCDEF\"",
            "\"+5-17-0123456789abcdef\"",
            "\"5-017-0123456789abcdef\"",
        ] {
            assert_eq!(Published::numbering_of(foreign), None, "{foreign}");
        }
    }
}

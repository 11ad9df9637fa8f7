//! Where routing tables come from. The file source reloads on SIGHUP and
//! whenever the file's content changes (checked every `watch_interval`,
//! which also catches the symlink swaps Kubernetes uses for ConfigMaps).
//! The control source long-polls the control plane; on errors it keeps the
//! table in force and backs off.

use crate::lifecycle::Rereads;
use crate::state::AppState;
use edgeroute_config::tls::TlsCert;
use edgeroute_config::{ProxyReport, RegionHealth, RoutingTable};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Loads the file once; used at start-up, where a missing or bad table is
/// fatal. Returns the bytes taken, for [`watch_file`].
pub fn load_initial(state: &AppState, path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = RoutingTable::read_file(path)
        .map_err(|e| anyhow::anyhow!("cannot read routing table {}: {e}", path.display()))?;
    state
        .offer_table(&bytes, &path.display().to_string())
        .map_err(|r| anyhow::anyhow!("routing table {} rejected: {r}", path.display()))?;
    Ok(bytes)
}

/// A file's size and time of change.
type FileStamp = (u64, Option<std::time::SystemTime>);

/// Watches the file until shutdown; `in_force`: the bytes [`load_initial`]
/// put in force.
pub async fn watch_file(
    state: Arc<AppState>,
    path: PathBuf,
    interval: Duration,
    in_force: Vec<u8>,
) {
    let source = path.display().to_string();
    let mut last = Some(in_force);
    // Whether the file's last bytes were taken: only those confirm the
    // table in force when read again, so a file left holding a refused
    // table lets `edgeroute_table_age_seconds` grow.
    let mut taken = true;
    // Why the file could not be read last time, and the size and time of
    // change it had then: it is logged and counted again only when either
    // changes (a file replaced by another too large, then removed), not at
    // every reread.
    let mut unreadable: Option<(String, Option<FileStamp>)> = None;
    let mut rereads = Rereads::new(interval, "the table file");
    while let Some(forced) = rereads.next(&state.lifecycle).await {
        let reading = path.clone();
        let (read, stat) = tokio::task::spawn_blocking(move || {
            let stat = std::fs::metadata(&reading)
                .ok()
                .map(|m| (m.len(), m.modified().ok()));
            (RoutingTable::read_file(&reading), stat)
        })
        .await
        .unwrap_or_else(|e| (Err(std::io::Error::other(e)), None));
        if read.is_ok() {
            unreadable = None;
        }
        match read {
            Ok(bytes) => {
                if forced || last.as_deref() != Some(bytes.as_slice()) {
                    if forced {
                        tracing::info!(source = %source, "SIGHUP: reloading the routing table");
                    }
                    // The outcome is logged and counted inside offer_table.
                    taken = state.offer_table(&bytes, &source).is_ok();
                    last = Some(bytes);
                } else if taken {
                    state.table_confirmed();
                }
            }
            Err(e) => {
                let now = Some((e.to_string(), stat));
                if forced || last.is_some() || unreadable != now {
                    state.table_unreadable(&source, &e);
                }
                unreadable = now;
                last = None;
            }
        }
    }
}

/// How the proxy reaches the control plane: plain HTTP, or HTTPS checked
/// against `table.ca_file` (else the system's CAs). One for the table and
/// the reports.
pub type Connector =
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// The [`Connector`] for the control plane at `url`, presenting
/// `identity` (`table.client_tls`) when the control plane asks for a
/// client certificate. For an `https://` URL, an error says why its CA
/// certificates cannot be used.
pub fn connector(
    url: &str,
    ca_file: Option<&Path>,
    identity: Option<Arc<TlsCert>>,
) -> Result<Connector, String> {
    let tls = if url.starts_with("https://") {
        edgeroute_config::tls::client_config(ca_file, "table.ca_file", identity)?
    } else {
        // Never used: an http:// URL makes no TLS connection.
        rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    };
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build())
}

/// Whether two ETags name the same table, compared weakly (RFC 9110
/// §8.8.3.2), as the control plane compares `If-None-Match`: by the
/// same `headers` rule. A missing tag, or one that is no ETag, names none.
fn same_tag(a: Option<&http::HeaderValue>, b: Option<&http::HeaderValue>) -> bool {
    let tag = |t: &http::HeaderValue| t.to_str().ok()?.parse::<headers::ETag>().ok();
    match (a.and_then(tag), b.and_then(tag)) {
        (Some(a), Some(b)) => !headers::IfNoneMatch::from(b).precondition_passes(&a),
        _ => false,
    }
}

/// How long the control plane may take to answer: past a long-poll's
/// `wait` for a table's head, again for its body once the head has come,
/// and for a report.
const ANSWER_TIME: Duration = Duration::from_secs(10);

/// The least time between two asks of the control plane whose answers
/// brought no new table: a long poll waits for a change, but a server that
/// answers at once (no `ETag`, no long poll) would otherwise be asked
/// again without pause.
const MIN_ASK_INTERVAL: Duration = Duration::from_secs(1);

/// The least time between two asks whose first brought a new table: a
/// control plane's tables change a few times in a failover, seconds apart,
/// and one that answered every ask with a new table (a broken one, or a
/// source that flaps) is asked at most ten times a second, and reported
/// to as often, not as fast as it answers.
const MIN_CHANGE_INTERVAL: Duration = Duration::from_millis(100);

/// Long-polls `url/v1/table` until shutdown. Every answer is offered to the
/// router, which admits only valid tables that do not go back in epoch; on
/// errors the table in force stays and the poller backs off, doubling the
/// pause up to `max_backoff`.
pub async fn poll_control(
    state: Arc<AppState>,
    url: String,
    connector: Connector,
    auth: Arc<edgeroute_config::TokenFile>,
    wait: Duration,
    max_backoff: Duration,
) {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    // A connection per request: behind a load balancer that balances
    // connections, the requests reach every control plane replica in
    // turn; the proxy routes on the highest numbering of the table any of
    // them serves, and names it in If-None-Match to each, which takes it.
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector);
    let source = format!("{url}/v1/table");
    let mut etag: Option<http::HeaderValue> = None;
    // Whether the table behind `etag` was admitted: a 304 for a rejected
    // table confirms nothing about the table in force.
    let mut etag_admitted = false;
    // The tag the table in force came with: named again after an answer
    // that numbers it lower, so that a replica behind one address with
    // others takes up its numbering (README, "Several replicas").
    let mut in_force_tag: Option<http::HeaderValue> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let asked = tokio::time::Instant::now();
        // Whether this answer put a new table in force.
        let mut changed = false;
        let uri = format!("{source}?wait={}s", wait.as_secs().max(1));
        let mut req = http::Request::get(&uri).header(http::header::AUTHORIZATION, bearer(&auth));
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
        let head_within = wait + ANSWER_TIME;
        let outcome = tokio::select! {
            _ = state.lifecycle.shutdown_started() => return,
            r = tokio::time::timeout(head_within, client.request(req)) => r,
        };
        let failure = match outcome {
            Err(_) => Some(format!("no answer within {head_within:?}")),
            Ok(Err(e)) => Some(format!(
                "cannot reach the control plane: {}{}",
                edgeroute_config::error_chain(&e),
                edgeroute_config::tls::client_advice(
                    &e,
                    edgeroute_config::tls::ClientFields {
                        ca: "table.ca_file",
                        url: "table.url",
                        client_tls: "table.client_tls",
                        https: url.starts_with("https://"),
                    }
                )
            )),
            Ok(Ok(resp)) => {
                let status = resp.status();
                let tag = resp.headers().get(http::header::ETAG).cloned();
                // A cache's stored answer carries its age (RFC 9111 §5.1):
                // it is no word from the control plane now.
                let age = resp.headers().get(http::header::AGE).cloned();
                match status {
                    http::StatusCode::OK | http::StatusCode::NOT_MODIFIED if age.is_some() => {
                        etag = None;
                        etag_admitted = false;
                        Some(format!(
                            "a cache answered for the control plane ({status}, Age: {}); its answers say Cache-Control: no-store, so a cache between them keeps what it must not: its answer is not taken, and the table is asked for whole",
                            age.as_ref().and_then(|a| a.to_str().ok()).unwrap_or("?")
                        ))
                    }
                    // Not modified since nothing: no answer at all.
                    http::StatusCode::NOT_MODIFIED if etag.is_none() => Some(
                        "the control plane answered 304 Not Modified to a request that named no table (no If-None-Match)".to_owned(),
                    ),
                    // The table asked about, and only that one, is
                    // confirmed: a 304 naming another (or none) says
                    // nothing of ours, and the next request asks for the
                    // table whole.
                    http::StatusCode::NOT_MODIFIED if !same_tag(tag.as_ref(), etag.as_ref()) => {
                        let text = |t: &http::HeaderValue| t.to_str().unwrap_or("(not text)").to_owned();
                        let said = format!(
                            "the control plane answered 304 Not Modified {}, not for the one asked about (ETag {}); not taken as a confirmation, and the table is asked for whole",
                            tag.as_ref().map_or("naming no table (no ETag)".to_owned(), |t| format!("for the table with ETag {}", text(t))),
                            etag.as_ref().map_or(String::new(), text),
                        );
                        etag = None;
                        etag_admitted = false;
                        Some(said)
                    }
                    http::StatusCode::NOT_MODIFIED => {
                        if etag_admitted {
                            state.table_confirmed();
                        }
                        None
                    }
                    // The body is bounded in size, and in time as the
                    // head was: a control plane stalling mid-body is retried.
                    http::StatusCode::OK => match tokio::time::timeout(
                        ANSWER_TIME,
                        http_body_util::Limited::new(
                            resp.into_body(),
                            edgeroute_config::MAX_TABLE_BYTES as usize,
                        )
                        .collect(),
                    )
                    .await
                    {
                        Err(_) => Some(format!("the table's body took over {ANSWER_TIME:?}")),
                        Ok(Ok(body)) => {
                            // Rejections are logged and counted inside offer_table.
                            use edgeroute_config::Admission;
                            let offered = state.offer_table(&body.to_bytes(), &source);
                            changed = matches!(offered, Ok(Admission::Accepted));
                            match offered {
                                Ok(Admission::Accepted | Admission::Unchanged) => {
                                    in_force_tag.clone_from(&tag);
                                    etag_admitted = true;
                                    etag = tag;
                                }
                                // The next request names the table in force.
                                Ok(Admission::LowerNumbering) => {
                                    etag_admitted = in_force_tag.is_some();
                                    etag.clone_from(&in_force_tag);
                                }
                                // Wait for the next change, rather than
                                // fetching a rejected table again at once.
                                Err(_) => {
                                    etag_admitted = false;
                                    etag = tag;
                                }
                            }
                            None
                        }
                        // Too large to be a table: rejected like one that
                        // is not, until the control plane's next change.
                        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                            let why = format!(
                                "the control plane's table is larger than {} bytes",
                                edgeroute_config::MAX_TABLE_BYTES
                            );
                            state.table_unreadable(&source, &why);
                            etag_admitted = false;
                            etag = tag;
                            None
                        }
                        Ok(Err(e)) => Some(format!("reading the table failed: {e}")),
                    },
                    http::StatusCode::UNAUTHORIZED => {
                        // Rotated here first: the token before is offered next.
                        auth.refused();
                        Some(
                            "the control plane refused the token in table.token_file (read again every 10 s: put the control plane's server.token_file token there)"
                                .to_owned(),
                        )
                    }
                    other => Some(format!("the control plane answered {other}")),
                }
            }
        };
        match failure {
            None => {
                backoff = Duration::from_millis(100);
                let gap = if changed {
                    MIN_CHANGE_INTERVAL
                } else {
                    MIN_ASK_INTERVAL
                };
                tokio::select! {
                    _ = state.lifecycle.shutdown_started() => return,
                    _ = tokio::time::sleep_until(asked + gap) => {}
                }
            }
            Some(why) => {
                state.metrics.control_errors.inc();
                tracing::warn!(url = %source, retry_in = ?backoff, "{why}; {}", state.what_stays());
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

/// The `Authorization` field for the token offered (see
/// [`edgeroute_config::TokenFile::offered`]). A token file's
/// token is visible ASCII (see [`edgeroute_config::token`]), which a
/// field value can always hold.
fn bearer(token: &edgeroute_config::TokenFile) -> http::HeaderValue {
    http::HeaderValue::try_from(format!("Bearer {}", token.offered()))
        .unwrap_or_else(|_| http::HeaderValue::from_static("Bearer"))
}

/// This proxy's report: the table it routes on and what its probes measure.
pub fn report(state: &AppState, id: &str) -> ProxyReport {
    let now = Instant::now();
    let (epoch, version, routing) = state.router.load().as_ref().map_or((0, 0, None), |s| {
        (s.epoch(), s.version(), Some(s.routing_digest.clone()))
    });
    let regions = &state.topology.regions;
    ProxyReport {
        id: id.to_owned(),
        region: regions[state.topology.local].name.to_string(),
        epoch,
        version,
        routing,
        regions: regions
            .iter()
            .map(|r| {
                let (backends, in_rotation) = r.rotation(now);
                RegionHealth {
                    name: r.name.to_string(),
                    backends: backends as u32,
                    in_rotation: in_rotation as u32,
                }
            })
            .collect(),
    }
}

/// `HOSTNAME` (the pod name on Kubernetes) or the kernel's host name, and
/// the process id: the same for a container restarted in its pod, so the
/// control plane does not wait on the id it had before.
fn proxy_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "proxy".into());
    id_of(&host, std::process::id())
}

/// `host/pid`, the host name cut (on a character) to fit
/// [`edgeroute_config::MAX_PROXY_ID`].
fn id_of(host: &str, pid: u32) -> String {
    let tail = format!("/{pid}");
    let room = edgeroute_config::MAX_PROXY_ID - tail.len();
    format!("{}{tail}", &host[..host.floor_char_boundary(room)])
}

/// Posts this proxy's report to `url/v1/report` at once when the table in
/// force or a region's health changes, and every `interval` otherwise, so
/// the control plane can confirm that every proxy moved to a new epoch and
/// count the proxies' vote on each region's health. Failures are counted
/// and retried on the next change or heartbeat; they never touch routing.
pub async fn report_to_control(
    state: Arc<AppState>,
    url: String,
    connector: Connector,
    auth: Arc<edgeroute_config::TokenFile>,
    interval: Duration,
) {
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let client: Client<_, Full<bytes::Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let target = format!("{url}/v1/report");
    let id = proxy_id();
    let mut last: Option<(ProxyReport, Instant)> = None;
    // Health changes are noticed within this.
    let check = Duration::from_millis(250).min(interval);
    // After a failure, the next attempt waits; the pause doubles up to `interval`.
    let mut retry_at: Option<Instant> = None;
    let mut backoff = check;
    loop {
        // Until every backend has been probed once, the report would call
        // regions with unproven backends unhealthy: a proxy that starts
        // (one of many, in a rolling restart) votes only once it knows.
        if !state.first_probes_done() {
            tokio::time::sleep(check).await;
            continue;
        }
        let current = report(&state, &id);
        let due = last
            .as_ref()
            .is_none_or(|(r, at)| *r != current || at.elapsed() >= interval)
            && retry_at.is_none_or(|t| Instant::now() >= t);
        if due {
            let body = serde_json::to_vec(&current).unwrap_or_default();
            let req = http::Request::post(&target)
                .header(http::header::AUTHORIZATION, bearer(&auth))
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(bytes::Bytes::from(body)));
            let sent = match req {
                Ok(req) => match tokio::time::timeout(ANSWER_TIME, client.request(req)).await {
                    Ok(Ok(resp)) if resp.status().is_success() => true,
                    Ok(Ok(resp)) => {
                        if resp.status() == http::StatusCode::UNAUTHORIZED {
                            auth.refused();
                        }
                        tracing::warn!(url = %target, status = %resp.status(), "the control plane refused this proxy's report");
                        false
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(url = %target, error = %edgeroute_config::error_chain(&e), "cannot send this proxy's report");
                        false
                    }
                    Err(_) => false,
                },
                Err(_) => false,
            };
            if sent {
                last = Some((current, Instant::now()));
                retry_at = None;
                backoff = check;
            } else {
                state.metrics.report_errors.inc();
                retry_at = Some(Instant::now() + backoff);
                backoff = (backoff * 2).min(interval);
            }
        }
        tokio::select! {
            _ = state.lifecycle.shutdown_started() => return,
            _ = state.table_changed.notified() => {}
            _ = tokio::time::sleep(check) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_proxy_id_is_host_and_pid_within_the_limit() {
        assert_eq!(super::id_of("api-7f9c", 1), "api-7f9c/1");
        // A long host name of two-byte characters is cut on a character
        // (cutting it by bytes panicked).
        let long = "é".repeat(150);
        let id = super::id_of(&long, u32::MAX);
        assert!(id.len() <= edgeroute_config::MAX_PROXY_ID, "{}", id.len());
        assert!(id.ends_with("é/4294967295"), "{id}");
    }

    #[test]
    fn etags_are_compared_weakly_and_a_missing_one_names_no_table() {
        let v = |t: &'static str| http::HeaderValue::from_static(t);
        let same = |a: Option<&'static str>, b: Option<&'static str>| {
            super::same_tag(a.map(v).as_ref(), b.map(v).as_ref())
        };
        assert!(same(Some("\"5-17\""), Some("\"5-17\"")));
        assert!(same(Some("W/\"5-17\""), Some("\"5-17\"")));
        assert!(same(Some("\"5-17\""), Some("W/\"5-17\"")));
        assert!(!same(Some("\"5-18\""), Some("\"5-17\"")));
        assert!(!same(None, Some("\"5-17\"")));
        assert!(!same(None, None));
    }
}

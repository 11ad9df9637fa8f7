//! Prometheus metrics, in a registry of our own served on the admin listener.

use crate::route::RouteClass;
use crate::topology::{Backend, Topology};
use crate::upstream::Discard;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

pub struct Metrics {
    registry: Registry,
    /// Requests answered, by serving region (`none` when refused), route class and status.
    pub requests: IntCounterVec,
    /// Time from request header to the end of the response, by region and route class.
    pub duration: HistogramVec,
    /// Requests refused by the proxy itself, by reason.
    pub refusals: IntCounterVec,
    /// Answers that ended before their end, by the serving region and the
    /// side that cut them.
    pub responses_cut: IntCounterVec,
    /// Extra attempts made on another backend or region.
    pub retries: IntCounter,
    /// Reads sent to the primary for a client's fresh write.
    pub reads_after_write: IntCounter,
    pub table_epoch: IntGauge,
    /// 1, labelled with the proxy's version and local region (named
    /// `local_region`: `region` labels the serving region elsewhere).
    info: IntGaugeVec,
    /// The content of the table in force.
    pub table: edgeroute_config::TableGauges,
    pub table_version: IntGauge,
    pub table_swaps: IntCounter,
    pub table_rejections: IntCounterVec,
    pub table_last_change: IntGauge,
    pub backend_ejections: IntCounterVec,
    /// Ejections the region's cap prevented.
    pub ejections_suppressed: IntCounterVec,
    /// Picks made in panic mode, by region.
    pub panic_picks: IntCounterVec,
    pub probes: IntCounterVec,
    pub dns_failures: IntCounterVec,
    /// Client connections closed before their first request: a TLS
    /// handshake that failed or did not finish in time, by reason.
    pub tls_handshake_failures: IntCounterVec,
    /// Certificate files read again and put in force, or not, by result.
    pub tls_certificate_reloads: IntCounterVec,
    /// When each TLS listener's certificate in force expires, and the
    /// client certificate presented to the control plane.
    pub tls_certificate_expiry: IntGaugeVec,
    /// HTTP/2 connections the proxy told to go away, by why.
    pub http2_goaways: IntCounterVec,
    backend_up: IntGaugeVec,
    backend_idle_discards: IntCounterVec,
    /// Addresses that left DNS, whose counter series go away.
    departed: Mutex<Departed>,
    backend_inflight: IntGaugeVec,
    /// Client connections open, by worker thread.
    pub worker_connections: IntGaugeVec,
    /// Times the listeners stopped accepting for a while, by why.
    pub accept_waits: IntCounterVec,
    /// Times the admin listener stopped accepting for a while, by why.
    pub admin_accept_waits: IntCounterVec,
    backend_latency: GaugeVec,
    region_latency: GaugeVec,
    pub ready: IntGauge,
    /// Failed requests to the control plane.
    pub control_errors: IntCounter,
    pub report_errors: IntCounter,
    table_age: Gauge,
    /// Time to admit, build and publish a table.
    pub table_swap_seconds: Histogram,
}

/// `region`, `backend`, `address`: the labels of one address's series.
type AddressLabels = [String; 3];

/// Addresses that left DNS. Each one's counts so far are in its series,
/// which the next scrape shows (`leaving`) and the one after no longer does
/// (`left`): rotating addresses, such as a load balancer's, would
/// otherwise pile up series that never change again.
/// Departed addresses whose series wait for a scrape, at most.
const MAX_DEPARTED: usize = 1024;

#[derive(Default)]
struct Departed {
    leaving: Vec<AddressLabels>,
    left: Vec<AddressLabels>,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let m = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(m.clone()))
        .expect("metric registered once");
    m
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let m = IntCounter::new(name, help).expect("static metric definition");
    registry
        .register(Box::new(m.clone()))
        .expect("metric registered once");
    m
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let m = IntGauge::new(name, help).expect("static metric definition");
    registry
        .register(Box::new(m.clone()))
        .expect("metric registered once");
    m
}

/// A counter with one label whose every value is a series from the start,
/// at 0.
fn counter_vec_with(
    registry: &Registry,
    name: &str,
    help: &str,
    (label, values): (&str, &[&str]),
) -> IntCounterVec {
    let m = counter_vec(registry, name, help, &[label]);
    for value in values {
        m.with_label_values(&[value]);
    }
    m
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let m = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(m.clone()))
        .expect("metric registered once");
    m
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "edgeroute_request_duration_seconds",
                "Time from request header to the end of the response",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["region", "route"],
        )
        .expect("static metric definition");
        r.register(Box::new(duration.clone()))
            .expect("metric registered once");
        let table_swap_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "edgeroute_table_swap_seconds",
                "Time to validate, build and publish a routing table",
            )
            .buckets(vec![0.00001, 0.0001, 0.001, 0.01, 0.1]),
        )
        .expect("static metric definition");
        r.register(Box::new(table_swap_seconds.clone()))
            .expect("metric registered once");
        // The process's CPU, memory, open files, threads and start time
        // (`process_*`), as every exporter gives them.
        r.register(Box::new(edgeroute_config::ProcessMetrics::default()))
            .expect("metric registered once");
        Metrics {
            requests: counter_vec(
                &r,
                "edgeroute_requests_total",
                "Requests answered, by serving region, route class and status",
                &["region", "route", "status"],
            ),
            duration,
            refusals: counter_vec(
                &r,
                "edgeroute_refusals_total",
                "Answers the proxy made itself before a backend was picked, by error code (every 503 refusal, bad_request, body_too_large, body_too_slow, request_head_too_large, unsupported_transfer_coding, http_version_not_supported, method_not_allowed, loop_detected; unreadable request heads too), requests turned down while forwarded (a body too large, too slow or malformed), and 503 refusals after attempts at backends that could not be reached",
                &["reason"],
            ),
            responses_cut: counter_vec(
                &r,
                "edgeroute_responses_cut_total",
                "Answers cut short after their status went to the client (counted in edgeroute_requests_total by that status), by serving region and by the side that cut them: backend (it closed, stalled past timeouts.read or broke its framing mid-body) or client (it went away)",
                &["region", "by"],
            ),
            retries: counter(
                &r,
                "edgeroute_retries_total",
                "Attempts repeated: on another backend or region, or on a new connection after a pooled one the backend had closed",
            ),
            reads_after_write: counter(
                &r,
                "edgeroute_reads_after_write_total",
                "Reads sent to the primary region because their client wrote within read_your_writes.window",
            ),
            table: edgeroute_config::TableGauges::register(&r, "edgeroute", "the table in force"),
            info: gauge_vec(
                &r,
                "edgeroute_info",
                "1, labelled with the proxy's version and its local region",
                &["version", "local_region"],
            ),
            table_epoch: gauge(
                &r,
                "edgeroute_table_epoch",
                "Epoch of the routing table in force",
            ),
            table_version: gauge(
                &r,
                "edgeroute_table_version",
                "Version of the routing table in force",
            ),
            table_swaps: counter(
                &r,
                "edgeroute_table_swaps_total",
                "Routing tables put in force",
            ),
            // Every reason from the start: an alert on a rise needs no
            // `or vector(0)`.
            table_rejections: counter_vec_with(
                &r,
                "edgeroute_table_rejections_total",
                "Routing tables rejected whole, by reason",
                (
                    "reason",
                    // The table's own reasons, and a file that could not be read.
                    &[&edgeroute_config::Rejection::REASONS[..], &["unreadable"]].concat(),
                ),
            ),
            table_last_change: gauge(
                &r,
                "edgeroute_table_last_change_timestamp_seconds",
                "Unix time the table in force was put in force",
            ),
            backend_ejections: counter_vec(
                &r,
                "edgeroute_backend_ejections_total",
                "Backends ejected from rotation by failures in a row on live traffic (5xx answers, failed connects, exchanges broken off)",
                &["region", "backend"],
            ),
            ejections_suppressed: counter_vec(
                &r,
                "edgeroute_backend_ejections_suppressed_total",
                "Ejections not made because the region's ejection cap was reached, or (for 5xx answers) the backend was the region's last in rotation; once per streak of failures",
                &["region"],
            ),
            panic_picks: counter_vec(
                &r,
                "edgeroute_panic_picks_total",
                "Backends picked in panic mode (too few in rotation), by region",
                &["region"],
            ),
            probes: counter_vec(
                &r,
                "edgeroute_probes_total",
                "Active health probes, by result",
                &["region", "backend", "result"],
            ),
            dns_failures: counter_vec(
                &r,
                "edgeroute_dns_failures_total",
                "Failed re-resolutions of backend names",
                &["region"],
            ),
            tls_handshake_failures: counter_vec_with(
                &r,
                "edgeroute_tls_handshake_failures_total",
                "Client TLS handshakes that failed (error), did not begin within timeouts.client_idle or finish within timeouts.tls_handshake (timeout), or were plain HTTP, answered 400 (plain_http)",
                ("reason", &["error", "timeout", "plain_http"]),
            ),
            http2_goaways: counter_vec_with(
                &r,
                "edgeroute_http2_goaways_total",
                "HTTP/2 client connections told to go away: no stream open for timeouts.client_idle (idle), the proxy shutting down (shutdown), too many malformed streams (malformed), a breach of the protocol or of its limits by the client (protocol_error), more control frames than its requests account for (flood)",
                (
                    "reason",
                    &["idle", "shutdown", "malformed", "protocol_error", "flood"],
                ),
            ),
            tls_certificate_reloads: counter_vec_with(
                &r,
                "edgeroute_tls_certificate_reloads_total",
                "TLS certificates (the listeners', and table.client_tls) read again after their files changed: put in force (ok) or not (failed)",
                ("result", &["ok", "failed"]),
            ),
            backend_latency: {
                let g = GaugeVec::new(
                    Opts::new(
                        "edgeroute_backend_latency_seconds",
                        "Peak-EWMA latency estimate of the backend",
                    ),
                    &["region", "backend", "address"],
                )
                .expect("static metric definition");
                r.register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            region_latency: {
                let g = GaugeVec::new(
                    Opts::new(
                        "edgeroute_region_latency_seconds",
                        "Latency of the region's fastest backend in rotation (ranks read fallback)",
                    ),
                    &["region"],
                )
                .expect("static metric definition");
                r.register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            backend_up: gauge_vec(
                &r,
                "edgeroute_backend_up",
                "1 when the backend is in rotation",
                &["region", "backend", "address"],
            ),
            backend_idle_discards: counter_vec(
                &r,
                "edgeroute_backend_idle_discards_total",
                "Idle keep-alive connections to the backend closed instead of reused, by reason (closed: the backend closed them, its keep-alive timeout shorter than timeouts.pool_idle; unexpected_bytes: it sent bytes after a whole answer, with it or while they idled; expired: idle for timeouts.pool_idle; full: limits.idle_per_backend were idle already, the oldest closed to keep a newer one)",
                &["region", "backend", "address", "reason"],
            ),
            departed: Mutex::default(),
            backend_inflight: gauge_vec(
                &r,
                "edgeroute_backend_inflight",
                "Requests in flight on the backend",
                &["region", "backend", "address"],
            ),
            tls_certificate_expiry: gauge_vec(
                &r,
                "edgeroute_tls_certificate_expiry_timestamp_seconds",
                "When the certificate in force expires (the notAfter of the first in its file), in Unix seconds: a TLS listener's (by its address), or the client certificate presented to the control plane (listener=\"table.client_tls\")",
                &["listener"],
            ),
            worker_connections: gauge_vec(
                &r,
                "edgeroute_worker_connections",
                "Client connections open, by the worker thread that serves them",
                &["worker"],
            ),
            accept_waits: counter_vec_with(
                &r,
                "edgeroute_accept_waits_total",
                "Times a listener stopped accepting until a client connection closed (connection_limit: limits.max_client_connections reached) or resources were freed (out_of_resources: no file descriptor or memory left)",
                ("reason", &["connection_limit", "out_of_resources"]),
            ),
            admin_accept_waits: counter_vec_with(
                &r,
                "edgeroute_admin_accept_waits_total",
                "Times the admin listener stopped accepting until one of its connections closed (connection_limit: admin.max_connections reached) or resources were freed (out_of_resources: no file descriptor or memory left)",
                ("reason", &["connection_limit", "out_of_resources"]),
            ),
            ready: gauge(
                &r,
                "edgeroute_ready",
                "1 while the proxy takes new requests",
            ),
            control_errors: counter(
                &r,
                "edgeroute_control_errors_total",
                "Failed requests to the control plane (the table in force stays)",
            ),
            report_errors: counter(
                &r,
                "edgeroute_report_errors_total",
                "Reports to the control plane that did not arrive (retried)",
            ),
            table_age: {
                let g = Gauge::new(
                    "edgeroute_table_age_seconds",
                    "Seconds since the table source last confirmed the table in force (with no table yet: since the proxy started)",
                )
                .expect("static metric definition");
                r.register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            table_swap_seconds,
            registry: r,
        }
    }

    /// Every configured region's and backend's event counters, at 0 until
    /// their first event: `increase()` and `rate()` only see a rise in a
    /// series that existed before it, so an alert on the first ejection
    /// or failed probe would otherwise miss it.
    pub fn precreate(&self, config: &edgeroute_config::ProxyConfig) {
        // The 503 refusals an alert watches for, at 0 from the start, so
        // that `increase()` sees the first.
        for refusal in crate::route::Refusal::ALL {
            self.refusals.with_label_values(&[refusal.code()]);
        }
        self.info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                &config.regions[config.local_region].name,
            ])
            .set(1);
        for region in &config.regions {
            let name = region.name.as_str();
            self.ejections_suppressed.with_label_values(&[name]);
            self.panic_picks.with_label_values(&[name]);
            self.dns_failures.with_label_values(&[name]);
            for by in ["backend", "client"] {
                self.responses_cut.with_label_values(&[name, by]);
            }
            for backend in &region.backends {
                let label = backend.to_string();
                self.backend_ejections.with_label_values(&[name, &label]);
                if config.health.probes {
                    for result in ["pass", "fail"] {
                        self.probes.with_label_values(&[name, &label, result]);
                    }
                }
            }
        }
    }

    /// Refreshes per-backend gauges and renders the text exposition format.
    pub fn render(&self, topology: &Topology, table_age: f64) -> String {
        let now = Instant::now();
        self.table_age.set(table_age);
        self.forget_departed(topology);
        // Addresses come and go with DNS: publish only the current ones.
        self.backend_up.reset();
        self.backend_inflight.reset();
        self.backend_latency.reset();
        self.region_latency.reset();
        for region in &topology.regions {
            // A name may stand for several addresses, each a backend of
            // its own: one series per address.
            for b in region.backends().iter() {
                let addr = b.addr.to_string();
                let labels = [&*region.name, b.label.as_str(), addr.as_str()];
                self.backend_up
                    .with_label_values(&labels)
                    .set(i64::from(b.in_rotation(now)));
                self.backend_inflight
                    .with_label_values(&labels)
                    .set(i64::from(b.inflight()));
                self.count_discards(labels, b);
                if let Some(l) = b.measured_latency(now) {
                    self.backend_latency.with_label_values(&labels).set(l);
                }
            }
            // Out of DNS, with requests still to finish: their count.
            for b in region.draining() {
                let addr = b.addr.to_string();
                self.backend_inflight
                    .with_label_values(&[&*region.name, b.label.as_str(), addr.as_str()])
                    .set(i64::from(b.inflight()));
            }
            if let Some(l) = region.latency(now) {
                self.region_latency
                    .with_label_values(&[&*region.name])
                    .set(l);
            }
        }
        let mut buf = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Adds what `b`'s idle pool counted since the last call to its series.
    fn count_discards(&self, [region, backend, address]: [&str; 3], b: &Backend) {
        for why in Discard::ALL {
            self.backend_idle_discards
                .with_label_values(&[region, backend, address, why.label()])
                .inc_by(b.idle.take_discarded(why));
        }
    }

    /// `b`, of `region`, left DNS: what it counted is added to its series
    /// now, for the next scrape to show, and the series go at the one after.
    /// Without scrapes, at most [`MAX_DEPARTED`] departed addresses keep
    /// their series; the oldest go first.
    pub fn address_left(&self, region: &str, b: &Backend) {
        let address = b.addr.to_string();
        self.count_discards([region, &b.label, &address], b);
        let labels = [region.to_owned(), b.label.clone(), address];
        let overflow: Vec<AddressLabels> = {
            let mut departed = self.departed.lock().unwrap_or_else(|p| p.into_inner());
            if !departed.leaving.contains(&labels) {
                departed.leaving.push(labels);
            }
            let over = departed.leaving.len().saturating_sub(MAX_DEPARTED);
            departed.leaving.drain(..over).collect()
        };
        for labels in &overflow {
            self.remove_series(labels);
        }
    }

    /// Removes the series of addresses whose departure the last scrape
    /// showed, unless they are back in DNS.
    fn forget_departed(&self, topology: &Topology) {
        let left = {
            let mut departed = self.departed.lock().unwrap_or_else(|p| p.into_inner());
            let leaving = std::mem::take(&mut departed.leaving);
            std::mem::replace(&mut departed.left, leaving)
        };
        for [region, backend, address] in &left {
            let back = topology.regions.iter().any(|r| {
                *r.name == **region
                    && r.backends()
                        .iter()
                        .any(|b| b.label == *backend && b.addr.to_string() == *address)
            });
            if !back {
                self.remove_series(&[region.clone(), backend.clone(), address.clone()]);
            }
        }
    }

    /// Removes the series of a departed address.
    fn remove_series(&self, [region, backend, address]: &AddressLabels) {
        for why in Discard::ALL {
            // Absent already when it left twice in one interval.
            let _ = self.backend_idle_discards.remove_label_values(&[
                region,
                backend,
                address,
                why.label(),
            ]);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Status labels of `edgeroute_requests_total`: the common codes exactly,
/// the rest by class. A fixed set keeps the metric's cardinality bounded.
const STATUS_LABELS: [&str; 23] = [
    "0", "1xx", "2xx", "3xx", "4xx", "5xx", "200", "204", "301", "302", "304", "400", "401", "403",
    "404", "409", "413", "429", "500", "502", "503", "504", "408",
];

fn status_index(status: u16) -> usize {
    match status {
        200 => 6,
        204 => 7,
        301 => 8,
        302 => 9,
        304 => 10,
        400 => 11,
        401 => 12,
        403 => 13,
        404 => 14,
        409 => 15,
        413 => 16,
        429 => 17,
        500 => 18,
        502 => 19,
        503 => 20,
        504 => 21,
        408 => 22,
        s => (s / 100).min(5) as usize,
    }
}

/// The per-request counters and histograms, each resolved on its first use
/// and kept, so recording a request is an index and an atomic add, with no
/// label hashing or lock; series that never occur are never exported.
pub struct RequestMetrics {
    /// Region names, then `none` (answered by the proxy itself).
    names: Vec<String>,
    requests_vec: IntCounterVec,
    duration_vec: HistogramVec,
    requests: Vec<OnceLock<IntCounter>>,
    duration: Vec<OnceLock<Histogram>>,
}

/// The `route` label's values: a request's class, or `none` for one whose
/// head could not be read as a request (no method or path to classify).
const ROUTES: [Option<RouteClass>; 3] = [Some(RouteClass::Read), Some(RouteClass::Write), None];

fn route_label(route: Option<RouteClass>) -> &'static str {
    route.map_or("none", RouteClass::as_str)
}

impl RequestMetrics {
    pub fn new(metrics: &Metrics, region_names: &[&str]) -> Self {
        let names: Vec<String> = region_names
            .iter()
            .map(|n| (*n).to_owned())
            .chain(["none".to_owned()])
            .collect();
        let pairs = names.len() * ROUTES.len();
        RequestMetrics {
            requests: (0..pairs * STATUS_LABELS.len())
                .map(|_| OnceLock::new())
                .collect(),
            duration: (0..pairs).map(|_| OnceLock::new()).collect(),
            names,
            requests_vec: metrics.requests.clone(),
            duration_vec: metrics.duration.clone(),
        }
    }

    /// `region`: the region that served the request, `None` if the proxy
    /// answered itself.
    /// `route`: `None` for a request whose head could not be read.
    pub fn record(
        &self,
        region: Option<usize>,
        route: Option<RouteClass>,
        status: u16,
        seconds: f64,
    ) {
        let none = self.names.len() - 1;
        let r = region.unwrap_or(none).min(none);
        let c = ROUTES
            .iter()
            .position(|x| *x == route)
            .unwrap_or(ROUTES.len() - 1);
        let pair = r * ROUTES.len() + c;
        let s = status_index(status);
        let labels = || [self.names[r].as_str(), route_label(ROUTES[c])];
        self.requests[pair * STATUS_LABELS.len() + s]
            .get_or_init(|| {
                let [region, route] = labels();
                self.requests_vec
                    .with_label_values(&[region, route, STATUS_LABELS[s]])
            })
            .inc();
        self.duration[pair]
            .get_or_init(|| self.duration_vec.with_label_values(&labels()))
            .observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn request_metrics_land_on_the_right_series() {
        let m = Metrics::new();
        let rm = RequestMetrics::new(&m, &["us-east-1", "eu-west-1"]);
        rm.record(Some(1), Some(RouteClass::Write), 201, 0.01);
        rm.record(Some(1), Some(RouteClass::Write), 201, 0.01);
        rm.record(None, Some(RouteClass::Read), 503, 0.001);
        rm.record(Some(0), Some(RouteClass::Read), 200, 0.002);
        rm.record(None, None, 400, 0.0);
        assert_eq!(
            m.requests
                .with_label_values(&["eu-west-1", "write", "2xx"])
                .get(),
            2
        );
        assert_eq!(
            m.requests.with_label_values(&["none", "read", "503"]).get(),
            1
        );
        assert_eq!(
            m.requests
                .with_label_values(&["us-east-1", "read", "200"])
                .get(),
            1
        );
        // An unreadable request is neither a read nor a write.
        assert_eq!(
            m.requests.with_label_values(&["none", "none", "400"]).get(),
            1
        );
        assert_eq!(
            m.requests.with_label_values(&["none", "read", "400"]).get(),
            0
        );
        assert_eq!(
            m.duration
                .with_label_values(&["eu-west-1", "write"])
                .get_sample_count(),
            2
        );
        let text = m.render(&crate::topology::testing::topology(1, 1), 0.0);
        assert!(
            !text.contains("status=\"404\""),
            "series that never occurred are not exported"
        );
    }

    #[test]
    fn event_counters_of_every_configured_backend_start_at_zero() {
        let config = edgeroute_config::ProxyConfig::from_toml(
            "local_region = \"us-east-1\"\n[[listeners]]\naddress = \"127.0.0.1:8080\"\n\
             [[regions]]\nname = \"us-east-1\"\nbackends = [\"127.0.0.1:9001\", \"api.internal:80\"]\n\
             [[regions]]\nname = \"eu-west-1\"\nbackends = [\"[::1]:9002\"]\n\
             [table]\nsource = \"file\"\npath = \"table.json\"\n",
            std::path::Path::new("/etc/edgeroute"),
        )
        .expect("a valid config");
        let m = Metrics::new();
        m.precreate(&config);
        let text = m.render(&crate::topology::testing::topology(1, 1), 0.0);
        let zero = |name: &str, labels: &[&str]| {
            text.lines().any(|line| {
                line.starts_with(&format!("{name}{{"))
                    && line.ends_with(" 0")
                    && labels.iter().all(|l| line.contains(l))
            })
        };
        for (region, backend) in [
            ("us-east-1", "127.0.0.1:9001"),
            ("us-east-1", "api.internal:80"),
            ("eu-west-1", "[::1]:9002"),
        ] {
            let (region, backend) = (
                format!("region=\"{region}\""),
                format!("backend=\"{backend}\""),
            );
            assert!(
                zero("edgeroute_backend_ejections_total", &[&region, &backend]),
                "{text}"
            );
            for result in ["result=\"pass\"", "result=\"fail\""] {
                assert!(
                    zero("edgeroute_probes_total", &[&region, &backend, result]),
                    "{text}"
                );
            }
        }
        for name in [
            "edgeroute_backend_ejections_suppressed_total",
            "edgeroute_panic_picks_total",
            "edgeroute_dns_failures_total",
        ] {
            for region in ["region=\"us-east-1\"", "region=\"eu-west-1\""] {
                assert!(zero(name, &[region]), "{name} {region}:\n{text}");
            }
        }
    }

    #[test]
    fn the_series_of_an_address_that_left_dns_go_after_one_more_scrape() {
        let m = Metrics::new();
        let topology = crate::topology::testing::topology(1, 2);
        let region = &topology.regions[0];
        let [gone, stays] = [0, 1].map(|i| Arc::clone(&region.backends()[i]));
        let value = |text: &str, b: &Backend, reason: &str| {
            let series = format!(
                "edgeroute_backend_idle_discards_total{{address=\"{}\",backend=\"{}\",reason=\"{reason}\",region=\"region-0\"}} ",
                b.addr, b.label
            );
            text.lines()
                .find_map(|l| l.strip_prefix(&series))
                .map(|v| v.parse::<u64>().expect("a count"))
        };
        gone.idle.discard(Discard::Closed, 2);
        let text = m.render(&topology, 0.0);
        assert_eq!(value(&text, &gone, "closed"), Some(2), "{text}");

        // Counted after the last scrape, just before the address leaves.
        gone.idle.discard(Discard::Expired, 1);
        gone.retire();
        m.address_left("region-0", &gone);
        region.set_backends(vec![Arc::clone(&stays)]);
        let text = m.render(&topology, 0.0);
        assert_eq!(value(&text, &gone, "closed"), Some(2), "{text}");
        assert_eq!(value(&text, &gone, "expired"), Some(1), "{text}");

        let text = m.render(&topology, 0.0);
        assert!(!text.contains(&gone.addr.to_string()), "{text}");
        assert_eq!(value(&text, &stays, "closed"), Some(0), "{text}");

        // An address back in DNS before its series went keeps them.
        m.address_left("region-0", &stays);
        m.render(&topology, 0.0);
        let text = m.render(&topology, 0.0);
        assert_eq!(value(&text, &stays, "closed"), Some(0), "{text}");
    }

    #[test]
    fn without_scrapes_departed_addresses_keep_bounded_series() {
        let m = Metrics::new();
        let topology = crate::topology::testing::topology(1, MAX_DEPARTED + 10);
        let region = &topology.regions[0];
        let first = region.backends()[0].addr;
        for b in region.backends().iter() {
            b.retire();
            m.address_left("region-0", b);
        }
        region.set_backends(Vec::new());
        let text = m.render(&topology, 0.0);
        let shown = text
            .lines()
            .filter(|l| {
                l.starts_with("edgeroute_backend_idle_discards_total{")
                    && l.contains("reason=\"closed\"")
            })
            .count();
        assert_eq!(shown, MAX_DEPARTED);
        // The oldest went first.
        assert!(!text.contains(&format!("address=\"{first}\"")));
    }
}

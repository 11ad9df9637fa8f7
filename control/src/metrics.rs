//! The control plane's Prometheus metrics.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct ControlMetrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub source_errors: IntCounterVec,
    pub aws_requests: IntCounterVec,
    pub aws_answers: IntCounterVec,
    pub poll_seconds: Histogram,
    pub source_stale: IntGauge,
    pub source_last_read: IntGauge,
    /// Reads of the source that failed whole (no view, the last table kept).
    pub source_reads_failed: IntCounter,
    /// The content of the table served.
    pub table: edgeroute_config::TableGauges,
    pub table_epoch: IntGauge,
    pub table_version: IntGauge,
    pub table_last_change: IntGauge,
    pub notifications: IntCounterVec,
    pub reports: IntCounterVec,
    pub proxies_reporting: IntGauge,
    pub proxies_forgotten: IntCounter,
    pub proxies_behind: IntGauge,
    pub automation_held: IntCounterVec,
    pub automation_failovers: IntCounterVec,
    pub automation_replicas_unread: IntGauge,
    pub last_drill: IntGauge,
    pub last_drill_ok: IntGauge,
    pub tls_certificate_reloads: IntCounterVec,
    /// No series without `server.tls`: an alert on the time left has
    /// nothing to fire on.
    pub tls_certificate_expiry: IntGaugeVec,
    /// The automation's certificate for the other replicas
    /// (`actions.client_tls`), watched as `server.tls`'s; no series unless
    /// it is.
    pub client_certificate_reloads: IntCounterVec,
    pub client_certificate_expiry: IntGaugeVec,
    pub connections: IntGauge,
    pub accept_waits: IntCounterVec,
}

impl ControlMetrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("static metric definition");
            r.register(Box::new(c.clone()))
                .expect("metric registered once");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("static metric definition");
            r.register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        };
        // The process's CPU, memory, open files, threads and start time
        // (`process_*`), as every exporter gives them.
        r.register(Box::new(edgeroute_config::ProcessMetrics::default()))
            .expect("metric registered once");
        let info = IntGaugeVec::new(
            Opts::new(
                "edgeroute_control_info",
                "1, labelled with the control plane's version",
            ),
            &["version"],
        )
        .expect("static metric definition");
        r.register(Box::new(info.clone()))
            .expect("metric registered once");
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let poll_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "edgeroute_control_poll_seconds",
                "Time to read every source once",
            )
            .buckets(vec![0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )
        .expect("static metric definition");
        r.register(Box::new(poll_seconds.clone()))
            .expect("metric registered once");
        let source_reads_failed = IntCounter::new(
            "edgeroute_control_source_reads_failed_total",
            "Reads of the source that failed whole: no view came of them, and the last table stayed",
        )
        .expect("static metric definition");
        r.register(Box::new(source_reads_failed.clone()))
            .expect("metric registered once");
        let proxies_forgotten = IntCounter::new(
            "edgeroute_control_proxies_forgotten_total",
            "Proxies still reporting that were forgotten to make room for a new one (the registry holds 10,000)",
        )
        .expect("static metric definition");
        r.register(Box::new(proxies_forgotten.clone()))
            .expect("metric registered once");
        let tls_certificate_reloads = counter(
            "edgeroute_control_tls_certificate_reloads_total",
            "Reloads of server.tls's changed files, by result (ok; failed: the certificate in force stays)",
            &["result"],
        );
        // Shown from the start, so that an alert sees the first failure.
        for result in ["ok", "failed"] {
            tls_certificate_reloads.with_label_values(&[result]);
        }
        let client_certificate_reloads = counter(
            "edgeroute_control_client_certificate_reloads_total",
            "Reloads of actions.client_tls's changed files by the automation, which presents it to the other replicas, by result (ok; failed: the certificate in force stays)",
            &["result"],
        );
        let client_certificate_expiry = IntGaugeVec::new(
            Opts::new(
                "edgeroute_control_client_certificate_expiry_timestamp_seconds",
                "Unix time the automation's certificate for the other replicas (actions.client_tls) expires; no series unless the automation reads replicas with one",
            ),
            &[],
        )
        .expect("static metric definition");
        r.register(Box::new(client_certificate_expiry.clone()))
            .expect("metric registered once");
        ControlMetrics {
            client_certificate_reloads,
            client_certificate_expiry,
            requests: counter(
                "edgeroute_control_requests_total",
                "Table server requests, by status",
                &["status"],
            ),
            aws_requests: counter(
                "edgeroute_control_aws_requests_total",
                "Requests sent to AWS APIs, each attempt (retries too), by service and operation",
                &["service", "operation"],
            ),
            aws_answers: counter(
                "edgeroute_control_aws_answers_total",
                "Answers from AWS APIs, by service, operation and status class (2xx, 4xx, 5xx)",
                &["service", "operation", "status"],
            ),
            source_errors: counter(
                "edgeroute_control_source_errors_total",
                "Failed source reads, by source and API",
                &["source", "api"],
            ),
            poll_seconds,
            source_stale: gauge(
                "edgeroute_control_source_stale",
                "1 while the last source read failed and the last good view is served",
            ),
            source_reads_failed,
            source_last_read: gauge(
                "edgeroute_control_source_last_read_timestamp_seconds",
                "Unix time of the last source read that succeeded whole (0: none yet)",
            ),
            table: edgeroute_config::TableGauges::register(
                &r,
                "edgeroute_control",
                "the table served",
            ),
            table_epoch: gauge("edgeroute_control_table_epoch", "Epoch of the table served"),
            table_version: gauge(
                "edgeroute_control_table_version",
                "Version of the table served",
            ),
            table_last_change: gauge(
                "edgeroute_control_table_last_change_timestamp_seconds",
                "Unix time the served table last changed",
            ),
            notifications: counter(
                "edgeroute_control_notifications_total",
                "Notifications, by channel (sns, webhook) and result (sent, failed)",
                &["channel", "result"],
            ),
            reports: counter(
                "edgeroute_control_proxy_reports_total",
                "Proxy reports received, by result (accepted, invalid)",
                &["result"],
            ),
            proxies_reporting: gauge(
                "edgeroute_control_proxies_reporting",
                "Proxies that reported within actions.proxy_max_age",
            ),
            proxies_forgotten,
            proxies_behind: gauge(
                "edgeroute_control_proxies_behind",
                "Of those, proxies routing on an older table than the one served",
            ),
            automation_held: counter(
                "edgeroute_control_automation_held_total",
                "Evaluations where the primary was unhealthy but automated failover held, by reason",
                &["reason"],
            ),
            automation_failovers: counter(
                "edgeroute_control_automation_failovers_total",
                "Automated failovers started, by result (ok, failed, nothing_to_do: read again before the request, the writer was in the target already or the primary healthy again)",
                &["result"],
            ),
            automation_replicas_unread: gauge(
                "edgeroute_control_automation_replicas_unread",
                "Replicas in actions.replica_urls the automation could not read at its last evaluation: their proxies did not vote",
            ),
            last_drill: gauge(
                "edgeroute_control_last_drill_timestamp_seconds",
                "Unix time of the last failover drill (0: none recorded)",
            ),
            last_drill_ok: gauge(
                "edgeroute_control_last_drill_success",
                "1 when the last failover drill succeeded",
            ),
            tls_certificate_reloads,
            connections: gauge(
                "edgeroute_control_connections",
                "Connections open to the table server (each proxy holds one for its long poll)",
            ),
            accept_waits: counter(
                "edgeroute_control_accept_waits_total",
                "Times the table server stopped accepting until a connection closed (connection_limit: server.max_connections reached) or resources were freed (out_of_resources: no file descriptor or memory left)",
                &["reason"],
            ),
            tls_certificate_expiry: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "edgeroute_control_tls_certificate_expiry_timestamp_seconds",
                        "Unix time the certificate in force expires (server.tls; no series without it)",
                    ),
                    &[],
                )
                .expect("static metric definition");
                r.register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            registry: r,
        }
    }

    /// The series an alert watches for a rise, at 0 from the start, so
    /// that `increase()` sees the first event: reports by result, the
    /// automation's holds and failovers, and notifications to `channels`
    /// (those configured: `sns`, `webhook`).
    pub fn precreate(&self, automation: bool, channels: &[&str]) {
        for result in ["accepted", "invalid"] {
            self.reports.with_label_values(&[result]);
        }
        if automation {
            for hold in crate::automation::Hold::ALL {
                self.automation_held.with_label_values(&[hold.as_str()]);
            }
            for result in ["ok", "failed", "nothing_to_do"] {
                self.automation_failovers.with_label_values(&[result]);
            }
        }
        for channel in channels {
            for result in ["sent", "failed"] {
                self.notifications.with_label_values(&[channel, result]);
            }
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Default for ControlMetrics {
    fn default() -> Self {
        Self::new()
    }
}

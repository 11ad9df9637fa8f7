//! What the proxy service, the admin listener and the table source share.

use crate::lifecycle::Lifecycle;
use crate::metrics::{Metrics, RequestMetrics};
use crate::route::{self, Classifier, Refusal};
use crate::snapshot::{Router, Snapshot};
use crate::topology::Topology;
use edgeroute_config::RouteTarget;
use edgeroute_config::{Admission, ProxyConfig, Rejection, RoutingTable};
use pingora_core::connectors::TransportConnector;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub struct AppState {
    pub config: ProxyConfig,
    pub topology: Topology,
    pub classifier: Classifier,
    /// Read-your-writes, unless its window is zero.
    pub ryw: Option<crate::ryw::ReadYourWrites>,
    pub router: Router,
    pub metrics: Metrics,
    pub request_metrics: RequestMetrics,
    pub lifecycle: Arc<Lifecycle>,
    /// Bearer token for `/metrics` and `/routing`, when configured.
    /// Read again every 10 s (see [`edgeroute_config::TokenFile`]).
    pub admin_token: Option<edgeroute_config::TokenFile>,
    /// When the source last confirmed the table in force: milliseconds
    /// since the topology's clock started, plus one (0: never). A
    /// monotonic clock, so a step of the wall clock neither holds writes
    /// nor lets them through.
    table_confirmed_ms: AtomicU64,
    /// Serialises table admission so that "compare with the table in force,
    /// then replace it" is one step.
    swap: Mutex<()>,
    /// Signalled when a new table is put in force.
    pub table_changed: tokio::sync::Notify,
    /// `table.hold_writes_after`, in milliseconds.
    hold_writes_after_ms: Option<u64>,
    /// Every backend known at start-up has been probed: set once, so an
    /// address DNS brings later does not take the proxy out of ready.
    first_probes_seen: AtomicBool,
    /// Connects to backends, for requests and probes alike. One for the
    /// process: building one loads the platform's CAs.
    pub connector: TransportConnector,
    /// The proxy's `Via` entries, named after the local region.
    pub via: crate::via::Via,
}

impl AppState {
    pub fn new(
        config: ProxyConfig,
        topology: Topology,
        admin_token: Option<edgeroute_config::TokenFile>,
        connector: TransportConnector,
    ) -> Self {
        let metrics = Metrics::new();
        metrics.precreate(&config);
        let names: Vec<&str> = topology.region_names().collect();
        let request_metrics = RequestMetrics::new(&metrics, &names);
        let hold_writes_after_ms = match &config.table {
            edgeroute_config::TableSource::Control {
                hold_writes_after, ..
            } => hold_writes_after.map(|d| d.as_millis() as u64),
            edgeroute_config::TableSource::File { .. } => None,
        };
        let via = crate::via::Via::new(&config.regions[config.local_region].name);
        AppState {
            via,
            hold_writes_after_ms,
            admin_token,
            classifier: Classifier::new(config.methods.clone(), config.routes.clone()),
            ryw: crate::ryw::ReadYourWrites::new(&config.read_your_writes),
            config,
            topology,
            router: Router::default(),
            metrics,
            request_metrics,
            lifecycle: Arc::new(Lifecycle::default()),
            table_confirmed_ms: AtomicU64::new(0),
            first_probes_seen: AtomicBool::new(false),
            swap: Mutex::new(()),
            table_changed: tokio::sync::Notify::new(),
            connector,
        }
    }

    /// Offers a table from `source`: admitted tables are put in force in one
    /// store; rejected ones leave the table in force untouched and are logged
    /// and counted.
    pub fn offer_table(&self, bytes: &[u8], source: &str) -> Result<Admission, Rejection> {
        let started = Instant::now();
        let _one_at_a_time = self
            .swap
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.router.load();
        let result = RoutingTable::from_json(bytes).and_then(|table| {
            let admission = table.admit(
                current.as_ref().map(|s| &s.table),
                self.topology.region_names(),
            )?;
            if admission == Admission::Accepted {
                let (epoch, version) = (table.epoch, table.version);
                let primary = table.primary_region.clone();
                let failover = table.failover_in_progress;
                self.metrics.table.show(&table);
                self.router.store(Snapshot::build(&self.topology, table));
                self.metrics.table_epoch.set(epoch as i64);
                self.metrics.table_version.set(version as i64);
                self.metrics.table_swaps.inc();
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                self.metrics.table_last_change.set(now as i64);
                self.metrics
                    .table_swap_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.table_changed.notify_one();
                tracing::info!(
                    source,
                    epoch,
                    version,
                    primary = primary.as_deref().unwrap_or("none"),
                    failover_in_progress = failover,
                    "routing table in force"
                );
            }
            Ok(admission)
        });
        if result.is_ok() {
            self.table_confirmed();
        }
        if let Err(rejection) = &result {
            self.metrics
                .table_rejections
                .with_label_values(&[rejection.reason()])
                .inc();
            let kept = self.kept();
            // A replica behind the others: the likeliest cause of an
            // older table from a control plane.
            let hint = if matches!(
                rejection,
                Rejection::StaleEpoch { .. } | Rejection::StaleVersion { .. }
            ) && matches!(
                self.config.table,
                edgeroute_config::TableSource::Control { .. }
            ) {
                "; if several control plane replicas answer at this address, one that has not read the change yet answers with the table before it until it does (after a request naming a newer table has waited a whole table.wait for it: one still behind then cannot read its source, see its edgeroute_control_source_stale, or reads another view)"
            } else {
                ""
            };
            tracing::warn!(
                source,
                reason = rejection.reason(),
                keeping_epoch = kept.map(|k| k.0),
                keeping_version = kept.map(|k| k.1),
                "routing table rejected: {rejection}{hint}; {}",
                self.what_stays()
            );
        }
        result
    }

    /// Milliseconds on the topology's clock, plus one (see
    /// `table_confirmed_ms`).
    fn clock_ms(&self) -> u64 {
        u64::try_from(self.topology.clock.elapsed().as_millis()).map_or(u64::MAX, |ms| ms + 1)
    }

    /// The source says the table in force is current.
    pub fn table_confirmed(&self) {
        self.table_confirmed_ms
            .store(self.clock_ms(), Ordering::Relaxed);
    }

    /// Seconds since the source last confirmed the table in force; with
    /// no table yet, since the proxy started (an alert on the age fires
    /// for a proxy that never got one, too).
    pub fn table_age(&self) -> f64 {
        let at = self.table_confirmed_ms.load(Ordering::Relaxed);
        let since = if at != 0 && self.router.load().is_some() {
            at
        } else {
            1
        };
        self.clock_ms().saturating_sub(since) as f64 / 1000.0
    }

    /// Writes are held: `table.hold_writes_after` is set and the control
    /// plane has not confirmed the table for longer.
    pub fn table_too_old_for_writes(&self) -> bool {
        let Some(limit) = self.hold_writes_after_ms else {
            return false;
        };
        let at = self.table_confirmed_ms.load(Ordering::Relaxed);
        at != 0 && self.clock_ms().saturating_sub(at) > limit
    }

    /// Counts a table that could not even be read.
    pub fn table_unreadable(&self, source: &str, error: &dyn std::fmt::Display) {
        self.metrics
            .table_rejections
            .with_label_values(&["unreadable"])
            .inc();
        let kept = self.kept();
        tracing::warn!(
            source,
            reason = "unreadable",
            keeping_epoch = kept.map(|k| k.0),
            keeping_version = kept.map(|k| k.1),
            error = %error,
            "cannot read the routing table; {}",
            self.what_stays()
        );
    }

    /// The epoch and version of the table in force, if there is one (log
    /// lines leave the fields out when there is none).
    fn kept(&self) -> Option<(u64, u64)> {
        self.router
            .load()
            .as_ref()
            .map(|s| (s.epoch(), s.version()))
    }

    /// What a table that could not be had leaves in force, for its log line.
    pub fn what_stays(&self) -> &'static str {
        if self.router.load().is_some() {
            "keeping the table in force"
        } else {
            "no table yet: /ready answers 503 and requests are refused until one comes"
        }
    }

    /// [`route::choose_region`] with this proxy's live backend state at
    /// `now`: which regions have a backend in rotation, and their measured
    /// latency.
    pub fn choose_region(
        &self,
        snapshot: &Snapshot,
        target: RouteTarget,
        excluded: u64,
        now: Instant,
    ) -> Result<usize, Refusal> {
        let regions = &self.topology.regions;
        route::choose_region(
            snapshot,
            self.topology.local,
            target,
            |r| regions[r].in_rotation(now) > 0,
            |r| regions[r].latency(now),
            excluded,
        )
    }

    /// Every backend has been probed at least once (or probes are off), so
    /// the first requests are routed on measured health, not on guesses.
    /// Once true it stays true: an address that joins later is probed
    /// before it takes traffic, with the proxy serving meanwhile.
    pub fn first_probes_done(&self) -> bool {
        if self.first_probes_seen.load(Ordering::Relaxed) {
            return true;
        }
        let done = !self.config.health.probes
            || self
                .topology
                .regions
                .iter()
                .all(|r| r.backends().iter().all(|b| b.is_probed()));
        if done {
            self.first_probes_seen.store(true, Ordering::Relaxed);
        }
        done
    }

    /// What `/health` answers, on the admin listener and on the traffic
    /// listeners (`health.listener_path`): whether the local region's
    /// backends can serve reads and the proxy is not shutting down, and the
    /// body that says so.
    pub fn health(&self) -> (bool, serde_json::Value) {
        let unhealthy = self.unhealthy_because();
        let mut body = serde_json::json!({
            "status": if unhealthy.is_none() { "ok" } else { "unavailable" },
            "region": &*self.topology.regions[self.topology.local].name,
            "check": "local backends can serve reads",
        });
        if let Some(reason) = unhealthy {
            body["reason"] = reason.into();
        }
        (unhealthy.is_none(), body)
    }

    /// Why the local region's backends cannot serve reads now, if they
    /// cannot: the proxy is shutting down, has no table yet, or none of
    /// them is in rotation. What the proxy measures, not what the table
    /// says of the region: a table's `down` comes from Route 53's health
    /// checks, which probe this very answer, so answering from it would
    /// hold a region down once it had recovered.
    fn unhealthy_because(&self) -> Option<&'static str> {
        if self.lifecycle.is_shutting_down() {
            return Some("shutting_down");
        }
        if self.router.load().is_none() {
            return Some("no_routing_table");
        }
        if !self.topology.regions[self.topology.local].has_live_backend() {
            return Some("no_backend_in_rotation");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::AppState;
    use crate::topology::Topology;
    use edgeroute_config::{Admission, ProxyConfig};
    use pingora_core::connectors::TransportConnector;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-southeast-1"];

    fn state() -> AppState {
        let mut text = String::from(
            "local_region = \"us-east-1\"\n[[listeners]]\naddress = \"127.0.0.1:8080\"\n\
             [table]\nsource = \"file\"\npath = \"table.json\"\n[health]\nprobes = false\n",
        );
        for (i, r) in REGIONS.iter().enumerate() {
            text.push_str(&format!(
                "[[regions]]\nname = \"{r}\"\nbackends = [\"127.0.0.{}:1\"]\n",
                i + 1
            ));
        }
        let config = ProxyConfig::from_toml(&text, std::path::Path::new("/etc/edgeroute"))
            .expect("a valid config");
        let addrs: Vec<Vec<Vec<SocketAddr>>> = (1..=3u8)
            .map(|i| vec![vec![SocketAddr::from(([127, 0, 0, i], 1))]])
            .collect();
        let topology = Topology::build(&config, &addrs);
        AppState::new(config, topology, None, TransportConnector::new(None))
    }

    fn table(epoch: u64, version: u64, primary: usize) -> Vec<u8> {
        let regions: Vec<_> = REGIONS
            .iter()
            .map(|r| serde_json::json!({ "name": r, "state": "active" }))
            .collect();
        serde_json::json!({
            "epoch": epoch, "version": version, "primary_region": REGIONS[primary],
            "failover_in_progress": false, "regions": regions,
        })
        .to_string()
        .into_bytes()
    }

    /// Tables offered from several threads at once (a file reload beside a
    /// control-plane answer, say) are admitted one at a time: a reader never
    /// sees the epoch in force go back, nor, within an epoch, the version go
    /// back or the primary change; and the highest epoch offered ends in
    /// force, since nothing can refuse the first table of it.
    #[test]
    fn tables_offered_at_once_never_take_the_epoch_back() {
        let state = Arc::new(state());
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (state, done) = (Arc::clone(&state), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut last: Option<(u64, u64, Option<String>)> = None;
                let mut looks = 0u64;
                while !done.load(Ordering::Acquire) || looks == 0 {
                    looks += 1;
                    let Some(s) = state.router.load() else {
                        continue;
                    };
                    let now = (
                        s.table.epoch,
                        s.table.version,
                        s.table.primary_region.clone(),
                    );
                    if let Some(before) = &last {
                        assert!(now.0 >= before.0, "epoch back: {before:?} then {now:?}");
                        if now.0 == before.0 {
                            assert!(now.1 >= before.1, "version back: {before:?} then {now:?}");
                            assert_eq!(now.2, before.2, "primary moved within epoch {}", now.0);
                        }
                    }
                    last = Some(now);
                }
            })
        };
        let writers: Vec<_> = (0..4u64)
            .map(|w| {
                let state = Arc::clone(&state);
                std::thread::spawn(move || {
                    let mut accepted = 0;
                    for i in 0..1000u64 {
                        // The writers offer each epoch at about the same
                        // time, with primaries that differ and versions
                        // that interleave: where two could both be
                        // admitted over the same table, one at a time
                        // admits only the first.
                        let epoch = i / 4;
                        let version = i * 4 + w;
                        let primary = ((i + w) % 3) as usize;
                        if state.offer_table(&table(epoch, version, primary), "test")
                            == Ok(Admission::Accepted)
                        {
                            accepted += 1;
                        }
                    }
                    accepted
                })
            })
            .collect();
        let accepted: u32 = writers.into_iter().map(|w| w.join().unwrap()).sum();
        done.store(true, Ordering::Release);
        reader.join().unwrap();
        assert!(accepted > 1, "{accepted}");
        let in_force = state.router.load().expect("a table in force");
        assert_eq!(in_force.table.epoch, 249);
        assert_eq!(
            state.metrics.table_swaps.get(),
            u64::from(accepted),
            "every admitted table is counted once"
        );
    }
}

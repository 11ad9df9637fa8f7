//! A routing table's content as Prometheus gauges: which region holds the
//! primary, whether writes are held for a writer change, each region's
//! state, weight and replication lag. The proxy shows the table it routes
//! on, the control plane the table it serves, so that dashboards and
//! alerts ("the primary moved", "a region is down", "writes held for
//! minutes", "lag over a second") need no reader of their JSON.

use crate::table::{RegionState, RoutingTable};
use prometheus::{GaugeVec, IntGauge, IntGaugeVec, Opts, Registry};
use std::sync::Mutex;

const STATES: [RegionState; 3] = [
    RegionState::Active,
    RegionState::Draining,
    RegionState::Down,
];

/// The gauges of one table, named `<prefix>_table_...`.
pub struct TableGauges {
    /// The regions shown, and whether each has a lag shown.
    shown: Mutex<Vec<(String, bool)>>,
    primary: IntGaugeVec,
    failover: IntGauge,
    state: IntGaugeVec,
    weight: IntGaugeVec,
    lag: GaugeVec,
}

impl TableGauges {
    /// Registers the gauges in `registry`, named after `prefix`
    /// (`edgeroute`, `edgeroute_control`); `whose` says whose table they
    /// show in their help text.
    pub fn register(registry: &Registry, prefix: &str, whose: &str) -> Self {
        let vec = |name: &str, help: String, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(format!("{prefix}_table_{name}"), help), labels)
                .expect("static metric definition");
            registry
                .register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        };
        let primary = vec(
            "primary",
            format!("1 for the region {whose} names as the primary, 0 for the others"),
            &["region"],
        );
        let state = vec(
            "region_state",
            format!(
                "1 for each region's state in {whose} (active, draining, down), 0 for its other states"
            ),
            &["region", "state"],
        );
        let weight = vec(
            "region_weight",
            format!("Each region's weight in {whose}"),
            &["region"],
        );
        let failover = IntGauge::new(
            format!("{prefix}_table_failover_in_progress"),
            format!("1 while {whose} says a writer change is running (writes held)"),
        )
        .expect("static metric definition");
        registry
            .register(Box::new(failover.clone()))
            .expect("metric registered once");
        let lag = GaugeVec::new(
            Opts::new(
                format!("{prefix}_table_replication_lag_seconds"),
                format!(
                    "Aurora replication lag of each secondary region in {whose}, where it is known"
                ),
            ),
            &["region"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(lag.clone()))
            .expect("metric registered once");
        TableGauges {
            shown: Mutex::new(Vec::new()),
            primary,
            failover,
            state,
            weight,
            lag,
        }
    }

    /// Shows `table`: regions it no longer names lose their series, and a
    /// lag no longer known is not shown. Series that stay are set in
    /// place, never removed and made again, so that a scrape in between
    /// never finds a region's series missing.
    pub fn show(&self, table: &RoutingTable) {
        let mut shown = self.shown.lock().unwrap_or_else(|p| p.into_inner());
        for (gone, had_lag) in shown.iter() {
            let named = table.regions.iter().find(|r| &r.name == gone);
            if named.is_none() {
                let _ = self.primary.remove_label_values(&[gone]);
                let _ = self.weight.remove_label_values(&[gone]);
                for state in STATES {
                    let _ = self.state.remove_label_values(&[gone, state.as_str()]);
                }
            }
            if *had_lag && named.is_none_or(|r| r.replication_lag_ms.is_none()) {
                let _ = self.lag.remove_label_values(&[gone]);
            }
        }
        *shown = table
            .regions
            .iter()
            .map(|r| (r.name.clone(), r.replication_lag_ms.is_some()))
            .collect();
        self.failover.set(i64::from(table.failover_in_progress));
        for region in &table.regions {
            let name = region.name.as_str();
            self.primary
                .with_label_values(&[name])
                .set(i64::from(table.primary_region.as_deref() == Some(name)));
            for state in STATES {
                self.state
                    .with_label_values(&[name, state.as_str()])
                    .set(i64::from(region.state == state));
            }
            self.weight
                .with_label_values(&[name])
                .set(i64::from(region.weight));
            if let Some(ms) = region.replication_lag_ms {
                self.lag.with_label_values(&[name]).set(ms as f64 / 1000.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::RegionEntry;

    fn text(registry: &Registry) -> String {
        let mut buf = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut buf,
        )
        .unwrap();
        String::from_utf8(buf).unwrap()
    }

    fn region(name: &str, state: RegionState, lag: Option<u64>) -> RegionEntry {
        RegionEntry {
            name: name.to_owned(),
            state,
            weight: 100,
            replication_lag_ms: lag,
        }
    }

    #[test]
    fn a_table_is_shown_whole_and_a_later_one_replaces_it() {
        let registry = Registry::new();
        let gauges = TableGauges::register(&registry, "edgeroute", "the table in force");
        gauges.show(&RoutingTable {
            epoch: 1,
            version: 1,
            primary_region: Some("us-east-1".into()),
            failover_in_progress: true,
            regions: vec![
                region("us-east-1", RegionState::Active, None),
                region("eu-west-1", RegionState::Down, Some(1500)),
                region("ap-southeast-1", RegionState::Draining, Some(20)),
            ],
        });
        let shown = text(&registry);
        for line in [
            "edgeroute_table_primary{region=\"us-east-1\"} 1",
            "edgeroute_table_primary{region=\"eu-west-1\"} 0",
            "edgeroute_table_failover_in_progress 1",
            "edgeroute_table_region_state{region=\"eu-west-1\",state=\"down\"} 1",
            "edgeroute_table_region_state{region=\"eu-west-1\",state=\"active\"} 0",
            "edgeroute_table_region_state{region=\"ap-southeast-1\",state=\"draining\"} 1",
            "edgeroute_table_region_weight{region=\"us-east-1\"} 100",
            "edgeroute_table_replication_lag_seconds{region=\"eu-west-1\"} 1.5",
            "edgeroute_table_replication_lag_seconds{region=\"ap-southeast-1\"} 0.02",
        ] {
            assert!(shown.contains(line), "{line} in\n{shown}");
        }
        assert!(
            !shown.contains("edgeroute_table_replication_lag_seconds{region=\"us-east-1\"}"),
            "{shown}"
        );
        gauges.show(&RoutingTable {
            epoch: 2,
            version: 2,
            primary_region: None,
            failover_in_progress: false,
            regions: vec![region("us-east-1", RegionState::Active, None)],
        });
        let shown = text(&registry);
        assert!(
            shown.contains("edgeroute_table_primary{region=\"us-east-1\"} 0"),
            "{shown}"
        );
        assert!(
            shown.contains("edgeroute_table_failover_in_progress 0"),
            "{shown}"
        );
        assert!(!shown.contains("eu-west-1"), "regions gone: {shown}");
        assert!(
            !shown.contains("edgeroute_table_replication_lag_seconds{"),
            "lags gone: {shown}"
        );
        // A region that stays but whose lag is no longer known.
        let with_lag = |lag| RoutingTable {
            epoch: 3,
            version: 3,
            primary_region: Some("us-east-1".into()),
            failover_in_progress: false,
            regions: vec![
                region("us-east-1", RegionState::Active, None),
                region("eu-west-1", RegionState::Active, lag),
            ],
        };
        gauges.show(&with_lag(Some(200)));
        assert!(
            text(&registry)
                .contains("edgeroute_table_replication_lag_seconds{region=\"eu-west-1\"} 0.2")
        );
        gauges.show(&with_lag(None));
        let shown = text(&registry);
        assert!(
            !shown.contains("edgeroute_table_replication_lag_seconds{"),
            "{shown}"
        );
        assert!(
            shown.contains("edgeroute_table_primary{region=\"eu-west-1\"} 0"),
            "{shown}"
        );
    }
}

//! The proxies that report to this control plane: the table each routes on
//! and what each measures of every region. Entries age out; the registry is
//! bounded, so a misbehaving client cannot grow it without limit.

use edgeroute_config::ProxyReport;
use edgeroute_config::RoutingTable;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most proxies remembered at once.
pub const MAX_PROXIES: usize = 10_000;

/// Entries older than this are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);

#[derive(Default)]
pub struct Registry {
    inner: Mutex<HashMap<String, (ProxyReport, Instant)>>,
}

/// One proxy as seen now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyStatus {
    #[serde(flatten)]
    pub report: ProxyReport,
    /// Seconds since its last report.
    pub age_seconds: f64,
}

/// What the fresh reports say of one region.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Vote {
    /// Proxies that reported on the region.
    pub reporting: usize,
    /// Of those, how many see no backend of it in rotation.
    pub unhealthy: usize,
}

impl Vote {
    /// More than half of the reporting proxies see the region unhealthy.
    pub fn unhealthy(self) -> bool {
        self.reporting > 0 && self.unhealthy * 2 > self.reporting
    }

    /// More than half of the reporting proxies see it healthy.
    pub fn healthy(self) -> bool {
        self.reporting > 0 && (self.reporting - self.unhealthy) * 2 > self.reporting
    }
}

impl Registry {
    /// Records a report; false when the registry is full of live proxies.
    pub fn record(&self, report: ProxyReport, now: Instant) -> bool {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(&report.id) && map.len() >= MAX_PROXIES {
            map.retain(|_, (_, at)| now.saturating_duration_since(*at) < FORGET_AFTER);
            if map.len() >= MAX_PROXIES {
                return false;
            }
        }
        map.insert(report.id.clone(), (report, now));
        true
    }

    /// Proxies that reported within `max_age`, by id.
    pub fn fresh(&self, max_age: Duration, now: Instant) -> Vec<ProxyStatus> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<ProxyStatus> = map
            .values()
            .filter_map(|(r, at)| {
                let age = now.saturating_duration_since(*at);
                (age <= max_age).then(|| ProxyStatus {
                    report: r.clone(),
                    age_seconds: age.as_secs_f64(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.report.id.cmp(&b.report.id));
        out
    }
}

/// The proxies routing on an older table than `table`.
pub fn behind<'a>(
    proxies: &'a [ProxyStatus],
    table: &RoutingTable,
) -> impl Iterator<Item = &'a ProxyStatus> {
    let current = (table.epoch, table.version);
    proxies
        .iter()
        .filter(move |p| (p.report.epoch, p.report.version) < current)
}

/// The proxies' vote on `region`.
pub fn vote(proxies: &[ProxyStatus], region: &str) -> Vote {
    let mut v = Vote::default();
    for p in proxies {
        if let Some(r) = p.report.regions.iter().find(|r| r.name == region) {
            v.reporting += 1;
            v.unhealthy += usize::from(r.unhealthy());
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeroute_config::RegionHealth;

    fn report(id: &str, epoch: u64, us_in_rotation: u32) -> ProxyReport {
        ProxyReport {
            id: id.into(),
            region: "eu-west-1".into(),
            epoch,
            version: epoch,
            regions: vec![RegionHealth {
                name: "us-east-1".into(),
                backends: 2,
                in_rotation: us_in_rotation,
            }],
        }
    }

    #[test]
    fn fresh_reports_vote_and_old_ones_age_out() {
        let reg = Registry::default();
        let t0 = Instant::now();
        reg.record(report("a", 1, 0), t0);
        reg.record(report("b", 1, 0), t0 + Duration::from_secs(20));
        reg.record(report("c", 1, 2), t0 + Duration::from_secs(20));
        let now = t0 + Duration::from_secs(40);
        let all = reg.fresh(Duration::from_secs(60), now);
        assert_eq!(all.len(), 3);
        let v = vote(&all, "us-east-1");
        assert_eq!((v.reporting, v.unhealthy), (3, 2));
        assert!(v.unhealthy() && !v.healthy());
        // "a" is too old to count: one of two is not a majority.
        let recent = reg.fresh(Duration::from_secs(30), now);
        assert_eq!(recent.len(), 2);
        let v = vote(&recent, "us-east-1");
        assert!(!v.unhealthy() && !v.healthy(), "{v:?}");
        assert_eq!(vote(&recent, "ap-southeast-1"), Vote::default());
        assert!(!Vote::default().unhealthy() && !Vote::default().healthy());
    }

    #[test]
    fn a_new_report_replaces_the_old_one() {
        let reg = Registry::default();
        let t0 = Instant::now();
        reg.record(report("a", 1, 0), t0);
        reg.record(report("a", 2, 2), t0);
        let all = reg.fresh(Duration::from_secs(1), t0);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].report.epoch, 2);
    }
}

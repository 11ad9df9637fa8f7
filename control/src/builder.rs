//! Turns what the sources see into a routing table, deterministically:
//! the same view always gives the same regions, states and weights;
//! `version` rises on every change and `epoch` whenever the primary moves.

use edgeroute_config::{RegionEntry, RegionState, RoutingTable, TopologyView};

pub struct Builder {
    current: Option<RoutingTable>,
    /// The first epoch this builder hands out.
    start_epoch: u64,
}

impl Builder {
    /// `start_epoch` (the caller's clock in seconds), and the epochs
    /// handed out after it, are floored by the clock in seconds, and
    /// versions by the clock in milliseconds (see [`Builder::apply`]): a
    /// restarted control plane never hands out a lower epoch or version
    /// than before, unless the writer moved more than once a second, which
    /// an Aurora writer change (a minute or so) cannot.
    pub fn new(start_epoch: u64) -> Self {
        Builder {
            current: None,
            start_epoch,
        }
    }

    pub fn current(&self) -> Option<&RoutingTable> {
        self.current.as_ref()
    }

    /// Applies a view seen at `now_ms` (milliseconds since the Unix epoch).
    /// Returns the new table when anything changed.
    pub fn apply(&mut self, view: &TopologyView, now_ms: u64) -> Option<&RoutingTable> {
        let mut regions: Vec<RegionEntry> = view
            .regions
            .iter()
            .map(|r| RegionEntry {
                name: r.name.clone(),
                state: match (r.healthy, r.weight) {
                    (Some(false), _) => RegionState::Down,
                    (_, Some(0)) => RegionState::Draining,
                    _ => RegionState::Active,
                },
                weight: r.weight.unwrap_or(100),
                replication_lag_ms: r.replication_lag_ms,
            })
            .collect();
        regions.sort_by(|a, b| a.name.cmp(&b.name));
        let (epoch, version) = match &self.current {
            None => (self.start_epoch, now_ms),
            Some(cur) => {
                let same = cur.primary_region == view.primary_region
                    && cur.failover_in_progress == view.failover_in_progress
                    && cur.regions == regions;
                if same {
                    return None;
                }
                let epoch = if cur.primary_region != view.primary_region {
                    (now_ms / 1000).max(cur.epoch + 1)
                } else {
                    cur.epoch
                };
                (epoch, now_ms.max(cur.version + 1))
            }
        };
        self.current = Some(RoutingTable {
            epoch,
            version,
            primary_region: view.primary_region.clone(),
            failover_in_progress: view.failover_in_progress,
            regions,
        });
        self.current.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeroute_config::RegionView;

    fn view(primary: &str, regions: &[(&str, Option<u32>, Option<bool>)]) -> TopologyView {
        TopologyView {
            primary_region: Some(primary.into()),
            failover_in_progress: false,
            regions: regions
                .iter()
                .map(|(n, w, h)| RegionView {
                    name: (*n).into(),
                    weight: *w,
                    healthy: *h,
                    replication_lag_ms: None,
                    health_unread: false,
                })
                .collect(),
        }
    }

    #[test]
    fn states_come_from_health_and_weight() {
        let mut b = Builder::new(7);
        let t = b
            .apply(
                &view(
                    "us-east-1",
                    &[
                        ("us-east-1", Some(100), Some(true)),
                        ("eu-west-1", Some(0), Some(true)),
                        ("ap-southeast-1", None, Some(false)),
                    ],
                ),
                1000,
            )
            .unwrap()
            .clone();
        assert_eq!((t.epoch, t.version), (7, 1000));
        let state = |n: &str| t.region(n).unwrap().state;
        assert_eq!(state("us-east-1"), RegionState::Active);
        assert_eq!(state("eu-west-1"), RegionState::Draining);
        assert_eq!(state("ap-southeast-1"), RegionState::Down);
        assert_eq!(
            t.regions[0].name, "ap-southeast-1",
            "sorted, so the same view gives the same table"
        );
    }

    #[test]
    fn version_rises_on_change_and_epoch_when_the_primary_moves() {
        let mut b = Builder::new(1);
        let regions = [
            ("us-east-1", Some(100), Some(true)),
            ("eu-west-1", Some(100), Some(true)),
        ];
        b.apply(&view("us-east-1", &regions), 10);
        assert!(
            b.apply(&view("us-east-1", &regions), 20).is_none(),
            "no change, no new table"
        );
        let t = b
            .apply(
                &view(
                    "us-east-1",
                    &[regions[0], ("eu-west-1", Some(0), Some(true))],
                ),
                5,
            )
            .unwrap();
        assert_eq!(
            (t.epoch, t.version),
            (1, 11),
            "version rises even if the clock went back"
        );
        let t = b.apply(&view("eu-west-1", &regions), 30).unwrap();
        assert_eq!((t.epoch, t.version), (2, 30));
        let t = b.apply(&view("us-east-1", &regions), 5_000).unwrap();
        assert_eq!(
            (t.epoch, t.version),
            (5, 5_000),
            "the epoch takes the clock's seconds"
        );
        // Every table the builder hands out is admissible after the one before.
        let mut b = Builder::new(1);
        let mut last: Option<RoutingTable> = None;
        for (i, p) in [
            "us-east-1",
            "us-east-1",
            "eu-west-1",
            "eu-west-1",
            "us-east-1",
        ]
        .iter()
        .enumerate()
        {
            let w = if i % 2 == 0 { Some(100) } else { Some(0) };
            if let Some(t) = b.apply(
                &view(p, &[("us-east-1", Some(100), None), ("eu-west-1", w, None)]),
                100,
            ) {
                let t = t.clone();
                assert_eq!(
                    t.admit(last.as_ref(), ["us-east-1", "eu-west-1"]),
                    Ok(edgeroute_config::Admission::Accepted)
                );
                last = Some(t);
            }
        }
    }

    proptest::proptest! {
        /// With the writer moving at most once a second, the epoch never
        /// runs ahead of the clock: a control plane restarted a second or
        /// more later (its first epoch the clock then) hands out a higher
        /// epoch than any before, and proxies take its tables.
        #[test]
        fn a_restarted_builder_starts_above_every_epoch_before(
            moves in proptest::collection::vec((proptest::bool::ANY, 1u64..50_000), 1..300),
            restart_after in 1_000u64..100_000,
        ) {
            let regions = [("us-east-1", Some(100), None), ("eu-west-1", Some(100), None)];
            let mut now = 1_000_000;
            let mut b = Builder::new(now / 1000);
            // The last move, at most once a second.
            let mut moved_at = 0;
            let mut primary = "us-east-1";
            let mut last = None;
            for (east, gap) in moves {
                now += gap;
                if now - moved_at >= 1000 || last.is_none() {
                    primary = if east { "us-east-1" } else { "eu-west-1" };
                    moved_at = now;
                }
                if let Some(t) = b.apply(&view(primary, &regions), now) {
                    proptest::prop_assert!(t.epoch <= now / 1000, "epoch {} at {now}", t.epoch);
                    last = Some(t.clone());
                }
            }
            let last = last.expect("a first table");
            let mut restarted = Builder::new((now + restart_after) / 1000);
            let first = restarted
                .apply(&view("us-east-1", &regions), now + restart_after)
                .expect("a first table")
                .clone();
            proptest::prop_assert!(first.epoch > last.epoch);
            proptest::prop_assert_eq!(
                first.admit(Some(&last), ["us-east-1", "eu-west-1"]),
                Ok(edgeroute_config::Admission::Accepted)
            );
        }
    }
}

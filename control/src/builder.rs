//! Turns what the sources see into a routing table, deterministically:
//! the same view always gives the same regions, states and weights;
//! `version` rises on every change and `epoch` whenever the primary moves.

use edgeroute_config::{RegionEntry, RegionState, RoutingTable, TopologyView};

/// How far ahead of the clock a numbering taken from a proxy may be: a
/// replica hands out no epoch ahead of its clock's seconds and no version
/// ahead of its milliseconds (see [`Builder::new`]), and the fence counts
/// on replicas' clocks within a second of each other; one beyond is no
/// replica's, and taking it would push every later one after it.
const CLOCK_SLACK_MS: u64 = 2_000;

/// The numbers a proxy routes on, with the digest of what its table says
/// ([`RoutingTable::routing_digest`]), as its table requests and its
/// reports name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numbering {
    pub epoch: u64,
    pub version: u64,
    pub routing: String,
}

impl Numbering {
    /// Numbers `table`, whose routing digest is `digest`, higher: the same
    /// table as another replica numbers it.
    pub fn outnumbers(&self, table: &RoutingTable, digest: &str) -> bool {
        self.routing == digest && (self.epoch, self.version) > (table.epoch, table.version)
    }

    /// Within the clock's reach at `now_ms`: no replica hands out more.
    pub fn within_clock(&self, now_ms: u64) -> bool {
        let reach = now_ms.saturating_add(CLOCK_SLACK_MS);
        self.epoch <= reach / 1000 && self.version <= reach
    }
}

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

    /// Takes `n`'s epoch and version for the table this builder holds
    /// when `n` numbers that same table higher, within the clock's reach
    /// at `now_ms`: the numbering of another replica behind the same
    /// address, as a proxy names it. Replicas thus end on the highest
    /// numbering of each table, and answer proxies alike. Returns the
    /// renumbered table.
    pub fn adopt(&mut self, n: &Numbering, now_ms: u64) -> Option<&RoutingTable> {
        let cur = self.current.as_mut()?;
        if !n.within_clock(now_ms) || !n.outnumbers(cur, &cur.routing_digest()) {
            return None;
        }
        cur.epoch = n.epoch;
        cur.version = n.version;
        Some(cur)
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
                    unhealthy_because: None,
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

    #[test]
    fn a_numbering_is_taken_only_higher_for_the_same_table_and_within_the_clock() {
        let now = 1_800_000_000_000u64;
        let mut b = Builder::new(now / 1000);
        let n = |epoch, version| Numbering {
            epoch,
            version,
            routing: String::new(),
        };
        assert!(b.adopt(&n(1, 1), now).is_none(), "no table yet");
        let t = b.apply(&seen(true, false), now).unwrap().clone();
        let same = |epoch, version| Numbering {
            routing: t.routing_digest(),
            ..n(epoch, version)
        };
        assert!(
            b.adopt(&same(t.epoch, t.version), now).is_none(),
            "not higher"
        );
        assert!(
            b.adopt(&same(t.epoch - 1, now + 5), now).is_none(),
            "lower epoch"
        );
        let mut drained = t.clone();
        drained.regions[0].weight = 0;
        let other = Numbering {
            routing: drained.routing_digest(),
            ..n(t.epoch + 1, now)
        };
        assert!(b.adopt(&other, now).is_none(), "another table");
        let ahead = now + CLOCK_SLACK_MS + 1000;
        assert!(
            b.adopt(&same(ahead / 1000, now), now).is_none(),
            "epoch beyond the clock"
        );
        assert!(
            b.adopt(&same(t.epoch, ahead), now).is_none(),
            "version beyond the clock"
        );
        let taken = b.adopt(&same(t.epoch + 2, 7), now).unwrap().clone();
        assert_eq!((taken.epoch, taken.version), (t.epoch + 2, 7));
        assert!(taken.routes_as(&t));
        // The next change numbers on from there, the epoch staying while the
        // writer does.
        let next = b.apply(&seen(true, true), now + 10).unwrap();
        assert_eq!((next.epoch, next.version), (t.epoch + 2, now + 10));
    }

    /// The database fence the README gives (*Fencing*), as a function:
    /// the row holds the region it lets write, the highest epoch it saw,
    /// and `floor`, the highest epoch it saw before that region's turn. A
    /// write routed on a higher epoch to `region`'s backends raises the
    /// row (and the floor, when the region differs); it may commit when
    /// the row then names its region and its epoch is above the floor.
    fn fence(row: &mut (usize, u64, u64), region: usize, epoch: u64) -> bool {
        if row.1 < epoch {
            let floor = if row.0 == region { row.2 } else { row.1 };
            *row = (region, epoch, floor);
        }
        row.0 == region && row.2 < epoch
    }

    const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-southeast-1"];

    /// A write routed by one replica's table: where it went, on which
    /// epoch, after how many writer moves the table was read, and when it
    /// reaches the database.
    struct Write {
        region: usize,
        epoch: u64,
        generation: usize,
        arrives: u64,
    }

    proptest::proptest! {
        /// Replicas started at different times, polling at their own pace
        /// with clocks up to half a second apart, hand out different
        /// epochs for the same writer; the fence still orders writer
        /// moves across all of them. A write whose table was read after
        /// the writer's latest move commits until the next move begins,
        /// whichever replica routed it; and no write routed to a region
        /// before a writer move commits after one routed to another
        /// region after it — however long it was on its way. (Writes are
        /// held while AWS shows a `FailoverState`, which lasts seconds.)
        /// So it does when replicas take each other's numbering of a
        /// table from proxies, however late it reaches them (`adopts`:
        /// after a poll, the replica polled is offered the numbering of a
        /// table any replica handed out before, as a proxy routing on it
        /// names it).
        #[test]
        fn the_fence_orders_writer_moves_across_replicas(
            replicas in proptest::collection::vec((0u64..300_000, 1_000u64..10_000, 0u64..1_000), 1..4),
            moves in proptest::collection::vec((10_000u64..200_000, 5_000u64..60_000, 1usize..3), 0..5),
            delays in proptest::collection::vec(0u64..400_000, 1..50),
            adopts in proptest::collection::vec(proptest::option::of(proptest::num::usize::ANY), 1..50),
        ) {
            // Moves: (begins, ends, region the writer is in from `ends`).
            let mut timeline = Vec::new();
            let (mut at, mut writer) = (0, 0);
            for (gap, window, step) in moves {
                writer = (writer + step) % REGIONS.len();
                timeline.push((at + gap, at + gap + window, writer));
                at += gap + window;
            }
            let horizon = at + 300_000;
            let clock_base = 1_800_000_000_000u64;
            let mut polls: Vec<(u64, usize)> = replicas
                .iter()
                .enumerate()
                .flat_map(|(i, &(start, every, _))| {
                    (0..).map(move |k| (start + k * every, i)).take_while(|&(t, _)| t < horizon)
                })
                .collect();
            polls.sort();
            let mut builders: Vec<Option<Builder>> = replicas.iter().map(|_| None).collect();
            let mut writes = Vec::new();
            let mut handed: Vec<Numbering> = Vec::new();
            for (k, (t, i)) in polls.into_iter().enumerate() {
                let generation = timeline.iter().filter(|m| m.1 <= t).count();
                let held = timeline.iter().any(|m| m.0 <= t && t < m.1);
                let region = generation.checked_sub(1).map_or(0, |g| timeline[g].2);
                let mut seen = view(REGIONS[region], &[]);
                seen.failover_in_progress = held;
                // Clocks between 500 ms behind and 499 ms ahead.
                let clock = clock_base + t + replicas[i].2 - 500;
                let b = builders[i].get_or_insert_with(|| Builder::new(clock / 1000));
                if let Some(t) = b.apply(&seen, clock) {
                    handed.push(Numbering {
                        epoch: t.epoch,
                        version: t.version,
                        routing: t.routing_digest(),
                    });
                }
                if let Some(j) = adopts[k % adopts.len()] {
                    b.adopt(&handed[j % handed.len()], clock);
                }
                let table = b.current().expect("a table after a view");
                if !table.failover_in_progress {
                    writes.push(Write {
                        region,
                        epoch: table.epoch,
                        generation,
                        arrives: t + delays[writes.len() % delays.len()],
                    });
                }
            }
            writes.sort_by_key(|w| w.arrives);
            let mut row = (usize::MAX, 0, 0);
            let mut committed: Vec<&Write> = Vec::new();
            for w in &writes {
                let ok = fence(&mut row, w.region, w.epoch);
                let next_move = timeline.get(w.generation).map_or(u64::MAX, |m| m.0);
                proptest::prop_assert!(
                    ok || w.arrives >= next_move,
                    "a write of generation {} (epoch {}) to {} refused before the next move",
                    w.generation, w.epoch, REGIONS[w.region]
                );
                if ok {
                    let newer = committed
                        .iter()
                        .find(|c| c.generation > w.generation && c.region != w.region);
                    proptest::prop_assert!(
                        newer.is_none(),
                        "a write of generation {} to {} committed after one of generation {} to another region",
                        w.generation, REGIONS[w.region], newer.map_or(0, |c| c.generation)
                    );
                    committed.push(w);
                }
            }
        }

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

        /// Two replicas of one source, started at different times, each
        /// reading every change at its own time (either first), number
        /// each table their own way. A proxy offered the tables of both,
        /// the slower one's before it has read the change too, refuses
        /// only a table that routes otherwise than its own, and never goes
        /// back; once it has named its numbering to each replica (not
        /// after every change), the two serve the very table it routes on.
        #[test]
        fn replicas_come_to_number_each_table_alike_through_a_proxy(
            starts in (0u64..5_000, 0u64..5_000),
            changes in proptest::collection::vec(
                (
                    (proptest::bool::ANY, proptest::bool::ANY),
                    (1u64..3_000, 0u64..2_000),
                    proptest::bool::ANY,
                    proptest::bool::ANY,
                ),
                0..20,
            ),
        ) {
            let base = 1_800_000_000_000u64;
            let mut replicas = [
                Builder::new((base + starts.0) / 1000),
                Builder::new((base + starts.1) / 1000),
            ];
            let mut proxy = None;
            let now = base + starts.0.max(starts.1);
            both_read(&mut replicas, &mut proxy, &seen(true, false), (now, 0), true, true)?;
            let mut now = now;
            for ((east, drained), (gap, later), first_is_0, named) in changes {
                now += gap * 1000;
                let view = seen(east, drained);
                both_read(&mut replicas, &mut proxy, &view, (now, later), first_is_0, named)?;
            }
        }
    }

    /// The view of two healthy regions, the writer in us-east-1 when
    /// `east`, eu-west-1 at weight 0 when `drained`.
    fn seen(east: bool, drained: bool) -> TopologyView {
        let eu_weight = Some(if drained { 0 } else { 100 });
        view(
            if east { "us-east-1" } else { "eu-west-1" },
            &[
                ("us-east-1", Some(100), Some(true)),
                ("eu-west-1", eu_weight, Some(true)),
            ],
        )
    }

    /// One replica reads `view` at `at.0` (replica 0 when `first_is_0`),
    /// the other `at.1` ms after; the proxy is offered the first's table,
    /// the other's as it was, then the other's once it has read `view`.
    /// When `named`, the proxy's numbering then reaches both, which must
    /// then serve its table.
    fn both_read(
        replicas: &mut [Builder; 2],
        proxy: &mut Option<RoutingTable>,
        view: &TopologyView,
        at: (u64, u64),
        first_is_0: bool,
        named: bool,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        let order = if first_is_0 { [0, 1] } else { [1, 0] };
        let mut offers = Vec::new();
        if let Some(t) = replicas[order[0]].apply(view, at.0) {
            offers.push(t.clone());
        }
        // The slower replica's table from before the change.
        offers.extend(replicas[order[1]].current().cloned());
        if let Some(t) = replicas[order[1]].apply(view, at.0 + at.1) {
            offers.push(t.clone());
        }
        for t in offers {
            let before = proxy.clone();
            let admitted = t.admit(before.as_ref(), ["us-east-1", "eu-west-1"]);
            match (&admitted, &before) {
                (Ok(edgeroute_config::Admission::Accepted), _) => *proxy = Some(t.clone()),
                (Ok(_), _) => {}
                (Err(_), Some(old)) => proptest::prop_assert!(
                    !t.routes_as(old),
                    "{:?}: {:?} over {:?}",
                    admitted,
                    t,
                    old
                ),
                (Err(e), None) => proptest::prop_assert!(false, "the first table refused: {e}"),
            }
            if let (Some(old), Some(new)) = (&before, &*proxy) {
                proptest::prop_assert!((new.epoch, new.version) >= (old.epoch, old.version));
            }
        }
        // Both have read `view`: the proxy routes as they do.
        let taken = proxy.clone().expect("a table");
        for r in replicas.iter() {
            proptest::prop_assert!(r.current().is_some_and(|t| t.routes_as(&taken)));
        }
        if named {
            let reported = Numbering {
                epoch: taken.epoch,
                version: taken.version,
                routing: taken.routing_digest(),
            };
            for r in replicas.iter_mut() {
                r.adopt(&reported, at.0 + at.1);
                proptest::prop_assert_eq!(r.current(), Some(&taken));
            }
        }
        Ok(())
    }
}

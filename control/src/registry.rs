//! The proxies that report to this control plane: the table each routes on
//! and what each measures of every region. Entries age out; the registry is
//! bounded, so a misbehaving client cannot grow it without limit, and a new
//! proxy is never turned away: the one heard from longest ago makes room.

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

/// How often, at most, forgetting live proxies to make room is logged.
const WARN_EVERY: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    proxies: HashMap<String, (ProxyReport, Instant)>,
    /// Live proxies forgotten to make room since the last warning.
    forgotten: u64,
    warned_at: Option<Instant>,
}

/// What recording a report did besides keeping it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    /// A proxy still counted as live was forgotten to make room: the
    /// registry held [`MAX_PROXIES`] that reported within
    /// `FORGET_AFTER`. It is back with its next report.
    pub forgot_live: bool,
    /// Live proxies forgotten since the last time this was set, when it
    /// is time to say so (at most once a minute).
    pub warn: Option<u64>,
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
    /// Records a report. A new proxy always gets in: when the registry
    /// is full, the proxies not heard from for `FORGET_AFTER` go first,
    /// then the one heard from longest ago (a proxy that went away, or
    /// one that reports so seldom that it is not counted anyway).
    pub fn record(&self, report: ProxyReport, now: Instant) -> Recorded {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut done = Recorded::default();
        let map = &mut inner.proxies;
        if !map.contains_key(&report.id) && map.len() >= MAX_PROXIES {
            map.retain(|_, (_, at)| now.saturating_duration_since(*at) < FORGET_AFTER);
            if map.len() >= MAX_PROXIES {
                let oldest = map
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(id, _)| id.clone());
                if let Some(id) = oldest {
                    map.remove(&id);
                }
                done.forgot_live = true;
            }
        }
        map.insert(report.id.clone(), (report, now));
        if done.forgot_live {
            inner.forgotten += 1;
            if inner
                .warned_at
                .is_none_or(|at| now.saturating_duration_since(at) >= WARN_EVERY)
            {
                inner.warned_at = Some(now);
                done.warn = Some(std::mem::take(&mut inner.forgotten));
            }
        }
        done
    }

    /// Proxies that reported within `max_age`, by id. Those not heard from
    /// for `FORGET_AFTER` (or `max_age`, if longer) are forgotten.
    pub fn fresh(&self, max_age: Duration, now: Instant) -> Vec<ProxyStatus> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let keep = FORGET_AFTER.max(max_age);
        inner
            .proxies
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < keep);
        let mut out: Vec<ProxyStatus> = inner
            .proxies
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

    /// Proxies remembered, live or not yet forgotten.
    #[cfg(test)]
    fn remembered(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.proxies.len()
    }
}

/// The proxies routing on an older table than `table`: under lower
/// numbers, unless on `table` itself as another replica numbers it in the
/// same epoch (the same table in an earlier epoch is from before a writer
/// move and back, whose writes the database fence refuses).
pub fn behind<'a>(
    proxies: &'a [ProxyStatus],
    table: &RoutingTable,
) -> impl Iterator<Item = &'a ProxyStatus> {
    let digest = table.routing_digest();
    proxies
        .iter()
        .filter(move |p| routes_before(p, table, &digest))
}

/// [`behind`] for one proxy; `digest`, `table`'s.
fn routes_before(p: &ProxyStatus, table: &RoutingTable, digest: &str) -> bool {
    (p.report.epoch, p.report.version) < (table.epoch, table.version)
        && !(p.report.epoch == table.epoch && p.report.routing.as_deref() == Some(digest))
}

/// The proxies that report to a control plane, or to each of its replicas
/// (a proxy reports to one replica at a time), as the commands read them.
#[derive(Debug, Clone)]
pub enum Reporting {
    /// One control plane's.
    One(Vec<ProxyStatus>),
    /// Each replica's that could be read, with the table it serves.
    Replicas(Vec<Replica>),
}

/// One replica's view: where it is, the table it serves (`None` before
/// its first), and the proxies that report to it.
#[derive(Debug, Clone)]
pub struct Replica {
    pub url: String,
    /// How messages name it: "the replica at URL", or "this control plane".
    pub name: String,
    pub table: Option<RoutingTable>,
    pub proxies: Vec<ProxyStatus>,
    /// Its last read of its source failed: its table no longer follows.
    pub source_stale: bool,
    /// Its id among replicas (`/v1/status`), when it says one.
    pub instance: Option<String>,
}

/// A proxy not yet routing on a change, and why.
#[derive(Debug, Clone)]
pub struct Lagging<'a> {
    pub proxy: &'a ProxyStatus,
    pub why: Why,
}

/// Why a proxy counts as not routing on a change yet; the names are
/// replicas' ([`Replica::name`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// Its numbers are below the change's table's (its replica's, with
    /// replicas).
    Behind,
    /// Its replica serves no table yet.
    ReplicaHasNoTable(String),
    /// Its replica serves a table without the change: it has not read it.
    ReplicaWithout(String),
    /// It routes on a table seen without the change, of that replica.
    OnTableOf(String),
}

/// What the confirmation of one change has seen of the replicas, from one
/// read to the next: the first table of each that had the change (a
/// later table of that replica is later than the change: a replica's
/// numbers never go down while it runs), and the tables seen without it.
#[derive(Debug, Default)]
pub struct Seen {
    /// By URL: the replica's instance then, and that table.
    first: HashMap<String, (Option<String>, RoutingTable)>,
    /// Numbers, digest and the replica's name of each table seen without
    /// the change: a proxy on one of them lacks it, whatever its numbers.
    without: Vec<(u64, u64, String, String)>,
}

impl Seen {
    /// Notes `t`, a table of `replica` without the change.
    pub fn without(&mut self, t: &RoutingTable, replica: &str) {
        let numbers = (t.epoch, t.version);
        let digest = t.routing_digest();
        if !self
            .without
            .iter()
            .any(|(e, v, d, _)| (*e, *v) == numbers && *d == digest)
        {
            self.without
                .push((t.epoch, t.version, digest, replica.to_owned()));
        }
    }
}

impl Reporting {
    /// Every proxy once, by id, with the index of the replica it reports
    /// to: one that moved between replicas (its kept connection ended) as
    /// its newest report has it.
    fn each(&self) -> Vec<(&ProxyStatus, Option<usize>)> {
        let mut all: Vec<(&ProxyStatus, Option<usize>)> = match self {
            Reporting::One(proxies) => proxies.iter().map(|p| (p, None)).collect(),
            Reporting::Replicas(replicas) => replicas
                .iter()
                .enumerate()
                .flat_map(|(i, r)| r.proxies.iter().map(move |p| (p, Some(i))))
                .collect(),
        };
        all.sort_by(|(a, _), (b, _)| {
            a.report
                .id
                .cmp(&b.report.id)
                .then(a.age_seconds.total_cmp(&b.age_seconds))
        });
        all.dedup_by(|(later, _), (first, _)| later.report.id == first.report.id);
        all
    }

    /// Every proxy reporting, once each, by id.
    pub fn proxies(&self) -> Vec<ProxyStatus> {
        self.each().into_iter().map(|(p, _)| p.clone()).collect()
    }

    /// With replicas, what stands in the way of following a change to
    /// every proxy: a replica with no table yet, one whose source cannot
    /// be read (its table would not follow), one replica listed twice
    /// (under two names), and a
    /// command's control plane, `control` (its id), not among them (the
    /// list leaves out a replica, whose proxies would go unseen).
    pub fn problems(&self, control: Option<&str>) -> Vec<String> {
        let Reporting::Replicas(replicas) = self else {
            return Vec::new();
        };
        let mut problems = Vec::new();
        for (i, r) in replicas.iter().enumerate() {
            if r.table.is_none() {
                problems.push(format!(
                    "{} has no table yet (it has not read its source since it started, or it is no control plane)",
                    r.name
                ));
            }
            if r.source_stale {
                problems.push(format!(
                    "{} cannot read its source (its log and edgeroute_control_source_errors_total say why): its table would not follow a change",
                    r.name
                ));
            }
            if let Some(twin) = replicas[..i]
                .iter()
                .find(|o| o.instance.is_some() && o.instance == r.instance)
            {
                problems.push(format!(
                    "{} and {} are one replica: actions.replica_urls lists it twice, and may leave another out",
                    twin.name, r.name
                ));
            }
        }
        if let Some(control) = control
            && !replicas
                .iter()
                .any(|r| r.instance.as_deref() == Some(control))
        {
            problems.push(
                "the control plane at actions.control_url is none of the replicas listed: actions.replica_urls leaves out a replica (list every one), whose proxies would go unseen".to_owned(),
            );
        }
        problems
    }

    /// With replicas, how many proxies report to each now (a proxy that
    /// moved counts where its newest report went).
    pub fn per_replica(&self) -> Vec<usize> {
        let Reporting::Replicas(replicas) = self else {
            return Vec::new();
        };
        let mut counts = vec![0; replicas.len()];
        for (_, i) in self.each() {
            if let Some(i) = i {
                counts[i] += 1;
            }
        }
        counts
    }

    /// The proxies not yet routing on `target` (the change's table, as the
    /// command's control plane serves it) or a later table. With
    /// replicas, whose numberings may differ, a proxy is judged against its
    /// own replica's first table that has the change (`has_change`, asked
    /// of each replica's table: what the change made, in a table that
    /// replica built after the change began), kept in `seen` from one call
    /// to the next, and is waited for until its replica has one; and a
    /// proxy routing on the table of a replica that has not read the
    /// change (a higher numbering it took from there) is waited for too.
    pub fn behind<'a>(
        &'a self,
        target: &RoutingTable,
        has_change: &dyn Fn(&Replica, &RoutingTable) -> bool,
        seen: &mut Seen,
    ) -> Vec<Lagging<'a>> {
        let replicas: &[Replica] = match self {
            Reporting::One(_) => &[],
            Reporting::Replicas(replicas) => replicas,
        };
        for r in replicas {
            // A replica restarted since (another instance) starts over: its
            // numbers begin anew, from its clock.
            if seen
                .first
                .get(&r.url)
                .is_some_and(|(instance, _)| *instance != r.instance)
            {
                seen.first.remove(&r.url);
            }
            match &r.table {
                Some(t) if !seen.first.contains_key(&r.url) && has_change(r, t) => {
                    seen.first
                        .insert(r.url.clone(), (r.instance.clone(), t.clone()));
                }
                Some(t) if !seen.first.contains_key(&r.url) => seen.without(t, &r.name),
                _ => {}
            }
        }
        // What each replica's proxies are judged against, or why they wait.
        let against: Vec<Result<(&RoutingTable, String), Why>> = match self {
            Reporting::One(_) => vec![Ok((target, target.routing_digest()))],
            Reporting::Replicas(_) => replicas
                .iter()
                .map(|r| match (&r.table, seen.first.get(&r.url)) {
                    (None, _) => Err(Why::ReplicaHasNoTable(r.name.clone())),
                    (Some(_), Some((_, first))) => Ok((first, first.routing_digest())),
                    (Some(_), None) => Err(Why::ReplicaWithout(r.name.clone())),
                })
                .collect(),
        };
        self.each()
            .into_iter()
            .filter_map(|(proxy, replica)| {
                let why = match &against[replica.unwrap_or(0)] {
                    Err(why) => Some(why.clone()),
                    Ok((table, digest)) => {
                        let on_without = seen.without.iter().find(|(epoch, version, d, _)| {
                            (proxy.report.epoch, proxy.report.version) == (*epoch, *version)
                                && proxy.report.routing.as_deref() == Some(d)
                        });
                        match on_without {
                            Some((.., name)) => Some(Why::OnTableOf(name.clone())),
                            None => routes_before(proxy, table, digest).then_some(Why::Behind),
                        }
                    }
                };
                why.map(|why| Lagging { proxy, why })
            })
            .collect()
    }

    /// With replicas, the names of those not seen with the change yet
    /// (after [`Reporting::behind`] noted what it read in `seen`): a
    /// replica no proxy reports to now may still hand its table out.
    pub fn without_change(&self, seen: &Seen) -> Vec<&str> {
        match self {
            Reporting::One(_) => Vec::new(),
            Reporting::Replicas(replicas) => replicas
                .iter()
                .filter(|r| !seen.first.contains_key(&r.url))
                .map(|r| r.name.as_str())
                .collect(),
        }
    }

    /// This reading without the replicas `excused` picks out, and their
    /// names.
    pub fn excusing(self, excused: impl Fn(&Replica) -> bool) -> (Reporting, Vec<String>) {
        match self {
            Reporting::One(_) => (self, Vec::new()),
            Reporting::Replicas(replicas) => {
                let (out, kept): (Vec<Replica>, Vec<Replica>) =
                    replicas.into_iter().partition(|r| excused(r));
                (
                    Reporting::Replicas(kept),
                    out.into_iter().map(|r| r.name).collect(),
                )
            }
        }
    }
}

/// The proxies' vote on `region`.
pub fn vote(proxies: &[ProxyStatus], region: &str) -> Vote {
    let mut v = Vote::default();
    for p in proxies {
        // A proxy that knows no backend of the region has nothing to say
        // of it: no vote either way.
        if let Some(r) = p
            .report
            .regions
            .iter()
            .find(|r| r.name == region && r.backends > 0)
        {
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
            routing: None,
            regions: vec![RegionHealth {
                name: "us-east-1".into(),
                backends: 2,
                in_rotation: us_in_rotation,
            }],
        }
    }

    /// A table at epoch 5, version 50, with the primary in eu-west-1.
    fn eu_primary() -> RoutingTable {
        RoutingTable {
            epoch: 5,
            version: 50,
            primary_region: Some("eu-west-1".into()),
            failover_in_progress: false,
            regions: Vec::new(),
        }
    }

    /// [`eu_primary`] before the writer moved there.
    fn us_primary() -> RoutingTable {
        RoutingTable {
            primary_region: Some("us-east-1".into()),
            ..eu_primary()
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
        // A proxy that knows no backend of a region casts no vote on it.
        let mut empty = report("d", 1, 0);
        empty.regions[0].backends = 0;
        reg.record(empty, now);
        let v = vote(&reg.fresh(Duration::from_secs(30), now), "us-east-1");
        assert_eq!((v.reporting, v.unhealthy), (2, 1), "{v:?}");
    }

    #[test]
    fn a_proxy_is_behind_under_lower_numbers_of_another_table() {
        let (table, older) = (eu_primary(), us_primary());
        let status = |id: &str, epoch, version, routing: Option<&RoutingTable>| ProxyStatus {
            report: ProxyReport {
                routing: routing.map(RoutingTable::routing_digest),
                version,
                ..report(id, epoch, 2)
            },
            age_seconds: 0.0,
        };
        let proxies = [
            status("old", 4, 40, Some(&older)),
            status("unsaid", 5, 40, None),
            status("renumbered", 5, 40, Some(&table)),
            // The same table in an epoch before two writer moves.
            status("before_moves", 3, 60, Some(&table)),
            status("current", 5, 50, Some(&table)),
            status("ahead", 6, 1, Some(&older)),
        ];
        let ids: Vec<&str> = behind(&proxies, &table)
            .map(|p| p.report.id.as_str())
            .collect();
        assert_eq!(ids, ["old", "unsaid", "before_moves"]);
    }

    /// A table like `t` under other numbers.
    fn numbered(t: &RoutingTable, epoch: u64, version: u64) -> RoutingTable {
        RoutingTable {
            epoch,
            version,
            ..t.clone()
        }
    }

    /// A proxy routing on `t`, reported `age_seconds` ago.
    fn on(id: &str, t: &RoutingTable, age_seconds: f64) -> ProxyStatus {
        ProxyStatus {
            report: ProxyReport {
                routing: Some(t.routing_digest()),
                version: t.version,
                ..report(id, t.epoch, 2)
            },
            age_seconds,
        }
    }

    fn replica(name: &str, table: Option<&RoutingTable>, proxies: Vec<ProxyStatus>) -> Replica {
        Replica {
            url: format!("http://{name}"),
            name: name.into(),
            table: table.cloned(),
            proxies,
            source_stale: false,
            instance: Some(format!("id-{name}")),
        }
    }

    /// What stands in the way of following a change: a replica's stale
    /// source, one replica under two names, a command's control plane
    /// that is none of them.
    #[test]
    fn a_stale_replica_one_listed_twice_or_one_left_out_is_named() {
        let t = eu_primary();
        let all_well = Reporting::Replicas(vec![
            replica("a", Some(&t), vec![]),
            replica("b", Some(&t), vec![]),
        ]);
        assert!(all_well.problems(Some("id-a")).is_empty());
        assert!(all_well.problems(None).is_empty());
        assert!(Reporting::One(Vec::new()).problems(Some("x")).is_empty());
        let mut stale = replica("b", Some(&t), vec![]);
        stale.source_stale = true;
        let mut twin = replica("a2", Some(&t), vec![]);
        twin.instance = Some("id-a".into());
        let troubled = Reporting::Replicas(vec![
            replica("a", Some(&t), vec![]),
            stale,
            twin,
            replica("new", None, vec![]),
        ]);
        let said = troubled.problems(Some("id-elsewhere"));
        assert_eq!(said.len(), 4, "{said:?}");
        for (said, starts) in said.iter().zip([
            "b cannot read its source",
            "a and a2 are one replica",
            "new has no table yet",
            "the control plane at actions.control_url is none of the replicas listed",
        ]) {
            assert!(said.starts_with(starts), "{said}");
        }
    }

    fn lagging<'a>(
        reporting: &'a Reporting,
        target: &RoutingTable,
        seen: &mut Seen,
    ) -> Vec<(&'a str, Why)> {
        reporting
            .behind(target, &|_, t| t.routes_as(target), seen)
            .iter()
            .map(|l| (l.proxy.report.id.as_str(), l.why.clone()))
            .collect()
    }

    /// A command reading every replica judges each proxy against the
    /// table its replica serves, once that table has the change: the
    /// replicas' numberings need not agree, and a replica that has not
    /// read the change holds its proxies back whatever their numbers.
    #[test]
    fn with_replicas_each_proxy_is_judged_by_its_replicas_table() {
        let (target, before) = (eu_primary(), us_primary());
        // a: the change, under a higher numbering of its own.
        let a_table = numbered(&target, 9, 3);
        // b: not yet, and numbered above the target.
        let b_table = numbered(&before, 8, 1);
        let replicas = vec![
            replica(
                "a",
                Some(&a_table),
                vec![
                    on("on-a", &a_table, 1.0),
                    on("a-behind", &numbered(&before, 9, 2), 1.0),
                    // Moved to b since: its newer report there counts.
                    on("moved", &a_table, 4.0),
                ],
            ),
            replica(
                "b",
                Some(&b_table),
                vec![on("on-b", &b_table, 1.0), on("moved", &b_table, 0.5)],
            ),
            replica("c", None, vec![on("c-none", &b_table, 1.0)]),
        ];
        let reporting = Reporting::Replicas(replicas);
        let ids: Vec<(String, f64)> = reporting
            .proxies()
            .iter()
            .map(|p| (p.report.id.clone(), p.age_seconds))
            .collect();
        let ids: Vec<(&str, f64)> = ids.iter().map(|(id, age)| (id.as_str(), *age)).collect();
        assert_eq!(
            ids,
            [
                ("a-behind", 1.0),
                ("c-none", 1.0),
                ("moved", 0.5),
                ("on-a", 1.0),
                ("on-b", 1.0)
            ]
        );
        assert_eq!(reporting.per_replica(), [2, 2, 1]);
        let mut seen = Seen::default();
        assert_eq!(
            lagging(&reporting, &target, &mut seen),
            [
                ("a-behind", Why::Behind),
                ("c-none", Why::ReplicaHasNoTable("c".into())),
                ("moved", Why::ReplicaWithout("b".into())),
                ("on-b", Why::ReplicaWithout("b".into())),
            ]
        );
        // By numbers alone, b's proxies (epoch 8 > 5) would pass.
        let merged = reporting.proxies();
        let by_numbers: Vec<&str> = behind(&merged, &target)
            .map(|p| p.report.id.as_str())
            .collect();
        assert_eq!(by_numbers, Vec::<&str>::new());
        // Once b serves the change (its own numbering), its proxies on it
        // are current.
        let Reporting::Replicas(mut replicas) = reporting else {
            unreachable!()
        };
        let b_changed = numbered(&target, 8, 2);
        replicas[1].table = Some(b_changed.clone());
        replicas[1].proxies = vec![on("on-b", &b_changed, 0.5)];
        let reporting = Reporting::Replicas(replicas);
        assert_eq!(
            lagging(&reporting, &target, &mut seen),
            [
                ("a-behind", Why::Behind),
                ("c-none", Why::ReplicaHasNoTable("c".into()))
            ]
        );
    }

    /// A replica seen serving the change and then a later table (another
    /// change came) is past the change: its proxies on either pass, and
    /// those below its first table with the change do not.
    #[test]
    fn a_replica_past_the_change_counts_as_having_it() {
        let (target, before) = (eu_primary(), us_primary());
        let with = numbered(&target, 7, 10);
        let mut later = numbered(&target, 7, 11);
        later.failover_in_progress = true;
        let mut seen = Seen::default();
        let first = Reporting::Replicas(vec![replica(
            "a",
            Some(&with),
            vec![on("p", &numbered(&before, 7, 9), 1.0)],
        )]);
        assert_eq!(lagging(&first, &target, &mut seen), [("p", Why::Behind)]);
        let next = Reporting::Replicas(vec![replica(
            "a",
            Some(&later),
            vec![
                on("p", &with, 1.0),
                on("q", &later, 1.0),
                on("r", &numbered(&before, 7, 9), 1.0),
            ],
        )]);
        assert_eq!(lagging(&next, &target, &mut seen), [("r", Why::Behind)]);
        // Never seen with the change, the later table holds them back.
        assert_eq!(
            lagging(&next, &target, &mut Seen::default()),
            [
                ("p", Why::ReplicaWithout("a".into())),
                ("q", Why::ReplicaWithout("a".into())),
                ("r", Why::ReplicaWithout("a".into()))
            ]
        );
    }

    /// A replica whose first table read has the change and a later one
    /// beside it (another region's state, read in the same poll) has the
    /// change: what it is asked is what the change made, not the table the
    /// command's control plane served.
    #[test]
    fn a_replica_that_read_the_change_with_another_has_it() {
        let target = eu_primary();
        let mut with_more = numbered(&target, 7, 10);
        with_more.failover_in_progress = true;
        let reporting = Reporting::Replicas(vec![replica(
            "a",
            Some(&with_more),
            vec![on("p", &with_more, 1.0)],
        )]);
        let moved = |_: &Replica, t: &RoutingTable| t.primary_region == target.primary_region;
        assert!(
            reporting
                .behind(&target, &moved, &mut Seen::default())
                .is_empty()
        );
        assert_eq!(
            lagging(&reporting, &target, &mut Seen::default()),
            [("p", Why::ReplicaWithout("a".into()))],
            "the whole table differs"
        );
    }

    /// Across reads: a replica restarted since it was seen with the change
    /// (another instance) starts over; a replica no proxy reports to is
    /// still waited for; a table seen without the change in an earlier
    /// read holds a proxy on it after its replica moved on; and replicas
    /// can be excused by name.
    #[test]
    fn what_a_confirmation_sees_holds_from_read_to_read() {
        let (target, before) = (eu_primary(), us_primary());
        let a_with = numbered(&target, 7, 10);
        let b_before = numbered(&before, 9, 1);
        let mut seen = Seen::default();
        let first = Reporting::Replicas(vec![
            replica("a", Some(&a_with), vec![on("on-b-table", &b_before, 1.0)]),
            replica("b", Some(&b_before), vec![]),
        ]);
        assert_eq!(
            lagging(&first, &target, &mut seen),
            [("on-b-table", Why::OnTableOf("b".into()))]
        );
        assert_eq!(first.without_change(&seen), ["b"], "no proxy reports to b");
        // b reads the change; the proxy is still on b's table from before.
        let b_with = numbered(&target, 9, 2);
        let second = Reporting::Replicas(vec![
            replica("a", Some(&a_with), vec![on("on-b-table", &b_before, 1.0)]),
            replica("b", Some(&b_with), vec![]),
        ]);
        assert_eq!(
            lagging(&second, &target, &mut seen),
            [("on-b-table", Why::OnTableOf("b".into()))]
        );
        assert!(second.without_change(&seen).is_empty());
        // a restarts (another instance) with a stale read, numbered higher.
        let mut restarted = replica("a", Some(&numbered(&before, 12, 1)), vec![]);
        restarted.instance = Some("id-a-again".into());
        restarted.proxies = vec![on("on-a", &numbered(&before, 12, 1), 1.0)];
        let third = Reporting::Replicas(vec![restarted, replica("b", Some(&b_with), vec![])]);
        assert_eq!(
            lagging(&third, &target, &mut seen),
            [("on-a", Why::ReplicaWithout("a".into()))]
        );
        assert_eq!(third.without_change(&seen), ["a"]);
        let (rest, excused) = third.excusing(|r| r.name == "a");
        assert_eq!(excused, ["a"]);
        assert!(lagging(&rest, &target, &mut seen).is_empty());
        assert!(rest.without_change(&seen).is_empty());
    }

    /// A proxy that took a replica's table without the change (numbered
    /// above its own replica's, as a replica restarted with a stale view
    /// numbers it) is waited for, though its numbers pass.
    #[test]
    fn a_proxy_on_the_table_of_a_replica_without_the_change_waits() {
        let (target, before) = (eu_primary(), us_primary());
        let a_with = numbered(&target, 7, 10);
        let b_stale = numbered(&before, 9, 1);
        let reporting = Reporting::Replicas(vec![
            replica("a", Some(&a_with), vec![on("took-b", &b_stale, 1.0)]),
            replica("b", Some(&b_stale), vec![]),
        ]);
        assert_eq!(
            lagging(&reporting, &target, &mut Seen::default()),
            [("took-b", Why::OnTableOf("b".into()))]
        );
    }

    #[test]
    fn one_control_planes_proxies_are_judged_by_numbers() {
        let target = eu_primary();
        let proxies = vec![
            ProxyStatus {
                report: report("old", 4, 2),
                age_seconds: 1.0,
            },
            ProxyStatus {
                report: ProxyReport {
                    version: 50,
                    ..report("current", 5, 2)
                },
                age_seconds: 1.0,
            },
        ];
        let reporting = Reporting::One(proxies);
        assert_eq!(
            lagging(&reporting, &target, &mut Seen::default()),
            [("old", Why::Behind)]
        );
        assert_eq!(reporting.proxies().len(), 2);
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

    #[test]
    fn a_full_registry_forgets_the_proxy_heard_from_longest_ago() {
        let reg = Registry::default();
        let t0 = Instant::now();
        for i in 0..MAX_PROXIES {
            let at = t0 + Duration::from_millis(i as u64);
            assert_eq!(
                reg.record(report(&format!("p{i}"), 1, 2), at),
                Recorded::default()
            );
        }
        // p0 reports again: it is now the newest, and p1 the oldest.
        let later = t0 + Duration::from_secs(20);
        assert!(!reg.record(report("p0", 1, 2), later).forgot_live);
        let first = reg.record(report("new", 1, 0), later);
        assert_eq!(
            first,
            Recorded {
                forgot_live: true,
                warn: Some(1)
            }
        );
        assert_eq!(reg.remembered(), MAX_PROXIES);
        let ids: Vec<String> = reg
            .fresh(Duration::from_secs(60), later)
            .into_iter()
            .map(|p| p.report.id)
            .collect();
        assert!(ids.contains(&"new".to_owned()) && ids.contains(&"p0".to_owned()));
        assert!(!ids.contains(&"p1".to_owned()), "p1 was the oldest");
        // The next within the minute is counted, not warned of; the one
        // after it warns of both.
        assert_eq!(
            reg.record(report("new2", 1, 0), later),
            Recorded {
                forgot_live: true,
                warn: None
            }
        );
        let minute = later + WARN_EVERY;
        assert_eq!(
            reg.record(report("new3", 1, 0), minute),
            Recorded {
                forgot_live: true,
                warn: Some(2)
            }
        );
    }

    #[test]
    fn proxies_not_heard_from_are_forgotten_without_waiting_for_a_full_registry() {
        let reg = Registry::default();
        let t0 = Instant::now();
        reg.record(report("gone", 1, 2), t0);
        reg.record(report("here", 1, 2), t0 + FORGET_AFTER);
        let later = t0 + FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(reg.fresh(Duration::from_secs(60), later).len(), 1);
        assert_eq!(reg.remembered(), 1, "the entry past FORGET_AFTER is gone");
        // A full registry of proxies past FORGET_AFTER makes room by age
        // alone: no live proxy is forgotten.
        let reg = Registry::default();
        for i in 0..MAX_PROXIES {
            reg.record(report(&format!("p{i}"), 1, 2), t0);
        }
        reg.record(report("live", 1, 2), later);
        assert_eq!(reg.record(report("new", 1, 2), later), Recorded::default());
        assert_eq!(reg.remembered(), 2);
    }
}

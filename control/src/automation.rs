//! Automated failover (off unless `automation.enabled`): when both health
//! sources — Route 53's health check and the proxies' own probes — have
//! reported the primary region unhealthy for `automation.after`, run an
//! unplanned failover to the healthy secondary with the least replication
//! lag, if that lag is within `automation.max_replication_lag`.
//!
//! Guardrails: never while a writer change runs (ours or anyone's, as AWS
//! reports it); never within `automation.min_interval` of the last writer
//! move (in the history file, made by this process, or seen in AWS: a
//! move made from another machine counts from when it was seen); never
//! when the two sources disagree.

use crate::actions::Runner;
use crate::history::History;
use crate::metrics::ControlMetrics;
use crate::notify::Event;
use crate::registry::{Vote, vote};
use edgeroute_config::{AutomationConfig, TopologyView};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// What one evaluation concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Neither source reports the primary unhealthy (or there is none).
    Healthy,
    /// Both report it unhealthy, not yet for `after`.
    Waiting,
    /// The primary should fail over but a guardrail holds it.
    Held(Hold),
    /// Fail over to this region now.
    FailOver { to: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// One source reports the primary unhealthy and the other does not.
    SourcesDisagree,
    /// A writer change is already running.
    FailoverRunning,
    /// The last writer move was less than `min_interval` ago.
    MinInterval,
    /// No secondary is healthy by both sources with a known lag within bound.
    NoTarget,
    /// The primary's Route 53 health could not be read this time: the
    /// automation acts on fresh readings only.
    HealthUnread,
    /// The history file cannot be read, so the last writer move is not
    /// known: `min_interval` cannot be kept.
    HistoryUnreadable,
    /// An automated failover failed a short while ago; the next waits
    /// (one minute, doubling up to `min_interval`).
    RetryBackoff,
}

impl Hold {
    /// Every hold, for series shown from the start.
    pub const ALL: [Hold; 7] = [
        Hold::SourcesDisagree,
        Hold::FailoverRunning,
        Hold::MinInterval,
        Hold::NoTarget,
        Hold::HealthUnread,
        Hold::HistoryUnreadable,
        Hold::RetryBackoff,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Hold::SourcesDisagree => "sources_disagree",
            Hold::FailoverRunning => "failover_running",
            Hold::MinInterval => "min_interval",
            Hold::NoTarget => "no_target",
            Hold::HealthUnread => "health_unread",
            Hold::HistoryUnreadable => "history_unreadable",
            Hold::RetryBackoff => "retry_backoff",
        }
    }
}

/// What an evaluation looks at.
pub struct Inputs<'a> {
    pub view: &'a TopologyView,
    /// The proxies' vote on a region.
    pub vote: &'a dyn Fn(&str) -> Vote,
    /// A failover this process started has not finished.
    pub running: bool,
    /// When the writer last moved, as far as this process knows.
    pub last_move: Option<SystemTime>,
    /// The history file could not be read.
    pub history_unreadable: bool,
    /// After a failed automated failover: not before this.
    pub retry_after: Option<SystemTime>,
    /// Reads of the source that failed whole so far (a running count).
    pub failed_reads: u64,
    pub now: Instant,
    pub wall: SystemTime,
}

pub struct Automation {
    cfg: AutomationConfig,
    /// While both sources report the primary unhealthy: since when.
    down: Option<Down>,
    /// When the last view was evaluated and [`Inputs::failed_reads`]
    /// then, and the longest time between two evaluations, reads failing
    /// whole between them, that still counts toward `after`.
    last: Option<(Instant, u64)>,
    max_gap: Duration,
}

/// A run of evaluations in which both sources called one primary down.
struct Down {
    /// That primary: a new one waits `after` of its own.
    primary: String,
    since: Instant,
    /// Each secondary's replication lag (ms) when the run began: what a
    /// failover would lose then, for a secondary whose lag metric has
    /// stopped since (with the primary).
    lags: HashMap<String, u64>,
}

impl Automation {
    /// `poll_interval`: the source's, between reads.
    pub fn new(cfg: AutomationConfig, poll_interval: Duration) -> Automation {
        Automation {
            cfg,
            down: None,
            last: None,
            max_gap: max_gap(poll_interval),
        }
    }

    pub fn evaluate(&mut self, i: &Inputs<'_>) -> Decision {
        // `after` counts only time the sources were read through: reads
        // that failed whole for a while leave no view to judge, and the
        // primary may have come back and failed again meanwhile. (A read
        // that is slow but succeeds is no gap.)
        if self
            .last
            .replace((i.now, i.failed_reads))
            .is_some_and(|(last, failed)| {
                i.failed_reads > failed && i.now.saturating_duration_since(last) > self.max_gap
            })
        {
            self.down = None;
        }
        let Some(primary) = i.view.primary_region.as_deref() else {
            self.down = None;
            return Decision::Healthy;
        };
        if self.down.as_ref().is_some_and(|d| d.primary != primary) {
            self.down = None;
        }
        let route53_down = i
            .view
            .regions
            .iter()
            .any(|r| r.name == primary && r.healthy == Some(false));
        let proxies_down = (i.vote)(primary).unhealthy();
        if !route53_down && !proxies_down {
            self.down = None;
            return Decision::Healthy;
        }
        let unread = i
            .view
            .regions
            .iter()
            .any(|r| r.name == primary && r.health_unread);
        // The proxies call it down and Route 53's check cannot be read now:
        // that, not a disagreement, is why nothing is done.
        if proxies_down && !route53_down && unread {
            self.down = None;
            return Decision::Held(Hold::HealthUnread);
        }
        if route53_down != proxies_down {
            self.down = None;
            return Decision::Held(Hold::SourcesDisagree);
        }
        let down = self.down.get_or_insert_with(|| Down {
            primary: primary.to_owned(),
            since: i.now,
            lags: i
                .view
                .regions
                .iter()
                .filter_map(|r| Some((r.name.clone(), r.replication_lag_ms?)))
                .collect(),
        });
        if i.now.saturating_duration_since(down.since) < self.cfg.after {
            return Decision::Waiting;
        }
        if i.running || i.view.failover_in_progress {
            return Decision::Held(Hold::FailoverRunning);
        }
        if unread {
            return Decision::Held(Hold::HealthUnread);
        }
        if i.history_unreadable {
            return Decision::Held(Hold::HistoryUnreadable);
        }
        if let Some(last) = i.last_move
            && last
                .checked_add(self.cfg.min_interval)
                .is_none_or(|until| i.wall < until)
        {
            return Decision::Held(Hold::MinInterval);
        }
        if i.retry_after.is_some_and(|at| i.wall < at) {
            return Decision::Held(Hold::RetryBackoff);
        }
        let max_lag = self.cfg.max_replication_lag.as_millis() as u64;
        i.view
            .regions
            .iter()
            .filter(|r| r.name != primary)
            .filter(|r| r.healthy == Some(true) && !r.health_unread && r.weight != Some(0))
            .filter(|r| (i.vote)(&r.name).healthy())
            .filter_map(|r| {
                // The lag now; when its metric has stopped (with the
                // primary, say), the lag when the primary went down.
                let lag = r
                    .replication_lag_ms
                    .or_else(|| down.lags.get(&r.name).copied())?;
                Some((lag, &r.name)).filter(|_| lag <= max_lag)
            })
            .min()
            .map_or(Decision::Held(Hold::NoTarget), |(_, name)| {
                Decision::FailOver { to: name.clone() }
            })
    }
}

/// The longest time between two evaluations (two reads of the source that
/// succeeded) with reads that failed whole between them that still counts
/// toward `after`: two reads missed, and the half minute a slow read of
/// AWS may take.
pub fn max_gap(poll_interval: Duration) -> Duration {
    poll_interval * 2 + Duration::from_secs(30)
}

/// The wait after a failed automated failover before the next, doubled
/// with each failure in a row up to `min_interval`.
const RETRY_BACKOFF: Duration = Duration::from_secs(60);

/// Evaluates every view the source reads until the task is dropped.
pub async fn run(
    mut automation: Automation,
    mut views: watch::Receiver<Option<Arc<TopologyView>>>,
    max_age: Duration,
    runner: Arc<Runner>,
    metrics: Arc<ControlMetrics>,
) {
    let running = Arc::new(AtomicBool::new(false));
    // When AWS last accepted a writer move from this process.
    let last_move: Arc<Mutex<Option<SystemTime>>> = Arc::default();
    // Automated failovers that failed in a row, and when the last did; a
    // restart keeps to the wait they set, from the history file.
    let failures: Arc<Mutex<(u32, Option<SystemTime>)>> = Arc::new(Mutex::new(
        History::load(&runner.history_file)
            .map(|h| h.automation_failures())
            .unwrap_or_default(),
    ));
    let mut last_decision = Decision::Healthy;
    let mut announced = Announced::default();
    // The proxies report every few seconds: until they have had the time to,
    // their silence is no vote.
    let started = Instant::now();
    // The region the writer was last seen in. A move seen here starts the
    // minimum interval whoever made it: an operator's command run on
    // another machine keeps a history file of its own.
    let mut seen_primary: Option<String> = None;
    // Whether the history file's being unreadable was said.
    let mut history_said = false;
    // Replicas that could not be read for the proxies' votes, as said.
    let mut replicas_unread: Option<String> = None;
    while views.changed().await.is_ok() {
        let Some(view) = views.borrow_and_update().clone() else {
            continue;
        };
        if let Some(primary) = &view.primary_region {
            if let Some(before) = seen_primary.as_ref().filter(|b| *b != primary) {
                let now = SystemTime::now();
                let mut last = last_move.lock().unwrap_or_else(|p| p.into_inner());
                *last = (*last).max(Some(now));
                tracing::info!(from = %before, to = %primary, "the writer moved: automated failover waits automation.min_interval from now");
            }
            seen_primary = Some(primary.clone());
        }
        if started.elapsed() < max_age {
            continue;
        }
        let (recorded, history_unreadable) = match History::load(&runner.history_file) {
            Ok(h) => (h.last_writer_move().map(|o| o.started_at()), false),
            Err(e) => {
                // Said once; a failover it holds is announced as a hold.
                if !history_said {
                    tracing::warn!(error = %e, "automated failover cannot read the history file: it will not fail over until it can");
                }
                (None, true)
            }
        };
        history_said = history_unreadable;
        let last = (*last_move.lock().unwrap_or_else(|p| p.into_inner())).max(recorded);
        let retry_after = match *failures.lock().unwrap_or_else(|p| p.into_inner()) {
            (0, _) | (_, None) => None,
            (n, Some(at)) => {
                let backoff =
                    (RETRY_BACKOFF * 2u32.saturating_pow(n - 1)).min(automation.cfg.min_interval);
                at.checked_add(backoff)
            }
        };
        // This replica's proxies, and with `actions.replica_urls` the
        // others' (those that can be read: a replica that cannot is said
        // when that changes, and its proxies do not vote).
        let (reporting, unread) = runner.control.reporting_readable().await;
        metrics
            .automation_replicas_unread
            .set(unread.as_ref().map_or(0, |u| u.count) as i64);
        let unread = unread.map(|u| u.why);
        if unread != replicas_unread {
            match &unread {
                Some(why) => tracing::warn!(
                    "automated failover: {why}; their proxies do not vote until they can be read"
                ),
                None => tracing::info!("automated failover: every replica can be read again"),
            }
            replicas_unread = unread;
        }
        let proxies = reporting.proxies();
        let ours = running.load(Ordering::SeqCst);
        let decision = automation.evaluate(&Inputs {
            view: &view,
            vote: &|region| vote(&proxies, region),
            running: ours,
            last_move: last,
            history_unreadable,
            retry_after,
            failed_reads: metrics.source_reads_failed.get(),
            now: Instant::now(),
            wall: SystemTime::now(),
        });
        if decision == Decision::Healthy {
            // Failures stay "in a row" through a healthy spell shorter than
            // the wait they set: a flapping primary is not retried at every
            // `after`.
            if retry_after.is_none_or(|until| SystemTime::now() >= until) {
                *failures.lock().unwrap_or_else(|p| p.into_inner()) = (0, None);
            }
        }
        // Our own failover running holds the next, but is no news.
        let own_run = ours && decision == Decision::Held(Hold::FailoverRunning);
        if let Decision::Held(hold) = &decision {
            metrics
                .automation_held
                .with_label_values(&[hold.as_str()])
                .inc();
        }
        let changed = decision != last_decision;
        last_decision = decision.clone();
        let primary = view.primary_region.clone().unwrap_or_default();
        // What found the primary unhealthy in Route 53, when it did.
        let route53 = view
            .regions
            .iter()
            .find(|r| r.name == primary)
            .and_then(edgeroute_config::RegionView::why_unhealthy)
            .unwrap_or("-");
        let news = !own_run && announced.news(&primary, &decision);
        match decision {
            Decision::Held(hold) if news => {
                tracing::warn!(primary = %primary, reason = hold.as_str(), route53, "automated failover held");
                announce(
                    &runner,
                    Event::new(
                        "automation.held",
                        format!(
                            "primary region {primary} is unhealthy; automated failover held: {}",
                            hold.as_str()
                        ),
                    ),
                );
            }
            Decision::Waiting if changed => {
                tracing::warn!(primary = %primary, route53, "both health sources report the primary unhealthy; failing over if it lasts");
            }
            Decision::FailOver { to } => {
                running.store(true, Ordering::SeqCst);
                let summary = format!(
                    "primary region {primary} unhealthy by Route 53 and the proxies; unplanned failover to {to}"
                );
                tracing::warn!("{summary}");
                announce(&runner, Event::new("automation.triggered", summary));
                let (runner, running, metrics, last_move, failures) = (
                    Arc::clone(&runner),
                    Arc::clone(&running),
                    Arc::clone(&metrics),
                    Arc::clone(&last_move),
                    Arc::clone(&failures),
                );
                tokio::spawn(async move {
                    let outcome = runner
                        .move_writer_from(Some(&primary), &to, false, false)
                        .await;
                    // Only a move AWS accepted starts the minimum interval;
                    // a refusal (nothing changed) leaves the guard open.
                    // A move seen since (its own, or another) counts from
                    // when it was seen: the later time stands.
                    if let Ok(op) = &outcome
                        && op.timeline.iter().any(|s| s.name == "requested")
                    {
                        let mut last = last_move.lock().unwrap_or_else(|p| p.into_inner());
                        *last = (*last).max(Some(op.started_at()));
                    }
                    if let Err(refused) = &outcome {
                        tracing::warn!("automated failover refused: {refused}");
                    }
                    let result = result_of(&outcome);
                    // Its trigger was announced: so is a request it then
                    // found it need not make (the primary recovered, the
                    // writer moved meanwhile).
                    if let (Ok(op), "nothing_to_do") = (&outcome, result) {
                        let summary =
                            format!("automated failover asked for nothing: {}", op.summary);
                        tracing::warn!("{summary}");
                        announce(&runner, Event::new("automation.nothing_to_do", summary));
                    }
                    let mut failed = failures.lock().unwrap_or_else(|p| p.into_inner());
                    *failed = if result != "failed" {
                        (0, None)
                    } else {
                        (failed.0.saturating_add(1), Some(SystemTime::now()))
                    };
                    drop(failed);
                    metrics
                        .automation_failovers
                        .with_label_values(&[result])
                        .inc();
                    running.store(false, Ordering::SeqCst);
                });
            }
            _ => {}
        }
    }
}

/// The holds said to people while one primary is unhealthy: each reason
/// once, however the reasons alternate (sources that flap between
/// disagreeing and an unreadable check would otherwise page on-call at
/// every flip). A healthy primary, or another primary, starts afresh.
#[derive(Debug, Default)]
struct Announced {
    primary: String,
    said: Vec<Hold>,
}

impl Announced {
    /// Whether `decision`, taken on `primary`, is a hold not yet said.
    fn news(&mut self, primary: &str, decision: &Decision) -> bool {
        if decision == &Decision::Healthy || self.primary != primary {
            self.primary = primary.to_owned();
            self.said.clear();
        }
        match decision {
            Decision::Held(hold) if !self.said.contains(hold) => {
                self.said.push(*hold);
                true
            }
            _ => false,
        }
    }
}

/// How an automated failover ended, for
/// `edgeroute_control_automation_failovers_total{result}`.
fn result_of(outcome: &Result<crate::history::Operation, String>) -> &'static str {
    match outcome {
        // The writer was in the target already when it was read again
        // (moved meanwhile): nothing was asked.
        Ok(op) if op.ok && !op.requested() => "nothing_to_do",
        Ok(op) if op.ok => "ok",
        Ok(_) | Err(_) => "failed",
    }
}

/// Sends `event` without holding up the evaluation loop.
fn announce(runner: &Arc<Runner>, event: Event) {
    let notifier = Arc::clone(&runner.notifier);
    tokio::spawn(async move {
        notifier.send(&event).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeroute_config::RegionView;
    use proptest::prelude::*;

    const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-southeast-1"];

    fn cfg() -> AutomationConfig {
        AutomationConfig {
            enabled: true,
            after: Duration::from_secs(60),
            max_replication_lag: Duration::from_secs(1),
            min_interval: Duration::from_secs(3600),
        }
    }

    #[derive(Debug, Clone)]
    struct World {
        /// Per region: Route 53 healthy, proxies see it healthy, weight, lag.
        regions: Vec<(Option<bool>, bool, u32, Option<u64>)>,
        failover_in_progress: bool,
        running: bool,
        /// Seconds since the last writer move, if any.
        last_move_ago: Option<u64>,
        /// Seconds both sources have agreed.
        elapsed: u64,
        /// Per region: its health check could not be read this time.
        unread: Vec<bool>,
        history_unreadable: bool,
        /// Seconds until a failed automated failover allows the next.
        retry_in: Option<u64>,
    }

    fn view(w: &World) -> TopologyView {
        TopologyView {
            primary_region: Some(REGIONS[0].into()),
            failover_in_progress: w.failover_in_progress,
            regions: REGIONS
                .iter()
                .zip(w.regions.iter().zip(&w.unread))
                .map(|(n, ((h, _, weight, lag), unread))| RegionView {
                    name: (*n).into(),
                    weight: Some(*weight),
                    healthy: *h,
                    replication_lag_ms: *lag,
                    health_unread: *unread,
                    unhealthy_because: None,
                })
                .collect(),
        }
    }

    fn decide(w: &World) -> Decision {
        let v = view(w);
        let vote = |name: &str| {
            let i = REGIONS.iter().position(|r| *r == name).unwrap();
            Vote {
                reporting: 3,
                unhealthy: if w.regions[i].1 { 0 } else { 3 },
            }
        };
        let mut a = Automation::new(cfg(), Duration::from_secs(5));
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let inputs = |now: Instant| Inputs {
            view: &v,
            vote: &vote,
            running: w.running,
            last_move: w.last_move_ago.map(|s| wall - Duration::from_secs(s)),
            history_unreadable: w.history_unreadable,
            retry_after: w.retry_in.map(|s| wall + Duration::from_secs(s)),
            failed_reads: 0,
            now,
            wall,
        };
        // A view every poll (5 s), the last at `elapsed`.
        let mut decision = a.evaluate(&inputs(t0));
        let mut t = 0;
        while t < w.elapsed {
            t = (t + 5).min(w.elapsed);
            decision = a.evaluate(&inputs(t0 + Duration::from_secs(t)));
        }
        decision
    }

    fn healthy_world() -> World {
        World {
            regions: vec![
                (Some(true), true, 100, None),
                (Some(true), true, 100, Some(120)),
                (Some(true), true, 100, Some(310)),
            ],
            failover_in_progress: false,
            running: false,
            last_move_ago: None,
            elapsed: 120,
            unread: vec![false; 3],
            history_unreadable: false,
            retry_in: None,
        }
    }

    /// An automation on a 5 s poll, and its evaluation of a view at a
    /// time from its start, with `failed_reads` so far and no other hold.
    struct Clock {
        a: Automation,
        t0: Instant,
        wall: SystemTime,
    }

    impl Clock {
        fn new() -> Clock {
            Clock {
                a: Automation::new(cfg(), Duration::from_secs(5)),
                t0: Instant::now(),
                wall: SystemTime::now(),
            }
        }

        fn at(
            &mut self,
            v: &TopologyView,
            vote: &dyn Fn(&str) -> Vote,
            secs: u64,
            failed_reads: u64,
        ) -> Decision {
            self.a.evaluate(&Inputs {
                view: v,
                vote,
                running: false,
                last_move: None,
                history_unreadable: false,
                retry_after: None,
                failed_reads,
                now: self.t0 + Duration::from_secs(secs),
                wall: self.wall,
            })
        }
    }

    #[test]
    fn fails_over_to_the_least_lagging_healthy_secondary_once_both_sources_agree_long_enough() {
        let mut w = healthy_world();
        assert_eq!(decide(&w), Decision::Healthy);
        w.regions[0] = (Some(false), false, 100, None);
        assert_eq!(
            decide(&w),
            Decision::FailOver {
                to: "eu-west-1".into()
            }
        );
        w.elapsed = 30;
        assert_eq!(decide(&w), Decision::Waiting, "not for long enough yet");
        w.elapsed = 120;
        w.regions[1].1 = false;
        assert_eq!(
            decide(&w),
            Decision::FailOver {
                to: "ap-southeast-1".into()
            },
            "eu-west-1 is down by the proxies"
        );
        w.regions[2].3 = Some(5000);
        assert_eq!(decide(&w), Decision::Held(Hold::NoTarget), "lag over bound");
    }

    /// A new primary waits `after` of its own: the wait begun for the one
    /// before does not count for it.
    #[test]
    fn a_new_primary_waits_after_of_its_own() {
        let mut w = healthy_world();
        w.regions[0] = (Some(false), false, 100, None);
        w.regions[1] = (Some(false), false, 100, Some(120));
        let down = |primary: &str| {
            let mut v = view(&w);
            v.primary_region = Some(primary.into());
            v
        };
        let vote = |region: &str| Vote {
            reporting: 3,
            unhealthy: if region == "ap-southeast-1" { 0 } else { 3 },
        };
        let mut c = Clock::new();
        let mut at = |v: &TopologyView, secs: u64| c.at(v, &vote, secs, 0);
        for t in (0..55).step_by(5) {
            assert_eq!(at(&down("us-east-1"), t), Decision::Waiting, "{t} s");
        }
        // The writer moved (by hand, say), and the new primary is down too.
        for t in (55..115).step_by(5) {
            assert_eq!(at(&down("eu-west-1"), t), Decision::Waiting, "{t} s");
        }
        assert_eq!(
            at(&down("eu-west-1"), 115),
            Decision::FailOver {
                to: "ap-southeast-1".into()
            }
        );
    }

    /// `after` counts only time the sources were read through: a gap in
    /// the reads (whole reads failing) starts it anew.
    #[test]
    fn after_counts_only_time_the_sources_were_read_through() {
        let mut w = healthy_world();
        w.regions[0] = (Some(false), false, 100, None);
        let v = view(&w);
        let vote = |region: &str| Vote {
            reporting: 3,
            unhealthy: if region == "us-east-1" { 3 } else { 0 },
        };
        let gap = max_gap(Duration::from_secs(5)).as_secs() + 1;
        let mut c = Clock::new();
        let mut at = |secs: u64, failed_reads: u64| c.at(&v, &vote, secs, failed_reads);
        // A read that is slow but succeeds is no gap.
        assert_eq!(at(0, 0), Decision::Waiting);
        assert_eq!(at(gap, 0), Decision::Waiting, "{gap} s in: not yet after");
        assert_eq!(
            at(60, 0),
            Decision::FailOver {
                to: "eu-west-1".into()
            }
        );
        // Reads that failed whole for longer than two polls and half a
        // minute: the wait starts anew.
        let resumed = 60 + gap;
        assert_eq!(at(resumed, 3), Decision::Waiting, "the wait starts anew");
        let mut t = resumed;
        while t + 5 < resumed + 60 {
            t += 5;
            assert_eq!(at(t, 3), Decision::Waiting, "{t} s");
        }
        assert_eq!(
            at(resumed + 60, 3),
            Decision::FailOver {
                to: "eu-west-1".into()
            }
        );
    }

    /// A target whose lag metric stopped (with the primary) is judged by
    /// its lag when both sources first called the primary down; one whose
    /// metric goes on, by its lag now.
    #[test]
    fn a_target_is_judged_by_its_lag_when_the_primary_went_down() {
        let mut w = healthy_world();
        w.regions[0] = (Some(false), false, 100, None);
        let vote = |region: &str| Vote {
            reporting: 3,
            unhealthy: if region == "us-east-1" { 3 } else { 0 },
        };
        let mut c = Clock::new();
        let at_failure = view(&w);
        // After that, eu-west-1's lag metric stopped, and
        // ap-southeast-1's grew past the bound: it does not qualify.
        w.regions[1].3 = None;
        w.regions[2].3 = Some(9000);
        let later = view(&w);
        let mut at = |v: &TopologyView, secs: u64| c.at(v, &vote, secs, 0);
        assert_eq!(at(&at_failure, 0), Decision::Waiting);
        for t in (5..60).step_by(5) {
            assert_eq!(at(&later, t), Decision::Waiting, "{t} s");
        }
        assert_eq!(
            at(&later, 60),
            Decision::FailOver {
                to: "eu-west-1".into()
            },
            "eu-west-1 lagged 120 ms when the primary went down"
        );
    }

    #[test]
    fn a_failover_that_asked_nothing_is_counted_apart() {
        let op = |ok: bool, requested: bool| {
            let mut op = crate::history::tests::op(crate::history::Kind::Failover, 1);
            op.by = "automation".into();
            op.ok = ok;
            if !requested {
                op.timeline.clear();
            }
            Ok(op)
        };
        assert_eq!(result_of(&op(true, true)), "ok");
        assert_eq!(result_of(&op(true, false)), "nothing_to_do");
        assert_eq!(result_of(&op(false, true)), "failed");
        assert_eq!(result_of(&Err("refused".into())), "failed");
    }

    #[test]
    fn each_hold_is_announced_once_while_the_primary_stays_unhealthy() {
        let mut said = Announced::default();
        let held = |h| Decision::Held(h);
        let disagree = held(Hold::SourcesDisagree);
        let unread = held(Hold::HealthUnread);
        // Sources that flap between two reasons: each is news once.
        let flaps: Vec<bool> = [&disagree, &unread, &disagree, &unread, &Decision::Waiting]
            .into_iter()
            .map(|d| said.news("us-east-1", d))
            .collect();
        assert_eq!(flaps, [true, true, false, false, false]);
        // A healthy spell ends it; so does another primary.
        assert!(!said.news("us-east-1", &Decision::Healthy));
        assert!(said.news("us-east-1", &unread));
        assert!(said.news("eu-west-1", &unread));
        assert!(!said.news("eu-west-1", &unread));
        // Decisions that are no hold are never news here.
        let to = Decision::FailOver {
            to: "eu-west-1".into(),
        };
        assert!(!said.news("eu-west-1", &to));
    }

    #[test]
    fn guardrails_hold() {
        let mut w = healthy_world();
        w.regions[0] = (Some(false), true, 100, None);
        assert_eq!(decide(&w), Decision::Held(Hold::SourcesDisagree));
        w.regions[0] = (Some(true), false, 100, None);
        assert_eq!(decide(&w), Decision::Held(Hold::SourcesDisagree));
        // The proxies call it down and its check cannot be read (no
        // reading in memory, or an old healthy one): that is the hold.
        for last in [None, Some(true)] {
            w.regions[0] = (last, false, 100, None);
            w.unread[0] = true;
            assert_eq!(decide(&w), Decision::Held(Hold::HealthUnread), "{last:?}");
        }
        w.unread[0] = false;
        w.regions[0] = (Some(false), false, 100, None);
        w.failover_in_progress = true;
        assert_eq!(decide(&w), Decision::Held(Hold::FailoverRunning));
        w.failover_in_progress = false;
        w.running = true;
        assert_eq!(decide(&w), Decision::Held(Hold::FailoverRunning));
        w.running = false;
        w.last_move_ago = Some(600);
        assert_eq!(decide(&w), Decision::Held(Hold::MinInterval));
        w.last_move_ago = Some(7200);
        w.unread[0] = true;
        assert_eq!(decide(&w), Decision::Held(Hold::HealthUnread));
        w.unread[0] = false;
        w.history_unreadable = true;
        assert_eq!(decide(&w), Decision::Held(Hold::HistoryUnreadable));
        w.history_unreadable = false;
        w.retry_in = Some(30);
        assert_eq!(decide(&w), Decision::Held(Hold::RetryBackoff));
        w.retry_in = None;
        // A target needs Route 53 to call it healthy now, not to be silent.
        w.unread[1] = true;
        assert_eq!(
            decide(&w),
            Decision::FailOver {
                to: "ap-southeast-1".into()
            }
        );
        w.unread[1] = false;
        w.regions[1].0 = None;
        assert_eq!(
            decide(&w),
            Decision::FailOver {
                to: "ap-southeast-1".into()
            }
        );
        w.regions[1].0 = Some(true);
        assert_eq!(
            decide(&w),
            Decision::FailOver {
                to: "eu-west-1".into()
            }
        );
    }

    fn region() -> impl Strategy<Value = (Option<bool>, bool, u32, Option<u64>)> {
        (
            prop_oneof![Just(None), Just(Some(true)), Just(Some(false))],
            any::<bool>(),
            prop_oneof![Just(0u32), Just(100u32)],
            prop_oneof![Just(None), (0u64..3000).prop_map(Some)],
        )
    }

    /// Mostly what allows a failover, else anything: so that most cases
    /// meet every guardrail but one, and many meet them all.
    fn mostly<T: std::fmt::Debug + Clone + 'static>(
        allowing: impl Strategy<Value = T> + 'static,
        any: impl Strategy<Value = T> + 'static,
    ) -> BoxedStrategy<T> {
        prop_oneof![4 => allowing, 1 => any].boxed()
    }

    /// A region a failover could go to (healthy by both sources, in DNS,
    /// lag within bound), or any.
    fn target() -> BoxedStrategy<(Option<bool>, bool, u32, Option<u64>)> {
        mostly(
            (0u64..=1000).prop_map(|lag| (Some(true), true, 100, Some(lag))),
            region(),
        )
    }

    /// What the guardrails decide, said apart from the code: a failover
    /// when both sources have called the primary down for `after`, no
    /// writer change runs, the last move is `min_interval` old, nothing
    /// is unread, no retry wait runs; to the least lagging region both
    /// sources call healthy, in DNS and within the lag bound. `None`:
    /// no failover.
    fn expected(w: &World) -> Option<&'static str> {
        let p = &w.regions[0];
        let allowed = p.0 == Some(false)
            && !p.1
            && w.elapsed >= 60
            && !w.failover_in_progress
            && !w.running
            && w.last_move_ago.is_none_or(|s| s >= 3600)
            && !w.unread[0]
            && !w.history_unreadable
            && w.retry_in.is_none_or(|s| s == 0);
        let candidates = (1..REGIONS.len()).filter_map(|i| {
            let (route53, proxies, weight, lag) = w.regions[i];
            let lag = lag.filter(|l| *l <= 1000)?;
            (route53 == Some(true) && proxies && weight > 0 && !w.unread[i])
                .then_some((lag, REGIONS[i]))
        });
        candidates.min().filter(|_| allowed).map(|(_, name)| name)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Whatever the world looks like, a failover is decided exactly
        /// when every guardrail allows it and a target exists, and then
        /// to the least lagging region both sources call healthy.
        #[test]
        fn a_failover_is_decided_exactly_when_every_guardrail_allows_it(
            primary in mostly(Just((Some(false), false, 100u32, None)), region()),
            secondaries in prop::collection::vec(target(), 2),
            failover_in_progress in mostly(Just(false), any::<bool>()),
            running in mostly(Just(false), any::<bool>()),
            last_move_ago in mostly(prop::option::of(3600u64..10_000), prop::option::of(0u64..10_000)),
            elapsed in mostly(60u64..200, 0u64..200),
            unread in prop::collection::vec(mostly(Just(false), any::<bool>()), 3),
            history_unreadable in mostly(Just(false), any::<bool>()),
            retry_in in mostly(prop_oneof![Just(None), Just(Some(0u64))], prop::option::of(0u64..120)),
        ) {
            let mut regions = vec![primary];
            regions.extend(secondaries);
            let w = World {
                regions, failover_in_progress, running, last_move_ago, elapsed,
                unread, history_unreadable, retry_in,
            };
            let decided = match decide(&w) {
                Decision::FailOver { to } => Some(to),
                _ => None,
            };
            prop_assert_eq!(decided.as_deref(), expected(&w), "{:?}", w);
        }
    }
}

//! The failover runbook as actions: a planned switchover, an unplanned
//! failover, a drill (switchover and back), drain and undrain. Each checks
//! the current state first and refuses what would be unsafe, makes one AWS
//! call, then follows the change to its end — AWS reports it, the control
//! plane's table carries it, every running proxy routes on that table —
//! recording a timeline. Every outcome goes to the history file and to the
//! configured notifications.

use crate::aws::{AwsSource, AwsState, FailoverInfo, Member};
use crate::history::{History, Kind, Operation, Step};
use crate::notify::{Event, Notifier};
use crate::registry::{ProxyStatus, Registry};
use crate::server::Published;
use edgeroute_config::{RegionState, RoutingTable, TopologyView};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// Where an action reads the table served and the proxies' reports.
pub enum ControlView {
    /// A control plane over HTTP (the commands).
    Http {
        client: reqwest::Client,
        url: String,
        token: String,
    },
    /// This process's own table and registry (automated failover).
    Local {
        table: watch::Receiver<Option<Arc<Published>>>,
        registry: Arc<Registry>,
        max_age: Duration,
    },
}

impl ControlView {
    pub fn http(url: &str, token: &str) -> anyhow::Result<ControlView> {
        Ok(ControlView::Http {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            url: url.to_owned(),
            token: token.to_owned(),
        })
    }

    fn describe(&self) -> String {
        match self {
            ControlView::Http { url, .. } => format!("the control plane at {url}"),
            ControlView::Local { .. } => "this control plane".into(),
        }
    }

    async fn get(&self, path: &str) -> Result<reqwest::Response, String> {
        let ControlView::Http { client, url, token } = self else {
            return Err("not an HTTP view".into());
        };
        let resp = client
            .get(format!("{url}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| format!("cannot reach {}: {e}", self.describe()))?;
        match resp.status() {
            s if s.is_success() => Ok(resp),
            reqwest::StatusCode::UNAUTHORIZED => Err(format!(
                "{} refused the token (server.token_file or EDGEROUTE_CONTROL_TOKEN)",
                self.describe()
            )),
            s => Err(format!("{} answered {s} for {path}", self.describe())),
        }
    }

    /// The table served now; `None` before the first.
    pub async fn table(&self) -> Result<Option<RoutingTable>, String> {
        match self {
            ControlView::Local { table, .. } => {
                Ok(table.borrow().as_ref().map(|p| p.table.clone()))
            }
            ControlView::Http { .. } => match self.get("/v1/table").await {
                Ok(resp) => resp
                    .json()
                    .await
                    .map(Some)
                    .map_err(|e| format!("{} sent no table: {e}", self.describe())),
                Err(e) if e.contains("503") => Ok(None),
                Err(e) => Err(e),
            },
        }
    }

    /// The proxies that reported recently.
    pub async fn proxies(&self) -> Result<Vec<ProxyStatus>, String> {
        match self {
            ControlView::Local {
                registry, max_age, ..
            } => Ok(registry.fresh(*max_age, Instant::now())),
            ControlView::Http { .. } => {
                #[derive(serde::Deserialize)]
                struct Listing {
                    proxies: Vec<Listed>,
                }
                #[derive(serde::Deserialize)]
                struct Listed {
                    #[serde(flatten)]
                    report: edgeroute_config::ProxyReport,
                    age_seconds: f64,
                }
                let listing: Listing = self
                    .get("/v1/proxies")
                    .await?
                    .json()
                    .await
                    .map_err(|e| format!("{} sent no proxy list: {e}", self.describe()))?;
                Ok(listing
                    .proxies
                    .into_iter()
                    .map(|l| ProxyStatus {
                        report: l.report,
                        age_seconds: l.age_seconds,
                    })
                    .collect())
            }
        }
    }
}

/// How steps are shown as they happen.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// On stdout (the commands).
    Print,
    /// In the log (automated failover).
    Log,
}

/// The steps of one operation, timed from the request.
pub struct Timeline {
    started: Instant,
    started_ms: u64,
    steps: Vec<Step>,
    out: Output,
    prefix: &'static str,
}

impl Timeline {
    fn new(out: Output) -> Timeline {
        Timeline {
            started: Instant::now(),
            started_ms: crate::source::now_ms(),
            steps: Vec::new(),
            out,
            prefix: "",
        }
    }

    fn step(&mut self, name: &str, detail: String) {
        let name = format!("{}{name}", self.prefix);
        let at = self.started.elapsed().as_secs_f64();
        match self.out {
            Output::Print => println!("  +{at:>8.3}s  {name:<30} {detail}"),
            Output::Log => tracing::info!(at_seconds = at, step = %name, "{detail}"),
        }
        self.steps.push(Step {
            name,
            at_seconds: at,
            detail,
        });
    }

    fn finish(self, kind: Kind, by: &str, summary: String, error: Option<String>) -> Operation {
        Operation {
            kind,
            by: by.to_owned(),
            summary,
            started_ms: self.started_ms,
            ok: error.is_none(),
            error,
            duration_seconds: self.started.elapsed().as_secs_f64(),
            timeline: self.steps,
        }
    }
}

/// A writer move checked against the current state.
#[derive(Debug, Clone)]
pub struct MovePlan {
    pub from: Member,
    pub to: Member,
    pub planned: bool,
    /// The target's replication lag: what an unplanned failover may lose.
    pub lag_ms: Option<u64>,
}

/// Checks a writer move to `to` against `state`; the error says why not.
pub fn plan_move(
    state: &AwsState,
    global_cluster: &str,
    to: &str,
    planned: bool,
) -> Result<MovePlan, String> {
    if let Some(f) = &state.failover {
        return Err(format!(
            "a writer change is already running in global cluster {global_cluster} ({f}); wait for it to finish (edgeroute-control status)"
        ));
    }
    let from = state
        .writer()
        .ok_or_else(|| format!("global cluster {global_cluster} has no writer"))?
        .clone();
    let target = state.member(to).ok_or_else(|| {
        let names: Vec<&str> = state.members.iter().map(|m| m.region.as_str()).collect();
        format!(
            "{to} is not a region of global cluster {global_cluster}; its members are in {}",
            names.join(", ")
        )
    })?;
    if target.writer {
        return Err(format!("the writer is already in {to}"));
    }
    let lag_ms = state
        .view
        .regions
        .iter()
        .find(|r| r.name == to)
        .and_then(|r| r.replication_lag_ms);
    Ok(MovePlan {
        from,
        to: target.clone(),
        planned,
        lag_ms,
    })
}

/// The state, as `status` and every dry run show it.
pub fn describe(
    view: &TopologyView,
    failover: Option<&FailoverInfo>,
    table: Result<Option<&RoutingTable>, &str>,
    proxies: Result<&[ProxyStatus], &str>,
    history: Result<&History, &str>,
) -> String {
    let mut s = String::new();
    let writer = view.primary_region.as_deref().unwrap_or("none");
    let _ = writeln!(s, "writer region: {writer}");
    match failover {
        Some(f) => {
            let _ = writeln!(s, "writer change running: {f} — writes are held");
        }
        None => {
            let _ = writeln!(s, "writer change running: none");
        }
    }
    let _ = writeln!(s, "regions:");
    for r in &view.regions {
        let health = match r.healthy {
            Some(true) => "healthy",
            Some(false) => "UNHEALTHY",
            None => "no health check",
        };
        let weight = r.weight.map_or("-".into(), |w| w.to_string());
        let lag = r
            .replication_lag_ms
            .map_or("-".into(), |l| format!("{l} ms"));
        let role = if r.name == writer {
            "writer"
        } else {
            "secondary"
        };
        let _ = writeln!(
            s,
            "  {:<16} {role:<9} {health:<15} weight {weight:<4} replication lag {lag}",
            r.name
        );
    }
    match table {
        Ok(Some(t)) => {
            let _ = writeln!(
                s,
                "table served: epoch {} version {}, primary {}, writes {}",
                t.epoch,
                t.version,
                t.primary_region.as_deref().unwrap_or("none"),
                if t.failover_in_progress {
                    "held"
                } else {
                    "open"
                }
            );
            let drained: Vec<&str> = t
                .regions
                .iter()
                .filter(|r| r.state != RegionState::Active)
                .map(|r| r.name.as_str())
                .collect();
            if !drained.is_empty() {
                let _ = writeln!(s, "  not active: {}", drained.join(", "));
            }
            if let Ok(p) = proxies {
                let behind = p
                    .iter()
                    .filter(|p| (p.report.epoch, p.report.version) < (t.epoch, t.version))
                    .count();
                let _ = writeln!(
                    s,
                    "proxies reporting: {} ({} on the table served, {behind} behind)",
                    p.len(),
                    p.len() - behind
                );
            }
        }
        Ok(None) => {
            let _ = writeln!(s, "table served: none yet");
        }
        Err(e) => {
            let _ = writeln!(s, "table served: unknown ({e})");
        }
    }
    if let Err(e) = proxies {
        let _ = writeln!(s, "proxies reporting: unknown ({e})");
    }
    let now = SystemTime::now();
    match history {
        Ok(h) => {
            let line = |o: Option<&Operation>| {
                o.map_or("never".to_owned(), |o| {
                    let result = if o.ok {
                        "ok".to_owned()
                    } else {
                        format!("FAILED: {}", o.error.as_deref().unwrap_or("?"))
                    };
                    format!(
                        "{} — {}, {result}, {:.1} s, by {}",
                        o.when(now),
                        o.summary,
                        o.duration_seconds,
                        o.by
                    )
                })
            };
            let _ = writeln!(s, "last failover: {}", line(h.last_writer_move()));
            let _ = writeln!(s, "last failover test (drill): {}", line(h.last_drill()));
        }
        Err(e) => {
            let _ = writeln!(s, "history: {e}");
        }
    }
    s
}

/// Runs actions against AWS and follows them through the control plane.
pub struct Runner {
    pub aws: Arc<AwsSource>,
    pub control: ControlView,
    pub notifier: Arc<Notifier>,
    pub history_file: PathBuf,
    pub timeout: Duration,
    /// Pause between reads while following a change.
    pub poll: Duration,
    /// `cli` or `automation`.
    pub by: &'static str,
    pub out: Output,
}

impl Runner {
    fn global_cluster(&self) -> &str {
        &self.aws.config().global_cluster_id
    }

    /// Reads AWS, refusing with a clear message when it cannot.
    pub async fn state(&self) -> Result<AwsState, String> {
        self.aws
            .state()
            .await
            .map_err(|e| format!("cannot read the current state from AWS: {e}"))
    }

    fn say(&self, line: &str) {
        match self.out {
            Output::Print => println!("{line}"),
            Output::Log => tracing::info!("{line}"),
        }
    }

    async fn notify(&self, event: Event) {
        let failures = self.notifier.send(&event).await;
        if self.out == Output::Print {
            for f in failures {
                eprintln!("warning: notification {} not delivered: {f}", event.event);
            }
        }
    }

    /// Keeps `op` in the history file and announces it.
    async fn conclude(&self, op: Operation) -> Operation {
        if let Err(e) = History::update(&self.history_file, |h| h.operations.push(op.clone())) {
            match self.out {
                Output::Print => eprintln!("warning: {e}"),
                Output::Log => tracing::warn!("{e}"),
            }
        }
        let verb = if op.ok { "completed" } else { "failed" };
        let summary = match &op.error {
            None => format!("{} {verb} in {:.1} s", op.summary, op.duration_seconds),
            Some(e) => format!("{} {verb}: {e}", op.summary),
        };
        self.say(&summary);
        self.notify(Event::new(format!("{}.{verb}", op.kind.as_str()), summary).with(&op))
            .await;
        op
    }

    /// A planned switchover or an unplanned failover to `to`. With
    /// `dry_run`, prints the state and the steps and changes nothing.
    /// `Err` means refused before anything changed.
    pub async fn move_writer(
        &self,
        to: &str,
        planned: bool,
        dry_run: bool,
    ) -> Result<Operation, String> {
        let state = self.state().await?;
        let kind = if planned {
            Kind::Switchover
        } else {
            Kind::Failover
        };
        if state.failover.is_none() && state.writer().is_some_and(|w| w.region == to) {
            return Ok(self.nothing_to_do(kind, format!("the writer is already in {to}")));
        }
        let plan = plan_move(&state, self.global_cluster(), to, planned)?;
        let summary = format!(
            "{} {} → {} of global cluster {}",
            if planned {
                "planned switchover"
            } else {
                "unplanned failover"
            },
            plan.from.region,
            plan.to.region,
            self.global_cluster()
        );
        if dry_run {
            self.dry_run(&state, &summary, &self.move_steps(&plan))
                .await;
            return Ok(self.dry_run_record(kind, summary));
        }
        let mut tl = Timeline::new(self.out);
        self.say(&summary);
        let error = self.run_move(&mut tl, &plan, &summary).await.err();
        Ok(self
            .conclude(tl.finish(kind, self.by, summary, error))
            .await)
    }

    /// A switchover to `to` and back to the writer region of now.
    pub async fn drill(&self, to: &str, dry_run: bool) -> Result<Operation, String> {
        let state = self.state().await?;
        let there = plan_move(&state, self.global_cluster(), to, true)?;
        let back = MovePlan {
            from: there.to.clone(),
            to: there.from.clone(),
            planned: true,
            lag_ms: None,
        };
        let summary = format!(
            "failover drill {} → {} → {} of global cluster {}",
            there.from.region,
            there.to.region,
            there.from.region,
            self.global_cluster()
        );
        if dry_run {
            let mut steps = self.move_steps(&there);
            steps.extend(self.move_steps(&back));
            self.dry_run(&state, &summary, &steps).await;
            return Ok(self.dry_run_record(Kind::Drill, summary));
        }
        self.say(&summary);
        let mut tl = Timeline::new(self.out);
        tl.prefix = "there: ";
        let mut error = self.run_move(&mut tl, &there, &summary).await.err();
        if error.is_none() {
            tl.prefix = "back: ";
            error = self.run_move(&mut tl, &back, &summary).await.err();
        }
        tl.prefix = "";
        Ok(self
            .conclude(tl.finish(Kind::Drill, self.by, summary, error))
            .await)
    }

    fn move_steps(&self, plan: &MovePlan) -> Vec<String> {
        let call = if plan.planned {
            format!(
                "rds:SwitchoverGlobalCluster GlobalClusterIdentifier={} TargetDbClusterIdentifier={}",
                self.global_cluster(),
                plan.to.arn
            )
        } else {
            format!(
                "rds:FailoverGlobalCluster GlobalClusterIdentifier={} TargetDbClusterIdentifier={} AllowDataLoss=true (writes not yet replicated to {} are lost; its lag: {})",
                self.global_cluster(),
                plan.to.arn,
                plan.to.region,
                plan.lag_ms.map_or("unknown".into(), |l| format!("{l} ms"))
            )
        };
        vec![
            call,
            "wait until AWS reports the writer change running; the table holds writes (503 + Retry-After)".into(),
            format!("wait until AWS reports the writer in {}", plan.to.region),
            format!(
                "wait until {} serves a table with primary {} on a higher epoch",
                self.control.describe(),
                plan.to.region
            ),
            "wait until every proxy reporting to it routes on that epoch".into(),
        ]
    }

    async fn dry_run(&self, state: &AwsState, summary: &str, steps: &[String]) {
        let table = self.control.table().await;
        let proxies = self.control.proxies().await;
        let history = History::load(&self.history_file);
        self.say(&format!("dry run: {summary}\n\ncurrent state:"));
        self.say(
            describe(
                &state.view,
                state.failover.as_ref(),
                table.as_ref().map(Option::as_ref).map_err(String::as_str),
                proxies.as_deref().map_err(String::as_str),
                history.as_ref().map_err(String::as_str),
            )
            .trim_end(),
        );
        self.say("\nsteps (none taken):");
        for (i, s) in steps.iter().enumerate() {
            self.say(&format!("  {}. {s}", i + 1));
        }
    }

    /// Already as asked: said, not recorded, and a success.
    fn nothing_to_do(&self, kind: Kind, why: String) -> Operation {
        self.say(&format!("{why}; nothing to do"));
        Timeline::new(self.out).finish(kind, self.by, why, None)
    }

    fn dry_run_record(&self, kind: Kind, summary: String) -> Operation {
        Timeline::new(self.out).finish(kind, self.by, format!("dry run: {summary}"), None)
    }

    /// One writer move, followed to every proxy.
    async fn run_move(
        &self,
        tl: &mut Timeline,
        plan: &MovePlan,
        summary: &str,
    ) -> Result<(), String> {
        let deadline = Instant::now() + self.timeout;
        let before = self.control.table().await.ok().flatten();
        let epoch_before = before.as_ref().map_or(0, |t| t.epoch);
        self.aws
            .move_writer(&plan.to.arn, plan.planned)
            .await
            .map_err(|e| format!("AWS refused the writer change: {e}"))?;
        tl.step(
            "requested",
            format!(
                "{} accepted",
                if plan.planned {
                    "SwitchoverGlobalCluster"
                } else {
                    "FailoverGlobalCluster"
                }
            ),
        );
        self.notify(Event::new(
            if plan.planned {
                "switchover.requested"
            } else {
                "failover.requested"
            },
            format!("{summary}: requested"),
        ))
        .await;
        // AWS: running, then the new writer.
        let mut seen_running = false;
        let mut last_error = String::new();
        loop {
            // Only the global cluster while following: one call per read.
            match self.aws.global_cluster().await {
                Ok((members, failover)) => {
                    if let (Some(f), false) = (&failover, seen_running) {
                        seen_running = true;
                        tl.step("aws reports running", format!("FailoverState {}", f.status));
                    }
                    let writer = members.iter().find(|m| m.writer).map(|m| m.region.clone());
                    if failover.is_none() && writer.as_deref() == Some(plan.to.region.as_str()) {
                        tl.step(
                            "writer moved",
                            format!("AWS reports the writer in {}", plan.to.region),
                        );
                        break;
                    }
                    if failover.is_none()
                        && seen_running
                        && writer.as_deref() != Some(plan.to.region.as_str())
                    {
                        return Err(format!(
                            "the writer change ended with the writer in {}, not {}",
                            writer.as_deref().unwrap_or("no region"),
                            plan.to.region
                        ));
                    }
                }
                Err(e) => last_error = e.to_string(),
            }
            self.wait(deadline, || {
                format!(
                    "AWS did not report the writer in {} within {:?} (last read error: {})",
                    plan.to.region,
                    self.timeout,
                    if last_error.is_empty() {
                        "none"
                    } else {
                        &last_error
                    }
                )
            })
            .await?;
        }
        self.notify(Event::new(
            "writer.moved",
            format!("{summary}: AWS reports the writer in {}", plan.to.region),
        ))
        .await;
        // The control plane's table.
        let table = self
            .until(deadline, "a table with the new primary", |t| {
                t.primary_region.as_deref() == Some(plan.to.region.as_str())
                    && !t.failover_in_progress
                    && t.epoch > epoch_before
            })
            .await?;
        tl.step(
            "table epoch raised",
            format!(
                "epoch {epoch_before} → {}, primary {}",
                table.epoch, plan.to.region
            ),
        );
        self.confirm_proxies(tl, deadline, &table).await
    }

    /// Waits for a table `ok` accepts.
    async fn until(
        &self,
        deadline: Instant,
        what: &str,
        ok: impl Fn(&RoutingTable) -> bool,
    ) -> Result<RoutingTable, String> {
        let mut last = String::from("no table yet");
        loop {
            match self.control.table().await {
                Ok(Some(t)) if ok(&t) => return Ok(t),
                Ok(Some(t)) => last = format!("serving epoch {} version {}", t.epoch, t.version),
                Ok(None) => {}
                Err(e) => last = e,
            }
            self.wait(deadline, || {
                format!(
                    "{} did not serve {what} within {:?} ({last})",
                    self.control.describe(),
                    self.timeout
                )
            })
            .await?;
        }
    }

    /// Waits until every proxy reporting routes on `table` or later.
    async fn confirm_proxies(
        &self,
        tl: &mut Timeline,
        deadline: Instant,
        table: &RoutingTable,
    ) -> Result<(), String> {
        let mut last: String;
        loop {
            match self.control.proxies().await {
                Ok(p) => {
                    let behind: Vec<String> = p
                        .iter()
                        .filter(|p| {
                            (p.report.epoch, p.report.version) < (table.epoch, table.version)
                        })
                        .map(|p| {
                            format!(
                                "{} ({}, epoch {})",
                                p.report.id, p.report.region, p.report.epoch
                            )
                        })
                        .collect();
                    if behind.is_empty() {
                        let detail = if p.is_empty() {
                            format!("no proxy reports to {}", self.control.describe())
                        } else {
                            format!(
                                "{} of {} proxies route on epoch {} version {}",
                                p.len(),
                                p.len(),
                                table.epoch,
                                table.version
                            )
                        };
                        tl.step("proxies confirmed", detail);
                        return Ok(());
                    }
                    last = format!("behind: {}", behind.join(", "));
                }
                Err(e) => last = e,
            }
            self.wait(deadline, || {
                format!(
                    "not every proxy moved to epoch {} within {:?}: {last}",
                    table.epoch, self.timeout
                )
            })
            .await?;
        }
    }

    async fn wait(&self, deadline: Instant, why: impl FnOnce() -> String) -> Result<(), String> {
        let now = Instant::now();
        if now >= deadline {
            return Err(why());
        }
        tokio::time::sleep(self.poll.min(deadline - now)).await;
        Ok(())
    }

    /// Route 53 weight 0 for `region`'s latency record.
    pub async fn drain(&self, region: &str, dry_run: bool) -> Result<Operation, String> {
        self.set_weight(region, None, dry_run).await
    }

    /// Restores `region`'s weight: `weight`, else the one it had when it
    /// was drained, else the weight most other regions have, else 100.
    pub async fn undrain(
        &self,
        region: &str,
        weight: Option<i64>,
        dry_run: bool,
    ) -> Result<Operation, String> {
        let state = self.state().await?;
        if weight.is_none()
            && let Some(w) = state
                .records
                .get(region)
                .and_then(|r| r.weight())
                .filter(|w| *w > 0)
        {
            return Ok(self.nothing_to_do(
                Kind::Undrain,
                format!("{region} is not drained (Route 53 weight {w})"),
            ));
        }
        let chosen = match weight {
            Some(w) => (w, "as asked".to_owned()),
            None => {
                let kept = History::load(&self.history_file)
                    .ok()
                    .and_then(|h| h.weights_before_drain.get(region).copied());
                match kept {
                    Some(w) => (w, "its weight before the drain".into()),
                    None => (
                        common_weight(&state, region),
                        "no record of its weight before the drain: the weight most other regions have".into(),
                    ),
                }
            }
        };
        self.set_weight(region, Some(chosen), dry_run).await
    }

    async fn set_weight(
        &self,
        region: &str,
        undrain: Option<(i64, String)>,
        dry_run: bool,
    ) -> Result<Operation, String> {
        let state = self.state().await?;
        let record = state.records.get(region).ok_or_else(|| {
            let names: Vec<&str> = state.records.keys().map(String::as_str).collect();
            format!(
                "{region} has no latency record named {} in zone {}; regions: {}",
                self.aws.config().record_name,
                self.aws.config().hosted_zone_id,
                names.join(", ")
            )
        })?;
        let current = record.weight().unwrap_or(0);
        let (kind, weight, why) = match &undrain {
            None => (Kind::Drain, 0, "drain".to_owned()),
            Some((w, why)) => (Kind::Undrain, *w, why.clone()),
        };
        if !(0..=255).contains(&weight) {
            return Err(format!("a Route 53 weight is 0 to 255, got {weight}"));
        }
        if current == weight {
            return Ok(self.nothing_to_do(
                kind,
                format!("{region} already has Route 53 weight {weight}"),
            ));
        }
        if kind == Kind::Drain {
            let others_serving = state
                .view
                .regions
                .iter()
                .any(|r| r.name != region && r.weight != Some(0) && r.healthy != Some(false));
            if !others_serving {
                return Err(format!(
                    "draining {region} would leave no healthy region with weight above 0 to take its traffic"
                ));
            }
        }
        let summary = format!(
            "{} {region}: Route 53 weight {current} → {weight} ({why})",
            kind.as_str()
        );
        let steps = vec![
            format!(
                "route53:ChangeResourceRecordSets UPSERT {} {} SetIdentifier={} Weight={weight}",
                self.aws.config().record_name,
                record.r#type().as_str(),
                record.set_identifier().unwrap_or(region)
            ),
            format!(
                "wait until {} serves a table with {region} at weight {weight}",
                self.control.describe()
            ),
            "wait until every proxy reporting to it routes on that table".into(),
        ];
        if dry_run {
            self.dry_run(&state, &summary, &steps).await;
            return Ok(self.dry_run_record(kind, summary));
        }
        self.say(&summary);
        let deadline = Instant::now() + self.timeout;
        let mut tl = Timeline::new(self.out);
        let error = async {
            if kind == Kind::Drain {
                History::update(&self.history_file, |h| {
                    h.weights_before_drain.insert(region.to_owned(), current);
                })?;
            }
            self.aws
                .set_weight(record, weight)
                .await
                .map_err(|e| format!("Route 53 refused the change: {e}"))?;
            tl.step("requested", "ChangeResourceRecordSets accepted".into());
            let table = self
                .until(deadline, &format!("{region} at weight {weight}"), |t| {
                    t.region(region)
                        .is_some_and(|r| i64::from(r.weight) == weight)
                })
                .await?;
            let state = table.region(region).map_or("?", |r| r.state.as_str());
            tl.step(
                "table updated",
                format!(
                    "{region} {state}, weight {weight}, version {}",
                    table.version
                ),
            );
            self.confirm_proxies(&mut tl, deadline, &table).await?;
            if kind == Kind::Undrain {
                History::update(&self.history_file, |h| {
                    h.weights_before_drain.remove(region);
                })?;
            }
            Ok::<(), String>(())
        }
        .await
        .err();
        Ok(self
            .conclude(tl.finish(kind, self.by, summary, error))
            .await)
    }
}

/// The most common non-zero weight among the other regions; 100 if none.
fn common_weight(state: &AwsState, region: &str) -> i64 {
    let mut counts = std::collections::BTreeMap::new();
    for (name, r) in &state.records {
        if let Some(w) = r.weight().filter(|w| *w > 0 && name != region) {
            *counts.entry(w).or_insert(0usize) += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|(w, n)| (*n, *w))
        .map_or(100, |(w, _)| w)
}

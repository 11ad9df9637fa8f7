//! The failover runbook as actions: a planned switchover, an unplanned
//! failover, a drill (switchover and back), drain and undrain. Each checks
//! the current state first and refuses what would be unsafe, makes one AWS
//! call, then follows the change to its end — AWS reports it, the control
//! plane's table carries it, every running proxy routes on that table —
//! recording a timeline. Every outcome goes to the history file and to the
//! configured notifications.

use crate::aws::SavedRecord;
use crate::aws::{AwsSource, AwsState, FailoverInfo, Member};
use crate::history::{History, Kind, Operation, Step};
use crate::notify::{Event, Notifier};
use crate::registry::{Lagging, ProxyStatus, Registry, Replica, Reporting, Seen, Why};
use crate::server::Published;
use aws_sdk_route53::types::{ChangeAction, ResourceRecordSet};
use edgeroute_config::TokenFile;
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
        /// Every replica's own URL when several run (empty: one).
        replicas: Vec<String>,
        /// Read when each request is made: a token rotated in its file
        /// serves a view that lives as long as the process.
        token: Arc<TokenFile>,
    },
    /// This process's own table and registry (automated failover).
    Local {
        table: watch::Receiver<Option<Arc<Published>>>,
        registry: Arc<Registry>,
        max_age: Duration,
        /// The replicas `actions.replica_urls` lists (this one among them
        /// or not), when it does: the proxies are read from them too.
        replicas: Option<Arc<ControlView>>,
        /// This process's id among replicas (`/v1/status`).
        instance: String,
    },
}

impl ControlView {
    /// The control plane at `url`, and its replicas at `replicas` (see
    /// `actions.replica_urls`); `tls`, the client's TLS settings for an
    /// `https://` one (see [`edgeroute_config::tls::client_config`]).
    pub fn http(
        url: &str,
        replicas: &[String],
        token: Arc<TokenFile>,
        tls: Option<rustls::ClientConfig>,
    ) -> anyhow::Result<ControlView> {
        let mut client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(tls) = tls {
            client = client.use_preconfigured_tls(tls);
        }
        Ok(ControlView::Http {
            client: client.build()?,
            url: url.to_owned(),
            replicas: replicas.to_vec(),
            token,
        })
    }

    fn describe(&self) -> String {
        match self {
            ControlView::Http { url, .. } => format!("the control plane at {url}"),
            ControlView::Local { .. } => "this control plane".into(),
        }
    }

    /// Whether the proxies are read from replicas (`actions.replica_urls`),
    /// which number their tables each its own way.
    fn reads_replicas(&self) -> bool {
        match self {
            ControlView::Http { replicas, .. } => !replicas.is_empty(),
            ControlView::Local { replicas, .. } => replicas.is_some(),
        }
    }

    /// Where the proxies are read from, for the confirmation of a change.
    fn describe_proxies(&self) -> String {
        match self {
            ControlView::Http { replicas, .. } if replicas.len() == 1 => {
                format!("the replica at {} (actions.replica_urls)", replicas[0])
            }
            ControlView::Http { replicas, .. } if !replicas.is_empty() => {
                format!("the {} replicas in actions.replica_urls", replicas.len())
            }
            ControlView::Local {
                replicas: Some(_), ..
            } => "this control plane and the other replicas in actions.replica_urls".to_owned(),
            _ => self.describe(),
        }
    }

    /// An authenticated GET of the control plane or replica at `url`, set
    /// by `field`; the error carries the status when there was one.
    async fn get_at(
        &self,
        url: &str,
        field: &str,
        path: &str,
    ) -> Result<reqwest::Response, (Option<u16>, String)> {
        let ControlView::Http { client, token, .. } = self else {
            return Err((None, "not an HTTP view".into()));
        };
        let who = if field == CONTROL_URL {
            format!("the control plane at {url}")
        } else {
            format!("the replica at {url}")
        };
        // After a 401, the token before a rotation, if any (see
        // `TokenFile::to_try`): a replica may not have the new one yet.
        let mut resp = None;
        for offered in token.to_try() {
            let mut request = client.get(format!("{url}{path}")).bearer_auth(offered);
            if field == REPLICAS {
                // Asked at every read of a change's follow (and of the
                // automation's source): one that does not answer holds it
                // this long at most.
                request = request.timeout(Duration::from_secs(3));
            }
            let sent = request.send().await;
            let refused = matches!(&sent, Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED);
            resp = Some(sent);
            if !refused {
                break;
            }
        }
        let resp = resp.expect("asked at least once").map_err(|e| {
            let advice = edgeroute_config::tls::client_advice(
                &e,
                edgeroute_config::tls::ClientFields {
                    ca: "actions.ca_file",
                    url: field,
                    client_tls: "actions.client_tls",
                    https: url.starts_with("https://"),
                },
            );
            let advice = if !advice.is_empty() {
                advice
            } else if field == CONTROL_URL {
                " (start the control plane, or set actions.control_url to where it runs)".to_owned()
            } else {
                " (start it again, or take it out of actions.replica_urls once it is gone for good)"
                    .to_owned()
            };
            (
                None,
                format!(
                    "cannot reach {who}: {}{}",
                    edgeroute_config::error_chain(&e.without_url()),
                    advice
                ),
            )
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let message = if status == reqwest::StatusCode::UNAUTHORIZED {
            format!("{who} refused the token (server.token_file or EDGEROUTE_CONTROL_TOKEN)")
        } else if status == reqwest::StatusCode::NOT_FOUND {
            format!(
                "{who} answered {status} for {path}: {field} may name something other than an edgeroute control plane"
            )
        } else {
            format!("{who} answered {status} for {path}")
        };
        Err((Some(status.as_u16()), message))
    }

    /// An authenticated GET of a JSON document, `what` naming it in errors.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
    ) -> Result<T, String> {
        let ControlView::Http { url, .. } = self else {
            return Err("not an HTTP view".into());
        };
        self.get_json_at(url, CONTROL_URL, path, what).await
    }

    /// [`ControlView::get_json`] of the control plane or replica at `url`.
    async fn get_json_at<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        field: &str,
        path: &str,
        what: &str,
    ) -> Result<T, String> {
        self.get_at(url, field, path)
            .await
            .map_err(|(_, e)| e)?
            .json()
            .await
            .map_err(|e| {
                format!(
                    "{url} sent no {what}: {e} ({field} may name something other than an edgeroute control plane)"
                )
            })
    }

    /// The table served now; `None` before the first.
    pub async fn table(&self) -> Result<Option<RoutingTable>, String> {
        match self {
            ControlView::Local { table, .. } => {
                Ok(table.borrow().as_ref().map(|p| p.table.clone()))
            }
            ControlView::Http { url, .. } => match self.get_at(url, CONTROL_URL, "/v1/table").await
            {
                Ok(resp) => resp
                    .json()
                    .await
                    .map(Some)
                    .map_err(|e| format!("{url} sent no table: {e}")),
                // 503 before the control plane built its first table.
                Err((Some(503), _)) => Ok(None),
                Err((_, e)) => Err(e),
            },
        }
    }

    /// Whether the control plane's last read of its source failed, so the
    /// table it serves no longer follows AWS. This process's own view (the
    /// automation's, which makes only unplanned failovers) is not asked.
    pub async fn source_stale(&self) -> Result<bool, String> {
        match self {
            ControlView::Local { .. } => Ok(false),
            ControlView::Http { .. } => {
                #[derive(serde::Deserialize)]
                struct Status {
                    // Absent from an older control plane's answer.
                    #[serde(default)]
                    source_stale: bool,
                }
                let status: Status = self.get_json("/v1/status", "status").await?;
                Ok(status.source_stale)
            }
        }
    }

    /// The proxies that reported recently, once each.
    pub async fn proxies(&self) -> Result<Vec<ProxyStatus>, String> {
        Ok(self.reporting().await?.proxies())
    }

    /// The proxies that reported recently: the control plane's, or, with
    /// `actions.replica_urls`, every replica's with the table it serves
    /// (all asked at once). A replica that cannot be read makes it an
    /// error: the proxies that report to it would go unseen.
    pub async fn reporting(&self) -> Result<Reporting, String> {
        match self.reporting_readable().await {
            (reporting, None) => Ok(reporting),
            (_, Some(unread)) => Err(unread.why),
        }
    }

    /// [`ControlView::reporting`] from the replicas that could be read,
    /// and what could not be, if anything.
    pub async fn reporting_readable(&self) -> (Reporting, Option<Unread>) {
        match self {
            ControlView::Local {
                table,
                registry,
                max_age,
                replicas,
                instance,
            } => {
                let Some(others) = replicas else {
                    return (
                        Reporting::One(registry.fresh(*max_age, Instant::now())),
                        None,
                    );
                };
                let (mut read, unread) = others.replicas_readable().await;
                // Itself, should the list name it, is read here.
                read.retain(|r| r.instance.as_ref() != Some(instance));
                // Its own proxies (read after the others', so that no report
                // here looks older than it is beside theirs), once each
                // should the list name this replica too.
                read.insert(
                    0,
                    Replica {
                        url: String::new(),
                        name: "this control plane".into(),
                        table: table.borrow().as_ref().map(|p| p.table.clone()),
                        proxies: registry.fresh(*max_age, Instant::now()),
                        // A failed read is not news to itself: the
                        // automation fails over on the view it has.
                        source_stale: false,
                        instance: Some(instance.clone()),
                    },
                );
                (Reporting::Replicas(read), unread)
            }
            ControlView::Http { replicas, .. } if replicas.is_empty() => {
                #[derive(serde::Deserialize)]
                struct Listing {
                    proxies: Vec<ProxyStatus>,
                }
                match self.get_json::<Listing>("/v1/proxies", "proxy list").await {
                    Ok(listing) => (Reporting::One(listing.proxies), None),
                    Err(why) => (Reporting::One(Vec::new()), Some(Unread { count: 1, why })),
                }
            }
            ControlView::Http { .. } => {
                let (read, unread) = self.replicas_readable().await;
                (Reporting::Replicas(read), unread)
            }
        }
    }

    /// Each replica in `actions.replica_urls` that could be read (all
    /// asked at once), and what could not be, if anything.
    async fn replicas_readable(&self) -> (Vec<Replica>, Option<Unread>) {
        let ControlView::Http { replicas, .. } = self else {
            return (Vec::new(), None);
        };
        let asked = futures_util::future::join_all(replicas.iter().map(|url| async move {
            let status: ReplicaStatus = self
                .get_json_at(url, REPLICAS, "/v1/status", "status")
                .await?;
            Ok::<_, String>(Replica {
                url: url.clone(),
                name: format!("the replica at {url}"),
                table: status.table,
                proxies: status.proxies,
                source_stale: status.source_stale,
                instance: status.instance,
            })
        }))
        .await;
        let (read, failed): (Vec<_>, Vec<_>) = asked.into_iter().partition(Result::is_ok);
        let unread = (!failed.is_empty()).then(|| {
            let why: Vec<String> = failed.into_iter().filter_map(Result::err).collect();
            Unread {
                count: why.len(),
                why: format!(
                    "{} of {} replicas could not be read, and each proxy reports to one replica: {}",
                    why.len(),
                    replicas.len(),
                    why.join("; ")
                ),
            }
        });
        (read.into_iter().filter_map(Result::ok).collect(), unread)
    }

    /// The control plane's own id among replicas (`None` from one that
    /// does not say).
    pub async fn instance(&self) -> Result<Option<String>, String> {
        match self {
            ControlView::Local { instance, .. } => Ok(Some(instance.clone())),
            ControlView::Http { .. } => {
                #[derive(serde::Deserialize)]
                struct Status {
                    #[serde(default)]
                    instance: Option<String>,
                }
                let status: Status = self.get_json("/v1/status", "status").await?;
                Ok(status.instance)
            }
        }
    }

    /// [`Reporting::problems`], the control plane's membership among the
    /// replicas asked only when every one was read (`all_read`).
    pub async fn replica_problems(&self, reporting: &Reporting, all_read: bool) -> Vec<String> {
        if !matches!(reporting, Reporting::Replicas(_)) {
            return Vec::new();
        }
        let control = match all_read {
            true => self.instance().await.ok().flatten(),
            false => None,
        };
        reporting.problems(control.as_deref())
    }
}

/// Says, now and then, what a change is being followed for: one that
/// takes minutes is not silent meanwhile. First after 5 s of waiting, then
/// when what holds it changes (at most every 5 s) and every 30 s.
struct Waiting {
    since: Instant,
    said: Option<(Instant, String)>,
}

impl Waiting {
    fn new() -> Waiting {
        Waiting {
            since: Instant::now(),
            said: None,
        }
    }

    /// Says that the follow waits for `what`, held by `why`, when due.
    fn note(&mut self, runner: &Runner, what: &str, why: &str) {
        if let Some(line) = self.line_at(Instant::now(), what, why) {
            runner.say(&line);
        }
    }

    /// The line to say at `now`, if one is due.
    fn line_at(&mut self, now: Instant, what: &str, why: &str) -> Option<String> {
        let due = match &self.said {
            None => now - self.since >= Duration::from_secs(5),
            Some((at, said)) => {
                let since = now - *at;
                since >= Duration::from_secs(30) || (said != why && since >= Duration::from_secs(5))
            }
        };
        if !due {
            return None;
        }
        self.said = Some((now, why.to_owned()));
        Some(format!(
            "  ... {:.0} s: waiting for {what} ({why})",
            (now - self.since).as_secs_f64()
        ))
    }
}

/// A proxy not yet on a change, and why, as the commands say it; `status`
/// (no change running: `change` false) says it against the table served.
fn lagging_text(l: &Lagging, change: bool) -> String {
    let p = &l.proxy.report;
    let at = format!(
        "{} ({}, epoch {} version {}",
        p.id, p.region, p.epoch, p.version
    );
    match (&l.why, change) {
        (Why::Behind, _) => format!("{at})"),
        (Why::ReplicaHasNoTable(r), _) => format!("{at}; {r} serves no table yet)"),
        (Why::ReplicaWithout(r), true) => {
            format!("{at}; {r} serves a table without the change: it has not read it yet)")
        }
        (Why::ReplicaWithout(r), false) => format!("{at}; {r} serves another table)"),
        (Why::OnTableOf(r), true) => {
            format!("{at}; it routes on a table of {r} without the change)")
        }
        (Why::OnTableOf(r), false) => format!("{at}; it routes on another table of {r})"),
    }
}

/// The fields that name the control plane and its replicas, in errors.
const CONTROL_URL: &str = "actions.control_url";
const REPLICAS: &str = "actions.replica_urls";

/// What could not be read of the proxies: how many replicas (1 for a
/// control plane alone), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unread {
    pub count: usize,
    pub why: String,
}

/// What `/v1/status` says of a replica.
#[derive(serde::Deserialize)]
struct ReplicaStatus {
    table: Option<RoutingTable>,
    proxies: Vec<ProxyStatus>,
    // Absent from an older control plane's answer.
    #[serde(default)]
    source_stale: bool,
    #[serde(default)]
    instance: Option<String>,
}

/// Who runs this process, for the history and the notifications:
/// `EDGEROUTE_OPERATOR` when set (a name of the operator's choosing, as on
/// a shared bastion account), else the login name (the one `sudo` was run
/// by, under `sudo`; the account's name when no variable says it) and the
/// host, as `user@host`. Control characters are
/// dropped and it is cut at 128 characters.
pub fn operator() -> String {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let who = var("EDGEROUTE_OPERATOR").unwrap_or_else(|| {
        // Containers often set none of these: the account's name, then.
        let user = var("SUDO_USER")
            .or_else(|| var("USER"))
            .or_else(|| var("LOGNAME"))
            .or_else(|| {
                nix::unistd::User::from_uid(nix::unistd::getuid())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .unwrap_or_else(|| format!("uid {}", nix::unistd::getuid()));
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown-host".into());
        format!("{user}@{host}")
    });
    who.chars().filter(|c| !c.is_control()).take(128).collect()
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
    id: String,
    by: &'static str,
    operator: String,
    started: Instant,
    started_ms: u64,
    steps: Vec<Step>,
    out: Output,
    prefix: &'static str,
}

impl Timeline {
    fn new(runner: &Runner) -> Timeline {
        Timeline {
            id: uuid::Uuid::new_v4().simple().to_string(),
            by: runner.by,
            operator: runner.operator.clone(),
            started: Instant::now(),
            started_ms: crate::source::now_ms(),
            steps: Vec::new(),
            out: runner.out,
            prefix: "",
        }
    }

    /// The operation as it stands: `error`, or done if none.
    fn operation(&self, kind: Kind, summary: String, error: Option<String>) -> Operation {
        Operation {
            id: self.id.clone(),
            kind,
            by: self.by.to_owned(),
            operator: self.operator.clone(),
            summary,
            started_ms: self.started_ms,
            ok: error.is_none(),
            error,
            duration_seconds: self.started.elapsed().as_secs_f64(),
            timeline: self.steps.clone(),
            finished: true,
        }
    }

    fn step(&mut self, name: &str, detail: String) {
        let name = format!("{}{name}", self.prefix);
        let at = self.started.elapsed().as_secs_f64();
        match self.out {
            Output::Print => print_text(&format!("  +{at:>8.3}s  {name:<30} {detail}\n")),
            Output::Log => tracing::info!(at_seconds = at, step = %name, "{detail}"),
        }
        self.steps.push(Step {
            name,
            at_seconds: at,
            detail,
        });
    }

    fn finish(self, kind: Kind, summary: String, error: Option<String>) -> Operation {
        self.operation(kind, summary, error)
    }
}

/// Writes `text` to standard output. A reader that went away (`| head`)
/// loses what follows, not the action: the command goes on, records what
/// it did and ends with its status.
pub fn print_text(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// [`print_text`] to standard error.
pub fn eprint_text(text: &str) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
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
    to_unhealthy: bool,
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
    let region = state.view.regions.iter().find(|r| r.name == to);
    if let Some(r) = region.filter(|r| !to_unhealthy && r.healthy == Some(false)) {
        let why = r
            .why_unhealthy()
            .map(|w| format!(" ({w})"))
            .unwrap_or_default();
        return Err(format!(
            "Route 53 reports {to} unhealthy{why}: its proxies would answer every write 503 primary_down; \
             move the writer to a healthy region, or add --to-unhealthy if you know the health check is wrong"
        ));
    }
    let lag_ms = region.and_then(|r| r.replication_lag_ms);
    Ok(MovePlan {
        from,
        to: target.clone(),
        planned,
        lag_ms,
    })
}

/// The reporting proxies that see no backend of `region` in rotation
/// (or none of it at all): with the primary there, each would answer
/// every write 503 `primary_unavailable`.
pub fn cut_off_from<'a>(proxies: &'a [ProxyStatus], region: &str) -> Vec<&'a str> {
    // One that knows no backend of the region (a name DNS gave no
    // address, or a region its config lacks) is cut off too.
    proxies
        .iter()
        .filter(|p| {
            !p.report
                .regions
                .iter()
                .any(|r| r.name == region && r.in_rotation > 0)
        })
        .map(|p| p.report.id.as_str())
        .collect()
}

/// `ids`, at most five of them named.
fn some_of(ids: &[&str]) -> String {
    let mut named = ids.iter().take(5).copied().collect::<Vec<_>>().join(", ");
    if ids.len() > 5 {
        let _ = write!(named, " and {} more", ids.len() - 5);
    }
    named
}

/// Whether a table lets writes through, as `status` says it.
fn writes(t: &RoutingTable) -> String {
    let Some(primary) = t.primary_region.as_deref() else {
        return "REFUSED: the table names no primary (503 no_primary)".to_owned();
    };
    if t.failover_in_progress {
        return "held: a writer change is running (503 failover_in_progress)".to_owned();
    }
    match t
        .regions
        .iter()
        .find(|r| r.name == primary)
        .map(|r| r.state)
    {
        Some(RegionState::Down) => {
            format!("REFUSED: the primary {primary} is down (503 primary_down)")
        }
        _ => "open".to_owned(),
    }
}

/// The state, as `status` and every dry run show it.
/// `aws`: what AWS says, or why it could not be read at all (the rest is
/// shown all the same).
pub fn describe(
    aws: Result<(&TopologyView, bool, Option<&FailoverInfo>), &str>,
    table: Result<Option<&RoutingTable>, &str>,
    proxies: (Result<&Reporting, &str>, &[String]),
    history: Result<&History, &str>,
) -> String {
    let mut s = String::new();
    match aws {
        Ok((view, dns_unread, failover)) => describe_aws(&mut s, view, dns_unread, failover),
        Err(e) => {
            let _ = writeln!(s, "writer region: unknown ({e})");
        }
    }
    describe_control(&mut s, table, proxies, history);
    s
}

/// AWS's part of [`describe`]: the writer, a writer change, the regions.
fn describe_aws(
    s: &mut String,
    view: &TopologyView,
    dns_unread: bool,
    failover: Option<&FailoverInfo>,
) {
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
    // By name, as the table lists them (AWS lists a drained region, or the
    // writer's with no record, apart).
    let mut regions: Vec<_> = view.regions.iter().collect();
    regions.sort_by(|a, b| a.name.cmp(&b.name));
    for r in regions {
        let health = match r.healthy {
            Some(true) => "healthy",
            Some(false) => "UNHEALTHY",
            None if r.health_unread => "health unknown",
            None => "no health check",
        };
        let weight = match r.weight {
            None if dns_unread => "DNS unknown".to_owned(),
            None => "in DNS".to_owned(),
            Some(0) => "out of DNS".to_owned(),
            Some(w) => format!("weight {w}"),
        };
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
            "  {:<16} {role:<9} {health:<15} {weight:<11} replication lag {lag}",
            r.name
        );
        if let Some(why) = r.why_unhealthy() {
            let _ = writeln!(s, "  {:<16} unhealthy by {why}", "");
        }
    }
}

/// With replicas, a line for each: the proxies reporting to it and the
/// table it serves, against `served`; then `notes` (the replicas not
/// read, what stands in the way of following a change).
fn describe_replicas(
    s: &mut String,
    reporting: &Reporting,
    notes: &[String],
    served: &RoutingTable,
) {
    let Reporting::Replicas(replicas) = reporting else {
        return;
    };
    for (r, reporting) in replicas.iter().zip(reporting.per_replica()) {
        let table = match &r.table {
            None => "no table yet".to_owned(),
            Some(t) if t.routes_as(served) => format!("epoch {} version {}", t.epoch, t.version),
            Some(t) => format!(
                "epoch {} version {}, ANOTHER TABLE than the one above (a change one of them has not read yet)",
                t.epoch, t.version
            ),
        };
        let _ = writeln!(
            s,
            "  replica {}: {reporting} reporting, serves {table}",
            r.url
        );
    }
    for note in notes {
        let _ = writeln!(s, "  {note}");
    }
}

/// The control plane's part of [`describe`]: its table, the proxies, the
/// last failover and drill.
fn describe_control(
    s: &mut String,
    table: Result<Option<&RoutingTable>, &str>,
    (reporting, notes): (Result<&Reporting, &str>, &[String]),
    history: Result<&History, &str>,
) {
    let listed = reporting.map(Reporting::proxies);
    let proxies = listed.as_deref();
    match table {
        Ok(Some(t)) => {
            let _ = writeln!(
                s,
                "table served: epoch {} version {}, primary {}, writes {}",
                t.epoch,
                t.version,
                t.primary_region.as_deref().unwrap_or("none"),
                writes(t)
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
            if let (Ok(p), Ok(reporting)) = (proxies, reporting) {
                let behind = reporting.behind(t, &|_, x| x.routes_as(t), &mut Seen::default());
                let _ = writeln!(
                    s,
                    "proxies reporting: {} ({} on the table served, {} behind)",
                    p.len(),
                    p.len() - behind.len(),
                    behind.len()
                );
                if !behind.is_empty() {
                    let said: Vec<String> = behind.iter().map(|l| lagging_text(l, false)).collect();
                    let said: Vec<&str> = said.iter().map(String::as_str).collect();
                    let _ = writeln!(s, "  behind: {}", some_of(&said));
                }
                describe_replicas(s, reporting, notes, t);
                for r in &t.regions {
                    let cut_off = cut_off_from(p, &r.name);
                    if !cut_off.is_empty() {
                        let _ = writeln!(
                            s,
                            "  {} of them see no backend of {} in rotation: {}",
                            cut_off.len(),
                            r.name,
                            some_of(&cut_off)
                        );
                    }
                }
            }
        }
        Ok(None) => {
            let _ = writeln!(
                s,
                "table served: none yet (the control plane has not read its source since it started; its log says why)"
            );
            if let Ok(p) = proxies {
                let _ = writeln!(s, "proxies reporting: {}", p.len());
            }
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
                    let result = if !o.finished {
                        // Its record is made before it is followed.
                        "NOT FINISHED: still running, or the command that followed it stopped (one still running records its result here when it ends)".to_owned()
                    } else if o.ok {
                        "ok".to_owned()
                    } else {
                        format!("FAILED: {}", o.error.as_deref().unwrap_or("?"))
                    };
                    let who = if o.operator.is_empty() {
                        o.by.clone()
                    } else {
                        format!("{} ({})", o.by, o.operator)
                    };
                    format!(
                        "{} — {}, {result}, {:.1} s, by {who}",
                        o.when(now),
                        o.summary,
                        o.duration_seconds,
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
}

/// [`describe`] with the table, proxies and history read now, and the
/// parts that could not be read, named for the command's last line:
/// AWS (or Route 53 alone: `dns_unread`, and the view is the global
/// cluster's alone, [`cluster_alone`]), a health check, the control
/// plane's table, its source, the proxies or the history.
pub async fn describe_now(
    control: &ControlView,
    history_file: &std::path::Path,
    aws: Result<(&TopologyView, bool, Option<&FailoverInfo>), &str>,
) -> (String, Vec<String>) {
    let table = control.table().await;
    // With replicas, those that could be read are shown, the others named.
    let (reporting, unread) = control.reporting_readable().await;
    // With replicas: the unread ones, and what would stand in the way of a
    // change.
    let mut notes = Vec::new();
    let proxies = match (reporting, unread) {
        (Reporting::One(_), Some(e)) => Err(e.why),
        (reporting, unread) => {
            let all_read = unread.is_none();
            notes.extend(unread.map(|u| u.why));
            notes.extend(control.replica_problems(&reporting, all_read).await);
            Ok(reporting)
        }
    };
    let history = History::load(history_file);
    // Asked only of a control plane that serves a table.
    let stale = match &table {
        Ok(Some(_)) => control.source_stale().await.unwrap_or(true),
        _ => false,
    };
    let mut unknown = Vec::new();
    match aws {
        Err(_) => unknown.push("AWS".to_owned()),
        Ok((view, dns_unread, _)) => {
            if dns_unread {
                unknown.push("Route 53's records".to_owned());
            }
            for r in view.regions.iter().filter(|r| r.health_unread) {
                unknown.push(format!("the health of {}", r.name));
            }
        }
    }
    match &table {
        Ok(Some(_)) if stale => unknown.push("the control plane's source".to_owned()),
        Ok(Some(_)) => {}
        Ok(None) => unknown.push("the control plane's table (none yet)".to_owned()),
        Err(_) => unknown.push("the control plane".to_owned()),
    }
    if proxies.is_err() {
        unknown.push("the proxies".to_owned());
    }
    if !notes.is_empty() {
        unknown
            .push("every replica's proxies, or what a change needs of them (see above)".to_owned());
    }
    if history.is_err() {
        unknown.push("the history".to_owned());
    }
    let mut text = describe(
        aws,
        table.as_ref().map(Option::as_ref).map_err(String::as_str),
        (proxies.as_ref().map_err(String::as_str), &notes),
        history.as_ref().map_err(String::as_str),
    );
    if stale {
        text.push_str(&format!(
            "source: {} cannot read its source now (its log and edgeroute_control_source_errors_total say why): its table no longer follows AWS\n",
            control.describe()
        ));
    }
    (text, unknown)
}

/// The global cluster alone, read from any member region, for when the
/// whole state (`failed`, why) cannot be read: its members, its writer
/// and a writer change running; health, weights and lags unknown.
pub async fn cluster_alone(aws: &AwsSource, failed: &str) -> Result<AwsState, String> {
    let (members, failover) = aws.global_cluster().await.map_err(|c| {
        format!("{failed}; the global cluster cannot be read from any member region either: {c}")
    })?;
    Ok(AwsState {
        view: TopologyView {
            primary_region: crate::aws::writer_region(&members),
            failover_in_progress: failover.is_some(),
            regions: members
                .iter()
                .map(|m| edgeroute_config::RegionView {
                    name: m.region.clone(),
                    weight: None,
                    healthy: None,
                    replication_lag_ms: None,
                    health_unread: true,
                    unhealthy_because: None,
                })
                .collect(),
        },
        records: Default::default(),
        kept: Default::default(),
        members,
        failover,
        route53_unread: true,
    })
}

/// Longest an action is followed, whatever `--timeout` says.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Runs actions against AWS and follows them through the control plane.
pub struct Runner {
    pub aws: Arc<AwsSource>,
    pub control: ControlView,
    pub notifier: Arc<Notifier>,
    pub history_file: PathBuf,
    pub timeout: Duration,
    /// Pause between reads while following a change.
    pub poll: Duration,
    /// A proxy that reported within this counts as running.
    pub proxy_max_age: Duration,
    /// `cli` or `automation`.
    pub by: &'static str,
    /// Who runs it (see [`operator`]).
    pub operator: String,
    pub out: Output,
    /// Move the writer even to a region Route 53 reports unhealthy.
    pub to_unhealthy: bool,
    /// Notifications under way: sent beside the action, awaited at its end.
    pub sending: tokio::sync::Mutex<tokio::task::JoinSet<()>>,
}

/// One change to a region's DNS records, made to all of them at once.
enum RecordChange {
    /// Weighted records: their weight (`from`: the highest they had).
    Weight { from: i64, to: i64, why: String },
    /// Latency records: removed while drained, kept in Route 53 to put
    /// back (see [`crate::kept`]).
    Remove,
    /// The kept latency records, put back.
    Restore(Vec<SavedRecord>),
}

impl Runner {
    fn global_cluster(&self) -> &str {
        &self.aws.config().global_cluster_id
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.timeout.min(MAX_TIMEOUT)
    }

    /// Reads AWS, refusing with a clear message when it cannot.
    pub async fn state(&self) -> Result<AwsState, String> {
        self.aws.state().await.map_err(|e| {
            format!(
                "cannot read the current state from AWS: {e}{}",
                self.aws.unreached_advice(&e)
            )
        })
    }

    fn say(&self, line: &str) {
        match self.out {
            Output::Print => print_text(&format!("{line}\n")),
            Output::Log => tracing::info!("{line}"),
        }
    }

    fn warn(&self, line: &str) {
        match self.out {
            Output::Print => eprint_text(&format!("warning: {line}\n")),
            Output::Log => tracing::warn!("{line}"),
        }
    }

    /// Sends `event` beside the action: a slow channel never delays it.
    async fn notify(&self, event: Event) {
        if !self.notifier.enabled() {
            return;
        }
        let notifier = Arc::clone(&self.notifier);
        // What was not delivered is logged (a command's log goes to
        // standard error).
        self.sending.lock().await.spawn(async move {
            notifier.send(&event).await;
        });
    }

    /// Keeps `op` in the history file.
    fn record(&self, op: &Operation) {
        if let Err(e) = History::update(&self.history_file, |h| h.put(op.clone())) {
            self.warn(&e);
        }
    }

    /// Records an operation AWS accepted, before following it: if this
    /// process stops before the end, the history still says it ran.
    fn begin(&self, tl: &Timeline, kind: Kind, summary: &str) {
        let mut op = tl.operation(
            kind,
            summary.to_owned(),
            Some(
                "did not finish: the process following it stopped; check `edgeroute-control status`"
                    .into(),
            ),
        );
        op.finished = false;
        self.record(&op);
    }

    /// Keeps `op` in the history file, announces it, and waits for every
    /// notification of the operation to be delivered or given up.
    async fn conclude(&self, op: Operation) -> Operation {
        self.record(&op);
        let verb = if op.ok { "completed" } else { "failed" };
        let summary = match &op.error {
            None => format!("{} {verb} in {:.1} s", op.summary, op.duration_seconds),
            Some(e) => format!("{} {verb}: {e}", op.summary),
        };
        self.say(&summary);
        self.notify(Event::new(format!("{}.{verb}", op.kind.as_str()), summary).with(&op))
            .await;
        let mut sending = self.sending.lock().await;
        while sending.join_next().await.is_some() {}
        op
    }

    /// The state a writer move starts from. An unplanned failover is for
    /// when a region is lost, so when the full read fails it goes on with
    /// the global cluster alone (read from any member region).
    async fn state_for_move(&self, to: &str, planned: bool) -> Result<AwsState, String> {
        // The target answers for the global cluster when the home region
        // does not.
        self.aws.hint_region(to);
        match self.state().await {
            Ok(s) => Ok(s),
            Err(e) if planned => Err(e),
            Err(e) => {
                let state = cluster_alone(&self.aws, &e).await?;
                self.warn(&format!(
                    "{e}; going on with the global cluster alone (health, weights and lag unknown)"
                ));
                Ok(state)
            }
        }
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
        self.move_writer_from(None, to, planned, dry_run).await
    }

    /// [`Runner::move_writer`]; with `from`, only if the writer is in that
    /// region (the automation's failover away from a primary it judged
    /// down, which must not become a failover of another writer).
    pub async fn move_writer_from(
        &self,
        from: Option<&str>,
        to: &str,
        planned: bool,
        dry_run: bool,
    ) -> Result<Operation, String> {
        let state = self.state_for_move(to, planned).await?;
        let kind = if planned {
            Kind::Switchover
        } else {
            Kind::Failover
        };
        if state.failover.is_none() && state.writer().is_some_and(|w| w.region == to) {
            return Ok(self.nothing_to_do(kind, format!("the writer is already in {to}")));
        }
        let plan = plan_move(
            &state,
            self.global_cluster(),
            to,
            planned,
            self.to_unhealthy,
        )?;
        if let Some(from) = from
            && plan.from.region != from
        {
            return Err(format!(
                "the writer is in {} now, not in {from}; nothing requested",
                plan.from.region
            ));
        }
        // The automation decided on a view read before this one: a primary
        // that has recovered since is not failed over, losing writes for
        // nothing.
        if let Some(from) = from
            && let Some(why) = self.recovered(&state, from).await
        {
            return Ok(self.nothing_to_do(kind, why));
        }
        // The automation chose a target most proxies reach.
        if from.is_none() {
            self.proxies_reach(to, planned).await?;
        }
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
            self.would_refuse(plan.planned).await?;
            return Ok(self.dry_run_record(kind, summary));
        }
        let before = self.before_change(plan.planned).await?;
        let mut tl = Timeline::new(self);
        self.say(&summary);
        let error = self
            .run_move(&mut tl, kind, &plan, &summary, &before)
            .await
            .err();
        Ok(self.conclude(tl.finish(kind, summary, error)).await)
    }

    /// Why `primary`, judged down by both health sources, is no longer,
    /// if either says so now: Route 53 in `state`, read just now, or the
    /// proxies' vote.
    async fn recovered(&self, state: &AwsState, primary: &str) -> Option<String> {
        let proxies = self.control.reporting_readable().await.0.proxies();
        recovered(
            &state.view,
            crate::registry::vote(&proxies, primary),
            primary,
        )
    }

    /// A switchover to `to` and back to the writer region of now.
    pub async fn drill(&self, to: &str, dry_run: bool) -> Result<Operation, String> {
        let state = self.state().await?;
        let there = plan_move(&state, self.global_cluster(), to, true, self.to_unhealthy)?;
        self.proxies_reach(to, true).await?;
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
            self.would_refuse(true).await?;
            return Ok(self.dry_run_record(Kind::Drill, summary));
        }
        let before = self.before_change(true).await?;
        self.say(&summary);
        let mut tl = Timeline::new(self);
        tl.prefix = "there: ";
        let mut error = self
            .run_move(&mut tl, Kind::Drill, &there, &summary, &before)
            .await
            .err()
            .map(|e| {
                format!(
                    "{e}; the switchover back was not started (once the writer is in {}, move it back with `edgeroute-control failover --to {}`)",
                    there.to.region, there.from.region
                )
            });
        if error.is_none() {
            tl.prefix = "back: ";
            // The first leg changed AWS: from here on every failure is
            // concluded, recorded and announced, never returned early.
            // The way back is checked as the way there was, on a state
            // read now: the region left may have failed meanwhile.
            let checked = async {
                let back = self.way_back(&there).await?;
                Ok::<_, String>((back, self.before_change(true).await?))
            };
            error = match checked.await {
                Ok((back, before)) => self
                    .run_move(&mut tl, Kind::Drill, &back, &summary, &before)
                    .await
                    .err(),
                Err(e) => Some(format!(
                    "the switchover back was not started: {e} (`edgeroute-control status` shows where the writer is; move it back with `edgeroute-control failover --to {}` once it can go)",
                    there.from.region
                )),
            };
        }
        tl.prefix = "";
        Ok(self.conclude(tl.finish(Kind::Drill, summary, error)).await)
    }

    /// A drill's switchover back from `there`'s target, checked as the
    /// way there was, on the state read now.
    async fn way_back(&self, there: &MovePlan) -> Result<MovePlan, String> {
        let state = self.state().await?;
        // Moved since by someone else: not the drill's to undo. (A writer
        // change still running is `plan_move`'s to refuse.)
        let writer = state.writer().map(|w| w.region.as_str());
        if state.failover.is_none() && writer != Some(there.to.region.as_str()) {
            return Err(format!(
                "the writer moved since the drill put it in {} (AWS reports it in {}); the drill does not move it again",
                there.to.region,
                writer.unwrap_or("no region"),
            ));
        }
        let back = plan_move(
            &state,
            self.global_cluster(),
            &there.from.region,
            true,
            self.to_unhealthy,
        )?;
        self.proxies_reach(&there.from.region, true).await?;
        Ok(back)
    }

    fn move_steps(&self, plan: &MovePlan) -> Vec<String> {
        let call = if plan.planned {
            format!(
                "rds:SwitchoverGlobalCluster GlobalClusterIdentifier={} TargetDbClusterIdentifier={} (in {})",
                self.global_cluster(),
                plan.to.arn,
                plan.to.region
            )
        } else {
            format!(
                "rds:FailoverGlobalCluster GlobalClusterIdentifier={} TargetDbClusterIdentifier={} AllowDataLoss=true (in {}; writes not yet replicated to it are lost; its lag: {})",
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
            format!(
                "wait until every proxy reporting to {} routes on that epoch",
                self.control.describe_proxies()
            ),
        ]
    }

    async fn dry_run(&self, state: &AwsState, summary: &str, steps: &[String]) {
        self.say(&format!("dry run: {summary}\n\ncurrent state:"));
        self.say(self.describe_state(state).await.trim_end());
        self.say("\nsteps (none taken):");
        for (i, s) in steps.iter().enumerate() {
            self.say(&format!("  {}. {s}", i + 1));
        }
    }

    async fn describe_state(&self, state: &AwsState) -> String {
        describe_now(
            &self.control,
            &self.history_file,
            Ok((&state.view, state.route53_unread, state.failover.as_ref())),
        )
        .await
        .0
    }

    /// Already as asked: said, not recorded, and a success.
    fn nothing_to_do(&self, kind: Kind, why: String) -> Operation {
        self.say(&format!("{why}; nothing to do"));
        Timeline::new(self).finish(kind, why, None)
    }

    fn dry_run_record(&self, kind: Kind, summary: String) -> Operation {
        Timeline::new(self).finish(kind, format!("dry run: {summary}"), None)
    }

    /// Refuses a planned writer move to `to` (unless `--to-unhealthy`)
    /// while a reporting proxy sees no backend of `to` in rotation: it
    /// would refuse every write once `to` holds the primary. An unplanned
    /// failover, whose primary is likely lost, goes ahead with a warning.
    /// (A control plane that cannot be read is named by
    /// [`Self::before_change`].)
    async fn proxies_reach(&self, to: &str, planned: bool) -> Result<(), String> {
        if self.to_unhealthy {
            return Ok(());
        }
        // Those that can be read (a replica that cannot is named by
        // `before_change`).
        let proxies = self.control.reporting_readable().await.0.proxies();
        let cut_off = cut_off_from(&proxies, to);
        if cut_off.is_empty() {
            return Ok(());
        }
        let seen = format!(
            "{} of {} proxies reporting see no backend of {to} in rotation ({}): with the primary \
             in {to} they would answer every write 503 primary_unavailable",
            cut_off.len(),
            proxies.len(),
            some_of(&cut_off)
        );
        if !planned {
            self.warn(&format!("{seen}; failing over all the same"));
            return Ok(());
        }
        Err(format!(
            "{seen}; let them reach {to}'s backends first (`edgeroute-control status` shows each \
             proxy's view), or add --to-unhealthy to move the writer anyway"
        ))
    }

    /// After a dry run's steps: what would refuse the real run now (an
    /// `Err`, so the dry run fails as the real run would).
    async fn would_refuse(&self, can_wait: bool) -> Result<(), String> {
        self.before_change(can_wait)
            .await
            .map(drop)
            .map_err(|e| format!("a real run would be refused now: {e}"))
    }

    /// What a change starts from: the table and the proxies. For a change
    /// that can wait (all but an unplanned failover), refuses when the
    /// control plane cannot be read (the change could not be followed) or
    /// cannot read its source (its table would not follow the change, and
    /// proxies would go on routing as before it). An unplanned failover
    /// goes ahead with a warning: the control plane may be in the region
    /// that was lost.
    async fn before_change(&self, can_wait: bool) -> Result<Before, String> {
        let (table, control_unread) = match self.control.table().await {
            Ok(table) => (table, None),
            Err(e) if !can_wait => {
                self.warn(&format!(
                    "{e}; failing over all the same: the change is followed to the proxies only if \
                     {} can be read once AWS reports the writer moved",
                    self.control.describe()
                ));
                (None, Some(e))
            }
            Err(e) => {
                return Err(format!(
                    "{e}; a change could not be followed to the proxies, so none was made"
                ));
            }
        };
        if can_wait && table.is_none() {
            return Err(format!(
                "{} has no table yet (it answered 503: it has not read its source since it started, and its log says why, unless something in front of it answered): a change could not be followed to the proxies, so none was made; wait for its first table (`edgeroute-control status`) (an unplanned failover, --unplanned, goes ahead regardless)",
                self.control.describe()
            ));
        }
        if can_wait && self.control.source_stale().await? {
            return Err(format!(
                "{} cannot read its source (its log and edgeroute_control_source_errors_total say why): its table would not follow a change, so none was made; mend the source first (an unplanned failover, --unplanned, goes ahead regardless)",
                self.control.describe()
            ));
        }
        // Every change is kept there, and the automation's min_interval
        // reads it: a change it could not keep is not started (an
        // unplanned failover goes ahead, with a warning for each record
        // it could not keep).
        if can_wait {
            History::load(&self.history_file).map_err(|e| format!("{e}; nothing changed"))?;
        }
        // Without replicas the proxies are read from the control plane
        // just named.
        let (reporting, unread) = match (&control_unread, self.control.reads_replicas()) {
            (Some(_), false) => (Reporting::One(Vec::new()), None),
            _ => self.control.reporting_readable().await,
        };
        let unread = unread.map(|u| u.why);
        if let Some(unread) = &unread {
            if can_wait {
                return Err(format!(
                    "{unread}; a change could not be followed to every proxy, so none was made"
                ));
            }
            self.warn(&format!(
                "{unread}; failing over all the same, and the change cannot be confirmed for their proxies"
            ));
        }
        for problem in self
            .control
            .replica_problems(&reporting, unread.is_none())
            .await
        {
            if can_wait {
                return Err(format!(
                    "{problem}; a change could not be followed to every proxy, so none was made"
                ));
            }
            self.warn(&format!("{problem}; failing over all the same"));
        }
        let proxies = reporting
            .proxies()
            .into_iter()
            .map(|p| p.report.id)
            .collect();
        let replicas = match reporting {
            Reporting::One(_) => Vec::new(),
            Reporting::Replicas(replicas) => replicas
                .into_iter()
                .map(|r| Replica {
                    proxies: Vec::new(),
                    ..r
                })
                .collect(),
        };
        Ok(Before {
            table,
            proxies,
            replicas,
            lenient: !can_wait,
            control_unread,
        })
    }

    /// One writer move, followed to every proxy.
    async fn run_move(
        &self,
        tl: &mut Timeline,
        kind: Kind,
        plan: &MovePlan,
        summary: &str,
        before: &Before,
    ) -> Result<(), String> {
        let deadline = self.deadline();
        // AWS moves the writer from wherever it is, and the plan's read may
        // be seconds old (the lag reads follow it): the writer is read
        // again just before the request.
        let (members, failover) = self.aws.global_cluster().await.map_err(|e| {
            format!(
                "cannot read the global cluster again before the request: {e}; nothing requested"
            )
        })?;
        if let Some(f) = failover {
            return Err(format!(
                "a writer change started since the state was read (FailoverState {}); nothing requested: see `status`",
                f.status
            ));
        }
        let writer = crate::aws::writer_region(&members);
        if writer.as_deref() != Some(plan.from.region.as_str()) {
            return Err(format!(
                "the writer moved to {} since the state was read; nothing requested: see `status` and decide again",
                writer.as_deref().unwrap_or("no region")
            ));
        }
        let call = if plan.planned {
            "SwitchoverGlobalCluster"
        } else {
            "FailoverGlobalCluster"
        };
        match self.aws.move_writer(&plan.to, plan.planned).await {
            Ok(()) => tl.step("requested", format!("{call} accepted")),
            Err(e) => {
                // The SDK sends a request again when its answer was lost,
                // and AWS refuses the second of one it took ("already
                // switching-over"): whether the writer is on its way is
                // read, not guessed from the error.
                let under_way = self
                    .aws
                    .global_cluster()
                    .await
                    .is_ok_and(|(members, f)| match f {
                        Some(f) => f.to_region.as_deref() == Some(plan.to.region.as_str()),
                        None => {
                            crate::aws::writer_region(&members).as_deref()
                                == Some(plan.to.region.as_str())
                        }
                    });
                if !under_way {
                    return Err(format!("AWS refused the writer change: {e}{}", e.advice()));
                }
                tl.step(
                    "requested",
                    format!(
                        "{call} answered with an error ({e}), but AWS reports the writer on its way to {}",
                        plan.to.region
                    ),
                );
            }
        }
        self.begin(tl, kind, summary);
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
        // What the last read said, for a deadline that passes.
        let mut last_read;
        loop {
            // Only the global cluster while following: one call per read.
            match self.aws.global_cluster().await {
                Ok((members, failover)) => {
                    if let (Some(f), false) = (&failover, seen_running) {
                        seen_running = true;
                        tl.step("aws reports running", format!("FailoverState {}", f.status));
                    }
                    let writer = crate::aws::writer_region(&members);
                    let at_target = writer.as_deref() == Some(plan.to.region.as_str());
                    if failover.is_none() && at_target {
                        tl.step(
                            "writer moved",
                            format!("AWS reports the writer in {}", plan.to.region),
                        );
                        break;
                    }
                    if failover.is_none() && seen_running {
                        return Err(format!(
                            "the writer change ended with the writer in {}, not {}",
                            writer.as_deref().unwrap_or("no region"),
                            plan.to.region
                        ));
                    }
                    last_read = match &failover {
                        Some(f) if f.status == "cancelling" => format!(
                            "AWS is cancelling the writer change (FailoverState cancelling): the writer stays in {} (`edgeroute-control status` shows it)",
                            f.from_region.as_deref().unwrap_or("the region it was in")
                        ),
                        Some(f) => format!(
                            "the writer change is still running in AWS (FailoverState {}): the writer lands in {} when it ends, and `edgeroute-control status` shows it",
                            f.status,
                            f.to_region.as_deref().unwrap_or(plan.to.region.as_str())
                        ),
                        None => format!(
                            "AWS reports the writer in {} and no writer change running",
                            writer.as_deref().unwrap_or("no region")
                        ),
                    };
                }
                Err(e) => last_read = format!("the last read of the global cluster failed: {e}"),
            }
            self.wait(deadline, || {
                format!(
                    "AWS did not report the writer in {} within {:?}; {last_read}",
                    plan.to.region, self.timeout
                )
            })
            .await?;
        }
        self.notify(Event::new(
            "writer.moved",
            format!("{summary}: AWS reports the writer in {}", plan.to.region),
        ))
        .await;
        // A control plane that could not be read when the failover began
        // and still cannot is not waited for: it may have been lost with
        // the writer's region.
        if before.control_unread.is_some()
            && let Err(e) = self.control.table().await
        {
            return Err(format!(
                "the writer moved, but {e}: NOT CONFIRMED that any proxy sends writes to {to}; \
                 the proxies route on the change once a control plane reads AWS again \
                 (`edgeroute-control status` then shows the table it serves)",
                to = plan.to.region
            ));
        }
        // The control plane's table (and each replica's: a table whose
        // epoch is above the one it served when the move began).
        let moved = |t: &RoutingTable, (epoch, _): (u64, u64)| {
            t.primary_region.as_deref() == Some(plan.to.region.as_str())
                && !t.failover_in_progress
                && t.epoch > epoch
        };
        let table = self
            .until(deadline, "a table with the new primary", |t| {
                moved(t, before.stamp())
            })
            .await?;
        tl.step(
            "table epoch raised",
            format!(
                "epoch {} → {}, primary {}",
                before.epoch(),
                table.epoch,
                plan.to.region
            ),
        );
        self.confirm_proxies(tl, deadline, &table, before, &moved)
            .await
    }

    /// Waits for a table `ok` accepts.
    async fn until(
        &self,
        deadline: Instant,
        what: &str,
        ok: impl Fn(&RoutingTable) -> bool,
    ) -> Result<RoutingTable, String> {
        let mut last = String::from("no table yet");
        let mut waiting = Waiting::new();
        loop {
            match self.control.table().await {
                Ok(Some(t)) if ok(&t) => return Ok(t),
                Ok(Some(t)) => last = format!("serving epoch {} version {}", t.epoch, t.version),
                Ok(None) => {}
                Err(e) => last = e,
            }
            // The likeliest cause of a table that does not follow, said
            // with the last wait's failure.
            if Instant::now() + self.poll >= deadline
                && self.control.source_stale().await.unwrap_or(false)
            {
                last.push_str(
                    "; it cannot read its source now, so its table does not follow AWS (its log says why)",
                );
            }
            waiting.note(
                self,
                &format!("{} to serve {what}", self.control.describe()),
                &last,
            );
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

    /// Waits until every proxy reporting routes on `table` or later. A
    /// proxy that was reporting when the change began and stopped since is
    /// waited for one more `proxy_max_age`, then named: it may still route
    /// on the old table.
    /// With replicas, each replica's own table is asked `has_change`, with
    /// the numbers of the table it served when the change began.
    async fn confirm_proxies(
        &self,
        tl: &mut Timeline,
        deadline: Instant,
        table: &RoutingTable,
        before: &Before,
        has_change: &(dyn Fn(&RoutingTable, (u64, u64)) -> bool + Sync),
    ) -> Result<(), String> {
        let mut last: String;
        let mut others_done_at: Option<Instant> = None;
        // Each replica's first table with the change, and the tables seen
        // without it, from round to round; first, the tables served when
        // the change began.
        let mut seen = Seen::default();
        for r in &before.replicas {
            if let Some(t) = &r.table
                && !has_change(t, before.stamp_of(r))
            {
                seen.without(t, &r.name);
            }
        }
        let mut waiting = Waiting::new();
        // What the proxies are to route on: the table's numbers, or, with
        // replicas numbering tables each its own way, the change.
        let on = match self.control.reads_replicas() {
            false => format!("epoch {} version {}", table.epoch, table.version),
            true => "the change, each on its replica's table with it or a later one".to_owned(),
        };
        loop {
            let (reporting, unread) = self.control.reporting_readable().await;
            let unread = unread.map(|u| u.why);
            // An unplanned failover goes on with the replicas that can be
            // read and can read their source: the others are named.
            let (reporting, excused) = match before.lenient {
                true => reporting.excusing(|r| r.source_stale),
                false => (reporting, Vec::new()),
            };
            let not_confirmed: Vec<String> = unread
                .iter()
                .cloned()
                .chain(
                    excused
                        .iter()
                        .map(|r| format!("{r}, which cannot read its source")),
                )
                .collect();
            match unread {
                Some(unread) if !before.lenient => last = unread,
                _ => {
                    let lagging: Vec<String> = reporting
                        .behind(table, &|r, t| has_change(t, before.stamp_of(r)), &mut seen)
                        .iter()
                        .map(|l| lagging_text(l, true))
                        .collect();
                    let without = reporting.without_change(&seen);
                    let p = reporting.proxies();
                    let gone: Vec<&str> = before
                        .proxies
                        .iter()
                        .filter(|id| !p.iter().any(|q| &q.report.id == *id))
                        .map(String::as_str)
                        .collect();
                    // Proxies gone from those read may report to what was
                    // not: named with it, rather than waited for.
                    let gone_unseen = !not_confirmed.is_empty() && !gone.is_empty();
                    if lagging.is_empty() && without.is_empty() && (gone.is_empty() || gone_unseen)
                    {
                        let mut detail = if p.is_empty() {
                            format!("no proxy reports to {}", self.control.describe_proxies())
                        } else {
                            format!(
                                "{} of {} proxies route on {} (every proxy reporting to {})",
                                p.len(),
                                p.len(),
                                on,
                                self.control.describe_proxies()
                            )
                        };
                        if !not_confirmed.is_empty() {
                            let mut what = not_confirmed.join("; ");
                            if gone_unseen {
                                let _ = write!(
                                    what,
                                    "; and for {}, gone from those read",
                                    gone.join(", ")
                                );
                            }
                            let _ = write!(
                                detail,
                                "; NOT CONFIRMED for the proxies of what could not be read: {what}"
                            );
                            self.warn(&format!(
                                "the change is not confirmed for the proxies of what could not be read: {what}"
                            ));
                        }
                        tl.step("proxies confirmed", detail);
                        if let Some(primary) = &table.primary_region {
                            let cut_off = cut_off_from(&p, primary);
                            if !cut_off.is_empty() {
                                self.warn(&format!(
                                    "{} of {} proxies see no backend of {primary} in rotation and \
                                     answer every write 503 primary_unavailable: {}",
                                    cut_off.len(),
                                    p.len(),
                                    some_of(&cut_off)
                                ));
                            }
                        }
                        return Ok(());
                    }
                    if !lagging.is_empty() || !without.is_empty() {
                        others_done_at = None;
                        let mut why = Vec::new();
                        if !lagging.is_empty() {
                            why.push(format!("behind: {}", lagging.join(", ")));
                        }
                        if !without.is_empty() {
                            why.push(format!(
                                "without the change yet: {} (it hands out its table to any proxy that asks)",
                                without.join(", ")
                            ));
                        }
                        last = why.join("; ");
                    } else {
                        let since = *others_done_at.get_or_insert_with(Instant::now);
                        if since.elapsed() > self.proxy_max_age {
                            return Err(format!(
                                "{} proxies route on {}, but {} stopped reporting during the change and may still route on the old table: {}",
                                p.len(),
                                on,
                                gone.len(),
                                gone.join(", ")
                            ));
                        }
                        last = format!("stopped reporting: {}", gone.join(", "));
                    }
                }
            }
            waiting.note(self, "every proxy to route on the change", &last);
            self.wait(deadline, || {
                let to = match self.control.reads_replicas() {
                    false => format!("epoch {} version {} or later", table.epoch, table.version),
                    true => "the change".to_owned(),
                };
                format!(
                    "not every proxy moved to {to} within {:?}: {last}",
                    self.timeout
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

    /// Takes `region` out of DNS: a weighted record gets weight 0; a
    /// latency record is removed and kept, to be put back by `undrain`.
    pub async fn drain(&self, region: &str, dry_run: bool) -> Result<Operation, String> {
        let state = self.state().await?;
        let change = match state.records.get(region) {
            None if known_region(&state, region) => {
                return Ok(self.nothing_to_do(
                    Kind::Drain,
                    format!(
                        "{region} has no record of {} (drained)",
                        self.aws.config().record_name
                    ),
                ));
            }
            None => return Err(self.no_region(&state, region)),
            Some(rs) => match routing_of(rs) {
                Routing::Weighted(0) => {
                    return Ok(self.nothing_to_do(
                        Kind::Drain,
                        format!("{region} already has Route 53 weight 0"),
                    ));
                }
                Routing::Weighted(w) => RecordChange::Weight {
                    from: w,
                    to: 0,
                    why: "drain".into(),
                },
                Routing::Latency => RecordChange::Remove,
                Routing::Other => {
                    return Err(format!(
                        "the records of {region} are not all weighted or all latency-routed; edgeroute drains only those"
                    ));
                }
            },
        };
        let others_serving: Vec<&str> = state
            .view
            .regions
            .iter()
            .filter(|r| r.name != region && r.weight != Some(0) && r.healthy != Some(false))
            .map(|r| r.name.as_str())
            .collect();
        if others_serving.is_empty() {
            return Err(format!(
                "draining {region} would leave no healthy region in DNS to take its traffic"
            ));
        }
        // A copy an earlier drain kept (of records put back by hand since,
        // perhaps only some) is replaced by this drain's: what it held goes
        // to the history file first.
        if let Some(kept) = state.kept.get(region).filter(|_| !dry_run) {
            let mut op = self.kept_copy_op(
                &Timeline::new(self),
                Kind::Drain,
                region,
                kept,
                format!(
                    "{region}: the copy of its records an earlier drain kept, as a new drain that replaces it began"
                ),
                "kept copy replaced",
            );
            op.finished = true;
            op.ok = true;
            op.error = None;
            History::update(&self.history_file, |h| h.put(op)).map_err(|e| {
                format!(
                    "{region} has a copy of its records kept by an earlier drain, which this drain would replace, and what it holds could not be kept in the history file first: {e}; nothing changed"
                )
            })?;
        }
        self.change_record(
            &state,
            region,
            Kind::Drain,
            change,
            &others_serving,
            dry_run,
        )
        .await
    }

    /// Puts `region` back in DNS: the weight it had before the drain (or
    /// `weight`; without either, the weight most other regions have), or
    /// its kept latency record.
    pub async fn undrain(
        &self,
        region: &str,
        weight: Option<i64>,
        dry_run: bool,
    ) -> Result<Operation, String> {
        let state = self.state().await?;
        let history = History::load(&self.history_file)?;
        let change = match state.records.get(region) {
            Some(rs) => match routing_of(rs) {
                Routing::Weighted(w)
                    if weight.is_none_or(|asked| asked == w)
                        && (w > 0 || weight.is_some())
                        && rs.iter().all(|r| r.weight() == Some(w)) =>
                {
                    self.forget_stale_kept(&state, region, dry_run).await?;
                    return Ok(self.nothing_to_do(
                        Kind::Undrain,
                        format!("{region} has Route 53 weight {w}"),
                    ));
                }
                Routing::Weighted(w) => {
                    // Kept in Route 53 by the drain, else (a drain by an
                    // older version, or by hand) in this history file.
                    let kept = match state.kept.get(region).and_then(crate::kept::weight) {
                        // A weight asked for needs none kept.
                        Some(Err(_)) if weight.is_some() => None,
                        Some(Err(e)) => {
                            return Err(format!(
                                "the weight of {region} kept in Route 53 ({} TXT, set identifier {region}) cannot be read: {e}; undrain with --weight",
                                crate::kept::name(&self.aws.config().record_name)
                            ));
                        }
                        Some(Ok(kept)) => Some(kept),
                        None => history.weights_before_drain.get(region).copied(),
                    };
                    let (to, why) = match (weight, kept) {
                        (Some(asked), _) => (asked, "as asked".to_owned()),
                        (None, Some(kept)) => (kept, "its weight before the drain".to_owned()),
                        (None, None) => (
                            common_weight(&state, region),
                            "no record of its weight before the drain: the weight most other regions have".to_owned(),
                        ),
                    };
                    RecordChange::Weight { from: w, to, why }
                }
                Routing::Latency => {
                    self.forget_stale_kept(&state, region, dry_run).await?;
                    return Ok(self.nothing_to_do(
                        Kind::Undrain,
                        format!("{region}'s latency records are in place (not drained)"),
                    ));
                }
                Routing::Other => {
                    return Err(format!(
                        "the records of {region} are not all weighted or all latency-routed; edgeroute undrains only those"
                    ));
                }
            },
            None => match kept_records(&state, &history, region)? {
                Some(_) if weight.is_some() => {
                    return Err(format!(
                        "--weight applies to weighted records; {region}'s kept record is latency-routed and is put back as it was (leave out --weight)"
                    ));
                }
                Some(saved) => RecordChange::Restore(saved),
                None if known_region(&state, region) => {
                    return Err(format!(
                        "{region} has no record of {} and none was kept by a drain; create it again (for example with your infrastructure code)",
                        self.aws.config().record_name
                    ));
                }
                None => return Err(self.no_region(&state, region)),
            },
        };
        self.change_record(&state, region, Kind::Undrain, change, &[], dry_run)
            .await
    }

    /// Removes what a drain kept of `region` when the region is in DNS
    /// already (someone put its records back by other means): a later
    /// undrain would otherwise put back the old copy. The history file's
    /// notes of the drain go too, and it keeps the removal, with the copy's
    /// values, as an undrain of its own. A dry run says what it would
    /// remove.
    async fn forget_stale_kept(
        &self,
        state: &AwsState,
        region: &str,
        dry_run: bool,
    ) -> Result<(), String> {
        let Some(kept) = state.kept.get(region) else {
            return Ok(());
        };
        let what = format!(
            "{region} is in DNS, but a copy of its records kept by an earlier drain is still in Route 53 ({} TXT, set identifier {region}); it no longer applies",
            crate::kept::name(&self.aws.config().record_name)
        );
        if dry_run {
            self.say(&format!("{what}: an undrain would remove it"));
            return Ok(());
        }
        let timeline = Timeline::new(self);
        let mut op = self.kept_copy_op(
            &timeline,
            Kind::Undrain,
            region,
            kept,
            format!("{region} is in DNS: the copy of its records an earlier drain kept is removed"),
            "kept copy removed",
        );
        // In the history file before the copy goes, so that what it held
        // is never lost: no history file, no removal.
        History::update(&self.history_file, |h| h.put(op.clone())).map_err(|e| {
            format!("{what}; it is left in place, since what it holds could not be kept in the history file first: {e}")
        })?;
        let removed = self
            .aws
            .change_records(
                vec![(ChangeAction::Delete, kept.clone())],
                "edgeroute undrain: a kept copy that no longer applies",
            )
            .await
            .map_err(|e| format!("{what}, and removing it failed: {e}{}", e.advice()));
        op.finished = true;
        op.duration_seconds = timeline.started.elapsed().as_secs_f64();
        if let Err(e) = &removed {
            op.error = Some(e.clone());
            self.record(&op);
        }
        removed?;
        op.ok = true;
        op.error = None;
        self.record(&op);
        History::update(&self.history_file, |h| h.forget_drain(region)).map_err(|e| {
            format!("{what}: removed, but the history file's notes of the drain could not be dropped: {e}")
        })?;
        self.say(&format!("{what}: removed"));
        Ok(())
    }

    /// An unfinished operation whose one step holds what `kept` (a
    /// drain's copy of `region`'s records) held: kept in the history file
    /// before the copy goes or is replaced, what it held is never lost.
    fn kept_copy_op(
        &self,
        timeline: &Timeline,
        kind: Kind,
        region: &str,
        kept: &ResourceRecordSet,
        summary: String,
        step: &str,
    ) -> Operation {
        let name = crate::kept::name(&self.aws.config().record_name);
        let values: Vec<&str> = kept.resource_records().iter().map(|r| r.value()).collect();
        let mut op = timeline.operation(
            kind,
            summary,
            Some("did not finish: the process changing it stopped".into()),
        );
        op.finished = false;
        op.timeline.push(Step {
            name: step.into(),
            at_seconds: 0.0,
            detail: format!(
                "{name} TXT, set identifier {region}, held: {}",
                values.join(" | ")
            ),
        });
        op
    }

    /// Whether Route 53 shows `change` of `region` made, read again.
    async fn made(&self, region: &str, kind: Kind, change: &RecordChange) -> bool {
        let Ok(now) = self.aws.state().await else {
            return false;
        };
        let records = now.records.get(region);
        let kept = now.kept.contains_key(region);
        match change {
            RecordChange::Remove => records.is_none() && kept,
            RecordChange::Restore(_) => records.is_some() && !kept,
            RecordChange::Weight { to, .. } => {
                records.is_some_and(|rs| rs.iter().all(|r| r.weight() == Some(*to)))
                    && kept == (kind == Kind::Drain)
            }
        }
    }

    fn no_region(&self, state: &AwsState, region: &str) -> String {
        let mut names: Vec<&str> = state.view.regions.iter().map(|r| r.name.as_str()).collect();
        for m in &state.members {
            if !names.contains(&m.region.as_str()) {
                names.push(&m.region);
            }
        }
        format!(
            "{region} is not a region of {} or of global cluster {}; regions: {}",
            self.aws.config().record_name,
            self.global_cluster(),
            names.join(", ")
        )
    }

    /// Puts back the weight a drain Route 53 refused found kept for
    /// `region` (`kept_before`: what was there; none when the drain kept
    /// nothing): the history holds no weight of a drain that never was.
    fn forget_kept_weight(&self, region: &str, kept_before: Option<Option<i64>>) {
        let Some(before) = kept_before else {
            return;
        };
        let put_back = History::update(&self.history_file, |h| match before {
            Some(w) => {
                h.weights_before_drain.insert(region.to_owned(), w);
            }
            None => {
                h.weights_before_drain.remove(region);
            }
        });
        if let Err(e) = put_back {
            self.warn(&format!(
                "{e}: the weight this drain kept for {region} stays in the history file, though nothing changed"
            ));
        }
    }

    /// Changes the records of `region` in one Route 53 batch. The batch
    /// also deletes and creates again, unchanged, the records of `left_serving`
    /// as read: Route 53 refuses a whole batch when a record it deletes is
    /// not there as given, so the change is made only if those regions are
    /// still in DNS as they were when the command judged it safe (two
    /// drains at once cannot both go through and leave no region).
    async fn change_record(
        &self,
        state: &AwsState,
        region: &str,
        kind: Kind,
        change: RecordChange,
        left_serving: &[&str],
        dry_run: bool,
    ) -> Result<Operation, String> {
        let name = &self.aws.config().record_name;
        let existing = || {
            state
                .records
                .get(region)
                .cloned()
                .ok_or_else(|| self.no_region(state, region))
        };
        // The records to change, each with its action.
        let (summary, mut changes, table_weight) = match &change {
            RecordChange::Weight { from, to, why } => {
                if !(0..=255).contains(to) {
                    return Err(format!("a Route 53 weight is 0 to 255, got {to}"));
                }
                // Each record deleted as read and created with the new
                // weight: Route 53 refuses the batch if it changed since
                // (a new load balancer, say), rather than have the change
                // undone.
                let mut changes = Vec::new();
                for read in existing()? {
                    let mut weighted = read.clone();
                    weighted.weight = Some(*to);
                    changes.push((ChangeAction::Delete, read));
                    changes.push((ChangeAction::Create, weighted));
                }
                // The weight is kept where every command line finds it.
                if kind == Kind::Drain {
                    let keep = crate::kept::weight_record(name, region, *from)
                        .map_err(|e| format!("cannot drain {region}: {e}; nothing changed"))?;
                    changes.push((ChangeAction::Upsert, keep));
                }
                (
                    format!(
                        "{} {region}: Route 53 weight {from} → {to} ({why})",
                        kind.as_str()
                    ),
                    changes,
                    *to,
                )
            }
            RecordChange::Remove => {
                let rs = existing()?;
                let saved: Vec<SavedRecord> = rs.iter().map(SavedRecord::of).collect();
                let keep = crate::kept::record(name, region, &saved)
                    .map_err(|e| format!("cannot drain {region}: {e}; nothing changed"))?;
                let mut changes: Vec<_> =
                    rs.into_iter().map(|r| (ChangeAction::Delete, r)).collect();
                changes.push((ChangeAction::Upsert, keep));
                (
                    format!(
                        "drain {region}: remove its latency records of {name} (kept in Route 53 to put back)"
                    ),
                    changes,
                    0,
                )
            }
            RecordChange::Restore(saved) => {
                let rs = saved
                    .iter()
                    .map(SavedRecord::record)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("a kept record of {region} cannot be rebuilt ({e}); create it again yourself"))?;
                (
                    format!("undrain {region}: put back its latency records of {name}"),
                    // Created: Route 53 refuses the batch if a record of
                    // the region came back meanwhile, rather than have it
                    // overwritten with the kept copy.
                    rs.into_iter().map(|r| (ChangeAction::Create, r)).collect(),
                    100,
                )
            }
        };
        // What a drain kept, of either kind, goes with the undrain, in the
        // same batch.
        if kind == Kind::Undrain
            && let Some(kept) = state.kept.get(region)
        {
            changes.push((ChangeAction::Delete, kept.clone()));
        }
        let mut call = format!(
            "route53:ChangeResourceRecordSets, one batch: {}",
            changes
                .iter()
                .map(|(action, r)| {
                    let routing = r.weight().map_or_else(
                        || format!("Region={}", r.region().map_or(region, |g| g.as_str())),
                        |w| format!("Weight={w}"),
                    );
                    format!(
                        "{} {} {} SetIdentifier={} {routing}",
                        action.as_str(),
                        r.name().trim_end_matches('.'),
                        r.r#type().as_str(),
                        r.set_identifier().unwrap_or(region)
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        );
        let guarded = left_serving
            .iter()
            .flat_map(|r| state.records.get(*r).into_iter().flatten());
        let mut guards = 0;
        for r in guarded {
            changes.push((ChangeAction::Delete, r.clone()));
            changes.push((ChangeAction::Create, r.clone()));
            guards += 1;
        }
        if guards > 0 {
            let _ = write!(
                call,
                "; and DELETE then CREATE, unchanged, the {guards} record{} of {} as read, so that the batch fails if {} changed since",
                if guards == 1 { "" } else { "s" },
                left_serving.join(", "),
                if guards == 1 { "it" } else { "they" }
            );
        }
        let steps = vec![
            call,
            format!(
                "wait until {} serves a table with {region} at weight {table_weight}",
                self.control.describe()
            ),
            format!(
                "wait until every proxy reporting to {} routes on that table",
                self.control.describe_proxies()
            ),
        ];
        if dry_run {
            self.dry_run(state, &summary, &steps).await;
            self.would_refuse(true).await?;
            return Ok(self.dry_run_record(kind, summary));
        }
        let before = self.before_change(true).await?;
        self.say(&summary);
        let deadline = self.deadline();
        let mut tl = Timeline::new(self);
        // What undrain needs is kept before anything changes, and what was
        // there before goes back should Route 53 refuse the change.
        let mut kept_before = None;
        History::update(&self.history_file, |h| match &change {
            RecordChange::Weight { from, .. } if kind == Kind::Drain => {
                kept_before = Some(h.weights_before_drain.insert(region.to_owned(), *from));
            }
            _ => {}
        })
        .map_err(|e| format!("{e}; nothing changed"))?;
        let removed = matches!(change, RecordChange::Remove);
        let shows = |t: &RoutingTable| {
            t.region(region)
                .map_or(removed, |r| i64::from(r.weight) == table_weight)
        };
        // Records of one region that disagreed (an A at 40, an AAAA at 0)
        // are given one weight the table showed already: no newer table
        // will come, and none is needed.
        let unchanged = matches!(change, RecordChange::Weight { from, to, .. } if from == to)
            && before.table.as_ref().is_some_and(shows);
        // A table built after the change began (`since`: the numbers of the
        // one served then) that shows it.
        let drained =
            |t: &RoutingTable, since: (u64, u64)| (unchanged || stamp(t) > since) && shows(t);
        let error = async {
            match self
                .aws
                .change_records(changes, &format!("edgeroute {}", kind.as_str()))
                .await
            {
                Ok(()) => tl.step("requested", "ChangeResourceRecordSets accepted".into()),
                // The SDK sends a batch again when its answer was lost, and
                // Route 53 refuses the second of one it took (a record to
                // delete is gone): whether the change is made is read.
                Err(e) if self.made(region, kind, &change).await => tl.step(
                    "requested",
                    format!("ChangeResourceRecordSets answered with an error ({e}), but Route 53 shows the change made"),
                ),
                Err(e) => {
                    self.forget_kept_weight(region, kept_before);
                    return Err(refused(&e, guards, left_serving));
                }
            }
            self.begin(&tl, kind, &summary);
            let table = self
                .until(
                    deadline,
                    &format!("{region} at weight {table_weight}"),
                    // A table built after the change: one that already
                    // showed it (a control plane behind AWS) proves nothing.
                    // A region out of DNS leaves the table on a control
                    // plane that did not make the change (its history file
                    // does not show the drain): proxies then route around it.
                    |t| drained(t, before.stamp()),
                )
                .await?;
            let state = table
                .region(region)
                .map_or("out of the table", |r| r.state.as_str());
            tl.step(
                "table updated",
                format!(
                    "{region} {state}, weight {table_weight}, version {}",
                    table.version
                ),
            );
            self.confirm_proxies(&mut tl, deadline, &table, &before, &drained)
                .await?;
            if kind == Kind::Undrain {
                History::update(&self.history_file, |h| h.forget_drain(region))?;
            }
            Ok::<(), String>(())
        }
        .await
        .err();
        Ok(self.conclude(tl.finish(kind, summary, error)).await)
    }
}

/// What a record change Route 53 refused says.
fn refused(e: &crate::aws::AwsError, guards: usize, left_serving: &[&str]) -> String {
    if guards > 0 && !e.throttled() && !e.server_fault() {
        format!(
            "Route 53 refused the change: {e}; nothing changed (the batch asked for the records of {} to be as read, and a drain or another change at the same time may have changed them: run `status` and try again)",
            left_serving.join(", ")
        )
    } else {
        // Throttled, or a fault on AWS's side (a 5xx): not a refusal.
        format!("Route 53 did not make the change: {e}{}", e.advice())
    }
}

/// Why `primary`, judged down by Route 53 and the proxies, is no longer,
/// if either says so in `view` or `vote`: neither may call it healthy now
/// for a failover that may lose writes (Route 53 unread, or no proxy's
/// report read, says nothing either way).
fn recovered(view: &TopologyView, vote: crate::registry::Vote, primary: &str) -> Option<String> {
    if view
        .regions
        .iter()
        .any(|r| r.name == primary && r.healthy == Some(true))
    {
        return Some(format!(
            "Route 53 reports the primary {primary} healthy again"
        ));
    }
    if vote.reporting > 0 && !vote.unhealthy() {
        return Some(format!(
            "the proxies no longer report the primary {primary} down"
        ));
    }
    None
}

/// What a change starts from.
struct Before {
    /// The table served when it began, if any.
    table: Option<RoutingTable>,
    /// Proxies reporting when it began.
    proxies: Vec<String>,
    /// With replicas, each as it was when the change began (its table,
    /// its instance; no proxies): a replica has the change in a table
    /// numbered above the one it served then.
    replicas: Vec<Replica>,
    /// An unplanned failover: what cannot be read, or a replica that
    /// cannot read its source, is not waited for, only named as not
    /// confirmed.
    lenient: bool,
    /// Why the control plane could not be read when an unplanned failover
    /// began, if it could not.
    control_unread: Option<String>,
}

impl Before {
    /// The epoch and version of the table served when it began (0 and 0
    /// with none): a later table's are higher.
    fn stamp(&self) -> (u64, u64) {
        self.table.as_ref().map_or((0, 0), stamp)
    }

    /// [`Before::stamp`] of replica `r` (0 and 0 for one not read then,
    /// or restarted since: another instance numbers anew).
    fn stamp_of(&self, r: &Replica) -> (u64, u64) {
        self.replicas
            .iter()
            .find(|b| b.url == r.url && b.instance == r.instance)
            .and_then(|b| b.table.as_ref())
            .map_or((0, 0), stamp)
    }

    fn epoch(&self) -> u64 {
        self.stamp().0
    }
}

/// A table's epoch and version.
fn stamp(t: &RoutingTable) -> (u64, u64) {
    (t.epoch, t.version)
}

/// The records a drain of `region` kept: in Route 53, else (a drain by an
/// older version) in the history file. Records kept in Route 53 that
/// cannot be read (a newer version's format, say) are an error, never
/// passed over for an older copy: the undrain would delete the newer one.
fn kept_records(
    state: &AwsState,
    history: &History,
    region: &str,
) -> Result<Option<Vec<SavedRecord>>, String> {
    match state.kept.get(region) {
        Some(txt) => match crate::kept::records(txt) {
            Ok(saved) => Ok(Some(saved)),
            Err(e) => Err(format!(
                "the records of {region} kept in Route 53 ({} TXT, set identifier {region}) cannot be read: {e}; \
                 create them again (for example with your infrastructure code), then delete that record",
                txt.name()
            )),
        },
        None => Ok(history.drained_records.get(region).cloned()),
    }
}

/// A region of the API name's records (or drained from them) or of the
/// global cluster.
fn known_region(state: &AwsState, region: &str) -> bool {
    state.view.regions.iter().any(|r| r.name == region) || state.member(region).is_some()
}

/// The most common non-zero weight among the other regions; 100 if none.
fn common_weight(state: &AwsState, region: &str) -> i64 {
    let mut counts = std::collections::BTreeMap::new();
    for (name, rs) in &state.records {
        if let Routing::Weighted(w) = routing_of(rs)
            && w > 0
            && name != region
        {
            *counts.entry(w).or_insert(0usize) += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|(w, n)| (*n, *w))
        .map_or(100, |(w, _)| w)
}

/// How a region's records route.
#[derive(Debug, PartialEq, Eq)]
enum Routing {
    /// All weighted; the highest weight among them.
    Weighted(i64),
    /// All latency-routed.
    Latency,
    /// Mixed, or neither.
    Other,
}

fn routing_of(records: &[ResourceRecordSet]) -> Routing {
    if let Some(weights) = records
        .iter()
        .map(ResourceRecordSet::weight)
        .collect::<Option<Vec<i64>>>()
    {
        return weights
            .into_iter()
            .max()
            .map_or(Routing::Other, Routing::Weighted);
    }
    if records
        .iter()
        .all(|r| r.weight().is_none() && r.region().is_some())
    {
        return Routing::Latency;
    }
    Routing::Other
}

#[cfg(test)]
mod tests {
    use super::{Routing, kept_records, routing_of};
    use crate::aws::{AwsState, SavedRecord};
    use crate::history::History;
    use aws_sdk_route53::types::{
        ResourceRecord, ResourceRecordSet, ResourceRecordSetRegion, RrType,
    };

    /// A writer move recorded at its start and not yet finished is shown
    /// as such, not as failed: `status` run beside the command following
    /// it sees it so.
    #[test]
    fn status_lists_regions_by_name_and_a_move_not_finished_as_such() {
        let mut history = History::default();
        let mut running = crate::history::tests::op(crate::history::Kind::Switchover, 1);
        running.ok = false;
        running.error = Some("did not finish: the process following it stopped".into());
        running.finished = false;
        history.put(running);
        // As AWS lists them: the writer's region with no record last.
        let region = |name: &str| edgeroute_config::RegionView {
            name: name.into(),
            weight: None,
            healthy: None,
            replication_lag_ms: None,
            health_unread: name == "eu-west-1",
            unhealthy_because: None,
        };
        let view = edgeroute_config::TopologyView {
            primary_region: Some("us-east-1".into()),
            failover_in_progress: false,
            regions: vec![
                region("us-east-1"),
                region("ap-southeast-1"),
                region("eu-west-1"),
            ],
        };
        let text = super::describe(
            Ok((&view, false, None)),
            Ok(None),
            (Ok(&super::Reporting::One(Vec::new())), &[]),
            Ok(&history),
        );
        let listed: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("  ")?.split_whitespace().next())
            .collect();
        assert_eq!(
            listed,
            ["ap-southeast-1", "eu-west-1", "us-east-1"],
            "{text}"
        );
        assert!(text.contains("health unknown"), "{text}");
        let line = text
            .lines()
            .find(|l| l.starts_with("last failover:"))
            .unwrap();
        assert!(line.contains("NOT FINISHED: still running"), "{line}");
        assert!(!line.contains("FAILED"), "{line}");
    }

    /// The automation's failover, decided on a view read before, goes
    /// ahead only while Route 53 (if read) and the proxies both still call
    /// the primary down.
    #[test]
    fn a_primary_either_source_calls_healthy_again_is_not_failed_over() {
        use crate::registry::Vote;
        let view = |healthy: Option<bool>| edgeroute_config::TopologyView {
            primary_region: Some("us-east-1".into()),
            failover_in_progress: false,
            regions: vec![edgeroute_config::RegionView {
                name: "us-east-1".into(),
                weight: None,
                healthy,
                replication_lag_ms: None,
                health_unread: healthy.is_none(),
                unhealthy_because: None,
            }],
        };
        let down = Vote {
            reporting: 3,
            unhealthy: 2,
        };
        let up = Vote {
            reporting: 3,
            unhealthy: 1,
        };
        for healthy in [Some(false), None] {
            assert_eq!(super::recovered(&view(healthy), down, "us-east-1"), None);
        }
        let why = super::recovered(&view(Some(true)), down, "us-east-1").unwrap();
        assert!(why.contains("Route 53 reports the primary us-east-1 healthy again"));
        for healthy in [Some(false), None] {
            let why = super::recovered(&view(healthy), up, "us-east-1").unwrap();
            assert!(why.contains("the proxies no longer report"), "{why}");
        }
        // No report read says nothing either way.
        let silent = Vote::default();
        assert!(super::recovered(&view(Some(false)), silent, "us-east-1").is_none());
    }

    #[test]
    fn a_proxy_with_no_backend_of_a_region_in_rotation_is_cut_off_from_it() {
        use edgeroute_config::{ProxyReport, RegionHealth};
        let proxy = |id: &str, eu: Option<(u32, u32)>| crate::registry::ProxyStatus {
            report: ProxyReport {
                id: id.into(),
                region: "us-east-1".into(),
                epoch: 1,
                version: 1,
                routing: None,
                regions: eu
                    .map(|(backends, in_rotation)| RegionHealth {
                        name: "eu-west-1".into(),
                        backends,
                        in_rotation,
                    })
                    .into_iter()
                    .collect(),
            },
            age_seconds: 0.0,
        };
        let proxies = [
            proxy("reaches", Some((2, 1))),
            proxy("probes-fail", Some((2, 0))),
            proxy("no-address", Some((0, 0))),
            proxy("not-configured", None),
        ];
        assert_eq!(
            super::cut_off_from(&proxies, "eu-west-1"),
            ["probes-fail", "no-address", "not-configured"]
        );
        assert_eq!(
            super::some_of(&["a", "b", "c", "d", "e", "f", "g"]),
            "a, b, c, d, e and 2 more"
        );
    }

    #[test]
    fn the_status_says_whether_the_table_lets_writes_through() {
        use edgeroute_config::{RegionEntry, RegionState, RoutingTable};
        let table = |primary: Option<&str>, failover: bool, us: RegionState| RoutingTable {
            epoch: 1,
            version: 1,
            primary_region: primary.map(str::to_owned),
            failover_in_progress: failover,
            regions: vec![RegionEntry {
                name: "us-east-1".into(),
                state: us,
                weight: 100,
                replication_lag_ms: None,
            }],
        };
        assert_eq!(
            super::writes(&table(Some("us-east-1"), false, RegionState::Active)),
            "open"
        );
        assert_eq!(
            super::writes(&table(Some("us-east-1"), false, RegionState::Draining)),
            "open",
            "a draining primary still takes writes"
        );
        assert!(
            super::writes(&table(Some("us-east-1"), false, RegionState::Down))
                .starts_with("REFUSED: the primary us-east-1 is down")
        );
        assert!(
            super::writes(&table(Some("us-east-1"), true, RegionState::Down)).starts_with("held")
        );
        assert!(
            super::writes(&table(None, false, RegionState::Active))
                .starts_with("REFUSED: the table names no primary")
        );
    }

    /// A record change Route 53 turned away is told by why: a batch whose
    /// records changed since they were read, or a fault on AWS's side.
    #[test]
    fn a_record_change_not_made_says_why() {
        let e = |message: &str| crate::aws::AwsError {
            api: "ChangeResourceRecordSets",
            message: message.into(),
        };
        let refused = |message: &str| super::refused(&e(message), 2, &["us-east-1"]);
        let changed = refused("InvalidChangeBatch: not found");
        assert!(
            changed.starts_with("Route 53 refused the change")
                && changed.contains("run `status` and try again"),
            "{changed}"
        );
        for fault in ["ServiceUnavailable: down", "Throttling: Rate exceeded"] {
            let said = refused(fault);
            assert!(
                said.starts_with("Route 53 did not make the change"),
                "{said}"
            );
        }
    }

    /// The records of a drain of eu-west-1, from Route 53 (`kept`) or an
    /// older version's history file (`history`), or from neither.
    #[test]
    fn an_undrain_takes_the_records_kept_in_route53_else_those_of_an_older_history_file() {
        let saved = |ip: &str| SavedRecord {
            name: "api.example.com.".into(),
            rr_type: "A".into(),
            set_identifier: Some("eu-west-1".into()),
            region: Some("eu-west-1".into()),
            health_check_id: None,
            ttl: Some(60),
            values: vec![ip.into()],
            alias: None,
        };
        let in_route53 = saved("192.0.2.1");
        let in_history = saved("192.0.2.2");
        let state = |kept: Option<ResourceRecordSet>| AwsState {
            view: Default::default(),
            records: Default::default(),
            kept: kept
                .into_iter()
                .map(|k| ("eu-west-1".to_owned(), k))
                .collect(),
            members: vec![],
            failover: None,
            route53_unread: false,
        };
        let txt = crate::kept::record(
            "api.example.com",
            "eu-west-1",
            std::slice::from_ref(&in_route53),
        )
        .unwrap();
        let unreadable = ResourceRecordSet::builder()
            .name(txt.name())
            .r#type(RrType::Txt)
            .set_identifier("eu-west-1")
            .weight(0)
            .resource_records(
                ResourceRecord::builder()
                    .value("\"edgeroute-v1\" \"!!\"")
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let mut history = History::default();
        let none = History::default();
        history
            .drained_records
            .insert("eu-west-1".into(), vec![in_history.clone()]);

        let got = |kept: Option<&ResourceRecordSet>, history: &History| {
            kept_records(&state(kept.cloned()), history, "eu-west-1")
        };
        assert_eq!(
            got(Some(&txt), &history),
            Ok(Some(vec![in_route53.clone()]))
        );
        assert_eq!(got(Some(&txt), &none), Ok(Some(vec![in_route53])));
        assert_eq!(got(None, &history), Ok(Some(vec![in_history])));
        assert_eq!(got(None, &none), Ok(None));
        for history in [&history, &none] {
            let err = got(Some(&unreadable), history).unwrap_err();
            assert!(
                err.contains("_edgeroute-drained.api.example.com. TXT")
                    && err.contains("not base64")
                    && err.contains("create them again"),
                "{err}"
            );
        }
    }

    fn record(kind: RrType, weight: Option<i64>, latency: bool) -> ResourceRecordSet {
        ResourceRecordSet::builder()
            .name("api.example.com.")
            .r#type(kind)
            .set_identifier("eu-west-1")
            .set_weight(weight)
            .set_region(latency.then_some(ResourceRecordSetRegion::EuWest1))
            .build()
            .unwrap()
    }

    #[test]
    fn a_regions_records_route_one_way_or_are_refused() {
        let (a, aaaa) = (RrType::A, RrType::Aaaa);
        let weighted = [
            record(a.clone(), Some(0), false),
            record(aaaa.clone(), Some(40), false),
        ];
        assert_eq!(routing_of(&weighted), Routing::Weighted(40));
        let latency = [
            record(a.clone(), None, true),
            record(aaaa.clone(), None, true),
        ];
        assert_eq!(routing_of(&latency), Routing::Latency);
        let mixed = [
            record(a.clone(), Some(100), false),
            record(aaaa, None, true),
        ];
        assert_eq!(routing_of(&mixed), Routing::Other);
        assert_eq!(routing_of(&[record(a, None, false)]), Routing::Other);
        assert_eq!(routing_of(&[]), Routing::Other);
    }

    /// A follow that waits says so after 5 s, again when what holds it
    /// changes (at most every 5 s), and every 30 s.
    #[test]
    fn a_long_wait_is_said_now_and_then() {
        use std::time::Duration;
        let mut w = super::Waiting::new();
        let t0 = w.since;
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let said = |w: &mut super::Waiting, s: f64, why: &str| w.line_at(at(s), "the proxies", why);
        assert_eq!(said(&mut w, 4.9, "a"), None);
        assert_eq!(
            said(&mut w, 5.0, "a").as_deref(),
            Some("  ... 5 s: waiting for the proxies (a)")
        );
        assert_eq!(said(&mut w, 9.0, "a"), None);
        assert_eq!(said(&mut w, 9.0, "b"), None, "too soon after the last");
        assert!(said(&mut w, 10.0, "b").is_some(), "what holds it changed");
        assert_eq!(said(&mut w, 39.0, "b"), None);
        assert!(said(&mut w, 40.0, "b").is_some(), "every 30 s");
    }
}

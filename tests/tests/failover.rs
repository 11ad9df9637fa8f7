//! The failover runbook as commands, against the AWS API emulator, with
//! real proxies under write load: planned switchover with fencing,
//! automated unplanned failover and its guardrails, drain and undrain, dry
//! runs, drills, and the notifications each sends.

use aws_sdk_route53::types::{ChangeAction, RrType};
use edgeroute_tests::control::{ControlPlane, Ran, ScriptedControl, region};
use edgeroute_tests::moto::{self, GLOBAL_CLUSTER, Moto, RECORD, REGIONS, Series};
use edgeroute_tests::webhook::Webhook;
use edgeroute_tests::{Origin, Proxy, ProxyBuilder, client, eventually};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);
/// Probes often enough to see a region fail within a second, with room
/// for a busy machine: a writer move is refused while a proxy sees no
/// backend of its target.
const HEALTH: &str =
    "\n[health]\ninterval = \"300ms\"\ntimeout = \"250ms\"\njitter = \"0ms\"\nfall = 2\nrise = 1\n";

/// Automated failover after 1 s, to a secondary lagging 1 s at most, at
/// most one writer move an hour.
const AUTOMATED: &str =
    "enabled = true\nafter = \"1s\"\nmax_replication_lag = \"1s\"\nmin_interval = \"1h\"";

struct Env {
    moto: Moto,
    fixture: moto::Fixture,
    cp: ControlPlane,
    /// The control plane's config but for its `[server]`.
    config: String,
    webhook: Webhook,
    queue: String,
    origins: BTreeMap<&'static str, Origin>,
}

impl Env {
    /// The emulator with three regions, an SNS topic with a queue, a
    /// webhook, an origin per region, and a control plane on all of it;
    /// `automation` is an extra `[automation]` section.
    async fn start(automation: Option<&str>) -> Env {
        Env::start_with(automation, "").await
    }

    /// [`Env::start`], with `source` (lines of TOML) added to the control
    /// plane's `[source]`.
    async fn start_with(automation: Option<&str>, source: &str) -> Env {
        Env::launch(automation, source, false).await.0
    }

    /// [`Env::start_with`]; with `replica`, another replica of the control
    /// plane (without `automation`) is started first, and the control
    /// plane lists it in `actions.replica_urls`.
    async fn launch(
        automation: Option<&str>,
        source: &str,
        replica: bool,
    ) -> (Env, Option<ControlPlane>) {
        let moto = Moto::start().await;
        let fixture = moto::three_regions(&moto).await;
        let (topic, queue) = moto::topic_with_queue(&moto).await;
        let webhook = Webhook::start().await;
        let config = format!(
            "{}\
             [actions]\ntimeout = \"60s\"\nproxy_max_age = \"5s\"\n\n\
             [notify]\nsns_topic_arn = \"{topic}\"\nwebhook_url = \"{}\"\n",
            aws_source(&moto, &fixture, source),
            webhook.url()
        );
        let other = match replica {
            true => Some(ControlPlane::start_with(None, &config, &moto.env()).await),
            false => None,
        };
        let mut own = config.clone();
        if let Some(other) = &other {
            own = own.replace(
                "[actions]\n",
                &format!("[actions]\nreplica_urls = [{:?}]\n", other.url("")),
            );
        }
        if let Some(a) = automation {
            own.push_str(&format!("\n[automation]\n{a}\n"));
        }
        let cp = ControlPlane::start_with(None, &own, &moto.env()).await;
        let mut origins = BTreeMap::new();
        for r in REGIONS {
            origins.insert(r, Origin::start(r).await);
        }
        let env = Env {
            moto,
            fixture,
            cp,
            config,
            webhook,
            queue,
            origins,
        };
        (env, other)
    }

    /// Makes `region`'s records weighted: its latency record gives way to
    /// one record of each type with its weight.
    async fn weighted(&self, region: &str, records: &[(RrType, i64)]) {
        let r53 = aws_sdk_route53::Client::new(&self.moto.sdk("us-east-1").await);
        moto::change_record(
            &r53,
            &self.fixture.zone_id,
            ChangeAction::Delete,
            moto::latency_record(region, &self.fixture.health_checks[region]),
        )
        .await;
        for (kind, weight) in records {
            moto::change_record(
                &r53,
                &self.fixture.zone_id,
                ChangeAction::Create,
                moto::weighted_record(kind.clone(), region, *weight),
            )
            .await;
        }
    }

    /// With automated failover on (after 1 s, lag within 1 s, at most
    /// one writer move an hour) and a proxy in each of `local` reporting.
    async fn automated(local: [&str; 2]) -> (Env, Vec<Proxy>) {
        let env = Env::start(Some(AUTOMATED)).await;
        let mut proxies = Vec::new();
        for region in local {
            proxies.push(env.proxy(region).await);
        }
        env.wait_for_proxies(2).await;
        (env, proxies)
    }

    /// eu-west-1, the writer's region, fails by both health sources
    /// within `min_interval` of the last writer move: the automation holds
    /// and the writer stays.
    async fn eu_fails_and_the_automation_holds(&self) {
        self.route53_fails("eu-west-1").await;
        self.origins["eu-west-1"].set_health(503);
        eventually(
            "automation holds: too soon after the last writer move",
            WAIT,
            || async {
                self.metric("edgeroute_control_automation_held_total{reason=\"min_interval\"}")
                    .await
                    >= 1.0
            },
        )
        .await;
        assert_eq!(
            moto::writer(&self.moto).await,
            ("eu-west-1".to_owned(), false)
        );
    }

    async fn proxy(&self, local: &str) -> Proxy {
        self.proxy_on(&self.cp, local).await
    }

    /// A proxy in `local` that takes its table from, and reports to, `cp`.
    async fn proxy_on(&self, cp: &ControlPlane, local: &str) -> Proxy {
        let mut b = ProxyBuilder::new(local);
        for r in REGIONS {
            b = b.region(r, &[self.origins[r].addr]);
        }
        cp.proxy(b.extra(HEALTH), "1s").start().await
    }

    /// Another replica of the control plane, on an address of its own,
    /// reading the same AWS every `poll` (the control plane's every
    /// 200 ms), and started once the clock has passed the control plane's
    /// first epoch, so that its numbers are higher.
    async fn later_replica_reading_every(&self, poll: &str) -> ControlPlane {
        let epoch = self.cp.table().await["epoch"].as_u64().expect("an epoch");
        eventually("the clock passes the first epoch", WAIT, || async {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.unwrap().as_secs() > epoch
        })
        .await;
        let config = self.config.replace(
            "poll_interval = \"200ms\"",
            &format!("poll_interval = {poll:?}"),
        );
        let replica = ControlPlane::start_with(None, &config, &self.moto.env()).await;
        let its = replica.table().await["epoch"].as_u64().expect("an epoch");
        assert!(its > epoch, "{its} after {epoch}");
        replica
    }

    /// Until `n` proxies report, each with every region's backend in
    /// rotation (probed): a writer move is refused while a proxy sees no
    /// backend of its target.
    async fn wait_for_proxies(&self, n: usize) {
        Env::wait_for_proxies_on(&self.cp, n).await;
    }

    /// [`Env::wait_for_proxies`] reporting to `cp`.
    async fn wait_for_proxies_on(cp: &ControlPlane, n: usize) {
        eventually(
            &format!("{n} proxies report every region in rotation"),
            WAIT,
            || async {
                cp.get("/v1/proxies").await["proxies"]
                    .as_array()
                    .is_some_and(|p| {
                        p.len() == n
                            && p.iter().all(|p| {
                                p["regions"].as_array().is_some_and(|r| {
                                    r.iter().all(|r| r["in_rotation"].as_u64() > Some(0))
                                })
                            })
                    })
            },
        )
        .await;
    }

    /// Until the automation has followed its first failover to its end.
    async fn automated_failover_followed(&self) {
        eventually(
            "the automated failover is followed to its end",
            WAIT,
            || async {
                self.metric("edgeroute_control_automation_failovers_total{result=\"ok\"}")
                    .await
                    == 1.0
            },
        )
        .await;
    }

    /// Route 53's health check of `region` fails (its CloudWatch status 0).
    async fn route53_fails(&self, region: &str) {
        moto::put_metric(
            &self.moto,
            &Series::health_check(&self.fixture.health_checks[region]),
            0.0,
            Duration::ZERO,
        )
        .await;
    }

    async fn metric(&self, sample: &str) -> f64 {
        self.cp.metric(sample).await
    }

    /// Drains `region` (its latency record, kept in Route 53), then puts
    /// the record back by hand, as infrastructure code would.
    async fn drained_and_put_back_by_hand(&self, region: &str) {
        self.cp
            .command(&["drain", region])
            .await
            .assert_ok_saying(&["completed"]);
        let r53 = aws_sdk_route53::Client::new(&self.moto.sdk("us-east-1").await);
        moto::change_record(
            &r53,
            &self.fixture.zone_id,
            ChangeAction::Create,
            moto::latency_record(region, &self.fixture.health_checks[region]),
        )
        .await;
    }

    /// Drains us-east-1, then eu-west-1 here and ap-southeast-1 from
    /// another machine at once, each judged safe on a read made before
    /// the other's change; one goes through. Their outcomes, eu first.
    async fn drain_us_then_the_others_at_once(&self) -> (Ran, Ran) {
        self.cp
            .command(&["drain", "us-east-1"])
            .await
            .assert_ok_saying(&["completed"]);
        self.moto.hold("ChangeResourceRecordSets").await;
        let (eu, ap, ()) = tokio::join!(
            self.cp.command(&["drain", "eu-west-1"]),
            self.cp.command_elsewhere(&["drain", "ap-southeast-1"]),
            async {
                // Both read the zone, found the other region serving, and
                // sent their change; then Route 53 takes them one after
                // the other.
                eventually("both drains sent their change", WAIT, || async {
                    self.moto.held("ChangeResourceRecordSets").await == 2
                })
                .await;
                self.moto.release("ChangeResourceRecordSets").await;
            }
        );
        assert!(eu.ok != ap.ok, "one drain went through: {eu:?} {ap:?}");
        (eu, ap)
    }
}

/// What one write got back.
#[derive(Debug)]
struct Answer {
    status: u16,
    region: Option<String>,
    retry_after: bool,
}

/// A control plane's `[source]` on the emulator's three regions, read
/// every 200 ms, with `extra` lines.
fn aws_source(moto: &Moto, fixture: &moto::Fixture, extra: &str) -> String {
    format!(
        "[source]\nkind = \"aws\"\npoll_interval = \"200ms\"\nendpoint_url = \"{}\"\nhosted_zone_id = \"{}\"\n\
         record_name = \"{RECORD}\"\nglobal_cluster_id = \"{GLOBAL_CLUSTER}\"\nglobal_cluster_region = \"us-east-1\"\n{extra}\n",
        moto.endpoint, fixture.zone_id,
    )
}

/// Sends writes through `proxy` until `stop`, at most `max` or 120 s.
async fn write_load(url: String, stop: Arc<AtomicBool>, refused: Arc<AtomicUsize>) -> Vec<Answer> {
    let client = client();
    let started = Instant::now();
    let mut answers = Vec::new();
    while !stop.load(Ordering::SeqCst)
        && answers.len() < 50_000
        && started.elapsed() < Duration::from_secs(120)
    {
        let resp = client
            .post(&url)
            .body("{\"item\":1}")
            .send()
            .await
            .expect("the proxy answers");
        let status = resp.status().as_u16();
        if status == 503 {
            refused.fetch_add(1, Ordering::SeqCst);
            // Held writes are retried later, as a client would.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        answers.push(Answer {
            status,
            region: resp
                .headers()
                .get("x-edgeroute-region")
                .map(|v| v.to_str().unwrap().to_owned()),
            retry_after: resp.headers().contains_key("retry-after"),
        });
    }
    answers
}

fn epochs(origin: &Origin) -> Vec<u64> {
    origin
        .seen()
        .iter()
        .filter(|s| s.method == "POST")
        .map(|s| {
            s.header("x-edgeroute-epoch")
                .expect("every write carries its epoch")
                .parse()
                .unwrap()
        })
        .collect()
}

#[tokio::test]
async fn a_planned_switchover_under_writes_fences_every_write_and_prints_the_timeline() {
    let env = Env::start(None).await;
    let cp = &env.cp;
    let _us = env.proxy("us-east-1").await;
    let _eu = env.proxy("eu-west-1").await;
    env.wait_for_proxies(2).await;
    let before = cp.table().await["epoch"].as_u64().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    // One refusal counter per writer: each sends one write at a time.
    let refused: Vec<Arc<AtomicUsize>> = (0..4).map(|_| Arc::default()).collect();
    let writers: Vec<_> = [&_us, &_eu, &_us, &_eu]
        .iter()
        .zip(&refused)
        .map(|(p, r)| {
            tokio::spawn(write_load(
                p.url("/orders"),
                Arc::clone(&stop),
                Arc::clone(r),
            ))
        })
        .collect();
    eventually("writes reach the primary", WAIT, || async {
        env.origins["us-east-1"].count("POST") >= 20
    })
    .await;

    // The emulator keeps the switchover running until released, so the
    // window in which writes are held is certain to be seen.
    env.moto.hold_failovers().await;
    let (ran, us_writes_when_held) =
        tokio::join!(cp.command(&["failover", "--to", "eu-west-1"]), async {
            eventually("the table holds writes", WAIT, || async {
                cp.table().await["failover_in_progress"] == true
            })
            .await;
            let held = cp.table().await["version"].as_u64().unwrap();
            eventually("every proxy holds writes", WAIT, || async {
                let p = cp.get("/v1/proxies").await;
                p["proxies"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|p| p["version"].as_u64().unwrap() >= held)
            })
            .await;
            // Once every writer has had a write refused from here on, none
            // has an earlier write still on its way to the old primary.
            let seen: Vec<usize> = refused.iter().map(|r| r.load(Ordering::SeqCst)).collect();
            eventually("every writer has a write refused", WAIT, || async {
                refused
                    .iter()
                    .zip(&seen)
                    .all(|(r, s)| r.load(Ordering::SeqCst) > *s)
            })
            .await;
            let at_hold = env.origins["us-east-1"].count("POST");
            env.moto.release_failovers().await;
            at_hold
        });
    assert!(ran.ok, "{ran:?}");
    let us_writes_at_confirmation = env.origins["us-east-1"].count("POST");
    // AWS may finish before its running state is read, so that step is optional.
    for step in [
        "requested",
        "writer moved",
        "table epoch raised",
        "proxies confirmed",
    ] {
        assert!(
            ran.stdout.contains(step),
            "timeline step {step:?} missing:\n{}",
            ran.stdout
        );
    }
    assert!(
        ran.stdout.contains("2 of 2 proxies route on epoch"),
        "{}",
        ran.stdout
    );
    let after = cp.table().await["epoch"].as_u64().unwrap();
    assert!(after > before);

    let eu_then = env.origins["eu-west-1"].count("POST");
    eventually("writes reach the new primary", WAIT, || async {
        env.origins["eu-west-1"].count("POST") >= eu_then + 20
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut answers = Vec::new();
    for w in writers {
        answers.extend(w.await.unwrap());
    }

    // Every write was served by the primary of its epoch, or refused.
    for a in &answers {
        match a.status {
            200 => assert!(
                matches!(a.region.as_deref(), Some("us-east-1" | "eu-west-1")),
                "{a:?}"
            ),
            503 => assert!(a.retry_after, "a held write says when to retry: {a:?}"),
            _ => panic!("a write failed: {a:?}"),
        }
    }
    assert!(answers.iter().any(|a| a.status == 503));
    assert!(
        epochs(&env.origins["us-east-1"])
            .iter()
            .all(|e| *e == before),
        "the old primary saw only the old epoch"
    );
    assert!(
        epochs(&env.origins["eu-west-1"])
            .iter()
            .all(|e| *e == after),
        "the new primary saw only the new epoch"
    );
    assert_eq!(env.origins["ap-southeast-1"].count("POST"), 0);
    assert_eq!(
        env.origins["us-east-1"].count("POST"),
        us_writes_when_held,
        "no write reached the old primary once every proxy held writes"
    );
    assert_eq!(us_writes_at_confirmation, us_writes_when_held);
    eprintln!(
        "{} writes: {} served, {} held (503)",
        answers.len(),
        answers.iter().filter(|a| a.status == 200).count(),
        answers.iter().filter(|a| a.status == 503).count()
    );

    // Kept and announced.
    let status = cp.get("/v1/status").await;
    assert_eq!(status["last_failover"]["ok"], true, "{status}");
    assert_eq!(status["last_failover"]["kind"], "switchover");
    assert!(
        status["last_failover"]["summary"]
            .as_str()
            .unwrap()
            .contains("us-east-1 → eu-west-1")
    );
    env.webhook.assert_received(&[
        "switchover.requested",
        "writer.moved",
        "switchover.completed",
        "table.changed",
    ]);
    let completed = env
        .webhook
        .events()
        .into_iter()
        .find(|e| e["event"] == "switchover.completed")
        .unwrap();
    let steps: Vec<&str> = completed["operation"]["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(steps.first(), Some(&"requested"), "{completed}");
    assert_eq!(steps.last(), Some(&"proxies confirmed"), "{completed}");
    let queued = std::sync::Mutex::new(Vec::new());
    eventually("the SNS topic delivered to its queue", WAIT, || async {
        let got = moto::drain_queue(&env.moto, &env.queue).await;
        let mut all = queued.lock().unwrap();
        all.extend(got);
        all.iter().any(|m| m.contains("switchover.completed"))
    })
    .await;
}

#[tokio::test]
async fn automated_failover_runs_when_both_sources_agree_and_its_guardrails_hold() {
    let (env, _proxies) = Env::automated(["eu-west-1", "ap-southeast-1"]).await;
    let cp = &env.cp;
    let held =
        |reason: &str| format!("edgeroute_control_automation_held_total{{reason=\"{reason}\"}}");

    // Route 53 alone calls the primary down: the proxies disagree, so no failover.
    env.route53_fails("us-east-1").await;
    // Held on every read (200 ms apart), for longer than `after` (1 s).
    eventually("automation holds: the sources disagree", WAIT, || async {
        env.metric(&held("sources_disagree")).await >= 10.0
    })
    .await;
    assert_eq!(
        moto::writer(&env.moto).await,
        ("us-east-1".to_owned(), false)
    );

    // The proxies' probes fail too: both agree, and after `after` the
    // automation fails over to the least lagging healthy secondary.
    env.moto.hold_failovers().await;
    env.origins["us-east-1"].set_health(503);
    eventually("the automated failover runs", WAIT, || async {
        cp.table().await["failover_in_progress"] == true
    })
    .await;

    // A second trigger while it runs is refused, by hand or by the automation.
    let second = cp
        .command(&[
            "failover",
            "--to",
            "ap-southeast-1",
            "--unplanned",
            "--allow-data-loss",
        ])
        .await;
    assert!(!second.ok, "{second:?}");
    assert!(second.stderr.contains("already running"), "{second:?}");
    eventually("automation holds: a failover runs", WAIT, || async {
        env.metric(&held("failover_running")).await >= 1.0
    })
    .await;

    env.moto.release_failovers().await;
    eventually("the writer is in eu-west-1", WAIT, || async {
        let t = cp.table().await;
        t["primary_region"] == "eu-west-1" && t["failover_in_progress"] == false
    })
    .await;
    env.automated_failover_followed().await;
    let status = cp.get("/v1/status").await;
    assert_eq!(status["last_failover"]["by"], "automation", "{status}");
    assert_eq!(status["last_failover"]["kind"], "failover");

    // The new primary fails too, within the minimum interval: held.
    env.eu_fails_and_the_automation_holds().await;
    assert_eq!(
        env.metric("edgeroute_control_automation_failovers_total{result=\"ok\"}")
            .await
            + env
                .metric("edgeroute_control_automation_failovers_total{result=\"failed\"}")
                .await,
        1.0
    );
    env.webhook.assert_received(&[
        "automation.held",
        "automation.triggered",
        "failover.requested",
        "failover.completed",
    ]);
}

/// The automation in one replica, the other in its
/// `actions.replica_urls`, and every proxy reporting to the other: their
/// votes count, so the automation fails over when they and Route 53 call
/// the primary down (its own replica has no proxy, whose silence would
/// hold it as `sources_disagree`), and follows the move to them.
#[tokio::test]
async fn the_automation_counts_the_proxies_reporting_to_another_replica() {
    let (env, other) = Env::launch(Some(AUTOMATED), "", true).await;
    let mut other = other.expect("the other replica");
    let _proxies = [
        env.proxy_on(&other, "eu-west-1").await,
        env.proxy_on(&other, "ap-southeast-1").await,
    ];
    Env::wait_for_proxies_on(&other, 2).await;
    let cp = &env.cp;
    assert_eq!(
        cp.get("/v1/proxies").await["proxies"],
        serde_json::json!([])
    );

    env.route53_fails("us-east-1").await;
    eventually("automation holds: the sources disagree", WAIT, || async {
        env.metric("edgeroute_control_automation_held_total{reason=\"sources_disagree\"}")
            .await
            >= 10.0
    })
    .await;
    env.origins["us-east-1"].set_health(503);
    env.automated_failover_followed().await;
    let t = cp.table().await;
    assert_eq!(t["primary_region"], "eu-west-1", "{t}");
    let status = cp.get("/v1/status").await;
    let confirmed = status["last_failover"]["timeline"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["name"] == "proxies confirmed"))
        .map(|s| s["detail"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_else(|| panic!("no confirmation in {status}"));
    assert!(
        confirmed.starts_with("2 of 2 proxies route on the change")
            && confirmed
                .contains("this control plane and the other replicas in actions.replica_urls"),
        "{confirmed}"
    );
    let unread = "edgeroute_control_automation_replicas_unread";
    assert_eq!(env.metric(unread).await, 0.0);
    other.kill();
    eventually("the replica gone is counted", WAIT, || async {
        env.metric(unread).await == 1.0
    })
    .await;
    assert!(
        cp.log().contains("1 of 1 replicas could not be read"),
        "{}",
        cp.log()
    );
}

/// The certificate the automation presents to the other replicas
/// (`actions.client_tls`) is read again as it is renewed, as the server's
/// own is, with its expiry in the metrics.
#[tokio::test]
async fn the_automations_certificate_for_the_replicas_is_read_again_when_renewed() {
    use edgeroute_tests::proxy::write_atomically;
    const EXPIRY: &str = "edgeroute_control_client_certificate_expiry_timestamp_seconds";
    const LOADED: &str = "edgeroute_control_client_certificate_reloads_total{result=\"ok\"}";
    let moto = Moto::start().await;
    let fixture = moto::three_regions(&moto).await;
    // Another replica is listed; whether it answers does not matter here.
    let cp = ControlPlane::start_mtls_with(
        "replica_urls = [\"https://127.0.0.1:9\"]\n",
        &format!(
            "{}\n[automation]\n{AUTOMATED}\n",
            aws_source(&moto, &fixture, "")
        ),
        &moto.env(),
    )
    .await;
    // 2100-01-01, as issued at start.
    eventually("the expiry is shown", WAIT, || async {
        cp.metric(EXPIRY).await == 4_102_444_800.0
    })
    .await;
    assert_eq!(cp.metric(LOADED).await, 0.0);

    let side = tempfile::tempdir().unwrap();
    let (cert, key) = (
        side.path().join("client.pem"),
        side.path().join("client.key"),
    );
    cp.clients
        .as_ref()
        .expect("a control plane asking for client certificates")
        .issue_client_until(&cert, &key, 2099);
    for (from, to) in [(&key, "client.key"), (&cert, "client.pem")] {
        write_atomically(&cp.dir.join(to), &std::fs::read_to_string(from).unwrap());
    }
    cp.signal(nix::sys::signal::Signal::SIGHUP);
    // 2099-01-01.
    eventually("the renewed certificate is in force", WAIT, || async {
        cp.metric(EXPIRY).await == 4_070_908_800.0
    })
    .await;
    assert!(cp.metric(LOADED).await >= 1.0);
}

/// A writer move made from another machine, whose history file the
/// control plane cannot read, still starts `min_interval`: the automation
/// sees the writer move in AWS, and holds when the new primary fails soon
/// after, rather than move the writer again.
#[tokio::test]
async fn an_operators_move_from_another_machine_holds_the_automation_for_min_interval() {
    let (env, _proxies) = Env::automated(["us-east-1", "ap-southeast-1"]).await;
    let cp = &env.cp;
    cp.command_elsewhere(&["failover", "--to", "eu-west-1"])
        .await
        .assert_ok_saying(&["completed"]);
    assert!(
        cp.history(false).is_null(),
        "the control plane's history file knows nothing of the move"
    );
    env.eu_fails_and_the_automation_holds().await;
    assert_eq!(
        env.metric("edgeroute_control_automation_failovers_total{result=\"ok\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn drain_moves_reads_away_and_undrain_brings_them_back() {
    let env = Env::start(None).await;
    let proxy = env.proxy("us-east-1").await;
    env.wait_for_proxies(1).await;
    let read_region = || async {
        let resp = client().get(proxy.url("/items")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.headers()["x-edgeroute-region"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(read_region().await, "us-east-1");
    // A dual-stack load balancer: an AAAA record beside the A record.
    let r53 = aws_sdk_route53::Client::new(&env.moto.sdk("us-east-1").await);
    moto::change_record(
        &r53,
        &env.fixture.zone_id,
        ChangeAction::Create,
        moto::latency_record_of(
            RrType::Aaaa,
            "us-east-1",
            &env.fixture.health_checks["us-east-1"],
        ),
    )
    .await;
    let types = || moto::record_types(&env.moto, &env.fixture.zone_id, "us-east-1");
    assert_eq!(types().await, ["A", "AAAA"]);

    // Drained from another machine, with a history file of its own: the
    // records are kept in Route 53, where the control plane sees the
    // region drained (not gone) and any command line finds them.
    let ran = env.cp.command_elsewhere(&["drain", "us-east-1"]).await;
    ran.assert_ok_saying(&[
        "remove its latency records",
        "(kept in Route 53 to put back)",
        "us-east-1 draining, weight 0",
        "1 of 1 proxies",
    ]);
    assert!(
        types().await.is_empty(),
        "every record of the region is out of DNS"
    );
    let kept = || moto::kept_regions(&env.moto, &env.fixture.zone_id);
    assert_eq!(kept().await, ["us-east-1"]);
    // The proxy confirmed the table: its reads have moved already.
    for _ in 0..10 {
        assert_ne!(read_region().await, "us-east-1");
    }
    let again = env.cp.command(&["drain", "us-east-1"]).await;
    assert!(
        again.ok && again.stdout.contains("nothing to do"),
        "{again:?}"
    );

    let ran = env.cp.command(&["undrain", "us-east-1"]).await;
    ran.assert_ok_saying(&[
        "put back its latency records",
        "us-east-1 active, weight 100",
    ]);
    assert_eq!(types().await, ["A", "AAAA"], "both records are back");
    assert!(kept().await.is_empty(), "the kept copy is gone with them");
    for _ in 0..10 {
        assert_eq!(read_region().await, "us-east-1");
    }
    env.webhook
        .assert_received(&["drain.completed", "undrain.completed"]);
    // Each event carries an id of its own, for a receiver to drop a repeat.
    let ids: std::collections::BTreeSet<String> = env
        .webhook
        .events()
        .iter()
        .map(|e| e["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids.len(), env.webhook.events().len(), "{ids:?}");
    assert!(!ids.contains(""));
}

/// A control plane that cannot read its source would not follow a change:
/// a planned switchover, a drill and a drain are refused before AWS is
/// asked for anything.
#[tokio::test]
async fn changes_that_can_wait_are_refused_while_the_control_plane_source_is_stale() {
    let env = Env::start(None).await;
    let table = env.cp.table().await;
    let stale = ScriptedControl::start_stale(table.to_string().into()).await;
    let url = format!("http://{}", stale.addr);
    for args in [
        &["failover", "--to", "eu-west-1"][..],
        &["failover", "--to", "eu-west-1", "--drill"],
        &["drain", "ap-southeast-1"],
    ] {
        let ran = env.cp.command_via(&url, args).await;
        assert!(
            !ran.ok
                && ran.stderr.contains("cannot read its source")
                && ran.stderr.contains("so none was made"),
            "{args:?}: {ran:?}"
        );
        // Its dry run shows the steps and fails as the real run would.
        let dry: Vec<&str> = args.iter().copied().chain(["--dry-run"]).collect();
        let ran = env.cp.command_via(&url, &dry).await;
        assert!(
            !ran.ok
                && ran.stdout.contains("steps (none taken):")
                && ran
                    .stderr
                    .contains("a real run would be refused now: the control plane at"),
            "{dry:?}: {ran:?}"
        );
    }
    // `status` says so, and fails.
    let ran = env.cp.command_via(&url, &["status"]).await;
    assert!(
        !ran.ok && ran.stdout.contains("cannot read its source now"),
        "{ran:?}"
    );
    // A control plane with no table yet could not follow a change either.
    let tableless = ScriptedControl::start_without_table().await;
    let url = format!("http://{}", tableless.addr);
    let ran = env.cp.command_via(&url, &["status"]).await;
    assert!(
        !ran.ok
            && ran.stdout.contains("table served: none yet")
            && ran.stdout.contains("proxies reporting: 0"),
        "{ran:?}"
    );
    for args in [
        &["failover", "--to", "eu-west-1"][..],
        &["drain", "ap-southeast-1"],
    ] {
        let ran = env.cp.command_via(&url, args).await;
        assert!(
            !ran.ok && ran.stderr.contains("has no table yet"),
            "{args:?}: {ran:?}"
        );
    }
    // Nor is a change started that the history file could not keep.
    let history = env.cp.dir.join("history.json");
    std::fs::write(&history, "{not json").unwrap();
    for args in [
        &["failover", "--to", "eu-west-1"][..],
        &["failover", "--to", "eu-west-1", "--drill"],
        &["drain", "ap-southeast-1"],
    ] {
        let ran = env.cp.command(args).await;
        assert!(
            !ran.ok
                && ran.stderr.contains("move it aside")
                && ran.stderr.contains("nothing changed"),
            "{args:?}: {ran:?}"
        );
    }
    std::fs::remove_file(&history).unwrap();
    assert_eq!(
        moto::writer(&env.moto).await,
        ("us-east-1".to_owned(), false),
        "the writer did not move"
    );
    assert_eq!(
        moto::record_types(&env.moto, &env.fixture.zone_id, "ap-southeast-1").await,
        ["A"],
        "the record is in place"
    );
}

/// The control plane may be lost with the writer's region: an unplanned
/// failover moves the writer all the same, and fails saying that no proxy
/// is confirmed to follow, where a change that can wait is refused.
#[tokio::test]
async fn an_unplanned_failover_moves_the_writer_while_the_control_plane_is_lost() {
    let mut env = Env::start(None).await;
    env.cp.kill();
    let refused = env.cp.command(&["failover", "--to", "eu-west-1"]).await;
    assert!(
        !refused.ok
            && refused.stderr.contains("cannot reach the control plane at")
            && refused.stderr.contains("so none was made"),
        "{refused:?}"
    );
    assert_eq!(moto::writer(&env.moto).await.0, "us-east-1");

    let ran = env
        .cp
        .command(&[
            "failover",
            "--to",
            "eu-west-1",
            "--unplanned",
            "--allow-data-loss",
        ])
        .await;
    assert!(!ran.ok, "{ran:?}");
    assert!(
        ran.stderr.contains("cannot reach the control plane at")
            && ran.stderr.contains("failing over all the same"),
        "{ran:?}"
    );
    assert!(
        ran.stdout.contains("writer moved")
            && ran.stdout.contains("AWS reports the writer in eu-west-1")
            && !ran.stdout.contains("table epoch raised"),
        "{ran:?}"
    );
    let not_confirmed = "NOT CONFIRMED that any proxy sends writes to eu-west-1";
    assert!(ran.stdout.contains(not_confirmed), "{ran:?}");
    assert_eq!(
        moto::writer(&env.moto).await,
        ("eu-west-1".to_owned(), false)
    );
    let history = env.cp.history(false);
    let last = history["operations"]
        .as_array()
        .and_then(|ops| ops.last())
        .expect("the failover recorded");
    assert_eq!(last["kind"], "failover", "{last}");
    assert!(
        last["error"]
            .as_str()
            .is_some_and(|e| e.contains(not_confirmed)),
        "{last}"
    );
    // A control plane started again reads the writer where it moved.
    let again = ControlPlane::start_with(None, &env.config, &env.moto.env()).await;
    eventually(
        "a control plane started again serves eu-west-1",
        WAIT,
        || async {
            let t = &again.get("/v1/status").await["table"];
            t["primary_region"] == "eu-west-1" && t["failover_in_progress"] == false
        },
    )
    .await;
}

/// A command whose output nobody reads any more (`| head` has exited)
/// makes and follows its change all the same, records it, and succeeds.
#[tokio::test]
async fn a_command_whose_output_nobody_reads_finishes_and_records_its_change() {
    let env = Env::start(None).await;
    let ran = env
        .cp
        .command_unread(&["failover", "--to", "eu-west-1"])
        .await;
    assert!(ran.ok, "{ran:?}");
    assert_eq!(
        moto::writer(&env.moto).await,
        ("eu-west-1".to_owned(), false)
    );
    let history = env.cp.history(false);
    let op = &history["operations"][0];
    assert_eq!(
        (&op["kind"], &op["ok"], &op["finished"]),
        (&"switchover".into(), &true.into(), &true.into()),
        "{history:#}"
    );
}

#[tokio::test]
async fn a_dry_run_changes_nothing() {
    let env = Env::start(None).await;
    let _proxy = env.proxy("us-east-1").await;
    env.wait_for_proxies(1).await;
    let aws_before = moto::snapshot(&env.moto, &env.fixture.zone_id).await;
    let table_before = env.cp.table().await;
    let runs: [&[&str]; 4] = [
        &["failover", "--to", "eu-west-1", "--dry-run"],
        &[
            "failover",
            "--to",
            "ap-southeast-1",
            "--unplanned",
            "--allow-data-loss",
            "--dry-run",
        ],
        &["failover", "--to", "eu-west-1", "--drill", "--dry-run"],
        &["drain", "eu-west-1", "--dry-run"],
    ];
    for args in runs {
        let ran = env.cp.command(args).await;
        ran.assert_ok_saying(&[
            "dry run:",
            "writer region: us-east-1",
            "steps (none taken):",
        ]);
    }
    let ran = env
        .cp
        .command(&[
            "failover",
            "--to",
            "ap-southeast-1",
            "--unplanned",
            "--allow-data-loss",
            "--dry-run",
        ])
        .await;
    assert!(
        ran.stdout.contains("rds:FailoverGlobalCluster"),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("its lag: 310 ms"), "{}", ran.stdout);
    let ran = env.cp.command(&["drain", "eu-west-1", "--dry-run"]).await;
    assert!(
        ran.stdout
            .contains("route53:ChangeResourceRecordSets, one batch: DELETE api.example.com A SetIdentifier=eu-west-1 Region=eu-west-1"),
        "{}",
        ran.stdout
    );

    assert_eq!(
        moto::snapshot(&env.moto, &env.fixture.zone_id).await,
        aws_before,
        "AWS unchanged"
    );
    assert_eq!(env.cp.table().await, table_before, "table unchanged");
    assert!(
        !env.cp.dir.join("history.json").exists(),
        "nothing recorded"
    );
    assert!(
        env.webhook.names().is_empty(),
        "nothing announced: {:?}",
        env.webhook.names()
    );

    // Bad requests are refused with what to do, and change nothing either.
    let ran = env.cp.command(&["failover", "--to", "eu-central-1"]).await;
    assert!(
        !ran.ok && ran.stderr.contains("not a region of global cluster"),
        "{ran:?}"
    );
    let ran = env
        .cp
        .command(&["failover", "--to", "eu-west-1", "--unplanned"])
        .await;
    assert!(
        !ran.ok && ran.stderr.contains("--allow-data-loss"),
        "{ran:?}"
    );
    assert_eq!(
        moto::snapshot(&env.moto, &env.fixture.zone_id).await,
        aws_before
    );
}

/// A drill checks its way back as it checked its way there, on AWS read
/// again: a region that failed while the writer was away is not given it
/// back, and the command says where to see where the writer is (it stays
/// where the drill put it).
#[tokio::test]
async fn a_drill_does_not_switch_back_to_a_region_that_failed_meanwhile() {
    let env = Env::start(None).await;
    let _proxy = env.proxy("eu-west-1").await;
    env.wait_for_proxies(1).await;
    env.moto.hold_failovers().await;
    let (ran, ()) = tokio::join!(
        env.cp
            .command(&["failover", "--to", "eu-west-1", "--drill"]),
        async {
            eventually("the switchover there runs", WAIT, || async {
                env.cp.table().await["failover_in_progress"] == true
            })
            .await;
            env.route53_fails("us-east-1").await;
            env.moto.release_failovers().await;
        }
    );
    assert!(!ran.ok, "{ran:?}");
    assert!(ran.stdout.contains("there: proxies confirmed"), "{ran:?}");
    assert!(!ran.stdout.contains("back: requested"), "{ran:?}");
    assert!(
        ran.stdout
            .contains("the switchover back was not started: Route 53 reports us-east-1 unhealthy")
            && ran
                .stdout
                .contains("`edgeroute-control status` shows where the writer is"),
        "{ran:?}"
    );
    assert_eq!(
        moto::writer(&env.moto).await,
        ("eu-west-1".to_owned(), false)
    );
}

#[tokio::test]
async fn a_drill_switches_over_and_back_and_is_kept_as_the_last_failover_test() {
    let env = Env::start(None).await;
    let _proxy = env.proxy("eu-west-1").await;
    env.wait_for_proxies(1).await;
    let ran = env
        .cp
        .command(&["failover", "--to", "eu-west-1", "--drill"])
        .await;
    assert!(ran.ok, "{ran:?}");
    for step in [
        "there: writer moved",
        "there: proxies confirmed",
        "back: writer moved",
        "back: proxies confirmed",
    ] {
        assert!(
            ran.stdout.contains(step),
            "timeline step {step:?} missing:\n{}",
            ran.stdout
        );
    }
    assert_eq!(
        moto::writer(&env.moto).await,
        ("us-east-1".to_owned(), false)
    );
    assert_eq!(env.cp.table().await["primary_region"], "us-east-1");

    let status = env.cp.command(&["status"]).await;
    status.assert_ok_saying(&[
        "last failover test (drill): 20",
        "us-east-1 → eu-west-1 → us-east-1",
        // Who ran it: `user@host`.
        "by cli (",
    ]);
    assert!(
        status
            .stdout
            .contains("proxies reporting: 1 (1 on the table served"),
        "{}",
        status.stdout
    );
    assert_eq!(
        env.metric("edgeroute_control_last_drill_success").await,
        1.0
    );
    assert!(
        env.metric("edgeroute_control_last_drill_timestamp_seconds")
            .await
            > 0.0
    );
    let drill = env
        .webhook
        .events()
        .into_iter()
        .find(|e| e["event"] == "drill.completed")
        .expect("drill announced");
    assert_eq!(drill["operation"]["ok"], true);
}

/// Replicas of one control plane, each with a proxy reporting to it: a
/// command given every replica's URL (`actions.replica_urls`) sees both
/// proxies, follows a drain to each (the second replica reads AWS every
/// 2 s and numbers its tables above the first's, so its proxy's numbers
/// pass before it has the change; and it reads a later change with the
/// drain), changes nothing while a replica cannot be read, whose proxies
/// it would not see, but for an unplanned failover, which goes ahead and
/// says what it could not confirm.
#[tokio::test]
async fn a_command_given_every_replica_follows_a_change_to_the_proxies_of_each() {
    let env = Env::start(None).await;
    let mut replica = env.later_replica_reading_every("2s").await;
    let _on_first = env.proxy("us-east-1").await;
    let on_replica = env.proxy_on(&replica, "eu-west-1").await;
    env.wait_for_proxies(1).await;
    Env::wait_for_proxies_on(&replica, 1).await;
    let replicas = format!(
        "replica_urls = [{:?}, {:?}]\n",
        env.cp.url(""),
        replica.url("")
    );

    let alone = env.cp.command(&["status"]).await;
    alone.assert_ok_saying(&["proxies reporting: 1 (1 on the table served, 0 behind)"]);
    let both = env.cp.command_with_actions(&replicas, &["status"]).await;
    both.assert_ok_saying(&[
        "proxies reporting: 2 (2 on the table served, 0 behind)",
        &format!("replica {}: 1 reporting", replica.url("")),
    ]);

    // A list that leaves out the commands' own control plane leaves out
    // its proxies: said, and no change made on it.
    let left_out = format!("replica_urls = [{:?}]\n", replica.url(""));
    let status = env.cp.command_with_actions(&left_out, &["status"]).await;
    assert!(
        !status.ok && status.stdout.contains("leaves out a replica"),
        "{status:?}"
    );
    let refused = env
        .cp
        .command_with_actions(&left_out, &["drain", "us-east-1"])
        .await;
    assert!(
        !refused.ok
            && refused
                .stderr
                .contains("leaves out a replica (list every one)"),
        "{refused:?}"
    );

    // Once the first replica serves the drain, another change comes (a
    // health check fails): the slower replica then reads both at once, and
    // its table is none the first served, yet it has the drain.
    let (ran, ()) = tokio::join!(
        env.cp
            .command_with_actions(&replicas, &["drain", "us-east-1"]),
        async {
            eventually("the first replica serves the drain", WAIT, || async {
                edgeroute_tests::control::region(&env.cp.table().await, "us-east-1")["weight"] == 0
            })
            .await;
            env.route53_fails("ap-southeast-1").await;
        }
    );
    ran.assert_ok_saying(&[
        "2 of 2 proxies route on the change, each on its replica's table with it or a later one",
        "every proxy reporting to the 2 replicas in actions.replica_urls",
    ]);
    // The proxy on the other replica routes on the drain: the command
    // waited for the replica to read it, and for the proxy.
    let routing = on_replica.routing().await;
    let state = &edgeroute_tests::control::region(&routing, "us-east-1")["state"];
    assert_eq!(state, "draining");

    replica.kill();
    let ran = env
        .cp
        .command_with_actions(&replicas, &["undrain", "us-east-1"])
        .await;
    assert!(!ran.ok, "{ran:?}");
    for said in [
        "1 of 2 replicas could not be read",
        &format!("cannot reach the replica at {}", replica.url("")),
        "take it out of actions.replica_urls",
        "so none was made",
    ] {
        assert!(ran.stderr.contains(said), "{said}: {}", ran.stderr);
    }
    assert_eq!(
        moto::kept_regions(&env.moto, &env.fixture.zone_id).await,
        ["us-east-1"],
        "still drained"
    );
    let status = env.cp.command_with_actions(&replicas, &["status"]).await;
    assert!(!status.ok, "{status:?}");
    assert!(
        status
            .stdout
            .contains("proxies reporting: 1 (1 on the table served, 0 behind)")
            && status.stdout.contains("1 of 2 replicas could not be read"),
        "the replica read is shown, the other named: {}",
        status.stdout
    );

    let ran = env
        .cp
        .command_with_actions(
            &replicas,
            &[
                "failover",
                "--to",
                "eu-west-1",
                "--unplanned",
                "--allow-data-loss",
            ],
        )
        .await;
    ran.assert_ok_saying(&[
        "1 of 1 proxies route on the change",
        "NOT CONFIRMED for the proxies of what could not be read: 1 of 2 replicas could not be read",
    ]);
    assert!(
        ran.stderr.contains("failing over all the same"),
        "{}",
        ran.stderr
    );
    assert_eq!(
        moto::writer(&env.moto).await,
        ("eu-west-1".to_owned(), false)
    );
}

#[tokio::test]
async fn a_proxy_that_stops_reporting_during_a_switchover_fails_the_command_by_name() {
    let env = Env::start(None).await;
    let _us = env.proxy("us-east-1").await;
    let eu = env.proxy("eu-west-1").await;
    env.wait_for_proxies(2).await;
    // Gone without a word, while its last report is still fresh: it may
    // still route writes on the old table, so the change is not confirmed.
    eu.signal(nix::sys::signal::Signal::SIGKILL);
    let ran = env.cp.command(&["failover", "--to", "eu-west-1"]).await;
    assert!(!ran.ok, "{ran:?}");
    assert!(ran.stdout.contains("writer moved"), "{}", ran.stdout);
    assert!(ran.stderr.contains("stopped reporting"), "{}", ran.stderr);
    assert!(
        ran.stderr.contains(&format!("/{}", eu.pid())),
        "names the proxy: {}",
        ran.stderr
    );
    let status = env.cp.get("/v1/status").await;
    assert_eq!(status["last_failover"]["ok"], false, "{status}");
}

#[tokio::test]
async fn the_commands_refuse_what_is_unsafe_and_succeed_on_what_is_already_so() {
    let env = Env::start(None).await;
    let _proxy = env.proxy("us-east-1").await;
    env.wait_for_proxies(1).await;
    env.cp
        .command(&["failover", "--to", "us-east-1"])
        .await
        .assert_ok_saying(&["the writer is already in us-east-1; nothing to do"]);
    env.cp
        .command(&["undrain", "eu-west-1"])
        .await
        .assert_ok_saying(&["not drained"]);
    // A timeout too short to see a change through is refused before it
    // is made.
    let short = env
        .cp
        .command(&["drain", "eu-west-1", "--timeout", "1s"])
        .await;
    assert!(
        !short.ok && short.stderr.contains("must be at least 5s"),
        "{short:?}"
    );
    env.cp
        .command(&["drain", "us-east-1"])
        .await
        .assert_ok_saying(&["completed"]);
    env.cp
        .command(&["drain", "eu-west-1"])
        .await
        .assert_ok_saying(&["completed"]);
    let last = env.cp.command(&["drain", "ap-southeast-1"]).await;
    assert!(!last.ok, "{last:?}");
    assert!(
        last.stderr.contains("would leave no healthy region in DNS"),
        "{last:?}"
    );
    env.cp
        .command(&["undrain", "us-east-1"])
        .await
        .assert_ok_saying(&["completed"]);
    // A writer is not moved where Route 53 says its proxies would refuse
    // every write, unless asked in so many words.
    env.route53_fails("ap-southeast-1").await;
    eventually("ap-southeast-1 is down in the table", WAIT, || async {
        env.cp.table().await["regions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "ap-southeast-1" && r["state"] == "down")
    })
    .await;
    let unhealthy = env
        .cp
        .command(&["failover", "--to", "ap-southeast-1"])
        .await;
    assert!(
        !unhealthy.ok
            && unhealthy
                .stderr
                .contains("reports ap-southeast-1 unhealthy"),
        "{unhealthy:?}"
    );
    env.cp
        .command(&[
            "failover",
            "--to",
            "ap-southeast-1",
            "--to-unhealthy",
            "--dry-run",
        ])
        .await
        .assert_ok_saying(&["dry run: planned switchover us-east-1 → ap-southeast-1"]);
    assert_eq!(moto::writer(&env.moto).await.0, "us-east-1");
    // A record removed by someone else is not put back from thin air.
    let r53 = aws_sdk_route53::Client::new(&env.moto.sdk("us-east-1").await);
    moto::change_record(
        &r53,
        &env.fixture.zone_id,
        aws_sdk_route53::types::ChangeAction::Delete,
        moto::latency_record(
            "ap-southeast-1",
            &env.fixture.health_checks["ap-southeast-1"],
        ),
    )
    .await;
    let undrain = env.cp.command(&["undrain", "ap-southeast-1"]).await;
    assert!(!undrain.ok, "{undrain:?}");
    assert!(
        undrain.stderr.contains("none was kept by a drain"),
        "{undrain:?}"
    );
}

/// A writer move to a region whose backends a reporting proxy cannot
/// reach is refused (that proxy would refuse every write), unless asked in
/// so many words; `status` names such proxies, says when the table lets
/// no write through, and shows the control plane's part when AWS cannot
/// be read.
#[tokio::test]
async fn a_move_the_proxies_could_not_follow_is_refused_and_status_says_why() {
    let env = Env::start(None).await;
    let _proxy = env.proxy("us-east-1").await;
    env.wait_for_proxies(1).await;
    env.origins["eu-west-1"].set_health(503);
    eventually(
        "the proxy reports eu-west-1 out of rotation",
        WAIT,
        || async {
            env.cp.get("/v1/proxies").await["proxies"][0]["regions"]
                .as_array()
                .is_some_and(|r| {
                    r.iter()
                        .any(|r| r["name"] == "eu-west-1" && r["in_rotation"] == 0)
                })
        },
    )
    .await;
    let refused = env.cp.command(&["failover", "--to", "eu-west-1"]).await;
    assert!(!refused.ok, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("1 of 1 proxies reporting see no backend of eu-west-1 in rotation"),
        "{refused:?}"
    );
    assert!(refused.stderr.contains("--to-unhealthy"), "{refused:?}");
    let drill = env
        .cp
        .command(&["failover", "--to", "eu-west-1", "--drill"])
        .await;
    assert!(
        !drill.ok && drill.stderr.contains("see no backend of eu-west-1"),
        "{drill:?}"
    );
    env.cp
        .command(&[
            "failover",
            "--to",
            "eu-west-1",
            "--to-unhealthy",
            "--dry-run",
        ])
        .await
        .assert_ok_saying(&["dry run: planned switchover us-east-1 → eu-west-1"]);
    // An unplanned failover (the primary likely lost) goes ahead, warned.
    let unplanned = env
        .cp
        .command(&[
            "failover",
            "--to",
            "eu-west-1",
            "--unplanned",
            "--allow-data-loss",
            "--dry-run",
        ])
        .await;
    unplanned.assert_ok_saying(&["dry run: unplanned failover us-east-1 → eu-west-1"]);
    assert!(
        unplanned
            .stderr
            .contains("see no backend of eu-west-1 in rotation")
            && unplanned.stderr.contains("failing over all the same"),
        "{unplanned:?}"
    );
    assert_eq!(moto::writer(&env.moto).await.0, "us-east-1");
    let status = env.cp.command(&["status"]).await;
    status.assert_ok_saying(&[
        "writes open",
        "1 of them see no backend of eu-west-1 in rotation",
    ]);

    // The primary's region down: the table lets no write through.
    env.route53_fails("us-east-1").await;
    eventually("us-east-1 is down in the table", WAIT, || async {
        env.cp.table().await["regions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "us-east-1" && r["state"] == "down")
    })
    .await;
    let status = env.cp.command(&["status"]).await;
    assert!(
        status
            .stdout
            .contains("writes REFUSED: the primary us-east-1 is down (503 primary_down)"),
        "{status:?}"
    );

    // AWS's global cluster unread: the control plane's part still shows.
    env.moto.fail("DescribeGlobalClusters").await;
    let status = env.cp.command(&["status"]).await;
    assert!(!status.ok, "{status:?}");
    for part in [
        "writer region: unknown",
        "table served: epoch",
        "last failover:",
    ] {
        assert!(status.stdout.contains(part), "{part}: {status:?}");
    }
    assert!(
        status.stderr.contains("DescribeGlobalClusters")
            && status
                .stderr
                .contains("part of the status could not be read: AWS"),
        "{status:?}"
    );
    env.moto.mend("DescribeGlobalClusters").await;
}

/// A notification AWS refuses (an SNS topic that does not exist) is named
/// in one line with AWS's code and message, not the SDK's whole error.
#[tokio::test]
async fn an_undelivered_notification_says_why_in_one_line() {
    let moto = Moto::start().await;
    let fixture = moto::three_regions(&moto).await;
    let config = format!(
        "[source]\nkind = \"aws\"\npoll_interval = \"200ms\"\nendpoint_url = \"{}\"\nhosted_zone_id = \"{}\"\n\
         record_name = \"{RECORD}\"\nglobal_cluster_id = \"{GLOBAL_CLUSTER}\"\nglobal_cluster_region = \"us-east-1\"\n\n\
         [actions]\ntimeout = \"60s\"\nproxy_max_age = \"5s\"\n\n\
         [notify]\nsns_topic_arn = \"arn:aws:sns:us-east-1:123456789012:no-such-topic\"\n",
        moto.endpoint, fixture.zone_id
    );
    let cp = ControlPlane::start_with(None, &config, &moto.env()).await;
    let ran = cp.command(&["drain", "eu-west-1"]).await;
    assert!(ran.ok, "{ran:?}");
    let line = ran
        .stderr
        .lines()
        .find(|l| l.contains("not delivered"))
        .unwrap_or_else(|| panic!("no warning: {ran:?}"));
    assert!(
        line.contains("SNS topic arn:aws:sns:us-east-1:123456789012:no-such-topic: "),
        "{line}"
    );
    assert!(line.contains("NotFound"), "{line}");
    for noise in ["HttpResponse", "headers", "extensions", "<?xml"] {
        assert!(!line.contains(noise), "{noise}: {line}");
    }
}

/// A drained region whose records someone put back by other means is in
/// DNS: its undrain has nothing to do, and removes the copy the drain
/// kept, which a later undrain would otherwise put back over the new
/// records.
#[tokio::test]
async fn an_undrain_of_a_region_put_back_by_hand_removes_the_stale_kept_copy() {
    let env = Env::start(None).await;
    let eu = "eu-west-1";
    let kept = || moto::kept_regions(&env.moto, &env.fixture.zone_id);
    env.drained_and_put_back_by_hand(eu).await;
    assert_eq!(kept().await, [eu]);
    env.cp
        .command(&["undrain", eu, "--dry-run"])
        .await
        .assert_ok_saying(&["an undrain would remove it", "nothing to do"]);
    assert_eq!(kept().await, [eu], "a dry run changes nothing");
    assert!(
        env.cp.history(false)["operations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|op| op["kind"] != "undrain")
    );
    env.cp.command(&["undrain", eu]).await.assert_ok_saying(&[
        "no longer applies: removed",
        "latency records are in place (not drained); nothing to do",
    ]);
    assert!(kept().await.is_empty());
    // The history keeps what the removed copy held.
    let history = env.cp.history(false);
    let removal = history["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|op| op["kind"] == "undrain")
        .unwrap_or_else(|| panic!("no undrain in {history:#}"));
    assert!(
        removal["summary"]
            .as_str()
            .unwrap()
            .contains("the copy of its records an earlier drain kept is removed"),
        "{removal:#}"
    );
    assert_eq!(removal["ok"], true, "{removal:#}");
    assert_eq!(removal["finished"], true, "{removal:#}");
    let step = &removal["timeline"][0];
    assert_eq!(step["name"], "kept copy removed", "{removal:#}");
    assert!(
        step["detail"]
            .as_str()
            .unwrap()
            .contains("set identifier eu-west-1, held: \"edgeroute-v1\" \""),
        "{removal:#}"
    );
}

/// A drain of a region put back by hand since an earlier drain replaces
/// that drain's kept copy, and what the copy held goes to the history file
/// first: a record put back only in part is never lost with it.
#[tokio::test]
async fn a_second_drain_keeps_the_copy_it_replaces_in_the_history() {
    let env = Env::start(None).await;
    let eu = "eu-west-1";
    env.drained_and_put_back_by_hand(eu).await;
    // The control plane has read it back: the next drain is a change.
    eventually("eu-west-1 is active again", WAIT, || async {
        region(&env.cp.table().await, eu)["state"] == "active"
    })
    .await;
    env.cp
        .command(&["drain", eu])
        .await
        .assert_ok_saying(&["completed"]);
    assert_eq!(
        moto::kept_regions(&env.moto, &env.fixture.zone_id).await,
        [eu]
    );
    let history = env.cp.history(false);
    let noted = history["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|op| op["timeline"][0]["name"] == "kept copy replaced")
        .unwrap_or_else(|| panic!("no kept copy in {history:#}"));
    assert_eq!(noted["kind"], "drain", "{noted:#}");
    assert_eq!(noted["ok"], true, "{noted:#}");
    assert!(
        noted["timeline"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("set identifier eu-west-1, held: \"edgeroute-v1\" \""),
        "{noted:#}"
    );
    // And the region comes back from the new copy.
    env.cp
        .command(&["undrain", eu])
        .await
        .assert_ok_saying(&["completed"]);
    assert_eq!(
        moto::record_types(&env.moto, &env.fixture.zone_id, eu).await,
        ["A"]
    );
}

/// A weighted region's drain keeps its weight in Route 53 too: drained
/// from one machine, it is undrained from another (with a history file
/// that knows nothing of it) to the weight it had, not to the weight most
/// regions have.
#[tokio::test]
async fn a_weighted_drain_keeps_its_weight_where_any_command_line_finds_it() {
    let env = Env::start(None).await;
    let _proxy = env.proxy("us-east-1").await;
    env.wait_for_proxies(1).await;
    let ap = "ap-southeast-1";
    env.weighted(ap, &[(RrType::A, 40)]).await;
    let weight_of_ap = || async {
        env.cp.table().await["regions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == ap)
            .map(|r| r["weight"].clone())
    };
    eventually("ap-southeast-1 at weight 40", WAIT, || async {
        weight_of_ap().await == Some(40.into())
    })
    .await;
    let kept = || moto::kept_regions(&env.moto, &env.fixture.zone_id);
    env.cp
        .command_elsewhere(&["drain", ap])
        .await
        .assert_ok_saying(&["Route 53 weight 40 → 0", "draining, weight 0"]);
    assert_eq!(kept().await, [ap]);
    env.cp.command(&["undrain", ap]).await.assert_ok_saying(&[
        "Route 53 weight 0 → 40 (its weight before the drain)",
        "active, weight 40",
    ]);
    assert!(
        kept().await.is_empty(),
        "the kept weight is gone with the drain"
    );
    assert_eq!(weight_of_ap().await, Some(40.into()));
}

/// Two drains at once, of the two regions left in DNS, each judged safe
/// on a read made before the other's change: Route 53 takes one and
/// refuses the other whole, since each batch asks for the other region's
/// records to be as read. A region stays in DNS.
#[tokio::test]
async fn two_drains_at_once_cannot_take_the_last_regions_out_of_dns() {
    let env = Env::start(None).await;
    let (eu, ap) = env.drain_us_then_the_others_at_once().await;
    let refused = if eu.ok { &ap } else { &eu };
    let said = format!("{}{}", refused.stdout, refused.stderr);
    assert!(
        said.contains("InvalidChangeBatch") && said.contains("nothing changed"),
        "{said}"
    );
    assert_eq!(
        moto::kept_regions(&env.moto, &env.fixture.zone_id)
            .await
            .len(),
        2,
        "us-east-1 and one other region are drained, not all three"
    );
}

/// Two weighted drains at once: the one Route 53 refuses leaves no weight
/// kept in its history file (nothing was drained), and each history entry
/// says who ran it and has an id of its own.
#[tokio::test]
async fn a_refused_weighted_drain_keeps_no_weight_and_each_entry_names_its_operator() {
    let env = Env::start(None).await;
    for r in REGIONS {
        env.weighted(r, &[(RrType::A, 40)]).await;
    }
    eventually("every region weighted", WAIT, || async {
        env.cp.table().await["regions"]
            .as_array()
            .is_some_and(|rs| rs.len() == 3 && rs.iter().all(|r| r["weight"] == 40))
    })
    .await;
    let (eu, _) = env.drain_us_then_the_others_at_once().await;
    let (refused, elsewhere) = if eu.ok {
        ("ap-southeast-1", true)
    } else {
        ("eu-west-1", false)
    };
    let history = env.cp.history(elsewhere);
    let kept = &history["weights_before_drain"];
    assert!(kept.get(refused).is_none(), "{history:#}");
    let main = env.cp.history(false);
    assert_eq!(main["weights_before_drain"]["us-east-1"], 40, "{main:#}");

    let mut ids = std::collections::HashSet::new();
    for h in [main, env.cp.history(true)] {
        for op in h["operations"].as_array().unwrap() {
            assert!(
                op["operator"].as_str().is_some_and(|o| o.contains('@')),
                "{op:#}"
            );
            assert!(ids.insert(op["id"].as_str().unwrap().to_owned()), "{op:#}");
        }
    }
    assert_eq!(ids.len(), 3, "three drains recorded");
}

/// A writer move is planned from a read of AWS that the replication-lag
/// reads follow, seconds later at times; should the writer move in
/// between (another operator's switchover), the command reads it again
/// just before its request and asks for nothing, where AWS would have
/// moved the new writer on.
#[tokio::test]
async fn a_move_planned_before_the_writer_moved_asks_aws_for_nothing() {
    const LAG_READS: &str = "GetMetricStatistics/AWS/RDS";
    // The control plane reads no lags; the command, run elsewhere, reads
    // them and waits for every answer.
    let env = Env::start_with(None, "lag_metric = false").await;
    let config = env
        .cp
        .config()
        .replace("lag_metric = false", "lag_metric = true");
    env.moto.hold(LAG_READS).await;
    let (ran, ()) = tokio::join!(
        env.cp
            .command_elsewhere_with(&config, &["failover", "--to", "ap-southeast-1"]),
        async {
            // The command reads both secondaries' lags side by side once
            // it has read the writer: two held means it has.
            eventually("the command reads the lags", WAIT, || async {
                env.moto.held(LAG_READS).await == 2
            })
            .await;
            let rds = aws_sdk_rds::Client::new(&env.moto.sdk("us-east-1").await);
            rds.switchover_global_cluster()
                .global_cluster_identifier(GLOBAL_CLUSTER)
                .target_db_cluster_identifier(&env.fixture.clusters["eu-west-1"].0)
                .send()
                .await
                .expect("another operator's switchover");
            eventually("the writer is in eu-west-1", WAIT, || async {
                moto::writer(&env.moto).await == ("eu-west-1".to_owned(), false)
            })
            .await;
            env.moto.release(LAG_READS).await;
        }
    );
    assert!(!ran.ok, "{ran:?}");
    assert!(
        ran.stderr
            .contains("the writer moved to eu-west-1 since the state was read; nothing requested"),
        "{ran:?}"
    );
    assert_eq!(
        moto::writer(&env.moto).await,
        ("eu-west-1".to_owned(), false)
    );
}

/// A writer change AWS took, whose answer was lost: the SDK sends it
/// again, and AWS refuses the second ("already switching-over"). The
/// command reads that the writer is on its way and follows it, rather
/// than report a refusal (nothing changed) of a change that is being made.
#[tokio::test]
async fn a_writer_change_whose_answer_was_lost_is_followed() {
    let env = Env::start(None).await;
    env.moto.lose_answer("SwitchoverGlobalCluster").await;
    env.cp
        .command(&["failover", "--to", "eu-west-1"])
        .await
        .assert_ok_saying(&[
            "answered with an error",
            "AWS reports the writer in eu-west-1",
        ]);
    assert_eq!(
        moto::writer(&env.moto).await,
        ("eu-west-1".to_owned(), false)
    );
}

/// A drain Route 53 took, whose answer was lost: the SDK sends the batch
/// again, and Route 53 refuses it (the records to delete are gone). The
/// command reads that the region is out of DNS and goes on as accepted.
#[tokio::test]
async fn a_drain_whose_answer_was_lost_is_followed() {
    let env = Env::start(None).await;
    env.moto.lose_answer("ChangeResourceRecordSets").await;
    env.cp
        .command(&["drain", "eu-west-1"])
        .await
        .assert_ok_saying(&["but Route 53 shows the change made", "completed"]);
    assert_eq!(
        moto::kept_regions(&env.moto, &env.fixture.zone_id).await,
        ["eu-west-1"]
    );
}

/// A drained region's health is read from the health checks of its kept
/// records: out of DNS, a region Route 53 reports unhealthy is still
/// refused as the writer's new home.
#[tokio::test]
async fn a_drained_region_route53_reports_unhealthy_is_refused_as_the_writers_home() {
    let ap = "ap-southeast-1";
    let env = Env::start(None).await;
    env.cp
        .command(&["drain", ap])
        .await
        .assert_ok_saying(&["completed"]);
    env.route53_fails(ap).await;
    eventually("the table shows ap-southeast-1 down", WAIT, || async {
        env.cp.table().await["regions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == ap && r["state"] == "down")
    })
    .await;
    let ran = env.cp.command(&["failover", "--to", ap]).await;
    assert!(!ran.ok, "{ran:?}");
    // The refusal and `status` say which check, and which of its two
    // readings, found the region unhealthy.
    let check = &env.fixture.health_checks[ap];
    for said in [
        "Route 53 reports ap-southeast-1 unhealthy (health check ".to_owned(),
        format!("health check {check}: 0 of "),
        " Route 53 checkers report success, and CloudWatch HealthCheckStatus minimum 0 in the minute from ".to_owned(),
    ] {
        assert!(ran.stderr.contains(&said), "{said:?} in {ran:?}");
    }
    let status = env.cp.command(&["status"]).await;
    let line = status
        .stdout
        .lines()
        .skip_while(|l| !l.trim_start().starts_with(ap))
        .nth(1)
        .unwrap_or_default();
    assert!(
        line.trim_start()
            .starts_with(&format!("unhealthy by health check {check}: 0 of ")),
        "{status:?}"
    );
    assert_eq!(moto::writer(&env.moto).await.0, "us-east-1");
}

/// Records of one region that disagree (an A at 40, an AAAA at 0, as a
/// hand edit leaves them) are given one weight in one batch; when the
/// table already showed that weight, no newer table comes, and the
/// command is done at once rather than waiting out its timeout.
#[tokio::test]
async fn an_undrain_to_the_weight_the_table_shows_completes() {
    let env = Env::start(None).await;
    let _proxy = env.proxy("us-east-1").await;
    env.wait_for_proxies(1).await;
    let ap = "ap-southeast-1";
    env.weighted(ap, &[(RrType::A, 40), (RrType::Aaaa, 0)])
        .await;
    eventually("ap-southeast-1 at weight 40", WAIT, || async {
        env.cp.table().await["regions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == ap && r["weight"] == 40)
    })
    .await;
    let ran = env
        .cp
        .command(&["undrain", ap, "--weight", "40", "--timeout", "20s"])
        .await;
    ran.assert_ok_saying(&["Route 53 weight 40 → 40", "completed"]);
}

//! The control plane builds the table from its source and serves it; proxies
//! long-poll it, follow it, and keep their last table when it is gone.

use edgeroute_tests::control::{ControlPlane, TOKEN, certificate_der, region, topology};
use edgeroute_tests::{Origin, Proxy, ProxyBuilder, client, eventually, half_head_is_closed};
use std::time::{Duration, Instant};

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";
const AP: &str = "ap-southeast-1";
const WAIT: Duration = Duration::from_secs(15);

fn all_up() -> [(&'static str, u32, bool); 3] {
    [(US, 100, true), (EU, 100, true), (AP, 100, true)]
}

async fn proxy_on(cp: &ControlPlane, us: &Origin, eu: &Origin, ap: &Origin) -> Proxy {
    proxy_with(cp, us, eu, ap, "wait = \"5s\"\nmax_backoff = \"500ms\"\n").await
}

/// A proxy on `cp` with these extra `[table]` options.
async fn proxy_with(
    cp: &ControlPlane,
    us: &Origin,
    eu: &Origin,
    ap: &Origin,
    table_options: &str,
) -> Proxy {
    proxy_at(&cp.table_source(), us, eu, ap, table_options).await
}

/// A proxy with this `[table]` source and these extra options.
async fn proxy_at(source: &str, us: &Origin, eu: &Origin, ap: &Origin, options: &str) -> Proxy {
    ProxyBuilder::new(US)
        .region(US, &[us.addr])
        .region(EU, &[eu.addr])
        .region(AP, &[ap.addr])
        .extra(&format!("[table]\n{source}{options}"))
        .without_table_file()
        .start()
        .await
}

/// A proxy with this `[table]` section that the control plane does not
/// serve: once its log says `says`, and it is not ready (no table).
async fn refused_proxy(
    (us, eu, ap): (&Origin, &Origin, &Origin),
    table: &str,
    says: &str,
) -> Proxy {
    let proxy = ProxyBuilder::new(US)
        .region(US, &[us.addr])
        .region(EU, &[eu.addr])
        .region(AP, &[ap.addr])
        .extra(&format!("[table]\n{table}max_backoff = \"200ms\"\n"))
        .without_table_file()
        .start_live()
        .await;
    eventually(&format!("the proxy logs {says:?}"), WAIT, || async {
        proxy.log().contains(says)
    })
    .await;
    let ready = client()
        .get(proxy.admin_url("/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "ready without a table");
    proxy
}

/// A table refused before any is in force is logged as such: with what
/// that leaves (no table, requests refused), and no epoch or version said
/// to be kept.
#[tokio::test]
async fn a_table_refused_before_any_is_in_force_keeps_nothing() {
    let (us, eu, ap) = origins().await;
    let cp = ControlPlane::start(&topology(
        Some("sa-east-1"),
        false,
        &[
            (US, 100, true),
            (EU, 100, true),
            (AP, 100, true),
            ("sa-east-1", 100, true),
        ],
    ))
    .await;
    let proxy = refused_proxy(
        (&us, &eu, &ap),
        &cp.table_source(),
        "routing table rejected",
    )
    .await;
    let log = proxy.log();
    let line = log
        .lines()
        .find(|l| l.contains("routing table rejected"))
        .unwrap_or_default();
    assert!(line.contains("sa-east-1"), "{line}");
    assert!(line.contains("no table yet"), "{line}");
    assert!(!line.contains("keeping_"), "{line}");
    // With no table, the table's age counts from the start: an alert on
    // it fires for a proxy that never got one.
    eventually("the age without a table grows", WAIT, || async {
        proxy.metric("edgeroute_table_age_seconds").await >= 1.0
    })
    .await;
}

/// A token rotated in place (a Kubernetes secret updated) takes effect
/// without a restart: the control plane and the proxy read their token
/// files again every 10 s, and the control plane accepts the token before
/// the change for a while, so that clients not yet given the new one are
/// not locked out.
#[tokio::test]
async fn a_token_rotated_in_its_file_takes_effect_without_a_restart() {
    let (us, eu, ap) = origins().await;
    let cp = ControlPlane::start(&topology(Some(US), false, &all_up())).await;
    let proxy = proxy_on(&cp, &us, &eu, &ap).await;
    served_and_reported(&cp, &proxy).await;
    let old = std::fs::read_to_string(&cp.token_path).unwrap();
    let new = "rotated-token-0123456789abcdef";
    std::fs::write(&cp.token_path, format!("{new}\n")).unwrap();
    let status_with = |token: &str| {
        let req = client()
            .get(cp.url("/v1/status"))
            .bearer_auth(token.trim().to_owned());
        async move { req.send().await.map_or(0, |r| r.status().as_u16()) }
    };
    let rotation = Duration::from_secs(30);
    eventually(
        "the control plane takes the new token",
        rotation,
        || async { status_with(new).await == 200 },
    )
    .await;
    assert_eq!(
        status_with(&old).await,
        200,
        "the token before, for a while"
    );
    assert_eq!(status_with("not-the-token-at-all").await, 401);
    // Refusals are logged with who was refused, the token never.
    eventually("the refusal is logged", WAIT, || async {
        cp.log().lines().any(|l| {
            l.contains("a request without the token was refused")
                && l.contains("/v1/status")
                && l.contains("client=127.")
        })
    })
    .await;
    assert!(!cp.log().contains("not-the-token-at-all"));
    // The proxy reads the same file again, and its reports go on.
    eventually("the proxy takes the new token", rotation, || async {
        proxy.log().contains("a new token is in force")
    })
    .await;
    let reports = || cp.metric("edgeroute_control_proxy_reports_total{result=\"accepted\"}");
    let before = reports().await;
    eventually("reports go on with the new token", rotation, || async {
        reports().await > before
    })
    .await;
    assert!(!cp.log().contains(new), "the token is never logged");
    assert!(!proxy.log().contains(new), "the token is never logged");
}

/// A proxy whose token file changes before the control plane's (each pod
/// gets an updated secret at its own time) offers the token before the
/// change when the new one is refused: its reports go on meanwhile.
#[tokio::test]
async fn a_proxy_given_the_new_token_first_goes_on_with_the_one_before() {
    let (us, eu, ap) = origins().await;
    let cp = ControlPlane::start(&topology(Some(US), false, &all_up())).await;
    let dir = tempfile::tempdir().unwrap();
    let own = dir.path().join("token");
    std::fs::copy(&cp.token_path, &own).unwrap();
    let proxy = ProxyBuilder::new(US)
        .region(US, &[us.addr])
        .region(EU, &[eu.addr])
        .region(AP, &[ap.addr])
        .extra(&format!(
            "[table]\nsource = \"control\"\nurl = \"{}\"\ntoken_file = {own:?}\nreport_interval = \"1s\"\nmax_backoff = \"500ms\"\n",
            cp.url("").trim_end_matches('/')
        ))
        .without_table_file()
        .start()
        .await;
    served_and_reported(&cp, &proxy).await;
    std::fs::write(&own, "rotated-token-0123456789abcdef\n").unwrap();
    let rotation = Duration::from_secs(30);
    eventually("the proxy takes the new token", rotation, || async {
        proxy.log().contains("a new token is in force")
    })
    .await;
    let reports = || cp.metric("edgeroute_control_proxy_reports_total{result=\"accepted\"}");
    let before = reports().await;
    eventually("reports go on with the token before", rotation, || async {
        reports().await >= before + 2.0
    })
    .await;
    assert!(
        cp.metric("edgeroute_control_requests_total{status=\"401\"}")
            .await
            >= 1.0,
        "the new token was offered first"
    );
}

/// A proxy reports only once it has probed every backend: before, it
/// would call each region whose backends it has not heard from yet
/// unhealthy, and the new proxies of a rolling restart could outvote the
/// rest on the primary's health.
#[tokio::test]
async fn a_proxy_reports_once_its_first_probes_are_in() {
    let (us, eu, ap) = origins().await;
    // The local region's probes take 1.5 s.
    us.set_delay(Duration::from_millis(1500));
    let cp = ControlPlane::start(&topology(Some(US), false, &all_up())).await;
    let _proxy = ProxyBuilder::new(US)
        .region(US, &[us.addr])
        .region(EU, &[eu.addr])
        .region(AP, &[ap.addr])
        .extra(&format!(
            "[table]\n{}wait = \"5s\"\nreport_interval = \"200ms\"\n\n\
             [health]\ninterval = \"4s\"\ntimeout = \"3s\"\njitter = \"0ms\"\n",
            cp.table_source()
        ))
        .without_table_file()
        .start_live()
        .await;
    let started = Instant::now();
    let first = loop {
        let listed = cp.get("/v1/proxies").await;
        if let Some(p) = listed["proxies"].as_array().and_then(|p| p.first()) {
            break p.clone();
        }
        assert!(started.elapsed() < WAIT, "no report within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for name in [US, EU, AP] {
        assert_eq!(region(&first, name)["in_rotation"], 1, "{name}: {first}");
    }
}

/// `proxy` routes on `cp`'s table (US writes), its report reaches `cp`,
/// and the `status` command counts it.
async fn served_and_reported(cp: &ControlPlane, proxy: &Proxy) {
    assert_eq!(proxy.write_region().await, US);
    eventually("the proxy's report arrives", WAIT, || async {
        cp.get("/v1/proxies").await["proxies"]
            .as_array()
            .is_some_and(|p| p.len() == 1)
    })
    .await;
    let ran = cp.command(&["status"]).await;
    assert!(ran.ok, "{ran:?}");
    assert!(ran.stdout.contains("proxies reporting: 1 ("), "{ran:?}");
}

/// An origin per region.
async fn origins() -> (Origin, Origin, Origin) {
    (
        Origin::start(US).await,
        Origin::start(EU).await,
        Origin::start(AP).await,
    )
}

#[tokio::test]
async fn the_proxy_follows_the_control_plane_table() {
    let (us, eu, ap) = origins().await;
    let cp = ControlPlane::start(&topology(Some(US), false, &all_up())).await;
    let proxy = proxy_on(&cp, &us, &eu, &ap).await;
    assert_eq!(proxy.write_region().await, US);
    let first = cp.table().await;

    // The writer moves: a new epoch, and the proxy sends writes to it.
    let changed_at = Instant::now();
    cp.set_topology(&topology(Some(EU), false, &all_up()));
    eventually("writes follow the new primary", WAIT, || async {
        proxy.write_region().await == EU
    })
    .await;
    eprintln!("primary change to proxy swap: {:?}", changed_at.elapsed());
    let second = cp.table().await;
    assert!(
        second["epoch"].as_u64() > first["epoch"].as_u64(),
        "{first} -> {second}"
    );

    // Weight 0 drains a region; a failing health check takes it down.
    cp.set_topology(&topology(
        Some(EU),
        false,
        &[(US, 0, true), (EU, 100, true), (AP, 100, false)],
    ));
    eventually("us-east-1 draining, ap-southeast-1 down", WAIT, || async {
        let t = proxy.routing().await;
        t["regions"][0]["state"] == "draining" && t["regions"][2]["state"] == "down"
    })
    .await;
    let read = client().get(proxy.url("/items")).send().await.unwrap();
    assert_eq!(
        read.headers()["x-edgeroute-region"],
        EU,
        "reads leave the draining region"
    );

    // Failover in progress: writes are held.
    cp.set_topology(&topology(Some(EU), true, &all_up()));
    eventually("writes are held", WAIT, || async {
        proxy.write_region().await == "refused 503 Service Unavailable"
    })
    .await;
}

#[tokio::test]
async fn with_the_control_plane_gone_the_proxy_keeps_its_last_table() {
    let (us, eu, ap) = origins().await;
    let mut cp = ControlPlane::start(&topology(Some(AP), false, &all_up())).await;
    let proxy = proxy_on(&cp, &us, &eu, &ap).await;
    assert_eq!(proxy.write_region().await, AP);
    cp.kill();
    eventually(
        "the proxy notices the control plane is gone",
        WAIT,
        || async { proxy.metric("edgeroute_control_errors_total").await >= 2.0 },
    )
    .await;
    for _ in 0..5 {
        assert_eq!(proxy.write_region().await, AP);
        assert_eq!(
            client()
                .get(proxy.url("/items"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    assert_eq!(
        client()
            .get(proxy.admin_url("/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(proxy.metric("edgeroute_table_age_seconds").await >= 0.0);
}

/// Two control plane replicas of one source behind one address (a load
/// balancer of connections), the second started a second later with a
/// higher first epoch: the proxy takes the higher numbering and refuses
/// nothing; its requests reach both, and both come to serve one table. A
/// change one replica reads first is taken from it, and nothing of the
/// other's is refused. The replica of the higher numbering then goes
/// away, and a change the other reads still reaches the proxy.
#[tokio::test]
async fn replicas_behind_one_address_come_to_serve_one_table() {
    use edgeroute_tests::balancer::Balancer;
    let (us, eu, ap) = origins().await;
    let first = topology(Some(US), false, &all_up());
    let a = ControlPlane::start(&first).await;
    let a_epoch = a.table().await["epoch"].as_u64().expect("an epoch");
    eventually(
        "the clock passes the first replica's epoch",
        WAIT,
        || async {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.unwrap().as_secs() > a_epoch
        },
    )
    .await;
    let mut b = ControlPlane::start(&first).await;
    let b_epoch = b.table().await["epoch"].as_u64().expect("an epoch");
    assert!(b_epoch > a_epoch, "{b_epoch} after {a_epoch}");
    let lb = Balancer::start(&[a.addr, b.addr]).await;
    let source = a
        .table_source()
        .replace(&a.url(""), &format!("http://{}", lb.addr));
    let options = "wait = \"5s\"\nreport_interval = \"200ms\"\n";
    let proxy = proxy_at(&source, &us, &eu, &ap, options).await;
    eventually(
        "both replicas serve the table the proxy routes on",
        WAIT,
        || async {
            let (ta, tb) = (a.table().await, b.table().await);
            ta == tb && proxy.routing().await["table"]["epoch"] == ta["epoch"]
        },
    )
    .await;
    assert_eq!(a.table().await["epoch"], b_epoch, "the higher numbering");
    // A connection per table request: each replica was asked more than
    // once (a kept connection for the table and one for the reports would
    // make two in all).
    eventually("each replica has been asked twice", WAIT * 2, || async {
        lb.relayed(0) >= 2 && lb.relayed(1) >= 2
    })
    .await;
    assert_eq!(stale_rejections(&proxy).await, [0.0, 0.0]);

    // A change one replica reads before the other: the proxy takes it
    // from the first, and refuses nothing of the other's.
    let routed = &proxy;
    let state_of = |i: usize| async move { routed.routing().await["regions"][i]["state"].clone() };
    let eu_drained = topology(
        Some(US),
        false,
        &[(US, 100, true), (EU, 0, true), (AP, 100, true)],
    );
    b.set_topology(&eu_drained);
    eventually(
        "the proxy takes the change from the replica that read it",
        WAIT,
        || async { state_of(1).await == "draining" },
    )
    .await;
    a.set_topology(&eu_drained);
    eventually("both replicas serve one table again", WAIT, || async {
        a.table().await == b.table().await
    })
    .await;
    assert_eq!(stale_rejections(&proxy).await, [0.0, 0.0]);

    b.kill();
    a.set_topology(&topology(
        Some(US),
        false,
        &[(US, 100, true), (EU, 0, true), (AP, 0, true)],
    ));
    eventually(
        "the change the remaining replica read reaches the proxy",
        WAIT,
        || async { state_of(2).await == "draining" },
    )
    .await;
    assert_eq!(stale_rejections(&proxy).await, [0.0, 0.0]);
    assert_eq!(proxy.routing().await["table"]["epoch"], b_epoch);
}

/// A request naming a table numbered higher than the replica's own,
/// which says something else (a change another replica has read and this
/// one has not yet), waits for this replica's next table rather than
/// being answered with the one before the change, which the proxy would
/// refuse.
#[tokio::test]
async fn a_request_naming_a_newer_table_waits_for_the_replica_to_read_the_change() {
    // Read every 2 s: the change below is read after the request came.
    let source = "[source]\nkind = \"file\"\npath = \"topology.json\"\npoll_interval = \"2s\"\n";
    let cp =
        ControlPlane::start_with(Some(&topology(Some(US), false, &all_up())), source, &[]).await;
    let own = cp.table().await;
    let (epoch, version) = (
        own["epoch"].as_u64().unwrap(),
        own["version"].as_u64().unwrap(),
    );
    let newer = format!("\"{epoch}-{}-0123456789abcdef\"", version + 500);
    let asked = cp
        .client()
        .get(cp.url("/v1/table?wait=30s"))
        .bearer_auth(TOKEN)
        .header("if-none-match", newer)
        .send();
    let drained = topology(
        Some(US),
        false,
        &[(US, 100, true), (EU, 0, true), (AP, 100, true)],
    );
    cp.set_topology(&drained);
    let answer = asked.await.unwrap();
    assert_eq!(answer.status(), 200);
    let table: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(
        region(&table, EU)["state"],
        "draining",
        "the table after the change: {table}"
    );
}

/// The proxy's tables refused as `stale_epoch` and as `stale_version`.
async fn stale_rejections(proxy: &Proxy) -> [f64; 2] {
    let text = proxy.metrics().await;
    ["stale_epoch", "stale_version"].map(|reason| {
        edgeroute_tests::sample(
            &text,
            &format!("edgeroute_table_rejections_total{{reason=\"{reason}\"}}"),
        )
    })
}

/// A table request naming a higher numbering of the replica's own table
/// (another replica's, as a proxy routing on it names it) is taken up:
/// the request waits as a long poll does and ends in a 304 for that very
/// tag, and the table is served under that numbering from then on; a
/// report naming one is taken up too. One more than two seconds ahead of
/// the clock is not taken, and is logged.
#[tokio::test]
async fn a_replica_takes_up_the_numbering_a_table_request_names() {
    let cp = ControlPlane::start(&topology(Some(US), false, &all_up())).await;
    let first = cp
        .client()
        .get(cp.url("/v1/table"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let tag = first.headers()["etag"].to_str().unwrap().to_owned();
    let own: serde_json::Value = first.json().await.unwrap();
    let digest = tag.trim_matches('"').rsplit('-').next().unwrap().to_owned();
    let (epoch, version) = (
        own["epoch"].as_u64().unwrap(),
        own["version"].as_u64().unwrap(),
    );
    let ask = |tag: String| {
        cp.client()
            .get(cp.url("/v1/table?wait=2s"))
            .bearer_auth(TOKEN)
            .header("if-none-match", tag)
            .send()
    };
    let higher = format!("W/\"{}-{}-{digest}\"", epoch + 1, version + 1);
    let answer = ask(higher.clone()).await.unwrap();
    assert_eq!(answer.status(), 304);
    assert_eq!(
        answer.headers()["etag"],
        higher.trim_start_matches("W/"),
        "the numbering asked about"
    );
    let now = cp.table().await;
    assert_eq!(
        (now["epoch"].as_u64(), now["version"].as_u64()),
        (Some(epoch + 1), Some(version + 1))
    );
    let taken_up = |by: &str| {
        cp.log().lines().any(|l| {
            l.contains("serving the same table under the higher numbering")
                && l.contains(&format!("named_by={by}"))
        })
    };
    assert!(taken_up("\"a table request\""), "{}", cp.log());

    // A proxy's report names it as well.
    let report = serde_json::json!({
        "id": "proxy-a/1", "region": US, "epoch": epoch + 2, "version": version + 2,
        "routing": digest, "regions": [],
    });
    let posted = cp
        .client()
        .post(cp.url("/v1/report"))
        .bearer_auth(TOKEN)
        .json(&report)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 204);
    eventually("the report's numbering is taken up", WAIT, || async {
        cp.table().await["epoch"].as_u64() == Some(epoch + 2)
    })
    .await;
    assert!(
        taken_up("\"the report of proxy proxy-a/1\""),
        "{}",
        cp.log()
    );

    let ahead = format!("\"{}-{}-{digest}\"", epoch + 3600, version + 1);
    let answer = ask(ahead).await.unwrap();
    assert_eq!(answer.status(), 200, "its own table, the wait over");
    assert_eq!(cp.table().await["epoch"].as_u64(), Some(epoch + 2));
    eventually(
        "the numbering ahead of the clock is logged",
        WAIT,
        || async {
            cp.log()
                .contains("more than two seconds ahead of this control plane's clock: not taken")
        },
    )
    .await;
}

/// A source that cannot be read is logged once per run of failures (each
/// one is counted), with what is served meanwhile, and its mending once.
#[tokio::test]
async fn a_source_failing_again_and_again_is_logged_once_per_run() {
    let cp = ControlPlane::start(&topology(Some(US), false, &all_up())).await;
    edgeroute_tests::proxy::write_atomically(&cp.topology_path, "{ not a topology");
    let failures = "edgeroute_control_source_errors_total{api=\"parse\",source=\"file\"}";
    eventually("three failed reads", WAIT, || async {
        cp.metric(failures).await >= 3.0
    })
    .await;
    let log = cp.log();
    assert_eq!(
        log.matches("source read failed; serving the last good table")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("epoch=1"), "{log}");
    cp.set_topology(&topology(Some(US), false, &all_up()));
    eventually("the source is read again", WAIT, || async {
        cp.log().contains("source read again")
    })
    .await;
    // A new run is told again.
    edgeroute_tests::proxy::write_atomically(&cp.topology_path, "[]");
    eventually("the next run is logged", WAIT, || async {
        cp.log()
            .matches("source read failed; serving the last good table")
            .count()
            == 2
    })
    .await;
}

/// A proxy whose control plane cannot be reached has no table: it is not
/// ready and says why, but it is live (a restart would not help), and
/// its traffic listener's `/health` says the region cannot serve.
#[tokio::test]
async fn a_proxy_with_no_table_yet_is_live_but_not_ready() {
    let us = Origin::start(US).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    // Nothing listens there.
    let nowhere = edgeroute_tests::proxy::free_addr();
    let proxy = ProxyBuilder::new(US)
        .region(US, &[us.addr])
        .extra(&format!(
            "[table]\nsource = \"control\"\nurl = \"http://{nowhere}\"\ntoken_file = {token:?}\nmax_backoff = \"200ms\"\n"
        ))
        .without_table_file()
        .start_live()
        .await;
    let admin = |path: &'static str| {
        let url = proxy.admin_url(path);
        async move {
            let resp = client().get(url).send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (status, body) = admin("/ready").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["reason"], "no_routing_table");
    assert_eq!(admin("/health/read").await.0, 503);
    let (status, body) = admin("/live").await;
    assert_eq!((status, &body["live"]), (200, &serde_json::json!(true)));
    let health = client().get(proxy.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    // One word for one cause, on every endpoint.
    let body: serde_json::Value = health.json().await.unwrap();
    assert_eq!(body["reason"], "no_routing_table", "{body}");
}

/// Each path takes its methods: a health checker's `HEAD /health` is
/// answered as `GET`, another method gets 405 with the methods the path
/// takes in `Allow`, and a path that is none of the server's gets 404
/// whatever the method.
#[tokio::test]
async fn the_table_server_answers_each_method_as_its_path_takes_it() {
    let cp = ControlPlane::start(&topology(Some(US), false, &all_up())).await;
    let c = client();
    let head = c.head(cp.url("/health")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.bytes().await.unwrap().len(), 0);
    let delete = c
        .delete(cp.url("/v1/table"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 405);
    assert_eq!(delete.headers()["allow"], "GET, HEAD");
    let get_report = c.get(cp.url("/v1/report")).send().await.unwrap();
    assert_eq!(get_report.status(), 405);
    assert_eq!(get_report.headers()["allow"], "POST");
    for method in [http::Method::GET, http::Method::POST] {
        let nowhere = c
            .request(method.clone(), cp.url("/nope"))
            .send()
            .await
            .unwrap();
        assert_eq!(nowhere.status(), 404, "{method}");
    }
}

#[tokio::test]
async fn table_requests_need_the_token_and_support_etags_and_long_polls() {
    let cp = ControlPlane::start(&topology(Some(US), false, &all_up())).await;
    let c = client();
    let resp = c.get(cp.url("/v1/table")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        c.get(cp.url("/v1/table"))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        c.get(cp.url("/metrics")).send().await.unwrap().status(),
        401
    );

    let resp = c
        .get(cp.url("/v1/table"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let etag = resp.headers()["etag"].clone();
    let table: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(table["primary_region"], US);
    assert_eq!(table["regions"].as_array().unwrap().len(), 3);

    // The tag alone, weak, in a list, or `*` (RFC 9110 §13.1.2).
    let tag = etag.to_str().unwrap();
    for (condition, status) in [
        (tag.to_owned(), 304),
        (format!("W/{tag}"), 304),
        (format!("\"other\", {tag}"), 304),
        ("*".to_owned(), 304),
        ("\"other\"".to_owned(), 200),
    ] {
        let resp = c
            .get(cp.url("/v1/table"))
            .bearer_auth(TOKEN)
            .header("if-none-match", &condition)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "if-none-match: {condition}");
    }

    // A wait that is not a duration is named, not taken for no wait.
    for bad in ["-1", "abc", "99999999999999999999", ""] {
        let resp = c
            .get(cp.url(&format!("/v1/table?wait={bad}")))
            .bearer_auth(TOKEN)
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "wait={bad}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "bad_wait", "wait={bad}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("got \"{bad}\"")), "{message}");
    }

    // A long-poll answers as soon as the table changes.
    let poll = {
        let (c, url, etag) = (c.clone(), cp.url("/v1/table?wait=20s"), etag.clone());
        tokio::spawn(async move {
            c.get(url)
                .bearer_auth(TOKEN)
                .header("if-none-match", etag)
                .send()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !poll.is_finished(),
        "the long-poll waits while nothing changes"
    );
    cp.set_topology(&topology(
        Some(US),
        false,
        &[(US, 100, true), (EU, 0, true), (AP, 100, true)],
    ));
    let resp = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_ne!(resp.headers()["etag"], etag);
    let table: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(region(&table, EU)["state"], "draining");
    assert_eq!(c.get(cp.url("/health")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn with_hold_writes_after_a_proxy_cut_off_from_the_control_plane_holds_writes_only() {
    let (us, eu, ap) = origins().await;
    let mut cp = ControlPlane::start(&topology(Some(AP), false, &all_up())).await;
    let proxy = proxy_with(
        &cp,
        &us,
        &eu,
        &ap,
        "wait = \"1s\"\nmax_backoff = \"1s\"\nhold_writes_after = \"3s\"\n",
    )
    .await;
    // Confirmed every long-poll (1 s): writes flow.
    for _ in 0..5 {
        assert_eq!(proxy.write_region().await, AP);
    }
    cp.kill();
    eventually(
        "writes are held once the table is 3 s unconfirmed",
        WAIT,
        || async { proxy.write_region().await == "refused 503 Service Unavailable" },
    )
    .await;
    let resp = client()
        .post(proxy.url("/orders"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(resp.headers().contains_key("retry-after"));
    let body = resp.text().await.unwrap();
    assert!(body.contains("table_stale"), "{body}");
    // What the proxy says of writes agrees with what it does with them.
    let health = client()
        .get(proxy.admin_url("/health/write"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 503);
    let body = health.text().await.unwrap();
    assert!(body.contains("table_stale"), "{body}");
    let read = client().get(proxy.url("/items")).send().await.unwrap();
    assert_eq!(read.status(), 200, "reads go on");
    assert_eq!(read.headers()["x-edgeroute-region"], US);
}

/// SIGHUP reloads a table file; on a proxy whose table comes from the
/// control plane it reloads nothing, and must not stop the proxy (the
/// signal's default action).
#[tokio::test]
async fn sighup_leaves_a_proxy_and_its_control_plane_running() {
    let (us, eu, ap) = origins().await;
    let cp = ControlPlane::start(&topology(Some(US), false, &all_up())).await;
    let proxy = proxy_on(&cp, &us, &eu, &ap).await;
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    eventually("the SIGHUP is logged", WAIT, || async {
        proxy.log().contains("SIGHUP: nothing to reload")
    })
    .await;
    assert_eq!(proxy.write_region().await, US, "still serving");
    // The control plane, without TLS, ignores it too.
    cp.signal(nix::sys::signal::Signal::SIGHUP);
    cp.set_topology(&topology(Some(EU), false, &all_up()));
    eventually("the proxy follows the writer", WAIT, || async {
        proxy.write_region().await == EU
    })
    .await;
}

/// A client that never finishes its request head, or the body of its
/// report, does not hold a connection to the table server open; the
/// token's scheme is read in any case.
#[tokio::test]
async fn the_table_server_closes_a_head_never_finished_and_reads_bearer_in_any_case() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cp = ControlPlane::start(&topology(Some(US), false, &all_up())).await;
    // Both at once: each waits out its limit.
    let half_report = async {
        let mut half_body = tokio::net::TcpStream::connect(cp.addr).await.unwrap();
        half_body
            .write_all(
                format!(
                    "POST /v1/report HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
                     Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"proxy\""
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(
            Duration::from_secs(60),
            half_body.read_to_string(&mut answer),
        )
        .await
        .expect("the server answered and closed within 60 s")
        .unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    };
    tokio::join!(half_head_is_closed(cp.addr), half_report);
    let resp = client()
        .get(cp.url("/v1/table"))
        .header("authorization", format!("bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// `status` prints what it can, and exits non-zero when part of it could
/// not be read (here, the control plane it asks is not there), so that a
/// script tells it from a full answer.
#[tokio::test]
async fn status_fails_when_part_of_it_cannot_be_read() {
    let cp = ControlPlane::start(&topology(Some(US), false, &all_up())).await;
    let ran = cp.command(&["status"]).await;
    assert!(ran.ok, "{ran:?}");
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", gone.local_addr().unwrap());
    drop(gone);
    let ran = cp.command_via(&url, &["status"]).await;
    assert!(!ran.ok, "{ran:?}");
    assert!(ran.stdout.contains("table served: unknown"), "{ran:?}");
    assert!(ran.stderr.contains("could not be read"), "{ran:?}");
}

/// With `server.tls`, the table, the proxies' reports and the commands all
/// go over HTTPS; plain HTTP gets no answer on that port.
#[tokio::test]
async fn proxies_and_commands_reach_a_control_plane_serving_https() {
    let (us, eu, ap) = origins().await;
    let cp = ControlPlane::start_tls(&topology(Some(US), false, &all_up())).await;
    let plain = client()
        .get(format!("http://{}/health", cp.addr))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");

    let proxy = proxy_on(&cp, &us, &eu, &ap).await;
    // The commands ask server.address by https://, trusting actions.ca_file.
    served_and_reported(&cp, &proxy).await;

    cp.set_topology(&topology(Some(EU), false, &all_up()));
    eventually("the proxy follows the writer", WAIT, || async {
        proxy.write_region().await == EU
    })
    .await;
}

/// With `server.client_ca`, the control plane serves only clients that
/// present a certificate its CA signed, token or not: a proxy and the
/// commands with one are served; without one, or with one from another
/// CA, they get nothing and say which setting to look at.
#[tokio::test]
async fn a_control_plane_asking_for_client_certificates_serves_only_those_it_trusts() {
    let (us, eu, ap) = origins().await;
    let cp = ControlPlane::start_mtls(&topology(Some(US), false, &all_up())).await;
    let proxy = proxy_on(&cp, &us, &eu, &ap).await;
    served_and_reported(&cp, &proxy).await;
    // Its certificate is watched as a listener's is: issued to expire
    // on 2100-01-01.
    let expiry =
        "edgeroute_tls_certificate_expiry_timestamp_seconds{listener=\"table.client_tls\"}";
    assert_eq!(proxy.metric(expiry).await, 4_102_444_800.0);

    // The token alone: no table.
    let ca = reqwest::Certificate::from_pem(cp.ca.as_ref().unwrap().pem.as_bytes()).unwrap();
    let anonymous = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap()
        .get(cp.url("/v1/table"))
        .bearer_auth(edgeroute_tests::control::TOKEN)
        .send()
        .await;
    assert!(
        anonymous.is_err(),
        "served without a certificate: {anonymous:?}"
    );

    // A proxy without a certificate, and one with a certificate of
    // another CA.
    let side = tempfile::tempdir().unwrap();
    let (cert, key) = (side.path().join("other.pem"), side.path().join("other.key"));
    edgeroute_tests::control::TestCa::new().issue_client(&cert, &key);
    let bare = cp
        .table_source()
        .lines()
        .filter(|l| !l.starts_with("client_tls"))
        .collect::<Vec<_>>()
        .join("\n");
    for (client_tls, says) in [
        (
            String::new(),
            "the server asks for a client certificate: set table.client_tls",
        ),
        (
            format!("client_tls = {{ cert = {cert:?}, key = {key:?} }}\n"),
            "the server refused the client certificate (",
        ),
    ] {
        refused_proxy((&us, &eu, &ap), &format!("{bare}\n{client_tls}"), says).await;
    }

    // A command without its certificate.
    let config = std::fs::read_to_string(&cp.config_path).unwrap();
    let without: String = config
        .lines()
        .filter(|l| !l.starts_with("client_tls"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&cp.config_path, without).unwrap();
    // Asking this control plane, its config is refused as it stands.
    let ran = cp.command(&["status"]).await;
    assert!(!ran.ok, "{ran:?}");
    assert!(
        ran.stderr.contains("actions.client_tls") && ran.stderr.contains("is needed"),
        "{ran:?}"
    );
    // Asking it by its URL, as another machine would: the server refuses
    // the connection, and the command says what to set.
    let url = cp.url("");
    eventually("the command names actions.client_tls", WAIT, || async {
        let ran = cp.command_via(&url, &["status"]).await;
        !ran.ok
            && ran
                .stdout
                .contains("asks for a client certificate: set actions.client_tls")
    })
    .await;
}

/// `server.client_ca` is read again every 10 s and on `SIGHUP`, as the
/// certificate is: a new CA serves the clients it signs from then on and
/// no longer those of the old one; a file that cannot be used leaves the
/// CA in force, with an error line.
#[tokio::test]
async fn a_control_planes_client_ca_is_read_again_without_a_restart() {
    let cp = ControlPlane::start_mtls(&topology(Some(US), false, &all_up())).await;
    let next = edgeroute_tests::control::TestCa::new();
    let side = tempfile::tempdir().unwrap();
    let signed_by_next = (side.path().join("next.pem"), side.path().join("next.key"));
    next.issue_client(&signed_by_next.0, &signed_by_next.1);
    let signed_by_old = (cp.dir.join("client.pem"), cp.dir.join("client.key"));
    // `GET /health` on a new connection (one kept open would not ask for
    // a certificate again), presenting the certificate and key in
    // `files`: its status, or `None` when the handshake is refused.
    let health = |(cert, key): &(std::path::PathBuf, std::path::PathBuf)| {
        let mut pem = std::fs::read(cert).unwrap();
        pem.extend(std::fs::read(key).unwrap());
        let server_ca =
            reqwest::Certificate::from_pem(cp.ca.as_ref().unwrap().pem.as_bytes()).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(server_ca)
            .identity(reqwest::Identity::from_pem(&pem).unwrap())
            .build()
            .unwrap();
        let url = cp.url("/health");
        async move {
            let answer = client.get(url).send().await;
            answer.map(|r| r.status().as_u16()).ok()
        }
    };
    assert_eq!(
        health(&signed_by_next).await,
        None,
        "the new CA is not trusted yet"
    );
    assert_eq!(health(&signed_by_old).await, Some(200));

    edgeroute_tests::proxy::write_atomically(&cp.dir.join("clients-ca.pem"), &next.pem);
    cp.signal(nix::sys::signal::Signal::SIGHUP);
    eventually("the new CA is read", WAIT, || async {
        cp.log().contains("server.client_ca read again")
    })
    .await;
    assert_eq!(health(&signed_by_next).await, Some(200));
    assert_eq!(
        health(&signed_by_old).await,
        None,
        "the old CA is no longer trusted"
    );

    edgeroute_tests::proxy::write_atomically(&cp.dir.join("clients-ca.pem"), "not PEM");
    cp.signal(nix::sys::signal::Signal::SIGHUP);
    eventually("the broken file is logged", WAIT, || async {
        cp.log()
            .contains("server.client_ca changed but cannot be used")
    })
    .await;
    assert_eq!(
        health(&signed_by_next).await,
        Some(200),
        "the CA in force stays"
    );
}

/// A proxy whose `table.url` names the other scheme than its control
/// plane serves is told which one to set.
#[tokio::test]
async fn a_control_plane_url_of_the_wrong_scheme_is_named() {
    let (us, eu, ap) = origins().await;
    let plain = ControlPlane::start(&topology(Some(US), false, &all_up())).await;
    let table = plain
        .table_source()
        .replace("url = \"http://", "url = \"https://");
    refused_proxy(
        (&us, &eu, &ap),
        &table,
        "does not answer TLS: if it serves plain HTTP (no server.tls), make table.url http://",
    )
    .await;
    let tls = ControlPlane::start_tls(&topology(Some(US), false, &all_up())).await;
    let table: String = tls
        .table_source()
        .replace("url = \"https://", "url = \"http://")
        .lines()
        .filter(|l| !l.starts_with("ca_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    refused_proxy(
        (&us, &eu, &ap),
        &table,
        "does not answer plain HTTP: if it serves HTTPS (server.tls), make table.url https://",
    )
    .await;
}

/// A proxy, or a command, that does not trust the control plane's
/// certificate gets no table from it and says which setting to check.
#[tokio::test]
async fn a_control_plane_certificate_not_trusted_is_named_with_what_to_set() {
    let (us, eu, ap) = origins().await;
    let cp = ControlPlane::start_tls(&topology(Some(US), false, &all_up())).await;
    let dir = tempfile::tempdir().unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, edgeroute_tests::control::TestCa::new().pem).unwrap();
    refused_proxy(
        (&us, &eu, &ap),
        &format!(
            "source = \"control\"\nurl = \"{}\"\ntoken_file = {:?}\nca_file = {other_ca:?}\n",
            cp.url(""),
            cp.token_path
        ),
        "its certificate is not trusted: set table.ca_file",
    )
    .await;

    std::fs::copy(&other_ca, cp.dir.join("ca.pem")).unwrap();
    let ran = cp.command(&["status"]).await;
    assert!(!ran.ok, "{ran:?}");
    assert!(
        ran.stdout
            .contains("table served: unknown (cannot reach the control plane at https://")
            && ran
                .stdout
                .contains("its certificate is not trusted: set actions.ca_file"),
        "{ran:?}"
    );
}

/// The control plane's certificate, renewed in its files, is put in force
/// (at once on SIGHUP); files that cannot be used leave the one in force,
/// counted, and the server goes on.
#[tokio::test]
async fn a_renewed_control_plane_certificate_is_put_in_force_and_a_broken_one_is_not() {
    use edgeroute_tests::proxy::write_atomically;
    const EXPIRY: &str = "edgeroute_control_tls_certificate_expiry_timestamp_seconds";
    const FAILED: &str = "edgeroute_control_tls_certificate_reloads_total{result=\"failed\"}";
    let cp = ControlPlane::start_tls(&topology(Some(US), false, &all_up())).await;
    let ca = cp.ca.as_ref().expect("a TLS control plane");
    let first = certificate_der(&cp.dir.join("cert.pem"));
    assert_eq!(cp.served_certificate().await, first);
    // 2100-01-01, as issued at start.
    eventually("the expiry is shown", WAIT, || async {
        cp.metric(EXPIRY).await == 4_102_444_800.0
    })
    .await;

    let side = tempfile::tempdir().unwrap();
    let (cert, key) = (side.path().join("cert.pem"), side.path().join("key.pem"));
    ca.issue(&cert, &key, 2099, cp.addr.ip());
    // The key of another certificate beside the one in the files.
    write_atomically(
        &cp.dir.join("key.pem"),
        &std::fs::read_to_string(&key).unwrap(),
    );
    cp.signal(nix::sys::signal::Signal::SIGHUP);
    eventually("the broken pair is refused", WAIT, || async {
        cp.metric(FAILED).await >= 1.0
    })
    .await;
    assert_eq!(
        cp.metric(EXPIRY).await,
        4_102_444_800.0,
        "the old one stays"
    );
    assert!(
        cp.log().contains("TLS certificate not reloaded"),
        "{}",
        cp.log()
    );
    assert_eq!(
        cp.served_certificate().await,
        first,
        "the old one is served"
    );

    // The renewed certificate beside its key.
    write_atomically(
        &cp.dir.join("cert.pem"),
        &std::fs::read_to_string(&cert).unwrap(),
    );
    cp.signal(nix::sys::signal::Signal::SIGHUP);
    let renewed = certificate_der(&cert);
    eventually("the renewed certificate is served", WAIT, || async {
        cp.served_certificate().await == renewed
    })
    .await;
    // 2099-01-01.
    assert_eq!(cp.metric(EXPIRY).await, 4_070_908_800.0);
    assert_eq!(cp.table().await["primary_region"], US, "still serving");
}

/// A control plane reached by a host name its certificate does not hold:
/// the proxy and the commands say to change the URL's host, not the CA.
#[tokio::test]
async fn a_control_plane_url_whose_host_the_certificate_does_not_hold_is_named() {
    use edgeroute_tests::proxy::write_atomically;
    let (us, eu, ap) = origins().await;
    let cp = ControlPlane::start_tls(&topology(Some(US), false, &all_up())).await;
    let ca = cp.ca.as_ref().expect("a TLS control plane");
    // A certificate for `localhost` and 127.0.0.9 only, not the address
    // the control plane listens on.
    let side = tempfile::tempdir().unwrap();
    let (cert, key) = (side.path().join("cert.pem"), side.path().join("key.pem"));
    ca.issue(&cert, &key, 2100, [127, 0, 0, 9].into());
    write_atomically(
        &cp.dir.join("key.pem"),
        &std::fs::read_to_string(&key).unwrap(),
    );
    write_atomically(
        &cp.dir.join("cert.pem"),
        &std::fs::read_to_string(&cert).unwrap(),
    );
    cp.signal(nix::sys::signal::Signal::SIGHUP);
    let other_name = certificate_der(&cert);
    eventually("the new certificate is served", WAIT, || async {
        cp.served_certificate().await == other_name
    })
    .await;

    let by_address = format!("https://{}", cp.addr);
    let proxy = refused_proxy(
        (&us, &eu, &ap),
        &format!(
            "source = \"control\"\nurl = \"{by_address}\"\ntoken_file = {:?}\nca_file = {:?}\n",
            cp.token_path,
            cp.dir.join("ca.pem"),
        ),
        "its certificate does not hold the host name in table.url: set table.url's host",
    )
    .await;
    assert!(
        !proxy.log().contains("not trusted"),
        "the CA is the right one: {}",
        proxy.log()
    );

    let ran = cp.command_via(&by_address, &["status"]).await;
    assert!(!ran.ok, "{ran:?}");
    assert!(
        ran.stdout.contains(
            "its certificate does not hold the host name in actions.control_url: set \
             actions.control_url's host"
        ),
        "{ran:?}"
    );
}

/// With `server.max_connections` open, the control plane accepts no more:
/// a new client waits in the backlog, and is served as soon as one of the
/// open connections closes. Open connections are shown. A client without
/// the token gets its answer and the connection closed, so such clients
/// cannot fill the room.
#[tokio::test]
async fn a_client_over_the_control_planes_connection_limit_waits_until_one_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn health_on(conn: &mut tokio::net::TcpStream) -> String {
        conn.write_all(
            format!(
                "GET /health HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut got = vec![0u8; 4096];
        let n = tokio::time::timeout(WAIT, conn.read(&mut got))
            .await
            .expect("an answer")
            .unwrap();
        String::from_utf8_lossy(&got[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    }
    const LIMIT_WAITS: &str = "edgeroute_control_accept_waits_total{reason=\"connection_limit\"}";
    let cp = ControlPlane::start_serving(
        &topology(Some(US), false, &all_up()),
        "max_connections = 2\n",
    )
    .await;
    assert!(cp.log().contains("max_connections=2"), "{}", cp.log());
    // The harness's own client keeps one connection once it has read the
    // metrics with the token; this is the other.
    let mut first = tokio::net::TcpStream::connect(cp.addr).await.unwrap();
    assert_eq!(health_on(&mut first).await, "HTTP/1.1 200 OK");
    eventually("the server waits for room", WAIT, || async {
        cp.metric(LIMIT_WAITS).await >= 1.0
    })
    .await;
    assert_eq!(cp.metric("edgeroute_control_connections").await, 2.0);
    let mut third = tokio::net::TcpStream::connect(cp.addr).await.unwrap();
    eventually(
        "the third connection waits in the backlog",
        WAIT,
        || async { edgeroute_tests::accept_queue(cp.addr) == 1 },
    )
    .await;
    drop(first);
    assert_eq!(health_on(&mut third).await, "HTTP/1.1 200 OK");
    assert_eq!(edgeroute_tests::accept_queue(cp.addr), 0);
    assert_eq!(cp.metric("edgeroute_control_connections").await, 2.0);
    drop(third);

    let mut anonymous = tokio::net::TcpStream::connect(cp.addr).await.unwrap();
    anonymous
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let answer = edgeroute_tests::until_closed(&mut anonymous, WAIT).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200 OK") && answer.contains("connection: close"),
        "{answer}"
    );
}

/// Every proxy holds a connection open for its long poll: the control
/// plane raises its soft open-file limit to the hard one at start.
#[tokio::test]
async fn the_control_plane_raises_its_open_file_limit_to_the_hard_one() {
    let dir = tempfile::tempdir().unwrap();
    let addr = edgeroute_tests::proxy::free_addr();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(
        dir.path().join("topology.json"),
        topology(Some(US), false, &all_up()).to_string(),
    )
    .unwrap();
    let config = dir.path().join("control.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\naddress = \"{addr}\"\ntoken_file = \"token\"\n\
             [source]\nkind = \"file\"\npath = \"topology.json\"\n"
        ),
    )
    .unwrap();
    let bin = edgeroute_tests::proxy::workspace_bin("edgeroute-control", "EDGEROUTE_CONTROL_BIN");
    // Started with a soft limit of 256 (the shell's `exec` keeps its pid).
    let mut control = tokio::process::Command::new("sh")
        .args([
            "-c",
            "ulimit -S -n 256 && exec \"$0\" serve --config \"$1\"",
        ])
        .arg(&bin)
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = control.id().expect("a pid");
    eventually("the control plane serves", WAIT, || async {
        client()
            .get(format!("http://{addr}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("the open-file limit")
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect();
    assert_eq!(open_files[0], open_files[1], "soft = hard:\n{limits}");
    assert_ne!(open_files[0], "256", "{limits}");
    control.start_kill().ok();
}

//! The control plane against a real AWS API (moto in server mode, with our
//! launcher's patches): real SDK calls over HTTP, three regions.

use edgeroute_tests::control::{ControlPlane, region};
use edgeroute_tests::moto::{self, GLOBAL_CLUSTER, Moto, RECORD, REGIONS, Series};
use edgeroute_tests::{Origin, ProxyBuilder, eventually};
use serde_json::Value;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

async fn control_on(moto: &Moto, fixture: &moto::Fixture) -> ControlPlane {
    let source = format!(
        "[source]\nkind = \"aws\"\npoll_interval = \"200ms\"\nendpoint_url = \"{}\"\nhosted_zone_id = \"{}\"\n\
         record_name = \"{RECORD}\"\nglobal_cluster_id = \"{GLOBAL_CLUSTER}\"\nglobal_cluster_region = \"us-east-1\"\n",
        moto.endpoint, fixture.zone_id
    );
    ControlPlane::start_with(None, &source, &moto.env()).await
}

/// Asks AWS to move the global cluster's writer to `region`.
async fn switchover_to(moto: &Moto, fixture: &moto::Fixture, region: &str) {
    let rds = aws_sdk_rds::Client::new(&moto.sdk("us-east-1").await);
    rds.switchover_global_cluster()
        .global_cluster_identifier(GLOBAL_CLUSTER)
        .target_db_cluster_identifier(&fixture.clusters[region].0)
        .send()
        .await
        .expect("switchover");
}

/// Moves the writer to `region` and waits until `cp`'s table follows the
/// move to its end.
async fn switch_and_follow(moto: &Moto, fixture: &moto::Fixture, cp: &ControlPlane, region: &str) {
    switchover_to(moto, fixture, region).await;
    eventually("the table follows the writer", WAIT, || async {
        let t = cp.table().await;
        t["primary_region"] == region && t["failover_in_progress"] == false
    })
    .await;
}

/// The names of the table's regions, in its order.
fn region_names(table: &Value) -> Vec<&str> {
    table["regions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect()
}

#[tokio::test]
async fn the_table_mirrors_route53_and_the_aurora_global_cluster() {
    let moto = Moto::start().await;
    let fixture = moto::three_regions(&moto).await;
    let cp = control_on(&moto, &fixture).await;
    let t = cp.table().await;
    assert_eq!(t["primary_region"], "us-east-1", "{t}");
    assert_eq!(t["failover_in_progress"], false);
    assert_eq!(t["regions"].as_array().unwrap().len(), 3, "{t}");
    for r in REGIONS {
        assert_eq!(region(&t, r)["state"], "active", "{t}");
        assert_eq!(region(&t, r)["weight"], 100);
    }
    assert_eq!(region(&t, "eu-west-1")["replication_lag_ms"], 120, "{t}");
    assert_eq!(
        region(&t, "ap-southeast-1")["replication_lag_ms"],
        310,
        "{t}"
    );
}

/// Every request sent to AWS is counted, by service and operation, and
/// its answer: a poll sends Route 53 two lists (the API name's records
/// and the drains' kept records) and one read per health check, the call
/// volume the README gives.
#[tokio::test]
async fn requests_to_aws_are_counted_by_operation() {
    let moto = Moto::start().await;
    let fixture = moto::three_regions(&moto).await;
    let cp = control_on(&moto, &fixture).await;
    let sent = |text: &str, service: &str, operation: &str| {
        edgeroute_tests::sample(
            text,
            &format!(
                "edgeroute_control_aws_requests_total{{operation=\"{operation}\",service=\"{service}\"}}"
            ),
        )
    };
    let polls = |text: &str| edgeroute_tests::sample(text, "edgeroute_control_poll_seconds_count");
    eventually("five polls are done", WAIT, || async {
        polls(&cp.metrics().await) >= 5.0
    })
    .await;
    // All read at once: polls done, and what they (and one under way) sent.
    let text = cp.metrics().await;
    let done = polls(&text);
    let per_poll = [
        ("Route 53", "ListResourceRecordSets", 2.0),
        ("Route 53", "GetHealthCheckStatus", 3.0),
        ("RDS", "DescribeGlobalClusters", 1.0),
    ];
    for (service, operation, each) in per_poll {
        let n = sent(&text, service, operation);
        assert!(
            n >= each * done && n <= each * (done + 1.0),
            "{n} {operation} requests in {done} polls, {each} a poll\n{text}"
        );
    }
    let answered = edgeroute_tests::sample(
        &text,
        "edgeroute_control_aws_answers_total{operation=\"GetHealthCheckStatus\",service=\"Route 53\",status=\"2xx\"}",
    );
    assert!(answered >= 3.0 * done, "{answered} answers\n{text}");
}

/// The table's content is shown as gauges, and an RDS API that hangs is
/// told within seconds: each member region is given 5 s, then the source
/// is stale (the SDK alone would wait 30 s in each), and the time of the
/// last whole read stops moving until it answers again.
#[tokio::test]
async fn a_hanging_rds_api_makes_the_source_stale_within_seconds() {
    let moto = Moto::start().await;
    let fixture = moto::three_regions(&moto).await;
    let cp = control_on(&moto, &fixture).await;
    let text = cp.metrics().await;
    for (sample, value) in [
        ("edgeroute_control_table_primary{region=\"us-east-1\"}", 1.0),
        ("edgeroute_control_table_primary{region=\"eu-west-1\"}", 0.0),
        ("edgeroute_control_table_failover_in_progress", 0.0),
        (
            "edgeroute_control_table_region_state{region=\"eu-west-1\",state=\"active\"}",
            1.0,
        ),
        (
            "edgeroute_control_table_replication_lag_seconds{region=\"eu-west-1\"}",
            0.12,
        ),
        ("edgeroute_control_source_stale", 0.0),
        (
            &format!(
                "edgeroute_control_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            ),
            1.0,
        ),
    ] {
        assert_eq!(
            edgeroute_tests::sample(&text, sample),
            value,
            "{sample}\n{text}"
        );
    }
    let last_read = || async {
        edgeroute_tests::sample(
            &cp.metrics().await,
            "edgeroute_control_source_last_read_timestamp_seconds",
        )
    };
    assert!(last_read().await > 0.0);
    assert!(edgeroute_tests::sample(&text, "process_resident_memory_bytes") > 0.0);
    // Series an alert watches for a rise are there from the start.
    assert!(
        text.contains("edgeroute_control_proxy_reports_total{result=\"invalid\"} 0"),
        "{text}"
    );
    // No certificate, no expiry to alert on.
    assert!(
        !text.contains("edgeroute_control_tls_certificate_expiry_timestamp_seconds"),
        "{text}"
    );

    moto.hold("DescribeGlobalClusters").await;
    // Three member regions, 5 s each: stale well before the SDK's 30 s in
    // the first of them.
    eventually("the source is stale", Duration::from_secs(40), || async {
        cp.metric("edgeroute_control_source_stale").await == 1.0
    })
    .await;
    assert!(
        cp.log().contains("did not answer within 5s"),
        "{}",
        cp.log()
    );
    let stood = last_read().await;
    moto.release("DescribeGlobalClusters").await;
    eventually("the source is read again", WAIT, || async {
        cp.metric("edgeroute_control_source_stale").await == 0.0 && last_read().await > stood
    })
    .await;
}

#[tokio::test]
async fn a_writer_change_raises_the_epoch_and_moves_a_running_proxys_writes() {
    let moto = Moto::start().await;
    let fixture = moto::three_regions(&moto).await;
    let cp = control_on(&moto, &fixture).await;
    let (us, eu, ap) = (
        Origin::start(REGIONS[0]).await,
        Origin::start(REGIONS[1]).await,
        Origin::start(REGIONS[2]).await,
    );
    let proxy = ProxyBuilder::new(REGIONS[0])
        .region(REGIONS[0], &[us.addr])
        .region(REGIONS[1], &[eu.addr])
        .region(REGIONS[2], &[ap.addr])
        .extra(&format!(
            "[table]\nsource = \"control\"\nurl = \"http://{}\"\ntoken_file = {:?}\nwait = \"5s\"\n",
            cp.addr, cp.token_path
        ))
        .without_table_file()
        .start()
        .await;
    assert_eq!(proxy.write_region().await, "us-east-1");
    let epoch_before = cp.table().await["epoch"].as_u64().unwrap();

    // The emulator keeps the switchover running until released, so the
    // window in which writes are held is seen for certain.
    moto.hold_failovers().await;
    let requested = Instant::now();
    switchover_to(&moto, &fixture, "eu-west-1").await;
    // While AWS reports the switchover running, writes are held.
    eventually(
        "the proxy holds writes during the switchover",
        WAIT,
        || async { proxy.write_region().await == "refused 503 Service Unavailable" },
    )
    .await;
    let held_at = requested.elapsed();
    moto.release_failovers().await;
    eventually("writes reach the new writer region", WAIT, || async {
        proxy.write_region().await == "eu-west-1"
    })
    .await;
    let moved_at = requested.elapsed();
    eprintln!(
        "switchover requested -> proxy holds writes: {held_at:?}; released -> proxy writes to eu-west-1: {moved_at:?}"
    );
    let t = cp.table().await;
    assert_eq!(t["primary_region"], "eu-west-1");
    assert!(t["epoch"].as_u64().unwrap() > epoch_before, "{t}");
    assert_eq!(proxy.routing().await["table"]["epoch"], t["epoch"]);
    // No write reached the old primary after the proxy moved.
    let before = us.count("POST");
    for _ in 0..5 {
        assert_eq!(proxy.write_region().await, "eu-west-1");
    }
    assert_eq!(us.count("POST"), before);
}

#[tokio::test]
async fn a_failing_health_check_marks_a_region_down_and_a_region_without_a_record_leaves_the_table()
{
    let moto = Moto::start().await;
    let fixture = moto::three_regions(&moto).await;
    let cp = control_on(&moto, &fixture).await;
    // CloudWatch keeps one-minute buckets: the failure is two minutes old,
    // the recovery below lands in the current minute.
    moto::put_metric(
        &moto,
        &Series::health_check(&fixture.health_checks["ap-southeast-1"]),
        0.0,
        Duration::from_secs(120),
    )
    .await;
    let r53 = aws_sdk_route53::Client::new(&moto.sdk("us-east-1").await);
    // Records of the API name that route no region's traffic (a weighted
    // TXT record for something else, a weighted canary record) are left
    // out, not taken for regions.
    for (kind, id, value) in [
        (aws_sdk_route53::types::RrType::Txt, "Blue", "\"v=blue\""),
        (aws_sdk_route53::types::RrType::A, "canary", "192.0.2.10"),
    ] {
        let foreign = aws_sdk_route53::types::ResourceRecordSet::builder()
            .name(moto::RECORD)
            .r#type(kind)
            .set_identifier(id)
            .weight(10)
            .ttl(60)
            .resource_records(
                aws_sdk_route53::types::ResourceRecord::builder()
                    .value(value)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        moto::change_record(
            &r53,
            &fixture.zone_id,
            aws_sdk_route53::types::ChangeAction::Create,
            foreign,
        )
        .await;
    }
    // A region whose latency record someone else removed leaves the table
    // (a proxy treats a region the table leaves out as down).
    moto::change_record(
        &r53,
        &fixture.zone_id,
        aws_sdk_route53::types::ChangeAction::Delete,
        moto::latency_record("eu-west-1", &fixture.health_checks["eu-west-1"]),
    )
    .await;
    eventually(
        "ap-southeast-1 down and eu-west-1 out of the table",
        WAIT,
        || async {
            let t = cp.table().await;
            region(&t, "ap-southeast-1")["state"] == "down"
                && !t["regions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["name"] == "eu-west-1")
        },
    )
    .await;
    let t = cp.table().await;
    assert_eq!(region(&t, "us-east-1")["state"], "active");
    assert_eq!(region_names(&t), ["ap-southeast-1", "us-east-1"], "{t}");
    assert_eq!(
        cp.log()
            .matches("a record of the API name names no region")
            .count(),
        2,
        "each warned of once"
    );
    // The check recovers.
    moto::put_metric(
        &moto,
        &Series::health_check(&fixture.health_checks["ap-southeast-1"]),
        1.0,
        Duration::ZERO,
    )
    .await;
    eventually("ap-southeast-1 active again", WAIT, || async {
        region(&cp.table().await, "ap-southeast-1")["state"] == "active"
    })
    .await;
}

#[tokio::test]
async fn an_aws_outage_keeps_the_last_good_table_marked_stale() {
    let mut moto = Moto::start().await;
    let fixture = moto::three_regions(&moto).await;
    let cp = control_on(&moto, &fixture).await;
    let before = cp.table().await;
    moto.kill();
    eventually("the source is marked stale", WAIT, || async {
        cp.metric("edgeroute_control_source_stale").await == 1.0
    })
    .await;
    assert_eq!(
        cp.table().await,
        before,
        "the last good table is still served"
    );
    let errors = cp
        .metric(
            "edgeroute_control_source_errors_total{api=\"ListResourceRecordSets\",source=\"aws\"}",
        )
        .await;
    assert!(errors >= 1.0, "errors are counted by API");
    // Requests go on, sent and counted; no answer comes.
    let text = cp.metrics().await;
    let of = |metric: &str, status: &str| {
        edgeroute_tests::sample(
            &text,
            &format!(
                "edgeroute_control_aws_{metric}_total{{operation=\"ListResourceRecordSets\",service=\"Route 53\"{status}}}"
            ),
        )
    };
    let (sent, answered) = (of("requests", ""), of("answers", ",status=\"2xx\""));
    assert!(sent > answered, "{sent} sent, {answered} answered\n{text}");
}

/// A health check that cannot be read (deleted while its record still
/// names it) keeps its last reading for a while, so a region known down
/// stays down, and a check never read is unknown, shown as active; the
/// rest of the table keeps following AWS, the writer's moves included.
#[tokio::test]
async fn an_unreadable_health_check_keeps_its_last_reading_and_the_table_live() {
    let moto = Moto::start().await;
    let fixture = moto::three_regions(&moto).await;
    let cp = control_on(&moto, &fixture).await;
    // Older than the metric's window (10 minutes): only the checkers'
    // reports say down, so once the check is deleted nothing can be read
    // of it.
    moto::put_metric(
        &moto,
        &Series::health_check(&fixture.health_checks["ap-southeast-1"]),
        0.0,
        Duration::from_secs(11 * 60),
    )
    .await;
    eventually("ap-southeast-1 is down", WAIT, || async {
        region(&cp.table().await, "ap-southeast-1")["state"] == "down"
    })
    .await;
    let r53 = aws_sdk_route53::Client::new(&moto.sdk("us-east-1").await);
    r53.delete_health_check()
        .health_check_id(&fixture.health_checks["ap-southeast-1"])
        .send()
        .await
        .expect("delete the health check");
    switchover_to(&moto, &fixture, "eu-west-1").await;
    eventually(
        "the table follows the writer to eu-west-1",
        WAIT,
        || async {
            let t = cp.table().await;
            t["primary_region"] == "eu-west-1" && t["failover_in_progress"] == false
        },
    )
    .await;
    let t = cp.table().await;
    assert_eq!(region(&t, "ap-southeast-1")["state"], "down", "{t}");
    assert_eq!(cp.metric("edgeroute_control_source_stale").await, 0.0);
    assert!(
        cp.log().contains("its last reading stands"),
        "the failed read is logged"
    );
    // A control plane that never read the check: unknown, shown active.
    let fresh = control_on(&moto, &fixture).await;
    let t = fresh.table().await;
    assert_eq!(region(&t, "ap-southeast-1")["state"], "active", "{t}");
    assert!(fresh.log().contains("it counts as unknown"));
}

/// The writer's region with no record of the API name (drained by a
/// control plane that does not share this one's history file, or by hand)
/// stays in the table as draining: its writes go on, and the table keeps
/// following AWS.
#[tokio::test]
async fn the_writers_region_without_a_record_is_draining_not_a_source_error() {
    let moto = Moto::start().await;
    let fixture = moto::three_regions(&moto).await;
    let cp = control_on(&moto, &fixture).await;
    let r53 = aws_sdk_route53::Client::new(&moto.sdk("us-east-1").await);
    moto::change_record(
        &r53,
        &fixture.zone_id,
        aws_sdk_route53::types::ChangeAction::Delete,
        moto::latency_record("us-east-1", &fixture.health_checks["us-east-1"]),
    )
    .await;
    eventually("us-east-1 is draining", WAIT, || async {
        region(&cp.table().await, "us-east-1")["state"] == "draining"
    })
    .await;
    let t = cp.table().await;
    assert_eq!(t["primary_region"], "us-east-1", "{t}");
    assert_eq!(cp.metric("edgeroute_control_source_stale").await, 0.0);
}

/// Route 53 lists at most 300 records a page: the regions' records past
/// the first page of the API name (here behind 310 weighted records of
/// other uses) are read too, by the name, type and set identifier the
/// page ends at.
#[tokio::test]
async fn records_past_the_first_page_of_the_api_name_are_read() {
    use aws_sdk_route53::types::{Change, ChangeAction, ChangeBatch, ResourceRecord, RrType};
    let moto = Moto::start().await;
    let fixture = moto::three_regions(&moto).await;
    let r53 = aws_sdk_route53::Client::new(&moto.sdk("us-east-1").await);
    // Listed between ap-southeast-1's records and the others': `bulk-`
    // sorts after `ap-` and before `eu-` and `us-`.
    let changes = (0..310)
        .map(|i| {
            let record = aws_sdk_route53::types::ResourceRecordSet::builder()
                .name(RECORD)
                .r#type(RrType::A)
                .set_identifier(format!("bulk-{i:03}"))
                .weight(0)
                .ttl(60)
                .resource_records(
                    ResourceRecord::builder()
                        .value("192.0.2.1")
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap();
            Change::builder()
                .action(ChangeAction::Create)
                .resource_record_set(record)
                .build()
                .unwrap()
        })
        .collect();
    r53.change_resource_record_sets()
        .hosted_zone_id(&fixture.zone_id)
        .change_batch(
            ChangeBatch::builder()
                .set_changes(Some(changes))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("310 records made");
    let cp = control_on(&moto, &fixture).await;
    let t = cp.table().await;
    let mut names = region_names(&t);
    names.sort_unstable();
    let mut want = REGIONS;
    want.sort_unstable();
    assert_eq!(names, want, "{t}");
}

/// While Route 53's records cannot be listed (its API down in us-east-1,
/// or throttled), the writer's moves still reach the table, on the last
/// records listed: otherwise writes would go on to a demoted writer. The
/// source is marked stale until the list works again.
#[tokio::test]
async fn a_writer_move_reaches_the_table_while_route_53_cannot_be_listed() {
    let moto = Moto::start().await;
    let fixture = moto::three_regions(&moto).await;
    let cp = control_on(&moto, &fixture).await;
    let before = cp.table().await;
    assert_eq!(before["primary_region"], "us-east-1");
    moto.fail("ListResourceRecordSets").await;
    eventually("the source is marked stale", WAIT, || async {
        cp.metric("edgeroute_control_source_stale").await == 1.0
    })
    .await;
    switch_and_follow(&moto, &fixture, &cp, "eu-west-1").await;
    let t = cp.table().await;
    assert_eq!(t["regions"].as_array().unwrap().len(), 3, "{t}");
    assert_eq!(cp.metric("edgeroute_control_source_stale").await, 1.0);
    assert!(
        cp.metric(
            "edgeroute_control_source_errors_total{api=\"ListResourceRecordSets\",source=\"aws\"}"
        )
        .await
            >= 1.0
    );
    assert!(
        cp.log().contains("the writer's moves are still followed"),
        "{}",
        cp.log()
    );
    // `status` shows what can be known, says what cannot, and fails.
    let ran = cp.command(&["status"]).await;
    assert!(!ran.ok, "{ran:?}");
    assert!(
        ran.stderr.contains("showing the global cluster alone"),
        "{ran:?}"
    );
    for part in [
        "writer region: eu-west-1",
        "health unknown",
        "DNS unknown",
        "cannot read its source now",
    ] {
        assert!(ran.stdout.contains(part), "{part}: {ran:?}");
    }
    moto.mend("ListResourceRecordSets").await;
    eventually("the source is read whole again", WAIT, || async {
        cp.metric("edgeroute_control_source_stale").await == 0.0
    })
    .await;
}

/// A region whose record names a calculated health check (which Route 53
/// reports no checkers for) is judged by the check's CloudWatch metric:
/// down while it says 0.
#[tokio::test]
async fn a_calculated_health_check_is_read_from_its_metric() {
    use aws_sdk_route53::types::{HealthCheckConfig, HealthCheckType};
    let moto = Moto::start().await;
    let fixture = moto::three_regions(&moto).await;
    let r53 = aws_sdk_route53::Client::new(&moto.sdk("us-east-1").await);
    let calculated = r53
        .create_health_check()
        .caller_reference("calculated-eu-west-1")
        .health_check_config(
            HealthCheckConfig::builder()
                .r#type(HealthCheckType::Calculated)
                .child_health_checks(&fixture.health_checks["eu-west-1"])
                .health_threshold(1)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("create a calculated health check")
        .health_check()
        .unwrap()
        .id()
        .to_owned();
    moto::change_record(
        &r53,
        &fixture.zone_id,
        aws_sdk_route53::types::ChangeAction::Upsert,
        moto::latency_record("eu-west-1", &calculated),
    )
    .await;
    moto::put_metric(
        &moto,
        &Series::health_check(&calculated),
        0.0,
        Duration::ZERO,
    )
    .await;
    let cp = control_on(&moto, &fixture).await;
    eventually("eu-west-1 down by its metric", WAIT, || async {
        region(&cp.table().await, "eu-west-1")["state"] == "down"
    })
    .await;
    assert_eq!(region(&cp.table().await, "us-east-1")["state"], "active");
}

/// A CloudWatch that does not answer delays a read by a few seconds at
/// most: health checks and lags are read side by side, within a bound, so
/// the writer's moves still reach the table (the checks' last readings
/// stand in meanwhile).
#[tokio::test]
async fn a_writer_move_reaches_the_table_while_cloudwatch_hangs() {
    const HELD: &str = "GetMetricStatistics/AWS/Route53";
    let moto = Moto::start().await;
    let fixture = moto::three_regions(&moto).await;
    let cp = control_on(&moto, &fixture).await;
    moto.hold(HELD).await;
    eventually("health reads wait", WAIT, || async {
        moto.held(HELD).await > 0
    })
    .await;
    switch_and_follow(&moto, &fixture, &cp, "eu-west-1").await;
    let t = cp.table().await;
    for name in REGIONS {
        assert_eq!(region(&t, name)["state"], "active", "{t}");
    }
    assert!(cp.log().contains("its last reading stands"), "{}", cp.log());
    moto.release(HELD).await;
}

/// A launcher whose port another process holds exits, and is told apart
/// from one that does not come up, so that `Moto::start` picks another
/// port rather than failing the test.
#[tokio::test]
async fn an_emulator_on_a_taken_port_is_said_to_have_exited() {
    let holder = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = holder.local_addr().unwrap();
    // Answers nothing: each connection is closed at once.
    let held = tokio::spawn(async move {
        while let Ok((conn, _)) = holder.accept().await {
            drop(conn);
        }
    });
    match Moto::try_start_at(addr, moto::FAILOVER_SECONDS).await {
        Err(moto::StartFailure::Exited(why)) => {
            assert!(why.contains(&format!("is {addr} taken")), "{why}")
        }
        Err(other) => panic!("not an exit: {other}"),
        Ok(_) => panic!("started on a port another process holds"),
    }
    held.abort();
}

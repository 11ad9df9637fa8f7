//! A bad routing table is rejected whole; the table in force keeps serving.

use edgeroute_tests::control::ScriptedControl;
use edgeroute_tests::{Origin, ProxyBuilder, client, eventually, table};
use std::time::Duration;

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";

/// A ready proxy for us-east-1 (`us` its one backend) on `control`'s tables.
async fn proxy_of(control: &ScriptedControl, us: &Origin) -> edgeroute_tests::Proxy {
    control
        .proxy(ProxyBuilder::new(US).region(US, &[us.addr]))
        .start()
        .await
}

async fn rejections(proxy: &edgeroute_tests::Proxy, reason: &str) -> f64 {
    proxy
        .metric(&format!(
            "edgeroute_table_rejections_total{{reason=\"{reason}\"}}"
        ))
        .await
}

#[tokio::test]
async fn bad_tables_are_rejected_and_the_old_one_keeps_serving() {
    let us = Origin::start(US).await;
    let eu = Origin::start(EU).await;
    let proxy = ProxyBuilder::new(US)
        .region(US, &[us.addr])
        .region(EU, &[eu.addr])
        .table(table(5, 10, Some(EU), &[(US, "active"), (EU, "active")]))
        .start()
        .await;
    let c = client();

    let bad: [(&str, String); 5] = [
        ("malformed", "{\"epoch\": 6, \"version\": ".to_owned()),
        (
            "unknown_region",
            table(
                6,
                11,
                Some(EU),
                &[(US, "down"), (EU, "active"), ("sa-east-1", "active")],
            )
            .to_string(),
        ),
        (
            "stale_epoch",
            table(4, 99, Some(US), &[(US, "down"), (EU, "active")]).to_string(),
        ),
        (
            "primary_changed_without_epoch",
            table(5, 11, Some(US), &[(US, "draining"), (EU, "active")]).to_string(),
        ),
        (
            "invalid",
            table(6, 11, Some("mars-1"), &[(US, "down"), (EU, "active")]).to_string(),
        ),
    ];
    for (reason, text) in bad {
        proxy.write_table_text(&text);
        proxy.signal(nix::sys::signal::Signal::SIGHUP);
        eventually(
            &format!("a {reason} table is counted as rejected"),
            Duration::from_secs(10),
            || async { rejections(&proxy, reason).await >= 1.0 },
        )
        .await;
        // The old table is still in force whole (each bad one also takes
        // the local region out, which no part of it may do), and writes
        // still go to its primary.
        let routing = proxy.routing().await;
        assert_eq!(routing["table"]["epoch"], 5, "after {reason}");
        assert_eq!(routing["table"]["version"], 10, "after {reason}");
        assert_eq!(
            routing["table"]["regions"],
            serde_json::json!([
                { "name": US, "state": "active", "weight": 100 },
                { "name": EU, "state": "active", "weight": 100 },
            ]),
            "after {reason}"
        );
        let read = c.get(proxy.url("/page")).send().await.unwrap();
        assert_eq!(read.headers()["x-edgeroute-region"], US, "after {reason}");
        let said = format!("reason=\"{reason}\"");
        assert!(
            proxy
                .log()
                .lines()
                .any(|l| l.contains("routing table rejected") && l.contains(&said)),
            "the {reason} rejection is logged"
        );
        let resp = c
            .post(proxy.url("/orders"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "after {reason}");
        assert_eq!(resp.headers()["x-edgeroute-region"], EU, "after {reason}");
    }
    assert_eq!(proxy.metric("edgeroute_table_epoch").await, 5.0);
    // The table in force, not a rejected one, is what its gauges show.
    for (sample, value) in [
        ("edgeroute_table_primary{region=\"eu-west-1\"}", 1.0),
        ("edgeroute_table_primary{region=\"us-east-1\"}", 0.0),
        ("edgeroute_table_failover_in_progress", 0.0),
        (
            "edgeroute_table_region_state{region=\"us-east-1\",state=\"active\"}",
            1.0,
        ),
        (
            "edgeroute_table_region_state{region=\"us-east-1\",state=\"down\"}",
            0.0,
        ),
    ] {
        assert_eq!(proxy.metric(sample).await, value, "{sample}");
    }
    // Who this is, and the process's own figures.
    let info = format!(
        "edgeroute_info{{local_region=\"{US}\",version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(proxy.metric(&info).await, 1.0, "{info}");
    assert!(proxy.metric("process_resident_memory_bytes").await > 0.0);
    assert!(proxy.metric("process_open_fds").await > 0.0);
    // Its start-up took CPU time, counted in fractions of a second (a count
    // in whole seconds would read 0 for well under a second).
    assert!(proxy.metric("process_cpu_seconds_total").await > 0.0);
    // The refusals an alert watches are there at 0 from the start.
    let text = proxy.metrics().await;
    assert!(
        text.contains("edgeroute_refusals_total{reason=\"failover_in_progress\"} 0"),
        "{text}"
    );
    assert_eq!(us.count("POST"), 0);
    let log = proxy.log();
    assert!(
        log.contains("routing table rejected"),
        "rejections are logged:\n{log}"
    );
    assert!(
        log.contains("sa-east-1"),
        "the log names the unknown region:\n{log}"
    );

    // A good table after all that is accepted.
    proxy
        .swap_table(&table(6, 11, Some(US), &[(US, "active"), (EU, "active")]))
        .await;
    let resp = c
        .post(proxy.url("/orders"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-edgeroute-region"], US);
}

#[tokio::test]
async fn a_missing_table_file_keeps_the_table_in_force() {
    let us = Origin::start(US).await;
    let proxy = ProxyBuilder::new(US).region(US, &[us.addr]).start().await;
    std::fs::remove_file(&proxy.table_path).unwrap();
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    eventually(
        "the unreadable table is counted",
        Duration::from_secs(10),
        || async { rejections(&proxy, "unreadable").await >= 1.0 },
    )
    .await;
    let resp = client().get(proxy.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

/// Each new way the table file is unreadable is logged and counted once,
/// however many rereads (every 100 ms) find it so: a file too large,
/// another too large, then none.
#[tokio::test]
async fn each_new_way_a_table_file_is_unreadable_is_counted_once() {
    let us = Origin::start(US).await;
    let proxy = ProxyBuilder::new(US).region(US, &[us.addr]).start().await;
    assert_eq!(rejections(&proxy, "unreadable").await, 0.0);
    for (size, seen) in [(1024 * 1024 + 1, 1.0), (1024 * 1024 + 2, 2.0)] {
        proxy.write_table_text(&" ".repeat(size));
        eventually(
            "the file too large is counted",
            Duration::from_secs(10),
            || async { rejections(&proxy, "unreadable").await == seen },
        )
        .await;
    }
    std::fs::remove_file(&proxy.table_path).unwrap();
    eventually(
        "the file gone is counted",
        Duration::from_secs(10),
        || async { rejections(&proxy, "unreadable").await == 3.0 },
    )
    .await;
    // Rereads that find it gone still (ten a second, while the table's
    // age grows by a second) are no news.
    let age = proxy.metric("edgeroute_table_age_seconds").await;
    eventually("a second of rereads", Duration::from_secs(10), || async {
        proxy.metric("edgeroute_table_age_seconds").await >= age + 1.0
    })
    .await;
    assert_eq!(rejections(&proxy, "unreadable").await, 3.0);
}

/// A table file left holding a refused table confirms nothing when read
/// again: the table's age grows (so an alert on it fires) until a good
/// table is in place.
#[tokio::test]
async fn a_table_file_holding_a_refused_table_lets_the_tables_age_grow() {
    let us = Origin::start(US).await;
    let proxy = ProxyBuilder::new(US).region(US, &[us.addr]).start().await;
    proxy.write_table_text("{\"epoch\": 2, \"version\": ");
    let age = || proxy.metric("edgeroute_table_age_seconds");
    // The file is read every 100 ms: a reread that confirmed would keep
    // the age below a second.
    eventually(
        "the table's age grows past the rereads",
        Duration::from_secs(10),
        || async { rejections(&proxy, "malformed").await == 1.0 && age().await >= 2.0 },
    )
    .await;
    proxy
        .swap_table(&table(2, 2, Some(US), &[(US, "active")]))
        .await;
    assert!(age().await < 2.0);
}

/// Tables from the control plane are held to the same rules as files: a
/// malformed one and one over 1 MiB are rejected, counted by reason and
/// logged, and the table in force keeps serving.
#[tokio::test]
async fn bad_tables_from_the_control_plane_are_rejected_and_the_old_one_keeps_serving() {
    let us = Origin::start(US).await;
    let good = table(1, 1, Some(US), &[(US, "active")]).to_string();
    // 1 MiB, the most a table may weigh, and one byte more.
    let oversized = vec![b' '; 1024 * 1024 + 1];
    let control = ScriptedControl::start(vec![
        good.into(),
        "{\"epoch\": 2, \"version\": ".into(),
        oversized.into(),
    ])
    .await;
    let proxy = proxy_of(&control, &us).await;
    eventually(
        "both bad tables are rejected",
        Duration::from_secs(10),
        || async {
            rejections(&proxy, "malformed").await == 1.0
                && rejections(&proxy, "unreadable").await == 1.0
        },
    )
    .await;
    assert_eq!(proxy.table_version().await, Some(1));
    let resp = client().get(proxy.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(proxy.metric("edgeroute_control_errors_total").await, 0.0);
    let log = proxy.log();
    assert!(
        log.contains("the control plane's table is larger than 1048576 bytes"),
        "{log}"
    );
}

/// A control plane that hands out a lower epoch than the proxy's table
/// with other content (another replica, behind the same address, that
/// has not read the change yet) is refused, and the log line says the
/// likeliest cause and what to do.
#[tokio::test]
async fn a_lower_epoch_from_a_control_plane_is_refused_with_the_likely_cause() {
    let us = Origin::start(US).await;
    let control = ScriptedControl::start(vec![
        table(5, 10, Some(US), &[(US, "active")]).to_string().into(),
        table(3, 20, Some(US), &[(US, "draining")])
            .to_string()
            .into(),
    ])
    .await;
    let proxy = proxy_of(&control, &us).await;
    eventually(
        "the lower epoch is refused",
        Duration::from_secs(10),
        || async { rejections(&proxy, "stale_epoch").await == 1.0 },
    )
    .await;
    assert_eq!(proxy.table_version().await, Some(10));
    let log = proxy.log();
    assert!(
        log.contains("one that has not read the change yet answers with the table before it"),
        "{log}"
    );
}

/// The table in force under lower numbers (as another control plane
/// replica numbers it) is no news and no rejection, and the next request
/// still names the table in force (even after a refused table), so that
/// such a replica can take up its numbering; under higher numbers it is
/// taken, so that every proxy ends on the highest numbering.
#[tokio::test]
async fn the_same_table_under_other_numbers_is_not_refused() {
    let us = Origin::start(US).await;
    let same = |epoch, version| table(epoch, version, Some(US), &[(US, "active")]);
    let control = ScriptedControl::start(vec![
        same(5, 10).to_string().into(),
        table(4, 1, Some(US), &[(US, "draining")])
            .to_string()
            .into(),
        same(3, 20).to_string().into(),
        same(5, 9).to_string().into(),
        same(6, 1).to_string().into(),
    ])
    .await;
    let proxy = proxy_of(&control, &us).await;
    eventually(
        "the higher numbering is taken",
        Duration::from_secs(10),
        || async { proxy.table_epoch().await == Some(6) },
    )
    .await;
    assert_eq!(proxy.table_version().await, Some(1));
    assert_eq!(
        rejections(&proxy, "stale_epoch").await,
        1.0,
        "the other table"
    );
    assert_eq!(rejections(&proxy, "stale_version").await, 0.0);
    assert_eq!(
        proxy.metric("edgeroute_table_swaps_total").await,
        2.0,
        "the first table and the renumbered one"
    );
    // The scripted control plane tags its answers "0", "1", ... in turn.
    eventually(
        "the request after the renumbered table",
        Duration::from_secs(10),
        || async { control.named().len() >= 6 },
    )
    .await;
    let tag = |t: &str| Some(format!("\"{t}\""));
    assert_eq!(
        control.named()[..6],
        [None, tag("0"), tag("1"), tag("0"), tag("0"), tag("4")],
        "each request names the table in force, or the one refused last"
    );
}

/// A server that answers table requests at once and without an ETag (a
/// static file server, say) is asked about once a second, not in a loop.
#[tokio::test]
async fn a_control_plane_that_does_not_long_poll_is_asked_once_a_second() {
    let us = Origin::start(US).await;
    let good = table(1, 1, Some(US), &[(US, "active")]).to_string();
    let control = ScriptedControl::start_without_etags(good.into()).await;
    let proxy = proxy_of(&control, &us).await;
    let (first, from) = (control.asks(), std::time::Instant::now());
    eventually(
        "the table is asked for again",
        Duration::from_secs(10),
        || async { control.asks() >= first + 2 },
    )
    .await;
    // Two more asks: at least a second apart each.
    assert!(
        from.elapsed() >= Duration::from_secs(1),
        "{:?}",
        from.elapsed()
    );
    assert_eq!(proxy.table_version().await, Some(1));
    assert_eq!(proxy.metric("edgeroute_control_errors_total").await, 0.0);
}

/// A 304 that names another table than the one asked about, or any
/// answer a cache gave (one with an `Age`), confirms nothing: each is a
/// failed ask, said so, and the table is asked for whole next.
#[tokio::test]
async fn a_304_for_another_table_or_a_caches_answer_is_a_failed_ask() {
    let us = Origin::start(US).await;
    let good = table(1, 1, Some(US), &[(US, "active")]).to_string();
    let control = ScriptedControl::start_foreign_304(good.clone().into()).await;
    let proxy = proxy_of(&control, &us).await;
    eventually(
        "the foreign 304s are counted",
        Duration::from_secs(10),
        || async { proxy.metric("edgeroute_control_errors_total").await >= 2.0 },
    )
    .await;
    let log = proxy.log();
    assert!(
        log.contains("304 Not Modified for the table with ETag \"cached\", not for the one asked about (ETag \"0\"); not taken as a confirmation"),
        "{log}"
    );
    // After each, the table was asked for whole (no If-None-Match).
    let whole = control.whole_asks();
    eventually(
        "the table is asked for whole again",
        Duration::from_secs(10),
        || async { control.whole_asks() >= whole + 2 },
    )
    .await;
    assert_eq!(proxy.table_version().await, Some(1));

    // A cache's answers (with Age) are not taken at all: no table comes
    // of them.
    let cache = ScriptedControl::start_cached(good.into()).await;
    let proxy = cache
        .proxy(ProxyBuilder::new(US).region(US, &[us.addr]))
        .start_live()
        .await;
    eventually(
        "the cached answers are counted",
        Duration::from_secs(10),
        || async { proxy.metric("edgeroute_control_errors_total").await >= 2.0 },
    )
    .await;
    assert!(
        proxy
            .log()
            .contains("a cache answered for the control plane (200 OK, Age: 5)")
    );
    assert_eq!(proxy.table_version().await, None);
}

/// A control plane that answers "not modified" before the proxy has any
/// table from it has answered nothing: the proxy counts and logs it as a
/// failed ask, and is not ready.
#[tokio::test]
async fn a_304_to_a_proxy_with_no_table_is_a_failed_ask() {
    let us = Origin::start(US).await;
    let control = ScriptedControl::start_not_modified().await;
    let proxy = control
        .proxy(ProxyBuilder::new(US).region(US, &[us.addr]))
        .start_live()
        .await;
    eventually("the 304 is counted", Duration::from_secs(10), || async {
        proxy.metric("edgeroute_control_errors_total").await >= 1.0
    })
    .await;
    assert!(
        proxy
            .log()
            .contains("304 Not Modified to a request that named no table"),
        "{}",
        proxy.log()
    );
    let ready = client()
        .get(proxy.admin_url("/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
}

/// A control plane that answers every ask with a new table (a broken one,
/// or a source that flaps) is asked at most ten times a second, not as
/// fast as it answers; every table is still taken.
#[tokio::test]
async fn a_control_plane_with_a_new_table_every_time_is_not_asked_in_a_loop() {
    let us = Origin::start(US).await;
    let tables = (1..=21)
        .map(|v| table(1, v, Some(US), &[(US, "active")]).to_string().into())
        .collect();
    let control = ScriptedControl::start(tables).await;
    let from = std::time::Instant::now();
    let proxy = control
        .proxy(ProxyBuilder::new(US).region(US, &[us.addr]))
        .start_live()
        .await;
    eventually(
        "the last table is in force",
        Duration::from_secs(20),
        || async { proxy.table_version().await == Some(21) },
    )
    .await;
    // 21 asks, each at least 100 ms after the one before.
    assert!(
        from.elapsed() >= Duration::from_secs(2),
        "{:?}",
        from.elapsed()
    );
    assert_eq!(proxy.metric("edgeroute_table_swaps_total").await, 21.0);
}

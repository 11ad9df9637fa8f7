//! The proxy judges its backends itself: probes, outliers, latency.

use edgeroute_tests::{Origin, Proxy, ProxyBuilder, client, eventually, table};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";
const AP: &str = "ap-southeast-1";
const WAIT: Duration = Duration::from_secs(20);

/// Probes every 300 ms, each given 250 ms: quick, with room for a busy
/// machine, so that no probe fails for being slow.
const PROBE_PACE: &str = "[health]\ninterval = \"300ms\"\ntimeout = \"250ms\"\njitter = \"0ms\"\n";

/// [`PROBE_PACE`], out after 3 failed probes and back after 2 passes.
fn fast_probes() -> String {
    format!("{PROBE_PACE}fall = 3\nrise = 2\n")
}

async fn backend(proxy: &Proxy, region: usize, index: usize) -> Value {
    proxy.routing().await["regions"][region]["backends"][index].clone()
}

async fn served_by(proxy: &Proxy) -> String {
    let resp = client().get(proxy.url("/read")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.headers()["x-edgeroute-region"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_failing_backend_leaves_after_fall_probes_and_returns_after_rise() {
    let a = Origin::start(US).await;
    let b = Origin::start(US).await;
    let proxy = ProxyBuilder::new(US)
        .region(US, &[a.addr, b.addr])
        .extra(&fast_probes())
        .start()
        .await;
    assert_eq!(backend(&proxy, 0, 0).await["live"], true);

    let before = a.probes();
    a.set_health(503);
    eventually("backend a leaves rotation", WAIT, || async {
        backend(&proxy, 0, 0).await["live"] == false
    })
    .await;
    assert!(
        a.probes() - before >= 3,
        "left after {} failed probes, fall is 3",
        a.probes() - before
    );
    // Out of rotation, it gets no traffic.
    let seen_by_a = a.seen().len();
    for _ in 0..10 {
        client().get(proxy.url("/x")).send().await.unwrap();
    }
    assert_eq!(a.seen().len(), seen_by_a);
    assert_eq!(b.seen().len(), 10);

    let before = a.probes();
    a.set_health(200);
    eventually("backend a returns", WAIT, || async {
        backend(&proxy, 0, 0).await["live"] == true
    })
    .await;
    assert!(
        a.probes() - before >= 2,
        "returned after {} passed probes, rise is 2",
        a.probes() - before
    );
    assert!(
        proxy
            .metric(&format!(
                "edgeroute_probes_total{{backend=\"{}\",region=\"{US}\",result=\"fail\"}}",
                a.addr
            ))
            .await
            >= 3.0
    );
}

#[tokio::test]
async fn a_new_backend_is_unproven_until_its_first_probe_passes() {
    let good = Origin::start(US).await;
    let never = Origin::start(US).await;
    never.set_health(500);
    let proxy = ProxyBuilder::new(US)
        .region(US, &[good.addr, never.addr])
        .extra(&fast_probes())
        .start()
        .await;
    let b = backend(&proxy, 0, 1).await;
    assert_eq!(b["live"], false, "never passed a probe: {b}");
    for _ in 0..10 {
        assert_eq!(
            client().get(proxy.url("/x")).send().await.unwrap().status(),
            200
        );
    }
    assert_eq!(never.seen().len(), 0, "an unproven backend gets no traffic");
    // Its failures are logged once, with the reason, not once per probe.
    let failed = format!(
        "edgeroute_probes_total{{backend=\"{}\",region=\"{US}\",result=\"fail\"}}",
        never.addr
    );
    eventually("four failed probes", WAIT, || async {
        proxy.metric(&failed).await >= 4.0
    })
    .await;
    let told = |log: &str| {
        log.lines()
            .filter(|l| l.contains("backend not in rotation: probe failed"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let lines = told(&proxy.log());
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains(&never.addr.to_string()) && lines[0].contains("status 500"),
        "{lines:?}"
    );
    never.set_health(200);
    eventually("its first pass admits it", WAIT, || async {
        backend(&proxy, 0, 1).await["live"] == true
    })
    .await;
    assert!(proxy.log().contains("backend in rotation: probe passed"));
}

#[tokio::test]
async fn a_backend_answering_5xx_is_ejected_then_readmitted_and_the_cap_holds() {
    let a = Origin::start(US).await;
    let b = Origin::start(US).await;
    let proxy = ProxyBuilder::new(US)
        .region(US, &[a.addr, b.addr])
        .extra(
            &format!(
                "{PROBE_PACE}eject_after = 3\neject_for = \"5s\"\nmax_eject_for = \"10s\"\nmax_ejection_percent = 50\n"
            ),
        )
        .start()
        .await;
    let c = client();
    // b is the slower one, so latency-aware balancing sends to a first.
    b.set_delay(Duration::from_millis(20));
    a.set_status(500);
    eventually("a is ejected", WAIT, || async {
        c.get(proxy.url("/x")).send().await.unwrap();
        backend(&proxy, 0, 0).await["ejected"] == true
    })
    .await;
    let label = format!(
        "edgeroute_backend_ejections_total{{backend=\"{}\",region=\"{US}\"}}",
        a.addr
    );
    assert_eq!(proxy.metric(&label).await, 1.0);
    // While a is out, everything goes to b.
    let on_b = b.seen().len();
    for _ in 0..5 {
        assert_eq!(c.get(proxy.url("/x")).send().await.unwrap().status(), 200);
    }
    assert_eq!(b.seen().len(), on_b + 5);

    // b fails too, but at most 50% of two backends may be out: b stays in.
    b.set_status(500);
    for _ in 0..10 {
        c.get(proxy.url("/x")).send().await.unwrap();
    }
    assert!(
        proxy
            .metric(&format!(
                "edgeroute_backend_ejections_suppressed_total{{region=\"{US}\"}}"
            ))
            .await
            >= 1.0
    );
    let routing = proxy.routing().await;
    let ejected = routing["regions"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["ejected"] == true)
        .count();
    assert!(ejected <= 1, "{routing}");

    // a recovers; after its ejection runs out it serves again.
    a.set_status(200);
    b.set_status(200);
    eventually("a is re-admitted and serves", WAIT, || async {
        let before = a.seen().len();
        c.get(proxy.url("/x")).send().await.unwrap();
        backend(&proxy, 0, 0).await["ejected"] == false && a.seen().len() > before
    })
    .await;
    // The end of the ejection is logged, as its start was.
    eventually("the end of a's ejection is logged", WAIT, || async {
        proxy
            .log()
            .lines()
            .any(|l| l.contains("ejection is over") && l.contains(&a.addr.to_string()))
    })
    .await;
}

/// A backend that passes its probes but breaks off every request (it
/// closes the connection without an answer) is ejected like one that
/// answers 5xx, and is not taken for a fast one meanwhile: every GET is
/// served, by the other backend or on a retry.
#[tokio::test]
async fn a_backend_that_breaks_off_its_exchanges_is_ejected() {
    let good = Origin::start(US).await;
    // Slower than the broken one, probes included: of the two, the broken
    // one is picked first for every request until it is ejected (each
    // request then goes on to the good one), not only when the two
    // latency estimates happen to cross.
    good.set_delay(Duration::from_millis(30));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broken = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 || !buf[..n].starts_with(b"GET /health ") {
                        return;
                    }
                    if conn.write_all(OK).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let proxy = ProxyBuilder::new(US)
        .region(US, &[broken, good.addr])
        .extra(
            &format!(
                "{PROBE_PACE}eject_after = 3\neject_for = \"1h\"\nmax_eject_for = \"1h\"\nmax_ejection_percent = 50\n"
            ),
        )
        .start()
        .await;
    let c = client();
    eventually("the broken backend is ejected", WAIT, || async {
        assert_eq!(c.get(proxy.url("/x")).send().await.unwrap().status(), 200);
        backend(&proxy, 0, 0).await["ejected"] == true
    })
    .await;
    let ejections =
        format!("edgeroute_backend_ejections_total{{backend=\"{broken}\",region=\"{US}\"}}");
    assert_eq!(proxy.metric(&ejections).await, 1.0);
    assert_eq!(backend(&proxy, 0, 1).await["ejected"], false);
    let before = good.seen().len();
    for _ in 0..5 {
        assert_eq!(c.get(proxy.url("/x")).send().await.unwrap().status(), 200);
    }
    assert_eq!(good.seen().len(), before + 5);
}

/// A region's own 5xx answers never take its last backend in rotation
/// out: they go on to the clients rather than a refusal for every request
/// (writes to the primary above all), and the ejection that was not made
/// is counted once.
#[tokio::test]
async fn answers_never_eject_a_regions_last_backend() {
    let only = Origin::start(US).await;
    let proxy = ProxyBuilder::new(US)
        .region(US, &[only.addr])
        .extra(&format!("{PROBE_PACE}eject_after = 3\n"))
        .start()
        .await;
    only.set_status(500);
    let c = client();
    for _ in 0..10 {
        let answer = c.post(proxy.url("/write")).send().await.unwrap();
        assert_eq!(answer.status(), 500, "the backend's own answer");
    }
    assert_eq!(backend(&proxy, 0, 0).await["ejected"], false);
    let suppressed = format!("edgeroute_backend_ejections_suppressed_total{{region=\"{US}\"}}");
    assert_eq!(proxy.metric(&suppressed).await, 1.0);
}

#[tokio::test]
async fn reads_leaving_a_down_region_go_to_the_lowest_latency_region_and_follow_changes() {
    let us = Origin::start(US).await;
    let eu = Origin::start(EU).await;
    let ap = Origin::start(AP).await;
    us.set_delay(Duration::from_millis(5));
    eu.set_delay(Duration::from_millis(80));
    ap.set_delay(Duration::from_millis(40));
    let proxy = ProxyBuilder::new(US)
        .region(US, &[us.addr])
        .region(EU, &[eu.addr])
        .region(AP, &[ap.addr])
        .table(table(
            1,
            1,
            Some(AP),
            &[(US, "down"), (EU, "active"), (AP, "active")],
        ))
        .extra(&format!("{PROBE_PACE}latency_decay = \"300ms\"\n"))
        .start()
        .await;
    eventually("reads go to the nearer region", WAIT, || async {
        served_by(&proxy).await == AP
    })
    .await;
    // Latencies change: eu-west-1 becomes the nearest.
    eu.set_delay(Duration::from_millis(2));
    ap.set_delay(Duration::from_millis(60));
    // The read's region and the routing view are observed together: a
    // slow probe on a busy machine may move the estimates between two looks.
    eventually(
        "reads follow the new nearest region, which the routing view shows nearer",
        WAIT,
        || async {
            let served = served_by(&proxy).await;
            let routing = proxy.routing().await;
            let eu_ms = routing["regions"][1]["latency_ms"]
                .as_f64()
                .unwrap_or(f64::MAX);
            let ap_ms = routing["regions"][2]["latency_ms"].as_f64().unwrap_or(0.0);
            served == EU && eu_ms < ap_ms
        },
    )
    .await;
    // Writes still go to the primary only, however far it is.
    let resp = client()
        .post(proxy.url("/w"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-edgeroute-region"], AP);
}

/// Probes and plain-TCP forwarding keep to tokio's timers: Pingora's own
/// timer starts a clock thread on first use that wakes 100 times a second
/// for the life of the process.
#[tokio::test]
async fn probes_and_forwarding_start_no_clock_thread() {
    let a = Origin::start(US).await;
    let proxy = ProxyBuilder::new(US)
        .region(US, &[a.addr])
        .extra(&fast_probes())
        .start()
        .await;
    eventually("probes pass on a pooled connection", WAIT, || async {
        a.probes() >= 4
    })
    .await;
    for _ in 0..5 {
        assert_eq!(
            client().get(proxy.url("/x")).send().await.unwrap().status(),
            200
        );
    }
    let names = proxy.thread_names();
    assert!(
        names.iter().any(|n| n.starts_with("edgeroute")),
        "the proxy's own threads are listed: {names:?}"
    );
    assert!(
        !names.iter().any(|n| n == "Timer thread"),
        "a clock thread runs: {names:?}"
    );
}

/// `200 ok`.
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// A backend that answers `answer` to every request head and counts its
/// connections and requests; with `close`, it closes each connection
/// shortly after its answer without saying so.
async fn counting_backend(
    close: bool,
    answer: &'static [u8],
) -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (conns, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (c, r) = (Arc::clone(&conns), Arc::clone(&requests));
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let r = Arc::clone(&r);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        r.fetch_add(1, Ordering::SeqCst);
                        if conn.write_all(answer).await.is_err() {
                            return;
                        }
                        if close {
                            // Between probes (300 ms apart), after the
                            // proxy has kept the connection.
                            tokio::time::sleep(Duration::from_millis(30)).await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, conns, requests)
}

#[tokio::test]
async fn probes_keep_their_connection_and_replace_one_the_backend_closed() {
    let (kept_addr, kept_conns, kept_probes) = counting_backend(false, OK).await;
    let (closing_addr, closing_conns, closing_probes) = counting_backend(true, OK).await;
    let proxy = ProxyBuilder::new(US)
        .region(US, &[kept_addr, closing_addr])
        .extra(&fast_probes())
        .start()
        .await;
    eventually("both backends probed five times", WAIT, || async {
        kept_probes.load(Ordering::SeqCst) >= 5 && closing_probes.load(Ordering::SeqCst) >= 5
    })
    .await;
    assert_eq!(
        kept_conns.load(Ordering::SeqCst),
        1,
        "every probe on the first connection"
    );
    assert!(closing_conns.load(Ordering::SeqCst) >= 5);
    for addr in [kept_addr, closing_addr] {
        assert_eq!(
            proxy.metric(&probes(addr, "fail")).await,
            0.0,
            "a probe failed on {addr}"
        );
        assert!(
            proxy.metric(&probes(addr, "pass")).await >= 5.0,
            "{addr} probed"
        );
    }
}

/// The series of `edgeroute_probes_total` of `addr` in us-east-1.
fn probes(addr: std::net::SocketAddr, result: &str) -> String {
    format!("edgeroute_probes_total{{backend=\"{addr}\",region=\"{US}\",result=\"{result}\"}}")
}

/// A probe answered first with interim heads (`100`, `103 Early Hints`)
/// takes the final one; a `101` nobody asked for fails the probe. Either
/// way probing goes on, and the proxy becomes ready.
#[tokio::test]
async fn a_probe_reads_past_interim_answers_and_fails_on_an_unasked_upgrade() {
    const EARLY_HINTS: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\
        Link: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    const UPGRADE: &[u8] =
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
    let (hints_addr, _, hints_probes) = counting_backend(false, EARLY_HINTS).await;
    let (upgrade_addr, _, upgrade_probes) = counting_backend(true, UPGRADE).await;
    let proxy = ProxyBuilder::new(US)
        .region(US, &[hints_addr, upgrade_addr])
        .extra(&fast_probes())
        .start()
        .await;
    eventually("both backends probed three times", WAIT, || async {
        hints_probes.load(Ordering::SeqCst) >= 3 && upgrade_probes.load(Ordering::SeqCst) >= 3
    })
    .await;
    assert!(proxy.metric(&probes(hints_addr, "pass")).await >= 2.0);
    assert_eq!(proxy.metric(&probes(hints_addr, "fail")).await, 0.0);
    assert!(proxy.metric(&probes(upgrade_addr, "fail")).await >= 2.0);
    assert_eq!(proxy.metric(&probes(upgrade_addr, "pass")).await, 0.0);
    let ready = client()
        .get(proxy.admin_url("/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

/// What Route 53's health check and the load balancer probe through the
/// load balancer, on the traffic listener: the proxy answers `GET` and
/// `HEAD /health` itself, 503 once the local region has no backend in
/// rotation (though reads still find another region), as the admin
/// `/health` does; other methods and paths go to the backends.
#[tokio::test]
async fn the_traffic_listener_answers_health_for_the_local_region() {
    let us = Origin::start(US).await;
    let eu = Origin::start(EU).await;
    let proxy = ProxyBuilder::new(US)
        .region(US, &[us.addr])
        .region(EU, &[eu.addr])
        .extra(&fast_probes())
        .start()
        .await;
    // The proxy's own answer, which names no region that served it.
    let health = |method: reqwest::Method| {
        let url = proxy.url("/health");
        async move {
            let resp = client().request(method, url).send().await.unwrap();
            assert!(resp.headers().get("x-edgeroute-region").is_none());
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap())
        }
    };
    let admin = || async {
        client()
            .get(proxy.admin_url("/health"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let (status, body) = health(reqwest::Method::GET).await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["region"], US);
    assert_eq!(health(reqwest::Method::HEAD).await, (200, String::new()));
    let post = client().post(proxy.url("/health")).send().await.unwrap();
    assert_eq!(post.status(), 200);
    assert_eq!(
        post.headers()["x-edgeroute-region"],
        US,
        "a POST goes to the backends"
    );

    // The local region's one backend fails its probes: reads move to
    // eu-west-1, and the region says it is unhealthy.
    us.set_health(503);
    eventually("the local backend leaves rotation", WAIT, || async {
        backend(&proxy, 0, 0).await["live"] == false
    })
    .await;
    assert_eq!(served_by(&proxy).await, EU);
    let (status, body) = health(reqwest::Method::GET).await;
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["reason"], "no_backend_in_rotation");
    assert_eq!(admin().await, 503);
    assert_eq!(health(reqwest::Method::HEAD).await.0, 503);

    us.set_health(200);
    eventually("the local backend returns", WAIT, || async {
        health(reqwest::Method::GET).await.0 == 200
    })
    .await;
    assert_eq!(admin().await, 200);
}

/// `/health` follows the local region's backends in rotation, however
/// many: unhealthy only when none is (one back is enough), whatever the
/// other regions do, and whatever the table says of the region: its
/// `down` comes from Route 53's health checks, which probe this answer,
/// and a region it held down would never come back.
#[tokio::test]
async fn health_is_unhealthy_exactly_when_no_local_backend_is_in_rotation() {
    let us = [
        Origin::start(US).await,
        Origin::start(US).await,
        Origin::start(US).await,
    ];
    let eu = Origin::start(EU).await;
    let proxy = ProxyBuilder::new(US)
        .region(US, &[us[0].addr, us[1].addr, us[2].addr])
        .region(EU, &[eu.addr])
        .extra(&fast_probes())
        .start()
        .await;
    let health = || async {
        let resp = client()
            .get(proxy.admin_url("/health"))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        (status, body["reason"].as_str().unwrap_or("").to_owned())
    };
    let live = || async {
        let routing = proxy.routing().await;
        (0..3)
            .filter(|i| routing["regions"][0]["backends"][i]["live"] == true)
            .count()
    };
    eventually("every backend is in rotation", WAIT, || async {
        live().await == 3
    })
    .await;
    assert_eq!(health().await, (200, String::new()));
    // Two of three out: still healthy.
    us[0].set_health(503);
    us[1].set_health(503);
    eventually("two backends leave rotation", WAIT, || async {
        live().await == 1
    })
    .await;
    assert_eq!(health().await, (200, String::new()));
    // The last one out: unhealthy, though eu-west-1 serves on.
    us[2].set_health(503);
    eventually("the last backend leaves rotation", WAIT, || async {
        live().await == 0
    })
    .await;
    assert_eq!(health().await, (503, "no_backend_in_rotation".to_owned()));
    assert_eq!(served_by(&proxy).await, EU);
    // One back is enough.
    us[1].set_health(200);
    eventually("one backend returns", WAIT, || async { live().await == 1 }).await;
    assert_eq!(health().await, (200, String::new()));
    // Backends in rotation, and the table marks the region down (as it
    // does while Route 53's check of this answer fails): healthy, so that
    // the check passes again and the region comes back; reads go to
    // eu-west-1 meanwhile.
    proxy
        .swap_table(&table(2, 2, Some(EU), &[(US, "down"), (EU, "active")]))
        .await;
    assert_eq!(health().await, (200, String::new()));
    assert_eq!(served_by(&proxy).await, EU);
    // A table that leaves the region out: likewise.
    proxy
        .swap_table(&table(3, 3, Some(EU), &[(EU, "active")]))
        .await;
    assert_eq!(health().await, (200, String::new()));
}

/// With `health.listener_path = ""` every path goes to the backends.
#[tokio::test]
async fn health_on_the_traffic_listener_can_be_left_to_the_backends() {
    let us = Origin::start(US).await;
    let proxy = ProxyBuilder::new(US)
        .region(US, &[us.addr])
        .extra("[health]\nprobes = false\nlistener_path = \"\"\n")
        .start()
        .await;
    let resp = client().get(proxy.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-edgeroute-region"], US);
    assert_eq!(us.probes(), 1, "the backend answered it");
}

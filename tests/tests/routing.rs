//! Reads stay local, writes go to the primary: against the real binary.

use edgeroute_tests::{Origin, ProxyBuilder, client, table};
use serde_json::Value;

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";
const AP: &str = "ap-southeast-1";

struct World {
    us: Origin,
    eu: Origin,
    ap: Origin,
}

async fn world() -> World {
    World {
        us: Origin::start(US).await,
        eu: Origin::start(EU).await,
        ap: Origin::start(AP).await,
    }
}

fn builder(w: &World) -> ProxyBuilder {
    ProxyBuilder::new(US)
        .region(US, &[w.us.addr])
        .region(EU, &[w.eu.addr])
        .region(AP, &[w.ap.addr])
}

async fn served_by(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let region = resp
        .headers()
        .get("x-edgeroute-region")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (status, region)
}

#[tokio::test]
async fn reads_are_served_locally_and_move_when_local_is_down_or_draining() {
    let w = world().await;
    // eu-west-1 is measured nearer than ap-southeast-1.
    w.ap.set_delay(std::time::Duration::from_millis(30));
    let proxy = builder(&w)
        .table(table(
            1,
            1,
            Some(EU),
            &[(US, "active"), (EU, "active"), (AP, "active")],
        ))
        .start()
        .await;
    let c = client();

    for _ in 0..5 {
        assert_eq!(
            served_by(c.get(proxy.url("/items")).send().await.unwrap()).await,
            (200, US.into())
        );
    }
    assert_eq!(w.us.count("GET"), 5);

    proxy
        .swap_table(&table(
            1,
            2,
            Some(EU),
            &[(US, "down"), (EU, "active"), (AP, "active")],
        ))
        .await;
    assert_eq!(
        served_by(c.get(proxy.url("/items")).send().await.unwrap()).await,
        (200, EU.into())
    );

    proxy
        .swap_table(&table(
            1,
            3,
            Some(EU),
            &[(US, "draining"), (EU, "down"), (AP, "active")],
        ))
        .await;
    assert_eq!(
        served_by(c.get(proxy.url("/items")).send().await.unwrap()).await,
        (200, AP.into())
    );

    // With the local region down in the table (as Route 53's check of
    // /health says while it fails), reads move away, and /health answers
    // by the local backends, which pass: the check passes again and the
    // region comes back.
    proxy
        .swap_table(&table(
            1,
            4,
            Some(EU),
            &[(US, "down"), (EU, "active"), (AP, "active")],
        ))
        .await;
    assert_ne!(
        served_by(c.get(proxy.url("/items")).send().await.unwrap())
            .await
            .1,
        US
    );
    assert_eq!(
        c.get(proxy.admin_url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(proxy.admin_url("/health/read"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Everything down: a clear 503, not a hang.
    proxy
        .swap_table(&table(
            1,
            5,
            Some(EU),
            &[(US, "down"), (EU, "down"), (AP, "down")],
        ))
        .await;
    let resp = c.get(proxy.url("/items")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "no_region_available");
}

#[tokio::test]
async fn a_local_region_without_reachable_backends_sends_reads_elsewhere() {
    let w = world().await;
    w.us.stop();
    let proxy = builder(&w).start().await;
    let c = client();
    // The first read finds us-east-1 refusing connections and is retried elsewhere.
    for _ in 0..4 {
        let (status, region) = served_by(c.get(proxy.url("/items")).send().await.unwrap()).await;
        assert_eq!(status, 200);
        assert_ne!(region, US);
    }
}

#[tokio::test]
async fn writes_reach_the_primary_only_and_follow_it_within_one_reload() {
    let w = world().await;
    let proxy = builder(&w).start().await;
    let c = client();

    for _ in 0..3 {
        assert_eq!(
            served_by(
                c.post(proxy.url("/orders"))
                    .body("{}")
                    .send()
                    .await
                    .unwrap()
            )
            .await,
            (200, US.into())
        );
    }
    proxy
        .swap_table(&table(
            2,
            2,
            Some(AP),
            &[(US, "active"), (EU, "active"), (AP, "active")],
        ))
        .await;
    for _ in 0..3 {
        assert_eq!(
            served_by(
                c.put(proxy.url("/orders/1"))
                    .body("{}")
                    .send()
                    .await
                    .unwrap()
            )
            .await,
            (200, AP.into())
        );
    }
    // Reads stay local whatever the primary.
    assert_eq!(
        served_by(c.get(proxy.url("/orders/1")).send().await.unwrap()).await,
        (200, US.into())
    );
    // Unless the client asks for strong consistency.
    let strong = c
        .get(proxy.url("/orders/1"))
        .header("x-edgeroute-consistency", "strong")
        .send()
        .await
        .unwrap();
    assert_eq!(served_by(strong).await, (200, AP.into()));

    assert_eq!(w.us.count("POST"), 3);
    assert_eq!(w.ap.count("PUT"), 3);
    assert_eq!(w.eu.seen().len(), 0);
    assert_eq!(w.us.count("PUT") + w.eu.count("PUT"), 0);
    // Each write carried the epoch of the table that routed it.
    assert!(
        w.us.seen()
            .iter()
            .filter(|s| s.method == "POST")
            .all(|s| s.header("x-edgeroute-epoch") == Some("1"))
    );
    assert!(
        w.ap.seen()
            .iter()
            .filter(|s| s.method == "PUT")
            .all(|s| s.header("x-edgeroute-epoch") == Some("2"))
    );

    // The file watcher alone (no SIGHUP) moves writes too.
    proxy.write_table(&table(
        3,
        3,
        Some(EU),
        &[(US, "active"), (EU, "active"), (AP, "active")],
    ));
    edgeroute_tests::eventually(
        "epoch 3 in force",
        std::time::Duration::from_secs(10),
        || async { proxy.table_version().await == Some(3) },
    )
    .await;
    assert_eq!(
        served_by(c.delete(proxy.url("/orders/1")).send().await.unwrap()).await,
        (200, EU.into())
    );
}

#[tokio::test]
async fn failover_in_progress_or_no_primary_holds_writes_and_no_origin_sees_them() {
    let w = world().await;
    let mut t = table(
        4,
        1,
        Some(EU),
        &[(US, "active"), (EU, "active"), (AP, "active")],
    );
    t["failover_in_progress"] = true.into();
    let proxy = builder(&w).table(t).start().await;
    let c = client();

    for method in [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::PATCH,
        reqwest::Method::DELETE,
    ] {
        let resp = c
            .request(method, proxy.url("/orders"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "2");
        assert_eq!(resp.headers()["x-edgeroute-error"], "failover_in_progress");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "failover_in_progress");
        assert_eq!(body["epoch"], 4);
    }
    // Reads are unaffected.
    assert_eq!(
        served_by(c.get(proxy.url("/orders")).send().await.unwrap()).await,
        (200, US.into())
    );
    assert_eq!(
        c.get(proxy.admin_url("/health/write"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );

    proxy
        .swap_table(&table(
            5,
            2,
            None,
            &[(US, "active"), (EU, "active"), (AP, "active")],
        ))
        .await;
    let resp = c
        .post(proxy.url("/orders"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(resp.json::<Value>().await.unwrap()["error"], "no_primary");

    let writes: usize = [&w.us, &w.eu, &w.ap]
        .iter()
        .map(|o| o.seen().iter().filter(|s| s.method != "GET").count())
        .sum();
    assert_eq!(writes, 0, "no origin may see a held write");
    assert_eq!(
        proxy
            .metric("edgeroute_refusals_total{reason=\"failover_in_progress\"}")
            .await,
        4.0
    );
}

#[tokio::test]
async fn upstream_and_client_headers() {
    let w = world().await;
    let proxy = builder(&w).start().await;
    let c = client();

    let resp = c
        .post(proxy.url("/orders"))
        .header("x-request-id", "req-123")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-edgeroute-route", "read")
        .header("x-edgeroute-epoch", "999")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-edgeroute-region"], US);
    assert_eq!(resp.headers()["x-request-id"], "req-123");
    let seen = &w.us.seen()[0];
    assert_eq!(
        seen.header("x-edgeroute-route"),
        Some("write"),
        "a client cannot relabel its request"
    );
    assert_eq!(seen.header("x-edgeroute-epoch"), Some("1"));
    assert_eq!(seen.header("x-request-id"), Some("req-123"));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));

    let resp = c.get(proxy.url("/items")).send().await.unwrap();
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(
        generated.len(),
        36,
        "a UUID is generated when the client sends none"
    );
    let seen = &w.us.seen()[1];
    assert_eq!(seen.header("x-request-id"), Some(generated.as_str()));
    assert_eq!(seen.header("x-edgeroute-route"), Some("read"));

    // One that is not visible text (it could not be logged as one
    // token) is replaced.
    for (i, id) in [&b"caf\xe9"[..], b"has space"].into_iter().enumerate() {
        let resp = c
            .get(proxy.url("/items"))
            .header(
                "x-request-id",
                reqwest::header::HeaderValue::from_bytes(id).unwrap(),
            )
            .send()
            .await
            .unwrap();
        let replaced = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(replaced.len(), 36, "{replaced}");
        assert_eq!(
            w.us.seen()[2 + i].header("x-request-id"),
            Some(replaced.as_str())
        );
    }
}

#[tokio::test]
async fn route_rules_override_method_classes() {
    let w = world().await;
    let proxy = builder(&w)
        .table(table(1, 1, Some(EU), &[(US, "active"), (EU, "active"), (AP, "active")]))
        .extra("[[routes]]\nprefix = \"/search\"\nmethods = [\"POST\"]\nroute = \"nearest\"\n\n[[routes]]\nprefix = \"/me\"\nroute = \"primary\"\n")
        .start()
        .await;
    let c = client();
    assert_eq!(
        served_by(c.post(proxy.url("/search")).body("q").send().await.unwrap()).await,
        (200, US.into())
    );
    assert_eq!(
        served_by(c.get(proxy.url("/me")).send().await.unwrap()).await,
        (200, EU.into())
    );
    assert_eq!(w.us.seen()[0].header("x-edgeroute-route"), Some("read"));
    assert_eq!(w.eu.seen()[0].header("x-edgeroute-route"), Some("write"));
    // A rule takes whole segments of a plain path: these writes name
    // `/search` but are not under it, so they go to the primary.
    for path in [
        "/searchable",
        "/search/..%2forders",
        "/search/%2e%2e/orders",
    ] {
        assert_eq!(
            served_by(c.post(proxy.url(path)).body("q").send().await.unwrap()).await,
            (200, EU.into()),
            "{path}"
        );
    }
    assert_eq!(
        w.us.count("POST"),
        1,
        "only the plain /search write stays local"
    );
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_413() {
    let w = world().await;
    let proxy = builder(&w)
        .extra("[limits]\nmax_request_body = \"1KiB\"\n")
        .start()
        .await;
    let c = client();
    let resp = c
        .post(proxy.url("/upload"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "body_too_large"
    );
    assert_eq!(w.us.count("POST"), 0);
    // Counted as the write it is, though no region was chosen for it.
    edgeroute_tests::eventually(
        "the refused write is counted",
        std::time::Duration::from_secs(5),
        || async {
            proxy
                .metric("edgeroute_requests_total{region=\"none\",route=\"write\",status=\"413\"}")
                .await
                == 1.0
        },
    )
    .await;
    let ok = c
        .post(proxy.url("/upload"))
        .body(vec![b'x'; 512])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // A chunked body says its size only as it comes: it is found too
    // large while forwarded, and refused all the same.
    let mut conn = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut request =
        b"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n"
            .to_vec();
    request.extend([b'x'; 0x800]);
    request.extend(b"\r\n0\r\n\r\n");
    let answer = edgeroute_tests::answer_to(&mut conn, &request).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // A backend had been picked for it.
    assert!(answer.contains("x-edgeroute-region: us-east-1"), "{answer}");
    assert_eq!(
        proxy
            .metric("edgeroute_refusals_total{reason=\"body_too_large\"}")
            .await,
        2.0
    );
    // The refusal's access line names no table epoch: none was read for it.
    let answered = proxy.access_line(&["status=200"]).await;
    assert!(answered.contains(" epoch="), "{answered}");
    let refused = proxy.access_line(&["status=413"]).await;
    assert!(!refused.contains("epoch="), "{refused}");
}

#[tokio::test]
async fn admin_endpoints_report_state() {
    let w = world().await;
    let proxy = builder(&w).start().await;
    let c = client();
    proxy.assert_open_admin_paths_ok().await;
    let routing = proxy.routing().await;
    assert_eq!(routing["local_region"], US);
    assert_eq!(routing["table"]["primary_region"], US);
    assert_eq!(routing["regions"][0]["live_backends"], 1);
    c.get(proxy.url("/x")).send().await.unwrap();
    // The request is counted once its response is complete, just after the client sees it.
    edgeroute_tests::eventually(
        "the read is counted",
        std::time::Duration::from_secs(5),
        || async {
            proxy
                .metric(
                    "edgeroute_requests_total{region=\"us-east-1\",route=\"read\",status=\"200\"}",
                )
                .await
                == 1.0
        },
    )
    .await;
    assert_eq!(proxy.metric("edgeroute_table_epoch").await, 1.0);
    assert_eq!(proxy.metric("edgeroute_table_version").await, 1.0);
    assert_eq!(
        c.get(proxy.admin_url("/nope"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

/// Read-your-writes: a write's answer carries a cookie, and the reads that
/// bring it back within `read_your_writes.window` go to the primary; a
/// token past its time, or none, leaves reads local. A read the primary
/// cannot take (a failover under way, its backends failing) goes to the
/// nearest region rather than failing, and a `local` rule keeps its reads.
#[tokio::test]
async fn a_clients_reads_follow_its_write_to_the_primary_for_the_window() {
    let w = world().await;
    let proxy = builder(&w)
        .table(table(
            1,
            1,
            Some(EU),
            &[(US, "active"), (EU, "active"), (AP, "active")],
        ))
        .extra(
            "[health]\nprobes = false\neject_after = 100\n\n[read_your_writes]\nwindow = \"1h\"\n\n\
             [[routes]]\nprefix = \"/session\"\nroute = \"local\"\n\n\
             [[routes]]\nprefix = \"/account\"\nroute = \"primary\"\n",
        )
        .start()
        .await;
    let c = client();
    let write = c
        .post(proxy.url("/orders"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let set_cookie = write.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set_cookie.starts_with("edgeroute-ryw=") && set_cookie.contains("Max-Age=3600"),
        "{set_cookie}"
    );
    assert_eq!(served_by(write).await, (200, EU.into()));
    let token = set_cookie.split(';').next().unwrap().to_owned();
    let read_with = |path: &'static str, cookie: String| {
        c.get(proxy.url(path))
            .header("cookie", format!("session=abc; {cookie}"))
            .send()
    };
    let after_write = || proxy.metric("edgeroute_reads_after_write_total");
    assert_eq!(
        served_by(read_with("/orders/1", token.clone()).await.unwrap()).await,
        (200, EU.into())
    );
    assert_eq!(after_write().await, 1.0);
    // A `local` rule keeps its reads local.
    assert_eq!(
        served_by(read_with("/session", token.clone()).await.unwrap()).await,
        (200, US.into())
    );
    // A token past its time, or none: local. A read sets no cookie, and
    // neither does a read a `primary` rule sends to the primary.
    let expired = read_with("/orders/1", "edgeroute-ryw=1000".into())
        .await
        .unwrap();
    assert_eq!(served_by(expired).await, (200, US.into()));
    let plain = c.get(proxy.url("/orders/1")).send().await.unwrap();
    assert!(plain.headers().get("set-cookie").is_none());
    assert_eq!(served_by(plain).await, (200, US.into()));
    let account = c.get(proxy.url("/account")).send().await.unwrap();
    assert!(account.headers().get("set-cookie").is_none());
    assert_eq!(served_by(account).await, (200, EU.into()));
    assert_eq!(after_write().await, 1.0);

    // A failover under way: the read is not refused.
    let mut failing_over = table(
        2,
        2,
        Some(EU),
        &[(US, "active"), (EU, "active"), (AP, "active")],
    );
    failing_over["failover_in_progress"] = true.into();
    proxy.swap_table(&failing_over).await;
    // A write the proxy refuses reached no backend: no cookie.
    let refused = c
        .post(proxy.url("/orders"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().get("set-cookie").is_none());
    assert_eq!(
        served_by(read_with("/orders/1", token.clone()).await.unwrap()).await,
        (200, US.into())
    );
    assert_eq!(after_write().await, 1.0);
}

/// A read sent to the primary for its client's write goes to the nearest
/// region when the primary's backends fail, where a write, or a read
/// asking for strong consistency, gets 503.
#[tokio::test]
async fn a_read_after_a_write_whose_primary_fails_goes_to_the_nearest_region() {
    let us = Origin::start(US).await;
    let dead = Origin::start(EU).await;
    dead.stop();
    let proxy = ProxyBuilder::new(US)
        .region(US, &[us.addr])
        .region(EU, &[dead.addr])
        .table(table(1, 1, Some(EU), &[(US, "active"), (EU, "active")]))
        .extra("[health]\nprobes = false\neject_after = 100\n[read_your_writes]\nwindow = \"1h\"\n")
        .start()
        .await;
    // A token as a write's answer half an hour ago left it.
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 30 * 60 * 1000;
    let read = client()
        .get(proxy.url("/orders/1"))
        .header("cookie", format!("edgeroute-ryw={until}"))
        .send()
        .await
        .unwrap();
    assert_eq!(served_by(read).await, (200, US.into()));
    assert_eq!(proxy.metric("edgeroute_reads_after_write_total").await, 1.0);
    // A read that asks for strong consistency asks for the primary always.
    let strong = client()
        .get(proxy.url("/orders/1"))
        .header("x-edgeroute-consistency", "strong")
        .send()
        .await
        .unwrap();
    assert_eq!(strong.status(), 503);
    let write = client().post(proxy.url("/orders")).send().await.unwrap();
    assert_eq!(write.status(), 503);
    // A refusal after failed connects says nothing was done: no cookie,
    // and no region's error (counted once its response is complete, just
    // after the client sees it).
    assert!(write.headers().get("set-cookie").is_none());
    edgeroute_tests::eventually(
        "the refusal is counted under no region",
        std::time::Duration::from_secs(30),
        || async {
            proxy
                .metric("edgeroute_requests_total{region=\"none\",route=\"write\",status=\"503\"}")
                .await
                == 1.0
        },
    )
    .await;
}

/// `read_your_writes.window = "0s"` turns it off: no cookie on writes.
#[tokio::test]
async fn a_zero_window_sets_no_cookie() {
    let w = world().await;
    let proxy = builder(&w)
        .extra("[read_your_writes]\nwindow = \"0s\"\n")
        .start()
        .await;
    let write = client()
        .post(proxy.url("/orders"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 200);
    assert!(write.headers().get("set-cookie").is_none());
}

//! Retries: what failed to connect moves on; what may have reached a backend
//! is retried only when it is safe to repeat. A POST without an
//! `Idempotency-Key` is never delivered twice.

use edgeroute_tests::keepalive::ClosingBackend;
use edgeroute_tests::{Behaviour, Origin, Proxy, ProxyBuilder, client, eventually, table};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const US: &str = "us-east-1";
/// How long a condition may take to hold.
const GUARD: Duration = Duration::from_secs(30);

/// Two origins that take a request and die without answering as `dying`
/// says (a POST, or any), behind a proxy that neither probes nor ejects
/// them.
async fn dying_origins(dying: Behaviour) -> (Origin, Origin, Proxy) {
    let a = Origin::start(US).await;
    let b = Origin::start(US).await;
    a.set(dying);
    b.set(dying);
    let proxy = ProxyBuilder::new(US)
        .region(US, &[a.addr, b.addr])
        .table(table(1, 1, Some(US), &[(US, "active")]))
        .extra("[health]\nprobes = false\neject_after = 100\n")
        .start()
        .await;
    (a, b, proxy)
}

/// `POST /pay` with the request id and `Idempotency-Key` `keyed`.
async fn keyed_post(proxy: &Proxy) -> reqwest::Response {
    client()
        .post(proxy.url("/pay"))
        .header("x-request-id", "keyed")
        .header("idempotency-key", "keyed")
        .body("charge")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_post_whose_origin_dies_mid_request_reaches_no_second_origin() {
    let (a, b, proxy) = dying_origins(Behaviour::DieOnPost).await;
    let c = client();
    for i in 0..10 {
        let id = format!("post-{i}");
        let resp = c
            .post(proxy.url("/pay"))
            .header("x-request-id", &id)
            .body("charge")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 502, "the client learns the write failed");
        // Which region failed is named, as the one that answers is.
        assert_eq!(resp.headers()["x-edgeroute-region"], US, "{id}");
        // It may have been made: the client's reads follow it.
        assert!(resp.headers().contains_key("set-cookie"), "{id}");
        assert_eq!(
            a.count_id(&id) + b.count_id(&id),
            1,
            "{id} was delivered to exactly one origin"
        );
    }
}

/// The retry rule over methods and keys, against two backends that take
/// every request and die without answering: an idempotent method, or a
/// request with an `Idempotency-Key`, is sent to the other backend too;
/// a POST or PATCH without one reaches exactly one. Either way the client
/// learns of the failure (502), and the retries are counted.
#[tokio::test]
async fn what_reached_a_backend_is_sent_again_only_if_it_is_safe_to_repeat() {
    let (a, b, proxy) = dying_origins(Behaviour::DieOnAny).await;
    let c = client();
    let mut retries = 0.0;
    for method in [
        "GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE", "POST", "PATCH",
    ] {
        for key in [None, Some("k-1")] {
            let id = format!("{method}-{}", key.unwrap_or("none"));
            let mut req = c
                .request(method.parse().unwrap(), proxy.url("/pay"))
                .header("x-request-id", &id);
            if let Some(key) = key {
                req = req.header("idempotency-key", key);
            }
            if matches!(method, "PUT" | "POST" | "PATCH") {
                req = req.body("charge");
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 502, "{id}");
            let repeatable = !matches!(method, "POST" | "PATCH") || key.is_some();
            let expected = if repeatable { 2 } else { 1 };
            assert_eq!(a.count_id(&id) + b.count_id(&id), expected, "{id}");
            retries += (expected - 1) as f64;
            assert_eq!(
                proxy.metric("edgeroute_retries_total").await,
                retries,
                "{id}"
            );
        }
    }
}

#[tokio::test]
async fn an_idempotent_request_or_one_with_an_idempotency_key_may_be_retried() {
    // `a` is near and dies on every POST; `b` is far. Once probes have
    // measured both, the first request goes to `a`, the nearer.
    let a = Origin::start(US).await;
    let b = Origin::start(US).await;
    a.set(Behaviour::DieOnPost);
    b.set_delay(Duration::from_millis(100));
    let proxy = ProxyBuilder::new(US)
        .region(US, &[a.addr, b.addr])
        .table(table(1, 1, Some(US), &[(US, "active")]))
        .extra("[health]\ninterval = \"300ms\"\ntimeout = \"250ms\"\njitter = \"0ms\"\nlatency_decay = \"60s\"\n")
        .start()
        .await;
    eventually("both backends' latency is measured", GUARD, || async {
        let routing = proxy.routing().await;
        let latency = |i: usize| routing["regions"][0]["backends"][i]["latency_ms"].as_f64();
        matches!((latency(0), latency(1)), (Some(near), Some(far)) if far > near + 50.0)
    })
    .await;
    // With an Idempotency-Key, the POST that died on `a` is sent to `b`.
    let resp = keyed_post(&proxy).await;
    assert_eq!(resp.status(), 200);
    assert_eq!((a.count_id("keyed"), b.count_id("keyed")), (1, 1));
    assert_eq!(proxy.metric("edgeroute_retries_total").await, 1.0);
}

#[tokio::test]
async fn a_connect_failure_moves_any_request_to_another_backend_once() {
    let dead = Origin::start(US).await;
    let live = Origin::start(US).await;
    dead.stop();
    let proxy = ProxyBuilder::new(US)
        .region(US, &[dead.addr, live.addr])
        .table(table(1, 1, Some(US), &[(US, "active")]))
        .extra("[health]\nprobes = false\neject_after = 100\n")
        .start()
        .await;
    let c = client();
    for i in 0..10 {
        let id = format!("post-{i}");
        let resp = c
            .post(proxy.url("/orders"))
            .header("x-request-id", &id)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(live.count_id(&id), 1, "{id} delivered once");
    }
}

#[tokio::test]
async fn a_failed_connect_ejects_the_backend_and_reads_move_to_another_region() {
    let dead = Origin::start(US).await;
    let eu = Origin::start("eu-west-1").await;
    dead.stop();
    let proxy = ProxyBuilder::new(US)
        .region(US, &[dead.addr])
        .region("eu-west-1", &[eu.addr])
        .table(table(1, 1, Some(US), &[(US, "active"), ("eu-west-1", "active")]))
        .extra("[health]\nprobes = false\neject_after = 1\neject_for = \"1h\"\nmax_eject_for = \"1h\"\n")
        .start()
        .await;
    let c = client();
    for _ in 0..20 {
        let resp = c.get(proxy.url("/x")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-edgeroute-region"], "eu-west-1");
    }
    let label = format!(
        "edgeroute_backend_ejections_total{{backend=\"{}\",region=\"{US}\"}}",
        dead.addr
    );
    assert_eq!(
        proxy.metric(&label).await,
        1.0,
        "ejected once, then never picked again"
    );
    let routing = proxy.routing().await;
    assert_eq!(routing["regions"][0]["live_backends"], 0);
    // A write has nowhere else to go: a clear 503, not a retry elsewhere.
    let resp = c.post(proxy.url("/w")).body("x").send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-edgeroute-error"], "primary_unavailable");
    assert_eq!(eu.count("POST"), 0);
}

/// A backend that reads each request head, counts it, and starts an answer
/// it never finishes: half a status line's fields, then a close.
async fn half_answering_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let taken = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&taken);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                s.write_all(b"HTTP/1.1 200 OK\r\nConte").await.ok();
            });
        }
    });
    (addr, taken)
}

/// A backend that has begun its answer has taken the request: an answer
/// that then goes wrong is the client's 502, and even an idempotent
/// request is not sent to another backend.
#[tokio::test]
async fn a_request_whose_answer_began_is_not_sent_again() {
    let (a, a_taken) = half_answering_backend().await;
    let (b, b_taken) = half_answering_backend().await;
    let proxy = ProxyBuilder::new(US)
        .region(US, &[a, b])
        .table(table(1, 1, Some(US), &[(US, "active")]))
        .extra("[health]\nprobes = false\neject_after = 100\n")
        .start()
        .await;
    let c = client();
    for (i, method) in ["GET", "PUT", "DELETE", "GET", "PUT", "DELETE"]
        .into_iter()
        .enumerate()
    {
        let resp = c
            .request(method.parse().unwrap(), proxy.url("/x"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 502, "{method}");
        let taken = a_taken.load(Ordering::SeqCst) + b_taken.load(Ordering::SeqCst);
        assert_eq!(taken, i + 1, "{method} was taken by one backend only");
    }
    assert_eq!(proxy.metric("edgeroute_retries_total").await, 0.0);
    // The failures count against the region whose backends failed (each
    // once its response is complete, just after the client sees it).
    for (route, count) in [("read", 2.0), ("write", 4.0)] {
        let label =
            format!("edgeroute_requests_total{{region=\"{US}\",route=\"{route}\",status=\"502\"}}");
        eventually(&label, GUARD, || async {
            proxy.metric(&label).await == count
        })
        .await;
    }
}

/// A retry is counted when the request goes to another backend, not when
/// none is left to take it.
#[tokio::test]
async fn retries_count_the_backends_a_request_was_sent_to_again() {
    let (a, b, proxy) = dying_origins(Behaviour::DieOnPost).await;
    let resp = keyed_post(&proxy).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(a.count_id("keyed") + b.count_id("keyed"), 2);
    assert_eq!(proxy.metric("edgeroute_retries_total").await, 1.0);
    eventually("the access line is written", GUARD, || async {
        proxy.log().contains("attempts=2")
    })
    .await;
}

/// A request with a body goes out to its backend with the body's first
/// bytes. A pooled connection the backend closes while the client's body
/// is still on its way carried nothing of the request, so even a POST
/// without an `Idempotency-Key` goes again on a new connection, once.
#[tokio::test]
async fn a_post_whose_pooled_connection_closed_before_it_was_sent_goes_again() {
    for last in [
        &b""[..],
        b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    ] {
        post_on_a_connection_closed_with(last).await;
    }
}

/// The POST of [`a_post_whose_pooled_connection_closed_before_it_was_sent_goes_again`],
/// its pooled connection closed by the backend after `last` (a `408` it
/// sends is no answer to the POST, which it never saw).
async fn post_on_a_connection_closed_with(last: &'static [u8]) {
    let backend = ClosingBackend::start().await;
    // One worker thread: the POST takes the connection the GET left in
    // that thread's pool (put back before its task yields).
    let proxy = ProxyBuilder::new(US)
        .threads(1)
        .region(US, &[backend.addr])
        .table(table(1, 1, Some(US), &[(US, "active")]))
        .extra("[health]\nprobes = false\neject_after = 100\n")
        .start()
        .await;
    // A connection to the backend goes to the pool, once the GET's
    // exchange has ended.
    let warm = client().get(proxy.url("/warm")).send().await.unwrap();
    assert_eq!(warm.status(), 200);
    let inflight =
        || async { proxy.routing().await["regions"][0]["backends"][0]["inflight"].clone() };
    eventually("the GET's exchange ends", GUARD, || async {
        inflight().await == 0
    })
    .await;
    let mut conn = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    conn.write_all(b"POST /pay HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\n")
        .await
        .unwrap();
    // Once the proxy has taken it for the POST (in the same poll of the
    // request's task as the backend pick the admin listener counts), the
    // backend closes it.
    eventually("the POST holds the backend", GUARD, || async {
        inflight().await == 1
    })
    .await;
    backend.close_idle(last);
    eventually("the backend closed its idle connection", GUARD, || async {
        backend.closed() == 1
    })
    .await;
    let answer = edgeroute_tests::answer_to(&mut conn, b"hello").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
    let posts: Vec<Vec<u8>> = backend
        .seen()
        .iter()
        .filter(|(method, _)| method == "POST")
        .map(|(_, body)| body.clone())
        .collect();
    assert_eq!(posts, [b"hello".to_vec()], "delivered once, whole");
    assert_eq!(proxy.metric("edgeroute_retries_total").await, 1.0);
}

/// Attempts used up on backends that took nothing of a request (each
/// refused the connection) end in the 503 refusal that says nothing was
/// done, as when no backend is left: no region named, no read-your-writes
/// cookie.
#[tokio::test]
async fn attempts_used_up_on_refused_connects_end_in_a_refusal() {
    let mut dead = Vec::new();
    for _ in 0..4 {
        let origin = Origin::start(US).await;
        origin.stop();
        dead.push(origin.addr);
    }
    let proxy = ProxyBuilder::new(US)
        .region(US, &dead)
        .table(table(1, 1, Some(US), &[(US, "active")]))
        .extra("[health]\nprobes = false\neject_after = 100\n\n[retries]\nmax_attempts = 3\n")
        .start()
        .await;
    let resp = client()
        .post(proxy.url("/pay"))
        .body("charge")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-edgeroute-error"], "primary_unavailable");
    assert!(
        !resp.headers().contains_key("x-edgeroute-region"),
        "{resp:?}"
    );
    assert!(!resp.headers().contains_key("set-cookie"), "{resp:?}");
    assert_eq!(proxy.metric("edgeroute_retries_total").await, 2.0);
    // The log says what the last attempt met.
    eventually("the request's warning is written", GUARD, || async {
        proxy
            .log()
            .contains("has no reachable backend; the last attempt: Upstream ConnectRefused")
    })
    .await;
}

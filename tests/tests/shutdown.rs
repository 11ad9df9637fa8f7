//! SIGTERM: /ready answers 503 at once, in-flight requests (HTTP/1 and HTTP/2) finish, exit 0.

use edgeroute_tests::{
    Behaviour, Origin, ProxyBuilder, answer_on, client, eventually, h2, until_closed,
};
use nix::sys::signal::Signal;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `GET path` on `conn` and reads its answer: to the connection's
/// end when `closes` (and checks it says `connection: close`), else the
/// head and the body its length gives.
async fn exchange_on(conn: &mut TcpStream, path: &str, closes: bool) -> String {
    if !closes {
        return answer_on(conn, path).await;
    }
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut got))
        .await
        .expect("the connection closed after its answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&got).into_owned();
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    answer
}

/// Waits for `/ready` to answer 503, and checks it says why.
async fn stops_being_ready(proxy: &edgeroute_tests::Proxy) {
    let c = client();
    eventually("/ready answers 503", Duration::from_secs(5), || async {
        c.get(proxy.admin_url("/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 503)
    })
    .await;
    let body: serde_json::Value = c
        .get(proxy.admin_url("/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["reason"], "shutting_down");
}

#[tokio::test]
async fn sigterm_flips_ready_and_lets_in_flight_requests_finish() {
    let us = Origin::start("us-east-1").await;
    us.set(Behaviour::Hold);
    let mut proxy = ProxyBuilder::new("us-east-1")
        .region("us-east-1", &[us.addr])
        .start()
        .await;
    let c = client();
    let in_flight: Vec<_> = (0..3)
        .map(|i| {
            let req = c.get(proxy.url(&format!("/slow/{i}")));
            tokio::spawn(async move { req.send().await })
        })
        .collect();
    eventually(
        "three requests reach the origin",
        Duration::from_secs(10),
        || async { us.seen().len() == 3 },
    )
    .await;

    proxy.signal(Signal::SIGTERM);
    stops_being_ready(&proxy).await;
    // No new work: the traffic listener is closed.
    eventually(
        "the traffic listener stops accepting",
        Duration::from_secs(5),
        || async { c.get(proxy.url("/new")).send().await.is_err() },
    )
    .await;

    us.release(3);
    for r in in_flight {
        let resp = r.await.unwrap().expect("in-flight request completes");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-edgeroute-region"], "us-east-1");
    }
    let status = proxy.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}");
    assert_eq!(
        us.seen().len(),
        3,
        "nothing new reached the origin after SIGTERM"
    );
}

/// A request still in flight when the grace period is over is cut, and the
/// log says so with the count (it used to say every request finished);
/// SIGINT, during the grace period or alone, stops the proxy at once, and
/// counts what it cut too.
#[tokio::test]
async fn the_grace_period_ends_with_the_requests_it_cut_counted_and_sigint_stops_at_once() {
    let us = Origin::start("us-east-1").await;
    us.set(Behaviour::Hold);
    // The grace period, whether SIGTERM comes first, and what the log says.
    let cases = [
        (
            "1s",
            true,
            "grace period over; exiting with requests still in flight",
        ),
        ("1h", true, "SIGINT while stopping: stopping now"),
        ("1h", false, "SIGINT: stopping now"),
    ];
    for (grace, term, said) in cases {
        let mut proxy = ProxyBuilder::new("us-east-1")
            .region("us-east-1", &[us.addr])
            .grace_period(grace)
            .start()
            .await;
        let before = us.seen().len();
        let req = client().get(proxy.url("/held"));
        let held = tokio::spawn(async move { req.send().await });
        eventually(
            "the request reaches the origin",
            Duration::from_secs(10),
            || async { us.seen().len() == before + 1 },
        )
        .await;
        if term {
            proxy.signal(Signal::SIGTERM);
        }
        if grace == "1h" {
            if term {
                eventually("SIGTERM is taken", Duration::from_secs(5), || async {
                    proxy.log().contains("SIGTERM: not ready any more")
                })
                .await;
            }
            proxy.signal(Signal::SIGINT);
        }
        // Within the hour's grace only if SIGINT stopped it.
        let status = proxy.wait_exit(Duration::from_secs(30)).await;
        assert!(status.success(), "exit status {status}");
        let log = proxy.log();
        assert!(!log.contains("all in-flight requests finished"), "{log}");
        assert!(
            log.contains(said) && log.contains("still_in_flight=1"),
            "{log}"
        );
        assert!(held.await.unwrap().is_err(), "the held request was cut");
    }
    us.release(3);
}

/// With `shutdown.keep_accepting`, SIGTERM makes the proxy not ready at
/// once (`/ready`, and `/health` on both listeners) while it goes on
/// accepting and serving: each HTTP/1 answer, on a connection kept from
/// before or a new one, closes its connection, and an HTTP/2 connection
/// is told to go away; SIGINT still stops it at once. Once the time is
/// over it drains and exits as without it.
#[tokio::test]
async fn keep_accepting_serves_new_connections_after_sigterm_while_not_ready() {
    let us = Origin::start("us-east-1").await;
    let c = client();
    // An hour: the checks run inside it, and SIGINT ends it.
    let mut proxy = ProxyBuilder::new("us-east-1")
        .region("us-east-1", &[us.addr])
        .listener_options("h2c = true")
        .keep_accepting("1h")
        .start()
        .await;
    // Opened before SIGTERM: an HTTP/1 connection kept alive after one
    // answer, and an HTTP/2 one with no stream.
    let mut kept = TcpStream::connect(proxy.addr).await.unwrap();
    let first = exchange_on(&mut kept, "/before-sigterm", false).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let mut h2c = TcpStream::connect(proxy.addr).await.unwrap();
    h2c.write_all(&h2::opening()).await.unwrap();
    h2::read_until(&mut h2c, Duration::from_secs(10), |f| {
        f.kind == h2::SETTINGS
    })
    .await;

    proxy.signal(Signal::SIGTERM);
    stops_being_ready(&proxy).await;
    for url in [proxy.admin_url("/health"), proxy.url("/health")] {
        let resp = c.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 503, "{url}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["reason"], "shutting_down", "{url}");
    }
    let goaway = h2::read_until(&mut h2c, Duration::from_secs(10), |f| f.kind == h2::GOAWAY).await;
    assert!(
        goaway
            .iter()
            .any(|f| f.kind == h2::GOAWAY && f.error_code() == 0)
    );
    // The kept connection's next answer ends it.
    let answer = exchange_on(&mut kept, "/after-sigterm/kept", true).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for i in 0..3 {
        // Each on a new connection, accepted after SIGTERM; the proxy's own
        // answer to /health ends its connection too.
        let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
        let answer = exchange_on(&mut conn, &format!("/after-sigterm/{i}"), true).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
    let answer = exchange_on(&mut conn, "/health", true).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert_eq!(us.seen().len(), 5);
    proxy.signal(Signal::SIGINT);
    let status = proxy.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}");
    assert!(
        proxy
            .log()
            .contains("accepting and serving for shutdown.keep_accepting"),
        "{}",
        proxy.log()
    );

    // A second: the drain follows its end, and the proxy exits.
    let mut proxy = ProxyBuilder::new("us-east-1")
        .region("us-east-1", &[us.addr])
        .keep_accepting("1s")
        .start()
        .await;
    proxy.signal(Signal::SIGTERM);
    let status = proxy.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "exit status {status}");
    let log = proxy.log();
    let serving = log.find("accepting and serving for shutdown.keep_accepting");
    let draining = log.find("no longer accepting; finishing in-flight requests");
    assert!(
        matches!((serving, draining), (Some(s), Some(d)) if s < d),
        "{log}"
    );
}

/// HTTP/2 streams in flight on SIGTERM finish on their connection, which
/// is then told to go away; so is an idle connection, and the proxy exits
/// once every connection got its answers and its GOAWAY.
#[tokio::test]
async fn sigterm_lets_http2_streams_in_flight_finish() {
    let us = Origin::start("us-east-1").await;
    us.set(Behaviour::Hold);
    let mut proxy = ProxyBuilder::new("us-east-1")
        .region("us-east-1", &[us.addr])
        .listener_options("h2c = true")
        .start()
        .await;
    let c = h2::client();
    // Two streams on one connection.
    let in_flight: Vec<_> = (0..2)
        .map(|i| tokio::spawn(c.get(proxy.url(&format!("/slow/{i}"))).send()))
        .collect();
    eventually(
        "two requests reach the origin",
        Duration::from_secs(10),
        || async { us.seen().len() == 2 },
    )
    .await;
    // A connection with no stream, whose client answers nothing; it is
    // open once the proxy's settings came.
    let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
    idle.write_all(&h2::opening()).await.unwrap();
    h2::read_until(&mut idle, Duration::from_secs(10), |f| {
        f.kind == h2::SETTINGS
    })
    .await;

    proxy.signal(Signal::SIGTERM);
    eventually("/ready answers 503", Duration::from_secs(5), || async {
        client()
            .get(proxy.admin_url("/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 503)
    })
    .await;
    us.release(2);
    for r in in_flight {
        let resp = r.await.unwrap().expect("the stream in flight completes");
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
    }
    let frames = h2::Frame::decode(&until_closed(&mut idle, Duration::from_secs(15)).await);
    let goaway = frames
        .iter()
        .find(|f| f.kind == h2::GOAWAY)
        .expect("the idle connection is told to go away before the exit");
    assert_eq!(goaway.error_code(), 0, "NO_ERROR");
    let status = proxy.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}");
    assert_eq!(us.seen().len(), 2);
}

/// An HTTP/2 connection told to go away on SIGTERM is kept while its
/// client still takes bytes: a client that reads slowly when its stream
/// has ended, with the proxy still holding part of the answer, gets all
/// of it, the stream's end and the GOAWAY, though taking them lasts well
/// past the second after which a client that takes nothing is left.
#[tokio::test]
async fn sigterm_keeps_an_http2_connection_while_its_client_still_reads() {
    // Far more than the kernel buffers between the proxy and the client
    // hold (the proxy's send buffer grows to at most 4 MiB): the answer's
    // last bytes wait in the proxy's own buffer while the client reads
    // nothing, so the stream ends with them still there.
    const PADDING: usize = 16 << 20;
    // When the stream can have ended at the soonest (the kernel buffers
    // and the proxy's 64 KiB per stream hold less than this).
    const BEFORE_THE_END: usize = PADDING - (6 << 20);
    const SMALL: usize = 4096;
    const READ_REQUEST: &str =
        "edgeroute_requests_total{region=\"us-east-1\",route=\"read\",status=\"200\"}";
    let us = Origin::start("us-east-1").await;
    us.set_padding(PADDING);
    let mut proxy = ProxyBuilder::new("us-east-1")
        .region("us-east-1", &[us.addr])
        .listener_options("h2c = true")
        .start()
        .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(SMALL as u32).unwrap();
    let mut conn = socket.connect(proxy.addr).await.unwrap();
    conn.write_all(&h2::opening_with_open_windows())
        .await
        .unwrap();
    conn.write_all(&h2::get_request(1, true)).await.unwrap();

    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // Reads at most `size` bytes and, as clients do, gives the connection's
    // window back what was read.
    let mut read = async |conn: &mut TcpStream, got: &mut Vec<u8>, size: usize| {
        let n = conn.read(&mut buf[..size]).await.unwrap_or(0);
        got.extend_from_slice(&buf[..n]);
        if n > 0 {
            let taken = u32::try_from(n).unwrap().to_be_bytes();
            // The proxy may have closed the connection: what the client
            // sends then is lost, as it would be.
            let _sent = conn
                .write_all(&h2::Frame::encode(h2::WINDOW_UPDATE, 0, 0, &taken))
                .await;
        }
        n
    };
    let limit = Duration::from_secs(20);
    tokio::time::timeout(limit, async {
        // Told to go away once the answer has begun.
        while !h2::Frame::decode(&got)
            .iter()
            .any(|f| f.kind == h2::HEADERS)
        {
            assert!(read(&mut conn, &mut got, SMALL).await > 0, "closed early");
        }
        proxy.signal(Signal::SIGTERM);
        // At full speed while the stream cannot have ended.
        while got.len() < BEFORE_THE_END {
            assert!(
                read(&mut conn, &mut got, 64 * 1024).await > 0,
                "closed early"
            );
        }
        // In small steps until the proxy counts the request, which it does
        // as its stream ends.
        while proxy.metric(READ_REQUEST).await == 0.0 {
            assert!(read(&mut conn, &mut got, SMALL).await > 0, "closed early");
        }
        // 32 KiB a second for three seconds: the proxy's own 64 KiB cannot
        // all have gone out within the first second.
        for _ in 0..24 {
            assert!(
                read(&mut conn, &mut got, SMALL).await > 0,
                "closed while the client read"
            );
            tokio::time::sleep(Duration::from_millis(125)).await;
        }
        // And the rest, to the connection's end.
        while read(&mut conn, &mut got, 64 * 1024).await > 0 {}
    })
    .await
    .unwrap_or_else(|_| panic!("the answer was read within {limit:?}"));

    let frames = h2::Frame::decode(&got);
    let data: Vec<&h2::Frame> = frames
        .iter()
        .filter(|f| f.kind == h2::DATA && f.stream == 1)
        .collect();
    let body: usize = data.iter().map(|f| f.payload.len()).sum();
    assert!(
        body > PADDING,
        "the whole answer came: {body} bytes of body"
    );
    assert!(
        data.last().is_some_and(|f| f.flags & h2::END_STREAM != 0),
        "the stream's end came"
    );
    let goaway = frames
        .iter()
        .find(|f| f.kind == h2::GOAWAY)
        .expect("the connection was told to go away");
    assert_eq!(goaway.error_code(), 0, "NO_ERROR");
    let status = proxy.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}");
}

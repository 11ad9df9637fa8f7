//! SIGTERM: /ready answers 503 at once, in-flight requests (HTTP/1 and HTTP/2) finish, exit 0.

use edgeroute_tests::{Behaviour, Origin, ProxyBuilder, client, eventually, h2, until_closed};
use nix::sys::signal::Signal;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

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

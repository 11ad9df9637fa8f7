//! SIGTERM: /ready answers 503 at once, in-flight requests finish, exit 0.

use edgeroute_tests::{Behaviour, Origin, ProxyBuilder, client, eventually};
use nix::sys::signal::Signal;
use std::time::Duration;

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

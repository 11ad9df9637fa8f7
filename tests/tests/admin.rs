//! The admin listener's token: /metrics and /routing need it, health does not.

use edgeroute_tests::{
    Origin, ProxyBuilder, accept_queue, client, eventually, get_on, half_head_is_closed,
};
use std::time::Duration;
use tokio::net::TcpStream;

#[tokio::test]
async fn metrics_and_routing_require_the_token_when_one_is_set() {
    let us = Origin::start("us-east-1").await;
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("admin-token");
    std::fs::write(&token_path, "s3cret-token\n").unwrap();
    let proxy = ProxyBuilder::new("us-east-1")
        .region("us-east-1", &[us.addr])
        .admin_options(&format!("token_file = {:?}", token_path))
        .start()
        .await;
    let c = client();
    for path in ["/metrics", "/routing"] {
        let resp = c.get(proxy.admin_url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path} without a token");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        let resp = c
            .get(proxy.admin_url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{path} with a wrong token");
        let resp = c
            .get(proxy.admin_url(path))
            .bearer_auth("s3cret-token")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path} with the token");
        // The scheme's name is case-insensitive (RFC 9110 §11.1).
        let resp = c
            .get(proxy.admin_url(path))
            .header("authorization", "bearer s3cret-token")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path} with `bearer`");
    }
    proxy.assert_open_admin_paths_ok().await;
    // Other methods are refused with the ones the admin listener takes.
    let resp = c.post(proxy.admin_url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, HEAD");
    assert!(
        !proxy.log().contains("s3cret-token"),
        "the token never reaches the logs"
    );
}

/// A client that never finishes its request head does not hold an admin
/// connection open.
#[tokio::test]
async fn a_request_head_never_finished_is_closed() {
    let us = Origin::start("us-east-1").await;
    let proxy = ProxyBuilder::new("us-east-1")
        .region("us-east-1", &[us.addr])
        .start()
        .await;
    half_head_is_closed(proxy.admin).await;
}

/// Clients holding admin connections open (its health paths need no
/// token) take at most `admin.max_connections`: the next waits in the
/// backlog until one closes, and the traffic listener serves on.
#[tokio::test]
async fn admin_connections_are_bounded_and_leave_traffic_alone() {
    let us = Origin::start("us-east-1").await;
    let proxy = ProxyBuilder::new("us-east-1")
        .region("us-east-1", &[us.addr])
        .admin_options("max_connections = 2")
        .start()
        .await;
    let mut first = TcpStream::connect(proxy.admin).await.unwrap();
    let mut second = TcpStream::connect(proxy.admin).await.unwrap();
    assert_eq!(get_on(&mut first, "/health").await, "HTTP/1.1 200 OK");
    assert_eq!(get_on(&mut second, "/health").await, "HTTP/1.1 200 OK");
    let mut third = TcpStream::connect(proxy.admin).await.unwrap();
    eventually(
        "the third admin connection waits in the backlog",
        Duration::from_secs(30),
        || async { accept_queue(proxy.admin) == 1 },
    )
    .await;
    let mut traffic = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(get_on(&mut traffic, "/x").await, "HTTP/1.1 200 OK");
    drop(first);
    assert_eq!(get_on(&mut third, "/health").await, "HTTP/1.1 200 OK");
    drop((second, third));
    assert!(
        proxy
            .metric("edgeroute_admin_accept_waits_total{reason=\"connection_limit\"}")
            .await
            >= 1.0
    );
}

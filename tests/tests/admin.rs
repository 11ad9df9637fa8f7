//! The admin listener's token: /metrics and /routing need it, health does not.

use edgeroute_tests::{Origin, ProxyBuilder, client, half_head_is_closed};

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

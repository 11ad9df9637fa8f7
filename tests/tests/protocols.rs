//! HTTP/2 over cleartext (h2c) and over TLS (ALPN), through rustls.

use edgeroute_tests::{Origin, ProxyBuilder};

#[tokio::test]
async fn h2c_with_prior_knowledge() {
    let us = Origin::start("us-east-1").await;
    let proxy = ProxyBuilder::new("us-east-1")
        .region("us-east-1", &[us.addr])
        .listener_options("h2c = true")
        .start()
        .await;
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = c.get(proxy.url("/items")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-edgeroute-region"], "us-east-1");
    // The backend's own fields reach an HTTP/2 client too.
    let length = resp.headers().get("content-length").cloned();
    let body = resp.text().await.unwrap();
    assert_eq!(
        length.as_ref().map(|v| v.to_str().unwrap()),
        Some(body.len().to_string().as_str())
    );
    // HTTP/1.1 still works on the same listener.
    let resp = edgeroute_tests::client()
        .get(proxy.url("/items"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn tls_with_alpn_h2_and_forwarded_proto() {
    // Another test in this binary may have installed it already; either way one is in place.
    rustls::crypto::ring::default_provider()
        .install_default()
        .ok();
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();

    let us = Origin::start("us-east-1").await;
    let proxy = ProxyBuilder::new("us-east-1")
        .region("us-east-1", &[us.addr])
        .listener_options(&format!(
            "tls = {{ cert = {:?}, key = {:?} }}",
            cert_path, key_path
        ))
        .start()
        .await;
    let ca = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
    let c = reqwest::Client::builder()
        .add_root_certificate(ca)
        .resolve("localhost", proxy.addr)
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/secure", proxy.addr.port());
    let resp = c.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.version(),
        reqwest::Version::HTTP_2,
        "HTTP/2 negotiated by ALPN"
    );
    assert_eq!(us.seen()[0].header("x-forwarded-proto"), Some("https"));
}

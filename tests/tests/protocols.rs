//! What each kind of listener speaks: HTTP/1.x, HTTP/2 over cleartext (h2c)
//! and over TLS (ALPN, through rustls); how a client that does not get as
//! far as a request is let go; and which worker thread serves a client.

use edgeroute_tests::h2::{self, Frame, GOAWAY, HEADERS, RST_STREAM, get_request, opening};
use edgeroute_tests::keepalive::ClosingBackend;
use edgeroute_tests::{
    Behaviour, Origin, Proxy, ProxyBuilder, accept_queue, eventually, get_on, until_closed,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const US: &str = "us-east-1";

/// Longer than any wait in these tests: a connection still open when it
/// ends was left open by the proxy.
const GUARD: Duration = Duration::from_secs(30);

/// A self-signed certificate for `localhost`, written as PEM files in
/// `dir`; the certificate, and the `tls = { ... }` listener option.
fn certificate(dir: &Path) -> (rcgen::Certificate, String) {
    let (cert, key): (PathBuf, PathBuf) = (dir.join("tls.crt"), dir.join("tls.key"));
    let made = new_certificate(&cert, &key);
    let option = format!("tls = {{ cert = {cert:?}, key = {key:?} }}");
    (made, option)
}

/// A new self-signed certificate for `localhost` and its key, each put in
/// place at once (written beside it, then renamed over it).
fn new_certificate(cert: &Path, key: &Path) -> rcgen::Certificate {
    // Another test in this binary may have installed it already; either way one is in place.
    rustls::crypto::ring::default_provider()
        .install_default()
        .ok();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    edgeroute_tests::proxy::write_atomically(cert, &made.cert.pem());
    edgeroute_tests::proxy::write_atomically(key, &made.signing_key.serialize_pem());
    made.cert
}

/// An origin, and a proxy whose listener speaks TLS with a certificate
/// of its own.
struct Tls {
    dir: tempfile::TempDir,
    cert: rcgen::Certificate,
    us: Origin,
    proxy: Proxy,
}

impl Tls {
    /// `extra`: more TOML for the proxy's config.
    async fn start(extra: &str) -> Tls {
        let dir = tempfile::tempdir().unwrap();
        let (cert, option) = certificate(dir.path());
        let us = Origin::start(US).await;
        let proxy = ProxyBuilder::new(US)
            .region(US, &[us.addr])
            .listener_options(&option)
            .extra(extra)
            .start()
            .await;
        Tls {
            dir,
            cert,
            us,
            proxy,
        }
    }

    /// `GET path` over TLS, by whichever protocol ALPN picks.
    async fn get(&self, path: &str) -> reqwest::Response {
        self.get_trusting(&self.cert, path).await.unwrap()
    }

    /// `GET path` on a new connection, from a client that trusts `cert`
    /// alone.
    async fn get_trusting(
        &self,
        cert: &rcgen::Certificate,
        path: &str,
    ) -> reqwest::Result<reqwest::Response> {
        let url = format!("https://localhost:{}{path}", self.proxy.addr.port());
        let client = tls_client(cert, &self.proxy).build().unwrap();
        client.get(url).send().await
    }
}

/// A client that trusts `cert` and finds `localhost` at the proxy.
fn tls_client(cert: &rcgen::Certificate, proxy: &Proxy) -> reqwest::ClientBuilder {
    let ca = reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(ca)
        .resolve("localhost", proxy.addr)
        .timeout(GUARD)
}

/// An HTTP/2 request whose header list is over 64 KiB gets the proxy's
/// own 431, with its code, counted and logged with its method and path,
/// as an HTTP/1 head over the limit does; one within it is served.
#[tokio::test]
async fn an_http2_header_list_over_the_head_limit_is_the_proxys_431() {
    let us = Origin::start(US).await;
    let proxy = h2c_proxy(&us, "75s").await;
    let c = h2::client();
    let big = c
        .get(proxy.url("/big"))
        .header("x-big", "v".repeat(66_000))
        .send()
        .await
        .unwrap();
    assert_eq!(big.version(), reqwest::Version::HTTP_2);
    assert_eq!(big.status(), 431);
    assert_eq!(big.headers()["x-edgeroute-error"], "request_head_too_large");
    assert!(us.seen().is_empty());
    let fits = c
        .get(proxy.url("/fits"))
        .header("x-big", "v".repeat(60_000))
        .send()
        .await
        .unwrap();
    assert_eq!(fits.status(), 200);
    let line = proxy.access_line(&["status=431"]).await;
    assert!(
        line.contains("method=GET")
            && line.contains("path=\"/big\"")
            && line.contains("protocol=\"HTTP/2\""),
        "{line}"
    );
    assert_eq!(
        proxy
            .metric("edgeroute_refusals_total{reason=\"request_head_too_large\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn h2c_with_prior_knowledge() {
    let us = Origin::start(US).await;
    let proxy = h2c_proxy(&us, "75s").await;
    let c = h2::client();
    let resp = c.get(proxy.url("/items")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-edgeroute-region"], US);
    // The backend's own fields reach an HTTP/2 client too.
    let length = resp.headers().get("content-length").cloned();
    let body = resp.text().await.unwrap();
    assert_eq!(
        length.as_ref().map(|v| v.to_str().unwrap()),
        Some(body.len().to_string().as_str())
    );
    proxy
        .access_line(&[
            "path=\"/items\"",
            "protocol=\"HTTP/2\"",
            &format!("bytes_sent={}", body.len()),
        ])
        .await;
    // The proxy's own answers to a HEAD carry no body over HTTP/2 either
    // (a body there makes the client reset the stream).
    let resp = c.head(proxy.url("/health")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().len(), 0);
    // HTTP/1.1 still works on the same listener.
    let resp = edgeroute_tests::client()
        .get(proxy.url("/items"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), 200);
}

/// Many streams at once on one HTTP/2 connection, reads and writes, with
/// bodies larger than HTTP/2's initial flow-control window: each reaches
/// the backend whole and is answered on its own stream.
#[tokio::test]
async fn concurrent_http2_streams_carry_their_bodies_whole() {
    let us = Origin::start(US).await;
    let proxy = h2c_proxy(&us, "75s").await;
    let c = h2::client();
    // One connection first, so that every stream below shares it.
    assert_eq!(
        c.get(proxy.url("/warm")).send().await.unwrap().status(),
        200
    );
    let sizes = [0usize, 1, 16_384, 65_535, 65_536, 200_000];
    let requests: Vec<_> = (0..48)
        .map(|i| {
            let size = sizes[(i / 2) % sizes.len()];
            let req = if i % 2 == 0 {
                c.get(proxy.url(&format!("/read/{i}")))
            } else {
                c.post(proxy.url(&format!("/write/{i}/{size}")))
                    .body(vec![b'a'; size])
            };
            tokio::spawn(req.send())
        })
        .collect();
    for resp in requests {
        let resp = resp.await.unwrap().unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        let path = resp.url().path().to_owned();
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["path"], path.as_str(), "each answer on its own stream");
    }
    let seen = us.seen();
    assert_eq!(seen.len(), 49);
    for s in seen.iter().filter(|s| s.method == "POST") {
        let size: usize = s.path.rsplit('/').next().unwrap().parse().unwrap();
        assert_eq!(s.body_len, size, "{}", s.path);
    }
    assert_eq!(seen.iter().filter(|s| s.method == "POST").count(), 24);
}

/// A backend that answers 200 to each request after reading its body
/// whole, except on `/stall`, whose body it never reads; the heads of
/// `/stall` requests it has seen.
async fn stalling_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stalled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&stalled);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 65_536];
                let end = loop {
                    if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        break end + 4;
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                if head.starts_with("post /stall") {
                    counter.fetch_add(1, Ordering::SeqCst);
                    // Holds the connection, reading nothing more.
                    tokio::time::sleep(Duration::from_secs(120)).await;
                    return;
                }
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while got.len() < end + length {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .ok();
            });
        }
    });
    (addr, stalled)
}

/// One upload whose backend stops reading does not hold back the bodies
/// of the connection's other streams: they are answered while it waits.
#[tokio::test]
async fn an_upload_a_backend_stops_reading_does_not_stall_the_connections_other_streams() {
    let (backend, stalled) = stalling_backend().await;
    let proxy = h2c_proxy_unprobed(backend).await;
    let c = h2::client();
    // One connection first, so that both streams below share it.
    assert_eq!(
        c.post(proxy.url("/warm"))
            .body("x")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let upload = tokio::spawn(
        c.post(proxy.url("/stall"))
            .body(vec![b'a'; 4 * 1024 * 1024])
            .send(),
    );
    eventually("the stalled upload reaches its backend", GUARD, || async {
        stalled.load(Ordering::SeqCst) == 1
    })
    .await;
    for i in 0..3 {
        let resp = c
            .post(proxy.url(&format!("/orders/{i}")))
            .body(vec![b'b'; 1024])
            .send()
            .await
            .expect("answered while the upload waits");
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
    }
    upload.abort();
}

/// An h2c listener tells HTTP/1 from HTTP/2 by the first byte that differs
/// from HTTP/2's 24-byte preface: a shorter request is answered without
/// more bytes or an EOF from the client, long before `client_idle`.
#[tokio::test]
async fn a_request_shorter_than_the_h2_preface_is_answered_on_an_h2c_listener() {
    let us = Origin::start(US).await;
    let proxy = h2c_proxy(&us, "10m").await;
    let request = b"GET /short HTTP/1.0\r\n\r\n";
    assert!(request.len() < 24);
    let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
    // The client's side stays open: it waits for the answer.
    conn.write_all(request).await.unwrap();
    let answer = String::from_utf8(until_closed(&mut conn, GUARD).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nx-edgeroute-region: us-east-1\r\n"),
        "{answer}"
    );
    let seen = us.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/short");
}

#[tokio::test]
async fn tls_with_alpn_h2_or_http1_and_forwarded_proto() {
    let tls = Tls::start("").await;
    let resp = tls.get("/secure").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.version(),
        reqwest::Version::HTTP_2,
        "HTTP/2 negotiated by ALPN"
    );
    let url = format!("https://localhost:{}/secure", tls.proxy.addr.port());
    let resp = tls_client(&tls.cert, &tls.proxy)
        .http1_only()
        .build()
        .unwrap()
        .post(&url)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.headers()["x-edgeroute-region"], US);
    let seen = tls.us.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.header("x-forwarded-proto"), Some("https"));
    }
    assert_eq!(seen[1].method, "POST");
}

/// A TLS client that sends HTTP/2's preface without having offered `h2`
/// by ALPN is told that ALPN decides, not to set `h2c` (which is for
/// listeners without TLS).
#[tokio::test]
async fn http2_over_tls_without_alpn_is_told_to_offer_h2() {
    let tls = Tls::start("").await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(tls.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(tls.proxy.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = connector.connect(name, tcp).await.unwrap();
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    // The proxy closes after its 400; a TLS close without close_notify
    // is an error to the reader, after the bytes.
    let _ = tokio::time::timeout(GUARD, conn.read_to_end(&mut answer))
        .await
        .expect("answered in time");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("ALPN"), "{answer}");
    assert!(!answer.contains("h2c"), "{answer}");
}

/// A client that fails its TLS handshake is let go at once, and one that
/// does not begin it within `timeouts.client_idle` when that runs out;
/// `edgeroute_tls_handshake_failures_total` counts each by reason, and
/// not a client that closes before it says anything.
#[tokio::test]
async fn a_tls_handshake_that_fails_or_stalls_is_closed_and_counted() {
    let tls = Tls::start("[timeouts]\nclient_idle = \"1s\"\n").await;
    let proxy = &tls.proxy;
    let failures =
        |reason: &str| format!("edgeroute_tls_handshake_failures_total{{reason=\"{reason}\"}}");
    assert_eq!(proxy.metric(&failures("error")).await, 0.0);
    assert_eq!(proxy.metric(&failures("timeout")).await, 0.0);

    // A client that connects and closes, as a load balancer's TCP health
    // check does, failed nothing (counts are checked again below, after
    // the proxy has long seen its close).
    drop(TcpStream::connect(proxy.addr).await.unwrap());

    // Bytes that are no TLS handshake fail it.
    let mut garbage = TcpStream::connect(proxy.addr).await.unwrap();
    garbage.write_all(b"\x00\x01\x02garbage\r\n").await.unwrap();
    let answer = until_closed(&mut garbage, GUARD).await;
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
    eventually("the failed handshake is counted", GUARD, || async {
        proxy.metric(&failures("error")).await == 1.0
    })
    .await;
    assert_eq!(proxy.metric(&failures("timeout")).await, 0.0);

    // Plain HTTP on the TLS port is told, in plain HTTP, to use HTTPS.
    let mut plain = TcpStream::connect(proxy.addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut plain, GUARD).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\nDate: ")
            && answer.ends_with("this port speaks HTTPS (TLS): send the request with https://\n"),
        "{answer}"
    );
    eventually("the plain request is counted", GUARD, || async {
        proxy.metric(&failures("plain_http")).await == 1.0
    })
    .await;
    assert_eq!(proxy.metric(&failures("error")).await, 1.0);

    // A client that connects and says nothing. (The proxy's wait starts
    // after `opened`.)
    let opened = std::time::Instant::now();
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(until_closed(&mut silent, GUARD).await.is_empty());
    assert!(opened.elapsed() >= Duration::from_secs(1));
    eventually("the stalled handshake is counted", GUARD, || async {
        proxy.metric(&failures("timeout")).await == 1.0
    })
    .await;
    assert_eq!(proxy.metric(&failures("error")).await, 1.0);

    // The listener goes on serving.
    assert_eq!(tls.get("/after").await.status(), 200);
}

/// A TLS handshake begun and then stalled is cut off after
/// `timeouts.tls_handshake`, however long `client_idle` is; a connection
/// that has said nothing yet is idle, and waits for `client_idle` (so the
/// silent one opened first outlives the stalled one).
#[tokio::test]
async fn a_stalled_tls_handshake_is_cut_off_after_tls_handshake() {
    let tls = Tls::start("[timeouts]\nclient_idle = \"1h\"\ntls_handshake = \"1s\"\n").await;
    let proxy = &tls.proxy;
    let silent = TcpStream::connect(proxy.addr).await.unwrap();
    let mut stalled = TcpStream::connect(proxy.addr).await.unwrap();
    // A handshake record's header announcing 512 bytes, and 2 of them.
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .await
        .unwrap();
    assert!(until_closed(&mut stalled, GUARD).await.is_empty());
    eventually("the stalled handshake is counted", GUARD, || async {
        proxy
            .metric("edgeroute_tls_handshake_failures_total{reason=\"timeout\"}")
            .await
            == 1.0
    })
    .await;
    let mut buf = [0u8; 16];
    assert!(
        matches!(silent.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the silent connection is still open"
    );
    assert_eq!(tls.get("/after").await.status(), 200);
}

/// Plain, h2c and TLS listeners are served by one set of worker threads
/// (`runtime.threads`, 2 here), and none of them starts a clock thread
/// (Pingora's timer starts one that wakes 100 times a second).
#[tokio::test]
async fn every_kind_of_listener_shares_the_worker_threads() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, option) = certificate(dir.path());
    let (h2c, tls) = (
        edgeroute_tests::proxy::free_addr(),
        edgeroute_tests::proxy::free_addr(),
    );
    let us = Origin::start(US).await;
    let proxy = ProxyBuilder::new(US)
        .region(US, &[us.addr])
        .extra(&format!(
            "[[listeners]]\naddress = \"{h2c}\"\nh2c = true\n\n\
             [[listeners]]\naddress = \"{tls}\"\n{option}\n"
        ))
        .start()
        .await;
    let plain = edgeroute_tests::client()
        .get(proxy.url("/plain"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);
    let over_h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(GUARD)
        .build()
        .unwrap()
        .get(format!("http://{h2c}/h2c"))
        .send()
        .await
        .unwrap();
    assert_eq!(over_h2c.status(), 200);
    assert_eq!(over_h2c.version(), reqwest::Version::HTTP_2);
    let over_tls = tls_client(&cert, &proxy)
        .resolve("localhost", tls)
        .build()
        .unwrap()
        .get(format!("https://localhost:{}/tls", tls.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(over_tls.status(), 200);
    assert_eq!(us.seen().len(), 3);

    let names = proxy.thread_names();
    // Pingora names a service's worker threads after the service.
    let workers = names
        .iter()
        .filter(|n| *n == "edgeroute" || n.starts_with("edgeroute "))
        .count();
    assert_eq!(workers, 2, "{names:?}");
    assert!(
        !names.iter().any(|n| n == "Timer thread"),
        "a clock thread runs: {names:?}"
    );
}

/// Each new client connection goes to the worker thread serving the
/// fewest, so a few long-lived connections (a load balancer's) do not
/// share one thread while another idles; `edgeroute_worker_connections`
/// shows the spread, and the count goes down as connections close.
#[tokio::test]
async fn client_connections_are_spread_evenly_over_the_worker_threads() {
    let us = Origin::start(US).await;
    let proxy = ProxyBuilder::new(US).region(US, &[us.addr]).start().await;
    let open = |worker: usize| format!("edgeroute_worker_connections{{worker=\"{worker}\"}}");
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    eventually("8 connections counted", GUARD, || async {
        proxy.metric(&open(0)).await + proxy.metric(&open(1)).await == 8.0
    })
    .await;
    // The proxy runs 2 worker threads (`runtime.threads`).
    assert_eq!(proxy.metric(&open(0)).await, 4.0);
    assert_eq!(proxy.metric(&open(1)).await, 4.0);
    // A request on each is served.
    for conn in &mut conns {
        conn.write_all(b"GET /spread HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = String::from_utf8(until_closed(conn, GUARD).await).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    }
    assert_eq!(us.seen().len(), 8);
    eventually(
        "closed connections are no longer counted",
        GUARD,
        || async { proxy.metric(&open(0)).await + proxy.metric(&open(1)).await == 0.0 },
    )
    .await;
}

/// A certificate rotated on disk is served to new connections after
/// SIGHUP (and within the watch interval without one); files that cannot
/// be used leave the certificate in force, and each outcome is counted
/// (a change is loaded once).
#[tokio::test]
async fn a_rotated_certificate_is_put_in_force_and_a_broken_one_is_not() {
    let tls = Tls::start("").await;
    let reloads =
        |result: &str| format!("edgeroute_tls_certificate_reloads_total{{result=\"{result}\"}}");
    let (cert, key) = (
        tls.dir.path().join("tls.crt"),
        tls.dir.path().join("tls.key"),
    );
    assert_eq!(tls.get("/before").await.status(), 200);

    let rotated = new_certificate(&cert, &key);
    tls.proxy.signal(nix::sys::signal::Signal::SIGHUP);
    // (The watch may find the change before the signal: either way once.)
    eventually("the new certificate is loaded", GUARD, || async {
        tls.proxy.metric(&reloads("ok")).await >= 1.0
    })
    .await;
    let resp = tls.get_trusting(&rotated, "/rotated").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        tls.get_trusting(&tls.cert, "/old").await.is_err(),
        "a new connection no longer gets the old certificate"
    );

    // Half a rotation: a key that is not the certificate's. (A watch that
    // ran between the two renames above may have counted one already.)
    let failed_before = tls.proxy.metric(&reloads("failed")).await;
    let stray = tls.dir.path().join("stray.crt");
    new_certificate(&stray, &key);
    tls.proxy.signal(nix::sys::signal::Signal::SIGHUP);
    // Found by the watch, the signal, or both.
    eventually("the broken pair is refused", GUARD, || async {
        tls.proxy.metric(&reloads("failed")).await > failed_before
    })
    .await;
    let resp = tls.get_trusting(&rotated, "/kept").await.unwrap();
    assert_eq!(resp.status(), 200, "the certificate in force stays");
    assert_eq!(tls.proxy.metric(&reloads("ok")).await, 1.0);
    let log = tls.proxy.log();
    assert!(
        log.contains("TLS certificate not reloaded; the one in force stays")
            && log.contains("is not the key of the first certificate"),
        "{log}"
    );

    // A pipe at the certificate's path, even for a moment, is refused,
    // and the reloads go on after it.
    std::fs::remove_file(&cert).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&cert)
        .status()
        .unwrap();
    assert!(made.success());
    tls.proxy.signal(nix::sys::signal::Signal::SIGHUP);
    eventually("the pipe is refused", GUARD, || async {
        tls.proxy.log().contains("not a regular file")
    })
    .await;
    std::fs::remove_file(&cert).unwrap();
    let last = new_certificate(&cert, &key);
    tls.proxy.signal(nix::sys::signal::Signal::SIGHUP);
    eventually("the next certificate is loaded", GUARD, || async {
        tls.proxy.metric(&reloads("ok")).await >= 2.0
    })
    .await;
    assert_eq!(
        tls.get_trusting(&last, "/last").await.unwrap().status(),
        200
    );
}

/// A self-signed certificate for `localhost` valid from 2000 to 2001, and
/// its key.
fn expired_certificate() -> (rcgen::Certificate, rcgen::KeyPair) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    (params.self_signed(&key).unwrap(), key)
}

/// The expiry gauge of `proxy`'s listener.
fn expiry_gauge(proxy: &Proxy) -> String {
    format!(
        "edgeroute_tls_certificate_expiry_timestamp_seconds{{listener=\"{}\"}}",
        proxy.addr
    )
}

/// A proxy started with an expired certificate serves it (a load balancer
/// forwarding to the proxy does not check it), logs an error that says so
/// and what to do, and gives its expiry in the gauge.
#[tokio::test]
async fn an_expired_certificate_at_start_is_served_with_an_error_logged() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = expired_certificate();
    let (cert_path, key_path) = (dir.path().join("old.crt"), dir.path().join("old.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let us = Origin::start(US).await;
    let proxy = ProxyBuilder::new(US)
        .region(US, &[us.addr])
        .listener_options(&format!(
            "tls = {{ cert = {cert_path:?}, key = {key_path:?} }}"
        ))
        .start()
        .await;
    eventually("the expiry is logged", GUARD, || async {
        let log = proxy.log();
        log.contains("the TLS certificate in force expired at 2001-01-01T00:00:00Z")
            && log.contains("put a certificate valid now in the files")
    })
    .await;
    assert_eq!(
        proxy.metric(&expiry_gauge(&proxy)).await,
        rcgen::date_time_ymd(2001, 1, 1).unix_timestamp() as f64
    );
}

/// A certificate whose dates have passed never replaces one within them:
/// the one in force keeps serving, the refusal is logged and counted, and
/// the expiry gauge keeps the date of the chain in force.
#[tokio::test]
async fn an_expired_certificate_never_replaces_a_valid_one() {
    let tls = Tls::start("").await;
    let expiry = expiry_gauge(&tls.proxy);
    // rcgen's certificates run to 4096-01-01.
    let until_4096 = rcgen::date_time_ymd(4096, 1, 1).unix_timestamp() as f64;
    assert_eq!(tls.proxy.metric(&expiry).await, until_4096);

    let (expired, key) = expired_certificate();
    let dir = tls.dir.path();
    edgeroute_tests::proxy::write_atomically(&dir.join("tls.crt"), &expired.pem());
    edgeroute_tests::proxy::write_atomically(&dir.join("tls.key"), &key.serialize_pem());
    tls.proxy.signal(nix::sys::signal::Signal::SIGHUP);
    eventually("the expired certificate is refused", GUARD, || async {
        tls.proxy
            .log()
            .contains("the server's certificate expired at 2001-01-01T00:00:00Z")
    })
    .await;
    assert_eq!(tls.get("/kept").await.status(), 200, "the old one serves");
    assert!(
        tls.proxy
            .metric("edgeroute_tls_certificate_reloads_total{result=\"failed\"}")
            .await
            >= 1.0
    );
    assert_eq!(
        tls.proxy
            .metric("edgeroute_tls_certificate_reloads_total{result=\"ok\"}")
            .await,
        0.0
    );
    assert_eq!(tls.proxy.metric(&expiry).await, until_4096);
}

/// A proxy with an h2c listener for `backend`, which it does not probe.
async fn h2c_proxy_unprobed(backend: SocketAddr) -> Proxy {
    ProxyBuilder::new(US)
        .region(US, &[backend])
        .listener_options("h2c = true")
        .extra("[health]\nprobes = false\n")
        .start()
        .await
}

/// A proxy for `origin` with an h2c listener and `client_idle` as given.
async fn h2c_proxy(origin: &Origin, client_idle: &str) -> Proxy {
    ProxyBuilder::new(US)
        .region(US, &[origin.addr])
        .listener_options("h2c = true")
        .extra(&format!("[timeouts]\nclient_idle = \"{client_idle}\"\n"))
        .start()
        .await
}

/// [`h2c_proxy`], and a raw connection to it that has sent HTTP/2's
/// preface and its settings.
async fn h2c_raw(origin: &Origin, client_idle: &str) -> (Proxy, TcpStream) {
    let proxy = h2c_proxy(origin, client_idle).await;
    let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
    conn.write_all(&opening()).await.unwrap();
    (proxy, conn)
}

/// An HTTP/2 connection with no stream open for `client_idle` gets a
/// GOAWAY and is closed, also when its client answers nothing more (as a
/// peer that went away without a word); a stream open for longer holds
/// the GOAWAY back.
#[tokio::test]
async fn an_idle_http2_connection_is_told_to_go_away_and_closed() {
    let us = Origin::start(US).await;
    us.set(Behaviour::Hold);
    let (proxy, mut conn) = h2c_raw(&us, "1s").await;
    conn.write_all(&get_request(1, true)).await.unwrap();
    eventually("the request reaches the origin", GUARD, || async {
        us.seen().len() == 1
    })
    .await;
    // Three times `client_idle` with the stream open.
    tokio::time::sleep(Duration::from_secs(3)).await;
    us.release(1);
    let frames = h2::read_until(&mut conn, GUARD, |f| f.kind == HEADERS && f.stream == 1).await;
    assert!(
        !frames.iter().any(|f| f.kind == GOAWAY),
        "no GOAWAY while a stream is open"
    );
    let frames = Frame::decode(&until_closed(&mut conn, GUARD).await);
    let goaway = frames
        .iter()
        .find(|f| f.kind == GOAWAY)
        .expect("a GOAWAY before the close");
    assert_eq!(goaway.error_code(), 0, "NO_ERROR");
    let goaways = |reason: &str| format!("edgeroute_http2_goaways_total{{reason=\"{reason}\"}}");
    assert_eq!(proxy.metric(&goaways("idle")).await, 1.0);
    assert_eq!(proxy.metric(&goaways("malformed")).await, 0.0);
}

/// `client_idle` counts from when an HTTP/2 connection's last stream
/// ended: a request held by its backend for longer is answered, the
/// connection is closed once it idles, and the client's next request goes
/// on a new one.
#[tokio::test]
async fn an_http2_connection_idles_only_with_no_stream_open() {
    let us = Origin::start(US).await;
    us.set(Behaviour::Hold);
    let proxy = h2c_proxy(&us, "1s").await;
    let open = || async {
        proxy
            .metric("edgeroute_worker_connections{worker=\"0\"}")
            .await
            + proxy
                .metric("edgeroute_worker_connections{worker=\"1\"}")
                .await
    };
    let c = h2::client();
    let held = tokio::spawn(c.get(proxy.url("/held")).send());
    eventually("the request reaches the origin", GUARD, || async {
        us.seen().len() == 1
    })
    .await;
    // Three times `client_idle` with the stream open.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(open().await, 1.0, "the connection with a stream open stays");
    us.release(1);
    let resp = held.await.unwrap().expect("the held request is answered");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    eventually("the idle connection is closed", GUARD, || async {
        open().await == 0.0
    })
    .await;
    us.release(1);
    let resp = c.get(proxy.url("/after")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

/// Streams refused as malformed (here: requests with neither
/// `:authority` nor `host`) are answered 400 one by one, and a client that
/// keeps sending them is told to calm down (GOAWAY `ENHANCE_YOUR_CALM`)
/// and disconnected; until then the connection serves well-formed streams.
#[tokio::test]
async fn a_client_that_keeps_sending_malformed_http2_streams_is_disconnected() {
    let us = Origin::start(US).await;
    // Idle connections are not closed while this test runs.
    let (proxy, mut conn) = h2c_raw(&us, "10m").await;
    let malformed = |stream| get_request(stream, false);
    // :status 400 and 200 (static table 12 and 8).
    let (bad_request, ok) = (0x8c, 0x88);
    // A few malformed streams, then a good one on stream 7.
    for stream in [1, 3, 5] {
        conn.write_all(&malformed(stream)).await.unwrap();
    }
    conn.write_all(&get_request(7, true)).await.unwrap();
    let answer = |frames: &[Frame], stream| {
        frames
            .iter()
            .find(|f| f.kind == HEADERS && f.stream == stream)
            .map(|f| f.payload[0])
    };
    let frames = h2::read_until(&mut conn, GUARD, |f| f.kind == HEADERS && f.stream == 7).await;
    for stream in [1, 3, 5] {
        assert_eq!(
            answer(&frames, stream),
            Some(bad_request),
            "stream {stream}"
        );
    }
    assert_eq!(answer(&frames, 7), Some(ok));

    // 29 more make 32: the connection is closed, with streams still to come.
    for stream in (9..).step_by(2).take(29) {
        conn.write_all(&malformed(stream)).await.unwrap();
    }
    let frames = Frame::decode(&until_closed(&mut conn, GUARD).await);
    // Streams 9–61 are the 4th to 30th malformed: answered before the
    // close (the last ones' answers may be cut by it).
    for stream in (9..=61).step_by(2) {
        assert_eq!(
            answer(&frames, stream),
            Some(bad_request),
            "stream {stream}"
        );
    }
    let goaway = frames
        .iter()
        .find(|f| f.kind == GOAWAY)
        .expect("told to go away before the close");
    assert_eq!(goaway.error_code(), 0xb, "ENHANCE_YOUR_CALM");
    assert_eq!(
        proxy
            .metric("edgeroute_http2_goaways_total{reason=\"malformed\"}")
            .await,
        1.0
    );
    assert_eq!(us.seen().len(), 1, "only the well-formed request went on");
}

/// An HTTP/2 request that names its host in a `host` field instead of
/// `:authority` has it checked as an HTTP/1 request's: a value that is not
/// a host and port is answered 400 and goes no further; a valid one
/// reaches the backend as its `Host`.
#[tokio::test]
async fn an_http2_host_field_that_names_no_host_is_refused() {
    let us = Origin::start(US).await;
    let (_proxy, mut conn) = h2c_raw(&us, "10m").await;
    for (stream, host) in [
        (1, "a/b"),
        (3, "a b"),
        (5, "h:99999"),
        (7, "app.example:8080"),
    ] {
        conn.write_all(&h2::get_with_host(stream, host))
            .await
            .unwrap();
    }
    let frames = h2::read_until_all(&mut conn, GUARD, |frames| {
        frames.iter().filter(|f| f.kind == HEADERS).count() == 4
    })
    .await;
    let status = |stream| {
        frames
            .iter()
            .find(|f| f.kind == HEADERS && f.stream == stream)
            .map(|f| f.payload[0])
    };
    // :status 400 and 200 (static table 12 and 8).
    for stream in [1, 3, 5] {
        assert_eq!(status(stream), Some(0x8c), "stream {stream}");
    }
    assert_eq!(status(7), Some(0x88));
    let seen = us.seen();
    assert_eq!(seen.len(), 1, "only the valid request went on");
    assert_eq!(seen[0].header("host"), Some("app.example:8080"));
}

/// An HTTP/2 client that stops sending its request's body, or stops
/// taking the answer (its flow-control window stays shut), has the stream
/// reset after `timeouts.client_idle`, as an HTTP/1 client has its
/// connection closed.
#[tokio::test]
async fn an_http2_stream_whose_client_stalls_is_reset_after_client_idle() {
    let us = Origin::start(US).await;
    let (proxy, mut conn) = h2c_raw(&us, "1s").await;
    conn.write_all(&h2::post_head(1)).await.unwrap();
    let frames = h2::read_until(&mut conn, GUARD, |f| f.kind == RST_STREAM && f.stream == 1).await;
    assert!(
        !frames.iter().any(|f| f.kind == HEADERS && f.stream == 1),
        "no answer to a request whose body never came"
    );

    // SETTINGS_INITIAL_WINDOW_SIZE 0: the client takes no body bytes.
    let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
    conn.write_all(&h2::opening_with(&[(0x4, 0)]))
        .await
        .unwrap();
    conn.write_all(&get_request(1, true)).await.unwrap();
    let frames = h2::read_until(&mut conn, GUARD, |f| f.kind == RST_STREAM && f.stream == 1).await;
    assert!(
        frames.iter().any(|f| f.kind == HEADERS && f.stream == 1),
        "the answer's head went out before its body stalled"
    );
    assert_eq!(us.count("GET"), 1);
}

/// An HTTP/2 connection serves up to 100 streams at once; the 101st is
/// refused with `REFUSED_STREAM`, which tells the client it may retry it,
/// and the others are answered.
#[tokio::test]
async fn an_http2_stream_over_the_concurrency_limit_is_refused_for_retry() {
    let us = Origin::start(US).await;
    us.set(Behaviour::Hold);
    let (_proxy, mut conn) = h2c_raw(&us, "10m").await;
    for stream in (1..).step_by(2).take(100) {
        conn.write_all(&get_request(stream, true)).await.unwrap();
    }
    eventually("100 requests reach the origin", GUARD, || async {
        us.seen().len() == 100
    })
    .await;
    conn.write_all(&get_request(201, true)).await.unwrap();
    let frames = h2::read_until(&mut conn, GUARD, |f| {
        f.kind == RST_STREAM && f.stream == 201
    })
    .await;
    let reset = frames.iter().find(|f| f.stream == 201).unwrap();
    assert_eq!(reset.payload, 0x7_u32.to_be_bytes(), "REFUSED_STREAM");
    us.release(100);
    // Each of the 100 gets its answer's head.
    h2::read_until_all(&mut conn, GUARD, |frames| {
        frames.iter().filter(|f| f.kind == HEADERS).count() == 100
    })
    .await;
    assert_eq!(
        us.seen().len(),
        100,
        "the refused stream reached no backend"
    );
}

/// A backend for [`an_http2_stream_the_client_resets_ends_its_backend_exchange`]:
/// its first connection's request gets no answer, its second's the head
/// of an answer and 10 of its 100 bytes; each then waits for the proxy to
/// close the connection. Counts the request heads read, and the
/// connections the proxy closed.
async fn answer_stalling_backend() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (asked, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (asked_count, closed_count) = (Arc::clone(&asked), Arc::clone(&closed));
    tokio::spawn(async move {
        let mut accepted = 0;
        while let Ok((mut s, _)) = listener.accept().await {
            accepted += 1;
            let answer: &[u8] = if accepted == 1 {
                b""
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"
            };
            let (asked, closed) = (Arc::clone(&asked_count), Arc::clone(&closed_count));
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                asked.fetch_add(1, Ordering::SeqCst);
                s.write_all(answer).await.unwrap();
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, asked, closed)
}

/// A client that resets its HTTP/2 stream ends the proxy's exchange for
/// it at once, whether the backend has not answered yet or is partway
/// through its answer: the backend connection is closed and the request
/// counted, where it used to be held until the backend's read timeout
/// (30 s). So a client that opens streams and resets them cannot keep
/// more exchanges running than it has streams open.
#[tokio::test]
async fn an_http2_stream_the_client_resets_ends_its_backend_exchange() {
    let (backend, asked, closed) = answer_stalling_backend().await;
    let proxy = h2c_proxy_unprobed(backend).await;
    let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
    conn.write_all(&opening()).await.unwrap();
    let limit = Duration::from_secs(10);
    let counted = |status: &'static str| {
        let proxy = &proxy;
        async move {
            proxy
                .metric(&format!(
                    "edgeroute_requests_total{{region=\"{US}\",route=\"read\",status=\"{status}\"}}"
                ))
                .await
        }
    };

    // Before the answer.
    conn.write_all(&get_request(1, true)).await.unwrap();
    eventually("the backend has the request", limit, || async {
        asked.load(Ordering::SeqCst) == 1
    })
    .await;
    conn.write_all(&h2::cancel(1)).await.unwrap();
    eventually("the backend connection is closed", limit, || async {
        closed.load(Ordering::SeqCst) == 1
    })
    .await;
    eventually("the request is counted, unanswered", limit, || async {
        counted("0").await == 1.0
    })
    .await;

    // Partway through the answer.
    conn.write_all(&get_request(3, true)).await.unwrap();
    h2::read_until(&mut conn, GUARD, |f| f.kind == HEADERS && f.stream == 3).await;
    conn.write_all(&h2::cancel(3)).await.unwrap();
    eventually("the second backend connection is closed", limit, || async {
        closed.load(Ordering::SeqCst) == 2
    })
    .await;
    eventually(
        "the request is counted with its answer's status",
        limit,
        || async { counted("200").await == 1.0 },
    )
    .await;
}

/// With `limits.max_client_connections` open, the listeners accept no
/// more: a new client waits in the backlog, and is served as soon as one
/// of the open connections closes.
#[tokio::test]
async fn a_client_over_the_connection_limit_waits_until_one_closes() {
    let us = Origin::start(US).await;
    let proxy = ProxyBuilder::new(US)
        .region(US, &[us.addr])
        .extra("[limits]\nmax_client_connections = 2\n")
        .start()
        .await;
    let mut first = TcpStream::connect(proxy.addr).await.unwrap();
    let mut second = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(get_on(&mut first, "/x").await, "HTTP/1.1 200 OK");
    assert_eq!(get_on(&mut second, "/x").await, "HTTP/1.1 200 OK");

    // The listeners wait for room before they accept the next client.
    eventually("the listeners wait for room", GUARD, || async {
        proxy
            .metric("edgeroute_accept_waits_total{reason=\"connection_limit\"}")
            .await
            >= 1.0
    })
    .await;
    let mut third = TcpStream::connect(proxy.addr).await.unwrap();
    eventually(
        "the third connection waits in the backlog",
        GUARD,
        || async { accept_queue(proxy.addr) == 1 },
    )
    .await;
    drop(first);
    assert_eq!(get_on(&mut third, "/x").await, "HTTP/1.1 200 OK");
    assert_eq!(accept_queue(proxy.addr), 0);
    assert_eq!(us.count("GET"), 3);
    drop(second);
}

/// An answer without a body (to a HEAD) ends its HTTP/2 stream with its
/// HEADERS frame, as strict clients expect, with no DATA frame after it.
#[tokio::test]
async fn an_http2_answer_without_a_body_ends_with_its_headers() {
    let us = Origin::start(US).await;
    let (_proxy, mut conn) = h2c_raw(&us, "10m").await;
    conn.write_all(&h2::head_request(1)).await.unwrap();
    let frames = h2::read_until(&mut conn, GUARD, |f| {
        f.stream == 1 && f.flags & h2::END_STREAM != 0
    })
    .await;
    let on_stream: Vec<u8> = frames
        .iter()
        .filter(|f| f.stream == 1)
        .map(|f| f.kind)
        .collect();
    assert_eq!(on_stream, [h2::HEADERS], "HEADERS with END_STREAM alone");
    assert_eq!(us.count("HEAD"), 1);
}

/// An HTTP/2 request body that falls behind
/// `limits.min_request_body_rate` once `timeouts.request_body` has passed
/// is answered 408 on its stream, as an HTTP/1 one is; the connection
/// goes on serving.
#[tokio::test]
async fn an_http2_request_body_slower_than_the_minimum_rate_is_answered_408() {
    let us = Origin::start(US).await;
    let proxy = ProxyBuilder::new(US)
        .region(US, &[us.addr])
        .listener_options("h2c = true")
        .extra("[timeouts]\nrequest_body = \"1s\"\n[limits]\nmin_request_body_rate = \"100B/s\"\n")
        .start()
        .await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (client, conn) = ::h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let post = http::Request::post("http://localhost/upload")
        .body(())
        .unwrap();
    let (answer, mut body) = client.send_request(post, false).unwrap();
    // A byte every 200 ms: 5 bytes a second against the 100 asked for.
    let mut answer = std::pin::pin!(answer);
    let answer = tokio::time::timeout(GUARD, async {
        loop {
            tokio::select! {
                answer = &mut answer => break answer,
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    // Refused once the proxy has reset the stream's body.
                    let _sent = body.send_data(bytes::Bytes::from_static(b"x"), false);
                }
            }
        }
    })
    .await
    .expect("an answer while the body was still coming")
    .unwrap();
    assert_eq!(answer.status(), 408);
    assert_eq!(answer.headers()["x-edgeroute-error"], "body_too_slow");

    let mut client = client.ready().await.unwrap();
    let get = http::Request::get("http://localhost/after")
        .body(())
        .unwrap();
    let (answer, _) = client.send_request(get, true).unwrap();
    assert_eq!(answer.await.unwrap().status(), 200);
    assert_eq!(us.count("POST"), 0, "no body reached the backend whole");
}

/// An HTTP/2 request whose body runs past its `content-length` is
/// malformed: the bytes that complete the declared length wait for the
/// stream's end, so the backend never gets the request whole, and the
/// stream is refused. One that ends where it declared goes through.
#[tokio::test]
async fn an_http2_body_longer_than_its_content_length_never_reaches_the_backend_whole() {
    let us = Origin::start(US).await;
    let (_proxy, mut conn) = h2c_raw(&us, "10m").await;
    conn.write_all(&h2::post_head_with_length(1, 3))
        .await
        .unwrap();
    conn.write_all(&Frame::encode(h2::DATA, 0, 1, b"abc"))
        .await
        .unwrap();
    // A round trip on the connection: the proxy has read the DATA.
    conn.write_all(&h2::ping()).await.unwrap();
    h2::read_until(&mut conn, GUARD, |f| f.kind == h2::PING).await;
    conn.write_all(&Frame::encode(h2::DATA, h2::END_STREAM, 1, b"de"))
        .await
        .unwrap();
    // Reset; the same on a later stream, ended where it declared, goes
    // through.
    reset_then_well_formed(&mut conn, &us, b"abc").await;
}

/// Stream 1 on `conn` is reset, not answered; then a POST of `body` on
/// stream 3, declaring its length and ending there, is answered, and it
/// is the one POST that reached `us`, whole.
async fn reset_then_well_formed(conn: &mut TcpStream, us: &Origin, body: &[u8]) {
    let frames = h2::read_until(conn, GUARD, |f| {
        f.stream == 1 && (f.kind == RST_STREAM || f.kind == HEADERS)
    })
    .await;
    let last = frames.last().unwrap();
    assert_eq!(
        last.kind, RST_STREAM,
        "stream 1 got frame type {}",
        last.kind
    );
    conn.write_all(&h2::post_head_with_length(3, body.len()))
        .await
        .unwrap();
    conn.write_all(&Frame::encode(h2::DATA, h2::END_STREAM, 3, body))
        .await
        .unwrap();
    h2::read_until(conn, GUARD, |f| f.stream == 3 && f.kind == HEADERS).await;
    eventually(
        "the well-formed request reaches the origin",
        GUARD,
        || async { us.count("POST") >= 1 },
    )
    .await;
    let seen = us.seen();
    let posts: Vec<_> = seen.iter().filter(|s| s.method == "POST").collect();
    assert_eq!(posts.len(), 1, "only the well-formed one: {seen:?}");
    assert_eq!(posts[0].body_len, body.len());
}

/// The bytes that complete an HTTP/2 request's declared length wait for
/// its stream's end. An attempt that fails meanwhile (its pooled backend
/// connection closed before anything went out) is followed by one that
/// sends them once: sent twice, the second copy would reach the backend as
/// a request of its own, whose answer another client would get.
#[tokio::test]
async fn an_http2_body_held_for_its_stream_end_goes_to_the_backend_once() {
    let backend = ClosingBackend::start().await;
    // One worker thread: the POST takes the connection the GET left in
    // that thread's pool.
    let proxy = ProxyBuilder::new(US)
        .threads(1)
        .region(US, &[backend.addr])
        .listener_options("h2c = true")
        .extra("[health]\nprobes = false\neject_after = 100\n")
        .start()
        .await;
    let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
    conn.write_all(&opening()).await.unwrap();
    conn.write_all(&get_request(1, true)).await.unwrap();
    h2::read_until(&mut conn, GUARD, |f| f.kind == HEADERS && f.stream == 1).await;
    // The GET's exchange has ended: its connection is in the pool.
    let inflight =
        || async { proxy.routing().await["regions"][0]["backends"][0]["inflight"].clone() };
    eventually("the GET's exchange ends", GUARD, || async {
        inflight().await == 0
    })
    .await;
    let body: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: internal\r\n\r\n";
    conn.write_all(&h2::post_head_with_length(3, body.len()))
        .await
        .unwrap();
    conn.write_all(&Frame::encode(h2::DATA, 0, 3, body))
        .await
        .unwrap();
    // A round trip on the connection: the proxy has read the DATA, and
    // holds it for the stream's end on the pooled connection it took.
    conn.write_all(&h2::ping()).await.unwrap();
    h2::read_until(&mut conn, GUARD, |f| f.kind == h2::PING).await;
    eventually("the POST holds the backend", GUARD, || async {
        inflight().await == 1
    })
    .await;
    backend.close_idle(b"");
    eventually("the backend closed its idle connection", GUARD, || async {
        backend.closed() == 1
    })
    .await;
    conn.write_all(&Frame::encode(h2::DATA, h2::END_STREAM, 3, b""))
        .await
        .unwrap();
    h2::read_until(&mut conn, GUARD, |f| f.kind == HEADERS && f.stream == 3).await;
    let seen: Vec<(String, Vec<u8>)> = backend.seen();
    let methods: Vec<&str> = seen.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(methods, ["GET", "POST"], "no request of its own: {seen:?}");
    assert_eq!(seen[1].1, body, "the body, once");
    assert_eq!(proxy.metric("edgeroute_retries_total").await, 1.0);
}

/// An HTTP/2 request declaring `content-length: 0` is whole only at its
/// stream's end: one whose stream goes on with DATA is malformed and never
/// reaches the backend as an empty request; one ended by an empty DATA
/// frame goes through.
#[tokio::test]
async fn an_http2_request_declaring_no_body_waits_for_its_stream_to_end() {
    let us = Origin::start(US).await;
    let (_proxy, mut conn) = h2c_raw(&us, "10m").await;
    conn.write_all(&h2::post_head_with_length(1, 0))
        .await
        .unwrap();
    // A round trip on the connection: the proxy has read the head.
    conn.write_all(&h2::ping()).await.unwrap();
    h2::read_until(&mut conn, GUARD, |f| f.kind == h2::PING).await;
    conn.write_all(&Frame::encode(h2::DATA, h2::END_STREAM, 1, b"abc"))
        .await
        .unwrap();
    reset_then_well_formed(&mut conn, &us, b"").await;
}

/// A client that breaks HTTP/2 (here, DATA on stream 0) is told to go
/// away by the protocol library itself; that GOAWAY is counted too.
#[tokio::test]
async fn a_goaway_for_a_protocol_error_is_counted() {
    let us = Origin::start(US).await;
    let (proxy, mut conn) = h2c_raw(&us, "10m").await;
    let reason = "edgeroute_http2_goaways_total{reason=\"protocol_error\"}";
    assert_eq!(proxy.metric(reason).await, 0.0);
    conn.write_all(&Frame::encode(h2::DATA, 0, 0, b"x"))
        .await
        .unwrap();
    let frames = h2::read_until(&mut conn, GUARD, |f| f.kind == GOAWAY).await;
    const PROTOCOL_ERROR: u32 = 0x1;
    assert_eq!(frames.last().unwrap().error_code(), PROTOCOL_ERROR);
    eventually("the GOAWAY is counted", GUARD, || async {
        proxy.metric(reason).await == 1.0
    })
    .await;
}

/// A client that sends control frames (here, PINGs) far past what its
/// requests account for is told to go away with `ENHANCE_YOUR_CALM` and
/// disconnected; one whose requests account for them is served. (The
/// budget: 100 at once, 10 more a second and for each frame of a request
/// or an answer.)
#[tokio::test]
async fn an_http2_client_flooding_control_frames_is_disconnected() {
    let us = Origin::start(US).await;
    let (proxy, mut conn) = h2c_raw(&us, "10m").await;
    // 50 requests with 5 PINGs after each: 250 PINGs, more than the 100
    // the connection starts with, but earned by the requests.
    let mut bytes = Vec::new();
    let streams: Vec<u32> = (1..).step_by(2).take(50).collect();
    for stream in &streams {
        bytes.extend(get_request(*stream, true));
        for _ in 0..5 {
            bytes.extend(h2::ping());
        }
    }
    conn.write_all(&bytes).await.unwrap();
    let frames = h2::read_until_all(&mut conn, GUARD, |frames| {
        streams
            .iter()
            .all(|s| frames.iter().any(|f| f.kind == HEADERS && f.stream == *s))
    })
    .await;
    assert!(
        !frames.iter().any(|f| f.kind == GOAWAY),
        "a GOAWAY to a client whose requests account for its PINGs"
    );

    // 2,000 PINGs at once, with no request: told to go away.
    let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
    let mut bytes = opening();
    for _ in 0..2_000 {
        bytes.extend(h2::ping());
    }
    conn.write_all(&bytes).await.unwrap();
    let frames = h2::read_until(&mut conn, GUARD, |f| f.kind == GOAWAY).await;
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    assert_eq!(frames.last().unwrap().error_code(), ENHANCE_YOUR_CALM);
    let pongs = frames.iter().filter(|f| f.kind == h2::PING).count();
    assert!(pongs < 2_000, "{pongs} PINGs answered");
    until_closed(&mut conn, GUARD).await;
    assert_eq!(
        proxy
            .metric("edgeroute_http2_goaways_total{reason=\"flood\"}")
            .await,
        1.0
    );
}

/// HTTP/2 carries no transfer coding: an answer coded other than by
/// chunks (here gzip, ended by the close) would reach an HTTP/2 client
/// altered, with nothing to say so; it gets 502 instead.
#[tokio::test]
async fn an_answer_with_a_transfer_coding_http2_cannot_carry_is_a_502() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _read = conn.read(&mut buf).await;
                let _written = conn
                    .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n\x1f\x8b coded")
                    .await;
            });
        }
    });
    let proxy = h2c_proxy_unprobed(backend).await;
    let answer = h2::client().get(proxy.url("/coded")).send().await.unwrap();
    assert_eq!(answer.status(), 502);
    assert_eq!(
        answer.headers()["x-edgeroute-error"],
        "upstream_unavailable"
    );
}

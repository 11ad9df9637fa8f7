//! The forwarding path at the byte level: upgrades, `Expect: 100-continue`,
//! `CONNECT`, hop-by-hop fields, pooled backend connections that the
//! backend closed while they were idle, idle client connections and
//! tunnels, a backend that answers before it has read the whole body, and
//! the ways a backend may frame its answer.

use edgeroute_tests::{Origin, Proxy, ProxyBuilder, eventually, table};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const US: &str = "us-east-1";
const LIMIT: Duration = Duration::from_secs(10);

/// An HTTP/1.1 WebSocket opening handshake.
const WEBSOCKET_UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\n\
    Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A backend's acceptance of [`WEBSOCKET_UPGRADE`].
const SWITCHING: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";

/// A client connection through `proxy` upgraded to a WebSocket tunnel.
async fn open_tunnel(proxy: &Proxy) -> TcpStream {
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(WEBSOCKET_UPGRADE).await.unwrap();
    let head = read_until(&mut s, |t| t.contains("\r\n\r\n")).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

async fn proxy_for(origin: SocketAddr) -> edgeroute_tests::Proxy {
    ProxyBuilder::new(US)
        .region(US, &[origin])
        .table(table(1, 1, Some(US), &[(US, "active")]))
        .extra("[health]\nprobes = false\n")
        .start()
        .await
}

/// Reads from `stream` until `done` holds for what arrived (or the stream
/// ends), within [`LIMIT`].
async fn read_until(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    done: impl Fn(&str) -> bool,
) -> String {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        while !done(&String::from_utf8_lossy(&got)) {
            let n = stream.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(LIMIT, read)
        .await
        .expect("the proxy answered in time");
    String::from_utf8_lossy(&got).into_owned()
}

/// Sends one raw request on a new connection and reads the whole answer.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_until(&mut s, complete_response).await
}

fn complete_response(text: &str) -> bool {
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().expect("length"))
        })
        .unwrap_or(0);
    body.len() >= len
}

#[tokio::test]
async fn a_websocket_upgrade_becomes_a_tunnel_both_ways() {
    let origin = Origin::start(US).await;
    let proxy = proxy_for(origin.addr).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let asked = std::time::Instant::now();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: app\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_until(&mut s, |t| t.contains("\r\n\r\n")).await;
    let upgraded_within = asked.elapsed();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-edgeroute-region: us-east-1"),
        "{head}"
    );
    for message in ["hello", "over the tunnel"] {
        s.write_all(message.as_bytes()).await.unwrap();
        let echoed = read_until(&mut s, |t| t.contains(message)).await;
        assert_eq!(echoed, message);
    }
    let seen = &origin.seen()[0];
    assert_eq!(seen.header("upgrade"), Some("websocket"));
    assert_eq!(seen.header("sec-websocket-version"), Some("13"));
    // The duration histogram takes the time to the 101, which the proxy
    // measured inside the client's wait for it, not the tunnel's life
    // (held open a while longer here).
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(s);
    proxy.access_line(&["status=101"]).await;
    let recorded = proxy
        .metric("edgeroute_request_duration_seconds_sum{region=\"us-east-1\",route=\"read\"}")
        .await;
    assert!(
        recorded > 0.0 && recorded <= upgraded_within.as_secs_f64(),
        "{recorded} s recorded, the 101 came within {upgraded_within:?}"
    );
}

#[tokio::test]
async fn expect_continue_is_answered_and_the_body_arrives() {
    let origin = Origin::start(US).await;
    let proxy = proxy_for(origin.addr).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    // The client waits for the invitation before it sends the body.
    let interim = read_until(&mut s, |t| t.contains("\r\n\r\n")).await;
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    s.write_all(b"hello").await.unwrap();
    let resp = read_until(&mut s, complete_response).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let seen = &origin.seen()[0];
    assert_eq!(seen.body_len, 5);
    assert_eq!(
        seen.header("expect"),
        None,
        "the proxy answered Expect itself"
    );
}

#[tokio::test]
async fn connect_is_refused_with_a_reason_and_hop_by_hop_fields_stay_behind() {
    let origin = Origin::start(US).await;
    let proxy = proxy_for(origin.addr).await;
    let resp = exchange(
        proxy.addr,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
    assert!(
        resp.contains("x-edgeroute-error: method_not_allowed"),
        "{resp}"
    );
    assert!(resp.contains("CONNECT is not supported"), "{resp}");
    assert!(origin.seen().is_empty());
    // Whatever the table says: a failover under way refuses writes with
    // 503, but a tunnel is refused as such.
    let mut failing_over = table(2, 2, Some(US), &[(US, "active")]);
    failing_over["failover_in_progress"] = true.into();
    proxy.swap_table(&failing_over).await;
    let resp = exchange(
        proxy.addr,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
    assert_eq!(
        proxy
            .metric("edgeroute_refusals_total{reason=\"method_not_allowed\"}")
            .await,
        2.0
    );
    proxy
        .swap_table(&table(2, 3, Some(US), &[(US, "active")]))
        .await;

    let resp = exchange(
        proxy.addr,
        b"GET /items HTTP/1.1\r\nHost: app\r\nConnection: close, not a field\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("x-edgeroute-error: bad_request"), "{resp}");
    assert!(origin.seen().is_empty());

    let resp = edgeroute_tests::client()
        .get(proxy.url("/items"))
        .header("connection", "x-private")
        .header("x-private", "client-side only")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("x-end-to-end", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = &origin.seen()[0];
    assert_eq!(seen.header("x-private"), None);
    assert_eq!(seen.header("proxy-authorization"), None);
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));
}

#[tokio::test]
async fn an_absolute_url_target_reaches_the_backend_as_host_and_path() {
    let origin = Origin::start(US).await;
    let proxy = proxy_for(origin.addr).await;
    let answer = exchange(
        proxy.addr,
        b"GET http://app.example.com:8080/orders?id=7 HTTP/1.1\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = &origin.seen()[0];
    assert_eq!(seen.path, "/orders");
    assert_eq!(seen.header("host"), Some("app.example.com:8080"));

    let refused = exchange(
        proxy.addr,
        b"GET ftp://files.example.com/x HTTP/1.1\r\n\r\n",
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    assert_eq!(
        origin.seen().len(),
        1,
        "the refused request reached no backend"
    );
}

/// The backend sees the proxy in `Via` after the hops before it; an
/// `OPTIONS` or `TRACE` spends one hop of its `Max-Forwards`, and one with
/// none left is answered by the proxy (a `TRACE` with the request as
/// received, less its credentials) without reaching a backend.
#[tokio::test]
async fn via_names_the_proxy_and_options_and_trace_spend_max_forwards() {
    let origin = Origin::start(US).await;
    let proxy = proxy_for(origin.addr).await;
    let answer = exchange(
        proxy.addr,
        b"GET /v HTTP/1.1\r\nHost: app\r\nVia: 1.1 cdn.example (CDN)\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let via: Vec<_> = origin.seen()[0]
        .headers
        .get_all("via")
        .iter()
        .cloned()
        .collect();
    assert_eq!(via, ["1.1 cdn.example (CDN)", "1.1 edgeroute-us-east-1"]);

    let answer = exchange(
        proxy.addr,
        b"OPTIONS * HTTP/1.1\r\nHost: app\r\nMax-Forwards: 2\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(origin.count("OPTIONS"), 1);
    let seen = origin.seen();
    assert_eq!(seen[1].header("max-forwards"), Some("1"));

    let answer = exchange(
        proxy.addr,
        b"OPTIONS /o HTTP/1.1\r\nHost: app\r\nMax-Forwards: 0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("x-edgeroute-region: us-east-1\r\n"),
        "{answer}"
    );
    let trace = exchange(
        proxy.addr,
        b"TRACE /t?q=1 HTTP/1.1\r\nHost: app\r\nMax-Forwards: 0\r\nCookie: session=secret\r\n\
          Authorization: Bearer secret\r\nX-Probe: 7\r\n\r\n",
    )
    .await;
    let (head, body) = trace.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200"), "{trace}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: message/http"),
        "{head}"
    );
    assert!(body.starts_with("TRACE /t?q=1 HTTP/1.1\r\n"), "{body}");
    assert!(body.contains("Host: app\r\n"), "{body}");
    assert!(body.contains("X-Probe: (withheld)\r\n"), "{body}");
    assert!(body.contains("Cookie: (withheld)\r\n"), "{body}");
    assert!(!body.contains("secret"), "credentials reflected: {body}");
    assert_eq!(
        origin.count("OPTIONS"),
        1,
        "the last hop's OPTIONS stayed at the proxy"
    );
    assert_eq!(origin.count("TRACE"), 0);

    // The target `*` is for OPTIONS only, last hop or not.
    let refused = exchange(
        proxy.addr,
        b"TRACE * HTTP/1.1\r\nHost: app\r\nMax-Forwards: 0\r\n\r\n",
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    let refused = exchange(
        proxy.addr,
        b"TRACE /t HTTP/1.1\r\nHost: app\r\nMax-Forwards: two\r\n\r\n",
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    assert!(refused.contains("Max-Forwards"), "{refused}");
    assert_eq!(origin.count("TRACE"), 0);
}

/// Two regions' proxies that send a request to each other (each one's
/// backends are the other proxy) stop it once it has passed one of them
/// ten times: the client gets a 508 that says so, not a wait for
/// timeouts or a head grown past its limit.
#[tokio::test]
async fn a_request_going_round_between_two_regions_is_stopped() {
    let us_addr = edgeroute_tests::proxy::free_addr();
    let eu = ProxyBuilder::new("eu-west-1")
        .region("eu-west-1", &[us_addr])
        .extra("[health]\nprobes = false\n")
        .start()
        .await;
    let us = ProxyBuilder::new(US)
        .address(us_addr)
        .region(US, &[eu.addr])
        .extra("[health]\nprobes = false\n")
        .start()
        .await;
    let answer = reqwest::get(us.url("/round")).await.unwrap();
    assert_eq!(answer.status(), 508);
    assert_eq!(answer.headers()["x-edgeroute-error"], "loop_detected");
    let body: serde_json::Value = answer.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("10 times") && message.contains("edgeroute-us-east-1"),
        "{message}"
    );
}

#[tokio::test]
async fn a_request_without_a_valid_host_or_with_a_fragment_is_refused() {
    let origin = Origin::start(US).await;
    let proxy = proxy_for(origin.addr).await;
    for (request, why) in [
        (&b"GET /x HTTP/1.1\r\n\r\n"[..], "must carry a Host field"),
        (b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n", "Host field is not"),
        (b"GET /x HTTP/1.1\r\nHost: a/b\r\n\r\n", "Host field is not"),
        (
            b"GET /x HTTP/1.1\r\nHost: a:b:c\r\n\r\n",
            "Host field is not",
        ),
        (
            b"GET /x HTTP/1.1\r\nHost: h:99999\r\n\r\n",
            "Host field is not",
        ),
        // Rust's number parser takes a `+`; a port is digits alone.
        (
            b"GET /x HTTP/1.1\r\nHost: h:+80\r\n\r\n",
            "Host field is not",
        ),
        // An http URI's host is never empty (RFC 9110 §4.2.1).
        (b"GET /x HTTP/1.1\r\nHost:\r\n\r\n", "must name a host"),
        (b"GET /x#top HTTP/1.1\r\nHost: app\r\n\r\n", "fragment"),
        (b"GET http://h:99999/x HTTP/1.1\r\n\r\n", "authority is not"),
        (
            b"GET http://user:pw@app/x HTTP/1.1\r\n\r\n",
            "user information",
        ),
    ] {
        let answer = exchange(proxy.addr, request).await;
        assert!(
            answer.starts_with("HTTP/1.1 400") && answer.contains(why),
            "{}: {answer}",
            String::from_utf8_lossy(request)
        );
    }
    assert!(
        origin.seen().is_empty(),
        "a refused request reached a backend"
    );
    // HTTP/1.0 has no Host rule, and an empty port is the default one.
    for request in [
        &b"GET /x HTTP/1.0\r\n\r\n"[..],
        b"GET /x HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: app:\r\nConnection: close\r\n\r\n",
    ] {
        let answer = exchange(proxy.addr, request).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    // The backend is spoken to in HTTP/1.1, which names a host always: the
    // HTTP/1.0 request's is empty.
    let seen = origin.seen();
    assert_eq!(seen[0].header("host"), Some(""));
    assert_eq!(seen[1].header("host"), Some("[::1]:8080"));
    assert_eq!(seen[2].header("host"), Some("app:"));
}

/// A request the proxy cannot forward as it is (a field the proxy sets,
/// named in `Connection`) is found so once its region is chosen: it
/// reached no backend, so none and no region is named for it, and the
/// write gets no read-your-writes cookie.
#[tokio::test]
async fn a_request_that_cannot_be_forwarded_names_no_backend_and_gets_no_cookie() {
    let origin = Origin::start(US).await;
    let proxy = proxy_for(origin.addr).await;
    let answer = exchange(
        proxy.addr,
        b"POST /orders HTTP/1.1\r\nHost: app\r\nConnection: x-request-id\r\nContent-Length: 1\r\n\r\nx",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("x-request-id"),
        "{answer}"
    );
    assert!(
        !answer.to_ascii_lowercase().contains("set-cookie"),
        "{answer}"
    );
    let line = proxy.access_line(&["status=400"]).await;
    assert!(
        line.contains("region=\"none\"")
            && line.contains("attempts=0")
            && line.contains("backend=\"\""),
        "{line}"
    );
    assert_eq!(
        proxy
            .metric("edgeroute_requests_total{region=\"none\",route=\"write\",status=\"400\"}")
            .await,
        1.0
    );
    assert!(origin.seen().is_empty());
}

/// A backend that answers an upgrade `101`, reads what comes through the
/// tunnel until `hi` has come, then either resets its connection
/// (`reset`) or reads on and reports how its side ended: `None` for an
/// end of stream, else the error's kind.
async fn upgrading_backend(
    reset: bool,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Receiver<Option<std::io::ErrorKind>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_until(&mut s, |t| t.contains("\r\n\r\n")).await;
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            .await
            .unwrap();
        read_until(&mut s, |t| t.contains("hi")).await;
        if reset {
            s.set_zero_linger().unwrap();
            drop(s);
            return;
        }
        let mut buf = [0u8; 64];
        let ended = loop {
            match s.read(&mut buf).await {
                Ok(0) => break None,
                Ok(_) => {}
                Err(e) => break Some(e.kind()),
            }
        };
        let _ = tx.send(ended);
    });
    (addr, rx)
}

/// A tunnel side whose connection is reset ends the other side's with a
/// reset too, either way round: an end of stream would tell that peer the
/// tunnel was closed in good order.
#[tokio::test]
async fn a_reset_on_one_side_of_a_tunnel_reaches_the_other_as_a_reset() {
    // The client resets: the backend's read fails with a reset.
    let (backend, ended) = upgrading_backend(false).await;
    let proxy = proxy_for(backend).await;
    let mut s = open_tunnel(&proxy).await;
    s.write_all(b"hi").await.unwrap();
    s.set_zero_linger().unwrap();
    drop(s);
    let ended = tokio::time::timeout(LIMIT, ended)
        .await
        .expect("the backend's side ended")
        .unwrap();
    assert_eq!(ended, Some(std::io::ErrorKind::ConnectionReset));

    // The backend resets: the client's read fails with a reset.
    let (backend, _) = upgrading_backend(true).await;
    let proxy = proxy_for(backend).await;
    let mut s = open_tunnel(&proxy).await;
    s.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(LIMIT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(e.kind()),
            }
        }
    })
    .await
    .expect("the client's side ended");
    assert_eq!(read, Some(std::io::ErrorKind::ConnectionReset));
}

/// A request head over 64 KiB, or with more than 256 fields, is answered
/// 431 with its code and reaches no backend; the proxy serves on, and
/// heads just within each limit are forwarded.
#[tokio::test]
async fn a_request_head_over_its_limits_is_a_431_and_reaches_no_backend() {
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let (backend, accepted) = scripted_backend(&[OK]).await;
    let proxy = proxy_for(backend).await;
    let head = |fields: usize, each: usize| {
        let mut h = b"GET /big HTTP/1.1\r\nHost: app\r\nConnection: close\r\n".to_vec();
        for i in 0..fields {
            h.extend_from_slice(format!("x-f{i:03}: {}\r\n", "v".repeat(each)).as_bytes());
        }
        h.extend_from_slice(b"\r\n");
        h
    };
    // 3 fields of 30,000 bytes; 300 fields. (Host and Connection count.)
    for (fields, each) in [(3, 30_000), (300, 1)] {
        let answer = exchange(proxy.addr, &head(fields, each)).await;
        assert!(
            answer.starts_with("HTTP/1.1 431"),
            "{fields} x {each}: {answer}"
        );
        assert!(
            answer.contains("x-edgeroute-error: request_head_too_large"),
            "{fields} x {each}: {answer}"
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "no backend was asked");
    // 254 fields and Host and Connection.
    let answer = exchange(proxy.addr, &head(254, 1)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A head of 64 KiB exactly, its blank line included, and one byte more.
    let sized = |bytes: usize| {
        let mut h = head(1, 0);
        let fill = bytes - h.len();
        let at = h.len() - 4;
        h.splice(at..at, std::iter::repeat_n(b'v', fill));
        assert_eq!(h.len(), bytes);
        h
    };
    let answer = exchange(proxy.addr, &sized(64 * 1024)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = exchange(proxy.addr, &sized(64 * 1024 + 1)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // Counted as every other answer the proxy makes itself.
    eventually("the three 431s are counted", LIMIT, || async {
        proxy
            .metric("edgeroute_refusals_total{reason=\"request_head_too_large\"}")
            .await
            == 3.0
    })
    .await;
}

/// An access line says who asked (the connection's address and the
/// `x-forwarded-for` it brought), for which host, over which protocol, and
/// how many body bytes it was sent; only the proxy's own answers carry a
/// code.
#[tokio::test]
async fn an_access_line_names_the_client_host_protocol_and_bytes_sent() {
    let origin = Origin::start(US).await;
    let proxy = proxy_for(origin.addr).await;
    let answer = exchange(
        proxy.addr,
        b"GET /who HTTP/1.1\r\nHost: shop.example:8080\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: 198.51.100.2\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (_, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(!body.is_empty(), "{answer}");
    let line = proxy.access_line(&["path=\"/who\""]).await;
    for said in [
        "client=\"127.0.0.1\"".to_owned(),
        "forwarded_for=\"203.0.113.7, 198.51.100.2\"".to_owned(),
        "host=\"shop.example:8080\"".to_owned(),
        "protocol=\"HTTP/1.1\"".to_owned(),
        format!("bytes_sent={}", body.len()),
    ] {
        assert!(line.contains(&said), "{said} in {line}");
    }
    assert!(!line.contains("code="), "{line}");
    // A long list keeps its end, where a load balancer appends the
    // client's address, however much a client wrote before it.
    let forged = "1.2.3.4, ".repeat(500);
    exchange(
        proxy.addr,
        format!(
            "GET /forged HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: {forged}198.51.100.9\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let line = proxy.access_line(&["path=\"/forged\""]).await;
    assert!(line.contains("forwarded_for=\"…"), "{line}");
    assert!(line.contains(", 198.51.100.9\""), "{line}");
    // An absolute-form target names the host the request is for.
    exchange(
        proxy.addr,
        b"GET http://other.example/abs HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    let line = proxy.access_line(&["path=\"/abs\""]).await;
    assert!(line.contains("host=\"other.example\""), "{line}");
    assert!(!line.contains("forwarded_for="), "{line}");
}

/// A request whose head cannot be read (a field name with a space) gets
/// its 400 with a request id, and an access line and a count like every
/// other request's, under `route="none"`; one read whole but refused keeps
/// its method, path and request id in them.
#[tokio::test]
async fn an_unreadable_request_head_gets_a_request_id_and_an_access_line() {
    let origin = Origin::start(US).await;
    let proxy = proxy_for(origin.addr).await;
    let answer = exchange(
        proxy.addr,
        b"GET /x HTTP/1.1\r\nHost: app\r\nBad Name: 1\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let id = answer
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or_else(|| panic!("no x-request-id in {answer}"))
        .to_owned();
    assert!(
        answer.contains(&format!("\"request_id\":\"{id}\"")),
        "{answer}"
    );
    // Neither a read nor a write: it has no method or path to classify,
    // and its line claims nothing of its head.
    let line = proxy
        .access_line(&["status=400", &id, "route=\"none\""])
        .await;
    for unsaid in ["protocol=", "host=", "forwarded_for="] {
        assert!(!line.contains(unsaid), "{unsaid} in {line}");
    }
    assert!(line.contains("code=\"bad_request\""), "{line}");
    assert_eq!(
        proxy
            .metric("edgeroute_requests_total{region=\"none\",route=\"none\",status=\"400\"}")
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric("edgeroute_requests_total{region=\"none\",route=\"read\",status=\"400\"}")
            .await,
        0.0
    );
    // A head read whole, refused for its fields (two lengths): its line
    // names its method and path, and the answer and the line carry the
    // request id it brought.
    let answer = exchange(
        proxy.addr,
        b"POST /y HTTP/1.1\r\nHost: app\r\nX-Request-Id: probe-77\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("x-request-id: probe-77"), "{answer}");
    let line = proxy
        .access_line(&["status=400", "request_id=\"probe-77\""])
        .await;
    assert!(
        line.contains("method=POST") && line.contains("path=\"/y\""),
        "{line}"
    );
    assert!(origin.seen().is_empty());
}

/// A backend whose every answer breaks off in its body: a chunked body
/// that ends with the connection after its first chunk.
async fn breaking_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                read_until(&mut s, |t| t.contains("\r\n\r\n")).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                    )
                    .await;
            });
        }
    });
    addr
}

/// An answer cut short by its backend reaches an HTTP/1.0 client, whose
/// body ends with the connection, as a reset, never as an end of stream
/// that would pass the part for the whole; an HTTP/1.1 client's chunked
/// body lacks its last chunk. Both are counted as cut by the backend.
#[tokio::test]
async fn an_answer_cut_short_is_not_passed_off_as_whole() {
    let proxy = proxy_for(breaking_backend().await).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /x HTTP/1.0\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut got))
        .await
        .expect("the connection ends");
    let e = ended.expect_err("a reset, not an end of stream");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");

    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut got))
        .await
        .expect("the connection ends");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{text}"
    );
    assert!(!text.contains("\r\n0\r\n\r\n"), "no last chunk: {text}");
    let cut = |by: &str| format!("edgeroute_responses_cut_total{{by=\"{by}\",region=\"{US}\"}}");
    eventually("both cut answers are counted", LIMIT, || async {
        proxy.metric(&cut("backend")).await == 2.0
    })
    .await;
    assert_eq!(proxy.metric(&cut("client")).await, 0.0);
}

/// HTTP/1.2 to HTTP/1.9 are served as HTTP/1.1, the highest minor version
/// the proxy speaks (RFC 9110 §2.5), from clients and from backends; a
/// request line of another major version gets 505.
#[tokio::test]
async fn later_minor_versions_are_served_as_http11_and_other_majors_get_505() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let lines = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let lines = Arc::clone(&lines);
            tokio::spawn(async move {
                loop {
                    let head = read_until(&mut s, |t| t.contains("\r\n\r\n")).await;
                    let Some(line) = head.lines().next().filter(|l| !l.is_empty()) else {
                        return;
                    };
                    lines.lock().unwrap().push(line.to_owned());
                    if s.write_all(b"HTTP/1.2 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    let proxy = proxy_for(backend).await;
    for version in ["1.2", "1.9"] {
        let request = format!("GET /v HTTP/{version}\r\nHost: app\r\n\r\n");
        let answer = exchange(proxy.addr, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{version}: {answer}");
        assert!(answer.ends_with("\r\n\r\nok"), "{version}: {answer}");
    }
    assert_eq!(
        *seen.lock().unwrap(),
        ["GET /v HTTP/1.1", "GET /v HTTP/1.1"],
        "sent on as HTTP/1.1"
    );
    for version in ["2.0", "3.0", "0.9"] {
        let request = format!("GET /v HTTP/{version}\r\nHost: app\r\n\r\n");
        let answer = exchange(proxy.addr, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 505"), "{version}: {answer}");
        assert!(answer.contains("http_version_not_supported"), "{answer}");
    }
    // Not a version in HTTP's form: a plain 400 that says so.
    let answer = exchange(proxy.addr, b"GET /v HTTP/1.10\r\nHost: app\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("HTTP version is malformed"), "{answer}");
    assert_eq!(seen.lock().unwrap().len(), 2, "none of those reached it");
}

/// A backend's interim answers (103 Early Hints) reach an HTTP/1.1 client
/// before the final one, without the fields of the backend's connection
/// (RFC 9110 §15.2); a 100 Continue, the proxy's own to give, and every
/// interim answer to an HTTP/1.0 client, which knows none, do not.
#[tokio::test]
async fn interim_answers_are_passed_on_to_http11_clients() {
    let (backend, _) = scripted_backend(&[b"HTTP/1.1 100 Continue\r\n\r\n\
        HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\
        Connection: x-hop\r\nX-Hop: 1\r\n\r\n\
        HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
    .await;
    let proxy = proxy_for(backend).await;
    let whole = |request: &'static [u8]| async move {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(request).await.unwrap();
        read_until(&mut s, |t| t.ends_with("\r\n\r\nok")).await
    };
    let answer = whole(b"GET /page HTTP/1.1\r\nHost: app\r\n\r\n").await;
    assert!(
        answer.starts_with(
            "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n"
        ),
        "{answer}"
    );
    assert!(!answer.contains("100 Continue"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
    let answer = whole(b"GET /page HTTP/1.0\r\nHost: app\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(!answer.contains("103"), "{answer}");
}

/// A backend that answers one request per connection with a keep-alive
/// response and then closes the connection, as a backend whose idle
/// timeout is shorter than the proxy's does.
async fn closing_backend() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (served, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (served2, closed2) = (Arc::clone(&served), Arc::clone(&closed));
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let (served, closed) = (Arc::clone(&served2), Arc::clone(&closed2));
            tokio::spawn(async move {
                let req = read_until(&mut s, complete_response).await;
                if req.is_empty() {
                    return;
                }
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await
                    .unwrap();
                served.fetch_add(1, Ordering::SeqCst);
                drop(s);
                closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, served, closed)
}

#[tokio::test]
async fn a_pooled_connection_the_backend_closed_is_not_used_for_a_post() {
    let (backend, served, closed) = closing_backend().await;
    let proxy = proxy_for(backend).await;
    let c = edgeroute_tests::client();
    for i in 1..=5 {
        // The connection of the previous request is idle in the proxy's
        // pool, and closed by the backend: a POST cannot be retried, so it
        // must go on a fresh connection.
        let resp = c
            .post(proxy.url("/orders"))
            .body(format!("order {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(served.load(Ordering::SeqCst), i);
        eventually("the backend closed its connection", LIMIT, || {
            let closed = Arc::clone(&closed);
            async move { closed.load(Ordering::SeqCst) == i }
        })
        .await;
    }
    // Each went out once: not sent on the closed connection and again on
    // a new one (which the backend's count alone could not tell).
    let posts = || {
        proxy
            .log()
            .lines()
            .filter(|l| l.contains("edgeroute::access") && l.contains("method=POST"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    eventually("every POST has its access line", LIMIT, || async {
        posts().len() == 5
    })
    .await;
    let attempts: Vec<String> = posts()
        .iter()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("attempts=")))
        .map(str::to_owned)
        .collect();
    assert_eq!(attempts, vec!["attempts=1"; 5]);
    assert!(
        proxy
            .metrics()
            .await
            .contains("\nedgeroute_retries_total 0\n"),
        "{}",
        proxy.metrics().await
    );
}

/// An origin, and a proxy for it whose `client_idle` is 1 s.
async fn proxy_with_client_idle_1s() -> (Origin, Proxy) {
    let origin = Origin::start(US).await;
    let proxy = ProxyBuilder::new(US)
        .region(US, &[origin.addr])
        .table(table(1, 1, Some(US), &[(US, "active")]))
        .extra("[health]\nprobes = false\n[timeouts]\nclient_idle = \"1s\"\n")
        .start()
        .await;
    (origin, proxy)
}

#[tokio::test]
async fn an_idle_client_connection_is_closed_after_client_idle() {
    let (_origin, proxy) = proxy_with_client_idle_1s().await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    // Keep-alive holds while requests keep coming.
    for path in ["/one", "/two"] {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let answer = read_until(&mut s, complete_response).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            !answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
    }
    // Then, with nothing sent, the proxy closes the connection, and not
    // before client_idle (the proxy's wait began before this one did).
    let idle_from = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(LIMIT, s.read(&mut buf))
        .await
        .expect("the proxy closed the idle connection within the limit");
    assert_eq!(read.expect("a clean close"), 0, "no bytes, only the close");
    let waited = idle_from.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
}

#[tokio::test]
async fn a_head_trickled_in_is_cut_off_after_client_idle_from_its_start() {
    let (origin, proxy) = proxy_with_client_idle_1s().await;
    // A head's bytes, or the empty lines a head may follow, a few at a
    // time, each well within client_idle of the one before, for up to 15
    // s: the connection must end long before.
    for (first, then) in [
        (&b"GET /slow HTTP/1.1\r\nHost: app\r\n"[..], &b"x"[..]),
        (b"\r\n", b"\r\n"),
    ] {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(first).await.unwrap();
        let started = std::time::Instant::now();
        let mut closed = false;
        for _ in 0..75 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut buf = [0u8; 64];
            let ended = match s.try_read(&mut buf) {
                Ok(n) => n == 0,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            if ended || s.write_all(then).await.is_err() {
                closed = true;
                break;
            }
        }
        assert!(
            closed,
            "{:?} still open after {:?}",
            String::from_utf8_lossy(then),
            started.elapsed()
        );
    }
    assert!(origin.seen().is_empty());
}

#[tokio::test]
async fn a_quiet_tunnel_outlives_the_read_timeout_and_closes_after_tunnel_idle() {
    let origin = Origin::start(US).await;
    let proxy = ProxyBuilder::new(US)
        .region(US, &[origin.addr])
        .table(table(1, 1, Some(US), &[(US, "active")]))
        .extra("[health]\nprobes = false\n[timeouts]\nread = \"1s\"\ntunnel_idle = \"3s\"\n")
        .start()
        .await;
    let mut s = open_tunnel(&proxy).await;
    // Silent for longer than timeouts.read: the tunnel still carries bytes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.write_all(b"still here").await.unwrap();
    assert_eq!(
        read_until(&mut s, |t| t.contains("still here")).await,
        "still here"
    );
    // Silent for tunnel_idle: the proxy closes it.
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(LIMIT, s.read(&mut buf))
        .await
        .expect("the proxy closed the idle tunnel within the limit");
    assert_eq!(read.expect("a clean close"), 0, "no bytes, only the close");
}

/// Accepts one connection, reads a request head from it and writes
/// `answer`; the connection is the caller's to go on with.
async fn answer_one_head(listener: TcpListener, answer: &[u8]) -> Option<TcpStream> {
    let (mut s, _) = listener.accept().await.ok()?;
    read_until(&mut s, |t| t.contains("\r\n\r\n")).await;
    s.write_all(answer).await.unwrap();
    Some(s)
}

/// A backend that answers `413` as soon as it has a request's head, then
/// reads nothing more and keeps the connection open until the test ends:
/// the proxy's body writes stall. Its receive buffer is small, so they
/// stall whatever the host's TCP buffer limits.
async fn early_answering_backend() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 << 10).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let addr = listener.local_addr().unwrap();
    let (done, mut until) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let Some(s) = answer_one_head(
            listener,
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 17\r\nConnection: close\r\n\r\nbackend: too big\n",
        )
        .await
        else {
            return;
        };
        // Hold the connection, unread, until the test is over.
        let _ = (&mut until).await;
        drop(s);
    });
    (addr, done)
}

#[tokio::test]
async fn a_backend_answer_before_the_whole_body_reaches_the_client() {
    let (backend, _hold) = early_answering_backend().await;
    let proxy = ProxyBuilder::new(US)
        .region(US, &[backend])
        .table(table(1, 1, Some(US), &[(US, "active")]))
        .extra(
            "[health]\nprobes = false\n[timeouts]\nwrite = \"1s\"\n[limits]\nmax_request_body = \"64MiB\"\n",
        )
        .start()
        .await;
    // More body than the socket buffers between proxy and backend hold
    // (the proxy's send buffer grows to a few MiB at most), so the proxy's
    // writes stall until timeouts.write.
    const BODY: usize = 48 << 20;
    let s = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut reader, mut writer) = s.into_split();
    let sender = tokio::spawn(async move {
        let head = format!("POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: {BODY}\r\n\r\n");
        writer.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b'x'; 64 << 10];
        let mut sent = 0;
        // The proxy stops reading once it answers; the write then fails or stalls.
        while sent < BODY {
            if writer.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
    });
    let answer = read_until(&mut reader, complete_response).await;
    assert_answered_early(&answer, "HTTP/1.1 413", "backend: too big\n");
    sender.abort();
}

/// `answer` is the backend's, with `status` and ending in `body`, sent
/// before the client's body was read whole: so its connection ends.
fn assert_answered_early(answer: &str, status: &str, body: &str) {
    assert!(answer.starts_with(status), "{answer}");
    assert!(answer.ends_with(body), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "the client's unread body ends the connection: {answer}"
    );
}

/// A backend that answers the requests it gets, in order, with `answers`,
/// on as many keep-alive connections as the proxy opens; an answer framed
/// by the connection's end closes it. Counts the connections it accepted.
async fn scripted_backend(answers: &'static [&'static [u8]]) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                loop {
                    let req = read_until(&mut s, |t| t.contains("\r\n\r\n")).await;
                    if req.is_empty() {
                        return;
                    }
                    let answer = answers[next.fetch_add(1, Ordering::SeqCst) % answers.len()];
                    s.write_all(answer).await.unwrap();
                    let head = String::from_utf8_lossy(answer).to_ascii_lowercase();
                    if !head.contains("content-length") && !head.contains("transfer-encoding") {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn chunked_sized_and_close_framed_answers_reach_the_client_whole() {
    const CHUNKED: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n\
        6;note=first\r\nhello \r\n5\r\nworld\r\n0\r\nX-Sum: 42\r\n\r\n";
    const SIZED: &[u8] = b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nsized";
    const UNTIL_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\n\r\nuntil the close";
    let (backend, accepted) = scripted_backend(&[CHUNKED, SIZED, CHUNKED, UNTIL_CLOSE]).await;
    let proxy = proxy_for(backend).await;
    let c = edgeroute_tests::client();
    for (i, (want_status, want_body)) in [
        (200, "hello world"),
        (201, "sized"),
        (200, "hello world"),
        (200, "until the close"),
    ]
    .into_iter()
    .enumerate()
    {
        let resp = c
            .get(proxy.url(&format!("/data/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), want_status);
        assert!(
            resp.headers().get("trailer").is_none(),
            "Trailer is hop-by-hop"
        );
        assert_eq!(resp.text().await.unwrap(), want_body);
        // Its access line counts the body's bytes, not their framing.
        let sent = format!("bytes_sent={}", want_body.len());
        proxy
            .access_line(&[&format!("path=\"/data/{i}\""), &sent])
            .await;
    }
    // The first three answers left the backend connection open: one
    // connection carried them all.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // The last one ended with its connection: the next request needs a new one.
    let resp = c.get(proxy.url("/data")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "hello world");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_head_answer_has_no_body_whatever_its_length_says() {
    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
    let (backend, accepted) = scripted_backend(&[HEAD]).await;
    let proxy = proxy_for(backend).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"HEAD /big HTTP/1.1\r\nHost: app\r\n\r\n")
            .await
            .unwrap();
        let head = read_until(&mut s, |t| t.contains("\r\n\r\n")).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("content-length: 1000"),
            "{head}"
        );
        assert!(head.ends_with("\r\n\r\n"), "no body follows: {head}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    let line = proxy.access_line(&["method=HEAD"]).await;
    assert!(line.contains("bytes_sent=0"), "{line}");
}

#[tokio::test]
async fn a_204_reaches_the_client_without_framing_fields() {
    // RFC 9110 forbids them on a 204; HTTP/2 clients refuse the answer.
    const NO_CONTENT: &[u8] = b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-Kept: 1\r\n\r\n";
    let (backend, _) = scripted_backend(&[NO_CONTENT, NO_CONTENT]).await;
    let proxy = proxy_for(backend).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /empty HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let head = read_until(&mut s, |t| t.contains("\r\n\r\n")).await;
    assert!(head.starts_with("HTTP/1.1 204"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("x-kept: 1"), "{head}");
    assert!(
        !lower.contains("content-length") && !lower.contains("transfer-encoding"),
        "{head}"
    );
    // The connection goes on: the next answer is read whole.
    s.write_all(b"GET /empty HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let next = read_until(&mut s, |t| t.contains("\r\n\r\n")).await;
    assert!(next.starts_with("HTTP/1.1 204"), "{next}");
}

#[tokio::test]
async fn an_answer_from_a_backend_that_closes_early_reaches_a_client_still_owing_its_body() {
    // The backend reads the head, answers, ends its side, then drains
    // what still comes (so its close is no reset).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_until(&mut s, |t| t.contains("\r\n\r\n")).await;
        s.write_all(
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\nConnection: close\r\n\r\nearly",
        )
        .await
        .unwrap();
        s.shutdown().await.unwrap();
        let mut sink = [0u8; 1024];
        while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    let proxy = proxy_for(backend).await;
    // 10 of 100 bytes, then nothing: the answer must not wait for the
    // rest (client_idle is 75 s here; LIMIT is 10 s).
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let answer = read_until(&mut s, complete_response).await;
    assert_answered_early(&answer, "HTTP/1.1 403", "early");
}

/// What a client gets through the proxy for one GET, the backend
/// answering with `answers` (see [`scripted_backend`]).
async fn through_proxy(answers: &'static [&'static [u8]]) -> reqwest::Response {
    let (backend, _) = scripted_backend(answers).await;
    let proxy = proxy_for(backend).await;
    edgeroute_tests::client()
        .get(proxy.url("/scripted"))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_backend_answer_with_conflicting_lengths_is_a_502() {
    const BAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!";
    let resp = through_proxy(&[BAD]).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-edgeroute-error"], "upstream_unavailable");
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("the backend's answer was not valid HTTP"),
        "{body}"
    );
}

/// A backend that accepts a WebSocket upgrade, reads the tunnel until the
/// proxy ends it, and only then answers with what it read.
async fn answer_after_close_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Some(mut s) = answer_one_head(listener, SWITCHING).await else {
            return;
        };
        // Until the end of the client's side, passed on by the proxy.
        let got = read_until(&mut s, |_| false).await;
        s.write_all(format!("read: {got}").as_bytes())
            .await
            .unwrap();
    });
    addr
}

#[tokio::test]
async fn a_tunnel_passes_each_end_on_and_the_answer_after_it() {
    let backend = answer_after_close_backend().await;
    let proxy = proxy_for(backend).await;
    let mut s = open_tunnel(&proxy).await;
    s.write_all(b"last words").await.unwrap();
    s.shutdown().await.unwrap();
    // The backend saw the client's end, and its answer still arrives, then
    // the end of the backend's side.
    let rest = read_until(&mut s, |_| false).await;
    assert_eq!(rest, "read: last words");
}

/// A WebSocket backend that answers every byte with eight, writing all of
/// them before it reads more, with small socket buffers: its writes wait
/// on the proxy to take bytes whenever the client's bytes keep coming.
async fn multiplying_backend() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 << 10).unwrap();
    socket.set_send_buffer_size(16 << 10).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Some(mut s) = answer_one_head(listener, SWITCHING).await else {
            return;
        };
        let mut buf = vec![0u8; 8192];
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            for _ in 0..8 {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
        s.shutdown().await.ok();
    });
    addr
}

/// Each direction of a tunnel is carried on its own: a backend that
/// writes more than it reads, to a client that writes and reads at once,
/// gets every byte through both ways (carried one write at a time, the
/// proxy would wait on the backend to read while the backend waits on the
/// proxy to read, and the tunnel would be cut).
#[tokio::test]
async fn a_tunnel_carries_both_directions_at_once() {
    const SENT: usize = 4 << 20;
    let backend = multiplying_backend().await;
    let proxy = ProxyBuilder::new(US)
        .region(US, &[backend])
        .table(table(1, 1, Some(US), &[(US, "active")]))
        .extra("[health]\nprobes = false\n[timeouts]\nwrite = \"5s\"\n")
        .start()
        .await;
    let s = open_tunnel(&proxy).await;
    let (mut r, mut w) = s.into_split();
    let writer = async move {
        let block = vec![b'x'; 64 << 10];
        for _ in 0..SENT / block.len() {
            w.write_all(&block).await.unwrap();
        }
        w.shutdown().await.unwrap();
    };
    let reader = async move {
        let mut total = 0usize;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    };
    let (_, total) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(writer, reader)
    })
    .await
    .expect("the tunnel carried both ways within the limit");
    assert_eq!(total, 8 * SENT, "every byte the backend sent arrived");
}

#[tokio::test]
async fn a_backend_silent_past_the_read_timeout_is_a_504_and_not_asked_again() {
    // Reads each request and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&requests);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let head = read_until(&mut s, |t| t.contains("\r\n\r\n")).await;
                if !head.is_empty() {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                std::future::pending::<()>().await;
            });
        }
    });
    let proxy = ProxyBuilder::new(US)
        .region(US, &[backend])
        .table(table(1, 1, Some(US), &[(US, "active")]))
        .extra("[health]\nprobes = false\n[timeouts]\nread = \"300ms\"\n")
        .start()
        .await;
    let resp = edgeroute_tests::client()
        .get(proxy.url("/slow"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.headers()["x-edgeroute-error"], "upstream_timeout");
    assert_eq!(
        requests.load(Ordering::SeqCst),
        1,
        "a slow backend is not sent the same request again"
    );
}

#[tokio::test]
async fn an_answer_broken_before_any_of_it_reached_the_client_is_a_502() {
    // The head is fine; the chunk after it, in the same segment, is not.
    const BROKEN: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
    let resp = through_proxy(&[BROKEN]).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-edgeroute-error"], "upstream_unavailable");
}

/// What [`body_counting_backend`] saw of one request: its body whole, or
/// the connection closed after this many of its bytes.
#[derive(Debug, PartialEq)]
enum BodySeen {
    Whole(usize),
    Cut(usize),
}

/// A backend that reads each request's `Content-Length` body and answers
/// `200` once it is whole; what it saw of each goes on the channel.
async fn body_counting_backend() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<BodySeen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).into_owned();
                    let Some(end) = text.find("\r\n\r\n") else {
                        if n == 0 {
                            return;
                        }
                        continue;
                    };
                    let len: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    let body = got.len() - end - 4;
                    if body >= len {
                        let _ = tx.send(BodySeen::Whole(body));
                        got.clear();
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    } else if n == 0 {
                        let _ = tx.send(BodySeen::Cut(body));
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// Sends a POST of `len` body bytes, `piece` bytes every `every`, and
/// returns the proxy's answer and whether all of the body went out (a
/// client cut off partway cannot send the rest).
async fn post_paced(proxy: &Proxy, len: usize, piece: usize, every: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!("POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: {len}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut sent = 0;
    let mut answer = Vec::new();
    while sent < len {
        tokio::time::sleep(every).await;
        let mut buf = [0u8; 4096];
        match s.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
        let n = piece.min(len - sent);
        if s.write_all(&vec![b'x'; n]).await.is_err() {
            break;
        }
        sent += n;
    }
    answer.extend(until_closed_or_answered(&mut s).await);
    (String::from_utf8_lossy(&answer).into_owned(), sent == len)
}

/// What the connection carries until a whole answer has come or it is
/// closed.
async fn until_closed_or_answered(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if complete_response(&String::from_utf8_lossy(&got)) {
            return got;
        }
        match tokio::time::timeout(LIMIT, s.read(&mut buf)).await {
            Err(_) => panic!("no answer and no close within {LIMIT:?}"),
            Ok(Ok(0) | Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A request body that falls behind `limits.min_request_body_rate` once
/// `timeouts.request_body` has passed is answered 408 and its backend
/// connection closed, though each of its bytes came well within
/// `client_idle`; a body that keeps the pace goes through.
#[tokio::test]
async fn a_request_body_slower_than_the_minimum_rate_is_answered_408() {
    let (backend, mut seen) = body_counting_backend().await;
    let proxy = ProxyBuilder::new(US)
        .region(US, &[backend])
        .table(table(1, 1, Some(US), &[(US, "active")]))
        .extra(
            "[health]\nprobes = false\n[timeouts]\nrequest_body = \"1s\"\n\
             [limits]\nmin_request_body_rate = \"100B/s\"\n",
        )
        .start()
        .await;

    // Ten times the rate asked for: due 21 s after the start, whole in 2.
    let (answer, whole) = post_paced(&proxy, 2_000, 100, Duration::from_millis(100)).await;
    assert!(whole, "{answer}");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(seen.recv().await, Some(BodySeen::Whole(2_000)));

    // A byte every 200 ms: 5 bytes a second, 1 s after the start plus
    // 10 ms a byte, so it falls behind after about a second.
    let (answer, whole) = post_paced(&proxy, 100_000, 1, Duration::from_millis(200)).await;
    assert!(!whole, "the whole body was taken: {answer}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("x-edgeroute-error: body_too_slow"),
        "{answer}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    let cut = tokio::time::timeout(LIMIT, seen.recv())
        .await
        .expect("the backend connection was closed");
    assert!(
        matches!(cut, Some(BodySeen::Cut(n)) if n < 100_000),
        "{cut:?}"
    );
    eventually("the 408 is counted", LIMIT, || async {
        proxy
            .metric("edgeroute_requests_total{region=\"us-east-1\",route=\"write\",status=\"408\"}")
            .await
            == 1.0
    })
    .await;
    // A refusal, though a backend had been picked for it.
    assert_eq!(
        proxy
            .metric("edgeroute_refusals_total{reason=\"body_too_slow\"}")
            .await,
        1.0
    );
}

/// An idle keep-alive connection that its backend writes to, or closes,
/// is not reused, and is counted by its reason: bytes after a whole answer
/// say the backend is out of step, and closes say its keep-alive timeout
/// is shorter than `timeouts.pool_idle`.
#[tokio::test]
async fn idle_connections_a_backend_writes_to_or_closes_are_counted_by_reason() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    // Per connection: its answer, then what the test asks of it.
    let (orders, mut told) = tokio::sync::mpsc::unbounded_channel::<&'static [u8]>();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            read_until(&mut conn, |t| t.contains("\r\n\r\n")).await;
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .unwrap();
            // Empty: close; else those bytes, on the idle connection.
            match told.recv().await {
                Some(b"") | None => drop(conn),
                Some(bytes) => {
                    conn.write_all(bytes).await.unwrap();
                    tokio::spawn(async move {
                        let _held = conn;
                        std::future::pending::<()>().await;
                    });
                }
            }
        }
    });
    let proxy = ProxyBuilder::new(US)
        .region(US, &[backend])
        .table(table(1, 1, Some(US), &[(US, "active")]))
        .extra("[health]\nprobes = false\n[timeouts]\npool_idle = \"2s\"\n")
        .start()
        .await;
    let discards = |reason: &str| {
        format!(
            "edgeroute_backend_idle_discards_total{{address=\"{backend}\",backend=\"{backend}\",reason=\"{reason}\",region=\"{US}\"}}"
        )
    };
    for reason in ["closed", "unexpected_bytes", "expired"] {
        assert_eq!(proxy.metric(&discards(reason)).await, 0.0, "{reason}");
    }
    let get = || async {
        reqwest::get(proxy.url("/items"))
            .await
            .expect("an answer")
            .status()
    };

    assert_eq!(get().await, 200);
    orders.send(b"HTTP/1.1 200 OK\r\n").unwrap();
    eventually("the out-of-step connection is counted", LIMIT, || async {
        proxy.metric(&discards("unexpected_bytes")).await == 1.0
    })
    .await;
    assert_eq!(get().await, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "not reused");
    orders.send(b"").unwrap();
    eventually("the closed connection is counted", LIMIT, || async {
        proxy.metric(&discards("closed")).await == 1.0
    })
    .await;
    assert_eq!(get().await, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "not reused");
    assert_eq!(proxy.metric(&discards("unexpected_bytes")).await, 1.0);
}

/// Bytes a backend sends after a whole answer in the same write say it is
/// out of step as those sent later do: counted alike, the answer passed on
/// without them, and the connection not reused.
#[tokio::test]
async fn bytes_after_a_whole_answer_in_its_own_write_are_counted() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            read_until(&mut conn, |t| t.contains("\r\n\r\n")).await;
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n")
                .await
                .unwrap();
            tokio::spawn(async move {
                let _held = conn;
                std::future::pending::<()>().await;
            });
        }
    });
    let proxy = ProxyBuilder::new(US)
        .region(US, &[backend])
        .table(table(1, 1, Some(US), &[(US, "active")]))
        .extra("[health]\nprobes = false\n")
        .start()
        .await;
    let discards = format!(
        "edgeroute_backend_idle_discards_total{{address=\"{backend}\",backend=\"{backend}\",reason=\"unexpected_bytes\",region=\"{US}\"}}"
    );
    for n in 1..=2 {
        let resp = reqwest::get(proxy.url("/items")).await.expect("an answer");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "ok");
        eventually("the out-of-step connection is counted", LIMIT, || async {
            proxy.metric(&discards).await == f64::from(n)
        })
        .await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "not reused");
}

/// A worker keeps at most `limits.idle_per_backend` idle connections per
/// backend: when more exchanges end at once, the oldest is closed and
/// counted as `full`, and the one kept carries the next request.
#[tokio::test]
async fn connections_past_the_idle_limit_are_closed_and_counted() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    // The first answer on each connection waits until two requests are
    // in: both connections are busy at once, then idle at once.
    let both_in = Arc::new(tokio::sync::Barrier::new(2));
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let both_in = Arc::clone(&both_in);
            tokio::spawn(async move {
                let mut first = true;
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while let Ok(n @ 1..) = conn.read(&mut buf).await {
                    head.extend_from_slice(&buf[..n]);
                    if !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        continue;
                    }
                    head.clear();
                    if std::mem::take(&mut first) {
                        both_in.wait().await;
                    }
                    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if conn.write_all(answer).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    // One worker thread: both connections go back to one list.
    let proxy = ProxyBuilder::new(US)
        .region(US, &[backend])
        .table(table(1, 1, Some(US), &[(US, "active")]))
        .threads(1)
        .extra("[health]\nprobes = false\n[limits]\nidle_per_backend = 1\n")
        .start()
        .await;
    let full = format!(
        "edgeroute_backend_idle_discards_total{{address=\"{backend}\",backend=\"{backend}\",reason=\"full\",region=\"{US}\"}}"
    );
    assert_eq!(proxy.metric(&full).await, 0.0);
    let get = || async {
        reqwest::get(proxy.url("/items"))
            .await
            .expect("an answer")
            .status()
    };
    let (a, b) = tokio::join!(get(), get());
    assert_eq!([a, b].map(|s| s.as_u16()), [200, 200]);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    eventually(
        "the connection past the limit is counted",
        LIMIT,
        || async { proxy.metric(&full).await == 1.0 },
    )
    .await;
    assert_eq!(get().await, 200);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the kept connection carried it"
    );
}

/// A backend slow to take a body does not put its client behind the
/// body's pace: only the time the proxy waits for the client's bytes
/// counts, not the time it waits for the backend to take them.
#[tokio::test]
async fn a_backend_slow_to_take_a_body_does_not_count_against_the_clients_pace() {
    const BODY: usize = 32 << 20;
    const PAUSE: Duration = Duration::from_secs(4);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let (took, mut taken) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let took = took.clone();
            tokio::spawn(async move {
                let head = read_until(&mut conn, |t| t.contains("\r\n\r\n")).await;
                let Some(end) = head.find("\r\n\r\n") else {
                    return;
                };
                // Takes none of the body for a while, then all of it (the
                // body's bytes are ASCII: what came with the head counts
                // as read).
                tokio::time::sleep(PAUSE).await;
                let mut body = head.len() - end - 4;
                let mut buf = vec![0u8; 64 << 10];
                while body < BODY {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => body += n,
                    }
                }
                let _ = took.send(body);
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await;
            });
        }
    });
    // The client sends at once, and keeps the proxy waiting far less than
    // the 2 s (plus 2 s for its 32 MiB) it may; the backend's pause is
    // longer than 2 s plus what the bytes taken before it earn (the
    // socket buffers between them hold a few MiB).
    let proxy = ProxyBuilder::new(US)
        .region(US, &[backend])
        .table(table(1, 1, Some(US), &[(US, "active")]))
        .extra(
            "[health]\nprobes = false\n[timeouts]\nrequest_body = \"2s\"\n\
             [limits]\nmin_request_body_rate = \"16MiB/s\"\nmax_request_body = \"64MiB\"\n",
        )
        .start()
        .await;
    let (answer, whole) = post_paced(&proxy, BODY, 1 << 20, Duration::ZERO).await;
    assert!(whole, "{answer}");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(taken.recv().await, Some(BODY));
}

/// A backend that takes a request's head and then neither reads its body
/// nor answers: the proxy's write runs out of `timeouts.write`, and the
/// client gets a 504 soon after, not another `timeouts.read` later (which
/// is a minute here, twice this test's limit).
#[tokio::test]
async fn a_backend_that_stops_taking_a_body_is_not_waited_on_again_for_an_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            held.push(conn);
        }
    });
    let proxy = ProxyBuilder::new(US)
        .region(US, &[backend])
        .table(table(1, 1, Some(US), &[(US, "active")]))
        .extra(
            "[health]\nprobes = false\n[timeouts]\nwrite = \"1s\"\nread = \"60s\"\n\
             [limits]\nmax_request_body = \"256MiB\"\n",
        )
        .start()
        .await;
    let s = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut rx, mut tx) = s.into_split();
    const BODY: usize = 128 << 20;
    tokio::spawn(async move {
        let head = format!("POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: {BODY}\r\n\r\n");
        if tx.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let piece = vec![b'x'; 1 << 20];
        for _ in 0..BODY >> 20 {
            if tx.write_all(&piece).await.is_err() {
                return;
            }
        }
    });
    let answer = tokio::time::timeout(Duration::from_secs(30), async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !complete_response(&String::from_utf8_lossy(&got)) {
            match rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    })
    .await
    .expect("an answer before timeouts.read could have run out");
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
}

/// A request no backend could take is refused, and its log line names the
/// backend tried last and what it met (here, a refused connect), not only
/// the refusal.
#[tokio::test]
async fn a_refusal_after_failed_attempts_logs_the_backend_and_its_failure() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let proxy = proxy_for(addr).await;
    let resp = exchange(
        proxy.addr,
        b"GET /x HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    let line = proxy.access_line(&["status=503"]).await;
    assert!(line.contains(&format!("backend=\"{addr}\"")), "{line}");
    assert!(line.contains("the last attempt"), "{line}");
    // The proxy's own answer: its code, and the bytes of its body.
    let (_, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(body.contains("no_region_available"), "{resp}");
    for said in [
        "code=\"no_region_available\"".to_owned(),
        format!("bytes_sent={}", body.len()),
    ] {
        assert!(line.contains(&said), "{said} in {line}");
    }
    // A refusal still, though a backend was tried.
    assert_eq!(
        proxy
            .metric("edgeroute_refusals_total{reason=\"no_region_available\"}")
            .await,
        1.0
    );
}

/// HTTP/1.0 knows no transfer codings: a body the backend coded besides
/// chunking (`gzip, chunked`) cannot be sent to a 1.0 client as it is, and
/// is refused with 502 rather than passed on unlabelled; a plainly chunked
/// one runs to the close, and a 1.1 client gets the coded one as sent.
#[tokio::test]
async fn a_transfer_coded_answer_is_not_sent_unlabelled_to_an_http_1_0_client() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let head = read_until(&mut conn, |t| t.contains("\r\n\r\n")).await;
                let coding = if head.starts_with("GET /coded") {
                    "gzip, chunked"
                } else {
                    "chunked"
                };
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: {coding}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                );
                conn.write_all(answer.as_bytes()).await.unwrap();
            });
        }
    });
    let proxy = ProxyBuilder::new(US)
        .region(US, &[backend])
        .table(table(1, 1, Some(US), &[(US, "active")]))
        .extra("[health]\nprobes = false\n")
        .start()
        .await;
    let answer = exchange(proxy.addr, b"GET /coded HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    let answer = exchange(proxy.addr, b"GET /plain HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("transfer-encoding")
            && answer.ends_with("\r\n\r\nhello"),
        "{answer}"
    );
    let answer = exchange(
        proxy.addr,
        b"GET /coded HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("transfer-encoding: gzip, chunked"),
        "{answer}"
    );
}

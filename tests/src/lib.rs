//! Test harness for edgeroute's integration tests: origins that say which
//! region they are and record what reached them, a proxy process started
//! from a config, and an `eventually` helper that waits for a condition.

pub mod balancer;
pub mod control;
pub mod dns;
pub mod h2;
pub mod keepalive;
pub mod moto;
pub mod origin;
pub mod proxy;
pub mod webhook;

pub use origin::{Behaviour, Origin, Seen};
pub use proxy::{Proxy, ProxyBuilder};

use std::future::Future;
use std::time::{Duration, Instant};

/// How many connections wait in the backlog of the IPv4 listening socket
/// on `addr` (the `rx_queue` of its line in `/proc/net/tcp`).
pub fn accept_queue(addr: std::net::SocketAddr) -> usize {
    // As the kernel prints it: the address as a number in host byte order,
    // then the port (each proxy of the suite listens on a loopback address
    // of its own, and the same port may listen on another).
    let std::net::IpAddr::V4(ip) = addr.ip() else {
        panic!("accept_queue reads IPv4 listening sockets, not {addr}");
    };
    let local = format!(
        "{:08X}:{:04X} ",
        u32::from_ne_bytes(ip.octets()),
        addr.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table
        .lines()
        .map(str::split_whitespace)
        .filter_map(|mut fields| {
            let (local_address, state, queues) = (fields.nth(1)?, fields.nth(1)?, fields.next()?);
            // 0A: LISTEN.
            ((local_address.to_owned() + " ").ends_with(&local) && state == "0A")
                .then(|| queues.split_once(':'))
                .flatten()
                .and_then(|(_, rx)| usize::from_str_radix(rx, 16).ok())
        })
        .next()
        .expect("the listening socket is in /proc/net/tcp")
}

/// Sends `GET path` on `conn` and reads its whole answer (a short body of
/// a given length): its status line. Panics if no whole answer came within
/// 30 s, or the connection closed first.
pub async fn get_on(conn: &mut tokio::net::TcpStream, path: &str) -> String {
    answer_on(conn, path)
        .await
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// [`get_on`]'s request and wait, and the whole answer read.
pub async fn answer_on(conn: &mut tokio::net::TcpStream, path: &str) -> String {
    answer_to(
        conn,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
    )
    .await
}

/// Sends `request` as it is on `conn` and reads the whole answer (a body
/// of a given length), as [`answer_on`] does.
pub async fn answer_to(conn: &mut tokio::net::TcpStream, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let answered = |got: &[u8]| {
        let text = String::from_utf8_lossy(got);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return false;
        };
        let length = head.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap())
        });
        length.is_some_and(|n| body.len() >= n)
    };
    tokio::time::timeout(Duration::from_secs(30), async {
        while !answered(&got) {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "the peer closed the connection");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("answered");
    String::from_utf8_lossy(&got).into_owned()
}

/// Polls `check` until it returns true, or panics after `limit` naming `what`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Everything the peer sends on `conn` until it closes the connection (a
/// reset counts as closed); panics if it is still open after `limit`.
pub async fn until_closed(conn: &mut tokio::net::TcpStream, limit: Duration) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(end, conn.read(&mut buf)).await {
            Err(_) => panic!("the connection was kept open for {limit:?}"),
            Ok(Ok(0) | Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends half a request head to `addr` and waits for the server to close
/// the connection; panics if it is still open after 60 s.
pub async fn half_head_is_closed(addr: std::net::SocketAddr) {
    use tokio::io::AsyncWriteExt;
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    until_closed(&mut conn, Duration::from_secs(60)).await;
}

/// The value of one Prometheus sample line (`name{labels} value`) in `text`;
/// 0 when the series does not exist yet.
pub fn sample(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map_or(0.0, |v| v.trim().parse().expect("numeric sample"))
}

/// A client that neither retries nor follows redirects, with a bounded wait.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

/// The routing table JSON most tests start from: every region active.
pub fn table(
    epoch: u64,
    version: u64,
    primary: Option<&str>,
    regions: &[(&str, &str)],
) -> serde_json::Value {
    serde_json::json!({
        "epoch": epoch,
        "version": version,
        "primary_region": primary,
        "failover_in_progress": false,
        "regions": regions.iter().map(|(name, state)| serde_json::json!({"name": name, "state": state, "weight": 100})).collect::<Vec<_>>(),
    })
}

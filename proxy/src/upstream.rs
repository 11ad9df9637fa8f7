//! The upstream side of forwarding: what a request to a backend carries, and
//! the backend's idle keep-alive connections.

use http::header::{self, HeaderName};
use pingora_core::protocols::Stream;
use pingora_http::RequestHeader;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Idle connections kept per backend, as many as Pingora keeps by default.
pub const IDLE_PER_BACKEND: usize = 128;

/// Hop-by-hop fields (RFC 9110 §7.6.1, plus the legacy ones proxies meet):
/// they describe the client's connection, not the request, and never go on.
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Fields the proxy forwards or relies on: a client may not have them
/// dropped by naming them in `Connection`.
const PROTECTED: [&str; 7] = [
    "host",
    "content-length",
    "idempotency-key",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-edgeroute-consistency",
];

/// Why a request cannot be sent on as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadConnectionHeader(pub String);

/// Rewrites a request, as received, into the HTTP/1.1 request a backend gets:
/// fields the client nominated in `Connection` and hop-by-hop fields are
/// removed; a WebSocket upgrade from an HTTP/1.1 client is kept (and only
/// that one); `Expect` is dropped because the proxy answers it itself; a body
/// without a length is sent chunked.
pub fn prepare_request(req: &mut RequestHeader, has_body: bool) -> Result<(), BadConnectionHeader> {
    let websocket = is_websocket_upgrade(req);
    let mut nominated: Vec<HeaderName> = Vec::new();
    for value in req.headers.get_all(header::CONNECTION) {
        let text = value
            .to_str()
            .map_err(|_| BadConnectionHeader("Connection holds bytes that are not text".into()))?;
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let name = HeaderName::from_bytes(token.as_bytes()).map_err(|_| {
                BadConnectionHeader(format!(
                    "Connection names {token:?}, which is no field name"
                ))
            })?;
            if PROTECTED.iter().any(|p| name == *p) {
                return Err(BadConnectionHeader(format!(
                    "Connection names {token:?}, a field that must reach the backend"
                )));
            }
            nominated.push(name);
        }
    }
    // One pass over the fields present, rather than a lookup per field
    // that might be: most requests carry none of them.
    nominated.extend(
        req.headers
            .keys()
            .filter(|name| **name == header::EXPECT || HOP_BY_HOP.iter().any(|h| *name == *h))
            .cloned(),
    );
    for name in &nominated {
        req.remove_header(name);
    }
    origin_form(req)?;
    req.set_version(http::Version::HTTP_11);
    if websocket {
        insert(req, header::CONNECTION, "Upgrade")?;
        insert(req, header::UPGRADE, "websocket")?;
    }
    if has_body && !req.headers.contains_key(header::CONTENT_LENGTH) {
        insert(req, header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(())
}

fn insert(
    req: &mut RequestHeader,
    name: HeaderName,
    value: &'static str,
) -> Result<(), BadConnectionHeader> {
    req.insert_header(name, value)
        .map_err(|e| BadConnectionHeader(e.to_string()))
}

/// A target with an authority — HTTP/2's `:authority`, or an HTTP/1.1
/// absolute-form target — becomes `Host` plus an origin-form target, so
/// that the backend reads one host, the one the proxy may then set.
fn origin_form(req: &mut RequestHeader) -> Result<(), BadConnectionHeader> {
    let Some(authority) = req.uri.authority().map(|a| a.as_str().to_owned()) else {
        return Ok(());
    };
    if authority.contains('@') {
        return Err(BadConnectionHeader(
            "the request's authority carries user information".into(),
        ));
    }
    let target = req.uri.path_and_query().map_or_else(
        || http::Uri::from_static("/"),
        |pq| http::Uri::from(pq.clone()),
    );
    req.set_uri(target);
    req.insert_header(header::HOST, authority)
        .map_err(|e| BadConnectionHeader(e.to_string()))
}

/// A WebSocket opening handshake (RFC 6455 §4.1) from an HTTP/1.1 client.
fn is_websocket_upgrade(req: &RequestHeader) -> bool {
    req.version == http::Version::HTTP_11
        && req.method == http::Method::GET
        && req
            .headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && req.headers.get_all(header::CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        })
}

/// A backend's idle keep-alive connections, newest last. A connection is
/// handed out again only if it is younger than the idle timeout and the
/// backend has neither closed it nor sent anything on it since.
pub struct IdlePool {
    idle: Mutex<VecDeque<(Stream, Instant)>>,
    idle_timeout: Duration,
}

impl IdlePool {
    pub fn new(idle_timeout: Duration) -> Self {
        IdlePool {
            idle: Mutex::new(VecDeque::new()),
            idle_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Stream, Instant)>> {
        // A deque of owned connections stays consistent if a holder panicked.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest idle connection that can carry a request, if any.
    pub fn take(&self, now: Instant) -> Option<Stream> {
        let mut idle = self.lock();
        while let Some((stream, since)) = idle.pop_back() {
            if now.saturating_duration_since(since) >= self.idle_timeout {
                // Every older one is too old as well.
                idle.clear();
                return None;
            }
            if still_idle(&stream) {
                return Some(stream);
            }
        }
        None
    }

    /// Keeps a connection whose last exchange finished cleanly.
    pub fn put(&self, stream: Stream, now: Instant) {
        let mut idle = self.lock();
        while idle
            .front()
            .is_some_and(|(_, since)| now.saturating_duration_since(*since) >= self.idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() >= IDLE_PER_BACKEND {
            idle.pop_front();
        }
        idle.push_back((stream, now));
    }
}

/// An idle HTTP/1 connection has nothing to read: end-of-stream means the
/// backend closed it, and bytes mean it is out of step. One non-blocking
/// peek at the socket tells.
fn still_idle(stream: &Stream) -> bool {
    use nix::errno::Errno;
    use nix::sys::socket::{MsgFlags, recv};
    let mut byte = [0u8; 1];
    matches!(
        recv(
            stream.id(),
            &mut byte,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT
        ),
        Err(Errno::EAGAIN)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request(version: http::Version, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/x", None).expect("request");
        req.set_version(version);
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).expect("header");
        }
        req
    }

    #[test]
    fn hop_by_hop_and_nominated_fields_are_removed() {
        let mut req = request(
            http::Version::HTTP_11,
            &[
                ("connection", "keep-alive, x-secret"),
                ("keep-alive", "timeout=5"),
                ("x-secret", "1"),
                ("te", "trailers"),
                ("transfer-encoding", "chunked"),
                ("proxy-authorization", "Basic abc"),
                ("expect", "100-continue"),
                ("x-kept", "yes"),
            ],
        );
        prepare_request(&mut req, true).expect("valid");
        for gone in [
            "connection",
            "keep-alive",
            "x-secret",
            "te",
            "proxy-authorization",
            "expect",
        ] {
            assert!(!req.headers.contains_key(gone), "{gone} was kept");
        }
        assert_eq!(req.headers["x-kept"], "yes");
        // The body had no length: it goes on chunked, framed by the proxy.
        assert_eq!(req.headers["transfer-encoding"], "chunked");
    }

    #[test]
    fn a_length_is_kept_and_no_body_gets_no_framing() {
        let mut with_len = request(http::Version::HTTP_11, &[("content-length", "4")]);
        prepare_request(&mut with_len, true).expect("valid");
        assert_eq!(with_len.headers["content-length"], "4");
        assert!(!with_len.headers.contains_key("transfer-encoding"));
        let mut bodyless = request(http::Version::HTTP_11, &[]);
        prepare_request(&mut bodyless, false).expect("valid");
        assert!(!bodyless.headers.contains_key("transfer-encoding"));
    }

    #[test]
    fn only_a_websocket_upgrade_from_http11_goes_on() {
        let mut ws = request(
            http::Version::HTTP_11,
            &[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", "websocket"),
            ],
        );
        prepare_request(&mut ws, false).expect("valid");
        assert_eq!(ws.headers["connection"], "Upgrade");
        assert_eq!(ws.headers["upgrade"], "websocket");

        let mut h2c = request(
            http::Version::HTTP_11,
            &[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c"),
                ("http2-settings", "x"),
            ],
        );
        prepare_request(&mut h2c, false).expect("valid");
        assert!(!h2c.headers.contains_key("upgrade"));
        assert!(!h2c.headers.contains_key("connection"));
        assert!(!h2c.headers.contains_key("http2-settings"));

        let mut old = request(
            http::Version::HTTP_10,
            &[("connection", "upgrade"), ("upgrade", "websocket")],
        );
        prepare_request(&mut old, false).expect("valid");
        assert!(!old.headers.contains_key("upgrade"));
        assert_eq!(old.version, http::Version::HTTP_11);
    }

    #[test]
    fn a_connection_header_naming_no_field_is_refused() {
        let mut req = request(
            http::Version::HTTP_11,
            &[("connection", "close, bad field")],
        );
        let err = prepare_request(&mut req, false).expect_err("refused");
        assert!(err.0.contains("bad field"), "{err:?}");
    }

    #[test]
    fn an_http2_request_gets_host_from_its_authority() {
        let mut req = RequestHeader::build("GET", b"/x", None).expect("request");
        req.set_uri(http::Uri::from_static("https://api.example.com/x"));
        req.set_version(http::Version::HTTP_2);
        prepare_request(&mut req, false).expect("valid");
        assert_eq!(req.headers["host"], "api.example.com");
        assert_eq!(req.version, http::Version::HTTP_11);
        assert_eq!(req.uri.to_string(), "/x");
    }

    #[test]
    fn an_absolute_form_target_becomes_host_and_path() {
        let mut req = request(http::Version::HTTP_11, &[("host", "other.example")]);
        req.set_uri(http::Uri::from_static("http://api.example.com/x?q=1"));
        prepare_request(&mut req, false).expect("valid");
        assert_eq!(req.headers["host"], "api.example.com");
        assert_eq!(req.uri.to_string(), "/x?q=1");
    }

    #[test]
    fn connection_may_not_drop_a_field_the_backend_needs() {
        for field in [
            "host",
            "Idempotency-Key",
            "content-length",
            "x-forwarded-for",
        ] {
            let mut req = request(http::Version::HTTP_11, &[("connection", field)]);
            let err = prepare_request(&mut req, false).expect_err("refused");
            assert!(err.0.contains("must reach the backend"), "{field}: {err:?}");
        }
    }

    proptest! {
        /// Whatever a client puts in `Connection`, no hop-by-hop field and no
        /// nominated field reaches the backend, and other fields stay.
        #[test]
        fn no_hop_by_hop_field_goes_on(
            nominated in proptest::collection::vec("x-[a-z]{1,8}", 0..4),
            hop in proptest::sample::subsequence(HOP_BY_HOP.to_vec(), 0..HOP_BY_HOP.len()),
            body in any::<bool>(),
        ) {
            let mut headers: Vec<(String, String)> = vec![("x-end-to-end".into(), "1".into())];
            headers.push(("connection".into(), nominated.join(", ")));
            for n in &nominated {
                headers.push((n.clone(), "v".into()));
            }
            for h in &hop {
                if *h != "connection" {
                    headers.push((h.to_string(), "v".into()));
                }
            }
            let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let mut req = request(http::Version::HTTP_11, &refs);
            prepare_request(&mut req, body).expect("valid");
            for n in &nominated {
                prop_assert!(!req.headers.contains_key(n.as_str()));
            }
            for h in HOP_BY_HOP {
                if h == "transfer-encoding" && body {
                    prop_assert_eq!(&req.headers[h], "chunked");
                } else {
                    prop_assert!(!req.headers.contains_key(h), "{} kept", h);
                }
            }
            prop_assert_eq!(&req.headers["x-end-to-end"], "1");
        }
    }
}

//! The upstream side of forwarding: what a request to a backend carries, and
//! the backend's idle keep-alive connections.

use crate::fields::Fields;
use crate::h1;
use crate::route::CONSISTENCY_HEADER;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use pingora_core::protocols::Stream;
use pingora_http::authority::RawTargetAuthority;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use thread_local::ThreadLocal;

/// Fields the proxy forwards or relies on (see [`protected`]).
const PROTECTED: [&str; 6] = [
    "host",
    "content-length",
    "idempotency-key",
    "x-request-id",
    "forwarded",
    "x-edgeroute-consistency",
];

/// The fields a load balancer in front adds to tell of the client's
/// connection (`x-forwarded-for`, `-proto`, `-port`, `-host`, ...), which
/// the backend may rely on as the proxy's own.
const PROTECTED_PREFIX: &str = "x-forwarded-";

/// Whether the field `name` (in lower case) is one the proxy forwards or
/// relies on, which a client may not have dropped by naming it in
/// `Connection`: a [`PROTECTED`] one or an `x-forwarded-*`.
fn protected(name: &[u8]) -> bool {
    PROTECTED.iter().any(|p| name == p.as_bytes()) || name.starts_with(PROTECTED_PREFIX.as_bytes())
}

/// Whether a field named `name` would pass, to a backend that reads `_`
/// as `-` (CGI, WSGI, Rack and PHP make both `HTTP_X_FORWARDED_FOR`), for
/// a field the proxy sets or relies on: a [`protected`] one,
/// `transfer-encoding` or an `x-edgeroute-*`.
fn aliases_protected(name: &[u8]) -> bool {
    if !name.contains(&b'_') {
        return false;
    }
    let dashed: Vec<u8> = name
        .iter()
        .map(|&b| {
            if b == b'_' {
                b'-'
            } else {
                b.to_ascii_lowercase()
            }
        })
        .collect();
    protected(&dashed) || dashed == b"transfer-encoding" || dashed.starts_with(b"x-edgeroute-")
}

/// Why a request cannot be sent on as it is (the client gets a 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CannotForward(pub String);

/// Fields the proxy sets on every request it sends to a backend.
pub const ROUTE: HeaderName = HeaderName::from_static("x-edgeroute-route");
pub const EPOCH: HeaderName = HeaderName::from_static("x-edgeroute-epoch");
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const REGION: HeaderName = HeaderName::from_static("x-edgeroute-region");
/// A client's promise that a request is safe to send twice.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// What the proxy adds to a request on its way to a backend.
pub struct Forwarding<'a> {
    /// `x-edgeroute-route`: read or write.
    pub route: HeaderValue,
    /// `x-edgeroute-epoch`: the routing table's epoch.
    pub epoch: Option<&'a HeaderValue>,
    pub request_id: &'a HeaderValue,
    /// Appended to `x-forwarded-for`.
    pub client_ip: Option<HeaderValue>,
    /// `x-forwarded-proto`.
    pub tls: bool,
    /// The region's `Host` override.
    pub host: Option<&'a HeaderValue>,
    /// The proxy's `Via` entry (see [`crate::via`]).
    pub via: &'a HeaderValue,
}

/// The fields of a request the proxy acts on, found in one pass over its
/// fields rather than one search each. Where a field may repeat, the first
/// one counts, as a lookup would give it. Names match whatever their case.
#[derive(Debug, Default, Clone)]
pub struct RequestFacts {
    /// `x-request-id`.
    pub request_id: Option<HeaderValue>,
    /// `Idempotency-Key` is present.
    pub idempotency_key: bool,
    /// A `Content-Length` is present, and its number if it is one.
    pub has_content_length: bool,
    pub content_length: Option<u64>,
    /// `x-edgeroute-consistency: strong`.
    pub strong: bool,
    /// `Expect: 100-continue`.
    pub expects_continue: bool,
    /// A `Connection` field is present.
    pub has_connection: bool,
    /// `Upgrade: websocket`.
    pub upgrade_websocket: bool,
    /// The request is a WebSocket opening handshake the proxy passes on
    /// ([`is_websocket_upgrade`]).
    pub websocket: bool,
    /// An `x-forwarded-for` is present.
    pub has_forwarded_for: bool,
    /// A `Host` is present.
    pub has_host: bool,
    /// A `Cookie` is present.
    pub has_cookie: bool,
    /// A `Via` is present.
    pub has_via: bool,
    /// `Max-Forwards`, which an `OPTIONS` or `TRACE` request spends one of
    /// at each hop (RFC 9110 §7.6.2).
    pub max_forwards: MaxForwards,
}

/// A request's `Max-Forwards`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum MaxForwards {
    #[default]
    Absent,
    /// The hops the request may still take.
    Left(u32),
    /// Not one decimal number (or more than one field).
    Malformed,
}

impl MaxForwards {
    /// Whether `method` spends `Max-Forwards` (only `OPTIONS` and `TRACE`
    /// do; others carry it on untouched).
    pub fn applies_to(method: &http::Method) -> bool {
        *method == http::Method::OPTIONS || *method == http::Method::TRACE
    }

    fn parse(value: &[u8]) -> Self {
        if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
            return MaxForwards::Malformed;
        }
        // A number too large for a u32 has hops enough for any path.
        let hops = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(u32::MAX, |n| u32::try_from(n).unwrap_or(u32::MAX));
        MaxForwards::Left(hops)
    }
}

impl RequestFacts {
    pub fn of(req: &Parts, fields: &Fields) -> Self {
        let mut facts = RequestFacts::default();
        let mut seen_length = false;
        let mut seen_consistency = false;
        let mut seen_upgrade = false;
        let is = |name: &[u8], what: &str| name.eq_ignore_ascii_case(what.as_bytes());
        for (name, value) in fields.iter() {
            // Every HTTP/1.1 request has one, so it is looked for first.
            if is(name, "host") {
                facts.has_host = true;
            } else if is(name, "content-length") {
                if !seen_length {
                    seen_length = true;
                    facts.has_content_length = true;
                    facts.content_length =
                        std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
                }
            } else if is(name, "connection") {
                facts.has_connection = true;
            } else if is(name, "upgrade") {
                if !seen_upgrade {
                    seen_upgrade = true;
                    facts.upgrade_websocket = offers_websocket(value);
                }
            } else if is(name, "expect") {
                // A list (RFC 9110 §10.1.1): 100-continue among other
                // expectations, which are not met, still asks for it.
                facts.expects_continue |= std::str::from_utf8(value).is_ok_and(|v| {
                    h1::list_items(v).any(|e| e.eq_ignore_ascii_case("100-continue"))
                });
            } else if is(name, REQUEST_ID.as_str()) {
                if facts.request_id.is_none() {
                    facts.request_id = fields.get_value(REQUEST_ID.as_str());
                }
            } else if is(name, IDEMPOTENCY_KEY.as_str()) {
                facts.idempotency_key = true;
            } else if is(name, CONSISTENCY_HEADER.as_str()) {
                if !seen_consistency {
                    seen_consistency = true;
                    facts.strong = value.eq_ignore_ascii_case(b"strong");
                }
            } else if is(name, FORWARDED_FOR.as_str()) {
                facts.has_forwarded_for = true;
            } else if is(name, "cookie") {
                facts.has_cookie = true;
            } else if is(name, "via") {
                facts.has_via = true;
            } else if is(name, "max-forwards") {
                facts.max_forwards = match facts.max_forwards {
                    MaxForwards::Absent => MaxForwards::parse(value),
                    _ => MaxForwards::Malformed,
                };
            }
        }
        facts.websocket = facts.upgrade_websocket && is_websocket_upgrade(req, fields);
        facts
    }
}

/// A request head as it goes on the wire to a backend.
#[derive(Debug)]
pub struct BackendHead {
    pub bytes: Vec<u8>,
    /// The body goes with `Transfer-Encoding: chunked`.
    pub chunked: bool,
}

/// The HTTP/1.1 request head a backend gets for a request as received:
/// fields the client nominated in `Connection` and hop-by-hop fields are
/// left out; a WebSocket upgrade from an HTTP/1.1 client is kept (and only
/// that one); `Expect` is dropped because the proxy answers it itself; a
/// body without a length is sent chunked; a target with an authority
/// becomes `Host` plus an origin-form target; the forwarding fields replace
/// any the client sent.
///
/// The head is written straight from the fields received, in one pass and
/// without an intermediate map: names go on spelled as the client sent
/// them, and every rule above matches them whatever their case.
pub fn backend_request(
    client: &Parts,
    fields: &Fields,
    raw_target: &[u8],
    facts: &RequestFacts,
    has_body: bool,
    fwd: &Forwarding<'_>,
) -> Result<BackendHead, CannotForward> {
    let websocket = facts.websocket;
    let nominated = if facts.has_connection {
        nominated_fields(fields)?
    } else {
        Vec::new()
    };
    let (target, authority) = split_target(client, raw_target)?;
    // The region's override wins over the authority of the target.
    let host = fwd.host.cloned().or(authority);
    let chunked = has_body && !facts.has_content_length;

    let mut out = Vec::with_capacity(256 + fields.len() * 48);
    out.extend_from_slice(client.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(&target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let is = |name: &[u8], what: &str| name.eq_ignore_ascii_case(what.as_bytes());
    // HTTP/2 may split `Cookie` into crumbs; an HTTP/1.1 request carries
    // one field, the crumbs joined by "; " (RFC 9113 §8.2.3).
    let crumbs = client.version == http::Version::HTTP_2 && facts.has_cookie;
    // Repeated equal lengths go on as one (an HTTP/1 head's are merged as
    // it is read; an HTTP/2 request's come as they were sent).
    let mut length: Option<&[u8]> = None;
    let h2 = client.version == http::Version::HTTP_2;
    // An OPTIONS or TRACE request spends one hop here (one with none left
    // is answered by the proxy before it gets this far).
    let hops_left = match facts.max_forwards {
        MaxForwards::Left(hops) if MaxForwards::applies_to(&client.method) => {
            Some(hops.saturating_sub(1))
        }
        _ => None,
    };
    for (name, value) in fields.iter() {
        // HTTP/2's own checks let a `"` through in a name and blanks
        // around a value, which an HTTP/1.1 request cannot carry as sent
        // (RFC 9113 §8.2.1 calls such a request malformed).
        let blank = |b: &u8| *b == b' ' || *b == b'\t';
        if h2
            && (!h1::is_token(name)
                || value.first().is_some_and(blank)
                || value.last().is_some_and(blank))
        {
            return Err(CannotForward(format!(
                "the field {:?} has a name that is no token or a value with blanks around it",
                String::from_utf8_lossy(name)
            )));
        }
        if aliases_protected(name) {
            return Err(CannotForward(format!(
                "the field {:?} would read as {:?} to a backend that takes '_' for '-'; send fields with '-'",
                String::from_utf8_lossy(name),
                String::from_utf8_lossy(name).replace('_', "-")
            )));
        }
        if is(name, "content-length") {
            match length {
                None => length = Some(value),
                Some(first) if first == value => continue,
                Some(_) => {
                    return Err(CannotForward(
                        "the request's Content-Length fields differ".into(),
                    ));
                }
            }
        }
        let replaced = (crumbs && is(name, "cookie"))
            || (host.is_some() && is(name, "host"))
            || (fwd.client_ip.is_some() && is(name, "x-forwarded-for"))
            || SET_UPSTREAM.iter().any(|n| is(name, n))
            || (hops_left.is_some() && is(name, "max-forwards"));
        if replaced
            || is_hop_by_hop(name)
            || is(name, "expect")
            || nominated.iter().any(|n| is(name, n))
        {
            continue;
        }
        h1::put_field(&mut out, name, value);
    }
    if crumbs {
        let mut crumb = fields.get_all("cookie");
        if let Some(first) = crumb.next() {
            out.extend_from_slice(b"cookie: ");
            out.extend_from_slice(first);
            for next in crumb {
                out.extend_from_slice(b"; ");
                out.extend_from_slice(next);
            }
            out.extend_from_slice(b"\r\n");
        }
    }
    match &host {
        Some(host) => h1::put_field(&mut out, "host", host.as_bytes()),
        // An HTTP/1.1 request always names its host, if only as empty
        // (RFC 9112 §3.2): an HTTP/1.0 request may come without one.
        None if !facts.has_host => h1::put_field(&mut out, "host", b""),
        None => {}
    }
    if websocket {
        h1::put_field(&mut out, "connection", b"Upgrade");
        h1::put_field(&mut out, "upgrade", b"websocket");
    }
    if chunked {
        h1::put_field(&mut out, "transfer-encoding", b"chunked");
    }
    if let Some(hops) = hops_left {
        h1::put_field(&mut out, "max-forwards", hops.to_string().as_bytes());
    }
    // After any the client sent: together, the list in the order of hops.
    h1::put_field(&mut out, "via", fwd.via.as_bytes());
    h1::put_field(&mut out, ROUTE.as_str(), fwd.route.as_bytes());
    if let Some(epoch) = fwd.epoch {
        h1::put_field(&mut out, EPOCH.as_str(), epoch.as_bytes());
    }
    h1::put_field(&mut out, REQUEST_ID.as_str(), fwd.request_id.as_bytes());
    if let Some(ip) = &fwd.client_ip {
        h1::put_field(
            &mut out,
            FORWARDED_FOR.as_str(),
            forwarded_for(fields, facts, ip).as_bytes(),
        );
    }
    h1::put_field(
        &mut out,
        FORWARDED_PROTO.as_str(),
        if fwd.tls { b"https" } else { b"http" },
    );
    out.extend_from_slice(b"\r\n");
    Ok(BackendHead {
        bytes: out,
        chunked,
    })
}

/// The response a client gets for a backend's: its hop-by-hop fields
/// removed (the proxy speaks for its own connection), and the fields the
/// proxy adds: the request id and the region that served it (in place of
/// any the backend sent). They are kept apart from the head's own fields
/// and written after them.
pub fn client_response(
    mut backend: h1::ResponseHead,
    region: Option<&HeaderValue>,
    request_id: &HeaderValue,
) -> (h1::ResponseHead, OwnFields) {
    strip_response_fields(&mut backend.fields, backend.status);
    let mut own = OwnFields {
        fields: [
            (REQUEST_ID, request_id.clone()),
            (REGION, HeaderValue::from_static("")),
            (REGION, HeaderValue::from_static("")),
            (REGION, HeaderValue::from_static("")),
        ],
        len: 1,
    };
    if let Some(region) = region {
        own.push(REGION, region.clone());
    }
    if !backend.fields.contains("date") && !backend.status.is_informational() {
        own.push(http::header::DATE, crate::date::now());
    }
    (backend, own)
}

/// An interim (1xx) answer as the client gets it: without the fields of
/// the backend's connection, as a final one.
pub fn interim_response(backend: &mut h1::ResponseHead) {
    strip_response_fields(&mut backend.fields, backend.status);
}

/// The fields the proxy adds to a response it passes on.
pub struct OwnFields {
    fields: [(HeaderName, HeaderValue); 4],
    len: usize,
}

impl OwnFields {
    /// Adds one: the request id, the region, a `Date` and a `Set-Cookie`
    /// of the proxy's own fill the room there is.
    pub fn push(&mut self, name: HeaderName, value: HeaderValue) {
        if let Some(place) = self.fields.get_mut(self.len) {
            *place = (name, value);
            self.len += 1;
        }
    }
}

impl std::ops::Deref for OwnFields {
    type Target = [(HeaderName, HeaderValue)];

    fn deref(&self) -> &Self::Target {
        &self.fields[..self.len]
    }
}

/// The fields a request's `Connection` nominates (in lower case): they
/// stay behind with the client's connection. A `Connection` field that
/// names no field, or names one the proxy relies on, refuses the request.
fn nominated_fields(fields: &Fields) -> Result<Vec<String>, CannotForward> {
    let mut nominated = Vec::new();
    for value in fields.get_all("connection") {
        let text = std::str::from_utf8(value)
            .map_err(|_| CannotForward("Connection holds bytes that are not text".into()))?;
        for token in h1::list_items(text) {
            let name = HeaderName::from_bytes(token.as_bytes()).map_err(|_| {
                CannotForward(format!(
                    "Connection names {token:?}, which is no field name"
                ))
            })?;
            if protected(name.as_str().as_bytes()) {
                return Err(CannotForward(format!(
                    "Connection names {token:?}, a field that must reach the backend"
                )));
            }
            nominated.push(name.as_str().to_owned());
        }
    }
    Ok(nominated)
}

/// Removes a response's hop-by-hop fields: `Keep-Alive`,
/// `Proxy-Connection`, `TE`, `Trailer` and the fields nominated in `Connection`,
/// and `Connection` and `Upgrade` too unless it is a `101`; and the fields
/// the proxy sets itself (region, request id). The framing
/// fields stay (the proxy frames the body it passes on from them), except a
/// `Content-Length` beside a `Transfer-Encoding`, which does not frame it,
/// and both on a `1xx` or `204`, which have no body.
/// What a malformed `Connection` names is unknown, so nothing is removed
/// for it.
fn strip_response_fields(fields: &mut Fields, status: http::StatusCode) {
    // `TE` says what a client accepts; in an answer it means nothing, and
    // HTTP/2 refuses a head that carries one.
    const ALWAYS: [&str; 6] = [
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "x-edgeroute-region",
        "x-request-id",
    ];
    let switching = status == http::StatusCode::SWITCHING_PROTOCOLS;
    // A 1xx or 204 has no body, and RFC 9110 forbids it either framing field
    // (HTTP/2 clients such as nghttp2 refuse a 204 that has one).
    let bodiless = status.is_informational() || status == http::StatusCode::NO_CONTENT;
    let coded = fields.contains("transfer-encoding");
    // Nearly always one bare `keep-alive` or `close`, naming no field.
    let nominated: Vec<String> = if fields
        .get_all("connection")
        .all(h1::ConnectionOptions::is_option)
    {
        Vec::new()
    } else {
        fields
            .get_all("connection")
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(h1::list_items)
            // `close` names no field; `Keep-Alive` goes in any case.
            .filter(|t| !h1::ConnectionOptions::is_option(t.as_bytes()))
            // The framing fields stay, and so does a `101`'s `Upgrade`.
            .filter(|t| {
                let kept = t.eq_ignore_ascii_case("content-length")
                    || t.eq_ignore_ascii_case("transfer-encoding")
                    || (switching && t.eq_ignore_ascii_case("upgrade"));
                !kept
            })
            .map(str::to_owned)
            .collect()
    };
    let is = |name: &[u8], what: &str| name.eq_ignore_ascii_case(what.as_bytes());
    fields.retain(|name| {
        let gone = ALWAYS.iter().any(|n| is(name, n))
            || (!switching && (is(name, "connection") || is(name, "upgrade")))
            || ((coded || bodiless) && is(name, "content-length"))
            || (bodiless && is(name, "transfer-encoding"))
            || nominated.iter().any(|n| is(name, n));
        !gone
    });
}

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

fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
}

/// Fields the proxy sets on every request it forwards, in place of any the
/// client sent.
const SET_UPSTREAM: [&str; 4] = [
    "x-edgeroute-route",
    "x-edgeroute-epoch",
    "x-request-id",
    "x-forwarded-proto",
];

/// `x-forwarded-for`: the client's prior list, if any, then its address.
fn forwarded_for(fields: &Fields, facts: &RequestFacts, ip: &HeaderValue) -> HeaderValue {
    if !facts.has_forwarded_for {
        return ip.clone();
    }
    let mut list = String::new();
    for prior in fields.get_all(FORWARDED_FOR.as_str()) {
        if let Ok(prior) = std::str::from_utf8(prior) {
            let prior = prior.trim();
            if !prior.is_empty() {
                list.push_str(prior);
                list.push_str(", ");
            }
        }
    }
    let mut list = list.into_bytes();
    list.extend_from_slice(ip.as_bytes());
    // Both parts are valid field values, and so is the list.
    HeaderValue::from_maybe_shared(Bytes::from(list))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The target a backend gets, and the authority the client's target
/// carried, if any. HTTP/2's `:authority` and an HTTP/1.1 absolute-form
/// target (`GET http://api.example.com/x`) become `Host` plus an origin-form
/// target, so that the backend reads one host, the one the proxy may then
/// set; a target that is neither a path, `*` nor an http(s) or ws(s) URL is
/// refused.
fn split_target<'a>(
    client: &'a Parts,
    raw: &'a [u8],
) -> Result<(Cow<'a, [u8]>, Option<HeaderValue>), CannotForward> {
    // HTTP/2 carries the authority beside the path; HTTP/1.1 in the target.
    if let Some(authority) = client
        .uri
        .authority()
        .filter(|_| client.version == http::Version::HTTP_2)
    {
        let path = client
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .as_bytes();
        let path = if path.is_empty() { b"/" } else { path };
        // RFC 9113 §8.3.1: a path, or `*` for OPTIONS.
        if path[0] != b'/' && !(path == b"*" && client.method == http::Method::OPTIONS) {
            return Err(CannotForward(format!(
                "the request's :path {:?} is not a path beginning with / (nor * for OPTIONS)",
                String::from_utf8_lossy(&path[..path.len().min(64)])
            )));
        }
        return Ok((
            Cow::Borrowed(path),
            Some(host_value(authority.as_str().as_bytes())?),
        ));
    }
    // An origin-form target goes on byte for byte.
    if raw.is_empty() {
        return Ok((Cow::Borrowed(b"/"), None));
    }
    if raw[0] == b'/' || raw == b"*" && client.method == http::Method::OPTIONS {
        return Ok((Cow::Borrowed(raw), None));
    }
    if raw == b"*" {
        // RFC 9112 §3.2.4: the asterisk form asks about the server as a
        // whole, which only OPTIONS does.
        return Err(CannotForward(format!(
            "the request target * is for OPTIONS only, not {}",
            client.method
        )));
    }
    if raw[0] == b'?' {
        // A query alone is one of the root.
        return Ok((Cow::Owned([b"/", raw].concat()), None));
    }
    match pingora_http::authority::raw_target_authority(raw) {
        RawTargetAuthority::Absolute {
            scheme,
            authority,
            path_and_query,
        } if pingora_http::authority::is_http_family_scheme(scheme) => {
            let host = host_value(authority)?;
            let path = match path_and_query.first() {
                // The server as a whole (RFC 9112 §3.2.4).
                None if client.method == http::Method::OPTIONS => Cow::Borrowed(&b"*"[..]),
                None => Cow::Borrowed(&b"/"[..]),
                Some(b'/') => Cow::Borrowed(path_and_query),
                // `http://host?q=1`: the path is the root.
                Some(_) => Cow::Owned([b"/", path_and_query].concat()),
            };
            Ok((path, Some(host)))
        }
        _ => Err(CannotForward(format!(
            "the request target {:?} is neither a path nor an http(s) URL",
            String::from_utf8_lossy(raw)
        ))),
    }
}

/// The authority of a request's target as a `Host` value: a host name or
/// address with an optional port, as a `Host` field must be.
fn host_value(authority: &[u8]) -> Result<HeaderValue, CannotForward> {
    if authority.contains(&b'@') {
        return Err(CannotForward(
            "the request's authority carries user information".into(),
        ));
    }
    std::str::from_utf8(authority)
        .ok()
        .filter(|a| edgeroute_config::is_authority(a))
        .and_then(|a| HeaderValue::from_str(a).ok())
        .ok_or_else(|| {
            CannotForward(
                "the request's authority is not a host name or address with an optional port"
                    .into(),
            )
        })
}

/// Whether an `Upgrade` value offers the WebSocket protocol, alone or in a
/// list of protocols the client would take (RFC 9110 §7.8).
fn offers_websocket(value: &[u8]) -> bool {
    std::str::from_utf8(value)
        .is_ok_and(|v| h1::list_items(v).any(|p| p.eq_ignore_ascii_case("websocket")))
}

/// A WebSocket opening handshake (RFC 6455 §4.1) from an HTTP/1.1 client:
/// the one upgrade the proxy passes on.
pub fn is_websocket_upgrade(req: &Parts, fields: &Fields) -> bool {
    req.version == http::Version::HTTP_11
        && req.method == http::Method::GET
        && fields.get("upgrade").is_some_and(offers_websocket)
        && fields
            .get_all("connection")
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(h1::list_items)
            .any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// A backend's idle keep-alive connections, newest last, in one list per
/// worker thread or one for all (see [`Lists`]). A connection is handed out
/// again only if it is younger than the idle timeout and the backend has
/// neither closed it nor sent anything on it since.
pub struct IdlePool {
    per_thread: ThreadLocal<Mutex<List>>,
    shared: Option<Mutex<List>>,
    idle_timeout: Duration,
    /// Connections kept in each list, at most.
    max_idle: usize,
    /// Connections closed since they were last counted, by [`Discard`].
    discarded: [AtomicU64; 4],
}

/// Why an idle connection was closed instead of carrying a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discard {
    /// The backend closed it (or reset it) while it idled: its keep-alive
    /// timeout is shorter than `timeouts.pool_idle`.
    Closed,
    /// Bytes came on it while it idled: the backend sent more than the
    /// framing of its last answer said, and is out of step.
    UnexpectedBytes,
    /// It idled for `timeouts.pool_idle`.
    Expired,
    /// Its list already held `limits.idle_per_backend` when its exchange
    /// ended: the oldest was closed to make room.
    Full,
}

impl Discard {
    pub const ALL: [Discard; 4] = [
        Discard::Closed,
        Discard::UnexpectedBytes,
        Discard::Expired,
        Discard::Full,
    ];

    /// The `reason` label of `edgeroute_backend_idle_discards_total`.
    pub fn label(self) -> &'static str {
        match self {
            Discard::Closed => "closed",
            Discard::UnexpectedBytes => "unexpected_bytes",
            Discard::Expired => "expired",
            Discard::Full => "full",
        }
    }
}

type List = VecDeque<(h1::Idle, Instant)>;

/// How a backend's idle connections are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lists {
    /// A list per thread, from which a thread takes back only what it put:
    /// for worker threads with an event loop each. A connection hears of
    /// its socket's events through the loop of the thread that opened it;
    /// used from another thread, each of its backend's answers would wake
    /// that thread first, to pass the news on, and its readiness would lag
    /// there.
    PerThread,
    /// One list: for worker threads that share one event loop (work
    /// stealing), where any thread may take any connection.
    Shared,
}

impl Lists {
    /// The lists for worker threads with (`work_stealing`) or without a
    /// shared event loop.
    pub fn for_runtime(work_stealing: bool) -> Self {
        if work_stealing {
            Lists::Shared
        } else {
            Lists::PerThread
        }
    }
}

/// How a backend's idle connections are kept: in which lists, and how many
/// in each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    pub lists: Lists,
    pub max_idle: usize,
}

impl PoolShape {
    /// The shape `config` asks for.
    pub fn of(config: &edgeroute_config::ProxyConfig) -> Self {
        PoolShape {
            lists: Lists::for_runtime(config.runtime.work_stealing),
            max_idle: config.limits.idle_per_backend,
        }
    }
}

impl IdlePool {
    pub fn new(idle_timeout: Duration, shape: PoolShape) -> Self {
        IdlePool {
            per_thread: ThreadLocal::new(),
            shared: (shape.lists == Lists::Shared).then(|| Mutex::new(VecDeque::new())),
            idle_timeout,
            max_idle: shape.max_idle.max(1),
            discarded: Default::default(),
        }
    }

    pub(crate) fn discard(&self, why: Discard, count: usize) {
        self.discarded[why as usize].fetch_add(count as u64, Ordering::Relaxed);
    }

    /// The connections closed for `why` since the last call.
    pub fn take_discarded(&self, why: Discard) -> u64 {
        self.discarded[why as usize].swap(0, Ordering::Relaxed)
    }

    /// The calling thread's list. (Locked only against [`IdlePool::prune`]
    /// when lists are per thread.)
    fn lock(&self) -> MutexGuard<'_, List> {
        lock(match &self.shared {
            Some(list) => list,
            None => self.per_thread.get_or_default(),
        })
    }

    /// The newest idle connection that can carry a request, if any, made
    /// sure of as `check` says.
    pub fn take(&self, now: Instant, check: Check) -> Option<h1::Idle> {
        let mut idle = self.lock();
        while let Some((mut conn, since)) = idle.pop_back() {
            if now.saturating_duration_since(since) >= self.idle_timeout {
                // Every older one is too old as well.
                self.discard(Discard::Expired, idle.len() + 1);
                idle.clear();
                return None;
            }
            let state = match idle_state(&mut conn.stream) {
                None if check == Check::Socket => socket_state(&conn.stream),
                state => state,
            };
            match state {
                None => return Some(conn),
                Some(why) => self.discard(why, 1),
            }
        }
        None
    }

    /// Keeps a connection whose last exchange finished cleanly.
    pub fn put(&self, conn: h1::Idle, now: Instant) {
        let mut idle = self.lock();
        while idle
            .front()
            .is_some_and(|(_, since)| now.saturating_duration_since(*since) >= self.idle_timeout)
        {
            idle.pop_front();
            self.discard(Discard::Expired, 1);
        }
        if idle.len() >= self.max_idle {
            idle.pop_front();
            self.discard(Discard::Full, 1);
        }
        idle.push_back((conn, now));
    }

    /// Closes idle connections that are too old, or that the backend has
    /// closed or written to since: a pool its backend no longer gets
    /// requests for does not keep them open. Returns how many are left.
    /// Every thread's list is swept.
    pub fn prune(&self, now: Instant) -> usize {
        self.shared
            .iter()
            .chain(self.per_thread.iter())
            .map(|list| {
                let mut idle = lock(list);
                idle.retain_mut(|(conn, since)| {
                    let why = if now.saturating_duration_since(*since) >= self.idle_timeout {
                        Some(Discard::Expired)
                    } else {
                        idle_state(&mut conn.stream)
                    };
                    why.inspect(|why| self.discard(*why, 1)).is_none()
                });
                idle.len()
            })
            .sum()
    }
}

fn lock<T>(list: &Mutex<T>) -> MutexGuard<'_, T> {
    // A list of owned connections stays consistent if a holder panicked.
    list.lock().unwrap_or_else(|p| p.into_inner())
}

/// How [`IdlePool::take`] makes sure an idle connection is still open.
///
/// A connection learns of its socket's events (the backend's close among
/// them) when its thread's runtime next turns its event loop: a close that
/// landed while the thread was busy can still look idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The runtime's readiness alone: free. For a request that can go
    /// again on a fresh connection (repeatable, with attempts left and its
    /// body held for a retry), which a close seen late costs a retry.
    Readiness,
    /// The readiness, then the socket itself (one `recv` that peeks and
    /// does not wait): for a request that could not go again.
    Socket,
}

/// What the socket itself holds: `None` (idle) when there is nothing to
/// read and no end-of-stream. A stream's `id` is its socket's descriptor,
/// plain and TLS alike: on a TLS connection the bytes are records, and an
/// alert (such as the close notice a backend sends before it closes) is a
/// close, where a byte that starts no HTTP/1 message on a plain one.
fn socket_state(stream: &Stream) -> Option<Discard> {
    use nix::sys::socket::{MsgFlags, recv};
    /// The content type of a TLS alert record (RFC 8446 §5.1).
    const TLS_ALERT: u8 = 0x15;
    let mut byte = [0u8; 1];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    match recv(stream.id(), &mut byte, flags) {
        Err(nix::errno::Errno::EAGAIN) => None,
        Ok(n) if n > 0 && byte[0] != TLS_ALERT => Some(Discard::UnexpectedBytes),
        // End-of-stream, an error (a reset), or a TLS alert.
        _ => Some(Discard::Closed),
    }
}

/// An idle HTTP/1 connection has nothing to read (`None`): end-of-stream
/// means the backend closed it, and bytes mean it is out of step. One
/// read attempt that must not wait tells; the runtime knows from its
/// readiness events whether the socket has anything, so an idle socket
/// costs no system call.
fn idle_state(stream: &mut Stream) -> Option<Discard> {
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};
    use tokio::io::AsyncRead;
    let mut cx = Context::from_waker(Waker::noop());
    let mut byte = [0u8; 1];
    let mut buf = tokio::io::ReadBuf::new(&mut byte);
    // Outside the task's cooperative budget: a spent budget would answer
    // Pending without looking at the socket.
    let read = std::future::poll_fn(|cx| {
        Pin::new(&mut *stream)
            .poll_read(cx, &mut buf)
            .map_ok(|()| buf.filled().len())
    });
    let mut read = std::pin::pin!(tokio::task::unconstrained(read));
    match read.as_mut().poll(&mut cx) {
        // Nothing to read, and the backend has not closed it.
        Poll::Pending => None,
        Poll::Ready(Ok(n)) if n > 0 => Some(Discard::UnexpectedBytes),
        // End-of-stream, or an error (a reset).
        Poll::Ready(_) => Some(Discard::Closed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use http::header;
    use pingora_http::RequestHeader;
    use proptest::prelude::*;

    /// A request head as the backend reads it off the wire.
    #[derive(Debug)]
    struct Sent {
        line: String,
        target: Vec<u8>,
        headers: HeaderMap,
    }

    fn sent(head: &BackendHead) -> Sent {
        let bytes = &head.bytes;
        let eol = bytes
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a request line");
        let line = &bytes[..eol];
        // Split by hand: a target may hold bytes that are not UTF-8.
        let first = line.iter().position(|b| *b == b' ').expect("method");
        let last = line.iter().rposition(|b| *b == b' ').expect("version");
        assert_eq!(&line[last..], b" HTTP/1.1");
        let target = line[first + 1..last].to_vec();
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let (len, fields) =
            match httparse::parse_headers(&bytes[eol + 2..], &mut fields).expect("valid fields") {
                httparse::Status::Complete(done) => done,
                httparse::Status::Partial => panic!("incomplete head"),
            };
        assert_eq!(eol + 2 + len, bytes.len(), "nothing after the head");
        let mut headers = HeaderMap::new();
        for f in fields {
            headers.append(
                HeaderName::from_bytes(f.name.as_bytes()).expect("name"),
                HeaderValue::from_bytes(f.value).expect("value"),
            );
        }
        Sent {
            line: String::from_utf8_lossy(line).into_owned(),
            target,
            headers,
        }
    }

    fn forward(req: &RequestHeader, body: bool) -> Result<Sent, CannotForward> {
        forward_fields(req, &Fields::from_map(&req.headers), body)
    }

    /// `req`'s line with `fields` as they came, sent on.
    fn forward_fields(
        req: &RequestHeader,
        fields: &Fields,
        body: bool,
    ) -> Result<Sent, CannotForward> {
        let id = HeaderValue::from_static("id-1");
        let via = crate::via::Via::new("us-east-1");
        let fwd = Forwarding {
            route: HeaderValue::from_static("read"),
            epoch: None,
            request_id: &id,
            client_ip: Some(HeaderValue::from_static("10.0.0.1")),
            tls: false,
            host: None,
            via: via.entry(req.version),
        };
        let facts = RequestFacts::of(req, fields);
        let head = backend_request(req, fields, req.raw_path(), &facts, body, &fwd)?;
        assert_eq!(
            head.chunked,
            sent(&head).headers.contains_key("transfer-encoding")
        );
        Ok(sent(&head))
    }

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
        let req = request(
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
        let req = forward(&req, true).expect("valid");
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
        let with_len = request(http::Version::HTTP_11, &[("content-length", "4")]);
        let with_len = forward(&with_len, true).expect("valid");
        assert_eq!(with_len.headers["content-length"], "4");
        assert!(!with_len.headers.contains_key("transfer-encoding"));
        let bodyless = request(http::Version::HTTP_11, &[]);
        let bodyless = forward(&bodyless, false).expect("valid");
        assert!(!bodyless.headers.contains_key("transfer-encoding"));
    }

    #[test]
    fn only_a_websocket_upgrade_from_http11_goes_on() {
        let ws = request(
            http::Version::HTTP_11,
            &[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", "websocket"),
            ],
        );
        let ws = forward(&ws, false).expect("valid");
        assert_eq!(ws.headers["connection"], "Upgrade");
        assert_eq!(ws.headers["upgrade"], "websocket");

        let h2c = request(
            http::Version::HTTP_11,
            &[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c"),
                ("http2-settings", "x"),
            ],
        );
        let h2c = forward(&h2c, false).expect("valid");
        assert!(!h2c.headers.contains_key("upgrade"));
        assert!(!h2c.headers.contains_key("connection"));
        assert!(!h2c.headers.contains_key("http2-settings"));

        // A list of protocols the client would take: the WebSocket is
        // the one the backend is offered.
        let offered = request(
            http::Version::HTTP_11,
            &[("connection", "Upgrade"), ("upgrade", "foo/2, WebSocket")],
        );
        let offered = forward(&offered, false).expect("valid");
        assert_eq!(offered.headers["upgrade"], "websocket");
        let other = request(
            http::Version::HTTP_11,
            &[("connection", "Upgrade"), ("upgrade", "foo/2, websockets")],
        );
        assert!(
            !forward(&other, false)
                .expect("valid")
                .headers
                .contains_key("upgrade")
        );

        let old = request(
            http::Version::HTTP_10,
            &[("connection", "upgrade"), ("upgrade", "websocket")],
        );
        let old = forward(&old, false).expect("valid");
        assert!(!old.headers.contains_key("upgrade"));
        assert!(old.line.ends_with(" HTTP/1.1"));
    }

    #[test]
    fn a_connection_header_naming_no_field_is_refused() {
        let req = request(
            http::Version::HTTP_11,
            &[("connection", "close, bad field")],
        );
        let err = forward(&req, false).expect_err("refused");
        assert!(err.0.contains("bad field"), "{err:?}");
    }

    #[test]
    fn an_http2_request_gets_host_from_its_authority() {
        let mut req = RequestHeader::build("GET", b"/x", None).expect("request");
        req.set_uri(http::Uri::from_static("https://api.example.com/x"));
        req.set_version(http::Version::HTTP_2);
        let req = forward(&req, false).expect("valid");
        assert_eq!(req.headers["host"], "api.example.com");
        assert_eq!(req.line, "GET /x HTTP/1.1");
    }

    #[test]
    fn an_http2_requests_cookie_crumbs_reach_the_backend_as_one_field() {
        let mut req = RequestHeader::build("GET", b"/x", None).expect("request");
        req.set_uri(http::Uri::from_static("https://api.example.com/x"));
        for crumb in ["a=1", "b=2", "edgeroute-ryw=9"] {
            req.append_header("cookie", crumb).unwrap();
        }
        req.set_version(http::Version::HTTP_2);
        let sent = forward(&req, false).expect("valid");
        let cookies: Vec<_> = sent.headers.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1; b=2; edgeroute-ryw=9"]);
        // HTTP/1.1 clients send one field already; theirs go on as sent.
        req.set_version(http::Version::HTTP_11);
        let sent = forward(&req, false).expect("valid");
        assert_eq!(sent.headers.get_all("cookie").iter().count(), 3);
    }

    #[test]
    fn an_http2_requests_repeated_lengths_go_on_as_one_or_not_at_all() {
        let mut req = RequestHeader::build("POST", b"/x", None).expect("request");
        req.set_uri(http::Uri::from_static("https://api.example.com/x"));
        req.set_version(http::Version::HTTP_2);
        for length in ["5", "5"] {
            req.append_header("content-length", length).unwrap();
        }
        let sent = forward(&req, true).expect("valid");
        let lengths: Vec<_> = sent.headers.get_all("content-length").iter().collect();
        assert_eq!(lengths, ["5"]);
        req.append_header("content-length", "6").unwrap();
        let err = forward(&req, true).expect_err("refused");
        assert!(err.0.contains("Content-Length"), "{err:?}");
    }

    #[test]
    fn an_absolute_form_target_becomes_host_and_path() {
        // As Pingora parses an HTTP/1.1 request line.
        for (target, host, path) in [
            (&b"http://api.example.com/x?q=1"[..], None, &b"/x?q=1"[..]),
            (
                b"http://api.example.com:8080/x",
                Some("api.example.com:8080"),
                b"/x",
            ),
            (b"https://api.example.com", None, b"/"),
            (b"http://api.example.com?q=1", None, b"/?q=1"),
            (b"http://api.example.com/caf\xe9", None, b"/caf\xe9"),
        ] {
            let mut req = RequestHeader::build("GET", target, None).expect("request");
            if let Some(host) = host {
                req.insert_header("host", host).expect("host");
            }
            let out = forward(&req, false).expect("valid");
            let want = host.unwrap_or("api.example.com");
            assert_eq!(out.headers["host"], want, "{target:?}");
            assert_eq!(&*out.target, path, "{target:?}");
        }
    }

    #[test]
    fn a_field_that_reads_as_one_the_proxy_sets_with_underscores_is_refused() {
        for field in [
            "X_Forwarded_For",
            "x_forwarded-proto",
            "X-Forwarded_Port",
            "Content_Length",
            "transfer_encoding",
            "X_Request_Id",
            "x_edgeroute_route",
        ] {
            let req = request(http::Version::HTTP_11, &[(field, "1")]);
            let err = forward(&req, false).expect_err(field);
            assert!(err.0.contains("takes '_' for '-'"), "{field}: {err:?}");
        }
        // Others with underscores go on as they are.
        let req = request(http::Version::HTTP_11, &[("my_field", "1")]);
        let out = forward(&req, false).expect("valid");
        assert_eq!(out.headers["my_field"], "1");
    }

    /// What HTTP/2 lets through and an HTTP/1.1 request cannot carry.
    #[test]
    fn an_http2_field_an_http1_request_cannot_carry_is_refused() {
        for (name, value) in [("x\"a", "1"), ("x-a", " 1"), ("x-a", "1\t"), ("x-a", " 1 ")] {
            let mut req = RequestHeader::build("GET", b"/x", None).expect("request");
            req.set_version(http::Version::HTTP_2);
            // As HTTP/2 takes a name: in lower case, by its own table.
            let mut map = http::HeaderMap::new();
            map.append(
                HeaderName::from_lowercase(name.as_bytes()).expect("an HTTP/2 name"),
                HeaderValue::from_bytes(value.as_bytes()).expect("value"),
            );
            let err = forward_fields(&req, &Fields::from_map(&map), false).expect_err(name);
            assert!(
                err.0.contains("no token or a value with blanks"),
                "{name:?}: {err:?}"
            );
        }
        let mut req = request(http::Version::HTTP_2, &[("x-a", "1 2")]);
        req.set_version(http::Version::HTTP_2);
        assert_eq!(forward(&req, false).expect("valid").headers["x-a"], "1 2");
    }

    #[test]
    fn an_absolute_form_options_without_a_path_asks_of_the_server() {
        for (target, host, path) in [
            (
                &b"http://www.example.org:8001"[..],
                "www.example.org:8001",
                &b"*"[..],
            ),
            (
                b"http://www.example.org:8001/",
                "www.example.org:8001",
                b"/",
            ),
            (b"http://www.example.org?q", "www.example.org", b"/?q"),
        ] {
            let req = RequestHeader::build("OPTIONS", target, None).expect("request");
            let out = forward(&req, false).expect("valid");
            assert_eq!(&*out.target, path, "{target:?}");
            assert_eq!(out.headers["host"], host, "{target:?}");
        }
    }

    #[test]
    fn a_target_that_is_no_path_nor_http_url_is_refused() {
        for target in [
            &b"foo:bar"[..],
            b"ftp://files.example.com/x",
            b"http://user@api.example.com/",
            b"http://h:99999/",
            b"http://a:b:c/",
        ] {
            let req = RequestHeader::build("GET", target, None).expect("request");
            forward(&req, false).expect_err(&String::from_utf8_lossy(target));
        }
        // The asterisk asks about the server as a whole: OPTIONS only.
        for method in ["GET", "POST", "TRACE"] {
            let req = RequestHeader::build(method, b"*", None).expect("request");
            let err = forward(&req, false).expect_err(method);
            assert!(err.0.contains("for OPTIONS only"), "{err:?}");
        }
    }

    /// HTTP/2's `:path` beside `:authority` is held to the same forms: a
    /// path, or `*` for OPTIONS (RFC 9113 §8.3.1).
    #[test]
    fn an_http2_path_that_is_no_path_is_refused() {
        let with = |method: &str, path: &'static str| {
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(http::uri::Scheme::HTTP);
            parts.authority = Some(http::uri::Authority::from_static("api.example.com"));
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static(path));
            let uri = http::Uri::from_parts(parts).expect("a URI from HTTP/2's fields");
            let mut req = RequestHeader::build(method, b"/", None).expect("request");
            req.set_uri(uri);
            req.set_version(http::Version::HTTP_2);
            forward(&req, false)
        };
        for (method, path) in [("GET", "*"), ("GET", "?q=1"), ("POST", "*")] {
            let err = with(method, path).expect_err(path);
            assert!(err.0.contains("is not a path beginning with /"), "{err:?}");
        }
        let out = with("OPTIONS", "*").expect("OPTIONS *");
        assert_eq!(&*out.target, b"*");
        let out = with("GET", "/x?q=1").expect("a path");
        assert_eq!(&*out.target, b"/x?q=1");
        assert_eq!(out.headers["host"], "api.example.com");
    }

    #[test]
    fn an_origin_form_target_goes_on_byte_for_byte() {
        for target in [&b"/a/b?c=d&e"[..], b"/caf\xe9?x", b"*"] {
            let req = RequestHeader::build("OPTIONS", target, None).expect("request");
            let out = forward(&req, false).expect("valid");
            assert_eq!(&*out.target, target);
            // No host named: an HTTP/1.1 request names it as empty.
            assert_eq!(out.headers["host"], "");
        }
    }

    #[test]
    fn connection_may_not_drop_a_field_the_backend_needs() {
        for field in [
            "host",
            "Idempotency-Key",
            "content-length",
            "x-forwarded-for",
            "X-Forwarded-Port",
            "x-forwarded-host",
            "Forwarded",
            "x-request-id",
        ] {
            let req = request(http::Version::HTTP_11, &[("connection", field)]);
            let err = forward(&req, false).expect_err("refused");
            assert!(err.0.contains("must reach the backend"), "{field}: {err:?}");
        }
    }

    #[test]
    fn forwarding_fields_replace_what_the_client_sent() {
        let req = request(
            http::Version::HTTP_11,
            &[
                ("host", "api.example.com"),
                ("x-edgeroute-route", "write"),
                ("x-request-id", "client-chosen"),
                ("x-forwarded-for", "192.0.2.1"),
                ("x-forwarded-for", "198.51.100.2, 203.0.113.3"),
                ("x-forwarded-proto", "https"),
            ],
        );
        let id = HeaderValue::from_static("id-7");
        let epoch = HeaderValue::from_static("42");
        let host = HeaderValue::from_static("backend.internal");
        let via = HeaderValue::from_static("1.1 edgeroute-us-east-1");
        let fwd = Forwarding {
            route: HeaderValue::from_static("read"),
            epoch: Some(&epoch),
            request_id: &id,
            client_ip: Some(HeaderValue::from_static("10.1.2.3")),
            tls: false,
            host: Some(&host),
            via: &via,
        };
        let fields = Fields::from_map(&req.headers);
        let facts = RequestFacts::of(&req, &fields);
        let out = sent(
            &backend_request(&req, &fields, req.raw_path(), &facts, false, &fwd).expect("valid"),
        );
        let one = |name: &str| {
            let all: Vec<_> = out.headers.get_all(name).iter().collect();
            assert_eq!(all.len(), 1, "{name}: {all:?}");
            all[0].to_str().expect("text").to_owned()
        };
        assert_eq!(one("x-edgeroute-route"), "read");
        assert_eq!(one("x-edgeroute-epoch"), "42");
        assert_eq!(one("x-request-id"), "id-7");
        assert_eq!(
            one("x-forwarded-for"),
            "192.0.2.1, 198.51.100.2, 203.0.113.3, 10.1.2.3"
        );
        assert_eq!(one("x-forwarded-proto"), "http");
        assert_eq!(one("host"), "backend.internal");
        assert_eq!(one("via"), "1.1 edgeroute-us-east-1");
        assert_eq!(out.line, "GET /x HTTP/1.1");
    }

    #[test]
    fn the_proxys_via_entry_follows_the_clients() {
        let req = request(
            http::Version::HTTP_11,
            &[("via", "1.1 a.example"), ("via", "2 b.example (b)")],
        );
        let out = forward(&req, false).expect("valid");
        let via: Vec<_> = out.headers.get_all("via").iter().collect();
        assert_eq!(
            via,
            [
                "1.1 a.example",
                "2 b.example (b)",
                "1.1 edgeroute-us-east-1"
            ]
        );
        // The protocol the proxy received the request with.
        let h2 = request(http::Version::HTTP_2, &[]);
        assert_eq!(
            forward(&h2, false).expect("valid").headers["via"],
            "2 edgeroute-us-east-1"
        );
    }

    #[test]
    fn max_forwards_reads_one_decimal_number() {
        let facts = |values: &[&str]| {
            let fields: Vec<(&str, &str)> = values.iter().map(|v| ("max-forwards", *v)).collect();
            let req = request(http::Version::HTTP_11, &fields);
            RequestFacts::of(&req, &Fields::from_map(&req.headers)).max_forwards
        };
        assert_eq!(facts(&[]), MaxForwards::Absent);
        assert_eq!(facts(&["0"]), MaxForwards::Left(0));
        assert_eq!(facts(&["007"]), MaxForwards::Left(7));
        assert_eq!(
            facts(&["99999999999999999999999"]),
            MaxForwards::Left(u32::MAX)
        );
        for bad in ["", "-1", "+1", "1.0", "0x10", "1 2", "ten"] {
            assert_eq!(facts(&[bad]), MaxForwards::Malformed, "{bad:?}");
        }
        // A singleton field: two are no answer to how many hops are left.
        assert_eq!(facts(&["3", "3"]), MaxForwards::Malformed);
    }

    proptest! {
        /// An OPTIONS or TRACE request spends one hop of its Max-Forwards
        /// at the proxy, and the backend gets one field with what is
        /// left; any other method's goes on as sent.
        #[test]
        fn options_and_trace_spend_one_hop(
            hops in 1u32..,
            method in prop_oneof![Just("OPTIONS"), Just("TRACE"), Just("GET"), Just("POST")],
        ) {
            let mut req = RequestHeader::build(method, b"/x", None).expect("request");
            req.insert_header("max-forwards", hops.to_string()).expect("field");
            let out = forward(&req, false).expect("valid");
            let sent: Vec<_> = out.headers.get_all("max-forwards").iter().collect();
            let expected = if method == "OPTIONS" || method == "TRACE" { hops - 1 } else { hops };
            let expected = expected.to_string();
            prop_assert_eq!(sent, [expected.as_str()]);
        }
    }

    #[test]
    fn a_query_alone_becomes_one_of_the_root() {
        let req = RequestHeader::build("GET", b"?a=1", None).expect("request");
        assert_eq!(&*forward(&req, false).expect("valid").target, b"/?a=1");
    }

    #[test]
    fn a_client_cannot_set_the_route_or_epoch_even_without_a_table_epoch() {
        let req = request(
            http::Version::HTTP_11,
            &[("x-edgeroute-epoch", "99"), ("x-edgeroute-route", "write")],
        );
        let out = forward(&req, false).expect("valid");
        assert!(!out.headers.contains_key("x-edgeroute-epoch"));
        assert_eq!(out.headers["x-edgeroute-route"], "read");
    }

    #[test]
    fn every_field_goes_on_once_per_line() {
        let req = request(
            http::Version::HTTP_11,
            &[("host", "api.example.com"), ("x-two", "a"), ("x-two", "b")],
        );
        let out = forward(&req, true).expect("valid");
        assert_eq!(out.headers["host"], "api.example.com");
        let two: Vec<_> = out.headers.get_all("x-two").iter().collect();
        assert_eq!(two, ["a", "b"]);
        assert_eq!(out.headers["transfer-encoding"], "chunked");
        assert_eq!(out.headers["x-request-id"], "id-1");
        assert_eq!(out.headers["x-forwarded-proto"], "http");
    }

    fn response(status: u16, fields: &[(&str, &str)]) -> h1::ResponseHead {
        h1::ResponseHead {
            status: http::StatusCode::from_u16(status).expect("status"),
            reason: None,
            fields: Fields::parse(fields),
            framing: None,
        }
    }

    #[test]
    fn a_response_loses_its_hop_by_hop_fields_but_keeps_its_framing() {
        let backend = response(
            200,
            &[
                ("connection", "keep-alive, x-backend-hop, transfer-encoding"),
                ("keep-alive", "timeout=5"),
                ("x-backend-hop", "1"),
                ("upgrade", "h2c"),
                ("transfer-encoding", "chunked"),
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
            ],
        );
        let id = HeaderValue::from_static("id-9");
        let region = HeaderValue::from_static("eu-west-1");
        let out = client_response(backend, Some(&region), &id);
        for gone in ["connection", "keep-alive", "x-backend-hop", "upgrade"] {
            assert!(carried(&out, gone).is_empty(), "{gone} was kept");
        }
        assert_eq!(carried(&out, "transfer-encoding"), ["chunked"]);
        assert_eq!(carried(&out, "set-cookie"), ["a=1", "b=2"]);
        assert_eq!(carried(&out, "x-edgeroute-region"), ["eu-west-1"]);
        assert_eq!(carried(&out, "x-request-id"), ["id-9"]);
        assert_eq!(out.0.status, 200);
    }

    #[test]
    fn a_204_loses_its_framing_fields_and_a_304_keeps_its_length() {
        let id = HeaderValue::from_static("id");
        let out = client_response(
            response(204, &[("content-length", "5"), ("x-kept", "1")]),
            None,
            &id,
        );
        assert!(carried(&out, "content-length").is_empty());
        assert_eq!(carried(&out, "x-kept"), ["1"]);
        let out = client_response(
            response(204, &[("transfer-encoding", "chunked")]),
            None,
            &id,
        );
        assert!(carried(&out, "transfer-encoding").is_empty());
        // A 304's length is the representation's, which RFC 9110 allows.
        let out = client_response(response(304, &[("content-length", "5")]), None, &id);
        assert_eq!(carried(&out, "content-length"), ["5"]);
    }

    /// The values of `name` a response carries, in its fields and the
    /// proxy's own.
    fn carried<'a>((resp, own): &'a (h1::ResponseHead, OwnFields), name: &str) -> Vec<&'a str> {
        let added = own.iter().filter(|(n, _)| n == name);
        resp.fields
            .get_all(name)
            .chain(added.map(|(_, v)| v.as_bytes()))
            .map(|v| std::str::from_utf8(v).expect("text"))
            .collect()
    }

    #[test]
    fn the_proxy_s_own_fields_replace_the_backend_s() {
        let backend = response(
            200,
            &[
                ("x-request-id", "from-backend"),
                ("X-Edgeroute-Region", "spoofed"),
                ("content-length", "0"),
            ],
        );
        let id = HeaderValue::from_static("id-1");
        let region = HeaderValue::from_static("us-east-1");
        let out = client_response(backend, Some(&region), &id);
        assert_eq!(carried(&out, "x-request-id"), ["id-1"]);
        assert_eq!(carried(&out, "x-edgeroute-region"), ["us-east-1"]);
        assert_eq!(carried(&out, "content-length"), ["0"]);
        // Without a region, the backend's claim of one is dropped all the same.
        let backend = response(200, &[("x-edgeroute-region", "spoofed")]);
        let out = client_response(backend, None, &id);
        assert!(carried(&out, "x-edgeroute-region").is_empty());
    }

    #[test]
    fn a_length_beside_a_transfer_coding_is_dropped() {
        let backend = response(
            200,
            &[("transfer-encoding", "chunked"), ("content-length", "5")],
        );
        let out = client_response(backend, None, &HeaderValue::from_static("id"));
        assert!(carried(&out, "content-length").is_empty());
        assert_eq!(carried(&out, "transfer-encoding"), ["chunked"]);
    }

    #[test]
    fn a_switching_protocols_response_keeps_its_upgrade() {
        let backend = response(101, &[("connection", "Upgrade"), ("upgrade", "websocket")]);
        let id = HeaderValue::from_static("id");
        let out = client_response(backend, None, &id);
        assert_eq!(carried(&out, "upgrade"), ["websocket"]);
        assert_eq!(carried(&out, "connection"), ["Upgrade"]);
        assert!(carried(&out, "x-edgeroute-region").is_empty());
    }

    /// A backend's `Date` goes on; an answer without one gets the
    /// proxy's (an interim answer none).
    #[test]
    fn an_answer_without_a_date_gets_one() {
        let id = HeaderValue::from_static("id");
        let dated = response(200, &[("date", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        let out = client_response(dated, None, &id);
        assert_eq!(carried(&out, "date"), ["Sun, 06 Nov 1994 08:49:37 GMT"]);
        let out = client_response(response(200, &[]), None, &id);
        let date = carried(&out, "date");
        assert_eq!(date.len(), 1, "{date:?}");
        assert!(httpdate::parse_http_date(date[0]).is_ok(), "{date:?}");
        let out = client_response(response(103, &[]), None, &id);
        assert!(carried(&out, "date").is_empty());
    }

    #[test]
    fn a_custom_reason_phrase_goes_on() {
        let mut backend = response(503, &[]);
        backend.reason = Some("Back Soon".into());
        let (out, _) = client_response(backend, None, &HeaderValue::from_static("id"));
        assert_eq!(out.reason.as_deref(), Some("Back Soon"));
    }

    /// Fields and values that [`RequestFacts`] looks at, and others.
    fn fact_field() -> impl Strategy<Value = (&'static str, &'static str)> {
        let names = prop_oneof![
            Just("content-length"),
            Just("connection"),
            Just("upgrade"),
            Just("expect"),
            Just("x-request-id"),
            Just("idempotency-key"),
            Just("x-edgeroute-consistency"),
            Just("x-forwarded-for"),
            Just("accept"),
        ];
        let values = prop_oneof![
            Just("12"),
            Just("x"),
            Just("WebSocket"),
            Just("100-Continue"),
            Just("foo, 100-continue"),
            Just("Strong"),
            Just("eventual"),
            Just(""),
        ];
        (names, values)
    }

    proptest! {
        /// The one pass over the fields finds what a lookup per field would.
        #[test]
        fn request_facts_agree_with_lookups(
            fields in proptest::collection::vec(fact_field(), 0..8),
        ) {
            let (mut req, ()) = http::Request::new(()).into_parts();
            for (k, v) in &fields {
                req.headers.append(*k, HeaderValue::from_static(v));
            }
            let facts = RequestFacts::of(&req, &Fields::from_map(&req.headers));
            let headers = &req.headers;
            let first_is = |name: HeaderName, want: &str| {
                headers.get(name).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(want.as_bytes()))
            };
            prop_assert_eq!(facts.request_id.as_ref(), headers.get(REQUEST_ID));
            prop_assert_eq!(facts.idempotency_key, headers.contains_key(IDEMPOTENCY_KEY));
            prop_assert_eq!(facts.has_content_length, headers.contains_key(header::CONTENT_LENGTH));
            prop_assert_eq!(
                facts.content_length,
                headers
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
            );
            prop_assert_eq!(facts.strong, first_is(CONSISTENCY_HEADER, "strong"));
            let expects_continue = headers.get_all(header::EXPECT).iter().any(|v| {
                v.to_str().is_ok_and(|v| v.split(',').any(|e| e.trim().eq_ignore_ascii_case("100-continue")))
            });
            prop_assert_eq!(facts.expects_continue, expects_continue);
            prop_assert_eq!(facts.upgrade_websocket, first_is(header::UPGRADE, "websocket"));
            prop_assert_eq!(facts.has_connection, headers.contains_key(header::CONNECTION));
            prop_assert_eq!(facts.has_forwarded_for, headers.contains_key(FORWARDED_FOR));
        }
    }

    fn pool_of(lists: Lists, max_idle: usize) -> IdlePool {
        IdlePool::new(Duration::from_secs(60), PoolShape { lists, max_idle })
    }

    #[tokio::test]
    async fn a_full_list_closes_its_oldest_connection_and_counts_it() {
        let pool = pool_of(Lists::PerThread, 2);
        let now = Instant::now();
        let mut ids = Vec::new();
        let mut peers = Vec::new();
        for _ in 0..3 {
            let (conn, peer) = h1::stream_pair().await;
            ids.push(conn.id());
            peers.push(peer);
            pool.put(h1::Idle::new(conn), now);
        }
        assert_eq!(pool.take_discarded(Discard::Full), 1);
        let taken: Vec<_> = std::iter::from_fn(|| pool.take(now, Check::Readiness))
            .map(|c| c.stream.id())
            .collect();
        assert_eq!(taken, [ids[2], ids[1]], "the newest two, newest first");
        assert_eq!(Discard::ALL.map(|why| pool.take_discarded(why)), [0; 4]);
    }

    #[tokio::test]
    async fn take_hands_out_no_connection_its_backend_closed() {
        let pool = pool_of(Lists::PerThread, 128);
        let now = Instant::now();
        let (open, _open_peer) = h1::stream_pair().await;
        let open_id = open.id();
        pool.put(h1::Idle::new(open), now);
        let (closed, closed_peer) = h1::stream_pair().await;
        pool.put(h1::Idle::new(closed), now);
        drop(closed_peer);
        // The close travels over loopback; the runtime learns of it through
        // its readiness events. Until then the closed one, newest, comes first.
        for _ in 0..1000 {
            let taken = pool
                .take(now, Check::Readiness)
                .expect("the open connection is left");
            if taken.stream.id() == open_id {
                assert!(
                    pool.take(now, Check::Readiness).is_none(),
                    "the closed one was dropped"
                );
                assert_eq!(pool.take_discarded(Discard::Closed), 1);
                return;
            }
            pool.put(taken, now);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the closed connection was still handed out after 5 s");
    }

    /// Waits, without turning the runtime, until `peer`'s close or bytes
    /// have reached `conn`'s socket.
    fn landed(conn: &Stream) {
        use nix::sys::socket::{MsgFlags, recv};
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        for _ in 0..5000 {
            if recv(conn.id(), &mut [0u8; 1], flags).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("nothing reached the socket within 5 s");
    }

    #[tokio::test]
    async fn the_socket_tells_a_tls_close_notice_from_bytes_out_of_step() {
        let (alerted, alert_peer) = h1::stream_pair().await;
        // A close_notify alert record, as a TLS backend sends it first.
        let alert = [0x15, 0x03, 0x03, 0x00, 0x02, 0x01, 0x00];
        assert_eq!(alert_peer.try_write(&alert).expect("write"), alert.len());
        landed(&alerted);
        assert_eq!(socket_state(&alerted), Some(Discard::Closed));
        let (chatty, chatty_peer) = h1::stream_pair().await;
        assert_eq!(chatty_peer.try_write(b"HTTP/1.1").expect("write"), 8);
        landed(&chatty);
        assert_eq!(socket_state(&chatty), Some(Discard::UnexpectedBytes));
        let (quiet, _quiet_peer) = h1::stream_pair().await;
        assert_eq!(socket_state(&quiet), None);
    }

    #[tokio::test]
    async fn a_close_the_runtime_has_not_seen_keeps_a_post_off_the_connection() {
        let pool = pool_of(Lists::PerThread, 128);
        let now = Instant::now();
        let (conn, peer) = h1::stream_pair().await;
        pool.put(h1::Idle::new(conn), now);
        drop(peer);
        // No await from here on: the runtime's event loop does not turn,
        // as on a worker thread busy with other requests.
        let conn = pool.take(now, Check::Readiness).expect("still looks idle");
        landed(&conn.stream);
        pool.put(conn, now);
        let conn = pool
            .take(now, Check::Readiness)
            .expect("the readiness has not seen the close");
        pool.put(conn, now);
        assert!(
            pool.take(now, Check::Socket).is_none(),
            "the socket knows it is closed"
        );
        assert!(pool.take(now, Check::Readiness).is_none(), "and it is gone");
    }

    #[tokio::test]
    async fn the_socket_check_keeps_an_idle_connection_and_drops_one_out_of_step() {
        let pool = pool_of(Lists::PerThread, 128);
        let now = Instant::now();
        let (open, _open_peer) = h1::stream_pair().await;
        let open_id = open.id();
        let (chatty, chatty_peer) = h1::stream_pair().await;
        pool.put(h1::Idle::new(open), now);
        pool.put(h1::Idle::new(chatty), now);
        // A write that does not wait: the runtime does not turn meanwhile.
        let bytes = b"HTTP/1.1 200 OK\r\n";
        assert_eq!(chatty_peer.try_write(bytes).expect("write"), bytes.len());
        let chatty = pool.take(now, Check::Readiness).expect("looks idle");
        landed(&chatty.stream);
        pool.put(chatty, now);
        let taken = pool.take(now, Check::Socket).expect("the open one is left");
        assert_eq!(
            taken.stream.id(),
            open_id,
            "the out-of-step one was dropped"
        );
        assert!(pool.take(now, Check::Socket).is_none());
        assert_eq!(pool.take_discarded(Discard::UnexpectedBytes), 1);
        assert_eq!(pool.take_discarded(Discard::Closed), 0);
    }

    #[tokio::test]
    async fn a_thread_takes_back_only_the_connections_it_put() {
        let pool = pool_of(Lists::PerThread, 128);
        let now = Instant::now();
        let (ours, _our_peer) = h1::stream_pair().await;
        let ours_id = ours.id();
        let (theirs, _their_peer) = h1::stream_pair().await;
        let theirs_id = theirs.id();
        pool.put(h1::Idle::new(ours), now);
        std::thread::scope(|s| {
            let pool = &pool;
            let (put, was_put) = std::sync::mpsc::channel();
            let (go_on, told) = std::sync::mpsc::channel::<()>();
            let other = s.spawn(move || {
                assert!(pool.take(now, Check::Readiness).is_none(), "not its own");
                pool.put(h1::Idle::new(theirs), now);
                put.send(()).expect("send");
                told.recv().expect("told");
                pool.take(now, Check::Readiness).map(|c| c.stream.id())
            });
            was_put.recv().expect("put");
            assert_eq!(pool.prune(now), 2, "the sweep sees every thread's");
            let taken = pool.take(now, Check::Readiness).expect("its own");
            assert_eq!(taken.stream.id(), ours_id);
            assert!(pool.take(now, Check::Readiness).is_none());
            go_on.send(()).expect("send");
            assert_eq!(other.join().expect("no panic"), Some(theirs_id));
        });
    }

    #[tokio::test]
    async fn with_work_stealing_any_thread_takes_any_connection() {
        let pool = pool_of(Lists::for_runtime(true), 128);
        let now = Instant::now();
        let (conn, _peer) = h1::stream_pair().await;
        let id = conn.id();
        pool.put(h1::Idle::new(conn), now);
        let taken = std::thread::scope(|s| {
            s.spawn(|| pool.take(now, Check::Readiness).map(|c| c.stream.id()))
                .join()
                .expect("no panic")
        });
        assert_eq!(taken, Some(id));
        assert_eq!(Lists::for_runtime(false), Lists::PerThread);
    }

    #[tokio::test]
    async fn prune_closes_old_closed_and_out_of_step_connections() {
        use tokio::io::AsyncWriteExt;
        let pool = pool_of(Lists::PerThread, 128);
        let start = Instant::now();
        let (kept, _kept_peer) = h1::stream_pair().await;
        let (closed, closed_peer) = h1::stream_pair().await;
        let (chatty, mut chatty_peer) = h1::stream_pair().await;
        let (old, _old_peer) = h1::stream_pair().await;
        pool.put(h1::Idle::new(old), start);
        pool.put(h1::Idle::new(kept), start + Duration::from_secs(30));
        pool.put(h1::Idle::new(closed), start + Duration::from_secs(30));
        pool.put(h1::Idle::new(chatty), start + Duration::from_secs(30));
        drop(closed_peer);
        chatty_peer
            .write_all(b"HTTP/1.1 200 OK\r\n")
            .await
            .expect("write");
        let now = start + Duration::from_secs(61);
        // The close and the bytes travel over loopback; wait for them to land.
        let mut left = pool.prune(now);
        for _ in 0..1000 {
            if left == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            left = pool.prune(now);
        }
        assert_eq!(left, 1, "only the clean, young connection stays");
        assert!(pool.take(now, Check::Readiness).is_some());
        // Each closed one counted once, by its reason.
        let discarded = Discard::ALL.map(|why| pool.take_discarded(why));
        assert_eq!(
            discarded,
            [1, 1, 1, 0],
            "closed, unexpected bytes, expired, full"
        );
        assert_eq!(Discard::ALL.map(|why| pool.take_discarded(why)), [0; 4]);
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
            let req = request(http::Version::HTTP_11, &refs);
            let req = forward(&req, body).expect("valid");
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

        /// A response keeps exactly its end-to-end fields, in order and
        /// unchanged, whatever the case of their names: a field goes only
        /// when it is hop-by-hop, one of the proxy's own, named by a
        /// `Connection` value, or a length beside a transfer coding.
        #[test]
        fn a_response_keeps_exactly_its_end_to_end_fields(
            picks in proptest::collection::vec((0usize..15, 0usize..7), 0..12),
            switching in any::<bool>(),
        ) {
            const NAMES: [&str; 15] = [
                "Connection", "connection", "Keep-Alive", "x-hop", "X-Hop", "upgrade",
                "Transfer-Encoding", "content-length", "x-request-id",
                "X-Edgeroute-Region", "trailer", "Proxy-Connection", "set-cookie", "x-other",
                "TE",
            ];
            const CONNECTION: [&str; 7] = [
                "keep-alive", "close", "X-HOP, close", "content-length",
                "transfer-encoding", "Upgrade", "x-other, keep-alive",
            ];
            let fields: Vec<(&str, String)> = picks
                .iter()
                .enumerate()
                .map(|(i, (n, v))| {
                    let name = NAMES[*n];
                    let value = if name.eq_ignore_ascii_case("connection") {
                        CONNECTION[*v].to_owned()
                    } else {
                        format!("v{i}")
                    };
                    (name, value)
                })
                .collect();
            let status = if switching { 101 } else { 200 };
            let pairs: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let (out, _) = client_response(response(status, &pairs), None, &HeaderValue::from_static("id"));

            let named: Vec<String> = fields
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
                .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>())
                .collect();
            let coded = fields.iter().any(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"));
            let hop = |name: &str| {
                let name = name.to_ascii_lowercase();
                match name.as_str() {
                    "keep-alive" | "te" | "trailer" | "proxy-connection" | "x-request-id"
                    | "x-edgeroute-region" => true,
                    "connection" => !switching,
                    "upgrade" => !switching,
                    // A 101 has no body, so neither framing field.
                    "content-length" => coded || switching,
                    "transfer-encoding" => switching,
                    _ => named.contains(&name),
                }
            };
            let want: Vec<(String, String)> = fields
                .iter()
                .filter(|(n, _)| !hop(n))
                .map(|(n, v)| ((*n).to_owned(), v.clone()))
                .collect();
            let got: Vec<(String, String)> = out
                .fields
                .iter()
                .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), String::from_utf8_lossy(v).into_owned()))
                .collect();
            prop_assert_eq!(got, want);
        }

        /// The case of the client's field names changes nothing about what
        /// goes on: every rule (hop-by-hop, nominated, replaced, framing)
        /// matches a name whatever its case.
        #[test]
        fn the_case_of_a_request_s_names_changes_nothing(
            picks in proptest::collection::vec((0usize..14, any::<u8>()), 0..10),
            body in any::<bool>(),
        ) {
            const FIELDS: [(&str, &str); 14] = [
                ("connection", "x-hop"), ("x-hop", "1"), ("keep-alive", "5"), ("te", "trailers"),
                ("transfer-encoding", "chunked"), ("content-length", "4"), ("host", "a.example"),
                ("x-request-id", "theirs"), ("x-forwarded-for", "192.0.2.1"),
                ("x-forwarded-proto", "https"), ("x-edgeroute-route", "write"), ("expect", "100-continue"),
                ("accept", "*/*"), ("upgrade", "h2c"),
            ];
            // Each name in a mix of cases (bit i of the mask: letter i upper).
            let mixed: Vec<(String, &str)> = picks
                .iter()
                .map(|(i, mask)| {
                    let (name, value) = FIELDS[*i];
                    let name = name
                        .chars()
                        .enumerate()
                        .map(|(j, c)| if mask >> (j % 8) & 1 == 1 { c.to_ascii_uppercase() } else { c })
                        .collect();
                    (name, value)
                })
                .collect();
            let lower: Vec<(&str, &str)> = picks.iter().map(|(i, _)| FIELDS[*i]).collect();
            let pairs: Vec<(&str, &str)> = mixed.iter().map(|(n, v)| (n.as_str(), *v)).collect();
            let req = request(http::Version::HTTP_11, &lower);
            let as_sent = forward_fields(&req, &Fields::parse(&pairs), body);
            let as_lower = forward_fields(&req, &Fields::parse(&lower), body);
            match (as_sent, as_lower) {
                (Ok(a), Ok(b)) => {
                    prop_assert_eq!(a.line, b.line);
                    prop_assert_eq!(a.headers, b.headers);
                }
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                (a, b) => prop_assert!(false, "{:?} against {:?}", a.err(), b.err()),
            }
        }
    }
}

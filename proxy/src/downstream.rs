//! HTTP/1.1 with a client (RFC 9112): one request after another on one
//! connection, the proxy's own parser and writer.
//!
//! The request head is parsed straight into a list of fields whose names
//! and values are places in the bytes read; the read buffer stays with the
//! connection from one request to the next. The body's framing is decided
//! strictly, because the head goes on to a backend that must read the same
//! request boundaries the proxy did: `Transfer-Encoding` other than a lone
//! `chunked`, beside a `Content-Length`, or from an HTTP/1.0 client, is
//! refused, and so are differing lengths and repeated `Host` fields. The
//! response head goes out with the first body bytes, in one write.

use crate::fields::{Fields, InvalidField};
use crate::h1::{self, Body, Chunk, Direction, Peer};
use crate::kernel::Socket;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, StatusCode, Uri, Version};
use pingora_core::protocols::Stream;
use pingora_core::protocols::http::ServerSession;
use pingora_error::{Error, ErrorType};
use pingora_http::ResponseHeader;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type BError = Box<Error>;

/// Largest request head accepted; larger gets a 431.
pub const MAX_HEAD: usize = h1::MAX_HEAD;
/// Most fields in a request head; more gets a 431.
pub const MAX_FIELDS: usize = h1::MAX_FIELDS;
/// Request body bytes kept for a retry; a longer body cannot be sent again.
pub const RETRY_BUFFER: usize = 64 * 1024;

/// A request the proxy refuses to read: the status says why (400, 431, 501).
fn refused(status: u16, why: impl Into<String>) -> BError {
    Error::explain(ErrorType::HTTPStatus(status), why.into()).into_down()
}

/// What a request line's HTTP version is, when the parser refused the
/// head.
enum LineVersion {
    /// `HTTP/1.0` or `HTTP/1.1`: the trouble is elsewhere.
    Served,
    /// `HTTP/1.2` to `HTTP/1.9`, served as HTTP/1.1; where its minor digit is.
    Later(usize),
    /// `HTTP/0.x`, or `HTTP/2.x` and above: the major version.
    Major(u8),
    /// No version in HTTP's form (`HTTP/` with a digit, a dot, a digit).
    Malformed,
    /// The request line is not whole yet.
    Partial,
}

fn request_version(data: &[u8]) -> LineVersion {
    let Some(end) = memchr::memchr(b'\n', data) else {
        return LineVersion::Partial;
    };
    let line = &data[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let at = memchr::memrchr(b' ', line).map_or(0, |sp| sp + 1);
    match &line[at..] {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'0' | b'1'] => LineVersion::Served,
        _ if h1::later_minor(&data[at..]) => LineVersion::Later(at + 7),
        [
            b'H',
            b'T',
            b'T',
            b'P',
            b'/',
            major @ b'0'..=b'9',
            b'.',
            b'0'..=b'9',
        ] => LineVersion::Major(major - b'0'),
        _ => LineVersion::Malformed,
    }
}

/// A 400 whose message says `why`.
pub(crate) fn bad_request(why: impl Into<String>) -> BError {
    refused(400, why)
}

/// How the response body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    /// No response head yet.
    Head,
    /// The response has no body (a `HEAD` request, `204`, `304`).
    Empty,
    Length(u64),
    Chunked,
    /// Delimited by the end of the connection.
    UntilClose,
    /// After a `101`: raw bytes.
    Raw,
    /// The response is complete.
    Done,
}

/// One client connection, one request at a time.
pub struct Session {
    stream: Stream,
    /// Bytes read and not yet consumed (a pipelined request may wait here).
    buf: BytesMut,
    /// How far `buf` was searched for the end of a request head.
    head_scan: usize,
    /// How long the client may keep the proxy waiting: for a request, for
    /// body bytes, to take response bytes.
    idle: Duration,
    /// The timer bounding each read and write by those limits.
    deadline: h1::Deadline,
    /// When the connection fell idle after its last response, if known
    /// ([`Self::count_idle_from`]).
    idle_since: Option<tokio::time::Instant>,
    /// The client's address as text (for `x-forwarded-for`), formatted once.
    client_ip: Option<HeaderValue>,
    tls: bool,
    /// The request line's method, target and version (its fields are in
    /// `fields`).
    req: Parts,
    fields: Fields,
    /// The request target as received (forwarded byte for byte).
    raw_target: Bytes,
    /// The head was read whole (line and fields), whether or not it was
    /// then refused.
    head_read: bool,
    body: Body,
    body_empty: bool,
    keepalive: bool,
    retry: Option<BytesMut>,
    retry_truncated: bool,
    status: Option<StatusCode>,
    out: Out,
    /// The response head, until it goes out with the first body bytes.
    pending: Vec<u8>,
    /// The response's body bytes written (chunk framing not counted).
    body_sent: u64,
    /// The connection ends with a reset, not an end of stream (see
    /// [`Self::end_with_reset`]).
    reset: bool,
}

impl Session {
    pub fn new(stream: Stream, idle: Duration) -> Self {
        let tls = stream.get_ssl_digest().is_some();
        let client_ip = stream.get_socket_digest().and_then(|d| {
            d.peer_addr()
                .and_then(|a| a.as_inet())
                .map(|a| ip_text(a.ip()))
        });
        Session {
            stream,
            buf: BytesMut::new(),
            head_scan: 0,
            idle,
            deadline: h1::Deadline::default(),
            idle_since: None,
            client_ip,
            tls,
            req: http::Request::new(()).into_parts().0,
            fields: Fields::default(),
            raw_target: Bytes::new(),
            head_read: false,
            body: Body::Done,
            body_empty: true,
            keepalive: false,
            retry: None,
            retry_truncated: false,
            status: None,
            out: Out::Head,
            pending: Vec::new(),
            body_sent: 0,
            reset: false,
        }
    }

    pub fn request(&self) -> &Parts {
        &self.req
    }

    /// The request's fields, in the order received.
    pub fn fields(&self) -> &Fields {
        &self.fields
    }

    pub fn raw_target(&self) -> &[u8] {
        &self.raw_target
    }

    pub fn client_ip(&self) -> Option<&HeaderValue> {
        self.client_ip.as_ref()
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Reads the next request head. `Ok(false)`: the client closed the
    /// connection between requests. An error with an `HTTPStatus` type is a
    /// request to answer with that status before closing; any other error
    /// ends the connection silently.
    pub async fn read_request(&mut self) -> Result<bool, BError> {
        // Only the first wait for the head counts from the time given.
        let mut since = self.idle_since.take();
        // Once a head has begun, the whole of it is due within the idle
        // limit of its start, not within that of each byte: a client that
        // trickles its head cannot hold the connection for long.
        // Empty lines before it count: they are dropped as they come.
        let mut began = None;
        let mut heard = !self.buf.is_empty();
        self.start_request();
        loop {
            if self.take_request()? {
                return Ok(true);
            }
            if heard && began.is_none() {
                began = Some(tokio::time::Instant::now());
            }
            let read = self.fill_since(since.take().or(began)).await?;
            heard = true;
            if read == 0 {
                if self.buf.iter().all(|b| matches!(b, b'\r' | b'\n')) {
                    return Ok(false);
                }
                return Err(Error::explain(
                    ErrorType::ConnectionClosed,
                    "the client closed the connection in the middle of a request head",
                )
                .into_down());
            }
        }
    }

    /// Forgets the previous request; its fields' bytes are released, so the
    /// read buffer's memory can serve the next one.
    fn start_request(&mut self) {
        // A head that cannot be read is answered as to a plain HTTP/1.1 GET.
        self.req.method = Method::GET;
        self.req.version = Version::HTTP_11;
        self.fields.clear();
        self.req.uri = Uri::default();
        self.req.extensions.clear();
        self.raw_target = Bytes::new();
        self.head_read = false;
        self.body = Body::Done;
        self.body_empty = true;
        self.keepalive = false;
        self.retry = None;
        self.retry_truncated = false;
        self.status = None;
        self.out = Out::Head;
        self.pending.clear();
        self.body_sent = 0;
    }

    fn fill(&mut self) -> impl Future<Output = Result<usize, BError>> {
        self.fill_since(None)
    }

    /// [`Self::fill`], its limit counted from `since` if given.
    async fn fill_since(&mut self, since: Option<tokio::time::Instant>) -> Result<usize, BError> {
        if self.buf.capacity() - self.buf.len() < h1::READ_ROOM / 4 {
            self.buf.reserve(h1::READ_ROOM);
        }
        let read = self.stream.read_buf(&mut self.buf);
        self.deadline
            .bound_since(Some(self.idle), since, read, Direction::Read, Peer::Client)
            .await
    }

    /// The next request is due within the idle limit of `at` (the end of
    /// the last response, already read from the clock) rather than of when
    /// it is first waited for.
    pub fn count_idle_from(&mut self, at: std::time::Instant) {
        self.idle_since = Some(tokio::time::Instant::from_std(at));
    }

    /// Parses a request head from the bytes read, if they hold a whole one.
    fn take_request(&mut self) -> Result<bool, BError> {
        // Empty lines before a request line are allowed, and dropped
        // (RFC 9112 §2.2).
        loop {
            let blank = match &self.buf[..] {
                [b'\r', b'\n', ..] => 2,
                [b'\n', ..] => 1,
                _ => break,
            };
            self.buf.advance(blank);
            self.head_scan = 0;
        }
        if let Some(whole) = h1::quick_head(&mut self.buf, self.head_scan) {
            let parsed = self.parse(&whole);
            let len = parsed.as_ref().ok().copied().flatten();
            // The bytes go back even when the head is refused.
            h1::after_quick(&mut self.buf, whole, len);
            if parsed?.is_some() {
                return self.frame_request().map(|()| true);
            }
        }
        let from = self.head_scan.saturating_sub(2);
        self.head_scan = self.buf.len();
        let Some(end) = h1::head_end(&self.buf, from).filter(|end| *end <= MAX_HEAD) else {
            if self.buf.len() >= MAX_HEAD {
                return Err(refused(
                    431,
                    format!("the request head is over {MAX_HEAD} bytes"),
                ));
            }
            return Ok(false);
        };
        // What follows the head (the body's start, or the next request)
        // stays where it is.
        let data = self.buf.split_to(end).freeze();
        self.head_scan = 0;
        match self.parse(&data)? {
            Some(len) if len == end => {}
            _ => {
                return Err(bad_request(
                    "the request head does not end where its empty line is",
                ));
            }
        }
        self.frame_request()?;
        Ok(true)
    }

    /// The body's framing and the connection's fate, from the head just read.
    fn frame_request(&mut self) -> Result<(), BError> {
        let (body, keepalive, host) = request_framing(self.req.version, &mut self.fields)?;
        // RFC 9112 §3.2; a target in absolute form names its host itself.
        if host != Host::Named
            && self.req.version == Version::HTTP_11
            && self.req.uri.authority().is_none()
        {
            return Err(bad_request(if host == Host::Missing {
                "an HTTP/1.1 request must carry a Host field"
            } else {
                "an HTTP/1.1 request's Host field must name a host (an http URI's host is never empty, RFC 9110 §4.2.1)"
            }));
        }
        self.body = body;
        self.body_empty = body == Body::Done;
        self.keepalive = keepalive;
        Ok(())
    }

    /// Fills the request from the head in `data`; its length, or `None`
    /// if the head is not whole.
    fn parse(&mut self, data: &Bytes) -> Result<Option<usize>, BError> {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut req,
            data,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(refused(
                    431,
                    format!("the request has more than {MAX_FIELDS} fields"),
                ));
            }
            // HTTP/2's connection preface on a listener without h2c.
            Err(httparse::Error::Version) if data.starts_with(b"PRI * HTTP/2.0") && self.tls => {
                return Err(bad_request(
                    "HTTP/2 over TLS is chosen in the TLS handshake: the client must offer \
                     \"h2\" by ALPN (this connection's handshake settled on HTTP/1.1)",
                ));
            }
            Err(httparse::Error::Version) if data.starts_with(b"PRI * HTTP/2.0") => {
                return Err(bad_request(
                    "HTTP/2 without TLS (prior knowledge) is not served on this listener: \
                     set h2c = true on it, or speak HTTP/2 over TLS",
                ));
            }
            Err(e @ (httparse::Error::Version | httparse::Error::NewLine)) => {
                return match request_version(data) {
                    LineVersion::Later(at) => self.parse(&h1::as_http11(data, at)),
                    LineVersion::Major(major) => {
                        Err(refused(505, format!("the request line names HTTP/{major}")))
                    }
                    LineVersion::Partial => Ok(None),
                    LineVersion::Malformed => {
                        Err(bad_request("the request line's HTTP version is malformed"))
                    }
                    LineVersion::Served => {
                        Err(bad_request(format!("the request head is malformed: {e}")))
                    }
                };
            }
            Err(e) => return Err(bad_request(format!("the request head is malformed: {e}"))),
        };
        let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version)
        else {
            return Ok(None);
        };
        self.req.method = Method::from_bytes(method.as_bytes())
            .map_err(|_| bad_request(format!("{method:?} is no method")))?;
        self.req.version = if version == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        if target.contains('#') {
            return Err(bad_request(
                "the request target holds a fragment (#...), which is not sent in a request",
            ));
        }
        self.raw_target = data.slice_ref(target.as_bytes());
        self.req.uri = parse_target(&self.raw_target)?;
        // The last request's list serves this one: no allocation per request.
        self.fields.reread_from(data.clone(), req.headers.len() + 1);
        for field in req.headers.iter() {
            // The parser checked both: a name is a token, a value holds no
            // control bytes but tab.
            self.fields
                .push_read(field.name.as_bytes(), field.value)
                .map_err(|_| bad_request("the request head could not be read"))?;
        }
        self.head_read = true;
        Ok(Some(len))
    }

    /// Whether the last head was read whole (its line and fields), though
    /// it may then have been refused (no `Host`, two lengths, ...).
    pub fn head_read(&self) -> bool {
        self.head_read
    }

    pub fn is_body_done(&self) -> bool {
        self.body == Body::Done
    }

    pub fn is_body_empty(&self) -> bool {
        self.body_empty
    }

    /// Keeps the body read from here on (up to [`RETRY_BUFFER`] bytes), so
    /// that the request can be sent again.
    pub fn enable_retry_buffering(&mut self) {
        if self.retry.is_none() {
            self.retry = Some(BytesMut::new());
        }
    }

    /// The body read so far, if all of it was kept.
    pub fn retry_buffer(&self) -> Option<Bytes> {
        self.retry
            .as_ref()
            .filter(|_| !self.retry_truncated)
            .map(|b| Bytes::copy_from_slice(b))
    }

    pub fn retry_buffer_truncated(&self) -> bool {
        self.retry_truncated
    }

    /// The next piece of the request body; `None` after its end. (After a
    /// `101`, [`Self::tunnel`] takes the connection's bytes.)
    pub async fn read_body(&mut self) -> Result<Option<Bytes>, BError> {
        let data = loop {
            let step = self
                .body
                .step(&mut self.buf)
                .map_err(|why| bad_request(format!("the chunked body is malformed: {why}")))?;
            if let Some(next) = step {
                break next;
            }
            if self.fill().await? == 0 {
                self.body.at_close().map_err(|cut| {
                    Error::explain(
                        ErrorType::ConnectionClosed,
                        format!("the client closed the connection {cut}"),
                    )
                    .into_down()
                })?;
            }
        };
        if let (Some(kept), Some(data)) = (self.retry.as_mut(), data.as_ref()) {
            if kept.len() + data.len() > RETRY_BUFFER {
                self.retry_truncated = true;
            } else if !self.retry_truncated {
                kept.extend_from_slice(data);
            }
        }
        Ok(data)
    }

    /// Invites the body of a request that expects `100-continue`.
    pub async fn write_continue(&mut self) -> Result<(), BError> {
        self.write(&mut &b"HTTP/1.1 100 Continue\r\n\r\n"[..]).await
    }

    /// Passes an interim (1xx) answer on, before the final head, to an
    /// HTTP/1.1 client (HTTP/1.0 knows none, RFC 9110 §15.2).
    pub async fn write_interim(&mut self, head: &h1::ResponseHead) -> Result<(), BError> {
        if self.req.version != Version::HTTP_11 || self.out != Out::Head || !self.pending.is_empty()
        {
            return Ok(());
        }
        let mut out = Vec::new();
        encode_head(&mut out, head, &[]);
        self.write(&mut &out[..]).await
    }

    /// The connection ends after this response.
    pub fn close_after(&mut self) {
        self.keepalive = false;
    }

    /// The status of the response head sent, if any. A head still held
    /// back (waiting for the first body bytes) has not begun the response:
    /// another may replace it.
    pub fn response_status(&self) -> Option<StatusCode> {
        self.status.filter(|_| self.pending.is_empty())
    }

    /// The response's body bytes written so far.
    pub fn body_sent(&self) -> u64 {
        self.body_sent
    }

    /// The connection is to end with a reset when it is closed: what it
    /// carried was broken off (a tunnel whose backend side failed), and an
    /// end of stream would tell the client it ended in good order.
    pub fn end_with_reset(&mut self) {
        self.reset = true;
    }

    /// Whether a `101` was written: the connection now carries raw bytes.
    pub fn was_upgraded(&self) -> bool {
        self.status == Some(StatusCode::SWITCHING_PROTOCOLS)
    }

    /// After a `101`: the client's bytes already read past the request
    /// head, and its stream, to be carried raw from here on.
    pub fn tunnel(&mut self) -> (Bytes, &mut Stream) {
        (self.buf.split().freeze(), &mut self.stream)
    }

    /// Takes the response head. It goes out with the first body bytes, with
    /// [`Self::flush`], or at once for a `101`. The body is framed as the
    /// head's framing or its fields say; a body with neither length nor
    /// chunks goes chunked to an HTTP/1.1 client and to the connection's end
    /// to an HTTP/1.0 one. The head carries no `Connection` field (unless a
    /// `101`): the session says whether this connection stays open.
    pub async fn write_head(
        &mut self,
        mut head: h1::ResponseHead,
        added: &[(HeaderName, HeaderValue)],
    ) -> Result<(), BError> {
        if self.out != Out::Head && self.pending.is_empty() {
            return Err(Error::explain(
                ErrorType::InternalError,
                "a second response head for one request",
            ));
        }
        let status = head.status;
        let fields = &mut head.fields;
        let http10 = self.req.version == Version::HTTP_10;
        self.out = if status == StatusCode::SWITCHING_PROTOCOLS {
            self.keepalive = false;
            // What the client sends from here on is the new protocol's, and
            // is not kept for a retry.
            self.body = Body::UntilClose;
            self.retry = None;
            Out::Raw
        } else if h1::no_body(self.req.method == Method::HEAD, status) || status.is_informational()
        {
            // No body follows. HTTP/1.0 knows no transfer codings, and a
            // 204 or an interim answer may name none (RFC 9112 §6.1).
            if http10 || status == StatusCode::NO_CONTENT || status.is_informational() {
                fields.remove("transfer-encoding");
            }
            Out::Empty
        } else if let Some(framing) = head
            .framing
            .filter(|f| *f != h1::Framing::Chunked || !http10)
        {
            // Decided from the backend's fields already.
            match framing {
                h1::Framing::Length(0) => Out::Done,
                h1::Framing::Length(n) => Out::Length(n),
                _ => Out::Chunked,
            }
        } else if let Some(te) = fields.get("transfer-encoding") {
            if http10 && coded(fields) {
                // HTTP/1.0 knows no transfer codings: the client could
                // not be told how the body is coded.
                return Err(Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    "the backend's answer has a transfer coding other than chunked, which an HTTP/1.0 client cannot be sent",
                )
                .into_up());
            }
            let chunked = std::str::from_utf8(te)
                .ok()
                .and_then(|t| h1::list_items(t).last())
                .is_some_and(|c| c.eq_ignore_ascii_case("chunked"));
            if chunked && !http10 {
                Out::Chunked
            } else {
                if chunked {
                    // HTTP/1.0 knows no chunks: the body runs to the close.
                    fields.remove("transfer-encoding");
                }
                self.keepalive = false;
                Out::UntilClose
            }
        } else if let Some(n) = h1::declared_length(fields).map_err(|_| {
            Error::explain(
                ErrorType::InternalError,
                "the response's Content-Length is not one number",
            )
        })? {
            if n == 0 { Out::Done } else { Out::Length(n) }
        } else if http10 {
            self.keepalive = false;
            Out::UntilClose
        } else {
            fields.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
            Out::Chunked
        };
        if status != StatusCode::SWITCHING_PROTOCOLS {
            debug_assert!(
                !fields.contains("connection"),
                "a response head comes without the fields of another connection"
            );
            if !self.keepalive {
                fields.push(header::CONNECTION, HeaderValue::from_static("close"));
            } else if http10 {
                fields.push(header::CONNECTION, HeaderValue::from_static("keep-alive"));
            }
        }
        self.status = Some(status);
        encode_head(&mut self.pending, &head, added);
        if self.out == Out::Raw {
            return self.flush().await;
        }
        Ok(())
    }

    /// Sends the response head if it has not gone yet.
    pub async fn flush(&mut self) -> Result<(), BError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.write_body(Bytes::new(), false).await
    }

    /// Sends a piece of the response body, framed (with the head, if it has
    /// not gone yet); `end`: it is the last. (After a `101`, only the head
    /// goes this way; [`Self::tunnel`] takes the connection.)
    pub async fn write_body(&mut self, data: Bytes, end: bool) -> Result<(), BError> {
        let mut size = [0u8; 18];
        let (prefix, suffix): (&[u8], &[u8]) = match self.out {
            Out::Head => {
                return Err(Error::explain(
                    ErrorType::InternalError,
                    "a response body before its head",
                ));
            }
            Out::Done if !data.is_empty() => {
                return Err(Error::explain(
                    ErrorType::InternalError,
                    "response body bytes beyond its end",
                ));
            }
            Out::Length(left) if data.len() as u64 > left => {
                return Err(Error::explain(
                    ErrorType::InternalError,
                    "response body bytes beyond its Content-Length",
                ));
            }
            Out::Chunked if !data.is_empty() => {
                let line = h1::chunk_size_line(&mut size, data.len());
                (line, if end { b"\r\n0\r\n\r\n" } else { b"\r\n" })
            }
            Out::Chunked if end => (b"0\r\n\r\n", b""),
            _ => (b"", b""),
        };
        let data = if self.out == Out::Empty {
            Bytes::new()
        } else {
            data
        };
        let mut head = std::mem::take(&mut self.pending);
        let mut out = h1::append_small(&mut head, [prefix, &data, suffix]);
        let sent = if out.has_remaining() {
            self.write(&mut out).await
        } else {
            Ok(())
        };
        self.pending = head;
        self.pending.clear();
        sent?;
        self.body_sent += data.len() as u64;
        if let Out::Length(left) = self.out {
            let left = left - data.len() as u64;
            self.out = if left == 0 {
                Out::Done
            } else {
                Out::Length(left)
            };
        }
        if end {
            match self.out {
                Out::Length(left) => {
                    self.keepalive = false;
                    return Err(Error::explain(
                        ErrorType::InternalError,
                        format!("the response ended {left} bytes before its Content-Length"),
                    ));
                }
                Out::UntilClose => {
                    self.deadline
                        .bound(
                            Some(self.idle),
                            self.stream.shutdown(),
                            Direction::Write,
                            Peer::Client,
                        )
                        .await?;
                }
                _ => {}
            }
            self.out = Out::Done;
        }
        Ok(())
    }

    /// Writes all of `out` at once, within the client's idle limit.
    async fn write(&mut self, out: &mut impl Buf) -> Result<(), BError> {
        self.deadline
            .bound(
                Some(self.idle),
                write_all_buf(&mut self.stream, out),
                Direction::Write,
                Peer::Client,
            )
            .await
    }

    /// Whether the connection may carry another request: the response is
    /// complete, the request's body was read to its end, and neither side
    /// asked to close.
    pub fn reusable(&self) -> bool {
        // (A `101` ends keep-alive.)
        self.keepalive && self.out == Out::Done && self.body == Body::Done
    }

    /// Ends the connection; errors do not matter any more. If the
    /// client's body was not read to its end, what it still sends is read
    /// and dropped for a while after the proxy's end is sent: closing with
    /// unread bytes would reset the connection and could destroy the
    /// answer before the client reads it.
    /// `unread`: the client may still be sending (its head was refused).
    /// Returns how many bytes the client sent that were read and dropped.
    pub async fn close(mut self, unread: bool) -> u64 {
        if self.out == Out::UntilClose || self.reset {
            // A body delimited by the connection's end was cut short (a
            // backend failed in its middle), or a tunnel broken off: an end
            // of stream would pass what was sent off as all of it, so the
            // client gets a reset.
            if let Some(socket) = Socket::of(&self.stream) {
                socket.reset_on_close();
            }
            return 0;
        }
        let limit = Some(LINGER_READ);
        let ended = self
            .deadline
            .bound(
                limit,
                self.stream.shutdown(),
                Direction::Write,
                Peer::Client,
            )
            .await;
        if ended.is_err() || (!unread && matches!(self.body, Body::Done | Body::UntilClose)) {
            return 0;
        }
        let until = tokio::time::Instant::now() + LINGER;
        let mut sink = [0u8; 16 * 1024];
        let mut dropped = self.buf.len() as u64;
        while tokio::time::Instant::now() < until {
            match self
                .deadline
                .bound(
                    limit,
                    self.stream.read(&mut sink),
                    Direction::Read,
                    Peer::Client,
                )
                .await
            {
                Ok(n) if n > 0 => dropped += n as u64,
                _ => break,
            }
        }
        if dropped > 0 {
            tracing::debug!(
                bytes = dropped,
                "dropped what the client sent after its answer"
            );
        }
        dropped
    }
}

/// How long a closing connection keeps reading what the client still sends.
const LINGER: Duration = Duration::from_secs(5);
/// The longest wait for the client's next bytes while lingering.
const LINGER_READ: Duration = Duration::from_secs(1);

/// An address as a field value.
fn ip_text(ip: IpAddr) -> HeaderValue {
    // An address is always a valid field value.
    HeaderValue::try_from(ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Writes all of `out` and flushes it.
async fn write_all_buf(stream: &mut Stream, out: &mut impl Buf) -> std::io::Result<()> {
    h1::write_all(stream, out).await?;
    stream.flush().await
}

/// A `Host` field's value: a host and port as a URI has them, or empty.
/// A port may be empty too (`host:`, RFC 3986's `port = *DIGIT`): the
/// scheme's default (RFC 9110 §4.2.3).
fn check_host(value: &[u8]) -> Result<(), BError> {
    let authority = |text: &str| {
        let text = text.strip_suffix(':').unwrap_or(text);
        edgeroute_config::is_authority(text)
    };
    if value.is_empty() || std::str::from_utf8(value).is_ok_and(authority) {
        return Ok(());
    }
    Err(bad_request(
        "the request's Host field is not a host name or address with an optional port",
    ))
}

/// Checks what pingora-core's HTTP/2 session leaves to the application in
/// a request it accepted (it refuses a second `Host`, user information,
/// and a `Host` that differs from `:authority`): the `Host` field's value,
/// and the number of fields, as an HTTP/1 request's. `Cookie` crumbs count
/// as the one field they become for the backend (RFC 9113 §8.2.3).
/// `pseudo`: the size of its pseudo-header fields ([`pseudo_size`]).
pub fn check_h2_request(fields: &Fields, pseudo: usize) -> Result<(), BError> {
    let mut crumbs = 0;
    // The header list's size as HTTP/2 counts it (RFC 9113 §6.5.2: each
    // field's name and value, and 32), pseudo-header fields too.
    let mut size = pseudo;
    for (name, value) in fields.iter() {
        size += name.len() + value.len() + 32;
        if name.eq_ignore_ascii_case(b"host") {
            check_host(value)?;
        } else if name.eq_ignore_ascii_case(b"cookie") {
            crumbs += 1;
        }
    }
    if size > MAX_HEAD {
        return Err(refused(
            431,
            format!("the request's header list is over {MAX_HEAD} bytes (as HTTP/2 counts it)"),
        ));
    }
    if fields.len() - crumbs + usize::from(crumbs > 0) > MAX_FIELDS {
        return Err(refused(
            431,
            format!("the request has more than {MAX_FIELDS} fields"),
        ));
    }
    Ok(())
}

/// The size HTTP/2 counts for a request's pseudo-header fields (`:method`,
/// `:scheme`, `:path`, `:authority`): each name and value, and 32.
pub fn pseudo_size(req: &http::request::Parts) -> usize {
    let field = |name: &str, value: &str| name.len() + value.len() + 32;
    field(":method", req.method.as_str())
        + req.uri.scheme_str().map_or(0, |v| field(":scheme", v))
        + req
            .uri
            .path_and_query()
            .map_or(0, |v| field(":path", v.as_str()))
        + req
            .uri
            .authority()
            .map_or(0, |v| field(":authority", v.as_str()))
}

/// What a request's `Host` field says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Host {
    Missing,
    /// Present and empty (an HTTP/1.0 client's way of naming none).
    Empty,
    Named,
}

/// A request body's framing (RFC 9112 §6.3), whether the connection may
/// carry another request after it, and whether the request names its
/// `Host`. Only what every HTTP/1.1 parser reads alike is accepted: a lone
/// `chunked` coding from an HTTP/1.1 client and no length beside it, or one
/// length (repeated values are left as one), and at most one `Host`, whose
/// value is a host and port as a URI has them (or empty).
fn request_framing(version: Version, fields: &mut Fields) -> Result<(Body, bool, Host), BError> {
    // One pass over the fields instead of a lookup for each name.
    let (mut hosts, mut coded, mut length) = (0, false, false);
    let mut named = false;
    let mut options = h1::ConnectionOptions::default();
    for (name, value) in fields.iter() {
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            check_host(value)?;
            named = !value.is_empty();
        } else if name.eq_ignore_ascii_case(b"connection") {
            options.read(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            coded = true;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            length = true;
        }
    }
    if hosts > 1 {
        return Err(bad_request("the request has more than one Host field"));
    }
    let keepalive = options.persist(version);
    let host = match hosts {
        0 => Host::Missing,
        _ if named => Host::Named,
        _ => Host::Empty,
    };
    if !coded {
        let declared = if length {
            content_length(fields)?
        } else {
            None
        };
        let body = match declared {
            Some(0) | None => Body::Done,
            Some(n) => Body::Length(n),
        };
        return Ok((body, keepalive, host));
    }
    if version == Version::HTTP_10 {
        return Err(bad_request(
            "an HTTP/1.0 request may not carry Transfer-Encoding",
        ));
    }
    if length {
        return Err(bad_request(
            "the request carries both Transfer-Encoding and Content-Length",
        ));
    }
    let codings: Vec<&str> = fields
        .get_all("transfer-encoding")
        .flat_map(|v| h1::list_items(std::str::from_utf8(v).unwrap_or("\0")))
        .collect();
    let chunked = |c: &&str| c.eq_ignore_ascii_case("chunked");
    // RFC 9112 §6.3: a request whose codings do not end with chunked has
    // no length that can be told; chunked twice is no framing (§6.1).
    if !codings.last().is_some_and(chunked) {
        return Err(bad_request(
            "the request's Transfer-Encoding does not end with chunked, so its body's length cannot be told",
        ));
    }
    if codings.iter().filter(|c| chunked(c)).count() > 1 {
        return Err(bad_request(
            "the request's Transfer-Encoding applies chunked more than once",
        ));
    }
    if codings.len() > 1 {
        return Err(refused(
            501,
            "the request's Transfer-Encoding is not a lone chunked",
        ));
    }
    Ok((Body::Chunked(Chunk::Size), keepalive, host))
}

/// The length a request's `Content-Length` fields give (see
/// [`h1::declared_length`]).
fn content_length(fields: &mut Fields) -> Result<Option<u64>, BError> {
    match h1::declared_length(fields) {
        Ok(length) => Ok(length),
        Err(h1::BadLength::NotANumber) => {
            Err(bad_request("the request's Content-Length is not a number"))
        }
        Err(h1::BadLength::Differ) => Err(bad_request(
            "the request carries two different Content-Length values",
        )),
    }
}

/// The request target as a URI: as received when it is one, else with the
/// bytes a URI may not hold percent-encoded (the target still goes to the
/// backend as received).
fn parse_target(raw: &Bytes) -> Result<Uri, BError> {
    if let Ok(uri) = Uri::from_maybe_shared(raw.clone()) {
        return Ok(uri);
    }
    let mut escaped = String::with_capacity(raw.len() * 3);
    for &b in raw.iter() {
        if b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=%".contains(&b) {
            escaped.push(char::from(b));
        } else {
            escaped.push_str(&format!("%{b:02X}"));
        }
    }
    escaped.parse().map_err(|_| {
        bad_request(format!(
            "the request target {:?} is no URI",
            String::from_utf8_lossy(raw)
        ))
    })
}

/// The status line and fields of a response, as HTTP/1.1 puts them.
/// `added`: the proxy's own fields, after the backend's.
fn encode_head(out: &mut Vec<u8>, head: &h1::ResponseHead, added: &[(HeaderName, HeaderValue)]) {
    out.clear();
    out.reserve(64 + head.fields.len() * 48);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(head.status.as_str().as_bytes());
    out.push(b' ');
    let reason = head
        .reason
        .as_deref()
        .or_else(|| head.status.canonical_reason())
        .unwrap_or("");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let added = added
        .iter()
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
    for (name, value) in head.fields.iter().chain(added) {
        h1::put_field(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

/// The client's side of one request: the proxy's own HTTP/1.x session, or
/// Pingora's HTTP/2 stream.
pub enum Client<'a> {
    H1(&'a mut Session),
    /// The stream, its request's fields as a list, how long the client
    /// may keep a read of its body or a write of the answer waiting, and
    /// its body's account.
    H2(&'a mut ServerSession, Fields, Duration, H2Body),
}

/// An HTTP/2 request body's declared length, and the bytes that complete
/// it while they wait for the stream's end (see [`Client::read_body`]):
/// kept here, so that a read given up on (by a `select!`) loses none.
pub struct H2Body {
    declared: Option<u64>,
    held: Option<Bytes>,
}

impl<'a> Client<'a> {
    /// An HTTP/2 stream whose request head has been read; `idle` as
    /// `timeouts.client_idle`.
    pub fn h2(session: &'a mut ServerSession, idle: Duration) -> Self {
        let mut fields = Fields::from_map(&session.req_header().headers);
        let declared = h1::declared_length(&mut fields).ok().flatten();
        let body = H2Body {
            declared,
            held: None,
        };
        Client::H2(session, fields, idle, body)
    }
}

/// Reads an HTTP/2 stream whose request has all the body it declared on
/// to its end: DATA past that is malformed (RFC 9113 §8.1.1; the protocol
/// library resets the stream on it, first).
async fn to_stream_end(s: &mut ServerSession, idle: Duration) -> Result<(), BError> {
    loop {
        match within_idle(idle, Direction::Read, s.read_request_body()).await? {
            None => return Ok(()),
            Some(more) if more.is_empty() => {}
            Some(_) => {
                return Err(bad_request(
                    "the HTTP/2 stream sent more body than its Content-Length",
                ));
            }
        }
    }
}

/// `op`, or the client's timeout error if it has not completed within
/// `idle` (an HTTP/2 stream's waits; an HTTP/1 session keeps its own
/// timer).
async fn within_idle<T>(
    idle: Duration,
    dir: Direction,
    op: impl Future<Output = Result<T, BError>>,
) -> Result<T, BError> {
    match tokio::time::timeout(idle, op).await {
        Ok(done) => done.map_err(Error::into_down),
        Err(_) => Err(h1::timed_out(dir, Peer::Client)),
    }
}

impl Client<'_> {
    /// `op`, unless the client gives up on the request first: an HTTP/2
    /// stream its client reset (or whose connection failed) ends the wait
    /// with the error of a client that left, and whatever `op` was doing
    /// for it (a connect, a wait for the backend's answer) is dropped. An
    /// HTTP/1 client that leaves is seen at the next read or write.
    pub async fn unless_gone<T>(
        &mut self,
        op: impl Future<Output = Result<T, BError>>,
    ) -> Result<T, BError> {
        let Client::H2(ServerSession::H2(stream), ..) = self else {
            return op.await;
        };
        tokio::select! {
            biased;
            done = op => done,
            reason = stream.idle() => Err(Error::explain(
                ErrorType::ConnectionClosed,
                match reason {
                    Ok(reason) => format!("the client reset its HTTP/2 stream ({reason})"),
                    Err(e) => format!(
                        "the client's HTTP/2 connection failed: {}",
                        e.to_string().trim_start()
                    ),
                },
            )
            .into_down()),
        }
    }

    pub fn request(&self) -> &Parts {
        match self {
            Client::H1(s) => s.request(),
            Client::H2(s, ..) => s.req_header(),
        }
    }

    /// The request's fields, in the order received.
    pub fn fields(&self) -> &Fields {
        match self {
            Client::H1(s) => s.fields(),
            Client::H2(_, fields, ..) => fields,
        }
    }

    /// Whether the request's head was read whole (an HTTP/2 stream's
    /// always is), though it may then have been refused.
    pub fn head_read(&self) -> bool {
        match self {
            Client::H1(s) => s.head_read(),
            Client::H2(..) => true,
        }
    }

    /// The request target as received.
    pub fn raw_target(&self) -> &[u8] {
        match self {
            Client::H1(s) => s.raw_target(),
            Client::H2(s, ..) => s.req_header().raw_path(),
        }
    }

    /// The client's address as text.
    pub fn client_ip(&self) -> Option<HeaderValue> {
        match self {
            Client::H1(s) => s.client_ip().cloned(),
            Client::H2(s, ..) => s
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| ip_text(a.ip())),
        }
    }

    pub fn is_tls(&self) -> bool {
        match self {
            Client::H1(s) => s.is_tls(),
            Client::H2(s, ..) => s.digest().is_some_and(|d| d.ssl_digest.is_some()),
        }
    }

    pub fn is_body_done(&mut self) -> bool {
        match self {
            Client::H1(s) => s.is_body_done(),
            // Bytes held for the stream's end are still to be read.
            Client::H2(s, _, _, body) => body.held.is_none() && s.is_body_done(),
        }
    }

    pub fn is_body_empty(&mut self) -> bool {
        match self {
            Client::H1(s) => s.is_body_empty(),
            Client::H2(s, ..) => s.is_body_empty(),
        }
    }

    pub async fn read_body(&mut self) -> Result<Option<Bytes>, BError> {
        match self {
            Client::H1(s) => s.read_body().await,
            Client::H2(s, _, idle, body) => {
                let idle = *idle;
                loop {
                    if body.held.is_some() {
                        // The bytes that complete the declared length wait
                        // for the stream's end: they must not reach the
                        // backend as a whole request if more follows.
                        to_stream_end(s, idle).await?;
                        return Ok(body.held.take());
                    }
                    let data = within_idle(idle, Direction::Read, s.read_request_body()).await?;
                    if data.is_some()
                        && !s.is_body_done()
                        && body.declared == Some(s.body_bytes_read() as u64)
                    {
                        body.held = data;
                        continue;
                    }
                    return Ok(data);
                }
            }
        }
    }

    /// Waits for the end of an HTTP/2 stream whose request declares
    /// `content-length: 0`. Such a request counts as bodiless (no body is
    /// streamed for it), yet it is whole only at its stream's end: DATA
    /// before that is malformed (RFC 9113 §8.1.1; the protocol library
    /// resets the stream) and must not reach the backend as an empty
    /// request first. A stream ended with its head ends the wait at once.
    pub async fn await_declared_empty(&mut self) -> Result<(), BError> {
        let Client::H2(s, _, idle, body) = self else {
            return Ok(());
        };
        if body.declared != Some(0) {
            return Ok(());
        }
        to_stream_end(s, *idle).await
    }

    pub async fn write_continue(&mut self) -> Result<(), BError> {
        match self {
            Client::H1(s) => s.write_continue().await,
            Client::H2(s, ..) => s.write_continue_response().await.map_err(Error::into_down),
        }
    }

    /// Passes an interim (1xx) answer on to an HTTP/1.1 client. HTTP/2's
    /// session sends no interim answer but its own `100 Continue`.
    pub async fn write_interim(&mut self, head: &h1::ResponseHead) -> Result<(), BError> {
        match self {
            Client::H1(s) => s.write_interim(head).await,
            Client::H2(..) => Ok(()),
        }
    }

    pub fn enable_retry_buffering(&mut self) {
        match self {
            Client::H1(s) => s.enable_retry_buffering(),
            Client::H2(s, ..) => s.enable_retry_buffering(),
        }
    }

    /// The body bytes read so far, for an attempt after one that failed.
    /// Bytes an HTTP/2 stream holds for its end are the buffer's last, and
    /// left out: [`Client::read_body`] still gives them, and sent twice
    /// they would reach the backend as a request of their own.
    pub fn retry_buffer(&mut self) -> Option<Bytes> {
        match self {
            Client::H1(s) => s.retry_buffer(),
            Client::H2(s, _, _, body) => {
                let buffer = s.get_retry_buffer()?;
                let held = body.held.as_ref().map_or(0, Bytes::len);
                Some(buffer.slice(..buffer.len().saturating_sub(held)))
            }
        }
    }

    pub fn retry_buffer_truncated(&self) -> bool {
        match self {
            Client::H1(s) => s.retry_buffer_truncated(),
            Client::H2(s, ..) => s.retry_buffer_truncated(),
        }
    }

    /// The connection ends after this response.
    pub fn close_after(&mut self) {
        match self {
            Client::H1(s) => s.close_after(),
            Client::H2(s, ..) => s.set_keepalive(None),
        }
    }

    pub fn response_status(&self) -> Option<StatusCode> {
        match self {
            Client::H1(s) => s.response_status(),
            Client::H2(s, ..) => s.response_written().map(|r| r.status),
        }
    }

    /// The response's body bytes written so far.
    pub fn body_sent(&self) -> u64 {
        match self {
            Client::H1(s) => s.body_sent(),
            Client::H2(s, ..) => s.body_bytes_sent() as u64,
        }
    }

    /// See [`Session::end_with_reset`]; an HTTP/2 stream carries no
    /// tunnel.
    pub fn end_with_reset(&mut self) {
        if let Client::H1(s) = self {
            s.end_with_reset();
        }
    }

    pub fn was_upgraded(&self) -> bool {
        match self {
            Client::H1(s) => s.was_upgraded(),
            Client::H2(s, ..) => s.was_upgraded(),
        }
    }

    /// After a `101`: the client's early bytes and its stream (see
    /// [`Session::tunnel`]). An HTTP/2 stream is never upgraded.
    pub fn tunnel(&mut self) -> Option<(Bytes, &mut Stream)> {
        match self {
            Client::H1(s) => Some(s.tunnel()),
            Client::H2(..) => None,
        }
    }

    /// `added`: the proxy's own fields, which go after the head's (its
    /// fields hold none of these names).
    pub async fn write_head(
        &mut self,
        head: h1::ResponseHead,
        added: &[(HeaderName, HeaderValue)],
    ) -> Result<(), BError> {
        let bodiless = h1::no_body(self.request().method == Method::HEAD, head.status);
        match self {
            Client::H1(s) => s.write_head(head, added).await,
            // An answer without a body ends its stream with its HEADERS
            // frame (strict clients take an empty DATA frame after a
            // `content-length` for a short body).
            Client::H2(ServerSession::H2(s), ..) => s
                .write_response_header(pingora_response(head, added)?, bodiless)
                .map_err(Error::into_down),
            Client::H2(s, ..) => s
                .write_response_header(pingora_response(head, added)?)
                .await
                .map_err(Error::into_down),
        }
    }

    /// Sends what is held back (the response head), before a wait.
    pub async fn flush(&mut self) -> Result<(), BError> {
        match self {
            Client::H1(s) => s.flush().await,
            Client::H2(..) => Ok(()),
        }
    }

    pub async fn write_body(&mut self, data: Bytes, end: bool) -> Result<(), BError> {
        // The answer to a HEAD has no body (RFC 9110 §9.3.2), whatever is
        // written for it: HTTP/1's session drops it, and HTTP/2 must not
        // send it (its client resets the stream).
        let head = self.request().method == Method::HEAD;
        match self {
            Client::H1(s) => s.write_body(data, end).await,
            Client::H2(s, _, idle, _) => {
                // Ended with its head (see `write_head`).
                let ended = s
                    .response_written()
                    .map_or(head, |r| h1::no_body(head, r.status));
                if ended && matches!(s, ServerSession::H2(_)) {
                    return Ok(());
                }
                let data = if head { Bytes::new() } else { data };
                if data.is_empty() && !end {
                    return Ok(());
                }
                within_idle(*idle, Direction::Write, s.write_response_body(data, end)).await
            }
        }
    }
}

/// Whether the answer's body has a transfer coding besides chunked, which
/// the proxy does not undo.
fn coded(fields: &Fields) -> bool {
    fields.get_all("transfer-encoding").any(|v| {
        std::str::from_utf8(v).map_or(true, |v| {
            h1::list_items(v).any(|c| !c.eq_ignore_ascii_case("chunked"))
        })
    })
}

/// A response head as Pingora's HTTP/2 session takes it.
fn pingora_response(
    head: h1::ResponseHead,
    added: &[(HeaderName, HeaderValue)],
) -> Result<Box<ResponseHeader>, BError> {
    // HTTP/2 carries no transfer coding: a body coded other than by
    // chunks (which the proxy has undone) would reach the client altered.
    if coded(&head.fields) {
        return Err(Error::explain(
            ErrorType::InvalidHTTPHeader,
            "the backend's answer has a transfer coding other than chunked, which HTTP/2 cannot carry",
        )
        .into_up());
    }
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = head.status;
    parts.version = Version::HTTP_11;
    parts.headers = head.fields.into_map().map_err(|InvalidField(why)| {
        Error::explain(
            ErrorType::InvalidHTTPHeader,
            format!("the response cannot go to an HTTP/2 client: {why}"),
        )
        .into_up()
    })?;
    for (name, value) in added {
        parts.headers.append(name.clone(), value.clone());
    }
    let mut resp = Box::new(ResponseHeader::from(parts));
    if head.reason.is_some() {
        // Pingora keeps any phrase it is given (it checks nothing), so the
        // result is always Ok.
        resp.set_reason_phrase(head.reason.as_deref()).ok();
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::respond::ErrorReply;
    use proptest::prelude::*;
    use tokio::net::TcpStream;

    const IDLE: Duration = Duration::from_secs(10);

    /// A session whose client has sent `wire` and then, if `close`, ended
    /// its stream.
    async fn sent(wire: &[u8], close: bool) -> (Session, TcpStream) {
        let (stream, mut peer) = h1::stream_pair().await;
        peer.write_all(wire).await.expect("write");
        if close {
            peer.shutdown().await.expect("shutdown");
        }
        (Session::new(stream, IDLE), peer)
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_limit_counts_from_the_last_response_once() {
        let (mut s, _peer) = sent(b"", false).await;
        let start = tokio::time::Instant::now();
        tokio::time::advance(Duration::from_secs(3)).await;
        s.count_idle_from(start.into_std());
        let e = s.read_request().await.expect_err("no request");
        assert_eq!(e.etype(), &ErrorType::ReadTimedout);
        assert_eq!(start.elapsed(), IDLE);
        // Without a new time given, the next wait has the whole limit.
        s.read_request().await.expect_err("no request");
        assert_eq!(start.elapsed(), IDLE * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_wait_for_the_same_head_has_the_whole_idle_limit() {
        let (mut s, mut peer) = sent(b"", false).await;
        let start = tokio::time::Instant::now();
        s.count_idle_from(start.into_std());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(9)).await;
            peer.write_all(b"GET / HT").await.expect("write");
            std::future::pending::<()>().await;
        });
        s.read_request().await.expect_err("no whole head");
        assert_eq!(start.elapsed(), Duration::from_secs(19));
    }

    #[tokio::test]
    async fn a_head_refused_at_once_leaves_the_bytes_read() {
        let wire = b"GET / HTTP/1.1\r\nHost : x\r\nContent-Length: 4\r\n\r\nbody";
        let (mut s, _peer) = sent(wire, false).await;
        let e = s.read_request().await.expect_err("malformed");
        assert!(matches!(e.etype(), ErrorType::HTTPStatus(400)), "{e}");
        assert_eq!(&s.buf[..], &wire[..], "nothing dropped");
    }

    async fn whole_body(s: &mut Session) -> Result<Vec<u8>, BError> {
        let mut body = Vec::new();
        while let Some(piece) = s.read_body().await? {
            body.extend_from_slice(&piece);
        }
        Ok(body)
    }

    /// What the client received until the proxy's end of the stream.
    async fn received(s: Session, mut peer: TcpStream) -> String {
        s.close(false).await;
        let mut out = Vec::new();
        peer.read_to_end(&mut out).await.expect("read");
        String::from_utf8_lossy(&out).into_owned()
    }

    fn head(status: u16, fields: &[(&str, &str)]) -> h1::ResponseHead {
        h1::ResponseHead {
            status: StatusCode::from_u16(status).expect("status"),
            reason: None,
            fields: crate::fields::Fields::parse(fields),
            framing: None,
        }
    }

    async fn refusal(wire: &[u8]) -> u16 {
        let (mut s, _peer) = sent(wire, true).await;
        match s.read_request().await {
            Err(e) => match e.etype() {
                ErrorType::HTTPStatus(status) => *status,
                other => panic!("{other:?} for {:?}", String::from_utf8_lossy(wire)),
            },
            Ok(read) => panic!("read ({read}): {:?}", String::from_utf8_lossy(wire)),
        }
    }

    /// HTTP/2's preface on a listener without h2c is told what to do.
    #[tokio::test]
    async fn http2_prior_knowledge_without_h2c_is_named() {
        let (mut s, _peer) = sent(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", true).await;
        let e = s.read_request().await.unwrap_err();
        assert_eq!(e.etype(), &ErrorType::HTTPStatus(400));
        let why = e
            .context
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_default();
        assert!(why.contains("set h2c = true"), "{why}");
    }

    #[tokio::test]
    async fn pipelined_requests_are_read_one_after_another_with_their_bodies() {
        let (mut s, _peer) = sent(
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
              POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
              GET /c?q=1 HTTP/1.1\r\nHost: x\r\n\r\n",
            true,
        )
        .await;
        for (path, body) in [("/a", &b"hello"[..]), ("/b", b"abc"), ("/c", b"")] {
            assert!(s.read_request().await.expect("head"));
            assert_eq!(s.request().uri.path(), path);
            assert_eq!(s.is_body_empty(), body.is_empty(), "{path}");
            assert_eq!(whole_body(&mut s).await.expect("body"), body, "{path}");
            assert!(s.is_body_done());
        }
        assert_eq!(s.raw_target(), b"/c?q=1");
        assert!(!s.read_request().await.expect("clean end"));
    }

    /// Reads the one request in `wire` and answers it with `resp` (plus the
    /// proxy's `added` fields) and the body `pieces` (the last ends it):
    /// whether the connection may carry another request, and what the
    /// client received.
    async fn answered(
        wire: &[u8],
        resp: h1::ResponseHead,
        added: &[(HeaderName, HeaderValue)],
        pieces: &[&'static [u8]],
    ) -> (bool, String) {
        let (mut s, peer) = sent(wire, false).await;
        assert!(s.read_request().await.expect("head"));
        let status = resp.status;
        s.write_head(resp, added).await.expect("head");
        assert_eq!(s.response_status(), None, "the head waits for the body");
        for (i, piece) in pieces.iter().enumerate() {
            let end = i + 1 == pieces.len();
            s.write_body(Bytes::from_static(piece), end)
                .await
                .expect("body");
        }
        assert_eq!(s.response_status(), Some(status));
        (s.reusable(), received(s, peer).await)
    }

    #[tokio::test]
    async fn the_proxy_s_own_fields_go_after_the_backend_s() {
        let added = [
            (crate::upstream::REQUEST_ID, HeaderValue::from_static("r-1")),
            (
                crate::upstream::REGION,
                HeaderValue::from_static("eu-west-1"),
            ),
        ];
        let resp = head(200, &[("content-length", "2")]);
        let wire = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let (_, out) = answered(wire, resp, &added, &[b"ok"]).await;
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-request-id: r-1\r\n\
             x-edgeroute-region: eu-west-1\r\n\r\nok"
        );
    }

    #[tokio::test]
    async fn a_response_goes_out_framed_with_its_head_and_keeps_the_connection() {
        let resp = head(200, &[("content-length", "2"), ("x-a", "1")]);
        let (reusable, out) =
            answered(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", resp, &[], &[b"ok"]).await;
        assert!(reusable);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: 1\r\n\r\nok"
        );
    }

    #[tokio::test]
    async fn a_body_without_length_is_chunked_for_http11_and_runs_to_the_close_for_http10() {
        let wire = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let (reusable, out) = answered(wire, head(200, &[]), &[], &[b"hello, world", b"!"]).await;
        assert!(reusable);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nc\r\nhello, world\r\n1\r\n!\r\n0\r\n\r\n"
        );

        let wire = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        let chunked = head(200, &[("transfer-encoding", "chunked")]);
        let (reusable, out) = answered(wire, chunked, &[], &[b"old"]).await;
        assert!(!reusable, "the close ends the body");
        assert_eq!(out, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nold");
    }

    /// An answer without a body names no transfer coding to an HTTP/1.0
    /// client, nor in a 204 to anyone; a 304 or a HEAD answer to an
    /// HTTP/1.1 client keeps the codings a GET would have had.
    #[tokio::test]
    async fn a_bodiless_answer_names_a_transfer_coding_only_where_one_may_be_named() {
        for (wire, status, kept) in [
            (&b"HEAD / HTTP/1.0\r\n\r\n"[..], 200, false),
            (b"GET / HTTP/1.0\r\n\r\n", 304, false),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 204, false),
            (b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", 200, true),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 304, true),
        ] {
            let text = String::from_utf8_lossy(wire).into_owned();
            let resp = head(status, &[("transfer-encoding", "gzip, chunked")]);
            let (_, out) = answered(wire, resp, &[], &[b""]).await;
            assert_eq!(
                out.contains("transfer-encoding: gzip, chunked\r\n"),
                kept,
                "{text} -> {out}"
            );
            assert!(out.ends_with("\r\n\r\n"), "no body: {text} -> {out}");
        }
    }

    #[tokio::test]
    async fn keep_alive_follows_the_version_and_connection() {
        for (wire, reusable, field) in [
            (&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], true, None),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n",
                false,
                Some("close"),
            ),
            (b"GET / HTTP/1.0\r\n\r\n", false, Some("close")),
            (
                b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                true,
                Some("keep-alive"),
            ),
        ] {
            let text = String::from_utf8_lossy(wire).into_owned();
            let (kept, out) = answered(wire, head(204, &[]), &[], &[b""]).await;
            assert_eq!(kept, reusable, "{text}");
            let want = field.map(|f| format!("connection: {f}\r\n"));
            assert_eq!(
                out.contains("connection:"),
                want.is_some(),
                "{text} -> {out}"
            );
            if let Some(want) = want {
                assert!(out.contains(&want), "{text} -> {out}");
            }
        }
    }

    #[tokio::test]
    async fn a_head_request_gets_no_body_and_the_fields_it_was_given() {
        let wire = b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n";
        let resp = head(200, &[("content-length", "1000")]);
        let (reusable, out) = answered(wire, resp, &[], &[b""]).await;
        assert!(reusable);
        assert_eq!(out, "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n");
    }

    #[tokio::test]
    async fn a_head_held_back_may_give_way_to_an_error_reply() {
        let error = head(502, &[("content-length", "3")]);
        let (mut s, peer) = sent(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false).await;
        assert!(s.read_request().await.expect("head"));
        s.write_head(head(200, &[("content-length", "9")]), &[])
            .await
            .expect("head");
        s.write_head(error, &[])
            .await
            .expect("replaces the held-back head");
        s.write_body(Bytes::from_static(b"bad"), true)
            .await
            .expect("body");
        assert_eq!(s.response_status(), Some(StatusCode::BAD_GATEWAY));
        let out = received(s, peer).await;
        assert_eq!(
            out,
            "HTTP/1.1 502 Bad Gateway\r\ncontent-length: 3\r\n\r\nbad"
        );
    }

    #[tokio::test]
    async fn a_refused_head_is_answered_as_to_a_plain_get() {
        let (mut s, peer) = sent(
            b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost : x\r\n\r\n",
            false,
        )
        .await;
        assert!(s.read_request().await.expect("first"));
        s.write_head(head(204, &[]), &[]).await.expect("head");
        s.write_body(Bytes::new(), true).await.expect("end");
        s.read_request().await.expect_err("malformed");
        assert_eq!(s.request().method, Method::GET);
        s.write_head(head(400, &[("content-length", "3")]), &[])
            .await
            .expect("head");
        s.write_body(Bytes::from_static(b"bad"), true)
            .await
            .expect("body");
        let out = received(s, peer).await;
        assert!(out.ends_with("\r\n\r\nbad"), "{out}");
    }

    #[test]
    fn an_http2_request_has_at_most_as_many_fields_as_an_http1_one() {
        let with = |regular: usize, crumbs: usize| {
            let mut fields = Fields::with_capacity(regular + crumbs);
            for i in 0..regular {
                let name = http::HeaderName::try_from(format!("x-f{i}")).expect("name");
                fields.push(name, http::HeaderValue::from_static("v"));
            }
            for _ in 0..crumbs {
                fields.push(http::header::COOKIE, http::HeaderValue::from_static("a=1"));
            }
            check_h2_request(&fields, 0).map_err(|e| e.etype().clone())
        };
        assert_eq!(with(0, 0), Ok(()));
        assert_eq!(with(MAX_FIELDS, 0), Ok(()));
        assert_eq!(with(MAX_FIELDS + 1, 0), Err(ErrorType::HTTPStatus(431)));
        // Cookie crumbs become one field for the backend.
        assert_eq!(with(MAX_FIELDS - 1, 300), Ok(()));
        assert_eq!(with(MAX_FIELDS, 1), Err(ErrorType::HTTPStatus(431)));
    }

    #[test]
    fn an_http2_header_list_over_the_head_limit_is_a_431() {
        let with = |value: usize| {
            let mut fields = Fields::with_capacity(1);
            let value = http::HeaderValue::try_from("v".repeat(value)).expect("value");
            fields.push(http::HeaderName::from_static("x-big"), value);
            check_h2_request(&fields, 0).map_err(|e| e.etype().clone())
        };
        // 5 for the name and 32 for the field: at the limit, and one over.
        assert_eq!(with(MAX_HEAD - 37), Ok(()));
        assert_eq!(with(MAX_HEAD - 36), Err(ErrorType::HTTPStatus(431)));
        // The pseudo-header fields count: a long path too.
        let path = format!("/{}", "p".repeat(40_000));
        let (req, ()) = http::Request::get(format!("http://api.example.com{path}"))
            .body(())
            .expect("a request")
            .into_parts();
        let pseudo = pseudo_size(&req);
        assert_eq!(
            pseudo,
            (7 + 3 + 32) + (7 + 4 + 32) + (5 + path.len() + 32) + (10 + 15 + 32)
        );
        let mut fields = Fields::with_capacity(1);
        let value = http::HeaderValue::try_from("v".repeat(30_000)).expect("value");
        fields.push(http::HeaderName::from_static("x-big"), value);
        assert_eq!(
            check_h2_request(&fields, pseudo).map_err(|e| e.etype().clone()),
            Err(ErrorType::HTTPStatus(431))
        );
        assert_eq!(
            check_h2_request(&fields, 0).map_err(|e| e.etype().clone()),
            Ok(())
        );
    }

    #[tokio::test]
    async fn a_refused_client_still_sending_is_read_to_its_end_before_the_close() {
        let (stream, mut peer) = h1::stream_pair().await;
        let mut s = Session::new(stream, IDLE);
        let mut wire =
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec();
        let body = 512 * 1024;
        wire.resize(wire.len() + body, b'z');
        let client = tokio::spawn(async move {
            // The whole body goes out whatever the proxy said, then the
            // client reads the answer.
            peer.write_all(&wire).await.expect("write");
            peer.shutdown().await.expect("shutdown");
            let mut out = Vec::new();
            peer.read_to_end(&mut out).await.map(|_| out)
        });
        let e = s.read_request().await.expect_err("refused");
        assert_eq!(e.etype(), &ErrorType::HTTPStatus(501));
        s.write_head(head(501, &[("content-length", "2")]), &[])
            .await
            .expect("head");
        s.write_body(Bytes::from_static(b"no"), true)
            .await
            .expect("body");
        let dropped = s.close(true).await;
        assert_eq!(
            dropped, body as u64,
            "all the client sent is read before the close"
        );
        let out = client.await.expect("task").expect("the answer");
        assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 501"));
    }

    #[tokio::test]
    async fn a_response_cut_before_its_length_closes_the_connection() {
        let (mut s, _peer) = sent(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false).await;
        assert!(s.read_request().await.expect("head"));
        s.write_head(head(200, &[("content-length", "5")]), &[])
            .await
            .expect("head");
        s.write_body(Bytes::from_static(b"hel"), false)
            .await
            .expect("part");
        s.write_body(Bytes::new(), true)
            .await
            .expect_err("two bytes short");
        assert!(!s.reusable());
        s.write_body(Bytes::from_static(b"too long"), false)
            .await
            .expect_err("over the length");
    }

    #[tokio::test]
    async fn ambiguous_framing_and_oversized_heads_are_refused() {
        for (wire, status) in [
            (
                &b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"[..],
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                400,
            ),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10\r\n\r\n", 400),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
                400,
            ),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                501,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip, chunked\r\n\r\n",
                400,
            ),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunk\r\n\r\n", 400),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                400,
            ),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ,\r\n\r\n", 400),
            // Unicode's whitespace is no HTTP whitespace around a coding.
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\xc2\xa0\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \xc2\x85chunked\r\n\r\n",
                400,
            ),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
            (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\n\r\n", 505),
            // An http URI's host is never empty (RFC 9110 §4.2.1).
            (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x::\r\n\r\n", 400),
            (b"GET / HTTP/1.10\r\nHost: x\r\n\r\n", 400),
            (b"G\x01T / HTTP/1.1\r\n\r\n", 400),
        ] {
            assert_eq!(refusal(wire).await, status, "{:?}", String::from_utf8_lossy(wire));
        }
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_FIELDS {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(refusal(&many).await, 431);
        let mut long = b"GET / HTTP/1.1\r\nx-long: ".to_vec();
        long.resize(MAX_HEAD + 10, b'a');
        assert_eq!(refusal(&long).await, 431);
        long.extend_from_slice(b"\r\n\r\n");
        assert_eq!(refusal(&long).await, 431, "a whole head over the limit");
    }

    /// An empty port is the scheme's default (RFC 3986's `port = *DIGIT`);
    /// an HTTP/1.0 client may name no host, and an absolute target names
    /// its own.
    #[tokio::test]
    async fn hosts_a_uri_allows_are_read() {
        for wire in [
            &b"GET / HTTP/1.1\r\nHost: x:\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: [::1]:\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x:8080\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost:\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\nHost:\r\n\r\n",
        ] {
            let (mut s, _peer) = sent(wire, true).await;
            assert!(
                s.read_request().await.expect("read"),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[tokio::test]
    async fn a_malformed_chunked_body_is_a_bad_request() {
        let (mut s, _peer) = sent(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n",
            true,
        )
        .await;
        assert!(s.read_request().await.expect("head"));
        let e = whole_body(&mut s).await.expect_err("malformed");
        assert_eq!(e.etype(), &ErrorType::HTTPStatus(400));
    }

    #[tokio::test]
    async fn a_close_in_the_middle_is_an_error_and_between_requests_is_not() {
        let (mut s, _peer) = sent(b"\r\n", true).await;
        assert!(!s.read_request().await.expect("no request is no error"));

        let (mut s, _peer) = sent(b"GET / HTTP/1.1\r\nHo", true).await;
        let e = s.read_request().await.expect_err("cut head");
        assert_eq!(e.etype(), &ErrorType::ConnectionClosed);

        let (mut s, _peer) = sent(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
            true,
        )
        .await;
        assert!(s.read_request().await.expect("head"));
        let e = whole_body(&mut s).await.expect_err("cut body");
        assert_eq!(e.etype(), &ErrorType::ConnectionClosed);
        assert_eq!(ErrorReply::from_error(&e), ErrorReply::ClientGone);
    }

    #[tokio::test]
    async fn a_client_that_stops_sending_is_let_go_after_its_idle_limit() {
        let (stream, mut peer) = h1::stream_pair().await;
        peer.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\npart")
            .await
            .expect("write");
        let mut s = Session::new(stream, Duration::from_millis(50));
        assert!(s.read_request().await.expect("head"));
        let e = whole_body(&mut s).await.expect_err("the rest never comes");
        assert_eq!(e.etype(), &ErrorType::ReadTimedout);
        assert_eq!(e.esource(), &pingora_error::ErrorSource::Downstream);
        assert_eq!(ErrorReply::from_error(&e), ErrorReply::ClientGone);
    }

    #[tokio::test]
    async fn a_head_that_arrives_in_pieces_is_read_whole() {
        let wire = b"\r\nGET /p?x=1 HTTP/1.1\r\nHost: h\r\nX-Long: a b c\r\n\r\n";
        for cut in 1..wire.len() {
            let (stream, mut peer) = h1::stream_pair().await;
            let mut s = Session::new(stream, IDLE);
            peer.write_all(&wire[..cut]).await.expect("write");
            let read = tokio::spawn(async move {
                let got = s.read_request().await;
                (s, got)
            });
            tokio::task::yield_now().await;
            peer.write_all(&wire[cut..]).await.expect("write");
            let (s, got) = read.await.expect("task");
            assert!(got.expect("head"), "cut at {cut}");
            assert_eq!(s.request().uri, "/p?x=1", "cut at {cut}");
            assert_eq!(
                s.fields().get("x-long"),
                Some(&b"a b c"[..]),
                "cut at {cut}"
            );
        }
    }

    #[tokio::test]
    async fn a_target_no_uri_may_hold_is_kept_as_received() {
        let (mut s, _peer) = sent(
            b"GET /caf\xc3\xa9?q=\"x\" HTTP/1.1\r\nHost: x\r\n\r\n",
            true,
        )
        .await;
        assert!(s.read_request().await.expect("head"));
        assert_eq!(s.raw_target(), b"/caf\xc3\xa9?q=\"x\"");
        assert_eq!(s.request().uri.path(), "/caf%C3%A9");
    }

    #[tokio::test]
    async fn the_retry_buffer_keeps_a_short_body_and_gives_up_on_a_long_one() {
        let short = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody";
        let (mut s, _peer) = sent(short, true).await;
        assert!(s.read_request().await.expect("head"));
        s.enable_retry_buffering();
        whole_body(&mut s).await.expect("body");
        assert_eq!(s.retry_buffer().as_deref(), Some(&b"body"[..]));
        assert!(!s.retry_buffer_truncated());

        let len = RETRY_BUFFER + 1;
        let mut long =
            format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n").into_bytes();
        long.resize(long.len() + len, b'z');
        let (stream, mut peer) = h1::stream_pair().await;
        let writer = tokio::spawn(async move {
            peer.write_all(&long).await.expect("write");
            peer
        });
        let mut s = Session::new(stream, IDLE);
        assert!(s.read_request().await.expect("head"));
        s.enable_retry_buffering();
        assert_eq!(whole_body(&mut s).await.expect("body").len(), len);
        assert!(s.retry_buffer_truncated());
        assert_eq!(s.retry_buffer(), None);
        drop(writer.await);
    }

    #[tokio::test]
    async fn continue_and_a_switch_go_out_at_once() {
        let (mut s, mut peer) = sent(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nraw bytes",
            false,
        )
        .await;
        assert!(s.read_request().await.expect("head"));
        s.enable_retry_buffering();
        s.write_continue().await.expect("continue");
        s.write_head(
            head(101, &[("connection", "Upgrade"), ("upgrade", "websocket")]),
            &[],
        )
        .await
        .expect("switch");
        let want = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n";
        let mut got = vec![0u8; want.len()];
        peer.read_exact(&mut got).await.expect("read");
        assert_eq!(String::from_utf8_lossy(&got), want);
        assert!(s.was_upgraded());
        // What came after the head goes first through the tunnel.
        assert_eq!(&s.tunnel().0[..], b"raw bytes");
        assert!(!s.reusable());
        assert_eq!(s.retry_buffer(), None, "tunnel bytes are not kept");
    }

    /// A request's framing fields, drawn from what smuggling attempts use.
    fn framing_field() -> impl Strategy<Value = (&'static str, &'static str)> {
        prop_oneof![
            Just(("content-length", "5")),
            Just(("content-length", "5, 5")),
            Just(("content-length", "6")),
            Just(("content-length", "")),
            Just(("content-length", "+5")),
            Just(("transfer-encoding", "chunked")),
            Just(("transfer-encoding", "Chunked")),
            Just(("transfer-encoding", "chunked, identity")),
            Just(("transfer-encoding", "gzip")),
            Just(("transfer-encoding", " chunked ")),
            Just(("transfer-encoding", ",")),
            Just(("host", "a")),
            Just(("host", "a:8080")),
            Just(("host", "a b")),
            Just(("host", "a/b")),
            Just(("host", "a:")),
            Just(("host", "")),
            Just(("connection", "close")),
        ]
    }

    /// What a request's `Host` fields say, read independently of the code.
    fn host_of(fields: &[(&str, &str)]) -> Host {
        match fields.iter().find(|(k, _)| *k == "host") {
            None => Host::Missing,
            Some((_, "")) => Host::Empty,
            Some(_) => Host::Named,
        }
    }

    /// What the framing rules accept, said independently of the code.
    fn acceptable(fields: &[(&str, &str)], http10: bool) -> bool {
        let values = |name: &str| -> Vec<String> {
            fields
                .iter()
                .filter(|(k, _)| *k == name)
                .flat_map(|(_, v)| v.split(','))
                .map(|t| t.trim().to_ascii_lowercase())
                .collect()
        };
        let hosts: Vec<&str> = fields
            .iter()
            .filter(|(k, _)| *k == "host")
            .map(|(_, v)| *v)
            .collect();
        if hosts.len() > 1 || hosts.iter().any(|h| h.contains(' ') || h.contains('/')) {
            return false;
        }
        let lengths = values("content-length");
        if fields.iter().any(|(k, _)| *k == "transfer-encoding") {
            let codings: Vec<_> = values("transfer-encoding")
                .into_iter()
                .filter(|c| !c.is_empty())
                .collect();
            return !http10 && lengths.is_empty() && codings == ["chunked"];
        }
        lengths
            .iter()
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            && lengths.windows(2).all(|w| w[0] == w[1])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Whatever bytes a client sends, after a head or not, reading
        /// requests and their bodies ends (a request, a refusal with a
        /// status, or the connection's end) and never panics.
        #[test]
        fn any_bytes_from_a_client_are_read_or_refused(
            start in proptest::sample::select(vec![
                &b""[..],
                b"GET / HTTP/1.1\r\nHost: x\r\n",
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
            ]),
            rest in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let wire = [start, &rest[..]].concat();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let outcome: Result<(), String> = runtime.block_on(async {
                let (mut s, _peer) = sent(&wire, true).await;
                // Bounded: each turn takes at least a request head.
                for _ in 0..16 {
                    match s.read_request().await {
                        Ok(true) => {
                            if whole_body(&mut s).await.is_err() {
                                return Ok(());
                            }
                        }
                        Ok(false) => return Ok(()),
                        Err(e) => {
                            return match e.etype() {
                                ErrorType::HTTPStatus(400 | 413 | 431 | 501)
                                | ErrorType::ConnectionClosed
                                | ErrorType::ReadError
                                | ErrorType::ReadTimedout => Ok(()),
                                other => Err(format!("{other:?}: {e}")),
                            };
                        }
                    }
                }
                Ok(())
            });
            prop_assert!(outcome.is_ok(), "{:?}", outcome);
        }

        /// Whatever framing fields a request carries, it is refused exactly
        /// when the rules say so, and otherwise read with one framing that
        /// the head going on states without ambiguity: chunks with no
        /// length beside them, or a single length field with one number.
        #[test]
        fn a_request_is_framed_one_way_or_refused(
            fields in proptest::collection::vec(framing_field(), 0..5),
            http10 in any::<bool>(),
        ) {
            let mut headers = Fields::parse(&fields);
            let version = if http10 { Version::HTTP_10 } else { Version::HTTP_11 };
            let framed = request_framing(version, &mut headers);
            prop_assert_eq!(framed.is_ok(), acceptable(&fields, http10), "{:?}", framed.as_ref().err());
            match framed {
                Ok((Body::Chunked(_), _, host)) => {
                    prop_assert!(!headers.contains("content-length"));
                    prop_assert_eq!(host, host_of(&fields));
                }
                Ok((body, _, host)) => {
                    prop_assert_eq!(host, host_of(&fields));
                    prop_assert!(!headers.contains("transfer-encoding"));
                    let values: Vec<_> = headers.get_all("content-length").collect();
                    prop_assert!(values.len() <= 1);
                    let n = values.first().map(|v| {
                        std::str::from_utf8(v).expect("text").parse::<u64>().expect("one number")
                    });
                    let want = match n {
                        None | Some(0) => Body::Done,
                        Some(n) => Body::Length(n),
                    };
                    prop_assert_eq!(body, want);
                }
                Err(e) => {
                    prop_assert!(
                        matches!(e.etype(), ErrorType::HTTPStatus(400 | 501)),
                        "{:?}", e
                    );
                }
            }
        }
    }
}

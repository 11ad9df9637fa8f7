//! HTTP/1.1 with a backend (RFC 9112) on one connection: the request head
//! and body out, the response head and body in.
//!
//! The response head is parsed straight into the field list the client's
//! response is built from (its names and values are places in the bytes
//! read), and the body is framed from the head: a length, chunks, or the end
//! of the connection.
//! A connection goes back to the pool only after a whole response that
//! leaves it open and nothing read beyond it.

use crate::fields::Fields;
use bytes::buf::Chain;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{StatusCode, Version};
use memchr::memmem;
use pingora_core::protocols::Stream;
use pingora_error::{Error, ErrorType};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

type BError = Box<Error>;

/// Largest response head a backend may send.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most fields in a response head.
pub const MAX_FIELDS: usize = 256;
/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Most bytes of trailer fields after the last chunk (they are dropped).
const MAX_TRAILERS: usize = 64 * 1024;
/// Most interim (1xx) answers before the final one.
pub const MAX_INTERIM: usize = 16;
/// Free room each read from the backend gets at least.
pub(crate) const READ_ROOM: usize = 16 * 1024;

/// A response head read: an interim (1xx) answer, or the final one.
pub enum Answer {
    Interim(ResponseHead),
    Final(ResponseHead),
}

/// A backend's response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    /// The reason phrase, when it is not the status's usual one.
    pub reason: Option<String>,
    pub fields: Fields,
    /// How the body is delimited, when the backend's fields gave a length
    /// or chunks (else the fields say, or there is no body).
    pub framing: Option<Framing>,
}

/// Where a message body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    /// No head read yet.
    Head,
    /// This many bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// Everything until the peer ends its stream (also after a `101`).
    UntilClose,
    /// The whole body was read.
    Done,
}

impl Body {
    /// What the bytes read (`buf`, consumed as used) give without waiting:
    /// a piece of the body, its end (`Some(None)`), or `None` when the next
    /// step needs bytes still to come. An error says what is malformed.
    pub(crate) fn step(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<Option<Bytes>>, &'static str> {
        loop {
            match *self {
                Body::Head => return Err("the body was read before its head"),
                Body::Done => return Ok(Some(None)),
                Body::Length(_) | Body::UntilClose if buf.is_empty() => return Ok(None),
                Body::Length(left) => {
                    let (data, left) = take_up_to(buf, left);
                    *self = if left == 0 {
                        Body::Done
                    } else {
                        Body::Length(left)
                    };
                    return Ok(Some(Some(data)));
                }
                Body::UntilClose => return Ok(Some(Some(buf.split().freeze()))),
                Body::Chunked(state) => match decode_chunked(state, buf)? {
                    (Decoded::Data(data), next) => {
                        *self = Body::Chunked(next);
                        return Ok(Some(Some(data)));
                    }
                    (Decoded::End, _) => *self = Body::Done,
                    (Decoded::More, next) => {
                        *self = Body::Chunked(next);
                        return Ok(None);
                    }
                },
            }
        }
    }

    /// The peer ended its stream here: the end of a body that runs to it,
    /// else the body was cut short (the error says how).
    pub(crate) fn at_close(&mut self) -> Result<(), String> {
        match *self {
            Body::Length(left) => Err(format!("{left} bytes before the end of its body")),
            Body::Chunked(_) => Err("in the middle of a chunked body".to_owned()),
            _ => {
                *self = Body::Done;
                Ok(())
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of the chunk's data still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines after the last chunk; this many bytes of them so far.
    Trailers(usize),
}

/// One HTTP/1.1 exchange after another on a backend connection.
pub struct Connection<'t> {
    stream: Stream,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    pub read_timeout: Option<Duration>,
    pub write_timeout: Option<Duration>,
    /// The timer bounding each read and write by those limits (the
    /// client connection's, lent for each exchange).
    deadline: &'t mut Deadline,
    body: Body,
    /// The response leaves the connection open.
    keepalive: bool,
    chunked_request: bool,
    request_done: bool,
    /// The request head, until it goes out with the first body bytes or
    /// the request's end: one write instead of two.
    pending_head: Vec<u8>,
    /// How far `buf` was searched for the end of a response head.
    head_scan: usize,
    /// The backend has sent something on this exchange.
    heard: bool,
    /// Where the wait for the response head starts counting its read
    /// timeout ([`Self::count_answer_from`]).
    answer_since: Option<Instant>,
    /// Interim answers read before this exchange's final one.
    interim: usize,
}

fn bad_response(why: impl Into<String>) -> BError {
    Error::explain(ErrorType::InvalidHTTPHeader, why.into()).into_up()
}

/// A backend connection between exchanges: the socket, and the read
/// buffer its responses are read into. The buffer holds nothing; its memory
/// serves the next response (once the last one's pieces are gone) instead
/// of a new allocation for every exchange.
pub struct Idle {
    pub stream: Stream,
    buf: BytesMut,
}

impl Idle {
    /// A new connection, with no buffer yet.
    pub fn new(stream: Stream) -> Self {
        Idle {
            stream,
            buf: BytesMut::new(),
        }
    }
}

impl<'t> Connection<'t> {
    pub fn new(
        idle: Idle,
        read_timeout: Option<Duration>,
        write_timeout: Option<Duration>,
        deadline: &'t mut Deadline,
    ) -> Self {
        Connection {
            stream: idle.stream,
            buf: idle.buf,
            read_timeout,
            write_timeout,
            deadline,
            body: Body::Head,
            keepalive: false,
            chunked_request: false,
            request_done: false,
            pending_head: Vec::new(),
            head_scan: 0,
            heard: false,
            answer_since: None,
            interim: 0,
        }
    }

    /// The response is due within the read timeout of `at` (the request's
    /// send time, already read from the clock) rather than of when its head
    /// is first waited for, if the request goes out with no wait: a
    /// request whose writes had to wait counts from the wait for its
    /// answer, as usual.
    pub fn count_answer_from(&mut self, at: std::time::Instant) {
        self.answer_since = Some(Instant::from_std(at));
        self.deadline.take_waited();
    }

    /// Takes an encoded request head; it goes out with the first body
    /// bytes, or with [`Self::finish_request`]. `chunked`: the body goes in
    /// chunks.
    pub fn write_head(&mut self, head: Vec<u8>, chunked: bool) {
        self.chunked_request = chunked;
        self.pending_head = head;
    }

    /// Sends one piece of the request body (with the head, if it has not
    /// gone yet), at once.
    pub async fn write_body(&mut self, data: &[u8]) -> Result<(), BError> {
        if data.is_empty() {
            return Ok(());
        }
        let mut head = std::mem::take(&mut self.pending_head);
        let mut digits = [0u8; 18];
        let (size, end): (&[u8], &[u8]) = if self.chunked_request {
            (chunk_size_line(&mut digits, data.len()), b"\r\n")
        } else {
            (b"", b"")
        };
        let mut out = append_small(&mut head, [size, data, end]);
        let written = self.timed_write(|s| write_all(s, &mut out)).await;
        // The buffer stays for the next piece to be copied onto.
        head.clear();
        self.pending_head = head;
        written?;
        self.flush().await
    }

    /// Ends the request: the head if it has not gone yet, the last chunk if
    /// the body is chunked, and everything written goes out.
    pub async fn finish_request(&mut self) -> Result<(), BError> {
        let mut head = std::mem::take(&mut self.pending_head);
        let last: &[u8] = if self.chunked_request {
            b"0\r\n\r\n"
        } else {
            b""
        };
        let mut out = append_small(&mut head, [last, b"", b""]);
        if out.has_remaining() {
            self.timed_write(|s| write_all(s, &mut out)).await?;
        }
        self.flush().await?;
        self.request_done = true;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), BError> {
        self.timed_write(|s| s.flush()).await
    }

    /// A write to the backend, bounded by `timeouts.write`.
    async fn timed_write<'s, F, Fut>(&'s mut self, op: F) -> Result<(), BError>
    where
        F: FnOnce(&'s mut Stream) -> Fut,
        Fut: Future<Output = std::io::Result<()>>,
    {
        let limit = self.write_timeout;
        self.deadline
            .bound(limit, op(&mut self.stream), Direction::Write, Peer::Backend)
            .await
    }

    /// Reads more bytes from the backend into the buffer; 0 at the end of
    /// the stream.
    fn fill(&mut self) -> impl Future<Output = Result<usize, BError>> {
        self.fill_since(None)
    }

    /// [`Self::fill`], its read timeout counted from `since` if given.
    fn fill_since(
        &mut self,
        since: Option<Instant>,
    ) -> impl Future<Output = Result<usize, BError>> {
        self.fill_within(self.read_timeout, since)
    }

    /// [`Self::fill`] bounded by `limit` (none: unbounded), counted from
    /// `since` if given.
    async fn fill_within(
        &mut self,
        limit: Option<Duration>,
        since: Option<Instant>,
    ) -> Result<usize, BError> {
        if self.buf.capacity() - self.buf.len() < READ_ROOM / 4 {
            self.buf.reserve(READ_ROOM);
        }
        let read = self.stream.read_buf(&mut self.buf);
        let n = self
            .deadline
            .bound_since(limit, since, read, Direction::Read, Peer::Backend)
            .await?;
        if n > 0 && !self.heard {
            // Bytes that cannot begin a response are no answer to this
            // request: left on a pooled connection by an exchange before
            // (a body after a `HEAD` answer, say), they make it stale.
            // Empty lines before a status line are let by as the parser
            // lets them by; the answer is undecided until a byte follows.
            let begun = self.buf.iter().position(|b| !matches!(b, b'\r' | b'\n'));
            self.heard = begun.is_some_and(|at| {
                let start = &self.buf[at..];
                STATUS_START.starts_with(&start[..start.len().min(STATUS_START.len())])
            });
        }
        Ok(n)
    }

    /// Resolves when the backend ends its stream while the request's body
    /// is still being sent: it takes no more of it, and what it answered
    /// has been read. Bytes it sends before that are kept for the response
    /// head, up to a head's size; past that the backend waits, as it would
    /// if nothing were read. No deadline: the wait for the client's body,
    /// which this runs beside, has one.
    pub async fn closed_early(&mut self) -> Result<(), BError> {
        loop {
            if self.buf.len() >= MAX_HEAD {
                std::future::pending::<()>().await;
            }
            if self.fill_within(None, None).await? == 0 {
                return Ok(());
            }
        }
    }

    /// Whether nothing of this exchange's request has been written: its
    /// head waits for the body's first bytes (a write that failed part way
    /// may have sent some, and counts as sent).
    pub fn unsent(&self) -> bool {
        !self.pending_head.is_empty()
    }

    /// Whether the backend has begun an answer on this exchange (bytes
    /// that can begin a status line): a failure before that may be a
    /// pooled connection it had just closed, or one an earlier exchange
    /// left bytes on; one after it is the backend's answer going wrong.
    pub fn answered(&self) -> bool {
        self.heard
    }

    /// Reads the response head. Interim (1xx) answers other than `101` are
    /// read and dropped. `head`: the request was a `HEAD`, whose answer has
    /// no body whatever its fields say. `upgrade`: the request asked for a
    /// protocol upgrade; a `101` to one that did not is refused.
    pub async fn read_head(&mut self, head: bool, upgrade: bool) -> Result<ResponseHead, BError> {
        loop {
            if let Answer::Final(resp) = self.read_answer(head, upgrade).await? {
                return Ok(resp);
            }
        }
    }

    /// Reads the next response head: an interim (1xx) answer other than
    /// `101`, which a proxy passes on (RFC 9110 §15.2), at most
    /// [`MAX_INTERIM`] of them, or the final one (see [`Self::read_head`]).
    pub async fn read_answer(&mut self, head: bool, upgrade: bool) -> Result<Answer, BError> {
        // Only the first wait counts from the time given, and only if no
        // write has waited since it.
        let mut since = self
            .answer_since
            .take()
            .filter(|_| !self.deadline.take_waited());
        let (mut resp, version) = self.read_one_head(&mut since).await?;
        if resp.status.is_informational() && resp.status != StatusCode::SWITCHING_PROTOCOLS {
            self.interim += 1;
            if self.interim > MAX_INTERIM {
                return Err(bad_response(format!(
                    "the backend sent more than {MAX_INTERIM} interim (1xx) answers"
                )));
            }
            return Ok(Answer::Interim(resp));
        }
        self.interim = 0;
        self.frame(&mut resp, version, head, upgrade)?;
        Ok(Answer::Final(resp))
    }

    /// One head. Once its first bytes have come, the whole of it is due
    /// within the read timeout of then, not within that of each read: a
    /// backend that trickles its head cannot hold the request for long.
    async fn read_one_head(
        &mut self,
        since: &mut Option<Instant>,
    ) -> Result<(ResponseHead, Version), BError> {
        let mut began = None;
        loop {
            if let Some(parsed) = self.take_head()? {
                return Ok(parsed);
            }
            if !self.buf.is_empty() && began.is_none() {
                began = Some(Instant::now());
            }
            if self.fill_since(since.take().or(began)).await? == 0 {
                let why = if self.buf.is_empty() {
                    "the backend closed the connection without an answer"
                } else {
                    "the backend closed the connection in the middle of its response head"
                };
                return Err(Error::explain(ErrorType::ConnectionClosed, why).into_up());
            }
        }
    }

    /// A response head from the bytes read, if they hold a whole one. A
    /// short first read is parsed at once ([`QUICK_HEAD`]); otherwise the
    /// bytes are searched for the head's end only once each, and parsed
    /// only when it is there.
    fn take_head(&mut self) -> Result<Option<(ResponseHead, Version)>, BError> {
        if let Some(whole) = quick_head(&mut self.buf, self.head_scan) {
            let parsed = parse_head(&whole);
            let len = parsed.as_ref().ok().and_then(|p| p.as_ref().map(|p| p.2));
            after_quick(&mut self.buf, whole, len);
            if let Some((head, version, _)) = parsed? {
                return Ok(Some((head, version)));
            }
        }
        let from = self.head_scan.saturating_sub(2);
        self.head_scan = self.buf.len();
        let Some(end) = head_end(&self.buf, from).filter(|end| *end <= MAX_HEAD) else {
            if self.buf.len() >= MAX_HEAD {
                return Err(bad_response(format!(
                    "the backend's response head is over {MAX_HEAD} bytes"
                )));
            }
            return Ok(None);
        };
        // What follows the head (the body's start, or the next head) stays
        // where it is.
        let data = self.buf.split_to(end).freeze();
        self.head_scan = 0;
        match parse_head(&data)? {
            Some((head, version, len)) if len == end => Ok(Some((head, version))),
            _ => Err(bad_response(
                "the backend's response head does not end where its empty line is",
            )),
        }
    }

    /// Sets the body's framing and the connection's fate from a final
    /// response head (RFC 9112 §6.3).
    fn frame(
        &mut self,
        resp: &mut ResponseHead,
        version: Version,
        head: bool,
        upgrade: bool,
    ) -> Result<(), BError> {
        // One pass over the fields for what framing and keep-alive need.
        let mut options = ConnectionOptions::default();
        let (mut coded, mut lengths, mut length) = (false, 0, None);
        for (name, value) in resp.fields.iter() {
            if name.eq_ignore_ascii_case(b"connection") {
                options.read(value);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                coded = true;
            } else if name.eq_ignore_ascii_case(b"content-length") {
                lengths += 1;
                length = Some(value);
            }
        }
        self.keepalive = options.persist(version);
        if coded && (version == Version::HTTP_10 || lengths > 0) {
            // Faulty framing for HTTP/1.0, or a length beside a transfer
            // coding (RFC 9112 §6.1, §6.3): the body is framed by the
            // coding, and the connection, whose framing is in doubt, ends
            // with it.
            self.keepalive = false;
        }
        let status = resp.status;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            if !upgrade {
                return Err(bad_response(
                    "the backend switched protocols though the request asked for no upgrade",
                ));
            }
            let websocket = resp
                .fields
                .get("upgrade")
                .and_then(|v| std::str::from_utf8(v).ok())
                .is_some_and(|v| list_items(v).any(|p| p.eq_ignore_ascii_case("websocket")));
            if !websocket {
                return Err(bad_response(
                    "the backend switched to a protocol other than the WebSocket asked for",
                ));
            }
            self.body = Body::UntilClose;
            self.keepalive = false;
            return Ok(());
        }
        if no_body(head, status) {
            self.body = Body::Done;
            return Ok(());
        }
        let framing = match (coded, lengths, length) {
            // The usual case: one length, nothing else to weigh.
            (false, 1, Some(value)) => match length_of(std::iter::once(value)) {
                Ok(Some((n, true))) => Framing::Length(n),
                _ => body_framing(&mut resp.fields)?,
            },
            _ => body_framing(&mut resp.fields)?,
        };
        resp.framing = (framing != Framing::UntilClose).then_some(framing);
        self.body = match framing {
            Framing::Chunked => Body::Chunked(Chunk::Size),
            Framing::Length(0) => Body::Done,
            Framing::Length(n) => Body::Length(n),
            Framing::UntilClose => {
                self.keepalive = false;
                Body::UntilClose
            }
        };
        Ok(())
    }

    /// The next piece of the response body; `None` after its end.
    pub async fn read_body(&mut self) -> Result<Option<Bytes>, BError> {
        loop {
            if let Some(next) = self.body_now()? {
                return Ok(next);
            }
            if self.fill().await? == 0 {
                self.body.at_close().map_err(|cut| {
                    Error::explain(
                        ErrorType::ConnectionClosed,
                        format!("the backend closed the connection {cut}"),
                    )
                    .into_up()
                })?;
            }
        }
    }

    /// What of the response body the bytes already read give, without
    /// waiting: a piece, the end (`Some(None)`), or `None` when the next
    /// step needs bytes still to come.
    pub fn body_now(&mut self) -> Result<Option<Option<Bytes>>, BError> {
        if self.body == Body::Head {
            return Err(Error::explain(
                ErrorType::InternalError,
                "the response body was read before its head",
            ));
        }
        self.body.step(&mut self.buf).map_err(bad_chunk)
    }

    /// After a `101`: the backend's bytes already read past the response
    /// head, and its stream, to be carried raw from here on.
    pub fn tunnel(&mut self) -> (Bytes, &mut Stream) {
        (self.buf.split().freeze(), &mut self.stream)
    }

    /// Whether the exchange ended whole on a connection the backend keeps
    /// open: the request and the whole response went through.
    fn ended_whole(&self) -> bool {
        self.request_done && self.keepalive && self.body == Body::Done
    }

    /// Whether the backend sent bytes after a whole answer on a connection
    /// it keeps open: it is out of step with its own framing, and the
    /// connection is not reused.
    pub fn out_of_step(&self) -> bool {
        self.ended_whole() && !self.buf.is_empty()
    }

    /// The connection, if it may carry another request: the exchange ended
    /// whole, and the backend sent nothing beyond the response.
    pub fn into_reusable(self) -> Option<Idle> {
        (self.ended_whole() && self.buf.is_empty()).then_some(Idle {
            stream: self.stream,
            buf: self.buf,
        })
    }
}

/// What a message's `Connection` fields ask of its connection.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConnectionOptions {
    close: bool,
    keep_alive: bool,
}

impl ConnectionOptions {
    /// Takes in the options of one `Connection` value.
    pub fn read(&mut self, value: &[u8]) {
        // Nearly every value is one bare option: no list to split.
        if self.take(value) {
            return;
        }
        for token in list_items(std::str::from_utf8(value).unwrap_or("")) {
            self.take(token.as_bytes());
        }
    }

    /// Notes `item` of a `Connection` value if it is `close` or
    /// `keep-alive`; whether it was.
    fn take(&mut self, item: &[u8]) -> bool {
        if item.eq_ignore_ascii_case(b"close") {
            self.close = true;
        } else if item.eq_ignore_ascii_case(b"keep-alive") {
            self.keep_alive = true;
        } else {
            return false;
        }
        true
    }

    /// Whether an item of a `Connection` value (or a whole value) is one
    /// of the options, `close` or `keep-alive`, rather than a field's name.
    pub(crate) fn is_option(item: &[u8]) -> bool {
        ConnectionOptions::default().take(item)
    }

    /// Whether the connection stays open after a message of `version`
    /// (RFC 9112 §9.3): with HTTP/1.1 unless it says `close`, with
    /// HTTP/1.0 only if it says `keep-alive`.
    pub fn persist(self, version: Version) -> bool {
        !self.close && (version != Version::HTTP_10 || self.keep_alive)
    }
}

/// Writes all of `out`, a few pieces (head, chunk-size line, data, CRLF)
/// at a time in one vectored write each, or in a plain write when one
/// piece is left: on a socket that is `send(2)`, which costs the kernel
/// less than `writev(2)`'s vectored path. (Tokio's `write_all_buf` makes
/// room for 64 pieces on every call, more than the pieces themselves cost.)
pub(crate) async fn write_all<W>(stream: &mut W, out: &mut impl Buf) -> std::io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin + ?Sized,
{
    while out.has_remaining() {
        let written = {
            let mut pieces = [std::io::IoSlice::new(&[]); 4];
            let n = out.chunks_vectored(&mut pieces);
            let write = match n {
                1 => stream.write(&pieces[0]).await,
                _ => stream.write_vectored(&pieces[..n]).await,
            };
            match write {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(written) => written,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        out.advance(written);
    }
    Ok(())
}

/// Pieces that follow a head and come to at most this many bytes in all
/// are copied behind it, so that head and pieces go out in one plain
/// write: copying a kilobyte costs less than the kernel's extra work for a
/// vectored write of several pieces.
const APPEND_LIMIT: usize = 1024;

/// A head and the pieces that follow it. (A type of its own, not `impl
/// Buf`: with no destructor, its borrow of the head ends at its last use.)
pub(crate) type ToSend<'a> = Chain<Chain<Chain<&'a [u8], &'a [u8]>, &'a [u8]>, &'a [u8]>;

/// `head` and then `pieces`, the bytes to send, in order: the pieces are
/// copied onto the end of `head` if they come to at most [`APPEND_LIMIT`]
/// bytes and there is more than one piece to send (a head or a piece alone
/// goes out in a plain write uncopied), and follow it as they are if not.
pub(crate) fn append_small<'a>(head: &'a mut Vec<u8>, pieces: [&'a [u8]; 3]) -> ToSend<'a> {
    let len: usize = pieces.iter().map(|p| p.len()).sum();
    let parts = usize::from(!head.is_empty()) + pieces.iter().filter(|p| !p.is_empty()).count();
    let rest = if parts < 2 || len > APPEND_LIMIT {
        pieces
    } else {
        head.reserve(len);
        for piece in pieces {
            head.extend_from_slice(piece);
        }
        [&[][..]; 3]
    };
    Buf::chain(&head[..], rest[0]).chain(rest[1]).chain(rest[2])
}

/// One `name: value` line of a head.
pub(crate) fn put_field(out: &mut Vec<u8>, name: impl AsRef<[u8]>, value: &[u8]) {
    out.extend_from_slice(name.as_ref());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A chunk's size line: `size` in hex, then CRLF.
pub(crate) fn chunk_size_line(buf: &mut [u8; 18], size: usize) -> &[u8] {
    let digits = (usize::BITS - size.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, digit) in buf[..digits].iter_mut().enumerate() {
        let nibble = (size >> ((digits - 1 - i) * 4)) & 0xf;
        *digit = b"0123456789abcdef"[nibble];
    }
    buf[digits] = b'\r';
    buf[digits + 1] = b'\n';
    &buf[..digits + 2]
}

/// Which way an I/O operation goes.
#[derive(Clone, Copy)]
pub(crate) enum Direction {
    Read,
    Write,
}

/// Who is at the other end of a connection: errors name it and count
/// against it (`into_up` for a backend, `into_down` for a client).
#[derive(Clone, Copy)]
pub(crate) enum Peer {
    Backend,
    Client,
}

impl Peer {
    /// `e`, counted against this peer.
    fn blame(self, e: BError) -> BError {
        match self {
            Peer::Backend => e.into_up(),
            Peer::Client => e.into_down(),
        }
    }
}

/// The deadline of a wait whose limit is past the clock's range.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 86_400);

/// One connection's timer for its reads and writes, moved lazily.
///
/// A timer per operation costs a clock read for each and, for each that
/// waits, an entry put into and taken out of the runtime's timer wheel. A
/// connection waits on one operation at a time, so one timer serves them
/// all: an operation that completes at once reads no clock; one that waits
/// sets its deadline, and the timer, still armed for an earlier wait, is
/// moved only when it fires before that deadline (or would fire after it).
/// On a busy keep-alive connection the timer then fires about once per
/// limit instead of being set and cancelled for every request.
#[derive(Default)]
pub struct Deadline {
    timer: Option<Pin<Box<Sleep>>>,
    /// An operation had to wait since [`Self::take_waited`] last said.
    waited: bool,
}

impl Deadline {
    /// Whether an operation has had to wait since the last time this was
    /// asked.
    pub(crate) fn take_waited(&mut self) -> bool {
        std::mem::take(&mut self.waited)
    }

    /// `op` bounded by `limit` (none: unbounded), its failure and its
    /// timeout as the peer's errors.
    // (Not `async`: the future is `bound_since`'s own, with no layer of
    // its own to poll on every wake-up.)
    pub(crate) fn bound<T>(
        &mut self,
        limit: Option<Duration>,
        op: impl Future<Output = std::io::Result<T>>,
        dir: Direction,
        peer: Peer,
    ) -> impl Future<Output = Result<T, BError>> {
        self.bound_since(limit, None, op, dir, peer)
    }

    /// [`Self::bound`], with `limit` counted from `since` (when given)
    /// rather than from when `op` first has to wait: a time the caller has
    /// already read from the clock, from which the wait is to be counted
    /// (the end of the last response, a request's send time).
    pub(crate) async fn bound_since<T>(
        &mut self,
        limit: Option<Duration>,
        since: Option<Instant>,
        op: impl Future<Output = std::io::Result<T>>,
        dir: Direction,
        peer: Peer,
    ) -> Result<T, BError> {
        let done = match limit {
            Some(limit) => self.within(limit, since, op).await,
            None => {
                let mut op = std::pin::pin!(op);
                Some(
                    std::future::poll_fn(|cx| {
                        let polled = op.as_mut().poll(cx);
                        self.waited |= polled.is_pending();
                        polled
                    })
                    .await,
                )
            }
        };
        let Some(done) = done else {
            return Err(timed_out(dir, peer));
        };
        done.map_err(|e| {
            let (kind, what) = match (dir, peer) {
                (Direction::Read, Peer::Backend) => {
                    (ErrorType::ReadError, "reading from the backend")
                }
                (Direction::Write, Peer::Backend) => {
                    (ErrorType::WriteError, "writing to the backend")
                }
                (Direction::Read, Peer::Client) => {
                    (ErrorType::ReadError, "reading from the client")
                }
                (Direction::Write, Peer::Client) => {
                    (ErrorType::WriteError, "writing to the client")
                }
            };
            peer.blame(Error::because(kind, what, e))
        })
    }

    /// `op`'s output, or `None` if it has not completed `limit` after
    /// `since` or, without it, after it first had to wait. The operation is
    /// polled before the timer, so an operation ready at its deadline still
    /// completes.
    async fn within<T>(
        &mut self,
        limit: Duration,
        since: Option<Instant>,
        op: impl Future<Output = T>,
    ) -> Option<T> {
        let mut op = std::pin::pin!(op);
        let mut due = None;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = op.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            self.waited = true;
            let due = *due.get_or_insert_with(|| {
                // A limit past the clock's range is as good as none (as
                // with tokio's own timeout).
                let now = since.unwrap_or_else(Instant::now);
                now.checked_add(limit).unwrap_or(now + FAR_FUTURE)
            });
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            if timer.deadline() > due {
                timer.as_mut().reset(due);
            }
            while timer.as_mut().poll(cx).is_ready() {
                if timer.deadline() >= due {
                    return Poll::Ready(None);
                }
                // It fired for an earlier wait: on to this one's deadline.
                timer.as_mut().reset(due);
            }
            Poll::Pending
        })
        .await
    }
}

/// Up to `left` bytes from the front of `buf`, and how many are left after
/// them.
pub(crate) fn take_up_to(buf: &mut BytesMut, left: u64) -> (Bytes, u64) {
    let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
    (buf.split_to(take).freeze(), left - take as u64)
}

/// The items of a comma-separated field value (`Connection`,
/// `Transfer-Encoding`), trimmed of spaces and tabs (HTTP's whitespace, not
/// Unicode's: `chunked` followed by a no-break space is no `chunked`),
/// empty ones skipped.
pub fn list_items(text: &str) -> impl Iterator<Item = &str> {
    text.split(',')
        .map(|t| t.trim_matches([' ', '\t']))
        .filter(|t| !t.is_empty())
}

/// RFC 9110's token: one or more of `tchar`.
pub(crate) fn is_token(text: &[u8]) -> bool {
    !text.is_empty()
        && text
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
}

/// RFC 9110 §10.1.4's `transfer-coding`: a token, then parameters
/// (`;name=value`, the value a token or a quoted string).
fn is_coding(text: &str) -> bool {
    let mut parts = text.split(';');
    parts
        .next()
        .is_some_and(|name| is_token(name.trim_end().as_bytes()))
        && parts.all(|param| {
            param.split_once('=').is_some_and(|(name, value)| {
                let value = value.trim();
                is_token(name.trim().as_bytes())
                    && (is_token(value.as_bytes())
                        || (value.len() >= 2
                            && value.starts_with('"')
                            && value.ends_with('"')
                            && !value[1..value.len() - 1].contains('"')))
            })
        })
}

/// How every HTTP/1 response begins.
const STATUS_START: &[u8] = b"HTTP/";

fn bad_chunk(why: &str) -> BError {
    bad_response(format!("the backend's chunked body is malformed: {why}"))
}

/// What the chunked decoder made of the bytes it had.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// Body data.
    Data(Bytes),
    /// It needs more bytes.
    More,
    /// The last chunk and the trailer section are through.
    End,
}

/// Decodes a chunked body (RFC 9112 §7.1) from the bytes in `buf`,
/// consuming what it used: data as soon as there is some, with the state to
/// go on from. Chunk extensions and trailer fields are dropped. An error
/// says what is malformed.
pub(crate) fn decode_chunked(
    mut state: Chunk,
    buf: &mut BytesMut,
) -> Result<(Decoded, Chunk), &'static str> {
    loop {
        match state {
            Chunk::Size => {
                if buf.first().is_some_and(|b| !b.is_ascii_hexdigit()) {
                    return Err("a chunk size is not a hex number");
                }
                match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, _))) if used > MAX_CHUNK_LINE => {
                        return Err("a chunk-size line is too long");
                    }
                    Ok(httparse::Status::Complete((used, size))) => {
                        // The parser skips a chunk extension's bytes
                        // unread: no control byte may hide in one, since a
                        // parser in front could split the line elsewhere.
                        if !buf[..used].ends_with(b"\r\n")
                            || !buf[..used - 2].iter().all(|&b| visible_or_blank(b))
                        {
                            return Err("a chunk-size line holds a control byte");
                        }
                        // Whitespace may come after the size only before an
                        // extension (RFC 9112 §7.1), as parsers in front
                        // take it.
                        // (`trim_ascii_start` trims spaces and tabs here:
                        // the other ASCII whitespace, control bytes, was
                        // refused above.)
                        let line = &buf[..used - 2];
                        let after =
                            &line[line.iter().take_while(|b| b.is_ascii_hexdigit()).count()..];
                        if !after.is_empty() && !after.trim_ascii_start().starts_with(b";") {
                            return Err(
                                "a chunk-size line has whitespace after its size and no extension",
                            );
                        }
                        buf.advance(used);
                        state = if size == 0 {
                            Chunk::Trailers(0)
                        } else {
                            Chunk::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() < MAX_CHUNK_LINE => {
                        return Ok((Decoded::More, state));
                    }
                    Ok(httparse::Status::Partial) => {
                        return Err("a chunk-size line is too long");
                    }
                    Err(_) => return Err("a chunk-size line is malformed"),
                }
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok((Decoded::More, state));
                }
                let (data, left) = take_up_to(buf, left);
                let next = if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                };
                return Ok((Decoded::Data(data), next));
            }
            Chunk::DataEnd => {
                let want = &b"\r\n"[..buf.len().min(2)];
                if buf[..want.len()] != *want {
                    return Err("a chunk's data is longer than its size");
                }
                if buf.len() < 2 {
                    return Ok((Decoded::More, state));
                }
                buf.advance(2);
                state = Chunk::Size;
            }
            Chunk::Trailers(seen) => {
                let Some(end) = buf.iter().position(|b| *b == b'\n') else {
                    if seen + buf.len() > MAX_TRAILERS {
                        return Err("the trailer fields are too large");
                    }
                    return Ok((Decoded::More, state));
                };
                if end == 0 || buf[end - 1] != b'\r' {
                    return Err("a trailer line does not end in CRLF");
                }
                let last = end == 1;
                if !last && !field_line(&buf[..end - 1]) {
                    return Err("a trailer line is not a field line");
                }
                buf.advance(end + 1);
                if last {
                    return Ok((Decoded::End, state));
                }
                if seen + end + 1 > MAX_TRAILERS {
                    return Err("the trailer fields are too large");
                }
                state = Chunk::Trailers(seen + end + 1);
            }
        }
    }
}

/// A byte a field value or chunk extension may hold: visible ASCII,
/// space, tab, or any byte past ASCII (obs-text).
fn visible_or_blank(b: u8) -> bool {
    b == b'\t' || (b >= b' ' && b != 0x7f)
}

/// `name: value` as RFC 9110 §5 has a field line: a token, a colon, and a
/// value without control bytes.
fn field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    edgeroute_config::is_token(&line[..colon])
        && line[colon + 1..].iter().all(|&b| visible_or_blank(b))
}

/// How a response body is delimited, from its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Chunked,
    Length(u64),
    UntilClose,
}

/// RFC 9112 §6.3: `Transfer-Encoding` ending in `chunked` means chunks,
/// other codings mean the body runs to the end of the connection; else a
/// `Content-Length` (repeated only with the same value) gives the length;
/// else the body runs to the end of the connection. A length that is not a
/// number, two different ones, or a `Transfer-Encoding` that is not a list
/// of codings make the response unusable.
///
/// The fields are left saying what was decided, for the client's framing
/// to follow: the codings on one line, and no `Content-Length` beside them.
pub fn body_framing(fields: &mut Fields) -> Result<Framing, BError> {
    if fields.contains("transfer-encoding") {
        let mut codings = String::new();
        let mut chunked = false;
        for value in fields.get_all("transfer-encoding") {
            let text = std::str::from_utf8(value)
                .map_err(|_| bad_response("the backend's Transfer-Encoding is not text"))?;
            for coding in list_items(text) {
                if !is_coding(coding) {
                    return Err(bad_response(format!(
                        "the backend's Transfer-Encoding holds {coding:?}, which is no transfer coding"
                    )));
                }
                if !codings.is_empty() {
                    codings.push_str(", ");
                }
                codings.push_str(coding);
                chunked = coding.eq_ignore_ascii_case("chunked");
            }
        }
        let line = HeaderValue::from_str(&codings)
            .ok()
            .filter(|_| !codings.is_empty())
            .ok_or_else(|| bad_response("the backend's Transfer-Encoding names no coding"))?;
        fields.insert(header::TRANSFER_ENCODING, line);
        fields.remove("content-length");
        return Ok(if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    match declared_length(fields) {
        Ok(Some(n)) => Ok(Framing::Length(n)),
        Ok(None) => Ok(Framing::UntilClose),
        Err(BadLength::NotANumber) => {
            Err(bad_response("the backend's Content-Length is not a number"))
        }
        Err(BadLength::Differ) => Err(bad_response(
            "the backend sent two different Content-Length values",
        )),
    }
}

/// Why `Content-Length` fields give no length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadLength {
    NotANumber,
    /// Two values (fields or list items) differ.
    Differ,
}

/// The length a message's `Content-Length` fields give, if any: every
/// value, and every item of a value that is a list, must be the same
/// number. Repeated values are left as one field holding the number, so
/// what goes on is unambiguous.
pub(crate) fn declared_length(fields: &mut Fields) -> Result<Option<u64>, BadLength> {
    let length = length_of(fields.get_all("content-length"))?;
    if let Some((n, false)) = length {
        fields.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(length.map(|(n, _)| n))
}

/// The length the `Content-Length` values given say, and whether it came
/// clean: one field holding only digits.
fn length_of<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Option<(u64, bool)>, BadLength> {
    let mut length = None;
    let mut clean = true;
    for (i, value) in values.enumerate() {
        clean &= i == 0 && value.iter().all(u8::is_ascii_digit);
        for part in value.split(|b| *b == b',') {
            let part = part.trim_ascii();
            let n = (!part.is_empty() && part.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(part).ok()?.parse::<u64>().ok())
                .flatten()
                .ok_or(BadLength::NotANumber)?;
            if length.is_some_and(|l| l != n) {
                return Err(BadLength::Differ);
            }
            length = Some(n);
        }
    }
    Ok(length.map(|n| (n, clean)))
}

/// A read at most this long that starts a head is parsed at once: the
/// parser finds the empty line that ends a whole head, so nothing searches
/// for it first. A longer read, or a head that comes in pieces, is searched
/// as it arrives ([`head_end`]) and parsed once, when whole.
pub(crate) const QUICK_HEAD: usize = 4 * 1024;

/// All of `buf`, frozen, if it is a short first read of a head
/// ([`QUICK_HEAD`]) to parse at once; hand it back with [`after_quick`].
/// Bytes that begin with an empty line are left to the search: it ends a
/// head there, where the parser would skip the line.
pub(crate) fn quick_head(buf: &mut BytesMut, scanned: usize) -> Option<Bytes> {
    let starts_a_line = buf.first().is_some_and(|b| !matches!(b, b'\r' | b'\n'));
    (scanned == 0 && starts_a_line && buf.len() <= QUICK_HEAD).then(|| buf.split().freeze())
}

/// Hands back the bytes [`quick_head`] took: those after a head of `len`
/// bytes (the body's start, or the next head), or all of them if they held
/// no whole head (`None`).
pub(crate) fn after_quick(buf: &mut BytesMut, whole: Bytes, len: Option<usize>) {
    match len {
        Some(len) => buf.extend_from_slice(&whole[len..]),
        None => {
            // Without the empty remainder of `buf`, `whole` is the buffer's
            // only handle and becomes it again, with no copy (unless a
            // handle to it is still held elsewhere).
            drop(std::mem::take(buf));
            *buf = BytesMut::from(whole);
        }
    }
}

/// Where the head at the start of `bytes` ends: just past the empty line
/// that closes it (CRLF CRLF, or the bare-LF forms a parser accepts): the
/// first LF followed by CRLF or by another LF. The search starts at `from`,
/// where an earlier one left off. Two vectorised searches for the two
/// endings rather than a stop at every line.
pub(crate) fn head_end(bytes: &[u8], from: usize) -> Option<usize> {
    static CRLF_END: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"\n\r\n"));
    static LF_END: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"\n\n"));
    let rest = &bytes[from.min(bytes.len())..];
    let crlf = CRLF_END.find(rest);
    // A bare-LF ending counts only if it comes first.
    let before = crlf.map_or(rest.len(), |i| i + 1);
    let end = match LF_END.find(&rest[..before]) {
        Some(i) => i + 2,
        None => crlf? + 3,
    };
    Some(bytes.len() - rest.len() + end)
}

/// Whether an answer has no body whatever its fields say (RFC 9112 §6.3):
/// it answers a `HEAD` (`head`), or it is a `204` or a `304`.
pub(crate) fn no_body(head: bool, status: StatusCode) -> bool {
    head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
}

/// Whether `version` (and the byte after it) begins `HTTP/1.2` to `HTTP/1.9`:
/// a later minor version of HTTP/1, which a recipient serves as the
/// highest it speaks, HTTP/1.1 (RFC 9110 §2.5). The parser takes only
/// `1.0` and `1.1`.
pub(crate) fn later_minor(version: &[u8]) -> bool {
    matches!(
        version,
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'2'..=b'9', end, ..]
            if matches!(end, b' ' | b'\r' | b'\n')
    )
}

/// `data` with the byte at `at` (a minor version's digit) made `1`: a
/// copy, for the rare message of a later minor version.
pub(crate) fn as_http11(data: &Bytes, at: usize) -> Bytes {
    let mut copy = BytesMut::from(&data[..]);
    copy[at] = b'1';
    copy.freeze()
}

/// Parses a response head at the start of `data`: the head, its HTTP
/// version and its length, or `None` if more bytes are needed.
fn parse_head(data: &Bytes) -> Result<Option<(ResponseHead, Version, usize)>, BError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .allow_spaces_after_header_name_in_responses(true)
        .parse_response_with_uninit_headers(&mut resp, data, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(bad_response(format!(
                "the backend's response has more than {MAX_FIELDS} fields"
            )));
        }
        Err(httparse::Error::Version) if later_minor(data) => {
            return parse_head(&as_http11(data, 7));
        }
        Err(e) => {
            return Err(bad_response(format!(
                "the backend's response head is malformed: {e}"
            )));
        }
    };
    let version = match resp.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // RFC 9110 §15: a status is 100 to 599 (the parser takes any three
    // digits).
    let status = resp
        .code
        .filter(|c| (100..600).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| bad_response("the backend's response has no valid status code"))?;
    let reason = resp
        .reason
        .filter(|r| Some(*r) != status.canonical_reason())
        .map(str::to_owned);
    let mut fields = Fields::read_from(data.clone(), resp.headers.len() + 2);
    for field in resp.headers.iter() {
        // The parser checked both: a name is a token, a value holds no
        // control bytes but tab.
        fields
            .push_read(field.name.as_bytes(), field.value)
            .map_err(|_| bad_response("the backend's response head could not be read"))?;
    }
    Ok(Some((
        ResponseHead {
            status,
            reason,
            fields,
            framing: None,
        },
        version,
        len,
    )))
}

/// The error for a wait on `peer` in direction `dir` that ran out of time.
pub(crate) fn timed_out(dir: Direction, peer: Peer) -> BError {
    let (kind, why) = match (dir, peer) {
        (Direction::Read, Peer::Backend) => (
            ErrorType::ReadTimedout,
            "the backend sent nothing for timeouts.read",
        ),
        (Direction::Write, Peer::Backend) => (
            ErrorType::WriteTimedout,
            "the backend took nothing for timeouts.write",
        ),
        (Direction::Read, Peer::Client) => (
            ErrorType::ReadTimedout,
            "the client sent nothing within its idle limit",
        ),
        (Direction::Write, Peer::Client) => (
            ErrorType::WriteTimedout,
            "the client took nothing within its idle limit",
        ),
    };
    peer.blame(Error::explain(kind, why))
}

/// A connected pair for tests: the proxy's end as a Pingora stream, and the
/// peer's.
#[cfg(test)]
pub(crate) async fn stream_pair() -> (Stream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let ours = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (theirs, _) = listener.accept().await.expect("accept");
    let ours = pingora_core::protocols::l4::stream::Stream::from(ours);
    (Box::new(ours), theirs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::AsyncWriteExt;

    /// A timer for a test's connection, kept for the test's whole run.
    fn test_timer() -> &'static mut Deadline {
        Box::leak(Box::default())
    }

    /// An I/O operation that completes after `after`, or never.
    async fn done_after(after: Option<Duration>) -> std::io::Result<u8> {
        match after {
            Some(after) => tokio::time::sleep(after).await,
            None => std::future::pending().await,
        }
        Ok(7)
    }

    async fn bounded(
        deadline: &mut Deadline,
        limit: u64,
        after: Option<u64>,
    ) -> Result<u8, BError> {
        let op = done_after(after.map(Duration::from_secs));
        let limit = Some(Duration::from_secs(limit));
        deadline
            .bound(limit, op, Direction::Read, Peer::Backend)
            .await
    }

    #[tokio::test]
    async fn an_operation_done_at_once_arms_no_timer() {
        let mut deadline = Deadline::default();
        let out = deadline
            .bound(
                Some(Duration::from_secs(1)),
                async { Ok(3) },
                Direction::Write,
                Peer::Client,
            )
            .await;
        assert_eq!(out.expect("done"), 3);
        assert!(deadline.timer.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_at_its_limit() {
        let mut deadline = Deadline::default();
        let start = Instant::now();
        let e = bounded(&mut deadline, 10, None)
            .await
            .expect_err("timed out");
        assert_eq!(e.etype(), &ErrorType::ReadTimedout);
        assert_eq!(e.esource(), &pingora_error::ErrorSource::Upstream);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_counted_from_an_earlier_time_ends_its_limit_after_it() {
        let mut deadline = Deadline::default();
        let start = Instant::now();
        tokio::time::advance(Duration::from_secs(3)).await;
        let op = done_after(None);
        let limit = Some(Duration::from_secs(10));
        let e = deadline
            .bound_since(limit, Some(start), op, Direction::Read, Peer::Backend)
            .await
            .expect_err("timed out");
        assert_eq!(e.etype(), &ErrorType::ReadTimedout);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_first_wait_for_an_answer_counts_from_its_send_time() {
        let (ours, _peer) = stream_pair().await;
        let limit = Some(Duration::from_secs(10));
        let mut conn = Connection::new(Idle::new(ours), limit, None, test_timer());
        let start = Instant::now();
        tokio::time::advance(Duration::from_secs(3)).await;
        conn.count_answer_from(start.into_std());
        let e = conn.read_head(false, false).await.expect_err("no answer");
        assert_eq!(e.etype(), &ErrorType::ReadTimedout);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        // The next wait has its whole limit.
        conn.read_head(false, false).await.expect_err("no answer");
        assert_eq!(start.elapsed(), Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_wait_for_the_same_answer_has_its_whole_limit() {
        let (ours, mut peer) = stream_pair().await;
        let limit = Some(Duration::from_secs(10));
        let mut conn = Connection::new(Idle::new(ours), limit, None, test_timer());
        let start = Instant::now();
        conn.count_answer_from(start.into_std());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(9)).await;
            peer.write_all(b"HTTP/1.1 2").await.expect("write");
            std::future::pending::<()>().await;
        });
        conn.read_head(false, false)
            .await
            .expect_err("no whole head");
        assert_eq!(start.elapsed(), Duration::from_secs(19));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_after_a_write_that_waited_counts_from_its_own_wait() {
        let (ours, _peer) = stream_pair().await;
        let limit = Some(Duration::from_secs(10));
        let mut conn = Connection::new(Idle::new(ours), limit, None, test_timer());
        let start = Instant::now();
        conn.count_answer_from(start.into_std());
        // A write that waits four seconds.
        let write = done_after(Some(Duration::from_secs(4)));
        conn.deadline
            .bound(limit, write, Direction::Write, Peer::Backend)
            .await
            .expect("written");
        conn.read_head(false, false).await.expect_err("no answer");
        assert_eq!(start.elapsed(), Duration::from_secs(14));
    }

    #[tokio::test]
    async fn a_response_after_empty_lines_is_refused_however_it_arrives() {
        let (ours, _peer) = stream_pair().await;
        let mut conn = Connection::new(Idle::new(ours), None, None, test_timer());
        let wire = b"\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        for cut in [wire.len(), 4, 6] {
            conn.buf.clear();
            conn.head_scan = 0;
            conn.buf.extend_from_slice(&wire[..cut]);
            let err = conn.take_head().expect_err("an empty head");
            assert!(
                err.to_string().contains("empty line"),
                "{err}, cut at {cut}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_left_from_an_earlier_wait_cuts_no_later_one_short() {
        let mut deadline = Deadline::default();
        let start = Instant::now();
        // Armed for second 10; done at second 3.
        assert_eq!(bounded(&mut deadline, 10, Some(3)).await.expect("first"), 7);
        // Due at second 13: the timer fires at 10 and moves on.
        assert_eq!(
            bounded(&mut deadline, 10, Some(9)).await.expect("second"),
            7
        );
        assert_eq!(start.elapsed(), Duration::from_secs(12));
        // A wait that never ends still ends at its own limit.
        bounded(&mut deadline, 10, None)
            .await
            .expect_err("timed out");
        assert_eq!(start.elapsed(), Duration::from_secs(22));
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_past_the_clock_s_range_waits_without_end() {
        let mut deadline = Deadline::default();
        let op = done_after(Some(Duration::from_secs(3600)));
        let out = deadline
            .bound(Some(Duration::MAX), op, Direction::Read, Peer::Client)
            .await;
        assert_eq!(out.expect("done"), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_limit_pulls_the_timer_in() {
        let mut deadline = Deadline::default();
        let start = Instant::now();
        // Armed for second 60; done at second 1.
        bounded(&mut deadline, 60, Some(1)).await.expect("first");
        bounded(&mut deadline, 5, None)
            .await
            .expect_err("timed out");
        assert_eq!(start.elapsed(), Duration::from_secs(6));
        // And a ready operation still wins at the deadline itself.
        assert_eq!(
            bounded(&mut deadline, 5, Some(5)).await.expect("on time"),
            7
        );
    }

    /// A connection whose backend sends `wire`, then closes if `close`.
    /// The backend stays open (unless it closes) until the test's runtime ends.
    async fn answered(wire: &[u8], close: bool) -> Connection<'static> {
        let (ours, mut theirs) = stream_pair().await;
        let wire = wire.to_vec();
        tokio::spawn(async move {
            theirs.write_all(&wire).await.expect("write");
            if close {
                theirs.shutdown().await.expect("shutdown");
            }
            std::future::pending::<()>().await;
            drop(theirs);
        });
        let mut conn = Connection::new(Idle::new(ours), None, None, test_timer());
        conn.write_head(b"GET / HTTP/1.1\r\n\r\n".to_vec(), false);
        conn.finish_request().await.expect("finish");
        conn
    }

    #[tokio::test]
    async fn the_next_exchange_reads_into_the_memory_of_the_last() {
        const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        let (ours, mut theirs) = stream_pair().await;
        let mut idle = Idle::new(ours);
        let mut bodies = Vec::new();
        for _ in 0..2 {
            let mut conn = Connection::new(idle, None, None, test_timer());
            conn.write_head(b"GET / HTTP/1.1\r\n\r\n".to_vec(), false);
            conn.finish_request().await.expect("finish");
            theirs.write_all(ANSWER).await.expect("answer");
            conn.read_head(false, false).await.expect("head");
            let body = conn.read_body().await.expect("body").expect("bytes");
            assert_eq!(&body[..], b"hello");
            assert_eq!(conn.read_body().await.expect("end"), None);
            // Kept alive: the first allocation cannot be handed out again.
            bodies.push(body);
            idle = conn.into_reusable().expect("reusable");
        }
        let (first, second) = (bodies[0].as_ptr() as usize, bodies[1].as_ptr() as usize);
        assert!(
            second > first && second - first < READ_ROOM,
            "the second answer was read into a new buffer ({first:#x}, {second:#x})"
        );
    }

    #[tokio::test]
    async fn a_silent_backend_is_a_read_timeout_on_its_side() {
        let mut conn = answered(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", false).await;
        conn.read_timeout = Some(Duration::from_millis(50));
        let resp = conn.read_head(false, false).await.expect("head");
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(
            conn.read_body().await.expect("first bytes").as_deref(),
            Some(&b"ab"[..])
        );
        let e = conn.read_body().await.expect_err("nothing more comes");
        assert_eq!(e.etype(), &ErrorType::ReadTimedout);
        assert_eq!(e.esource(), &pingora_error::ErrorSource::Upstream);
        assert!(e.to_string().contains("timeouts.read"), "{e}");
    }

    async fn whole_body(conn: &mut Connection<'_>) -> Result<Vec<u8>, BError> {
        let mut body = Vec::new();
        while let Some(piece) = conn.read_body().await? {
            body.extend_from_slice(&piece);
        }
        Ok(body)
    }

    #[tokio::test]
    async fn a_sized_response_is_read_whole_and_leaves_the_connection_reusable() {
        let mut conn = answered(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello",
            false,
        )
        .await;
        let head = conn.read_head(false, false).await.expect("head");
        assert_eq!(head.status, 200);
        assert_eq!(head.reason, None);
        assert_eq!(head.framing, Some(Framing::Length(5)));
        assert_eq!(head.fields.get_all("x-a").count(), 2);
        assert_eq!(whole_body(&mut conn).await.expect("body"), b"hello");
        assert!(conn.into_reusable().is_some());
    }

    /// What a backend sent after a `HEAD` answer arrives as the next
    /// exchange's first bytes: no answer to that request, so the request
    /// may go again on a fresh connection; a real answer's first bytes,
    /// however few, are one.
    #[tokio::test]
    async fn bytes_that_cannot_begin_a_response_are_no_answer() {
        let mut conn = answered(b"hello", true).await;
        conn.read_head(false, false).await.expect_err("no response");
        assert!(!conn.answered());
        let mut conn = answered(b"HT", true).await;
        conn.read_head(false, false).await.expect_err("cut short");
        assert!(conn.answered());
        let mut conn = answered(b"\r\nHTTP/1.1 204 No Content\r\n\r\n", false).await;
        conn.read_head(false, false).await.expect("head");
        assert!(conn.answered());
        let mut conn = answered(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false).await;
        conn.read_head(false, false).await.expect("head");
        assert!(conn.answered());
    }

    #[tokio::test]
    async fn bytes_beyond_the_response_make_the_connection_unusable() {
        let mut conn = answered(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
            false,
        )
        .await;
        conn.read_head(false, false).await.expect("head");
        assert_eq!(whole_body(&mut conn).await.expect("body"), b"ok");
        assert!(conn.into_reusable().is_none());
    }

    #[tokio::test]
    async fn a_chunked_response_is_decoded_and_its_trailers_dropped() {
        let mut conn = answered(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Sum: 1\r\n\r\n",
            false,
        )
        .await;
        let head = conn.read_head(false, false).await.expect("head");
        assert_eq!(head.framing, Some(Framing::Chunked));
        assert_eq!(
            whole_body(&mut conn).await.expect("body"),
            b"hello 0123456789"
        );
        assert!(conn.into_reusable().is_some());
    }

    #[tokio::test]
    async fn a_body_without_length_runs_to_the_close() {
        let mut conn = answered(b"HTTP/1.1 200 OK\r\n\r\nall of it", true).await;
        let head = conn.read_head(false, false).await.expect("head");
        assert_eq!(head.framing, None, "the fields say nothing of a length");
        assert_eq!(whole_body(&mut conn).await.expect("body"), b"all of it");
        assert!(conn.into_reusable().is_none());
    }

    #[tokio::test]
    async fn head_204_and_304_answers_have_no_body() {
        for (wire, head_request) in [
            (&b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"[..], true),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                true,
            ),
            (b"HTTP/1.1 204 No Content\r\n\r\n", false),
            // A 204's length frames nothing (RFC 9110 §8.6): the
            // connection still serves the next request.
            (
                b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                false,
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
                false,
            ),
        ] {
            let mut conn = answered(wire, false).await;
            conn.read_head(head_request, false).await.expect("head");
            assert_eq!(conn.read_body().await.expect("body"), None);
            assert!(conn.into_reusable().is_some(), "{wire:?}");
        }
    }

    #[tokio::test]
    async fn interim_answers_are_bounded_in_number() {
        let mut wire = b"HTTP/1.1 103 Early Hints\r\n\r\n".repeat(MAX_INTERIM);
        wire.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let mut conn = answered(&wire, false).await;
        assert_eq!(
            conn.read_head(false, false).await.expect("head").status,
            200
        );
        let mut wire = b"HTTP/1.1 103 Early Hints\r\n\r\n".repeat(MAX_INTERIM + 1);
        wire.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let mut conn = answered(&wire, false).await;
        let err = conn.read_head(false, false).await.expect_err("refused");
        assert_eq!(err.etype(), &ErrorType::InvalidHTTPHeader, "{err}");
    }

    /// Each byte of the head comes well within the read timeout of the
    /// last, but the whole head is due within it of its first byte.
    #[tokio::test]
    async fn a_trickled_head_is_due_within_the_read_timeout_of_its_start() {
        let (ours, mut theirs) = stream_pair().await;
        tokio::spawn(async move {
            let head = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Pad: 0123456789\r\n\r\n";
            for byte in head {
                if theirs.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            std::future::pending::<()>().await;
        });
        let mut conn = Connection::new(
            Idle::new(ours),
            Some(Duration::from_millis(200)),
            None,
            test_timer(),
        );
        conn.write_head(b"GET / HTTP/1.1\r\n\r\n".to_vec(), false);
        conn.finish_request().await.expect("finish");
        let err = conn.read_head(false, false).await.expect_err("cut off");
        assert_eq!(err.etype(), &ErrorType::ReadTimedout, "{err}");
        assert_eq!(err.esource(), &pingora_error::ErrorSource::Upstream);
    }

    #[tokio::test]
    async fn interim_answers_are_skipped_but_a_switch_is_not() {
        let mut conn = answered(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
              HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .await;
        assert_eq!(
            conn.read_head(false, false).await.expect("head").status,
            201
        );

        const SWITCH: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nraw";
        let mut conn = answered(SWITCH, false).await;
        assert_eq!(conn.read_head(false, true).await.expect("head").status, 101);
        // What came after the head goes first through the tunnel.
        assert_eq!(conn.tunnel().0, Bytes::from("raw"));
        // A switch nobody asked for is no answer the client could read.
        let mut conn = answered(SWITCH, false).await;
        let err = conn.read_head(false, false).await.expect_err("refused");
        assert_eq!(err.etype(), &ErrorType::InvalidHTTPHeader);
        // Nor is a switch to anything but the WebSocket asked for.
        for other in [
            &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"[..],
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ] {
            let mut conn = answered(other, false).await;
            let err = conn.read_head(false, true).await.expect_err("refused");
            assert_eq!(err.etype(), &ErrorType::InvalidHTTPHeader);
        }
    }

    #[tokio::test]
    async fn keep_alive_follows_the_version_and_connection() {
        for (wire, reusable) in [
            (&b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..], true),
            (
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                false,
            ),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false),
            (
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
                true,
            ),
            // Faulty framing for HTTP/1.0: the connection ends with it.
            (
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                false,
            ),
            // A length beside a coding: framed by the coding, not kept.
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                false,
            ),
        ] {
            let mut conn = answered(wire, false).await;
            conn.read_head(false, false).await.expect("head");
            assert_eq!(conn.read_body().await.expect("body"), None);
            assert_eq!(conn.into_reusable().is_some(), reusable, "{wire:?}");
        }
    }

    #[tokio::test]
    async fn a_custom_reason_phrase_is_kept() {
        let mut conn = answered(
            b"HTTP/1.1 503 Back Soon\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .await;
        let head = conn.read_head(false, false).await.expect("head");
        assert_eq!(head.reason.as_deref(), Some("Back Soon"));
    }

    #[tokio::test]
    async fn a_close_before_the_end_is_an_error() {
        for (wire, head_ok) in [
            (&b""[..], false),
            (b"HTTP/1.1 200 OK\r\nContent-Le", false),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort", true),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
                true,
            ),
        ] {
            let mut conn = answered(wire, true).await;
            let err = match conn.read_head(false, false).await {
                Ok(_) => {
                    assert!(head_ok, "{wire:?}");
                    whole_body(&mut conn).await.expect_err("cut short")
                }
                Err(e) => {
                    assert!(!head_ok, "{wire:?}: {e}");
                    // A close without a byte may be a pooled connection
                    // closed just then; part of a head is an answer.
                    assert_eq!(conn.answered(), !wire.is_empty(), "{wire:?}");
                    e
                }
            };
            assert_eq!(err.etype(), &ErrorType::ConnectionClosed, "{wire:?}");
            assert_eq!(err.esource(), &pingora_error::ErrorSource::Upstream);
        }
    }

    #[tokio::test]
    async fn a_malformed_response_is_refused() {
        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        while huge.len() <= MAX_HEAD {
            huge.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
        }
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_FIELDS {
            many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        for wire in [
            &b"HTTP/1.1 2000 OK\r\n\r\n"[..],
            b"HTTP/1.1 999 Weird\r\n\r\n",
            b"HTTP/1.1 099 Low\r\n\r\n",
            b"SMTP ready\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            &huge,
            &many,
        ] {
            let mut conn = answered(wire, false).await;
            let err = conn.read_head(false, false).await.expect_err("refused");
            assert_eq!(err.etype(), &ErrorType::InvalidHTTPHeader, "{err}");
        }
    }

    #[tokio::test]
    async fn a_chunked_request_body_is_framed() {
        let (ours, mut theirs) = stream_pair().await;
        let mut conn = Connection::new(Idle::new(ours), None, None, test_timer());
        conn.write_head(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            true,
        );
        conn.write_body(b"hello").await.expect("body");
        // Each small piece is copied onto one buffer that stays, not onto
        // a new one per piece.
        let kept = conn.pending_head.as_ptr();
        assert!(conn.pending_head.is_empty() && conn.pending_head.capacity() > 0);
        conn.write_body(b"").await.expect("nothing");
        conn.write_body(&[b'x'; 20]).await.expect("body");
        assert_eq!(conn.pending_head.as_ptr(), kept);
        conn.finish_request().await.expect("finish");
        drop(conn);
        let mut wire = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut theirs, &mut wire)
            .await
            .expect("read");
        let mut want =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n14\r\n".to_vec();
        want.extend_from_slice(&[b'x'; 20]);
        want.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(
            String::from_utf8_lossy(&wire),
            String::from_utf8_lossy(&want)
        );
    }

    /// A writer that takes at most 3 bytes of at most 2 pieces per call,
    /// and counts its plain and its vectored writes.
    #[derive(Default)]
    struct Trickle {
        got: Vec<u8>,
        plain: usize,
        vectored: usize,
    }

    impl tokio::io::AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.plain += 1;
            let n = buf.len().min(3);
            self.got.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            self.vectored += 1;
            let mut room = 3;
            for piece in bufs.iter().take(2) {
                let n = piece.len().min(room);
                self.got.extend_from_slice(&piece[..n]);
                room -= n;
                if n < piece.len() {
                    break;
                }
            }
            Poll::Ready(Ok(3 - room))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    proptest! {
        /// Every byte of every piece goes out once, in order, however few
        /// the writer takes at a time and however many pieces there are.
        #[test]
        fn write_all_writes_every_piece_in_order(
            pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..9), 0..9),
        ) {
            let mut out = Bytes::new().chain(Bytes::new());
            let want: Vec<u8> = pieces.concat();
            let mut chained: Box<dyn Buf> = Box::new(Bytes::new());
            for piece in pieces {
                chained = Box::new(chained.chain(Bytes::from(piece)));
            }
            let mut writer = Trickle::default();
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            rt.block_on(write_all(&mut writer, &mut chained)).expect("written");
            rt.block_on(write_all(&mut writer, &mut out)).expect("nothing to write");
            prop_assert_eq!(writer.got, want);
        }
    }

    /// What is left as one piece goes out in plain writes (`send(2)` on a
    /// socket), never in a vectored write.
    #[test]
    fn one_piece_goes_out_in_plain_writes() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut writer = Trickle::default();
        // 22 bytes, 3 at a time.
        let mut out: &[u8] = b"HTTP/1.1 200 OK\r\n\r\nok\n";
        rt.block_on(write_all(&mut writer, &mut out))
            .expect("written");
        assert_eq!(writer.got, b"HTTP/1.1 200 OK\r\n\r\nok\n");
        assert_eq!((writer.plain, writer.vectored), (8, 0));

        let mut writer = Trickle::default();
        let mut out = Buf::chain(&b"head"[..], &b"body"[..]);
        rt.block_on(write_all(&mut writer, &mut out))
            .expect("written");
        assert_eq!(writer.got, b"headbody");
        // `hea`, `d`+`bo` vectored; then `dy` is one piece.
        assert_eq!((writer.plain, writer.vectored), (1, 2));
    }

    /// The limit itself is still appended; a byte more is not.
    #[test]
    fn the_append_limit_is_inclusive() {
        let piece = vec![b'x'; APPEND_LIMIT / 2];
        let mut head = b"head".to_vec();
        let out = append_small(&mut head, [&piece, &piece, b""]);
        assert_eq!(out.chunk().len(), out.remaining(), "one piece to send");
        assert_eq!(head.len(), 4 + APPEND_LIMIT);
        let mut head = b"head".to_vec();
        let out = append_small(&mut head, [&piece, &piece, b"!"]);
        assert_eq!(out.remaining(), 4 + APPEND_LIMIT + 1);
        assert_eq!(head, b"head");
    }

    proptest! {
        /// The bytes to send stay the same, in order; they are all moved
        /// onto the head when the pieces come to at most the limit and
        /// there is more than one piece to send, else none is.
        #[test]
        fn small_pieces_are_appended_to_the_head(
            head in prop_oneof![Just(vec![]), proptest::collection::vec(any::<u8>(), 1..64)],
            lens in (
                prop_oneof![Just(0usize), 1..700usize],
                prop_oneof![Just(0usize), 1..700usize],
                prop_oneof![Just(0usize), 1..700usize],
            ),
        ) {
            let (a, b, c) = (vec![1u8; lens.0], vec![2u8; lens.1], vec![3u8; lens.2]);
            let before = [&head[..], &a, &b, &c];
            let parts = before.iter().filter(|p| !p.is_empty()).count();
            let moved = parts >= 2 && lens.0 + lens.1 + lens.2 <= APPEND_LIMIT;
            let mut joined = head.clone();
            let mut out = append_small(&mut joined, [&a, &b, &c]);
            let sent = out.copy_to_bytes(out.remaining());
            prop_assert_eq!(&sent[..], &before.concat()[..]);
            prop_assert_eq!(joined.len() - head.len(), if moved { lens.0 + lens.1 + lens.2 } else { 0 });
            // Nothing is left to follow the head exactly when it was moved.
            prop_assert_eq!(sent.len() == joined.len(), moved || lens == (0, 0, 0));
        }
    }

    /// The end of a head as a stop at every LF finds it.
    fn head_end_by_lines(bytes: &[u8], from: usize) -> Option<usize> {
        let from = from.min(bytes.len());
        (from..bytes.len()).find_map(|i| match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'\n', Some(b'\n'), _) => Some(i + 2),
            (b'\n', Some(b'\r'), Some(b'\n')) => Some(i + 3),
            _ => None,
        })
    }

    #[test]
    fn a_head_ends_at_its_first_empty_line_of_either_form() {
        for (bytes, from, want) in [
            (&b"a\r\n\r\nb\n\n"[..], 0, Some(5)),
            (b"a\n\nb\r\n\r\n", 0, Some(3)),
            // A bare LF just before the CRLF ending ends the head first.
            (b"a\n\n\r\n", 0, Some(3)),
            (b"a\r\n\r", 0, None),
            (b"a\r\n\r\n", 2, Some(5)),
            (b"a\r\n\r\n", 9, None),
        ] {
            assert_eq!(
                head_end(bytes, from),
                want,
                "{:?} from {from}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    proptest! {
        /// The two searches find the end a stop at every line finds, from
        /// any place a search may resume at.
        #[test]
        fn a_head_s_end_is_its_first_empty_line(
            bytes in proptest::collection::vec(prop_oneof![
                Just(b'\r'), Just(b'\n'), Just(b'a'), Just(b':'),
            ], 0..40),
            from in 0usize..45,
        ) {
            prop_assert_eq!(head_end(&bytes, from), head_end_by_lines(&bytes, from));
        }

        /// A head parsed at once ([`QUICK_HEAD`]: one that begins with its
        /// first line) ends where the search for its empty line finds the
        /// end: the parser takes no more and no less than a head, for
        /// requests as for responses.
        #[test]
        fn a_head_parsed_at_once_ends_at_its_first_empty_line(
            response in any::<bool>(),
            rest in proptest::collection::vec(prop_oneof![
                Just("\r"), Just("\n"), Just("\r\n"), Just("a"), Just(":"),
                Just(" "), Just("\t"), Just("X-A: 1"), Just("\r\n\r\n"),
            ], 0..24),
        ) {
            let start: &[u8] = if response { b"HTTP/1.1 200 OK\r\n" } else { b"GET / HTTP/1.1\r\n" };
            let bytes = Bytes::from([start, rest.concat().as_bytes()].concat());
            let parsed = if response {
                parse_head(&bytes).ok().flatten().map(|(_, _, len)| len)
            } else {
                // The request side's parser, as `downstream::Session` sets it.
                let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
                let mut req = httparse::Request::new(&mut []);
                match httparse::ParserConfig::default()
                    .parse_request_with_uninit_headers(&mut req, &bytes, &mut slots)
                {
                    Ok(httparse::Status::Complete(len)) => Some(len),
                    _ => None,
                }
            };
            if let Some(len) = parsed {
                prop_assert_eq!(head_end(&bytes, 0), Some(len));
            }
        }
    }

    fn fields(pairs: &[(&str, &[u8])]) -> Fields {
        Fields::parse(pairs)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing = |pairs: &[(&str, &str)]| {
            let pairs: Vec<(&str, &[u8])> = pairs.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
            body_framing(&mut fields(&pairs)).map_err(|e| e.to_string())
        };
        use Framing::*;
        assert_eq!(framing(&[]), Ok(UntilClose));
        assert_eq!(framing(&[("content-length", "5")]), Ok(Length(5)));
        assert_eq!(framing(&[("content-length", "5, 5")]), Ok(Length(5)));
        assert_eq!(
            framing(&[("content-length", "5"), ("content-length", "5")]),
            Ok(Length(5))
        );
        assert_eq!(framing(&[("transfer-encoding", "chunked")]), Ok(Chunked));
        assert_eq!(framing(&[("transfer-encoding", "chunked,")]), Ok(Chunked));
        assert_eq!(
            framing(&[
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "Chunked")
            ]),
            Ok(Chunked)
        );
        assert_eq!(
            framing(&[("transfer-encoding", "chunked, gzip")]),
            Ok(UntilClose)
        );
        assert_eq!(
            framing(&[("transfer-encoding", "chunked"), ("content-length", "5")]),
            Ok(Chunked)
        );
        for bad in ["5, 6", "+5", "0x5", "", "99999999999999999999999"] {
            assert!(framing(&[("content-length", bad)]).is_err(), "{bad:?}");
        }
        for bad in [
            "",
            " , ,",
            "a b",
            "chunked x",
            "\"chunked\"",
            "chunked;",
            "@",
            "gzip;q",
            "gzip;=1, chunked",
        ] {
            assert!(framing(&[("transfer-encoding", bad)]).is_err(), "{bad:?}");
        }
        // Parameters, a token or a quoted string each, are codings' own.
        assert_eq!(
            framing(&[("transfer-encoding", "x-custom ; a=b;c=\"d e\", chunked")]),
            Ok(Chunked)
        );
        let mut not_text = fields(&[("transfer-encoding", b"\xff, chunked")]);
        assert!(body_framing(&mut not_text).is_err());
    }

    #[test]
    fn the_fields_are_left_saying_how_the_body_was_framed() {
        // Whatever list the backend wrote, the client's framing follows the
        // one decided here: the codings on one line, no length beside them.
        for (lines, want) in [
            (&["chunked,"][..], "chunked"),
            (&["gzip", "", "chunked"], "gzip, chunked"),
            (&["chunked", " "], "chunked"),
        ] {
            let mut pairs: Vec<(&str, &[u8])> = lines
                .iter()
                .map(|l| ("transfer-encoding", l.as_bytes()))
                .collect();
            pairs.push(("content-length", b"3"));
            let mut map = fields(&pairs);
            assert_eq!(body_framing(&mut map).expect("framed"), Framing::Chunked);
            let te: Vec<_> = map.get_all("transfer-encoding").collect();
            assert_eq!(te, [want.as_bytes()], "{lines:?}");
            assert!(!map.contains("content-length"));
        }
    }

    #[test]
    fn chunk_sizes_are_written_in_hex() {
        let mut buf = [0u8; 18];
        for (size, want) in [
            (1, "1"),
            (15, "f"),
            (16, "10"),
            (4096, "1000"),
            (usize::MAX, "ffffffffffffffff"),
        ] {
            assert_eq!(
                chunk_size_line(&mut buf, size),
                format!("{want}\r\n").as_bytes()
            );
        }
    }

    #[test]
    fn repeated_lengths_are_left_as_one() {
        for pairs in [
            &[("content-length", &b"5, 5"[..])][..],
            &[("content-length", b"5"), ("content-length", b"5")],
        ] {
            let mut map = fields(pairs);
            assert_eq!(body_framing(&mut map).expect("framed"), Framing::Length(5));
            let values: Vec<_> = map.get_all("content-length").collect();
            assert_eq!(values, [b"5"], "{pairs:?}");
        }
    }

    #[tokio::test]
    async fn a_whole_head_over_the_limit_is_refused() {
        let mut wire = b"HTTP/1.1 200 OK\r\nX-Long: ".to_vec();
        wire.resize(MAX_HEAD + 10, b'a');
        wire.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
        let mut conn = answered(&wire, false).await;
        let err = conn.read_head(false, false).await.expect_err("too large");
        assert!(err.to_string().contains("over"), "{err}");
    }

    #[tokio::test]
    async fn a_head_that_arrives_in_pieces_is_read_once_whole() {
        let (ours, _peer) = stream_pair().await;
        let mut conn = Connection::new(Idle::new(ours), None, None, test_timer());
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok";
        let head_len = wire.len() - 2;
        for cut in 1..wire.len() {
            conn.buf.clear();
            conn.head_scan = 0;
            conn.buf.extend_from_slice(&wire[..cut]);
            let first = conn.take_head().expect("valid");
            let (head, _) = if cut >= head_len {
                first.unwrap_or_else(|| panic!("a whole head unread, cut at {cut}"))
            } else {
                assert!(first.is_none(), "a head before its end, cut at {cut}");
                conn.buf.extend_from_slice(&wire[cut..]);
                conn.take_head()
                    .expect("valid")
                    .unwrap_or_else(|| panic!("no head, cut at {cut}"))
            };
            assert_eq!(head.fields.get("x-a"), Some(&b"1"[..]), "cut at {cut}");
            // What followed the head stays, as the body's start.
            let read = if cut >= head_len { cut } else { wire.len() };
            assert_eq!(&conn.buf[..], &wire[head_len..read], "cut at {cut}");
        }
    }

    #[test]
    fn malformed_chunks_are_refused() {
        // A chunk-size line over the limit, whole in one read.
        let mut long = b"3;x=".to_vec();
        long.resize(MAX_CHUNK_LINE + 1, b'a');
        long.extend_from_slice(b"\r\nabc\r\n0\r\n\r\n");
        assert_eq!(decode_whole(&long), Err("a chunk-size line is too long"));
        for wire in [
            &b"x\r\n"[..],
            b"\r\n",
            b"10000000000000000\r\n",
            b"5\r\nhelloXY",
            b"5\nhello\r\n",
            b"0\r\nX-Trailer: 1\n\r\n",
            // Control bytes hidden in a chunk extension, and trailer lines
            // that are no field lines.
            b"3;foo\nbar\r\nabc\r\n0\r\n\r\n",
            b"3;a=\0\r\nabc\r\n0\r\n\r\n",
            b"0\r\nno colon\r\n\r\n",
            b"0\r\n: empty name\r\n\r\n",
            b"0\r\nX-T: a\rb\r\n\r\n",
            b"0\r\nX-T: a\0b\r\n\r\n",
            // Whitespace after a size with no extension behind it.
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"5\t\r\nhello\r\n0\r\n\r\n",
            b"0 \r\n\r\n",
        ] {
            assert!(
                decode_whole(wire).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn extensions_and_trailers_that_are_well_formed_are_taken() {
        assert_eq!(
            decode_whole(b"3;name=\"q v\";flag\r\nabc\r\n0\r\nX-T: 1\r\nEtag: \"x\"\r\n\r\n"),
            Ok(Some(b"abc".to_vec()))
        );
        // Whitespace before an extension.
        assert_eq!(
            decode_whole(b"3 ;a=1\r\nabc\r\n0\t;b\r\n\r\n"),
            Ok(Some(b"abc".to_vec()))
        );
    }

    #[test]
    fn list_items_are_trimmed_of_http_whitespace_only() {
        let items: Vec<&str> = list_items(" gzip,\tchunked ,, keep-alive").collect();
        assert_eq!(items, ["gzip", "chunked", "keep-alive"]);
        for value in ["chunked\u{a0}", "\u{85}chunked", "chunked\u{3000}"] {
            assert!(
                list_items(value).all(|i| i != "chunked"),
                "{value:?} is no chunked"
            );
        }
    }

    /// A chunked body given whole: what it decodes to, `None` if the
    /// decoder wants more bytes, or the decoder's error.
    fn decode_whole(wire: &[u8]) -> Result<Option<Vec<u8>>, &'static str> {
        let mut buf = BytesMut::from(wire);
        let mut state = Chunk::Size;
        let mut body = Vec::new();
        loop {
            match decode_chunked(state, &mut buf)? {
                (Decoded::Data(d), next) => {
                    body.extend_from_slice(&d);
                    state = next;
                }
                (Decoded::End, _) => return Ok(Some(body)),
                (Decoded::More, _) => return Ok(None),
            }
        }
    }

    proptest! {
        /// However a chunked body is cut into chunks and however its bytes
        /// arrive, the decoder gives back the body exactly and stops at its
        /// end.
        #[test]
        fn chunked_bodies_decode_whatever_the_cuts(
            body in proptest::collection::vec(any::<u8>(), 0..2000),
            chunk_sizes in proptest::collection::vec(1usize..300, 1..20),
            arrivals in proptest::collection::vec(1usize..64, 1..50),
            ext in any::<bool>(),
            trailers in any::<bool>(),
        ) {
            let mut wire = Vec::new();
            let mut rest = &body[..];
            let mut sizes = chunk_sizes.iter().cycle();
            while !rest.is_empty() {
                let n = (*sizes.next().expect("cycle")).min(rest.len());
                wire.extend_from_slice(format!("{n:X}").as_bytes());
                if ext {
                    wire.extend_from_slice(b";name=\"v\"");
                }
                wire.extend_from_slice(b"\r\n");
                wire.extend_from_slice(&rest[..n]);
                wire.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            wire.extend_from_slice(b"0\r\n");
            if trailers {
                wire.extend_from_slice(b"X-Checksum: abc\r\nX-More: 1\r\n");
            }
            wire.extend_from_slice(b"\r\n");
            let after = b"NEXT";
            wire.extend_from_slice(after);

            let mut buf = BytesMut::new();
            let mut fed = 0;
            let mut cuts = arrivals.iter().cycle();
            let mut state = Chunk::Size;
            let mut out = Vec::new();
            loop {
                match decode_chunked(state, &mut buf).expect("valid") {
                    (Decoded::Data(d), next) => {
                        out.extend_from_slice(&d);
                        state = next;
                    }
                    (Decoded::End, _) => break,
                    (Decoded::More, next) => {
                        state = next;
                        prop_assert!(fed < wire.len(), "wants more after all bytes");
                        let n = (*cuts.next().expect("cycle")).min(wire.len() - fed);
                        buf.extend_from_slice(&wire[fed..fed + n]);
                        fed += n;
                    }
                }
            }
            prop_assert_eq!(out, body);
            // What follows the body is left for the next response.
            buf.extend_from_slice(&wire[fed..]);
            prop_assert_eq!(&buf[..], &after[..]);
        }
    }
}

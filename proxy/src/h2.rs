//! HTTP/2 client connections (h2c with prior knowledge, or ALPN `h2` over
//! TLS), on pingora-core's HTTP/2 session.
//!
//! - Each stream is one request, served by a task on the connection's own
//!   worker thread (unless `runtime.work_stealing` lets threads take each
//!   other's tasks), so the thread the connection was placed on serves all
//!   of its work and a stream's socket events do not cross threads.
//! - A connection with no stream open for `timeouts.client_idle` is told to
//!   go away (GOAWAY, no error) and closed, as an idle HTTP/1 connection is.
//!   So is every connection when the server shuts down, once its streams
//!   are done; until it ends, the connection counts as in flight, so the
//!   proxy does not exit before its answers and its GOAWAY went out.
//! - After GOAWAY a connection with no stream open ends when the client
//!   closes it, or once the client has taken no byte for [`DRAIN`] (a
//!   peer that went away without a word takes nothing), and at the latest
//!   `timeouts.client_idle` after the GOAWAY. What its streams' answers
//!   left in the connection's buffers, the proxy's and the kernel's, still
//!   goes out to a client that reads slowly: the socket is closed only
//!   once the client's TCP has acknowledged every byte (or has taken none
//!   for [`DRAIN`]), since a frame the client sends after the close (a
//!   window update as it reads) is answered with a reset that throws away
//!   what the kernel still held for it.
//! - A client whose streams are refused as malformed [`MALFORMED_STREAMS`]
//!   times is told to go away with `ENHANCE_YOUR_CALM`, and disconnected;
//!   so is one that sends more control frames than its budget allows (see
//!   [`crate::h2_budget`]).

use crate::h2_budget::Budget;
use crate::kernel::Socket;
use crate::service::EdgeProxy;
use async_trait::async_trait;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::http::v2::server::{self, H2Accept, HttpSession};
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    ALPN, Digest, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest,
    Ssl, Stream, TimingDigest, UniqueID, UniqueIDType,
};
use pingora_core::server::ShutdownWatch;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// How long a connection told to go away is kept, with no stream open,
/// while its client takes no byte.
pub const DRAIN: Duration = Duration::from_secs(1);

/// How much of a stream's answer the connection holds for a client that
/// has not taken it yet (the `h2` crate's default is 400 KiB): a client
/// that opens its 100 streams and reads nothing holds 100 times this.
pub const SEND_BUFFER: usize = 64 * 1024;

/// How much request body a connection's client may send ahead of what its
/// streams' backends have taken, all streams together. Each stream may
/// send 64 KiB ahead (HTTP/2's default); with the connection held to the
/// same 64 KiB (the default too), one upload whose backend stops reading
/// took all of it, and every other stream's body waited until its
/// `client_idle` reset it. Sixteen streams' worth lets the others go on.
pub const CONNECTION_WINDOW: u32 = 16 * 65_535;

/// pingora-core's bounded defaults (100 streams, 64 KiB of request head),
/// with [`SEND_BUFFER`] and [`CONNECTION_WINDOW`].
fn options() -> server::H2Options {
    let mut options = server::default_h2_options();
    // Twice the proxy's own limit on a request head: a list between the
    // two gets the proxy's 431 (with its code, counted and logged); only a
    // larger one meets the protocol library's bare refusal.
    options.max_header_list_size(2 * crate::h1::MAX_HEAD as u32);
    options.max_send_buffer_size(SEND_BUFFER);
    options.initial_connection_window_size(CONNECTION_WINDOW);
    options
}

/// Malformed streams (refused at once with a reset or an error answer)
/// that end a connection: the last one is its GOAWAY.
pub const MALFORMED_STREAMS: usize = 32;

/// At most ten protocol-error lines a second (see
/// [`edgeroute_config::LogBudget`]): each client connection that breaks HTTP/2
/// would write one.
static PROTOCOL_ERRORS: edgeroute_config::LogBudget = edgeroute_config::LogBudget::new();

impl EdgeProxy {
    /// Serves an HTTP/2 connection until the client closes it, it idles,
    /// or the server shuts down; streams still running when the connection
    /// ends finish on their own.
    pub(crate) async fn serve_h2(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) {
        let idle = self.state().config.timeouts.client_idle;
        let digest = Arc::new(Digest {
            ssl_digest: stream.get_ssl_digest(),
            timing_digest: stream.get_timing_digest(),
            proxy_digest: stream.get_proxy_digest(),
            socket_digest: stream.get_socket_digest(),
        });
        let overspent = Arc::new(Notify::new());
        let stream = Counted::new(stream, Arc::clone(&overspent));
        let taken = Taken {
            written: Arc::clone(&stream.written),
            socket: Socket::of(&stream.io),
        };
        let mut conn =
            match tokio::time::timeout(idle, server::handshake(Box::new(stream), Some(options())))
                .await
            {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "HTTP/2 handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("no HTTP/2 preface within timeouts.client_idle; closing");
                    return;
                }
            };
        // Held until `conn` is dropped, at the loop's end.
        let in_flight = self.state().lifecycle.http2_connection_opened();
        let mut streams = JoinSet::new();
        let mut malformed = 0;
        // Set once the connection is told to go away.
        let mut closing: Option<Drain> = None;
        // Set when its client took nothing for [`DRAIN`]: what is left in
        // the kernel for it is not waited for.
        let mut stalled = false;
        // The stop announced (clients move to other proxies while this one
        // still accepts), or the server shutting down; a closed channel
        // means the server is gone: close too.
        let stopping = {
            let mut down = shutdown.clone();
            let lifecycle = Arc::clone(&self.state().lifecycle);
            async move {
                tokio::select! {
                    _ = down.wait_for(|down| *down) => {}
                    () = lifecycle.stop_announced() => {}
                }
            }
        };
        tokio::pin!(stopping);
        loop {
            // No stream open for this long ends the connection's wait.
            let quiet = if closing.is_some() { DRAIN } else { idle };
            tokio::select! {
                biased;
                () = &mut stopping, if closing.is_none() => {
                    self.count_goaway("shutdown");
                    conn.graceful_shutdown();
                    closing = Some(Drain::start(idle, &taken));
                }
                () = overspent.notified() => {
                    tracing::info!(
                        "closing an HTTP/2 connection whose client sends more control frames (PING, SETTINGS, WINDOW_UPDATE, ...) than its requests account for"
                    );
                    // Its bytes are no longer read; the GOAWAY goes out, its
                    // streams are reset, and the connection ends.
                    conn.abrupt_shutdown(::h2::Reason::ENHANCE_YOUR_CALM);
                    self.count_goaway("flood");
                    closing.get_or_insert_with(|| Drain::start(idle, &taken));
                }
                Some(done) = streams.join_next() => {
                    if let Err(e) = done
                        && e.is_panic()
                    {
                        tracing::error!(error = %e, "an HTTP/2 stream's task panicked");
                    }
                    // A connection told to go away has `client_idle` from
                    // its last stream's end, not from the GOAWAY: what that
                    // stream's answer left in the buffers still goes out.
                    if streams.is_empty()
                        && let Some(drain) = &mut closing
                    {
                        drain.restart(idle, &taken);
                    }
                }
                // Drives the connection: its reads, writes and new streams.
                accepted = HttpSession::from_h2_conn(&mut conn, Arc::clone(&digest)) => {
                    match accepted {
                        Ok(Some(H2Accept::Session(session))) => {
                            let proxy = Arc::clone(self);
                            streams.spawn(async move {
                                proxy.serve_h2_stream(ServerSession::new_http2(session)).await;
                            });
                        }
                        Ok(Some(H2Accept::Rejected)) => {
                            malformed += 1;
                            if malformed == MALFORMED_STREAMS {
                                tracing::info!(
                                    malformed,
                                    "closing an HTTP/2 connection whose client keeps sending malformed requests"
                                );
                                // GOAWAY with ENHANCE_YOUR_CALM; its streams are
                                // reset, and the connection ends once it is sent.
                                conn.abrupt_shutdown(::h2::Reason::ENHANCE_YOUR_CALM);
                                self.count_goaway("malformed");
                                closing.get_or_insert_with(|| Drain::start(idle, &taken));
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            // The h2 library tells a client that breaks the
                            // protocol or its limits (resets, header lists)
                            // to go away itself. A client may also leave
                            // without closing HTTP/2 first.
                            if sent_goaway(&e) {
                                self.count_goaway("protocol_error");
                                if let Some(left_out) = PROTOCOL_ERRORS.take() {
                                    let client = digest
                                        .socket_digest
                                        .as_ref()
                                        .and_then(|d| d.peer_addr().map(ToString::to_string));
                                    tracing::info!(error = %e, client, left_out, "HTTP/2 client told to go away for a protocol error");
                                }
                            } else {
                                tracing::debug!(error = %e, "HTTP/2 connection ended");
                            }
                            break;
                        }
                    }
                }
                () = tokio::time::sleep(quiet), if streams.is_empty() => {
                    let Some(drain) = &mut closing else {
                        tracing::debug!("no HTTP/2 stream within timeouts.client_idle; closing");
                        self.count_goaway("idle");
                        conn.graceful_shutdown();
                        closing = Some(Drain::start(idle, &taken));
                        continue;
                    };
                    if !drain.goes_on(tokio::time::Instant::now(), &taken) {
                        tracing::debug!("the client of an HTTP/2 connection told to go away does not close it; closing");
                        stalled = true;
                        break;
                    }
                }
            }
        }
        streams.detach_all();
        if !stalled && !taken.all_acknowledged() {
            closing
                .unwrap_or_else(|| Drain::start(idle, &taken))
                .delivered(&taken)
                .await;
        }
        drop(conn);
        drop(in_flight);
    }

    /// Counts a GOAWAY in `edgeroute_http2_goaways_total`.
    fn count_goaway(&self, reason: &str) {
        self.state()
            .metrics
            .http2_goaways
            .with_label_values(&[reason])
            .inc();
    }
}

/// Whether an HTTP/2 connection's error is a GOAWAY this side sent.
fn sent_goaway(e: &pingora_error::Error) -> bool {
    e.cause
        .as_deref()
        .and_then(|c| c.downcast_ref::<::h2::Error>())
        .is_some_and(|h2| h2.is_go_away() && !h2.is_remote())
}

/// How often a connection that is ending looks whether its client's TCP
/// has acknowledged everything.
const DELIVERY_CHECK: Duration = Duration::from_millis(50);

/// A connection told to go away, with no stream open: kept while its
/// client takes bytes, for `client_idle` at most from the GOAWAY or, if
/// later, from its last stream's end.
struct Drain {
    until: tokio::time::Instant,
    /// What the client had taken when it was last looked at.
    seen: (u64, u64),
}

impl Drain {
    fn start(idle: Duration, taken: &Taken) -> Self {
        Drain {
            until: tokio::time::Instant::now() + idle,
            seen: taken.now(),
        }
    }

    /// Counts `client_idle` from now: the connection's last stream ended.
    fn restart(&mut self, idle: Duration, taken: &Taken) {
        *self = Drain::start(idle, taken);
    }

    /// After [`DRAIN`] with no stream open: whether to wait on, as the
    /// client took bytes since the last look and the time is not up.
    fn goes_on(&mut self, now: tokio::time::Instant, taken: &Taken) -> bool {
        let now_taken = taken.now();
        let took = now_taken != self.seen;
        self.seen = now_taken;
        took && now < self.until
    }

    /// Waits until the client's TCP has acknowledged every byte written to
    /// the connection, while it takes them.
    async fn delivered(mut self, taken: &Taken) {
        let mut next_look = tokio::time::Instant::now() + DRAIN;
        while !taken.all_acknowledged() {
            tokio::time::sleep(DELIVERY_CHECK).await;
            let now = tokio::time::Instant::now();
            if now >= next_look {
                if !self.goes_on(now, taken) {
                    tracing::debug!(
                        "the client of an ending HTTP/2 connection takes nothing more; closing"
                    );
                    return;
                }
                next_look = now + DRAIN;
            }
        }
    }
}

/// What a connection's client has taken: the bytes the proxy wrote to the
/// connection, and those the client's TCP acknowledged (from the kernel,
/// when the connection is TCP).
struct Taken {
    written: Arc<AtomicU64>,
    socket: Option<Socket>,
}

impl Taken {
    /// The bytes written, and the bytes acknowledged.
    fn now(&self) -> (u64, u64) {
        let acknowledged = self
            .socket
            .as_ref()
            .and_then(|s| s.tcp_info())
            .map_or(0, |info| info.bytes_acked);
        (self.written.load(Ordering::Relaxed), acknowledged)
    }

    /// Whether the kernel holds nothing more for the client: every byte
    /// written was sent and acknowledged (or the connection is not TCP).
    fn all_acknowledged(&self) -> bool {
        self.socket
            .as_ref()
            .and_then(|s| s.tcp_info())
            .is_none_or(|info| !info.outstanding())
    }
}

/// The connection under HTTP/2, counting the bytes written to it (a
/// connection told to go away is kept while its client still takes them)
/// and keeping its client to its budget of control frames (see
/// [`crate::h2_budget`]): once that is overspent, `overspent` is notified
/// and no more of the client's bytes are read.
#[derive(Debug)]
struct Counted {
    io: Stream,
    written: Arc<AtomicU64>,
    budget: Budget,
    overspent: Arc<Notify>,
}

impl Counted {
    fn new(io: Stream, overspent: Arc<Notify>) -> Self {
        Counted {
            io,
            written: Arc::new(AtomicU64::new(0)),
            // The client's bytes begin with HTTP/2's preface.
            budget: Budget::new(true, std::time::Instant::now()),
            overspent,
        }
    }

    /// Counts the first `n` bytes of `bufs`, written.
    fn count<'b>(
        &mut self,
        polled: Poll<std::io::Result<usize>>,
        bufs: impl IntoIterator<Item = &'b [u8]>,
    ) -> Poll<std::io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = polled {
            self.written.fetch_add(n as u64, Ordering::Relaxed);
            let mut left = n;
            for buf in bufs {
                let part = &buf[..left.min(buf.len())];
                self.budget.written(part);
                left -= part.len();
                if left == 0 {
                    break;
                }
            }
        }
        polled
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.budget.spent() {
            // The connection is being closed: its client is heard no more.
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && self.budget.read(&buf.filled()[before..])
        {
            self.overspent.notify_one();
        }
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.count(polled, [buf])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.count(polled, bufs.iter().map(|b| &**b))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Counted {
    async fn shutdown(&mut self) {
        self.io.shutdown().await;
    }
}

impl UniqueID for Counted {
    fn id(&self) -> UniqueIDType {
        self.io.id()
    }
}

impl Ssl for Counted {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.io.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.io.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.io.selected_alpn_proto()
    }
}

impl GetTimingDigest for Counted {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.io.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.io.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.io.get_write_pending_time()
    }
}

impl GetProxyDigest for Counted {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.io.get_proxy_digest()
    }
}

impl GetSocketDigest for Counted {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.io.get_socket_digest()
    }
}

/// Nothing is peeked: the connection is known to be HTTP/2.
#[async_trait]
impl Peek for Counted {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::TcpConnection;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_drain_goes_on_while_the_client_takes_bytes_and_not_past_its_limit() {
        let taken = Taken {
            written: Arc::new(AtomicU64::new(100)),
            socket: None,
        };
        let written = &taken.written;
        let start = tokio::time::Instant::now();
        let mut drain = Drain::start(Duration::from_secs(10), &taken);
        written.store(150, Ordering::Relaxed);
        assert!(drain.goes_on(start + DRAIN, &taken), "took 50 bytes");
        assert!(!drain.goes_on(start + 2 * DRAIN, &taken), "took none");

        let mut drain = Drain::start(Duration::from_secs(10), &taken);
        written.store(200, Ordering::Relaxed);
        assert!(drain.goes_on(start + Duration::from_secs(9), &taken));
        written.store(250, Ordering::Relaxed);
        assert!(
            !drain.goes_on(start + Duration::from_secs(10), &taken),
            "time is up, bytes or not"
        );
    }

    /// A stream that runs past `client_idle` after the GOAWAY: the limit
    /// counts from its end, so the client still takes what it left.
    #[tokio::test(start_paused = true)]
    async fn a_drain_counts_its_limit_from_the_last_streams_end() {
        let taken = Taken {
            written: Arc::new(AtomicU64::new(100)),
            socket: None,
        };
        let idle = Duration::from_secs(10);
        let mut drain = Drain::start(idle, &taken);
        // The last stream ends 30 s after the GOAWAY.
        tokio::time::advance(Duration::from_secs(30)).await;
        let ended = tokio::time::Instant::now();
        taken.written.store(150, Ordering::Relaxed);
        assert!(!drain.goes_on(ended + DRAIN, &taken), "from the GOAWAY: up");
        drain.restart(idle, &taken);
        taken.written.store(200, Ordering::Relaxed);
        assert!(
            drain.goes_on(ended + DRAIN, &taken),
            "from the stream's end"
        );
    }

    /// The kernel's part: a client that reads what the kernel holds for it
    /// is taking bytes though the proxy writes none, and the wait for
    /// delivery ends once it has read them all.
    #[tokio::test]
    async fn a_drain_sees_the_client_take_what_the_kernel_held() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpSocket::new_v4().unwrap();
        client.set_recv_buffer_size(4096).unwrap();
        let mut client = client
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (socket, addr) = listener.accept().await.unwrap();
        let mut conn = Counted::new(
            Box::new(TcpConnection::from_client(socket, addr)),
            Arc::default(),
        );
        let taken = Taken {
            written: Arc::clone(&conn.written),
            socket: Socket::of(&conn.io),
        };
        // As much as the kernel takes, more than the client's buffer
        // holds: the proxy's kernel keeps the rest.
        let whole =
            tokio::time::timeout(Duration::from_millis(200), conn.write_all(&[7u8; 4 << 20])).await;
        assert!(
            whole.is_err(),
            "the kernel took 4 MiB the client did not read"
        );
        let sent = usize::try_from(taken.written.load(Ordering::Relaxed)).unwrap();
        assert!(sent > 8192, "{sent} bytes written");
        let mut drain = Drain::start(Duration::from_secs(60), &taken);
        assert!(!taken.all_acknowledged(), "the client has not read it yet");
        let mut buf = [0u8; 4096];
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0);
        // Its TCP acknowledges more once it has room again.
        let mut progress = false;
        for _ in 0..100 {
            if drain.goes_on(tokio::time::Instant::now(), &taken) {
                progress = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(progress, "reading is taking bytes, with none written");
        let reader = tokio::spawn(async move {
            let mut total = n;
            while total < sent {
                total += client.read(&mut buf).await.unwrap();
            }
            client
        });
        tokio::time::timeout(Duration::from_secs(10), drain.delivered(&taken))
            .await
            .expect("delivered once the client read everything");
        assert!(taken.all_acknowledged());
        drop(reader.await.unwrap());
    }

    #[tokio::test]
    async fn the_bytes_written_to_a_connection_are_counted() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (socket, addr) = listener.accept().await.unwrap();
        let mut conn = Counted::new(
            Box::new(TcpConnection::from_client(socket, addr)),
            Arc::default(),
        );
        let written = Arc::clone(&conn.written);
        conn.write_all(b"hello").await.unwrap();
        let bufs = [
            std::io::IoSlice::new(b"one "),
            std::io::IoSlice::new(b"two"),
        ];
        let n = conn.write_vectored(&bufs).await.unwrap();
        assert_eq!(written.load(Ordering::Relaxed), 5 + n as u64);
        assert!(n > 0);
        // What the connection is, is what it was.
        assert_eq!(
            conn.get_socket_digest()
                .and_then(|d| d.peer_addr().cloned()),
            Some(pingora_core::protocols::l4::socket::SocketAddr::Inet(addr))
        );
    }
}

//! The two directions of an upgraded connection (a WebSocket after its
//! `101 Switching Protocols`), carried independently: a side that is slow
//! to take bytes holds back only the bytes meant for it, never the other
//! direction. Each side's end of stream is passed on as the end of the
//! other's writing, and the tunnel ends when both have ended, when either
//! fails, or when no byte has moved either way for the idle limit.
//!
//! Two things only the kernel knows, it is asked (see [`Kernel`]) while a
//! write waits for a side to take bytes (every second at most) and when
//! the tunnel is quiet (every eighth of the idle limit):
//! - whether a side's peer still takes bytes: the bytes its TCP has
//!   acknowledged. A reader that drains a large socket buffer slowly makes
//!   the socket writable again only after a while, yet moves bytes all the
//!   time; acknowledged bytes count as moving.
//! - whether a side's connection was reset. A side that resets while the
//!   proxy is held writing its bytes to the other is not read again until
//!   that write ends, which may be never; its reset ends the tunnel at once.
//!
//! A side may end its stream and then close its connection while bytes
//! are still on their way to it: its kernel then refuses them (a broken
//! pipe, not a reset). That side is gone, but what it sent before its end
//! is not lost: it is still carried to the other side, whose further bytes
//! are read and dropped until that side ends its stream too, or has
//! acknowledged everything the proxy wrote to it.

use crate::kernel::{Socket, TcpInfo};
use bytes::Bytes;
use pingora_error::{Error, ErrorType};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;

pub type BError = Box<Error>;

/// Bytes read from one side at a time.
const CHUNK: usize = 16 * 1024;

/// The longest a waiting write goes without a look at the kernel.
const WAITING_LOOK: Duration = Duration::from_secs(1);

/// How a tunnel ended without failing.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Both sides ended their streams.
    Closed,
    /// No byte moved either way for the idle limit.
    Idle,
}

/// Where what the kernel tells of a side's TCP connection is read.
pub trait Kernel: Sync {
    /// `None` when the side is not a TCP connection the kernel tells of.
    fn tcp_info(&self) -> Option<TcpInfo>;

    /// The error the side's connection met that no read or write has
    /// reported yet; told once.
    fn take_error(&self) -> Option<std::io::Error>;
}

impl Kernel for Option<Socket> {
    fn tcp_info(&self) -> Option<TcpInfo> {
        self.and_then(Socket::tcp_info)
    }

    fn take_error(&self) -> Option<std::io::Error> {
        self.and_then(Socket::take_error)
    }
}

/// One side of a tunnel: its stream, the bytes it sent that were read
/// with the upgrade's heads (they go first), and its kernel's account.
pub struct Conn<'a, S> {
    pub stream: &'a mut S,
    pub early: Bytes,
    pub kernel: &'a dyn Kernel,
}

/// Carries `client` and `backend` until the tunnel ends. Errors say which
/// side failed (`into_down`: the client, `into_up`: the backend).
pub async fn carry<C, B>(
    client: Conn<'_, C>,
    backend: Conn<'_, B>,
    idle: Duration,
) -> Result<Ended, BError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    carry_with(&Activity::new(idle), client, backend).await
}

async fn carry_with<C, B>(
    activity: &Activity,
    client: Conn<'_, C>,
    backend: Conn<'_, B>,
) -> Result<Ended, BError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let kernels = [client.kernel, backend.kernel];
    let (mut client_in, mut client_out) = tokio::io::split(client.stream);
    let (mut backend_in, mut backend_out) = tokio::io::split(backend.stream);
    let up = pass(
        (&mut client_in, client.kernel),
        &mut backend_out,
        client.early,
        activity,
        Side::Client,
    );
    let down = pass(
        (&mut backend_in, backend.kernel),
        &mut client_out,
        backend.early,
        activity,
        Side::Backend,
    );
    tokio::select! {
        both = async { tokio::try_join!(up, down) } => both.map(|_| Ended::Closed),
        watched = activity.watch(kernels) => watched,
    }
}

/// When a byte last moved, either way, and what the kernel is asked.
struct Activity {
    start: Instant,
    idle: Duration,
    /// Milliseconds since `start`.
    last_ms: AtomicU64,
    /// Writes waiting for a side to take bytes.
    waiting: AtomicUsize,
    /// Told when a write starts to wait.
    wait_began: Notify,
    /// Whether the proxy has ended its writing to each side (by
    /// [`Side::index`]): a side's connection may then close cleanly.
    ended: [AtomicBool; 2],
    /// Whether that end has been handed to each side's kernel.
    delivered: [AtomicBool; 2],
    /// Looks at the kernel so far.
    looks: AtomicU64,
}

impl Activity {
    fn new(idle: Duration) -> Self {
        Activity {
            start: Instant::now(),
            idle,
            last_ms: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            wait_began: Notify::new(),
            ended: [AtomicBool::new(false), AtomicBool::new(false)],
            delivered: [AtomicBool::new(false), AtomicBool::new(false)],
            looks: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Whether `side` holds everything: the proxy has handed the end of
    /// its writing to `side`'s kernel, and `side`'s TCP (`tcp`, when the
    /// kernel tells of it) has acknowledged every byte.
    fn holds_all(&self, side: Side, tcp: Option<TcpInfo>) -> bool {
        self.delivered[side.index()].load(Ordering::Relaxed)
            && tcp.is_none_or(|tcp| !tcp.outstanding())
    }

    /// `io`'s outcome; while it waits, it counts as a waiting write.
    async fn waiting_for<F: Future>(&self, io: F) -> F::Output {
        let mut io = std::pin::pin!(io);
        if let Poll::Ready(done) =
            std::future::poll_fn(|cx| Poll::Ready(io.as_mut().poll(cx))).await
        {
            return done;
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        self.wait_began.notify_one();
        let done = io.await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        done
    }

    /// Resolves once nothing has moved for the idle limit (bytes the
    /// kernels saw acknowledged counting as moving), or with the error of
    /// a side whose connection was reset before the proxy ended its
    /// writing to it (a side that had ended its own stream first is gone,
    /// not reset: the write to it learns so).
    async fn watch(&self, kernels: [&dyn Kernel; 2]) -> Result<Ended, BError> {
        let quiet_look = self.idle / 8;
        let waiting_look = quiet_look.min(WAITING_LOOK);
        // Each side at the last look: what its peer had acknowledged, and
        // whether bytes were still to be. An acknowledgement counts as
        // moving only when bytes were: the one for the proxy's last write,
        // coming after it, does not put the idle limit off.
        let mut seen = kernels.map(|k| k.tcp_info());
        let mut acked_moved = self.start;
        // Sides found gone after their end (their broken pipe taken here).
        let mut gone = [false; 2];
        loop {
            let deadline = self.last().max(acked_moved) + self.idle;
            if self.waiting.load(Ordering::Relaxed) > 0 || gone.contains(&true) {
                tokio::time::sleep_until(deadline.min(Instant::now() + waiting_look)).await;
            } else {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline.min(Instant::now() + quiet_look)) => {}
                    () = self.wait_began.notified() => continue,
                }
            }
            let now = Instant::now();
            self.looks.fetch_add(1, Ordering::Relaxed);
            for (side, kernel) in [Side::Client, Side::Backend].into_iter().zip(kernels) {
                let Some(tcp) = kernel.tcp_info() else {
                    continue;
                };
                if tcp.closed() && !self.ended[side.index()].load(Ordering::Relaxed) {
                    // An error a read or write has already met is theirs
                    // to tell.
                    match kernel.take_error() {
                        Some(e) if is_gone(&e) => gone[side.index()] = true,
                        Some(e) => return Err(side.lost(e)),
                        None => {}
                    }
                }
                let before = seen[side.index()].replace(tcp);
                if before.is_some_and(|b| b.outstanding() && b.bytes_acked != tcp.bytes_acked) {
                    acked_moved = now;
                }
            }
            // A side gone, the other holding all the proxy wrote to it:
            // nothing is left to carry, whatever that other side still
            // sends (or does not).
            for side in [Side::Client, Side::Backend] {
                let other = side.other();
                if gone[side.index()] && self.holds_all(other, seen[other.index()]) {
                    return Ok(Ended::Closed);
                }
            }
            if now >= self.last().max(acked_moved) + self.idle {
                return Ok(Ended::Idle);
            }
        }
    }
}

/// The side bytes are read from in one direction; the other side is written.
#[derive(Clone, Copy)]
enum Side {
    Client,
    Backend,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::Client => 0,
            Side::Backend => 1,
        }
    }

    /// The side written in this side's direction.
    fn other(self) -> Side {
        match self {
            Side::Client => Side::Backend,
            Side::Backend => Side::Client,
        }
    }

    fn read_error(self, e: std::io::Error) -> BError {
        match self {
            Side::Client => {
                Error::because(ErrorType::ReadError, "reading from the client", e).into_down()
            }
            Side::Backend => {
                Error::because(ErrorType::ReadError, "reading from the backend", e).into_up()
            }
        }
    }

    /// An error writing to the other side.
    fn write_error(self, e: std::io::Error) -> BError {
        match self {
            Side::Client => {
                Error::because(ErrorType::WriteError, "writing to the backend", e).into_up()
            }
            Side::Backend => {
                Error::because(ErrorType::WriteError, "writing to the client", e).into_down()
            }
        }
    }

    /// This side's connection was lost to `e` (a reset, mostly).
    fn lost(self, e: std::io::Error) -> BError {
        match self {
            Side::Client => Error::because(
                ErrorType::ConnectionClosed,
                "the client's connection was lost",
                e,
            )
            .into_down(),
            Side::Backend => Error::because(
                ErrorType::ConnectionClosed,
                "the backend's connection was lost",
                e,
            )
            .into_up(),
        }
    }
}

/// Whether `e`, met writing to a side, says that side is gone: it ended
/// its own stream and then closed its connection, so its kernel refuses
/// more bytes (a reset coming after the side's end of stream is a broken
/// pipe, one before it a connection reset).
fn is_gone(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}

/// The value of a write to the side `side`'s bytes go to: `None` when that
/// side is gone.
fn written<T>(done: std::io::Result<T>, side: Side) -> Result<Option<T>, BError> {
    match done {
        Ok(value) => Ok(Some(value)),
        Err(e) if is_gone(&e) => Ok(None),
        Err(e) => Err(side.write_error(e)),
    }
}

/// One direction: `early`, then what `from` sends, to `to`; `from`'s end
/// of stream becomes the end of writing to `to`. When `to` is gone, what
/// `from` still sends is dropped (see [`drop_rest`]).
async fn pass<R, W>(
    (from, kernel): (&mut R, &dyn Kernel),
    to: &mut W,
    early: Bytes,
    activity: &Activity,
    side: Side,
) -> Result<(), BError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    let mut taking = write(to, &early, activity, side).await?;
    while taking {
        let n = from.read(&mut buf).await.map_err(|e| side.read_error(e))?;
        activity.touch();
        if n == 0 {
            // Marked first: once the end is sent, the other side may close
            // its connection cleanly at any moment.
            let other = side.other().index();
            activity.ended[other].store(true, Ordering::Relaxed);
            if written(activity.waiting_for(to.shutdown()).await, side)?.is_some() {
                activity.delivered[other].store(true, Ordering::Relaxed);
            }
            return Ok(());
        }
        taking = write(to, &buf[..n], activity, side).await?;
    }
    drop_rest(from, &mut buf, activity, side, kernel).await
}

/// The side bytes from `side` go to is gone, so what `side` still sends
/// has nowhere to go: it is read and dropped, as a connection closed with
/// bytes unread is reset, and the reset would throw away what the kernel
/// still holds for `side` of the gone side's last bytes. Until `side` ends
/// its stream, or until the proxy has ended its writing to `side` and
/// `side`'s TCP has acknowledged every byte (looked at every second); a
/// failed read is `side`'s failure (its reset would otherwise show only
/// as a broken pipe to the proxy's next write, taken for a side gone).
/// Dropped bytes do not count as moving.
async fn drop_rest<R: AsyncRead + Unpin>(
    from: &mut R,
    buf: &mut [u8],
    activity: &Activity,
    side: Side,
    kernel: &dyn Kernel,
) -> Result<(), BError> {
    let mut look = tokio::time::interval(WAITING_LOOK);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            read = from.read(buf) => match read {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(side.read_error(e)),
            },
            _ = look.tick() => {}
        }
        if activity.holds_all(side, kernel.tcp_info()) {
            return Ok(());
        }
    }
}

/// Writes all of `data`, each partial write counting as activity: `false`
/// when the side written to is gone.
async fn write<W: AsyncWrite + Unpin>(
    to: &mut W,
    mut data: &[u8],
    activity: &Activity,
    side: Side,
) -> Result<bool, BError> {
    while !data.is_empty() {
        let Some(n) = written(activity.waiting_for(to.write(data)).await, side)? else {
            return Ok(false);
        };
        if n == 0 {
            return Err(side.write_error(std::io::ErrorKind::WriteZero.into()));
        }
        activity.touch();
        data = &data[n..];
    }
    Ok(written(activity.waiting_for(to.flush()).await, side)?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_core::protocols::Stream;
    use std::sync::Arc;
    use tokio::io::{DuplexStream, duplex};
    use tokio::net::TcpStream;

    /// A side that is not a TCP connection.
    const NOT_TCP: &Option<Socket> = &None;

    /// A kernel that tells what the test sets (bytes outstanding unless
    /// told otherwise).
    #[derive(Default)]
    struct Told {
        acked: AtomicU64,
        all_acked: AtomicBool,
    }

    impl Kernel for Told {
        fn tcp_info(&self) -> Option<TcpInfo> {
            Some(TcpInfo {
                state: 1, // established
                unacked: u32::from(!self.all_acked.load(Ordering::Relaxed)),
                bytes_acked: self.acked.load(Ordering::Relaxed),
                notsent_bytes: 0,
            })
        }

        fn take_error(&self) -> Option<std::io::Error> {
            None
        }
    }

    /// Carries the proxy's ends of a client pipe and a backend pipe.
    async fn run(
        client: DuplexStream,
        early: (&'static [u8], &'static [u8]),
        backend: DuplexStream,
        idle: Duration,
    ) -> Result<Ended, BError> {
        run_with(
            &Activity::new(idle),
            client,
            early,
            backend,
            [NOT_TCP, NOT_TCP],
        )
        .await
    }

    /// Carries `client` and `backend`, with `activity` and `kernels`
    /// (the client's, the backend's) for the test to see and set.
    async fn run_with<C, B>(
        activity: &Activity,
        mut client: C,
        early: (&'static [u8], &'static [u8]),
        mut backend: B,
        kernels: [&dyn Kernel; 2],
    ) -> Result<Ended, BError>
    where
        C: AsyncRead + AsyncWrite + Unpin,
        B: AsyncRead + AsyncWrite + Unpin,
    {
        let client = Conn {
            stream: &mut client,
            early: Bytes::from_static(early.0),
            kernel: kernels[0],
        };
        let backend = Conn {
            stream: &mut backend,
            early: Bytes::from_static(early.1),
            kernel: kernels[1],
        };
        carry_with(activity, client, backend).await
    }

    /// A connected pair of loopback sockets: the peer's and the proxy's
    /// (as the proxy takes a connection), with the proxy's socket. A
    /// `narrow` pair holds few bytes the peer has not read (small socket
    /// buffers on the way to it); the other holds at least 256 KiB the
    /// proxy has not read.
    async fn tcp_pair(narrow: bool) -> (TcpStream, Stream, Option<Socket>) {
        let listening = tokio::net::TcpSocket::new_v4().unwrap();
        if !narrow {
            listening.set_recv_buffer_size(256 * 1024).unwrap();
        }
        listening.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = listening.listen(8).unwrap();
        let peer = tokio::net::TcpSocket::new_v4().unwrap();
        if narrow {
            peer.set_recv_buffer_size(4096).unwrap();
        } else {
            peer.set_send_buffer_size(256 * 1024).unwrap();
        }
        let peer = peer.connect(listener.local_addr().unwrap()).await.unwrap();
        let (proxy, addr) = listener.accept().await.unwrap();
        if narrow {
            socket2::SockRef::from(&proxy)
                .set_send_buffer_size(4096)
                .unwrap();
        }
        let proxy: Stream = Box::new(crate::tcp::TcpConnection::from_client(proxy, addr));
        let socket = Socket::of(&proxy);
        (peer, proxy, socket)
    }

    /// A tunnel between loopback connections, with an hour's idle limit
    /// and a narrow way to the backend: the test's ends of the
    /// connections, and what it sees of the tunnel.
    struct TcpTunnel {
        client: TcpStream,
        backend: TcpStream,
        /// The proxy's socket of its connection to the client.
        client_kernel: Socket,
        activity: Arc<Activity>,
        tunnel: tokio::task::JoinHandle<Result<Ended, BError>>,
    }

    async fn tcp_tunnel() -> TcpTunnel {
        tcp_tunnel_idle(Duration::from_secs(3600)).await
    }

    /// [`tcp_tunnel`] with the idle limit `idle`.
    async fn tcp_tunnel_idle(idle: Duration) -> TcpTunnel {
        let (client, client_proxy, client_kernel) = tcp_pair(false).await;
        let (backend, backend_proxy, backend_kernel) = tcp_pair(true).await;
        let watched = client_kernel.expect("a TCP connection");
        let activity = Arc::new(Activity::new(idle));
        let tunnel = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move {
                let kernels: [&dyn Kernel; 2] = [&client_kernel, &backend_kernel];
                run_with(&activity, client_proxy, (b"", b""), backend_proxy, kernels).await
            }
        });
        TcpTunnel {
            client,
            backend,
            client_kernel: watched,
            activity,
            tunnel,
        }
    }

    /// Waits (a bounded while) until `done` holds.
    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until the proxy's connection to the client is closed and the
    /// kernel has been looked at twice more, and checks that the tunnel
    /// still runs.
    async fn outlives_the_close(
        watched: Socket,
        activity: &Activity,
        tunnel: &mut tokio::task::JoinHandle<Result<Ended, BError>>,
    ) {
        until("the client's connection is closed", || {
            watched.tcp_info().unwrap().closed()
        })
        .await;
        let looks = activity.looks.load(Ordering::Relaxed);
        until("the kernel was looked at twice more", || {
            tunnel.is_finished() || activity.looks.load(Ordering::Relaxed) >= looks + 2
        })
        .await;
        assert!(
            !tunnel.is_finished(),
            "the tunnel ended early: {:?}",
            tunnel.await
        );
    }

    /// A backend that answers every byte with eight, writing before it
    /// reads more, while the client writes 4 MiB before it reads anything
    /// back: carried one write at a time, each side would wait on the other
    /// for good.
    #[tokio::test]
    async fn a_backend_writing_more_than_it_reads_does_not_stall_the_client() {
        let (client_proxy, mut client) = duplex(64 * 1024);
        let (backend_proxy, mut backend) = duplex(64 * 1024);
        const SENT: usize = 1 << 20;
        let backend_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut got = 0usize;
            loop {
                let n = backend.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got += n;
                for _ in 0..8 {
                    backend.write_all(&buf[..n]).await.unwrap();
                }
            }
            backend.shutdown().await.unwrap();
            got
        });
        let client_task = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(&mut client);
            let writer = async {
                let block = vec![7u8; 64 * 1024];
                for _ in 0..SENT / block.len() {
                    w.write_all(&block).await.unwrap();
                }
                w.shutdown().await.unwrap();
            };
            let reader = async {
                let mut total = 0usize;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = r.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return total;
                    }
                    total += n;
                }
            };
            tokio::join!(writer, reader).1
        });
        let ended = run(
            client_proxy,
            (b"", b""),
            backend_proxy,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        assert_eq!(ended, Ended::Closed);
        assert_eq!(backend_task.await.unwrap(), SENT);
        assert_eq!(client_task.await.unwrap(), 8 * SENT);
    }

    #[tokio::test]
    async fn early_bytes_go_first_and_each_end_is_passed_on() {
        let (client_proxy, mut client) = duplex(1024);
        let (backend_proxy, mut backend) = duplex(1024);
        let early = (&b"early-up "[..], &b"early-down "[..]);
        let tunnel = tokio::spawn(run(
            client_proxy,
            early,
            backend_proxy,
            Duration::from_secs(60),
        ));
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        backend.read_to_end(&mut got).await.unwrap();
        assert_eq!(
            got, b"early-up hello",
            "the client's end reached the backend"
        );
        // The backend still answers after the client ended its side.
        backend.write_all(b"bye").await.unwrap();
        backend.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"early-down bye");
        assert_eq!(tunnel.await.unwrap().unwrap(), Ended::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_is_idle_only_when_neither_side_sends() {
        let (client_proxy, mut client) = duplex(1024);
        let (backend_proxy, mut backend) = duplex(1024);
        let tunnel = tokio::spawn(run(
            client_proxy,
            (b"", b""),
            backend_proxy,
            Duration::from_secs(10),
        ));
        // A one-way stream, a byte every 6 s for a minute: never idle.
        let mut byte = [0u8; 1];
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            backend.write_all(b"x").await.unwrap();
            client.read_exact(&mut byte).await.unwrap();
            assert!(!tunnel.is_finished(), "a one-way stream was taken for idle");
        }
        // Then silence: it ends after the idle limit.
        assert_eq!(tunnel.await.unwrap().unwrap(), Ended::Idle);
        let mut rest = Vec::new();
        assert_eq!(
            client.read_to_end(&mut rest).await.unwrap(),
            0,
            "the client's side is closed"
        );
    }

    #[tokio::test]
    async fn a_failing_side_ends_the_tunnel_with_its_error() {
        let (mut client, client_proxy, client_kernel) = tcp_pair(false).await;
        let (backend, backend_proxy, backend_kernel) = tcp_pair(false).await;
        let tunnel = tokio::spawn(async move {
            let kernels: [&dyn Kernel; 2] = [&client_kernel, &backend_kernel];
            let activity = Activity::new(Duration::from_secs(3600));
            run_with(&activity, client_proxy, (b"", b""), backend_proxy, kernels).await
        });
        socket2::SockRef::from(&backend)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(backend);
        let e = tunnel.await.unwrap().unwrap_err();
        assert_eq!(e.etype(), &ErrorType::ReadError, "{e}");
        assert!(e.to_string().contains("reading from the backend"), "{e}");
        let mut rest = Vec::new();
        assert_eq!(
            client.read_to_end(&mut rest).await.unwrap(),
            0,
            "the client's side is closed"
        );
    }

    /// A client sends its last bytes and its end, and goes (its pipe is
    /// dropped) before the backend, writing first, has read them: the
    /// backend's bytes are dropped, the client's still reach it.
    #[tokio::test(start_paused = true)]
    async fn a_side_gone_after_its_end_still_has_its_last_bytes_carried() {
        let (client_proxy, mut client) = duplex(64 * 1024);
        let (backend_proxy, mut backend) = duplex(1024);
        let tunnel = tokio::spawn(run(
            client_proxy,
            (b"", b""),
            backend_proxy,
            Duration::from_secs(60),
        ));
        let last = vec![7u8; 8 * 1024];
        client.write_all(&last).await.unwrap();
        client.shutdown().await.unwrap();
        drop(client);
        backend.write_all(b"too late").await.unwrap();
        backend.write_all(&[1u8; 4096]).await.unwrap();
        let mut got = Vec::new();
        backend.read_to_end(&mut got).await.unwrap();
        assert!(got == last, "{} of {} bytes arrived", got.len(), last.len());
        assert_eq!(tunnel.await.unwrap().unwrap(), Ended::Closed);
    }

    /// A client that drains a large socket buffer slowly makes the
    /// proxy's write wait long, though bytes move all the while: what its
    /// TCP acknowledges counts as moving.
    #[tokio::test(start_paused = true)]
    async fn a_client_taking_bytes_slowly_is_not_idle_while_its_tcp_acknowledges_them() {
        let idle = Duration::from_secs(10);
        // The client never reads the pipe: the proxy's write waits.
        let (client_proxy, _client) = duplex(1024);
        let (backend_proxy, mut backend) = duplex(64 * 1024);
        let activity = Arc::new(Activity::new(idle));
        let told = Arc::new(Told::default());
        let tunnel = tokio::spawn({
            let (activity, told) = (Arc::clone(&activity), Arc::clone(&told));
            async move {
                let kernels: [&dyn Kernel; 2] = [&*told, NOT_TCP];
                run_with(&activity, client_proxy, (b"", b""), backend_proxy, kernels).await
            }
        });
        backend.write_all(&[1u8; 32 * 1024]).await.unwrap();
        until("the write to the client waits", || {
            activity.waiting.load(Ordering::Relaxed) > 0
        })
        .await;
        // For a minute, the client's TCP acknowledges bytes every 6 s.
        for acked in 1..=10 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            told.acked.store(acked * 1000, Ordering::Relaxed);
            assert!(!tunnel.is_finished(), "a client taking bytes was idle");
        }
        // Then nothing: idle from the last acknowledgement on, noticed
        // within a look at the kernel.
        let last = Instant::now();
        assert_eq!(tunnel.await.unwrap().unwrap(), Ended::Idle);
        let quiet = last.elapsed();
        assert!(quiet >= idle && quiet <= idle + WAITING_LOOK, "{quiet:?}");
    }

    /// The acknowledgement of the proxy's last write comes after the write:
    /// with nothing outstanding before it, it does not put the idle limit
    /// off.
    #[tokio::test(start_paused = true)]
    async fn the_acknowledgement_of_the_last_write_is_not_taken_for_moving() {
        let idle = Duration::from_secs(10);
        let (client_proxy, mut client) = duplex(1024);
        let (backend_proxy, mut backend) = duplex(1024);
        let told = Arc::new(Told::default());
        told.all_acked.store(true, Ordering::Relaxed);
        let tunnel = tokio::spawn({
            let told = Arc::clone(&told);
            async move {
                let kernels: [&dyn Kernel; 2] = [&*told, NOT_TCP];
                run_with(
                    &Activity::new(idle),
                    client_proxy,
                    (b"", b""),
                    backend_proxy,
                    kernels,
                )
                .await
            }
        });
        backend.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        client.read_exact(&mut byte).await.unwrap();
        let last = Instant::now();
        // The client's TCP acknowledges the byte a moment later.
        tokio::time::sleep(Duration::from_millis(100)).await;
        told.acked.store(1, Ordering::Relaxed);
        assert_eq!(tunnel.await.unwrap().unwrap(), Ended::Idle);
        let quiet = last.elapsed();
        assert!(quiet >= idle && quiet < idle + idle / 8, "{quiet:?}");
    }

    /// A client sends more than the backend takes, so the proxy's write
    /// to the backend waits and the client is not read; the client's reset
    /// then ends the tunnel, well before its idle limit.
    #[tokio::test]
    async fn a_side_reset_while_its_bytes_wait_ends_the_tunnel() {
        let TcpTunnel {
            client,
            backend: _backend,
            activity,
            tunnel,
            ..
        } = tcp_tunnel().await;
        // Closed with a reset, when the writer lets go of it.
        socket2::SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        let writer = tokio::spawn(async move {
            let mut client = client;
            let block = vec![7u8; 64 * 1024];
            for _ in 0..1024 {
                if client.write_all(&block).await.is_err() {
                    break;
                }
            }
        });
        until("the write to the backend waits", || {
            activity.waiting.load(Ordering::Relaxed) > 0
        })
        .await;
        writer.abort();
        assert!(writer.await.unwrap_err().is_cancelled());
        let e = tokio::time::timeout(Duration::from_secs(30), tunnel)
            .await
            .expect("the reset went unnoticed")
            .unwrap()
            .unwrap_err();
        assert_eq!(e.etype(), &ErrorType::ConnectionClosed, "{e}");
        assert!(
            e.to_string().contains("client's connection was lost"),
            "{e}"
        );
        let cause = e.root_cause().downcast_ref::<std::io::Error>();
        assert_eq!(
            cause.map(std::io::Error::kind),
            Some(std::io::ErrorKind::ConnectionReset),
            "{e}"
        );
    }

    /// The backend ends its stream first; the client then sends its last
    /// bytes and its end, and closes, while the backend is slow to take
    /// them: the client's closed connection is no reset, and every byte
    /// reaches the backend.
    #[tokio::test]
    async fn a_side_closing_cleanly_while_its_bytes_wait_is_no_reset() {
        let TcpTunnel {
            client,
            mut backend,
            client_kernel: watched,
            activity,
            mut tunnel,
        } = tcp_tunnel().await;
        backend.shutdown().await.unwrap();
        let (mut client_in, mut client_out) = client.into_split();
        let mut nothing = Vec::new();
        client_in.read_to_end(&mut nothing).await.unwrap();
        assert!(nothing.is_empty());
        // More than the way to the backend holds unread, less than the
        // way from the client holds.
        const SENT: usize = 64 * 1024;
        tokio::spawn(async move {
            client_out.write_all(&vec![7u8; SENT]).await.unwrap();
            client_out.shutdown().await.unwrap();
            drop((client_in, client_out));
        });
        until("the write to the backend waits", || {
            activity.waiting.load(Ordering::Relaxed) > 0
        })
        .await;
        outlives_the_close(watched, &activity, &mut tunnel).await;
        let mut got = Vec::new();
        backend.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), SENT);
        assert_eq!(tunnel.await.unwrap().unwrap(), Ended::Closed);
    }

    /// The client sends its last bytes and its end, and closes its
    /// connection, while the backend is slow to take them and still writes
    /// to the client: the client's kernel answers those bytes with a reset.
    /// The client is gone, not failed: every byte it sent reaches the
    /// backend, what the backend sends after is dropped, and the tunnel
    /// ends once the backend has acknowledged everything.
    #[tokio::test]
    async fn a_side_that_ends_then_closes_has_its_last_bytes_carried() {
        let TcpTunnel {
            client,
            mut backend,
            client_kernel: watched,
            activity,
            mut tunnel,
        } = tcp_tunnel().await;
        // More than the way to the backend holds unread, less than the
        // way from the client holds.
        const SENT: usize = 64 * 1024;
        let mut client = client;
        client.write_all(&vec![7u8; SENT]).await.unwrap();
        client.shutdown().await.unwrap();
        drop(client);
        until("the write to the backend waits", || {
            activity.waiting.load(Ordering::Relaxed) > 0
        })
        .await;
        // The backend writes to the closed client, whose kernel resets the
        // connection; the kernel is looked at twice after that.
        backend.write_all(b"ping").await.unwrap();
        outlives_the_close(watched, &activity, &mut tunnel).await;
        // Then the backend writes again, to the gone client.
        backend.write_all(b"pong").await.unwrap();
        let (mut backend_in, mut backend_out) = backend.into_split();
        let writer = tokio::spawn(async move {
            let block = vec![1u8; 16 * 1024];
            for _ in 0..64 {
                if backend_out.write_all(&block).await.is_err() {
                    break;
                }
            }
            backend_out
        });
        let mut got = Vec::new();
        backend_in.read_to_end(&mut got).await.unwrap();
        assert!(got.len() == SENT, "{} of {SENT} bytes arrived", got.len());
        let ended = tokio::time::timeout(Duration::from_secs(30), tunnel)
            .await
            .expect("the tunnel outlived the delivery")
            .unwrap();
        assert_eq!(ended.unwrap(), Ended::Closed);
        drop(writer.await.unwrap());
    }

    /// The client sends its bytes and its end and closes; the backend
    /// takes them all, writes once (the client's kernel answers with a
    /// reset) and then neither sends nor ends: the client is gone and the
    /// backend holds everything, so the tunnel ends at the next look at
    /// the kernel, not at its idle limit.
    #[tokio::test]
    async fn a_gone_side_whose_peer_holds_everything_ends_the_tunnel() {
        let idle = Duration::from_secs(60);
        let TcpTunnel {
            client,
            mut backend,
            client_kernel: watched,
            tunnel,
            ..
        } = tcp_tunnel_idle(idle).await;
        let mut client = client;
        client.write_all(b"last words").await.unwrap();
        client.shutdown().await.unwrap();
        drop(client);
        let mut got = [0u8; 10];
        backend.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"last words");
        let mut end = [0u8; 1];
        assert_eq!(backend.read(&mut end).await.unwrap(), 0, "the client's end");
        backend.write_all(b"ping").await.unwrap();
        until("the client's connection is closed", || {
            watched.tcp_info().unwrap().closed()
        })
        .await;
        let ended = tokio::time::timeout(idle / 2, tunnel)
            .await
            .expect("the tunnel waited for its idle limit")
            .unwrap();
        assert_eq!(ended.unwrap(), Ended::Closed);
        drop(backend);
    }
}

//! The proxy's listeners, served by its own accept loop as a Pingora
//! service.
//!
//! Each accepted socket goes to the worker thread serving the fewest
//! client connections (see [`Workers`]), is registered with that thread's
//! event loop (see [`hand_over`]), and becomes a [`TcpConnection`], with
//! `TCP_NODELAY` set and the client's address from the accept. What comes
//! next depends on the listener:
//!
//! - plain: HTTP/1.x, served at once;
//! - `h2c`: the client's first bytes tell HTTP/2 with prior knowledge (its
//!   24-byte preface) from HTTP/1.x, read only as far as the first byte
//!   that differs, within `timeouts.client_idle`;
//! - `tls`: a rustls handshake, begun within `timeouts.client_idle` and
//!   done within `timeouts.tls_handshake` of its first byte; ALPN then
//!   says HTTP/2 or HTTP/1.1.
//!
//! HTTP/1.x goes to the proxy's own session, HTTP/2 to pingora-core's. The
//! sockets are bound before the server starts (a busy port is a start-up
//! error), with the options of Pingora's own listeners: `SO_REUSEADDR` and
//! a backlog of 65,535 (the kernel caps it at `net.core.somaxconn`).
//!
//! At most `limits.max_client_connections` client connections are served
//! at once, over all listeners (see [`Room`]); while that many are open,
//! the listeners accept none and new clients wait in the backlog, as they
//! do while the process has no file descriptor left.

use crate::service::EdgeProxy;
use crate::tcp::TcpConnection;
use async_trait::async_trait;
use edgeroute_config::accept::{Open, Room};
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::{ALPN, Ssl, Stream};
use pingora_core::server::ListenFds;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::Service;
use prometheus::IntGauge;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;

/// Connections waiting to be accepted, per listener.
const BACKLOG: i32 = 65_535;

/// What an HTTP/2 connection without TLS starts with (RFC 9113 §3.4).
pub(crate) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A listening socket for `addr`, ready for [`Listeners`].
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// What a listener's clients speak.
#[derive(Clone)]
pub enum Transport {
    /// HTTP/1.x in plain text.
    Plain,
    /// HTTP/1.x or HTTP/2 with prior knowledge, in plain text.
    H2c,
    /// TLS, then HTTP/2 or HTTP/1.1 by ALPN.
    Tls(Arc<Acceptor>),
}

/// A bound socket (see [`bind`]) and what its clients speak.
pub struct Listener {
    pub socket: std::net::TcpListener,
    pub transport: Transport,
}

/// All the proxy's listeners, as one Pingora service: one set of worker
/// threads serves them all.
pub struct Listeners {
    name: String,
    proxy: Arc<EdgeProxy>,
    listeners: Vec<Listener>,
    addresses: Vec<String>,
    room: Arc<Room>,
}

impl Listeners {
    /// The listeners, serving at most `max_connections` clients at once.
    pub fn new(
        name: &str,
        proxy: Arc<EdgeProxy>,
        listeners: Vec<Listener>,
        max_connections: usize,
    ) -> Self {
        let room = Arc::new(Room::new(
            max_connections,
            "limits.max_client_connections",
            proxy.state().metrics.accept_waits.clone(),
        ));
        let addresses = listeners
            .iter()
            .filter_map(|l| l.socket.local_addr().ok())
            .map(|a| a.to_string())
            .collect();
        Listeners {
            name: name.to_owned(),
            proxy,
            listeners,
            addresses,
            room,
        }
    }
}

/// Why the listeners stopped accepting for a while.
/// The worker threads' event loops, and the client connections each
/// serves. A new connection goes to the thread with the fewest; among
/// equals, the search starts one thread further on each time, so equals
/// take turns. (Pingora's own choice is a random thread: a few long-lived
/// connections, such as a load balancer's, could then all land on one
/// thread while another idles.) An HTTP/2 connection's streams are
/// served on its thread too (see [`crate::h2`]).
pub struct Workers {
    threads: Vec<(Handle, IntGauge)>,
    next: AtomicUsize,
}

impl Workers {
    /// Run on one of Pingora's worker threads: the event loop of each of
    /// the `threads` threads that serve connections (1 for a work-stealing
    /// runtime), each with its gauge in `edgeroute_worker_connections`.
    /// Should some not be found, connections go to random threads, as on
    /// Pingora's own listeners.
    pub fn find(threads: usize, gauges: &prometheus::IntGaugeVec) -> Workers {
        // `current_handle` answers with a random worker thread's event loop.
        // 100 asks per thread miss one with a chance below threads·e⁻¹⁰⁰.
        let mut found: Vec<Handle> = Vec::with_capacity(threads);
        for _ in 0..threads.saturating_mul(100) {
            if found.len() == threads {
                break;
            }
            let handle = pingora_runtime::current_handle();
            if !found.iter().any(|h| h.id() == handle.id()) {
                found.push(handle);
            }
        }
        if found.len() != threads {
            tracing::warn!(
                threads,
                found = found.len(),
                "cannot find every worker thread; new connections go to random ones"
            );
            found.clear();
        }
        Workers::new(found, gauges)
    }

    fn new(handles: Vec<Handle>, gauges: &prometheus::IntGaugeVec) -> Workers {
        let threads = handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| (h, gauges.with_label_values(&[i.to_string().as_str()])))
            .collect();
        Workers {
            threads,
            next: AtomicUsize::new(0),
        }
    }

    /// The event loop for a new connection, and the connection counted
    /// against it.
    pub fn place(&self) -> (Handle, Option<Open>) {
        let n = self.threads.len();
        if n == 0 {
            return (pingora_runtime::current_handle(), None);
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let pick = (0..n)
            .map(|k| (start + k) % n)
            .min_by_key(|&i| self.threads[i].1.get())
            .unwrap_or(start);
        let (handle, gauge) = &self.threads[pick];
        (handle.clone(), Some(Open::new(gauge)))
    }
}

#[async_trait]
impl Service for Listeners {
    async fn start_service(
        &mut self,
        _fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let runtime = &self.proxy.state().config.runtime;
        let threads = if runtime.work_stealing {
            1
        } else {
            runtime.threads
        };
        let workers = Arc::new(Workers::find(
            threads,
            &self.proxy.state().metrics.worker_connections,
        ));
        let mut sockets = Vec::new();
        let mut all = true;
        for Listener { socket, transport } in self.listeners.drain(..) {
            let addr = socket.local_addr().ok();
            match TcpListener::from_std(socket) {
                Ok(socket) => sockets.push((socket, transport)),
                Err(e) => {
                    tracing::error!(error = %e, ?addr, "cannot serve a listener; /ready and /live now fail");
                    all = false;
                }
            }
        }
        // Connections that arrived since the bind wait in the backlog, and
        // each loop takes them from its first turn. With a listener not
        // served, readiness stays false. (Marked before the loops start, so
        // that a loop that dies at once, on another thread of a
        // work-stealing runtime, is not followed by the mark.)
        if all {
            self.proxy.state().lifecycle.mark_listening();
        } else {
            self.proxy.state().lifecycle.mark_broken();
        }
        let mut loops = tokio::task::JoinSet::new();
        for (socket, transport) in sockets {
            loops.spawn(accept_loop(
                socket,
                transport,
                Arc::clone(&self.proxy),
                Arc::clone(&workers),
                Arc::clone(&self.room),
                shutdown.clone(),
            ));
        }
        while let Some(done) = loops.join_next().await {
            let error = match done {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            // A listener no longer accepts: not ready or live, until a
            // restart.
            self.proxy.state().lifecycle.mark_broken();
            tracing::error!(%error, "an accept loop ended abnormally; /ready and /live now fail");
        }
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(self.addresses.clone())
    }
}

/// Accepts connections until the server shuts down, each served on one of
/// the server's threads (see [`hand_over`]); the listening socket closes
/// when it ends. An error says the listening socket itself is broken.
async fn accept_loop(
    listener: TcpListener,
    transport: Transport,
    proxy: Arc<EdgeProxy>,
    workers: Arc<Workers>,
    room: Arc<Room>,
    mut shutdown: ShutdownWatch,
) -> std::io::Result<()> {
    loop {
        if *shutdown.borrow() {
            break;
        }
        let (socket, peer, permit) = tokio::select! {
            biased;
            _ = shutdown.wait_for(|down| *down) => break,
            // An error: every accept would fail so, no spinning on it.
            accepted = room.accept(&listener) => accepted?,
        };
        let (transport, proxy, shutdown) =
            (transport.clone(), Arc::clone(&proxy), shutdown.clone());
        let (on, counted) = workers.place();
        hand_over(socket, &on, move |socket| async move {
            let _counted = (counted, permit);
            let conn = TcpConnection::from_client(socket, peer);
            if let Some((stream, http2)) = open(conn, peer, &transport, &proxy).await {
                proxy.serve_connection(stream, http2, &shutdown).await;
            }
        });
    }
    Ok(())
}

/// The connection ready for its first request, and whether it speaks
/// HTTP/2; `None` when the client left, failed its TLS handshake, let
/// `timeouts.client_idle` pass before its first bytes, or did not finish
/// its handshake within `timeouts.tls_handshake`.
async fn open(
    mut conn: TcpConnection,
    peer: SocketAddr,
    transport: &Transport,
    proxy: &EdgeProxy,
) -> Option<(Stream, bool)> {
    let state = proxy.state();
    let idle = state.config.timeouts.client_idle;
    match transport {
        Transport::Plain => Some((Box::new(conn), false)),
        Transport::H2c => match tokio::time::timeout(idle, conn.starts_with(H2_PREFACE)).await {
            Ok(Ok(http2)) => Some((Box::new(conn), http2)),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, %peer, "the client left before its first request");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "no request within timeouts.client_idle; closing");
                None
            }
        },
        Transport::Tls(acceptor) => {
            // A TLS client speaks first. One that closes before its first
            // byte, as a load balancer's TCP health check does, failed no
            // handshake. Until that byte the connection is idle; from it,
            // the handshake has `timeouts.tls_handshake`.
            let reason = match tokio::time::timeout(idle, conn.first_byte()).await {
                // A TLS record starts with its type (22 for a handshake);
                // an HTTP/1 request with its method's capitals.
                Ok(Ok(Some(first))) if first.is_ascii_uppercase() => {
                    tracing::debug!(%peer, "plain HTTP on a TLS listener; answered 400");
                    let limit = state.config.timeouts.tls_handshake;
                    // The answer, then the request read to its end (or for
                    // the handshake's time), so that the close is no reset
                    // that could drop the answer.
                    let _ = tokio::time::timeout(limit, answer_plain_http(conn)).await;
                    "plain_http"
                }
                Ok(Ok(Some(_))) => {
                    let limit = state.config.timeouts.tls_handshake;
                    match tokio::time::timeout(limit, acceptor.tls_handshake(conn)).await {
                        Ok(Ok(tls)) => {
                            let http2 = matches!(tls.selected_alpn_proto(), Some(ALPN::H2));
                            return Some((Box::new(tls), http2));
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, %peer, "a client's TLS handshake failed");
                            "error"
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake not done within timeouts.tls_handshake; closing");
                            "timeout"
                        }
                    }
                }
                Ok(Ok(None)) => return None,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %peer, "the client left before its TLS handshake");
                    return None;
                }
                Err(_) => {
                    tracing::debug!(%peer, "no TLS handshake within timeouts.client_idle; closing");
                    "timeout"
                }
            };
            state
                .metrics
                .tls_handshake_failures
                .with_label_values(&[reason])
                .inc();
            None
        }
    }
}

/// The answer to plain HTTP sent to a TLS listener (`curl http://` to an
/// `https://` port), as nginx gives one, rather than a closed connection
/// that says nothing; then what the client sends is read until it closes
/// (at most 64 KiB), so that closing with its request unread sends no
/// reset that could drop the answer.
async fn answer_plain_http(mut conn: TcpConnection) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BODY: &str = "this port speaks HTTPS (TLS): send the request with https://\n";
    let date = crate::date::now();
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\nDate: {}\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
        date.to_str().unwrap_or_default(),
        BODY.len()
    );
    if conn.write_all(answer.as_bytes()).await.is_err() || conn.shutdown().await.is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    let mut left: usize = 64 * 1024;
    while left > 0 {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// Serves an accepted socket on the runtime `on`, registered with that
/// runtime: its events then wake the thread that serves it, not the
/// accept loop's, which would have to pass each one on. (A socket moved
/// this way is not assumed ready, as a freshly accepted one is: its first
/// read waits for the serving loop's next turn.)
fn hand_over<F, Fut>(socket: TcpStream, on: &tokio::runtime::Handle, serve: F)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    if on.id() == tokio::runtime::Handle::current().id() {
        on.spawn(serve(socket));
        return;
    }
    let socket = match socket.into_std() {
        Ok(socket) => socket,
        Err(e) => {
            tracing::debug!(error = %e, "cannot hand an accepted connection over");
            return;
        }
    };
    on.spawn(async move {
        match TcpStream::from_std(socket) {
            Ok(socket) => serve(socket).await,
            Err(e) => tracing::debug!(error = %e, "cannot serve an accepted connection"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeroute_config::accept::listener_broken;
    use proptest::prelude::*;
    use std::time::Duration;

    /// `n` event loops that are never run: placement only compares them.
    fn runtimes(n: usize) -> Vec<tokio::runtime::Runtime> {
        (0..n)
            .map(|_| {
                tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("runtime")
            })
            .collect()
    }

    fn gauges() -> prometheus::IntGaugeVec {
        prometheus::IntGaugeVec::new(prometheus::Opts::new("open", "open"), &["worker"])
            .expect("gauge")
    }

    /// Which of `rts` `handle` belongs to.
    fn index(rts: &[tokio::runtime::Runtime], handle: &Handle) -> usize {
        rts.iter()
            .position(|rt| rt.handle().id() == handle.id())
            .expect("one of the runtimes")
    }

    fn counts(workers: &Workers) -> Vec<i64> {
        workers.threads.iter().map(|(_, g)| g.get()).collect()
    }

    #[test]
    fn a_new_connection_goes_to_the_thread_serving_the_fewest() {
        let rts = runtimes(3);
        let workers = Workers::new(
            rts.iter().map(|rt| rt.handle().clone()).collect(),
            &gauges(),
        );
        let mut open: Vec<(usize, Open)> = (0..6)
            .map(|_| {
                let (on, counted) = workers.place();
                (index(&rts, &on), counted.expect("counted"))
            })
            .collect();
        assert_eq!(counts(&workers), [2, 2, 2]);
        // Thread 1's connections end: the next two go there.
        open.retain(|(i, _)| *i != 1);
        assert_eq!(counts(&workers), [2, 0, 2]);
        for _ in 0..2 {
            let (on, counted) = workers.place();
            assert_eq!(index(&rts, &on), 1);
            open.push((1, counted.expect("counted")));
        }
        assert_eq!(counts(&workers), [2, 2, 2]);
        drop(open);
        assert_eq!(counts(&workers), [0, 0, 0]);
    }

    #[test]
    fn short_connections_one_at_a_time_take_the_threads_in_turn() {
        let rts = runtimes(3);
        let workers = Workers::new(
            rts.iter().map(|rt| rt.handle().clone()).collect(),
            &gauges(),
        );
        let picked: Vec<usize> = (0..7)
            .map(|_| {
                let (on, _counted) = workers.place();
                index(&rts, &on)
            })
            .collect();
        assert_eq!(picked, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn every_thread_of_a_pingora_runtime_is_found() {
        let rt = pingora_runtime::Runtime::new_no_steal(4, "find");
        let (tx, rx) = std::sync::mpsc::channel();
        rt.get_handle().spawn(async move {
            let gauges = gauges();
            let workers = Workers::find(4, &gauges);
            let ids: std::collections::HashSet<_> =
                workers.threads.iter().map(|(h, _)| h.id()).collect();
            tx.send(ids.len()).expect("send");
        });
        let found = rx.recv_timeout(Duration::from_secs(10)).expect("answer");
        rt.shutdown_timeout(Duration::from_secs(1));
        assert_eq!(found, 4);
    }

    #[tokio::test]
    async fn threads_not_found_leave_placement_to_pingora() {
        // Outside a Pingora runtime there is one event loop to find, not 2.
        let workers = Workers::find(2, &gauges());
        let (on, counted) = workers.place();
        assert!(counted.is_none());
        assert_eq!(on.id(), Handle::current().id());
        let one = Workers::find(1, &gauges());
        assert!(one.place().1.is_some());
    }

    proptest! {
        /// Whatever connections come and go, each new one goes to a thread
        /// that serves no more than any other.
        #[test]
        fn placement_always_picks_a_least_loaded_thread(
            threads in 1usize..6,
            steps in proptest::collection::vec(any::<Option<prop::sample::Index>>(), 1..80),
        ) {
            let rts = runtimes(threads);
            let workers =
                Workers::new(rts.iter().map(|rt| rt.handle().clone()).collect(), &gauges());
            let mut open = Vec::new();
            for step in steps {
                match step {
                    // A connection ends.
                    Some(which) if !open.is_empty() => {
                        open.swap_remove(which.index(open.len()));
                    }
                    _ => {
                        let before = counts(&workers);
                        let (on, counted) = workers.place();
                        let i = index(&rts, &on);
                        prop_assert_eq!(before[i], *before.iter().min().expect("threads"));
                        open.push(counted.expect("counted"));
                    }
                }
                let total: i64 = counts(&workers).iter().sum();
                prop_assert_eq!(total, open.len() as i64);
            }
        }
    }

    #[tokio::test]
    async fn a_listening_socket_shut_down_is_seen_as_broken() {
        use std::os::fd::AsRawFd;
        let listener =
            TcpListener::from_std(bind("127.0.0.1:0".parse().expect("addr")).expect("bind"))
                .expect("listener");
        // On Linux this makes every accept on the socket fail.
        nix::sys::socket::shutdown(listener.as_raw_fd(), nix::sys::socket::Shutdown::Read)
            .expect("shutdown");
        let accepted = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("accept answers");
        let e = accepted.expect_err("no connection from a shut-down socket");
        assert!(listener_broken(&e), "{e:?}");
    }

    /// A current-thread runtime on a thread of its own, dropped by `stop`.
    struct RuntimeThread {
        handle: tokio::runtime::Handle,
        stop: std::sync::mpsc::Sender<()>,
        thread: std::thread::JoinHandle<()>,
    }

    impl RuntimeThread {
        fn start() -> Self {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let handle = rt.handle().clone();
            let (stop, stopped) = std::sync::mpsc::channel::<()>();
            let thread = std::thread::spawn(move || {
                rt.block_on(async {
                    while stopped.try_recv().is_err() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                });
            });
            RuntimeThread {
                handle,
                stop,
                thread,
            }
        }

        fn stop(self) {
            self.stop.send(()).expect("stop");
            self.thread.join().expect("runtime thread");
        }
    }

    #[test]
    fn a_handed_over_socket_lives_on_the_serving_runtime_alone() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let accepting = RuntimeThread::start();
        let serving = RuntimeThread::start();
        let (served_on, was_served_on) = std::sync::mpsc::channel();
        let (echoed, was_echoed) = std::sync::mpsc::channel();
        let on = serving.handle.clone();
        let addr = accepting.handle.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(async move {
                let (socket, _) = listener.accept().await.expect("accept");
                hand_over(socket, &on, move |mut socket| async move {
                    served_on.send(tokio::runtime::Handle::current().id()).ok();
                    let mut got = [0u8; 4];
                    socket.read_exact(&mut got).await.expect("read");
                    socket.write_all(&got).await.expect("write");
                    echoed.send(()).ok();
                });
            });
            addr
        });
        let mut client = std::net::TcpStream::connect(addr).expect("connect");
        let limit = Duration::from_secs(10);
        let id = was_served_on.recv_timeout(limit).expect("served");
        assert_eq!(id, serving.handle.id());
        // With the accepting runtime gone, only a socket registered with the
        // serving one still gets its events.
        accepting.stop();
        std::io::Write::write_all(&mut client, b"ping").expect("write");
        was_echoed.recv_timeout(limit).expect("echoed");
        let mut got = [0u8; 4];
        std::io::Read::read_exact(&mut client, &mut got).expect("read");
        assert_eq!(&got, b"ping");
        serving.stop();
    }

    #[test]
    fn a_bound_socket_is_reported_busy_to_a_second_bind() {
        let first = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = first.local_addr().expect("addr");
        let e = bind(addr).expect_err("in use");
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    }
}

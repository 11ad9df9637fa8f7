//! The proxy's listeners, served by its own accept loop as a Pingora
//! service.
//!
//! Each accepted socket is registered with the worker thread that serves
//! it (see [`hand_over`]) and becomes a [`TcpConnection`], with
//! `TCP_NODELAY` set and the client's address from the accept. What comes
//! next depends on the listener:
//!
//! - plain: HTTP/1.x, served at once;
//! - `h2c`: the client's first bytes tell HTTP/2 with prior knowledge (its
//!   24-byte preface) from HTTP/1.x, read only as far as the first byte
//!   that differs, within `timeouts.client_idle`;
//! - `tls`: a rustls handshake, within `timeouts.client_idle`; ALPN then
//!   says HTTP/2 or HTTP/1.1.
//!
//! HTTP/1.x goes to the proxy's own session, HTTP/2 to pingora-core's. The
//! sockets are bound before the server starts (a busy port is a start-up
//! error), as Pingora binds its own: `SO_REUSEADDR` and a backlog of 65,535
//! (the kernel caps it at `net.core.somaxconn`).

use crate::service::EdgeProxy;
use crate::tcp::TcpConnection;
use async_trait::async_trait;
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::{ALPN, Ssl, Stream};
use pingora_core::server::ListenFds;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::Service;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Connections waiting to be accepted, per listener.
const BACKLOG: i32 = 65_535;

/// What an HTTP/2 connection without TLS starts with (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

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
}

impl Listeners {
    pub fn new(name: &str, proxy: Arc<EdgeProxy>, listeners: Vec<Listener>) -> Self {
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
        }
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
        let mut loops = Vec::new();
        let mut all = true;
        for Listener { socket, transport } in self.listeners.drain(..) {
            let addr = socket.local_addr().ok();
            match TcpListener::from_std(socket) {
                Ok(socket) => loops.push(tokio::spawn(accept_loop(
                    socket,
                    transport,
                    Arc::clone(&self.proxy),
                    shutdown.clone(),
                ))),
                Err(e) => {
                    tracing::error!(error = %e, ?addr, "cannot serve a listener");
                    all = false;
                }
            }
        }
        // Connections that arrived since the bind wait in the backlog, and
        // each loop takes them from its first turn. With a listener not
        // served, readiness stays false.
        if all {
            self.proxy.state().lifecycle.mark_listening();
        }
        for done in loops {
            if let Err(e) = done.await {
                tracing::error!(error = %e, "an accept loop ended abnormally");
            }
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
/// when it ends.
async fn accept_loop(
    listener: TcpListener,
    transport: Transport,
    proxy: Arc<EdgeProxy>,
    mut shutdown: ShutdownWatch,
) {
    loop {
        if *shutdown.borrow() {
            break;
        }
        let accepted = tokio::select! {
            biased;
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if out_of_resources(&e) => {
                tracing::warn!(error = %e, "cannot accept connections; waiting for resources");
                // accept would fail again at once: wait for some to be freed.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => {
                // One connection's trouble (reset before it was accepted).
                tracing::debug!(error = %e, "cannot accept a connection");
                continue;
            }
        };
        let (transport, proxy, shutdown) =
            (transport.clone(), Arc::clone(&proxy), shutdown.clone());
        hand_over(
            socket,
            &pingora_runtime::current_handle(),
            move |socket| async move {
                let conn = TcpConnection::from_client(socket, peer);
                if let Some((stream, http2)) = open(conn, &transport, &proxy).await {
                    proxy.serve_connection(stream, http2, &shutdown).await;
                }
            },
        );
    }
}

/// The connection ready for its first request, and whether it speaks
/// HTTP/2; `None` when the client left, failed its TLS handshake, or let
/// `timeouts.client_idle` pass before the handshake or the first bytes.
async fn open(
    mut conn: TcpConnection,
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
                tracing::debug!(error = %e, "the client left before its first request");
                None
            }
            Err(_) => {
                tracing::debug!("no request within timeouts.client_idle; closing");
                None
            }
        },
        Transport::Tls(acceptor) => {
            let failed = |reason: &str| {
                state
                    .metrics
                    .tls_handshake_failures
                    .with_label_values(&[reason])
                    .inc();
            };
            match tokio::time::timeout(idle, acceptor.tls_handshake(conn)).await {
                Ok(Ok(tls)) => {
                    let http2 = matches!(tls.selected_alpn_proto(), Some(ALPN::H2));
                    Some((Box::new(tls), http2))
                }
                Ok(Err(e)) => {
                    failed("error");
                    tracing::debug!(error = %e, "a client's TLS handshake failed");
                    None
                }
                Err(_) => {
                    failed("timeout");
                    tracing::debug!("no TLS handshake within timeouts.client_idle; closing");
                    None
                }
            }
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

/// Whether an accept failed for want of file descriptors or memory, which
/// another accept at once would also meet.
fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_resource_exhaustion_pauses_the_accept_loop() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(out_of_resources(&std::io::Error::from_raw_os_error(errno)));
        }
        for errno in [libc::ECONNABORTED, libc::EPERM, libc::EPROTO] {
            assert!(!out_of_resources(&std::io::Error::from_raw_os_error(errno)));
        }
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

//! Plain HTTP/1 listeners (no TLS, no h2c), served by the proxy's own
//! accept loop as a Pingora service.
//!
//! Pingora's listening service puts every accepted socket in its own TCP
//! stream (which times each read and write that waits) and bounds a TLS
//! handshake that a plain socket never has with a timer. Here an accepted
//! socket becomes a [`TcpConnection`] with `TCP_NODELAY` set and the
//! client's address from the accept, and goes to the same [`EdgeServer`]
//! as on Pingora's listeners. TLS and h2c listeners stay on Pingora's
//! service. The sockets are bound before the server starts (a busy port is
//! a start-up error), as Pingora binds its own: `SO_REUSEADDR` and a
//! backlog of 65,535 (the kernel caps it at `net.core.somaxconn`).

use crate::service::EdgeServer;
use crate::tcp::TcpConnection;
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::server::ListenFds;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::Service;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Connections waiting to be accepted, per listener.
const BACKLOG: i32 = 65_535;

/// A listening socket for `addr`, ready for [`PlainListeners`].
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

/// The plain listeners of one [`EdgeServer`].
pub struct PlainListeners {
    name: String,
    app: Arc<EdgeServer>,
    listeners: Vec<std::net::TcpListener>,
    addresses: Vec<String>,
}

impl PlainListeners {
    /// `listeners`: bound with [`bind`].
    pub fn new(name: &str, app: EdgeServer, listeners: Vec<std::net::TcpListener>) -> Self {
        let addresses = listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .map(|a| a.to_string())
            .collect();
        PlainListeners {
            name: name.to_owned(),
            app: Arc::new(app),
            listeners,
            addresses,
        }
    }
}

#[async_trait]
impl Service for PlainListeners {
    async fn start_service(
        &mut self,
        _fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let mut loops = Vec::new();
        for listener in self.listeners.drain(..) {
            let addr = listener.local_addr().ok();
            match TcpListener::from_std(listener) {
                Ok(listener) => loops.push(tokio::spawn(accept_loop(
                    listener,
                    Arc::clone(&self.app),
                    shutdown.clone(),
                ))),
                Err(e) => tracing::error!(error = %e, ?addr, "cannot serve a listener"),
            }
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
async fn accept_loop(listener: TcpListener, app: Arc<EdgeServer>, mut shutdown: ShutdownWatch) {
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
        let app = Arc::clone(&app);
        let shutdown = shutdown.clone();
        hand_over(
            socket,
            &pingora_runtime::current_handle(),
            move |socket| async move {
                let stream = TcpConnection::from_client(socket, peer);
                // Nothing comes back for reuse from an HTTP/1 connection.
                drop(app.process_new(stream, &shutdown).await);
            },
        );
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

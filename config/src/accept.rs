//! What a server's accept loop shares, in the proxy and the control plane:
//! a bound on the connections served at once, and which failed accepts
//! call for a pause.
//!
//! While a server's connections are at its bound it accepts none, and new
//! clients wait in the listening socket's backlog, as they do while the
//! process has no file descriptor left: each open connection holds a
//! descriptor, and a process that has none left cannot open its own files
//! or reach anything else either.

use prometheus::core::Collector;
use prometheus::{IntCounterVec, IntGauge};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors a server keeps for everything but its connections' own
/// when its bound comes from the open-file limit (logs, the files it reads,
/// what it asks of other services).
pub const RESERVED_FILES: u64 = 256;

/// A server's bound on connections: `configured`, or else what the
/// process's limit on `open_files` leaves after [`RESERVED_FILES`], shared
/// by `files_per_connection` descriptors each, at least 1.
pub fn bound(configured: Option<usize>, open_files: u64, files_per_connection: u64) -> usize {
    configured.unwrap_or_else(|| {
        let left = open_files.saturating_sub(RESERVED_FILES) / files_per_connection.max(1);
        usize::try_from(left).unwrap_or(usize::MAX).max(1)
    })
}

/// Why an accept loop waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// As many connections as the server's bound are open.
    ConnectionLimit,
    /// An accept failed for want of a file descriptor or memory.
    OutOfResources,
}

impl Wait {
    /// The `reason` label of the wait counter.
    pub fn label(self) -> &'static str {
        match self {
            Wait::ConnectionLimit => "connection_limit",
            Wait::OutOfResources => "out_of_resources",
        }
    }
}

/// How often a wait of each kind is logged, at most (each is counted).
const WAIT_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Room for connections: one permit per connection served, at most `max`
/// in all.
pub struct Room {
    permits: Arc<Semaphore>,
    max: usize,
    /// The setting that gives `max`, for the log.
    setting: &'static str,
    /// Waits counted by [`Wait::label`].
    waits: IntCounterVec,
    /// When each kind of wait was last logged.
    logged: Mutex<[Option<Instant>; 2]>,
}

impl Room {
    /// Room for `max` connections (at least 1), set by `setting`; every
    /// wait is counted in `waits` by its reason, whose series are created
    /// here at 0.
    pub fn new(max: usize, setting: &'static str, waits: IntCounterVec) -> Room {
        for wait in [Wait::ConnectionLimit, Wait::OutOfResources] {
            waits.with_label_values(&[wait.label()]);
        }
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Room {
            permits: Arc::new(Semaphore::new(max)),
            max,
            setting,
            waits,
            logged: Mutex::new([None; 2]),
        }
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A permit for one more connection, at once or (counted and logged
    /// as a wait) as soon as an open one closes.
    pub async fn admit(&self) -> OwnedSemaphorePermit {
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
            return permit;
        }
        self.waiting(Wait::ConnectionLimit);
        loop {
            // The semaphore is never closed, so this never fails.
            if let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await {
                return permit;
            }
        }
    }

    /// The next connection on `listener`, with its permit, once there is
    /// room: an accept that another would fail at once too (no file
    /// descriptor or memory left) is counted and logged as a wait and
    /// tried again 100 ms later, and one connection's trouble (reset
    /// before it was accepted) is passed over. The error says the
    /// listening socket itself is broken: every accept on it would fail.
    pub async fn accept(
        &self,
        listener: &tokio::net::TcpListener,
    ) -> std::io::Result<(
        tokio::net::TcpStream,
        std::net::SocketAddr,
        OwnedSemaphorePermit,
    )> {
        let permit = self.admit().await;
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => return Ok((stream, peer, permit)),
                Err(e) if out_of_resources(&e) => {
                    self.waiting(Wait::OutOfResources);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) if listener_broken(&e) => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, bound = self.setting, "cannot accept a connection");
                }
            }
        }
    }

    /// Counts a wait, and logs it unless one of its kind was logged within
    /// [`WAIT_LOG_INTERVAL`].
    pub fn waiting(&self, wait: Wait) {
        self.waits.with_label_values(&[wait.label()]).inc();
        let now = Instant::now();
        {
            let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
            let last = &mut logged[wait as usize];
            if last.is_some_and(|at| now - at < WAIT_LOG_INTERVAL) {
                return;
            }
            *last = Some(now);
        }
        let counter = self
            .waits
            .desc()
            .first()
            .map_or_else(String::new, |d| d.fq_name.clone());
        match wait {
            Wait::ConnectionLimit => tracing::warn!(
                max = self.max,
                "connections at {}: new ones wait in the listen backlog until one closes (counted in {counter}; logged at most once a minute)",
                self.setting
            ),
            Wait::OutOfResources => tracing::warn!(
                "cannot accept connections: no file descriptor or memory left; waiting for some to be freed (raise the open-file limit or lower {}; counted in {counter}, logged at most once a minute)",
                self.setting
            ),
        }
    }
}

/// One open connection, counted in a gauge until dropped.
pub struct Open(IntGauge);

impl Open {
    pub fn new(gauge: &IntGauge) -> Open {
        gauge.inc();
        Open(gauge.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Whether an accept failed because the listening socket is not one any
/// more (closed, not listening, not a socket): every accept on it would
/// fail so. Errors of one connection (Linux passes a new connection's
/// network errors, such as `EPROTO` or `EHOSTUNREACH`, through accept) are
/// not.
pub fn listener_broken(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EFAULT)
    )
}

/// Whether an accept failed for want of file descriptors or memory, which
/// another accept at once would also meet.
pub fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Why a server cannot listen on `addr` (the config's `field`), and what
/// to do about it, from the error the bind met.
pub fn cannot_listen(field: &str, addr: std::net::SocketAddr, e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let advice = match e.kind() {
        ErrorKind::AddrInUse => {
            "another process listens there (another proxy or control plane?); stop it or pick another port"
        }
        ErrorKind::AddrNotAvailable => {
            "this host has no such address; use one of its own, or 0.0.0.0 or [::] for all of them"
        }
        ErrorKind::PermissionDenied => {
            "ports below 1024 need the CAP_NET_BIND_SERVICE capability; use a port above 1024 (the container image runs unprivileged)"
        }
        _ => "",
    };
    if advice.is_empty() {
        format!("cannot listen on {field} {addr}: {e}")
    } else {
        format!("cannot listen on {field} {addr}: {e}; {advice}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> IntCounterVec {
        IntCounterVec::new(
            prometheus::Opts::new("test_accept_waits_total", "waits"),
            &["reason"],
        )
        .expect("a counter")
    }

    #[test]
    fn a_listen_error_says_what_to_do_by_its_cause() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let addr = held.local_addr().expect("its address");
        let busy = std::net::TcpListener::bind(addr).expect_err("in use");
        let said = cannot_listen("server.address", addr, &busy);
        assert!(
            said.starts_with(&format!("cannot listen on server.address {addr}: ")),
            "{said}"
        );
        assert!(said.contains("another process listens there"), "{said}");
        // As a bind to an address this host lacks fails (TEST-NET-1).
        let nowhere: std::net::SocketAddr = "192.0.2.1:8080".parse().expect("an address");
        let absent = std::io::Error::from(std::io::ErrorKind::AddrNotAvailable);
        let said = cannot_listen("listeners[0].address", nowhere, &absent);
        assert!(said.contains("this host has no such address"), "{said}");
        assert!(!said.contains("another process"), "{said}");
    }

    #[tokio::test]
    async fn a_connection_over_the_bound_waits_until_one_closes() {
        let waits = counter();
        let room = Arc::new(Room::new(2, "server.max_connections", waits.clone()));
        assert_eq!(waits.with_label_values(&["connection_limit"]).get(), 0);
        let first = room.admit().await;
        let _second = room.admit().await;
        let third = tokio::spawn({
            let room = Arc::clone(&room);
            async move { room.admit().await }
        });
        // The third counts its wait before it waits.
        while waits.with_label_values(&["connection_limit"]).get() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(!third.is_finished());
        drop(first);
        let _third = third.await.expect("admitted once one closed");
        assert_eq!(waits.with_label_values(&["connection_limit"]).get(), 1);
        assert_eq!(waits.with_label_values(&["out_of_resources"]).get(), 0);
    }

    #[test]
    fn a_bound_of_zero_is_one() {
        assert_eq!(Room::new(0, "server.max_connections", counter()).max(), 1);
    }

    #[test]
    fn only_a_broken_listening_socket_ends_the_accept_loop() {
        for errno in [libc::EBADF, libc::EINVAL, libc::ENOTSOCK, libc::EFAULT] {
            assert!(listener_broken(&std::io::Error::from_raw_os_error(errno)));
        }
        for errno in [
            libc::ECONNABORTED,
            libc::EPROTO,
            libc::EOPNOTSUPP,
            libc::EHOSTUNREACH,
            libc::ENETDOWN,
            libc::EPERM,
            libc::EMFILE,
        ] {
            assert!(!listener_broken(&std::io::Error::from_raw_os_error(errno)));
        }
    }

    #[test]
    fn only_resource_exhaustion_pauses_the_accept_loop() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(out_of_resources(&std::io::Error::from_raw_os_error(errno)));
        }
        for errno in [libc::ECONNABORTED, libc::EPERM, libc::EPROTO] {
            assert!(!out_of_resources(&std::io::Error::from_raw_os_error(errno)));
        }
    }
}

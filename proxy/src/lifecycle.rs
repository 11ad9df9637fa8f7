//! Readiness, in-flight requests and shutdown.
//!
//! On SIGTERM the proxy flips `/ready` to 503 at once; after
//! `shutdown.keep_accepting` (none by default), during which it serves on,
//! it stops accepting (the accept loops end and close their sockets), lets
//! in-flight requests finish within the grace period, then exits 0 as soon
//! as none is left.
//! An HTTP/2 connection counts as in flight until it ends, so the answers
//! it carries and its GOAWAY go out before the exit.

use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{Notify, watch};

pub struct Lifecycle {
    /// Every traffic listener's accept loop runs.
    listening: AtomicBool,
    /// A traffic listener could not be served, or stopped accepting: only
    /// a restart helps.
    broken: AtomicBool,
    shutting_down: AtomicBool,
    inflight: AtomicUsize,
    idle: Notify,
    /// Not ready any more ([`Lifecycle::announce_stop`]).
    stop_tx: watch::Sender<bool>,
    shutdown_tx: watch::Sender<bool>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            listening: AtomicBool::new(false),
            broken: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            idle: Notify::new(),
            stop_tx: watch::channel(false).0,
            shutdown_tx: watch::channel(false).0,
        }
    }
}

impl Lifecycle {
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// Every traffic listener's accept loop runs (see
    /// [`crate::listen::Listeners`]).
    pub fn mark_listening(&self) {
        self.listening.store(true, Ordering::Relaxed);
    }

    /// A traffic listener could not be served or stopped accepting
    /// connections, for good.
    pub fn mark_broken(&self) {
        self.listening.store(false, Ordering::Relaxed);
        self.broken.store(true, Ordering::Relaxed);
    }

    /// Whether [`Lifecycle::mark_broken`] was called.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Not ready any more (`/ready` and `/health` answer 503, HTTP/1
    /// connections close after their answer, HTTP/2 ones are told to go
    /// away), while serving on.
    pub fn announce_stop(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        set(&self.stop_tx);
    }

    /// Resolves once the stop is announced.
    pub async fn stop_announced(&self) {
        until_set(&self.stop_tx).await;
    }

    /// Not ready, and the drain begins: the accept loops stop, the grace
    /// period runs, and the table source and DNS refreshes stop.
    pub fn begin_shutdown(&self) {
        self.announce_stop();
        set(&self.shutdown_tx);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// Resolves once shutdown has begun.
    pub async fn shutdown_started(&self) {
        until_set(&self.shutdown_tx).await;
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        RequestGuard(Arc::clone(self))
    }

    /// An HTTP/2 connection, counted as in flight until it ends: its
    /// streams' answers go out through it after the streams are done, and
    /// on shutdown it is told to go away first.
    pub fn http2_connection_opened(self: &Arc<Self>) -> RequestGuard {
        self.request_started()
    }

    /// Resolves when no request is in flight.
    pub async fn drained(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inflight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Sets a flag its waiters see (once: they are woken the first time only).
fn set(flag: &watch::Sender<bool>) {
    flag.send_if_modified(|was| !std::mem::replace(was, true));
}

/// Resolves once `flag` is set. (Its sender lives in the [`Lifecycle`]
/// that lends it, so the wait ends on `true` alone.)
async fn until_set(flag: &watch::Sender<bool>) {
    if flag.subscribe().wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// When a file is read again: every `interval`, and at once on SIGHUP.
pub struct Rereads {
    hup: Option<Signal>,
    tick: tokio::time::Interval,
}

impl Rereads {
    /// `what`: what is read, for the log line should SIGHUP not be
    /// available. The first tick is at once.
    pub fn new(interval: std::time::Duration, what: &str) -> Self {
        let hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; {what} still read every {interval:?}");
                None
            }
        };
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Rereads { hup, tick }
    }

    /// Waits for the next read: `Some(true)` for SIGHUP, `Some(false)` for
    /// the interval, `None` once shutdown has begun.
    pub async fn next(&mut self, lifecycle: &Lifecycle) -> Option<bool> {
        let hup = async {
            match self.hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = lifecycle.shutdown_started() => None,
            () = hup => Some(true),
            _ = self.tick.tick() => Some(false),
        }
    }
}

/// Counts one request (or HTTP/2 connection) as in flight until dropped.
pub struct RequestGuard(Arc<Lifecycle>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Pingora's shutdown trigger: SIGTERM is a graceful stop, SIGINT a fast one.
/// Readiness flips before Pingora is told, so `/ready` never lags the stop;
/// after SIGTERM, Pingora is told only once `shutdown.keep_accepting` (the
/// duration here) is over.
pub struct SignalWatch(pub Arc<Lifecycle>, pub std::time::Duration);

#[async_trait]
impl ShutdownSignalWatch for SignalWatch {
    async fn recv(&self) -> ShutdownSignal {
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot install signal handlers; stopping");
                return ShutdownSignal::FastShutdown;
            }
        };
        tokio::select! {
            _ = term.recv() => {
                // SIGINT still stops at once: an operator's Ctrl-C on a
                // drain that takes too long.
                let lifecycle = Arc::clone(&self.0);
                tokio::spawn(async move {
                    int.recv().await;
                    tracing::warn!(
                        still_in_flight = lifecycle.inflight(),
                        "SIGINT while stopping: stopping now"
                    );
                    std::process::exit(0);
                });
                let keep_accepting = self.1;
                if !keep_accepting.is_zero() {
                    tracing::info!(keep_accepting = ?keep_accepting, "SIGTERM: not ready any more; accepting and serving for shutdown.keep_accepting, then finishing in-flight requests");
                    self.0.announce_stop();
                    tokio::time::sleep(keep_accepting).await;
                }
                tracing::info!("SIGTERM: not ready any more, no longer accepting; finishing in-flight requests");
                self.0.begin_shutdown();
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => {
                // At once, with what it cuts counted (the server's own fast
                // stop would drop the requests first, and their count with
                // them).
                tracing::warn!(
                    still_in_flight = self.0.inflight(),
                    "SIGINT: stopping now"
                );
                self.0.begin_shutdown();
                std::process::exit(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn drained_waits_for_the_last_request() {
        let l = Arc::new(Lifecycle::default());
        let g1 = l.request_started();
        let g2 = l.request_started();
        let waiter = tokio::spawn({
            let l = Arc::clone(&l);
            async move { l.drained().await }
        });
        drop(g1);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        drop(g2);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("drained after the last guard")
            .expect("task ran");
    }

    #[tokio::test]
    async fn shutdown_flag_and_watch() {
        let l = Lifecycle::default();
        assert!(!l.is_shutting_down());
        l.begin_shutdown();
        assert!(l.is_shutting_down());
        l.shutdown_started().await;
    }
}

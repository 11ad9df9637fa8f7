//! HTTP/2 client connections (h2c with prior knowledge, or ALPN `h2` over
//! TLS), on pingora-core's HTTP/2 session.
//!
//! - Each stream is one request, served by a task on the connection's own
//!   worker thread, so the thread the connection was placed on serves all
//!   of its work and a stream's socket events do not cross threads.
//! - A connection with no stream open for `timeouts.client_idle` is told to
//!   go away (GOAWAY, no error) and closed, as an idle HTTP/1 connection is.
//!   So is every connection when the server shuts down, once its streams
//!   are done; until it ends, the connection counts as in flight, so the
//!   proxy does not exit before its answers and its GOAWAY went out.
//! - After GOAWAY a connection with no stream open is closed when the
//!   client closes it, or after [`DRAIN`] if the client does not (a peer
//!   that went away without a word answers nothing).
//! - A client whose streams are refused as malformed [`MALFORMED_STREAMS`]
//!   times is disconnected.

use crate::service::EdgeProxy;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::http::v2::server::{self, H2Accept, HttpSession};
use pingora_core::protocols::{Digest, Stream};
use pingora_core::server::ShutdownWatch;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// How long a connection told to go away is kept, with no stream open,
/// for the client to close it.
pub const DRAIN: Duration = Duration::from_secs(1);

/// Malformed streams (refused at once with a reset or an error answer) a
/// connection may open before it is closed.
pub const MALFORMED_STREAMS: usize = 32;

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
        let mut conn = match tokio::time::timeout(idle, server::handshake(stream, None)).await {
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
        // Dropped after `conn`, whose end sends what its streams left.
        let in_flight = self.state().lifecycle.http2_connection_opened();
        let mut streams = JoinSet::new();
        let mut malformed = 0;
        let mut closing = false;
        let mut down = shutdown.clone();
        loop {
            // No stream open for this long ends the connection's wait.
            let quiet = if closing { DRAIN } else { idle };
            tokio::select! {
                biased;
                // A closed channel means the server is gone: close too.
                _ = down.wait_for(|down| *down), if !closing => {
                    conn.graceful_shutdown();
                    closing = true;
                }
                Some(done) = streams.join_next() => {
                    if let Err(e) = done
                        && e.is_panic()
                    {
                        tracing::error!(error = %e, "an HTTP/2 stream's task panicked");
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
                            if malformed >= MALFORMED_STREAMS {
                                tracing::info!(
                                    malformed,
                                    "closing an HTTP/2 connection whose client keeps sending malformed requests"
                                );
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            // A client may leave without closing HTTP/2 first.
                            tracing::debug!(error = %e, "HTTP/2 connection ended");
                            break;
                        }
                    }
                }
                () = tokio::time::sleep(quiet), if streams.is_empty() => {
                    if closing {
                        tracing::debug!("the client did not close an HTTP/2 connection told to go away");
                        break;
                    }
                    tracing::debug!("no HTTP/2 stream within timeouts.client_idle; closing");
                    conn.graceful_shutdown();
                    closing = true;
                }
            }
        }
        streams.detach_all();
        drop(conn);
        drop(in_flight);
    }
}

//! A TCP connection as Pingora's code takes one, and nothing more.
//!
//! Pingora's own TCP stream reads the clock around every read and write
//! that has to wait, to account the time in a connection digest, and goes
//! through a write buffer layer even when it holds nothing. The proxy reads
//! neither: it bounds each exchange with its own timer and measures a
//! backend's latency per request. Its TCP connections, to clients (see
//! [`crate::listen`]; a TLS client's under pingora-core's rustls stream)
//! and to plain-TCP backends (see [`crate::connect`]), are the tokio socket
//! itself behind Pingora's `IO` traits.

use async_trait::async_trait;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// A plain TCP connection, with `TCP_NODELAY` set (nothing the proxy
/// writes waits for the peer's acknowledgement of what went before).
#[derive(Debug)]
pub struct TcpConnection {
    stream: TcpStream,
    /// The socket, for its kernel account (and a client's address,
    /// known from the accept).
    digest: Option<Arc<SocketDigest>>,
    /// Bytes read by [`TcpConnection::starts_with`] or
    /// [`TcpConnection::first_byte`], read again first.
    early: Vec<u8>,
}

impl TcpConnection {
    /// A connection made to a backend.
    pub fn to_backend(stream: TcpStream) -> std::io::Result<Stream> {
        stream.set_nodelay(true)?;
        let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
        Ok(Box::new(TcpConnection {
            stream,
            digest: Some(Arc::new(digest)),
            early: Vec::new(),
        }))
    }

    /// A connection accepted from the client at `peer`. (Should the socket
    /// refuse `TCP_NODELAY`, the connection is served all the same.)
    pub fn from_client(stream: TcpStream, peer: std::net::SocketAddr) -> Self {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, %peer, "cannot set TCP_NODELAY on a client connection");
        }
        let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
        // A new cell is empty: the address goes in.
        digest.peer_addr.set(Some(SocketAddr::Inet(peer))).ok();
        TcpConnection {
            stream,
            digest: Some(Arc::new(digest)),
            early: Vec::new(),
        }
    }

    /// The peer's first byte, read (with what else has come, up to 32
    /// bytes) to be read again; `None` if the peer closed without sending
    /// one.
    pub async fn first_byte(&mut self) -> std::io::Result<Option<u8>> {
        if self.early.is_empty() {
            let mut buf = [0u8; 32];
            let n = self.stream.read(&mut buf).await?;
            self.early.extend_from_slice(&buf[..n]);
        }
        Ok(self.early.first().copied())
    }

    /// Whether the peer's first bytes are `prefix`. Reads only as far as
    /// it takes to tell: until all of `prefix` is in, or a byte differs
    /// from it, or the peer stops sending (EOF). The bytes read are read
    /// again, first, by whoever reads the connection next. A wait for the
    /// bytes is cancelled by dropping the future, and loses nothing.
    pub async fn starts_with(&mut self, prefix: &[u8]) -> std::io::Result<bool> {
        let mut buf = [0u8; 32];
        while self.early.len() < prefix.len() {
            if !prefix.starts_with(&self.early) {
                return Ok(false);
            }
            let want = (prefix.len() - self.early.len()).min(buf.len());
            let n = self.stream.read(&mut buf[..want]).await?;
            if n == 0 {
                return Ok(false);
            }
            self.early.extend_from_slice(&buf[..n]);
        }
        Ok(self.early.starts_with(prefix))
    }

    pub fn nodelay(&self) -> std::io::Result<bool> {
        self.stream.nodelay()
    }
}

impl AsyncRead for TcpConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.early.is_empty() {
            let n = self.early.len().min(buf.remaining());
            buf.put_slice(&self.early[..n]);
            self.early.drain(..n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TcpConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for TcpConnection {
    async fn shutdown(&mut self) {
        if let Err(e) = AsyncWriteExt::shutdown(&mut self.stream).await {
            tracing::debug!(error = %e, "cannot shut down a connection");
        }
    }
}

impl UniqueID for TcpConnection {
    fn id(&self) -> UniqueIDType {
        self.stream.as_raw_fd()
    }
}

impl Ssl for TcpConnection {}

impl GetTimingDigest for TcpConnection {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        Vec::new()
    }
}

impl GetProxyDigest for TcpConnection {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for TcpConnection {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.digest.clone()
    }
}

/// Nothing is peeked: an h2c listener tells HTTP/2 from HTTP/1 with
/// [`TcpConnection::starts_with`] before the connection is served.
#[async_trait]
impl Peek for TcpConnection {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_client_connection_knows_its_peer_and_goes_without_nagle() {
        let (conn, client) = accepted().await;
        let conn: Stream = Box::new(conn);
        let digest = conn.get_socket_digest().expect("digest");
        let seen = digest.peer_addr().and_then(|a| a.as_inet()).copied();
        assert_eq!(seen, Some(client.local_addr().expect("addr")));
        let tcp = conn
            .as_any()
            .downcast_ref::<TcpConnection>()
            .expect("plain");
        assert!(tcp.nodelay().expect("option"));
        assert!(conn.get_ssl_digest().is_none());
    }

    /// A connected pair: the accepted side as a client connection, and
    /// the peer that writes to it.
    async fn accepted() -> (TcpConnection, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let peer = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (socket, addr) = listener.accept().await.expect("accept");
        (TcpConnection::from_client(socket, addr), peer)
    }

    /// Everything the connection yields until the peer's EOF.
    async fn rest(conn: &mut TcpConnection) -> Vec<u8> {
        let mut out = Vec::new();
        conn.read_to_end(&mut out).await.expect("read");
        out
    }

    const PREFACE: &[u8] = crate::listen::H2_PREFACE;

    /// Polls `fut` once.
    fn poll_once<F: std::future::Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
        fut.poll(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[tokio::test]
    async fn a_prefix_that_arrives_in_pieces_is_found_and_read_again() {
        let (mut conn, mut peer) = accepted().await;
        let sent = [PREFACE, b"\0\0\x12\x04".as_slice()].concat();
        for end in [3, 10] {
            let start = conn.early.len();
            peer.write_all(&sent[start..end]).await.expect("write");
            // The runtime's I/O driver runs before this task goes on, and
            // hears of the bytes.
            tokio::task::yield_now().await;
            // A part of the prefix is not enough: the wait goes on, and
            // dropping it keeps what was read.
            {
                let found = conn.starts_with(PREFACE);
                tokio::pin!(found);
                assert!(poll_once(found.as_mut()).is_pending());
            }
            assert_eq!(conn.early, &sent[..end], "read in pieces, kept whole");
        }
        peer.write_all(&sent[10..]).await.expect("write");
        assert!(conn.starts_with(PREFACE).await.expect("read"));
        peer.shutdown().await.expect("shutdown");
        assert_eq!(rest(&mut conn).await, sent, "nothing lost, nothing doubled");
    }

    #[tokio::test]
    async fn a_shorter_request_is_told_apart_without_waiting_for_more() {
        let (mut conn, mut peer) = accepted().await;
        let request = b"GET / HTTP/1.0\r\n\r\n";
        assert!(request.len() < PREFACE.len());
        peer.write_all(request).await.expect("write");
        // The peer stays open and sends nothing more: the answer comes from
        // the first byte that differs, not from more bytes or an EOF.
        let told = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            conn.starts_with(PREFACE),
        )
        .await
        .expect("told apart without more bytes");
        assert!(!told.expect("read"));
        peer.shutdown().await.expect("shutdown");
        assert_eq!(rest(&mut conn).await, request);
    }

    #[tokio::test]
    async fn an_eof_inside_the_prefix_is_no_match_and_keeps_the_bytes() {
        let (mut conn, mut peer) = accepted().await;
        peer.write_all(&PREFACE[..9]).await.expect("write");
        peer.shutdown().await.expect("shutdown");
        assert!(!conn.starts_with(PREFACE).await.expect("read"));
        assert_eq!(rest(&mut conn).await, &PREFACE[..9]);
    }

    #[tokio::test]
    async fn the_first_byte_is_read_again_and_a_close_before_it_is_none() {
        let (mut conn, mut peer) = accepted().await;
        peer.write_all(b"\x16\x03\x01").await.expect("write");
        assert_eq!(conn.first_byte().await.expect("read"), Some(0x16));
        assert_eq!(conn.first_byte().await.expect("read"), Some(0x16));
        peer.shutdown().await.expect("shutdown");
        assert_eq!(rest(&mut conn).await, b"\x16\x03\x01");

        let (mut conn, peer) = accepted().await;
        drop(peer);
        assert_eq!(conn.first_byte().await.expect("read"), None);
    }

    #[tokio::test]
    async fn early_bytes_fill_a_small_read_in_turns() {
        let (mut conn, mut peer) = accepted().await;
        peer.write_all(b"PRI?rest").await.expect("write");
        peer.shutdown().await.expect("shutdown");
        assert!(!conn.starts_with(PREFACE).await.expect("read"));
        let mut two = [0u8; 2];
        conn.read_exact(&mut two).await.expect("read");
        assert_eq!(&two, b"PR");
        assert_eq!(rest(&mut conn).await, b"I?rest");
    }
}

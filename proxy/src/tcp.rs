//! A TCP connection as Pingora's code takes one, and nothing more.
//!
//! Pingora's own TCP stream reads the clock around every read and write
//! that has to wait, to account the time in a connection digest, and goes
//! through a write buffer layer even when it holds nothing. The proxy reads
//! neither: it bounds each exchange with its own timer and measures a
//! backend's latency per request. Its plain-TCP connections, to clients
//! (see [`crate::listen`]) and to backends (see [`crate::connect`]), are
//! the tokio socket itself behind Pingora's `IO` traits.

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
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// A plain TCP connection, with `TCP_NODELAY` set (nothing the proxy
/// writes waits for the peer's acknowledgement of what went before).
#[derive(Debug)]
pub struct TcpConnection {
    stream: TcpStream,
    /// A client's address, known from the accept.
    digest: Option<Arc<SocketDigest>>,
}

impl TcpConnection {
    /// A connection made to a backend.
    pub fn to_backend(stream: TcpStream) -> std::io::Result<Stream> {
        stream.set_nodelay(true)?;
        Ok(Box::new(TcpConnection {
            stream,
            digest: None,
        }))
    }

    /// A connection accepted from the client at `peer`. (Should the socket
    /// refuse `TCP_NODELAY`, the connection is served all the same.)
    pub fn from_client(stream: TcpStream, peer: std::net::SocketAddr) -> Stream {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, %peer, "cannot set TCP_NODELAY on a client connection");
        }
        let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
        // A new cell is empty: the address goes in.
        digest.peer_addr.set(Some(SocketAddr::Inet(peer))).ok();
        Box::new(TcpConnection {
            stream,
            digest: Some(Arc::new(digest)),
        })
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
            tracing::debug!(error = %e, "cannot shut down a backend connection");
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

/// Nothing is peeked: a plain listener serves HTTP/1 only (h2c listeners,
/// which look at a connection's first bytes, stay on Pingora's stream).
#[async_trait]
impl Peek for TcpConnection {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_client_connection_knows_its_peer_and_goes_without_nagle() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (socket, peer) = listener.accept().await.expect("accept");
        let conn = TcpConnection::from_client(socket, peer);
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
}

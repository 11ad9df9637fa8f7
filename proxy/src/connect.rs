//! Connections to backends. Plain-TCP backends get the socket itself
//! ([`TcpConnection`]); TLS backends go through Pingora's connector
//! (rustls).
//!
//! A plain-TCP backend connection is set up as Pingora's connector sets it
//! up: `TCP_NODELAY`, the connect timeout, and connect failures classified
//! alike (refused, timed out, no route), so retries and outlier detection
//! treat them the same.

use crate::tcp::TcpConnection;
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::Stream;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_error::{Error, ErrorType};
use std::io::ErrorKind;
use std::time::Duration;
use tokio::net::TcpStream;

type BError = Box<Error>;

/// A connection to `peer`: a plain socket for a plain-TCP backend (see the
/// module's documentation), else Pingora's connector.
pub async fn connect(connector: &TransportConnector, peer: &HttpPeer) -> Result<Stream, BError> {
    match peer.address() {
        SocketAddr::Inet(addr) if !peer.is_tls() && peer.get_proxy().is_none() => {
            let limit = peer.connection_timeout().unwrap_or(Duration::MAX);
            tcp(*addr, limit).await
        }
        _ => connector.new_stream(peer).await,
    }
}

/// Connects to `addr` within `limit`.
pub async fn tcp(addr: std::net::SocketAddr, limit: Duration) -> Result<Stream, BError> {
    let stream = match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            let why = format!("cannot connect to {addr}");
            return Err(Error::because(connect_error(&e), why, e));
        }
        Err(_) => {
            return Err(Error::explain(
                ErrorType::ConnectTimedout,
                format!("no connection to {addr} within {limit:?}"),
            ));
        }
    };
    TcpConnection::to_backend(stream).map_err(|e| {
        Error::because(
            ErrorType::ConnectError,
            format!("cannot set TCP_NODELAY on the connection to {addr}"),
            e,
        )
    })
}

/// What kind of connect failure an operating-system error is, as Pingora's
/// connector names them.
fn connect_error(e: &std::io::Error) -> ErrorType {
    match e.kind() {
        ErrorKind::ConnectionRefused => ErrorType::ConnectRefused,
        ErrorKind::TimedOut => ErrorType::ConnectTimedout,
        ErrorKind::AddrNotAvailable => ErrorType::BindError,
        ErrorKind::PermissionDenied | ErrorKind::AddrInUse => ErrorType::InternalError,
        ErrorKind::NetworkUnreachable | ErrorKind::HostUnreachable => ErrorType::ConnectNoRoute,
        _ => ErrorType::ConnectError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_connection_carries_bytes_both_ways_without_nagle() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut conn = tcp(addr, Duration::from_secs(5)).await.expect("connect");
        let (mut peer, _) = listener.accept().await.expect("accept");
        let tcp_conn = conn
            .as_any()
            .downcast_ref::<TcpConnection>()
            .expect("plain");
        assert!(tcp_conn.nodelay().expect("option"));
        conn.write_all(b"ping").await.expect("write");
        let mut got = [0u8; 4];
        peer.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"ping");
        peer.write_all(b"pong").await.expect("write");
        conn.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"pong");
    }

    #[tokio::test]
    async fn only_a_tls_peer_goes_through_the_tls_handshake() {
        // A backend that takes the connection and closes it at once: fine
        // for plain TCP (nothing was asked yet), a failed handshake for TLS.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                drop(conn);
            }
        });
        let connector = TransportConnector::new(None);
        let plain = HttpPeer::new(addr, false, "backend".into());
        let conn = connect(&connector, &plain).await.expect("plain");
        assert!(conn.as_any().is::<TcpConnection>());
        let tls = HttpPeer::new(addr, true, "backend".into());
        let e = connect(&connector, &tls).await.expect_err("no handshake");
        assert_ne!(e.etype(), &ErrorType::ConnectRefused, "{e}");
    }

    #[tokio::test]
    async fn a_refused_connection_says_so() {
        // A port just released: nothing listens there.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let e = tcp(addr, Duration::from_secs(5))
            .await
            .expect_err("refused");
        assert_eq!(e.etype(), &ErrorType::ConnectRefused);
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
    }

    #[test]
    fn connect_failures_are_classified_as_pingora_does() {
        use std::io::Error as E;
        for (e, want) in [
            (
                E::from(ErrorKind::ConnectionRefused),
                ErrorType::ConnectRefused,
            ),
            (E::from(ErrorKind::TimedOut), ErrorType::ConnectTimedout),
            (
                E::from(ErrorKind::NetworkUnreachable),
                ErrorType::ConnectNoRoute,
            ),
            (
                E::from(ErrorKind::HostUnreachable),
                ErrorType::ConnectNoRoute,
            ),
            (E::from(ErrorKind::AddrNotAvailable), ErrorType::BindError),
            (E::from(ErrorKind::ConnectionReset), ErrorType::ConnectError),
        ] {
            assert_eq!(connect_error(&e), want, "{e}");
        }
    }
}

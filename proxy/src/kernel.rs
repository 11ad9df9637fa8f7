//! What the kernel tells of a TCP connection (`TCP_INFO`), for the few
//! fields the proxy reads: its state, and what the peer has acknowledged;
//! and a connection made to end with a reset.
//!
//! Pingora's own reader asks for the whole structure of the kernel it was
//! written against (240 bytes, Linux 6.2 on) and takes any other length as
//! an error, so on older kernels (232 bytes on 6.1, as on Amazon Linux
//! 2023) it never answers. Linux copies as much of the structure as the
//! caller asks for and it has, so this reader takes the prefix that holds
//! its fields, which every Linux since 4.6 fills.

use pingora_core::protocols::Stream;
use std::os::fd::RawFd;

/// A connection's socket, by its descriptor: the connection's id, for
/// Pingora's TCP streams and the proxy's own (and a TLS stream over
/// either). Good while the connection lives.
#[derive(Debug, Clone, Copy)]
pub struct Socket(RawFd);

/// The fields of `TCP_INFO` the proxy reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpInfo {
    /// Linux's TCP state (`include/net/tcp_states.h`).
    pub state: u8,
    /// Segments sent and not yet acknowledged.
    pub unacked: u32,
    /// Bytes the peer has acknowledged, since the connection began.
    pub bytes_acked: u64,
    /// Bytes written and not yet sent.
    pub notsent_bytes: u32,
}

/// Linux's `TCP_CLOSE`: the connection is over, by a reset or by both
/// sides' ends of stream.
const TCP_CLOSE: u8 = 7;

impl TcpInfo {
    /// Bytes written are still to be sent or acknowledged.
    pub fn outstanding(&self) -> bool {
        self.unacked > 0 || self.notsent_bytes > 0
    }

    /// The connection is over ([`TCP_CLOSE`]).
    pub fn closed(&self) -> bool {
        self.state == TCP_CLOSE
    }
}

/// Where the fields lie in `struct tcp_info` (checked against Pingora's
/// copy of the structure in the tests).
const STATE_AT: usize = 0;
const UNACKED_AT: usize = 24;
const BYTES_ACKED_AT: usize = 120;
const NOTSENT_BYTES_AT: usize = 144;
/// As much of the structure as is asked for: the fields above, whole.
const PREFIX: usize = NOTSENT_BYTES_AT + 4;

impl Socket {
    /// The socket of `stream`, when it is a TCP connection (one Pingora
    /// knows a socket of).
    pub fn of(stream: &Stream) -> Option<Socket> {
        stream.get_socket_digest().map(|_| Socket(stream.id()))
    }

    /// What the kernel tells of the connection; `None` when it tells
    /// nothing (not a TCP socket, or a kernel older than 4.6).
    pub fn tcp_info(self) -> Option<TcpInfo> {
        let mut buf = [0u8; PREFIX];
        if self.get_option(libc::IPPROTO_TCP, libc::TCP_INFO, &mut buf)? < PREFIX {
            return None;
        }
        let u32_at = |at: usize| u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default());
        let u64_at = |at: usize| u64::from_ne_bytes(buf[at..at + 8].try_into().unwrap_or_default());
        Some(TcpInfo {
            state: buf[STATE_AT],
            unacked: u32_at(UNACKED_AT),
            bytes_acked: u64_at(BYTES_ACKED_AT),
            notsent_bytes: u32_at(NOTSENT_BYTES_AT),
        })
    }

    /// The error the connection met and no read or write has reported
    /// yet (`SO_ERROR`); the kernel forgets it once told, and the
    /// connection's later reads and writes fail or end as they would
    /// after reporting it.
    pub fn take_error(self) -> Option<std::io::Error> {
        let mut buf = [0u8; 4];
        if self.get_option(libc::SOL_SOCKET, libc::SO_ERROR, &mut buf)? < buf.len() {
            return None;
        }
        match i32::from_ne_bytes(buf) {
            0 => None,
            code => Some(std::io::Error::from_raw_os_error(code)),
        }
    }

    /// Makes the connection end with a reset when it is closed (`SO_LINGER`
    /// of 0 seconds), rather than with an end of stream, and without
    /// sending what is still unsent: its peer learns that what it received
    /// is not all there was. Whether the kernel took the option.
    pub fn reset_on_close(self) -> bool {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        let Ok(len) = libc::socklen_t::try_from(std::mem::size_of::<libc::linger>()) else {
            return false;
        };
        // SAFETY: setsockopt reads `len` bytes at the pointer, which is
        // `linger`'s size, and keeps no reference to them. The descriptor
        // is only named by the call (a closed one fails it).
        #[allow(unsafe_code)]
        let done = unsafe {
            libc::setsockopt(
                self.0,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                len,
            )
        };
        done == 0
    }

    /// Reads the socket option `name` of `level` into `buf`: how many
    /// bytes the kernel wrote, or `None` when it refused.
    fn get_option(self, level: libc::c_int, name: libc::c_int, buf: &mut [u8]) -> Option<usize> {
        let mut len = libc::socklen_t::try_from(buf.len()).ok()?;
        // SAFETY: getsockopt writes at most `len` bytes at the pointer,
        // and `buf` is `len` bytes long; it writes nothing else. The
        // descriptor is only read by the call (a closed one fails it).
        #[allow(unsafe_code)]
        let done =
            unsafe { libc::getsockopt(self.0, level, name, buf.as_mut_ptr().cast(), &mut len) };
        (done == 0).then_some(len as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::TcpConnection;
    use pingora_core::protocols::l4::ext::TCP_INFO;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_fields_lie_where_the_kernel_puts_them() {
        assert_eq!(std::mem::offset_of!(TCP_INFO, tcpi_state), STATE_AT);
        assert_eq!(std::mem::offset_of!(TCP_INFO, tcpi_unacked), UNACKED_AT);
        assert_eq!(
            std::mem::offset_of!(TCP_INFO, tcpi_bytes_acked),
            BYTES_ACKED_AT
        );
        assert_eq!(
            std::mem::offset_of!(TCP_INFO, tcpi_notsent_bytes),
            NOTSENT_BYTES_AT
        );
    }

    /// A connection's account, read from its stream: what the peer took
    /// is acknowledged, and a reset connection is closed, with the reset
    /// told once.
    #[tokio::test]
    async fn a_connection_tells_what_its_peer_took_and_when_it_is_over() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, addr) = listener.accept().await.unwrap();
        let mut conn: Stream = Box::new(TcpConnection::from_client(accepted, addr));
        let socket = Socket::of(&conn).expect("a TCP connection");
        let before = socket.tcp_info().expect("TCP_INFO");
        assert_eq!(before.state, 1, "established");
        conn.write_all(b"0123456789").await.unwrap();
        let mut got = [0u8; 10];
        peer.read_exact(&mut got).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let now = socket.tcp_info().unwrap();
            if now.bytes_acked >= before.bytes_acked + 10 {
                assert!(!now.outstanding(), "{now:?}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never acknowledged");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        socket2::SockRef::from(&peer)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(peer);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !socket.tcp_info().unwrap().closed() {
            assert!(std::time::Instant::now() < deadline, "never closed");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let error = socket.take_error().expect("the reset");
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
        assert!(socket.take_error().is_none(), "told once");
        let mut rest = Vec::new();
        assert_eq!(conn.read_to_end(&mut rest).await.unwrap(), 0);
    }
}

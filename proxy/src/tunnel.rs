//! The two directions of an upgraded connection (a WebSocket after its
//! `101 Switching Protocols`), carried independently: a side that is slow
//! to take bytes holds back only the bytes meant for it, never the other
//! direction. Each side's end of stream is passed on as the end of the
//! other's writing, and the tunnel ends when both have ended, when either
//! fails, or when no byte has moved either way for the idle limit.

use bytes::Bytes;
use pingora_error::{Error, ErrorType};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

pub type BError = Box<Error>;

/// Bytes read from one side at a time.
const CHUNK: usize = 16 * 1024;

/// How a tunnel ended without failing.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Both sides ended their streams.
    Closed,
    /// No byte moved either way for the idle limit.
    Idle,
}

/// Carries `client` and `backend` until the tunnel ends. `client_early` and
/// `backend_early`, bytes each side sent that were read with the upgrade's
/// heads, go first. Errors say which side failed (`into_down`: the client,
/// `into_up`: the backend).
pub async fn carry<C, B>(
    client: &mut C,
    client_early: Bytes,
    backend: &mut B,
    backend_early: Bytes,
    idle: Duration,
) -> Result<Ended, BError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let activity = Activity {
        start,
        last_ms: AtomicU64::new(0),
    };
    let (mut client_in, mut client_out) = tokio::io::split(client);
    let (mut backend_in, mut backend_out) = tokio::io::split(backend);
    let up = pass(
        &mut client_in,
        &mut backend_out,
        client_early,
        &activity,
        Side::Client,
    );
    let down = pass(
        &mut backend_in,
        &mut client_out,
        backend_early,
        &activity,
        Side::Backend,
    );
    tokio::select! {
        both = async { tokio::try_join!(up, down) } => both.map(|_| Ended::Closed),
        () = activity.idle_for(idle) => Ok(Ended::Idle),
    }
}

/// When a byte last moved, either way.
struct Activity {
    start: Instant,
    /// Milliseconds since `start`.
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// The side bytes are read from in one direction; the other side is written.
#[derive(Clone, Copy)]
enum Side {
    Client,
    Backend,
}

impl Side {
    fn read_error(self, e: std::io::Error) -> BError {
        match self {
            Side::Client => {
                Error::because(ErrorType::ReadError, "reading from the client", e).into_down()
            }
            Side::Backend => {
                Error::because(ErrorType::ReadError, "reading from the backend", e).into_up()
            }
        }
    }

    /// An error writing to the other side.
    fn write_error(self, e: std::io::Error) -> BError {
        match self {
            Side::Client => {
                Error::because(ErrorType::WriteError, "writing to the backend", e).into_up()
            }
            Side::Backend => {
                Error::because(ErrorType::WriteError, "writing to the client", e).into_down()
            }
        }
    }
}

/// One direction: `early`, then what `from` sends, to `to`; `from`'s end
/// of stream becomes the end of writing to `to`.
async fn pass<R, W>(
    from: &mut R,
    to: &mut W,
    early: Bytes,
    activity: &Activity,
    side: Side,
) -> Result<(), BError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    write(to, &early, activity, side).await?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = from.read(&mut buf).await.map_err(|e| side.read_error(e))?;
        activity.touch();
        if n == 0 {
            return to.shutdown().await.map_err(|e| side.write_error(e));
        }
        write(to, &buf[..n], activity, side).await?;
    }
}

/// Writes all of `data`, each partial write counting as activity, so a
/// side taking bytes slowly is not taken for idle.
async fn write<W: AsyncWrite + Unpin>(
    to: &mut W,
    mut data: &[u8],
    activity: &Activity,
    side: Side,
) -> Result<(), BError> {
    while !data.is_empty() {
        let n = to.write(data).await.map_err(|e| side.write_error(e))?;
        if n == 0 {
            return Err(side.write_error(std::io::ErrorKind::WriteZero.into()));
        }
        activity.touch();
        data = &data[n..];
    }
    to.flush().await.map_err(|e| side.write_error(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{DuplexStream, duplex};

    /// Carries the proxy's ends of a client pipe and a backend pipe.
    async fn run(
        mut client: DuplexStream,
        early: (&'static [u8], &'static [u8]),
        mut backend: DuplexStream,
        idle: Duration,
    ) -> Result<Ended, BError> {
        let (up, down) = (Bytes::from_static(early.0), Bytes::from_static(early.1));
        carry(&mut client, up, &mut backend, down, idle).await
    }

    /// A backend that answers every byte with eight, writing before it
    /// reads more, while the client writes 4 MiB before it reads anything
    /// back: carried one write at a time, each side would wait on the other
    /// for good.
    #[tokio::test]
    async fn a_backend_writing_more_than_it_reads_does_not_stall_the_client() {
        let (client_proxy, mut client) = duplex(64 * 1024);
        let (backend_proxy, mut backend) = duplex(64 * 1024);
        const SENT: usize = 4 << 20;
        let backend_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut got = 0usize;
            loop {
                let n = backend.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got += n;
                for _ in 0..8 {
                    backend.write_all(&buf[..n]).await.unwrap();
                }
            }
            backend.shutdown().await.unwrap();
            got
        });
        let client_task = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(&mut client);
            let writer = async {
                let block = vec![7u8; 64 * 1024];
                for _ in 0..SENT / block.len() {
                    w.write_all(&block).await.unwrap();
                }
                w.shutdown().await.unwrap();
            };
            let reader = async {
                let mut total = 0usize;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = r.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return total;
                    }
                    total += n;
                }
            };
            tokio::join!(writer, reader).1
        });
        let ended = run(
            client_proxy,
            (b"", b""),
            backend_proxy,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        assert_eq!(ended, Ended::Closed);
        assert_eq!(backend_task.await.unwrap(), SENT);
        assert_eq!(client_task.await.unwrap(), 8 * SENT);
    }

    #[tokio::test]
    async fn early_bytes_go_first_and_each_end_is_passed_on() {
        let (client_proxy, mut client) = duplex(1024);
        let (backend_proxy, mut backend) = duplex(1024);
        let early = (&b"early-up "[..], &b"early-down "[..]);
        let tunnel = tokio::spawn(run(
            client_proxy,
            early,
            backend_proxy,
            Duration::from_secs(60),
        ));
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        backend.read_to_end(&mut got).await.unwrap();
        assert_eq!(
            got, b"early-up hello",
            "the client's end reached the backend"
        );
        // The backend still answers after the client ended its side.
        backend.write_all(b"bye").await.unwrap();
        backend.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"early-down bye");
        assert_eq!(tunnel.await.unwrap().unwrap(), Ended::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_is_idle_only_when_neither_side_sends() {
        let (client_proxy, mut client) = duplex(1024);
        let (backend_proxy, mut backend) = duplex(1024);
        let tunnel = tokio::spawn(run(
            client_proxy,
            (b"", b""),
            backend_proxy,
            Duration::from_secs(10),
        ));
        // A one-way stream, a byte every 6 s for a minute: never idle.
        let mut byte = [0u8; 1];
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            backend.write_all(b"x").await.unwrap();
            client.read_exact(&mut byte).await.unwrap();
            assert!(!tunnel.is_finished(), "a one-way stream was taken for idle");
        }
        // Then silence: it ends after the idle limit.
        assert_eq!(tunnel.await.unwrap().unwrap(), Ended::Idle);
        let mut rest = Vec::new();
        assert_eq!(
            client.read_to_end(&mut rest).await.unwrap(),
            0,
            "the client's side is closed"
        );
    }

    #[tokio::test]
    async fn a_failing_side_ends_the_tunnel_with_its_error() {
        let (client_proxy, client) = duplex(1024);
        let (backend_proxy, backend) = duplex(1024);
        drop(backend);
        let mut client = client;
        client
            .write_all(b"to a backend that is gone")
            .await
            .unwrap();
        let e = run(
            client_proxy,
            (b"", b""),
            backend_proxy,
            Duration::from_secs(60),
        )
        .await
        .unwrap_err();
        assert_eq!(e.etype(), &ErrorType::WriteError, "{e}");
        assert!(e.to_string().contains("writing to the backend"), "{e}");
    }
}

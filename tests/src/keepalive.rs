//! A keep-alive backend whose idle connections close when a test says,
//! as a backend's keep-alive timeout closes them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Each request's method and body, in turn.
type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A keep-alive backend that answers each request `200` and records its
/// method and body; [`ClosingBackend::close_idle`] makes it close the
/// connections idle between requests, as one whose keep-alive timeout
/// passed does (some write a `408` first).
pub struct ClosingBackend {
    pub addr: SocketAddr,
    seen: Seen,
    close: tokio::sync::watch::Sender<&'static [u8]>,
    closed: Arc<AtomicUsize>,
}

impl ClosingBackend {
    pub async fn start() -> ClosingBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (close, told) = tokio::sync::watch::channel(&b""[..]);
        let closed = Arc::new(AtomicUsize::new(0));
        let (s_seen, s_closed) = (Arc::clone(&seen), Arc::clone(&closed));
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let mut told = told.clone();
                told.mark_unchanged();
                tokio::spawn(serve_until_told(
                    s,
                    told,
                    Arc::clone(&s_seen),
                    Arc::clone(&s_closed),
                ));
            }
        });
        ClosingBackend {
            addr,
            seen,
            close,
            closed,
        }
    }

    /// Closes the idle connections, each after writing `last`.
    pub fn close_idle(&self, last: &'static [u8]) {
        self.close.send_replace(last);
    }

    /// The connections it closed when told to.
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }

    /// Each request's method and body, in turn.
    pub fn seen(&self) -> Vec<(String, Vec<u8>)> {
        self.seen.lock().unwrap().clone()
    }
}

/// Serves requests with a `Content-Length` body (or none) on `s` until its
/// client closes, or until `told` while idle between requests.
async fn serve_until_told(
    mut s: tokio::net::TcpStream,
    mut told: tokio::sync::watch::Receiver<&'static [u8]>,
    seen: Seen,
    closed: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            tokio::select! {
                read = s.read(&mut chunk) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                },
                _ = told.changed(), if buf.is_empty() => {
                    let last = *told.borrow_and_update();
                    s.write_all(last).await.ok();
                    closed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < end + length {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let method = head.split(' ').next().unwrap_or_default().to_uppercase();
        let body = buf[end..end + length].to_vec();
        buf.drain(..end + length);
        seen.lock().unwrap().push((method, body));
        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .is_err()
        {
            return;
        }
    }
}

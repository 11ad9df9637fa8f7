//! A lean HTTP/1.1 client for the closed-loop throughput runs, like wrk's:
//! one request prepared as bytes, each response head parsed in place
//! (httparse, no header map) and its body skipped by its length or its
//! chunks.
//!
//! On a 2-core machine the load generator shares the CPUs with the target
//! and the backend, so whatever it spends on a response is taken from them.
//! A client that builds a header map pays for every field name it does not
//! know (an allocation and a hash each), which would charge a target for
//! the fields its responses carry rather than for its own work.

use edgeroute_proxy::h1::{ConnectionOptions, list_items};
use http::Version;
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Field lines a response may have.
const MAX_FIELDS: usize = 64;
/// A response head longer than this is an error.
const MAX_HEAD: usize = 64 * 1024;

/// `GET path` with a `Host`, as the bytes sent for every request.
pub fn get(path: &str, host: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

/// What came back for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// The server keeps the connection open for the next request.
    pub reusable: bool,
}

/// How a response's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// Until the server closes the connection.
    Close,
}

/// One connection and the bytes read from it but not yet used.
pub struct Conn<S> {
    stream: S,
    buf: Vec<u8>,
    /// Start of the unused bytes in `buf`.
    at: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(stream: S) -> Self {
        Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            at: 0,
        }
    }

    /// Sends `request` and reads its whole response (after any 1xx).
    pub async fn exchange(&mut self, request: &[u8]) -> io::Result<Answer> {
        self.stream.write_all(request).await?;
        loop {
            let (status, framing, keep) = self.head().await?;
            if status == 101 {
                // The connection now speaks another protocol: no body to
                // read, and no next request on it.
                return Ok(Answer {
                    status,
                    reusable: false,
                });
            }
            if (100..200).contains(&status) {
                continue;
            }
            let framing = if status == 204 || status == 304 {
                Framing::Length(0)
            } else {
                framing
            };
            match framing {
                Framing::Length(n) => self.skip(n).await?,
                Framing::Chunked => self.skip_chunks().await?,
                Framing::Close => {
                    while self.fill().await? > 0 {
                        self.at = self.buf.len();
                    }
                }
            }
            return Ok(Answer {
                status,
                reusable: keep && framing != Framing::Close,
            });
        }
    }

    /// Reads more bytes after the unused ones; 0 at the end of the stream.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
        }
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        self.stream.read_buf(&mut self.buf).await
    }

    async fn fill_some(&mut self, what: &str) -> io::Result<()> {
        if self.fill().await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the server closed the connection in the middle of {what}"),
            ));
        }
        Ok(())
    }

    /// The status, the body's framing and whether the connection stays
    /// open, of the next response head.
    async fn head(&mut self) -> io::Result<(u16, Framing, bool)> {
        loop {
            let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
            let mut resp = httparse::Response::new(&mut fields);
            match resp.parse(&self.buf[self.at..]) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = resp.code.unwrap_or(0);
                    let http10 = resp.version == Some(0);
                    let (framing, keep) = framing(resp.headers, http10)?;
                    self.at += len;
                    return Ok((status, framing, keep));
                }
                Ok(httparse::Status::Partial) if self.buf.len() - self.at < MAX_HEAD => {
                    self.fill_some("a response head").await?;
                }
                Ok(httparse::Status::Partial) => {
                    return Err(invalid("a response head over 64 KiB"));
                }
                Err(e) => return Err(invalid(&format!("a malformed response head: {e}"))),
            }
        }
    }

    /// Passes over the next `n` bytes.
    async fn skip(&mut self, mut n: u64) -> io::Result<()> {
        loop {
            let have = (self.buf.len() - self.at) as u64;
            if have >= n {
                self.at += n as usize;
                return Ok(());
            }
            n -= have;
            self.at = self.buf.len();
            self.fill_some("a response body").await?;
        }
    }

    /// Passes over a chunked body and its trailer.
    async fn skip_chunks(&mut self) -> io::Result<()> {
        loop {
            let size = loop {
                match httparse::parse_chunk_size(&self.buf[self.at..]) {
                    Ok(httparse::Status::Complete((len, size))) => {
                        self.at += len;
                        break size;
                    }
                    Ok(httparse::Status::Partial) => self.fill_some("a chunk size").await?,
                    Err(_) => return Err(invalid("a malformed chunk size")),
                }
            };
            if size == 0 {
                return self.skip_trailer().await;
            }
            self.skip(size).await?;
            self.expect_crlf().await?;
        }
    }

    async fn expect_crlf(&mut self) -> io::Result<()> {
        while self.buf.len() - self.at < 2 {
            self.fill_some("a chunk").await?;
        }
        if &self.buf[self.at..self.at + 2] != b"\r\n" {
            return Err(invalid("a chunk not followed by CRLF"));
        }
        self.at += 2;
        Ok(())
    }

    /// Trailer lines up to the empty line that ends the body.
    async fn skip_trailer(&mut self) -> io::Result<()> {
        loop {
            let rest = &self.buf[self.at..];
            match rest.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    self.at += end + 1;
                    if end == 0 || (end == 1 && rest[0] == b'\r') {
                        return Ok(());
                    }
                }
                None => self.fill_some("a trailer").await?,
            }
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the server sent {what}"),
    )
}

/// The body's framing and whether the connection stays open (RFC 9112 §6.3,
/// §9.3, the proxy's own rule for the latter), from a response's fields.
fn framing(fields: &[httparse::Header<'_>], http10: bool) -> io::Result<(Framing, bool)> {
    let mut framing = Framing::Close;
    let mut coded = false;
    let mut options = ConnectionOptions::default();
    for f in fields {
        let value = std::str::from_utf8(f.value).unwrap_or("");
        if f.name.eq_ignore_ascii_case("transfer-encoding") {
            // It frames the body whatever Content-Length says (RFC 9112 §6.3).
            coded = true;
            let last = list_items(value).last().unwrap_or("");
            framing = if last.eq_ignore_ascii_case("chunked") {
                Framing::Chunked
            } else {
                Framing::Close
            };
        } else if f.name.eq_ignore_ascii_case("content-length") && !coded {
            let n = value
                .trim()
                .parse()
                .map_err(|_| invalid(&format!("a Content-Length of {value:?}")))?;
            framing = Framing::Length(n);
        } else if f.name.eq_ignore_ascii_case("connection") {
            options.read(f.value);
        }
    }
    let version = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    Ok((framing, options.persist(version)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    /// A server that answers with `reply`, written in pieces of `piece`
    /// bytes, and the client's answer.
    async fn answer(reply: &'static [u8], piece: usize) -> io::Result<Answer> {
        let (client, mut server) = duplex(64);
        let serve = tokio::spawn(async move {
            let mut req = [0u8; 64];
            let n = server.read(&mut req).await.unwrap();
            assert!(req[..n].starts_with(b"GET /x HTTP/1.1\r\nHost: h\r\n"));
            for part in reply.chunks(piece) {
                server.write_all(part).await.unwrap();
                server.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            // Dropped here: the client sees the end of the stream.
        });
        let mut conn = Conn::new(client);
        let got = conn.exchange(&get("/x", "h")).await;
        serve.await.unwrap();
        if got.is_ok() {
            // Everything sent was used: nothing of this answer is left over.
            assert_eq!(conn.at, conn.buf.len(), "bytes left after the answer");
        }
        got
    }

    #[tokio::test]
    async fn a_body_is_read_to_its_length_however_it_arrives() {
        let reply: &[u8] = b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 11\r\nx-request-id: 1\r\n\r\nhello world";
        for piece in [1, 3, 7, reply.len()] {
            assert_eq!(
                answer(reply, piece).await.unwrap(),
                Answer {
                    status: 200,
                    reusable: true
                },
                "in pieces of {piece}"
            );
        }
    }

    #[tokio::test]
    async fn a_chunked_body_and_its_trailer_are_read_whole() {
        let reply: &[u8] =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nT: v\r\n\r\n";
        for piece in [1, 4, reply.len()] {
            assert_eq!(
                answer(reply, piece).await.unwrap(),
                Answer {
                    status: 200,
                    reusable: true
                }
            );
        }
    }

    #[tokio::test]
    async fn an_interim_answer_is_passed_over_and_errors_are_reported() {
        let reply: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        assert_eq!(
            answer(reply, reply.len()).await.unwrap(),
            Answer {
                status: 503,
                reusable: false
            }
        );
    }

    #[tokio::test]
    async fn transfer_encoding_frames_the_body_whatever_content_length_says() {
        let reply: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        assert_eq!(
            answer(reply, 3).await.unwrap(),
            Answer {
                status: 200,
                reusable: true
            }
        );
    }

    #[tokio::test]
    async fn a_switch_of_protocols_ends_the_exchange_and_the_connection() {
        // No body framing and the server keeps the connection: the answer
        // must not wait for its end.
        let (client, mut server) = duplex(256);
        tokio::spawn(async move {
            let mut req = [0u8; 64];
            let _ = server.read(&mut req).await.unwrap();
            server
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n")
                .await
                .unwrap();
            std::future::pending::<()>().await;
            drop(server);
        });
        let mut conn = Conn::new(client);
        assert_eq!(
            conn.exchange(&get("/", "h")).await.unwrap(),
            Answer {
                status: 101,
                reusable: false
            }
        );
    }

    #[tokio::test]
    async fn the_connection_is_kept_as_its_options_and_version_say() {
        for (reply, reusable) in [
            (
                &b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"[..],
                true,
            ),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close, keep-alive\r\n\r\nok",
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: Upgrade\r\n\r\nok",
                true,
            ),
        ] {
            assert_eq!(
                answer(reply, reply.len()).await.unwrap(),
                Answer {
                    status: 200,
                    reusable
                },
                "{:?}",
                String::from_utf8_lossy(reply)
            );
        }
    }

    #[tokio::test]
    async fn a_body_until_the_close_ends_the_connection() {
        let reply: &[u8] = b"HTTP/1.0 200 OK\r\n\r\nall of it";
        assert_eq!(
            answer(reply, 4).await.unwrap(),
            Answer {
                status: 200,
                reusable: false
            }
        );
    }

    #[tokio::test]
    async fn a_short_or_malformed_answer_is_an_error() {
        for reply in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"[..],
            b"HTTP/1.1 200 OK\r\nContent-Len",
            b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX",
            b"NOT HTTP\r\n\r\n",
        ] {
            assert!(
                answer(reply, 5).await.is_err(),
                "{:?}",
                String::from_utf8_lossy(reply)
            );
        }
    }

    #[tokio::test]
    async fn two_answers_on_one_connection_are_kept_apart() {
        let (client, mut server) = duplex(256);
        tokio::spawn(async move {
            let mut req = [0u8; 64];
            for body in [&b"first"[..], b"second!"] {
                let _ = server.read(&mut req).await.unwrap();
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                server.write_all(head.as_bytes()).await.unwrap();
                server.write_all(body).await.unwrap();
            }
        });
        let mut conn = Conn::new(client);
        let req = get("/", "h");
        for _ in 0..2 {
            assert_eq!(
                conn.exchange(&req).await.unwrap(),
                Answer {
                    status: 200,
                    reusable: true
                }
            );
            assert_eq!(conn.at, conn.buf.len());
        }
    }
}

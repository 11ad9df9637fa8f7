//! HTTP/2 frames written and read by hand, for tests of what the proxy
//! does with a client's connection rather than with its requests.

/// What an HTTP/2 client sends before its first frame (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types (RFC 9113 §6).
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;

/// The flag that ends a stream (on DATA and HEADERS).
pub const END_STREAM: u8 = 0x1;

/// The largest flow-control window (RFC 9113 §6.9.1).
pub const MAX_WINDOW: u32 = 0x7fff_ffff;

/// One HTTP/2 frame.
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn encode(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut out = vec![len[1], len[2], len[3], kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// The whole frames in `bytes`, in order.
    pub fn decode(mut bytes: &[u8]) -> Vec<Frame> {
        let mut frames = Vec::new();
        while bytes.len() >= 9 {
            let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            if bytes.len() < 9 + len {
                break;
            }
            frames.push(Frame {
                kind: bytes[3],
                flags: bytes[4],
                stream: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff,
                payload: bytes[9..9 + len].to_vec(),
            });
            bytes = &bytes[9 + len..];
        }
        frames
    }

    /// A GOAWAY's error code.
    pub fn error_code(&self) -> u32 {
        assert_eq!(self.kind, GOAWAY);
        u32::from_be_bytes(self.payload[4..8].try_into().unwrap())
    }
}

/// Reads frames from `conn` until one of them satisfies `wanted`; every
/// frame read so far. Panics if the connection closes first or `limit`
/// passes.
pub async fn read_until(
    conn: &mut tokio::net::TcpStream,
    limit: std::time::Duration,
    wanted: impl Fn(&Frame) -> bool,
) -> Vec<Frame> {
    read_until_all(conn, limit, |frames| frames.iter().any(&wanted)).await
}

/// Reads frames from `conn` until all read so far satisfy `wanted`; those
/// frames. Panics if the connection closes first or `limit` passes.
pub async fn read_until_all(
    conn: &mut tokio::net::TcpStream,
    limit: std::time::Duration,
    wanted: impl Fn(&[Frame]) -> bool,
) -> Vec<Frame> {
    use tokio::io::AsyncReadExt;
    let end = tokio::time::Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let frames = Frame::decode(&got);
        if wanted(&frames) {
            return frames;
        }
        let n = tokio::time::timeout_at(end, conn.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("the frames waited for did not come within {limit:?}"))
            .expect("read from the proxy");
        assert!(n > 0, "the connection closed before the frames waited for");
        got.extend_from_slice(&buf[..n]);
    }
}

/// A header block of `:method` (its static-table index), `:scheme http`,
/// `:path /` and, if `authority`, `:authority localhost` (HPACK without
/// Huffman coding or the dynamic table).
fn request_block(method: u8, authority: bool) -> Vec<u8> {
    // :scheme http and :path / are static-table 6 and 4.
    let mut block = vec![0x80 | method, 0x86, 0x84];
    if authority {
        // :authority (static table 1), a literal value not indexed.
        block.push(0x01);
        block.push(9);
        block.extend_from_slice(b"localhost");
    }
    block
}

/// A GET on `stream`; without an authority it is malformed.
pub fn get_request(stream: u32, authority: bool) -> Vec<u8> {
    // GET is static-table 2; END_STREAM | END_HEADERS.
    Frame::encode(HEADERS, 0x5, stream, &request_block(2, authority))
}

/// A HEAD on `stream`, whole (END_STREAM).
pub fn head_request(stream: u32) -> Vec<u8> {
    // :method as a literal value with its static-table name (index 2),
    // not indexed (RFC 7541 §6.2.2); then :scheme, :path, :authority.
    let mut block = vec![0x02, 4];
    block.extend_from_slice(b"HEAD");
    block.extend_from_slice(&request_block(2, true)[1..]);
    Frame::encode(HEADERS, 0x5, stream, &block)
}

/// A GET on `stream` that names its host in a `host` field, with no
/// `:authority`.
pub fn get_with_host(stream: u32, host: &str) -> Vec<u8> {
    let mut block = request_block(2, false);
    // A literal field not indexed, with a literal name (RFC 7541 §6.2.2).
    block.push(0x00);
    for part in [&b"host"[..], host.as_bytes()] {
        block.push(u8::try_from(part.len()).expect("a short field"));
        block.extend_from_slice(part);
    }
    Frame::encode(HEADERS, 0x5, stream, &block)
}

/// A PING that is no answer to one.
pub fn ping() -> Vec<u8> {
    Frame::encode(PING, 0, 0, &[0; 8])
}

/// The client giving up on `stream`: RST_STREAM with CANCEL.
pub fn cancel(stream: u32) -> Vec<u8> {
    const CANCEL: u32 = 0x8;
    Frame::encode(RST_STREAM, 0, stream, &CANCEL.to_be_bytes())
}

/// A POST's head on `stream`, its body still to come.
pub fn post_head(stream: u32) -> Vec<u8> {
    // POST is static-table 3; END_HEADERS only.
    Frame::encode(HEADERS, 0x4, stream, &request_block(3, true))
}

/// A POST's head on `stream` that declares a body of `length` bytes,
/// its body still to come.
pub fn post_head_with_length(stream: u32, length: usize) -> Vec<u8> {
    let mut block = request_block(3, true);
    // A literal field not indexed, with a literal name (RFC 7541 §6.2.2).
    block.push(0x00);
    let length = length.to_string();
    for part in [&b"content-length"[..], length.as_bytes()] {
        block.push(u8::try_from(part.len()).expect("a short field"));
        block.extend_from_slice(part);
    }
    Frame::encode(HEADERS, 0x4, stream, &block)
}

/// A client that speaks HTTP/2 without TLS from its first byte (h2c with
/// prior knowledge), otherwise as [`crate::client`].
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(std::time::Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

/// The client's opening with each stream's window as large as HTTP/2
/// allows and the connection's opened by 1 GiB (room left for the client
/// to give back what it reads): the proxy may send all it has at once.
pub fn opening_with_open_windows() -> Vec<u8> {
    // SETTINGS_INITIAL_WINDOW_SIZE.
    let mut out = opening_with(&[(0x4, MAX_WINDOW)]);
    // The connection's window starts at 65,535 whatever the settings say.
    out.extend(Frame::encode(
        WINDOW_UPDATE,
        0,
        0,
        &(1u32 << 30).to_be_bytes(),
    ));
    out
}

/// The client's opening: the preface and empty settings.
pub fn opening() -> Vec<u8> {
    opening_with(&[])
}

/// The client's opening with its settings, each an identifier and a value.
pub fn opening_with(settings: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (id, value) in settings {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    let mut out = PREFACE.to_vec();
    out.extend(Frame::encode(SETTINGS, 0, 0, &payload));
    out
}

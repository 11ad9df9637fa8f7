//! A budget for the frames an HTTP/2 client sends that carry no request:
//! PING, SETTINGS, WINDOW_UPDATE, PRIORITY, RST_STREAM, CONTINUATION,
//! frames of unknown types, empty DATA frames, and HEADERS frames on a
//! stream opened before. Each is cheap, but a client can send millions a
//! second, and the protocol library answers every PING and SETTINGS and
//! works through every WINDOW_UPDATE: one such connection took most of a
//! worker thread and tripled the latency of every other connection on it.
//!
//! A connection starts with [`BURST`] of them. It earns
//! [`PER_REQUEST_FRAME`] more for each frame that carries a request or an
//! answer: a client's HEADERS frame that opens a stream (one on a stream
//! opened before, trailers say, spends), a client's DATA frame with bytes
//! (one for each [`BYTES_PER_FRAME`] of them, at least one, at most
//! [`PER_REQUEST_FRAME`]: a client cannot earn more with bytes sent a few
//! at a time than its frames cost, on a stream the protocol library reset
//! and passes over as much as on any), the proxy's HEADERS frames and DATA
//! frames with bytes; an empty DATA frame spends, whether it ends its
//! stream or not. It also earns
//! [`PER_SECOND`] more each second while it has fewer than [`MOST`] in
//! hand: a client that sends a window update for every few KiB of an
//! answer it reads (long after the proxy wrote it, from the kernel's
//! buffers), or a keep-alive PING every few seconds, never runs short. One
//! that spends more than it has is told to go away with
//! `ENHANCE_YOUR_CALM`, and no more of its bytes are read.

use std::time::Instant;

/// Frames a connection may send at once before it has earned any.
pub const BURST: u32 = 100;
/// Frames earned each second.
pub const PER_SECOND: u32 = 10;
/// Frames earned with each frame that carries a request or an answer.
pub const PER_REQUEST_FRAME: u32 = 10;
/// The most a connection may have in hand from time alone.
pub const MOST: u32 = 1_000;
/// A client's DATA bytes that earn one frame.
pub const BYTES_PER_FRAME: u32 = 1_600;

/// The 24 bytes an HTTP/2 client sends before its first frame.
const PREFACE_LEN: u32 = 24;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const GOAWAY: u8 = 0x7;

/// What a frame does to the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Carries a request or an answer: earns that many frames.
    Request(u32),
    /// Carries none: spends.
    Control,
    /// Neither (GOAWAY).
    Neutral,
}

/// What a frame the proxy writes does: its answers earn.
fn written_kind(frame_type: u8, len: u32) -> Kind {
    match frame_type {
        HEADERS => Kind::Request(PER_REQUEST_FRAME),
        DATA if len > 0 => Kind::Request(PER_REQUEST_FRAME),
        _ => Kind::Neutral,
    }
}

/// What a frame the client sends on `stream` does, `opened` the highest
/// stream it has opened so far (raised here by a HEADERS frame that
/// opens one).
fn read_kind(frame_type: u8, len: u32, stream: u32, opened: &mut u32) -> Kind {
    match frame_type {
        HEADERS if stream > *opened => {
            *opened = stream;
            Kind::Request(PER_REQUEST_FRAME)
        }
        DATA if len > 0 => Kind::Request((len / BYTES_PER_FRAME).clamp(1, PER_REQUEST_FRAME)),
        GOAWAY => Kind::Neutral,
        _ => Kind::Control,
    }
}

/// Splits one direction's bytes into frames, whatever the pieces they
/// come in.
#[derive(Debug)]
struct Frames {
    /// Bytes of the preface still to pass over.
    preface: u32,
    /// The header being read, and how much of it has come.
    head: [u8; 9],
    have: usize,
    /// Payload bytes of the last frame still to pass over.
    skip: u32,
}

impl Frames {
    fn new(preface: u32) -> Self {
        Frames {
            preface,
            head: [0; 9],
            have: 0,
            skip: 0,
        }
    }

    /// Calls `on` with the type, flags, length and stream of each frame
    /// whose header ends in `bytes`.
    fn feed(&mut self, mut bytes: &[u8], mut on: impl FnMut(u8, u8, u32, u32)) {
        while !bytes.is_empty() {
            let passed = if self.preface > 0 {
                let n = self
                    .preface
                    .min(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
                self.preface -= n;
                n as usize
            } else if self.skip > 0 {
                let n = self
                    .skip
                    .min(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
                self.skip -= n;
                n as usize
            } else {
                let n = (9 - self.have).min(bytes.len());
                self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                if self.have == 9 {
                    self.have = 0;
                    let len = u32::from_be_bytes([0, self.head[0], self.head[1], self.head[2]]);
                    let stream = u32::from_be_bytes([
                        self.head[5],
                        self.head[6],
                        self.head[7],
                        self.head[8],
                    ]) & 0x7fff_ffff;
                    self.skip = len;
                    on(self.head[3], self.head[4], len, stream);
                }
                n
            };
            bytes = &bytes[passed..];
        }
    }
}

/// One connection's budget, fed with the bytes read from its client and
/// those written to it.
#[derive(Debug)]
pub struct Budget {
    read: Frames,
    written: Frames,
    /// The highest stream the client has opened.
    opened: u32,
    /// In thousandths of a frame, so that time's share is not lost to
    /// rounding (it is counted to the microsecond).
    milli: u64,
    at: Instant,
    spent: bool,
}

impl Budget {
    /// For a connection whose client's bytes start with the preface
    /// (`preface`), as they do when read from the start.
    pub fn new(preface: bool, now: Instant) -> Self {
        Budget {
            read: Frames::new(if preface { PREFACE_LEN } else { 0 }),
            written: Frames::new(0),
            opened: 0,
            milli: u64::from(BURST) * 1000,
            at: now,
            spent: false,
        }
    }

    /// Whether the client has spent more than it had.
    pub fn spent(&self) -> bool {
        self.spent
    }

    /// Bytes read from the client; true when they overspend the budget
    /// (then, and on every later call).
    pub fn read(&mut self, bytes: &[u8]) -> bool {
        self.read_at(bytes, Instant::now)
    }

    /// [`Self::read`] on the clock `now`.
    fn read_at(&mut self, bytes: &[u8], mut now: impl FnMut() -> Instant) -> bool {
        let Budget {
            read,
            opened,
            milli,
            at,
            spent,
            ..
        } = self;
        read.feed(bytes, |frame_type, _flags, len, stream| {
            match read_kind(frame_type, len, stream, opened) {
                Kind::Request(frames) => earn(milli, frames),
                Kind::Neutral => {}
                Kind::Control => {
                    // The clock is read only when the budget runs short:
                    // what time earned since the last reading comes then.
                    if *milli < 1000 {
                        let now = now();
                        let micros = now.saturating_duration_since(*at).as_micros();
                        *at = now;
                        let earned = u64::try_from(micros * u128::from(PER_SECOND) / 1000)
                            .unwrap_or(u64::MAX);
                        let room = (u64::from(MOST) * 1000).saturating_sub(*milli);
                        *milli += earned.min(room);
                    }
                    match milli.checked_sub(1000) {
                        Some(left) => *milli = left,
                        None => *spent = true,
                    }
                }
            }
        });
        self.spent
    }

    /// Bytes written to the client.
    pub fn written(&mut self, bytes: &[u8]) {
        let Budget { written, milli, .. } = self;
        written.feed(bytes, |frame_type, _flags, len, _stream| {
            if let Kind::Request(frames) = written_kind(frame_type, len) {
                earn(milli, frames);
            }
        });
    }
}

fn earn(milli: &mut u64, frames: u32) {
    *milli = milli.saturating_add(u64::from(frames) * 1000);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(frame_type: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        frame_on(frame_type, flags, 1, payload)
    }

    fn frame_on(frame_type: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], frame_type, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    const END_STREAM: u8 = 0x1;
    const PING: u8 = 0x6;
    const WINDOW_UPDATE: u8 = 0x8;

    /// A budget whose clock stands still at its start.
    struct Frozen(Budget, Instant);

    impl Frozen {
        fn new(preface: bool) -> Self {
            let at = Instant::now();
            Frozen(Budget::new(preface, at), at)
        }

        fn read(&mut self, bytes: &[u8]) -> bool {
            let at = self.1;
            self.0.read_at(bytes, || at)
        }
    }

    #[test]
    fn a_burst_of_control_frames_past_the_budget_overspends_it() {
        let mut b = Frozen::new(false);
        let ping = frame(PING, 0, &[0; 8]);
        for _ in 0..BURST {
            assert!(!b.read(&ping));
        }
        assert!(b.read(&ping), "one more than the burst");
        assert!(b.0.spent());
        assert!(b.read(&frame(HEADERS, 0x5, &[0x82])), "spent for good");
    }

    #[test]
    fn frames_that_carry_requests_and_answers_earn_more() {
        let mut b = Frozen::new(false);
        let update = frame(WINDOW_UPDATE, 0, &[0, 0, 0x40, 0]);
        let data = frame(DATA, 0, &[7; 100]);
        // An answer of 500 DATA frames, each followed by two window
        // updates (the stream's and the connection's), as some clients do.
        for _ in 0..500 {
            b.0.written(&data);
            assert!(!b.read(&update));
            assert!(!b.read(&update));
        }
        // The request that opens a stream earns too: with the burst spent,
        // each request pays for as many control frames as it earns.
        let mut b = Frozen::new(false);
        for _ in 0..BURST {
            assert!(!b.read(&update));
        }
        for stream in (1..100).step_by(2) {
            assert!(!b.read(&frame_on(HEADERS, 0x5, stream, &[0x82])));
            for _ in 0..PER_REQUEST_FRAME {
                assert!(!b.read(&update));
            }
        }
        assert!(b.read(&update), "one more than was earned");
        // An upload earns by its bytes.
        let mut b = Frozen::new(false);
        b.read(&frame(DATA, 0, &[7; 16 * 1024]));
        for _ in 0..BURST + PER_REQUEST_FRAME {
            assert!(!b.read(&update));
        }
        assert!(b.read(&update), "one more than was earned");
    }

    /// Frames a client can send for nothing earn nothing: HEADERS on a
    /// stream it opened before (which the protocol library passes over
    /// once it has reset the stream), DATA a few bytes at a time, empty
    /// DATA frames ending their stream or not.
    #[test]
    fn frames_that_cost_the_client_nothing_earn_nothing() {
        let ping = frame(PING, 0, &[0; 8]);
        let mut b = Frozen::new(false);
        assert!(!b.read(&frame_on(HEADERS, 0x5, 3, &[0x82])));
        // The request's earnings, and the burst.
        for _ in 0..BURST + PER_REQUEST_FRAME {
            assert!(!b.read(&ping));
        }
        // HEADERS again on that stream, or on an older one, spends.
        assert!(b.read(&frame_on(HEADERS, 0x4, 3, &[0x82])));
        let mut b = Frozen::new(false);
        assert!(!b.read(&frame_on(HEADERS, 0x5, 5, &[0x82])));
        for _ in 0..BURST + PER_REQUEST_FRAME {
            assert!(!b.read(&frame_on(HEADERS, 0x5, 3, &[0x82])));
        }
        assert!(b.read(&ping), "one more than was earned");
        // One byte of DATA earns one frame: a byte and a PING at a time
        // never earn the burst back.
        let mut b = Frozen::new(false);
        for _ in 0..BURST {
            assert!(!b.read(&ping));
        }
        for _ in 0..10 * BURST {
            assert!(!b.read(&frame(DATA, 0, &[7])));
            assert!(!b.read(&ping));
        }
        assert!(b.read(&ping), "nothing in hand");
        // Empty DATA frames spend, ending their stream or not.
        for flags in [0, END_STREAM] {
            let mut b = Frozen::new(false);
            for _ in 0..BURST {
                assert!(!b.read(&frame(DATA, flags, &[])));
            }
            assert!(b.read(&frame(DATA, flags, &[])), "flags {flags}");
        }
    }

    #[test]
    fn an_answer_read_long_after_it_was_written_pays_for_its_window_updates() {
        // 16 MiB written at once (1,024 frames of 16 KiB), then read from
        // the kernel's buffers 4 KiB at a time, a window update for each.
        let mut b = Frozen::new(false);
        let data = frame(DATA, 0, &[7; 16 * 1024]);
        for _ in 0..1024 {
            b.0.written(&data);
        }
        let update = frame(WINDOW_UPDATE, 0, &[0, 0, 0x10, 0]);
        for _ in 0..4 * 1024 {
            assert!(!b.read(&update));
        }
    }

    #[test]
    fn time_earns_frames_up_to_the_most_in_hand() {
        let start = Instant::now();
        let mut b = Budget::new(false, start);
        let ping = frame(PING, 0, &[0; 8]);
        // Half a second earns five frames.
        let later = start + std::time::Duration::from_millis(500);
        for _ in 0..BURST + PER_SECOND / 2 {
            assert!(!b.read_at(&ping, || later));
        }
        assert!(b.read_at(&ping, || later));
        // An hour's earnings are capped at MOST, beside the burst.
        let mut b = Budget::new(false, start);
        let hour = start + std::time::Duration::from_secs(3600);
        for _ in 0..BURST + MOST {
            assert!(!b.read_at(&ping, || hour));
        }
        assert!(b.read_at(&ping, || hour));
    }

    #[test]
    fn the_preface_is_passed_over() {
        let mut b = Frozen::new(true);
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        for _ in 0..BURST {
            bytes.extend(frame(PING, 0, &[0; 8]));
        }
        assert!(!b.read(&bytes));
        assert!(b.read(&frame(PING, 0, &[0; 8])));
    }

    proptest! {
        /// However a run of frames is cut into reads, the frames found are
        /// the frames sent.
        #[test]
        fn frames_are_found_whatever_the_pieces(
            frames in proptest::collection::vec((0u8..12, any::<u8>(), 0usize..40), 0..40),
            cuts in proptest::collection::vec(1usize..30, 1..20),
        ) {
            let mut bytes = Vec::new();
            for (t, f, len) in &frames {
                bytes.extend(frame(*t, *f, &vec![0xAB; *len]));
            }
            let mut seen = Vec::new();
            let mut split = Frames::new(0);
            let mut rest = &bytes[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = cuts[i % cuts.len()].min(rest.len());
                split.feed(&rest[..n], |t, f, len, stream| {
                    assert_eq!(stream, 1);
                    seen.push((t, f, len as usize));
                });
                rest = &rest[n..];
                i += 1;
            }
            prop_assert_eq!(seen, frames);
        }
    }
}

//! HTTP/2 frame boundaries in the spliced plugin→client byte stream, so that the launcher
//! can slip frames of its own in between two of the plugin's: a GOAWAY when it drains, and
//! the answer to a call it refuses (see [`crate::guard`]).
//!
//! The splice copies bytes without decoding them; all it needs to know is where one frame
//! ends, and whether a header block is still open (HEADERS or PUSH_PROMISE without
//! END_HEADERS: its CONTINUATION frames must follow with nothing in between, RFC 9113 §6.10).
//! A frame is a 9-byte header (24-bit payload length, type, flags, 31-bit stream id) and its
//! payload, so reading lengths, types and flags is enough, and costs a few instructions per
//! frame.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// GOAWAY, NO_ERROR, last stream id 2^31-1: "open no new streams here; the ones you have
/// will finish". The graceful first step RFC 9113 §6.8 recommends.
pub const GOAWAY: [u8; 17] = [
    0, 0, 8,   // payload length
    0x7, // type GOAWAY
    0,   // flags
    0, 0, 0, 0, // stream 0: the connection
    0x7f, 0xff, 0xff, 0xff, // last stream id
    0, 0, 0, 0, // NO_ERROR
];

/// GOAWAY's frame type.
pub const GOAWAY_TYPE: u8 = 0x7;
/// Error code REFUSED_STREAM: refused before any processing, safe to send again
/// (RFC 9113 §7).
pub const ERROR_REFUSED_STREAM: u32 = 0x7;

/// A GOAWAY frame: streams above `last_stream` were not processed; `code` and `debug` say
/// why.
pub fn goaway(last_stream: u32, code: u32, debug: &[u8]) -> Vec<u8> {
    let mut frame = frame_header(8 + debug.len(), GOAWAY_TYPE, 0, 0).to_vec();
    frame.extend_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(debug);
    frame
}

/// The length of a frame header.
pub const HEADER_LEN: usize = 9;
/// Frame types (RFC 9113 §6).
pub const DATA: u8 = 0x0;
/// HEADERS.
pub const HEADERS: u8 = 0x1;
/// RST_STREAM.
pub const RST_STREAM: u8 = 0x3;
/// PUSH_PROMISE.
pub const PUSH_PROMISE: u8 = 0x5;
/// WINDOW_UPDATE.
pub const WINDOW_UPDATE: u8 = 0x8;
/// CONTINUATION.
pub const CONTINUATION: u8 = 0x9;
/// Flags.
pub const END_STREAM: u8 = 0x1;
/// END_HEADERS.
pub const END_HEADERS: u8 = 0x4;
/// PADDED.
pub const PADDED: u8 = 0x8;
/// PRIORITY (on HEADERS).
pub const PRIORITY: u8 = 0x20;

/// A frame header: `len`, `kind`, `flags`, `stream`.
pub fn frame_header(len: usize, kind: u8, flags: u8, stream: u32) -> [u8; HEADER_LEN] {
    let [_, l0, l1, l2] = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    let [s0, s1, s2, s3] = (stream & 0x7fff_ffff).to_be_bytes();
    [l0, l1, l2, kind, flags, s0, s1, s2, s3]
}

/// Where the byte stream is relative to frame boundaries. Starts at a boundary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FrameTracker {
    /// Header bytes of the current frame seen so far (0 between frames or in a payload).
    header_seen: u8,
    /// The payload length read from the header so far.
    length: u32,
    /// The type and flags read from the header so far.
    kind: u8,
    flags: u8,
    /// Payload bytes of the current frame still to come.
    payload_left: u32,
    /// A header block was started and has not ended yet.
    in_header_block: bool,
}

impl FrameTracker {
    /// Whether everything consumed so far ends exactly at the end of a frame.
    pub fn at_boundary(&self) -> bool {
        self.header_seen == 0 && self.payload_left == 0
    }

    /// Whether a frame of the launcher's own may go in here: at a frame boundary, and not
    /// between a HEADERS frame and its CONTINUATION frames.
    pub fn between_blocks(&self) -> bool {
        self.at_boundary() && !self.in_header_block
    }

    /// A frame header is complete: note whether it opens or continues a header block.
    fn saw_header(&mut self, kind: u8, flags: u8) {
        self.in_header_block =
            matches!(kind, HEADERS | PUSH_PROMISE | CONTINUATION) && flags & END_HEADERS == 0;
    }

    /// Consumes `bytes` and returns how many it took: all of them, or with `stop`, only those
    /// up to the first point where [`FrameTracker::between_blocks`] holds (0 when it already
    /// does).
    pub fn consume(&mut self, bytes: &[u8], stop: bool) -> usize {
        let end = bytes.len();
        let mut i = 0;
        loop {
            if self.payload_left > 0 {
                let take = (end - i).min(self.payload_left as usize);
                i += take;
                // `take` is at most `payload_left`, a u32.
                self.payload_left -= take as u32;
                if self.payload_left > 0 {
                    return i;
                }
            }
            if self.header_seen == 0 {
                if i == end || (stop && !self.in_header_block) {
                    return i;
                }
                // The common case, many small frames per read: one step per whole frame.
                while end - i >= HEADER_LEN {
                    let len = (usize::from(bytes[i]) << 16)
                        | (usize::from(bytes[i + 1]) << 8)
                        | usize::from(bytes[i + 2]);
                    self.saw_header(bytes[i + 3], bytes[i + 4]);
                    let next = i + HEADER_LEN + len;
                    if next > end {
                        // Less than 2^24: a frame's payload length has 24 bits.
                        self.payload_left = (next - end) as u32;
                        return end;
                    }
                    i = next;
                    if stop && !self.in_header_block {
                        return i;
                    }
                }
                if i == end {
                    return i;
                }
            }
            // A header split across reads.
            while i < end && usize::from(self.header_seen) < HEADER_LEN {
                match self.header_seen {
                    0..=2 => self.length = (self.length << 8) | u32::from(bytes[i]),
                    3 => self.kind = bytes[i],
                    4 => self.flags = bytes[i],
                    _ => {}
                }
                self.header_seen += 1;
                i += 1;
            }
            if usize::from(self.header_seen) < HEADER_LEN {
                return i;
            }
            self.saw_header(self.kind, self.flags);
            self.payload_left = self.length;
            self.header_seen = 0;
            self.length = 0;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goaway {
    NotAsked,
    /// Asked for: the copier sends it at the next frame boundary it copies.
    Pending,
    /// Sent, or no longer possible (the write side is closed).
    Done,
}

#[derive(Debug)]
struct State<W> {
    out: W,
    frames: FrameTracker,
    goaway: Goaway,
    /// Frames of the launcher's own waiting for the next point between two of the plugin's
    /// header blocks.
    pending: Vec<u8>,
    /// The write side was closed: nothing more goes out.
    closed: bool,
}

impl<W: Write> State<W> {
    fn has_pending(&self) -> bool {
        self.goaway == Goaway::Pending || !self.pending.is_empty()
    }

    /// Writes what is pending; call only where [`FrameTracker::between_blocks`] holds.
    fn flush_pending(&mut self) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            self.out.write_all(&pending)?;
        }
        if self.goaway == Goaway::Pending {
            self.goaway = Goaway::Done;
            self.out.write_all(&GOAWAY)?;
        }
        Ok(())
    }
}

/// The client-facing write side of a spliced connection, shared by the copier thread, the
/// thread that reads the client (it answers refused calls itself) and the drain: whoever
/// finds the stream between two header blocks writes what the launcher has to say.
#[derive(Debug)]
pub struct Downstream<W> {
    /// Set without the lock, which the copier may hold while blocked on a slow client.
    asked: AtomicBool,
    state: Mutex<State<W>>,
}

impl<W: Write> Downstream<W> {
    /// Wraps `out`; `goaway_sent` when a GOAWAY already went out on this connection.
    pub fn new(out: W, goaway_sent: bool) -> Self {
        Self {
            asked: AtomicBool::new(false),
            state: Mutex::new(State {
                out,
                frames: FrameTracker::default(),
                goaway: if goaway_sent {
                    Goaway::Done
                } else {
                    Goaway::NotAsked
                },
                pending: Vec::new(),
                closed: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<W>> {
        // A panicking copier leaves the stream no worse than a failed write would.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes bytes copied from the plugin, with the launcher's pending frames at the first
    /// point between two header blocks.
    pub fn write(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut s = self.lock();
        if s.goaway == Goaway::NotAsked && self.asked.load(Ordering::Acquire) {
            s.goaway = Goaway::Pending;
        }
        let mut rest = bytes;
        while s.has_pending() {
            let head = s.frames.consume(rest, true);
            s.out.write_all(&rest[..head])?;
            rest = &rest[head..];
            if !s.frames.between_blocks() {
                // Everything was consumed, inside a frame or a header block: the rest of it
                // comes with the plugin's next output.
                return Ok(());
            }
            s.flush_pending()?;
        }
        s.frames.consume(rest, false);
        s.out.write_all(rest)
    }

    /// Sends `frames` (whole frames of the launcher's own) to the client: now if the stream
    /// is between two header blocks, else right after the plugin's current frame or header
    /// block, which is under way. Nothing is sent after [`Downstream::finish`].
    pub fn inject(&self, frames: &[u8]) -> std::io::Result<()> {
        let mut s = self.lock();
        if s.closed {
            return Ok(());
        }
        s.pending.extend_from_slice(frames);
        if s.frames.between_blocks() {
            s.flush_pending()?;
        }
        Ok(())
    }

    /// Has the copier send a GOAWAY right before the next bytes it copies (at a frame
    /// boundary). A GOAWAY that arrives together with a response lets a client's HTTP/2
    /// connection close in the same step that completes its last call, before the client
    /// can queue another call on it; one arriving on its own races with the client's next
    /// call. Never blocks.
    pub fn ask_goaway(&self) {
        self.asked.store(true, Ordering::Release);
    }

    /// Sends the GOAWAY now if the stream is between frames, else leaves it to the copier at
    /// the next boundary: for connections on which the plugin has nothing to say. At most
    /// one is ever sent.
    pub fn goaway_now(&self) -> std::io::Result<()> {
        let mut s = self.lock();
        if s.goaway == Goaway::Done {
            return Ok(());
        }
        s.goaway = Goaway::Pending;
        if s.frames.between_blocks() {
            s.flush_pending()?;
        }
        Ok(())
    }

    /// Runs `f` on the writer (to close it) and sends nothing after that.
    pub fn finish(&self, f: impl FnOnce(&mut W)) {
        let mut s = self.lock();
        s.goaway = Goaway::Done;
        s.pending.clear();
        s.closed = true;
        f(&mut s.out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame; HEADERS end their header block.
    fn frame(kind: u8, stream: u32, payload_len: usize) -> Vec<u8> {
        let flags = if kind == HEADERS { END_HEADERS } else { 0 };
        frame_with(kind, flags, stream, payload_len)
    }

    fn frame_with(kind: u8, flags: u8, stream: u32, payload_len: usize) -> Vec<u8> {
        let mut f = frame_header(payload_len, kind, flags, stream).to_vec();
        f.extend(std::iter::repeat_n(0xAB, payload_len));
        f
    }

    /// SETTINGS, HEADERS, a large DATA, an empty DATA, trailers: a unary answer and more.
    fn frames() -> Vec<Vec<u8>> {
        vec![
            frame(0x4, 0, 18),
            frame(0x1, 1, 40),
            frame(0x0, 1, 70_000),
            frame(0x0, 1, 0),
            frame(0x1, 1, 12),
        ]
    }

    /// The offsets at which each frame ends.
    fn boundaries(frames: &[Vec<u8>]) -> Vec<usize> {
        frames
            .iter()
            .scan(0, |end, f| {
                *end += f.len();
                Some(*end)
            })
            .collect()
    }

    #[test]
    fn tracks_boundaries_across_any_read_split() {
        let frames = frames();
        let stream = frames.concat();
        let ends = boundaries(&frames);
        // Every chunk size, from byte by byte to several frames per read.
        for chunk in [1, 2, 5, 8, 9, 10, 17, 100, 4096, 16_393, 100_000] {
            let mut t = FrameTracker::default();
            let mut offset = 0;
            for piece in stream.chunks(chunk) {
                assert_eq!(t.consume(piece, false), piece.len());
                offset += piece.len();
                assert_eq!(
                    t.at_boundary(),
                    ends.contains(&offset),
                    "chunk {chunk}, offset {offset}"
                );
            }
        }
    }

    #[test]
    fn stops_at_the_next_boundary_only_when_asked() {
        let frames = frames();
        let stream = frames.concat();
        let ends = boundaries(&frames);
        let mut t = FrameTracker::default();
        assert_eq!(t.consume(&stream, true), 0, "already at a boundary");
        // Split inside the second frame's header, then ask for the next boundary.
        let split = ends[0] + 4;
        assert_eq!(t.consume(&stream[..split], false), split);
        assert!(!t.at_boundary());
        assert_eq!(t.consume(&stream[split..], true), ends[1] - split);
        assert!(t.at_boundary());
        // Several frames in one read: stops after the first one.
        let mut t = FrameTracker::default();
        let from = ends[1];
        assert_eq!(t.consume(&stream[from..], true), 0);
        t.consume(&stream[from..from + 1], false);
        assert_eq!(t.consume(&stream[from + 1..], true), ends[2] - from - 1);
    }

    /// Splits the written stream back into frames, checking each header's length.
    fn parse(mut bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            assert!(bytes.len() >= 9, "a truncated header");
            let len = (usize::from(bytes[0]) << 16)
                | (usize::from(bytes[1]) << 8)
                | usize::from(bytes[2]);
            assert!(bytes.len() >= 9 + len, "a truncated frame");
            out.push(bytes[..9 + len].to_vec());
            bytes = &bytes[9 + len..];
        }
        out
    }

    #[test]
    fn goaway_goes_between_frames_never_inside_one() {
        // A DATA frame longer than 255 bytes, so that the length spans header bytes.
        let frames = vec![
            frame(0x4, 0, 18),
            frame(0x1, 1, 40),
            frame(0x0, 1, 3000),
            frame(0x0, 1, 0),
            frame(0x1, 1, 12),
        ];
        let stream = frames.concat();
        let ends = boundaries(&frames);
        // Around every boundary (inside the next header too), and a sample elsewhere.
        let mut asks: Vec<usize> = ends
            .iter()
            .chain(&[0])
            .flat_map(|&e| e.saturating_sub(2)..e + 11)
            .chain((0..stream.len()).step_by(97))
            .filter(|&a| a < stream.len())
            .collect();
        asks.sort_unstable();
        asks.dedup();
        for chunk in [1, 3, 9, 11, 1000, 100_000] {
            for &ask in &asks {
                // Reads of `chunk` bytes, with one more split where the GOAWAY is asked for.
                let mut cuts: Vec<usize> = (0..stream.len()).step_by(chunk).collect();
                cuts.push(ask);
                cuts.push(stream.len());
                cuts.sort_unstable();
                cuts.dedup();
                let d = Downstream::new(Vec::new(), false);
                for piece in cuts.windows(2) {
                    if piece[0] == ask {
                        d.goaway_now().expect("write to a Vec");
                    }
                    d.write(&stream[piece[0]..piece[1]])
                        .expect("write to a Vec");
                }
                let written = d.lock().out.clone();
                let got = parse(&written);
                let goaways: Vec<usize> = got
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f[..] == GOAWAY[..])
                    .map(|(i, _)| i)
                    .collect();
                assert_eq!(goaways.len(), 1, "chunk {chunk}, ask {ask}");
                let mut without = got.clone();
                without.remove(goaways[0]);
                assert_eq!(without, frames, "the plugin's frames are intact");
                // It went out at the first boundary not before the request.
                let expected = if ask == 0 {
                    0
                } else {
                    ends.iter().position(|&e| e >= ask).map_or(0, |p| p + 1)
                };
                assert_eq!(goaways[0], expected, "chunk {chunk}, ask {ask}");
            }
        }
    }

    #[test]
    fn goaway_when_idle_is_written_at_once_and_only_once() {
        let d = Downstream::new(Vec::new(), false);
        let settings = frame(0x4, 0, 6);
        d.write(&settings).expect("write");
        d.goaway_now().expect("goaway");
        d.goaway_now().expect("goaway again");
        d.ask_goaway();
        d.write(&frame(0x6, 0, 8)).expect("write");
        let written = d.lock().out.clone();
        assert_eq!(&written[settings.len()..settings.len() + 17], &GOAWAY);
        assert_eq!(written.len(), settings.len() + 17 + 17);

        let already = Downstream::new(Vec::new(), true);
        already.goaway_now().expect("goaway");
        assert!(
            already.lock().out.is_empty(),
            "one was sent before the splice"
        );

        let finished = Downstream::new(Vec::new(), false);
        finished.finish(|_| {});
        finished.goaway_now().expect("goaway");
        assert!(finished.lock().out.is_empty(), "nothing after close");
    }

    #[test]
    fn asked_goaway_goes_right_before_the_next_output() {
        let d = Downstream::new(Vec::new(), false);
        let settings = frame(0x4, 0, 6);
        let headers = frame(0x1, 1, 30);
        let data = frame(0x0, 1, 20);
        d.write(&settings).expect("write");
        d.ask_goaway();
        assert_eq!(d.lock().out.len(), settings.len(), "nothing written yet");
        // The next output, split mid-frame: the GOAWAY goes before it, whole.
        d.write(&headers[..5]).expect("write");
        d.write(&headers[5..]).expect("write");
        d.write(&data).expect("write");
        d.goaway_now().expect("goaway");
        let mut expected = settings.clone();
        expected.extend(GOAWAY);
        expected.extend(&headers);
        expected.extend(&data);
        assert_eq!(d.lock().out, expected);
    }

    #[test]
    fn nothing_goes_between_headers_and_continuation() {
        // A response whose header block spans three frames, then DATA.
        let frames = vec![
            frame(0x4, 0, 6),
            frame_with(HEADERS, 0, 1, 300),
            frame_with(CONTINUATION, 0, 1, 20),
            frame_with(CONTINUATION, END_HEADERS, 1, 5),
            frame(DATA, 1, 10),
        ];
        let stream = frames.concat();
        let ends = boundaries(&frames);
        // The points where a frame of the launcher's may go.
        let allowed = [0, ends[0], ends[3], ends[4]];
        for chunk in [1, 4, 9, 10, 64, 1000] {
            let mut t = FrameTracker::default();
            let mut offset = 0;
            for piece in stream.chunks(chunk) {
                t.consume(piece, false);
                offset += piece.len();
                assert_eq!(
                    t.between_blocks(),
                    allowed.contains(&offset),
                    "chunk {chunk}, offset {offset}"
                );
            }
            // Asked at every offset, the refusal goes out at the next allowed point.
            for ask in 0..stream.len() {
                let d = Downstream::new(Vec::new(), false);
                let mut cuts: Vec<usize> = (0..stream.len()).step_by(chunk).collect();
                cuts.extend([ask, stream.len()]);
                cuts.sort_unstable();
                cuts.dedup();
                let ours = frame(RST_STREAM, 3, 4);
                for piece in cuts.windows(2) {
                    if piece[0] == ask {
                        d.inject(&ours).expect("write to a Vec");
                    }
                    d.write(&stream[piece[0]..piece[1]])
                        .expect("write to a Vec");
                }
                let got = parse(&d.lock().out);
                let at = got.iter().position(|f| *f == ours).expect("sent");
                let point = allowed.iter().find(|&&a| a >= ask).expect("an end");
                let expected = ends.iter().filter(|&&e| e <= *point).count();
                assert_eq!(at, expected, "chunk {chunk}, ask {ask}");
                let mut without = got.clone();
                without.remove(at);
                assert_eq!(without, frames, "the plugin's frames are intact");
            }
        }
    }

    #[test]
    fn goaway_frames_carry_the_last_stream_the_code_and_the_reason() {
        assert_eq!(goaway(0x7fff_ffff, 0, b""), GOAWAY);
        let refused = goaway(0, ERROR_REFUSED_STREAM, b"full");
        assert_eq!(
            refused,
            [
                &frame_header(12, GOAWAY_TYPE, 0, 0)[..],
                &[0, 0, 0, 0, 0, 0, 0, 7],
                b"full"
            ]
            .concat()
        );
    }

    /// The drain's GOAWAY, asked for at any point of a response whose header blocks span
    /// several frames (and a PUSH_PROMISE block), goes out at the first point between two
    /// header blocks, whole, and the plugin's frames pass intact: whether it is sent by the
    /// copier with the plugin's next output or on its own when the plugin is quiet.
    #[test]
    fn goaway_never_goes_between_headers_and_continuation() {
        let frames = vec![
            frame(0x4, 0, 6),
            frame_with(HEADERS, 0, 1, 300),
            frame_with(CONTINUATION, 0, 1, 20),
            frame_with(CONTINUATION, END_HEADERS, 1, 5),
            frame_with(PUSH_PROMISE, 0, 1, 40),
            frame_with(CONTINUATION, END_HEADERS, 1, 8),
            frame(DATA, 1, 10),
            frame_with(HEADERS, END_STREAM, 1, 30),
            frame_with(CONTINUATION, END_HEADERS, 1, 3),
        ];
        let stream = frames.concat();
        let ends = boundaries(&frames);
        let allowed = [0, ends[0], ends[3], ends[5], ends[6], ends[8]];
        for chunk in [1, 4, 9, 10, 64, 1000] {
            for ask in 0..stream.len() {
                for on_its_own in [true, false] {
                    let d = Downstream::new(Vec::new(), false);
                    let mut cuts: Vec<usize> = (0..stream.len()).step_by(chunk).collect();
                    cuts.extend([ask, stream.len()]);
                    cuts.sort_unstable();
                    cuts.dedup();
                    for piece in cuts.windows(2) {
                        if piece[0] == ask {
                            if on_its_own {
                                d.goaway_now().expect("write to a Vec");
                            } else {
                                d.ask_goaway();
                            }
                        }
                        d.write(&stream[piece[0]..piece[1]])
                            .expect("write to a Vec");
                    }
                    let got = parse(&d.lock().out);
                    let at = got.iter().position(|f| f[..] == GOAWAY[..]).expect("sent");
                    let point = allowed.iter().find(|&&a| a >= ask).expect("an end");
                    let expected = ends.iter().filter(|&&e| e <= *point).count();
                    assert_eq!(at, expected, "chunk {chunk}, ask {ask}, {on_its_own}");
                    let mut without = got.clone();
                    without.remove(at);
                    assert_eq!(without, frames, "the plugin's frames are intact");
                }
            }
        }
    }

    #[test]
    fn injected_frames_go_out_at_once_when_idle_and_never_after_finish() {
        let d = Downstream::new(Vec::new(), false);
        let ours = frame(WINDOW_UPDATE, 0, 4);
        d.inject(&ours).expect("inject");
        assert_eq!(d.lock().out, ours);
        // Mid-frame: held until the plugin's frame is complete, then before its next one.
        let data = frame(DATA, 1, 10);
        d.write(&data[..12]).expect("write");
        d.inject(&ours).expect("inject");
        d.goaway_now().expect("goaway");
        assert_eq!(d.lock().out.len(), ours.len() + 12);
        d.write(&data[12..]).expect("write");
        let mut expected = ours.clone();
        expected.extend(&data);
        expected.extend(&ours);
        expected.extend(GOAWAY);
        assert_eq!(d.lock().out, expected);
        d.finish(|_| {});
        d.inject(&ours).expect("inject");
        assert_eq!(d.lock().out, expected, "nothing after close");
    }
}

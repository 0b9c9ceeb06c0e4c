//! The client→plugin direction of a spliced connection, read frame by frame, so that every
//! stream a client opens is checked against [`crate::policy`], not only a connection's first.
//!
//! Each HEADERS frame (with its CONTINUATION frames) is decoded with the connection's own
//! HPACK decoder, in order, so that the launcher's dynamic table is the plugin's and the
//! `:path` it reads is the one the plugin would read. A block that opens a new stream (an odd
//! id above every one before) is a request: it goes on only if its method may be called from
//! the network. A refused stream never reaches the plugin: its HEADERS, CONTINUATION and
//! DATA frames and anything else the client sends on it are dropped, and the launcher answers
//! it itself (HEADERS `:status 200`, `grpc-status 7` PERMISSION_DENIED, `grpc-message`, with
//! END_STREAM, then RST_STREAM NO_ERROR if the client had more to send), slipped between two
//! of the plugin's frames ([`crate::frames::Downstream::inject`]). The connection carries on:
//! its other calls, earlier and later, are not disturbed.
//!
//! Dropping a header block would leave the plugin's HPACK decoder behind the client's
//! encoder (the block may have added entries to the dynamic table, which later blocks refer
//! to). So from the first dropped block on, every header block the plugin receives on that
//! connection is re-encoded from the decoded fields: it starts with a dynamic table size
//! update to 0, which empties the plugin's table, and carries every field as a literal that
//! is never indexed, so the plugin's table stays empty and nothing refers to it. Connections
//! that never send a refused call, that is every well-behaved one, are copied byte for byte.
//!
//! The client's DATA on a refused stream counted against the connection's flow-control
//! window, which only the plugin replenishes (for what it received): the launcher gives the
//! client that much back with a WINDOW_UPDATE of its own.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::access::{self, Authenticator};
use crate::frames::{
    CONTINUATION, DATA, END_HEADERS, END_STREAM, HEADER_LEN, HEADERS, PADDED, PRIORITY,
    PUSH_PROMISE, RST_STREAM, WINDOW_UPDATE, frame_header,
};
use crate::hpack::{Decoder, HpackError, LiteralValue};
use crate::policy::{self, Refusal};
use crate::sniff::PREFACE;

/// The largest dynamic table a client may ask for. HTTP/2 servers (grpc-go, hyper, tonic)
/// offer 4096 octets; a plugin offering more than this to a client that uses it has its
/// connections closed.
pub const MAX_TABLE_SIZE: usize = 64 * 1024;
/// The largest header block (as received, all its frames) the launcher holds while it
/// collects it. gRPC metadata is a few hundred octets.
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// The largest decoded header list re-encoded for the plugin (HPACK can expand a block a
/// thousandfold).
pub const MAX_HEADER_LIST: usize = 1024 * 1024;
/// How many refused streams a connection remembers, to drop what the client still sends
/// on them. Beyond it the oldest are forgotten: frames the client sends on one of those
/// afterwards reach the plugin, which fails them (a stream it never saw opened), and
/// nothing else.
const MAX_REFUSED_REMEMBERED: usize = 1024;
/// Frames the launcher writes to the plugin carry at most this much payload: the least
/// SETTINGS_MAX_FRAME_SIZE a peer may announce.
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// RST_STREAM / GOAWAY error code NO_ERROR.
const NO_ERROR: u32 = 0;

/// Why a connection is closed instead of forwarded.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// The client broke HTTP/2's framing rules.
    #[error("the client broke HTTP/2 framing: {0}")]
    Framing(&'static str),
    /// A header block could not be decoded.
    #[error("the client sent an undecodable header block: {0}")]
    Hpack(#[from] HpackError),
    /// A header block too large to hold.
    #[error("the client sent a header block of more than {MAX_HEADER_BLOCK} octets")]
    BlockTooLarge,
    /// A header list too large to re-encode.
    #[error("the client sent a header list of more than {MAX_HEADER_LIST} octets")]
    ListTooLarge,
    /// Writing to the plugin or the client failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Where the guard's output goes.
pub trait Sink {
    /// Bytes for the plugin, in order.
    fn to_plugin(&mut self, bytes: &[u8]) -> std::io::Result<()>;
    /// Whole frames of the launcher's own for the client.
    fn to_client(&mut self, frames: &[u8]) -> std::io::Result<()>;
}

/// What is done with the payload of the frame being read.
#[derive(Debug)]
enum Payload {
    /// Between frames.
    None,
    /// Passed to the plugin.
    Pass(usize),
    /// Dropped; `data`: DATA, whose octets the client's flow-control window counted.
    Drop { left: usize, data: bool },
    /// A HEADERS or CONTINUATION frame, collected whole to be decoded.
    Collect { frame: Vec<u8>, left: usize },
}

/// A header block split over several frames, being collected.
#[derive(Debug)]
struct Block {
    stream: u32,
    /// The HEADERS frame's flags.
    flags: u8,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as received.
    raw: Vec<u8>,
}

/// What becomes of a header block.
#[derive(Debug)]
enum Verdict {
    /// Passed on as received.
    Forward,
    /// Passed on re-encoded from these fields.
    Reencode(Vec<(Vec<u8>, Vec<u8>)>),
    /// Passed on as this fragment instead (the caller's token taken out).
    Edit(Vec<u8>),
    /// Dropped: a block on a refused stream, or on none the plugin knows.
    Drop,
    /// A new stream the launcher refuses and answers.
    Refuse(Refusal),
}

/// A change to a header block fragment.
#[derive(Debug)]
enum Edit {
    /// These octets (a whole field representation) are left out.
    Remove(std::ops::Range<usize>),
    /// This encoded string is replaced by a plain one of this many filler octets.
    Replace(std::ops::Range<usize>, usize),
}

/// `fragment` with `edits` (in order, not overlapping) applied.
fn edited(fragment: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut out = Vec::with_capacity(fragment.len());
    let mut at = 0;
    for edit in edits {
        let (range, filler) = match edit {
            Edit::Remove(r) => (r, None),
            Edit::Replace(r, len) => (r, Some(*len)),
        };
        out.extend_from_slice(&fragment[at..range.start]);
        if let Some(len) = filler {
            put_string(&mut out, &vec![b'-'; len]);
        }
        at = range.end;
    }
    out.extend_from_slice(&fragment[at..]);
    out
}

/// One spliced connection's client→plugin direction.
#[derive(Debug)]
pub struct Guard {
    peer: Option<SocketAddr>,
    /// Octets of the client's connection preface still to pass.
    preface_left: usize,
    /// A frame header split across reads.
    head: [u8; HEADER_LEN],
    head_len: usize,
    payload: Payload,
    block: Option<Block>,
    decoder: Decoder,
    /// The highest stream id the client opened, and the highest the plugin saw opened.
    client_high: u32,
    plugin_high: u32,
    refused: BTreeSet<u32>,
    /// A header block was dropped: from now on blocks are re-encoded.
    reencode: bool,
    /// Dropped DATA octets not yet given back to the client's window.
    credit: usize,
    /// Checks every new stream's caller; its token never reaches the plugin.
    auth: Option<Arc<Authenticator>>,
}

impl Guard {
    /// A guard for a connection from `peer`, whose bytes start with the client preface;
    /// with `auth`, every call's caller is checked and its `authorization` header removed.
    pub fn new(peer: Option<SocketAddr>, auth: Option<Arc<Authenticator>>) -> Self {
        Self {
            reencode: false,
            auth,
            peer,
            preface_left: PREFACE.len(),
            head: [0; HEADER_LEN],
            head_len: 0,
            payload: Payload::None,
            block: None,
            decoder: Decoder::new(MAX_TABLE_SIZE),
            client_high: 0,
            plugin_high: 0,
            refused: BTreeSet::new(),
            credit: 0,
        }
    }

    /// Takes the next bytes from the client. Whatever may pass goes to `sink` in order, in as
    /// few writes as possible (one per call for a connection that sends no refused call).
    pub fn feed(&mut self, input: &[u8], sink: &mut impl Sink) -> Result<(), GuardError> {
        let mut run = Run { input, start: None };
        let mut i = 0;
        if self.preface_left > 0 {
            // Checked by the sniffer before the connection was spliced.
            let n = self.preface_left.min(input.len());
            run.pass(0);
            self.preface_left -= n;
            i = n;
        }
        while i < input.len() {
            let rest = input.len() - i;
            match &mut self.payload {
                Payload::Pass(left) => {
                    let n = rest.min(*left);
                    run.pass(i);
                    *left -= n;
                    if *left == 0 {
                        self.payload = Payload::None;
                    }
                    i += n;
                }
                Payload::Drop { left, data } => {
                    let n = rest.min(*left);
                    run.flush(i, sink)?;
                    *left -= n;
                    if *data {
                        self.credit += n;
                    }
                    if *left == 0 {
                        self.payload = Payload::None;
                    }
                    i += n;
                }
                Payload::Collect { frame, left } => {
                    let n = rest.min(*left);
                    run.flush(i, sink)?;
                    frame.extend_from_slice(&input[i..i + n]);
                    *left -= n;
                    i += n;
                    if *left == 0 {
                        let frame = std::mem::take(frame);
                        self.payload = Payload::None;
                        self.header_frame(&frame, None, &mut run, i, sink)?;
                    }
                }
                Payload::None if self.head_len == 0 && rest >= HEADER_LEN => {
                    let mut head = [0; HEADER_LEN];
                    head.copy_from_slice(&input[i..i + HEADER_LEN]);
                    i = self.frame_start(head, Some(i), i + HEADER_LEN, &mut run, sink)?;
                }
                Payload::None => {
                    // A frame header split across reads: held until it is complete.
                    run.flush(i, sink)?;
                    let n = rest.min(HEADER_LEN - self.head_len);
                    self.head[self.head_len..self.head_len + n].copy_from_slice(&input[i..i + n]);
                    self.head_len += n;
                    i += n;
                    if self.head_len == HEADER_LEN {
                        self.head_len = 0;
                        let head = self.head;
                        i = self.frame_start(head, None, i, &mut run, sink)?;
                    }
                }
            }
        }
        run.flush(input.len(), sink)?;
        if self.credit > 0 {
            // At most one read's worth: well within a window increment's 31 bits.
            let credit = u32::try_from(self.credit).unwrap_or(0x7fff_ffff);
            self.credit = 0;
            let mut frame = frame_header(4, WINDOW_UPDATE, 0, 0).to_vec();
            frame.extend_from_slice(&credit.to_be_bytes());
            sink.to_client(&frame)?;
        }
        Ok(())
    }

    /// A frame header is complete. `at`: where it starts in `run`'s input (`None` when it
    /// was held across reads and is not in the input); `after`: where its payload starts.
    /// Returns where reading goes on.
    fn frame_start(
        &mut self,
        head: [u8; HEADER_LEN],
        at: Option<usize>,
        after: usize,
        run: &mut Run<'_>,
        sink: &mut impl Sink,
    ) -> Result<usize, GuardError> {
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let (kind, stream) = (head[3], stream_id(&head));
        if self.block.is_some() && kind != CONTINUATION {
            return Err(GuardError::Framing(
                "a frame between HEADERS and its CONTINUATION",
            ));
        }
        match kind {
            HEADERS | CONTINUATION => {
                let held = self.block.as_ref().map_or(0, |b| b.raw.len());
                if held + HEADER_LEN + len > MAX_HEADER_BLOCK {
                    return Err(GuardError::BlockTooLarge);
                }
                let input = run.input;
                if let Some(start) = at
                    && input.len() - start >= HEADER_LEN + len
                {
                    // The whole frame is in this read: decoded where it is, and when it
                    // passes unchanged, written with its neighbours.
                    let end = start + HEADER_LEN + len;
                    self.header_frame(&input[start..end], Some(start), run, end, sink)?;
                    return Ok(end);
                }
                if let Some(start) = at {
                    run.flush(start, sink)?;
                }
                let mut frame = Vec::with_capacity(HEADER_LEN + len);
                frame.extend_from_slice(&head);
                if len == 0 {
                    self.header_frame(&frame, None, run, after, sink)?;
                } else {
                    self.payload = Payload::Collect { frame, left: len };
                }
                Ok(after)
            }
            // A client never pushes (RFC 9113 §8.4).
            PUSH_PROMISE => Err(GuardError::Framing("PUSH_PROMISE from a client")),
            _ => {
                let pass = stream == 0 || !self.refused.contains(&stream);
                match at {
                    Some(start) if pass => run.pass(start),
                    Some(start) => run.flush(start, sink)?,
                    None if pass => sink.to_plugin(&head)?,
                    None => {}
                }
                self.payload = match (len, pass) {
                    (0, _) => Payload::None,
                    (_, true) => Payload::Pass(len),
                    (_, false) => Payload::Drop {
                        left: len,
                        data: kind == DATA,
                    },
                };
                Ok(after)
            }
        }
    }

    /// A whole HEADERS or CONTINUATION frame `frame`; `at`: where it starts in `run`'s input,
    /// if it is there; `next`: where reading goes on after it.
    fn header_frame(
        &mut self,
        frame: &[u8],
        at: Option<usize>,
        run: &mut Run<'_>,
        next: usize,
        sink: &mut impl Sink,
    ) -> Result<(), GuardError> {
        let (kind, flags, stream) = (frame[3], frame[4], stream_id(frame));
        let payload = &frame[HEADER_LEN..];
        if kind == HEADERS {
            let (fragment, priority) = split_headers(payload, flags)
                .ok_or(GuardError::Framing("HEADERS padding longer than the frame"))?;
            if flags & END_HEADERS != 0 {
                // The common case: a whole header block in one frame.
                let verdict = self.decide(stream, fragment)?;
                return self.act(verdict, stream, flags, priority, frame, at, run, next, sink);
            }
            if let Some(start) = at {
                run.flush(start, sink)?;
            }
            self.block = Some(Block {
                stream,
                flags,
                priority,
                fragment: fragment.to_vec(),
                raw: frame.to_vec(),
            });
            return Ok(());
        }
        let block = self
            .block
            .as_mut()
            .ok_or(GuardError::Framing("CONTINUATION without HEADERS"))?;
        if block.stream != stream {
            return Err(GuardError::Framing("CONTINUATION on another stream"));
        }
        if let Some(start) = at {
            run.flush(start, sink)?;
        }
        block.fragment.extend_from_slice(payload);
        block.raw.extend_from_slice(frame);
        if flags & END_HEADERS == 0 {
            return Ok(());
        }
        let Some(block) = self.block.take() else {
            return Ok(());
        };
        let verdict = self.decide(block.stream, &block.fragment)?;
        self.act(
            verdict,
            block.stream,
            block.flags,
            block.priority,
            &block.raw,
            None,
            run,
            next,
            sink,
        )
    }

    /// Decodes a complete header block on `stream` and decides what becomes of it.
    fn decide(&mut self, stream: u32, fragment: &[u8]) -> Result<Verdict, GuardError> {
        let mut paths = 0usize;
        let mut path = Vec::new();
        let mut fields = self.reencode.then(Vec::new);
        let mut list_size = 0usize;
        let checks_callers = self.auth.is_some();
        let mut authorization: Option<Vec<u8>> = None;
        let mut edits = Vec::new();
        self.decoder.decode_spans(fragment, |name, value, span| {
            if name == b":path" {
                paths += 1;
                if paths == 1 {
                    path = value.to_vec();
                }
            }
            if checks_callers && name == b"authorization" {
                // A second one makes the header ambiguous: refused below as no token.
                authorization = match authorization.take() {
                    None => Some(value.to_vec()),
                    Some(_) => Some(Vec::new()),
                };
                // The token must not reach the plugin, which could replay it to other
                // plugins: the representation is cut out of the block, or, when it adds the
                // field to the dynamic table, its value is overwritten with filler of the
                // same length, so that the plugin's table stays the client's.
                edits.push(match span.literal_value {
                    Some(LiteralValue {
                        encoded,
                        indexing: true,
                    }) => Edit::Replace(encoded, value.len()),
                    _ => Edit::Remove(span.start..span.end),
                });
                return;
            }
            if let Some(fields) = fields.as_mut() {
                list_size = list_size.saturating_add(name.len() + value.len() + 32);
                if list_size <= MAX_HEADER_LIST {
                    fields.push((name.to_vec(), value.to_vec()));
                }
            }
        })?;
        if list_size > MAX_HEADER_LIST {
            return Err(GuardError::ListTooLarge);
        }
        if stream.is_multiple_of(2) {
            return Err(GuardError::Framing(
                "HEADERS on a stream id a client cannot open",
            ));
        }
        if stream > self.client_high {
            // A new stream: a request.
            self.client_high = stream;
            let checked = match paths {
                1 => policy::check(&path),
                _ => Err(Refusal::NotAMethod),
            };
            if let Err(refusal) = checked {
                return Ok(Verdict::Refuse(refusal));
            }
            if let Some(auth) = self.auth.as_ref().filter(|_| !access::is_open_path(&path)) {
                let header = authorization.as_deref().filter(|h| !h.is_empty());
                match auth.admit_blocking(header) {
                    Ok(_) => policy::record_admitted(),
                    Err(denial) => {
                        let method = String::from_utf8_lossy(&path)
                            .trim_start_matches('/')
                            .chars()
                            .take(200)
                            .collect();
                        return Ok(Verdict::Refuse(Refusal::Denied(method, denial)));
                    }
                }
            }
            self.plugin_high = stream;
        } else if self.refused.contains(&stream) || stream > self.plugin_high {
            // Trailers of a refused stream; or a block on a stream the plugin never saw
            // opened, which it would take as opening one: never without the check above.
            return Ok(Verdict::Drop);
        }
        Ok(match fields {
            Some(fields) => Verdict::Reencode(fields),
            None if edits.is_empty() => Verdict::Forward,
            None => Verdict::Edit(edited(fragment, &edits)),
        })
    }

    /// Carries out `verdict` for the header block `raw` (its frames as received).
    #[allow(clippy::too_many_arguments)]
    fn act(
        &mut self,
        verdict: Verdict,
        stream: u32,
        flags: u8,
        priority: Option<[u8; 5]>,
        raw: &[u8],
        at: Option<usize>,
        run: &mut Run<'_>,
        next: usize,
        sink: &mut impl Sink,
    ) -> Result<(), GuardError> {
        match verdict {
            Verdict::Forward => match at {
                Some(start) => run.pass(start),
                None => {
                    run.flush(next, sink)?;
                    sink.to_plugin(raw)?;
                }
            },
            Verdict::Reencode(fields) => {
                run.flush(at.unwrap_or(next), sink)?;
                sink.to_plugin(&reencode(stream, flags, priority, &fields))?;
            }
            Verdict::Edit(fragment) => {
                run.flush(at.unwrap_or(next), sink)?;
                sink.to_plugin(&frame_block(stream, flags, priority, &fragment))?;
            }
            Verdict::Drop => {
                run.flush(at.unwrap_or(next), sink)?;
                self.reencode = true;
            }
            Verdict::Refuse(refusal) => {
                run.flush(at.unwrap_or(next), sink)?;
                self.reencode = true;
                policy::record(&refusal, self.peer);
                self.refused.insert(stream);
                if self.refused.len() > MAX_REFUSED_REMEMBERED {
                    self.refused.pop_first();
                }
                let client_done = flags & END_STREAM != 0;
                sink.to_client(&refusal_frames(
                    stream,
                    refusal.code(),
                    &refusal.message(),
                    client_done,
                ))?;
            }
        }
        Ok(())
    }
}

/// The part of the input that passes unchanged and has not been written yet.
struct Run<'a> {
    input: &'a [u8],
    start: Option<usize>,
}

impl Run<'_> {
    /// The input from `at` on passes (until the next flush).
    fn pass(&mut self, at: usize) {
        self.start.get_or_insert(at);
    }

    /// Writes what passes up to `at`: what follows does not pass unchanged.
    fn flush(&mut self, at: usize, sink: &mut impl Sink) -> std::io::Result<()> {
        match self.start.take() {
            Some(start) if at > start => sink.to_plugin(&self.input[start..at]),
            _ => Ok(()),
        }
    }
}

fn stream_id(frame: &[u8]) -> u32 {
    u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff
}

/// A HEADERS payload's header block fragment and priority fields, without padding.
fn split_headers(payload: &[u8], flags: u8) -> Option<(&[u8], Option<[u8; 5]>)> {
    let mut start = 0;
    let mut end = payload.len();
    if flags & PADDED != 0 {
        start = 1;
        end = end.checked_sub(usize::from(*payload.first()?))?;
    }
    let priority = if flags & PRIORITY != 0 {
        let fields = payload.get(start..start + 5)?;
        start += 5;
        let mut p = [0; 5];
        p.copy_from_slice(fields);
        Some(p)
    } else {
        None
    };
    Some((payload.get(start..end)?, priority))
}

/// An HPACK integer with a `prefix`-bit prefix whose other bits are `flags`.
fn put_integer(out: &mut Vec<u8>, value: usize, prefix: u8, flags: u8) {
    let max = (1usize << prefix) - 1;
    if value < max {
        // Below 2^prefix.
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// A string literal, not Huffman-coded.
fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_integer(out, s.len(), 7, 0);
    out.extend_from_slice(s);
}

/// A header block that touches no dynamic table: it starts by emptying the receiver's (size
/// update to 0, always allowed at the start of a block) and carries every field as a literal
/// never indexed (which an intermediary may always use, RFC 7541 §6.2.3), framed as HEADERS
/// and CONTINUATION frames for `stream` with the original END_STREAM and priority.
fn reencode(
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    fields: &[(Vec<u8>, Vec<u8>)],
) -> Vec<u8> {
    let mut block = vec![0x20];
    for (name, value) in fields {
        block.push(0x10);
        put_string(&mut block, name);
        put_string(&mut block, value);
    }
    frame_block(stream, flags, priority, &block)
}

/// A header block as a HEADERS frame (keeping `flags`' END_STREAM and PRIORITY, and
/// `priority`) and as many CONTINUATION frames as it needs.
fn frame_block(stream: u32, flags: u8, priority: Option<[u8; 5]>, block: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(block.len() + 2 * HEADER_LEN + 5);
    let first_room = MAX_FRAME_PAYLOAD - if priority.is_some() { 5 } else { 0 };
    let (first, mut rest) = block.split_at(block.len().min(first_room));
    let mut first_flags = flags & (END_STREAM | PRIORITY);
    if rest.is_empty() {
        first_flags |= END_HEADERS;
    }
    let first_len = first.len() + priority.map_or(0, |p| p.len());
    out.extend_from_slice(&frame_header(first_len, HEADERS, first_flags, stream));
    if let Some(p) = priority {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(rest.len().min(MAX_FRAME_PAYLOAD));
        let end = if after.is_empty() { END_HEADERS } else { 0 };
        out.extend_from_slice(&frame_header(chunk.len(), CONTINUATION, end, stream));
        out.extend_from_slice(chunk);
        rest = after;
    }
    out
}

/// The launcher's answer to a refused stream: a trailers-only gRPC response with
/// PERMISSION_DENIED and `message`, then, if the client has more to send, RST_STREAM
/// NO_ERROR to tell it to stop (RFC 9113 §8.1). The header block is encoded without the
/// dynamic table (static `:status 200`, literals not indexed), so the client's HPACK state,
/// which the plugin's encoder owns, is untouched.
pub fn refusal_frames(stream: u32, code: u8, message: &str, client_done: bool) -> Vec<u8> {
    let mut block = vec![0x88];
    // content-type (static name 31), literal without indexing.
    block.extend_from_slice(&[0x0f, 0x10]);
    put_string(&mut block, b"application/grpc");
    block.push(0);
    put_string(&mut block, b"grpc-status");
    put_string(&mut block, code.to_string().as_bytes());
    block.push(0);
    put_string(&mut block, b"grpc-message");
    put_string(&mut block, &percent_encode(message));
    let mut out = frame_header(block.len(), HEADERS, END_HEADERS | END_STREAM, stream).to_vec();
    out.extend_from_slice(&block);
    if !client_done {
        out.extend_from_slice(&frame_header(4, RST_STREAM, 0, stream));
        out.extend_from_slice(&NO_ERROR.to_be_bytes());
    }
    out
}

/// `grpc-message` encoding: printable ASCII except `%` as is, everything else `%XX`.
fn percent_encode(message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{HEADERS, WINDOW_UPDATE};

    const INITIALIZE: &str = "/hector.plugin.LLMProvider/Initialize";
    const GENERATE: &str = "/hector.plugin.LLMProvider/Generate";

    /// Records what the guard writes.
    #[derive(Default)]
    struct Recorder {
        plugin: Vec<u8>,
        plugin_writes: usize,
        client: Vec<u8>,
    }

    impl Sink for Recorder {
        fn to_plugin(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            self.plugin.extend_from_slice(bytes);
            self.plugin_writes += 1;
            Ok(())
        }
        fn to_client(&mut self, frames: &[u8]) -> std::io::Result<()> {
            self.client.extend_from_slice(frames);
            Ok(())
        }
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = frame_header(payload.len(), kind, flags, stream).to_vec();
        f.extend_from_slice(payload);
        f
    }

    /// An HPACK encoder that adds every field it does not find whole in its dynamic table
    /// to it (as grpc-go's does, `:path` included) and refers to it by index afterwards: a
    /// block dropped on the way shifts the indices of every later one.
    #[derive(Default)]
    struct IndexingEncoder {
        table: std::collections::VecDeque<(Vec<u8>, Vec<u8>)>,
        size: usize,
    }

    impl IndexingEncoder {
        fn encode(&mut self, fields: &[(&[u8], &[u8])]) -> Vec<u8> {
            let mut out = Vec::new();
            for &(name, value) in fields {
                if let Some(p) = self.table.iter().position(|(n, v)| n == name && v == value) {
                    put_integer(&mut out, 62 + p, 7, 0x80);
                    continue;
                }
                out.push(0x40);
                put_string(&mut out, name);
                put_string(&mut out, value);
                self.size += name.len() + value.len() + 32;
                self.table.push_front((name.to_vec(), value.to_vec()));
                while self.size > 4096 {
                    let (n, v) = self.table.pop_back().expect("entries");
                    self.size -= n.len() + v.len() + 32;
                }
            }
            out
        }
    }

    /// A client whose every header block changes the dynamic table.
    struct Client {
        encoder: IndexingEncoder,
        bytes: Vec<u8>,
    }

    impl Client {
        fn new() -> Self {
            let mut bytes = PREFACE.to_vec();
            bytes.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]));
            Self {
                encoder: IndexingEncoder::default(),
                bytes,
            }
        }

        fn block(&mut self, path: &str, extra: &str) -> Vec<u8> {
            self.encoder.encode(&[
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", path.as_bytes()),
                (b":authority", b"plugin"),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
                (b"x-call", extra.as_bytes()),
            ])
        }

        /// A unary call: HEADERS, then DATA with END_STREAM.
        fn call(&mut self, stream: u32, path: &str, body: &[u8]) {
            let block = self.block(path, &stream.to_string());
            self.bytes
                .extend(frame(HEADERS, END_HEADERS, stream, &block));
            self.bytes.extend(frame(DATA, END_STREAM, stream, body));
        }

        /// A call whose header block is padded, prioritized and split over `parts` frames.
        fn split_call(&mut self, stream: u32, path: &str, parts: usize) {
            let block = self.block(path, "split");
            let size = block.len().div_ceil(parts);
            let chunks: Vec<&[u8]> = block.chunks(size).collect();
            let mut first = vec![3u8, 0, 0, 0, 0, 200];
            first.extend_from_slice(chunks[0]);
            first.extend([0, 0, 0]);
            let last = chunks.len() == 1;
            let flags = PADDED | PRIORITY | if last { END_HEADERS } else { 0 };
            self.bytes.extend(frame(HEADERS, flags, stream, &first));
            for (i, chunk) in chunks.iter().enumerate().skip(1) {
                let end = if i + 1 == chunks.len() {
                    END_HEADERS
                } else {
                    0
                };
                self.bytes.extend(frame(CONTINUATION, end, stream, chunk));
            }
            self.bytes
                .extend(frame(DATA, END_STREAM, stream, b"split-body"));
        }
    }

    /// Feeds `input` in reads of `chunk` bytes.
    fn feed(input: &[u8], chunk: usize) -> (Recorder, Result<(), GuardError>) {
        let mut guard = Guard::new(None, None);
        let mut sink = Recorder::default();
        for piece in input.chunks(chunk) {
            if let Err(e) = guard.feed(piece, &mut sink) {
                return (sink, Err(e));
            }
        }
        (sink, Ok(()))
    }

    /// What a server makes of `bytes` (after the preface): per frame, its type, flags, stream
    /// and, for header blocks, the decoded fields (by another HPACK implementation, with
    /// one table for the whole connection), else the payload.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Headers(u32, u8, Vec<(String, String)>),
        Other(u8, u8, u32, Vec<u8>),
    }

    fn server_view(bytes: &[u8], skip_preface: bool) -> Vec<Seen> {
        let mut bytes = if skip_preface {
            bytes.strip_prefix(PREFACE).expect("the preface")
        } else {
            bytes
        };
        let mut decoder = fluke_hpack::Decoder::new();
        let mut seen = Vec::new();
        let mut block: Option<(u32, u8, Vec<u8>)> = None;
        while !bytes.is_empty() {
            assert!(bytes.len() >= HEADER_LEN, "a truncated frame header");
            let len = (usize::from(bytes[0]) << 16)
                | (usize::from(bytes[1]) << 8)
                | usize::from(bytes[2]);
            let (kind, flags, stream) = (bytes[3], bytes[4], stream_id(bytes));
            let payload = &bytes[HEADER_LEN..HEADER_LEN + len];
            bytes = &bytes[HEADER_LEN + len..];
            let fragment = match kind {
                HEADERS => {
                    assert!(block.is_none(), "HEADERS inside a header block");
                    let (fragment, _) = split_headers(payload, flags).expect("padding");
                    block = Some((stream, flags, Vec::new()));
                    fragment
                }
                CONTINUATION => payload,
                _ => {
                    assert!(block.is_none(), "a frame inside a header block");
                    seen.push(Seen::Other(kind, flags, stream, payload.to_vec()));
                    continue;
                }
            };
            let (s, f, mut b) = block.take().expect("CONTINUATION after HEADERS");
            assert_eq!(s, stream, "CONTINUATION on the block's stream");
            b.extend_from_slice(fragment);
            if flags & END_HEADERS == 0 {
                block = Some((s, f, b));
                continue;
            }
            let fields = decoder
                .decode(&b)
                .expect("the server decodes every block")
                .into_iter()
                .map(|(n, v)| {
                    (
                        String::from_utf8_lossy(&n).into_owned(),
                        String::from_utf8_lossy(&v).into_owned(),
                    )
                })
                .collect();
            seen.push(Seen::Headers(s, f & (END_STREAM | PRIORITY), fields));
        }
        assert!(block.is_none(), "an unfinished header block");
        seen
    }

    fn path_of(fields: &[(String, String)]) -> Option<&str> {
        fields
            .iter()
            .find(|(n, _)| n == ":path")
            .map(|(_, v)| v.as_str())
    }

    const CHUNKS: [usize; 9] = [1, 2, 5, 9, 10, 17, 64, 1000, usize::MAX];

    type Fields = Vec<(String, String)>;

    /// A guard that checks callers: the list admits namespace `agents`.
    fn checking_guard(issuer: &crate::jwt::tests::TestIssuer) -> Guard {
        let source = crate::issuer::Source {
            server: "https://127.0.0.1:1".parse().expect("uri"),
            credentials: "/nonexistent".into(),
        };
        let keys = crate::issuer::Issuer::with_keys(source, issuer.keys());
        let allow = crate::access::Allowlist::new(&["agents".into()], &[]).expect("list");
        Guard::new(None, Some(crate::access::Authenticator::new(allow, keys)))
    }

    #[tokio::test]
    async fn callers_tokens_never_reach_the_plugin_and_its_table_stays_in_step() {
        let issuer = crate::jwt::tests::TestIssuer::new("k");
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
            + 3600;
        let bearer = format!(
            "Bearer {}",
            issuer.token("agents", "a", "hector.dev/plugins", exp)
        );
        let other = format!(
            "Bearer {}",
            issuer.token("strangers", "b", "hector.dev/plugins", exp)
        );
        let mut c = Client::new();
        let fields = |path: &'static str, auth: &str| -> Vec<(Vec<u8>, Vec<u8>)> {
            vec![
                (b":method".to_vec(), b"POST".to_vec()),
                (b":path".to_vec(), path.as_bytes().to_vec()),
                (b"authorization".to_vec(), auth.as_bytes().to_vec()),
                (b"x-after".to_vec(), b"kept".to_vec()),
            ]
        };
        // 1: the token as a literal added to the table (grpc-go's way); 3: the same token by
        // index; 5: a never-indexed literal (tonic's way for sensitive values); 7: a caller
        // who is not on the list; 9: no token at all.
        let mut encode = |f: Vec<(Vec<u8>, Vec<u8>)>| {
            let refs: Vec<(&[u8], &[u8])> = f.iter().map(|(n, v)| (&n[..], &v[..])).collect();
            c.encoder.encode(&refs)
        };
        let one = encode(fields(GENERATE, &bearer));
        let three = encode(fields(GENERATE, &bearer));
        let mut five = encode(vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":path".to_vec(), GENERATE.as_bytes().to_vec()),
        ]);
        five.push(0x10);
        put_string(&mut five, b"authorization");
        put_string(&mut five, bearer.as_bytes());
        let seven = encode(fields(GENERATE, &other));
        let nine = encode(vec![(b":path".to_vec(), GENERATE.as_bytes().to_vec())]);
        for (stream, block) in [(1, one), (3, three), (5, five), (7, seven), (9, nine)] {
            c.bytes.extend(frame(HEADERS, END_HEADERS, stream, &block));
            c.bytes.extend(frame(DATA, END_STREAM, stream, b"body"));
        }
        for chunk in CHUNKS {
            let mut guard = checking_guard(&issuer);
            let mut sink = Recorder::default();
            for piece in c.bytes.chunks(chunk) {
                guard.feed(piece, &mut sink).expect("passes");
            }
            let seen = server_view(&sink.plugin, true);
            let blocks: Vec<(u32, u8, Fields)> = seen
                .into_iter()
                .filter_map(|s| match s {
                    Seen::Headers(a, b, c) => Some((a, b, c)),
                    Seen::Other(..) => None,
                })
                .collect();
            let streams: Vec<u32> = blocks.iter().map(|b| b.0).collect();
            assert_eq!(
                streams,
                [1, 3, 5],
                "chunk {chunk}: the admitted calls, in order"
            );
            for (_, _, fields) in &blocks {
                assert_eq!(path_of(fields), Some(GENERATE));
                for (n, v) in fields {
                    assert!(
                        !v.contains("Bearer"),
                        "chunk {chunk}: {n} carried a token to the plugin"
                    );
                }
            }
            // Where the client added the token to its table, the plugin's table holds filler
            // of the same size, so the fields after it still decode as sent.
            assert!(
                blocks[0]
                    .2
                    .iter()
                    .any(|(n, v)| n == "x-after" && v == "kept")
            );
            assert!(
                blocks[1]
                    .2
                    .iter()
                    .any(|(n, v)| n == "x-after" && v == "kept")
            );
            let refused = sink.client.len();
            assert!(refused > 0, "streams 7 and 9 were answered by the launcher");
        }
    }

    #[test]
    fn a_connection_without_refused_calls_passes_byte_for_byte() {
        let mut c = Client::new();
        c.call(1, GENERATE, b"one");
        c.split_call(3, GENERATE, 3);
        c.bytes.extend(frame(WINDOW_UPDATE, 0, 0, &[0, 0, 0x10, 0]));
        c.call(5, "/hector.plugin.LLMProvider/GetStatus", b"");
        c.call(7, "/hector.plugin.LLMProvider/SomethingNew", b"new");
        for chunk in CHUNKS {
            let (out, result) = feed(&c.bytes, chunk);
            result.expect("passes");
            assert_eq!(out.plugin, c.bytes, "chunk {chunk}");
            assert!(out.client.is_empty(), "chunk {chunk}");
        }
        // Read whole, it is written whole: the splice costs no extra system call (a header
        // block split over frames is held until it is complete, and written on its own).
        let mut c = Client::new();
        for stream in [1, 3, 5] {
            c.call(stream, GENERATE, b"x");
        }
        let (out, _) = feed(&c.bytes, usize::MAX);
        assert_eq!(out.plugin_writes, 1);
    }

    /// The calls of [`refused_streams_never_reach_the_plugin`]: stream 3 is refused, its
    /// header block split over CONTINUATION frames when `split`.
    fn allowed_refused_allowed(split: bool) -> Client {
        let mut c = Client::new();
        c.call(1, GENERATE, b"first");
        if split {
            c.split_call(3, INITIALIZE, 3);
        } else {
            c.call(3, INITIALIZE, b"prefix=stolen");
        }
        // More on the refused stream, which is dropped too.
        c.bytes.extend(frame(WINDOW_UPDATE, 0, 3, &[0, 0, 1, 0]));
        c.bytes.extend(frame(RST_STREAM, 0, 3, &[0, 0, 0, 8]));
        c.call(5, GENERATE, b"third");
        c.call(7, GENERATE, b"fourth");
        c
    }

    #[test]
    fn refused_streams_never_reach_the_plugin() {
        for split in [false, true] {
            let c = allowed_refused_allowed(split);
            for chunk in CHUNKS {
                let (out, result) = feed(&c.bytes, chunk);
                result.expect("a refusal is no error");
                let seen = server_view(&out.plugin, true);
                // The plugin's view, decoded with one table throughout: streams 1, 5 and 7
                // with all their fields, nothing of stream 3.
                let streams: Vec<(u32, Option<&str>)> = seen
                    .iter()
                    .filter_map(|s| match s {
                        Seen::Headers(id, _, fields) => Some((*id, path_of(fields))),
                        Seen::Other(..) => None,
                    })
                    .collect();
                assert_eq!(
                    streams,
                    [
                        (1, Some(GENERATE)),
                        (5, Some(GENERATE)),
                        (7, Some(GENERATE))
                    ],
                    "split {split}, chunk {chunk}"
                );
                for s in &seen {
                    match s {
                        Seen::Headers(id, _, fields) => {
                            assert_eq!(fields.len(), 7, "{fields:?}");
                            assert!(fields.contains(&("x-call".into(), id.to_string())));
                        }
                        Seen::Other(_, _, stream, _) => assert_ne!(*stream, 3, "split {split}"),
                    }
                }
                // The client's view: a PERMISSION_DENIED answer, a request to stop sending,
                // and the dropped DATA's octets back in its connection window.
                let answer = server_view(&out.client, false);
                let Seen::Headers(3, flags, fields) = &answer[0] else {
                    panic!("an answer on stream 3 first: {answer:?}");
                };
                assert_eq!(*flags & END_STREAM, END_STREAM);
                let field = |name: &str| {
                    fields
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| v.as_str())
                };
                assert_eq!(field(":status"), Some("200"));
                assert_eq!(field("content-type"), Some("application/grpc"));
                assert_eq!(field("grpc-status"), Some("7"));
                assert_eq!(
                    field("grpc-message"),
                    Some(
                        "hector.plugin.LLMProvider/Initialize is reserved to the launcher: the \
                         plugin's lifecycle is not callable over the network"
                    )
                );
                assert_eq!(answer[1], Seen::Other(RST_STREAM, 0, 3, vec![0, 0, 0, 0]));
                let body = if split {
                    "split-body".len()
                } else {
                    "prefix=stolen".len()
                };
                let credit: u32 = answer[2..]
                    .iter()
                    .map(|s| match s {
                        Seen::Other(WINDOW_UPDATE, 0, 0, p) => {
                            u32::from_be_bytes([p[0], p[1], p[2], p[3]])
                        }
                        other => panic!("only window updates after the answer: {other:?}"),
                    })
                    .sum();
                assert_eq!(credit as usize, body, "split {split}, chunk {chunk}");
            }
        }
    }

    #[test]
    fn a_refused_first_call_and_go_plugin_internals() {
        let mut c = Client::new();
        c.call(1, "/plugin.GRPCController/Shutdown", b"");
        c.call(3, "/plugin.GRPCBroker/StartStream", b"");
        c.call(5, "/hector.plugin.LLMProvider/Health", b"");
        let (out, result) = feed(&c.bytes, usize::MAX);
        result.expect("no error");
        let seen = server_view(&out.plugin, true);
        let Seen::Headers(5, _, fields) = &seen[1] else {
            panic!("SETTINGS, then only stream 5: {seen:?}");
        };
        assert_eq!(path_of(fields), Some("/hector.plugin.LLMProvider/Health"));
        assert_eq!(seen.len(), 3, "{seen:?}");
        let answers: Vec<u32> = server_view(&out.client, false)
            .iter()
            .filter_map(|s| match s {
                Seen::Headers(id, _, _) => Some(*id),
                _ => None,
            })
            .collect();
        assert_eq!(answers, [1, 3]);
    }

    #[test]
    fn blocks_on_streams_the_plugin_never_saw_opened_are_dropped() {
        // Enough refused streams that the first ones are forgotten.
        let mut c = Client::new();
        let refused = u32::try_from(MAX_REFUSED_REMEMBERED).expect("small") + 5;
        for i in 0..refused {
            c.call(2 * i + 1, INITIALIZE, b"");
        }
        // Stream 1 again: no new stream for the client, but one for the plugin, which has
        // seen none opened. It must not get through unchecked.
        let block = c.block(INITIALIZE, "again");
        c.bytes.extend(frame(HEADERS, END_HEADERS, 1, &block));
        c.call(2 * refused + 1, GENERATE, b"ok");
        let (out, result) = feed(&c.bytes, 4096);
        result.expect("no error");
        let seen = server_view(&out.plugin, true);
        let headers: Vec<u32> = seen
            .iter()
            .filter_map(|s| match s {
                Seen::Headers(id, _, _) => Some(*id),
                _ => None,
            })
            .collect();
        assert_eq!(headers, [2 * refused + 1]);
    }

    #[test]
    fn requests_without_a_single_method_path_are_refused() {
        let mut c = Client::new();
        let none = c.encoder.encode(&[(b":method", b"POST")]);
        let two = c.encoder.encode(&[
            (b":path", GENERATE.as_bytes()),
            (b":path", INITIALIZE.as_bytes()),
        ]);
        c.bytes
            .extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &none));
        c.bytes
            .extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &two));
        c.call(5, "/hector.plugin.LLMProvider/Initialize?x=1", b"");
        let (out, result) = feed(&c.bytes, usize::MAX);
        result.expect("no error");
        assert_eq!(server_view(&out.plugin, true).len(), 1, "only SETTINGS");
        let answers = server_view(&out.client, false);
        // END_STREAM from the client on 1 and 3: no RST_STREAM for them.
        assert!(matches!(answers[0], Seen::Headers(1, _, _)));
        assert!(matches!(answers[1], Seen::Headers(3, _, _)));
        assert!(matches!(answers[2], Seen::Headers(5, _, _)));
        assert!(matches!(answers[3], Seen::Other(RST_STREAM, _, 5, _)));
    }

    #[test]
    fn reencoded_blocks_are_large_enough_to_need_continuation() {
        let mut c = Client::new();
        c.call(1, INITIALIZE, b"");
        let big = "b".repeat(40_000);
        let block = c.block(GENERATE, &big);
        c.bytes.extend(frame(HEADERS, END_HEADERS, 3, &block));
        let (out, result) = feed(&c.bytes, usize::MAX);
        result.expect("no error");
        let seen = server_view(&out.plugin, true);
        let Seen::Headers(3, _, fields) = &seen[1] else {
            panic!("{seen:?}")
        };
        assert!(fields.contains(&("x-call".into(), big)));
        // HEADERS and CONTINUATION frames of at most 16 KiB each.
        let frames = out.plugin[PREFACE.len() + 15..].len();
        assert!(frames > 40_000 && frames < 40_200, "{frames}");
    }

    #[test]
    fn protocol_violations_close_the_connection() {
        let ok = Client::new().bytes;
        let mut enc = fluke_hpack::Encoder::new();
        let block = enc.encode(vec![(&b":path"[..], GENERATE.as_bytes())]);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "DATA inside a header block",
                [frame(HEADERS, 0, 1, &block[..2]), frame(DATA, 0, 1, b"x")].concat(),
            ),
            (
                "CONTINUATION alone",
                frame(CONTINUATION, END_HEADERS, 1, &block),
            ),
            (
                "CONTINUATION on another stream",
                [
                    frame(HEADERS, 0, 1, &block[..2]),
                    frame(CONTINUATION, END_HEADERS, 3, &block[2..]),
                ]
                .concat(),
            ),
            (
                "PUSH_PROMISE",
                frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2]),
            ),
            ("an even stream", frame(HEADERS, END_HEADERS, 2, &block)),
            (
                "bad padding",
                frame(HEADERS, END_HEADERS | PADDED, 1, &[200, 0x82]),
            ),
            ("bad HPACK", frame(HEADERS, END_HEADERS, 1, &[0xbf])),
            (
                "a block too large",
                frame(HEADERS, 0, 1, &vec![0x82; MAX_HEADER_BLOCK]),
            ),
        ];
        for (what, bad) in cases {
            for chunk in [1, 7, usize::MAX] {
                let input = [ok.clone(), bad.clone()].concat();
                let (out, result) = feed(&input, chunk);
                assert!(result.is_err(), "{what}, chunk {chunk}");
                // Nothing of the offending header block reached the plugin.
                assert!(out.plugin.len() <= ok.len() + HEADER_LEN, "{what}");
            }
        }
    }
}

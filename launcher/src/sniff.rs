//! Connection-level routing: the launcher looks at the first request of each HTTP/2
//! connection. A connection that starts with a `grpc.health.v1` call is served by the
//! launcher itself (and any later plugin calls on it are forwarded request by request); any
//! other connection is spliced to the plugin, which costs far less than re-framing every
//! request. Routing is all this decides: whether a call may reach the plugin is decided for
//! every stream, the first included, by whoever serves the connection ([`crate::guard`] on
//! a spliced one, [`crate::proxy::Switch`] otherwise).
//!
//! To see the first request, the launcher must speak first: gRPC clients (grpc-go, as in the
//! kubelet's probes) wait for the server's SETTINGS before sending a request. So the launcher
//! sends an empty SETTINGS frame, and removes the client's acknowledgement of it from the
//! bytes it hands on, so that whoever serves the connection sees a consistent exchange.

/// The HTTP/2 client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: the server preface, asking for nothing but the defaults.
pub const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

const FRAME_HEADERS: u8 = 0x1;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// Where a connection goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Served by the launcher (health, or anything it cannot classify).
    Local,
    /// Spliced to the plugin.
    Plugin,
}

/// The progress of looking at a connection's first bytes.
#[derive(Debug, Default)]
pub struct Sniffer {
    /// Everything read from the client so far.
    received: Vec<u8>,
    /// What to hand on: `received` without the acknowledgement of our SETTINGS.
    forward: Vec<u8>,
    /// Offset in `received` of the first frame not yet parsed.
    parsed: usize,
    header_block: Vec<u8>,
    in_headers: bool,
    path: Option<String>,
    undecodable: bool,
    acked: bool,
}

/// What to do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Read more bytes.
    Read,
    /// Not HTTP/2 with prior knowledge: serve it locally, we have sent nothing.
    NotHttp2,
    /// Decided; the bytes to hand on are in [`Sniffer::into_forward`].
    Route(Route),
}

/// Give up looking after this many bytes and serve locally.
const MAX_SNIFF: usize = 64 * 1024;

impl Sniffer {
    /// Whether the client's preface is complete and correct (then send [`EMPTY_SETTINGS`]).
    pub fn preface_state(&self) -> Option<bool> {
        if self.received.len() < PREFACE.len() {
            (!PREFACE.starts_with(&self.received)).then_some(false)
        } else {
            Some(self.received.starts_with(PREFACE))
        }
    }

    /// Adds bytes read from the client and says what to do next. Call only after the
    /// preface was accepted and our SETTINGS sent.
    pub fn feed(&mut self, bytes: &[u8]) -> Next {
        self.received.extend_from_slice(bytes);
        match self.preface_state() {
            None => return Next::Read,
            Some(false) => return Next::NotHttp2,
            Some(true) => {}
        }
        if self.parsed == 0 {
            self.parsed = PREFACE.len();
            self.forward.extend_from_slice(PREFACE);
        }
        while let Some((kind, flags, payload, total)) = frame_at(&self.received[self.parsed..]) {
            let start = self.parsed;
            let payload = (start + payload.0, start + payload.1);
            let mut keep = true;
            match kind {
                FRAME_SETTINGS if flags & FLAG_ACK != 0 && !self.acked => {
                    self.acked = true;
                    keep = false;
                }
                FRAME_HEADERS if self.path.is_none() && !self.in_headers => {
                    match header_fragment(&self.received[payload.0..payload.1], flags) {
                        Some(fragment) => {
                            self.header_block.extend_from_slice(fragment);
                            self.in_headers = true;
                            if flags & FLAG_END_HEADERS != 0 {
                                self.decode();
                            }
                        }
                        None => self.undecodable = true,
                    }
                }
                FRAME_CONTINUATION if self.in_headers => {
                    self.header_block
                        .extend_from_slice(&self.received[payload.0..payload.1]);
                    if flags & FLAG_END_HEADERS != 0 {
                        self.decode();
                    }
                }
                _ => {}
            }
            if keep {
                self.forward
                    .extend_from_slice(&self.received[start..start + total]);
            }
            self.parsed += total;
        }
        let decided = self.path.is_some() || self.undecodable;
        if decided && self.acked {
            return Next::Route(self.route());
        }
        if self.received.len() > MAX_SNIFF {
            return Next::Route(Route::Local);
        }
        Next::Read
    }

    fn decode(&mut self) {
        self.in_headers = false;
        // A throwaway decoder: this is the connection's first header block. Whoever serves
        // the connection decodes it again with the connection's own decoder.
        let mut decoder = crate::hpack::Decoder::new(crate::guard::MAX_TABLE_SIZE);
        let mut path = None;
        let decoded = decoder.decode(&self.header_block, |name, value| {
            if name == b":path" && path.is_none() {
                path = Some(String::from_utf8_lossy(value).into_owned());
            }
        });
        self.path = path;
        if decoded.is_err() || self.path.is_none() {
            self.undecodable = true;
        }
    }

    fn route(&self) -> Route {
        match &self.path {
            Some(p) if !p.starts_with("/grpc.health.v1.Health/") => Route::Plugin,
            _ => Route::Local,
        }
    }

    /// The first request's path, once known.
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    /// The bytes to hand on: parsed frames (minus the stripped acknowledgement) and any
    /// partial frame after them.
    pub fn into_forward(mut self) -> Vec<u8> {
        if self.received.len() < PREFACE.len() || !self.received.starts_with(PREFACE) {
            return self.received;
        }
        if self.parsed == 0 {
            return self.received;
        }
        self.forward
            .extend_from_slice(&self.received[self.parsed..]);
        self.forward
    }
}

/// One complete frame at the start of `buf`: (type, flags, payload range, total length).
fn frame_at(buf: &[u8]) -> Option<(u8, u8, (usize, usize), usize)> {
    if buf.len() < 9 {
        return None;
    }
    let len = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
    let total = 9 + len;
    (buf.len() >= total).then_some((buf[3], buf[4], (9, total), total))
}

/// The header block fragment of a HEADERS payload, without padding and priority fields.
pub fn header_fragment(payload: &[u8], flags: u8) -> Option<&[u8]> {
    let mut start = 0;
    let mut end = payload.len();
    if flags & FLAG_PADDED != 0 {
        let pad = usize::from(*payload.first()?);
        start += 1;
        end = end.checked_sub(pad)?;
    }
    if flags & FLAG_PRIORITY != 0 {
        start += 5;
    }
    payload.get(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn headers_block(path: &str) -> Vec<u8> {
        let mut enc = fluke_hpack::Encoder::new();
        enc.encode(vec![
            (&b":method"[..], &b"POST"[..]),
            (&b":scheme"[..], &b"http"[..]),
            (&b":path"[..], path.as_bytes()),
            (&b"content-type"[..], &b"application/grpc"[..]),
        ])
    }

    fn client(path: &str, ack_first: bool) -> (Vec<u8>, Vec<u8>) {
        let settings = frame(FRAME_SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]);
        let ack = frame(FRAME_SETTINGS, FLAG_ACK, 0, &[]);
        let headers = frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &headers_block(path));
        let data = frame(0, 1, 1, &[0, 0, 0, 0, 0]);
        let mut all = PREFACE.to_vec();
        let mut expected = PREFACE.to_vec();
        all.extend(&settings);
        expected.extend(&settings);
        if ack_first {
            all.extend(&ack);
        }
        all.extend(&headers);
        expected.extend(&headers);
        if !ack_first {
            all.extend(&ack);
        }
        all.extend(&data);
        expected.extend(&data);
        (all, expected)
    }

    #[test]
    fn routes_by_first_path_and_strips_our_ack() {
        for ack_first in [true, false] {
            for (path, route) in [
                ("/hector.plugin.LLMProvider/Generate", Route::Plugin),
                ("/grpc.health.v1.Health/Check", Route::Local),
            ] {
                let (bytes, expected) = client(path, ack_first);
                // Fed one byte at a time: decisions never depend on read boundaries.
                let mut s = Sniffer::default();
                let mut outcome = Next::Read;
                for b in &bytes {
                    if outcome == Next::Read {
                        outcome = s.feed(std::slice::from_ref(b));
                    } else {
                        s.received.push(*b);
                    }
                }
                assert_eq!(outcome, Next::Route(route), "{path}");
                assert_eq!(s.path(), Some(path));
                assert_eq!(s.into_forward(), expected, "{path} ack_first={ack_first}");
            }
        }
    }

    #[test]
    fn waits_for_the_ack_before_deciding() {
        let (bytes, _) = client("/x.Y/Z", false);
        let without_ack = bytes.len() - 9 - 14;
        let mut s = Sniffer::default();
        assert_eq!(s.feed(&bytes[..without_ack]), Next::Read);
    }

    #[test]
    fn http1_is_served_locally() {
        let mut s = Sniffer::default();
        assert_eq!(s.feed(b"GET / HTTP/1.1\r\n"), Next::NotHttp2);
        assert_eq!(s.into_forward(), b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn padded_and_prioritized_headers() {
        let block = headers_block("/a.B/C");
        let mut payload = vec![2u8, 0, 0, 0, 0, 16];
        payload.extend(&block);
        payload.extend([0, 0]);
        assert_eq!(
            header_fragment(&payload, FLAG_PADDED | FLAG_PRIORITY),
            Some(&block[..])
        );
        assert_eq!(header_fragment(&[9], FLAG_PADDED), None);
    }
}

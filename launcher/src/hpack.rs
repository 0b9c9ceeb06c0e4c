//! An HPACK decoder (RFC 7541) for the header blocks clients send on spliced connections.
//!
//! The launcher decodes every header block a client sends to the plugin, in order, so that
//! its dynamic table stays exactly the plugin's and the `:path` it reads is the one the
//! plugin will read. Written here rather than taken from a crate: the input is untrusted and
//! on the path of every call, so the decoder must never panic and must be cheap (the Huffman
//! code is walked through a tree built once), and it must be as strict as the servers it sits
//! in front of (a size update only at the start of a block, a bounded table).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::LazyLock;

/// Why a header block cannot be decoded. Any of them ends the connection: the plugin would
/// fail it with COMPRESSION_ERROR too.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    /// The block ends inside a field.
    #[error("the header block ends inside a field")]
    Truncated,
    /// An integer longer than any this decoder accepts.
    #[error("an integer too large")]
    IntegerTooLarge,
    /// An index that is in neither table.
    #[error("index {0} is in neither the static nor the dynamic table")]
    Index(usize),
    /// A Huffman-coded string that is not valid.
    #[error("invalid Huffman code: {0}")]
    Huffman(&'static str),
    /// A dynamic table size update after a field (RFC 7541 §4.2).
    #[error("a dynamic table size update after a header field")]
    SizeUpdateNotFirst,
    /// A dynamic table size above what this decoder allows.
    #[error("dynamic table size {size} above the limit of {limit}")]
    TableTooLarge {
        /// Asked for.
        size: usize,
        /// Allowed.
        limit: usize,
    },
}

/// The default dynamic table size of HTTP/2 (SETTINGS_HEADER_TABLE_SIZE).
pub const DEFAULT_TABLE_SIZE: usize = 4096;
/// Each entry counts its name, its value and 32 octets (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// A dynamic table entry: name and value.
type Entry = (Box<[u8]>, Box<[u8]>);

/// One direction's decoding context: decode every header block of that direction, in order.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first: index 62 is `dynamic[0]`.
    dynamic: VecDeque<Entry>,
    size: usize,
    max_size: usize,
    /// The largest size a size update may ask for.
    limit: usize,
    /// The last long Huffman-coded literal value, encoded and decoded: a caller's token is
    /// sent as the same never-indexed literal with every call, and comparing its octets is
    /// much cheaper than decoding them again.
    memo: std::cell::RefCell<Option<(Vec<u8>, Vec<u8>)>>,
}

/// Huffman-coded strings at least this long are remembered (see [`Decoder`]'s `memo`).
const MEMO_MIN: usize = 256;

/// Where one field's representation lies in a header block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    /// Its first octet.
    pub start: usize,
    /// One past its last octet.
    pub end: usize,
    /// For a literal: its value's string (length prefix included) and whether the field
    /// is added to the dynamic table.
    pub literal_value: Option<LiteralValue>,
}

/// The value of a literal field representation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiteralValue {
    /// The encoded string, length prefix included.
    pub encoded: std::ops::Range<usize>,
    /// Literal with incremental indexing: the field enters the dynamic table.
    pub indexing: bool,
}

impl Decoder {
    /// A decoder whose table starts at HTTP/2's default size and may be resized by the
    /// encoder up to `limit`.
    pub fn new(limit: usize) -> Self {
        Self {
            dynamic: VecDeque::new(),
            size: 0,
            max_size: DEFAULT_TABLE_SIZE,
            limit,
            memo: std::cell::RefCell::new(None),
        }
    }

    /// Decodes `block`, calling `field` with each name and value in order.
    pub fn decode(
        &mut self,
        block: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        self.decode_spans(block, |name, value, _| field(name, value))
    }

    /// [`Decoder::decode`], also telling where in `block` each field's representation is.
    pub fn decode_spans(
        &mut self,
        block: &[u8],
        mut field: impl FnMut(&[u8], &[u8], Span),
    ) -> Result<(), HpackError> {
        let mut i = 0;
        let mut fields_seen = false;
        while let Some(&first) = block.get(i) {
            let rest = &block[i..];
            if first & 0x80 != 0 {
                // Indexed field.
                let (index, n) = integer(rest, 7)?;
                let (name, value) = self.get(index)?;
                field(
                    name,
                    value,
                    Span {
                        start: i,
                        end: i + n,
                        literal_value: None,
                    },
                );
                i += n;
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update.
                if fields_seen {
                    return Err(HpackError::SizeUpdateNotFirst);
                }
                let (size, n) = integer(rest, 5)?;
                if size > self.limit {
                    return Err(HpackError::TableTooLarge {
                        size,
                        limit: self.limit,
                    });
                }
                self.max_size = size;
                self.evict_to(size);
                i += n;
                continue;
            } else {
                // Literal: with incremental indexing (01), or without / never indexed (0000,
                // 0001), which leave the table alone.
                let indexing = first & 0x40 != 0;
                let (index, mut n) = integer(rest, if indexing { 6 } else { 4 })?;
                let name: Cow<'_, [u8]> = if index == 0 {
                    let (name, len) = string(&rest[n..])?;
                    n += len;
                    name
                } else {
                    Cow::Borrowed(self.get(index)?.0)
                };
                let (value, len) = self.value_string(&rest[n..])?;
                let value_at = i + n;
                n += len;
                field(
                    &name,
                    &value,
                    Span {
                        start: i,
                        end: i + n,
                        literal_value: Some(LiteralValue {
                            encoded: value_at..value_at + len,
                            indexing,
                        }),
                    },
                );
                if indexing {
                    let entry = (name.into_owned().into(), value.into_owned().into());
                    self.insert(entry);
                }
                i += n;
            }
            fields_seen = true;
        }
        Ok(())
    }

    /// A literal value: [`string`], through the memo for long Huffman-coded ones.
    fn value_string<'b>(&self, buf: &'b [u8]) -> Result<(Cow<'b, [u8]>, usize), HpackError> {
        let huffman = buf.first().is_some_and(|b| b & 0x80 != 0);
        let (len, n) = integer(buf, 7)?;
        if !huffman || len < MEMO_MIN {
            return string(buf);
        }
        let encoded = buf.get(n..n + len).ok_or(HpackError::Truncated)?;
        if let Some((known, decoded)) = &*self.memo.borrow()
            && known[..] == *encoded
        {
            return Ok((Cow::Owned(decoded.clone()), n + len));
        }
        let (value, used) = string(buf)?;
        *self.memo.borrow_mut() = Some((encoded.to_vec(), value.to_vec()));
        Ok((value, used))
    }

    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        match index {
            0 => Err(HpackError::Index(0)),
            1..=61 => Ok(STATIC_TABLE[index - 1]),
            _ => self
                .dynamic
                .get(index - 62)
                .map(|(n, v)| (&n[..], &v[..]))
                .ok_or(HpackError::Index(index)),
        }
    }

    /// Adds an entry, evicting the oldest ones to make room (RFC 7541 §4.4): an entry larger
    /// than the whole table empties it and is not added.
    fn insert(&mut self, entry: Entry) {
        let entry_size = entry.0.len() + entry.1.len() + ENTRY_OVERHEAD;
        if entry_size > self.max_size {
            self.dynamic.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max_size - entry_size);
        self.size += entry_size;
        self.dynamic.push_front(entry);
    }

    fn evict_to(&mut self, size: usize) {
        while self.size > size {
            match self.dynamic.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + ENTRY_OVERHEAD,
                None => self.size = 0,
            }
        }
    }
}

/// An integer with an `prefix`-bit prefix (RFC 7541 §5.1): (value, octets used). At most four
/// continuation octets: 2^28 and more is far beyond any length or size this decoder accepts.
fn integer(buf: &[u8], prefix: u8) -> Result<(usize, usize), HpackError> {
    let mask = (1usize << prefix) - 1;
    let first = usize::from(*buf.first().ok_or(HpackError::Truncated)?) & mask;
    if first < mask {
        return Ok((first, 1));
    }
    let mut value = mask;
    for (i, &b) in buf.iter().enumerate().skip(1).take(4) {
        value += usize::from(b & 0x7f) << (7 * (i - 1));
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    if buf.len() <= 5 {
        Err(HpackError::Truncated)
    } else {
        Err(HpackError::IntegerTooLarge)
    }
}

/// A string literal (RFC 7541 §5.2): (octets, octets used).
fn string(buf: &[u8]) -> Result<(Cow<'_, [u8]>, usize), HpackError> {
    let huffman = buf.first().is_some_and(|b| b & 0x80 != 0);
    let (len, n) = integer(buf, 7)?;
    let raw = buf.get(n..n + len).ok_or(HpackError::Truncated)?;
    let octets = if huffman {
        Cow::Owned(huffman_decode(raw)?)
    } else {
        Cow::Borrowed(raw)
    };
    Ok((octets, n + len))
}

/// A node's child: another node, or a leaf carrying a symbol.
const LEAF: u16 = 0x8000;

/// The Huffman code as a binary tree: node `i` has children `[bit 0, bit 1]`; 0 is "none" (the
/// root is nobody's child). The code is complete, so every path ends in a leaf.
static HUFFMAN_TREE: LazyLock<Vec<[u16; 2]>> = LazyLock::new(|| {
    let mut tree = vec![[0u16; 2]];
    for (symbol, &(code, bits)) in HUFFMAN_CODES.iter().enumerate() {
        let mut node = 0;
        for depth in (0..bits).rev() {
            let bit = ((code >> depth) & 1) as usize;
            if depth == 0 {
                // At most 256: fits beside the flag.
                tree[node][bit] = LEAF | symbol as u16;
            } else {
                if tree[node][bit] == 0 {
                    // At most 256 inner nodes.
                    tree[node][bit] = tree.len() as u16;
                    tree.push([0, 0]);
                }
                node = usize::from(tree[node][bit]);
            }
        }
    }
    tree
});

/// The symbol of the end-of-string code, which must never appear in a string.
const EOS: u16 = 256;

fn huffman_decode(bits: &[u8]) -> Result<Vec<u8>, HpackError> {
    let tree = &*HUFFMAN_TREE;
    // Huffman codes are at least 5 bits long: the output is shorter than 8/5 of the input.
    let mut out = Vec::with_capacity(bits.len() * 8 / 5 + 1);
    let mut node = 0usize;
    // Bits since the last symbol, and whether they were all ones: the padding must be a
    // prefix of EOS (all ones) and shorter than a byte (RFC 7541 §5.2).
    let mut pending = 0u32;
    let mut all_ones = true;
    for &byte in bits {
        for shift in (0..8).rev() {
            let bit = (byte >> shift) & 1;
            pending += 1;
            all_ones &= bit == 1;
            let next = tree[node][usize::from(bit)];
            if next & LEAF != 0 {
                let symbol = next & !LEAF;
                if symbol == EOS {
                    return Err(HpackError::Huffman("EOS inside a string"));
                }
                // Below 256 here.
                out.push(symbol as u8);
                node = 0;
                pending = 0;
                all_ones = true;
            } else if next == 0 {
                return Err(HpackError::Huffman("no such code"));
            } else {
                node = usize::from(next);
            }
        }
    }
    if pending > 7 {
        return Err(HpackError::Huffman("padding longer than 7 bits"));
    }
    if !all_ones {
        return Err(HpackError::Huffman("padding that is not a prefix of EOS"));
    }
    Ok(out)
}

/// The static table (RFC 7541 Appendix A); index 1 is the first entry.
const STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// The Huffman code (RFC 7541 Appendix B): code and length in bits of symbols 0 to 255 and
/// of EOS (256).
const HUFFMAN_CODES: [(u32, u8); 257] = [
    (0x1ff8, 13),
    (0x7fffd8, 23),
    (0xfffffe2, 28),
    (0xfffffe3, 28),
    (0xfffffe4, 28),
    (0xfffffe5, 28),
    (0xfffffe6, 28),
    (0xfffffe7, 28),
    (0xfffffe8, 28),
    (0xffffea, 24),
    (0x3ffffffc, 30),
    (0xfffffe9, 28),
    (0xfffffea, 28),
    (0x3ffffffd, 30),
    (0xfffffeb, 28),
    (0xfffffec, 28),
    (0xfffffed, 28),
    (0xfffffee, 28),
    (0xfffffef, 28),
    (0xffffff0, 28),
    (0xffffff1, 28),
    (0xffffff2, 28),
    (0x3ffffffe, 30),
    (0xffffff3, 28),
    (0xffffff4, 28),
    (0xffffff5, 28),
    (0xffffff6, 28),
    (0xffffff7, 28),
    (0xffffff8, 28),
    (0xffffff9, 28),
    (0xffffffa, 28),
    (0xffffffb, 28),
    (0x14, 6),
    (0x3f8, 10),
    (0x3f9, 10),
    (0xffa, 12),
    (0x1ff9, 13),
    (0x15, 6),
    (0xf8, 8),
    (0x7fa, 11),
    (0x3fa, 10),
    (0x3fb, 10),
    (0xf9, 8),
    (0x7fb, 11),
    (0xfa, 8),
    (0x16, 6),
    (0x17, 6),
    (0x18, 6),
    (0x0, 5),
    (0x1, 5),
    (0x2, 5),
    (0x19, 6),
    (0x1a, 6),
    (0x1b, 6),
    (0x1c, 6),
    (0x1d, 6),
    (0x1e, 6),
    (0x1f, 6),
    (0x5c, 7),
    (0xfb, 8),
    (0x7ffc, 15),
    (0x20, 6),
    (0xffb, 12),
    (0x3fc, 10),
    (0x1ffa, 13),
    (0x21, 6),
    (0x5d, 7),
    (0x5e, 7),
    (0x5f, 7),
    (0x60, 7),
    (0x61, 7),
    (0x62, 7),
    (0x63, 7),
    (0x64, 7),
    (0x65, 7),
    (0x66, 7),
    (0x67, 7),
    (0x68, 7),
    (0x69, 7),
    (0x6a, 7),
    (0x6b, 7),
    (0x6c, 7),
    (0x6d, 7),
    (0x6e, 7),
    (0x6f, 7),
    (0x70, 7),
    (0x71, 7),
    (0x72, 7),
    (0xfc, 8),
    (0x73, 7),
    (0xfd, 8),
    (0x1ffb, 13),
    (0x7fff0, 19),
    (0x1ffc, 13),
    (0x3ffc, 14),
    (0x22, 6),
    (0x7ffd, 15),
    (0x3, 5),
    (0x23, 6),
    (0x4, 5),
    (0x24, 6),
    (0x5, 5),
    (0x25, 6),
    (0x26, 6),
    (0x27, 6),
    (0x6, 5),
    (0x74, 7),
    (0x75, 7),
    (0x28, 6),
    (0x29, 6),
    (0x2a, 6),
    (0x7, 5),
    (0x2b, 6),
    (0x76, 7),
    (0x2c, 6),
    (0x8, 5),
    (0x9, 5),
    (0x2d, 6),
    (0x77, 7),
    (0x78, 7),
    (0x79, 7),
    (0x7a, 7),
    (0x7b, 7),
    (0x7ffe, 15),
    (0x7fc, 11),
    (0x3ffd, 14),
    (0x1ffd, 13),
    (0xffffffc, 28),
    (0xfffe6, 20),
    (0x3fffd2, 22),
    (0xfffe7, 20),
    (0xfffe8, 20),
    (0x3fffd3, 22),
    (0x3fffd4, 22),
    (0x3fffd5, 22),
    (0x7fffd9, 23),
    (0x3fffd6, 22),
    (0x7fffda, 23),
    (0x7fffdb, 23),
    (0x7fffdc, 23),
    (0x7fffdd, 23),
    (0x7fffde, 23),
    (0xffffeb, 24),
    (0x7fffdf, 23),
    (0xffffec, 24),
    (0xffffed, 24),
    (0x3fffd7, 22),
    (0x7fffe0, 23),
    (0xffffee, 24),
    (0x7fffe1, 23),
    (0x7fffe2, 23),
    (0x7fffe3, 23),
    (0x7fffe4, 23),
    (0x1fffdc, 21),
    (0x3fffd8, 22),
    (0x7fffe5, 23),
    (0x3fffd9, 22),
    (0x7fffe6, 23),
    (0x7fffe7, 23),
    (0xffffef, 24),
    (0x3fffda, 22),
    (0x1fffdd, 21),
    (0xfffe9, 20),
    (0x3fffdb, 22),
    (0x3fffdc, 22),
    (0x7fffe8, 23),
    (0x7fffe9, 23),
    (0x1fffde, 21),
    (0x7fffea, 23),
    (0x3fffdd, 22),
    (0x3fffde, 22),
    (0xfffff0, 24),
    (0x1fffdf, 21),
    (0x3fffdf, 22),
    (0x7fffeb, 23),
    (0x7fffec, 23),
    (0x1fffe0, 21),
    (0x1fffe1, 21),
    (0x3fffe0, 22),
    (0x1fffe2, 21),
    (0x7fffed, 23),
    (0x3fffe1, 22),
    (0x7fffee, 23),
    (0x7fffef, 23),
    (0xfffea, 20),
    (0x3fffe2, 22),
    (0x3fffe3, 22),
    (0x3fffe4, 22),
    (0x7ffff0, 23),
    (0x3fffe5, 22),
    (0x3fffe6, 22),
    (0x7ffff1, 23),
    (0x3ffffe0, 26),
    (0x3ffffe1, 26),
    (0xfffeb, 20),
    (0x7fff1, 19),
    (0x3fffe7, 22),
    (0x7ffff2, 23),
    (0x3fffe8, 22),
    (0x1ffffec, 25),
    (0x3ffffe2, 26),
    (0x3ffffe3, 26),
    (0x3ffffe4, 26),
    (0x7ffffde, 27),
    (0x7ffffdf, 27),
    (0x3ffffe5, 26),
    (0xfffff1, 24),
    (0x1ffffed, 25),
    (0x7fff2, 19),
    (0x1fffe3, 21),
    (0x3ffffe6, 26),
    (0x7ffffe0, 27),
    (0x7ffffe1, 27),
    (0x3ffffe7, 26),
    (0x7ffffe2, 27),
    (0xfffff2, 24),
    (0x1fffe4, 21),
    (0x1fffe5, 21),
    (0x3ffffe8, 26),
    (0x3ffffe9, 26),
    (0xffffffd, 28),
    (0x7ffffe3, 27),
    (0x7ffffe4, 27),
    (0x7ffffe5, 27),
    (0xfffec, 20),
    (0xfffff3, 24),
    (0xfffed, 20),
    (0x1fffe6, 21),
    (0x3fffe9, 22),
    (0x1fffe7, 21),
    (0x1fffe8, 21),
    (0x7ffff3, 23),
    (0x3fffea, 22),
    (0x3fffeb, 22),
    (0x1ffffee, 25),
    (0x1ffffef, 25),
    (0xfffff4, 24),
    (0xfffff5, 24),
    (0x3ffffea, 26),
    (0x7ffff4, 23),
    (0x3ffffeb, 26),
    (0x7ffffe6, 27),
    (0x3ffffec, 26),
    (0x3ffffed, 26),
    (0x7ffffe7, 27),
    (0x7ffffe8, 27),
    (0x7ffffe9, 27),
    (0x7ffffea, 27),
    (0x7ffffeb, 27),
    (0xffffffe, 28),
    (0x7ffffec, 27),
    (0x7ffffed, 27),
    (0x7ffffee, 27),
    (0x7ffffef, 27),
    (0x7fffff0, 27),
    (0x3ffffee, 26),
    (0x3fffffff, 30),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn decode_all(d: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, HpackError> {
        let mut out = Vec::new();
        d.decode(block, |n, v| {
            out.push((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ))
        })?;
        Ok(out)
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn rfc7541_c4_requests_with_huffman_coding() {
        // RFC 7541 Appendix C.4: three requests on one connection, sharing a dynamic table.
        let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
        let first = hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff");
        assert_eq!(
            decode_all(&mut d, &first),
            Ok(pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ]))
        );
        assert_eq!(d.size, 57);
        let second = hex("8286 84be 5886 a8eb 1064 9cbf");
        assert_eq!(
            decode_all(&mut d, &second),
            Ok(pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ]))
        );
        assert_eq!(d.size, 110);
        let third = hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf");
        assert_eq!(
            decode_all(&mut d, &third),
            Ok(pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ]))
        );
        assert_eq!(d.size, 164);
    }

    #[test]
    fn rfc7541_c5_responses_with_eviction() {
        // RFC 7541 Appendix C.5: a 256-octet table, so that entries are evicted.
        let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
        d.decode(&[0x3f, 0xe1, 0x01], |_, _| {})
            .expect("size update to 256");
        assert_eq!(d.max_size, 256);
        let first = hex(
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 \
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 \
             6c65 2e63 6f6d",
        );
        decode_all(&mut d, &first).expect("first response");
        assert_eq!(d.size, 222);
        let second = hex("4803 3330 37c1 c0bf");
        assert_eq!(
            decode_all(&mut d, &second),
            Ok(pairs(&[
                (":status", "307"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ]))
        );
        assert_eq!(d.size, 222, "`:status: 302` was evicted");
        assert_eq!(d.dynamic.len(), 4);
    }

    #[test]
    fn agrees_with_another_implementation() {
        // fluke-hpack encodes with incremental indexing: many blocks through one table,
        // several of them forcing evictions.
        let mut enc = fluke_hpack::Encoder::new();
        let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
        for round in 0..200 {
            let big = "v".repeat(round * 7 % 900);
            let headers: Vec<(Vec<u8>, Vec<u8>)> = vec![
                (b":method".to_vec(), b"POST".to_vec()),
                (
                    b":path".to_vec(),
                    format!("/a.B/M{}", round % 13).into_bytes(),
                ),
                (b"x-round".to_vec(), round.to_string().into_bytes()),
                (b"x-big".to_vec(), big.into_bytes()),
                (b"te".to_vec(), b"trailers".to_vec()),
            ];
            let block = enc.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
            let mut got = Vec::new();
            d.decode(&block, |n, v| got.push((n.to_vec(), v.to_vec())))
                .expect("decodes");
            assert_eq!(got, headers, "round {round}");
            assert!(d.size <= d.max_size);
        }
    }

    #[test]
    fn malformed_blocks_are_errors_not_panics() {
        let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
        for (block, err) in [
            (&[0x80][..], HpackError::Index(0)),
            (&[0xbe], HpackError::Index(62)),
            (
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                HpackError::IntegerTooLarge,
            ),
            (&[0xff], HpackError::Truncated),
            (&[0x3f], HpackError::Truncated),
            (&[0x3f, 0xe1], HpackError::Truncated),
            (&[0x40, 0x05, b'a'], HpackError::Truncated),
            (&[0x00, 0x01, b'a', 0x03, b'b'], HpackError::Truncated),
            (&[0x82, 0x20], HpackError::SizeUpdateNotFirst),
            (
                &[0x3f, 0xe1, 0xff, 0x03],
                HpackError::TableTooLarge {
                    size: 65_536,
                    limit: DEFAULT_TABLE_SIZE,
                },
            ),
            // A Huffman string of one byte of ones: 8 bits of padding.
            (
                &[0x04, 0x81, 0xff, 0x00],
                HpackError::Huffman("padding longer than 7 bits"),
            ),
            // EOS (30 ones) inside a string.
            (
                &[0x04, 0x84, 0xff, 0xff, 0xff, 0xff, 0x00],
                HpackError::Huffman("EOS inside a string"),
            ),
            // 'a' (00011) then padding 000: not a prefix of EOS.
            (
                &[0x04, 0x81, 0x18, 0x00],
                HpackError::Huffman("padding that is not a prefix of EOS"),
            ),
        ] {
            assert_eq!(d.decode(block, |_, _| {}), Err(err), "{block:02x?}");
        }
        // Every prefix of a valid block fails cleanly or decodes.
        let mut enc = fluke_hpack::Encoder::new();
        let block = enc.encode(vec![
            (&b":path"[..], &b"/hector.plugin.LLMProvider/Generate"[..]),
            (&b"x-a"[..], &b"b"[..]),
        ]);
        for end in 0..block.len() {
            let _ = Decoder::new(DEFAULT_TABLE_SIZE).decode(&block[..end], |_, _| {});
        }
    }

    #[test]
    fn size_updates_empty_and_resize_the_table() {
        let mut d = Decoder::new(8192);
        d.decode(&[0x40, 0x01, b'a', 0x01, b'b'], |_, _| {})
            .expect("insert");
        assert_eq!(d.get(62), Ok((&b"a"[..], &b"b"[..])));
        d.decode(&[0x20, 0x3f, 0xe1, 0x3f, 0x82], |_, _| {})
            .expect("to 0, then 8192, then a field");
        assert_eq!(d.get(62), Err(HpackError::Index(62)));
        assert_eq!(d.max_size, 8192);
        // An entry larger than the table empties it.
        let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
        d.decode(&[0x40, 0x01, b'a', 0x01, b'b'], |_, _| {})
            .expect("insert");
        let mut big = vec![0x40, 0x01, b'c', 0x7f, 0x81, 0x20];
        big.extend(std::iter::repeat_n(b'x', 4224));
        d.decode(&big, |_, _| {}).expect("too big to keep");
        assert_eq!((d.size, d.dynamic.len()), (0, 0));
    }
}

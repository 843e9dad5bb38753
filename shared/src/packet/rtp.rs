//! RTP header view (RFC 3550 §5.1, RFC 8285 header extensions).
//!
//! [`Header::parse`] checks every length in the fixed header, the CSRC list, the extension
//! and the padding against the slice, so the offsets it returns are always in range for that
//! slice. The setters rewrite the fixed header in place for per-subscriber forwarding.

use std::ops::Range;

use super::{be16, be32, ParseError};

/// The fixed RTP header, without CSRCs or extension.
pub const HEADER_LEN: usize = 12;

/// RFC 8285 §4.2: the one-byte header extension profile.
pub const PROFILE_ONE_BYTE: u16 = 0xBEDE;
/// RFC 8285 §4.3: two-byte profiles are 0x1000..=0x100F (the low 4 bits are app bits).
pub const PROFILE_TWO_BYTE: u16 = 0x1000;

/// A parsed RTP header. Offsets index the slice that was parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub csrc_count: u8,
    /// Offset of the payload (after CSRCs and extension).
    pub payload_offset: usize,
    /// Bytes of padding at the end (0 if the P bit is clear), including the count byte.
    pub padding_len: usize,
    /// The header extension, if the X bit is set.
    pub extension: Option<Extension>,
}

/// Where an RTP header extension lies: `start..end` is its data, after the 4-byte
/// profile/length word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extension {
    pub profile: u16,
    pub start: usize,
    pub end: usize,
}

impl Header {
    /// Parse and validate the header of the RTP packet `b`.
    pub fn parse(b: &[u8]) -> Result<Header, ParseError> {
        if b.len() < HEADER_LEN {
            return Err(ParseError::TooShort);
        }
        let (b0, b1) = (b[0], b[1]);
        if b0 >> 6 != 2 {
            return Err(ParseError::BadVersion);
        }
        let csrc_count = b0 & 0x0f;
        let mut offset = HEADER_LEN + 4 * usize::from(csrc_count);
        if offset > b.len() {
            return Err(ParseError::TooShort);
        }
        let extension = if b0 & 0x10 != 0 {
            let profile = be16(b, offset).ok_or(ParseError::BadExtension)?;
            let words = be16(b, offset + 2).ok_or(ParseError::BadExtension)?;
            let start = offset + 4;
            let end = start + 4 * usize::from(words);
            if end > b.len() {
                return Err(ParseError::BadExtension);
            }
            offset = end;
            Some(Extension {
                profile,
                start,
                end,
            })
        } else {
            None
        };
        let padding_len = if b0 & 0x20 != 0 {
            // The last byte counts the padding, itself included (RFC 3550 §5.1).
            let n = usize::from(b[b.len() - 1]);
            if n == 0 || offset + n > b.len() {
                return Err(ParseError::BadPadding);
            }
            n
        } else {
            0
        };
        Ok(Header {
            marker: b1 & 0x80 != 0,
            payload_type: b1 & 0x7f,
            sequence: be16(b, 2).ok_or(ParseError::TooShort)?,
            timestamp: be32(b, 4).ok_or(ParseError::TooShort)?,
            ssrc: be32(b, 8).ok_or(ParseError::TooShort)?,
            csrc_count,
            payload_offset: offset,
            padding_len,
            extension,
        })
    }

    /// The payload of `b` (the slice this header was parsed from), without padding.
    /// Never panics: returns an empty slice if the offsets do not fit `b`.
    pub fn payload<'a>(&self, b: &'a [u8]) -> &'a [u8] {
        let end = b.len().saturating_sub(self.padding_len);
        b.get(self.payload_offset..end).unwrap_or(&[])
    }

    /// The CSRCs, in order.
    pub fn csrcs<'a>(&self, b: &'a [u8]) -> impl Iterator<Item = u32> + 'a {
        let end = HEADER_LEN + 4 * usize::from(self.csrc_count);
        b.get(HEADER_LEN..end)
            .unwrap_or(&[])
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }
}

fn fixed_header(b: &mut [u8]) -> Result<&mut [u8], ParseError> {
    b.get_mut(..HEADER_LEN).ok_or(ParseError::TooShort)
}

/// Rewrite the SSRC in place. `Err(TooShort)` if `b` is shorter than the fixed header.
pub fn set_ssrc(b: &mut [u8], v: u32) -> Result<(), ParseError> {
    fixed_header(b)?[8..12].copy_from_slice(&v.to_be_bytes());
    Ok(())
}

/// Rewrite the sequence number in place. `Err(TooShort)` if `b` is shorter than 12 bytes.
pub fn set_sequence(b: &mut [u8], v: u16) -> Result<(), ParseError> {
    fixed_header(b)?[2..4].copy_from_slice(&v.to_be_bytes());
    Ok(())
}

/// Rewrite the timestamp in place. `Err(TooShort)` if `b` is shorter than 12 bytes.
pub fn set_timestamp(b: &mut [u8], v: u32) -> Result<(), ParseError> {
    fixed_header(b)?[4..8].copy_from_slice(&v.to_be_bytes());
    Ok(())
}

/// Rewrite the payload type (low 7 bits of `v`) in place, keeping the marker bit.
/// `Err(TooShort)` if `b` is shorter than 12 bytes.
pub fn set_payload_type(b: &mut [u8], v: u8) -> Result<(), ParseError> {
    let h = fixed_header(b)?;
    h[1] = (h[1] & 0x80) | (v & 0x7f);
    Ok(())
}

/// Iterate the RFC 8285 header extension elements of `b` as `(id, value)`.
///
/// Empty if there is no extension or its profile is neither one-byte nor two-byte. Yields
/// `Err(BadExtension)` once and stops if an element runs past the extension (or `h` does not
/// describe `b`).
pub fn extensions<'a>(b: &'a [u8], h: &Header) -> ExtensionIter<'a> {
    let (form, data, base) = match h.extension {
        Some(e) => {
            let form = if e.profile == PROFILE_ONE_BYTE {
                Form::OneByte
            } else if e.profile & 0xfff0 == PROFILE_TWO_BYTE {
                Form::TwoByte
            } else {
                Form::Done
            };
            match b.get(e.start..e.end) {
                Some(d) => (form, d, e.start),
                None => (Form::Broken, &[][..], 0),
            }
        }
        None => (Form::Done, &[][..], 0),
    };
    ExtensionIter {
        data,
        base,
        pos: 0,
        form,
    }
}

/// The byte range in `b` of the value of the first extension element with `id`, for
/// rewriting it in place (e.g. a transport-wide sequence number). `None` if absent or if
/// the extension is malformed before it.
pub fn find_extension(b: &[u8], h: &Header, id: u8) -> Option<Range<usize>> {
    let mut it = extensions(b, h);
    while let Some(Ok((eid, range))) = it.next_range() {
        if eid == id {
            return Some(range);
        }
    }
    None
}

/// Rewrite the ids of the one-byte header extension elements of `b` in place: element `id`
/// becomes `map[id]`, or, where `map[id]` is 0, is overwritten with zero bytes, which RFC 8285
/// §4.2 defines as padding — the element disappears without moving the payload. Two-byte
/// extensions are left as they are. Used per subscriber: each peer numbers extensions its own
/// way, and some (a publisher's transport-wide sequence, its mids) mean nothing downstream.
pub fn remap_extensions(b: &mut [u8], h: &Header, map: &[u8; 16]) -> Result<(), ParseError> {
    let one_byte = h.extension.is_some_and(|e| e.profile == PROFILE_ONE_BYTE);
    if !one_byte {
        return Ok(());
    }
    // Elements first (at most one per 2 bytes of a 1500-byte packet, but a handful in
    // practice): collect positions, then write.
    let mut found = [(0u8, 0usize, 0usize); 16];
    let mut n = 0;
    let mut it = extensions(b, h);
    while let Some(r) = it.next_range() {
        let (id, range) = r?;
        if n == found.len() {
            return Err(ParseError::BadExtension);
        }
        found[n] = (id, range.start - 1, range.end);
        n += 1;
    }
    for &(id, at, end) in &found[..n] {
        let new = map[usize::from(id & 0x0f)];
        if new == 0 || new > 14 {
            b.get_mut(at..end).ok_or(ParseError::BadExtension)?.fill(0);
        } else {
            let byte = b.get_mut(at).ok_or(ParseError::BadExtension)?;
            *byte = (new << 4) | (*byte & 0x0f);
        }
    }
    Ok(())
}

/// Put a one-byte header extension element `id` with the 2-byte `value` into the packet in
/// `b[..len]` (RFC 8285 §4.2), for the transport-wide sequence number a viewer's feedback
/// refers to. In order of preference, and without allocating: overwrite an element `id`
/// already there, reuse 3 bytes of padding inside the extension block (what
/// [`remap_extensions`] leaves where it dropped the publisher's own transport-cc element),
/// grow the block by one word, or add a block. Growing moves the payload: `b` must have the
/// room. Returns the new length and where the value is (to write it again in place). Two-byte-header packets are refused
/// ([`ParseError::BadExtension`]): they never reach a viewer whose answer has no
/// `extmap-allow-mixed`.
pub fn put_extension(
    b: &mut [u8],
    len: usize,
    id: u8,
    value: [u8; 2],
) -> Result<(usize, usize), ParseError> {
    if !(1..=14).contains(&id) {
        return Err(ParseError::BadExtension);
    }
    let pkt = b.get(..len).ok_or(ParseError::TooShort)?;
    let h = Header::parse(pkt)?;
    let element = [(id << 4) | 1, value[0], value[1]];
    match h.extension {
        Some(e) if e.profile != PROFILE_ONE_BYTE => Err(ParseError::BadExtension),
        Some(e) => {
            // An element with this id, or a run of 3 padding bytes.
            let mut zeros = 0usize;
            let mut at = e.start;
            while at < e.end {
                let byte = *b.get(at).ok_or(ParseError::BadExtension)?;
                if byte == 0 {
                    zeros += 1;
                    at += 1;
                    if zeros == 3 {
                        let start = at - 3;
                        b.get_mut(start..at)
                            .ok_or(ParseError::BadExtension)?
                            .copy_from_slice(&element);
                        return Ok((len, start + 1));
                    }
                    continue;
                }
                zeros = 0;
                let el_id = byte >> 4;
                if el_id == 15 {
                    break; // RFC 8285 §4.2: stop parsing
                }
                let el_len = usize::from(byte & 0x0f) + 1;
                if el_id == id && el_len == 2 {
                    b.get_mut(at + 1..at + 3)
                        .ok_or(ParseError::BadExtension)?
                        .copy_from_slice(&value);
                    return Ok((len, at + 1));
                }
                at += 1 + el_len;
            }
            // Grow the block by one word: the element and one byte of padding.
            let new_len = len + 4;
            if new_len > b.len() {
                return Err(ParseError::TooShort);
            }
            b.copy_within(e.end..len, e.end + 4);
            b.get_mut(e.end..e.end + 4)
                .ok_or(ParseError::TooShort)?
                .copy_from_slice(&[element[0], element[1], element[2], 0]);
            let words =
                u16::try_from((e.end + 4 - e.start) / 4).map_err(|_| ParseError::BadExtension)?;
            b.get_mut(e.start - 2..e.start)
                .ok_or(ParseError::TooShort)?
                .copy_from_slice(&words.to_be_bytes());
            Ok((new_len, e.end + 1))
        }
        None => {
            let at = HEADER_LEN + 4 * usize::from(h.csrc_count);
            let new_len = len + 8;
            if new_len > b.len() {
                return Err(ParseError::TooShort);
            }
            b.copy_within(at..len, at + 8);
            let mut block = [0u8; 8];
            block[..2].copy_from_slice(&PROFILE_ONE_BYTE.to_be_bytes());
            block[2..4].copy_from_slice(&1u16.to_be_bytes());
            block[4..7].copy_from_slice(&element);
            b.get_mut(at..at + 8)
                .ok_or(ParseError::TooShort)?
                .copy_from_slice(&block);
            b[0] |= 0x10;
            Ok((new_len, at + 5))
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    OneByte,
    TwoByte,
    /// `h` did not fit `b`: yield one error.
    Broken,
    Done,
}

/// Iterator over header extension elements; see [`extensions`].
#[derive(Clone, Debug)]
pub struct ExtensionIter<'a> {
    data: &'a [u8],
    /// Offset of `data` in the packet, for [`find_extension`].
    base: usize,
    pos: usize,
    form: Form,
}

impl<'a> ExtensionIter<'a> {
    /// Next element as (id, range of its value in the packet).
    fn next_range(&mut self) -> Option<Result<(u8, Range<usize>), ParseError>> {
        loop {
            let form = self.form;
            match form {
                Form::Done => return None,
                Form::Broken => {
                    self.form = Form::Done;
                    return Some(Err(ParseError::BadExtension));
                }
                Form::OneByte | Form::TwoByte => {}
            }
            let Some(&first) = self.data.get(self.pos) else {
                self.form = Form::Done;
                return None;
            };
            // A zero byte is padding between elements in both forms (RFC 8285 §4.2, §4.3);
            // like libwebrtc, treat any one-byte element with the reserved ID 0 as one such
            // byte and ignore its length.
            if first == 0 || (form == Form::OneByte && first >> 4 == 0) {
                self.pos += 1;
                continue;
            }
            let (id, len, header) = if form == Form::OneByte {
                // ID 15 is reserved: "the local identifier value 15 ... processing stops".
                if first >> 4 == 15 {
                    self.form = Form::Done;
                    return None;
                }
                (first >> 4, usize::from(first & 0x0f) + 1, 1)
            } else {
                match self.data.get(self.pos + 1) {
                    Some(&len) => (first, usize::from(len), 2),
                    None => {
                        self.form = Form::Done;
                        return Some(Err(ParseError::BadExtension));
                    }
                }
            };
            let start = self.pos + header;
            let end = start + len;
            if end > self.data.len() {
                self.form = Form::Done;
                return Some(Err(ParseError::BadExtension));
            }
            self.pos = end;
            return Some(Ok((id, self.base + start..self.base + end)));
        }
    }
}

impl<'a> Iterator for ExtensionIter<'a> {
    type Item = Result<(u8, &'a [u8]), ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        let data = self.data;
        let base = self.base;
        Some(self.next_range()?.map(|(id, r)| {
            // `next_range` checked `r` against `data`, so this never falls back.
            (id, data.get(r.start - base..r.end - base).unwrap_or(&[]))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// V=2, X=1, M=1 PT=111, seq 0x1234, ts 0xdeadbeef, ssrc 0x11223344, one CSRC,
    /// one-byte extension with id 1 (1 byte) and id 3 (2 bytes) + padding, payload "hi",
    /// 2 bytes RTP padding.
    fn sample() -> Vec<u8> {
        let mut p = vec![0xb1, 0x80 | 111, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef];
        p.extend_from_slice(&0x1122_3344u32.to_be_bytes());
        p.extend_from_slice(&0xcafe_babeu32.to_be_bytes());
        p.extend_from_slice(&[0xbe, 0xde, 0x00, 0x02]);
        p.extend_from_slice(&[0x10, 0xaa, 0x31, 0xbb, 0xcc, 0x00, 0x00, 0x00]);
        p.extend_from_slice(b"hi");
        p.extend_from_slice(&[0x00, 0x02]);
        p
    }

    #[test]
    fn parses_every_field() {
        let p = sample();
        let h = Header::parse(&p).expect("valid");
        assert!(h.marker);
        assert_eq!(h.payload_type, 111);
        assert_eq!(h.sequence, 0x1234);
        assert_eq!(h.timestamp, 0xdead_beef);
        assert_eq!(h.ssrc, 0x1122_3344);
        assert_eq!(h.csrc_count, 1);
        assert_eq!(h.csrcs(&p).collect::<Vec<_>>(), vec![0xcafe_babe]);
        assert_eq!(
            h.extension,
            Some(Extension {
                profile: 0xbede,
                start: 20,
                end: 28
            })
        );
        assert_eq!(h.payload_offset, 28);
        assert_eq!(h.padding_len, 2);
        assert_eq!(h.payload(&p), b"hi");
        let ext: Vec<_> = extensions(&p, &h).collect();
        assert_eq!(ext, vec![Ok((1, &[0xaa][..])), Ok((3, &[0xbb, 0xcc][..]))]);
        assert_eq!(find_extension(&p, &h, 3), Some(23..25));
        assert_eq!(find_extension(&p, &h, 2), None);
    }

    #[test]
    fn two_byte_extensions() {
        let mut p = vec![0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2];
        p.extend_from_slice(&[0x10, 0x00, 0x00, 0x02]);
        p.extend_from_slice(&[0x05, 0x00, 0x00, 0x07, 0x03, 1, 2, 3]);
        let h = Header::parse(&p).expect("valid");
        let ext: Vec<_> = extensions(&p, &h).collect();
        assert_eq!(ext, vec![Ok((5, &[][..])), Ok((7, &[1, 2, 3][..]))]);
    }

    #[test]
    fn unknown_profile_yields_nothing() {
        let mut p = vec![0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2];
        p.extend_from_slice(&[0x12, 0x34, 0x00, 0x01, 1, 2, 3, 4]);
        let h = Header::parse(&p).expect("valid");
        assert_eq!(extensions(&p, &h).count(), 0);
    }

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(Header::parse(&[0x80; 11]), Err(ParseError::TooShort));
        assert_eq!(Header::parse(&[0x40; 12]), Err(ParseError::BadVersion));
        // CSRC count 15 with no CSRCs.
        assert_eq!(Header::parse(&[0x8f; 12]), Err(ParseError::TooShort));
        // X bit with no room for the extension word.
        assert_eq!(Header::parse(&[0x90; 12]), Err(ParseError::BadExtension));
        // P bit with a zero and an oversized count.
        let mut p = [0u8; 13];
        p[0] = 0xa0;
        assert_eq!(Header::parse(&p), Err(ParseError::BadPadding));
        p[12] = 2;
        assert_eq!(Header::parse(&p), Err(ParseError::BadPadding));
        p[12] = 1;
        assert_eq!(Header::parse(&p).map(|h| h.padding_len), Ok(1));
    }

    #[test]
    fn payload_never_panics_on_a_foreign_slice() {
        let p = sample();
        let h = Header::parse(&p).expect("valid");
        assert_eq!(h.payload(&p[..5]), b"");
        assert_eq!(
            extensions(&p[..5], &h).collect::<Vec<_>>(),
            vec![Err(ParseError::BadExtension)]
        );
    }

    #[test]
    fn setters_rewrite_in_place() {
        let mut p = sample();
        set_ssrc(&mut p, 7).expect("long enough");
        set_sequence(&mut p, 8).expect("long enough");
        set_timestamp(&mut p, 9).expect("long enough");
        set_payload_type(&mut p, 0xff).expect("long enough");
        let h = Header::parse(&p).expect("still valid");
        assert_eq!(
            (h.ssrc, h.sequence, h.timestamp, h.payload_type),
            (7, 8, 9, 0x7f)
        );
        assert!(h.marker, "marker kept");
        set_payload_type(&mut p, 96).expect("long enough");
        assert_eq!(p[1], 0x80 | 96);
        let mut short = [0u8; 11];
        assert_eq!(set_ssrc(&mut short, 1), Err(ParseError::TooShort));
        assert_eq!(set_sequence(&mut short, 1), Err(ParseError::TooShort));
        assert_eq!(set_timestamp(&mut short, 1), Err(ParseError::TooShort));
        assert_eq!(set_payload_type(&mut short, 1), Err(ParseError::TooShort));
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn parse_all(b: &[u8]) -> Result<usize, ParseError> {
        let h = Header::parse(b)?;
        let _ = h.payload(b);
        extensions(b, &h).try_fold(0, |n, e| e.map(|_| n + 1))
    }

    // tests/corpora/regressions.txt: inputs that panicked webrtc-rs rtp 0.17.2.
    #[test]
    fn regression_extension_longer_than_packet() {
        let b = hex("900100020000f90028345678bede0003080808080808001d0808070008");
        assert_eq!(parse_all(&b), Err(ParseError::BadExtension));
    }

    #[test]
    fn regression_one_byte_element_overruns() {
        // Version 0: rejected before the extension is looked at.
        let b = hex("304330435465bede00017865bede000190304330");
        assert_eq!(parse_all(&b), Err(ParseError::BadVersion));
        // The same bytes as version 2 reach the element that overruns.
        let mut b2 = b.clone();
        b2[0] = 0x90;
        assert_eq!(parse_all(&b2), Err(ParseError::BadExtension));
    }

    #[test]
    fn regression_two_byte_element_overruns() {
        let b = hex("1001610161646908080869081000000108086908");
        assert_eq!(parse_all(&b), Err(ParseError::BadVersion));
        let mut b2 = b.clone();
        b2[0] = 0x90;
        assert_eq!(parse_all(&b2), Err(ParseError::BadExtension));
    }
}

#[cfg(test)]
mod remap_tests {
    use super::*;

    #[test]
    fn ids_are_rewritten_and_unmapped_elements_become_padding() {
        // Header with X, one-byte extension of 3 words: id 1 (2 bytes), id 3 (1 byte),
        // id 5 (3 bytes), then padding.
        let mut b = vec![0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9];
        b.extend_from_slice(&[0xBE, 0xDE, 0, 3]);
        b.extend_from_slice(&[0x11, 0xAA, 0xBB, 0x30, 0xCC, 0x52, 1, 2, 3, 0, 0, 0]);
        b.extend_from_slice(b"payload");
        let h = Header::parse(&b).expect("parse");
        let mut map = [0u8; 16];
        map[1] = 4; // 1 → 4
        map[5] = 2; // 5 → 2; 3 is dropped
        remap_extensions(&mut b, &h, &map).expect("remap");
        let h = Header::parse(&b).expect("still parses");
        let got: Vec<(u8, Vec<u8>)> = {
            let mut it = extensions(&b, &h);
            let mut v = Vec::new();
            while let Some(Ok((id, r))) = it.next_range() {
                v.push((id, b[r].to_vec()));
            }
            v
        };
        assert_eq!(got, vec![(4, vec![0xAA, 0xBB]), (2, vec![1, 2, 3])]);
        assert_eq!(h.payload(&b), b"payload", "the payload did not move");
    }

    #[test]
    fn two_byte_and_absent_extensions_are_left_alone() {
        let mut plain = vec![0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9, 1, 2];
        let h = Header::parse(&plain).expect("parse");
        let before = plain.clone();
        remap_extensions(&mut plain, &h, &[0; 16]).expect("ok");
        assert_eq!(plain, before);
        let mut two = vec![
            0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9, 0x10, 0x00, 0, 1, 7, 1, 9, 0,
        ];
        let h = Header::parse(&two).expect("parse");
        let before = two.clone();
        remap_extensions(&mut two, &h, &[0; 16]).expect("ok");
        assert_eq!(two, before);
    }
}

#[cfg(test)]
mod put_extension_tests {
    use super::*;

    fn elements(b: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let h = Header::parse(b).expect("parses");
        let mut it = extensions(b, &h);
        let mut v = Vec::new();
        while let Some(r) = it.next_range() {
            let (id, range) = r.expect("element");
            v.push((id, b[range].to_vec()));
        }
        v
    }

    fn packet(ext: Option<&[u8]>) -> Vec<u8> {
        let mut b = vec![0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9];
        if let Some(e) = ext {
            b[0] |= 0x10;
            b.extend_from_slice(&[0xBE, 0xDE, 0, (e.len() / 4) as u8]);
            b.extend_from_slice(e);
        }
        b.extend_from_slice(b"payload");
        b
    }

    fn put(mut b: Vec<u8>, id: u8, v: [u8; 2]) -> Vec<u8> {
        let len = b.len();
        b.resize(len + 16, 0xEE);
        let (n, at) = put_extension(&mut b, len, id, v).expect("put");
        assert_eq!(b[at..at + 2], v, "the value is where it says");
        b.truncate(n);
        b
    }

    #[test]
    fn overwrites_an_element_with_the_id() {
        let b = put(packet(Some(&[0x31, 9, 9, 0x10, 7, 0, 0, 0])), 3, [1, 2]);
        assert_eq!(b.len(), packet(Some(&[0; 8])).len());
        assert_eq!(elements(&b), [(3, vec![1, 2]), (1, vec![7])]);
        assert!(b.ends_with(b"payload"));
    }

    #[test]
    fn reuses_padding_that_a_dropped_element_left() {
        // What remap_extensions leaves of a dropped 2-byte element: 3 zeros.
        let b = put(packet(Some(&[0x10, 7, 0, 0, 0, 0x20, 5, 0])), 3, [1, 2]);
        assert_eq!(b.len(), packet(Some(&[0; 8])).len());
        assert_eq!(elements(&b), [(1, vec![7]), (3, vec![1, 2]), (2, vec![5])]);
    }

    #[test]
    fn grows_a_full_block_by_one_word() {
        let b = put(packet(Some(&[0x10, 7, 0x20, 5])), 3, [1, 2]);
        assert_eq!(b.len(), packet(Some(&[0; 8])).len());
        assert_eq!(elements(&b), [(1, vec![7]), (2, vec![5]), (3, vec![1, 2])]);
        assert!(b.ends_with(b"payload"));
    }

    #[test]
    fn adds_a_block_to_a_packet_without_one() {
        let mut b = put(packet(None), 5, [0xAB, 0xCD]);
        assert_eq!(b.len(), packet(None).len() + 8);
        assert_eq!(elements(&b), [(5, vec![0xAB, 0xCD])]);
        assert_eq!(Header::parse(&b).expect("parses").payload(&b), b"payload");
        // With RTP padding and a CSRC, the payload and padding move together.
        b = vec![0xA1, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9, 1, 2, 3, 4];
        b.extend_from_slice(b"xy\x00\x02");
        let b = put(b, 5, [1, 1]);
        let h = Header::parse(&b).expect("parses");
        assert_eq!(h.csrcs(&b).collect::<Vec<_>>(), [0x0102_0304]);
        assert_eq!(h.payload(&b), b"xy");
    }

    #[test]
    fn refuses_without_room_or_with_two_byte_headers() {
        let mut b = packet(None);
        let len = b.len();
        assert_eq!(
            put_extension(&mut b, len, 5, [0, 0]),
            Err(ParseError::TooShort)
        );
        assert_eq!(b, packet(None), "unchanged");
        let mut two = packet(None);
        two[0] |= 0x10;
        two.splice(12..12, [0x10, 0x00, 0, 1, 5, 2, 1, 2]);
        let len = two.len();
        two.resize(len + 8, 0);
        assert_eq!(
            put_extension(&mut two, len, 5, [0, 0]),
            Err(ParseError::BadExtension)
        );
        assert!(put_extension(&mut packet(None), 3, 0, [0, 0]).is_err());
    }
}

//! AV1 (the AOM "RTP Payload Format for AV1"): OBU elements out of each packet's
//! aggregation, fragments joined, and each temporal unit written in the low-overhead
//! bitstream format IVF carries (AV1 §5.2): a temporal delimiter, then every OBU with its
//! size field, which RTP leaves out.

use super::ivf::Size;
use super::Frame;

/// OBU types dropped: the temporal delimiter (written anew per temporal unit), tile lists
/// and padding.
const DROPPED: [u8; 3] = [2, 8, 15];

/// A temporal delimiter OBU with its (empty) size.
const TEMPORAL_DELIMITER: [u8; 2] = [0x12, 0x00];

/// One temporal unit: its packets' OBU elements (the first continuing the previous packet's
/// last when Z is set), each OBU written with its size.
pub fn assemble(f: &Frame<'_>, out: &mut Vec<u8>, _size: &mut Size) -> bool {
    if !f.marker {
        return false;
    }
    out.extend_from_slice(&TEMPORAL_DELIMITER);
    let mut obu: Vec<u8> = Vec::new();
    let mut continues = false;
    for p in &f.payloads {
        let Some(&agg) = p.first() else {
            return false;
        };
        let (z, y, w) = (agg & 0x80 != 0, agg & 0x40 != 0, (agg >> 4) & 0x03);
        if z != continues {
            return false;
        }
        let mut at = 1;
        let mut k = 0u8;
        while at < p.len() && (w == 0 || k < w) {
            let len = if w != 0 && k + 1 == w {
                p.len() - at
            } else {
                match leb128(p, &mut at) {
                    Some(n) => n,
                    None => return false,
                }
            };
            let Some(element) = at.checked_add(len).and_then(|end| p.get(at..end)) else {
                return false;
            };
            // Any element but a continuation starts a new OBU: the one before is whole.
            let continuation = k == 0 && z;
            if !continuation {
                if !obu.is_empty() && !write(&obu, out) {
                    return false;
                }
                obu.clear();
            }
            obu.extend_from_slice(element);
            at += len;
            k = k.saturating_add(1);
        }
        continues = y;
    }
    if continues || (!obu.is_empty() && !write(&obu, out)) {
        return false;
    }
    out.len() > TEMPORAL_DELIMITER.len()
}

/// One whole OBU as RTP carries it (with or without its size field) into `out` with one.
fn write(obu: &[u8], out: &mut Vec<u8>) -> bool {
    let Some(&h) = obu.first() else {
        return false;
    };
    if h & 0x80 != 0 {
        return false; // the forbidden bit
    }
    let header = if h & 0x04 != 0 { 2 } else { 1 };
    let Some(head) = obu.get(..header) else {
        return false;
    };
    let mut at = header;
    let payload = if h & 0x02 != 0 {
        let Some(n) = leb128(obu, &mut at) else {
            return false;
        };
        match at.checked_add(n).and_then(|end| obu.get(at..end)) {
            Some(p) => p,
            None => return false,
        }
    } else {
        obu.get(header..).unwrap_or_default()
    };
    if DROPPED.contains(&((h >> 3) & 0x0f)) {
        return true;
    }
    out.push(h | 0x02);
    out.extend_from_slice(&head[1..]);
    put_leb128(out, payload.len());
    out.extend_from_slice(payload);
    true
}

/// An unsigned LEB128 at `p[*at..]` (AV1 §4.10.5: at most 8 bytes), moving `at` past it.
pub fn leb128(p: &[u8], at: &mut usize) -> Option<usize> {
    let mut v: u64 = 0;
    for i in 0..8 {
        let &b = p.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return usize::try_from(v).ok();
        }
    }
    None
}

fn put_leb128(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::rtp;
    use super::super::{file, Container};
    use super::*;
    use crate::command::VideoCodec;

    #[test]
    fn obus_get_their_sizes_and_fragments_are_joined() {
        // Sequence header (type 1: 0x08) of 2 bytes, then a frame (type 6: 0x30) whose
        // 200 bytes are split over two packets, both without size fields.
        let frame: Vec<u8> = (0..200u8).collect();
        let mut p1 = vec![0x48u8]; // Y, W = 0, N
        p1.extend_from_slice(&[3, 0x08, 0xa0, 0xa1]);
        p1.push(101); // 101 bytes: header + 100 of the frame
        p1.push(0x30);
        p1.extend_from_slice(&frame[..100]);
        let mut p2 = vec![0x90u8]; // Z, W = 1
        p2.extend_from_slice(&frame[100..]);
        // A temporal delimiter the sender should have left out, in a unit of its own.
        let packets = vec![
            rtp(1, 0, false, &p1),
            rtp(2, 0, true, &p2),
            rtp(3, 3000, true, &[0x10, 0x10]),
        ];
        let f = file(VideoCodec::Av1(45), &packets).expect("file");
        assert_eq!(f.container, Container::Ivf);
        assert_eq!(
            (f.frames, f.skipped),
            (1, 1),
            "a unit of only a delimiter is empty"
        );
        let unit = &f.bytes[44..];
        let mut want = vec![0x12, 0x00, 0x0a, 2, 0xa0, 0xa1, 0x32, 0xc8, 0x01];
        want.extend_from_slice(&frame);
        assert_eq!(unit, &want[..]);
    }

    #[test]
    fn a_continuation_without_its_start_is_refused() {
        let packets = vec![rtp(1, 0, true, &[0x90, 1, 2, 3])];
        assert!(file(VideoCodec::Av1(45), &packets).is_err());
        let mut out = Vec::new();
        assert!(!write(&[0x80], &mut out), "forbidden bit");
        assert!(!write(&[0x32 | 0x02, 9, 1], &mut out), "size past the end");
        let mut v = Vec::new();
        put_leb128(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
        assert_eq!(leb128(&v, &mut 0), Some(300));
    }
}

//! VP9 (RFC 9628): each packet's payload descriptor removed, each spatial layer's frame
//! joined from its B to its E packet, and a picture of several layers written as one
//! superframe (VP9 bitstream spec, Annex B), as libvpx's decoder reads them.

use super::ivf::Size;
use super::Frame;

/// What one packet holds: its VP9 payload after the descriptor, its B (begins a layer
/// frame) and E (ends one) bits, and, from a scalability structure with sizes, the largest
/// layer's size.
type Read<'a> = (&'a [u8], bool, bool, Option<(u16, u16)>);

/// One packet's payload descriptor read (RFC 9628 §4.2).
pub fn payload(p: &[u8]) -> Option<Read<'_>> {
    let &b0 = p.first()?;
    let (i, pbit, l, f, b, e, v) = (
        b0 & 0x80 != 0,
        b0 & 0x40 != 0,
        b0 & 0x20 != 0,
        b0 & 0x10 != 0,
        b0 & 0x08 != 0,
        b0 & 0x04 != 0,
        b0 & 0x02 != 0,
    );
    let mut at = 1;
    if i {
        let &pid = p.get(at)?;
        at += if pid & 0x80 != 0 { 2 } else { 1 };
    }
    if l {
        at += if f { 1 } else { 2 }; // layer indices, and TL0PICIDX in non-flexible mode
    }
    if f && pbit {
        // Up to three reference differences, each with N: another follows.
        for _ in 0..3 {
            let &d = p.get(at)?;
            at += 1;
            if d & 0x01 == 0 {
                break;
            }
        }
    }
    let mut size = None;
    if v {
        let &ss = p.get(at)?;
        at += 1;
        let layers = usize::from(ss >> 5) + 1;
        if ss & 0x10 != 0 {
            for _ in 0..layers {
                let d = p.get(at..at + 4)?;
                size = Some((
                    u16::from_be_bytes([d[0], d[1]]),
                    u16::from_be_bytes([d[2], d[3]]),
                ));
                at += 4;
            }
        }
        if ss & 0x08 != 0 {
            let &groups = p.get(at)?;
            at += 1;
            for _ in 0..groups {
                let &g = p.get(at)?;
                at += 1 + usize::from((g >> 2) & 0x03);
            }
        }
    }
    Some((p.get(at..)?, b, e, size))
}

/// One picture: its layer frames, each from a B to an E packet; several as a superframe.
pub fn assemble(f: &Frame<'_>, out: &mut Vec<u8>, size: &mut Size) -> bool {
    if !f.marker {
        return false;
    }
    let mut sizes: Vec<usize> = Vec::new();
    let mut open = false;
    let mut start = 0;
    for p in &f.payloads {
        let Some((data, b, e, ss)) = payload(p) else {
            return false;
        };
        if let Some((w, h)) = ss {
            size.note(w, h);
        }
        if b {
            if open {
                return false;
            }
            open = true;
            start = out.len();
        } else if !open {
            return false;
        }
        out.extend_from_slice(data);
        if e {
            open = false;
            sizes.push(out.len() - start);
        }
    }
    if open || sizes.is_empty() {
        return false;
    }
    if sizes.len() > 1 {
        superframe_index(out, &sizes);
    }
    true
}

/// The index that ends a superframe of frames of `sizes` (at most 8 frames).
fn superframe_index(out: &mut Vec<u8>, sizes: &[usize]) {
    let max = sizes.iter().copied().max().unwrap_or(0);
    let mag = match max {
        0..=0xff => 1,
        0x100..=0xffff => 2,
        0x1_0000..=0xff_ffff => 3,
        _ => 4,
    };
    let n = sizes.len().min(8);
    let marker = 0xc0 | ((mag - 1) << 3) as u8 | (n - 1) as u8;
    out.push(marker);
    for &s in &sizes[..n] {
        out.extend_from_slice(&(s as u32).to_le_bytes()[..mag]);
    }
    out.push(marker);
}

#[cfg(test)]
mod tests {
    use super::super::tests::rtp;
    use super::super::{file, Container};
    use super::*;
    use crate::command::VideoCodec;

    #[test]
    fn descriptors_are_removed_and_the_scalability_structure_read() {
        // I (15-bit id), L (non-flexible: + TL0PICIDX), B, E, V with sizes of 2 layers and
        // a group of one picture with one reference.
        let p = [
            0xae, 0x81, 0x02, 0x00, 0x05, // I L B E V, picture id, layer byte, TL0PICIDX
            0x38, // N_S = 1 (2 layers), Y, G
            0x01, 0x40, 0x00, 0xb4, 0x02, 0x80, 0x01, 0x68, // 320x180, 640x360
            0x01, 0x04, 0x01, // one picture: R = 1, one P_DIFF
            0xaa,
        ];
        let (data, b, e, size) = payload(&p).expect("reads");
        assert_eq!((data, b, e), (&[0xaa][..], true, true));
        assert_eq!(size, Some((640, 360)));
        // Flexible mode: P L F B, the layer byte, two reference differences.
        let p = [0x78, 0x00, 0x03, 0x02, 0xbb];
        assert_eq!(payload(&p).map(|x| x.0), Some(&[0xbb][..]));
        assert_eq!(payload(&[0x80]), None);
        assert_eq!(payload(&[0x02, 0xf0, 0x00]), None, "sizes cut short");
    }

    #[test]
    fn a_picture_of_two_layers_is_one_superframe() {
        let packets = vec![
            rtp(1, 0, false, &[0x08, 1, 2]),   // layer 0 begins
            rtp(2, 0, false, &[0x04, 3]),      // and ends
            rtp(3, 0, true, &[0x0c, 4, 5, 6]), // layer 1, one packet
            rtp(4, 3000, true, &[0x0c, 7]),    // the next picture, one layer
            rtp(5, 6000, true, &[0x04, 8]),    // no B: a start is missing
        ];
        let f = file(VideoCodec::Vp9(98), &packets).expect("file");
        assert_eq!(f.container, Container::Ivf);
        assert_eq!((f.frames, f.skipped), (2, 1));
        let first = &f.bytes[44..];
        let len = u32::from_le_bytes([f.bytes[32], f.bytes[33], f.bytes[34], f.bytes[35]]);
        // 3 + 3 bytes of frames, then the index: marker, sizes 3 and 3, marker.
        assert_eq!(len, 10);
        assert_eq!(&first[..10], &[1, 2, 3, 4, 5, 6, 0xc1, 3, 3, 0xc1]);
    }
}

//! VP8 (RFC 7741): each packet's payload descriptor removed, a frame's partitions joined.

use super::ivf::Size;
use super::Frame;

/// The VP8 payload of one packet, after its payload descriptor (RFC 7741 §4.2), and the
/// descriptor's S bit with partition index 0: whether it starts a frame.
pub fn payload(p: &[u8]) -> Option<(&[u8], bool)> {
    let &b0 = p.first()?;
    let start = b0 & 0x10 != 0 && b0 & 0x07 == 0;
    let mut at = 1;
    if b0 & 0x80 != 0 {
        let &x = p.get(at)?;
        at += 1;
        if x & 0x80 != 0 {
            // Picture id: 7 bits, or 15 with the M bit.
            let &pid = p.get(at)?;
            at += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            at += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            at += 1; // TID, Y, KEYIDX
        }
    }
    Some((p.get(at..)?, start))
}

/// One frame: its packets' VP8 payloads joined, from one that starts it to one with the
/// marker. A keyframe's size goes to `size`.
pub fn assemble(f: &Frame<'_>, out: &mut Vec<u8>, size: &mut Size) -> bool {
    if !f.marker {
        return false;
    }
    for (i, p) in f.payloads.iter().enumerate() {
        let Some((data, start)) = payload(p) else {
            return false;
        };
        if (i == 0) != start {
            return false;
        }
        out.extend_from_slice(data);
    }
    // A keyframe (frame tag's P bit clear): start code 9d 01 2a, then 14-bit width and
    // height (RFC 6386 §9.1).
    if let Some(&[tag, _, _, 0x9d, 0x01, 0x2a, w0, w1, h0, h1]) = out.get(..10) {
        if tag & 0x01 == 0 {
            size.note(
                u16::from_le_bytes([w0, w1]) & 0x3fff,
                u16::from_le_bytes([h0, h1]) & 0x3fff,
            );
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::super::tests::rtp;
    use super::super::{file, Container};
    use super::*;
    use crate::command::VideoCodec;

    #[test]
    fn descriptors_of_every_shape_are_removed() {
        // No extension.
        assert_eq!(payload(&[0x10, 1, 2]), Some((&[1u8, 2][..], true)));
        // X, I with a 15-bit picture id, L, T: 5 bytes of descriptor.
        assert_eq!(
            payload(&[0x90, 0xe0, 0x81, 0x23, 7, 0x40, 9]),
            Some((&[9u8][..], true))
        );
        // A 7-bit picture id, not a start (partition 1).
        assert_eq!(payload(&[0x81, 0x80, 0x05, 9]), Some((&[9u8][..], false)));
        assert_eq!(payload(&[0x90, 0xe0, 0x81]), None, "cut short");
        assert_eq!(payload(&[]), None);
    }

    #[test]
    fn a_group_becomes_an_ivf_file_with_the_keyframes_size() {
        let key = [
            0x10, 0x50, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01, 0xaa,
        ];
        let packets = vec![
            rtp(1, 0, false, &key),
            rtp(2, 0, true, &[0x00, 0xbb, 0xcc]),
            // A frame missing its start.
            rtp(3, 3000, true, &[0x00, 0xdd]),
            rtp(4, 6000, true, &[0x10, 0x51, 0x00, 0x00, 0xee]),
        ];
        let f = file(VideoCodec::Vp8(96), &packets).expect("file");
        assert_eq!(f.container, Container::Ivf);
        assert_eq!((f.frames, f.skipped), (2, 1));
        let b = &f.bytes;
        assert_eq!(u16::from_le_bytes([b[12], b[13]]), 640);
        assert_eq!(u16::from_le_bytes([b[14], b[15]]), 480);
        // First frame: 11 bytes of the keyframe's payload and 2 of the next packet.
        assert_eq!(u32::from_le_bytes([b[32], b[33], b[34], b[35]]), 13);
        assert_eq!(&b[44..46], &[0x50, 0x02]);
        let second = 32 + 12 + 13;
        assert_eq!(
            u64::from_le_bytes(b[second + 4..second + 12].try_into().expect("8")),
            6000
        );
        assert_eq!(b.len(), second + 12 + 4);
    }
}

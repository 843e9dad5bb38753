//! Equal-size packets for segmented egress, with RTP padding (RFC 3550 §5.1).
//!
//! A `UDP_SEGMENT` message carries datagrams of one size (the last may be shorter). libwebrtc
//! cuts a video frame into packets within one byte of each other with the larger ones last
//! (`SplitAboutEqually`), so a frame of 1,041 1,042 1,042 bytes leaves as two messages.
//! Rounding each packet that does not end its frame (marker bit clear) up to a multiple of
//! `k` bytes makes such sizes equal unless they straddle a multiple of `k`: measured on
//! Chromium's VP8 (tests/gso_browser.rs), 1.69–1.78 messages per frame become 1.08 at
//! k = 8 (+0.22–0.26 % bytes) and 1.02 at k = 32 (~1 %); docs/performance.md has the CPU it
//! saves. The padding sits inside the SRTP payload, authenticated like the rest; receivers
//! strip it as they strip libwebrtc's own.

use switchyard_shared::packet::MAX_DATAGRAM;

/// Pad plaintext RTP `buf[..len]`, which goes out with a `tag`-byte SRTP tag, so the
/// datagram is a multiple of `multiple` bytes: when it does not end a frame (marker bit
/// clear), has no padding yet, and stays within [`MAX_DATAGRAM`] and `buf`. Returns the new
/// length (`len` when nothing was added). `multiple` is at most 256 (one padding count
/// byte); 0 or 1 pads nothing.
pub(super) fn equalize(buf: &mut [u8], len: usize, tag: usize, multiple: usize) -> usize {
    if !(2..=256).contains(&multiple) {
        return len;
    }
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return len;
    };
    if b1 & 0x80 != 0 || b0 & 0x20 != 0 || b0 >> 6 != 2 {
        return len;
    }
    let total = len + tag;
    let pad = (multiple - total % multiple) % multiple;
    if pad == 0 || total + pad > MAX_DATAGRAM || len + pad + tag > buf.len() {
        return len;
    }
    let Some(p) = buf.get_mut(len..len + pad) else {
        return len;
    };
    p.fill(0);
    p[pad - 1] = pad as u8;
    buf[0] |= 0x20;
    len + pad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(len: usize, marker: bool) -> Vec<u8> {
        let mut b = vec![0u8; 1536];
        b[0] = 0x80;
        b[1] = 96 | if marker { 0x80 } else { 0 };
        for (i, x) in b[12..len].iter_mut().enumerate() {
            *x = i as u8 | 1;
        }
        b
    }

    #[test]
    fn a_frames_packets_round_to_one_size() {
        // libwebrtc's split of a 3,125-byte frame: 1,041 1,042 1,042 (+ a 16-byte tag).
        let sizes: Vec<usize> = [(1041, false), (1042, false), (1042, true)]
            .iter()
            .map(|&(n, m)| {
                let mut b = rtp(n, m);
                equalize(&mut b, n, 16, 16) + 16
            })
            .collect();
        assert_eq!(
            sizes,
            [1072, 1072, 1058],
            "two equal, the frame's end shorter"
        );
    }

    #[test]
    fn padding_is_rfc3550() {
        let mut b = rtp(100, false);
        let n = equalize(&mut b, 100, 10, 8);
        assert_eq!((n + 10) % 8, 0);
        let pad = n - 100;
        assert!(pad > 0);
        assert_eq!(b[0] & 0x20, 0x20, "P bit");
        assert_eq!(usize::from(b[n - 1]), pad, "count in the last byte");
        assert!(b[100..n - 1].iter().all(|&x| x == 0));
        assert!(b[12..100].iter().all(|&x| x & 1 == 1), "payload untouched");
    }

    #[test]
    fn leaves_alone_what_it_must() {
        for (mut b, len, why) in [
            (rtp(1000, true), 1000, "frame end"),
            (rtp(1001, false), 1001, "already a multiple with the tag"),
            (rtp(1490, false), 1490, "would pass the MTU"),
        ] {
            let tag = if why.starts_with("already") { 7 } else { 16 };
            assert_eq!(equalize(&mut b, len, tag, 16), len, "{why}");
        }
        let mut padded = rtp(500, false);
        padded[0] |= 0x20;
        assert_eq!(equalize(&mut padded, 500, 16, 16), 500, "has padding");
        let mut b = rtp(500, false);
        assert_eq!(equalize(&mut b, 500, 16, 0), 500, "off");
        assert_eq!(equalize(&mut b, 500, 16, 1), 500);
        assert_eq!(equalize(&mut [0x80], 1, 16, 16), 1, "too short to be RTP");
    }
}

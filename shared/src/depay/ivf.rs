//! The IVF container (libvpx's, read by FFmpeg, GStreamer and dav1d): a 32-byte header,
//! then each frame as a 12-byte header (size, timestamp) and its bytes. Timestamps are RTP
//! ticks since the first frame, on a 1/90,000 time base.

/// A frame size read from the bitstream (a keyframe's header), for the file header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Size {
    pub width: u16,
    pub height: u16,
}

impl Size {
    /// Keep the first size found.
    pub fn note(&mut self, width: u16, height: u16) {
        if self.width == 0 && self.height == 0 {
            *self = Size { width, height };
        }
    }
}

/// The file header for `frames` frames of `fourcc` (`VP80`, `VP90`, `AV01`).
pub fn header(fourcc: [u8; 4], size: Size, frames: u32) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[0..4].copy_from_slice(b"DKIF");
    // Version 0, then the header's length.
    h[6..8].copy_from_slice(&32u16.to_le_bytes());
    h[8..12].copy_from_slice(&fourcc);
    h[12..14].copy_from_slice(&size.width.to_le_bytes());
    h[14..16].copy_from_slice(&size.height.to_le_bytes());
    // Time base 1/90,000: the denominator first.
    h[16..20].copy_from_slice(&90_000u32.to_le_bytes());
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h[24..28].copy_from_slice(&frames.to_le_bytes());
    h
}

/// Append one frame at `pts` (90 kHz ticks) to `out`.
pub fn frame(out: &mut Vec<u8>, bytes: &[u8], pts: u32) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&u64::from(pts).to_le_bytes());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_as_libvpx_writes_it() {
        let h = header(
            *b"VP80",
            Size {
                width: 640,
                height: 480,
            },
            3,
        );
        assert_eq!(&h[..4], b"DKIF");
        assert_eq!(u16::from_le_bytes([h[4], h[5]]), 0);
        assert_eq!(u16::from_le_bytes([h[6], h[7]]), 32);
        assert_eq!(&h[8..12], b"VP80");
        assert_eq!(u16::from_le_bytes([h[12], h[13]]), 640);
        assert_eq!(u16::from_le_bytes([h[14], h[15]]), 480);
        assert_eq!(u32::from_le_bytes([h[16], h[17], h[18], h[19]]), 90_000);
        assert_eq!(u32::from_le_bytes([h[20], h[21], h[22], h[23]]), 1);
        assert_eq!(u32::from_le_bytes([h[24], h[25], h[26], h[27]]), 3);
        let mut out = Vec::new();
        frame(&mut out, b"abc", 3000);
        assert_eq!(out.len(), 15);
        assert_eq!(&out[..4], &3u32.to_le_bytes());
        assert_eq!(&out[4..12], &3000u64.to_le_bytes());
    }
}

//! Just enough RTP/RTCP header parsing for SRTP: where the header ends and which SSRC and
//! sequence number it carries. Kept here (not in `packet`) so SRTP has no dependency on the
//! packet views; every read is bounds-checked because the input comes off the wire.

use super::Error;

/// Fixed RTP header: V/P/X/CC, M/PT, sequence number, timestamp, SSRC.
const RTP_FIXED: usize = 12;
/// RTCP header SRTCP authenticates in the clear: V/P/RC, PT, length, sender SSRC.
pub(crate) const RTCP_HEADER: usize = 8;

/// What SRTP needs from an RTP header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rtp {
    /// Bytes of header (fixed part, CSRCs and extension): the part that stays in the clear.
    pub len: usize,
    pub seq: u16,
    pub ssrc: u32,
}

/// Parses the RTP header at the start of `pkt`. The header may fill `pkt` exactly (an empty
/// payload is valid).
pub(crate) fn rtp(pkt: &[u8]) -> Result<Rtp, Error> {
    let fixed: &[u8; RTP_FIXED] = pkt
        .get(..RTP_FIXED)
        .and_then(|s| s.try_into().ok())
        .ok_or(Error::TooShort)?;
    if fixed[0] >> 6 != 2 {
        return Err(Error::Malformed);
    }
    let csrcs = usize::from(fixed[0] & 0x0f);
    let mut len = RTP_FIXED + 4 * csrcs;
    if fixed[0] & 0x10 != 0 {
        // Extension: 16-bit profile, 16-bit length in 32-bit words, then the words.
        let words = pkt.get(len + 2..len + 4).ok_or(Error::Malformed)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    if len > pkt.len() {
        return Err(Error::Malformed);
    }
    Ok(Rtp {
        len,
        seq: u16::from_be_bytes([fixed[2], fixed[3]]),
        ssrc: u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]),
    })
}

/// Checks the RTCP header at the start of `pkt` and returns the sender SSRC.
pub(crate) fn rtcp_ssrc(pkt: &[u8]) -> Result<u32, Error> {
    let hdr: &[u8; RTCP_HEADER] = pkt
        .get(..RTCP_HEADER)
        .and_then(|s| s.try_into().ok())
        .ok_or(Error::TooShort)?;
    if hdr[0] >> 6 != 2 {
        return Err(Error::Malformed);
    }
    Ok(u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_header() {
        let mut p = [0u8; 20];
        p[0] = 0x80;
        p[2..4].copy_from_slice(&0x1234u16.to_be_bytes());
        p[8..12].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        let h = rtp(&p).expect("valid");
        assert_eq!((h.len, h.seq, h.ssrc), (12, 0x1234, 0xdead_beef));
        assert_eq!(rtp(&p[..12]).expect("header only").len, 12);
        assert_eq!(rtp(&p[..11]), Err(Error::TooShort));
    }

    #[test]
    fn csrcs_and_extension() {
        let mut p = [0u8; 40];
        p[0] = 0x80 | 0x10 | 2; // X, CC=2
        p[20..24].copy_from_slice(&[0xbe, 0xde, 0, 2]); // 2 words of extension
        assert_eq!(rtp(&p).expect("valid").len, 12 + 8 + 4 + 8);
        assert_eq!(rtp(&p[..31]), Err(Error::Malformed));
        assert_eq!(rtp(&p[..23]), Err(Error::Malformed));
        p[0] = 0x40;
        assert_eq!(rtp(&p), Err(Error::Malformed));
    }

    #[test]
    fn rtcp() {
        let p = [0x81, 200, 0, 6, 1, 2, 3, 4];
        assert_eq!(rtcp_ssrc(&p), Ok(0x0102_0304));
        assert_eq!(rtcp_ssrc(&p[..7]), Err(Error::TooShort));
        assert_eq!(rtcp_ssrc(&[0; 8]), Err(Error::Malformed));
    }
}

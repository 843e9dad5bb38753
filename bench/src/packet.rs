//! What the bench puts on the wire: a plain 12-byte RTP header and a payload that carries
//! who sent it, its publisher sequence and its send time.
//!
//! Payload layout (big endian), then filler up to the datagram size:
//! `[magic "SWYB" u32][publisher index u32][publisher sequence u64][send time u64 ns]`.
//! The publisher sequence, not the RTP sequence, drives loss accounting: the node rewrites
//! RTP sequence numbers per subscriber, but it forwards the payload untouched.

/// "SWYB": marks a bench payload, so stray or mangled datagrams are told apart.
pub const MAGIC: u32 = u32::from_be_bytes(*b"SWYB");
/// Bytes of the fixed RTP header the bench writes (no CSRC, no extension).
pub const RTP_HEADER: usize = 12;
/// Bytes of the bench payload before the filler.
pub const PAYLOAD_HEADER: usize = 24;
/// Dynamic payload type the bench sends (video-like).
pub const PAYLOAD_TYPE: u8 = 96;

/// The fields a bench payload carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payload {
    pub publisher: u32,
    pub sequence: u64,
    pub send_ns: u64,
}

/// Why a received datagram is not a bench packet. Counted, never fatal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("shorter than its headers")]
    Truncated,
    #[error("not RTP version 2")]
    Version,
    #[error("payload magic is not SWYB")]
    Magic,
}

/// The header fields a receiver checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpInfo {
    pub ssrc: u32,
    pub sequence: u16,
    pub marker: bool,
    /// Offset of the payload (after CSRCs and any header extension the node added).
    pub payload_offset: usize,
}

/// Writes a 12-byte RTP header at the start of `buf` (which must hold [`RTP_HEADER`] bytes).
pub fn write_rtp_header(buf: &mut [u8], seq: u16, timestamp: u32, ssrc: u32, marker: bool) {
    buf[0] = 0x80; // V=2, no padding, no extension, no CSRC
    buf[1] = PAYLOAD_TYPE | if marker { 0x80 } else { 0 };
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&timestamp.to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
}

/// RFC 7983/5761 demultiplexing: whether a datagram is RTP (not STUN, DTLS or RTCP, which
/// share the port).
pub fn is_rtp(pkt: &[u8]) -> bool {
    matches!(pkt.first(), Some(128..=191)) && !matches!(pkt.get(1), Some(192..=223))
}

/// Reads the RTP header of a received (already decrypted) packet.
pub fn parse_rtp(pkt: &[u8]) -> Result<RtpInfo, ParseError> {
    let head = pkt.get(..RTP_HEADER).ok_or(ParseError::Truncated)?;
    if head[0] >> 6 != 2 {
        return Err(ParseError::Version);
    }
    let csrc = usize::from(head[0] & 0x0f);
    let mut off = RTP_HEADER + 4 * csrc;
    if head[0] & 0x10 != 0 {
        let ext = pkt.get(off..off + 4).ok_or(ParseError::Truncated)?;
        off += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    }
    if off > pkt.len() {
        return Err(ParseError::Truncated);
    }
    Ok(RtpInfo {
        ssrc: u32::from_be_bytes([head[8], head[9], head[10], head[11]]),
        sequence: u16::from_be_bytes([head[2], head[3]]),
        marker: head[1] & 0x80 != 0,
        payload_offset: off,
    })
}

impl Payload {
    /// Writes the payload header into `buf` (at least [`PAYLOAD_HEADER`] bytes) and fills
    /// the rest with a constant pattern.
    pub fn encode(&self, buf: &mut [u8]) {
        buf[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        buf[4..8].copy_from_slice(&self.publisher.to_be_bytes());
        buf[8..16].copy_from_slice(&self.sequence.to_be_bytes());
        buf[16..24].copy_from_slice(&self.send_ns.to_be_bytes());
        buf[PAYLOAD_HEADER..].fill(0xa5);
    }

    /// Reads a payload header; the filler is not checked (SRTP already authenticated it).
    pub fn decode(buf: &[u8]) -> Result<Payload, ParseError> {
        let b = buf.get(..PAYLOAD_HEADER).ok_or(ParseError::Truncated)?;
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| (u64::from(u32_at(i)) << 32) | u64::from(u32_at(i + 4));
        if u32_at(0) != MAGIC {
            return Err(ParseError::Magic);
        }
        Ok(Payload {
            publisher: u32_at(4),
            sequence: u64_at(8),
            send_ns: u64_at(16),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip() {
        let p = Payload {
            publisher: 7,
            sequence: 0x0102_0304_0506_0708,
            send_ns: u64::MAX - 3,
        };
        let mut buf = [0u8; 64];
        p.encode(&mut buf);
        assert_eq!(&buf[..4], b"SWYB");
        assert_eq!(buf[63], 0xa5);
        assert_eq!(Payload::decode(&buf), Ok(p));
    }

    #[test]
    fn payload_errors() {
        assert_eq!(Payload::decode(&[0u8; 10]), Err(ParseError::Truncated));
        assert_eq!(Payload::decode(&[0u8; 24]), Err(ParseError::Magic));
    }

    #[test]
    fn rtp_header_round_trip() {
        let mut buf = [0u8; 40];
        write_rtp_header(&mut buf, 65535, 90_000, 0xdead_beef, true);
        let info = parse_rtp(&buf).expect("valid header");
        assert_eq!(
            info,
            RtpInfo {
                ssrc: 0xdead_beef,
                sequence: 65535,
                marker: true,
                payload_offset: 12
            }
        );
        assert_eq!(buf[1] & 0x7f, PAYLOAD_TYPE);
    }

    #[test]
    fn rtp_skips_csrc_and_extension() {
        let mut buf = [0u8; 40];
        write_rtp_header(&mut buf, 1, 2, 3, false);
        buf[0] = 0x80 | 0x10 | 1; // X=1, one CSRC
        buf[16..20].copy_from_slice(&[0xbe, 0xde, 0, 1]); // one-byte ext, 1 word
        assert_eq!(
            parse_rtp(&buf).expect("valid").payload_offset,
            12 + 4 + 4 + 4
        );
        assert_eq!(parse_rtp(&buf[..18]), Err(ParseError::Truncated));
        buf[0] = 0x40;
        assert_eq!(parse_rtp(&buf), Err(ParseError::Version));
    }
}

//! Zero-copy views over the packets that share a media port, and the RFC 7983 demultiplexer.
//!
//! Security contract: everything here reads bytes straight off the network. Every function
//! returns an error on any input it cannot read, never panics, and never reads past the slice.
//! Views borrow the datagram; the caller owns (and reuses) the buffers, and the writers fill
//! caller-provided slices. (The webrtc-rs `rtp`/`rtcp` parsers panic on some malformed inputs;
//! see `tests/corpora/regressions.txt`. They never see untrusted bytes in this project.)

mod crc32;
pub mod rtcp;
pub mod rtp;
pub mod stun;
pub mod twcc;

/// Largest datagram a node accepts on its media and relay sockets (the Ethernet MTU); longer
/// ones are dropped and counted. One value for the I/O engines and the sans-IO engine.
pub const MAX_DATAGRAM: usize = 1500;

/// What a datagram on a media port is, by its first byte (RFC 7983 §7) and, for RTP/RTCP,
/// its second byte (RFC 5761 §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Stun,
    Dtls,
    Rtp,
    Rtcp,
    /// ZRTP, TURN channel data, or anything else: dropped.
    Unknown,
}

/// Classify a datagram. Never panics; an empty or one-byte datagram is `Unknown`.
///
/// Only the first two bytes (and, for STUN, the length) are looked at: the matching parser
/// does the real validation.
pub fn demux(b: &[u8]) -> Kind {
    let Some(&first) = b.first() else {
        return Kind::Unknown;
    };
    match first {
        // A STUN message is at least its 20-byte header.
        0..=3 if b.len() >= stun::HEADER_LEN => Kind::Stun,
        20..=63 => Kind::Dtls,
        128..=191 => match b.get(1) {
            // RFC 5761 §4: RTCP packet types 192..=223 look like RTP payload types 64..=95
            // with the marker bit set; RTP sessions must not use those payload types.
            Some(192..=223) => Kind::Rtcp,
            Some(_) => Kind::Rtp,
            None => Kind::Unknown,
        },
        _ => Kind::Unknown,
    }
}

/// Why a packet view or writer refused its input. Small and `Copy`: it is a drop reason on
/// the hot path, counted in metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The slice ends before a fixed-size part (or, for writers, the output is too small).
    #[error("packet too short")]
    TooShort,
    /// RTP/RTCP version is not 2.
    #[error("bad version")]
    BadVersion,
    /// A length field does not match the slice (RTCP length word, STUN message length).
    #[error("length field does not match the packet")]
    BadLength,
    /// The P bit is set but the padding count is zero or larger than the packet.
    #[error("bad padding")]
    BadPadding,
    /// An RTP header extension (or one of its elements) runs past the packet.
    #[error("bad header extension")]
    BadExtension,
    /// A count (report blocks, REMB SSRCs, FCI entries) does not fit the packet, or a writer
    /// was given more items than the format can carry (or none where one is required).
    #[error("count does not fit the packet")]
    BadCount,
    /// Not the packet type this function handles (STUN top bits, SR rewrite on a non-SR).
    #[error("wrong packet type")]
    BadType,
    /// STUN magic cookie missing.
    #[error("bad STUN magic cookie")]
    BadMagic,
    /// A STUN attribute runs past the message.
    #[error("bad STUN attribute")]
    BadAttribute,
}

/// Big-endian readers that return `None` instead of panicking; shared by the views.
pub(crate) fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

pub(crate) fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

pub(crate) fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(be32(b, at)?) << 32 | u64::from(be32(b, at.checked_add(4)?)?))
}

/// Writes `bytes` at `at`, or `TooShort` if `out` cannot hold them.
pub(crate) fn put(out: &mut [u8], at: usize, bytes: &[u8]) -> Result<(), ParseError> {
    let end = at.checked_add(bytes.len()).ok_or(ParseError::TooShort)?;
    out.get_mut(at..end)
        .ok_or(ParseError::TooShort)?
        .copy_from_slice(bytes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demux_by_first_byte() {
        assert_eq!(demux(&[]), Kind::Unknown);
        assert_eq!(demux(&[0x80]), Kind::Unknown);
        assert_eq!(demux(&[0u8; 20]), Kind::Stun);
        assert_eq!(demux(&[1u8; 19]), Kind::Unknown, "STUN needs its header");
        assert_eq!(demux(&[22, 0xfe, 0xfd]), Kind::Dtls);
        assert_eq!(demux(&[20]), Kind::Dtls);
        assert_eq!(demux(&[63]), Kind::Dtls);
        assert_eq!(demux(&[64, 0]), Kind::Unknown, "TURN channel data");
        assert_eq!(demux(&[16, 0]), Kind::Unknown, "ZRTP");
        assert_eq!(demux(&[0x80, 96]), Kind::Rtp);
        assert_eq!(demux(&[0x80, 96 | 0x80]), Kind::Rtp);
        assert_eq!(demux(&[0x80, 200]), Kind::Rtcp);
        assert_eq!(demux(&[0x81, 205]), Kind::Rtcp);
        assert_eq!(demux(&[0x80, 192]), Kind::Rtcp);
        assert_eq!(demux(&[0x80, 223]), Kind::Rtcp);
        assert_eq!(demux(&[0x80, 224]), Kind::Rtp);
        assert_eq!(demux(&[0x80, 64]), Kind::Rtp, "PT 64 without marker is RTP");
        assert_eq!(demux(&[0xc0, 0]), Kind::Unknown);
    }

    #[test]
    fn readers_do_not_panic() {
        assert_eq!(be16(&[1], 0), None);
        assert_eq!(be32(&[1, 2, 3, 4], usize::MAX), None);
        assert_eq!(be64(&[0, 0, 0, 0, 0, 0, 0, 1], 0), Some(1));
        let mut out = [0u8; 2];
        assert_eq!(put(&mut out, 1, &[1, 2]), Err(ParseError::TooShort));
        assert_eq!(put(&mut out, usize::MAX, &[1]), Err(ParseError::TooShort));
    }
}

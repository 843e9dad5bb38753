//! Transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc-
//! extensions-01 §3.1): the node tells a sending browser when each of its packets arrived,
//! so the browser's bandwidth estimator (GCC) can raise its send rate.
//!
//! Only the writer is here; the node never parses this message. Encoding choices: every
//! status goes into two-bit status vector chunks (7 statuses per chunk), which are valid for
//! any mix of statuses and keep the encoder branch-free; run-length chunks would make long
//! all-received runs shorter, which matters little at one feedback per 100 ms.
//! `tests` checks the output with webrtc-rs's `rtcp` parser as an oracle.

use super::{put, ParseError};

/// Receive deltas are in units of 250 µs; the reference time in units of 64 ms.
const DELTA_US: i64 = 250;
const REFERENCE_US: i64 = 64_000;
const FIXED_LEN: usize = 20;
const SYMBOLS_PER_CHUNK: usize = 7;

/// Most packets one feedback describes (keeps it well under an MTU: 20 + 2·⌈n/7⌉ + 2n bytes).
pub const MAX_STATUSES: usize = 400;

/// Largest feedback [`write`] produces for [`MAX_STATUSES`] packets.
pub const MAX_LEN: usize =
    FIXED_LEN + 2 * MAX_STATUSES.div_ceil(SYMBOLS_PER_CHUNK) + 2 * MAX_STATUSES + 4;

/// Write a transport-cc feedback for the packets `base_seq`, `base_seq + 1`, …:
/// `arrivals[i]` is the arrival time in µs (any fixed epoch) of packet `base_seq + i`, or
/// `None` if it has not arrived. Returns the length.
///
/// `arrivals` must hold 1..=[`MAX_STATUSES`] entries and its first must be `Some` (the
/// caller starts a feedback at a received packet). Deltas beyond what 16 bits of 250 µs
/// express (±8 s) are clamped; that only happens across a long gap in which the browser's
/// estimator restarts anyway.
pub fn write(
    out: &mut [u8],
    sender_ssrc: u32,
    media_ssrc: u32,
    base_seq: u16,
    feedback_count: u8,
    arrivals: &[Option<i64>],
) -> Result<usize, ParseError> {
    let n = arrivals.len();
    let Some(Some(first)) = arrivals.first() else {
        return Err(ParseError::BadCount);
    };
    if n > MAX_STATUSES {
        return Err(ParseError::BadCount);
    }
    // 24-bit signed reference time; arrivals are never negative here.
    let reference = first.div_euclid(REFERENCE_US) & 0x7f_ffff;
    let mut prev = reference * REFERENCE_US;

    // Symbols: 0 not received, 1 small delta (1 byte), 2 large or negative (2 bytes).
    let chunks = n.div_ceil(SYMBOLS_PER_CHUNK);
    let mut pos = FIXED_LEN + 2 * chunks;
    if out.len() < pos {
        return Err(ParseError::TooShort);
    }
    for c in 0..chunks {
        let mut chunk: u16 = 0b11 << 14; // T=1 (status vector), S=1 (two-bit symbols)
        for k in 0..SYMBOLS_PER_CHUNK {
            let symbol = match arrivals.get(c * SYMBOLS_PER_CHUNK + k) {
                Some(Some(at)) => {
                    let units = (at - prev).div_euclid(DELTA_US);
                    // Advance by what the delta encodes, not by the true time, so rounding
                    // does not accumulate.
                    let (symbol, units) = if (0..=255).contains(&units) {
                        put(out, pos, &[units as u8])?;
                        pos += 1;
                        (1, units)
                    } else {
                        let units = units.clamp(i64::from(i16::MIN), i64::from(i16::MAX));
                        put(out, pos, &(units as i16).to_be_bytes())?;
                        pos += 2;
                        (2, units)
                    };
                    prev += units * DELTA_US;
                    symbol
                }
                // Not received, or padding past the last status (also "not received").
                _ => 0,
            };
            chunk |= symbol << (12 - 2 * k);
        }
        put(out, FIXED_LEN + 2 * c, &chunk.to_be_bytes())?;
    }
    let padding = (4 - pos % 4) % 4;
    if padding > 0 {
        // RTCP padding (RFC 3550 §6.4.1): zeros, the last byte is the count, P bit set.
        for i in 0..padding {
            let b = if i + 1 == padding { padding as u8 } else { 0 };
            put(out, pos + i, &[b])?;
        }
    }
    let len = pos + padding;
    let words = u16::try_from(len / 4 - 1).map_err(|_| ParseError::BadCount)?;
    let p = if padding > 0 { 0x20 } else { 0 };
    let r = reference as u32;
    put(out, 0, &[0x80 | p | 15, super::rtcp::PT_RTPFB])?;
    put(out, 2, &words.to_be_bytes())?;
    put(out, 4, &sender_ssrc.to_be_bytes())?;
    put(out, 8, &media_ssrc.to_be_bytes())?;
    put(out, 12, &base_seq.to_be_bytes())?;
    put(out, 14, &(n as u16).to_be_bytes())?;
    put(
        out,
        16,
        &[(r >> 16) as u8, (r >> 8) as u8, r as u8, feedback_count],
    )?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtcp::transport_feedbacks::transport_layer_cc::{
        PacketStatusChunk, SymbolTypeTcc, TransportLayerCc,
    };
    use webrtc_util::Unmarshal;

    fn parse(b: &[u8]) -> TransportLayerCc {
        let mut buf = b;
        TransportLayerCc::unmarshal(&mut buf).expect("the oracle parses our feedback")
    }

    #[test]
    fn statuses_and_deltas_round_trip_through_the_oracle() {
        let t0 = 10 * REFERENCE_US + 1_000;
        let arrivals = [
            Some(t0),
            Some(t0 + 500),
            None,
            Some(t0 + 70_000), // large delta
            Some(t0 + 69_000), // negative delta
            None,
            None,
            Some(t0 + 71_000),
            Some(t0 + 71_250),
        ];
        let mut out = [0u8; MAX_LEN];
        let n = write(&mut out, 0x1111, 0x2222, 65_534, 7, &arrivals).expect("write");
        assert_eq!(n % 4, 0);
        let fb = parse(&out[..n]);
        assert_eq!(fb.sender_ssrc, 0x1111);
        assert_eq!(fb.media_ssrc, 0x2222);
        assert_eq!(fb.base_sequence_number, 65_534);
        assert_eq!(fb.packet_status_count, arrivals.len() as u16);
        assert_eq!(fb.fb_pkt_count, 7);
        assert_eq!(i64::from(fb.reference_time), t0 / REFERENCE_US);
        let mut symbols = Vec::new();
        for c in &fb.packet_chunks {
            let PacketStatusChunk::StatusVectorChunk(v) = c else {
                panic!("status vector chunks only")
            };
            symbols.extend(v.symbol_list.iter().copied());
        }
        let want: Vec<SymbolTypeTcc> = arrivals
            .iter()
            .enumerate()
            .map(|(i, a)| match (i, a) {
                (_, None) => SymbolTypeTcc::PacketNotReceived,
                (3 | 4, _) => SymbolTypeTcc::PacketReceivedLargeDelta,
                _ => SymbolTypeTcc::PacketReceivedSmallDelta,
            })
            .collect();
        assert_eq!(&symbols[..arrivals.len()], &want[..]);
        // Deltas (in µs in the oracle) add up to each arrival, to within 250 µs.
        let mut t = i64::from(fb.reference_time) * REFERENCE_US;
        let received: Vec<i64> = arrivals.iter().flatten().copied().collect();
        assert_eq!(fb.recv_deltas.len(), received.len());
        for (d, want) in fb.recv_deltas.iter().zip(received) {
            t += d.delta;
            assert!((t - want).abs() < DELTA_US, "{t} vs {want}");
        }
    }

    #[test]
    fn a_full_feedback_fits_and_parses() {
        let arrivals: Vec<Option<i64>> = (0..MAX_STATUSES as i64)
            .map(|i| (i % 10 != 3).then_some(5_000_000 + i * 900))
            .collect();
        let mut out = [0u8; MAX_LEN];
        let n = write(&mut out, 1, 2, 100, 0, &arrivals).expect("write");
        assert!(n <= MAX_LEN);
        let fb = parse(&out[..n]);
        assert_eq!(usize::from(fb.packet_status_count), MAX_STATUSES);
    }

    #[test]
    fn refuses_what_it_cannot_encode() {
        let mut out = [0u8; MAX_LEN];
        assert!(write(&mut out, 1, 2, 0, 0, &[]).is_err());
        assert!(write(&mut out, 1, 2, 0, 0, &[None, Some(1)]).is_err());
        let too_many = vec![Some(1); MAX_STATUSES + 1];
        assert!(write(&mut out, 1, 2, 0, 0, &too_many).is_err());
        let mut small = [0u8; 16];
        assert!(write(&mut small, 1, 2, 0, 0, &[Some(1)]).is_err());
    }
}

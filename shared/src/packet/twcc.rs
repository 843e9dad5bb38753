//! Transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc-
//! extensions-01 §3.1): the node tells a sending browser when each of its packets arrived,
//! so the browser's bandwidth estimator (GCC) can raise its send rate.
//!
//! [`write`] is the node as a receiver (feedback to a publisher); [`Feedback`] reads what a
//! viewer sends back about the packets the node sent it, for the per-viewer bandwidth
//! estimate. Writer encoding choices: every
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

/// What one packet's status says: not received, or received `delta` µs after the previous
/// received packet (the first one's delta is from the reference time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub seq: u16,
    /// Arrival time in µs on the receiver's clock (reference time + deltas so far); `None`:
    /// reported lost.
    pub arrival_us: Option<i64>,
}

/// A parsed transport-cc feedback FCI (the part after the media SSRC). Reading it allocates
/// nothing: [`Feedback::statuses`] walks the status chunks and the deltas side by side.
#[derive(Clone, Copy, Debug)]
pub struct Feedback<'a> {
    pub base_seq: u16,
    pub count: u16,
    /// Reference time in µs (24-bit signed multiples of 64 ms).
    pub reference_us: i64,
    pub feedback_count: u8,
    fci: &'a [u8],
}

impl<'a> Feedback<'a> {
    /// `fci`: the feedback after the 12-byte RTPFB header (padding already removed).
    pub fn parse(fci: &'a [u8]) -> Result<Self, ParseError> {
        let head = fci.get(..8).ok_or(ParseError::TooShort)?;
        let base_seq = u16::from_be_bytes([head[0], head[1]]);
        let count = u16::from_be_bytes([head[2], head[3]]);
        let raw = (i32::from(head[4]) << 16) | (i32::from(head[5]) << 8) | i32::from(head[6]);
        // Sign-extend the 24-bit reference time.
        let reference = (raw << 8) >> 8;
        let fb = Feedback {
            base_seq,
            count,
            reference_us: i64::from(reference) * REFERENCE_US,
            feedback_count: head[7],
            fci,
        };
        // Walk once so a malformed message is refused whole rather than half read.
        let mut it = fb.statuses();
        for s in it.by_ref() {
            s?;
        }
        Ok(fb)
    }

    /// Every packet status in sequence order; an error ends the walk.
    pub fn statuses(&self) -> Statuses<'a> {
        Statuses {
            fci: self.fci,
            chunk_at: 8,
            delta_at: None,
            left: self.count,
            seq: self.base_seq,
            in_chunk: 0,
            chunk: 0,
            time: self.reference_us,
            failed: false,
        }
    }
}

/// Iterator over a [`Feedback`]'s statuses.
#[derive(Clone, Debug)]
pub struct Statuses<'a> {
    fci: &'a [u8],
    chunk_at: usize,
    /// Where the receive deltas start: after the last chunk, found on the first pass over
    /// the chunks.
    delta_at: Option<usize>,
    left: u16,
    seq: u16,
    /// Statuses left in the current chunk.
    in_chunk: u16,
    chunk: u16,
    time: i64,
    failed: bool,
}

impl Statuses<'_> {
    /// Symbols each chunk describes and the offset of the first delta.
    fn deltas_start(fci: &[u8], count: u16) -> Result<usize, ParseError> {
        let mut at = 8;
        let mut left = count;
        while left > 0 {
            let c = fci.get(at..at + 2).ok_or(ParseError::TooShort)?;
            let chunk = u16::from_be_bytes([c[0], c[1]]);
            left = left.saturating_sub(chunk_len(chunk));
            at += 2;
        }
        Ok(at)
    }
}

/// How many statuses a chunk carries.
fn chunk_len(chunk: u16) -> u16 {
    if chunk & 0x8000 == 0 {
        chunk & 0x1fff
    } else if chunk & 0x4000 == 0 {
        14
    } else {
        7
    }
}

impl Iterator for Statuses<'_> {
    type Item = Result<Status, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 || self.failed {
            return None;
        }
        let fail = |s: &mut Self, e| {
            s.failed = true;
            Some(Err(e))
        };
        let delta_at = match self.delta_at {
            Some(at) => at,
            None => match Self::deltas_start(self.fci, self.left) {
                Ok(at) => {
                    self.delta_at = Some(at);
                    at
                }
                Err(e) => return fail(self, e),
            },
        };
        if self.in_chunk == 0 {
            let Some(c) = self.fci.get(self.chunk_at..self.chunk_at + 2) else {
                return fail(self, ParseError::TooShort);
            };
            self.chunk = u16::from_be_bytes([c[0], c[1]]);
            self.chunk_at += 2;
            self.in_chunk = chunk_len(self.chunk);
            if self.in_chunk == 0 {
                return fail(self, ParseError::BadCount);
            }
        }
        // Status vectors read left to right: the first status is the highest bits.
        let symbol = if self.chunk & 0x8000 == 0 {
            (self.chunk >> 13) & 0b11 // run length: every symbol is the same
        } else {
            let width = if self.chunk & 0x4000 == 0 { 1 } else { 2 };
            let total = 14 / width;
            let k = total - self.in_chunk; // index of this symbol in the chunk
            (self.chunk >> (14 - width * (k + 1))) & ((1 << width) - 1)
        };
        self.in_chunk -= 1;
        self.left -= 1;
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let arrival_us = match symbol {
            0 => None,
            1 => {
                let Some(&d) = self.fci.get(delta_at) else {
                    return fail(self, ParseError::TooShort);
                };
                self.delta_at = Some(delta_at + 1);
                self.time += i64::from(d) * DELTA_US;
                Some(self.time)
            }
            2 => {
                let Some(d) = self.fci.get(delta_at..delta_at + 2) else {
                    return fail(self, ParseError::TooShort);
                };
                self.delta_at = Some(delta_at + 2);
                self.time += i64::from(i16::from_be_bytes([d[0], d[1]])) * DELTA_US;
                Some(self.time)
            }
            _ => return fail(self, ParseError::BadCount),
        };
        if self.left == 0 {
            // A run-length chunk may describe more than `count`; nothing follows.
            self.in_chunk = 0;
        }
        Some(Ok(Status { seq, arrival_us }))
    }
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
    fn our_feedback_parses_back() {
        let t0 = 3 * REFERENCE_US + 750;
        let arrivals = [
            Some(t0),
            None,
            Some(t0 + 70_000),
            Some(t0 + 69_000),
            Some(t0 + 69_250),
        ];
        let mut out = [0u8; MAX_LEN];
        let n = write(&mut out, 1, 2, 65_535, 9, &arrivals).expect("write");
        let fb = crate::packet::rtcp::compound(&out[..n])
            .find_map(|p| match p {
                Ok(crate::packet::rtcp::Packet::TransportCc { fci, .. }) => Some(fci),
                _ => None,
            })
            .expect("a transport-cc message");
        let fb = Feedback::parse(fb).expect("parse");
        assert_eq!((fb.base_seq, fb.count, fb.feedback_count), (65_535, 5, 9));
        let got: Vec<Status> = fb.statuses().map(|s| s.expect("status")).collect();
        assert_eq!(got.len(), arrivals.len());
        for (i, (s, want)) in got.iter().zip(arrivals).enumerate() {
            assert_eq!(s.seq, 65_535u16.wrapping_add(i as u16));
            match (s.arrival_us, want) {
                (None, None) => {}
                (Some(a), Some(w)) => assert!((a - w).abs() < DELTA_US, "{a} vs {w}"),
                other => panic!("status {i}: {other:?}"),
            }
        }
    }

    /// Chromium's own feedback shapes: run-length and one-bit vector chunks, a negative
    /// reference time, written by the webrtc-rs oracle.
    #[test]
    fn oracle_feedback_with_run_length_and_one_bit_chunks_parses() {
        use rtcp::transport_feedbacks::transport_layer_cc::{
            RecvDelta, RunLengthChunk, StatusChunkTypeTcc, StatusVectorChunk, SymbolSizeTypeTcc,
        };
        use webrtc_util::Marshal;
        let fb = TransportLayerCc {
            sender_ssrc: 1,
            media_ssrc: 2,
            base_sequence_number: 100,
            packet_status_count: 20,
            reference_time: 5,
            fb_pkt_count: 3,
            packet_chunks: vec![
                PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                    type_tcc: StatusChunkTypeTcc::RunLengthChunk,
                    packet_status_symbol: SymbolTypeTcc::PacketReceivedSmallDelta,
                    run_length: 6,
                }),
                PacketStatusChunk::StatusVectorChunk(StatusVectorChunk {
                    type_tcc: StatusChunkTypeTcc::StatusVectorChunk,
                    symbol_size: SymbolSizeTypeTcc::OneBit,
                    symbol_list: (0..14)
                        .map(|i| {
                            if i % 3 == 0 {
                                SymbolTypeTcc::PacketNotReceived
                            } else {
                                SymbolTypeTcc::PacketReceivedSmallDelta
                            }
                        })
                        .collect(),
                }),
            ],
            recv_deltas: (0..6 + 9)
                .map(|i| RecvDelta {
                    type_tcc_packet: SymbolTypeTcc::PacketReceivedSmallDelta,
                    delta: 250 * (i + 1),
                })
                .collect(),
        };
        let wire = fb.marshal().expect("oracle writes");
        let fci = &wire[12..];
        let got = Feedback::parse(fci).expect("parse");
        assert_eq!(
            (got.base_seq, got.count, got.reference_us),
            (100, 20, 5 * REFERENCE_US)
        );
        let statuses: Vec<Status> = got.statuses().map(|s| s.expect("status")).collect();
        assert_eq!(statuses.len(), 20);
        let lost: Vec<u16> = statuses
            .iter()
            .filter(|s| s.arrival_us.is_none())
            .map(|s| s.seq)
            .collect();
        assert_eq!(lost, [106, 109, 112, 115, 118]);
        let mut t = 5 * REFERENCE_US;
        for (s, d) in statuses
            .iter()
            .filter(|s| s.arrival_us.is_some())
            .zip(&fb.recv_deltas)
        {
            t += d.delta;
            assert_eq!(s.arrival_us, Some(t));
        }
    }

    #[test]
    fn malformed_feedback_is_refused_not_panicked_on() {
        let mut out = [0u8; MAX_LEN];
        let n = write(
            &mut out,
            1,
            2,
            7,
            0,
            &[Some(1_000), Some(2_000), None, Some(9_000)],
        )
        .expect("write");
        let fci = out[12..n].to_vec();
        for cut in 0..fci.len() {
            let _ = Feedback::parse(&fci[..cut]).map(|f| f.statuses().count());
        }
        // A run-length chunk of length 0 never ends the walk by itself.
        let zero = [0, 1, 0, 5, 0, 0, 0, 0, 0x20, 0x00];
        assert!(Feedback::parse(&zero).is_err());
        // Reserved symbol 3.
        let reserved = [0, 1, 0, 1, 0, 0, 0, 0, 0x60, 0x01, 0, 0];
        assert!(Feedback::parse(&reserved).is_err());
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

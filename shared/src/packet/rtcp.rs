//! RTCP compound packet views (RFC 3550 §6, RFC 4585, RFC 5104) and writers.
//!
//! [`compound`] walks the plaintext of a compound packet (after SRTCP unprotect). Each
//! packet's length word, padding, and the counts inside it (report blocks, FCI entries, REMB
//! SSRCs) are checked against the slice before a view is handed out, so the views' iterators
//! cannot run past their data. The writers build the feedback and reports the SFU originates
//! into caller-owned buffers.

use std::slice::ChunksExact;

use super::{be16, be32, be64, put, ParseError};

/// The common header: V/P/count, packet type, length.
pub const HEADER_LEN: usize = 4;
pub const PT_SR: u8 = 200;
pub const PT_RR: u8 = 201;
pub const PT_SDES: u8 = 202;
pub const PT_BYE: u8 = 203;
pub const PT_APP: u8 = 204;
/// Transport-layer feedback (RFC 4585 §6.2).
pub const PT_RTPFB: u8 = 205;
/// Payload-specific feedback (RFC 4585 §6.3).
pub const PT_PSFB: u8 = 206;

const FMT_NACK: u8 = 1;
const FMT_TRANSPORT_CC: u8 = 15;
const FMT_PLI: u8 = 1;
const FMT_FIR: u8 = 4;
const FMT_AFB: u8 = 15;
const REPORT_BLOCK_LEN: usize = 24;
/// The 5-bit count field's limit on report blocks per SR/RR.
pub const MAX_REPORT_BLOCKS: usize = 31;
/// SSRC of packet sender and of media source, before the FCI of every feedback message.
const FEEDBACK_HEADER_LEN: usize = 8;

/// Iterate the packets of a compound RTCP packet (plaintext, after SRTCP unprotect).
/// Yields `Err` once and stops on a malformed packet.
pub fn compound(b: &[u8]) -> Compound<'_> {
    Compound {
        b,
        offset: 0,
        done: false,
    }
}

/// Iterator over a compound packet; see [`compound`].
#[derive(Clone, Debug)]
pub struct Compound<'a> {
    b: &'a [u8],
    offset: usize,
    done: bool,
}

impl Compound<'_> {
    /// Byte offset of the next packet. After `next()` returns `Ok`, the packet it returned
    /// spans the previous `offset()` up to this one (for in-place rewrites such as
    /// [`set_sender_report_ssrc`]).
    pub fn offset(&self) -> usize {
        self.offset
    }
}

impl<'a> Iterator for Compound<'a> {
    type Item = Result<Packet<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let rest = self.b.get(self.offset..).unwrap_or(&[]);
        if rest.is_empty() {
            self.done = true;
            return None;
        }
        match split(rest) {
            Ok((packet, len)) => {
                self.offset += len;
                Some(Ok(packet))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Parse the first packet of `rest`; returns it and its length in bytes.
fn split(rest: &[u8]) -> Result<(Packet<'_>, usize), ParseError> {
    if rest.len() < HEADER_LEN {
        return Err(ParseError::TooShort);
    }
    let b0 = rest[0];
    if b0 >> 6 != 2 {
        return Err(ParseError::BadVersion);
    }
    let words = be16(rest, 2).ok_or(ParseError::TooShort)?;
    // The length field counts 32-bit words minus one (RFC 3550 §6.4.1).
    let len = (usize::from(words) + 1) * 4;
    let packet = rest.get(..len).ok_or(ParseError::BadLength)?;
    let mut body_end = len;
    if b0 & 0x20 != 0 {
        // The last byte counts the padding, itself included; it cannot eat the header.
        let n = usize::from(packet[len - 1]);
        if n == 0 || n > len - HEADER_LEN {
            return Err(ParseError::BadPadding);
        }
        body_end -= n;
    }
    let body = packet.get(HEADER_LEN..body_end).unwrap_or(&[]);
    Ok((Packet::parse(rest[1], b0 & 0x1f, body)?, len))
}

/// One packet of a compound packet. Slices borrow the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    SenderReport(SenderReport<'a>),
    ReceiverReport(ReceiverReport<'a>),
    /// The SDES chunks (body after the common header, padding removed).
    Sdes(&'a [u8]),
    /// The BYE SSRCs and reason (body after the common header, padding removed).
    Bye(&'a [u8]),
    /// RTPFB fmt 1 (RFC 4585 §6.2.1).
    Nack(Nack<'a>),
    /// RTPFB fmt 15 (draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1); the FCI is
    /// left for the congestion controller to read.
    TransportCc {
        sender_ssrc: u32,
        media_ssrc: u32,
        fci: &'a [u8],
    },
    /// PSFB fmt 1 (RFC 4585 §6.3.1).
    Pli {
        sender_ssrc: u32,
        media_ssrc: u32,
    },
    /// PSFB fmt 4 (RFC 5104 §4.3.1).
    Fir(Fir<'a>),
    /// PSFB fmt 15 with the "REMB" identifier (draft-alvestrand-rmcat-remb-03).
    Remb(Remb<'a>),
    /// Anything else (APP, XR, other feedback formats); `fmt` is the 5-bit count/format
    /// field, `body` follows the common header, padding removed.
    Other {
        packet_type: u8,
        fmt: u8,
        body: &'a [u8],
    },
}

impl<'a> Packet<'a> {
    fn parse(packet_type: u8, count: u8, body: &'a [u8]) -> Result<Self, ParseError> {
        let blocks = |fixed: usize| -> Result<&'a [u8], ParseError> {
            if body.len() < fixed {
                return Err(ParseError::TooShort);
            }
            let end = fixed + REPORT_BLOCK_LEN * usize::from(count);
            body.get(fixed..end).ok_or(ParseError::BadCount)
        };
        let feedback = || -> Result<(u32, u32, &'a [u8]), ParseError> {
            let sender = be32(body, 0).ok_or(ParseError::TooShort)?;
            let media = be32(body, 4).ok_or(ParseError::TooShort)?;
            Ok((
                sender,
                media,
                body.get(FEEDBACK_HEADER_LEN..).unwrap_or(&[]),
            ))
        };
        Ok(match (packet_type, count) {
            (PT_SR, _) => {
                let blocks = blocks(24)?;
                let field = |at| be32(body, at).ok_or(ParseError::TooShort);
                Packet::SenderReport(SenderReport {
                    ssrc: field(0)?,
                    ntp: be64(body, 4).ok_or(ParseError::TooShort)?,
                    rtp_timestamp: field(12)?,
                    packet_count: field(16)?,
                    octet_count: field(20)?,
                    blocks,
                })
            }
            (PT_RR, _) => Packet::ReceiverReport(ReceiverReport {
                ssrc: be32(body, 0).ok_or(ParseError::TooShort)?,
                blocks: blocks(4)?,
            }),
            (PT_SDES, _) => Packet::Sdes(body),
            (PT_BYE, _) => Packet::Bye(body),
            (PT_RTPFB, FMT_NACK) => {
                let (sender_ssrc, media_ssrc, fci) = feedback()?;
                if fci.len() % 4 != 0 {
                    return Err(ParseError::BadLength);
                }
                Packet::Nack(Nack {
                    sender_ssrc,
                    media_ssrc,
                    fci,
                })
            }
            (PT_RTPFB, FMT_TRANSPORT_CC) => {
                let (sender_ssrc, media_ssrc, fci) = feedback()?;
                Packet::TransportCc {
                    sender_ssrc,
                    media_ssrc,
                    fci,
                }
            }
            (PT_PSFB, FMT_PLI) => {
                let (sender_ssrc, media_ssrc, _) = feedback()?;
                Packet::Pli {
                    sender_ssrc,
                    media_ssrc,
                }
            }
            (PT_PSFB, FMT_FIR) => {
                let (sender_ssrc, media_ssrc, fci) = feedback()?;
                if fci.len() % 8 != 0 {
                    return Err(ParseError::BadLength);
                }
                Packet::Fir(Fir {
                    sender_ssrc,
                    media_ssrc,
                    fci,
                })
            }
            (PT_PSFB, FMT_AFB) if body.get(8..12) == Some(b"REMB") => {
                let (sender_ssrc, _, fci) = feedback()?;
                Packet::Remb(Remb::parse(sender_ssrc, fci)?)
            }
            (packet_type, fmt) => Packet::Other {
                packet_type,
                fmt,
                body,
            },
        })
    }
}

/// One reception report block (RFC 3550 §6.4.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportBlock {
    pub ssrc: u32,
    pub fraction_lost: u8,
    /// 24-bit signed on the wire; writers clamp to that range.
    pub cumulative_lost: i32,
    /// Extended highest sequence number received.
    pub highest_seq: u32,
    pub jitter: u32,
    /// Middle 32 bits of the last SR's NTP timestamp.
    pub lsr: u32,
    /// Delay since the last SR, in 1/65536 s.
    pub dlsr: u32,
}

impl ReportBlock {
    fn read(c: &[u8]) -> Option<Self> {
        let c: &[u8; REPORT_BLOCK_LEN] = c.try_into().ok()?;
        let word = |i: usize| u32::from_be_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
        Some(ReportBlock {
            ssrc: word(0),
            fraction_lost: c[4],
            // Sign-extend the 24-bit field by shifting it to the top and back.
            cumulative_lost: (i32::from_be_bytes([c[5], c[6], c[7], 0])) >> 8,
            highest_seq: word(8),
            jitter: word(12),
            lsr: word(16),
            dlsr: word(20),
        })
    }

    fn write(&self, out: &mut [u8], at: usize) -> Result<(), ParseError> {
        let lost = self
            .cumulative_lost
            .clamp(-0x80_0000, 0x7f_ffff)
            .to_be_bytes();
        put(out, at, &self.ssrc.to_be_bytes())?;
        put(
            out,
            at + 4,
            &[self.fraction_lost, lost[1], lost[2], lost[3]],
        )?;
        put(out, at + 8, &self.highest_seq.to_be_bytes())?;
        put(out, at + 12, &self.jitter.to_be_bytes())?;
        put(out, at + 16, &self.lsr.to_be_bytes())?;
        put(out, at + 20, &self.dlsr.to_be_bytes())
    }
}

/// Iterator over report blocks; the count was checked against the packet at parse time.
#[derive(Clone, Debug)]
pub struct ReportBlocks<'a>(ChunksExact<'a, u8>);

impl Iterator for ReportBlocks<'_> {
    type Item = ReportBlock;

    fn next(&mut self) -> Option<ReportBlock> {
        self.0.next().and_then(ReportBlock::read)
    }
}

/// SR (RFC 3550 §6.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderReport<'a> {
    pub ssrc: u32,
    /// NTP timestamp, 32.32 fixed point seconds since 1900.
    pub ntp: u64,
    pub rtp_timestamp: u32,
    pub packet_count: u32,
    pub octet_count: u32,
    blocks: &'a [u8],
}

impl<'a> SenderReport<'a> {
    pub fn reports(&self) -> ReportBlocks<'a> {
        ReportBlocks(self.blocks.chunks_exact(REPORT_BLOCK_LEN))
    }
}

/// RR (RFC 3550 §6.4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiverReport<'a> {
    pub ssrc: u32,
    blocks: &'a [u8],
}

impl<'a> ReceiverReport<'a> {
    pub fn reports(&self) -> ReportBlocks<'a> {
        ReportBlocks(self.blocks.chunks_exact(REPORT_BLOCK_LEN))
    }
}

/// Generic NACK (RFC 4585 §6.2.1): FCI is PID/BLP pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nack<'a> {
    pub sender_ssrc: u32,
    pub media_ssrc: u32,
    fci: &'a [u8],
}

impl<'a> Nack<'a> {
    /// The (PID, BLP) pairs as sent.
    pub fn pairs(&self) -> impl Iterator<Item = (u16, u16)> + 'a {
        self.fci.chunks_exact(4).map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u16::from_be_bytes([c[2], c[3]]),
            )
        })
    }

    /// Every lost sequence number: each PID, then PID+i+1 for each bit i set in its BLP.
    pub fn lost(&self) -> impl Iterator<Item = u16> + 'a {
        self.pairs().flat_map(|(pid, blp)| {
            let following = (0..16u16)
                .filter(move |i| blp >> i & 1 == 1)
                .map(move |i| pid.wrapping_add(i + 1));
            std::iter::once(pid).chain(following)
        })
    }
}

/// Full Intra Request (RFC 5104 §4.3.1): FCI entries of (SSRC, sequence number).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fir<'a> {
    pub sender_ssrc: u32,
    /// Unused by FIR (SHALL be 0, RFC 5104 §4.3.1.2); the targets are in the entries.
    pub media_ssrc: u32,
    fci: &'a [u8],
}

impl<'a> Fir<'a> {
    /// (SSRC of the media sender asked for a key frame, command sequence number).
    pub fn entries(&self) -> impl Iterator<Item = (u32, u8)> + 'a {
        self.fci
            .chunks_exact(8)
            .map(|c| (u32::from_be_bytes([c[0], c[1], c[2], c[3]]), c[4]))
    }
}

/// Receiver Estimated Max Bitrate (draft-alvestrand-rmcat-remb-03 §2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remb<'a> {
    pub sender_ssrc: u32,
    /// Mantissa × 2^exponent; saturates at `u64::MAX` for encodings that overflow it.
    pub bitrate_bps: u64,
    ssrcs: &'a [u8],
}

impl<'a> Remb<'a> {
    /// `fci` starts with "REMB".
    fn parse(sender_ssrc: u32, fci: &'a [u8]) -> Result<Self, ParseError> {
        let head = fci.get(4..8).ok_or(ParseError::TooShort)?;
        let count = usize::from(head[0]);
        let exp = u32::from(head[1] >> 2);
        let mantissa = u64::from(u32::from_be_bytes([0, head[1] & 0x03, head[2], head[3]]));
        let bitrate_bps = if mantissa != 0 && exp > mantissa.leading_zeros() {
            u64::MAX
        } else {
            mantissa << exp
        };
        let ssrcs = fci.get(8..8 + 4 * count).ok_or(ParseError::BadCount)?;
        Ok(Remb {
            sender_ssrc,
            bitrate_bps,
            ssrcs,
        })
    }

    /// The SSRCs the estimate applies to.
    pub fn ssrcs(&self) -> impl Iterator<Item = u32> + 'a {
        self.ssrcs
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// Write the common header of a `len`-byte packet (a multiple of 4) at the start of `out`.
fn write_header(out: &mut [u8], count: u8, packet_type: u8, len: usize) -> Result<(), ParseError> {
    let words = u16::try_from(len / 4 - 1).map_err(|_| ParseError::BadCount)?;
    let w = words.to_be_bytes();
    put(out, 0, &[0x80 | (count & 0x1f), packet_type, w[0], w[1]])
}

fn write_feedback(
    out: &mut [u8],
    fmt: u8,
    packet_type: u8,
    sender_ssrc: u32,
    media_ssrc: u32,
    len: usize,
) -> Result<(), ParseError> {
    if out.len() < len {
        return Err(ParseError::TooShort);
    }
    write_header(out, fmt, packet_type, len)?;
    put(out, 4, &sender_ssrc.to_be_bytes())?;
    put(out, 8, &media_ssrc.to_be_bytes())
}

/// Write a PLI asking `media_ssrc` for a key frame; returns its length (12).
pub fn write_pli(out: &mut [u8], sender_ssrc: u32, media_ssrc: u32) -> Result<usize, ParseError> {
    write_feedback(out, FMT_PLI, PT_PSFB, sender_ssrc, media_ssrc, 12)?;
    Ok(12)
}

/// Write a FIR asking `media_ssrc` for a key frame; returns its length (20). `seq_nr` must
/// go up by one for each new request (RFC 5104 §4.3.1.2); the header's media SSRC is 0.
pub fn write_fir(
    out: &mut [u8],
    sender_ssrc: u32,
    media_ssrc: u32,
    seq_nr: u8,
) -> Result<usize, ParseError> {
    write_feedback(out, FMT_FIR, PT_PSFB, sender_ssrc, 0, 20)?;
    put(out, 12, &media_ssrc.to_be_bytes())?;
    put(out, 16, &[seq_nr, 0, 0, 0])?;
    Ok(20)
}

/// Write a generic NACK for `lost` (best sorted in sequence order, which packs tightest);
/// returns its length. Each sequence number is covered by a PID/BLP pair; numbers within 16
/// after a pair's PID share it. `Err(BadCount)` if `lost` is empty: a NACK must carry at least
/// one pair (RFC 4585 §6.2.1).
pub fn write_nack(
    out: &mut [u8],
    sender_ssrc: u32,
    media_ssrc: u32,
    lost: &[u16],
) -> Result<usize, ParseError> {
    if lost.is_empty() {
        return Err(ParseError::BadCount);
    }
    let mut len = 12;
    let mut pair: Option<(u16, u16)> = None;
    for &seq in lost {
        if let Some((pid, blp)) = pair.as_mut() {
            match seq.wrapping_sub(*pid) {
                0 => continue,
                d @ 1..=16 => {
                    *blp |= 1 << (d - 1);
                    continue;
                }
                _ => {
                    put_pair(out, len, *pid, *blp)?;
                    len += 4;
                }
            }
        }
        pair = Some((seq, 0));
    }
    if let Some((pid, blp)) = pair {
        put_pair(out, len, pid, blp)?;
        len += 4;
    }
    write_feedback(out, FMT_NACK, PT_RTPFB, sender_ssrc, media_ssrc, len)?;
    Ok(len)
}

fn put_pair(out: &mut [u8], at: usize, pid: u16, blp: u16) -> Result<(), ParseError> {
    let (p, b) = (pid.to_be_bytes(), blp.to_be_bytes());
    put(out, at, &[p[0], p[1], b[0], b[1]])
}

/// Write an RR with up to 31 report blocks; returns its length. `Err(BadCount)` if more.
pub fn write_receiver_report(
    out: &mut [u8],
    ssrc: u32,
    blocks: &[ReportBlock],
) -> Result<usize, ParseError> {
    let count = u8::try_from(blocks.len())
        .ok()
        .filter(|&n| usize::from(n) <= MAX_REPORT_BLOCKS)
        .ok_or(ParseError::BadCount)?;
    let len = 8 + REPORT_BLOCK_LEN * blocks.len();
    if out.len() < len {
        return Err(ParseError::TooShort);
    }
    write_header(out, count, PT_RR, len)?;
    put(out, 4, &ssrc.to_be_bytes())?;
    for (i, block) in blocks.iter().enumerate() {
        block.write(out, 8 + REPORT_BLOCK_LEN * i)?;
    }
    Ok(len)
}

/// Write an SR with up to 31 report blocks; returns its length. `Err(BadCount)` if more.
pub fn write_sender_report(
    out: &mut [u8],
    ssrc: u32,
    ntp: u64,
    rtp_ts: u32,
    packets: u32,
    octets: u32,
    blocks: &[ReportBlock],
) -> Result<usize, ParseError> {
    let count = u8::try_from(blocks.len())
        .ok()
        .filter(|&n| usize::from(n) <= MAX_REPORT_BLOCKS)
        .ok_or(ParseError::BadCount)?;
    let len = 28 + REPORT_BLOCK_LEN * blocks.len();
    if out.len() < len {
        return Err(ParseError::TooShort);
    }
    write_header(out, count, PT_SR, len)?;
    put(out, 4, &ssrc.to_be_bytes())?;
    put(out, 8, &ntp.to_be_bytes())?;
    put(out, 16, &rtp_ts.to_be_bytes())?;
    put(out, 20, &packets.to_be_bytes())?;
    put(out, 24, &octets.to_be_bytes())?;
    for (i, block) in blocks.iter().enumerate() {
        block.write(out, 28 + REPORT_BLOCK_LEN * i)?;
    }
    Ok(len)
}

/// Check that `packet` starts with an RTCP packet of type `packet_type`, at least 12 bytes.
fn expect_type(packet: &[u8], types: &[u8]) -> Result<(), ParseError> {
    let b0 = *packet.first().ok_or(ParseError::TooShort)?;
    if b0 >> 6 != 2 {
        return Err(ParseError::BadVersion);
    }
    let pt = *packet.get(1).ok_or(ParseError::TooShort)?;
    if !types.contains(&pt) {
        return Err(ParseError::BadType);
    }
    if packet.len() < 12 {
        return Err(ParseError::TooShort);
    }
    Ok(())
}

/// Rewrite the sender SSRC of the SR at the start of `packet` in place — used when
/// forwarding a publisher's SR to each subscriber under the SSRC that subscriber knows.
/// `Err(BadType)` if it is not an SR.
pub fn set_sender_report_ssrc(packet: &mut [u8], ssrc: u32) -> Result<(), ParseError> {
    expect_type(packet, &[PT_SR])?;
    put(packet, 4, &ssrc.to_be_bytes())
}

/// Rewrite the sender and media SSRCs of the RTPFB/PSFB feedback message at the start of
/// `packet` in place — used when forwarding a subscriber's NACK/PLI to the publisher.
/// `Err(BadType)` if it is not feedback.
pub fn set_feedback_ssrcs(
    packet: &mut [u8],
    sender_ssrc: u32,
    media_ssrc: u32,
) -> Result<(), ParseError> {
    expect_type(packet, &[PT_RTPFB, PT_PSFB])?;
    put(packet, 4, &sender_ssrc.to_be_bytes())?;
    put(packet, 8, &media_ssrc.to_be_bytes())
}

#[cfg(test)]
mod tests;

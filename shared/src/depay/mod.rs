//! Frames from RTP payloads, and the files a player opens: IVF for VP8, VP9 and AV1, an
//! H.264 Annex B byte stream. What `GET /v1/streams/{room}/{stream}/fetch` returns of a
//! cached group, for debugging what a publisher sends (open it in ffplay, VLC, mpv).
//!
//! Everything here reads what a publisher sent: a packet it cannot read is skipped and
//! counted, a frame with a missing packet is left out whole (a decoder would show garbage),
//! and nothing panics or reads past a slice. Sans-IO: packets in, bytes out.

pub mod av1;
pub mod h264;
pub mod ivf;
pub mod vp8;
pub mod vp9;

use crate::command::VideoCodec;
use crate::packet::rtp;

/// The file a group becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    pub bytes: Vec<u8>,
    pub container: Container,
    /// Frames (temporal units, access units) written.
    pub frames: usize,
    /// Frames left out: a packet of them missing, or unreadable.
    pub skipped: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    /// `video/x-ivf`: the 32-byte IVF header, then each frame with its size and timestamp.
    Ivf,
    /// `video/h264`: NAL units each after a 4-byte start code.
    AnnexB,
}

impl Container {
    pub fn media_type(self) -> &'static str {
        match self {
            Container::Ivf => "video/x-ivf",
            Container::AnnexB => "video/h264",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Container::Ivf => "ivf",
            Container::AnnexB => "h264",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DepayError {
    #[error("no packets")]
    Empty,
    #[error("no whole frame in {packets} packets ({skipped} frames incomplete or unreadable)")]
    NoFrame { packets: usize, skipped: usize },
}

/// One frame's packets: its RTP timestamp and each packet's payload (padding removed), in
/// sequence order.
pub struct Frame<'a> {
    pub timestamp: u32,
    pub payloads: Vec<&'a [u8]>,
    pub marker: bool,
}

/// `packets` (whole RTP packets, decrypted, in sequence order, of one SSRC) as frames: runs
/// of one timestamp with no sequence number missing inside. Unreadable packets end the
/// frame they fall in. Also returns how many frames were broken (a gap, a bad packet).
pub fn frames(packets: &[Vec<u8>]) -> (Vec<Frame<'_>>, usize) {
    let mut out: Vec<Frame<'_>> = Vec::new();
    let mut broken = 0;
    let mut cur: Option<(Frame<'_>, u16, bool)> = None;
    for p in packets {
        let Ok(h) = rtp::Header::parse(p) else {
            if let Some((_, _, ok)) = cur.as_mut() {
                *ok = false;
            }
            continue;
        };
        let end = p.len().saturating_sub(h.padding_len);
        let payload = p.get(h.payload_offset..end).unwrap_or_default();
        if payload.is_empty() {
            // Padding only (a sender probing its bandwidth on the media SSRC): no part of
            // any frame, but in the numbering a frame's packets are checked against.
            if let Some((_, last, _)) = cur.as_mut() {
                if h.sequence == last.wrapping_add(1) {
                    *last = h.sequence;
                }
            }
            continue;
        }
        match cur.as_mut() {
            Some((f, last, ok)) if f.timestamp == h.timestamp => {
                if h.sequence != last.wrapping_add(1) {
                    *ok = false;
                }
                *last = h.sequence;
                f.payloads.push(payload);
                f.marker |= h.marker;
            }
            _ => {
                if let Some((f, _, ok)) = cur.take() {
                    if ok {
                        out.push(f);
                    } else {
                        broken += 1;
                    }
                }
                cur = Some((
                    Frame {
                        timestamp: h.timestamp,
                        payloads: vec![payload],
                        marker: h.marker,
                    },
                    h.sequence,
                    true,
                ));
            }
        }
    }
    if let Some((f, _, ok)) = cur {
        if ok {
            out.push(f);
        } else {
            broken += 1;
        }
    }
    (out, broken)
}

/// A codec's frame assembler: one RTP frame's payloads as the bytes of one frame of the
/// file, `None` when they do not make a whole one.
type Assemble = fn(&Frame<'_>, &mut Vec<u8>, &mut ivf::Size) -> bool;

/// The group `packets` of a track of `codec` as a file.
pub fn file(codec: VideoCodec, packets: &[Vec<u8>]) -> Result<File, DepayError> {
    if packets.is_empty() {
        return Err(DepayError::Empty);
    }
    let (frames, mut skipped) = frames(packets);
    let (assemble, fourcc): (Assemble, Option<[u8; 4]>) = match codec {
        VideoCodec::Vp8(_) => (vp8::assemble, Some(*b"VP80")),
        VideoCodec::Vp9(_) => (vp9::assemble, Some(*b"VP90")),
        VideoCodec::Av1(_) => (av1::assemble, Some(*b"AV01")),
        VideoCodec::H264(_) => (h264::assemble, None),
    };
    let mut body = Vec::new();
    let mut size = ivf::Size::default();
    let mut written = 0;
    let first = frames.first().map_or(0, |f| f.timestamp);
    let mut buf = Vec::new();
    for f in &frames {
        buf.clear();
        if !assemble(f, &mut buf, &mut size) || buf.is_empty() {
            skipped += 1;
            continue;
        }
        match fourcc {
            Some(_) => ivf::frame(&mut body, &buf, f.timestamp.wrapping_sub(first)),
            None => body.extend_from_slice(&buf),
        }
        written += 1;
    }
    if written == 0 {
        return Err(DepayError::NoFrame {
            packets: packets.len(),
            skipped,
        });
    }
    let (bytes, container) = match fourcc {
        Some(fourcc) => {
            let mut bytes = ivf::header(fourcc, size, written as u32).to_vec();
            bytes.extend_from_slice(&body);
            (bytes, Container::Ivf)
        }
        None => (body, Container::AnnexB),
    };
    Ok(File {
        bytes,
        container,
        frames: written,
        skipped,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An RTP packet: version 2, payload type 96, SSRC 1.
    pub fn rtp(seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 96 | if marker { 0x80 } else { 0 }];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&1u32.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn frames_are_runs_of_one_timestamp_without_a_gap() {
        let packets = vec![
            rtp(10, 100, false, b"a"),
            rtp(11, 100, true, b"b"),
            rtp(12, 200, false, b"c"),
            // 13 lost: the frame at 200 is broken.
            rtp(14, 200, true, b"d"),
            vec![0x80, 1, 2],
            rtp(15, 300, false, b"e"),
            // Padding only, in the middle of a frame: not a gap.
            rtp(16, 300, false, b""),
            rtp(17, 300, true, b"f"),
        ];
        let (f, broken) = frames(&packets);
        assert_eq!(broken, 1);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].payloads, vec![&b"a"[..], &b"b"[..]]);
        assert!(f[0].marker);
        assert_eq!(f[1].timestamp, 300);
        assert_eq!(f[1].payloads, vec![&b"e"[..], &b"f"[..]]);
    }

    #[test]
    fn nothing_readable_is_an_error_not_a_panic() {
        assert_eq!(file(VideoCodec::Vp8(96), &[]), Err(DepayError::Empty));
        let junk = vec![
            vec![0u8; 3],
            rtp(1, 1, true, &[]),
            rtp(2, 2, true, &[0xff; 40]),
        ];
        for codec in [
            VideoCodec::Vp8(96),
            VideoCodec::Vp9(98),
            VideoCodec::Av1(45),
            VideoCodec::H264(102),
        ] {
            assert!(
                matches!(file(codec, &junk), Err(DepayError::NoFrame { .. })),
                "{codec:?}"
            );
        }
    }
}

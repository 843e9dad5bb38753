//! H.264 (RFC 6184): single NAL unit packets, STAP-A aggregates and FU-A fragments as an
//! Annex B byte stream (each NAL unit after a 00 00 00 01 start code), what ffplay and
//! VLC open as raw `.h264`.

use super::ivf::Size;
use super::Frame;

const START: [u8; 4] = [0, 0, 0, 1];

/// One access unit's NAL units, written in order, except parameter sets repeated after the
/// unit's first slice: some senders (GStreamer's `rtph264pay` with `config-interval=-1`)
/// repeat SPS and PPS before every IDR slice, and an SPS in the middle of an access unit
/// makes FFmpeg's parser start a new one (H.264 §7.4.1.2.3 puts them before the first
/// slice). A parameter set that differs from those already written is kept.
struct Unit<'a, 'o> {
    out: &'o mut Vec<u8>,
    params: Vec<&'a [u8]>,
    sliced: bool,
}

impl<'a> Unit<'a, '_> {
    fn nal(&mut self, nal: &'a [u8]) {
        let kind = nal.first().map_or(0, |b| b & 0x1f);
        if matches!(kind, 7 | 8) {
            if self.sliced && self.params.contains(&nal) {
                return;
            }
            self.params.push(nal);
        }
        if (1..=5).contains(&kind) {
            self.sliced = true;
        }
        self.out.extend_from_slice(&START);
        self.out.extend_from_slice(nal);
    }
}

/// One access unit: the NAL units of its packets, FU-A fragments joined. Interleaved
/// modes (STAP-B, MTAP, FU-B) are not negotiated by the node and not read.
pub fn assemble(f: &Frame<'_>, out: &mut Vec<u8>, _size: &mut Size) -> bool {
    if !f.marker {
        return false;
    }
    let mut unit = Unit {
        out,
        params: Vec::new(),
        sliced: false,
    };
    let mut fragment = false;
    for p in &f.payloads {
        let p: &[u8] = p;
        let Some(&b0) = p.first() else {
            return false;
        };
        match b0 & 0x1f {
            1..=23 => {
                if fragment {
                    return false;
                }
                unit.nal(p);
            }
            24 => {
                if fragment {
                    return false;
                }
                let mut at = 1;
                while at < p.len() {
                    let Some(&[a, b]) = p.get(at..at + 2) else {
                        return false;
                    };
                    let n = usize::from(u16::from_be_bytes([a, b]));
                    let Some(nal) = p.get(at + 2..at + 2 + n).filter(|n| !n.is_empty()) else {
                        return false;
                    };
                    unit.nal(nal);
                    at += 2 + n;
                }
            }
            28 => {
                let Some(&h) = p.get(1) else {
                    return false;
                };
                let (s, e) = (h & 0x80 != 0, h & 0x40 != 0);
                if s {
                    if fragment {
                        return false;
                    }
                    unit.out.extend_from_slice(&START);
                    // The NAL header: F and NRI from the indicator, the type from the header.
                    unit.out.push((b0 & 0xe0) | (h & 0x1f));
                    unit.sliced |= (1..=5).contains(&(h & 0x1f));
                    fragment = true;
                } else if !fragment {
                    return false;
                }
                unit.out.extend_from_slice(p.get(2..).unwrap_or_default());
                if e {
                    fragment = false;
                }
            }
            _ => return false,
        }
    }
    !fragment
}

#[cfg(test)]
mod tests {
    use super::super::tests::rtp;
    use super::super::{file, Container};
    use crate::command::VideoCodec;

    #[test]
    fn single_aggregated_and_fragmented_nal_units_become_annex_b() {
        let packets = vec![
            // STAP-A: an SPS (3 bytes) and a PPS (2 bytes).
            rtp(1, 0, false, &[0x18, 0, 3, 0x67, 1, 2, 0, 2, 0x68, 3]),
            // An IDR slice in three FU-A fragments.
            rtp(2, 0, false, &[0x7c, 0x85, 0xa1]),
            rtp(3, 0, false, &[0x7c, 0x05, 0xa2]),
            rtp(4, 0, true, &[0x7c, 0x45, 0xa3]),
            // A P slice, one packet.
            rtp(5, 3000, true, &[0x41, 0xb1]),
            // A fragment whose start is missing.
            rtp(6, 6000, true, &[0x7c, 0x45, 0xa3]),
        ];
        let f = file(VideoCodec::H264(102), &packets).expect("file");
        assert_eq!(f.container, Container::AnnexB);
        assert_eq!((f.frames, f.skipped), (2, 1));
        assert_eq!(
            f.bytes,
            [
                &[0, 0, 0, 1, 0x67, 1, 2][..],
                &[0, 0, 0, 1, 0x68, 3],
                &[0, 0, 0, 1, 0x65, 0xa1, 0xa2, 0xa3],
                &[0, 0, 0, 1, 0x41, 0xb1],
            ]
            .concat()
        );
    }

    #[test]
    fn parameter_sets_repeated_inside_an_access_unit_are_written_once() {
        // SPS, PPS, IDR slice 1, the same SPS and PPS again, IDR slice 2; then a new SPS
        // after a slice, which is kept.
        let packets = vec![
            rtp(1, 0, false, &[0x18, 0, 2, 0x67, 1, 0, 2, 0x68, 2]),
            rtp(2, 0, false, &[0x65, 0x88]),
            rtp(3, 0, false, &[0x18, 0, 2, 0x67, 1, 0, 2, 0x68, 2]),
            rtp(4, 0, false, &[0x65, 0x01]),
            rtp(5, 0, true, &[0x67, 9]),
        ];
        let f = file(VideoCodec::H264(102), &packets).expect("file");
        assert_eq!(
            f.bytes,
            [
                &[0, 0, 0, 1, 0x67, 1][..],
                &[0, 0, 0, 1, 0x68, 2],
                &[0, 0, 0, 1, 0x65, 0x88],
                &[0, 0, 0, 1, 0x65, 0x01],
                &[0, 0, 0, 1, 0x67, 9],
            ]
            .concat()
        );
    }

    #[test]
    fn a_stap_a_that_lies_about_its_sizes_is_refused() {
        let packets = vec![rtp(1, 0, true, &[0x18, 0, 9, 0x67, 1])];
        assert!(file(VideoCodec::H264(102), &packets).is_err());
    }
}

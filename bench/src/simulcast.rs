//! Simulcast publishers (`--simulcast`): each publisher sends three encodings of one picture,
//! each on its own SSRC, as a browser does with three `sendEncodings`, and the node picks one
//! per subscriber and switches only at a keyframe of the layer it moves to.
//!
//! What the node reads, so what this module writes:
//! - **Which layer a packet is**: the RID header extension (RFC 8852), with the MID beside
//!   it, in the one-byte form (RFC 8285); the WHIP offer maps them (`a=extmap`) and names the
//!   layers (`a=rid:<rid> send`, `a=simulcast:send h;m;l`). A plain `POST /v1/sessions`
//!   publisher cannot declare layers, so a simulcast publisher always joins over WHIP.
//! - **Where a switch may happen**: the VP8 payload descriptor (RFC 7741 §4.2) with S set and
//!   PID 0 on a frame's first packet, then the VP8 frame tag (RFC 6386 §9.1) whose P bit is
//!   clear on a keyframe, followed by the keyframe start code and the picture size (the node
//!   ranks layers by that size).
//!
//! Every packet of a layer has the same prefix length ([`OVERHEAD`]), so a receiver finds the
//! bench payload at a fixed offset: the descriptor is always 5 bytes (15-bit picture id and
//! TL0PICIDX, which the node rewrites across switches) and the frame tag region always 10
//! (the frame tag and start code on a frame's first packet, VP8 data on the others).

use serde::Serialize;

/// One encoding of a simulcast publisher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Layer {
    /// Its rid (one character, so the header extension fits one word).
    pub rid: &'static str,
    pub width: u16,
    pub height: u16,
    /// Bits per second, datagram bytes counted.
    pub bitrate: u64,
}

/// The layers, lowest quality first (index = the rank `POST /v1/sessions/{id}/layers` caps
/// at). The rates are those libwebrtc allocates a 720p camera's three VP8 layers at 30
/// frames/s: its max bitrates for 320x180, 640x360 and 1280x720 are 150 kbit/s,
/// 500 kbit/s and 2.5 Mbit/s, and a camera settles a little below the top one.
pub const LAYERS: [Layer; 3] = [
    Layer {
        rid: "l",
        width: 320,
        height: 180,
        bitrate: 150_000,
    },
    Layer {
        rid: "m",
        width: 640,
        height: 360,
        bitrate: 500_000,
    },
    Layer {
        rid: "h",
        width: 1280,
        height: 720,
        bitrate: 1_800_000,
    },
];

/// The one-byte header extension ids the bench's offer maps (Chrome's numbers).
pub const MID_EXT: u8 = 4;
pub const RID_EXT: u8 = 10;
/// The video m-line's mid.
pub const MID: &str = "0";

/// Bytes of the header extension block: the 4-byte `0xBEDE` header, then MID and RID
/// elements (1 + 1 byte each) padded to a word.
pub const EXT_LEN: usize = 8;
/// The VP8 payload descriptor: X, I (M: 15-bit picture id), L (TL0PICIDX).
pub const DESCRIPTOR: usize = 5;
/// The frame tag region after it: 3-byte frame tag, start code, width and height.
pub const FRAME_TAG: usize = 10;
/// Bytes before the bench payload (after the 12-byte RTP header).
pub const VP8_PREFIX: usize = DESCRIPTOR + FRAME_TAG;
/// Everything a simulcast packet carries beyond a plain frame-shaped one.
pub const OVERHEAD: usize = EXT_LEN + VP8_PREFIX;

/// Writes the header extension block (MID, RID) at the start of `buf` (at least
/// [`EXT_LEN`] bytes) and returns its length. The caller sets the RTP header's X bit.
pub fn write_extensions(buf: &mut [u8], rid: &str) -> usize {
    buf[..4].copy_from_slice(&[0xbe, 0xde, 0, 1]);
    let mut i = 4;
    for (id, v) in [(MID_EXT, MID), (RID_EXT, rid)] {
        let v = v.as_bytes();
        // One-byte form: the length field is len - 1 (1..=16 bytes).
        buf[i] = (id << 4) | (v.len() as u8 - 1);
        buf[i + 1..i + 1 + v.len()].copy_from_slice(v);
        i += 1 + v.len();
    }
    buf[i..EXT_LEN].fill(0);
    EXT_LEN
}

/// Where a packet sits in its frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FramePos {
    /// The frame's first packet (descriptor S bit, and the frame tag).
    pub start: bool,
    /// A keyframe's packet.
    pub keyframe: bool,
    /// The frame's picture id (15 bits) and TL0PICIDX.
    pub picture_id: u16,
    pub tl0: u8,
}

/// Writes the VP8 descriptor and frame tag region of `layer` at the start of `buf` (at
/// least [`VP8_PREFIX`] bytes) and returns [`VP8_PREFIX`].
pub fn write_vp8(buf: &mut [u8], layer: &Layer, pos: FramePos) -> usize {
    // X, then S on the frame's first packet; PID 0.
    buf[0] = 0x80 | if pos.start { 0x10 } else { 0 };
    buf[1] = 0xc0; // I, L
    buf[2..4].copy_from_slice(&(0x8000 | (pos.picture_id & 0x7fff)).to_be_bytes());
    buf[4] = pos.tl0;
    let tag = &mut buf[DESCRIPTOR..VP8_PREFIX];
    match (pos.start, pos.keyframe) {
        (true, true) => {
            // Frame tag: P = 0 (key), version 0, show_frame; then the start code and the
            // 14-bit width and height (no scaling), little endian.
            tag[..3].copy_from_slice(&[0x10, 0x00, 0x00]);
            tag[3..6].copy_from_slice(&[0x9d, 0x01, 0x2a]);
            tag[6..8].copy_from_slice(&(layer.width & 0x3fff).to_le_bytes());
            tag[8..10].copy_from_slice(&(layer.height & 0x3fff).to_le_bytes());
        }
        // P = 1: an interframe.
        (true, false) => {
            tag[..3].copy_from_slice(&[0x11, 0x00, 0x00]);
            tag[3..].fill(0x5a);
        }
        // Partition data.
        (false, _) => tag.fill(0x5a),
    }
    VP8_PREFIX
}

/// The offer's lines for a simulcast video m-line: the MID and RID extensions, the rids and
/// their `a=simulcast` order (highest first, as Chrome lists a page's encodings).
pub fn offer_lines() -> String {
    let mut s = format!(
        "a=extmap:{MID_EXT} urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
         a=extmap:{RID_EXT} urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n"
    );
    for l in LAYERS.iter().rev() {
        s.push_str(&format!("a=rid:{} send\r\n", l.rid));
    }
    let order: Vec<&str> = LAYERS.iter().rev().map(|l| l.rid).collect();
    s.push_str(&format!("a=simulcast:send {}\r\n", order.join(";")));
    s
}

/// What `--simulcast` asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct SimulcastSpec {
    /// Bits per second of each layer, lowest first (datagram bytes counted).
    pub bitrates: [u64; 3],
    /// Subscribers per publisher capped with `POST /v1/sessions/{id}/layers` (the first ones).
    pub capped: usize,
    /// The rank they are capped at (0: the lowest layer).
    pub cap_layer: u8,
}

impl SimulcastSpec {
    /// The layers with this spec's rates.
    pub fn layers(&self) -> [Layer; 3] {
        let mut l = LAYERS;
        for (l, &b) in l.iter_mut().zip(&self.bitrates) {
            l.bitrate = b;
        }
        l
    }

    /// The layer subscriber `i` (of a publisher's) receives: the capped ones `cap_layer`,
    /// the others the top.
    pub fn expected_layer(&self, i: usize) -> usize {
        if i < self.capped {
            usize::from(self.cap_layer).min(LAYERS.len() - 1)
        } else {
            LAYERS.len() - 1
        }
    }

    /// Subscribers capped out of `subscribers` for a `fraction` (rounded to nearest).
    pub fn capped_of(fraction: f64, subscribers: usize) -> usize {
        ((fraction.clamp(0.0, 1.0) * subscribers as f64).round() as usize).min(subscribers)
    }
}

impl Default for SimulcastSpec {
    fn default() -> Self {
        SimulcastSpec {
            bitrates: LAYERS.map(|l| l.bitrate),
            capped: 0,
            cap_layer: 0,
        }
    }
}

/// One layer's outcome in a report.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LayerReport {
    /// Rank (0: lowest) and rid.
    pub layer: usize,
    pub rid: &'static str,
    pub width: u16,
    pub height: u16,
    /// What each publisher sends on it: packets and bits per second (datagram bytes).
    pub pps: f64,
    pub bps: f64,
    /// Subscribers expecting this layer, and their measured-window packets.
    pub subscribers: usize,
    pub expected_packets: u64,
    pub received_packets: u64,
    pub loss_ratio: f64,
    /// Packets of another layer of their publisher those subscribers received (before the
    /// node switched them to this one); not counted as received.
    pub other_layer: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The node's reading of a VP8 payload (dataplane/src/engine/layers.rs `vp8`),
    /// restated: keyframe = S, PID 0 and the frame tag's P bit clear; size from the
    /// keyframe header after the start code.
    fn node_reads(p: &[u8]) -> (bool, u32) {
        let b0 = p[0];
        let mut i = 1;
        if b0 & 0x80 != 0 {
            let x = p[1];
            i = 2;
            if x & 0x80 != 0 {
                i += if p[i] & 0x80 != 0 { 2 } else { 1 };
            }
            if x & 0x40 != 0 {
                i += 1;
            }
            if x & 0x30 != 0 {
                i += 1;
            }
        }
        let key = b0 & 0x10 != 0 && b0 & 0x07 == 0 && p[i] & 0x01 == 0;
        let mut pixels = 0;
        if key && p[i + 3..i + 6] == [0x9d, 0x01, 0x2a] {
            let le = |k: usize| u32::from(u16::from_le_bytes([p[k], p[k + 1]]) & 0x3fff);
            pixels = le(i + 6) * le(i + 8);
        }
        (key, pixels)
    }

    fn vp8(layer: &Layer, start: bool, keyframe: bool) -> [u8; VP8_PREFIX] {
        let mut b = [0u8; VP8_PREFIX];
        let pos = FramePos {
            start,
            keyframe,
            picture_id: 0x1234,
            tl0: 7,
        };
        assert_eq!(write_vp8(&mut b, layer, pos), VP8_PREFIX);
        b
    }

    #[test]
    fn descriptor_bytes() {
        let b = vp8(&LAYERS[2], true, true);
        assert_eq!(
            b,
            [
                0x90, 0xc0, 0x92, 0x34, 7, // S, I+L, M|picture id, TL0PICIDX
                0x10, 0, 0, 0x9d, 0x01, 0x2a, 0x00, 0x05, 0xd0, 0x02 // 1280 x 720
            ]
        );
        let b = vp8(&LAYERS[0], false, true);
        assert_eq!(b[..5], [0x80, 0xc0, 0x92, 0x34, 7]);
    }

    #[test]
    fn keyframes_as_the_node_reads_them() {
        for l in &LAYERS {
            assert_eq!(
                node_reads(&vp8(l, true, true)),
                (true, u32::from(l.width) * u32::from(l.height))
            );
            // A delta frame's first packet, and any later packet of either kind.
            assert_eq!(node_reads(&vp8(l, true, false)), (false, 0));
            assert_eq!(node_reads(&vp8(l, false, true)), (false, 0));
            assert_eq!(node_reads(&vp8(l, false, false)), (false, 0));
        }
    }

    #[test]
    fn extension_block() {
        let mut b = [0xffu8; EXT_LEN];
        assert_eq!(write_extensions(&mut b, "h"), EXT_LEN);
        assert_eq!(b, [0xbe, 0xde, 0, 1, 0x40, b'0', 0xa0, b'h']);
        // And it parses as the bench's receivers (and the node) read RTP.
        let mut pkt = [0u8; 12 + EXT_LEN + 4];
        crate::packet::write_rtp_header(&mut pkt, 1, 2, 3, false);
        pkt[0] |= 0x10;
        write_extensions(&mut pkt[12..], "l");
        let info = crate::packet::parse_rtp(&pkt).expect("valid");
        assert_eq!(info.payload_offset, 12 + EXT_LEN);
    }

    #[test]
    fn layer_shapes_and_caps() {
        // Picture sizes and rates both rise with the rank: the node ranks by either.
        for w in LAYERS.windows(2) {
            assert!(w[0].width < w[1].width && w[0].height < w[1].height);
            assert!(w[0].bitrate < w[1].bitrate);
        }
        let s = SimulcastSpec {
            capped: SimulcastSpec::capped_of(0.5, 5),
            ..SimulcastSpec::default()
        };
        assert_eq!(s.capped, 3);
        assert_eq!(
            (0..5).map(|i| s.expected_layer(i)).collect::<Vec<_>>(),
            [0, 0, 0, 2, 2]
        );
        assert_eq!(SimulcastSpec::capped_of(2.0, 4), 4);
        assert_eq!(SimulcastSpec::capped_of(0.0, 4), 0);
        let s = SimulcastSpec {
            bitrates: [1, 2, 3],
            ..SimulcastSpec::default()
        };
        assert_eq!(s.layers().map(|l| l.bitrate), [1, 2, 3]);
    }

    #[test]
    fn offer_names_the_layers() {
        let o = offer_lines();
        assert!(o.contains("a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n"));
        assert!(o.contains("a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"));
        assert!(o.contains("a=rid:l send\r\n"));
        assert!(o.ends_with("a=simulcast:send h;m;l\r\n"));
    }
}

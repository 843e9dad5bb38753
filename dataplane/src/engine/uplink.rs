//! Uplink repair: the node NACKs a WebRTC publisher's lost packets (RFC 4585 §6.2.1) and
//! takes its RTX (RFC 4588) as the late original, so a loss between the publisher and the
//! node is repaired once instead of reaching every viewer and relay hop.
//!
//! Per slot (a track, or a simulcast layer: [`layers::slot`](super::layers::slot)) whose
//! codec negotiated `nack`, a [`GapTracker`] on [`SCHEDULE`]: a missing number is NACKed at
//! once, then every 50 ms, 5 times in all, and given up 250 ms after it went missing (50 ms
//! after the last NACK), when the slot gets one PLI through the usual throttle (a decoder
//! that lost a packet for good needs a keyframe). A quarter of a second is about what a viewer's jitter buffer waits for a
//! retransmission before it freezes or skips; asking later only brings a packet nobody
//! plays. A retransmission that is itself lost must be asked for again soon: Chromium
//! counts a freeze once a frame is ~180 ms late, and with a retry every 100 ms (our first
//! choice) the second RTX of a 40 ms uplink came too late about once per 5 repairs. A
//! NACK sent before the last one's RTX could arrive costs a few bytes: libwebrtc resends a
//! packet at most once per round trip, and a copy we already have is dropped here.
//!
//! RTX is found by its SSRC (`a=ssrc-group:FID`), its payload type (`apt`), or, for a
//! simulcast layer, its repaired-rid. [`unwrap`] turns it back into the original in the
//! pooled buffer (SSRC, sequence number from the OSN, payload type); ingress then forwards it
//! only if it fills a gap the tracker has, so a spurious retransmission of a packet that did
//! arrive is never sent twice, and padding-only probes (bandwidth estimation) are counted
//! for transport-cc and dropped. Nothing here allocates after [`Uplink::new`].

use std::time::Duration;

use switchyard_shared::command::{UplinkRtx, UplinkTrack, MAX_LAYERS, MAX_TRACKS};
use switchyard_shared::packet::rtp;

use super::layers::{self, MAX_SLOTS};
use super::relay::{GapTracker, Schedule};

/// Uplink NACK schedule: see the module doc for why these values.
pub const SCHEDULE: Schedule = Schedule {
    retry: Duration::from_millis(50),
    tries: 5,
    give_up: Duration::from_millis(250),
    wake_to_give_up: true,
};

/// Sequence numbers one NACK datagram names at most, over all of a publisher's slots: each
/// costs at most one 4-byte PID+BLP entry, so the compound stays well under the MTU.
pub const NUMBERS_PER_DATAGRAM: usize = 200;

/// One publisher's uplink repair state.
pub struct Uplink {
    /// Per slot: the gaps of a track (or layer) that negotiated `nack`; `None`: not NACKed.
    pub gaps: Vec<Option<GapTracker>>,
    /// Per track: its RTX stream.
    pub rtx: [Option<UplinkRtx>; MAX_TRACKS],
}

impl Uplink {
    /// The repair state for `spec` (track order), with a tracker for every layer of a
    /// `simulcast` publisher's tracks; `None` when no track asks for any repair.
    pub fn new(spec: &[UplinkTrack], simulcast: bool) -> Option<Box<Self>> {
        if !spec.iter().any(|t| t.nack || t.rtx.is_some()) {
            return None;
        }
        let layers = if simulcast { MAX_LAYERS } else { 1 };
        let mut gaps: Vec<Option<GapTracker>> = (0..MAX_SLOTS).map(|_| None).collect();
        gaps.truncate(if simulcast { MAX_SLOTS } else { MAX_TRACKS });
        let mut rtx = [None; MAX_TRACKS];
        for (t, u) in spec.iter().enumerate().take(MAX_TRACKS) {
            rtx[t] = u.rtx;
            if !u.nack {
                continue;
            }
            for l in 0..layers as u8 {
                if let Some(g) = gaps.get_mut(usize::from(layers::slot(t as u8, l))) {
                    *g = Some(GapTracker::with_schedule(SCHEDULE));
                }
            }
        }
        Some(Box::new(Self { gaps, rtx }))
    }

    /// The track whose RTX stream a packet with `ssrc` and payload type `pt` belongs to
    /// (a publisher without simulcast). At most [`MAX_TRACKS`] compares.
    pub fn rtx_track(&self, ssrc: u32, pt: u8) -> Option<u8> {
        self.rtx
            .iter()
            .position(|r| r.is_some_and(|r| r.ssrc == Some(ssrc) || r.payload_type == pt))
            .map(|t| t as u8)
    }

    /// The media payload type RTX of `track` with payload type `pt` repairs.
    pub fn apt(&self, track: u8, pt: u8) -> Option<u8> {
        let r = self.rtx.get(usize::from(track))?.as_ref()?;
        (r.payload_type == pt).then_some(r.apt)
    }

    /// The tracker of `slot`, if it is NACKed.
    pub fn tracker(&mut self, slot: u8) -> Option<&mut GapTracker> {
        self.gaps.get_mut(usize::from(slot))?.as_mut()
    }
}

/// Turn the RTX packet `buf[..len]` (header `h`, already parsed) back into the packet it
/// carries, in place: SSRC `media`, payload type `apt` (marker kept), sequence number from
/// the OSN, which is taken out of the payload. `h` is updated to match. Returns the new
/// length; `None` for a packet with no original payload (padding-only probes, a bare OSN)
/// or one too short to hold an OSN.
pub fn unwrap(
    buf: &mut [u8],
    len: usize,
    h: &mut rtp::Header,
    media: u32,
    apt: u8,
) -> Option<usize> {
    let end = len.checked_sub(h.padding_len)?;
    let at = h.payload_offset;
    // OSN plus at least one byte of the original payload.
    if end < at + 3 {
        return None;
    }
    let osn = u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?]);
    buf.copy_within(at + 2..len, at);
    rtp::set_ssrc(buf, media).ok()?;
    rtp::set_sequence(buf, osn).ok()?;
    let b1 = buf.get_mut(1)?;
    *b1 = (*b1 & 0x80) | (apt & 0x7f);
    h.ssrc = media;
    h.sequence = osn;
    h.payload_type = apt & 0x7f;
    Some(len - 2)
}

//! A viewer's estimator as the engine keeps it: with the header extension id the viewer's
//! answer gave transport-cc, the stamping of each packet it is sent, and its video budget.

use std::time::Instant;

use switchyard_shared::packet::rtp;
use switchyard_shared::srtp;

use super::Bwe;

/// Room kept for audio and RTCP when the estimate is split into a video budget.
pub const AUDIO_ALLOWANCE_BPS: u64 = 64_000;

/// A viewer's estimator and the header extension id its answer gave transport-cc.
pub struct ViewerBwe {
    pub ext: u8,
    pub bwe: Bwe,
}

impl ViewerBwe {
    /// Bits per second the viewer's video may use: the estimate less audio's share.
    pub fn video_budget(&self) -> u64 {
        self.bwe.estimate_bps().saturating_sub(AUDIO_ALLOWANCE_BPS)
    }

    /// Stamp the packet in `buf[..len]` (not yet protected) with the next transport-wide
    /// sequence number; the new length. A packet that cannot carry it goes out as it is
    /// (and is not counted in the estimate).
    pub fn stamp(&mut self, buf: &mut [u8], len: usize, now: Instant) -> usize {
        // Room for growing the header, and for the SRTP tag after it.
        let cap = buf.len().saturating_sub(srtp::MAX_OVERHEAD);
        let Some(room) = buf.get_mut(..cap) else {
            return len;
        };
        // A placeholder first: the packet is numbered only once the element fits, so the
        // history holds no packet that went out without it.
        let Ok((n, at)) = rtp::put_extension(room, len, self.ext, [0, 0]) else {
            return len;
        };
        // The size on the wire: the SRTP tag (10 bytes for the usual profile) included.
        let seq = self.bwe.on_send(n + 10, now);
        if let Some(v) = room.get_mut(at..at + 2) {
            v.copy_from_slice(&seq.to_be_bytes());
        }
        n
    }
}

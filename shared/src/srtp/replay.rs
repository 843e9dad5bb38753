//! Per-SSRC packet index tracking: the RFC 3711 §3.3.1 rollover counter estimate and the
//! §3.3.2 replay list as a 64-packet sliding bitmap. Nothing here is committed until the
//! caller has authenticated the packet, so forged packets cannot move the window or the ROC.

use super::Error;

/// Packets this far (or further) behind the highest authenticated index are rejected as
/// replays: RFC 3711 §3.3.2's minimum window, and what browsers use.
pub(crate) const WINDOW: u64 = 64;

/// Highest index seen for one SSRC, and which of the `WINDOW` indices below it arrived.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Window {
    /// Highest accepted index; meaningless until `bits != 0`.
    top: u64,
    /// Bit i set: index `top - i` was accepted. Zero means nothing accepted yet.
    bits: u64,
}

impl Window {
    /// The highest index accepted so far, if any.
    pub(crate) fn top(&self) -> Option<u64> {
        (self.bits != 0).then_some(self.top)
    }

    /// A window that has seen `top` and everything before it: what a context resumes from
    /// (see [`crate::journal`]), so nothing at or below `top` is accepted again.
    pub(crate) fn seen_up_to(top: u64) -> Self {
        Window { top, bits: !0 }
    }

    /// Whether `index` is new: ahead of the window, or inside it and not yet seen.
    pub(crate) fn check(&self, index: u64) -> Result<(), Error> {
        if self.bits == 0 || index > self.top {
            return Ok(());
        }
        let behind = self.top - index;
        if behind >= WINDOW || self.bits & (1 << behind) != 0 {
            return Err(Error::Replayed);
        }
        Ok(())
    }

    /// Records `index`; call only after `check` passed and the packet authenticated.
    pub(crate) fn accept(&mut self, index: u64) {
        if self.bits == 0 {
            self.top = index;
            self.bits = 1;
        } else if index > self.top {
            let ahead = index - self.top;
            self.bits = if ahead >= WINDOW {
                1
            } else {
                (self.bits << ahead) | 1
            };
            self.top = index;
        } else if self.top - index < WINDOW {
            self.bits |= 1 << (self.top - index);
        }
    }
}

/// RFC 3711 §3.3.1 / Appendix A: the 48-bit index (ROC << 16 | SEQ) a packet with `seq`
/// most likely has, given the highest index `top` seen on its SSRC (`None`: first packet,
/// taken to be ROC 0). `None` when the guess is ROC -1, a packet from before the stream
/// began, which no sender can have produced.
pub(crate) fn estimate(top: Option<u64>, seq: u16) -> Option<u64> {
    let Some(top) = top else {
        return Some(u64::from(seq));
    };
    let roc = top >> 16;
    let s_l = top as u16;
    let v = if s_l < 0x8000 {
        if u32::from(seq) > u32::from(s_l) + 0x8000 {
            roc.checked_sub(1)?
        } else {
            roc
        }
    } else if u32::from(s_l) - 0x8000 > u32::from(seq) {
        roc + 1
    } else {
        roc
    };
    // The ROC is 32 bits; masking keeps the index 48 bits even at the (unreachable) wrap.
    Some(((v & 0xffff_ffff) << 16) | u64::from(seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_accepts_new_and_rejects_replays() {
        let mut w = Window::default();
        assert_eq!(w.top(), None);
        assert_eq!(w.check(5), Ok(()));
        w.accept(5);
        assert_eq!(w.check(5), Err(Error::Replayed));
        assert_eq!(w.check(4), Ok(()));
        w.accept(4);
        assert_eq!(w.check(4), Err(Error::Replayed));
        w.accept(100);
        assert_eq!(w.top(), Some(100));
        assert_eq!(
            w.check(36),
            Err(Error::Replayed),
            "64 behind is outside the window"
        );
        assert_eq!(w.check(37), Ok(()));
        w.accept(37);
        assert_eq!(w.check(37), Err(Error::Replayed));
        assert_eq!(w.check(99), Ok(()));
        w.accept(100 + 1000);
        assert_eq!(w.check(100), Err(Error::Replayed));
        assert_eq!(w.check(1099), Ok(()));
    }

    #[test]
    fn estimate_follows_rollover() {
        assert_eq!(estimate(None, 7), Some(7));
        assert_eq!(estimate(Some(65535), 0), Some(65536));
        assert_eq!(estimate(Some(65536), 65535), Some(65535));
        assert_eq!(estimate(Some(10), 65530), None, "ROC -1");
        assert_eq!(
            estimate(Some((3 << 16) | 40000), 100),
            Some((4 << 16) | 100)
        );
        assert_eq!(
            estimate(Some((3 << 16) | 100), 30000),
            Some((3 << 16) | 30000)
        );
        assert_eq!(
            estimate(Some((3 << 16) | 100), 60000),
            Some((2 << 16) | 60000)
        );
    }
}

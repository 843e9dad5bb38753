//! The engine's deadlines as data (the shape of quinn's `connection/timer.rs`): one slot per
//! kind of work that time, not input, makes due. The engine answers
//! [`Engine::poll_timeout`](super::Engine::poll_timeout) from [`TimerTable::next_timeout`],
//! so its caller sleeps exactly until the earliest one instead of polling on a fixed beat.

use std::time::Instant;

/// A kind of periodic work. Each has one deadline in the table; what it covers and how it
/// is re-armed is in `periodic.rs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// Transport-cc feedback to the publishers that negotiated it, every
    /// [`twcc::FEEDBACK_INTERVAL`](super::twcc::FEEDBACK_INTERVAL) while there are any.
    Twcc = 0,
    /// Receiver reports to publishers, every [`rr::RR_INTERVAL`](super::rr::RR_INTERVAL).
    ReceiverReports = 1,
    /// The earliest NACK a relay-in's gap tracker has due upstream (at once for a new gap,
    /// then every [`relay::NACK_RETRY`](super::relay::NACK_RETRY)).
    RelayNacks = 2,
    /// The earliest retransmission or give-up of an ICE agent's own check
    /// ([`ice::RETRANSMIT_INTERVAL`](super::ice::RETRANSMIT_INTERVAL)).
    IceChecks = 3,
    /// The next look for lapsed ICE consent (`CONSENT_SWEEP`), while there are ICE sessions.
    ConsentSweep = 4,
    /// The earliest NACK (or give-up) a WebRTC publisher's uplink gap tracker has due
    /// ([`uplink::SCHEDULE`](super::uplink::SCHEDULE)).
    UplinkNacks = 5,
    /// Viewers' bandwidth estimates published and probes sent, every
    /// [`viewer_bwe::TICK`](super::viewer_bwe::TICK) while there are any.
    Bwe = 6,
    /// The next packets of late joiners' replays their pacers let through (`prime`).
    Replay = 7,
}

impl Timer {
    /// Every timer, in table order.
    pub const VALUES: [Timer; 8] = [
        Timer::Twcc,
        Timer::ReceiverReports,
        Timer::RelayNacks,
        Timer::IceChecks,
        Timer::ConsentSweep,
        Timer::UplinkNacks,
        Timer::Bwe,
        Timer::Replay,
    ];
}

/// One optional deadline per [`Timer`].
#[derive(Clone, Copy, Debug, Default)]
pub struct TimerTable {
    data: [Option<Instant>; Timer::VALUES.len()],
}

impl TimerTable {
    /// Arm `timer` for `at`, replacing its deadline.
    pub fn set(&mut self, timer: Timer, at: Instant) {
        self.data[timer as usize] = Some(at);
    }

    /// Arm `timer` for `at` unless it is due sooner already.
    pub fn set_earliest(&mut self, timer: Timer, at: Instant) {
        let slot = &mut self.data[timer as usize];
        *slot = Some(slot.map_or(at, |t| t.min(at)));
    }

    pub fn get(&self, timer: Timer) -> Option<Instant> {
        self.data[timer as usize]
    }

    pub fn stop(&mut self, timer: Timer) {
        self.data[timer as usize] = None;
    }

    /// Whether `timer` is armed and its deadline has come at `now`.
    pub fn is_due(&self, timer: Timer, now: Instant) -> bool {
        self.get(timer).is_some_and(|t| t <= now)
    }

    /// The earliest deadline of any timer.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.data.iter().flatten().min().copied()
    }
}

/// The earlier of two optional deadlines.
pub fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl TimerTable {
    /// A gap tracker was fed (a packet, or a viewer's NACK to ask upstream for): bring its
    /// NACK timer (`RelayNacks` for a relay link, `UplinkNacks` for a publisher's uplink)
    /// forward to its earliest due number. Costs nothing while nothing is lost
    /// (`pending() == 0`); otherwise a scan of at most `relay::MAX_MISSING`.
    pub fn note_gaps(&mut self, timer: Timer, gaps: &super::relay::GapTracker) {
        if gaps.pending() > 0 {
            if let Some(t) = gaps.next_due() {
                self.set_earliest(timer, t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_earliest_armed_deadline_is_next() {
        let t0 = crate::testing::t0();
        let ms = |m| t0 + Duration::from_millis(m);
        let mut t = TimerTable::default();
        assert_eq!(t.next_timeout(), None);
        t.set(Timer::ReceiverReports, ms(1000));
        t.set(Timer::RelayNacks, ms(30));
        assert_eq!(t.next_timeout(), Some(ms(30)));
        t.set_earliest(Timer::RelayNacks, ms(50));
        assert_eq!(
            t.get(Timer::RelayNacks),
            Some(ms(30)),
            "a later one never delays"
        );
        t.set_earliest(Timer::RelayNacks, ms(10));
        assert_eq!(t.next_timeout(), Some(ms(10)));
        assert!(t.is_due(Timer::RelayNacks, ms(10)));
        assert!(!t.is_due(Timer::RelayNacks, ms(9)));
        assert!(!t.is_due(Timer::Twcc, ms(5000)), "unarmed is never due");
        t.stop(Timer::RelayNacks);
        assert_eq!(t.next_timeout(), Some(ms(1000)));
    }
}

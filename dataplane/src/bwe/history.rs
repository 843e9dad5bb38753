//! What the node sent a viewer, by transport-wide sequence number: the send time and size a
//! transport-cc feedback entry is matched with. A fixed ring: nothing allocated per packet.

/// Packets remembered: about 4 s of a 2.5 Mbit/s viewer (260 packets/s); feedback arrives
/// every 50–100 ms, so anything older is a feedback that never came.
pub const CAPACITY: usize = 1024;

#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    /// Unwrapped sequence number (0: empty slot).
    seq: u64,
    pub at_us: i64,
    pub size: u16,
    /// The probe cluster the packet belongs to, 0: media.
    pub cluster: u16,
    acked: bool,
}

pub struct History {
    ring: Box<[Sent; CAPACITY]>,
    /// Next unwrapped sequence number to hand out; starts above 0 so 0 marks empty slots.
    next: u64,
}

impl Default for History {
    fn default() -> Self {
        History {
            ring: Box::new([Sent::default(); CAPACITY]),
            next: 1 << 16,
        }
    }
}

impl History {
    /// Record a packet of `size` bytes sent at `at_us`; returns the wire sequence number.
    pub fn push(&mut self, size: usize, at_us: i64, cluster: u16) -> u16 {
        let seq = self.next;
        self.next += 1;
        self.ring[(seq % CAPACITY as u64) as usize] = Sent {
            seq,
            at_us,
            size: size.min(usize::from(u16::MAX)) as u16,
            cluster,
            acked: false,
        };
        seq as u16
    }

    /// The packet a feedback names `seq`, the first time it is reported: a feedback repeats
    /// nothing we act on twice, and a sequence number too old for the ring is `None`.
    pub fn ack(&mut self, seq: u16) -> Option<Sent> {
        let last = self.next.checked_sub(1)?;
        let back = u64::from((last as u16).wrapping_sub(seq));
        let full = last.checked_sub(back)?;
        let slot = &mut self.ring[(full % CAPACITY as u64) as usize];
        if slot.seq != full || slot.acked || back >= CAPACITY as u64 {
            return None;
        }
        slot.acked = true;
        Some(*slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_once_and_forgets_what_the_ring_overwrote() {
        let mut h = History::default();
        let first = h.push(100, 5, 0);
        for i in 1..10 {
            h.push(100 + i, 5 + i as i64, 0);
        }
        let s = h.ack(first.wrapping_add(3)).expect("known");
        assert_eq!((s.size, s.at_us), (103, 8));
        assert!(h.ack(first.wrapping_add(3)).is_none(), "acked once");
        assert!(h.ack(first.wrapping_add(10)).is_none(), "not sent yet");
        for _ in 0..CAPACITY {
            h.push(1, 0, 0);
        }
        assert!(h.ack(first).is_none(), "overwritten");
        // Wrap-around of the 16-bit wire numbers.
        let mut h = History::default();
        let mut last = 0;
        for _ in 0..70_000 {
            last = h.push(1, 0, 0);
        }
        assert!(h.ack(last).is_some());
        assert!(h.ack(last.wrapping_sub(5)).is_some());
    }
}

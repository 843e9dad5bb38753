//! Which queued datagrams can leave as one `UDP_SEGMENT` (GSO) message: sans-IO planning
//! of a send queue, tested without sockets.
//!
//! A fan-out turn queues one copy of each received packet per subscriber, so the queue reads
//! `p1→A p1→B p1→C p2→A p2→B …`. The kernel walks every datagram of a `sendmmsg` through
//! its whole UDP/IP path; a `UDP_SEGMENT` message walks it once for a run of datagrams to
//! one destination (and, on a NIC with segmentation offload, once more in hardware). The
//! planner groups the queue by destination — keeping each destination's datagrams in their
//! queue order, which is all a receiver can see — and cuts each group into runs the kernel
//! accepts:
//!
//! - every datagram of a run but the last has the run's segment size (the first one's
//!   length); the last may be shorter, and ends the run (the kernel cuts the payload every
//!   `segment` bytes, so only the tail may be short);
//! - at most [`MAX_SEGMENTS`] datagrams (`UDP_MAX_SEGMENTS`, 64 before Linux 6.9);
//! - at most [`MAX_BYTES`] of payload: one IP datagram's limit less the IPv4 and UDP
//!   headers (65,535 − 20 − 8). The kernel refuses a larger one with `EMSGSIZE`, and
//!   64 × 1,200 bytes is over it (moonshine#157 lost whole frames to exactly this).
//!
//! Destinations the caller rules out (GSO off, or the kernel refused a segmented message to
//! them, see `io/gso.rs`) get one message per datagram, in the same grouped order.
//!
//! Everything is sized once for a window of queued datagrams; planning allocates nothing.

/// Most datagrams in one message: the kernel's `UDP_MAX_SEGMENTS` (64 until Linux 6.9
/// raised it to 128; 64 works on every kernel with GSO).
pub(crate) const MAX_SEGMENTS: usize = 64;

/// Most payload bytes in one message: 65,535 (the IP total length field) − 20 (IPv4
/// header) − 8 (UDP header). IPv6 allows 20 bytes more; one bound serves both.
pub(crate) const MAX_BYTES: usize = 65_507;

/// Largest segment the kernel accepts in the `UDP_SEGMENT` control message (a u16), and
/// any real datagram here is far below it.
const MAX_SEGMENT_SIZE: usize = u16::MAX as usize;

/// What the planner needs to know about the datagram in a queue slot.
pub(crate) trait Queued {
    /// Bytes of the datagram.
    fn len(&self, slot: u32) -> usize;
    /// A hash of where it goes: equal for [`Queued::same_route`] slots.
    fn route_hash(&self, slot: u32) -> u64;
    /// Whether both go to the same destination from the same source address, so they can
    /// share one message header.
    fn same_route(&self, a: u32, b: u32) -> bool;
    /// Whether datagrams going where `slot` goes may be segmented (asked once per
    /// destination per plan).
    fn may_segment(&self, slot: u32) -> bool;
}

/// One message of a plan: the next `count` slots of the reordered queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Msg {
    /// Datagrams in the message (1 ..= [`MAX_SEGMENTS`]).
    pub(crate) count: u16,
    /// Segment size when `count > 1` (every datagram but the last has this length); 0 for
    /// a single datagram.
    pub(crate) segment: u16,
    /// On the first message of a destination: how many datagrams that destination had in
    /// the planned window (what segmentation could at best have joined); 0 on the others.
    pub(crate) batch: u16,
}

/// One destination's datagrams in the window: a linked list through `Planner::next`.
#[derive(Clone, Copy, Debug)]
struct Group {
    hash: u64,
    /// Its first slot, the one `same_route` compares against.
    first: u32,
    head: u32,
    tail: u32,
    count: u32,
}

const NONE: u32 = u32::MAX;

/// Plans windows of up to `window` datagrams. Owns its scratch; reuse it.
#[derive(Debug)]
pub(crate) struct Planner {
    window: usize,
    /// Open addressing, group index + 1 (0: empty); twice the window, a power of two.
    table: Box<[u32]>,
    /// Table entries filled this plan, cleared at the next.
    touched: Vec<u32>,
    groups: Vec<Group>,
    /// The window's slots in queue order, and per position the next position of the same
    /// destination.
    queued: Vec<u32>,
    next: Vec<u32>,
    /// The window's slots in planned order.
    order: Vec<u32>,
    /// The plan's messages; their counts add up to `order.len()`.
    msgs: Vec<Msg>,
}

impl Planner {
    /// Scratch for windows of up to `window` datagrams (at least 1).
    pub(crate) fn new(window: usize) -> Self {
        let window = window.max(1);
        let table = (2 * window).next_power_of_two();
        Self {
            window,
            table: vec![0; table].into_boxed_slice(),
            touched: Vec::with_capacity(window),
            groups: Vec::with_capacity(window),
            queued: Vec::with_capacity(window),
            next: Vec::with_capacity(window),
            order: Vec::with_capacity(window),
            msgs: Vec::with_capacity(window),
        }
    }

    /// The planned window's slots: grouped by destination (destinations in order of first
    /// appearance), each destination's in their queue order.
    pub(crate) fn order(&self) -> &[u32] {
        &self.order
    }

    /// The messages that cut [`Planner::order`], in order.
    pub(crate) fn msgs(&self) -> &[Msg] {
        &self.msgs
    }

    /// Plan the first [`Planner::window`] slots of `queue` (given in queue order).
    pub(crate) fn plan(&mut self, queue: impl IntoIterator<Item = u32>, q: &impl Queued) {
        self.group(queue, q);
        self.cut(q);
    }

    /// Sort the window into destination groups (linked lists through `next`).
    fn group(&mut self, queue: impl IntoIterator<Item = u32>, q: &impl Queued) {
        for &t in &self.touched {
            if let Some(e) = self.table.get_mut(t as usize) {
                *e = 0;
            }
        }
        self.touched.clear();
        self.groups.clear();
        self.queued.clear();
        self.next.clear();
        let mask = self.table.len() - 1;
        for slot in queue.into_iter().take(self.window) {
            let pos = self.queued.len() as u32;
            self.queued.push(slot);
            self.next.push(NONE);
            let hash = q.route_hash(slot);
            let mut t = (hash as usize) & mask;
            loop {
                let e = self.table[t];
                if e == 0 {
                    self.table[t] = self.groups.len() as u32 + 1;
                    self.touched.push(t as u32);
                    self.groups.push(Group {
                        hash,
                        first: slot,
                        head: pos,
                        tail: pos,
                        count: 1,
                    });
                    break;
                }
                let g = &mut self.groups[e as usize - 1];
                if g.hash == hash && q.same_route(g.first, slot) {
                    self.next[g.tail as usize] = pos;
                    g.tail = pos;
                    g.count += 1;
                    break;
                }
                // The table has twice the window's entries: an empty one is always ahead.
                t = (t + 1) & mask;
            }
        }
    }

    /// Walk the groups in order, writing `order` and cutting each group into messages.
    fn cut(&mut self, q: &impl Queued) {
        self.order.clear();
        self.msgs.clear();
        for g in &self.groups {
            let segmentable = q.may_segment(g.first);
            let mut batch = g.count.min(u32::from(u16::MAX)) as u16;
            let mut pos = g.head;
            while pos != NONE {
                let slot = self.queued[pos as usize];
                self.order.push(slot);
                let len = q.len(slot);
                let mut count = 1usize;
                let mut bytes = len;
                pos = self.next[pos as usize];
                if segmentable && len > 0 && len <= MAX_SEGMENT_SIZE {
                    while pos != NONE && count < MAX_SEGMENTS {
                        let s = self.queued[pos as usize];
                        let l = q.len(s);
                        if l > len || l == 0 || bytes + l > MAX_BYTES {
                            break;
                        }
                        self.order.push(s);
                        count += 1;
                        bytes += l;
                        pos = self.next[pos as usize];
                        if l < len {
                            break; // a shorter datagram can only be the last segment
                        }
                    }
                }
                self.msgs.push(Msg {
                    count: count as u16,
                    segment: if count > 1 { len as u16 } else { 0 },
                    batch,
                });
                batch = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue described by (destination, length) per slot; slot i is entry i.
    struct Fake {
        items: Vec<(u32, usize)>,
        /// Destinations that may not be segmented.
        refused: Vec<u32>,
        /// Force every destination onto one hash bucket (collision handling).
        collide: bool,
    }

    impl Fake {
        fn new(items: &[(u32, usize)]) -> Self {
            Self {
                items: items.to_vec(),
                refused: Vec::new(),
                collide: false,
            }
        }
    }

    impl Queued for Fake {
        fn len(&self, slot: u32) -> usize {
            self.items[slot as usize].1
        }
        fn route_hash(&self, slot: u32) -> u64 {
            if self.collide {
                7
            } else {
                u64::from(self.items[slot as usize].0).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            }
        }
        fn same_route(&self, a: u32, b: u32) -> bool {
            self.items[a as usize].0 == self.items[b as usize].0
        }
        fn may_segment(&self, slot: u32) -> bool {
            !self.refused.contains(&self.items[slot as usize].0)
        }
    }

    fn plan(f: &Fake, window: usize) -> (Vec<u32>, Vec<(u16, u16, u16)>) {
        let mut p = Planner::new(window);
        p.plan(0..f.items.len() as u32, f);
        let msgs = p
            .msgs()
            .iter()
            .map(|m| (m.count, m.segment, m.batch))
            .collect();
        (p.order().to_vec(), msgs)
    }

    /// The fan-out shape: three packets to each of three subscribers, interleaved.
    #[test]
    fn groups_by_destination_keeping_each_ones_order() {
        let mut items = Vec::new();
        for _packet in 0..3 {
            for dest in [10, 20, 30] {
                items.push((dest, 1200));
            }
        }
        let (order, msgs) = plan(&Fake::new(&items), 64);
        assert_eq!(order, [0, 3, 6, 1, 4, 7, 2, 5, 8]);
        assert_eq!(msgs, [(3, 1200, 3), (3, 1200, 3), (3, 1200, 3)]);
    }

    #[test]
    fn a_shorter_datagram_ends_a_run_a_longer_one_starts_the_next() {
        let f = Fake::new(&[
            (1, 1200),
            (1, 1200),
            (1, 900),
            (1, 1200),
            (1, 1300),
            (1, 1300),
        ]);
        let (order, msgs) = plan(&f, 64);
        assert_eq!(order, [0, 1, 2, 3, 4, 5]);
        // 1200 1200 900 | 1200 | 1300 1300
        assert_eq!(msgs, [(3, 1200, 6), (1, 0, 0), (2, 1300, 0)]);
    }

    #[test]
    fn sixty_four_segments_at_most() {
        let items = vec![(5, 100); 130];
        let (_, msgs) = plan(&Fake::new(&items), 256);
        assert_eq!(msgs, [(64, 100, 130), (64, 100, 0), (2, 100, 0)]);
    }

    #[test]
    fn no_message_over_the_ip_limit() {
        // 54 × 1,200 = 64,800 fits; a 55th would not (66,000 > 65,507).
        let items = vec![(5, 1200); 60];
        let (_, msgs) = plan(&Fake::new(&items), 64);
        assert_eq!(msgs, [(54, 1200, 60), (6, 1200, 0)]);
        // A short tail that still fits joins: 54 × 1,200 + 700 = 65,500.
        let mut items = vec![(5, 1200); 54];
        items.push((5, 700));
        let (_, msgs) = plan(&Fake::new(&items), 64);
        assert_eq!(msgs, [(55, 1200, 55)]);
        let total: usize = 54 * 1200 + 700;
        assert!(total <= MAX_BYTES);
    }

    #[test]
    fn refused_destinations_go_one_datagram_per_message() {
        let mut f = Fake::new(&[(1, 500), (2, 500), (1, 500), (2, 500)]);
        f.refused.push(2);
        let (order, msgs) = plan(&f, 64);
        assert_eq!(order, [0, 2, 1, 3]);
        assert_eq!(msgs, [(2, 500, 2), (1, 0, 2), (1, 0, 0)]);
    }

    #[test]
    fn hash_collisions_never_merge_destinations() {
        let mut f = Fake::new(&[(1, 300), (2, 300), (1, 300), (3, 300), (2, 300)]);
        f.collide = true;
        let (order, msgs) = plan(&f, 64);
        assert_eq!(order, [0, 2, 1, 4, 3]);
        assert_eq!(msgs, [(2, 300, 2), (2, 300, 2), (1, 0, 1)]);
    }

    #[test]
    fn only_the_window_is_planned_and_scratch_is_reused() {
        let items: Vec<(u32, usize)> = (0..10).map(|i| (i % 2, 100)).collect();
        let f = Fake::new(&items);
        let mut p = Planner::new(4);
        p.plan(0..10, &f);
        assert_eq!(p.order(), [0, 2, 1, 3]);
        // A second plan of another queue starts from a clean table.
        p.plan([9, 8, 7], &f);
        assert_eq!(p.order(), [9, 7, 8]);
        assert_eq!(p.msgs().iter().map(|m| m.count).collect::<Vec<_>>(), [2, 1]);
    }

    /// Every slot appears once, and each destination's slots keep their queue order, for
    /// arbitrary interleavings and sizes.
    #[test]
    fn plans_are_permutations_that_keep_per_destination_order() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        let mut p = Planner::new(512);
        for _ in 0..200 {
            let n = 1 + rnd(400) as usize;
            let dests = 1 + rnd(40) as u32;
            let items: Vec<(u32, usize)> = (0..n)
                .map(|_| {
                    (
                        rnd(u64::from(dests)) as u32,
                        [100, 1200, 1200, 1199, 1500][rnd(5) as usize],
                    )
                })
                .collect();
            let f = Fake::new(&items);
            p.plan(0..n as u32, &f);
            let mut seen = vec![false; n];
            for &s in p.order() {
                assert!(!seen[s as usize], "slot twice");
                seen[s as usize] = true;
            }
            assert!(seen.iter().all(|&b| b));
            for d in 0..dests {
                let mine: Vec<u32> = p
                    .order()
                    .iter()
                    .copied()
                    .filter(|&s| items[s as usize].0 == d)
                    .collect();
                assert!(mine.windows(2).all(|w| w[0] < w[1]), "order kept for {d}");
            }
            // Messages: one destination each, sizes the kernel accepts.
            let mut at = 0usize;
            for m in p.msgs() {
                let slots = &p.order()[at..at + usize::from(m.count)];
                at += usize::from(m.count);
                assert!(slots
                    .iter()
                    .all(|&s| items[s as usize].0 == items[slots[0] as usize].0));
                assert!(usize::from(m.count) <= MAX_SEGMENTS);
                let lens: Vec<usize> = slots.iter().map(|&s| items[s as usize].1).collect();
                assert!(lens.iter().sum::<usize>() <= MAX_BYTES || m.count == 1);
                if m.count > 1 {
                    let seg = usize::from(m.segment);
                    assert!(lens[..lens.len() - 1].iter().all(|&l| l == seg));
                    assert!(lens[lens.len() - 1] <= seg);
                }
            }
            assert_eq!(at, n);
        }
    }
}

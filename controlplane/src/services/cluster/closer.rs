//! When this node closes the rooms placed on it through `/v1/rooms`. Sans-IO: fed what
//! happened (a session joined, a room emptied, the store's list of this node's rooms) and the
//! time, it answers which rooms are due; `events::run` does the store calls and the timers.
//!
//! Two ways a room closes:
//! - it **emptied**: its last session ended and none joined for `room_close_grace_ms`;
//! - nobody **ever joined**: no session for `room_idle_timeout_ms` after its creation (a room
//!   created and then abandoned would otherwise hold its reservation forever).
//!
//! The second needs the room's creation, which may have happened on another control plane
//! (Redis): the node learns its rooms from the store ([`Closer::sync`]), so the deadline runs
//! from the room's creation (or its move here off a dead node: `placed_ms`), not from when
//! this node first saw it.

use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Watch {
    /// A session is (or was last seen) live: no deadline.
    Active,
    /// Closes at this time (ms since the epoch) unless a session is live then.
    Until(u64),
}

#[derive(Debug)]
pub(crate) struct Closer {
    grace_ms: u64,
    idle_ms: u64,
    rooms: HashMap<String, Watch>,
}

impl Closer {
    pub(crate) fn new(grace_ms: u64, idle_ms: u64) -> Self {
        Self {
            grace_ms,
            idle_ms,
            rooms: HashMap::new(),
        }
    }

    /// A session of `room` started: it stays open while anyone is in it.
    pub(crate) fn joined(&mut self, room: &str) {
        self.rooms.insert(room.to_owned(), Watch::Active);
    }

    /// The last session of `room` ended at `now`: it closes after the grace period.
    pub(crate) fn emptied(&mut self, room: &str, now: u64) {
        self.rooms.insert(
            room.to_owned(),
            Watch::Until(now.saturating_add(self.grace_ms)),
        );
    }

    /// `room` is not (or no longer) this node's to close.
    pub(crate) fn forget(&mut self, room: &str) {
        self.rooms.remove(room);
    }

    /// The store's current list of this node's rooms, `(room, placed_ms)`: when each came
    /// here, its creation or its move off a dead node. A room not seen before gets the idle
    /// deadline from then; rooms the store no longer has are
    /// forgotten (deleted, or closed by another path). Rooms already watched keep their state:
    /// a join or an emptying is newer news than the creation time.
    pub(crate) fn sync<'a>(&mut self, rooms: impl IntoIterator<Item = (&'a str, u64)>) {
        let mut listed = HashMap::new();
        for (room, created_ms) in rooms {
            let until = created_ms.saturating_add(self.idle_ms);
            listed.insert(
                room.to_owned(),
                self.rooms.get(room).copied().unwrap_or(Watch::Until(until)),
            );
        }
        self.rooms = listed;
    }

    /// The earliest deadline, if any room has one.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.rooms
            .values()
            .filter_map(|w| match w {
                Watch::Until(t) => Some(*t),
                Watch::Active => None,
            })
            .min()
    }

    /// The rooms to close at `now`: past their deadline with no live session (`live` says how
    /// many a room has). They are forgotten; a room found live instead is watched as active.
    pub(crate) fn due(&mut self, now: u64, live: impl Fn(&str) -> usize) -> Vec<String> {
        let mut close = Vec::new();
        for (room, watch) in &mut self.rooms {
            if let Watch::Until(t) = *watch {
                if t <= now {
                    if live(room) > 0 {
                        *watch = Watch::Active;
                    } else {
                        close.push(room.clone());
                    }
                }
            }
        }
        for room in &close {
            self.rooms.remove(room);
        }
        close.sort();
        close
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: u64 = 30_000;
    const IDLE: u64 = 300_000;

    fn none(_: &str) -> usize {
        0
    }

    #[test]
    fn a_room_nobody_joins_closes_after_the_idle_timeout_from_its_creation() {
        let mut c = Closer::new(GRACE, IDLE);
        // Created at t=1000 (perhaps by another control plane), seen here at t=6000.
        c.sync([("lonely", 1_000)]);
        assert_eq!(c.next_deadline(), Some(1_000 + IDLE));
        assert!(c.due(1_000 + IDLE - 1, none).is_empty());
        // Seeing it again in a later listing does not push the deadline back.
        c.sync([("lonely", 1_000)]);
        assert_eq!(c.due(1_000 + IDLE, none), ["lonely"]);
        // Closed once: forgotten, never due again.
        assert_eq!(c.next_deadline(), None);
        assert!(c.due(u64::MAX, none).is_empty());
    }

    #[test]
    fn a_join_before_the_idle_timeout_keeps_the_room() {
        let mut c = Closer::new(GRACE, IDLE);
        c.sync([("meet", 0)]);
        c.joined("meet");
        assert_eq!(c.next_deadline(), None);
        assert!(c.due(10 * IDLE, none).is_empty());
        // The listing does not reset a room someone joined.
        c.sync([("meet", 0)]);
        assert!(c.due(10 * IDLE, none).is_empty());
        // It empties: the grace period, not the idle timeout, from the moment it emptied.
        c.emptied("meet", 20 * IDLE);
        assert!(c.due(20 * IDLE + GRACE - 1, none).is_empty());
        assert_eq!(c.due(20 * IDLE + GRACE, none), ["meet"]);
    }

    #[test]
    fn a_room_with_live_sessions_is_never_closed() {
        // Sessions this node did not announce (e.g. they predate the room): the session table
        // is the truth at the deadline.
        let mut c = Closer::new(GRACE, IDLE);
        c.sync([("busy", 0), ("empty", 0)]);
        let live = |r: &str| usize::from(r == "busy");
        assert_eq!(c.due(IDLE, live), ["empty"]);
        // Watched as active now; it closes only after it empties and the grace passes.
        assert!(c.due(10 * IDLE, none).is_empty());
        c.emptied("busy", 10 * IDLE);
        assert_eq!(c.due(10 * IDLE + GRACE, none), ["busy"]);
    }

    #[test]
    fn a_rejoin_within_the_grace_period_cancels_the_close() {
        let mut c = Closer::new(GRACE, IDLE);
        c.joined("r");
        c.emptied("r", 100);
        c.joined("r");
        assert!(c.due(100 + GRACE, none).is_empty());
        c.emptied("r", 200);
        assert!(
            c.due(100 + GRACE, none).is_empty(),
            "the later leave's clock"
        );
        assert_eq!(c.due(200 + GRACE, none), ["r"]);
    }

    #[test]
    fn rooms_gone_from_the_store_or_elsewhere_are_forgotten() {
        let mut c = Closer::new(GRACE, IDLE);
        c.sync([("a", 0), ("b", 0)]);
        c.sync([("b", 0)]); // a was deleted
        c.forget("b"); // b now lives on another node
        assert_eq!(c.next_deadline(), None);
        assert!(c.due(IDLE, none).is_empty());
        // Earliest deadline first among several.
        c.sync([("late", 50), ("early", 10)]);
        assert_eq!(c.next_deadline(), Some(10 + IDLE));
        assert_eq!(c.due(50 + IDLE, none), ["early", "late"]);
    }
}

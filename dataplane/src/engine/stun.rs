//! The engine's side of ICE-lite: STUN from peers goes to the session's
//! [`IceAgent`](super::ice::IceAgent), found by ufrag or by the transaction id of the
//! agent's own check; the agent's checks go out; a session moves only to an address that
//! answered one.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use ring::rand::SystemRandom;
use switchyard_shared::packet;
use switchyard_shared::stats::{Counter, DropReason};

use super::timer::Timer;
use super::{ice, Engine, Output};
use crate::via::Via;

impl Engine {
    /// ICE: a connectivity check from the peer is answered if it authenticates; an answer to
    /// one of the agent's own checks (sent to verify a new address, see [`ice`]) is found by
    /// its transaction id. Either may move the session's address, when the agent says so.
    /// Anything else STUN is counted and dropped unanswered.
    ///
    /// `dst` is the node's address the message came to. An answer leaves from it (the peer
    /// checked that pair and discards an answer from another address), and the session's
    /// [`local`](super::session::Session::local) becomes it only when the message proved
    /// itself: a valid check from the session's address, or one that moved the session.
    pub(super) fn on_stun(
        &mut self,
        data: &[u8],
        (src, dst): (SocketAddr, Option<IpAddr>),
        at: Instant,
        out: &mut dyn Output,
    ) {
        use packet::stun::Class;
        let Ok(msg) = packet::stun::Message::parse(data) else {
            return self.drop_packet(DropReason::Stun);
        };
        let idx = match msg.class {
            Class::Request => ice::addressed_ufrag(&msg).and_then(|u| self.by_ufrag.get(u)),
            Class::Success => self.ice_transactions.get(&msg.transaction_id),
            Class::Indication | Class::Error => None,
        };
        let Some(&idx) = idx else {
            return self.drop_packet(DropReason::Stun);
        };
        if self.by_addr.get(&src).is_some_and(|&other| other != idx) {
            // Another session owns this 5-tuple, so this one can never move there: no
            // answer, so the peer sees the pair fail and uses another, and no check of ours.
            return self.drop_packet(DropReason::Stun);
        }
        let (verdict, sent) = {
            let Some(s) = self.sessions.get_mut(idx) else {
                return self.drop_packet(DropReason::Stun);
            };
            let current = s.remote;
            let Some(agent) = s.ice.as_mut() else {
                return self.drop_packet(DropReason::Stun);
            };
            let verdict = match msg.class {
                Class::Request => {
                    agent.handle_request(&msg, current, (src, dst), at, &SystemRandom::new())
                }
                _ => agent.handle_response(&msg, src, at),
            };
            let Ok(verdict) = verdict else {
                return self.drop_packet(DropReason::Stun);
            };
            // A consent check from where the session is: the peer may have switched to
            // another of the node's addresses for the same remote.
            if verdict == ice::Validated::Same && current == Some(src) {
                if let Some(d) = dst {
                    s.local = Some(d);
                }
            }
            let agent: &ice::IceAgent = agent;
            let mut len = 0usize;
            let sent = (msg.class == Class::Request).then(|| {
                out.send_from(Via::Media, src, dst, &mut |buf| {
                    let n = agent.write_success(&msg, src, buf)?;
                    len = n;
                    Some(n)
                })
                .map(|()| len)
            });
            (verdict, sent)
        };
        match sent {
            Some(Ok(len)) => {
                self.count(Counter::TxPackets, 1);
                self.count(Counter::TxBytes, len as u64);
            }
            Some(Err(_)) => self.drop_packet(DropReason::QueueFull),
            None => {}
        }
        // A new address gets its first check right after the answer.
        self.drive_ice(idx, at, out);
        if verdict == ice::Validated::Moved {
            self.move_session(idx, src, dst);
        }
    }

    /// ICE moved session `idx` to `src`, which no other session holds (checked by `on_stun`),
    /// with the message that moved it sent to the node's address `dst`.
    fn move_session(&mut self, idx: u32, src: SocketAddr, dst: Option<IpAddr>) {
        let Some(s) = self.sessions.get_mut(idx) else {
            return;
        };
        // The pair the peer proved is (src, dst): sending from anything else would not
        // reach it. Without a `dst` (a kernel that did not say) the kernel keeps choosing.
        s.local = dst;
        if let Some(old) = s.remote.replace(src) {
            self.by_addr.remove(&old);
        }
        self.by_addr.insert(src, idx);
        self.latched(idx);
    }

    /// Send the checks session `idx`'s ICE agent has due, forget the transactions it ended,
    /// and keep `next_ice` at its next deadline.
    fn drive_ice(&mut self, idx: u32, now: Instant, out: &mut dyn Output) {
        let Some(agent) = self.sessions.get_mut(idx).and_then(|s| s.ice.as_mut()) else {
            return;
        };
        let (mut sent, mut bytes, mut full) = (0u64, 0u64, 0u64);
        while let Some(p) = agent.poll(now) {
            match p {
                ice::Poll::Check {
                    to,
                    from,
                    transaction_id,
                } => {
                    self.ice_transactions.insert(transaction_id, idx);
                    let a: &ice::IceAgent = agent;
                    let mut len = 0usize;
                    let r = out.send_from(Via::Media, to, from, &mut |buf| {
                        let n = a.write_check(&transaction_id, buf)?;
                        len = n;
                        Some(n)
                    });
                    match r {
                        Ok(()) => {
                            sent += 1;
                            bytes += len as u64;
                        }
                        // The next transmission of the same check covers it.
                        Err(_) => full += 1,
                    }
                }
                ice::Poll::Forget(t) => {
                    self.ice_transactions.remove(&t);
                }
            }
        }
        if let Some(t) = agent.poll_timeout() {
            self.timers.set_earliest(Timer::IceChecks, t);
        }
        self.count(Counter::TxPackets, sent);
        self.count(Counter::TxBytes, bytes);
        if full > 0 {
            self.count(DropReason::QueueFull.counter(), full);
        }
    }

    /// Retransmissions and timeouts of the agents' checks in flight (`Timer::IceChecks` is
    /// due): only the sessions that have a check in flight, each of which re-arms the timer
    /// for its own next deadline.
    pub(super) fn drive_ice_checks(&mut self, now: Instant, out: &mut dyn Output) {
        self.timers.stop(Timer::IceChecks);
        if self.ice_transactions.is_empty() {
            return;
        }
        let mut due: Vec<u32> = self.ice_transactions.values().copied().collect();
        due.sort_unstable();
        due.dedup();
        for idx in due {
            self.drive_ice(idx, now, out);
        }
    }
}

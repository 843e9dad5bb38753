//! Commands on their way to workers, with the back-pressure made explicit.
//!
//! A worker's command queue (`Mailbox::commands`, 4096) fills only when that worker is stuck
//! or far behind: the control plane waits for each answer. A command that does not fit waits
//! here, per worker and in order, so a later command never overtakes an earlier one to the
//! same worker (keys after their session, a removal after its add). While anything waits,
//! the slow path reads no more commands from the ring ([`SlowPath::paused`]), so the control
//! plane meets back-pressure on its command ring (503s) instead of this process growing;
//! meanwhile the slow path keeps turning: worker events, DTLS handshakes and the event ring
//! go on. (It used to sleep in a loop until the worker made room, which stopped all of that
//! too.)
//!
//! What waits is bounded without a limit of its own: ring commands stop at the first one
//! that has to wait (each makes at most `workers + 2` commands), and everything else that
//! sends commands does so a bounded number of times per live session (its DTLS flights, its
//! keys, its end, the routing changes its end causes).
//!
//! [`SlowPath::paused`]: super::SlowPath

use std::collections::VecDeque;
use std::sync::Arc;

use crate::engine::WorkerCommand;
use crate::worker::Mailbox;

/// Per worker, the commands its queue had no room for, oldest first.
pub struct Outbox {
    waiting: Vec<VecDeque<WorkerCommand>>,
    /// Commands waiting, all workers together.
    len: usize,
}

impl Outbox {
    pub fn new(workers: usize) -> Self {
        Self {
            waiting: (0..workers).map(|_| VecDeque::new()).collect(),
            len: 0,
        }
    }

    /// Commands waiting for room in some worker's queue.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hand `cmd` to worker `w` now if its queue has room and nothing waits for it, else
    /// keep it, behind what waits already. A worker that does not exist gets nothing.
    pub fn send(&mut self, mailboxes: &[Arc<Mailbox>], w: u16, cmd: WorkerCommand) {
        let (Some(mb), Some(queue)) = (
            mailboxes.get(usize::from(w)),
            self.waiting.get_mut(usize::from(w)),
        ) else {
            return;
        };
        if queue.is_empty() {
            match mb.commands.push(cmd) {
                Ok(()) => return mb.wake_now(),
                Err(back) => queue.push_back(back),
            }
        } else {
            queue.push_back(cmd);
        }
        self.len += 1;
        mb.wake_now();
    }

    /// Hand `cmd` to worker `w` only if that can happen now, in order, else drop it; returns
    /// whether it went. For what is not worth waiting for (a relayed data channel frame,
    /// already late when the worker is behind).
    #[must_use]
    pub fn try_send(&mut self, mailboxes: &[Arc<Mailbox>], w: u16, cmd: WorkerCommand) -> bool {
        let (Some(mb), Some(queue)) = (
            mailboxes.get(usize::from(w)),
            self.waiting.get(usize::from(w)),
        ) else {
            return false;
        };
        if !queue.is_empty() || mb.commands.push(cmd).is_err() {
            return false;
        }
        mb.wake_now();
        true
    }

    /// Move what waits into the workers' queues, in order, as far as they have room.
    pub fn flush(&mut self, mailboxes: &[Arc<Mailbox>]) {
        if self.len == 0 {
            return;
        }
        for (queue, mb) in self.waiting.iter_mut().zip(mailboxes) {
            let mut moved = false;
            while let Some(cmd) = queue.pop_front() {
                if let Err(back) = mb.commands.push(cmd) {
                    queue.push_front(back);
                    break;
                }
                self.len -= 1;
                moved = true;
            }
            if moved || !queue.is_empty() {
                mb.wake_now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use switchyard_shared::command::SessionId;

    use super::*;

    fn remove(id: u64) -> WorkerCommand {
        WorkerCommand::Remove { id: SessionId(id) }
    }

    fn ids(mb: &Mailbox) -> Vec<u64> {
        std::iter::from_fn(|| mb.commands.pop())
            .map(|c| match c {
                WorkerCommand::Remove { id } => id.0,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    /// A full worker queue: the command waits here (no sleeping), later ones queue behind
    /// it, and they all arrive in order once the worker makes room.
    #[test]
    fn a_full_worker_queue_keeps_commands_in_order_without_blocking() {
        let mailboxes: Vec<Arc<Mailbox>> = (0..2).map(|_| Arc::new(Mailbox::new(4))).collect();
        let cap = mailboxes[0].commands.capacity() as u64;
        let mut o = Outbox::new(2);
        for id in 0..cap + 3 {
            o.send(&mailboxes, 0, remove(id));
        }
        assert_eq!(o.len(), 3, "three wait for worker 0");
        o.send(&mailboxes, 1, remove(900));
        assert_eq!(o.len(), 3, "worker 1 is not held up by worker 0");
        assert!(
            !o.try_send(&mailboxes, 0, remove(999)),
            "nothing overtakes what waits"
        );
        // The worker takes two commands; the flush moves two of the three waiting.
        let _ = mailboxes[0].commands.pop();
        let _ = mailboxes[0].commands.pop();
        o.flush(&mailboxes);
        assert_eq!(o.len(), 1);
        let got = ids(&mailboxes[0]);
        o.flush(&mailboxes);
        assert!(o.is_empty());
        let rest = ids(&mailboxes[0]);
        let all: Vec<u64> = got.into_iter().chain(rest).collect();
        assert_eq!(all, (2..cap + 3).collect::<Vec<_>>(), "in order, none lost");
        assert_eq!(ids(&mailboxes[1]), [900]);
    }

    #[test]
    fn a_worker_that_does_not_exist_gets_nothing() {
        let mailboxes: Vec<Arc<Mailbox>> = vec![Arc::new(Mailbox::new(4))];
        let mut o = Outbox::new(1);
        o.send(&mailboxes, 7, remove(1));
        assert!(o.is_empty());
        assert!(!o.try_send(&mailboxes, 7, remove(1)));
    }
}

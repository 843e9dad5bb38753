//! The node's routing table: for each stream, the publisher's worker and how many
//! subscribers each worker has. The slow path is its only writer; when it changes, the
//! workers concerned get `SetRemoteWorkers` / `SetPublisherWorker`.

use switchyard_shared::command::{
    CloseReason, CommandError, Keying, Role, SessionId, SessionSpec, VideoCodec, MAX_TRACKS,
};

use super::validate::subscriber_addressable;
use super::SlowPath;
use crate::engine::{StreamId, WorkerCommand};
use crate::worker_set::WorkerSet;

/// One stream's row of the routing table.
pub(super) struct StreamEntry {
    id: StreamId,
    /// The publisher (or relay-in) and its worker.
    publisher: Option<(SessionId, u16)>,
    /// Subscribers (and relay-outs) per worker, indexed by worker.
    subscribers: Vec<u32>,
    /// Sessions (publisher and subscribers, live or pending) naming this stream.
    refs: usize,
}

impl StreamEntry {
    /// Whether the stream has its publisher (or relay-in) here, live or pending.
    pub(super) fn has_publisher(&self) -> bool {
        self.publisher.is_some()
    }

    /// The workers with at least one subscriber.
    fn subscriber_workers(&self) -> WorkerSet {
        self.subscribers
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .filter_map(|(w, _)| u16::try_from(w).ok())
            .collect()
    }
}

impl SlowPath {
    pub(super) fn add(&mut self, spec: SessionSpec) -> Result<(), CommandError> {
        self.validate(&spec)?;
        let workers = self.mailboxes.len();
        let next = &mut self.next_stream;
        let entry = self.streams.entry(spec.stream.clone()).or_insert_with(|| {
            let id = StreamId(*next);
            *next = next.wrapping_add(1).max(1);
            StreamEntry {
                id,
                publisher: None,
                subscribers: vec![0; workers],
                refs: 0,
            }
        });
        entry.refs += 1;
        let stream = entry.id;
        let w = spec.worker;
        let mut sends = Vec::new();
        match &spec.role {
            Role::Publisher { .. } | Role::RelayIn { .. } => {
                entry.publisher = Some((spec.id, w));
                let add = match (&spec.role, spec.keying.keys()) {
                    (
                        Role::Publisher {
                            ssrcs,
                            clock_rates,
                            simulcast,
                            uplink,
                        },
                        _,
                    ) => WorkerCommand::AddPublisher {
                        id: spec.id,
                        stream,
                        remote: spec.remote,
                        ssrcs: ssrcs.clone(),
                        clock_rates: clock_rates.clone(),
                        simulcast: simulcast.clone(),
                        uplink: uplink.clone(),
                        twcc_ext: spec.twcc_ext,
                        srtp: spec.keying.keys().cloned(),
                        ice: spec.ice.clone(),
                    },
                    (
                        Role::RelayIn {
                            ssrcs, simulcast, ..
                        },
                        Some(keys),
                    ) => WorkerCommand::AddRelayIn {
                        simulcast: simulcast.clone(),
                        id: spec.id,
                        stream,
                        remote: spec.remote,
                        ssrcs: ssrcs.clone(),
                        srtp: keys.clone(),
                    },
                    // `validate` refused relay sessions without static keys.
                    (Role::RelayIn { .. }, None) => return Err(CommandError::BadKey),
                    // Not in this arm's roles.
                    (Role::Subscriber { .. } | Role::RelayOut, _) => {
                        return Err(CommandError::Invalid)
                    }
                };
                sends.push((w, add));
                if let Role::RelayIn { video, .. } = &spec.role {
                    if video.iter().any(Option::is_some) {
                        let codecs = video_table(video);
                        sends.push((
                            w,
                            WorkerCommand::SetVideo {
                                id: spec.id,
                                codecs,
                            },
                        ));
                    }
                }
                sends.push((
                    w,
                    WorkerCommand::SetRemoteWorkers {
                        stream,
                        workers: entry.subscriber_workers(),
                    },
                ));
                for (sw, &n) in entry.subscribers.iter().enumerate() {
                    if n > 0 {
                        sends.push((
                            sw as u16,
                            WorkerCommand::SetPublisherWorker {
                                stream,
                                worker: Some(w),
                            },
                        ));
                    }
                }
            }
            Role::RelayOut => {
                let (Some(remote), Some(keys)) = (spec.remote, spec.keying.keys()) else {
                    // `validate` refused these; never index past it.
                    return Err(CommandError::Invalid);
                };
                if let Some(n) = entry.subscribers.get_mut(usize::from(w)) {
                    *n += 1;
                }
                sends.push((
                    w,
                    WorkerCommand::SetPublisherWorker {
                        stream,
                        worker: entry.publisher.map(|p| p.1),
                    },
                ));
                sends.push((
                    w,
                    WorkerCommand::AddRelayOut {
                        id: spec.id,
                        stream,
                        remote,
                        srtp: keys.clone(),
                    },
                ));
                if let Some((_, pw)) = entry.publisher {
                    sends.push((
                        pw,
                        WorkerCommand::SetRemoteWorkers {
                            stream,
                            workers: entry.subscriber_workers(),
                        },
                    ));
                }
            }
            Role::Subscriber {
                ssrcs,
                payload_types,
                extensions,
                rtx,
                tracks,
            } => {
                let mut out = [0u32; MAX_TRACKS];
                out.copy_from_slice(&ssrcs[..MAX_TRACKS]);
                let mut rtx_out = [None; MAX_TRACKS];
                for (o, r) in rtx_out.iter_mut().zip(rtx) {
                    *o = *r;
                }
                let remote = spec.remote;
                if !subscriber_addressable(&spec) {
                    return Err(CommandError::Invalid);
                }
                if let Some(n) = entry.subscribers.get_mut(usize::from(w)) {
                    *n += 1;
                }
                sends.push((
                    w,
                    WorkerCommand::SetPublisherWorker {
                        stream,
                        worker: entry.publisher.map(|p| p.1),
                    },
                ));
                sends.push((
                    w,
                    WorkerCommand::AddSubscriber {
                        id: spec.id,
                        stream,
                        remote,
                        ssrcs: out,
                        payload_types: payload_types.clone(),
                        extensions: extensions.as_ref().map(|m| {
                            let mut table = [0u8; 16];
                            for &(from, to) in m {
                                table[usize::from(from & 0x0f)] = to;
                            }
                            table
                        }),
                        rtx: rtx_out,
                        tracks: *tracks,
                        plain: spec.keying == Keying::Plain,
                        srtp: spec.keying.keys().cloned(),
                        ice: spec.ice.clone(),
                    },
                ));
                if let Some(twcc_ext) = spec.twcc_ext {
                    sends.push((
                        w,
                        WorkerCommand::EnableBwe {
                            id: spec.id,
                            twcc_ext,
                        },
                    ));
                }
                if let Some((_, pw)) = entry.publisher {
                    sends.push((
                        pw,
                        WorkerCommand::SetRemoteWorkers {
                            stream,
                            workers: entry.subscriber_workers(),
                        },
                    ));
                }
            }
        }
        self.pending_add.insert(spec.id, spec);
        for (w, cmd) in sends {
            self.command_worker(w, cmd);
        }
        Ok(())
    }

    /// Undo the routing-table entries of a session that failed or ended.
    pub(super) fn forget(&mut self, spec: &SessionSpec) {
        self.handshakes.remove(spec.id);
        let mut deliveries = std::mem::take(&mut self.deliveries);
        self.hub.remove(spec.id, &mut deliveries);
        self.relay_outs.remove(&spec.id);
        if let Some(link) = self.relay_ins.remove(&spec.id) {
            // The far publisher's channels end with the link, as a local publisher's do.
            for key in link.keys {
                self.hub.close_channel(&link.stream, key, &mut deliveries);
            }
        }
        self.deliver(&mut deliveries);
        self.deliveries = deliveries;
        let Some(entry) = self.streams.get_mut(&spec.stream) else {
            return;
        };
        let stream = entry.id;
        let mut sends = Vec::new();
        match spec.role {
            Role::Publisher { .. } | Role::RelayIn { .. } => {
                if entry.publisher.is_some_and(|(id, _)| id == spec.id) {
                    entry.publisher = None;
                    for (sw, &n) in entry.subscribers.iter().enumerate() {
                        if n > 0 {
                            sends.push((
                                sw as u16,
                                WorkerCommand::SetPublisherWorker {
                                    stream,
                                    worker: None,
                                },
                            ));
                        }
                    }
                    sends.push((
                        spec.worker,
                        WorkerCommand::SetRemoteWorkers {
                            stream,
                            workers: WorkerSet::new(),
                        },
                    ));
                }
            }
            Role::Subscriber { .. } | Role::RelayOut => {
                if let Some(n) = entry.subscribers.get_mut(usize::from(spec.worker)) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        sends.push((
                            spec.worker,
                            WorkerCommand::SetPublisherWorker {
                                stream,
                                worker: None,
                            },
                        ));
                        if let Some((_, pw)) = entry.publisher {
                            sends.push((
                                pw,
                                WorkerCommand::SetRemoteWorkers {
                                    stream,
                                    workers: entry.subscriber_workers(),
                                },
                            ));
                        }
                    }
                }
            }
        }
        entry.refs = entry.refs.saturating_sub(1);
        if entry.refs == 0 {
            self.streams.remove(&spec.stream);
        }
        for (w, cmd) in sends {
            self.command_worker(w, cmd);
        }
    }

    /// End a session for a reason of the data plane's own (the same path as RemoveSession).
    pub(super) fn end(&mut self, id: SessionId, reason: CloseReason) {
        if let Some(spec) = self.sessions.remove(&id) {
            let w = spec.worker;
            self.pending_remove.insert(id, spec);
            self.close_reasons.insert(id, reason);
            self.command_worker(w, WorkerCommand::Remove { id });
        }
    }
}

/// A relay-in's video codecs per track (`Role::RelayIn::video`) as the engine takes them.
pub(super) fn video_table(video: &[Option<VideoCodec>]) -> [Option<VideoCodec>; MAX_TRACKS] {
    let mut t = [None; MAX_TRACKS];
    for (slot, pt) in t.iter_mut().zip(video) {
        *slot = *pt;
    }
    t
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use switchyard_shared::command::{Command, SrtpKeys, SrtpProfile, ALL_TRACKS};
    use switchyard_shared::ring;
    use switchyard_shared::stats::Stats;

    use super::*;
    use crate::dtls::DtlsConfig;
    use crate::handshakes::Handshakes;
    use crate::worker::Mailbox;

    fn spec(id: u64, worker: u16, role: Role) -> SessionSpec {
        let profile = SrtpProfile::AeadAes128Gcm;
        SessionSpec {
            id: SessionId(id),
            worker,
            stream: "room/cam".into(),
            role,
            remote: Some(([192, 0, 2, 1], 5000 + id as u16).into()),
            keying: Keying::Static(SrtpKeys {
                profile,
                remote: vec![1; profile.master_len()],
                local: vec![2; profile.master_len()],
            }),
            ice: None,
            twcc_ext: None,
            created_ms: 0,
            control: Default::default(),
        }
    }

    /// Issue 10 part 4: on a node with 100 workers, a subscriber on worker 64 makes the
    /// publisher's worker (0) send to worker 64, not to itself.
    #[test]
    fn a_subscriber_on_worker_64_of_100_is_not_worker_0() {
        let base = std::env::temp_dir().join(format!("swy-routing-{}", std::process::id()));
        let (ring_path, stats_path) = (base.with_extension("ring"), base.with_extension("stats"));
        let side = ring::attach_data(&ring_path, 16).expect("ring");
        let stats = Arc::new(Stats::create(&stats_path, 100, 0, 1).expect("stats"));
        let mailboxes: Arc<[Arc<Mailbox>]> = (0..100).map(|_| Arc::new(Mailbox::new(4))).collect();
        let handshakes = Handshakes::new(DtlsConfig::generate().expect("dtls"));
        let mut slow = SlowPath::new(
            side,
            ring_path.clone(),
            mailboxes.clone(),
            handshakes,
            stats,
        );
        let publisher = Role::Publisher {
            ssrcs: vec![1],
            clock_rates: vec![],
            simulcast: None,
            uplink: Vec::new(),
        };
        let subscriber = Role::Subscriber {
            ssrcs: vec![1; MAX_TRACKS],
            payload_types: Vec::new(),
            extensions: None,
            rtx: Vec::new(),
            tracks: ALL_TRACKS,
        };
        slow.command(Command::AddSession(spec(1, 0, publisher)));
        slow.command(Command::AddSession(spec(2, 64, subscriber)));
        let remote_workers: Vec<Vec<u16>> = std::iter::from_fn(|| mailboxes[0].commands.pop())
            .filter_map(|c| match c {
                WorkerCommand::SetRemoteWorkers { workers, .. } => Some(workers.iter().collect()),
                _ => None,
            })
            .collect();
        assert_eq!(remote_workers, [vec![], vec![64]]);
        let to_64: Vec<WorkerCommand> =
            std::iter::from_fn(|| mailboxes[64].commands.pop()).collect();
        assert!(matches!(
            to_64[..],
            [
                WorkerCommand::SetPublisherWorker {
                    worker: Some(0),
                    ..
                },
                WorkerCommand::AddSubscriber { .. }
            ]
        ));
        assert!(mailboxes[1..64]
            .iter()
            .chain(&mailboxes[65..])
            .all(|m| m.commands.is_empty()));
        let _ = std::fs::remove_file(&ring_path);
        let _ = std::fs::remove_file(&stats_path);
    }
}

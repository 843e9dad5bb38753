//! The data channel hub: which channels a stream has, and who gets each message.
//!
//! Sans-IO: fed what sessions did (`handle_*`), it appends the [`Delivery`]s that follow to
//! the caller's vector. It never sends anything itself, never reads the clock and never
//! fails on input from a peer: a message it cannot place comes back as a [`Dropped`] reason
//! for the caller to count.
//!
//! A stream's channels are keyed by the publisher's SCTP stream id (its *key*). Each
//! subscriber gets a mirror of every channel, opened by the node on an odd stream id the hub
//! picks for that subscriber, with the publisher's label, protocol and reliability; a
//! subscriber whose association comes up later gets mirrors of the channels open then, and
//! messages from then on (nothing is replayed).
//!
//! The stream-level methods ([`Hub::open_channel`], [`Hub::publish`],
//! [`Hub::close_channel`]) are the entry point for anything that is not a local publisher
//! session, such as a relay link bringing a stream's messages from another node.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use switchyard_shared::command::SessionId;

use super::{ppid, ChannelParams, DataCommand, DataEvent, Delivery, MAX_CHANNELS};

/// Why a message from a session went nowhere. The caller counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Subscribers' messages are not forwarded anywhere (the node is not a chat server).
    FromSubscriber,
    /// The session is not a data-channel member of any stream.
    UnknownSession,
    /// No channel with that key is open on the stream.
    UnknownChannel,
    /// A PPID that is not a WebRTC user message (DCEP, deprecated partial PPIDs, ...).
    NotAMessage,
}

#[derive(Default)]
struct StreamState {
    /// The local publisher session, when there is one.
    publisher: Option<SessionId>,
    /// Open channels by key, in key order (the order subscribers' mirrors are opened in).
    channels: BTreeMap<u16, ChannelParams>,
    /// In id order, so fan-out order is deterministic.
    subscribers: BTreeSet<SessionId>,
}

impl StreamState {
    fn is_empty(&self) -> bool {
        self.publisher.is_none() && self.channels.is_empty() && self.subscribers.is_empty()
    }
}

/// A subscriber's channel ids: publisher key → the id the node opened towards it.
#[derive(Default)]
struct Mirror {
    ids: BTreeMap<u16, u16>,
    /// Next odd stream id to try. Ids are not reused while the session lives: a closed
    /// stream's reset may still be in flight.
    next: u32,
}

impl Mirror {
    fn allocate(&mut self) -> Option<u16> {
        if self.next == 0 {
            self.next = 1;
        }
        while self.next <= u32::from(u16::MAX) {
            let id = u16::try_from(self.next).ok()?;
            self.next += 2;
            if !self.ids.values().any(|&v| v == id) {
                return Some(id);
            }
        }
        None
    }
}

enum Side {
    Publisher,
    Subscriber(Mirror),
}

struct Member {
    stream: String,
    /// The SCTP association is established.
    up: bool,
    side: Side,
}

/// See the module doc.
#[derive(Default)]
pub struct Hub {
    streams: HashMap<String, StreamState>,
    members: HashMap<SessionId, Member>,
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    /// A WebRTC publisher session of `stream` exists (its association is not up yet).
    pub fn add_publisher(&mut self, id: SessionId, stream: &str) {
        self.streams.entry(stream.to_owned()).or_default().publisher = Some(id);
        self.members.insert(
            id,
            Member {
                stream: stream.to_owned(),
                up: false,
                side: Side::Publisher,
            },
        );
    }

    /// A WebRTC subscriber session of `stream` exists; it gets mirrors once it is up.
    pub fn add_subscriber(&mut self, id: SessionId, stream: &str) {
        self.streams
            .entry(stream.to_owned())
            .or_default()
            .subscribers
            .insert(id);
        self.members.insert(
            id,
            Member {
                stream: stream.to_owned(),
                up: false,
                side: Side::Subscriber(Mirror::default()),
            },
        );
    }

    /// The session ended. A publisher's channels close on every subscriber.
    pub fn remove(&mut self, id: SessionId, out: &mut Vec<Delivery>) {
        let Some(m) = self.members.remove(&id) else {
            return;
        };
        match m.side {
            Side::Publisher => {
                let keys: Vec<u16> = self
                    .streams
                    .get(&m.stream)
                    .filter(|s| s.publisher == Some(id))
                    .map(|s| s.channels.keys().copied().collect())
                    .unwrap_or_default();
                for key in keys {
                    self.close_channel(&m.stream, key, out);
                }
                if let Some(s) = self.streams.get_mut(&m.stream) {
                    if s.publisher == Some(id) {
                        s.publisher = None;
                    }
                }
            }
            Side::Subscriber(_) => {
                if let Some(s) = self.streams.get_mut(&m.stream) {
                    s.subscribers.remove(&id);
                }
            }
        }
        if self
            .streams
            .get(&m.stream)
            .is_some_and(StreamState::is_empty)
        {
            self.streams.remove(&m.stream);
        }
    }

    /// What a session's SCTP side reported. `Ok(n)`: the event was used and produced `n`
    /// deliveries; `Err`: a message that goes nowhere, to be counted as dropped.
    pub fn handle_event(
        &mut self,
        id: SessionId,
        ev: DataEvent,
        out: &mut Vec<Delivery>,
    ) -> Result<usize, Dropped> {
        let before = out.len();
        let Some(m) = self.members.get_mut(&id) else {
            return match ev {
                DataEvent::Message { .. } => Err(Dropped::UnknownSession),
                _ => Ok(0),
            };
        };
        let stream = m.stream.clone();
        match (ev, &mut m.side) {
            (DataEvent::Up, Side::Publisher) => m.up = true,
            (DataEvent::Up, Side::Subscriber(_)) => {
                m.up = true;
                let channels: Vec<(u16, ChannelParams)> = self
                    .streams
                    .get(&stream)
                    .map(|s| s.channels.iter().map(|(&k, p)| (k, p.clone())).collect())
                    .unwrap_or_default();
                for (key, params) in channels {
                    self.mirror(id, key, &params, out);
                }
            }
            (DataEvent::Opened { channel, params }, Side::Publisher) => {
                self.open_channel(&stream, channel, params, out);
            }
            // A subscriber's own channels are accepted (so its browser does not hang) but
            // carry nothing anywhere.
            (DataEvent::Opened { .. }, Side::Subscriber(_)) => {}
            (
                DataEvent::Message {
                    channel,
                    ppid,
                    payload,
                },
                Side::Publisher,
            ) => {
                return self.publish(&stream, channel, ppid, payload, out);
            }
            (DataEvent::Message { .. }, Side::Subscriber(_)) => {
                return Err(Dropped::FromSubscriber);
            }
            (DataEvent::Closed { channel }, Side::Publisher) => {
                self.close_channel(&stream, channel, out);
            }
            (DataEvent::Closed { channel }, Side::Subscriber(mirror)) => {
                // The subscriber closed a mirror: stop sending on it.
                mirror.ids.retain(|_, ours| *ours != channel);
            }
        }
        Ok(out.len() - before)
    }

    /// A channel with key `key` opened on `stream`: every subscriber that is up gets a
    /// mirror. A key already open is left as it is; beyond [`MAX_CHANNELS`] channels a
    /// stream's new ones are ignored (their messages then count as dropped). Returns whether
    /// the channel is open on the stream afterwards.
    pub fn open_channel(
        &mut self,
        stream: &str,
        key: u16,
        params: ChannelParams,
        out: &mut Vec<Delivery>,
    ) -> bool {
        let s = self.streams.entry(stream.to_owned()).or_default();
        if s.channels.contains_key(&key) {
            return true;
        }
        if s.channels.len() >= MAX_CHANNELS {
            return false;
        }
        s.channels.insert(key, params.clone());
        let subs: Vec<SessionId> = s.subscribers.iter().copied().collect();
        for sub in subs {
            if self.members.get(&sub).is_some_and(|m| m.up) {
                self.mirror(sub, key, &params, out);
            }
        }
        true
    }

    /// The fan-out entry point: a message on `stream`'s channel `key` goes to every
    /// subscriber with a mirror of it, in subscriber id order. Returns the number of
    /// deliveries.
    pub fn publish(
        &mut self,
        stream: &str,
        key: u16,
        ppid: u32,
        payload: Bytes,
        out: &mut Vec<Delivery>,
    ) -> Result<usize, Dropped> {
        if !ppid::is_message(ppid) {
            return Err(Dropped::NotAMessage);
        }
        let Some(s) = self.streams.get(stream) else {
            return Err(Dropped::UnknownChannel);
        };
        if !s.channels.contains_key(&key) {
            return Err(Dropped::UnknownChannel);
        }
        let before = out.len();
        for sub in &s.subscribers {
            let Some(Member {
                side: Side::Subscriber(mirror),
                ..
            }) = self.members.get(sub)
            else {
                continue;
            };
            if let Some(&channel) = mirror.ids.get(&key) {
                out.push(Delivery {
                    session: *sub,
                    command: DataCommand::Send {
                        channel,
                        ppid,
                        // Bytes: one payload shared by every delivery, not a copy each.
                        payload: payload.clone(),
                    },
                });
            }
        }
        Ok(out.len() - before)
    }

    /// The channel `key` of `stream` closed: every mirror of it closes.
    pub fn close_channel(&mut self, stream: &str, key: u16, out: &mut Vec<Delivery>) {
        let Some(s) = self.streams.get_mut(stream) else {
            return;
        };
        if s.channels.remove(&key).is_none() {
            return;
        }
        for sub in &s.subscribers {
            if let Some(Member {
                side: Side::Subscriber(mirror),
                ..
            }) = self.members.get_mut(sub)
            {
                if let Some(channel) = mirror.ids.remove(&key) {
                    out.push(Delivery {
                        session: *sub,
                        command: DataCommand::Close { channel },
                    });
                }
            }
        }
        // A stream only a relay fed (no sessions) is forgotten with its last channel.
        if s.is_empty() {
            self.streams.remove(stream);
        }
    }

    /// Open a mirror of `key` towards subscriber `sub`, unless it has one.
    fn mirror(
        &mut self,
        sub: SessionId,
        key: u16,
        params: &ChannelParams,
        out: &mut Vec<Delivery>,
    ) {
        let Some(Member {
            side: Side::Subscriber(mirror),
            ..
        }) = self.members.get_mut(&sub)
        else {
            return;
        };
        if mirror.ids.contains_key(&key) || mirror.ids.len() >= MAX_CHANNELS {
            return;
        }
        let Some(channel) = mirror.allocate() else {
            return;
        };
        mirror.ids.insert(key, channel);
        out.push(Delivery {
            session: sub,
            command: DataCommand::Open {
                channel,
                params: params.clone(),
            },
        });
    }

    /// Channels open on `stream` (for tests and introspection).
    pub fn channel_count(&self, stream: &str) -> usize {
        self.streams.get(stream).map_or(0, |s| s.channels.len())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Reliability;
    use super::*;

    const STREAM: &str = "room/cam";
    const PUB: SessionId = SessionId(1);
    const SUB_A: SessionId = SessionId(2);
    const SUB_B: SessionId = SessionId(3);

    fn params(label: &str) -> ChannelParams {
        ChannelParams {
            label: label.into(),
            protocol: String::new(),
            ordered: false,
            reliability: Reliability::Rexmit(3),
            priority: 256,
        }
    }

    fn opened(channel: u16, label: &str) -> DataEvent {
        DataEvent::Opened {
            channel,
            params: params(label),
        }
    }

    fn message(channel: u16, ppid: u32, payload: &'static [u8]) -> DataEvent {
        DataEvent::Message {
            channel,
            ppid,
            payload: Bytes::from_static(payload),
        }
    }

    fn send(session: SessionId, channel: u16, ppid: u32, payload: &'static [u8]) -> Delivery {
        Delivery {
            session,
            command: DataCommand::Send {
                channel,
                ppid,
                payload: Bytes::from_static(payload),
            },
        }
    }

    fn open(session: SessionId, channel: u16, label: &str) -> Delivery {
        Delivery {
            session,
            command: DataCommand::Open {
                channel,
                params: params(label),
            },
        }
    }

    /// A publisher and two subscribers of STREAM, all up, publisher channel 0 "chat" open.
    fn hub_with_two_subscribers() -> (Hub, Vec<Delivery>) {
        let mut hub = Hub::new();
        let mut out = Vec::new();
        hub.add_publisher(PUB, STREAM);
        hub.add_subscriber(SUB_A, STREAM);
        hub.add_subscriber(SUB_B, STREAM);
        for id in [PUB, SUB_A, SUB_B] {
            assert_eq!(hub.handle_event(id, DataEvent::Up, &mut out), Ok(0));
        }
        assert_eq!(hub.handle_event(PUB, opened(0, "chat"), &mut out), Ok(2));
        (hub, out)
    }

    #[test]
    fn publisher_channel_is_mirrored_on_odd_ids_and_messages_fan_out_in_order() {
        let (mut hub, mut out) = hub_with_two_subscribers();
        assert_eq!(out, vec![open(SUB_A, 1, "chat"), open(SUB_B, 1, "chat")]);
        out.clear();
        assert_eq!(
            hub.handle_event(PUB, message(0, ppid::STRING, b"hello"), &mut out),
            Ok(2)
        );
        assert_eq!(
            hub.handle_event(PUB, message(0, ppid::BINARY, &[0, 1, 2]), &mut out),
            Ok(2)
        );
        assert_eq!(
            out,
            vec![
                send(SUB_A, 1, ppid::STRING, b"hello"),
                send(SUB_B, 1, ppid::STRING, b"hello"),
                send(SUB_A, 1, ppid::BINARY, &[0, 1, 2]),
                send(SUB_B, 1, ppid::BINARY, &[0, 1, 2]),
            ]
        );
    }

    #[test]
    fn empty_messages_keep_their_ppid() {
        let (mut hub, mut out) = hub_with_two_subscribers();
        out.clear();
        for p in [ppid::STRING_EMPTY, ppid::BINARY_EMPTY] {
            assert_eq!(hub.handle_event(PUB, message(0, p, b""), &mut out), Ok(2));
        }
        assert_eq!(out[0], send(SUB_A, 1, ppid::STRING_EMPTY, b""));
        assert_eq!(out[3], send(SUB_B, 1, ppid::BINARY_EMPTY, b""));
    }

    #[test]
    fn subscriber_up_later_gets_mirrors_of_open_channels_and_only_later_messages() {
        let mut hub = Hub::new();
        let mut out = Vec::new();
        hub.add_publisher(PUB, STREAM);
        hub.handle_event(PUB, DataEvent::Up, &mut out).expect("up");
        hub.handle_event(PUB, opened(0, "chat"), &mut out)
            .expect("open");
        hub.handle_event(PUB, opened(2, "telemetry"), &mut out)
            .expect("open");
        assert!(out.is_empty(), "no subscribers yet");
        assert_eq!(
            hub.handle_event(PUB, message(0, ppid::STRING, b"early"), &mut out),
            Ok(0)
        );
        hub.add_subscriber(SUB_A, STREAM);
        // Not up yet: nothing to send to it.
        assert_eq!(
            hub.handle_event(PUB, message(0, ppid::STRING, b"still early"), &mut out),
            Ok(0)
        );
        assert_eq!(hub.handle_event(SUB_A, DataEvent::Up, &mut out), Ok(2));
        assert_eq!(
            out,
            vec![open(SUB_A, 1, "chat"), open(SUB_A, 3, "telemetry")]
        );
        out.clear();
        hub.handle_event(PUB, message(2, ppid::BINARY, b"late"), &mut out)
            .expect("message");
        assert_eq!(out, vec![send(SUB_A, 3, ppid::BINARY, b"late")]);
    }

    #[test]
    fn channels_opened_later_reach_subscribers_already_up() {
        let (mut hub, mut out) = hub_with_two_subscribers();
        out.clear();
        hub.handle_event(PUB, opened(4, "second"), &mut out)
            .expect("open");
        assert_eq!(
            out,
            vec![open(SUB_A, 3, "second"), open(SUB_B, 3, "second")]
        );
    }

    #[test]
    fn subscriber_messages_and_unknown_channels_are_dropped() {
        let (mut hub, mut out) = hub_with_two_subscribers();
        out.clear();
        assert_eq!(
            hub.handle_event(SUB_A, message(1, ppid::STRING, b"hi"), &mut out),
            Err(Dropped::FromSubscriber)
        );
        assert_eq!(
            hub.handle_event(PUB, message(8, ppid::STRING, b"hi"), &mut out),
            Err(Dropped::UnknownChannel)
        );
        assert_eq!(
            hub.handle_event(PUB, message(0, ppid::DCEP, b"\x03"), &mut out),
            Err(Dropped::NotAMessage)
        );
        assert_eq!(
            hub.handle_event(SessionId(99), message(0, ppid::STRING, b"x"), &mut out),
            Err(Dropped::UnknownSession)
        );
        // A subscriber's own channel does not become a stream channel.
        hub.handle_event(SUB_A, opened(0, "back"), &mut out)
            .expect("open");
        assert!(out.is_empty());
        assert_eq!(hub.channel_count(STREAM), 1);
    }

    #[test]
    fn publisher_close_and_leave_close_the_mirrors() {
        let (mut hub, mut out) = hub_with_two_subscribers();
        hub.handle_event(PUB, opened(2, "b"), &mut out)
            .expect("open");
        out.clear();
        hub.handle_event(PUB, DataEvent::Closed { channel: 0 }, &mut out)
            .expect("close");
        let close = |s, c| Delivery {
            session: s,
            command: DataCommand::Close { channel: c },
        };
        assert_eq!(out, vec![close(SUB_A, 1), close(SUB_B, 1)]);
        out.clear();
        hub.remove(PUB, &mut out);
        assert_eq!(out, vec![close(SUB_A, 3), close(SUB_B, 3)]);
        assert_eq!(hub.channel_count(STREAM), 0);
        // A new publisher's channels get fresh ids on the subscribers (1 and 3 are spent).
        out.clear();
        hub.add_publisher(SessionId(10), STREAM);
        hub.handle_event(SessionId(10), DataEvent::Up, &mut out)
            .expect("up");
        hub.handle_event(SessionId(10), opened(0, "chat"), &mut out)
            .expect("open");
        assert_eq!(out, vec![open(SUB_A, 5, "chat"), open(SUB_B, 5, "chat")]);
    }

    #[test]
    fn subscriber_that_closes_a_mirror_or_leaves_gets_nothing_more() {
        let (mut hub, mut out) = hub_with_two_subscribers();
        out.clear();
        hub.handle_event(SUB_A, DataEvent::Closed { channel: 1 }, &mut out)
            .expect("close");
        hub.remove(SUB_B, &mut out);
        assert!(out.is_empty());
        assert_eq!(
            hub.handle_event(PUB, message(0, ppid::STRING, b"x"), &mut out),
            Ok(0)
        );
        hub.remove(SUB_A, &mut out);
        hub.remove(PUB, &mut out);
        assert!(hub.streams.is_empty() && hub.members.is_empty());
    }

    #[test]
    fn channel_count_is_bounded() {
        let mut hub = Hub::new();
        let mut out = Vec::new();
        for key in 0..MAX_CHANNELS as u16 {
            assert!(hub.open_channel(STREAM, key * 2, params("c"), &mut out));
        }
        assert!(!hub.open_channel(STREAM, 1000, params("c"), &mut out));
        assert_eq!(hub.channel_count(STREAM), MAX_CHANNELS);
        assert_eq!(
            hub.publish(
                STREAM,
                1000,
                ppid::STRING,
                Bytes::from_static(b"x"),
                &mut out
            ),
            Err(Dropped::UnknownChannel)
        );
    }

    #[test]
    fn stream_level_entry_point_serves_a_stream_without_a_local_publisher() {
        // What a relay link's receiving side does: no publisher session on this node.
        let mut hub = Hub::new();
        let mut out = Vec::new();
        hub.add_subscriber(SUB_A, STREAM);
        hub.handle_event(SUB_A, DataEvent::Up, &mut out)
            .expect("up");
        assert!(hub.open_channel(STREAM, 0, params("chat"), &mut out));
        assert_eq!(
            hub.publish(STREAM, 0, ppid::STRING, Bytes::from_static(b"r"), &mut out),
            Ok(1)
        );
        assert_eq!(
            out,
            vec![open(SUB_A, 1, "chat"), send(SUB_A, 1, ppid::STRING, b"r")]
        );
        hub.remove(SUB_A, &mut out);
        assert!(hub.open_channel(STREAM, 2, params("other"), &mut out));
        hub.close_channel(STREAM, 0, &mut out);
        hub.close_channel(STREAM, 2, &mut out);
        assert!(
            hub.streams.is_empty(),
            "nothing left of a stream only a relay fed"
        );
    }

    #[test]
    fn mirror_ids_skip_ids_in_use_and_run_out_cleanly() {
        let mut m = Mirror::default();
        assert_eq!(m.allocate(), Some(1));
        m.ids.insert(0, 1);
        m.next = 65535;
        assert_eq!(m.allocate(), Some(65535));
        assert_eq!(m.allocate(), None);
    }
}

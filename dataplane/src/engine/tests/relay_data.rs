//! Data channel events across a relay link on virtual time: node A's hub and relay-out
//! engine, node B's relay-in engine, reassembly and hub, the link carried by hand (so a
//! test can lose or forge any datagram). Everything the slow paths do between them is done
//! here with the same sans-IO pieces.

use bytes::Bytes;

use super::relay::{add_relay_in, add_relay_out, link, K_FWD, LINK, SOURCE, TARGET};
use super::*;
use crate::datachan::hub::Hub;
use crate::datachan::relay::{self as dcrelay, Frame};
use crate::datachan::{ppid, ChannelParams, DataCommand, DataEvent, Delivery, Reliability};

const NAME: &str = "room/cam";
const PUBLISHER: SessionId = SessionId(10);
/// The relay-out on A (engine session 2, a hub relay member).
const RELAY_OUT: SessionId = SessionId(2);
/// The relay-in on B (engine session 1).
const RELAY_IN: SessionId = SessionId(1);
/// A WHEP subscriber on B (hub only; its SCTP side is not modelled).
const VIEWER: SessionId = SessionId(20);
/// A media subscriber on B's engine, which must never see a data fragment.
const MEDIA_SUB: u64 = 3;

fn params() -> ChannelParams {
    ChannelParams {
        label: "chat".into(),
        protocol: String::new(),
        ordered: true,
        reliability: Reliability::Reliable,
        priority: 256,
    }
}

/// Two nodes joined by a relay link, with a publisher's data channel on A open before
/// the relay-out joins A's hub.
struct Nodes {
    a: Fixture,
    b: Fixture,
    hub_a: Hub,
    hub_b: Hub,
    receiver: dcrelay::Receiver,
    /// What B's hub delivered to B's viewer.
    viewer: Vec<DataCommand>,
    dropped: Vec<dcrelay::Dropped>,
}

impl Nodes {
    fn new() -> Self {
        let mut b = fixture(1);
        add_relay_in(&mut b.engines[0], 1, Some(addr(SOURCE)));
        add_sub(&mut b.engines[0], MEDIA_SUB, 6003, LINK);
        let mut n = Self {
            a: fixture(1),
            b,
            hub_a: Hub::new(),
            hub_b: Hub::new(),
            receiver: dcrelay::Receiver::new(),
            viewer: Vec::new(),
            dropped: Vec::new(),
        };
        n.hub_b.add_subscriber(VIEWER, NAME);
        let mut out = Vec::new();
        n.hub_b
            .handle_event(VIEWER, DataEvent::Up, &mut out)
            .expect("up");
        n.hub_a.add_publisher(PUBLISHER, NAME);
        n.hub_a
            .handle_event(PUBLISHER, DataEvent::Up, &mut out)
            .expect("up");
        let opened = DataEvent::Opened {
            channel: 0,
            params: params(),
        };
        n.hub_a
            .handle_event(PUBLISHER, opened, &mut out)
            .expect("open");
        assert!(out.is_empty(), "nobody to mirror to yet");
        add_relay_out(&mut n.a.engines[0], 2, addr(TARGET));
        n
    }

    /// A's slow path: hub deliveries to the relay member become `RelayData` commands.
    /// Returns the link datagrams A sent.
    fn a_delivers(&mut self, deliveries: Vec<Delivery>, now: Instant) -> Vec<Vec<u8>> {
        let mut out = Capture::default();
        for d in deliveries {
            assert_eq!(d.session, RELAY_OUT);
            let mut fragments = Vec::new();
            dcrelay::encode(&Frame::from(d.command), &mut fragments).expect("encodes");
            let cmd = WorkerCommand::RelayData {
                id: RELAY_OUT,
                fragments,
            };
            self.a.engines[0].handle_command(cmd, t0(), &mut out);
        }
        self.a.engines[0].handle_timeout(now, &mut out);
        assert!(out.vias.iter().all(|v| *v == Via::Relay));
        out.sent
            .into_iter()
            .inspect(|(dst, _)| assert_eq!(*dst, addr(TARGET)))
            .map(|(_, b)| b)
            .collect()
    }

    /// B's worker gets `datagrams` on its relay socket; B's slow path reassembles what it
    /// hands up and feeds B's hub. Returns what B sent back over the link (NACKs).
    fn b_receives(&mut self, datagrams: Vec<Vec<u8>>, now: Instant) -> Vec<Vec<u8>> {
        let mut out = Capture::default();
        for mut d in datagrams {
            self.b.engines[0].handle_relay_datagram(&mut d, addr(SOURCE), now, &mut out);
        }
        assert!(
            out.sent.is_empty(),
            "data fragments never reach media subscribers"
        );
        let mut frames = Vec::new();
        while let Some(ev) = self.b.engines[0].poll_event() {
            let WorkerEvent::RelayData { id, seq, payload } = ev else {
                panic!("unexpected {ev:?}");
            };
            assert_eq!(id, RELAY_IN);
            self.receiver
                .handle(seq, Bytes::from(payload), now, &mut frames);
        }
        self.receiver.poll(now, &mut frames);
        let mut deliveries = Vec::new();
        for f in frames {
            match f {
                Ok(Frame::Open { key, params }) => {
                    self.hub_b.open_channel(NAME, key, params, &mut deliveries);
                }
                Ok(Frame::Message { key, ppid, payload }) => {
                    let _ = self
                        .hub_b
                        .publish(NAME, key, ppid, payload, &mut deliveries);
                }
                Ok(Frame::Close { key }) => self.hub_b.close_channel(NAME, key, &mut deliveries),
                Err(why) => self.dropped.push(why),
            }
        }
        for d in deliveries {
            assert_eq!(d.session, VIEWER);
            self.viewer.push(d.command);
        }
        let mut back = Capture::default();
        self.b.engines[0].handle_timeout(now, &mut back);
        back.sent
            .into_iter()
            .inspect(|(dst, _)| assert_eq!(*dst, addr(SOURCE)))
            .map(|(_, b)| b)
            .collect()
    }

    /// A's worker gets B's feedback; returns what it resent.
    fn a_receives(&mut self, datagrams: Vec<Vec<u8>>, now: Instant) -> Vec<Vec<u8>> {
        let mut out = Capture::default();
        for mut d in datagrams {
            self.a.engines[0].handle_relay_datagram(&mut d, addr(TARGET), now, &mut out);
        }
        out.sent.into_iter().map(|(_, b)| b).collect()
    }

    /// A's relay member joins A's hub (the slow path does this when the relay-out is added).
    fn relay_joins(&mut self) -> Vec<Delivery> {
        let mut deliveries = Vec::new();
        self.hub_a.add_relay(RELAY_OUT, NAME, &mut deliveries);
        deliveries
    }

    fn publish(&mut self, payload: Vec<u8>) -> Vec<Delivery> {
        let mut deliveries = Vec::new();
        let ev = DataEvent::Message {
            channel: 0,
            ppid: ppid::BINARY,
            payload: Bytes::from(payload),
        };
        self.hub_a
            .handle_event(PUBLISHER, ev, &mut deliveries)
            .expect("published");
        deliveries
    }
}

fn sent(payload: &[u8]) -> DataCommand {
    DataCommand::Send {
        channel: 1,
        ppid: ppid::BINARY,
        payload: Bytes::copy_from_slice(payload),
    }
}

#[test]
fn late_joining_relay_gets_the_open_and_messages_cross_to_b_viewers() {
    let mut n = Nodes::new();
    let t0 = t0();
    let joined = n.relay_joins();
    assert_eq!(joined.len(), 1, "an open for the channel already open");
    let link_out = n.a_delivers(joined, t0);
    assert_eq!(link_out.len(), 1);
    assert!(n.b_receives(link_out, t0).is_empty());
    assert_eq!(
        n.viewer,
        vec![DataCommand::Open {
            channel: 1,
            params: params()
        }],
        "B's viewer gets a mirror of the publisher's channel"
    );
    n.viewer.clear();
    let big: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
    let mut link_out = Vec::new();
    for m in [b"hello".to_vec(), big.clone(), Vec::new()] {
        let d = n.publish(m);
        link_out.extend(n.a_delivers(d, t0));
    }
    assert_eq!(
        link_out.len(),
        1 + 40_004usize.div_ceil(dcrelay::FRAGMENT) + 1
    );
    assert!(n.b_receives(link_out, t0).is_empty(), "no loss, no NACK");
    assert_eq!(n.viewer, vec![sent(b"hello"), sent(&big), sent(b"")]);
    assert!(n.dropped.is_empty());
    assert_eq!(
        get(&n.b.stats, 0, Counter::RelayRxPackets),
        get(&n.a.stats, 0, Counter::RelayTxPackets)
    );
}

#[test]
fn lost_fragment_is_repaired_by_the_link_nack() {
    let mut n = Nodes::new();
    let t0 = t0();
    let joined = n.relay_joins();
    let open = n.a_delivers(joined, t0);
    n.b_receives(open, t0);
    n.viewer.clear();
    let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    let d = n.publish(payload.clone());
    let mut link_out = n.a_delivers(d, t0);
    assert_eq!(link_out.len(), 3);
    link_out.remove(1); // lost on the hop
    let nacks = n.b_receives(link_out, t0);
    assert_eq!(nacks.len(), 1, "B NACKs the gap at once");
    assert!(n.viewer.is_empty(), "held until repaired");
    let t1 = t0 + Duration::from_millis(20);
    let resent = n.a_receives(nacks, t1);
    assert_eq!(
        resent.len(),
        1,
        "A resends the lost fragment from its cache"
    );
    assert!(n.b_receives(resent, t1).is_empty());
    assert_eq!(n.viewer, vec![sent(&payload)]);
    assert!(n.dropped.is_empty());
    assert_eq!(get(&n.b.stats, 0, Counter::RelayNacksSent), 1);
    assert_eq!(get(&n.a.stats, 0, Counter::Retransmitted), 1);
    // The repaired gap is not asked for again.
    let t2 = t0 + Duration::from_millis(100);
    assert!(n.b_receives(Vec::new(), t2).is_empty());
}

#[test]
fn unrepaired_loss_drops_one_message_and_later_ones_arrive() {
    let mut n = Nodes::new();
    let t0 = t0();
    let joined = n.relay_joins();
    let open = n.a_delivers(joined, t0);
    n.b_receives(open, t0);
    n.viewer.clear();
    let d = n.publish(vec![1; 2000]);
    let mut link_out = n.a_delivers(d, t0);
    link_out.remove(0);
    let d = n.publish(b"next".to_vec());
    link_out.extend(n.a_delivers(d, t0));
    // A never answers: the NACKs are lost too.
    let mut t = t0;
    for _ in 0..100 {
        n.b_receives(std::mem::take(&mut link_out), t);
        t += Duration::from_millis(5);
    }
    assert_eq!(n.viewer, vec![sent(b"next")]);
    assert_eq!(n.dropped, vec![dcrelay::Dropped::OutOfSequence]);
}

#[test]
fn forged_data_fragment_is_dropped_before_the_slow_path() {
    let mut n = Nodes::new();
    let t0 = t0();
    // Right SSRC and payload type, wrong key: a stranger on the relay socket.
    let mut forger = Context::new(LINK, &[K_FWD + 1; 28]).expect("ctx");
    let mut p = vec![0x80, dcrelay::PAYLOAD_TYPE, 0, 1, 0, 0, 0, 0];
    p.extend_from_slice(&dcrelay::SSRC.to_be_bytes());
    p.extend_from_slice(&[dcrelay::KIND_CLOSE, dcrelay::FIRST | dcrelay::LAST, 0, 0]);
    let len = p.len();
    p.resize(len + 32, 0);
    let len = forger.protect_rtp(&mut p, len).expect("protect");
    p.truncate(len);
    assert!(n.b_receives(vec![p], t0).is_empty());
    assert_eq!(n.b.engines[0].poll_event(), None);
    assert_eq!(get(&n.b.stats, 0, Counter::DropRelayUnauthenticated), 1);
    // Authenticated but malformed: handed up, and dropped by the reassembly.
    let mut fwd = link(K_FWD);
    let mut p = vec![0x80, dcrelay::PAYLOAD_TYPE, 0, 2, 0, 0, 0, 0];
    p.extend_from_slice(&dcrelay::SSRC.to_be_bytes());
    p.extend_from_slice(&[99, 0]);
    let len = p.len();
    p.resize(len + 32, 0);
    let len = fwd.protect_rtp(&mut p, len).expect("protect");
    p.truncate(len);
    n.b_receives(vec![p], t0);
    assert_eq!(n.dropped, vec![dcrelay::Dropped::Malformed]);
    assert!(n.viewer.is_empty());
}

#[test]
fn relay_data_command_for_a_session_that_is_not_a_relay_out_is_dropped() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    add_sub(e, 3, 6003, LINK);
    let mut out = Capture::default();
    e.handle_command(
        WorkerCommand::RelayData {
            id: SessionId(3),
            fragments: vec![vec![dcrelay::KIND_CLOSE, 3, 0, 0]],
        },
        t0(),
        &mut out,
    );
    assert!(out.sent.is_empty());
    assert_eq!(get(&f.stats, 0, Counter::DropNoRoute), 1);
}

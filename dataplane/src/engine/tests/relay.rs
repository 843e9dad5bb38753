//! Relay links on virtual time: a relay-out on one engine, a relay-in on another, the link
//! between them carried by hand (so a test can lose, forge or reorder any datagram).

use super::*;

/// The per-link key convention: K_FWD protects source → target, K_BACK target → source.
pub(super) const K_FWD: u8 = 4;
pub(super) const K_BACK: u8 = 5;
pub(super) const LINK: SrtpProfile = SrtpProfile::AeadAes128Gcm;
/// The source node's relay socket, as the target sees it.
pub(super) const SOURCE: u16 = 7100;
/// The target node's relay socket, as the source sees it.
pub(super) const TARGET: u16 = 7000;

pub(super) fn link(k: u8) -> Context {
    Context::new(LINK, &[k; 28]).expect("link ctx")
}

pub(super) fn add_relay_in(e: &mut Engine, id: u64, remote: Option<SocketAddr>) {
    let mut out = Capture::default();
    e.handle_command(
        WorkerCommand::AddRelayIn {
            id: SessionId(id),
            stream: STREAM,
            remote,
            ssrcs: Vec::new(),
            srtp: keys(LINK, K_FWD, K_BACK),
            simulcast: None,
        },
        t0(),
        &mut out,
    );
    assert_eq!(
        e.poll_event(),
        Some(WorkerEvent::Added { id: SessionId(id) })
    );
}

/// Relay-out `id` on `e`; the messages it sent other workers (`Fixture::pump`).
pub(super) fn add_relay_out(
    e: &mut Engine,
    id: u64,
    remote: SocketAddr,
) -> Vec<(u16, super::Inbound)> {
    let mut out = Capture::default();
    e.handle_command(
        WorkerCommand::AddRelayOut {
            id: SessionId(id),
            stream: STREAM,
            remote,
            srtp: keys(LINK, K_BACK, K_FWD),
        },
        t0(),
        &mut out,
    );
    assert_eq!(
        e.poll_event(),
        Some(WorkerEvent::Added { id: SessionId(id) })
    );
    out.to_workers
}

/// The plaintext `srtp_packet` protects for `seq`.
fn plain(seq: u16, payload_len: usize) -> Vec<u8> {
    let mut ctx = Context::new(LINK, &[9; 28]).expect("ctx");
    let mut b = srtp_packet(&mut ctx, seq, payload_len);
    let mut ctx = Context::new(LINK, &[9; 28]).expect("ctx");
    let n = ctx.unprotect_rtp(&mut b).expect("own packet");
    b.truncate(n);
    b
}

/// Link media as the source's relay-out sends it.
pub(super) fn link_packet(ctx: &mut Context, seq: u16) -> Vec<u8> {
    let mut b = plain(seq, 300);
    let n = b.len();
    b.resize(n + 32, 0);
    let n = ctx.protect_rtp(&mut b, n).expect("protect");
    b.truncate(n);
    b
}

fn rtcp_out(ctx: &mut Context, write: impl FnOnce(&mut [u8]) -> usize) -> Vec<u8> {
    let mut b = vec![0u8; 300];
    let n = write(&mut b);
    let n = ctx.protect_rtcp(&mut b, n).expect("protect");
    b.truncate(n);
    b
}

/// The sequence numbers of the NACKs in `sent` to `dst`, decrypted with `ctx`.
pub(super) fn nacked(
    sent: &[(SocketAddr, Vec<u8>)],
    dst: SocketAddr,
    ctx: &mut Context,
) -> Vec<u16> {
    let mut seqs = Vec::new();
    for (d, bytes) in sent.iter().filter(|(d, _)| *d == dst) {
        let mut b = bytes.clone();
        let n = ctx.unprotect_rtcp(&mut b).expect("link key");
        for p in rtcp::compound(&b[..n]) {
            if let Ok(rtcp::Packet::Nack(nack)) = p {
                assert_eq!(nack.media_ssrc, PUB_SSRC, "original SSRC upstream ({d})");
                seqs.extend(nack.lost());
            }
        }
    }
    seqs
}

fn sequences(sent: &[(SocketAddr, Vec<u8>)], dst: SocketAddr, ctx: &mut Context) -> Vec<u16> {
    sent.iter()
        .filter(|(d, _)| *d == dst)
        .map(|(_, bytes)| {
            let mut b = bytes.clone();
            let n = ctx.unprotect_rtp(&mut b).expect("decrypts");
            rtp::Header::parse(&b[..n]).expect("rtp").sequence
        })
        .collect()
}

#[test]
fn relay_out_passes_packets_unchanged_under_the_link_key() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    add_pub(e, 1, Some(addr(5000)), LINK);
    add_relay_out(e, 2, addr(TARGET));
    add_sub(e, 3, 6003, LINK);
    let mut publisher = Context::new(LINK, &[1; 28]).expect("ctx");
    let mut out = Capture::default();
    for seq in 65534..=65535u16 {
        let mut p = srtp_packet(&mut publisher, seq, 700);
        e.handle_datagram(&mut p, addr(5000), t0(), &mut out);
    }
    for seq in 0..3u16 {
        let mut p = srtp_packet(&mut publisher, seq, 700);
        e.handle_datagram(&mut p, addr(5000), t0(), &mut out);
    }
    let mut far = link(K_FWD);
    let mut n_link = 0;
    for ((dst, bytes), via) in out.sent.iter().zip(&out.vias) {
        if *dst != addr(TARGET) {
            assert_eq!(
                *via,
                Via::Media,
                "a subscriber's copy leaves the media socket"
            );
            continue;
        }
        assert_eq!(*via, Via::Relay, "link copies leave the relay socket");
        let mut b = bytes.clone();
        let n = far.unprotect_rtp(&mut b).expect("the link key decrypts");
        let seq = rtp::Header::parse(&b[..n]).expect("rtp").sequence;
        assert_eq!(
            &b[..n],
            &plain(seq, 700)[..],
            "byte for byte what the publisher sent"
        );
        n_link += 1;
    }
    assert_eq!(n_link, 5);
    assert_eq!(get(&f.stats, 0, Counter::RelayTxPackets), 5);
    assert!(
        Context::new(LINK, &[K_BACK; 28])
            .expect("ctx")
            .unprotect_rtp(&mut out.sent[0].1.clone())
            .is_err()
            || out.sent[0].0 != addr(TARGET),
        "the backward key does not open forward media"
    );
}

#[test]
fn relay_socket_drops_everything_but_authenticated_link_packets() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    add_relay_in(e, 1, None);
    add_sub(e, 2, 6002, LINK);
    let mut out = Capture::default();
    let now = t0();
    let unauth = |f: &Fixture| get(&f.stats, 0, Counter::DropRelayUnauthenticated);

    // Forged: right shape, wrong key.
    let mut p = link_packet(&mut link(K_BACK), 1);
    f.engines[0].handle_relay_datagram(&mut p, addr(SOURCE), now, &mut out);
    assert_eq!(unauth(&f), 1);
    // STUN and DTLS have no business on a relay socket.
    let mut stun = check("a", "b", false);
    f.engines[0].handle_relay_datagram(&mut stun, addr(SOURCE), now, &mut out);
    let mut dtls = [22u8, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    f.engines[0].handle_relay_datagram(&mut dtls, addr(SOURCE), now, &mut out);
    assert_eq!(unauth(&f), 3);
    // Link media on the media socket reaches nothing: relay sessions live on the relay one.
    let mut fwd = link(K_FWD);
    let mut p = link_packet(&mut fwd, 1);
    f.engines[0].handle_datagram(&mut p.clone(), addr(SOURCE), now, &mut out);
    assert_eq!(get(&f.stats, 0, Counter::DropUnknownSource), 1);
    assert!(out.sent.is_empty());
    // The first authenticated packet latches its source and flows.
    f.engines[0].handle_relay_datagram(&mut p, addr(SOURCE), now, &mut out);
    assert_eq!(
        f.engines[0].poll_event(),
        Some(WorkerEvent::Latched {
            id: SessionId(1),
            remote: addr(SOURCE)
        })
    );
    assert_eq!(out.sent.len(), 1);
    assert_eq!(get(&f.stats, 0, Counter::RelayRxPackets), 1);
    // The right key from another source is a stranger now.
    let mut p = link_packet(&mut fwd, 2);
    f.engines[0].handle_relay_datagram(&mut p, addr(SOURCE + 1), now, &mut out);
    assert_eq!(unauth(&f), 4);
    // Forged RTCP from the latched source (the source protects its RTCP with K_FWD too).
    let mut fb = rtcp_out(&mut link(K_BACK), |b| {
        rtcp::write_pli(b, 1, PUB_SSRC).expect("pli")
    });
    f.engines[0].handle_relay_datagram(&mut fb, addr(SOURCE), now, &mut out);
    assert_eq!(unauth(&f), 5, "RTCP that does not authenticate");
    assert_eq!(out.sent.len(), 1, "nothing reached the subscriber");
    assert_eq!(get(&f.stats, 0, Counter::RelayRxPackets), 1);
}

#[test]
fn media_publishers_are_not_reachable_on_the_relay_socket() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    add_pub(e, 1, None, LINK); // comedia: latches any source that authenticates
    add_sub(e, 2, 6002, LINK);
    let mut publisher = Context::new(LINK, &[1; 28]).expect("ctx");
    let mut p = srtp_packet(&mut publisher, 1, 100);
    let mut out = Capture::default();
    e.handle_relay_datagram(&mut p, addr(5000), t0(), &mut out);
    assert!(out.sent.is_empty());
    assert_eq!(e.poll_event(), None, "not latched");
    assert_eq!(get(&f.stats, 0, Counter::DropRelayUnauthenticated), 1);
}

#[test]
fn gaps_are_nacked_upstream_with_retries_then_given_up() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    add_relay_in(e, 1, Some(addr(SOURCE)));
    add_sub(e, 2, 6002, LINK);
    let mut fwd = link(K_FWD);
    let mut back = link(K_BACK);
    let t0 = t0();
    let mut out = Capture::default();
    for seq in [10u16, 11, 14] {
        let mut p = link_packet(&mut fwd, seq);
        e.handle_relay_datagram(&mut p, addr(SOURCE), t0, &mut out);
    }
    let mut out = Capture::default();
    e.handle_timeout(t0, &mut out);
    assert_eq!(nacked(&out.sent, addr(SOURCE), &mut back), [12, 13]);
    assert!(out.vias.iter().all(|v| *v == Via::Relay));
    // 13 arrives late: it goes on to the subscriber and is not asked for again.
    let mut late = Capture::default();
    let mut p = link_packet(&mut fwd, 13);
    e.handle_relay_datagram(&mut p, addr(SOURCE), t0, &mut late);
    assert_eq!(late.sent.len(), 1, "a repaired gap is forwarded");
    assert_eq!(late.sent[0].0, addr(6002));
    let mut tries = 1;
    for ms in (5..=400).step_by(5) {
        let mut out = Capture::default();
        e.handle_timeout(t0 + Duration::from_millis(ms), &mut out);
        let seqs = nacked(&out.sent, addr(SOURCE), &mut back);
        if !seqs.is_empty() {
            assert_eq!(seqs, [12]);
            assert!(ms % 30 == 0, "every NACK_RETRY, not at {ms} ms");
            tries += 1;
        }
    }
    assert_eq!(tries, crate::engine::relay::NACK_TRIES, "then given up");
    assert_eq!(get(&f.stats, 0, Counter::RelayNacksSent), 2 + 3);
}

#[test]
fn link_nack_is_served_from_the_cache_across_workers() {
    let mut f = fixture(2);
    add_pub(&mut f.engines[0], 1, Some(addr(5000)), LINK);
    publisher_on_0_viewers_on_1(&mut f);
    let msgs = add_relay_out(&mut f.engines[1], 2, addr(TARGET));
    f.pump(msgs);
    let mut publisher = Context::new(LINK, &[1; 28]).expect("ctx");
    let now = t0();
    let mut out = Capture::default();
    for seq in 100..110u16 {
        let mut p = srtp_packet(&mut publisher, seq, 200);
        f.engines[0].handle_datagram(&mut p, addr(5000), now, &mut out);
    }
    let mut delivered = Capture::default();
    for (_, msg) in std::mem::take(&mut out.to_workers) {
        f.engines[1].handle_inbound(msg, now, &mut delivered);
    }
    assert_eq!(delivered.sent.len(), 10, "one link copy per packet");
    // The target lost 104 and 107 and says so, naming the original SSRC and numbers.
    let mut nack = rtcp_out(&mut link(K_BACK), |b| {
        rtcp::write_nack(b, 0xfeed, PUB_SSRC, &[104, 107]).expect("nack")
    });
    let mut out = Capture::default();
    f.engines[1].handle_relay_datagram(&mut nack, addr(TARGET), now, &mut out);
    assert_eq!(get(&f.stats, 1, Counter::NacksReceived), 2);
    let mut back = Capture::default();
    for (w, msg) in std::mem::take(&mut out.to_workers) {
        assert_eq!(w, 0, "asked of the publisher's worker");
        f.engines[0].handle_inbound(msg, now, &mut back);
    }
    let mut resent = Capture::default();
    for (w, msg) in std::mem::take(&mut back.to_workers) {
        assert_eq!(w, 1);
        f.engines[1].handle_inbound(msg, now, &mut resent);
    }
    assert!(resent.vias.iter().all(|v| *v == Via::Relay));
    // Same SSRC and numbers as the originals: a fresh context (the far node had not
    // received them) decrypts them as the originals.
    let mut far = link(K_FWD);
    let mut seqs = Vec::new();
    for (dst, bytes) in &resent.sent {
        assert_eq!(*dst, addr(TARGET));
        let mut b = bytes.clone();
        let n = far.unprotect_rtp(&mut b).expect("link key");
        let seq = rtp::Header::parse(&b[..n]).expect("rtp").sequence;
        assert_eq!(&b[..n], &plain(seq, 200)[..]);
        seqs.push(seq);
    }
    assert_eq!(seqs, [104, 107]);
    assert_eq!(get(&f.stats, 1, Counter::Retransmitted), 2);
    assert_eq!(get(&f.stats, 1, Counter::RelayTxPackets), 12);
}

#[test]
fn keyframe_requests_go_upstream_as_pli_and_on_to_the_publisher() {
    // Target side: a viewer's PLI becomes a PLI over the link, for the original SSRC.
    let mut b = fixture(1);
    add_relay_in(&mut b.engines[0], 1, Some(addr(SOURCE)));
    add_sub(&mut b.engines[0], 2, 6002, LINK);
    let t0 = t0();
    let mut out = Capture::default();
    let mut p = link_packet(&mut link(K_FWD), 1);
    b.engines[0].handle_relay_datagram(&mut p, addr(SOURCE), t0, &mut out);
    let mut pli = rtcp_out(&mut Context::new(LINK, &[3; 28]).expect("ctx"), |buf| {
        rtcp::write_pli(buf, 0xabc, 2 * 16).expect("pli")
    });
    let mut out = Capture::default();
    b.engines[0].handle_datagram(&mut pli, addr(6002), t0, &mut out);
    assert_eq!(out.sent.len(), 1);
    assert_eq!((out.sent[0].0, out.vias[0]), (addr(SOURCE), Via::Relay));
    let mut bytes = out.sent[0].1.clone();
    let n = link(K_BACK).unprotect_rtcp(&mut bytes).expect("link key");
    let upstream_pli = bytes[..n].to_vec();
    assert!(matches!(
        rtcp::compound(&upstream_pli).next(),
        Some(Ok(rtcp::Packet::Pli {
            media_ssrc: PUB_SSRC,
            ..
        }))
    ));

    // Source side: that PLI, arriving over the link, reaches the publisher.
    let mut a = fixture(1);
    add_pub(&mut a.engines[0], 1, Some(addr(5000)), LINK);
    add_relay_out(&mut a.engines[0], 2, addr(TARGET));
    let mut publisher = Context::new(LINK, &[1; 28]).expect("ctx");
    let mut out = Capture::default();
    let mut p = srtp_packet(&mut publisher, 1, 100);
    a.engines[0].handle_datagram(&mut p, addr(5000), t0, &mut out);
    let mut over_link = rtcp_out(&mut link(K_BACK), |buf| {
        buf[..upstream_pli.len()].copy_from_slice(&upstream_pli);
        upstream_pli.len()
    });
    let mut out = Capture::default();
    a.engines[0].handle_relay_datagram(
        &mut over_link,
        addr(TARGET),
        // The relay-out's own join asked for a keyframe already; be past its throttle.
        t0 + 2 * PLI_INTERVAL,
        &mut out,
    );
    assert_eq!(out.sent.len(), 1, "PLI to the publisher");
    assert_eq!((out.sent[0].0, out.vias[0]), (addr(5000), Via::Media));
    assert_eq!(
        get(&a.stats, 0, Counter::PliForwarded),
        2,
        "the relay-out's join and the far viewer's request"
    );
}

#[test]
fn relay_in_fans_out_to_local_and_other_workers_subscribers() {
    let mut f = fixture(2);
    add_relay_in(&mut f.engines[0], 1, Some(addr(SOURCE)));
    publisher_on_0_viewers_on_1(&mut f);
    for id in 2..5u64 {
        add_sub(&mut f.engines[0], id, 6000 + id as u16, LINK);
    }
    for id in 5..8u64 {
        let msgs = add_sub(&mut f.engines[1], id, 6000 + id as u16, LINK);
        f.pump(msgs);
    }
    let mut fwd = link(K_FWD);
    let now = t0();
    let mut out = Capture::default();
    for seq in 1..=20u16 {
        let mut p = link_packet(&mut fwd, seq);
        f.engines[0].handle_relay_datagram(&mut p, addr(SOURCE), now, &mut out);
    }
    for (_, msg) in std::mem::take(&mut out.to_workers) {
        f.engines[1].handle_inbound(msg, now, &mut out);
    }
    for id in 2..8u64 {
        let mut ctx = Context::new(LINK, &[id as u8; 28]).expect("ctx");
        let seqs = sequences(&out.sent, addr(6000 + id as u16), &mut ctx);
        assert_eq!(seqs.len(), 20, "subscriber {id} got every packet");
        assert!(seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)));
    }
    assert_eq!(get(&f.stats, 0, Counter::RelayRxPackets), 20);
    assert_eq!(
        get(&f.stats, 0, Counter::CrossWorkerOut),
        20,
        "one handle per packet"
    );
}

#[test]
fn subscriber_nack_missing_from_the_relay_cache_goes_upstream() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    add_relay_in(e, 1, Some(addr(SOURCE)));
    add_sub(e, 2, 6002, LINK);
    let mut fwd = link(K_FWD);
    let t0 = t0();
    let mut out = Capture::default();
    for seq in 0..100u16 {
        let mut p = link_packet(&mut fwd, seq);
        e.handle_relay_datagram(&mut p, addr(SOURCE), t0, &mut out);
    }
    // The subscriber's numbering of seq 0 gives its offset.
    let first = sequences(
        &out.sent[..1],
        addr(6002),
        &mut Context::new(LINK, &[2; 28]).expect("ctx"),
    );
    let off = first[0];
    let mut sub_tx = Context::new(LINK, &[3; 28]).expect("ctx");
    // 90 is cached (served at once); 10 fell out of the 64-packet cache (asked upstream).
    let mut nack = rtcp_out(&mut sub_tx, |b| {
        rtcp::write_nack(
            b,
            0xabc,
            2 * 16,
            &[off.wrapping_add(10), off.wrapping_add(90)],
        )
        .expect("nack")
    });
    let mut out = Capture::default();
    e.handle_datagram(&mut nack, addr(6002), t0, &mut out);
    assert_eq!(out.sent.len(), 1, "90 from the cache");
    assert_eq!(out.sent[0].0, addr(6002));
    let mut out = Capture::default();
    e.handle_timeout(t0, &mut out);
    assert_eq!(nacked(&out.sent, addr(SOURCE), &mut link(K_BACK)), [10]);
}

/// Source and target engines with the link carried by hand, losing what `lose` says.
#[test]
fn loss_on_the_hop_is_repaired_end_to_end() {
    let mut a = fixture(1);
    let mut b = fixture(1);
    add_pub(&mut a.engines[0], 1, Some(addr(5000)), LINK);
    add_relay_out(&mut a.engines[0], 2, addr(TARGET));
    add_relay_in(&mut b.engines[0], 1, Some(addr(SOURCE)));
    for id in 2..7u64 {
        add_sub(&mut b.engines[0], id, 6000 + id as u16, LINK);
    }
    let mut publisher = Context::new(LINK, &[1; 28]).expect("ctx");
    let t0 = t0();
    let mut viewers = Capture::default();
    let mut lost = 0;
    for seq in 0..200u16 {
        let now = t0 + Duration::from_millis(u64::from(seq) * 5);
        let mut out = Capture::default();
        let mut p = srtp_packet(&mut publisher, seq, 500);
        a.engines[0].handle_datagram(&mut p, addr(5000), now, &mut out);
        a.engines[0].handle_timeout(now, &mut out);
        // Every 10th datagram A → B is lost on the hop.
        for (dst, mut bytes) in out.sent {
            if dst != addr(TARGET) {
                continue;
            }
            if seq % 10 == 3 {
                lost += 1;
                continue;
            }
            b.engines[0].handle_relay_datagram(&mut bytes, addr(SOURCE), now, &mut viewers);
        }
        let mut back = Capture::default();
        b.engines[0].handle_timeout(now, &mut back);
        for (dst, mut bytes) in back.sent {
            assert_eq!(dst, addr(SOURCE));
            let mut resent = Capture::default();
            a.engines[0].handle_relay_datagram(&mut bytes, addr(TARGET), now, &mut resent);
            for (dst, mut bytes) in resent.sent {
                if dst == addr(TARGET) {
                    b.engines[0].handle_relay_datagram(&mut bytes, addr(SOURCE), now, &mut viewers);
                }
            }
        }
    }
    assert_eq!(lost, 20);
    for id in 2..7u64 {
        let mut ctx = Context::new(LINK, &[id as u8; 28]).expect("ctx");
        let mut seqs = sequences(&viewers.sent, addr(6000 + id as u16), &mut ctx);
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len(), 200, "viewer {id} has every packet");
    }
    assert_eq!(get(&b.stats, 0, Counter::RelayNacksSent), 20);
    assert_eq!(get(&a.stats, 0, Counter::RelayTxPackets), 220);
    assert_eq!(get(&b.stats, 0, Counter::RelayRxPackets), 200);
}

#[test]
fn links_of_several_streams_share_one_address_pair() {
    // Two streams between the same two relay sockets: each link has its own key, and the key
    // that authenticates a packet says which link it belongs to.
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    let mut out = Capture::default();
    let other = StreamId(2);
    let (fwd2, back2) = (6u8, 7u8);
    add_relay_in(e, 1, None);
    e.handle_command(
        WorkerCommand::AddRelayIn {
            id: SessionId(2),
            stream: other,
            remote: None,
            ssrcs: Vec::new(),
            srtp: keys(LINK, fwd2, back2),
            simulcast: None,
        },
        t0(),
        &mut out,
    );
    assert_eq!(
        e.poll_event(),
        Some(WorkerEvent::Added { id: SessionId(2) })
    );
    let now = t0();
    for (k, id) in [(K_FWD, 1), (fwd2, 2)] {
        let mut p = link_packet(&mut link(k), 1);
        e.handle_relay_datagram(&mut p, addr(SOURCE), now, &mut out);
        assert_eq!(
            e.poll_event(),
            Some(WorkerEvent::Latched {
                id: SessionId(id),
                remote: addr(SOURCE)
            })
        );
    }
    let mut p = link_packet(&mut link(fwd2), 2);
    e.handle_relay_datagram(&mut p, addr(SOURCE), now, &mut out);
    assert_eq!(get(&f.stats, 0, Counter::RelayRxPackets), 3);
    assert_eq!(get(&f.stats, 0, Counter::DropRelayUnauthenticated), 0);

    // The source side: two relay-outs to the same far socket, feedback told apart by key.
    let e = &mut f.engines[0];
    add_relay_out(e, 3, addr(TARGET));
    e.handle_command(
        WorkerCommand::AddRelayOut {
            id: SessionId(4),
            stream: other,
            remote: addr(TARGET),
            srtp: keys(LINK, back2, fwd2),
        },
        t0(),
        &mut out,
    );
    assert_eq!(
        e.poll_event(),
        Some(WorkerEvent::Added { id: SessionId(4) })
    );
    let mut fb = rtcp_out(&mut link(back2), |b| {
        rtcp::write_pli(b, 1, PUB_SSRC).expect("pli")
    });
    e.handle_relay_datagram(&mut fb, addr(TARGET), now, &mut out);
    assert_eq!(get(&f.stats, 0, Counter::DropRelayUnauthenticated), 0);
    let mut forged = rtcp_out(&mut link(9), |b| {
        rtcp::write_pli(b, 1, PUB_SSRC).expect("pli")
    });
    e.handle_relay_datagram(&mut forged, addr(TARGET), now, &mut out);
    assert_eq!(get(&f.stats, 0, Counter::DropRelayUnauthenticated), 1);

    // Removing the address's holder hands it to the other link.
    let e = &mut f.engines[0];
    e.handle_command(WorkerCommand::Remove { id: SessionId(1) }, t0(), &mut out);
    while e.poll_event().is_some() {}
    let mut p = link_packet(&mut link(fwd2), 3);
    e.handle_relay_datagram(&mut p, addr(SOURCE), now, &mut out);
    assert_eq!(get(&f.stats, 0, Counter::RelayRxPackets), 4);
}

#[test]
fn given_ssrcs_fix_the_relay_ins_track_order() {
    // The publisher's track 0 is some other SSRC, track 1 is PUB_SSRC; PUB_SSRC arriving
    // first must still be track 1 here (WHEP maps tracks in the publisher's m-line order).
    let first = 0x0A0A_0A0A;
    for (given, track) in [(vec![first, PUB_SSRC], 1u32), (Vec::new(), 0)] {
        let mut f = fixture(1);
        let e = &mut f.engines[0];
        let mut out = Capture::default();
        e.handle_command(
            WorkerCommand::AddRelayIn {
                id: SessionId(1),
                stream: STREAM,
                remote: None,
                ssrcs: given.clone(),
                srtp: keys(LINK, K_FWD, K_BACK),
                simulcast: None,
            },
            t0(),
            &mut out,
        );
        assert_eq!(
            e.poll_event(),
            Some(WorkerEvent::Added { id: SessionId(1) })
        );
        add_sub(e, 2, 6002, LINK);
        let mut p = link_packet(&mut link(K_FWD), 1);
        e.handle_relay_datagram(&mut p, addr(SOURCE), t0(), &mut out);
        let (dst, pkt) = out.sent.last().expect("forwarded");
        assert_eq!(*dst, addr(6002));
        let mut pkt = pkt.clone();
        let mut sub = Context::new(LINK, &[2; 28]).expect("ctx");
        sub.unprotect_rtp(&mut pkt).expect("subscriber's key");
        let ssrc = u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]);
        assert_eq!(ssrc, sub_ssrcs(2 * 16)[track as usize], "given {given:?}");
    }
}

/// The source measures the link's round trip (RFC 3550 §6.4.1): the publisher's sender
/// report leaves on the link, the target's receiver report echoes it with the time it held
/// it, and the relay-out's session slot carries the difference. Virtual time: 10 ms to the
/// target, 15 ms back, however long the target held the report.
#[test]
fn the_relay_out_measures_the_links_round_trip() {
    let t0 = t0();
    let ms = |m: u64| t0 + Duration::from_millis(m);
    let mut a = fixture(1);
    add_pub(&mut a.engines[0], 1, Some(addr(5000)), LINK);
    add_relay_out(&mut a.engines[0], 2, addr(TARGET));
    let mut b = fixture(1);
    add_relay_in(&mut b.engines[0], 1, Some(addr(SOURCE)));
    let mut publisher = Context::new(LINK, &[1; 28]).expect("ctx");

    // Media, then the publisher's SR at 100 ms: both cross the link, 10 ms on the way.
    let mut out = Capture::default();
    for seq in 1..=3u16 {
        let mut p = srtp_packet(&mut publisher, seq, 100);
        a.engines[0].handle_datagram(&mut p, addr(5000), ms(u64::from(seq)), &mut out);
    }
    let mut sr = [0u8; 128];
    let len = rtcp::write_sender_report(&mut sr, PUB_SSRC, 0xAABB_CCDD_0011_2233, 0, 3, 300, &[])
        .expect("sr");
    let n = publisher.protect_rtcp(&mut sr, len).expect("protect");
    a.engines[0].handle_datagram(&mut sr[..n], addr(5000), ms(100), &mut out);
    let crossing: Vec<Vec<u8>> = out
        .sent
        .iter()
        .filter(|(d, _)| *d == addr(TARGET))
        .map(|(_, bytes)| bytes.clone())
        .collect();
    assert_eq!(crossing.len(), 4, "three packets and the SR");
    let mut out = Capture::default();
    for (k, mut bytes) in crossing.into_iter().enumerate() {
        let at = if k < 3 { ms(11 + k as u64) } else { ms(110) };
        b.engines[0].handle_relay_datagram(&mut bytes, addr(SOURCE), at, &mut out);
    }
    let id = SessionId(2).0;
    assert_eq!(a.stats.find(0, id).expect("slot").rtt, None, "no echo yet");

    // The target's receiver report at 1,040 ms (held 930 ms), back at the source 15 ms later.
    let mut out = Capture::default();
    b.engines[0].handle_timeout(ms(1040), &mut out);
    let rr: Vec<Vec<u8>> = out
        .sent
        .iter()
        .filter(|(d, _)| *d == addr(SOURCE))
        .map(|(_, bytes)| bytes.clone())
        .collect();
    assert_eq!(rr.len(), 1, "one receiver report upstream");
    let mut out = Capture::default();
    let mut back = rr[0].clone();
    a.engines[0].handle_relay_datagram(&mut back, addr(TARGET), ms(1055), &mut out);
    let rtt = a.stats.find(0, id).expect("slot").rtt.expect("measured");
    // 25 ms, to the DLSR's resolution (1/65536 s).
    assert!(
        rtt.abs_diff(Duration::from_millis(25)) < Duration::from_micros(40),
        "{rtt:?}"
    );
    // A forged echo (an LSR never sent) changes nothing.
    let mut forged = rtcp_out(&mut link(K_BACK), |buf| {
        let block = rtcp::ReportBlock {
            ssrc: PUB_SSRC,
            lsr: 0x1234_5678,
            ..rtcp::ReportBlock::default()
        };
        rtcp::write_receiver_report(buf, 77, &[block]).expect("rr")
    });
    a.engines[0].handle_relay_datagram(&mut forged, addr(TARGET), ms(1200), &mut out);
    assert_eq!(a.stats.find(0, id).expect("slot").rtt, Some(rtt));
}

//! Engine tests on virtual time and in-memory outputs: no sockets, no threads.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_shared::command::{
    CommandError, IceCredentials, SessionId, SrtpKeys, SrtpProfile, ALL_TRACKS, MAX_TRACKS,
};
use switchyard_shared::packet::{rtcp, rtp};
use switchyard_shared::srtp::Context;
use switchyard_shared::stats::{Counter, Stats};

use super::*;
use crate::testing::t0;

mod bwe;
mod events;
mod ice_consent;
mod latch;
mod local_address;
mod padding;
mod prime;
mod relay;
mod relay_data;
mod relay_simulcast;
mod retarget;
mod simulcast;
mod svc;
mod timers;
mod uplink;

/// Records what an engine sends.
#[derive(Default)]
struct Capture {
    sent: Vec<(SocketAddr, Vec<u8>)>,
    /// The socket of each of `sent`.
    vias: Vec<Via>,
    /// The local address each of `sent` left from (`None`: the kernel's choice).
    froms: Vec<Option<IpAddr>>,
    to_workers: Vec<(u16, Inbound)>,
    /// When set, `to_worker` refuses (a full queue).
    refuse: bool,
}

impl Output for Capture {
    fn send_from(
        &mut self,
        via: Via,
        dst: SocketAddr,
        from: Option<IpAddr>,
        fill: &mut dyn FnMut(&mut [u8]) -> Option<usize>,
    ) -> Result<(), SendError> {
        let mut buf = vec![0u8; 1536];
        let n = fill(&mut buf).ok_or(SendError::Cancelled)?;
        buf.truncate(n);
        self.sent.push((dst, buf));
        self.vias.push(via);
        self.froms.push(from);
        Ok(())
    }

    fn to_worker(&mut self, worker: u16, msg: Inbound) -> Result<(), Inbound> {
        if self.refuse {
            return Err(msg);
        }
        self.to_workers.push((worker, msg));
        Ok(())
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn keys(profile: SrtpProfile, a: u8, b: u8) -> SrtpKeys {
    SrtpKeys {
        profile,
        remote: vec![a; profile.master_len()],
        local: vec![b; profile.master_len()],
    }
}

struct Fixture {
    engines: Vec<Engine>,
    stats: Arc<Stats>,
    _dir: TempPath,
}

struct TempPath(std::path::PathBuf);
impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Fixture {
    /// Deliver worker messages until none are left, as the workers' queues do (a new
    /// subscriber on another worker than the publisher's asks it for the cached groups,
    /// `prime`, and waits for the answer).
    fn pump(&mut self, msgs: Vec<(u16, Inbound)>) {
        let mut out = Capture {
            to_workers: msgs,
            ..Capture::default()
        };
        self.pump_into(&mut out);
    }

    /// [`Fixture::pump`] of `out`'s messages, what the workers send outside added to it.
    fn pump_into(&mut self, out: &mut Capture) {
        self.pump_at(out, t0());
    }

    /// [`Fixture::pump_into`] at `now`.
    fn pump_at(&mut self, out: &mut Capture, now: Instant) {
        let mut msgs = std::mem::take(&mut out.to_workers);
        while !msgs.is_empty() {
            let mut next = Capture::default();
            for (w, m) in msgs {
                self.engines[usize::from(w)].handle_inbound(m, now, &mut next);
            }
            msgs = std::mem::take(&mut next.to_workers);
            out.sent.extend(next.sent);
            out.vias.extend(next.vias);
            out.froms.extend(next.froms);
        }
    }
}

fn fixture(workers: u16) -> Fixture {
    fixture_with(workers, 0)
}

/// The limits of [`fixture`]'s engines.
fn test_limits() -> Limits {
    Limits {
        max_sessions: 64,
        nack_cache: 64,
        in_flight: 16,
        uplink_nack: true,
        late_join: true,
        pad_video_to: 0,
        viewer_bwe: true,
    }
}

/// [`fixture`] with `media.pad_video_to`.
fn fixture_with(workers: u16, pad_video_to: u16) -> Fixture {
    fixture_limited(
        workers,
        Limits {
            pad_video_to,
            ..test_limits()
        },
    )
}

/// [`fixture`] with these limits.
fn fixture_limited(workers: u16, limits: Limits) -> Fixture {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("swy-engine-{}-{n}", std::process::id()));
    let stats = Arc::new(Stats::create(&path, usize::from(workers), 64, 1).expect("stats"));
    let engines = (0..workers)
        .map(|w| Engine::new(w, limits, stats.clone(), 7 + u64::from(w), t0()))
        .collect();
    Fixture {
        engines,
        stats,
        _dir: TempPath(path),
    }
}

const STREAM: StreamId = StreamId(1);
const PUB_SSRC: u32 = 0x1111_1111;

fn sub_ssrcs(base: u32) -> [u32; MAX_TRACKS] {
    [base, base + 1, base + 2, base + 3]
}

fn add_pub(e: &mut Engine, id: u64, remote: Option<SocketAddr>, profile: SrtpProfile) {
    let mut out = Capture::default();
    e.handle_command(
        WorkerCommand::AddPublisher {
            id: SessionId(id),
            stream: STREAM,
            remote,
            ssrcs: vec![PUB_SSRC],
            clock_rates: vec![90000],
            twcc_ext: None,
            srtp: Some(keys(profile, 1, 2)),
            ice: None,
            simulcast: None,
            uplink: Vec::new(),
        },
        t0(),
        &mut out,
    );
    assert_eq!(
        e.poll_event(),
        Some(WorkerEvent::Added { id: SessionId(id) })
    );
}

/// Subscriber `id` on `e`; the messages it sent other workers (`Fixture::pump`).
fn add_sub(e: &mut Engine, id: u64, port: u16, profile: SrtpProfile) -> Vec<(u16, Inbound)> {
    let mut out = Capture::default();
    e.handle_command(sub_command(id, port, profile), t0(), &mut out);
    assert_eq!(
        e.poll_event(),
        Some(WorkerEvent::Added { id: SessionId(id) })
    );
    out.to_workers
}

/// Wire [`STREAM`] across `f`'s first two workers: the publisher on worker 0, which sends
/// worker 1 its packets, and worker 1 told where the publisher is.
fn publisher_on_0_viewers_on_1(f: &mut Fixture) {
    let mut out = Capture::default();
    f.engines[0].handle_command(
        WorkerCommand::SetRemoteWorkers {
            stream: STREAM,
            workers: [1].into_iter().collect(),
        },
        t0(),
        &mut out,
    );
    f.engines[1].handle_command(
        WorkerCommand::SetPublisherWorker {
            stream: STREAM,
            worker: Some(0),
        },
        t0(),
        &mut out,
    );
}

/// The command that adds subscriber `id` of [`STREAM`] on `port`: SSRCs from `id × 16`,
/// keys `keys(profile, 3, id)` (the viewer decrypts with `[id; 28]`).
fn sub_command(id: u64, port: u16, profile: SrtpProfile) -> WorkerCommand {
    WorkerCommand::AddSubscriber {
        id: SessionId(id),
        stream: STREAM,
        remote: Some(addr(port)),
        ssrcs: sub_ssrcs(id as u32 * 16),
        payload_types: Vec::new(),
        extensions: None,
        rtx: [None; MAX_TRACKS],
        tracks: ALL_TRACKS,
        plain: false,
        srtp: Some(keys(profile, 3, id as u8)),
        ice: None,
    }
}

/// A publisher-side SRTP packet with sequence `seq` and a recognisable payload.
fn srtp_packet(ctx: &mut Context, seq: u16, payload_len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; 12 + payload_len + 32];
    buf[0] = 0x80;
    buf[1] = 96;
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
    buf[8..12].copy_from_slice(&PUB_SSRC.to_be_bytes());
    for (i, b) in buf[12..12 + payload_len].iter_mut().enumerate() {
        *b = (i as u8) ^ (seq as u8);
    }
    let n = ctx
        .protect_rtp(&mut buf, 12 + payload_len)
        .expect("protect");
    buf.truncate(n);
    buf
}

fn get(stats: &Stats, w: usize, c: Counter) -> u64 {
    stats.worker(w).expect("worker").get(c)
}

#[test]
fn fans_out_to_local_subscribers_with_rewrite() {
    for profile in [SrtpProfile::AeadAes128Gcm, SrtpProfile::AesCm128HmacSha1_80] {
        let mut f = fixture(1);
        let e = &mut f.engines[0];
        add_pub(e, 1, Some(addr(5000)), profile);
        add_sub(e, 2, 6002, profile);
        add_sub(e, 3, 6003, profile);
        let mut publisher = Context::new(profile, &[1; 30][..profile.master_len()]).expect("ctx");
        let mut out = Capture::default();
        let now = t0();
        for seq in 65530..=65535u16 {
            let mut p = srtp_packet(&mut publisher, seq, 1000);
            e.handle_datagram(&mut p, addr(5000), now, &mut out);
        }
        for seq in 0..4u16 {
            let mut p = srtp_packet(&mut publisher, seq, 1000);
            e.handle_datagram(&mut p, addr(5000), now, &mut out);
        }
        assert_eq!(out.sent.len(), 20, "10 packets × 2 subscribers");
        for (sub, port) in [(2u64, 6002u16), (3, 6003)] {
            let mut ctx =
                Context::new(profile, &vec![sub as u8; profile.master_len()]).expect("ctx");
            let mut last: Option<u16> = None;
            for (dst, bytes) in out.sent.iter().filter(|(d, _)| d.port() == port) {
                assert_eq!(*dst, addr(port));
                let mut b = bytes.clone();
                let n = ctx.unprotect_rtp(&mut b).expect("subscriber key decrypts");
                let h = rtp::Header::parse(&b[..n]).expect("rtp");
                assert_eq!(h.ssrc, sub as u32 * 16, "rewritten SSRC");
                if let Some(l) = last {
                    assert_eq!(h.sequence, l.wrapping_add(1), "continuous sequence");
                }
                last = Some(h.sequence);
                assert_eq!(n, 1012);
            }
        }
        assert_eq!(get(&f.stats, 0, Counter::Forwarded), 20);
    }
}

#[test]
fn hands_one_packet_per_remote_worker() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let mut f = fixture(3);
    add_pub(&mut f.engines[0], 1, Some(addr(5000)), profile);
    let mut out = Capture::default();
    f.engines[0].handle_command(
        WorkerCommand::SetRemoteWorkers {
            stream: STREAM,
            workers: [1, 2].into_iter().collect(),
        },
        t0(),
        &mut out,
    );
    for (w, id) in [(1usize, 10u64), (1, 11), (2, 12)] {
        let e = &mut f.engines[w];
        e.handle_command(
            WorkerCommand::SetPublisherWorker {
                stream: STREAM,
                worker: Some(0),
            },
            t0(),
            &mut out,
        );
        let msgs = add_sub(e, id, 6000 + id as u16, profile);
        f.pump(msgs);
    }
    let mut publisher = Context::new(profile, &[1; 28]).expect("ctx");
    let mut p = srtp_packet(&mut publisher, 1, 500);
    f.engines[0].handle_datagram(&mut p, addr(5000), t0(), &mut out);
    assert!(out.sent.is_empty(), "no subscribers on worker 0");
    let msgs: Vec<_> = std::mem::take(&mut out.to_workers);
    assert_eq!(msgs.len(), 2, "one handle per worker, not per subscriber");
    let mut delivered = Capture::default();
    for (w, msg) in msgs {
        f.engines[usize::from(w)].handle_inbound(msg, t0(), &mut delivered);
    }
    assert_eq!(delivered.sent.len(), 3);
    // Handles went home to worker 0.
    let returns = delivered
        .to_workers
        .iter()
        .filter(|(w, m)| *w == 0 && matches!(m, Inbound::Return(_)))
        .count();
    assert_eq!(returns, 2);
}

#[test]
fn nack_is_answered_from_the_cache() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    add_pub(e, 1, Some(addr(5000)), profile);
    add_sub(e, 2, 6002, profile);
    let mut publisher = Context::new(profile, &[1; 28]).expect("ctx");
    let mut out = Capture::default();
    for seq in 100..110u16 {
        let mut p = srtp_packet(&mut publisher, seq, 200);
        e.handle_datagram(&mut p, addr(5000), t0(), &mut out);
    }
    // Learn the subscriber's numbering of seq 105.
    let mut sub_rx = Context::new(profile, &[2; 28]).expect("ctx");
    let mut b = out.sent[5].1.clone();
    let n = sub_rx.unprotect_rtp(&mut b).expect("decrypt");
    let lost = rtp::Header::parse(&b[..n]).expect("rtp").sequence;

    let mut sub_tx = Context::new(profile, &[3; 28]).expect("ctx");
    let mut fb = vec![0u8; 200];
    let n = rtcp::write_nack(&mut fb, 0xabc, 2 * 16, &[lost]).expect("nack");
    let n = sub_tx.protect_rtcp(&mut fb, n).expect("protect");
    fb.truncate(n);
    let mut out = Capture::default();
    e.handle_datagram(&mut fb, addr(6002), t0(), &mut out);
    assert_eq!(out.sent.len(), 1, "one retransmission");
    let mut b = out.sent[0].1.clone();
    // The original was already received: a real subscriber would not have it; a fresh
    // context shows the retransmission carries the same rewritten numbering.
    let mut fresh = Context::new(profile, &[2; 28]).expect("ctx");
    let n = fresh.unprotect_rtp(&mut b).expect("decrypt");
    assert_eq!(rtp::Header::parse(&b[..n]).expect("rtp").sequence, lost);
    assert_eq!(get(&f.stats, 0, Counter::Retransmitted), 1);
}

#[test]
fn pli_is_throttled() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    add_pub(e, 1, Some(addr(5000)), profile);
    add_sub(e, 2, 6002, profile);
    let mut sub_tx = Context::new(profile, &[3; 28]).expect("ctx");
    let t0 = t0();
    let mut out = Capture::default();
    for dt in [0u64, 100, 200, 600] {
        let mut fb = vec![0u8; 100];
        let n = rtcp::write_pli(&mut fb, 0xabc, 2 * 16).expect("pli");
        let n = sub_tx.protect_rtcp(&mut fb, n).expect("protect");
        fb.truncate(n);
        e.handle_datagram(
            &mut fb,
            addr(6002),
            t0 + Duration::from_millis(dt),
            &mut out,
        );
    }
    // The subscriber's join already asked for a keyframe (at t0, in add_sub), so its PLIs
    // at 0-200 ms fall in the same 500 ms window; the one at 600 ms passes.
    assert_eq!(out.sent.len(), 1, "at 600 ms only");
    assert_eq!(get(&f.stats, 0, Counter::PliThrottled), 3);
    let mut pub_rx = Context::new(profile, &[2; 28]).expect("ctx");
    let mut b = out.sent[0].1.clone();
    assert_eq!(out.sent[0].0, addr(5000));
    let n = pub_rx
        .unprotect_rtcp(&mut b)
        .expect("publisher decrypts PLI");
    assert!(matches!(
        rtcp::compound(&b[..n]).next(),
        Some(Ok(rtcp::Packet::Pli {
            media_ssrc: PUB_SSRC,
            ..
        }))
    ));
}

#[test]
fn bad_input_is_counted_and_dropped() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    add_pub(e, 1, Some(addr(5000)), profile);
    add_sub(e, 2, 6002, profile);
    let mut out = Capture::default();
    let now = t0();
    let mut publisher = Context::new(profile, &[1; 28]).expect("ctx");
    let good = srtp_packet(&mut publisher, 1, 100);

    let mut wrong = Context::new(profile, &[9; 28]).expect("ctx");
    let cases: Vec<(Vec<u8>, SocketAddr, DropReason)> = vec![
        (vec![0x80, 96, 0, 1], addr(5000), DropReason::Malformed),
        (
            srtp_packet(&mut wrong, 2, 100),
            addr(5000),
            DropReason::SrtpAuth,
        ),
        (good.clone(), addr(5000), DropReason::Oversize), // replaced below
        (
            vec![
                0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
            ],
            addr(5000),
            DropReason::Stun,
        ),
        (vec![22, 254, 253, 0, 0], addr(5000), DropReason::Dtls),
        (vec![0x50; 40], addr(5000), DropReason::UnknownKind),
        (good.clone(), addr(7777), DropReason::UnknownSource),
    ];
    let mut first = good.clone();
    e.handle_datagram(&mut first, addr(5000), now, &mut out);
    assert_eq!(out.sent.len(), 1);
    for (i, (mut bytes, src, reason)) in cases.into_iter().enumerate() {
        if i == 2 {
            // A replay of the packet already accepted.
            bytes = good.clone();
            let before = get(&f.stats, 0, DropReason::Replay.counter());
            e.handle_datagram(&mut bytes, src, now, &mut out);
            assert_eq!(get(&f.stats, 0, DropReason::Replay.counter()), before + 1);
            continue;
        }
        let before = get(&f.stats, 0, reason.counter());
        e.handle_datagram(&mut bytes, src, now, &mut out);
        assert_eq!(
            get(&f.stats, 0, reason.counter()),
            before + 1,
            "case {i} should count {reason:?}"
        );
    }
    let mut big = vec![0x80u8; 1600];
    e.handle_datagram(&mut big, addr(5000), now, &mut out);
    assert_eq!(get(&f.stats, 0, Counter::DropOversize), 1);
    assert_eq!(out.sent.len(), 1, "nothing bad was forwarded");
}

#[test]
fn comedia_publisher_latches_on_first_authenticated_packet() {
    let profile = SrtpProfile::AesCm128HmacSha1_80;
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    add_pub(e, 1, None, profile);
    add_sub(e, 2, 6002, profile);
    let mut out = Capture::default();
    let mut stranger = Context::new(profile, &[8; 30][..30]).expect("ctx");
    let mut p = srtp_packet(&mut stranger, 1, 100);
    e.handle_datagram(&mut p, addr(4444), t0(), &mut out);
    assert!(out.sent.is_empty());
    assert_eq!(e.poll_event(), None);
    let mut publisher = Context::new(profile, &[1; 30]).expect("ctx");
    let mut p = srtp_packet(&mut publisher, 1, 100);
    e.handle_datagram(&mut p, addr(5555), t0(), &mut out);
    assert_eq!(out.sent.len(), 1, "the latching packet is forwarded too");
    assert_eq!(
        e.poll_event(),
        Some(WorkerEvent::Latched {
            id: SessionId(1),
            remote: addr(5555)
        })
    );
}

/// Issue 9: each publisher grew the pool and removal never shrank it, so a node leaked
/// ~3.4 MiB per publisher ever created. The pool must be sized by live publishers.
#[test]
fn pool_is_bounded_by_live_publishers() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    let mut publisher = Context::new(profile, &[1; 28]).expect("ctx");
    let mut out = Capture::default();
    let mut after_first = None;
    for round in 0..5u64 {
        add_pub(e, 10 + round, Some(addr(5000)), profile);
        for seq in 0..50u16 {
            let mut p = srtp_packet(&mut publisher, seq.wrapping_add(round as u16 * 50), 100);
            e.handle_datagram(&mut p, addr(5000), t0(), &mut out);
        }
        let (_, live_total) = e.pool_stats();
        assert!(live_total > 0, "a live publisher has buffers");
        e.handle_command(
            WorkerCommand::Remove {
                id: SessionId(10 + round),
            },
            t0(),
            &mut out,
        );
        assert_eq!(
            e.poll_event(),
            Some(WorkerEvent::Removed {
                id: SessionId(10 + round)
            })
        );
        let (free, total) = e.pool_stats();
        assert_eq!(free, total, "round {round}: every buffer came back");
        assert_eq!(total, 0, "round {round}: no publisher, no pooled buffers");
        after_first.get_or_insert(live_total);
    }
    // A new publisher after the churn gets what the first one had, no more.
    add_pub(e, 100, Some(addr(5000)), profile);
    let (_, one) = e.pool_stats();
    assert_eq!(Some(one), after_first);
}

#[test]
fn remove_frees_everything() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    add_pub(e, 1, Some(addr(5000)), profile);
    add_sub(e, 2, 6002, profile);
    let mut publisher = Context::new(profile, &[1; 28]).expect("ctx");
    let mut out = Capture::default();
    for seq in 0..100u16 {
        let mut p = srtp_packet(&mut publisher, seq, 100);
        e.handle_datagram(&mut p, addr(5000), t0(), &mut out);
    }
    for id in [1, 2] {
        e.handle_command(WorkerCommand::Remove { id: SessionId(id) }, t0(), &mut out);
        assert_eq!(
            e.poll_event(),
            Some(WorkerEvent::Removed { id: SessionId(id) })
        );
    }
    assert_eq!(e.session_count(), 0);
    let (free, total) = e.pool_stats();
    assert_eq!(free, total, "every pooled buffer came back");
    e.handle_command(WorkerCommand::Remove { id: SessionId(1) }, t0(), &mut out);
    assert!(matches!(e.poll_event(), Some(WorkerEvent::Failed { .. })));
    let mut p = srtp_packet(&mut publisher, 200, 100);
    e.handle_datagram(&mut p, addr(5000), t0(), &mut out);
    assert_eq!(out.sent.len(), 100);
}

fn ice_creds(ufrag: &str) -> IceCredentials {
    IceCredentials {
        local_ufrag: ufrag.into(),
        local_pwd: format!("{ufrag}-password-0123456789"),
        remote_ufrag: "peer".into(),
        remote_pwd: PEER_PWD.into(),
    }
}

/// The ICE peer's `a=ice-pwd` in [`ice_creds`]: it signs the peer's answers to our checks.
const PEER_PWD: &str = "peer-password-0123456789";

fn check(ufrag: &str, pwd: &str, nominate: bool) -> Vec<u8> {
    let mut buf = vec![0u8; 256];
    let n = ice::write_binding_request(
        &mut buf,
        &[3; 12],
        &format!("{ufrag}:peer"),
        pwd.as_bytes(),
        nominate,
        100,
        5,
    )
    .expect("request");
    buf.truncate(n);
    buf
}

#[test]
fn ice_lite_validates_answers_and_latches() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    let mut out = Capture::default();
    e.handle_command(
        WorkerCommand::AddPublisher {
            id: SessionId(1),
            stream: STREAM,
            remote: None,
            ssrcs: vec![PUB_SSRC],
            clock_rates: vec![90000],
            twcc_ext: None,
            srtp: Some(keys(profile, 1, 2)),
            ice: Some(ice_creds("pubU")),
            simulcast: None,
            uplink: Vec::new(),
        },
        t0(),
        &mut out,
    );
    assert_eq!(
        e.poll_event(),
        Some(WorkerEvent::Added { id: SessionId(1) })
    );
    add_sub(e, 2, 6002, profile);
    let now = t0();
    let mut publisher = Context::new(profile, &[1; 28]).expect("ctx");

    // Before ICE: media from the peer is from an unknown source, even with the right key
    // (no comedia latching for ICE sessions).
    let mut p = srtp_packet(&mut publisher, 1, 100);
    e.handle_datagram(&mut p, addr(5000), now, &mut out);
    assert_eq!(get(&f.stats, 0, Counter::DropUnknownSource), 1);

    // A check with the wrong password: dropped, unanswered, nothing latched.
    let mut bad = check("pubU", "nope", true);
    e.handle_datagram(&mut bad, addr(5000), now, &mut out);
    assert!(out.sent.is_empty());
    assert_eq!(get(&f.stats, 0, Counter::DropStun), 1);
    assert_eq!(e.poll_event(), None);
    // A check for an unknown ufrag: the same.
    let mut unknown = check("nobody", "nobody-password-0123456789", true);
    e.handle_datagram(&mut unknown, addr(5000), now, &mut out);
    assert_eq!(get(&f.stats, 0, Counter::DropStun), 2);

    // A valid check: answered (signed, with the mapped address) and latched.
    let mut good = check("pubU", "pubU-password-0123456789", false);
    e.handle_datagram(&mut good, addr(5000), now, &mut out);
    assert_eq!(out.sent.len(), 1);
    let (dst, answer) = &out.sent[0];
    assert_eq!(*dst, addr(5000));
    let m = switchyard_shared::packet::stun::Message::parse(answer).expect("answer parses");
    assert_eq!(m.xor_mapped_address(), Some(addr(5000)));
    assert!(m.check_integrity(b"pubU-password-0123456789"));
    assert_eq!(
        e.poll_event(),
        Some(WorkerEvent::Latched {
            id: SessionId(1),
            remote: addr(5000)
        })
    );
    out.sent.clear();
    let mut p = srtp_packet(&mut publisher, 2, 100);
    e.handle_datagram(&mut p, addr(5000), now, &mut out);
    assert_eq!(
        out.sent.len(),
        1,
        "media flows once ICE validated the address"
    );

    // A valid check from elsewhere: answered, address unchanged, and the node checks that
    // address itself (signed with the peer's password) before anything can move there.
    out.sent.clear();
    let mut other = check("pubU", "pubU-password-0123456789", false);
    e.handle_datagram(&mut other, addr(5001), now, &mut out);
    assert_eq!(out.sent.len(), 2, "the answer, then our check");
    assert_eq!(out.sent[1].0, addr(5001));
    let ours = switchyard_shared::packet::stun::Message::parse(&out.sent[1].1).expect("check");
    assert_eq!(ours.class, switchyard_shared::packet::stun::Class::Request);
    assert!(ours.check_integrity(PEER_PWD.as_bytes()));
    let tid = ours.transaction_id;
    assert_eq!(e.poll_event(), None);
    // Nominated there: still nothing until that address answers our check.
    let mut nominated = check("pubU", "pubU-password-0123456789", true);
    e.handle_datagram(&mut nominated, addr(5001), now, &mut out);
    assert_eq!(e.poll_event(), None);
    // It answers: the session moves; the old address is unknown from now on.
    let mut answer = vec![0u8; 128];
    let n = switchyard_shared::packet::stun::write_binding_success(
        &mut answer,
        &tid,
        addr(5001),
        PEER_PWD.as_bytes(),
    )
    .expect("answer");
    answer.truncate(n);
    e.handle_datagram(&mut answer, addr(5001), now, &mut out);
    assert_eq!(
        e.poll_event(),
        Some(WorkerEvent::Latched {
            id: SessionId(1),
            remote: addr(5001)
        })
    );
    let before = get(&f.stats, 0, Counter::DropUnknownSource);
    let mut p = srtp_packet(&mut publisher, 3, 100);
    e.handle_datagram(&mut p, addr(5000), now, &mut out);
    assert_eq!(get(&f.stats, 0, Counter::DropUnknownSource), before + 1);

    // Consent: checks keep it; 30 s of silence ends it, reported once.
    e.handle_timeout(now + Duration::from_secs(29), &mut out);
    assert_eq!(e.poll_event(), None);
    e.handle_timeout(now + Duration::from_secs(31), &mut out);
    assert_eq!(
        e.poll_event(),
        Some(WorkerEvent::ConsentExpired { id: SessionId(1) })
    );
    e.handle_timeout(now + Duration::from_secs(40), &mut out);
    assert_eq!(e.poll_event(), None);
}

#[test]
fn ice_sessions_refuse_bad_specs() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    let mut out = Capture::default();
    let add = |e: &mut Engine, id: u64, remote: Option<SocketAddr>, ice: Option<IceCredentials>| {
        let mut out = Capture::default();
        e.handle_command(
            WorkerCommand::AddSubscriber {
                id: SessionId(id),
                stream: STREAM,
                remote,
                ssrcs: sub_ssrcs(40),
                payload_types: Vec::new(),
                extensions: None,
                rtx: [None; MAX_TRACKS],
                tracks: ALL_TRACKS,
                plain: false,
                srtp: Some(keys(profile, 3, 4)),
                ice,
            },
            t0(),
            &mut out,
        );
        e.poll_event()
    };
    let failed = |id| {
        Some(WorkerEvent::Failed {
            id: SessionId(id),
            error: CommandError::Invalid,
        })
    };
    assert_eq!(add(e, 1, None, None), failed(1), "no address and no ICE");
    assert_eq!(
        add(e, 2, Some(addr(1)), Some(ice_creds("u2"))),
        failed(2),
        "ICE decides the address"
    );
    assert_eq!(
        add(e, 3, None, Some(ice_creds("a:b"))),
        failed(3),
        "a colon cannot be in a ufrag"
    );
    assert_eq!(
        add(e, 4, None, Some(ice_creds("u4"))),
        Some(WorkerEvent::Added { id: SessionId(4) })
    );
    assert_eq!(
        add(e, 5, None, Some(ice_creds("u4"))),
        failed(5),
        "ufrag in use"
    );
    // Removing frees the ufrag.
    e.handle_command(WorkerCommand::Remove { id: SessionId(4) }, t0(), &mut out);
    assert_eq!(
        e.poll_event(),
        Some(WorkerEvent::Removed { id: SessionId(4) })
    );
    assert_eq!(
        add(e, 6, None, Some(ice_creds("u4"))),
        Some(WorkerEvent::Added { id: SessionId(6) })
    );
}

#[test]
fn payload_types_are_rewritten_per_subscriber() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    add_pub(e, 1, Some(addr(5000)), profile);
    add_sub(e, 2, 6002, profile); // identity map
    let mut out = Capture::default();
    e.handle_command(
        WorkerCommand::AddSubscriber {
            id: SessionId(3),
            stream: STREAM,
            remote: Some(addr(6003)),
            ssrcs: sub_ssrcs(48),
            payload_types: vec![(96, 100), (97, 101)],
            extensions: None,
            rtx: [None; MAX_TRACKS],
            tracks: ALL_TRACKS,
            plain: false,
            srtp: Some(keys(profile, 3, 3)),
            ice: None,
        },
        t0(),
        &mut out,
    );
    assert_eq!(
        e.poll_event(),
        Some(WorkerEvent::Added { id: SessionId(3) })
    );
    let mut publisher = Context::new(profile, &[1; 28]).expect("ctx");
    let mut p = srtp_packet(&mut publisher, 1, 100);
    e.handle_datagram(&mut p, addr(5000), t0(), &mut out);
    assert_eq!(out.sent.len(), 2);
    for (dst, bytes) in &out.sent {
        let sub = if dst.port() == 6002 { 2u8 } else { 3 };
        let mut ctx = Context::new(profile, &[sub; 28]).expect("ctx");
        let mut b = bytes.clone();
        let n = ctx.unprotect_rtp(&mut b).expect("decrypts");
        let h = rtp::Header::parse(&b[..n]).expect("rtp");
        let want = if sub == 2 { 96 } else { 100 };
        assert_eq!(h.payload_type, want, "subscriber {sub}");
    }
}

/// An SRTP packet carrying the transport-wide sequence `twcc` in one-byte extension id 5.
fn srtp_packet_twcc(ctx: &mut Context, seq: u16, twcc: u16) -> Vec<u8> {
    let mut buf = vec![0u8; 12 + 8 + 100 + 32];
    buf[0] = 0x90; // V=2, X=1
    buf[1] = 96;
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[8..12].copy_from_slice(&PUB_SSRC.to_be_bytes());
    buf[12..16].copy_from_slice(&[0xBE, 0xDE, 0, 1]);
    let t = twcc.to_be_bytes();
    buf[16..20].copy_from_slice(&[(5 << 4) | 1, t[0], t[1], 0]);
    let n = ctx.protect_rtp(&mut buf, 120).expect("protect");
    buf.truncate(n);
    buf
}

#[test]
fn publishers_get_transport_cc_feedback() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    let mut out = Capture::default();
    e.handle_command(
        WorkerCommand::AddPublisher {
            id: SessionId(1),
            stream: STREAM,
            remote: Some(addr(5000)),
            ssrcs: vec![PUB_SSRC],
            clock_rates: vec![90000],
            twcc_ext: Some(5),
            srtp: Some(keys(profile, 1, 2)),
            ice: None,
            simulcast: None,
            uplink: Vec::new(),
        },
        t0(),
        &mut out,
    );
    assert_eq!(
        e.poll_event(),
        Some(WorkerEvent::Added { id: SessionId(1) })
    );
    let mut publisher = Context::new(profile, &[1; 28]).expect("ctx");
    let t0 = t0();
    for (i, twcc) in [10u16, 11, 13].into_iter().enumerate() {
        let mut p = srtp_packet_twcc(&mut publisher, i as u16 + 1, twcc);
        e.handle_datagram(
            &mut p,
            addr(5000),
            t0 + Duration::from_millis(i as u64),
            &mut out,
        );
    }
    e.handle_timeout(t0 + Duration::from_millis(150), &mut out);
    let fb: Vec<_> = out.sent.iter().filter(|(d, _)| *d == addr(5000)).collect();
    // The feedback, then the first receiver report (due at the first handle_timeout).
    assert_eq!(fb.len(), 2, "one feedback and one RR to the publisher");
    assert_eq!(receiver_reports(&out, addr(5000)).len(), 1);
    // The publisher unprotects it with the node's key and finds a transport-cc packet
    // for packets 10..=13 with 12 missing.
    let mut node_side = Context::new(profile, &[2; 28]).expect("ctx");
    let mut b = fb[0].1.clone();
    let n = node_side.unprotect_rtcp(&mut b).expect("SRTCP decrypts");
    let plain = &b[..n];
    assert_eq!(plain[1], rtcp::PT_RTPFB);
    assert_eq!(plain[0] & 0x1f, 15, "FMT 15: transport-cc");
    assert_eq!(
        u32::from_be_bytes([plain[8], plain[9], plain[10], plain[11]]),
        PUB_SSRC
    );
    assert_eq!(
        u16::from_be_bytes([plain[12], plain[13]]),
        10,
        "base sequence"
    );
    assert_eq!(
        u16::from_be_bytes([plain[14], plain[15]]),
        4,
        "status count"
    );
    // Nothing new: no second feedback.
    out.sent.clear();
    e.handle_timeout(t0 + Duration::from_millis(300), &mut out);
    assert!(out.sent.is_empty());
}

#[test]
fn sender_reports_reach_subscribers_under_their_ssrc_and_offset() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    add_pub(e, 1, Some(addr(5000)), profile);
    add_sub(e, 2, 6002, profile);
    let mut out = Capture::default();
    let now = t0();
    let mut publisher = Context::new(profile, &[1; 28]).expect("ctx");
    // One RTP packet (timestamp 3000) tells us the subscriber's timestamp offset.
    let mut p = srtp_packet(&mut publisher, 1, 100);
    e.handle_datagram(&mut p, addr(5000), now, &mut out);
    let mut sub_ctx = Context::new(profile, &[2; 28]).expect("ctx");
    let mut b = out.sent[0].1.clone();
    let n = sub_ctx.unprotect_rtp(&mut b).expect("rtp");
    let offset = rtp::Header::parse(&b[..n])
        .expect("rtp")
        .timestamp
        .wrapping_sub(3000);
    out.sent.clear();

    let mut sr = [0u8; 128];
    let len =
        rtcp::write_sender_report(&mut sr, PUB_SSRC, 0xAABB_CCDD_0011_2233, 9000, 5, 500, &[])
            .expect("sr");
    let n = publisher.protect_rtcp(&mut sr, len).expect("protect");
    e.handle_datagram(&mut sr[..n], addr(5000), now, &mut out);
    assert_eq!(out.sent.len(), 1);
    let (dst, bytes) = &out.sent[0];
    assert_eq!(*dst, addr(6002));
    let mut b = bytes.clone();
    let n = sub_ctx.unprotect_rtcp(&mut b).expect("srtcp");
    let Some(Ok(rtcp::Packet::SenderReport(got))) = rtcp::compound(&b[..n]).next() else {
        panic!("not an SR")
    };
    assert_eq!(got.ssrc, 2 * 16, "the subscriber's SSRC for track 0");
    assert_eq!(got.ntp, 0xAABB_CCDD_0011_2233);
    assert_eq!(got.rtp_timestamp, 9000u32.wrapping_add(offset));
}

#[test]
fn subscriber_in_handshake_is_skipped_not_dropped() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    add_pub(e, 1, Some(addr(5000)), profile);
    let mut out = Capture::default();
    // A WHEP subscriber: ICE credentials, no address and no keys yet (DTLS to come).
    e.handle_command(
        WorkerCommand::AddSubscriber {
            id: SessionId(2),
            stream: STREAM,
            remote: None,
            ssrcs: sub_ssrcs(32),
            payload_types: Vec::new(),
            extensions: None,
            rtx: [None; MAX_TRACKS],
            tracks: ALL_TRACKS,
            plain: false,
            srtp: None,
            ice: Some(ice_creds("subU")),
        },
        t0(),
        &mut out,
    );
    assert_eq!(
        e.poll_event(),
        Some(WorkerEvent::Added { id: SessionId(2) })
    );
    let mut publisher = Context::new(profile, &[1; 30][..profile.master_len()]).expect("ctx");
    let mut p = srtp_packet(&mut publisher, 1, 100);
    e.handle_datagram(&mut p, addr(5000), t0(), &mut out);
    assert!(out.sent.is_empty());
    assert_eq!(get(&f.stats, 0, Counter::Forwarded), 0);
    assert_eq!(get(&f.stats, 0, DropReason::QueueFull.counter()), 0);
}

#[test]
fn header_extensions_are_renumbered_or_dropped_per_subscriber() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    add_pub(e, 1, Some(addr(5000)), profile);
    let mut out = Capture::default();
    let mut map = [0u8; 16];
    map[5] = 9; // the publisher's id 5 is the subscriber's 9; nothing else survives
    e.handle_command(
        WorkerCommand::AddSubscriber {
            id: SessionId(2),
            stream: STREAM,
            remote: Some(addr(6002)),
            ssrcs: sub_ssrcs(32),
            payload_types: Vec::new(),
            extensions: Some(map),
            rtx: [None; MAX_TRACKS],
            tracks: ALL_TRACKS,
            plain: false,
            srtp: Some(keys(profile, 3, 2)),
            ice: None,
        },
        t0(),
        &mut out,
    );
    assert_eq!(
        e.poll_event(),
        Some(WorkerEvent::Added { id: SessionId(2) })
    );
    out.sent.clear();
    let mut publisher = Context::new(profile, &[1; 28]).expect("ctx");
    let mut p = srtp_packet_twcc(&mut publisher, 1, 0x0102); // one element: id 5, 2 bytes
    e.handle_datagram(&mut p, addr(5000), t0(), &mut out);
    let rtp_out: Vec<_> = out.sent.iter().filter(|(d, _)| *d == addr(6002)).collect();
    assert_eq!(rtp_out.len(), 1);
    let mut ctx = Context::new(profile, &[2; 28]).expect("ctx");
    let mut b = rtp_out[0].1.clone();
    let n = ctx.unprotect_rtp(&mut b).expect("decrypts");
    let h = rtp::Header::parse(&b[..n]).expect("rtp");
    assert_eq!(
        rtp::find_extension(&b[..n], &h, 9).map(|r| b[r].to_vec()),
        Some(vec![1, 2])
    );
    assert_eq!(rtp::find_extension(&b[..n], &h, 5), None);
}

/// A publisher-side SRTP packet with an explicit RTP timestamp.
fn srtp_packet_ts(ctx: &mut Context, seq: u16, ts: u32) -> Vec<u8> {
    let mut buf = vec![0u8; 12 + 100 + 32];
    buf[0] = 0x80;
    buf[1] = 96;
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&ts.to_be_bytes());
    buf[8..12].copy_from_slice(&PUB_SSRC.to_be_bytes());
    let n = ctx.protect_rtp(&mut buf, 112).expect("protect");
    buf.truncate(n);
    buf
}

/// The receiver reports the engine sent to `dst`, decrypted with the node's outbound key
/// towards the publisher (`[2; 28]` in `add_pub`): (sender SSRC, blocks).
fn receiver_reports(out: &Capture, dst: SocketAddr) -> Vec<(u32, Vec<rtcp::ReportBlock>)> {
    let mut node_side = Context::new(SrtpProfile::AeadAes128Gcm, &[2; 28]).expect("ctx");
    let mut found = Vec::new();
    for (d, bytes) in &out.sent {
        if *d != dst {
            continue;
        }
        let mut b = bytes.clone();
        let n = node_side
            .unprotect_rtcp(&mut b)
            .expect("SRTCP decrypts with the key");
        for p in rtcp::compound(&b[..n]) {
            if let Ok(rtcp::Packet::ReceiverReport(rr)) = p {
                found.push((rr.ssrc, rr.reports().collect()));
            }
        }
    }
    found
}

#[test]
fn publishers_get_receiver_reports_with_loss_jitter_and_lsr() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    add_pub(e, 1, Some(addr(5000)), profile);
    let mut publisher = Context::new(profile, &[1; 28]).expect("ctx");
    let mut out = Capture::default();
    let t0 = t0();
    let ms = |m: u64| t0 + Duration::from_millis(m);
    // 10 ms of 90 kHz media per packet. 4 arrives after 5 (and 2 ms late), 6 never comes.
    for (seq, arrival) in [
        (1u16, 10u64),
        (2, 20),
        (3, 30),
        (5, 50),
        (4, 52),
        (7, 70),
        (8, 80),
    ] {
        let mut p = srtp_packet_ts(&mut publisher, seq, u32::from(seq) * 900);
        e.handle_datagram(&mut p, addr(5000), ms(arrival), &mut out);
    }
    // The publisher's SR at 40 ms.
    let mut sr = [0u8; 128];
    let len = rtcp::write_sender_report(&mut sr, PUB_SSRC, 0xAABB_CCDD_0011_2233, 0, 5, 500, &[])
        .expect("sr");
    let n = publisher.protect_rtcp(&mut sr, len).expect("protect");
    e.handle_datagram(&mut sr[..n], addr(5000), ms(40), &mut out);
    assert!(out.sent.is_empty(), "no subscriber, nothing sent yet");

    e.handle_timeout(ms(1040), &mut out);
    let rrs = receiver_reports(&out, addr(5000));
    assert_eq!(rrs.len(), 1, "one RR");
    let (sender, blocks) = &rrs[0];
    assert_eq!(*sender, e.rtcp_ssrc);
    assert_eq!(blocks.len(), 1, "one block per track");
    let b = blocks[0];
    assert_eq!(b.ssrc, PUB_SSRC);
    assert_eq!(b.highest_seq, 8);
    assert_eq!(b.cumulative_lost, 1, "6 lost; 4 only late");
    assert_eq!(b.fraction_lost, 32, "1 of 8 expected, in 1/256");
    // Packet 4 is 12 ms (1080 ticks) later than its timestamp says, the others on time:
    // |D| is 1080 for 5→4 and 4→7, 0 otherwise; RFC 3550 A.8's integer form gives
    // 1080, 2092, 1961 (×16) → 122.
    assert_eq!(b.jitter, 122);
    assert_eq!(b.lsr, 0xCCDD_0011, "middle 32 bits of the SR's NTP time");
    assert_eq!(b.dlsr, 65536, "1 s since the SR, in 1/65536 s");

    // Not again within the interval.
    out.sent.clear();
    e.handle_timeout(ms(1500), &mut out);
    assert!(out.sent.is_empty());
    // Next interval: 9 and 10 arrive; no new loss this interval.
    for seq in [9u16, 10] {
        let mut p = srtp_packet_ts(&mut publisher, seq, u32::from(seq) * 900);
        e.handle_datagram(&mut p, addr(5000), ms(u64::from(seq) * 10), &mut out);
    }
    e.handle_timeout(ms(2040), &mut out);
    let rrs = receiver_reports(&out, addr(5000));
    assert_eq!(rrs.len(), 1);
    let b = rrs[0].1[0];
    assert_eq!(b.highest_seq, 10);
    assert_eq!(b.cumulative_lost, 1);
    assert_eq!(b.fraction_lost, 0, "nothing lost since the last report");
    assert_eq!(b.dlsr, 2 * 65536);
}

#[test]
fn receiver_report_jitter_is_zero_without_a_clock_rate() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    let mut out = Capture::default();
    e.handle_command(
        WorkerCommand::AddPublisher {
            id: SessionId(1),
            stream: STREAM,
            remote: Some(addr(5000)),
            ssrcs: vec![],
            clock_rates: vec![],
            twcc_ext: None,
            srtp: Some(keys(profile, 1, 2)),
            ice: None,
            simulcast: None,
            uplink: Vec::new(),
        },
        t0(),
        &mut out,
    );
    let mut publisher = Context::new(profile, &[1; 28]).expect("ctx");
    let t0 = t0();
    for (seq, arrival) in [(1u16, 10u64), (2, 37), (3, 31), (4, 90)] {
        let mut p = srtp_packet_ts(&mut publisher, seq, u32::from(seq) * 900);
        e.handle_datagram(
            &mut p,
            addr(5000),
            t0 + Duration::from_millis(arrival),
            &mut out,
        );
    }
    e.handle_timeout(t0 + Duration::from_millis(100), &mut out);
    let rrs = receiver_reports(&out, addr(5000));
    assert_eq!(rrs.len(), 1);
    let b = rrs[0].1[0];
    assert_eq!((b.ssrc, b.highest_seq, b.cumulative_lost), (PUB_SSRC, 4, 0));
    assert_eq!(b.jitter, 0, "learned track: clock rate unknown");
    assert_eq!((b.lsr, b.dlsr), (0, 0), "no SR yet");
}

#[test]
fn publisher_clock_rates_must_match_its_ssrcs() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    let mut out = Capture::default();
    e.handle_command(
        WorkerCommand::AddPublisher {
            id: SessionId(1),
            stream: STREAM,
            remote: Some(addr(5000)),
            ssrcs: vec![PUB_SSRC],
            clock_rates: vec![90000, 48000],
            twcc_ext: None,
            srtp: Some(keys(SrtpProfile::AeadAes128Gcm, 1, 2)),
            ice: None,
            simulcast: None,
            uplink: Vec::new(),
        },
        t0(),
        &mut out,
    );
    assert_eq!(
        e.poll_event(),
        Some(WorkerEvent::Failed {
            id: SessionId(1),
            error: CommandError::Invalid
        })
    );
}

#[test]
fn nack_from_an_rtx_subscriber_is_answered_with_rtx() {
    for profile in [SrtpProfile::AeadAes128Gcm, SrtpProfile::AesCm128HmacSha1_80] {
        let mut f = fixture(1);
        let e = &mut f.engines[0];
        add_pub(e, 1, Some(addr(5000)), profile);
        let mut out = Capture::default();
        let (rtx_ssrc, rtx_pt) = (0x0bad_cafe, 97);
        e.handle_command(
            WorkerCommand::AddSubscriber {
                id: SessionId(2),
                stream: STREAM,
                remote: Some(addr(6002)),
                ssrcs: sub_ssrcs(2 * 16),
                payload_types: vec![(96, 100)],
                extensions: None,
                rtx: [Some((rtx_ssrc, rtx_pt)), None, None, None],
                tracks: ALL_TRACKS,
                plain: false,
                srtp: Some(keys(profile, 3, 2)),
                ice: None,
            },
            t0(),
            &mut out,
        );
        assert_eq!(
            e.poll_event(),
            Some(WorkerEvent::Added { id: SessionId(2) })
        );
        let master = |b: u8| vec![b; profile.master_len()];
        let mut publisher = Context::new(profile, &master(1)).expect("ctx");
        let mut out = Capture::default();
        for seq in 100..110u16 {
            let mut p = srtp_packet(&mut publisher, seq, 200);
            e.handle_datagram(&mut p, addr(5000), t0(), &mut out);
        }
        // The subscriber's view of 105 and 107, as it got them.
        let mut sub_rx = Context::new(profile, &master(2)).expect("ctx");
        let mut originals = Vec::new();
        for (_, bytes) in &out.sent {
            let mut b = bytes.clone();
            let n = sub_rx.unprotect_rtp(&mut b).expect("decrypt");
            b.truncate(n);
            originals.push(b);
        }
        let lost = [&originals[5], &originals[7]];
        let seq_of = |b: &[u8]| rtp::Header::parse(b).expect("rtp").sequence;

        let mut sub_tx = Context::new(profile, &master(3)).expect("ctx");
        let mut fb = vec![0u8; 200];
        let n = rtcp::write_nack(&mut fb, 0xabc, 2 * 16, &[seq_of(lost[0]), seq_of(lost[1])])
            .expect("nack");
        let n = sub_tx.protect_rtcp(&mut fb, n).expect("protect");
        fb.truncate(n);
        let mut out = Capture::default();
        e.handle_datagram(&mut fb, addr(6002), t0(), &mut out);
        assert_eq!(out.sent.len(), 2, "two retransmissions");
        let mut rtx_seqs = Vec::new();
        for ((dst, bytes), original) in out.sent.iter().zip(lost) {
            assert_eq!(*dst, addr(6002));
            // Same key as the media stream (SRTP contexts are per SSRC inside).
            let mut b = bytes.clone();
            let n = sub_rx
                .unprotect_rtp(&mut b)
                .expect("RTX decrypts with the key");
            let b = &b[..n];
            let h = rtp::Header::parse(b).expect("rtp");
            let o = rtp::Header::parse(original).expect("rtp");
            assert_eq!(h.ssrc, rtx_ssrc, "RTX SSRC");
            assert_eq!(h.payload_type, rtx_pt, "RTX payload type");
            assert_eq!(h.timestamp, o.timestamp, "original timestamp (rewritten)");
            let payload = &b[h.payload_offset..];
            assert_eq!(
                u16::from_be_bytes([payload[0], payload[1]]),
                o.sequence,
                "OSN: the sequence number the subscriber knows"
            );
            assert_eq!(
                &payload[2..],
                &original[o.payload_offset..],
                "original payload"
            );
            rtx_seqs.push(h.sequence);
        }
        assert_eq!(
            rtx_seqs[1],
            rtx_seqs[0].wrapping_add(1),
            "own RTX numbering"
        );
        assert_eq!(get(&f.stats, 0, Counter::Retransmitted), 2);
    }
}

#[test]
fn nack_across_workers_comes_back_as_rtx() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let mut f = fixture(2);
    add_pub(&mut f.engines[0], 1, Some(addr(5000)), profile);
    let mut out = Capture::default();
    f.engines[0].handle_command(
        WorkerCommand::SetRemoteWorkers {
            stream: STREAM,
            workers: [1].into_iter().collect(),
        },
        t0(),
        &mut out,
    );
    let e1 = &mut f.engines[1];
    e1.handle_command(
        WorkerCommand::SetPublisherWorker {
            stream: STREAM,
            worker: Some(0),
        },
        t0(),
        &mut out,
    );
    e1.handle_command(
        WorkerCommand::AddSubscriber {
            id: SessionId(2),
            stream: STREAM,
            remote: Some(addr(6002)),
            ssrcs: sub_ssrcs(2 * 16),
            payload_types: Vec::new(),
            extensions: None,
            rtx: [Some((0x5150, 99)), None, None, None],
            tracks: ALL_TRACKS,
            plain: false,
            srtp: Some(keys(profile, 3, 2)),
            ice: None,
        },
        t0(),
        &mut out,
    );
    assert_eq!(
        e1.poll_event(),
        Some(WorkerEvent::Added { id: SessionId(2) })
    );
    let msgs = std::mem::take(&mut out.to_workers);
    f.pump(msgs);
    let mut publisher = Context::new(profile, &[1; 28]).expect("ctx");
    let mut p = srtp_packet(&mut publisher, 42, 300);
    let mut out = Capture::default();
    f.engines[0].handle_datagram(&mut p, addr(5000), t0(), &mut out);
    let mut delivered = Capture::default();
    for (w, msg) in std::mem::take(&mut out.to_workers) {
        f.engines[usize::from(w)].handle_inbound(msg, t0(), &mut delivered);
    }
    assert_eq!(delivered.sent.len(), 1);
    let mut sub_rx = Context::new(profile, &[2; 28]).expect("ctx");
    let mut b = delivered.sent[0].1.clone();
    let n = sub_rx.unprotect_rtp(&mut b).expect("decrypt");
    let seq = rtp::Header::parse(&b[..n]).expect("rtp").sequence;

    // The NACK reaches worker 1, goes to worker 0, the packet comes back and leaves as RTX.
    let mut sub_tx = Context::new(profile, &[3; 28]).expect("ctx");
    let mut fb = vec![0u8; 200];
    let n = rtcp::write_nack(&mut fb, 0xabc, 2 * 16, &[seq]).expect("nack");
    let n = sub_tx.protect_rtcp(&mut fb, n).expect("protect");
    fb.truncate(n);
    let mut out = Capture::default();
    f.engines[1].handle_datagram(&mut fb, addr(6002), t0(), &mut out);
    for _ in 0..2 {
        for (w, msg) in std::mem::take(&mut out.to_workers) {
            f.engines[usize::from(w)].handle_inbound(msg, t0(), &mut out);
        }
    }
    let rtx: Vec<_> = out.sent.iter().filter(|(d, _)| *d == addr(6002)).collect();
    assert_eq!(rtx.len(), 1, "one retransmission");
    let mut b = rtx[0].1.clone();
    let n = sub_rx.unprotect_rtp(&mut b).expect("RTX decrypts");
    let h = rtp::Header::parse(&b[..n]).expect("rtp");
    assert_eq!((h.ssrc, h.payload_type), (0x5150, 99));
    let osn = u16::from_be_bytes([b[h.payload_offset], b[h.payload_offset + 1]]);
    assert_eq!(osn, seq, "OSN in the subscriber's numbering");
    assert_eq!(n - h.payload_offset, 302, "OSN + original payload");
}

fn add_plain(e: &mut Engine, id: u64, port: u16, tracks: u8) -> Option<WorkerEvent> {
    let mut out = Capture::default();
    e.handle_command(
        WorkerCommand::AddSubscriber {
            id: SessionId(id),
            stream: STREAM,
            remote: Some(addr(port)),
            ssrcs: sub_ssrcs(id as u32 * 16),
            payload_types: vec![(96, 100)],
            extensions: None,
            rtx: [None; MAX_TRACKS],
            tracks,
            plain: true,
            srtp: None,
            ice: None,
        },
        t0(),
        &mut out,
    );
    e.poll_event()
}

#[test]
fn plain_egress_sends_clear_rtp_for_its_tracks_and_takes_rtcp_only_from_its_addresses() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    add_pub(e, 1, Some(addr(5000)), profile);
    // Track 0 to 7000 (RTCP 7001); track 1 only to 7010, so it gets nothing here.
    assert_eq!(
        add_plain(e, 2, 7000, 0b01),
        Some(WorkerEvent::Added { id: SessionId(2) })
    );
    assert_eq!(
        add_plain(e, 3, 7010, 0b10),
        Some(WorkerEvent::Added { id: SessionId(3) })
    );
    // 7001 is session 2's RTCP address: nobody else may take it.
    assert_eq!(
        add_plain(e, 4, 7001, 0b01),
        Some(WorkerEvent::Failed {
            id: SessionId(4),
            error: CommandError::AddressConflict
        })
    );

    let mut publisher = Context::new(profile, &[1; 28]).expect("ctx");
    let mut out = Capture::default();
    let now = t0();
    for seq in 10..15u16 {
        let mut p = srtp_packet(&mut publisher, seq, 100);
        e.handle_datagram(&mut p, addr(5000), now, &mut out);
    }
    assert_eq!(
        out.sent.len(),
        5,
        "only the track-0 destination gets track 0"
    );
    let mut last = None;
    for (i, (dst, bytes)) in out.sent.iter().enumerate() {
        assert_eq!(*dst, addr(7000));
        assert_eq!(bytes.len(), 112, "no SRTP tag: sent in the clear");
        let h = rtp::Header::parse(bytes).expect("clear RTP parses");
        assert_eq!(h.ssrc, 2 * 16);
        assert_eq!(h.payload_type, 100, "payload type rewritten");
        let seq = 10 + i as u16;
        for (k, b) in bytes[12..].iter().enumerate() {
            assert_eq!(*b, (k as u8) ^ (seq as u8), "payload intact");
        }
        if let Some(l) = last {
            assert_eq!(h.sequence, u16::wrapping_add(l, 1));
        }
        last = Some(h.sequence);
    }
    let lost = out.sent[2].1.clone();
    let lost_seq = rtp::Header::parse(&lost).expect("rtp").sequence;
    out.sent.clear();

    // The publisher's SR reaches the destination's RTCP port, in the clear.
    let mut sr = [0u8; 128];
    let len =
        rtcp::write_sender_report(&mut sr, PUB_SSRC, 0x1122_3344_5566_7788, 9000, 5, 500, &[])
            .expect("sr");
    let n = publisher.protect_rtcp(&mut sr, len).expect("protect");
    e.handle_datagram(&mut sr[..n], addr(5000), now, &mut out);
    assert_eq!(
        out.sent.len(),
        1,
        "track 1's destination gets no track-0 SR"
    );
    assert_eq!(out.sent[0].0, addr(7001));
    let Some(Ok(rtcp::Packet::SenderReport(got))) = rtcp::compound(&out.sent[0].1).next() else {
        panic!("not a clear SR")
    };
    assert_eq!(got.ssrc, 2 * 16);
    out.sent.clear();

    // A clear NACK from the RTCP port is answered with the packet, as it was sent.
    let mut fb = vec![0u8; 64];
    let n = rtcp::write_nack(&mut fb, 0xabc, 2 * 16, &[lost_seq]).expect("nack");
    e.handle_datagram(&mut fb[..n].to_vec(), addr(7001), now, &mut out);
    assert_eq!(out.sent.len(), 1);
    assert_eq!(out.sent[0], (addr(7000), lost));
    out.sent.clear();

    // The same NACK from anywhere else is dropped.
    let before = get(&f.stats, 0, DropReason::UnknownSource.counter());
    e.handle_datagram(&mut fb[..n].to_vec(), addr(7003), now, &mut out);
    assert!(out.sent.is_empty());
    assert_eq!(
        get(&f.stats, 0, DropReason::UnknownSource.counter()),
        before + 1
    );

    // Removing the session frees both addresses.
    e.handle_command(WorkerCommand::Remove { id: SessionId(2) }, t0(), &mut out);
    assert_eq!(
        e.poll_event(),
        Some(WorkerEvent::Removed { id: SessionId(2) })
    );
    assert_eq!(
        add_plain(e, 5, 7000, 0b01),
        Some(WorkerEvent::Added { id: SessionId(5) })
    );
}

#[test]
fn plain_keying_needs_no_keys_and_a_fixed_address() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    let mut out = Capture::default();
    e.handle_command(
        WorkerCommand::AddSubscriber {
            id: SessionId(9),
            stream: STREAM,
            remote: Some(addr(7000)),
            ssrcs: sub_ssrcs(9),
            payload_types: Vec::new(),
            extensions: None,
            rtx: [None; MAX_TRACKS],
            tracks: ALL_TRACKS,
            plain: true,
            srtp: Some(keys(SrtpProfile::AeadAes128Gcm, 1, 2)),
            ice: None,
        },
        t0(),
        &mut out,
    );
    assert_eq!(
        e.poll_event(),
        Some(WorkerEvent::Failed {
            id: SessionId(9),
            error: CommandError::PlainIngress
        })
    );
}

/// The per-session slots: packets and bytes each way, NACKs and PLIs, the last packet's
/// time; a removed session's slot reads as gone.
#[test]
fn session_slots_count_each_direction() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    add_pub(e, 1, Some(addr(5000)), profile);
    add_sub(e, 2, 6002, profile);
    let mut publisher = Context::new(profile, &[1; 28]).expect("ctx");
    let mut out = Capture::default();
    let mut wire = 0;
    for seq in 100..110u16 {
        let mut p = srtp_packet(&mut publisher, seq, 200);
        wire += p.len() as u64;
        e.handle_datagram(&mut p, addr(5000), t0(), &mut out);
    }
    let media: u64 = out.sent.iter().map(|(_, b)| b.len() as u64).sum();
    let mut sub_tx = Context::new(profile, &[3; 28]).expect("ctx");
    let mut fb = vec![0u8; 200];
    let n = rtcp::write_nack(&mut fb, 0xabc, 2 * 16, &[1, 2]).expect("nack");
    let n = sub_tx.protect_rtcp(&mut fb, n).expect("protect");
    fb.truncate(n);
    let later = t0() + Duration::from_secs(1);
    e.handle_datagram(&mut fb, addr(6002), later, &mut out);
    let mut fb = vec![0u8; 100];
    let n = rtcp::write_pli(&mut fb, 0xabc, 2 * 16).expect("pli");
    let n = sub_tx.protect_rtcp(&mut fb, n).expect("protect");
    fb.truncate(n);
    let mut pli_out = Capture::default();
    e.handle_datagram(&mut fb, addr(6002), later, &mut pli_out);
    assert_eq!(pli_out.sent.len(), 1, "the PLI reaches the publisher");

    let p = f.stats.find(0, 1).expect("publisher slot");
    assert_eq!((p.rx_packets, p.rx_bytes), (10, wire));
    assert_eq!(p.last_rx, Some(f.stats.stamp(t0())));
    // The subscriber's join asked for a keyframe, and its PLI a second later for another.
    assert_eq!(p.plis_sent, 2, "{p:?}");
    assert_eq!(p.tx_packets, p.plis_sent);
    let s = f.stats.find(0, 2).expect("subscriber slot");
    assert_eq!((s.tx_packets, s.tx_bytes), (10, media));
    assert_eq!((s.rx_packets, s.nacks_received, s.plis_received), (2, 2, 1));
    assert_eq!(s.last_rx, Some(f.stats.stamp(later)));
    e.handle_command(WorkerCommand::Remove { id: SessionId(2) }, later, &mut out);
    assert!(f.stats.find(0, 2).is_none());
    assert_eq!(f.stats.live().count(), 1);
}

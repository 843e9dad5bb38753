//! Latching comedia publishers (issue 9 item 10): a stranger's datagram costs a bounded
//! number of trial decryptions however many publishers wait, a source that keeps sending
//! is rate-limited, and every waiting publisher still latches.

use super::*;

const PROFILE: SrtpProfile = SrtpProfile::AeadAes128Gcm;
const WAITING: u64 = 60;

/// `WAITING` comedia publishers (ids 1..=60, no address, each on its own stream with key
/// byte = id).
fn waiting_publishers(e: &mut Engine) {
    for id in 1..=WAITING {
        let mut out = Capture::default();
        e.handle_command(
            WorkerCommand::AddPublisher {
                id: SessionId(id),
                stream: StreamId(id as u32),
                remote: None,
                ssrcs: vec![PUB_SSRC],
                clock_rates: vec![90000],
                twcc_ext: None,
                srtp: Some(keys(PROFILE, id as u8, 0xee)),
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
}

fn publisher_ctx(key: u8) -> Context {
    Context::new(PROFILE, &vec![key; PROFILE.master_len()]).expect("ctx")
}

/// One datagram from a stranger costs at most `MAX_LATCH_TRIALS` failed opens (before:
/// one per waiting publisher, 60).
#[test]
fn a_strangers_datagram_costs_a_bounded_number_of_trials() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    waiting_publishers(e);
    let mut stranger = publisher_ctx(0x77);
    let mut out = Capture::default();
    let now = t0();
    for (k, seq) in (1..=10u16).enumerate() {
        let before = get(&f.stats, 0, Counter::LatchTrials);
        let mut p = srtp_packet(&mut stranger, seq, 100);
        // Each from its own port: a fresh source, so only the per-datagram cap applies.
        let e = &mut f.engines[0];
        e.handle_datagram(&mut p, addr(40000 + k as u16), now, &mut out);
        let trials = get(&f.stats, 0, Counter::LatchTrials) - before;
        assert!(
            (1..=MAX_LATCH_TRIALS as u64).contains(&trials),
            "datagram {k}: {trials} trial decryptions with {WAITING} publishers waiting"
        );
    }
    assert_eq!(get(&f.stats, 0, Counter::DropUnknownSource), 10);
    assert!(out.sent.is_empty());
}

/// A source that keeps sending gets [`crate::engine::latch::BURST`] datagrams tried, then one per
/// [`crate::engine::latch::INTERVAL`]; the rest cost a table look-up each and are counted as refused.
#[test]
fn a_flooding_stranger_is_rate_limited() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    waiting_publishers(e);
    let mut stranger = publisher_ctx(0x77);
    let mut out = Capture::default();
    let now = t0();
    for seq in 0..1000u16 {
        let mut p = srtp_packet(&mut stranger, seq, 100);
        e.handle_datagram(&mut p, addr(40000), now, &mut out);
    }
    let burst = u64::from(crate::engine::latch::BURST);
    assert_eq!(get(&f.stats, 0, Counter::LatchRefused), 1000 - burst);
    assert_eq!(
        get(&f.stats, 0, Counter::LatchTrials),
        burst * MAX_LATCH_TRIALS as u64
    );
    // A second later the source has 50 more, not 1000.
    let e = &mut f.engines[0];
    let later = now + Duration::from_secs(1);
    for seq in 1000..2000u16 {
        let mut p = srtp_packet(&mut stranger, seq, 100);
        e.handle_datagram(&mut p, addr(40000), later, &mut out);
    }
    assert!(get(&f.stats, 0, Counter::LatchTrials) <= 2 * burst * MAX_LATCH_TRIALS as u64);
    assert_eq!(get(&f.stats, 0, Counter::DropUnknownSource), 2000);
}

/// Every one of the 60 waiting publishers still latches, each within ⌈60 / 4⌉ = 15 of its
/// packets at 50 packets a second, while a stranger floods from another address.
#[test]
fn every_waiting_publisher_still_latches_during_a_flood() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    waiting_publishers(e);
    let mut stranger = publisher_ctx(0x77);
    let mut out = Capture::default();
    let mut t = t0();
    let mut flood_seq = 0u16;
    let need = (WAITING as usize).div_ceil(MAX_LATCH_TRIALS);
    // Latch them in an order unrelated to the order they were added in.
    for id in (1..=WAITING).map(|i| (i * 37) % WAITING + 1) {
        let mut ctx = publisher_ctx(id as u8);
        let src = addr(50000 + id as u16);
        let mut sent = 0;
        let latched = loop {
            for _ in 0..20 {
                let mut p = srtp_packet(&mut stranger, flood_seq, 100);
                flood_seq = flood_seq.wrapping_add(1);
                e.handle_datagram(&mut p, addr(40000), t, &mut out);
            }
            sent += 1;
            let mut p = srtp_packet(&mut ctx, sent as u16, 100);
            e.handle_datagram(&mut p, src, t, &mut out);
            t += crate::engine::latch::INTERVAL;
            if let Some(ev) = e.poll_event() {
                break ev;
            }
            assert!(
                sent < need,
                "publisher {id}: not latched after {sent} packets"
            );
        };
        assert_eq!(
            latched,
            WorkerEvent::Latched {
                id: SessionId(id),
                remote: src
            }
        );
    }
    assert!(e.unlatched.is_empty());
}

//! RTCP compound walk, every view's iterators, and the in-place rewrites.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_shared::packet::rtcp::{self, Packet};

fuzz_target!(|data: &[u8]| {
    let mut it = rtcp::compound(data);
    let mut errors = 0;
    while let Some(p) = it.next() {
        assert!(it.offset() <= data.len());
        match p {
            Ok(Packet::SenderReport(sr)) => drop(sr.reports().count()),
            Ok(Packet::ReceiverReport(rr)) => drop(rr.reports().count()),
            Ok(Packet::Nack(n)) => drop(n.lost().count() + n.pairs().count()),
            Ok(Packet::Fir(f)) => drop(f.entries().count()),
            Ok(Packet::Remb(r)) => drop(r.ssrcs().count()),
            Ok(_) => {}
            Err(_) => errors += 1,
        }
    }
    assert!(errors <= 1, "the walk stops after its first error");
    let mut copy = data.to_vec();
    let _ = rtcp::set_sender_report_ssrc(&mut copy, 1);
    let _ = rtcp::set_feedback_ssrcs(&mut copy, 2, 3);
});

//! What the worker's receive path does: demux, then the matching parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_shared::packet::{demux, rtcp, rtp, stun, Kind};

fuzz_target!(|data: &[u8]| match demux(data) {
    Kind::Stun => {
        if let Ok(m) = stun::Message::parse(data) {
            let _ = m.attributes().count();
            let _ = (m.check_fingerprint(), m.check_integrity(b"key"));
        }
    }
    Kind::Rtp => {
        if let Ok(h) = rtp::Header::parse(data) {
            let _ = h.payload(data);
            let _ = rtp::extensions(data, &h).count();
        }
    }
    Kind::Rtcp => {
        for p in rtcp::compound(data) {
            if let Ok(rtcp::Packet::Nack(n)) = p {
                let _ = n.lost().count();
            }
        }
    }
    Kind::Dtls | Kind::Unknown => {}
});

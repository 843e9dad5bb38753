//! RTP header, payload, CSRCs, header extensions and the in-place setters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_shared::packet::rtp;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = rtp::Header::parse(data) {
        // Offsets from a successful parse must lie inside the packet.
        assert!(h.payload_offset + h.padding_len <= data.len());
        let payload = h.payload(data);
        assert_eq!(payload.len(), data.len() - h.payload_offset - h.padding_len);
        let _ = h.csrcs(data).count();
        for e in rtp::extensions(data, &h) {
            match e {
                Ok((id, _)) => {
                    let r = rtp::find_extension(data, &h, id);
                    assert!(r.is_some_and(|r| r.end <= data.len()));
                }
                Err(_) => break,
            }
        }
        let mut copy = data.to_vec();
        assert!(rtp::set_ssrc(&mut copy, 1).is_ok());
        assert!(rtp::set_sequence(&mut copy, 2).is_ok());
        assert!(rtp::set_timestamp(&mut copy, 3).is_ok());
        assert!(rtp::set_payload_type(&mut copy, 4).is_ok());
        assert_eq!(
            rtp::Header::parse(&copy).map(|h| h.payload_offset),
            Ok(h.payload_offset)
        );
    }
});

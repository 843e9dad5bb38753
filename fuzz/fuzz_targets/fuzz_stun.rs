//! STUN header, attribute walk, address decoding, FINGERPRINT and MESSAGE-INTEGRITY checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_shared::packet::stun;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = stun::Message::parse(data) {
        for a in m.attributes() {
            if a.is_err() {
                break;
            }
        }
        let _ = (m.username(), m.xor_mapped_address());
        let _ = m.attribute(stun::attr::USERNAME);
        let _ = m.check_fingerprint();
        let _ = m.check_integrity(b"VOkJxbRl1RmTxUk/WvJxBt");
    }
});

//! SDP offers (WHIP and WHEP): the `sdp` crate's parser, our attribute reading, codec choice
//! and answer writing. Every answer we produce must re-parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_controlplane::sdp::{answer, AnswerParams, Direction};

fuzz_target!(|data: &[u8]| {
    let Ok(offer) = std::str::from_utf8(data) else {
        return;
    };
    let candidates = [
        std::net::SocketAddr::from(([192, 0, 2, 1], 10000)),
        std::net::SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 10000)),
    ];
    let params = AnswerParams {
        ice_ufrag: "fuzz",
        ice_pwd: "0123456789abcdefABCDEF",
        fingerprint: "sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF",
        candidates: &candidates,
        ice_tcp: true,
        publisher: None,
    };
    let published = answer(offer, Direction::Publish, &params);
    let _ = answer(offer, Direction::Subscribe, &params);
    if let Ok(p) = &published {
        // The same text as a subscriber's offer against itself as the publisher.
        let with_source = AnswerParams {
            publisher: Some(p),
            ..params
        };
        let _ = answer(offer, Direction::Subscribe, &with_source);
        assert!(sdp::SessionDescription::try_from(p.answer.clone()).is_ok());
    }
});

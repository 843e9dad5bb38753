//! `GET .../fetch`'s depacketizers (`switchyard_shared::depay`) on packets a publisher
//! chose: the first byte picks the codec, then each packet is a length byte and that many
//! bytes of payload; its control byte (the payload's first) gives the frame it belongs to,
//! the marker and a sequence gap, so runs of packets form frames of every shape.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_shared::command::VideoCodec;
use switchyard_shared::depay;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, mut rest)) = data.split_first() else {
        return;
    };
    let codec = match pick % 4 {
        0 => VideoCodec::Vp8(96),
        1 => VideoCodec::Vp9(98),
        2 => VideoCodec::Av1(45),
        _ => VideoCodec::H264(102),
    };
    let mut packets = Vec::new();
    let mut seq: u16 = 0;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (payload, next) = tail.split_at(n);
        rest = next;
        let control = payload.first().copied().unwrap_or(0);
        seq = seq.wrapping_add(if control & 0x40 != 0 { 2 } else { 1 });
        let ts = u32::from(control >> 4) * 3000;
        let mut p = vec![0x80, 96 | (control & 0x80)];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&1u32.to_be_bytes());
        p.extend_from_slice(payload.get(1..).unwrap_or_default());
        packets.push(p);
    }
    if let Ok(f) = depay::file(codec, &packets) {
        assert!(f.frames >= 1 && !f.bytes.is_empty());
    }
});

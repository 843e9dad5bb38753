use super::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn one(b: &[u8]) -> Packet<'_> {
    let all: Vec<_> = compound(b).collect();
    assert_eq!(all.len(), 1, "{all:?}");
    all[0].expect("valid packet")
}

fn block(n: u32) -> ReportBlock {
    ReportBlock {
        ssrc: n,
        fraction_lost: n as u8,
        cumulative_lost: -(n as i32),
        highest_seq: 0x1_0000 + n,
        jitter: 7 * n,
        lsr: 0xabcd_0000 | n,
        dlsr: 65536 * n,
    }
}

#[test]
fn sender_report_round_trip() {
    let mut out = [0u8; 200];
    let blocks = [block(1), block(2)];
    let n = write_sender_report(
        &mut out,
        0x1234,
        0x0102_0304_0506_0708,
        90_000,
        10,
        1000,
        &blocks,
    )
    .expect("fits");
    assert_eq!(n, 28 + 48);
    let Packet::SenderReport(sr) = one(&out[..n]) else {
        panic!("not an SR")
    };
    assert_eq!(
        (
            sr.ssrc,
            sr.ntp,
            sr.rtp_timestamp,
            sr.packet_count,
            sr.octet_count
        ),
        (0x1234, 0x0102_0304_0506_0708, 90_000, 10, 1000)
    );
    assert_eq!(sr.reports().collect::<Vec<_>>(), blocks);
    assert_eq!(
        write_sender_report(&mut out[..n - 1], 1, 0, 0, 0, 0, &blocks),
        Err(ParseError::TooShort)
    );

    set_sender_report_ssrc(&mut out[..n], 0x9999).expect("is an SR");
    let Packet::SenderReport(sr) = one(&out[..n]) else {
        panic!("not an SR")
    };
    assert_eq!(sr.ssrc, 0x9999);
}

#[test]
fn receiver_report_round_trip() {
    let mut out = [0u8; 1500];
    let blocks: Vec<_> = (0..31).map(block).collect();
    let n = write_receiver_report(&mut out, 77, &blocks).expect("fits");
    let Packet::ReceiverReport(rr) = one(&out[..n]) else {
        panic!("not an RR")
    };
    assert_eq!(rr.ssrc, 77);
    assert_eq!(rr.reports().collect::<Vec<_>>(), blocks);
    let too_many: Vec<_> = (0..32).map(block).collect();
    assert_eq!(
        write_receiver_report(&mut out, 1, &too_many),
        Err(ParseError::BadCount)
    );
    assert_eq!(
        write_receiver_report(&mut out[..7], 1, &[]),
        Err(ParseError::TooShort)
    );
    assert_eq!(
        set_sender_report_ssrc(&mut out[..n], 1),
        Err(ParseError::BadType)
    );
}

#[test]
fn cumulative_lost_is_24_bit_signed_and_clamped() {
    let mut out = [0u8; 64];
    for (given, read) in [
        (-1, -1),
        (0x7f_ffff, 0x7f_ffff),
        (-0x80_0000, -0x80_0000),
        (i32::MAX, 0x7f_ffff),
        (i32::MIN, -0x80_0000),
    ] {
        let b = ReportBlock {
            cumulative_lost: given,
            ..ReportBlock::default()
        };
        let n = write_receiver_report(&mut out, 1, &[b]).expect("fits");
        let Packet::ReceiverReport(rr) = one(&out[..n]) else {
            panic!("not an RR")
        };
        assert_eq!(rr.reports().next().map(|b| b.cumulative_lost), Some(read));
    }
}

#[test]
fn pli_and_fir_round_trip() {
    let mut out = [0u8; 32];
    let n = write_pli(&mut out, 1, 2).expect("fits");
    assert_eq!(
        one(&out[..n]),
        Packet::Pli {
            sender_ssrc: 1,
            media_ssrc: 2
        }
    );
    set_feedback_ssrcs(&mut out[..n], 3, 4).expect("feedback");
    assert_eq!(
        one(&out[..n]),
        Packet::Pli {
            sender_ssrc: 3,
            media_ssrc: 4
        }
    );
    assert_eq!(write_pli(&mut out[..11], 1, 2), Err(ParseError::TooShort));

    let n = write_fir(&mut out, 5, 6, 7).expect("fits");
    let Packet::Fir(fir) = one(&out[..n]) else {
        panic!("not a FIR")
    };
    assert_eq!((fir.sender_ssrc, fir.media_ssrc), (5, 0));
    assert_eq!(fir.entries().collect::<Vec<_>>(), vec![(6, 7)]);
    assert_eq!(
        write_fir(&mut out[..19], 1, 2, 3),
        Err(ParseError::TooShort)
    );
}

#[test]
fn nack_round_trip_packs_pairs() {
    let mut out = [0u8; 64];
    let lost = [10, 11, 26, 27, 27, 65535, 0, 1];
    let n = write_nack(&mut out, 1, 2, &lost).expect("fits");
    let Packet::Nack(nack) = one(&out[..n]) else {
        panic!("not a NACK")
    };
    assert_eq!((nack.sender_ssrc, nack.media_ssrc), (1, 2));
    // 10 covers 11 and 26 (10 + 16); 27 starts a pair; 65535 covers 0 and 1 across the wrap.
    assert_eq!(
        nack.pairs().collect::<Vec<_>>(),
        vec![(10, 1 | 1 << 15), (27, 0), (65535, 0b11)]
    );
    assert_eq!(
        nack.lost().collect::<Vec<_>>(),
        vec![10, 11, 26, 27, 65535, 0, 1]
    );
    assert_eq!(n, 12 + 12);
    assert_eq!(write_nack(&mut out, 1, 2, &[]), Err(ParseError::BadCount));
    assert_eq!(
        write_nack(&mut out[..15], 1, 2, &[1]),
        Err(ParseError::TooShort)
    );
    assert_eq!(
        write_nack(&mut out[..19], 1, 2, &[1, 100]),
        Err(ParseError::TooShort)
    );
}

#[test]
fn compound_sr_sdes_remb_tcc() {
    let mut b = Vec::new();
    let mut out = [0u8; 64];
    let n = write_sender_report(&mut out, 1, 2, 3, 4, 5, &[]).expect("fits");
    b.extend_from_slice(&out[..n]);
    // SDES: one chunk, CNAME "ab", end, padded to a word.
    b.extend_from_slice(&hex("81ca000300000001010261620000000000"[..32].as_ref()));
    // REMB: 2 SSRCs, exp 3, mantissa 0x1_0000 -> 524288 bps.
    b.extend_from_slice(&hex(
        "8fce00060000000a0000000052454d42020d00000000000b0000000c",
    ));
    // transport-cc with a 4-byte FCI.
    b.extend_from_slice(&hex("8fcd00030000000a0000000b01020304"));
    let mut it = compound(&b);
    assert!(matches!(it.next(), Some(Ok(Packet::SenderReport(_)))));
    assert_eq!(it.offset(), 28);
    assert_eq!(
        it.next(),
        Some(Ok(Packet::Sdes(&hex("00000001010261620000000000")[..12])))
    );
    let Some(Ok(Packet::Remb(remb))) = it.next() else {
        panic!("not a REMB")
    };
    assert_eq!(remb.sender_ssrc, 10);
    assert_eq!(remb.bitrate_bps, 0x1_0000 << 3);
    assert_eq!(remb.ssrcs().collect::<Vec<_>>(), vec![11, 12]);
    assert_eq!(
        it.next(),
        Some(Ok(Packet::TransportCc {
            sender_ssrc: 10,
            media_ssrc: 11,
            fci: &[1, 2, 3, 4]
        }))
    );
    assert_eq!(it.next(), None);
    assert_eq!(it.offset(), b.len());
}

#[test]
fn remb_bitrate_saturates() {
    // exp 63, mantissa max.
    let b = hex("8fce00040000000a0000000052454d4200ffffff");
    let Packet::Remb(remb) = one(&b) else {
        panic!("not a REMB")
    };
    assert_eq!(remb.bitrate_bps, u64::MAX);
}

#[test]
fn other_types_pass_through() {
    let b = hex("84cc000200000001616263640000");
    assert_eq!(
        one(&b[..12]),
        Packet::Other {
            packet_type: PT_APP,
            fmt: 4,
            body: &b[4..12]
        }
    );
}

#[test]
fn padding_is_removed() {
    // BYE with one SSRC and 4 bytes of padding.
    let b = hex("a1cb000200000001000000 04".replace(' ', "").as_str());
    assert_eq!(one(&b), Packet::Bye(&[0, 0, 0, 1]));
}

#[test]
fn malformed_yields_one_error_then_stops() {
    let cases: &[(&str, ParseError)] = &[
        ("80c8", ParseError::TooShort),
        ("40c80000", ParseError::BadVersion),
        ("80c90002000000", ParseError::BadLength),
        ("a0c9000100000000", ParseError::BadPadding),
        ("a0c9000100000005", ParseError::BadPadding),
        ("81c9000100000001", ParseError::BadCount),
        ("80c8000100000001", ParseError::TooShort),
        ("81cd000100000001", ParseError::TooShort),
        ("81cd00030000000100000002000000", ParseError::BadLength),
        ("a1cd000300000001000000020000 0002", ParseError::BadLength),
        ("84ce00030000000100000002aabbccdd", ParseError::BadLength),
    ];
    let mut rr = [0u8; 8];
    write_receiver_report(&mut rr, 1, &[]).expect("fits");
    for (h, want) in cases {
        // A valid RR first: the error comes second.
        let mut b = rr.to_vec();
        b.extend_from_slice(&hex(&h.replace(' ', "")));
        let got: Vec<_> = compound(&b).collect();
        assert_eq!(got, vec![Ok(one(&rr)), Err(*want)], "{h}");
    }
    // Nothing after the error, even a valid packet.
    let mut b = hex("a0c9000100000000");
    b.extend_from_slice(&rr);
    assert_eq!(
        compound(&b).collect::<Vec<_>>(),
        vec![Err(ParseError::BadPadding)]
    );
}

#[test]
fn rewrites_check_the_packet() {
    assert_eq!(
        set_sender_report_ssrc(&mut [], 1),
        Err(ParseError::TooShort)
    );
    assert_eq!(
        set_sender_report_ssrc(&mut [0x80, 200, 0, 0], 1),
        Err(ParseError::TooShort)
    );
    assert_eq!(
        set_sender_report_ssrc(&mut [0x40, 200, 0, 0], 1),
        Err(ParseError::BadVersion)
    );
    assert_eq!(
        set_feedback_ssrcs(&mut [0x81, 200, 0, 0], 1, 2),
        Err(ParseError::BadType)
    );
}

fn iterate_all(b: &[u8]) -> Result<usize, ParseError> {
    let mut n = 0;
    for p in compound(b) {
        match p? {
            Packet::SenderReport(sr) => n += sr.reports().count(),
            Packet::ReceiverReport(rr) => n += rr.reports().count(),
            Packet::Nack(nack) => n += nack.lost().count(),
            Packet::Fir(fir) => n += fir.entries().count(),
            Packet::Remb(remb) => n += remb.ssrcs().count(),
            _ => n += 1,
        }
    }
    Ok(n)
}

// tests/corpora/regressions.txt: inputs that panicked webrtc-rs rtcp 0.17.2.
#[test]
fn regression_remb_ssrc_count_exceeds_packet() {
    let b = hex("8fce0007123456780000000052454d420407fb93234567892345678a2345678b");
    assert_eq!(iterate_all(&b), Err(ParseError::BadCount));
}

#[test]
fn regression_fir_padding_larger_than_packet() {
    let b = hex("a4ce0001010101e2");
    assert_eq!(iterate_all(&b), Err(ParseError::BadPadding));
}

#[test]
fn regression_nack_padding_larger_than_packet() {
    let b = hex("a1cd0001000000fafafa050250");
    assert_eq!(iterate_all(&b), Err(ParseError::BadPadding));
}

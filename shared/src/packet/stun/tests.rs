use super::*;

const PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";
const TXID: [u8; 12] = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];

/// RFC 5769 §2.1 Sample Request.
const REQUEST: [u8; 108] = [
    0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73,
    0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff,
    0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36, 0x00, 0x06, 0x00, 0x09,
    0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20, 0x20, 0x00, 0x08, 0x00, 0x14,
    0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e, 0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49,
    0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
];

/// RFC 5769 §2.2 Sample IPv4 Response.
const RESPONSE_V4: [u8; 80] = [
    0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63,
    0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43,
    0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3, 0x8c, 0x74, 0x89, 0xf9,
    0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00, 0x04, 0xc0, 0x7d, 0x4c, 0x96,
];

/// RFC 5769 §2.3 Sample IPv6 Response.
const RESPONSE_V6: [u8; 92] = [
    0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63,
    0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa,
    0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9, 0x00, 0x08, 0x00, 0x14,
    0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9, 0x7c, 0x82, 0x92, 0xc2, 0x75,
    0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb, 0x0b, 0x4c,
];

fn v4() -> SocketAddr {
    "192.0.2.1:32853".parse().expect("literal")
}

fn v6() -> SocketAddr {
    "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
        .parse()
        .expect("literal")
}

#[test]
fn rfc5769_sample_request() {
    let m = Message::parse(&REQUEST).expect("valid");
    assert_eq!(
        (m.class, m.method, m.transaction_id),
        (Class::Request, METHOD_BINDING, TXID)
    );
    assert_eq!(m.username(), Some("evtj:h6vY"));
    assert_eq!(m.attribute(attr::SOFTWARE), Some(&b"STUN test client"[..]));
    assert_eq!(
        m.attribute(attr::PRIORITY),
        Some(&[0x6e, 0x00, 0x01, 0xff][..])
    );
    assert_eq!(
        m.attribute(attr::ICE_CONTROLLED),
        Some(&0x932f_f9b1_5126_3b36u64.to_be_bytes()[..])
    );
    assert_eq!(m.attributes().count(), 6);
    assert!(m.check_integrity(PASSWORD));
    assert!(!m.check_integrity(b"wrong"));
    assert!(m.check_fingerprint());
}

#[test]
fn rfc5769_sample_responses() {
    for (bytes, addr) in [(&RESPONSE_V4[..], v4()), (&RESPONSE_V6[..], v6())] {
        let m = Message::parse(bytes).expect("valid");
        assert_eq!(
            (m.class, m.method, m.transaction_id),
            (Class::Success, METHOD_BINDING, TXID)
        );
        assert_eq!(m.xor_mapped_address(), Some(addr));
        assert_eq!(m.attribute(attr::SOFTWARE), Some(&b"test vector"[..]));
        assert!(m.check_integrity(PASSWORD));
        assert!(m.check_fingerprint());
    }
}

#[test]
fn writer_reproduces_rfc5769_exactly() {
    let mut out = [0u8; 128];
    let mut w = Writer::new(&mut out, Class::Request, METHOD_BINDING, &TXID).expect("fits");
    w.padding_byte(b' ');
    w.attribute(attr::SOFTWARE, b"STUN test client")
        .expect("fits");
    w.attribute(attr::PRIORITY, &0x6e00_01ffu32.to_be_bytes())
        .expect("fits");
    w.attribute(
        attr::ICE_CONTROLLED,
        &0x932f_f9b1_5126_3b36u64.to_be_bytes(),
    )
    .expect("fits");
    w.attribute(attr::USERNAME, b"evtj:h6vY").expect("fits");
    w.message_integrity(PASSWORD).expect("fits");
    w.fingerprint().expect("fits");
    let n = w.finish();
    assert_eq!(&out[..n], &REQUEST[..]);

    for (want, addr) in [(&RESPONSE_V4[..], v4()), (&RESPONSE_V6[..], v6())] {
        let mut w = Writer::new(&mut out, Class::Success, METHOD_BINDING, &TXID).expect("fits");
        w.padding_byte(b' ');
        w.attribute(attr::SOFTWARE, b"test vector").expect("fits");
        w.xor_mapped_address(addr).expect("fits");
        w.message_integrity(PASSWORD).expect("fits");
        w.fingerprint().expect("fits");
        let n = w.finish();
        assert_eq!(&out[..n], want);
    }
}

#[test]
fn binding_success_verifies() {
    let mut out = [0u8; 128];
    for (addr, want_len) in [(v4(), 64), (v6(), 76)] {
        let n = write_binding_success(&mut out, &TXID, addr, PASSWORD).expect("fits");
        assert_eq!(n, want_len);
        let m = Message::parse(&out[..n]).expect("valid");
        assert_eq!(
            (m.class, m.method, m.transaction_id),
            (Class::Success, METHOD_BINDING, TXID)
        );
        assert_eq!(m.xor_mapped_address(), Some(addr));
        assert!(m.check_integrity(PASSWORD));
        assert!(m.check_fingerprint());
        // Same XOR-MAPPED-ADDRESS bytes as the RFC's response.
        let rfc = if addr.is_ipv4() {
            &RESPONSE_V4[..]
        } else {
            &RESPONSE_V6[..]
        };
        let rfc = Message::parse(rfc).expect("valid");
        assert_eq!(
            m.attribute(attr::XOR_MAPPED_ADDRESS),
            rfc.attribute(attr::XOR_MAPPED_ADDRESS)
        );
        for short in [0, 19, 20, n - 1] {
            assert_eq!(
                write_binding_success(&mut out[..short], &TXID, addr, PASSWORD),
                Err(ParseError::TooShort)
            );
        }
    }
}

#[test]
fn binding_request_round_trip() {
    let mut out = [0u8; 256];
    for use_candidate in [false, true] {
        let n = write_binding_request(&mut out, &TXID, "abcd:efgh", b"pw", use_candidate, 7, 9)
            .expect("fits");
        let m = Message::parse(&out[..n]).expect("valid");
        assert_eq!(m.class, Class::Request);
        assert_eq!(m.username(), Some("abcd:efgh"));
        assert_eq!(m.attribute(attr::PRIORITY), Some(&7u32.to_be_bytes()[..]));
        assert_eq!(
            m.attribute(attr::ICE_CONTROLLING),
            Some(&9u64.to_be_bytes()[..])
        );
        assert_eq!(m.attribute(attr::USE_CANDIDATE).is_some(), use_candidate);
        assert!(m.check_integrity(b"pw"));
        assert!(m.check_fingerprint());
        assert_eq!(
            write_binding_request(
                &mut out[..n - 1],
                &TXID,
                "abcd:efgh",
                b"pw",
                use_candidate,
                7,
                9
            ),
            Err(ParseError::TooShort)
        );
    }
}

#[test]
fn tampering_breaks_the_checks() {
    for i in 0..RESPONSE_V4.len() {
        let mut b = RESPONSE_V4;
        b[i] ^= 0x01;
        let Ok(m) = Message::parse(&b) else { continue };
        // FINGERPRINT covers everything before it; MESSAGE-INTEGRITY everything before it
        // (padding included) plus its own value.
        assert!(!m.check_fingerprint(), "byte {i}");
        if i < 72 {
            assert!(!m.check_integrity(PASSWORD), "byte {i}");
        } else {
            assert!(m.check_integrity(PASSWORD), "byte {i}");
        }
    }
}

#[test]
fn header_checks() {
    assert_eq!(
        Message::parse(&REQUEST[..19]).map(|_| ()),
        Err(ParseError::TooShort)
    );
    let mut b = REQUEST;
    b[0] |= 0x40;
    assert_eq!(Message::parse(&b).map(|_| ()), Err(ParseError::BadType));
    let mut b = REQUEST;
    b[4] = 0;
    assert_eq!(Message::parse(&b).map(|_| ()), Err(ParseError::BadMagic));
    assert_eq!(
        Message::parse(&REQUEST[..104]).map(|_| ()),
        Err(ParseError::BadLength)
    );
    let mut b = REQUEST;
    b[3] = 0x57;
    assert_eq!(
        Message::parse(&b[..107]).map(|_| ()),
        Err(ParseError::BadLength)
    );
}

#[test]
fn class_and_method_bits() {
    let mut out = [0u8; 20];
    for class in [
        Class::Request,
        Class::Indication,
        Class::Success,
        Class::Error,
    ] {
        for method in [0x001, 0x00f, 0x010, 0x080, 0xfff] {
            let n = Writer::new(&mut out, class, method, &TXID)
                .expect("fits")
                .finish();
            let m = Message::parse(&out[..n]).expect("valid");
            assert_eq!((m.class, m.method), (class, method));
        }
    }
}

#[test]
fn attribute_overrun_yields_one_error() {
    let mut b = [0u8; 28];
    b[..20].copy_from_slice(&RESPONSE_V4[..20]);
    b[3] = 8;
    // Attribute 0x0020 claiming 5 bytes in a 4-byte body.
    b[20..24].copy_from_slice(&[0x00, 0x20, 0x00, 0x05]);
    let m = Message::parse(&b).expect("header is fine");
    let all: Vec<_> = m.attributes().collect();
    assert_eq!(all, vec![Err(ParseError::BadAttribute)]);
    assert_eq!(m.attribute(0x0020), None);
    assert_eq!(m.xor_mapped_address(), None);
    assert!(!m.check_fingerprint());
    assert!(!m.check_integrity(PASSWORD));
}

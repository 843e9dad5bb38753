//! Replays the packet corpora in `tests/corpora/` (seed packets and inputs that crashed other
//! WebRTC stacks) through every parser, plus a few hundred thousand mutated packets: each
//! input must parse or be rejected with an error, never panic.

use std::fs;
use std::path::{Path, PathBuf};

use switchyard_shared::packet::{demux, rtcp, rtp, stun, Kind, ParseError};

fn corpora() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpora")
}

/// Every file in `tests/corpora/<dir>`, sorted, with its name.
fn files(dir: &str) -> Vec<(String, Vec<u8>)> {
    let path = corpora().join(dir);
    let mut out: Vec<_> = fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .map(|entry| {
            let entry = entry.expect("dir entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            (name, fs::read(entry.path()).expect("read corpus file"))
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "{dir} is empty");
    out
}

fn run_rtp(b: &[u8]) -> Result<usize, ParseError> {
    let h = rtp::Header::parse(b)?;
    let mut n = h.payload(b).len() + h.csrcs(b).count();
    for e in rtp::extensions(b, &h) {
        let (id, v) = e?;
        n += v.len();
        let _ = rtp::find_extension(b, &h, id);
    }
    Ok(n)
}

fn run_rtcp(b: &[u8]) -> Result<usize, ParseError> {
    let mut n = 0;
    for p in rtcp::compound(b) {
        n += match p? {
            rtcp::Packet::SenderReport(sr) => sr.reports().count(),
            rtcp::Packet::ReceiverReport(rr) => rr.reports().count(),
            rtcp::Packet::Nack(nack) => nack.lost().count() + nack.pairs().count(),
            rtcp::Packet::Fir(fir) => fir.entries().count(),
            rtcp::Packet::Remb(remb) => remb.ssrcs().count(),
            rtcp::Packet::Sdes(b) | rtcp::Packet::Bye(b) => b.len(),
            rtcp::Packet::TransportCc { fci, .. } => fci.len(),
            rtcp::Packet::Pli { .. } => 1,
            rtcp::Packet::Other { body, .. } => body.len(),
        };
    }
    Ok(n)
}

fn run_stun(b: &[u8]) -> Result<usize, ParseError> {
    let m = stun::Message::parse(b)?;
    let mut n = 0;
    for a in m.attributes() {
        n += a?.1.len();
    }
    let _ = (
        m.username(),
        m.xor_mapped_address(),
        m.attribute(stun::attr::PRIORITY),
    );
    let _ = (
        m.check_fingerprint(),
        m.check_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"),
    );
    Ok(n)
}

/// Demux, then every parser regardless of what demux said (a parser must not rely on the
/// demuxer having filtered its input), plus the in-place rewrites on a copy.
fn run_all(b: &[u8]) {
    let _ = demux(b);
    let _ = run_rtp(b);
    let _ = run_rtcp(b);
    let _ = run_stun(b);
    let mut copy = b.to_vec();
    let _ = rtp::set_ssrc(&mut copy, 1);
    let _ = rtp::set_sequence(&mut copy, 2);
    let _ = rtp::set_timestamp(&mut copy, 3);
    let _ = rtp::set_payload_type(&mut copy, 4);
    let _ = rtcp::set_sender_report_ssrc(&mut copy, 5);
    let _ = rtcp::set_feedback_ssrcs(&mut copy, 6, 7);
}

#[test]
fn rtp_seeds_parse() {
    let all = files("rtp");
    let ok = all.iter().filter(|(_, b)| run_rtp(b).is_ok()).count();
    for (_, b) in &all {
        run_all(b);
    }
    assert!(ok > 0, "no RTP seed parsed");
}

#[test]
fn rtp_crashers_do_not_panic() {
    for (_, b) in files("crashes-rtp") {
        let _ = run_rtp(&b);
        run_all(&b);
    }
}

#[test]
fn rtcp_seeds_parse() {
    let all = files("rtcp");
    let ok = all.iter().filter(|(_, b)| run_rtcp(b).is_ok()).count();
    for (_, b) in &all {
        run_all(b);
    }
    assert!(ok > 0, "no RTCP seed parsed");
}

#[test]
fn rtcp_crashers_do_not_panic() {
    for (_, b) in files("crashes-rtcp") {
        let _ = run_rtcp(&b);
        run_all(&b);
    }
}

#[test]
fn stun_seeds_do_not_panic() {
    for (_, b) in files("stun") {
        let _ = run_stun(&b);
        run_all(&b);
    }
}

#[test]
fn sdp_is_not_a_media_packet() {
    for (name, b) in files("sdp") {
        // "v=0" starts with 'v' (118): outside every RFC 7983 range.
        assert_eq!(demux(&b), Kind::Unknown, "sdp/{name}");
        run_all(&b);
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn regressions_are_rejected() {
    let text = fs::read_to_string(corpora().join("regressions.txt")).expect("regressions.txt");
    let mut seen = 0;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let mut words = line.split_whitespace();
        let (Some(proto), Some(bytes)) = (words.next(), words.next()) else {
            panic!("bad line: {line}");
        };
        let b = hex(bytes);
        let result = match proto {
            "rtp" => run_rtp(&b),
            "rtcp" => run_rtcp(&b),
            other => panic!("unknown protocol {other}"),
        };
        // Every one of these is malformed: a correct parser rejects it.
        assert!(result.is_err(), "{line}: {result:?}");
        run_all(&b);
        seen += 1;
    }
    assert_eq!(seen, 6);
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

type Build = fn(&mut [u8]) -> Result<usize, ParseError>;

fn block() -> rtcp::ReportBlock {
    rtcp::ReportBlock {
        ssrc: 1,
        fraction_lost: 2,
        cumulative_lost: -3,
        highest_seq: 4,
        jitter: 5,
        lsr: 6,
        dlsr: 7,
    }
}

/// Valid packets of every kind to mutate, from the writers and the corpora.
fn valid_packets() -> Vec<Vec<u8>> {
    let writers: [Build; 8] = [
        |o| rtcp::write_pli(o, 1, 2),
        |o| rtcp::write_fir(o, 1, 2, 3),
        |o| rtcp::write_nack(o, 1, 2, &[1, 2, 5, 40, 41, 1000]),
        |o| rtcp::write_receiver_report(o, 1, &[block(), block()]),
        |o| rtcp::write_sender_report(o, 1, 2, 3, 4, 5, &[block()]),
        |o| {
            let addr = "10.0.0.1:5000".parse().expect("addr");
            stun::write_binding_success(o, &[7; 12], addr, b"k")
        },
        |o| {
            let addr = "[::1]:5000".parse().expect("addr");
            stun::write_binding_success(o, &[7; 12], addr, b"k")
        },
        |o| stun::write_binding_request(o, &[7; 12], "a:b", b"k", true, 1, 2),
    ];
    let mut out = Vec::new();
    let mut buf = [0u8; 1500];
    for w in writers {
        let n = w(&mut buf).expect("writer fits");
        out.push(buf[..n].to_vec());
    }
    for dir in ["rtp", "rtcp", "stun", "crashes-rtp", "crashes-rtcp"] {
        out.extend(files(dir).into_iter().map(|(_, b)| b));
    }
    // RTP with one-byte and two-byte extensions, CSRCs and padding.
    out.push(hex(
        "b1e0000100000002000000030000000abede000210aa31bbcc00000068690002",
    ));
    out.push(hex("9060000100000002000000031000000205000007030102036869"));
    out
}

#[test]
fn mutated_packets_do_not_panic() {
    let seeds = valid_packets();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..300_000 {
        let mut b = seeds[rng.below(seeds.len())].clone();
        match rng.below(4) {
            // Truncate.
            0 => b.truncate(rng.below(b.len() + 1)),
            // Flip a few bits.
            1 => {
                for _ in 0..1 + rng.below(4) {
                    if !b.is_empty() {
                        let i = rng.below(b.len());
                        b[i] ^= 1 << rng.below(8);
                    }
                }
            }
            // Overwrite a length-ish byte near the start with an extreme value.
            2 => {
                if !b.is_empty() {
                    let i = rng.below(b.len().min(32));
                    b[i] = [0, 1, 0x7f, 0x80, 0xff][rng.below(5)];
                }
            }
            // Random bytes behind a plausible first byte.
            _ => {
                b = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
                if let Some(first) = b.first_mut() {
                    *first = [0x00, 0x01, 0x80, 0x90, 0xa0, 0xb0, 0x81, 0x8f][rng.below(8)];
                }
            }
        }
        run_all(&b);
    }
}

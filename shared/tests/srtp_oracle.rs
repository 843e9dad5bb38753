//! Cross-checks `switchyard_shared::srtp` against webrtc-srtp (an independent implementation)
//! in both directions, for both profiles, RTP and RTCP: byte-identical output, ROC rollover
//! across seq 65535 → 0 on several interleaved SSRCs, and rejection of replayed, tampered
//! and wrongly keyed packets on both sides.

use switchyard_shared::srtp::{Context, Error, Profile, MAX_OVERHEAD};
use webrtc_srtp::context::Context as Oracle;
use webrtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use webrtc_srtp::protection_profile::ProtectionProfile;

const PROFILES: [Profile; 2] = [Profile::AesCm128HmacSha1_80, Profile::AeadAes128Gcm];
const SSRCS: [u32; 3] = [0x1111_1111, 0xcafe_f00d, 7];

fn master(p: Profile, seed: u8) -> Vec<u8> {
    (0..p.master_len())
        .map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed))
        .collect()
}

fn oracle(p: Profile, m: &[u8]) -> Oracle {
    let pp = match p {
        Profile::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        Profile::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
    };
    let (key, salt) = m.split_at(p.key_len());
    Oracle::new(
        key,
        salt,
        pp,
        Some(srtp_replay_protection(64)),
        Some(srtcp_replay_protection(64)),
    )
    .expect("oracle context")
}

fn ours(p: Profile, m: &[u8]) -> Context {
    Context::new(p, m).expect("our context")
}

/// An RTP packet with a CSRC and a one-word header extension, so header parsing matters.
fn rtp(ssrc: u32, seq: u16, payload: usize) -> Vec<u8> {
    let mut p = vec![0x80 | 0x10 | 1, 111];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 960).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&0xabcd_0123u32.to_be_bytes());
    p.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xff, 0, 0]);
    p.extend((0..payload).map(|i| (i as u8) ^ (seq as u8)));
    p
}

/// A sender report followed by an SDES chunk, as a compound packet.
fn rtcp(ssrc: u32, n: u32) -> Vec<u8> {
    let mut p = vec![0x80, 200, 0, 6];
    p.extend_from_slice(&ssrc.to_be_bytes());
    for w in 0..5u32 {
        p.extend_from_slice(&(w * 1000 + n).to_be_bytes());
    }
    p.extend_from_slice(&[0x81, 202, 0, 2]);
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[1, 2, b'h', b'i']);
    p
}

fn protect_rtp(c: &mut Context, plain: &[u8]) -> Vec<u8> {
    let mut buf = plain.to_vec();
    buf.resize(plain.len() + MAX_OVERHEAD, 0);
    let n = c.protect_rtp(&mut buf, plain.len()).expect("protect_rtp");
    buf.truncate(n);
    buf
}

fn protect_rtcp(c: &mut Context, plain: &[u8]) -> Vec<u8> {
    let mut buf = plain.to_vec();
    buf.resize(plain.len() + MAX_OVERHEAD, 0);
    let n = c.protect_rtcp(&mut buf, plain.len()).expect("protect_rtcp");
    buf.truncate(n);
    buf
}

fn unprotect_rtp(c: &mut Context, pkt: &[u8]) -> Result<Vec<u8>, Error> {
    let mut buf = pkt.to_vec();
    let n = c.unprotect_rtp(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

fn unprotect_rtcp(c: &mut Context, pkt: &[u8]) -> Result<Vec<u8>, Error> {
    let mut buf = pkt.to_vec();
    let n = c.unprotect_rtcp(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// Sequence numbers that cross 65535 → 0 (twice for the first SSRC's offset).
fn seqs() -> impl Iterator<Item = u16> {
    (0..400u32).map(|i| (65_400 + i) as u16)
}

#[test]
fn rtp_ours_to_oracle_identical_bytes_across_rollover() {
    for p in PROFILES {
        let m = master(p, 1);
        let (mut tx, mut their_tx, mut rx) = (ours(p, &m), oracle(p, &m), oracle(p, &m));
        for seq in seqs() {
            for (k, &ssrc) in SSRCS.iter().enumerate() {
                let plain = rtp(ssrc, seq.wrapping_add(k as u16 * 100), 200 + k);
                let srtp = protect_rtp(&mut tx, &plain);
                let theirs = their_tx.encrypt_rtp(&plain).expect("oracle encrypt");
                assert_eq!(&srtp[..], &theirs[..], "{p:?} seq {seq} ssrc {ssrc:#x}");
                let back = rx.decrypt_rtp(&srtp).expect("oracle decrypts ours");
                assert_eq!(&back[..], &plain[..]);
            }
        }
    }
}

#[test]
fn rtp_oracle_to_ours_across_rollover() {
    for p in PROFILES {
        let m = master(p, 2);
        let (mut tx, mut rx) = (oracle(p, &m), ours(p, &m));
        for seq in seqs() {
            for (k, &ssrc) in SSRCS.iter().enumerate() {
                let plain = rtp(ssrc, seq.wrapping_add(k as u16 * 100), 1200);
                let srtp = tx.encrypt_rtp(&plain).expect("oracle encrypt");
                let back = unprotect_rtp(&mut rx, &srtp).expect("we decrypt theirs");
                assert_eq!(back, plain, "{p:?} seq {seq} ssrc {ssrc:#x}");
            }
        }
    }
}

#[test]
fn rtp_reordering_within_window() {
    for p in PROFILES {
        let m = master(p, 3);
        let mut tx = oracle(p, &m);
        let mut rx = ours(p, &m);
        let pkts: Vec<_> = (65_500u32..65_600)
            .map(|s| {
                let plain = rtp(5, s as u16, 50);
                (tx.encrypt_rtp(&plain).expect("encrypt").to_vec(), plain)
            })
            .collect();
        // Deliver pairs swapped: each second packet before its predecessor, across the wrap.
        for pair in pkts.chunks(2) {
            for (srtp, plain) in pair.iter().rev() {
                assert_eq!(unprotect_rtp(&mut rx, srtp).as_ref(), Ok(plain));
            }
        }
        for (srtp, _) in &pkts[pkts.len() - 60..] {
            assert_eq!(unprotect_rtp(&mut rx, srtp), Err(Error::Replayed));
        }
    }
}

#[test]
fn rtp_replayed_tampered_and_wrong_key_rejected() {
    for p in PROFILES {
        let m = master(p, 4);
        let mut their_tx = oracle(p, &m);
        let mut rx = ours(p, &m);
        let mut wrong = ours(p, &master(p, 99));
        let plain = rtp(SSRCS[0], 10, 300);
        let srtp = their_tx.encrypt_rtp(&plain).expect("encrypt").to_vec();
        assert_eq!(unprotect_rtp(&mut wrong, &srtp), Err(Error::AuthFailed));
        for i in [0usize, 2, 13, 30, srtp.len() / 2, srtp.len() - 1] {
            let mut bad = srtp.clone();
            bad[i] ^= 0x04;
            assert!(
                unprotect_rtp(&mut rx, &bad).is_err(),
                "{p:?} flip at byte {i} accepted"
            );
        }
        assert_eq!(unprotect_rtp(&mut rx, &srtp), Ok(plain.clone()));
        assert_eq!(unprotect_rtp(&mut rx, &srtp), Err(Error::Replayed));

        // And the oracle rejects the same things from us.
        let mut tx = ours(p, &m);
        let mut their_rx = oracle(p, &m);
        let mut their_wrong = oracle(p, &master(p, 99));
        let srtp = protect_rtp(&mut tx, &plain);
        assert!(their_wrong.decrypt_rtp(&srtp).is_err());
        let mut bad = srtp.clone();
        bad[25] ^= 1;
        assert!(their_rx.decrypt_rtp(&bad).is_err());
        assert!(their_rx.decrypt_rtp(&srtp).is_ok());
        assert!(their_rx.decrypt_rtp(&srtp).is_err(), "oracle replay check");
    }
}

#[test]
fn rtcp_both_directions_identical_bytes() {
    for p in PROFILES {
        let m = master(p, 5);
        let (mut tx, mut their_tx) = (ours(p, &m), oracle(p, &m));
        let (mut rx, mut their_rx) = (ours(p, &m), oracle(p, &m));
        for &ssrc in &SSRCS {
            // We start the SRTCP index at 0 (RFC 3711 §3.4), webrtc-srtp at 1: burn one of
            // ours so the indices line up and the bytes can be compared.
            let first = protect_rtcp(&mut tx, &rtcp(ssrc, 0));
            assert_eq!(
                unprotect_rtcp(&mut rx, &first),
                Ok(rtcp(ssrc, 0)),
                "{p:?} index 0"
            );
        }
        for n in 1..100 {
            for &ssrc in &SSRCS {
                let plain = rtcp(ssrc, n);
                let srtcp = protect_rtcp(&mut tx, &plain);
                let theirs = their_tx.encrypt_rtcp(&plain).expect("oracle encrypt");
                assert_eq!(&srtcp[..], &theirs[..], "{p:?} n {n} ssrc {ssrc:#x}");
                let back = their_rx.decrypt_rtcp(&srtcp).expect("oracle decrypts ours");
                assert_eq!(&back[..], &plain[..]);
                assert_eq!(unprotect_rtcp(&mut rx, &theirs), Ok(plain));
            }
        }
    }
}

#[test]
fn rtcp_replayed_tampered_and_wrong_key_rejected() {
    for p in PROFILES {
        let m = master(p, 6);
        let mut their_tx = oracle(p, &m);
        let mut rx = ours(p, &m);
        let mut wrong = ours(p, &master(p, 98));
        let plain = rtcp(SSRCS[1], 1);
        let srtcp = their_tx.encrypt_rtcp(&plain).expect("encrypt").to_vec();
        assert_eq!(unprotect_rtcp(&mut wrong, &srtcp), Err(Error::AuthFailed));
        for i in [
            1usize,
            5,
            9,
            20,
            srtcp.len() - 12,
            srtcp.len() - 3,
            srtcp.len() - 1,
        ] {
            let mut bad = srtcp.clone();
            bad[i] ^= 0x02;
            assert!(
                unprotect_rtcp(&mut rx, &bad).is_err(),
                "{p:?} flip at byte {i} accepted"
            );
        }
        assert_eq!(unprotect_rtcp(&mut rx, &srtcp), Ok(plain.clone()));
        assert_eq!(unprotect_rtcp(&mut rx, &srtcp), Err(Error::Replayed));

        let mut tx = ours(p, &m);
        let mut their_rx = oracle(p, &m);
        let srtcp = protect_rtcp(&mut tx, &plain);
        let mut bad = srtcp.clone();
        bad[10] ^= 1;
        assert!(their_rx.decrypt_rtcp(&bad).is_err());
        assert!(oracle(p, &master(p, 98)).decrypt_rtcp(&srtcp).is_err());
        assert!(their_rx.decrypt_rtcp(&srtcp).is_ok());
        assert!(
            their_rx.decrypt_rtcp(&srtcp).is_err(),
            "oracle replay check"
        );
    }
}

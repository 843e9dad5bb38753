//! Randomized no-panic test: garbage, truncations and bit flips into every entry point.
//! Deterministic (fixed-seed xorshift) so a failure reproduces.

use super::*;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }
}

fn valid_rtp(rng: &mut Rng, seq: u16) -> Vec<u8> {
    let cc = rng.below(3);
    let ext = rng.below(2) == 1;
    let mut p = vec![0x80 | cc as u8 | if ext { 0x10 } else { 0 }, 96];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 1]);
    p.extend_from_slice(&(rng.below(4) as u32).to_be_bytes());
    p.extend((0..4 * cc).map(|i| i as u8));
    if ext {
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]);
    }
    let payload = rng.below(300);
    p.extend((0..payload).map(|i| i as u8));
    p
}

#[test]
fn unprotect_never_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for p in [Profile::AesCm128HmacSha1_80, Profile::AeadAes128Gcm] {
        let master: Vec<u8> = (0..p.master_len() as u8).collect();
        let mut tx = Context::new(p, &master).expect("tx");
        let mut rx = Context::new(p, &master).expect("rx");
        let mut buf = vec![0u8; 1600];
        for round in 0..20_000u32 {
            // Garbage, sometimes with a plausible version byte.
            let n = rng.below(200);
            rng.fill(&mut buf[..n]);
            if n > 0 && rng.below(2) == 0 {
                buf[0] = 0x80 | (buf[0] & 0x3f);
            }
            let _ = rx.unprotect_rtp(&mut buf[..n]);
            rng.fill(&mut buf[..n]);
            let _ = rx.unprotect_rtcp(&mut buf[..n]);
            let cap = rng.below(buf.len());
            let _ = tx.protect_rtp(&mut buf[..cap], rng.below(400));
            let _ = tx.protect_rtcp(&mut buf[..cap], rng.below(400));

            // A real packet, then truncated and bit-flipped copies of it.
            let plain = valid_rtp(&mut rng, round as u16);
            let mut pkt = plain.clone();
            pkt.resize(plain.len() + MAX_OVERHEAD, 0);
            let Ok(len) = tx.protect_rtp(&mut pkt, plain.len()) else {
                continue; // More SSRCs than fit is a fine answer too.
            };
            pkt.truncate(len);
            let cut = rng.below(len + 1);
            let mut t = pkt[..cut].to_vec();
            let _ = rx.unprotect_rtp(&mut t);
            let mut f = pkt.clone();
            let bit = rng.below(len * 8);
            f[bit / 8] ^= 1 << (bit % 8);
            assert!(rx.unprotect_rtp(&mut f).is_err(), "bit flip accepted");
            let mut ok = pkt.clone();
            if let Ok(n) = rx.unprotect_rtp(&mut ok) {
                assert_eq!(&ok[..n], &plain[..]);
            }

            let mut r = vec![0x80, 200, 0, 1, 0, 0, 0, rng.below(4) as u8];
            r.extend((0..rng.below(64)).map(|i| i as u8));
            let rl = r.len();
            r.resize(rl + MAX_OVERHEAD, 0);
            if let Ok(len) = tx.protect_rtcp(&mut r, rl) {
                r.truncate(len);
                let mut t = r[..rng.below(len + 1)].to_vec();
                let _ = rx.unprotect_rtcp(&mut t);
                let bit = rng.below(len * 8);
                r[bit / 8] ^= 1 << (bit % 8);
                assert!(rx.unprotect_rtcp(&mut r).is_err(), "rtcp bit flip accepted");
            }
        }
    }
}

//! SRTP cost per 1200-byte RTP packet (a typical video packet): our in-place context against
//! webrtc-srtp, and the raw primitives each library offers, to justify the choices in
//! docs/crypto.md. Run:
//! `cargo bench -p switchyard-shared --bench srtp -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchyard_shared::srtp::{Context, Profile, MAX_OVERHEAD};

const PAYLOAD: usize = 1200;
const PROFILES: [(Profile, &str); 2] = [
    (Profile::AesCm128HmacSha1_80, "aes_cm_hmac_sha1_80"),
    (Profile::AeadAes128Gcm, "aead_aes_128_gcm"),
];

fn rtp_packet() -> Vec<u8> {
    let mut p = vec![0x80, 96, 0, 0, 0, 0, 0x12, 0x34, 0xca, 0xfe, 0xf0, 0x0d];
    p.extend((0..PAYLOAD - 12).map(|i| i as u8));
    p
}

fn master(p: Profile) -> Vec<u8> {
    (0..p.master_len() as u8)
        .map(|i| i.wrapping_mul(7))
        .collect()
}

fn set_seq(buf: &mut [u8], seq: u16) {
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
}

/// protect + unprotect round trip, each with a fresh sequence number so replay checks pass.
fn round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("srtp_round_trip_1200");
    g.throughput(Throughput::Bytes(PAYLOAD as u64));
    for (p, name) in PROFILES {
        let m = master(p);
        let mut tx = Context::new(p, &m).expect("tx");
        let mut rx = Context::new(p, &m).expect("rx");
        let mut buf = rtp_packet();
        buf.resize(PAYLOAD + MAX_OVERHEAD, 0);
        let mut seq = 0u16;
        g.bench_function(format!("ours/{name}"), |b| {
            b.iter(|| {
                seq = seq.wrapping_add(1);
                set_seq(&mut buf, seq);
                let n = tx.protect_rtp(&mut buf, PAYLOAD).expect("protect");
                rx.unprotect_rtp(black_box(&mut buf[..n]))
                    .expect("unprotect")
            })
        });

        let wp = match p {
            Profile::AesCm128HmacSha1_80 => {
                webrtc_srtp::protection_profile::ProtectionProfile::Aes128CmHmacSha1_80
            }
            Profile::AeadAes128Gcm => {
                webrtc_srtp::protection_profile::ProtectionProfile::AeadAes128Gcm
            }
        };
        let (key, salt) = m.split_at(p.key_len());
        let new = || {
            webrtc_srtp::context::Context::new(
                key,
                salt,
                wp,
                Some(webrtc_srtp::option::srtp_replay_protection(64)),
                None,
            )
            .expect("webrtc-srtp context")
        };
        let (mut wtx, mut wrx) = (new(), new());
        let mut plain = rtp_packet();
        let mut seq = 0u16;
        g.bench_function(format!("webrtc-srtp/{name}"), |b| {
            b.iter(|| {
                seq = seq.wrapping_add(1);
                set_seq(&mut plain, seq);
                let enc = wtx.encrypt_rtp(&plain).expect("encrypt");
                wrx.decrypt_rtp(black_box(&enc)).expect("decrypt")
            })
        });
    }
    g.finish();
}

/// AES-128-GCM seal of 1188 bytes with a 12-byte AAD (the RTP header).
fn gcm(c: &mut Criterion) {
    let mut g = c.benchmark_group("aes128_gcm_seal_1200");
    g.throughput(Throughput::Bytes(PAYLOAD as u64));
    let key = [7u8; 16];
    let aad = [0x80u8; 12];
    let mut data = vec![0u8; PAYLOAD - 12];

    let ring_key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, &key).expect("key"),
    );
    g.bench_function("ring", |b| {
        b.iter(|| {
            let nonce = ring::aead::Nonce::assume_unique_for_key([1; 12]);
            ring_key
                .seal_in_place_separate_tag(nonce, ring::aead::Aad::from(aad), &mut data)
                .expect("seal")
        })
    });

    use aes_gcm::aead::{AeadInPlace, KeyInit};
    let rc = aes_gcm::Aes128Gcm::new_from_slice(&key).expect("key");
    g.bench_function("rustcrypto-aes-gcm", |b| {
        b.iter(|| {
            rc.encrypt_in_place_detached(&[1u8; 12].into(), &aad, &mut data)
                .expect("seal")
        })
    });
    g.finish();
}

/// HMAC-SHA1 over 1200 bytes plus the 4-byte ROC, key schedule done once.
fn hmac_sha1(c: &mut Criterion) {
    let mut g = c.benchmark_group("hmac_sha1_1200");
    g.throughput(Throughput::Bytes(PAYLOAD as u64));
    let key = [9u8; 20];
    let data = vec![0x5au8; PAYLOAD];
    let roc = [0u8; 4];

    let ring_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &key);
    g.bench_function("ring", |b| {
        b.iter(|| {
            let mut ctx = ring::hmac::Context::with_key(&ring_key);
            ctx.update(black_box(&data));
            ctx.update(&roc);
            ctx.sign()
        })
    });

    use hmac::Mac;
    let rc = hmac::Hmac::<sha1::Sha1>::new_from_slice(&key).expect("key");
    g.bench_function("rustcrypto-hmac-sha1", |b| {
        b.iter(|| {
            rc.clone()
                .chain_update(black_box(&data))
                .chain_update(roc)
                .finalize()
        })
    });
    g.finish();
}

/// AES-128-CTR keystream over 1188 bytes (the AES-CM half of SRTP's default profile).
/// ring offers no raw CTR, so RustCrypto is the only candidate; shown for the cost split.
fn aes_ctr(c: &mut Criterion) {
    use aes::cipher::{InnerIvInit, KeyInit, StreamCipher};
    let mut g = c.benchmark_group("aes128_ctr_1200");
    g.throughput(Throughput::Bytes(PAYLOAD as u64));
    let aes = aes::Aes128Enc::new(&[3u8; 16].into());
    let mut data = vec![0u8; PAYLOAD - 12];
    g.bench_function("rustcrypto-aes-ctr", |b| {
        b.iter(|| {
            let core = ctr::CtrCore::<&aes::Aes128Enc, ctr::flavors::Ctr128BE>::inner_iv_init(
                &aes,
                &[1u8; 16].into(),
            );
            ctr::Ctr128BE::from_core(core).apply_keystream(black_box(&mut data));
        })
    });
    g.finish();
}

criterion_group!(benches, round_trip, gcm, hmac_sha1, aes_ctr);
criterion_main!(benches);

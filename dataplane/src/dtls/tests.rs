//! Handshakes against webrtc-dtls in the client role, through in-memory pipes: the test
//! thread plays the worker, moving datagrams between the client's pipe and the session.

use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use switchyard_shared::command::SrtpProfile;
use tokio::sync::oneshot;
use webrtc_dtls::config::Config;
use webrtc_dtls::conn::DTLSConn;
use webrtc_dtls::crypto::Certificate;
use webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use webrtc_util::KeyingMaterialExporter;

use super::pipe::{Pipe, PipeEnds};
use super::*;

/// Wall-clock bound for one test handshake; far above the few ms it takes.
const WALL: Duration = Duration::from_secs(20);

const HANDSHAKE: u8 = 22;
const HELLO_VERIFY_REQUEST: u8 = 3;
const SERVER_HELLO: u8 = 2;

struct ClientView {
    profile: SrtpProtectionProfile,
    material: Vec<u8>,
    server_fingerprint_ok: bool,
}

/// A webrtc-dtls client on its own runtime, talking through a pipe the test drives.
struct Client {
    _rt: tokio::runtime::Runtime,
    ends: PipeEnds,
    outcome: oneshot::Receiver<Result<ClientView, String>>,
    result: Option<Result<ClientView, String>>,
    /// Drop the client's CertificateVerify on its way to the server.
    strip_certificate_verify: bool,
    /// Datagrams that lost a CertificateVerify that way.
    stripped: usize,
}

fn client_cert() -> Certificate {
    Certificate::generate_self_signed_with_alg(
        vec!["client".to_owned()],
        &rcgen::PKCS_ECDSA_P256_SHA256,
    )
    .unwrap()
}

fn client(
    profiles: Vec<SrtpProtectionProfile>,
    cert: Option<Certificate>,
    server_fp: String,
) -> Client {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    let (pipe, ends) = Pipe::new();
    let (tx, outcome) = oneshot::channel();
    let seen_fp = Arc::new(std::sync::Mutex::new(None));
    let hook_fp = Arc::clone(&seen_fp);
    let config = Config {
        certificates: cert.into_iter().collect(),
        srtp_protection_profiles: profiles,
        // Self-signed server: the test checks its fingerprint instead, as a browser does.
        insecure_skip_verify: true,
        server_name: "switchyard".into(),
        verify_peer_certificate: Some(Arc::new(move |certs: &[Vec<u8>], _: &_| {
            *hook_fp.lock().unwrap() = certs.first().map(|c| fingerprint::sha256_of(c));
            Ok(())
        })),
        ..Config::default()
    };
    rt.spawn(async move {
        let conn = match DTLSConn::new(Arc::new(pipe), config, true, None).await {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        let profile = conn.selected_srtpprotection_profile();
        let len = match profile {
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => 2 * (16 + 12),
            _ => 2 * (16 + 14),
        };
        let material = conn
            .connection_state()
            .await
            .export_keying_material("EXTRACTOR-dtls_srtp", &[], len)
            .await
            .unwrap();
        let server_fingerprint_ok = seen_fp.lock().unwrap().as_deref() == Some(&server_fp);
        let _ = tx.send(Ok(ClientView {
            profile,
            material,
            server_fingerprint_ok,
        }));
        // Keep the connection (and its retransmissions) alive until the runtime goes.
        std::future::pending::<()>().await;
    });
    Client {
        _rt: rt,
        ends,
        outcome,
        result: None,
        strip_certificate_verify: false,
        stripped: 0,
    }
}

/// What one test link has seen so far.
#[derive(Default)]
struct Seen {
    from_server: Vec<Vec<u8>>,
    from_client: Vec<Vec<u8>>,
    event: Option<DtlsEvent>,
}

/// One turn of the test "worker": move what is queued both ways, collect the server event.
fn step(session: &mut DtlsSession, client: &mut Client, seen: &mut Seen) {
    while let Ok(d) = client.ends.outbound.try_recv() {
        let d = if client.strip_certificate_verify {
            let stripped = strip_certificate_verify(&d);
            client.stripped += usize::from(stripped.len() < d.len());
            stripped
        } else {
            d
        };
        session.handle_datagram(&d, Instant::now());
        seen.from_client.push(d);
    }
    while let Some(d) = session.poll_transmit() {
        seen.from_server.push(d.clone());
        let _ = client.ends.inbound.try_send(d);
    }
    if let Some(ev) = session.poll_event() {
        assert!(
            seen.event.is_none(),
            "second event {ev:?} after {:?}",
            seen.event
        );
        seen.event = Some(ev);
    }
    if client.result.is_none() {
        client.result = client.outcome.try_recv().ok();
    }
}

/// Move datagrams both ways until `done`, returning every datagram each side sent, in
/// order, and the server's event.
fn drive(
    session: &mut DtlsSession,
    client: &mut Client,
    done: impl Fn(&Option<DtlsEvent>, &Client) -> bool,
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, Option<DtlsEvent>) {
    let start = Instant::now();
    let mut seen = Seen::default();
    while start.elapsed() < WALL {
        step(session, client, &mut seen);
        if done(&seen.event, client) {
            break;
        }
        sleep(Duration::from_millis(1));
    }
    (seen.from_server, seen.from_client, seen.event)
}

/// The datagram without its plaintext CertificateVerify record(s): a client that presents a
/// certificate but never proves it holds the key (CVE-2022-29222).
fn strip_certificate_verify(d: &[u8]) -> Vec<u8> {
    const CERTIFICATE_VERIFY: u8 = 15;
    let mut out = Vec::with_capacity(d.len());
    let mut rest = d;
    while rest.len() >= 13 {
        let len = u16::from_be_bytes([rest[11], rest[12]]) as usize;
        let end = (13 + len).min(rest.len());
        let epoch0 = rest[3..5] == [0, 0];
        let is_cv = rest[0] == HANDSHAKE && epoch0 && rest.get(13) == Some(&CERTIFICATE_VERIFY);
        if !is_cv {
            out.extend_from_slice(&rest[..end]);
        }
        rest = &rest[end..];
    }
    out.extend_from_slice(rest);
    out
}

fn both_done(ev: &Option<DtlsEvent>, c: &Client) -> bool {
    ev.is_some() && c.result.is_some()
}

fn handshake(client_profiles: Vec<SrtpProtectionProfile>, expect: SrtpProfile) {
    let cfg = DtlsConfig::generate().unwrap();
    let cert = client_cert();
    let client_fp = fingerprint::sha256_of(cert.certificate[0].as_ref());
    let mut c = client(client_profiles, Some(cert), cfg.fingerprint());
    let mut s = DtlsSession::new(&cfg, &client_fp, Instant::now()).unwrap();
    assert!(s.poll_timeout().is_some());

    let (from_server, from_client, event) = drive(&mut s, &mut c, both_done);

    let view = match c.result.take() {
        Some(Ok(v)) => v,
        other => panic!("client: {:?}", other.map(|r| r.err())),
    };
    assert!(
        view.server_fingerprint_ok,
        "server cert != cfg.fingerprint()"
    );
    let client_profile = match expect {
        SrtpProfile::AeadAes128Gcm => SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
        SrtpProfile::AesCm128HmacSha1_80 => SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
    };
    assert_eq!(view.profile, client_profile);
    let (k, salt) = (expect.key_len(), expect.salt_len());
    assert_eq!(view.material.len(), 2 * (k + salt));
    let m = &view.material;
    let client_write = [&m[..k], &m[2 * k..2 * k + salt]].concat();
    let server_write = [&m[k..2 * k], &m[2 * k + salt..]].concat();
    match event {
        Some(DtlsEvent::Connected(keys)) => {
            assert_eq!(keys.profile, expect);
            assert_eq!(keys.remote, client_write, "remote = client write key||salt");
            assert_eq!(keys.local, server_write, "local = server write key||salt");
        }
        other => panic!("server: {other:?}"),
    }
    assert!(s.poll_timeout().is_none());
    assert_eq!(s.poll_event(), None);

    // Cookie exchange: the first ClientHello is answered by a HelloVerifyRequest, no larger
    // than it (no amplification), and the ServerHello only follows the second ClientHello.
    let first = &from_server[0];
    assert_eq!(first[0], HANDSHAKE);
    assert_eq!(
        first[13], HELLO_VERIFY_REQUEST,
        "first answer: {first:02x?}"
    );
    assert!(first.len() <= from_client[0].len());
    let server_hello_at = from_server
        .iter()
        .position(|d| d.len() > 13 && d[0] == HANDSHAKE && d[13] == SERVER_HELLO)
        .unwrap();
    assert!(server_hello_at >= 1);
    assert!(from_client.len() >= 2);
}

#[test]
fn handshake_aead_aes_128_gcm() {
    handshake(
        vec![
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        ],
        SrtpProfile::AeadAes128Gcm,
    );
}

#[test]
fn handshake_aes_cm_128_hmac_sha1_80() {
    handshake(
        vec![SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80],
        SrtpProfile::AesCm128HmacSha1_80,
    );
}

#[test]
fn fingerprint_mismatch_fails() {
    let cfg = DtlsConfig::generate().unwrap();
    let other = fingerprint::sha256_of(client_cert().certificate[0].as_ref());
    let mut c = client(
        vec![SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm],
        Some(client_cert()),
        cfg.fingerprint(),
    );
    let mut s = DtlsSession::new(&cfg, &other, Instant::now()).unwrap();
    let (_, _, event) = drive(&mut s, &mut c, |ev, _| ev.is_some());
    assert_eq!(event, Some(DtlsEvent::Failed(Failure::FingerprintMismatch)));
    assert_eq!(
        Failure::FingerprintMismatch.to_string(),
        "fingerprint mismatch"
    );
    assert!(!matches!(c.result, Some(Ok(_))));
}

#[test]
fn client_without_certificate_fails() {
    let cfg = DtlsConfig::generate().unwrap();
    let fp = fingerprint::sha256_of(client_cert().certificate[0].as_ref());
    let mut c = client(
        vec![SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm],
        None,
        cfg.fingerprint(),
    );
    let mut s = DtlsSession::new(&cfg, &fp, Instant::now()).unwrap();
    let (_, _, event) = drive(&mut s, &mut c, |ev, _| ev.is_some());
    assert!(
        matches!(
            event,
            Some(DtlsEvent::Failed(
                Failure::Handshake | Failure::PeerNotVerified
            ))
        ),
        "no client certificate: {event:?}"
    );
}

#[test]
fn handshake_timeout_on_callers_clock() {
    let cfg = DtlsConfig::generate().unwrap();
    let fp = fingerprint::sha256_of(b"x");
    let t0 = Instant::now();
    let mut s = DtlsSession::new(&cfg, &fp, t0).unwrap();
    assert_eq!(s.poll_timeout(), Some(t0 + HANDSHAKE_TIMEOUT));
    s.handle_timeout(t0 + HANDSHAKE_TIMEOUT - Duration::from_millis(1));
    assert_eq!(s.poll_event(), None);
    s.handle_timeout(t0 + HANDSHAKE_TIMEOUT);
    assert_eq!(s.poll_event(), Some(DtlsEvent::Failed(Failure::Timeout)));
    assert_eq!(Failure::Timeout.to_string(), "handshake timeout");
    assert_eq!(s.poll_timeout(), None);
    s.handle_timeout(t0 + 2 * HANDSHAKE_TIMEOUT);
    s.handle_datagram(&[22, 254, 253], t0 + 2 * HANDSHAKE_TIMEOUT);
    assert_eq!(s.poll_event(), None, "one event only");
}

#[test]
fn late_datagram_fails_on_its_receive_time() {
    let cfg = DtlsConfig::generate().unwrap();
    let t0 = Instant::now();
    let mut s = DtlsSession::new(&cfg, &fingerprint::sha256_of(b"x"), t0).unwrap();
    s.handle_datagram(&[22, 254, 253, 0], t0 + HANDSHAKE_TIMEOUT);
    assert_eq!(s.poll_event(), Some(DtlsEvent::Failed(Failure::Timeout)));
}

#[test]
fn handshake_data_is_capped() {
    let cfg = DtlsConfig::generate().unwrap();
    let t0 = Instant::now();
    let mut s = DtlsSession::new(&cfg, &fingerprint::sha256_of(b"x"), t0).unwrap();
    // Handshake-looking records (epoch 0, bogus fragments) a peer could send to make us
    // buffer: 1 KiB each, so the 65th crosses 64 KiB.
    let mut record = vec![0u8; 1024];
    record[..3].copy_from_slice(&[22, 254, 253]);
    for i in 0..MAX_HANDSHAKE_BYTES / 1024 {
        record[11..13].copy_from_slice(&(1024u16 - 13).to_be_bytes());
        record[10] = i as u8;
        s.handle_datagram(&record, t0);
    }
    assert_ne!(s.poll_event(), Some(DtlsEvent::Failed(Failure::DataLimit)));
    s.handle_datagram(&record, t0);
    assert_eq!(s.poll_event(), Some(DtlsEvent::Failed(Failure::DataLimit)));
    for _ in 0..10 {
        s.handle_datagram(&record, t0);
    }
    assert_eq!(s.poll_event(), None);
}

/// xorshift64: deterministic garbage without a rand dependency.
fn garbage(seed: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed as u8
        })
        .collect()
}

#[test]
fn garbage_never_panics_and_handshake_still_completes() {
    let cfg = DtlsConfig::generate().unwrap();
    let cert = client_cert();
    let client_fp = fingerprint::sha256_of(cert.certificate[0].as_ref());
    let mut s = DtlsSession::new(&cfg, &client_fp, Instant::now()).unwrap();
    let mut seed = 0x5eed_u64;
    let mut inputs: Vec<Vec<u8>> = vec![
        vec![],
        vec![22],
        vec![22, 254, 253],
        // Header claiming a 64 KiB body it does not have.
        vec![22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff],
        // Handshake header with a fragment past its length.
        [
            &[22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12][..],
            &[1, 0, 0, 4, 0, 0, 0, 0, 0xff, 0, 0, 8],
        ]
        .concat(),
        // ChangeCipherSpec, alert, and application data at epoch 1 out of nowhere.
        vec![20, 254, 253, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1],
        vec![21, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 40],
        vec![23, 254, 253, 0, 1, 0, 0, 0, 0, 0, 0, 0, 4, 1, 2, 3, 4],
        vec![0xff; 4000],
    ];
    for len in [1, 13, 14, 25, 100, 300, 1200] {
        for _ in 0..4 {
            let mut g = garbage(&mut seed, len);
            g[0] = 20 + (g[0] % 44); // stays in the RFC 7983 DTLS range
            inputs.push(g);
        }
    }
    let fed: usize = inputs.iter().map(Vec::len).sum();
    assert!(
        fed < MAX_HANDSHAKE_BYTES / 2,
        "leave room for the handshake"
    );
    for d in &inputs {
        s.handle_datagram(d, Instant::now());
    }
    sleep(Duration::from_millis(50));
    assert_eq!(
        s.poll_event(),
        None,
        "garbage alone does not end the session"
    );

    let mut c = client(
        vec![SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm],
        Some(cert),
        cfg.fingerprint(),
    );
    let (_, _, event) = drive(&mut s, &mut c, both_done);
    assert!(matches!(event, Some(DtlsEvent::Connected(_))), "{event:?}");
}

#[test]
fn sessions_share_one_driver() {
    // Handshakes interleaved on one config: all complete on its single driver thread.
    let cfg = DtlsConfig::generate().unwrap();
    let mut links: Vec<(DtlsSession, Client, Seen)> = (0..16)
        .map(|_| {
            let cert = client_cert();
            let fp = fingerprint::sha256_of(cert.certificate[0].as_ref());
            let c = client(
                vec![SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80],
                Some(cert),
                cfg.fingerprint(),
            );
            let s = DtlsSession::new(&cfg, &fp, Instant::now()).unwrap();
            (s, c, Seen::default())
        })
        .collect();
    let start = Instant::now();
    while start.elapsed() < WALL && !links.iter().all(|(_, c, seen)| both_done(&seen.event, c)) {
        for (s, c, seen) in &mut links {
            step(s, c, seen);
        }
        sleep(Duration::from_millis(1));
    }
    for (_, c, seen) in &links {
        assert!(
            matches!(seen.event, Some(DtlsEvent::Connected(_))),
            "{:?}",
            seen.event
        );
        assert!(matches!(c.result, Some(Ok(_))));
    }
}

#[test]
fn certificate_without_certificate_verify_never_connects() {
    let cfg = DtlsConfig::generate().unwrap();
    let cert = client_cert();
    let fp = fingerprint::sha256_of(cert.certificate[0].as_ref());
    let mut c = client(
        vec![SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm],
        Some(cert),
        cfg.fingerprint(),
    );
    c.strip_certificate_verify = true;
    let t0 = Instant::now();
    let mut s = DtlsSession::new(&cfg, &fp, t0).unwrap();
    // Long enough for the client's full flight 5 and one retransmission (1 s interval).
    let (_, from_client, event) = drive(&mut s, &mut c, |_, _| false_after(t0, 1500));
    assert!(from_client.len() >= 3, "client got as far as flight 5");
    assert!(c.stripped >= 1, "a CertificateVerify was sent and dropped");
    assert_eq!(event, None, "connected or failed without CertificateVerify");
    s.handle_timeout(t0 + HANDSHAKE_TIMEOUT);
    assert_eq!(s.poll_event(), Some(DtlsEvent::Failed(Failure::Timeout)));
}

/// A `drive` stop condition: true once `ms` of wall time have passed since `t0`.
fn false_after(t0: Instant, ms: u64) -> bool {
    t0.elapsed() >= Duration::from_millis(ms)
}

#[test]
fn config_from_pem() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["node".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cfg = DtlsConfig::from_pem(&cert.pem(), &key.serialize_pem()).unwrap();
    assert_eq!(cfg.fingerprint(), fingerprint::sha256_of(cert.der()));
    assert!(!format!("{cfg:?}").contains("PRIVATE"));

    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    assert!(DtlsConfig::from_pem(&cert.pem(), &other.serialize_pem()).is_err());
    assert!(DtlsConfig::from_pem("", &key.serialize_pem()).is_err());
    assert!(DtlsConfig::from_pem(&cert.pem(), "garbage").is_err());
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    assert!(DtlsConfig::from_pem(&cert.pem(), &ed.serialize_pem()).is_err());
}

#[test]
fn generated_fingerprint_format() {
    let fp = DtlsConfig::generate().unwrap().fingerprint();
    let hex = fp.strip_prefix("sha-256 ").unwrap();
    assert_eq!(hex.split(':').count(), 32);
    assert!(hex.split(':').all(|b| b.len() == 2
        && b.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())));
}

#[test]
fn bad_remote_fingerprint_is_an_error() {
    let cfg = DtlsConfig::generate().unwrap();
    assert!(matches!(
        DtlsSession::new(&cfg, "sha-256 nope", Instant::now()),
        Err(DtlsError::Fingerprint(_))
    ));
}

/// A webrtc-sctp/webrtc-data client (the browser's role) over a DTLS client on its own
/// runtime: it opens "chat" (unordered, 3 retransmissions) and sends a string, a binary and
/// an empty binary message on it, then accepts the channel the server opens and reports it;
/// with `read_mirror` it reads one message from it and reports that, without it never reads.
fn sctp_client(
    cert: Certificate,
    read_mirror: bool,
) -> (
    tokio::runtime::Runtime,
    PipeEnds,
    std::sync::mpsc::Receiver<String>,
) {
    use bytes::Bytes;
    use webrtc_data::data_channel::{Config as ChannelConfig, DataChannel};
    use webrtc_data::message::message_channel_open::ChannelType;
    use webrtc_sctp::association::{Association, Config as AssociationConfig};

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    let (pipe, ends) = Pipe::new();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let config = Config {
        certificates: vec![cert],
        srtp_protection_profiles: vec![SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80],
        insecure_skip_verify: true,
        server_name: "switchyard".into(),
        ..Config::default()
    };
    rt.spawn(async move {
        let conn = DTLSConn::new(Arc::new(pipe), config, true, None)
            .await
            .unwrap();
        let assoc = Arc::new(
            Association::client(AssociationConfig {
                net_conn: Arc::new(conn),
                max_receive_buffer_size: 0,
                max_message_size: 0,
                name: "client".into(),
            })
            .await
            .unwrap(),
        );
        let chat = DataChannel::dial(
            &assoc,
            0,
            ChannelConfig {
                label: "chat".into(),
                channel_type: ChannelType::PartialReliableRexmitUnordered,
                reliability_parameter: 3,
                ..ChannelConfig::default()
            },
        )
        .await
        .unwrap();
        chat.write_data_channel(&Bytes::from_static(b"hello"), true)
            .await
            .unwrap();
        chat.write_data_channel(&Bytes::from_static(&[1, 2, 3]), false)
            .await
            .unwrap();
        chat.write_data_channel(&Bytes::new(), false).await.unwrap();
        let mirror = DataChannel::accept(&assoc, ChannelConfig::default(), &[] as &[DataChannel])
            .await
            .unwrap();
        let _ = tx.send(format!(
            "opened {} {} {:?}",
            mirror.stream_identifier(),
            mirror.config.label,
            mirror.config.channel_type
        ));
        if read_mirror {
            let mut buf = vec![0u8; 1024];
            let (n, is_string) = mirror.read_data_channel(&mut buf).await.unwrap();
            let _ = tx.send(format!("got {is_string} {:?}", &buf[..n]));
        }
        std::future::pending::<()>().await;
    });
    (rt, ends, rx)
}

/// One turn of the test "worker" for a data channel link: records both ways, the session's
/// data events collected.
fn pump(s: &mut DtlsSession, ends: &mut PipeEnds, events: &mut Vec<DataEvent>) {
    while let Ok(d) = ends.outbound.try_recv() {
        s.handle_datagram(&d, Instant::now());
    }
    while let Some(d) = s.poll_transmit() {
        let _ = ends.inbound.try_send(d);
    }
    let _ = s.poll_event();
    while let Some(e) = s.poll_data() {
        events.push(e);
    }
}

fn mirror_params() -> crate::datachan::ChannelParams {
    crate::datachan::ChannelParams {
        label: "mirror".into(),
        protocol: String::new(),
        ordered: true,
        reliability: crate::datachan::Reliability::Reliable,
        priority: 0,
    }
}

/// Data channels over a session's connection: the session reports the association, the
/// client's channel and each message with its PPID, then opens a channel of its own towards
/// the client and sends on it.
#[test]
fn data_channels_run_over_the_dtls_connection() {
    use crate::datachan::{ppid, ChannelParams, Reliability};
    use bytes::Bytes;

    let cfg = DtlsConfig::generate().unwrap();
    let cert = client_cert();
    let fp = fingerprint::sha256_of(cert.certificate[0].as_ref());
    let (_rt, mut ends, rx) = sctp_client(cert, true);
    let mut s = DtlsSession::new(&cfg, &fp, Instant::now()).unwrap();
    let mut events = Vec::new();
    let mut got = Vec::new();
    let mut opened = false;
    let start = Instant::now();
    while start.elapsed() < WALL && (got.len() < 2 || events.len() < 5) {
        pump(&mut s, &mut ends, &mut events);
        if !opened && events.first() == Some(&DataEvent::Up) {
            assert!(s.send_data(DataCommand::Open {
                channel: 1,
                params: mirror_params(),
            }));
            assert!(s.send_data(DataCommand::Send {
                channel: 1,
                ppid: ppid::STRING,
                payload: Bytes::from_static(b"to you"),
            }));
            opened = true;
        }
        while let Ok(m) = rx.try_recv() {
            got.push(m);
        }
        sleep(Duration::from_millis(1));
    }
    let message = |p, b: &'static [u8]| DataEvent::Message {
        channel: 0,
        ppid: p,
        payload: Bytes::from_static(b),
    };
    assert_eq!(
        events,
        vec![
            DataEvent::Up,
            DataEvent::Opened {
                channel: 0,
                params: ChannelParams {
                    label: "chat".into(),
                    protocol: String::new(),
                    ordered: false,
                    reliability: Reliability::Rexmit(3),
                    priority: 0,
                },
            },
            message(ppid::STRING, b"hello"),
            message(ppid::BINARY, &[1, 2, 3]),
            message(ppid::BINARY_EMPTY, b""),
        ]
    );
    assert_eq!(
        got,
        vec![
            "opened 1 mirror Reliable".to_owned(),
            format!("got true {:?}", b"to you"),
        ]
    );
    assert_eq!(s.take_data_counts(), (1, 0));

    // The session ends: its association's tasks end with it (see `ended_sessions_leave_no_task_behind`).
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(10);
    let alive = || {
        cfg.driver
            .rt
            .as_ref()
            .map_or(0, |rt| rt.metrics().num_alive_tasks())
    };
    while alive() > 0 && Instant::now() < deadline {
        sleep(Duration::from_millis(50));
    }
    assert_eq!(
        alive(),
        0,
        "an ended session with data channels left tasks behind"
    );
}

/// A subscriber that never reads: what the node sends it is capped by the channel's send
/// buffer bound, and the rest is dropped and counted, not queued.
#[test]
fn a_subscriber_that_does_not_read_gets_its_messages_dropped() {
    use crate::datachan::{ppid, MAX_BUFFERED, MAX_MESSAGE};
    use bytes::Bytes;

    const SENT: u64 = 100;
    let cfg = DtlsConfig::generate().unwrap();
    let cert = client_cert();
    let fp = fingerprint::sha256_of(cert.certificate[0].as_ref());
    let (_rt, mut ends, rx) = sctp_client(cert, false);
    let mut s = DtlsSession::new(&cfg, &fp, Instant::now()).unwrap();
    let mut events = Vec::new();
    let (mut sent, mut dropped) = (0, 0);
    let (mut open_sent, mut opened) = (false, false);
    let big = Bytes::from(vec![7u8; MAX_MESSAGE]);
    let start = Instant::now();
    while start.elapsed() < WALL && sent + dropped < SENT {
        pump(&mut s, &mut ends, &mut events);
        if !opened && rx.try_recv().is_ok() {
            // The client has the mirror; now flood it with 6.4 MB it never reads.
            for _ in 0..SENT {
                assert!(s.send_data(DataCommand::Send {
                    channel: 1,
                    ppid: ppid::BINARY,
                    payload: big.clone(),
                }));
            }
            opened = true;
        }
        if !open_sent && events.first() == Some(&DataEvent::Up) {
            assert!(s.send_data(DataCommand::Open {
                channel: 1,
                params: mirror_params(),
            }));
            open_sent = true;
        }
        let (a, b) = s.take_data_counts();
        sent += a;
        dropped += b;
        sleep(Duration::from_millis(1));
    }
    assert_eq!(sent + dropped, SENT, "every message sent or dropped");
    // The client's receive window (1 MiB by default) plus our send bound: anything beyond
    // was dropped without waiting, so the node's memory for this subscriber stays bounded.
    let bound = (1024 * 1024 + MAX_BUFFERED) / MAX_MESSAGE + 2;
    assert!(sent as usize <= bound, "sent {sent}, bound {bound}");
    assert!(dropped >= SENT - bound as u64, "dropped {dropped}");
}

/// A node runs for months: every session's tasks (handshake, keep-alive, SCTP) must end
/// when the session does, connected or not.
#[test]
fn ended_sessions_leave_no_task_behind() {
    let cfg = DtlsConfig::generate().unwrap();
    let alive = |cfg: &DtlsConfig| {
        cfg.driver
            .rt
            .as_ref()
            .map_or(0, |rt| rt.metrics().num_alive_tasks())
    };
    for _ in 0..5 {
        let cert = client_cert();
        let client_fp = fingerprint::sha256_of(cert.certificate[0].as_ref());
        let mut c = client(
            vec![SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm],
            Some(cert),
            cfg.fingerprint(),
        );
        let mut s = DtlsSession::new(&cfg, &client_fp, Instant::now()).unwrap();
        let (_, _, event) = drive(&mut s, &mut c, both_done);
        assert!(matches!(event, Some(DtlsEvent::Connected(_))), "{event:?}");
        drop(s);
        drop(c);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(&cfg) > 0 && Instant::now() < deadline {
        sleep(Duration::from_millis(50));
    }
    assert_eq!(
        alive(&cfg),
        0,
        "tasks still alive after every session ended"
    );
}

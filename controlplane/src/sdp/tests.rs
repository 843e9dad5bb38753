//! Offers as Chrome (12x), Firefox (12x) and aiortc write them, in `fixtures/`.

use std::net::SocketAddr;

use ::sdp::{MediaDescription, SessionDescription};

use super::*;

const CHROME_PUBLISH: &str = include_str!("fixtures/chrome_publish.sdp");
const CHROME_SIMULCAST: &str = include_str!("fixtures/chrome_publish_simulcast.sdp");
const CHROME_SUBSCRIBE: &str = include_str!("fixtures/chrome_subscribe.sdp");
const FIREFOX_PUBLISH: &str = include_str!("fixtures/firefox_publish.sdp");
const FIREFOX_SIMULCAST: &str = include_str!("fixtures/firefox_publish_simulcast.sdp");
const FIREFOX_SUBSCRIBE: &str = include_str!("fixtures/firefox_subscribe.sdp");
const AIORTC_PUBLISH: &str = include_str!("fixtures/aiortc_publish.sdp");
const CHROME_DATACHANNEL: &str = include_str!("fixtures/chrome_publish_datachannel.sdp");
const AIORTC_DATACHANNEL: &str = include_str!("fixtures/aiortc_publish_datachannel.sdp");
/// GStreamer 1.22 `webrtcbin` with `bundle-policy=max-bundle`, as `whip-client` offers:
/// the second m-line `bundle-only` (port 0), no MID header extension, SSRCs in `a=ssrc`.
const GSTREAMER_BUNDLE_ONLY: &str = include_str!("fixtures/gstreamer_publish_bundle_only.sdp");
/// The same with x264 (`tests/gstreamer/whip_publish.py --codec h264`): constrained baseline
/// written as x264 writes it (`42c01f`), `sprop-parameter-sets` in the fmtp.
const GSTREAMER_H264: &str = include_str!("fixtures/gstreamer_publish_h264.sdp");
/// OBS 30.1 (libdatachannel): ICE, DTLS and `a=setup` at session level, `a=group:LS`, SSRCs
/// in `a=ssrc`, no header extensions, candidates with a real port. The audio section as an
/// OBS 30.1.0 user quoted it (kevmo314/tinywhip#2); the video section written after
/// obs-studio's `whip-output.cpp` (H264 42e01f, packetization-mode 1).
const OBS_PUBLISH: &str = include_str!("fixtures/obs_whip_publish.sdp");
/// FFmpeg's WHIP muxer (`libavformat/whip.c`, `generate_sdp_offer`): `a=setup:passive`, no
/// candidates, no `a=rtcp-fb`, no header extensions, audio first.
const FFMPEG_PUBLISH: &str = include_str!("fixtures/ffmpeg_whip_publish.sdp");
/// `a=setup:active`, `a=rtcp-mux-only`, an `ssrc-group:FID`, and m-lines we cannot serve:
/// H265 only, `m=text` (T.140), static-payload-only audio; plus a data channel.
const MIXED_UNKNOWN: &str = include_str!("fixtures/mixed_unknown_m_lines.sdp");
/// Debian 12's Chromium 148 (software decoding only) watching video and audio: its H264
/// entries are 42001f, 42e01f, 4d001f and f4001f, no High (64).
const CHROMIUM148_SUBSCRIBE: &str = include_str!("fixtures/chromium148_subscribe.sdp");

const ALL: [&str; 9] = [
    CHROME_PUBLISH,
    CHROME_SIMULCAST,
    CHROME_SUBSCRIBE,
    FIREFOX_PUBLISH,
    FIREFOX_SIMULCAST,
    FIREFOX_SUBSCRIBE,
    AIORTC_PUBLISH,
    CHROME_DATACHANNEL,
    AIORTC_DATACHANNEL,
];

const OUR_FP: &str = "sha-256 0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9:0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9";
const MID: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
const ABS: &str = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time";
const TWCC: &str = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";
const RID: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
const RRID: &str = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id";

fn candidates() -> [SocketAddr; 2] {
    [
        "192.0.2.10:10001".parse().expect("literal"),
        "[2001:db8::10]:10001".parse().expect("literal"),
    ]
}

fn run(
    offer: &str,
    dir: Direction,
    publisher: Option<&Negotiated>,
) -> Result<Negotiated, SdpError> {
    let c = candidates();
    let params = AnswerParams {
        ice_ufrag: "swyU",
        ice_pwd: "0123456789abcdefABCDEF",
        fingerprint: OUR_FP,
        candidates: &c,
        ice_tcp: true,
        publisher,
    };
    answer(offer, dir, &params)
}

fn ok(offer: &str, dir: Direction) -> Negotiated {
    let n = run(offer, dir, None).expect("fixture is answerable");
    check_answer(&n, dir);
    n
}

fn parse(text: &str) -> SessionDescription {
    SessionDescription::try_from(text.to_owned()).expect("answer re-parses")
}

fn values<'a>(m: &'a MediaDescription, key: &str) -> Vec<&'a str> {
    m.attributes
        .iter()
        .filter(|a| a.key == key)
        .map(|a| a.value.as_deref().unwrap_or(""))
        .collect()
}

/// Everything every answer must have, checked on the re-parsed answer.
fn check_answer(n: &Negotiated, dir: Direction) {
    assert!(n.answer.ends_with("\r\n"));
    let sd = parse(&n.answer);
    assert!(sd.has_attribute("ice-lite"));
    let data_mid = n.data_channel.as_ref().map(|d| d.mid.as_str());
    // Accepted m-lines in the answer's (= the offer's) order.
    let mids: Vec<&str> = sd
        .media_descriptions
        .iter()
        .filter(|m| m.media_name.port.value != 0)
        .filter_map(|m| m.attribute("mid").flatten())
        .collect();
    assert_eq!(
        sd.attribute("group").map(String::as_str),
        Some(format!("BUNDLE {}", mids.join(" ")).as_str())
    );
    let mut accepted = 0;
    for m in &sd.media_descriptions {
        let mid = m
            .attribute("mid")
            .flatten()
            .expect("every m-line has a mid");
        if m.media_name.port.value == 0 {
            assert!(!m.has_attribute("candidate"));
            assert_ne!(Some(mid), data_mid, "data channel rejected");
            continue;
        }
        if Some(mid) == data_mid {
            check_data_channel(m);
            continue;
        }
        accepted += 1;
        let t = n
            .tracks
            .iter()
            .find(|t| t.mid == mid)
            .expect("track per m-line");
        assert_eq!(m.media_name.port.value, 10001);
        assert_eq!(m.media_name.protos.join("/"), "UDP/TLS/RTP/SAVPF");
        assert_eq!(m.attribute("setup"), Some(Some("passive")));
        assert_eq!(m.attribute("fingerprint"), Some(Some(OUR_FP)));
        assert_eq!(m.attribute("ice-ufrag"), Some(Some("swyU")));
        assert_eq!(m.attribute("ice-pwd"), Some(Some("0123456789abcdefABCDEF")));
        assert!(m.has_attribute("rtcp-mux"));
        assert!(m.has_attribute("end-of-candidates"));
        let want_dir = if dir == Direction::Publish {
            "recvonly"
        } else {
            "sendonly"
        };
        assert!(m.has_attribute(want_dir));
        assert_eq!(
            values(m, "candidate"),
            [
                "1 1 udp 2130706431 192.0.2.10 10001 typ host",
                "2 1 udp 2130706175 2001:db8::10 10001 typ host",
                "3 1 tcp 2124414975 192.0.2.10 10001 typ host tcptype passive",
                "4 1 tcp 2124414719 2001:db8::10 10001 typ host tcptype passive"
            ]
        );
        let mut formats = vec![t.codec.payload_type.to_string()];
        formats.extend(t.rtx.iter().map(|r| r.payload_type.to_string()));
        assert_eq!(m.media_name.formats, formats);
        let extmaps: Vec<String> = t
            .extensions
            .iter()
            .map(|(i, u)| format!("{i} {u}"))
            .collect();
        assert_eq!(values(m, "extmap"), extmaps);
        if dir == Direction::Subscribe {
            assert!(!t.ssrcs.is_empty() && t.ssrcs.iter().all(|&s| s != 0));
            assert_eq!(t.ssrcs.len(), if t.rtx.is_some() { 2 } else { 1 });
            assert!(m.has_attribute("msid"));
            for s in &t.ssrcs {
                assert!(values(m, "ssrc").contains(&format!("{s} cname:switchyard").as_str()));
            }
        }
    }
    assert_eq!(accepted, n.tracks.len());
}

/// An accepted `m=application`: same transport as the tracks, our SCTP port and size limit.
fn check_data_channel(m: &MediaDescription) {
    assert_eq!(m.media_name.media, "application");
    assert_eq!(m.media_name.port.value, 10001);
    assert_eq!(m.attribute("setup"), Some(Some("passive")));
    assert_eq!(m.attribute("fingerprint"), Some(Some(OUR_FP)));
    assert_eq!(m.attribute("ice-ufrag"), Some(Some("swyU")));
    assert_eq!(m.attribute("max-message-size"), Some(Some("65536")));
    assert!(m.has_attribute("end-of-candidates"));
    assert_eq!(values(m, "candidate").len(), 4, "two UDP and two ICE-TCP");
    assert!(!m.has_attribute("rtcp-mux") && !m.has_attribute("rtpmap"));
}

fn track(n: &Negotiated, kind: Kind) -> &Track {
    n.tracks
        .iter()
        .find(|t| t.kind == kind)
        .expect("track of kind")
}

fn exts(pairs: &[(u8, &str)]) -> Vec<(u8, String)> {
    pairs.iter().map(|(i, u)| (*i, (*u).to_owned())).collect()
}

#[test]
fn chrome_publish() {
    let n = ok(CHROME_PUBLISH, Direction::Publish);
    assert_eq!(n.ice_ufrag_remote, "Ew1A");
    assert_eq!(n.ice_pwd_remote, "dV2nH7bHbnKNe8TQ1l8Kq5Ao");
    assert!(n.remote_fingerprint.starts_with("sha-256 A5:4D:CA:"));
    assert_eq!(n.tracks.len(), 2);
    let a = track(&n, Kind::Audio);
    assert_eq!((a.mid.as_str(), a.codec.name.as_str()), ("0", "opus"));
    assert_eq!((a.codec.payload_type, a.codec.clock_rate), (111, 48000));
    assert_eq!(a.codec.channels, Some(2));
    assert_eq!(a.codec.fmtp.as_deref(), Some("minptime=10;useinbandfec=1"));
    assert_eq!(a.codec.rtcp_fb, ["transport-cc"]);
    assert_eq!(a.rtx, None);
    assert_eq!(a.ssrcs.len(), 1);
    assert_eq!(a.extensions, exts(&[(2, ABS), (3, TWCC), (4, MID)]));
    let v = track(&n, Kind::Video);
    assert_eq!((v.mid.as_str(), v.codec.name.as_str()), ("1", "VP8"));
    assert_eq!(v.codec.payload_type, 96);
    assert_eq!(
        v.codec.rtcp_fb,
        ["goog-remb", "transport-cc", "ccm fir", "nack", "nack pli"]
    );
    let rtx = v.rtx.as_ref().expect("rtx for VP8");
    assert_eq!(
        (rtx.payload_type, rtx.fmtp.as_deref()),
        (97, Some("apt=96"))
    );
    assert_eq!(v.ssrcs.len(), 2, "FID group");
    assert!(v.rids.is_empty());
    assert_eq!(
        v.extensions,
        exts(&[(2, ABS), (3, TWCC), (4, MID), (10, RID), (11, RRID)])
    );
    // Unsupported extensions (toffset, video-orientation, …) and allow-mixed are not echoed.
    assert!(!n.answer.contains("toffset") && !n.answer.contains("extmap-allow-mixed"));
    assert!(n
        .answer
        .contains("a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n"));
    assert!(n.answer.contains("a=rtcp-rsize\r\n"));
    assert!(
        !n.answer.contains("a=ssrc"),
        "WHIP answers announce no SSRCs"
    );
}

#[test]
fn chrome_publish_simulcast() {
    let n = ok(CHROME_SIMULCAST, Direction::Publish);
    let v = track(&n, Kind::Video);
    assert_eq!(v.rids, ["h", "m", "l"]);
    assert!(v.ssrcs.is_empty(), "Chrome announces no SSRCs with rids");
    let sd = parse(&n.answer);
    let m = &sd.media_descriptions[1];
    assert_eq!(values(m, "rid"), ["h recv", "m recv", "l recv"]);
    assert_eq!(m.attribute("simulcast"), Some(Some("recv h;m;l")));
}

#[test]
fn firefox_publish() {
    let n = ok(FIREFOX_PUBLISH, Direction::Publish);
    assert_eq!(n.ice_ufrag_remote, "8f1c3d2a");
    let a = track(&n, Kind::Audio);
    assert_eq!((a.codec.name.as_str(), a.codec.payload_type), ("opus", 109));
    assert_eq!(a.extensions, exts(&[(3, MID)]));
    let v = track(&n, Kind::Video);
    assert_eq!((v.codec.name.as_str(), v.codec.payload_type), ("VP8", 120));
    assert_eq!(v.codec.fmtp.as_deref(), Some("max-fs=12288;max-fr=60"));
    assert_eq!(v.rtx.as_ref().map(|r| r.payload_type), Some(124));
    assert_eq!(v.extensions, exts(&[(3, MID), (4, ABS), (7, TWCC)]));
    assert_eq!(v.ssrcs.len(), 2);
}

#[test]
fn firefox_publish_simulcast() {
    let n = ok(FIREFOX_SIMULCAST, Direction::Publish);
    let v = track(&n, Kind::Video);
    assert_eq!(v.rids, ["h", "m", "l"]);
    assert_eq!(v.ssrcs.len(), 6, "three layers, each with its RTX");
    assert_eq!(
        v.extensions,
        exts(&[(3, MID), (4, ABS), (7, TWCC), (8, RID), (9, RRID)])
    );
}

#[test]
fn aiortc_publish() {
    let n = ok(AIORTC_PUBLISH, Direction::Publish);
    assert_eq!(n.ice_ufrag_remote, "tGsI");
    let a = track(&n, Kind::Audio);
    assert_eq!((a.codec.name.as_str(), a.codec.payload_type), ("opus", 96));
    let v = track(&n, Kind::Video);
    assert_eq!((v.codec.name.as_str(), v.codec.payload_type), ("VP8", 97));
    assert_eq!(v.codec.rtcp_fb, ["nack", "nack pli", "goog-remb"]);
    assert_eq!(v.rtx.as_ref().map(|r| r.payload_type), Some(98));
    assert_eq!(v.extensions, exts(&[(1, MID), (3, ABS)]));
}

/// Issue 11: a `bundle-only` m-line (RFC 8843 §6) is a live track on the BUNDLE transport,
/// not a rejected one; rejecting it left GStreamer's WHIP client without ICE.
#[test]
fn gstreamer_bundle_only_audio_is_a_live_track() {
    let n = ok(GSTREAMER_BUNDLE_ONLY, Direction::Publish);
    let v = track(&n, Kind::Video);
    assert_eq!((v.codec.name.as_str(), v.codec.payload_type), ("VP8", 96));
    assert_eq!(v.ssrcs, [3484078950]);
    let a = track(&n, Kind::Audio);
    assert_eq!(a.codec.payload_type, 97);
    assert!(a.codec.name.eq_ignore_ascii_case("opus"));
    assert_eq!(
        a.ssrcs,
        [1392337474],
        "matched by a=ssrc, no MID extension needed"
    );
    assert!(v.extensions.is_empty() && a.extensions.is_empty());
    let sd = parse(&n.answer);
    assert_eq!(sd.media_descriptions.len(), 2);
    for m in &sd.media_descriptions {
        assert_ne!(
            m.media_name.port.value, 0,
            "{} accepted",
            m.media_name.media
        );
        assert!(m.attributes.iter().any(|a| a.key == "recvonly"), "{m:?}");
        assert!(!m.attributes.iter().any(|a| a.key == "bundle-only"));
    }
}

/// The H264 m-line of an answer: its `a=fmtp` values.
fn fmtp_lines(n: &Negotiated) -> Vec<String> {
    let sd = parse(&n.answer);
    sd.media_descriptions
        .iter()
        .filter(|m| m.media_name.media == "video")
        .flat_map(|m| values(m, "fmtp"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn gstreamer_h264_is_accepted_with_its_profile_and_without_its_parameter_sets() {
    let n = ok(GSTREAMER_H264, Direction::Publish);
    let v = track(&n, Kind::Video);
    assert_eq!((v.codec.name.as_str(), v.codec.payload_type), ("H264", 96));
    assert_eq!(
        fmtp_lines(&n),
        ["96 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42c01f"]
    );
    assert!(!n.answer.contains("sprop-parameter-sets"));
    assert_eq!(n.tracks.len(), 2, "audio is bundle-only and live");
}

/// Publisher's H264 fmtp → the payload type `subscriber`'s WHEP offer gets it on (None: the
/// video m-line rejected, as it offers no profile that decodes it).
fn subscribes_to(subscriber: &str, publisher_fmtp: &str) -> Option<u8> {
    let publisher = ok(
        &GSTREAMER_H264.replace(
            "packetization-mode=1;sprop-parameter-sets=Z0LAH9oFB+wFqDAwNSgAAAMACAAAAwD0eMGV,aM48gA==;profile-level-id=42c01f;level-asymmetry-allowed=1",
            publisher_fmtp,
        ),
        Direction::Publish,
    );
    let n = run(subscriber, Direction::Subscribe, Some(&publisher)).expect("audio at least");
    check_answer(&n, Direction::Subscribe);
    let v = n.tracks.iter().find(|t| t.kind == Kind::Video)?;
    let r = v.remap.as_ref().expect("remap");
    assert_eq!(r.payload_type, (96, v.codec.payload_type));
    Some(v.codec.payload_type)
}

#[test]
fn subscriber_gets_the_publishers_h264_profile_as_rfc_6184_names_it() {
    // Chrome offers 102 42001f, 106 42e01f, 127 4d001f, 112 64001f (mode 1 each).
    let cases = [
        // x264's constrained baseline (constraint_set0+1) is Chrome's 42e01f (set0+1+2).
        ("packetization-mode=1;profile-level-id=42c01f", Some(106)),
        ("packetization-mode=1;profile-level-id=42e01f", Some(106)),
        // Higher level, same profile: still decodable; the level is the encoder's choice.
        ("packetization-mode=1;profile-level-id=42e028", Some(106)),
        ("packetization-mode=1;profile-level-id=42001f", Some(102)),
        ("packetization-mode=1;profile-level-id=4d001f", Some(127)),
        ("packetization-mode=1;profile-level-id=64001f", Some(112)),
        // No Constrained High entry: a High decoder decodes it.
        ("packetization-mode=1;profile-level-id=640c1f", Some(112)),
        // Nothing decodes High 4:4:4 here, nor mode 0 of a profile only offered in mode 1.
        ("packetization-mode=1;profile-level-id=f4001f", None),
        ("packetization-mode=0;profile-level-id=640c1f", None),
    ];
    for (fmtp, want) in cases {
        assert_eq!(subscribes_to(CHROME_SUBSCRIBE, fmtp), want, "{fmtp}");
    }
    // Chromium 148 without hardware decoding: 103 42001f, 109 42e01f, 117 4d001f, 41 f4001f.
    let cases = [
        ("packetization-mode=1;profile-level-id=42c01f", Some(109)),
        ("packetization-mode=1;profile-level-id=4d001f", Some(117)),
        // High goes to the High 4:4:4 entry, whose decoders decode High (x264's, OBS's).
        ("packetization-mode=1;profile-level-id=64001f", Some(41)),
        ("packetization-mode=1;profile-level-id=640c1f", Some(41)),
    ];
    for (fmtp, want) in cases {
        assert_eq!(subscribes_to(CHROMIUM148_SUBSCRIBE, fmtp), want, "{fmtp}");
    }
}

#[test]
fn subscriber_h264_entry_with_a_level_as_high_as_the_publishers_is_preferred() {
    let publisher = ok(
        &GSTREAMER_H264.replace("profile-level-id=42c01f", "profile-level-id=42c028"),
        Direction::Publish,
    );
    // A second constrained baseline entry at level 4.0 after Chrome's 106 (level 3.1).
    let offer = CHROME_SUBSCRIBE
        .replace(
            "a=rtpmap:112 H264/90000",
            "a=rtpmap:122 H264/90000\r\na=fmtp:122 packetization-mode=1;profile-level-id=42e028\r\na=rtpmap:112 H264/90000",
        )
        .replace(" 112 113 114", " 112 113 122 114");
    let n = run(&offer, Direction::Subscribe, Some(&publisher)).expect("answerable");
    assert_eq!(track(&n, Kind::Video).codec.payload_type, 122);
    assert_eq!(
        fmtp_lines(&n)[0],
        "122 packetization-mode=1;profile-level-id=42e028",
        "the subscriber's entry as offered: no level-asymmetry-allowed it did not offer"
    );
}

#[test]
fn h264_answer_never_offers_a_profile_the_offerer_did_not() {
    for (offer, want) in [(CHROME_PUBLISH, "42e01f"), (FIREFOX_PUBLISH, "42e01f")] {
        let offer = offer
            .replace("VP8/90000", "XVP8/90000")
            .replace("VP9/90000", "XVP9/90000")
            .replace("AV1/90000", "XAV1/90000");
        let n = ok(&offer, Direction::Publish);
        let v = track(&n, Kind::Video);
        assert_eq!(v.codec.name, "H264");
        let f = v.codec.fmtp.as_deref().unwrap_or_default();
        assert!(
            f.contains(&format!("profile-level-id={want}")) && f.contains("packetization-mode=1"),
            "{f}"
        );
    }
}

/// Port and mid of each answer m-line, in order.
fn ports(n: &Negotiated) -> Vec<(String, isize)> {
    parse(&n.answer)
        .media_descriptions
        .iter()
        .map(|m| {
            let mid = m.attribute("mid").flatten().unwrap_or_default().to_owned();
            (mid, m.media_name.port.value)
        })
        .collect()
}

#[test]
fn obs_publish_with_session_level_transport_attributes() {
    let n = ok(OBS_PUBLISH, Direction::Publish);
    assert_eq!(n.ice_ufrag_remote, "nxcM");
    assert!(n.remote_fingerprint.starts_with("sha-256 4E:7F"));
    let a = track(&n, Kind::Audio);
    assert_eq!(
        (a.codec.payload_type, a.ssrcs.as_slice()),
        (111, &[3388068600][..])
    );
    let v = track(&n, Kind::Video);
    assert_eq!(
        (v.codec.name.as_str(), v.ssrcs.as_slice()),
        ("H264", &[3388068601][..])
    );
    assert_eq!(
        v.codec.fmtp.as_deref(),
        Some("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f")
    );
    assert!(v.extensions.is_empty() && v.rtx.is_none());
    assert_eq!(ports(&n), [("0".into(), 10001), ("1".into(), 10001)]);
}

/// FFmpeg's WHIP muxer offers `a=setup:passive`: it wants to be the DTLS server, and so is
/// the node (ICE-lite, never the DTLS client). The offer is refused cleanly (HTTP 400) rather
/// than answered with a role that cannot work. Everything else in it would be accepted.
#[test]
fn ffmpeg_publish_with_setup_passive_is_refused_cleanly() {
    assert_eq!(
        run(FFMPEG_PUBLISH, Direction::Publish, None),
        Err(SdpError::SetupNotActpass)
    );
    let n = ok(
        &FFMPEG_PUBLISH.replace("a=setup:passive", "a=setup:actpass"),
        Direction::Publish,
    );
    assert_eq!(track(&n, Kind::Video).codec.payload_type, 106);
    assert_eq!(track(&n, Kind::Audio).ssrcs, [2861219734]);
}

#[test]
fn unknown_and_unsupported_m_lines_get_port_0_and_the_rest_is_answered() {
    let n = ok(MIXED_UNKNOWN, Direction::Publish);
    assert_eq!(
        ports(&n),
        [
            ("0".into(), 10001),
            ("1".into(), 0), // H265 only
            ("2".into(), 0), // m=text
            ("3".into(), 0), // PCMU/PCMA only
            ("4".into(), 10001),
        ]
    );
    assert_eq!(n.tracks.len(), 1);
    let v = track(&n, Kind::Video);
    // The FID group: media SSRC first, then its RTX SSRC, RTX payload type bound by apt.
    assert_eq!(v.ssrcs, [1111111111, 2222222222]);
    assert_eq!(v.rtx.as_ref().map(|r| r.payload_type), Some(97));
    assert_eq!(n.data_channel.as_ref().map(|d| d.mid.as_str()), Some("4"));
    // a=setup:active is answered passive (check_answer), as actpass is.
    assert!(!n.answer.contains("a=setup:active"));
}

#[test]
fn subscribe_without_publisher_picks_first_supported() {
    for offer in [CHROME_SUBSCRIBE, FIREFOX_SUBSCRIBE] {
        let n = ok(offer, Direction::Subscribe);
        assert_eq!(n.tracks.len(), 2);
        assert_eq!(track(&n, Kind::Video).codec.name, "VP8");
        assert!(n
            .tracks
            .iter()
            .all(|t| t.remap.is_none() && t.rids.is_empty()));
        assert!(n.answer.contains("a=ssrc-group:FID "));
    }
}

#[test]
fn subscribe_maps_publisher_codec_to_subscriber_payload_types() {
    let publisher = ok(FIREFOX_PUBLISH, Direction::Publish);
    let n = run(CHROME_SUBSCRIBE, Direction::Subscribe, Some(&publisher)).expect("answerable");
    check_answer(&n, Direction::Subscribe);
    let a = track(&n, Kind::Audio);
    assert_eq!(a.codec.payload_type, 111);
    let ra = a.remap.as_ref().expect("remap");
    assert_eq!(ra.publisher_mid, "0");
    assert_eq!(ra.payload_type, (109, 111));
    assert_eq!(ra.extensions, [(3, 4)], "mid: Firefox 3 → Chrome 4");
    let v = track(&n, Kind::Video);
    assert_eq!((v.codec.name.as_str(), v.codec.payload_type), ("VP8", 96));
    let rv = v.remap.as_ref().expect("remap");
    assert_eq!(rv.payload_type, (120, 96));
    assert_eq!(rv.rtx_payload_type, Some((124, 97)));
    assert_eq!(rv.extensions, [(3, 4), (4, 2), (7, 3)]);
    // We forward one layer: no rid extensions towards a subscriber.
    assert_eq!(v.extensions, exts(&[(2, ABS), (3, TWCC), (4, MID)]));
}

/// A publisher sending H264 constrained baseline gets the subscriber's PT for that profile,
/// not the first H264 it offers (42001f, baseline) nor the packetization-mode=0 one.
#[test]
fn subscribe_matches_h264_profile_and_mode() {
    let publisher = Negotiated {
        ice_ufrag_remote: String::new(),
        ice_pwd_remote: String::new(),
        remote_fingerprint: String::new(),
        answer: String::new(),
        data_channel: None,
        tracks: vec![Track {
            mid: "v".into(),
            kind: Kind::Video,
            codec: Codec {
                name: "H264".into(),
                payload_type: 126,
                clock_rate: 90000,
                channels: None,
                fmtp: Some(
                    "profile-level-id=42e01f;level-asymmetry-allowed=1;packetization-mode=1".into(),
                ),
                rtcp_fb: vec![],
            },
            ssrcs: vec![1],
            rtx: None,
            rtx_ssrc: None,
            extensions: vec![],
            rids: vec![],
            remap: None,
        }],
    };
    let n = run(CHROME_SUBSCRIBE, Direction::Subscribe, Some(&publisher)).expect("answerable");
    check_answer(&n, Direction::Subscribe);
    assert_eq!(n.tracks.len(), 1, "no audio source: audio m-line rejected");
    let v = track(&n, Kind::Video);
    assert_eq!(v.codec.payload_type, 106);
    assert_eq!(v.rtx.as_ref().map(|r| r.payload_type), Some(107));
    let r = v.remap.as_ref().expect("remap");
    assert_eq!((r.payload_type, r.rtx_payload_type), ((126, 106), None));
    let sd = parse(&n.answer);
    assert_eq!(sd.media_descriptions[0].media_name.port.value, 0);

    // A profile the subscriber does not offer: nothing to send it → 406.
    let mut high = publisher.clone();
    high.tracks[0].codec.fmtp = Some("profile-level-id=f4001f;packetization-mode=1".into());
    assert_eq!(
        run(CHROME_SUBSCRIBE, Direction::Subscribe, Some(&high)),
        Err(SdpError::NoUsableCodec)
    );
}

#[test]
fn h264_prefers_constrained_baseline() {
    // Chrome's video m-line with the H264 entries first: 102 (42001f) comes first in order,
    // but 106 (42e01f) is preferred; 104 (packetization-mode=0) never.
    let offer = CHROME_PUBLISH.replace(
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
        "m=video 9 UDP/TLS/RTP/SAVPF 104 105 102 103 106 107 96 97",
    );
    let n = ok(&offer, Direction::Publish);
    let v = track(&n, Kind::Video);
    assert_eq!((v.codec.name.as_str(), v.codec.payload_type), ("H264", 106));
    assert_eq!(v.rtx.as_ref().map(|r| r.payload_type), Some(107));

    let no_cb = offer.replace("profile-level-id=42e01f", "profile-level-id=640c1f");
    let v2 = ok(&no_cb, Direction::Publish);
    assert_eq!(
        track(&v2, Kind::Video).codec.payload_type,
        102,
        "then the first in order"
    );
}

#[test]
fn unusable_m_lines_are_rejected_with_port_0_and_the_data_channel_accepted() {
    // Audio with only G722/PCMU: no usable codec on that m-line.
    let offer = CHROME_DATACHANNEL.replace(
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
        "m=audio 9 UDP/TLS/RTP/SAVPF 9 0 8",
    );
    let n = ok(&offer, Direction::Publish);
    assert_eq!(n.tracks.len(), 1);
    assert_eq!(n.tracks[0].mid, "1");
    let sd = parse(&n.answer);
    let ports: Vec<isize> = sd
        .media_descriptions
        .iter()
        .map(|m| m.media_name.port.value)
        .collect();
    assert_eq!(ports, [0, 10001, 10001]);
    assert_eq!(
        sd.media_descriptions[2].media_name.to_string(),
        "application 10001 UDP/DTLS/SCTP webrtc-datachannel"
    );
    assert!(n.answer.contains("a=group:BUNDLE 1 2\r\n"));
}

#[test]
fn chrome_data_channel_is_accepted_on_the_bundle() {
    for dir in [Direction::Publish, Direction::Subscribe] {
        let offer = match dir {
            Direction::Publish => CHROME_DATACHANNEL.to_owned(),
            // A WHEP offer with a data channel: the same m=application after recvonly media.
            Direction::Subscribe => CHROME_DATACHANNEL.replace("a=sendonly", "a=recvonly"),
        };
        let n = ok(&offer, dir);
        assert_eq!(n.tracks.len(), 2);
        assert_eq!(
            n.data_channel,
            Some(DataChannel {
                mid: "2".into(),
                max_message_size: 262144,
                legacy: false,
            })
        );
        assert!(n.answer.contains("a=group:BUNDLE 0 1 2\r\n"));
        assert!(n.answer.contains(
            "m=application 10001 UDP/DTLS/SCTP webrtc-datachannel\r\n\
             c=IN IP4 192.0.2.10\r\na=mid:2\r\n"
        ));
        assert!(n
            .answer
            .contains("a=sctp-port:5000\r\na=max-message-size:65536\r\n"));
    }
}

#[test]
fn aiortc_data_channel_is_accepted() {
    let n = ok(AIORTC_DATACHANNEL, Direction::Publish);
    assert_eq!(n.tracks.len(), 1);
    assert_eq!(
        n.data_channel,
        Some(DataChannel {
            mid: "1".into(),
            max_message_size: 262144,
            legacy: false,
        })
    );
    assert!(n.answer.contains("a=group:BUNDLE 0 1\r\n"));
}

#[test]
fn legacy_data_channel_syntax_is_answered_in_its_syntax() {
    // draft-ietf-mmusic-sctp-sdp-05, as older aiortc and Firefox wrote it.
    let offer = AIORTC_DATACHANNEL
        .replace(
            "m=application 50400 UDP/DTLS/SCTP webrtc-datachannel",
            "m=application 50400 DTLS/SCTP 5000",
        )
        .replace(
            "a=sctp-port:5000",
            "a=sctpmap:5000 webrtc-datachannel 65535",
        );
    let n = ok(&offer, Direction::Publish);
    let d = n.data_channel.as_ref().expect("data channel accepted");
    assert!(d.legacy);
    let sd = parse(&n.answer);
    let m = sd
        .media_descriptions
        .iter()
        .find(|m| m.media_name.media == "application")
        .expect("application m-line");
    assert_eq!(m.media_name.to_string(), "application 10001 DTLS/SCTP 5000");
    assert_eq!(
        m.attribute("sctpmap"),
        Some(Some("5000 webrtc-datachannel 65535"))
    );
    assert!(!m.has_attribute("sctp-port"));
}

#[test]
fn data_channel_only_offer_is_answerable() {
    // Only the application m-line: no media, but a session worth having.
    let offer = CHROME_DATACHANNEL;
    let start = offer.find("m=audio").expect("audio");
    let app = offer.find("m=application").expect("application");
    let offer = offer[..start].replace("a=group:BUNDLE 0 1 2", "a=group:BUNDLE 2") + &offer[app..];
    let n = ok(&offer, Direction::Publish);
    assert!(n.tracks.is_empty());
    assert_eq!(n.data_channel.as_ref().map(|d| d.mid.as_str()), Some("2"));
    assert!(n.answer.contains("a=group:BUNDLE 2\r\n"));
}

#[test]
fn unusable_data_channel_m_lines_are_rejected() {
    let cases = [
        // Not in the BUNDLE group.
        CHROME_DATACHANNEL.replace("a=group:BUNDLE 0 1 2", "a=group:BUNDLE 0 1"),
        // Rejected by the offerer.
        CHROME_DATACHANNEL.replace(
            "m=application 9 UDP/DTLS/SCTP",
            "m=application 0 UDP/DTLS/SCTP",
        ),
        // No SCTP port.
        CHROME_DATACHANNEL.replace("a=sctp-port:5000\r\n", ""),
        // Not a data channel.
        CHROME_DATACHANNEL.replace("webrtc-datachannel", "something-else"),
        // SCTP over plain UDP is not WebRTC.
        CHROME_DATACHANNEL.replace("UDP/DTLS/SCTP", "UDP/SCTP"),
    ];
    for offer in cases {
        let n = ok(&offer, Direction::Publish);
        assert_eq!(n.data_channel, None, "{offer}");
        let sd = parse(&n.answer);
        assert_eq!(sd.media_descriptions[2].media_name.port.value, 0);
    }
}

#[test]
fn wrong_direction_is_not_usable() {
    assert_eq!(
        run(CHROME_SUBSCRIBE, Direction::Publish, None),
        Err(SdpError::NoUsableCodec)
    );
    assert_eq!(
        run(CHROME_PUBLISH, Direction::Subscribe, None),
        Err(SdpError::NoUsableCodec)
    );
    // sendrecv works both ways (aiortc).
    ok(AIORTC_PUBLISH, Direction::Subscribe);
}

#[test]
fn errors() {
    let drop_lines = |offer: &str, prefix: &str| -> String {
        offer
            .split_inclusive("\r\n")
            .filter(|l| !l.starts_with(prefix))
            .collect()
    };
    let cases: Vec<(String, SdpError)> = vec![
        ("x".repeat(MAX_SDP + 1), SdpError::TooLarge),
        (
            drop_lines(CHROME_PUBLISH, "a=group:BUNDLE"),
            SdpError::NoBundle,
        ),
        (
            drop_lines(FIREFOX_PUBLISH, "a=rtcp-mux"),
            SdpError::NoRtcpMux("0".into()),
        ),
        (
            drop_lines(CHROME_PUBLISH, "a=ice-ufrag"),
            SdpError::NoIceCredentials,
        ),
        (
            drop_lines(AIORTC_PUBLISH, "a=ice-pwd"),
            SdpError::NoIceCredentials,
        ),
        (
            drop_lines(FIREFOX_PUBLISH, "a=fingerprint"),
            SdpError::NoFingerprint,
        ),
        (
            CHROME_PUBLISH.replace("a=setup:actpass", "a=setup:passive"),
            SdpError::SetupNotActpass,
        ),
        (
            drop_lines(CHROME_PUBLISH, "a=setup"),
            SdpError::SetupNotActpass,
        ),
        (
            CHROME_PUBLISH
                .replace("opus/48000", "ISAC/16000")
                .replace(" VP8/", " VP7/")
                .replace(" VP9/", " VP7/")
                .replace(" AV1/", " VP7/")
                .replace(" H264/", " VP7/"),
            SdpError::NoUsableCodec,
        ),
    ];
    for (offer, want) in cases {
        assert_eq!(run(&offer, Direction::Publish, None), Err(want));
    }
    // Exactly MAX_SDP is parsed (and fails as SDP, not as size).
    assert!(matches!(
        run(&"x".repeat(MAX_SDP), Direction::Publish, None),
        Err(SdpError::Malformed(_))
    ));
    for bad in [
        "",
        "garbage",
        "v=0\r\n",
        "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n",
    ] {
        assert!(run(bad, Direction::Publish, None).is_err(), "{bad:?}");
    }
    let dup_mid = CHROME_PUBLISH.replace("a=mid:1", "a=mid:0");
    assert!(matches!(
        run(&dup_mid, Direction::Publish, None),
        Err(SdpError::Malformed(_))
    ));
    let bad_fp = CHROME_PUBLISH.replace("a=fingerprint:sha-256 A5:", "a=fingerprint:sha-256 Z5:");
    assert!(matches!(
        run(&bad_fp, Direction::Publish, None),
        Err(SdpError::Malformed(_))
    ));
}

#[test]
fn lf_line_endings_are_accepted() {
    ok(&CHROME_PUBLISH.replace("\r\n", "\n"), Direction::Publish);
}

#[test]
fn negotiated_round_trips_through_serde() {
    let publisher = ok(FIREFOX_PUBLISH, Direction::Publish);
    let n = run(CHROME_SUBSCRIBE, Direction::Subscribe, Some(&publisher)).expect("answerable");
    let json = serde_json::to_string(&n).expect("serializes");
    let back: Negotiated = serde_json::from_str(&json).expect("deserializes");
    assert_eq!(back, n);
}

#[test]
fn ssrcs_and_session_ids_are_fresh_per_answer() {
    let a = ok(CHROME_SUBSCRIBE, Direction::Subscribe);
    let b = ok(CHROME_SUBSCRIBE, Direction::Subscribe);
    assert_ne!(a.tracks[1].ssrcs, b.tracks[1].ssrcs);
    assert_ne!(
        parse(&a.answer).origin.session_id,
        parse(&b.answer).origin.session_id
    );
}

/// Truncated and line-dropped fixtures never panic, in either direction; whatever is answered
/// re-parses.
#[test]
fn damaged_offers_never_panic() {
    let publisher = ok(CHROME_PUBLISH, Direction::Publish);
    // Publish fixtures are tried as publish, subscribe ones as subscribe (with a publisher):
    // the wrong way round stops early at NoUsableCodec and exercises nothing more.
    let attempt = |offer: &str, publish: bool| {
        let n = if publish {
            run(offer, Direction::Publish, None)
        } else {
            run(offer, Direction::Subscribe, Some(&publisher))
        };
        if let Ok(n) = n {
            parse(&n.answer);
        }
    };
    for fixture in ALL {
        let publish = fixture.contains("a=sendonly") || fixture.contains("a=sendrecv");
        let attempt = |offer: &str| attempt(offer, publish);
        for end in (0..fixture.len()).step_by(7) {
            attempt(&fixture[..end]);
        }
        let lines: Vec<&str> = fixture.split_inclusive("\r\n").collect();
        for skip in 0..lines.len() {
            let offer: String = lines
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, l)| *l)
                .collect();
            attempt(&offer);
            // Every line cut short by a few bytes (values that end early).
            let cut: String = lines
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    if i == skip {
                        &l[..l.len().saturating_sub(5)]
                    } else {
                        *l
                    }
                })
                .collect();
            attempt(&cut);
        }
    }
}

/// The shared SDP seed corpus (`tests/corpora/sdp`, from other WebRTC stacks' fuzzers): every
/// file is answered or refused with an error, never a panic, in both directions.
#[test]
fn corpus_never_panics() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpora/sdp");
    let entries = std::fs::read_dir(&dir).expect("tests/corpora/sdp is in the repository");
    let publisher = ok(CHROME_PUBLISH, Direction::Publish);
    let mut files = 0;
    for entry in entries {
        let path = entry.expect("readable directory").path();
        let bytes = std::fs::read(&path).expect("readable file");
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        files += 1;
        for (dir, p) in [
            (Direction::Publish, None),
            (Direction::Subscribe, None),
            (Direction::Subscribe, Some(&publisher)),
        ] {
            if let Ok(n) = run(text, dir, p) {
                parse(&n.answer);
            }
        }
    }
    assert!(files > 0, "no corpus files in {}", dir.display());
}

/// ICE-TCP: every UDP candidate is offered again as a passive TCP one, every TCP one below
/// every UDP one, so a peer whose UDP works never picks TCP.
#[test]
fn answers_offer_ice_tcp_passive_candidates_below_udp() {
    let n = ok(
        include_str!("fixtures/chrome_publish.sdp"),
        Direction::Publish,
    );
    let lines: Vec<&str> = n
        .answer
        .lines()
        .filter_map(|l| l.strip_prefix("a=candidate:"))
        .collect();
    let prio = |l: &str| -> u32 {
        l.split(' ')
            .nth(3)
            .and_then(|p| p.parse().ok())
            .expect("priority")
    };
    let udp: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains(" udp "))
        .collect();
    let tcp: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains(" tcp "))
        .collect();
    assert!(!udp.is_empty() && udp.len() == tcp.len(), "{lines:?}");
    for t in &tcp {
        assert!(t.ends_with("typ host tcptype passive"), "{t}");
        assert!(
            udp.iter().all(|u| prio(u) > prio(t)),
            "{t} above a UDP candidate"
        );
    }
}

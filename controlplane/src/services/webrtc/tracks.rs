//! A WHIP/WHEP session's identifiers: its ICE-lite credentials, and for a WHEP subscriber
//! the mapping from its publisher's tracks to what its own answer negotiated (SSRCs, RTX,
//! payload types, header extensions). Pure: no I/O beyond the random credentials.

use switchyard_shared::command::{
    LayerCodec, Simulcast, SimulcastTrack, UplinkRtx, UplinkTrack, VideoCodec, MAX_LAYERS,
    MAX_PT_MAP, MAX_RID, MAX_TRACKS,
};

use crate::core::random::{self, RngError};
use crate::sdp;

/// Random ICE credentials: ufrag ≥ 4 and password ≥ 22 characters of ice-char (RFC 8839).
pub(super) fn credentials() -> Result<(String, String), RngError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut raw = [0u8; 8 + 24];
    random::fill(&mut raw)?;
    let s = |b: &[u8]| -> String {
        b.iter()
            .map(|&x| char::from(ALPHABET[usize::from(x) % ALPHABET.len()]))
            .collect()
    };
    Ok((s(&raw[..8]), s(&raw[8..])))
}

/// The publisher's tracks as the data plane numbers them: the m-lines it sends on, known by
/// their SSRCs or, with simulcast, by their rids (Chrome announces no SSRC with rids).
pub(super) fn published(n: &sdp::Negotiated) -> impl Iterator<Item = &sdp::Track> {
    n.tracks
        .iter()
        .filter(|t| !t.ssrcs.is_empty() || !t.rids.is_empty())
        .take(MAX_TRACKS)
}

/// A WHIP publisher's simulcast map for the data plane, when any of its m-lines has rids.
/// Layer `i` of a track is its `i`-th rid in `a=simulcast` order; which is the better
/// picture the data plane finds out from what it receives.
pub(crate) fn simulcast(n: &sdp::Negotiated) -> Option<Simulcast> {
    if !published(n).any(|t| !t.rids.is_empty()) {
        return None;
    }
    let ext = |uri: &str| {
        n.tracks
            .iter()
            .flat_map(|t| &t.extensions)
            .find(|(_, u)| u == uri)
            .map_or(0, |&(id, _)| id)
    };
    let tracks = published(n)
        .map(|t| SimulcastTrack {
            mid: if t.mid.len() <= MAX_RID {
                t.mid.clone()
            } else {
                String::new()
            },
            rids: t
                .rids
                .iter()
                .filter(|r| r.len() <= MAX_RID)
                .take(MAX_LAYERS)
                .cloned()
                .collect(),
            // Only a track without layers has one SSRC we can name; layers are learned
            // from their rids.
            ssrcs: if t.rids.is_empty() {
                t.ssrcs.first().copied().into_iter().collect()
            } else {
                Vec::new()
            },
            codec: match t.codec.name.to_ascii_uppercase().as_str() {
                "VP8" => LayerCodec::Vp8,
                "H264" => LayerCodec::H264,
                _ => LayerCodec::Other,
            },
        })
        .collect();
    Some(Simulcast {
        rid_ext: ext(sdp::RTP_STREAM_ID_URI),
        repaired_rid_ext: ext(sdp::REPAIRED_RTP_STREAM_ID_URI),
        mid_ext: ext(sdp::MID_URI),
        tracks,
    })
}

/// A WHIP publisher's uplink repair per track, in [`published`] order: NACK where its codec
/// kept `a=rtcp-fb:<pt> nack` in the answer, its RTX payload type and FID SSRC where it
/// offered RTX. Simulcast layers' RTX streams are found by repaired-rid instead.
pub(super) fn uplink(n: &sdp::Negotiated) -> Vec<UplinkTrack> {
    published(n)
        .map(|t| UplinkTrack {
            nack: t.codec.rtcp_fb.iter().any(|f| f == "nack"),
            rtx: t.rtx.as_ref().map(|r| UplinkRtx {
                payload_type: r.payload_type,
                apt: t.codec.payload_type,
                ssrc: t.rtx_ssrc.filter(|_| t.rids.is_empty()),
            }),
            video: video_codec(t),
        })
        .collect()
}

/// A published video track's codec as the data plane reads it: its keyframes (where a
/// late joiner starts: `engine::prime`) and, for VP9 and AV1, its layers in one stream
/// (SVC), chosen per viewer. Simulcast tracks have none (their layers are chosen as
/// layers), nor do codecs the data plane does not read.
fn video_codec(t: &sdp::Track) -> Option<VideoCodec> {
    if !t.rids.is_empty() {
        return None;
    }
    let pt = t.codec.payload_type;
    let is = |n: &str| t.codec.name.eq_ignore_ascii_case(n);
    if is("VP8") {
        Some(VideoCodec::Vp8(pt))
    } else if is("H264") {
        Some(VideoCodec::H264(pt))
    } else if is("VP9") {
        Some(VideoCodec::Vp9(pt))
    } else if is("AV1") {
        Some(VideoCodec::Av1(pt))
    } else {
        None
    }
}

/// [`video_codec`] of each of a publisher's tracks, in [`published`] order: what a relay-in
/// of its stream on another node needs to start its late joiners and choose SVC layers.
pub(crate) fn video(n: &sdp::Negotiated) -> Vec<Option<VideoCodec>> {
    published(n).map(video_codec).collect()
}

/// The SSRC the subscriber sees for each of the publisher's tracks, in the publisher's
/// track order (the order of its WHIP m-lines, which is the order of its session's SSRCs).
/// A publisher track the subscriber did not accept still gets an SSRC (the data plane fills
/// every track); the subscriber's browser ignores it.
pub(super) fn subscriber_ssrcs(
    publisher: Option<&sdp::Negotiated>,
    n: &sdp::Negotiated,
) -> Vec<u32> {
    let mut out = Vec::with_capacity(MAX_TRACKS);
    if let Some(p) = publisher {
        for pt in published(p) {
            let ours = n
                .tracks
                .iter()
                .find(|t| t.remap.as_ref().is_some_and(|r| r.publisher_mid == pt.mid))
                .and_then(|t| t.ssrcs.first().copied());
            if let Some(s) = ours {
                out.push(s);
            } else {
                out.push(spare_ssrc(&out, n));
            }
            if out.len() == MAX_TRACKS {
                break;
            }
        }
    }
    while out.len() < MAX_TRACKS {
        out.push(spare_ssrc(&out, n));
    }
    out
}

/// Per publisher track, in the order of [`subscriber_ssrcs`]: our RTX SSRC and the
/// subscriber's RTX payload type, where its answered m-line negotiated RTX (RFC 4588).
pub(super) fn subscriber_rtx(
    publisher: Option<&sdp::Negotiated>,
    n: &sdp::Negotiated,
) -> Vec<Option<(u32, u8)>> {
    let Some(p) = publisher else {
        return Vec::new();
    };
    published(p)
        .map(|pt| {
            let ours = n
                .tracks
                .iter()
                .find(|t| t.remap.as_ref().is_some_and(|r| r.publisher_mid == pt.mid))?;
            let rtx = ours.rtx.as_ref()?;
            Some((*ours.ssrcs.get(1)?, rtx.payload_type))
        })
        .collect()
}

/// The publisher → subscriber payload types the SDP module worked out for each track
/// (media and RTX), without identities.
pub(super) fn payload_type_map(n: &sdp::Negotiated) -> Vec<(u8, u8)> {
    let mut out = Vec::new();
    for r in n.tracks.iter().filter_map(|t| t.remap.as_ref()) {
        for (a, b) in std::iter::once(r.payload_type).chain(r.rtx_payload_type) {
            if a != b && !out.iter().any(|&(x, _)| x == a) {
                out.push((a, b));
            }
        }
    }
    out.truncate(MAX_PT_MAP);
    out
}

/// The publisher → subscriber header extension ids both negotiated, except the ones whose
/// values mean something only on the publisher's leg: its transport-wide sequence numbers
/// (the node answers them itself) and its mids (the subscriber's m-lines have their own;
/// without the extension the subscriber demultiplexes by the SSRCs in its answer).
pub(super) fn extension_map(n: &sdp::Negotiated) -> Vec<(u8, u8)> {
    const MID: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
    let mut out: Vec<(u8, u8)> = Vec::new();
    for t in &n.tracks {
        let Some(r) = &t.remap else { continue };
        for &(pid, sid) in &r.extensions {
            let uri = t
                .extensions
                .iter()
                .find(|(id, _)| *id == sid)
                .map(|(_, u)| u.as_str());
            let local_only = matches!(uri, Some(u) if u == MID || u == sdp::TRANSPORT_CC_URI);
            if !local_only && !out.iter().any(|&(p, _)| p == pid) {
                out.push((pid, sid));
            }
        }
    }
    out
}

/// An SSRC not used by the subscriber's tracks nor already picked.
fn spare_ssrc(picked: &[u32], n: &sdp::Negotiated) -> u32 {
    let used = |s: u32| picked.contains(&s) || n.tracks.iter().any(|t| t.ssrcs.contains(&s));
    (0x5357_0001u32..)
        .find(|&s| !used(s))
        .unwrap_or(0x5357_0000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdp::{AnswerParams, Direction};

    #[test]
    fn whep_subscriber_gets_rtx_ssrc_and_payload_type_per_publisher_track() {
        let cands: [std::net::SocketAddr; 1] = ["192.0.2.10:10001".parse().expect("literal")];
        let params = |publisher| {
            AnswerParams {
            ice_ufrag: "swyU",
            ice_pwd: "0123456789abcdefABCDEF",
            fingerprint: "sha-256 0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9:0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9",
            candidates: &cands,
            ice_tcp: true,
            publisher,
        }
        };
        let publisher = sdp::answer(
            include_str!("../../sdp/fixtures/firefox_publish.sdp"),
            Direction::Publish,
            &params(None),
        )
        .expect("publish answer");
        let n = sdp::answer(
            include_str!("../../sdp/fixtures/chrome_subscribe.sdp"),
            Direction::Subscribe,
            &params(Some(&publisher)),
        )
        .expect("subscribe answer");
        let ssrcs = subscriber_ssrcs(Some(&publisher), &n);
        let rtx = subscriber_rtx(Some(&publisher), &n);
        let tracks: Vec<_> = publisher
            .tracks
            .iter()
            .filter(|t| !t.ssrcs.is_empty())
            .collect();
        assert_eq!(rtx.len(), tracks.len());
        for (i, pt) in tracks.iter().enumerate() {
            let ours = n
                .tracks
                .iter()
                .find(|t| t.remap.as_ref().is_some_and(|r| r.publisher_mid == pt.mid))
                .expect("forwarded");
            assert_eq!(ssrcs[i], ours.ssrcs[0]);
            match pt.kind {
                sdp::Kind::Audio => assert_eq!(rtx[i], None, "no RTX for opus"),
                sdp::Kind::Video => {
                    assert_eq!(rtx[i], Some((ours.ssrcs[1], 97)), "Chrome's rtx PT")
                }
            }
        }
    }

    #[test]
    fn chrome_publisher_uplink_repair_is_nack_and_rtx_of_its_video() {
        let cands: [std::net::SocketAddr; 1] = ["192.0.2.10:10001".parse().expect("literal")];
        let params = AnswerParams {
            ice_ufrag: "swyU",
            ice_pwd: "0123456789abcdefABCDEF",
            fingerprint: "sha-256 0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9:0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9",
            candidates: &cands,
            ice_tcp: false,
            publisher: None,
        };
        let n = sdp::answer(
            include_str!("../../sdp/fixtures/chrome_publish.sdp"),
            Direction::Publish,
            &params,
        )
        .expect("publish answer");
        let audio = UplinkTrack {
            nack: false,
            rtx: None,
            video: None,
        };
        let video = UplinkTrack {
            nack: true,
            rtx: Some(UplinkRtx {
                payload_type: 97,
                apt: 96,
                ssrc: Some(1236683273),
            }),
            // Named for its keyframes (late joiners), though it has no SVC layers.
            video: Some(VideoCodec::Vp8(96)),
        };
        assert_eq!(uplink(&n), [audio, video], "opus has no nack; VP8 has both");
        let n = sdp::answer(
            include_str!("../../sdp/fixtures/chrome_publish_simulcast.sdp"),
            Direction::Publish,
            &params,
        )
        .expect("simulcast answer");
        let u = uplink(&n);
        let rtx = u.get(1).and_then(|t| t.rtx).expect("video rtx");
        assert!(u[1].nack);
        assert_eq!(rtx.ssrc, None, "layers' RTX is found by repaired-rid");
    }

    #[test]
    fn chrome_simulcast_publisher_maps_by_rid_and_its_video_reaches_whep() {
        let cands: [std::net::SocketAddr; 1] = ["192.0.2.10:10001".parse().expect("literal")];
        let params = |publisher| {
            AnswerParams {
            ice_ufrag: "swyU",
            ice_pwd: "0123456789abcdefABCDEF",
            fingerprint: "sha-256 0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9:0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9",
            candidates: &cands,
            ice_tcp: false,
            publisher,
        }
        };
        let publisher = sdp::answer(
            include_str!("../../sdp/fixtures/chrome_publish_simulcast.sdp"),
            Direction::Publish,
            &params(None),
        )
        .expect("publish answer");
        let sim = simulcast(&publisher).expect("simulcast");
        assert_eq!(
            (sim.rid_ext, sim.repaired_rid_ext, sim.mid_ext),
            (10, 11, 4)
        );
        assert_eq!(sim.tracks.len(), 2);
        assert_eq!(sim.tracks[0].mid, "0");
        assert_eq!(
            sim.tracks[0].ssrcs,
            vec![649821630],
            "audio by its one SSRC"
        );
        assert!(sim.tracks[0].rids.is_empty());
        assert_eq!(sim.tracks[1].rids, vec!["h", "m", "l"], "a=simulcast order");
        assert!(sim.tracks[1].ssrcs.is_empty(), "Chrome names no layer SSRC");
        assert_eq!(sim.tracks[1].codec, LayerCodec::Vp8);
        let n = sdp::answer(
            include_str!("../../sdp/fixtures/chrome_subscribe.sdp"),
            Direction::Subscribe,
            &params(Some(&publisher)),
        )
        .expect("subscribe answer");
        // The video track (no SSRC in the offer) still gets the subscriber's video SSRC.
        let ssrcs = subscriber_ssrcs(Some(&publisher), &n);
        let video = n
            .tracks
            .iter()
            .find(|t| t.kind == sdp::Kind::Video)
            .expect("video answered");
        assert_eq!(ssrcs[1], video.ssrcs[0]);
    }
}

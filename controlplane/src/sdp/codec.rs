//! Which m-lines we accept and with which codec.

use super::offer::{fmtp_param, Offer, Offered, Section, REPAIRED_RTP_STREAM_ID, RTP_STREAM_ID};
use super::{Codec, Direction, Kind, Negotiated, Remap, Track};

/// The only transport WebRTC media uses; anything else (plain RTP, SDES) is rejected.
const PROTO: &str = "UDP/TLS/RTP/SAVPF";

/// H264 profile-level-id we prefer: constrained baseline, level 3.1, which every browser
/// decodes in hardware or software.
const H264_PREFERRED: &str = "42e01f";

/// One entry per offer m-line: the track we accept it as, or `None` to reject it (port 0).
pub(super) fn plan(
    offer: &Offer,
    dir: Direction,
    publisher: Option<&Negotiated>,
) -> Vec<Option<Track>> {
    // The n-th acceptable subscriber m-line of a kind forwards the publisher's n-th track of
    // that kind.
    let mut used = [0usize; 2];
    offer
        .sections
        .iter()
        .map(|s| {
            let kind = transport_ok(offer, s, dir)?;
            match (dir, publisher) {
                (Direction::Subscribe, Some(p)) => {
                    let n = &mut used[kind as usize];
                    let source = p.tracks.iter().filter(|t| t.kind == kind).nth(*n)?;
                    let track = follow(s, kind, source)?;
                    *n += 1;
                    Some(track)
                }
                _ => first_supported(s, kind, dir),
            }
        })
        .collect()
}

/// The m-line's kind when it can be accepted at all: audio or video, SAVPF, not rejected by
/// the offerer, in the BUNDLE group, flowing the way the endpoint serves.
fn transport_ok(offer: &Offer, s: &Section, dir: Direction) -> Option<Kind> {
    let kind = match s.media.as_str() {
        "audio" => Kind::Audio,
        "video" => Kind::Video,
        _ => return None,
    };
    let flows = match dir {
        Direction::Publish => s.sends,
        Direction::Subscribe => s.receives,
    };
    let ok = s.live && s.proto == PROTO && offer.bundle.contains(&s.mid) && flows;
    ok.then_some(kind)
}

fn supported(kind: Kind, c: &Codec) -> bool {
    let is = |n: &str| c.name.eq_ignore_ascii_case(n);
    match kind {
        Kind::Audio => is("opus") && c.clock_rate == 48000,
        Kind::Video => {
            c.clock_rate == 90000
                && (is("VP8")
                    || is("VP9")
                    || is("AV1")
                    || (is("H264") && packetization_mode(c) == Some("1")))
        }
    }
}

fn packetization_mode(c: &Codec) -> Option<&str> {
    c.fmtp
        .as_deref()
        .and_then(|f| fmtp_param(f, "packetization-mode"))
}

/// The first supported codec in the offer's order (for H264, the best profile among the
/// offered H264 entries), with its RTX.
fn first_supported(s: &Section, kind: Kind, dir: Direction) -> Option<Track> {
    let first = s.codecs.iter().find(|o| supported(kind, &o.codec))?;
    let chosen = if first.codec.name.eq_ignore_ascii_case("H264") {
        let h264 = || {
            s.codecs
                .iter()
                .filter(|o| o.codec.name.eq_ignore_ascii_case("H264") && supported(kind, &o.codec))
        };
        h264()
            .find(|o| h264_profile_level(&o.codec).eq_ignore_ascii_case(H264_PREFERRED))
            .or_else(|| h264().find(|o| constrained_baseline(&o.codec)))
            .unwrap_or(first)
    } else {
        first
    };
    Some(track(s, kind, chosen, dir))
}

/// The subscriber's codec that carries the publisher's stream unchanged.
fn follow(s: &Section, kind: Kind, source: &Track) -> Option<Track> {
    let chosen = s
        .codecs
        .iter()
        .find(|o| supported(kind, &o.codec) && same_stream(&source.codec, &o.codec))?;
    let mut t = track(s, kind, chosen, Direction::Subscribe);
    let pt = (source.codec.payload_type, t.codec.payload_type);
    let rtx = match (&source.rtx, &t.rtx) {
        (Some(a), Some(b)) => Some((a.payload_type, b.payload_type)),
        _ => None,
    };
    let extensions = source
        .extensions
        .iter()
        .filter_map(|(pid, uri)| {
            let (sid, _) = t.extensions.iter().find(|(_, u)| u == uri)?;
            Some((*pid, *sid))
        })
        .collect();
    t.remap = Some(Remap {
        publisher_mid: source.mid.clone(),
        payload_type: pt,
        rtx_payload_type: rtx,
        extensions,
    });
    Some(t)
}

/// Whether a subscriber can decode what the publisher sends, as is: same codec and clock, and
/// the same profile where the codec has profiles (H264 profile_idc + constraints, VP9 and AV1
/// profile). Levels may differ: they bound resolution and rate, which the publisher's browser
/// already picked for common receivers.
fn same_stream(p: &Codec, s: &Codec) -> bool {
    if !p.name.eq_ignore_ascii_case(&s.name) || p.clock_rate != s.clock_rate {
        return false;
    }
    let param = |c: &Codec, k: &str, default: &'static str| -> String {
        c.fmtp
            .as_deref()
            .and_then(|f| fmtp_param(f, k))
            .unwrap_or(default)
            .to_ascii_lowercase()
    };
    if p.name.eq_ignore_ascii_case("H264") {
        packetization_mode(p) == packetization_mode(s)
            && h264_profile_level(p).get(..4) == h264_profile_level(s).get(..4)
    } else if p.name.eq_ignore_ascii_case("VP9") {
        param(p, "profile-id", "0") == param(s, "profile-id", "0")
    } else if p.name.eq_ignore_ascii_case("AV1") {
        param(p, "profile", "0") == param(s, "profile", "0")
    } else {
        true
    }
}

/// `profile-level-id`, lowercase; RFC 6184's default (baseline, level 1.0) when absent.
fn h264_profile_level(c: &Codec) -> String {
    c.fmtp
        .as_deref()
        .and_then(|f| fmtp_param(f, "profile-level-id"))
        .unwrap_or("42000a")
        .to_ascii_lowercase()
}

/// Baseline profile_idc (0x42) with constraint_set1_flag: the constrained baseline profile.
fn constrained_baseline(c: &Codec) -> bool {
    let pl = h264_profile_level(c);
    let byte = |i: usize| {
        pl.get(i..i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
    };
    matches!((byte(0), byte(2)), (Some(0x42), Some(iop)) if iop & 0x40 != 0)
}

fn track(s: &Section, kind: Kind, chosen: &Offered, dir: Direction) -> Track {
    let pt = chosen.codec.payload_type;
    let rtx = s
        .codecs
        .iter()
        .find(|o| {
            o.codec.name.eq_ignore_ascii_case("rtx")
                && o.apt == Some(pt)
                && o.codec.clock_rate == chosen.codec.clock_rate
        })
        .map(|o| Codec {
            rtcp_fb: Vec::new(),
            ..o.codec.clone()
        });
    let (ssrcs, rids, extensions) = match dir {
        Direction::Publish => (s.ssrcs.clone(), s.send_rids.clone(), s.extensions.clone()),
        // SSRCs: ours, drawn once the plan is made. We send one layer, so no rids and no rid
        // header extensions.
        Direction::Subscribe => (
            Vec::new(),
            Vec::new(),
            s.extensions
                .iter()
                .filter(|(_, uri)| uri != RTP_STREAM_ID && uri != REPAIRED_RTP_STREAM_ID)
                .cloned()
                .collect(),
        ),
    };
    Track {
        mid: s.mid.clone(),
        kind,
        codec: chosen.codec.clone(),
        ssrcs,
        rtx,
        extensions,
        rids,
        remap: None,
    }
}

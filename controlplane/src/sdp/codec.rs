//! Which m-lines we accept and with which codec.

use super::h264::{self, Profile};
use super::offer::{fmtp_param, Offer, Offered, Section, REPAIRED_RTP_STREAM_ID, RTP_STREAM_ID};
use super::{Codec, Direction, Kind, Negotiated, Remap, Track};

/// The only transport WebRTC media uses; anything else (plain RTP, SDES) is rejected.
const PROTO: &str = "UDP/TLS/RTP/SAVPF";

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
                    || (is("H264")
                        && h264::packetization_mode(c.fmtp.as_deref()) == Some("1")
                        && h264::profile_level(c.fmtp.as_deref()).is_some()))
        }
    }
}

/// The first supported codec in the offer's order, with its RTX. For H264 the first
/// constrained baseline entry among the offered H264 ones when there is one: every browser
/// decodes that profile, so whoever subscribes later can watch.
fn first_supported(s: &Section, kind: Kind, dir: Direction) -> Option<Track> {
    let first = s.codecs.iter().find(|o| supported(kind, &o.codec))?;
    let chosen = if first.codec.name.eq_ignore_ascii_case("H264") {
        s.codecs
            .iter()
            .filter(|o| o.codec.name.eq_ignore_ascii_case("H264") && supported(kind, &o.codec))
            .find(|o| h264_profile(&o.codec) == Some(Profile::ConstrainedBaseline))
            .unwrap_or(first)
    } else {
        first
    };
    Some(track(s, kind, chosen, dir))
}

/// The subscriber's codec that carries the publisher's stream unchanged. For H264, the first
/// entry in the subscriber's order of the publisher's own profile, else of a profile whose
/// decoders decode it; within that, one whose level is at least the publisher's before a
/// lower one (which is still taken: decoders do not enforce levels).
fn follow(s: &Section, kind: Kind, source: &Track) -> Option<Track> {
    let level = |c: &Codec| h264::profile_level(c.fmtp.as_deref()).map(|p| p.level);
    let chosen = s
        .codecs
        .iter()
        .filter(|o| supported(kind, &o.codec) && same_stream(&source.codec, &o.codec))
        // min_by_key keeps the first of equals: the subscriber's preference.
        .min_by_key(|o| {
            (
                h264_profile(&o.codec) != h264_profile(&source.codec),
                level(&o.codec) < level(&source.codec),
            )
        })?;
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
/// for VP9 and AV1 the same profile. For H264 the same packetization mode and a profile whose
/// decoders decode the publisher's (H.264 Annex A: a High decoder decodes Main, for one);
/// Chromium without a hardware decoder offers no High (64) but High 4:4:4 (f4), whose
/// decoders decode High. Levels may differ: they bound resolution and rate, which the
/// publisher's encoder already picked for common receivers.
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
        let decodes = match (h264_profile(s), h264_profile(p)) {
            (Some(s), Some(p)) => h264::decodes(s, p),
            _ => false,
        };
        h264::packetization_mode(p.fmtp.as_deref()) == h264::packetization_mode(s.fmtp.as_deref())
            && decodes
    } else if p.name.eq_ignore_ascii_case("VP9") {
        param(p, "profile-id", "0") == param(s, "profile-id", "0")
    } else if p.name.eq_ignore_ascii_case("AV1") {
        param(p, "profile", "0") == param(s, "profile", "0")
    } else {
        true
    }
}

fn h264_profile(c: &Codec) -> Option<Profile> {
    h264::profile_level(c.fmtp.as_deref()).map(|p| p.profile)
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
    let mut codec = chosen.codec.clone();
    if codec.name.eq_ignore_ascii_case("H264") {
        codec.fmtp = h264::answer_fmtp(codec.fmtp.as_deref());
    }
    Track {
        mid: s.mid.clone(),
        kind,
        codec,
        ssrcs,
        rtx_ssrc: match dir {
            Direction::Publish => s.fid.map(|(_, rtx)| rtx),
            Direction::Subscribe => None,
        },
        rtx,
        extensions,
        rids,
        remap: None,
    }
}

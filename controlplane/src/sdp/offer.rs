//! Reading an offer: the `sdp` crate splits it into lines and sections; this module reads the
//! attribute values we act on and checks the transport rules that apply to the whole offer.

use std::collections::HashSet;

use ::sdp::description::common::Attribute;
use ::sdp::{MediaDescription, SessionDescription};

use super::{Codec, SdpError};

/// RTP header extensions we forward or act on; all others are dropped from the answer.
/// Stored session state names them by index (`crate::kept`): append, never reorder.
pub(crate) const EXTENSIONS: [&str; 5] = [
    MID,
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    super::TRANSPORT_CC_URI,
    RTP_STREAM_ID,
    REPAIRED_RTP_STREAM_ID,
];

/// The m-line a packet belongs to (RFC 8843 §15).
pub(crate) const MID: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";

/// Simulcast layer ids (RFC 8852): meaningful from a publisher, not towards a subscriber.
pub(crate) const RTP_STREAM_ID: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
pub(crate) const REPAIRED_RTP_STREAM_ID: &str =
    "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id";

/// RTCP feedback we implement (NACK retransmission, PLI/FIR forwarding, congestion feedback).
const RTCP_FB: [&str; 5] = ["nack", "nack pli", "ccm fir", "transport-cc", "goog-remb"];

/// Longest rid we accept (RFC 8851 sets none; browsers use 1–3 characters).
const MAX_RID: usize = 16;

/// The offer, parsed and checked at session level.
#[derive(Debug)]
pub(super) struct Offer {
    pub ice_ufrag: String,
    pub ice_pwd: String,
    pub fingerprint: String,
    /// mids in the offer's `a=group:BUNDLE`.
    pub bundle: Vec<String>,
    pub sections: Vec<Section>,
}

/// One m-line of the offer.
#[derive(Debug)]
pub(super) struct Section {
    /// `audio`, `video`, `application`, …
    pub media: String,
    pub port: isize,
    /// `a=bundle-only` (RFC 8843 §6): port 0 in the offer, yet a live m-line on the BUNDLE
    /// transport (GStreamer's `webrtcbin` with max-bundle offers its second track so).
    pub bundle_only: bool,
    /// The offerer wants this m-line: a non-zero port, or `bundle-only` inside the BUNDLE
    /// group. Port 0 without `bundle-only` is an m-line the offerer itself disabled.
    pub live: bool,
    /// `UDP/TLS/RTP/SAVPF` for WebRTC media.
    pub proto: String,
    pub formats: Vec<String>,
    pub mid: String,
    /// The offerer sends (sendonly/sendrecv) and receives (recvonly/sendrecv).
    pub sends: bool,
    pub receives: bool,
    pub rtcp_mux: bool,
    pub rtcp_rsize: bool,
    /// rtpmap'd codecs in m-line order, with `apt` for rtx. rtcp-fb already filtered.
    pub codecs: Vec<Offered>,
    /// Supported extensions with the offer's ids.
    pub extensions: Vec<(u8, String)>,
    /// Rids the offerer sends simulcast layers with, in `a=simulcast` order.
    pub send_rids: Vec<String>,
    /// SSRCs from `a=ssrc` and `a=ssrc-group`, first-seen order.
    pub ssrcs: Vec<u32>,
    /// The first `a=ssrc-group:FID <media> <rtx>` (RFC 5576 §4.3, RFC 4588 §8.6).
    pub fid: Option<(u32, u32)>,
    /// `a=sctp-port` (RFC 8841), or the port of a legacy
    /// `a=sctpmap:<port> webrtc-datachannel` (draft-ietf-mmusic-sctp-sdp-05, aiortc's offers).
    pub sctp_port: Option<u16>,
    /// `a=max-message-size` (RFC 8841 §6), for `m=application`.
    pub max_message_size: Option<u64>,
}

#[derive(Clone, Debug)]
pub(super) struct Offered {
    pub codec: Codec,
    /// For `rtx`: the payload type it repairs.
    pub apt: Option<u8>,
}

impl Offer {
    pub fn parse(text: &str) -> Result<Offer, SdpError> {
        let sd = SessionDescription::try_from(text.to_owned())
            .map_err(|e| SdpError::Malformed(e.to_string()))?;
        if sd.media_descriptions.is_empty() {
            return Err(SdpError::NoUsableCodec);
        }

        let bundle = sd
            .attributes
            .iter()
            .filter(|a| a.key == "group")
            .filter_map(|a| a.value.as_deref())
            .find_map(|v| {
                let mut it = v.split_whitespace();
                (it.next() == Some("BUNDLE")).then(|| it.map(str::to_owned).collect::<Vec<_>>())
            })
            .filter(|mids| !mids.is_empty())
            .ok_or(SdpError::NoBundle)?;

        let (ice_ufrag, ice_pwd) = ice_credentials(&sd).ok_or(SdpError::NoIceCredentials)?;
        let fingerprint = session_or_media(&sd, "fingerprint").ok_or(SdpError::NoFingerprint)?;
        check_fingerprint(&fingerprint)?;
        check_setup(&sd)?;

        let mut seen = HashSet::new();
        let mut sections = Vec::with_capacity(sd.media_descriptions.len());
        for (i, md) in sd.media_descriptions.iter().enumerate() {
            let mut s = Section::read(md).ok_or_else(|| {
                SdpError::Malformed(format!("m-line {i} has no a=mid or an invalid one"))
            })?;
            s.live = s.port != 0 || (s.bundle_only && bundle.contains(&s.mid));
            if !seen.insert(s.mid.clone()) {
                return Err(SdpError::Malformed(format!(
                    "mid {:?} appears twice",
                    s.mid
                )));
            }
            let av = s.media == "audio" || s.media == "video";
            if av && s.port != 0 && !s.rtcp_mux {
                return Err(SdpError::NoRtcpMux(s.mid));
            }
            sections.push(s);
        }
        Ok(Offer {
            ice_ufrag,
            ice_pwd,
            fingerprint,
            bundle,
            sections,
        })
    }
}

fn value<'a>(attrs: &'a [Attribute], key: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_deref())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// A session-level attribute, else the first m-line's that has it (JSEP puts ICE and DTLS
/// attributes in every m-line; some clients put them at session level).
fn session_or_media(sd: &SessionDescription, key: &str) -> Option<String> {
    value(&sd.attributes, key)
        .or_else(|| {
            sd.media_descriptions
                .iter()
                .find_map(|m| value(&m.attributes, key))
        })
        .map(str::to_owned)
}

fn ice_credentials(sd: &SessionDescription) -> Option<(String, String)> {
    fn both(attrs: &[Attribute]) -> Option<(&str, &str)> {
        Some((value(attrs, "ice-ufrag")?, value(attrs, "ice-pwd")?))
    }
    let (u, p) = both(&sd.attributes).or_else(|| {
        sd.media_descriptions
            .iter()
            .find_map(|m| both(&m.attributes))
    })?;
    // RFC 8839: ice-char is ALPHA / DIGIT / "+" / "/"; lengths 4..256 and 22..256.
    let ice_chars = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    };
    let ok = (4..=256).contains(&u.len())
        && (22..=256).contains(&p.len())
        && ice_chars(u)
        && ice_chars(p);
    ok.then(|| (u.to_owned(), p.to_owned()))
}

/// `<hash-func> <hex pairs separated by ':'>`, e.g. `sha-256 AB:CD:…`.
fn check_fingerprint(fp: &str) -> Result<(), SdpError> {
    let bad = || SdpError::Malformed(format!("a=fingerprint:{fp}"));
    let (alg, hex) = fp.split_once(' ').ok_or_else(bad)?;
    let alg_ok = !alg.is_empty()
        && alg.len() <= 16
        && alg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let hex_ok = hex
        .split(':')
        .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if alg_ok && hex_ok && hex.len() <= 64 * 3 {
        Ok(())
    } else {
        Err(bad())
    }
}

/// Every m-line's `a=setup` (or the session-level one) must let us be passive: we never open
/// DTLS connections, the client does.
fn check_setup(sd: &SessionDescription) -> Result<(), SdpError> {
    let session = value(&sd.attributes, "setup");
    let ok = |v: Option<&str>| matches!(v, Some("actpass") | Some("active"));
    if sd.media_descriptions.is_empty() {
        return if ok(session) {
            Ok(())
        } else {
            Err(SdpError::SetupNotActpass)
        };
    }
    for m in &sd.media_descriptions {
        if m.media_name.port.value == 0 {
            continue;
        }
        if !ok(value(&m.attributes, "setup").or(session)) {
            return Err(SdpError::SetupNotActpass);
        }
    }
    Ok(())
}

impl Section {
    /// `None` when the m-line has no usable mid (RFC 8843 requires one with BUNDLE).
    fn read(md: &MediaDescription) -> Option<Section> {
        let attrs = &md.attributes;
        let mid = value(attrs, "mid")?;
        // RFC 8843: mid is a token; we echo it in the answer and use it as a key.
        if mid.len() > 32 || !mid.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        let (sends, receives) = if md.has_attribute("sendonly") {
            (true, false)
        } else if md.has_attribute("recvonly") {
            (false, true)
        } else if md.has_attribute("inactive") {
            (false, false)
        } else {
            (true, true)
        };
        Some(Section {
            media: md.media_name.media.clone(),
            port: md.media_name.port.value,
            bundle_only: md.has_attribute("bundle-only"),
            live: md.media_name.port.value != 0,
            proto: md.media_name.protos.join("/"),
            formats: md.media_name.formats.clone(),
            mid: mid.to_owned(),
            sends,
            receives,
            rtcp_mux: md.has_attribute("rtcp-mux"),
            rtcp_rsize: md.has_attribute("rtcp-rsize"),
            codecs: codecs(md),
            extensions: extensions(attrs),
            send_rids: send_rids(attrs),
            ssrcs: ssrcs(attrs),
            fid: fid(attrs),
            sctp_port: value(attrs, "sctp-port")
                .and_then(|v| v.parse().ok())
                .or_else(|| legacy_sctpmap(attrs)),
            max_message_size: value(attrs, "max-message-size").and_then(|v| v.parse().ok()),
        })
    }
}

/// The m-line's dynamic payload types with an `a=rtpmap`, in m-line order. Static payload
/// types without rtpmap (PCMU, PCMA, G722, CN) are skipped: we support none of them.
fn codecs(md: &MediaDescription) -> Vec<Offered> {
    let attrs = &md.attributes;
    let mut out: Vec<Offered> = Vec::new();
    for f in &md.media_name.formats {
        let Ok(pt) = f.parse::<u8>() else { continue };
        if pt > 127 || out.iter().any(|o| o.codec.payload_type == pt) {
            continue;
        }
        let Some(map) = per_pt(attrs, "rtpmap", pt).next() else {
            continue;
        };
        // <encoding name>/<clock rate>[/<channels>]
        let mut parts = map.split('/');
        let name = parts.next().unwrap_or_default().trim();
        let Some(Ok(clock_rate)) = parts.next().map(|c| c.trim().parse::<u32>()) else {
            continue;
        };
        let channels = parts.next().and_then(|c| c.trim().parse::<u16>().ok());
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            continue;
        }
        let fmtp = per_pt(attrs, "fmtp", pt)
            .next()
            .map(str::to_owned)
            .filter(|f| !f.is_empty());
        let mut rtcp_fb: Vec<String> = Vec::new();
        for fb in per_pt(attrs, "rtcp-fb", pt).chain(per_pt_wildcard(attrs)) {
            let fb = fb.split_whitespace().collect::<Vec<_>>().join(" ");
            if RTCP_FB.contains(&fb.as_str()) && !rtcp_fb.contains(&fb) {
                rtcp_fb.push(fb);
            }
        }
        let apt = fmtp
            .as_deref()
            .and_then(|f| fmtp_param(f, "apt"))
            .and_then(|a| a.parse::<u8>().ok());
        out.push(Offered {
            codec: Codec {
                name: name.to_owned(),
                payload_type: pt,
                clock_rate,
                channels,
                fmtp,
                rtcp_fb,
            },
            apt,
        });
    }
    out
}

/// Values of `a=<key>:<pt> <rest>` lines for one payload type, `<rest>` trimmed.
fn per_pt<'a>(attrs: &'a [Attribute], key: &'a str, pt: u8) -> impl Iterator<Item = &'a str> {
    attrs
        .iter()
        .filter(move |a| a.key == key)
        .filter_map(|a| a.value.as_deref())
        .filter_map(move |v| {
            let (p, rest) = v.trim().split_once(' ')?;
            (p.parse::<u8>().ok()? == pt).then_some(rest.trim())
        })
}

/// `a=rtcp-fb:* <value>` applies to every payload type of the m-line.
fn per_pt_wildcard(attrs: &[Attribute]) -> impl Iterator<Item = &str> {
    attrs
        .iter()
        .filter(|a| a.key == "rtcp-fb")
        .filter_map(|a| a.value.as_deref())
        .filter_map(|v| v.trim().strip_prefix("* "))
}

/// A parameter of an fmtp string (`a=1;b=2`), key compared case-insensitively.
pub(super) fn fmtp_param<'a>(fmtp: &'a str, key: &str) -> Option<&'a str> {
    fmtp.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case(key).then_some(v.trim())
    })
}

/// `a=extmap:<id>[/<direction>] <uri> [<attributes>]` for the URIs we support. Ids are 1..=14:
/// we answer without `a=extmap-allow-mixed`, so only one-byte headers (RFC 8285) are in use.
fn extensions(attrs: &[Attribute]) -> Vec<(u8, String)> {
    let mut out: Vec<(u8, String)> = Vec::new();
    for v in attrs
        .iter()
        .filter(|a| a.key == "extmap")
        .filter_map(|a| a.value.as_deref())
    {
        let mut it = v.split_whitespace();
        let (Some(id), Some(uri)) = (it.next(), it.next()) else {
            continue;
        };
        let id = id.split('/').next().unwrap_or_default();
        let Ok(id) = id.parse::<u8>() else { continue };
        if !(1..=14).contains(&id) || !EXTENSIONS.contains(&uri) {
            continue;
        }
        if out.iter().any(|(i, u)| *i == id || u == uri) {
            continue;
        }
        out.push((id, uri.to_owned()));
    }
    out
}

/// Rids in `a=simulcast:send …` order that also have an `a=rid:<id> send` line. Alternatives
/// (`h,h2`) are flattened and the paused marker `~` dropped: the layer may start later.
fn send_rids(attrs: &[Attribute]) -> Vec<String> {
    let declared: Vec<&str> = attrs
        .iter()
        .filter(|a| a.key == "rid")
        .filter_map(|a| a.value.as_deref())
        .filter_map(|v| {
            let mut it = v.split_whitespace();
            let id = it.next()?;
            (it.next()? == "send").then_some(id)
        })
        .collect();
    let Some(sim) = value(attrs, "simulcast") else {
        return Vec::new();
    };
    let mut it = sim.split_whitespace();
    let mut out: Vec<String> = Vec::new();
    while let Some(dir) = it.next() {
        let Some(list) = it.next() else { break };
        if dir != "send" {
            continue;
        }
        for rid in list.split([';', ',']) {
            let rid = rid.trim_start_matches('~');
            let valid = !rid.is_empty()
                && rid.len() <= MAX_RID
                && rid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if valid && declared.contains(&rid) && !out.iter().any(|r| r == rid) {
                out.push(rid.to_owned());
            }
        }
    }
    out
}

/// The port of `a=sctpmap:<port> webrtc-datachannel [<streams>]`.
fn legacy_sctpmap(attrs: &[Attribute]) -> Option<u16> {
    let v = value(attrs, "sctpmap")?;
    let mut it = v.split_whitespace();
    let port = it.next()?.parse().ok()?;
    (it.next() == Some("webrtc-datachannel")).then_some(port)
}

fn fid(attrs: &[Attribute]) -> Option<(u32, u32)> {
    attrs
        .iter()
        .filter(|a| a.key == "ssrc-group")
        .find_map(|a| {
            let mut it = a.value.as_deref()?.split_whitespace();
            if it.next()? != "FID" {
                return None;
            }
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
}

fn ssrcs(attrs: &[Attribute]) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    let mut add = |s: &str| {
        if let Ok(s) = s.parse::<u32>() {
            if !out.contains(&s) {
                out.push(s);
            }
        }
    };
    for a in attrs {
        let Some(v) = a.value.as_deref() else {
            continue;
        };
        match a.key.as_str() {
            "ssrc" => {
                if let Some(s) = v.split_whitespace().next() {
                    add(s);
                }
            }
            // `<semantics> <ssrc> <ssrc>…`
            "ssrc-group" => v.split_whitespace().skip(1).for_each(&mut add),
            _ => {}
        }
    }
    out
}

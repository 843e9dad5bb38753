//! Writing the answer with the `sdp` crate's types: every line is built from checked values.

use std::net::SocketAddr;

use ::sdp::description::common::{Address, Attribute, ConnectionInformation};
use ::sdp::description::media::{MediaName, RangedPort};
use ::sdp::description::session::{Origin, TimeDescription, Timing};
use ::sdp::{MediaDescription, SessionDescription};

use super::offer::{Offer, Section};
use super::{
    AnswerParams, Codec, DataChannel, Direction, Kind, Track, MAX_MESSAGE_SIZE, SCTP_PORT,
};

/// MediaStream id in the WHEP answer's `a=msid`: one stream, so a browser plays audio and video
/// of a subscription in sync.
const STREAM_ID: &str = "switchyard";

/// RTCP CNAME for the SSRCs we send (RFC 7022 allows one per session; we have no better name).
const CNAME: &str = "switchyard";

pub(super) fn answer(
    offer: &Offer,
    plan: &[Option<Track>],
    data_channel: Option<&DataChannel>,
    dir: Direction,
    params: &AnswerParams,
    session_id: u64,
) -> String {
    let is_data = |s: &Section| data_channel.is_some_and(|d| d.mid == s.mid);
    // Accepted m-lines in the offer's order: tracks and the data channel share the bundle.
    let mids: Vec<&str> = offer
        .sections
        .iter()
        .zip(plan)
        .filter(|(s, t)| t.is_some() || is_data(s))
        .map(|(s, _)| s.mid.as_str())
        .collect();
    let mut attributes = vec![attr("ice-lite", None)];
    attributes.push(attr("group", Some(format!("BUNDLE {}", mids.join(" ")))));
    if dir == Direction::Subscribe {
        attributes.push(attr("msid-semantic", Some(format!(" WMS {STREAM_ID}"))));
    }
    let sd = SessionDescription {
        version: 0,
        origin: Origin {
            username: "-".into(),
            session_id,
            session_version: 2,
            network_type: "IN".into(),
            address_type: "IP4".into(),
            unicast_address: "127.0.0.1".into(),
        },
        session_name: "-".into(),
        session_information: None,
        uri: None,
        email_address: None,
        phone_number: None,
        connection_information: None,
        bandwidth: vec![],
        time_descriptions: vec![TimeDescription {
            timing: Timing {
                start_time: 0,
                stop_time: 0,
            },
            repeat_times: vec![],
        }],
        time_zones: vec![],
        encryption_key: None,
        attributes,
        media_descriptions: offer
            .sections
            .iter()
            .zip(plan)
            .map(|(s, t)| match t {
                Some(t) => accepted(s, t, dir, params),
                None => match data_channel.filter(|_| is_data(s)) {
                    Some(d) => accepted_data_channel(s, d, params),
                    None => rejected(s),
                },
            })
            .collect(),
    };
    sd.marshal()
}

fn attr(key: &str, value: Option<String>) -> Attribute {
    Attribute::new(key.to_owned(), value)
}

fn connection(addr: Option<&SocketAddr>) -> ConnectionInformation {
    let (kind, ip) = match addr {
        Some(SocketAddr::V6(a)) => ("IP6", a.ip().to_string()),
        Some(SocketAddr::V4(a)) => ("IP4", a.ip().to_string()),
        None => ("IP4", "0.0.0.0".to_owned()),
    };
    ConnectionInformation {
        network_type: "IN".into(),
        address_type: kind.into(),
        address: Some(Address {
            address: ip,
            ttl: None,
            range: None,
        }),
    }
}

/// Port 0 with the offer's formats (the m= grammar needs at least one), and its mid so the
/// client can match it up.
fn rejected(s: &Section) -> MediaDescription {
    let mut formats = s.formats.clone();
    if formats.is_empty() {
        formats.push("0".into());
    }
    MediaDescription {
        media_name: MediaName {
            media: s.media.clone(),
            port: RangedPort {
                value: 0,
                range: None,
            },
            protos: s.proto.split('/').map(str::to_owned).collect(),
            formats,
        },
        media_title: None,
        connection_information: Some(connection(None)),
        bandwidth: vec![],
        encryption_key: None,
        attributes: vec![attr("mid", Some(s.mid.clone())), attr("inactive", None)],
    }
}

fn accepted(s: &Section, t: &Track, dir: Direction, params: &AnswerParams) -> MediaDescription {
    let default = params.candidates.first();
    let mut formats = vec![t.codec.payload_type.to_string()];
    if let Some(rtx) = &t.rtx {
        formats.push(rtx.payload_type.to_string());
    }
    let mut a = vec![
        attr("mid", Some(t.mid.clone())),
        attr("ice-ufrag", Some(params.ice_ufrag.to_owned())),
        attr("ice-pwd", Some(params.ice_pwd.to_owned())),
        attr("fingerprint", Some(params.fingerprint.to_owned())),
        attr("setup", Some("passive".into())),
    ];
    for (id, uri) in &t.extensions {
        a.push(attr("extmap", Some(format!("{id} {uri}"))));
    }
    a.push(attr(
        match dir {
            Direction::Publish => "recvonly",
            Direction::Subscribe => "sendonly",
        },
        None,
    ));
    a.push(attr("rtcp-mux", None));
    if s.rtcp_rsize {
        a.push(attr("rtcp-rsize", None));
    }
    codec_lines(&mut a, &t.codec);
    if let Some(rtx) = &t.rtx {
        codec_lines(&mut a, rtx);
    }
    if !t.rids.is_empty() {
        for rid in &t.rids {
            a.push(attr("rid", Some(format!("{rid} recv"))));
        }
        a.push(attr(
            "simulcast",
            Some(format!("recv {}", t.rids.join(";"))),
        ));
    }
    if dir == Direction::Subscribe {
        source_lines(&mut a, t);
    }
    candidate_lines(&mut a, params);
    MediaDescription {
        media_name: MediaName {
            media: match t.kind {
                Kind::Audio => "audio".into(),
                Kind::Video => "video".into(),
            },
            port: RangedPort {
                value: default.map_or(9, |c| c.port() as isize),
                range: None,
            },
            protos: s.proto.split('/').map(str::to_owned).collect(),
            formats,
        },
        media_title: None,
        connection_information: Some(connection(default)),
        bandwidth: vec![],
        encryption_key: None,
        attributes: a,
    }
}

/// `m=application` for data channels (RFC 8841): same transport as the tracks (BUNDLE).
fn accepted_data_channel(s: &Section, d: &DataChannel, params: &AnswerParams) -> MediaDescription {
    let default = params.candidates.first();
    let mut a = vec![
        attr("mid", Some(s.mid.clone())),
        attr("ice-ufrag", Some(params.ice_ufrag.to_owned())),
        attr("ice-pwd", Some(params.ice_pwd.to_owned())),
        attr("fingerprint", Some(params.fingerprint.to_owned())),
        attr("setup", Some("passive".into())),
    ];
    let (protos, formats) = if d.legacy {
        // The stream count is what we accept (webrtc-sctp's default, 65535 inbound).
        a.push(attr(
            "sctpmap",
            Some(format!("{SCTP_PORT} webrtc-datachannel 65535")),
        ));
        (vec!["DTLS", "SCTP"], SCTP_PORT.to_string())
    } else {
        a.push(attr("sctp-port", Some(SCTP_PORT.to_string())));
        (vec!["UDP", "DTLS", "SCTP"], "webrtc-datachannel".to_owned())
    };
    a.push(attr("max-message-size", Some(MAX_MESSAGE_SIZE.to_string())));
    candidate_lines(&mut a, params);
    MediaDescription {
        media_name: MediaName {
            media: "application".into(),
            port: RangedPort {
                value: default.map_or(9, |c| c.port() as isize),
                range: None,
            },
            protos: protos.into_iter().map(str::to_owned).collect(),
            formats: vec![formats],
        },
        media_title: None,
        connection_information: Some(connection(default)),
        bandwidth: vec![],
        encryption_key: None,
        attributes: a,
    }
}

fn codec_lines(a: &mut Vec<Attribute>, c: &Codec) {
    let pt = c.payload_type;
    let map = match c.channels {
        Some(ch) => format!("{pt} {}/{}/{ch}", c.name, c.clock_rate),
        None => format!("{pt} {}/{}", c.name, c.clock_rate),
    };
    a.push(attr("rtpmap", Some(map)));
    for fb in &c.rtcp_fb {
        a.push(attr("rtcp-fb", Some(format!("{pt} {fb}"))));
    }
    if let Some(f) = &c.fmtp {
        a.push(attr("fmtp", Some(format!("{pt} {f}"))));
    }
}

/// `a=msid` and `a=ssrc` lines for what we send, so the browser creates a track for it at once
/// (before the first packet) and can tie RTX to its media SSRC.
fn source_lines(a: &mut Vec<Attribute>, t: &Track) {
    let track_id = format!(
        "{}-{}",
        t.mid,
        if t.kind == Kind::Audio {
            "audio"
        } else {
            "video"
        }
    );
    a.push(attr("msid", Some(format!("{STREAM_ID} {track_id}"))));
    if let [media, rtx] = t.ssrcs[..] {
        a.push(attr("ssrc-group", Some(format!("FID {media} {rtx}"))));
    }
    for ssrc in &t.ssrcs {
        a.push(attr("ssrc", Some(format!("{ssrc} cname:{CNAME}"))));
        a.push(attr(
            "ssrc",
            Some(format!("{ssrc} msid:{STREAM_ID} {track_id}")),
        ));
    }
}

/// Our host candidates (RFC 8839 §5.1), UDP first, then the same addresses as ICE-TCP
/// passive candidates when enabled, then `a=end-of-candidates` (ICE-lite: there are no more).
fn candidate_lines(a: &mut Vec<Attribute>, params: &AnswerParams) {
    let n = params.candidates.len();
    for (i, c) in params.candidates.iter().enumerate() {
        a.push(attr("candidate", Some(candidate(i, c))));
    }
    if params.ice_tcp {
        for (i, c) in params.candidates.iter().enumerate() {
            a.push(attr("candidate", Some(tcp_candidate(n + i, i, c))));
        }
    }
    a.push(attr("end-of-candidates", None));
}

/// A UDP host candidate. Priority per RFC 8445 §5.1.2.1: type preference 126 (host), local
/// preference falling with the position in the list, component 1.
fn candidate(i: usize, addr: &SocketAddr) -> String {
    let local_pref = 65535u32.saturating_sub(u32::try_from(i).unwrap_or(u32::MAX));
    let priority = (126u32 << 24) | (local_pref << 8) | (256 - 1);
    format!(
        "{} 1 udp {priority} {} {} typ host",
        i + 1,
        addr.ip(),
        addr.port()
    )
}

/// An ICE-TCP passive host candidate (RFC 6544 §4.5), foundation `f + 1`. Local preference
/// per RFC 6544 §4.2: 2^13 × direction preference (4, passive) + other preference, which
/// keeps every TCP candidate below every UDP one, so a peer with working UDP uses it.
fn tcp_candidate(f: usize, i: usize, addr: &SocketAddr) -> String {
    let other = 8191u32.saturating_sub(u32::try_from(i).unwrap_or(u32::MAX));
    let local_pref = (4u32 << 13) | other;
    let priority = (126u32 << 24) | (local_pref << 8) | (256 - 1);
    format!(
        "{} 1 tcp {priority} {} {} typ host tcptype passive",
        f + 1,
        addr.ip(),
        addr.port()
    )
}

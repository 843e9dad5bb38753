//! The SDP file that describes what a plain-RTP destination receives for one stream, for a
//! recorder: `ffmpeg -protocol_whitelist file,udp,rtp -i stream.sdp -c copy out.mkv`.
//!
//! One `m=` line per publisher track whose codec is known, on the track's port (RTCP on the
//! port above, `a=rtcp`, no rtcp-mux), with the publisher's payload type, `a=rtpmap` and
//! `a=fmtp` — the egress passes payload types through unchanged. Pure: no I/O, no clock.

use std::fmt::Write as _;
use std::net::IpAddr;

use switchyard_shared::config::Destination;

use crate::sdp::{Codec, Kind, Negotiated};

/// The codec of one publisher track.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackCodec {
    pub kind: Kind,
    pub codec: Codec,
}

/// Per publisher track (in track order) its codec, from what the publisher negotiated (the
/// WHIP offer, or the `codecs` of a publisher made through `/v1/sessions`). Tracks are the
/// m-lines with SSRCs, the same order the publisher's session lists them in.
pub fn track_codecs(n: &Negotiated) -> Vec<TrackCodec> {
    n.tracks
        .iter()
        .filter(|t| !t.ssrcs.is_empty())
        .map(|t| TrackCodec {
            kind: t.kind,
            codec: t.codec.clone(),
        })
        .collect()
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SdpFileError {
    #[error("the stream's publisher told no codecs (publish with WHIP, or give codecs when creating the session), so no SDP can describe it")]
    NoCodecs,
    #[error("a node:// destination gets a relay link, not plain RTP: no SDP file describes it")]
    NotRtp,
}

/// The SDP file for `stream` as `destination` receives it from forward `forward`. `origin`
/// is the node's media address (the `o=` line); `session_id` makes the `o=` line unique.
pub fn describe(
    forward: &str,
    stream: &str,
    destination: &Destination,
    tracks: &[TrackCodec],
    origin: IpAddr,
    session_id: u64,
) -> Result<String, SdpFileError> {
    if tracks.is_empty() {
        return Err(SdpFileError::NoCodecs);
    }
    let family = |ip: IpAddr| if ip.is_ipv4() { "IP4" } else { "IP6" };
    let Destination::Rtp(base) = destination else {
        return Err(SdpFileError::NotRtp);
    };
    let mut out = String::with_capacity(512);
    let _ = write!(
        out,
        "v=0\r\no=- {session_id} 1 IN {} {origin}\r\ns=Switchyard forward {} {}\r\nc=IN {} {}\r\nt=0 0\r\n",
        family(origin),
        clean(forward),
        clean(stream),
        family(base.ip()),
        base.ip(),
    );
    for (i, t) in tracks.iter().enumerate() {
        let Some(addr) = destination.track_address(i as u8) else {
            continue;
        };
        let c = &t.codec;
        let kind = match t.kind {
            Kind::Audio => "audio",
            Kind::Video => "video",
        };
        let pt = c.payload_type;
        let _ = write!(
            out,
            "m={kind} {} RTP/AVP {pt}\r\na=rtpmap:{pt} {}/{}",
            addr.port(),
            clean(&c.name),
            c.clock_rate
        );
        if let Some(ch) = c.channels {
            let _ = write!(out, "/{ch}");
        }
        out.push_str("\r\n");
        if let Some(f) = c.fmtp.as_deref().filter(|f| !f.is_empty()) {
            let _ = write!(out, "a=fmtp:{pt} {}\r\n", clean(f));
        }
        let _ = write!(out, "a=rtcp:{}\r\na=recvonly\r\n", addr.port() + 1);
    }
    Ok(out)
}

/// A value as it may appear inside one SDP line: printable ASCII only. Codec names and fmtp
/// come from a client's offer; nothing it sent may start a line of its own here.
fn clean(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(name: &str, pt: u8, rate: u32, ch: Option<u16>, fmtp: Option<&str>) -> Codec {
        Codec {
            name: name.into(),
            payload_type: pt,
            clock_rate: rate,
            channels: ch,
            fmtp: fmtp.map(Into::into),
            rtcp_fb: vec![],
        }
    }

    #[test]
    fn audio_and_video_on_their_own_ports() {
        let tracks = [
            TrackCodec {
                kind: Kind::Audio,
                codec: codec(
                    "opus",
                    111,
                    48000,
                    Some(2),
                    Some("minptime=10;useinbandfec=1"),
                ),
            },
            TrackCodec {
                kind: Kind::Video,
                codec: codec("VP8", 96, 90000, None, None),
            },
        ];
        let d = Destination::parse("rtp://192.0.2.7:5004").expect("dest");
        let sdp = describe(
            "rec",
            "room/cam",
            &d,
            &tracks,
            "198.51.100.1".parse().expect("ip"),
            42,
        )
        .expect("sdp");
        assert_eq!(
            sdp,
            "v=0\r\n\
             o=- 42 1 IN IP4 198.51.100.1\r\n\
             s=Switchyard forward rec room/cam\r\n\
             c=IN IP4 192.0.2.7\r\n\
             t=0 0\r\n\
             m=audio 5004 RTP/AVP 111\r\n\
             a=rtpmap:111 opus/48000/2\r\n\
             a=fmtp:111 minptime=10;useinbandfec=1\r\n\
             a=rtcp:5005\r\n\
             a=recvonly\r\n\
             m=video 5006 RTP/AVP 96\r\n\
             a=rtpmap:96 VP8/90000\r\n\
             a=rtcp:5007\r\n\
             a=recvonly\r\n"
        );
        // It parses as SDP.
        let parsed = ::sdp::SessionDescription::try_from(sdp.clone()).expect("parses");
        assert_eq!(parsed.media_descriptions.len(), 2);
    }

    #[test]
    fn ipv6_destination_and_hostile_values() {
        let tracks = [TrackCodec {
            kind: Kind::Video,
            codec: codec(
                "H264",
                102,
                90000,
                None,
                Some("profile-level-id=42e01f\r\na=evil"),
            ),
        }];
        let d = Destination::parse("rtp://[2001:db8::5]:6000").expect("dest");
        let sdp = describe(
            "f",
            "s\r\nx=1",
            &d,
            &tracks,
            "2001:db8::1".parse().expect("ip"),
            1,
        )
        .expect("sdp");
        assert!(sdp.contains("c=IN IP6 2001:db8::5\r\n"), "{sdp}");
        assert!(sdp.contains("o=- 1 1 IN IP6 2001:db8::1\r\n"), "{sdp}");
        assert!(!sdp.contains("\r\na=evil"), "{sdp}");
        assert!(!sdp.contains("\r\nx=1"), "{sdp}");
        assert_eq!(sdp.lines().filter(|l| l.starts_with("m=")).count(), 1);
    }

    #[test]
    fn no_codecs_no_sdp() {
        let d = Destination::parse("rtp://192.0.2.7:5004").expect("dest");
        assert_eq!(
            describe("f", "s", &d, &[], "192.0.2.1".parse().expect("ip"), 1),
            Err(SdpFileError::NoCodecs)
        );
    }
}

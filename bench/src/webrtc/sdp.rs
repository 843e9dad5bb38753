//! The bench's SDP: a one-m-line VP8 offer as a browser would write it, and the few answer
//! values the bench acts on. The offer is a template (every value in it is the bench's own);
//! the answer comes from the node and is parsed with the `sdp` crate.

use std::io::Cursor;
use std::net::SocketAddr;

use crate::packet::PAYLOAD_TYPE;

/// Which side of a WHIP/WHEP exchange the offer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// WHIP: `a=sendonly` with the bench's SSRC.
    Publisher { ssrc: u32 },
    /// WHEP: `a=recvonly`.
    Subscriber,
    /// WHIP with three simulcast layers (`crate::simulcast`): rids and the MID/RID header
    /// extensions, no SSRC (the node learns the layers' SSRCs from the rids, as with Chrome).
    Simulcast,
}

/// The bench's side of the transport: ICE credentials and its certificate's fingerprint.
#[derive(Clone, Debug)]
pub struct Local<'a> {
    pub ufrag: &'a str,
    pub pwd: &'a str,
    /// `"sha-256 AB:CD:…"`.
    pub fingerprint: &'a str,
}

/// The answer values the bench needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub ufrag: String,
    pub pwd: String,
    /// `"sha-256 AB:CD:…"`.
    pub fingerprint: String,
    /// The first IPv4 host candidate: the worker's media address.
    pub candidate: SocketAddr,
    /// WHEP: the SSRC the node sends the publisher's track with (first `a=ssrc`).
    pub ssrc: Option<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SdpError {
    #[error("answer does not parse as SDP: {0}")]
    Parse(String),
    #[error("answer has no accepted m-line")]
    NoMedia,
    #[error("answer lacks {0}")]
    Missing(&'static str),
}

/// An offer for one VP8 video m-line, BUNDLE, rtcp-mux, `a=setup:active` (the node is
/// always the DTLS server).
pub fn offer(role: Role, local: &Local<'_>, session_id: u64) -> String {
    let (direction, ssrc) = match role {
        Role::Publisher { ssrc } => (
            "sendonly",
            format!("a=msid:bench v0\r\na=ssrc:{ssrc} cname:switchyard-bench\r\na=ssrc:{ssrc} msid:bench v0\r\n"),
        ),
        Role::Subscriber => ("recvonly", String::new()),
        Role::Simulcast => (
            "sendonly",
            format!("a=msid:bench v0\r\n{}", crate::simulcast::offer_lines()),
        ),
    };
    let pt = PAYLOAD_TYPE;
    format!(
        "v=0\r\n\
         o=- {session_id} 2 IN IP4 127.0.0.1\r\n\
         s=-\r\n\
         t=0 0\r\n\
         a=group:BUNDLE 0\r\n\
         a=msid-semantic: WMS bench\r\n\
         m=video 9 UDP/TLS/RTP/SAVPF {pt}\r\n\
         c=IN IP4 0.0.0.0\r\n\
         a=rtcp:9 IN IP4 0.0.0.0\r\n\
         a=ice-ufrag:{ufrag}\r\n\
         a=ice-pwd:{pwd}\r\n\
         a=fingerprint:{fp}\r\n\
         a=setup:active\r\n\
         a=mid:0\r\n\
         a={direction}\r\n\
         a=rtcp-mux\r\n\
         a=rtpmap:{pt} VP8/90000\r\n\
         a=rtcp-fb:{pt} nack\r\n\
         a=rtcp-fb:{pt} nack pli\r\n\
         {ssrc}",
        ufrag = local.ufrag,
        pwd = local.pwd,
        fp = local.fingerprint,
    )
}

/// Reads ICE credentials, fingerprint (media or session level), the first IPv4 host
/// candidate and the first `a=ssrc` of the first accepted m-line.
pub fn parse_answer(text: &str) -> Result<Answer, SdpError> {
    let sd = sdp::SessionDescription::unmarshal(&mut Cursor::new(text.as_bytes()))
        .map_err(|e| SdpError::Parse(e.to_string()))?;
    let m = sd
        .media_descriptions
        .iter()
        .find(|m| m.media_name.port.value != 0)
        .ok_or(SdpError::NoMedia)?;
    let attr = |key: &str| -> Option<String> {
        m.attribute(key)
            .flatten()
            .map(str::to_owned)
            .or_else(|| sd.attribute(key).cloned())
    };
    let ufrag = attr("ice-ufrag").ok_or(SdpError::Missing("a=ice-ufrag"))?;
    let pwd = attr("ice-pwd").ok_or(SdpError::Missing("a=ice-pwd"))?;
    let fingerprint = attr("fingerprint").ok_or(SdpError::Missing("a=fingerprint"))?;
    let candidate = m
        .attributes
        .iter()
        .filter(|a| a.key == "candidate")
        .filter_map(|a| host_candidate(a.value.as_deref()?))
        .find(SocketAddr::is_ipv4)
        .ok_or(SdpError::Missing("an IPv4 UDP host candidate"))?;
    let ssrc = m
        .attributes
        .iter()
        .filter(|a| a.key == "ssrc")
        .find_map(|a| a.value.as_deref()?.split(' ').next()?.parse().ok());
    Ok(Answer {
        ufrag,
        pwd,
        fingerprint,
        candidate,
        ssrc,
    })
}

/// `<foundation> <component> udp <priority> <ip> <port> typ host …` → ip:port.
fn host_candidate(value: &str) -> Option<SocketAddr> {
    let f: Vec<&str> = value.split_ascii_whitespace().collect();
    let (transport, ip, port, typ) = (f.get(2)?, f.get(4)?, f.get(5)?, f.get(7)?);
    if !transport.eq_ignore_ascii_case("udp") || *typ != "host" || f.get(6) != Some(&"typ") {
        return None;
    }
    Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=ice-lite\r\n\
        a=group:BUNDLE 0\r\nm=video 10001 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 127.0.0.1\r\n\
        a=mid:0\r\na=ice-ufrag:abcdefgh\r\na=ice-pwd:0123456789abcdefghijklmn\r\n\
        a=fingerprint:sha-256 AB:CD\r\na=setup:passive\r\na=sendonly\r\na=rtcp-mux\r\n\
        a=rtpmap:96 VP8/90000\r\na=ssrc:12345 cname:switchyard\r\n\
        a=candidate:1 1 udp 2130706431 ::1 10001 typ host\r\n\
        a=candidate:2 1 udp 2130706175 127.0.0.1 10001 typ host\r\na=end-of-candidates\r\n";

    #[test]
    fn reads_the_answer() {
        let a = parse_answer(ANSWER).expect("parses");
        assert_eq!(a.ufrag, "abcdefgh");
        assert_eq!(a.pwd, "0123456789abcdefghijklmn");
        assert_eq!(a.fingerprint, "sha-256 AB:CD");
        assert_eq!(a.candidate, "127.0.0.1:10001".parse().expect("addr"));
        assert_eq!(a.ssrc, Some(12345));
    }

    #[test]
    fn incomplete_answers() {
        let no_cand: String = ANSWER
            .lines()
            .filter(|l| !l.starts_with("a=candidate"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(matches!(parse_answer(&no_cand), Err(SdpError::Missing(_))));
        let rejected = ANSWER.replace("m=video 10001", "m=video 0");
        assert_eq!(parse_answer(&rejected), Err(SdpError::NoMedia));
        assert!(parse_answer("not sdp").is_err());
    }

    #[test]
    fn offers_parse_back() {
        let local = Local {
            ufrag: "uf01",
            pwd: "p".repeat(24).leak(),
            fingerprint: "sha-256 AB:CD",
        };
        for role in [
            Role::Publisher { ssrc: 77 },
            Role::Subscriber,
            Role::Simulcast,
        ] {
            let text = offer(role, &local, 42);
            let sd = sdp::SessionDescription::unmarshal(&mut Cursor::new(text.as_bytes()))
                .expect("offer parses");
            let m = &sd.media_descriptions[0];
            assert_eq!(m.attribute("setup"), Some(Some("active")));
            assert_eq!(m.attribute("ice-ufrag"), Some(Some("uf01")));
            let dir = if role == Role::Subscriber {
                "recvonly"
            } else {
                "sendonly"
            };
            assert_eq!(m.attribute(dir), Some(None));
            assert_eq!(
                m.attributes.iter().any(|a| a.key == "ssrc"),
                matches!(role, Role::Publisher { .. })
            );
            assert_eq!(
                m.attribute("simulcast"),
                (role == Role::Simulcast).then_some(Some("send h;m;l"))
            );
        }
    }
}

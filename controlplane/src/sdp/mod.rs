//! SDP offer → answer for WHIP (publish) and WHEP (subscribe).
//!
//! [`answer`] takes the client's offer text and returns the answer text together with what
//! both planes need to know about the session ([`Negotiated`]). It is pure: no I/O, no clock;
//! the only outside input is randomness (`ring::rand`) for the SSRCs we send with and the
//! answer's session id.
//!
//! Security contract: the offer is untrusted HTTP input. It is size-capped ([`MAX_SDP`]) before
//! the `sdp` crate parses it, nothing derived from it is unwrapped, and every line we echo back
//! is rebuilt from values we parsed and checked (payload types, extension ids, rids), never
//! copied through as text — except `a=fmtp` parameters, which are echoed for the chosen codec
//! only (the client needs to see its own parameters back; H264's are rebuilt from the three
//! that RFC 6184 offer/answer is about).
//!
//! What we accept and answer, and why, is in `docs/webrtc.md` ("SDP").

mod build;
mod codec;
mod h264;
mod offer;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The only header extension URIs a [`Track`] holds.
pub(crate) use offer::EXTENSIONS;
/// Header extensions a simulcast publisher's packets are mapped by.
pub(crate) use offer::{
    MID as MID_URI, REPAIRED_RTP_STREAM_ID as REPAIRED_RTP_STREAM_ID_URI,
    RTP_STREAM_ID as RTP_STREAM_ID_URI,
};

/// Largest offer we parse. Browser offers are 4–12 KiB (Chrome with all its codecs and
/// simulcast is about 8 KiB); anything four times that is not a browser. Larger offers are
/// refused with [`SdpError::TooLarge`] (HTTP 413).
pub const MAX_SDP: usize = 32 * 1024;

/// The transport-wide congestion control header extension (the node answers it with
/// transport-cc feedback to publishers).
pub const TRANSPORT_CC_URI: &str =
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

/// Which way media flows, from the client's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// WHIP: the offer's m-lines are sendonly or sendrecv; we receive (answer recvonly).
    Publish,
    /// WHEP: the offer's m-lines are recvonly or sendrecv; we send (answer sendonly).
    Subscribe,
}

/// Our side of the answer.
#[derive(Clone, Copy, Debug)]
pub struct AnswerParams<'a> {
    /// Our ICE-lite short-term credentials for this session.
    pub ice_ufrag: &'a str,
    pub ice_pwd: &'a str,
    /// Our DTLS certificate's fingerprint, `"sha-256 AB:CD:..."`.
    pub fingerprint: &'a str,
    /// Host candidates: the worker's media port on each of the node's addresses (IPv4 and IPv6).
    pub candidates: &'a [SocketAddr],
    /// Also offer each candidate as an ICE-TCP passive one (RFC 6544), below every UDP one.
    pub ice_tcp: bool,
    /// WHEP only: what the publisher negotiated, so that the subscriber gets the same codec per
    /// kind. `None` for WHIP, and for a WHEP session whose source is not known yet (then the
    /// subscriber's first supported codec is picked, as for WHIP).
    pub publisher: Option<&'a Negotiated>,
}

/// The result of a negotiation, stored with the session (serde).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Negotiated {
    /// The client's ICE credentials (we check its STUN with them).
    pub ice_ufrag_remote: String,
    pub ice_pwd_remote: String,
    /// The client's DTLS fingerprint, `"sha-256 AB:..."`, from the offer (session or media level).
    pub remote_fingerprint: String,
    /// One per accepted audio/video m-line, in the offer's order (= mid order).
    pub tracks: Vec<Track>,
    /// The accepted `m=application` (data channels), when the offer had a usable one.
    #[serde(default)]
    pub data_channel: Option<DataChannel>,
    /// The SDP answer, CRLF line endings.
    pub answer: String,
}

/// One accepted m-line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Track {
    pub mid: String,
    pub kind: Kind,
    /// The codec for this m-line, with the client's payload type.
    pub codec: Codec,
    /// WHIP: the SSRCs the client announced (`a=ssrc`, `a=ssrc-group`, first-seen order; empty
    /// when it announces none, as Chrome does with rids). WHEP: the SSRCs we send with, media
    /// first, then its RTX SSRC when `rtx` is set.
    pub ssrcs: Vec<u32>,
    /// Retransmission (RFC 4588) payload type bound to `codec`, when the client offered it.
    pub rtx: Option<Codec>,
    /// WHIP: the RTX SSRC the client paired with its media SSRC in `a=ssrc-group:FID`.
    #[serde(default)]
    pub rtx_ssrc: Option<u32>,
    /// Header extensions (id, URI) with the client's ids, only the URIs we support.
    pub extensions: Vec<(u8, String)>,
    /// WHIP simulcast: the rids the client sends (`a=rid:<id> send`), in its order.
    pub rids: Vec<String>,
    /// WHEP with a known publisher: how the publisher's RTP maps onto this subscriber's.
    pub remap: Option<Remap>,
}

/// An accepted data channel m-line (`m=application … UDP/DTLS/SCTP webrtc-datachannel`).
/// The data plane needs nothing from it: SCTP runs over the session's DTLS connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataChannel {
    pub mid: String,
    /// The client's `a=max-message-size`; 65536 when absent (RFC 8841 §6.1), 0 = no limit.
    pub max_message_size: u64,
    /// The offer used the pre-RFC 8841 syntax (`DTLS/SCTP <port>` with `a=sctpmap`, as aiortc
    /// writes it); the answer uses the same.
    #[serde(default)]
    pub legacy: bool,
}

/// SCTP port in our `a=sctp-port` (RFC 8841): the one every WebRTC stack uses. SCTP runs
/// over DTLS here, so the number only has to match on both ends of the association.
pub const SCTP_PORT: u16 = 5000;

/// Our `a=max-message-size`: the largest data channel message the data plane reads.
pub const MAX_MESSAGE_SIZE: usize = switchyard_shared::command::DATA_CHANNEL_MAX_MESSAGE;

/// Publisher → subscriber rewrite for one WHEP track: the data plane rewrites payload types
/// and header-extension ids per subscriber, since each browser numbers them its own way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remap {
    /// The publisher's track this one forwards.
    pub publisher_mid: String,
    /// Publisher's payload type → this subscriber's (`Track::codec.payload_type`).
    pub payload_type: (u8, u8),
    /// Publisher's RTX payload type → this subscriber's, when both negotiated RTX.
    pub rtx_payload_type: Option<(u8, u8)>,
    /// Publisher's extension id → this subscriber's, for the URIs both negotiated.
    pub extensions: Vec<(u8, u8)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Audio,
    Video,
}

/// A codec as one side numbered it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Codec {
    /// As in the `a=rtpmap` line: `opus`, `VP8`, `VP9`, `H264`, `AV1`, `rtx`.
    pub name: String,
    pub payload_type: u8,
    /// Hz.
    pub clock_rate: u32,
    /// Audio channels (`opus/48000/2`); `None` for video.
    pub channels: Option<u16>,
    /// The `a=fmtp` parameters as offered, without the payload type; for H264 as answered
    /// (profile-level-id, packetization-mode, level-asymmetry-allowed: `sdp::h264`).
    pub fmtp: Option<String>,
    /// The `a=rtcp-fb` values we accepted (`nack`, `nack pli`, `ccm fir`, `transport-cc`,
    /// `goog-remb`).
    pub rtcp_fb: Vec<String>,
}

/// Why an offer cannot be answered. The HTTP layer maps `TooLarge` to 413, `NoUsableCodec` to
/// 406 and the rest to 400.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("offer is larger than {MAX_SDP} bytes")]
    TooLarge,
    #[error("offer is not valid SDP: {0}")]
    Malformed(String),
    #[error("offer has no a=group:BUNDLE; we need every track on one transport")]
    NoBundle,
    #[error("offer's m-line {0} has no a=rtcp-mux; we need RTP and RTCP on one port")]
    NoRtcpMux(String),
    #[error("offer has no a=ice-ufrag / a=ice-pwd")]
    NoIceCredentials,
    #[error("offer has no a=fingerprint")]
    NoFingerprint,
    #[error("offer has no m-line with a codec we support")]
    NoUsableCodec,
    #[error("offer's a=setup must be actpass or active (we are always passive)")]
    SetupNotActpass,
    #[error("no system randomness for SSRCs")]
    Random,
}

/// Answer `offer` for a WHIP (`Publish`) or WHEP (`Subscribe`) session.
///
/// Errors are final for this offer; nothing is kept between calls. Each call draws fresh
/// random SSRCs (WHEP) and a fresh session id, so calling it twice gives two answers.
pub fn answer(offer: &str, dir: Direction, params: &AnswerParams) -> Result<Negotiated, SdpError> {
    answer_with(offer, dir, params, &ring::rand::SystemRandom::new())
}

fn answer_with(
    offer: &str,
    dir: Direction,
    params: &AnswerParams,
    rng: &dyn ring::rand::SecureRandom,
) -> Result<Negotiated, SdpError> {
    if offer.len() > MAX_SDP {
        return Err(SdpError::TooLarge);
    }
    let offer = offer::Offer::parse(offer)?;
    let mut plan = codec::plan(&offer, dir, params.publisher);
    let data_channel = data_channel(&offer);
    if plan.iter().all(Option::is_none) && data_channel.is_none() {
        return Err(SdpError::NoUsableCodec);
    }
    if dir == Direction::Subscribe {
        for track in plan.iter_mut().flatten() {
            track.ssrcs = random_ssrcs(rng, if track.rtx.is_some() { 2 } else { 1 })?;
        }
    }
    let session_id = random_u64(rng)? >> 1; // RFC 8866 / JSEP: 63 bits
    let answer = build::answer(
        &offer,
        &plan,
        data_channel.as_ref(),
        dir,
        params,
        session_id,
    );
    Ok(Negotiated {
        ice_ufrag_remote: offer.ice_ufrag.clone(),
        ice_pwd_remote: offer.ice_pwd.clone(),
        remote_fingerprint: offer.fingerprint.clone(),
        tracks: plan.into_iter().flatten().collect(),
        data_channel,
        answer,
    })
}

/// The first usable data channel m-line: not rejected, in the BUNDLE group, and either
/// RFC 8841 (`UDP/DTLS/SCTP webrtc-datachannel` with `a=sctp-port`) or the legacy syntax
/// (`DTLS/SCTP <port>` with `a=sctpmap:<port> webrtc-datachannel`). Either direction: a
/// channel carries both ways. Further application m-lines are rejected (one SCTP
/// association per transport).
fn data_channel(offer: &offer::Offer) -> Option<DataChannel> {
    let usable = |s: &&offer::Section| {
        if s.media != "application" || !s.live || !offer.bundle.contains(&s.mid) {
            return None;
        }
        let port = s.sctp_port?;
        let modern =
            s.proto == "UDP/DTLS/SCTP" && s.formats.iter().any(|f| f == "webrtc-datachannel");
        let legacy = s.proto == "DTLS/SCTP" && s.formats.iter().any(|f| *f == port.to_string());
        (modern || legacy).then_some(legacy)
    };
    let (s, legacy) = offer
        .sections
        .iter()
        .find_map(|s| usable(&s).map(|legacy| (s, legacy)))?;
    Some(DataChannel {
        mid: s.mid.clone(),
        max_message_size: s.max_message_size.unwrap_or(65536),
        legacy,
    })
}

fn random_u64(rng: &dyn ring::rand::SecureRandom) -> Result<u64, SdpError> {
    let mut b = [0u8; 8];
    rng.fill(&mut b).map_err(|_| SdpError::Random)?;
    Ok(u64::from_be_bytes(b))
}

/// `n` distinct nonzero SSRCs.
fn random_ssrcs(rng: &dyn ring::rand::SecureRandom, n: usize) -> Result<Vec<u32>, SdpError> {
    let mut out: Vec<u32> = Vec::with_capacity(n);
    while out.len() < n {
        let mut b = [0u8; 4];
        rng.fill(&mut b).map_err(|_| SdpError::Random)?;
        let s = u32::from_be_bytes(b);
        if s != 0 && !out.contains(&s) {
            out.push(s);
        }
    }
    Ok(out)
}

//! `POST /v1/sessions`: a plain RTP session with static SRTP keys (docs/api.md). The request
//! as it comes over the wire, every check it must pass ([`Invalid`]: each a 400 with the
//! field and the rule), and the session spec it becomes.
//!
//! `Keying::Plain` sessions belong to forwards alone: nothing here makes one.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;
use switchyard_shared::command::{
    Keying, Role, SessionSpec, SrtpKeys, SrtpProfile, ALL_TRACKS, MAX_PT_MAP, MAX_TRACKS,
};
use switchyard_shared::names::{self, BadName};
use utoipa::ToSchema;

use super::{SessionError, Sessions};
use crate::core::clock::now_ms;
use crate::core::random::{self, RngError};
use crate::sdp::{Codec, Kind, Negotiated, Track};

/// A plain RTP session with static SRTP keys (docs/api.md).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSession {
    role: RoleName,
    /// 1 to 128 characters of A-Z a-z 0-9 _ . / -; `room/stream` joins a room's events.
    #[schema(example = "room1/cam")]
    stream: String,
    /// `ip:port` to send to; required for subscribers.
    #[serde(default)]
    remote: Option<String>,
    /// `AEAD_AES_128_GCM` (default) or `AES_CM_128_HMAC_SHA1_80`.
    #[serde(default)]
    profile: Option<String>,
    /// Base64 master key || salt the peer sends with; random when absent.
    #[serde(default)]
    remote_key: Option<String>,
    /// Base64 master key || salt the node sends with; random when absent.
    #[serde(default)]
    local_key: Option<String>,
    #[serde(default)]
    ssrcs: Option<Vec<u32>>,
    /// The worker to place it on; the least loaded when absent.
    #[serde(default)]
    worker: Option<u16>,
    /// Subscribers: `[[publisherPt, subscriberPt], ...]`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Vec<u8>>>)]
    payload_types: Option<Vec<[u8; 2]>>,
    /// Publishers: the RTP clock rate (Hz) of each of `ssrcs`, in the same order, for the
    /// jitter in the receiver reports the node sends; without it jitter is reported as 0.
    #[serde(default)]
    clock_rates: Option<Vec<u32>>,
    /// Publishers: the codec of each of `ssrcs`, in the same order, so forwards can describe
    /// the stream in an SDP file.
    #[serde(default)]
    codecs: Option<Vec<CodecSpec>>,
}

/// `{"kind": "audio", "payloadType": 111, "name": "opus", "clockRate": 48000, "channels": 2,
/// "fmtp": "minptime=10;useinbandfec=1"}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CodecSpec {
    kind: KindName,
    payload_type: u8,
    name: String,
    clock_rate: u32,
    #[serde(default)]
    channels: Option<u16>,
    #[serde(default)]
    fmtp: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KindName {
    Audio,
    Video,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RoleName {
    Publisher,
    Subscriber,
    /// `Role::RelayIn`: this node's end of a relay link, on the worker's relay socket.
    #[serde(rename = "relay-in")]
    RelayIn,
    /// `Role::RelayOut`: sends the stream unchanged to another node's relay socket.
    #[serde(rename = "relay-out")]
    RelayOut,
}

/// A request that breaks a rule: the field and the rule, for the client.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error(transparent)]
    Name(#[from] BadName),
    #[error("remote: {0:?} is not an ip:port address")]
    RemoteSyntax(String),
    #[error("remote: needs a unicast address and a non-zero port")]
    RemoteNotUnicast,
    #[error("remote: a subscriber or relay-out needs the address to send to")]
    RemoteMissing,
    #[error(
        "relay-in/relay-out: ssrcs, payloadTypes and clockRates do not apply (a relay \
         passes every track unchanged and learns its SSRCs)"
    )]
    RelayTracks,
    #[error("profile: {0:?} is not one of AEAD_AES_128_GCM, AES_CM_128_HMAC_SHA1_80")]
    Profile(String),
    #[error("{0}: not valid base64")]
    KeyEncoding(&'static str),
    #[error("{field}: {len} bytes; {profile} needs {want} (master key || salt)")]
    KeyLength {
        field: &'static str,
        len: usize,
        profile: &'static str,
        want: usize,
    },
    #[error("clockRates: for publishers only")]
    ClockRatesNotPublisher,
    #[error("codecs: for publishers only")]
    CodecsNotPublisher,
    #[error("ssrcs: at most {MAX_TRACKS} tracks")]
    TooManySsrcs,
    #[error("ssrcs: 0 is not a usable SSRC")]
    ZeroSsrc,
    #[error("ssrcs: duplicate SSRC")]
    DuplicateSsrc,
    #[error("clockRates: at most one per entry of ssrcs, in the same order")]
    ClockRatesCount,
    #[error("clockRates: rates are 1..=1000000 Hz")]
    ClockRate,
    #[error("payloadTypes: at most {MAX_PT_MAP} pairs")]
    TooManyPayloadTypes,
    #[error("payloadTypes: types are 0..=127 and not 72..=76 (those read as RTCP)")]
    PayloadType,
    #[error("codecs: at most one per entry of ssrcs, in the same order")]
    CodecsCount,
    #[error("codecs[{index}]: {rule}")]
    Codec { index: usize, rule: &'static str },
}

/// Why a static-key session was not made.
#[derive(Debug, thiserror::Error)]
pub enum RtpError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Rng(#[from] RngError),
    #[error(transparent)]
    Session(#[from] SessionError),
}

impl Sessions {
    /// Check `req`, make its session and wait for the data plane to confirm it. The spec
    /// holds the keys: the answer to this request is the only one that shows them.
    pub async fn create_rtp(&self, req: CreateSession) -> Result<SessionSpec, RtpError> {
        names::stream("stream", &req.stream).map_err(Invalid::from)?;
        let remote = match req.remote.as_deref() {
            Some(r) => Some(
                r.parse::<SocketAddr>()
                    .map_err(|_| Invalid::RemoteSyntax(r.to_owned()))?,
            ),
            None => None,
        };
        if let Some(r) = remote {
            if r.port() == 0 || r.ip().is_unspecified() || r.ip().is_multicast() {
                return Err(Invalid::RemoteNotUnicast.into());
            }
        }
        if matches!(req.role, RoleName::Subscriber | RoleName::RelayOut) && remote.is_none() {
            return Err(Invalid::RemoteMissing.into());
        }
        if matches!(req.role, RoleName::RelayIn | RoleName::RelayOut)
            && (req.ssrcs.is_some() || req.payload_types.is_some() || req.clock_rates.is_some())
        {
            return Err(Invalid::RelayTracks.into());
        }
        let profile = parse_profile(req.profile.as_deref())?;
        let srtp = SrtpKeys {
            profile,
            remote: key("remoteKey", req.remote_key.as_deref(), profile)?,
            local: key("localKey", req.local_key.as_deref(), profile)?,
        };
        if req.role != RoleName::Publisher && req.clock_rates.is_some() {
            return Err(Invalid::ClockRatesNotPublisher.into());
        }
        if req.role == RoleName::Subscriber && req.codecs.is_some() {
            return Err(Invalid::CodecsNotPublisher.into());
        }
        let ssrcs = ssrcs(req.role, req.ssrcs)?;
        let codecs = match req.codecs {
            Some(c) => Some(publisher_codecs(c, &ssrcs)?),
            None => None,
        };
        let role = match req.role {
            RoleName::Publisher => Role::Publisher {
                clock_rates: clock_rates(req.clock_rates, ssrcs.len())?,
                ssrcs,
                simulcast: None,
                uplink: Vec::new(),
            },
            RoleName::Subscriber => Role::Subscriber {
                ssrcs,
                payload_types: payload_types(req.payload_types)?,
                extensions: None,
                rtx: Vec::new(),
                tracks: ALL_TRACKS,
            },
            RoleName::RelayIn => Role::RelayIn {
                ssrcs: Vec::new(),
                simulcast: None,
                video: Vec::new(),
            },
            RoleName::RelayOut => Role::RelayOut,
        };
        let stream = req.stream;
        let (spec, ()) = self
            .provision(req.worker, |id, worker, _| {
                Ok::<_, RtpError>((
                    SessionSpec {
                        id,
                        worker,
                        stream,
                        role,
                        remote,
                        keying: Keying::Static(srtp),
                        ice: None,
                        twcc_ext: None,
                        created_ms: now_ms(),
                        control: Default::default(),
                    },
                    (),
                ))
            })
            .await?;
        if let Some(n) = codecs {
            self.lock()
                .node
                .set_declared_codecs(&spec.stream, spec.id, Arc::new(n));
        }
        Ok(spec)
    }
}

fn parse_profile(name: Option<&str>) -> Result<SrtpProfile, Invalid> {
    match name {
        None => Ok(SrtpProfile::AeadAes128Gcm),
        Some(n) => [SrtpProfile::AeadAes128Gcm, SrtpProfile::AesCm128HmacSha1_80]
            .into_iter()
            .find(|p| p.name() == n)
            .ok_or_else(|| Invalid::Profile(n.to_owned())),
    }
}

/// A key given as base64 (checked against the profile's length), or a random one.
fn key(
    field: &'static str,
    given: Option<&str>,
    profile: SrtpProfile,
) -> Result<Vec<u8>, RtpError> {
    let len = profile.master_len();
    match given {
        Some(b64) => {
            let k = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| Invalid::KeyEncoding(field))?;
            if k.len() != len {
                return Err(Invalid::KeyLength {
                    field,
                    len: k.len(),
                    profile: profile.name(),
                    want: len,
                }
                .into());
            }
            Ok(k)
        }
        None => {
            let mut k = vec![0; len];
            random::fill(&mut k)?;
            Ok(k)
        }
    }
}

fn ssrcs(role: RoleName, given: Option<Vec<u32>>) -> Result<Vec<u32>, RtpError> {
    let mut list = given.unwrap_or_default();
    if list.len() > MAX_TRACKS {
        return Err(Invalid::TooManySsrcs.into());
    }
    if list.contains(&0) {
        return Err(Invalid::ZeroSsrc.into());
    }
    let mut sorted = list.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != list.len() {
        return Err(Invalid::DuplicateSsrc.into());
    }
    if role == RoleName::Subscriber {
        // A subscriber gets an SSRC for every track the publisher may have.
        random::fill_ssrcs(&mut list, MAX_TRACKS)?;
    }
    Ok(list)
}

/// A publisher's clock rates: one per declared SSRC (the data plane learns undeclared SSRCs
/// and cannot know their rates), each a plausible RTP clock.
fn clock_rates(given: Option<Vec<u32>>, ssrcs: usize) -> Result<Vec<u32>, Invalid> {
    let list = given.unwrap_or_default();
    if list.len() > ssrcs {
        return Err(Invalid::ClockRatesCount);
    }
    if list.iter().any(|&r| r == 0 || r > 1_000_000) {
        return Err(Invalid::ClockRate);
    }
    Ok(list)
}

fn payload_types(given: Option<Vec<[u8; 2]>>) -> Result<Vec<(u8, u8)>, Invalid> {
    let list = given.unwrap_or_default();
    if list.len() > MAX_PT_MAP {
        return Err(Invalid::TooManyPayloadTypes);
    }
    let bad = |p: u8| p >= 128 || (72..=76).contains(&p);
    if list.iter().any(|&[a, b]| bad(a) || bad(b)) {
        return Err(Invalid::PayloadType);
    }
    Ok(list.into_iter().map(|[a, b]| (a, b)).collect())
}

/// A REST publisher's codecs as the WHIP path records a negotiation: one track per declared
/// SSRC that has a codec, in order.
fn publisher_codecs(given: Vec<CodecSpec>, ssrcs: &[u32]) -> Result<Negotiated, Invalid> {
    if given.len() > ssrcs.len() {
        return Err(Invalid::CodecsCount);
    }
    let mut tracks = Vec::with_capacity(given.len());
    for (i, (c, &ssrc)) in given.into_iter().zip(ssrcs).enumerate() {
        let bad = |rule: &'static str| Err(Invalid::Codec { index: i, rule });
        if c.payload_type >= 128 || (72..=76).contains(&c.payload_type) {
            return bad("payloadType is 0..=127 and not 72..=76");
        }
        if c.name.is_empty()
            || c.name.len() > 32
            || !c
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad("name is 1 to 32 characters of A-Z a-z 0-9 - _ (opus, VP8, H264)");
        }
        if c.clock_rate == 0 || c.clock_rate > 1_000_000 {
            return bad("clockRate is 1..=1000000 Hz");
        }
        if c.channels.is_some_and(|n| n == 0 || n > 8) {
            return bad("channels is 1..=8");
        }
        if c.fmtp
            .as_deref()
            .is_some_and(|f| f.len() > 512 || !f.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        {
            return bad("fmtp is up to 512 printable ASCII characters");
        }
        tracks.push(Track {
            mid: i.to_string(),
            kind: match c.kind {
                KindName::Audio => Kind::Audio,
                KindName::Video => Kind::Video,
            },
            codec: Codec {
                name: c.name,
                payload_type: c.payload_type,
                clock_rate: c.clock_rate,
                channels: c.channels,
                fmtp: c.fmtp,
                rtcp_fb: Vec::new(),
            },
            ssrcs: vec![ssrc],
            rtx: None,
            rtx_ssrc: None,
            extensions: Vec::new(),
            rids: Vec::new(),
            remap: None,
        });
    }
    Ok(Negotiated {
        ice_ufrag_remote: String::new(),
        ice_pwd_remote: String::new(),
        remote_fingerprint: String::new(),
        tracks,
        answer: String::new(),
        data_channel: None,
    })
}

#[cfg(test)]
mod tests {
    use super::clock_rates;

    #[test]
    fn clock_rates_are_one_per_declared_ssrc() {
        assert_eq!(clock_rates(None, 2).ok(), Some(vec![]));
        assert_eq!(
            clock_rates(Some(vec![90000, 48000]), 2).ok(),
            Some(vec![90000, 48000])
        );
        assert!(
            clock_rates(Some(vec![90000]), 0).is_err(),
            "no SSRC to go with"
        );
        assert!(clock_rates(Some(vec![0]), 1).is_err());
    }
}

//! What the control plane keeps about a session inside the session's own spec
//! ([`SessionSpec::control`]), so that a control plane restart loses none of it: the data plane
//! stores the bytes with the session and hands them back in its snapshot, never reading them.
//!
//! - The resource secret of a WHIP/WHEP session: the unguessable part of its `Location`, the
//!   only thing that lets a client end or patch that session (being allowed on the stream is
//!   not enough: every viewer of a stream is).
//! - A WHIP publisher's negotiated tracks, which WHEP answers follow (`NodeState::publisher_media`).
//!
//! Encoded with postcard like everything else on the ring: both planes, and the control plane
//! that reads a snapshot, are the same build. The tracks are stored compactly (header
//! extension URIs by their index in [`sdp::EXTENSIONS`]) because the whole spec must fit in one
//! ring message ([`MAX_MESSAGE`]); [`fits`] says whether it does.

use serde::{Deserialize, Serialize};
use switchyard_shared::command::{self, Event, Opaque, SessionSpec, MAX_MESSAGE};

use crate::sdp::{self, Codec, Kind, Negotiated, Track};

/// Bytes in a resource secret: 128 bits, beyond guessing or enumeration.
pub const SECRET_LEN: usize = 16;

/// The unguessable part of a WHIP/WHEP resource URL.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret([u8; SECRET_LEN]);

impl std::fmt::Debug for Secret {
    // A secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn from_bytes(b: [u8; SECRET_LEN]) -> Self {
        Self(b)
    }

    /// Lowercase hex, as it appears in the URL.
    pub fn to_hex(self) -> String {
        use std::fmt::Write as _;
        self.0.iter().fold(String::with_capacity(32), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    /// Whether `hex` (from a request URL, so untrusted) is this secret. The comparison takes
    /// the same time wherever the first differing byte is, so a client cannot find the
    /// secret byte by byte from response times; only the length check and the parse of its
    /// own input depend on the input.
    pub fn matches(&self, hex: &str) -> bool {
        let Some(given) = parse_hex(hex) else {
            return false;
        };
        let diff = self
            .0
            .iter()
            .zip(given.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

fn parse_hex(hex: &str) -> Option<[u8; SECRET_LEN]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 2 * SECRET_LEN {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; SECRET_LEN];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// The control plane's part of a session spec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kept {
    /// WHIP/WHEP sessions: the secret in their resource URL.
    pub secret: Option<Secret>,
    /// WHIP publishers: the tracks they negotiated (without the ICE and DTLS identity, the
    /// answer or the data channel: WHEP answers need the codecs and ids only).
    pub media: Option<Vec<Track>>,
}

/// The wire form of [`Kept`].
#[derive(Serialize, Deserialize)]
struct Stored {
    secret: Option<Secret>,
    media: Option<Vec<StoredTrack>>,
}

/// A [`Track`] with its header extension URIs as indexes into [`sdp::EXTENSIONS`]: the URIs
/// are most of a track's size (five of them are 260 bytes), and a track holds no others.
#[derive(Serialize, Deserialize)]
struct StoredTrack {
    mid: String,
    kind: Kind,
    codec: Codec,
    ssrcs: Vec<u32>,
    rtx: Option<Codec>,
    extensions: Vec<(u8, u8)>,
    rids: Vec<String>,
    rtx_ssrc: Option<u32>,
}

/// Why a [`Kept`] cannot be stored.
#[derive(Debug, thiserror::Error)]
pub enum KeepError {
    #[error("a track has a header extension the SDP module does not support: {0}")]
    UnknownExtension(String),
    #[error("stored header extension index unknown to this build")]
    UnknownIndex,
    #[error("cannot encode or decode: {0}")]
    Codec(#[from] command::CodecError),
}

impl Kept {
    /// The bytes for [`SessionSpec::control`].
    pub fn encode(&self) -> Result<Opaque, KeepError> {
        let media = match &self.media {
            None => None,
            Some(tracks) => Some(
                tracks
                    .iter()
                    .map(StoredTrack::from_track)
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let mut buf = Vec::new();
        command::encode(
            &Stored {
                secret: self.secret,
                media,
            },
            &mut buf,
        )?;
        Ok(Opaque(buf))
    }

    /// What `spec` keeps; empty for a spec without any (relays, forwards, `/v1/sessions`)
    /// and for bytes this build cannot read (see [`Kept::decode`]).
    pub fn of(spec: &SessionSpec) -> Kept {
        Kept::decode(&spec.control).unwrap_or_default()
    }

    /// Read [`SessionSpec::control`] bytes; no bytes is nothing kept.
    pub fn decode(bytes: &Opaque) -> Result<Kept, KeepError> {
        if bytes.0.is_empty() {
            return Ok(Kept::default());
        }
        let stored = command::decode::<Stored>(&bytes.0)?;
        let media = match stored.media {
            None => None,
            // A track with an index this build does not know would offer WHEP subscribers
            // an incomplete map: keep none rather than a wrong one.
            Some(m) => Some(
                m.into_iter()
                    .map(StoredTrack::into_track)
                    .collect::<Option<_>>()
                    .ok_or(KeepError::UnknownIndex)?,
            ),
        };
        Ok(Kept {
            secret: stored.secret,
            media,
        })
    }

    /// The publisher media as WHEP reads it.
    pub fn negotiated(&self) -> Option<Negotiated> {
        Some(Negotiated {
            ice_ufrag_remote: String::new(),
            ice_pwd_remote: String::new(),
            remote_fingerprint: String::new(),
            tracks: self.media.clone()?,
            answer: String::new(),
            data_channel: None,
        })
    }
}

impl StoredTrack {
    fn from_track(t: &Track) -> Result<StoredTrack, KeepError> {
        let extensions = t
            .extensions
            .iter()
            .map(|(id, uri)| {
                let i = sdp::EXTENSIONS
                    .iter()
                    .position(|u| u == uri)
                    .and_then(|i| u8::try_from(i).ok())
                    .ok_or_else(|| KeepError::UnknownExtension(uri.clone()))?;
                Ok((*id, i))
            })
            .collect::<Result<_, KeepError>>()?;
        Ok(StoredTrack {
            mid: t.mid.clone(),
            kind: t.kind,
            codec: t.codec.clone(),
            ssrcs: t.ssrcs.clone(),
            rtx: t.rtx.clone(),
            extensions,
            rids: t.rids.clone(),
            rtx_ssrc: t.rtx_ssrc,
        })
    }

    fn into_track(self) -> Option<Track> {
        let extensions = self
            .extensions
            .into_iter()
            .map(|(id, i)| Some((id, (*sdp::EXTENSIONS.get(usize::from(i))?).to_owned())))
            .collect::<Option<_>>()?;
        Some(Track {
            mid: self.mid,
            kind: self.kind,
            codec: self.codec,
            ssrcs: self.ssrcs,
            rtx: self.rtx,
            rtx_ssrc: self.rtx_ssrc,
            extensions,
            rids: self.rids,
            remap: None,
        })
    }
}

/// Whether `spec` fits in one ring message as the largest event that carries it (a snapshot
/// entry), so that it can be both added and handed back after a control plane restart.
pub fn fits(spec: &SessionSpec) -> bool {
    let mut buf = Vec::with_capacity(MAX_MESSAGE);
    command::encode(
        &Event::SnapshotSession {
            request: u64::MAX,
            spec: spec.clone(),
        },
        &mut buf,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_only_themselves() {
        let s = Secret::from_bytes([0xa5; SECRET_LEN]);
        let hex = s.to_hex();
        assert_eq!(hex.len(), 32);
        assert!(s.matches(&hex));
        let mut other = hex.clone().into_bytes();
        other[31] = b'4';
        let other = String::from_utf8(other).expect("ascii");
        for bad in [
            "",
            "a5",
            &hex[..31],
            &format!("{hex}0"),
            &hex.to_uppercase(),
            &other,
            "zz".repeat(16).as_str(),
            "é".repeat(16).as_str(),
        ] {
            assert!(!s.matches(bad), "{bad:?}");
        }
        assert_eq!(format!("{s:?}"), "Secret(..)");
    }

    /// A WHIP publisher spec as large as the API lets one be, apart from its media: the
    /// longest stream name, ICE credentials at the sizes browsers use, a SHA-512 fingerprint.
    fn big_publisher(control: Opaque) -> SessionSpec {
        use switchyard_shared::command::{IceCredentials, Keying, Role};
        let mut spec = crate::core::state::tests::spec(u64::MAX);
        spec.stream = format!("{}/{}", "r".repeat(64), "s".repeat(64));
        spec.role = Role::Publisher {
            ssrcs: vec![u32::MAX; 4],
            clock_rates: vec![90_000; 4],
            simulcast: None,
            uplink: Vec::new(),
        };
        spec.keying = Keying::Dtls {
            remote_fingerprint: format!("sha-512 {}", ["AB"; 64].join(":")),
        };
        spec.ice = Some(IceCredentials {
            local_ufrag: "u".repeat(8),
            local_pwd: "p".repeat(24),
            remote_ufrag: "U".repeat(32),
            remote_pwd: "P".repeat(64),
        });
        spec.twcc_ext = Some(14);
        spec.control = control;
        spec
    }

    #[test]
    fn browser_publishers_round_trip_and_fit_with_room_to_spare() {
        let cands: [std::net::SocketAddr; 1] = ["192.0.2.10:10001".parse().expect("literal")];
        let params = sdp::AnswerParams {
            ice_ufrag: "swyU",
            ice_pwd: "0123456789abcdefABCDEF",
            fingerprint: "sha-256 0A:1B",
            candidates: &cands,
            ice_tcp: true,
            publisher: None,
        };
        for offer in [
            include_str!("../sdp/fixtures/chrome_publish.sdp"),
            include_str!("../sdp/fixtures/chrome_publish_simulcast.sdp"),
            include_str!("../sdp/fixtures/chrome_publish_datachannel.sdp"),
            include_str!("../sdp/fixtures/firefox_publish.sdp"),
            include_str!("../sdp/fixtures/firefox_publish_simulcast.sdp"),
            include_str!("../sdp/fixtures/aiortc_publish.sdp"),
        ] {
            let n = sdp::answer(offer, sdp::Direction::Publish, &params).expect("answer");
            let kept = Kept {
                secret: Some(Secret::from_bytes([9; SECRET_LEN])),
                media: Some(n.tracks.clone()),
            };
            let bytes = kept.encode().expect("encode");
            assert!(bytes.0.len() < 300, "{} bytes", bytes.0.len());
            let spec = big_publisher(bytes);
            assert!(fits(&spec));
            assert_eq!(Kept::of(&spec), kept);
            assert_eq!(
                kept.negotiated().map(|n| n.tracks).as_ref(),
                Some(&n.tracks)
            );
            // Three times the tracks (camera, screen and more) still fit.
            let many = Kept {
                media: Some([n.tracks.clone(), n.tracks.clone(), n.tracks].concat()),
                ..kept
            };
            assert!(fits(&big_publisher(many.encode().expect("encode"))));
        }
    }

    #[test]
    fn oversized_media_does_not_fit() {
        let mut n = sdp::answer(
            include_str!("../sdp/fixtures/chrome_publish.sdp"),
            sdp::Direction::Publish,
            &sdp::AnswerParams {
                ice_ufrag: "swyU",
                ice_pwd: "0123456789abcdefABCDEF",
                fingerprint: "sha-256 0A:1B",
                candidates: &[],
                ice_tcp: true,
                publisher: None,
            },
        )
        .expect("answer");
        n.tracks[0].codec.fmtp = Some("x".repeat(MAX_MESSAGE));
        let kept = Kept {
            secret: None,
            media: Some(n.tracks),
        };
        // Encoding alone may fail (over MAX_MESSAGE) or the spec around it may not fit.
        assert!(!kept.encode().is_ok_and(|b| fits(&big_publisher(b))));
    }

    #[test]
    fn nothing_kept_is_no_bytes_and_garbage_reads_as_nothing() {
        let mut spec = crate::core::state::tests::spec(1);
        assert_eq!(Kept::of(&spec), Kept::default());
        spec.control = Opaque(vec![0xff; 7]);
        assert!(Kept::decode(&spec.control).is_err());
        assert_eq!(Kept::of(&spec), Kept::default());
    }
}

//! A stream's cached group as a file a player opens (`GET /v1/streams/{room}/{stream}/fetch`):
//! the packets since the track's latest keyframe, copied out of the publisher's NACK cache
//! by its worker (`Command::FetchGroup`), depacketized here (`switchyard_shared::depay`)
//! into IVF (VP8, VP9, AV1) or an H.264 Annex B stream. For debugging what a publisher
//! sends, and what a late joiner is started from.

use switchyard_shared::command::{NoGroup, Role, SessionSpec, VideoCodec};
use switchyard_shared::depay::{self, DepayError};

use super::{Sessions, COMMAND_TIMEOUT};
use crate::core::link::SendError;
use crate::core::state::{NotReady, MAX_FETCHES};

/// A fetched group.
#[derive(Debug)]
pub struct Fetched {
    pub track: u8,
    pub codec: VideoCodec,
    /// Packets the worker copied out.
    pub packets: usize,
    pub file: depay::File,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    NotReady(#[from] NotReady),
    #[error(transparent)]
    Ring(#[from] SendError),
    #[error("the stream has no publisher on this node")]
    NoPublisher,
    #[error("the stream has no video track whose codec the node knows")]
    NoVideoTrack,
    #[error("track {track}: {reason}")]
    NoGroup { track: u8, reason: NoGroup },
    #[error("{MAX_FETCHES} fetches are in flight already; try again in a moment")]
    Busy,
    #[error("the data plane did not answer in time")]
    Timeout,
    #[error("the data plane went away before it answered")]
    Gone,
    #[error("track {track}: the cached group has {packets} packets but {reason}")]
    Depay {
        track: u8,
        packets: usize,
        reason: DepayError,
    },
}

/// The first track of `spec` whose video codec the node knows.
fn first_video(spec: &SessionSpec) -> Option<u8> {
    let mut codecs: Vec<Option<VideoCodec>> = match &spec.role {
        Role::Publisher { uplink, .. } => uplink.iter().map(|u| u.video).collect(),
        Role::RelayIn { video, .. } => video.clone(),
        _ => Vec::new(),
    };
    codecs.truncate(usize::from(u8::MAX));
    codecs.iter().position(Option::is_some).map(|t| t as u8)
}

impl Sessions {
    /// The cached group of `track` (default: the first video track) of `stream`'s
    /// publisher here, as a file.
    pub async fn fetch_group(
        &self,
        stream: &str,
        track: Option<u8>,
    ) -> Result<Fetched, FetchError> {
        let (track, request, rx) = {
            let mut g = self.link.lock();
            g.node.ready()?;
            let spec = g.node.publisher_of(stream).ok_or(FetchError::NoPublisher)?;
            let track = match track {
                Some(t) => t,
                None => first_video(spec).ok_or(FetchError::NoVideoTrack)?,
            };
            let id = spec.id;
            let (request, cmd, rx) = g.node.begin_fetch(id, track).ok_or(FetchError::Busy)?;
            if let Err(e) = g.send(&cmd) {
                g.node.end_fetch(request);
                return Err(e.into());
            }
            (track, request, rx)
        };
        let (codec, packets) = match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(Ok(got))) => got,
            Ok(Ok(Err(reason))) => return Err(FetchError::NoGroup { track, reason }),
            Ok(Err(_)) => return Err(FetchError::Gone),
            Err(_) => {
                self.link.lock().node.end_fetch(request);
                return Err(FetchError::Timeout);
            }
        };
        let n = packets.len();
        let file = depay::file(codec, &packets).map_err(|reason| FetchError::Depay {
            track,
            packets: n,
            reason,
        })?;
        Ok(Fetched {
            track,
            codec,
            packets: n,
            file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_shared::command::UplinkTrack;

    #[test]
    fn the_default_track_is_the_first_with_a_video_codec() {
        let spec = |role| SessionSpec {
            role,
            ..crate::core::state::tests::spec(1)
        };
        let audio = UplinkTrack {
            nack: false,
            rtx: None,
            video: None,
        };
        let video = UplinkTrack {
            video: Some(VideoCodec::Vp8(96)),
            ..audio
        };
        let publisher = |uplink| Role::Publisher {
            ssrcs: vec![1, 2],
            clock_rates: Vec::new(),
            simulcast: None,
            uplink,
        };
        assert_eq!(first_video(&spec(publisher(vec![audio, video]))), Some(1));
        assert_eq!(first_video(&spec(publisher(vec![audio]))), None);
        assert_eq!(first_video(&spec(publisher(Vec::new()))), None);
        let relay = Role::RelayIn {
            ssrcs: Vec::new(),
            simulcast: None,
            video: vec![Some(VideoCodec::H264(102))],
        };
        assert_eq!(first_video(&spec(relay)), Some(0));
        assert_eq!(first_video(&spec(Role::RelayOut)), None);
    }
}

//! What a publisher sends: the steady stream of [`crate::pacing`] (`--rate`, the default), or
//! frame-shaped media (`--video`, `--audio`):
//!
//! - **video**: `--fps` frames a second, each a burst of packets all due at the frame's
//!   instant; a frame carries `bitrate / 8 / fps` bytes (datagram bytes, headers and tag
//!   included), a keyframe (one every `--keyframe-every` seconds, the first frame included)
//!   `--keyframe-factor` times that. A frame is cut into `ceil(bytes / --size)` packets,
//!   either as libwebrtc's packetizers do (`even`, the default: sizes differ by at most one
//!   byte, the larger ones last, as Chromium's VP8 frames measured in tests/gso_browser.rs)
//!   or as fixed-MTU packetizers do (`max`: all `--size` but a shorter last one). The marker
//!   bit ends each frame.
//! - **audio**: 50 packets a second (20 ms Opus frames) of 100–160 bytes, sizes varying
//!   packet to packet, on a second SSRC; with video, the two interleave in deadline order as
//!   a BUNDLEd browser stream does.
//!
//! Like `pacing`, everything is integer math on absolute deadlines and packets are numbered
//! in deadline order, so the measured window's publisher sequences are known up front.

use std::time::Duration;

use serde::Serialize;

use crate::pacing::{Due, Pacer, Schedule};
use crate::packet::{PAYLOAD_HEADER, RTP_HEADER};

const NS: u128 = 1_000_000_000;

/// Audio packets per second: one 20 ms Opus frame each.
pub const AUDIO_RATE: u64 = 50;
/// Audio datagram sizes (bytes, headers and tag included): a voice Opus frame at 32–48 kbit/s
/// is 80–120 bytes of payload.
pub const AUDIO_MIN: usize = 100;
pub const AUDIO_MAX: usize = 160;

/// How a frame is cut into packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Packetize {
    /// Sizes differ by at most one byte, the larger last (libwebrtc's `SplitAboutEqually`).
    Even,
    /// Every packet the maximum size but a shorter last one.
    Max,
}

/// The video of a frame-shaped load.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct VideoSpec {
    /// Bits per second, datagram bytes counted.
    pub bitrate: u64,
    pub fps: u64,
    /// Seconds between keyframes (0: only the first frame is one).
    pub keyframe_every: f64,
    /// A keyframe's size over a delta frame's.
    pub keyframe_factor: u64,
    pub packetize: Packetize,
}

/// What one publisher sends.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    /// `--rate` packets/s of `size` bytes, plus keyframe bursts (`pacing`).
    Steady {
        pacer: Pacer,
        size: usize,
    },
    Frames(Frames),
}

/// One publisher's frame-shaped schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frames {
    pub start_ns: u64,
    pub video: Option<Video>,
    /// Audio's first packet, if there is audio.
    pub audio_start_ns: Option<u64>,
    /// Smallest datagram the bench can send (its payload header must fit).
    pub min: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Video {
    pub fps: u64,
    /// Datagram bytes of a delta frame and of a keyframe.
    pub delta_bytes: usize,
    pub key_bytes: usize,
    /// Frames from one keyframe to the next (0: the first frame only).
    pub key_interval: u64,
    /// Largest datagram.
    pub max: usize,
    pub packetize: Packetize,
}

impl Video {
    /// Frame 0 and every `key_interval`-th after it.
    fn is_key(&self, frame: u64) -> bool {
        frame == 0 || (self.key_interval > 0 && frame % self.key_interval == 0)
    }

    fn frame_bytes(&self, frame: u64) -> usize {
        if self.is_key(frame) {
            self.key_bytes
        } else {
            self.delta_bytes
        }
    }

    fn packets(&self, bytes: usize) -> u64 {
        bytes.div_ceil(self.max.max(1)).max(1) as u64
    }

    /// Size of packet `i` of a frame of `bytes` (before clamping to the minimum).
    fn packet_len(&self, bytes: usize, i: u64) -> usize {
        let n = self.packets(bytes);
        match self.packetize {
            Packetize::Even => {
                let base = bytes / n as usize;
                let larger = (bytes % n as usize) as u64;
                base + usize::from(i >= n - larger)
            }
            Packetize::Max if i + 1 < n => self.max,
            Packetize::Max => bytes - (n as usize - 1) * self.max,
        }
    }

    fn deadline(&self, start: u64, frame: u64) -> u64 {
        start + (u128::from(frame) * NS / u128::from(self.fps.max(1))) as u64
    }

    /// Frames with a deadline strictly before `t`.
    fn frames_before(&self, start: u64, t: u64) -> u64 {
        if t <= start {
            return 0;
        }
        ((u128::from(t - start) * u128::from(self.fps)).div_ceil(NS)) as u64
    }

    /// Packets of frames `0..f`.
    fn packets_of(&self, f: u64) -> u64 {
        if f == 0 {
            return 0;
        }
        let delta = self.packets(self.delta_bytes);
        let key = self.packets(self.key_bytes);
        // Frame 0 and every key_interval-th after it.
        let keys = match self.key_interval {
            0 => 1,
            k => f.div_ceil(k),
        };
        (f - keys) * delta + keys * key
    }
}

fn audio_deadline(start: u64, i: u64) -> u64 {
    start + (u128::from(i) * NS / u128::from(AUDIO_RATE)) as u64
}

fn audio_before(start: u64, t: u64) -> u64 {
    if t <= start {
        return 0;
    }
    ((u128::from(t - start) * u128::from(AUDIO_RATE)).div_ceil(NS)) as u64
}

/// Size of audio packet `i`: varying like a VBR codec's, the same every run.
fn audio_len(i: u64) -> usize {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 29;
    AUDIO_MIN + (x % (AUDIO_MAX - AUDIO_MIN + 1) as u64) as usize
}

/// A packet that is due: its deadline, the marker bit, its datagram size and its track
/// (0 video or the steady stream, 1 audio).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub deadline_ns: u64,
    pub marker: bool,
    pub len: usize,
    pub track: u8,
    /// Video: the frame's first packet, and whether the frame is a keyframe (what a
    /// simulcast packet's VP8 descriptor says, `crate::simulcast`). False otherwise.
    pub frame_start: bool,
    pub keyframe: bool,
}

impl Source {
    /// Packets with a deadline strictly before `t`: the publisher sequence of the first
    /// packet due at or after `t`.
    pub fn count_before(&self, t: u64) -> u64 {
        match self {
            Source::Steady { pacer, .. } => pacer.count_before(t),
            Source::Frames(f) => {
                let v = f
                    .video
                    .map_or(0, |v| v.packets_of(v.frames_before(f.start_ns, t)));
                v + f.audio_start_ns.map_or(0, |a| audio_before(a, t))
            }
        }
    }

    pub fn schedule(&self) -> Sched {
        match *self {
            Source::Steady { pacer, size } => Sched::Steady(Schedule::new(pacer), size),
            Source::Frames(f) => Sched::Frames(FrameSchedule {
                f,
                frame: 0,
                in_frame: 0,
                audio: 0,
                sent: 0,
            }),
        }
    }
}

/// Walks a [`Source`]'s packets in deadline order; the sender owns one per publisher.
#[derive(Clone, Debug)]
pub enum Sched {
    Steady(Schedule, usize),
    Frames(FrameSchedule),
}

#[derive(Clone, Debug)]
pub struct FrameSchedule {
    f: Frames,
    /// The current (or next) video frame and its packets already handed out.
    frame: u64,
    in_frame: u64,
    audio: u64,
    sent: u64,
}

impl FrameSchedule {
    fn video_deadline(&self) -> u64 {
        self.f
            .video
            .map_or(u64::MAX, |v| v.deadline(self.f.start_ns, self.frame))
    }

    fn audio_deadline(&self) -> u64 {
        self.f
            .audio_start_ns
            .map_or(u64::MAX, |a| audio_deadline(a, self.audio))
    }

    fn next_due(&mut self, now: u64) -> Option<Packet> {
        let vd = self.video_deadline();
        let ad = self.audio_deadline();
        // A frame is a burst: once started it is sent whole. Ties go to video; any order
        // among equal deadlines keeps `count_before` exact.
        if let Some(v) = self
            .f
            .video
            .filter(|_| self.in_frame > 0 || (vd <= ad && vd <= now))
        {
            let bytes = v.frame_bytes(self.frame);
            let n = v.packets(bytes);
            let len = v.packet_len(bytes, self.in_frame).max(self.f.min);
            let frame_start = self.in_frame == 0;
            let keyframe = v.is_key(self.frame);
            self.in_frame += 1;
            let marker = self.in_frame == n;
            if marker {
                self.in_frame = 0;
                self.frame += 1;
            }
            self.sent += 1;
            return Some(Packet {
                deadline_ns: vd,
                marker,
                len,
                track: 0,
                frame_start,
                keyframe,
            });
        }
        if ad <= now {
            let len = audio_len(self.audio).max(self.f.min);
            self.audio += 1;
            self.sent += 1;
            return Some(Packet {
                deadline_ns: ad,
                marker: false,
                len,
                track: 1,
                frame_start: false,
                keyframe: false,
            });
        }
        None
    }
}

impl Sched {
    /// Packets handed out so far: the next publisher sequence.
    pub fn sent(&self) -> u64 {
        match self {
            Sched::Steady(s, _) => s.sent(),
            Sched::Frames(f) => f.sent,
        }
    }

    /// Deadline of the next packet.
    pub fn next_deadline(&self) -> u64 {
        match self {
            Sched::Steady(s, _) => s.next_deadline(),
            Sched::Frames(f) if f.in_frame > 0 => f.video_deadline(),
            Sched::Frames(f) => f.video_deadline().min(f.audio_deadline()),
        }
    }

    /// The next packet if its deadline is at or before `now`.
    pub fn next_due(&mut self, now: u64) -> Option<Packet> {
        match self {
            Sched::Steady(s, size) => s.next_due(now).map(
                |Due {
                     deadline_ns,
                     marker,
                 }| Packet {
                    deadline_ns,
                    marker,
                    len: *size,
                    track: 0,
                    frame_start: false,
                    keyframe: false,
                },
            ),
            Sched::Frames(f) => f.next_due(now),
        }
    }
}

/// The frame-shaped source of one publisher: `video` (if any) from `start_ns`, audio (if
/// `audio`) from `audio_start_ns`; datagrams at most `max` and at least `min` bytes.
pub fn frames(
    video: Option<&VideoSpec>,
    audio: bool,
    (start_ns, audio_start_ns): (u64, u64),
    (min, max): (usize, usize),
) -> Frames {
    Frames {
        start_ns,
        video: video.map(|v| {
            let fps = v.fps.max(1);
            let delta = (v.bitrate / 8 / fps).max(1) as usize;
            Video {
                fps,
                delta_bytes: delta,
                key_bytes: delta * v.keyframe_factor.max(1) as usize,
                key_interval: Duration::try_from_secs_f64(v.keyframe_every)
                    .map_or(0, |d| (d.as_secs_f64() * fps as f64).round() as u64),
                max,
                packetize: v.packetize,
            }
        }),
        audio_start_ns: audio.then_some(audio_start_ns),
        min,
    }
}

/// Which stream a bench packet belongs to, in the top byte of its payload's publisher
/// field (0 for the steady stream, so its payloads read as they always did).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Steady,
    Video,
    Audio,
}

impl Kind {
    pub fn bits(self) -> u32 {
        match self {
            Kind::Steady => 0,
            Kind::Video => 1 << 24,
            Kind::Audio => 2 << 24,
        }
    }

    pub fn of(publisher: u32) -> Kind {
        match publisher >> 24 {
            1 => Kind::Video,
            2 => Kind::Audio,
            _ => Kind::Steady,
        }
    }

    /// The kind of a packet of `source` on `track`.
    pub fn for_packet(source: &Source, track: usize) -> Kind {
        match (source, track) {
            (Source::Steady { .. }, _) => Kind::Steady,
            (_, 1) => Kind::Audio,
            _ => Kind::Video,
        }
    }
}

/// Frame-shaped packets carry their track's RTP sequence number right after the payload
/// header (the filler is otherwise constant): a receiver checks the node's renumbering
/// against it, per track.
pub fn write_track_seq(payload: &mut [u8], kind: Kind, seq: u16) {
    if kind != Kind::Steady {
        if let Some(b) = payload.get_mut(PAYLOAD_HEADER..PAYLOAD_HEADER + 2) {
            b.copy_from_slice(&seq.to_be_bytes());
        }
    }
}

/// The track RTP sequence [`write_track_seq`] put in `payload`.
pub fn track_seq(payload: &[u8]) -> Option<u16> {
    let b = payload.get(PAYLOAD_HEADER..PAYLOAD_HEADER + 2)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

/// The audio track's SSRC of a publisher whose video (or steady) SSRC is `ssrc`.
pub fn audio_ssrc(ssrc: u32) -> u32 {
    ssrc ^ 0x0000_8000
}

/// Bytes a frame-shaped datagram needs beyond the RTP header, payload header and SRTP tag:
/// the track sequence.
pub const TRACK_SEQ: usize = 2;

/// What shapes a run's load (the part of `run::LoadSpec` this module reads).
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Steady packets per second per publisher (without `video` and `audio`).
    pub rate: u64,
    /// Datagram bytes (steady), or the largest (frames).
    pub size: usize,
    /// A burst of `keyframe_packets` every this long (steady).
    pub keyframe_every: std::time::Duration,
    pub keyframe_packets: u64,
    pub video: Option<VideoSpec>,
    pub audio: bool,
}

/// Publisher `p` of `np`'s source for `spec`, its first deadline at `start` (publishers
/// staggered by a fraction of the interval so their packets interleave); `overhead` is the
/// SRTP tag the datagram sizes include.
pub fn source(spec: &Load, start: u64, (p, np): (u64, u64), overhead: usize) -> Source {
    if spec.video.is_none() && !spec.audio {
        let interval = 1_000_000_000 / spec.rate.max(1);
        let kf = spec.keyframe_every.as_nanos() as u64;
        return Source::Steady {
            pacer: Pacer {
                start_ns: start + interval * p / np,
                rate: spec.rate,
                burst_interval_ns: kf,
                burst_offset_ns: kf * p / np,
                burst_packets: spec.keyframe_packets,
            },
            size: spec.size,
        };
    }
    let frame = 1_000_000_000 / spec.video.map_or(30, |v| v.fps.max(1));
    let audio = 1_000_000_000 / AUDIO_RATE;
    let min = RTP_HEADER + PAYLOAD_HEADER + TRACK_SEQ + overhead;
    Source::Frames(frames(
        spec.video.as_ref(),
        spec.audio,
        (
            start + frame * p / np,
            start + audio * (2 * p + 1) / (2 * np),
        ),
        (min, spec.size.max(min)),
    ))
}

impl Source {
    pub fn is_steady(&self) -> bool {
        matches!(self, Source::Steady { .. })
    }
}

/// How a run's load is described in its report.
#[derive(Clone, Debug, Serialize)]
pub struct LoadShape {
    /// "steady" (`--rate`) or "frames" (`--video` and/or `--audio`).
    pub shape: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoSpec>,
    pub audio: bool,
    /// Publisher packets per second and bits per second (datagram bytes), averaged over a
    /// long window.
    pub pps: f64,
    pub bps: f64,
}

/// The report's description of `spec`'s load (per publisher).
pub fn describe(spec: &Load) -> LoadShape {
    let src = source(spec, 0, (0, 1), 16);
    let t = 60_000_000_000u64;
    let pps = src.count_before(t) as f64 / 60.0;
    let bps = match (&src, spec.video) {
        (Source::Steady { .. }, _) => pps * spec.size as f64 * 8.0,
        (_, v) => {
            let audio = if spec.audio {
                AUDIO_RATE as f64 * (AUDIO_MIN + AUDIO_MAX) as f64 / 2.0 * 8.0
            } else {
                0.0
            };
            audio + v.map_or(0.0, |v| v.bitrate as f64)
        }
    };
    LoadShape {
        shape: if src.is_steady() { "steady" } else { "frames" },
        video: spec.video,
        audio: spec.audio,
        pps,
        bps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(packetize: Packetize) -> Video {
        Video {
            fps: 30,
            delta_bytes: 10_000,
            key_bytes: 50_000,
            key_interval: 60,
            max: 1200,
            packetize,
        }
    }

    #[test]
    fn frames_are_cut_like_libwebrtc_or_at_the_mtu() {
        let v = video(Packetize::Even);
        // 10,000 bytes in 9 packets: 1,111 × 8 ... 10,000 = 9 × 1,111 + 1.
        let sizes: Vec<usize> = (0..9).map(|i| v.packet_len(10_000, i)).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 10_000);
        assert_eq!(sizes[..8], [1111; 8]);
        assert_eq!(sizes[8], 1112, "the larger packets last");
        let v = video(Packetize::Max);
        let sizes: Vec<usize> = (0..9).map(|i| v.packet_len(10_000, i)).collect();
        assert_eq!(sizes[..8], [1200; 8]);
        assert_eq!(sizes[8], 400);
    }

    #[test]
    fn counts_match_the_schedule() {
        for packetize in [Packetize::Even, Packetize::Max] {
            let f = Frames {
                start_ns: 1_000,
                video: Some(video(packetize)),
                audio_start_ns: Some(1_000 + 7_000_000),
                min: 52,
            };
            let src = Source::Frames(f);
            let mut s = src.schedule();
            let end = 1_000 + 5_000_000_000;
            let mut last = 0;
            let (mut markers, mut audio, mut bytes) = (0, 0, 0);
            while s.next_deadline() < end {
                let now = s.next_deadline();
                let p = s.next_due(now).expect("due at its deadline");
                assert!(p.deadline_ns >= last, "deadline order");
                last = p.deadline_ns;
                assert!(src.count_before(p.deadline_ns) < s.sent());
                assert!(src.count_before(p.deadline_ns + 1) >= s.sent());
                markers += u64::from(p.marker);
                if p.track == 1 {
                    audio += 1;
                    assert!((AUDIO_MIN..=AUDIO_MAX).contains(&p.len));
                } else {
                    bytes += p.len;
                }
            }
            assert_eq!(s.sent(), src.count_before(end));
            assert_eq!(markers, 150, "one marker per frame");
            assert_eq!(audio, 250);
            // 150 frames, 3 of them keyframes (0, 60, 120).
            assert_eq!(bytes, 147 * 10_000 + 3 * 50_000);
        }
    }

    #[test]
    fn a_frame_is_a_burst_at_one_instant() {
        let f = Frames {
            start_ns: 0,
            video: Some(video(Packetize::Even)),
            audio_start_ns: None,
            min: 52,
        };
        let mut s = Source::Frames(f).schedule();
        // At t = 0 the keyframe is due: 50,000 bytes in 42 packets, all now.
        let mut n = 0;
        while let Some(p) = s.next_due(0) {
            assert_eq!(p.deadline_ns, 0);
            n += 1;
        }
        assert_eq!(n, 42);
        assert!(s.next_due(33_333_332).is_none());
        assert_eq!(s.next_due(33_333_333).map(|p| p.len), Some(1111));
    }

    #[test]
    fn frame_starts_and_keyframes_are_marked() {
        let f = Frames {
            start_ns: 0,
            video: Some(video(Packetize::Even)),
            audio_start_ns: Some(5_000_000),
            min: 52,
        };
        let mut s = Source::Frames(f).schedule();
        let (mut starts, mut key_starts, mut key_packets, mut prev_marker) = (0, 0, 0, true);
        while s.next_deadline() < 3_000_000_000 {
            let p = s.next_due(s.next_deadline()).expect("due");
            if p.track == 1 {
                assert!(!p.frame_start && !p.keyframe, "audio has no frames");
                continue;
            }
            // A frame starts right after the previous one's marker.
            assert_eq!(p.frame_start, prev_marker);
            prev_marker = p.marker;
            starts += u64::from(p.frame_start);
            key_starts += u64::from(p.frame_start && p.keyframe);
            key_packets += u64::from(p.keyframe);
        }
        assert_eq!(starts, 90);
        // Frames 0 and 60, 42 packets each.
        assert_eq!((key_starts, key_packets), (2, 84));
    }

    #[test]
    fn spec_to_frames() {
        let v = VideoSpec {
            bitrate: 2_400_000,
            fps: 30,
            keyframe_every: 2.0,
            keyframe_factor: 5,
            packetize: Packetize::Even,
        };
        let f = frames(Some(&v), true, (10, 20), (52, 1200));
        let fv = f.video.expect("video");
        assert_eq!(
            (fv.delta_bytes, fv.key_bytes, fv.key_interval),
            (10_000, 50_000, 60)
        );
        assert_eq!(f.audio_start_ns, Some(20));
    }
}

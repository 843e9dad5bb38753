//! Data channel events on a relay link: framing, fragmentation and in-order reassembly.
//!
//! Sans-IO. The sending node's slow path turns a hub [`Delivery`](super::Delivery) for a
//! relay-out into a [`Frame`] and [`encode`]s it into fragments; the relay-out's worker
//! puts each fragment in an RTP packet of the reserved [`SSRC`] and [`PAYLOAD_TYPE`] with
//! its own sequence numbers and protects it with the link key. The receiving node's
//! relay-in worker hands such packets (authenticated, so they come from the far node) to
//! its slow path with their sequence number, where a [`Receiver`] puts them back in order,
//! waits a bounded time for the link's NACKs to repair a gap, reassembles fragments and
//! yields frames for the hub.
//!
//! Riding on RTP gives the data channel traffic the link's SRTP authentication, encryption
//! and replay protection, and the link's gap NACKs repair a lost fragment, without a second
//! association between nodes.
//!
//! # Wire format (RTP payload)
//!
//! ```text
//! 0        1        2        4
//! | kind   | flags  | key (u16 BE) | body chunk ...
//! ```
//!
//! `kind` is [`KIND_OPEN`], [`KIND_MESSAGE`] or [`KIND_CLOSE`]; `flags` has [`FIRST`] on
//! a frame's first fragment and [`LAST`] on its last (both on a frame of one fragment);
//! `key` is the publisher's channel key. The body, split across the fragments:
//!
//! - open: `ordered` u8, reliability type u8 (0 reliable, 1 rexmit, 2 timed), reliability
//!   value u32, priority u16, label length u16, label, protocol (the rest), UTF-8;
//! - message: PPID u32, then the payload;
//! - close: empty.
//!
//! # Bounds and bad input
//!
//! A body is at most [`MAX_BODY`] bytes, so a partial frame never holds more; the reorder
//! window is [`WINDOW`] packets; a gap is waited for at most [`GAP_WAIT`]. Anything that
//! does not parse comes back as a [`Dropped`] reason for the caller to count; nothing here
//! panics on input.

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use super::{ChannelParams, DataCommand, Reliability, MAX_MESSAGE};

/// SSRC of a relay link's data channel packets. Relay links carry the publisher's media
/// SSRCs unchanged, so one of them could in principle be this value (a 1 in 2^32 chance
/// per track); the relay-in checks the payload type too, which browsers never use for
/// media on a link (it is 127, outside what the node negotiates).
pub const SSRC: u32 = 0x5344_4331; // "SDC1"
/// Payload type of a relay link's data channel packets.
pub const PAYLOAD_TYPE: u8 = 127;

pub const KIND_OPEN: u8 = 1;
pub const KIND_MESSAGE: u8 = 2;
pub const KIND_CLOSE: u8 = 3;
pub const FIRST: u8 = 0x01;
pub const LAST: u8 = 0x02;

/// Bytes of the fragment header.
pub const HEADER: usize = 4;
/// Body bytes per fragment: with the 12-byte RTP header, the 4-byte fragment header and
/// the SRTP tag (16 bytes at most) a fragment stays under 1200 bytes, inside any link MTU
/// and the media socket's 1500-byte datagram limit.
pub const FRAGMENT: usize = 1150;
/// Largest body: a [`MAX_MESSAGE`] payload and its PPID, or an open whose label and
/// protocol fit the same budget.
pub const MAX_BODY: usize = MAX_MESSAGE + 4;
/// Packets held out of order while a gap waits for repair. The link NACKs a gap for
/// `NACK_GIVE_UP` (300 ms); a 64 KiB message is 57 fragments, so this holds four of them.
pub const WINDOW: usize = 256;
/// How long a gap is waited for before the frames around it are given up: a little over
/// the relay-in's NACK give-up time, so every retry had its chance.
pub const GAP_WAIT: Duration = Duration::from_millis(350);

/// A data channel event crossing a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Open { key: u16, params: ChannelParams },
    Message { key: u16, ppid: u32, payload: Bytes },
    Close { key: u16 },
}

/// A hub delivery to a relay member: the hub gives relay members the publisher's key as
/// the channel id, so the command maps one to one.
impl From<DataCommand> for Frame {
    fn from(c: DataCommand) -> Self {
        match c {
            DataCommand::Open { channel, params } => Frame::Open {
                key: channel,
                params,
            },
            DataCommand::Send {
                channel,
                ppid,
                payload,
            } => Frame::Message {
                key: channel,
                ppid,
                payload,
            },
            DataCommand::Close { channel } => Frame::Close { key: channel },
        }
    }
}

/// Why a frame could not be encoded (the sending side counts it as dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("data channel frame body is over {MAX_BODY} bytes")]
    TooLong,
}

/// Why received data went nowhere. The caller counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Shorter than the fragment header, an unknown kind or flags, or a body that does not
    /// decode.
    Malformed,
    /// A fragment that does not continue the frame being reassembled.
    OutOfSequence,
    /// A frame whose body grew beyond [`MAX_BODY`].
    TooLong,
    /// A partial frame given up because a fragment of it never arrived.
    Lost,
}

/// Encode `frame` into fragments, appended to `out` (each one RTP payload). Returns how
/// many were appended.
pub fn encode(frame: &Frame, out: &mut Vec<Vec<u8>>) -> Result<usize, EncodeError> {
    let (kind, key, body) = match frame {
        Frame::Open { key, params } => (KIND_OPEN, *key, open_body(params)?),
        Frame::Message { key, ppid, payload } => {
            if payload.len() + 4 > MAX_BODY {
                return Err(EncodeError::TooLong);
            }
            let mut b = BytesMut::with_capacity(4 + payload.len());
            b.put_u32(*ppid);
            b.put_slice(payload);
            (KIND_MESSAGE, *key, b.freeze())
        }
        Frame::Close { key } => (KIND_CLOSE, *key, Bytes::new()),
    };
    let chunks = body.len().div_ceil(FRAGMENT).max(1);
    for i in 0..chunks {
        let chunk = body
            .get(i * FRAGMENT..((i + 1) * FRAGMENT).min(body.len()))
            .unwrap_or_default();
        let mut flags = 0;
        if i == 0 {
            flags |= FIRST;
        }
        if i + 1 == chunks {
            flags |= LAST;
        }
        let mut f = Vec::with_capacity(HEADER + chunk.len());
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&key.to_be_bytes());
        f.extend_from_slice(chunk);
        out.push(f);
    }
    Ok(chunks)
}

fn open_body(p: &ChannelParams) -> Result<Bytes, EncodeError> {
    let label = p.label.as_bytes();
    let protocol = p.protocol.as_bytes();
    let len = 10 + label.len() + protocol.len();
    let label_len = u16::try_from(label.len()).map_err(|_| EncodeError::TooLong)?;
    if len > MAX_BODY {
        return Err(EncodeError::TooLong);
    }
    let (rtype, rvalue) = match p.reliability {
        Reliability::Reliable => (0u8, 0u32),
        Reliability::Rexmit(n) => (1, n),
        Reliability::Timed(ms) => (2, ms),
    };
    let mut b = BytesMut::with_capacity(len);
    b.put_u8(u8::from(p.ordered));
    b.put_u8(rtype);
    b.put_u32(rvalue);
    b.put_u16(p.priority);
    b.put_u16(label_len);
    b.put_slice(label);
    b.put_slice(protocol);
    Ok(b.freeze())
}

fn decode_body(kind: u8, key: u16, body: Bytes) -> Result<Frame, Dropped> {
    match kind {
        KIND_MESSAGE => {
            let ppid = body
                .get(..4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_be_bytes)
                .ok_or(Dropped::Malformed)?;
            Ok(Frame::Message {
                key,
                ppid,
                payload: body.slice(4..),
            })
        }
        KIND_CLOSE if body.is_empty() => Ok(Frame::Close { key }),
        KIND_OPEN => decode_open(&body).map(|params| Frame::Open { key, params }),
        _ => Err(Dropped::Malformed),
    }
}

fn decode_open(b: &[u8]) -> Result<ChannelParams, Dropped> {
    let fixed = b.get(..10).ok_or(Dropped::Malformed)?;
    let ordered = match fixed[0] {
        0 => false,
        1 => true,
        _ => return Err(Dropped::Malformed),
    };
    let rvalue = u32::from_be_bytes([fixed[2], fixed[3], fixed[4], fixed[5]]);
    let reliability = match fixed[1] {
        0 => Reliability::Reliable,
        1 => Reliability::Rexmit(rvalue),
        2 => Reliability::Timed(rvalue),
        _ => return Err(Dropped::Malformed),
    };
    let priority = u16::from_be_bytes([fixed[6], fixed[7]]);
    let label_len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
    let rest = b.get(10..).ok_or(Dropped::Malformed)?;
    let label = rest.get(..label_len).ok_or(Dropped::Malformed)?;
    let protocol = rest.get(label_len..).ok_or(Dropped::Malformed)?;
    let text = |s: &[u8]| {
        std::str::from_utf8(s)
            .map(str::to_owned)
            .map_err(|_| Dropped::Malformed)
    };
    Ok(ChannelParams {
        label: text(label)?,
        protocol: text(protocol)?,
        ordered,
        reliability,
        priority,
    })
}

struct Partial {
    kind: u8,
    key: u16,
    body: BytesMut,
}

/// One relay link's incoming data channel packets, put back in order and reassembled.
///
/// Fed each authenticated packet's sequence number and payload ([`Receiver::handle`]) and
/// polled with the time ([`Receiver::poll`]); both append what became ready to `out`.
pub struct Receiver {
    /// The next sequence number to hand on; `None` before the first packet.
    next: Option<u16>,
    /// Out-of-order packets by `seq % WINDOW`.
    slots: Vec<Option<(u16, Bytes)>>,
    held: usize,
    /// Since when `next` is missing while later packets wait.
    gap_since: Option<Instant>,
    partial: Option<Partial>,
}

impl Default for Receiver {
    fn default() -> Self {
        Self::new()
    }
}

impl Receiver {
    pub fn new() -> Self {
        Self {
            next: None,
            slots: vec![None; WINDOW],
            held: 0,
            gap_since: None,
            partial: None,
        }
    }

    /// Packet `seq` with RTP payload `payload` arrived at `now`. Duplicates and packets
    /// older than what was handed on are ignored.
    pub fn handle(
        &mut self,
        seq: u16,
        payload: Bytes,
        now: Instant,
        out: &mut Vec<Result<Frame, Dropped>>,
    ) {
        let next = *self.next.get_or_insert(seq);
        let ahead = usize::from(seq.wrapping_sub(next));
        if ahead >= 0x8000 {
            if 0x1_0000 - ahead <= WINDOW {
                return; // a late duplicate, or a packet whose gap was given up
            }
            // Far behind: the far node's relay-out started again with a new random
            // numbering (a data plane restart). Follow it, or nothing would get through.
            self.skip_to(seq, out);
        } else if ahead >= WINDOW {
            // Too far ahead to wait for the gap: everything before it is lost.
            self.skip_to(seq, out);
        }
        let slot = &mut self.slots[usize::from(seq) % WINDOW];
        if slot.is_none() {
            self.held += 1;
        }
        *slot = Some((seq, payload));
        self.drain(now, out);
    }

    /// Give up a gap that waited [`GAP_WAIT`]: the frame it broke is lost, and what follows
    /// is handed on.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Result<Frame, Dropped>>) {
        let Some(since) = self.gap_since else {
            return;
        };
        if now.saturating_duration_since(since) < GAP_WAIT {
            return;
        }
        let Some(next) = self.next else { return };
        // The oldest packet held is where delivery resumes.
        let resume = (1..WINDOW as u16)
            .map(|d| next.wrapping_add(d))
            .find(|s| matches!(self.slots[usize::from(*s) % WINDOW], Some((q, _)) if q == *s));
        match resume {
            Some(s) => {
                self.skip_to(s, out);
                self.drain(now, out);
            }
            None => self.gap_since = None,
        }
    }

    /// Whether a gap is being waited for (the caller polls only then).
    pub fn waiting(&self) -> bool {
        self.gap_since.is_some()
    }

    fn skip_to(&mut self, seq: u16, out: &mut Vec<Result<Frame, Dropped>>) {
        if self.partial.take().is_some() {
            out.push(Err(Dropped::Lost));
        }
        // Packets held before `seq` cannot be handed on in order any more.
        if let Some(next) = self.next {
            let behind = usize::from(seq.wrapping_sub(next)).min(WINDOW);
            for d in 0..behind {
                let s = next.wrapping_add(d as u16);
                let slot = &mut self.slots[usize::from(s) % WINDOW];
                if matches!(slot, Some((q, _)) if *q == s) {
                    *slot = None;
                    self.held -= 1;
                }
            }
        }
        self.next = Some(seq);
        self.gap_since = None;
    }

    fn drain(&mut self, now: Instant, out: &mut Vec<Result<Frame, Dropped>>) {
        let Some(mut next) = self.next else { return };
        loop {
            let slot = &mut self.slots[usize::from(next) % WINDOW];
            match slot.take() {
                Some((q, payload)) if q == next => {
                    self.held -= 1;
                    self.fragment(payload, out);
                    next = next.wrapping_add(1);
                }
                other => {
                    *slot = other;
                    break;
                }
            }
        }
        self.next = Some(next);
        self.gap_since = match (self.held, self.gap_since) {
            (0, _) => None,
            (_, Some(t)) => Some(t),
            (_, None) => Some(now),
        };
    }

    fn fragment(&mut self, payload: Bytes, out: &mut Vec<Result<Frame, Dropped>>) {
        let Some(&[kind, flags, k0, k1]) = payload.get(..HEADER) else {
            return out.push(Err(Dropped::Malformed));
        };
        if !(KIND_OPEN..=KIND_CLOSE).contains(&kind) || flags & !(FIRST | LAST) != 0 {
            return out.push(Err(Dropped::Malformed));
        }
        let key = u16::from_be_bytes([k0, k1]);
        let chunk = payload.slice(HEADER..);
        if flags & FIRST != 0 {
            if self.partial.take().is_some() {
                out.push(Err(Dropped::OutOfSequence));
            }
            if flags & LAST != 0 {
                // One fragment: no copy.
                return out.push(decode_body(kind, key, chunk));
            }
            let mut body = BytesMut::with_capacity(chunk.len() * 2);
            body.put_slice(&chunk);
            self.partial = Some(Partial { kind, key, body });
            return;
        }
        let Some(p) = self
            .partial
            .as_mut()
            .filter(|p| p.kind == kind && p.key == key)
        else {
            self.partial = None;
            return out.push(Err(Dropped::OutOfSequence));
        };
        if p.body.len() + chunk.len() > MAX_BODY {
            self.partial = None;
            return out.push(Err(Dropped::TooLong));
        }
        p.body.put_slice(&chunk);
        if flags & LAST != 0 {
            if let Some(p) = self.partial.take() {
                out.push(decode_body(p.kind, p.key, p.body.freeze()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> ChannelParams {
        ChannelParams {
            label: "chat".into(),
            protocol: "json".into(),
            ordered: true,
            reliability: Reliability::Timed(500),
            priority: 256,
        }
    }

    fn frames(f: &Frame) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        encode(f, &mut out).expect("encodes");
        out
    }

    fn feed(
        r: &mut Receiver,
        seq0: u16,
        frags: &[Vec<u8>],
        t: Instant,
    ) -> Vec<Result<Frame, Dropped>> {
        let mut out = Vec::new();
        for (i, f) in frags.iter().enumerate() {
            r.handle(
                seq0.wrapping_add(i as u16),
                Bytes::from(f.clone()),
                t,
                &mut out,
            );
        }
        out
    }

    #[test]
    fn every_kind_round_trips() {
        let t = Instant::now();
        let all = [
            Frame::Open {
                key: 0,
                params: params(),
            },
            Frame::Message {
                key: 0,
                ppid: 51,
                payload: Bytes::from_static(b"hi"),
            },
            Frame::Message {
                key: 0,
                ppid: 57,
                payload: Bytes::new(),
            },
            Frame::Close { key: 0 },
        ];
        let mut r = Receiver::new();
        let mut seq = 65534; // across the wrap
        for f in &all {
            let frags = frames(f);
            assert_eq!(frags.len(), 1);
            assert_eq!(feed(&mut r, seq, &frags, t), vec![Ok(f.clone())]);
            seq = seq.wrapping_add(1);
        }
    }

    #[test]
    fn largest_message_fragments_and_reassembles_out_of_order() {
        let t = Instant::now();
        let payload = Bytes::from((0..MAX_MESSAGE).map(|i| i as u8).collect::<Vec<_>>());
        let f = Frame::Message {
            key: 4,
            ppid: 53,
            payload,
        };
        let mut frags = frames(&f);
        assert_eq!(frags.len(), (MAX_MESSAGE + 4).div_ceil(FRAGMENT));
        assert!(frags.iter().all(|x| x.len() <= HEADER + FRAGMENT));
        let mut r = Receiver::new();
        let mut out = Vec::new();
        // Fragment 3 arrives last (as a NACK repair would deliver it).
        let late = frags.remove(3);
        for (i, x) in frags.iter().enumerate() {
            let seq = if i < 3 { i } else { i + 1 } as u16;
            r.handle(seq, Bytes::from(x.clone()), t, &mut out);
        }
        assert!(out.is_empty() && r.waiting(), "held for the gap");
        r.handle(3, Bytes::from(late), t, &mut out);
        assert_eq!(out, vec![Ok(f)]);
        assert!(!r.waiting());
        assert_eq!(r.held, 0);
    }

    #[test]
    fn too_long_is_refused_on_both_sides() {
        let big = Bytes::from(vec![0u8; MAX_MESSAGE + 1]);
        let mut out = Vec::new();
        let f = Frame::Message {
            key: 1,
            ppid: 53,
            payload: big,
        };
        assert_eq!(encode(&f, &mut out), Err(EncodeError::TooLong));
        // A sender that ignores the bound: the receiver stops at MAX_BODY.
        let t = Instant::now();
        let mut r = Receiver::new();
        let chunk = vec![0u8; FRAGMENT];
        let n = MAX_BODY / FRAGMENT + 2;
        let mut got = Vec::new();
        for i in 0..n {
            let flags = if i == 0 { FIRST } else { 0 };
            let mut p = vec![KIND_MESSAGE, flags, 0, 1];
            p.extend_from_slice(&chunk);
            r.handle(i as u16, Bytes::from(p), t, &mut got);
        }
        assert!(got.contains(&Err(Dropped::TooLong)));
        assert!(r.partial.as_ref().is_none_or(|p| p.body.len() <= MAX_BODY));
    }

    #[test]
    fn malformed_input_is_dropped_and_counted() {
        let t = Instant::now();
        let mut r = Receiver::new();
        let bad: [&[u8]; 7] = [
            b"",
            &[KIND_MESSAGE, FIRST | LAST, 0], // short header
            &[9, FIRST | LAST, 0, 0],         // unknown kind
            &[KIND_MESSAGE, 0x80, 0, 0],      // unknown flag
            &[KIND_MESSAGE, FIRST | LAST, 0, 0, 1, 2], // ppid cut short
            &[KIND_OPEN, FIRST | LAST, 0, 0, 1, 0, 0, 0, 0], // open cut short
            &[KIND_CLOSE, FIRST | LAST, 0, 0, 1], // close with a body
        ];
        let mut out = Vec::new();
        for (i, b) in bad.iter().enumerate() {
            r.handle(i as u16, Bytes::copy_from_slice(b), t, &mut out);
        }
        assert_eq!(out, vec![Err(Dropped::Malformed); bad.len()]);
        // Invalid UTF-8 in a label, and a label length past the end.
        let mut open = frames(&Frame::Open {
            key: 2,
            params: params(),
        })
        .remove(0);
        open[HEADER + 10] = 0xff;
        let mut long = frames(&Frame::Open {
            key: 2,
            params: params(),
        })
        .remove(0);
        long[HEADER + 9] = 200;
        out.clear();
        r.handle(7, Bytes::from(open), t, &mut out);
        r.handle(8, Bytes::from(long), t, &mut out);
        assert_eq!(out, vec![Err(Dropped::Malformed); 2]);
        // A continuation with no first fragment.
        out.clear();
        r.handle(
            9,
            Bytes::from_static(&[KIND_MESSAGE, LAST, 0, 0, 1]),
            t,
            &mut out,
        );
        assert_eq!(out, vec![Err(Dropped::OutOfSequence)]);
    }

    #[test]
    fn unrepaired_gap_loses_the_broken_frame_only() {
        let t = Instant::now();
        let big = Frame::Message {
            key: 1,
            ppid: 53,
            payload: Bytes::from(vec![7u8; 3000]),
        };
        let small = Frame::Message {
            key: 1,
            ppid: 51,
            payload: Bytes::from_static(b"after"),
        };
        let mut frags = frames(&big);
        assert_eq!(frags.len(), 3);
        frags.extend(frames(&small));
        frags.remove(1); // never repaired
        let mut r = Receiver::new();
        let mut out = Vec::new();
        r.handle(100, Bytes::from(frags[0].clone()), t, &mut out);
        r.handle(102, Bytes::from(frags[1].clone()), t, &mut out);
        r.handle(103, Bytes::from(frags[2].clone()), t, &mut out);
        assert!(out.is_empty());
        r.poll(t + GAP_WAIT / 2, &mut out);
        assert!(out.is_empty(), "still waiting for a repair");
        r.poll(t + GAP_WAIT, &mut out);
        assert_eq!(
            out,
            vec![Err(Dropped::Lost), Err(Dropped::OutOfSequence), Ok(small)]
        );
        assert!(!r.waiting());
        // Late arrival of the given-up packet is ignored.
        out.clear();
        r.handle(
            101,
            Bytes::from_static(&[KIND_MESSAGE, 0, 0, 1]),
            t,
            &mut out,
        );
        assert!(out.is_empty());
    }

    #[test]
    fn jump_beyond_the_window_resynchronises() {
        let t = Instant::now();
        let mut r = Receiver::new();
        let m = Frame::Close { key: 3 };
        let mut out = Vec::new();
        r.handle(10, Bytes::from(frames(&m).remove(0)), t, &mut out);
        r.handle(12, Bytes::from(frames(&m).remove(0)), t, &mut out);
        assert_eq!(out.len(), 1);
        r.handle(
            10 + WINDOW as u16 + 50,
            Bytes::from(frames(&m).remove(0)),
            t,
            &mut out,
        );
        assert_eq!(
            out.len(),
            2,
            "the held packet is given up, the new one handed on"
        );
        assert_eq!(r.held, 0);
        assert!(!r.waiting());
    }

    #[test]
    fn sender_restart_with_numbers_far_behind_is_followed() {
        let t = Instant::now();
        let mut r = Receiver::new();
        let m = Frame::Close { key: 3 };
        let mut out = Vec::new();
        r.handle(40_000, Bytes::from(frames(&m).remove(0)), t, &mut out);
        r.handle(39_990, Bytes::from(frames(&m).remove(0)), t, &mut out);
        assert_eq!(out.len(), 1, "a little behind: a late duplicate, ignored");
        r.handle(1_000, Bytes::from(frames(&m).remove(0)), t, &mut out);
        r.handle(1_001, Bytes::from(frames(&m).remove(0)), t, &mut out);
        assert_eq!(out.len(), 3, "far behind: a new numbering, followed");
    }
}

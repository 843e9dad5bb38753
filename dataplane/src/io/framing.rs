//! RFC 4571 framing, as ICE-TCP uses it (RFC 6544 §3): every STUN, DTLS, RTP or RTCP packet
//! on a TCP connection is preceded by its length as a 16-bit big-endian number.
//!
//! Sans-IO: [`Deframer::push`] takes whatever bytes a read returned, in any split, and hands
//! out whole packets; [`frame`] writes one. Packets longer than the worker accepts
//! ([`MAX_DATAGRAM`]) are skipped byte-exactly and counted, so one oversize frame costs the
//! connection nothing but that frame (the stream stays in sync).

use super::MAX_DATAGRAM;

/// Reassembles packets from a byte stream. One per connection; its buffer is allocated
/// once, when the connection is accepted.
pub(crate) struct Deframer {
    /// The length prefix, as far as it has arrived.
    prefix: [u8; 2],
    prefix_have: u8,
    /// Bytes of the current packet still to come (0 = reading a prefix next).
    need: usize,
    /// The current packet is oversize: its bytes are skipped, not kept.
    skipping: bool,
    buf: Box<[u8; MAX_DATAGRAM]>,
    have: usize,
    /// Packets skipped for being longer than [`MAX_DATAGRAM`].
    pub(crate) oversize: u64,
}

impl std::fmt::Debug for Deframer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deframer")
            .field("need", &self.need)
            .field("have", &self.have)
            .field("skipping", &self.skipping)
            .finish()
    }
}

impl Default for Deframer {
    fn default() -> Self {
        Self {
            prefix: [0; 2],
            prefix_have: 0,
            need: 0,
            skipping: false,
            buf: Box::new([0; MAX_DATAGRAM]),
            have: 0,
            oversize: 0,
        }
    }
}

impl Deframer {
    /// Feed `input`; `on_packet` gets every packet it completes, in order. Returns how many
    /// packets were completed. A zero-length frame is legal in RFC 4571 and yields nothing.
    pub(crate) fn push(&mut self, mut input: &[u8], on_packet: &mut dyn FnMut(&[u8])) -> usize {
        let mut done = 0;
        while !input.is_empty() {
            if self.need == 0 {
                // Reading the length prefix.
                let take = (2 - usize::from(self.prefix_have)).min(input.len());
                let at = usize::from(self.prefix_have);
                self.prefix[at..at + take].copy_from_slice(&input[..take]);
                self.prefix_have += take as u8;
                input = &input[take..];
                if self.prefix_have < 2 {
                    break;
                }
                self.prefix_have = 0;
                self.need = usize::from(u16::from_be_bytes(self.prefix));
                self.have = 0;
                self.skipping = self.need > MAX_DATAGRAM;
                if self.skipping {
                    self.oversize += 1;
                }
                continue;
            }
            let take = self.need.min(input.len());
            if !self.skipping {
                self.buf[self.have..self.have + take].copy_from_slice(&input[..take]);
                self.have += take;
            }
            self.need -= take;
            input = &input[take..];
            if self.need == 0 && !self.skipping {
                on_packet(&self.buf[..self.have]);
                done += 1;
            }
        }
        done
    }
}

/// Append `packet` with its RFC 4571 length prefix to `out`. None (and `out` unchanged) when
/// the packet is longer than a frame can say.
pub(crate) fn frame(packet: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let len = u16::try_from(packet.len()).ok()?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(packet);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packets(d: &mut Deframer, input: &[u8]) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        d.push(input, &mut |p| got.push(p.to_vec()));
        got
    }

    #[test]
    fn frames_round_trip_in_any_split() {
        let sent: Vec<Vec<u8>> = vec![vec![1; 20], vec![], vec![7; MAX_DATAGRAM], vec![9; 3]];
        let mut stream = Vec::new();
        for p in &sent {
            frame(p, &mut stream).expect("fits");
        }
        // Every way of cutting the stream in two, and one byte at a time.
        for cut in 0..=stream.len() {
            let mut d = Deframer::default();
            let mut got = packets(&mut d, &stream[..cut]);
            got.extend(packets(&mut d, &stream[cut..]));
            let want: Vec<_> = sent.iter().filter(|p| !p.is_empty()).cloned().collect();
            assert_eq!(got, want, "cut at {cut}");
        }
        let mut d = Deframer::default();
        let mut got = Vec::new();
        for b in &stream {
            got.extend(packets(&mut d, std::slice::from_ref(b)));
        }
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn an_oversize_frame_is_skipped_and_the_stream_stays_in_sync() {
        let mut stream = Vec::new();
        frame(&[1, 2, 3], &mut stream).expect("fits");
        frame(&vec![0xee; MAX_DATAGRAM + 1], &mut stream).expect("fits a frame");
        frame(&[4, 5], &mut stream).expect("fits");
        let mut d = Deframer::default();
        let got = packets(&mut d, &stream);
        assert_eq!(got, vec![vec![1, 2, 3], vec![4, 5]]);
        assert_eq!(d.oversize, 1);
    }

    #[test]
    fn a_packet_longer_than_a_frame_is_refused() {
        let mut out = vec![9];
        assert!(frame(&vec![0; 65536], &mut out).is_none());
        assert_eq!(out, [9]);
    }

    #[test]
    fn a_partial_prefix_waits_for_its_second_byte() {
        let mut d = Deframer::default();
        assert!(packets(&mut d, &[0]).is_empty());
        assert!(packets(&mut d, &[2, 0xaa]).is_empty());
        assert_eq!(packets(&mut d, &[0xbb]), vec![vec![0xaa, 0xbb]]);
    }
}

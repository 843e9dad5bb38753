//! `media.pad_video_to`: a subscriber's video packets that do not end a frame leave padded
//! to a multiple of the setting (the datagram, tag included), the frame's last packet and
//! audio as they came, and the subscriber reads the same payload after stripping the
//! padding the P bit announces.

use super::*;

/// A publisher whose track 0 is video (90 kHz) and track 1 audio (48 kHz).
fn add_av_pub(e: &mut Engine) {
    let mut out = Capture::default();
    e.handle_command(
        WorkerCommand::AddPublisher {
            id: SessionId(1),
            stream: STREAM,
            remote: Some(addr(5000)),
            ssrcs: vec![PUB_SSRC, PUB_SSRC + 1],
            clock_rates: vec![90000, 48000],
            twcc_ext: None,
            srtp: Some(keys(SrtpProfile::AeadAes128Gcm, 1, 2)),
            ice: None,
            simulcast: None,
            uplink: Vec::new(),
        },
        t0(),
        &mut out,
    );
    assert_eq!(
        e.poll_event(),
        Some(WorkerEvent::Added { id: SessionId(1) })
    );
}

fn packet(ctx: &mut Context, ssrc: u32, seq: u16, payload: usize, marker: bool) -> Vec<u8> {
    let mut buf = vec![0u8; 12 + payload + 32];
    buf[0] = 0x80;
    buf[1] = 96 | if marker { 0x80 } else { 0 };
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
    for (i, b) in buf[12..12 + payload].iter_mut().enumerate() {
        *b = i as u8 ^ seq as u8;
    }
    let n = ctx.protect_rtp(&mut buf, 12 + payload).expect("protect");
    buf.truncate(n);
    buf
}

#[test]
fn video_packets_within_a_frame_leave_padded_to_one_size() {
    for pad in [0u16, 16] {
        let mut f = fixture_with(1, pad);
        let e = &mut f.engines[0];
        add_av_pub(e);
        add_sub(e, 2, 6002, SrtpProfile::AeadAes128Gcm);
        let mut publisher =
            Context::new(SrtpProfile::AeadAes128Gcm, &[1; 28]).expect("publisher ctx");
        let mut out = Capture::default();
        // libwebrtc's cut of a frame (sizes within a byte, the larger last), then audio.
        let sent = [
            (PUB_SSRC, 1029, false),
            (PUB_SSRC, 1030, false),
            (PUB_SSRC, 1030, true),
            (PUB_SSRC + 1, 90, false),
        ];
        for (seq, &(ssrc, payload, marker)) in sent.iter().enumerate() {
            let mut p = packet(&mut publisher, ssrc, seq as u16, payload, marker);
            e.handle_datagram(&mut p, addr(5000), t0(), &mut out);
        }
        assert_eq!(out.sent.len(), 4);
        let sizes: Vec<usize> = out.sent.iter().map(|(_, b)| b.len()).collect();
        if pad == 0 {
            assert_eq!(sizes, [1057, 1058, 1058, 118], "as they came");
        } else {
            assert_eq!(
                sizes,
                [1072, 1072, 1058, 118],
                "one size but the frame's end"
            );
        }
        let mut sub = Context::new(SrtpProfile::AeadAes128Gcm, &[2; 28]).expect("sub ctx");
        for (k, ((_, bytes), &(_, payload, _))) in out.sent.iter().zip(&sent).enumerate() {
            let mut b = bytes.clone();
            let n = sub.unprotect_rtp(&mut b).expect("the subscriber decrypts");
            let h = rtp::Header::parse(&b[..n]).expect("rtp");
            let padding = if b[0] & 0x20 != 0 {
                usize::from(b[n - 1])
            } else {
                0
            };
            assert_eq!(n - h.payload_offset - padding, payload, "payload length");
            assert!(
                b[h.payload_offset..h.payload_offset + payload]
                    .iter()
                    .enumerate()
                    .all(|(i, &x)| x == i as u8 ^ k as u8),
                "payload bytes of packet {k}"
            );
        }
    }
}

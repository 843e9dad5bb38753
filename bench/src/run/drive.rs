//! Driving a run: the paced sender, the receivers, and the accounting of what arrived.

use super::*;
use crate::shape::{Sched, Source};

/// Per-subscriber receive state.
pub(super) struct SubState {
    pub(super) end: SubEnd,
    pub(super) tracker: SeqTracker,
    pub(super) jitter: Jitter,
    /// Per track: RTP sequence minus the publisher's, fixed by the first packet: a
    /// subscriber's numbering must follow the publisher's exactly, whatever its start.
    /// A simulcast subscriber's is learned again after a packet of another layer (the
    /// node renumbers across a switch, so the offset to the new layer's numbers changes).
    pub(super) seq_offset: [Option<u16>; 2],
    /// `--simulcast`: packets of another layer of its publisher (whole run).
    pub(super) other_layer: u64,
    /// The receive thread's timeline counters.
    pub(super) lane: Arc<Lane>,
}

pub(super) struct RecvOut {
    /// Per subscriber: its group, sequence tracker, jitter, the sender it expects and its
    /// packets of other simulcast layers.
    pub(super) subs: Vec<(usize, SeqTracker, Jitter, usize, u64)>,
    /// Latency per group.
    pub(super) hists: Vec<Histogram<u64>>,
    pub(super) errors: Errors,
    /// `--gro`: reads, and the datagrams they carried.
    pub(super) gro: (u64, u64),
}

pub(super) struct SendOut {
    /// Measured-window packets sent, per publisher.
    pub(super) sent_in_window: Vec<u64>,
    pub(super) late_max_ns: u64,
    pub(super) errors: Errors,
}

pub(super) fn pin(cores: &[usize], who: &str) {
    if let Err(e) = sys::pin_current_thread(cores) {
        eprintln!("warning: cannot pin {who} to cores {cores:?}: {e}");
    }
}

pub(super) fn sleep_until(t: u64) {
    let now = sys::monotonic_ns();
    if t > now {
        std::thread::sleep(Duration::from_nanos(t - now));
    }
}

pub(super) fn drive(spec: &LoadSpec, setup: Setup, scenario: &str) -> Result<Report, Error> {
    let Setup {
        pubs,
        subs,
        groups,
        link_sources,
        joiner,
        probe,
        pid,
        profile,
        _guard,
    } = setup;
    pin(&spec.bench_cores, "the bench");
    let np = pubs.len() as u64;
    let start = sys::monotonic_ns() + START_DELAY.as_nanos() as u64;
    let warm = start + spec.warmup.as_nanos() as u64;
    let end = warm + spec.duration.as_nanos() as u64;
    let overhead = pubs.first().map_or(0, |p| p.cipher.overhead());
    let sources: Vec<Source> = pubs
        .iter()
        .enumerate()
        .map(|(p, pe)| match &pe.layer {
            // A publisher's layers share its frame instants, as a browser's encodings of
            // one captured frame do; publishers are staggered as usual.
            Some(l) => crate::shape::source(
                &layer_load(spec, &l.layer),
                start,
                (l.publisher as u64, spec.publishers.max(1) as u64),
                overhead + crate::simulcast::OVERHEAD,
            ),
            None => crate::shape::source(&spec.load(), start, (p as u64, np), overhead),
        })
        .collect();
    let simulcast = pubs.iter().any(|p| p.layer.is_some());
    let layer_info: Vec<Option<LayerOut>> = pubs.iter().map(|p| p.layer).collect();
    let ranges: Vec<_> = sources
        .iter()
        .map(|p| p.count_before(warm)..p.count_before(end))
        .collect();
    // Until the end of the drain, and a second for the receivers' last turn.
    let timeline = Timeline::new(
        start,
        end - start + spec.drain.as_nanos() as u64 + 1_000_000_000,
    );
    let send_lane = timeline.lane();

    // Sender. It starts before the receivers so WebRTC subscribers can join while it sends
    // (the first packet is due at `start`, after the receivers of a REST run are running).
    let cores = spec.bench_cores.clone();
    let ranges2 = ranges.clone();
    let abort = Arc::new(AtomicBool::new(false));
    let abort2 = abort.clone();
    let sender = std::thread::Builder::new()
        .name("bench-send".into())
        .spawn(move || {
            pin(&cores, "the send thread");
            send(pubs, &sources, &ranges2, end, &abort2, &send_lane)
        })
        .map_err(|e| Error::io("spawning the send thread", e))?;

    // From the first packet on, WebRTC joins included.
    let progress_stop = Arc::new(AtomicBool::new(false));
    let progress = if spec.progress {
        let phases = crate::progress::Phases {
            warm_slot: timeline.slot_of(warm),
            total_s: (end - start) as f64 / 1e9,
        };
        crate::progress::spawn(timeline.clone(), phases, end, progress_stop.clone()).ok()
    } else {
        None
    };

    let (subs, join_ns) = match joiner {
        None => (subs, Vec::new()),
        Some(join) => match join() {
            Ok(v) => v,
            Err(e) => {
                abort.store(true, Ordering::Relaxed);
                progress_stop.store(true, Ordering::Relaxed);
                let _ = sender.join();
                return Err(e);
            }
        },
    };
    let joined = sys::monotonic_ns();
    if !join_ns.is_empty() && joined > warm {
        eprintln!(
            "warning: subscribers finished joining {} ms after the warm-up ended; \
             the measured window's first packets waited in socket buffers (raise --warmup)",
            (joined - warm) / 1_000_000
        );
    }

    // Receivers.
    let stop = Arc::new(AtomicBool::new(false));
    let threads = spec.sockets.clamp(1, subs.len().max(1));
    let mut threads_subs: Vec<Vec<SubState>> = (0..threads).map(|_| Vec::new()).collect();
    // A simulcast sender counts its copies itself (`Lane::sent_copies`).
    timeline.set_fanout(match simulcast {
        true => 1.0,
        false => subs.len() as f64 / np.max(1) as f64,
    });
    let lanes: Vec<Arc<Lane>> = (0..threads).map(|_| timeline.lane()).collect();
    for (i, end_) in subs.into_iter().enumerate() {
        let range = ranges.get(end_.publisher).cloned().unwrap_or(0..0);
        threads_subs[i % threads].push(SubState {
            end: end_,
            tracker: SeqTracker::new(range),
            jitter: Jitter::default(),
            seq_offset: [None; 2],
            other_layer: 0,
            lane: lanes[i % threads].clone(),
        });
    }
    let ngroups = groups.len().max(1);
    let mut receivers = Vec::new();
    for (t, group) in threads_subs.into_iter().enumerate() {
        let stop = stop.clone();
        let cores = spec.bench_cores.clone();
        let gro = spec.gro;
        let h = std::thread::Builder::new()
            .name(format!("bench-recv{t}"))
            .spawn(move || {
                pin(&cores, "a receive thread");
                receive(group, ngroups, gro, &stop)
            })
            .map_err(|e| Error::io("spawning a receive thread", e))?;
        receivers.push(h);
    }

    sleep_until(warm);
    let cpu0 = probe.as_ref().and_then(CpuProbe::cpu_ns);
    let wall0 = sys::monotonic_ns();
    let link0 = relay_tx(&link_sources);
    sleep_until(end);
    let cpu1 = probe.as_ref().and_then(CpuProbe::cpu_ns);
    let wall1 = sys::monotonic_ns();
    let link1 = relay_tx(&link_sources);

    let sent = sender.join().map_err(|_| Error::Thread)?;
    progress_stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    std::thread::sleep(spec.drain);
    stop.store(true, Ordering::Relaxed);
    let mut outs = Vec::new();
    for h in receivers {
        outs.push(h.join().map_err(|_| Error::Thread)??);
    }

    let duration_s = spec.duration.as_secs_f64();
    let mut hist = new_hist();
    let mut group_hists: Vec<Histogram<u64>> = (0..ngroups).map(|_| new_hist()).collect();
    // Per group: expected, received.
    let mut group_counts = vec![(0u64, 0u64, 0usize); ngroups];
    let mut errors = sent.errors.clone();
    let (mut expected, mut received, mut reorder, mut dups) = (0u64, 0u64, 0u64, 0u64);
    let mut jitter_sum = 0.0;
    let mut nsubs = 0usize;
    let mut gro = (0u64, 0u64);
    for o in &outs {
        gro.0 += o.gro.0;
        gro.1 += o.gro.1;
        for (g, h) in o.hists.iter().enumerate() {
            let _ = hist.add(h);
            if let Some(gh) = group_hists.get_mut(g) {
                let _ = gh.add(h);
            }
        }
        errors.decrypt += o.errors.decrypt;
        errors.ssrc_mismatch += o.errors.ssrc_mismatch;
        errors.bad_payload += o.errors.bad_payload;
        errors.misrouted += o.errors.misrouted;
        errors.sequence_breaks += o.errors.sequence_breaks;
        errors.ignored += o.errors.ignored;
        for (g, t, j, _, _) in &o.subs {
            if let Some(c) = group_counts.get_mut(*g) {
                c.0 += t.expected();
                c.1 += t.received;
                c.2 += 1;
            }
            expected += t.expected();
            received += t.received;
            reorder += t.reordered;
            dups += t.duplicates;
            jitter_sum += j.ns();
            nsubs += 1;
        }
    }
    let sent_packets: u64 = sent.sent_in_window.iter().sum();
    let layers = layer_reports(spec, &layer_info, &outs);
    let lost = expected.saturating_sub(received);
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) if wall1 > wall0 => Some(b.saturating_sub(a)),
        _ => None,
    };
    let dataplane_cpu = cpu.map(|c| c as f64 / (wall1 - wall0) as f64);
    let cpu_ns_per_packet = cpu
        .filter(|_| received > 0)
        .map(|c| c as f64 / received as f64);
    let latency_us = latency(&hist);
    let base = latency(&group_hists[0]);
    let group_reports: Vec<GroupReport> = groups
        .iter()
        .enumerate()
        .map(|(g, info)| {
            let (exp, rec, n) = group_counts[g];
            let lat = latency(&group_hists[g]);
            // Added by the relays: this group's percentile minus hop 0's, per hop.
            let per_hop = |v: u64, b: u64| (v as f64 - b as f64) / f64::from(info.hops);
            GroupReport {
                node: info.api.clone(),
                hops: info.hops,
                subscribers: n,
                expected_packets: exp,
                received_packets: rec,
                loss_ratio: if exp > 0 {
                    exp.saturating_sub(rec) as f64 / exp as f64
                } else {
                    0.0
                },
                added_p50_us_per_hop: (info.hops > 0 && lat.count > 0)
                    .then(|| per_hop(lat.p50, base.p50)),
                added_p99_us_per_hop: (info.hops > 0 && lat.count > 0)
                    .then(|| per_hop(lat.p99, base.p99)),
                latency_us: lat,
            }
        })
        .collect();
    let relay_link_pps = match (link0, link1) {
        (Some(a), Some(b)) if wall1 > wall0 && !link_sources.is_empty() => {
            Some((b - a) / ((wall1 - wall0) as f64 / 1e9))
        }
        _ => None,
    };
    Ok(Report {
        scenario: scenario.into(),
        profile,
        publishers: spec.publishers,
        subscribers: spec.subscribers,
        subscribers_total: nsubs,
        rate_pps: match (layers.is_empty(), spec.video.is_some() || spec.audio) {
            (false, _) => layers.iter().map(|l| l.pps).sum::<f64>().round() as u64,
            (true, true) => crate::shape::describe(&spec.load()).pps.round() as u64,
            (true, false) => spec.rate,
        },
        size: spec.size,
        warmup_s: spec.warmup.as_secs_f64(),
        duration_s,
        sent_packets,
        received_packets: received,
        expected_packets: expected,
        lost_packets: lost,
        loss_ratio: if expected > 0 {
            lost as f64 / expected as f64
        } else {
            0.0
        },
        reorder,
        duplicates: dups,
        out_pps: received as f64 / duration_s,
        in_pps: sent_packets as f64 / duration_s,
        latency_us,
        jitter_us: if nsubs > 0 {
            jitter_sum / nsubs as f64 / 1000.0
        } else {
            0.0
        },
        pacing_late_max_us: sent.late_max_ns / 1000,
        join_ms: JoinTimes::from_ns(join_ns),
        dataplane_pid: pid,
        dataplane_cpu,
        cpu_ns_per_packet,
        groups: group_reports,
        relay_link_pps,
        load: crate::shape::describe(&spec.load()),
        gro: spec.gro.then_some(crate::report::GroReport {
            reads: gro.0,
            datagrams: gro.1,
        }),
        errors,
        layers,
        timeline: timeline.report(end),
        latency_histogram: Some(hist),
    })
}

pub(super) fn latency(hist: &Histogram<u64>) -> Latency {
    if hist.is_empty() {
        return Latency::default();
    }
    Latency {
        count: hist.len(),
        mean: hist.mean(),
        p50: hist.value_at_quantile(0.5),
        p90: hist.value_at_quantile(0.9),
        p99: hist.value_at_quantile(0.99),
        p999: hist.value_at_quantile(0.999),
        max: hist.max(),
    }
}

/// Media packets the nodes sent over relay links so far (`None`: a node did not answer or
/// does not count them). Sampled at the window's edges; the HTTP round trip is noise
/// against a window of seconds.
pub(super) fn relay_tx(nodes: &[Node]) -> Option<f64> {
    if nodes.is_empty() {
        return None;
    }
    let mut sum = 0.0;
    for n in nodes {
        sum += n.metric("relay_tx_packets_total").ok().flatten()?;
    }
    Some(sum)
}

pub(super) fn new_hist() -> Histogram<u64> {
    // Bounds are constants within hdrhistogram's limits; this cannot fail.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).unwrap_or_else(|_| unreachable!())
}

/// The send thread: one pass over all publishers per wake-up, each sending the packets
/// now due (up to a batch) with one sendmmsg, then sleep to the earliest next deadline.
pub(super) fn send(
    mut pubs: Vec<PubEnd>,
    sources: &[Source],
    ranges: &[std::ops::Range<u64>],
    end: u64,
    abort: &AtomicBool,
    lane: &Lane,
) -> SendOut {
    let mut scheds: Vec<Sched> = sources.iter().map(Source::schedule).collect();
    let stop_at: Vec<u64> = sources.iter().map(|p| p.count_before(end)).collect();
    let mut out = SendOut {
        sent_in_window: vec![0; pubs.len()],
        late_max_ns: 0,
        errors: Errors::default(),
    };
    let mut bufs = vec![[0u8; MAX_SIZE + 64]; MAX_BATCH];
    let mut lens = [0usize; MAX_BATCH];
    let mut seqs = [0u64; MAX_BATCH];
    let mut stamps = [0u64; MAX_BATCH];
    // Random-looking fixed starts, as a real sender's would be; the node must cope.
    let seq_base: u16 = 0x1234;
    let ts_base: u32 = 0x0abc_def0;
    // Per publisher and track: RTP sequence numbers sent so far.
    let mut track_seq = vec![[0u16; 2]; pubs.len()];
    // Per simulcast layer: its current VP8 picture id and TL0PICIDX, and whether a frame
    // was started (the first frame keeps the initial values).
    let mut pictures = vec![(0x2000u16, 0u8, false); pubs.len()];
    while !abort.load(Ordering::Relaxed) {
        let mut next_wake = u64::MAX;
        for (p, pe) in pubs.iter_mut().enumerate() {
            let sched = &mut scheds[p];
            let now = sys::monotonic_ns();
            let mut n = 0;
            while n < MAX_BATCH && sched.sent() < stop_at[p] {
                let seq = sched.sent();
                let Some(due) = sched.next_due(now) else {
                    break;
                };
                let rtp_len = due.len.min(MAX_SIZE) - pe.cipher.overhead();
                let track = usize::from(due.track.min(1));
                out.late_max_ns = out.late_max_ns.max(now.saturating_sub(due.deadline_ns));
                let buf = &mut bufs[n];
                let send_ns = sys::monotonic_ns();
                // 90 kHz video (and the steady stream), 48 kHz audio.
                let clock = if track == 1 { 48 } else { 90 };
                let ts = ts_base.wrapping_add((u128::from(send_ns) * clock / 1_000_000) as u32);
                let kind = crate::shape::Kind::for_packet(&sources[p], track);
                let (ssrc, rtp_seq) = match kind {
                    // The steady stream numbers RTP by the publisher sequence, as it always did.
                    crate::shape::Kind::Steady => (pe.ssrc, seq as u16),
                    crate::shape::Kind::Video => (pe.ssrc, track_seq[p][0]),
                    crate::shape::Kind::Audio => {
                        (crate::shape::audio_ssrc(pe.ssrc), track_seq[p][1])
                    }
                };
                track_seq[p][track] = rtp_seq.wrapping_add(1);
                packet::write_rtp_header(buf, seq_base.wrapping_add(rtp_seq), ts, ssrc, due.marker);
                // The bench payload's offset: after the simulcast extensions and VP8 prefix
                // (the source's minimum size leaves room for them).
                let mut at = RTP_HEADER;
                if let Some(l) = &pe.layer {
                    buf[0] |= 0x10; // X: header extensions follow
                    at += crate::simulcast::write_extensions(&mut buf[at..], l.layer.rid);
                    let pic = &mut pictures[p];
                    if due.frame_start {
                        if pic.2 {
                            pic.0 = pic.0.wrapping_add(1) & 0x7fff;
                            pic.1 = pic.1.wrapping_add(1);
                        }
                        pic.2 = true;
                    }
                    let pos = crate::simulcast::FramePos {
                        start: due.frame_start,
                        keyframe: due.keyframe,
                        picture_id: pic.0,
                        tl0: pic.1,
                    };
                    at += crate::simulcast::write_vp8(&mut buf[at..], &l.layer, pos);
                }
                Payload {
                    publisher: p as u32 | kind.bits(),
                    sequence: seq,
                    send_ns,
                }
                .encode(&mut buf[at..rtp_len]);
                crate::shape::write_track_seq(
                    &mut buf[at..rtp_len],
                    kind,
                    seq_base.wrapping_add(rtp_seq),
                );
                match pe.cipher.protect(buf, rtp_len) {
                    Ok(len) => {
                        lens[n] = len;
                        seqs[n] = seq;
                        stamps[n] = send_ns;
                        n += 1;
                    }
                    Err(_) => out.errors.protect += 1,
                }
            }
            if n > 0 {
                let msgs: Vec<(&[u8], SocketAddr)> =
                    (0..n).map(|i| (&bufs[i][..lens[i]], pe.dest)).collect();
                let ok = sys::send_batch(&pe.sock, &msgs).unwrap_or(0);
                out.errors.send += (n - ok) as u64;
                for &t in &stamps[..ok] {
                    match &pe.layer {
                        Some(l) => lane.sent_copies(t, l.copies),
                        None => lane.sent(t),
                    }
                }
                out.sent_in_window[p] +=
                    seqs[..ok].iter().filter(|s| ranges[p].contains(s)).count() as u64;
            }
            if sched.sent() < stop_at[p] {
                next_wake = next_wake.min(sched.next_deadline());
            }
        }
        if next_wake == u64::MAX {
            return out;
        }
        let now = sys::monotonic_ns();
        if next_wake > now {
            sleep_until(next_wake.max(now + MIN_SLEEP_NS));
        }
    }
    out
}

/// A receive thread: epoll over its subscribers' sockets, drain each ready socket with
/// recvmmsg, stamp the batch at return and account every datagram.
pub(super) fn receive(
    mut subs: Vec<SubState>,
    ngroups: usize,
    gro: bool,
    stop: &AtomicBool,
) -> Result<RecvOut, Error> {
    let ep = sys::Epoll::new().map_err(|e| Error::io("epoll_create", e))?;
    for (i, s) in subs.iter().enumerate() {
        s.end
            .sock
            .set_nonblocking(true)
            .map_err(|e| Error::io("set_nonblocking", e))?;
        if gro {
            crate::offload::enable_gro(&s.end.sock).map_err(|e| Error::io("UDP_GRO", e))?;
        }
        ep.add(s.end.sock.as_raw_fd(), i as u64)
            .map_err(|e| Error::io("epoll_ctl", e))?;
    }
    let mut hists: Vec<Histogram<u64>> = (0..ngroups).map(|_| new_hist()).collect();
    let mut errors = Errors::default();
    for s in &mut subs {
        if let Some((rtp, recv_ns)) = s.end.first.take() {
            let g = s.end.group.min(ngroups - 1);
            account_rtp(s, &rtp, recv_ns, &mut hists[g], &mut errors);
        }
    }
    let mut batch = RecvBatch::default();
    let mut gro_batch = gro.then(crate::offload::GroBatch::default);
    let mut gro_counts = (0u64, 0u64);
    let mut ready = Vec::with_capacity(64);
    while !stop.load(Ordering::Relaxed) {
        ep.wait(&mut ready, 20)
            .map_err(|e| Error::io("epoll_wait", e))?;
        for &tok in &ready {
            let Some(s) = subs.get_mut(tok as usize) else {
                continue;
            };
            if let Some(b) = gro_batch.as_mut() {
                let g = s.end.group.min(ngroups - 1);
                loop {
                    let n = b
                        .recv(&s.end.sock)
                        .map_err(|e| Error::io("recvmmsg (UDP_GRO)", e))?;
                    let recv_ns = sys::monotonic_ns();
                    for i in 0..n {
                        let (read, seg) = b.read_mut(i);
                        gro_counts.0 += 1;
                        let seg = if seg == 0 { read.len() } else { seg };
                        for pkt in read.chunks_mut(seg.max(1)) {
                            gro_counts.1 += 1;
                            account(s, pkt, recv_ns, &mut hists[g], &mut errors);
                        }
                    }
                    if n < crate::offload::GRO_BATCH {
                        break;
                    }
                }
                continue;
            }
            loop {
                let n = batch
                    .recv(&s.end.sock, false)
                    .map_err(|e| Error::io("recvmmsg", e))?;
                let recv_ns = sys::monotonic_ns();
                let g = s.end.group.min(ngroups - 1);
                for i in 0..n {
                    account(
                        s,
                        batch.datagram_mut(i),
                        recv_ns,
                        &mut hists[g],
                        &mut errors,
                    );
                }
                if n < MAX_BATCH {
                    break;
                }
            }
        }
    }
    Ok(RecvOut {
        subs: subs
            .into_iter()
            .map(|s| {
                (
                    s.end.group,
                    s.tracker,
                    s.jitter,
                    s.end.publisher,
                    s.other_layer,
                )
            })
            .collect(),
        hists,
        errors,
        gro: gro_counts,
    })
}

pub(super) fn account(
    s: &mut SubState,
    pkt: &mut [u8],
    recv_ns: u64,
    hist: &mut Histogram<u64>,
    errors: &mut Errors,
) {
    // RFC 7983/5761 demultiplexing: only RTP counts. STUN, DTLS and RTCP (sender reports
    // the node may send) are skipped before they could be mistaken for decrypt failures.
    if !packet::is_rtp(pkt) {
        errors.ignored += 1;
        return;
    }
    let Ok(len) = s.end.cipher.unprotect(pkt) else {
        errors.decrypt += 1;
        return;
    };
    account_rtp(s, &pkt[..len.min(pkt.len())], recv_ns, hist, errors);
}

/// Accounts one decrypted RTP packet of subscriber `s`.
pub(super) fn account_rtp(
    s: &mut SubState,
    rtp: &[u8],
    recv_ns: u64,
    hist: &mut Histogram<u64>,
    errors: &mut Errors,
) {
    let Ok(info) = packet::parse_rtp(rtp) else {
        errors.bad_payload += 1;
        return;
    };
    // After the simulcast VP8 prefix, if any (a packet too short for it is no bench packet).
    let media = rtp
        .get(info.payload_offset + s.end.media_offset..)
        .unwrap_or(&[]);
    let Ok(payload) = Payload::decode(media) else {
        errors.bad_payload += 1;
        return;
    };
    // The publisher index; the top byte says which stream (`crate::shape::Kind`).
    let kind = crate::shape::Kind::of(payload.publisher);
    let track = usize::from(kind == crate::shape::Kind::Audio);
    let ssrc = if track == 1 {
        s.end.audio_ssrc
    } else {
        s.end.ssrc
    };
    if info.ssrc != ssrc {
        errors.ssrc_mismatch += 1;
        return;
    }
    let from = (payload.publisher & 0x00ff_ffff) as usize;
    if from != s.end.publisher {
        if s.end.siblings.contains(&from) {
            // Another layer of its publisher: before the node switched it to the expected
            // one. Numbering continues across the switch under a new offset.
            s.other_layer += 1;
            s.seq_offset[track] = None;
        } else {
            errors.misrouted += 1;
        }
        return;
    }
    // The publisher's RTP sequence: the publisher sequence for the steady stream, the
    // track's own (carried after the payload header) for frame-shaped tracks.
    let sent_seq = match kind {
        crate::shape::Kind::Steady => payload.sequence as u16,
        _ => match crate::shape::track_seq(media) {
            Some(q) => q,
            None => {
                errors.bad_payload += 1;
                return;
            }
        },
    };
    let offset = info.sequence.wrapping_sub(sent_seq);
    match s.seq_offset[track] {
        None => s.seq_offset[track] = Some(offset),
        Some(o) if o != offset => errors.sequence_breaks += 1,
        Some(_) => {}
    }
    let arrival = s.tracker.record(payload.sequence);
    if arrival != Arrival::Duplicate {
        s.lane.received(payload.send_ns, recv_ns);
    }
    match arrival {
        Arrival::InOrder | Arrival::Reordered => {
            let lat_ns = recv_ns.saturating_sub(payload.send_ns);
            hist.saturating_record(lat_ns / 1000);
            s.jitter.record(payload.send_ns, recv_ns);
        }
        Arrival::Duplicate | Arrival::OutOfRange => {}
    }
}

/// The load of one simulcast layer: the run's video shape at the layer's rate.
fn layer_load(spec: &LoadSpec, layer: &crate::simulcast::Layer) -> crate::shape::Load {
    let mut load = spec.load();
    load.video = load.video.map(|v| crate::shape::VideoSpec {
        bitrate: layer.bitrate,
        ..v
    });
    load
}

/// Per simulcast layer (rank order): what a publisher sends on it and how its subscribers
/// fared. Empty without simulcast.
fn layer_reports(
    spec: &LoadSpec,
    layers: &[Option<LayerOut>],
    outs: &[RecvOut],
) -> Vec<crate::simulcast::LayerReport> {
    let mut reports: Vec<crate::simulcast::LayerReport> = Vec::new();
    for (sender, l) in layers.iter().enumerate() {
        let Some(l) = l else { continue };
        let rank = sender % crate::simulcast::LAYERS.len();
        if reports.len() <= rank {
            let shape = crate::shape::describe(&layer_load(spec, &l.layer));
            reports.push(crate::simulcast::LayerReport {
                layer: rank,
                rid: l.layer.rid,
                width: l.layer.width,
                height: l.layer.height,
                pps: shape.pps,
                bps: shape.bps,
                subscribers: 0,
                expected_packets: 0,
                received_packets: 0,
                loss_ratio: 0.0,
                other_layer: 0,
            });
        }
    }
    for o in outs {
        for (_, t, _, sender, other) in &o.subs {
            if layers.get(*sender).copied().flatten().is_none() {
                continue;
            }
            let rank = sender % crate::simulcast::LAYERS.len();
            if let Some(r) = reports.get_mut(rank) {
                r.subscribers += 1;
                r.expected_packets += t.expected();
                r.received_packets += t.received;
                r.other_layer += other;
            }
        }
    }
    for r in &mut reports {
        if r.expected_packets > 0 {
            r.loss_ratio = r.expected_packets.saturating_sub(r.received_packets) as f64
                / r.expected_packets as f64;
        }
    }
    reports
}

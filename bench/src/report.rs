//! What a run reports: JSON (field meanings in docs/bench.md) and a human table.

use std::fmt::Write as _;

use serde::Serialize;

/// Latency percentiles in µs (recv time at recvmmsg return − send time in the payload).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// WebRTC join times in ms: per subscriber, from just before its WHEP POST to its first
/// decrypted media packet (signaling, ICE, DTLS and the first forwarded packet).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct JoinTimes {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl JoinTimes {
    /// Nearest-rank percentiles of `ns`; `None` for no joins (a run without `--webrtc`).
    pub fn from_ns(mut ns: Vec<u64>) -> Option<JoinTimes> {
        if ns.is_empty() {
            return None;
        }
        ns.sort_unstable();
        let ms = |v: u64| v as f64 / 1e6;
        let rank = |q: f64| ns[((q * ns.len() as f64).ceil() as usize).clamp(1, ns.len()) - 1];
        Some(JoinTimes {
            count: ns.len(),
            mean: ns.iter().map(|&v| ms(v)).sum::<f64>() / ns.len() as f64,
            p50: ms(rank(0.5)),
            p99: ms(rank(0.99)),
            max: ms(ns[ns.len() - 1]),
        })
    }
}

/// Packets that did not make it into the statistics, by reason.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Errors {
    /// SRTP unprotect failed at a subscriber.
    pub decrypt: u64,
    /// SSRC differs from the one the session announced.
    pub ssrc_mismatch: u64,
    /// Not RTP, or not a bench payload.
    pub bad_payload: u64,
    /// A subscriber got another publisher's packet.
    pub misrouted: u64,
    /// Packets whose rewritten RTP sequence number is not the publisher's plus the
    /// subscriber's constant offset: the node's numbering is not continuous.
    pub sequence_breaks: u64,
    /// Datagrams sendmmsg refused.
    pub send: u64,
    /// SRTP protect failed at a publisher.
    pub protect: u64,
    /// Datagrams that were not RTP (RTCP, STUN, DTLS) at a subscriber; not an error as such.
    pub ignored: u64,
}

/// One fan-out (or reflector) run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// "fanout" (a node) or "reflector" (the plain in-process reference).
    pub scenario: String,
    /// SRTP profile name, or "plain" for the reflector.
    pub profile: String,
    pub publishers: usize,
    /// Subscribers per publisher.
    pub subscribers: usize,
    pub subscribers_total: usize,
    /// Packets per second per publisher.
    pub rate_pps: u64,
    /// Datagram size in bytes, headers and tag included.
    pub size: usize,
    pub warmup_s: f64,
    /// Length of the measured window.
    pub duration_s: f64,
    /// Publisher packets in the measured window that were sent.
    pub sent_packets: u64,
    /// Distinct packets of the measured window received by subscribers.
    pub received_packets: u64,
    /// Sum over subscribers of their publisher's measured-window packet count.
    pub expected_packets: u64,
    pub lost_packets: u64,
    pub loss_ratio: f64,
    /// Packets that arrived behind a later one.
    pub reorder: u64,
    pub duplicates: u64,
    /// received_packets / duration_s: what the system under test delivered.
    pub out_pps: f64,
    /// sent_packets / duration_s: what it was offered.
    pub in_pps: f64,
    pub latency_us: Latency,
    /// RFC 3550 interarrival jitter, mean over subscribers, µs.
    pub jitter_us: f64,
    /// Worst lateness of a publisher packet against its pacing deadline, µs.
    pub pacing_late_max_us: u64,
    /// `--webrtc`: subscribers' join times.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_ms: Option<JoinTimes>,
    pub dataplane_pid: Option<i32>,
    /// Cores the data plane (or reflector thread) used over the measured window.
    pub dataplane_cpu: Option<f64>,
    /// Its CPU ns per forwarded (received) packet.
    pub cpu_ns_per_packet: Option<f64>,
    /// Relay runs: the subscribers on each node, apart (empty for other scenarios).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupReport>,
    /// Relay runs: media packets/s the source nodes sent over their relay links in the
    /// measured window (the `relay_tx_packets_total` counter's rate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_link_pps: Option<f64>,
    /// What each publisher sent: the steady stream or frame-shaped video/audio.
    pub load: crate::shape::LoadShape,
    /// `--gro`: the subscribers' coalesced reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gro: Option<GroReport>,
    pub errors: Errors,
    /// `--simulcast`: per layer (lowest first) what a publisher sends on it and how the
    /// subscribers expecting it fared. `load` then describes the top layer's shape.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<crate::simulcast::LayerReport>,
    /// The run slot by slot (one second, longer past an hour), warm-up and drain included.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<crate::timeline::Slot>,
    /// The measured window's latency (µs), all subscribers: `.hgrm` files, the HTML report.
    #[serde(skip)]
    pub latency_histogram: Option<hdrhistogram::Histogram<u64>>,
}

/// Subscribers that read with UDP_GRO: how many reads, and the datagrams they carried
/// (each accounted on its own).
#[derive(Debug, Clone, Serialize)]
pub struct GroReport {
    pub reads: u64,
    pub datagrams: u64,
}

/// The subscribers on one node of a relay run.
#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    /// The node's control API.
    pub node: String,
    /// Relays between the publishers' node and this one (0: the publishers' node).
    pub hops: u32,
    pub subscribers: usize,
    pub expected_packets: u64,
    pub received_packets: u64,
    pub loss_ratio: f64,
    pub latency_us: Latency,
    /// (this group's p50 − hop 0's p50) / hops, µs: what one relay hop adds.
    pub added_p50_us_per_hop: Option<f64>,
    /// The same for p99.
    pub added_p99_us_per_hop: Option<f64>,
}

/// A ramp: steps of growing load until one fails the thresholds.
#[derive(Debug, Clone, Serialize)]
pub struct RampReport {
    pub scenario: String,
    /// "fanout" or "reflector".
    pub target: String,
    pub loss_threshold: f64,
    pub p99_threshold_us: u64,
    /// out_pps of the last passing step (0 if none passed).
    pub capacity_pps: f64,
    pub capacity_subscribers_total: usize,
    /// The last passing step, in full.
    pub capacity: Option<Report>,
    pub steps: Vec<RampStep>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RampStep {
    pub pass: bool,
    #[serde(flatten)]
    pub report: Report,
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

impl Report {
    /// A few lines for a terminal.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let l = &self.latency_us;
        let _ = writeln!(
            s,
            "{} ({}) {} pub x {} sub, {} pps/pub, {} B, {:.1} s measured",
            self.scenario,
            self.profile,
            self.publishers,
            self.subscribers,
            self.rate_pps,
            self.size,
            self.duration_s
        );
        let _ = writeln!(
            s,
            "  packets  sent {:>10}  expected {:>10}  received {:>10}  lost {} ({:.4}%)  reorder {}  dup {}",
            self.sent_packets,
            self.expected_packets,
            self.received_packets,
            self.lost_packets,
            self.loss_ratio * 100.0,
            self.reorder,
            self.duplicates
        );
        let _ = writeln!(
            s,
            "  rate     in {:.0} pps  out {:.0} pps",
            self.in_pps, self.out_pps
        );
        let _ = writeln!(
            s,
            "  latency  p50 {} µs  p90 {}  p99 {}  p99.9 {}  max {}  jitter {:.1} µs  (pacing late max {} µs)",
            l.p50, l.p90, l.p99, l.p999, l.max, self.jitter_us, self.pacing_late_max_us
        );
        let _ = writeln!(
            s,
            "  cpu      {} cores  {} ns/packet  (pid {})",
            opt(self.dataplane_cpu, 3),
            opt(self.cpu_ns_per_packet, 0),
            self.dataplane_pid
                .map_or_else(|| "-".into(), |p| p.to_string())
        );
        if let Some(j) = &self.join_ms {
            let _ = writeln!(
                s,
                "  join     p50 {:.1} ms  p99 {:.1}  max {:.1}  mean {:.1}  ({} WebRTC subscribers)",
                j.p50, j.p99, j.max, j.mean, j.count
            );
        }
        for g in &self.groups {
            let l = &g.latency_us;
            let _ = writeln!(
                s,
                "  hops {}   {} sub on {}  loss {:.4}%  p50 {} µs  p99 {}  added/hop p50 {} µs  p99 {}",
                g.hops,
                g.subscribers,
                g.node,
                g.loss_ratio * 100.0,
                l.p50,
                l.p99,
                opt(g.added_p50_us_per_hop, 0),
                opt(g.added_p99_us_per_hop, 0)
            );
        }
        if self.load.shape != "steady" {
            let _ = writeln!(
                s,
                "  load     frames: {}{}, {:.0} pps, {:.0} kbit/s per publisher",
                self.load.video.map_or_else(
                    || "no video".into(),
                    |v| format!(
                        "video {} kbit/s at {} fps, keyframes every {} s x{}, packetized {:?}",
                        v.bitrate / 1000,
                        v.fps,
                        v.keyframe_every,
                        v.keyframe_factor,
                        v.packetize
                    )
                ),
                if self.load.audio { " + audio" } else { "" },
                self.load.pps,
                self.load.bps / 1000.0
            );
        }
        for l in &self.layers {
            let _ = writeln!(
                s,
                "  layer {} {} {}x{}: {:.0} pps, {:.0} kbit/s per publisher; {} sub  received {} of {}  loss {:.4}%  other layers {}",
                l.layer,
                l.rid,
                l.width,
                l.height,
                l.pps,
                l.bps / 1000.0,
                l.subscribers,
                l.received_packets,
                l.expected_packets,
                l.loss_ratio * 100.0,
                l.other_layer
            );
        }
        if let Some(g) = &self.gro {
            let _ = writeln!(
                s,
                "  gro      subscribers coalesce: {} reads carried {} datagrams ({:.2} per read)",
                g.reads,
                g.datagrams,
                g.datagrams as f64 / g.reads.max(1) as f64
            );
        }
        if let Some(pps) = self.relay_link_pps {
            let _ = writeln!(s, "  relay    links carried {pps:.0} pps");
        }
        if self.errors != Errors::default() {
            let _ = writeln!(s, "  errors   {:?}", self.errors);
        }
        s
    }
}

impl RampReport {
    pub fn table(&self) -> String {
        let mut s = format!(
            "ramp ({}) thresholds: loss <= {:.3}%, p99 <= {} µs\n{:>5} {:>6} {:>12} {:>10} {:>8} {:>8} {:>8} {:>10}  pass\n",
            self.target,
            self.loss_threshold * 100.0,
            self.p99_threshold_us,
            "pubs",
            "subs",
            "out_pps",
            "loss%",
            "p50us",
            "p99us",
            "cpu",
            "ns/pkt",
        );
        for st in &self.steps {
            let r = &st.report;
            let _ = writeln!(
                s,
                "{:>5} {:>6} {:>12.0} {:>10.4} {:>8} {:>8} {:>8} {:>10}  {}",
                r.publishers,
                r.subscribers_total,
                r.out_pps,
                r.loss_ratio * 100.0,
                r.latency_us.p50,
                r.latency_us.p99,
                opt(r.dataplane_cpu, 3),
                opt(r.cpu_ns_per_packet, 0),
                if st.pass { "yes" } else { "NO" }
            );
        }
        let _ = writeln!(
            s,
            "capacity: {:.0} pps out ({} subscribers)",
            self.capacity_pps, self.capacity_subscribers_total
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_percentiles() {
        assert_eq!(JoinTimes::from_ns(Vec::new()), None);
        let j = JoinTimes::from_ns((1..=100).rev().map(|i| i * 1_000_000).collect()).expect("some");
        assert_eq!((j.count, j.p50, j.p99, j.max), (100, 50.0, 99.0, 100.0));
        assert!((j.mean - 50.5).abs() < 1e-9);
        let j = JoinTimes::from_ns(vec![3_000_000]).expect("some");
        assert_eq!((j.p50, j.p99, j.max), (3.0, 3.0, 3.0));
    }
}

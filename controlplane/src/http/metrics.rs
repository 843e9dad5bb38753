//! `GET /metrics`: Prometheus text exposition (format 0.0.4).
//!
//! The data plane's counters live in the shared stats file and are read here, at scrape time,
//! straight from the workers' blocks; nothing is copied or aggregated in between, so a scrape
//! costs the data plane nothing. The control plane's own counters are `core::counters`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use switchyard_shared::command::Role;
use switchyard_shared::stats::{Counter, DropReason, Stats, HISTOGRAMS, SEGMENT_BUCKETS};

use crate::core::counters::{self, ClusterCounters, Counters};
use crate::core::link::Inner;
use crate::core::store::Node;
use crate::services::cluster::load::LoadReport;
use crate::services::forward::{Manager, STATE_NAMES};

/// The cluster counters of this process.
fn render_cluster(out: &mut String, m: &ClusterCounters) {
    header(
        out,
        "cluster_placements_total",
        "counter",
        "Rooms this control plane placed, by node.",
    );
    for (node, n) in &m.placements() {
        let _ = writeln!(
            out,
            "switchyard_cluster_placements_total{{node=\"{}\"}} {n}",
            escape(node)
        );
    }
    header(
        out,
        "cluster_rejections_total",
        "counter",
        "Room creations refused, by reason.",
    );
    for (reason, n) in &m.rejections() {
        let _ = writeln!(
            out,
            "switchyard_cluster_rejections_total{{reason=\"{reason}\"}} {n}"
        );
    }
    header(
        out,
        "relay_setup_failures_total",
        "counter",
        "Relay set-ups that failed on this node (as source or target), by reason.",
    );
    for (reason, n) in &m.relay_failures() {
        let _ = writeln!(
            out,
            "switchyard_relay_setup_failures_total{{reason=\"{reason}\"}} {n}"
        );
    }
    header(
        out,
        "relay_rtt_seconds",
        "gauge",
        "Smoothed round-trip time of this node's relay links to each peer node, from RTCP \
         sender and receiver reports (RFC 3550 6.4.1); kept 10 minutes after the last link.",
    );
    for (peer, ms) in &m.relay_rtts() {
        let _ = writeln!(
            out,
            "switchyard_relay_rtt_seconds{{peer=\"{}\"}} {}",
            escape(peer),
            ms / 1000.0
        );
    }
    header(
        out,
        "relays_retargeted_total",
        "counter",
        "Relay-ins on this node taken over by a new source after theirs was lost (their viewers kept their sessions).",
    );
    let _ = writeln!(
        out,
        "switchyard_relays_retargeted_total {}",
        m.relays_retargeted
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    let nodes = m.nodes();
    type Gauge = fn(&Node) -> u64;
    let gauges: [(&str, &str, Gauge); 5] = [
        (
            "cluster_node_healthy",
            "1 when the node's last health check passed.",
            |n| u64::from(n.healthy),
        ),
        (
            "cluster_node_draining",
            "1 while the node is drained.",
            |n| u64::from(n.draining),
        ),
        (
            "cluster_node_overloaded",
            "1 while the node reports itself overloaded.",
            |n| u64::from(n.overloaded),
        ),
        (
            "cluster_node_capacity",
            "Consumers the node is sized for.",
            |n| n.capacity,
        ),
        (
            "cluster_node_free",
            "Consumers not reserved by rooms on the node.",
            |n| n.free(),
        ),
    ];
    for (name, text, f) in gauges {
        header(out, name, "gauge", text);
        for n in &nodes {
            let _ = writeln!(
                out,
                "switchyard_{name}{{node=\"{}\"}} {}",
                escape(&n.node_id),
                f(n)
            );
        }
    }
    let counters = [
        (
            "room_events_sent_total",
            "Room events delivered to eventNotificationUri (2xx).",
            &m.events_sent,
        ),
        (
            "room_events_failed_total",
            "Room events whose delivery failed (error, timeout or non-2xx).",
            &m.events_failed,
        ),
        (
            "room_events_dropped_total",
            "Room events dropped because the delivery queue was full.",
            &m.events_dropped,
        ),
        (
            "rooms_closed_idle_total",
            "Rooms closed idle: empty for the grace period, or never joined within the idle timeout.",
            &m.rooms_closed_idle,
        ),
        (
            "cluster_nodes_removed_total",
            "Dead nodes this control plane removed (lease lapsed, or silent health checks).",
            &m.nodes_removed,
        ),
        (
            "cluster_fast_verdicts_total",
            "Nodes found dead without waiting for health rounds (a relay from them went quiet, or a client was about to be sent to them): their host refused connections to their API three times in a row.",
            &m.fast_verdicts,
        ),
        (
            "cluster_rooms_moved_total",
            "Rooms of removed nodes this control plane placed again on a live node.",
            &m.rooms_moved,
        ),
    ];
    for (name, text, value) in counters {
        header(out, name, "counter", text);
        let _ = writeln!(out, "switchyard_{name} {}", value.load(Ordering::Relaxed));
    }
}

/// A label value as the exposition format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Forward egresses by state, and failed set-ups (each one retried with backoff).
pub fn render_forwards(out: &mut String, m: &Manager) {
    header(
        out,
        "forward_egresses",
        "gauge",
        "Forward egresses (destination x stream x track) by state.",
    );
    for (state, n) in STATE_NAMES.iter().zip(m.state_counts()) {
        let _ = writeln!(out, "switchyard_forward_egresses{{state=\"{state}\"}} {n}");
    }
    header(
        out,
        "forward_retries_total",
        "counter",
        "Forward egress set-ups that failed and were scheduled for a retry.",
    );
    let _ = writeln!(out, "switchyard_forward_retries_total {}", m.retries());
    header(out, "forwards", "gauge", "Forwards configured or created.");
    let _ = writeln!(out, "switchyard_forwards {}", m.forwards().count());
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP switchyard_{name} {help}");
    let _ = writeln!(out, "# TYPE switchyard_{name} {kind}");
}

fn help(c: Counter) -> &'static str {
    match c {
        Counter::RxPackets => "Datagrams received by the worker.",
        Counter::RxBytes => "Bytes received by the worker.",
        Counter::TxPackets => "Datagrams sent by the worker.",
        Counter::TxBytes => "Bytes sent by the worker.",
        Counter::Forwarded => "RTP packets forwarded to subscribers.",
        Counter::CrossWorkerOut => "Packets handed to other workers (one per packet per worker).",
        Counter::CrossWorkerIn => "Packets received from other workers.",
        Counter::NacksReceived => "NACKed packets requested by subscribers.",
        Counter::Retransmitted => "Packets retransmitted from the NACK cache.",
        Counter::PliForwarded => "PLI/FIR passed to publishers.",
        Counter::PliThrottled => "PLI/FIR suppressed by the throttle.",
        Counter::Sessions => "Live sessions on the worker.",
        Counter::KernelRxDrops => "Datagrams the kernel dropped on a full receive queue.",
        Counter::LoopTurns => "Worker loop turns.",
        Counter::RelayRxPackets => "Media and data channel packets received over relay links.",
        Counter::RelayTxPackets => {
            "Media and data channel packets sent over relay links (one per link)."
        }
        Counter::RelayNacksSent => "Sequence numbers NACKed upstream over relay links.",
        Counter::DataChannelIn => "Data channel messages received from peers.",
        Counter::DataChannelOut => "Data channel messages sent to subscribers.",
        Counter::DataChannelDropped => {
            "Data channel messages not delivered (from subscribers, unknown channel, full queue or send buffer)."
        }
        Counter::RelayDataOut => "Data channel events (open, message, close) sent over relay links.",
        Counter::RelayDataIn => "Data channel events received over relay links.",
        Counter::WorkerEventsCoalesced => {
            "Worker events replaced by a newer one before the slow path took them (address moves)."
        }
        Counter::RingEventsCoalesced => {
            "Events for the control plane replaced by a newer one, or dropped because their session ended, while the event ring was full."
        }
        Counter::LatchTrials => {
            "Trial decryptions of unknown-source datagrams against publishers waiting to latch."
        }
        Counter::LatchRefused => {
            "Unknown-source datagrams not tried against waiting publishers: their source's latch budget was used up."
        }
        Counter::TcpConnections => "ICE-TCP connections open.",
        Counter::TcpAccepted => "ICE-TCP connections accepted.",
        Counter::TcpRefused => {
            "ICE-TCP connections closed at once: over the per-worker or per-address limit."
        }
        Counter::TcpRxPackets => "Packets received on ICE-TCP connections.",
        Counter::TcpTxPackets => "Packets sent on ICE-TCP connections.",
        Counter::TcpTxDropped => {
            "Packets dropped because an ICE-TCP connection's output buffer was full."
        }
        Counter::SimulcastRtxDropped => {
            "Packets of a simulcast layer's RTX stream (repaired-rid) dropped: uplink repair off or no such layer."
        }
        Counter::LayerSwitches => "Simulcast layer switches made for viewers, at keyframes.",
        Counter::UplinkNacksSent => {
            "Sequence numbers NACKed to WebRTC publishers (uplink repair, each try counts)."
        }
        Counter::UplinkRtxReceived => {
            "RTX packets received from publishers, padding-only probes included."
        }
        Counter::UplinkRecovered => {
            "Publisher packets that filled a NACKed gap (RTX or late original), forwarded once."
        }
        Counter::UplinkUnrecovered => {
            "Publisher sequence numbers given up after the last NACK (a PLI follows)."
        }
        Counter::GsoMessages => "UDP_SEGMENT messages sent (two datagrams or more each).",
        Counter::GsoSegments => "Datagrams sent inside UDP_SEGMENT messages.",
        Counter::GsoRefused => {
            "Segmented messages the kernel refused for their route (sent again one datagram each; the destination is no longer segmented)."
        }
        Counter::GroBuffers => {
            "Coalesced buffers received on the relay socket (UDP_GRO, two datagrams or more)."
        }
        Counter::GroSegments => "Datagrams walked out of coalesced relay buffers.",
        Counter::BweProbes => "Bandwidth probes sent to viewers (padding on their RTX stream).",
        Counter::BweProbesCarried => {
            "Bandwidth probes whose feedback showed the path carrying a rate."
        }
        Counter::BweProbesFailed => "Bandwidth probes lost in good part or never answered.",
        Counter::LateJoinStarts => {
            "Groups (tracks, or simulcast layers) a new subscriber started from: the packets since the last keyframe, not a keyframe request."
        }
        Counter::LateJoinPackets => "Packets of cached groups sent to new subscribers.",
        Counter::LateJoinAborted => {
            "Replays of cached groups that could not finish (a keyframe was asked for instead)."
        }
        Counter::LateJoinBusy => {
            "New subscribers not started from the cached group: the worker had 64 replays under way."
        }
        _ => "Datagrams dropped, by reason.",
    }
}

/// Render everything.
pub fn render(inner: &Inner, http: &Counters, load: Option<&LoadReport>) -> String {
    let mut out = String::with_capacity(8192);
    let node = &inner.node;
    header(
        &mut out,
        "dataplane_up",
        "gauge",
        "1 when the control plane is attached to a live data plane and in sync.",
    );
    let _ = writeln!(
        out,
        "switchyard_dataplane_up {}",
        u8::from(node.ready().is_ok())
    );
    if let Some(stats) = &inner.stats {
        workers(&mut out, stats);
    }
    header(
        &mut out,
        "control_sessions",
        "gauge",
        "Sessions in the control plane's table, by role.",
    );
    let (mut publishers, mut subscribers) = (0u64, 0u64);
    let (mut relays_in, mut relays_out) = (0u64, 0u64);
    for s in node.sessions() {
        match s.role {
            Role::Publisher { .. } => publishers += 1,
            Role::Subscriber { .. } => subscribers += 1,
            Role::RelayIn { .. } => relays_in += 1,
            Role::RelayOut => relays_out += 1,
        }
    }
    let _ = writeln!(
        out,
        "switchyard_control_sessions{{role=\"publisher\"}} {publishers}"
    );
    let _ = writeln!(
        out,
        "switchyard_control_sessions{{role=\"subscriber\"}} {subscribers}"
    );
    let _ = writeln!(
        out,
        "switchyard_control_sessions{{role=\"relay-in\"}} {relays_in}"
    );
    let _ = writeln!(
        out,
        "switchyard_control_sessions{{role=\"relay-out\"}} {relays_out}"
    );
    header(
        &mut out,
        "relays_active",
        "gauge",
        "Relay links of this node: in (fed by another node) and out (feeding another node).",
    );
    let _ = writeln!(
        out,
        "switchyard_relays_active{{direction=\"in\"}} {relays_in}"
    );
    let _ = writeln!(
        out,
        "switchyard_relays_active{{direction=\"out\"}} {relays_out}"
    );
    header(
        &mut out,
        "command_ring_depth",
        "gauge",
        "Commands pushed and not yet read by the data plane.",
    );
    let _ = writeln!(
        out,
        "switchyard_command_ring_depth {}",
        inner.ring_depth().unwrap_or(0)
    );
    let counters = [
        (
            "http_requests_total",
            "HTTP requests answered.",
            &http.requests,
        ),
        (
            "http_client_errors_total",
            "HTTP requests answered with 4xx.",
            &http.client_errors,
        ),
        (
            "http_server_errors_total",
            "HTTP requests answered with 5xx.",
            &http.server_errors,
        ),
        (
            "sessions_created_total",
            "Sessions created through the API.",
            &http.sessions_created,
        ),
        (
            "sessions_refused_total",
            "Session requests the data plane refused or that timed out.",
            &http.sessions_refused,
        ),
        (
            "sessions_removed_total",
            "Sessions removed through the API.",
            &http.sessions_removed,
        ),
    ];
    for (name, text, value) in counters {
        header(&mut out, name, "counter", text);
        let _ = writeln!(out, "switchyard_{name} {}", value.load(Ordering::Relaxed));
    }
    header(
        &mut out,
        "sessions_throttled_total",
        "counter",
        "Session creations refused with 429 by [limits]: a client's live-session cap (quota) or creation rate (rate).",
    );
    for (reason, value) in [
        ("quota", &http.throttled_quota),
        ("rate", &http.throttled_rate),
    ] {
        let _ = writeln!(
            out,
            "switchyard_sessions_throttled_total{{reason=\"{reason}\"}} {}",
            value.load(Ordering::Relaxed)
        );
    }
    header(
        &mut out,
        "http_connections_open",
        "gauge",
        "HTTP connections held now (TLS handshakes included).",
    );
    let _ = writeln!(
        out,
        "switchyard_http_connections_open {}",
        http.connections_open.load(Ordering::Relaxed)
    );
    header(
        &mut out,
        "http_connections_refused_total",
        "counter",
        "HTTP connections closed as soon as accepted: [http] max_connections were held.",
    );
    let _ = writeln!(
        out,
        "switchyard_http_connections_refused_total {}",
        http.connections_refused.load(Ordering::Relaxed)
    );
    if let Some(l) = load {
        header(
            &mut out,
            "node_load",
            "gauge",
            "Share in use of each resource of this node, as its load heartbeat measured it.",
        );
        for (resource, share) in &l.load {
            let _ = writeln!(
                out,
                "switchyard_node_load{{resource=\"{resource}\"}} {share}"
            );
        }
        header(
            &mut out,
            "node_overloaded",
            "gauge",
            "1 while this node is at the overload ratio of a resource.",
        );
        let _ = writeln!(out, "switchyard_node_overloaded {}", u8::from(l.overloaded));
    }
    render_cluster(&mut out, counters::cluster());
    out
}

fn workers(out: &mut String, stats: &Stats) {
    let blocks: Vec<_> = (0..stats.workers())
        .filter_map(|w| stats.worker(w))
        .collect();
    for c in Counter::ALL {
        if c.drop_reason().is_some() || c.in_histogram() {
            continue;
        }
        let kind = if c.is_gauge() { "gauge" } else { "counter" };
        header(out, c.name(), kind, help(c));
        for (w, block) in blocks.iter().enumerate() {
            let _ = writeln!(
                out,
                "switchyard_{}{{worker=\"{w}\"}} {}",
                c.name(),
                block.get(c)
            );
        }
    }
    for h in HISTOGRAMS {
        header(out, h.name, "histogram", h.help);
        for (w, block) in blocks.iter().enumerate() {
            let mut total = 0;
            for (i, b) in h.buckets.iter().enumerate() {
                total += block.get(*b);
                let le = SEGMENT_BUCKETS
                    .get(i)
                    .map_or_else(|| "+Inf".to_owned(), |v| v.to_string());
                let _ = writeln!(
                    out,
                    "switchyard_{}_bucket{{worker=\"{w}\",le=\"{le}\"}} {total}",
                    h.name
                );
            }
            let _ = writeln!(
                out,
                "switchyard_{}_sum{{worker=\"{w}\"}} {}",
                h.name,
                block.get(h.sum)
            );
            let _ = writeln!(out, "switchyard_{}_count{{worker=\"{w}\"}} {total}", h.name);
        }
    }
    header(
        out,
        "drops_total",
        "counter",
        "Datagrams dropped, by reason.",
    );
    for (w, block) in blocks.iter().enumerate() {
        for r in DropReason::ALL {
            let _ = writeln!(
                out,
                "switchyard_drops_total{{worker=\"{w}\",reason=\"{}\"}} {}",
                r.label(),
                block.get(r.counter())
            );
        }
    }
}

//! What each list looks like as a table: pure functions of the API's JSON (and the time,
//! for ages), so they are tested without a node. A field the API leaves out prints `-`.

use serde_json::Value;

use super::table::{age, bitrate, bytes, percent, Table};

fn text(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => "-".into(),
    }
}

fn num(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v[key].as_array().map_or(&[], Vec::as_slice)
}

/// `GET /v1/nodes`.
pub fn nodes(answer: &Value, now_ms: u64) -> Table {
    let mut t = Table::new(&[
        "NODE",
        "STATUS",
        "LOAD",
        "RESERVED",
        "CAPACITY",
        "WORKERS",
        "URL",
        "MEDIA",
        "HEARTBEAT",
    ]);
    for n in list(answer, "nodes") {
        let mut status = Vec::new();
        if n["healthy"] == false {
            status.push("unhealthy");
        }
        if n["draining"] == true {
            status.push("draining");
        }
        if n["overloaded"] == true {
            status.push("overloaded");
        }
        if status.is_empty() {
            status.push("ok");
        }
        // The busiest resource: what keeps rooms away first.
        let load = n["load"]
            .as_object()
            .and_then(|l| {
                l.iter()
                    .filter_map(|(k, v)| Some((k, v.as_f64()?)))
                    .max_by(|a, b| a.1.total_cmp(&b.1))
            })
            .map_or_else(|| "-".into(), |(k, v)| format!("{} {k}", percent(v)));
        t.row(vec![
            text(n, "nodeId"),
            status.join(","),
            load,
            text(n, "reserved"),
            text(n, "capacity"),
            text(n, "workers"),
            text(n, "url"),
            text(n, "mediaAddress"),
            match num(n, "heartbeatMs") {
                0 => "-".into(),
                ms => format!("{} ago", age(ms, now_ms)),
            },
        ]);
    }
    t
}

/// `GET /v1/rooms`.
pub fn rooms(answer: &Value, now_ms: u64) -> Table {
    let mut t = Table::new(&["ROOM", "NODE", "MAX PEERS", "CONSUMERS", "AGE", "WHIP URL"]);
    for r in list(answer, "rooms") {
        let node = match text(r, "node").as_str() {
            "-" => "(unplaced)".to_owned(),
            n => n.to_owned(),
        };
        t.row(vec![
            text(r, "roomId"),
            node,
            text(r, "maxPeerCount"),
            text(r, "consumers"),
            age(num(r, "createdMs"), now_ms),
            text(r, "whipUrl"),
        ]);
    }
    t
}

/// `GET /v1/streams`: this node's streams with their counters.
pub fn streams(answer: &Value) -> Table {
    let mut t = Table::new(&[
        "STREAM",
        "WEBRTC",
        "SUBSCRIBERS",
        "PACKETS IN",
        "BYTES IN",
        "PACKETS OUT",
        "BYTES OUT",
    ]);
    for s in list(answer, "streams") {
        t.row(vec![
            text(s, "stream"),
            if s["webrtc"] == true { "yes" } else { "no" }.into(),
            text(s, "subscribers"),
            num(s, "packetsIn").to_string(),
            bytes(num(s, "bytesIn")),
            num(s, "packetsOut").to_string(),
            bytes(num(s, "bytesOut")),
        ]);
    }
    t
}

/// `GET /v1/cluster/streams`: every node's streams and the relay links that feed them.
pub fn cluster_streams(answer: &Value) -> Table {
    let mut t = Table::new(&["STREAM", "NODE", "RELAYED FROM", "HOPS"]);
    for s in list(answer, "streams") {
        let hops: Vec<&str> = list(s, "hops").iter().filter_map(Value::as_str).collect();
        t.row(vec![
            text(s, "stream"),
            text(s, "node"),
            text(s, "relayedFrom"),
            if hops.is_empty() {
                "-".into()
            } else {
                hops.join(" > ")
            },
        ]);
    }
    t
}

/// `GET /v1/sessions`.
pub fn sessions(answer: &Value, now_ms: u64) -> Table {
    let mut t = Table::new(&[
        "ID",
        "ROLE",
        "STREAM",
        "WORKER",
        "REMOTE",
        "TRANSPORT",
        "IN",
        "OUT",
        "LAST PACKET",
        "AGE",
    ]);
    for s in list(answer, "sessions") {
        // WebRTC sessions carry their ICE and DTLS states; the rest has static SRTP keys.
        // ICE comes first: DTLS starts once a check latched the peer.
        let transport = match (s["ice"].as_str(), s["dtls"].as_str()) {
            (None, None) => "srtp".to_owned(),
            (Some(ice), _) if ice != "connected" => format!("webrtc ice {ice}"),
            (_, Some(dtls)) if dtls != "connected" => format!("webrtc dtls {dtls}"),
            _ => "webrtc connected".into(),
        };
        let stats = &s["stats"];
        let rate = |k: &str| stats[k].as_u64().map_or_else(|| "-".into(), bitrate);
        t.row(vec![
            text(s, "id"),
            text(s, "role"),
            text(s, "stream"),
            text(s, "worker"),
            text(s, "remote"),
            transport,
            rate("bitrateIn"),
            rate("bitrateOut"),
            stats["msSinceLastPacket"].as_u64().map_or_else(
                || "-".into(),
                |ms| format!("{:.1}s ago", ms as f64 / 1000.0),
            ),
            age(num(s, "createdMs"), now_ms),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_796_172_700_000;

    #[test]
    fn nodes_show_status_and_the_busiest_resource() {
        let answer = json!({"nodes": [
            {"nodeId": "a", "url": "http://10.0.0.1:8080", "mediaAddress": "10.0.0.1",
             "workers": 2, "capacity": 1000, "reserved": 12, "healthy": true,
             "draining": false, "overloaded": false, "load": {"cpu": 0.1, "sessions": 0.25},
             "labels": {}, "registeredMs": NOW - 600_000, "heartbeatMs": NOW - 3000},
            {"nodeId": "b", "url": "http://10.0.0.2:8080", "mediaAddress": "10.0.0.2",
             "workers": 1, "capacity": 500, "reserved": 0, "healthy": false,
             "draining": true, "overloaded": false, "load": {},
             "labels": {}, "registeredMs": NOW, "heartbeatMs": 0},
        ]});
        let out = nodes(&answer, NOW).render();
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NODE  STATUS"), "{out}");
        assert!(lines[1].starts_with("a     ok"), "{out}");
        assert!(
            lines[1].contains("25% sessions") && lines[1].ends_with("3s ago"),
            "{out}"
        );
        assert!(lines[2].starts_with("b     unhealthy,draining  -"), "{out}");
    }

    #[test]
    fn sessions_show_transport_rates_and_age() {
        let answer = json!({"sessions": [
            {"id": 7, "role": "subscriber", "stream": "room1/cam", "worker": 0,
             "remote": "127.0.0.1:4000", "createdMs": NOW - 90_000,
             "ice": "connected", "dtls": "connected",
             "stats": {"bitrateIn": 1200, "bitrateOut": 1_650_000, "msSinceLastPacket": 480}},
            {"id": 8, "role": "publisher", "stream": "room1/mic", "worker": 0,
             "remote": null, "createdMs": NOW - 1000},
            {"id": 9, "role": "publisher", "stream": "room1/x", "worker": 0,
             "createdMs": NOW, "ice": "checking", "dtls": "connecting"},
        ]});
        let out = sessions(&answer, NOW).render();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        for want in [
            "webrtc connected",
            "1.2 kbit/s",
            "1.65 Mbit/s",
            "0.5s ago",
            "90s",
        ] {
            assert!(lines[1].contains(want), "{want}: {out}");
        }
        assert!(
            lines[2].contains(" srtp ") && lines[2].contains(" - "),
            "{out}"
        );
        assert!(lines[3].contains("webrtc ice checking"), "{out}");
    }

    #[test]
    fn streams_rooms_and_cluster_streams() {
        let s = streams(&json!({"streams": [{"stream": "demo/cam", "subscribers": 2,
            "webrtc": true, "packetsIn": 5210, "bytesIn": 5_371_000, "packetsOut": 10420,
            "bytesOut": 10_742_000}]}))
        .render();
        assert!(s.lines().nth(1).is_some_and(|l| l
            .split_whitespace()
            .eq(["demo/cam", "yes", "2", "5210", "5.1", "MiB", "10420", "10.2", "MiB"])));
        let r = rooms(
            &json!({"rooms": [{"roomId": "r1", "node": "", "maxPeerCount": 4,
            "consumers": 12, "createdMs": NOW - 7_200_000, "whipUrl": null}]}),
            NOW,
        )
        .render();
        assert!(r.lines().nth(1).is_some_and(|l| l.split_whitespace().eq([
            "r1",
            "(unplaced)",
            "4",
            "12",
            "2h",
            "-"
        ])));
        let c = cluster_streams(&json!({"streams": [
            {"stream": "r/cam", "node": "a", "hops": [], "relayedFrom": null},
            {"stream": "r/cam", "node": "c", "hops": ["a", "b"], "relayedFrom": "b"}]}))
        .render();
        let rows: Vec<Vec<&str>> = c.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(rows[1], ["r/cam", "a", "-", "-"]);
        assert_eq!(rows[2], ["r/cam", "c", "b", "a", ">", "b"]);
    }
}

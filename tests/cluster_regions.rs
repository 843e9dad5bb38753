//! Regions (issue #13): two regions of two real nodes each (`x1`, `x2` in `x`; `y1`, `y2` in
//! `y`) on loopback, one Redis, one auth key.
//!
//! - `rooms_stay_in_the_clients_region_while_it_has_room`: the client's region from the
//!   `cluster.region_map` rule for its address (requests sent from 127.0.0.2 and 127.0.0.3)
//!   or from the `X-Switchyard-Region` header of a cluster-token caller (which wins; a user
//!   token's header is ignored); rooms go to the client's region until it is full, then to
//!   the other; `/v1/resolve` with a region names a node of that region for its viewers.
//! - `a_region_pulls_a_stream_once`: a stream published (WHIP) in `x`; a viewer in `y` on the
//!   node `/v1/resolve?region=y` names pulls it into `y` through one relay; a viewer on the
//!   other `y` node is served from the `y` holder (a relay `y`→`y`), not from `x`: exactly one
//!   relay leaves `x`.
//! - `relay_links_measure_their_round_trip`: SRTP media and sender reports from a publisher
//!   on `x1`, relayed to `y1`: `x1` measures the link's RTT from `y1`'s receiver reports and
//!   shows it in `GET /v1/relays`, `/metrics` and its node record.
//!
//! Needs `redis-server` on the PATH (scripts/test.sh installs it); skipped loudly without.

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::cluster::{cli, wait};
use common::{Http, Node, Redis};

const OFFER: &str = include_str!("../controlplane/src/sdp/fixtures/chrome_publish.sdp");
const WATCH: &str = include_str!("../controlplane/src/sdp/fixtures/chrome_subscribe.sdp");

/// Source addresses the region map places in `x` and `y`.
const IN_X: &str = "127.0.0.2";
const IN_Y: &str = "127.0.0.3";

/// Four nodes, two per region, sharing a Redis and an auth key.
struct Regions {
    /// x1, x2, y1, y2.
    nodes: Vec<Node>,
    key: String,
    token: String,
    redis: Redis,
    dir: PathBuf,
}

impl Drop for Regions {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const IDS: [&str; 4] = ["x1", "x2", "y1", "y2"];

/// `consumers_per_worker`: each node (one worker) holds that many consumers of rooms.
fn regions(test: &str, consumers_per_worker: u32) -> Option<Regions> {
    if !Redis::required(test) {
        return None;
    }
    let dir = std::env::temp_dir().join(format!("swy-regions-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let redis = Redis::start_free(&dir, false);
    let key = cli(&["token", "generate"]);
    let token = cli(&[
        "token",
        "sign",
        "--key",
        &key,
        "--cluster",
        "--expires",
        "1h",
    ]);
    let config = dir.join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nkey = \"{key}\"\n[cluster]\nhealth_interval_ms = 300\n\
             consumers_per_worker = {consumers_per_worker}\nrelay_grace_ms = 60000\n\
             [[cluster.region_map]]\ncidr = \"{IN_X}/32\"\nregion = \"x\"\n\
             [[cluster.region_map]]\ncidr = \"{IN_Y}/32\"\nregion = \"y\"\n"
        ),
    )
    .expect("config");
    let nodes: Vec<Node> = IDS
        .iter()
        .map(|id| {
            let args: Vec<std::ffi::OsString> = vec![
                "--config".into(),
                config.clone().into(),
                "--redis".into(),
                redis.url().into(),
                "--region".into(),
                id[..1].into(),
            ];
            Node::spawn_named(id, 1, args)
        })
        .collect();
    for n in &nodes {
        n.wait_healthy();
    }
    let r = Regions {
        nodes,
        key,
        token,
        redis,
        dir,
    };
    wait("every node registered, healthy, with its region", || {
        let list = r.call(0, "GET", "/v1/nodes", None).json();
        list["nodes"].as_array().is_some_and(|l| {
            l.len() == 4
                && l.iter().all(|n| {
                    n["healthy"] == true
                        && n["region"].as_str() == n["nodeId"].as_str().map(|id| &id[..1])
                })
        })
    });
    Some(r)
}

impl Regions {
    fn index(&self, id: &str) -> usize {
        IDS.iter().position(|i| *i == id).expect("node id")
    }

    /// A request to node `i` from 127.0.0.1 with the cluster token.
    fn call(&self, i: usize, method: &str, path: &str, body: Option<&str>) -> Http {
        self.from("127.0.0.1", i, method, path, body, &[])
    }

    /// A request to node `i` from source address `src`, with the cluster token and `headers`.
    fn from(
        &self,
        src: &str,
        i: usize,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Http {
        let bearer = format!("Bearer {}", self.token);
        let mut all = vec![("Authorization", bearer.as_str())];
        all.extend_from_slice(headers);
        request(src, &self.nodes[i].http_addr, method, path, body, &all)
    }

    fn relays(&self, i: usize) -> serde_json::Value {
        let r = self.call(i, "GET", "/v1/relays", None);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    /// Whether node `node` is listed in the store as publishing `stream` (`streams:<node>`).
    fn store_lists(&self, node: &str, stream: &str) -> bool {
        redis_hget(
            self.redis.port,
            &format!("{{switchyard}}:streams:{node}"),
            stream,
        )
        .is_some()
    }
}

/// One HTTP/1.1 request from source address `src` (a loopback address other than
/// 127.0.0.1 is how a test stands for a client elsewhere).
fn request(
    src: &str,
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Http {
    let mut s = connect_from(src, addr);
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let body = body.unwrap_or_default();
    let ctype = if path.starts_with("/whip/") || path.starts_with("/whep/") {
        "application/sdp"
    } else {
        "application/json"
    };
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    Http {
        status: head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        headers: head.to_owned(),
        body: body.to_owned(),
    }
}

/// A TCP connection to `addr` from `src` (any port).
fn connect_from(src: &str, addr: &str) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    let stream = rt
        .block_on(async {
            let s = tokio::net::TcpSocket::new_v4()?;
            s.bind(format!("{src}:0").parse().expect("source"))?;
            s.connect(addr.parse().expect("address")).await
        })
        .unwrap_or_else(|e| panic!("connect {addr} from {src}: {e}"));
    let std = stream.into_std().expect("std stream");
    std.set_nonblocking(false).expect("blocking");
    std
}

/// `HGET key field` on the Redis at `port`, in RESP by hand: the value, None when absent.
fn redis_hget(port: u16, key: &str, field: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let arg = |a: &str| format!("${}\r\n{a}\r\n", a.len());
    let cmd = format!("*3\r\n{}{}{}", arg("HGET"), arg(key), arg(field));
    s.write_all(cmd.as_bytes()).ok()?;
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).ok()?;
    let reply = String::from_utf8_lossy(&buf[..n]);
    // `$-1` is nil; `$<len>\r\n<value>\r\n` a value.
    let (len, rest) = reply.strip_prefix('$')?.split_once("\r\n")?;
    let len: usize = len.parse().ok()?;
    rest.get(..len).map(str::to_owned)
}

fn room_body(peers: u32) -> String {
    format!(r#"{{"maxPeerCount":{peers}}}"#)
}

#[test]
fn rooms_stay_in_the_clients_region_while_it_has_room() {
    // Each node holds two rooms of 3 peers (6 consumers each).
    let Some(r) = regions("placement", 12) else {
        return;
    };
    let nodes = r.call(0, "GET", "/v1/nodes", None).json();
    for n in nodes["nodes"].as_array().expect("nodes") {
        assert_eq!(n["capacity"], 12, "{n}");
    }
    let body = room_body(3);
    let place = |src: &str, room: &str, header: Option<&str>| -> serde_json::Value {
        let h: Vec<(&str, &str)> = header
            .map(|v| vec![("X-Switchyard-Region", v)])
            .unwrap_or_default();
        let resp = r.from(
            src,
            0,
            "POST",
            &format!("/v1/rooms/{room}"),
            Some(&body),
            &h,
        );
        assert_eq!(resp.status, 201, "{room}: {}", resp.body);
        resp.json()
    };
    // By address: the region map puts 127.0.0.3 in y. Placed there, and says so.
    let by_addr = place(IN_Y, "by-addr", None);
    assert_eq!(by_addr["nodeRegion"], "y", "{by_addr}");
    assert_eq!(by_addr["region"], "y", "{by_addr}");
    // The header of a cluster-token caller wins over the address.
    let by_header = place(IN_Y, "by-header", Some("x"));
    assert_eq!(by_header["nodeRegion"], "x", "{by_header}");
    assert_eq!(by_header["region"], "x", "{by_header}");
    // Neither: no preference (the room goes anywhere), and none recorded.
    let anywhere = place("127.0.0.1", "anywhere", None);
    assert!(anywhere.get("region").is_none(), "{anywhere}");
    let free_in_x = 24 - 6 - if anywhere["nodeRegion"] == "x" { 6 } else { 0 };
    // A malformed header from a trusted caller is refused, not ignored.
    let bad = r.from(
        IN_X,
        0,
        "POST",
        "/v1/rooms/bad",
        Some(&body),
        &[("X-Switchyard-Region", "x y")],
    );
    assert_eq!(bad.status, 400, "{}", bad.body);

    // Clients in x fill x, two rooms a node; then x is full and the next goes to y.
    let mut in_x = 0;
    for k in 0..free_in_x / 6 {
        let p = place(IN_X, &format!("fill-{k}"), None);
        assert_eq!(p["nodeRegion"], "x", "room {k}: x has room: {p}");
        in_x += 1;
    }
    assert!(in_x >= 2, "x had room for {in_x}");
    let spill = place(IN_X, "spill", None);
    assert_eq!(spill["nodeRegion"], "y", "x is full: {spill}");
    assert_eq!(
        spill["region"], "x",
        "still a room of a client in x: {spill}"
    );
    // As the store keeps it (read back from Redis through another control plane).
    let read = r.call(3, "GET", "/v1/rooms/spill", None).json();
    assert_eq!(read["region"], "x", "{read}");
    assert_eq!(read["nodeRegion"], "y", "{read}");
    let listed = r.call(0, "GET", "/v1/nodes", None).json();
    for n in listed["nodes"].as_array().expect("nodes") {
        if n["region"] == "x" {
            assert_eq!(n["reserved"], 12, "x is full: {n}");
        }
    }

    // Resolve: for a viewer in y, the WHEP URL of a room in x names a node of y (the same
    // for every such viewer); the WHIP URL stays the room's node.
    let home = by_header["node"].as_str().expect("node").to_owned();
    let res = r.call(1, "GET", "/v1/resolve?room=by-header&region=y", None);
    assert_eq!(res.status, 200, "{}", res.body);
    let res = res.json();
    assert_eq!(res["node"], home.as_str());
    let viewer = res["whepNode"].as_str().expect("whepNode").to_owned();
    assert!(viewer.starts_with('y'), "{res}");
    let viewer_url = &r.nodes[r.index(&viewer)].api;
    assert_eq!(res["whepUrl"], format!("{viewer_url}/whep/by-header"));
    assert_eq!(
        res["whipUrl"],
        format!("{}/whip/by-header", r.nodes[r.index(&home)].api)
    );
    let again = r
        .call(2, "GET", "/v1/resolve?room=by-header&region=y", None)
        .json();
    assert_eq!(again["whepNode"], viewer.as_str());
    // From y's addresses without a parameter: the same; a viewer in x stays on the room's
    // node; no region at all: as before.
    let by_addr = r
        .from(IN_Y, 3, "GET", "/v1/resolve?room=by-header", None, &[])
        .json();
    assert_eq!(by_addr["whepNode"], viewer.as_str(), "{by_addr}");
    let in_x = r
        .call(0, "GET", "/v1/resolve?room=by-header&region=x", None)
        .json();
    assert!(in_x.get("whepNode").is_none(), "{in_x}");
    let plain = r.call(0, "GET", "/v1/resolve?room=by-header", None).json();
    assert!(plain.get("whepNode").is_none(), "{plain}");
    let bad = r.call(0, "GET", "/v1/resolve?room=by-header&region=a%20b", None);
    assert_eq!(bad.status, 400, "{}", bad.body);
    // A user token's header says nothing (its address does): a caller cannot claim a region.
    let user = cli(&["token", "sign", "--key", &r.key, "--subscribe", "by-header"]);
    let bearer = format!("Bearer {user}");
    let claimed = request(
        IN_X,
        &r.nodes[0].http_addr,
        "GET",
        "/v1/resolve?room=by-header",
        None,
        &[("Authorization", &bearer), ("X-Switchyard-Region", "y")],
    );
    assert_eq!(claimed.status, 200, "{}", claimed.body);
    assert!(claimed.json().get("whepNode").is_none(), "{}", claimed.body);
}

#[test]
fn a_region_pulls_a_stream_once() {
    let Some(r) = regions("cascade", 500) else {
        return;
    };
    // A room placed for a client in x, published there.
    let room = r.from(IN_X, 2, "POST", "/v1/rooms/stage", Some(&room_body(4)), &[]);
    assert_eq!(room.status, 201, "{}", room.body);
    let room = room.json();
    let home = r.index(room["node"].as_str().expect("node"));
    assert!(IDS[home].starts_with('x'), "{room}");
    let whip = r.call(home, "POST", "/whip/stage/cam", Some(OFFER));
    assert_eq!(whip.status, 201, "{}", whip.body);

    // A viewer in y asks where to watch: a node of y.
    let res = r
        .from(IN_Y, 0, "GET", "/v1/resolve?room=stage", None, &[])
        .json();
    let near = r.index(res["whepNode"].as_str().expect("a y node"));
    assert!(IDS[near].starts_with('y'), "{res}");
    let other = if IDS[near] == "y1" {
        r.index("y2")
    } else {
        r.index("y1")
    };
    wait("the publisher's node listed in the store", || {
        r.store_lists(IDS[home], "stage/cam")
    });
    // The first viewer in y: served by `near`, which pulls the stream from x.
    let first = r.call(near, "POST", "/whep/stage/cam", Some(WATCH));
    assert_eq!(first.status, 201, "{}", first.body);
    let incoming = r.relays(near)["incoming"].clone();
    assert_eq!(incoming[0]["stream"], "stage/cam", "{incoming}");
    assert_eq!(incoming[0]["sourceNode"], IDS[home], "{incoming}");
    // More viewers on `near`: served from there, no new relay.
    for _ in 0..3 {
        let more = r.call(near, "POST", "/whep/stage/cam", Some(WATCH));
        assert_eq!(more.status, 201, "{}", more.body);
    }
    // A viewer on the other y node: the nearest holder is `near` (same region), not the
    // publisher's node in x, though that one is a hop closer to the publisher.
    wait("the y holder listed in the store", || {
        r.store_lists(IDS[near], "stage/cam")
    });
    let second = r.call(other, "POST", "/whep/stage/cam", Some(WATCH));
    assert_eq!(second.status, 201, "{}", second.body);
    let incoming = r.relays(other)["incoming"].clone();
    assert_eq!(incoming[0]["sourceNode"], IDS[near], "{incoming}");
    assert_eq!(
        incoming[0]["hops"],
        serde_json::json!([IDS[home], IDS[near]]),
        "{incoming}"
    );

    // Exactly one relay left x, to `near`; `near` feeds `other`; nothing else moved.
    let from_home = r.relays(home)["outgoing"].clone();
    let out: Vec<&serde_json::Value> = from_home
        .as_array()
        .expect("outgoing")
        .iter()
        .filter(|o| o["stream"] == "stage/cam")
        .collect();
    assert_eq!(out.len(), 1, "{from_home}");
    assert_eq!(out[0]["targetNode"], IDS[near]);
    let from_near = r.relays(near)["outgoing"].clone();
    assert_eq!(from_near.as_array().map(Vec::len), Some(1), "{from_near}");
    assert_eq!(from_near[0]["targetNode"], IDS[other]);
    let x_other = r.index(if IDS[home] == "x1" { "x2" } else { "x1" });
    assert_eq!(
        r.relays(x_other)["incoming"].as_array().map(Vec::len),
        Some(0)
    );
    assert_eq!(
        r.relays(other)["outgoing"].as_array().map(Vec::len),
        Some(0)
    );
}

/// A static SRTP publisher of `stream` on node `i`, sending from `remote`, keyed 28 × 0x07.
fn publish(r: &Regions, i: usize, stream: &str, ssrc: u32, remote: std::net::SocketAddr) {
    let b64 = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBw=="; // 28 × 0x07
    let body = format!(
        r#"{{"role":"publisher","stream":"{stream}","remoteKey":"{b64}","ssrcs":[{ssrc}],"remote":"{remote}"}}"#
    );
    let resp = r.call(i, "POST", "/v1/sessions", Some(&body));
    assert_eq!(resp.status, 201, "{}", resp.body);
}

#[test]
fn relay_links_measure_their_round_trip() {
    use switchyard_shared::command::SrtpProfile;
    use switchyard_shared::packet::rtcp;
    use switchyard_shared::srtp::Context;

    let Some(r) = regions("rtt", 500) else {
        return;
    };
    let (x1, y1) = (r.index("x1"), r.index("y1"));
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
    publish(&r, x1, "rtt/cam", 4242, sender.local_addr().expect("addr"));
    let relay = r.call(
        x1,
        "POST",
        "/v1/streams/rtt/cam/relays",
        Some(r#"{"targetNode":"y1"}"#),
    );
    assert_eq!(relay.status, 201, "{}", relay.body);

    // RTP at 50 packets/s and a sender report a second, as a real sender does, until x1
    // has a round trip from y1's receiver reports.
    let mut tx = Context::new(SrtpProfile::AeadAes128Gcm, &[7; 28]).expect("ctx");
    let media = ("127.0.0.1", r.nodes[x1].media_port);
    let started = Instant::now();
    let mut seq = 0u16;
    let mut measured = None;
    while measured.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no RTT on the relay link: {}",
            r.relays(x1)
        );
        for _ in 0..50 {
            seq = seq.wrapping_add(1);
            let mut buf = vec![0u8; 12 + 100 + 16];
            buf[0] = 0x80;
            buf[1] = 96;
            buf[2..4].copy_from_slice(&seq.to_be_bytes());
            buf[4..8].copy_from_slice(&(u32::from(seq) * 1800).to_be_bytes());
            buf[8..12].copy_from_slice(&4242u32.to_be_bytes());
            let n = tx.protect_rtp(&mut buf, 112).expect("protect");
            sender.send_to(&buf[..n], media).expect("send");
            std::thread::sleep(Duration::from_millis(20));
        }
        let ntp =
            (started.elapsed().as_secs_f64() * 4_294_967_296.0) as u64 + (3_900_000_000 << 32);
        let mut sr = vec![0u8; 64];
        let len =
            rtcp::write_sender_report(&mut sr, 4242, ntp, u32::from(seq) * 1800, 50, 5000, &[])
                .expect("SR");
        let n = tx.protect_rtcp(&mut sr, len).expect("protect SR");
        sender.send_to(&sr[..n], media).expect("send SR");
        let out = r.relays(x1)["outgoing"].clone();
        measured = out[0]["rttMs"].as_f64();
    }
    // Loopback: well under a second, above nothing.
    let rtt = measured.expect("rtt");
    assert!(rtt > 0.0 && rtt < 1000.0, "{rtt}");
    // Per session too, and per peer in the metrics and in x1's node record, where every
    // node's cascade reads it.
    let sessions = r.call(x1, "GET", "/v1/sessions", None).json();
    let out = sessions["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .find(|s| s["role"] == "relay-out")
        .expect("relay-out")
        .clone();
    assert!(out["stats"]["rttMs"].as_f64().is_some(), "{out}");
    wait("x1's metrics and node record carry the RTT to y1", || {
        let metrics = r.nodes[x1].get("/metrics").body;
        let nodes = r.call(y1, "GET", "/v1/nodes", None).json();
        let recorded = nodes["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .find(|n| n["nodeId"] == "x1")
            .and_then(|n| n["relayRttMs"]["y1"].as_f64());
        metrics.contains("switchyard_relay_rtt_seconds{peer=\"y1\"}") && recorded.is_some()
    });
}

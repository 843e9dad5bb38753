//! What a new user needs to see when the node starts: where the demo page and the API are,
//! where media goes and which addresses peers are told, whether auth is on. Printed once on
//! stdout (the log goes to stderr), so `switchyard up` in a terminal shows it plainly.

use std::fmt::Write as _;
use std::net::SocketAddr;

use switchyard_shared::config::Config;

/// The banner for a control plane serving `scheme` on `http`.
pub fn render(config: &Config, scheme: &str, http: SocketAddr) -> String {
    let m = &config.media;
    let workers = m.worker_count();
    let last = |first: u16| first.saturating_add(workers.saturating_sub(1));
    let (announced, source) = m.announced();
    let announced: Vec<String> = announced.iter().map(ToString::to_string).collect();
    let shown = if http.ip().is_unspecified() {
        SocketAddr::new(m.announce_ip(), http.port())
    } else {
        http
    };
    let base = format!("{scheme}://{shown}");
    let mut b = String::new();
    let _ = writeln!(
        b,
        "Switchyard {} — node {}",
        env!("CARGO_PKG_VERSION"),
        config.node.id
    );
    let _ = writeln!(b, "  demo page  {base}/");
    let _ = writeln!(
        b,
        "  API        {base}/v1/  (OpenAPI document: {base}/api; health {base}/health, metrics {base}/metrics)"
    );
    let _ = writeln!(
        b,
        "  WHIP/WHEP  {base}/whip/ROOM/STREAM, {base}/whep/ROOM/STREAM"
    );
    let tcp = if m.ice_tcp { "UDP+TCP" } else { "UDP" };
    let _ = writeln!(
        b,
        "  media      {tcp} {}:{}-{} ({workers} worker{}, engine {}), announced as {} ({source})",
        m.bind,
        m.port,
        last(m.port),
        if workers == 1 { "" } else { "s" },
        format!("{:?}", m.engine).to_lowercase(),
        announced.join(", "),
    );
    let _ = writeln!(
        b,
        "  relay      UDP {}:{}-{} (between nodes only)",
        m.bind,
        m.relay_port,
        last(m.relay_port)
    );
    let auth = if config.auth.enabled() {
        "on (clients need a token: switchyard token sign --help)"
    } else if http.ip().is_loopback() {
        "off (the API listens on loopback only)"
    } else {
        "OFF on a public address: anyone who reaches it can publish, watch and forward"
    };
    let _ = writeln!(b, "  auth       {auth}");
    let cluster = match &config.cluster.redis {
        Some(_) => "redis (shared with the other nodes)",
        None => "in memory (a single node)",
    };
    let _ = writeln!(b, "  cluster    {cluster}");
    b
}

/// True when the API is reachable from elsewhere with auth off (`--insecure`).
pub fn exposed(config: &Config, http: SocketAddr) -> bool {
    !config.auth.enabled() && !http.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_where_everything_is() {
        let mut c = Config::default();
        c.media.workers = 2;
        c.media.announce = vec!["203.0.113.7".parse().expect("ip")];
        let b = render(&c, "http", "127.0.0.1:8080".parse().expect("addr"));
        for want in [
            "demo page  http://127.0.0.1:8080/",
            "http://127.0.0.1:8080/whip/ROOM/STREAM",
            "UDP+TCP 0.0.0.0:10000-10001 (2 workers, engine auto), announced as 203.0.113.7 (media.announce)",
            "relay      UDP 0.0.0.0:9443-9444",
            "auth       off (the API listens on loopback only)",
        ] {
            assert!(b.contains(want), "{want:?} missing from:\n{b}");
        }
        assert!(!exposed(&c, "127.0.0.1:8080".parse().expect("addr")));
        let b = render(&c, "http", "0.0.0.0:8080".parse().expect("addr"));
        assert!(b.contains("demo page  http://203.0.113.7:8080/"), "{b}");
        assert!(b.contains("OFF on a public address"), "{b}");
        assert!(exposed(&c, "0.0.0.0:8080".parse().expect("addr")));
    }
}

use super::*;

#[test]
fn defaults_are_valid() {
    let c = Config::default();
    c.validate().expect("defaults");
    assert_eq!(c.http.listen.port(), 8080);
    assert_eq!(c.media.port, 10000);
}

#[test]
fn partial_file_overrides() {
    let c = Config::parse("[media]\nport = 20000\nworkers = 2\n").expect("parse");
    assert_eq!(c.media.port, 20000);
    assert_eq!(c.media.worker_count(), 2);
    assert_eq!(c.http, HttpSection::default());
}

#[test]
fn relay_ports_default_and_must_not_overlap_media_ports() {
    let c = Config::parse("[media]\nworkers = 4\n").expect("parse");
    assert_eq!(c.media.relay_port, 9443);
    c.validate().expect("9443.. and 10000.. are apart");
    for (media, relay, ok) in [
        (20000, 20004, true),
        (20000, 20003, false),
        (20003, 20000, false),
    ] {
        let c = Config::parse(&format!(
            "[media]\nworkers = 4\nport = {media}\nrelay_port = {relay}\n"
        ))
        .expect("parse");
        assert_eq!(c.validate().is_ok(), ok, "port {media}, relay_port {relay}");
    }
    let c = Config::parse("[media]\nworkers = 4\nrelay_port = 65534\n").expect("parse");
    assert!(c.validate().is_err(), "relay ports past 65535");
}

#[test]
fn workers_are_capped_with_a_clear_error() {
    let c =
        Config::parse(&format!("[media]\nworkers = {MAX_WORKERS}\nport = 20000\n")).expect("parse");
    c.validate().expect("the maximum itself is fine");
    let c = Config::parse(&format!(
        "[media]\nworkers = {}\nport = 20000\n",
        MAX_WORKERS + 1
    ))
    .expect("parse");
    let e = c.validate().expect_err("one more is refused").to_string();
    assert!(
        e.contains("media.workers") && e.contains(&MAX_WORKERS.to_string()),
        "{e}"
    );
    assert!(Config::default().media.worker_count() <= MAX_WORKERS);
}

#[test]
fn unknown_keys_are_errors() {
    assert!(Config::parse("[media]\nprot = 1\n").is_err());
    assert!(Config::parse("[cluster]\nstrategy = \"random\"\n").is_err());
}

#[test]
fn invalid_values_are_caught() {
    let mut c = Config::default();
    c.media.nack_cache = 100;
    assert!(c.validate().is_err());
    let mut c = Config::default();
    c.node.id = "../etc".into();
    assert!(c.validate().is_err());
    let mut c = Config::default();
    c.cluster.overload_ratio = f64::NAN;
    assert!(c.validate().is_err());
    let mut c = Config::default();
    c.cluster.redis = Some("localhost:6379".into());
    assert!(c.validate().is_err());
    for url in [
        "redis://10.0.0.5:6379/0",
        "rediss://redis.internal:6380",
        "redis+sentinel://s1:26379,s2:26379/switchyard",
        "rediss+sentinel://s1:26379/switchyard",
    ] {
        c.cluster.redis = Some(url.into());
        c.validate().unwrap_or_else(|e| panic!("{url}: {e}"));
    }
    let mut c = Config::default();
    c.auth.key = Some("not base64!".into());
    assert!(c.validate().is_err());
    let mut c = Config::default();
    c.auth.public = Some("anon".into());
    assert!(c.validate().is_err(), "a public prefix without a key");
    let mut c = Config::default();
    c.http.certificate = Some("/etc/switchyard/cert.pem".into());
    assert!(c.validate().is_err());
    c.http.private_key = Some("/etc/switchyard/key.pem".into());
    c.validate().expect("certificate with key");
    assert!(c.http.tls().is_some());
    let mut c = Config::default();
    c.media.announce6 = Some("2001:db8::1".parse().expect("v6"));
    assert!(c.validate().is_err(), "announce6 with an IPv4 bind");
    c.media.bind = "::".parse().expect("::");
    c.media.announce = vec!["192.0.2.1".parse().expect("v4")];
    c.validate().expect("dual-stack");
    assert_eq!(
        c.media.announce_ips(),
        [
            "192.0.2.1".parse::<IpAddr>().expect("v4"),
            "2001:db8::1".parse().expect("v6")
        ]
    );
}

#[test]
fn cascade_settings_parse() {
    let c = Config::parse("[cluster]\ncascade = false\nrelay_grace_ms = 500\n").expect("parse");
    assert!(!c.cluster.cascade);
    assert_eq!(c.cluster.relay_grace_ms, 500);
    assert!(Config::default().cluster.cascade);
}

#[test]
fn forward_sections_parse_and_validate() {
    let c = Config::parse(
        "[[forward]]\nid = \"rec\"\ndestinations = [\"rtp://127.0.0.1:5004\", \"rtp://[::1]:6000\"]\n\
         [[forward]]\nid = \"cams\"\nprefix = \"cams/\"\ndestinations = [\"rtp://10.0.0.2:7000\"]\n",
    )
    .expect("parse");
    c.validate().expect("valid");
    assert_eq!(c.forward.len(), 2);
    assert_eq!(c.forward[0].prefix, "");
    let d = c.forward[0].check().expect("destinations");
    assert_eq!(d[1], Destination::Rtp("[::1]:6000".parse().expect("v6")));
    assert_eq!(
        d[0].track_address(1),
        Some("127.0.0.1:5006".parse().expect("v4"))
    );
    assert_eq!(d[0].to_string(), "rtp://127.0.0.1:5004");

    let mut dup = c.clone();
    dup.forward[1].id = "rec".into();
    assert!(dup.validate().is_err(), "duplicate ids");
    for bad in [
        "rtp://127.0.0.1:5005",
        "rtp://0.0.0.0:5004",
        "rtp://239.1.1.1:5004",
        "rtp://localhost:5004",
        "rtp://127.0.0.1:65534",
        "srt://127.0.0.1:5004",
        "127.0.0.1:5004",
        "node://",
        "node://a b",
        "node://host:",
        "node://host:0",
        "node://host:99999",
        "node://:8080",
        "node://[::1:8080",
        "node://a/b:80",
    ] {
        assert!(
            matches!(Destination::parse(bad), Err(DestinationError::Invalid(..))),
            "{bad}"
        );
    }
    assert_eq!(
        Destination::parse("node://node-2.eu"),
        Ok(Destination::Node(NodeRef::Id("node-2.eu".into())))
    );
    for addr in ["10.0.0.2:8080", "b.example:8443", "[2001:db8::2]:8080"] {
        let d = Destination::parse(&format!("node://{addr}")).expect(addr);
        assert_eq!(d, Destination::Node(NodeRef::Addr(addr.into())));
        assert_eq!(d.to_string(), format!("node://{addr}"));
        assert!(d.is_node() && d.track_address(0).is_none());
    }
    let mut node = c;
    node.forward[0].destinations = vec!["node://node-2".into(), "node://10.0.0.2:8080".into()];
    node.validate().expect("node kind");
    assert!(check_forward("a b", &["rtp://127.0.0.1:5004".into()]).is_err());
    assert!(check_forward("", &[]).is_err());
}

#[test]
fn hook_prefixes_match_whole_hosts() {
    let allow = vec![
        "https://hooks.example.com/".to_owned(),
        "http://10.0.0.5:9000".to_owned(),
    ];
    for (url, ok) in [
        ("https://hooks.example.com/room1", true),
        ("https://hooks.example.com/", true),
        ("https://hooks.example.com.evil.test/x", false),
        ("https://hooks.example.com@evil.test/x", false),
        ("http://hooks.example.com/x", false),
        ("http://10.0.0.5:9000", true),
        ("http://10.0.0.5:9000/a?b", true),
        ("http://10.0.0.5:90001/", false),
        ("http://10.0.0.5:9000@evil.test/", false),
        ("http://10.0.0.5:9000.evil.test/", false),
    ] {
        assert_eq!(hook_allowed(url, &allow), ok, "{url}");
    }
    assert!(!hook_allowed("https://hooks.example.com/x", &[]));
    let mut c = Config::default();
    c.cluster.hook_allow = allow;
    c.validate().expect("valid prefixes");
    for bad in [
        "hooks.example.com",
        "https://",
        "https:///x",
        "ftp://a/",
        "https://u@h/",
    ] {
        c.cluster.hook_allow = vec![bad.to_owned()];
        assert!(c.validate().is_err(), "{bad}");
    }
}

#[test]
fn an_open_api_stays_on_loopback() {
    let mut c = Config::default();
    assert!(c.http.listen.ip().is_loopback(), "default listen");
    c.check_exposure().expect("loopback without auth");
    c.http.listen = "0.0.0.0:8080".parse().expect("addr");
    let e = c.check_exposure().expect_err("public without auth");
    assert!(e.to_string().contains("--insecure"), "{e}");
    assert!(!e.to_string().contains('\n'), "one line: {e}");
    c.http.insecure = true;
    c.check_exposure().expect("insecure");
    c.http.insecure = false;
    c.auth.key = Some("c2VjcmV0LXNlY3JldC1zZWNyZXQ=".into());
    c.check_exposure().expect("auth on");
    c.http.listen = "[::1]:8080".parse().expect("addr");
    c.auth.key = None;
    c.check_exposure().expect("IPv6 loopback");
}

#[test]
fn limits_parse_and_must_be_positive() {
    let c = Config::parse(
        "[http]\nmax_connections = 10\nheader_read_timeout_ms = 500\n\
         [limits]\nsessions_per_address = 2\nsession_interval_ms = 5000\n",
    )
    .expect("parse");
    c.validate().expect("valid");
    assert_eq!(c.http.max_connections, 10);
    assert_eq!(c.limits.sessions_per_address, 2);
    assert_eq!(c.limits.sessions_per_token, 1000);
    let mut c = Config::default();
    c.limits.session_burst = 0;
    assert!(c.validate().is_err());
    let mut c = Config::default();
    c.http.max_connections = 0;
    assert!(c.validate().is_err());
}

#[test]
fn auth_section_parses() {
    let c = Config::parse("[auth]\nkey = \"c2VjcmV0LXNlY3JldC1zZWNyZXQ=\"\npublic = \"anon\"\n")
        .expect("parse");
    assert!(c.auth.enabled());
    c.validate().expect("valid");
    assert!(!Config::default().auth.enabled());
}

#[test]
fn announce_is_one_address_or_a_list() {
    let c = Config::parse("[media]\nannounce = \"203.0.113.7\"\n").expect("one");
    assert_eq!(
        c.media.announce_ips(),
        ["203.0.113.7".parse::<IpAddr>().expect("ip")]
    );
    let c = Config::parse(
        "[media]\nbind = \"::\"\nannounce = [\"203.0.113.7\", \"10.0.0.5\", \"2001:db8::7\"]\n",
    )
    .expect("list");
    c.validate().expect("dual-stack list");
    let (ips, source) = c.media.announced();
    assert_eq!(source, AnnounceSource::Config);
    assert_eq!(
        ips,
        ["203.0.113.7", "10.0.0.5", "2001:db8::7"].map(|s| s.parse::<IpAddr>().expect("ip"))
    );
    assert_eq!(
        c.media.announce_ip(),
        "203.0.113.7".parse::<IpAddr>().expect("ip")
    );
    let e = Config::parse("[media]\nannounce = [\"nope\"]\n").expect_err("bad address");
    assert!(e.to_string().contains("IP address"), "{e}");
    let c = Config::parse("[media]\nannounce = [\"2001:db8::7\"]\n").expect("parses");
    let e = c.validate().expect_err("v6 on a v4 socket");
    assert!(e.to_string().contains("2001:db8::7"), "{e}");
    let c = Config::parse("[media]\nannounce = \"0.0.0.0\"\n").expect("parses");
    assert!(
        c.validate().is_err(),
        "a wildcard is not an address peers reach"
    );
}

#[test]
fn announce_unset_uses_bind_or_the_interfaces() {
    let mut c = Config::default();
    c.media.bind = "192.0.2.9".parse().expect("ip");
    assert_eq!(
        c.media.announced(),
        (vec![c.media.bind], AnnounceSource::Bind)
    );
    c.media.bind = "0.0.0.0".parse().expect("ip");
    let (ips, source) = c.media.announced();
    assert_eq!(source, AnnounceSource::Interfaces);
    assert_eq!(
        ips,
        crate::netif::pick_announce(crate::netif::interfaces(), false)
    );
    assert!(!ips.is_empty());
}

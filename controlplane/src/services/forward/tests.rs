//! [`Manager`](super::manager::Manager) without I/O: every path a forward's egresses take.

use std::time::{Duration, Instant};

use switchyard_shared::command::{Keying, Role, SessionId, SessionSpec, MAX_TRACKS};
use switchyard_shared::config::Destination;

use super::manager::Manager;
use super::model::*;

fn fwd(id: &str, prefix: &str, dests: &[&str]) -> Forward {
    Forward {
        id: id.into(),
        prefix: prefix.into(),
        destinations: dests
            .iter()
            .map(|d| Destination::parse(d).expect("destination"))
            .collect(),
        from_config: false,
        created_ms: 0,
    }
}

fn published(streams: &[(&str, u8)]) -> View {
    View {
        published: streams
            .iter()
            .map(|&(s, t)| Published {
                stream: s.into(),
                tracks: t,
            })
            .collect(),
        plain: Vec::new(),
        relays: Vec::new(),
    }
}

fn adds(actions: &[Action]) -> Vec<(String, String, u8)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Add(k) => Some((k.forward.clone(), k.stream.clone(), k.track)),
            Action::Remove(_) | Action::CloseRelay(_) => None,
        })
        .collect()
}

/// Confirm every add with consecutive session ids, and put the sessions in the view.
fn confirm(m: &mut Manager, view: &mut View, actions: &[Action], now: Instant, next: &mut u64) {
    for a in actions {
        if let Action::Add(k) = a {
            let id = SessionId(*next);
            *next += 1;
            assert_eq!(m.added(k, Ok(id), now), None);
            view.plain.push(PlainSession {
                id,
                stream: k.stream.clone(),
                remote: k.remote(),
                tracks: 1 << k.track,
            });
        }
    }
}

fn relay(id: u64, stream: &str, node: &str, url: &str) -> RelaySession {
    RelaySession {
        id: SessionId(id),
        stream: stream.into(),
        target_node: node.into(),
        target_url: url.into(),
    }
}

#[test]
fn node_destinations_get_one_egress_per_stream_and_back_off() {
    let mut m = Manager::new();
    m.add(fwd(
        "standby",
        "room/",
        &[
            "node://node-b",
            "node://10.0.0.3:8080",
            "rtp://10.0.0.9:5004",
        ],
    ))
    .expect("add");
    let t0 = Instant::now();
    let mut view = published(&[("room/cam", 2), ("other/x", 2)]);
    let actions = m.plan(t0, &view);
    let mut nodes = Vec::new();
    for a in &actions {
        if let Action::Add(k) = a {
            if k.destination.is_node() {
                assert_eq!(
                    (k.stream.as_str(), k.track, k.remote()),
                    ("room/cam", 0, None)
                );
                nodes.push(k.clone());
            }
        }
    }
    // Two node egresses (not per track) plus two plain ones (one per track).
    assert_eq!(nodes.len(), 2);
    assert_eq!(actions.len(), 4);

    // node-b is down: backoff 1 s, 2 s … with the error shown.
    let b = &nodes[0];
    assert_eq!(b.destination.to_string(), "node://node-b");
    assert_eq!(
        m.added(b, Err("target control plane: refused".into()), t0),
        None
    );
    let e = m
        .egresses_of("standby")
        .find(|(k, _)| *k == b)
        .expect("egress")
        .1;
    assert_eq!((e.state.name(), e.attempts), ("backoff", 1));
    assert_eq!(
        e.last_error.as_deref(),
        Some("target control plane: refused")
    );
    assert!(adds(&m.plan(t0 + Duration::from_millis(900), &view)).is_empty());
    let again = m.plan(t0 + BACKOFF_MIN, &view);
    assert_eq!(again, [Action::Add(b.clone())]);
    m.added(b, Err("relay loop".into()), t0 + BACKOFF_MIN);
    let later = t0 + BACKOFF_MIN + backoff(2);
    assert!(m.plan(later - Duration::from_millis(1), &view).is_empty());
    assert_eq!(m.plan(later, &view), [Action::Add(b.clone())]);
    // Up now: the relay runs; attempts reset, nothing more to do.
    m.added(b, Ok(SessionId(7)), later);
    view.relays
        .push(relay(7, "room/cam", "node-b", "http://10.0.0.2:8080"));
    // The address destination's relay was opened meanwhile (its add answer was lost):
    // it is adopted, by URL, not opened twice.
    view.relays
        .push(relay(8, "room/cam", "node-c", "http://10.0.0.3:8080"));
    // A relay no forward asked for (relay API, cascade) is left alone.
    view.relays
        .push(relay(9, "other/x", "node-b", "http://10.0.0.2:8080"));
    m.added(&nodes[1], Err("lost".into()), later);
    let steady = later + BACKOFF_MAX;
    for a in m.plan(steady, &view) {
        assert!(
            matches!(a, Action::Add(ref k) if !k.destination.is_node()),
            "{a:?}"
        );
    }
    let states: Vec<_> = m
        .egresses_of("standby")
        .filter(|(k, _)| k.destination.is_node())
        .map(|(_, e)| (e.state.clone(), e.attempts))
        .collect();
    assert_eq!(
        states,
        [
            (EgressState::Active(SessionId(7)), 0),
            (EgressState::Active(SessionId(8)), 0)
        ]
    );

    // The relay ended on its own (target restarted): opened again.
    view.relays.retain(|r| r.id != SessionId(7));
    let a = m.plan(steady, &view);
    assert!(a.contains(&Action::Add(b.clone())), "{a:?}");
    m.added(b, Ok(SessionId(10)), steady);
    view.relays
        .push(relay(10, "room/cam", "node-b", "http://10.0.0.2:8080"));

    // The publisher leaves: both relays close; the unclaimed one stays.
    view.published.retain(|p| p.stream != "room/cam");
    let a = m.plan(steady, &view);
    assert!(a.contains(&Action::CloseRelay(SessionId(8))), "{a:?}");
    assert!(a.contains(&Action::CloseRelay(SessionId(10))), "{a:?}");
    assert!(!a.contains(&Action::CloseRelay(SessionId(9))), "{a:?}");
    assert_eq!(m.egresses_of("standby").count(), 0);
}

#[test]
fn deleting_a_forward_closes_its_relays_but_not_a_shared_one() {
    let mut m = Manager::new();
    m.add(fwd("a", "", &["node://node-b"])).expect("add");
    m.add(fwd("b", "cams/", &["node://node-b"])).expect("add");
    let now = Instant::now();
    let mut view = published(&[("cams/1", 2), ("x", 1)]);
    for a in m.plan(now, &view) {
        let Action::Add(k) = a else { panic!("add") };
        // Forward b's add finds the relay forward a opened (open is idempotent).
        let id = if k.stream == "cams/1" { 1 } else { 2 };
        m.added(&k, Ok(SessionId(id)), now);
    }
    view.relays.push(relay(1, "cams/1", "node-b", "http://b"));
    view.relays.push(relay(2, "x", "node-b", "http://b"));
    assert!(m.plan(now, &view).is_empty());
    m.delete("a").expect("delete");
    // x's relay closes; cams/1's is still forward b's.
    assert_eq!(m.plan(now, &view), [Action::CloseRelay(SessionId(2))]);
    assert!(m.plan(now, &view).is_empty());
}

#[test]
fn backoff_doubles_from_one_second_to_thirty() {
    let s: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
    assert_eq!(s, [1, 2, 4, 8, 16, 30, 30, 30]);
    assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
}

#[test]
fn matching_streams_get_one_egress_per_destination_and_track() {
    let mut m = Manager::new();
    m.add(fwd("all", "", &["rtp://127.0.0.1:5004"]))
        .expect("add");
    m.add(fwd(
        "cams",
        "cams/",
        &["rtp://127.0.0.1:6000", "rtp://127.0.0.1:7000"],
    ))
    .expect("add");
    assert_eq!(
        m.add(fwd("all", "", &["rtp://127.0.0.1:5004"])),
        Err(ForwardError::Exists)
    );
    let view = published(&[("cams/a", 2), ("talks/b", 1)]);
    let a = adds(&m.plan(Instant::now(), &view));
    assert_eq!(
        a,
        [
            ("all".into(), "cams/a".into(), 0),
            ("all".into(), "cams/a".into(), 1),
            ("all".into(), "talks/b".into(), 0),
            ("cams".into(), "cams/a".into(), 0),
            ("cams".into(), "cams/a".into(), 1),
            ("cams".into(), "cams/a".into(), 0),
            ("cams".into(), "cams/a".into(), 1),
        ]
        .map(|(f, s, t): (String, String, u8)| (f, s, t))
    );
    assert_eq!(m.state_counts(), [0, 7, 0, 0]);
    // In flight: a second plan adds nothing again.
    assert!(m.plan(Instant::now(), &view).is_empty());
}

#[test]
fn publisher_coming_and_going() {
    let mut m = Manager::new();
    m.add(fwd("rec", "room/", &["rtp://10.0.0.9:5004"]))
        .expect("add");
    let now = Instant::now();
    let mut next = 100;
    let mut view = View::default();
    assert!(m.plan(now, &view).is_empty(), "no publisher, nothing to do");

    view.published = published(&[("room/cam", 2)]).published;
    let actions = m.plan(now, &view);
    assert_eq!(actions.len(), 2);
    let Action::Add(k) = &actions[1] else {
        panic!("add")
    };
    assert_eq!(k.remote(), Some("10.0.0.9:5006".parse().expect("addr")));
    confirm(&mut m, &mut view, &actions, now, &mut next);
    assert_eq!(m.state_counts(), [0, 0, 2, 0]);
    assert!(m.plan(now, &view).is_empty(), "steady state");

    // The publisher leaves: both egress sessions are removed, the egresses forgotten.
    view.published.clear();
    let mut actions = m.plan(now, &view);
    actions.sort_by_key(|a| format!("{a:?}"));
    assert_eq!(
        actions,
        [
            Action::Remove(SessionId(100)),
            Action::Remove(SessionId(101))
        ]
    );
    view.plain.clear();
    assert!(m.plan(now, &view).is_empty());
    assert_eq!(m.state_counts(), [0; 4]);

    // It comes back: set up again.
    view.published = published(&[("room/cam", 1)]).published;
    assert_eq!(m.plan(now, &view).len(), 1);
}

#[test]
fn failed_setups_back_off_and_recover() {
    let mut m = Manager::new();
    m.add(fwd("rec", "", &["rtp://10.0.0.9:5004"]))
        .expect("add");
    let view = published(&[("s", 1)]);
    let t0 = Instant::now();
    let mut t = t0;
    let mut waits = Vec::new();
    for attempt in 1..=7u32 {
        let actions = m.plan(t, &view);
        assert_eq!(actions.len(), 1, "attempt {attempt} is due");
        let Action::Add(k) = &actions[0] else {
            panic!("add")
        };
        m.added(k, Err("data plane down".into()), t);
        let e = m.egresses_of("rec").next().expect("egress").1.clone();
        assert_eq!(e.attempts, attempt);
        let EgressState::Backoff { retry_at } = e.state else {
            panic!("backoff")
        };
        waits.push((retry_at - t).as_secs());
        // Not before its time.
        assert!(m
            .plan(retry_at - Duration::from_millis(1), &view)
            .is_empty());
        t = retry_at;
    }
    assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
    assert_eq!(m.retries(), 7);
    let view_at = m
        .egresses_of("rec")
        .next()
        .map(|(k, e)| EgressView::of(k, e, t0));
    let v = view_at.expect("view");
    assert_eq!(v.state, "backoff");
    assert_eq!(v.last_error.as_deref(), Some("data plane down"));

    let actions = m.plan(t, &view);
    let Action::Add(k) = &actions[0] else {
        panic!("add")
    };
    m.added(k, Ok(SessionId(5)), t);
    let e = m.egresses_of("rec").next().expect("egress").1;
    assert_eq!((e.attempts, e.last_error.clone()), (0, None));
    assert_eq!(e.state, EgressState::Active(SessionId(5)));
}

#[test]
fn lost_sessions_are_set_up_again() {
    let mut m = Manager::new();
    m.add(fwd("rec", "", &["rtp://10.0.0.9:5004"]))
        .expect("add");
    let now = Instant::now();
    let mut view = published(&[("s", 1)]);
    let mut next = 1;
    let actions = m.plan(now, &view);
    confirm(&mut m, &mut view, &actions, now, &mut next);
    view.plain.clear(); // refused on re-provisioning after a data plane restart
    let actions = m.plan(now, &view);
    assert_eq!(adds(&actions).len(), 1);
}

#[test]
fn a_restarted_control_plane_adopts_running_egresses_and_removes_orphans() {
    let now = Instant::now();
    let mut view = published(&[("s", 2)]);
    view.plain = vec![
        // Left by the previous control plane for the forward the config re-creates.
        PlainSession {
            id: SessionId(7),
            stream: "s".into(),
            remote: Some("10.0.0.9:5004".parse().expect("addr")),
            tracks: 0b01,
        },
        // One of a forward made through the API, lost with the old control plane.
        PlainSession {
            id: SessionId(8),
            stream: "s".into(),
            remote: Some("10.0.0.5:9000".parse().expect("addr")),
            tracks: 0b01,
        },
    ];
    let mut m = Manager::new();
    m.add(fwd("rec", "", &["rtp://10.0.0.9:5004"]))
        .expect("add");
    // Until the saved forwards are back, an unclaimed session may still be theirs.
    m.keep_unclaimed = true;
    let held = m.plan(now, &view);
    assert!(!held.contains(&Action::Remove(SessionId(8))), "{held:?}");
    let mut m = Manager::new();
    m.add(fwd("rec", "", &["rtp://10.0.0.9:5004"]))
        .expect("add");
    let actions = m.plan(now, &view);
    assert_eq!(
        adds(&actions),
        [("rec".into(), "s".into(), 1)],
        "track 0 adopted"
    );
    assert!(actions.contains(&Action::Remove(SessionId(8))));
    let (_, e) = m.egresses_of("rec").next().expect("egress");
    assert_eq!(e.state, EgressState::Active(SessionId(7)));
}

#[test]
fn deleting_a_forward_removes_its_sessions() {
    let mut m = Manager::new();
    let id = m.allocate_id();
    assert_eq!(id, "fwd-1");
    m.add(fwd(&id, "", &["rtp://10.0.0.9:5004"])).expect("add");
    let mut cfg = fwd("cfg", "x/", &["rtp://10.0.0.9:6000"]);
    cfg.from_config = true;
    m.add(cfg).expect("add");
    assert_eq!(m.delete("cfg"), Err(ForwardError::FromConfig("cfg".into())));
    assert_eq!(m.delete("nope"), Err(ForwardError::NotFound));
    let now = Instant::now();
    let mut view = published(&[("s", 1)]);
    let mut next = 1;
    let actions = m.plan(now, &view);
    confirm(&mut m, &mut view, &actions, now, &mut next);
    m.delete(&id).expect("delete");
    assert_eq!(m.plan(now, &view), [Action::Remove(SessionId(1))]);
    // An add that was in flight for a deleted forward is undone when it lands.
    m.add(fwd("again", "", &["rtp://10.0.0.9:5004"]))
        .expect("add");
    view.plain.clear();
    let actions = m.plan(now, &view);
    let Action::Add(k) = &actions[0] else {
        panic!("add")
    };
    m.delete("again").expect("delete");
    assert_eq!(m.added(k, Ok(SessionId(9)), now), Some(SessionId(9)));
}

#[test]
fn saved_forwards_come_back_the_same() {
    let f = fwd(
        "fwd-3",
        "room/",
        &["rtp://10.0.0.9:5004", "rtp://[::1]:6000"],
    );
    assert_eq!(Forward::from_saved("fwd-3", &f.saved()), Ok(f));
    assert!(Forward::from_saved("fwd-3", "{}").is_err());
    let n = fwd("n", "", &["node://n2", "node://10.0.0.2:8080"]);
    assert_eq!(Forward::from_saved("n", &n.saved()), Ok(n));
    assert!(Forward::from_saved(
        "x",
        r#"{"prefix":"","destinations":["node://a b"],"createdMs":0}"#
    )
    .is_err());
}

#[test]
fn view_reads_publishers_and_plain_sessions() {
    use switchyard_shared::command::{SrtpKeys, SrtpProfile, ALL_TRACKS};
    let spec = |id: u64, role: Role, keying: Keying| SessionSpec {
        id: SessionId(id),
        worker: 0,
        stream: "s".into(),
        role,
        remote: Some("10.0.0.1:4000".parse().expect("addr")),
        keying,
        ice: None,
        twcc_ext: None,
        created_ms: 0,
        control: Default::default(),
    };
    let sub = |tracks| Role::Subscriber {
        ssrcs: vec![1, 2, 3, 4],
        payload_types: vec![],
        extensions: None,
        rtx: vec![],
        tracks,
    };
    let keys = Keying::Static(SrtpKeys {
        profile: SrtpProfile::AeadAes128Gcm,
        remote: vec![0; 28],
        local: vec![0; 28],
    });
    let specs = [
        spec(
            1,
            Role::Publisher {
                ssrcs: vec![],
                clock_rates: vec![],
                simulcast: None,
                uplink: Vec::new(),
            },
            keys.clone(),
        ),
        spec(2, sub(ALL_TRACKS), keys),
        spec(3, sub(0b10), Keying::Plain),
    ];
    let v = View::of(&specs);
    assert_eq!(
        v.published,
        [Published {
            stream: "s".into(),
            tracks: MAX_TRACKS as u8
        }]
    );
    assert_eq!(v.plain.len(), 1, "only plain subscribers");
    assert_eq!(v.plain[0].tracks, 0b10);
}

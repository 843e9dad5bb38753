//! What a session spec must satisfy before any worker hears of it.

use switchyard_shared::command::{
    CommandError, Keying, Role, SessionSpec, SimulcastTrack, ALL_TRACKS, MAX_LAYERS, MAX_PT_MAP,
    MAX_RID, MAX_TRACKS,
};

use super::{SlowPath, StreamEntry};

impl SlowPath {
    pub(super) fn validate(&self, spec: &SessionSpec) -> Result<(), CommandError> {
        if usize::from(spec.worker) >= self.mailboxes.len() {
            return Err(CommandError::NoSuchWorker);
        }
        let bad_key = match &spec.keying {
            Keying::Static(k) => {
                let len = k.profile.master_len();
                k.remote.len() != len || k.local.len() != len
            }
            Keying::Dtls { remote_fingerprint } => {
                crate::dtls::fingerprint::Fingerprint::parse(remote_fingerprint).is_err()
                    || spec.ice.is_none()
            }
            Keying::Plain => {
                // Unauthenticated media only leaves the node, and only to a fixed address.
                if !plain_ok(spec) {
                    return Err(CommandError::PlainIngress);
                }
                false
            }
        };
        if bad_key {
            return Err(CommandError::BadKey);
        }
        // The same rule the control plane applies to every name it is given.
        if !switchyard_shared::names::Rule::Stream.allows(&spec.stream) {
            return Err(CommandError::Invalid);
        }
        if self.sessions.contains_key(&spec.id)
            || self.pending_add.contains_key(&spec.id)
            || self.pending_remove.contains_key(&spec.id)
        {
            return Err(CommandError::DuplicateSession);
        }
        if spec.role.is_relay() {
            // A relay link is keyed by the control planes (the per-link key) and addressed
            // by IP:port on the relay socket: no DTLS, no ICE, no transport-cc.
            if spec.keying.keys().is_none() {
                return Err(CommandError::BadKey);
            }
            if spec.ice.is_some() || spec.twcc_ext.is_some() {
                return Err(CommandError::Invalid);
            }
        }
        match &spec.role {
            Role::RelayIn { ssrcs, .. } => {
                if ssrcs.len() > MAX_TRACKS {
                    return Err(CommandError::Invalid);
                }
                if self
                    .streams
                    .get(&spec.stream)
                    .is_some_and(StreamEntry::has_publisher)
                {
                    return Err(CommandError::StreamBusy);
                }
            }
            Role::RelayOut => {
                if spec.remote.is_none() {
                    return Err(CommandError::Invalid);
                }
            }
            Role::Publisher {
                ssrcs,
                clock_rates,
                simulcast,
                uplink,
            } => {
                // A simulcast publisher's tracks are its map's, with or without SSRCs.
                let rated = if simulcast.is_some() { MAX_TRACKS } else { 0 };
                if ssrcs.len() > MAX_TRACKS
                    || clock_rates.len() > ssrcs.len().max(rated)
                    || uplink.len() > MAX_TRACKS
                {
                    return Err(CommandError::Invalid);
                }
                if let Some(sim) = simulcast {
                    let ext_ok = |id: u8| id <= 14;
                    let track_ok = |t: &SimulcastTrack| {
                        t.rids.len() <= MAX_LAYERS
                            && t.ssrcs.len() <= MAX_LAYERS
                            && t.mid.len() <= MAX_RID
                            && t.rids.iter().all(|r| !r.is_empty() && r.len() <= MAX_RID)
                    };
                    if sim.tracks.len() > MAX_TRACKS
                        || !sim.tracks.iter().all(track_ok)
                        || ![sim.rid_ext, sim.repaired_rid_ext, sim.mid_ext]
                            .into_iter()
                            .all(ext_ok)
                    {
                        return Err(CommandError::Invalid);
                    }
                }
                if self
                    .streams
                    .get(&spec.stream)
                    .is_some_and(StreamEntry::has_publisher)
                {
                    return Err(CommandError::StreamBusy);
                }
            }
            Role::Subscriber {
                ssrcs,
                payload_types,
                extensions,
                rtx,
                tracks,
            } => {
                if *tracks == 0 || *tracks & !ALL_TRACKS != 0 {
                    return Err(CommandError::Invalid);
                }
                // 72–76 would read as RTCP on a muxed port (RFC 5761 §4).
                let bad_pt = |p: u8| p >= 128 || (72..=76).contains(&p);
                if rtx.len() > MAX_TRACKS
                    || rtx
                        .iter()
                        .flatten()
                        .any(|&(ssrc, pt)| ssrc == 0 || bad_pt(pt))
                {
                    return Err(CommandError::Invalid);
                }
                if extensions.as_ref().is_some_and(|m| {
                    m.len() > 14
                        || m.iter()
                            .any(|&(a, b)| !(1..=14).contains(&a) || !(1..=14).contains(&b))
                }) {
                    return Err(CommandError::Invalid);
                }
                if ssrcs.len() != MAX_TRACKS || !subscriber_addressable(spec) {
                    return Err(CommandError::Invalid);
                }
                if payload_types.len() > MAX_PT_MAP
                    || payload_types.iter().any(|&(a, b)| bad_pt(a) || bad_pt(b))
                {
                    return Err(CommandError::Invalid);
                }
            }
        }
        Ok(())
    }
}

/// Whether a plain-keyed spec is one the data plane accepts: a subscriber with a fixed
/// address and no ICE (egress to a recorder). Anything else would take unauthenticated
/// media in or send it to an address nobody vouched for.
fn plain_ok(spec: &SessionSpec) -> bool {
    matches!(spec.role, Role::Subscriber { .. }) && spec.remote.is_some() && spec.ice.is_none()
}

/// Whether the data plane can learn where to send a subscriber's media: a given address
/// (plain SRTP), or ICE credentials, whose first valid check latches the address (WebRTC:
/// WHEP subscribers have no address until then, so `remote` is `None` for them).
pub(super) fn subscriber_addressable(spec: &SessionSpec) -> bool {
    spec.remote.is_some() || spec.ice.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_shared::command::{IceCredentials, SessionId};

    fn subscriber(remote: Option<std::net::SocketAddr>, ice: bool) -> SessionSpec {
        SessionSpec {
            id: SessionId(1),
            worker: 0,
            stream: "room/cam".into(),
            role: Role::Subscriber {
                ssrcs: vec![1; MAX_TRACKS],
                payload_types: Vec::new(),
                extensions: None,
                rtx: Vec::new(),
                tracks: ALL_TRACKS,
            },
            remote,
            keying: Keying::Dtls {
                remote_fingerprint: String::new(),
            },
            ice: ice.then(|| IceCredentials {
                local_ufrag: "srv1".into(),
                local_pwd: "server-password-0123456789".into(),
                remote_ufrag: "peer".into(),
                remote_pwd: "peer-password-0123456789".into(),
            }),
            twcc_ext: None,
            created_ms: 0,
            control: Default::default(),
        }
    }

    #[test]
    fn plain_keying_is_for_addressed_subscribers_only() {
        let mut plain = subscriber(Some(([127, 0, 0, 1], 5004).into()), false);
        plain.keying = Keying::Plain;
        assert!(plain_ok(&plain));
        let mut no_addr = plain.clone();
        no_addr.remote = None;
        assert!(!plain_ok(&no_addr));
        let mut with_ice = subscriber(None, true);
        with_ice.keying = Keying::Plain;
        assert!(!plain_ok(&with_ice));
        let mut publisher = plain.clone();
        publisher.role = Role::Publisher {
            ssrcs: vec![1],
            clock_rates: vec![],
            simulcast: None,
            uplink: Vec::new(),
        };
        assert!(!plain_ok(&publisher));
    }

    #[test]
    fn whep_subscribers_have_ice_instead_of_an_address() {
        assert!(subscriber_addressable(&subscriber(None, true)));
        assert!(subscriber_addressable(&subscriber(
            Some(([127, 0, 0, 1], 5000).into()),
            false
        )));
        assert!(!subscriber_addressable(&subscriber(None, false)));
    }
}

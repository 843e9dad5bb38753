//! `--simulcast` setup: each publisher joins over WHIP with three layers (the only way a
//! publisher declares layers to the node: `POST /v1/sessions` has no simulcast field), and
//! its subscribers are plain `POST /v1/sessions` subscribers, the first `capped` of them
//! capped with `POST /v1/sessions/{id}/layers`. The subscribers are the same kind of session
//! as in a plain REST run, so the two runs' CPU per forwarded packet compare.
//!
//! Senders: one [`PubEnd`] per layer (publisher `p`'s layer `l` is sender `3p + l`), sharing
//! the publisher's socket and SRTP key, each layer on its own SSRC.

use super::*;
use crate::simulcast::{SimulcastSpec, LAYERS};

/// The SSRC of layer `l` of publisher `p`.
fn layer_ssrc(p: usize, l: usize) -> u32 {
    0x5353_0000 | ((p as u32 & 0x0fff) << 4) | l as u32
}

pub(super) fn setup_node_simulcast(
    spec: &LoadSpec,
    sim: &SimulcastSpec,
    api: &str,
    profile: Profile,
    cpu_pid: Option<i32>,
) -> Result<Setup, Error> {
    let node = Node::new(api, &spec.http)?;
    let health = node.health()?;
    let pid = cpu_pid.or(health.dataplane_pid);
    let rtc = Rtc {
        node: node.clone(),
        agent: Arc::new(Agent::new(profile)?),
        consent: Arc::new(Consent::start()?),
        locations: Arc::default(),
    };
    let mut guard = NodeGuard {
        node: node.clone(),
        ids: Vec::new(),
        locations: rtc.locations.clone(),
        consent: Some(rtc.consent.clone()),
        agent: Some(rtc.agent.clone()),
    };
    let layers = sim.layers();
    let n = LAYERS.len();
    let mut copies = [0u64; 3];
    for i in 0..spec.subscribers {
        copies[sim.expected_layer(i)] += 1;
    }
    let mut pubs = Vec::new();
    let mut subs = Vec::new();
    for p in 0..spec.publishers {
        let sock = bind()?;
        let ice = LocalIce::generate()?;
        let answer = rtc.signal("whip", p, sdp::Role::Simulcast, &ice)?;
        let c = rtc.agent.connect(&sock, &ice, &answer)?;
        rtc.consent.add(&sock, &c)?;
        for (l, layer) in layers.iter().enumerate() {
            pubs.push(PubEnd {
                sock: sock
                    .try_clone()
                    .map_err(|e| Error::io("duplicating a publisher socket", e))?,
                dest: c.candidate,
                ssrc: layer_ssrc(p, l),
                cipher: Cipher::srtp(c.keys.profile, &c.keys.local)?,
                layer: Some(LayerOut {
                    layer: *layer,
                    publisher: p,
                    copies: copies[l],
                }),
            });
        }
        let stream = format!("{ROOM}/s{p}");
        for i in 0..spec.subscribers {
            let (sub, id) = setup::rest_subscriber(&node, &mut guard, &stream, profile)?;
            let layer = sim.expected_layer(i);
            if i < sim.capped {
                node.cap_layers(id, sim.cap_layer)?;
            }
            subs.push(SubEnd {
                publisher: n * p + layer,
                media_offset: crate::simulcast::VP8_PREFIX,
                siblings: n * p..n * (p + 1),
                ..sub
            });
        }
    }
    Ok(Setup {
        pubs,
        subs,
        groups: Vec::new(),
        link_sources: Vec::new(),
        joiner: None,
        probe: pid.map(CpuProbe::process),
        pid,
        // The subscribers' profile: their egress is what the node spends its time on (the
        // publishers' DTLS picks its own, `--profile` offered first).
        profile: profile.name().to_owned(),
        _guard: Guard::Node(guard),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_ssrcs_are_distinct() {
        let mut all: Vec<u32> = (0..100)
            .flat_map(|p| (0..3).map(move |l| layer_ssrc(p, l)))
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 300);
        assert!(all.iter().all(|&s| s != 0));
    }
}

//! Regions (docs/cluster.md, "Regions"): where a client is, and which node of a region serves
//! a room's viewers there.
//!
//! A client's region comes from the `X-Switchyard-Region` header when a trusted caller sends
//! it (a cluster token, or anyone while auth is off: an application server or edge that
//! knows where its client is), else from `[[cluster.region_map]]` by the address the
//! request came from, else it is unknown and placement has no preference. Who may state a
//! region matters because a region steers capacity: a client that could name any region
//! could pile rooms into one the operator sized for others.

use std::net::IpAddr;

use switchyard_shared::config::region_of;
use switchyard_shared::names;

use super::service::{Cluster, ClusterError};
use crate::core::store::{placement, Node, PoolFilter};

/// The request header a trusted caller states its client's region in.
pub const HEADER: &str = "x-switchyard-region";

/// What a request says about where its client is.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientHint<'a> {
    /// The `X-Switchyard-Region` header, if sent.
    pub header: Option<&'a str>,
    /// The caller may state a region: a cluster token, or auth is off.
    pub trusted: bool,
    /// The address the request came from.
    pub peer: Option<IpAddr>,
}

impl Cluster {
    /// The client's region: a trusted caller's header, else the region map's rule for its
    /// address, else none. A header from an untrusted caller is ignored, not refused (a
    /// browser extension or proxy may add it); a malformed one from a trusted caller is an
    /// error, since its sender meant something.
    pub fn client_region(&self, hint: ClientHint<'_>) -> Result<Option<String>, ClusterError> {
        if let (Some(h), true) = (hint.header, hint.trusted) {
            let h = h.trim();
            names::id("X-Switchyard-Region", h)?;
            return Ok(Some(h.to_owned()));
        }
        Ok(hint
            .peer
            .and_then(|ip| region_of(&self.config.region_map, ip))
            .map(str::to_owned))
    }
}

/// The node a viewer in `region` should send its WHEP offer to for `room`, when that is not
/// the room's node (`room_node`): a node of `region` that accepts sessions (healthy, not
/// draining, not overloaded, in the room's pool), chosen by the room's consistent hash, so
/// every viewer of the room in that region lands on the same node and each of the room's
/// streams crosses into the region once (the cascade pulls it there; docs/cluster.md).
/// None: the room's node is in `region` already, or no node of `region` accepts sessions.
pub fn viewer_node<'a>(
    room: &str,
    region: &str,
    room_node: &str,
    nodes: &'a [Node],
    pool: &PoolFilter,
) -> Option<&'a Node> {
    let home = nodes.iter().find(|n| n.node_id == room_node);
    if home.is_some_and(|n| n.region.as_deref() == Some(region)) {
        return None;
    }
    // A viewer reserves nothing (0 consumers): any node that takes sessions qualifies.
    let candidates = nodes
        .iter()
        .filter(|n| n.region.as_deref() == Some(region) && n.accepts(0) && pool.allows(n));
    placement::rendezvous(room, candidates)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn node(id: &str, region: Option<&str>) -> Node {
        Node {
            node_id: id.into(),
            url: format!("http://{id}"),
            media_address: "127.0.0.1".into(),
            workers: 1,
            capacity: 100,
            reserved: 0,
            healthy: true,
            draining: false,
            overloaded: false,
            load: BTreeMap::new(),
            labels: BTreeMap::new(),
            region: region.map(str::to_owned),
            relay_rtt_ms: BTreeMap::new(),
            registered_ms: 0,
            heartbeat_ms: 0,
        }
    }

    #[test]
    fn viewers_of_a_room_meet_on_one_node_of_their_region() {
        let mut nodes = vec![
            node("x1", Some("x")),
            node("x2", Some("x")),
            node("y1", Some("y")),
            node("y2", Some("y")),
            node("y3", Some("y")),
            node("n", None),
        ];
        let any = PoolFilter::Any;
        // The room's node is in the viewer's region: no other node.
        assert!(viewer_node("r", "x", "x1", &nodes, &any).is_none());
        // Elsewhere: a node of the region, the same one for every viewer of the room, and
        // rooms spread over the region's nodes.
        let mut used = BTreeMap::<String, u32>::new();
        for i in 0..300 {
            let room = format!("room{i}");
            let v = viewer_node(&room, "y", "x1", &nodes, &any).expect("a y node");
            assert_eq!(v.region.as_deref(), Some("y"));
            let again = viewer_node(&room, "y", "x2", &nodes, &any).expect("a y node");
            assert_eq!(v.node_id, again.node_id, "stable per room");
            *used.entry(v.node_id.clone()).or_default() += 1;
        }
        assert_eq!(used.len(), 3, "{used:?}");
        assert!(used.values().all(|&c| c > 60), "{used:?}");
        // A node that takes no sessions is skipped; none left in the region: none.
        let first = viewer_node("r", "y", "x1", &nodes, &any)
            .expect("y")
            .node_id
            .clone();
        nodes
            .iter_mut()
            .find(|n| n.node_id == first)
            .expect("n")
            .draining = true;
        let next = viewer_node("r", "y", "x1", &nodes, &any).expect("y");
        assert_ne!(next.node_id, first);
        for n in nodes
            .iter_mut()
            .filter(|n| n.region.as_deref() == Some("y"))
        {
            n.healthy = false;
        }
        assert!(viewer_node("r", "y", "x1", &nodes, &any).is_none());
        assert!(viewer_node("r", "nowhere", "x1", &nodes, &any).is_none());
    }
}

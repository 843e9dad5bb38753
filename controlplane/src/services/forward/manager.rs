//! [`Manager`]: the sans-IO core of forwarding. It holds the forwards and their egresses,
//! and [`Manager::plan`] compares what should exist (forwards × published streams) with a
//! [`View`] of the node's session table and answers the [`Action`]s that close the gap.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use switchyard_shared::command::SessionId;

use super::model::{
    backoff, Action, Egress, EgressKey, EgressState, Forward, ForwardError, View, MAX_FORWARDS,
    STATE_NAMES,
};

#[derive(Debug, Default)]
pub struct Manager {
    forwards: BTreeMap<String, Forward>,
    egresses: BTreeMap<EgressKey, Egress>,
    /// Failed set-up attempts, ever (a counter for metrics).
    retries: u64,
    next_id: u64,
    /// Leave plain sessions no forward claims alone: set while the forwards saved in the
    /// cluster store are not read back yet, since their egresses would look unclaimed.
    pub keep_unclaimed: bool,
    /// Relays of node egresses whose forward was deleted: closed by the next plan.
    closing: Vec<SessionId>,
}

impl Manager {
    pub fn new() -> Self {
        Self {
            next_id: 1,
            ..Self::default()
        }
    }

    pub fn add(&mut self, f: Forward) -> Result<(), ForwardError> {
        if self.forwards.contains_key(&f.id) {
            return Err(ForwardError::Exists);
        }
        if self.forwards.len() >= MAX_FORWARDS {
            return Err(ForwardError::TooMany);
        }
        self.forwards.insert(f.id.clone(), f);
        Ok(())
    }

    /// A fresh id for a forward made through the API (`fwd-N`, never one in use).
    pub fn allocate_id(&mut self) -> String {
        loop {
            let id = format!("fwd-{}", self.next_id);
            self.next_id += 1;
            if !self.forwards.contains_key(&id) {
                return id;
            }
        }
    }

    /// Delete an API forward. Its egress sessions are removed by the next plan.
    pub fn delete(&mut self, id: &str) -> Result<Forward, ForwardError> {
        match self.forwards.get(id) {
            None => return Err(ForwardError::NotFound),
            Some(f) if f.from_config => return Err(ForwardError::FromConfig(id.to_owned())),
            Some(_) => {}
        }
        let closing = &mut self.closing;
        self.egresses.retain(|k, e| {
            if k.forward != id {
                return true;
            }
            if let (true, EgressState::Active(s)) = (k.destination.is_node(), &e.state) {
                closing.push(*s);
            }
            false
        });
        self.forwards.remove(id).ok_or(ForwardError::NotFound)
    }

    pub fn get(&self, id: &str) -> Option<&Forward> {
        self.forwards.get(id)
    }

    pub fn forwards(&self) -> impl Iterator<Item = &Forward> {
        self.forwards.values()
    }

    /// The egresses of forward `id`.
    pub fn egresses_of<'a>(
        &'a self,
        id: &'a str,
    ) -> impl Iterator<Item = (&'a EgressKey, &'a Egress)> + 'a {
        self.egresses.iter().filter(move |(k, _)| k.forward == id)
    }

    /// Egresses per state, in [`STATE_NAMES`] order.
    pub fn state_counts(&self) -> [u64; 4] {
        let mut n = [0u64; 4];
        for e in self.egresses.values() {
            if let Some(i) = STATE_NAMES.iter().position(|s| *s == e.state.name()) {
                n[i] += 1;
            }
        }
        n
    }

    pub fn retries(&self) -> u64 {
        self.retries
    }

    /// Compare what should run with `view` and say what to do. Every `Add` marks its egress
    /// `Starting` until [`added`](Self::added) reports the outcome.
    pub fn plan(&mut self, now: Instant, view: &View) -> Vec<Action> {
        let mut wanted = BTreeMap::new();
        for f in self.forwards.values() {
            for p in view.published.iter().filter(|p| f.matches(&p.stream)) {
                for destination in &f.destinations {
                    // One relay carries every track of a stream to a node.
                    let tracks = if destination.is_node() { 1 } else { p.tracks };
                    for track in 0..tracks {
                        let key = EgressKey {
                            forward: f.id.clone(),
                            destination: destination.clone(),
                            stream: p.stream.clone(),
                            track,
                        };
                        wanted.insert(key, ());
                    }
                }
            }
        }
        let mut actions = Vec::new();
        let live: HashSet<SessionId> = view.plain.iter().map(|s| s.id).collect();
        let live_relays: HashSet<SessionId> = view.relays.iter().map(|r| r.id).collect();
        let mut removing = HashSet::new();
        // Relays of deleted forwards' node egresses.
        for id in std::mem::take(&mut self.closing) {
            if live_relays.contains(&id) && removing.insert(id) {
                actions.push(Action::CloseRelay(id));
            }
        }
        // Egresses no longer wanted: their sessions go, and so do they.
        let mut gone = Vec::new();
        for (k, e) in &self.egresses {
            if !wanted.contains_key(k) {
                gone.push(k.clone());
                if let EgressState::Active(id) = e.state {
                    if k.destination.is_node() {
                        if live_relays.contains(&id) && removing.insert(id) {
                            actions.push(Action::CloseRelay(id));
                        }
                    } else if live.contains(&id) && removing.insert(id) {
                        actions.push(Action::Remove(id));
                    }
                }
            }
        }
        for k in gone {
            self.egresses.remove(&k);
        }
        let mut claimed: HashSet<SessionId> = self
            .egresses
            .values()
            .filter_map(|e| match e.state {
                EgressState::Active(id) => Some(id),
                _ => None,
            })
            .collect();
        for key in wanted.into_keys() {
            let e = self.egresses.entry(key.clone()).or_insert(Egress {
                state: EgressState::Pending,
                attempts: 0,
                last_error: None,
            });
            let node = key.destination.is_node();
            match e.state {
                EgressState::Starting => continue,
                EgressState::Active(id) if !node && live.contains(&id) => continue,
                EgressState::Active(id) if node && live_relays.contains(&id) => continue,
                EgressState::Active(id) => {
                    // The data plane lost it (refused on re-provisioning, or ended it).
                    claimed.remove(&id);
                    e.last_error = Some(if node {
                        "the relay ended without being closed".into()
                    } else {
                        "the session ended without being removed".into()
                    });
                    e.state = EgressState::Pending;
                }
                _ => {}
            }
            // A session for it may already run: left by an earlier control plane (found in
            // the data plane's snapshot), or set up by an add whose answer was lost.
            // For a node egress: a relay of the stream to that node (one relay per stream
            // and target, whoever opened it).
            let found = if node {
                view.relays
                    .iter()
                    .find(|r| r.stream == key.stream && r.serves(&key.destination))
                    .map(|r| r.id)
            } else {
                view.plain
                    .iter()
                    .find(|s| {
                        !claimed.contains(&s.id)
                            && s.stream == key.stream
                            && s.remote == key.remote()
                            && s.tracks == 1 << key.track
                    })
                    .map(|s| s.id)
            };
            if let Some(id) = found {
                claimed.insert(id);
                e.state = EgressState::Active(id);
                e.attempts = 0;
                continue;
            }
            let due = match e.state {
                EgressState::Pending => true,
                EgressState::Backoff { retry_at } => now >= retry_at,
                _ => false,
            };
            if due {
                e.state = EgressState::Starting;
                actions.push(Action::Add(key));
            }
        }
        // A relay another forward's egress still uses stays.
        let in_use: HashSet<SessionId> = self
            .egresses
            .values()
            .filter_map(|e| match e.state {
                EgressState::Active(id) => Some(id),
                _ => None,
            })
            .collect();
        actions.retain(|a| !matches!(a, Action::CloseRelay(id) if in_use.contains(id)));
        // Plain sessions nobody claims belong to no forward any more.
        for s in view.plain.iter().filter(|_| !self.keep_unclaimed) {
            if !claimed.contains(&s.id) && removing.insert(s.id) {
                actions.push(Action::Remove(s.id));
            }
        }
        actions
    }

    /// The outcome of an `Add`. Returns a session to remove when its egress went away while
    /// the add was in flight.
    pub fn added(
        &mut self,
        key: &EgressKey,
        result: Result<SessionId, String>,
        now: Instant,
    ) -> Option<SessionId> {
        let Some(e) = self.egresses.get_mut(key) else {
            return result.ok();
        };
        match result {
            Ok(id) => {
                e.state = EgressState::Active(id);
                e.attempts = 0;
                e.last_error = None;
            }
            Err(err) => {
                e.attempts = e.attempts.saturating_add(1);
                e.last_error = Some(err);
                e.state = EgressState::Backoff {
                    retry_at: now + backoff(e.attempts),
                };
                self.retries += 1;
            }
        }
        None
    }
}

//! [`Forwards`]: the forward service the rest of the control plane holds. It owns the
//! [`Manager`], keeps the forwards made through the API in the cluster store (so a restarted
//! control plane has them again), wakes the driver when the set changes, and writes the SDP
//! file of what a plain-RTP destination receives.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use switchyard_shared::command::Role;
use switchyard_shared::config::{check_forward, Config, Destination};
use switchyard_shared::names;
use tokio::sync::Notify;

use super::manager::Manager;
use super::model::{EgressView, Forward, ForwardError};
use crate::core::clock::now_ms;
use crate::core::store::Store as _;
use crate::services::cluster::Cluster;
use crate::services::relay::Relays;
use crate::services::sessions::Sessions;

/// The forwards of this node and what runs them.
pub struct Forwards {
    /// Held only for table updates, never across an await, and never together with the
    /// session table's lock.
    manager: Mutex<Manager>,
    /// Wakes the driver at once (a forward was created or deleted).
    pub(super) wake: Notify,
    pub(super) sessions: Arc<Sessions>,
    pub(super) relays: Arc<Relays>,
    pub(super) cluster: Arc<Cluster>,
    pub(super) node_id: String,
    announce_ip: IpAddr,
}

impl Forwards {
    /// The forwards of `config` (`[[forward]]`; those made through the API come back from
    /// the cluster store when the driver starts).
    pub fn new(
        config: &Config,
        sessions: Arc<Sessions>,
        relays: Arc<Relays>,
        cluster: Arc<Cluster>,
    ) -> Self {
        let mut manager = Manager::new();
        let now = now_ms();
        for section in &config.forward {
            // The config was validated before it got here; a bad entry is still only logged.
            match Forward::from_section(section, now) {
                Ok(f) => {
                    if let Err(e) = manager.add(f) {
                        tracing::error!(forward = %section.id, error = %e, "[[forward]] skipped");
                    }
                }
                Err(e) => tracing::error!(forward = %section.id, error = %e, "[[forward]] skipped"),
            }
        }
        Self {
            manager: Mutex::new(manager),
            wake: Notify::new(),
            sessions,
            relays,
            cluster,
            node_id: config.node.id.clone(),
            announce_ip: config.media.announce_ip(),
        }
    }

    /// The forward manager; held only for table updates and reads.
    pub fn manager(&self) -> MutexGuard<'_, Manager> {
        self.manager.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Create a forward of the streams under `prefix` to `destinations` (`id`, or `fwd-N`),
    /// keep it in the cluster store, and wake the driver. Returns it with its egresses as
    /// they stood when it was added.
    pub async fn create(
        &self,
        id: Option<String>,
        prefix: String,
        destinations: &[String],
    ) -> Result<(Forward, Vec<EgressView>), ForwardError> {
        let destinations = check_forward(&prefix, destinations).map_err(ForwardError::Invalid)?;
        if let Some(id) = &id {
            names::forward_id("id", id)?;
        }
        let (f, egresses) = {
            let mut m = self.manager();
            let id = match id {
                Some(id) => id,
                None => m.allocate_id(),
            };
            let f = Forward {
                id,
                prefix,
                destinations,
                from_config: false,
                created_ms: now_ms(),
            };
            m.add(f.clone())?;
            tracing::info!(forward = %f.id, prefix = %f.prefix, destinations = f.destinations.len(), "forward created");
            let now = Instant::now();
            let egresses = m
                .egresses_of(&f.id)
                .map(|(k, e)| EgressView::of(k, e, now))
                .collect();
            (f, egresses)
        };
        // Kept in the cluster store like rooms, so a restarted control plane has it again.
        if let Err(e) = self
            .cluster
            .store
            .put_forward(&self.node_id, &f.id, &f.saved())
            .await
        {
            let _ = self.manager().delete(&f.id);
            return Err(e.into());
        }
        self.wake.notify_one();
        Ok((f, egresses))
    }

    /// Delete an API forward (a config one stays: [`ForwardError::FromConfig`]); its egresses
    /// are removed by the driver's next plan.
    pub async fn delete(&self, id: &str) -> Result<(), ForwardError> {
        match self.manager().get(id) {
            None => return Err(ForwardError::NotFound),
            Some(f) if f.from_config => return Err(ForwardError::FromConfig(id.to_owned())),
            Some(_) => {}
        }
        self.cluster.store.delete_forward(&self.node_id, id).await?;
        self.manager().delete(id)?;
        tracing::info!(forward = %id, "forward deleted");
        self.wake.notify_one();
        Ok(())
    }

    /// The SDP file describing the plain RTP that destination `destination` (an index into
    /// forward `id`'s destinations) receives for `stream`.
    pub fn sdp_file(
        &self,
        id: &str,
        stream: Option<String>,
        destination: usize,
    ) -> Result<String, ForwardError> {
        let stream = stream
            .filter(|s| !s.is_empty())
            .ok_or(ForwardError::NoStream)?;
        let (prefix, destination) = {
            let m = self.manager();
            let f = m.get(id).ok_or(ForwardError::NotFound)?;
            let d = f
                .destinations
                .get(destination)
                .cloned()
                .ok_or(ForwardError::NoDestination(f.destinations.len()))?;
            (f.prefix.clone(), d)
        };
        if let Destination::Node(_) = destination {
            return Err(ForwardError::NodeDestination(destination.to_string()));
        }
        if !stream.starts_with(&prefix) {
            return Err(ForwardError::NotUnderPrefix { stream, prefix });
        }
        let media = {
            let g = self.sessions.lock();
            let published = g
                .node
                .sessions()
                .any(|s| s.stream == stream && matches!(s.role, Role::Publisher { .. }));
            if !published {
                return Err(ForwardError::NotPublished(stream));
            }
            g.node.publisher_codecs(&stream)
        };
        let tracks = media
            .as_deref()
            .map(super::sdp::track_codecs)
            .unwrap_or_default();
        let session_id = now_ms();
        Ok(super::sdp::describe(
            id,
            &stream,
            &destination,
            &tracks,
            self.announce_ip,
            session_id,
        )?)
    }
}

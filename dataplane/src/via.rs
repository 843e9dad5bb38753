//! Which of a worker's two UDP sockets a datagram came in on or goes out from.
//!
//! A worker owns a media socket (`media.port + worker`: publishers, subscribers, WebRTC) and
//! a relay socket (`media.relay_port + worker`: node-to-node relay links only). Keeping the
//! two apart is the relay link's first line of defence: nothing but a relay session is
//! reachable on the relay socket, and a relay session is never reachable on the media one.

/// A worker socket. `Copy` and one byte: it travels with every datagram.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Via {
    /// The media socket (`media.port + worker`).
    #[default]
    Media,
    /// The relay socket (`media.relay_port + worker`).
    Relay,
}

impl Via {
    /// Dense index, for per-socket arrays.
    pub const fn index(self) -> usize {
        match self {
            Via::Media => 0,
            Via::Relay => 1,
        }
    }

    /// Both sockets, in index order.
    pub const ALL: [Via; 2] = [Via::Media, Via::Relay];
}

//! The names clients and operators give things — streams, rooms, node ids, forward ids — and
//! the one rule each follows, so the REST API, WHIP/WHEP, the cluster API, relays, the config
//! and the data plane all accept the same names (docs/api.md states these rules).
//!
//! - A **stream** is 1 to [`MAX_NAME`] characters of `A-Z a-z 0-9 _ . / -`; by convention
//!   `room/stream`, and WHIP/WHEP's `/{room}/{stream}` is exactly that joined name.
//! - An **id** (a room, a node) is 1 to [`MAX_NAME`] characters of `A-Z a-z 0-9 _ . -`, and
//!   neither `.` nor `..`: ids become path segments (URLs, Redis keys, `switchyard-<node>.ring`).
//!   Both segments of a WHIP/WHEP path are ids.
//! - A stream **prefix** (forwards, `GET /v1/streams?prefix=`) is a stream name that may be
//!   empty.
//! - A **forward id** is 1 to [`MAX_FORWARD_ID`] characters of `A-Z a-z 0-9 _ -`.
//!
//! Every allowed character is ASCII, so a name's length in bytes is its length in characters,
//! and nothing in a name needs escaping in a URL path segment, a log line or a JSON string.

use std::fmt;

/// Longest stream name, room id or node id. One bound for all three, so a room id is always
/// usable as the first segment of a stream, and the whole stream fits in a session spec.
pub const MAX_NAME: usize = 128;
/// Longest forward id.
pub const MAX_FORWARD_ID: usize = 64;

/// A naming rule. Its `Display` is the rule in words, for the error a client sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    Stream,
    Prefix,
    Id,
    ForwardId,
}

impl Rule {
    /// Whether `name` follows this rule.
    pub fn allows(self, name: &str) -> bool {
        let chars = |extra: &[u8]| {
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
        };
        match self {
            Rule::Stream => !name.is_empty() && name.len() <= MAX_NAME && chars(b"_./-"),
            Rule::Prefix => name.len() <= MAX_NAME && chars(b"_./-"),
            Rule::Id => {
                !name.is_empty()
                    && name.len() <= MAX_NAME
                    && chars(b"_.-")
                    && name != "."
                    && name != ".."
            }
            Rule::ForwardId => !name.is_empty() && name.len() <= MAX_FORWARD_ID && chars(b"_-"),
        }
    }

    /// `Ok` when `name` follows this rule; otherwise the error naming `field`.
    pub fn check(self, field: &'static str, name: &str) -> Result<(), BadName> {
        if self.allows(name) {
            Ok(())
        } else {
            Err(BadName { field, rule: self })
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Stream => write!(f, "1 to {MAX_NAME} characters of A-Z a-z 0-9 _ . / -"),
            Rule::Prefix => write!(f, "up to {MAX_NAME} characters of A-Z a-z 0-9 _ . / -"),
            Rule::Id => write!(f, "1 to {MAX_NAME} characters of A-Z a-z 0-9 _ . -"),
            Rule::ForwardId => write!(f, "1 to {MAX_FORWARD_ID} characters of A-Z a-z 0-9 _ -"),
        }
    }
}

/// A name that breaks its rule: `stream: 1 to 128 characters of A-Z a-z 0-9 _ . / -`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct BadName {
    /// The field or path segment that held the name (`stream`, `room`, `targetNode`, ...).
    pub field: &'static str,
    pub rule: Rule,
}

/// A stream name (`field` is what the caller called it).
pub fn stream(field: &'static str, name: &str) -> Result<(), BadName> {
    Rule::Stream.check(field, name)
}

/// A room id or a node id.
pub fn id(field: &'static str, name: &str) -> Result<(), BadName> {
    Rule::Id.check(field, name)
}

/// A stream prefix (may be empty).
pub fn prefix(field: &'static str, name: &str) -> Result<(), BadName> {
    Rule::Prefix.check(field, name)
}

/// A forward id.
pub fn forward_id(field: &'static str, name: &str) -> Result<(), BadName> {
    Rule::ForwardId.check(field, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_ids_prefixes_and_forward_ids() {
        assert!(Rule::Stream.allows("room1/cam.hd_2-x"));
        assert!(Rule::Stream.allows(&"s".repeat(MAX_NAME)));
        assert!(!Rule::Stream.allows(&"s".repeat(MAX_NAME + 1)));
        assert!(!Rule::Stream.allows(""));
        assert!(!Rule::Stream.allows("c am"));
        assert!(!Rule::Stream.allows("é"));

        assert!(Rule::Id.allows("node-a.eu_1"));
        assert!(Rule::Id.allows(&"r".repeat(MAX_NAME)));
        assert!(!Rule::Id.allows(&"r".repeat(MAX_NAME + 1)));
        assert!(!Rule::Id.allows("a/b"));
        assert!(!Rule::Id.allows("."));
        assert!(!Rule::Id.allows(".."));
        assert!(!Rule::Id.allows("../etc"));
        assert!(!Rule::Id.allows(""));

        assert!(Rule::Prefix.allows(""));
        assert!(Rule::Prefix.allows("room1/"));
        assert!(!Rule::Prefix.allows("room 1"));

        assert!(Rule::ForwardId.allows("fwd-1_a"));
        assert!(!Rule::ForwardId.allows("fwd.1"));
        assert!(!Rule::ForwardId.allows(&"f".repeat(MAX_FORWARD_ID + 1)));
    }

    #[test]
    fn errors_name_the_field_and_the_rule() {
        assert_eq!(
            stream("stream", "c am").unwrap_err().to_string(),
            "stream: 1 to 128 characters of A-Z a-z 0-9 _ . / -"
        );
        assert_eq!(
            id("room", "").unwrap_err().to_string(),
            "room: 1 to 128 characters of A-Z a-z 0-9 _ . -"
        );
        assert_eq!(
            forward_id("id", "a b").unwrap_err().to_string(),
            "id: 1 to 64 characters of A-Z a-z 0-9 _ -"
        );
        assert_eq!(
            prefix("prefix", "a b").unwrap_err().to_string(),
            "prefix: up to 128 characters of A-Z a-z 0-9 _ . / -"
        );
    }
}

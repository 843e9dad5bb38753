//! ICE as the controlling agent against the node's ICE-lite: one candidate pair (the bench's
//! socket, the answer's host candidate), nominated with the first check. Sans-IO: the caller
//! owns the socket and the clock.

use switchyard_shared::packet::stun::{self, Class, Message};

/// Binding method (RFC 8489).
const METHOD_BINDING: u16 = 1;
/// PRIORITY of the bench's candidate: host type preference 126, local preference 65535,
/// component 1 (RFC 8445 §5.1.2.1), what a browser's host candidate has.
const PRIORITY: u32 = (126 << 24) | (65535 << 8) | 255;
/// A Binding request with USERNAME, PRIORITY, ICE-CONTROLLING, USE-CANDIDATE, integrity and
/// fingerprint is about 100 bytes.
pub const MAX_REQUEST: usize = 160;

/// Both sides' credentials for the checks the bench sends.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub local_ufrag: String,
    pub remote_ufrag: String,
    /// The node's `a=ice-pwd`: it keys MESSAGE-INTEGRITY both ways (short-term credentials).
    pub remote_pwd: String,
    /// ICE-CONTROLLING tie-breaker.
    pub tiebreaker: u64,
}

impl Credentials {
    /// Writes a nominating Binding request (USERNAME `remote:local`, USE-CANDIDATE) with
    /// `transaction_id` into `out`; returns its length. The same request serves as consent
    /// freshness check (RFC 7675) during the run.
    pub fn request(&self, out: &mut [u8; MAX_REQUEST], transaction_id: &[u8; 12]) -> usize {
        let username = format!("{}:{}", self.remote_ufrag, self.local_ufrag);
        // USERNAME is at most 2 × 256 bytes by RFC 8839, but both ufrags here are ≤ 32
        // (ours is generated, the node's is 8): the request always fits `out`.
        stun::write_binding_request(
            out,
            transaction_id,
            &username,
            self.remote_pwd.as_bytes(),
            true,
            PRIORITY,
            self.tiebreaker,
        )
        .unwrap_or(0)
    }

    /// Whether `pkt` is the node's success response to `transaction_id`, with a valid
    /// MESSAGE-INTEGRITY.
    pub fn is_success(&self, pkt: &[u8], transaction_id: &[u8; 12]) -> bool {
        match Message::parse(pkt) {
            Ok(m) => {
                m.class == Class::Success
                    && m.method == METHOD_BINDING
                    && &m.transaction_id == transaction_id
                    && m.check_integrity(self.remote_pwd.as_bytes())
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_response_round_trip() {
        let c = Credentials {
            local_ufrag: "benchufrag".into(),
            remote_ufrag: "nodeufra".into(),
            remote_pwd: "0123456789abcdefghijklmn".into(),
            tiebreaker: 7,
        };
        let tid = [9u8; 12];
        let mut out = [0u8; MAX_REQUEST];
        let n = c.request(&mut out, &tid);
        let m = Message::parse(&out[..n]).expect("request parses");
        assert_eq!(m.class, Class::Request);
        assert_eq!(m.username(), Some("nodeufra:benchufrag"));
        assert!(m.check_integrity(c.remote_pwd.as_bytes()));
        assert!(m.check_fingerprint());

        let mut resp = [0u8; 128];
        let from = "127.0.0.1:5000".parse().expect("addr");
        let n = stun::write_binding_success(&mut resp, &tid, from, c.remote_pwd.as_bytes())
            .expect("fits");
        assert!(c.is_success(&resp[..n], &tid));
        assert!(!c.is_success(&resp[..n], &[1u8; 12]), "other transaction");
        let n = stun::write_binding_success(&mut resp, &tid, from, b"wrong").expect("fits");
        assert!(!c.is_success(&resp[..n], &tid), "bad integrity");
        assert!(!c.is_success(&[0x80, 1, 2], &tid));
    }
}

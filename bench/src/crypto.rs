//! The bench's view of SRTP: plain RTP (reflector runs) or `switchyard_shared::srtp::Context`,
//! the same in-place transform the data plane runs (itself cross-checked against webrtc-srtp).

pub use switchyard_shared::command::SrtpProfile as Profile;

use switchyard_shared::srtp::Context;

/// Why a packet could not be protected or unprotected. Counted per packet, never a String.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("SRTP key setup failed (wrong key length?)")]
    Key,
    #[error("SRTP protect failed")]
    Protect,
    #[error("SRTP unprotect failed (authentication or replay)")]
    Unprotect,
}

/// Authentication tag bytes a profile adds to each RTP packet.
pub const fn tag_len(profile: Profile) -> usize {
    match profile {
        Profile::AesCm128HmacSha1_80 => 10,
        Profile::AeadAes128Gcm => 16,
    }
}

/// How one endpoint's packets are (un)protected.
pub enum Cipher {
    /// Plain RTP: the reflector reference run.
    Plain,
    Srtp {
        profile: Profile,
        ctx: Box<Context>,
    },
}

impl std::fmt::Debug for Cipher {
    // Contexts hold keys: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cipher::Plain => f.write_str("Plain"),
            Cipher::Srtp { profile, .. } => write!(f, "Srtp({})", profile.name()),
        }
    }
}

impl Cipher {
    /// An SRTP context for `master` = master key || master salt.
    pub fn srtp(profile: Profile, master: &[u8]) -> Result<Cipher, CryptoError> {
        let ctx = Context::new(profile, master).map_err(|_| CryptoError::Key)?;
        Ok(Cipher::Srtp {
            profile,
            ctx: Box::new(ctx),
        })
    }

    /// Bytes protection adds to an RTP packet.
    pub fn overhead(&self) -> usize {
        match self {
            Cipher::Plain => 0,
            Cipher::Srtp { profile, .. } => tag_len(*profile),
        }
    }

    /// Protects the RTP packet in `buf[..len]` in place; `buf` needs [`Self::overhead`]
    /// spare bytes. Returns the length to send.
    pub fn protect(&mut self, buf: &mut [u8], len: usize) -> Result<usize, CryptoError> {
        match self {
            Cipher::Plain => Ok(len),
            Cipher::Srtp { ctx, .. } => ctx.protect_rtp(buf, len).map_err(|_| CryptoError::Protect),
        }
    }

    /// Unprotects the received datagram `pkt` in place; returns the RTP length.
    pub fn unprotect(&mut self, pkt: &mut [u8]) -> Result<usize, CryptoError> {
        match self {
            Cipher::Plain => Ok(pkt.len()),
            Cipher::Srtp { ctx, .. } => ctx.unprotect_rtp(pkt).map_err(|_| CryptoError::Unprotect),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_is_identity() {
        let mut c = Cipher::Plain;
        let mut buf = [7u8; 32];
        assert_eq!(c.protect(&mut buf, 20), Ok(20));
        assert_eq!(c.unprotect(&mut buf[..20]), Ok(20));
        assert_eq!(c.overhead(), 0);
    }

    #[test]
    fn tags() {
        assert_eq!(tag_len(Profile::AeadAes128Gcm), 16);
        assert_eq!(tag_len(Profile::AesCm128HmacSha1_80), 10);
    }

    #[test]
    fn srtp_round_trip() {
        for profile in [Profile::AeadAes128Gcm, Profile::AesCm128HmacSha1_80] {
            let key = vec![3u8; profile.master_len()];
            let mut tx = Cipher::srtp(profile, &key).expect("key");
            let mut rx = Cipher::srtp(profile, &key).expect("key");
            let mut buf = [0u8; 100];
            crate::packet::write_rtp_header(&mut buf, 1, 2, 3, false);
            let n = tx.protect(&mut buf, 60).expect("protect");
            assert_eq!(n, 60 + tx.overhead());
            assert_eq!(rx.unprotect(&mut buf[..n]), Ok(60));
        }
    }
}

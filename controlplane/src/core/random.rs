//! Randomness for everything a client must not guess or collide with: SRTP keys, WHIP/WHEP
//! resource secrets, ICE credentials, SSRCs, generated room ids. Always the system's CSPRNG
//! (`ring::rand::SystemRandom`), never a seeded generator.

/// The system's random source failed (no entropy): nothing that needs a secret can be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("system RNG failed")]
pub struct RngError;

/// Fill `out` with random bytes.
pub fn fill(out: &mut [u8]) -> Result<(), RngError> {
    use ring::rand::SecureRandom as _;
    ring::rand::SystemRandom::new()
        .fill(out)
        .map_err(|_| RngError)
}

/// `list` grown to `len` distinct, non-zero random SSRCs (those already in it are kept).
pub fn fill_ssrcs(list: &mut Vec<u32>, len: usize) -> Result<(), RngError> {
    while list.len() < len {
        let mut b = [0u8; 4];
        fill(&mut b)?;
        let s = u32::from_be_bytes(b);
        if s != 0 && !list.contains(&s) {
            list.push(s);
        }
    }
    Ok(())
}

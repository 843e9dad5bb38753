//! RFC 3711 §4.3 key derivation with the AES-CM PRF and key_derivation_rate 0, which is
//! what DTLS-SRTP and SDES use. RFC 7714 §11 reuses it for AEAD_AES_128_GCM with the
//! 12-byte master salt right-padded with zeros to the 14 bytes the PRF expects.

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::Aes128Enc;

/// Session key labels, RFC 3711 §4.3.1 and §4.3.2.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Label {
    RtpEncryption = 0,
    RtpAuth = 1,
    RtpSalt = 2,
    RtcpEncryption = 3,
    RtcpAuth = 4,
    RtcpSalt = 5,
}

/// Master key and salt, ready to derive any number of session keys.
pub(crate) struct Kdf {
    aes: Aes128Enc,
    /// Master salt, zero-padded to 14 bytes (the PRF's 112-bit x) plus the 16-bit block counter.
    salt: [u8; 16],
}

impl Kdf {
    /// `salt` is at most 14 bytes (callers pass a profile's master salt).
    pub(crate) fn new(key: &[u8; 16], salt: &[u8]) -> Kdf {
        let mut padded = [0u8; 16];
        let n = salt.len().min(14);
        padded[..n].copy_from_slice(&salt[..n]);
        Kdf {
            aes: Aes128Enc::new(key.into()),
            salt: padded,
        }
    }

    /// Fills `out` with the session key for `label`: AES-CM keystream with
    /// IV = (master_salt XOR (label << 48)) << 16.
    pub(crate) fn derive(&self, label: Label, out: &mut [u8]) {
        let mut x = self.salt;
        // label << 48 in the 112-bit x lands in byte 7 (14 - 1 - 48/8).
        x[7] ^= label as u8;
        for (i, chunk) in out.chunks_mut(16).enumerate() {
            let mut block = x;
            // Session keys are at most 20 bytes, so the counter never leaves the low byte.
            block[14..16].copy_from_slice(&(i as u16).to_be_bytes());
            let mut b = block.into();
            self.aes.encrypt_block(&mut b);
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srtp::tests::unhex;

    /// RFC 3711 Appendix B.3.
    #[test]
    fn rfc3711_b3() {
        let key: [u8; 16] = unhex("E1F97A0D3E018BE0D64FA32C06DE4139")
            .try_into()
            .expect("16 bytes");
        let kdf = Kdf::new(&key, &unhex("0EC675AD498AFEEBB6960B3AABE6"));
        let mut enc = [0u8; 16];
        kdf.derive(Label::RtpEncryption, &mut enc);
        assert_eq!(enc.to_vec(), unhex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut salt = [0u8; 14];
        kdf.derive(Label::RtpSalt, &mut salt);
        assert_eq!(salt.to_vec(), unhex("30CBBC08863D8C85D49DB34A9AE1"));
        let mut auth = [0u8; 20];
        kdf.derive(Label::RtpAuth, &mut auth);
        assert_eq!(
            auth.to_vec(),
            unhex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
        );
    }
}

//! AEAD_AES_128_GCM (RFC 7714) with ring, the fastest AES-GCM measured here (docs/crypto.md).
//!
//! SRTP: IV = (0^16 || SSRC || ROC || SEQ) XOR salt, AAD = the RTP header, the 16-byte tag
//! follows the ciphertext. SRTCP: IV = (0^16 || SSRC || 0^16 || index) XOR salt, AAD = the
//! first 8 header bytes || E|index, and the packet ends tag, then E|index.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};

use super::kdf::{Kdf, Label};
use super::Error;

pub(crate) const TAG_LEN: usize = 16;
const SALT_LEN: usize = 12;

struct Keys {
    aead: LessSafeKey,
    salt: [u8; SALT_LEN],
}

impl Keys {
    fn derive(kdf: &Kdf, enc: Label, salt: Label) -> Result<Keys, Error> {
        let mut k = [0u8; 16];
        kdf.derive(enc, &mut k);
        let mut s = [0u8; SALT_LEN];
        kdf.derive(salt, &mut s);
        Keys::from_session(&k, &s)
    }

    fn from_session(key: &[u8; 16], salt: &[u8; SALT_LEN]) -> Result<Keys, Error> {
        let unbound = UnboundKey::new(&aead::AES_128_GCM, key).map_err(|_| Error::BadKeyLength)?;
        Ok(Keys {
            aead: LessSafeKey::new(unbound),
            salt: *salt,
        })
    }

    /// `tail` is the 6 bytes after the SSRC: ROC || SEQ for SRTP, 0^16 || index for SRTCP.
    fn nonce(&self, ssrc: u32, tail: [u8; 6]) -> Nonce {
        let mut iv = self.salt;
        for (b, s) in iv[2..6].iter_mut().zip(ssrc.to_be_bytes()) {
            *b ^= s;
        }
        for (b, s) in iv[6..].iter_mut().zip(tail) {
            *b ^= s;
        }
        Nonce::assume_unique_for_key(iv)
    }
}

fn rtp_tail(index: u64) -> [u8; 6] {
    let b = index.to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

fn rtcp_tail(index: u32) -> [u8; 6] {
    let b = index.to_be_bytes();
    [0, 0, b[0], b[1], b[2], b[3]]
}

/// RTCP header (8 bytes) || E|index: what SRTCP authenticates but does not encrypt.
fn rtcp_aad(header: &[u8], e_index: [u8; 4]) -> Result<[u8; 12], Error> {
    let mut aad = [0u8; 12];
    aad[..8].copy_from_slice(header.get(..8).ok_or(Error::TooShort)?);
    aad[8..].copy_from_slice(&e_index);
    Ok(aad)
}

pub(crate) struct Gcm {
    rtp: Keys,
    rtcp: Keys,
}

impl Gcm {
    pub(crate) fn new(kdf: &Kdf) -> Result<Gcm, Error> {
        Ok(Gcm {
            rtp: Keys::derive(kdf, Label::RtpEncryption, Label::RtpSalt)?,
            rtcp: Keys::derive(kdf, Label::RtcpEncryption, Label::RtcpSalt)?,
        })
    }

    #[cfg(test)]
    fn from_session(key: &[u8; 16], salt: &[u8; SALT_LEN]) -> Gcm {
        Gcm {
            rtp: Keys::from_session(key, salt).expect("16-byte key"),
            rtcp: Keys::from_session(key, salt).expect("16-byte key"),
        }
    }

    /// Encrypts `buf[hdr..len]` and appends the tag. Caller guarantees `hdr <= len`.
    pub(crate) fn protect_rtp(
        &self,
        buf: &mut [u8],
        hdr: usize,
        len: usize,
        ssrc: u32,
        index: u64,
    ) -> Result<usize, Error> {
        let out = buf.get_mut(..len + TAG_LEN).ok_or(Error::BufferTooSmall)?;
        let (head, rest) = out.split_at_mut(hdr);
        let (payload, tag_out) = rest.split_at_mut(len - hdr);
        let tag = self
            .rtp
            .aead
            .seal_in_place_separate_tag(
                self.rtp.nonce(ssrc, rtp_tail(index)),
                Aad::from(&*head),
                payload,
            )
            // ring refuses only plaintexts over 64 GiB.
            .map_err(|_| Error::Malformed)?;
        tag_out.copy_from_slice(tag.as_ref());
        Ok(len + TAG_LEN)
    }

    /// Authenticates and decrypts the SRTP packet `buf` in place. On failure the payload
    /// bytes are unspecified (the packet is to be dropped anyway).
    pub(crate) fn unprotect_rtp(
        &self,
        buf: &mut [u8],
        hdr: usize,
        ssrc: u32,
        index: u64,
    ) -> Result<usize, Error> {
        if buf.len() < hdr + TAG_LEN {
            return Err(Error::TooShort);
        }
        let (head, rest) = buf.split_at_mut(hdr);
        let plain = self
            .rtp
            .aead
            .open_in_place(
                self.rtp.nonce(ssrc, rtp_tail(index)),
                Aad::from(&*head),
                rest,
            )
            .map_err(|_| Error::AuthFailed)?;
        Ok(hdr + plain.len())
    }

    /// Encrypts `buf[8..len]`, appends the tag and E|index. Caller guarantees `8 <= len`.
    pub(crate) fn protect_rtcp(
        &self,
        buf: &mut [u8],
        len: usize,
        ssrc: u32,
        index: u32,
    ) -> Result<usize, Error> {
        let e_index = (0x8000_0000 | index).to_be_bytes();
        let out = buf
            .get_mut(..len + TAG_LEN + 4)
            .ok_or(Error::BufferTooSmall)?;
        let aad = rtcp_aad(out, e_index)?;
        let (payload, trailer) = out
            .get_mut(8..)
            .ok_or(Error::TooShort)?
            .split_at_mut(len - 8);
        let tag = self
            .rtcp
            .aead
            .seal_in_place_separate_tag(
                self.rtcp.nonce(ssrc, rtcp_tail(index)),
                Aad::from(aad),
                payload,
            )
            .map_err(|_| Error::Malformed)?;
        trailer[..TAG_LEN].copy_from_slice(tag.as_ref());
        trailer[TAG_LEN..].copy_from_slice(&e_index);
        Ok(len + TAG_LEN + 4)
    }

    /// `buf` is one encrypted SRTCP packet: header, ciphertext, tag, E|index.
    pub(crate) fn unprotect_rtcp(
        &self,
        buf: &mut [u8],
        ssrc: u32,
        index: u32,
    ) -> Result<usize, Error> {
        let end = buf.len().checked_sub(4).ok_or(Error::TooShort)?;
        if end < 8 + TAG_LEN {
            return Err(Error::TooShort);
        }
        let (body, trailer) = buf.split_at_mut(end);
        let e_index: [u8; 4] = (&*trailer).try_into().map_err(|_| Error::TooShort)?;
        let aad = rtcp_aad(body, e_index)?;
        let plain = self
            .rtcp
            .aead
            .open_in_place(
                self.rtcp.nonce(ssrc, rtcp_tail(index)),
                Aad::from(aad),
                &mut body[8..],
            )
            .map_err(|_| Error::AuthFailed)?;
        Ok(8 + plain.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srtp::tests::unhex;

    fn rfc7714() -> Gcm {
        Gcm::from_session(
            &unhex("000102030405060708090a0b0c0d0e0f")
                .try_into()
                .expect("16"),
            &unhex("517569642070726f2071756f").try_into().expect("12"),
        )
    }

    const RTP: &str = "8040f17b8041f8d35501a0b2\
        47616c6c696120657374206f6d6e69732064697669736120696e207061727465732074726573";
    const SRTP: &str = "8040f17b8041f8d35501a0b2\
        f24de3a3fb34de6cacba861c9d7e4bcabe633bd50d294e6f42a5f47a51c7d19b36de3adf8833\
        899d7f27beb16a9152cf765ee4390cce";
    /// RFC 7714 §17.1/§17.2 (the subsections' packet, SSRC "Mars", index 0x5d4).
    const RTCP: &str = "81c8000d4d6172734e5450314e545032525450200000042a0000e9304c756e61\
        deadbeefdeadbeefdeadbeefdeadbeefdeadbeef";
    const SRTCP: &str = "81c8000d4d61727363e94885dcdab67ca727d7662f6b7e997ff5c0f76c06f32d\
        c676a5f1730d6fda4ce09b4686303ded0bb9275bc84aa45896cf4d2fc5abf87245d9eade800005d4";

    /// RFC 7714 §16.1.1 and §16.1.2.
    #[test]
    fn rfc7714_16_1_srtp() {
        let gcm = rfc7714();
        let plain = unhex(RTP);
        let mut buf = plain.clone();
        buf.resize(plain.len() + TAG_LEN, 0);
        let n = gcm
            .protect_rtp(&mut buf, 12, plain.len(), 0x5501_a0b2, 0xf17b)
            .expect("protect");
        assert_eq!(buf[..n].to_vec(), unhex(SRTP));
        let n = gcm
            .unprotect_rtp(&mut buf, 12, 0x5501_a0b2, 0xf17b)
            .expect("unprotect");
        assert_eq!(buf[..n].to_vec(), plain);
    }

    /// RFC 7714 §17.1 and §17.2.
    #[test]
    fn rfc7714_17_srtcp() {
        let gcm = rfc7714();
        let plain = unhex(RTCP);
        let mut buf = plain.clone();
        buf.resize(plain.len() + TAG_LEN + 4, 0);
        let n = gcm
            .protect_rtcp(&mut buf, plain.len(), 0x4d61_7273, 0x5d4)
            .expect("protect");
        assert_eq!(buf[..n].to_vec(), unhex(SRTCP));
        let n = gcm
            .unprotect_rtcp(&mut buf, 0x4d61_7273, 0x5d4)
            .expect("unprotect");
        assert_eq!(buf[..n].to_vec(), plain);
    }
}

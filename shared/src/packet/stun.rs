//! STUN message view and writers (RFC 8489), enough for an ICE-lite responder (RFC 8445
//! §2.5) and the bench client's connectivity checks.
//!
//! [`Message::parse`] checks the header only; attributes are walked lazily and every walk
//! stops with an error at the first attribute that runs past the message. Integrity uses
//! short-term credentials: the key is the ICE password's bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ring::hmac;

use super::{be16, be32, crc32::crc32, put, ParseError};

pub const HEADER_LEN: usize = 20;
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// The only method ICE uses.
pub const METHOD_BINDING: u16 = 0x001;
/// XORed into the CRC-32 of FINGERPRINT (RFC 8489 §14.7), so it differs from other CRCs.
const FINGERPRINT_XOR: u32 = 0x5354_554e;
/// HMAC-SHA1 output length: MESSAGE-INTEGRITY's value.
const INTEGRITY_LEN: usize = 20;
const FINGERPRINT_LEN: usize = 4;

/// Attribute types used by ICE (RFC 8489 §18.3, RFC 8445 §16.1).
pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const PRIORITY: u16 = 0x0024;
    pub const USE_CANDIDATE: u16 = 0x0025;
    pub const SOFTWARE: u16 = 0x8022;
    pub const FINGERPRINT: u16 = 0x8028;
    pub const ICE_CONTROLLED: u16 = 0x8029;
    pub const ICE_CONTROLLING: u16 = 0x802A;
}

/// The message class, from the C1/C0 bits of the message type (RFC 8489 §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0x0000,
            Class::Indication => 0x0010,
            Class::Success => 0x0100,
            Class::Error => 0x0110,
        }
    }
}

/// A STUN message borrowed from a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub class: Class,
    /// The 12-bit method (1 = Binding).
    pub method: u16,
    pub transaction_id: [u8; 12],
    raw: &'a [u8],
}

impl<'a> Message<'a> {
    /// Check the header: top two bits zero, the magic cookie, and a length that is a
    /// multiple of 4 and equals the rest of the datagram.
    pub fn parse(b: &'a [u8]) -> Result<Message<'a>, ParseError> {
        let header = b.get(..HEADER_LEN).ok_or(ParseError::TooShort)?;
        let t = u16::from_be_bytes([header[0], header[1]]);
        if t & 0xC000 != 0 {
            return Err(ParseError::BadType);
        }
        if be32(header, 4) != Some(MAGIC_COOKIE) {
            return Err(ParseError::BadMagic);
        }
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        if len % 4 != 0 || len != b.len() - HEADER_LEN {
            return Err(ParseError::BadLength);
        }
        let class = match t & 0x0110 {
            0x0000 => Class::Request,
            0x0010 => Class::Indication,
            0x0100 => Class::Success,
            _ => Class::Error,
        };
        let mut transaction_id = [0u8; 12];
        transaction_id.copy_from_slice(&header[8..20]);
        Ok(Message {
            class,
            method: (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80),
            transaction_id,
            raw: b,
        })
    }

    /// The whole message.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Iterate the attributes as `(type, value)`; values exclude padding.
    pub fn attributes(&self) -> AttrIter<'a> {
        AttrIter {
            raw: self.raw,
            pos: HEADER_LEN,
        }
    }

    /// The value of the first attribute of type `t`; `None` if absent or if the attributes
    /// are malformed before it.
    pub fn attribute(&self, t: u16) -> Option<&'a [u8]> {
        self.attributes()
            .map_while(Result::ok)
            .find_map(|(at, v)| (at == t).then_some(v))
    }

    /// USERNAME as UTF-8 (`"local:remote"` ufrags in ICE).
    pub fn username(&self) -> Option<&'a str> {
        std::str::from_utf8(self.attribute(attr::USERNAME)?).ok()
    }

    /// XOR-MAPPED-ADDRESS, decoded (RFC 8489 §14.2).
    pub fn xor_mapped_address(&self) -> Option<SocketAddr> {
        let v = self.attribute(attr::XOR_MAPPED_ADDRESS)?;
        let port = be16(v, 2)? ^ (MAGIC_COOKIE >> 16) as u16;
        let ip = match (v.get(1)?, v.len()) {
            (1, 8) => IpAddr::V4(Ipv4Addr::from(be32(v, 4)? ^ MAGIC_COOKIE)),
            (2, 20) => {
                let mut ip = [0u8; 16];
                for ((o, x), k) in ip.iter_mut().zip(v.get(4..)?).zip(self.xor_key()) {
                    *o = x ^ k;
                }
                IpAddr::V6(Ipv6Addr::from(ip))
            }
            _ => return None,
        };
        Some(SocketAddr::new(ip, port))
    }

    /// The cookie and transaction ID: what IPv6 addresses are XORed with.
    fn xor_key(&self) -> [u8; 16] {
        xor_key(&self.transaction_id)
    }

    /// Offset of the first attribute of type `t` and its value, walking only well-formed
    /// attributes.
    fn find(&self, t: u16) -> Option<(usize, &'a [u8])> {
        let mut it = self.attributes();
        while let Some(Ok((at, ty, v))) = it.next_at() {
            if ty == t {
                return Some((at, v));
            }
        }
        None
    }

    /// True if the message ends with a FINGERPRINT whose CRC-32 covers everything before it.
    pub fn check_fingerprint(&self) -> bool {
        let Some((at, v)) = self.find(attr::FINGERPRINT) else {
            return false;
        };
        if v.len() != FINGERPRINT_LEN || at + 4 + FINGERPRINT_LEN != self.raw.len() {
            return false;
        }
        let Some(before) = self.raw.get(..at) else {
            return false;
        };
        be32(v, 0) == Some(crc32(before) ^ FINGERPRINT_XOR)
    }

    /// True if MESSAGE-INTEGRITY holds the HMAC-SHA1 of the message up to it under `key`
    /// (the ICE password for short-term credentials).
    pub fn check_integrity(&self, key: &[u8]) -> bool {
        self.check_integrity_key(&hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key))
    }

    /// [`check_integrity`](Self::check_integrity) with a prepared key, so a session can
    /// keep its key instead of re-deriving the HMAC state per request.
    pub fn check_integrity_key(&self, key: &hmac::Key) -> bool {
        let Some((at, v)) = self.find(attr::MESSAGE_INTEGRITY) else {
            return false;
        };
        if v.len() != INTEGRITY_LEN {
            return false;
        }
        let Some(tag) = integrity(self.raw, at, key) else {
            return false;
        };
        constant_time_eq(tag.as_ref(), v)
    }
}

/// HMAC-SHA1 over `msg[..at]` with the header length set as if MESSAGE-INTEGRITY (at `at`)
/// were the last attribute (RFC 8489 §14.5).
fn integrity(msg: &[u8], at: usize, key: &hmac::Key) -> Option<hmac::Tag> {
    let len = u16::try_from(at + 4 + INTEGRITY_LEN - HEADER_LEN).ok()?;
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(msg.get(..2)?);
    ctx.update(&len.to_be_bytes());
    ctx.update(msg.get(4..at)?);
    Some(ctx.sign())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn xor_key(transaction_id: &[u8; 12]) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    k[4..].copy_from_slice(transaction_id);
    k
}

/// An attribute with the offset of its header in the message.
type Located<'a> = (usize, u16, &'a [u8]);

/// Iterator over attributes; see [`Message::attributes`].
#[derive(Clone, Debug)]
pub struct AttrIter<'a> {
    raw: &'a [u8],
    pos: usize,
}

impl<'a> AttrIter<'a> {
    /// Next attribute as (offset of its header, type, value).
    fn next_at(&mut self) -> Option<Result<Located<'a>, ParseError>> {
        let at = self.pos;
        if at >= self.raw.len() {
            return None;
        }
        let (Some(t), Some(len)) = (be16(self.raw, at), be16(self.raw, at + 2)) else {
            self.pos = usize::MAX;
            return Some(Err(ParseError::BadAttribute));
        };
        let start = at + 4;
        let end = start + usize::from(len);
        let Some(value) = self.raw.get(start..end) else {
            self.pos = usize::MAX;
            return Some(Err(ParseError::BadAttribute));
        };
        // Values are padded to a multiple of 4; the message length is one, so the padded
        // end never passes the message.
        self.pos = end.next_multiple_of(4);
        Some(Ok((at, t, value)))
    }
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = Result<(u16, &'a [u8]), ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.next_at()?.map(|(_, t, v)| (t, v)))
    }
}

/// Builds a STUN message into a caller-owned buffer, keeping the header length current.
#[derive(Debug)]
pub struct Writer<'a> {
    out: &'a mut [u8],
    len: usize,
    pad: u8,
    transaction_id: [u8; 12],
}

impl<'a> Writer<'a> {
    /// Start a message with the given class, method and transaction ID.
    pub fn new(
        out: &'a mut [u8],
        class: Class,
        method: u16,
        transaction_id: &[u8; 12],
    ) -> Result<Self, ParseError> {
        let m = method & 0x0FFF;
        let t = (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | class.bits();
        put(out, 0, &t.to_be_bytes())?;
        put(out, 2, &[0, 0])?;
        put(out, 4, &MAGIC_COOKIE.to_be_bytes())?;
        put(out, 8, transaction_id)?;
        Ok(Writer {
            out,
            len: HEADER_LEN,
            pad: 0,
            transaction_id: *transaction_id,
        })
    }

    /// The byte written into attribute padding (default 0). Receivers ignore it (RFC 8489
    /// §14); RFC 5769's vectors use spaces, which this reproduces.
    pub fn padding_byte(&mut self, b: u8) {
        self.pad = b;
    }

    /// Append an attribute, padded to a multiple of 4.
    pub fn attribute(&mut self, t: u16, value: &[u8]) -> Result<(), ParseError> {
        let vlen = u16::try_from(value.len()).map_err(|_| ParseError::BadAttribute)?;
        let padded = value.len().next_multiple_of(4);
        let end = self.len + 4 + padded;
        let body = u16::try_from(end - HEADER_LEN).map_err(|_| ParseError::BadAttribute)?;
        if self.out.len() < end {
            return Err(ParseError::TooShort);
        }
        put(self.out, self.len, &t.to_be_bytes())?;
        put(self.out, self.len + 2, &vlen.to_be_bytes())?;
        put(self.out, self.len + 4, value)?;
        self.out
            .get_mut(self.len + 4 + value.len()..end)
            .ok_or(ParseError::TooShort)?
            .fill(self.pad);
        self.len = end;
        put(self.out, 2, &body.to_be_bytes())
    }

    /// Append XOR-MAPPED-ADDRESS for `addr` (RFC 8489 §14.2).
    pub fn xor_mapped_address(&mut self, addr: SocketAddr) -> Result<(), ParseError> {
        let port = (addr.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes();
        match addr.ip() {
            IpAddr::V4(ip) => {
                let x = (u32::from(ip) ^ MAGIC_COOKIE).to_be_bytes();
                let v = [0, 1, port[0], port[1], x[0], x[1], x[2], x[3]];
                self.attribute(attr::XOR_MAPPED_ADDRESS, &v)
            }
            IpAddr::V6(ip) => {
                let mut v = [0u8; 20];
                v[..4].copy_from_slice(&[0, 2, port[0], port[1]]);
                let key = xor_key(&self.transaction_id);
                for ((o, x), k) in v[4..].iter_mut().zip(ip.octets()).zip(key) {
                    *o = x ^ k;
                }
                self.attribute(attr::XOR_MAPPED_ADDRESS, &v)
            }
        }
    }

    /// Append MESSAGE-INTEGRITY over everything written so far, keyed with `key`.
    pub fn message_integrity(&mut self, key: &[u8]) -> Result<(), ParseError> {
        self.message_integrity_key(&hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key))
    }

    /// [`message_integrity`](Self::message_integrity) with a prepared key.
    pub fn message_integrity_key(&mut self, key: &hmac::Key) -> Result<(), ParseError> {
        let at = self.len;
        // Reserve the attribute first so the header length already counts it.
        self.attribute(attr::MESSAGE_INTEGRITY, &[0; INTEGRITY_LEN])?;
        let tag = integrity(self.out, at, key).ok_or(ParseError::BadAttribute)?;
        put(self.out, at + 4, tag.as_ref())
    }

    /// Append FINGERPRINT; it must be the last attribute.
    pub fn fingerprint(&mut self) -> Result<(), ParseError> {
        let at = self.len;
        self.attribute(attr::FINGERPRINT, &[0; FINGERPRINT_LEN])?;
        let crc = crc32(self.out.get(..at).ok_or(ParseError::TooShort)?) ^ FINGERPRINT_XOR;
        put(self.out, at + 4, &crc.to_be_bytes())
    }

    /// The message length in bytes.
    pub fn finish(self) -> usize {
        self.len
    }
}

/// Write a Binding success response with XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY and
/// FINGERPRINT into `out`, returning its length (64 for IPv4, 76 for IPv6).
pub fn write_binding_success(
    out: &mut [u8],
    transaction_id: &[u8; 12],
    mapped: SocketAddr,
    integrity_key: &[u8],
) -> Result<usize, ParseError> {
    let mut w = Writer::new(out, Class::Success, METHOD_BINDING, transaction_id)?;
    w.xor_mapped_address(mapped)?;
    w.message_integrity(integrity_key)?;
    w.fingerprint()?;
    Ok(w.finish())
}

/// Write a Binding request as an ICE controlling agent (RFC 8445 §7.1.1): USERNAME
/// (`"remote:local"` ufrags), PRIORITY, ICE-CONTROLLING, USE-CANDIDATE if nominating,
/// MESSAGE-INTEGRITY and FINGERPRINT. Returns its length.
pub fn write_binding_request(
    out: &mut [u8],
    transaction_id: &[u8; 12],
    username: &str,
    integrity_key: &[u8],
    use_candidate: bool,
    priority: u32,
    ice_controlling_tiebreaker: u64,
) -> Result<usize, ParseError> {
    let mut w = Writer::new(out, Class::Request, METHOD_BINDING, transaction_id)?;
    w.attribute(attr::USERNAME, username.as_bytes())?;
    w.attribute(attr::PRIORITY, &priority.to_be_bytes())?;
    w.attribute(
        attr::ICE_CONTROLLING,
        &ice_controlling_tiebreaker.to_be_bytes(),
    )?;
    if use_candidate {
        w.attribute(attr::USE_CANDIDATE, &[])?;
    }
    w.message_integrity(integrity_key)?;
    w.fingerprint()?;
    Ok(w.finish())
}

#[cfg(test)]
mod tests;

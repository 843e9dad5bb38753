//! SRTP and SRTCP (RFC 3711, RFC 7714), in place, for the data plane's hot path.
//!
//! Security contract: [`Context::unprotect_rtp`] and [`Context::unprotect_rtcp`] face the
//! network. They never panic, never allocate, and change no state (replay window, rollover
//! counter, SSRC table) unless the packet authenticated, so forged or replayed packets cost
//! one MAC check and nothing else. Keys are derived once in [`Context::new`] and never
//! printed.
//!
//! Profiles: AES_CM_128_HMAC_SHA1_80 (RustCrypto AES-CTR and HMAC-SHA1) and
//! AEAD_AES_128_GCM (ring). Why those libraries: docs/crypto.md. No MKI, key derivation
//! rate 0, 64-packet replay window per SSRC.

mod cm;
#[cfg(test)]
mod fuzz_tests;
mod gcm;
mod header;
mod kdf;
mod replay;
mod ssrc;

pub use crate::command::SrtpProfile as Profile;
pub use ssrc::MAX_SSRCS;

use crate::journal::{self, Slot};
use replay::Window;
use ssrc::Table;

/// Most bytes protect adds (GCM tag 16 + SRTCP E|index 4); callers size buffers with it.
pub const MAX_OVERHEAD: usize = 20;

/// Why a packet could not be protected or unprotected. Copy and tiny: the data plane
/// counts these as drop reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("master key and salt have the wrong length for the profile")]
    BadKeyLength,
    #[error("packet too short for its header and tag")]
    TooShort,
    #[error("buffer has no room for the tag (and SRTCP index)")]
    BufferTooSmall,
    #[error("authentication tag does not match")]
    AuthFailed,
    #[error("packet index already seen or older than the replay window")]
    Replayed,
    #[error("more SSRCs than one context tracks")]
    TooManySsrcs,
    #[error("not an RTP/RTCP packet this context can handle")]
    Malformed,
    /// Protecting would reuse a packet index an earlier context used under the same key
    /// (a resumed context, see [`crate::journal`]): refused, never sent.
    #[error("packet index already used under this key before a restart")]
    IndexReused,
}

// Unboxed on purpose: one Context per session direction, and boxing would add a pointer
// chase to every packet to save ~600 bytes.
#[allow(clippy::large_enum_variant)]
enum Cipher {
    Cm(cm::Cm),
    Gcm(gcm::Gcm),
}

/// One direction of one session (all its SSRCs): what the node uses to unprotect what a peer
/// sends, or to protect what it sends to a peer. Holds up to [`MAX_SSRCS`] SSRCs per table
/// (SRTP and SRTCP, sending and receiving tracked separately) in fixed arrays.
pub struct Context {
    profile: Profile,
    cipher: Cipher,
    /// Highest index protected per SSRC: where the sender's ROC comes from.
    rtp_tx: Table<Sent>,
    /// Highest authenticated index and replay bitmap per SSRC.
    rtp_rx: Table<Window>,
    /// Next SRTCP index to send per SSRC (starts at 0, RFC 3711 §3.4).
    rtcp_tx: Table<u32>,
    rtcp_rx: Table<Window>,
    /// Where every index used is written before the packet leaves (static keys only).
    journal: Option<Slot>,
}

/// What one SSRC has sent: the window (its top gives the ROC) and, for a resumed context,
/// the highest index an earlier context used, which nothing may be protected at or below.
#[derive(Clone, Copy, Debug, Default)]
struct Sent {
    window: Window,
    floor: Option<u64>,
}

impl std::fmt::Debug for Context {
    // Keys never reach a log line: only the profile and how many SSRCs are tracked.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("profile", &self.profile)
            .field("rtp_tx_ssrcs", &self.rtp_tx.len())
            .field("rtp_rx_ssrcs", &self.rtp_rx.len())
            .field("rtcp_tx_ssrcs", &self.rtcp_tx.len())
            .field("rtcp_rx_ssrcs", &self.rtcp_rx.len())
            .finish_non_exhaustive()
    }
}

/// SRTCP's 31-bit index wraps here (RFC 3711 §3.4); rekey long before.
const SRTCP_INDEX_MASK: u32 = 0x7fff_ffff;
const E_FLAG: u32 = 0x8000_0000;

impl Context {
    /// Derives the session keys from `master` (key || salt, `profile.master_len()` bytes).
    pub fn new(profile: Profile, master: &[u8]) -> Result<Context, Error> {
        if master.len() != profile.master_len() {
            return Err(Error::BadKeyLength);
        }
        let (key, salt) = master.split_at(profile.key_len());
        let key: &[u8; 16] = key.try_into().map_err(|_| Error::BadKeyLength)?;
        let kdf = kdf::Kdf::new(key, salt);
        let cipher = match profile {
            Profile::AesCm128HmacSha1_80 => Cipher::Cm(cm::Cm::new(&kdf)?),
            Profile::AeadAes128Gcm => Cipher::Gcm(gcm::Gcm::new(&kdf)?),
        };
        Ok(Context {
            profile,
            cipher,
            rtp_tx: Table::default(),
            rtp_rx: Table::default(),
            rtcp_tx: Table::default(),
            rtcp_rx: Table::default(),
            journal: None,
        })
    }

    /// Tie this context to its journal record: every index it uses from now on is stored
    /// there first, and whatever an earlier context left there (after a data-plane
    /// restart) is resumed: sending continues above the highest index used (SRTP and
    /// SRTCP), receiving keeps the rollover counter and refuses everything at or below the
    /// highest index accepted. Call once, on a fresh context, before any packet.
    pub fn resume(&mut self, slot: Slot) {
        for (table, _, ssrc, index) in slot.entries() {
            match table {
                journal::Table::RtpTx => {
                    if let Ok((at, mut sent)) = self.rtp_tx.get(ssrc) {
                        let floor = sent.floor.map_or(index, |f| f.max(index));
                        sent = Sent {
                            window: Window::seen_up_to(floor),
                            floor: Some(floor),
                        };
                        if let Some(k) = self.rtp_tx.commit(ssrc, at, sent) {
                            slot.store(table, k, ssrc, floor);
                        }
                    }
                }
                journal::Table::RtpRx | journal::Table::RtcpRx => {
                    let t = if table == journal::Table::RtpRx {
                        &mut self.rtp_rx
                    } else {
                        &mut self.rtcp_rx
                    };
                    if let Ok((at, seen)) = t.get(ssrc) {
                        let top = seen.top().map_or(index, |v| v.max(index));
                        if let Some(k) = t.commit(ssrc, at, Window::seen_up_to(top)) {
                            slot.store(table, k, ssrc, top);
                        }
                    }
                }
                journal::Table::RtcpTx => {
                    if let Ok((at, next)) = self.rtcp_tx.get(ssrc) {
                        let used = index.min(u64::from(SRTCP_INDEX_MASK)) as u32;
                        let next = next.max(used.wrapping_add(1) & SRTCP_INDEX_MASK);
                        if let Some(k) = self.rtcp_tx.commit(ssrc, at, next) {
                            slot.store(table, k, ssrc, u64::from(used));
                        }
                    }
                }
            }
        }
        self.journal = Some(slot);
    }

    /// The journal record, given back when the session ends (see [`Slot::release`]).
    pub fn take_journal(&mut self) -> Option<Slot> {
        self.journal.take()
    }

    /// The highest SRTP index this context protected for `ssrc`, and the one below which a
    /// resumed context refuses to protect: what a rewriting sender continues from.
    pub fn sent_floor(&mut self, ssrc: u32) -> Option<u64> {
        self.rtp_tx.get(ssrc).ok()?.1.floor
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// Bytes protect appends to an RTP packet (the authentication tag: 10 or 16).
    pub fn tag_len(&self) -> usize {
        match self.cipher {
            Cipher::Cm(_) => cm::TAG_LEN,
            Cipher::Gcm(_) => gcm::TAG_LEN,
        }
    }

    /// `buf[..len]` holds plaintext RTP; `buf.len() >= len + tag len` (10 or 16 bytes).
    /// Encrypts in place, appends the tag, returns the SRTP length. Tracks the ROC per SSRC
    /// from the sequence numbers it protects.
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error> {
        let plain = buf.get(..len).ok_or(Error::BufferTooSmall)?;
        let h = header::rtp(plain)?;
        if buf.len() < len + self.tag_len() {
            return Err(Error::BufferTooSmall);
        }
        let (slot, mut sent) = self.rtp_tx.get(h.ssrc)?;
        // ROC -1 (a sequence number from before this SSRC's first packet) gets ROC 0 and
        // leaves the state alone, so one stray packet cannot shift every later ROC.
        let (index, track) = match replay::estimate(sent.window.top(), h.seq) {
            Some(index) => (index, true),
            // Untracked indices cannot be journaled: a journaled context refuses them.
            None if self.journal.is_some() => return Err(Error::IndexReused),
            None => (u64::from(h.seq), false),
        };
        if sent.floor.is_some_and(|f| index <= f) {
            return Err(Error::IndexReused);
        }
        let n = match &self.cipher {
            Cipher::Cm(c) => c.protect_rtp(buf, h.len, len, h.ssrc, index)?,
            Cipher::Gcm(c) => c.protect_rtp(buf, h.len, len, h.ssrc, index)?,
        };
        if track {
            sent.window.accept(index);
            let k = self.rtp_tx.commit(h.ssrc, slot, sent);
            if let (Some(j), Some(k), Some(top)) = (&self.journal, k, sent.window.top()) {
                j.store(journal::Table::RtpTx, k, h.ssrc, top);
            }
        }
        Ok(n)
    }

    /// `buf` holds one SRTP packet (exact length). Authenticates, checks replay (64-packet
    /// window per SSRC, RFC 3711 §3.3.2), decrypts in place and returns the plaintext RTP
    /// length. Replay state and ROC change only after the packet authenticates. On error the
    /// contents of `buf` are unspecified.
    pub fn unprotect_rtp(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let body = buf
            .len()
            .checked_sub(self.tag_len())
            .ok_or(Error::TooShort)?;
        let h = header::rtp(buf.get(..body).ok_or(Error::TooShort)?)?;
        let (slot, mut seen) = self.rtp_rx.get(h.ssrc)?;
        let index = replay::estimate(seen.top(), h.seq).ok_or(Error::Replayed)?;
        seen.check(index)?;
        let n = match &self.cipher {
            Cipher::Cm(c) => c.unprotect_rtp(buf, h.len, h.ssrc, index)?,
            Cipher::Gcm(c) => c.unprotect_rtp(buf, h.len, h.ssrc, index)?,
        };
        seen.accept(index);
        let k = self.rtp_rx.commit(h.ssrc, slot, seen);
        if let (Some(j), Some(k), Some(top)) = (&self.journal, k, seen.top()) {
            j.store(journal::Table::RtpRx, k, h.ssrc, top);
        }
        Ok(n)
    }

    /// `buf[..len]` holds plaintext RTCP (a compound packet; the first header's SSRC names
    /// the sender); `buf.len() >= len + tag len + 4`. Encrypts everything after the first 8
    /// bytes, appends E|SRTCP index (and the tag), returns the SRTCP length. Keeps its own
    /// SRTCP index counter per SSRC.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error> {
        let plain = buf.get(..len).ok_or(Error::BufferTooSmall)?;
        let ssrc = header::rtcp_ssrc(plain)?;
        if buf.len() < len + self.tag_len() + 4 {
            return Err(Error::BufferTooSmall);
        }
        let (slot, index) = self.rtcp_tx.get(ssrc)?;
        // Journal first: the index is on record before the packet can leave.
        let k = self
            .rtcp_tx
            .commit(ssrc, slot, index.wrapping_add(1) & SRTCP_INDEX_MASK);
        if let (Some(j), Some(k)) = (&self.journal, k) {
            j.store(journal::Table::RtcpTx, k, ssrc, u64::from(index));
        }
        let n = match &self.cipher {
            Cipher::Cm(c) => c.protect_rtcp(buf, len, ssrc, index)?,
            Cipher::Gcm(c) => c.protect_rtcp(buf, len, ssrc, index)?,
        };
        Ok(n)
    }

    /// `buf` holds one SRTCP packet (exact length). Authenticates, checks replay on the
    /// SRTCP index, decrypts in place and returns the plaintext RTCP length. Unencrypted
    /// SRTCP (E = 0) is accepted for AES-CM; for GCM it is `Malformed` (no browser sends it).
    pub fn unprotect_rtcp(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let n = buf.len();
        let tag = self.tag_len();
        if n < header::RTCP_HEADER + 4 + tag {
            return Err(Error::TooShort);
        }
        let ssrc = header::rtcp_ssrc(buf)?;
        // AES-CM puts E|index before the tag, GCM after it.
        let at = match self.cipher {
            Cipher::Cm(_) => n - tag - 4,
            Cipher::Gcm(_) => n - 4,
        };
        let e_index = buf
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .ok_or(Error::TooShort)?;
        let index = e_index & SRTCP_INDEX_MASK;
        let encrypted = e_index & E_FLAG != 0;
        let (slot, mut seen) = self.rtcp_rx.get(ssrc)?;
        seen.check(u64::from(index))?;
        let len = match &self.cipher {
            Cipher::Cm(c) => c.unprotect_rtcp(buf, ssrc, index, encrypted)?,
            Cipher::Gcm(_) if !encrypted => return Err(Error::Malformed),
            Cipher::Gcm(c) => c.unprotect_rtcp(buf, ssrc, index)?,
        };
        seen.accept(u64::from(index));
        let k = self.rtcp_rx.commit(ssrc, slot, seen);
        if let (Some(j), Some(k), Some(top)) = (&self.journal, k, seen.top()) {
            j.store(journal::Table::RtcpRx, k, ssrc, top);
        }
        Ok(len)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn unhex(s: &str) -> Vec<u8> {
        let s: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        s.chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).expect("ascii"), 16).expect("hex"))
            .collect()
    }

    const PROFILES: [Profile; 2] = [Profile::AesCm128HmacSha1_80, Profile::AeadAes128Gcm];

    fn master(p: Profile, seed: u8) -> Vec<u8> {
        (0..p.master_len() as u8)
            .map(|i| i.wrapping_mul(31) ^ seed)
            .collect()
    }

    fn rtp(ssrc: u32, seq: u16, payload: usize) -> Vec<u8> {
        let mut p = vec![0x80, 96];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&1234u32.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend((0..payload).map(|i| i as u8));
        p
    }

    fn pair(p: Profile) -> (Context, Context) {
        let m = master(p, 7);
        (
            Context::new(p, &m).expect("tx"),
            Context::new(p, &m).expect("rx"),
        )
    }

    fn protect(tx: &mut Context, plain: &[u8]) -> Vec<u8> {
        let mut buf = plain.to_vec();
        buf.resize(plain.len() + MAX_OVERHEAD, 0);
        let n = tx.protect_rtp(&mut buf, plain.len()).expect("protect");
        buf.truncate(n);
        buf
    }

    #[test]
    fn bad_key_length() {
        for p in PROFILES {
            assert_eq!(
                Context::new(p, &[0; 29]).map(|_| ()),
                Err(Error::BadKeyLength)
            );
            let c = Context::new(p, &master(p, 0)).expect("right length");
            assert_eq!(c.profile(), p);
            assert!(!format!("{c:?}").contains("key"), "{c:?}");
        }
    }

    #[test]
    fn round_trip_replay_and_tamper() {
        for p in PROFILES {
            let (mut tx, mut rx) = pair(p);
            let plain = rtp(42, 65530, 100);
            let srtp = protect(&mut tx, &plain);
            let mut buf = srtp.clone();
            let n = rx.unprotect_rtp(&mut buf).expect("unprotect");
            assert_eq!(&buf[..n], &plain[..]);
            let mut again = srtp.clone();
            assert_eq!(rx.unprotect_rtp(&mut again), Err(Error::Replayed));
            let mut bad = protect(&mut tx, &rtp(42, 65531, 100));
            bad[20] ^= 1;
            assert_eq!(rx.unprotect_rtp(&mut bad), Err(Error::AuthFailed));
            // The forged packet did not consume the index: the real one still goes through.
            let mut good = protect(&mut Context::new(p, &master(p, 7)).expect("k"), &plain);
            assert_eq!(rx.unprotect_rtp(&mut good), Err(Error::Replayed));
        }
    }

    #[test]
    fn rollover_across_many_seqs() {
        for p in PROFILES {
            let (mut tx, mut rx) = pair(p);
            for i in 0..70_000u32 {
                let seq = (65_000 + i) as u16;
                let plain = rtp(9, seq, 16);
                let mut buf = protect(&mut tx, &plain);
                let n = rx.unprotect_rtp(&mut buf).expect("in order");
                assert_eq!(&buf[..n], &plain[..]);
            }
        }
    }

    #[test]
    fn rtcp_round_trip() {
        for p in PROFILES {
            let (mut tx, mut rx) = pair(p);
            let plain = unhex("81c8000d4d6172734e5450314e545032525450200000042a0000e930");
            let mut first = Vec::new();
            for i in 0..3 {
                let mut buf = plain.clone();
                buf.resize(plain.len() + MAX_OVERHEAD, 0);
                let n = tx.protect_rtcp(&mut buf, plain.len()).expect("protect");
                buf.truncate(n);
                if i == 0 {
                    first = buf.clone();
                }
                let n = rx.unprotect_rtcp(&mut buf).expect("unprotect");
                assert_eq!(&buf[..n], &plain[..]);
            }
            assert_eq!(rx.unprotect_rtcp(&mut first), Err(Error::Replayed));
        }
    }

    /// The journal at `path`, opened as a (re)started data plane would.
    fn journal(path: &std::path::Path) -> std::sync::Arc<crate::journal::Journal> {
        std::sync::Arc::new(crate::journal::Journal::open(path, 4).expect("journal").0)
    }

    /// Issue 9: a context created again for a static key (data-plane restart) must never
    /// protect under an index the first one used, and must keep the receiver's ROC.
    #[test]
    fn resumed_context_never_reuses_an_index_and_keeps_the_roc() {
        for p in PROFILES {
            let path = std::env::temp_dir().join(format!(
                "swy-srtp-j-{}-{}",
                p.name(),
                std::process::id()
            ));
            let _ = std::fs::remove_file(&path);
            let j = journal(&path);
            let m = master(p, 9);
            let (mut tx, mut rx) = (
                Context::new(p, &m).expect("tx"),
                Context::new(p, &m).expect("rx"),
            );
            tx.resume(j.take(1, 5).expect("tx slot").0);
            rx.resume(j.take(2, 5).expect("rx slot").0);
            let sr = unhex("81c8000d4d6172734e5450314e545032525450200000042a0000e930");
            let index = |pkt: &[u8]| -> u32 {
                let at = match p {
                    Profile::AesCm128HmacSha1_80 => pkt.len() - 10 - 4,
                    Profile::AeadAes128Gcm => pkt.len() - 4,
                };
                u32::from_be_bytes(pkt[at..at + 4].try_into().expect("4")) & SRTCP_INDEX_MASK
            };
            let mut before = Vec::new();
            for i in 0..3 {
                let mut b = sr.clone();
                b.resize(sr.len() + MAX_OVERHEAD, 0);
                let n = tx.protect_rtcp(&mut b, sr.len()).expect("rtcp");
                b.truncate(n);
                assert_eq!(index(&b), i);
                before.push(b);
            }
            // Through a sequence wrap: ROC 1 on both sides.
            for seq in 65_530..65_536u32 + 10 {
                let mut b = protect(&mut tx, &rtp(0x77, seq as u16, 20));
                rx.unprotect_rtp(&mut b).expect("before the restart");
            }
            let old = protect(&mut tx, &rtp(0x77, 12, 20));
            rx.unprotect_rtp(&mut old.clone()).expect("seq 12, ROC 1");
            drop((tx, rx, j));

            // The restart: a new process maps the journal; the same keys, new contexts.
            let j = journal(&path);
            let (mut tx, mut rx) = (
                Context::new(p, &m).expect("tx"),
                Context::new(p, &m).expect("rx"),
            );
            tx.resume(j.take(1, 5).expect("tx again").0);
            rx.resume(j.take(2, 5).expect("rx again").0);
            let mut b = sr.clone();
            b.resize(sr.len() + MAX_OVERHEAD, 0);
            let n = tx.protect_rtcp(&mut b, sr.len()).expect("rtcp after");
            assert_eq!(index(&b[..n]), 3, "SRTCP continues after 0, 1, 2");
            assert!(before.iter().all(|o| index(o) < 3));
            // An index at or below the last one used is refused, not sent.
            let mut plain = rtp(0x77, 12, 20);
            let len = plain.len();
            plain.resize(len + MAX_OVERHEAD, 0);
            assert_eq!(tx.protect_rtp(&mut plain, len), Err(Error::IndexReused));
            assert_eq!(tx.sent_floor(0x77), Some((1 << 16) | 12));
            // The receiver kept ROC 1 and refuses the old packet.
            assert_eq!(rx.unprotect_rtp(&mut old.clone()), Err(Error::Replayed));
            let mut next = protect(&mut tx, &rtp(0x77, 13, 20));
            rx.unprotect_rtp(&mut next)
                .expect("ROC 1 continues across the restart");
            std::fs::remove_file(&path).ok();
        }
    }

    #[test]
    fn too_many_ssrcs_and_small_buffers() {
        for p in PROFILES {
            let (mut tx, _) = pair(p);
            for ssrc in 0..MAX_SSRCS as u32 {
                protect(&mut tx, &rtp(ssrc, 1, 10));
            }
            let mut buf = rtp(999, 1, 10);
            let len = buf.len();
            buf.resize(len + MAX_OVERHEAD, 0);
            assert_eq!(tx.protect_rtp(&mut buf, len), Err(Error::TooManySsrcs));
            let (mut tx, _) = pair(p);
            assert_eq!(
                tx.protect_rtp(&mut buf[..len + 9], len),
                Err(Error::BufferTooSmall)
            );
            assert_eq!(tx.protect_rtp(&mut buf, 1000), Err(Error::BufferTooSmall));
            assert_eq!(tx.protect_rtp(&mut buf, 5), Err(Error::TooShort));
        }
    }
}

//! SDP `a=fingerprint` values (RFC 8122 §5): a hash function name and the certificate's
//! digest as colon-separated hex.

use ring::digest;

use super::DtlsError;

/// A parsed `a=fingerprint`: the algorithm and the digest bytes it expects.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    alg: &'static digest::Algorithm,
    digest: Vec<u8>,
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", format(self.alg, &self.digest))
    }
}

/// sha-1 is allowed by RFC 8122 but not by RFC 8827 (WebRTC security architecture), and no
/// browser sends it, so it is refused rather than carried as a weaker option.
fn algorithm(name: &str) -> Option<&'static digest::Algorithm> {
    match name.to_ascii_lowercase().as_str() {
        "sha-256" => Some(&digest::SHA256),
        "sha-384" => Some(&digest::SHA384),
        "sha-512" => Some(&digest::SHA512),
        _ => None,
    }
}

fn name(alg: &'static digest::Algorithm) -> &'static str {
    if alg == &digest::SHA384 {
        "sha-384"
    } else if alg == &digest::SHA512 {
        "sha-512"
    } else {
        "sha-256"
    }
}

fn format(alg: &'static digest::Algorithm, digest: &[u8]) -> String {
    let hex: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    format!("{} {}", name(alg), hex.join(":"))
}

/// The sha-256 fingerprint of a DER certificate, as our SDP answer states it.
pub(crate) fn sha256_of(der: &[u8]) -> String {
    format(
        &digest::SHA256,
        digest::digest(&digest::SHA256, der).as_ref(),
    )
}

impl Fingerprint {
    /// Parse `"sha-256 AB:CD:..."` (algorithm case-insensitive, hex either case).
    pub(crate) fn parse(s: &str) -> Result<Self, DtlsError> {
        let bad = || DtlsError::Fingerprint(s.chars().take(200).collect());
        let mut parts = s.split_ascii_whitespace();
        let (Some(alg), Some(hex), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let alg = algorithm(alg).ok_or_else(bad)?;
        let digest = hex
            .split(':')
            .map(|b| {
                if b.len() == 2 {
                    u8::from_str_radix(b, 16).ok()
                } else {
                    None
                }
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(bad)?;
        if digest.len() != alg.output_len() {
            return Err(bad());
        }
        Ok(Self { alg, digest })
    }

    /// Whether `der` (the peer's end-entity certificate) hashes to this fingerprint.
    pub(crate) fn matches(&self, der: &[u8]) -> bool {
        digest::digest(self.alg, der).as_ref() == self.digest.as_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        let der = b"not really a certificate";
        let fp = sha256_of(der);
        assert!(fp.starts_with("sha-256 "));
        assert_eq!(fp.len(), "sha-256 ".len() + 32 * 3 - 1);
        let parsed = Fingerprint::parse(&fp).unwrap();
        assert!(parsed.matches(der));
        assert!(!parsed.matches(b"another certificate"));
        // Browsers differ in case; both must parse to the same digest.
        let lower = Fingerprint::parse(&fp.to_ascii_lowercase().replace("sha-256", "SHA-256"));
        assert_eq!(lower.unwrap(), parsed);
    }

    #[test]
    fn rejects_malformed() {
        let ok = sha256_of(b"x");
        let hex = ok.split_once(' ').unwrap().1;
        for bad in [
            String::new(),
            "sha-256".into(),
            format!("sha-1 {hex}"),
            format!("md5 {hex}"),
            format!("sha-256 {}", &hex[3..]),
            format!("sha-256 {hex}:00"),
            format!("sha-256 {}", hex.replace(':', "")),
            format!(
                "sha-256 {}",
                hex.replacen("A", "G", 1).replacen("0", "G", 1)
            ),
            format!("sha-256 {hex} extra"),
            format!("sha-384 {hex}"),
        ] {
            assert!(Fingerprint::parse(&bad).is_err(), "{bad:?} parsed");
        }
    }
}

//! Regions: where a client is by its address (`[[cluster.region_map]]`), an IP prefix to
//! region table. The node's own region is `cluster.region`; docs/cluster.md, "Regions".

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IP prefix: `10.1.0.0/16`, `2001:db8::/32`; an address alone is a /32 (or /128).
/// Host bits must be zero (`10.1.2.3/16` is refused: it is more likely a typo than meant).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

impl Cidr {
    /// Whether `ip` lies in this prefix. An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what
    /// a dual-stack listener sees) counts as the IPv4 address it maps.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(ip) & mask == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(ip) & mask == u128::from(net)
            }
            _ => false,
        }
    }

    /// The prefix length in bits.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether this is `0.0.0.0/0` or `::/0`: every address of its family.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: an IP prefix like 10.1.0.0/16 or 2001:db8::/32");
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) => l.parse::<u8>().ok().filter(|&l| l <= max).ok_or_else(bad)?,
            None => max,
        };
        // `contains` masks the address it is given, not the network: that must be masked.
        let masked = match net {
            IpAddr::V4(n) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::V4((u32::from(n) & mask).into())
            }
            IpAddr::V6(n) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6((u128::from(n) & mask).into())
            }
        };
        if masked != net {
            return Err(format!("{s:?}: host bits set after the /{len}"));
        }
        Ok(Cidr { net, len })
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.len)
    }
}

/// `[[cluster.region_map]] cidr = "10.1.0.0/16"`, `region = "eu-west"`: clients whose
/// address lies in `cidr` are in `region`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionRule {
    pub cidr: Cidr,
    pub region: String,
}

/// The region of a client at `ip` by `map`: the rule with the longest prefix that holds it
/// (the first of equals), None when no rule does.
pub fn region_of(map: &[RegionRule], ip: IpAddr) -> Option<&str> {
    let mut best: Option<&RegionRule> = None;
    for r in map.iter().filter(|r| r.cidr.contains(ip)) {
        if best.is_none_or(|b| r.cidr.len() > b.cidr.len()) {
            best = Some(r);
        }
    }
    best.map(|r| r.region.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(cidr: &str, region: &str) -> RegionRule {
        RegionRule {
            cidr: cidr.parse().expect("cidr"),
            region: region.into(),
        }
    }

    #[test]
    fn prefixes_parse_and_match() {
        let c: Cidr = "10.1.0.0/16".parse().expect("v4");
        assert!(c.contains("10.1.200.3".parse().expect("ip")));
        assert!(!c.contains("10.2.0.1".parse().expect("ip")));
        assert!(c.contains("::ffff:10.1.0.9".parse().expect("mapped")));
        assert!(!c.contains("2001:db8::1".parse().expect("v6")));
        let all: Cidr = "0.0.0.0/0".parse().expect("all");
        assert!(all.contains("192.0.2.1".parse().expect("ip")) && all.is_empty());
        let one: Cidr = "192.0.2.7".parse().expect("host");
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains("192.0.2.7".parse().expect("ip")));
        assert!(!one.contains("192.0.2.8".parse().expect("ip")));
        let v6: Cidr = "2001:db8::/32".parse().expect("v6");
        assert!(v6.contains("2001:db8:ffff::1".parse().expect("ip")));
        assert!(!v6.contains("2001:db9::1".parse().expect("ip")));
        for bad in [
            "10.1.2.3/16",
            "10.0.0.0/33",
            "10.0.0.0/",
            "eu",
            "2001:db8::1/32",
            "",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_longest_prefix_wins() {
        let map = [
            rule("10.0.0.0/8", "eu"),
            rule("10.9.0.0/16", "us"),
            rule("2001:db8::/32", "ap"),
        ];
        let of = |ip: &str| region_of(&map, ip.parse().expect("ip"));
        assert_eq!(of("10.1.0.1"), Some("eu"));
        assert_eq!(of("10.9.3.4"), Some("us"));
        assert_eq!(of("2001:db8::5"), Some("ap"));
        assert_eq!(of("192.0.2.1"), None);
    }

    #[test]
    fn rules_read_from_toml() {
        #[derive(Deserialize)]
        struct T {
            region_map: Vec<RegionRule>,
        }
        let t: T = toml::from_str("[[region_map]]\ncidr = \"10.1.0.0/16\"\nregion = \"eu\"\n")
            .expect("toml");
        assert_eq!(t.region_map, [rule("10.1.0.0/16", "eu")]);
        assert!(
            toml::from_str::<T>("[[region_map]]\ncidr = \"10.1.0.1/16\"\nregion = \"eu\"\n")
                .is_err()
        );
    }
}

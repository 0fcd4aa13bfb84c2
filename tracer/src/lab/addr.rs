//! Addresses as the lab writes them: IPv4 prefixes and MACs, parsed from
//! and printed as the strings `ip` uses, and serialized the same way.

use std::{fmt, net::Ipv4Addr, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::plan::PlanError;

/// An IPv4 prefix such as `192.168.0.0/16` (serialized as that string).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// Network address.
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// A prefix; host bits of `addr` are kept as given.
    pub const fn new(addr: Ipv4Addr, prefix: u8) -> Self {
        Self { addr, prefix }
    }

    /// A /32 for one address.
    pub const fn host(addr: Ipv4Addr) -> Self {
        Self::new(addr, 32)
    }

    fn mask(self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    /// The network address (host bits cleared).
    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// Whether `ip` is inside.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }

    /// Whether the two prefixes share any address.
    pub fn overlaps(self, other: Self) -> bool {
        let shorter = if self.prefix < other.prefix {
            self
        } else {
            other
        };
        shorter.contains(self.addr) && shorter.contains(other.addr)
    }

    /// The network address plus `offset`.
    pub fn nth(self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) + offset)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = PlanError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PlanError::BadCidr(s.to_owned());
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr = addr.parse().map_err(|_| bad())?;
        let prefix = prefix.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        Ok(Self { addr, prefix })
    }
}

/// An Ethernet address (serialized as `02:ec:2a:01:00:00`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(|| format!("bad MAC {s}"))?;
            *byte = u8::from_str_radix(part, 16).map_err(|_| format!("bad MAC {s}"))?;
        }
        if parts.next().is_some() {
            return Err(format!("bad MAC {s}"));
        }
        Ok(Self(mac))
    }
}

/// Serde as the Display/FromStr string.
macro_rules! serde_as_string {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_as_string!(Cidr);
serde_as_string!(Mac);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_prints_and_contains() {
        let c: Cidr = "192.168.7.9/16".parse().unwrap();
        assert_eq!(c.to_string(), "192.168.0.0/16");
        assert!(c.contains(Ipv4Addr::new(192, 168, 255, 1)));
        assert!(!c.contains(Ipv4Addr::new(192, 169, 0, 1)));
        assert!(c.overlaps("192.168.3.0/24".parse().unwrap()));
        assert!(!c.overlaps("10.0.0.0/8".parse().unwrap()));
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .unwrap()
                .contains(Ipv4Addr::BROADCAST)
        );
        for bad in ["192.168.0.0", "192.168.0.0/33", "x/8", "1.2.3/8"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mac_round_trips_through_json() {
        let mac = Mac([0x02, 0xec, 0x2a, 1, 0, 0xff]);
        let json = serde_json::to_string(&mac).unwrap();
        assert_eq!(json, "\"02:ec:2a:01:00:ff\"");
        assert_eq!(serde_json::from_str::<Mac>(&json).unwrap(), mac);
        assert!("02:ec:2a:01:00".parse::<Mac>().is_err());
        assert!("02:ec:2a:01:00:ff:00".parse::<Mac>().is_err());
    }
}

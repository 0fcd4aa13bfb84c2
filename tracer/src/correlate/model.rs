//! The vocabulary of the engine's records: places (hooked interfaces),
//! tuples and hops. Plain data with `serde::Serialize` for `--json`.
//! Journeys live in [`super::journey_model`], flows in [`super::flow_model`].

use std::{fmt, net::Ipv4Addr, ops::Deref, sync::Arc};

use serde::{Serialize, Serializer};
use tracer_common::Direction;

/// A value shared between many hops and flows without copying it: cloning
/// is a reference-count increment, so the hot path does not allocate.
/// Serializes as the value itself.
#[derive(Debug, PartialEq, Eq)]
pub struct Shared<T: ?Sized>(pub Arc<T>);

impl<T: ?Sized> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T: ?Sized> Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: ?Sized + Serialize> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (*self.0).serialize(s)
    }
}

/// Direction of a hook, serializable (`"ingress"` / `"egress"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    /// The packet arrived on the interface.
    #[default]
    Ingress,
    /// The packet left through the interface.
    Egress,
}

impl From<Direction> for Dir {
    fn from(d: Direction) -> Self {
        match d {
            Direction::Ingress => Self::Ingress,
            Direction::Egress => Self::Egress,
        }
    }
}

impl fmt::Display for Dir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        })
    }
}

/// What an interface is in the VPC CNI data path (a serializable copy of
/// [`crate::topology::Role`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PlaceRole {
    /// Host side of a pod's veth.
    PodVeth {
        /// The pod's IP.
        pod_ip: Option<Ipv4Addr>,
        /// The pod's name (`namespace/name`).
        pod: Option<String>,
    },
    /// An ENI.
    Eni {
        /// Device index (ens5 = 0).
        index: Option<u32>,
        /// Primary IPv4 address.
        primary_ip: Option<Ipv4Addr>,
    },
    /// A pod's own `eth0`.
    PodEth0,
    /// Something else the topology knows.
    Other,
    /// A hook the topology does not know.
    Unknown,
}

impl fmt::Display for PlaceRole {
    /// Same wording as [`crate::topology::Role`]: `pod veth of pod-1`, `ENI 0 (primary)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PodVeth { pod: Some(p), .. } => write!(f, "pod veth of {}", short_pod(p)),
            Self::PodVeth {
                pod_ip: Some(ip), ..
            } => write!(f, "pod veth of {ip}"),
            Self::PodVeth { .. } => f.write_str("pod veth"),
            Self::Eni { index: Some(0), .. } => f.write_str("ENI 0 (primary)"),
            Self::Eni { index: Some(i), .. } => write!(f, "ENI {i}"),
            Self::Eni { index: None, .. } => f.write_str("interface"),
            Self::PodEth0 => f.write_str("pod eth0"),
            Self::Other => f.write_str("other"),
            Self::Unknown => f.write_str("unknown"),
        }
    }
}

/// `pod-1` out of `default/pod-1`.
pub fn short_pod(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// One hooked interface of one node: where a hop happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Place {
    /// Node (or namespace) name shown to users.
    pub node: String,
    /// Interface name.
    pub iface: String,
    /// What the interface is.
    pub role: PlaceRole,
    /// Kernel netns cookie of the hook.
    pub netns_cookie: u64,
    /// Interface index in that netns.
    pub ifindex: u32,
}

impl Place {
    /// True for an ENI.
    pub fn is_eni(&self) -> bool {
        matches!(self.role, PlaceRole::Eni { .. })
    }

    /// True for a pod veth (host side).
    pub fn is_pod_veth(&self) -> bool {
        matches!(self.role, PlaceRole::PodVeth { .. })
    }

    /// The pod's name, for a pod veth that has one.
    pub fn pod(&self) -> Option<&str> {
        match &self.role {
            PlaceRole::PodVeth { pod, .. } => pod.as_deref(),
            _ => None,
        }
    }
}

/// Addresses and ports of a packet as seen at one hop. For ICMP echo
/// the echo id plays the port of the side that sent the
/// request, as in conntrack: a request is `sport = id, dport = 0`, a reply
/// `sport = 0, dport = id`; other ICMP has both ports 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Tuple {
    /// IP protocol number.
    pub proto: u8,
    /// Source address.
    pub src: Ipv4Addr,
    /// Source port (or ICMP id of a request).
    pub sport: u16,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Destination port (or ICMP id of a reply).
    pub dport: u16,
}

impl Default for Tuple {
    fn default() -> Self {
        Self {
            proto: 0,
            src: Ipv4Addr::UNSPECIFIED,
            sport: 0,
            dst: Ipv4Addr::UNSPECIFIED,
            dport: 0,
        }
    }
}

impl Tuple {
    /// The same conversation seen from the other side.
    pub fn reversed(&self) -> Self {
        Self {
            proto: self.proto,
            src: self.dst,
            sport: self.dport,
            dst: self.src,
            dport: self.sport,
        }
    }

    /// True if the source (address or port/id) differs from `other`'s.
    pub fn src_differs(&self, other: &Self) -> bool {
        (self.src, self.sport) != (other.src, other.sport)
    }

    /// True if the destination (address or port/id) differs from `other`'s.
    pub fn dst_differs(&self, other: &Self) -> bool {
        (self.dst, self.dport) != (other.dst, other.dport)
    }

    /// Lower-case protocol name (`tcp`, `udp`, `icmp`, or the number).
    pub fn proto_name(&self) -> ProtoName {
        ProtoName(self.proto)
    }
}

impl fmt::Display for Tuple {
    /// tcpdump style: `10.0.0.1.40000 > 10.0.0.2.80`, ICMP without ids.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.proto {
            6 | 17 => write!(
                f,
                "{}.{} > {}.{}",
                self.src, self.sport, self.dst, self.dport
            ),
            _ => write!(f, "{} > {}", self.src, self.dst),
        }
    }
}

/// Display helper for a protocol number.
#[derive(Clone, Copy, Debug)]
pub struct ProtoName(pub u8);

impl fmt::Display for ProtoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            1 => f.pad("icmp"),
            6 => f.pad("tcp"),
            17 => f.pad("udp"),
            p => write!(f, "proto {p}"),
        }
    }
}

/// One packet seen at one hook, as part of a journey.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hop {
    /// Where (node, interface, role).
    #[serde(flatten)]
    pub place: Shared<Place>,
    /// Which direction of the interface.
    pub dir: Dir,
    /// Kernel time, ns (`CLOCK_MONOTONIC`).
    pub ts_ns: u64,
    /// Time since the journey's first hop, ns.
    pub since_first_ns: u64,
    /// Addresses and ports as seen here.
    pub tuple: Tuple,
    /// IP TTL as seen here (routing decrements it).
    pub ttl: u8,
}

//! What each hooked interface is: a pod veth, an ENI, or something else.
//! Filled from netlink (routes, addresses, links) at the edges; consumed
//! by the pure printers and the correlation engine.

use std::{collections::HashMap, fmt, net::Ipv4Addr};

use crate::decode::HookId;

/// The role of an interface in the VPC CNI data path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Host side of a pod's veth (`eni...`): the target of a per-pod /32
    /// host route, or a veth whose peer lives in another netns.
    PodVeth {
        /// The pod's IP, from the /32 route through this veth.
        pod_ip: Option<Ipv4Addr>,
        /// The pod's name (namespace/name), when a pod source knows it.
        pod: Option<String>,
    },
    /// An ENI: an interface holding a VPC address that is not a pod veth.
    Eni {
        /// Device index (ens5 = 0, ens6 = 1, ...), when known.
        index: Option<u32>,
        /// Its IPv4 addresses, primary first.
        addrs: Vec<Ipv4Addr>,
    },
    /// A pod's own `eth0` (seen from inside the pod's netns).
    PodEth0,
    /// Anything else (loopback, bridges, ...).
    Other,
}

impl fmt::Display for Role {
    /// Short label: `pod veth of pod-1`, `ENI 0 (primary)`, `other`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PodVeth { pod: Some(p), .. } => {
                write!(f, "pod veth of {}", p.rsplit('/').next().unwrap_or(p))
            }
            Self::PodVeth {
                pod_ip: Some(ip), ..
            } => write!(f, "pod veth of {ip}"),
            Self::PodVeth { .. } => write!(f, "pod veth"),
            Self::Eni { index: Some(0), .. } => write!(f, "ENI 0 (primary)"),
            Self::Eni { index: Some(i), .. } => write!(f, "ENI {i}"),
            Self::Eni { index: None, .. } => write!(f, "interface"),
            Self::PodEth0 => write!(f, "pod eth0"),
            Self::Other => write!(f, "other"),
        }
    }
}

/// One hooked interface (both directions share it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    /// The node or namespace name shown to users (`node-a`, `host`, ...).
    pub node: String,
    /// Interface name in its namespace.
    pub name: String,
    /// Interface index in its namespace.
    pub ifindex: u32,
    /// What it is.
    pub role: Role,
}

/// Everything podtrace knows about hooked interfaces, keyed by
/// (netns cookie, ifindex): unambiguous across namespaces.
#[derive(Clone, Debug, Default)]
pub struct Topology {
    ifaces: HashMap<(u64, u32), Iface>,
}

impl Topology {
    /// Records (or replaces) what the interface `ifindex` of netns `cookie` is.
    pub fn insert(&mut self, netns_cookie: u64, iface: Iface) {
        self.ifaces.insert((netns_cookie, iface.ifindex), iface);
    }

    /// Forgets an interface (it went away).
    pub fn remove(&mut self, netns_cookie: u64, ifindex: u32) -> Option<Iface> {
        self.ifaces.remove(&(netns_cookie, ifindex))
    }

    /// What the hook's interface is, if known.
    pub fn get(&self, hook: &HookId) -> Option<&Iface> {
        self.ifaces.get(&(hook.netns_cookie, hook.ifindex))
    }

    /// All known interfaces.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Iface)> {
        self.ifaces.iter().map(|((c, _), i)| (*c, i))
    }

    /// Who has `ip`: a pod (`pod-1`), or a node's interface (`node-b
    /// ens5`), among the hooked interfaces.
    pub fn who_has(&self, ip: Ipv4Addr) -> Option<String> {
        self.ifaces.values().find_map(|i| match &i.role {
            Role::PodVeth {
                pod_ip: Some(p),
                pod,
            } if *p == ip => Some(pod.as_deref().map_or_else(
                || format!("a pod on {}", i.node),
                |n| crate::correlate::short_pod(n).to_owned(),
            )),
            Role::Eni { addrs, .. } if addrs.contains(&ip) => {
                Some(format!("{} {}", i.node, i.name))
            }
            _ => None,
        })
    }

    /// Names a pod veth's pod, by its IP (from a pod source).
    pub fn name_pods(&mut self, name_of: impl Fn(Ipv4Addr) -> Option<String>) {
        for iface in self.ifaces.values_mut() {
            if let Role::PodVeth {
                pod_ip: Some(ip),
                pod,
            } = &mut iface.role
            {
                *pod = name_of(*ip);
            }
        }
    }
}

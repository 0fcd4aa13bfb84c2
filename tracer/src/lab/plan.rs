//! The lab's address plan and names: pure data, no I/O. `up` builds exactly
//! this, `down` removes what these names name (also after a crashed `up`),
//! and the inventory at `/run/podtrace/lab.json` carries it so that pod
//! names resolve offline.
//!
//! Layout (default VPC CIDR 192.168.0.0/16):
//!
//! | what                | netns               | addresses                            |
//! |---------------------|---------------------|--------------------------------------|
//! | VPC router, fabric  | `vpc`               | bridges `subnet-a` .1.1, `subnet-b` .2.1 |
//! | node-a (subnet-a)   | `node-a`            | ens5 .1.10 (+.1.11-13), ens6 .1.20 (+.1.21-23) |
//! | node-b (subnet-b)   | `node-b`            | ens5 .2.10 (+.2.11-13), ens6 .2.20 (+.2.21-23) |
//! | pods                | `lab-default-pod-N` | pod-1 .1.11 (a/ens5), pod-2 .1.21 (a/ens6), pod-3 .2.11 (b/ens5), pod-4 .2.21 (b/ens6) |
//! | NLB (IP targets)    | `nlb`               | .100.10, gateway .100.1              |
//! | internet host       | `internet`          | 203.0.113.10, gateway 203.0.113.1    |
//!
//! The two nodes sit in different subnets (think: two availability zones),
//! so node-to-node traffic always crosses the VPC router, whose /32 routes
//! say which ENI owns each secondary IP: that is how a real VPC delivers
//! to the right ENI, without proxy-ARP guesses.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use sha1::{Digest as _, Sha1};

pub use super::addr::{Cidr, Mac};

/// The VPC CIDR when none is given.
pub const DEFAULT_VPC_CIDR: Cidr = Cidr::new(Ipv4Addr::new(192, 168, 0, 0), 16);
/// The VPC router/fabric namespace.
pub const VPC_NETNS: &str = "vpc";
/// The "internet" host's namespace.
pub const INTERNET_NETNS: &str = "internet";
/// The NLB's namespace.
pub const NLB_NETNS: &str = "nlb";
/// Every pod namespace starts with this, so `down` finds pods it does not
/// know about (from an older or crashed lab) by name alone.
pub const POD_NETNS_PREFIX: &str = "lab-";
/// The nodes, in order.
pub const NODE_NAMES: [&str; 2] = ["node-a", "node-b"];
/// Where the CNI points every pod's default route.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The mark the CNI's connmark rules and the priority-1024 rule use.
pub const PRIMARY_ENI_MARK: u32 = 0x80;
/// kube-proxy's service range in this lab (outside every VPC CIDR allowed).
pub const SERVICE_CIDR: Cidr = Cidr::new(Ipv4Addr::new(10, 100, 0, 0), 16);
/// TEST-NET-3: the "internet" the lab talks to.
pub const INTERNET_CIDR: Cidr = Cidr::new(Ipv4Addr::new(203, 0, 113, 0), 24);
/// Where the whoami service appends one line per connection it accepts.
pub const PEERS_LOG: &str = "/run/podtrace/lab-peers.log";
/// Port of the whoami service on every pod (the service's targetPort).
pub const POD_PORT: u16 = 8080;
/// Port of the whoami service on the internet host, and the service port.
pub const WEB_PORT: u16 = 80;

/// Address plan problems, from `--vpc-cidr`.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Not `a.b.c.d/n`.
    #[error("\"{0}\" is not an IPv4 CIDR such as 192.168.0.0/16")]
    BadCidr(String),
    /// An address inside the range rather than the range's own.
    #[error("VPC CIDR {given} has host bits set: did you mean {network}?")]
    HostBits {
        /// What was asked for, as typed.
        given: String,
        /// The range it lies in.
        network: Cidr,
    },
    /// Fewer than the /16 the plan carves subnets out of.
    #[error("VPC CIDR {0} is too small: the lab needs a /16 or larger")]
    TooSmall(Cidr),
    /// Clashes with a range the lab uses for something else.
    #[error("VPC CIDR {vpc} overlaps the lab's {what} {other}")]
    Overlap {
        /// The VPC CIDR asked for.
        vpc: Cidr,
        /// What the other range is for.
        what: &'static str,
        /// The other range.
        other: Cidr,
    },
}

/// The host-side veth name the VPC CNI gives a pod: `eni` + the first 11
/// hex digits of sha1("<namespace>.<pod>"), 14 characters.
pub fn host_veth_name(namespace: &str, pod: &str) -> String {
    let digest = Sha1::digest(format!("{namespace}.{pod}"));
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("eni{}", &hex[..11])
}

/// The whole lab.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The VPC CIDR (SNAT is skipped for destinations inside it).
    pub vpc_cidr: Cidr,
    /// The router/fabric namespace.
    pub vpc_netns: String,
    /// Worker nodes.
    pub nodes: Vec<NodePlan>,
    /// Pods, on both nodes.
    pub pods: Vec<PodPlan>,
    /// The "internet" host, reachable only through the VPC router (IGW).
    pub internet: HostPlan,
    /// The NLB, in IP target mode: it reaches pod IPs directly.
    pub nlb: HostPlan,
    /// The ClusterIP service kube-proxy DNATs on every node.
    pub service: ServicePlan,
    /// Where the whoami service logs `<who> <peer ip>:<port>` per connection.
    pub peers_log: String,
}

/// A worker node: one netns, ENIs on one subnet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    /// `node-a`, as `spec.nodeName` says.
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its subnet (all its ENIs and pods take addresses from it).
    pub subnet: Cidr,
    /// The subnet's gateway (the VPC router, `.1`).
    pub gateway: Ipv4Addr,
    /// The bridge in the `vpc` netns that is this subnet's fabric.
    pub bridge: String,
    /// The bridge's MAC (the gateway's MAC as the node sees it).
    pub bridge_mac: Mac,
    /// ENIs, device index order (`ens5` first).
    pub enis: Vec<EniPlan>,
}

/// An ENI: a veth whose other end is a port of the subnet bridge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniPlan {
    /// `ens5`, `ens6`.
    pub name: String,
    /// Device index: 0 for the primary ENI.
    pub index: u32,
    /// Its MAC.
    pub mac: Mac,
    /// Its primary private IP (on the interface, in the subnet).
    pub primary_ip: Ipv4Addr,
    /// Secondary IPs: not on any interface, handed to pods.
    pub secondary_ips: Vec<Ipv4Addr>,
    /// The veth end in the `vpc` netns (a bridge port).
    pub fabric_port: String,
    /// That end's MAC.
    pub fabric_mac: Mac,
}

impl EniPlan {
    /// The CNI's route table for pods on this ENI: device index + 1, none
    /// for the primary ENI (its pods use the main table).
    pub fn route_table(&self) -> Option<u32> {
        (self.index > 0).then_some(self.index + 1)
    }
}

/// A pod, wired as the CNI wires it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPlan {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Node it runs on.
    pub node: String,
    /// ENI whose secondary IP it has.
    pub eni: String,
    /// That ENI's device index.
    pub eni_index: u32,
    /// Pod IP (a /32 on its `eth0`).
    pub ip: Ipv4Addr,
    /// Its network namespace.
    pub netns: String,
    /// Host side of its veth, in the node netns.
    pub host_veth: String,
    /// That veth's MAC (the pod's permanent neighbour for 169.254.1.1).
    pub host_veth_mac: Mac,
    /// Its `eth0` MAC.
    pub eth0_mac: Mac,
    /// The whoami service port inside the pod.
    pub port: u16,
}

impl PodPlan {
    /// `namespace/name`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A single-homed host on the fabric (internet host, NLB).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPlan {
    /// Its network namespace; its interface there is `eth0`.
    pub netns: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Prefix length of its link.
    pub prefix: u8,
    /// The VPC router's address on that link.
    pub gateway: Ipv4Addr,
    /// The router-side veth in the `vpc` netns.
    pub fabric_port: String,
    /// MAC of its `eth0`.
    pub mac: Mac,
    /// MAC of the router side.
    pub fabric_mac: Mac,
    /// The whoami service port, if it runs one.
    pub port: Option<u16>,
}

/// A ClusterIP service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePlan {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// Cluster IP.
    pub ip: Ipv4Addr,
    /// Service port (TCP).
    pub port: u16,
    /// Port on the backend pods.
    pub target_port: u16,
    /// Backend pod names (same namespace).
    pub backends: Vec<String>,
}

impl Default for Plan {
    fn default() -> Self {
        Self::new(DEFAULT_VPC_CIDR).expect("the default VPC CIDR fits the plan")
    }
}

impl Plan {
    /// The lab for a VPC CIDR of /16 or larger: subnet-a is its `x.x.1.0/24`,
    /// subnet-b `x.x.2.0/24`, the NLB's subnet `x.x.100.0/24`.
    pub fn new(vpc_cidr: Cidr) -> Result<Self, PlanError> {
        if vpc_cidr.addr != vpc_cidr.network() {
            return Err(PlanError::HostBits {
                given: format!("{}/{}", vpc_cidr.addr, vpc_cidr.prefix),
                network: vpc_cidr,
            });
        }
        if vpc_cidr.prefix > 16 {
            return Err(PlanError::TooSmall(vpc_cidr));
        }
        let taken = [
            ("service range", SERVICE_CIDR),
            ("internet range", INTERNET_CIDR),
            (
                "pod gateway range",
                Cidr::new(Ipv4Addr::new(169, 254, 0, 0), 16),
            ),
            ("loopback range", Cidr::new(Ipv4Addr::new(127, 0, 0, 0), 8)),
        ];
        for (what, other) in taken {
            if vpc_cidr.overlaps(other) {
                return Err(PlanError::Overlap {
                    vpc: vpc_cidr,
                    what,
                    other,
                });
            }
        }
        let vpc_cidr = Cidr::new(vpc_cidr.network(), vpc_cidr.prefix);
        let subnet = |third: u8| Cidr::new(vpc_cidr.nth(u32::from(third) << 8), 24);
        let mut nodes = Vec::new();
        let mut pods = Vec::new();
        for (node_no, name) in (1u8..).zip(NODE_NAMES) {
            let subnet = subnet(node_no);
            let enis: Vec<EniPlan> = (0u8..2).map(|i| eni(name, node_no, i, subnet)).collect();
            for eni in &enis {
                let no = u8::try_from(pods.len() + 1).expect("a handful of pods");
                let pod = format!("pod-{no}");
                pods.push(PodPlan {
                    netns: format!("{POD_NETNS_PREFIX}default-{pod}"),
                    host_veth: host_veth_name("default", &pod),
                    namespace: "default".to_owned(),
                    name: pod,
                    node: name.to_owned(),
                    eni: eni.name.clone(),
                    eni_index: eni.index,
                    ip: eni.secondary_ips[0],
                    host_veth_mac: Mac([0x02, 0xee, 0, 0, node_no, no]),
                    eth0_mac: Mac([0x02, 0xef, 0, 0, node_no, no]),
                    port: POD_PORT,
                });
            }
            nodes.push(NodePlan {
                name: name.to_owned(),
                netns: name.to_owned(),
                subnet,
                gateway: subnet.nth(1),
                bridge: format!("subnet-{}", name.trim_start_matches("node-")),
                bridge_mac: Mac([0x02, 0xec, 0x2a, node_no, 0xfe, 0x01]),
                enis,
            });
        }
        let lb = subnet(100);
        Ok(Self {
            vpc_cidr,
            vpc_netns: VPC_NETNS.to_owned(),
            nodes,
            pods,
            internet: HostPlan {
                netns: INTERNET_NETNS.to_owned(),
                ip: INTERNET_CIDR.nth(10),
                prefix: INTERNET_CIDR.prefix,
                gateway: INTERNET_CIDR.nth(1),
                fabric_port: "igw".to_owned(),
                mac: Mac([0x02, 0xec, 0x2a, 0, 0x01, 0x0a]),
                fabric_mac: Mac([0x02, 0xec, 0x2a, 0, 0x01, 0x01]),
                port: Some(WEB_PORT),
            },
            nlb: HostPlan {
                netns: NLB_NETNS.to_owned(),
                ip: lb.nth(10),
                prefix: lb.prefix,
                gateway: lb.nth(1),
                fabric_port: "nlb".to_owned(),
                mac: Mac([0x02, 0xec, 0x2a, 0, 0x02, 0x0a]),
                fabric_mac: Mac([0x02, 0xec, 0x2a, 0, 0x02, 0x01]),
                port: None,
            },
            service: ServicePlan {
                namespace: "default".to_owned(),
                name: "web".to_owned(),
                ip: SERVICE_CIDR.nth(10),
                port: WEB_PORT,
                target_port: POD_PORT,
                // One backend per node, one of them on a secondary ENI.
                backends: vec!["pod-2".to_owned(), "pod-3".to_owned()],
            },
            peers_log: PEERS_LOG.to_owned(),
        })
    }

    /// Every namespace of the lab, in teardown order (pods first, the
    /// fabric last); `up` creates them in the reverse order.
    pub fn netns_names(&self) -> Vec<&str> {
        let pods = self.pods.iter().map(|p| p.netns.as_str());
        let nodes = self.nodes.iter().map(|n| n.netns.as_str());
        pods.chain(nodes)
            .chain([
                self.nlb.netns.as_str(),
                self.internet.netns.as_str(),
                self.vpc_netns.as_str(),
            ])
            .collect()
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// A pod by `name`, `namespace/name` or IP.
    pub fn pod(&self, spec: &str) -> Option<&PodPlan> {
        let ip: Option<Ipv4Addr> = spec.parse().ok();
        self.pods.iter().find(|p| {
            Some(p.ip) == ip
                || p.name == spec
                || spec.split_once('/') == Some((p.namespace.as_str(), p.name.as_str()))
        })
    }

    /// The node and ENI a pod's IP belongs to.
    pub fn pod_eni(&self, pod: &PodPlan) -> Option<(&NodePlan, &EniPlan)> {
        let node = self.node(&pod.node)?;
        Some((node, node.enis.iter().find(|e| e.name == pod.eni)?))
    }

    /// The node and ENI that own `ip` (as primary or secondary IP): what
    /// the VPC knows, and what the router's /32 routes encode.
    pub fn eni_owning(&self, ip: Ipv4Addr) -> Option<(&NodePlan, &EniPlan)> {
        self.nodes.iter().find_map(|n| {
            n.enis
                .iter()
                .find(|e| e.primary_ip == ip || e.secondary_ips.contains(&ip))
                .map(|e| (n, e))
        })
    }

    /// The service's backend pods, in rule order.
    pub fn backends(&self) -> Vec<&PodPlan> {
        let svc = &self.service;
        svc.backends
            .iter()
            .filter_map(|b| self.pod(&format!("{}/{b}", svc.namespace)))
            .collect()
    }
}

/// ENI `index` of node number `node_no`: primary IP `.10` (ens5) or `.20`
/// (ens6), three secondary IPs after it.
fn eni(node: &str, node_no: u8, index: u8, subnet: Cidr) -> EniPlan {
    let base = 10 * (u32::from(index) + 1);
    let name = format!("ens{}", 5 + index);
    EniPlan {
        fabric_port: format!("{node}-{name}"),
        name,
        index: index.into(),
        mac: Mac([0x02, 0xec, 0x2a, node_no, index, 0x00]),
        primary_ip: subnet.nth(base),
        secondary_ips: (1..=3).map(|k| subnet.nth(base + k)).collect(),
        fabric_mac: Mac([0x02, 0xec, 0x2a, node_no, index, 0xff]),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn veth_names_are_the_cnis_sha1_names() {
        // printf default.pod-1 | sha1sum | cut -c1-11
        assert_eq!(host_veth_name("default", "pod-1"), "eni83dbd022cd5");
        assert_eq!(host_veth_name("default", "pod-2"), "enifbd243bfedd");
        assert_eq!(host_veth_name("default", "pod-3"), "eni87081bf6f89");
        assert_eq!(host_veth_name("default", "pod-4"), "enie3c692d4193");
        assert_eq!(host_veth_name("kube-system", "coredns-0").len(), 14);
    }

    #[test]
    fn default_plan_addresses() {
        let plan = Plan::default();
        assert_eq!(plan.vpc_cidr.to_string(), "192.168.0.0/16");
        let a = plan.node("node-a").unwrap();
        assert_eq!(
            (a.subnet.to_string(), a.gateway),
            ("192.168.1.0/24".into(), ip("192.168.1.1"))
        );
        assert_eq!(a.enis[0].name, "ens5");
        assert_eq!(a.enis[0].primary_ip, ip("192.168.1.10"));
        assert_eq!(a.enis[1].name, "ens6");
        assert_eq!(a.enis[1].index, 1);
        assert_eq!(a.enis[1].primary_ip, ip("192.168.1.20"));
        assert_eq!(
            a.enis[1].secondary_ips,
            [ip("192.168.1.21"), ip("192.168.1.22"), ip("192.168.1.23")]
        );
        let b = plan.node("node-b").unwrap();
        assert_eq!(b.enis[0].primary_ip, ip("192.168.2.10"));
        let where_: Vec<_> = plan
            .pods
            .iter()
            .map(|p| (p.name.as_str(), p.node.as_str(), p.eni.as_str(), p.ip))
            .collect();
        assert_eq!(
            where_,
            [
                ("pod-1", "node-a", "ens5", ip("192.168.1.11")),
                ("pod-2", "node-a", "ens6", ip("192.168.1.21")),
                ("pod-3", "node-b", "ens5", ip("192.168.2.11")),
                ("pod-4", "node-b", "ens6", ip("192.168.2.21")),
            ]
        );
        assert_eq!(plan.pods[0].netns, "lab-default-pod-1");
        assert_eq!(plan.internet.ip, ip("203.0.113.10"));
        assert_eq!(plan.nlb.ip, ip("192.168.100.10"));
        assert_eq!(plan.service.ip, ip("10.100.0.10"));
        let backends: Vec<_> = plan.backends().iter().map(|p| p.ip).collect();
        assert_eq!(backends, [ip("192.168.1.21"), ip("192.168.2.11")]);
    }

    #[test]
    fn every_pod_ip_is_a_secondary_ip_of_its_eni_and_nothing_repeats() {
        let plan = Plan::default();
        for pod in &plan.pods {
            let (node, eni) = plan.pod_eni(pod).unwrap();
            assert!(eni.secondary_ips.contains(&pod.ip), "{pod:?}");
            assert!(node.subnet.contains(pod.ip) && plan.vpc_cidr.contains(pod.ip));
            assert_eq!(plan.eni_owning(pod.ip).map(|(_, e)| e), Some(eni));
        }
        for node in &plan.nodes {
            assert!(node.enis.iter().any(|e| e.route_table() == Some(2)));
            let on_ens6 = plan
                .pods
                .iter()
                .filter(|p| p.node == node.name && p.eni_index == 1);
            assert!(on_ens6.count() >= 1, "{} needs a pod on ens6", node.name);
            assert!(plan.pods.iter().filter(|p| p.node == node.name).count() >= 2);
        }
        let mut ips = HashSet::new();
        let mut macs = HashSet::new();
        let mut ifnames = HashSet::new();
        for node in &plan.nodes {
            assert!(ips.insert(node.gateway) && macs.insert(node.bridge_mac));
            assert!(ifnames.insert(node.bridge.clone()));
            for e in &node.enis {
                assert!(ips.insert(e.primary_ip));
                assert!(e.secondary_ips.iter().all(|ip| ips.insert(*ip)));
                assert!(macs.insert(e.mac) && macs.insert(e.fabric_mac));
                assert!(ifnames.insert(e.fabric_port.clone()));
            }
        }
        for h in [&plan.internet, &plan.nlb] {
            assert!(ips.insert(h.ip) && ips.insert(h.gateway));
            assert!(macs.insert(h.mac) && macs.insert(h.fabric_mac));
            assert!(ifnames.insert(h.fabric_port.clone()));
        }
        for p in &plan.pods {
            assert!(macs.insert(p.host_veth_mac) && macs.insert(p.eth0_mac));
            assert!(p.host_veth.len() <= 15);
        }
        assert!(ifnames.iter().all(|n| n.len() <= 15), "{ifnames:?}");
        let netns: HashSet<_> = plan.netns_names().into_iter().collect();
        assert_eq!(netns.len(), plan.pods.len() + plan.nodes.len() + 3);
        assert_eq!(plan.netns_names().last(), Some(&"vpc"));
    }

    #[test]
    fn pods_resolve_by_name_full_name_and_ip() {
        let plan = Plan::default();
        assert_eq!(plan.pod("pod-3").unwrap().ip, ip("192.168.2.11"));
        assert_eq!(plan.pod("default/pod-3").unwrap().name, "pod-3");
        assert_eq!(plan.pod("192.168.1.21").unwrap().name, "pod-2");
        assert_eq!(plan.pod("kube-system/pod-3"), None);
        assert_eq!(plan.pod("pod-9"), None);
    }

    #[test]
    fn other_vpc_cidrs() {
        let plan = Plan::new("10.0.0.0/16".parse().unwrap()).unwrap();
        assert_eq!(plan.pods[3].ip, ip("10.0.2.21"));
        assert_eq!(plan.nlb.ip, ip("10.0.100.10"));
        let plan = Plan::new("172.16.0.0/12".parse().unwrap()).unwrap();
        assert_eq!(plan.pods[0].ip, ip("172.16.1.11"));
        assert!(matches!(
            Plan::new("192.168.0.0/24".parse().unwrap()),
            Err(PlanError::TooSmall(_))
        ));
        let err = Plan::new("10.0.0.0/8".parse().unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "VPC CIDR 10.0.0.0/8 overlaps the lab's service range 10.100.0.0/16"
        );
        let err = Plan::new("10.0.5.0/16".parse().unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "VPC CIDR 10.0.5.0/16 has host bits set: did you mean 10.0.0.0/16?"
        );
    }
}

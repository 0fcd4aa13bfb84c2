//! The flow record: both directions of one conversation, with path, ENIs,
//! rewrites, labels and counters.

use std::{fmt, net::Ipv4Addr};

use serde::{Serialize, Serializer, ser::SerializeSeq};

use super::{
    journey_model::{Incomplete, Rewrite, Side},
    model::{Hop, Place, Shared, Tuple},
};

/// What a flow is, at a glance. See each variant for the exact rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Label {
    /// No address or port changed at any hop of the latest journey in
    /// either direction, and the flow is not an encapsulation protocol
    /// (IPIP, GRE, VXLAN, Geneve).
    Direct,
    /// The request's source changed on its way (or a reply's destination
    /// was restored): SNAT, e.g. pod IP -> node IP by `AWS-SNAT-CHAIN-0`.
    Snat,
    /// The request's destination changed (or a reply's source was
    /// restored): DNAT, e.g. service IP -> backend pod by kube-proxy.
    Dnat,
    /// On some node, the ENIs crossed by the request and those crossed by
    /// the reply (latest journey of each) are both non-empty and differ.
    AsymmetricEni,
    /// The latest journey in at least one direction stopped short of the
    /// hop expected next (see [`Incomplete`]).
    Incomplete,
    /// An ICMP error answered one of its packets: port or host
    /// unreachable, TTL exceeded, fragmentation needed, ... (see
    /// [`Flow::icmp_error`]).
    IcmpError,
    /// The kernel dropped one of its packets on a traced node, and said
    /// why (see [`Flow::drop`]).
    Dropped,
}

impl Label {
    /// Every label, in display order.
    pub const ALL: [Self; 7] = [
        Self::Direct,
        Self::Snat,
        Self::Dnat,
        Self::AsymmetricEni,
        Self::Incomplete,
        Self::IcmpError,
        Self::Dropped,
    ];

    /// The name used in text and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Snat => "snat",
            Self::Dnat => "dnat",
            Self::AsymmetricEni => "asymmetric-eni",
            Self::Incomplete => "incomplete",
            Self::IcmpError => "icmp-error",
            Self::Dropped => "dropped",
        }
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`Label`]s; serializes as a list of names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Labels(u8);

impl Labels {
    /// Adds a label.
    pub fn insert(&mut self, l: Label) {
        self.0 |= l.bit();
    }

    /// True if the set holds `l`.
    pub fn contains(self, l: Label) -> bool {
        self.0 & l.bit() != 0
    }

    /// The labels, in [`Label::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Label> {
        Label::ALL.into_iter().filter(move |l| self.contains(*l))
    }

    /// True if empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl FromIterator<Label> for Labels {
    fn from_iter<I: IntoIterator<Item = Label>>(iter: I) -> Self {
        let mut s = Self::default();
        for l in iter {
            s.insert(l);
        }
        s
    }
}

impl Serialize for Labels {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        for l in self.iter() {
            seq.serialize_element(&l)?;
        }
        seq.end()
    }
}

/// A packet of a flow that the kernel dropped (`kfree_skb` with a reason).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelDrop {
    /// Which way the packet was going.
    pub side: Side,
    /// The kernel's reason (`NETFILTER_DROP`, ...).
    pub reason: String,
    /// Its `enum skb_drop_reason` value.
    pub code: u32,
    /// The kernel code that dropped it.
    pub at: Option<String>,
    /// Traced node (namespace) of the device it was on.
    pub node: Option<String>,
    /// That device, when hooked.
    pub iface: Option<String>,
    /// The packet as it was dropped (`tcp 192.168.1.11:42038 >
    /// 192.168.2.11:8080`): past a DNAT no hook saw, the backend shows
    /// only here.
    pub packet: String,
    /// The same, as the flow's tuples are given (ICMP ids as ports).
    pub tuple: Tuple,
    /// The flow's drops so far, this one included.
    pub packets: u64,
    /// When the kernel dropped it (its clock, ns).
    #[serde(skip)]
    pub ts_ns: u64,
}

/// Exact counters of the kernel for one direction of a flow, taken at the
/// hook where that direction enters the traced path (its first hop).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KernelCounters {
    /// Packets.
    pub packets: u64,
    /// Bytes (`skb->len`).
    pub bytes: u64,
    /// Kernel time of the first packet, ns.
    pub first_ns: u64,
    /// Kernel time of the last packet, ns.
    pub last_ns: u64,
    /// OR of the TCP flags seen.
    pub tcp_flags: u32,
}

/// Time spent between hops of the latest journey in one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Latency {
    /// First hop to last hop, ns.
    pub total_ns: u64,
    /// Pod veth ingress to the next ENI egress on the same node, ns.
    pub veth_to_eni_ns: Option<u64>,
    /// ENI ingress to the next pod veth egress on the same node, ns.
    pub eni_to_veth_ns: Option<u64>,
}

/// One direction of a flow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlowSide {
    /// Journeys seen in this direction.
    pub packets: u64,
    /// Their bytes at their first hop.
    pub bytes: u64,
    /// How many of them were incomplete.
    pub incomplete_packets: u64,
    /// Hops of the latest journey, oldest first.
    pub path: Vec<Hop>,
    /// Rewrites of the latest journey.
    pub rewrites: Vec<Rewrite>,
    /// Set when the latest journey was incomplete: where it was last seen.
    pub incomplete: Option<Incomplete>,
    /// Hop-to-hop times of the latest journey.
    pub latency: Latency,
    /// Exact kernel counters, once merged.
    pub kernel: Option<KernelCounters>,
}

/// An ICMP error about one of a flow's packets: the latest one seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IcmpError {
    /// ICMP type (3 destination unreachable, 11 time exceeded, ...);
    /// `type` in JSON.
    #[serde(rename = "type")]
    pub ty: u8,
    /// ICMP code (for type 3: 0 net, 1 host, 3 port unreachable, 4
    /// fragmentation needed, 10 and 13 administratively prohibited).
    pub code: u8,
    /// What it says, e.g. `port unreachable`.
    pub name: &'static str,
    /// The next hop's MTU, for "fragmentation needed" (type 3 code 4).
    pub mtu: Option<u16>,
    /// Who sent it: its source address at its first hop (the server, a
    /// router, or a node).
    pub from: Ipv4Addr,
    /// The pod veth or ENI that holds `from`, when it is a traced pod or
    /// node (a router's address is none of them).
    pub sender: Option<Shared<Place>>,
    /// The packet it is about, as quoted at its first hop.
    pub quote: Tuple,
    /// podtrace did not see that packet (not traced here, or filtered out): the error is this flow's own
    /// reply, and its path the reply's.
    pub quote_unseen: bool,
    /// The direction of the packets it answered: `request` when the
    /// client's packets were refused on their way or at the server.
    pub answers: Side,
    /// Errors of this type and code seen for this flow (since an error of
    /// another kind, if any).
    pub packets: u64,
    /// Hops of the latest error, oldest first.
    pub path: Vec<Hop>,
    /// Rewrites of the latest error: conntrack undoes the flow's NAT on it
    /// as on a reply (the quoted packet inside it too).
    pub rewrites: Vec<Rewrite>,
}

/// Both directions of one conversation, replies to a NATed request included.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Flow {
    /// Id, stable while the flow lives.
    pub id: FlowId,
    /// The request as the client sent it: its tuple at the client's pod
    /// veth, or at the first hop that saw the request.
    pub tuple: Tuple,
    /// The client pod's veth, when the client is a known pod.
    pub client_pod: Option<Shared<Place>>,
    /// The server pod's veth (after DNAT), when the server is a known pod.
    pub server_pod: Option<Shared<Place>>,
    /// Client to server.
    pub request: FlowSide,
    /// Server to client.
    pub reply: FlowSide,
    /// Where traffic left the flow's home node (the node of the request's
    /// first hop) through an ENI: searched in the request, then the reply.
    pub egress_eni: Option<Shared<Place>>,
    /// Where traffic entered the home node through an ENI: searched in the
    /// reply, then the request.
    pub ingress_eni: Option<Shared<Place>>,
    /// Labels, recomputed after each journey.
    pub labels: Labels,
    /// Conntrack's entry, when the edge attached it.
    pub conntrack: Option<ConntrackInfo>,
    /// The latest ICMP error about one of its packets.
    pub icmp_error: Option<IcmpError>,
    /// The latest packet of the flow the kernel dropped, and why.
    pub drop: Option<KernelDrop>,
    /// A RST in the server's name that was made on the way (a firewall's
    /// `REJECT --reject-with tcp-reset`), in words; see
    /// [`super::format::reset_on_the_way`].
    pub reset_on_the_way: Option<String>,
    /// Kernel time first seen, ns.
    pub first_ns: u64,
    /// Kernel time last seen (journeys or kernel counters), ns.
    pub last_ns: u64,
}

impl Flow {
    /// The rewrites of both directions, request first.
    pub fn rewrites(&self) -> impl Iterator<Item = &Rewrite> {
        self.request.rewrites.iter().chain(&self.reply.rewrites)
    }
}

/// Stable id of a flow while it lives in the engine (1, 2, ...).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct FlowId(pub u64);

impl fmt::Display for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Conntrack's view of a connection, attached by the edge when it can
/// read the table through netlink (the engine leaves it empty).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConntrackInfo {
    /// Conntrack id, if the kernel reported one.
    pub id: Option<u32>,
    /// The original-direction tuple.
    pub original: Tuple,
    /// The reply-direction tuple (NAT shows here).
    pub reply: Tuple,
    /// Connection mark.
    pub mark: u32,
}

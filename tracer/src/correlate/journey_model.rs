//! A journey: one packet followed across every hook that saw it, with the
//! rewrites NAT made on the way and, if it stopped short, where.

use std::fmt;

use serde::Serialize;

use super::{
    flow_model::FlowId,
    model::{Dir, Hop, Place, Shared, Tuple},
};

/// Which NAT rule a rewrite belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NatKind {
    /// Source NAT (e.g. pod IP -> node IP, `AWS-SNAT-CHAIN-0`).
    Snat,
    /// Destination NAT (e.g. service IP -> pod IP, kube-proxy).
    Dnat,
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Snat => "SNAT",
            Self::Dnat => "DNAT",
        })
    }
}

/// An address/port change between two consecutive hops of one journey,
/// named at the hop where it first appears.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rewrite {
    /// The NAT rule it belongs to. On a reply, the reverse translation of
    /// a SNAT changes the destination and that of a DNAT the source.
    pub kind: NatKind,
    /// True when this is the reverse translation applied to a reply.
    pub reverse: bool,
    /// Index in the journey's hops of the hop where it first appears.
    pub hop: usize,
    /// That hop's place.
    pub at: Shared<Place>,
    /// That hop's direction.
    pub dir: Dir,
    /// Tuple at the previous hop.
    pub before: Tuple,
    /// Tuple at this hop.
    pub after: Tuple,
}

/// Which way a journey went in its flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// From the flow's client (initiator) to its server.
    #[default]
    Request,
    /// Back from the server.
    Reply,
}

/// The hop a journey should have reached next, but did not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Expected {
    /// After a pod's `eth0` egress: a pod veth ingress on the same node.
    PodVethIngress {
        /// The node.
        node: String,
    },
    /// After leaving a pod (pod veth ingress), towards an address that is
    /// not the node's own: an ENI egress or another pod veth egress there.
    EniOrPodVethEgress {
        /// The node.
        node: String,
    },
    /// After an ENI egress towards an address owned by another traced node
    /// (one of its ENI or pod addresses): an ENI ingress on that node.
    EniIngress {
        /// The node that owns the destination.
        node: String,
    },
    /// After an ENI ingress towards a pod of this node: that pod's veth egress.
    PodVethEgress {
        /// The pod veth.
        place: Shared<Place>,
    },
}

/// Why a journey stopped short.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Incomplete {
    /// Where the packet was last seen (the journey's last hop).
    pub last_seen: Hop,
    /// What should have come next.
    pub expected: Expected,
}

/// TCP header fields that stay the same at every hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TcpInfo {
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Flags byte.
    pub flags: u8,
}

/// ICMP header fields that stay the same at every hop (not the echo id,
/// which `--random-fully` SNAT rewrites: see each hop's tuple).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct IcmpInfo {
    /// ICMP type (8 echo request, 0 echo reply); `type` in JSON, as in
    /// `capture --json`.
    #[serde(rename = "type")]
    pub ty: u8,
    /// ICMP code.
    pub code: u8,
    /// Echo sequence number.
    pub seq: u16,
}

/// One packet followed across every hook that saw it, in time order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Journey {
    /// The flow it belongs to.
    pub flow: FlowId,
    /// Request or reply, in that flow.
    pub side: Side,
    /// Carries podtrace's probe tag (a `ping` probe or its reply).
    pub probe: bool,
    /// IP protocol.
    pub proto: u8,
    /// IP identification.
    pub ip_id: u16,
    /// IP total length.
    pub ip_len: u16,
    /// Bytes on the wire at the first hop (`skb->len`).
    pub bytes: u32,
    /// TCP fields, for TCP.
    pub tcp: Option<TcpInfo>,
    /// ICMP fields, for ICMP.
    pub icmp: Option<IcmpInfo>,
    /// For an ICMP error: the packet it is about, as quoted at the error's
    /// first hop. When the flow of that packet is known, the error belongs
    /// to it (`flow`), and `side` is the way the error went.
    pub quote: Option<Tuple>,
    /// Kernel time of the first hop, ns.
    pub first_ns: u64,
    /// The hops, oldest first.
    pub hops: Vec<Hop>,
    /// Address changes between hops, in hop order.
    pub rewrites: Vec<Rewrite>,
    /// Set when the packet was not seen at the hop expected after its last one.
    pub incomplete: Option<Incomplete>,
    /// Closed early because the pending table was full: it may lack hops,
    /// and is never judged incomplete.
    pub evicted: bool,
}

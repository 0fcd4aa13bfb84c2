//! Synthetic lab for the engine's tests: two nodes, each with ens5/ens6
//! ENIs and two pod veths, in distinct netns that reuse the same ifindex
//! numbers; and a packet template to show one packet at many hooks.

use std::net::Ipv4Addr;

use tracer_common::{Direction, reason};

use super::{Config, Correlator, EndReason, Flow, FlowId, Journey, Update};
use crate::{
    decode::{HookId, L3, L4, Packet},
    topology::{Iface, Role, Topology},
};

/// Netns cookies of the two nodes.
pub(super) const A: u64 = 0xa0a0;
pub(super) const B: u64 = 0xb0b0;
/// Interface indexes, the same on both nodes.
pub(super) const ENS5: u32 = 2;
pub(super) const ENS6: u32 = 3;
/// pod-1 on node-a, pod-3 on node-b (IPs of ens5).
pub(super) const VETH1: u32 = 10;
/// pod-2 on node-a, pod-4 on node-b (IPs of ens6).
pub(super) const VETH2: u32 = 11;

pub(super) const IN: Direction = Direction::Ingress;
pub(super) const OUT: Direction = Direction::Egress;

pub(super) fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// node-a: ens5 192.168.1.5, ens6 192.168.1.6, pod-1 192.168.1.21 (veth
/// 10), pod-2 192.168.1.31 (veth 11). node-b: the same with 192.168.2.x
/// and pod-3, pod-4.
pub(super) fn lab() -> Topology {
    let mut t = Topology::default();
    for (cookie, node, net, pods) in [
        (A, "node-a", 1, ["pod-1", "pod-2"]),
        (B, "node-b", 2, ["pod-3", "pod-4"]),
    ] {
        let addr = |host| ip(&format!("192.168.{net}.{host}"));
        for (ifindex, name, index, host) in [(ENS5, "ens5", 0, 5), (ENS6, "ens6", 1, 6)] {
            t.insert(
                cookie,
                iface(
                    node,
                    name,
                    ifindex,
                    Role::Eni {
                        index: Some(index),
                        addrs: vec![addr(host)],
                    },
                ),
            );
        }
        for (ifindex, pod, host) in [(VETH1, pods[0], 21), (VETH2, pods[1], 31)] {
            t.insert(
                cookie,
                iface(
                    node,
                    &format!("eni-{pod}"),
                    ifindex,
                    Role::PodVeth {
                        pod_ip: Some(addr(host)),
                        pod: Some(format!("default/{pod}")),
                    },
                ),
            );
        }
    }
    t
}

fn iface(node: &str, name: &str, ifindex: u32, role: Role) -> Iface {
    Iface {
        node: node.into(),
        name: name.into(),
        ifindex,
        role,
    }
}

/// One packet, to be shown at hooks with [`Pkt::at`], its headers
/// rewritten between hops as NAT and routing would.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pkt {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ip_id: u16,
    pub ttl: u8,
    pub proto: u8,
    pub l4: L4,
    pub payload_hash: u64,
    pub probe: bool,
    pub reason: u32,
}

impl Pkt {
    fn new(src: &str, dst: &str, proto: u8, l4: L4) -> Self {
        Self {
            src: ip(src),
            dst: ip(dst),
            ip_id: 1,
            ttl: 64,
            proto,
            l4,
            payload_hash: 0x1234,
            probe: false,
            reason: reason::MATCH,
        }
    }

    pub fn icmp(src: &str, dst: &str, ty: u8, id: u16, seq: u16) -> Self {
        Self::new(
            src,
            dst,
            1,
            L4::Icmp {
                ty,
                code: 0,
                id,
                seq,
            },
        )
    }

    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16, seq: u32, flags: u8) -> Self {
        let l4 = L4::Tcp {
            sport,
            dport,
            seq,
            ack: 0,
            flags,
        };
        Self::new(src, dst, 6, l4)
    }

    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        Self::new(
            src,
            dst,
            17,
            L4::Udp {
                sport,
                dport,
                ulen: 72,
                room: 72,
            },
        )
    }

    pub fn id(mut self, ip_id: u16) -> Self {
        self.ip_id = ip_id;
        self
    }

    pub fn src(mut self, s: &str) -> Self {
        self.src = ip(s);
        self
    }

    pub fn dst(mut self, s: &str) -> Self {
        self.dst = ip(s);
        self
    }

    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the ICMP echo id, or the TCP/UDP source port.
    pub fn sport(mut self, p: u16) -> Self {
        match &mut self.l4 {
            L4::Icmp { id, .. } | L4::Icmp6 { id, .. } => *id = p,
            L4::Tcp { sport, .. } | L4::Udp { sport, .. } => *sport = p,
            L4::IcmpError { .. } | L4::None => {}
        }
        self
    }

    /// Sets the ICMP echo id, or the TCP/UDP destination port.
    pub fn dport(mut self, p: u16) -> Self {
        match &mut self.l4 {
            L4::Icmp { id, .. } | L4::Icmp6 { id, .. } => *id = p,
            L4::Tcp { dport, .. } | L4::Udp { dport, .. } => *dport = p,
            L4::IcmpError { .. } | L4::None => {}
        }
        self
    }

    /// The packet at a hook, at `us` microseconds.
    pub fn at(&self, us: u64, netns_cookie: u64, ifindex: u32, dir: Direction) -> Packet {
        Packet {
            ts_ns: us * 1_000,
            hook: HookId {
                netns_cookie,
                ifindex,
                dir,
            },
            reason: self.reason,
            len: 98,
            cap_len: 98,
            mark: 0,
            l3: L3::Ipv4 {
                src: self.src,
                dst: self.dst,
                id: self.ip_id,
                total_len: 84,
                ttl: self.ttl,
                proto: self.proto,
                frag: 0,
            },
            l4: self.l4,
            payload_hash: self.payload_hash,
            probe: self.probe,
            length: 64,
        }
    }
}

/// Everything an engine reported, cloned.
#[derive(Default, Debug)]
pub(super) struct Seen {
    pub journeys: Vec<Journey>,
    pub flows: Vec<Flow>,
    pub changed: Vec<FlowId>,
    pub ended: Vec<(Flow, EndReason)>,
}

impl Seen {
    pub fn take(&mut self, u: Update<'_>) {
        match u {
            Update::Journey(j) => self.journeys.push(j.clone()),
            Update::Flow(f) => self.flows.push(f.clone()),
            Update::FlowChanged { id } => self.changed.push(id),
            Update::FlowEnded { flow, reason } => self.ended.push((flow.clone(), reason)),
        }
    }

    /// The last reported state of each flow, by id.
    pub fn last_flows(&self) -> Vec<Flow> {
        let mut out: Vec<Flow> = Vec::new();
        for f in &self.flows {
            match out.iter_mut().find(|o| o.id == f.id) {
                Some(o) => *o = f.clone(),
                None => out.push(f.clone()),
            }
        }
        out
    }
}

/// Pushes the packets in the order given, then lets the window pass.
pub(super) fn run(cfg: Config, packets: &[Packet]) -> (Correlator, Seen) {
    let topo = lab();
    let mut eng = Correlator::new(cfg);
    let mut seen = Seen::default();
    for p in packets {
        eng.push(p, &topo, |u| seen.take(u));
    }
    let end = packets.iter().map(|p| p.ts_ns).max().unwrap_or(0);
    eng.advance(end + cfg.window_ns + 1, |u| seen.take(u));
    (eng, seen)
}

/// pod-1 (node-a) pings pod-3 (node-b): routing lowers the TTL at each
/// node, nothing else changes.
pub(super) fn cross_node_ping() -> Vec<Packet> {
    let req = Pkt::icmp("192.168.1.21", "192.168.2.21", 8, 4711, 1).id(100);
    let rep = Pkt::icmp("192.168.2.21", "192.168.1.21", 0, 4711, 1).id(200);
    vec![
        req.at(0, A, VETH1, IN),
        req.ttl(63).at(11, A, ENS5, OUT),
        req.ttl(63).at(34, B, ENS5, IN),
        req.ttl(62).at(41, B, VETH1, OUT),
        rep.at(100, B, VETH1, IN),
        rep.ttl(63).at(110, B, ENS5, OUT),
        rep.ttl(63).at(130, A, ENS5, IN),
        rep.ttl(62).at(140, A, VETH1, OUT),
    ]
}

/// `--random-fully` SNAT to the node's primary IP rewrites the ICMP echo
/// id; the reply comes back to that id and is un-NATed before the veth.
pub(super) fn snat_ping() -> Vec<Packet> {
    let req = Pkt::icmp("192.168.1.21", "203.0.113.10", 8, 4711, 1).id(300);
    let rep = Pkt::icmp("203.0.113.10", "192.168.1.5", 0, 20946, 1).id(9000);
    vec![
        req.at(0, A, VETH1, IN),
        req.src("192.168.1.5")
            .sport(20946)
            .ttl(63)
            .at(15, A, ENS5, OUT),
        rep.at(900, A, ENS5, IN),
        rep.dst("192.168.1.21")
            .dport(4711)
            .ttl(63)
            .at(912, A, VETH1, OUT),
    ]
}

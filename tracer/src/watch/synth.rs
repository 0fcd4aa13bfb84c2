//! Synthetic traffic for the screen's tests and its frame-time benchmark:
//! a two-node VPC CNI topology and packets at each hook, fed through the
//! real correlation engine, so that the flows on screen are the engine's.

use std::net::Ipv4Addr;

use tracer_common::{Direction, reason};

use crate::{
    correlate::{Config, Correlator, Update},
    decode::{HookId, L3, L4, Packet},
    topology::{Iface, Role, Topology},
};

/// Netns cookie of `node-a`.
pub const NODE_A: u64 = 0xa;
/// Netns cookie of `node-b`.
pub const NODE_B: u64 = 0xb;
const ENS5: u32 = 2;
const ENS6: u32 = 3;
/// First pod veth ifindex; pod `k` of a node has `VETH0 + k`.
const VETH0: u32 = 10;
/// Kernel time of the first packet, ns (1000 s after boot).
pub const T0_NS: u64 = 1_000_000_000_000;
const IN: Direction = Direction::Ingress;
const OUT: Direction = Direction::Egress;

/// The kinds of flow [`Lab::add`] makes, in turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// TCP pod -> pod on the other node, out of node-a's ens5.
    Direct,
    /// ICMP echo pod -> internet host, SNAT to node-a's ens5 address.
    Snat,
    /// UDP pod -> service IP, DNAT to a pod on node-b, out of ens6.
    Dnat,
    /// TCP whose request leaves ens6 and whose reply comes back on ens5.
    Asymmetric,
    /// UDP pod -> pod on the other node, out of ens5, refused with an
    /// ICMP port unreachable that comes back the same way.
    Refused,
}

/// A topology and an engine to push synthetic packets through.
pub struct Lab {
    /// The interfaces of both nodes.
    pub topo: Topology,
    /// The engine the packets go through.
    pub engine: Correlator,
    pods: u32,
    t_ns: u64,
    n: u64,
    journeys: u64,
    last_ns: u64,
}

fn addr(node: u8, host: u32) -> Ipv4Addr {
    let [_, _, hi, lo] = (20 + host).to_be_bytes();
    Ipv4Addr::new(192, 168, node * 16 + hi, lo)
}

impl Lab {
    /// `pods` pods per node (ENI addresses 192.168.{1,2}.5 and .6, pods
    /// from .20 up), room for `max_flows` flows that never go idle.
    pub fn new(pods: u32, max_flows: usize) -> Self {
        let mut topo = Topology::default();
        for (cookie, node, net) in [(NODE_A, "node-a", 1u8), (NODE_B, "node-b", 2)] {
            for (ifindex, name, index) in [(ENS5, "ens5", 0), (ENS6, "ens6", 1)] {
                let ip = Ipv4Addr::new(192, 168, net * 16, 5 + index as u8);
                topo.insert(
                    cookie,
                    iface(
                        node,
                        name,
                        ifindex,
                        Role::Eni {
                            index: Some(index),
                            addrs: vec![ip],
                        },
                    ),
                );
            }
            for k in 0..pods {
                let name = format!("default/pod-{}{k}", &node[5..]);
                topo.insert(
                    cookie,
                    iface(
                        node,
                        &format!("eni{net}{k:010x}"),
                        VETH0 + k,
                        Role::PodVeth {
                            pod_ip: Some(addr(net, k)),
                            pod: Some(name),
                        },
                    ),
                );
            }
        }
        let engine = Correlator::new(Config {
            max_flows,
            flow_idle_ns: u64::MAX / 4,
            ..Config::default()
        });
        Self {
            topo,
            engine,
            pods: pods.max(1),
            t_ns: T0_NS,
            n: 0,
            journeys: 0,
            last_ns: T0_NS,
        }
    }

    /// Kernel time of the latest packet, ns.
    pub fn now_ns(&self) -> u64 {
        self.last_ns
    }

    /// Adds one flow of `kind` (a request and its reply), 1 ms after the
    /// previous one; reports through `sink`.
    pub fn add(&mut self, kind: Kind, mut sink: impl FnMut(Update<'_>)) {
        let n = self.n;
        self.n += 1;
        let k = u32::try_from(n % u64::from(self.pods)).unwrap_or(0);
        let (a, b) = (addr(1, k), addr(2, (k + 1) % self.pods));
        let (va, vb) = (VETH0 + k, VETH0 + (k + 1) % self.pods);
        // Unique per flow up to `pods` x 60k flows.
        let sport = 1024 + (n / u64::from(self.pods) % 60_000) as u16;
        let node_ip = Ipv4Addr::new(192, 168, 16, 5);
        let internet = Ipv4Addr::new(203, 0, 113, 10);
        let service = Ipv4Addr::new(10, 100, 0, 10);
        // A request and its reply, as TCP numbers them: each side's seq is
        // what the other acks (the correlator tells segments apart by
        // them, not by their payload).
        let tcp = |s, d, reply: bool| {
            let (mine, theirs) = (n as u32, !(n as u32));
            let (seq, ack) = if reply {
                (theirs, mine.wrapping_add(32))
            } else {
                (mine, theirs)
            };
            L4::Tcp {
                sport: s,
                dport: d,
                seq,
                ack,
                flags: 0x18,
            }
        };
        let udp = |s, d| L4::Udp {
            sport: s,
            dport: d,
            ulen: 40,
            room: 40,
        };
        let icmp = |ty, id| L4::Icmp {
            ty,
            code: 0,
            id,
            seq: 1,
        };
        let (req, rep): (Vec<Seen>, Vec<Seen>) = match kind {
            Kind::Direct | Kind::Asymmetric => {
                let (q, p) = (tcp(sport, 80, false), tcp(80, sport, true));
                let (out_eni, back_eni) = if kind == Kind::Direct {
                    (ENS5, ENS5)
                } else {
                    (ENS6, ENS5)
                };
                (
                    vec![
                        (NODE_A, va, IN, a, b, q),
                        (NODE_A, out_eni, OUT, a, b, q),
                        (NODE_B, ENS5, IN, a, b, q),
                        (NODE_B, vb, OUT, a, b, q),
                    ],
                    vec![
                        (NODE_B, vb, IN, b, a, p),
                        (NODE_B, ENS5, OUT, b, a, p),
                        (NODE_A, back_eni, IN, b, a, p),
                        (NODE_A, va, OUT, b, a, p),
                    ],
                )
            }
            Kind::Snat => {
                // Every SNAT flow shares the node's address: its rewritten
                // id must be unique (as `--random-fully` makes it).
                let (id, nat_id) = (sport, (n / 4) as u16);
                (
                    vec![
                        (NODE_A, va, IN, a, internet, icmp(8, id)),
                        (NODE_A, ENS5, OUT, node_ip, internet, icmp(8, nat_id)),
                    ],
                    vec![
                        (NODE_A, ENS5, IN, internet, node_ip, icmp(0, nat_id)),
                        (NODE_A, va, OUT, internet, a, icmp(0, id)),
                    ],
                )
            }
            Kind::Refused => {
                let q = udp(sport, 9999);
                let e = L4::IcmpError {
                    ty: 3,
                    code: 3,
                    mtu: 0,
                    quote: crate::decode::Quote {
                        src: a,
                        dst: b,
                        proto: 17,
                        sport,
                        dport: 9999,
                        seq: 0,
                    },
                };
                (
                    vec![
                        (NODE_A, va, IN, a, b, q),
                        (NODE_A, ENS5, OUT, a, b, q),
                        (NODE_B, ENS5, IN, a, b, q),
                        (NODE_B, vb, OUT, a, b, q),
                    ],
                    vec![
                        (NODE_B, vb, IN, b, a, e),
                        (NODE_B, ENS5, OUT, b, a, e),
                        (NODE_A, ENS5, IN, b, a, e),
                        (NODE_A, va, OUT, b, a, e),
                    ],
                )
            }
            Kind::Dnat => {
                let (q, qd, p, pd) = (
                    udp(sport, 53),
                    udp(sport, 5353),
                    udp(5353, sport),
                    udp(53, sport),
                );
                (
                    vec![
                        (NODE_A, va, IN, a, service, q),
                        (NODE_A, ENS6, OUT, a, b, qd),
                        (NODE_B, ENS5, IN, a, b, qd),
                        (NODE_B, vb, OUT, a, b, qd),
                    ],
                    vec![
                        (NODE_B, vb, IN, b, a, p),
                        (NODE_B, ENS5, OUT, b, a, p),
                        (NODE_A, ENS6, IN, b, a, p),
                        (NODE_A, va, OUT, service, a, pd),
                    ],
                )
            }
        };
        for journey in [req, rep] {
            self.t_ns += 500_000;
            self.journeys += 1;
            let hash = self.journeys;
            for (i, hop) in journey.iter().enumerate() {
                let pkt = packet(hop, self.t_ns + i as u64 * 7_000, hash, n);
                self.last_ns = self.last_ns.max(pkt.ts_ns);
                self.engine.push(&pkt, &self.topo, &mut sink);
            }
        }
    }

    /// Adds `n` flows, kinds in turn, and closes their journeys.
    pub fn fill(&mut self, n: usize, mut sink: impl FnMut(Update<'_>)) {
        const KINDS: [Kind; 4] = [Kind::Direct, Kind::Snat, Kind::Dnat, Kind::Asymmetric];
        for i in 0..n {
            self.add(KINDS[i % KINDS.len()], &mut sink);
        }
        self.engine.flush(&mut sink);
    }
}

/// One hop: where, which way, addresses and transport as seen there.
type Seen = (u64, u32, Direction, Ipv4Addr, Ipv4Addr, L4);

fn packet(&(cookie, ifindex, dir, src, dst, l4): &Seen, ts_ns: u64, hash: u64, n: u64) -> Packet {
    let proto = match l4 {
        L4::Tcp { .. } => 6,
        L4::Udp { .. } => 17,
        _ => 1,
    };
    Packet {
        ts_ns,
        hook: HookId {
            netns_cookie: cookie,
            ifindex,
            dir,
        },
        reason: reason::MATCH,
        len: 98,
        cap_len: 98,
        mark: 0,
        l3: L3::Ipv4 {
            src,
            dst,
            id: n as u16,
            total_len: 84,
            ttl: 64,
            proto,
            frag: 0,
        },
        l4,
        payload_hash: hash,
        probe: false,
        // An ICMP echo of 84 IP bytes; a transport's payload otherwise.
        length: if proto == 1 { 64 } else { 32 },
    }
}

fn iface(node: &str, name: &str, ifindex: u32, role: Role) -> Iface {
    Iface {
        node: node.into(),
        name: name.into(),
        ifindex,
        role,
    }
}

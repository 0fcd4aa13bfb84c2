//! What one probe did, from the packets the hooks reported: ordered hops
//! with the addresses seen at each, rewrites, and a one-line summary. Pure:
//! fed with decoded packets and the topology, no I/O, no clock.

use std::net::Ipv4Addr;

use serde::Serialize;
use tracer_common::Direction;

use crate::{
    decode::{L3, L4, Packet},
    topology::{Role, Topology},
};

/// One end of the ping, as the JSON contract names it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// Pod name, if a pod.
    pub pod: Option<String>,
    /// Pod namespace, if a pod.
    pub namespace: Option<String>,
    /// IPv4 address.
    pub ip: Option<String>,
    /// Node the pod runs on.
    pub node: Option<String>,
}

/// A rewrite seen at a hop, named as `trace` names it: after the rule,
/// also where conntrack reverses it on the reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Nat {
    /// `snat` or `dnat`: the rule. On the reply, the rule whose rewrite
    /// conntrack undoes (a reply's destination restored is `snat`).
    pub kind: &'static str,
    /// True on the reply: conntrack undoing the request's rewrite.
    pub reverse: bool,
    /// Address (and port, for TCP and UDP) before.
    pub from: String,
    /// Address (and port) after.
    pub to: String,
    /// ICMP echo id before and after, when the rewrite changed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_id: Option<[u16; 2]>,
}

/// Which way a hop's packet was going.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Leg {
    /// The probe on its way to DST.
    Request,
    /// The answer on its way back.
    Reply,
}

/// One hook that saw the probe or its reply.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HopView {
    /// Microseconds since the probe's first hop.
    pub t_us: f64,
    /// Node (netns) name.
    pub node: String,
    /// Interface name.
    pub iface: String,
    /// `pod`, `eni`, `host` or `other`.
    pub role: &'static str,
    /// ENI device index, for ENIs.
    pub eni_index: Option<u32>,
    /// `ingress` or `egress`.
    pub dir: &'static str,
    /// Source as seen here: `ip` or `ip:port`.
    pub src: String,
    /// Destination as seen here.
    pub dst: String,
    /// Rewrites that first appear at this hop: the destination's, then
    /// the source's, as netfilter makes them (a service call that comes
    /// back to its own pod has both).
    pub rewrites: Vec<Nat>,
    /// Request or reply.
    pub leg: Leg,
    /// Human label of the role (`pod veth of pod-1`, `ENI 0 (primary)`).
    #[serde(skip)]
    pub role_label: String,
    #[serde(skip)]
    ts_ns: u64,
}

impl HopView {
    /// The hook that hands a packet to a pod: the path ends well there,
    /// and what comes next is the pod's answer or its silence.
    pub fn hands_to_pod(&self) -> bool {
        self.role == "pod" && self.dir == "egress"
    }
}

/// The whole story of one probe.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeView {
    /// Sequence number.
    pub seq: u16,
    /// Round-trip time, if a reply came.
    pub rtt_us: Option<f64>,
    /// Hops of request then reply, in time order.
    pub hops: Vec<HopView>,
    /// What the reply was, as the sender saw it; or why the probe never
    /// left (`refused in the sender's namespace before it left ...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// The ICMP error that answered the probe, as the hooks saw it first
    /// (its sender before any NAT undid it on the way back).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_error: Option<ProbeError>,
    /// A RST that did not come from the pod: its SYN never reached it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset_on_the_way: Option<Reset>,
    /// The kernel dropped the probe or its answer, and said why: the
    /// probe's drop when there is one (a REJECT drops the probe it
    /// answers), else its answer's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop: Option<ProbeDrop>,
    /// With a probe's drop, its answer's too (the REJECT's ICMP error,
    /// dropped on its way back).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer_drop: Option<ProbeDrop>,
}

/// A probe, or its answer, that the kernel dropped (`kfree_skb` with a
/// reason), as `podtrace_kfree_skb` saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProbeDrop {
    /// Which way the dropped packet was going.
    pub leg: Leg,
    /// The kernel's `enum skb_drop_reason` value.
    pub code: u32,
    /// The kernel's reason, without `SKB_DROP_REASON_` (`NETFILTER_DROP`,
    /// `IP_RPFILTER`, `NO_SOCKET`, ...), or its number when this kernel's
    /// BTF has no name for it.
    pub reason: String,
    /// The kernel code that dropped it (`nf_hook_slow+0x9c`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// Node (netns) of the device the packet was on, when podtrace traces
    /// it; or the sending pod (`default/pod-1`), for a probe dropped in
    /// its namespace (its OUTPUT chain, before any device).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// That device, when podtrace hooks it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
    /// The packet as it was dropped (`tcp 192.168.1.11:40001 >
    /// 192.168.2.11:8080`).
    pub packet: String,
    /// Its destination, as hops give theirs.
    #[serde(skip)]
    pub dst: String,
}

impl ProbeDrop {
    /// `NETFILTER_DROP in nft_do_chain+0x3e8 on node-b`.
    pub fn says_briefly(&self) -> String {
        let mut s = self.reason.clone();
        if let Some(a) = &self.at {
            s.push_str(&format!(" in {a}"));
        }
        if let Some(n) = &self.node {
            s.push_str(&format!(" on {n}"));
        }
        s
    }

    /// In words, with the last hook that saw the packet before.
    pub fn says(&self, hops: &[HopView]) -> String {
        let leg = match self.leg {
            Leg::Request => "request",
            Leg::Reply => "reply",
        };
        // A namespace podtrace does not trace: a pod's, most likely.
        let on = self.node.as_ref().map_or_else(
            || " in a namespace podtrace does not trace".to_owned(),
            |n| format!(" on {n}"),
        );
        let last = hops.iter().rev().find(|h| h.leg == self.leg);
        let mut after = last.map_or_else(String::new, |h| {
            format!(", after {} {} {}", h.node, h.iface, h.dir)
        });
        // Rewritten since the last hook saw it (a service's DNAT): where
        // it was going is news.
        if last.is_some_and(|h| h.dst != self.dst) {
            after.push_str(&format!(", by then rewritten to {}", self.packet));
        }
        format!(
            "{leg} dropped by the kernel{on}: {}{after}",
            crate::drops::cause(&self.reason, self.at.as_deref())
        )
    }
}

/// Where a RST made on the way (see [`reset_on_the_way`]) was made:
/// between the last hook that saw the SYN and the first that saw the RST.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reset {
    /// The pod the SYN was for.
    pub pod: String,
    /// `node iface direction` of the last hook that saw the SYN.
    pub syn_last_seen: String,
    /// How the kernel dropped the SYN (`NETFILTER_DROP in nf_hook_slow+0x9c
    /// on node-b`).
    pub syn_dropped: String,
    /// `node iface direction` of the first hook that saw the RST.
    pub rst_first_seen: String,
}

impl Reset {
    /// The summary's line.
    pub fn says(&self) -> String {
        format!(
            "the SYN never reached {}: dropped by the kernel after {} ({}), and a RST \
             came back in its name, first seen at {} (a firewall's REJECT with tcp-reset?)",
            self.pod, self.syn_last_seen, self.syn_dropped, self.rst_first_seen
        )
    }
}

/// An ICMP error about a probe, for scripts: `reply` says it in words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProbeError {
    /// ICMP type; `type` in JSON.
    #[serde(rename = "type")]
    pub ty: u8,
    /// ICMP code.
    pub code: u8,
    /// What it says, e.g. `port unreachable`.
    pub name: &'static str,
    /// Its source address at the first hook that saw it.
    pub from: std::net::Ipv4Addr,
    /// The next hop's MTU, for "fragmentation needed".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
}

/// The one-line verdict, per the JSON contract.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Probes sent (a probe refused before it left counts, as lost).
    pub sent: usize,
    /// Probes answered (an answer made on the way counts: see
    /// `reset_on_the_way`).
    pub received: usize,
    /// Round trips of the answered ones, µs (null when none answered).
    pub rtt_us: Option<RttStats>,
    /// `direct`, `snat`, `dnat`, `overlay` or `unknown`.
    pub path: &'static str,
    /// ENI the request left SRC's node through.
    pub egress_eni: Option<String>,
    /// Address the source was rewritten to.
    pub snat_to: Option<String>,
    /// Where a lost probe was last seen.
    pub lost_at: Option<String>,
    /// A RST made on the way, not by the pod (the first probe's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset_on_the_way: Option<String>,
    /// Why the kernel's drops could not be watched (no BTF, an old
    /// kernel): a lost probe's `drop` is then unknown, not absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_reasons_unavailable: Option<String>,
    /// For `dnat`: each address the probes were rewritten to, in the order
    /// first seen. A service spreads probes over its backends, and each
    /// backend has a path of its own.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<Backend>,
}

/// Round-trip times, µs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RttStats {
    /// Shortest.
    pub min: f64,
    /// Mean.
    pub avg: f64,
    /// Longest.
    pub max: f64,
}

/// One address a service's DNAT sent probes to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Backend {
    /// Address (and port) after DNAT.
    pub to: String,
    /// How many probes went there.
    pub probes: usize,
    /// How many of them the kernel dropped before any hook saw them
    /// rewritten (their `drop` shows the address).
    pub dropped: usize,
    /// ENI those probes left the source's node through (none: they stayed
    /// on it, or no traced ENI saw them leave).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_eni: Option<String>,
    /// True when those probes reached a pod on the source's own node,
    /// leaving it through no ENI.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub same_node: bool,
}

fn endpoint(ip: Ipv4Addr, port: Option<u16>) -> String {
    port.map_or_else(|| ip.to_string(), |p| format!("{ip}:{p}"))
}

/// Addresses of a packet as seen at its hop (ports for TCP/UDP only).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Seen {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: Option<u16>,
    dport: Option<u16>,
    icmp_id: Option<u16>,
}

impl Seen {
    fn of(p: &Packet) -> Option<Self> {
        let L3::Ipv4 { src, dst, .. } = p.l3 else {
            return None;
        };
        let (sport, dport, icmp_id) = match p.l4 {
            L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport, .. } => {
                (Some(sport), Some(dport), None)
            }
            L4::Icmp { id, .. } => (None, None, Some(id)),
            L4::IcmpError { .. } | L4::Icmp6 { .. } | L4::None => (None, None, None),
        };
        Some(Self {
            src,
            dst,
            sport,
            dport,
            icmp_id,
        })
    }

    /// The rewrites between the previous hop's view and this one.
    fn rewrites_from(&self, prev: &Self, leg: Leg) -> Vec<Nat> {
        let icmp_id = match (prev.icmp_id, self.icmp_id) {
            (Some(a), Some(b)) if a != b => Some([a, b]),
            _ => None,
        };
        let reverse = leg == Leg::Reply;
        let mut out = Vec::new();
        if prev.dst != self.dst || prev.dport != self.dport {
            out.push(Nat {
                kind: if reverse { "snat" } else { "dnat" },
                reverse,
                from: endpoint(prev.dst, prev.dport),
                to: endpoint(self.dst, self.dport),
                icmp_id: icmp_id.filter(|_| reverse),
            });
        }
        if prev.src != self.src || prev.sport != self.sport || (icmp_id.is_some() && !reverse) {
            out.push(Nat {
                kind: if reverse { "dnat" } else { "snat" },
                reverse,
                from: endpoint(prev.src, prev.sport),
                to: endpoint(self.src, self.sport),
                icmp_id: icmp_id.filter(|_| !reverse),
            });
        }
        out
    }
}

/// Builds the hop list of one probe from the packets of its request and of
/// its reply (each in any order).
pub fn probe_view(
    seq: u16,
    rtt_us: Option<f64>,
    request: &[Packet],
    reply: &[Packet],
    topo: &Topology,
) -> ProbeView {
    let mut hops = Vec::new();
    for (leg, pkts) in [(Leg::Request, request), (Leg::Reply, reply)] {
        let mut sorted: Vec<&Packet> = pkts.iter().collect();
        sorted.sort_by_key(|p| p.ts_ns);
        let mut prev: Option<Seen> = None;
        for p in sorted {
            let Some(seen) = Seen::of(p) else {
                continue;
            };
            let rewrites = prev.map_or_else(Vec::new, |prev| seen.rewrites_from(&prev, leg));
            prev = Some(seen);
            let iface = topo.get(&p.hook);
            let (role, eni_index) = match iface.map(|i| &i.role) {
                Some(Role::PodVeth { .. } | Role::PodEth0) => ("pod", None),
                Some(Role::Eni { index, .. }) => ("eni", *index),
                Some(Role::Other) => ("host", None),
                None => ("other", None),
            };
            hops.push(HopView {
                t_us: 0.0,
                node: iface.map_or_else(|| "?".into(), |i| i.node.clone()),
                iface: iface.map_or_else(|| format!("if{}", p.hook.ifindex), |i| i.name.clone()),
                role,
                eni_index,
                dir: match p.hook.dir {
                    Direction::Ingress => "ingress",
                    Direction::Egress => "egress",
                },
                src: endpoint(seen.src, seen.sport),
                dst: endpoint(seen.dst, seen.dport),
                rewrites,
                leg,
                role_label: iface.map_or_else(|| "unknown".into(), |i| i.role.to_string()),
                ts_ns: p.ts_ns,
            });
        }
    }
    hops.sort_by_key(|h| h.ts_ns);
    if let Some(t0) = hops.first().map(|h| h.ts_ns) {
        for h in &mut hops {
            #[expect(clippy::cast_precision_loss, reason = "microseconds for display")]
            let us = (h.ts_ns - t0) as f64 / 1000.0;
            h.t_us = us;
        }
    }
    let icmp_error = reply.iter().find_map(|p| match (p.l3, p.l4) {
        (L3::Ipv4 { src, .. }, L4::IcmpError { ty, code, mtu, .. }) => Some(ProbeError {
            ty,
            code,
            name: crate::decode::icmp_name(ty, code).unwrap_or("icmp error"),
            from: src,
            mtu: ((ty, code) == (3, 4)).then_some(mtu),
        }),
        _ => None,
    });
    ProbeView {
        seq,
        rtt_us,
        hops,
        reply: None,
        icmp_error,
        reset_on_the_way: None,
        drop: None,
        answer_drop: None,
    }
}

/// A TCP probe answered by a RST although the kernel dropped its SYN on
/// the way, before the pod it was for: something on the way made the RST
/// in the pod's name (a firewall's `REJECT --reject-with tcp-reset` drops
/// the SYN and answers for the pod), not the pod's kernel, and "port
/// closed" would send the reader to the wrong place. `None` when the SYN
/// reached a pod all the same.
pub fn reset_on_the_way(v: &ProbeView, topo: &Topology, syn: &ProbeDrop) -> Option<Reset> {
    let mut request = v.hops.iter().filter(|h| h.leg == Leg::Request);
    if syn.leg != Leg::Request || request.clone().any(HopView::hands_to_pod) {
        return None;
    }
    let last = request.next_back()?;
    let dst: Ipv4Addr = last.dst.split(':').next()?.parse().ok()?;
    let pod = topo
        .iter()
        .find_map(|(_, i)| match &i.role {
            Role::PodVeth {
                pod_ip: Some(ip),
                pod: Some(p),
            } if *ip == dst => Some(p.rsplit('/').next().unwrap_or(p).to_owned()),
            _ => None,
        })
        .unwrap_or_else(|| dst.to_string());
    let first_back = v.hops.iter().find(|h| h.leg == Leg::Reply)?;
    let at = |h: &HopView| format!("{} {} {}", h.node, h.iface, h.dir);
    Some(Reset {
        pod,
        syn_last_seen: at(last),
        syn_dropped: syn.says_briefly(),
        rst_first_seen: at(first_back),
    })
}

/// The ENI the request of `hops` left its first node through.
fn egress_eni_of<'a>(hops: impl Iterator<Item = &'a HopView> + Clone) -> Option<String> {
    let mut request = hops.filter(|h| h.leg == Leg::Request);
    let first_node = request.clone().next().map(|h| h.node.clone())?;
    request
        .find(|h| h.role == "eni" && h.dir == "egress" && h.node == first_node)
        .map(|h| h.iface.clone())
}

/// Each DNAT target of `probes` with its probe count and exit ENI.
fn backends(probes: &[ProbeView]) -> Vec<Backend> {
    let mut out: Vec<Backend> = Vec::new();
    for p in probes {
        let seen = p
            .hops
            .iter()
            .filter(|h| h.leg == Leg::Request)
            .flat_map(|h| &h.rewrites)
            .find(|n| n.kind == "dnat")
            .map(|n| n.to.clone());
        // Dropped after a DNAT that no hook saw: the dropped packet shows
        // where it was sent.
        let first_dst = p
            .hops
            .iter()
            .find(|h| h.leg == Leg::Request)
            .map(|h| &h.dst);
        let dropped_to = p
            .drop
            .as_ref()
            .filter(|d| d.leg == Leg::Request && first_dst.is_some_and(|f| *f != d.dst))
            .map(|d| d.dst.clone());
        let dropped = usize::from(seen.is_none() && dropped_to.is_some());
        let Some(to) = seen.or(dropped_to) else {
            continue;
        };
        let eni = egress_eni_of(p.hops.iter());
        let request: Vec<&HopView> = p.hops.iter().filter(|h| h.leg == Leg::Request).collect();
        let first = request.first().map(|h| h.node.as_str());
        let same_node = eni.is_none()
            && request
                .last()
                .is_some_and(|h| h.hands_to_pod() && Some(h.node.as_str()) == first);
        match out.iter_mut().find(|b| b.to == to) {
            Some(b) => {
                b.probes += 1;
                b.dropped += dropped;
                b.egress_eni = b.egress_eni.take().or(eni);
                b.same_node &= same_node && dropped == 0;
            }
            None => out.push(Backend {
                to,
                probes: 1,
                dropped,
                egress_eni: eni,
                same_node: same_node && dropped == 0,
            }),
        }
    }
    out
}

/// The summary over all probes.
pub fn summarize(probes: &[ProbeView]) -> Summary {
    let all = || probes.iter().flat_map(|p| p.hops.iter());
    let request = || all().filter(|h| h.leg == Leg::Request);
    let egress_eni = egress_eni_of(all());
    let snat = request().find_map(|h| h.rewrites.iter().find(|n| n.kind == "snat"));
    let dnat = request().find_map(|h| h.rewrites.iter().find(|n| n.kind == "dnat"));
    // A service's DNAT says the most: where the probes went. Where a SNAT
    // came with it (a call back to the caller's own pod), `snat_to` says so.
    let path = if dnat.is_some() {
        "dnat"
    } else if snat.is_some() {
        "snat"
    } else if all().next().is_some() {
        "direct"
    } else {
        "unknown"
    };
    let snat_to = snat.map(|n| n.to.split(':').next().unwrap_or(&n.to).to_owned());
    let lost_at = probes.iter().find(|p| p.rtt_us.is_none()).and_then(|p| {
        // An ICMP error came back (`net unreachable from 192.168.1.1`):
        // that is where and why.
        if let Some(why) = &p.reply {
            // With the kernel's drop: the rule that refused the request
            // (a REJECT drops it, and sends the error), or the error's
            // own drop on its way back.
            let mut out = why.clone();
            for d in p.drop.iter().chain(&p.answer_drop) {
                out.push_str("; ");
                out.push_str(&d.says(&p.hops));
            }
            return Some(out);
        }
        // The kernel said it dropped it: that is where and why.
        if let Some(d) = &p.drop {
            return Some(d.says(&p.hops));
        }
        let last = p.hops.last()?;
        let leg = match last.leg {
            Leg::Request => "request",
            Leg::Reply => "reply",
        };
        let late = if last.leg == Leg::Reply {
            ", not received within the timeout (-W)"
        } else if last.hands_to_pod() && p.hops.len() > 1 {
            // Handed to the destination pod: the path worked, the pod did
            // not answer (nothing listens, a policy inside it, or the
            // kernel's ICMP rate limit on port unreachable).
            ": delivered to the pod, which did not answer"
        } else {
            ""
        };
        Some(format!(
            "{leg} last seen at {} {} {}{late}",
            last.node, last.iface, last.dir
        ))
    });
    let lost_at = lost_at.or_else(|| {
        probes
            .iter()
            .any(|p| p.rtt_us.is_none() && p.hops.is_empty())
            .then(|| "request never seen by any hook".into())
    });
    let reset_on_the_way = probes
        .iter()
        .find_map(|p| p.reset_on_the_way.as_ref().map(Reset::says));
    let rtts: Vec<f64> = probes.iter().filter_map(|p| p.rtt_us).collect();
    #[expect(clippy::cast_precision_loss, reason = "an average of a few probes")]
    let rtt_us = (!rtts.is_empty()).then(|| RttStats {
        min: rtts.iter().copied().fold(f64::INFINITY, f64::min),
        avg: rtts.iter().sum::<f64>() / rtts.len() as f64,
        max: rtts.iter().copied().fold(0.0, f64::max),
    });
    Summary {
        sent: probes.len(),
        received: rtts.len(),
        rtt_us,
        path,
        egress_eni,
        snat_to,
        lost_at,
        reset_on_the_way,
        backends: if path == "dnat" {
            backends(probes)
        } else {
            Vec::new()
        },
        drop_reasons_unavailable: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        decode::{HookId, decode_frame},
        topology::Iface,
    };

    const NODE_A: u64 = 10;
    const NODE_B: u64 = 20;

    fn topo() -> Topology {
        let mut t = Topology::default();
        let add = |t: &mut Topology, c, node: &str, name: &str, ifindex, role| {
            t.insert(
                c,
                Iface {
                    node: node.into(),
                    name: name.into(),
                    ifindex,
                    role,
                },
            );
        };
        let pod = |ip: [u8; 4], n: &str| Role::PodVeth {
            pod_ip: Some(ip.into()),
            pod: Some(format!("default/{n}")),
        };
        add(
            &mut t,
            NODE_A,
            "node-a",
            "eni1",
            5,
            pod([192, 168, 1, 21], "pod-1"),
        );
        add(
            &mut t,
            NODE_A,
            "node-a",
            "ens5",
            2,
            Role::Eni {
                index: Some(0),
                addrs: vec![[192, 168, 1, 5].into()],
            },
        );
        // Node B reuses ifindex 5 and 2: only the netns cookie tells them apart.
        add(
            &mut t,
            NODE_B,
            "node-b",
            "ens5",
            2,
            Role::Eni {
                index: Some(0),
                addrs: vec![[192, 168, 2, 5].into()],
            },
        );
        add(
            &mut t,
            NODE_B,
            "node-b",
            "eni3",
            5,
            pod([192, 168, 2, 21], "pod-3"),
        );
        t
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one synthetic packet per line reads best"
    )]
    fn icmp(
        cookie: u64,
        ifindex: u32,
        dir: Direction,
        ts: u64,
        src: [u8; 4],
        dst: [u8; 4],
        ty: u8,
        id: u16,
    ) -> Packet {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 28 + 32, 0, 7, 0, 0, 64, 1, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&[ty, 0, 0, 0]);
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(&1u16.to_be_bytes());
        f.extend_from_slice(&tracer_common::PROBE_MAGIC);
        let mut p = decode_frame(&f);
        p.ts_ns = ts;
        p.hook = HookId {
            netns_cookie: cookie,
            ifindex,
            dir,
        };
        p
    }

    #[test]
    fn direct_across_nodes() {
        use Direction::{Egress, Ingress};
        let (a, b) = ([192, 168, 1, 21], [192, 168, 2, 21]);
        let req = [
            icmp(NODE_B, 2, Ingress, 3_000, a, b, 8, 9),
            icmp(NODE_A, 5, Ingress, 1_000, a, b, 8, 9),
            icmp(NODE_A, 2, Egress, 2_000, a, b, 8, 9),
            icmp(NODE_B, 5, Egress, 4_000, a, b, 8, 9),
        ];
        let rep = [
            icmp(NODE_B, 5, Ingress, 5_000, b, a, 0, 9),
            icmp(NODE_A, 5, Egress, 8_000, b, a, 0, 9),
        ];
        let v = probe_view(1, Some(7.0), &req, &rep, &topo());
        let order: Vec<String> = v
            .hops
            .iter()
            .map(|h| format!("{} {} {}", h.node, h.iface, h.dir))
            .collect();
        assert_eq!(
            order,
            [
                "node-a eni1 ingress",
                "node-a ens5 egress",
                "node-b ens5 ingress",
                "node-b eni3 egress",
                "node-b eni3 ingress",
                "node-a eni1 egress"
            ]
        );
        assert!((v.hops[1].t_us - 1.0).abs() < 1e-9);
        assert!(v.hops.iter().all(|h| h.rewrites.is_empty()));
        let s = summarize(&[v]);
        assert_eq!(
            (s.path, s.egress_eni.as_deref(), s.lost_at),
            ("direct", Some("ens5"), None)
        );
    }

    #[test]
    fn snat_with_rewritten_icmp_id() {
        use Direction::{Egress, Ingress};
        let (pod, node, inet) = ([192, 168, 1, 21], [192, 168, 1, 5], [203, 0, 113, 10]);
        let req = [
            icmp(NODE_A, 5, Ingress, 1_000, pod, inet, 8, 4711),
            icmp(NODE_A, 2, Egress, 2_000, node, inet, 8, 20946),
        ];
        let v = probe_view(1, Some(3.0), &req, &[], &topo());
        let [nat] = v.hops[1].rewrites.as_slice() else {
            panic!("one snat at ens5 egress: {:?}", v.hops[1].rewrites);
        };
        assert_eq!(
            (nat.kind, nat.from.as_str(), nat.to.as_str()),
            ("snat", "192.168.1.21", "192.168.1.5")
        );
        assert_eq!(nat.icmp_id, Some([4711, 20946]));
        let s = summarize(&[v]);
        assert_eq!(
            (s.path, s.snat_to.as_deref()),
            ("snat", Some("192.168.1.5"))
        );
    }

    #[test]
    fn a_service_summary_gives_each_backend_its_own_path() {
        use Direction::{Egress, Ingress};
        let (a, svc) = ([192, 168, 1, 21], [10, 100, 0, 10]);
        let (b, c) = ([192, 168, 2, 21], [192, 168, 2, 22]);
        // Probe 1 goes to b and leaves node-a by ens5; probe 2 goes to c,
        // and no traced ENI of node-a sees it leave; probe 3 to b again.
        let to = |backend, id, t0| {
            [
                icmp(NODE_A, 5, Ingress, t0, a, svc, 8, id),
                icmp(NODE_A, 2, Egress, t0 + 1_000, a, backend, 8, id),
                icmp(NODE_B, 2, Ingress, t0 + 2_000, a, backend, 8, id),
            ]
        };
        let p1 = probe_view(1, Some(3.0), &to(b, 1, 1_000), &[], &topo());
        let second = to(c, 2, 10_000);
        let p2 = probe_view(2, Some(3.0), &[second[0], second[2]], &[], &topo());
        let p3 = probe_view(3, Some(3.0), &to(b, 3, 20_000), &[], &topo());
        // Probe 4 went to c too, and node-a dropped it after the DNAT,
        // before any hook saw it again: its drop shows where it went.
        let mut p4 = probe_view(4, None, &to(c, 4, 30_000)[..1], &[], &topo());
        p4.drop = Some(ProbeDrop {
            leg: Leg::Request,
            code: 9,
            reason: "NETFILTER_DROP".into(),
            at: None,
            node: Some("node-a".into()),
            iface: None,
            packet: "icmp 192.168.1.21 > 192.168.2.22 echo request".into(),
            dst: "192.168.2.22".into(),
        });
        let s = summarize(&[p1, p2, p3, p4]);
        assert_eq!(s.path, "dnat");
        assert_eq!(
            s.backends,
            [
                Backend {
                    to: "192.168.2.21".into(),
                    probes: 2,
                    dropped: 0,
                    egress_eni: Some("ens5".into()),
                    same_node: false,
                },
                Backend {
                    to: "192.168.2.22".into(),
                    probes: 2,
                    dropped: 1,
                    egress_eni: None,
                    same_node: false,
                },
            ]
        );
    }

    /// A service call that DNAT sends back to the caller's own pod is
    /// SNATed too, at the same hop: both show, and the summary keeps the
    /// backend.
    #[test]
    fn a_call_back_to_its_own_pod_shows_dnat_and_snat() {
        use Direction::{Egress, Ingress};
        let (pod, node, svc) = ([192, 168, 1, 21], [192, 168, 1, 5], [10, 100, 0, 10]);
        let req = [
            icmp(NODE_A, 5, Ingress, 1_000, pod, svc, 8, 7),
            icmp(NODE_A, 5, Egress, 2_000, node, pod, 8, 7),
        ];
        let rep = [
            icmp(NODE_A, 5, Ingress, 3_000, pod, node, 0, 7),
            icmp(NODE_A, 5, Egress, 4_000, svc, pod, 0, 7),
        ];
        let v = probe_view(1, Some(3.0), &req, &rep, &topo());
        let kinds = |h: &HopView| -> Vec<(&str, bool, String, String)> {
            h.rewrites
                .iter()
                .map(|n| (n.kind, n.reverse, n.from.clone(), n.to.clone()))
                .collect()
        };
        assert_eq!(
            kinds(&v.hops[1]),
            [
                ("dnat", false, "10.100.0.10".into(), "192.168.1.21".into()),
                ("snat", false, "192.168.1.21".into(), "192.168.1.5".into()),
            ]
        );
        // The reply: conntrack restores the destination (SNAT undone),
        // then the source (DNAT undone).
        assert_eq!(
            kinds(&v.hops[3]),
            [
                ("snat", true, "192.168.1.5".into(), "192.168.1.21".into()),
                ("dnat", true, "192.168.1.21".into(), "10.100.0.10".into()),
            ]
        );
        let s = summarize(std::slice::from_ref(&v));
        assert_eq!(
            (s.path, s.snat_to.as_deref(), s.backends.len()),
            ("dnat", Some("192.168.1.5"), 1)
        );
        let text = crate::ping::text::summary(&s, &[v], Some("node-a"), false);
        assert!(
            text.starts_with(
                "--- summary ---\nDNAT 10.100.0.10 -> 192.168.1.21; stays on node-a\n\
                 SNAT 192.168.1.21 -> 192.168.1.5 at node-a eni1 egress; \
                 DNAT sent it back to the calling pod\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_drop_says_where_and_why() {
        use Direction::{Egress, Ingress};
        let (a, b) = ([192, 168, 1, 21], [192, 168, 2, 21]);
        let req = [
            icmp(NODE_A, 5, Ingress, 1_000, a, b, 8, 9),
            icmp(NODE_A, 2, Egress, 2_000, a, b, 8, 9),
            icmp(NODE_B, 2, Ingress, 3_000, a, b, 8, 9),
        ];
        let mut v = probe_view(1, None, &req, &[], &topo());
        v.drop = Some(ProbeDrop {
            leg: Leg::Request,
            code: 9,
            reason: "NETFILTER_DROP".into(),
            at: Some("nft_do_chain+0x3e8".into()),
            node: Some("node-b".into()),
            iface: Some("ens5".into()),
            packet: "icmp 192.168.1.21 > 192.168.2.21".into(),
            dst: "192.168.2.21".into(),
        });
        assert_eq!(
            summarize(std::slice::from_ref(&v)).lost_at.as_deref(),
            Some(
                "request dropped by the kernel on node-b: NETFILTER_DROP in \
                 nft_do_chain+0x3e8 (an iptables or nftables rule), after node-b ens5 ingress"
            )
        );
        // Rewritten after the last hook (a service's DNAT): the drop says
        // where it was going.
        let mut dnat = v.clone();
        if let Some(d) = &mut dnat.drop {
            d.packet = "icmp 192.168.1.21 > 192.168.2.99".into();
            d.dst = "192.168.2.99".into();
        }
        assert!(summarize(&[dnat]).lost_at.is_some_and(|w| w.ends_with(
            ", after node-b ens5 ingress, by then rewritten to icmp 192.168.1.21 > 192.168.2.99"
        )),);
        // With another probe answered, the summary says how many were lost.
        let answered = probe_view(2, Some(400.0), &req, &[], &topo());
        let both = [v.clone(), answered];
        let text = crate::ping::text::summary(&summarize(&both), &both, Some("node-a"), true);
        assert!(
            text.contains("\n1 probe lost; the first: request dropped by the kernel on node-b:"),
            "{text}"
        );
        assert!(text.contains("\n2 sent, 1 received, 50% loss"), "{text}");
        // A reply dropped with no name for the code nor a traced device:
        // the last reply hop still says where.
        let rep = [icmp(NODE_B, 5, Ingress, 4_000, b, a, 0, 9)];
        let mut v = probe_view(1, None, &req, &rep, &topo());
        v.drop = Some(ProbeDrop {
            leg: Leg::Reply,
            code: 999,
            reason: "reason 999".into(),
            at: None,
            node: None,
            iface: None,
            packet: "icmp 192.168.2.21 > 192.168.1.21".into(),
            dst: "192.168.1.21".into(),
        });
        assert_eq!(
            summarize(&[v]).lost_at.as_deref(),
            Some(
                "reply dropped by the kernel in a namespace podtrace does not trace: reason \
                 999, after node-b eni3 ingress"
            )
        );
    }

    #[test]
    fn a_reset_made_before_the_pod_says_where() {
        use Direction::{Egress, Ingress};
        let (a, b) = ([192, 168, 1, 21], [192, 168, 2, 21]);
        // The SYN got as far as node-b's ENI, was dropped there, and the
        // answer started there.
        let req = [
            icmp(NODE_A, 5, Ingress, 1_000, a, b, 8, 9),
            icmp(NODE_A, 2, Egress, 2_000, a, b, 8, 9),
            icmp(NODE_B, 2, Ingress, 3_000, a, b, 8, 9),
        ];
        let rep = [
            icmp(NODE_B, 2, Egress, 4_000, b, a, 0, 9),
            icmp(NODE_A, 2, Ingress, 5_000, b, a, 0, 9),
            icmp(NODE_A, 5, Egress, 6_000, b, a, 0, 9),
        ];
        let syn = ProbeDrop {
            leg: Leg::Request,
            code: 9,
            reason: "NETFILTER_DROP".into(),
            at: Some("nft_do_chain+0x3e8".into()),
            node: Some("node-b".into()),
            iface: Some("ens5".into()),
            packet: "tcp 192.168.1.21:40000 > 192.168.2.21:8080".into(),
            dst: "192.168.2.21:8080".into(),
        };
        let v = probe_view(1, Some(6.0), &req, &rep, &topo());
        let reset = reset_on_the_way(&v, &topo(), &syn).expect("a reset on the way");
        assert_eq!(
            reset,
            Reset {
                pod: "pod-3".into(),
                syn_last_seen: "node-b ens5 ingress".into(),
                syn_dropped: "NETFILTER_DROP in nft_do_chain+0x3e8 on node-b".into(),
                rst_first_seen: "node-b ens5 egress".into(),
            }
        );
        let mut v = v;
        v.reset_on_the_way = Some(reset);
        assert_eq!(
            summarize(&[v]).reset_on_the_way.as_deref(),
            Some(
                "the SYN never reached pod-3: dropped by the kernel after node-b ens5 ingress \
                 (NETFILTER_DROP in nft_do_chain+0x3e8 on node-b), and a RST came back in its \
                 name, first seen at node-b ens5 egress (a firewall's REJECT with tcp-reset?)"
            )
        );
        // Handed to the pod: the pod's kernel answered (a closed port).
        let mut delivered = req.to_vec();
        delivered.push(icmp(NODE_B, 5, Egress, 3_500, a, b, 8, 9));
        let v = probe_view(1, Some(6.0), &delivered, &rep, &topo());
        assert_eq!(reset_on_the_way(&v, &topo(), &syn), None);
        // A drop of the reply is no evidence about the SYN.
        let v = probe_view(1, Some(6.0), &req, &rep, &topo());
        let reply_drop = ProbeDrop {
            leg: Leg::Reply,
            ..syn.clone()
        };
        assert_eq!(reset_on_the_way(&v, &topo(), &reply_drop), None);
    }

    #[test]
    fn lost_names_the_last_hop() {
        use Direction::{Egress, Ingress};
        let (a, b) = ([192, 168, 1, 21], [192, 168, 2, 21]);
        let req = [
            icmp(NODE_A, 5, Ingress, 1_000, a, b, 8, 9),
            icmp(NODE_A, 2, Egress, 2_000, a, b, 8, 9),
            icmp(NODE_B, 2, Ingress, 3_000, a, b, 8, 9),
        ];
        let s = summarize(&[probe_view(1, None, &req, &[], &topo())]);
        assert_eq!(
            s.lost_at.as_deref(),
            Some("request last seen at node-b ens5 ingress")
        );
        // Handed to the destination pod, and no answer.
        let mut delivered = req.to_vec();
        delivered.push(icmp(NODE_B, 5, Egress, 4_000, a, b, 8, 9));
        assert_eq!(
            summarize(&[probe_view(1, None, &delivered, &[], &topo())])
                .lost_at
                .as_deref(),
            Some(
                "request last seen at node-b eni3 egress: delivered to the pod, which did not answer"
            )
        );
        // The reply came back to the source's veth, but after the timeout.
        let rep = [icmp(NODE_A, 5, Egress, 4_000, b, a, 0, 9)];
        let late = summarize(&[probe_view(1, None, &req, &rep, &topo())]);
        assert_eq!(
            late.lost_at.as_deref(),
            Some("reply last seen at node-a eni1 egress, not received within the timeout (-W)")
        );
        // An ICMP error answered: it says why.
        let mut refused = probe_view(1, None, &req, &rep, &topo());
        refused.reply = Some("net unreachable from 192.168.1.1".into());
        assert_eq!(
            summarize(&[refused]).lost_at.as_deref(),
            Some("net unreachable from 192.168.1.1")
        );
        let none = summarize(&[probe_view(1, None, &[], &[], &topo())]);
        assert_eq!(
            (none.path, none.lost_at.as_deref()),
            ("unknown", Some("request never seen by any hook"))
        );
    }
}

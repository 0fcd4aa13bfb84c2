//! Journeys: one packet recognised at several hooks by a fingerprint of
//! what NAT and routing leave alone, and turned into hops and rewrites.

use std::{net::Ipv4Addr, sync::Arc};

use super::{
    flow_model::FlowId,
    journey_model::{Expected, IcmpInfo, Journey, NatKind, Rewrite, Side, TcpInfo},
    model::{Dir, Hop, PlaceRole, Tuple},
    pending::Pending,
    places::Places,
};
pub(crate) use crate::decode::icmp_ports;
use crate::decode::{L3, L4, Packet};

/// Most hops one journey keeps (two nodes with pod `eth0`s hooked take 6).
pub(crate) const MAX_HOPS: usize = 10;

/// What identifies one packet at every hook: IP id, protocol, IP total
/// length, TCP seq/ack/flags, ICMP type/code/echo seq, payload hash (not
/// TCP's, which a hook may not have copied: see [`observe`]). Not
/// the addresses, ports or ICMP echo id (NAT rewrites them, `--random-fully`
/// included), nor the TTL (routing decrements it) or checksums.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    payload_hash: u64,
    /// TCP seq, ICMP echo seq.
    a: u32,
    /// TCP ack.
    b: u32,
    ip_id: u16,
    ip_len: u16,
    proto: u8,
    /// TCP flags, ICMP type.
    c: u8,
    /// ICMP code.
    d: u8,
}

impl std::hash::Hash for Fingerprint {
    /// Three words rather than nine fields: a third of the multiplies.
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_u64(self.payload_hash);
        h.write_u64(u64::from(self.a) | u64::from(self.b) << 32);
        h.write_u64(
            u64::from(self.ip_id)
                | u64::from(self.ip_len) << 16
                | u64::from(self.proto) << 32
                | u64::from(self.c) << 40
                | u64::from(self.d) << 48,
        );
    }
}

/// What the engine keeps of a packet at one hook.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RawHop {
    pub(crate) ts_ns: u64,
    /// [`Places`] id of the hook (set by the engine).
    pub(crate) hook: u32,
    pub(crate) tuple: Tuple,
    pub(crate) dir: Dir,
    pub(crate) ttl: u8,
}

/// A packet, ready to be matched.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Observed {
    pub(crate) fp: Fingerprint,
    /// The pending table's hash of `fp` (set by the engine, once).
    pub(crate) fp_hash: u64,
    pub(crate) hop: RawHop,
    /// Bytes on the wire here (`skb->len`).
    pub(crate) bytes: u32,
    /// Why the kernel reported it.
    pub(crate) reason: u32,
    pub(crate) probe: bool,
    /// For an ICMP error: the packet it is about, as quoted here.
    pub(crate) quote: Option<Tuple>,
}

/// Fingerprint, tuple and hop of an IPv4 packet; `None` for anything else.
pub(crate) fn observe(pkt: &Packet) -> Option<Observed> {
    let L3::Ipv4 {
        src,
        dst,
        id,
        total_len,
        ttl,
        proto,
        ..
    } = pkt.l3
    else {
        return None;
    };
    // Multicast and broadcast (IGMP joins, mDNS, DHCP) are not pod paths:
    // copies of one datagram reach several hooks and would read as a
    // journey across nodes with made-up rewrites.
    if dst.is_multicast() || dst.is_broadcast() {
        return None;
    }
    let mut fp = Fingerprint {
        payload_hash: pkt.payload_hash,
        ip_id: id,
        ip_len: total_len,
        proto,
        ..Fingerprint::default()
    };
    let mut quote = None;
    let (sport, dport) = match pkt.l4 {
        L4::Tcp {
            sport,
            dport,
            seq,
            ack,
            flags,
        } => {
            (fp.a, fp.b, fp.c) = (seq, ack, flags);
            // A segment's seq, ack, IP id and length tell it apart; its
            // payload may lie outside what one hook copied and inside what
            // another did (the kernel copies a TCP segment's headers alone
            // when the payload lies apart from them).
            fp.payload_hash = 0;
            (sport, dport)
        }
        L4::Udp { sport, dport, .. } => (sport, dport),
        L4::Icmp { ty, code, id, seq } => {
            (fp.a, fp.c, fp.d) = (u32::from(seq), ty, code);
            icmp_ports(ty, id)
        }
        L4::IcmpError {
            ty,
            code,
            mtu,
            quote: q,
        } => {
            (fp.a, fp.c, fp.d) = (u32::from(mtu), ty, code);
            quote = Some(Tuple {
                proto: q.proto,
                src: q.src,
                sport: q.sport,
                dst: q.dst,
                dport: q.dport,
            });
            (0, 0)
        }
        // ICMPv6 only rides IPv6, which this does not follow.
        L4::Icmp6 { .. } | L4::None => (0, 0),
    };
    let hop = RawHop {
        ts_ns: pkt.ts_ns,
        hook: 0,
        tuple: Tuple {
            proto,
            src,
            sport,
            dst,
            dport,
        },
        dir: pkt.hook.dir.into(),
        ttl,
    };
    Some(Observed {
        fp,
        fp_hash: 0,
        hop,
        bytes: pkt.len,
        reason: pkt.reason,
        probe: pkt.probe,
        quote,
    })
}

/// Fills `out` (reusing its vectors) with the journey's hops and its
/// rewrites, provisionally oriented as a request: a source change is SNAT
/// and a destination change DNAT (see [`orient`]).
pub(crate) fn build(p: &Pending, places: &Places, out: &mut Journey) {
    let fp = &p.fp;
    out.flow = FlowId::default();
    out.side = Side::Request;
    out.probe = p.probe;
    out.proto = fp.proto;
    out.ip_id = fp.ip_id;
    out.ip_len = fp.ip_len;
    out.bytes = p.bytes;
    out.tcp = (fp.proto == 6).then_some(TcpInfo {
        seq: fp.a,
        ack: fp.b,
        flags: fp.c,
    });
    out.icmp = (fp.proto == 1).then_some(IcmpInfo {
        ty: fp.c,
        code: fp.d,
        seq: fp.a as u16,
    });
    out.first_ns = p.first_ns();
    out.quote = None;
    out.incomplete = None;
    out.evicted = false;
    // Hops are overwritten in place: a place that did not change keeps its
    // reference, which spares two atomic operations per hop.
    out.hops.truncate(p.hops().len());
    for (i, h) in p.hops().iter().enumerate() {
        let since_first_ns = h.ts_ns.saturating_sub(out.first_ns);
        match out.hops.get_mut(i) {
            Some(old) => {
                if !places.is_id(&old.place, h.hook) {
                    old.place = places.resolve_id(h.hook);
                }
                (old.dir, old.ts_ns, old.since_first_ns) = (h.dir, h.ts_ns, since_first_ns);
                (old.tuple, old.ttl) = (h.tuple, h.ttl);
            }
            None => out.hops.push(Hop {
                place: places.resolve_id(h.hook),
                dir: h.dir,
                ts_ns: h.ts_ns,
                since_first_ns,
                tuple: h.tuple,
                ttl: h.ttl,
            }),
        }
    }
    fill_rewrites(&mut out.rewrites, &out.hops, false);
}

/// The rewrites of a path (a change of source is SNAT, of destination
/// DNAT, named at the hop where it appears; for a reply, named after the
/// rule they reverse, as [`orient`] does). Reuses `rewrites`' entries and
/// the places they hold where unchanged: no reference count once warm.
pub(crate) fn fill_rewrites(rewrites: &mut Vec<Rewrite>, path: &[Hop], reply: bool) {
    let mut n = 0;
    for (i, pair) in path.windows(2).enumerate() {
        let (before, after) = (&pair[0].tuple, &pair[1].tuple);
        for (changed, kind) in [
            (after.src_differs(before), NatKind::Snat),
            (after.dst_differs(before), NatKind::Dnat),
        ] {
            if !changed {
                continue;
            }
            let kind = match (reply, kind) {
                (false, k) => k,
                (true, NatKind::Snat) => NatKind::Dnat,
                (true, NatKind::Dnat) => NatKind::Snat,
            };
            let at = &pair[1].place;
            match rewrites.get_mut(n) {
                Some(r) => {
                    if !Arc::ptr_eq(&r.at.0, &at.0) {
                        r.at = at.clone();
                    }
                    (r.kind, r.reverse, r.hop, r.dir) = (kind, reply, i + 1, pair[1].dir);
                    (r.before, r.after) = (*before, *after);
                }
                None => rewrites.push(Rewrite {
                    kind,
                    reverse: reply,
                    hop: i + 1,
                    at: at.clone(),
                    dir: pair[1].dir,
                    before: *before,
                    after: *after,
                }),
            }
            n += 1;
        }
    }
    rewrites.truncate(n);
}

/// Names the rewrites of a reply after the rule they reverse: its
/// destination is restored by a SNAT's reverse, its source by a DNAT's.
pub(crate) fn orient(j: &mut Journey) {
    if j.side == Side::Reply {
        for r in &mut j.rewrites {
            r.reverse = true;
            r.kind = match r.kind {
                NatKind::Snat => NatKind::Dnat,
                NatKind::Dnat => NatKind::Snat,
            };
        }
    }
}

/// The hop that should follow the journey's last one, if any: see
/// [`Expected`]. `client` is the flow's client address (a reply to a SNATed
/// request reaches an ENI addressed to the node, then goes to that pod).
pub(crate) fn expected_next(j: &Journey, client: Ipv4Addr, places: &Places) -> Option<Expected> {
    let last = j.hops.last()?;
    let node = last.place.node.as_str();
    let dst = last.tuple.dst;
    let local_pod = |ip| places.pod(ip).filter(|p| p.node == node);
    let local_addr = places.eni_addr(dst).is_some_and(|p| p.node == node);
    match (&last.place.role, last.dir) {
        (PlaceRole::PodEth0, Dir::Egress) => places
            .has_veth(node)
            .then(|| Expected::PodVethIngress { node: node.into() }),
        (PlaceRole::PodVeth { .. }, Dir::Ingress) if !local_addr => {
            if let Some(p) = local_pod(dst) {
                Some(Expected::PodVethEgress { place: p.clone() })
            } else {
                places
                    .has_eni(node)
                    .then(|| Expected::EniOrPodVethEgress { node: node.into() })
            }
        }
        (PlaceRole::Eni { .. }, Dir::Egress) => {
            let owner = places.owner_node(dst)?;
            (owner != node && places.has_eni(owner))
                .then(|| Expected::EniIngress { node: owner.into() })
        }
        (PlaceRole::Eni { .. }, Dir::Ingress) => {
            let target = local_pod(dst).or_else(|| {
                (local_addr && j.side == Side::Reply)
                    .then(|| local_pod(client))
                    .flatten()
            })?;
            Some(Expected::PodVethEgress {
                place: target.clone(),
            })
        }
        _ => None,
    }
}

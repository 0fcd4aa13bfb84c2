//! Text a person reads at a glance: one block per flow, one line per hop
//! of a journey. Pure functions from the engine's records to strings.

use std::fmt::Write as _;

use super::{
    flow_model::{Flow, FlowSide, IcmpError, KernelCounters, KernelDrop, Label},
    journey_model::{Expected, Journey, NatKind, Rewrite, Side},
    model::{Hop, Place, PlaceRole, ProtoName, Shared, Tuple, short_pod},
};

/// A hop's short name in a path: `pod-1 veth`, `node-a ens6 (ENI 1)`.
pub fn hop_name(h: &Hop) -> String {
    place_name(&h.place)
}

/// A place's short name, as in a path.
pub fn place_name(p: &Place) -> String {
    match &p.role {
        PlaceRole::PodVeth { pod: Some(pod), .. } => format!("{} veth", short_pod(pod)),
        PlaceRole::PodVeth {
            pod_ip: Some(ip), ..
        } => format!("{ip} veth"),
        PlaceRole::Eni { index: Some(i), .. } => format!("{} {} (ENI {i})", p.node, p.iface),
        PlaceRole::Eni { index: None, .. } => format!("{} {} (ENI)", p.node, p.iface),
        PlaceRole::PodEth0 => format!("{} {} (pod eth0)", p.node, p.iface),
        _ => format!("{} {}", p.node, p.iface),
    }
}

/// The hops as an arrow chain: `pod-1 veth > node-a ens6 (ENI 1) > ...`.
pub fn path(hops: &[Hop]) -> String {
    hops.iter().map(hop_name).collect::<Vec<_>>().join(" > ")
}

/// `+1.234 ms` (exact to the microsecond, no float).
pub fn ms(ns: u64) -> String {
    format!("{}.{:03} ms", ns / 1_000_000, ns / 1_000 % 1_000)
}

/// `512 B`, `24.1 KB`, `3.2 MB` (powers of 1000, like the capture totals).
pub fn bytes(n: u64) -> String {
    if n < 1_000 {
        return format!("{n} B");
    }
    // Rounded to a tenth, in the first unit where that stays under 1000
    // (GB takes whatever is left).
    let (unit, tenths) = [("KB", 1_000), ("MB", 1_000_000), ("GB", 1_000_000_000)]
        .into_iter()
        .map(|(unit, div)| (unit, (n + div / 20) / (div / 10)))
        .find(|&(unit, tenths)| tenths < 10_000 || unit == "GB")
        .expect("GB takes any count");
    format!("{}.{} {unit}", tenths / 10, tenths % 10)
}

/// One side of a flow: `default/pod-1 (192.168.1.21, node-a)`, or the
/// address (with the port for TCP/UDP) when no known pod owns it.
fn endpoint(ip: std::net::Ipv4Addr, port: u16, proto: u8, pod: Option<&Place>) -> String {
    let addr = if matches!(proto, 6 | 17) {
        format!("{ip}:{port}")
    } else {
        ip.to_string()
    };
    match pod {
        Some(p) => format!("{} ({addr}, {})", p.pod().unwrap_or(&p.iface), p.node),
        None => addr,
    }
}

/// What a rewrite changed: `192.168.1.21 -> 192.168.1.5 (icmp id 4711 -> 20946)`.
pub fn rewrite_change(r: &Rewrite) -> String {
    let source = (r.kind == NatKind::Snat) != r.reverse;
    let pick = |t: &Tuple| {
        if source {
            (t.src, t.sport)
        } else {
            (t.dst, t.dport)
        }
    };
    let ((a, ap), (b, bp)) = (pick(&r.before), pick(&r.after));
    match r.before.proto {
        6 | 17 => format!("{a}:{ap} -> {b}:{bp}"),
        1 if ap != bp => format!("{a} -> {b} (icmp id {ap} -> {bp})"),
        _ => format!("{a} -> {b}"),
    }
}

/// `SNAT`, or `un-SNAT` where conntrack undoes it on the reply (as
/// `ping` names it).
pub fn rule(r: &Rewrite) -> String {
    if r.reverse {
        format!("un-{}", r.kind)
    } else {
        r.kind.to_string()
    }
}

/// `SNAT     192.168.1.21 -> 192.168.1.5 (icmp id 4711 -> 20946) seen at node-a ens5 (ENI 0) egress`;
/// the reverse translation is `un-SNAT ... (conntrack, on the reply)`.
/// "Seen at": the first hook after the rewrite, not where netfilter made
/// it (DNAT happens in PREROUTING, before the packet reaches the ENI),
/// named as the path names it (`node-a pod-1 veth`).
pub fn rewrite(r: &Rewrite) -> String {
    let at = match r.at.role {
        PlaceRole::PodVeth { .. } => format!("{} {}", r.at.node, place_name(&r.at)),
        _ => place_name(&r.at),
    };
    format!(
        "{:8} {} seen at {at} {}{}",
        rule(r),
        rewrite_change(r),
        r.dir,
        if r.reverse {
            " (conntrack, on the reply)"
        } else {
            ""
        }
    )
}

/// Where an `asymmetric-eni` flow's directions part: `node-b: request in
/// by ens6 (ENI 1), reply out by ens5 (ENI 0)`, for the first node whose
/// ENIs differ between the two. The ENI line names only the source
/// node's, which may agree.
pub fn asymmetry(f: &Flow) -> Option<String> {
    let node = super::paths::asymmetric_node(&f.request.path, &f.reply.path)?;
    let on = |path: &[Hop]| -> String {
        path.iter()
            .filter(|h| h.place.is_eni() && h.place.node == node)
            .map(|h| {
                let dir = if h.dir == super::model::Dir::Ingress {
                    "in"
                } else {
                    "out"
                };
                match &h.place.role {
                    PlaceRole::Eni { index: Some(i), .. } => {
                        format!("{dir} by {} (ENI {i})", h.place.iface)
                    }
                    _ => format!("{dir} by {}", h.place.iface),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(format!(
        "{node}: request {}, reply {}",
        on(&f.request.path),
        on(&f.reply.path)
    ))
}

/// `icmp port unreachable from 192.168.2.21 (pod-4): pod-4 veth > ...`:
/// what the error says, who sent it (the pod or node, when traced), how
/// many, and the way it went; for an error about a packet no hook saw,
/// that packet in place of the way (the flow's reply path gives it).
pub fn icmp_error(e: &IcmpError) -> String {
    let mtu = e.mtu.map(|m| format!(" (mtu {m})")).unwrap_or_default();
    let sender = match e.sender.as_deref() {
        Some(p) => match p.pod() {
            Some(pod) => format!(" ({})", short_pod(pod)),
            None => format!(" ({} {})", p.node, p.iface),
        },
        None => String::new(),
    };
    let reply = match e.answers {
        Side::Request => "",
        Side::Reply => ", about a reply",
    };
    let times = if e.packets > 1 {
        format!(", {} times", e.packets)
    } else {
        String::new()
    };
    let head = format!("icmp {}{mtu} from {}{sender}{reply}{times}", e.name, e.from);
    if e.quote_unseen {
        format!(
            "{head}, about {}, which podtrace did not see (not traced here, or filtered out)",
            quoted(&e.quote)
        )
    } else {
        format!("{head}: {}", path(&e.path))
    }
}

/// A quoted packet: `udp 192.168.1.11:40000 > 10.0.0.9:53`, `icmp
/// 192.168.1.11 > 192.168.2.21 id 7` (the echo id).
pub fn quoted(t: &Tuple) -> String {
    match t.proto {
        6 | 17 => format!(
            "{} {}:{} > {}:{}",
            ProtoName(t.proto),
            t.src,
            t.sport,
            t.dst,
            t.dport
        ),
        1 if t.sport.max(t.dport) != 0 => {
            format!("icmp {} > {} id {}", t.src, t.dst, t.sport.max(t.dport))
        }
        p => format!("{} {} > {}", ProtoName(p), t.src, t.dst),
    }
}

/// What should have come after the last hop.
pub fn expected(e: &Expected) -> String {
    match e {
        Expected::PodVethIngress { node } => format!("any pod veth ingress of {node}"),
        Expected::EniOrPodVethEgress { node } => {
            format!("any ENI egress or pod veth egress of {node}")
        }
        Expected::EniIngress { node } => format!("any ENI ingress of {node}"),
        Expected::PodVethEgress { place } => format!("{} {} egress", place.node, place.iface),
    }
}

/// One line per hop, time since the first hop, role and addresses; a
/// `^` line under the hop where a rewrite appears; an `x` line when the
/// packet was not seen where expected.
pub fn hops(j: &Journey) -> String {
    let times: Vec<String> = j
        .hops
        .iter()
        .map(|h| format!("+{}", ms(h.since_first_ns)))
        .collect();
    let roles: Vec<String> = j.hops.iter().map(|h| h.place.role.to_string()).collect();
    let w = |f: &dyn Fn(usize) -> usize| (0..j.hops.len()).map(f).max().unwrap_or(0);
    let wt = w(&|i| times[i].len());
    let wn = w(&|i| j.hops[i].place.node.len());
    let wi = w(&|i| j.hops[i].place.iface.len());
    let wr = w(&|i| roles[i].len());
    let mut out = String::new();
    for (i, h) in j.hops.iter().enumerate() {
        let _ = writeln!(
            out,
            "   {:>wt$}  {:wn$}  {:wi$}  {:7}  {:wr$}  {}",
            times[i], h.place.node, h.place.iface, h.dir, roles[i], h.tuple
        );
        for r in j.rewrites.iter().filter(|r| r.hop == i) {
            let how = if r.reverse { " (conntrack)" } else { "" };
            let _ = writeln!(
                out,
                "   {:wt$}  ^ {}{how}  {}",
                "",
                rule(r),
                rewrite_change(r)
            );
        }
    }
    if let Some(inc) = &j.incomplete {
        let _ = writeln!(
            out,
            "   x not seen at {} (expected next hop)",
            expected(&inc.expected)
        );
    }
    out
}

/// A journey: a header line, then [`hops`].
pub fn journey(j: &Journey) -> String {
    let side = match j.side {
        _ if j.quote.is_some() => "error",
        Side::Request => "request",
        Side::Reply => "reply",
    };
    let what = match (j.icmp, j.tcp) {
        (Some(i), _) if i.ty == 8 => format!("icmp echo request seq {}", i.seq),
        (Some(i), _) if i.ty == 0 => format!("icmp echo reply seq {}", i.seq),
        (Some(i), _) => match crate::decode::icmp_name(i.ty, i.code) {
            Some(name) => format!("icmp {name} (type {} code {})", i.ty, i.code),
            None => format!("icmp type {} code {}", i.ty, i.code),
        },
        (None, Some(t)) => format!("tcp [{}] seq {}", crate::decode::tcp_flags(t.flags), t.seq),
        (None, None) => format!("{} id {}", ProtoName(j.proto), j.ip_id),
    };
    let what = match (j.quote, j.icmp) {
        (Some(q), Some(i)) if (i.ty, i.code) == (3, 4) => {
            format!("{what} mtu {} about {}", i.seq, quoted(&q))
        }
        (Some(q), _) => format!("{what} about {}", quoted(&q)),
        (None, _) => what,
    };
    let mut out = format!(
        "flow {} {side}: {what}, {} hops{}{}\n",
        j.flow,
        j.hops.len(),
        if j.probe { ", probe" } else { "" },
        if j.evicted {
            ", cut short (table full)"
        } else {
            ""
        },
    );
    out.push_str(&hops(j));
    out
}

/// The kernel's exact count when merged, with how many of those packets
/// were traced hop by hop (flows mode traces only each flow's first
/// packets); the traced count alone before the kernel's is known.
fn counters(s: &FlowSide) -> String {
    match s.kernel {
        Some(KernelCounters {
            packets, bytes: b, ..
        }) => format!("{packets} pkts {} ({} traced)", bytes(b), s.packets),
        None => format!("{} pkts {}", s.packets, bytes(s.bytes)),
    }
}

/// A kernel drop, for a flow block: `request by the kernel on node-b
/// ens5: NETFILTER_DROP in nft_do_chain+0x3e8 (2 packets)`.
pub fn kernel_drop(d: &KernelDrop) -> String {
    let side = match d.side {
        Side::Request => "request",
        Side::Reply => "reply",
    };
    let on = match (&d.node, &d.iface) {
        (Some(n), Some(i)) => format!(" on {n} ({i})"),
        (Some(n), None) => format!(" on {n}"),
        _ => String::new(),
    };
    let n = if d.packets == 1 {
        "1 packet".to_owned()
    } else {
        format!("{} packets like it", d.packets)
    };
    format!(
        "{side} by the kernel{on}: {}: {} ({n})",
        crate::drops::cause(&d.reason, d.at.as_deref()),
        d.packet
    )
}

/// One line of a flow's final counts: `flow 1  icmp  pod-1 -> pod-3
/// [direct]  request 10 pkts 980 B (4 traced)  reply ...`.
pub fn flow_counters(f: &Flow) -> String {
    let errors = match &f.icmp_error {
        Some(e) => format!("  icmp {} {}", e.name, e.packets),
        None => String::new(),
    };
    let drops = match &f.drop {
        Some(d) => format!("  dropped {}", d.packets),
        None => String::new(),
    };
    format!(
        "{}  request {}  reply {}{errors}{drops}",
        head(f),
        counters(&f.request),
        counters(&f.reply)
    )
}

/// A RST that a firewall made in the server's name: the kernel dropped the
/// request, and a RST came back whose first hop is not a pod's veth (a
/// server's own RST leaves through its veth first). As ping says it.
pub(crate) fn reset_on_the_way(f: &Flow) -> Option<String> {
    const SYN: u32 = 0x02;
    const RST: u32 = 0x04;
    let d = f.drop.as_ref().filter(|d| d.side == Side::Request)?;
    let reply = f.reply.kernel.as_ref()?;
    let first = f.reply.path.first()?;
    // Only where a pod's veth would have been seen: a server that is a
    // pod, whose veth no request reached (it never got the SYN) and no
    // answer left from; and no SYN-ACK ever came (a RST that a server
    // sent later, after a connection, is the server's).
    let server = f.server_pod.as_deref().and_then(|p| match &p.role {
        PlaceRole::PodVeth { pod: Some(pod), .. } => Some(short_pod(pod).to_owned()),
        PlaceRole::PodVeth {
            pod_ip: Some(ip), ..
        } => Some(ip.to_string()),
        _ => None,
    })?;
    let at_a_veth = |h: &Hop| matches!(h.place.role, PlaceRole::PodVeth { .. });
    let request_reached_pod = f.request.path.iter().skip(1).any(at_a_veth);
    if f.tuple.proto != 6
        || reply.tcp_flags & RST == 0
        || reply.tcp_flags & SYN != 0
        || at_a_veth(first)
        || request_reached_pod
    {
        return None;
    }
    Some(format!(
        "a RST in {server}'s name, made on the way: first seen at {} {}, after the request \
         was dropped{}",
        hop_name(first),
        first.dir,
        d.node
            .as_deref()
            .map_or(String::new(), |n| format!(" on {n}"))
    ))
}

/// A flow block's first line: the flow, its endpoints and its labels.
fn head(f: &Flow) -> String {
    let t = &f.tuple;
    // Where the request went: its last hop's destination, or, when the
    // kernel dropped it after a DNAT that no hook saw, the dropped
    // packet's.
    let (server_ip, backend) = match (f.request.path.last(), &f.drop) {
        (Some(h), _) if h.tuple.dst != t.dst => (h.tuple.dst, h.tuple.dport),
        (_, Some(d))
            if d.side == Side::Request && d.tuple.proto == t.proto && d.tuple.dst != t.dst =>
        {
            (d.tuple.dst, d.tuple.dport)
        }
        (Some(h), _) => (h.tuple.dst, h.tuple.dport),
        (None, _) => (t.dst, t.dport),
    };
    let labels: Vec<&str> = f.labels.iter().map(Label::name).collect();
    let mut out = format!(
        "flow {}  {}  {} -> {}",
        f.id,
        t.proto_name(),
        endpoint(t.src, t.sport, t.proto, f.client_pod.as_deref()),
        endpoint(
            t.dst,
            t.dport,
            t.proto,
            f.server_pod.as_deref().filter(|_| server_ip == t.dst)
        ),
    );
    if server_ip != t.dst {
        let _ = write!(
            out,
            " => {}",
            endpoint(server_ip, backend, t.proto, f.server_pod.as_deref())
        );
    }
    let _ = write!(out, "  [{}]", labels.join(", "));
    out
}

/// One block per flow: endpoints, labels, path of each direction, ENIs,
/// rewrites, latency, counters, where an incomplete journey stopped.
pub fn flow(f: &Flow) -> String {
    let mut out = head(f);
    out.push('\n');
    for (name, s) in [("request", &f.request), ("reply", &f.reply)] {
        if !s.path.is_empty() {
            let _ = writeln!(out, "  {name:8} {}", path(&s.path));
        }
    }
    if let Some(e) = &f.icmp_error {
        let _ = writeln!(out, "  error    {}", icmp_error(e));
    }
    if let Some(d) = &f.drop {
        let _ = writeln!(out, "  dropped  {}", kernel_drop(d));
    }
    if let Some(line) = &f.reset_on_the_way {
        let _ = writeln!(out, "  reset    {line}");
    }
    if f.request.path.is_empty() && !f.reply.path.is_empty() {
        // Replies with no request in sight: a server answering a client
        // whose packets came in where no hook saw them, or an answer
        // leaving by a way its request did not come.
        let _ = writeln!(out, "  request  not seen by any traced hook");
    }
    let eni = |e: &Option<Shared<Place>>| e.as_deref().map_or("-".into(), place_name);
    if f.egress_eni.is_some() || f.ingress_eni.is_some() {
        let _ = writeln!(
            out,
            "  ENI      out {}, in {}",
            eni(&f.egress_eni),
            eni(&f.ingress_eni)
        );
    }
    if let Some(a) = asymmetry(f) {
        let _ = writeln!(out, "  ENI      asymmetric on {a}");
    }
    for r in f.rewrites() {
        let _ = writeln!(out, "  {}", rewrite(r));
    }
    // What conntrack changed on the error is what the client reads in it.
    for r in f
        .icmp_error
        .iter()
        .filter(|e| !e.quote_unseen)
        .flat_map(|e| &e.rewrites)
    {
        let line = rewrite(r).replace("(conntrack, on the reply)", "(conntrack, on the error)");
        let _ = writeln!(out, "  {line}");
    }
    for (name, s) in [("request", &f.request), ("reply", &f.reply)] {
        let l = &s.latency;
        let mut parts = Vec::new();
        if let Some(ns) = l.veth_to_eni_ns {
            parts.push(format!("pod veth > ENI {}", ms(ns)));
        }
        if let Some(ns) = l.eni_to_veth_ns {
            parts.push(format!("ENI > pod veth {}", ms(ns)));
        }
        if s.path.len() > 1 {
            parts.push(format!("first > last hop {}", ms(l.total_ns)));
            let _ = writeln!(out, "  latency  {name}: {}", parts.join(", "));
        }
    }
    let _ = writeln!(
        out,
        "  counters request {}, reply {}",
        counters(&f.request),
        counters(&f.reply)
    );
    for (name, s) in [("request", &f.request), ("reply", &f.reply)] {
        if let Some(inc) = &s.incomplete {
            let h = &inc.last_seen;
            let _ = writeln!(
                out,
                "  lost     {name} last seen at {} {} {}; not seen at {}",
                h.place.node,
                h.place.iface,
                h.dir,
                expected(&inc.expected)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::{
        Config, IcmpInfo,
        testkit::{cross_node_ping, run, snat_ping},
    };

    #[test]
    fn path_is_an_arrow_chain_across_nodes() {
        let (_, seen) = run(Config::default(), &cross_node_ping());
        assert_eq!(
            path(&seen.journeys[0].hops),
            "pod-1 veth > node-a ens5 (ENI 0) > node-b ens5 (ENI 0) > pod-3 veth"
        );
    }

    #[test]
    fn a_flow_seen_only_by_its_replies_says_so() {
        let (_, seen) = run(Config::default(), &cross_node_ping());
        let mut f = seen.last_flows()[0].clone();
        f.request.path.clear();
        let block = flow(&f);
        assert!(
            block.contains("\n  request  not seen by any traced hook\n"),
            "{block}"
        );
        assert!(block.contains("\n  reply    "), "{block}");
    }

    #[test]
    fn a_reset_is_made_on_the_way_only_past_a_dropped_request() {
        let (_, seen) = run(Config::default(), &cross_node_ping());
        let mut f = seen.last_flows()[0].clone();
        f.tuple.proto = 6;
        f.reply.kernel = Some(KernelCounters {
            packets: 1,
            bytes: 54,
            first_ns: 0,
            last_ns: 0,
            tcp_flags: 0x14,
        });
        // The server's own RST leaves through its veth: no line.
        f.drop = Some(KernelDrop {
            side: Side::Request,
            reason: "NETFILTER_DROP".into(),
            code: 9,
            at: None,
            node: Some("node-b".into()),
            iface: Some("ens5".into()),
            packet: String::new(),
            tuple: f.tuple,
            packets: 1,
            ts_ns: 0,
        });
        assert_eq!(reset_on_the_way(&f), None);
        // First seen at node-b's ENI, after the SYN was dropped there,
        // short of pod-3's veth.
        f.reply.path.remove(0);
        let reached = f.clone();
        assert_eq!(reset_on_the_way(&reached), None, "the SYN got to the pod");
        f.request.path.truncate(3);
        assert_eq!(
            reset_on_the_way(&f).as_deref(),
            Some(
                "a RST in pod-3's name, made on the way: first seen at node-b ens5 (ENI 0) \
                 egress, after the request was dropped on node-b"
            )
        );
        // A server that is no pod (outside, or on an untraced node) has no
        // veth to tell its own RST by; a SYN-ACK means a connection.
        let mut outside = f.clone();
        outside.server_pod = None;
        assert_eq!(reset_on_the_way(&outside), None);
        let mut connected = f.clone();
        if let Some(k) = connected.reply.kernel.as_mut() {
            k.tcp_flags |= 0x12;
        }
        assert_eq!(reset_on_the_way(&connected), None);
        // No drop, or no RST: no line.
        let mut no_rst = f.clone();
        if let Some(k) = no_rst.reply.kernel.as_mut() {
            k.tcp_flags = 0x12;
        }
        assert_eq!(reset_on_the_way(&no_rst), None);
        f.drop = None;
        assert_eq!(reset_on_the_way(&f), None);
    }

    #[test]
    fn an_icmp_error_journey_is_named() {
        let mut j = Journey {
            proto: 1,
            icmp: Some(IcmpInfo {
                ty: 3,
                code: 3,
                seq: 0,
            }),
            ..Journey::default()
        };
        assert!(
            journey(&j)
                .starts_with("flow 0 request: icmp port unreachable (type 3 code 3), 0 hops"),
            "{}",
            journey(&j)
        );
        j.icmp = Some(IcmpInfo {
            ty: 42,
            code: 1,
            seq: 0,
        });
        assert!(journey(&j).starts_with("flow 0 request: icmp type 42 code 1,"));
    }

    #[test]
    fn snat_journey_and_flow_read_at_a_glance() {
        let (_, seen) = run(Config::default(), &snat_ping());
        assert_eq!(
            hops(&seen.journeys[0]),
            "   +0.000 ms  node-a  eni-pod-1  ingress  pod veth of pod-1  192.168.1.21 > 203.0.113.10
   +0.015 ms  node-a  ens5       egress   ENI 0 (primary)    192.168.1.5 > 203.0.113.10
              ^ SNAT  192.168.1.21 -> 192.168.1.5 (icmp id 4711 -> 20946)
"
        );
        assert!(
            journey(&seen.journeys[1]).starts_with("flow 1 reply: icmp echo reply seq 1, 2 hops\n")
        );
        assert_eq!(
            flow(&seen.last_flows()[0]),
            "flow 1  icmp  default/pod-1 (192.168.1.21, node-a) -> 203.0.113.10  [snat]
  request  pod-1 veth > node-a ens5 (ENI 0)
  reply    node-a ens5 (ENI 0) > pod-1 veth
  ENI      out node-a ens5 (ENI 0), in node-a ens5 (ENI 0)
  SNAT     192.168.1.21 -> 192.168.1.5 (icmp id 4711 -> 20946) seen at node-a ens5 (ENI 0) egress
  un-SNAT  192.168.1.5 -> 192.168.1.21 (icmp id 20946 -> 4711) seen at node-a pod-1 veth egress (conntrack, on the reply)
  latency  request: pod veth > ENI 0.015 ms, first > last hop 0.015 ms
  latency  reply: ENI > pod veth 0.012 ms, first > last hop 0.012 ms
  counters request 1 pkts 98 B, reply 1 pkts 98 B
"
        );
    }

    #[test]
    fn lost_packet_says_where_it_was_last_seen() {
        let (_, seen) = run(Config::default(), &cross_node_ping()[..3]);
        let text = hops(&seen.journeys[0]);
        assert!(
            text.ends_with("   x not seen at node-b eni-pod-3 egress (expected next hop)\n"),
            "{text}"
        );
        let block = flow(&seen.last_flows()[0]);
        assert!(block.contains("[direct, incomplete]"), "{block}");
        assert!(
            block.contains(
                "  lost     request last seen at node-b ens5 ingress; not seen at node-b eni-pod-3 egress\n"
            ),
            "{block}"
        );
    }

    #[test]
    fn units() {
        assert_eq!(ms(1_234_567), "1.234 ms");
        assert_eq!(ms(999), "0.000 ms");
        assert_eq!(bytes(999), "999 B");
        // Rounded to the nearest tenth, as the exit totals are.
        assert_eq!(bytes(24_140), "24.1 KB");
        assert_eq!(bytes(24_150), "24.2 KB");
        assert_eq!(bytes(3_250_000), "3.3 MB");
    }
}

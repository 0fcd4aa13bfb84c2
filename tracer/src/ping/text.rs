//! `podtrace ping` as text a network engineer reads at a glance.

use std::fmt::Write as _;

use super::report::{Endpoint, HopView, Leg, Nat, ProbeView, Summary};

/// `default/pod-1 (192.168.1.21, node-a)`, or just the IP.
pub fn endpoint(e: &Endpoint) -> String {
    let ip = e.ip.as_deref().unwrap_or("?");
    match (&e.pod, &e.namespace, &e.node) {
        (Some(p), Some(ns), Some(n)) => format!("{ns}/{p} ({ip}, {n})"),
        (Some(p), Some(ns), None) => format!("{ns}/{p} ({ip})"),
        _ => ip.to_owned(),
    }
}

/// The heading line.
pub fn heading(src: &Endpoint, dst: &Endpoint, proto: &str) -> String {
    format!("PING {} -> {}  {proto}\n", endpoint(src), endpoint(dst))
}

fn hop_line(out: &mut String, h: &HopView, widths: (usize, usize, usize)) {
    let _ = writeln!(
        out,
        "   +{:.3} ms  {:<w0$}  {:<w1$}  {:<7}  {:<w2$}  {} > {}",
        h.t_us / 1000.0,
        h.node,
        h.iface,
        h.dir,
        h.role_label,
        h.src,
        h.dst,
        w0 = widths.0,
        w1 = widths.1,
        w2 = widths.2,
    );
    for nat in &h.rewrites {
        let (what, change) = rewrite(nat);
        let _ = writeln!(out, "              ^ {what}  {change}");
    }
}

/// What a rewrite was (`SNAT`; on the way back, `un-SNAT (conntrack)`:
/// conntrack undoing the request's) and what it changed
/// (`192.168.1.21 -> 192.168.1.5 (icmp id 4711 -> 20946)`).
fn rewrite(nat: &Nat) -> (String, String) {
    let rule = if nat.kind == "snat" { "SNAT" } else { "DNAT" };
    let what = if nat.reverse {
        format!("un-{rule} (conntrack)")
    } else {
        rule.to_owned()
    };
    let id = nat
        .icmp_id
        .map_or_else(String::new, |[a, b]| format!(" (icmp id {a} -> {b})"));
    (what, format!("{} -> {}{id}", nat.from, nat.to))
}

/// The block of one probe. `same_as` is the previous probe's path, to say
/// "(same path)" instead of repeating identical hops.
pub fn probe(p: &ProbeView, previous: Option<&ProbeView>) -> String {
    let mut out = String::new();
    match p.rtt_us {
        Some(rtt) => {
            let _ = write!(out, "seq={}  rtt {:.2} ms", p.seq, rtt / 1000.0);
        }
        None => {
            let _ = write!(out, "seq={}  no reply", p.seq);
        }
    }
    if let Some(r) = &p.reply {
        let _ = write!(out, "  ({r})");
    }
    if previous.is_some_and(|q| same_path(p, q)) && !p.hops.is_empty() {
        out.push_str("  (same path)\n");
        // The kernel's reason may differ from the previous probe's.
        drop_lines(&mut out, p);
        return out;
    }
    out.push('\n');
    let w = |f: fn(&HopView) -> usize| p.hops.iter().map(f).max().unwrap_or(0);
    let widths = (
        w(|h| h.node.len()),
        w(|h| h.iface.len()),
        w(|h| h.role_label.len()),
    );
    let requests: Vec<&HopView> = p.hops.iter().filter(|h| h.leg == Leg::Request).collect();
    for h in &requests {
        hop_line(&mut out, h, widths);
    }
    let replies: Vec<&HopView> = p.hops.iter().filter(|h| h.leg == Leg::Reply).collect();
    if !replies.is_empty() {
        let _ = writeln!(out, "   reply:");
        for h in replies {
            hop_line(&mut out, h, widths);
        }
    }
    // A probe that an ICMP error answered says so in its first line; one
    // the kernel dropped, here, with the reason (and an error that was
    // dropped on its way back, after its line).
    if !drop_lines(&mut out, p) && p.rtt_us.is_none() && p.reply.is_none() {
        let last_reply = p.hops.iter().rev().find(|h| h.leg == Leg::Reply);
        match requests.last() {
            // A reply was traced, but the sender did not get it in time.
            Some(_) if let Some(r) = last_reply => {
                let _ = writeln!(
                    out,
                    "   x reply last seen at {} {} {}: not received within the timeout (-W)",
                    r.node, r.iface, r.dir
                );
            }
            Some(last) if last.hands_to_pod() && requests.len() > 1 => {
                let _ = writeln!(
                    out,
                    "   x delivered to the pod at {} {}; no answer came back",
                    last.node, last.iface
                );
            }
            Some(last) => {
                let _ = writeln!(
                    out,
                    "   x request not seen after {} {} {}",
                    last.node, last.iface, last.dir
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "   x no hook saw the request (is SRC on a traced node?)"
                );
            }
        }
    }
    out
}

/// The kernel's drops of a lost probe and of its answer, a line each;
/// false when there are none.
fn drop_lines(out: &mut String, p: &ProbeView) -> bool {
    if p.rtt_us.is_some() || p.drop.is_none() {
        return false;
    }
    for d in p.drop.iter().chain(&p.answer_drop) {
        let _ = writeln!(out, "   x {}", d.says(&p.hops));
    }
    true
}

fn same_path(a: &ProbeView, b: &ProbeView) -> bool {
    let key = |p: &ProbeView| -> Vec<(String, String, &'static str, String, String)> {
        p.hops
            .iter()
            .map(|h| {
                (
                    h.node.clone(),
                    h.iface.clone(),
                    h.dir,
                    h.src.clone(),
                    h.dst.clone(),
                )
            })
            .collect()
    };
    a.rtt_us.is_some() == b.rtt_us.is_some() && key(a) == key(b)
}

/// The request's rewrites over all probes, with the hop each appears at.
fn request_rewrites(probes: &[ProbeView]) -> impl Iterator<Item = (&HopView, &Nat)> {
    probes
        .iter()
        .flat_map(|p| &p.hops)
        .filter(|h| h.leg == Leg::Request)
        .flat_map(|h| h.rewrites.iter().map(move |n| (h, n)))
}

/// `SNAT 192.168.1.21 -> 192.168.1.5 at node-a ens5 egress; {why}`, from
/// the first probe's SNAT, with the port or ICMP id it was given.
fn snat_line(probes: &[ProbeView], why: &str) -> String {
    match request_rewrites(probes).find(|(_, n)| n.kind == "snat") {
        Some((h, n)) => format!(
            "SNAT {} at {} {} {}; {why}",
            rewrite(n).1,
            h.node,
            h.iface,
            h.dir
        ),
        None => "SNAT ?".to_owned(),
    }
}

/// The summary block: verdict in words, then loss and rtt like ping(8).
pub fn summary(s: &Summary, probes: &[ProbeView], src_node: Option<&str>, dst_pod: bool) -> String {
    let mut out = String::from("--- summary ---\n");
    let node = src_node.unwrap_or("the source node");
    let eni = s
        .egress_eni
        .as_ref()
        .map_or_else(String::new, |e| format!("; leaves {node} via {e}"));
    let verdict = match s.path {
        "direct" if dst_pod => format!("direct pod-to-pod: no NAT, no encapsulation{eni}"),
        "direct" => format!("direct: no NAT, no encapsulation{eni}"),
        "snat" => snat_line(probes, "the pod IP never leaves the node"),
        "dnat" => {
            let from = request_rewrites(probes)
                .find(|(_, n)| n.kind == "dnat")
                .map_or("?", |(_, n)| n.from.as_str());
            let leaves = |b: &super::report::Backend| {
                let way = match &b.egress_eni {
                    Some(e) => format!("leaves {node} via {e}"),
                    None if b.same_node => format!("stays on {node}"),
                    None => String::new(),
                };
                match (b.dropped, way.is_empty()) {
                    (0, _) => way,
                    (n, true) => format!("{n} dropped on the way"),
                    (n, false) => format!("{way}, {n} dropped on the way"),
                }
            };
            let dnat = match s.backends.as_slice() {
                [] => format!("DNAT {from} -> ?{eni}"),
                [b] => {
                    let l = leaves(b);
                    let sep = if l.is_empty() { "" } else { "; " };
                    format!("DNAT {from} -> {}{sep}{l}", b.to)
                }
                many => {
                    let each: Vec<String> = many
                        .iter()
                        .map(|b| {
                            let n = if b.probes == 1 { "probe" } else { "probes" };
                            let l = leaves(b);
                            let sep = if l.is_empty() { "" } else { ", " };
                            format!("{} ({} {n}{sep}{l})", b.to, b.probes)
                        })
                        .collect();
                    format!(
                        "DNAT {from} to {} backends: {}",
                        many.len(),
                        each.join("; ")
                    )
                }
            };
            // A call that DNAT sent back to the caller's own pod is also
            // SNATed, so that the reply comes back through conntrack.
            if s.snat_to.is_some() {
                format!(
                    "{dnat}\n{}",
                    snat_line(probes, "DNAT sent it back to the calling pod")
                )
            } else {
                dnat
            }
        }
        _ => "path unknown: no hook saw the probes".to_owned(),
    };
    let _ = writeln!(out, "{verdict}");
    if let Some(lost) = &s.lost_at {
        // Of the first probe lost; when others were answered, how many.
        if s.received > 0 {
            let n = s.sent - s.received;
            let probes = if n == 1 { "probe" } else { "probes" };
            let _ = writeln!(out, "{n} {probes} lost; the first: {lost}");
        } else {
            let _ = writeln!(out, "no reply: {lost}");
        }
    }
    if let Some(reset) = &s.reset_on_the_way {
        let _ = writeln!(out, "refused on the way: {reset}");
    }
    let (sent, received) = (s.sent, s.received);
    #[expect(clippy::cast_precision_loss, reason = "percentages for display")]
    let loss = if sent == 0 {
        0.0
    } else {
        100.0 * (sent - received) as f64 / sent as f64
    };
    // A RST forged on the way is an answer, but not the pod's.
    let forged = probes
        .iter()
        .filter(|p| p.reset_on_the_way.is_some())
        .count();
    let forged = if forged > 0 {
        format!(" ({forged} reset on the way)")
    } else {
        String::new()
    };
    let _ = write!(
        out,
        "{sent} sent, {received} received{forged}, {loss:.0}% loss"
    );
    if let Some(r) = s.rtt_us {
        let _ = write!(
            out,
            ", rtt min/avg/max {:.2}/{:.2}/{:.2} ms",
            r.min / 1000.0,
            r.avg / 1000.0,
            r.max / 1000.0
        );
    }
    out.push('\n');
    out
}

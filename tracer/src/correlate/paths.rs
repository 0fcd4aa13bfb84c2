//! What a flow's paths say: the client's view of the request, latency
//! between hops, the home node's ENIs, and the labels.

use std::sync::Arc;

use super::{
    flow_model::{Flow, Label, Labels, Latency},
    journey::MAX_HOPS,
    journey_model::{NatKind, Side},
    model::{Dir, Hop, Place, Shared, Tuple},
};

/// The request tuple as the client sent it: at the client pod's veth
/// ingress, else at the first hop of a request (last hop of a reply).
pub(crate) fn client_view(hops: &[Hop], side: Side) -> Tuple {
    match side {
        Side::Request => hops
            .iter()
            .find(|h| h.place.is_pod_veth() && h.dir == Dir::Ingress)
            .or(hops.first())
            .map(|h| h.tuple)
            .unwrap_or_default(),
        Side::Reply => hops
            .iter()
            .rev()
            .find(|h| h.place.is_pod_veth() && h.dir == Dir::Egress)
            .or(hops.last())
            .map(|h| h.tuple.reversed())
            .unwrap_or_default(),
    }
}

pub(crate) fn latency(hops: &[Hop]) -> Latency {
    let span = |from: &dyn Fn(&Hop) -> bool, to: &dyn Fn(&Hop) -> bool| {
        let (i, a) = hops.iter().enumerate().find(|(_, h)| from(h))?;
        let b = hops[i + 1..]
            .iter()
            .find(|h| h.place.node == a.place.node && to(h))?;
        Some(b.ts_ns.saturating_sub(a.ts_ns))
    };
    Latency {
        total_ns: match (hops.first(), hops.last()) {
            (Some(a), Some(b)) => b.ts_ns.saturating_sub(a.ts_ns),
            _ => 0,
        },
        veth_to_eni_ns: span(&|h| h.place.is_pod_veth() && h.dir == Dir::Ingress, &|h| {
            h.place.is_eni() && h.dir == Dir::Egress
        }),
        eni_to_veth_ns: span(&|h| h.place.is_eni() && h.dir == Dir::Ingress, &|h| {
            h.place.is_pod_veth() && h.dir == Dir::Egress
        }),
    }
}

/// Recomputes the home node's ENIs and the labels from the paths. Leaves
/// an ENI that did not change alone: no allocation, no reference count.
pub(crate) fn summarize(f: &mut Flow) {
    {
        let home = f
            .request
            .path
            .first()
            .or(f.reply.path.last())
            .map(|h| h.place.node.as_str());
        fn eni<'a>(
            paths: [&'a [Hop]; 2],
            dir: Dir,
            home: Option<&str>,
        ) -> Option<&'a Shared<Place>> {
            paths
                .into_iter()
                .flatten()
                .find(|h| h.place.is_eni() && h.dir == dir && Some(h.place.node.as_str()) == home)
                .map(|h| &h.place)
        }
        // An ICMP error went where a reply would have, when no reply or
        // request did.
        let error = f.icmp_error.as_ref().map_or(&[][..], |e| &e.path[..]);
        let egress = eni([&f.request.path, &f.reply.path], Dir::Egress, home)
            .or_else(|| eni([error, &[]], Dir::Egress, home));
        let ingress = eni([&f.reply.path, &f.request.path], Dir::Ingress, home)
            .or_else(|| eni([error, &[]], Dir::Ingress, home));
        // The paths are borrowed: only what changed is cloned, then set.
        let (e, i) = (
            changed(&f.egress_eni, egress),
            changed(&f.ingress_eni, ingress),
        );
        if let Some(e) = e {
            f.egress_eni = e;
        }
        if let Some(i) = i {
            f.ingress_eni = i;
        }
    }
    let mut labels = Labels::default();
    // A request dropped after a DNAT that no hook saw: the drop alone
    // shows the rewritten destination.
    if let (Some(d), Some(last)) = (&f.drop, f.request.path.last())
        && d.side == Side::Request
        && (d.tuple.dst, d.tuple.dport) != (last.tuple.dst, last.tuple.dport)
        && d.tuple.src == last.tuple.src
    {
        labels.insert(Label::Dnat);
    }
    for r in f.rewrites() {
        labels.insert(match r.kind {
            NatKind::Snat => Label::Snat,
            NatKind::Dnat => Label::Dnat,
        });
    }
    if labels.is_empty() && !encapsulation(&f.tuple) {
        labels.insert(Label::Direct);
    }
    if asymmetric(&f.request.path, &f.reply.path) {
        labels.insert(Label::AsymmetricEni);
    }
    if f.request.incomplete.is_some() || f.reply.incomplete.is_some() {
        labels.insert(Label::Incomplete);
    }
    if f.icmp_error.is_some() {
        labels.insert(Label::IcmpError);
    }
    if f.drop.is_some() {
        labels.insert(Label::Dropped);
    }
    f.labels = labels;
}

/// `Some(new)`, cloned, unless `cur` already holds that very place.
fn changed(
    cur: &Option<Shared<Place>>,
    new: Option<&Shared<Place>>,
) -> Option<Option<Shared<Place>>> {
    match (cur, new) {
        (Some(a), Some(b)) if Arc::ptr_eq(&a.0, &b.0) => None,
        (None, None) => None,
        _ => Some(new.cloned()),
    }
}

fn encapsulation(t: &Tuple) -> bool {
    const TUNNEL_PORTS: [u16; 3] = [4789, 8472, 6081]; // VXLAN, flannel VXLAN, Geneve
    matches!(t.proto, 4 | 41 | 47)
        || (t.proto == 17 && (TUNNEL_PORTS.contains(&t.dport) || TUNNEL_PORTS.contains(&t.sport)))
}

/// True if on some node both directions crossed ENIs, but not the same set.
fn asymmetric(req: &[Hop], rep: &[Hop]) -> bool {
    asymmetric_node(req, rep).is_some()
}

/// The first node on which both directions crossed ENIs, but not the same
/// set (what makes a flow `asymmetric-eni`).
pub(crate) fn asymmetric_node<'a>(req: &'a [Hop], rep: &'a [Hop]) -> Option<&'a str> {
    fn enis(p: &[Hop]) -> SmallSet<'_> {
        p.iter().filter(|h| h.place.is_eni()).collect()
    }
    let (a, b) = (enis(req), enis(rep));
    let lacks = |h: &Hop, y: &SmallSet| {
        y.iter().any(|o| o.place.node == h.place.node) && !y.iter().any(|o| same_iface(o, h))
    };
    a.iter()
        .find(|h| lacks(h, &b))
        .or_else(|| b.iter().find(|h| lacks(h, &a)))
        .map(|h| h.place.node.as_str())
}

fn same_iface(a: &Hop, b: &Hop) -> bool {
    (a.place.netns_cookie, a.place.ifindex) == (b.place.netns_cookie, b.place.ifindex)
}

/// ENI hops of one path, on the stack.
struct SmallSet<'a> {
    items: [Option<&'a Hop>; MAX_HOPS],
}

impl<'a> SmallSet<'a> {
    fn iter(&self) -> impl Iterator<Item = &'a Hop> + '_ {
        self.items.iter().flatten().copied()
    }
}

impl<'a> FromIterator<&'a Hop> for SmallSet<'a> {
    fn from_iter<I: IntoIterator<Item = &'a Hop>>(iter: I) -> Self {
        let mut items = [None; MAX_HOPS];
        for (slot, h) in items.iter_mut().zip(iter) {
            *slot = Some(h);
        }
        Self { items }
    }
}

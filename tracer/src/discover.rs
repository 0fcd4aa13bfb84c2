//! Which interfaces of a namespace to hook, and what each one is.
//!
//! [`snapshot`] reads links, IPv4 addresses and routes through netlink from
//! inside the namespace (the edge); [`classify`] turns that snapshot into
//! roles (pure, unit-tested): pod veths are the targets of per-pod /32 host
//! routes or veths whose peer lives in another netns; ENIs are interfaces
//! holding an address that are not pod veths (in the lab these are veths
//! too, so the device type alone decides nothing).

use std::net::Ipv4Addr;

use futures_util::TryStreamExt as _;
use rtnetlink::{
    RouteMessageBuilder,
    packet_route::{
        address::AddressAttribute,
        link::{InfoKind, LinkAttribute, LinkInfo},
        route::{RouteAddress, RouteAttribute},
    },
};

use crate::{netns::Netns, topology::Role};

/// One link as netlink describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub ifindex: u32,
    /// Interface name.
    pub name: String,
    /// `veth`, `bridge`, ... (None for physical devices).
    pub kind: Option<String>,
    /// Set when the peer/lower device lives in another netns.
    pub peer_netnsid: Option<i32>,
    /// IPv4 addresses with prefix length, in netlink order (primary first).
    pub addrs: Vec<(Ipv4Addr, u8)>,
    /// Loopback device.
    pub loopback: bool,
}

/// One IPv4 route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix (0.0.0.0 for default).
    pub dst: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// Output interface.
    pub oif: Option<u32>,
    /// Gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Routing table id.
    pub table: u32,
}

/// Everything [`classify`] needs about one namespace.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Links.
    pub links: Vec<Link>,
    /// IPv4 routes of every table.
    pub routes: Vec<Route>,
}

/// The main routing table's id.
const RT_TABLE_MAIN: u32 = 254;
/// The local table (addresses of this host), ignored.
const RT_TABLE_LOCAL: u32 = 255;

/// Reads the namespace's links, addresses and routes through netlink.
pub async fn snapshot(ns: &Netns) -> anyhow::Result<Snapshot> {
    // The socket binds to the namespace the thread is in when it is made.
    let (conn, handle, _) = ns.run(rtnetlink::new_connection)??;
    let task = tokio::spawn(conn);
    let result = read_all(&handle).await;
    task.abort();
    result
}

async fn read_all(handle: &rtnetlink::Handle) -> anyhow::Result<Snapshot> {
    let mut snap = Snapshot::default();
    let mut links = handle.link().get().execute();
    while let Some(msg) = links.try_next().await? {
        let mut link = Link {
            ifindex: msg.header.index,
            loopback: msg
                .header
                .flags
                .contains(rtnetlink::packet_route::link::LinkFlags::Loopback),
            ..Link::default()
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n,
                LinkAttribute::LinkNetNsId(id) => link.peer_netnsid = Some(id),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = Some(kind_name(&kind));
                        }
                    }
                }
                _ => {}
            }
        }
        snap.links.push(link);
    }
    let mut addrs = handle.address().get().execute();
    while let Some(msg) = addrs.try_next().await? {
        let ip = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(std::net::IpAddr::V4(ip))
            | AddressAttribute::Address(std::net::IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        if let (Some(ip), Some(link)) = (
            ip,
            snap.links
                .iter_mut()
                .find(|l| l.ifindex == msg.header.index),
        ) && !link.addrs.iter().any(|(a, _)| *a == ip)
        {
            link.addrs.push((ip, msg.header.prefix_len));
        }
    }
    let mut routes = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(msg) = routes.try_next().await? {
        let mut r = Route {
            dst: Ipv4Addr::UNSPECIFIED,
            prefix: msg.header.destination_prefix_length,
            oif: None,
            gateway: None,
            table: u32::from(msg.header.table),
        };
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => r.dst = *ip,
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => r.gateway = Some(*ip),
                RouteAttribute::Oif(i) => r.oif = Some(*i),
                RouteAttribute::Table(t) => r.table = *t,
                _ => {}
            }
        }
        if r.table != RT_TABLE_LOCAL {
            snap.routes.push(r);
        }
    }
    Ok(snap)
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Veth => "veth".into(),
        InfoKind::Bridge => "bridge".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// What to hook in a namespace: each interface with its role.
pub fn classify(snap: &Snapshot) -> Vec<(Link, Role)> {
    let mut out = Vec::new();
    for link in &snap.links {
        if link.loopback || !hookable_kind(link.kind.as_deref()) {
            continue;
        }
        // A pod's own eth0 first: its `169.254.1.1 dev eth0` route is a /32
        // through it too, but it holds the pod's address.
        if is_pod_eth0(link, snap) {
            out.push((link.clone(), Role::PodEth0));
            continue;
        }
        // A per-pod host route: `<podIP> dev eniXXX scope link` (a /32 in
        // the main table through an interface without that address; never
        // a link-local gateway).
        let pod_ip = snap
            .routes
            .iter()
            .find(|r| {
                r.table == RT_TABLE_MAIN
                    && r.prefix == 32
                    && r.oif == Some(link.ifindex)
                    && r.gateway.is_none()
                    && !r.dst.is_link_local()
                    && !link.addrs.iter().any(|(a, _)| *a == r.dst)
            })
            .map(|r| r.dst);
        let is_veth = link.kind.as_deref() == Some("veth");
        if pod_ip.is_some() || (is_veth && link.peer_netnsid.is_some() && link.addrs.is_empty()) {
            out.push((link.clone(), Role::PodVeth { pod_ip, pod: None }));
        } else if !link.addrs.is_empty() {
            let index = eni_index(link, snap);
            let addrs = link.addrs.iter().map(|(a, _)| *a).collect();
            out.push((link.clone(), Role::Eni { index, addrs }));
        }
    }
    out
}

fn hookable_kind(kind: Option<&str>) -> bool {
    // Physical NICs have no kind; the lab and most CNIs use veths; ipvlan
    // and vlan carry pod traffic on some setups. Bridges, tunnels and
    // dummies are not hooks of the VPC CNI data path.
    matches!(kind, None | Some("veth" | "ipvlan" | "macvlan" | "vlan"))
}

/// A pod's own interface: a /32 address and a default route via 169.254.1.1.
fn is_pod_eth0(link: &Link, snap: &Snapshot) -> bool {
    let link_local_gw = Ipv4Addr::new(169, 254, 1, 1);
    link.addrs.iter().any(|(_, p)| *p == 32)
        && snap.routes.iter().any(|r| {
            r.prefix == 0 && r.oif == Some(link.ifindex) && r.gateway == Some(link_local_gw)
        })
}

/// Device index of an ENI: from a per-ENI policy table (`default via gw dev
/// ensN` in table index+1, as the CNI builds them), else from the name
/// (ensN: N-5 on Nitro, ethN: N), else 0 for the interface that carries the
/// main table's default route.
fn eni_index(link: &Link, snap: &Snapshot) -> Option<u32> {
    if let Some(r) = snap.routes.iter().find(|r| {
        r.prefix == 0
            && r.oif == Some(link.ifindex)
            && r.table != RT_TABLE_MAIN
            && (2..=64).contains(&r.table)
    }) {
        return Some(r.table - 1);
    }
    let num = |prefix: &str| link.name.strip_prefix(prefix)?.parse::<u32>().ok();
    if let Some(n) = num("ens").filter(|n| *n >= 5) {
        return Some(n - 5);
    }
    if let Some(n) = num("eth") {
        return Some(n);
    }
    snap.routes
        .iter()
        .any(|r| r.prefix == 0 && r.table == RT_TABLE_MAIN && r.oif == Some(link.ifindex))
        .then_some(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(ifindex: u32, name: &str, kind: Option<&str>, addrs: &[(Ipv4Addr, u8)]) -> Link {
        Link {
            ifindex,
            name: name.into(),
            kind: kind.map(Into::into),
            addrs: addrs.to_vec(),
            ..Link::default()
        }
    }

    fn route(dst: [u8; 4], prefix: u8, oif: u32, gw: Option<[u8; 4]>, table: u32) -> Route {
        Route {
            dst: dst.into(),
            prefix,
            oif: Some(oif),
            gateway: gw.map(Into::into),
            table,
        }
    }

    /// A node as the VPC CNI builds it: ens5, ens6 (both veths in the lab),
    /// two pod veths, per-pod /32 routes, table 2 for ens6.
    fn node() -> Snapshot {
        let mut lo = link(1, "lo", None, &[([127, 0, 0, 1].into(), 8)]);
        lo.loopback = true;
        let mut pod_b = link(6, "eni9c0d5e77a1b", Some("veth"), &[]);
        pod_b.peer_netnsid = Some(3);
        Snapshot {
            links: vec![
                lo,
                link(2, "ens5", Some("veth"), &[([192, 168, 1, 5].into(), 24)]),
                link(3, "ens6", Some("veth"), &[([192, 168, 1, 6].into(), 24)]),
                link(
                    4,
                    "docker0",
                    Some("bridge"),
                    &[([172, 17, 0, 1].into(), 16)],
                ),
                link(5, "eni3b1f0a9c2d4", Some("veth"), &[]),
                pod_b,
            ],
            routes: vec![
                route([0, 0, 0, 0], 0, 2, Some([192, 168, 1, 1]), RT_TABLE_MAIN),
                route([192, 168, 1, 21], 32, 5, None, RT_TABLE_MAIN),
                route([0, 0, 0, 0], 0, 3, Some([192, 168, 1, 1]), 2),
            ],
        }
    }

    #[test]
    fn node_roles() {
        let roles: Vec<(String, Role)> = classify(&node())
            .into_iter()
            .map(|(l, r)| (l.name, r))
            .collect();
        assert_eq!(
            roles,
            vec![
                (
                    "ens5".into(),
                    Role::Eni {
                        index: Some(0),
                        addrs: vec![[192, 168, 1, 5].into()]
                    }
                ),
                (
                    "ens6".into(),
                    Role::Eni {
                        index: Some(1),
                        addrs: vec![[192, 168, 1, 6].into()]
                    }
                ),
                (
                    "eni3b1f0a9c2d4".into(),
                    Role::PodVeth {
                        pod_ip: Some([192, 168, 1, 21].into()),
                        pod: None
                    }
                ),
                (
                    "eni9c0d5e77a1b".into(),
                    Role::PodVeth {
                        pod_ip: None,
                        pod: None
                    }
                ),
            ]
        );
    }

    #[test]
    fn eni_index_from_main_default_route_when_name_says_nothing() {
        let snap = Snapshot {
            links: vec![link(7, "uplink", None, &[([10, 0, 0, 2].into(), 24)])],
            routes: vec![route(
                [0, 0, 0, 0],
                0,
                7,
                Some([10, 0, 0, 1]),
                RT_TABLE_MAIN,
            )],
        };
        assert_eq!(
            classify(&snap)[0].1,
            Role::Eni {
                index: Some(0),
                addrs: vec![[10, 0, 0, 2].into()]
            }
        );
    }

    #[test]
    fn pod_eth0_seen_from_inside_the_pod() {
        let snap = Snapshot {
            links: vec![link(
                2,
                "eth0",
                Some("veth"),
                &[([192, 168, 1, 21].into(), 32)],
            )],
            routes: vec![route(
                [0, 0, 0, 0],
                0,
                2,
                Some([169, 254, 1, 1]),
                RT_TABLE_MAIN,
            )],
        };
        assert_eq!(classify(&snap)[0].1, Role::PodEth0);
    }
}

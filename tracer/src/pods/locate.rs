//! A pod's network namespace, found from its IP the way the VPC CNI wires
//! a node: the host's `<podIP> dev eni... scope link` route names the pod's
//! veth; the veth's peer lives in a netns the node knows by an nsid
//! (IFLA_LINK_NETNSID); the netns file with that nsid (RTM_GETNSID, asked
//! in the node's netns) is the pod's: containerd's /var/run/netns/cni-* on
//! a real node, the lab's netns here.

use std::{
    collections::HashSet,
    fs::File,
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use futures_util::StreamExt as _;
use rtnetlink::{
    packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::{
        RouteNetlinkMessage,
        nsid::{NsidAttribute, NsidMessage},
    },
};

use super::error::ResolveError;
use crate::{
    discover::{self, Link, Snapshot},
    netns::Netns,
};

/// Where netns files are looked for, in order: `ip netns` names, then
/// containerd's `cni-*` (the same directory on most systems, through the
/// /var/run symlink), then both as a debug pod sees the host under /host.
pub const NETNS_DIRS: [&str; 4] = [
    "/run/netns",
    "/var/run/netns",
    "/host/run/netns",
    "/host/var/run/netns",
];

/// The path of the netns that holds the pod with address `ip`, found from
/// the node netns `node`. Fails with one clear line when the pod is not
/// on this node.
pub async fn pod_netns(node: &Netns, ip: Ipv4Addr) -> Result<PathBuf, ResolveError> {
    let dirs = NETNS_DIRS.map(Path::new);
    pod_netns_in(node, ip, &dirs).await
}

/// [`pod_netns`], searching `dirs` for netns files.
pub async fn pod_netns_in(
    node: &Netns,
    ip: Ipv4Addr,
    dirs: &[&Path],
) -> Result<PathBuf, ResolveError> {
    let netlink = |what, message| ResolveError::Netlink {
        node: node.name.clone(),
        what,
        message,
    };
    let snap = discover::snapshot(node)
        .await
        .map_err(|e| netlink("dump", format!("{e:#}")))?;
    let (veth, nsid) = pod_veth(&snap, ip, &node.name)?;

    // The socket must be made inside the node netns: nsids are relative to
    // the netns that asks.
    let (conn, handle, _) = node
        .run(rtnetlink::new_connection)?
        .map_err(|e| netlink("socket", e.to_string()))?;
    let task = tokio::spawn(conn);
    let found = search(&handle, nsid, dirs).await;
    task.abort();
    found.ok_or_else(|| ResolveError::PeerNetnsNotFound {
        ip,
        node: node.name.clone(),
        iface: veth.name.clone(),
        nsid,
        searched: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The pod veth that the node routes `ip` through, and its peer's nsid
/// (pure: over a netlink snapshot of the node netns).
pub fn pod_veth<'a>(
    snap: &'a Snapshot,
    ip: Ipv4Addr,
    node: &str,
) -> Result<(&'a Link, i32), ResolveError> {
    let link = snap
        .routes
        .iter()
        .filter(|r| r.prefix == 32 && r.dst == ip && r.gateway.is_none())
        .find_map(|r| snap.links.iter().find(|l| Some(l.ifindex) == r.oif))
        .ok_or_else(|| ResolveError::NoRoute {
            ip,
            node: node.to_owned(),
        })?;
    match link.peer_netnsid {
        // The CNI leaves host-side pod veths without addresses; an ENI has
        // one, and in the lab its peer is in another netns too.
        Some(nsid) if link.addrs.is_empty() => Ok((link, nsid)),
        _ => Err(ResolveError::NotPodVeth {
            ip,
            node: node.to_owned(),
            iface: link.name.clone(),
        }),
    }
}

/// The first netns file under `dirs` whose nsid (as the handle's netns
/// sees it) is `nsid`. Directories reached twice through symlinks are
/// searched once; files that are not a netns (stale mount points) are
/// skipped.
async fn search(handle: &rtnetlink::Handle, nsid: i32, dirs: &[&Path]) -> Option<PathBuf> {
    let mut seen = HashSet::new();
    for dir in dirs {
        let Ok(real) = dir.canonicalize() else {
            continue;
        };
        if !seen.insert(real) {
            continue;
        }
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for name in names {
            let path = dir.join(name);
            match nsid_of(handle, &path).await {
                Ok(Some(id)) if id == nsid => return Some(path),
                Ok(_) => {}
                Err(e) => log::debug!("{}: {e}", path.display()),
            }
        }
    }
    // No netns file names it: a process inside it may (host PID).
    for path in crate::container::process_netns() {
        if let Ok(Some(id)) = nsid_of(handle, &path).await
            && id == nsid
        {
            return Some(path);
        }
    }
    None
}

/// RTM_GETNSID for the netns file at `path` (iproute2's
/// `netns_id_from_name`, for any path rather than /run/netns names only).
async fn nsid_of(handle: &rtnetlink::Handle, path: &Path) -> Result<Option<i32>, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let mut msg = NsidMessage::default();
    let fd = u32::try_from(file.as_raw_fd()).map_err(|e| e.to_string())?;
    msg.attributes = vec![NsidAttribute::Fd(fd)];
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut responses = handle.clone().request(req).map_err(|e| e.to_string())?;
    while let Some(resp) = responses.next().await {
        match resp.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                // -1: the node has no id for it (it is no peer of a link).
                return Ok(m.attributes.iter().find_map(|a| match a {
                    NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                    _ => None,
                }));
            }
            NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_string()),
            _ => {}
        }
    }
    // The file stays open until here, so the kernel read a live fd.
    drop(file);
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::Route;

    fn snap() -> Snapshot {
        let link = |ifindex, name: &str, peer, addrs: Vec<(Ipv4Addr, u8)>| Link {
            ifindex,
            name: name.into(),
            kind: Some("veth".into()),
            peer_netnsid: peer,
            addrs,
            loopback: false,
        };
        let route = |dst: [u8; 4], prefix, oif, gateway: Option<[u8; 4]>| Route {
            dst: dst.into(),
            prefix,
            oif: Some(oif),
            gateway: gateway.map(Into::into),
            table: 254,
        };
        Snapshot {
            links: vec![
                link(2, "ens5", Some(0), vec![([192, 168, 1, 5].into(), 24)]),
                link(5, "eni3b1f0a9c2d4", Some(3), vec![]),
            ],
            routes: vec![
                route([0, 0, 0, 0], 0, 2, Some([192, 168, 1, 1])),
                route([192, 168, 1, 0], 24, 2, None),
                route([192, 168, 1, 21], 32, 5, None),
                route([192, 168, 1, 5], 32, 2, None),
            ],
        }
    }

    #[test]
    fn host_route_to_veth_to_nsid() {
        let snap = snap();
        let (link, nsid) = pod_veth(&snap, [192, 168, 1, 21].into(), "node-a").unwrap();
        assert_eq!((link.name.as_str(), nsid), ("eni3b1f0a9c2d4", 3));
    }

    #[test]
    fn pod_elsewhere_has_no_host_route() {
        let e = pod_veth(&snap(), [192, 168, 1, 99].into(), "node-a").unwrap_err();
        assert_eq!(
            e.to_string(),
            "no route to 192.168.1.99 through a pod veth in netns node-a: is the pod on this node?"
        );
    }

    #[test]
    fn the_nodes_own_address_is_no_pod() {
        let e = pod_veth(&snap(), [192, 168, 1, 5].into(), "node-a").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("192.168.1.5 is routed through ens5 in netns node-a"),
            "{e}"
        );
    }
}

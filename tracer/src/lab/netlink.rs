//! A netlink connection bound to one lab namespace, with the few requests
//! the lab makes (links, addresses, routes, rules, neighbours), each error
//! saying which netns and which object.

use std::{fs::File, net::Ipv4Addr, os::fd::AsRawFd as _};

use futures_util::TryStreamExt as _;
use rtnetlink::{
    Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        address::{AddressAttribute, AddressFlags},
        link::{InfoData, InfoVeth, LinkMessage},
        route::RouteScope,
        rule::{RuleAction, RuleAttribute},
    },
};
use tokio::task::JoinHandle;

use super::{
    LabError,
    addr::{Cidr, Mac},
};
use crate::netns::Netns;

/// The main routing table.
pub const MAIN_TABLE: u32 = 254;

/// A route to add.
pub struct Route<'a> {
    /// Destination.
    pub dst: Cidr,
    /// Gateway, if any.
    pub via: Option<Ipv4Addr>,
    /// Output device.
    pub dev: &'a str,
    /// Routing table.
    pub table: u32,
    /// `scope link` (a directly reachable destination).
    pub link_scope: bool,
}

/// A policy rule to add (action: look up `table`).
pub struct Rule {
    /// Priority.
    pub priority: u32,
    /// `from` prefix.
    pub from: Option<Cidr>,
    /// `to` prefix.
    pub to: Option<Cidr>,
    /// `fwmark value/mask`.
    pub fwmark: Option<(u32, u32)>,
    /// Table to look up.
    pub table: u32,
}

/// A netlink connection made inside one namespace.
pub struct Nl {
    netns: String,
    handle: Handle,
    conn: JoinHandle<()>,
}

impl Drop for Nl {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl Nl {
    /// Connects from inside `ns`: the socket stays bound to it.
    pub fn open(ns: &Netns) -> Result<Self, LabError> {
        let (conn, handle, _) =
            ns.run(rtnetlink::new_connection)?
                .map_err(|source| LabError::Io {
                    what: "opening a netlink socket in netns",
                    path: ns.path.clone(),
                    source,
                })?;
        Ok(Self {
            netns: ns.name.clone(),
            handle,
            conn: tokio::spawn(conn),
        })
    }

    fn err(&self, what: String) -> impl FnOnce(rtnetlink::Error) -> LabError + use<> {
        let netns = self.netns.clone();
        move |source| LabError::Netlink {
            netns,
            what,
            source,
        }
    }

    /// The ifindex of `name`.
    pub async fn index(&self, name: &str) -> Result<u32, LabError> {
        let found = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_next()
            .await
            .map_err(self.err(format!("finding link {name}")))?;
        found
            .map(|l| l.header.index)
            .ok_or_else(|| LabError::Netlink {
                netns: self.netns.clone(),
                what: format!("finding link {name}"),
                source: rtnetlink::Error::RequestFailed,
            })
    }

    async fn set(&self, what: String, msg: LinkMessage) -> Result<(), LabError> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(self.err(what))
    }

    /// `ip link set NAME up`.
    pub async fn up(&self, name: &str) -> Result<(), LabError> {
        let index = self.index(name).await?;
        self.set(
            format!("setting {name} up"),
            LinkUnspec::new_with_index(index).up().build(),
        )
        .await
    }

    /// `ip link set NAME master BRIDGE`.
    pub async fn set_master(&self, name: &str, bridge: &str) -> Result<(), LabError> {
        let index = self.index(name).await?;
        let master = self.index(bridge).await?;
        let msg = LinkUnspec::new_with_index(index).controller(master).build();
        self.set(format!("adding {name} to bridge {bridge}"), msg)
            .await
    }

    /// `ip link add NAME address MAC type bridge` (up).
    pub async fn add_bridge(&self, name: &str, mac: Mac) -> Result<(), LabError> {
        let msg = LinkBridge::new(name).address(mac.0.to_vec()).build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(self.err(format!("creating bridge {name}")))
    }

    /// `ip link add NAME address MAC type veth peer name PEER address
    /// PEER_MAC netns PEER_NS`: the peer is born in `peer_ns`.
    pub async fn add_veth(
        &self,
        (name, mac): (&str, Mac),
        (peer, peer_mac): (&str, Mac),
        peer_ns: &File,
    ) -> Result<(), LabError> {
        let peer_msg = LinkUnspec::new_with_name(peer)
            .address(peer_mac.0.to_vec())
            .setns_by_fd(peer_ns.as_raw_fd())
            .build();
        let msg = LinkVeth::new(name, peer)
            .address(mac.0.to_vec())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(self.err(format!("creating veth {name} (peer {peer})")))
    }

    /// `ip addr add IP/PREFIX dev DEV [noprefixroute]`.
    pub async fn add_addr(
        &self,
        dev: &str,
        ip: Ipv4Addr,
        prefix: u8,
        prefix_route: bool,
    ) -> Result<(), LabError> {
        let index = self.index(dev).await?;
        let mut req = self.handle.address().add(index, ip.into(), prefix);
        if !prefix_route {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Noprefixroute));
        }
        req.execute()
            .await
            .map_err(self.err(format!("adding {ip}/{prefix} to {dev}")))
    }

    /// `ip route add DST [via GW] dev DEV [scope link] table T`.
    pub async fn add_route(&self, r: Route<'_>) -> Result<(), LabError> {
        let index = self.index(r.dev).await?;
        let mut msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(r.dst.addr, r.dst.prefix)
            .output_interface(index)
            .table_id(r.table);
        if let Some(gw) = r.via {
            msg = msg.gateway(gw);
        }
        if r.link_scope {
            msg = msg.scope(RouteScope::Link);
        }
        let via = r.via.map(|g| format!(" via {g}")).unwrap_or_default();
        let what = format!(
            "adding route {}{via} dev {} table {}",
            r.dst, r.dev, r.table
        );
        self.handle
            .route()
            .add(msg.build())
            .execute()
            .await
            .map_err(self.err(what))
    }

    /// `ip rule add pref P [from F] [to T] [fwmark V/M] lookup TABLE`.
    pub async fn add_rule(&self, r: Rule) -> Result<(), LabError> {
        let mut req = self
            .handle
            .rule()
            .add()
            .v4()
            .priority(r.priority)
            .table_id(r.table)
            .action(RuleAction::ToTable);
        if let Some(from) = r.from {
            req = req.source_prefix(from.addr, from.prefix);
        }
        if let Some(to) = r.to {
            req = req.destination_prefix(to.addr, to.prefix);
        }
        if let Some((value, mask)) = r.fwmark {
            req = req.fw_mark(value);
            req.message_mut()
                .attributes
                .push(RuleAttribute::FwMask(mask));
        }
        req.execute()
            .await
            .map_err(self.err(format!("adding rule {}", r.priority)))
    }

    /// `ip neigh add IP lladdr MAC dev DEV nud permanent`.
    pub async fn add_permanent_neighbour(
        &self,
        dev: &str,
        ip: Ipv4Addr,
        mac: Mac,
    ) -> Result<(), LabError> {
        let index = self.index(dev).await?;
        self.handle
            .neighbours()
            .add(index, ip.into())
            .link_layer_address(&mac.0)
            .execute()
            .await
            .map_err(self.err(format!("adding neighbour {ip} on {dev}")))
    }
}

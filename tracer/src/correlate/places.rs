//! The engine's index of the [`Topology`]: what each hook is, shared by
//! every hop that crossed it, and which hook owns a pod or ENI address.

use std::{net::Ipv4Addr, sync::Arc};

use super::{
    model::{Place, PlaceRole, Shared},
    table::{Map, map_with_capacity},
};
use crate::topology::{Iface, Role, Topology};

/// Derived from a [`Topology`]; rebuilt when a hook it does not know shows
/// up, or when the edge says the topology changed.
pub(crate) struct Places {
    seed: u64,
    by_hook: Map<(u64, u32), Shared<Place>>,
    /// A small stable number per hook ever seen, so that flows can name a
    /// hook in 4 bytes: `hooks[id]` is the hook of `id`.
    ids: Map<(u64, u32), u32>,
    hooks: Vec<(u64, u32)>,
    /// What `by_hook` holds for each id, so that hops find their place
    /// without hashing.
    by_id: Vec<Option<Shared<Place>>>,
    by_pod_ip: Map<Ipv4Addr, Shared<Place>>,
    by_eni_addr: Map<Ipv4Addr, Shared<Place>>,
    /// Nodes with at least one ENI hooked (expectations need one).
    eni_nodes: Vec<String>,
    /// Nodes with at least one pod veth hooked.
    veth_nodes: Vec<String>,
}

impl Places {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            seed,
            by_hook: map_with_capacity(0, seed),
            ids: map_with_capacity(0, seed),
            hooks: Vec::new(),
            by_id: Vec::new(),
            by_pod_ip: map_with_capacity(0, seed),
            by_eni_addr: map_with_capacity(0, seed),
            eni_nodes: Vec::new(),
            veth_nodes: Vec::new(),
        }
    }

    /// Makes sure the hook is known: on a miss, re-reads the topology; a
    /// hook the topology does not know either is remembered as unknown, so
    /// that its next packets cost one lookup. Returns the hook's id.
    pub(crate) fn ensure(&mut self, netns_cookie: u64, ifindex: u32, topo: &Topology) -> u32 {
        let key = (netns_cookie, ifindex);
        if let Some(&id) = self.ids.get(&key)
            && self.by_id[id as usize].is_some()
        {
            return id;
        }
        if !self.by_hook.contains_key(&key) {
            self.rebuild(topo);
            self.by_hook
                .entry(key)
                .or_insert_with(|| unknown(netns_cookie, ifindex));
        }
        let id = match self.ids.get(&key) {
            Some(&id) => id,
            None => {
                let id = u32::try_from(self.hooks.len()).expect("fewer than 2^32 hooks");
                self.hooks.push(key);
                self.by_id.push(None);
                self.ids.insert(key, id);
                id
            }
        };
        self.by_id[id as usize] = self.by_hook.get(&key).cloned();
        id
    }

    /// The hook (netns cookie, ifindex) of an id from [`Self::ensure`].
    pub(crate) fn hook(&self, id: u32) -> (u64, u32) {
        self.hooks[id as usize]
    }

    /// The place of hook `id` (an "unknown" one if the topology forgot it).
    pub(crate) fn resolve_id(&self, id: u32) -> Shared<Place> {
        match &self.by_id[id as usize] {
            Some(p) => p.clone(),
            None => {
                let (cookie, ifindex) = self.hook(id);
                unknown(cookie, ifindex)
            }
        }
    }

    /// True if `place` is what the index holds for hook `id` now.
    pub(crate) fn is_id(&self, place: &Shared<Place>, id: u32) -> bool {
        self.by_id[id as usize]
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(&p.0, &place.0))
    }

    /// The place the index holds for hook `id`, without cloning it
    /// (`None` only if the topology forgot the hook since).
    pub(crate) fn get_id(&self, id: u32) -> Option<&Shared<Place>> {
        self.by_id[id as usize].as_ref()
    }

    /// Re-reads everything from the topology. Hooks it still does not
    /// know stay remembered as unknown (else two unknown hooks would make
    /// each other rebuild on every packet).
    pub(crate) fn rebuild(&mut self, topo: &Topology) {
        let n = topo.iter().count();
        let old = std::mem::replace(&mut self.by_hook, map_with_capacity(n, self.seed));
        self.by_pod_ip = map_with_capacity(n, self.seed);
        self.by_eni_addr = map_with_capacity(n, self.seed);
        self.eni_nodes.clear();
        self.veth_nodes.clear();
        for (cookie, iface) in topo.iter() {
            let place = Shared(Arc::new(place_of(cookie, iface)));
            let nodes = match &iface.role {
                Role::PodVeth { pod_ip, .. } => {
                    if let Some(ip) = pod_ip {
                        self.by_pod_ip.insert(*ip, place.clone());
                    }
                    Some(&mut self.veth_nodes)
                }
                Role::Eni { addrs, .. } => {
                    for a in addrs {
                        self.by_eni_addr.insert(*a, place.clone());
                    }
                    Some(&mut self.eni_nodes)
                }
                Role::PodEth0 | Role::Other => None,
            };
            if let Some(nodes) = nodes.filter(|n| !n.contains(&iface.node)) {
                nodes.push(iface.node.clone());
            }
            self.by_hook.insert((cookie, iface.ifindex), place);
        }
        for (k, p) in old {
            if p.role == PlaceRole::Unknown {
                self.by_hook.entry(k).or_insert(p);
            }
        }
        for (slot, key) in self.by_id.iter_mut().zip(&self.hooks) {
            *slot = self.by_hook.get(key).cloned();
        }
    }

    /// The veth of the pod that owns `ip`.
    pub(crate) fn pod(&self, ip: Ipv4Addr) -> Option<&Shared<Place>> {
        self.by_pod_ip.get(&ip)
    }

    /// The ENI that holds `ip` as one of its addresses.
    pub(crate) fn eni_addr(&self, ip: Ipv4Addr) -> Option<&Shared<Place>> {
        self.by_eni_addr.get(&ip)
    }

    /// The node that owns `ip`, as a pod or ENI address.
    pub(crate) fn owner_node(&self, ip: Ipv4Addr) -> Option<&str> {
        self.pod(ip)
            .or_else(|| self.eni_addr(ip))
            .map(|p| p.node.as_str())
    }

    /// True if `node` has a hooked ENI.
    pub(crate) fn has_eni(&self, node: &str) -> bool {
        self.eni_nodes.iter().any(|n| n == node)
    }

    /// True if `node` has a hooked pod veth.
    pub(crate) fn has_veth(&self, node: &str) -> bool {
        self.veth_nodes.iter().any(|n| n == node)
    }
}

fn place_of(cookie: u64, iface: &Iface) -> Place {
    let role = match &iface.role {
        Role::PodVeth { pod_ip, pod } => PlaceRole::PodVeth {
            pod_ip: *pod_ip,
            pod: pod.clone(),
        },
        Role::Eni { index, addrs } => PlaceRole::Eni {
            index: *index,
            primary_ip: addrs.first().copied(),
        },
        Role::PodEth0 => PlaceRole::PodEth0,
        Role::Other => PlaceRole::Other,
    };
    Place {
        node: iface.node.clone(),
        iface: iface.name.clone(),
        role,
        netns_cookie: cookie,
        ifindex: iface.ifindex,
    }
}

fn unknown(netns_cookie: u64, ifindex: u32) -> Shared<Place> {
    Shared(Arc::new(Place {
        node: format!("netns:{netns_cookie}"),
        iface: format!("if{ifindex}"),
        role: PlaceRole::Unknown,
        netns_cookie,
        ifindex,
    }))
}

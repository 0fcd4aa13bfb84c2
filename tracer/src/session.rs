//! A tracing session: the kernel programs loaded, attached to every hook of
//! the chosen namespaces, kept in step with pod churn, and one stream of
//! decoded packets out. `capture`, `trace`, `ping` and `watch` all drive one.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use tokio::sync::mpsc;
use tracer_common::{FlowKey, FlowStats, HookKey, HookStats};

use crate::{
    cli::WhereArgs,
    decode::Packet,
    discover,
    events::{EventReader, Record},
    kernel::{Kernel, LoadOptions},
    netns::Netns,
    topology::{Iface, Role, Topology},
};

/// What happened to the set of hooks while tracing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookChange {
    /// A new interface was attached.
    Attached {
        /// Namespace name.
        netns: String,
        /// Interface name.
        iface: String,
    },
    /// An interface went away and was forgotten.
    Gone {
        /// Namespace name.
        netns: String,
        /// Interface name.
        iface: String,
    },
}

/// Records received per hook (see [`Session::received`]).
pub(crate) type Received = crate::correlate::table::Map<(u64, u32, u32), u64>;

/// A running session.
pub struct Session {
    kernel: Kernel,
    reader: EventReader,
    loggers: Vec<aya_log::EbpfLogger<&'static dyn log::Log>>,
    namespaces: Vec<Arc<Netns>>,
    only: Vec<String>,
    /// What each hooked interface is.
    pub topology: Topology,
    churn: mpsc::Receiver<usize>,
    /// Namespaces whose links changed, not yet synced (see [`Session::next`]).
    churned: BTreeSet<usize>,
    /// When the first of them was noticed.
    churned_at: tokio::time::Instant,
    _watchers: Vec<tokio::task::JoinHandle<()>>,
    /// Records received from the kernel, per hook (netns cookie, ifindex,
    /// direction): hashed with the engine's hasher, a few ns per record
    /// where the ordered map's search took a tenth of a `-w` reader's time.
    pub(crate) received: Received,
    /// Records that could not be decoded.
    pub undecodable: u64,
    /// Packets stamped before this kernel time are counted, not handed on
    /// (see [`Kernel::restart_flows`]); 0 hands on everything.
    since_ns: u64,
}

impl Session {
    /// Loads the programs and attaches them to the hooks that `place` names.
    pub async fn start(place: &WhereArgs, opts: &LoadOptions) -> anyhow::Result<Self> {
        // Privileges and embedded programs first: their errors say what to do.
        let kernel = Kernel::load(opts)?;
        crate::container::check_privileges()?;
        let namespaces = if place.netns.is_empty() {
            vec![Arc::new(Netns::current()?)]
        } else {
            let mut v = Vec::new();
            for spec in &place.netns {
                let mut ns = Netns::open(spec)?;
                if spec == crate::container::THIS_NETNS {
                    ns.name = crate::container::this_node_name().unwrap_or_else(|| "host".into());
                }
                if v.iter().any(|o: &Arc<Netns>| o.inode == ns.inode) {
                    continue;
                }
                v.push(Arc::new(ns));
            }
            v
        };
        let (tx, churn) = mpsc::channel(64);
        let mut watchers = Vec::new();
        for (i, ns) in namespaces.iter().enumerate() {
            watchers.push(watch_links(ns, i, tx.clone())?);
        }
        let mut session = Self {
            kernel,
            reader: EventReader::new(),
            loggers: Vec::new(),
            namespaces,
            only: place.iface.clone(),
            topology: Topology::default(),
            churn,
            churned: BTreeSet::new(),
            churned_at: tokio::time::Instant::now(),
            _watchers: watchers,
            received: Received::with_hasher(crate::correlate::table::Seeded(0)),
            undecodable: 0,
            since_ns: 0,
        };
        for i in 0..session.namespaces.len() {
            session
                .sync(i, true)
                .await
                .map_err(crate::container::explain_load)?;
        }
        if session.kernel.attached().next().is_none() {
            anyhow::bail!(
                "no interface to trace in {} (no ENI or pod veth found; name one with --iface)",
                session
                    .namespaces
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if opts.config.mode == tracer_common::mode::FLOWS {
            // What the hooks reported while others were still being
            // attached is a flow's packets cut into pieces: start them all
            // at once, and leave those reports out.
            session.since_ns = session.kernel.restart_flows();
        }
        crate::container::say_pod_side(&session.topology);
        crate::sched::raise_all();
        Ok(session)
    }

    /// Attaches new hooks and forgets gone ones in namespace `i`. With
    /// `strict`, a missing `--iface` is an error (at start); later it is not.
    async fn sync(&mut self, i: usize, strict: bool) -> anyhow::Result<Vec<HookChange>> {
        let ns = Arc::clone(&self.namespaces[i]);
        let snap = discover::snapshot(&ns)
            .await
            .with_context(|| format!("reading interfaces of netns \"{}\"", ns.name))?;
        let wanted: Vec<(discover::Link, Role)> = if self.only.is_empty() {
            discover::classify(&snap)
        } else {
            let roles = discover::classify(&snap);
            let mut v = Vec::new();
            for name in &self.only {
                match snap.links.iter().find(|l| &l.name == name) {
                    Some(l) => {
                        let role = roles
                            .iter()
                            .find(|(r, _)| r.ifindex == l.ifindex)
                            .map_or(Role::Other, |(_, role)| role.clone());
                        v.push((l.clone(), role));
                    }
                    None if strict => anyhow::bail!(crate::kernel::KernelError::NoSuchInterface {
                        netns: ns.name.clone(),
                        iface: name.clone(),
                    }),
                    None => {}
                }
            }
            v
        };
        let mut changes = Vec::new();
        let present: BTreeSet<u32> = wanted.iter().map(|(l, _)| l.ifindex).collect();
        let gone: Vec<(u32, String)> = self
            .kernel
            .attached()
            .filter(|a| a.netns.cookie == ns.cookie && !present.contains(&a.ifindex))
            .map(|a| (a.ifindex, a.iface.clone()))
            .collect();
        for (ifindex, iface) in gone {
            self.kernel.detach(ns.cookie, ifindex);
            self.topology.remove(ns.cookie, ifindex);
            changes.push(HookChange::Gone {
                netns: ns.name.clone(),
                iface,
            });
        }
        for (link, role) in wanted {
            let known = self
                .kernel
                .attached()
                .any(|a| a.netns.cookie == ns.cookie && a.ifindex == link.ifindex);
            if !known {
                match self.kernel.attach(&ns, &link.name) {
                    Ok(_) => changes.push(HookChange::Attached {
                        netns: ns.name.clone(),
                        iface: link.name.clone(),
                    }),
                    // Gone between the dump and the attach: churn, not an error.
                    Err(crate::kernel::KernelError::NoSuchInterface { .. }) if !strict => continue,
                    Err(e) => {
                        self.tell_swept();
                        return Err(e.into());
                    }
                }
            }
            self.topology.insert(
                ns.cookie,
                Iface {
                    node: ns.name.clone(),
                    name: link.name.clone(),
                    ifindex: link.ifindex,
                    role,
                },
            );
        }
        self.tell_swept();
        for ring in self.kernel.take_new_rings() {
            self.reader.add(ring).context("polling a ring buffer")?;
        }
        self.loggers.extend(self.kernel.take_new_loggers());
        Ok(changes)
    }

    /// The probes the kernel dropped since the last call (see
    /// [`crate::kernel::LoadOptions::drops`]).
    pub fn take_drops(&mut self) -> Vec<tracer_common::DropEvent> {
        self.kernel.take_drops()
    }

    /// Why drops are not reported although asked for, once.
    pub fn take_drops_error(&mut self) -> Option<String> {
        self.kernel.take_drops_error()
    }

    /// Drops left out for the per-CPU budget, since load.
    pub fn drops_suppressed(&self) -> u64 {
        self.kernel.drops_suppressed()
    }

    /// Namespaces traced.
    pub fn namespaces(&self) -> &[Arc<Netns>] {
        &self.namespaces
    }

    /// `(netns, interface)` of every hooked interface.
    pub fn hooks(&self) -> Vec<(String, String)> {
        self.kernel
            .attached()
            .map(|a| (a.netns.name.clone(), a.iface.clone()))
            .collect()
    }

    /// Says what the sweeps of legacy tc filters found (see
    /// [`crate::legacy_tc`]).
    fn tell_swept(&mut self) {
        for line in crate::legacy_tc::tell(&self.kernel.take_swept()) {
            eprintln!("podtrace: {line}");
        }
    }

    /// Waits for the next batch of packets (or a change of hooks) and hands
    /// them to the callbacks.
    pub async fn next(
        &mut self,
        mut on_packet: impl FnMut(&Packet, &[u8], &Topology),
        mut on_change: impl FnMut(&HookChange),
    ) -> anyhow::Result<()> {
        // Cancel-safe: callers race this against their own timers, so a
        // namespace whose links changed is kept in `self.churned` until its
        // hooks are synced, and the next call picks up where this left.
        if self.churned.is_empty() {
            tokio::select! {
                Some(i) = self.churn.recv() => {
                    self.churned.insert(i);
                    self.churned_at = tokio::time::Instant::now();
                }
                res = self.reader.next_batch(&self.kernel, tally(&mut self.received, &mut self.undecodable, &self.topology, self.since_ns, &mut on_packet)) => {
                    res?;
                }
            }
        }
        if !self.churned.is_empty() {
            // Coalesce bursts of notifications (a pod's veth, addresses and
            // routes arrive together).
            tokio::time::sleep_until(self.churned_at + Duration::from_millis(50)).await;
            while let Ok(j) = self.churn.try_recv() {
                self.churned.insert(j);
            }
            while let Some(&i) = self.churned.first() {
                let changes = self.sync(i, false).await?;
                self.churned.remove(&i);
                for c in &changes {
                    on_change(c);
                }
            }
        }
        for logger in &mut self.loggers {
            logger.flush();
        }
        Ok(())
    }

    /// Reads what is left: the rings, and the records the programs were
    /// still gathering (at most [`tracer_common::STAGE_DELAY_NS`] away).
    pub async fn drain(
        &mut self,
        mut on_packet: impl FnMut(&Packet, &[u8], &Topology),
    ) -> anyhow::Result<()> {
        let count = tally(
            &mut self.received,
            &mut self.undecodable,
            &self.topology,
            self.since_ns,
            &mut on_packet,
        );
        self.reader.drain_settled(&self.kernel, count).await?;
        Ok(())
    }

    /// Whether packets come with their frame parsed (the default), or with
    /// only their record's header (see [`EventReader::parse_frames`]).
    pub fn parse_frames(&mut self, frames: bool) {
        self.reader.parse_frames(frames);
    }

    /// Kernel per-hook counters.
    pub fn hook_stats(&self) -> anyhow::Result<BTreeMap<HookKey, HookStats>> {
        Ok(self.kernel.hook_stats()?)
    }

    /// Whether the kernel counts every IPv4 packet per flow (else
    /// [`Session::flow_stats`] holds nothing).
    pub fn counts_flows(&self) -> bool {
        self.kernel.counts_flows()
    }

    /// Kernel per-flow counters.
    pub fn flow_stats(&self) -> anyhow::Result<BTreeMap<FlowKey, FlowStats>> {
        Ok(self.kernel.flow_stats()?)
    }

    /// Writes `path` (with the hooks, one per line) once everything is
    /// attached. The file is removed when the returned guard drops, as the
    /// run ends: a script that waits for it never takes a finished run's
    /// file for a live one.
    pub fn write_ready_file(&self, path: &Path) -> anyhow::Result<ReadyFile> {
        let body: String = self
            .hooks()
            .iter()
            .map(|(n, i)| format!("{n}/{i}\n"))
            .collect();
        std::fs::write(path, body)
            .with_context(|| format!("writing ready file {}", path.display()))?;
        Ok(ReadyFile(path.to_owned()))
    }
}

/// A written `--ready-file`, removed on drop.
#[must_use = "the ready file is removed when this drops"]
#[derive(Debug)]
pub struct ReadyFile(std::path::PathBuf);

impl Drop for ReadyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The namespaces to trace: `--netns` as given; in a node debug pod, the
/// node's (the one podtrace runs in); with the lab up and none given, both
/// lab nodes (the whole round trip); else this namespace. Fails first, in
/// one line, without the capabilities to enter and trace them.
pub fn traced_namespaces(
    place: &WhereArgs,
    pods: &crate::pods::PodSet,
) -> anyhow::Result<WhereArgs> {
    crate::container::check_privileges()?;
    if place.netns.is_empty() && crate::container::traces_only_this_node() {
        return Ok(WhereArgs {
            netns: vec![crate::container::THIS_NETNS.to_owned()],
            iface: place.iface.clone(),
        });
    }
    if !place.netns.is_empty() || !matches!(pods.source(), crate::pods::Source::Lab) {
        return Ok(place.clone());
    }
    let mut nodes: Vec<String> = pods.pods().iter().filter_map(|p| p.node.clone()).collect();
    nodes.sort();
    nodes.dedup();
    Ok(WhereArgs {
        netns: nodes,
        iface: place.iface.clone(),
    })
}

/// The namespaces `capture` traces: as [`traced_namespaces`] picks them,
/// from the lab's inventory alone, since `capture` names no pods: with no
/// `--netns`, outside a debug pod and with the lab up, both lab nodes.
pub fn capture_namespaces(place: &WhereArgs) -> WhereArgs {
    if !place.netns.is_empty() || crate::container::traces_only_this_node() {
        return place.clone();
    }
    let Ok(inv) = crate::lab::Inventory::load_default() else {
        return place.clone();
    };
    let nodes: Vec<String> = inv.plan().nodes.iter().map(|n| n.netns.clone()).collect();
    let up = !nodes.is_empty()
        && nodes.iter().all(|n| {
            std::path::Path::new(crate::netns::NETNS_RUN_DIR)
                .join(n)
                .exists()
        });
    if !up {
        return place.clone();
    }
    WhereArgs {
        netns: nodes,
        iface: place.iface.clone(),
    }
}

/// Subscribes to link, address and route changes in `ns`; sends `i` on each.
fn watch_links(
    ns: &Netns,
    i: usize,
    tx: mpsc::Sender<usize>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use rtnetlink::MulticastGroup as G;
    let (conn, _handle, mut messages) = ns
        .run(|| rtnetlink::new_multicast_connection(&[G::Link, G::Ipv4Ifaddr, G::Ipv4Route]))?
        .with_context(|| format!("subscribing to netlink in netns \"{}\"", ns.name))?;
    Ok(tokio::spawn(async move {
        let conn = tokio::spawn(conn);
        while messages.next().await.is_some() {
            if tx.try_send(i).is_err() && tx.is_closed() {
                break;
            }
        }
        conn.abort();
    }))
}

/// What `next` and `drain` do with every record: count it at its hook (or
/// as undecodable) and hand the packet to `on_packet`.
fn tally<'a, F: FnMut(&Packet, &[u8], &Topology)>(
    received: &'a mut Received,
    undecodable: &'a mut u64,
    topo: &'a Topology,
    since_ns: u64,
    on_packet: &'a mut F,
) -> impl FnMut(Record<'_>) + 'a {
    move |r| match r {
        Ok((p, frame)) => {
            *received
                .entry((p.hook.netns_cookie, p.hook.ifindex, p.hook.dir as u32))
                .or_default() += 1;
            if p.ts_ns >= since_ns {
                on_packet(&p, frame, topo);
            }
        }
        Err(_) => *undecodable += 1,
    }
}

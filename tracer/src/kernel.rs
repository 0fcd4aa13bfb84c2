//! Loading the kernel programs and attaching them to interfaces in any
//! namespace. Everything attached is detached when the [`Kernel`] drops,
//! on every exit path (return, error, panic); TCX links also go away if the
//! process is killed, since the kernel drops them with their last fd. The
//! clsact filters of older kernels do not: the next podtrace removes those
//! a killed one left (see [`crate::legacy_tc`]).

use std::{collections::BTreeMap, os::fd::AsFd as _, sync::Arc};

use aya::{
    Ebpf, EbpfLoader,
    maps::{ArrayOfMaps, MapData, PerCpuArray, PerCpuHashMap},
    programs::{SchedClassifier, TcAttachType, tc::SchedClassifierLinkId},
};
use aya_obj::generated::bpf_map_type;
use tracer_common::{
    BatchHeader, Config, CpuState, Direction, FlowKey, FlowSlot, FlowStats, HookKey, HookSlot,
    HookStats, MAX_SNAPLEN, PacketEvent, STAGE_MAX, Stage, hook_slot, names,
};

use crate::{
    ebpf,
    netns::Netns,
    pins::Pins,
    ring::{self, Ring},
};

/// Programs, one per direction.
const PROGRAMS: [(&str, Direction); 2] = [
    ("podtrace_ingress", Direction::Ingress),
    ("podtrace_egress", Direction::Egress),
];

/// What can go wrong loading or attaching, in words a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Built with `AYA_BUILD_SKIP=1`.
    #[error(
        "this podtrace was built without its kernel programs (AYA_BUILD_SKIP=1); rebuild with \
         `cargo xtask build` to trace"
    )]
    NoPrograms,
    /// Missing privileges.
    #[error(
        "needs CAP_BPF and CAP_NET_ADMIN (run as root, or in a debug pod with --profile=sysadmin)"
    )]
    NotPermitted,
    /// Loading failed for another reason.
    #[error("loading the kernel programs failed: {0}")]
    Load(String),
    /// The interface does not exist in that namespace.
    #[error("interface \"{iface}\" does not exist in netns \"{netns}\"")]
    NoSuchInterface {
        /// Namespace name.
        netns: String,
        /// Interface name.
        iface: String,
    },
    /// Attaching failed.
    #[error("attaching to {netns}/{iface} ({dir:?}) failed: {reason}")]
    Attach {
        /// Namespace name.
        netns: String,
        /// Interface name.
        iface: String,
        /// Direction.
        dir: Direction,
        /// Kernel or library message.
        reason: String,
    },
    /// Namespace trouble.
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    /// A map could not be read.
    #[error("reading map {map}: {reason}")]
    Map {
        /// Map name.
        map: &'static str,
        /// What failed.
        reason: String,
    },
}

/// How to load the programs.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Filter, mode and snap length, fixed before load.
    pub config: Config,
    /// Ring buffer memory in bytes, shared out into one ring per possible
    /// CPU (each the largest power of two that fits, at least a page).
    pub ring_bytes: u32,
    /// Flow table entries per CPU (a power of two, at least
    /// [`tracer_common::FLOW_PROBES`]).
    pub flow_entries: u32,
    /// Report the probes the kernel drops ([`Kernel::take_drops`]), with
    /// this kernel's struct offsets ([`crate::drops::offsets`]).
    pub drops: Option<tracer_common::DropConfig>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            config: Config::DEFAULT,
            ring_bytes: crate::ring::default_bytes(),
            flow_entries: tracer_common::DEFAULT_FLOW_SLOTS,
            drops: None,
        }
    }
}

/// One interface with both programs attached.
#[derive(Debug)]
pub struct Attached {
    /// Namespace it lives in.
    pub netns: Arc<Netns>,
    /// Interface name.
    pub iface: String,
    /// Interface index in that namespace.
    pub ifindex: u32,
    links: [SchedClassifierLinkId; 2],
}

/// The programs and maps of one traced namespace: one copy per netns, since
/// the kernel gives a TC program no reliable way to tell its namespace (see
/// `Config::netns_cookie`).
struct Instance {
    bpf: Ebpf,
    /// Hook counter slots of every interface ever attached (detached ones
    /// keep their counts for the totals).
    slots: std::collections::BTreeSet<u32>,
    /// The flow table, mapped.
    flows: FlowTable,
    /// Through legacy tc: the marks that say, in this namespace, that its
    /// programs are a live podtrace's (see [`crate::legacy_tc`]).
    live: Vec<std::os::unix::net::UnixListener>,
}

/// The loaded programs and everything attached to them.
pub struct Kernel {
    opts: LoadOptions,
    object: &'static [u8],
    instances: BTreeMap<u64, Instance>,
    /// The per-CPU rings, shared by every namespace's copy of the programs.
    rings: Vec<MapData>,
    /// Each CPU's [`CpuState`] (a per-CPU array of one), shared like the
    /// stage map, and created like it by the first copy.
    wakes: Option<aya::maps::Map>,
    /// Bytes of each ring's data area.
    ring_size: u32,
    /// Each CPU's batch of records (see [`Stage`]): the first namespace's
    /// copy of the programs creates the map (the kernel wants it created
    /// with the programs' BTF, for its timers); every copy uses it.
    stages: Option<aya::maps::Map>,
    fresh_rings: Vec<Ring>,
    fresh_loggers: Vec<aya_log::EbpfLogger<&'static dyn log::Log>>,
    attached: BTreeMap<(u64, u32), Attached>,
    /// The dropped probes' ring, once the first copy attached
    /// `podtrace_kfree_skb` (with [`LoadOptions::drops`]).
    drops: Option<aya::maps::RingBuf<MapData>>,
    /// Why it could not be attached, said once.
    drops_error: Option<String>,
    /// The namespaces whose drops count, when every packet's does.
    drop_netns: Option<aya::maps::HashMap<MapData, u64, u32>>,
    /// Each CPU's [`tracer_common::DropBudget`].
    drop_budget: Option<aya::maps::Map>,
    /// Legacy tc filters that killed podtraces left, found while
    /// attaching, not yet told (see [`crate::legacy_tc`]).
    swept: Vec<(String, String, crate::legacy_tc::Swept)>,
    /// Namespaces whose legacy-tc lock could not be taken in time.
    lock_timed_out: std::collections::BTreeSet<u64>,
}

impl Kernel {
    /// Checks that the programs are embedded and that we may load them;
    /// each namespace gets its copy on its first [`Kernel::attach`].
    pub fn load(opts: &LoadOptions) -> Result<Self, KernelError> {
        let object = ebpf::OBJECT.ok_or(KernelError::NoPrograms)?;
        if !nix::unistd::geteuid().is_root() {
            return Err(KernelError::NotPermitted);
        }
        let cpus = ring::possible_cpus()
            .map_err(|e| KernelError::Load(format!("reading the possible CPUs: {e}")))?;
        let ring_size = ring::size_per_cpu(opts.ring_bytes, cpus, ring::page_size());
        let err = |reason: String| KernelError::Map {
            map: names::MAP_RINGS,
            reason,
        };
        let mut rings = Vec::with_capacity(cpus as usize);
        let mut fresh_rings = Vec::with_capacity(cpus as usize);
        for cpu in 0..cpus {
            let map = shared_map(
                bpf_map_type::BPF_MAP_TYPE_RINGBUF,
                0,
                0,
                ring_size,
                "podtrace_ring",
            )
            .map_err(|e| err(format!("creating the ring of CPU {cpu}: {e}")))?;
            let fd = map
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| err(format!("{e}")))?;
            fresh_rings.push(
                Ring::new(fd, ring_size as usize)
                    .map_err(|e| err(format!("mapping the ring of CPU {cpu}: {e}")))?,
            );
            rings.push(map);
        }
        Ok(Self {
            opts: opts.clone(),
            object,
            wakes: None,
            instances: BTreeMap::new(),
            rings,
            ring_size,
            stages: None,
            fresh_rings,
            fresh_loggers: Vec::new(),
            attached: BTreeMap::new(),
            drops: None,
            drops_error: None,
            drop_netns: None,
            drop_budget: None,
            swept: Vec::new(),
            lock_timed_out: std::collections::BTreeSet::new(),
        })
    }

    /// Loads the copy of the programs for `netns` (once).
    fn instance(&mut self, netns: &Netns) -> Result<&mut Instance, KernelError> {
        if !self.instances.contains_key(&netns.cookie) {
            let mut config = self.opts.config;
            config.netns_cookie = netns.cookie;
            let slots = self.opts.flow_entries;
            if !slots.is_power_of_two() || slots < tracer_common::FLOW_PROBES {
                return Err(KernelError::Load(format!(
                    "flow table size {slots} per CPU: must be a power of two of at least {}",
                    tracer_common::FLOW_PROBES
                )));
            }
            // Programs that count no flows never write the table: the
            // least it can be.
            let slots = if self.counts_flows() {
                slots
            } else {
                tracer_common::FLOW_PROBES
            };
            config.flow_slots = slots;
            // A quarter of a CPU's ring: the drain timer collects most
            // records, and this wakes a reader that sleeps through a burst
            // with three quarters of the ring still free (every namespace's
            // copy counts into the same per-CPU counter, as into the same
            // ring). A wakeup costs the CPU that sends it microseconds on a
            // VM (an interrupt to itself, then one to the reader's CPU):
            // once per sixteenth of the ring it added 20-60 ns to every
            // reported packet.
            config.wakeup_bytes = (self.ring_size / 4).max(1024);
            config.stage_bytes = stage_bytes(self.ring_size);
            let cpus = self.rings.len() as u32;
            let entries = cpus
                .checked_mul(slots)
                .ok_or_else(|| KernelError::Load(format!("{cpus} CPUs x {slots} flows")))?;
            let mut loader = EbpfLoader::new();
            loader
                .override_global(names::GLOBAL_CONFIG, &config, true)
                .map_max_entries(names::MAP_RINGS, cpus)
                .map_max_entries(names::MAP_FLOWS, entries)
                .map_max_entries(names::MAP_STAGES, cpus);
            // Only the first copy reports drops (one program sees every
            // namespace's); the others keep a ring of one page.
            let drops = self.opts.drops.filter(|_| self.instances.is_empty());
            match &drops {
                Some(offsets) => {
                    loader
                        .override_global(names::GLOBAL_DROP_CONFIG, offsets, true)
                        .map_max_entries(names::MAP_DROPS, drops_ring_bytes(cpus));
                }
                None => {
                    loader.map_max_entries(names::MAP_DROPS, ring::page_size());
                }
            }
            // The first copy creates the maps the copies share; later ones
            // get them through pins that last as long as their load.
            let shared = [
                (names::MAP_STAGES, self.stages.as_ref().and_then(map_data)),
                (names::MAP_WAKES, self.wakes.as_ref().and_then(map_data)),
            ];
            let pins = if shared.iter().any(|(_, m)| m.is_some()) {
                let pin_err = |e: std::io::Error| {
                    KernelError::Load(format!(
                        "handing the shared maps to netns {}'s copy of the programs: {e}",
                        netns.name
                    ))
                };
                let pins = Pins::new().map_err(pin_err)?;
                for (name, map) in shared {
                    if let Some(map) = map {
                        loader.map_pin_path(name, pins.pin(name, map).map_err(pin_err)?);
                    }
                }
                Some(pins)
            } else {
                None
            };
            let mut bpf = loader.load(self.object).map_err(|e| load_error(&e))?;
            drop(pins);
            for (name, map) in shared {
                let Some(map) = map else { continue };
                let got = bpf.map(name).and_then(map_data).and_then(map_id);
                if got.is_none() || got != map_id(map) {
                    return Err(KernelError::Load(format!(
                        "netns {}'s copy of the programs did not get the shared map {name}",
                        netns.name
                    )));
                }
            }
            for (name, _) in PROGRAMS {
                let prog: &mut SchedClassifier = bpf
                    .program_mut(name)
                    .ok_or_else(|| KernelError::Load(format!("program {name} missing")))?
                    .try_into()
                    .map_err(|e: aya::programs::ProgramError| KernelError::Load(e.to_string()))?;
                prog.load().map_err(|e| load_error(&e))?;
            }
            fill_outer(&mut bpf, names::MAP_RINGS, &self.rings, |cpu| {
                format!("the ring of CPU {cpu}")
            })?;
            for (name, slot) in [
                (names::MAP_STAGES, &mut self.stages),
                (names::MAP_WAKES, &mut self.wakes),
            ] {
                if slot.is_none() {
                    *slot = bpf.take_map(name);
                    if slot.as_ref().and_then(map_data).is_none() {
                        return Err(KernelError::Map {
                            map: name,
                            reason: "missing, or not an array".into(),
                        });
                    }
                }
            }
            if let Ok(logger) = aya_log::EbpfLogger::init(&mut bpf) {
                self.fresh_loggers.push(logger);
            }
            if let Some(offsets) = drops {
                match attach_drops(&mut bpf) {
                    Ok(ring) => {
                        self.drops = Some(ring);
                        self.drop_budget = bpf.take_map(names::MAP_DROP_BUDGET);
                        if offsets.all != 0 {
                            self.drop_netns = bpf
                                .take_map(names::MAP_DROP_NETNS)
                                .and_then(|m| aya::maps::HashMap::try_from(m).ok());
                        }
                    }
                    Err(e) => self.drops_error = Some(e),
                }
            }
            if let Some(map) = &mut self.drop_netns {
                map.insert(netns.cookie, 1, 0)
                    .map_err(|e| map_err(names::MAP_DROP_NETNS, &e))?;
            }
            let flows = FlowTable::map(&bpf, entries as usize, netns.cookie)?;
            self.instances.insert(
                netns.cookie,
                Instance {
                    bpf,
                    slots: std::collections::BTreeSet::new(),
                    flows,
                    live: Vec::new(),
                },
            );
        }
        Ok(self
            .instances
            .get_mut(&netns.cookie)
            .expect("just inserted"))
    }

    /// Attaches both directions to `iface` in `netns` (TCX where the kernel
    /// has it, clsact otherwise). Attaching twice is a no-op.
    pub fn attach(&mut self, netns: &Arc<Netns>, iface: &str) -> Result<&Attached, KernelError> {
        let ifindex = netns
            .run(|| nix::net::if_::if_nametoindex(iface))?
            .map_err(|_| KernelError::NoSuchInterface {
                netns: netns.name.clone(),
                iface: iface.to_owned(),
            })?;
        let key = (netns.cookie, ifindex);
        if !self.attached.contains_key(&key) {
            // A namespace whose lock another podtrace held too long is not
            // waited for again: every interface would wait as long.
            let wait = if self.lock_timed_out.contains(&netns.cookie) {
                std::time::Duration::ZERO
            } else {
                LEGACY_LOCK_WAIT
            };
            let inst = self.instance(netns)?;
            let (links, swept) = netns.run(|| {
                attach_here(
                    &mut inst.bpf,
                    &mut inst.live,
                    &netns.name,
                    iface,
                    ifindex,
                    wait,
                )
            })?;
            if links.is_ok() {
                inst.slots.insert(hook_slot(ifindex));
            }
            if swept.as_ref().is_some_and(|s| s.lock_timed_out) {
                self.lock_timed_out.insert(netns.cookie);
            }
            // Said even when the attach failed: the filters are gone.
            if let Some(swept) = swept.filter(|s| !s.is_empty()) {
                self.swept
                    .push((netns.name.clone(), iface.to_owned(), swept));
            }
            let links = links?;
            self.attached.insert(
                key,
                Attached {
                    netns: Arc::clone(netns),
                    iface: iface.to_owned(),
                    ifindex,
                    links,
                },
            );
        }
        Ok(&self.attached[&key])
    }

    /// Detaches `ifindex` of the namespace with `netns_cookie`, if attached.
    /// An interface that has gone away already is not an error.
    pub fn detach(&mut self, netns_cookie: u64, ifindex: u32) {
        if let Some(a) = self.attached.remove(&(netns_cookie, ifindex)) {
            self.detach_one(a);
        }
    }

    fn detach_one(&mut self, a: Attached) {
        let [ingress, egress] = a.links;
        let Some(inst) = self.instances.get_mut(&a.netns.cookie) else {
            return;
        };
        // Legacy tc filters are removed through netlink in their own netns;
        // TCX links only need their fd closed, from anywhere.
        let _ = a.netns.run(|| {
            let _ = program(&mut inst.bpf, PROGRAMS[0].0).detach(ingress);
            let _ = program(&mut inst.bpf, PROGRAMS[1].0).detach(egress);
        });
    }

    /// What the sweeps of legacy tc filters found since the last call:
    /// `(netns, iface, found)` (see [`crate::legacy_tc`]).
    pub fn take_swept(&mut self) -> Vec<(String, String, crate::legacy_tc::Swept)> {
        std::mem::take(&mut self.swept)
    }

    /// The probes the kernel dropped since the last call (none unless
    /// loaded with [`LoadOptions::drops`]).
    pub fn take_drops(&mut self) -> Vec<tracer_common::DropEvent> {
        let mut out = Vec::new();
        if let Some(ring) = &mut self.drops {
            while let Some(item) = ring.next() {
                if item.len() >= size_of::<tracer_common::DropEvent>() {
                    // SAFETY: DropEvent is plain data valid for any bits,
                    // and the item holds at least its size.
                    out.push(unsafe {
                        item.as_ptr()
                            .cast::<tracer_common::DropEvent>()
                            .read_unaligned()
                    });
                }
            }
        }
        out
    }

    /// Why drops are not reported although asked for, once.
    pub fn take_drops_error(&mut self) -> Option<String> {
        self.drops_error.take()
    }

    /// Drops left out for the per-CPU budget
    /// ([`tracer_common::DROPS_PER_WINDOW`]), since load.
    pub fn drops_suppressed(&self) -> u64 {
        let Some(map) = &self.drop_budget else {
            return 0;
        };
        let Ok(budget) =
            aya::maps::PerCpuArray::<&MapData, tracer_common::DropBudget>::try_from(map)
        else {
            return 0;
        };
        budget
            .get(&0, 0)
            .map_or(0, |per_cpu| per_cpu.iter().map(|b| b.suppressed).sum())
    }

    /// Every attached interface.
    pub fn attached(&self) -> impl Iterator<Item = &Attached> {
        self.attached.values()
    }

    /// The event ring buffers (one per CPU, shared by every namespace), on
    /// the first call; none after.
    pub fn take_new_rings(&mut self) -> Vec<Ring> {
        std::mem::take(&mut self.fresh_rings)
    }

    /// Kernel log readers (aya-log) of the copies loaded since the last call.
    pub fn take_new_loggers(&mut self) -> Vec<aya_log::EbpfLogger<&'static dyn log::Log>> {
        std::mem::take(&mut self.fresh_loggers)
    }

    /// Starts every flow's counts again, in every namespace, and returns
    /// the kernel time just before. Flows mode reports each flow's first
    /// packets at each hook; hooks attached one after another would
    /// report different packets of a flow that was already running, and
    /// no packet's path would be whole. Called once every hook is
    /// attached, it has them all report the same next packets.
    pub fn restart_flows(&self) -> u64 {
        let since = crate::output::kernel_now_ns();
        for inst in self.instances.values() {
            inst.flows.clear();
        }
        since
    }

    /// Bytes of records the programs have gathered but not yet handed to
    /// the rings (see [`Stage`]); they follow within
    /// [`tracer_common::STAGE_DELAY_NS`], or once a full ring has room.
    pub fn staged_bytes(&self) -> Result<u64, KernelError> {
        let Some(map) = &self.stages else {
            return Ok(0);
        };
        let err = |e: aya::maps::MapError| map_err(names::MAP_STAGES, &e);
        let stages: aya::maps::Array<&MapData, Stage> = map.try_into().map_err(err)?;
        let mut total = 0;
        for cpu in 0..stages.len() {
            total += stages.get(&cpu, 0).map_err(err)?.len;
        }
        Ok(total)
    }

    /// Kernel time (`CLOCK_MONOTONIC`) before which the programs' records
    /// are in the rings: the first record of the oldest batch still
    /// gathering (a CPU stamps its records in order), or [`HOLD_SLACK_NS`]
    /// ago if none is (a record is stamped a little before it is staged).
    /// A reader that merges the rings by time emits nothing newer, or a
    /// CPU whose batch waits for its timer would see its records come out
    /// after other CPUs' later ones.
    ///
    /// A batch older than [`HOLD_AT_MOST_NS`] does not count (its timer
    /// is late, or the ring keeps refusing it): the others' records must
    /// not wait for it forever.
    pub fn complete_before(&self) -> Result<u64, KernelError> {
        let now = crate::output::kernel_now_ns();
        let Some(wakes) = &self.wakes else {
            // Nothing loaded yet: nothing gathers.
            return Ok(complete_before([], now));
        };
        let states: PerCpuArray<&MapData, CpuState> = wakes
            .try_into()
            .map_err(|e| map_err(names::MAP_WAKES, &e))?;
        let per_cpu = states
            .get(&0, 0)
            .map_err(|e| map_err(names::MAP_WAKES, &e))?;
        Ok(complete_before(per_cpu.iter(), now))
    }

    /// Per-hook counters, summed over CPUs: the array slots each CPU's
    /// interfaces hold, plus the hash for those that found theirs taken.
    pub fn hook_stats(&self) -> Result<BTreeMap<HookKey, HookStats>, KernelError> {
        let mut out = BTreeMap::new();
        for (&netns_cookie, inst) in &self.instances {
            let slots = hook_slot_map(&inst.bpf)?;
            for &index in &inst.slots {
                let per_cpu = slots
                    .get(&index, 0)
                    .map_err(|e| map_err(names::MAP_HOOK_SLOTS, &e))?;
                for slot in per_cpu.iter().filter(|s| s.ifindex != 0) {
                    for (direction, v) in (0u32..).zip(&slot.stats) {
                        let key = HookKey {
                            netns_cookie,
                            ifindex: slot.ifindex,
                            direction,
                        };
                        add_hook(out.entry(key).or_default(), v);
                    }
                }
            }
            let map = per_cpu_map::<HookKey, HookStats>(&inst.bpf, names::MAP_HOOKS)?;
            for item in map.iter() {
                let (k, per_cpu) = item.map_err(|e| map_err(names::MAP_HOOKS, &e))?;
                let s: &mut HookStats = out.entry(k).or_default();
                for v in per_cpu.iter() {
                    add_hook(s, v);
                }
            }
        }
        // A slot counts both directions even if only one saw packets.
        out.retain(|_, s| s.seen != 0);
        Ok(out)
    }

    /// Whether the programs count every IPv4 packet in the flow tables
    /// (see [`tracer_common::Config::count_flows`]).
    pub fn counts_flows(&self) -> bool {
        self.opts.config.mode == tracer_common::mode::FLOWS || self.opts.config.count_flows != 0
    }

    /// Exact per-flow counters, summed over CPUs: a scan of the mapped flow
    /// tables, no syscall.
    pub fn flow_stats(&self) -> Result<BTreeMap<FlowKey, FlowStats>, KernelError> {
        let mut out = BTreeMap::new();
        for inst in self.instances.values() {
            inst.flows.for_each(|key, stats| {
                let s: &mut FlowStats = out.entry(key).or_default();
                *s = sum_flow([&*s, &stats]);
            });
        }
        Ok(out)
    }
}

/// Creates a map that the namespaces' copies of the programs share (put
/// into each copy's array of maps by [`fill_outer`]).
fn shared_map(
    ty: bpf_map_type,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    name: &str,
) -> Result<MapData, aya::maps::MapError> {
    let def = aya_obj::Map::new_from_params(ty as u32, key_size, value_size, max_entries, 0);
    MapData::create(def, name, None)
}

/// Puts the `inner` maps, at their indexes, into the array of maps named
/// `outer` of one copy of the programs; `what` names an inner map by its
/// index for errors.
fn fill_outer<'a>(
    bpf: &mut Ebpf,
    outer: &'static str,
    inner: impl IntoIterator<Item = &'a MapData>,
    what: impl Fn(usize) -> String,
) -> Result<(), KernelError> {
    let err = |reason: String| KernelError::Map { map: outer, reason };
    let mut map: ArrayOfMaps<&mut MapData, MapData> = bpf
        .map_mut(outer)
        .ok_or_else(|| err("missing".into()))?
        .try_into()
        .map_err(|e: aya::maps::MapError| err(e.to_string()))?;
    for (i, m) in inner.into_iter().enumerate() {
        let index = u32::try_from(i).map_err(|e| err(e.to_string()))?;
        map.set(index, m, 0)
            .map_err(|e| err(format!("adding {}: {e}", what(i))))?;
    }
    Ok(())
}

/// The map of an array or a per-CPU array (what the shared maps are).
fn map_data(m: &aya::maps::Map) -> Option<&MapData> {
    match m {
        aya::maps::Map::Array(d) | aya::maps::Map::PerCpuArray(d) => Some(d),
        _ => None,
    }
}

/// The kernel's id of `m`, to tell whether two fds are one map.
fn map_id(m: &MapData) -> Option<u32> {
    m.info().ok().map(|i| i.id())
}

/// Longest a reader holds records back for another CPU's batch (see
/// [`Kernel::complete_before`]): three times the most a batch waits for
/// its timer.
pub const HOLD_AT_MOST_NS: u64 = 3 * tracer_common::STAGE_DELAY_NS;

/// How long a reader holds back the newest records even when no batch is
/// gathering: a record's stamp is taken before it reaches its batch, and
/// a virtual CPU may stall in between.
pub const HOLD_SLACK_NS: u64 = 1_000_000;

/// [`Kernel::complete_before`] from the CPUs' states at kernel time `now`.
fn complete_before<'a>(states: impl IntoIterator<Item = &'a CpuState>, now: u64) -> u64 {
    states
        .into_iter()
        .map(|s| s.staged_since)
        .filter(|&since| since != 0 && since.saturating_add(HOLD_AT_MOST_NS) > now)
        .fold(now.saturating_sub(HOLD_SLACK_NS), u64::min)
}

/// The kernel's flow table (an mmapable array of [`FlowSlot`]), mapped
/// read-only into this process for as long as the programs are loaded.
struct FlowTable {
    base: std::ptr::NonNull<FlowSlot>,
    /// The namespace of every key in the table.
    netns_cookie: u64,
    entries: usize,
    len: usize,
}

// SAFETY: the mapping is only read, through volatile loads, and lives until
// drop; nothing in it is tied to a thread.
unsafe impl Send for FlowTable {}
// SAFETY: as above.
unsafe impl Sync for FlowTable {}

impl FlowTable {
    fn map(bpf: &Ebpf, entries: usize, netns_cookie: u64) -> Result<Self, KernelError> {
        let err = |reason: String| KernelError::Map {
            map: names::MAP_FLOWS,
            reason,
        };
        let Some(aya::maps::Map::Array(data)) = bpf.map(names::MAP_FLOWS) else {
            return Err(err("missing, or not an array".into()));
        };
        // Array values are laid out at 8-byte strides from offset 0.
        let len = std::mem::size_of::<FlowSlot>() * entries;
        let len_nz = std::num::NonZeroUsize::new(len).ok_or_else(|| err("empty".into()))?;
        // SAFETY: a fresh shared read-only mapping of the map's fd; the
        // kernel keeps the memory for as long as it is mapped.
        let ptr = unsafe {
            nix::sys::mman::mmap(
                None,
                len_nz,
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_SHARED,
                data.fd().as_fd(),
                0,
            )
        }
        .map_err(|e| err(format!("mmap: {e}")))?;
        Ok(Self {
            base: ptr.cast(),
            netns_cookie,
            entries,
            len,
        })
    }

    /// Empties every slot: each flow starts again, with its next packet,
    /// at every hook. A slot the kernel is claiming as this runs keeps a
    /// count off by that packet.
    fn clear(&self) {
        for i in 0..self.entries {
            // SAFETY: i < entries, inside the mapping, which is writable; a
            // volatile store, since the kernel reads the memory concurrently.
            unsafe {
                let slot = self.base.as_ptr().add(i);
                std::ptr::write_volatile(&raw mut (*slot).stats.packets, 0);
            }
        }
    }

    /// Calls `f` with each flow's key and counters in one CPU's region (a
    /// key shows up once per CPU that counted it). Entries the kernel is
    /// rewriting while we read are skipped.
    fn for_each(&self, mut f: impl FnMut(FlowKey, FlowStats)) {
        for i in 0..self.entries {
            // SAFETY: i < entries, inside the mapping; volatile reads, since
            // the kernel writes the memory concurrently.
            unsafe {
                let slot = self.base.as_ptr().add(i);
                if std::ptr::read_volatile(&raw const (*slot).stats.packets) == 0 {
                    continue;
                }
                let key = std::ptr::read_volatile(&raw const (*slot).key);
                let stats = std::ptr::read_volatile(&raw const (*slot).stats);
                let again = std::ptr::read_volatile(&raw const (*slot).key);
                if stats.packets != 0 && key == again {
                    f(key.in_netns(self.netns_cookie), stats);
                }
            }
        }
    }
}

impl Drop for FlowTable {
    fn drop(&mut self) {
        // SAFETY: mapped in `map` with this length, unmapped once.
        let _ = unsafe { nix::sys::mman::munmap(self.base.cast(), self.len) };
    }
}

fn add_hook(s: &mut HookStats, v: &HookStats) {
    s.seen += v.seen;
    s.matched += v.matched;
    s.reported += v.reported;
    s.lost += v.lost;
    s.bytes += v.bytes;
    s.other += v.other;
}

/// Largest batch for rings of `ring_size` bytes: [`STAGE_MAX`], or an
/// eighth of a ring where that is less (a ring holds several batches), and
/// never less than room for the largest record.
fn stage_bytes(ring_size: u32) -> u32 {
    let least =
        (BatchHeader::LEN + PacketEvent::record_len(MAX_SNAPLEN as u32)).next_power_of_two();
    (ring_size / 8).clamp(least as u32, STAGE_MAX as u32)
}

fn hook_slot_map(bpf: &Ebpf) -> Result<PerCpuArray<&MapData, HookSlot>, KernelError> {
    let map = bpf.map(names::MAP_HOOK_SLOTS).ok_or(KernelError::Map {
        map: names::MAP_HOOK_SLOTS,
        reason: "missing".into(),
    })?;
    PerCpuArray::try_from(map).map_err(|e| map_err(names::MAP_HOOK_SLOTS, &e))
}

fn per_cpu_map<'a, K: aya::Pod, V: aya::Pod>(
    bpf: &'a Ebpf,
    name: &'static str,
) -> Result<PerCpuHashMap<&'a MapData, K, V>, KernelError> {
    let map = bpf.map(name).ok_or(KernelError::Map {
        map: name,
        reason: "missing".into(),
    })?;
    PerCpuHashMap::try_from(map).map_err(|e| map_err(name, &e))
}

/// Bytes of the drops' ring: room for one window's budget of every CPU
/// ([`tracer_common::DROPS_PER_WINDOW`] each, read about once a window),
/// and at least 256 KiB; a power of two, as the kernel wants.
fn drops_ring_bytes(cpus: u32) -> u32 {
    let record = (size_of::<tracer_common::DropEvent>() + 8) as u64;
    let want = u64::from(cpus) * tracer_common::DROPS_PER_WINDOW * record;
    u32::try_from(want.max(256 << 10).next_power_of_two()).unwrap_or(1 << 30)
}

/// Loads `podtrace_kfree_skb`, attaches it to the `kfree_skb` tracepoint
/// and takes its ring. The error says why in words (an old kernel's
/// tracepoint has no drop reason, for one).
fn attach_drops(bpf: &mut Ebpf) -> Result<aya::maps::RingBuf<MapData>, String> {
    let prog: &mut aya::programs::RawTracePoint = bpf
        .program_mut(names::PROG_KFREE_SKB)
        .ok_or_else(|| format!("program {} missing", names::PROG_KFREE_SKB))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    prog.load().map_err(|e| error_chain(&e))?;
    prog.attach(names::TRACEPOINT_KFREE_SKB).map_err(|e| {
        let why = error_chain(&e);
        // The program reads the tracepoint's third argument, the reason,
        // which the kernel gives only since Linux 5.17.
        let hint = if why.contains("Invalid argument") || why.contains("os error 22") {
            " (before Linux 5.17 this tracepoint gives no drop reason)"
        } else {
            ""
        };
        format!("attaching to {}: {why}{hint}", names::TRACEPOINT_KFREE_SKB)
    })?;
    let map = bpf
        .take_map(names::MAP_DROPS)
        .ok_or_else(|| format!("map {} missing", names::MAP_DROPS))?;
    aya::maps::RingBuf::try_from(map).map_err(|e| e.to_string())
}

fn program<'a>(bpf: &'a mut Ebpf, name: &str) -> &'a mut SchedClassifier {
    bpf.program_mut(name)
        .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
        .expect("programs were checked at load")
}

/// Attaches both programs to `iface` of the namespace the thread is in;
/// through legacy tc, first removes what killed podtraces left there (and
/// says what it found, whether the attach works or not).
fn attach_here(
    bpf: &mut Ebpf,
    live: &mut Vec<std::os::unix::net::UnixListener>,
    netns: &str,
    iface: &str,
    ifindex: u32,
    wait: std::time::Duration,
) -> (
    Result<[SchedClassifierLinkId; 2], KernelError>,
    Option<crate::legacy_tc::Swept>,
) {
    if has_tcx() {
        return (attach_both(bpf, netns, iface, true), None);
    }
    // Ours are marked live before they go on, for other podtraces' sweeps.
    if live.is_empty() {
        let ids: Vec<u32> = PROGRAMS
            .iter()
            .filter_map(|(name, _)| program(bpf, name).info().ok().map(|i| i.id()))
            .collect();
        match crate::legacy_tc::mark_live(&ids) {
            Ok(marks) => *live = marks,
            Err(e) => log::debug!("marking programs {ids:?} live in {netns}: {e}"),
        }
    }
    // Held from the sweep to the attach (see `NetnsLock`); without it,
    // only tell.
    let lock = crate::legacy_tc::NetnsLock::take(wait);
    let sure = lock.as_ref().map(|_| ()).map_err(|e| {
        format!(
            "it could not take the namespace's lock ({e}): another podtrace attaching, or a \
             process holding the name podtrace-legacy-tc"
        )
    });
    let mut swept = crate::legacy_tc::sweep(iface, ifindex, sure);
    swept.lock_timed_out = lock.is_err();
    let links = attach_both(bpf, netns, iface, false);
    drop(lock);
    (links, Some(swept))
}

/// How long an attach through legacy tc waits for another podtrace's sweep
/// and attach in the same namespace (a few ms each).
const LEGACY_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Attaches both programs to `iface`: through TCX, or legacy tc.
fn attach_both(
    bpf: &mut Ebpf,
    netns: &str,
    iface: &str,
    tcx: bool,
) -> Result<[SchedClassifierLinkId; 2], KernelError> {
    let mut ids = Vec::with_capacity(2);
    for (name, dir) in PROGRAMS {
        let attach_type = match dir {
            Direction::Ingress => TcAttachType::Ingress,
            Direction::Egress => TcAttachType::Egress,
        };
        let attached = if tcx {
            program(bpf, name).attach(iface, attach_type)
        } else {
            // Legacy tc needs a clsact qdisc; "exists already" is fine and
            // any real problem shows up in the attach below.
            let _ = aya::programs::tc::qdisc_add_clsact(iface);
            program(bpf, name).attach_with_options(
                iface,
                attach_type,
                aya::programs::tc::TcAttachOptions::Netlink(
                    aya::programs::tc::NlOptions::default(),
                ),
            )
        };
        match attached {
            Ok(id) => ids.push(id),
            Err(e) => {
                // Undo the half we did (only ingress can be attached here).
                for id in ids.drain(..) {
                    let _ = program(bpf, PROGRAMS[0].0).detach(id);
                }
                return Err(KernelError::Attach {
                    netns: netns.to_owned(),
                    iface: iface.to_owned(),
                    dir,
                    reason: error_chain(&e),
                });
            }
        }
    }
    let egress = ids.pop().expect("two links");
    let ingress = ids.pop().expect("two links");
    Ok([ingress, egress])
}

impl Drop for Kernel {
    fn drop(&mut self) {
        let all = std::mem::take(&mut self.attached);
        for a in all.into_values() {
            self.detach_one(a);
        }
    }
}

/// TCX (Linux 6.6+) where the kernel has it, unless legacy tc is asked
/// for (`PODTRACE_TC=netlink`, to test older kernels' path on a new one).
fn has_tcx() -> bool {
    use aya::util::KernelVersion;
    if std::env::var_os(crate::legacy_tc::FORCE_ENV).is_some_and(|v| v == "netlink") {
        return false;
    }
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// Sums per-CPU flow counters: counts add up, times take the extremes.
pub fn sum_flow<'a>(per_cpu: impl IntoIterator<Item = &'a FlowStats>) -> FlowStats {
    let mut s = FlowStats::default();
    for v in per_cpu {
        if v.packets == 0 {
            continue;
        }
        s.first_ns = if s.packets == 0 {
            v.first_ns
        } else {
            s.first_ns.min(v.first_ns)
        };
        s.packets += v.packets;
        s.bytes += v.bytes;
        s.last_ns = s.last_ns.max(v.last_ns);
        s.tcp_flags |= v.tcp_flags;
    }
    s
}

fn map_err(map: &'static str, e: &dyn std::error::Error) -> KernelError {
    KernelError::Map {
        map,
        reason: error_chain(e),
    }
}

fn load_error(e: &(dyn std::error::Error + 'static)) -> KernelError {
    let mut msg = error_chain(e);
    // A verifier rejection comes with its whole log: keep the verdict.
    if let Some(at) = msg.find("Verifier output:") {
        let tail: Vec<&str> = msg[at..].lines().rev().take(6).collect();
        let head = &msg[..at];
        msg = format!(
            "{head}verifier said: ... {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    if msg.contains("Operation not permitted") || msg.contains("EPERM") {
        KernelError::NotPermitted
    } else {
        KernelError::Load(msg)
    }
}

/// "outer: inner: innermost", the way a user wants to read a cause.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Links in the whole kernel whose program is one of podtrace's, as
/// `(link id, program name)`: the kernel's own listing, so it also sees
/// what another podtrace process (or a crashed one) left attached.
pub fn podtrace_links() -> Vec<(u32, String)> {
    let progs: BTreeMap<u32, String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| Some((p.id(), p.name_as_str()?.to_owned())))
        .filter(|(_, name)| name.starts_with("podtrace"))
        .collect();
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter_map(|l| Some((l.id(), progs.get(&l.program_id())?.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_wait_for_the_oldest_recent_batch_only() {
        let now = 1_000_000_000;
        let state = |staged_since| CpuState {
            unwoken: 0,
            staged_since,
            ..CpuState::default()
        };
        // Nothing gathering: everything but the last instant may go.
        let recent = now - HOLD_SLACK_NS;
        assert_eq!(complete_before(&[state(0), state(0)], now), recent);
        // The oldest batch still gathering bounds what goes out.
        let (a, b) = (now - 4_000_000, now - 2_000_000);
        assert_eq!(complete_before(&[state(b), state(0), state(a)], now), a);
        // A batch younger than the slack changes nothing.
        assert_eq!(complete_before(&[state(now - 1000)], now), recent);
        // A batch older than the hold limit (its ring full, its timer late)
        // holds nobody back.
        let stale = now - HOLD_AT_MOST_NS - 1;
        assert_eq!(complete_before(&[state(stale), state(b)], now), b);
        assert_eq!(complete_before(&[state(stale)], now), recent);
    }

    #[test]
    fn a_ring_holds_several_batches_and_a_batch_the_largest_record() {
        assert_eq!(stage_bytes(2 << 20), STAGE_MAX as u32);
        assert_eq!(stage_bytes(16 << 10), 2048);
        // One page: a batch of 512 bytes holds a record of MAX_SNAPLEN.
        assert_eq!(stage_bytes(4096), 512);
        assert!(
            stage_bytes(4096) as usize
                >= BatchHeader::LEN + PacketEvent::record_len(MAX_SNAPLEN as u32)
        );
    }

    #[test]
    fn flow_sums_over_cpus() {
        let a = FlowStats {
            packets: 2,
            bytes: 200,
            first_ns: 50,
            last_ns: 90,
            tcp_flags: 0x02,
            _pad: 0,
        };
        let b = FlowStats {
            packets: 1,
            bytes: 60,
            first_ns: 40,
            last_ns: 70,
            tcp_flags: 0x10,
            _pad: 0,
        };
        let idle = FlowStats::default();
        let s = sum_flow([&a, &idle, &b]);
        assert_eq!(
            (s.packets, s.bytes, s.first_ns, s.last_ns, s.tcp_flags),
            (3, 260, 40, 90, 0x12)
        );
    }
}

//! Plain-data types shared by podtrace's kernel programs and its userspace.
//!
//! Every type here is `#[repr(C)]`, `Copy`, free of `bool` and of implicit
//! padding (each has an explicit `_pad` field where alignment needs it), and
//! its size is asserted at compile time so that the kernel and userspace can
//! never disagree on a layout. Userspace reads them with the `user` feature,
//! which implements `aya::Pod`.
#![no_std]

/// Most bytes of a packet, from its L2 header on, that one event can carry.
pub const MAX_SNAPLEN: usize = 256;
/// Most bytes captured per event unless the user asks for another amount
/// (`Config::tcp_head_only` may copy fewer).
pub const DEFAULT_SNAPLEN: u32 = 128;

/// Names of the objects in the eBPF ELF file, so userspace and kernel agree.
pub mod names {
    /// TC program attached at ingress and egress of every hooked interface.
    pub const PROG_TC: &str = "podtrace_tc";
    /// Array of ring buffers of [`crate::PacketEvent`]s, one per possible
    /// CPU, indexed by the CPU: a program writes to its own CPU's ring, so
    /// CPUs never wait on each other's lock. Userspace creates the rings
    /// and shares them between the namespaces' copies of the programs.
    pub const MAP_RINGS: &str = "RINGS";
    /// Per-CPU array of one [`crate::CpuState`]: what each CPU's ring and
    /// batch hold back from the reader. Created with the first copy of the
    /// programs; later copies load with it in their own one's place (like
    /// the rings, they all write to the same rings and batches).
    pub const MAP_WAKES: &str = "WAKES";
    /// Array of [`crate::FlowSlot`]: one region of [`crate::Config::flow_slots`]
    /// entries per possible CPU, memory-mapped by userspace.
    pub const MAP_FLOWS: &str = "FLOWS";
    /// Per-CPU LRU hash of [`crate::HookKey`] -> [`crate::HookStats`], for
    /// the hooks whose slot in [`MAP_HOOK_SLOTS`] another interface holds.
    pub const MAP_HOOKS: &str = "HOOKS";
    /// Per-CPU array of [`crate::HookSlot`], indexed by
    /// [`crate::hook_slot`] of the interface.
    pub const MAP_HOOK_SLOTS: &str = "HOOK_SLOTS";
    /// Array of [`crate::Stage`]s, one per possible CPU, indexed by the CPU:
    /// where the programs gather each CPU's records into a batch before
    /// handing it to the CPU's ring. Created with the first copy of the
    /// programs (it needs their BTF: it holds timers); later copies load
    /// with it in their own one's place.
    pub const MAP_STAGES: &str = "STAGES";
    /// Global holding the [`crate::Config`].
    pub const GLOBAL_CONFIG: &str = "CONFIG";
    /// Raw tracepoint program on `kfree_skb`: reports the probes the
    /// kernel drops, with the reason ([`crate::DropEvent`]).
    pub const PROG_KFREE_SKB: &str = "podtrace_kfree_skb";
    /// The tracepoint it attaches to.
    pub const TRACEPOINT_KFREE_SKB: &str = "kfree_skb";
    /// Ring buffer of [`crate::DropEvent`]s.
    pub const MAP_DROPS: &str = "DROPS";
    /// Global holding the [`crate::DropConfig`].
    pub const GLOBAL_DROP_CONFIG: &str = "DROP_CONFIG";
    /// Hash of the traced namespaces' cookies, for drops of every packet.
    pub const MAP_DROP_NETNS: &str = "DROP_NETNS";
    /// Per-CPU array of one [`crate::DropBudget`].
    pub const MAP_DROP_BUDGET: &str = "DROP_BUDGET";
}

/// What kind of record an event is. Kinds are numbered in ranges and a number
/// is never reused: 1-99 packet events, 100-199 reserved for kernel state
/// events (drops, conntrack), 200-299 for userspace-made records. The kernel
/// hands packet events to the ring in [`EventKind::Batch`] envelopes.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A packet seen at a TC hook: [`PacketEvent`].
    Packet = 1,
    /// Records of one CPU and namespace, back to back: a [`BatchHeader`],
    /// then [`BatchHeader::len`] bytes of [`PacketEvent`]s, each
    /// [`PacketEvent::record_len`] of its `cap_len` bytes long.
    Batch = 2,
}

/// The start of an [`EventKind::Batch`] record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// Always [`EventKind::Batch`].
    pub kind: u32,
    /// Bytes of records after this header.
    pub len: u32,
}

impl BatchHeader {
    /// Bytes of the header, before the first record.
    pub const LEN: usize = core::mem::size_of::<Self>();
}

/// Largest batch, header included: the flush threshold is
/// [`Config::stage_bytes`], at most this. On bulk TCP, batches of 16 KiB
/// measured a few ns per record less than 4 KiB, and 1-2 KiB tens of ns
/// more: each batch pays the ring's lock and positions once.
pub const STAGE_MAX: usize = 16384;

/// Where the programs gather one CPU's records, from every traced
/// namespace in the order the CPU saw them (an entry of
/// [`names::MAP_STAGES`]). A record costs a copy into this buffer, which
/// the CPU keeps in its caches, instead of a reservation in the ring,
/// whose memory is cold by the time the CPU comes round to it again; the
/// ring then takes one batch of records at a time. A batch goes to the ring
/// when the next record would not fit, at once after a probe, and from a
/// timer [`STAGE_DELAY_NS`] after its first record otherwise.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Stage {
    /// The kernel's `struct bpf_timer` (opaque to userspace).
    pub timer: [u64; 2],
    /// Bytes of records gathered, after the batch header's room.
    pub len: u64,
    /// Bit 0: the timer is set up; bit 1: it is running.
    pub state: u64,
    /// The batch: a [`BatchHeader`] (written at flush), then the records;
    /// past [`STAGE_MAX`], room for the largest record, so that a write at
    /// any offset below it stays inside the value.
    pub data: [u8; STAGE_MAX + PacketEvent::HEADER_LEN + MAX_SNAPLEN],
}

/// One CPU's bookkeeping that every namespace's copy of the programs
/// shares (the value of the per-CPU [`names::MAP_WAKES`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuState {
    /// Bytes of records the CPU handed to its ring since it last woke the
    /// reader.
    pub unwoken: u64,
    /// Kernel time of the first record in the CPU's [`Stage`] (its oldest:
    /// a CPU stamps its records in order), 0 when the stage is empty. Until
    /// that batch reaches the ring, the reader holds back other CPUs' newer
    /// records: it merges the rings by time, and can only merge what they
    /// hold.
    pub staged_since: u64,
    /// Kernel time (the flows-mode clock) of the last ICMP error reported
    /// past its flow's first packets: an error this CPU sees after a quiet
    /// spell is reported, whatever its flow's count.
    pub error_ns: u64,
    /// The flows-mode clock, cached: the kernel's coarse clock as this CPU
    /// read it (`clock_ns`) in jiffy `clock_jiffies`. The coarse clock
    /// moves only at a tick, and reading it is a helper call that costs
    /// 20-25 ns per hook on a VM, where the jiffies counter is one load:
    /// a CPU reads the clock once per tick, not once per packet.
    pub clock_jiffies: u64,
    /// See `clock_jiffies`.
    pub clock_ns: u64,
}

/// Most time a record waits in a [`Stage`] before it goes to the ring.
/// Each expiry is a timer interrupt (a VM exit on a VM): at 1 ms they
/// cost bulk TCP tens of ns per packet, at 10 ms nothing measurable.
pub const STAGE_DELAY_NS: u64 = 10_000_000;

/// Direction of a TC hook, as seen by the interface.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Packet arriving on the interface (TC ingress).
    Ingress = 0,
    /// Packet leaving through the interface (TC egress).
    Egress = 1,
}

impl Direction {
    /// Decodes the value the kernel wrote, `None` for anything unknown.
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Ingress),
            1 => Some(Self::Egress),
            _ => None,
        }
    }
}

/// Why the kernel chose to report a packet (bit set in [`PacketEvent::reason`]).
pub mod reason {
    /// Reported because the mode is `packets`: every matching packet.
    pub const MATCH: u32 = 1 << 0;
    /// One of the first packets of its flow at this hook (`flows` mode).
    pub const FLOW_START: u32 = 1 << 1;
    /// Carries podtrace's probe tag: always reported.
    pub const PROBE: u32 = 1 << 2;
    /// Picked by 1-in-N sampling (`flows` mode).
    pub const SAMPLED: u32 = 1 << 3;
}

/// Marker at the start of the L4 payload of every probe podtrace sends.
/// Survives NAT (which rewrites headers, never payload), so the kernel can
/// always report podtrace's own packets whatever the filter says.
pub const PROBE_MAGIC: [u8; 8] = *b"PODTRACE";

/// One packet seen at one hook. The envelope is the first two fields: `kind`
/// says what follows, so new kinds can share the ring buffer.
///
/// A record is this struct cut short after the captured bytes, padded to 8:
/// [`PacketEvent::record_len`] of `cap_len`. The kernel hands records to the
/// ring in [`EventKind::Batch`] envelopes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PacketEvent {
    /// Always [`EventKind::Packet`].
    pub kind: u32,
    /// Bits of [`reason`].
    pub reason: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, in nanoseconds.
    pub ts_ns: u64,
    /// Cookie of the hook's namespace ([`Config::netns_cookie`]): unique per
    /// netns for the kernel's lifetime, so two namespaces reusing an
    /// ifindex stay apart.
    pub netns_cookie: u64,
    /// Interface index, within that namespace.
    pub ifindex: u32,
    /// [`Direction`] as a `u32`.
    pub direction: u32,
    /// Length of the whole packet (`skb->len`).
    pub pkt_len: u32,
    /// Bytes of it copied into `data`.
    pub cap_len: u32,
    /// `skb->mark` at this hook.
    pub mark: u32,
    /// IPv4 header offset from the start of `data` (14 for Ethernet), or 0.
    pub l3_offset: u16,
    /// EtherType of the packet, host order.
    pub ethertype: u16,
    /// The first `cap_len` bytes of the packet, from the L2 header.
    pub data: [u8; MAX_SNAPLEN],
}

impl PacketEvent {
    /// Bytes before `data`: the shortest record that is a packet event.
    pub const HEADER_LEN: usize = core::mem::offset_of!(PacketEvent, data);

    /// Bytes a record with `cap_len` packet bytes takes in a batch: the
    /// header, then the bytes padded to 8.
    pub const fn record_len(cap_len: u32) -> usize {
        Self::HEADER_LEN + (cap_len as usize).next_multiple_of(8)
    }
}

/// Bytes of a dropped probe kept in a [`DropEvent`], from its IPv4 header:
/// the headers and the probe's payload, which identifies it.
pub const DROP_SNAP: usize = 96;

/// A probe the kernel dropped (`kfree_skb` with a reason), as
/// `podtrace_kfree_skb` reports it into [`names::MAP_DROPS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropEvent {
    /// `bpf_ktime_get_ns()` when it was dropped.
    pub ts_ns: u64,
    /// Kernel address of the code that dropped it.
    pub location: u64,
    /// Cookie of the namespace of the device the packet was on (0: none).
    pub netns_cookie: u64,
    /// `enum skb_drop_reason`.
    pub reason: u32,
    /// That device's index (0: none).
    pub ifindex: u32,
    /// Bytes of `data` copied from the packet: its linear part from the
    /// IPv4 header, at most [`DROP_SNAP`] (the payload of a large packet
    /// may sit in page fragments, not copied).
    pub copied: u32,
    /// The packet's length from its IPv4 header on, from the kernel's
    /// `sk_buff` (0 when not read): what the header of a packet over
    /// 64 KiB (BIG TCP), whose total length is 0, does not say.
    pub ip_len: u32,
    /// The packet from its IPv4 header on; zeros past `copied`.
    pub data: [u8; DROP_SNAP],
}

/// Where the kernel keeps what `podtrace_kfree_skb` reads, in bytes from
/// the start of each struct: found in the kernel's BTF by userspace, since
/// they change from one kernel build to the next.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropConfig {
    /// `sk_buff.head`.
    pub skb_head: u32,
    /// `sk_buff.network_header` (a u16 offset from `head`).
    pub skb_network_header: u32,
    /// `sk_buff.dev`.
    pub skb_dev: u32,
    /// `net_device.ifindex`.
    pub dev_ifindex: u32,
    /// `net_device.nd_net` (a pointer to the `struct net`).
    pub dev_nd_net: u32,
    /// `net.net_cookie`.
    pub net_cookie: u32,
    /// 0: report ping's probes, and the untagged answers a probe may get
    /// (SYN-ACK, RST, ICMP errors), only. Otherwise every IPv4 packet that the
    /// filter of [`Config`] keeps, dropped on a device of a namespace in
    /// [`names::MAP_DROP_NETNS`], at most [`DROPS_PER_WINDOW`] per CPU
    /// every [`DROP_WINDOW_NS`] (the rest are counted in
    /// [`names::MAP_DROP_BUDGET`]).
    pub all: u32,
    /// `sk_buff.tail` (a u32 offset from `head` on 64-bit kernels).
    pub skb_tail: u32,
    /// `SKB_DROP_REASON_NO_SOCKET`'s value (`u32::MAX` if unknown): a
    /// closed port, which the host answers, and the copy a raw socket
    /// already read. A node drops these all the time: reported only for
    /// one of ping's tagged probes.
    pub no_socket: u32,
    /// `sk_buff.sk`: the namespace of an IPv4 packet dropped with no
    /// device (a locally sent one, in the OUTPUT chain) is its socket's.
    pub skb_sk: u32,
    /// `sock_common.skc_net` (a `possible_net_t`, whose one member is the
    /// pointer to the `struct net`).
    pub sk_net: u32,
    /// `sk_buff.protocol` (the EtherType, network order): the socket's
    /// namespace is taken only for IPv4, not for the buffers of Unix or
    /// netlink sockets, which are freed the same way and have no device.
    pub skb_protocol: u32,
    /// `sk_buff.len`: the bytes from `sk_buff.data` on.
    pub skb_len: u32,
    /// `sk_buff.data` (a pointer), from which `len` counts.
    pub skb_data: u32,
}

/// Drops reported per CPU in one window when every packet counts: a node
/// that drops a flood must not flood the reader.
pub const DROPS_PER_WINDOW: u64 = 256;
/// That window, ns.
pub const DROP_WINDOW_NS: u64 = 100_000_000;

/// Per CPU: the drop reports of the current window, and those left out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropBudget {
    /// Start of the window, `bpf_ktime_get_ns()`.
    pub window_ns: u64,
    /// Reports in it.
    pub count: u64,
    /// Drops not reported, since load: over the budget, or the ring was
    /// full.
    pub suppressed: u64,
}

/// What identifies one hook: a direction on an interface in a namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HookKey {
    /// Namespace cookie, as in [`PacketEvent::netns_cookie`].
    pub netns_cookie: u64,
    /// Interface index in that namespace.
    pub ifindex: u32,
    /// [`Direction`] as a `u32`.
    pub direction: u32,
}

/// Per-hook counters, one copy per CPU; userspace sums them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookStats {
    /// Packets that ran through the program.
    pub seen: u64,
    /// Packets that passed the filter (or carried the probe tag).
    pub matched: u64,
    /// Packets the hook chose to report.
    pub reported: u64,
    /// Of those, records lost: the CPU's batch was full and its ring
    /// buffer had no room for it.
    pub lost: u64,
    /// Bytes of the IPv4 packets that passed the filter, as the flow
    /// counters count them (from the Ethernet header).
    pub bytes: u64,
    /// Packets that passed the filter and that the program could not read
    /// as IPv4 (ARP, IPv6, a truncated IPv4 header), which no flow counts:
    /// with `matched`, the IPv4 packet count where no flow table counts
    /// them.
    pub other: u64,
}

/// Number of entries of the per-CPU hook counter array. A power of two.
pub const HOOK_SLOTS: u32 = 1024;

/// Where an interface's counters live in the hook counter array: an array
/// index costs the kernel a few instructions where a hash lookup costs tens
/// of ns on every packet. Two interfaces of one namespace share a slot only
/// when their ifindexes differ by a multiple of [`HOOK_SLOTS`]; the second
/// one to see a packet on a CPU then counts in the `HOOKS` hash instead.
#[inline(always)]
pub const fn hook_slot(ifindex: u32) -> u32 {
    ifindex & (HOOK_SLOTS - 1)
}

/// One entry of the hook counter array: the counters of both directions of
/// the interface that holds the slot on this CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookSlot {
    /// Interface holding the slot on this CPU; 0 while the slot is free.
    pub ifindex: u32,
    /// Explicit padding, always zero.
    pub _pad: u32,
    /// Counters, indexed by [`Direction`] as a number.
    pub stats: [HookStats; 2],
}

/// Key of the exact per-flow counters: hook plus IPv4 5-tuple as seen there.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// Namespace cookie of the hook.
    pub netns_cookie: u64,
    /// Interface index of the hook.
    pub ifindex: u32,
    /// Source IPv4 address, network byte order as in the packet.
    pub src: [u8; 4],
    /// Destination IPv4 address, network byte order.
    pub dst: [u8; 4],
    /// TCP/UDP source port, or ICMP echo identifier (0 for other ICMP).
    pub sport: u16,
    /// TCP/UDP destination port, or ICMP type << 8 | code.
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
    /// [`Direction`] as a `u8`.
    pub direction: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 6],
}

/// Places a flow may take in its CPU's region of the flow table, from its
/// hash on. When all are taken by other flows, the one seen least recently
/// gives its place up (its counts are gone, as an LRU map would lose them).
pub const FLOW_PROBES: u32 = 4;

/// Flow table entries per CPU unless userspace asks for another number.
pub const DEFAULT_FLOW_SLOTS: u32 = 8192;

/// A flow's key inside one namespace's flow table: [`FlowKey`] without
/// the namespace, which every key of the table shares (each namespace has
/// its own copy of the programs and of the table). Without it, a key and
/// its counters fill one 64-byte cache line: a packet touches one line of
/// the table, not two. 8-aligned, so that the kernel may read and write
/// it as three words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    /// Interface index of the hook.
    pub ifindex: u32,
    /// Source IPv4 address, network byte order as in the packet.
    pub src: [u8; 4],
    /// Destination IPv4 address, network byte order.
    pub dst: [u8; 4],
    /// TCP/UDP source port, or ICMP echo identifier (0 for other ICMP).
    pub sport: u16,
    /// TCP/UDP destination port, or ICMP type << 8 | code.
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
    /// [`Direction`] as a `u8`.
    pub direction: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 6],
}

/// One entry of the flow table, one cache line (the table's memory starts
/// on a page). Free while `stats.packets` is 0; the kernel writes the key
/// before the counters, so a reader that sees the same key before and
/// after reading the counters read that flow's counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSlot {
    /// The flow, as seen at its hook.
    pub key: SlotKey,
    /// Its counters on this CPU.
    pub stats: FlowStats,
}

impl SlotKey {
    /// The key as the three little-endian words of its memory layout, built
    /// in registers: the kernel compares and stores keys word by word,
    /// since a struct compare or copy becomes a byte loop in BPF.
    #[inline(always)]
    pub const fn words(
        ifindex: u32,
        src: [u8; 4],
        dst: [u8; 4],
        sport: u16,
        dport: u16,
        proto: u8,
        direction: u8,
    ) -> [u64; 3] {
        [
            ifindex as u64 | (u32::from_le_bytes(src) as u64) << 32,
            u32::from_le_bytes(dst) as u64 | (sport as u64) << 32 | (dport as u64) << 48,
            proto as u64 | (direction as u64) << 8,
        ]
    }

    /// Hash of a key's words, which picks its place in the flow table:
    /// each word is folded in with a multiply and a shift, then murmur3's
    /// finalizer mixes the result, so that every bit of the addresses and
    /// ports reaches the low bits (flows often differ only in a last octet
    /// or a port).
    #[inline(always)]
    pub const fn hash(w: &[u64; 3]) -> u32 {
        let mut k = (w[2] ^ w[1]).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        k ^= k >> 32;
        k = (k ^ w[0]).wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^= k >> 33;
        k as u32
    }

    /// The key as the rest of podtrace knows it, in namespace `netns_cookie`.
    pub const fn in_netns(self, netns_cookie: u64) -> FlowKey {
        FlowKey {
            netns_cookie,
            ifindex: self.ifindex,
            src: self.src,
            dst: self.dst,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            direction: self.direction,
            _pad: [0; 6],
        }
    }
}

/// Exact per-flow counters, one copy per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted (`skb->len`).
    pub bytes: u64,
    /// Kernel time of the first packet on this CPU. In flows mode coarse:
    /// the kernel's tick-resolution CLOCK_MONOTONIC
    /// (`bpf_ktime_get_coarse_ns`), read once per tick per CPU (see
    /// [`CpuState::clock_jiffies`]), so up to two ticks behind; a few loads
    /// per packet where the precise clock is a helper call. In packets mode
    /// the precise clock, which the packet's record reads anyway (but for
    /// ping's programs, which report only probes and stamp flows coarse).
    pub first_ns: u64,
    /// Kernel time of the last packet on this CPU, coarse as `first_ns`.
    pub last_ns: u64,
    /// OR of the TCP flags seen.
    pub tcp_flags: u32,
    /// Explicit padding, always zero.
    pub _pad: u32,
}

/// Kernel-side mode: what packets become events.
pub mod mode {
    /// Every packet that matches the filter.
    pub const PACKETS: u32 = 0;
    /// First packets of each flow at each hook, probes, and 1-in-N samples.
    pub const FLOWS: u32 = 1;
}

/// An IPv4 prefix for the in-kernel filter, network byte order. A zero mask
/// matches everything.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cidr4 {
    /// Network address, already masked, network byte order.
    pub addr: [u8; 4],
    /// Netmask, network byte order.
    pub mask: [u8; 4],
}

impl Cidr4 {
    /// True if `ip` (network byte order) lies in this prefix.
    #[inline(always)]
    pub fn contains(&self, ip: [u8; 4]) -> bool {
        u32::from_ne_bytes(ip) & u32::from_ne_bytes(self.mask) == u32::from_ne_bytes(self.addr)
    }
}

/// Runtime configuration of the kernel programs, set before they load.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// One of [`mode`].
    pub mode: u32,
    /// Bytes to copy per event, 1..=[`MAX_SNAPLEN`].
    pub snaplen: u32,
    /// In `flows` mode, how many packets of each flow each hook reports.
    pub flow_first_n: u32,
    /// In `flows` mode, also report 1 in this many packets (0: never).
    pub sample_every: u32,
    /// Source address must be in this prefix.
    pub src: Cidr4,
    /// Destination address must be in this prefix.
    pub dst: Cidr4,
    /// Source or destination must be in this prefix.
    pub host: Cidr4,
    /// IP protocol to keep (0: any).
    pub proto: u32,
    /// TCP/UDP port to keep, either side (0: any).
    pub port: u32,
    /// Wake userspace once per this many bytes of records one CPU submits
    /// (counted over every namespace's copy of the programs); otherwise
    /// userspace drains on its own timer (a wakeup costs microseconds).
    pub wakeup_bytes: u32,
    /// Non-zero: report only probe-tagged packets (still count all flows).
    pub probes_only: u32,
    /// Cookie of the netns this copy of the programs is attached in,
    /// copied into every event and hook key (flow keys leave it out: each
    /// copy has its own flow table). The kernel's
    /// `bpf_get_netns_cookie()` cannot stand in: for a TC program it gives
    /// the socket's netns, or init_net when the packet has no socket (all
    /// ingress and forwarded traffic), so userspace loads one copy of the
    /// programs per traced namespace and tells each where it is.
    pub netns_cookie: u64,
    /// Flow table entries per CPU, a power of two of at least
    /// [`FLOW_PROBES`]; the table has this many times the possible CPUs.
    pub flow_slots: u32,
    /// Hand a CPU's batch of records to the ring before it grows past
    /// this many bytes (header included): at most [`STAGE_MAX`], and a
    /// small part of a CPU's ring, so that a ring holds several batches.
    pub stage_bytes: u32,
    /// In `packets` mode, non-zero: also count every IPv4 packet in the
    /// flow table (`trace` and `watch` merge those exact per-flow
    /// counters). `capture` needs only each hook's totals, which the hook
    /// counters keep, and spares every packet the flow update (7-12 ns in
    /// traffic). `flows` mode always counts flows: it reports from them.
    pub count_flows: u32,
    /// Non-zero: an IPv4 TCP segment whose head (the kernel's linear
    /// area) ends where its headers do, as a local sender's does with the
    /// payload in page fragments, is copied up to the end of its headers:
    /// copying from the fragments costs 20-32 ns per packet and hook in
    /// traffic. Zero: copy `snaplen` bytes of every packet wherever they
    /// lie.
    pub tcp_head_only: u32,
}

impl Config {
    /// Report every packet, copy up to [`DEFAULT_SNAPLEN`] bytes of it (a
    /// TCP segment's headers when its payload lies apart), no filter.
    pub const DEFAULT: Self = Self {
        mode: mode::PACKETS,
        snaplen: DEFAULT_SNAPLEN,
        flow_first_n: 2,
        sample_every: 0,
        src: Cidr4 {
            addr: [0; 4],
            mask: [0; 4],
        },
        dst: Cidr4 {
            addr: [0; 4],
            mask: [0; 4],
        },
        host: Cidr4 {
            addr: [0; 4],
            mask: [0; 4],
        },
        proto: 0,
        port: 0,
        wakeup_bytes: 64 * 1024,
        probes_only: 0,
        netns_cookie: 0,
        flow_slots: DEFAULT_FLOW_SLOTS,
        stage_bytes: STAGE_MAX as u32,
        count_flows: 1,
        tcp_head_only: 1,
    };
}

impl Default for Config {
    fn default() -> Self {
        Self::DEFAULT
    }
}

const _: () = {
    assert!(core::mem::size_of::<PacketEvent>() == 48 + MAX_SNAPLEN);
    assert!(core::mem::size_of::<PacketEvent>().is_multiple_of(8));
    assert!(core::mem::size_of::<HookKey>() == 16);
    assert!(core::mem::size_of::<HookStats>() == 48);
    assert!(core::mem::size_of::<HookSlot>() == 104);
    assert!(HOOK_SLOTS.is_power_of_two());
    assert!(core::mem::size_of::<FlowKey>() == 32);
    assert!(core::mem::size_of::<FlowStats>() == 40);
    assert!(core::mem::size_of::<SlotKey>() == 24);
    assert!(core::mem::size_of::<FlowSlot>() == 64);
    assert!(DEFAULT_FLOW_SLOTS.is_power_of_two() && DEFAULT_FLOW_SLOTS >= FLOW_PROBES);
    assert!(core::mem::size_of::<Config>() == 80);
    assert!(core::mem::size_of::<BatchHeader>() == 8);
    assert!(core::mem::size_of::<DropEvent>() == 40 + DROP_SNAP);
    assert!(core::mem::size_of::<DropConfig>() == 56);
    assert!(core::mem::size_of::<DropBudget>() == 24);
    assert!(core::mem::size_of::<CpuState>() == 40);
    assert!(STAGE_MAX.is_power_of_two());
    assert!(core::mem::size_of::<Stage>() == 32 + STAGE_MAX + 48 + MAX_SNAPLEN);
    assert!(PacketEvent::record_len(MAX_SNAPLEN as u32) == 48 + MAX_SNAPLEN);
};

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are repr(C), Copy, with no padding and no
    // invalid bit patterns (enums are stored as plain u32).
    unsafe impl aya::Pod for super::PacketEvent {}
    unsafe impl aya::Pod for super::HookKey {}
    unsafe impl aya::Pod for super::HookStats {}
    unsafe impl aya::Pod for super::HookSlot {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::SlotKey {}
    unsafe impl aya::Pod for super::FlowStats {}
    unsafe impl aya::Pod for super::FlowSlot {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::DropEvent {}
    unsafe impl aya::Pod for super::DropConfig {}
    unsafe impl aya::Pod for super::DropBudget {}
    unsafe impl aya::Pod for super::Stage {}
    unsafe impl aya::Pod for super::CpuState {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_contains() {
        let any = Cidr4::default();
        assert!(any.contains([10, 1, 2, 3]));
        let c = Cidr4 {
            addr: [192, 168, 1, 0],
            mask: [255, 255, 255, 0],
        };
        assert!(c.contains([192, 168, 1, 77]));
        assert!(!c.contains([192, 168, 2, 77]));
    }

    #[test]
    fn slot_key_words_match_its_layout() {
        let key = SlotKey {
            ifindex: 7,
            src: [10, 0, 1, 2],
            dst: [192, 168, 3, 4],
            sport: 40000,
            dport: 53,
            proto: 17,
            direction: 1,
            _pad: [0; 6],
        };
        let layout: [u64; 3] = unsafe { core::mem::transmute(key) };
        let words = SlotKey::words(
            key.ifindex,
            key.src,
            key.dst,
            key.sport,
            key.dport,
            key.proto,
            key.direction,
        );
        assert_eq!(words, layout.map(u64::from_le));
        let full = key.in_netns(9);
        assert_eq!((full.netns_cookie, full.ifindex, full.src), (9, 7, key.src));
        assert_eq!((full.dst, full.sport, full.dport), (key.dst, 40000, 53));
        assert_eq!((full.proto, full.direction), (17, 1));
    }

    #[test]
    fn flows_differing_in_a_last_octet_or_a_port_spread_over_the_table() {
        // 8192 flows from one pod subnet to one server: only the client's
        // last octet and port differ. Random placement leaves about 63 % of
        // 8192 places used; a hash that ignored those bits would pile them
        // up on a few.
        let mask = (DEFAULT_FLOW_SLOTS - 1) as usize;
        type KeyOf<'a> = &'a dyn Fn(u32) -> [u64; 3];
        let spread = |key: KeyOf<'_>| {
            let mut used = [false; DEFAULT_FLOW_SLOTS as usize];
            for i in 0..DEFAULT_FLOW_SLOTS {
                used[SlotKey::hash(&key(i)) as usize & mask] = true;
            }
            used.iter().filter(|u| **u).count()
        };
        let (lo, hi) = (|i: u32| (i % 64) as u8, |i: u32| (i / 64) as u16);
        let cases: [(&str, KeyOf<'_>); 3] = [
            ("client octet and port", &|i| {
                SlotKey::words(3, [10, 0, 1, lo(i)], [10, 0, 2, 7], 40000 + hi(i), 80, 6, 1)
            }),
            ("server octet and port", &|i| {
                SlotKey::words(
                    3,
                    [10, 0, 1, 5],
                    [10, 0, 2, lo(i)],
                    40000,
                    8000 + hi(i),
                    17,
                    0,
                )
            }),
            ("ports and direction", &|i| {
                SlotKey::words(
                    3,
                    [10, 0, 1, 5],
                    [10, 0, 2, 7],
                    1000 + hi(i),
                    lo(i).into(),
                    6,
                    (i % 2) as u8,
                )
            }),
        ];
        for (what, key) in cases {
            let n = spread(key);
            assert!(n > 5000, "{what}: {n} of 8192 places used");
        }
    }

    #[test]
    fn direction_round_trip() {
        for d in [Direction::Ingress, Direction::Egress] {
            assert_eq!(Direction::from_u32(d as u32), Some(d));
        }
        assert_eq!(Direction::from_u32(7), None);
    }

    #[test]
    fn event_bytes_round_trip() {
        let mut ev = PacketEvent {
            kind: EventKind::Packet as u32,
            reason: reason::PROBE | reason::MATCH,
            ts_ns: 0x0102_0304_0506_0708,
            netns_cookie: 42,
            ifindex: 7,
            direction: Direction::Egress as u32,
            pkt_len: 98,
            cap_len: 3,
            mark: 0x80,
            l3_offset: 14,
            ethertype: 0x0800,
            data: [0; MAX_SNAPLEN],
        };
        ev.data[..3].copy_from_slice(&[1, 2, 3]);
        // What the kernel writes is a byte copy of the struct: read it back
        // the way userspace does, from an unaligned byte buffer.
        let bytes: [u8; core::mem::size_of::<PacketEvent>()] = unsafe { core::mem::transmute(ev) };
        let back: PacketEvent = unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast()) };
        assert_eq!(back.ts_ns, ev.ts_ns);
        assert_eq!(back.netns_cookie, 42);
        assert_eq!(back.direction, 1);
        assert_eq!(&back.data[..3], &[1, 2, 3]);
        assert_eq!(back.l3_offset, 14);
    }
}

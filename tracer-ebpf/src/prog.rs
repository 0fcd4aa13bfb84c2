use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        __sk_buff, BPF_F_MMAPABLE, BPF_F_TIMER_CPU_PIN, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
        TC_ACT_UNSPEC, bpf_timer,
    },
    btf_maps::{self, ArrayOfMaps, RingBuf},
    helpers::{
        bpf_get_prandom_u32, bpf_get_smp_processor_id, bpf_jiffies64, bpf_ktime_get_coarse_ns,
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_buf, bpf_ringbuf_output,
        bpf_skb_load_bytes, bpf_timer_init, bpf_timer_set_callback, bpf_timer_start,
    },
    macros::{btf_map, classifier, map, raw_tracepoint},
    maps::{Array, HashMap, LruPerCpuHashMap, PerCpuArray, RingBuf as LegacyRingBuf},
    programs::{RawTracePointContext, TcContext},
};
use tracer_common::{
    BatchHeader, Cidr4, Config, CpuState, DROP_SNAP, DROP_WINDOW_NS, DROPS_PER_WINDOW, Direction,
    DropBudget, DropConfig, DropEvent, EventKind, FLOW_PROBES, FlowSlot, HOOK_SLOTS, HookKey,
    HookSlot, HookStats, MAX_SNAPLEN, PROBE_MAGIC, PacketEvent, STAGE_DELAY_NS, STAGE_MAX, SlotKey,
    Stage, hook_slot, mode, reason,
};

/// One ring buffer per CPU, at the CPU's index: a program writes to its
/// own CPU's ring, so CPUs never contend for one ring's lock and producer
/// position. Userspace sizes the array to the possible CPUs, creates the
/// rings (their size is its choice: the kernel does not compare an inner
/// ring's size with this template's) and puts them in before attaching.
#[btf_map(name = "RINGS")]
static RINGS: ArrayOfMaps<RingBuf<u64, 4096>, 1> = ArrayOfMaps::new();

/// The flow table: an open-addressed hash in a plain array, one region of
/// `flow_slots` entries per CPU, so a packet costs a multiply and one or two
/// inlined array lookups where a per-CPU LRU hash cost tens of ns. Userspace
/// maps it and reads it without a syscall. Sized by userspace before load.
#[map(name = "FLOWS")]
static FLOWS: Array<FlowSlot> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Hook counters at the interface's slot: every packet touches this, so it
/// is an array, whose lookup the verifier turns into a few instructions.
#[map(name = "HOOK_SLOTS")]
static HOOK_SLOTS_MAP: PerCpuArray<HookSlot> = PerCpuArray::with_max_entries(HOOK_SLOTS, 0);

/// This CPU's [`CpuState`], at index 0: one map for every namespace's
/// copy of the programs, shared like [`STAGES`], since they all share the
/// CPU's ring and batch.
#[btf_map(name = "WAKES")]
static WAKES: btf_maps::PerCpuArray<CpuState, 1> = btf_maps::PerCpuArray::new();

/// Hook counters of interfaces whose slot another interface holds.
#[map(name = "HOOKS")]
static HOOKS: LruPerCpuHashMap<HookKey, HookStats> = LruPerCpuHashMap::with_max_entries(4096, 0);

/// Set by userspace before load (`EbpfLoader::override_global`). Read field
/// by field with volatile loads: the compiler must not fold the defaults in,
/// and copying the whole struct would cost stack the verifier counts.
#[unsafe(no_mangle)]
static CONFIG: Config = Config::DEFAULT;

macro_rules! cfg {
    ($($field:tt)+) => {
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(CONFIG.$($field)+)) }
    };
}

static ZERO_HOOK: HookStats = HookStats {
    seen: 0,
    matched: 0,
    reported: 0,
    lost: 0,
    bytes: 0,
    other: 0,
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// ICMP errors reported per flow slot and CPU in flows mode before only
/// one in this many is.
const ERRORS_REPORTED: u64 = 64;
/// An ICMP error this long after the last one a CPU reported past its
/// flow's first packets is reported.
const ERROR_QUIET_NS: u64 = 100_000_000;
/// Bytes of IPv4 + L4 header (+ probe tag) read in one helper call.
const HDR_PEEK: usize = 48;

/// Probes the kernel dropped, for `ping` ([`podtrace_kfree_skb`]). Sized
/// by userspace: a page when nothing attaches the program.
#[map(name = "DROPS")]
static DROPS: LegacyRingBuf = LegacyRingBuf::with_byte_size(4096, 0);

/// Set by userspace before load, from the kernel's BTF.
#[unsafe(no_mangle)]
static DROP_CONFIG: DropConfig = DropConfig {
    skb_head: 0,
    skb_network_header: 0,
    skb_dev: 0,
    dev_ifindex: 0,
    dev_nd_net: 0,
    net_cookie: 0,
    all: 0,
    skb_tail: 0,
    no_socket: u32::MAX,
    skb_sk: 0,
    sk_net: 0,
    skb_protocol: 0,
    skb_len: 0,
    skb_data: 0,
};

/// The traced namespaces' cookies, when every dropped packet counts.
#[map(name = "DROP_NETNS")]
static DROP_NETNS: HashMap<u64, u32> = HashMap::with_max_entries(256, 0);

/// Per CPU: this window's drop reports, and those left out.
#[map(name = "DROP_BUDGET")]
static DROP_BUDGET: PerCpuArray<DropBudget> = PerCpuArray::with_max_entries(1, 0);

macro_rules! drop_cfg {
    ($field:ident) => {
        u64::from(unsafe { core::ptr::read_volatile(core::ptr::addr_of!(DROP_CONFIG.$field)) })
    };
}

/// Every packet the kernel frees as dropped passes here, with the reason
/// (`kfree_skb(skb, location, reason, rx_sk)`). In ping's mode only its
/// probes, known by their tag, and the untagged answers a probe may get (a
/// SYN-ACK, a RST, an ICMP error) are reported: where and why a probe or
/// its answer was lost is the answer to "why does my ping not come back",
/// and a node drops other packets all the time. In trace's mode, every
/// packet its filter keeps in the traced namespaces.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn podtrace_kfree_skb(ctx: RawTracePointContext) -> i32 {
    let _ = report_drop(&ctx);
    0
}

#[inline(always)]
fn report_drop(ctx: &RawTracePointContext) -> Option<()> {
    let skb: u64 = ctx.arg(0);
    // The commonest drop of all, and news only for one of ping's probes
    // (a UDP probe to a closed port whose port unreachable the kernel's
    // rate limit held back): in trace's mode, skipped before any read.
    let every = drop_cfg!(all) != 0;
    let reason = ctx.arg::<u64>(2) as u32;
    let no_socket = reason == drop_cfg!(no_socket) as u32;
    if every && no_socket {
        return None;
    }
    let (head_at, nh_at, dev_at) = (
        drop_cfg!(skb_head),
        drop_cfg!(skb_network_header),
        drop_cfg!(skb_dev),
    );
    let (ifindex_at, net_at, cookie_at) = (
        drop_cfg!(dev_ifindex),
        drop_cfg!(dev_nd_net),
        drop_cfg!(net_cookie),
    );
    let tail_at = drop_cfg!(skb_tail);
    let (len_at, data_at) = (drop_cfg!(skb_len), drop_cfg!(skb_data));
    let (sk_at, sk_net_at, proto_at) = (
        drop_cfg!(skb_sk),
        drop_cfg!(sk_net),
        drop_cfg!(skb_protocol),
    );
    // SAFETY: kernel reads through the helper, which fails cleanly on a
    // bad address; the offsets come from this kernel's BTF.
    unsafe {
        // Where it was dropped first: in trace's mode, a drop outside the
        // traced namespaces (most of a node's) costs three reads and a
        // lookup, and no copy.
        let mut netns_cookie = 0;
        let mut ifindex = 0;
        let dev: u64 = bpf_probe_read_kernel((skb + dev_at) as *const u64).unwrap_or(0);
        // An IPv4 packet with no device yet (sent from this host,
        // dropped in its OUTPUT chain) is in its socket's namespace. Only
        // IPv4: a Unix or netlink socket's buffers have a socket and no
        // device too. A socket is a kernel address, in the upper half.
        let net: u64 = if dev != 0 {
            ifindex = bpf_probe_read_kernel((dev + ifindex_at) as *const u32).unwrap_or(0);
            bpf_probe_read_kernel((dev + net_at) as *const u64).unwrap_or(0)
        } else if sk_at != 0
            && bpf_probe_read_kernel((skb + proto_at) as *const u16).unwrap_or(0)
                == ETH_P_IP.to_be()
        {
            let sk: u64 = bpf_probe_read_kernel((skb + sk_at) as *const u64).unwrap_or(0);
            if sk >> 63 == 0 {
                0
            } else {
                bpf_probe_read_kernel((sk + sk_net_at) as *const u64).unwrap_or(0)
            }
        } else {
            0
        };
        if net != 0 {
            netns_cookie = bpf_probe_read_kernel((net + cookie_at) as *const u64).unwrap_or(0);
        }
        if every {
            DROP_NETNS.get(&netns_cookie)?;
        }
        let head: u64 = bpf_probe_read_kernel((skb + head_at) as *const u64).ok()?;
        let nh: u16 = bpf_probe_read_kernel((skb + nh_at) as *const u16).ok()?;
        let tail: u32 = bpf_probe_read_kernel((skb + tail_at) as *const u32).ok()?;
        // Only the linear area holds what is read here: an unset network
        // header (~0) or one too close to its end is no IPv4 packet to
        // name, and nothing past `tail` is the packet's.
        let nh = u32::from(nh);
        if nh == 0xffff || nh + 28 > tail {
            return None;
        }
        let have = (tail - nh).min(DROP_SNAP as u32);
        // A form the verifier bounds: 1..=128, then at most DROP_SNAP.
        let n = (core::ptr::read_volatile(&have).wrapping_sub(1) & 127) as usize + 1;
        if n > DROP_SNAP {
            return None;
        }
        let mut ev = DropEvent {
            ts_ns: 0,
            location: 0,
            netns_cookie,
            reason,
            ifindex,
            copied: n as u32,
            ip_len: 0,
            data: [0; DROP_SNAP],
        };
        bpf_probe_read_kernel_buf((head + u64::from(nh)) as *const u8, &mut ev.data[..n]).ok()?;
        let mut p = Parsed::EMPTY;
        // The bytes past the packet's end are zeros, which read as no
        // flag, no tag and no quote: a packet shorter than HDR_PEEK (a
        // SYN-ACK with one option is 44 bytes) still shows its TCP flags.
        parse_ipv4(
            &mut p,
            &*(ev.data.as_ptr().cast::<[u8; HDR_PEEK]>()),
            HDR_PEEK,
        );
        if every {
            // What an ICMP error quotes sits after its 8 bytes: the quoted
            // IPv4 header (20 bytes, its addresses 12 bytes in), then the
            // quoted packet's ports (40 + 12 bytes lie within DROP_SNAP).
            let quoted = || Quote::of(&*(ev.data.as_ptr().add(40).cast::<[u8; 12]>()));
            // Multicast and broadcast are no pod's path (the engine
            // leaves them out too): a node drops IGMP queries all day.
            if !p.ipv4
                || p.dst[0] & 0xf0 == 0xe0
                || p.dst == [255; 4]
                || !filter_matches(&p, quoted)
            {
                return None;
            }
        } else if !p.probe && (no_socket || (!p.icmp_error && !answers_a_syn(&p))) {
            return None;
        }
        ev.ts_ns = bpf_ktime_get_ns();
        ev.location = ctx.arg(1);
        // skb->len counts from skb->data, which may sit before the IPv4
        // header (at the MAC header) or after it (at the transport one).
        if len_at != 0 && data_at != 0 {
            let len: u32 = bpf_probe_read_kernel((skb + len_at) as *const u32).unwrap_or(0);
            let data: u64 = bpf_probe_read_kernel((skb + data_at) as *const u64).unwrap_or(0);
            let from_ip = (u64::from(len) + data).wrapping_sub(head + u64::from(nh));
            if data != 0 && from_ip < 1 << 24 {
                ev.ip_len = from_ip as u32;
            }
        }
        let budget = &mut *DROP_BUDGET.get_ptr_mut(0)?;
        // A node may drop answers by the thousand (a scan's RSTs): only
        // ping's own probes go unlimited.
        if every || !p.probe {
            if ev.ts_ns.wrapping_sub(budget.window_ns) >= DROP_WINDOW_NS {
                budget.window_ns = ev.ts_ns;
                budget.count = 0;
            }
            if budget.count >= DROPS_PER_WINDOW {
                budget.suppressed += 1;
                return None;
            }
            budget.count += 1;
        }
        // A full ring loses the report, counted with those left out.
        if DROPS.output::<DropEvent>(&ev, 0).is_err() {
            budget.suppressed += 1;
        }
        Some(())
    }
}

#[classifier]
pub fn podtrace_ingress(ctx: TcContext) -> i32 {
    trace(&ctx, Direction::Ingress);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn podtrace_egress(ctx: TcContext) -> i32 {
    trace(&ctx, Direction::Egress);
    TC_ACT_UNSPEC
}

/// What the packet's headers say, as far as the filter and counters need.
struct Parsed {
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
    probe: bool,
    ipv4: bool,
    /// An ICMP error quoting a packet whose IPv4 header has no options.
    icmp_error: bool,
    /// The quoted packet's protocol, for an ICMP error.
    quoted_proto: u8,
    /// A TCP segment's data offset (its header's length in 32-bit words);
    /// 0 when not read (not TCP, IPv4 options, a later fragment, a short
    /// packet).
    tcp_doff: u8,
}

impl Parsed {
    const EMPTY: Self = Self {
        src: [0; 4],
        dst: [0; 4],
        proto: 0,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        probe: false,
        ipv4: false,
        icmp_error: false,
        quoted_proto: 0,
        tcp_doff: 0,
    };
}

#[inline(always)]
fn trace(ctx: &TcContext, dir: Direction) {
    let skb = ctx.skb.skb;
    let ifindex = unsafe { (*skb).ifindex };
    let Some(stats) = hook_stats(ifindex, dir) else {
        return;
    };
    // SAFETY: per-CPU value, only this program on this CPU touches it.
    let stats = unsafe { &mut *stats };
    stats.seen += 1;

    // The filter runs on headers read in place: a packet it rejects has
    // cost one array slot and a few loads.
    let parsed = parse(ctx);
    if !parsed.probe && !filter_matches(&parsed, || quote(ctx)) {
        return;
    }
    stats.matched += 1;

    let len = ctx.len();
    if parsed.ipv4 {
        stats.bytes += u64::from(len);
    } else {
        stats.other += 1;
    }
    let mut why = 0;
    if parsed.probe {
        why |= reason::PROBE;
    }
    let flows = cfg!(mode) == mode::FLOWS;
    // Packets mode reports every packet it counts (unless only probes are
    // wanted), with the precise clock: one reading serves both. Flows mode
    // counts with the coarse clock (tick resolution is plenty for "first/
    // last seen", and it costs a few ns where the precise one costs tens
    // on a VM) and reads the precise one only for the few packets it
    // reports.
    let precise = !flows && cfg!(probes_only) == 0;
    let now = if precise {
        unsafe { bpf_ktime_get_ns() }
    } else {
        coarse_now()
    };
    // Packets mode counts flows only for a reader that merges them; the
    // hook's counters above hold its totals either way.
    if parsed.ipv4 && (flows || cfg!(count_flows) != 0) {
        let per_cpu_count = count_flow(ifindex, dir, &parsed, len, now);
        // ICMP errors are reported well past the first packets: each says
        // why a packet was refused, and all of one sender's to one host
        // share a flow slot, whose first packets alone would hide the
        // rest. Up to ERRORS_REPORTED per slot and CPU, then one in as
        // many, so that a flood of errors stays a trickle of events, and
        // any error ERROR_QUIET_NS after the last one the CPU reported
        // that way (hosts send one host about one a second).
        let first_n = u64::from(cfg!(flow_first_n));
        if flows
            && (per_cpu_count <= first_n
                || (parsed.icmp_error
                    && (per_cpu_count <= ERRORS_REPORTED
                        || per_cpu_count % ERRORS_REPORTED == 0
                        || quiet_error(now))))
        {
            why |= reason::FLOW_START;
        }
    }
    let sample_every = cfg!(sample_every);
    if !flows {
        why |= reason::MATCH;
    } else if sample_every != 0 && unsafe { bpf_get_prandom_u32() } % sample_every == 0 {
        why |= reason::SAMPLED;
    }
    if cfg!(probes_only) != 0 {
        // Probes, and the ICMP errors that may be about them: an error
        // quotes too little of a probe to show its tag.
        why &= if parsed.icmp_error {
            reason::PROBE | reason::FLOW_START
        } else {
            reason::PROBE
        };
    }
    if why == 0 {
        return;
    }
    stats.reported += 1;
    let ts = if precise {
        now
    } else {
        unsafe { bpf_ktime_get_ns() }
    };
    let copy = if cfg!(tcp_head_only) != 0 {
        copy_len(ctx, &parsed, len)
    } else {
        len
    };
    if !report(skb, ifindex, dir, why, len, copy, ts) {
        stats.lost += 1;
    }
}

/// How many of the packet's `len` bytes to copy at most: all of them,
/// except for a TCP segment whose head (the kernel's linear area) ends
/// where its headers do: then its headers. A local TCP sender builds its
/// segments so, the payload in page fragments, and copying from those
/// walks them: 20-32 ns per packet at each hook in traffic. A head that
/// holds some payload, or not all the headers, is copied as before, and
/// so is a probe, whose tag userspace reads.
///
/// Every comparison is of the packet's start plus a constant with its
/// end, as in [`parse`]: by the verifier's rules a variable offset into a
/// packet needs CAP_PERFMON (before 6.17's rework), and so does the two
/// pointers' difference, the head's length.
#[inline(always)]
fn copy_len(ctx: &TcContext, p: &Parsed, len: u32) -> u32 {
    if p.probe {
        return len;
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    // A second, opaque copy of the end: LLVM cannot fold the two bounds
    // below into `data + n == end`, which kernels before 6.9 refuse
    // between packet pointers without CAP_PERFMON.
    let end_again = unsafe { core::ptr::read_volatile(&end) };
    // The head ends `n` bytes in: its bytes reach `n`, and not `n + 1`.
    let ends_at = |n: usize| data + n <= end && data + n + 1 > end_again;
    macro_rules! headers_end_the_head {
        ($($doff:literal),+) => {
            match p.tcp_doff {
                $($doff if ends_at(ETH_HLEN + 20 + $doff * 4) => (ETH_HLEN + 20 + $doff * 4) as u32,)+
                _ => len,
            }
        };
    }
    headers_end_the_head!(5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
}

/// This CPU's counters of the hook: at the interface's array slot, or in
/// the hash when another interface holds the slot.
#[inline(always)]
fn hook_stats(ifindex: u32, dir: Direction) -> Option<*mut HookStats> {
    let slot = HOOK_SLOTS_MAP.get_ptr_mut(hook_slot(ifindex))?;
    // SAFETY: per-CPU value of this CPU; programs do not nest on one CPU
    // within a TC hook.
    let slot = unsafe { &mut *slot };
    if slot.ifindex == ifindex || slot.ifindex == 0 {
        slot.ifindex = ifindex;
        return Some(&mut slot.stats[dir as usize]);
    }
    let hook = HookKey {
        netns_cookie: cfg!(netns_cookie),
        ifindex,
        direction: dir as u32,
    };
    if let Some(p) = HOOKS.get_ptr_mut(&hook) {
        return Some(p);
    }
    let _ = HOOKS.insert(&hook, &ZERO_HOOK, 0);
    HOOKS.get_ptr_mut(&hook)
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Parsed {
    // Field by field rather than `Parsed::EMPTY`: copying the constant
    // made each TC program 150 bytes of machine code larger.
    let mut p = Parsed {
        src: [0; 4],
        dst: [0; 4],
        proto: 0,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        probe: false,
        ipv4: false,
        icmp_error: false,
        quoted_proto: 0,
        tcp_doff: 0,
    };
    // skb->protocol is the EtherType, without reading the packet.
    if unsafe { (*ctx.skb.skb).protocol } != u32::from(ETH_P_IP.to_be()) {
        return p;
    }
    // Most packets have their headers in the linear part: read them in
    // place, no helper call and no copy.
    let l3 = ctx.data() + ETH_HLEN;
    if l3 + HDR_PEEK <= ctx.data_end() {
        // SAFETY: the verifier-checked bound above covers HDR_PEEK bytes.
        let h = unsafe { &*(l3 as *const [u8; HDR_PEEK]) };
        parse_ipv4(&mut p, h, HDR_PEEK);
        return p;
    }
    // Otherwise one helper call, with a constant length the verifier can
    // check, reads the IPv4 header, the L4 header and the probe tag; shorter
    // packets get the IPv4 and TCP headers (a bare ACK, FIN or RST: 40
    // bytes, whose flags the counters want), the IPv4 header plus the first
    // 8 bytes of L4 (ports, ICMP id/seq), or the bare IPv4 header: the
    // longest the packet's length allows. Nothing is zero-filled first:
    // the helper writes every byte or fails.
    let mut buf = core::mem::MaybeUninit::<[u8; HDR_PEEK]>::uninit();
    let skb = ctx.skb.skb.cast();
    // The longest that the packet holds, in one call.
    let avail = ctx.len().saturating_sub(ETH_HLEN as u32) as usize;
    let mut have = 0;
    for len in [HDR_PEEK, 40, 28, 20] {
        if avail >= len {
            if unsafe {
                bpf_skb_load_bytes(skb, ETH_HLEN as u32, buf.as_mut_ptr().cast(), len as u32)
            } == 0
            {
                have = len;
            }
            break;
        }
    }
    if have == 0 {
        return p;
    }
    // SAFETY: the first `have` bytes are written; every read in
    // `parse_ipv4` is guarded by `have`.
    let h = unsafe { &*buf.as_ptr() };
    parse_ipv4(&mut p, h, have);
    p
}

/// Reads the IPv4 and L4 fields from `h`, of which `have` bytes (20, 28, 40
/// or [`HDR_PEEK`]) are valid.
#[inline(always)]
fn parse_ipv4(p: &mut Parsed, h: &[u8; HDR_PEEK], have: usize) {
    if h[0] >> 4 != 4 {
        return;
    }
    p.ipv4 = true;
    p.proto = h[9];
    p.src = [h[12], h[13], h[14], h[15]];
    p.dst = [h[16], h[17], h[18], h[19]];
    let ihl = usize::from(h[0] & 0x0f) * 4;
    let frag_off = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    // Only the first fragment of a datagram carries the L4 header; peek
    // fields only when the header has no IP options (the common case), so
    // every index below is constant for the verifier.
    if ihl != 20 || frag_off != 0 || have < 28 {
        return;
    }
    let full = have == HDR_PEEK;
    match p.proto {
        IPPROTO_TCP => {
            p.sport = u16::from_be_bytes([h[20], h[21]]);
            p.dport = u16::from_be_bytes([h[22], h[23]]);
            if have >= 40 {
                p.tcp_flags = h[33];
                p.tcp_doff = h[32] >> 4;
            }
            if full {
                // Probe tag after a TCP header without options (as podtrace
                // builds its probes).
                p.probe = h[32] >> 4 == 5 && h[40..48] == PROBE_MAGIC;
            }
        }
        IPPROTO_UDP => {
            p.sport = u16::from_be_bytes([h[20], h[21]]);
            p.dport = u16::from_be_bytes([h[22], h[23]]);
            p.probe = full && h[28..36] == PROBE_MAGIC;
        }
        IPPROTO_ICMP => {
            let (ty, code) = (h[20], h[21]);
            // Echo request/reply: the id identifies the conversation.
            if ty == 8 || ty == 0 {
                p.sport = u16::from_be_bytes([h[24], h[25]]);
            }
            p.dport = u16::from_be_bytes([ty, code]);
            p.probe = full && h[28..36] == PROBE_MAGIC;
            // Unreachable, time exceeded, parameter problem: the quoted
            // header follows the ICMP one (without options, and of a
            // first fragment, whose ports follow it).
            if full && matches!(ty, 3 | 11 | 12) && h[28] == 0x45 && h[34] & 0x1f == 0 && h[35] == 0
            {
                p.icmp_error = true;
                p.quoted_proto = h[37];
            }
        }
        _ => {}
    }
}

/// A SYN-ACK or a RST: what a TCP probe's SYN gets back, untagged.
#[inline(always)]
fn answers_a_syn(p: &Parsed) -> bool {
    const SYN_ACK: u8 = 0x12;
    const RST: u8 = 0x04;
    p.proto == IPPROTO_TCP && (p.tcp_flags & SYN_ACK == SYN_ACK || p.tcp_flags & RST != 0)
}

/// What an ICMP error quotes of the packet it is about, as far as the
/// filter needs.
struct Quote {
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
}

impl Quote {
    /// From the quoted IPv4 header's addresses and the 4 bytes after that
    /// header (ports): 12 bytes from 12 bytes into the quoted header.
    #[inline(always)]
    fn of(b: &[u8; 12]) -> Self {
        Self {
            src: [b[0], b[1], b[2], b[3]],
            dst: [b[4], b[5], b[6], b[7]],
            sport: u16::from_be_bytes([b[8], b[9]]),
            dport: u16::from_be_bytes([b[10], b[11]]),
        }
    }
}

/// Whether the packet passes the filter. An ICMP error passes it as the
/// packet it quotes would, or by its own addresses: it is that packet's
/// answer. So `--filter-dst` of a host that cannot be reached keeps the
/// errors routers send back to the sender, and `--filter-port` the port
/// unreachables. `quote` reads the quote; it is called only for an ICMP
/// error the filter would otherwise reject.
#[inline(always)]
fn filter_matches(p: &Parsed, quote: impl FnOnce() -> Quote) -> bool {
    let proto = cfg!(proto);
    let port = cfg!(port);
    let src: Cidr4 = cfg!(src);
    let dst: Cidr4 = cfg!(dst);
    let host: Cidr4 = cfg!(host);
    let filtered = proto != 0
        || port != 0
        || u32::from_ne_bytes(src.mask) != 0
        || u32::from_ne_bytes(dst.mask) != 0
        || u32::from_ne_bytes(host.mask) != 0;
    if !p.ipv4 {
        // Non-IPv4 traffic (ARP, IPv6) is shown only when nothing is filtered.
        return !filtered;
    }
    if proto != 0
        && proto != u32::from(p.proto)
        && !(p.icmp_error && proto == u32::from(p.quoted_proto))
    {
        return false;
    }
    let addresses = |s: [u8; 4], d: [u8; 4]| {
        src.contains(s) && dst.contains(d) && (host.contains(s) || host.contains(d))
    };
    if !p.icmp_error {
        if port != 0
            && (p.proto == IPPROTO_ICMP
                || (port != u32::from(p.sport) && port != u32::from(p.dport)))
        {
            return false;
        }
        return addresses(p.src, p.dst);
    }
    let own = addresses(p.src, p.dst);
    // An ICMP error: its quote is read only if the filter needs it.
    if port != 0 && !matches!(p.quoted_proto, IPPROTO_TCP | IPPROTO_UDP) {
        return false;
    }
    if port == 0 && own {
        return true;
    }
    let q = quote();
    if port != 0 && port != u32::from(q.sport) && port != u32::from(q.dport) {
        return false;
    }
    own || addresses(q.src, q.dst)
}

/// What an ICMP error quotes (after its IPv4 header, its 8 bytes and the
/// quoted 20-byte IPv4 header, whose addresses are 12 bytes in); zeros if
/// not captured.
#[inline(always)]
fn quote(ctx: &TcContext) -> Quote {
    Quote::of(
        &ctx.load::<[u8; 12]>(ETH_HLEN + 20 + 8 + 12)
            .unwrap_or([0; 12]),
    )
}

/// Adds the packet to its flow's counters in this CPU's region of the flow
/// table; returns this CPU's count (0 if the table has no region for it).
#[inline(always)]
fn count_flow(ifindex: u32, dir: Direction, p: &Parsed, len: u32, now: u64) -> u64 {
    let words = SlotKey::words(ifindex, p.src, p.dst, p.sport, p.dport, p.proto, dir as u8);
    let slots = cfg!(flow_slots);
    let base = unsafe { bpf_get_smp_processor_id() }.wrapping_mul(slots);
    let hash = SlotKey::hash(&words);
    let mut victim: *mut FlowSlot = core::ptr::null_mut();
    let mut oldest = u64::MAX;
    for i in 0..FLOW_PROBES {
        let index = base.wrapping_add(hash.wrapping_add(i) & slots.wrapping_sub(1));
        let Some(slot) = FLOWS.get_ptr_mut(index) else {
            return 0;
        };
        // SAFETY: this CPU's region; TC programs do not nest on one CPU.
        let slot = unsafe { &mut *slot };
        let s = &mut slot.stats;
        if s.packets == 0 {
            claim(slot, &words, p, now, len);
            return 1;
        }
        if same_key(&slot.key, &words) {
            s.packets += 1;
            s.bytes += u64::from(len);
            s.last_ns = now;
            s.tcp_flags |= u32::from(p.tcp_flags);
            return s.packets;
        }
        if s.last_ns < oldest {
            oldest = s.last_ns;
            victim = slot;
        }
    }
    if victim.is_null() {
        return 0;
    }
    // SAFETY: one of the slots above.
    claim(unsafe { &mut *victim }, &words, p, now, len);
    1
}

/// The slot's key as words (see [`SlotKey::words`]).
#[inline(always)]
fn key_ptr(k: &mut SlotKey) -> *mut u64 {
    core::ptr::from_mut(k).cast()
}

/// True if `k` is the key whose words are `w`, compared word by word (a
/// slice compare would become a call to a byte loop).
#[inline(always)]
fn same_key(k: &SlotKey, w: &[u64; 3]) -> bool {
    let p: *const u64 = core::ptr::from_ref(k).cast();
    // SAFETY: SlotKey is 24 bytes, 8-aligned, with no padding.
    unsafe { *p.add(1) == w[1] && *p.add(2) == w[2] && *p == w[0] }
}

/// Takes `slot` for the flow whose key words are `w`: `packets` to 0 (a
/// reader skips the slot), the key, the counters, then `packets` to 1, so a
/// reader never takes one flow's counters for another's.
#[inline(always)]
fn claim(slot: &mut FlowSlot, w: &[u64; 3], p: &Parsed, now: u64, len: u32) {
    let key = key_ptr(&mut slot.key);
    let s = &raw mut slot.stats;
    // SAFETY: plain stores into this CPU's slot, kept in this order.
    unsafe {
        core::ptr::write_volatile(&raw mut (*s).packets, 0);
        for (i, word) in w.iter().enumerate() {
            core::ptr::write_volatile(key.add(i), *word);
        }
        core::ptr::write_volatile(&raw mut (*s).bytes, u64::from(len));
        core::ptr::write_volatile(&raw mut (*s).first_ns, now);
        core::ptr::write_volatile(&raw mut (*s).last_ns, now);
        core::ptr::write_volatile(&raw mut (*s).tcp_flags, u32::from(p.tcp_flags));
        core::ptr::write_volatile(&raw mut (*s).packets, 1);
    }
}

/// This CPU's [`Stage`], with the kernel's timer type where userspace has
/// opaque words: the verifier finds the timer by its BTF type name.
#[repr(C)]
pub struct KStage {
    timer: bpf_timer,
    len: u64,
    state: u64,
    data: [u8; STAGE_MAX + PacketEvent::HEADER_LEN + MAX_SNAPLEN],
}

const _: () = assert!(core::mem::size_of::<KStage>() == core::mem::size_of::<Stage>());

/// The per-CPU batches (see [`Stage`]), at the CPU's index: one map for
/// every namespace's copy of the programs, which all write to the same
/// per-CPU rings, so that a ring receives each CPU's records in the order
/// the CPU saw them. A plain array, not a per-CPU one: the kernel allows
/// timers only in arrays and hashes.
///
/// The first copy creates it, sized by userspace to the possible CPUs:
/// the kernel wants it created with the programs' BTF, which tells the
/// verifier where the timer is. Later copies load with that map in its
/// place (userspace pins it for the moment they load). A map the program
/// names directly, rather than one found in an array of maps, has its
/// lookup inlined by the verifier: a map-in-map lookup was a call per
/// record, measured at 20-40 ns in traffic.
#[btf_map(name = "STAGES")]
static STAGES: btf_maps::Array<KStage, 1> = btf_maps::Array::new();

const STAGE_TIMER_SET: u64 = 1;
const STAGE_TIMER_RUNNING: u64 = 2;
const CLOCK_MONOTONIC: u64 = 1;

/// Copies the packet's first bytes (up to `snaplen`, and to `copy` of its
/// `len`) into this CPU's batch. False when the
/// record could not be kept (the caller counts the loss): the batch was
/// full and the ring could not take it. A batch that the ring refuses
/// stays whole, to go with the next record or the timer: a loss is always
/// the record at hand, counted at its own hook.
#[inline(always)]
fn report(
    skb: *mut __sk_buff,
    ifindex: u32,
    dir: Direction,
    why: u32,
    len: u32,
    copy: u32,
    ts: u64,
) -> bool {
    let snaplen = cfg!(snaplen);
    let snap = if snaplen < copy { snaplen } else { copy };
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(st) = STAGES.get_ptr_mut(cpu) else {
        return false;
    };
    // SAFETY: this CPU's entry. TC programs do not nest on one CPU, and the
    // timer callback runs in a softirq of this CPU, which does not run
    // while a TC program does. (`BPF_PROG_TEST_RUN` runs a program with
    // softirqs on: the callback may then flush between this program's
    // writes, and a record go out twice; it is never torn, since `len`
    // only ever covers records already written.)
    let st = unsafe { &mut *st };
    // `snap` is 1..=MAX_SNAPLEN (snaplen is, and a packet has bytes); the
    // volatile read and the mask put that in a form the verifier follows.
    let n =
        (unsafe { core::ptr::read_volatile(&snap) }.wrapping_sub(1) & (MAX_SNAPLEN as u32 - 1)) + 1;
    let limit = (cfg!(stage_bytes) as usize).min(STAGE_MAX);
    let full = BatchHeader::LEN + st.len as usize + PacketEvent::record_len(n) > limit;
    // The next batch starts with this record: the reader holds back other
    // CPUs' newer records until it reaches the ring. A full batch's flush
    // hands the mark straight over, so that it is never 0 in between.
    if full && !flush(st, cpu, false, ts) {
        return false;
    }
    if !full && st.len == 0 {
        if let Some(state) = cpu_state() {
            state.staged_since = ts;
        }
    }
    // A masked offset the verifier can bound: the value has room for the
    // largest record past STAGE_MAX.
    let off = (BatchHeader::LEN + unsafe { core::ptr::read_volatile(&st.len) } as usize)
        & (STAGE_MAX - 1);
    let cookie = cfg!(netns_cookie);
    let cap;
    // SAFETY: `off` + a whole record lies inside `data` (see above).
    unsafe {
        let ev = st.data.as_mut_ptr().add(off).cast::<PacketEvent>();
        (*ev).kind = EventKind::Packet as u32;
        (*ev).reason = why;
        (*ev).ts_ns = ts;
        (*ev).netns_cookie = cookie;
        (*ev).ifindex = ifindex;
        (*ev).direction = dir as u32;
        (*ev).pkt_len = len;
        (*ev).mark = (*skb).mark;
        (*ev).ethertype = u16::from_be(((*skb).protocol & 0xffff) as u16);
        (*ev).l3_offset = ETH_HLEN as u16;
        let data = st.data.as_mut_ptr().add(off + PacketEvent::HEADER_LEN);
        // A failed copy leaves a bare header: the record's size follows
        // `cap_len`, which is how the reader steps through the batch.
        cap = if bpf_skb_load_bytes(skb.cast(), 0, data.cast(), n) == 0 {
            n
        } else {
            0
        };
        (*ev).cap_len = cap;
    }
    st.len = (off.wrapping_sub(BatchHeader::LEN) + PacketEvent::record_len(cap)) as u64;
    // Probes go at once, and wake the reader: ping waits for them. Other
    // records, and a probe the ring refused, wait for the timer.
    let sent = why & reason::PROBE != 0 && flush(st, cpu, true, 0);
    if !sent && st.state & STAGE_TIMER_RUNNING == 0 {
        arm(st, core::ptr::from_ref(&STAGES).cast_mut().cast());
    }
    true
}

/// Hands the CPU's batch to the CPU's ring, as one record, and marks the
/// CPU's next batch as gathering since `next_since` (0: empty). False when
/// the ring has no room (the batch and its mark stay).
#[inline(always)]
fn flush(st: &mut KStage, cpu: u32, wake: bool, next_since: u64) -> bool {
    // Bounded for the verifier; `len` never exceeds STAGE_MAX - BatchHeader::LEN.
    let len = (unsafe { core::ptr::read_volatile(&st.len) } & (2 * STAGE_MAX as u64 - 1))
        .min((STAGE_MAX - BatchHeader::LEN) as u64);
    if len == 0 {
        return true;
    }
    let Some(ring) = RINGS.get(cpu) else {
        return false;
    };
    // SAFETY: the first bytes of `data` are the header's room.
    unsafe {
        st.data
            .as_mut_ptr()
            .cast::<BatchHeader>()
            .write_unaligned(BatchHeader {
                kind: EventKind::Batch as u32,
                len: len as u32,
            });
    }
    let size = len + BatchHeader::LEN as u64;
    let mut state = cpu_state();
    let flags = if wake || wake_due(state.as_deref_mut(), size) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    // SAFETY: `size` bytes of `data`, a map value, are readable.
    let r = unsafe {
        bpf_ringbuf_output(
            core::ptr::from_ref(ring).cast_mut().cast(),
            st.data.as_mut_ptr().cast(),
            size,
            u64::from(flags),
        )
    };
    if r != 0 {
        return false;
    }
    st.len = 0;
    if let Some(state) = state {
        state.staged_since = next_since;
    }
    true
}

/// True when this CPU reported no ICMP error past its flow's first
/// packets for [`ERROR_QUIET_NS`]; marks `now` as such a report.
#[inline(always)]
fn quiet_error(now: u64) -> bool {
    let Some(state) = cpu_state() else {
        return false;
    };
    if now.wrapping_sub(state.error_ns) < ERROR_QUIET_NS {
        return false;
    }
    state.error_ns = now;
    true
}

/// The coarse clock, read once per tick per CPU (see
/// [`CpuState::clock_jiffies`]): the verifier turns `bpf_jiffies64` into a
/// load of the kernel's counter. A value may trail the coarse clock by up
/// to a tick more (a CPU may read the clock in the instant between a
/// tick's jiffies and its clock update): "first/last seen" and the flow
/// table's eviction order need no better.
#[inline(always)]
fn coarse_now() -> u64 {
    let Some(state) = cpu_state() else {
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    let jiffies = unsafe { bpf_jiffies64() };
    if state.clock_jiffies != jiffies {
        state.clock_jiffies = jiffies;
        state.clock_ns = unsafe { bpf_ktime_get_coarse_ns() };
    }
    state.clock_ns
}

/// This CPU's [`CpuState`].
#[inline(always)]
fn cpu_state() -> Option<&'static mut CpuState> {
    let state = WAKES.get_ptr_mut(0)?;
    // SAFETY: per-CPU value; TC programs and this CPU's timer callback do
    // not run at once on one CPU.
    Some(unsafe { &mut *state })
}

/// Counts `size` bytes into this CPU's wakeup count; true when the reader
/// is due a wakeup. A reader that sleeps is woken once per
/// `wakeup_bytes` of records a CPU submits, never once per batch (a wakeup
/// is an interrupt, a VM exit here); in between, and for slow traffic, the
/// drain timer collects records without any wakeup. The count is this
/// CPU's own: asking the ring how much waits would read the positions the
/// reader on another CPU keeps writing.
#[inline(always)]
fn wake_due(state: Option<&mut CpuState>, size: u64) -> bool {
    let every = u64::from(cfg!(wakeup_bytes));
    if every == 0 {
        return false;
    }
    let Some(state) = state else {
        return false;
    };
    state.unwoken += size + 8;
    if state.unwoken >= every {
        state.unwoken = 0;
        return true;
    }
    false
}

/// Starts the CPU's timer, which flushes the batch [`STAGE_DELAY_NS`] from
/// now: a quiet hook's records still reach userspace within that time.
/// The timer is pinned to this CPU, since only this CPU may touch its
/// batch; without the pin (kernels before 6.7) it runs where the kernel
/// puts it, and the callback leaves other CPUs' batches alone (see
/// [`stage_timer`]).
#[inline(always)]
fn arm(st: &mut KStage, map: *mut c_void) {
    // SAFETY: the timer lives in the value of `map`; the callback has the
    // signature the verifier checks for a timer callback.
    unsafe {
        if st.state & STAGE_TIMER_SET == 0 {
            // -EBUSY if already set up: the callback is set either way.
            let _ = bpf_timer_init(&raw mut st.timer, map, CLOCK_MONOTONIC);
            if bpf_timer_set_callback(&raw mut st.timer, stage_timer as *mut c_void) != 0 {
                return;
            }
            st.state |= STAGE_TIMER_SET;
        }
    }
    start(st);
}

/// Starts the timer [`arm`] set up. The callback calls only this: a
/// callback that set a callback would make the verifier follow timer
/// callbacks within timer callbacks until its call stack overflows.
#[inline(always)]
fn start(st: &mut KStage) {
    // SAFETY: the timer lives in this map's value.
    unsafe {
        if bpf_timer_start(
            &raw mut st.timer,
            STAGE_DELAY_NS,
            u64::from(BPF_F_TIMER_CPU_PIN),
        ) == 0
            || bpf_timer_start(&raw mut st.timer, STAGE_DELAY_NS, 0) == 0
        {
            st.state |= STAGE_TIMER_RUNNING;
        }
    }
}

/// The timer's callback: flushes the CPU's batch, and tries again later if
/// the ring is full. On another CPU (an unpinned timer, before 6.7) it
/// only marks the timer stopped: the batch's own CPU starts it again with
/// its next record, where the kernel then most likely puts it.
#[inline(never)]
extern "C" fn stage_timer(_map: *mut c_void, key: *mut u32, st: *mut KStage) -> i32 {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    // SAFETY: the verifier passes the key and the value of the timer's
    // entry. Only the entry's own CPU goes further than `state` below, and
    // no TC program runs on a CPU while its softirq does.
    let st = unsafe { &mut *st };
    st.state &= !STAGE_TIMER_RUNNING;
    if unsafe { *key } == cpu && !flush(st, cpu, false, 0) {
        start(st);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

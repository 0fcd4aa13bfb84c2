//! Why the kernel dropped a probe: what `podtrace_kfree_skb` needs to read
//! a packet (struct offsets, from the kernel's BTF), the names of the drop
//! reasons (the kernel's `enum skb_drop_reason`, from the same BTF), and
//! the code that dropped it, in words (`/proc/kallsyms`).
//!
//! The BTF reader is ours, and small: it only finds a struct member's
//! offset and an enum's names, in the stable format of
//! `Documentation/bpf/btf.rst`. The crates that read BTF in full are
//! LGPL (btf-rs) or keep these parts private (aya-obj), and podtrace ships
//! as one static binary under MIT or Apache-2.0.

use std::{collections::HashMap, sync::Arc};

use serde::Serialize;
use tracer_common::{DROP_SNAP, DropConfig, DropEvent};

use crate::{
    correlate::{Correlator, KernelDrop, Side, Update},
    decode::{L3, L4, Packet},
    netns::Netns,
    topology::Topology,
};

/// Where the running kernel describes its types.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// A kernel's BTF, indexed by type id.
pub struct Btf {
    data: Vec<u8>,
    strs: std::ops::Range<usize>,
    /// Byte offset of type `id` (from 1) in `data`, at `id - 1`.
    index: Vec<usize>,
}

/// One type's record header.
struct Ty {
    kind: u32,
    name_off: u32,
    vlen: usize,
    kind_flag: bool,
    /// Size, or the type it refers to.
    size_type: u32,
    /// Where the kind's own data starts.
    body: usize,
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn vmlinux() -> Result<Self, String> {
        let data = std::fs::read(VMLINUX_BTF).map_err(|e| format!("reading {VMLINUX_BTF}: {e}"))?;
        Self::parse(data)
    }

    /// Parses raw BTF (host byte order).
    pub fn parse(data: Vec<u8>) -> Result<Self, String> {
        let bad = |what: &str| format!("not BTF this build can read: {what}");
        if data.len() < 24 || u16::from_ne_bytes([data[0], data[1]]) != BTF_MAGIC {
            return Err(bad("no BTF magic in host byte order"));
        }
        let word = |at: usize| u32_at(&data, at) as usize;
        let (hdr_len, type_off, type_len, str_off, str_len) =
            (word(4), word(8), word(12), word(16), word(20));
        let types_at = hdr_len + type_off;
        let strs = hdr_len + str_off..hdr_len + str_off + str_len;
        if types_at + type_len > data.len() || strs.end > data.len() {
            return Err(bad("sections past the end"));
        }
        let mut btf = Self {
            data,
            strs,
            index: Vec::new(),
        };
        let end = types_at + type_len;
        let mut at = types_at;
        while at + 12 <= end {
            btf.index.push(at);
            let ty = btf.ty_at(at);
            at = ty.body + body_len(ty.kind, ty.vlen).ok_or_else(|| bad("unknown type kind"))?;
        }
        Ok(btf)
    }

    fn ty_at(&self, at: usize) -> Ty {
        let info = u32_at(&self.data, at + 4);
        Ty {
            kind: (info >> 24) & 0x1f,
            name_off: u32_at(&self.data, at),
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            size_type: u32_at(&self.data, at + 8),
            body: at + 12,
        }
    }

    fn ty(&self, id: u32) -> Option<Ty> {
        let at = *self.index.get((id as usize).checked_sub(1)?)?;
        Some(self.ty_at(at))
    }

    fn name(&self, off: u32) -> &str {
        let s = &self.data[self.strs.clone()];
        let from = (off as usize).min(s.len());
        let len = s[from..].iter().position(|&b| b == 0).unwrap_or(0);
        std::str::from_utf8(&s[from..from + len]).unwrap_or("")
    }

    /// The id of the type of `kind` named `name`: the first one that is
    /// not empty (a forward declaration has no members).
    fn find(&self, kinds: &[u32], name: &str) -> Option<u32> {
        (1..=self.index.len() as u32).find(|&id| {
            self.ty(id).is_some_and(|t| {
                kinds.contains(&t.kind) && t.vlen > 0 && self.name(t.name_off) == name
            })
        })
    }

    /// Past typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<Ty> {
        for _ in 0..32 {
            let t = self.ty(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_type;
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Byte offset of `field` in struct `strukt`, looking inside the
    /// anonymous structs and unions the kernel groups members in.
    pub fn member_offset(&self, strukt: &str, field: &str) -> Option<u32> {
        let t = self.ty(self.find(&[KIND_STRUCT], strukt)?)?;
        self.member_in(&t, field, 0, 0)
    }

    fn member_in(&self, t: &Ty, field: &str, base_bits: u32, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        for i in 0..t.vlen {
            let at = t.body + i * 12;
            let (name_off, ty, off) = (
                u32_at(&self.data, at),
                u32_at(&self.data, at + 4),
                u32_at(&self.data, at + 8),
            );
            let bits = base_bits + if t.kind_flag { off & 0xff_ffff } else { off };
            if name_off == 0 {
                if let Some(inner) = self.resolve(ty)
                    && matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                    && let Some(found) = self.member_in(&inner, field, bits, depth + 1)
                {
                    return Some(found);
                }
            } else if self.name(name_off) == field {
                return bits.is_multiple_of(8).then_some(bits / 8);
            }
        }
        None
    }

    /// The names of enum `name`'s values.
    pub fn enum_names(&self, name: &str) -> HashMap<u32, String> {
        let mut out = HashMap::new();
        let Some(t) = self
            .find(&[KIND_ENUM, KIND_ENUM64], name)
            .and_then(|id| self.ty(id))
        else {
            return out;
        };
        let step = if t.kind == KIND_ENUM { 8 } else { 12 };
        for i in 0..t.vlen {
            let at = t.body + i * step;
            let v = u32_at(&self.data, at + 4);
            out.insert(v, self.name(u32_at(&self.data, at)).to_owned());
        }
        out
    }
}

/// Bytes of a type record's own data after its 12-byte header.
fn body_len(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        1 | 14 | 17 => 4,                                         // int, var, decl tag
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0, // ptr, fwd, typedef, qualifiers, func, float, type tag
        3 => 12,                                     // array
        KIND_STRUCT | KIND_UNION | 15 | KIND_ENUM64 => 12 * vlen, // members, datasec vars, enum64
        KIND_ENUM | 13 => 8 * vlen,                  // enum, func proto params
        _ => return None,
    })
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |w| u32::from_ne_bytes(w.try_into().expect("4 bytes")))
}

/// The offsets `podtrace_kfree_skb` reads with, from the kernel's BTF.
pub fn offsets(btf: &Btf) -> Result<DropConfig, String> {
    let get = |s: &str, f: &str| {
        btf.member_offset(s, f)
            .ok_or_else(|| format!("no {s}.{f} in the kernel's BTF"))
    };
    Ok(DropConfig {
        skb_head: get("sk_buff", "head")?,
        skb_network_header: get("sk_buff", "network_header")?,
        skb_dev: get("sk_buff", "dev")?,
        dev_ifindex: get("net_device", "ifindex")?,
        dev_nd_net: get("net_device", "nd_net")?,
        net_cookie: get("net", "net_cookie")?,
        all: 0,
        skb_tail: get("sk_buff", "tail")?,
        no_socket: u32::MAX,
        skb_sk: get("sk_buff", "sk")?,
        sk_net: get("sock_common", "skc_net")?,
        skb_protocol: get("sk_buff", "protocol")?,
        skb_len: get("sk_buff", "len")?,
        skb_data: get("sk_buff", "data")?,
    })
}

/// Names of the kernel's drop reasons, without their `SKB_DROP_REASON_`
/// prefix (`NETFILTER_DROP`, `IP_RPFILTER`, `NO_SOCKET`, ...).
pub fn reason_names(btf: &Btf) -> HashMap<u32, String> {
    btf.enum_names("skb_drop_reason")
        .into_iter()
        .map(|(v, n)| {
            let short = n.strip_prefix("SKB_DROP_REASON_").unwrap_or(&n).to_owned();
            (v, short)
        })
        .collect()
}

/// Kernel code addresses in words (`nf_hook_slow+0x9c`), from
/// `/proc/kallsyms`; empty where the kernel hides its addresses.
#[derive(Default)]
pub struct Symbols {
    /// (address, name), sorted by address.
    syms: Vec<(u64, String)>,
}

impl Symbols {
    /// Reads the kernel's text symbols.
    pub fn kernel() -> Self {
        let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        Self::parse(&text)
    }

    fn parse(text: &str) -> Self {
        let mut syms: Vec<(u64, String)> = text
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let addr = u64::from_str_radix(it.next()?, 16).ok()?;
                let kind = it.next()?;
                let name = it.next()?;
                (addr != 0 && matches!(kind, "t" | "T")).then(|| (addr, name.to_owned()))
            })
            .collect();
        syms.sort_unstable();
        Self { syms }
    }

    /// `name+0xoff` for an address inside the kernel's text.
    pub fn name(&self, addr: u64) -> Option<String> {
        let i = self
            .syms
            .partition_point(|(a, _)| *a <= addr)
            .checked_sub(1)?;
        let (at, name) = &self.syms[i];
        Some(format!("{name}+{:#x}", addr - at))
    }
}

/// What turns a drop record into words: the reasons' names and the
/// kernel's symbols.
#[derive(Default)]
pub struct Words {
    reasons: HashMap<u32, String>,
    /// Read at the first drop: most runs have none, and the file has
    /// hundreds of thousands of lines.
    symbols: std::cell::OnceCell<Symbols>,
}

impl Words {
    /// The offsets for the program (reporting ping's probes only; set
    /// [`DropConfig::all`] for every packet) and the words, from the
    /// running kernel.
    pub fn load() -> Result<(DropConfig, Self), String> {
        let btf = Btf::vmlinux()?;
        let offsets = offsets(&btf)?;
        let reasons = reason_names(&btf);
        let no_socket = reasons
            .iter()
            .find_map(|(v, n)| (n == "NO_SOCKET").then_some(*v))
            .unwrap_or(u32::MAX);
        Ok((
            DropConfig {
                no_socket,
                ..offsets
            },
            Self {
                reasons,
                symbols: std::cell::OnceCell::new(),
            },
        ))
    }

    /// [`Words::load`] for trace, watch and capture: every dropped packet
    /// of the traced namespaces, not ping's probes only. Without the
    /// kernel's BTF, no offsets, empty words, and why.
    pub fn load_every() -> (Option<DropConfig>, Self, Option<String>) {
        match Self::load() {
            Ok((offsets, words)) => (Some(DropConfig { all: 1, ..offsets }), words, None),
            Err(e) => (None, Self::default(), Some(e)),
        }
    }

    /// The reason's name, or its number.
    pub fn reason(&self, reason: u32) -> String {
        self.reasons
            .get(&reason)
            .cloned()
            .unwrap_or_else(|| format!("reason {reason}"))
    }

    /// The code that dropped it (`nf_hook_slow+0x9c`).
    pub fn at(&self, location: u64) -> Option<String> {
        self.symbols.get_or_init(Symbols::kernel).name(location)
    }
}

/// A drop record's packet, decoded as the hooks' are (it starts at the
/// IPv4 header: an Ethernet header is put in front).
pub fn packet(d: &DropEvent) -> Packet {
    let mut frame = [0u8; 14 + DROP_SNAP];
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    frame[14..].copy_from_slice(&d.data);
    let mut p = crate::decode::decode_frame(&frame);
    p.ts_ns = d.ts_ns;
    if d.ip_len != 0 {
        // The packet's own length, not the copy's: a BIG TCP packet's
        // header says 0, and its length comes from this.
        p.len = 14 + d.ip_len;
        crate::decode::gso_length(&mut p, &frame);
    }
    p
}

/// What a reason (or the code that dropped a packet with no reason) means
/// for a packet path, in a few words, for the common ones.
pub fn hint(reason: &str, at: Option<&str>) -> Option<&'static str> {
    Some(match reason {
        "NETFILTER_DROP" => "an iptables or nftables rule",
        "IP_RPFILTER" => {
            "reverse path filter: the route back to the source leaves by another interface"
        }
        "PKT_TOO_BIG" => "larger than the next hop's MTU",
        "NEIGH_FAILED" => "no ARP answer from the next hop",
        "IP_INNOROUTES" | "IP_OUTNOROUTES" => "no route to the destination",
        "TC_INGRESS" | "TC_EGRESS" => "a TC program or filter",
        "OTHERHOST" => "sent to another host's MAC address",
        "NO_SOCKET" => "nothing listens on that port, and no answer came back",
        "NOT_SPECIFIED" if at.is_some_and(|a| a.starts_with("ip_error")) => {
            "no route: a blackhole, unreachable or prohibit route"
        }
        _ => return None,
    })
}

/// A drop's cause in words: `NETFILTER_DROP in nft_do_chain+0x3e8 (an
/// iptables or nftables rule)`, the code and a hint when known.
pub fn cause(reason: &str, at: Option<&str>) -> String {
    let mut s = reason.to_owned();
    if let Some(a) = at {
        s.push_str(&format!(" in {a}"));
    }
    if let Some(h) = hint(reason, at) {
        s.push_str(&format!(" ({h})"));
    }
    s
}

/// The traced node (namespace) and device a drop happened on, when known.
pub fn place(
    d: &DropEvent,
    topology: &Topology,
    namespaces: &[Arc<Netns>],
) -> (Option<String>, Option<String>) {
    let iface = topology.iter().find_map(|(cookie, iface)| {
        (cookie == d.netns_cookie && iface.ifindex == d.ifindex).then(|| iface.name.clone())
    });
    let node = namespaces
        .iter()
        .find(|n| n.cookie == d.netns_cookie)
        .map(|n| n.name.clone());
    (node, iface)
}

/// A packet the kernel dropped, as `trace` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Dropped {
    /// The kernel's reason (`NETFILTER_DROP`, ...).
    pub reason: String,
    /// Its `enum skb_drop_reason` value.
    pub code: u32,
    /// The code that dropped it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// Traced node (namespace) of the device it was on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// That device, when hooked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
    /// `tcp`, `udp`, `icmp` or the protocol's number.
    pub proto: String,
    /// Source, `ip` or `ip:port`.
    pub src: String,
    /// Destination.
    pub dst: String,
    /// What else the headers say: TCP flags, the ICMP type.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub info: String,
    /// The device as the flow blocks name it (`pod-1 veth`).
    #[serde(skip)]
    pub device: Option<String>,
}

impl Dropped {
    /// Describes a drop record.
    pub fn of(
        d: &DropEvent,
        words: &Words,
        topology: &Topology,
        namespaces: &[Arc<Netns>],
    ) -> Self {
        let p = packet(d);
        let (node, iface) = place(d, topology, namespaces);
        let (src, dst, proto) = match p.l3 {
            L3::Ipv4 {
                src, dst, proto, ..
            } => (src.to_string(), dst.to_string(), proto),
            _ => ("?".into(), "?".into(), 0),
        };
        let (proto, src, dst, info) = match p.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
                ..
            } => (
                "tcp".into(),
                format!("{src}:{sport}"),
                format!("{dst}:{dport}"),
                crate::decode::tcp_flags(flags),
            ),
            L4::Udp { sport, dport, .. } => (
                "udp".into(),
                format!("{src}:{sport}"),
                format!("{dst}:{dport}"),
                String::new(),
            ),
            L4::Icmp { ty, code, .. } | L4::IcmpError { ty, code, .. } => (
                "icmp".into(),
                src,
                dst,
                match ty {
                    0 => "echo reply".to_owned(),
                    8 => "echo request".to_owned(),
                    _ => crate::decode::icmp_name(ty, code)
                        .map_or_else(|| format!("type {ty} code {code}"), str::to_owned),
                },
            ),
            _ => (proto.to_string(), src, dst, String::new()),
        };
        let device = topology.iter().find_map(|(cookie, iface)| {
            (cookie == d.netns_cookie && iface.ifindex == d.ifindex).then(|| match &iface.role {
                crate::topology::Role::PodVeth { pod: Some(p), .. } => {
                    format!("{} veth", crate::correlate::short_pod(p))
                }
                _ => iface.name.clone(),
            })
        });
        Self {
            device,
            reason: words.reason(d.reason),
            code: d.reason,
            at: words.at(d.location),
            node,
            iface,
            proto,
            src,
            dst,
            info,
        }
    }

    /// A packet that reached its host, which had no socket for it: a
    /// closed port (answered with a RST or a port unreachable, which trace
    /// shows), or an echo reply a raw socket read a copy of (`ping`). The
    /// host's answer, not a loss on the way: a node's closed ports, which
    /// health checks and scans knock on all day, would bury the rest.
    pub fn delivered(&self) -> bool {
        self.reason == "NO_SOCKET"
    }

    /// One line: `node-b ens5: NETFILTER_DROP in nft_do_chain+0x3e8:
    /// tcp 192.168.1.11:40000 > 192.168.2.11:8080 [S]`.
    pub fn line(&self) -> String {
        let place = match (&self.node, &self.device) {
            (Some(n), Some(i)) => format!(" on {n} ({i})"),
            (Some(n), None) => format!(" on {n}"),
            _ => String::new(),
        };
        format!(
            "dropped by the kernel{place}: {}: {}",
            cause(&self.reason, self.at.as_deref()),
            self.packet_line()
        )
    }

    /// What the exit line counts it by ([`exit_line`]): its node (`?`
    /// when not a traced one) and reason.
    pub fn tally_key(&self) -> (String, String) {
        (
            self.node.clone().unwrap_or_else(|| "?".into()),
            self.reason.clone(),
        )
    }

    /// The packet: `tcp 192.168.1.11:40000 > 192.168.2.11:8080 [S]`.
    pub fn packet_line(&self) -> String {
        let info = if self.info.is_empty() {
            String::new()
        } else if self.proto == "tcp" {
            format!(" [{}]", self.info)
        } else {
            format!(" {}", self.info)
        };
        format!("{} {} > {}{info}", self.proto, self.src, self.dst)
    }
}

/// The exit line of what the kernel dropped: `3 packets dropped by the
/// kernel: 2 NETFILTER_DROP on node-b, 1 IP_RPFILTER on node-a`. `by`:
/// the drops shown, by (node, reason); `suppressed`: those left out (over
/// the budget, or refused by a full ring); `more`: appended. None when
/// there were none.
pub fn exit_line(
    by: &std::collections::BTreeMap<(String, String), u64>,
    suppressed: u64,
    more: &str,
) -> Option<String> {
    if by.is_empty() && suppressed == 0 {
        return None;
    }
    let kinds: Vec<String> = by
        .iter()
        .map(|((node, reason), v)| format!("{v} {reason} on {node}"))
        .collect();
    let why = left_out_why();
    // The headline is every drop the kernel reported or counted; the
    // breakdown is of those shown.
    let shown: u64 = by.values().sum();
    let total = shown + suppressed;
    let head = format!(
        "{total} packet{} dropped by the kernel",
        if total == 1 { "" } else { "s" }
    );
    Some(match (shown, suppressed) {
        (_, 0) => format!("{head}: {}{more}", kinds.join(", ")),
        (0, _) => format!("{head}, none shown ({why}){more}"),
        _ => format!(
            "{head} ({shown} shown): {} ({suppressed} more not shown: {why}){more}",
            kinds.join(", ")
        ),
    })
}

/// Why drop reports are left out: `over 256 per CPU in 100 ms, or a full
/// ring`.
pub fn left_out_why() -> String {
    format!(
        "over {} per CPU in {} ms, or a full ring",
        tracer_common::DROPS_PER_WINDOW,
        tracer_common::DROP_WINDOW_NS / 1_000_000
    )
}

/// How long a drop waits for its flow before it is given up.
const FILE_WAIT_NS: u64 = 5_000_000_000;

/// Drops waiting for their flow at most.
const MAX_UNFILED: usize = 4096;

/// Drops not yet filed with their flow: a drop often comes before the
/// journey of its packet has closed and made the flow.
#[derive(Default)]
pub struct Unfiled {
    waiting: Vec<(Packet, KernelDrop)>,
    /// Drops never filed: within 5 s, no flow had their addresses and no
    /// open journey their packet (no traced hook saw it, or its journey
    /// had closed), or too many were waiting.
    pub given_up: u64,
}

impl Unfiled {
    /// Queues a drop for [`Unfiled::file`].
    pub fn push(&mut self, d: &DropEvent, dropped: &Dropped) {
        if self.waiting.len() >= MAX_UNFILED {
            self.given_up += 1;
            return;
        }
        self.waiting.push((
            packet(d),
            KernelDrop {
                // The engine finds the side.
                side: Side::Request,
                reason: dropped.reason.clone(),
                code: dropped.code,
                packet: format!("{} {} > {}", dropped.proto, dropped.src, dropped.dst),
                // The engine fills it in from the packet.
                tuple: crate::correlate::Tuple::default(),
                at: dropped.at.clone(),
                node: dropped.node.clone(),
                iface: dropped.device.clone(),
                packets: 0,
                ts_ns: d.ts_ns,
            },
        ));
    }

    /// Files each waiting drop with its flow (labelled `dropped`), keeping
    /// those whose flow is not there yet, for up to 5 s after the drop
    /// (`now` [`u64::MAX`]: the last try).
    pub fn file(&mut self, engine: &mut Correlator, now: u64, mut sink: impl FnMut(Update<'_>)) {
        let given_up = &mut self.given_up;
        self.waiting.retain(|(pkt, d)| {
            if engine.note_drop(pkt, d, &mut sink) {
                return false;
            }
            let wait = now.saturating_sub(pkt.ts_ns) < FILE_WAIT_NS;
            *given_up += u64::from(!wait);
            wait
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_line_counts_what_was_shown_and_left_out() {
        let mut by = std::collections::BTreeMap::new();
        assert_eq!(exit_line(&by, 0, ""), None);
        by.insert(("node-b".to_owned(), "NETFILTER_DROP".to_owned()), 2);
        by.insert(("node-a".to_owned(), "IP_RPFILTER".to_owned()), 1);
        assert_eq!(
            exit_line(&by, 0, "").as_deref(),
            Some(
                "3 packets dropped by the kernel: 1 IP_RPFILTER on node-a, 2 NETFILTER_DROP on node-b"
            )
        );
        by.remove(&("node-b".to_owned(), "NETFILTER_DROP".to_owned()));
        assert_eq!(
            exit_line(&by, 4, "; more").as_deref(),
            Some(
                "5 packets dropped by the kernel (1 shown): 1 IP_RPFILTER on node-a (4 more not \
                 shown: over 256 per CPU in 100 ms, or a full ring); more"
            )
        );
        by.clear();
        assert!(exit_line(&by, 0, "").is_none());
        assert_eq!(
            exit_line(&by, 1, "").as_deref(),
            Some(
                "1 packet dropped by the kernel, none shown (over 256 per CPU in 100 ms, or a \
                 full ring)"
            )
        );
    }

    /// BTF of: struct inner { int x; }; struct s { int a; union { int b;
    /// struct { int c; int d; }; }; }; enum e { E_ONE = 1, E_TWO = 2 };
    fn sample() -> Vec<u8> {
        let strs = b"\0int\0s\0a\0b\0c\0d\0e\0E_ONE\0E_TWO\0";
        let at = |n: &str| {
            let needle = format!("\0{n}\0");
            strs.windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .expect("string") as u32
                + 1
        };
        let mut types: Vec<u32> = Vec::new();
        let info = |kind: u32, vlen: u32| (kind << 24) | vlen;
        // 1: int
        types.extend([at("int"), info(1, 0), 4, 32]);
        // 2: anonymous struct { int c; int d; }
        types.extend([0, info(KIND_STRUCT, 2), 8]);
        types.extend([at("c"), 1, 0, at("d"), 1, 32]);
        // 3: anonymous union { int b; struct 2; }
        types.extend([0, info(KIND_UNION, 2), 8]);
        types.extend([at("b"), 1, 0, 0, 2, 0]);
        // 4: struct s { int a; union 3; } (union at byte 8)
        types.extend([at("s"), info(KIND_STRUCT, 2), 16]);
        types.extend([at("a"), 1, 0, 0, 3, 64]);
        // 5: enum e
        types.extend([at("e"), info(KIND_ENUM, 2), 4]);
        types.extend([at("E_ONE"), 1, at("E_TWO"), 2]);
        let types: Vec<u8> = types.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut out = Vec::new();
        out.extend(BTF_MAGIC.to_ne_bytes());
        out.extend([1u8, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strs.len() as u32,
        ] {
            out.extend(w.to_ne_bytes());
        }
        out.extend(types);
        out.extend(strs);
        out
    }

    #[test]
    fn finds_members_inside_anonymous_groups() {
        let btf = Btf::parse(sample()).expect("parses");
        assert_eq!(btf.member_offset("s", "a"), Some(0));
        assert_eq!(btf.member_offset("s", "b"), Some(8));
        assert_eq!(btf.member_offset("s", "c"), Some(8));
        assert_eq!(btf.member_offset("s", "d"), Some(12));
        assert_eq!(btf.member_offset("s", "z"), None);
        assert_eq!(btf.member_offset("nope", "a"), None);
        let names = btf.enum_names("e");
        assert_eq!(names.get(&2).map(String::as_str), Some("E_TWO"));
    }

    #[test]
    fn refuses_what_is_not_btf() {
        assert!(Btf::parse(vec![0; 64]).is_err());
        let mut cut = sample();
        cut.truncate(40);
        assert!(Btf::parse(cut).is_err());
    }

    #[test]
    fn names_code_addresses() {
        let s = Symbols::parse(
            "ffffffff81000100 T nf_hook_slow\nffffffff81000000 t early\n0000000000000000 T hidden\n",
        );
        assert_eq!(
            s.name(0xffff_ffff_8100_019c).as_deref(),
            Some("nf_hook_slow+0x9c")
        );
        assert_eq!(s.name(0xffff_ffff_8100_0000).as_deref(), Some("early+0x0"));
        assert_eq!(s.name(0x10), None);
    }

    /// A dropped TCP segment: IPv4 total length `total`, a 32-byte TCP
    /// header, and the kernel's length of it from its IPv4 header.
    fn tcp_drop(total: u16, ip_len: u32) -> DropEvent {
        let mut data = [0u8; DROP_SNAP];
        data[0] = 0x45;
        data[2..4].copy_from_slice(&total.to_be_bytes());
        data[8] = 64;
        data[9] = 6;
        data[12..16].copy_from_slice(&[10, 0, 0, 1]);
        data[16..20].copy_from_slice(&[10, 0, 0, 2]);
        data[20..22].copy_from_slice(&40000u16.to_be_bytes());
        data[22..24].copy_from_slice(&5201u16.to_be_bytes());
        data[32] = 8 << 4;
        data[33] = 0x10;
        DropEvent {
            ts_ns: 1,
            location: 0,
            netns_cookie: 0,
            reason: 0,
            ifindex: 0,
            copied: 52,
            ip_len,
            data,
        }
    }

    #[test]
    fn a_dropped_big_tcp_packet_reads_with_its_whole_length() {
        // BIG TCP: the header says 0, the kernel's sk_buff says 100000.
        let p = packet(&tcp_drop(0, 100_000));
        assert_eq!(p.length, 100_000 - 20 - 32, "{p:?}");
        assert!(p.to_string().contains("length 99948"), "{}", p);
        // An ordinary one: the header's length, as before.
        let p = packet(&tcp_drop(1052, 1052));
        assert_eq!(p.length, 1000, "{p:?}");
        // A record without the kernel's length still reads.
        let p = packet(&tcp_drop(1052, 0));
        assert_eq!(p.length, 1000, "{p:?}");
    }

    #[test]
    fn reads_this_kernels_btf() {
        // Every kernel podtrace runs on has BTF (its maps need it); a build
        // machine without it has nothing to read.
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            return;
        }
        let btf = Btf::vmlinux().expect("this kernel's BTF");
        let o = offsets(&btf).expect("the offsets ping needs");
        assert!(o.skb_head > 0 && o.skb_network_header > 0 && o.net_cookie > 0);
        // The socket's pointer and its namespace's: a drop with no device.
        assert!(o.skb_sk > 0 && o.sk_net > 0 && o.skb_protocol > 0, "{o:?}");
        // The packet's length: `len` from `data` (`len` is sk_buff's
        // first u32 after its list heads and socket, never at 0).
        assert!(o.skb_len > 0 && o.skb_data > 0, "{o:?}");
        // Numbered differently from one kernel to the next.
        assert!(reason_names(&btf).values().any(|n| n == "NOT_SPECIFIED"));
    }
}

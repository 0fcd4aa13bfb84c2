//! Printing packets: tcpdump-like text, JSON lines, pcapng; and the totals
//! printed on exit.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs::File,
    io::{self, BufWriter, Write},
    net::{IpAddr, Ipv4Addr},
    path::Path,
    time::Duration,
};

use anyhow::Context as _;
use pcap_file::{
    DataLink,
    pcapng::{
        PcapNgWriter,
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        },
    },
};
use tracer_common::Direction;

use crate::{
    decode::{L3, L4, Packet},
    session::Session,
    topology::{Role, Topology},
};

/// Kernel time now: CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns` and
/// so of every event.
pub fn kernel_now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(t.tv_nsec()).unwrap_or(0)
    })
}

/// Converts kernel CLOCK_MONOTONIC stamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall clock minus monotonic clock, ns.
    offset_ns: i128,
}

impl Clock {
    /// Measures the offset now.
    pub fn now() -> Self {
        let ns = |id| {
            nix::time::clock_gettime(id)
                .map(|t| i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
                .unwrap_or(0)
        };
        Self {
            offset_ns: ns(nix::time::ClockId::CLOCK_REALTIME)
                - ns(nix::time::ClockId::CLOCK_MONOTONIC),
        }
    }

    /// Nanoseconds since the Unix epoch for a kernel stamp.
    pub fn wall_ns(&self, ts_ns: u64) -> u128 {
        u128::try_from(i128::from(ts_ns) + self.offset_ns).unwrap_or(0)
    }

    /// `HH:MM:SS.uuuuuu` (UTC) for a kernel stamp.
    pub fn hms(&self, ts_ns: u64) -> String {
        let buf = self.hms_bytes(ts_ns);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// [`Clock::hms`] without allocating: ASCII digits in a fixed buffer.
    fn hms_bytes(&self, ts_ns: u64) -> [u8; 15] {
        let ns = self.wall_ns(ts_ns);
        // u64 arithmetic (until 2554) is much cheaper than u128.
        let (day, micros) = match u64::try_from(ns) {
            Ok(ns) => (ns / 1_000_000_000 % 86_400, ns % 1_000_000_000 / 1000),
            Err(_) => (
                u64::try_from(ns / 1_000_000_000 % 86_400).unwrap_or(0),
                u64::try_from(ns % 1_000_000_000 / 1000).unwrap_or(0),
            ),
        };
        let mut b = *b"00:00:00.000000";
        let mut put = |at: usize, width: usize, mut v: u64| {
            for i in (at..at + width).rev() {
                b[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 2, day / 3600);
        put(3, 2, day % 3600 / 60);
        put(6, 2, day % 60);
        put(9, 6, micros);
        b
    }
}

/// The part of an interface's label after its name: `(eni0)`, `(pod-1)`.
fn write_iface_tag(out: &mut impl Write, role: &Role) -> io::Result<()> {
    match role {
        Role::Eni { index: Some(n), .. } => write!(out, "(eni{n})"),
        // An interface with an address that is neither a pod's nor an
        // ENI by its name or routes (outside the VPC CNI): no tag.
        Role::Eni { index: None, .. } => Ok(()),
        Role::PodVeth { pod: Some(pod), .. } => {
            out.write_all(b"(")?;
            out.write_all(pod.rsplit('/').next().unwrap_or(pod).as_bytes())?;
            out.write_all(b")")
        }
        Role::PodVeth {
            pod_ip: Some(ip), ..
        } => write!(out, "({ip})"),
        Role::PodVeth { .. } => out.write_all(b"(pod)"),
        Role::PodEth0 => out.write_all(b"(pod eth0)"),
        Role::Other => Ok(()),
    }
}

/// `ens5(eni0)`, `eni3b1f0a9c2d4(pod-1)`, `va`.
pub fn iface_label(p: &Packet, topo: &Topology) -> (String, String) {
    match topo.get(&p.hook) {
        Some(i) => {
            let mut label = i.name.clone().into_bytes();
            // Writing to a Vec cannot fail.
            let _ = write_iface_tag(&mut label, &i.role);
            (
                i.node.clone(),
                String::from_utf8(label).expect("names and tags are UTF-8"),
            )
        }
        None => ("?".into(), format!("if{}", p.hook.ifindex)),
    }
}

fn dir_word(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "in",
        Direction::Egress => "out",
    }
}

/// Passes bytes through and counts the chars among them (the bytes that do
/// not continue a UTF-8 sequence), as `{:<N}` counts them.
struct CountChars<'a, W> {
    inner: &'a mut W,
    chars: usize,
}

impl<W: Write> Write for CountChars<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.chars += buf[..n].iter().filter(|&&b| b & 0xc0 != 0x80).count();
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `n` spaces.
fn pad(out: &mut impl Write, n: usize) -> io::Result<()> {
    const SPACES: [u8; 32] = [b' '; 32];
    let mut n = n;
    while n > 0 {
        let k = n.min(SPACES.len());
        out.write_all(&SPACES[..k])?;
        n -= k;
    }
    Ok(())
}

/// One tcpdump-like line:
/// `{hms} {node} {iface:<22} {dir:<4} {summary}[  [probe]]`.
///
/// Written piece by piece into `out` (a `BufWriter` in `capture`): nothing
/// is allocated per line, except what `Packet`'s `Display` allocates itself.
pub fn write_text_line(
    out: &mut impl Write,
    p: &Packet,
    topo: &Topology,
    clock: &Clock,
) -> io::Result<()> {
    const IFACE_WIDTH: usize = 22;
    out.write_all(&clock.hms_bytes(p.ts_ns))?;
    out.write_all(b" ")?;
    let mut label = CountChars {
        inner: &mut *out,
        chars: 0,
    };
    match topo.get(&p.hook) {
        Some(i) => {
            label.inner.write_all(i.node.as_bytes())?;
            label.inner.write_all(b" ")?;
            label.write_all(i.name.as_bytes())?;
            write_iface_tag(&mut label, &i.role)?;
        }
        None => {
            label.inner.write_all(b"? ")?;
            write!(label, "if{}", p.hook.ifindex)?;
        }
    }
    let width = label.chars;
    pad(out, IFACE_WIDTH.saturating_sub(width))?;
    out.write_all(match p.hook.dir {
        Direction::Ingress => b" in   ",
        Direction::Egress => b" out  ",
    })?;
    write!(out, "{p}")?;
    if p.probe {
        out.write_all(b"  [probe]")?;
    }
    out.write_all(b"\n")
}

/// Appends decimal digits of `v`.
fn push_uint(buf: &mut Vec<u8>, v: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut v = v;
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

/// Appends decimal digits of `v`; u64 arithmetic (until 2554 in ns) is
/// much cheaper than u128, whose every digit is a call.
fn push_u128(buf: &mut Vec<u8>, v: u128) {
    const E19: u128 = 10_000_000_000_000_000_000;
    match u64::try_from(v) {
        Ok(v) => push_uint(buf, v),
        Err(_) => {
            push_u128(buf, v / E19);
            let low = u64::try_from(v % E19).unwrap_or(0);
            let mark = buf.len();
            push_uint(buf, low);
            // Zero-fill `low` to 19 digits.
            let short = 19 - (buf.len() - mark);
            buf.splice(mark..mark, std::iter::repeat_n(b'0', short));
        }
    }
}

/// Appends an IPv4 or IPv6 address as a JSON string.
fn push_addr(buf: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(ip) => push_ip(buf, ip),
        IpAddr::V6(ip) => {
            // Writing to a Vec cannot fail.
            let _ = write!(buf, "\"{ip}\"");
        }
    }
}

/// An ICMP header's fields as `capture --json` gives them: type, code,
/// id, seq, and for an error the packet it quotes (its id reads 0 and its
/// seq is the header's last two bytes, an MTU for "fragmentation needed").
fn icmp_fields(l4: L4) -> Option<(u8, u8, u16, u16, Option<crate::decode::Quote>)> {
    match l4 {
        L4::Icmp { ty, code, id, seq } | L4::Icmp6 { ty, code, id, seq } => {
            Some((ty, code, id, seq, None))
        }
        L4::IcmpError {
            ty,
            code,
            mtu,
            quote,
        } => Some((ty, code, 0, mtu, Some(quote))),
        _ => None,
    }
}

/// Appends `"a.b.c.d"`.
fn push_ip(buf: &mut Vec<u8>, ip: Ipv4Addr) {
    buf.push(b'"');
    for (i, o) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf.push(b'.');
        }
        push_uint(buf, u64::from(o));
    }
    buf.push(b'"');
}

/// Appends the contents of a JSON string (no quotes), escaped exactly as
/// serde_json escapes them.
fn push_escaped(buf: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        buf.extend_from_slice(s.as_bytes());
    } else {
        // Rare (names with quotes or control characters): let serde_json
        // do it, and drop the quotes it adds.
        let quoted = serde_json::to_vec(s).expect("a str serializes");
        buf.extend_from_slice(&quoted[1..quoted.len() - 1]);
    }
}

/// Appends `"..."`, escaped, or `null`.
fn push_str(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            buf.push(b'"');
            push_escaped(buf, s);
            buf.push(b'"');
        }
        None => buf.extend_from_slice(b"null"),
    }
}

/// `fmt::Write` into a JSON string's contents: what `Display` writes,
/// escaped on the way.
struct EscapeInto<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for EscapeInto<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        push_escaped(self.0, s);
        Ok(())
    }
}

/// Appends one JSON object and a newline to `buf`, straight from the
/// packet: nothing is allocated, except what `Packet`'s `Display` allocates
/// itself for the summary.
///
/// The fields are in the order `serde_json::Map` (a `BTreeMap`) gave them
/// when the line was built as a `serde_json::Value`: sorted by name. That
/// order, the spelling of each value and the escaping are part of the
/// output format; the tests compare every byte with that old
/// implementation.
pub fn format_json_line(buf: &mut Vec<u8>, p: &Packet, topo: &Topology, clock: &Clock) {
    let iface = topo.get(&p.hook);
    let role = iface.map(|i| &i.role);
    let (role_name, eni_index): (&[u8], _) = match role {
        Some(Role::PodVeth { .. }) => (b"pod", None),
        Some(Role::Eni { index, .. }) => (b"eni", *index),
        Some(Role::PodEth0) => (b"pod_eth0", None),
        _ => (b"other", None),
    };
    // Addresses, IP id (IPv4 only), TTL or hop limit, protocol.
    let ip = match p.l3 {
        L3::Ipv4 {
            src,
            dst,
            id,
            ttl,
            proto,
            ..
        } => Some((IpAddr::V4(src), IpAddr::V4(dst), Some(id), ttl, proto)),
        L3::Ipv6 {
            src,
            dst,
            hop_limit,
            proto,
            ..
        } => Some((IpAddr::V6(src), IpAddr::V6(dst), None, hop_limit, proto)),
        _ => None,
    };
    let ports = match p.l4 {
        L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport, .. } => Some((sport, dport)),
        _ => None,
    };
    buf.extend_from_slice(match p.hook.dir {
        Direction::Ingress => b"{\"dir\":\"ingress\"",
        Direction::Egress => b"{\"dir\":\"egress\"",
    });
    if let Some((_, dport)) = ports {
        buf.extend_from_slice(b",\"dport\":");
        push_uint(buf, u64::from(dport));
    }
    if let Some((_, dst, ..)) = ip {
        buf.extend_from_slice(b",\"dst\":");
        push_addr(buf, dst);
    }
    buf.extend_from_slice(b",\"eni_index\":");
    match eni_index {
        Some(n) => push_uint(buf, u64::from(n)),
        None => buf.extend_from_slice(b"null"),
    }
    if let Some((ty, code, id, seq, quote)) = icmp_fields(p.l4) {
        buf.extend_from_slice(b",\"icmp\":{\"code\":");
        push_uint(buf, u64::from(code));
        buf.extend_from_slice(b",\"id\":");
        push_uint(buf, u64::from(id));
        if let (3, 4, Some(_)) = (ty, code, quote) {
            // The next hop's MTU of a "fragmentation needed".
            buf.extend_from_slice(b",\"mtu\":");
            push_uint(buf, u64::from(seq));
        }
        if let Some(q) = quote {
            // The packet an error is about, as quoted here.
            buf.extend_from_slice(b",\"quote\":{\"dport\":");
            push_uint(buf, u64::from(q.dport));
            buf.extend_from_slice(b",\"dst\":");
            push_ip(buf, q.dst);
            buf.extend_from_slice(b",\"proto\":");
            push_uint(buf, u64::from(q.proto));
            buf.extend_from_slice(b",\"sport\":");
            push_uint(buf, u64::from(q.sport));
            buf.extend_from_slice(b",\"src\":");
            push_ip(buf, q.src);
            buf.push(b'}');
        }
        buf.extend_from_slice(b",\"seq\":");
        push_uint(buf, u64::from(seq));
        buf.extend_from_slice(b",\"type\":");
        push_uint(buf, u64::from(ty));
        buf.push(b'}');
    }
    buf.extend_from_slice(b",\"iface\":");
    push_str(buf, iface.map(|i| i.name.as_str()));
    buf.extend_from_slice(b",\"ifindex\":");
    push_uint(buf, u64::from(p.hook.ifindex));
    if let Some((_, _, Some(id), ..)) = ip {
        buf.extend_from_slice(b",\"ip_id\":");
        push_uint(buf, u64::from(id));
    }
    buf.extend_from_slice(b",\"ktime_ns\":");
    push_uint(buf, p.ts_ns);
    buf.extend_from_slice(b",\"len\":");
    push_uint(buf, u64::from(p.len));
    buf.extend_from_slice(b",\"mark\":");
    push_uint(buf, u64::from(p.mark));
    buf.extend_from_slice(b",\"node\":");
    push_str(buf, iface.map(|i| i.node.as_str()));
    buf.extend_from_slice(b",\"pod_ip\":");
    match role {
        Some(Role::PodVeth {
            pod_ip: Some(ip), ..
        }) => push_ip(buf, *ip),
        _ => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(if p.probe {
        b",\"probe\":true"
    } else {
        b",\"probe\":false"
    });
    if let Some((.., proto)) = ip {
        buf.extend_from_slice(b",\"proto\":");
        push_uint(buf, u64::from(proto));
    }
    buf.extend_from_slice(b",\"role\":\"");
    buf.extend_from_slice(role_name);
    buf.push(b'"');
    if let Some((sport, _)) = ports {
        buf.extend_from_slice(b",\"sport\":");
        push_uint(buf, u64::from(sport));
    }
    if let Some((src, ..)) = ip {
        buf.extend_from_slice(b",\"src\":");
        push_addr(buf, src);
    }
    buf.extend_from_slice(b",\"summary\":\"");
    // Writing to a Vec cannot fail.
    let _ = write!(EscapeInto(buf), "{p}");
    buf.push(b'"');
    if let L4::Tcp {
        seq, ack, flags, ..
    } = p.l4
    {
        buf.extend_from_slice(b",\"tcp\":{\"ack\":");
        push_uint(buf, u64::from(ack));
        buf.extend_from_slice(b",\"flags\":\"");
        // `decode::tcp_flags`, without its String.
        for (bit, c) in [
            (0x02, b'S'),
            (0x01, b'F'),
            (0x04, b'R'),
            (0x08, b'P'),
            (0x10, b'.'),
        ] {
            if flags & bit != 0 {
                buf.push(c);
            }
        }
        buf.extend_from_slice(b"\",\"seq\":");
        push_uint(buf, u64::from(seq));
        buf.push(b'}');
    }
    buf.extend_from_slice(b",\"time_ns\":\"");
    push_u128(buf, clock.wall_ns(p.ts_ns));
    buf.push(b'"');
    if let Some((_, _, _, ttl, _)) = ip {
        buf.extend_from_slice(b",\"ttl\":");
        push_uint(buf, u64::from(ttl));
    }
    // What the line is, as trace's and capture --drops' other lines say.
    buf.extend_from_slice(b",\"type\":\"packet\"}\n");
}

/// One JSON object per line (see [`format_json_line`]). Allocates a line
/// buffer per call: [`LineOut`] is the fast way to print many.
pub fn write_json_line(
    out: &mut impl Write,
    p: &Packet,
    topo: &Topology,
    clock: &Clock,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    format_json_line(&mut buf, p, topo, clock);
    out.write_all(&buf)
}

/// Event lines on their way to `W` (stdout): formatted straight into one
/// buffer, written out when it holds `cap` bytes and at each
/// [`LineOut::flush`]. One `write(2)` per buffer instead of one per line
/// (Rust's stdout is line-buffered).
pub struct LineOut<W: Write> {
    buf: Vec<u8>,
    cap: usize,
    inner: W,
}

impl<W: Write> LineOut<W> {
    /// Buffers up to about `cap` bytes (one line more at most).
    pub fn new(inner: W, cap: usize) -> Self {
        Self {
            buf: Vec::with_capacity(cap + 4096),
            cap,
            inner,
        }
    }

    /// Appends one JSON line ([`format_json_line`]).
    pub fn json(&mut self, p: &Packet, topo: &Topology, clock: &Clock) -> io::Result<()> {
        format_json_line(&mut self.buf, p, topo, clock);
        self.maybe_write()
    }

    /// Appends `line` and a newline.
    pub fn raw_line(&mut self, line: &str) -> io::Result<()> {
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.push(b'\n');
        self.maybe_write()
    }

    /// Appends one text line ([`write_text_line`]).
    pub fn text(&mut self, p: &Packet, topo: &Topology, clock: &Clock) -> io::Result<()> {
        write_text_line(&mut self.buf, p, topo, clock)?;
        self.maybe_write()
    }

    fn maybe_write(&mut self) -> io::Result<()> {
        if self.buf.len() >= self.cap {
            self.write_buf()?;
        }
        Ok(())
    }

    fn write_buf(&mut self) -> io::Result<()> {
        // Cleared even on error: what could not be written is lost anyway,
        // and the caller stops at the first error.
        let res = self.inner.write_all(&self.buf);
        self.buf.clear();
        res
    }

    /// Writes out every buffered line and flushes `W`.
    pub fn flush(&mut self) -> io::Result<()> {
        self.write_buf()?;
        self.inner.flush()
    }

    /// The writer lines go to.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }
}

/// A pcapng file being written: one interface block per interface that
/// saw a packet, added as the first one does.
pub struct PcapngOut {
    writer: PcapNgWriter<BufWriter<File>>,
    /// Interface ids by (netns cookie, ifindex), looked up per packet.
    ids: crate::correlate::table::Map<(u64, u32), u32>,
    snaplen: u32,
    clock: Clock,
}

impl PcapngOut {
    /// Creates (truncates) `path`.
    pub fn create(path: &Path, snaplen: u32) -> anyhow::Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let writer = PcapNgWriter::new(BufWriter::with_capacity(64 * 1024, file))
            .context("writing the pcapng header")?;
        Ok(Self {
            writer,
            ids: crate::correlate::table::Map::with_hasher(crate::correlate::table::Seeded(0)),
            snaplen,
            clock: Clock::now(),
        })
    }

    /// Appends one packet (and its interface block the first time).
    pub fn write(&mut self, p: &Packet, frame: &[u8], topo: &Topology) -> anyhow::Result<()> {
        let key = (p.hook.netns_cookie, p.hook.ifindex);
        let snaplen = self.snaplen;
        let id = self.interface(key, || {
            let (node, _) = iface_label(p, topo);
            let name = topo
                .get(&p.hook)
                .map_or_else(|| format!("if{}", p.hook.ifindex), |i| i.name.clone());
            let mut idb = InterfaceDescriptionBlock::new(DataLink::ETHERNET, snaplen);
            idb.options.push(InterfaceDescriptionOption::IfName(
                format!("{node}/{name}").into(),
            ));
            if let Some(i) = topo.get(&p.hook) {
                idb.options.push(InterfaceDescriptionOption::IfDescription(
                    i.role.to_string().into(),
                ));
            }
            idb
        })?;
        let epb = EnhancedPacketBlock {
            interface_id: id,
            timestamp: Duration::from_nanos(
                u64::try_from(self.clock.wall_ns(p.ts_ns)).unwrap_or(0),
            ),
            original_len: p.len,
            data: frame.into(),
            // epb_flags bits 0-1: 01 inbound, 10 outbound.
            options: vec![EnhancedPacketOption::Flags(match p.hook.dir {
                Direction::Ingress => 1,
                Direction::Egress => 2,
            })],
        };
        self.writer.write_pcapng_block(epb)?;
        Ok(())
    }

    /// The id of the interface with `key`, its block (from `describe`)
    /// written the first time.
    fn interface(
        &mut self,
        key: (u64, u32),
        describe: impl FnOnce() -> InterfaceDescriptionBlock<'static>,
    ) -> anyhow::Result<u32> {
        if let Some(id) = self.ids.get(&key) {
            return Ok(*id);
        }
        let mut idb = describe();
        // pcap-file writes timestamps in nanoseconds.
        idb.options.push(InterfaceDescriptionOption::IfTsResol(9));
        self.writer.write_pcapng_block(idb)?;
        let id = u32::try_from(self.ids.len()).unwrap_or(u32::MAX);
        self.ids.insert(key, id);
        Ok(id)
    }

    /// Appends a packet the kernel dropped, on an interface of its own for
    /// the node (`<netns>/kernel-drops`, raw IPv4: the record starts at the
    /// network header), with where and why as the packet's comment.
    pub fn write_drop(
        &mut self,
        d: &tracer_common::DropEvent,
        dropped: &crate::drops::Dropped,
    ) -> anyhow::Result<()> {
        // No interface has index 0: the node's drops get that key.
        let id = self.interface((d.netns_cookie, 0), || {
            let node = dropped.node.as_deref().unwrap_or("?");
            let mut idb =
                InterfaceDescriptionBlock::new(DataLink::IPV4, tracer_common::DROP_SNAP as u32);
            idb.options.push(InterfaceDescriptionOption::IfName(
                format!("{node}/kernel-drops").into(),
            ));
            idb.options.push(InterfaceDescriptionOption::IfDescription(
                "packets the kernel dropped, from their IPv4 header; why in each packet's comment"
                    .into(),
            ));
            idb
        })?;
        // The IPv4 total length (the kernel's, for a BIG TCP packet whose
        // header says 0); the record holds what the kernel copied of it
        // (its linear part, at most DROP_SNAP bytes).
        let total = match u32::from(u16::from_be_bytes([d.data[2], d.data[3]])) {
            0 => d.ip_len,
            t => t,
        };
        let cap = (total.min(d.copied) as usize).clamp(20, tracer_common::DROP_SNAP);
        let epb = EnhancedPacketBlock {
            interface_id: id,
            timestamp: Duration::from_nanos(
                u64::try_from(self.clock.wall_ns(d.ts_ns)).unwrap_or(0),
            ),
            original_len: total.max(cap as u32),
            data: d.data[..cap].into(),
            options: vec![EnhancedPacketOption::Comment(dropped.line().into())],
        };
        self.writer.write_pcapng_block(epb)?;
        Ok(())
    }

    /// Flushes the file.
    pub fn finish(self) -> io::Result<()> {
        self.writer.into_inner().flush()
    }
}

/// One hook of the session: the kernel's counters at it and the records
/// userspace received from it.
struct HookTotal<'a> {
    cookie: u64,
    iface: &'a crate::topology::Iface,
    dir: Direction,
    stats: tracer_common::HookStats,
    events: u64,
}

/// Every traced interface's two hooks, with their counters.
fn hook_totals(session: &Session) -> anyhow::Result<Vec<HookTotal<'_>>> {
    let hooks = session.hook_stats()?;
    let mut out = Vec::new();
    for (cookie, iface) in session.topology.iter() {
        for dir in [Direction::Ingress, Direction::Egress] {
            let key = tracer_common::HookKey {
                netns_cookie: cookie,
                ifindex: iface.ifindex,
                direction: dir as u32,
            };
            out.push(HookTotal {
                cookie,
                iface,
                dir,
                stats: hooks.get(&key).copied().unwrap_or_default(),
                events: session
                    .received
                    .get(&(cookie, iface.ifindex, dir as u32))
                    .copied()
                    .unwrap_or(0),
            });
        }
    }
    Ok(out)
}

/// The kernel's per-hook counters and what userspace received, one JSON
/// object per interface and direction: `trace --json`'s stats line.
pub fn hook_totals_json(session: &Session) -> anyhow::Result<Vec<serde_json::Value>> {
    Ok(hook_totals(session)?
        .into_iter()
        .map(|h| {
            serde_json::json!({
                "node": h.iface.node,
                "iface": h.iface.name,
                "dir": match h.dir {
                    Direction::Ingress => "ingress",
                    Direction::Egress => "egress",
                },
                "seen": h.stats.seen,
                "matched": h.stats.matched,
                "events": h.events,
                "lost": h.stats.lost,
            })
        })
        .collect())
}

/// Totals from the kernel counters and what userspace received: events
/// received, lost per hook, packets and bytes per interface and direction.
pub fn totals(session: &Session) -> anyhow::Result<String> {
    let from_flows = session.counts_flows();
    let flows = if from_flows {
        session.flow_stats()?
    } else {
        BTreeMap::new()
    };
    let received: u64 = session.received.values().sum();
    let mut s = String::new();
    let mut lost_total = 0;
    let mut lines = Vec::new();
    for h in hook_totals(session)? {
        // The IPv4 packets and bytes the filter kept: summed over the
        // hook's flows where the kernel counts flows, else from the hook's
        // own counters (capture's packets mode), which count the same.
        let (pkts, bytes) = if from_flows {
            flows
                .iter()
                .filter(|(k, _)| {
                    k.netns_cookie == h.cookie
                        && k.ifindex == h.iface.ifindex
                        && u32::from(k.direction) == h.dir as u32
                })
                .fold((0, 0), |(p, b), (_, v)| (p + v.packets, b + v.bytes))
        } else {
            (h.stats.matched.saturating_sub(h.stats.other), h.stats.bytes)
        };
        lost_total += h.stats.lost;
        lines.push((
            format!("{}/{}", h.iface.node, h.iface.name),
            h.dir,
            format!(
                "{} {:<3} {:>8} pkts {:>10}  seen {} matched {} events {} lost {}",
                "",
                dir_word(h.dir),
                pkts,
                human_bytes(bytes),
                h.stats.seen,
                h.stats.matched,
                h.events,
                h.stats.lost
            ),
        ));
    }
    lines.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let _ = writeln!(s, "{received} events received, {lost_total} lost");
    for (name, _, line) in lines {
        let _ = writeln!(s, "  {name:<28}{line}");
    }
    if session.undecodable > 0 {
        let _ = writeln!(s, "  {} records could not be decoded", session.undecodable);
    }
    Ok(s.trim_end().to_owned())
}

/// `24.1 KB`.
pub fn human_bytes(b: u64) -> String {
    crate::correlate::format::bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::{decode::HookId, topology::Iface};

    /// `write_json_line` as it was, building a `serde_json::Value`: the
    /// reference for the output format.
    fn old_json_line(p: &Packet, topo: &Topology, clock: &Clock) -> Vec<u8> {
        use serde_json::json;
        let iface = topo.get(&p.hook);
        let (role, eni_index) = match iface.map(|i| &i.role) {
            Some(Role::PodVeth { .. }) => ("pod", None),
            Some(Role::Eni { index, .. }) => ("eni", *index),
            Some(Role::PodEth0) => ("pod_eth0", None),
            _ => ("other", None),
        };
        let mut v = json!({
            "type": "packet",
            "time_ns": clock.wall_ns(p.ts_ns).to_string(),
            "ktime_ns": p.ts_ns,
            "node": iface.map(|i| i.node.as_str()),
            "iface": iface.map(|i| i.name.as_str()),
            "ifindex": p.hook.ifindex,
            "role": role,
            "eni_index": eni_index,
            "pod_ip": match iface.map(|i| &i.role) { Some(Role::PodVeth { pod_ip, .. }) => pod_ip.map(|ip| ip.to_string()), _ => None },
            "dir": match p.hook.dir { Direction::Ingress => "ingress", Direction::Egress => "egress" },
            "len": p.len,
            "mark": p.mark,
            "probe": p.probe,
            "summary": p.to_string(),
        });
        let obj = v.as_object_mut().expect("object");
        if let L3::Ipv4 {
            src,
            dst,
            id,
            ttl,
            proto,
            ..
        } = p.l3
        {
            obj.insert("src".into(), json!(src.to_string()));
            obj.insert("dst".into(), json!(dst.to_string()));
            obj.insert("ip_id".into(), json!(id));
            obj.insert("ttl".into(), json!(ttl));
            obj.insert("proto".into(), json!(proto));
        }
        if let L3::Ipv6 {
            src,
            dst,
            hop_limit,
            proto,
            ..
        } = p.l3
        {
            obj.insert("src".into(), json!(src.to_string()));
            obj.insert("dst".into(), json!(dst.to_string()));
            obj.insert("ttl".into(), json!(hop_limit));
            obj.insert("proto".into(), json!(proto));
        }
        match p.l4 {
            L4::Tcp {
                sport,
                dport,
                seq,
                ack,
                flags,
            } => {
                obj.insert("sport".into(), json!(sport));
                obj.insert("dport".into(), json!(dport));
                obj.insert(
                    "tcp".into(),
                    json!({"seq": seq, "ack": ack, "flags": crate::decode::tcp_flags(flags)}),
                );
            }
            L4::Udp { sport, dport, .. } => {
                obj.insert("sport".into(), json!(sport));
                obj.insert("dport".into(), json!(dport));
            }
            L4::Icmp { ty, code, id, seq } | L4::Icmp6 { ty, code, id, seq } => {
                obj.insert(
                    "icmp".into(),
                    json!({"type": ty, "code": code, "id": id, "seq": seq}),
                );
            }
            L4::IcmpError {
                ty,
                code,
                mtu,
                quote: q,
            } => {
                let mut icmp = json!({"type": ty, "code": code, "id": 0, "seq": mtu, "quote": {
                    "src": q.src.to_string(), "dst": q.dst.to_string(),
                    "proto": q.proto, "sport": q.sport, "dport": q.dport,
                }});
                if (ty, code) == (3, 4) {
                    icmp["mtu"] = json!(mtu);
                }
                obj.insert("icmp".into(), icmp);
            }
            L4::None => {}
        }
        let mut out = serde_json::to_vec(&v).expect("serializes");
        out.push(b'\n');
        out
    }

    /// `write_text_line` as it was: the reference for the text layout.
    fn old_text_line(p: &Packet, topo: &Topology, clock: &Clock) -> Vec<u8> {
        let (node, iface) = iface_label(p, topo);
        let probe = if p.probe { "  [probe]" } else { "" };
        let ns = clock.wall_ns(p.ts_ns);
        let secs = ns / 1_000_000_000;
        let day = secs % 86_400;
        let hms = format!(
            "{:02}:{:02}:{:02}.{:06}",
            day / 3600,
            day % 3600 / 60,
            day % 60,
            ns % 1_000_000_000 / 1000
        );
        format!(
            "{hms} {node} {iface:<22} {:<4} {p}{probe}\n",
            dir_word(p.hook.dir)
        )
        .into_bytes()
    }

    /// `iface_label` as it was.
    fn old_iface_label(p: &Packet, topo: &Topology) -> (String, String) {
        match topo.get(&p.hook) {
            Some(i) => {
                let tag = match &i.role {
                    Role::Eni { index: Some(n), .. } => format!("(eni{n})"),
                    Role::Eni { index: None, .. } => String::new(),
                    Role::PodVeth { pod: Some(pod), .. } => {
                        format!("({})", pod.rsplit('/').next().unwrap_or(pod))
                    }
                    Role::PodVeth {
                        pod_ip: Some(ip), ..
                    } => format!("({ip})"),
                    Role::PodVeth { .. } => "(pod)".into(),
                    Role::PodEth0 => "(pod eth0)".into(),
                    Role::Other => String::new(),
                };
                (i.node.clone(), format!("{}{tag}", i.name))
            }
            None => ("?".into(), format!("if{}", p.hook.ifindex)),
        }
    }

    /// Every role, odd names (quotes, backslashes, control and non-ASCII
    /// characters, a name longer than the column), and one unknown hook.
    fn odd_topology() -> (Topology, Vec<HookId>) {
        let roles = [
            Role::PodVeth {
                pod_ip: Some(Ipv4Addr::new(192, 168, 1, 21)),
                pod: Some("default/pod-1".into()),
            },
            Role::PodVeth {
                pod_ip: Some(Ipv4Addr::new(10, 0, 0, 255)),
                pod: Some("no-namespace-ü".into()),
            },
            Role::PodVeth {
                pod_ip: Some(Ipv4Addr::new(10, 1, 2, 3)),
                pod: None,
            },
            Role::PodVeth {
                pod_ip: None,
                pod: None,
            },
            Role::Eni {
                index: Some(0),
                addrs: vec![],
            },
            Role::Eni {
                index: Some(4_000_000_000),
                addrs: vec![],
            },
            Role::Eni {
                index: None,
                addrs: vec![],
            },
            Role::PodEth0,
            Role::Other,
        ];
        let names = [
            "eni3b1f0a9c2d4",
            "ens5",
            "v\"a\\b",
            "a-very-long-interface-name-indeed",
            "ünï€😀",
            "tab\there\u{1}",
            "",
        ];
        let nodes = ["node-a", "host", "n\"ö\\de\n", ""];
        let mut topo = Topology::default();
        let mut hooks = Vec::new();
        let mut ifindex = 1;
        for (r, role) in roles.iter().enumerate() {
            for (n, name) in names.iter().enumerate() {
                let cookie = 4096 + (r * names.len() + n) as u64 % 3;
                topo.insert(
                    cookie,
                    Iface {
                        node: nodes[(r + n) % nodes.len()].into(),
                        name: (*name).into(),
                        ifindex,
                        role: role.clone(),
                    },
                );
                hooks.push(HookId {
                    netns_cookie: cookie,
                    ifindex,
                    dir: Direction::Ingress,
                });
                ifindex += 1;
            }
        }
        hooks.push(HookId {
            netns_cookie: 1,
            ifindex: 4_294_967_295,
            dir: Direction::Egress,
        });
        (topo, hooks)
    }

    /// Every layer shape the decoder produces, with edge values.
    fn odd_packets(hooks: &[HookId]) -> Vec<Packet> {
        let l3s = [
            L3::Ipv4 {
                src: Ipv4Addr::new(192, 168, 1, 21),
                dst: Ipv4Addr::new(203, 0, 113, 10),
                id: 0,
                total_len: 92,
                ttl: 64,
                proto: 17,
                frag: 0,
            },
            L3::Ipv4 {
                src: Ipv4Addr::new(0, 0, 0, 0),
                dst: Ipv4Addr::new(255, 255, 255, 255),
                id: u16::MAX,
                total_len: u16::MAX,
                ttl: 255,
                proto: 255,
                frag: 0x3fff,
            },
            L3::Arp {
                op: 1,
                sender: Ipv4Addr::new(10, 0, 0, 1),
                target: Ipv4Addr::new(10, 0, 0, 2),
                sender_mac: [2, 0, 0, 0, 0, 1],
            },
            L3::Arp {
                op: 2,
                sender: Ipv4Addr::new(10, 0, 0, 2),
                target: Ipv4Addr::new(10, 0, 0, 1),
                sender_mac: [2, 0, 0, 0, 0, 0xab],
            },
            L3::Ipv6 {
                src: "fd00::1".parse().expect("an address"),
                dst: "2001:db8:ffff::abcd:1".parse().expect("an address"),
                hop_limit: 64,
                proto: 58,
            },
            L3::Ipv6 {
                src: std::net::Ipv6Addr::UNSPECIFIED,
                dst: std::net::Ipv6Addr::from(u128::MAX),
                hop_limit: 255,
                proto: 255,
            },
            L3::Other(0x88cc),
        ];
        let mut l4s = vec![
            L4::Udp {
                sport: 0,
                dport: u16::MAX,
                ulen: 8,
                room: 8,
            },
            L4::None,
        ];
        for flags in 0..=u8::MAX {
            l4s.push(L4::Tcp {
                sport: 5201,
                dport: 40_000,
                seq: u32::MAX,
                ack: u32::from(flags),
                flags,
            });
        }
        for ty in [0, 3, 8, 11, 5, 255] {
            l4s.push(L4::Icmp {
                ty,
                code: ty / 2,
                id: 7,
                seq: u16::MAX,
            });
        }
        for (ty, code, proto) in [
            (3, 3, 17),
            (3, 3, 6),
            (3, 4, 1),
            (3, 13, 6),
            (11, 0, 1),
            (12, 0, 6),
        ] {
            l4s.push(L4::IcmpError {
                ty,
                code,
                mtu: 1500,
                quote: crate::decode::Quote {
                    src: Ipv4Addr::new(10, 0, 0, 1),
                    dst: Ipv4Addr::new(10, 0, 0, 2),
                    proto,
                    sport: 40_000,
                    dport: 53,
                    seq: 0,
                },
            });
        }
        for ty in [128, 129, 1, 2, 3, 133, 134, 135, 136, 255] {
            l4s.push(L4::Icmp6 {
                ty,
                code: ty / 2,
                id: 7,
                seq: u16::MAX,
            });
        }
        let stamps = [0, 1, 999_999_999, 1_000_000_000_123, u64::MAX];
        let mut out = Vec::new();
        let mut i = 0usize;
        for l3 in l3s {
            for &l4 in &l4s {
                let mut hook = hooks[i % hooks.len()];
                if !i.is_multiple_of(2) {
                    hook.dir = Direction::Egress;
                }
                out.push(Packet {
                    ts_ns: stamps[i % stamps.len()],
                    hook,
                    reason: 1,
                    len: if i.is_multiple_of(3) { u32::MAX } else { 106 },
                    cap_len: 106,
                    mark: if i.is_multiple_of(5) { u32::MAX } else { 0 },
                    l3,
                    l4,
                    payload_hash: i as u64,
                    probe: i.is_multiple_of(7),
                    length: if i.is_multiple_of(4) {
                        u32::from(u16::MAX)
                    } else {
                        64
                    },
                });
                i += 1;
            }
        }
        // Every hook at least once.
        for (j, &hook) in hooks.iter().enumerate() {
            out.push(Packet {
                hook,
                probe: j.is_multiple_of(2),
                ..out[j % out.len()]
            });
        }
        out
    }

    /// Clocks whose wall time is near 0, today, and past u64 nanoseconds.
    fn clocks() -> [Clock; 3] {
        [
            Clock { offset_ns: 0 },
            Clock {
                offset_ns: 1_760_000_000_123_456_789,
            },
            Clock {
                offset_ns: i128::from(u64::MAX) * 3,
            },
        ]
    }

    #[test]
    fn json_lines_are_byte_for_byte_what_they_were() {
        let (topo, hooks) = odd_topology();
        let mut n = 0;
        for clock in clocks() {
            let mut buf = Vec::new();
            for p in odd_packets(&hooks) {
                buf.clear();
                write_json_line(&mut buf, &p, &topo, &clock).expect("to a Vec");
                let want = old_json_line(&p, &topo, &clock);
                assert_eq!(
                    String::from_utf8_lossy(&buf),
                    String::from_utf8_lossy(&want),
                    "{p:?}"
                );
                n += 1;
            }
        }
        assert!(n > 1000, "{n} lines compared");
    }

    #[test]
    fn text_lines_are_byte_for_byte_what_they_were() {
        let (topo, hooks) = odd_topology();
        for clock in clocks() {
            let mut buf = Vec::new();
            for p in odd_packets(&hooks) {
                buf.clear();
                write_text_line(&mut buf, &p, &topo, &clock).expect("to a Vec");
                let want = old_text_line(&p, &topo, &clock);
                assert_eq!(
                    String::from_utf8_lossy(&buf),
                    String::from_utf8_lossy(&want),
                    "{p:?}"
                );
            }
        }
    }

    #[test]
    fn iface_labels_are_what_they_were() {
        let (topo, hooks) = odd_topology();
        for p in odd_packets(&hooks) {
            assert_eq!(iface_label(&p, &topo), old_iface_label(&p, &topo));
        }
    }

    #[test]
    fn decimal_digits_are_to_string() {
        let e19 = 10_000_000_000_000_000_000u128;
        for v in [
            0,
            9,
            10,
            u128::from(u64::MAX),
            u128::from(u64::MAX) + 1,
            e19 - 1,
            e19,
            e19 + 1,
            e19 * 7 + 42,
            e19 * e19,
            e19 * e19 + 5,
            u128::MAX,
        ] {
            let mut buf = Vec::new();
            push_u128(&mut buf, v);
            assert_eq!(String::from_utf8(buf).expect("digits"), v.to_string());
        }
    }

    /// Every control character, quote and backslash, and non-ASCII, in a
    /// name: escaped as serde_json escapes them.
    #[test]
    fn escaping_is_serde_jsons() {
        let mut all: String = (0u8..0x80).map(char::from).collect();
        all.push_str("é€😀\u{7f}\u{2028}");
        let mut buf = Vec::new();
        push_str(&mut buf, Some(&all));
        assert_eq!(buf, serde_json::to_vec(&all).expect("serializes"));
    }

    /// `LineOut` writes the same bytes, whole lines, only when full or
    /// flushed.
    #[test]
    fn line_out_buffers_until_full_or_flushed() {
        let (topo, hooks) = odd_topology();
        let clock = clocks()[1];
        let pkts = odd_packets(&hooks);
        let mut out = LineOut::new(Vec::new(), 4096);
        let mut want = Vec::new();
        for p in &pkts[..3] {
            out.json(p, &topo, &clock).expect("to a Vec");
            want.extend(old_json_line(p, &topo, &clock));
        }
        assert!(out.get_ref().is_empty(), "nothing written before a flush");
        out.flush().expect("to a Vec");
        assert_eq!(out.get_ref(), &want);
        for p in &pkts {
            out.text(p, &topo, &clock).expect("to a Vec");
            want.extend(old_text_line(p, &topo, &clock));
            let written = out.get_ref();
            assert!(written.is_empty() || written.ends_with(b"\n"));
        }
        assert!(out.get_ref().len() > 3 * 4096, "written when full");
        out.flush().expect("to a Vec");
        assert_eq!(out.get_ref(), &want);
    }

    #[test]
    fn hms_is_what_it_was() {
        for clock in clocks() {
            for ts in [0, 1, 999_999, 86_399_999_999_999, u64::MAX] {
                let ns = clock.wall_ns(ts);
                let day = ns / 1_000_000_000 % 86_400;
                let want = format!(
                    "{:02}:{:02}:{:02}.{:06}",
                    day / 3600,
                    day % 3600 / 60,
                    day % 60,
                    ns % 1_000_000_000 / 1000
                );
                assert_eq!(clock.hms(ts), want);
            }
        }
    }

    /// A closed pipe surfaces as an `io::Error` of kind `BrokenPipe` from
    /// the JSON writer too (capture stops quietly on that kind).
    #[test]
    fn json_write_errors_keep_their_kind() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (topo, hooks) = odd_topology();
        let p = odd_packets(&hooks)[0];
        let e = write_json_line(&mut Closed, &p, &topo, &clocks()[0]).expect_err("closed");
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        let e = write_text_line(&mut Closed, &p, &topo, &clocks()[0]).expect_err("closed");
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn bytes_read_at_a_glance() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(24_100), "24.1 KB");
        assert_eq!(human_bytes(3_500_000), "3.5 MB");
        // Rounded, as the flow lines round: one count, one text.
        assert_eq!(human_bytes(162_582), "162.6 KB");
        assert_eq!(human_bytes(999_960), "1.0 MB");
        assert_eq!(human_bytes(2_340_000_000), "2.3 GB");
    }

    #[test]
    fn clock_formats_time_of_day() {
        let c = Clock { offset_ns: 0 };
        assert_eq!(c.hms(3_723_000_001_000), "01:02:03.000001");
    }
}

//! Printing packets: tcpdump-like text, JSON lines, pcapng; and the totals
//! printed on exit.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs::File,
    io::{self, BufWriter, Write},
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
use serde_json::json;
use tracer_common::Direction;

use crate::{
    decode::{L3, L4, Packet, tcp_flags},
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
        let ns = self.wall_ns(ts_ns);
        let secs = ns / 1_000_000_000;
        let day = secs % 86_400;
        format!(
            "{:02}:{:02}:{:02}.{:06}",
            day / 3600,
            day % 3600 / 60,
            day % 60,
            ns % 1_000_000_000 / 1000
        )
    }
}

/// `ens5(eni0)`, `eni3b1f0a9c2d4(pod-1)`, `va`.
pub fn iface_label(p: &Packet, topo: &Topology) -> (String, String) {
    match topo.get(&p.hook) {
        Some(i) => {
            let tag = match &i.role {
                Role::Eni { index: Some(n), .. } => format!("(eni{n})"),
                Role::Eni { index: None, .. } => "(eni)".into(),
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

fn dir_word(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "in",
        Direction::Egress => "out",
    }
}

/// One tcpdump-like line.
pub fn write_text_line(
    out: &mut impl Write,
    p: &Packet,
    topo: &Topology,
    clock: &Clock,
) -> io::Result<()> {
    let (node, iface) = iface_label(p, topo);
    let probe = if p.probe { "  [probe]" } else { "" };
    writeln!(
        out,
        "{} {node} {iface:<22} {:<4} {p}{probe}",
        clock.hms(p.ts_ns),
        dir_word(p.hook.dir)
    )
}

/// One JSON object per line.
pub fn write_json_line(
    out: &mut impl Write,
    p: &Packet,
    topo: &Topology,
    clock: &Clock,
) -> io::Result<()> {
    let iface = topo.get(&p.hook);
    let (role, eni_index) = match iface.map(|i| &i.role) {
        Some(Role::PodVeth { .. }) => ("pod", None),
        Some(Role::Eni { index, .. }) => ("eni", *index),
        Some(Role::PodEth0) => ("pod_eth0", None),
        _ => ("other", None),
    };
    let mut v = json!({
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
                json!({"seq": seq, "ack": ack, "flags": tcp_flags(flags)}),
            );
        }
        L4::Udp { sport, dport } => {
            obj.insert("sport".into(), json!(sport));
            obj.insert("dport".into(), json!(dport));
        }
        L4::Icmp { ty, code, id, seq } => {
            obj.insert(
                "icmp".into(),
                json!({"type": ty, "code": code, "id": id, "seq": seq}),
            );
        }
        L4::None => {}
    }
    serde_json::to_writer(&mut *out, &v)?;
    out.write_all(b"\n")
}

/// A pcapng file being written: one interface block per hooked interface.
pub struct PcapngOut {
    writer: PcapNgWriter<BufWriter<File>>,
    ids: BTreeMap<(u64, u32), u32>,
    snaplen: u32,
    clock: Clock,
}

impl PcapngOut {
    /// Creates (truncates) `path`.
    pub fn create(path: &Path, snaplen: u32) -> anyhow::Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let writer =
            PcapNgWriter::new(BufWriter::new(file)).context("writing the pcapng header")?;
        Ok(Self {
            writer,
            ids: BTreeMap::new(),
            snaplen,
            clock: Clock::now(),
        })
    }

    /// Appends one packet (and its interface block the first time).
    pub fn write(&mut self, p: &Packet, frame: &[u8], topo: &Topology) -> anyhow::Result<()> {
        let key = (p.hook.netns_cookie, p.hook.ifindex);
        let id = match self.ids.get(&key) {
            Some(id) => *id,
            None => {
                let (node, _) = iface_label(p, topo);
                let name = topo
                    .get(&p.hook)
                    .map_or_else(|| format!("if{}", p.hook.ifindex), |i| i.name.clone());
                let mut idb = InterfaceDescriptionBlock::new(DataLink::ETHERNET, self.snaplen);
                idb.options.push(InterfaceDescriptionOption::IfName(
                    format!("{node}/{name}").into(),
                ));
                if let Some(i) = topo.get(&p.hook) {
                    idb.options.push(InterfaceDescriptionOption::IfDescription(
                        i.role.to_string().into(),
                    ));
                }
                // pcap-file writes timestamps in nanoseconds.
                idb.options.push(InterfaceDescriptionOption::IfTsResol(9));
                self.writer.write_pcapng_block(idb)?;
                let id = u32::try_from(self.ids.len()).unwrap_or(u32::MAX);
                self.ids.insert(key, id);
                id
            }
        };
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

    /// Flushes the file.
    pub fn finish(self) -> io::Result<()> {
        self.writer.into_inner().flush()
    }
}

/// Totals from the kernel counters and what userspace received: events
/// received, lost per hook, packets and bytes per interface and direction.
pub fn totals(session: &Session) -> anyhow::Result<String> {
    let hooks = session.hook_stats()?;
    let flows = session.flow_stats()?;
    let received: u64 = session.received.values().sum();
    let mut s = String::new();
    let mut lost_total = 0;
    let mut lines = Vec::new();
    for (cookie, iface) in session.topology.iter() {
        for dir in [Direction::Ingress, Direction::Egress] {
            let hs = hooks
                .iter()
                .find(|(k, _)| {
                    k.netns_cookie == cookie
                        && k.ifindex == iface.ifindex
                        && k.direction == dir as u32
                })
                .map(|(_, v)| *v)
                .unwrap_or_default();
            let (pkts, bytes) = flows
                .iter()
                .filter(|(k, _)| {
                    k.netns_cookie == cookie
                        && k.ifindex == iface.ifindex
                        && u32::from(k.direction) == dir as u32
                })
                .fold((0, 0), |(p, b), (_, v)| (p + v.packets, b + v.bytes));
            lost_total += hs.lost;
            let got = session
                .received
                .get(&(cookie, iface.ifindex, dir as u32))
                .copied()
                .unwrap_or(0);
            lines.push((
                format!("{}/{}", iface.node, iface.name),
                dir,
                format!(
                    "{} {:<3} {:>8} pkts {:>10}  seen {} matched {} events {} lost {}",
                    "",
                    dir_word(dir),
                    pkts,
                    human_bytes(bytes),
                    hs.seen,
                    hs.matched,
                    got,
                    hs.lost
                ),
            ));
        }
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
    #[expect(clippy::cast_precision_loss, reason = "display only")]
    let f = b as f64;
    if b < 1000 {
        format!("{b} B")
    } else if b < 1_000_000 {
        format!("{:.1} KB", f / 1e3)
    } else if b < 1_000_000_000 {
        format!("{:.1} MB", f / 1e6)
    } else {
        format!("{:.2} GB", f / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_at_a_glance() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(24_100), "24.1 KB");
        assert_eq!(human_bytes(3_500_000), "3.5 MB");
    }

    #[test]
    fn clock_formats_time_of_day() {
        let c = Clock { offset_ns: 0 };
        assert_eq!(c.hms(3_723_000_001_000), "01:02:03.000001");
    }
}

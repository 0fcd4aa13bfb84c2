//! The flow table's view-model: one [`FlowRow`] per live flow, with the
//! text of its cells formatted once when the flow's identity changes (not
//! on every counter update, and never per frame), its counters, and the
//! keys it sorts by.

use std::{cmp::Ordering, fmt::Write as _, net::Ipv4Addr};

use crate::correlate::{Flow, FlowId, Labels, NatKind, Place, Shared, Tuple};

/// A column of the flow table; every one is also a sort key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    /// Client: pod name where known, else IP.
    Src,
    /// Server: pod name where known, else IP.
    Dst,
    /// Protocol and ports (`tcp 40000>80`, `icmp id 7`).
    Proto,
    /// Path labels (`direct`, `snat`, ...).
    Label,
    /// ENI through which the flow left its home node.
    Eni,
    /// What NAT changed (`SNAT 192.168.1.21>192.168.1.5`).
    Rewrite,
    /// Packets, both directions.
    Packets,
    /// Bytes, both directions.
    Bytes,
    /// Packets per second over the last second.
    Rate,
    /// Time since the flow was last active.
    Last,
}

impl Column {
    /// Every column, in display order (also the order `s` cycles through).
    pub const ALL: [Self; 10] = [
        Self::Src,
        Self::Dst,
        Self::Proto,
        Self::Label,
        Self::Eni,
        Self::Rewrite,
        Self::Packets,
        Self::Bytes,
        Self::Rate,
        Self::Last,
    ];

    /// Header text.
    pub fn title(self) -> &'static str {
        match self {
            Self::Src => "SOURCE",
            Self::Dst => "DESTINATION",
            Self::Proto => "PROTO/PORTS",
            Self::Label => "PATH",
            Self::Eni => "ENI",
            Self::Rewrite => "REWRITE",
            Self::Packets => "PKTS",
            Self::Bytes => "BYTES",
            Self::Rate => "RATE",
            Self::Last => "LAST",
        }
    }

    /// Lower-case name for the status line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Src => "source",
            Self::Dst => "destination",
            Self::Proto => "protocol/ports",
            Self::Label => "path label",
            Self::Eni => "ENI",
            Self::Rewrite => "rewrite",
            Self::Packets => "packets",
            Self::Bytes => "bytes",
            Self::Rate => "rate",
            Self::Last => "last seen",
        }
    }

    /// Numbers sort largest (or most recent) first, names A to Z.
    pub fn descending_by_default(self) -> bool {
        matches!(self, Self::Packets | Self::Bytes | Self::Rate | Self::Last)
    }

    /// True for right-aligned numeric columns.
    pub fn numeric(self) -> bool {
        matches!(self, Self::Packets | Self::Bytes | Self::Rate | Self::Last)
    }
}

/// What decides a row's text; compared on each update so that only a
/// changed flow is formatted again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Ident {
    tuple: Tuple,
    client: usize,
    server: usize,
    eni: usize,
    labels: Labels,
    snat: Option<(Ipv4Addr, u16, Ipv4Addr, u16)>,
    dnat: Option<(Ipv4Addr, u16, Ipv4Addr, u16)>,
}

fn ptr(p: Option<&Shared<Place>>) -> usize {
    p.map_or(0, |s| std::sync::Arc::as_ptr(&s.0) as usize)
}

impl Ident {
    fn of(f: &Flow) -> Self {
        let mut id = Self {
            tuple: f.tuple,
            client: ptr(f.client_pod.as_ref()),
            server: ptr(f.server_pod.as_ref()),
            eni: ptr(f.egress_eni.as_ref()),
            labels: f.labels,
            ..Self::default()
        };
        for r in f.rewrites() {
            // The translation as the request saw it, also when only the
            // reply (which undoes it) showed it.
            let source = (r.kind == NatKind::Snat) != r.reverse;
            let pick = |t: &Tuple| {
                if source {
                    (t.src, t.sport)
                } else {
                    (t.dst, t.dport)
                }
            };
            let (b, a) = (pick(&r.before), pick(&r.after));
            let change = if r.reverse {
                (a.0, a.1, b.0, b.1)
            } else {
                (b.0, b.1, a.0, a.1)
            };
            let slot = match r.kind {
                NatKind::Snat => &mut id.snat,
                NatKind::Dnat => &mut id.dnat,
            };
            slot.get_or_insert(change);
        }
        id
    }
}

/// One line of the flow table.
#[derive(Clone, Debug, Default)]
pub struct FlowRow {
    /// The engine's flow id.
    pub id: FlowId,
    /// Client cell.
    pub src: String,
    /// Server cell.
    pub dst: String,
    /// Protocol and ports cell.
    pub proto: String,
    /// Labels cell.
    pub label: String,
    /// The labels themselves (for colour).
    pub labels: Labels,
    /// Egress ENI cell (`-` when none).
    pub eni: String,
    /// Rewrite cell (empty when none).
    pub rewrite: String,
    /// Packets, both directions (kernel counters where merged).
    pub packets: u64,
    /// Bytes, both directions.
    pub bytes: u64,
    /// Packets per second, as of the last [`FlowRow::sweep`].
    pub rate: f64,
    /// Kernel time of the last activity, ns.
    pub last_ns: u64,
    /// Lower-case text the `/` filter searches.
    pub haystack: String,
    /// Packets at the last sweep.
    rate_base: u64,
    /// First 8 bytes of the sort text of the string columns, for fast
    /// comparisons (ties fall back to the text).
    prefix: [u64; 6],
    ident: Ident,
}

/// `pod-1` for `default/pod-1`, else `namespace/name`.
pub fn pod_display(name: &str) -> &str {
    name.strip_prefix("default/").unwrap_or(name)
}

fn endpoint(ip: Ipv4Addr, pod: Option<&Shared<Place>>) -> String {
    match pod.and_then(|p| p.pod()) {
        Some(name) => pod_display(name).to_owned(),
        None => ip.to_string(),
    }
}

/// `tcp 40000>80`, `udp 53`, `icmp id 7`, `proto 47`.
pub fn proto_cell(t: &Tuple) -> String {
    match t.proto {
        6 | 17 => format!("{} {}>{}", t.proto_name(), t.sport, t.dport),
        1 if t.sport != 0 || t.dport != 0 => format!("icmp id {}", t.sport.max(t.dport)),
        _ => t.proto_name().to_string(),
    }
}

/// `DNAT 10.100.0.10>192.168.32.21`, `DNAT :80>:8080`, or both parts when
/// both changed (`DNAT 10.100.0.10:53>192.168.32.21:5353`): a port that
/// a rewrite changed is never left out. ICMP has no ports: its echo id
/// shows only when nothing else changed (`SNAT id 7>1024`).
/// [`proto_cell`] of a flow with the server's port as the request reached
/// it, after any DNAT: the row names one endpoint, never the service's
/// address with the backend's port or the other way round.
pub fn flow_proto_cell(f: &Flow) -> String {
    let t = &f.tuple;
    let server = f.request.path.last().map_or(*t, |h| h.tuple);
    proto_cell(&Tuple {
        dport: if matches!(t.proto, 6 | 17) {
            server.dport
        } else {
            t.dport
        },
        ..*t
    })
}

fn nat_cell(out: &mut String, kind: &str, proto: u8, c: (Ipv4Addr, u16, Ipv4Addr, u16)) {
    if !out.is_empty() {
        out.push(' ');
    }
    let ports = matches!(proto, 6 | 17);
    if c.0 != c.2 && (!ports || c.1 == c.3) {
        let _ = write!(out, "{kind} {}>{}", c.0, c.2);
    } else if c.0 != c.2 {
        let _ = write!(out, "{kind} {}:{}>{}:{}", c.0, c.1, c.2, c.3);
    } else if ports {
        let _ = write!(out, "{kind} :{}>:{}", c.1, c.3);
    } else if kind == "SNAT" {
        // The source side of an ICMP echo is its id; the destination
        // side, its type and code, which no NAT changes.
        let _ = write!(out, "{kind} id {}>{}", c.1, c.3);
    }
}

fn prefix(s: &str) -> u64 {
    let mut b = [0u8; 8];
    for (d, s) in b.iter_mut().zip(s.bytes()) {
        *d = s.to_ascii_lowercase();
    }
    u64::from_be_bytes(b)
}

impl FlowRow {
    /// A row for a flow first seen.
    pub fn new(f: &Flow) -> Self {
        let mut r = Self {
            id: f.id,
            ..Self::default()
        };
        r.format(f, Ident::of(f));
        r.counters(f);
        r
    }

    /// Takes the flow's new state; formats the text again only if what it
    /// shows changed.
    pub fn update(&mut self, f: &Flow) {
        let ident = Ident::of(f);
        if ident != self.ident || self.id != f.id {
            self.id = f.id;
            self.format(f, ident);
        }
        self.counters(f);
    }

    fn counters(&mut self, f: &Flow) {
        let side = |s: &crate::correlate::FlowSide| {
            s.kernel
                .map_or((s.packets, s.bytes), |k| (k.packets, k.bytes))
        };
        let (rp, rb) = side(&f.request);
        let (pp, pb) = side(&f.reply);
        self.packets = rp + pp;
        self.bytes = rb + pb;
        self.last_ns = f.last_ns;
    }

    fn format(&mut self, f: &Flow, ident: Ident) {
        let t = &f.tuple;
        self.src = endpoint(t.src, f.client_pod.as_ref());
        let server_ip = f.request.path.last().map_or(t.dst, |h| h.tuple.dst);
        self.dst = endpoint(server_ip, f.server_pod.as_ref());
        self.proto = flow_proto_cell(f);
        self.labels = f.labels;
        self.label = f
            .labels
            .iter()
            .map(|l| l.name())
            .collect::<Vec<_>>()
            .join(",");
        self.eni = f
            .egress_eni
            .as_ref()
            .map_or_else(|| "-".to_owned(), |p| p.iface.clone());
        self.rewrite.clear();
        if let Some(c) = ident.snat {
            nat_cell(&mut self.rewrite, "SNAT", t.proto, c);
        }
        if let Some(c) = ident.dnat {
            nat_cell(&mut self.rewrite, "DNAT", t.proto, c);
        }
        self.haystack.clear();
        let _ = write!(
            self.haystack,
            "{} {} {} {} {} {} {} {} {}",
            self.src,
            self.dst,
            t.src,
            t.dst,
            server_ip,
            self.proto,
            self.label,
            self.eni,
            self.rewrite
        );
        for p in [&f.client_pod, &f.server_pod].into_iter().flatten() {
            if let Some(name) = p.pod() {
                self.haystack.push(' ');
                self.haystack.push_str(name);
            }
        }
        self.haystack.make_ascii_lowercase();
        self.prefix = [
            prefix(&self.src),
            prefix(&self.dst),
            prefix(&self.proto),
            prefix(&self.label),
            prefix(&self.eni),
            prefix(&self.rewrite),
        ];
        self.ident = ident;
    }

    /// Recomputes the rate from the packets counted since the previous
    /// sweep, `secs` ago.
    pub fn sweep(&mut self, secs: f64) {
        if secs > 0.0 {
            #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
            let d = self.packets.saturating_sub(self.rate_base) as f64;
            self.rate = d / secs;
        }
        self.rate_base = self.packets;
    }

    /// True if every word of `filter` (lower case) occurs in the row.
    pub fn matches(&self, words: &[String]) -> bool {
        words.iter().all(|w| self.haystack.contains(w.as_str()))
    }

    /// The text of a string column.
    pub fn text(&self, c: Column) -> &str {
        match c {
            Column::Src => &self.src,
            Column::Dst => &self.dst,
            Column::Proto => &self.proto,
            Column::Label => &self.label,
            Column::Eni => &self.eni,
            Column::Rewrite => &self.rewrite,
            _ => "",
        }
    }

    /// A number that orders rows by `c` ascending (ties need
    /// [`FlowRow::cmp_by`]). The last-seen key has one-second steps, so
    /// that busy flows do not swap places on every frame.
    pub fn key(&self, c: Column) -> u64 {
        match c {
            Column::Src => self.prefix[0],
            Column::Dst => self.prefix[1],
            Column::Proto => self.prefix[2],
            Column::Label => self.prefix[3],
            Column::Eni => self.prefix[4],
            Column::Rewrite => self.prefix[5],
            Column::Packets => self.packets,
            Column::Bytes => self.bytes,
            Column::Rate => self.rate.to_bits(),
            Column::Last => self.last_ns / 1_000_000_000,
        }
    }

    /// Full comparison by `c` ascending, after equal [`FlowRow::key`]s:
    /// the text for string columns, then the flow id (oldest first).
    pub fn cmp_by(&self, other: &Self, c: Column) -> Ordering {
        if c.numeric() {
            self.id.cmp(&other.id)
        } else {
            self.text(c).cmp(other.text(c)).then(self.id.cmp(&other.id))
        }
    }
}

/// `1.2k/s`, `12/s`, `0.5/s`, `-` for nothing.
pub fn rate_cell(r: f64) -> String {
    if r <= 0.0 {
        "-".to_owned()
    } else if r < 10.0 {
        format!("{r:.1}/s")
    } else if r < 10_000.0 {
        format!("{r:.0}/s")
    } else if r < 10_000_000.0 {
        format!("{:.1}k/s", r / 1e3)
    } else {
        format!("{:.1}M/s", r / 1e6)
    }
}

/// Time since `last_ns` at `now_ns`: `now`, `3s`, `5m`, `2h`. Counted in
/// whole seconds of the clock, as [`FlowRow::key`] sorts: two flows that
/// sort together show the same age, and an older one never shows less.
pub fn ago_cell(now_ns: u64, last_ns: u64) -> String {
    let s = (now_ns / 1_000_000_000).saturating_sub(last_ns / 1_000_000_000);
    match s {
        0 => "now".to_owned(),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::nat_cell;

    fn cell(proto: u8, c: (&str, u16, &str, u16)) -> String {
        let mut out = String::new();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let kind = if proto == 1 { "SNAT" } else { "DNAT" };
        nat_cell(&mut out, kind, proto, (ip(c.0), c.1, ip(c.2), c.3));
        out
    }

    #[test]
    fn a_rewrite_shows_every_part_it_changed() {
        assert_eq!(
            cell(6, ("10.100.0.10", 80, "10.0.1.5", 80)),
            "DNAT 10.100.0.10>10.0.1.5"
        );
        assert_eq!(
            cell(6, ("10.0.1.5", 80, "10.0.1.5", 8080)),
            "DNAT :80>:8080"
        );
        assert_eq!(
            cell(17, ("10.100.0.10", 53, "10.0.1.5", 5353)),
            "DNAT 10.100.0.10:53>10.0.1.5:5353"
        );
        // ICMP's "ports" are its echo id and type: the address is what
        // changed, unless only the id did.
        assert_eq!(
            cell(1, ("192.168.16.21", 7, "192.168.16.5", 9)),
            "SNAT 192.168.16.21>192.168.16.5"
        );
        assert_eq!(cell(1, ("10.0.1.5", 7, "10.0.1.5", 9)), "SNAT id 7>9");
    }

    /// Rows sort by the second their flow was last seen; the age they
    /// show must follow that order, whatever the fraction of now.
    #[test]
    fn the_age_shown_follows_the_sort() {
        use super::ago_cell;
        let s = 1_000_000_000;
        let now = 100 * s + 500_000_000;
        // Both last seen in second 88: the same age, though 0.8 s apart.
        assert_eq!(ago_cell(now, 88 * s + 900_000_000), "12s");
        assert_eq!(ago_cell(now, 88 * s + 100_000_000), "12s");
        assert_eq!(ago_cell(now, 89 * s), "11s");
        assert_eq!(ago_cell(now, 100 * s), "now");
    }
}

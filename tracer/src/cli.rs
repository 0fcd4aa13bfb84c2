//! Command-line flags shared by the subcommands (clap derive).

use std::{net::Ipv4Addr, path::PathBuf, str::FromStr, time::Duration};

use clap::{Args, ValueEnum};
use tracer_common::{Cidr4, Config, MAX_SNAPLEN, mode};

/// Where to trace: namespaces and interfaces.
#[derive(Args, Clone, Debug, Default)]
pub struct WhereArgs {
    /// Network namespace to trace, by `ip netns` name or path
    /// (/run/netns/X, /proc/PID/ns/net). Repeat for several. Default: the
    /// namespace podtrace runs in (the node's, in a node debug pod); with
    /// the built-in lab up, both lab nodes.
    #[arg(long = "netns", value_name = "NAME|PATH")]
    pub netns: Vec<String>,
    /// Trace exactly these interfaces instead of discovering ENIs and pod
    /// veths. Repeat for several; applies in every --netns.
    #[arg(long = "iface", value_name = "NAME")]
    pub iface: Vec<String>,
}

/// What to trace: the in-kernel filter, applied before any byte is copied.
/// It reads IPv4 headers: with any filter set, IPv6 and ARP packets are
/// not kept. Several `--filter-*` flags combine: a packet must pass each.
#[derive(Args, Clone, Debug, Default)]
pub struct FilterArgs {
    /// Keep packets whose source is in this IPv4 prefix (e.g. 192.168.1.0/24),
    /// and the ICMP errors about them. Any `--filter-*` keeps IPv4 packets
    /// only; every one keeps an ICMP error that quotes a packet it keeps.
    #[arg(long = "filter-src", value_name = "CIDR")]
    pub src: Option<Cidr>,
    /// Keep packets whose destination is in this prefix, and the ICMP
    /// errors about them (a router's host unreachable to the sender).
    #[arg(long = "filter-dst", value_name = "CIDR")]
    pub dst: Option<Cidr>,
    /// Keep packets whose source or destination is in this prefix, and the
    /// ICMP errors about them.
    #[arg(long = "filter-host", value_name = "CIDR")]
    pub host: Option<Cidr>,
    /// Keep only this protocol, and the ICMP errors (port unreachable,
    /// TTL exceeded, ...) about its packets.
    #[arg(long = "filter-proto", value_name = "PROTO", ignore_case = true)]
    pub proto: Option<Proto>,
    /// Keep TCP/UDP packets with this port on either side, and the ICMP
    /// errors about them.
    #[arg(long = "filter-port", value_name = "PORT", value_parser = parse_port)]
    pub port: Option<u16>,
}

/// How the kernel reports packets.
#[derive(Args, Clone, Debug)]
pub struct ReportArgs {
    /// `packets`: every matching packet becomes an event (tcpdump-like).
    /// `flows`: only the first packets of each flow at each hook (the
    /// first two on each CPU: a flow whose packets move between CPUs is
    /// reported again on each), podtrace's probes and 1-in-N samples;
    /// counters stay exact either way.
    #[arg(long, value_enum, default_value_t = Mode::Packets)]
    pub mode: Mode,
    /// Bytes of each packet to copy, from the Ethernet header (1-256),
    /// wherever the kernel keeps them. Without it, podtrace copies up to
    /// 128 bytes, but only the headers of an IPv4 TCP segment whose
    /// payload the kernel keeps apart from them: a local sender's, in page
    /// fragments (tens of ns per packet to copy from), and often a
    /// received one after GRO. Any --snaplen, even 128, turns that off.
    #[arg(long, value_name = "BYTES", value_parser = parse_snaplen)]
    pub snaplen: Option<u32>,
    /// In `flows` mode, also report 1 in N packets (0: no sampling).
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = parse_sample)]
    pub sample: u32,
    /// Ring buffer memory in KiB (a power of two, at least 4), shared out
    /// into one ring per CPU (each a power of two, at least a page). A
    /// burst on one CPU can fill that CPU's ring: raise this if `lost`
    /// counts climb. [default: 4096, or 256 per CPU where that is more]
    #[arg(long = "ring-size", value_name = "KIB", value_parser = parse_ring_kib)]
    pub ring_kib: Option<u32>,
    /// Read the rings at normal priority. By default the threads that read
    /// them run `SCHED_FIFO` at priority 1, the lowest real-time one: busy
    /// pods in other cgroups can otherwise keep the reader off the CPU
    /// while its rings overflow. It drains and sleeps again, a few % of a
    /// core (a quarter when printing JSON at 400k events/s).
    #[arg(long = "no-realtime")]
    pub no_realtime: bool,
}

impl ReportArgs {
    /// Refuses what the kernel would ignore: `--sample` outside flows
    /// mode (packets mode reports every packet already).
    pub fn check(&self) -> anyhow::Result<()> {
        if self.sample != 0 && self.mode == Mode::Packets {
            return Err(crate::ping::UsageError(format!(
                "--sample {} samples flows mode's reports; packets mode reports every packet \
                 already: use --mode flows, or leave --sample out",
                self.sample
            ))
            .into());
        }
        Ok(())
    }

    /// The most bytes of a packet a record holds.
    pub fn snaplen(&self) -> u32 {
        self.snaplen.unwrap_or(tracer_common::DEFAULT_SNAPLEN)
    }

    /// The ring memory asked for, or the default for this machine.
    pub fn ring_bytes(&self) -> u32 {
        self.ring_kib
            .map_or_else(crate::ring::default_bytes, |kib| kib * 1024)
    }
}

impl Default for ReportArgs {
    fn default() -> Self {
        Self {
            mode: Mode::Packets,
            snaplen: None,
            sample: 0,
            ring_kib: None,
            no_realtime: false,
        }
    }
}

/// Kernel report mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Every matching packet.
    Packets,
    /// First packets per flow and hook, probes, samples.
    Flows,
}

/// Protocols the filter knows by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    /// ICMP (1).
    Icmp,
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
}

impl Proto {
    /// IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Self::Icmp => 1,
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }
}

/// An IPv4 prefix from the command line: `10.0.0.0/8` or a bare address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// Network address (host bits cleared).
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub len: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (
                ip,
                len.parse::<u8>()
                    .map_err(|_| format!("bad prefix length in {s:?}"))?,
            ),
            None => (s, 32),
        };
        if len > 32 {
            return Err(format!("prefix length {len} is over 32 in {s:?}"));
        }
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
        let network = Ipv4Addr::from(u32::from(ip) & mask(len));
        if network != ip {
            // As tcpdump and `ip route` do: a typo here would quietly
            // filter another range than the one meant.
            return Err(format!(
                "{s:?} has host bits set: say {network}/{len} for the network, or {ip} for the host"
            ));
        }
        Ok(Self { addr: network, len })
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

impl From<Cidr> for Cidr4 {
    fn from(c: Cidr) -> Self {
        Self {
            addr: c.addr.octets(),
            mask: mask(c.len).to_be_bytes(),
        }
    }
}

fn parse_ring_kib(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if v < 4 || !v.is_power_of_two() || v > 1 << 20 {
        return Err("give KiB, a power of two from 4 to 1048576 (1 GiB), e.g. 4096".into());
    }
    Ok(v)
}

/// Parses `500ms`, `2s`, `1m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 2s, 1m)"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?} (use ms, s or m)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a duration"));
    }
    // A run, a timeout or an interval longer than that is a typo, and
    // one past Duration's range (or the clock's) would not be a time.
    if secs > MAX_DURATION_SECS {
        return Err(format!(
            "{s:?} is longer than a year ({}m)",
            MAX_DURATION_SECS / 60.0
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The longest duration [`parse_duration`] takes: 365 days.
const MAX_DURATION_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// A whole number of at least `lo` and at most `hi` (if any), called a
/// `noun` in the message if it is none: clap's own messages for a range
/// read "0 is not in 1..18446744073709551615" and "invalid digit found
/// in string".
fn number_in<T>(s: &str, lo: T, hi: Option<T>, noun: &str) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    // A number past the type's range is too big, not no number.
    let n: T = s.parse().map_err(|_| {
        let digits = s.strip_prefix('+').unwrap_or(s);
        match hi {
            _ if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) => {
                format!("{s:?} is not a {noun}")
            }
            Some(hi) => format!("give {lo} to {hi}"),
            None => format!("{s:?} is too big"),
        }
    })?;
    match hi {
        Some(hi) if n < lo || n > hi => Err(format!("give {lo} to {hi}")),
        None if n < lo => Err(format!("give at least {lo}")),
        _ => Ok(n),
    }
}

/// A port, 1-65535.
pub fn parse_port(s: &str) -> Result<u16, String> {
    number_in(s, 1, Some(u16::MAX), "port number (1 to 65535)")
}

/// A count of events, at least 1 (capture's `-c`).
pub fn parse_event_count(s: &str) -> Result<u64, String> {
    number_in(s, 1, None, "count")
}

/// A count of probes, 1-10000 (ping's `-c`).
pub fn parse_probe_count(s: &str) -> Result<u16, String> {
    number_in(s, 1, Some(10_000), "count")
}

/// Bytes to copy of each packet, 1-[`MAX_SNAPLEN`].
pub fn parse_snaplen(s: &str) -> Result<u32, String> {
    number_in(s, 1, Some(MAX_SNAPLEN as u32), "number of bytes")
}

/// 1 in N packets to sample, 0 for none (`--sample`).
pub fn parse_sample(s: &str) -> Result<u32, String> {
    number_in(s, 0, None, "number (0: no sampling)")
}

/// A count of at least 1 (`--max-flows`).
pub fn parse_positive_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("give at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a count")),
    }
}

/// [`parse_duration`], refusing 0: for a timeout or a run's length, where
/// 0 would end before anything could be seen.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!(
            "{s:?} is no time at all: give more than 0 (e.g. 500ms, 2s)"
        ));
    }
    Ok(d)
}

/// Written once every hook is attached, for scripts and tests.
#[derive(Args, Clone, Debug, Default)]
pub struct ReadyArgs {
    /// Write this file once every hook is attached (for scripts and tests).
    #[arg(long = "ready-file", value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
}

impl ReadyArgs {
    /// Removes the ready file an earlier run left (killed before it could
    /// remove it), before this run starts: a script then waits for this
    /// run's file, not an old one.
    pub fn clear_stale(&self) -> anyhow::Result<()> {
        let Some(path) = &self.ready_file else {
            return Ok(());
        };
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(anyhow::Error::new(e)
                .context(format!("removing the old ready file {}", path.display()))),
            _ => Ok(()),
        }
    }
}

/// Builds the kernel configuration from the flags.
pub fn kernel_config(filter: &FilterArgs, report: &ReportArgs) -> Config {
    let mut c = Config::DEFAULT;
    c.mode = match report.mode {
        Mode::Packets => mode::PACKETS,
        Mode::Flows => mode::FLOWS,
    };
    c.snaplen = report.snaplen();
    c.tcp_head_only = u32::from(report.snaplen.is_none());
    c.sample_every = report.sample;
    c.src = filter.src.map(Into::into).unwrap_or_default();
    c.dst = filter.dst.map(Into::into).unwrap_or_default();
    c.host = filter.host.map(Into::into).unwrap_or_default();
    c.proto = filter.proto.map_or(0, |p| u32::from(p.number()));
    c.port = filter.port.map_or(0, u32::from);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_and_masks() {
        let c: Cidr = "192.168.1.0/24".parse().unwrap();
        assert_eq!(c.addr, Ipv4Addr::new(192, 168, 1, 0));
        let e = "192.168.1.77/24".parse::<Cidr>().unwrap_err();
        assert!(e.contains("say 192.168.1.0/24"), "{e}");
        let k: Cidr4 = c.into();
        assert_eq!(k.mask, [255, 255, 255, 0]);
        assert!(k.contains([192, 168, 1, 3]));
        let host: Cidr = "10.0.0.1".parse().unwrap();
        assert_eq!(host.len, 32);
        assert!("10.0.0.1/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
        let all: Cidr4 = "0.0.0.0/0".parse::<Cidr>().unwrap().into();
        assert!(all.contains([1, 2, 3, 4]));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("3h").is_err());
        assert!(parse_duration("x").is_err());
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        // Numbers: messages a person reads.
        assert_eq!(parse_port("443"), Ok(443));
        assert_eq!(
            parse_port("http").unwrap_err(),
            "\"http\" is not a port number (1 to 65535)"
        );
        assert_eq!(parse_port("0").unwrap_err(), "give 1 to 65535");
        assert_eq!(parse_event_count("0").unwrap_err(), "give at least 1");
        assert_eq!(parse_probe_count("10001").unwrap_err(), "give 1 to 10000");
        assert_eq!(
            parse_snaplen("64k").unwrap_err(),
            "\"64k\" is not a number of bytes"
        );
        assert_eq!(parse_snaplen("256"), Ok(256));
        // Too big for the type: still the range, not "not a number".
        assert_eq!(parse_probe_count("70000").unwrap_err(), "give 1 to 10000");
        assert_eq!(parse_port("70000").unwrap_err(), "give 1 to 65535");
        assert_eq!(
            parse_event_count("99999999999999999999").unwrap_err(),
            "\"99999999999999999999\" is too big"
        );
        // Past Duration's range, and merely absurd: refused, not a panic.
        let err = parse_duration("999999999999999999999").unwrap_err();
        assert!(err.contains("longer than a year (525600m)"), "{err}");
        assert!(parse_duration("525601m").is_err());
        assert_eq!(
            parse_duration("525600m").unwrap(),
            Duration::from_secs(365 * 24 * 3600)
        );
        assert!(parse_positive_duration("0s").is_err());
        assert!(parse_positive_duration("0").is_err());
        assert_eq!(
            parse_positive_duration("1ms").unwrap(),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn a_filter_port_is_a_port() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            f: FilterArgs,
        }
        // 0 would mean "no filter" to the kernel: refused, not ignored.
        assert!(T::try_parse_from(["t", "--filter-port", "0"]).is_err());
        let t = T::try_parse_from(["t", "--filter-port", "80"]).unwrap();
        assert_eq!(t.f.port, Some(80));
    }

    #[test]
    fn counts_and_sampling_are_checked() {
        assert!(parse_positive_count("0").is_err());
        assert!(parse_positive_count("x").is_err());
        assert_eq!(parse_positive_count("5"), Ok(5));
        let sampled = |mode| ReportArgs {
            mode,
            sample: 5,
            ..ReportArgs::default()
        };
        assert!(sampled(Mode::Packets).check().is_err());
        assert!(sampled(Mode::Flows).check().is_ok());
        assert!(ReportArgs::default().check().is_ok());
    }

    #[test]
    fn ring_size_must_be_power_of_two() {
        assert!(parse_ring_kib("4").is_ok());
        assert!(parse_ring_kib("3").is_err());
        assert!(parse_ring_kib("2").is_err());
    }
}

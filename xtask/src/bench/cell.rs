//! One cell of the bench: one scenario's traffic under one tracer, and
//! what came of it, read from the tracer's own totals and the veth's
//! counters.

use std::{path::Path, time::Instant};

use anyhow::{Context as _, Result, bail};

use super::{
    load::{self, Scenario},
    pair::{Link, Pair},
    procfs::Programs,
    tracers::{Running, Tracer},
};

/// The measurements of one cell.
#[derive(Clone, Debug, Default)]
pub struct Cell {
    /// Throughput, in the scenario's unit.
    pub rate: f64,
    /// Seconds the traffic ran.
    pub secs: f64,
    /// Tracer CPU seconds while the traffic ran.
    pub cpu_secs: f64,
    /// Tracer peak RSS, KiB.
    pub peak_rss_kib: u64,
    /// podtrace's program run times.
    pub programs: Programs,
    /// podtrace: events received; tcpdump: packets captured.
    pub events: u64,
    /// podtrace: events lost (counted in the kernel); tcpdump: packets
    /// dropped by the kernel.
    pub lost: u64,
    /// podtrace: on every hook, `seen` equals the veth's own packet
    /// counter and the flow counters sum to `matched`.
    pub exact: Option<bool>,
    /// podtrace packets mode: on every hook, events + lost = matched.
    pub accounted: Option<bool>,
}

/// Runs `scenario` for `secs` s under `tracer`.
pub fn measure(
    scenario: Scenario,
    tracer: Tracer,
    podtrace: &Path,
    pair: &Pair,
    secs: u32,
    dir: &Path,
) -> Result<Cell> {
    let running = Running::start(tracer, podtrace, pair, dir)?;
    let before = pair.counters()?;
    let cpu = running.cpu_secs()?;
    let start = Instant::now();
    let rate = load::run(scenario, pair, secs, dir)?;
    let wall = start.elapsed().as_secs_f64();
    // The tracer's CPU over the traffic, not over the wait below.
    let cpu_secs = running.cpu_secs()? - cpu;
    // A connection's last segments (FIN, its ACK) may cross the veth
    // after the client has exited; read the veth once they have, so that
    // both ends count over the same packets.
    let after = pair.settled_counters()?;
    let report = running.finish()?;
    let links = [after[0].since(before[0]), after[1].since(before[1])];
    let mut cell = Cell {
        rate,
        secs: wall,
        cpu_secs,
        peak_rss_kib: report.peak_rss_kib,
        programs: report.programs,
        ..Cell::default()
    };
    match tracer {
        Tracer::None | Tracer::Empty => {}
        Tracer::Tcpdump => (cell.events, cell.lost) = tcpdump(&report.totals)?,
        Tracer::Flows | Tracer::Packets | Tracer::PacketsJson | Tracer::Filtered => {
            let t = Totals::parse(&report.totals)?;
            cell.events = t.received;
            cell.lost = t.lost;
            let mismatches = t.mismatches(pair, links);
            for m in &mismatches {
                println!("   not exact: {m}");
            }
            cell.exact = Some(mismatches.is_empty());
            cell.accounted = matches!(tracer, Tracer::Packets | Tracer::PacketsJson)
                .then(|| t.hooks.iter().all(|h| h.events + h.lost == h.matched));
        }
    }
    Ok(cell)
}

/// podtrace's `N events received, M lost` from what it printed when it
/// stopped.
pub fn received_and_lost(totals: &str) -> Result<(u64, u64)> {
    let t = Totals::parse(totals)?;
    Ok((t.received, t.lost))
}

/// One per-hook line of podtrace's totals.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Hook {
    /// `netns/iface`.
    name: String,
    /// `in` or `out`.
    dir: String,
    pkts: u64,
    seen: u64,
    matched: u64,
    events: u64,
    lost: u64,
}

/// What `podtrace capture` prints on stderr when it stops.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Totals {
    received: u64,
    lost: u64,
    hooks: Vec<Hook>,
}

impl Totals {
    /// Reads `N events received, M lost` and the lines after it, e.g.
    /// `  ns/ptb0   out  1248044 pkts   132.3 MB  seen 1248044 matched
    /// 1248044 events 8 lost 0`.
    fn parse(text: &str) -> Result<Self> {
        let mut t = Self::default();
        let head = text
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_suffix(" lost")?
                    .split_once(" events received, ")
            })
            .context("no `events received` line in podtrace's totals")?;
        t.received = head.0.parse()?;
        t.lost = head.1.parse()?;
        for line in text.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            let after = |key: &str| -> Option<u64> {
                w.iter()
                    .position(|x| *x == key)
                    .and_then(|i| w.get(i + 1)?.parse().ok())
            };
            if w.len() < 4 || w.get(3) != Some(&"pkts") {
                continue;
            }
            let (Some(seen), Some(matched), Some(events), Some(lost)) = (
                after("seen"),
                after("matched"),
                after("events"),
                after("lost"),
            ) else {
                bail!("unexpected line in podtrace's totals: {line}");
            };
            t.hooks.push(Hook {
                name: w[0].to_owned(),
                dir: w[1].to_owned(),
                pkts: w[2].parse()?,
                seen,
                matched,
                events,
                lost,
            });
        }
        if t.hooks.len() != 4 {
            bail!(
                "podtrace's totals show {} hooks, not 4:\n{text}",
                t.hooks.len()
            );
        }
        Ok(t)
    }

    /// The hooks where `seen` is not the veth's own packet counter, or the
    /// flow counters (in flows mode) or the IPv4 count (in packets mode,
    /// which counts no flows) do not add up to `matched`: each said with
    /// its figures.
    fn mismatches(&self, pair: &Pair, links: [Link; 2]) -> Vec<String> {
        self.hooks
            .iter()
            .filter_map(|h| {
                let link = if h.name.starts_with(&format!("{}/", pair.a)) {
                    links[0]
                } else {
                    links[1]
                };
                let want = if h.dir == "in" { link.rx } else { link.tx };
                (h.seen != want || h.pkts != h.matched).then(|| {
                    format!(
                        "{} {}: the veth counted {want}, the hook saw {}, matched {}, counted {} in flows or as IPv4",
                        h.name, h.dir, h.seen, h.matched, h.pkts
                    )
                })
            })
            .collect()
    }
}

/// Packets captured and dropped by the kernel, summed over tcpdump's
/// statistics (`N packets captured`, `N packets dropped by kernel`).
fn tcpdump(text: &str) -> Result<(u64, u64)> {
    let sum = |what: &str| -> Result<u64> {
        let mut n = 0;
        for l in text.lines().filter(|l| l.ends_with(what)) {
            let v = l.split_whitespace().next().unwrap_or_default();
            n += v
                .parse::<u64>()
                .with_context(|| format!("tcpdump said {l:?}"))?;
        }
        Ok(n)
    };
    let captured = sum("packets captured")?;
    let dropped = sum("packets dropped by kernel")?;
    if !text.contains("packets dropped by kernel") {
        bail!("no statistics in tcpdump's output:\n{text}");
    }
    Ok((captured, dropped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_podtrace_totals() {
        let text = "podtrace: tracing 2 interface(s) in a, b: a/ptb0 b/ptb0
26 events received, 3 lost
  a/ptb0                  in        15 pkts     1.3 KB  seen 15 matched 15 events 5 lost 0
  a/ptb0                  out  1248044 pkts   132.3 MB  seen 1248044 matched 1248044 events 8 lost 3
  b/ptb0                  in   1248044 pkts   132.3 MB  seen 1248044 matched 1248044 events 8 lost 0
  b/ptb0                  out       15 pkts        0 B  seen 15 matched 15 events 5 lost 0";
        let t = Totals::parse(text).unwrap();
        assert_eq!((t.received, t.lost), (26, 3));
        assert_eq!(t.hooks.len(), 4);
        let out = &t.hooks[1];
        assert_eq!((out.name.as_str(), out.dir.as_str()), ("a/ptb0", "out"));
        assert_eq!(
            (out.pkts, out.seen, out.events, out.lost),
            (1_248_044, 1_248_044, 8, 3)
        );
        assert!(Totals::parse("nothing").is_err());
    }

    #[test]
    fn reads_tcpdump_statistics() {
        let text = "tcpdump: listening on ptb0, link-type EN10MB (Ethernet)
1000 packets captured
1200 packets received by filter
200 packets dropped by kernel
tcpdump: listening on ptb0, link-type EN10MB (Ethernet)
10 packets captured
10 packets received by filter
0 packets dropped by kernel
";
        assert_eq!(tcpdump(text).unwrap(), (1010, 200));
        assert!(tcpdump("tcpdump: listening").is_err());
    }
}

//! The bench's table: per scenario and configuration, the median of the
//! runs with min and max, and ratios to the no-tracer runs next to each.

use std::fmt::Write as _;

use super::{
    cell::Cell,
    isolated::{Isolated, Probe},
    load::Scenario,
    micro::Micro,
    procfs::Programs,
    tracers::Tracer,
};

/// Every cell of a run of the bench.
#[derive(Debug, Default)]
pub struct Results {
    /// (scenario, configuration, place in the order of runs, measurements),
    /// with BPF run time statistics off.
    pub cells: Vec<(Scenario, Tracer, usize, Cell)>,
    /// Runs with the statistics on, as many per scenario and configuration
    /// as the throughput's: they cost time of their own, so they stay out
    /// of the throughput.
    pub bpf: Vec<(Scenario, Tracer, Programs)>,
    /// BPF ns per packet of the programs alone (`bpftool prog run`).
    pub isolated: Vec<Isolated>,
}

impl Results {
    /// The cells of one scenario and configuration, with their places.
    pub fn of(&self, s: Scenario, t: Tracer) -> impl Iterator<Item = (usize, &Cell)> {
        self.cells
            .iter()
            .filter(move |(cs, ct, _, _)| *cs == s && *ct == t)
            .map(|(_, _, r, c)| (*r, c))
    }

    /// Throughput over that of the no-tracer runs right before and after
    /// (their mean), run by run.
    pub fn ratios(&self, s: Scenario, t: Tracer) -> Vec<f64> {
        self.of(s, t)
            .filter_map(|(seq, c)| {
                let near: Vec<f64> = self
                    .of(s, Tracer::None)
                    .filter(|(n, _)| n.abs_diff(seq) == 1)
                    .map(|(_, b)| b.rate)
                    .collect();
                let base = near.iter().sum::<f64>() / near.len() as f64;
                (base > 0.0).then(|| c.rate / base)
            })
            .collect()
    }

    /// BPF ns per run, ingress and egress: the median of the statistics
    /// runs.
    pub fn bpf_ns(&self, s: Scenario, t: Tracer) -> [Option<f64>; 2] {
        self.bpf_spread(s, t).map(|v| v.map(|s| s.median))
    }

    /// BPF ns per run, ingress and egress, over the statistics runs.
    pub fn bpf_spread(&self, s: Scenario, t: Tracer) -> [Option<Spread>; 2] {
        let runs = || {
            self.bpf
                .iter()
                .filter(move |(bs, bt, _)| *bs == s && *bt == t)
                .map(|(_, _, p)| p)
        };
        [
            Spread::of(runs().filter_map(|p| p.ingress.per_run()).collect()),
            Spread::of(runs().filter_map(|p| p.egress.per_run()).collect()),
        ]
    }

    /// Lost over reported + lost, over every run of a configuration.
    pub fn missed(&self, s: Scenario, t: Tracer) -> f64 {
        let (lost, all) = self
            .of(s, t)
            .fold((0, 0), |(l, a), (_, c)| (l + c.lost, a + c.lost + c.events));
        if all == 0 {
            0.0
        } else {
            lost as f64 / all as f64
        }
    }
}

/// Median, min and max of some runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    /// The median (the mean of the middle two for an even count).
    pub median: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
}

impl Spread {
    /// `None` for no values.
    pub fn of(mut v: Vec<f64>) -> Option<Self> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            f64::midpoint(v[n / 2 - 1], v[n / 2])
        };
        Some(Self {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    fn show(self, digits: usize) -> String {
        format!(
            "{:.digits$} [{:.digits$}–{:.digits$}]",
            self.median, self.min, self.max
        )
    }
}

/// The markdown table of the network scenarios.
pub fn network(results: &Results) -> String {
    let mut s = String::from(
        "| scenario | configuration | throughput median [min–max] | vs no tracer | \
         events/s | lost / dropped | BPF ns per packet, in · out | CPU % of a core | \
         peak RSS | counters exact |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for scenario in Scenario::ALL {
        for tracer in Tracer::ALL {
            let cells: Vec<&Cell> = results.of(scenario, tracer).map(|(_, c)| c).collect();
            let Some(rate) = Spread::of(cells.iter().map(|c| c.rate).collect()) else {
                continue;
            };
            let ratio = match tracer {
                Tracer::None => "1".to_owned(),
                _ => Spread::of(results.ratios(scenario, tracer)).map_or("-".into(), |r| r.show(2)),
            };
            let per_sec = |c: &&Cell| c.events as f64 / c.secs.max(1e-9);
            let med = |f: &dyn Fn(&&Cell) -> f64| {
                Spread::of(cells.iter().map(f).collect()).map_or(0.0, |s| s.median)
            };
            let (events, lost, bpf, exact) = if tracer == Tracer::None {
                ("-".into(), "-".into(), "-".into(), "-".into())
            } else if tracer == Tracer::Empty {
                let [i, e] = results.bpf_spread(scenario, tracer);
                (
                    "-".into(),
                    "-".into(),
                    format!("{} · {}", ns(i), ns(e)),
                    "-".into(),
                )
            } else {
                let lost: u64 = cells.iter().map(|c| c.lost).sum();
                let lost = if lost == 0 {
                    "0".to_owned()
                } else {
                    format!(
                        "{} ({:.1} %)",
                        count(lost as f64),
                        results.missed(scenario, tracer) * 100.0
                    )
                };
                let bpf = if tracer.is_podtrace() {
                    let [i, e] = results.bpf_spread(scenario, tracer);
                    format!("{} · {}", ns(i), ns(e))
                } else {
                    "-".into()
                };
                let exact = if tracer.is_podtrace() {
                    let ok = cells.iter().filter(|c| c.exact == Some(true)).count();
                    format!("{ok}/{}", cells.len())
                } else {
                    "-".into()
                };
                (format!("{}/s", count(med(&per_sec))), lost, bpf, exact)
            };
            let (cpu, rss) = if tracer == Tracer::None {
                ("-".into(), "-".into())
            } else {
                let rss = cells.iter().map(|c| c.peak_rss_kib).max().unwrap_or(0);
                (
                    format!("{:.0}", med(&|c| c.cpu_secs / c.secs.max(1e-9) * 100.0)),
                    format!("{:.1} MiB", rss as f64 / 1024.0),
                )
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} {} | {ratio} | {events} | {lost} | {bpf} | {cpu} | {rss} | {exact} |",
                scenario.label(),
                tracer.label(),
                rate.show(if rate.median < 10.0 { 3 } else { 1 }),
                scenario.unit(),
            );
        }
    }
    s
}

/// BPF ns over the statistics runs: `218`, or `218 [210–231]` for several.
fn ns(v: Option<Spread>) -> String {
    match v {
        None => "-".into(),
        Some(s) if s.max - s.min < 0.5 => format!("{:.0}", s.median),
        Some(s) => s.show(0),
    }
}

/// The programs alone: one row per configuration, one column per packet.
pub fn isolated(rows: &[Isolated]) -> String {
    let mut s = String::from("| BPF ns per packet in isolation, in · out |");
    for p in Probe::ALL {
        let _ = write!(s, " {} |", p.label());
    }
    s.push_str("\n|---|");
    for _ in Probe::ALL {
        s.push_str("---|");
    }
    s.push('\n');
    for (t, stats) in [
        (Tracer::Flows, false),
        (Tracer::Packets, false),
        (Tracer::Filtered, false),
        (Tracer::Filtered, true),
        (Tracer::Empty, false),
    ] {
        let _ = write!(
            s,
            "| {}{} |",
            t.label(),
            if stats { ", bpf_stats on" } else { "" }
        );
        for p in Probe::ALL {
            match rows
                .iter()
                .find(|r| r.tracer == t && r.probe == p && r.stats == stats)
            {
                Some(r) => {
                    let _ = write!(s, " {} · {} |", r.ns.0, r.ns.1);
                }
                None => s.push_str(" - |"),
            }
        }
        s.push('\n');
    }
    s
}

/// The markdown table of the micro-benchmarks.
pub fn micro(m: &Micro) -> String {
    let mut s = String::from("| userspace, one core | events/s [95 % interval] |\n|---|---|\n");
    for (label, [lo, mid, hi]) in &m.rates {
        let _ = writeln!(
            s,
            "| {label} | {} [{}–{}] |",
            count(*mid),
            count(*lo),
            count(*hi)
        );
    }
    for (flows, bytes) in &m.heap {
        let _ = writeln!(
            s,
            "| engine heap at {} flows | {:.1} MiB |",
            count(*flows as f64),
            *bytes as f64 / 1024.0 / 1024.0
        );
    }
    if let Some(b) = m.bytes_per_flow() {
        let _ = writeln!(s, "| engine heap per added flow | {b:.0} B |");
    }
    s
}

/// `1.23 M`, `45.6 k`, `789`.
pub fn count(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.2} G", v / 1e9),
        v if v >= 1e6 => format!("{:.2} M", v / 1e6),
        v if v >= 1e3 => format!("{:.1} k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_runs() {
        let s = Spread::of(vec![3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let even = Spread::of(vec![1.0, 4.0]).unwrap();
        assert_eq!((even.median, even.min), (2.5, 1.0));
        assert!(Spread::of(Vec::new()).is_none());
    }

    #[test]
    fn ratios_use_the_neighbouring_baselines() {
        let cell = |rate| Cell {
            rate,
            ..Cell::default()
        };
        let s = Scenario::BulkTcp;
        let r = Results {
            cells: vec![
                (s, Tracer::None, 0, cell(10.0)),
                (s, Tracer::Flows, 1, cell(9.0)),
                (s, Tracer::Packets, 2, cell(3.0)),
                (s, Tracer::None, 3, cell(5.0)),
                (s, Tracer::Flows, 4, cell(3.0)),
                (s, Tracer::None, 5, cell(7.0)),
            ],
            bpf: Vec::new(),
            isolated: Vec::new(),
        };
        assert_eq!(r.ratios(s, Tracer::Flows), vec![0.9, 0.5]);
        assert_eq!(r.ratios(s, Tracer::Packets), vec![0.6]);
    }

    #[test]
    fn counts_read_well() {
        assert_eq!(count(1_234_567.0), "1.23 M");
        assert_eq!(count(45_600.0), "45.6 k");
        assert_eq!(count(12.0), "12");
    }
}

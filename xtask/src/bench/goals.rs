//! The goals of issue 8, judged on one run's numbers: each says what was
//! measured and whether it is met. Targets live here, in the benchmark,
//! never in timed tests.

use std::fmt::Write as _;

use super::{
    cell::Cell,
    load::Scenario,
    micro::Micro,
    report::{Results, Spread},
    tracers::Tracer,
};

/// Flows mode's throughput ratio per scenario.
const FLOWS_RATIO: [(Scenario, f64); 3] = [
    (Scenario::BulkTcp, 0.97),
    (Scenario::SmallUdp, 0.90),
    (Scenario::RequestResponse, 0.90),
];
/// Most BPF ns per packet per hook for a reported packet.
const REPORTED_NS: f64 = 150.0;
/// "Tens of ns" for a packet the filter rejects.
const FILTERED_NS: f64 = 100.0;
/// Userspace events per second per core at 100k flows.
const EVENTS_PER_SEC: f64 = 5e6;
/// Peak RSS of podtrace with a handful of flows, MiB.
const RSS_MIB: f64 = 64.0;
/// "About 200 bytes per flow": up to a quarter more passes.
const BYTES_PER_FLOW: f64 = 250.0;

/// One goal's verdict.
struct Verdict {
    goal: String,
    measured: String,
    met: bool,
}

/// The goals as a markdown list, `MET`/`MISSED` first.
pub fn judge(results: &Results, micro: &Micro) -> String {
    let mut v = Vec::new();
    throughput(results, &mut v);
    accounting(results, &mut v);
    bpf(results, &mut v);
    userspace(results, micro, &mut v);
    let mut s = String::new();
    for x in v {
        let verdict = if x.met { "MET" } else { "MISSED" };
        let _ = writeln!(s, "- **{verdict}** {}: {}", x.goal, x.measured);
    }
    s
}

/// The runs' throughput ratios to no tracer (all 0 without runs).
fn ratio_spread(results: &Results, s: Scenario, t: Tracer) -> Spread {
    Spread::of(results.ratios(s, t)).unwrap_or(Spread {
        median: 0.0,
        min: 0.0,
        max: 0.0,
    })
}

/// `median [min-max]`, so that a verdict shows how far apart the runs
/// were next to how far the median is from its goal.
fn spread_text(r: &Spread, digits: usize) -> String {
    format!(
        "{:.digits$} [runs {:.digits$}-{:.digits$}]",
        r.median, r.min, r.max
    )
}

/// Flows mode against no tracer; packets mode against tcpdump.
fn throughput(results: &Results, v: &mut Vec<Verdict>) {
    for (s, want) in FLOWS_RATIO {
        let got = ratio_spread(results, s, Tracer::Flows);
        v.push(Verdict {
            goal: format!(
                "flows mode, {}: throughput >= {want:.2} of no tracer",
                s.label()
            ),
            measured: format!("{} (median of the runs' ratios)", spread_text(&got, 4)),
            met: got.median >= want,
        });
    }
    for s in Scenario::ALL {
        let p = ratio_spread(results, s, Tracer::Packets);
        let t = ratio_spread(results, s, Tracer::Tcpdump);
        let pm = results.missed(s, Tracer::Packets);
        let tm = results.missed(s, Tracer::Tcpdump);
        v.push(Verdict {
            goal: format!("packets mode ahead of tcpdump, {}", s.label()),
            measured: format!(
                "throughput ratio {} vs {}; missed {:.2} % vs {:.2} %",
                spread_text(&p, 3),
                spread_text(&t, 3),
                pm * 100.0,
                tm * 100.0
            ),
            met: p.median >= t.median && pm <= tm,
        });
    }
}

fn cells(results: &Results, t: Tracer) -> Vec<&Cell> {
    results
        .cells
        .iter()
        .filter(|(_, ct, _, _)| *ct == t)
        .map(|(_, _, _, c)| c)
        .collect()
}

/// No loss in flows mode, counters exact, every loss counted.
fn accounting(results: &Results, v: &mut Vec<Verdict>) {
    let flows = cells(results, Tracer::Flows);
    let lost: u64 = flows.iter().map(|c| c.lost).sum();
    v.push(Verdict {
        goal: "flows mode: 0 lost events".into(),
        measured: format!("{lost} lost over {} runs", flows.len()),
        met: lost == 0,
    });
    let exact = flows.iter().filter(|c| c.exact == Some(true)).count();
    v.push(Verdict {
        goal: "flows mode: kernel counters exact (every hook = the veth's own counters)".into(),
        measured: format!("{exact} of {} runs", flows.len()),
        met: exact == flows.len(),
    });
    let mut packets = cells(results, Tracer::Packets);
    packets.extend(cells(results, Tracer::PacketsJson));
    let counted = packets
        .iter()
        .filter(|c| c.accounted == Some(true) && c.exact == Some(true))
        .count();
    v.push(Verdict {
        goal: "packets mode: every loss counted (events + lost = matched, every hook)".into(),
        measured: format!("{counted} of {} runs", packets.len()),
        met: counted == packets.len(),
    });
}

/// Run time per packet per hook, worst over scenarios and directions, net
/// of the floor: what the same measurement gives an empty program at the
/// same hook (see `super::empty`).
fn bpf(results: &Results, v: &mut Vec<Verdict>) {
    for (t, limit, what) in [
        (
            Tracer::Packets,
            REPORTED_NS,
            "a reported packet (packets mode)",
        ),
        (Tracer::Filtered, FILTERED_NS, "a packet the filter rejects"),
    ] {
        let in_traffic = Scenario::ALL.iter().flat_map(|&s| {
            let floor = results.bpf_ns(s, Tracer::Empty);
            results
                .bpf_ns(s, t)
                .into_iter()
                .zip(floor)
                .filter_map(|(raw, floor)| Some((raw?, floor)))
        });
        v.push(verdict(
            format!("BPF cost per packet per hook <= {limit:.0} ns for {what}, in traffic"),
            "worst over scenarios and directions of the runs' medians",
            worst(in_traffic),
            limit,
            1,
        ));
        let alone = results
            .isolated
            .iter()
            .filter(|r| r.tracer == t && !r.stats)
            .flat_map(|r| {
                let floor = results
                    .isolated
                    .iter()
                    .find(|e| e.tracer == Tracer::Empty && e.probe == r.probe && !e.stats)
                    .map(|e| e.ns);
                [
                    (r.ns.0 as f64, floor.map(|f| f.0 as f64)),
                    (r.ns.1 as f64, floor.map(|f| f.1 as f64)),
                ]
            });
        v.push(verdict(
            format!("BPF cost per packet per hook <= {limit:.0} ns for {what}, program alone"),
            "worst over UDP and TCP, bpftool prog run",
            worst(alone),
            limit,
            0,
        ));
    }
}

/// The verdict on the worst (measured, floor) cell: met if its cost above
/// the floor is within `limit`. Without a floor, the measured figure is
/// judged whole, and the text says so.
fn verdict(
    goal: String,
    over: &str,
    worst: Option<(f64, Option<f64>)>,
    limit: f64,
    digits: usize,
) -> Verdict {
    let Some((raw, floor)) = worst else {
        return Verdict {
            goal,
            measured: "not measured".into(),
            met: false,
        };
    };
    let (cost, measured) = match floor {
        Some(floor) => (
            raw - floor,
            format!(
                "{over}, above the empty program: {:.digits$} ns ({raw:.digits$} ns measured, \
                 {floor:.digits$} ns for the empty program)",
                raw - floor
            ),
        ),
        None => (
            raw,
            format!("{over}: {raw:.digits$} ns (no empty program measured to subtract)"),
        ),
    };
    Verdict {
        goal,
        measured,
        met: cost <= limit,
    }
}

/// The (measured, floor) cell whose cost above its floor (or whole, if it
/// has none) is largest; `None` if there is no cell.
fn worst(cells: impl Iterator<Item = (f64, Option<f64>)>) -> Option<(f64, Option<f64>)> {
    let cost = |(raw, floor): &(f64, Option<f64>)| raw - floor.unwrap_or(0.0);
    cells.max_by(|a, b| cost(a).total_cmp(&cost(b)))
}

/// Events per second per core, and memory.
fn userspace(results: &Results, micro: &Micro, v: &mut Vec<Verdict>) {
    let rate = micro.rate("decode_correlate/100k_flows").unwrap_or(0.0);
    v.push(Verdict {
        goal: "userspace: >= 5 M events/s per core through decode and correlation at 100k flows"
            .into(),
        measured: format!("{:.2} M events/s", rate / 1e6),
        met: rate >= EVENTS_PER_SEC,
    });
    let rss_kib = results
        .cells
        .iter()
        .filter(|(_, t, _, _)| t.is_podtrace())
        .map(|(_, _, _, c)| c.peak_rss_kib)
        .max()
        .unwrap_or(0);
    let rss = rss_kib as f64 / 1024.0;
    let per_flow = micro.bytes_per_flow().unwrap_or(f64::INFINITY);
    v.push(Verdict {
        goal: "memory: RSS < 64 MiB + about 200 B per tracked flow".into(),
        measured: format!(
            "podtrace capture peak RSS {rss:.1} MiB (few flows); \
             correlation engine {per_flow:.0} B per added flow"
        ),
        met: rss < RSS_MIB && per_flow <= BYTES_PER_FLOW,
    });
}

#[cfg(test)]
mod tests {
    use super::{Spread, spread_text, verdict, worst};

    #[test]
    fn worst_is_the_largest_cost_above_its_own_floor() {
        // The largest measurement is not the worst if its floor is higher.
        let cells = [
            (300.0, Some(100.0)),
            (250.0, Some(20.0)),
            (90.0, Some(60.0)),
        ];
        assert_eq!(worst(cells.into_iter()), Some((250.0, Some(20.0))));
        // A cell at or below its floor is still a cell.
        assert_eq!(
            worst([(39.0, Some(40.0))].into_iter()),
            Some((39.0, Some(40.0)))
        );
        assert_eq!(worst(std::iter::empty()), None);
    }

    #[test]
    fn a_ratio_comes_with_the_runs_spread() {
        let r = Spread {
            median: 0.969_12,
            min: 0.915,
            max: 0.984,
        };
        assert_eq!(spread_text(&r, 3), "0.969 [runs 0.915-0.984]");
        assert_eq!(spread_text(&r, 4), "0.9691 [runs 0.9150-0.9840]");
    }

    #[test]
    fn verdicts_count_the_cost_above_the_floor() {
        let v = |w| verdict(String::new(), "worst", w, 150.0, 0);
        assert!(v(Some((200.0, Some(60.0)))).met);
        assert!(!v(Some((200.0, None))).met);
        assert!(v(Some((39.0, Some(40.0)))).met);
        assert!(!v(None).met);
        assert!(v(Some((200.0, None))).measured.contains("no empty program"));
    }
}

//! `cargo xtask bench --against OTHER`: this tree's podtrace against another
//! build, side by side, on what a reported packet costs the kernel. Both
//! run `capture --mode packets -w /dev/null` on the bench's veth with
//! `bpf_stats` on, in rounds that take the two builds in turn (the order
//! alternating), so that the host's drift, which moves one build's figure
//! by tens of ns from minute to minute here, falls on both alike. What to
//! read is the median of the per-round differences: a change of a few ns
//! shows there long before it shows in two medians taken apart.

use std::path::Path;

use anyhow::{Result, bail};

use super::{cell, load::Scenario, pair::Pair, report::Spread, tracers::Tracer};

/// The scenarios compared: the two where a reported packet costs most
/// relative to the work around it, then bulk TCP.
const SCENARIOS: [Scenario; 3] = [
    Scenario::RequestResponse,
    Scenario::SmallUdp,
    Scenario::BulkTcp,
];

/// BPF ns per packet at ingress and egress of one build in one round.
type InOut = [f64; 2];

/// Measures `rounds` rounds of each scenario, both builds per round, and
/// prints every round and the paired differences (`other` minus `this`).
pub fn run(
    this: &Path,
    other: &Path,
    pair: &Pair,
    rounds: usize,
    secs: u32,
    dir: &Path,
) -> Result<()> {
    let mut lines = Vec::new();
    for scenario in SCENARIOS {
        let mut figures: [Vec<InOut>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            // This build first in even rounds, the other in odd ones.
            for which in [round % 2, 1 - round % 2] {
                let bin = if which == 0 { this } else { other };
                let c = cell::measure(scenario, Tracer::Packets, bin, pair, secs, dir)?;
                let (Some(i), Some(o)) =
                    (c.programs.ingress.per_run(), c.programs.egress.per_run())
                else {
                    bail!("{}: no BPF run time (is bpf_stats on?)", bin.display());
                };
                println!(
                    "   {}, round {}/{rounds}, {}: {i:.1} · {o:.1} ns, {} events, {} lost",
                    scenario.label(),
                    round + 1,
                    if which == 0 { "this tree" } else { "other" },
                    c.events,
                    c.lost
                );
                figures[which].push([i, o]);
            }
        }
        lines.push(summary(scenario, &figures[0], &figures[1]));
    }
    println!(
        "\n== {} against this tree, {rounds} rounds of {secs} s, BPF ns per packet (packets mode)\n",
        other.display()
    );
    println!(
        "| scenario | this tree, in · out | other, in · out | other − this, in · out | pair (in + out) |\n|---|---|---|---|---|"
    );
    for l in lines {
        println!("{l}");
    }
    println!(
        "\nMedians, and per-round differences as median [min–max]: a negative \
         difference means the other build is cheaper."
    );
    Ok(())
}

/// One table row.
fn summary(scenario: Scenario, this: &[InOut], other: &[InOut]) -> String {
    let med = |v: &[InOut], k: usize| Spread::of(v.iter().map(|x| x[k]).collect());
    let diff = |k: Option<usize>| {
        Spread::of(
            this.iter()
                .zip(other)
                .map(|(t, o)| match k {
                    Some(k) => o[k] - t[k],
                    None => o[0] + o[1] - t[0] - t[1],
                })
                .collect(),
        )
    };
    let m = |s: Option<Spread>| s.map_or_else(|| "-".into(), |s| format!("{:.1}", s.median));
    let d = |s: Option<Spread>| {
        s.map_or_else(
            || "-".into(),
            |s| format!("{:+.1} [{:+.0}–{:+.0}]", s.median, s.min, s.max),
        )
    };
    format!(
        "| {} | {} · {} | {} · {} | {} · {} | {} |",
        scenario.label(),
        m(med(this, 0)),
        m(med(this, 1)),
        m(med(other, 0)),
        m(med(other, 1)),
        d(diff(Some(0))),
        d(diff(Some(1))),
        d(diff(None)),
    )
}

//! `cargo xtask bench`: what podtrace costs, measured. Builds podtrace
//! (release), runs the userspace micro-benchmarks, then sends traffic
//! between two scratch namespaces in three scenarios, each under every
//! configuration (no tracer, podtrace's modes, tcpdump), interleaved round
//! by round so that the machine's drift falls on all of them alike; prints
//! the tables and the goals of issue 8, met or missed.
//!
//! Traffic stays inside the two namespaces it creates (one veth pair, no
//! route out); they, the servers and every tracer are removed on every way
//! out. Every run is bounded in time.
#![expect(
    clippy::cast_precision_loss,
    reason = "counters and times become f64 only to be shown with a few digits"
)]

mod cell;
mod goals;
mod load;
mod micro;
mod pair;
mod procfs;
mod report;
mod tracers;

use std::{fs, process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};

use self::{
    load::{Scenario, Servers},
    pair::{BpfStats, Pair},
    report::Results,
    tracers::Tracer,
};
use crate::{binary, cmd, scratch::TempDir, setup};

/// Nice value of the network runs.
const NICE: libc::c_int = -10;

/// `cargo xtask bench` flags.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Fewer and shorter runs (2 x 1 s per cell) and criterion's quick
    /// mode: a check that everything works, not numbers to quote.
    #[arg(long)]
    quick: bool,
    /// Runs per cell (default 5, or 2 with --quick).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=50))]
    runs: Option<u32>,
    /// Seconds of traffic per run (default 3, or 1 with --quick).
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u32).range(1..=60))]
    seconds: Option<u32>,
}

/// Sets up, builds, measures, prints.
pub fn run(opts: &Options) -> Result<()> {
    if !cmd::is_root() {
        bail!("bench needs root: it creates namespaces, loads BPF programs and runs tcpdump");
    }
    let started = Instant::now();
    let runs = opts.runs.unwrap_or(if opts.quick { 2 } else { 5 }) as usize;
    let secs = opts.seconds.unwrap_or(if opts.quick { 1 } else { 3 });
    setup::run(&setup::Options::default())?;
    let podtrace = binary::build(true)?;
    let machine = machine();
    // Dropped last (locals drop in reverse): everything below writes here.
    let dir = TempDir::new(&format!("ptbench-{}", std::process::id()))?;

    println!("\n== userspace micro-benchmarks");
    let micro = micro::run(opts.quick, &dir.path().join("criterion"))?;

    println!("\n== network: {runs} runs x {secs} s per cell, configurations interleaved");
    prioritize()?;
    let load_before = load_average();
    let results = {
        let pair = Pair::create()?;
        let _servers = Servers::start(&pair, dir.path())?;
        let mut results = Results::default();
        for scenario in Scenario::ALL {
            for round in 0..runs {
                // A different order every round: no configuration always
                // follows the same one.
                for i in 0..Tracer::ALL.len() {
                    let tracer = Tracer::ALL[(i + round) % Tracer::ALL.len()];
                    let c = cell(scenario, tracer, &podtrace, &pair, secs, dir.path(), round)?;
                    results.cells.push((scenario, tracer, round, c));
                }
            }
            // BPF run time, in runs of its own: the statistics cost time.
            let _stats = BpfStats::enable()?;
            for tracer in Tracer::ALL.into_iter().filter(|t| t.is_podtrace()) {
                let c = cell(
                    scenario,
                    tracer,
                    &podtrace,
                    &pair,
                    secs,
                    dir.path(),
                    usize::MAX,
                )?;
                results.bpf.push((scenario, tracer, c.programs));
            }
        }
        results
    };
    let load_after = load_average();

    println!("\n== results\n");
    println!("{machine}; load average {load_before} before the network runs, {load_after} after.");
    println!(
        "`cargo xtask bench{}`: {runs} runs x {secs} s per cell, configurations interleaved.\n",
        if opts.quick { " --quick" } else { "" }
    );
    println!("{}", report::network(&results));
    println!("{}", report::micro(&micro));
    println!("Goals of issue 8:\n\n{}", goals::judge(&results, &micro));
    println!("bench took {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Raises the priority of xtask's main thread, which everything the
/// network runs start (traffic, tracers, servers) inherits: on a machine
/// shared with builds, they then take the CPU first, as on a node where
/// the traffic is the work. Tracers get the same priority as the traffic.
fn prioritize() -> Result<()> {
    println!("$ renice -n {NICE} (xtask, and all it starts from now on)");
    // SAFETY: setpriority has no memory preconditions; on Linux, who = 0
    // with PRIO_PROCESS is the calling thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setpriority");
    }
    Ok(())
}

/// Measures one cell, saying which.
fn cell(
    scenario: Scenario,
    tracer: Tracer,
    podtrace: &std::path::Path,
    pair: &Pair,
    secs: u32,
    dir: &std::path::Path,
    round: usize,
) -> Result<cell::Cell> {
    let run = if round == usize::MAX {
        "BPF statistics run".into()
    } else {
        format!("run {}", round + 1)
    };
    println!("\n-- {}, {}, {run}", scenario.label(), tracer.label());
    let c = cell::measure(scenario, tracer, podtrace, pair, secs, dir)?;
    println!(
        "   {:.3} {}, {} events, {} lost",
        c.rate,
        scenario.unit(),
        c.events,
        c.lost
    );
    Ok(c)
}

/// `2 vCPU (model), kernel 6.x`.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, m)| m.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = cmd::stdout_of(Command::new("uname").arg("-r")).unwrap_or_default();
    format!("{cpus} vCPU ({model}), kernel {}", kernel.trim())
}

/// The 1-minute load average: how busy the shared machine was.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

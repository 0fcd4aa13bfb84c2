//! `cargo xtask bench`: what podtrace costs, measured. Builds podtrace
//! (release), runs the userspace micro-benchmarks, then sends traffic
//! between two scratch namespaces in three scenarios, each under every
//! configuration (no tracer, podtrace's modes, tcpdump), each run next to a
//! no-tracer run so that the machine's drift cancels in their ratio; prints
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
mod compare;
pub mod empty;
mod goals;
mod idle;
mod isolated;
mod load;
mod micro;
mod pair;
mod procfs;
mod report;
mod tracers;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

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
    /// One short run per cell (1 s) and criterion's quick mode: a check
    /// that everything works, not numbers to quote.
    #[arg(long)]
    quick: bool,
    /// Runs per cell (default 5, or 1 with --quick).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=50))]
    runs: Option<u32>,
    /// Seconds of traffic per run (default 3, or 1 with --quick).
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u32).range(1..=60))]
    seconds: Option<u32>,
    /// Only compare this tree's build with another podtrace binary (say,
    /// one built from another commit and copied aside): BPF ns per reported
    /// packet in packets mode, both builds in every round, and the median
    /// of the per-round differences. --runs rounds (default 8).
    #[arg(long, value_name = "PODTRACE")]
    against: Option<PathBuf>,
}

/// Sets up, builds, measures, prints.
pub fn run(opts: &Options) -> Result<()> {
    if !cmd::is_root() {
        bail!("bench needs root: it creates namespaces, loads BPF programs and runs tcpdump");
    }
    let started = Instant::now();
    let runs = opts.runs.unwrap_or(match (opts.quick, &opts.against) {
        (true, _) => 1,
        (false, Some(_)) => 8,
        (false, None) => 5,
    }) as usize;
    let secs = opts.seconds.unwrap_or(if opts.quick { 1 } else { 3 });
    if let Some(other) = &opts.against
        && !other.is_file()
    {
        bail!("--against {}: no such podtrace binary", other.display());
    }
    setup::run(&setup::Options::default())?;
    let podtrace = binary::build(true)?;
    let machine = machine();
    // Dropped last (locals drop in reverse): everything below writes here.
    let dir = TempDir::new(&format!("ptbench-{}", std::process::id()))?;
    if let Some(other) = &opts.against {
        // A copy of this build: a build started meanwhile cannot swap it.
        let this = dir.path().join("podtrace-this");
        fs::copy(&podtrace, &this).context("copying this tree's podtrace")?;
        println!("\n== {machine}: this tree against {}", other.display());
        prioritize()?;
        let _poll = idle::HaltPoll::default_polling();
        let pair = Pair::create()?;
        let _servers = Servers::start(&pair, dir.path())?;
        let _stats = BpfStats::enable()?;
        // A bare name would be looked up in PATH.
        let other =
            fs::canonicalize(other).with_context(|| format!("--against {}", other.display()))?;
        compare::run(&this, &other, &pair, runs, secs, dir.path())?;
        println!("bench took {:.0} s", started.elapsed().as_secs_f64());
        return Ok(());
    }

    println!("\n== userspace micro-benchmarks");
    let micro = micro::run(opts.quick, &dir.path().join("criterion"))?;

    println!("\n== network: {runs} runs x {secs} s per cell, configurations interleaved");
    prioritize()?;
    let poll = idle::HaltPoll::default_polling();
    let load_before = load_average();
    let results = {
        let pair = Pair::create()?;
        let _servers = Servers::start(&pair, dir.path())?;
        let bench = Bench {
            podtrace: &podtrace,
            pair: &pair,
            secs,
            dir: dir.path(),
        };
        let mut results = network(&bench, runs)?;
        println!("\n== BPF programs in isolation (bpftool prog run)");
        results.isolated = isolated::run(&podtrace, &pair, dir.path())?;
        results
    };
    let load_after = load_average();
    let polled = poll.as_ref().map(idle::HaltPoll::was);
    drop(poll);

    println!("\n== results\n");
    println!("{machine}; load average {load_before} before the network runs, {load_after} after.");
    if let Some(was) = polled {
        println!(
            "Idle CPUs polled up to {} µs before halting during the network runs (haltpoll's default; this machine had guest_halt_poll_ns={was}).",
            idle::DEFAULT_NS / 1000
        );
    }
    if let Some((client, server)) = load::pinned() {
        println!(
            "iperf3's client ran on CPU {client} and its server on CPU {server}; the tracers where the scheduler put them."
        );
    }
    println!(
        "`cargo xtask bench{}`: {runs} run(s) of {secs} s per configuration, each next to a no-tracer run.\n",
        if opts.quick { " --quick" } else { "" }
    );
    println!("{}", report::network(&results));
    println!("{}", report::isolated(&results.isolated));
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

/// What every cell needs.
struct Bench<'a> {
    podtrace: &'a Path,
    pair: &'a Pair,
    secs: u32,
    dir: &'a Path,
}

impl Bench<'_> {
    /// Measures one cell, saying which.
    fn cell(&self, scenario: Scenario, tracer: Tracer, run: &str) -> Result<cell::Cell> {
        println!("\n-- {}, {}, {run}", scenario.label(), tracer.label());
        let c = cell::measure(
            scenario,
            tracer,
            self.podtrace,
            self.pair,
            self.secs,
            self.dir,
        )?;
        println!(
            "   {:.3} {}, {} events, {} lost",
            c.rate,
            scenario.unit(),
            c.events,
            c.lost
        );
        Ok(c)
    }
}

/// Every scenario, `runs` rounds each, then its BPF statistics runs.
fn network(bench: &Bench, runs: usize) -> Result<Results> {
    let mut results = Results::default();
    for scenario in Scenario::ALL {
        for round in 0..runs {
            for tracer in round_order(round) {
                let c = bench.cell(scenario, tracer, &format!("run {}/{runs}", round + 1))?;
                let seq = results.cells.len();
                results.cells.push((scenario, tracer, seq, c));
            }
        }
        // BPF run time, in runs of its own: the statistics cost time. As
        // many as the throughput's, the order rotating: one run's figure
        // moves by tens of ns with the host.
        let _stats = BpfStats::enable()?;
        let with_programs: Vec<Tracer> = Tracer::ALL
            .into_iter()
            .filter(|t| t.has_programs())
            .collect();
        for round in 0..runs {
            let n = with_programs.len();
            for i in 0..n {
                let tracer = with_programs[(i + round) % n];
                let c = bench.cell(
                    scenario,
                    tracer,
                    &format!("BPF statistics run {}/{runs}", round + 1),
                )?;
                results.bpf.push((scenario, tracer, c.programs));
            }
        }
    }
    Ok(results)
}

/// One round: every configuration runs right next to a no-tracer run, its
/// baseline (`N a b N c d N`), so that drift between the two is seconds
/// old at most; the configurations rotate every round, so none always
/// follows or precedes the baseline.
fn round_order(round: usize) -> Vec<Tracer> {
    let others: Vec<Tracer> = Tracer::ALL
        .into_iter()
        .filter(|t| *t != Tracer::None)
        .collect();
    let n = others.len();
    let mut order = vec![Tracer::None];
    for pair in (0..n)
        .map(|i| others[(i + round) % n])
        .collect::<Vec<_>>()
        .chunks(2)
    {
        order.extend(pair);
        order.push(Tracer::None);
    }
    order
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_configuration_runs_next_to_a_baseline() {
        use Tracer::{Empty, Filtered, Flows, None, Packets, PacketsJson, Tcpdump};
        assert_eq!(
            round_order(0),
            [
                None,
                Flows,
                Packets,
                None,
                PacketsJson,
                Filtered,
                None,
                Tcpdump,
                Empty,
                None
            ]
        );
        assert_eq!(
            round_order(1),
            [
                None,
                Packets,
                PacketsJson,
                None,
                Filtered,
                Tcpdump,
                None,
                Empty,
                Flows,
                None
            ]
        );
    }
}

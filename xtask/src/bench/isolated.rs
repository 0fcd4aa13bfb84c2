//! BPF cost per packet in isolation: `bpftool prog run` (`BPF_PROG_TEST_RUN`)
//! of the programs a live `podtrace capture` holds, on one built packet
//! repeated many times. The figure is the program alone: no statistics
//! overhead, no interrupt landing in a run, no other CPU contending for the
//! ring buffer, which all weigh on the in-traffic numbers.

use std::{fs, path::Path, process::Command, thread, time::Duration};

use anyhow::{Context as _, Result, bail};
use etherparse::{PacketBuilder, TcpOptionElement};

use super::{
    cell, empty,
    pair::{BpfStats, Pair},
    procfs,
    tracers::{Running, Tracer},
};
use crate::cmd;

/// Runs per `bpftool prog run`: in packets mode each one is a record, and
/// this many records of the TCP frame (312 bytes each) fill under two
/// thirds of one CPU's ring (the bench gives podtrace 2 MiB per CPU).
const REPEAT: u32 = 4000;
/// `bpftool prog run` calls per cell; the median is kept.
const TRIES: usize = 7;
/// Pause after each call, so that podtrace's reader (woken once per
/// quarter of the ring, or drained every 20 ms) empties the ring before
/// the next: a full ring would time the cheaper path of a lost record.
const SETTLE: Duration = Duration::from_millis(60);

/// A test packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// IPv4 UDP, 64-byte payload (106-byte frame).
    Udp,
    /// IPv4 TCP with timestamps, PSH|ACK, 64-byte payload (130-byte frame).
    Tcp,
}

impl Probe {
    /// Both, in the table's order.
    pub const ALL: [Self; 2] = [Self::Udp, Self::Tcp];

    /// Column name.
    pub fn label(self) -> &'static str {
        match self {
            Self::Udp => "UDP, 64 B payload",
            Self::Tcp => "TCP, 64 B payload",
        }
    }

    /// The Ethernet frame, addressed like the bench's own traffic.
    fn frame(self) -> Vec<u8> {
        let payload = [0x78u8; 64];
        let ip = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]).ipv4(
            [10, 200, 0, 1],
            [10, 200, 0, 2],
            64,
        );
        let mut f = Vec::new();
        let written = match self {
            Self::Udp => ip.udp(40000, 5201).write(&mut f, &payload),
            Self::Tcp => ip
                .tcp(40000, 5201, 1, 512)
                .ack(2)
                .psh()
                .options(&[TcpOptionElement::Timestamp(1, 2)])
                .expect("timestamps fit in TCP options")
                .write(&mut f, &payload),
        };
        written.expect("writing to a Vec");
        f
    }
}

/// One measurement: a configuration, a packet, ns per run of each program.
#[derive(Clone, Debug, PartialEq)]
pub struct Isolated {
    /// podtrace's configuration.
    pub tracer: Tracer,
    /// The packet.
    pub probe: Probe,
    /// Median ns per run: (ingress, egress).
    pub ns: (u64, u64),
    /// Measured with `bpf_stats` on, to show what the statistics cost.
    pub stats: bool,
}

/// Measures each podtrace configuration on each packet.
pub fn run(podtrace: &Path, pair: &Pair, dir: &Path) -> Result<Vec<Isolated>> {
    let mut files = Vec::new();
    for probe in Probe::ALL {
        let path = dir.join(format!("{probe:?}.bin"));
        fs::write(&path, probe.frame()).with_context(|| format!("writing {}", path.display()))?;
        files.push((probe, path));
    }
    let mut out = Vec::new();
    for tracer in [
        Tracer::Flows,
        Tracer::Packets,
        Tracer::Filtered,
        Tracer::Empty,
    ] {
        let running = Running::start(tracer, podtrace, pair, dir)?;
        let ids = running
            .pids()
            .into_iter()
            .map(procfs::program_ids)
            .collect::<Result<Vec<_>>>()?;
        let pick = |prefix: &str| {
            ids.iter()
                .flatten()
                .find(|(_, name)| name.starts_with(prefix))
                .map(|(id, _)| *id)
                .with_context(|| format!("{} holds no {prefix}* program", tracer.label()))
        };
        let (ingress, egress) = if tracer == Tracer::Empty {
            (pick(empty::INGRESS)?, pick(empty::EGRESS)?)
        } else {
            (pick("podtrace_ingres")?, pick("podtrace_egress")?)
        };
        // The reader on one CPU, the programs on another, every time: which
        // CPU the reader lands on otherwise moves the figure by tens of ns.
        let cpus = cpus();
        if let Some((reader, _)) = cpus {
            for pid in running.pids() {
                cmd::run(Command::new("taskset").args([
                    "-a",
                    "-p",
                    "-c",
                    &reader.to_string(),
                    &pid.to_string(),
                ]))?;
            }
        }
        let runner = cpus.map(|(_, runner)| runner);
        let mut measure = |stats: bool| -> Result<()> {
            for (probe, file) in &files {
                out.push(Isolated {
                    tracer,
                    probe: *probe,
                    ns: (
                        median_ns(ingress, file, runner)?,
                        median_ns(egress, file, runner)?,
                    ),
                    stats,
                });
            }
            Ok(())
        };
        measure(false)?;
        if tracer == Tracer::Filtered {
            // The same again with run time statistics on: the in-traffic
            // figures come from them, and they have a cost of their own
            // (two clock reads and an interrupt-safe counter update per
            // run), part of which lands inside the time they measure.
            let _stats = BpfStats::enable()?;
            measure(true)?;
        }
        let report = running.finish()?;
        if tracer == Tracer::Packets {
            // Every run is a record: had the ring been full, some runs
            // would have timed the lost path instead.
            let (received, lost) = cell::received_and_lost(&report.totals)?;
            let runs = (files.len() * 2 * TRIES) as u64 * u64::from(REPEAT);
            if received < runs || lost != 0 {
                bail!(
                    "podtrace received {received} of the {runs} records of `bpftool prog run` \
                     ({lost} lost): the ring filled, so the figures would time lost records"
                );
            }
        }
    }
    Ok(out)
}

/// The CPUs for podtrace's reader and for `bpftool`: the first and the
/// last. None on a single CPU.
fn cpus() -> Option<(usize, usize)> {
    let n = thread::available_parallelism().map_or(1, usize::from);
    (n > 1).then_some((0, n - 1))
}

/// Median over [`TRIES`] of `bpftool prog run`'s average duration, run on
/// CPU `cpu` if given.
fn median_ns(id: u64, file: &Path, cpu: Option<usize>) -> Result<u64> {
    let mut v = Vec::with_capacity(TRIES);
    for _ in 0..TRIES {
        let mut c = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string(), "bpftool"]);
                c
            }
            None => Command::new("bpftool"),
        };
        c.args(["prog", "run", "id", &id.to_string(), "data_in"])
            .arg(file)
            .args(["repeat", &REPEAT.to_string()]);
        v.push(parse_duration(&cmd::stdout_of(&mut c)?)?);
        thread::sleep(SETTLE);
    }
    v.sort_unstable();
    Ok(v[v.len() / 2])
}

/// `Return value: 0, duration (average): 39ns` -> 39.
fn parse_duration(out: &str) -> Result<u64> {
    let Some(rest) = out.split("duration (average):").nth(1) else {
        bail!("no duration in bpftool's output: {out}");
    };
    rest.trim()
        .trim_end_matches("ns")
        .trim()
        .parse()
        .with_context(|| format!("bpftool's duration: {out}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bpftool_durations() {
        assert_eq!(
            parse_duration("Return value: 4294967295, duration (average): 39ns\n").unwrap(),
            39
        );
        assert!(parse_duration("Error: something").is_err());
    }

    #[test]
    fn frames_are_well_formed_ipv4() {
        for p in Probe::ALL {
            let f = p.frame();
            assert_eq!(f[12..14], [8, 0]);
            assert_eq!(
                usize::from(u16::from_be_bytes([f[16], f[17]])),
                f.len() - 14
            );
        }
        assert_eq!(Probe::Udp.frame().len(), 106);
        assert_eq!(Probe::Tcp.frame().len(), 130);
    }
}

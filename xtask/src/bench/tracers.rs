//! What watches the traffic in a cell: nothing, podtrace in one of its
//! modes, or tcpdump; started before the traffic, read and stopped after.

use std::{
    fs::{self, File},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    pair::{IFACE, Pair},
    procfs::{self, Programs},
};
use crate::{cmd, scratch};

/// A configuration of the bench.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tracer {
    /// The baseline.
    None,
    /// `podtrace capture --mode flows` on both veth ends.
    Flows,
    /// `podtrace capture --mode packets -w /dev/null` on both veth ends:
    /// what tcpdump -w does.
    Packets,
    /// The same, printing a JSON line per packet to /dev/null instead.
    PacketsJson,
    /// `podtrace capture --filter-proto icmp`: the filter rejects every
    /// packet of the bench (the cost of a hook that reports nothing).
    Filtered,
    /// `tcpdump -w /dev/null` on both veth ends.
    Tcpdump,
    /// An empty TC program on both veth ends (see [`super::empty`]): the
    /// floor of the BPF measurements, and what any TC program costs.
    Empty,
}

impl Tracer {
    /// Every configuration, in the table's order.
    pub const ALL: [Self; 7] = [
        Self::None,
        Self::Flows,
        Self::Packets,
        Self::PacketsJson,
        Self::Filtered,
        Self::Tcpdump,
        Self::Empty,
    ];

    /// Name in the table.
    pub fn label(self) -> &'static str {
        match self {
            Self::None => "no tracer",
            Self::Flows => "podtrace --mode flows",
            Self::Packets => "podtrace --mode packets -w /dev/null",
            Self::PacketsJson => "podtrace --mode packets --json",
            Self::Filtered => "podtrace, filter rejects all",
            Self::Tcpdump => "tcpdump -w /dev/null",
            Self::Empty => "empty BPF program (the floor)",
        }
    }

    /// Whether this is one of podtrace's configurations.
    pub fn is_podtrace(self) -> bool {
        matches!(
            self,
            Self::Flows | Self::Packets | Self::PacketsJson | Self::Filtered
        )
    }

    /// Whether it runs BPF programs at the hooks, whose run time counts.
    pub fn has_programs(self) -> bool {
        self.is_podtrace() || self == Self::Empty
    }
}

/// How long a tracer may take to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A tracer watching the veth, until [`Running::finish`].
pub struct Running {
    tracer: Tracer,
    procs: Vec<Proc>,
}

/// What a tracer said and used over a cell.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// podtrace's totals or tcpdump's statistics.
    pub totals: String,
    /// Their peak resident memory (`VmHWM`), summed, in KiB.
    pub peak_rss_kib: u64,
    /// Run time of podtrace's programs.
    pub programs: Programs,
}

impl Running {
    /// Starts `tracer` (nothing for [`Tracer::None`]) and waits until it
    /// watches the veth.
    pub fn start(tracer: Tracer, podtrace: &Path, pair: &Pair, dir: &Path) -> Result<Self> {
        let mut run = Self {
            tracer,
            procs: Vec::new(),
        };
        let mode = if tracer == Tracer::Flows {
            "flows"
        } else {
            "packets"
        };
        match tracer {
            Tracer::None => {}
            Tracer::Flows | Tracer::Packets | Tracer::PacketsJson | Tracer::Filtered => {
                let ready = dir.join("ready");
                let _ = fs::remove_file(&ready);
                let mut c = Command::new(podtrace);
                c.args([
                    "capture", "--mode", mode, "--netns", &pair.a, "--netns", &pair.b,
                ])
                .args(["--iface", IFACE, "--ready-file"])
                .arg(&ready)
                .args(["--ring-size", &ring_kib().to_string()]);
                if tracer == Tracer::Packets {
                    c.args(["-w", "/dev/null"]);
                } else {
                    c.args(["--json"]);
                }
                if tracer == Tracer::Filtered {
                    c.args(["--filter-proto", "icmp"]);
                }
                run.spawn(&mut c, dir, "podtrace")?;
                run.wait(|_| ready.exists())?;
            }
            Tracer::Tcpdump => {
                for ns in [&pair.a, &pair.b] {
                    let mut c = Command::new("ip");
                    c.args([
                        "netns",
                        "exec",
                        ns,
                        "tcpdump",
                        "-n",
                        "-i",
                        IFACE,
                        "-w",
                        "/dev/null",
                    ]);
                    run.spawn(&mut c, dir, &format!("tcpdump-{ns}"))?;
                }
                run.wait(|err| err.matches("listening on").count() == 1)?;
            }
            Tracer::Empty => {
                let ready = dir.join("ready");
                let _ = fs::remove_file(&ready);
                let xtask = std::env::current_exe().context("finding xtask's own binary")?;
                let mut c = Command::new(xtask);
                c.args(["empty-hooks", "--netns", &pair.a, "--netns", &pair.b])
                    .args(["--iface", IFACE, "--ready-file"])
                    .arg(&ready);
                run.spawn(&mut c, dir, "empty-hooks")?;
                run.wait(|_| ready.exists())?;
            }
        }
        Ok(run)
    }

    fn spawn(&mut self, c: &mut Command, dir: &Path, name: &str) -> Result<()> {
        let stderr = dir.join(format!("{name}.stderr"));
        let file =
            File::create(&stderr).with_context(|| format!("creating {}", stderr.display()))?;
        let shown = cmd::render(c);
        println!("$ setsid {shown} &");
        // In a session of its own, as a tracer on a node runs apart from
        // the pods: the fair scheduler then shares the CPU between the
        // tracer's session and the traffic's before it shares it between
        // their threads. In the traffic's own session, podtrace at normal
        // priority lost nothing here; in its own, 97 % of request/response.
        // SAFETY: setsid(2) is async-signal-safe; the child has just forked.
        unsafe {
            c.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = c
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start `{shown}`"))?;
        self.procs.push(Proc { child, stderr });
        Ok(())
    }

    /// Waits until `ready` holds for every process's stderr so far.
    fn wait(&mut self, ready: impl Fn(&str) -> bool) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mut all = true;
            for p in &mut self.procs {
                let text = fs::read_to_string(&p.stderr).unwrap_or_default();
                if let Some(status) = p.child.try_wait()? {
                    bail!(
                        "{} exited before it was ready ({status}): {}",
                        self.tracer.label(),
                        text.trim()
                    );
                }
                all &= ready(&text);
            }
            if all {
                return Ok(());
            }
            cmd::check_interrupt()?;
            if Instant::now() > deadline {
                bail!("{} not ready after {READY_TIMEOUT:?}", self.tracer.label());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Process ids of the tracer's processes.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|p| p.child.id()).collect()
    }

    /// CPU seconds used by the tracer so far.
    pub fn cpu_secs(&self) -> Result<f64> {
        self.procs
            .iter()
            .map(|p| procfs::cpu_secs(p.child.id()))
            .sum()
    }

    /// Reads what only a live tracer shows (peak RSS, program run times),
    /// stops it like Ctrl-C would, and collects what it printed.
    pub fn finish(mut self) -> Result<Report> {
        let mut report = Report::default();
        for p in &self.procs {
            report.peak_rss_kib += procfs::peak_rss_kib(p.child.id())?;
            if self.tracer.has_programs() {
                report.programs = procfs::programs(p.child.id())?;
            }
        }
        for p in &mut self.procs {
            let status = p.stop(Duration::from_secs(10))?;
            let text = fs::read_to_string(&p.stderr).unwrap_or_default();
            if !scratch::ended_well(status) {
                bail!("{} failed ({status}): {}", self.tracer.label(), text.trim());
            }
            report.totals.push_str(&text);
        }
        Ok(report)
    }
}

/// Ring memory for podtrace: 2 MiB per possible CPU (podtrace gives each
/// its own ring), the default's share on 2 CPUs, so that each CPU's ring
/// holds as much on a bigger machine.
pub fn ring_kib() -> u32 {
    let cpus = aya::util::nr_cpus().map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX));
    2048u32.saturating_mul(cpus).next_power_of_two().max(4096)
}

/// A tracer's process, stopped like Ctrl-C would (SIGINT) on drop. Like
/// `scratch::Background`, plus what /proc needs: its pid.
struct Proc {
    child: Child,
    /// The file its stderr goes to.
    stderr: PathBuf,
}

impl Proc {
    /// Sends SIGINT unless it has ended, waits up to `grace`, then kills it.
    fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: kill has no memory preconditions; the child is not reaped
        // yet (try_wait above saw it running), so the pid is still its own.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: still running {grace:?} after SIGINT; killing it");
        self.child.kill().context("killing a tracer")?;
        self.child.wait().context("waiting for a killed tracer")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.stop(Duration::from_secs(5));
    }
}

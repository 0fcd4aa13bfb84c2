//! `podtrace capture`: one line per packet event (tcpdump-like), `--json`,
//! or a pcapng file; totals from the kernel counters on exit.

use std::{io::Write, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::Args;

use crate::{
    cli::{FilterArgs, ReadyArgs, ReportArgs, WhereArgs, kernel_config, parse_positive_duration},
    decode::Packet,
    kernel::LoadOptions,
    output::{self, Clock, LineOut, PcapngOut},
    session::{HookChange, Session},
    signals::Stop,
    topology::Topology,
};

/// `podtrace capture` flags.
#[derive(Args, Debug)]
pub struct CaptureArgs {
    #[command(flatten)]
    pub place: WhereArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub report: ReportArgs,
    /// Where the pod veths' lines get their pods' names from
    /// (`eni3b1f0a9c2d4(pod-1)`); without one, their pods' IPs.
    #[command(flatten)]
    pub pods: crate::pods::PodSourceArgs,
    /// Print one JSON object per event instead of text (also with -w):
    /// `"type":"packet"`, and `"type":"drop"` with --drops.
    #[arg(long)]
    pub json: bool,
    /// Write the events to this pcapng file (one interface block per
    /// interface that saw a packet, named <netns>/<iface>, with in/out
    /// flags). As with
    /// tcpdump, the text lines are then not printed, unless --print or
    /// --json asks for them.
    #[arg(long = "write", short = 'w', value_name = "FILE.pcapng")]
    pub write: Option<PathBuf>,
    /// With -w, also print a text line per event (conflicts with --json,
    /// which prints JSON lines with -w).
    #[arg(long, requires = "write", conflicts_with = "json")]
    pub print: bool,
    /// Stop after this many events (default: run until Ctrl-C).
    #[arg(long, short = 'c', value_name = "N", value_parser = crate::cli::parse_event_count)]
    pub count: Option<u64>,
    /// Stop after this long (e.g. 500ms, 10s, 2m; a bare number is
    /// seconds; default: run until Ctrl-C).
    #[arg(long, value_parser = parse_positive_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
    /// Also show the packets the kernel drops, with its reason: each one
    /// that the filter keeps, dropped on a device of a traced namespace,
    /// is a line `x dropped by the kernel on NODE (DEVICE): REASON ...`
    /// (a `"type":"drop"` object with --json; with -w, a packet on the
    /// interface `<node>/kernel-drops`, raw IPv4, with where and why as
    /// its comment, which Wireshark shows). A drop's line waits 50 ms for
    /// the packets from before it, so it may come after later packets'
    /// (its time is the drop's). Not
    /// shown: NO_SOCKET (a closed port, which the host answers), over 256
    /// per CPU every 100 ms, and after --count. Needs Linux 5.17 or later
    /// (drop reasons) and the kernel's BTF.
    #[arg(long)]
    pub drops: bool,
    #[command(flatten)]
    pub ready: ReadyArgs,
}

/// Runs `podtrace capture`.
pub async fn run(args: CaptureArgs) -> anyhow::Result<ExitCode> {
    args.report.check()?;
    // Names are a convenience here: a pod source found on its own that
    // fails leaves the pods' IPs, where one asked for is an error.
    let asked = args.pods.pods_file.is_some() || args.pods.kubeconfig.is_some();
    let mut pods = match crate::pods::load(&args.pods).await {
        Ok(pods) => pods,
        Err(e) if !asked => {
            eprintln!("podtrace: pod veths show their pods' IPs, not names: {e}");
            crate::pods::PodSet::empty()
        }
        Err(e) => return Err(e.into()),
    };
    // The packets the kernel drops, with its reason: what no tcpdump shows.
    let (drop_offsets, words, mut no_drops) = if !args.drops {
        (None, crate::drops::Words::default(), None)
    } else {
        crate::drops::Words::load_every()
    };
    let mut config = kernel_config(&args.filter, &args.report);
    // Packets mode reads no per-flow counters (its totals come from the
    // hooks' own), so the kernel skips them. Flows mode reports from them
    // whatever this says.
    config.count_flows = 0;
    let opts = LoadOptions {
        config,
        ring_bytes: args.report.ring_bytes(),
        drops: drop_offsets,
        ..LoadOptions::default()
    };
    args.ready.clear_stale()?;
    let mut stop = Stop::install()?;
    let place = crate::session::capture_namespaces(&args.place);
    let mut session = Session::start(&place, &opts).await?;
    session.topology.name_pods(|ip| pods.name_of(ip));
    if let Some(note) = pods.take_note() {
        eprintln!("podtrace: {note}");
    }
    if let Some(e) = session.take_drops_error() {
        no_drops = Some(e);
    }
    if let Some(e) = &no_drops {
        eprintln!("podtrace: the kernel's dropped packets will not show: {e}");
    }
    let pcap = match &args.write {
        Some(path) => Some(PcapngOut::create(path, args.report.snaplen())?),
        None => None,
    };
    let _ready = match &args.ready.ready_file {
        Some(path) => Some(session.write_ready_file(path)?),
        None => None,
    };
    {
        eprintln!(
            "podtrace: tracing {} interface(s) in {}: {}",
            session.hooks().len(),
            session
                .namespaces()
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            session
                .hooks()
                .iter()
                .map(|(n, i)| format!("{n}/{i}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let clock = Clock::now();
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let limit = args.count.unwrap_or(u64::MAX);
    let mut printer = Printer {
        out: LineOut::new(std::io::stdout().lock(), OUT_BUF_BYTES),
        json: args.json,
        lines: args.json || args.print || args.write.is_none(),
        clock,
        pcap,
        printed: 0,
        limit,
        err: None,
        words,
        drops: std::collections::BTreeMap::new(),
    };
    // A file alone needs each record's header and bytes, not its parse.
    session.parse_frames(printer.lines);
    let mut drop_tick = tokio::time::interval(Duration::from_millis(20));
    // Drops wait until the packets from before them are likely out: the
    // programs hand packets over in batches, up to 30 ms late.
    let mut held: Vec<tracer_common::DropEvent> = Vec::new();
    while !printer.done() {
        let mut attached = false;
        let res = tokio::select! {
            () = stop.wait() => break,
            () = crate::signals::deadline(deadline) => break,
            _ = drop_tick.tick(), if args.drops => {
                held.extend(session.take_drops());
                let due = crate::output::kernel_now_ns().saturating_sub(DROP_HOLD_NS);
                held.sort_by_key(|d| d.ts_ns);
                let n = held.partition_point(|d| d.ts_ns <= due);
                for d in held.drain(..n) {
                    printer.drop(&d, &session);
                }
                Ok(())
            }
            // Hook changes go to stderr in every mode: stdout stays events.
            res = session.next(|p, frame, topo| printer.emit(p, frame, topo), |c| match c {
                HookChange::Attached { netns, iface } => {
                    attached = true;
                    eprintln!("podtrace: attached {netns}/{iface}");
                }
                HookChange::Gone { netns, iface } => eprintln!("podtrace: {netns}/{iface} went away"),
            }) => res,
        };
        // Each batch reaches stdout before the next wait: a reader (`| head`,
        // a test) sees events within one drain tick.
        printer.flush();
        res?;
        if attached {
            session.topology.name_pods(|ip| pods.name_of(ip));
        }
    }
    if !printer.done() {
        session
            .drain(|p, frame, topo| printer.emit(p, frame, topo))
            .await?;
    }
    held.extend(session.take_drops());
    held.sort_by_key(|d| d.ts_ns);
    for d in held.drain(..) {
        printer.drop(&d, &session);
    }
    printer.flush();
    let Printer {
        pcap, err, drops, ..
    } = printer;
    if let Some(e) = err {
        // A closed pipe (`| head`) is a normal way to stop.
        if !e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        }) {
            return Err(e);
        }
    }
    if let Some(pc) = pcap {
        pc.finish().context("finishing the pcapng file")?;
    }
    let totals = output::totals(&session)?;
    eprintln!("{totals}");
    if let Some(line) = crate::drops::exit_line(&drops, session.drops_suppressed(), "") {
        eprintln!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// How long a drop's line waits for the packets from before it (their
/// batches come up to 30 ms late).
const DROP_HOLD_NS: u64 = 50_000_000;

/// Bytes of stdout buffered between flushes: at 200-400 bytes per line,
/// hundreds of events per `write(2)`.
const OUT_BUF_BYTES: usize = 64 * 1024;

/// Prints events: lines into a buffer that `capture` flushes after every
/// batch, the pcapng file, the count, and the first write error.
struct Printer<W: Write> {
    out: LineOut<W>,
    json: bool,
    /// Print a line per event (not with -w alone).
    lines: bool,
    clock: Clock,
    pcap: Option<PcapngOut>,
    printed: u64,
    limit: u64,
    /// The first error; nothing is written after it.
    err: Option<anyhow::Error>,
    /// The kernel's drop reasons by name.
    words: crate::drops::Words,
    /// Packets the kernel dropped, by (node, reason), for the exit line.
    drops: std::collections::BTreeMap<(String, String), u64>,
}

impl<W: Write> Printer<W> {
    /// `--count` reached, or writing failed.
    fn done(&self) -> bool {
        self.printed >= self.limit || self.err.is_some()
    }

    /// Prints one event (unless done).
    fn emit(&mut self, p: &Packet, frame: &[u8], topo: &Topology) {
        if self.done() {
            return;
        }
        self.printed += 1;
        let res = if !self.lines {
            Ok(())
        } else if self.json {
            self.out.json(p, topo, &self.clock)
        } else {
            self.out.text(p, topo, &self.clock)
        };
        let res = res
            .map_err(anyhow::Error::from)
            .and_then(|()| match &mut self.pcap {
                Some(pc) => pc.write(p, frame, topo),
                None => Ok(()),
            });
        if let Err(e) = res {
            self.err = Some(e);
        }
    }

    /// Shows a packet the kernel dropped (unless writing failed): not
    /// counted toward --count, which counts the hooks' events.
    fn drop(&mut self, d: &tracer_common::DropEvent, session: &Session) {
        let dropped =
            crate::drops::Dropped::of(d, &self.words, &session.topology, session.namespaces());
        if self.done() || dropped.delivered() {
            return;
        }
        *self.drops.entry(dropped.tally_key()).or_default() += 1;
        let res = if !self.lines {
            Ok(())
        } else if self.json {
            self.out.raw_line(
                &serde_json::json!({
                    "type": "drop",
                    "time_ns": self.clock.wall_ns(d.ts_ns).to_string(),
                    "drop": dropped,
                })
                .to_string(),
            )
        } else {
            self.out
                .raw_line(&format!("{} x {}", self.clock.hms(d.ts_ns), dropped.line()))
        };
        let res = res
            .map_err(anyhow::Error::from)
            .and_then(|()| match &mut self.pcap {
                Some(pc) => pc.write_drop(d, &dropped),
                None => Ok(()),
            });
        if let Err(e) = res {
            self.err = Some(e);
        }
    }

    /// Writes out what is buffered for stdout; keeps the first error.
    fn flush(&mut self) {
        if self.err.is_none()
            && let Err(e) = self.out.flush()
        {
            self.err = Some(e.into());
        }
    }
}

//! `podtrace capture`: one line per packet event (tcpdump-like), `--json`,
//! or a pcapng file; totals from the kernel counters on exit.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::Args;

use crate::{
    cli::{FilterArgs, ReadyArgs, ReportArgs, WhereArgs, kernel_config, parse_duration},
    decode::Packet,
    kernel::LoadOptions,
    output::{self, Clock, PcapngOut},
    session::{HookChange, Session},
    signals::Stop,
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
    /// Print one JSON object per event instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also write the events to this pcapng file (one interface block per
    /// hooked interface, named <netns>/<iface>, with in/out flags).
    #[arg(long = "write", short = 'w', value_name = "FILE.pcapng")]
    pub write: Option<PathBuf>,
    /// Stop after this many events.
    #[arg(long, short = 'c', value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this long (e.g. 500ms, 10s, 2m).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub ready: ReadyArgs,
}

/// Runs `podtrace capture`.
pub async fn run(args: CaptureArgs) -> anyhow::Result<ExitCode> {
    let opts = LoadOptions {
        config: kernel_config(&args.filter, &args.report),
        ring_bytes: args.report.ring_kib * 1024,
        ..LoadOptions::default()
    };
    let mut stop = Stop::install()?;
    let mut session = Session::start(&args.place, &opts).await?;
    let mut pcap = match &args.write {
        Some(path) => Some(PcapngOut::create(path, args.report.snaplen)?),
        None => None,
    };
    if let Some(path) = &args.ready.ready_file {
        session.write_ready_file(path)?;
    }
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
    let mut printed: u64 = 0;
    let limit = args.count.unwrap_or(u64::MAX);
    let mut out = std::io::stdout().lock();
    let write_err: std::cell::RefCell<Option<anyhow::Error>> = std::cell::RefCell::new(None);
    let mut emit =
        |p: &Packet, frame: &[u8], topo: &crate::topology::Topology, printed: &mut u64| {
            if *printed >= limit || write_err.borrow().is_some() {
                return;
            }
            *printed += 1;
            let res = if args.json {
                output::write_json_line(&mut out, p, topo, &clock)
            } else {
                output::write_text_line(&mut out, p, topo, &clock)
            };
            let res = res
                .map_err(anyhow::Error::from)
                .and_then(|()| match &mut pcap {
                    Some(pc) => pc.write(p, frame, topo),
                    None => Ok(()),
                });
            if let Err(e) = res {
                *write_err.borrow_mut() = Some(e);
            }
        };
    while printed < limit && write_err.borrow().is_none() {
        tokio::select! {
            () = stop.wait() => break,
            () = crate::signals::deadline(deadline) => break,
            // Hook changes go to stderr in every mode: stdout stays events.
            res = session.next(|p, frame, topo| emit(p, frame, topo, &mut printed), |c| match c {
                HookChange::Attached { netns, iface } => eprintln!("podtrace: attached {netns}/{iface}"),
                HookChange::Gone { netns, iface } => eprintln!("podtrace: {netns}/{iface} went away"),
            }) => res?,
        }
    }
    if printed < limit {
        session.drain(|p, frame, topo| emit(p, frame, topo, &mut printed));
    }
    // `emit` borrows write_err and pcap: its last use ends those borrows.
    if let Some(e) = write_err.into_inner() {
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
    Ok(ExitCode::SUCCESS)
}

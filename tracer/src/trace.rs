//! `podtrace trace`: live flows with their path, ENIs, rewrites and labels,
//! as blocks a person reads at a glance or as JSON lines.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io::Write as _,
    process::ExitCode,
    time::Duration,
};

use clap::Args;
use serde_json::json;

use crate::{
    cli::{
        FilterArgs, Mode, ReadyArgs, ReportArgs, WhereArgs, kernel_config, parse_positive_duration,
    },
    conntrack,
    correlate::{self, Correlator, Flow, FlowId, Label, Update, format},
    kernel::LoadOptions,
    output::Clock,
    pods::{self, PodSourceArgs},
    session::{HookChange, Session},
    signals::Stop,
};

/// `podtrace trace` flags: `--mode flows` by default (exact counters, few
/// events), like `watch`.
#[derive(Args, Debug)]
#[command(mut_arg("mode", |a| a.default_value("flows")))]
pub struct TraceArgs {
    #[command(flatten)]
    pub place: WhereArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub report: ReportArgs,
    #[command(flatten)]
    pub pods: PodSourceArgs,
    /// Print one JSON object per line (`type`: journey, flow, flow_end,
    /// stats) instead of text. The last line, stats, also gives each
    /// hook's seen, matched, events and lost. Flow lines carry `time_ns`,
    /// the wall-clock time of the flow's last packet; at exit every live
    /// flow gets a flow_end with reason "exit" and its final counters.
    #[arg(long)]
    pub json: bool,
    /// Also print every journey (one packet's hops), not only flows.
    #[arg(long)]
    pub journeys: bool,
    /// Stop after this long (e.g. 10s, 2m; a bare number is seconds;
    /// default: run until Ctrl-C).
    #[arg(long, value_parser = parse_positive_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
    /// Most flows tracked at once (least recently seen are evicted).
    #[arg(long = "max-flows", default_value_t = 100_000, value_name = "N", value_parser = crate::cli::parse_positive_count)]
    pub max_flows: usize,
    #[command(flatten)]
    pub ready: ReadyArgs,
}

/// What was last printed of a flow, so a block is printed again only when
/// its story changed (a new label, the reply path, conntrack's tuples).
#[derive(PartialEq, Eq)]
struct Shown {
    labels: Vec<Label>,
    request_seen: bool,
    reply_seen: bool,
    conntrack: bool,
    /// The latest drop's side and reason.
    drop: Option<(correlate::Side, String)>,
}

impl Shown {
    fn of(f: &Flow) -> Self {
        Self {
            labels: f.labels.iter().collect(),
            request_seen: !f.request.path.is_empty(),
            reply_seen: !f.reply.path.is_empty(),
            conntrack: f.conntrack.is_some(),
            drop: f.drop.as_ref().map(|d| (d.side, d.reason.clone())),
        }
    }
}

/// Runs `podtrace trace`.
pub async fn run(args: TraceArgs) -> anyhow::Result<ExitCode> {
    args.report.check()?;
    let mut pods = pods::load(&args.pods).await?;
    args.ready.clear_stale()?;
    let mut stop = Stop::install()?;
    let mode = args.report.mode;
    // The packets the kernel drops in the traced namespaces, with its
    // reason: where a flow stops, and why.
    let (drop_offsets, words, mut no_drops) = crate::drops::Words::load_every();
    let opts = LoadOptions {
        config: kernel_config(&args.filter, &args.report),
        ring_bytes: args.report.ring_bytes(),
        drops: drop_offsets,
        ..LoadOptions::default()
    };
    let place = crate::session::traced_namespaces(&args.place, &pods)?;
    let mut session = Session::start(&place, &opts).await?;
    session.topology.name_pods(|ip| pods.name_of(ip));
    if let Some(e) = session.take_drops_error() {
        no_drops = Some(e);
    }
    if let Some(e) = &no_drops {
        eprintln!("podtrace: the kernel's dropped packets will not show: {e}");
    }
    let no_drops_why = no_drops;
    if let Some(note) = pods.take_note() {
        eprintln!("podtrace: {note}");
    }
    let filtered = args.filter.src.is_some()
        || args.filter.dst.is_some()
        || args.filter.host.is_some()
        || args.filter.port.is_some()
        || args.filter.proto.is_some();
    if args.filter.src.is_some() || args.filter.dst.is_some() || args.filter.host.is_some() {
        eprintln!(
            "podtrace: an address filter misses a packet once NAT rewrites the address: a \
             flow's SNAT/DNAT and the hops after it may not show (ping, or no filter, shows them)"
        );
    }
    let mut engine = Correlator::new(correlate::Config {
        max_flows: args.max_flows.max(1),
        complete_reports: mode == Mode::Packets && !filtered,
        // Changed flows are read back once a second (`dirty`): building
        // each for every update would be wasted.
        changes_by_id: true,
        ..correlate::Config::default()
    });
    let _ready = match &args.ready.ready_file {
        Some(path) => Some(session.write_ready_file(path)?),
        None => None,
    };
    eprintln!(
        "podtrace: tracing {} in {} ({} mode); Ctrl-C to stop",
        session
            .hooks()
            .iter()
            .map(|(n, i)| format!("{n}/{i}"))
            .collect::<Vec<_>>()
            .join(" "),
        session
            .namespaces()
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        match mode {
            Mode::Packets => "packets",
            Mode::Flows => "flows",
        }
    );
    let clock = Clock::now();
    let mut out = Printer {
        json: args.json,
        journeys: args.journeys,
        shown: HashMap::new(),
        counted: HashMap::new(),
        dirty: BTreeSet::new(),
        clock,
        drops: BTreeMap::new(),
    };
    let mut unfiled = crate::drops::Unfiled::default();
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut counters = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.wait() => break,
            () = crate::signals::deadline(deadline) => break,
            _ = tick.tick() => {
                let now = crate::output::kernel_now_ns();
                engine.advance(now, |u| out.update(u));
                for d in session.take_drops() {
                    if let Some(dropped) = out.drop(&d, &words, &session) {
                        unfiled.push(&d, &dropped);
                    }
                }
                unfiled.file(&mut engine, now, |u| out.update(u));
            }
            _ = counters.tick() => {
                let flows = session.flow_stats()?;
                engine.merge_kernel_counters(flows.iter(), |u| out.update(u));
                attach_conntrack(&session, &mut engine);
                out.print_changed(&engine);
            }
            res = session.next(
                |p, _, topo| engine.push(p, topo, |u| out.update(u)),
                |c| match c {
                    HookChange::Attached { netns, iface } => eprintln!("podtrace: attached {netns}/{iface}"),
                    HookChange::Gone { netns, iface } => eprintln!("podtrace: {netns}/{iface} went away"),
                },
            ) => {
                res?;
                engine.refresh_topology(&session.topology);
            }
        }
    }
    session
        .drain(|p, _, topo| engine.push(p, topo, |u| out.update(u)))
        .await?;
    for d in session.take_drops() {
        if let Some(dropped) = out.drop(&d, &words, &session) {
            unfiled.push(&d, &dropped);
        }
    }
    let flows = session.flow_stats()?;
    engine.merge_kernel_counters(flows.iter(), |u| out.update(u));
    attach_conntrack(&session, &mut engine);
    out.print_changed(&engine);
    engine.flush(|u| out.update(u));
    unfiled.file(&mut engine, u64::MAX, |u| out.update(u));
    out.print_changed(&engine);
    out.print_at_exit(&engine);
    let stats = engine.stats();
    if args.json {
        // The hooks' counters too: a script must be able to tell that
        // events were lost.
        let hooks = crate::output::hook_totals_json(&session)?;
        let by_reason: Vec<serde_json::Value> = out
            .drops
            .iter()
            .map(|((node, reason), n)| {
                // "?" in the text: a device of no traced namespace.
                let node = (node != "?").then_some(node);
                json!({"node": node, "reason": reason, "packets": n})
            })
            .collect();
        let drops = json!({
            "by_reason": by_reason,
            "shown": out.drops.values().sum::<u64>(),
            "not_shown": session.drops_suppressed(),
            "not_filed": unfiled.given_up,
            "unavailable": no_drops_why,
        });
        println!(
            "{}",
            json!({"type": "stats", "stats": stats, "hooks": hooks, "drops": drops})
        );
    } else {
        eprintln!("{}", crate::output::totals(&session)?);
        let n = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        eprintln!(
            "{}, {} tracked, {} evicted, {} evicted",
            n(stats.journeys, "journey", "journeys"),
            n(stats.flows as u64, "flow", "flows"),
            n(stats.flows_evicted, "flow", "flows"),
            n(stats.pending_evicted, "journey", "journeys"),
        );
        // What a flood of flow blocks can bury: how many were refused.
        let mut errors = std::collections::BTreeMap::<&str, u64>::new();
        engine.each_flow(|f| {
            if let Some(e) = &f.icmp_error {
                *errors.entry(e.name).or_default() += 1;
            }
        });
        if !errors.is_empty() {
            let kinds: Vec<String> = errors.iter().map(|(k, v)| format!("{v} {k}")).collect();
            eprintln!(
                "{} answered by ICMP errors (label icmp-error): {}",
                n(errors.values().sum(), "flow", "flows"),
                kinds.join(", ")
            );
        }
        let suppressed = session.drops_suppressed();
        if let Some(why) = &no_drops_why {
            eprintln!("the kernel's dropped packets were not shown: {why}");
        } else {
            let not_filed = if unfiled.given_up > 0 {
                format!(
                    "; {} with no flow traced (no hook saw their packet, or its journey had closed)",
                    unfiled.given_up
                )
            } else {
                String::new()
            };
            if let Some(line) = crate::drops::exit_line(&out.drops, suppressed, &not_filed) {
                eprintln!("{line}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Gives every NATed flow that has none yet the conntrack entry of its
/// connection, read through netlink in the traced namespaces (a node's
/// table is where its SNAT and DNAT happen).
fn attach_conntrack(session: &Session, engine: &mut Correlator) {
    let mut wanted: Vec<(FlowId, correlate::Tuple)> = Vec::new();
    engine.each_flow(|f| {
        if f.conntrack.is_none()
            && (f.labels.contains(Label::Snat) || f.labels.contains(Label::Dnat))
        {
            wanted.push((f.id, f.tuple));
        }
    });
    if wanted.is_empty() {
        return;
    }
    let tables: Vec<_> = session
        .namespaces()
        .iter()
        .filter_map(|ns| conntrack::dump(ns).ok())
        .collect();
    for (id, tuple) in wanted {
        if let Some(entry) = tables.iter().find_map(|t| conntrack::find(t, &tuple)) {
            engine.set_conntrack(id, entry.clone());
        }
    }
}

/// Prints journeys as they close and flows once a second when their story
/// changed: a flow is reported once it has settled, not at every packet.
struct Printer {
    json: bool,
    journeys: bool,
    shown: HashMap<FlowId, Shown>,
    /// Each printed flow's counts when it was printed.
    counted: HashMap<FlowId, Counts>,
    dirty: BTreeSet<FlowId>,
    clock: Clock,
    /// Packets the kernel dropped, by (node, reason), for the exit line.
    drops: BTreeMap<(String, String), u64>,
}

/// Whether no traced hook saw a packet of `f` in either direction (a flow
/// known only from the kernel's counters): nothing to print.
fn unseen(f: &Flow) -> bool {
    f.request.path.is_empty() && f.reply.path.is_empty()
}

/// A flow's packet counts, each side's own and the kernel's.
type Counts = [u64; 5];

fn counts(f: &Flow) -> Counts {
    let k = |s: &correlate::FlowSide| s.kernel.map_or(0, |k| k.packets);
    [
        f.request.packets,
        f.reply.packets,
        k(&f.request),
        k(&f.reply),
        f.drop.as_ref().map_or(0, |d| d.packets),
    ]
}

impl Printer {
    fn update(&mut self, u: Update<'_>) {
        let mut stdout = std::io::stdout().lock();
        let _ = match u {
            Update::Journey(j) if self.journeys => {
                if self.json {
                    writeln!(stdout, "{}", json!({"type": "journey", "journey": j}))
                } else {
                    write!(stdout, "{}", format::journey(j))
                }
            }
            Update::Journey(_) => Ok(()),
            // Changed flows are printed from `dirty` once a second.
            Update::Flow(&Flow { id, .. }) | Update::FlowChanged { id } => {
                self.dirty.insert(id);
                Ok(())
            }
            Update::FlowEnded { flow, reason } => {
                self.dirty.remove(&flow.id);
                self.counted.remove(&flow.id);
                let changed = self.shown.remove(&flow.id) != Some(Shown::of(flow));
                if self.json {
                    writeln!(
                        stdout,
                        "{}",
                        json!({"type": "flow_end", "time_ns": self.wall(flow), "reason": reason, "flow": flow})
                    )
                } else if changed && !unseen(flow) {
                    self.flow(&mut stdout, flow)
                } else {
                    Ok(())
                }
            }
        };
    }

    /// At exit, every live flow's final counters: a flow is printed while
    /// its story changes, not at each packet, so its last block may show
    /// counts from its first second. JSON gets a `flow_end` with reason
    /// `exit` for every flow (its whole record, counters included); text
    /// gets one line per flow whose counts moved since it was printed.
    fn print_at_exit(&mut self, engine: &Correlator) {
        let mut flows: Vec<Flow> = engine.flows().collect();
        flows.sort_by_key(|f| f.id);
        let mut stdout = std::io::stdout().lock();
        if self.json {
            for f in &flows {
                let _ = writeln!(
                    stdout,
                    "{}",
                    json!({"type": "flow_end", "time_ns": self.wall(f), "reason": "exit", "flow": f})
                );
            }
            return;
        }
        let lines: Vec<String> = flows
            .iter()
            .filter(|f| !unseen(f))
            .filter(|f| self.counted.get(&f.id) != Some(&counts(f)))
            .map(format::flow_counters)
            .collect();
        if !lines.is_empty() {
            // Flows whose counts did not move since they were printed are
            // left out: their last block above is still right.
            let _ = writeln!(
                stdout,
                "--- final counts of flows that changed since printed ---"
            );
            for l in lines {
                let _ = writeln!(stdout, "{l}");
            }
        }
    }

    /// Wall-clock time of the flow's last packet, in ns since the epoch, as
    /// a string (as `capture --json`'s `time_ns`): the kernel's stamps in
    /// the record are monotonic, which logs from several nodes cannot be
    /// lined up by.
    fn wall(&self, f: &Flow) -> String {
        self.clock.wall_ns(f.last_ns).to_string()
    }

    /// Prints a packet the kernel dropped, as it comes: a line (or a
    /// `drop` object), apart from the flows, whose blocks wait for their
    /// journeys to close.
    fn drop(
        &mut self,
        d: &tracer_common::DropEvent,
        words: &crate::drops::Words,
        session: &Session,
    ) -> Option<crate::drops::Dropped> {
        let dropped = crate::drops::Dropped::of(d, words, &session.topology, session.namespaces());
        if dropped.delivered() {
            return None;
        }
        *self.drops.entry(dropped.tally_key()).or_default() += 1;
        let mut stdout = std::io::stdout().lock();
        let _ = if self.json {
            writeln!(
                stdout,
                "{}",
                json!({
                    "type": "drop",
                    "time_ns": self.clock.wall_ns(d.ts_ns).to_string(),
                    "drop": dropped,
                })
            )
        } else {
            writeln!(stdout, "{} x {}", self.clock.hms(d.ts_ns), dropped.line())
        };
        Some(dropped)
    }

    /// Prints the flows whose story changed since they were last printed.
    fn print_changed(&mut self, engine: &Correlator) {
        let mut stdout = std::io::stdout().lock();
        for id in std::mem::take(&mut self.dirty) {
            let Some(f) = engine.flow(id) else { continue };
            let f = &f;
            let now = Shown::of(f);
            if unseen(f) || self.shown.get(&id) == Some(&now) {
                continue;
            }
            self.shown.insert(id, now);
            self.counted.insert(id, counts(f));
            let _ = self.flow(&mut stdout, f);
        }
    }

    fn flow(&self, out: &mut impl std::io::Write, f: &Flow) -> std::io::Result<()> {
        if self.json {
            return writeln!(
                out,
                "{}",
                json!({"type": "flow", "time_ns": self.wall(f), "flow": f})
            );
        }
        let mut block = format::flow(f);
        if let Some(ct) = &f.conntrack {
            // Conntrack keys ICMP by the echo id, kept in `sport`; its
            // other "port" is no port at all.
            let t = |t: &correlate::Tuple| match t.proto {
                6 | 17 => format!("{}:{} > {}:{}", t.src, t.sport, t.dst, t.dport),
                1 => format!("{} > {} id {}", t.src, t.dst, t.sport.max(t.dport)),
                _ => format!("{} > {}", t.src, t.dst),
            };
            block = block.trim_end().to_owned();
            block.push_str(&format!(
                "\n  conntrack original {}  reply {}\n",
                t(&ct.original),
                t(&ct.reply)
            ));
        }
        writeln!(out, "{} {block}", self.clock.hms(f.last_ns))
    }
}

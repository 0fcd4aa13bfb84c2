//! `podtrace watch`: a live terminal UI of flows and their paths.
//!
//! Pure core, thin shell: [`app::App`] holds the screen state and is fed
//! the correlation engine's updates and the keys; [`ui::draw`] renders it
//! into a ratatui frame. This module is the shell: one tokio loop that
//! reads events (session, correlation), and on a 100 ms tick renders a
//! frame off screen and hands it to the painter thread ([`term`]), so the
//! event path never waits on the terminal. Kernel counters and rates are
//! refreshed once a second.

pub mod app;
mod detail;
pub mod keys;
pub mod row;
pub mod synth;
pub mod term;
pub mod ui;

#[cfg(test)]
mod tests;

use std::{io::Write as _, process::ExitCode, time::Duration};

use clap::Args;
use ratatui::{Terminal, backend::TestBackend, crossterm::event::Event};

use self::{app::App, term::Screen};
use crate::{
    cli::{FilterArgs, Mode, ReadyArgs, ReportArgs, WhereArgs, kernel_config},
    conntrack,
    correlate::{Config, Correlator, Flow, Label},
    kernel::LoadOptions,
    pods::{self, PodSet, PodSourceArgs},
    session::Session,
    signals::Stop,
};

/// Time between frames.
const FRAME: Duration = Duration::from_millis(100);
/// Time between kernel counter reads and rate updates.
const STATS: Duration = Duration::from_secs(1);

/// `podtrace watch` flags: the same sources and filters as `capture`,
/// with `--mode flows` by default (exact counters, few events).
#[derive(Args, Debug)]
#[command(mut_arg("mode", |a| a.default_value("flows")))]
pub struct WatchArgs {
    #[command(flatten)]
    pub place: WhereArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub report: ReportArgs,
    #[command(flatten)]
    pub pods: PodSourceArgs,
    /// Most flows tracked at once; the least recently active are evicted
    /// (and counted in the header) when more come.
    #[arg(long = "max-flows", default_value_t = 100_000, value_name = "N", value_parser = crate::cli::parse_positive_count)]
    pub max_flows: usize,
    #[command(flatten)]
    pub ready: ReadyArgs,
}

/// The kernel filter in words, for the header.
fn describe(f: &FilterArgs) -> String {
    let cidr = |c: &crate::cli::Cidr| format!("{}/{}", c.addr, c.len);
    let mut v = Vec::new();
    if let Some(c) = &f.src {
        v.push(format!("src {}", cidr(c)));
    }
    if let Some(c) = &f.dst {
        v.push(format!("dst {}", cidr(c)));
    }
    if let Some(c) = &f.host {
        v.push(format!("host {}", cidr(c)));
    }
    if let Some(p) = f.proto {
        v.push(format!("proto {}", crate::correlate::ProtoName(p.number())));
    }
    if let Some(p) = f.port {
        v.push(format!("port {p}"));
    }
    if v.is_empty() {
        "none".into()
    } else {
        v.join(" ")
    }
}

/// Runs `podtrace watch` until `q`, Ctrl-C, SIGTERM or SIGHUP, or until its
/// terminal goes away.
pub async fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
    args.report.check()?;
    // The packets the kernel drops, filed with their flows (label
    // `dropped`); without the kernel's BTF, watch goes on without them.
    let (drop_offsets, words, mut no_drops) = crate::drops::Words::load_every();
    let opts = LoadOptions {
        config: kernel_config(&args.filter, &args.report),
        ring_bytes: args.report.ring_bytes(),
        drops: drop_offsets,
        ..LoadOptions::default()
    };
    // Errors (no terminal, privileges, a missing netns, a bad pods file)
    // print as one line before the screen is taken over.
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        anyhow::bail!(
            "watch needs a terminal (stdout is not one); `podtrace trace` prints flows as text or JSON"
        );
    }
    let mut pods = pods::load(&args.pods).await?;
    args.ready.clear_stale()?;
    let mut stop = Stop::install()?;
    let place = crate::session::traced_namespaces(&args.place, &pods)?;
    let mut session = Session::start(&place, &opts).await?;
    session.topology.name_pods(|ip| pods.name_of(ip));
    if let Some(note) = pods.take_note() {
        eprintln!("podtrace: {note}");
    }
    if let Some(e) = session.take_drops_error() {
        no_drops = Some(e);
    }
    let f = &args.filter;
    let unfiltered = f.src.is_none() && f.dst.is_none() && f.host.is_none() && f.proto.is_none();
    let mut engine = Correlator::new(Config {
        max_flows: args.max_flows.max(1),
        max_pending: args.max_flows.clamp(1024, 64 * 1024),
        complete_reports: args.report.mode == Mode::Packets && unfiltered && f.port.is_none(),
        // Rows are rebuilt once per frame from the ids of changed flows
        // (App::take_changes), not from a whole flow built per packet.
        changes_by_id: true,
        ..Config::default()
    });
    engine.refresh_topology(&session.topology);
    let mut app = App::new();
    app.header.mode = Some(args.report.mode);
    app.header.kernel_filter = describe(&args.filter);
    let mut screen = Screen::enter()?;
    let _ready = match &args.ready.ready_file {
        Some(path) => Some(session.write_ready_file(path)?),
        None => None,
    };
    let mut edge = Edge {
        session: &mut session,
        engine: &mut engine,
        pods: &pods,
        stop: &mut stop,
        words: &words,
        unfiled: crate::drops::Unfiled::default(),
    };
    let res = edge.run(&mut app, &mut screen).await;
    let not_filed = edge.unfiled.given_up;
    let not_shown = session.drops_suppressed();
    // Detaches every program first: leaving writes to the terminal, which
    // may be stalled (a frozen ssh connection) for as long as it likes.
    drop(session);
    let left = screen.leave();
    let (events, lost) = (app.header.events, app.header.lost);
    res?;
    left?;
    let st = engine.stats();
    // To a terminal that may have hung up: a failed write is no error.
    let mut err = std::io::stderr();
    let _ = writeln!(
        err,
        "podtrace: {} flows on screen at exit ({} evicted, {} idle); {events} events received, {lost} lost",
        st.flows, st.flows_evicted, st.flows_expired
    );
    let _ = match no_drops {
        Some(e) => writeln!(
            err,
            "podtrace: the kernel's dropped packets were not shown: {e}"
        ),
        None if not_shown + not_filed > 0 => writeln!(
            err,
            "podtrace: kernel drops not on screen: {not_shown} over the budget or a full ring, \
             {not_filed} with no flow traced"
        ),
        None => Ok(()),
    };
    Ok(ExitCode::SUCCESS)
}

/// What the loop drives besides the screen.
struct Edge<'a> {
    session: &'a mut Session,
    engine: &'a mut Correlator,
    pods: &'a PodSet,
    stop: &'a mut Stop,
    words: &'a crate::drops::Words,
    unfiled: crate::drops::Unfiled,
}

impl Edge<'_> {
    async fn run(&mut self, app: &mut App, screen: &mut Screen) -> anyhow::Result<()> {
        let mut frame_tick = tokio::time::interval(FRAME);
        frame_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut stats_tick = tokio::time::interval(STATS);
        stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let (w, h) = Screen::size()?;
        let mut offscreen = Terminal::new(TestBackend::new(w, h))?;
        let mut last_stats = tokio::time::Instant::now();
        let mut last_events = 0u64;
        let mut hooks_changed = true;
        while !app.quit {
            tokio::select! {
                () = self.stop.wait() => break,
                ev = screen.events.recv() => match ev {
                    Some(Event::Key(k)) => {
                        test_panic(&k);
                        keys::handle(app, k);
                        draw(&mut offscreen, app, self.engine, screen)?;
                    }
                    Some(Event::Resize(..)) => draw(&mut offscreen, app, self.engine, screen)?,
                    Some(_) => {}
                    // The reader stopped: the terminal hung up, or reading
                    // it failed. Either way no one could quit the screen.
                    None => match screen.reader_error() {
                        Some(e) => {
                            return Err(anyhow::Error::new(e).context("reading the terminal's keys"));
                        }
                        None => break,
                    },
                },
                _ = frame_tick.tick() => {
                    // Gone with its SIGHUP ignored (`trap '' HUP`): nothing
                    // else would tell.
                    if screen.hung_up() {
                        break;
                    }
                    let now = crate::output::kernel_now_ns();
                    self.engine.advance(now, |u| app.apply(u));
                    for d in self.session.take_drops() {
                        let dropped = crate::drops::Dropped::of(
                            &d,
                            self.words,
                            &self.session.topology,
                            self.session.namespaces(),
                        );
                        if !dropped.delivered() {
                            self.unfiled.push(&d, &dropped);
                        }
                    }
                    self.unfiled.file(self.engine, now, |u| app.apply(u));
                    draw(&mut offscreen, app, self.engine, screen)?;
                }
                _ = stats_tick.tick() => {
                    let secs = last_stats.elapsed().as_secs_f64();
                    last_stats = tokio::time::Instant::now();
                    let events: u64 = self.session.received.values().sum();
                    #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
                    let per_s = events.saturating_sub(last_events) as f64 / secs.max(1e-3);
                    last_events = events;
                    app.header.events_per_s = per_s;
                    self.stats(app, std::mem::take(&mut hooks_changed), secs);
                }
                res = self.session.next(
                    |p, _frame, topo| self.engine.push(p, topo, |u| app.apply(u)),
                    |_| hooks_changed = true,
                ) => res?,
            }
        }
        Ok(())
    }

    /// Once a second: hooks and pod names after churn, the kernel's exact
    /// counters, losses, rates, and conntrack for the flow in the detail pane.
    fn stats(&mut self, app: &mut App, hooks_changed: bool, secs: f64) {
        let (session, engine) = (&mut *self.session, &mut *self.engine);
        if hooks_changed {
            let pods = self.pods;
            session.topology.name_pods(|ip| pods.name_of(ip));
            engine.refresh_topology(&session.topology);
            app.header.hooks = hooks_per_netns(session);
        }
        // Counters are read whole; an error leaves the previous ones.
        if let Ok(flows) = session.flow_stats() {
            engine.merge_kernel_counters(&flows, |u| app.apply(u));
        }
        if let Ok(hooks) = session.hook_stats() {
            app.header.lost = hooks.values().map(|s| s.lost).sum();
        }
        let st = engine.stats();
        let hd = &mut app.header;
        (hd.events, hd.evicted, hd.expired) = (
            session.received.values().sum(),
            st.flows_evicted,
            st.flows_expired,
        );
        app.take_changes(|id| engine.flow(id));
        app.sweep(secs);
        // Conntrack is read only for the one NATed flow whose details are
        // open: a whole table per flow per second would not scale.
        let nat = |f: &Flow| {
            f.conntrack.is_none()
                && (f.labels.contains(Label::Snat) || f.labels.contains(Label::Dnat))
        };
        if let Some(f) = app.detail_id().and_then(|id| engine.flow(id)).filter(nat) {
            let (id, tuple) = (f.id, f.tuple);
            let entry = session
                .namespaces()
                .iter()
                .filter_map(|ns| conntrack::dump(ns).ok())
                .find_map(|t| conntrack::find(&t, &tuple).cloned());
            if let Some(e) = entry {
                engine.set_conntrack(id, e);
            }
        }
    }
}

/// In debug builds only, with `PODTRACE_WATCH_TEST_PANIC` set, `!` panics:
/// how the end-to-end test checks that a panic restores the terminal and
/// detaches everything.
fn test_panic(k: &ratatui::crossterm::event::KeyEvent) {
    if cfg!(debug_assertions)
        && k.code == ratatui::crossterm::event::KeyCode::Char('!')
        && std::env::var_os("PODTRACE_WATCH_TEST_PANIC").is_some()
    {
        panic!("test panic requested with PODTRACE_WATCH_TEST_PANIC");
    }
}

/// `(netns, hooked interfaces)` in the order the namespaces were given.
fn hooks_per_netns(session: &Session) -> Vec<(String, usize)> {
    let hooks = session.hooks();
    session
        .namespaces()
        .iter()
        .map(|ns| {
            let n = hooks.iter().filter(|(name, _)| *name == ns.name).count();
            (ns.name.clone(), n)
        })
        .collect()
}

/// Renders a frame off screen at the terminal's current size and hands it
/// to the painter.
fn draw(
    offscreen: &mut Terminal<TestBackend>,
    app: &mut App,
    engine: &Correlator,
    screen: &Screen,
) -> anyhow::Result<()> {
    app.now_ns = crate::output::kernel_now_ns();
    app.take_changes(|id| engine.flow(id));
    if let Some(id) = app.detail_id() {
        app.set_detail(engine.flow(id).as_ref());
    }
    let (w, h) = Screen::size()?;
    let area = offscreen.backend().buffer().area;
    if (area.width, area.height) != (w, h) {
        offscreen.backend_mut().resize(w, h);
    }
    let done = offscreen.draw(|f| ui::draw(f, app))?;
    screen.show(done.buffer.clone())?;
    Ok(())
}

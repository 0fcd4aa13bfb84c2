//! The engine: matches each packet to a pending journey by fingerprint,
//! closes journeys when their window passes, and folds them into flows.

use tracer_common::{FlowKey, FlowStats};

use super::{
    Config, Sink, Stats, Update,
    flow::{FlowHop, Flows},
    flow_model::{ConntrackInfo, Flow, FlowId, KernelDrop},
    journey::{self, MAX_HOPS, Observed},
    journey_model::{Incomplete, Journey, Side},
    model::Tuple,
    pending::{Lookup, PendingTable},
    places::Places,
    table::{Map, map_with_capacity},
};
use crate::{decode::Packet, topology::Topology};

/// Flow slots looked at for idleness per packet: keeps expiry O(1) per
/// packet; [`Correlator::advance`] sweeps them all.
const SWEEP_PER_PACKET: usize = 4;

/// The correlation engine. Drive it with [`push`](Self::push) for every
/// decoded packet and [`advance`](Self::advance) on a timer; it reports
/// closed journeys and flow changes through the callback it is given.
pub struct Correlator {
    cfg: Config,
    now: u64,
    places: Places,
    pending: PendingTable,
    flows: Flows,
    /// Reused for every journey, so that closing one does not allocate.
    scratch: Journey,
    /// The hops of the journey being closed, as its flow keeps them.
    hops: [FlowHop; MAX_HOPS],
    /// What each pending ICMP error quotes, by its pending journey (few
    /// journeys are errors: the pending ring stays as it is).
    quotes: Map<u64, Tuple>,
    /// Kernel drops waiting for their packet's pending journey to close
    /// (see [`Correlator::note_drop`]), by that journey.
    awaiting: Map<u64, KernelDrop>,
    stats: Stats,
}

impl Correlator {
    /// An empty engine.
    pub fn new(cfg: Config) -> Self {
        Self {
            cfg,
            now: 0,
            places: Places::new(cfg.hash_seed),
            pending: PendingTable::new(cfg.max_pending, cfg.hash_seed),
            flows: Flows::new(cfg.max_flows, cfg.flow_idle_ns, cfg.hash_seed),
            scratch: Journey::default(),
            hops: [FlowHop::default(); MAX_HOPS],
            quotes: map_with_capacity(0, cfg.hash_seed),
            awaiting: map_with_capacity(0, cfg.hash_seed),
            stats: Stats::default(),
        }
    }

    /// Feeds one decoded packet. Packets should come roughly in kernel
    /// time order; disorder within [`Config::window_ns`] is absorbed.
    /// `topo` is read only for a hook the engine has not seen yet (call
    /// [`refresh_topology`](Self::refresh_topology) when it changes).
    pub fn push(&mut self, pkt: &Packet, topo: &Topology, mut sink: impl FnMut(Update<'_>)) {
        let sink: Sink<'_> = &mut sink;
        self.stats.packets += 1;
        let Some(mut obs) = journey::observe(pkt) else {
            self.stats.ignored += 1;
            return;
        };
        if pkt.ts_ns.saturating_add(self.cfg.window_ns) < self.now {
            self.stats.late += 1;
        }
        self.now = self.now.max(pkt.ts_ns);
        obs.fp_hash = self.pending.hash(obs.fp);
        obs.hop.hook = self
            .places
            .ensure(pkt.hook.netns_cookie, pkt.hook.ifindex, topo);
        match self.pending.find(&obs, self.cfg.window_ns) {
            Lookup::Join(seq) => {
                // An error keeps the quote of its earliest hop, which the
                // engine compares with that hop's addresses.
                if let Some(q) = obs.quote
                    && obs.hop.ts_ns < self.pending.get(seq).first_ns()
                {
                    self.quotes.insert(seq, q);
                }
                if !self.pending.get_mut(seq).add(&obs) {
                    self.stats.hop_overflow += 1;
                }
            }
            Lookup::New { repeated } => {
                self.stats.repeated_hook += u64::from(repeated);
                self.start(&obs, sink);
            }
        }
        self.expire(SWEEP_PER_PACKET, sink);
    }

    /// Tells the engine the kernel time is at least `now_ns`: closes the
    /// journeys whose window has passed and ends idle flows.
    pub fn advance(&mut self, now_ns: u64, mut sink: impl FnMut(Update<'_>)) {
        self.now = self.now.max(now_ns);
        self.expire(self.flows.slots(), &mut sink);
    }

    /// Closes every pending journey now (at exit); flows stay.
    pub fn flush(&mut self, mut sink: impl FnMut(Update<'_>)) {
        while let Some(seq) = self.pending.oldest() {
            self.close(seq, false, &mut sink);
        }
    }

    /// Files a packet the kernel dropped with its flow, found by the
    /// packet's addresses as the drop saw them (any hop's, NAT's included),
    /// or else by its journey, still open, whose fingerprint NAT does not
    /// change: a packet dropped after a DNAT that no hook saw carries
    /// addresses no flow knows, and the flow is filed with the drop when
    /// the journey closes. False when neither is there yet (call again
    /// once the packet's hops have come in), or the packet is not one the
    /// engine follows.
    pub fn note_drop(
        &mut self,
        pkt: &Packet,
        drop: &KernelDrop,
        mut sink: impl FnMut(Update<'_>),
    ) -> bool {
        let Some(obs) = journey::observe(pkt) else {
            return false;
        };
        let drop = &KernelDrop {
            tuple: obs.hop.tuple,
            ..drop.clone()
        };
        // A dropped ICMP error (a "fragmentation needed" that never came
        // back) belongs to the flow of the packet it quotes, and went the
        // other way.
        let found = match obs.quote {
            Some(q) => self.flows.find(&q).map(|(slot, side)| {
                let back = match side {
                    Side::Request => Side::Reply,
                    Side::Reply => Side::Request,
                };
                (slot, back)
            }),
            None => self.flows.find(&obs.hop.tuple),
        };
        let Some((slot, side)) = found else {
            let mut obs = obs;
            obs.fp_hash = self.pending.hash(obs.fp);
            // No hook saw the drop: it repeats none of the journey's.
            obs.hop.hook = u32::MAX;
            if let Lookup::Join(seq) = self.pending.find(&obs, self.cfg.window_ns) {
                self.awaiting.insert(seq, drop.clone());
                return true;
            }
            return false;
        };
        self.flows.note_drop(slot, side, drop);
        if self.cfg.changes_by_id {
            sink(Update::FlowChanged {
                id: self.flows.id_at(slot),
            });
        } else {
            sink(Update::Flow(self.flows.view(slot, &self.places)));
        }
        true
    }

    /// Re-reads the topology (interfaces, roles, pod names changed).
    pub fn refresh_topology(&mut self, topo: &Topology) {
        self.places.rebuild(topo);
    }

    /// Attributes the kernel's exact per-hook counters (as summed by
    /// [`crate::kernel::sum_flow`]) to flows: each direction of a flow
    /// takes the counters of its first hop's hook and tuple. Counters are
    /// cumulative and replace earlier ones; progress keeps a flow alive.
    /// Reports each changed flow; returns how many entries were used.
    pub fn merge_kernel_counters<'a>(
        &mut self,
        entries: impl IntoIterator<Item = (&'a FlowKey, &'a FlowStats)>,
        mut sink: impl FnMut(Update<'_>),
    ) -> usize {
        self.flows
            .merge_kernel(entries, &self.places, self.cfg.changes_by_id, &mut sink)
    }

    /// Attaches conntrack's entry to a flow; `false` if the flow is gone.
    pub fn set_conntrack(&mut self, id: FlowId, info: ConntrackInfo) -> bool {
        self.flows.set_conntrack(id, info)
    }

    /// A copy of a live flow. The engine keeps flows compact (about 200
    /// bytes each) and makes their public record when asked.
    pub fn flow(&self, id: FlowId) -> Option<Flow> {
        self.flows.by_id(id, &self.places)
    }

    /// Calls `f` with each live flow, in no particular order: cheaper than
    /// [`Self::flows`], which copies each.
    pub fn each_flow(&self, f: impl FnMut(&Flow)) {
        self.flows.each(&self.places, f);
    }

    /// Copies of the live flows, in no particular order.
    pub fn flows(&self) -> impl Iterator<Item = Flow> + '_ {
        self.flows.iter(&self.places)
    }

    /// Kernel time as far as the engine knows (latest packet or advance).
    pub fn now_ns(&self) -> u64 {
        self.now
    }

    /// Counters and table sizes.
    pub fn stats(&self) -> Stats {
        Stats {
            pending: self.pending.len(),
            pending_index: self.pending.index_len(),
            flows: self.flows.len(),
            flow_aliases: self.flows.aliases(),
            flows_evicted: self.flows.evicted,
            flows_expired: self.flows.expired,
            flows_replaced: self.flows.replaced,
            alias_overflow: self.flows.alias_overflow,
            ..self.stats
        }
    }

    fn start(&mut self, obs: &Observed, sink: Sink<'_>) {
        if let Some(oldest) = self.pending.must_close() {
            self.stats.pending_evicted += 1;
            self.close(oldest, true, sink);
        }
        let seq = self.pending.insert(obs);
        if let Some(q) = obs.quote {
            self.quotes.insert(seq, q);
        }
    }

    /// Closes the journeys whose window passed, and looks at up to
    /// `flow_budget` flows for idleness.
    fn expire(&mut self, flow_budget: usize, sink: Sink<'_>) {
        while let Some(seq) = self.pending.oldest() {
            let last = self.pending.get(seq).last_ns();
            if last.saturating_add(self.cfg.window_ns) >= self.now {
                break;
            }
            self.close(seq, false, sink);
        }
        self.flows.expire(self.now, flow_budget, &self.places, sink);
    }

    /// Journeys close in ring order: the flows of the next ones are read
    /// ahead, one step of each lookup per close, so that each step finds
    /// the line the step before asked for.
    fn prefetch_ahead(&self) {
        for (k, step) in [(12, 0), (8, 1), (4, 2)] {
            if let Some(h) = self.pending.ahead(k).and_then(|p| p.hops().first()) {
                self.flows.prefetch(&h.tuple, step);
            }
        }
    }

    /// If pending journey `seq` is an ICMP error, notes what it quotes in
    /// the journey being closed, and finds the flow of the quoted packet:
    /// the error belongs to it, and goes the other way. Out of line, as
    /// errors are rare: the common close stays small enough to inline
    /// what it calls.
    #[cold]
    #[inline(never)]
    fn error_about(&mut self, seq: u64) -> Option<(u32, Side)> {
        let q = self.quotes.remove(&seq)?;
        self.scratch.quote = Some(q);
        // An error goes to the quoted packet's sender: one that does not
        // (forged, or misrouted) is not that packet's answer.
        let to = self.scratch.hops.first().map(|h| h.tuple.dst);
        if to != Some(q.src) {
            // Not an answer to the packet it names: a plain ICMP message.
            self.scratch.quote = None;
            return None;
        }
        let (slot, quoted) = self.flows.find(&q)?;
        Some(match quoted {
            Side::Request => (slot, Side::Reply),
            Side::Reply => (slot, Side::Request),
        })
    }

    /// Closes pending journey `seq`: builds it, finds its flow, judges it,
    /// reports it, and folds it into the flow. `full`: the table needs the
    /// room; the journey counts as cut short unless it had settled.
    fn close(&mut self, seq: u64, full: bool, sink: Sink<'_>) {
        self.prefetch_ahead();
        let p = self.pending.get(seq);
        let evicted = full && p.last_ns().saturating_add(self.cfg.settle_ns) >= self.now;
        let judged = !evicted && p.judged(self.cfg.complete_reports);
        journey::build(p, &self.places, &mut self.scratch);
        let n = p.hops().len();
        for (to, from) in self.hops.iter_mut().zip(p.hops()) {
            *to = FlowHop::of(from);
        }
        self.pending.remove(seq);
        let about = if self.quotes.is_empty() {
            None
        } else {
            self.error_about(seq)
        };
        let j = &mut self.scratch;
        j.evicted = evicted;
        let (slot, side) = match about {
            Some(found) => found,
            None => self.flows.locate(j, &self.places, sink),
        };
        j.flow = self.flows.id(slot);
        j.side = side;
        journey::orient(j);
        if judged {
            let client = self.flows.client(slot, &self.places);
            j.incomplete =
                journey::expected_next(j, client, &self.places).map(|expected| Incomplete {
                    last_seen: j.hops.last().expect("a journey has a hop").clone(),
                    expected,
                });
        }
        self.stats.journeys += 1;
        self.stats.incomplete_journeys += u64::from(j.incomplete.is_some());
        sink(Update::Journey(j));
        if about.is_some() {
            self.flows.note_error(slot, j, &self.hops[..n], false);
        } else {
            self.flows.absorb(slot, j, &self.hops[..n], !judged);
            if j.quote.is_some() {
                // An error about a packet no hook saw: a flow of its own,
                // which still says what it answers.
                self.flows.note_error(slot, j, &self.hops[..n], true);
            }
        }
        if !self.awaiting.is_empty()
            && let Some(d) = self.awaiting.remove(&seq)
        {
            self.flows.note_drop(slot, side, &d);
        }
        if self.cfg.changes_by_id {
            sink(Update::FlowChanged {
                id: self.flows.id_at(slot),
            });
        } else {
            sink(Update::Flow(self.flows.view(slot, &self.places)));
        }
    }
}

//! The flow table: journeys grouped into conversations, both directions,
//! NATed replies included. A flow is found through every tuple its
//! journeys showed at any hop (its aliases), so a reply addressed to a
//! SNATed source finds the request that was SNATed.
//!
//! A flow is kept small (a 128-byte record and its hops, 32 bytes each):
//! what the public [`Flow`] derives from its paths (tuple, pods, ENIs,
//! rewrites, latency, labels) is derived again when the flow is reported,
//! into one [`Flow`] the table reuses, and what few flows have (kernel
//! counters, conntrack, an incomplete outcome, many aliases) is boxed.

use std::{net::Ipv4Addr, sync::Arc};

use tracer_common::{Direction, FlowKey, FlowStats};

use super::{
    EndReason, Sink, Update,
    flow_model::{ConntrackInfo, Flow, FlowId, IcmpError, KernelCounters, KernelDrop},
    journey::{self, RawHop, icmp_ports},
    journey_model::{Expected, Incomplete, Journey, Side},
    model::{Dir, Hop, Place, Shared, Tuple},
    paths,
    places::Places,
    table::{ClockSlab, Map, OpenMap, map_with_capacity, prefetch},
};

/// Most distinct tuples one flow is known by (pod side, after SNAT, after
/// DNAT, after both, ...).
const MAX_ALIASES: usize = 6;
/// Aliases kept in the record; more go to its [`Extra`].
const INLINE_ALIASES: usize = 2;

/// A conversation key: a tuple with its two ends in a fixed order, so that
/// both directions give the same key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ConvKey {
    proto: u8,
    a: (u32, u16),
    b: (u32, u16),
}

impl std::hash::Hash for ConvKey {
    /// Two words rather than five fields.
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_u64(u64::from(self.a.0) << 32 | u64::from(self.b.0));
        h.write_u64(u64::from(self.a.1) << 32 | u64::from(self.b.1) << 16 | u64::from(self.proto));
    }
}

impl ConvKey {
    fn of(t: &Tuple) -> Self {
        let x = (u32::from(t.src), t.sport);
        let y = (u32::from(t.dst), t.dport);
        let (a, b) = if x <= y { (x, y) } else { (y, x) };
        Self {
            proto: t.proto,
            a,
            b,
        }
    }
}

/// Addresses and ports of a tuple; the protocol is the flow's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Ends {
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
}

impl Ends {
    fn of(t: &Tuple) -> Self {
        Self {
            src: t.src.into(),
            dst: t.dst.into(),
            sport: t.sport,
            dport: t.dport,
        }
    }

    fn tuple(self, proto: u8) -> Tuple {
        Tuple {
            proto,
            src: Ipv4Addr::from(self.src),
            sport: self.sport,
            dst: Ipv4Addr::from(self.dst),
            dport: self.dport,
        }
    }
}

/// A hop as a flow keeps it: the place by its hook id, the time since the
/// journey's first hop derived from the first hop's time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FlowHop {
    ts_ns: u64,
    ends: Ends,
    hook: u32,
    dir: Dir,
    ttl: u8,
}

impl FlowHop {
    pub(crate) fn of(h: &RawHop) -> Self {
        Self {
            ts_ns: h.ts_ns,
            ends: Ends::of(&h.tuple),
            hook: h.hook,
            dir: h.dir,
            ttl: h.ttl,
        }
    }

    /// Same hook, direction and tuple.
    fn same_shape(&self, o: &Self) -> bool {
        (self.hook, self.dir, self.ends) == (o.hook, o.dir, o.ends)
    }
}

/// Journeys, bytes and incomplete journeys of one direction.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    packets: u64,
    bytes: u64,
    incomplete_packets: u64,
}

/// How long a flow's path stays when a shorter journey from partial
/// reports comes (see [`Flows::absorb`]).
const KEEP_LONGER_NS: u64 = 1_000_000_000;

/// How soon after a request's drop an answer's drop is taken for the
/// answer to that request (see [`Flows::note_drop`]).
const ANSWER_NS: u64 = 1_000_000_000;

/// What few flows have, out of line.
#[derive(Debug, Default)]
struct Extra {
    /// Aliases past the inline ones.
    aliases: Vec<Ends>,
    /// Where the latest journey of each side should have gone, when it
    /// stopped short.
    expected: [Option<Expected>; 2],
    kernel: [Option<KernelCounters>; 2],
    conntrack: Option<ConntrackInfo>,
    error: Option<ErrorRec>,
    drop: Option<KernelDrop>,
}

/// The latest ICMP error about a flow's packets, as the flow keeps it.
#[derive(Debug)]
struct ErrorRec {
    ty: u8,
    code: u8,
    /// The header's MTU half (fragmentation needed).
    mtu: u16,
    quote: Tuple,
    alone: bool,
    answers: Side,
    packets: u64,
    /// Its hops; their protocol is ICMP, not the flow's.
    hops: Box<[FlowHop]>,
}

/// One flow, as the table keeps it: two cache lines.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Rec {
    id: u64,
    first_ns: u64,
    last_ns: u64,
    counts: [Counts; 2],
    /// Hops of the latest journey of each side: the request's `n_req`
    /// first, then the reply's.
    hops: Box<[FlowHop]>,
    n_req: u8,
    proto: u8,
    n_aliases: u8,
    /// ISN of the request's SYN: another SYN on the same tuple is a new
    /// connection.
    has_syn: bool,
    syn_seq: u32,
    /// Request-oriented tuples this flow is known by (the first ones).
    aliases: [Ends; INLINE_ALIASES],
    extra: Option<Box<Extra>>,
}

/// Index of a side in a record's arrays.
fn ix(side: Side) -> usize {
    match side {
        Side::Request => 0,
        Side::Reply => 1,
    }
}

impl Rec {
    fn side_hops(&self, i: usize) -> &[FlowHop] {
        let n = usize::from(self.n_req);
        if i == 0 {
            &self.hops[..n]
        } else {
            &self.hops[n..]
        }
    }

    fn set_side_hops(&mut self, i: usize, new: &[FlowHop]) {
        let (req, rep) = if i == 0 {
            (new, self.side_hops(1))
        } else {
            (self.side_hops(0), new)
        };
        let n_req = req.len() as u8;
        self.hops = req.iter().chain(rep).copied().collect();
        self.n_req = n_req;
    }

    fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    fn alias(&self, i: usize) -> Ends {
        match self.aliases.get(i) {
            Some(&a) => a,
            None => {
                self.extra
                    .as_ref()
                    .expect("aliases past the inline ones")
                    .aliases[i - INLINE_ALIASES]
            }
        }
    }

    fn has_alias(&self, e: Ends) -> bool {
        (0..usize::from(self.n_aliases)).any(|i| self.alias(i) == e)
    }

    fn push_alias(&mut self, e: Ends) {
        let n = usize::from(self.n_aliases);
        if n < INLINE_ALIASES {
            self.aliases[n] = e;
        } else {
            self.extra_mut().aliases.push(e);
        }
        self.n_aliases += 1;
    }

    fn side_of(&self, t: &Tuple) -> Option<Side> {
        if t.proto != self.proto {
            return None;
        }
        if self.has_alias(Ends::of(t)) {
            Some(Side::Request)
        } else if self.has_alias(Ends::of(&t.reversed())) {
            Some(Side::Reply)
        } else {
            None
        }
    }

    fn syn_seq(&self) -> Option<u32> {
        self.has_syn.then_some(self.syn_seq)
    }

    /// The client's address: see [`paths::client_view`].
    fn client(&self, places: &Places) -> Ipv4Addr {
        let veth = |h: &&FlowHop, dir| {
            h.dir == dir && places.get_id(h.hook).is_some_and(|p| p.is_pod_veth())
        };
        let (req, rep) = (self.side_hops(0), self.side_hops(1));
        if !req.is_empty() {
            let h = req.iter().find(|h| veth(h, Dir::Ingress)).or(req.first());
            h.map_or(Ipv4Addr::UNSPECIFIED, |h| h.ends.src.into())
        } else {
            let h = rep
                .iter()
                .rev()
                .find(|h| veth(h, Dir::Egress))
                .or(rep.last());
            h.map_or(Ipv4Addr::UNSPECIFIED, |h| h.ends.dst.into())
        }
    }
}

/// Flows, at most `max` of them; when full, CLOCK picks one not active
/// lately to evict.
pub(crate) struct Flows {
    slab: ClockSlab<Rec>,
    /// Last activity per slot, dense, so that the idle sweep reads 8 bytes
    /// a flow instead of the flow.
    last_seen: Vec<u64>,
    /// Next slot the idle sweep looks at.
    sweep: usize,
    by_key: OpenMap<ConvKey, u32>,
    by_id: Map<FlowId, u32>,
    next_id: u64,
    idle_ns: u64,
    /// The flow reported last, reused: once warm, reporting a flow neither
    /// allocates nor touches a reference count.
    view: Flow,
    pub(crate) evicted: u64,
    pub(crate) expired: u64,
    pub(crate) replaced: u64,
    pub(crate) alias_overflow: u64,
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

impl Flows {
    pub(crate) fn new(max: usize, idle_ns: u64, seed: u64) -> Self {
        Self {
            slab: ClockSlab::new(max),
            last_seen: Vec::new(),
            sweep: 0,
            by_key: OpenMap::with_capacity(max.saturating_mul(2), seed),
            by_id: map_with_capacity(max, seed),
            next_id: 1,
            idle_ns,
            view: Flow::default(),
            evicted: 0,
            expired: 0,
            replaced: 0,
            alias_overflow: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.slab.len()
    }

    pub(crate) fn aliases(&self) -> usize {
        self.by_key.len()
    }

    pub(crate) fn id(&self, slot: u32) -> FlowId {
        FlowId(self.slab.get(slot).id)
    }

    /// The client's address of the flow in `slot`, as its tuple says.
    pub(crate) fn client(&self, slot: u32, places: &Places) -> Ipv4Addr {
        self.slab.get(slot).client(places)
    }

    /// The three steps of reading the flow a journey with a hop of tuple
    /// `t` belongs to, as prefetches: its index entry, then (found in the
    /// prefetched entry) its record, then (found in the prefetched record)
    /// its hops. At 100k flows each step is a miss, and closing journeys
    /// in ring order says which flows come next.
    pub(crate) fn prefetch(&self, t: &Tuple, step: u8) {
        let k = ConvKey::of(t);
        if step == 0 {
            self.by_key.prefetch(&k);
            return;
        }
        let Some(s) = self.by_key.get(&k) else {
            return;
        };
        if step == 1 {
            self.slab.prefetch(s);
            prefetch(&raw const self.last_seen[s as usize]);
        } else {
            prefetch(self.slab.get(s).hops.as_ptr());
        }
    }

    /// The flow in `slot`, as reported.
    pub(crate) fn view(&mut self, slot: u32, places: &Places) -> &Flow {
        materialize(self.slab.get(slot), places, &mut self.view);
        &self.view
    }

    /// The id of the flow in `slot`.
    pub(crate) fn id_at(&self, slot: u32) -> FlowId {
        FlowId(self.slab.get(slot).id)
    }

    /// A copy of a live flow.
    pub(crate) fn by_id(&self, id: FlowId, places: &Places) -> Option<Flow> {
        let &s = self.by_id.get(&id)?;
        let mut f = Flow::default();
        materialize(self.slab.get(s), places, &mut f);
        Some(f)
    }

    /// Attaches conntrack's entry to a flow; `false` if the flow is gone.
    pub(crate) fn set_conntrack(&mut self, id: FlowId, info: ConntrackInfo) -> bool {
        let Some(&s) = self.by_id.get(&id) else {
            return false;
        };
        self.slab.get_mut(s).extra_mut().conntrack = Some(info);
        true
    }

    /// Each live flow, made in turn in one reused [`Flow`]: no allocation
    /// per flow.
    pub(crate) fn each(&self, places: &Places, mut f: impl FnMut(&Flow)) {
        let mut view = Flow::default();
        for r in self.slab.iter() {
            materialize(r, places, &mut view);
            f(&view);
        }
    }

    /// Copies of the live flows.
    pub(crate) fn iter<'a>(&'a self, places: &'a Places) -> impl Iterator<Item = Flow> + 'a {
        self.slab.iter().map(|r| {
            let mut f = Flow::default();
            materialize(r, places, &mut f);
            f
        })
    }

    /// The flow that knows tuple `t` (at any hop), and which side `t` is
    /// on in it.
    pub(crate) fn find(&self, t: &Tuple) -> Option<(u32, Side)> {
        let s = self.by_key.get(&ConvKey::of(t))?;
        Some((s, self.slab.get(s).side_of(t)?))
    }

    /// Keeps ICMP error `j` (located with [`Self::find`], its `side` the
    /// way it went) as flow `s`'s latest; `hops` are its hops as the flow
    /// keeps them. The flow's own counters and paths stay as they are.
    #[cold]
    #[inline(never)]
    /// `alone`: no traced hook saw the quoted packet, and the error's
    /// flow is its own.
    pub(crate) fn note_error(&mut self, s: u32, j: &Journey, hops: &[FlowHop], alone: bool) {
        let (Some(icmp), Some(quote)) = (j.icmp, j.quote) else {
            return;
        };
        self.slab.touch(s);
        let r = self.slab.get_mut(s);
        let answers = match j.side {
            Side::Request => Side::Reply,
            Side::Reply => Side::Request,
        };
        let extra = r.extra_mut();
        let same = |e: &&ErrorRec| (e.ty, e.code) == (icmp.ty, icmp.code);
        let packets = extra.error.as_ref().filter(same).map_or(0, |e| e.packets) + 1;
        extra.error = Some(ErrorRec {
            ty: icmp.ty,
            code: icmp.code,
            mtu: icmp.seq,
            quote,
            alone,
            answers,
            packets,
            hops: hops.into(),
        });
        let last = j.hops.last().map_or(j.first_ns, |h| h.ts_ns);
        r.last_ns = r.last_ns.max(last);
        self.last_seen[s as usize] = r.last_ns;
    }

    /// Keeps a kernel drop (its `side` located with [`Self::find`]) as
    /// flow `s`'s latest, counting it; but not an answer's, within
    /// [`ANSWER_NS`] of a request's.
    #[cold]
    #[inline(never)]
    /// The count is of drops like the latest (same side and reason), as
    /// an ICMP error's is of errors of its kind.
    pub(crate) fn note_drop(&mut self, s: u32, side: Side, d: &KernelDrop) {
        self.slab.touch(s);
        let extra = self.slab.get_mut(s).extra_mut();
        // A request dropped is the story: an answer dropped soon after (the
        // ICMP error a REJECT sent, a RST made on the way) does not hide it.
        if side == Side::Reply
            && extra.drop.as_ref().is_some_and(|p| {
                p.side == Side::Request && d.ts_ns.saturating_sub(p.ts_ns) < ANSWER_NS
            })
        {
            return;
        }
        let same = extra
            .drop
            .as_ref()
            .filter(|p| p.side == side && p.reason == d.reason);
        let packets = same.map_or(0, |p| p.packets) + 1;
        extra.drop = Some(KernelDrop {
            side,
            packets,
            ..d.clone()
        });
    }

    /// Finds (or makes) the flow of a journey, and which side it is on.
    pub(crate) fn locate(&mut self, j: &Journey, places: &Places, sink: Sink<'_>) -> (u32, Side) {
        let hit = j.hops.iter().find_map(|h| {
            let s = self.by_key.get(&ConvKey::of(&h.tuple))?;
            Some((s, self.slab.get(s).side_of(&h.tuple)?))
        });
        if let Some((s, side)) = hit {
            let new_syn = pure_syn(j).filter(|_| side == Side::Request);
            match (new_syn, self.slab.get(s).syn_seq()) {
                (Some(seq), Some(old)) if seq != old => {
                    self.replaced += 1;
                    self.end(s, EndReason::Replaced, places, sink);
                }
                _ => return (s, side),
            }
        }
        let s = match self.slab.alloc() {
            Some(s) => s,
            None => {
                let old = self.slab.victim().expect("a full table has a victim");
                self.evicted += 1;
                self.end(old, EndReason::Evicted, places, sink);
                self.slab.alloc().expect("a slot was just freed")
            }
        };
        if s as usize == self.last_seen.len() {
            self.last_seen.push(0);
        }
        let id = FlowId(self.next_id);
        self.next_id += 1;
        *self.slab.get_mut(s) = Rec {
            id: id.0,
            proto: j.proto,
            ..Rec::default()
        };
        self.by_id.insert(id, s);
        (
            s,
            if looks_like_reply(j) {
                Side::Reply
            } else {
                Side::Request
            },
        )
    }

    /// Folds a located journey (its `side` set) into its flow; `hops` are
    /// its hops as the flow keeps them.
    /// `partial`: the journey comes from reports that need not cover every
    /// hook (flows mode's first packets, sampling, a filter), so fewer
    /// hops prove nothing: it does not replace a longer path of the last
    /// [`KEEP_LONGER_NS`].
    pub(crate) fn absorb(&mut self, s: u32, j: &Journey, hops: &[FlowHop], partial: bool) {
        self.register_aliases(s, j);
        self.slab.touch(s);
        let r = self.slab.get_mut(s);
        if j.side == Side::Request
            && pure_syn(j).is_some()
            && let Some(t) = j.tcp
        {
            (r.has_syn, r.syn_seq) = (true, t.seq);
        }
        let i = ix(j.side);
        let c = &mut r.counts[i];
        c.packets += 1;
        c.bytes += u64::from(j.bytes);
        c.incomplete_packets += u64::from(j.incomplete.is_some());
        // Steady state: the same hooks and tuples as last time, so only the
        // times change (what the path derives stays the same).
        let old = r.side_hops(i);
        let keep = partial
            && hops.len() < old.len()
            && old
                .last()
                .zip(hops.first())
                .is_some_and(|(o, h)| h.ts_ns.saturating_sub(o.ts_ns) < KEEP_LONGER_NS);
        if keep {
            // Each hook reports a flow's first packets on its own: after
            // the restart of the counts, or by sampling, one packet can be
            // reported at some hooks only.
        } else if old.len() == hops.len() && old.iter().zip(hops).all(|(a, b)| a.same_shape(b)) {
            let n = usize::from(r.n_req);
            let at = if i == 0 { 0 } else { n };
            for (a, b) in r.hops[at..at + hops.len()].iter_mut().zip(hops) {
                (a.ts_ns, a.ttl) = (b.ts_ns, b.ttl);
            }
        } else {
            r.set_side_hops(i, hops);
        }
        let was_complete = r.extra.as_ref().is_none_or(|e| e.expected[i].is_none());
        if !(was_complete && j.incomplete.is_none()) {
            r.extra_mut().expected[i] = j.incomplete.as_ref().map(|x| x.expected.clone());
        }
        let last = j.hops.last().map_or(j.first_ns, |h| h.ts_ns);
        r.first_ns = if r.first_ns == 0 {
            j.first_ns
        } else {
            r.first_ns.min(j.first_ns)
        };
        r.last_ns = r.last_ns.max(last);
        self.last_seen[s as usize] = r.last_ns;
    }

    /// Registers the tuples of a journey as aliases of flow `s`; a tuple
    /// another flow already owns is left to it.
    fn register_aliases(&mut self, s: u32, j: &Journey) {
        for h in &j.hops {
            let t = match j.side {
                Side::Request => h.tuple,
                Side::Reply => h.tuple.reversed(),
            };
            let e = Ends::of(&t);
            let r = self.slab.get_mut(s);
            if r.has_alias(e) {
                continue;
            }
            if usize::from(r.n_aliases) == MAX_ALIASES {
                self.alias_overflow += 1;
                continue;
            }
            let owner = self.by_key.get_or_insert(ConvKey::of(&t), s);
            if owner == s {
                r.push_alias(e);
            }
        }
    }

    /// Ends flows idle for longer than the idle timeout at `now`, looking
    /// at up to `budget` slots from where the last sweep stopped.
    pub(crate) fn expire(&mut self, now: u64, budget: usize, places: &Places, sink: Sink<'_>) {
        let n = self.last_seen.len();
        for _ in 0..budget.min(n) {
            let s = self.sweep;
            self.sweep += 1;
            if self.sweep == n {
                self.sweep = 0;
            }
            if self.last_seen[s].saturating_add(self.idle_ns) < now && self.slab.is_live(s as u32) {
                self.expired += 1;
                self.end(s as u32, EndReason::Idle, places, sink);
            }
        }
    }

    /// Slots the idle sweep covers.
    pub(crate) fn slots(&self) -> usize {
        self.slab.slots()
    }

    fn end(&mut self, s: u32, reason: EndReason, places: &Places, sink: Sink<'_>) {
        sink(Update::FlowEnded {
            flow: self.view(s, places),
            reason,
        });
        let r = self.slab.get_mut(s);
        for i in 0..usize::from(r.n_aliases) {
            let k = ConvKey::of(&r.alias(i).tuple(r.proto));
            if self.by_key.get(&k) == Some(s) {
                self.by_key.remove(&k);
            }
        }
        self.by_id.remove(&FlowId(r.id));
        // Gives back what the flow held beyond its record.
        (r.hops, r.extra) = (Box::default(), None);
        self.slab.free(s);
    }

    /// Sets the kernel counters of each flow direction from the entry of
    /// its first hop (hook and tuple); other hooks' entries are ignored.
    /// Counters are cumulative, so they replace what was there.
    pub(crate) fn merge_kernel<'a>(
        &mut self,
        entries: impl IntoIterator<Item = (&'a FlowKey, &'a FlowStats)>,
        places: &Places,
        by_id: bool,
        sink: Sink<'_>,
    ) -> usize {
        let mut n = 0;
        for (k, st) in entries {
            let t = tuple_of_key(k);
            let Some(s) = self.by_key.get(&ConvKey::of(&t)) else {
                continue;
            };
            let r = self.slab.get_mut(s);
            let Some(side) = r.side_of(&t) else {
                continue;
            };
            let i = ix(side);
            let dir = Direction::from_u32(u32::from(k.direction)).map(Dir::from);
            let Some(entry) = r.side_hops(i).first() else {
                continue;
            };
            let (cookie, ifindex) = places.hook(entry.hook);
            if (cookie, ifindex, Some(entry.dir), entry.ends.tuple(r.proto))
                != (k.netns_cookie, k.ifindex, dir, t)
            {
                continue;
            }
            // A journey that a later hook alone saw (a retransmission the
            // first hook did not report, in flows mode) moves the entry
            // hop to where fewer packets were counted: counts that went
            // down would hide what the client sent.
            if r.extra
                .as_ref()
                .and_then(|e| e.kernel[i])
                .is_some_and(|old| old.packets > st.packets)
            {
                continue;
            }
            r.extra_mut().kernel[i] = Some(KernelCounters {
                packets: st.packets,
                bytes: st.bytes,
                first_ns: st.first_ns,
                last_ns: st.last_ns,
                tcp_flags: st.tcp_flags,
            });
            if st.last_ns > r.last_ns {
                r.last_ns = st.last_ns;
                self.last_seen[s as usize] = st.last_ns;
                self.slab.touch(s);
            }
            n += 1;
            if by_id {
                sink(Update::FlowChanged { id: self.id_at(s) });
            } else {
                sink(Update::Flow(self.view(s, places)));
            }
        }
        n
    }
}

/// Writes the public record of `r` into `out`, reusing its vectors and the
/// references it holds where they still point at the right place.
fn materialize(r: &Rec, places: &Places, out: &mut Flow) {
    out.id = FlowId(r.id);
    for (i, side) in [&mut out.request, &mut out.reply].into_iter().enumerate() {
        fill_path(&mut side.path, r.side_hops(i), r.proto, places);
        journey::fill_rewrites(&mut side.rewrites, &side.path, i == 1);
        let c = r.counts[i];
        (side.packets, side.bytes, side.incomplete_packets) =
            (c.packets, c.bytes, c.incomplete_packets);
        let extra = r.extra.as_deref();
        side.incomplete = extra
            .and_then(|e| e.expected[i].as_ref())
            .map(|e| Incomplete {
                last_seen: side
                    .path
                    .last()
                    .expect("an incomplete side has a path")
                    .clone(),
                expected: e.clone(),
            });
        side.latency = paths::latency(&side.path);
        side.kernel = extra.and_then(|e| e.kernel[i]);
    }
    out.tuple = if !out.request.path.is_empty() {
        paths::client_view(&out.request.path, Side::Request)
    } else {
        paths::client_view(&out.reply.path, Side::Reply)
    };
    let server = match (out.request.path.last(), out.reply.path.first()) {
        (Some(h), _) => Some(h.tuple.dst),
        (None, Some(h)) => Some(h.tuple.src),
        (None, None) => None,
    };
    set_place(&mut out.client_pod, places.pod(out.tuple.src));
    set_place(&mut out.server_pod, server.and_then(|ip| places.pod(ip)));
    match r.extra.as_ref().and_then(|e| e.error.as_ref()) {
        Some(e) => {
            let out = out.icmp_error.get_or_insert_with(|| IcmpError {
                ty: 0,
                code: 0,
                name: "",
                mtu: None,
                from: Ipv4Addr::UNSPECIFIED,
                sender: None,
                quote: Tuple::default(),
                quote_unseen: false,
                answers: Side::Request,
                packets: 0,
                path: Vec::new(),
                rewrites: Vec::new(),
            });
            fill_path(&mut out.path, &e.hops, 1, places);
            journey::fill_rewrites(&mut out.rewrites, &out.path, e.answers == Side::Request);
            (out.ty, out.code, out.answers, out.packets) = (e.ty, e.code, e.answers, e.packets);
            out.name = crate::decode::icmp_name(e.ty, e.code).unwrap_or("icmp error");
            out.mtu = ((e.ty, e.code) == (3, 4)).then_some(e.mtu);
            out.from = out
                .path
                .first()
                .map_or(Ipv4Addr::UNSPECIFIED, |h| h.tuple.src);
            let sender = places.pod(out.from).or_else(|| places.eni_addr(out.from));
            set_place(&mut out.sender, sender);
            (out.quote, out.quote_unseen) = (e.quote, e.alone);
        }
        None => out.icmp_error = None,
    }
    out.drop = r.extra.as_ref().and_then(|e| e.drop.clone());
    paths::summarize(out);
    out.conntrack = r.extra.as_ref().and_then(|e| e.conntrack.clone());
    out.first_ns = r.first_ns;
    out.last_ns = r.last_ns;
    out.reset_on_the_way = super::format::reset_on_the_way(out);
}

/// Sets `slot` to `new`, leaving it alone if it already holds that place.
fn set_place(slot: &mut Option<Shared<Place>>, new: Option<&Shared<Place>>) {
    let same = match (&*slot, new) {
        (Some(a), Some(b)) => Arc::ptr_eq(&a.0, &b.0),
        (None, None) => true,
        _ => false,
    };
    if !same {
        *slot = new.cloned();
    }
}

/// The hops of a path, as [`super::journey::build`] made them.
fn fill_path(path: &mut Vec<Hop>, hops: &[FlowHop], proto: u8, places: &Places) {
    path.truncate(hops.len());
    let first = hops.first().map_or(0, |h| h.ts_ns);
    for (i, h) in hops.iter().enumerate() {
        let since_first_ns = h.ts_ns.saturating_sub(first);
        let tuple = h.ends.tuple(proto);
        match path.get_mut(i) {
            Some(old) => {
                if !places.is_id(&old.place, h.hook) {
                    old.place = places.resolve_id(h.hook);
                }
                (old.dir, old.ts_ns, old.since_first_ns) = (h.dir, h.ts_ns, since_first_ns);
                (old.tuple, old.ttl) = (tuple, h.ttl);
            }
            None => path.push(Hop {
                place: places.resolve_id(h.hook),
                dir: h.dir,
                ts_ns: h.ts_ns,
                since_first_ns,
                tuple,
                ttl: h.ttl,
            }),
        }
    }
}

fn pure_syn(j: &Journey) -> Option<u32> {
    j.tcp
        .filter(|t| t.flags & (SYN | ACK) == SYN)
        .map(|t| t.seq)
}

/// A journey that opens a flow is its request, unless it is plainly an
/// answer: an ICMP echo/timestamp reply or error, or a TCP SYN-ACK.
fn looks_like_reply(j: &Journey) -> bool {
    j.quote.is_some()
        || j.icmp.is_some_and(|i| matches!(i.ty, 0 | 14))
        || j.tcp.is_some_and(|t| t.flags & (SYN | ACK) == SYN | ACK)
}

/// The tuple of a kernel counter key, in [`Tuple`]'s convention.
fn tuple_of_key(k: &FlowKey) -> Tuple {
    let (sport, dport) = if k.proto == 1 {
        icmp_ports((k.dport >> 8) as u8, k.sport)
    } else {
        (k.sport, k.dport)
    };
    Tuple {
        proto: k.proto,
        src: k.src.into(),
        sport,
        dst: k.dst.into(),
        dport,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_record_stays_small() {
        assert!(size_of::<Rec>() <= 128, "{}", size_of::<Rec>());
        assert!(size_of::<FlowHop>() <= 32, "{}", size_of::<FlowHop>());
    }
}

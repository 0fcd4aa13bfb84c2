//! The flow table: journeys grouped into conversations, both directions,
//! NATed replies included. A flow is found through every tuple its
//! journeys showed at any hop (its aliases), so a reply addressed to a
//! SNATed source finds the request that was SNATed.

use tracer_common::{Direction, FlowKey, FlowStats};

use super::{
    EndReason, Sink, Update,
    flow_model::{Flow, FlowId, FlowSide, KernelCounters, Labels},
    journey::icmp_ports,
    journey_model::{Journey, Side},
    model::{Dir, Tuple},
    paths,
    places::Places,
    table::{ClockSlab, Map, map_with_capacity},
};

/// Most distinct tuples one flow is known by (pod side, after SNAT, after
/// DNAT, after both, ...).
const MAX_ALIASES: usize = 6;

/// A conversation key: a tuple with its two ends in a fixed order, so that
/// both directions give the same key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ConvKey {
    proto: u8,
    a: (u32, u16),
    b: (u32, u16),
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

#[derive(Default)]
struct Slot {
    flow: Flow,
    /// Request-oriented tuples this flow is known by.
    aliases: [Tuple; MAX_ALIASES],
    n_aliases: usize,
    /// ISN of the request's SYN: another SYN on the same tuple is a new
    /// connection.
    syn_seq: Option<u32>,
}

impl Slot {
    fn side_of(&self, t: &Tuple) -> Option<Side> {
        let aliases = &self.aliases[..self.n_aliases];
        if aliases.contains(t) {
            Some(Side::Request)
        } else if aliases.contains(&t.reversed()) {
            Some(Side::Reply)
        } else {
            None
        }
    }
}

/// Flows, at most `max` of them; when full, CLOCK picks one not active
/// lately to evict.
pub(crate) struct Flows {
    slab: ClockSlab<Slot>,
    /// Last activity per slot, dense, so that the idle sweep reads 8 bytes
    /// a flow instead of the flow.
    last_seen: Vec<u64>,
    /// Next slot the idle sweep looks at.
    sweep: usize,
    by_key: Map<ConvKey, u32>,
    by_id: Map<FlowId, u32>,
    next_id: u64,
    idle_ns: u64,
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
            by_key: map_with_capacity(max.saturating_mul(2), seed),
            by_id: map_with_capacity(max, seed),
            next_id: 1,
            idle_ns,
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

    pub(crate) fn get(&self, slot: u32) -> &Flow {
        &self.slab.get(slot).flow
    }

    pub(crate) fn by_id(&self, id: FlowId) -> Option<&Flow> {
        self.by_id.get(&id).map(|&s| self.get(s))
    }

    pub(crate) fn by_id_mut(&mut self, id: FlowId) -> Option<&mut Flow> {
        let s = *self.by_id.get(&id)?;
        Some(&mut self.slab.get_mut(s).flow)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Flow> {
        self.slab.iter().map(|s| &s.flow)
    }

    /// Finds (or makes) the flow of a journey, and which side it is on.
    pub(crate) fn locate(&mut self, j: &Journey, sink: Sink<'_>) -> (u32, Side) {
        let hit = j.hops.iter().find_map(|h| {
            let &s = self.by_key.get(&ConvKey::of(&h.tuple))?;
            Some((s, self.slab.get(s).side_of(&h.tuple)?))
        });
        if let Some((s, side)) = hit {
            let new_syn = pure_syn(j).filter(|_| side == Side::Request);
            match (new_syn, self.slab.get(s).syn_seq) {
                (Some(seq), Some(old)) if seq != old => {
                    self.replaced += 1;
                    self.end(s, EndReason::Replaced, sink);
                }
                _ => return (s, side),
            }
        }
        let s = match self.slab.alloc() {
            Some(s) => s,
            None => {
                let old = self.slab.victim().expect("a full table has a victim");
                self.evicted += 1;
                self.end(old, EndReason::Evicted, sink);
                self.slab.alloc().expect("a slot was just freed")
            }
        };
        if s as usize == self.last_seen.len() {
            self.last_seen.push(0);
        }
        let id = FlowId(self.next_id);
        self.next_id += 1;
        let slot = self.slab.get_mut(s);
        reset(&mut slot.flow, id);
        slot.n_aliases = 0;
        slot.syn_seq = None;
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

    /// Folds a located journey (its `side` set) into its flow.
    pub(crate) fn absorb(&mut self, s: u32, j: &Journey, places: &Places) {
        self.register_aliases(s, j);
        self.slab.touch(s);
        let slot = self.slab.get_mut(s);
        if j.side == Side::Request && pure_syn(j).is_some() {
            slot.syn_seq = j.tcp.map(|t| t.seq);
        }
        let f = &mut slot.flow;
        let side = match j.side {
            Side::Request => &mut f.request,
            Side::Reply => &mut f.reply,
        };
        side.packets += 1;
        side.bytes += u64::from(j.bytes);
        side.incomplete_packets += u64::from(j.incomplete.is_some());
        // Steady state: the same hooks and tuples as last time, so only the
        // times change, and what is derived from the path still holds.
        let same_path = paths::same_shape(&side.path, &j.hops);
        if same_path {
            paths::retime(&mut side.path, &j.hops);
        } else {
            side.path.clone_from(&j.hops);
            side.rewrites.clone_from(&j.rewrites);
        }
        let same_outcome = side.incomplete.is_none() && j.incomplete.is_none();
        if !same_outcome {
            side.incomplete.clone_from(&j.incomplete);
        }
        side.latency = paths::latency(&j.hops);
        let last = j.hops.last().map_or(j.first_ns, |h| h.ts_ns);
        f.first_ns = if f.first_ns == 0 {
            j.first_ns
        } else {
            f.first_ns.min(j.first_ns)
        };
        f.last_ns = f.last_ns.max(last);
        self.last_seen[s as usize] = f.last_ns;
        if same_path && same_outcome {
            return;
        }
        if j.side == Side::Request {
            f.tuple = paths::client_view(&j.hops, Side::Request);
        } else if f.request.path.is_empty() {
            f.tuple = paths::client_view(&j.hops, Side::Reply);
        }
        let server = match (f.request.path.last(), f.reply.path.first()) {
            (Some(h), _) => Some(h.tuple.dst),
            (None, Some(h)) => Some(h.tuple.src),
            (None, None) => None,
        };
        f.client_pod = places.pod(f.tuple.src).cloned();
        f.server_pod = server.and_then(|ip| places.pod(ip)).cloned();
        paths::summarize(f);
    }

    /// Registers the tuples of a journey as aliases of flow `s`; a tuple
    /// another flow already owns is left to it.
    fn register_aliases(&mut self, s: u32, j: &Journey) {
        for h in &j.hops {
            let t = match j.side {
                Side::Request => h.tuple,
                Side::Reply => h.tuple.reversed(),
            };
            let slot = self.slab.get_mut(s);
            if slot.aliases[..slot.n_aliases].contains(&t) {
                continue;
            }
            if slot.n_aliases == MAX_ALIASES {
                self.alias_overflow += 1;
                continue;
            }
            let owner = *self.by_key.entry(ConvKey::of(&t)).or_insert(s);
            if owner == s {
                slot.aliases[slot.n_aliases] = t;
                slot.n_aliases += 1;
            }
        }
    }

    /// Ends flows idle for longer than the idle timeout at `now`, looking
    /// at up to `budget` slots from where the last sweep stopped.
    pub(crate) fn expire(&mut self, now: u64, budget: usize, sink: Sink<'_>) {
        let n = self.last_seen.len();
        for _ in 0..budget.min(n) {
            let s = self.sweep;
            self.sweep = (self.sweep + 1) % n;
            if self.last_seen[s].saturating_add(self.idle_ns) < now && self.slab.is_live(s as u32) {
                self.expired += 1;
                self.end(s as u32, EndReason::Idle, sink);
            }
        }
    }

    /// Slots the idle sweep covers.
    pub(crate) fn slots(&self) -> usize {
        self.slab.slots()
    }

    fn end(&mut self, s: u32, reason: EndReason, sink: Sink<'_>) {
        let slot = self.slab.get(s);
        sink(Update::FlowEnded {
            flow: &slot.flow,
            reason,
        });
        for t in &slot.aliases[..slot.n_aliases] {
            let k = ConvKey::of(t);
            if self.by_key.get(&k) == Some(&s) {
                self.by_key.remove(&k);
            }
        }
        self.by_id.remove(&slot.flow.id);
        self.slab.free(s);
    }

    /// Sets the kernel counters of each flow direction from the entry of
    /// its first hop (hook and tuple); other hooks' entries are ignored.
    /// Counters are cumulative, so they replace what was there.
    pub(crate) fn merge_kernel<'a>(
        &mut self,
        entries: impl IntoIterator<Item = (&'a FlowKey, &'a FlowStats)>,
        sink: Sink<'_>,
    ) -> usize {
        let mut n = 0;
        for (k, st) in entries {
            let t = tuple_of_key(k);
            let Some(&s) = self.by_key.get(&ConvKey::of(&t)) else {
                continue;
            };
            let slot = self.slab.get_mut(s);
            let Some(side_kind) = slot.side_of(&t) else {
                continue;
            };
            let f = &mut slot.flow;
            let side = match side_kind {
                Side::Request => &mut f.request,
                Side::Reply => &mut f.reply,
            };
            let dir = Direction::from_u32(u32::from(k.direction)).map(Dir::from);
            let Some(entry) = side.path.first() else {
                continue;
            };
            if (
                entry.place.netns_cookie,
                entry.place.ifindex,
                Some(entry.dir),
                entry.tuple,
            ) != (k.netns_cookie, k.ifindex, dir, t)
            {
                continue;
            }
            side.kernel = Some(KernelCounters {
                packets: st.packets,
                bytes: st.bytes,
                first_ns: st.first_ns,
                last_ns: st.last_ns,
                tcp_flags: st.tcp_flags,
            });
            if st.last_ns > f.last_ns {
                f.last_ns = st.last_ns;
                self.last_seen[s as usize] = st.last_ns;
                self.slab.touch(s);
            }
            n += 1;
            sink(Update::Flow(self.get(s)));
        }
        n
    }
}

fn reset(f: &mut Flow, id: FlowId) {
    f.id = id;
    f.tuple = Tuple::default();
    f.client_pod = None;
    f.server_pod = None;
    for side in [&mut f.request, &mut f.reply] {
        let (mut path, mut rewrites) = (
            std::mem::take(&mut side.path),
            std::mem::take(&mut side.rewrites),
        );
        path.clear();
        rewrites.clear();
        *side = FlowSide {
            path,
            rewrites,
            ..FlowSide::default()
        };
    }
    f.egress_eni = None;
    f.ingress_eni = None;
    f.labels = Labels::default();
    f.conntrack = None;
    f.first_ns = 0;
    f.last_ns = 0;
}

fn pure_syn(j: &Journey) -> Option<u32> {
    j.tcp
        .filter(|t| t.flags & (SYN | ACK) == SYN)
        .map(|t| t.seq)
}

/// A journey that opens a flow is its request, unless it is plainly an
/// answer: an ICMP echo/timestamp reply or a TCP SYN-ACK.
fn looks_like_reply(j: &Journey) -> bool {
    j.icmp.is_some_and(|i| matches!(i.ty, 0 | 14))
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

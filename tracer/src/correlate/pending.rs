//! Journeys collecting hops, in a ring in creation order: a journey
//! closes by time and the hops of one packet arrive within microseconds,
//! so creation order is closing order, and the ring is written and read
//! sequentially (no list links to chase, as an LRU would). Found by a hash
//! of their fingerprint, checked against the full fingerprint; journeys
//! that share a fingerprint (two flows' packets alike but for their
//! ports) are chained, and a hop joins the one whose tuples it continues.

use std::hash::BuildHasher as _;

use tracer_common::reason;

use super::{
    journey::{Fingerprint, MAX_HOPS, Observed, RawHop},
    model::Tuple,
    table::{Seeded, advise_huge, huge_vec, prefetch},
};

/// No journey, in chain links.
const NONE: u64 = u64::MAX;
/// Most journeys with one fingerprint looked at for one hop.
const MAX_CHAIN: usize = 8;
/// How far ahead of the oldest journey the ring is prefetched: journeys
/// close in ring order, and in a ring of megabytes each would be a miss.
/// The index entry of a journey is prefetched half as far ahead, once its
/// hash (in the prefetched slot) is there to say where.
const AHEAD: u64 = 16;

/// Where a packet goes.
pub(crate) enum Lookup {
    /// Into this pending journey.
    Join(u64),
    /// Into a new journey; `repeated` if a journey with its fingerprint
    /// had already crossed its hook (a retransmission, a loop, or a twin).
    New {
        /// See above.
        repeated: bool,
    },
}

/// At most `cap` journeys collecting hops.
pub(crate) struct PendingTable {
    /// A power of two (>= cap) of slots, grown as journeys start.
    ring: Vec<Pending>,
    /// `ring`'s final size - 1: the slot of `seq` is `seq & mask`.
    mask: u64,
    cap: u64,
    /// Sequence number of the oldest slot not yet passed.
    head: u64,
    /// Sequence number the next journey takes.
    tail: u64,
    live: usize,
    index: Index,
    hasher: Seeded,
}

impl PendingTable {
    /// An empty table for at most `cap` (>= 1) journeys.
    pub(crate) fn new(cap: usize, seed: u64) -> Self {
        let cap = cap.max(1);
        let slots = cap.next_power_of_two();
        // Reserved, not written: pages are taken as journeys first use
        // their slots, huge ones where the ring spans them.
        let ring = Vec::with_capacity(slots);
        advise_huge(ring.as_ptr(), slots * size_of::<Pending>());
        Self {
            ring,
            mask: slots as u64 - 1,
            cap: cap as u64,
            head: 0,
            tail: 0,
            live: 0,
            index: Index::new(cap),
            hasher: Seeded(seed ^ 0x5bd1_e995),
        }
    }

    /// Journeys collecting hops.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    fn slot(&self, seq: u64) -> usize {
        (seq & self.mask) as usize
    }

    /// The hash [`Self::find`] and [`Self::insert`] expect in
    /// [`Observed::fp_hash`].
    pub(crate) fn hash(&self, fp: Fingerprint) -> u64 {
        // A high half of 0 marks an empty index entry.
        let h = self.hasher.hash_one(fp);
        if h >> 32 == 0 { h | 1 << 32 } else { h }
    }

    /// Asks the CPU for the slots of journeys about to close, and for
    /// their index entries (hints, nothing else).
    fn prefetch_ahead(&self) {
        if let Some(p) = self.ring.get(self.slot(self.head + AHEAD)) {
            // The head of the journey and its first two hops.
            let p: *const u8 = std::ptr::from_ref(p).cast();
            for line in [0, 64] {
                prefetch(p.wrapping_add(line));
            }
        }
        if let Some(p) = self.ring.get(self.slot(self.head + AHEAD / 2)) {
            self.index.prefetch(p.hash);
        }
    }

    /// The pending journey a packet belongs to: same fingerprint, within
    /// the window, not yet at this hook, and of those the one whose tuples
    /// it continues best (most of addresses and ports unchanged), the
    /// oldest on a tie.
    pub(crate) fn find(&self, obs: &Observed, window: u64) -> Lookup {
        let mut repeated = false;
        let mut best: Option<(usize, u64)> = None;
        debug_assert_eq!(obs.fp_hash, self.hash(obs.fp));
        let mut seq = self.index.get(obs.fp_hash, self.tail).unwrap_or(NONE);
        for _ in 0..MAX_CHAIN {
            if seq == NONE || self.ring[self.slot(seq)].seq != seq {
                break; // a reused slot: the older links are gone
            }
            let p = &self.ring[self.slot(seq)];
            if p.live && p.fp == obs.fp && p.fits(obs.hop.ts_ns, window) {
                if p.has_hook(&obs.hop) {
                    repeated = true;
                } else {
                    let score = p.continuity(&obs.hop.tuple);
                    // Ties go to the older journey (the chain runs from
                    // the newest): look-alike packets travel in order.
                    if best.is_none_or(|(s, _)| score >= s) {
                        best = Some((score, seq));
                    }
                }
            }
            seq = p.prev_same;
        }
        match best {
            Some((_, seq)) => Lookup::Join(seq),
            None => Lookup::New { repeated },
        }
    }

    /// The journey at `seq` (live).
    pub(crate) fn get(&self, seq: u64) -> &Pending {
        &self.ring[self.slot(seq)]
    }

    /// The journey at `seq` (live), mutable.
    pub(crate) fn get_mut(&mut self, seq: u64) -> &mut Pending {
        let i = self.slot(seq);
        &mut self.ring[i]
    }

    /// The journey `k` places after the oldest, if it is live: closing
    /// goes in this order.
    pub(crate) fn ahead(&self, k: u64) -> Option<&Pending> {
        let seq = self.head + k;
        let p = self.ring.get(self.slot(seq))?;
        (seq < self.tail && p.live && p.seq == seq).then_some(p)
    }

    /// The oldest live journey.
    pub(crate) fn oldest(&mut self) -> Option<u64> {
        while self.head < self.tail {
            let p = &self.ring[self.slot(self.head)];
            if p.live && p.seq == self.head {
                return Some(self.head);
            }
            self.head += 1;
            self.prefetch_ahead();
        }
        None
    }

    /// The journey that must close before another can start, when the
    /// ring is full.
    pub(crate) fn must_close(&mut self) -> Option<u64> {
        let oldest = self.oldest()?;
        (self.tail - self.head == self.cap).then_some(oldest)
    }

    /// Starts a journey; the caller made room with [`Self::must_close`].
    pub(crate) fn insert(&mut self, obs: &Observed) -> u64 {
        debug_assert!(self.tail - self.head < self.cap);
        let seq = self.tail;
        self.tail += 1;
        let i = self.slot(seq);
        if i == self.ring.len() {
            self.ring.push(Pending::default());
        }
        let hash = obs.fp_hash;
        let prev = self.index.insert(hash, seq, self.tail).unwrap_or(NONE);
        let p = &mut self.ring[i];
        p.start(obs);
        (p.seq, p.live, p.hash, p.prev_same) = (seq, true, hash, prev);
        self.live += 1;
        seq
    }

    /// Ends the journey at `seq`; its slot is passed over later.
    pub(crate) fn remove(&mut self, seq: u64) {
        let i = self.slot(seq);
        let p = &mut self.ring[i];
        debug_assert!(p.live && p.seq == seq);
        p.live = false;
        let (hash, mut next) = (p.hash, p.prev_same);
        if self.index.get(hash, self.tail) == Some(seq) {
            // The index keeps pointing at a live journey, or at none.
            let mut newest_live = None;
            for _ in 0..MAX_CHAIN {
                let Some(q) = self
                    .ring
                    .get(self.slot(next))
                    .filter(|q| next != NONE && q.seq == next)
                else {
                    break;
                };
                if q.live {
                    newest_live = Some(next);
                    break;
                }
                next = q.prev_same;
            }
            match newest_live {
                Some(s) => {
                    self.index.insert(hash, s, self.tail);
                }
                None => self.index.remove(hash),
            }
        }
        self.live -= 1;
        // Passes the dead slots at the head, so that they count as room.
        self.oldest();
    }

    /// Entries of the fingerprint index (never more than the ring's size).
    pub(crate) fn index_len(&self) -> usize {
        self.index.len
    }
}

/// Fingerprint hash -> newest journey with it: open addressing, linear
/// probing, at most half full, 8 bytes an entry (the hash's high half, never
/// 0, and the journey's sequence number's low half, widened against the
/// table's tail: live journeys are fewer than 2^32 behind it), so that the
/// index of the default 32k journeys is 512 KiB and stays in L2. Two hashes
/// that share a high half share an entry: their journeys share a chain,
/// which lookups walk checking the whole fingerprint anyway.
struct Index {
    /// (tag, seq); tag 0 is empty.
    entries: Vec<(u32, u32)>,
    mask: usize,
    len: usize,
}

impl Index {
    fn new(cap: usize) -> Self {
        let n = (cap * 2).next_power_of_two().max(16);
        Self {
            entries: huge_vec(n, (0, 0)),
            mask: n - 1,
            len: 0,
        }
    }

    fn tag(hash: u64) -> u32 {
        debug_assert!(hash >> 32 != 0);
        (hash >> 32) as u32
    }

    fn home(&self, hash: u64) -> usize {
        Self::tag(hash) as usize & self.mask
    }

    /// The home of the entry at `i` (its tag's low bits).
    fn home_of(&self, i: usize) -> usize {
        self.entries[i].0 as usize & self.mask
    }

    fn prefetch(&self, hash: u64) {
        prefetch(&raw const self.entries[self.home(hash)]);
    }

    /// Where `hash` is, or the empty entry where it would go.
    fn position(&self, hash: u64) -> usize {
        let tag = Self::tag(hash);
        let mut i = self.home(hash);
        loop {
            let t = self.entries[i].0;
            if t == tag || t == 0 {
                return i;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The sequence number whose low half is `lo`, at most 2^32 - 1 before
    /// `tail`.
    fn widen(lo: u32, tail: u64) -> u64 {
        tail - u64::from((tail as u32).wrapping_sub(lo))
    }

    fn get(&self, hash: u64, tail: u64) -> Option<u64> {
        let (t, lo) = self.entries[self.position(hash)];
        (t == Self::tag(hash)).then(|| Self::widen(lo, tail))
    }

    fn insert(&mut self, hash: u64, seq: u64, tail: u64) -> Option<u64> {
        let i = self.position(hash);
        let tag = Self::tag(hash);
        let e = &mut self.entries[i];
        let old = (e.0 == tag).then(|| Self::widen(e.1, tail));
        if old.is_none() {
            self.len += 1;
            debug_assert!(self.len <= self.mask / 2 + 1);
        }
        *e = (tag, seq as u32);
        old
    }

    /// Removes `hash`, shifting back the entries that probed past it.
    fn remove(&mut self, hash: u64) {
        let mut i = self.position(hash);
        if self.entries[i].0 != Self::tag(hash) {
            return;
        }
        self.len -= 1;
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let (t, _) = self.entries[j];
            if t == 0 {
                break;
            }
            // j's entry moves into the hole at i unless its home lies
            // cyclically in (i, j].
            let k = self.home_of(j);
            let stays = if i <= j {
                i < k && k <= j
            } else {
                i < k || k <= j
            };
            if !stays {
                self.entries[i] = self.entries[j];
                i = j;
            }
        }
        self.entries[i] = (0, 0);
    }
}

/// A journey still collecting hops. Fixed-size: lives in a ring slot and
/// is reused without allocating. Its head and two hops fill two cache
/// lines: what a packet seen at two hooks costs.
#[derive(Clone, Debug, Default)]
#[repr(C, align(64))] // what lookups and closing read first, in the first cache line
pub(crate) struct Pending {
    /// Position in the ring; the slot is `seq & mask`.
    seq: u64,
    hash: u64,
    /// The journey started before this one with the same hash.
    prev_same: u64,
    pub(crate) fp: Fingerprint,
    /// Bytes of the first hop (in time).
    pub(crate) bytes: u32,
    /// Why the kernel reported the last hop (in time).
    reason: u32,
    len: u8,
    live: bool,
    pub(crate) probe: bool,
    hops: [RawHop; MAX_HOPS],
}

impl Pending {
    /// Starts over with one hop.
    fn start(&mut self, obs: &Observed) {
        self.fp = obs.fp;
        (self.bytes, self.reason) = (obs.bytes, obs.reason);
        self.probe = obs.probe;
        self.len = 1;
        self.hops[0] = obs.hop;
    }

    /// Kernel time of the first hop (hops are in time order).
    pub(crate) fn first_ns(&self) -> u64 {
        self.hops[0].ts_ns
    }

    /// Kernel time of the last hop.
    pub(crate) fn last_ns(&self) -> u64 {
        self.hops[usize::from(self.len).max(1) - 1].ts_ns
    }

    /// How well a tuple continues this journey: the most addresses and
    /// ports (of 4) it shares with one of its hops.
    fn continuity(&self, t: &Tuple) -> usize {
        self.hops()
            .iter()
            .map(|h| {
                let u = &h.tuple;
                usize::from(u.src == t.src)
                    + usize::from(u.sport == t.sport)
                    + usize::from(u.dst == t.dst)
                    + usize::from(u.dport == t.dport)
            })
            .max()
            .unwrap_or(0)
    }

    /// True if a hop at `ts` belongs within `window` of this journey.
    fn fits(&self, ts: u64, window: u64) -> bool {
        ts.saturating_add(window) >= self.first_ns() && ts <= self.last_ns().saturating_add(window)
    }

    /// True if the journey already crossed this hook (same netns,
    /// interface and direction): a second crossing starts a new journey.
    fn has_hook(&self, hop: &RawHop) -> bool {
        self.hops()
            .iter()
            .any(|h| (h.hook, h.dir) == (hop.hook, hop.dir))
    }

    /// Inserts a hop in time order; `false` (and nothing done) when full.
    pub(crate) fn add(&mut self, obs: &Observed) -> bool {
        let len = usize::from(self.len);
        if len == MAX_HOPS {
            return false;
        }
        let ts = obs.hop.ts_ns;
        let mut at = len;
        while at > 0 && self.hops[at - 1].ts_ns > ts {
            self.hops[at] = self.hops[at - 1];
            at -= 1;
        }
        self.hops[at] = obs.hop;
        if at == 0 {
            self.bytes = obs.bytes;
        }
        if at == len {
            self.reason = obs.reason;
        }
        self.len += 1;
        self.probe |= obs.probe;
        true
    }

    /// The hops, oldest first.
    pub(crate) fn hops(&self) -> &[RawHop] {
        &self.hops[..usize::from(self.len)]
    }

    /// True when a missing next hop means the packet was lost: probes are
    /// reported at every hook; other packets only when the kernel reports
    /// every match (`complete_reports`) and this one was reported as a match
    /// (reason 0: a replayed capture), not as a sample or a flow start.
    pub(crate) fn judged(&self, complete_reports: bool) -> bool {
        if self.len == 0 {
            return false;
        }
        let last = self.reason;
        self.probe
            || last & reason::PROBE != 0
            || (complete_reports && (last == 0 || last & reason::MATCH != 0))
    }
}

#[cfg(test)]
mod tests {
    use super::{Index, Pending};

    /// A journey's head and its first two hops fill two cache lines.
    #[test]
    fn a_two_hop_journey_takes_two_lines() {
        assert_eq!(std::mem::offset_of!(Pending, hops), 64);
        assert_eq!(size_of::<super::RawHop>(), 32);
    }

    /// The index agrees with a HashMap through inserts and removals that
    /// wrap around and collide.
    #[test]
    fn index_matches_a_map() {
        let mut idx = Index::new(64);
        let mut map = std::collections::HashMap::new();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for step in 0..200_000u64 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // Few distinct tags, homes crowded into a few buckets; the low
            // half of the hash does not matter.
            let tag = ((rng % 97) << 7 | (rng % 5)) + 1;
            let hash = tag << 32 | (rng >> 40);
            let tail = step + 1;
            if map.len() < 60 && !rng.is_multiple_of(3) {
                assert_eq!(idx.insert(hash, step, tail), map.insert(tag, step));
            } else {
                idx.remove(hash);
                map.remove(&tag);
            }
            assert_eq!(idx.len, map.len());
            for t in [tag, tag | 1 << 20] {
                let h = t << 32 | 7;
                assert_eq!(idx.get(h, tail), map.get(&t).copied(), "step {step}");
            }
        }
        // Sequence numbers past 2^32 widen back whole.
        let mut idx = Index::new(4);
        let seq = (5 << 32) + 3;
        idx.insert(1 << 32, seq, seq + 10);
        assert_eq!(idx.get(1 << 32, seq + 1000), Some(seq));
    }
}

//! Bounded tables for the engine: a fast seeded hasher and a slab of
//! slots with CLOCK eviction, so that lookups, touches, insertions and
//! evictions are all O(1) (amortized) and reuse memory.

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hasher},
};

/// A hash map with the engine's hasher.
pub(crate) type Map<K, V> = HashMap<K, V, Seeded>;

/// Makes a map sized for `cap` entries, so that it never grows.
pub(crate) fn map_with_capacity<K, V>(cap: usize, seed: u64) -> Map<K, V> {
    HashMap::with_capacity_and_hasher(cap, Seeded(seed))
}

/// Builds [`FastHasher`]s from a seed. Keys come from packets, so an edge
/// that fears crafted collisions passes a random seed in the config.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seeded(pub u64);

impl BuildHasher for Seeded {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher(self.0)
    }
}

/// Folded-multiply hasher (the foldhash/ahash fallback construction): a
/// few ns per key where SipHash takes tens.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FastHasher(u64);

const MUL: u64 = 0x9e37_79b9_7f4a_7c15;

fn fold(a: u64, b: u64) -> u64 {
    let m = u128::from(a) * u128::from(b);
    let (lo, hi) = (m as u64, (m >> 64) as u64);
    lo ^ hi
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = fold(self.0 ^ i, MUL);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn finish(&self) -> u64 {
        fold(self.0, 0x2d35_8dcc_aa6c_78a5)
    }
}

/// Slots per chunk of a [`ClockSlab`].
const CHUNK: usize = 1024;

struct Slot<V> {
    live: bool,
    referenced: bool,
    value: V,
}

/// At most `cap` values in slots, evicted by CLOCK (second chance), the
/// usual approximation of least-recently-used: a touch only sets a bit in
/// the slot being used, where a true LRU list would also write to two
/// unrelated slots (two cache misses per event at 100k flows). A freed
/// slot keeps its value (and the value's allocations) for the next user,
/// who resets what it needs: that keeps the hot path allocation-free.
/// Slots live in chunks of [`CHUNK`], allocated as needed: a table never
/// holds more than a chunk of slots it does not use (a doubling vector
/// would hold up to as many as it uses, and copy them all as it grows).
pub(crate) struct ClockSlab<V> {
    chunks: Vec<Vec<Slot<V>>>,
    /// Slots ever used (live or free).
    used: usize,
    free: Vec<u32>,
    hand: usize,
    len: usize,
    cap: usize,
}

impl<V: Default> ClockSlab<V> {
    /// An empty slab for at most `cap` (>= 1, < 2^32) values.
    pub(crate) fn new(cap: usize) -> Self {
        let cap = cap.clamp(1, u32::MAX as usize);
        Self {
            chunks: Vec::new(),
            used: 0,
            free: Vec::new(),
            hand: 0,
            len: 0,
            cap,
        }
    }

    /// Live values.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Slots ever used (live or free): valid indexes are below this.
    pub(crate) fn slots(&self) -> usize {
        self.used
    }

    fn slot(&self, i: usize) -> &Slot<V> {
        &self.chunks[i / CHUNK][i % CHUNK]
    }

    fn slot_mut(&mut self, i: usize) -> &mut Slot<V> {
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }

    /// A slot, marked used, `None` if the slab is full. Its value is
    /// `Default` or whatever the previous user left.
    pub(crate) fn alloc(&mut self) -> Option<u32> {
        let i = if let Some(i) = self.free.pop() {
            i
        } else if self.used < self.cap {
            if self.used.is_multiple_of(CHUNK) {
                self.chunks.push(Vec::with_capacity(CHUNK));
            }
            self.chunks
                .last_mut()
                .expect("a chunk with room")
                .push(Slot {
                    live: false,
                    referenced: false,
                    value: V::default(),
                });
            self.used += 1;
            (self.used - 1) as u32
        } else {
            return None;
        };
        let s = self.slot_mut(i as usize);
        (s.live, s.referenced) = (true, true);
        self.len += 1;
        Some(i)
    }

    /// Frees live slot `i`.
    pub(crate) fn free(&mut self, i: u32) {
        let s = self.slot_mut(i as usize);
        debug_assert!(s.live);
        s.live = false;
        self.free.push(i);
        self.len -= 1;
    }

    /// Marks live slot `i` as used.
    pub(crate) fn touch(&mut self, i: u32) {
        self.slot_mut(i as usize).referenced = true;
    }

    /// The slot to evict: the next live one, from the clock hand, not used
    /// since the hand last passed it (clearing marks on the way). At most
    /// two turns, O(1) amortized: each step clears a mark a touch set.
    pub(crate) fn victim(&mut self) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        loop {
            let i = self.hand;
            self.hand = (self.hand + 1) % self.used;
            let s = self.slot_mut(i);
            if s.live {
                if !s.referenced {
                    return Some(i as u32);
                }
                s.referenced = false;
            }
        }
    }

    /// True if `i` is a live slot.
    pub(crate) fn is_live(&self, i: u32) -> bool {
        (i as usize) < self.used && self.slot(i as usize).live
    }

    /// The value of live slot `i`.
    pub(crate) fn get(&self, i: u32) -> &V {
        &self.slot(i as usize).value
    }

    /// The value of live slot `i`, mutable.
    pub(crate) fn get_mut(&mut self, i: u32) -> &mut V {
        &mut self.slot_mut(i as usize).value
    }

    /// Live values, in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &V> {
        self.chunks
            .iter()
            .flatten()
            .filter(|s| s.live)
            .map(|s| &s.value)
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher as _;

    use super::*;

    #[test]
    fn clock_evicts_unused_first_and_reuses_slots() {
        let mut s: ClockSlab<u32> = ClockSlab::new(3);
        let a = s.alloc().unwrap();
        let b = s.alloc().unwrap();
        let c = s.alloc().unwrap();
        assert_eq!(s.alloc(), None, "full at cap");
        // All were just used: one full turn clears the marks, then the
        // oldest goes first.
        assert_eq!(s.victim(), Some(a));
        s.touch(b);
        assert_eq!(s.victim(), Some(c), "b had a second chance");
        *s.get_mut(c) = 7;
        s.free(c);
        assert!(!s.is_live(c));
        assert_eq!(s.len(), 2);
        let d = s.alloc().unwrap();
        assert_eq!(d, c, "freed slot is reused");
        assert_eq!(*s.get(d), 7, "value left for the next user to reset");
        assert_eq!(s.iter().count(), 3);
        for i in [a, b, d] {
            s.free(i);
        }
        assert_eq!((s.len(), s.victim()), (0, None));
    }

    #[test]
    fn hasher_depends_on_seed_and_input() {
        let h = |seed, v: (u32, u16)| Seeded(seed).hash_one(v);
        assert_ne!(h(1, (1, 2)), h(1, (1, 3)));
        assert_ne!(h(1, (1, 2)), h(2, (1, 2)));
        assert_eq!(h(5, (9, 9)), h(5, (9, 9)));
    }
}

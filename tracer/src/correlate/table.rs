//! Bounded tables for the engine: a fast seeded hasher and a slab of
//! slots with CLOCK eviction, so that lookups, touches, insertions and
//! evictions are all O(1) (amortized) and reuse memory.

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash, Hasher},
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

/// Asks the CPU for the cache line at `p` (a hint, nothing else).
#[inline]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint, valid for any address.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Bytes of a transparent huge page on x86_64 and arm64 (4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

/// A vector of `n` copies of `v`, its memory asked (before it is first
/// written) to be backed by transparent huge pages where it spans whole
/// ones. The engine's big tables are read at random: with 4 KiB pages
/// nearly every read at 100k flows also misses the TLB, and a page walk
/// (two-dimensional in a VM) costs as much as the miss itself. Only a hint:
/// without THP (`never`), or under `always`, nothing changes.
pub(crate) fn huge_vec<T: Clone>(n: usize, v: T) -> Vec<T> {
    let mut out = Vec::with_capacity(n);
    advise_huge(out.as_ptr(), n * size_of::<T>());
    out.resize(n, v);
    out
}

/// Asks for huge pages under the whole huge pages of `len` bytes at `p`.
pub(crate) fn advise_huge<T>(p: *const T, len: usize) {
    let (start, end) = (p as usize, p as usize + len);
    let (from, to) = (
        start.next_multiple_of(HUGE_PAGE),
        end / HUGE_PAGE * HUGE_PAGE,
    );
    #[cfg(target_os = "linux")]
    if from < to {
        // SAFETY: a hint on memory this vector owns (whole pages inside
        // its allocation); it changes no content. Failure is harmless.
        unsafe {
            libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_HUGEPAGE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (from, to);
}

/// A hash map (open addressing, linear probing, at most half full) that
/// can say where a key lives: a caller that knows which keys it will look
/// up next prefetches their entries (hashbrown cannot be asked that).
pub(crate) struct OpenMap<K, V> {
    entries: Vec<Option<(K, V)>>,
    mask: usize,
    len: usize,
    hasher: Seeded,
}

impl<K: Copy + Eq + Hash, V: Copy> OpenMap<K, V> {
    /// A map sized for `cap` entries (it grows past that).
    pub(crate) fn with_capacity(cap: usize, seed: u64) -> Self {
        let n = cap.saturating_mul(2).next_power_of_two().max(16);
        Self {
            entries: huge_vec(n, None),
            mask: n - 1,
            len: 0,
            hasher: Seeded(seed),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn home(&self, k: &K) -> usize {
        self.hasher.hash_one(k) as usize & self.mask
    }

    /// Prefetches the entry `k` would be found at first, and the next one
    /// (where a key that collided goes): entries do not fit cache lines
    /// evenly, so these may span two lines.
    pub(crate) fn prefetch(&self, k: &K) {
        let p: *const u8 = (&raw const self.entries[self.home(k)]).cast();
        prefetch(p);
        prefetch(p.wrapping_add(2 * size_of::<Option<(K, V)>>() - 1));
    }

    /// Where `k` is, or the empty entry where it would go.
    fn position(&self, k: &K) -> usize {
        let mut i = self.home(k);
        loop {
            match &self.entries[i] {
                Some((key, _)) if key != k => i = (i + 1) & self.mask,
                _ => return i,
            }
        }
    }

    pub(crate) fn get(&self, k: &K) -> Option<V> {
        self.entries[self.position(k)].map(|(_, v)| v)
    }

    /// The value of `k`, inserting `v` first if there is none.
    pub(crate) fn get_or_insert(&mut self, k: K, v: V) -> V {
        let i = self.position(&k);
        if let Some((_, old)) = self.entries[i] {
            return old;
        }
        self.entries[i] = Some((k, v));
        self.len += 1;
        if self.len * 2 > self.entries.len() {
            self.grow();
        }
        v
    }

    fn grow(&mut self) {
        let n = self.entries.len() * 2;
        let old = std::mem::replace(&mut self.entries, huge_vec(n, None));
        self.mask = n - 1;
        for (k, v) in old.into_iter().flatten() {
            let i = self.position(&k);
            self.entries[i] = Some((k, v));
        }
    }

    /// Removes `k`, shifting back the entries that probed past it.
    pub(crate) fn remove(&mut self, k: &K) {
        let mut i = self.position(k);
        if self.entries[i].is_none() {
            return;
        }
        self.len -= 1;
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let Some((key, _)) = &self.entries[j] else {
                break;
            };
            // j's entry moves into the hole at i unless its home lies
            // cyclically in (i, j].
            let h = self.home(key);
            let stays = if i <= j {
                i < h && h <= j
            } else {
                i < h || h <= j
            };
            if !stays {
                self.entries[i] = self.entries[j];
                i = j;
            }
        }
        self.entries[i] = None;
    }
}

/// Slots per chunk of a [`ClockSlab`].
const CHUNK: usize = 1024;

/// A slot holds a value.
const LIVE: u8 = 1;
/// The slot was used since the clock hand last passed it.
const REFERENCED: u8 = 2;

/// At most `cap` values in slots, evicted by CLOCK (second chance), the
/// usual approximation of least-recently-used: a touch only sets a bit of
/// the slot being used, where a true LRU list would also write to two
/// unrelated slots (two cache misses per event at 100k flows). A freed
/// slot keeps its value (and the value's allocations) for the next user,
/// who resets what it needs: that keeps the hot path allocation-free.
/// Slots live in chunks of [`CHUNK`], allocated as needed: a table never
/// holds more than a chunk of slots it does not use (a doubling vector
/// would hold up to as many as it uses, and copy them all as it grows).
/// The bits of each slot are apart from the values, densely: a value
/// takes whole cache lines if its type is aligned to them, and the clock
/// hand reads a byte a slot.
pub(crate) struct ClockSlab<V> {
    chunks: Vec<Vec<V>>,
    /// [`LIVE`] and [`REFERENCED`] bits of each slot ever used.
    bits: Vec<u8>,
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
            bits: Vec::new(),
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
        self.bits.len()
    }

    fn value(&self, i: usize) -> &V {
        &self.chunks[i / CHUNK][i % CHUNK]
    }

    fn value_mut(&mut self, i: usize) -> &mut V {
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }

    /// A slot, marked used, `None` if the slab is full. Its value is
    /// `Default` or whatever the previous user left.
    pub(crate) fn alloc(&mut self) -> Option<u32> {
        let i = if let Some(i) = self.free.pop() {
            i
        } else if self.bits.len() < self.cap {
            if self.bits.len().is_multiple_of(CHUNK) {
                self.chunks.push(Vec::with_capacity(CHUNK));
            }
            self.chunks
                .last_mut()
                .expect("a chunk with room")
                .push(V::default());
            self.bits.push(0);
            (self.bits.len() - 1) as u32
        } else {
            return None;
        };
        self.bits[i as usize] = LIVE | REFERENCED;
        self.len += 1;
        Some(i)
    }

    /// Frees live slot `i`.
    pub(crate) fn free(&mut self, i: u32) {
        debug_assert!(self.is_live(i));
        self.bits[i as usize] = 0;
        self.free.push(i);
        self.len -= 1;
    }

    /// Prefetches the value of slot `i` (which must exist).
    pub(crate) fn prefetch(&self, i: u32) {
        let p: *const V = self.value(i as usize);
        for line in (0..size_of::<V>()).step_by(64) {
            prefetch(p.cast::<u8>().wrapping_add(line));
        }
    }

    /// Marks live slot `i` as used.
    pub(crate) fn touch(&mut self, i: u32) {
        self.bits[i as usize] |= REFERENCED;
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
            self.hand = (self.hand + 1) % self.bits.len();
            let b = &mut self.bits[i];
            if *b & LIVE != 0 {
                if *b & REFERENCED == 0 {
                    return Some(i as u32);
                }
                *b &= !REFERENCED;
            }
        }
    }

    /// True if `i` is a live slot.
    pub(crate) fn is_live(&self, i: u32) -> bool {
        self.bits.get(i as usize).is_some_and(|b| b & LIVE != 0)
    }

    /// The value of live slot `i`.
    pub(crate) fn get(&self, i: u32) -> &V {
        self.value(i as usize)
    }

    /// The value of live slot `i`, mutable.
    pub(crate) fn get_mut(&mut self, i: u32) -> &mut V {
        self.value_mut(i as usize)
    }

    /// Live values, in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &V> {
        self.chunks
            .iter()
            .flatten()
            .zip(&self.bits)
            .filter(|(_, b)| *b & LIVE != 0)
            .map(|(v, _)| v)
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

    /// The open map agrees with a HashMap through inserts, removals and
    /// growth, with keys crowded into few homes.
    #[test]
    fn open_map_matches_a_map() {
        let mut m: OpenMap<(u32, u16), u32> = OpenMap::with_capacity(8, 7);
        let mut want = HashMap::new();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for step in 0..100_000u32 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let k = ((rng % 61) as u32, (rng % 3) as u16);
            if !rng.is_multiple_of(3) && want.len() < 150 {
                assert_eq!(m.get_or_insert(k, step), *want.entry(k).or_insert(step));
            } else {
                m.remove(&k);
                want.remove(&k);
            }
            assert_eq!(m.len(), want.len());
            assert_eq!(m.get(&k), want.get(&k).copied());
        }
        for (k, v) in &want {
            assert_eq!(m.get(k), Some(*v));
        }
    }

    #[test]
    fn hasher_depends_on_seed_and_input() {
        let h = |seed, v: (u32, u16)| Seeded(seed).hash_one(v);
        assert_ne!(h(1, (1, 2)), h(1, (1, 3)));
        assert_ne!(h(1, (1, 2)), h(2, (1, 2)));
        assert_eq!(h(5, (9, 9)), h(5, (9, 9)));
    }
}

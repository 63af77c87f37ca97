//! Multi-index hashing: exact radius search that reads a small fraction of the codes.
//!
//! The reference design is Norouzi, Punjani and Fleet, "Fast Exact Search in Hamming Space with
//! Multi-Index Hashing" (CVPR 2012 / TPAMI 2014). A code is cut into `m` substrings of `b`
//! bits (the bits past `m * b` are left out of every table). Two codes within distance `r`
//! have, for some substring `k`, a distance of at most `S_k = floor((r - k) / m)` on that
//! substring: if every substring `k` differed in `S_k + 1` bits or more, the codes would differ
//! in `sum_k floor((r - k + m) / m) = r + 1` bits or more (Hermite's identity); the bits left out
//! only add distance. So searching each substring's table within its `S_k` finds every code
//! within `r`, and the full distance of each candidate is then computed from the code itself:
//! the result is exactly that of the flat scan.
//!
//! **Tables.** One per substring: the entries (`u32`: the slot in the high bits, the lowest
//! `tag_bits` bits of the substring in the low bits) sorted by the substring's high `t` bits,
//! and `starts`, the offset of each of the `2^t` buckets. `t` is chosen so a bucket holds 8 to
//! 16 entries; the tag lets a bucket's entries be filtered without reading their codes. Per
//! entry that is `m * 4` bytes plus `m * 4 * 2^t / n` for the bucket offsets: at 10M entries
//! and 256-bit codes, `m = 9`, `b = 28`, `t = 20`: 39.8 bytes.
//!
//! **Search.** Rounds `j = 0, 1, 2, ...`: round `j` visits, in every table `k` with
//! `S_k >= j`, the buckets whose high bits differ from the query's in exactly `j` bits, and
//! accepts the entries whose tag differs in at most `S_k - j` bits. `r` shrinks to the worst
//! distance held once `k` results are held, so a query with a near neighbour stops after a
//! round or two, and a miss reads about `sum_k C(t, <= S_k)` buckets.
//!
//! **Writes.** A put appends the slot to an unsorted tail (scanned in full by every search);
//! when the tail reaches [`TAIL_MAX`] it is merged into a second, smaller level (rebuilt from
//! its own slots and the tail), and when that level passes an eighth of the first, both are
//! rebuilt into one. A delete changes nothing here: a freed slot fails the liveness check, and a
//! slot reused by a later put is in the tail under its new code; its old table entries only
//! make it a candidate more often, and candidates are always checked against the live code.
//! Deleted entries are dropped at the next rebuild, forced once they are a quarter of the
//! entries.

use crate::scan::hamming;

/// Slots put since the last merge, scanned in full by every search.
pub const TAIL_MAX: usize = 4096;

/// Substring layout: `m` substrings of `b` bits, substring `k` at bits `k*b .. k*b + b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub m: usize,
    pub b: u32,
}

impl Geometry {
    /// The layout for `n` entries of `code_bits`: substrings of about `log2(n) + 4.5` bits
    /// (Norouzi et al. find `log2(n)` best for the number of buckets visited; longer ones here
    /// mean fewer tables, so fewer bytes per entry and fewer buckets to visit per round, at
    /// the price of more candidates per bucket, which the tags filter), at most 32 bits.
    pub fn for_entries(code_bits: usize, n: usize) -> Self {
        let log = (n.max(2) as f64).log2();
        let m = ((code_bits as f64 / (log + 4.5)).floor() as usize).max(2).max(code_bits.div_ceil(32));
        Self::with_substrings(code_bits, m)
    }

    /// `m` substrings of `floor(code_bits / m)` bits, capped at 32 bits.
    pub fn with_substrings(code_bits: usize, m: usize) -> Self {
        let m = m.clamp(1, code_bits);
        let b = (code_bits / m).min(32) as u32;
        Self { m, b }
    }

    /// Substring `k` of `code`.
    #[inline(always)]
    pub fn key(&self, code: &[u64], k: usize) -> u32 {
        let start = k as u32 * self.b;
        let word = (start / 64) as usize;
        let offset = start % 64;
        let mut value = code[word] >> offset;
        if offset + self.b > 64 {
            value |= code[word + 1] << (64 - offset);
        }
        (value & ((1u64 << self.b) - 1)) as u32
    }

    /// The largest distance on substring `k` of a code within `r` of the query that this table
    /// must find (`None`: the other tables find every such code).
    #[inline(always)]
    pub fn radius(&self, r: u32, k: usize) -> Option<u32> {
        let r = r as usize;
        (r >= k).then(|| ((r - k) / self.m) as u32)
    }
}

/// One substring's table in one level.
#[derive(Clone, Debug, Default)]
struct Table {
    /// `2^t + 1` offsets into `entries`.
    starts: Vec<u32>,
    /// `slot << tag_bits | tag`, sorted by bucket.
    entries: Vec<u32>,
}

/// `m` tables over one set of slots.
#[derive(Clone, Debug)]
struct Level {
    /// Bucket bits (the substring's high bits).
    t: u32,
    /// Tag bits: the substring's lowest bits, as many of the `b - t` below the bucket's as the
    /// slot leaves room for in a `u32`.
    tag_bits: u32,
    /// Entries in each table (live or not when the level was built).
    len: usize,
    tables: Vec<Table>,
}

impl Level {
    /// Bucket and tag bits for `n` slots, the largest below `2^slot_bits`: about 8 to 16
    /// entries per bucket, the tag as long as the slot leaves room for. `None` when the slots
    /// need so many bits that the bucket offsets would outweigh the entries.
    pub(crate) fn split(b: u32, n: usize, max_slot: u32) -> Option<(u32, u32)> {
        let slot_bits = 32 - max_slot.leading_zeros();
        let t = (usize::BITS - 1 - n.max(1).leading_zeros()).saturating_sub(3).clamp(1, b);
        let tag_bits = (b - t).min(32 - slot_bits);
        // Offsets for 2^t buckets, against 4 bytes per entry: allow up to twice the entries.
        ((1usize << t) <= 2 * n.max(1 << 12)).then_some((t, tag_bits))
    }

    /// Builds the tables for `slots` (ascending, each with its code in `codes`), on up to
    /// `threads` threads.
    fn build(geometry: Geometry, codes: &[u64], words: usize, slots: &[u32], threads: usize) -> Option<Self> {
        let max_slot = slots.last().copied().unwrap_or(0);
        let (t, tag_bits) = Self::split(geometry.b, slots.len(), max_slot)?;
        let build_table = |k: usize| -> Table {
            let buckets = 1usize << t;
            let tag_mask = (1u32 << tag_bits) - 1;
            let mut starts = huge_vec(buckets + 1);
            let key_of = |slot: u32| {
                let s = slot as usize;
                geometry.key(&codes[s * words..(s + 1) * words], k)
            };
            for &slot in slots {
                starts[(key_of(slot) >> (geometry.b - t)) as usize + 1] += 1;
            }
            for i in 0..buckets {
                starts[i + 1] += starts[i];
            }
            let mut fill = starts[..buckets].to_vec();
            let mut entries = huge_vec(slots.len());
            for &slot in slots {
                let key = key_of(slot);
                let bucket = (key >> (geometry.b - t)) as usize;
                entries[fill[bucket] as usize] = slot << tag_bits | (key & tag_mask);
                fill[bucket] += 1;
            }
            Table { starts, entries }
        };
        let threads = threads.clamp(1, geometry.m);
        let tables = if threads == 1 || slots.len() < 1 << 16 {
            (0..geometry.m).map(build_table).collect()
        } else {
            let mut tables: Vec<Option<Table>> = vec![None; geometry.m];
            std::thread::scope(|scope| {
                let chunks: Vec<_> = tables.chunks_mut(geometry.m.div_ceil(threads)).enumerate().collect();
                let per = geometry.m.div_ceil(threads);
                for (c, chunk) in chunks {
                    let build_table = &build_table;
                    scope.spawn(move || {
                        for (i, table) in chunk.iter_mut().enumerate() {
                            *table = Some(build_table(c * per + i));
                        }
                    });
                }
            });
            tables.into_iter().map(|t| t.expect("every table built")).collect()
        };
        Some(Self { t, tag_bits, len: slots.len(), tables })
    }

    /// The slots this level was built from, ascending.
    fn slots(&self) -> Vec<u32> {
        let mut slots: Vec<u32> = self.tables[0].entries.iter().map(|e| e >> self.tag_bits).collect();
        slots.sort_unstable();
        slots
    }

    fn memory_bytes(&self) -> usize {
        self.tables.iter().map(|t| (t.starts.capacity() + t.entries.capacity()) * 4).sum()
    }
}

/// The best `k` rows seen, ordered by `(distance, tie key)`; a row offered twice (it is found
/// through several tables) is kept once.
struct Best<F: Fn(usize) -> Option<u64>> {
    k: usize,
    max_distance: u32,
    tie_key: F,
    items: Vec<(u32, u64, usize)>,
}

impl<F: Fn(usize) -> Option<u64>> Best<F> {
    /// The largest distance that can still enter.
    #[inline(always)]
    fn bound(&self) -> u32 {
        if self.items.len() == self.k {
            self.items[self.k - 1].0
        } else {
            self.max_distance
        }
    }

    #[inline(always)]
    fn offer(&mut self, distance: u32, row: usize) {
        if distance > self.bound() {
            return;
        }
        let Some(key) = (self.tie_key)(row) else { return };
        let item = (distance, key, row);
        if self.items.len() == self.k && item >= self.items[self.k - 1] {
            return;
        }
        if self.items.iter().any(|&(_, _, r)| r == row) {
            return;
        }
        let at = self.items.partition_point(|x| *x < item);
        self.items.insert(at, item);
        self.items.truncate(self.k);
    }
}

impl<F: Fn(usize) -> Option<u64>> Best<F> {
    fn finish(self) -> Vec<crate::scan::Neighbor> {
        self.items.into_iter().map(|(distance, _, row)| crate::scan::Neighbor { distance, row }).collect()
    }
}

/// A multi-index over a [`crate::index::CodeIndex`]'s code buffer. It holds slots, never codes:
/// every distance is computed from the live code, so it needs the buffer at each call.
#[derive(Clone, Debug)]
pub struct Mih {
    geometry: Geometry,
    words: usize,
    /// The main level, and the level puts are merged into (empty until the first merge).
    levels: Vec<Level>,
    /// Slots put since the last merge.
    tail: Vec<u32>,
    /// Removes since the last full rebuild.
    removed: usize,
    /// Live entries when the layout was chosen.
    built_for: usize,
    /// The tail's length that triggers a merge ([`TAIL_MAX`]; smaller in tests).
    tail_max: usize,
}

/// What a search would cost, in nanoseconds on the machine the constants were measured on.
#[derive(Clone, Copy, Debug)]
pub struct Cost {
    pub buckets: f64,
    pub candidates: f64,
    /// The tables' size: below the last-level cache a bucket visit costs much less.
    pub bytes: usize,
}

impl Cost {
    pub fn nanos(&self) -> f64 {
        // Fitted to 100k, 1M and 10M random codes (`cargo run --release --example mih_timing`):
        // a bucket visit is one or two cache misses, a candidate one more and a distance.
        if self.bytes < 16 << 20 {
            2_000.0 + 15.0 * self.buckets + 20.0 * self.candidates
        } else {
            20_000.0 + 50.0 * self.buckets + 60.0 * self.candidates
        }
    }
}

/// `n choose <= s`, as a float.
fn ball(n: u32, s: u32) -> f64 {
    let mut term = 1.0;
    let mut total = 1.0;
    for i in 0..s.min(n) {
        term = term * f64::from(n - i) / f64::from(i + 1);
        total += term;
    }
    total
}

impl Mih {
    /// Builds the index over `live` slots (ascending) with `geometry`; `None` when the slots do
    /// not fit the table layout.
    pub fn build(geometry: Geometry, codes: &[u64], words: usize, live: &[u32], threads: usize) -> Option<Self> {
        if geometry.m * geometry.b as usize > words * 64 || geometry.b == 0 {
            return None;
        }
        let level = Level::build(geometry, codes, words, live, threads)?;
        Some(Self {
            geometry,
            words,
            levels: vec![level],
            tail: Vec::new(),
            removed: 0,
            built_for: live.len(),
            tail_max: TAIL_MAX,
        })
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Entries held in the tables and the tail (dead ones included until the next rebuild).
    pub fn entries(&self) -> usize {
        self.levels.iter().map(|l| l.len).sum::<usize>() + self.tail.len()
    }

    /// Live entries when the layout was chosen.
    pub fn built_for(&self) -> usize {
        self.built_for
    }

    /// Estimated cost of a search within `r` in an index not built yet over `n` entries.
    pub fn estimate(code_bits: usize, n: usize, r: u32) -> Cost {
        let g = Geometry::for_entries(code_bits, n);
        let mut cost = Cost { buckets: 0.0, candidates: 0.0, bytes: n * g.m * 4 };
        if let Some((t, _)) = Level::split(g.b, n, n as u32) {
            for k in 0..g.m {
                if let Some(s) = g.radius(r, k) {
                    cost.buckets += ball(t, s);
                    cost.candidates += n as f64 * ball(g.b, s) / 2f64.powi(g.b as i32);
                }
            }
        } else {
            cost.buckets = f64::INFINITY;
        }
        cost
    }

    /// The estimated cost of a search within `r` (uniform codes).
    pub fn cost(&self, r: u32) -> Cost {
        let mut cost = Cost { buckets: 0.0, candidates: self.tail.len() as f64, bytes: self.memory_bytes() };
        for level in &self.levels {
            for k in 0..self.geometry.m {
                if let Some(s) = self.geometry.radius(r, k) {
                    cost.buckets += ball(level.t, s);
                    cost.candidates += level.len as f64 * ball(self.geometry.b, s) / 2f64.powi(self.geometry.b as i32);
                }
            }
        }
        cost
    }

    /// Records a put into `slot`. Returns false when a merge found slots the table layout cannot
    /// hold: the index is then correct but scans them all, and the owner should rebuild it.
    pub fn inserted(&mut self, slot: u32, codes: &[u64], live: impl Fn(u32) -> bool) -> bool {
        self.tail.push(slot);
        if self.tail.len() >= self.tail_max {
            return self.merge(codes, live);
        }
        true
    }

    #[cfg(test)]
    fn with_tail_max(mut self, tail_max: usize) -> Self {
        self.tail_max = tail_max;
        self
    }

    /// Records a delete; returns true when the index should be rebuilt from the live slots
    /// (a quarter of its entries are dead).
    pub fn removed(&mut self) -> bool {
        self.removed += 1;
        self.removed * 4 > self.entries().max(TAIL_MAX)
    }

    /// Merges the tail into the second level, or everything into one level when the second
    /// passes an eighth of the first.
    fn merge(&mut self, codes: &[u64], live: impl Fn(u32) -> bool) -> bool {
        let mut slots: Vec<u32> = std::mem::take(&mut self.tail);
        if self.levels.len() > 1 {
            slots.extend(self.levels.pop().expect("two levels").slots());
        }
        let main = self.levels[0].len;
        if slots.len() * 8 > main {
            slots.extend(self.levels.pop().expect("the main level").slots());
        }
        slots.sort_unstable();
        slots.dedup();
        slots.retain(|&s| live(s));
        let full = self.levels.is_empty();
        if full {
            self.removed = 0;
        }
        match Level::build(self.geometry, codes, self.words, &slots, if full { 2 } else { 1 }) {
            Some(level) => {
                self.levels.push(level);
                true
            }
            // Too many slot bits for the layout: keep them in the tail (scanned in full)
            // rather than lose them; the owner rebuilds or drops the index.
            None => {
                self.tail = slots;
                false
            }
        }
    }

    /// The `k` nearest rows within `max_distance`, ordered by `(distance, tie_key(row))`, rows
    /// whose `tie_key` is `None` skipped: exactly what [`crate::scan::top_k`] returns.
    pub fn search<F: Fn(usize) -> Option<u64>>(
        &self, codes: &[u64], query: &[u64], k: usize, max_distance: u32, tie_key: F,
    ) -> Vec<crate::scan::Neighbor> {
        assert_eq!(query.len(), self.words, "the query has the index's code length");
        let mut best = Best { k, max_distance, tie_key, items: Vec::with_capacity(k.min(64) + 1) };
        if k > 0 {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("popcnt") {
                // SAFETY: the CPU has popcnt, checked just above.
                unsafe { self.search_popcnt(codes, query, &mut best) };
                return best.finish();
            }
            self.search_into(codes, query, &mut best);
        }
        best.finish()
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "popcnt")]
    unsafe fn search_popcnt<F: Fn(usize) -> Option<u64>>(&self, codes: &[u64], query: &[u64], best: &mut Best<F>) {
        self.search_into(codes, query, best);
    }

    /// The search itself (inlined into a function compiled for the CPU's `popcnt`, which every
    /// distance and tag check uses).
    ///
    /// A table's buckets are grouped in blocks of `2^BLOCK_BITS` neighbours (the bucket's lowest
    /// bits), whose offsets share a cache line and whose entries lie together. Round `j`
    /// visits the blocks whose bits differ from the query's in `j` bits; in each, the buckets
    /// within the table's radius, and in those the entries whose tag is. Each stage of a chunk
    /// of blocks prefetches what the next reads, so their random reads overlap.
    #[inline(always)]
    fn search_into<F: Fn(usize) -> Option<u64>>(&self, codes: &[u64], query: &[u64], best: &mut Best<F>) {
        let words = self.words;
        let code = |slot: usize| &codes[slot * words..(slot + 1) * words];
        for &slot in &self.tail {
            best.offer(hamming(code(slot as usize), query), slot as usize);
        }
        let g = self.geometry;
        let mut keys = [0u32; 64];
        for (k, key) in keys.iter_mut().enumerate().take(g.m) {
            *key = g.key(query, k);
        }
        let mut blocks = Vec::new();
        let mut candidates: Vec<u32> = Vec::new();
        let mut j = 0u32;
        while g.radius(best.bound(), 0).is_some_and(|s| j <= s) {
            for (k, &key) in keys.iter().enumerate().take(g.m) {
                let Some(s) = g.radius(best.bound(), k) else { continue };
                if j > s {
                    continue;
                }
                let slack = s - j;
                for level in &self.levels {
                    let table = &level.tables[k];
                    let low = level.t.min(BLOCK_BITS);
                    let high = key >> (g.b - level.t);
                    let (query_block, query_low) = (high >> low, high & ((1 << low) - 1));
                    let tag_mask = (1u32 << level.tag_bits) - 1;
                    let tag = key & tag_mask;
                    blocks.clear();
                    visit_ring(level.t - low, j, |flip| blocks.push(query_block ^ flip));
                    // The buckets of a block within the radius, with the slack their tags have.
                    let mut near = [(0u32, 0u32); 1 << BLOCK_BITS];
                    let mut n_near = 0;
                    for bucket_low in 0..1u32 << low {
                        let used = (bucket_low ^ query_low).count_ones();
                        if used <= slack {
                            near[n_near] = (bucket_low, slack - used);
                            n_near += 1;
                        }
                    }
                    let near = &near[..n_near];
                    for chunk in blocks.chunks(CHUNK) {
                        for &block in chunk {
                            let first = (block << low) as usize;
                            prefetch(&table.starts[first]);
                            prefetch(&table.starts[first + (1 << low)]);
                        }
                        for &block in chunk {
                            let first = (block << low) as usize;
                            for &(bucket_low, _) in near {
                                prefetch(&table.entries[table.starts[first + bucket_low as usize] as usize..]);
                            }
                        }
                        candidates.clear();
                        for &block in chunk {
                            let first = (block << low) as usize;
                            for &(bucket_low, left) in near {
                                let bucket = first + bucket_low as usize;
                                let (from, to) = (table.starts[bucket] as usize, table.starts[bucket + 1] as usize);
                                for &entry in &table.entries[from..to] {
                                    if ((entry ^ tag) & tag_mask).count_ones() <= left {
                                        let slot = entry >> level.tag_bits;
                                        prefetch(&codes[slot as usize * words]);
                                        candidates.push(slot);
                                    }
                                }
                            }
                        }
                        for &slot in &candidates {
                            best.offer(hamming(code(slot as usize), query), slot as usize);
                        }
                    }
                }
            }
            j += 1;
        }
    }

    pub fn memory_bytes(&self) -> usize {
        self.levels.iter().map(Level::memory_bytes).sum::<usize>() + self.tail.capacity() * 4
    }
}

/// A zeroed vector of `len` words, backed by transparent huge pages where the system allows
/// them on request (`madvise` mode) and the vector is large enough to hold some.
fn huge_vec<T: Clone + Default>(len: usize) -> Vec<T> {
    let v = vec![T::default(); len];
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = v.as_ptr() as usize;
        let (from, to) = (start.next_multiple_of(HUGE), (start + len * std::mem::size_of::<T>()) / HUGE * HUGE);
        if to > from {
            // SAFETY: the range lies inside the vector's allocation, and MADV_HUGEPAGE changes
            // only how its pages are backed, never their contents.
            unsafe {
                libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_HUGEPAGE);
            }
        }
    }
    v
}

/// Blocks whose reads are overlapped (see [`Mih::search_into`]).
const CHUNK: usize = 16;
/// A block holds `2^BLOCK_BITS` buckets: their 17 offsets span at most two cache lines.
const BLOCK_BITS: u32 = 4;

/// Asks the CPU to start loading the cache line holding `value`.
#[inline(always)]
fn prefetch<T: ?Sized>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint with no effect on memory; `value` is a valid reference.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// Calls `f` with every `bits`-bit mask of exactly `j` set bits (Gosper's hack).
#[inline(always)]
fn visit_ring(bits: u32, j: u32, mut f: impl FnMut(u32)) {
    if j > bits {
        return;
    }
    if j == 0 {
        f(0);
        return;
    }
    let limit = 1u64 << bits;
    let mut x: u64 = (1u64 << j) - 1;
    while x < limit {
        f(x as u32);
        let c = x & x.wrapping_neg();
        let r = x + c;
        x = (((r ^ x) >> 2) >> c.trailing_zeros()) | r;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{top_k, Neighbor};
    use proptest::prelude::*;

    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        }
    }

    fn flat(codes: &[u64], words: usize, query: &[u64], k: usize, r: u32, live: &[bool]) -> Vec<Neighbor> {
        let _ = words;
        top_k(codes, query, k, r, |row| live[row].then_some(row as u64), true)
    }

    #[test]
    fn ring_visits_every_mask_once() {
        for bits in [1u32, 5, 12] {
            for j in 0..=bits {
                let mut seen = Vec::new();
                visit_ring(bits, j, |m| seen.push(m));
                assert_eq!(seen.len() as f64, ball(bits, j) - if j == 0 { 0.0 } else { ball(bits, j - 1) });
                assert!(seen.iter().all(|m| m.count_ones() == j && u64::from(*m) < 1 << bits));
                seen.sort_unstable();
                seen.dedup();
                assert_eq!(seen.len() as f64, ball(bits, j) - if j == 0 { 0.0 } else { ball(bits, j - 1) });
            }
        }
    }

    #[test]
    fn the_per_table_radii_cover_the_radius() {
        // Hermite: sum_k (S_k + 1) = r + 1 for every r and m.
        for m in 1..=16 {
            let g = Geometry { m, b: 16 };
            for r in 0..300u32 {
                let total: u32 = (0..m).map(|k| g.radius(r, k).map_or(0, |s| s + 1)).sum();
                assert_eq!(total, r + 1, "m={m} r={r}");
            }
        }
    }

    #[test]
    fn keys_cross_word_boundaries() {
        let g = Geometry { m: 9, b: 28 };
        let code = [u64::MAX, 0, u64::MAX, 0x0123_4567_89AB_CDEF];
        for k in 0..9 {
            let start = k * 28;
            let expect = (0..28).fold(0u32, |acc, i| {
                let bit = start + i;
                acc | ((((code[bit / 64] >> (bit % 64)) & 1) as u32) << i)
            });
            assert_eq!(g.key(&code, k), expect, "substring {k}");
        }
    }

    /// Codes at exactly distance `d` from `base`.
    fn at_distance(base: &[u64], d: usize, next: &mut impl FnMut() -> u64) -> Vec<u64> {
        let mut code = base.to_vec();
        let bits = base.len() * 64;
        let mut flipped = std::collections::BTreeSet::new();
        while flipped.len() < d {
            flipped.insert((next() % bits as u64) as usize);
        }
        for bit in flipped {
            code[bit / 64] ^= 1 << (bit % 64);
        }
        code
    }

    fn check_against_flat(codes: &[u64], words: usize, live: &[bool], mih: &Mih, queries: &[Vec<u64>]) {
        for q in queries {
            for r in [0u32, 1, 8, 20, 37, 52, 64, 90] {
                for k in [1usize, 3, 10] {
                    let want = flat(codes, words, q, k, r, live);
                    let got = mih.search(codes, q, k, r, |row| live[row].then_some(row as u64));
                    assert_eq!(got, want, "r={r} k={k}");
                }
            }
        }
    }

    #[test]
    fn matches_the_flat_scan_on_clustered_codes() {
        let mut next = rng(7);
        let words = 4;
        let centers: Vec<Vec<u64>> = (0..20).map(|_| (0..words).map(|_| next()).collect()).collect();
        let mut codes = Vec::new();
        for i in 0..20_000 {
            let d = (next() % 60) as usize;
            codes.extend(at_distance(&centers[i % 20], d, &mut next));
        }
        let n = codes.len() / words;
        let mut live = vec![true; n];
        for i in (0..n).step_by(7) {
            live[i] = false;
        }
        let slots: Vec<u32> = (0..n as u32).filter(|&s| live[s as usize]).collect();
        for m in [4, 9, 11] {
            let mih = Mih::build(Geometry::with_substrings(256, m), &codes, words, &slots, 2).unwrap();
            let queries: Vec<Vec<u64>> = (0..20)
                .map(|i| at_distance(&centers[i % 20], (next() % 70) as usize, &mut next))
                .chain((0..5).map(|i| codes[i * 4 * words..(i * 4 + 1) * words].to_vec()))
                .collect();
            check_against_flat(&codes, words, &live, &mih, &queries);
        }
    }

    #[test]
    fn codes_at_exactly_the_radius_are_found() {
        let mut next = rng(3);
        let words = 4;
        let query: Vec<u64> = (0..words).map(|_| next()).collect();
        for r in [0u32, 9, 17, 36, 37, 38, 52] {
            let mut codes: Vec<u64> = (0..5000).flat_map(|_| (0..words).map(|_| next()).collect::<Vec<_>>()).collect();
            // The code at exactly r spreads its flips evenly, so no substring is within S_k by
            // slack: the pigeonhole bound is tight.
            let mut code = query.clone();
            for i in 0..r as usize {
                let bit = (i * 256 / r.max(1) as usize + i % 3) % 256;
                code[bit / 64] ^= 1 << (bit % 64);
            }
            let d = hamming(&code, &query);
            codes.extend(&code);
            let n = codes.len() / words;
            let live = vec![true; n];
            let slots: Vec<u32> = (0..n as u32).collect();
            let mih = Mih::build(Geometry::with_substrings(256, 9), &codes, words, &slots, 1).unwrap();
            let got = mih.search(&codes, &query, 1, d, |row| Some(row as u64));
            assert_eq!(got, vec![Neighbor { distance: d, row: n - 1 }]);
            check_against_flat(&codes, words, &live, &mih, std::slice::from_ref(&query));
        }
    }

    #[test]
    fn every_spread_of_flips_over_the_substrings_is_found() {
        // For each way of putting r flips on the 9 substrings so that every substring is above
        // its radius but one, the code is still found; and codes above r never are.
        let g = Geometry::with_substrings(256, 9);
        let words = 4;
        let query = [0u64; 4];
        let mut codes = Vec::new();
        let mut dists = Vec::new();
        for r in [18u32, 37, 52] {
            for lucky in 0..g.m {
                let mut code = [0u64; 4];
                let mut flips = 0;
                for k in 0..g.m {
                    let s = g.radius(r, k).map_or(0, |s| s + 1);
                    let take = if k == lucky { g.radius(r, k).unwrap_or(0) } else { s };
                    for i in 0..take {
                        let bit = k * g.b as usize + i as usize;
                        code[bit / 64] ^= 1 << (bit % 64);
                        flips += 1;
                    }
                }
                codes.extend(code);
                dists.push(flips);
            }
        }
        let n = codes.len() / words;
        let slots: Vec<u32> = (0..n as u32).collect();
        let live = vec![true; n];
        let mih = Mih::build(g, &codes, words, &slots, 1).unwrap();
        for r in [17u32, 18, 36, 37, 51, 52, 53] {
            let want = flat(&codes, words, &query, n, r, &live);
            let got = mih.search(&codes, &query, n, r, |row| Some(row as u64));
            assert_eq!(got, want, "r={r}");
        }
        assert!(dists.iter().any(|&d| d > 0));
    }

    #[test]
    fn empty_and_single_bucket_tables() {
        let words = 4;
        // Every code identical: one bucket holds everything, the other buckets are empty.
        let codes = [0xABCDu64, 0, 0, 1].repeat(3000);
        let n = codes.len() / words;
        let slots: Vec<u32> = (0..n as u32).collect();
        let live = vec![true; n];
        let mih = Mih::build(Geometry::with_substrings(256, 9), &codes, words, &slots, 1).unwrap();
        check_against_flat(&codes, words, &live, &mih, &[vec![0xABCD, 0, 0, 1], vec![0, 0, 0, 0], vec![u64::MAX; 4]]);
        let empty = Mih::build(Geometry::with_substrings(256, 9), &[], words, &[], 1).unwrap();
        assert!(empty.search(&[], &[0; 4], 1, 256, |_| Some(0)).is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        // Puts, deletes and slot reuse interleaved: the index answers as the flat scan does.
        #[test]
        fn interleaved_writes_match_the_flat_scan(
            seed in any::<u64>(), ops in prop::collection::vec((0u8..10, any::<u32>()), 1..3000),
            m in 3usize..12,
        ) {
            let mut next = rng(seed);
            let words = 4;
            let base: Vec<u64> = (0..words).map(|_| next()).collect();
            let mut codes: Vec<u64> = Vec::new();
            let mut live: Vec<bool> = Vec::new();
            let mut free: Vec<u32> = Vec::new();
            let tail_max = 1 + (seed % 200) as usize;
            let mut mih = Mih::build(Geometry::with_substrings(256, m), &codes, words, &[], 1).unwrap().with_tail_max(tail_max);
            for (op, pick) in ops {
                if op < 7 {
                    let code = at_distance(&base, (pick % 80) as usize, &mut next);
                    let slot = match free.pop() {
                        Some(s) => {
                            codes[s as usize * words..(s as usize + 1) * words].copy_from_slice(&code);
                            s
                        }
                        None => {
                            codes.extend(&code);
                            live.push(false);
                            (live.len() - 1) as u32
                        }
                    };
                    live[slot as usize] = true;
                    let live_now = live.clone();
                    prop_assert!(mih.inserted(slot, &codes, |s| live_now[s as usize]));
                } else if !live.is_empty() {
                    let s = pick as usize % live.len();
                    if live[s] {
                        live[s] = false;
                        free.push(s as u32);
                        if mih.removed() {
                            let slots: Vec<u32> = (0..live.len() as u32).filter(|&s| live[s as usize]).collect();
                            mih = Mih::build(mih.geometry(), &codes, words, &slots, 1).unwrap().with_tail_max(tail_max);
                        }
                    }
                }
            }
            let q = at_distance(&base, (next() % 40) as usize, &mut next);
            for r in [0u32, 10, 30, 45, 70] {
                for k in [1usize, 5] {
                    let want = flat(&codes, words, &q, k, r, &live);
                    let got = mih.search(&codes, &q, k, r, |row| live[row].then_some(row as u64));
                    prop_assert_eq!(got, want);
                }
            }
        }
    }
}

//! Recency and use counts in four bytes an entry: an approximate LRU by sampling, as Redis
//! evicts, with last-use times to the second.
//!
//! **The word.** Every slot has one `u32`: the low 24 bits are the *tick* of its last use (a
//! logical clock that advances by one on every insert and hit), the high 8 bits its access count.
//! A count that reaches [`SPILLED`] moves, exactly, to a small side table (only entries used 255
//! times or more are there). When the clock reaches 2^24 every tick is halved (an O(slots)
//! pass once every 2^23 uses): the order is kept, old entries lose resolution among themselves.
//!
//! **Times.** A tick stands for a second through *marks*: `(first tick of a second, second)`,
//! appended when a use falls in a new second. The second of a use is that of the last mark at or
//! before its tick, exact while the marks are kept. Marks no live entry needs are dropped when
//! they outnumber half the live entries; if more than a quarter are still needed (a cache whose
//! entries were last used in that many distinct seconds), the older half are thinned, which rounds
//! those entries' last-use times down to an earlier kept second (never later than the truth).
//!
//! **Eviction.** A cache of at most [`EXACT_SLOTS`] slots scans them for the least recently
//! used entry: exact. A larger one samples [`SAMPLES`] live slots per eviction (a random slot,
//! or the first live one after it) into a pool of the [`POOL`] oldest candidates seen so far,
//! and evicts the oldest candidate not used since it was pooled — the design of Redis's
//! `allkeys-lru`. `benchmarks/entry_cost.py` measures its hit ratio against exact LRU on Zipf
//! traces.

use std::collections::HashMap;

use crate::index::FREE;
use crate::mapped::Column;

const TICK_BITS: u32 = 24;
const TICK_LIMIT: u32 = 1 << TICK_BITS;
const TICK_MASK: u32 = TICK_LIMIT - 1;
/// An access count of this in a word means the count is in the side table.
const SPILLED: u32 = 255;
/// Caches of at most this many slots find the least recently used entry by a full scan.
pub const EXACT_SLOTS: usize = 1024;
/// Live slots sampled per eviction.
pub const SAMPLES: usize = 8;
/// Eviction candidates kept between evictions.
pub const POOL: usize = 16;
/// Marks kept at least before pruning (32 KiB).
const MARKS_MIN: usize = 4096;

#[inline]
fn tick_of(word: u32) -> u32 {
    word & TICK_MASK
}

/// Whole seconds since the epoch, rounded down, clamped to `0..=u32::MAX` (NaN: 0).
#[inline]
pub fn seconds(now: f64) -> u32 {
    // A float-to-int `as` truncates toward zero (floor, for the positive values left), saturates
    // at u32::MAX and turns NaN into 0; unlike `floor` it is one instruction.
    if now > 0.0 {
        now as u32
    } else {
        0
    }
}

#[derive(Debug)]
pub struct Recency {
    /// Per slot: access count (high 8 bits) and tick of last use (low 24). Mapped from a
    /// loaded file until written.
    words: Column<u32>,
    /// Exact counts of slots whose word holds [`SPILLED`].
    spilled: HashMap<u32, u32>,
    /// The tick of the next use.
    clock: u32,
    /// `(tick, second)`: the first tick of each second with a use, ticks increasing.
    marks: Vec<(u32, u32)>,
    /// Eviction candidates `(tick, slot)`, oldest first.
    pool: Vec<(u32, u32)>,
    rng: u64,
}

impl Default for Recency {
    fn default() -> Self {
        Self {
            words: Column::default(),
            spilled: HashMap::new(),
            clock: 0,
            marks: Vec::new(),
            pool: Vec::with_capacity(POOL + 1),
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }
}

impl Recency {
    /// Checks a saved order (most recently used first) against the slots' generation words: it
    /// must list every live slot exactly once. The error names the problem.
    pub fn check_order(order: &[u32], generation: &[u32], live: usize) -> Result<(), String> {
        let slots = generation.len();
        if order.len() != live {
            return Err(format!("the LRU order lists {} of {live} entries", order.len()));
        }
        // Mark the listed slots in a bitmap, then compare it with the live slots in one pass:
        // equal sets of the same size as the list mean every live slot is listed exactly once.
        let mut listed = vec![0u64; slots.div_ceil(64)];
        for &handle in order {
            let h = handle as usize;
            if h >= slots {
                return Err(format!("the LRU order names slot {handle}, beyond the {slots} slots"));
            }
            listed[h / 64] |= 1 << (h % 64);
        }
        let is_listed = |h: usize| (listed[h / 64] >> (h % 64)) & 1 == 1;
        if let Some(slot) = (0..slots).find(|&h| is_listed(h) && generation[h] & FREE != 0) {
            return Err(format!("the LRU order names slot {slot}, which is free"));
        }
        if listed.iter().map(|w| w.count_ones() as usize).sum::<usize>() != live {
            return Err("the LRU order lists a slot twice".into());
        }
        Ok(())
    }

    /// Recency from a saved order (most recently used first, checked by [`Self::check_order`])
    /// over `slots` slots, given each live slot's last-use second and access count. Three passes
    /// that touch memory in order but one: the ranks scattered to the slots' words, the counts
    /// and seconds read in slot order, the marks built along the order.
    pub fn restore(
        order: &[u32], slots: usize, is_live: impl Fn(usize) -> bool, second: impl Fn(usize) -> u32,
        count: impl Fn(usize) -> u32,
    ) -> Self {
        let mut recency = Self { words: Column::from(vec![0; slots]), ..Self::default() };
        let n = order.len() as u64;
        let span = u64::from(TICK_LIMIT / 2);
        // Ranks as ticks (the least recent 0), squeezed into half the clock's range when there
        // are more.
        let tick = |rank: usize| if n <= span { rank as u32 } else { (rank as u64 * span / n) as u32 };
        for (rank, &slot) in order.iter().rev().enumerate() {
            recency.words[slot as usize] = tick(rank);
        }
        let mut seconds = vec![0u32; slots];
        for (h, word) in recency.words.iter_mut().enumerate() {
            if is_live(h) {
                seconds[h] = second(h);
                let c = count(h);
                if c >= SPILLED {
                    recency.spilled.insert(h as u32, c);
                }
                *word |= c.min(SPILLED) << TICK_BITS;
            }
        }
        for (rank, &slot) in order.iter().rev().enumerate() {
            let (t, s) = (tick(rank), seconds[slot as usize]);
            match recency.marks.last() {
                Some(&(last_tick, last)) if last == s || last_tick == t => {}
                _ => recency.marks.push((t, s)),
            }
        }
        recency.clock = order.len().checked_sub(1).map_or(0, |last| tick(last) + 1);
        recency
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: plenty for choosing samples.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// The tick of a use at second `now`, marking a new second.
    fn tick(&mut self, now: u32) -> u32 {
        if self.clock >= TICK_LIMIT {
            self.halve();
        }
        let tick = self.clock;
        self.clock += 1;
        if self.marks.last().is_none_or(|&(_, s)| s != now) {
            self.marks.push((tick, now));
        }
        tick
    }

    /// Halves every tick (words, pool and clock rounded down, marks up), keeping their order.
    /// A use at tick `t` at or after a mark `m` stays at or after it (`t/2 >= m/2` rounded
    /// down) unless `t = m` is odd, and a use before it stays before (`(m-1)/2 < (m+1)/2`):
    /// a time may round down to the previous mark's, never up. Marks that meet keep the first.
    fn halve(&mut self) {
        for word in self.words.iter_mut() {
            *word = (*word & !TICK_MASK) | (tick_of(*word) >> 1);
        }
        for mark in &mut self.marks {
            mark.0 = mark.0.div_ceil(2);
        }
        self.marks.dedup_by_key(|m| m.0);
        for candidate in &mut self.pool {
            candidate.0 >>= 1;
        }
        // Past every mark, so that the next use's mark has a tick of its own.
        self.clock = (self.clock >> 1) + 1;
    }

    fn ensure(&mut self, slot: u32) {
        let s = slot as usize;
        if s >= self.words.len() {
            self.words.to_mut().resize(s + 1, 0);
        }
    }

    fn set_count(&mut self, slot: u32, count: u32) {
        let s = slot as usize;
        if self.words[s] >> TICK_BITS == SPILLED {
            self.spilled.remove(&slot);
        }
        let stored = if count >= SPILLED {
            self.spilled.insert(slot, count);
            SPILLED
        } else {
            count
        };
        self.words[s] = (stored << TICK_BITS) | tick_of(self.words[s]);
    }

    /// A new entry in `slot`, created at second `now`: count 0, most recently used.
    pub fn insert(&mut self, slot: u32, now: u32) {
        self.ensure(slot);
        self.set_count(slot, 0);
        self.words[slot as usize] = self.tick(now);
    }

    /// A use of the entry in `slot` at second `now`: counted, most recently used.
    pub fn touch(&mut self, slot: u32, now: u32) {
        self.ensure(slot);
        let count = self.count(slot).saturating_add(1);
        self.set_count(slot, count);
        let tick = self.tick(now);
        let s = slot as usize;
        self.words[s] = (self.words[s] & !TICK_MASK) | tick;
    }

    /// Forgets the entry in `slot` (deleted).
    pub fn remove(&mut self, slot: u32) {
        if (slot as usize) < self.words.len() {
            self.set_count(slot, 0);
        }
        self.pool.retain(|&(_, s)| s != slot);
    }

    pub fn count(&self, slot: u32) -> u32 {
        match self.words.get(slot as usize).map(|w| w >> TICK_BITS) {
            Some(SPILLED) => self.spilled.get(&slot).copied().unwrap_or(SPILLED),
            Some(count) => count,
            None => 0,
        }
    }

    /// The second of the entry's last use (see the module documentation).
    pub fn last_second(&self, slot: u32) -> u32 {
        let tick = self.words.get(slot as usize).map_or(0, |&w| tick_of(w));
        match self.marks.partition_point(|&(t, _)| t <= tick) {
            0 => self.marks.first().map_or(0, |&(_, s)| s),
            i => self.marks[i - 1].1,
        }
    }

    /// Drops marks no live slot needs once they outnumber half the live entries (at least
    /// [`MARKS_MIN`]); thins the older half while more than a quarter remain.
    pub fn prune_marks(&mut self, live: usize, is_live: impl Fn(u32) -> bool) {
        if self.marks.len() <= MARKS_MIN.max(live / 2) {
            return;
        }
        let mut needed = vec![false; self.marks.len()];
        *needed.last_mut().expect("marks") = true;
        for (slot, &word) in self.words.iter().enumerate() {
            if is_live(slot as u32) {
                let i = self.marks.partition_point(|&(t, _)| t <= tick_of(word));
                needed[i.saturating_sub(1)] = true;
            }
        }
        let mut keep = needed.into_iter();
        self.marks.retain(|_| keep.next().unwrap_or(true));
        let target = MARKS_MIN.max(live / 4);
        while self.marks.len() > target {
            let half = self.marks.len() / 2;
            let mut thinned: Vec<(u32, u32)> = self.marks[..half].iter().step_by(2).copied().collect();
            thinned.extend_from_slice(&self.marks[half..]);
            self.marks = thinned;
        }
    }

    /// Marks held (for tests and statistics).
    pub fn marks(&self) -> usize {
        self.marks.len()
    }

    /// The entry to evict among `slots` slots holding `live` live entries, or `None` if none is
    /// live (see the module documentation).
    pub fn victim(&mut self, slots: usize, live: usize, is_live: impl Fn(u32) -> bool) -> Option<u32> {
        let slots = slots.min(self.words.len());
        if live == 0 || slots == 0 {
            return None;
        }
        if slots > EXACT_SLOTS {
            for _round in 0..4 {
                for _ in 0..SAMPLES.min(live) {
                    // A random slot, or the next live one after it (a sparse store costs
                    // slots / live steps a sample, never a full scan).
                    let start = (self.next_random() % slots as u64) as usize;
                    if let Some(slot) = (start..slots).chain(0..start).map(|s| s as u32).find(|&s| is_live(s)) {
                        self.offer(slot);
                    }
                }
                while !self.pool.is_empty() {
                    let (tick, slot) = self.pool.remove(0);
                    if is_live(slot) && tick_of(self.words[slot as usize]) == tick {
                        return Some(slot);
                    }
                }
            }
        }
        // Small caches, and the rare case of four rounds of candidates all used since: the
        // exact scan.
        (0..slots as u32).filter(|&s| is_live(s)).min_by_key(|&s| (tick_of(self.words[s as usize]), s))
    }

    /// Puts `slot` among the eviction candidates if it is older than one of them.
    fn offer(&mut self, slot: u32) {
        let tick = tick_of(self.words[slot as usize]);
        if self.pool.iter().any(|&(_, s)| s == slot)
            || (self.pool.len() == POOL && self.pool.last().is_some_and(|&(t, _)| tick >= t))
        {
            return;
        }
        let at = self.pool.partition_point(|&(t, _)| t <= tick);
        self.pool.insert(at, (tick, slot));
        self.pool.truncate(POOL);
    }

    /// Live slots, most recently used first (equal ticks by slot).
    pub fn order(&self, slots: usize, is_live: impl Fn(u32) -> bool) -> Vec<u32> {
        let mut live: Vec<u64> = (0..slots.min(self.words.len()) as u32)
            .filter(|&s| is_live(s))
            .map(|s| (u64::from(TICK_MASK - tick_of(self.words[s as usize])) << 32) | u64::from(s))
            .collect();
        live.sort_unstable();
        live.into_iter().map(|key| key as u32).collect()
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Bytes held (capacity).
    pub fn memory_bytes(&self) -> usize {
        self.words.heap_bytes() + self.spilled.capacity() * 9 + self.marks.capacity() * 8 + POOL * 8
    }

    /// Bytes read in place from a loaded file.
    pub fn mapped_bytes(&self) -> usize {
        self.words.mapped_bytes()
    }

    /// What a file keeps: the words of the first `slots` slots (zeros past the last one
    /// written), the clock, the marks, and the spilled counts by slot.
    #[allow(clippy::type_complexity)]
    pub fn saved(&self, slots: usize) -> (Vec<u32>, u32, &[(u32, u32)], Vec<(u32, u32)>) {
        let mut words = self.words[..slots.min(self.words.len())].to_vec();
        words.resize(slots, 0);
        let mut spilled: Vec<(u32, u32)> = self.spilled.iter().map(|(&s, &c)| (s, c)).collect();
        spilled.sort_unstable();
        (words, self.clock, &self.marks, spilled)
    }

    /// Recency as a file kept it (see [`Self::saved`]), checked against the slots' generation
    /// words: the ticks of live slots and of the marks below the clock, the marks in order, a
    /// free slot without a count, a live slot's count byte [`SPILLED`] exactly when its count is
    /// in `spilled` (sorted by slot, each at least [`SPILLED`]). The error names the problem.
    pub fn from_saved(
        words: Column<u32>, clock: u32, marks: Vec<(u32, u32)>, spilled: &[(u32, u32)], generation: &[u32],
    ) -> Result<Self, String> {
        if clock > TICK_LIMIT {
            return Err(format!("the use clock {clock} is past its range"));
        }
        if marks.windows(2).any(|w| w[0].0 >= w[1].0) || marks.last().is_some_and(|m| m.0 >= clock) {
            return Err("the second marks are out of order".into());
        }
        if words.len() != generation.len() {
            return Err(format!("{} recency words for {} slots", words.len(), generation.len()));
        }
        let mut next = spilled.iter().peekable();
        for (slot, (&word, &generation)) in words.iter().zip(generation).enumerate() {
            let live = generation & FREE == 0;
            let count = word >> TICK_BITS;
            let bad = if live { tick_of(word) >= clock } else { count != 0 };
            if bad {
                return Err(format!("slot {slot}'s recency word {word:#x} does not fit the clock {clock}"));
            }
            if live && count == SPILLED {
                match next.next() {
                    Some(&(s, c)) if s as usize == slot && c >= SPILLED => {}
                    _ => return Err(format!("slot {slot}'s access count is missing from the spilled counts")),
                }
            }
        }
        if next.next().is_some() {
            return Err("a spilled access count belongs to no slot that needs one".into());
        }
        Ok(Self { words, spilled: spilled.iter().copied().collect(), clock, marks, ..Self::default() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(n: u32) -> Recency {
        let mut r = Recency::default();
        for s in 0..n {
            r.insert(s, 100);
        }
        r
    }

    #[test]
    fn small_caches_evict_exactly_the_least_recently_used() {
        let mut r = filled(5);
        r.touch(0, 101);
        r.touch(1, 101);
        assert_eq!(r.victim(5, 5, |_| true), Some(2));
        assert_eq!(r.victim(5, 4, |s| s != 2), Some(3));
        assert_eq!(r.order(5, |_| true), vec![1, 0, 4, 3, 2]);
        assert_eq!(r.victim(5, 0, |_| false), None);
    }

    #[test]
    fn counts_are_exact_past_the_byte() {
        let mut r = filled(2);
        for i in 0..1000 {
            r.touch(1, 100 + i / 100);
        }
        assert_eq!((r.count(0), r.count(1)), (0, 1000));
        assert_eq!(r.spilled.len(), 1);
        r.insert(1, 200); // a new entry in the slot starts again
        assert_eq!(r.count(1), 0);
        assert!(r.spilled.is_empty());
        for _ in 0..300 {
            r.touch(0, 200);
        }
        r.remove(0);
        assert_eq!((r.count(0), r.spilled.len()), (0, 0));
    }

    #[test]
    fn last_use_seconds_are_exact_and_survive_halving() {
        let mut r = Recency::default();
        let mut expected = Vec::new();
        for s in 0..50u32 {
            r.insert(s, 1000 + s / 3);
            expected.push(1000 + s / 3);
        }
        for (s, &e) in expected.iter().enumerate() {
            assert_eq!(r.last_second(s as u32), e);
        }
        let order = r.order(50, |_| true);
        r.clock = TICK_LIMIT; // the next use halves
        r.touch(7, 2000);
        assert_eq!(r.last_second(7), 2000);
        // The order is kept, with neighbours now sharing a tick.
        let ticks: Vec<u32> = order.iter().filter(|&&s| s != 7).map(|&s| tick_of(r.words[s as usize])).collect();
        assert!(ticks.windows(2).all(|w| w[0] >= w[1]), "{ticks:?}");
        assert_eq!(r.order(50, |_| true)[0], 7);
        // A halving may round a time down, never up.
        for (s, &e) in expected.iter().enumerate().filter(|&(s, _)| s != 7) {
            assert!(r.last_second(s as u32) <= e && r.last_second(s as u32) >= 1000);
        }
    }

    #[test]
    fn pruning_keeps_needed_marks_and_thinning_rounds_down() {
        let mut r = Recency::default();
        // One entry per second: every mark is needed.
        for s in 0..10_000u32 {
            r.insert(s, s);
        }
        // Overwrite most: their old seconds' marks are no longer needed.
        for s in 100..10_000u32 {
            r.touch(s, 20_000);
        }
        r.prune_marks(10_000, |_| true);
        assert!(r.marks() <= 101);
        for s in 0..100 {
            assert_eq!(r.last_second(s), s);
        }
        assert_eq!(r.last_second(5_000), 20_000);
        // Distinct seconds for all: thinning bounds the marks, times only go down.
        let mut r = Recency::default();
        for s in 0..20_000u32 {
            r.insert(s, s * 2);
        }
        r.prune_marks(20_000, |_| true);
        assert!(r.marks() <= MARKS_MIN.max(20_000 / 4));
        for s in 0..20_000u32 {
            assert!(r.last_second(s) <= s * 2);
        }
        assert_eq!(r.last_second(19_999), 39_998, "recent times stay exact");
    }

    #[test]
    fn sampling_evicts_old_entries_and_skips_ones_used_since() {
        let n = 20_000u32;
        let mut r = filled(n);
        // Touch all but the first quarter: those are the old ones. Eight samples an eviction
        // find one of them with probability 1 - 0.75^8 = 0.9.
        for s in n / 4..n {
            r.touch(s, 101);
        }
        let mut evicted = Vec::new();
        let mut live = vec![true; n as usize];
        for _ in 0..500 {
            let v = r.victim(n as usize, n as usize, |s| live[s as usize]).unwrap();
            live[v as usize] = false;
            r.remove(v);
            evicted.push(v);
        }
        let old = evicted.iter().filter(|&&v| v < n / 4).count();
        assert!(old >= 420, "{old} of 500 evictions were of the oldest quarter");
        // A pooled candidate used since is not evicted.
        let mut r = filled(n);
        r.victim(n as usize, n as usize, |_| true);
        let pooled: Vec<u32> = r.pool.iter().map(|&(_, s)| s).collect();
        for &s in &pooled {
            r.touch(s, 102);
        }
        let v = r.victim(n as usize, n as usize, |_| true).unwrap();
        assert!(!pooled.contains(&v));
    }

    /// Hit ratio of sampled against exact LRU on a Zipf(1.0) trace over ten times the capacity
    /// (`cargo test --release -- --ignored --nocapture zipf`); benchmarks/entry_cost.py measures
    /// the cache store itself.
    #[test]
    #[ignore]
    fn zipf_hit_ratio_against_exact_lru() {
        let (capacity, keys, ops) = (20_000usize, 200_000usize, 2_000_000usize);
        // Zipf(1.0) by inverting the cumulative weights.
        let cumulative: Vec<f64> = (1..=keys)
            .scan(0.0, |acc, k| {
                *acc += 1.0 / k as f64;
                Some(*acc)
            })
            .collect();
        let total = *cumulative.last().unwrap();
        let mut rng = 42u64;
        let mut trace = Vec::with_capacity(ops);
        for _ in 0..ops {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let u = (rng >> 11) as f64 / (1u64 << 53) as f64 * total;
            trace.push(cumulative.partition_point(|&c| c < u).min(keys - 1));
        }
        // Exact LRU: a queue with stamps.
        let mut stamp = vec![0u64; keys];
        let mut resident = vec![false; keys];
        let mut queue = std::collections::VecDeque::new();
        let (mut hits, mut size) = (0usize, 0usize);
        for (t, &k) in trace.iter().enumerate() {
            let t = t as u64 + 1;
            if resident[k] {
                hits += 1;
            } else {
                if size == capacity {
                    while let Some((old, s)) = queue.pop_front() {
                        if resident[old] && stamp[old] == s {
                            resident[old] = false;
                            break;
                        }
                    }
                } else {
                    size += 1;
                }
                resident[k] = true;
            }
            stamp[k] = t;
            queue.push_back((k, t));
        }
        let exact = hits as f64 / ops as f64;
        // Sampled: slots as in the cache.
        let mut r = Recency::default();
        let mut slot_of = vec![u32::MAX; keys];
        let mut key_of: Vec<usize> = Vec::new();
        let mut free: Vec<u32> = Vec::new();
        let mut hits = 0usize;
        for &k in &trace {
            if slot_of[k] != u32::MAX {
                hits += 1;
                r.touch(slot_of[k], 1);
                continue;
            }
            let live = key_of.len() - free.len();
            if live == capacity {
                let v = r.victim(key_of.len(), live, |s| key_of[s as usize] != usize::MAX).unwrap();
                slot_of[key_of[v as usize]] = u32::MAX;
                key_of[v as usize] = usize::MAX;
                r.remove(v);
                free.push(v);
            }
            let slot = free.pop().unwrap_or_else(|| {
                key_of.push(usize::MAX);
                key_of.len() as u32 - 1
            });
            key_of[slot as usize] = k;
            slot_of[k] = slot;
            r.insert(slot, 1);
        }
        let sampled = hits as f64 / ops as f64;
        println!("exact {exact:.4} sampled {sampled:.4} diff {:.4}", exact - sampled);
        assert!((exact - sampled).abs() < 0.01);
    }

    #[test]
    fn a_sparse_store_samples_live_slots_without_scanning_everything() {
        let mut r = filled(100_000);
        let live = |s: u32| s % 1000 == 3; // 100 live slots in 100,000
        r.touch(3, 200);
        let v = r.victim(100_000, 100, live).unwrap();
        assert!(live(v) && v != 3);
    }

    #[test]
    fn restore_rebuilds_order_times_and_counts() {
        let order = vec![3, 0, 2]; // most recent first; slot 1 is free
        let r = Recency::restore(&order, 4, |s| s != 1, |s| 500 + s as u32, |s| s as u32 * 200);
        assert_eq!(r.order(4, |s| s != 1), order);
        for &s in &order {
            assert_eq!((r.last_second(s), r.count(s)), (500 + s, s * 200));
        }
        assert!(Recency::check_order(&[3, 0, 3], &[0, crate::index::FREE, 0, 0], 3).is_err());
        assert!(Recency::check_order(&[3, 0, 1], &[0, crate::index::FREE, 0, 0], 3).is_err());
        assert!(Recency::check_order(&[3, 0, 2], &[0, crate::index::FREE, 0, 0], 3).is_ok());
    }

    #[test]
    fn seconds_round_down_and_clamp() {
        assert_eq!(seconds(12.9), 12);
        assert_eq!(seconds(-3.0), 0);
        assert_eq!(seconds(f64::NAN), 0);
        assert_eq!(seconds(1e20), u32::MAX);
    }
}

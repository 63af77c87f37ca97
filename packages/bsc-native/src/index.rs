//! A binary-code index with stable slots, stable ids and slot reuse.
//!
//! Codes live in one contiguous slot-major `Vec<u64>`. An entry keeps its slot for life, so
//! per-slot side tables (the cache's metadata) never move. A removed slot stays in the buffer,
//! marked free, until the next insert reuses it; scans read it but never report it (the
//! liveness check runs only for rows that beat the current bound, which is rare). Per slot the
//! index keeps one `u32`: the slot's generation, with the top bit set while the slot is free.
//!
//! An id is `generation << 32 | slot`. A freed slot is reused by the next insert with its
//! generation bumped, so an id that was removed never resolves to the entry that reuses its
//! slot. A slot reused 2^31 - 1 times is retired rather than let its generation wrap, so ids
//! are never repeated (and stay non-negative `i64`).

use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::mapped::{Codes, Column};
use crate::mih::{Geometry, Mih};
use crate::scan::{self, Neighbor};

/// Smallest and largest supported code length in bits.
pub const MIN_CODE_BITS: usize = 64;
pub const MAX_CODE_BITS: usize = 4096;

/// Set in a slot's generation word while the slot is free.
pub(crate) const FREE: u32 = 1 << 31;
const GENERATION_MASK: u32 = FREE - 1;
/// Slots are `u32` handles; `u32::MAX` stays reserved as a "no slot" marker for side tables.
pub const MAX_ENTRIES: usize = (u32::MAX - 1) as usize;

/// An entry id: stable for the life of the entry, never reused for another entry.
pub type Id = u64;

/// Checks a code length and returns the number of 64-bit words per code.
pub fn words_for_bits(code_bits: usize) -> Result<usize> {
    if !(MIN_CODE_BITS..=MAX_CODE_BITS).contains(&code_bits) || !code_bits.is_multiple_of(64) {
        return Err(Error::InvalidCodeBits(code_bits));
    }
    Ok(code_bits / 64)
}

#[inline]
fn make_id(handle: u32, generation: u32) -> Id {
    (u64::from(generation) << 32) | u64::from(handle)
}

#[inline]
fn split_id(id: Id) -> (u32, u32) {
    ((id & 0xFFFF_FFFF) as u32, (id >> 32) as u32)
}

/// A search hit: the entry id and its Hamming distance to the query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    pub id: Id,
    pub distance: u32,
}

/// How a search finds its results (the results are the same either way).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SearchMode {
    /// The multi-index where its estimated cost is below the flat scan's, else the flat scan.
    #[default]
    Auto,
    /// Always the flat scan (every code read).
    Flat,
    /// Always the multi-index (built on first use), whatever the radius.
    Indexed,
}

impl SearchMode {
    pub fn name(self) -> &'static str {
        match self {
            SearchMode::Auto => "auto",
            SearchMode::Flat => "flat",
            SearchMode::Indexed => "indexed",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "auto" => Some(SearchMode::Auto),
            "flat" => Some(SearchMode::Flat),
            "indexed" => Some(SearchMode::Indexed),
            _ => None,
        }
    }
}

/// Below this many slots `Auto` never builds the multi-index: the flat scan of a few MB is
/// as fast (measured crossover: docs/PERFORMANCE.md).
pub const INDEX_MIN_SLOTS: usize = 50_000;

#[derive(Clone, Debug)]
pub struct CodeIndex {
    words: usize,
    /// Slot-major codes of every allocated slot, live or free.
    pub(crate) codes: Codes,
    /// Per allocated-or-once-allocated slot: its generation, with [`FREE`] set while free.
    pub(crate) generation: Column<u32>,
    /// Allocated slots that are free, reused last-freed first.
    pub(crate) free_slots: Vec<u32>,
    pub(crate) len: usize,
    /// How searches run.
    mode: SearchMode,
    /// The multi-index over the codes, built on the first search that wants it (`None` inside:
    /// the slots did not fit its layout) and kept exact by every write since.
    mih: OnceLock<Option<Mih>>,
    /// The number of substrings the multi-index uses, when the user chose it.
    substrings: Option<usize>,
}

impl CodeIndex {
    pub fn new(code_bits: usize) -> Result<Self> {
        Ok(Self {
            words: words_for_bits(code_bits)?,
            codes: Codes::default(),
            generation: Column::default(),
            free_slots: Vec::new(),
            len: 0,
            mode: SearchMode::Auto,
            mih: OnceLock::new(),
            substrings: None,
        })
    }

    pub fn search_mode(&self) -> SearchMode {
        self.mode
    }

    pub fn set_search_mode(&mut self, mode: SearchMode) {
        self.mode = mode;
    }

    /// Sets the multi-index's number of substrings (`None`: chosen from the number of entries)
    /// and drops the index built so far.
    pub fn set_substrings(&mut self, substrings: Option<usize>) -> Result<()> {
        if let Some(m) = substrings {
            let bits = self.code_bits();
            if !(2..=bits / 4).contains(&m) {
                return Err(Error::InvalidArgument(format!(
                    "substrings must be between 2 and {} for {bits}-bit codes, got {m}",
                    bits / 4
                )));
            }
        }
        self.substrings = substrings;
        self.mih = OnceLock::new();
        Ok(())
    }

    /// The multi-index, if built.
    pub fn multi_index(&self) -> Option<&Mih> {
        self.mih.get().and_then(Option::as_ref)
    }

    /// Builds the multi-index now (a search builds it on first need otherwise); false when the
    /// slots do not fit its layout.
    pub fn build_index(&self) -> bool {
        self.index().is_some()
    }

    fn index(&self) -> Option<&Mih> {
        self.mih
            .get_or_init(|| {
                let geometry = match self.substrings {
                    Some(m) => Geometry::with_substrings(self.code_bits(), m),
                    None => Geometry::for_entries(self.code_bits(), self.len),
                };
                let live: Vec<u32> = (0..self.slots() as u32).filter(|&s| self.is_live_handle(s)).collect();
                Mih::build(geometry, &self.codes, self.words, &live, 2)
            })
            .as_ref()
    }

    /// Whether a search within `max_distance` should use the multi-index.
    fn use_index(&self, max_distance: u32) -> bool {
        match self.mode {
            SearchMode::Flat => false,
            SearchMode::Indexed => true,
            SearchMode::Auto => {
                let slots = self.slots();
                if slots < INDEX_MIN_SLOTS || self.words > 16 {
                    return false;
                }
                let flat = scan::flat_nanos(slots, self.words);
                match self.mih.get() {
                    Some(Some(mih)) => mih.cost(max_distance).nanos() < flat,
                    Some(None) => false,
                    None => Mih::estimate(self.code_bits(), self.len, max_distance).nanos() < flat,
                }
            }
        }
    }
    pub fn code_bits(&self) -> usize {
        self.words * 64
    }

    pub fn words(&self) -> usize {
        self.words
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots in the code buffer, live or free: what a scan reads.
    pub(crate) fn slots(&self) -> usize {
        self.codes.len() / self.words
    }

    /// The slot (handle) an id names, if the id is live.
    pub fn handle_of(&self, id: Id) -> Option<u32> {
        let (handle, generation) = split_id(id);
        let h = handle as usize;
        // A live slot's word has FREE clear, and a valid id's generation is below 2^31, so one
        // comparison checks both that the slot is live and that the id is current.
        (id >> 63 == 0 && h < self.slots() && self.generation[h] == generation).then_some(handle)
    }

    pub fn contains(&self, id: Id) -> bool {
        self.handle_of(id).is_some()
    }

    /// The id of the entry that currently owns `handle` (which must be live).
    pub fn id_of_handle(&self, handle: u32) -> Id {
        make_id(handle, self.generation[handle as usize])
    }

    /// Whether slot `handle` exists and holds an entry.
    #[inline]
    pub(crate) fn is_live_handle(&self, handle: u32) -> bool {
        self.generation.get(handle as usize).is_some_and(|g| g & FREE == 0)
    }

    /// The id of the entry in slot `row`, or `None` when the slot is free.
    #[inline]
    fn live_id(&self, row: usize) -> Option<Id> {
        let generation = self.generation[row];
        (generation & FREE == 0).then(|| make_id(row as u32, generation))
    }

    /// A live slot's tie key in a search: the slot itself, so ties go to the lowest slot and a
    /// scan (which visits slots in order) can stop at the first `k` exact matches.
    #[inline]
    fn tie_key(&self, row: usize) -> Option<u64> {
        self.live_id(row).map(|_| row as u64)
    }

    /// The code stored under `id`.
    pub fn code(&self, id: Id) -> Option<&[u64]> {
        let slot = self.handle_of(id)? as usize;
        Some(&self.codes[slot * self.words..(slot + 1) * self.words])
    }

    /// Ids of all live entries, in slot order.
    pub fn ids(&self) -> Vec<Id> {
        (0..self.slots()).filter_map(|row| self.live_id(row)).collect()
    }

    /// Number of handles (live or free): the size of per-handle side tables.
    pub fn handle_capacity(&self) -> usize {
        self.generation.len()
    }

    /// Checks that `codes` is a whole number of codes and that they fit; returns how many.
    pub fn check_batch(&self, codes: &[u64]) -> Result<usize> {
        if codes.is_empty() || !codes.len().is_multiple_of(self.words) {
            return Err(Error::BadCodeLength { expected_words: self.words, got_words: codes.len() });
        }
        let n = codes.len() / self.words;
        if self.len() + n > MAX_ENTRIES {
            return Err(Error::Full { len: self.len(), adding: n, limit: MAX_ENTRIES });
        }
        Ok(n)
    }

    /// Adds codes (a whole number of rows) and returns their ids, in order.
    pub fn add(&mut self, codes: &[u64]) -> Result<Vec<Id>> {
        let n = self.check_batch(codes)?;
        self.codes.to_mut().reserve(codes.len().saturating_sub(self.free_slots.len() * self.words));
        let mut ids = Vec::with_capacity(n);
        for code in codes.chunks_exact(self.words) {
            ids.push(self.push_row(code));
        }
        Ok(ids)
    }

    /// Inserts one code, which the caller has checked has `words` words and fits: into the
    /// most recently freed slot, else a new slot at the end.
    pub(crate) fn push_row(&mut self, code: &[u64]) -> Id {
        debug_assert_eq!(code.len(), self.words);
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                let s = slot as usize;
                self.codes[s * self.words..(s + 1) * self.words].copy_from_slice(code);
                slot
            }
            None => {
                let slot = self.slots() as u32;
                self.codes.to_mut().extend_from_slice(code);
                if slot as usize == self.generation.len() {
                    self.generation.push(FREE);
                }
                slot
            }
        };
        let s = slot as usize;
        self.generation[s] &= GENERATION_MASK; // live
        self.len += 1;
        if let Some(Some(mih)) = self.mih.get_mut() {
            let generation = &self.generation;
            let kept = mih.inserted(slot, &self.codes, |h| generation[h as usize] & FREE == 0);
            // Four times the entries it was laid out for: a new layout fits better.
            if !kept || mih.entries() > 4 * mih.built_for().max(INDEX_MIN_SLOTS) {
                self.mih = OnceLock::new();
            }
        }
        self.id_of_handle(slot)
    }

    /// Removes an entry; returns its slot, or `None` when the id is not live.
    pub fn remove(&mut self, id: Id) -> Option<u32> {
        let slot = self.handle_of(id)?;
        let s = slot as usize;
        let next = (self.generation[s] + 1) & GENERATION_MASK;
        self.generation[s] = next | FREE;
        // After 2^31 - 1 reuses the generation would start again at 0 and repeat old ids: the
        // slot is retired instead (it stays free and is never handed out again).
        if next != 0 {
            self.free_slots.push(slot);
        }
        self.len -= 1;
        if let Some(Some(mih)) = self.mih.get_mut() {
            if mih.removed() {
                self.mih = OnceLock::new();
            }
        }
        Some(slot)
    }

    /// Removes every entry and returns the code buffer's memory. Ids handed out before stay
    /// dead: the generation table is kept, and slots are handed out again from 0.
    pub fn clear(&mut self) {
        for generation in self.generation.iter_mut() {
            if *generation & FREE == 0 {
                *generation = ((*generation + 1) & GENERATION_MASK) | FREE;
            }
        }
        self.codes = Codes::default();
        self.free_slots = Vec::new();
        self.len = 0;
        self.mih = OnceLock::new();
    }

    /// The `k` nearest entries within `max_distance`, nearest first, ties by ascending slot (the
    /// low 32 bits of the id). The scan stops early once it holds `k` entries at distance 0.
    pub fn search(&self, query: &[u64], k: usize, max_distance: u32) -> Result<Vec<Hit>> {
        self.search_where(query, k, max_distance, |_| true)
    }

    /// Fails unless `query` has this index's code length.
    pub fn check_query(&self, query: &[u64]) -> Result<()> {
        if query.len() != self.words {
            return Err(Error::BadCodeLength { expected_words: self.words, got_words: query.len() });
        }
        Ok(())
    }

    /// [`CodeIndex::search`] over the live entries for whose slot `keep` is true. `keep` runs
    /// inside the scan, only for rows that would enter the result, so the result is the `k`
    /// nearest kept entries however many nearer entries are not kept.
    pub fn search_where(
        &self, query: &[u64], k: usize, max_distance: u32, keep: impl Fn(usize) -> bool,
    ) -> Result<Vec<Hit>> {
        self.check_query(query)?;
        let tie_key = |row| if keep(row) { self.tie_key(row) } else { None };
        let found = match self.use_index(max_distance).then(|| self.index()).flatten() {
            Some(mih) => mih.search(&self.codes, query, k.min(self.len), max_distance, tie_key),
            None => scan::top_k(&self.codes, query, k, max_distance, tie_key, true),
        };
        Ok(found
            .into_iter()
            .map(|Neighbor { distance, row }| Hit { id: self.id_of_handle(row as u32), distance })
            .collect())
    }

    /// [`CodeIndex::search`] for `queries.len() / words` queries, on up to `threads` threads.
    pub fn search_batch(&self, queries: &[u64], k: usize, max_distance: u32, threads: usize) -> Result<Vec<Vec<Hit>>> {
        if queries.is_empty() || !queries.len().is_multiple_of(self.words) {
            return Err(Error::BadCodeLength {
                expected_words: self.words,
                got_words: queries.len() % self.words.max(1),
            });
        }
        let found = scan::top_k_batch(
            &self.codes,
            queries,
            self.words,
            k,
            max_distance,
            threads,
            |row| self.tie_key(row),
            true,
        );
        Ok(found
            .into_iter()
            .map(|hits| {
                hits.into_iter()
                    .map(|Neighbor { distance, row }| Hit { id: self.id_of_handle(row as u32), distance })
                    .collect()
            })
            .collect())
    }

    /// Bytes of a loaded file this index reads in place (0 once it has been changed).
    pub fn mapped_bytes(&self) -> usize {
        self.codes.mapped_bytes() + self.generation.mapped_bytes()
    }

    /// Bytes held by this index's buffers on the heap (capacity, not length).
    pub fn memory_bytes(&self) -> usize {
        self.codes.heap_bytes() + self.generation.heap_bytes() + self.free_slots.capacity() * 4 + self.index_bytes()
    }

    /// Bytes held by the multi-index (0 until built).
    pub fn index_bytes(&self) -> usize {
        self.multi_index().map_or(0, Mih::memory_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn code_bits_must_be_a_multiple_of_64_in_range() {
        for bad in [0, 1, 63, 65, 100, 4160, 8192] {
            assert!(matches!(CodeIndex::new(bad), Err(Error::InvalidCodeBits(b)) if b == bad));
        }
        for good in [64, 128, 256, 1024, 4096] {
            assert_eq!(CodeIndex::new(good).unwrap().code_bits(), good);
        }
    }

    #[test]
    fn add_search_remove() {
        let mut index = CodeIndex::new(128).unwrap();
        let ids = index.add(&[0, 0, 1, 0, 3, 0]).unwrap();
        assert_eq!(index.len(), 3);
        let hits = index.search(&[1, 0], 2, u32::MAX).unwrap();
        assert_eq!(hits, vec![Hit { id: ids[1], distance: 0 }, Hit { id: ids[0], distance: 1 }]);
        assert_eq!(index.remove(ids[1]), Some(1));
        assert_eq!(index.remove(ids[1]), None);
        assert!(!index.contains(ids[1]));
        assert_eq!(index.code(ids[2]), Some(&[3u64, 0][..]));
        let hits = index.search(&[1, 0], 1, u32::MAX).unwrap();
        assert_eq!(hits[0].distance, 1);
    }

    #[test]
    fn removed_slot_is_reused_under_a_new_id() {
        let mut index = CodeIndex::new(64).unwrap();
        let a = index.add(&[1]).unwrap()[0];
        index.remove(a).unwrap();
        let b = index.add(&[2]).unwrap()[0];
        assert_ne!(a, b);
        assert_eq!(index.handle_capacity(), 1, "the freed handle was reused");
        assert!(!index.contains(a));
        assert_eq!(index.code(b), Some(&[2u64][..]));
    }

    #[test]
    fn a_free_slot_is_never_reported() {
        let mut index = CodeIndex::new(64).unwrap();
        let ids = index.add(&[7, 0xFF, 0xFFFF]).unwrap();
        index.remove(ids[0]).unwrap();
        // The freed slot still holds 7, the exact query, but only live slots come back.
        let hits = index.search(&[7], 3, u32::MAX).unwrap();
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![ids[1], ids[2]]);
        assert_eq!(index.len(), 2);
        assert_eq!(index.ids(), vec![ids[1], ids[2]]);
        let batch = index.search_batch(&[7, 7], 1, u32::MAX, 2).unwrap();
        assert_eq!(batch, vec![vec![hits[0]], vec![hits[0]]]);
    }

    #[test]
    fn clear_kills_old_ids() {
        let mut index = CodeIndex::new(64).unwrap();
        let old = index.add(&[1, 2, 3]).unwrap();
        index.clear();
        assert!(index.is_empty());
        let new = index.add(&[1, 2, 3]).unwrap();
        for id in old {
            assert!(!index.contains(id));
            assert!(!new.contains(&id));
        }
    }

    #[test]
    fn bad_lengths_are_rejected_without_change() {
        let mut index = CodeIndex::new(128).unwrap();
        assert!(matches!(index.add(&[1, 2, 3]), Err(Error::BadCodeLength { .. })));
        assert!(matches!(index.add(&[]), Err(Error::BadCodeLength { .. })));
        assert!(index.is_empty());
        assert!(matches!(index.search(&[1], 1, 0), Err(Error::BadCodeLength { .. })));
    }

    #[test]
    fn forged_ids_do_not_resolve() {
        let mut index = CodeIndex::new(64).unwrap();
        let id = index.add(&[1]).unwrap()[0];
        assert!(!index.contains(id | (1 << 63)));
        assert!(!index.contains(id + (1 << 32)));
        assert!(!index.contains(12345));
    }

    #[test]
    fn modes_and_substrings() {
        let mut index = CodeIndex::new(256).unwrap();
        assert_eq!(index.search_mode(), SearchMode::Auto);
        for name in ["auto", "flat", "indexed"] {
            assert_eq!(SearchMode::parse(name).unwrap().name(), name);
        }
        assert!(SearchMode::parse("fast").is_none());
        assert!(matches!(index.set_substrings(Some(1)), Err(Error::InvalidArgument(_))));
        assert!(matches!(index.set_substrings(Some(65)), Err(Error::InvalidArgument(_))));
        index.set_substrings(Some(11)).unwrap();
        index.add(&[1, 2, 3, 4]).unwrap();
        assert!(index.multi_index().is_none(), "built on first need");
        index.set_search_mode(SearchMode::Indexed);
        assert_eq!(index.search(&[1, 2, 3, 4], 1, 10).unwrap()[0].distance, 0);
        assert_eq!(index.multi_index().unwrap().geometry().m, 11);
        assert!(index.index_bytes() > 0);
        index.clear();
        assert!(index.multi_index().is_none());
    }

    #[test]
    fn auto_uses_the_index_for_small_radii_over_many_codes() {
        let mut index = CodeIndex::new(256).unwrap();
        let mut s = 99u64;
        let codes: Vec<u64> = (0..4 * 200_000)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s
            })
            .collect();
        index.add(&codes).unwrap();
        // Everything within 128 bits: the flat scan is cheaper.
        index.search(&codes[..4], 1, 128).unwrap();
        assert!(index.multi_index().is_none());
        let hits = index.search(&codes[4..8], 1, 20).unwrap();
        assert_eq!(hits[0].distance, 0);
        assert!(index.multi_index().is_some(), "a radius of 20 over 200k codes uses the index");
    }

    #[derive(Debug, Clone)]
    enum Op256 {
        Add(Vec<(u8, u64)>),
        Remove(usize),
        Search(u8, u64, usize, u32),
        Clear,
    }

    fn op256() -> impl Strategy<Value = Op256> {
        prop_oneof![
            6 => prop::collection::vec((0u8..90, any::<u64>()), 1..40).prop_map(Op256::Add),
            4 => any::<usize>().prop_map(Op256::Remove),
            2 => (0u8..90, any::<u64>(), 1usize..6, 0u32..80).prop_map(|(d, s, k, r)| Op256::Search(d, s, k, r)),
            1 => Just(Op256::Clear),
        ]
    }

    /// A code `flips` bits (picked from `seed`) away from `base`.
    fn near(base: &[u64; 4], flips: u8, mut seed: u64) -> [u64; 4] {
        let mut code = *base;
        for _ in 0..flips {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let bit = (seed >> 56) as usize;
            code[bit / 64] ^= 1 << (bit % 64);
        }
        code
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        // The multi-index, kept up to date by puts, removes (slot reuse) and clears, answers as
        // the flat scan does: clustered 256-bit codes, so many are near each query.
        #[test]
        fn indexed_search_matches_the_flat_scan(ops in prop::collection::vec(op256(), 1..80), m in 2usize..12) {
            let base = [0x0123_4567_89AB_CDEF, 0xFEDC_BA98_7654_3210, 0x0F0F_0F0F_F0F0_F0F0, 0x5555_AAAA_3333_CCCC];
            let mut index = CodeIndex::new(256).unwrap();
            index.set_substrings(Some(m)).unwrap();
            index.set_search_mode(SearchMode::Indexed);
            let mut ids: Vec<Id> = Vec::new();
            for op in ops {
                match op {
                    Op256::Add(codes) => {
                        let flat: Vec<u64> = codes.iter().flat_map(|&(d, s)| near(&base, d, s)).collect();
                        ids.extend(index.add(&flat).unwrap());
                    }
                    Op256::Remove(pick) => {
                        if !ids.is_empty() {
                            let id = ids.swap_remove(pick % ids.len());
                            prop_assert!(index.remove(id).is_some());
                        }
                    }
                    Op256::Search(d, seed, k, r) => {
                        let query = near(&base, d, seed);
                        let mut flat = index.clone();
                        flat.set_search_mode(SearchMode::Flat);
                        prop_assert_eq!(index.search(&query, k, r).unwrap(), flat.search(&query, k, r).unwrap());
                    }
                    Op256::Clear => {
                        index.clear();
                        ids.clear();
                    }
                }
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add(Vec<u64>),
        Remove(usize),
        Search(u64, usize, Option<u32>),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => prop::collection::vec(0u64..16, 1..6).prop_map(Op::Add),
            3 => any::<usize>().prop_map(Op::Remove),
            3 => (0u64..16, 1usize..6, prop::option::of(0u32..4)).prop_map(|(q, k, r)| Op::Search(q, k, r)),
            1 => Just(Op::Clear),
        ]
    }

    proptest! {
        // The index behaves like a map from id to code searched by brute force.
        #[test]
        fn behaves_like_a_map(ops in prop::collection::vec(op(), 1..60)) {
            let mut index = CodeIndex::new(64).unwrap();
            let mut model: BTreeMap<Id, u64> = BTreeMap::new();
            let mut dead: Vec<Id> = Vec::new();
            for op in ops {
                match op {
                    Op::Add(codes) => {
                        let ids = index.add(&codes).unwrap();
                        for (id, code) in ids.into_iter().zip(codes) {
                            prop_assert!(!dead.contains(&id), "a dead id came back");
                            prop_assert!(model.insert(id, code).is_none());
                        }
                    }
                    Op::Remove(pick) => {
                        if let Some(&id) = model.keys().nth(pick % (model.len() + 1)) {
                            prop_assert!(index.remove(id).is_some());
                            model.remove(&id);
                            dead.push(id);
                        }
                    }
                    Op::Search(q, k, radius) => {
                        let radius = radius.unwrap_or(u32::MAX);
                        let mut expect: Vec<(u32, Id)> = model
                            .iter()
                            .map(|(id, c)| ((c ^ q).count_ones(), *id))
                            .filter(|(d, _)| *d <= radius)
                            .collect();
                        // Ties go to the lower slot (the low 32 bits of the id).
                        expect.sort_by_key(|&(d, id)| (d, id & 0xFFFF_FFFF));
                        expect.truncate(k);
                        let got: Vec<(u32, Id)> = index
                            .search(&[q], k, radius)
                            .unwrap()
                            .into_iter()
                            .map(|h| (h.distance, h.id))
                            .collect();
                        prop_assert_eq!(got, expect);
                    }
                    Op::Clear => {
                        index.clear();
                        dead.extend(model.keys());
                        model.clear();
                    }
                }
                prop_assert_eq!(index.len(), model.len());
                for (id, code) in &model {
                    prop_assert_eq!(index.code(*id), Some(&[*code][..]));
                }
                for id in &dead {
                    prop_assert!(!index.contains(*id));
                }
            }
        }
    }
}

//! A dense binary-code index with stable ids and slot reuse.
//!
//! Codes live in one contiguous row-major `Vec<u64>` with no holes: removing a row moves the
//! last row into its place, so a scan reads live codes only. Ids stay stable through such moves
//! because an id names a *handle*, and the handle table says where its row currently is.
//!
//! An id is `generation << 32 | handle`. A freed handle is reused by the next insert with its
//! generation bumped, so an id that was removed never resolves to the entry that reuses its
//! slot. Generations wrap after 2^31 reuses of one handle (ids stay non-negative `i64`).

use crate::error::{Error, Result};
use crate::scan::{self, Neighbor};

/// Smallest and largest supported code length in bits.
pub const MIN_CODE_BITS: usize = 64;
pub const MAX_CODE_BITS: usize = 4096;

const FREE: u32 = u32::MAX;
const GENERATION_MASK: u32 = (1 << 31) - 1;
/// Handles are `u32` with `u32::MAX` reserved as the free marker.
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

#[derive(Clone, Debug)]
pub struct CodeIndex {
    words: usize,
    codes: Vec<u64>,
    row_handle: Vec<u32>,
    handle_row: Vec<u32>,
    handle_generation: Vec<u32>,
    free_handles: Vec<u32>,
}

impl CodeIndex {
    pub fn new(code_bits: usize) -> Result<Self> {
        Ok(Self {
            words: words_for_bits(code_bits)?,
            codes: Vec::new(),
            row_handle: Vec::new(),
            handle_row: Vec::new(),
            handle_generation: Vec::new(),
            free_handles: Vec::new(),
        })
    }

    pub fn code_bits(&self) -> usize {
        self.words * 64
    }

    pub fn words(&self) -> usize {
        self.words
    }

    pub fn len(&self) -> usize {
        self.row_handle.len()
    }

    pub fn is_empty(&self) -> bool {
        self.row_handle.is_empty()
    }

    /// The handle an id names, if the id is live.
    pub fn handle_of(&self, id: Id) -> Option<u32> {
        let (handle, generation) = split_id(id);
        let h = handle as usize;
        (id >> 63 == 0
            && h < self.handle_row.len()
            && self.handle_row[h] != FREE
            && self.handle_generation[h] == generation)
            .then_some(handle)
    }

    pub fn contains(&self, id: Id) -> bool {
        self.handle_of(id).is_some()
    }

    /// The id of the entry that currently owns `handle` (which must be live).
    pub fn id_of_handle(&self, handle: u32) -> Id {
        make_id(handle, self.handle_generation[handle as usize])
    }

    fn id_of_row(&self, row: usize) -> Id {
        self.id_of_handle(self.row_handle[row])
    }

    /// The code stored under `id`.
    pub fn code(&self, id: Id) -> Option<&[u64]> {
        let handle = self.handle_of(id)?;
        let row = self.handle_row[handle as usize] as usize;
        Some(&self.codes[row * self.words..(row + 1) * self.words])
    }

    /// Ids of all live entries, in storage order.
    pub fn ids(&self) -> Vec<Id> {
        (0..self.len()).map(|row| self.id_of_row(row)).collect()
    }

    /// Number of handles (live or free): the size of per-handle side tables.
    pub fn handle_capacity(&self) -> usize {
        self.handle_row.len()
    }

    /// Checks that `codes` is a whole number of codes and that they fit; returns how many.
    pub fn check_batch(&self, codes: &[u64]) -> Result<usize> {
        if codes.is_empty() || !codes.len().is_multiple_of(self.words) {
            return Err(Error::BadCodeLength {
                expected_words: self.words,
                got_words: codes.len(),
            });
        }
        let n = codes.len() / self.words;
        if self.len() + n > MAX_ENTRIES {
            return Err(Error::Full {
                len: self.len(),
                adding: n,
                limit: MAX_ENTRIES,
            });
        }
        Ok(n)
    }

    /// Appends codes (a whole number of rows) and returns their ids, in order.
    pub fn add(&mut self, codes: &[u64]) -> Result<Vec<Id>> {
        let n = self.check_batch(codes)?;
        self.codes.reserve(codes.len());
        self.row_handle.reserve(n);
        let mut ids = Vec::with_capacity(n);
        for code in codes.chunks_exact(self.words) {
            ids.push(self.push_row(code));
        }
        Ok(ids)
    }

    /// Inserts one code, which the caller has checked has `words` words and fits.
    pub(crate) fn push_row(&mut self, code: &[u64]) -> Id {
        debug_assert_eq!(code.len(), self.words);
        let row = self.row_handle.len() as u32;
        let handle = match self.free_handles.pop() {
            Some(handle) => {
                self.handle_row[handle as usize] = row;
                handle
            }
            None => {
                let handle = self.handle_row.len() as u32;
                self.handle_row.push(row);
                self.handle_generation.push(0);
                handle
            }
        };
        self.codes.extend_from_slice(code);
        self.row_handle.push(handle);
        self.id_of_handle(handle)
    }

    /// Removes an entry; returns its handle, or `None` when the id is not live.
    pub fn remove(&mut self, id: Id) -> Option<u32> {
        let handle = self.handle_of(id)?;
        let row = self.handle_row[handle as usize] as usize;
        let last = self.len() - 1;
        if row != last {
            let w = self.words;
            self.codes.copy_within(last * w..(last + 1) * w, row * w);
            let moved = self.row_handle[last];
            self.row_handle[row] = moved;
            self.handle_row[moved as usize] = row as u32;
        }
        self.codes.truncate(last * self.words);
        self.row_handle.truncate(last);
        self.release_handle(handle);
        Some(handle)
    }

    fn release_handle(&mut self, handle: u32) {
        let h = handle as usize;
        self.handle_row[h] = FREE;
        self.handle_generation[h] = (self.handle_generation[h] + 1) & GENERATION_MASK;
        self.free_handles.push(handle);
    }

    /// Removes every entry. Ids handed out before stay dead.
    pub fn clear(&mut self) {
        for row in 0..self.len() {
            let handle = self.row_handle[row];
            self.release_handle(handle);
        }
        self.codes.clear();
        self.row_handle.clear();
        self.codes.shrink_to(0);
        self.row_handle.shrink_to(0);
    }

    /// The `k` nearest entries within `max_distance`, nearest first, ties by ascending id.
    pub fn search(&self, query: &[u64], k: usize, max_distance: u32) -> Result<Vec<Hit>> {
        if query.len() != self.words {
            return Err(Error::BadCodeLength {
                expected_words: self.words,
                got_words: query.len(),
            });
        }
        let found = scan::top_k(&self.codes, query, k, max_distance, |row| self.id_of_row(row));
        Ok(found
            .into_iter()
            .map(|Neighbor { distance, row }| Hit {
                id: self.id_of_row(row),
                distance,
            })
            .collect())
    }

    /// [`CodeIndex::search`] for `queries.len() / words` queries, on up to `threads` threads.
    pub fn search_batch(
        &self,
        queries: &[u64],
        k: usize,
        max_distance: u32,
        threads: usize,
    ) -> Result<Vec<Vec<Hit>>> {
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
            |row| self.id_of_row(row),
        );
        Ok(found
            .into_iter()
            .map(|hits| {
                hits.into_iter()
                    .map(|Neighbor { distance, row }| Hit {
                        id: self.id_of_row(row),
                        distance,
                    })
                    .collect()
            })
            .collect())
    }

    /// Bytes held by this index's buffers (capacity, not length).
    pub fn memory_bytes(&self) -> usize {
        self.codes.capacity() * 8
            + (self.row_handle.capacity()
                + self.handle_row.capacity()
                + self.handle_generation.capacity()
                + self.free_handles.capacity())
                * 4
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
        assert_eq!(
            hits,
            vec![
                Hit {
                    id: ids[1],
                    distance: 0
                },
                Hit {
                    id: ids[0],
                    distance: 1
                }
            ]
        );
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
        assert!(matches!(
            index.search(&[1], 1, 0),
            Err(Error::BadCodeLength { .. })
        ));
    }

    #[test]
    fn forged_ids_do_not_resolve() {
        let mut index = CodeIndex::new(64).unwrap();
        let id = index.add(&[1]).unwrap()[0];
        assert!(!index.contains(id | (1 << 63)));
        assert!(!index.contains(id + (1 << 32)));
        assert!(!index.contains(12345));
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
                        expect.sort();
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

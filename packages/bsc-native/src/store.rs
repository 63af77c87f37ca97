//! The thread-safe engine objects: a [`CodeIndex`] or a [`CacheCore`] behind a reader-writer
//! lock, with the save coordination, the queue of LRU uses and the counters. The Python classes
//! are thin wrappers around [`SharedIndex`] and [`SharedCache`]; everything here is plain Rust,
//! tested by `cargo test`.
//!
//! # Locking
//!
//! Reads (scans, copies of entries, stats) take the read lock and run in parallel. Writers take
//! the write lock, but first the *writer gate*, a mutex that a save also holds while it writes
//! the file under the read lock. So a writer that arrives during a save waits at the gate, not
//! on the reader-writer lock: `std::sync::RwLock` admits no new reader while a writer waits on
//! it, and a writer queued there behind a save would stop every lookup until the save ends.
//! Saves therefore never hold lookups up; writers wait for a save's data to be written, as
//! before. A cache hit's LRU update takes the write lock only if it is free at once (no gate:
//! it never waits); otherwise the use goes to the [`TouchQueue`], which the next holder of the
//! write lock applies first.
//!
//! Lock order: the save lock, then the writer gate, then the reader-writer lock, then the touch
//! queue's mutex. No method holds a lock while it waits for one earlier in that order.

use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::cache::{touched, CacheCore, EntryView};
use crate::error::{Error, Result};
use crate::format::{self, Counters, Extras, Kind, PendingSave};
use crate::index::{CodeIndex, Id};
use crate::touch::TouchQueue;

/// Seconds since the Unix epoch, as the cache stores times (0 if the clock is before it).
pub fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// A value behind a reader-writer lock, with the writer gate and the save lock described in the
/// module documentation.
#[derive(Debug, Default)]
pub struct Shared<T> {
    lock: RwLock<T>,
    /// Held by every writer while it takes and holds the write lock, and by a save while it
    /// writes under the read lock.
    writers: Mutex<()>,
    /// One save at a time per object, so an older snapshot never renames over a newer one.
    saving: Mutex<()>,
}

/// The gate and the save lock guard nothing but their own turn, so a panic elsewhere leaves
/// them usable.
fn turn(mutex: &Mutex<()>) -> MutexGuard<'_, ()> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T> Shared<T> {
    pub fn new(value: T) -> Self {
        Self { lock: RwLock::new(value), writers: Mutex::new(()), saving: Mutex::new(()) }
    }

    fn read_guard(&self) -> Result<RwLockReadGuard<'_, T>> {
        self.lock.read().map_err(|_| Error::Poisoned)
    }

    /// The write lock, taken through the writer gate (held as long as the write lock is).
    fn write_guard(&self) -> Result<(MutexGuard<'_, ()>, RwLockWriteGuard<'_, T>)> {
        let gate = turn(&self.writers);
        let guard = self.lock.write().map_err(|_| Error::Poisoned)?;
        Ok((gate, guard))
    }

    /// Runs `f` under the read lock.
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> Result<R> {
        Ok(f(&*self.read_guard()?))
    }

    /// Runs `f` under the write lock.
    pub fn write<R>(&self, f: impl FnOnce(&mut T) -> R) -> Result<R> {
        let (_gate, mut guard) = self.write_guard()?;
        Ok(f(&mut guard))
    }

    /// Runs `f` under the write lock if the writer gate is free now, `None` if it is not (a save
    /// or another writer holds it): for a reader's clean-up, which must not wait behind a save.
    pub fn write_if_free<R>(&self, f: impl FnOnce(&mut T) -> R) -> Result<Option<R>> {
        let gate = match self.writers.try_lock() {
            Ok(gate) => gate,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return Ok(None),
        };
        let mut guard = self.lock.write().map_err(|_| Error::Poisoned)?;
        let out = f(&mut guard);
        drop(guard);
        drop(gate);
        Ok(Some(out))
    }

    /// Saves crash-safely to `path`: `prepare`, if any, runs under the write lock (to settle
    /// state that belongs in the file), then `write` writes the data into a temporary file
    /// beside `path` under the read lock, with the writer gate held so that writers wait at the
    /// gate, not on the lock, and lookups carry on; the fsyncs and the rename run after both are
    /// released.
    pub fn save_with(
        &self, path: &Path, prepare: Option<impl FnOnce(&mut T)>, write: impl FnOnce(&PendingSave, &T) -> Result<()>,
    ) -> Result<()> {
        let _one = turn(&self.saving);
        let pending = PendingSave::begin(path)?;
        {
            let gate = turn(&self.writers);
            if let Some(prepare) = prepare {
                prepare(&mut *self.lock.write().map_err(|_| Error::Poisoned)?);
            }
            // Still holding the gate: no writer can come in between, and none waits on the lock.
            let guard = self.read_guard()?;
            write(&pending, &guard)?;
            drop(guard);
            drop(gate);
        }
        pending.commit()
    }
}

/// Opens `path` as a file of `kind`, checking the fingerprint when one is expected.
fn open_file(path: &Path, kind: Kind, fingerprint: Option<&str>) -> Result<(format::Opened, Extras)> {
    let opened = format::open(path)?;
    opened.expect(kind)?;
    if let Some(expected) = fingerprint {
        opened.expect_fingerprint(expected)?;
    }
    let extras = opened.extras()?;
    Ok((opened, extras))
}

/// What an engine object carries besides its entries: the encoder that made its codes ("" when
/// unknown) and the caller's metadata bytes of the file it was loaded from (empty otherwise).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Label {
    pub fingerprint: String,
    pub meta: Vec<u8>,
}

impl Label {
    /// The extras a save writes: this fingerprint, the caller's `meta` and `counters`.
    fn extras(&self, meta: Vec<u8>, counters: Counters) -> Extras {
        let fingerprint = self.fingerprint.clone();
        Extras { fingerprint, meta, counters }
    }
}

/// A [`CodeIndex`] shared between threads: the engine of `bsc_native.BinaryIndex`.
#[derive(Debug)]
pub struct SharedIndex {
    index: Shared<CodeIndex>,
    code_bits: usize,
    pub label: Label,
}

impl SharedIndex {
    pub fn new(index: CodeIndex, fingerprint: String) -> Self {
        let label = Label { fingerprint, meta: Vec::new() };
        Self { code_bits: index.code_bits(), index: Shared::new(index), label }
    }

    /// Loads an index saved by [`SharedIndex::save`], checking its fingerprint if one is given.
    pub fn load(path: &Path, fingerprint: Option<&str>) -> Result<Self> {
        let (opened, extras) = open_file(path, Kind::Index, fingerprint)?;
        let mut index = Self::new(opened.index()?, extras.fingerprint);
        index.label.meta = extras.meta;
        Ok(index)
    }

    pub fn code_bits(&self) -> usize {
        self.code_bits
    }

    /// Runs `f` under the read lock.
    pub fn read<R>(&self, f: impl FnOnce(&CodeIndex) -> R) -> Result<R> {
        self.index.read(f)
    }

    /// Runs `f` under the write lock.
    pub fn write<R>(&self, f: impl FnOnce(&mut CodeIndex) -> R) -> Result<R> {
        self.index.write(f)
    }

    /// [`CodeIndex::search_batch`] as one `(m, width)` table of ids and one of distances, row
    /// major, where `width` is the longest result list (at least 1), padded with -1.
    pub fn search_batch_padded(
        &self, queries: &[u64], k: usize, max_distance: u32, threads: usize,
    ) -> Result<(usize, Vec<i64>, Vec<i32>)> {
        let found = self.read(|index| index.search_batch(queries, k, max_distance, threads))??;
        let width = found.iter().map(Vec::len).max().unwrap_or(0).max(k.min(1));
        let mut ids = vec![-1i64; found.len() * width];
        let mut distances = vec![-1i32; found.len() * width];
        for (j, hits) in found.iter().enumerate() {
            for (i, hit) in hits.iter().enumerate() {
                ids[j * width + i] = hit.id as i64;
                distances[j * width + i] = hit.distance as i32;
            }
        }
        Ok((width, ids, distances))
    }

    /// Saves the index with its fingerprint and the caller's `meta`; searches proceed meanwhile,
    /// changes wait until the data is written.
    pub fn save(&self, path: &Path, meta: Vec<u8>) -> Result<()> {
        let extras = self.label.extras(meta, Counters::default());
        self.index.save_with(path, None::<fn(&mut CodeIndex)>, |pending, index| {
            format::write_index(pending.path(), pending.file(), index, &extras)
        })
    }
}

/// How a lookup finds the entry it serves: its id and distance, under the read lock.
pub type FindEntry<'a> = dyn Fn(&CacheCore) -> Result<Option<(Id, u32)>> + Sync + 'a;

/// An entry served by a lookup: its distance and its state after the use.
pub type Served = (u32, EntryView);

/// Counters and sizes of a [`SharedCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub size: usize,
    pub max_entries: usize,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub memory_bytes: usize,
    pub response_bytes: usize,
    pub mapped_bytes: usize,
    pub expirations: u64,
    pub namespaces: usize,
    /// LRU uses dropped because the touch queue was full (see [`crate::touch`]); not saved.
    pub lru_touches_dropped: u64,
}

impl Stats {
    /// Every field by name, in the order `CacheStore.stats()` lists them.
    pub fn named(&self) -> [(&'static str, u64); 11] {
        [
            ("size", self.size as u64),
            ("max_entries", self.max_entries as u64),
            ("hits", self.hits),
            ("misses", self.misses),
            ("evictions", self.evictions),
            ("memory_bytes", self.memory_bytes as u64),
            ("response_bytes", self.response_bytes as u64),
            ("mapped_bytes", self.mapped_bytes as u64),
            ("expirations", self.expirations),
            ("namespaces", self.namespaces as u64),
            ("lru_touches_dropped", self.lru_touches_dropped),
        ]
    }
}

/// A [`CacheCore`] shared between threads, with its counters and queue of LRU uses: the engine
/// of `bsc_native.CacheStore`.
#[derive(Debug)]
pub struct SharedCache {
    core: Shared<CacheCore>,
    code_bits: usize,
    max_entries: usize,
    pub label: Label,
    /// Hits whose LRU update found the write lock taken; applied by its next holder.
    touches: TouchQueue,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

impl SharedCache {
    pub fn new(core: CacheCore, counters: Counters) -> Self {
        Self::with_touches(core, counters, TouchQueue::default())
    }

    /// A cache whose LRU uses queue in `touches` (tests use a small one).
    pub fn with_touches(core: CacheCore, counters: Counters, touches: TouchQueue) -> Self {
        Self {
            code_bits: core.code_bits(),
            max_entries: core.max_entries(),
            label: Label::default(),
            core: Shared::new(core),
            touches,
            hits: AtomicU64::new(counters.hits),
            misses: AtomicU64::new(counters.misses),
            evictions: AtomicU64::new(counters.evictions),
        }
    }

    /// Loads a cache saved by [`SharedCache::save`], checking its fingerprint if one is given;
    /// with `max_entries`, the least recently used entries beyond it are evicted (and counted).
    /// With `verify_all`, every response block is checked now rather than on first read.
    pub fn load(path: &Path, fingerprint: Option<&str>, max_entries: Option<usize>, verify_all: bool) -> Result<Self> {
        let (opened, extras) = open_file(path, Kind::Cache, fingerprint)?;
        let mut core = opened.cache(verify_all)?;
        let evicted = match max_entries {
            Some(max) => core.set_max_entries(max)?.len() as u64,
            None => 0,
        };
        let counters = Counters { evictions: extras.counters.evictions.saturating_add(evicted), ..extras.counters };
        let mut cache = Self::new(core, counters);
        cache.label = Label { fingerprint: extras.fingerprint, meta: extras.meta };
        Ok(cache)
    }

    pub fn code_bits(&self) -> usize {
        self.code_bits
    }

    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Runs `f` under the read lock.
    pub fn read<R>(&self, f: impl FnOnce(&CacheCore) -> R) -> Result<R> {
        self.core.read(f)
    }

    /// Runs `f` under the write lock, after applying queued LRU uses.
    pub fn write<R>(&self, f: impl FnOnce(&mut CacheCore) -> R) -> Result<R> {
        self.core.write(|core| {
            self.touches.apply(core);
            f(core)
        })
    }

    /// Stores one entry (see [`CacheCore::put_in`]) at the current time; counts its evictions.
    pub fn put(&self, code: &[u64], payload: &[u8], name: &[u8], expires: u32, key: u64) -> Result<Id> {
        let (id, evicted) = self.write(|core| core.put_in(code, payload, now(), name, expires, key))??;
        self.evictions.fetch_add(evicted.len() as u64, Ordering::Relaxed);
        Ok(id)
    }

    /// The nearest unexpired entry of partition `name` within `max_distance`, served (see
    /// [`SharedCache::serve`]); counts a hit or a miss. Also returns the distance of the
    /// partition's nearest entry: with `nearest` at any distance (the scan admits every
    /// distance), otherwise only within `max_distance`.
    pub fn lookup(
        &self, query: &[u64], max_distance: u32, name: &[u8], nearest: bool,
    ) -> Result<(Option<Served>, Option<u32>)> {
        let scan_radius = if nearest { self.code_bits as u32 } else { max_distance };
        let best = AtomicU32::new(u32::MAX);
        let found = self.serve(&|core: &CacheCore| {
            let hit = core.nearest_in(query, scan_radius, name, now())?;
            best.store(hit.map_or(u32::MAX, |h| h.distance), Ordering::Relaxed);
            Ok(hit.filter(|h| h.distance <= max_distance).map(|h| (h.id, h.distance)))
        })?;
        let best = best.load(Ordering::Relaxed);
        Ok((self.count(found, true), (best != u32::MAX).then_some(best)))
    }

    /// The unexpired entry of partition `name` with exact-match `key`, served (distance 0);
    /// counts a hit when found and nothing otherwise.
    pub fn lookup_key(&self, key: u64, name: &[u8]) -> Result<Option<Served>> {
        let found = self.serve(&|core: &CacheCore| Ok(core.find_key(key, name, now()).map(|id| (id, 0))))?;
        Ok(self.count(found, false))
    }

    /// The entry `id` if it is live, unexpired and in partition `name`, served (distance 0);
    /// counts a hit when found and nothing otherwise.
    pub fn lookup_id(&self, id: Id, name: &[u8]) -> Result<Option<Served>> {
        let found = self.serve(&|core: &CacheCore| Ok(core.find_id(id, name, now()).map(|id| (id, 0))))?;
        Ok(self.count(found, false))
    }

    /// The `k` nearest unexpired entries of partition `name` within `max_distance`, nearest
    /// first, copied under one read lock without marking them used or counting anything, and
    /// the distance of the partition's nearest entry at any distance. An entry whose response
    /// fails its checksum is removed and its error returned, as by a lookup.
    pub fn candidates(
        &self, query: &[u64], k: usize, max_distance: u32, name: &[u8],
    ) -> Result<(Vec<Served>, Option<u32>)> {
        let mut unreadable: Option<(Id, Error)> = None;
        let (found, nearest) = self.core.read(|core| -> Result<_> {
            // The k nearest at any distance: those within the radius are the k nearest within
            // it, and the first is the nearest, as `lookup` with `nearest` reports it.
            let hits = core.search_in(query, k, core.code_bits() as u32, Some(name), now())?;
            let nearest = hits.first().map(|h| h.distance);
            let mut out = Vec::with_capacity(hits.len());
            for hit in hits.into_iter().filter(|h| h.distance <= max_distance) {
                match core.peek(hit.id) {
                    Ok(Some(view)) => out.push((hit.distance, view)),
                    Ok(None) => {}
                    Err(err) => {
                        unreadable = Some((hit.id, err));
                        break;
                    }
                }
            }
            Ok((out, nearest))
        })??;
        match unreadable {
            Some((id, err)) => Err(self.drop_unreadable(id, err)),
            None => Ok((found, nearest)),
        }
    }

    /// Finds an entry with `find` under the read lock and serves it: copies it, marks it used
    /// and returns it with its distance. The scan and the copy run under the read lock, so
    /// lookups proceed in parallel with each other and with a save. The O(1) LRU update then
    /// takes the write lock if it is free; if it is not, the use is queued for the next holder
    /// rather than waiting. If the entry was deleted in between, `find` runs again; after
    /// three such races in a row the lookup reports a miss. Counts nothing.
    pub fn serve(&self, find: &FindEntry<'_>) -> Result<Option<Served>> {
        for _ in 0..3 {
            let (id, distance, view) = {
                let core = self.core.read_guard()?;
                let Some((id, distance)) = find(&core)? else {
                    return Ok(None);
                };
                (id, distance, core.peek(id))
            };
            let view = match view {
                Ok(view) => view,
                Err(err) => return Err(self.drop_unreadable(id, err)),
            };
            let Some(view) = view else { continue };
            let at = now();
            // Not through the writer gate: this never waits, so it cannot stop readers.
            match self.core.lock.try_write() {
                Ok(mut core) => {
                    self.touches.apply(&mut core);
                    match core.touch(id, at) {
                        Ok(Some(view)) => return Ok(Some((distance, view))),
                        Ok(None) => {}
                        Err(err) => {
                            drop(core);
                            return Err(self.drop_unreadable(id, err));
                        }
                    }
                }
                Err(TryLockError::WouldBlock) => {
                    self.touches.push(id, at);
                    return Ok(Some((distance, touched(view, at))));
                }
                Err(TryLockError::Poisoned(_)) => return Err(Error::Poisoned),
            }
        }
        Ok(None)
    }

    /// Counts a hit, or a miss when `count_miss`.
    fn count(&self, found: Option<Served>, count_miss: bool) -> Option<Served> {
        if found.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        } else if count_miss {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// A hit whose response fails its checksum: the entry is removed, so it is never tried
    /// again, and the error says so. Not while a save holds the writer gate: a lookup never
    /// waits for a save, so the entry is then left for the next lookup that meets it.
    fn drop_unreadable(&self, id: Id, err: Error) -> Error {
        // A poisoned lock here is reported by the next call; this one reports the corruption.
        let removed = self.core.write_if_free(|core| {
            self.touches.apply(core);
            core.delete(id);
        });
        let what = match removed {
            Ok(Some(())) => "the entry that needed it was removed from the cache",
            _ => "the entry that needed it is removed when a lookup next meets it while no save runs",
        };
        match err {
            Error::Corrupt { file, problem } => Error::Corrupt { file, problem: format!("{problem}; {what}") },
            other => other,
        }
    }

    /// Saves every entry, response, timestamp, the LRU order and the counters to `path` with
    /// this cache's fingerprint and the caller's `meta`. Queued LRU uses are applied first, so
    /// they go into the file. Lookups proceed while it runs (their LRU uses are queued); writers
    /// wait until the data is written (the fsync runs after).
    pub fn save(&self, path: &Path, meta: Vec<u8>) -> Result<()> {
        self.core.save_with(path, Some(|core: &mut CacheCore| self.touches.apply(core)), |pending, core| {
            // Counters read under the lock, with the entries they describe.
            let extras = self.label.extras(meta, self.counters());
            format::write_cache(pending.path(), pending.file(), core, &extras)
        })
    }

    /// Hits, misses and evictions so far.
    pub fn counters(&self) -> Counters {
        Counters {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }

    /// Counters and sizes.
    pub fn stats(&self) -> Result<Stats> {
        let mut stats = self.core.read(|core| Stats {
            size: core.len(),
            max_entries: self.max_entries,
            memory_bytes: core.memory_bytes(),
            response_bytes: core.response_bytes(),
            mapped_bytes: core.mapped_bytes(),
            expirations: core.expirations,
            namespaces: core.partitions.len(),
            ..Stats::default()
        })?;
        let counters = self.counters();
        stats.hits = counters.hits;
        stats.misses = counters.misses;
        stats.evictions = counters.evictions;
        stats.lru_touches_dropped = self.touches.dropped();
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::NEVER;
    use std::sync::atomic::AtomicBool;
    use std::sync::Barrier;
    use std::time::Duration;

    fn filled(n: u64, max: usize) -> SharedCache {
        let mut core = CacheCore::new(64, max).unwrap();
        for i in 0..n {
            core.put_in(&[i], format!("r{i}").as_bytes(), now(), b"", NEVER, i + 1).unwrap();
        }
        SharedCache::new(core, Counters::default())
    }

    #[test]
    fn lookups_count_hits_and_misses_and_mark_entries_used() {
        let cache = filled(10, 100);
        let (hit, nearest) = cache.lookup(&[3], 0, b"", false).unwrap();
        let (distance, view) = hit.unwrap();
        assert_eq!((distance, view.payload.as_slice(), view.access_count), (0, &b"r3"[..], 1));
        assert_eq!(nearest, Some(0));
        // A miss within the radius still reports the nearest distance when asked to.
        let (miss, nearest) = cache.lookup(&[u64::MAX], 1, b"", true).unwrap();
        assert!(miss.is_none() && nearest.is_some());
        assert!(cache.lookup_key(5, b"").unwrap().is_some());
        assert!(cache.lookup_key(5, b"other").unwrap().is_none());
        let stats = cache.stats().unwrap();
        assert_eq!((stats.hits, stats.misses, stats.size), (2, 1, 10));
        let used_last = cache.read(|core| core.find_key(5, b"", now())).unwrap();
        assert_eq!(cache.read(|core| core.lru_order()[0]).unwrap(), used_last.unwrap());
    }

    #[test]
    fn batch_results_are_padded_to_the_longest_list() {
        let index = SharedIndex::new(CodeIndex::new(64).unwrap(), String::new());
        index.write(|i| i.add(&[0, 1, 3])).unwrap().unwrap();
        // Query 0 has two codes within distance 1 (0 and 1), query u64::MAX none.
        let (width, ids, distances) = index.search_batch_padded(&[0, u64::MAX], 5, 1, 1).unwrap();
        assert_eq!(width, 2);
        assert_eq!(distances, [0, 1, -1, -1]);
        assert_eq!(ids[2..], [-1, -1]);
        let (width, ids, _) = index.search_batch_padded(&[u64::MAX], 5, 1, 1).unwrap();
        assert_eq!((width, ids), (1, vec![-1]));
    }

    #[test]
    fn a_hit_during_a_save_is_queued_and_applied_by_the_next_writer() {
        let cache = filled(4, 100);
        let first = cache.read(|core| core.lru_order()).unwrap();
        let oldest = *first.last().unwrap();
        let code = cache.read(|core| core.code(oldest).unwrap().to_vec()).unwrap();
        // Hold the read lock as a save does: the hit cannot take the write lock.
        let served = {
            let _saving = cache.core.read_guard().unwrap();
            cache.lookup(&code, 0, b"", false).unwrap().0.unwrap()
        };
        assert_eq!(served.1.access_count, 1, "the hit reports its use at once");
        assert_eq!(cache.touches.len(), 1);
        assert_eq!(cache.read(|core| core.lru_order()).unwrap(), first);
        cache.write(|_| ()).unwrap();
        assert!(cache.touches.is_empty());
        assert_eq!(cache.read(|core| core.lru_order()[0]).unwrap(), oldest);
    }

    #[test]
    fn overflowing_the_touch_queue_is_counted_in_stats() {
        let cache = SharedCache::with_touches(
            filled(8, 100).core.lock.into_inner().unwrap(),
            Counters::default(),
            TouchQueue::with_capacity(4),
        );
        {
            let _saving = cache.core.read_guard().unwrap();
            for key in 1..=8 {
                assert!(cache.lookup_key(key, b"").unwrap().is_some());
            }
        }
        let stats = cache.stats().unwrap();
        assert_eq!((stats.hits, stats.lru_touches_dropped), (8, 4));
        // The four newest uses survive, applied in order: the last one is the most recent.
        cache.write(|_| ()).unwrap();
        let order = cache.read(|core| core.lru_order()).unwrap();
        let key_of = |id: Id| cache.read(|core| core.peek(id).unwrap().unwrap().payload).unwrap();
        assert_eq!(key_of(order[0]), b"r7");
        assert_eq!(key_of(order[3]), b"r4");
    }

    #[test]
    fn a_save_applies_queued_uses_and_keeps_counters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.bsc");
        let cache = filled(6, 100);
        {
            let _held = cache.core.read_guard().unwrap();
            cache.lookup_key(2, b"").unwrap().unwrap();
        }
        assert_eq!(cache.touches.len(), 1);
        let mut cache = cache;
        cache.label.fingerprint = "fp".into();
        cache.save(&path, b"meta".to_vec()).unwrap();
        assert!(cache.touches.is_empty(), "queued uses go into the file");
        let loaded = SharedCache::load(&path, Some("fp"), None, true).unwrap();
        assert_eq!(loaded.label.meta, b"meta");
        assert_eq!(loaded.counters().hits, 1);
        assert_eq!(loaded.read(|core| core.lru_order()).unwrap(), cache.read(|core| core.lru_order()).unwrap());
        assert!(matches!(SharedCache::load(&path, Some("other"), None, false), Err(Error::EncoderMismatch { .. })));
        // Loading with a smaller limit evicts and counts the evictions.
        let smaller = SharedCache::load(&path, None, Some(2), false).unwrap();
        assert_eq!(smaller.stats().unwrap().evictions, 4);
        // A bare index file is refused as a cache, and the other way round.
        let index = SharedIndex::new(CodeIndex::new(64).unwrap(), String::new());
        index.write(|i| i.add(&[1, 2, 3])).unwrap().unwrap();
        let ipath = dir.path().join("i.bsc");
        index.save(&ipath, Vec::new()).unwrap();
        assert!(matches!(SharedCache::load(&ipath, None, None, false), Err(Error::NotACacheFile { .. })));
        assert_eq!(SharedIndex::load(&ipath, None).unwrap().read(|i| i.len()).unwrap(), 3);
    }

    /// A writer that arrives during a save waits at the gate, not on the lock, so readers keep
    /// getting the read lock until the save is done.
    #[test]
    fn a_readers_clean_up_never_waits_for_the_writer_gate() {
        let cache = filled(4, 10);
        let gate = turn(&cache.core.writers); // as a save holds it while it writes
        let started = std::time::Instant::now();
        assert_eq!(cache.core.write_if_free(|core| core.delete(1)).unwrap(), None);
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(gate);
        assert_eq!(cache.core.write_if_free(|core| core.delete(1)).unwrap(), Some(true));
        assert_eq!(cache.read(|core| core.len()).unwrap(), 3);
    }

    #[test]
    fn a_writer_waiting_for_a_save_does_not_stop_readers() {
        let cache = filled(100, 1000);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.bsc");
        let in_save = Barrier::new(2);
        let release = AtomicBool::new(false);
        let reads_during_save = AtomicU64::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                cache
                    .core
                    .save_with(&path, None::<fn(&mut CacheCore)>, |_, _| {
                        in_save.wait();
                        while !release.load(Ordering::Acquire) {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Ok(())
                    })
                    .unwrap();
            });
            in_save.wait();
            let writer = s.spawn(|| cache.put(&[7], b"late", b"", NEVER, 0).unwrap());
            // Give the writer time to queue up, then read: with the writer waiting on the lock
            // itself, these reads would block until the save ended.
            std::thread::sleep(Duration::from_millis(50));
            s.spawn(|| {
                for key in 1..=20 {
                    assert!(cache.lookup_key(key, b"").unwrap().is_some());
                    reads_during_save.fetch_add(1, Ordering::Relaxed);
                }
            });
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while reads_during_save.load(Ordering::Relaxed) < 20 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            let (reads, writer_waited) = (reads_during_save.load(Ordering::Relaxed), !writer.is_finished());
            // Released either way, so a failure is reported rather than a hang.
            release.store(true, Ordering::Release);
            writer.join().unwrap();
            assert!(writer_waited, "the writer waits for the save");
            assert_eq!(reads, 20, "reads were held up by the save");
        });
        assert_eq!(cache.stats().unwrap().size, 101);
    }

    /// Readers, a writer and a saver at once: no panic, no deadlock, counters that add up, and
    /// every saved file loads, passes every checksum and matches its own header.
    #[test]
    fn readers_writer_and_saver_run_together() {
        const READERS: u64 = 3;
        const LOOKUPS: u64 = 1500;
        let cache = SharedCache::with_touches(
            filled(500, 600).core.lock.into_inner().unwrap(),
            Counters::default(),
            // Small, so overflow happens and is counted under contention.
            TouchQueue::with_capacity(64),
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.bsc");
        let done = AtomicBool::new(false);
        let saves = AtomicU64::new(0);
        // Lookups done, hits, and misses of `lookup` (`lookup_key` counts no miss).
        let (done_lookups, hits, misses) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
        let puts = AtomicU64::new(0);
        std::thread::scope(|s| {
            for r in 0..READERS {
                let (cache, done_lookups, hits, misses, puts) = (&cache, &done_lookups, &hits, &misses, &puts);
                s.spawn(move || {
                    // Start once the writer runs, so that lookups meet writes (on a busy machine
                    // the readers could otherwise finish before the other threads are scheduled).
                    while puts.load(Ordering::Relaxed) == 0 {
                        std::thread::yield_now();
                    }
                    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ r;
                    for i in 0..LOOKUPS {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let code = rng % 1000;
                        let scan = i.is_multiple_of(2);
                        let found = if scan {
                            cache.lookup(&[code], 0, b"", false).unwrap().0
                        } else {
                            cache.lookup_key(code + 1, b"").unwrap()
                        };
                        if let Some((_, view)) = found {
                            assert!(view.payload.starts_with(b"r") || view.payload == b"w");
                            hits.fetch_add(1, Ordering::Relaxed);
                        } else if scan {
                            misses.fetch_add(1, Ordering::Relaxed);
                        }
                        done_lookups.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            s.spawn(|| {
                let mut i = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let code = 500 + i % 500;
                    cache.put(&[code], b"w", b"", NEVER, 0).unwrap();
                    if i.is_multiple_of(3) {
                        let victim = cache.read(|core| core.lru_order().last().copied()).unwrap();
                        cache.write(|core| victim.map(|v| core.delete(v))).unwrap();
                    }
                    puts.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            });
            s.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    cache.save(&path, Vec::new()).unwrap();
                    saves.fetch_add(1, Ordering::Relaxed);
                    let (opened, extras) = open_file(&path, Kind::Cache, Some("")).unwrap();
                    let loaded = opened.cache(true).unwrap();
                    assert_eq!(loaded.len(), opened.len());
                    assert_eq!(loaded.lru_order().len(), loaded.len());
                    for id in loaded.lru_order() {
                        assert!(loaded.peek(id).unwrap().is_some());
                    }
                    let c = extras.counters;
                    assert!(c.hits + c.misses <= READERS * LOOKUPS);
                }
            });
            // The writer and the saver run until the readers are done and each has run once.
            while done_lookups.load(Ordering::Relaxed) < READERS * LOOKUPS
                || saves.load(Ordering::Relaxed) == 0
                || puts.load(Ordering::Relaxed) == 0
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            done.store(true, Ordering::Relaxed);
        });
        let stats = cache.stats().unwrap();
        assert_eq!(stats.hits, hits.load(Ordering::Relaxed));
        assert_eq!(stats.misses, misses.load(Ordering::Relaxed));
        assert!(saves.load(Ordering::Relaxed) >= 1 && puts.load(Ordering::Relaxed) >= 1);
        assert!(stats.size <= 600);
        // Every queued use was applied or counted as dropped: after a write the queue is empty.
        cache.write(|_| ()).unwrap();
        assert!(cache.touches.is_empty());
        let final_save = dir.path().join("final.bsc");
        cache.save(&final_save, Vec::new()).unwrap();
        let loaded = SharedCache::load(&final_save, None, None, true).unwrap();
        assert_eq!(loaded.counters(), cache.counters());
        assert_eq!(loaded.read(|core| core.lru_order()).unwrap(), cache.read(|core| core.lru_order()).unwrap());
    }
}

//! A bounded cache over [`CodeIndex`]: payload bytes, access metadata and approximate-LRU
//! eviction.
//!
//! Side tables are indexed by the index's stable *handles* (slots), so they never move. Per
//! entry, besides the index's code and generation (36 bytes at 256 bits): the creation time in
//! whole seconds (u32), the response's offset in the [`Arena`] (u32) and one [`Recency`] word
//! (u32: the last use's tick and the access count) — 48 bytes. A non-empty response adds its
//! arena record's 4-byte length and padding to 8 bytes. The namespace id and the expiry (u32
//! each) are allocated only once an entry has a namespace other than the default or a TTL; the
//! exact-match key (u64) once an entry has one.

use crate::arena::{self, Arena};
use crate::error::{Error, Result};
use crate::index::{CodeIndex, Hit, Id, MAX_ENTRIES};
use crate::mapped::Column;
use crate::partition::{self, Partitions};
use crate::recency::{seconds, Recency};

use hashbrown::HashTable;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::OnceLock;

/// `expires` of an entry without a time to live.
pub const NEVER: u32 = u32::MAX;

/// An entry's expiry as tenths of a second since the epoch.
fn deadline(created: u32, expires: u32) -> i64 {
    (i64::from(created) * 10).saturating_add(i64::from(expires))
}

/// The expiry, in tenths after the whole second `created`, of an entry stored at `now` that
/// expires `ttl` tenths later: the deadline is `now + ttl` rounded down to a tenth.
fn expiry_after(created: u32, now: f64, ttl: u32) -> u32 {
    if ttl == NEVER {
        return NEVER;
    }
    let fraction = ((now - f64::from(created)) * 10.0).floor();
    let fraction = if fraction.is_nan() || fraction < 0.0 { 0 } else { fraction.min(10.0) as u32 };
    ttl.saturating_add(fraction).min(NEVER - 1)
}

/// Tenths of a second in `ttl` seconds, rounded down (so an entry never outlives its TTL),
/// at most about 13.6 years.
pub fn ttl_tenths(ttl: f64) -> u32 {
    (ttl * 10.0).floor().clamp(0.0, f64::from(NEVER - 1)) as u32
}

/// A copy of one entry's stored state.
#[derive(Clone, Debug, PartialEq)]
pub struct EntryView {
    pub id: Id,
    pub payload: Vec<u8>,
    pub created_at: f64,
    pub last_accessed: f64,
    pub access_count: u32,
}

/// `view` as [`CacheCore::touch`] at `now` would return it.
pub fn touched(mut view: EntryView, now: f64) -> EntryView {
    view.last_accessed = f64::from(seconds(now)).max(view.created_at);
    view.access_count = view.access_count.saturating_add(1);
    view
}

#[derive(Debug)]
pub struct CacheCore {
    pub(crate) index: CodeIndex,
    max_entries: usize,
    /// Last use, access count and the eviction choice.
    recency: Recency,
    /// Creation time in whole seconds since the epoch.
    pub(crate) created: Column<u32>,
    /// Offset of the entry's response in `arena`.
    pub(crate) payload_at: Column<u32>,
    /// The entry's partition id (see [`Partitions`]). Empty while every entry is in the
    /// default partition; one value per slot once one is not.
    pub(crate) partition: Column<u32>,
    /// Tenths of a second after `created` when the entry expires; [`NEVER`] without a TTL.
    /// Empty while no entry has a TTL; one value per slot once one has.
    pub(crate) expires: Column<u32>,
    pub(crate) partitions: Partitions,
    /// Entries with a TTL by deadline, with their slot and generation (stale items, of entries
    /// deleted since, are skipped when popped). Built on first need after a load.
    expiry: Option<BinaryHeap<Reverse<(i64, u32, u32)>>>,
    /// Entries removed because their TTL ran out.
    pub(crate) expirations: u64,
    pub(crate) arena: Arena,
    payload_bytes: usize,
    /// The entry's exact-match key (0: none), chosen by the caller (bsc hashes the normalised
    /// prompt with its partition). Empty until the first keyed put; slots past its end have
    /// no key.
    pub(crate) keys: Column<u64>,
    /// Live keyed slots by key, built from `keys` on first need (after a load, on the first
    /// keyed lookup or put) and kept up to date from then on.
    key_map: OnceLock<HashTable<u32>>,
}

impl CacheCore {
    pub fn new(code_bits: usize, max_entries: usize) -> Result<Self> {
        if max_entries == 0 || max_entries > MAX_ENTRIES {
            return Err(Error::InvalidMaxEntries(max_entries));
        }
        Ok(Self {
            index: CodeIndex::new(code_bits)?,
            max_entries,
            recency: Recency::default(),
            created: Column::default(),
            payload_at: Column::default(),
            partition: Column::default(),
            expires: Column::default(),
            partitions: Partitions::default(),
            expiry: Some(BinaryHeap::new()),
            expirations: 0,
            arena: Arena::default(),
            payload_bytes: 0,
            keys: Column::default(),
            key_map: OnceLock::new(),
        })
    }

    /// A cache from a loaded file's columns (one value per slot, or none for the partition and
    /// expiry columns when every entry has the default) and its restored recency.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_parts(
        index: CodeIndex, max_entries: usize, created: Column<u32>, recency: Recency, payload_at: Column<u32>,
        (partition, expires, partitions, expirations): (Column<u32>, Column<u32>, Partitions, u64), arena: Arena,
        payload_bytes: usize, keys: Column<u64>,
    ) -> Self {
        Self {
            index,
            max_entries,
            recency,
            created,
            payload_at,
            partition,
            expires,
            partitions,
            expiry: None,
            expirations,
            arena,
            payload_bytes,
            keys,
            key_map: OnceLock::new(),
        }
    }

    /// Recency words, clock and marks (for the file writer).
    pub(crate) fn recency(&self) -> &Recency {
        &self.recency
    }

    /// Live handles from most to least recently used.
    pub(crate) fn lru_handles(&self) -> Vec<u32> {
        let index = &self.index;
        self.recency.order(index.slots(), |h| index.is_live_handle(h))
    }

    /// The entry to evict: the least recently used one, or one nearly so (see [`Recency`]).
    fn lru_victim(&mut self) -> Option<u32> {
        let index = &self.index;
        self.recency.victim(index.slots(), index.len(), |h| index.is_live_handle(h))
    }

    /// Bounds the second marks after a use (rarely does anything).
    fn prune_marks(&mut self) {
        let index = &self.index;
        self.recency.prune_marks(index.len(), |h| index.is_live_handle(h));
    }

    /// The entry's partition id.
    #[inline]
    fn partition_of(&self, h: usize) -> u32 {
        self.partition.get(h).copied().unwrap_or(partition::DEFAULT)
    }

    /// The entry's expiry (tenths after its creation second), [`NEVER`] without a TTL.
    #[inline]
    fn expires_of(&self, h: usize) -> u32 {
        self.expires.get(h).copied().unwrap_or(NEVER)
    }

    /// The entry's creation time (seconds since the epoch).
    pub fn created_second(&self, h: usize) -> u32 {
        self.created[h]
    }

    /// The entry's access count and last use (seconds since the epoch, never before its
    /// creation).
    pub(crate) fn use_of(&self, h: usize) -> (u32, u32) {
        let handle = h as u32;
        (self.recency.count(handle), self.recency.last_second(handle).max(self.created[h]))
    }

    /// Lowers (or raises) the entry limit, evicting least-recently-used entries down to it;
    /// returns their ids.
    pub fn set_max_entries(&mut self, max_entries: usize) -> Result<Vec<Id>> {
        if max_entries == 0 || max_entries > MAX_ENTRIES {
            return Err(Error::InvalidMaxEntries(max_entries));
        }
        self.max_entries = max_entries;
        let mut evicted = Vec::new();
        while self.len() > max_entries {
            let handle = self.lru_victim().expect("a live entry");
            let victim = self.index.id_of_handle(handle);
            self.delete(victim);
            evicted.push(victim);
        }
        Ok(evicted)
    }

    pub fn code_bits(&self) -> usize {
        self.index.code_bits()
    }

    pub fn words(&self) -> usize {
        self.index.words()
    }

    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn contains(&self, id: Id) -> bool {
        self.index.contains(id)
    }

    /// Stores a code with its payload in the default partition, without a TTL.
    pub fn put(&mut self, code: &[u64], payload: &[u8], now: f64) -> Result<(Id, Vec<Id>)> {
        self.put_in(code, payload, now, b"", NEVER, 0)
    }

    /// Stores a code with its payload in partition `name`, expiring `expires` tenths of a second
    /// from `now` ([`NEVER`]: no TTL; see [`ttl_tenths`]). Expired entries are removed first,
    /// then least-recently-used ones if the cache is still full. Returns the new id and the ids
    /// it evicted (not counting expired ones). On error nothing changes.
    ///
    /// A non-zero `key` makes the entry findable by [`CacheCore::find_key`]; it replaces the
    /// live entry of partition `name` with the same key, if any (that one is deleted, not
    /// counted as evicted, and no other entry is evicted for the new one).
    pub fn put_in(
        &mut self, code: &[u64], payload: &[u8], now: f64, name: &[u8], expires: u32, key: u64,
    ) -> Result<(Id, Vec<Id>)> {
        if code.len() != self.words() {
            return Err(Error::BadCodeLength { expected_words: self.words(), got_words: code.len() });
        }
        if name.len() > partition::MAX_NAME {
            return Err(Error::TooLong { what: "a namespace", len: name.len(), limit: partition::MAX_NAME });
        }
        if payload.len() > u32::MAX as usize {
            return Err(Error::ResponseTooLarge { len: payload.len() });
        }
        // Removing expired entries changes nothing a lookup can see, so it may precede a put
        // that fails for want of room below.
        self.purge_expired(now);
        let replaced = self.find_key(key, name, f64::NEG_INFINITY).and_then(|id| self.index.handle_of(id));
        // Room for the response counts the one the eviction below frees (the cache never
        // holds more than max_entries, so a put evicts at most one entry).
        let victim = if replaced.is_none() && self.len() >= self.max_entries { self.lru_victim() } else { None };
        let freed = victim.or(replaced).map_or(0, |h| self.arena.record_bytes(self.payload_at[h as usize]));
        self.arena.check_room(payload.len(), freed)?;
        // Compact before evicting, so that if compaction fails (a corrupt response of a loaded
        // file) nothing has changed.
        if !self.arena.fits_without_compaction(payload.len()) {
            self.compact_payloads()?;
        }
        if let Some(old) = replaced {
            self.delete(self.index.id_of_handle(old));
        }
        let mut evicted = Vec::new();
        if let Some(victim) = victim {
            let victim = self.index.id_of_handle(victim);
            self.delete(victim);
            evicted.push(victim);
        }
        let id = self.index.push_row(code);
        let handle = self.index.handle_of(id).expect("a fresh id is live");
        let h = handle as usize;
        if h == self.created.len() {
            self.created.push(0);
            self.payload_at.push(arena::EMPTY);
        }
        let created = seconds(now);
        self.created[h] = created;
        self.payload_at[h] = self.arena.push(payload);
        let part = self.partitions.add(name);
        if part != partition::DEFAULT || !self.partition.is_empty() {
            grow(&mut self.partition, h, partition::DEFAULT);
            self.partition[h] = part;
        }
        let expires = expiry_after(created, now, expires);
        if expires != NEVER || !self.expires.is_empty() {
            grow(&mut self.expires, h, NEVER);
            self.expires[h] = expires;
        }
        if expires != NEVER {
            let generation = (id >> 32) as u32;
            self.expiry_heap().push(Reverse((deadline(created, expires), handle, generation)));
        }
        self.payload_bytes = self.payload_bytes.saturating_add(payload.len());
        if key != 0 {
            while self.keys.len() <= h {
                self.keys.push(0);
            }
            self.keys[h] = key;
            if let Some(table) = self.key_map.get_mut() {
                let keys: &[u64] = &self.keys;
                table.insert_unique(key, handle, |&s| keys[s as usize]);
            }
        }
        self.recency.insert(handle, created);
        self.prune_marks();
        Ok((id, evicted))
    }

    /// The table of live keyed slots, built from the key column on first use.
    fn key_table(&self) -> &HashTable<u32> {
        self.key_map.get_or_init(|| {
            let keys: &[u64] = &self.keys;
            let mut table = HashTable::new();
            for (h, &key) in keys.iter().enumerate() {
                // A file whose live entries repeat a key in a partition (only a crafted one)
                // keeps the first.
                if key != 0
                    && self.index.is_live_handle(h as u32)
                    && table
                        .find(key, |&s| {
                            keys[s as usize] == key && self.partition_of(s as usize) == self.partition_of(h)
                        })
                        .is_none()
                {
                    table.insert_unique(key, h as u32, |&s| keys[s as usize]);
                }
            }
            table
        })
    }

    /// The live entry of partition `name` stored with exact-match `key` (non-zero), if it has
    /// not expired at `now`. O(1) after the table is built. Keys are per partition: the same
    /// key in two partitions names two entries.
    pub fn find_key(&self, key: u64, name: &[u8], now: f64) -> Option<Id> {
        if key == 0 || self.keys.is_empty() {
            return None;
        }
        let wanted = self.partitions.find(name)?;
        let keys: &[u64] = &self.keys;
        let h = *self.key_table().find(key, |&s| keys[s as usize] == key && self.partition_of(s as usize) == wanted)?
            as usize;
        (!self.expired(h, now)).then(|| self.index.id_of_handle(h as u32))
    }

    /// `id` if it is live, unexpired and in partition `name`.
    pub fn find_id(&self, id: Id, name: &[u8], now: f64) -> Option<Id> {
        let wanted = self.partitions.find(name)?;
        let h = self.index.handle_of(id)? as usize;
        (self.partition_of(h) == wanted && !self.expired(h, now)).then_some(id)
    }

    /// Live partitions and how many entries each holds (expired ones not yet removed count).
    pub fn partition_sizes(&self) -> Vec<(&[u8], u32)> {
        self.partitions.sizes()
    }

    /// Whether the entry in slot `h` has expired at `now`.
    #[inline]
    pub fn expired(&self, h: usize, now: f64) -> bool {
        let e = self.expires_of(h);
        e != NEVER && now >= f64::from(self.created[h]) + f64::from(e) / 10.0
    }

    /// The expiry heap, built from the columns if this cache was loaded from a file.
    fn expiry_heap(&mut self) -> &mut BinaryHeap<Reverse<(i64, u32, u32)>> {
        if self.expiry.is_none() {
            self.rebuild_expiry();
        }
        self.expiry.as_mut().expect("built above")
    }

    fn rebuild_expiry(&mut self) {
        let heap: BinaryHeap<_> = (0..self.expires.len())
            .filter(|&h| self.expires[h] != NEVER && self.index.is_live_handle(h as u32))
            .map(|h| {
                let generation = (self.index.id_of_handle(h as u32) >> 32) as u32;
                Reverse((deadline(self.created[h], self.expires[h]), h as u32, generation))
            })
            .collect();
        self.expiry = Some(heap);
    }

    /// Removes every entry whose TTL has run out at `now`; returns how many. O(log n) per
    /// entry removed, plus skipping items of entries deleted since they were stored.
    pub fn purge_expired(&mut self, now: f64) -> usize {
        let mut removed = 0;
        let now_key = (now * 10.0).floor() as i64;
        loop {
            let heap = self.expiry_heap();
            let Some(&Reverse((key, handle, generation))) = heap.peek() else {
                break;
            };
            if key > now_key {
                break;
            }
            let id = (u64::from(generation) << 32) | u64::from(handle);
            if self.index.handle_of(id).is_some() && self.expires_of(handle as usize) != NEVER {
                if !self.expired(handle as usize, now) {
                    break; // due within this tenth of a second: next time
                }
                self.delete(id);
                removed += 1;
            }
            self.expiry_heap().pop();
        }
        // Items of entries deleted or evicted before they expired pile up under long TTLs.
        let stale_limit = 2 * self.len() + 1024;
        if self.expiry.as_ref().is_some_and(|h| h.len() > stale_limit) {
            self.rebuild_expiry();
        }
        self.expirations += removed as u64;
        removed
    }

    /// The nearest live, unexpired entry of partition `name` within `max_distance`.
    pub fn nearest_in(&self, query: &[u64], max_distance: u32, name: &[u8], now: f64) -> Result<Option<Hit>> {
        Ok(self.search_in(query, 1, max_distance, Some(name), now)?.into_iter().next())
    }

    /// The `k` nearest live, unexpired entries within `max_distance`, of partition `name` (of
    /// every partition when `None`), without touching them. The partition and expiry are checked
    /// inside the scan, so entries of other partitions never take a place in the result.
    pub fn search_in(
        &self, query: &[u64], k: usize, max_distance: u32, name: Option<&[u8]>, now: f64,
    ) -> Result<Vec<Hit>> {
        let wanted = match name {
            Some(name) => match self.partitions.find(name) {
                Some(id) => Some(id),
                None => {
                    self.index.check_query(query)?;
                    return Ok(Vec::new());
                }
            },
            None => None,
        };
        let partition: &[u32] = &self.partition;
        let expires: &[u32] = &self.expires;
        let created: &[u32] = &self.created;
        self.index.search_where(query, k, max_distance, |row| {
            wanted.is_none_or(|id| partition.get(row).map_or(id == partition::DEFAULT, |&p| p == id))
                && expires.get(row).is_none_or(|&e| e == NEVER || now < f64::from(created[row]) + f64::from(e) / 10.0)
        })
    }

    /// Removes every entry of partition `name`; returns their ids. O(slots).
    pub fn delete_partition(&mut self, name: &[u8]) -> Vec<Id> {
        let Some(wanted) = self.partitions.find(name) else {
            return Vec::new();
        };
        let ids: Vec<Id> = (0..self.index.slots())
            .filter(|&h| self.partition_of(h) == wanted && self.index.is_live_handle(h as u32))
            .map(|h| self.index.id_of_handle(h as u32))
            .collect();
        for &id in &ids {
            self.delete(id);
        }
        ids
    }

    /// The partition name and expiry time (seconds since the epoch) of an entry.
    pub fn placement(&self, id: Id) -> Option<(&[u8], Option<f64>)> {
        let h = self.index.handle_of(id)? as usize;
        let e = self.expires_of(h);
        let expires_at = (e != NEVER).then(|| f64::from(self.created[h]) + f64::from(e) / 10.0);
        Some((self.partitions.name(self.partition_of(h)), expires_at))
    }

    /// Fails only for a response of a loaded file that fails its checksum.
    fn view(&self, id: Id, handle: u32) -> Result<EntryView> {
        let h = handle as usize;
        let (access_count, last) = self.use_of(h);
        Ok(EntryView {
            id,
            payload: self.arena.get(self.payload_at[h])?.to_vec(),
            created_at: f64::from(self.created[h]),
            last_accessed: f64::from(last),
            access_count,
        })
    }

    /// Marks an entry as used now (moves it to the front of the LRU order) and returns it.
    /// If its response cannot be read ([`Error::Corrupt`]), nothing changes.
    pub fn touch(&mut self, id: Id, now: f64) -> Result<Option<EntryView>> {
        let Some(handle) = self.index.handle_of(id) else {
            return Ok(None);
        };
        // The view after this use is what `touched` computes: the use's own second is the one
        // its tick is marked with.
        let view = touched(self.view(id, handle)?, now);
        self.recency.touch(handle, seconds(now));
        self.prune_marks();
        Ok(Some(view))
    }

    /// Records uses that could not be recorded when they happened, in order (the queue of
    /// [`crate::touch`]); ids deleted since are skipped.
    pub fn touch_many(&mut self, uses: &[(Id, f64)]) {
        for &(id, now) in uses {
            let Some(handle) = self.index.handle_of(id) else {
                continue;
            };
            // A queued use keeps the later of its time and the entry's last use.
            let second = seconds(now).max(self.recency.last_second(handle));
            self.recency.touch(handle, second);
        }
        self.prune_marks();
    }

    /// An entry's state, without touching it.
    pub fn peek(&self, id: Id) -> Result<Option<EntryView>> {
        match self.index.handle_of(id) {
            Some(handle) => self.view(id, handle).map(Some),
            None => Ok(None),
        }
    }

    /// The stored code of an entry.
    pub fn code(&self, id: Id) -> Option<&[u64]> {
        self.index.code(id)
    }

    pub fn delete(&mut self, id: Id) -> bool {
        let Some(handle) = self.index.handle_of(id) else {
            return false;
        };
        let h = handle as usize;
        self.payload_bytes = self.payload_bytes.saturating_sub(self.arena.len_of(self.payload_at[h]));
        self.arena.free(self.payload_at[h]);
        self.payload_at[h] = arena::EMPTY;
        if let Some(&key) = self.keys.get(h).filter(|&&k| k != 0) {
            if let Some(table) = self.key_map.get_mut() {
                if let Ok(found) = table.find_entry(key, |&s| s == handle) {
                    found.remove();
                }
            }
            self.keys[h] = 0;
        }
        self.partitions.remove(self.partition_of(h));
        self.recency.remove(handle);
        self.index.remove(id);
        if self.arena.wants_compaction() && self.compact_payloads().is_err() {
            // A corrupt response of a loaded file: keep the garbage rather than fail a delete.
            self.arena.note_failed_compaction();
        }
        true
    }

    /// Copies the live responses into a fresh arena, dropping freed ones: O(live bytes), run
    /// when garbage outweighs live bytes, so O(1) amortised per byte deleted. Changes nothing
    /// if a response of a loaded file fails its checksum.
    fn compact_payloads(&mut self) -> Result<()> {
        let mut live: Vec<(usize, u32)> = Vec::with_capacity(self.len());
        for (h, &at) in self.payload_at.iter().enumerate() {
            if at != arena::EMPTY && self.index.is_live_handle(h as u32) {
                live.push((h, at));
            }
        }
        self.arena = self.arena.compacted(live.iter_mut().map(|(_, at)| at))?;
        for (h, at) in live {
            self.payload_at[h] = at;
        }
        Ok(())
    }

    pub fn clear(&mut self) {
        self.index.clear();
        self.payload_at.fill(arena::EMPTY);
        self.arena.clear();
        self.recency.clear();
        self.partitions.clear();
        self.partition = Column::default();
        self.expires = Column::default();
        self.expiry = Some(BinaryHeap::new());
        self.payload_bytes = 0;
        self.keys = Column::default();
        self.key_map = OnceLock::new();
    }

    /// Live ids from most to least recently used.
    pub fn lru_order(&self) -> Vec<Id> {
        self.lru_handles().into_iter().map(|h| self.index.id_of_handle(h)).collect()
    }

    /// Bytes of the live entries' responses.
    pub fn response_bytes(&self) -> usize {
        self.payload_bytes
    }

    /// Bytes of a loaded file read in place: columns until they grow (pages written since
    /// are private copies, not counted), and the responses.
    pub fn mapped_bytes(&self) -> usize {
        self.index.mapped_bytes()
            + self.created.mapped_bytes()
            + self.payload_at.mapped_bytes()
            + self.partition.mapped_bytes()
            + self.expires.mapped_bytes()
            + self.keys.mapped_bytes()
            + self.arena.mapped_bytes()
    }

    /// Bytes held on the heap: index buffers, side tables and the response arena (capacity).
    pub fn memory_bytes(&self) -> usize {
        self.index.memory_bytes()
            + self.recency.memory_bytes()
            + self.created.heap_bytes()
            + self.payload_at.heap_bytes()
            + self.partition.heap_bytes()
            + self.expires.heap_bytes()
            + self.partitions.memory_bytes()
            + self.expiry.as_ref().map_or(0, |h| h.capacity() * 16)
            + self.keys.heap_bytes()
            + self.key_map.get().map_or(0, HashTable::allocation_size)
            + self.arena.memory_bytes()
    }
}

/// Extends `column` with `fill` to cover slot `h`.
fn grow(column: &mut Column<u32>, h: usize, fill: u32) {
    if column.len() <= h {
        column.to_mut().resize(h + 1, fill);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_bad_max_entries() {
        assert_eq!(CacheCore::new(256, 0).unwrap_err(), Error::InvalidMaxEntries(0));
        assert!(CacheCore::new(100, 10).is_err());
    }

    #[test]
    fn evicts_least_recently_used() {
        let mut cache = CacheCore::new(64, 2).unwrap();
        let (a, _) = cache.put(&[1], b"a", 1.0).unwrap();
        let (b, _) = cache.put(&[2], b"b", 2.0).unwrap();
        // Using `a` makes `b` the least recently used.
        let seen = cache.touch(a, 3.0).unwrap().unwrap();
        assert_eq!((seen.payload.as_slice(), seen.access_count, seen.last_accessed), (&b"a"[..], 1, 3.0));
        let (c, evicted) = cache.put(&[3], b"c", 4.0).unwrap();
        assert_eq!(evicted, vec![b]);
        assert_eq!(cache.lru_order(), vec![c, a]);
        assert!(cache.peek(b).unwrap().is_none());
        assert_eq!(cache.peek(a).unwrap().unwrap().created_at, 1.0);
    }

    #[test]
    fn times_are_whole_seconds_and_a_ttl_keeps_tenths() {
        let mut cache = CacheCore::new(64, 4).unwrap();
        let (a, _) = cache.put(&[1], b"", 1_700_000_000.25).unwrap();
        let seen = cache.touch(a, 1_700_000_003.99).unwrap().unwrap();
        assert_eq!((seen.created_at, seen.last_accessed), (1_700_000_000.0, 1_700_000_003.0));
        // A clock that went backwards gives the creation time, never an earlier one.
        assert_eq!(cache.touch(a, 1.0).unwrap().unwrap().last_accessed, 1_700_000_000.0);
        // The deadline is the put's exact time plus the TTL, rounded down to a tenth.
        let (b, _) = cache.put_in(&[2], b"", 500.97, b"", ttl_tenths(2.0), 0).unwrap();
        assert_eq!(cache.placement(b).unwrap().1, Some(502.9));
        assert!(cache.nearest_in(&[2], 0, b"", 502.85).unwrap().is_some());
        assert!(cache.nearest_in(&[2], 0, b"", 502.9).unwrap().is_none());
        assert_eq!(expiry_after(10, 10.5, NEVER), NEVER);
        assert_eq!(expiry_after(10, 9.0, 5), 5);
        assert_eq!(expiry_after(10, 10.99, NEVER - 2), NEVER - 1);
    }

    #[test]
    fn a_large_cache_evicts_old_entries() {
        let n = 5_000u64;
        let mut cache = CacheCore::new(64, n as usize).unwrap();
        let ids: Vec<Id> = (0..n).map(|i| cache.put(&[i], b"", 1.0).unwrap().0).collect();
        // The first quarter is never used again; the rest is.
        for &id in &ids[n as usize / 4..] {
            cache.touch(id, 2.0).unwrap();
        }
        let mut old = 0;
        for i in 0..500 {
            let (_, evicted) = cache.put(&[n + i], b"", 3.0).unwrap();
            assert_eq!(evicted.len(), 1);
            old += usize::from(ids[..n as usize / 4].contains(&evicted[0]));
        }
        assert!(old >= 450, "{old} of 500 evictions were of the unused quarter");
        assert_eq!(cache.len(), n as usize);
        let order = cache.lru_order();
        assert_eq!(order.len(), n as usize);
        assert_eq!(order[0], cache.index.id_of_handle(cache.index.handle_of(order[0]).unwrap()));
    }

    #[test]
    fn side_columns_appear_only_when_needed() {
        let mut cache = CacheCore::new(64, 100).unwrap();
        for i in 0..10 {
            cache.put(&[i], b"x", 1.0).unwrap();
        }
        assert!(cache.partition.is_empty() && cache.expires.is_empty());
        let (a, _) = cache.put_in(&[50], b"a", 1.0, b"ns", NEVER, 0).unwrap();
        assert_eq!(cache.partition.len(), 11);
        assert!(cache.expires.is_empty());
        let (b, _) = cache.put_in(&[51], b"b", 1.0, b"", ttl_tenths(5.0), 0).unwrap();
        assert_eq!((cache.partition.len(), cache.expires.len()), (12, 12));
        assert_eq!(cache.nearest_in(&[50], 0, b"ns", 2.0).unwrap().map(|h| h.id), Some(a));
        assert_eq!(cache.nearest_in(&[50], 0, b"", 2.0).unwrap(), None);
        assert_eq!(
            cache.nearest_in(&[0], 0, b"", 2.0).unwrap().map(|h| h.id),
            cache.search_in(&[0], 1, 0, None, 2.0).unwrap().first().map(|h| h.id)
        );
        assert_eq!(cache.nearest_in(&[51], 0, b"", 6.0).unwrap(), None);
        assert!(cache.contains(b));
        cache.clear();
        assert!(cache.partition.is_empty() && cache.expires.is_empty());
    }

    #[test]
    fn responses_survive_compaction_of_the_arena() {
        let mut cache = CacheCore::new(64, 1000).unwrap();
        let big = vec![9u8; 64 * 1024];
        let ids: Vec<Id> = (0..40u64)
            .map(|i| {
                let mut payload = big.clone();
                payload[0] = i as u8;
                cache.put(&[i], &payload, 0.0).unwrap().0
            })
            .collect();
        let before = cache.memory_bytes();
        for id in &ids[..30] {
            assert!(cache.delete(*id));
        }
        // 30 of 40 responses freed: the arena was compacted, the survivors are intact.
        assert!(cache.memory_bytes() < before / 2, "{} vs {before}", cache.memory_bytes());
        for (i, id) in ids.iter().enumerate().skip(30) {
            let payload = cache.peek(*id).unwrap().unwrap().payload;
            assert_eq!((payload.len(), payload[0], payload[1]), (big.len(), i as u8, 9));
        }
        let (fresh, _) = cache.put(&[99], b"after", 0.0).unwrap();
        assert_eq!(cache.peek(fresh).unwrap().unwrap().payload, b"after");
    }

    #[test]
    fn partitions_never_cross_and_a_nearer_entry_elsewhere_hides_nothing() {
        let mut cache = CacheCore::new(64, 10).unwrap();
        let (a, _) = cache.put_in(&[0b1111], b"a", 1.0, b"tenant-a", NEVER, 0).unwrap();
        let (b, _) = cache.put_in(&[0b1111], b"b", 1.0, b"tenant-b", NEVER, 0).unwrap();
        let (b_near, _) = cache.put_in(&[0b0111], b"b2", 1.0, b"tenant-b", NEVER, 0).unwrap();
        let hit = |cache: &CacheCore, q: u64, name: &[u8]| cache.nearest_in(&[q], 64, name, 2.0).unwrap().map(|h| h.id);
        assert_eq!(hit(&cache, 0b1111, b"tenant-a"), Some(a));
        assert_eq!(hit(&cache, 0b1111, b"tenant-b"), Some(b));
        // Two entries of tenant-b are nearer to this query than tenant-a's only entry.
        assert_eq!(hit(&cache, 0b0011, b"tenant-a"), Some(a));
        assert_eq!(hit(&cache, 0b0011, b"tenant-b"), Some(b_near));
        assert_eq!(hit(&cache, 0b1111, b"nobody"), None);
        assert_eq!(hit(&cache, 0b1111, b""), None);
        assert_eq!(cache.search_in(&[0b1111], 5, 64, None, 2.0).unwrap().len(), 3);
        assert_eq!(cache.placement(b_near), Some((&b"tenant-b"[..], None)));
        assert_eq!(cache.delete_partition(b"tenant-b"), vec![b, b_near]);
        assert_eq!(hit(&cache, 0b1111, b"tenant-b"), None);
        assert_eq!(cache.partitions.find(b"tenant-b"), None);
        assert!(cache.nearest_in(&[1, 2], 64, b"x", 0.0).is_err()); // bad query length
        assert!(cache.put_in(&[1], b"", 0.0, &[b'n'; 1025], NEVER, 0).is_err());
    }

    #[test]
    fn an_expired_entry_is_never_served_and_is_reclaimed() {
        let mut cache = CacheCore::new(64, 3).unwrap();
        let (a, _) = cache.put_in(&[1], b"a", 100.0, b"", ttl_tenths(1.0), 0).unwrap();
        let (b, _) = cache.put_in(&[1], b"b", 100.0, b"", ttl_tenths(5.0), 0).unwrap();
        let hit = |cache: &CacheCore, now: f64| cache.nearest_in(&[1], 0, b"", now).unwrap().map(|h| h.id);
        assert_eq!(hit(&cache, 100.9), Some(a));
        assert_eq!(hit(&cache, 101.0), Some(b)); // a expired at exactly 101.0
        assert_eq!(hit(&cache, 105.0), None);
        assert_eq!(cache.placement(a).unwrap().1, Some(101.0));
        // Reclaimed by the next put (or purge_expired), counted as expirations, not evictions.
        let (_, evicted) = cache.put(&[2], b"c", 102.0).unwrap();
        assert!(evicted.is_empty());
        assert!(!cache.contains(a) && cache.contains(b));
        assert_eq!(cache.expirations, 1);
        assert_eq!(cache.purge_expired(106.0), 1);
        assert_eq!(cache.len(), 1);
        // LRU and max_entries still hold with TTLs set.
        for i in 0..5 {
            cache.put_in(&[10 + i], b"x", 107.0, b"", ttl_tenths(60.0), 0).unwrap();
        }
        assert_eq!(cache.len(), 3);
        // Items of entries evicted before their TTL do not pile up.
        for i in 0..5000 {
            cache.put_in(&[100 + i], b"x", 108.0, b"", ttl_tenths(3600.0), 0).unwrap();
        }
        assert!(cache.expiry.as_ref().unwrap().len() <= 2 * 3 + 1024 + 1);
    }

    #[test]
    fn exact_keys_find_replace_and_forget_entries() {
        let mut cache = CacheCore::new(64, 3).unwrap();
        let (a, _) = cache.put_in(&[1], b"a", 1.0, b"ns", NEVER, 7).unwrap();
        let (b, _) = cache.put_in(&[1], b"b", 1.0, b"other", NEVER, 7).unwrap();
        assert_eq!(cache.find_key(7, b"ns", 2.0), Some(a));
        assert_eq!(cache.find_key(7, b"other", 2.0), Some(b));
        assert_eq!(cache.find_key(7, b"missing", 2.0), None);
        assert_eq!(cache.find_key(8, b"ns", 2.0), None);
        assert_eq!(cache.find_key(0, b"ns", 2.0), None);
        // The same key in the same partition replaces the entry: not an eviction.
        let (c, _) = cache.put_in(&[2], b"c", 2.0, b"ns", NEVER, 7).unwrap();
        let (_, evicted) = cache.put_in(&[3], b"d", 3.0, b"", NEVER, 0).unwrap();
        assert!(evicted.is_empty() && !cache.contains(a) && cache.len() == 3);
        assert_eq!(cache.find_key(7, b"ns", 3.0), Some(c));
        // A full cache replacing a keyed entry evicts nothing.
        let (c2, evicted) = cache.put_in(&[2], b"c2", 4.0, b"ns", NEVER, 7).unwrap();
        assert!(evicted.is_empty() && cache.len() == 3 && !cache.contains(c));
        // Deleted, evicted and expired entries are not found; a reused slot starts keyless.
        cache.delete(c2);
        assert_eq!(cache.find_key(7, b"ns", 5.0), None);
        let (e, _) = cache.put_in(&[4], b"e", 5.0, b"ns", ttl_tenths(1.0), 9).unwrap();
        assert_eq!(cache.find_key(9, b"ns", 5.5), Some(e));
        assert_eq!(cache.find_key(9, b"ns", 6.0), None);
        // e expires and is reclaimed; then b, the least recently used, is evicted.
        cache.put_in(&[5], b"f", 7.0, b"", NEVER, 0).unwrap();
        assert_eq!(cache.find_key(7, b"other", 7.0), Some(b));
        let (_, evicted) = cache.put_in(&[6], b"f2", 7.0, b"", NEVER, 0).unwrap();
        assert_eq!(evicted, vec![b]);
        assert_eq!(cache.find_key(7, b"other", 7.0), None);
        cache.clear();
        assert_eq!(cache.find_key(9, b"ns", 5.5), None);
        let (g, _) = cache.put_in(&[6], b"g", 8.0, b"ns", NEVER, 9).unwrap();
        assert_eq!(cache.find_key(9, b"ns", 8.0), Some(g));
    }

    #[test]
    fn queued_uses_update_the_lru_order_and_skip_deleted_entries() {
        let mut cache = CacheCore::new(64, 3).unwrap();
        let (a, _) = cache.put(&[1], b"a", 1.0).unwrap();
        let (b, _) = cache.put(&[2], b"b", 2.0).unwrap();
        let (c, _) = cache.put(&[3], b"c", 3.0).unwrap();
        cache.delete(c);
        cache.touch_many(&[(a, 10.0), (c, 11.0)]);
        assert_eq!(cache.lru_order(), vec![a, b]);
        let seen = cache.peek(a).unwrap().unwrap();
        assert_eq!((seen.access_count, seen.last_accessed), (1, 10.0));
        let (d, evicted) = cache.put(&[4], b"d", 12.0).unwrap();
        assert!(evicted.is_empty());
        let (_, evicted) = cache.put(&[5], b"e", 13.0).unwrap();
        assert_eq!(evicted, vec![b]);
        assert_eq!(cache.lru_order()[1..], [d, a]);
    }

    #[test]
    fn bad_code_leaves_cache_unchanged() {
        let mut cache = CacheCore::new(128, 1).unwrap();
        let (a, _) = cache.put(&[1, 1], b"a", 0.0).unwrap();
        assert!(cache.put(&[1], b"b", 0.0).is_err());
        assert_eq!(cache.lru_order(), vec![a]);
    }

    #[test]
    fn delete_and_clear_free_payloads() {
        let mut cache = CacheCore::new(64, 10).unwrap();
        let base = cache.memory_bytes();
        let (a, _) = cache.put(&[1], &[0u8; 1000], 0.0).unwrap();
        assert!(cache.memory_bytes() >= base + 1000);
        assert!(cache.delete(a));
        assert!(!cache.delete(a));
        // A small freed response stays in the arena as garbage until compaction or clear.
        cache.put(&[1], b"x", 0.0).unwrap();
        cache.clear();
        assert!(cache.memory_bytes() < base + 1000);
        assert!(cache.is_empty());
        assert!(cache.lru_order().is_empty());
        assert_eq!(cache.nearest_in(&[1], 64, b"", 0.0).unwrap(), None);
    }

    proptest! {
        // LRU order always matches a reference list, and len never exceeds max_entries.
        #[test]
        fn lru_matches_reference(max in 1usize..6, ops in prop::collection::vec((0u8..3, any::<usize>()), 1..80)) {
            let mut cache = CacheCore::new(64, max).unwrap();
            let mut order: Vec<Id> = Vec::new(); // most recent first
            for (step, (kind, pick)) in ops.into_iter().enumerate() {
                match kind {
                    0 => {
                        let (id, evicted) = cache.put(&[step as u64], &[step as u8], step as f64).unwrap();
                        for victim in &evicted {
                            prop_assert_eq!(Some(victim), order.last());
                            order.pop();
                        }
                        order.insert(0, id);
                    }
                    1 if !order.is_empty() => {
                        let id = order.remove(pick % order.len());
                        prop_assert!(cache.touch(id, step as f64).unwrap().is_some());
                        order.insert(0, id);
                    }
                    2 if !order.is_empty() => {
                        let id = order.remove(pick % order.len());
                        prop_assert!(cache.delete(id));
                    }
                    _ => {}
                }
                prop_assert!(cache.len() <= max);
                prop_assert_eq!(cache.lru_order(), order.clone());
            }
        }
    }
}

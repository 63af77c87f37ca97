//! The response bytes of every cache entry in one growable buffer.
//!
//! A record is a little-endian `u32` length followed by the bytes, padded to a multiple of 8;
//! an entry keeps only the record's offset in 8-byte units (`u32`), so 4 bytes per entry
//! replace a 16-byte boxed slice and one heap allocation per response. Freed records become
//! garbage; [`Arena::compacted`] copies the live ones into a fresh buffer when garbage
//! outweighs them, so memory stays within about twice the live bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::mapped::MappedBytes;

/// The offset of an empty response, which has no record.
pub const EMPTY: u32 = u32::MAX;
/// Records start on multiples of this many bytes.
pub const UNIT: usize = 8;
/// Offsets are `u32` units below [`EMPTY`], so the buffer can address this many bytes (32 GiB,
/// or the address space on a 32-bit target).
pub const MAX_BYTES: usize = {
    let bytes = EMPTY as u64 * UNIT as u64;
    if bytes > usize::MAX as u64 {
        usize::MAX
    } else {
        bytes as usize
    }
};
/// Below this much garbage a compaction is not worth its copy.
const MIN_GARBAGE: usize = 1 << 20;
/// A loaded file's responses are checksummed in blocks of this many bytes, each verified the
/// first time a response in it is read.
pub const BLOCK: usize = 64 * 1024;

pub fn record_len(len: usize) -> usize {
    (4 + len).div_ceil(UNIT) * UNIT
}

/// The responses of a loaded file, read in place, each block checked against its checksum on
/// first use.
#[derive(Debug)]
pub struct MappedRecords {
    bytes: MappedBytes,
    sums: Vec<u64>,
    /// One bit per block: set once its checksum matched.
    verified: Vec<AtomicU64>,
    /// The file, for error messages.
    source: Arc<str>,
}

impl MappedRecords {
    /// `sums` must hold one XXH3-64 per [`BLOCK`] of `bytes` (the caller checked the count).
    pub fn new(bytes: MappedBytes, sums: Vec<u64>, source: Arc<str>) -> Self {
        debug_assert_eq!(sums.len(), bytes.len().div_ceil(BLOCK));
        let verified = (0..sums.len().div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        Self { bytes, sums, verified, source }
    }

    fn corrupt(&self, problem: String) -> Error {
        Error::Corrupt { file: self.source.to_string(), problem }
    }

    /// Checks the blocks that hold `start..end` (within the bytes).
    fn verify(&self, start: usize, end: usize) -> Result<()> {
        let bytes = self.bytes.bytes();
        for block in start / BLOCK..end.div_ceil(BLOCK) {
            let (word, bit) = (block / 64, 1u64 << (block % 64));
            if self.verified[word].load(Ordering::Relaxed) & bit != 0 {
                continue;
            }
            let data = &bytes[block * BLOCK..((block + 1) * BLOCK).min(bytes.len())];
            if xxhash_rust::xxh3::xxh3_64(data) != self.sums[block] {
                return Err(self.corrupt(format!(
                    "responses block {block} (bytes {} to {}) fails its checksum",
                    block * BLOCK,
                    block * BLOCK + data.len()
                )));
            }
            // Two threads may verify one block at once; both find the same answer.
            self.verified[word].fetch_or(bit, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Checks every block now.
    pub fn verify_all(&self) -> Result<()> {
        self.verify(0, self.bytes.len())
    }

    /// The record at byte `start`: its length field, bounds checked but not yet verified.
    fn span(&self, start: usize) -> Option<(usize, usize)> {
        let bytes = self.bytes.bytes();
        let head = bytes.get(start..start.checked_add(4)?)?;
        let len = u32::from_le_bytes(head.try_into().expect("4 bytes")) as usize;
        let end = start.checked_add(4)?.checked_add(len)?;
        (end <= bytes.len()).then_some((start + 4, end))
    }

    fn get(&self, start: usize) -> Result<&[u8]> {
        let Some((body, end)) = self.span(start) else {
            return Err(self.corrupt(format!("the response record at byte {start} runs past the responses section")));
        };
        self.verify(start, end)?;
        Ok(&self.bytes.bytes()[body..end])
    }

    fn len(&self) -> usize {
        self.bytes.len()
    }
}

#[derive(Debug, Default)]
pub struct Arena {
    /// Records of a loaded file, never changed; offsets below `base.len() / UNIT` point here.
    base: Option<MappedRecords>,
    /// Records added since, at offsets from `base.len() / UNIT` on.
    buf: Vec<u8>,
    /// Bytes of live records (headers and padding included).
    live: usize,
    /// Set when a compaction met a corrupt record of a loaded file; it is not retried.
    compaction_failed: bool,
}

impl Arena {
    /// An arena whose records are those of a loaded file; `live` is their total size.
    pub fn from_mapped(base: MappedRecords, live: usize) -> Self {
        Self { base: Some(base), buf: Vec::new(), live, compaction_failed: false }
    }

    /// Bytes of records, live or garbage, in the mapped base and the buffer.
    pub fn total_bytes(&self) -> usize {
        self.base_len() + self.buf.len()
    }

    fn base_len(&self) -> usize {
        self.base.as_ref().map_or(0, MappedRecords::len)
    }

    /// Fails with [`Error::ResponseTooLarge`] or [`Error::StorageFull`] if `len` bytes cannot be
    /// stored once records of `freed` bytes (see [`Arena::record_bytes`]) are freed; changes
    /// nothing.
    pub fn check_room(&self, len: usize, freed: usize) -> Result<()> {
        if len > u32::MAX as usize {
            return Err(Error::ResponseTooLarge { len });
        }
        if len > 0 && self.live.saturating_sub(freed) + record_len(len) > MAX_BYTES {
            return Err(Error::StorageFull { limit: MAX_BYTES });
        }
        Ok(())
    }

    /// Whether `len` more bytes fit at the end of the buffer without compacting first.
    pub fn fits_without_compaction(&self, len: usize) -> bool {
        len == 0 || self.base_len() + self.buf.len() + record_len(len) <= MAX_BYTES
    }

    /// Appends a record; the caller has checked [`Arena::check_room`] and, if needed, compacted.
    pub fn push(&mut self, data: &[u8]) -> u32 {
        if data.is_empty() {
            return EMPTY;
        }
        let at = self.base_len() + self.buf.len();
        let need = record_len(data.len());
        assert!(at + need <= MAX_BYTES, "arena overflow: check_room and compact first");
        self.buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(self.buf.len() + need - 4 - data.len(), 0);
        self.live += need;
        (at / UNIT) as u32
    }

    /// The response at `at`. Only a record of a loaded file can fail: it is checked against its
    /// block checksums on first read ([`Error::Corrupt`]).
    pub fn get(&self, at: u32) -> Result<&[u8]> {
        if at == EMPTY {
            return Ok(&[]);
        }
        let start = at as usize * UNIT;
        match &self.base {
            Some(base) if start < base.len() => base.get(start),
            _ => {
                let start = start - self.base_len();
                let len = u32::from_le_bytes(self.buf[start..start + 4].try_into().expect("4 bytes")) as usize;
                Ok(&self.buf[start + 4..start + 4 + len])
            }
        }
    }

    /// The length of the response at `at` without verifying it (0 if a loaded file's record
    /// is out of bounds).
    pub fn len_of(&self, at: u32) -> usize {
        if at == EMPTY {
            return 0;
        }
        let start = at as usize * UNIT;
        match &self.base {
            Some(base) if start < base.len() => base.span(start).map_or(0, |(body, end)| end - body),
            _ => {
                let start = start - self.base_len();
                u32::from_le_bytes(self.buf[start..start + 4].try_into().expect("4 bytes")) as usize
            }
        }
    }

    /// Bytes the record at `at` takes in the buffer (0 for an empty response).
    pub fn record_bytes(&self, at: u32) -> usize {
        if at == EMPTY {
            0
        } else {
            record_len(self.len_of(at))
        }
    }

    /// Marks a record as garbage.
    pub fn free(&mut self, at: u32) {
        self.live = self.live.saturating_sub(self.record_bytes(at));
    }

    /// Whether enough of the buffer is garbage that [`Arena::compacted`] should run.
    pub fn wants_compaction(&self) -> bool {
        let garbage = (self.base_len() + self.buf.len()).saturating_sub(self.live);
        !self.compaction_failed && garbage >= MIN_GARBAGE && garbage > self.live
    }

    /// Remembers that a compaction failed, so it is not retried on every delete.
    pub fn note_failed_compaction(&mut self) {
        self.compaction_failed = true;
    }

    /// A fresh arena holding the records at `offsets` (updated in place to their new offsets
    /// only if every record could be read).
    pub fn compacted<'a>(&self, offsets: impl Iterator<Item = &'a mut u32>) -> Result<Arena> {
        let mut fresh = Arena { buf: Vec::with_capacity(self.live), ..Arena::default() };
        let mut moved = Vec::new();
        // Records never overlap in a healthy arena, so the copy is no larger than the buffer; a
        // crafted file whose entries share or overlap records would make it larger (and could
        // multiply it), so that is refused.
        let limit = self.total_bytes();
        for at in offsets {
            let data = self.get(*at)?;
            if fresh.buf.len() + record_len(data.len()) > limit {
                return Err(self.base.as_ref().map_or_else(
                    || Error::StorageFull { limit },
                    |b| b.corrupt("responses share or overlap records".into()),
                ));
            }
            let new_at = fresh.push(data);
            moved.push((at, new_at));
        }
        for (at, new_at) in moved {
            *at = new_at;
        }
        Ok(fresh)
    }

    pub fn clear(&mut self) {
        *self = Arena::default();
    }

    /// Bytes held on the heap (capacity): a loaded file's records are mapped, not held.
    pub fn memory_bytes(&self) -> usize {
        self.buf.capacity() + self.base.as_ref().map_or(0, |b| b.sums.capacity() * 8 + b.verified.len() * 8)
    }

    /// Bytes of a loaded file read in place.
    pub fn mapped_bytes(&self) -> usize {
        self.base_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_frees_and_compacts() {
        let mut arena = Arena::default();
        assert_eq!(arena.push(b""), EMPTY);
        assert_eq!(arena.get(EMPTY).unwrap(), b"");
        let a = arena.push(b"hello");
        let b = arena.push(&[7u8; 13]);
        assert_eq!((arena.get(a).unwrap(), arena.get(b).unwrap()), (&b"hello"[..], &[7u8; 13][..]));
        assert_eq!(arena.live, 16 + 24);
        arena.free(a);
        assert_eq!(arena.live, 24);
        let mut offsets = [b, EMPTY];
        let fresh = arena.compacted(offsets.iter_mut()).unwrap();
        assert_eq!(fresh.get(offsets[0]).unwrap(), &[7u8; 13][..]);
        assert_eq!((offsets[0], offsets[1], fresh.live), (0, EMPTY, 24));
    }

    #[test]
    fn wants_compaction_only_when_garbage_dominates() {
        let mut arena = Arena::default();
        let big = vec![1u8; MIN_GARBAGE];
        let a = arena.push(&big);
        let b = arena.push(&big);
        assert!(!arena.wants_compaction());
        arena.free(a);
        assert!(!arena.wants_compaction()); // garbage == live
        arena.free(b);
        assert!(arena.wants_compaction());
    }

    #[test]
    fn too_large_is_refused() {
        let arena = Arena::default();
        assert_eq!(
            arena.check_room(u32::MAX as usize + 1, 0),
            Err(Error::ResponseTooLarge { len: u32::MAX as usize + 1 })
        );
        assert!(arena.check_room(1 << 20, 0).is_ok());
    }
}

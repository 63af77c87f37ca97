//! The response bytes of every cache entry in one growable buffer.
//!
//! A record is a little-endian `u32` length followed by the bytes, padded to a multiple of 8;
//! an entry keeps only the record's offset in 8-byte units (`u32`), so 4 bytes per entry
//! replace a 16-byte boxed slice and one heap allocation per response. Freed records become
//! garbage; [`Arena::compacted`] copies the live ones into a fresh buffer when garbage
//! outweighs them, so memory stays within about twice the live bytes.

use crate::error::{Error, Result};

/// The offset of an empty response, which has no record.
pub const EMPTY: u32 = u32::MAX;
/// Records start on multiples of this many bytes.
const UNIT: usize = 8;
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

fn record_len(len: usize) -> usize {
    (4 + len).div_ceil(UNIT) * UNIT
}

#[derive(Clone, Debug, Default)]
pub struct Arena {
    buf: Vec<u8>,
    /// Bytes of live records (headers and padding included).
    live: usize,
}

impl Arena {
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
        len == 0 || self.buf.len() + record_len(len) <= MAX_BYTES
    }

    /// Appends a record; the caller has checked [`Arena::check_room`] and, if needed, compacted.
    pub fn push(&mut self, data: &[u8]) -> u32 {
        if data.is_empty() {
            return EMPTY;
        }
        let at = self.buf.len();
        let need = record_len(data.len());
        assert!(
            at + need <= MAX_BYTES,
            "arena overflow: check_room and compact first"
        );
        self.buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(at + need, 0);
        self.live += need;
        (at / UNIT) as u32
    }

    pub fn get(&self, at: u32) -> &[u8] {
        if at == EMPTY {
            return &[];
        }
        let start = at as usize * UNIT;
        let len = u32::from_le_bytes(self.buf[start..start + 4].try_into().expect("4 bytes")) as usize;
        &self.buf[start + 4..start + 4 + len]
    }

    /// Bytes the record at `at` takes in the buffer (0 for an empty response).
    pub fn record_bytes(&self, at: u32) -> usize {
        if at == EMPTY {
            0
        } else {
            record_len(self.get(at).len())
        }
    }

    /// Marks a record as garbage.
    pub fn free(&mut self, at: u32) {
        self.live -= self.record_bytes(at);
    }

    /// Whether enough of the buffer is garbage that [`Arena::compacted`] should run.
    pub fn wants_compaction(&self) -> bool {
        let garbage = self.buf.len() - self.live;
        garbage >= MIN_GARBAGE && garbage > self.live
    }

    /// A fresh arena holding the records at `offsets` (updated in place to their new offsets).
    pub fn compacted<'a>(&self, offsets: impl Iterator<Item = &'a mut u32>) -> Arena {
        let mut fresh = Arena {
            buf: Vec::with_capacity(self.live),
            live: 0,
        };
        for at in offsets {
            *at = fresh.push(self.get(*at));
        }
        fresh
    }

    pub fn clear(&mut self) {
        *self = Arena::default();
    }

    /// Bytes held (capacity).
    pub fn memory_bytes(&self) -> usize {
        self.buf.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_frees_and_compacts() {
        let mut arena = Arena::default();
        assert_eq!(arena.push(b""), EMPTY);
        assert_eq!(arena.get(EMPTY), b"");
        let a = arena.push(b"hello");
        let b = arena.push(&[7u8; 13]);
        assert_eq!((arena.get(a), arena.get(b)), (&b"hello"[..], &[7u8; 13][..]));
        assert_eq!(arena.live, 16 + 24);
        arena.free(a);
        assert_eq!(arena.live, 24);
        let mut offsets = [b, EMPTY];
        let fresh = arena.compacted(offsets.iter_mut());
        assert_eq!(fresh.get(offsets[0]), &[7u8; 13][..]);
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
            Err(Error::ResponseTooLarge {
                len: u32::MAX as usize + 1
            })
        );
        assert!(arena.check_room(1 << 20, 0).is_ok());
    }
}

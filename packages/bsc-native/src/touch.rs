//! The queue of LRU uses a lookup could not record at once.
//!
//! A cache hit needs the write lock for its O(1) LRU update. A lookup that finds the lock taken
//! (by a save, which holds the read lock while it writes the file, or by a writer) does not wait:
//! it pushes the use here, and the next holder of the write lock applies the queue first, in the
//! order the uses happened.
//!
//! **Overflow policy.** The queue holds at most [`MAX_PENDING`] uses. When it is full, the
//! *oldest* queued use is dropped to make room for the new one, and every dropped use is counted
//! ([`TouchQueue::dropped`], reported as `lru_touches_dropped` in `CacheStore.stats()`). The
//! newest uses are the ones that decide which entries are most recently used, and an entry used
//! again keeps its place through its later use; what is lost is that an entry used only early
//! in a long save may be evicted sooner than its use warrants, and its access count misses that
//! use. Lookups never block on the queue beyond its own short mutex.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::cache::CacheCore;
use crate::index::Id;

/// Uses queued at most; beyond it the oldest is dropped (see the module documentation).
pub const MAX_PENDING: usize = 1 << 16;

/// A bounded FIFO of `(id, time of use)` that counts what it drops.
#[derive(Debug)]
pub struct TouchQueue {
    uses: Mutex<VecDeque<(Id, f64)>>,
    capacity: usize,
    dropped: AtomicU64,
}

impl Default for TouchQueue {
    fn default() -> Self {
        Self::with_capacity(MAX_PENDING)
    }
}

impl TouchQueue {
    /// A queue of at most `capacity` uses (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        Self { uses: Mutex::new(VecDeque::new()), capacity: capacity.max(1), dropped: AtomicU64::new(0) }
    }

    /// Queues a use of `id` at `at`; when full, drops the oldest queued use and counts it.
    pub fn push(&self, id: Id, at: f64) {
        let mut uses = self.lock();
        if uses.len() >= self.capacity {
            uses.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        uses.push_back((id, at));
    }

    /// Applies every queued use to `core`, oldest first, and empties the queue. The caller holds
    /// the write lock of `core`.
    pub fn apply(&self, core: &mut CacheCore) {
        let uses = std::mem::take(&mut *self.lock());
        let (first, second) = uses.as_slices();
        core.touch_many(first);
        core.touch_many(second);
    }

    /// Uses queued now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Uses dropped because the queue was full, since this queue was made.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The queue survives a panic of a thread that held its mutex: its contents are plain data.
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Id, f64)>> {
        self.uses.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(n: u64) -> (CacheCore, Vec<Id>) {
        let mut core = CacheCore::new(64, 100).unwrap();
        let ids = (0..n).map(|i| core.put(&[i], b"r", 1.0 + i as f64).unwrap().0).collect();
        (core, ids)
    }

    #[test]
    fn applies_uses_in_the_order_they_happened() {
        let (mut core, ids) = cache(4);
        let queue = TouchQueue::default();
        for &i in &[2, 0, 3] {
            queue.push(ids[i], 10.0 + i as f64);
        }
        assert_eq!(queue.len(), 3);
        queue.apply(&mut core);
        assert!(queue.is_empty());
        assert_eq!(core.lru_order(), vec![ids[3], ids[0], ids[2], ids[1]]);
        assert_eq!(core.peek(ids[0]).unwrap().unwrap().access_count, 1);
        assert_eq!(core.peek(ids[1]).unwrap().unwrap().access_count, 0);
        assert_eq!(queue.dropped(), 0);
    }

    #[test]
    fn is_bounded_drops_the_oldest_and_counts_every_drop() {
        let (mut core, ids) = cache(5);
        let queue = TouchQueue::with_capacity(3);
        // Five uses, newest entry first, into three places: the two oldest (of ids 4 and 3)
        // are dropped.
        for (i, &id) in ids.iter().rev().enumerate() {
            queue.push(id, 10.0 + i as f64);
        }
        assert_eq!((queue.len(), queue.dropped()), (3, 2));
        queue.apply(&mut core);
        assert_eq!(core.lru_order(), vec![ids[0], ids[1], ids[2], ids[4], ids[3]]);
        let counts: Vec<u32> = ids.iter().map(|&id| core.peek(id).unwrap().unwrap().access_count).collect();
        assert_eq!(counts, [1, 1, 1, 0, 0]);
        // The count is kept across applies; an emptied queue has room again.
        queue.push(ids[0], 20.0);
        assert_eq!((queue.len(), queue.dropped()), (1, 2));
    }

    #[test]
    fn wraps_around_keeping_order() {
        let (mut core, ids) = cache(4);
        let queue = TouchQueue::with_capacity(2);
        // The deque's storage wraps; apply still replays oldest first.
        queue.push(ids[0], 10.0);
        queue.push(ids[1], 11.0);
        queue.push(ids[2], 12.0);
        queue.push(ids[1], 13.0);
        assert_eq!(queue.dropped(), 2);
        queue.apply(&mut core);
        assert_eq!(core.lru_order()[..2], [ids[1], ids[2]]);
    }

    #[test]
    fn skips_uses_of_entries_deleted_since() {
        let (mut core, ids) = cache(3);
        let queue = TouchQueue::default();
        queue.push(ids[0], 10.0);
        queue.push(ids[1], 11.0);
        core.delete(ids[1]);
        queue.apply(&mut core);
        assert_eq!(core.lru_order(), vec![ids[0], ids[2]]);
    }
}

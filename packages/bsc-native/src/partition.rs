//! Partitions: every cache entry belongs to one, named by caller bytes (bsc uses the namespace
//! and a hash of the request scope). A lookup names a partition and the scan admits only that
//! partition's entries, so an entry of another partition can never be returned — nor can a
//! nearer entry of another partition hide one of this partition.
//!
//! Names are interned: an entry stores a `u32` partition id; the id of a partition whose last
//! entry is removed is freed and reused. Id 0 is the default partition, the empty name.

use std::collections::HashMap;

/// The partition of entries stored without a name.
pub const DEFAULT: u32 = 0;
/// The longest partition name, in bytes.
pub const MAX_NAME: usize = 1024;

#[derive(Debug)]
pub struct Partitions {
    ids: HashMap<Box<[u8]>, u32>,
    /// Name by id; `None` for a freed id.
    names: Vec<Option<Box<[u8]>>>,
    /// Live entries by id.
    live: Vec<u32>,
    /// Freed ids, reused first.
    free: Vec<u32>,
}

impl Default for Partitions {
    fn default() -> Self {
        let mut ids = HashMap::new();
        ids.insert(Box::<[u8]>::from(&b""[..]), DEFAULT);
        Self { ids, names: vec![Some(Box::from(&b""[..]))], live: vec![0], free: Vec::new() }
    }
}

impl Partitions {
    /// The id of an existing partition.
    pub fn find(&self, name: &[u8]) -> Option<u32> {
        self.ids.get(name).copied()
    }

    /// Counts one more entry in partition `name`, creating it if needed; returns its id.
    pub fn add(&mut self, name: &[u8]) -> u32 {
        let id = match self.ids.get(name) {
            Some(&id) => id,
            None => {
                let boxed: Box<[u8]> = name.into();
                let id = match self.free.pop() {
                    Some(id) => {
                        self.names[id as usize] = Some(boxed.clone());
                        id
                    }
                    None => {
                        self.names.push(Some(boxed.clone()));
                        self.live.push(0);
                        (self.names.len() - 1) as u32
                    }
                };
                self.ids.insert(boxed, id);
                id
            }
        };
        self.live[id as usize] += 1;
        id
    }

    /// Counts one entry less in partition `id`; a named partition left empty is dropped.
    pub fn remove(&mut self, id: u32) {
        let i = id as usize;
        self.live[i] = self.live[i].saturating_sub(1);
        if self.live[i] == 0 && id != DEFAULT {
            if let Some(name) = self.names[i].take() {
                self.ids.remove(&name);
                self.free.push(id);
            }
        }
    }

    pub fn name(&self, id: u32) -> &[u8] {
        self.names.get(id as usize).and_then(|n| n.as_deref()).unwrap_or(&[])
    }

    /// Partitions holding at least one entry.
    pub fn len(&self) -> usize {
        self.live.iter().filter(|&&n| n > 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each partition holding entries, with how many.
    pub fn sizes(&self) -> Vec<(&[u8], u32)> {
        self.names
            .iter()
            .zip(&self.live)
            .filter_map(|(name, &n)| Some((name.as_deref()?, n)).filter(|_| n > 0))
            .collect()
    }

    /// Names by id (`None` for freed ids), for saving.
    pub fn names(&self) -> &[Option<Box<[u8]>>] {
        &self.names
    }

    /// Partitions from saved names and the partition ids of the live entries. Fails, naming the
    /// problem, if an entry names a freed or missing id, or a name is listed twice.
    pub fn from_saved(
        names: Vec<Option<Box<[u8]>>>, entries: impl Iterator<Item = u32>,
    ) -> std::result::Result<Self, String> {
        if names.first().is_none_or(|n| n.as_deref() != Some(&b""[..])) {
            return Err("partition 0 is not the default (empty) partition".into());
        }
        let mut ids = HashMap::with_capacity(names.len());
        let mut free = Vec::new();
        for (id, name) in names.iter().enumerate() {
            match name {
                Some(name) => {
                    if ids.insert(name.clone(), id as u32).is_some() {
                        return Err(format!("partition name {:?} is listed twice", String::from_utf8_lossy(name)));
                    }
                }
                None => free.push(id as u32),
            }
        }
        let mut live = vec![0u32; names.len()];
        for id in entries {
            match names.get(id as usize) {
                Some(Some(_)) => live[id as usize] += 1,
                _ => return Err(format!("an entry names partition {id}, which does not exist")),
            }
        }
        // A named partition without entries is dropped, as `remove` would have.
        let mut parts = Self { ids, names, live, free };
        for id in 1..parts.names.len() as u32 {
            if parts.live[id as usize] == 0 && parts.names[id as usize].is_some() {
                parts.live[id as usize] = 1;
                parts.remove(id);
            }
        }
        Ok(parts)
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Approximate bytes held.
    pub fn memory_bytes(&self) -> usize {
        self.names.capacity() * 24
            + self.live.capacity() * 4
            + self.free.capacity() * 4
            + self.ids.capacity() * 40
            + self.names.iter().flatten().map(|n| 2 * n.len()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_interned_freed_and_reused() {
        let mut parts = Partitions::default();
        assert_eq!(parts.add(b""), DEFAULT);
        let a = parts.add(b"tenant-a");
        let b = parts.add(b"tenant-b");
        assert_eq!(parts.add(b"tenant-a"), a);
        assert_ne!(a, b);
        assert_eq!((parts.find(b"tenant-a"), parts.name(b)), (Some(a), &b"tenant-b"[..]));
        parts.remove(b);
        assert_eq!(parts.find(b"tenant-b"), None);
        assert_eq!(parts.add(b"tenant-c"), b); // reused
        parts.remove(DEFAULT);
        assert_eq!(parts.find(b""), Some(DEFAULT)); // the default partition is never dropped
        assert_eq!(parts.len(), 2);
    }

    #[test]
    fn saved_names_are_validated() {
        let names = vec![Some(Box::from(&b""[..])), Some(Box::from(&b"x"[..])), None];
        let parts = Partitions::from_saved(names.clone(), [1, 1, 0].into_iter()).unwrap();
        assert_eq!(parts.find(b"x"), Some(1));
        assert!(Partitions::from_saved(names.clone(), [2].into_iter()).is_err());
        assert!(Partitions::from_saved(names.clone(), [3].into_iter()).is_err());
        let twice = vec![Some(Box::from(&b""[..])), Some(Box::from(&b""[..]))];
        assert!(Partitions::from_saved(twice, [].into_iter()).is_err());
        // A named partition without entries is dropped.
        let parts = Partitions::from_saved(names, [0].into_iter()).unwrap();
        assert_eq!(parts.find(b"x"), None);
    }
}

//! Reading a file: [`open`] maps it and checks its header and section table (see
//! [`super::verify`]); [`Opened`] decodes the sections into an index or a cache.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use super::layout::*;
use super::verify::parse;
use crate::arena::{Arena, MappedRecords};
use crate::cache::{CacheCore, NEVER};
use crate::error::{Error, Result};
use crate::index::{CodeIndex, FREE};
use crate::mapped::{Column, MappedBytes};
use crate::partition::{self, Partitions};
use crate::recency::{seconds, Recency};

/// The partition and expiry columns and the partition names, as read.
pub type SavedPlacement = (Column<u32>, Column<u32>, Vec<Option<Box<[u8]>>>);

/// A validated file: its header fields and the byte ranges of its sections, not yet decoded.
pub struct Opened {
    pub(super) file: Arc<str>,
    pub(super) handle: File,
    pub(super) map: MappedBytes,
    pub kind: Kind,
    /// The format version the file was written in.
    pub version: u32,
    pub code_bits: usize,
    pub(super) slots: usize,
    pub(super) live: usize,
    pub(super) max_entries: usize,
    pub(super) counters: Counters,
    pub(super) expirations: u64,
    pub(super) response_bytes: u64,
    pub(super) sections: HashMap<Tag, (usize, usize, u64)>,
}

impl Opened {
    pub(super) fn err(&self, make: fn(String, String) -> Error, problem: impl Into<String>) -> Error {
        make(self.file.to_string(), problem.into())
    }

    pub(super) fn corrupt(&self, problem: impl Into<String>) -> Error {
        self.err(|file, problem| Error::Corrupt { file, problem }, problem)
    }

    pub(super) fn bytes(&self, tag: Tag) -> &[u8] {
        let (offset, len, _) = self.sections[&tag];
        &self.map.bytes()[offset..offset + len]
    }
    /// The fingerprint, metadata and counters.
    pub fn extras(&self) -> Result<Extras> {
        let fingerprint = std::str::from_utf8(self.checked(FPRT)?)
            .map_err(|_| self.corrupt("the encoder fingerprint is not UTF-8"))?
            .to_owned();
        Ok(Extras { fingerprint, meta: self.checked(META)?.to_vec(), counters: self.counters })
    }

    /// Number of live entries the header declares.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Fails with [`Error::NotACacheFile`] unless the file holds `kind`.
    pub fn expect(&self, kind: Kind) -> Result<()> {
        if self.kind != kind {
            return Err(Error::NotACacheFile {
                file: self.file.to_string(),
                problem: format!("the file holds {}, not {}", self.kind.name(), kind.name()),
            });
        }
        Ok(())
    }

    /// Fails with [`Error::EncoderMismatch`] if the file's fingerprint is not `expected`.
    pub fn expect_fingerprint(&self, expected: &str) -> Result<()> {
        let found = self.extras()?.fingerprint;
        if found != expected {
            return Err(Error::EncoderMismatch { file: self.file.to_string(), expected: expected.to_owned(), found });
        }
        Ok(())
    }

    /// The partition and expiry columns, the partition names and the expiration count: from
    /// the file, or defaults for a file written before they existed.
    pub(super) fn placement_columns(&self) -> Result<SavedPlacement> {
        let slots = self.slots;
        let partition = if self.sections.contains_key(&PART) {
            self.column(PART, |w| le_u32(w, 0))?
        } else {
            Column::from(vec![partition::DEFAULT; slots])
        };
        let expires = if self.sections.contains_key(&EXPR) {
            self.column(EXPR, |w| le_u32(w, 0))?
        } else {
            Column::from(vec![NEVER; slots])
        };
        let mut names = Vec::new();
        if self.sections.contains_key(&PKEY) {
            let mut rest = self.checked(PKEY)?;
            while !rest.is_empty() {
                let len = rest.get(..4).map(|w| le_u32(w, 0));
                match len {
                    Some(u32::MAX) => {
                        names.push(None);
                        rest = &rest[4..];
                    }
                    Some(len) if (len as usize) <= partition::MAX_NAME && rest.len() >= 4 + len as usize => {
                        names.push(Some(Box::from(&rest[4..4 + len as usize])));
                        rest = &rest[4 + len as usize..];
                    }
                    _ => return Err(self.corrupt("the partition names are malformed")),
                }
            }
        } else {
            names.push(Some(Box::from(&b""[..])));
        }
        Ok((partition, expires, names))
    }

    /// Checks the partition names against the entries' partition ids.
    pub(super) fn placement(
        &self, index: &CodeIndex, (partition, expires, names): SavedPlacement,
    ) -> Result<(Column<u32>, Column<u32>, Partitions, u64)> {
        let slots = self.slots;
        let generation: &[u32] = &index.generation;
        let ids: &[u32] = &partition;
        // An empty column (version 2): every entry is in the default partition.
        let live_partitions = (0..slots)
            .filter(|&h| generation[h] & FREE == 0)
            .map(|h| ids.get(h).copied().unwrap_or(partition::DEFAULT));
        let partitions = Partitions::from_saved(names, live_partitions).map_err(|problem| self.corrupt(problem))?;
        Ok((partition, expires, partitions, self.expirations))
    }

    /// Decodes the code and slot sections into an index.
    pub fn index(&self) -> Result<CodeIndex> {
        self.index_with(|| Ok(()), || Ok(())).map(|(index, (), ())| index)
    }

    /// Decodes the index while `also` runs: the code array (the largest section) is
    /// checksummed on a second thread meanwhile.
    pub(super) fn index_with<R, H: Send>(
        &self, also: impl FnOnce() -> Result<R>, helper_also: impl FnOnce() -> Result<H> + Send,
    ) -> Result<(CodeIndex, R, H)> {
        let codes = self.column_unchecked(CODE, |w| le_u64(w, 0))?;
        let helper_job = std::sync::Mutex::new(Some(helper_also));
        // Captures only references, so it is Copy: run on a thread, or here if none starts.
        let work = || -> Result<H> {
            self.check_sum(CODE, &codes)?;
            let job = helper_job.lock().map_err(|_| self.corrupt("checksum thread failed"))?.take();
            job.expect("run once")()
        };
        let (helped, rest) = std::thread::scope(|scope| {
            let helper = std::thread::Builder::new().spawn_scoped(scope, work).ok();
            let rest = self.index_rest().and_then(|index| Ok((index, also()?)));
            let helped = match helper {
                Some(thread) => thread.join().unwrap_or_else(|_| Err(self.corrupt("checksum thread failed"))),
                None => work(),
            };
            (helped, rest)
        });
        let helped = helped?;
        let (mut index, extra) = rest?;
        index.codes = codes;
        Ok((index, extra, helped))
    }

    /// The index without its codes.
    pub(super) fn index_rest(&self) -> Result<CodeIndex> {
        let generation = self.column(GENS, |w| le_u32(w, 0))?;
        let free_slots = u32s(self.checked(FREE_SLOTS)?);
        if generation[self.slots..].iter().any(|g| g & FREE == 0) {
            return Err(self.corrupt("a slot beyond the code array is marked live"));
        }
        let live = generation.iter().filter(|g| *g & FREE == 0).count();
        if live != self.live {
            return Err(self.corrupt(format!("the header says {} entries but {live} slots are live", self.live)));
        }
        let mut listed = vec![false; self.slots];
        for &slot in &free_slots {
            let s = slot as usize;
            if s >= self.slots || generation[s] & FREE == 0 || std::mem::replace(&mut listed[s], true) {
                return Err(self.corrupt(format!(
                    "the free-slot list names slot {slot}, which is not a free slot or is listed twice"
                )));
            }
        }
        let mut index = CodeIndex::new(self.code_bits)?;
        index.generation = generation;
        index.free_slots = free_slots;
        index.len = live;
        Ok(index)
    }

    /// Decodes a cache. Responses stay in the mapped file and are verified block by block
    /// when first read (all of them now when `verify_all`).
    pub fn cache(&self, verify_all: bool) -> Result<CacheCore> {
        self.expect(Kind::Cache)?;
        if self.version == 1 {
            return self.cache_v1(verify_all);
        }
        // Two threads: this one maps and checksums the slot columns while the other checksums
        // the codes and the partition columns; then this one validates the slots while the
        // other checks the recency words. Every column is read in place.
        let (index, (created, words, marks, spilled, payload_at), placement) = self.index_with(
            || {
                Ok((
                    self.column(SECS, |w| le_u32(w, 0))?,
                    self.column(RCNY, |w| le_u32(w, 0))?,
                    u32s(self.checked(RMRK)?),
                    u32s(self.checked(RSPL)?),
                    self.column(PAYL, |w| le_u32(w, 0))?,
                ))
            },
            || self.placement_columns(),
        )?;
        let generation: &[u32] = &index.generation[..self.slots];
        let clock = marks[0];
        let marks: Vec<(u32, u32)> = marks[1..].chunks_exact(2).map(|p| (p[0], p[1])).collect();
        let spilled: Vec<(u32, u32)> = spilled.chunks_exact(2).map(|p| (p[0], p[1])).collect();
        let job = std::sync::Mutex::new(Some((words, marks)));
        let restore = || {
            let (words, marks) = job.lock().map_err(|_| "the recency thread failed".to_string())?.take().expect("once");
            Recency::from_saved(words, clock, marks, &spilled, generation)
        };
        let (recency, checked) = std::thread::scope(|scope| {
            let helper = std::thread::Builder::new().spawn_scoped(scope, restore).ok();
            let checked = self.check_slots(&index, &payload_at, placement);
            let recency = match helper {
                Some(thread) => thread.join().unwrap_or_else(|_| Err("the recency thread failed".into())),
                None => restore(),
            };
            (recency, checked)
        });
        let checked = checked?;
        let recency = recency.map_err(|problem| self.corrupt(problem))?;
        self.assemble(index, created, recency, payload_at, checked, verify_all)
    }

    /// Decodes a version-1 cache: `f64` creation times, last uses in tenths after them,
    /// access counts and the LRU order, converted to the engine's whole seconds and recency
    /// words (a TTL's deadline stays where it was, to the tenth).
    fn cache_v1(&self, verify_all: bool) -> Result<CacheCore> {
        let (index, (created, last_accessed, access_count, payload_at, order), placement) = self.index_with(
            || {
                Ok((
                    self.column(CRTD, |w| f64::from_bits(le_u64(w, 0)))?,
                    self.column(LAST, |w| le_u32(w, 0))?,
                    self.column(CNTS, |w| le_u32(w, 0))?,
                    self.column(PAYL, |w| le_u32(w, 0))?,
                    u32s(self.checked(LRUO)?),
                ))
            },
            || self.placement_columns(),
        )?;
        let slots = self.slots;
        let generation: &[u32] = &index.generation[..slots];
        let live = index.len();
        let live_slot = |h: usize| generation[h] & FREE == 0;
        // Every live slot has a creation time within ±1e11 s of the epoch.
        if let Some(slot) = (0..slots).find(|&h| live_slot(h) && !(-1e11..1e11).contains(&created[h])) {
            return Err(self.corrupt(format!("slot {slot} has creation time {}, which does not fit", created[slot])));
        }
        let restore = || {
            Recency::check_order(&order, generation, live)?;
            Ok(Recency::restore(
                &order,
                slots,
                live_slot,
                |h| seconds(created[h] + f64::from(last_accessed[h]) / 10.0),
                |h| access_count[h],
            ))
        };
        let (recency, checked) = std::thread::scope(|scope| {
            let helper = std::thread::Builder::new().spawn_scoped(scope, restore).ok();
            let checked = self.check_slots(&index, &payload_at, placement);
            let recency: std::result::Result<Recency, String> = match helper {
                Some(thread) => thread.join().unwrap_or_else(|_| Err("the LRU thread failed".into())),
                None => restore(),
            };
            (recency, checked)
        });
        let ((partition, expires, partitions, expirations), records, resp_len) = checked?;
        let recency = recency.map_err(|problem| self.corrupt(problem))?;
        let whole: Vec<u32> = created.iter().map(|&t| seconds(t)).collect();
        // Columns of defaults are left out, as a new store leaves them.
        let partition = if (0..slots).any(|h| live_slot(h) && partition[h] != partition::DEFAULT) {
            partition
        } else {
            Column::default()
        };
        let expires = if (0..slots).any(|h| live_slot(h) && expires[h] != NEVER) {
            let fraction = |h: usize| ((created[h] - f64::from(whole[h])) * 10.0).floor().clamp(0.0, 10.0) as u32;
            let moved: Vec<u32> = (0..slots)
                .map(|h| match expires[h] {
                    e if e != NEVER && live_slot(h) => e.saturating_add(fraction(h)).min(NEVER - 1),
                    _ => NEVER,
                })
                .collect();
            Column::from(moved)
        } else {
            Column::default()
        };
        let checked = ((partition, expires, partitions, expirations), records, resp_len);
        self.assemble(index, Column::from(whole), recency, payload_at, checked, verify_all)
    }

    /// The cache from its checked parts, with the exact-match keys.
    #[allow(clippy::type_complexity)]
    fn assemble(
        &self, index: CodeIndex, created: Column<u32>, recency: Recency, payload_at: Column<u32>,
        (placement, records, resp_len): ((Column<u32>, Column<u32>, Partitions, u64), MappedRecords, usize),
        verify_all: bool,
    ) -> Result<CacheCore> {
        let slots = self.slots;
        if verify_all {
            records.verify_all()?;
        }
        let arena = Arena::from_mapped(records, resp_len);
        let keys = match self.sections.get(&XKEY) {
            Some(&(_, len, _)) if len > 0 => self.column(XKEY, |w| le_u64(w, 0))?,
            _ => Column::default(),
        };
        // A free slot has no key: a stale one would be inherited by the slot's next entry.
        if keys.iter().zip(&index.generation[..slots]).any(|(&key, &generation)| key != 0 && generation & FREE != 0) {
            return Err(self.corrupt("an exact-match key (XKEY) belongs to a free slot"));
        }
        Ok(CacheCore::from_parts(
            index,
            self.max_entries,
            created,
            recency,
            payload_at,
            placement,
            arena,
            self.response_bytes as usize,
            keys,
        ))
    }
}

/// Reads `path`'s header and section table and checks them; decodes nothing else.
pub fn open(path: &Path) -> Result<Opened> {
    let name = path.display().to_string();
    let io = |e: std::io::Error| Error::io(path, &e);
    let file = File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if meta.is_dir() {
        return Err(Error::Io { file: name, kind: std::io::ErrorKind::IsADirectory, message: "is a directory".into() });
    }
    if meta.len() == 0 {
        return Err(Error::EmptyFile { file: name });
    }
    let map = MappedBytes::map_file(&file).map_err(io)?;
    parse(file, map, name)
}

//! Every check a file must pass before anything in it is trusted: the header and section table
//! ([`parse`], which validates every count and offset against the file's length before anything
//! is allocated), the checksums of sections and columns, and the per-slot columns against each
//! other. Also the helpers of the fuzz target and the mutation test ([`reseal`], [`fuzz_file`]).

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use super::layout::*;
use super::reader::{open, Opened, SavedPlacement};
use super::writer::{write_cache, PendingSave};
use crate::arena::{self, MappedRecords, BLOCK};
use crate::error::{Error, Result};
use crate::index::{words_for_bits, CodeIndex, FREE, MAX_ENTRIES};
use crate::mapped::{Column, MappedBytes};
use crate::partition::Partitions;

/// XXH3-64 of the header without its checksum field, followed by the section table.
pub fn header_checksum(head: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(&head[..120]);
    h.update(&head[HEADER_LEN..]);
    h.digest()
}

impl Opened {
    /// The section's bytes after checking their checksum.
    pub(super) fn checked(&self, tag: Tag) -> Result<&[u8]> {
        let bytes = self.bytes(tag);
        if xxh3_64(bytes) != self.sections[&tag].2 {
            return Err(self.corrupt(format!("section {} fails its checksum", tag_str(&tag))));
        }
        Ok(bytes)
    }

    /// A section as a column of values, mapped copy-on-write where possible, checksummed.
    pub(super) fn column<T: bytemuck::Pod>(&self, tag: Tag, decode: fn(&[u8]) -> T) -> Result<Column<T>> {
        let column = self.column_unchecked(tag, decode)?;
        self.check_sum(tag, &column)?;
        Ok(column)
    }

    pub(super) fn column_unchecked<T: bytemuck::Pod>(&self, tag: Tag, decode: fn(&[u8]) -> T) -> Result<Column<T>> {
        let (offset, len, _) = self.sections[&tag];
        Column::from_file(&self.handle, offset as u64, len, decode).map_err(|e| Error::io(Path::new(&*self.file), &e))
    }

    /// Checks a column loaded by [`Opened::column_unchecked`] against its section checksum.
    pub(super) fn check_sum<T: bytemuck::Pod>(&self, tag: Tag, column: &Column<T>) -> Result<()> {
        let bytes: &[u8] = match column {
            Column::Mapped { .. } => bytemuck::cast_slice(&column[..]),
            Column::Owned(_) => self.bytes(tag),
        };
        if xxh3_64(bytes) != self.sections[&tag].2 {
            return Err(self.corrupt(format!("section {} fails its checksum", tag_str(&tag))));
        }
        Ok(())
    }

    /// Checks the per-slot columns against each other and the responses section; returns the
    /// checked placement and the (still unread) responses.
    #[allow(clippy::type_complexity)]
    pub(super) fn check_slots(
        &self, index: &CodeIndex, payload_at: &[u32], placement: SavedPlacement,
    ) -> Result<((Column<u32>, Column<u32>, Partitions, u64), MappedRecords, usize)> {
        let slots = self.slots;
        let sums: Vec<u64> = self.checked(RSUM)?.chunks_exact(8).map(|w| le_u64(w, 0)).collect();
        let (resp_offset, resp_len, resp_sum) = self.sections[&RESP];
        let gens: &[u32] = &index.generation[..slots];
        // Every response offset belongs to a live slot, lies in the responses section, and is
        // above the previous live slot's (the writer packs them in slot order, so entries
        // never share a record). One branch-free pass, then a search for the culprit only if
        // something is wrong.
        let checker = || {
            let mut previous: i64 = -1;
            move |(&generation, &at): (&u32, &u32)| {
                let live = generation & FREE == 0;
                let has = at != arena::EMPTY;
                let order_ok = !has || i64::from(at) > previous;
                if live & has {
                    previous = i64::from(at);
                }
                has & (!live | !order_ok | ((at as u64) * arena::UNIT as u64 + 4 > resp_len as u64))
            }
        };
        let rows = || gens.iter().zip(payload_at);
        let mut bad = checker();
        if rows().fold(false, |any, row| any | bad(row)) {
            let slot = rows().position(checker()).expect("a bad slot");
            return Err(self.corrupt(format!(
                "slot {slot} has response offset {}, which does not fit a {} slot",
                payload_at[slot],
                if gens[slot] & FREE == 0 { "live" } else { "free" }
            )));
        }
        if self.response_bytes > resp_len as u64 {
            return Err(self.corrupt(format!(
                "the header counts {} bytes of responses in a {resp_len}-byte section",
                self.response_bytes
            )));
        }
        if resp_sum != self.sections[&RSUM].2 {
            return Err(self.corrupt("section RESP fails its checksum (that of its block checksums)"));
        }
        let placement = self.placement(index, placement)?;
        let bytes = self.map.slice(resp_offset, resp_len);
        Ok((placement, MappedRecords::new(bytes, sums, Arc::clone(&self.file)), resp_len))
    }
}

pub fn parse(handle: File, map: MappedBytes, name: String) -> Result<Opened> {
    let b = map.bytes();
    let truncated = |problem: String| Error::Truncated { file: name.clone(), problem };
    let corrupt = |problem: String| Error::Corrupt { file: name.clone(), problem };
    if b.is_empty() {
        return Err(Error::EmptyFile { file: name });
    }
    let n = b.len().min(MAGIC.len());
    if b[..n] != MAGIC[..n] {
        return Err(Error::NotACacheFile {
            file: name,
            problem: "the file does not start with the bsc magic bytes: it is not a bsc file".into(),
        });
    }
    if b.len() < 12 {
        return Err(truncated(format!("the file is {} bytes, shorter than a bsc header ({HEADER_LEN})", b.len())));
    }
    let version = le_u32(b, 8);
    if version > VERSION {
        return Err(Error::UnsupportedVersion {
            file: name,
            problem: format!("format version {version} was written by a newer bsc; this one reads versions up to {VERSION}: upgrade bsc-native"),
        });
    }
    if version == 0 {
        return Err(corrupt("format version 0 does not exist".into()));
    }
    if b.len() < HEADER_LEN {
        return Err(truncated(format!("the file is {} bytes, shorter than a bsc header ({HEADER_LEN})", b.len())));
    }
    let section_count = le_u32(b, 20) as usize;
    if section_count > MAX_SECTIONS {
        return Err(corrupt(format!("the header lists {section_count} sections (at most {MAX_SECTIONS})")));
    }
    let head_end = HEADER_LEN + section_count * ENTRY_LEN;
    if b.len() < head_end {
        return Err(truncated(format!("the file is {} bytes, shorter than its section table ({head_end})", b.len())));
    }
    if header_checksum(&b[..head_end]) != le_u64(b, 120) {
        return Err(corrupt("the header fails its checksum".into()));
    }
    let file_len = le_u64(b, 80);
    if (b.len() as u64) < file_len {
        return Err(truncated(format!("the file is {} bytes but was written as {file_len}", b.len())));
    }
    if (b.len() as u64) > file_len {
        return Err(corrupt(format!(
            "the file is {} bytes but was written as {file_len}: bytes were appended",
            b.len()
        )));
    }
    let kind = match le_u32(b, 12) {
        1 => Kind::Index,
        2 => Kind::Cache,
        other => {
            return Err(Error::UnsupportedVersion {
                file: name,
                problem: format!("object kind {other} is unknown to this bsc-native"),
            })
        }
    };
    let code_bits = le_u32(b, 16) as usize;
    // A cleared index keeps the generations of slots it no longer has (`handles` of them), so
    // their old ids stay dead.
    let words = words_for_bits(code_bits).map_err(|_| corrupt(format!("code_bits {code_bits} is not supported")))?;
    let (slots, live, max_entries) = (le_u64(b, 24), le_u64(b, 32), le_u64(b, 40));
    if slots > MAX_ENTRIES as u64 || live > slots {
        return Err(corrupt(format!("{live} entries in {slots} slots is impossible")));
    }
    let handles = le_u64(b, 88);
    if handles < slots || handles > MAX_ENTRIES as u64 {
        return Err(corrupt(format!("{handles} generations for {slots} slots is impossible")));
    }
    let (slots, live, handles) = (slots as usize, live as usize, handles as usize);
    if kind == Kind::Cache && (max_entries == 0 || max_entries > MAX_ENTRIES as u64 || live as u64 > max_entries) {
        return Err(corrupt(format!("{live} entries with max_entries {max_entries} is impossible")));
    }
    let counters = Counters { hits: le_u64(b, 48), misses: le_u64(b, 56), evictions: le_u64(b, 64) };
    let response_bytes = le_u64(b, 72);
    let expirations = le_u64(b, EXPIRATIONS_AT);
    let mut sections = HashMap::new();
    let mut ranges = Vec::new();
    for i in 0..section_count {
        let at = HEADER_LEN + i * ENTRY_LEN;
        let tag: Tag = b[at..at + 4].try_into().expect("4 bytes");
        let (flags, offset, len, checksum) =
            (le_u32(b, at + 4), le_u64(b, at + 8), le_u64(b, at + 16), le_u64(b, at + 24));
        if offset % ALIGN != 0 || offset < head_end as u64 || offset.checked_add(len).is_none_or(|end| end > file_len) {
            return Err(corrupt(format!("section {} lies outside the file", tag_str(&tag))));
        }
        ranges.push((offset, offset + len));
        let known = match (kind, version) {
            (Kind::Index, _) => INDEX_SECTIONS.contains(&tag),
            (Kind::Cache, 1) => CACHE_SECTIONS_V1.contains(&tag),
            (Kind::Cache, _) => CACHE_SECTIONS.contains(&tag),
        };
        if !known {
            if flags & REQUIRED != 0 {
                return Err(Error::UnsupportedVersion {
                    file: name,
                    problem: format!(
                        "the file needs section {}, which this bsc-native does not know: upgrade it",
                        tag_str(&tag)
                    ),
                });
            }
            continue;
        }
        if sections.insert(tag, (offset as usize, len as usize, checksum)).is_some() {
            return Err(corrupt(format!("section {} appears twice", tag_str(&tag))));
        }
    }
    ranges.sort_unstable();
    if ranges.windows(2).any(|w| w[0].1 > w[1].0) {
        return Err(corrupt("two sections overlap".into()));
    }
    // Every byte outside the header, the table and the sections is alignment padding: fewer
    // than 64 zeros before each section. So a flipped bit anywhere is caught.
    let mut gap_start = head_end as u64;
    for &(start, end) in ranges.iter().chain([(file_len, file_len)].iter()) {
        let gap = &b[gap_start as usize..start as usize];
        if gap.len() as u64 >= ALIGN || gap.iter().any(|&x| x != 0) {
            return Err(corrupt(format!("unexpected bytes between sections at offset {gap_start}")));
        }
        gap_start = end;
    }
    let expected: &[Tag] = match (kind, version) {
        (Kind::Index, _) => &INDEX_SECTIONS,
        (Kind::Cache, 1) => &CACHE_SECTIONS_V1,
        (Kind::Cache, _) => &CACHE_SECTIONS,
    };
    // Lengths the counts imply, checked before anything is decoded (u128: no overflow).
    let (slots_w, live_w) = (slots as u128, live as u128);
    for tag in expected {
        let Some(&(_, len, _)) = sections.get(tag) else {
            if version == 1 && OPTIONAL.contains(tag) {
                continue;
            }
            return Err(corrupt(format!("section {} is missing", tag_str(tag))));
        };
        let want: Option<u128> = match *tag {
            CODE => Some(slots_w * words as u128 * 8),
            GENS => Some(handles as u128 * 4),
            LAST | CNTS | PAYL | SECS | RCNY => Some(slots_w * 4),
            // Version 2 leaves them empty while every entry has the default.
            PART | EXPR if version == 1 => Some(slots_w * 4),
            PART | EXPR => (len != 0 && len as u128 != slots_w * 4).then_some(u128::MAX),
            XKEY => (len != 0 && len as u128 != slots_w * 8).then_some(u128::MAX),
            // The clock, then (tick, second) pairs: at most one per tick.
            RMRK => (len < 4 || (len - 4) % 8 != 0 || (len - 4) / 8 > 1 << 24).then_some(u128::MAX),
            // (slot, count) pairs, at most one per live entry.
            RSPL => (len % 8 != 0 || len as u128 / 8 > live_w).then_some(u128::MAX),
            CRTD => Some(slots_w * 8),
            // Retired slots (index.rs) are free but not listed.
            FREE_SLOTS => (len % 4 != 0 || len as u128 > (slots_w - live_w) * 4).then_some(u128::MAX),
            LRUO => Some(live_w * 4),
            RSUM => Some((sections.get(&RESP).map_or(0, |r| r.1).div_ceil(BLOCK) * 8) as u128),
            RESP => (len % arena::UNIT != 0).then_some(u128::MAX),
            FPRT => (len > MAX_FINGERPRINT).then_some(u128::MAX),
            META => (len > MAX_META).then_some(u128::MAX),
            _ => None,
        };
        if let Some(want) = want {
            if want != len as u128 {
                return Err(corrupt(format!(
                    "section {} is {len} bytes, which does not fit {live} entries in {slots} slots",
                    tag_str(tag)
                )));
            }
        }
    }
    if sections.get(&RESP).is_some_and(|r| r.1 >= arena::MAX_BYTES) {
        return Err(corrupt("the responses section is larger than a store can address".into()));
    }
    Ok(Opened {
        file: Arc::from(name),
        handle,
        map,
        kind,
        version,
        code_bits,
        slots,
        live,
        max_entries: max_entries as usize,
        counters,
        expirations,
        response_bytes,
        sections,
    })
}

/// Recomputes every checksum of a (possibly mutated) file in place — the section checksums,
/// the response block checksums and the header's — so that a fuzzer's mutations reach the
/// validation behind them, as a crafted file would. Sections that lie outside the file are
/// left alone. For the fuzz target and the mutation test.
#[doc(hidden)]
pub fn reseal(b: &mut [u8]) {
    if b.len() < HEADER_LEN {
        return;
    }
    let count = (le_u32(b, 20) as usize).min(MAX_SECTIONS);
    let head_end = HEADER_LEN + count * ENTRY_LEN;
    if b.len() < head_end {
        return;
    }
    let range = |b: &[u8], i: usize| {
        let at = HEADER_LEN + i * ENTRY_LEN;
        let (offset, len) = (le_u64(b, at + 8), le_u64(b, at + 16));
        let end = offset.checked_add(len)?;
        (end <= b.len() as u64).then_some((at, offset as usize, end as usize))
    };
    let find = |b: &[u8], tag: Tag| (0..count).find(|&i| b[HEADER_LEN + i * ENTRY_LEN..][..4] == tag);
    // Block checksums of the responses first, then every section's checksum.
    if let (Some(resp), Some(rsum)) = (find(b, RESP), find(b, RSUM)) {
        if let (Some((_, rs, re)), Some((_, ss, se))) = (range(b, resp), range(b, rsum)) {
            let sums: Vec<u64> = b[rs..re].chunks(BLOCK).map(xxh3_64).collect();
            if sums.len() * 8 == se - ss {
                for (k, sum) in sums.iter().enumerate() {
                    b[ss + 8 * k..ss + 8 * k + 8].copy_from_slice(&sum.to_le_bytes());
                }
            }
        }
    }
    let mut rsum_checksum = None;
    for i in 0..count {
        if let Some((at, start, end)) = range(b, i) {
            let sum = xxh3_64(&b[start..end]);
            b[at + 24..at + 32].copy_from_slice(&sum.to_le_bytes());
            if b[at..at + 4] == RSUM {
                rsum_checksum = Some(sum);
            }
        }
    }
    if let (Some(sum), Some(resp)) = (rsum_checksum, find(b, RESP)) {
        let at = HEADER_LEN + resp * ENTRY_LEN;
        b[at + 24..at + 32].copy_from_slice(&sum.to_le_bytes());
    }
    let checksum = header_checksum(&b[..head_end]);
    b[120..128].copy_from_slice(&checksum.to_le_bytes());
}

/// Loads `path` as a cache and as an index and exercises whatever loads: every entry's peek
/// and touch, a search, a put, deletes and a save. Returns whether it loaded as a cache. For the
/// fuzz target and the mutation test: any panic here is a bug.
#[doc(hidden)]
pub fn fuzz_file(path: &Path) -> bool {
    let Ok(opened) = open(path) else {
        return false;
    };
    if let Ok(mut index) = opened.index() {
        let _ = index.search(&vec![7; index.words()], 3, u32::MAX);
        let _ = index.add(&vec![1; index.words()]);
    }
    let Ok(mut core) = opened.cache(false) else {
        return false;
    };
    let ids = core.lru_order();
    for &id in &ids {
        let _ = core.peek(id);
        let _ = core.touch(id, 5.0);
    }
    let query = vec![1; core.words()];
    let _ = core.search_in(&query, 3, u32::MAX, None, 5.0);
    let _ = core.put(&query, b"new", 6.0);
    for &id in ids.iter().step_by(2) {
        core.delete(id);
    }
    let again = path.with_extension("again");
    if let Ok(pending) = PendingSave::begin(&again) {
        let _ = write_cache(&again, pending.file(), &core, &Extras::default());
    }
    true
}

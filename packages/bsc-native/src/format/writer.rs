//! Writing a file: sections one after the other, each padded and checksummed, then the header
//! and section table; [`PendingSave`] writes to a temporary file and renames it into place.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;
use xxhash_rust::xxh3::Xxh3;

use super::layout::*;
use super::verify::header_checksum;
use crate::arena::{self, BLOCK};
use crate::cache::{CacheCore, NEVER};
use crate::error::{Error, Result};
use crate::index::{CodeIndex, FREE};
use crate::partition;

#[derive(Clone, Copy, Debug)]
struct Section {
    tag: Tag,
    flags: u32,
    offset: u64,
    len: u64,
    checksum: u64,
}

/// Writes sections one after the other, each padded to [`ALIGN`] and checksummed.
struct Out<'a> {
    file: &'a Path,
    w: BufWriter<&'a File>,
    pos: u64,
    hasher: Xxh3,
    start: u64,
    sections: Vec<Section>,
    expirations: u64,
}

impl<'a> Out<'a> {
    fn new(file_path: &'a Path, file: &'a File, section_count: usize) -> Result<Self> {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let first = ((HEADER_LEN + section_count * ENTRY_LEN) as u64).div_ceil(ALIGN) * ALIGN;
        // The header and table are written last, once the checksums are known; zeros hold
        // their place (so even a file of empty sections is as long as its header says).
        w.write_all(&vec![0u8; first as usize]).map_err(|e| Error::io(file_path, &e))?;
        Ok(Self {
            file: file_path,
            w,
            pos: first,
            hasher: Xxh3::new(),
            start: first,
            sections: Vec::with_capacity(section_count),
            expirations: 0,
        })
    }

    fn io(&self, err: std::io::Error) -> Error {
        Error::io(self.file, &err)
    }

    fn begin(&mut self) -> Result<()> {
        let padded = self.pos.div_ceil(ALIGN) * ALIGN;
        let zeros = [0u8; ALIGN as usize];
        self.w.write_all(&zeros[..(padded - self.pos) as usize]).map_err(|e| Error::io(self.file, &e))?;
        self.pos = padded;
        self.start = padded;
        self.hasher.reset();
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.w.write_all(bytes).map_err(|e| Error::io(self.file, &e))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Writes bytes the section checksum does not cover (the caller sets it).
    fn put_unhashed(&mut self, bytes: &[u8]) -> Result<()> {
        self.w.write_all(bytes).map_err(|e| Error::io(self.file, &e))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn put_u32s(&mut self, values: &[u32]) -> Result<()> {
        if cfg!(target_endian = "little") {
            self.put(bytemuck::cast_slice(values))
        } else {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.put(&bytes)
        }
    }

    fn put_u64s(&mut self, values: &[u64]) -> Result<()> {
        if cfg!(target_endian = "little") {
            self.put(bytemuck::cast_slice(values))
        } else {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.put(&bytes)
        }
    }

    fn end(&mut self, tag: Tag) {
        self.sections.push(Section {
            tag,
            flags: REQUIRED,
            offset: self.start,
            len: self.pos - self.start,
            checksum: self.hasher.digest(),
        });
    }

    fn section(&mut self, tag: Tag, bytes: &[u8]) -> Result<()> {
        self.begin()?;
        self.put(bytes)?;
        self.end(tag);
        Ok(())
    }

    /// Writes the header and table at the start and flushes.
    fn finish(
        mut self, kind: Kind, index: &CodeIndex, max_entries: u64, extras: &Extras, response_bytes: u64,
    ) -> Result<()> {
        let code_bits = index.code_bits();
        let counts = [index.slots() as u64, index.len() as u64, max_entries];
        let index_handles = index.generation.len() as u64;
        let file_len = self.pos;
        let mut head = vec![0u8; HEADER_LEN + self.sections.len() * ENTRY_LEN];
        head[0..8].copy_from_slice(&MAGIC);
        let version = match kind {
            Kind::Index => INDEX_VERSION,
            Kind::Cache => VERSION,
        };
        head[8..12].copy_from_slice(&version.to_le_bytes());
        head[12..16].copy_from_slice(&(kind as u32).to_le_bytes());
        head[16..20].copy_from_slice(&(code_bits as u32).to_le_bytes());
        head[20..24].copy_from_slice(&(self.sections.len() as u32).to_le_bytes());
        let fields = [
            counts[0],
            counts[1],
            counts[2],
            extras.counters.hits,
            extras.counters.misses,
            extras.counters.evictions,
            response_bytes,
            file_len,
            index_handles,
        ];
        for (i, value) in fields.iter().enumerate() {
            head[24 + 8 * i..32 + 8 * i].copy_from_slice(&value.to_le_bytes());
        }
        for (i, s) in self.sections.iter().enumerate() {
            let at = HEADER_LEN + i * ENTRY_LEN;
            head[at..at + 4].copy_from_slice(&s.tag);
            head[at + 4..at + 8].copy_from_slice(&s.flags.to_le_bytes());
            head[at + 8..at + 16].copy_from_slice(&s.offset.to_le_bytes());
            head[at + 16..at + 24].copy_from_slice(&s.len.to_le_bytes());
            head[at + 24..at + 32].copy_from_slice(&s.checksum.to_le_bytes());
        }
        head[EXPIRATIONS_AT..EXPIRATIONS_AT + 8].copy_from_slice(&self.expirations.to_le_bytes());
        let checksum = header_checksum(&head);
        head[120..128].copy_from_slice(&checksum.to_le_bytes());
        self.w.seek(SeekFrom::Start(0)).map_err(|e| self.io(e))?;
        self.w.write_all(&head).map_err(|e| self.io(e))?;
        self.w.flush().map_err(|e| self.io(e))?;
        Ok(())
    }
}

fn check_extras(extras: &Extras) -> Result<()> {
    if extras.fingerprint.len() > MAX_FINGERPRINT {
        return Err(Error::TooLong {
            what: "the encoder fingerprint",
            len: extras.fingerprint.len(),
            limit: MAX_FINGERPRINT,
        });
    }
    if extras.meta.len() > MAX_META {
        return Err(Error::TooLong { what: "the metadata", len: extras.meta.len(), limit: MAX_META });
    }
    Ok(())
}

fn write_index_sections(out: &mut Out<'_>, index: &CodeIndex, extras: &Extras) -> Result<()> {
    out.section(META, &extras.meta)?;
    out.section(FPRT, extras.fingerprint.as_bytes())?;
    out.begin()?;
    out.put_u64s(&index.codes)?;
    out.end(CODE);
    out.begin()?;
    out.put_u32s(&index.generation)?;
    out.end(GENS);
    out.begin()?;
    out.put_u32s(&index.free_slots)?;
    out.end(FREE_SLOTS);
    Ok(())
}

/// Writes a bare index to `file` (an open, empty file; `path` names it in errors).
pub fn write_index(path: &Path, file: &File, index: &CodeIndex, extras: &Extras) -> Result<()> {
    check_extras(extras)?;
    let mut out = Out::new(path, file, INDEX_SECTIONS.len())?;
    write_index_sections(&mut out, index, extras)?;
    out.finish(Kind::Index, index, 0, extras, 0)
}

/// Writes a cache to `file`. The responses are written compacted (live ones only, in slot
/// order); a response of a loaded file that fails its checksum fails the save.
pub fn write_cache(path: &Path, file: &File, core: &CacheCore, extras: &Extras) -> Result<()> {
    check_extras(extras)?;
    let index = &core.index;
    let slots = index.slots();
    let mut out = Out::new(path, file, CACHE_SECTIONS.len())?;
    write_index_sections(&mut out, index, extras)?;
    // The engine's own columns: creation seconds and recency words, read back in place.
    out.section_u32s(SECS, &core.created[..slots])?;
    let (words, clock, marks, spilled) = core.recency().saved(slots);
    out.section_u32s(RCNY, &words)?;
    let mut clock_and_marks = vec![clock];
    clock_and_marks.extend(marks.iter().flat_map(|&(tick, second)| [tick, second]));
    out.section_u32s(RMRK, &clock_and_marks)?;
    let spilled: Vec<u32> = spilled.iter().flat_map(|&(slot, count)| [slot, count]).collect();
    out.section_u32s(RSPL, &spilled)?;
    // New offsets: the live responses packed in slot order.
    let mut offsets = vec![arena::EMPTY; slots];
    let mut cursor = 0usize;
    for (slot, new_at) in offsets.iter_mut().enumerate() {
        let at = core.payload_at[slot];
        if index.generation[slot] & FREE == 0 && at != arena::EMPTY {
            *new_at = (cursor / arena::UNIT) as u32;
            cursor += core.arena.record_bytes(at);
            // Live records never overlap, so they fit in the arena; a loaded file whose entries
            // share or overlap records would write more (and could multiply it).
            if cursor > core.arena.total_bytes() || cursor >= arena::MAX_BYTES {
                return Err(Error::Corrupt {
                    file: path.display().to_string(),
                    problem: "the responses share or overlap records".into(),
                });
            }
        }
    }
    out.section_u32s(PAYL, &offsets)?;
    // Empty while every entry has the default namespace, or no TTL.
    let filled = |column: &[u32], fill: u32| {
        if column.is_empty() {
            return Vec::new();
        }
        let mut values = column[..column.len().min(slots)].to_vec();
        values.resize(slots, fill);
        values
    };
    out.section_u32s(PART, &filled(&core.partition, partition::DEFAULT))?;
    out.section_u32s(EXPR, &filled(&core.expires, NEVER))?;
    let mut names = Vec::new();
    for name in core.partitions.names() {
        match name {
            Some(name) => {
                names.extend_from_slice(&(name.len() as u32).to_le_bytes());
                names.extend_from_slice(name);
            }
            None => names.extend_from_slice(&u32::MAX.to_le_bytes()),
        }
    }
    out.section(PKEY, &names)?;
    // Exact-match keys: empty when no entry has one.
    out.begin()?;
    if !core.keys.is_empty() {
        let keys: &[u64] = &core.keys;
        let mut padded = keys[..keys.len().min(slots)].to_vec();
        padded.resize(slots, 0);
        out.put_u64s(&padded)?;
    }
    out.end(XKEY);
    out.expirations = core.expirations;
    // The responses, hashed whole and in blocks.
    out.begin()?;
    let mut sums = Vec::with_capacity(cursor.div_ceil(BLOCK));
    let mut block = Xxh3::new();
    let mut in_block = 0usize;
    let zeros = [0u8; arena::UNIT];
    for (&new_at, &at) in offsets.iter().zip(core.payload_at.iter()) {
        if new_at == arena::EMPTY {
            continue;
        }
        let payload = core.arena.get(at)?;
        let len = (payload.len() as u32).to_le_bytes();
        let pad = &zeros[..arena::record_len(payload.len()) - 4 - payload.len()];
        for mut piece in [&len[..], payload, pad] {
            out.put_unhashed(piece)?;
            while !piece.is_empty() {
                let take = piece.len().min(BLOCK - in_block);
                block.update(&piece[..take]);
                in_block += take;
                piece = &piece[take..];
                if in_block == BLOCK {
                    sums.push(block.digest());
                    block.reset();
                    in_block = 0;
                }
            }
        }
    }
    if in_block > 0 {
        sums.push(block.digest());
    }
    let written = (out.pos - out.start) as usize;
    if written != cursor {
        // The lengths read while planning disagree with the records read while writing.
        return Err(Error::Corrupt {
            file: path.display().to_string(),
            problem: "a response changed size while being saved".into(),
        });
    }
    out.end(RESP);
    out.begin()?;
    out.put_u64s(&sums)?;
    out.end(RSUM);
    // The responses' checksum is that of their block checksums (a hash list): one pass over
    // the bytes serves both, and a check of every block against RSUM checks the section.
    let rsum = *out.sections.last().expect("RSUM");
    out.sections.iter_mut().find(|s| s.tag == RESP).expect("RESP").checksum = rsum.checksum;
    out.finish(Kind::Cache, index, core.max_entries() as u64, extras, core.response_bytes() as u64)
}

impl Out<'_> {
    fn section_u32s(&mut self, tag: Tag, values: &[u32]) -> Result<()> {
        self.begin()?;
        self.put_u32s(values)?;
        self.end(tag);
        Ok(())
    }
}

/// A save in progress: the new contents go to a temporary file beside the target, which
/// [`PendingSave::commit`] makes durable and renames over it.
pub struct PendingSave {
    tmp: NamedTempFile,
    target: PathBuf,
}

impl PendingSave {
    /// Creates the temporary file in the target's directory (so the rename stays on one file
    /// system), named `.<name>.<random>.tmp`.
    pub fn begin(target: &Path) -> Result<Self> {
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target
            .file_name()
            .ok_or_else(|| Error::Io {
                file: target.display().to_string(),
                kind: std::io::ErrorKind::InvalidInput,
                message: "not a file name".into(),
            })?
            .to_string_lossy()
            .into_owned();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(|e| Error::io(&dir, &e))?;
        // A save keeps the permissions of the file it replaces; a new file keeps the temporary
        // file's owner-only mode (a cache holds users' prompts and answers).
        if let Ok(meta) = std::fs::metadata(target) {
            tmp.as_file().set_permissions(meta.permissions()).map_err(|e| Error::io(target, &e))?;
        }
        Ok(Self { tmp, target: target.to_path_buf() })
    }

    pub fn file(&self) -> &File {
        self.tmp.as_file()
    }

    pub fn path(&self) -> &Path {
        &self.target
    }

    /// fsyncs the new file, renames it over the target and fsyncs the directory, so after a
    /// crash the target is the old file or the new one, never a mix. On error the temporary
    /// file is removed and the target is untouched.
    pub fn commit(self) -> Result<()> {
        let target = self.target;
        self.tmp.as_file().sync_all().map_err(|e| Error::io(&target, &e))?;
        self.tmp.persist(&target).map_err(|e| Error::io(&target, &e.error))?;
        #[cfg(unix)]
        {
            let dir = match target.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, &e))?;
        }
        Ok(())
    }
}

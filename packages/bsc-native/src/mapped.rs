//! Read-only views into a memory-mapped file, shared by the structures loaded from it.

use std::fs::File;
use std::sync::Arc;

use bytemuck::Pod;
use memmap2::{Mmap, MmapMut, MmapOptions};

/// A byte range of a memory-mapped file. Cloning shares the mapping.
#[derive(Clone, Debug)]
pub struct MappedBytes {
    map: Arc<Mmap>,
    start: usize,
    len: usize,
}

impl MappedBytes {
    /// Maps all of `file` read-only.
    ///
    /// The mapping stays valid only while nobody truncates or rewrites the file in place (a
    /// read past a truncated end raises SIGBUS). bsc itself never does: a save writes a new
    /// file and renames it over the old one, which leaves the mapped inode untouched.
    pub fn map_file(file: &File) -> std::io::Result<Self> {
        // SAFETY: see above; the mapping is read-only and every read through it is bounds
        // checked against its length.
        let map = unsafe { Mmap::map(file)? };
        let len = map.len();
        Ok(Self { map: Arc::new(map), start: 0, len })
    }

    /// The sub-range `start..start + len` (the caller checked it lies within this range).
    pub fn slice(&self, start: usize, len: usize) -> Self {
        assert!(start.checked_add(len).is_some_and(|end| end <= self.len));
        Self { map: Arc::clone(&self.map), start: self.start + start, len }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A column of plain values: owned, or a private copy-on-write mapping of a loaded file's
/// section. Reading a mapped column reads the file's pages in place; writing one copies just the
/// page written (the file never changes); growing it copies it into a vector first.
#[derive(Debug)]
pub enum Column<T: Pod> {
    Owned(Vec<T>),
    Mapped { map: MmapMut, len: usize },
}

impl<T: Pod> Default for Column<T> {
    fn default() -> Self {
        Column::Owned(Vec::new())
    }
}

impl<T: Pod> Clone for Column<T> {
    fn clone(&self) -> Self {
        Column::Owned(self.to_vec())
    }
}

impl<T: Pod> From<Vec<T>> for Column<T> {
    fn from(v: Vec<T>) -> Self {
        Column::Owned(v)
    }
}

impl<T: Pod> Column<T> {
    /// The `len`-byte section at `offset` of `file` as a column of little-endian values: mapped
    /// when this machine is little-endian (and the section aligned), else decoded into a vector.
    pub fn from_file(file: &File, offset: u64, len: usize, decode: fn(&[u8]) -> T) -> std::io::Result<Self> {
        let size = std::mem::size_of::<T>();
        debug_assert_eq!(len % size, 0);
        if len > 0 && cfg!(target_endian = "little") && offset.is_multiple_of(std::mem::align_of::<T>() as u64) {
            // SAFETY: a private mapping: writes through it never reach the file, and bsc never
            // changes a saved file in place (saves write a new file and rename it). Another
            // process truncating the file under the mapping could raise SIGBUS, as with any
            // memory-mapped file.
            let map = unsafe { MmapOptions::new().offset(offset).len(len).map_copy(file)? };
            if bytemuck::try_cast_slice::<u8, T>(&map[..]).is_ok() {
                return Ok(Column::Mapped { map, len: len / size });
            }
        }
        let mut bytes = vec![0u8; len];
        read_exact_at(file, &mut bytes, offset)?;
        Ok(Column::Owned(bytes.chunks_exact(size).map(decode).collect()))
    }

    /// The values as an owned vector, copying them out of the mapping on first use.
    pub fn to_mut(&mut self) -> &mut Vec<T> {
        if let Column::Mapped { .. } = self {
            *self = Column::Owned(self.to_vec());
        }
        match self {
            Column::Owned(v) => v,
            Column::Mapped { .. } => unreachable!("converted above"),
        }
    }

    pub fn push(&mut self, value: T) {
        self.to_mut().push(value);
    }

    /// Heap bytes held (a mapping holds none until pages are written).
    pub fn heap_bytes(&self) -> usize {
        match self {
            Column::Owned(v) => v.capacity() * std::mem::size_of::<T>(),
            Column::Mapped { .. } => 0,
        }
    }

    pub fn mapped_bytes(&self) -> usize {
        match self {
            Column::Owned(_) => 0,
            Column::Mapped { len, .. } => len * std::mem::size_of::<T>(),
        }
    }
}

impl<T: Pod> std::ops::Deref for Column<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Column::Owned(v) => v,
            Column::Mapped { map, len } => &bytemuck::cast_slice(&map[..])[..*len],
        }
    }
}

impl<T: Pod> std::ops::DerefMut for Column<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            Column::Owned(v) => v,
            Column::Mapped { map, len } => &mut bytemuck::cast_slice_mut(&mut map[..])[..*len],
        }
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = file;
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

/// Slot-major codes.
pub type Codes = Column<u64>;

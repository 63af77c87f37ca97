//! The layout of a bsc file: its constants, section tags and header fields, and the
//! little-endian helpers every other part reads them with. docs/FORMAT.md is the specification.

/// The first 8 bytes of every bsc file (PNG-style: a non-ASCII byte, the name, and line
/// endings that a text-mode transfer would mangle).
pub const MAGIC: [u8; 8] = *b"\x89BSC\r\n\x1a\n";
/// The newest format version this code reads, and the one it writes caches in. Version 2
/// (issue 21) keeps a cache's creation times in whole seconds and its recency as the engine's
/// words; version 1 kept `f64` times, last uses in tenths, counts and the LRU order, and is
/// converted when read. A bare index is the same in both and is written as version 1.
pub const VERSION: u32 = 2;
/// The version bare index files are written in.
pub const INDEX_VERSION: u32 = 1;
pub const HEADER_LEN: usize = 128;
pub const ENTRY_LEN: usize = 32;
pub const MAX_SECTIONS: usize = 64;
pub const ALIGN: u64 = 64;
/// Section flag: a reader that does not know the section must refuse the file.
pub const REQUIRED: u32 = 1;
/// Longest encoder fingerprint and metadata blob a file may hold.
pub const MAX_FINGERPRINT: usize = 4096;
pub const MAX_META: usize = 1 << 24;

/// What a file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A bare `BinaryIndex`: codes and ids.
    Index = 1,
    /// A `CacheStore`: codes, ids, metadata, LRU order and responses.
    Cache = 2,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Index => "a bare index (bsc_native.BinaryIndex)",
            Kind::Cache => "a cache (bsc_native.CacheStore / bsc.BinarySemanticCache)",
        }
    }
}

pub type Tag = [u8; 4];
pub const META: Tag = *b"META";
pub const FPRT: Tag = *b"FPRT";
pub const CODE: Tag = *b"CODE";
pub const GENS: Tag = *b"GENS";
pub const FREE_SLOTS: Tag = *b"FREE";
pub const CRTD: Tag = *b"CRTD";
pub const LAST: Tag = *b"LAST";
pub const CNTS: Tag = *b"CNTS";
pub const PAYL: Tag = *b"PAYL";
pub const LRUO: Tag = *b"LRUO";
pub const RESP: Tag = *b"RESP";
pub const RSUM: Tag = *b"RSUM";
pub const PART: Tag = *b"PART";
pub const EXPR: Tag = *b"EXPR";
pub const PKEY: Tag = *b"PKEY";
pub const XKEY: Tag = *b"XKEY";
pub const SECS: Tag = *b"SECS";
pub const RCNY: Tag = *b"RCNY";
pub const RMRK: Tag = *b"RMRK";
pub const RSPL: Tag = *b"RSPL";
pub const INDEX_SECTIONS: [Tag; 5] = [META, FPRT, CODE, GENS, FREE_SLOTS];
/// A version-1 cache's sections.
pub const CACHE_SECTIONS_V1: [Tag; 16] =
    [META, FPRT, CODE, GENS, FREE_SLOTS, CRTD, LAST, CNTS, PAYL, LRUO, RESP, RSUM, PART, EXPR, PKEY, XKEY];
/// A version-2 cache's sections.
pub const CACHE_SECTIONS: [Tag; 16] =
    [META, FPRT, CODE, GENS, FREE_SLOTS, SECS, RCNY, RMRK, RSPL, PAYL, RESP, RSUM, PART, EXPR, PKEY, XKEY];
/// Cache sections a file written before they existed lacks: defaults apply (every entry in the
/// default partition, none with a TTL, none with an exact-match key).
pub const OPTIONAL: [Tag; 4] = [PART, EXPR, PKEY, XKEY];

/// The cache's counters, kept in the header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

/// What a file says about itself besides its entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extras {
    /// The encoder that made the codes (empty when unknown).
    pub fingerprint: String,
    /// Caller-defined bytes (bsc keeps its settings there as JSON).
    pub meta: Vec<u8>,
    pub counters: Counters,
}

/// Expirations, kept in the header (bytes 96..104) beside the counters.
pub const EXPIRATIONS_AT: usize = 96;

pub fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

pub fn u32s(b: &[u8]) -> Vec<u32> {
    match bytemuck::try_cast_slice::<u8, u32>(b) {
        Ok(words) if cfg!(target_endian = "little") => words.to_vec(),
        _ => b.chunks_exact(4).map(|w| u32::from_le_bytes(w.try_into().expect("4 bytes"))).collect(),
    }
}

pub fn tag_str(tag: &Tag) -> String {
    tag.iter().map(|&c| if c.is_ascii_graphic() { c as char } else { '?' }).collect()
}

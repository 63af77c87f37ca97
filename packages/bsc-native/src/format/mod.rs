//! The bsc file format, version 1: one file per index or cache. docs/FORMAT.md is the
//! specification; this module is its only reader and writer.
//!
//! A 128-byte header, a table of sections, then the sections, each starting on a 64-byte
//! boundary. All integers are little-endian. Every section has an XXH3-64 checksum in the
//! table; the header checksum covers the header and the table. The code array is one section
//! of `slots * code_bits / 64` words, so a loaded index searches it where it lies in the
//! mapped file. Responses are read in place too, each 64 KiB block checked on first use.
//!
//! Loading validates every count and offset against the file's length before it allocates
//! anything, so a lying length field cannot make it allocate more than the file holds, and
//! every per-entry reference (slot, response offset) is bounds checked: a malformed file gives
//! an [`Error`](crate::Error), never a panic, a hang or code execution.
//!
//! The module is split by job: `layout` holds the constants, section tags and header fields;
//! `writer` writes a file (and [`PendingSave`] makes it durable); `reader` decodes a file
//! into an index or a cache; `verify` holds every check a file must pass (the header and the
//! section table, the checksums, the per-slot columns) and the fuzzing helpers.

mod layout;
mod reader;
mod verify;
mod writer;

pub use layout::{Counters, Extras, Kind, HEADER_LEN, MAGIC, MAX_FINGERPRINT, MAX_META, VERSION};
pub use reader::{open, Opened};
pub use verify::{fuzz_file, reseal};
pub use writer::{write_cache, write_index, PendingSave};

#[cfg(test)]
mod tests;

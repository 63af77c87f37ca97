//! bsc-native: a binary-code index with Hamming search, the engine of bsc.
//!
//! Everything but `py` is plain Rust with no Python in it, tested with `cargo test`: the scan
//! (`scan`), the index (`index`), the cache (`cache`, with `recency`, `arena`, `partition`), the file
//! format (`format`, `mapped`) and the thread-safe objects the binding wraps (`store`, with the
//! LRU-touch queue in `touch`). The `python` feature adds the thin PyO3 layer (`py`) that maturin
//! builds into the `bsc_native._core` extension module.

pub mod arena;
pub mod cache;
pub mod error;
pub mod format;
pub mod index;
pub mod mapped;
pub mod mih;
pub mod partition;
pub mod project;
pub mod recency;
pub mod scan;
pub mod store;
pub mod touch;

#[cfg(feature = "python")]
mod py;

pub use cache::{CacheCore, EntryView};
pub use error::{Error, Result};
pub use index::{CodeIndex, Hit, Id};
pub use store::{SharedCache, SharedIndex, Stats};

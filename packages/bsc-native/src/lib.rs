//! bsc-native: a binary-code index with Hamming search, the engine of bsc.
//!
//! The modules `scan`, `index` and `cache` are plain Rust with no Python in them and are tested
//! with `cargo test`. The `python` feature adds the thin PyO3 layer that maturin builds into
//! the `bsc_native._core` extension module.

pub mod arena;
pub mod cache;
pub mod error;
pub mod format;
pub mod index;
pub mod lru;
pub mod mapped;
pub mod partition;
pub mod scan;

#[cfg(feature = "python")]
mod python;

pub use cache::{CacheCore, EntryView};
pub use error::{Error, Result};
pub use index::{CodeIndex, Hit, Id};

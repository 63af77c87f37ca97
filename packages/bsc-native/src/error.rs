//! Errors of the plain-Rust core. The binding layer maps each variant to a Python exception.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// `code_bits` is not a multiple of 64 in `64..=4096`.
    InvalidCodeBits(usize),
    /// A code or batch whose length is not a whole number of codes of this index.
    BadCodeLength { expected_words: usize, got_words: usize },
    /// Adding would exceed the number of entries an index can address.
    Full { len: usize, adding: usize, limit: usize },
    /// `max_entries` outside `1..=MAX_ENTRIES`.
    InvalidMaxEntries(usize),
    /// A response longer than 4 GiB - 1 bytes.
    ResponseTooLarge { len: usize },
    /// The responses of all entries would exceed the bytes the store can address.
    StorageFull { limit: usize },
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidCodeBits(bits) => {
                write!(
                    f,
                    "code_bits must be a multiple of 64 between 64 and 4096, got {bits}"
                )
            }
            Error::BadCodeLength {
                expected_words,
                got_words,
            } => write!(
                f,
                "expected codes of {expected_words} uint64 words ({} bits) each, got {got_words} words",
                expected_words * 64
            ),
            Error::Full { len, adding, limit } => {
                write!(
                    f,
                    "cannot add {adding} codes to an index of {len}: the limit is {limit} entries"
                )
            }
            Error::ResponseTooLarge { len } => {
                write!(f, "a response can hold at most {} bytes, got {len}", u32::MAX)
            }
            Error::StorageFull { limit } => {
                write!(
                    f,
                    "the stored responses would exceed {limit} bytes, the most one store can hold"
                )
            }
            Error::InvalidMaxEntries(n) => {
                write!(
                    f,
                    "max_entries must be between 1 and {}, got {n}",
                    crate::index::MAX_ENTRIES
                )
            }
        }
    }
}

impl std::error::Error for Error {}

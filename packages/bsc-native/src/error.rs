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
    /// A fingerprint or metadata blob too long to save.
    TooLong { what: &'static str, len: usize, limit: usize },
    /// An operating-system error on `file`.
    Io { file: String, kind: std::io::ErrorKind, message: String },
    /// A zero-length file.
    EmptyFile { file: String },
    /// A file that does not start with the bsc magic bytes, or holds another kind of object.
    NotACacheFile { file: String, problem: String },
    /// A file written by a later format version, or needing a feature this version lacks.
    UnsupportedVersion { file: String, problem: String },
    /// A file shorter than its header says.
    Truncated { file: String, problem: String },
    /// A checksum that does not match, or contents that contradict each other.
    Corrupt { file: String, problem: String },
    /// A file whose codes were made by another encoder than the caller's.
    EncoderMismatch { file: String, expected: String, found: String },
    /// An argument outside its range, with the message to show.
    InvalidArgument(String),
    /// A lock poisoned by a panic while it was held: the object's state may be half changed.
    Poisoned,
}

impl Error {
    pub fn io(file: &std::path::Path, err: &std::io::Error) -> Self {
        Error::Io { file: file.display().to_string(), kind: err.kind(), message: err.to_string() }
    }
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
            Error::TooLong { what, len, limit } => {
                write!(f, "{what} is {len} bytes long; the most a file can hold is {limit}")
            }
            Error::Io { file, message, .. } => write!(f, "{file}: {message}"),
            Error::EmptyFile { file } => write!(f, "{file}: the file is empty (0 bytes), not a bsc file"),
            Error::NotACacheFile { file, problem }
            | Error::UnsupportedVersion { file, problem }
            | Error::Truncated { file, problem }
            | Error::Corrupt { file, problem } => write!(f, "{file}: {problem}"),
            Error::EncoderMismatch {
                file,
                expected,
                found,
            } => write!(
                f,
                "{file}: its codes were made by encoder {found:?}, not {expected:?}; load it with that encoder (or none, to rebuild it from the file)"
            ),
            Error::InvalidArgument(message) => write!(f, "{message}"),
            Error::Poisoned => write!(
                f,
                "internal error: an earlier panic left this index unusable; create a new one"
            ),
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

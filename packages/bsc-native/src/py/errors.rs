//! The exception hierarchy under `BscError`, and the mapping from the core's [`Error`].

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;

use crate::error::Error;

/// Declares each exception class (`name: base, docstring`) and `register`, which adds them all
/// to the module in that order.
macro_rules! exceptions {
    ($($name:ident: $base:ident, $doc:literal;)*) => {
        $(create_exception!(bsc_native, $name, $base, $doc);)*

        /// Adds the exception classes to the module.
        pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
            $(m.add(stringify!($name), m.py().get_type::<$name>())?;)*
            Ok(())
        }
    };
}

exceptions! {
    BscError: PyException, "Base class of every error bsc raises on purpose.";
    IndexFullError: BscError, "An index cannot address more entries.";
    CacheFileError: BscError,
        "A file that cannot be loaded as a bsc index or cache. The message names the file.";
    EmptyFileError: CacheFileError, "A zero-length file.";
    NotACacheFileError: CacheFileError,
        "A file without the bsc magic bytes, or holding another kind of object.";
    UnsupportedVersionError: CacheFileError,
        "A file written by a newer format version than this bsc-native reads.";
    TruncatedFileError: CacheFileError,
        "A file shorter than its header says: cut off while copying, or a partial download.";
    CorruptFileError: CacheFileError, "A file whose checksums fail or whose contents contradict each other.";
    EncoderMismatchError: CacheFileError,
        "A file whose codes were made by another encoder than the one given.";
}

/// The Python exception for a core error: the message is the error's `Display`.
pub fn to_py(err: Error) -> PyErr {
    let message = err.to_string();
    match err {
        Error::Full { .. } | Error::StorageFull { .. } => IndexFullError::new_err(message),
        Error::InvalidCodeBits(_)
        | Error::BadCodeLength { .. }
        | Error::InvalidMaxEntries(_)
        | Error::ResponseTooLarge { .. }
        | Error::TooLong { .. }
        | Error::InvalidArgument(_) => PyValueError::new_err(message),
        Error::Io { kind, .. } => std::io::Error::new(kind, message).into(),
        Error::EmptyFile { .. } => EmptyFileError::new_err(message),
        Error::NotACacheFile { .. } => NotACacheFileError::new_err(message),
        Error::UnsupportedVersion { .. } => UnsupportedVersionError::new_err(message),
        Error::Truncated { .. } => TruncatedFileError::new_err(message),
        Error::Corrupt { .. } => CorruptFileError::new_err(message),
        Error::EncoderMismatch { .. } => EncoderMismatchError::new_err(message),
        Error::Poisoned => BscError::new_err(message),
    }
}

//! The PyO3 binding: argument checks and conversions, GIL release, error mapping.
//! Everything else lives in the plain-Rust modules.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
use std::time::{SystemTime, UNIX_EPOCH};

use numpy::{
    dtype, PyArray1, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyTuple};

use crate::cache::{touched, CacheCore, EntryView};
use crate::error::Error;
use crate::format::{self, Counters, Extras, Kind, PendingSave};
use crate::index::{CodeIndex, Hit, Id};

create_exception!(
    bsc_native,
    BscError,
    PyException,
    "Base class of every error bsc raises on purpose."
);
create_exception!(
    bsc_native,
    IndexFullError,
    BscError,
    "An index cannot address more entries."
);

create_exception!(
    bsc_native,
    CacheFileError,
    BscError,
    "A file that cannot be loaded as a bsc index or cache. The message names the file."
);
create_exception!(bsc_native, EmptyFileError, CacheFileError, "A zero-length file.");
create_exception!(
    bsc_native,
    NotACacheFileError,
    CacheFileError,
    "A file without the bsc magic bytes, or holding another kind of object."
);
create_exception!(
    bsc_native,
    UnsupportedVersionError,
    CacheFileError,
    "A file written by a newer format version than this bsc-native reads."
);
create_exception!(
    bsc_native,
    TruncatedFileError,
    CacheFileError,
    "A file shorter than its header says: cut off while copying, or a partial download."
);
create_exception!(
    bsc_native,
    CorruptFileError,
    CacheFileError,
    "A file whose checksums fail or whose contents contradict each other."
);
create_exception!(
    bsc_native,
    EncoderMismatchError,
    CacheFileError,
    "A file whose codes were made by another encoder than the one given."
);

fn to_py(err: Error) -> PyErr {
    let message = err.to_string();
    match err {
        Error::Full { .. } | Error::StorageFull { .. } => IndexFullError::new_err(message),
        Error::InvalidCodeBits(_)
        | Error::BadCodeLength { .. }
        | Error::InvalidMaxEntries(_)
        | Error::ResponseTooLarge { .. }
        | Error::TooLong { .. } => PyValueError::new_err(message),
        Error::Io { kind, .. } => std::io::Error::new(kind, message).into(),
        Error::EmptyFile { .. } => EmptyFileError::new_err(message),
        Error::NotACacheFile { .. } => NotACacheFileError::new_err(message),
        Error::UnsupportedVersion { .. } => UnsupportedVersionError::new_err(message),
        Error::Truncated { .. } => TruncatedFileError::new_err(message),
        Error::Corrupt { .. } => CorruptFileError::new_err(message),
        Error::EncoderMismatch { .. } => EncoderMismatchError::new_err(message),
    }
}

/// Opens `path` as a file of `kind`, checking the fingerprint when one is expected.
fn open_file(path: &Path, kind: Kind, fingerprint: Option<&str>) -> Result<(format::Opened, Extras), Error> {
    let opened = format::open(path)?;
    opened.expect(kind)?;
    if let Some(expected) = fingerprint {
        opened.expect_fingerprint(expected)?;
    }
    let extras = opened.extras()?;
    Ok((opened, extras))
}

/// Writes through a temporary file: the data under the read lock (`write`), then the fsyncs
/// and the rename after releasing it, so only the copy into the file cache holds the lock.
fn save_with<T>(
    path: &Path,
    save_lock: &Mutex<()>,
    lock: &RwLock<T>,
    write: impl FnOnce(&PendingSave, &T) -> Result<(), Error>,
) -> PyResult<()> {
    // One save at a time per object, so an older snapshot never renames over a newer one.
    let _one = save_lock.lock().unwrap_or_else(|e| e.into_inner());
    let pending = PendingSave::begin(path).map_err(to_py)?;
    write(&pending, &*read(lock)?).map_err(to_py)?;
    pending.commit().map_err(to_py)
}

fn poisoned() -> PyErr {
    BscError::new_err("internal error: an earlier panic left this index unusable; create a new one")
}

fn read<T>(lock: &RwLock<T>) -> PyResult<RwLockReadGuard<'_, T>> {
    lock.read().map_err(|_| poisoned())
}

fn write<T>(lock: &RwLock<T>) -> PyResult<RwLockWriteGuard<'_, T>> {
    lock.write().map_err(|_| poisoned())
}

/// Runs `f` under the read lock, detached from the interpreter.
fn with_read<T: Send + Sync, R: Send>(
    py: Python<'_>,
    lock: &RwLock<T>,
    f: impl FnOnce(&T) -> R + Send,
) -> PyResult<R> {
    py.detach(|| Ok(f(&*read(lock)?)))
}

/// Runs `f` under the write lock, detached from the interpreter.
fn with_write<T: Send + Sync, R: Send>(
    py: Python<'_>,
    lock: &RwLock<T>,
    f: impl FnOnce(&mut T) -> R + Send,
) -> PyResult<R> {
    py.detach(|| Ok(f(&mut *write(lock)?)))
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Copies a C-contiguous `uint64` array of shape `(n, words)` (or `(words,)`; only that when
/// `batch` is false), with errors that name what was expected.
///
/// The copy is taken while attached to the interpreter: once detached, another Python thread
/// may write to the array, and Rust must not be reading it then.
fn codes_arg(obj: &Bound<'_, PyAny>, name: &str, words: usize, batch: bool) -> PyResult<Vec<u64>> {
    let bits = words * 64;
    let expected = if batch {
        format!("(n, {words})")
    } else {
        format!("({words},)")
    };
    let Ok(array) = obj.cast::<PyUntypedArray>() else {
        return Err(PyTypeError::new_err(format!(
            "{name} must be a numpy.ndarray of dtype uint64 and shape {expected}, got {}",
            obj.get_type().name()?
        )));
    };
    let found = array.dtype();
    if !found.is_equiv_to(&dtype::<u64>(obj.py())) {
        return Err(PyTypeError::new_err(format!(
            "{name} must have dtype uint64 (native byte order), got dtype {found}"
        )));
    }
    let shape = array.shape();
    let shape_ok = match (batch, shape) {
        (true, [n, w]) => *n > 0 && *w == words,
        (true, [w]) | (false, [w]) => *w == words,
        _ => false,
    };
    if !shape_ok {
        let what = if batch && shape.first() == Some(&0) {
            "a non-empty batch of shape"
        } else {
            "shape"
        };
        return Err(PyValueError::new_err(format!(
            "{name} must have {what} {expected} for code_bits={bits}, got shape {}",
            shape_str(shape)
        )));
    }
    if !array.is_c_contiguous() {
        return Err(PyTypeError::new_err(format!(
            "{name} must be C-contiguous; pass numpy.ascontiguousarray({name})"
        )));
    }
    let typed = array.cast::<PyArrayDyn<u64>>()?;
    let borrowed = typed
        .try_readonly()
        .map_err(|e| PyValueError::new_err(format!("{name} cannot be read: {e}")))?;
    Ok(borrowed.as_slice()?.to_vec())
}

/// A shape as Python prints it: `(3, 4)`, `(4,)`.
fn shape_str(shape: &[usize]) -> String {
    match shape {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// An integer argument: a non-integer is a `TypeError`; an integer beyond 64 bits is `None`.
fn int_arg(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Option<i64>> {
    if obj.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!("{name} must be an int, got bool")));
    }
    match obj.extract::<i64>() {
        Ok(value) => Ok(Some(value)),
        Err(err) if err.is_instance_of::<PyOverflowError>(obj.py()) => Ok(None),
        Err(_) => Err(PyTypeError::new_err(format!(
            "{name} must be an int, got {}",
            obj.get_type().name()?
        ))),
    }
}

/// An integer argument within `min..=max`, or a `ValueError` that names it.
fn bounded_arg(obj: &Bound<'_, PyAny>, name: &str, min: i64, max: i64) -> PyResult<i64> {
    match int_arg(obj, name)? {
        Some(value) if (min..=max).contains(&value) => Ok(value),
        _ => Err(PyValueError::new_err(format!(
            "{name} must be between {min} and {max}, got {obj}"
        ))),
    }
}

fn max_entries_arg(max_entries: Option<&Bound<'_, PyAny>>) -> PyResult<Option<usize>> {
    let limit = crate::index::MAX_ENTRIES as i64;
    max_entries
        .map(|m| bounded_arg(m, "max_entries", 1, limit).map(|m| m as usize))
        .transpose()
}

/// A namespace: `str` (UTF-8) or `bytes`, at most 1024 bytes; `None` is the unnamed one.
fn namespace_arg(namespace: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<u8>> {
    let Some(obj) = namespace else {
        return Ok(Vec::new());
    };
    let name = if let Ok(text) = obj.cast::<pyo3::types::PyString>() {
        text.to_str()?.as_bytes().to_vec()
    } else if let Ok(bytes) = obj.cast::<PyBytes>() {
        bytes.as_bytes().to_vec()
    } else {
        return Err(PyTypeError::new_err(format!(
            "namespace must be str or bytes, got {}",
            obj.get_type().name()?
        )));
    };
    if name.len() > crate::partition::MAX_NAME {
        return Err(PyValueError::new_err(format!(
            "namespace is {} bytes long; at most {} are allowed",
            name.len(),
            crate::partition::MAX_NAME
        )));
    }
    Ok(name)
}

/// A time to live in seconds: a positive finite number, or `None` for none.
fn ttl_arg(ttl: Option<&Bound<'_, PyAny>>) -> PyResult<u32> {
    let Some(obj) = ttl else {
        return Ok(crate::cache::NEVER);
    };
    if obj.is_none() {
        return Ok(crate::cache::NEVER);
    }
    if obj.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err("ttl must be a number of seconds, got bool"));
    }
    let Ok(seconds) = obj.extract::<f64>() else {
        return Err(PyTypeError::new_err(format!(
            "ttl must be a number of seconds, got {}",
            obj.get_type().name()?
        )));
    };
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(PyValueError::new_err(format!(
            "ttl must be a positive number of seconds, got {seconds}"
        )));
    }
    Ok(crate::cache::ttl_tenths(seconds))
}

/// An exact-match key: an int in [0, 2**64) (0 and `None`: no key).
fn key_arg(key: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
    let Some(key) = key.filter(|k| !k.is_none()) else {
        return Ok(0);
    };
    if key.is_instance_of::<PyBool>() || !key.is_instance_of::<pyo3::types::PyInt>() {
        return Err(PyTypeError::new_err(format!(
            "key must be an int, got {}",
            key.get_type().name()?
        )));
    }
    key.extract::<u64>()
        .map_err(|_| PyValueError::new_err(format!("key must be in [0, 2**64), got {key}")))
}

fn k_arg(k: Option<&Bound<'_, PyAny>>) -> PyResult<usize> {
    k.map_or(Ok(1), |k| bounded_arg(k, "k", 1, i64::MAX).map(|k| k as usize))
}

/// `max_distance`, `None` meaning unbounded; values above `code_bits` are clamped.
fn radius_arg(max_distance: Option<&Bound<'_, PyAny>>, code_bits: usize) -> PyResult<u32> {
    match max_distance {
        None => Ok(u32::MAX),
        Some(d) => bounded_arg(d, "max_distance", 0, i64::MAX).map(|d| d.min(code_bits as i64) as u32),
    }
}

/// An id argument; integers that cannot be ids (negative, beyond 64 bits) are `None`.
fn id_arg(id: &Bound<'_, PyAny>) -> PyResult<Option<Id>> {
    Ok(int_arg(id, "id")?.and_then(|id| u64::try_from(id).ok()))
}

/// `code_bits`, checked as the core checks it, with the same message for any bad integer.
fn code_bits_arg(code_bits: &Bound<'_, PyAny>) -> PyResult<usize> {
    let bits = int_arg(code_bits, "code_bits")?.and_then(|b| usize::try_from(b).ok());
    match bits {
        Some(bits) if crate::index::words_for_bits(bits).is_ok() => Ok(bits),
        _ => Err(PyValueError::new_err(format!(
            "code_bits must be a multiple of 64 between 64 and 4096, got {code_bits}"
        ))),
    }
}

fn ids_array(py: Python<'_>, ids: Vec<Id>) -> Bound<'_, PyArray1<i64>> {
    PyArray1::from_vec(py, ids.into_iter().map(|id| id as i64).collect())
}

/// Search results as `(ids int64, distances int32)` arrays.
fn hits_tuple<'py>(py: Python<'py>, hits: &[Hit]) -> PyResult<Bound<'py, PyTuple>> {
    let ids: Vec<i64> = hits.iter().map(|h| h.id as i64).collect();
    let distances: Vec<i32> = hits.iter().map(|h| h.distance as i32).collect();
    PyTuple::new(
        py,
        [
            PyArray1::from_vec(py, ids).into_any(),
            PyArray1::from_vec(py, distances).into_any(),
        ],
    )
}

// Every method converts its arguments while attached, then detaches (`py.detach`) before it
// takes a lock, and builds Python objects only after the lock is released: a thread holding
// the GIL never waits for a lock, and no Python code (a finalizer run by the garbage collector
// while building a result) can run while this thread holds one.

/// A binary-code index: add codes, remove them by id, search by Hamming distance.
#[pyclass(frozen, name = "BinaryIndex", module = "bsc_native")]
pub struct PyBinaryIndex {
    inner: RwLock<CodeIndex>,
    code_bits: usize,
    fingerprint: String,
    meta: Vec<u8>,
    save_lock: Mutex<()>,
}

fn fingerprint_arg(fingerprint: Option<String>) -> PyResult<String> {
    let fingerprint = fingerprint.unwrap_or_default();
    if fingerprint.len() > format::MAX_FINGERPRINT {
        return Err(PyValueError::new_err(format!(
            "fingerprint is {} bytes long; at most {} fit in a file",
            fingerprint.len(),
            format::MAX_FINGERPRINT
        )));
    }
    Ok(fingerprint)
}

#[pymethods]
impl PyBinaryIndex {
    #[new]
    #[pyo3(signature = (code_bits = None, *, fingerprint = None))]
    fn new(code_bits: Option<&Bound<'_, PyAny>>, fingerprint: Option<String>) -> PyResult<Self> {
        let code_bits = code_bits.map_or(Ok(256), code_bits_arg)?;
        let index = CodeIndex::new(code_bits).map_err(to_py)?;
        Ok(Self {
            inner: RwLock::new(index),
            code_bits,
            fingerprint: fingerprint_arg(fingerprint)?,
            meta: Vec::new(),
            save_lock: Mutex::new(()),
        })
    }

    #[getter]
    fn code_bits(&self) -> usize {
        self.code_bits
    }

    /// The encoder that made the codes, as given or as loaded ("" when unknown).
    #[getter]
    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The metadata bytes of the file this index was loaded from (b"" otherwise).
    #[getter]
    fn meta<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.meta)
    }

    /// Saves to `path` crash-safely (a temporary file in the same directory, fsynced, renamed
    /// over `path`, directory fsynced), with `meta` bytes of the caller's. Searches proceed
    /// while it runs; changes wait until the data is written (the fsync runs after).
    #[pyo3(signature = (path, meta = None))]
    fn save(&self, py: Python<'_>, path: PathBuf, meta: Option<Vec<u8>>) -> PyResult<()> {
        let extras = Extras {
            fingerprint: self.fingerprint.clone(),
            meta: meta.unwrap_or_default(),
            counters: Counters::default(),
        };
        py.detach(|| {
            save_with(&path, &self.save_lock, &self.inner, |pending, index| {
                format::write_index(pending.path(), pending.file(), index, &extras)
            })
        })
    }

    /// Loads an index saved by `save`. Its codes stay in the memory-mapped file (searched in
    /// place) until the first change copies them. With `fingerprint`, a file made by another
    /// encoder raises `EncoderMismatchError`.
    #[staticmethod]
    #[pyo3(signature = (path, *, fingerprint = None))]
    fn load(py: Python<'_>, path: PathBuf, fingerprint: Option<String>) -> PyResult<Self> {
        let (index, extras) = py
            .detach(|| {
                let (opened, extras) = open_file(&path, Kind::Index, fingerprint.as_deref())?;
                Ok((opened.index()?, extras))
            })
            .map_err(to_py)?;
        Ok(Self {
            code_bits: index.code_bits(),
            inner: RwLock::new(index),
            fingerprint: extras.fingerprint,
            meta: extras.meta,
            save_lock: Mutex::new(()),
        })
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        with_read(py, &self.inner, |index| index.len())
    }

    fn __contains__(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<bool> {
        match id_arg(id)? {
            Some(id) => with_read(py, &self.inner, |index| index.contains(id)),
            None => Ok(false),
        }
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let len = self.__len__(py)?;
        Ok(format!("BinaryIndex(code_bits={}, len={len})", self.code_bits))
    }

    /// Adds codes of shape `(n, code_bits / 64)` (or one code of shape `(code_bits / 64,)`);
    /// returns their ids as an `int64` array.
    fn add<'py>(&self, py: Python<'py>, codes: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let codes = codes_arg(codes, "codes", self.code_bits / 64, true)?;
        let ids = with_write(py, &self.inner, |index| index.add(&codes))?.map_err(to_py)?;
        Ok(ids_array(py, ids))
    }

    /// Removes an entry; returns whether the id was present.
    fn remove(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<bool> {
        match id_arg(id)? {
            Some(id) => with_write(py, &self.inner, |index| index.remove(id).is_some()),
            None => Ok(false),
        }
    }

    /// Removes every entry; ids handed out before stay dead.
    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        with_write(py, &self.inner, |index| index.clear())
    }

    /// The stored code of an entry.
    fn get<'py>(
        &self,
        py: Python<'py>,
        id: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyArray1<u64>>>> {
        let Some(id) = id_arg(id)? else { return Ok(None) };
        let code = with_read(py, &self.inner, |index| index.code(id).map(<[u64]>::to_vec))?;
        Ok(code.map(|code| PyArray1::from_vec(py, code)))
    }

    /// Ids of all entries, in storage order.
    fn ids<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let ids = with_read(py, &self.inner, |index| index.ids())?;
        Ok(ids_array(py, ids))
    }

    /// The `k` nearest codes to `query`, optionally only those within `max_distance`.
    /// Returns `(ids, distances)`: `int64` and `int32` arrays, nearest first, ties to the lower slot
    /// (the low 32 bits of the id).
    #[pyo3(signature = (query, k = None, max_distance = None))]
    fn search<'py>(
        &self,
        py: Python<'py>,
        query: &Bound<'py, PyAny>,
        k: Option<&Bound<'py, PyAny>>,
        max_distance: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let k = k_arg(k)?;
        let query = codes_arg(query, "query", self.code_bits / 64, false)?;
        let max_distance = radius_arg(max_distance, self.code_bits)?;
        let hits =
            with_read(py, &self.inner, |index| index.search(&query, k, max_distance))?.map_err(to_py)?;
        hits_tuple(py, &hits)
    }

    /// `search` for each row of `queries` (shape `(m, code_bits / 64)`), on up to `threads`
    /// threads (`None`, or more than there are: every CPU this process may use). Returns
    /// `(ids, distances)` of shape `(m, w)`, where `w` is the longest result list (at least 1),
    /// padded with -1.
    #[pyo3(signature = (queries, k = None, max_distance = None, threads = None))]
    fn search_batch<'py>(
        &self,
        py: Python<'py>,
        queries: &Bound<'py, PyAny>,
        k: Option<&Bound<'py, PyAny>>,
        max_distance: Option<&Bound<'py, PyAny>>,
        threads: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let k = k_arg(k)?;
        let queries = codes_arg(queries, "queries", self.code_bits / 64, true)?;
        let max_distance = radius_arg(max_distance, self.code_bits)?;
        // More threads than CPUs are cut to the CPUs by the scan itself.
        let threads = match threads {
            None => usize::MAX,
            Some(t) => bounded_arg(t, "threads", 1, 1024)? as usize,
        };
        let found = with_read(py, &self.inner, |index| {
            index.search_batch(&queries, k, max_distance, threads)
        })?
        .map_err(to_py)?;
        let m = found.len();
        let width = found.iter().map(Vec::len).max().unwrap_or(0).max(k.min(1));
        let mut ids = vec![-1i64; m * width];
        let mut distances = vec![-1i32; m * width];
        for (j, hits) in found.iter().enumerate() {
            for (i, hit) in hits.iter().enumerate() {
                ids[j * width + i] = hit.id as i64;
                distances[j * width + i] = hit.distance as i32;
            }
        }
        let ids = PyArray1::from_vec(py, ids).reshape([m, width])?;
        let distances = PyArray1::from_vec(py, distances).reshape([m, width])?;
        PyTuple::new(py, [ids.into_any(), distances.into_any()])
    }

    /// Bytes held by the index's buffers on the heap.
    fn memory_bytes(&self, py: Python<'_>) -> PyResult<usize> {
        with_read(py, &self.inner, |index| index.memory_bytes())
    }

    /// Bytes of a loaded file searched in place (0 once the index has changed).
    fn mapped_bytes(&self, py: Python<'_>) -> PyResult<usize> {
        with_read(py, &self.inner, |index| index.mapped_bytes())
    }
}

/// A bounded store of codes with payload bytes, access metadata and LRU eviction: the engine
/// under `bsc.BinarySemanticCache`.
#[pyclass(frozen, name = "CacheStore", module = "bsc_native")]
pub struct PyCacheStore {
    inner: RwLock<CacheCore>,
    code_bits: usize,
    max_entries: usize,
    fingerprint: String,
    meta: Vec<u8>,
    save_lock: Mutex<()>,
    /// Hits whose LRU update found the write lock taken (by a save, or a writer); applied by
    /// the next holder of the write lock.
    pending: Mutex<Vec<(Id, f64)>>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

fn entry_tuple<'py>(
    py: Python<'py>,
    view: EntryView,
    distance: Option<u32>,
) -> PyResult<Bound<'py, PyTuple>> {
    (
        view.id as i64,
        distance,
        PyBytes::new(py, &view.payload),
        view.created_at,
        view.last_accessed,
        view.access_count,
    )
        .into_pyobject(py)
}

/// How a lookup finds the entry it serves: its id and distance, under the read lock.
type FindEntry<'a> = dyn Fn(&CacheCore) -> Result<Option<(Id, u32)>, Error> + Sync + 'a;

/// Queued LRU updates beyond this many are dropped (the entries' order then lags their use).
const MAX_PENDING: usize = 1 << 16;

impl PyCacheStore {
    fn apply_pending(&self, core: &mut CacheCore) {
        let uses = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if !uses.is_empty() {
            core.touch_many(&uses);
        }
    }

    /// A hit whose response fails its checksum: the entry is removed, so it is never tried
    /// again, and the error says so.
    fn drop_unreadable(&self, id: Id, err: Error) -> PyErr {
        let err = match err {
            Error::Corrupt { file, problem } => Error::Corrupt {
                file,
                problem: format!("{problem}; the entry that needed it was removed from the cache"),
            },
            other => other,
        };
        if let Ok(mut core) = write(&self.inner) {
            self.apply_pending(&mut core);
            core.delete(id);
        }
        to_py(err)
    }

    /// `lookup`, and with `nearest` the scan admits every distance so that the nearest
    /// entry's distance can be reported even when it misses.
    fn lookup_with<'py>(
        &self,
        py: Python<'py>,
        code: &Bound<'py, PyAny>,
        max_distance: Option<&Bound<'py, PyAny>>,
        namespace: Option<&Bound<'py, PyAny>>,
        nearest: bool,
    ) -> PyResult<(Option<Bound<'py, PyTuple>>, Option<u32>)> {
        let query = codes_arg(code, "code", self.code_bits / 64, false)?;
        let max_distance = radius_arg(max_distance, self.code_bits)?;
        let name = namespace_arg(namespace)?;
        let scan_radius = if nearest {
            self.code_bits as u32
        } else {
            max_distance
        };
        let best = AtomicU32::new(u32::MAX);
        let found = py.detach(|| {
            self.serve(&|core: &CacheCore| {
                let hit = core.nearest_in(&query, scan_radius, &name, now())?;
                best.store(hit.map_or(u32::MAX, |h| h.distance), Ordering::Relaxed);
                Ok(hit
                    .filter(|h| h.distance <= max_distance)
                    .map(|h| (h.id, h.distance)))
            })
        })?;
        let best = best.load(Ordering::Relaxed);
        Ok((self.count(py, found, true)?, (best != u32::MAX).then_some(best)))
    }

    /// Finds an entry with `find` under the read lock and serves it: copies it, marks it used
    /// and returns it with its distance. The scan and the copy run under the read lock, so
    /// lookups proceed in parallel with each other and with a save. The O(1) LRU update then
    /// takes the write lock if it is free; if it is not, the use is queued for the next holder
    /// rather than waiting. If the entry was deleted in between, `find` runs again; after
    /// three such races in a row the lookup reports a miss. Counts nothing.
    fn serve(&self, find: &FindEntry<'_>) -> PyResult<Option<(u32, EntryView)>> {
        for _ in 0..3 {
            let (id, distance, view) = {
                let core = read(&self.inner)?;
                let Some((id, distance)) = find(&core).map_err(to_py)? else {
                    return Ok(None);
                };
                (id, distance, core.peek(id))
            };
            let view = match view {
                Ok(view) => view,
                Err(err) => return Err(self.drop_unreadable(id, err)),
            };
            let Some(view) = view else { continue };
            let at = now();
            match self.inner.try_write() {
                Ok(mut core) => {
                    self.apply_pending(&mut core);
                    match core.touch(id, at) {
                        Ok(Some(view)) => return Ok(Some((distance, view))),
                        Ok(None) => {}
                        Err(err) => {
                            drop(core);
                            return Err(self.drop_unreadable(id, err));
                        }
                    }
                }
                Err(TryLockError::WouldBlock) => {
                    let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                    if pending.len() < MAX_PENDING {
                        pending.push((id, at));
                    }
                    return Ok(Some((distance, touched(view, at))));
                }
                Err(TryLockError::Poisoned(_)) => return Err(poisoned()),
            }
        }
        Ok(None)
    }

    /// Counts a hit or a miss and converts the result.
    fn count<'py>(
        &self,
        py: Python<'py>,
        found: Option<(u32, EntryView)>,
        count_miss: bool,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        match found {
            Some((distance, view)) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                entry_tuple(py, view, Some(distance)).map(Some)
            }
            None => {
                if count_miss {
                    self.misses.fetch_add(1, Ordering::Relaxed);
                }
                Ok(None)
            }
        }
    }

    /// Runs `f` under the write lock, detached, after applying queued LRU updates.
    fn with_core_mut<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut CacheCore) -> R + Send,
    ) -> PyResult<R> {
        py.detach(|| {
            let mut core = write(&self.inner)?;
            self.apply_pending(&mut core);
            Ok(f(&mut core))
        })
    }
}

#[pymethods]
impl PyCacheStore {
    #[new]
    #[pyo3(signature = (code_bits = None, max_entries = None, *, fingerprint = None))]
    fn new(
        code_bits: Option<&Bound<'_, PyAny>>,
        max_entries: Option<&Bound<'_, PyAny>>,
        fingerprint: Option<String>,
    ) -> PyResult<Self> {
        let code_bits = code_bits.map_or(Ok(256), code_bits_arg)?;
        let max_entries = max_entries_arg(max_entries)?.unwrap_or(1000);
        let core = CacheCore::new(code_bits, max_entries).map_err(to_py)?;
        Ok(Self {
            inner: RwLock::new(core),
            code_bits,
            max_entries,
            fingerprint: fingerprint_arg(fingerprint)?,
            meta: Vec::new(),
            save_lock: Mutex::new(()),
            pending: Mutex::new(Vec::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        })
    }

    /// The encoder that made the codes, as given or as loaded ("" when unknown).
    #[getter]
    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The metadata bytes of the file this store was loaded from (b"" otherwise).
    #[getter]
    fn meta<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.meta)
    }

    /// Saves every entry, response, timestamp, the LRU order and the counters to `path`
    /// crash-safely (a temporary file in the same directory, fsynced, renamed over `path`,
    /// directory fsynced), with `meta` bytes of the caller's. Lookups proceed while it runs (a
    /// hit's LRU update is queued until the lock is free); changes wait until the data is
    /// written (the fsync runs after).
    #[pyo3(signature = (path, meta = None))]
    fn save(&self, py: Python<'_>, path: PathBuf, meta: Option<Vec<u8>>) -> PyResult<()> {
        let meta = meta.unwrap_or_default();
        // Queued LRU updates go into the file.
        self.with_core_mut(py, |_| ())?;
        py.detach(|| {
            save_with(&path, &self.save_lock, &self.inner, |pending, core| {
                // Counters read under the lock, with the entries they describe.
                let extras = Extras {
                    fingerprint: self.fingerprint.clone(),
                    meta,
                    counters: Counters {
                        hits: self.hits.load(Ordering::Relaxed),
                        misses: self.misses.load(Ordering::Relaxed),
                        evictions: self.evictions.load(Ordering::Relaxed),
                    },
                };
                format::write_cache(pending.path(), pending.file(), core, &extras)
            })
        })
    }

    /// Loads a store saved by `save`. Codes stay in the memory-mapped file until the first
    /// change; responses are read from it on demand, each 64 KiB block checked against its
    /// checksum when first read (`verify=True` checks them all now). With `fingerprint`, a
    /// file made by another encoder raises `EncoderMismatchError`; with `max_entries`, the
    /// least recently used entries beyond it are evicted.
    #[staticmethod]
    #[pyo3(signature = (path, *, fingerprint = None, max_entries = None, verify = false))]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        fingerprint: Option<String>,
        max_entries: Option<&Bound<'_, PyAny>>,
        verify: bool,
    ) -> PyResult<Self> {
        let max_entries = max_entries_arg(max_entries)?;
        let (core, extras, evicted) = py
            .detach(|| {
                let (opened, extras) = open_file(&path, Kind::Cache, fingerprint.as_deref())?;
                let mut core = opened.cache(verify)?;
                let evicted = match max_entries {
                    Some(max) => core.set_max_entries(max)?.len() as u64,
                    None => 0,
                };
                Ok((core, extras, evicted))
            })
            .map_err(to_py)?;
        let counters = extras.counters;
        Ok(Self {
            code_bits: core.code_bits(),
            max_entries: core.max_entries(),
            inner: RwLock::new(core),
            fingerprint: extras.fingerprint,
            meta: extras.meta,
            save_lock: Mutex::new(()),
            pending: Mutex::new(Vec::new()),
            hits: AtomicU64::new(counters.hits),
            misses: AtomicU64::new(counters.misses),
            evictions: AtomicU64::new(counters.evictions.saturating_add(evicted)),
        })
    }

    #[getter]
    fn code_bits(&self) -> usize {
        self.code_bits
    }

    #[getter]
    fn max_entries(&self) -> usize {
        self.max_entries
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        with_read(py, &self.inner, |core| core.len())
    }

    fn __contains__(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<bool> {
        match id_arg(id)? {
            Some(id) => with_read(py, &self.inner, |core| core.contains(id)),
            None => Ok(false),
        }
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let len = self.__len__(py)?;
        Ok(format!(
            "CacheStore(code_bits={}, max_entries={}, len={len})",
            self.code_bits, self.max_entries
        ))
    }

    /// Stores one code with its payload in `namespace` (default: the unnamed one), expiring
    /// after `ttl` seconds (default: never). Expired entries are removed first, then
    /// least-recently-used ones when full. Returns the new id.
    #[pyo3(signature = (code, payload, *, namespace = None, ttl = None, key = None))]
    fn put(
        &self,
        py: Python<'_>,
        code: &Bound<'_, PyAny>,
        payload: &[u8],
        namespace: Option<&Bound<'_, PyAny>>,
        ttl: Option<&Bound<'_, PyAny>>,
        key: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<i64> {
        let code = codes_arg(code, "code", self.code_bits / 64, false)?;
        let name = namespace_arg(namespace)?;
        let expires = ttl_arg(ttl)?;
        let key = key_arg(key)?;
        // `payload` borrows an immutable `bytes` object, so reading it detached is sound.
        let (id, evicted) = self
            .with_core_mut(py, |core| core.put_in(&code, payload, now(), &name, expires, key))?
            .map_err(to_py)?;
        self.evictions.fetch_add(evicted.len() as u64, Ordering::Relaxed);
        Ok(id as i64)
    }

    /// Finds the nearest entry within `max_distance`, marks it used and returns
    /// `(id, distance, payload, created_at, last_accessed, access_count)`, or `None` on a miss.
    /// Counts a hit or a miss.
    #[pyo3(signature = (code, max_distance = None, *, namespace = None))]
    fn lookup<'py>(
        &self,
        py: Python<'py>,
        code: &Bound<'py, PyAny>,
        max_distance: Option<&Bound<'py, PyAny>>,
        namespace: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        Ok(self.lookup_with(py, code, max_distance, namespace, false)?.0)
    }

    /// Like `lookup`, and also returns the distance of the nearest entry of `namespace` even
    /// when it lies beyond `max_distance` (`None` when the namespace has no live entry):
    /// `(entry or None, nearest distance or None)`. The same single scan.
    #[pyo3(signature = (code, max_distance = None, *, namespace = None))]
    fn lookup_nearest<'py>(
        &self,
        py: Python<'py>,
        code: &Bound<'py, PyAny>,
        max_distance: Option<&Bound<'py, PyAny>>,
        namespace: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(Option<Bound<'py, PyTuple>>, Option<u32>)> {
        self.lookup_with(py, code, max_distance, namespace, true)
    }

    /// The live, unexpired entry of `namespace` stored with exact-match `key` (see `put`),
    /// marked used and returned like `lookup`'s (distance 0), or `None`. O(1). Counts a hit
    /// when found and nothing otherwise (a caller falls back to `lookup`, which counts).
    #[pyo3(signature = (key, *, namespace = None))]
    fn lookup_key<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        namespace: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let key = key_arg(Some(key))?;
        let name = namespace_arg(namespace)?;
        let found = py.detach(|| {
            self.serve(&|core: &CacheCore| Ok(core.find_key(key, &name, now()).map(|id| (id, 0))))
        })?;
        self.count(py, found, false)
    }

    /// Every namespace holding entries, with how many (expired entries not yet removed
    /// count): `{name: count}`, names as bytes.
    fn namespaces<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let sizes = with_read(py, &self.inner, |core| {
            core.partition_sizes()
                .into_iter()
                .map(|(name, n)| (name.to_vec(), n))
                .collect::<Vec<_>>()
        })?;
        let out = PyDict::new(py);
        for (name, n) in sizes {
            out.set_item(PyBytes::new(py, &name), n)?;
        }
        Ok(out)
    }

    /// The `k` nearest entries within `max_distance` as `(ids, distances)` arrays, without
    /// marking them used or counting hits.
    #[pyo3(signature = (code, k = None, max_distance = None, *, namespace = None))]
    fn search<'py>(
        &self,
        py: Python<'py>,
        code: &Bound<'py, PyAny>,
        k: Option<&Bound<'py, PyAny>>,
        max_distance: Option<&Bound<'py, PyAny>>,
        namespace: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let k = k_arg(k)?;
        let query = codes_arg(code, "code", self.code_bits / 64, false)?;
        let max_distance = radius_arg(max_distance, self.code_bits)?;
        let name = namespace.map(|n| namespace_arg(Some(n))).transpose()?;
        let hits = with_read(py, &self.inner, |core| {
            core.search_in(&query, k, max_distance, name.as_deref(), now())
        })?
        .map_err(to_py)?;
        hits_tuple(py, &hits)
    }

    /// The `k` nearest unexpired entries of `namespace` within `max_distance`, nearest first,
    /// each as `lookup` returns one, read under one read lock, without marking them used or
    /// counting anything, and the distance of the namespace's nearest entry even when it lies
    /// beyond `max_distance` (`None` when the namespace has no live entry): `(entries, nearest)`.
    /// A caller that re-scores them serves its pick with `lookup_id`.
    #[pyo3(signature = (code, k = None, max_distance = None, *, namespace = None))]
    #[allow(clippy::type_complexity)]
    fn candidates<'py>(
        &self,
        py: Python<'py>,
        code: &Bound<'py, PyAny>,
        k: Option<&Bound<'py, PyAny>>,
        max_distance: Option<&Bound<'py, PyAny>>,
        namespace: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(Vec<Bound<'py, PyTuple>>, Option<u32>)> {
        let k = k_arg(k)?;
        let query = codes_arg(code, "code", self.code_bits / 64, false)?;
        let max_distance = radius_arg(max_distance, self.code_bits)?;
        let name = namespace_arg(namespace)?;
        let all = self.code_bits as u32;
        // An entry whose response fails its checksum is removed and reported, as by `lookup`.
        let mut unreadable: Option<(Id, Error)> = None;
        let (found, nearest) = py.detach(|| -> PyResult<(Vec<(u32, EntryView)>, Option<u32>)> {
            let core = read(&self.inner)?;
            // The k nearest at any distance: those within the radius are the k nearest within
            // it, and the first is the nearest, as `lookup_nearest` reports it.
            let hits = core
                .search_in(&query, k, all, Some(&name), now())
                .map_err(to_py)?;
            let nearest = hits.first().map(|h| h.distance);
            let mut out = Vec::with_capacity(hits.len());
            for hit in hits.into_iter().filter(|h| h.distance <= max_distance) {
                match core.peek(hit.id) {
                    Ok(Some(view)) => out.push((hit.distance, view)),
                    Ok(None) => {}
                    Err(err) => {
                        unreadable = Some((hit.id, err));
                        break;
                    }
                }
            }
            Ok((out, nearest))
        })?;
        if let Some((id, err)) = unreadable {
            return Err(py.detach(|| self.drop_unreadable(id, err)));
        }
        let entries = found
            .into_iter()
            .map(|(distance, view)| entry_tuple(py, view, Some(distance)))
            .collect::<PyResult<Vec<_>>>()?;
        Ok((entries, nearest))
    }

    /// The entry `id` if it is live, unexpired and in `namespace`, marked used and returned
    /// like `lookup_key`'s (distance 0), or `None`; counts a hit when found and nothing
    /// otherwise. How a caller serves the candidate it picked from `candidates`: an entry
    /// deleted or replaced since is never touched.
    #[pyo3(signature = (id, *, namespace = None))]
    fn lookup_id<'py>(
        &self,
        py: Python<'py>,
        id: &Bound<'py, PyAny>,
        namespace: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let Some(id) = id_arg(id)? else { return Ok(None) };
        let name = namespace_arg(namespace)?;
        let found = py.detach(|| {
            self.serve(&|core: &CacheCore| Ok(core.find_id(id, &name, now()).map(|id| (id, 0))))
        })?;
        self.count(py, found, false)
    }

    /// Removes every entry of `namespace`; returns how many.
    fn delete_namespace(&self, py: Python<'_>, namespace: &Bound<'_, PyAny>) -> PyResult<usize> {
        let name = namespace_arg(Some(namespace))?;
        self.with_core_mut(py, |core| core.delete_partition(&name).len())
    }

    /// Removes every entry whose TTL has run out; returns how many (lookups never return
    /// them either way; puts remove them too).
    fn purge_expired(&self, py: Python<'_>) -> PyResult<usize> {
        self.with_core_mut(py, |core| core.purge_expired(now()))
    }

    /// An entry's `(namespace, expires_at)`: its namespace's bytes and its expiry time in
    /// seconds since the Unix epoch (`None` without a TTL); `None` for an unknown id.
    #[allow(clippy::type_complexity)]
    fn placement<'py>(
        &self,
        py: Python<'py>,
        id: &Bound<'py, PyAny>,
    ) -> PyResult<Option<(Bound<'py, PyBytes>, Option<f64>)>> {
        let Some(id) = id_arg(id)? else { return Ok(None) };
        let found = with_read(py, &self.inner, |core| {
            core.placement(id).map(|(name, expires)| (name.to_vec(), expires))
        })?;
        Ok(found.map(|(name, expires)| (PyBytes::new(py, &name), expires)))
    }

    /// An entry as `(id, None, payload, created_at, last_accessed, access_count)` without
    /// marking it used, or `None`.
    fn peek<'py>(&self, py: Python<'py>, id: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let Some(id) = id_arg(id)? else { return Ok(None) };
        let view = with_read(py, &self.inner, |core| core.peek(id))?.map_err(to_py)?;
        view.map(|v| entry_tuple(py, v, None)).transpose()
    }

    /// The stored code of an entry.
    fn get_code<'py>(
        &self,
        py: Python<'py>,
        id: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyArray1<u64>>>> {
        let Some(id) = id_arg(id)? else { return Ok(None) };
        let code = with_read(py, &self.inner, |core| core.code(id).map(<[u64]>::to_vec))?;
        Ok(code.map(|code| PyArray1::from_vec(py, code)))
    }

    fn delete(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<bool> {
        match id_arg(id)? {
            Some(id) => self.with_core_mut(py, |core| core.delete(id)),
            None => Ok(false),
        }
    }

    /// Removes every entry. Counters are kept; ids handed out before stay dead.
    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        self.with_core_mut(py, |core| core.clear())
    }

    /// Live ids from most to least recently used.
    fn lru_ids<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let order = self.with_core_mut(py, |core| core.lru_order())?;
        Ok(ids_array(py, order))
    }

    fn memory_bytes(&self, py: Python<'_>) -> PyResult<usize> {
        with_read(py, &self.inner, |core| core.memory_bytes())
    }

    /// Bytes of a loaded file read in place (codes until the first change, and responses).
    fn mapped_bytes(&self, py: Python<'_>) -> PyResult<usize> {
        with_read(py, &self.inner, |core| core.mapped_bytes())
    }

    /// Counters and sizes: `size`, `max_entries`, `hits`, `misses`, `evictions`, `memory_bytes`,
    /// `response_bytes`, `mapped_bytes`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (size, memory_bytes, response_bytes, mapped_bytes, expirations, namespaces) =
            with_read(py, &self.inner, |core| {
                (
                    core.len(),
                    core.memory_bytes(),
                    core.response_bytes(),
                    core.mapped_bytes(),
                    core.expirations,
                    core.partitions.len(),
                )
            })?;
        let out = PyDict::new(py);
        out.set_item("size", size)?;
        out.set_item("max_entries", self.max_entries)?;
        out.set_item("hits", self.hits.load(Ordering::Relaxed))?;
        out.set_item("misses", self.misses.load(Ordering::Relaxed))?;
        out.set_item("evictions", self.evictions.load(Ordering::Relaxed))?;
        out.set_item("memory_bytes", memory_bytes)?;
        out.set_item("response_bytes", response_bytes)?;
        out.set_item("mapped_bytes", mapped_bytes)?;
        out.set_item("expirations", expirations)?;
        out.set_item("namespaces", namespaces)?;
        Ok(out)
    }
}

#[pymodule]
#[pyo3(name = "_core")]
fn bsc_native_core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("MIN_CODE_BITS", crate::index::MIN_CODE_BITS)?;
    m.add("MAX_CODE_BITS", crate::index::MAX_CODE_BITS)?;
    m.add("KERNEL", crate::scan::active_kernel().name())?;
    m.add("BscError", m.py().get_type::<BscError>())?;
    m.add("IndexFullError", m.py().get_type::<IndexFullError>())?;
    m.add("CacheFileError", m.py().get_type::<CacheFileError>())?;
    m.add("EmptyFileError", m.py().get_type::<EmptyFileError>())?;
    m.add("NotACacheFileError", m.py().get_type::<NotACacheFileError>())?;
    m.add(
        "UnsupportedVersionError",
        m.py().get_type::<UnsupportedVersionError>(),
    )?;
    m.add("TruncatedFileError", m.py().get_type::<TruncatedFileError>())?;
    m.add("CorruptFileError", m.py().get_type::<CorruptFileError>())?;
    m.add("EncoderMismatchError", m.py().get_type::<EncoderMismatchError>())?;
    m.add("FORMAT_VERSION", format::VERSION)?;
    m.add_class::<PyBinaryIndex>()?;
    m.add_class::<PyCacheStore>()?;
    Ok(())
}

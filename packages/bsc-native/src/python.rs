//! The PyO3 binding: argument checks and conversions, GIL release, error mapping.
//! Everything else lives in the plain-Rust modules.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use numpy::{
    dtype, PyArray1, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use crate::cache::{CacheCore, EntryView};
use crate::error::Error;
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

fn to_py(err: Error) -> PyErr {
    match err {
        Error::Full { .. } => IndexFullError::new_err(err.to_string()),
        Error::InvalidCodeBits(_) | Error::BadCodeLength { .. } | Error::InvalidMaxEntries(_) => {
            PyValueError::new_err(err.to_string())
        }
    }
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

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Borrows a C-contiguous `uint64` array of shape `(n, words)` (or `(words,)` when
/// `allow_1d`), with errors that name what was expected.
fn borrow_codes<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    words: usize,
    batch: bool,
) -> PyResult<PyReadonlyArrayDyn<'py, u64>> {
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
    typed
        .try_readonly()
        .map_err(|e| PyValueError::new_err(format!("{name} cannot be read: {e}")))
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

fn radius(max_distance: Option<i64>, code_bits: usize) -> PyResult<u32> {
    match max_distance {
        None => Ok(u32::MAX),
        Some(d) if d < 0 => Err(PyValueError::new_err(format!(
            "max_distance must be >= 0, got {d}"
        ))),
        Some(d) => Ok(d.min(code_bits as i64) as u32),
    }
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

fn id_arg(id: i64) -> Option<Id> {
    u64::try_from(id).ok()
}

/// A binary-code index: add codes, remove them by id, search by Hamming distance.
#[pyclass(frozen, name = "BinaryIndex", module = "bsc_native")]
pub struct PyBinaryIndex {
    inner: RwLock<CodeIndex>,
    code_bits: usize,
}

#[pymethods]
impl PyBinaryIndex {
    #[new]
    #[pyo3(signature = (code_bits = 256))]
    fn new(code_bits: usize) -> PyResult<Self> {
        let index = CodeIndex::new(code_bits).map_err(to_py)?;
        Ok(Self {
            inner: RwLock::new(index),
            code_bits,
        })
    }

    #[getter]
    fn code_bits(&self) -> usize {
        self.code_bits
    }

    fn __len__(&self) -> PyResult<usize> {
        Ok(read(&self.inner)?.len())
    }

    fn __contains__(&self, id: i64) -> PyResult<bool> {
        Ok(id_arg(id).is_some_and(|id| read(&self.inner).map(|i| i.contains(id)).unwrap_or(false)))
    }

    fn __repr__(&self) -> PyResult<String> {
        Ok(format!(
            "BinaryIndex(code_bits={}, len={})",
            self.code_bits,
            read(&self.inner)?.len()
        ))
    }

    /// Adds codes of shape `(n, code_bits / 64)` (or one code of shape `(code_bits / 64,)`);
    /// returns their ids as an `int64` array.
    fn add<'py>(&self, py: Python<'py>, codes: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let borrowed = borrow_codes(codes, "codes", self.code_bits / 64, true)?;
        let slice = borrowed.as_slice()?;
        let ids = py.detach(|| -> PyResult<Vec<Id>> { write(&self.inner)?.add(slice).map_err(to_py) })?;
        Ok(PyArray1::from_vec(
            py,
            ids.into_iter().map(|id| id as i64).collect(),
        ))
    }

    /// Removes an entry; returns whether the id was present.
    fn remove(&self, py: Python<'_>, id: i64) -> PyResult<bool> {
        let Some(id) = id_arg(id) else { return Ok(false) };
        py.detach(|| Ok(write(&self.inner)?.remove(id).is_some()))
    }

    /// Removes every entry; ids handed out before never come back.
    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| {
            write(&self.inner)?.clear();
            Ok(())
        })
    }

    /// The stored code of an entry.
    fn get<'py>(&self, py: Python<'py>, id: i64) -> PyResult<Option<Bound<'py, PyArray1<u64>>>> {
        let index = read(&self.inner)?;
        Ok(id_arg(id)
            .and_then(|id| index.code(id))
            .map(|code| PyArray1::from_slice(py, code)))
    }

    /// Ids of all entries, in storage order.
    fn ids<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let ids = read(&self.inner)?.ids();
        Ok(PyArray1::from_vec(
            py,
            ids.into_iter().map(|id| id as i64).collect(),
        ))
    }

    /// The `k` nearest codes to `query`, optionally only those within `max_distance`.
    /// Returns `(ids, distances)`: `int64` and `int32` arrays, nearest first, ties by id.
    #[pyo3(signature = (query, k = 1, max_distance = None))]
    fn search<'py>(
        &self,
        py: Python<'py>,
        query: &Bound<'py, PyAny>,
        k: usize,
        max_distance: Option<i64>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        if k == 0 {
            return Err(PyValueError::new_err("k must be >= 1, got 0"));
        }
        let borrowed = borrow_codes(query, "query", self.code_bits / 64, false)?;
        let query = borrowed.as_slice()?.to_vec();
        let max_distance = radius(max_distance, self.code_bits)?;
        let hits = py.detach(|| read(&self.inner)?.search(&query, k, max_distance).map_err(to_py))?;
        hits_tuple(py, &hits)
    }

    /// Bytes held by the index's buffers.
    fn memory_bytes(&self) -> PyResult<usize> {
        Ok(read(&self.inner)?.memory_bytes())
    }
}

/// A bounded store of codes with payload bytes, access metadata and LRU eviction: the engine
/// under `bsc.BinarySemanticCache`.
#[pyclass(frozen, name = "CacheStore", module = "bsc_native")]
pub struct PyCacheStore {
    inner: RwLock<CacheCore>,
    code_bits: usize,
    max_entries: usize,
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

#[pymethods]
impl PyCacheStore {
    #[new]
    #[pyo3(signature = (code_bits = 256, max_entries = 1000))]
    fn new(code_bits: usize, max_entries: usize) -> PyResult<Self> {
        let core = CacheCore::new(code_bits, max_entries).map_err(to_py)?;
        Ok(Self {
            inner: RwLock::new(core),
            code_bits,
            max_entries,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
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

    fn __len__(&self) -> PyResult<usize> {
        Ok(read(&self.inner)?.len())
    }

    fn __contains__(&self, id: i64) -> PyResult<bool> {
        Ok(id_arg(id).is_some_and(|id| read(&self.inner).map(|c| c.contains(id)).unwrap_or(false)))
    }

    fn __repr__(&self) -> PyResult<String> {
        Ok(format!(
            "CacheStore(code_bits={}, max_entries={}, len={})",
            self.code_bits,
            self.max_entries,
            read(&self.inner)?.len()
        ))
    }

    /// Stores one code with its payload, evicting least-recently-used entries when full.
    /// Returns the new id.
    fn put(&self, py: Python<'_>, code: &Bound<'_, PyAny>, payload: &[u8]) -> PyResult<i64> {
        let borrowed = borrow_codes(code, "code", self.code_bits / 64, false)?;
        let code = borrowed.as_slice()?;
        let (id, evicted) = py.detach(|| write(&self.inner)?.put(code, payload, now()).map_err(to_py))?;
        self.evictions.fetch_add(evicted.len() as u64, Ordering::Relaxed);
        Ok(id as i64)
    }

    /// Finds the nearest entry within `max_distance`, marks it used and returns
    /// `(id, distance, payload, created_at, last_accessed, access_count)`, or `None` on a miss.
    /// Counts a hit or a miss.
    #[pyo3(signature = (code, max_distance = None))]
    fn lookup<'py>(
        &self,
        py: Python<'py>,
        code: &Bound<'py, PyAny>,
        max_distance: Option<i64>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let borrowed = borrow_codes(code, "code", self.code_bits / 64, false)?;
        let query = borrowed.as_slice()?.to_vec();
        let max_distance = radius(max_distance, self.code_bits)?;
        let found = py.detach(|| -> PyResult<Option<(u32, EntryView)>> {
            // The scan runs under the read lock so lookups proceed in parallel; only the O(1)
            // LRU touch takes the write lock. An entry deleted in between is looked up again.
            for _ in 0..3 {
                let Some(hit) = read(&self.inner)?.nearest(&query, max_distance).map_err(to_py)? else {
                    return Ok(None);
                };
                if let Some(view) = write(&self.inner)?.touch(hit.id, now()) {
                    return Ok(Some((hit.distance, view)));
                }
            }
            Ok(None)
        })?;
        match found {
            Some((distance, view)) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                entry_tuple(py, view, Some(distance)).map(Some)
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    /// The `k` nearest entries within `max_distance` as `(ids, distances)` arrays, without
    /// marking them used or counting hits.
    #[pyo3(signature = (code, k = 1, max_distance = None))]
    fn search<'py>(
        &self,
        py: Python<'py>,
        code: &Bound<'py, PyAny>,
        k: usize,
        max_distance: Option<i64>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        if k == 0 {
            return Err(PyValueError::new_err("k must be >= 1, got 0"));
        }
        let borrowed = borrow_codes(code, "code", self.code_bits / 64, false)?;
        let query = borrowed.as_slice()?.to_vec();
        let max_distance = radius(max_distance, self.code_bits)?;
        let hits = py.detach(|| read(&self.inner)?.search(&query, k, max_distance).map_err(to_py))?;
        hits_tuple(py, &hits)
    }

    /// An entry as `(id, None, payload, created_at, last_accessed, access_count)` without
    /// marking it used, or `None`.
    fn peek<'py>(&self, py: Python<'py>, id: i64) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let view = id_arg(id)
            .map(|id| read(&self.inner).map(|c| c.peek(id)))
            .transpose()?
            .flatten();
        view.map(|v| entry_tuple(py, v, None)).transpose()
    }

    /// The stored code of an entry.
    fn get_code<'py>(&self, py: Python<'py>, id: i64) -> PyResult<Option<Bound<'py, PyArray1<u64>>>> {
        let core = read(&self.inner)?;
        Ok(id_arg(id)
            .and_then(|id| core.code(id))
            .map(|code| PyArray1::from_slice(py, code)))
    }

    fn delete(&self, py: Python<'_>, id: i64) -> PyResult<bool> {
        let Some(id) = id_arg(id) else { return Ok(false) };
        py.detach(|| Ok(write(&self.inner)?.delete(id)))
    }

    /// Removes every entry. Counters are kept; ids handed out before never come back.
    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| {
            write(&self.inner)?.clear();
            Ok(())
        })
    }

    /// Live ids from most to least recently used.
    fn lru_ids<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let order = read(&self.inner)?.lru_order();
        Ok(PyArray1::from_vec(
            py,
            order.into_iter().map(|id| id as i64).collect(),
        ))
    }

    fn memory_bytes(&self) -> PyResult<usize> {
        Ok(read(&self.inner)?.memory_bytes())
    }

    /// Counters and sizes: `size`, `max_entries`, `hits`, `misses`, `evictions`, `memory_bytes`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let core = read(&self.inner)?;
        let out = PyDict::new(py);
        out.set_item("size", core.len())?;
        out.set_item("max_entries", core.max_entries())?;
        out.set_item("hits", self.hits.load(Ordering::Relaxed))?;
        out.set_item("misses", self.misses.load(Ordering::Relaxed))?;
        out.set_item("evictions", self.evictions.load(Ordering::Relaxed))?;
        out.set_item("memory_bytes", core.memory_bytes())?;
        Ok(out)
    }
}

#[pymodule]
#[pyo3(name = "_core")]
fn bsc_native_core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("MIN_CODE_BITS", crate::index::MIN_CODE_BITS)?;
    m.add("MAX_CODE_BITS", crate::index::MAX_CODE_BITS)?;
    m.add("BscError", m.py().get_type::<BscError>())?;
    m.add("IndexFullError", m.py().get_type::<IndexFullError>())?;
    m.add_class::<PyBinaryIndex>()?;
    m.add_class::<PyCacheStore>()?;
    Ok(())
}

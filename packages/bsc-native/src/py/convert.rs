//! Argument checks and conversions, run while attached to the interpreter, and the conversion
//! of results into Python objects. Every error names the argument and what was expected.

use numpy::{dtype, PyArray1, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::index::{CodeIndex, SearchMode};
use pyo3::types::{PyBool, PyBytes, PyInt, PyString, PyTuple};

use crate::cache::{EntryView, NEVER};
use crate::index::{Hit, Id};

/// Copies a C-contiguous `uint64` array of shape `(n, words)` (or `(words,)`; only that when
/// `batch` is false), with errors that name what was expected.
///
/// The copy is taken while attached to the interpreter: once detached, another Python thread
/// may write to the array, and Rust must not be reading it then.
pub fn codes_arg(obj: &Bound<'_, PyAny>, name: &str, words: usize, batch: bool) -> PyResult<Vec<u64>> {
    let bits = words * 64;
    let expected = if batch { format!("(n, {words})") } else { format!("({words},)") };
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
        let what = if batch && shape.first() == Some(&0) { "a non-empty batch of shape" } else { "shape" };
        return Err(PyValueError::new_err(format!(
            "{name} must have {what} {expected} for code_bits={bits}, got shape {}",
            shape_str(shape)
        )));
    }
    if !array.is_c_contiguous() {
        return Err(PyTypeError::new_err(format!("{name} must be C-contiguous; pass numpy.ascontiguousarray({name})")));
    }
    let typed = array.cast::<PyArrayDyn<u64>>()?;
    let borrowed = typed.try_readonly().map_err(|e| PyValueError::new_err(format!("{name} cannot be read: {e}")))?;
    Ok(borrowed.as_slice()?.to_vec())
}

/// A shape as Python prints it: `(3, 4)`, `(4,)`.
fn shape_str(shape: &[usize]) -> String {
    match shape {
        [one] => format!("({one},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
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
        Err(_) => Err(PyTypeError::new_err(format!("{name} must be an int, got {}", obj.get_type().name()?))),
    }
}

/// An integer argument within `min..=max`, or a `ValueError` that names it.
pub fn bounded_arg(obj: &Bound<'_, PyAny>, name: &str, min: i64, max: i64) -> PyResult<i64> {
    match int_arg(obj, name)? {
        Some(value) if (min..=max).contains(&value) => Ok(value),
        _ => Err(PyValueError::new_err(format!("{name} must be between {min} and {max}, got {obj}"))),
    }
}

pub fn max_entries_arg(max_entries: Option<&Bound<'_, PyAny>>) -> PyResult<Option<usize>> {
    let limit = crate::index::MAX_ENTRIES as i64;
    max_entries.map(|m| bounded_arg(m, "max_entries", 1, limit).map(|m| m as usize)).transpose()
}

/// A namespace: `str` (UTF-8) or `bytes`, at most 1024 bytes; `None` is the unnamed one.
pub fn namespace_arg(namespace: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<u8>> {
    let Some(obj) = namespace else {
        return Ok(Vec::new());
    };
    let name = if let Ok(text) = obj.cast::<PyString>() {
        text.to_str()?.as_bytes().to_vec()
    } else if let Ok(bytes) = obj.cast::<PyBytes>() {
        bytes.as_bytes().to_vec()
    } else {
        return Err(PyTypeError::new_err(format!("namespace must be str or bytes, got {}", obj.get_type().name()?)));
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
pub fn ttl_arg(ttl: Option<&Bound<'_, PyAny>>) -> PyResult<u32> {
    let Some(obj) = ttl.filter(|t| !t.is_none()) else {
        return Ok(NEVER);
    };
    if obj.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err("ttl must be a number of seconds, got bool"));
    }
    let Ok(seconds) = obj.extract::<f64>() else {
        return Err(PyTypeError::new_err(format!("ttl must be a number of seconds, got {}", obj.get_type().name()?)));
    };
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(PyValueError::new_err(format!("ttl must be a positive number of seconds, got {seconds}")));
    }
    Ok(crate::cache::ttl_tenths(seconds))
}

/// An exact-match key: an int in [0, 2**64) (0 and `None`: no key).
pub fn key_arg(key: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
    let Some(key) = key.filter(|k| !k.is_none()) else {
        return Ok(0);
    };
    if key.is_instance_of::<PyBool>() || !key.is_instance_of::<PyInt>() {
        return Err(PyTypeError::new_err(format!("key must be an int, got {}", key.get_type().name()?)));
    }
    key.extract::<u64>().map_err(|_| PyValueError::new_err(format!("key must be in [0, 2**64), got {key}")))
}

pub fn k_arg(k: Option<&Bound<'_, PyAny>>) -> PyResult<usize> {
    k.map_or(Ok(1), |k| bounded_arg(k, "k", 1, i64::MAX).map(|k| k as usize))
}

/// `max_distance`, `None` meaning unbounded; values above `code_bits` are clamped.
pub fn radius_arg(max_distance: Option<&Bound<'_, PyAny>>, code_bits: usize) -> PyResult<u32> {
    match max_distance {
        None => Ok(u32::MAX),
        Some(d) => bounded_arg(d, "max_distance", 0, i64::MAX).map(|d| d.min(code_bits as i64) as u32),
    }
}

/// An id argument; integers that cannot be ids (negative, beyond 64 bits) are `None`.
pub fn id_arg(id: &Bound<'_, PyAny>) -> PyResult<Option<Id>> {
    Ok(int_arg(id, "id")?.and_then(|id| u64::try_from(id).ok()))
}

/// `code_bits` (256 when not given), checked as the core checks it, with the same message for
/// any bad integer.
pub fn code_bits_arg(code_bits: Option<&Bound<'_, PyAny>>) -> PyResult<usize> {
    let Some(code_bits) = code_bits else {
        return Ok(256);
    };
    let bits = int_arg(code_bits, "code_bits")?.and_then(|b| usize::try_from(b).ok());
    match bits {
        Some(bits) if crate::index::words_for_bits(bits).is_ok() => Ok(bits),
        _ => Err(PyValueError::new_err(format!(
            "code_bits must be a multiple of 64 between 64 and 4096, got {code_bits}"
        ))),
    }
}

pub fn fingerprint_arg(fingerprint: Option<String>) -> PyResult<String> {
    let fingerprint = fingerprint.unwrap_or_default();
    if fingerprint.len() > crate::format::MAX_FINGERPRINT {
        return Err(PyValueError::new_err(format!(
            "fingerprint is {} bytes long; at most {} fit in a file",
            fingerprint.len(),
            crate::format::MAX_FINGERPRINT
        )));
    }
    Ok(fingerprint)
}

pub fn ids_array(py: Python<'_>, ids: Vec<Id>) -> Bound<'_, PyArray1<i64>> {
    PyArray1::from_vec(py, ids.into_iter().map(|id| id as i64).collect())
}

/// Search results as `(ids int64, distances int32)` arrays.
pub fn hits_tuple<'py>(py: Python<'py>, hits: &[Hit]) -> PyResult<Bound<'py, PyTuple>> {
    let ids: Vec<i64> = hits.iter().map(|h| h.id as i64).collect();
    let distances: Vec<i32> = hits.iter().map(|h| h.distance as i32).collect();
    let arrays = [PyArray1::from_vec(py, ids).into_any(), PyArray1::from_vec(py, distances).into_any()];
    PyTuple::new(py, arrays)
}

/// An entry as `(id, distance, payload, created_at, last_accessed, access_count)`.
pub fn entry_tuple<'py>(py: Python<'py>, view: EntryView, distance: Option<u32>) -> PyResult<Bound<'py, PyTuple>> {
    let payload = PyBytes::new(py, &view.payload);
    (view.id as i64, distance, payload, view.created_at, view.last_accessed, view.access_count).into_pyobject(py)
}

/// The `mode` and `substrings` arguments of `configure_search`.
pub fn search_args(mode: &str, substrings: Option<&Bound<'_, PyAny>>) -> PyResult<(SearchMode, Option<usize>)> {
    let mode = SearchMode::parse(mode).ok_or_else(|| {
        pyo3::exceptions::PyValueError::new_err(format!(
            "search mode must be 'auto', 'flat' or 'indexed', got {mode:?}"
        ))
    })?;
    let substrings = substrings.map(|m| bounded_arg(m, "substrings", 2, 1024).map(|m| m as usize)).transpose()?;
    Ok((mode, substrings))
}

/// How an index searches, and its multi-index if built: `search_info()`'s fields, read under
/// the lock and turned into a dict after it is released.
pub struct SearchInfo {
    mode: &'static str,
    geometry: Option<(usize, u32, usize)>,
    index_bytes: usize,
}

impl SearchInfo {
    pub fn of(index: &CodeIndex) -> Self {
        let geometry = index.multi_index().map(|m| (m.geometry().m, m.geometry().b, m.entries()));
        Self { mode: index.search_mode().name(), geometry, index_bytes: index.index_bytes() }
    }

    pub fn into_dict(self, py: Python<'_>) -> PyResult<Bound<'_, pyo3::types::PyDict>> {
        let out = pyo3::types::PyDict::new(py);
        out.set_item("mode", self.mode)?;
        out.set_item("built", self.geometry.is_some())?;
        out.set_item("substrings", self.geometry.map(|g| g.0))?;
        out.set_item("substring_bits", self.geometry.map(|g| g.1))?;
        out.set_item("index_entries", self.geometry.map_or(0, |g| g.2))?;
        out.set_item("index_bytes", self.index_bytes)?;
        Ok(out)
    }
}

//! `bsc_native.CacheStore`: a [`SharedCache`] with its encoder fingerprint and file metadata.

use std::path::PathBuf;

use numpy::PyArray1;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use super::convert::{
    code_bits_arg, codes_arg, entry_tuple, fingerprint_arg, hits_tuple, id_arg, ids_array, k_arg, key_arg,
    max_entries_arg, namespace_arg, radius_arg, search_args, ttl_arg, SearchInfo,
};
use super::{detached, errors::to_py};
use crate::cache::CacheCore;
use crate::format::Counters;
use crate::store::{now, Served, SharedCache};

/// A bounded store of codes with payload bytes, access metadata and LRU eviction: the engine
/// under `bsc.BinarySemanticCache`.
#[pyclass(frozen, name = "CacheStore", module = "bsc_native")]
pub struct PyCacheStore(SharedCache);

/// A served entry as a tuple (built after the locks are released).
fn served<'py>(py: Python<'py>, found: Option<Served>) -> PyResult<Option<Bound<'py, PyTuple>>> {
    found.map(|(distance, view)| entry_tuple(py, view, Some(distance))).transpose()
}

#[pymethods]
impl PyCacheStore {
    #[new]
    #[pyo3(signature = (code_bits = None, max_entries = None, *, fingerprint = None))]
    fn new(
        code_bits: Option<&Bound<'_, PyAny>>, max_entries: Option<&Bound<'_, PyAny>>, fingerprint: Option<String>,
    ) -> PyResult<Self> {
        let code_bits = code_bits_arg(code_bits)?;
        let max_entries = max_entries_arg(max_entries)?.unwrap_or(1000);
        let core = CacheCore::new(code_bits, max_entries).map_err(to_py)?;
        let mut inner = SharedCache::new(core, Counters::default());
        inner.label.fingerprint = fingerprint_arg(fingerprint)?;
        Ok(Self(inner))
    }

    #[getter]
    fn fingerprint(&self) -> &str {
        &self.0.label.fingerprint
    }

    #[getter]
    fn meta<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.label.meta)
    }

    #[pyo3(signature = (path, meta = None))]
    fn save(&self, py: Python<'_>, path: PathBuf, meta: Option<Vec<u8>>) -> PyResult<()> {
        let meta = meta.unwrap_or_default();
        detached(py, || self.0.save(&path, meta))
    }

    #[staticmethod]
    #[pyo3(signature = (path, *, fingerprint = None, max_entries = None, verify = false))]
    fn load(
        py: Python<'_>, path: PathBuf, fingerprint: Option<String>, max_entries: Option<&Bound<'_, PyAny>>,
        verify: bool,
    ) -> PyResult<Self> {
        let max_entries = max_entries_arg(max_entries)?;
        let load = || SharedCache::load(&path, fingerprint.as_deref(), max_entries, verify);
        detached(py, load).map(Self)
    }

    #[getter]
    fn code_bits(&self) -> usize {
        self.0.code_bits()
    }

    #[getter]
    fn max_entries(&self) -> usize {
        self.0.max_entries()
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        detached(py, || self.0.read(|core| core.len()))
    }

    fn __contains__(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<bool> {
        id_arg(id)?.map_or(Ok(false), |id| detached(py, || self.0.read(|core| core.contains(id))))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let len = self.__len__(py)?;
        let (bits, max) = (self.0.code_bits(), self.0.max_entries());
        Ok(format!("CacheStore(code_bits={bits}, max_entries={max}, len={len})"))
    }

    #[pyo3(signature = (code, payload, *, namespace = None, ttl = None, key = None))]
    fn put(
        &self, py: Python<'_>, code: &Bound<'_, PyAny>, payload: &[u8], namespace: Option<&Bound<'_, PyAny>>,
        ttl: Option<&Bound<'_, PyAny>>, key: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<i64> {
        let code = codes_arg(code, "code", self.0.code_bits() / 64, false)?;
        let (name, expires, key) = (namespace_arg(namespace)?, ttl_arg(ttl)?, key_arg(key)?);
        // `payload` borrows an immutable `bytes` object, so reading it detached is sound.
        let id = detached(py, || self.0.put(&code, payload, &name, expires, key))?;
        Ok(id as i64)
    }

    #[pyo3(signature = (code, max_distance = None, *, namespace = None))]
    fn lookup<'py>(
        &self, py: Python<'py>, code: &Bound<'py, PyAny>, max_distance: Option<&Bound<'py, PyAny>>,
        namespace: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let query = codes_arg(code, "code", self.0.code_bits() / 64, false)?;
        let (max_distance, name) = (radius_arg(max_distance, self.0.code_bits())?, namespace_arg(namespace)?);
        served(py, detached(py, || self.0.lookup(&query, max_distance, &name, false))?.0)
    }

    #[pyo3(signature = (code, max_distance = None, *, namespace = None))]
    fn lookup_nearest<'py>(
        &self, py: Python<'py>, code: &Bound<'py, PyAny>, max_distance: Option<&Bound<'py, PyAny>>,
        namespace: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(Option<Bound<'py, PyTuple>>, Option<u32>)> {
        let query = codes_arg(code, "code", self.0.code_bits() / 64, false)?;
        let (max_distance, name) = (radius_arg(max_distance, self.0.code_bits())?, namespace_arg(namespace)?);
        // The scan admits every distance, so that the nearest one is known even on a miss.
        let (found, nearest) = detached(py, || self.0.lookup(&query, max_distance, &name, true))?;
        Ok((served(py, found)?, nearest))
    }

    #[pyo3(signature = (key, *, namespace = None))]
    fn lookup_key<'py>(
        &self, py: Python<'py>, key: &Bound<'py, PyAny>, namespace: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let (key, name) = (key_arg(Some(key))?, namespace_arg(namespace)?);
        served(py, detached(py, || self.0.lookup_key(key, &name))?)
    }

    fn namespaces<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let sizes = detached(py, || {
            self.0.read(|core| {
                let sizes = core.partition_sizes().into_iter();
                sizes.map(|(name, n)| (name.to_vec(), n)).collect::<Vec<_>>()
            })
        })?;
        let out = PyDict::new(py);
        for (name, n) in sizes {
            out.set_item(PyBytes::new(py, &name), n)?;
        }
        Ok(out)
    }

    #[pyo3(signature = (code, k = None, max_distance = None, *, namespace = None))]
    fn search<'py>(
        &self, py: Python<'py>, code: &Bound<'py, PyAny>, k: Option<&Bound<'py, PyAny>>,
        max_distance: Option<&Bound<'py, PyAny>>, namespace: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let k = k_arg(k)?;
        let query = codes_arg(code, "code", self.0.code_bits() / 64, false)?;
        let max_distance = radius_arg(max_distance, self.0.code_bits())?;
        let name = namespace.map(|n| namespace_arg(Some(n))).transpose()?;
        let hits =
            detached(py, || self.0.read(|core| core.search_in(&query, k, max_distance, name.as_deref(), now()))?)?;
        hits_tuple(py, &hits)
    }

    #[pyo3(signature = (code, k = None, max_distance = None, *, namespace = None))]
    #[allow(clippy::type_complexity)]
    fn candidates<'py>(
        &self, py: Python<'py>, code: &Bound<'py, PyAny>, k: Option<&Bound<'py, PyAny>>,
        max_distance: Option<&Bound<'py, PyAny>>, namespace: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(Vec<Bound<'py, PyTuple>>, Option<u32>)> {
        let k = k_arg(k)?;
        let query = codes_arg(code, "code", self.0.code_bits() / 64, false)?;
        let max_distance = radius_arg(max_distance, self.0.code_bits())?;
        let name = namespace_arg(namespace)?;
        let (found, nearest) = detached(py, || self.0.candidates(&query, k, max_distance, &name))?;
        let entries = found.into_iter().map(|(d, view)| entry_tuple(py, view, Some(d)));
        Ok((entries.collect::<PyResult<Vec<_>>>()?, nearest))
    }

    #[pyo3(signature = (id, *, namespace = None))]
    fn lookup_id<'py>(
        &self, py: Python<'py>, id: &Bound<'py, PyAny>, namespace: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let Some(id) = id_arg(id)? else { return Ok(None) };
        let name = namespace_arg(namespace)?;
        served(py, detached(py, || self.0.lookup_id(id, &name))?)
    }

    fn delete_namespace(&self, py: Python<'_>, namespace: &Bound<'_, PyAny>) -> PyResult<usize> {
        let name = namespace_arg(Some(namespace))?;
        detached(py, || self.0.write(|core| core.delete_partition(&name).len()))
    }

    fn purge_expired(&self, py: Python<'_>) -> PyResult<usize> {
        detached(py, || self.0.write(|core| core.purge_expired(now())))
    }

    #[allow(clippy::type_complexity)]
    fn placement<'py>(
        &self, py: Python<'py>, id: &Bound<'py, PyAny>,
    ) -> PyResult<Option<(Bound<'py, PyBytes>, Option<f64>)>> {
        let Some(id) = id_arg(id)? else { return Ok(None) };
        let found =
            detached(py, || self.0.read(|core| core.placement(id).map(|(name, expires)| (name.to_vec(), expires))))?;
        Ok(found.map(|(name, expires)| (PyBytes::new(py, &name), expires)))
    }

    fn peek<'py>(&self, py: Python<'py>, id: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let Some(id) = id_arg(id)? else { return Ok(None) };
        let view = detached(py, || self.0.read(|core| core.peek(id))?)?;
        view.map(|v| entry_tuple(py, v, None)).transpose()
    }

    fn get_code<'py>(&self, py: Python<'py>, id: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyArray1<u64>>>> {
        let Some(id) = id_arg(id)? else { return Ok(None) };
        let code = detached(py, || self.0.read(|core| core.code(id).map(<[u64]>::to_vec)))?;
        Ok(code.map(|code| PyArray1::from_vec(py, code)))
    }

    fn delete(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<bool> {
        id_arg(id)?.map_or(Ok(false), |id| detached(py, || self.0.write(|core| core.delete(id))))
    }

    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        detached(py, || self.0.write(|core| core.clear()))
    }

    fn lru_ids<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let order = detached(py, || self.0.write(|core| core.lru_order()))?;
        Ok(ids_array(py, order))
    }

    #[pyo3(signature = (mode = "auto", *, substrings = None))]
    fn configure_search(&self, py: Python<'_>, mode: &str, substrings: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let (mode, substrings) = search_args(mode, substrings)?;
        detached(py, || {
            self.0.write(|core| {
                // The substrings are checked first, so a bad call changes nothing.
                core.index.set_substrings(substrings)?;
                core.index.set_search_mode(mode);
                Ok(())
            })?
        })
    }

    fn build_index(&self, py: Python<'_>) -> PyResult<bool> {
        detached(py, || self.0.read(|core| core.index.build_index()))
    }

    fn search_info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        detached(py, || self.0.read(|core| SearchInfo::of(&core.index)))?.into_dict(py)
    }

    fn memory_bytes(&self, py: Python<'_>) -> PyResult<usize> {
        detached(py, || self.0.read(|core| core.memory_bytes()))
    }

    fn mapped_bytes(&self, py: Python<'_>) -> PyResult<usize> {
        detached(py, || self.0.read(|core| core.mapped_bytes()))
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = detached(py, || self.0.stats())?;
        let out = PyDict::new(py);
        for (name, value) in stats.named() {
            out.set_item(name, value)?;
        }
        Ok(out)
    }
}

//! `bsc_native.BinaryIndex`: a [`SharedIndex`] with its encoder fingerprint and file metadata.

use std::path::PathBuf;

use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use super::convert::{
    bounded_arg, code_bits_arg, codes_arg, fingerprint_arg, hits_tuple, id_arg, ids_array, k_arg, radius_arg,
    search_args, SearchInfo,
};
use super::{detached, errors::to_py};
use crate::index::CodeIndex;
use crate::store::SharedIndex;

/// A binary-code index: add codes, remove them by id, search by Hamming distance.
#[pyclass(frozen, name = "BinaryIndex", module = "bsc_native")]
pub struct PyBinaryIndex(SharedIndex);

#[pymethods]
impl PyBinaryIndex {
    #[new]
    #[pyo3(signature = (code_bits = None, *, fingerprint = None))]
    fn new(code_bits: Option<&Bound<'_, PyAny>>, fingerprint: Option<String>) -> PyResult<Self> {
        let code_bits = code_bits_arg(code_bits)?;
        let index = CodeIndex::new(code_bits).map_err(to_py)?;
        Ok(Self(SharedIndex::new(index, fingerprint_arg(fingerprint)?)))
    }

    #[getter]
    fn code_bits(&self) -> usize {
        self.0.code_bits()
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
        detached(py, || self.0.save(&path, meta.unwrap_or_default()))
    }

    #[staticmethod]
    #[pyo3(signature = (path, *, fingerprint = None))]
    fn load(py: Python<'_>, path: PathBuf, fingerprint: Option<String>) -> PyResult<Self> {
        detached(py, || SharedIndex::load(&path, fingerprint.as_deref())).map(Self)
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        detached(py, || self.0.read(|index| index.len()))
    }

    fn __contains__(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<bool> {
        id_arg(id)?.map_or(Ok(false), |id| detached(py, || self.0.read(|index| index.contains(id))))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let len = self.__len__(py)?;
        Ok(format!("BinaryIndex(code_bits={}, len={len})", self.0.code_bits()))
    }

    fn add<'py>(&self, py: Python<'py>, codes: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let codes = codes_arg(codes, "codes", self.0.code_bits() / 64, true)?;
        let ids = detached(py, || self.0.write(|index| index.add(&codes))?)?;
        Ok(ids_array(py, ids))
    }

    fn remove(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<bool> {
        let remove = |id| detached(py, || self.0.write(|index| index.remove(id).is_some()));
        id_arg(id)?.map_or(Ok(false), remove)
    }

    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        detached(py, || self.0.write(|index| index.clear()))
    }

    fn get<'py>(&self, py: Python<'py>, id: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyArray1<u64>>>> {
        let Some(id) = id_arg(id)? else { return Ok(None) };
        let code = detached(py, || self.0.read(|index| index.code(id).map(<[u64]>::to_vec)))?;
        Ok(code.map(|code| PyArray1::from_vec(py, code)))
    }

    fn ids<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let ids = detached(py, || self.0.read(|index| index.ids()))?;
        Ok(ids_array(py, ids))
    }

    #[pyo3(signature = (query, k = None, max_distance = None))]
    fn search<'py>(
        &self, py: Python<'py>, query: &Bound<'py, PyAny>, k: Option<&Bound<'py, PyAny>>,
        max_distance: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let k = k_arg(k)?;
        let query = codes_arg(query, "query", self.0.code_bits() / 64, false)?;
        let max_distance = radius_arg(max_distance, self.0.code_bits())?;
        let hits = detached(py, || self.0.read(|index| index.search(&query, k, max_distance))?)?;
        hits_tuple(py, &hits)
    }

    #[pyo3(signature = (queries, k = None, max_distance = None, threads = None))]
    fn search_batch<'py>(
        &self, py: Python<'py>, queries: &Bound<'py, PyAny>, k: Option<&Bound<'py, PyAny>>,
        max_distance: Option<&Bound<'py, PyAny>>, threads: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let k = k_arg(k)?;
        let queries = codes_arg(queries, "queries", self.0.code_bits() / 64, true)?;
        let max_distance = radius_arg(max_distance, self.0.code_bits())?;
        // More threads than CPUs are cut to the CPUs by the scan itself.
        let threads = match threads {
            None => usize::MAX,
            Some(t) => bounded_arg(t, "threads", 1, 1024)? as usize,
        };
        let m = queries.len() / (self.0.code_bits() / 64);
        let (width, ids, distances) = detached(py, || self.0.search_batch_padded(&queries, k, max_distance, threads))?;
        let ids = PyArray1::from_vec(py, ids).reshape([m, width])?;
        let distances = PyArray1::from_vec(py, distances).reshape([m, width])?;
        PyTuple::new(py, [ids.into_any(), distances.into_any()])
    }

    #[pyo3(signature = (mode = "auto", *, substrings = None))]
    fn configure_search(&self, py: Python<'_>, mode: &str, substrings: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let (mode, substrings) = search_args(mode, substrings)?;
        detached(py, || {
            self.0.write(|index| {
                // The substrings are checked first, so a bad call changes nothing.
                index.set_substrings(substrings)?;
                index.set_search_mode(mode);
                Ok(())
            })?
        })
    }

    fn build_index(&self, py: Python<'_>) -> PyResult<bool> {
        detached(py, || self.0.read(|index| index.build_index()))
    }

    fn search_info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        detached(py, || self.0.read(SearchInfo::of))?.into_dict(py)
    }

    fn memory_bytes(&self, py: Python<'_>) -> PyResult<usize> {
        detached(py, || self.0.read(|index| index.memory_bytes()))
    }

    fn mapped_bytes(&self, py: Python<'_>) -> PyResult<usize> {
        detached(py, || self.0.read(|index| index.mapped_bytes()))
    }
}

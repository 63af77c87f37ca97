//! `bsc_native.Projector`: sign random projection of embeddings to codes, in the engine.

use numpy::ndarray::ArrayView2;
use numpy::{PyArray1, PyArray2, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use super::errors::to_py;
use crate::project::{Projector, Unfit};

/// Encodes embeddings with a `(code_bits, dim)` projection matrix: the codes of
/// `bsc_encoder.BinaryEncoder` with that matrix, but for bits within float rounding of zero.
#[pyclass(frozen, name = "Projector", module = "bsc_native")]
pub struct PyProjector(Projector);

/// An embedding array's values as `f32` or `f64` and its shape, or the reference encoder's
/// error for anything else.
enum Values<'py> {
    F32(numpy::PyReadonlyArrayDyn<'py, f32>),
    F64(numpy::PyReadonlyArrayDyn<'py, f64>),
}

fn unfit(err: Unfit, row: Option<usize>) -> PyErr {
    match (err, row) {
        (Unfit::NotFinite, _) => PyValueError::new_err("embedding contains NaN or infinite values"),
        (Unfit::AllZero, None) => PyValueError::new_err("embedding is all zeros: it has no direction to encode"),
        (Unfit::AllZero, Some(row)) => PyValueError::new_err(format!("embedding rows [{row}] are all zeros")),
    }
}

#[pymethods]
impl PyProjector {
    #[new]
    fn new(projection: &Bound<'_, PyAny>) -> PyResult<Self> {
        let Ok(matrix) = projection.cast::<PyArray2<f64>>() else {
            return Err(PyTypeError::new_err(
                "projection must be a 2-D numpy.ndarray of float64, shape (code_bits, dim)",
            ));
        };
        let matrix = matrix.try_readonly().map_err(|e| PyValueError::new_err(format!("projection: {e}")))?;
        let view: ArrayView2<'_, f64> = matrix.as_array();
        let (bits, dim) = view.dim();
        let values: Vec<f64> = view.iter().copied().collect();
        Projector::new(&values, bits, dim).map(Self).map_err(to_py)
    }

    #[getter]
    fn dim(&self) -> usize {
        self.0.dim()
    }

    #[getter]
    fn code_bits(&self) -> usize {
        self.0.bits()
    }

    /// One embedding `(dim,)` to one code `(code_bits // 64,)`, or a batch `(n, dim)` to
    /// `(n, code_bits // 64)`.
    fn encode<'py>(&self, py: Python<'py>, embedding: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let dim = self.0.dim();
        let Ok(array) = embedding.cast::<PyUntypedArray>() else {
            return Err(PyTypeError::new_err(format!(
                "embedding must be a numpy.ndarray of float32 or float64, got {}",
                embedding.get_type().name()?
            )));
        };
        let values = if let Ok(a) = array.cast::<PyArrayDyn<f32>>() {
            Values::F32(a.try_readonly().map_err(|e| PyValueError::new_err(format!("embedding: {e}")))?)
        } else if let Ok(a) = array.cast::<PyArrayDyn<f64>>() {
            Values::F64(a.try_readonly().map_err(|e| PyValueError::new_err(format!("embedding: {e}")))?)
        } else {
            return Err(PyTypeError::new_err(format!(
                "embedding must have dtype float32 or float64, got {}",
                array.dtype()
            )));
        };
        let shape = array.shape().to_vec();
        let rows = match shape.as_slice() {
            [d] if *d == dim => None,
            [n, d] if *d == dim && *n > 0 => Some(*n),
            [0, d] if *d == dim => {
                return Err(PyValueError::new_err(format!("embedding batch is empty: shape (0, {dim})")));
            }
            _ => {
                let shown = match shape.as_slice() {
                    [one] => format!("({one},)"),
                    s => format!("({})", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
                };
                return Err(PyValueError::new_err(format!(
                    "embedding must have shape ({dim},) or (n, {dim}), got shape {shown}"
                )));
            }
        };
        let words = self.0.bits() / 64;
        let mut out = vec![0u64; rows.unwrap_or(1) * words];
        let encode_all = |x: &[f64], f32s: Option<&[f32]>, out: &mut [u64]| -> Result<(), (Unfit, usize)> {
            for (i, code) in out.chunks_exact_mut(words).enumerate() {
                let result = match f32s {
                    Some(v) => self.0.encode(&v[i * dim..(i + 1) * dim], code),
                    None => self.0.encode(&x[i * dim..(i + 1) * dim], code),
                };
                result.map_err(|e| (e, i))?;
            }
            Ok(())
        };
        let result = match &values {
            Values::F32(a) => match a.as_slice() {
                Ok(v) => encode_all(&[], Some(v), &mut out),
                Err(_) => encode_all(&[], Some(&a.as_array().iter().copied().collect::<Vec<_>>()), &mut out),
            },
            Values::F64(a) => match a.as_slice() {
                Ok(v) => encode_all(v, None, &mut out),
                Err(_) => encode_all(&a.as_array().iter().copied().collect::<Vec<_>>(), None, &mut out),
            },
        };
        result.map_err(|(e, row)| unfit(e, rows.map(|_| row)))?;
        let codes = PyArray1::from_vec(py, out);
        match rows {
            None => Ok(codes.into_any()),
            Some(n) => Ok(codes.reshape([n, words])?.into_any()),
        }
    }
}

//! The PyO3 binding: the `bsc_native._core` module. Argument checks and conversions
//! (`convert`), error mapping (`errors`) and the two classes (`index`, `cache_store`); the
//! locking, the LRU-touch queue, the counters and save coordination live in [`crate::store`].
//!
//! Every method converts its arguments while attached, then detaches (`py.detach`) before it
//! takes a lock, and builds Python objects only after the lock is released: a thread holding
//! the GIL never waits for a lock, and no Python code (a finalizer run by the garbage collector
//! while building a result) can run while this thread holds one.
//!
//! The Python-facing documentation of every method is `python/bsc_native/_core.pyi` (as in
//! pydantic-core): one place, which `mypy.stubtest` keeps true to these signatures.

use pyo3::prelude::*;

use crate::error::Result;

mod cache_store;
mod convert;
mod errors;
mod index;
mod projector;

/// Runs `f` detached from the interpreter and maps its error to a Python exception.
fn detached<R: Send>(py: Python<'_>, f: impl FnOnce() -> Result<R> + Send) -> PyResult<R> {
    py.detach(f).map_err(errors::to_py)
}

#[pymodule]
#[pyo3(name = "_core")]
fn bsc_native_core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("MIN_CODE_BITS", crate::index::MIN_CODE_BITS)?;
    m.add("MAX_CODE_BITS", crate::index::MAX_CODE_BITS)?;
    m.add("KERNEL", crate::scan::active_kernel().name())?;
    errors::register(m)?;
    m.add("FORMAT_VERSION", crate::format::VERSION)?;
    m.add_class::<index::PyBinaryIndex>()?;
    m.add_class::<cache_store::PyCacheStore>()?;
    m.add_class::<projector::PyProjector>()?;
    Ok(())
}

//! The pyo3 binding of fastpath, imported in Python as `reconciler._native`.
//!
//! Deliberately thin: plain data crosses the boundary (str in, str or an exception out) and all
//! logic stays in `fastpath-core`, where it is tested without an interpreter.
#![forbid(unsafe_code)]

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// The fastpath version this extension was built from.
#[pyfunction]
fn version() -> &'static str {
    fastpath::VERSION
}

/// Checks that `pattern` compiles in the data plane's regex engine; raises ValueError with
/// a one-line reason otherwise.
#[pyfunction]
fn check_route_regex(pattern: &str) -> PyResult<()> {
    fastpath::route_regex::compile(pattern)
        .map(drop)
        .map_err(|e| PyValueError::new_err(e.reason))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(check_route_regex, m)?)?;
    Ok(())
}

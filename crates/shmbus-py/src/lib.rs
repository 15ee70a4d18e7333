//! `shmbus._shmbus`: the native half of the `shmbus` Python package. The Python package beside
//! it (`python/shmbus`) re-exports these and adds numpy conveniences, pickling and the
//! exception classes.

mod array;
mod array_queue;
mod errors;
mod sync;
mod topic;
mod view;
mod wait;
mod work;

use pyo3::prelude::*;

/// Removes every scoped shmbus object no live process uses; returns the file names removed.
#[pyfunction]
fn gc(py: Python<'_>) -> PyResult<Vec<String>> {
    py.detach(shmbus::gc)
        .map_err(|e| errors::error(py, "Error", e))
}

/// Every shmbus object name in the shared-memory directory.
#[pyfunction]
fn list_names(py: Python<'_>) -> PyResult<Vec<String>> {
    let names = shmbus::list().map_err(|e| errors::error(py, "Error", e))?;
    Ok(names.iter().map(|n| n.as_str().to_owned()).collect())
}

/// Removes the name of any shmbus object (topic, array, lock...). Users keep their mappings.
#[pyfunction]
fn unlink(py: Python<'_>, name: &str) -> PyResult<()> {
    let n = shmbus::Name::new(name).map_err(|e| errors::name(py, &e))?;
    shmbus::unlink(&n).map_err(|e| errors::segment(py, &e))
}

#[pymodule]
fn _shmbus(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<array::ArrayBuffer>()?;
    m.add_function(wrap_pyfunction!(array::create_array, m)?)?;
    m.add_function(wrap_pyfunction!(array::attach_array, m)?)?;
    m.add_function(wrap_pyfunction!(array::delete_array, m)?)?;
    m.add_function(wrap_pyfunction!(array::list_arrays, m)?)?;
    m.add_function(wrap_pyfunction!(gc, m)?)?;
    m.add_function(wrap_pyfunction!(list_names, m)?)?;
    m.add_function(wrap_pyfunction!(unlink, m)?)?;
    topic::register(m)?;
    sync::register(m)?;
    work::register(m)?;
    array_queue::register(m)?;
    m.add_function(wrap_pyfunction!(wait::wait, m)?)?;
    Ok(())
}

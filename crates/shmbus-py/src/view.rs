//! numpy arrays over shared memory that keep their owner alive (the one place that forms them).

use std::ffi::c_int;
use std::ptr::{null_mut, NonNull};

use numpy::npyffi::{self, npy_intp, PyArrayObject, PY_ARRAY_API};
use numpy::{PyArrayDescr, PyArrayDescrMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyType;

/// A C-ordered numpy array of `subtype` (`numpy.ndarray` or a subclass) over `len` bytes at
/// `data`, whose `base` is `owner`.
///
/// # Safety
///
/// `[data, data + len)` stays mapped (and, with `writeable`, writable) as long as `owner` lives,
/// and `data` is aligned for `descr`. The array holds a strong reference to `owner` as its
/// base, and every view numpy derives from it refers to the same base, so the memory outlives
/// every array that can reach it.
pub(crate) unsafe fn array_over<'py>(
    subtype: &Bound<'py, PyType>,
    descr: Bound<'py, PyArrayDescr>,
    shape: &[usize],
    data: NonNull<u8>,
    len: usize,
    writeable: bool,
    owner: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = subtype.py();
    let elements = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| PyValueError::new_err("shape overflows"))?;
    if elements.checked_mul(descr.itemsize()) != Some(len) {
        return Err(PyValueError::new_err(format!(
            "shape {shape:?} of {} bytes per item does not fill {len} bytes",
            descr.itemsize()
        )));
    }
    let mut dims = shape
        .iter()
        .map(|&d| npy_intp::try_from(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| PyValueError::new_err("a dimension exceeds npy_intp"))?;
    let ndim = c_int::try_from(dims.len()).map_err(|_| PyValueError::new_err("too many dims"))?;
    let mut flags = npyffi::NPY_ARRAY_C_CONTIGUOUS | npyffi::NPY_ARRAY_ALIGNED;
    if writeable {
        flags |= npyffi::NPY_ARRAY_WRITEABLE;
    }
    // SAFETY: `subtype` is a live type object (numpy checks it is an ndarray subtype); the
    // descriptor reference is stolen by the call (`into_dtype_ptr` hands ours over); `dims`
    // lives across the call and has `ndim` entries; null strides ask for C order; `data`
    // covers `elements * itemsize == len` bytes (checked above) for as long as `owner` lives
    // (the caller's promise), and `owner` becomes the base below before anyone sees the array.
    let arr = unsafe {
        let raw = PY_ARRAY_API.PyArray_NewFromDescr(
            py,
            subtype.as_type_ptr().cast(),
            descr.into_dtype_ptr(),
            ndim,
            dims.as_mut_ptr(),
            null_mut(),
            data.as_ptr().cast(),
            flags,
            null_mut(),
        );
        Bound::from_owned_ptr_or_err(py, raw)?
    };
    // SAFETY: `arr` is the array just made (an ndarray); SetBaseObject steals the reference
    // `into_ptr` gives it (also on failure, when numpy drops it).
    let rc = unsafe {
        PY_ARRAY_API.PyArray_SetBaseObject(
            py,
            arr.as_ptr().cast::<PyArrayObject>(),
            owner.into_ptr(),
        )
    };
    if rc < 0 {
        return Err(PyErr::fetch(py));
    }
    Ok(arr)
}

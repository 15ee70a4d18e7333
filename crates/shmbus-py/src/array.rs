//! Named arrays (the SharedArray model): a numpy array over the mapping, whose base object
//! ([`ArrayBuffer`]) owns the mapping.

use std::time::Duration;

use numpy::PyArrayDescr;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyType};
use shmbus_core::array::{self as raw, ArraySpec, Location, RawArray};
use shmbus_core::dtype::Dtype;
use shmbus_core::segment::Lifetime;

use crate::errors;
use crate::view::array_over;

/// The mapping of one named array: the `base` of every numpy array over it. The mapping lives
/// as long as this object, so as long as any array that can reach the memory.
#[pyclass(frozen, module = "shmbus._shmbus")]
pub(crate) struct ArrayBuffer {
    raw: RawArray,
}

fn dtype_of(py: Python<'_>, typestr: &str) -> PyResult<Dtype> {
    Dtype::from_typestr(typestr).ok_or_else(|| {
        errors::error(
            py,
            "WrongDtype",
            format!("dtype {typestr:?} is not an array dtype shmbus stores (bool, int8-64, uint8-64, float16-64, complex64/128, little-endian)"),
        )
    })
}

fn location(py: Python<'_>, name: &str) -> PyResult<Location> {
    Location::parse(name).map_err(|e| errors::name(py, &e))
}

/// The numpy array of `cls` over `buffer`'s elements.
fn as_array<'py>(
    cls: &Bound<'py, PyType>,
    buffer: Bound<'py, ArrayBuffer>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = cls.py();
    let a = &buffer.get().raw;
    let descr = PyArrayDescr::new(py, a.dtype().typestr())?;
    let (shape, ptr, len, writeable) = (
        a.shape().to_vec(),
        a.data_ptr_raw(),
        a.len_bytes(),
        !a.is_read_only(),
    );
    // SAFETY: the elements span `len_bytes` from `data_ptr_raw`, page-aligned, mapped (writable
    // unless attached read-only: then the mapping is read-only and the array is not writeable)
    // for as long as `buffer` lives; `buffer` becomes the array's base.
    unsafe { array_over(cls, descr, &shape, ptr, len, writeable, buffer.into_any()) }
}

/// Creates the array `name` (`shm://NAME`, `NAME` or `file:///PATH`) of `shape` and `typestr`
/// (a numpy type string such as `"<f8"`), zero-filled, and returns a `cls` array over it.
#[pyfunction]
#[pyo3(signature = (cls, name, shape, typestr, scoped=false, mode=0o600))]
pub(crate) fn create_array<'py>(
    cls: &Bound<'py, PyType>,
    name: &str,
    shape: Vec<usize>,
    typestr: &str,
    scoped: bool,
    mode: u32,
) -> PyResult<Bound<'py, PyAny>> {
    let py = cls.py();
    let spec = ArraySpec {
        lifetime: if scoped {
            Lifetime::Scoped
        } else {
            Lifetime::Persistent
        },
        mode,
        ..ArraySpec::new(dtype_of(py, typestr)?, &shape)
    };
    let loc = location(py, name)?;
    let raw = py
        .detach(|| RawArray::create(&loc, &spec))
        .map_err(|e| errors::array(py, &e))?;
    as_array(cls, Bound::new(py, ArrayBuffer { raw })?)
}

/// Attaches the existing array `name`; its dtype and shape come from the segment.
#[pyfunction]
#[pyo3(signature = (cls, name, ro=false, timeout=None))]
pub(crate) fn attach_array<'py>(
    cls: &Bound<'py, PyType>,
    name: &str,
    ro: bool,
    timeout: Option<f64>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = cls.py();
    let loc = location(py, name)?;
    let timeout = timeout.map(Duration::from_secs_f64);
    let raw = py
        .detach(|| RawArray::open(&loc, None, ro, timeout))
        .map_err(|e| errors::array(py, &e))?;
    as_array(cls, Bound::new(py, ArrayBuffer { raw })?)
}

/// Removes the name of the array `name`; attached arrays stay valid.
#[pyfunction]
pub(crate) fn delete_array(py: Python<'_>, name: &str) -> PyResult<()> {
    let loc = location(py, name)?;
    raw::delete(&loc).map_err(|e| errors::array(py, &e))
}

/// Every named array in the shared-memory directory, as dicts (name, dtype, shape, lifetime).
#[pyfunction]
pub(crate) fn list_arrays(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    let all = raw::list().map_err(|e| errors::error(py, "Error", e))?;
    let out = PyList::empty(py);
    for a in all {
        let d = PyDict::new(py);
        d.set_item("name", a.name.as_str())?;
        d.set_item("dtype", a.dtype.typestr())?;
        d.set_item("shape", a.shape.clone())?;
        d.set_item("persistent", a.lifetime == Lifetime::Persistent)?;
        out.append(d)?;
    }
    Ok(out)
}

#[pymethods]
impl ArrayBuffer {
    /// The name the array was attached by (`file://...` for files).
    #[getter]
    fn name(&self) -> &str {
        self.raw.label()
    }
    /// The numpy type string of the elements.
    #[getter]
    fn dtype(&self) -> &'static str {
        self.raw.dtype().typestr()
    }
    /// The shape.
    #[getter]
    fn shape(&self) -> Vec<usize> {
        self.raw.shape().to_vec()
    }
    /// Whether the mapping is read-only.
    #[getter]
    fn read_only(&self) -> bool {
        self.raw.is_read_only()
    }
    /// Whether the array outlives its users (until deleted).
    #[getter]
    fn persistent(&self) -> bool {
        self.raw.segment().lifetime() == Lifetime::Persistent
    }
    /// `(created_unix_ns, creator_pid)` from the header: tells a segment from a later one
    /// created under the same name.
    #[getter]
    fn identity(&self) -> (u64, u32) {
        let s = self.raw.segment().snapshot();
        (s.created_unix_ns, s.creator_pid)
    }
    /// The address of the first element (for telling a whole array from a view of it).
    #[getter]
    fn address(&self) -> usize {
        self.raw.data_ptr_raw().as_ptr() as usize
    }
    /// Bytes of elements.
    #[getter]
    fn nbytes(&self) -> usize {
        self.raw.len_bytes()
    }
    /// Writes a file-backed array to its file and waits (`msync` + `fsync`).
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.raw.flush())
            .map_err(|e| errors::array(py, &e))
    }
    fn __repr__(&self) -> String {
        format!(
            "<shmbus.ArrayBuffer {:?} dtype={} shape={:?}{}>",
            self.raw.label(),
            self.raw.dtype().typestr(),
            self.raw.shape(),
            if self.raw.is_read_only() {
                " read-only"
            } else {
                ""
            }
        )
    }
}

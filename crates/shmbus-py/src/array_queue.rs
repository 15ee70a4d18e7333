//! Work queues of numpy arrays, on the same segments as Rust's `shmbus::ArrayQueue<M>`: a
//! producer writes an array in place into a loaned slot, a consumer reads it in place through
//! read-only numpy views. The Python package (`shmbus._work.ArrayQueue`) adds metadata dtypes.

use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use numpy::PyArrayDescr;
use pyo3::exceptions::PyBufferError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyType};
use shmbus_core::dtype::Dtype;
use shmbus_core::layout::{Codec, TypeInfo};
use shmbus_core::queue::array::{ArrayItem, ArrayItemLayout};
use shmbus_core::queue::{QueueOptions, RawDelivery, RawQueue, RawReservation};
use shmbus_core::wire::type_name::ARRAY_QUEUE_PREFIX;

use crate::errors;
use crate::view::array_over;
use crate::work::{
    lifetime, name, open_queue, queue_error, reserve_static, stats_dict, take_static,
};

/// Array bytes per item when a creator does not say (Rust's `DEFAULT_ARRAY_BYTES`).
const DEFAULT_ARRAY_BYTES: usize = shmbus::DEFAULT_ARRAY_BYTES;

fn dtype_of(py: Python<'_>, typestr: &str) -> PyResult<Dtype> {
    Dtype::from_typestr(typestr).ok_or_else(|| {
        errors::error(
            py,
            "WrongDtype",
            format!("dtype {typestr:?} is not an array dtype shmbus sends"),
        )
    })
}

#[pyclass(frozen, module = "shmbus._shmbus")]
pub(crate) struct RawArrayQueue {
    pub(crate) raw: Arc<RawQueue>,
    layout: ArrayItemLayout,
}

#[pymethods]
impl RawArrayQueue {
    #[new]
    #[pyo3(signature = (name, type_name, meta_size, capacity=None, array_bytes=None, acknowledged=None, max_deliveries=None, create=true, max_participants=None, mode=0o600, persistent=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        name: &str,
        type_name: &str,
        meta_size: usize,
        capacity: Option<u32>,
        array_bytes: Option<usize>,
        acknowledged: Option<bool>,
        max_deliveries: Option<u32>,
        create: bool,
        max_participants: Option<u32>,
        mode: u32,
        persistent: bool,
    ) -> PyResult<Self> {
        let n = self::name(py, name)?;
        let bad = |what: String| errors::error(py, "InvalidArgument", what);
        let header = ArrayItemLayout::header_size(meta_size)
            .filter(|&h| h <= u32::MAX as usize / 4)
            .ok_or_else(|| bad(format!("metadata of {meta_size} bytes")))?;
        let ty = TypeInfo::new(
            &format!("{ARRAY_QUEUE_PREFIX}{type_name}"),
            header as u64,
            64,
            Codec::Pod,
        )
        .ok_or_else(|| bad(format!("type name {type_name:?} is too long")))?;
        let bytes = array_bytes.or(create.then_some(DEFAULT_ARRAY_BYTES));
        let slot_size = match bytes {
            Some(b) => Some(
                ArrayItemLayout::new(meta_size, b)
                    .and_then(|l| l.slot_size())
                    .and_then(|s| u32::try_from(s).ok())
                    .ok_or_else(|| {
                        bad(format!("array items of {b} bytes (at most about 1 GiB)"))
                    })?,
            ),
            None => None,
        };
        let opts = QueueOptions {
            capacity: if create {
                capacity.or(Some(8))
            } else {
                capacity
            },
            slot_size,
            rows: max_participants,
            acknowledged,
            max_deliveries,
            mode: Some(mode),
            lifetime: Some(lifetime(persistent)),
            ..QueueOptions::default()
        };
        let raw = open_queue(py, &n, &ty, &opts, create)?;
        let layout = ArrayItemLayout::from_slot(meta_size, raw.slot_size()).ok_or_else(|| {
            errors::error(py, "Corrupt", "the queue's slots cannot hold array items")
        })?;
        Ok(RawArrayQueue {
            raw: Arc::new(raw),
            layout,
        })
    }

    /// Loans a free slot for an array of `shape` and `typestr`; returns a writable `cls` array
    /// over it (its `base` is the loan). Waits as `RawWorkQueue.put_bytes`.
    #[pyo3(signature = (cls, shape, typestr, block=true, timeout=None))]
    fn loan<'py>(
        slf: &Bound<'py, Self>,
        cls: &Bound<'py, PyType>,
        shape: Vec<usize>,
        typestr: &str,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let dtype = dtype_of(py, typestr)?;
        let len = this
            .layout
            .check_shape(dtype, &shape)
            .map_err(|e| errors::error(py, "InvalidArgument", e))?;
        let mut raw = reserve_static(py, &this.raw, block, timeout)?;
        let slot = raw.slot();
        let (data, _) = this
            .layout
            .prepare(raw.bytes_mut(), slot, dtype, &shape)
            .map_err(|e| errors::error(py, "InvalidArgument", e))?;
        let ptr = NonNull::new(data.as_mut_ptr()).expect("mapped");
        let loan = Bound::new(
            py,
            ArrayLoan {
                raw: Mutex::new(Some(raw)),
                _queue: this.raw.clone(),
            },
        )?;
        let descr = PyArrayDescr::new(py, typestr)?;
        // SAFETY: the slot lies in the queue's mapping, which the loan (the array's base) keeps
        // alive through its `Arc<RawQueue>`; the slot is RESERVED for this handle's row until
        // the loan is committed or dropped, so no other process reads or writes it meanwhile.
        // Slots are 64-byte aligned.
        unsafe { array_over(cls, descr, &shape, ptr, len, true, loan.into_any()) }
    }

    /// Puts the loaned array `loan` (the array's `base`) in line with `meta` (the metadata
    /// struct's bytes). The array must not be written afterwards: a consumer reads it.
    fn commit(&self, py: Python<'_>, loan: &Bound<'_, ArrayLoan>, meta: &[u8]) -> PyResult<()> {
        if meta.len() != self.layout.meta_size {
            return Err(errors::error(
                py,
                "InvalidArgument",
                format!(
                    "metadata of {} bytes for a queue of {}",
                    meta.len(),
                    self.layout.meta_size
                ),
            ));
        }
        let l = loan.get();
        if !Arc::ptr_eq(&l._queue, &self.raw) {
            return Err(errors::error(
                py,
                "InvalidArgument",
                "the array was loaned from another queue",
            ));
        }
        let mut raw = l
            .raw
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| errors::error(py, "Error", "this loan was already committed"))?;
        let at = shmbus_core::pool::DESCRIPTOR_SIZE;
        raw.bytes_mut()[at..at + meta.len()].copy_from_slice(meta);
        py.detach(|| raw.commit()).map_err(|e| queue_error(py, &e))
    }

    /// Takes the next array as a delivery; waits as `RawWorkQueue.receive`.
    #[pyo3(signature = (block=true, timeout=None))]
    fn receive(
        &self,
        py: Python<'_>,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<ArrayDelivery> {
        let d = take_static(py, &self.raw, block, timeout)?;
        let item = match self.layout.read(d.bytes(), d.slot()) {
            Ok(item) => item,
            Err(e) => {
                let _ = d.refuse();
                return Err(errors::error(py, "Corrupt", e));
            }
        };
        let meta = d.bytes()[item.meta.clone()].to_vec();
        Ok(ArrayDelivery {
            deliveries: d.deliveries(),
            state: Mutex::new(DeliveryState {
                raw: Some(d),
                views: 0,
                deferred: None,
            }),
            item,
            meta,
            _queue: self.raw.clone(),
        })
    }

    /// Closes the queue for everyone: puts fail, gets drain what is left, then fail.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.raw.close().map_err(|e| queue_error(py, &e))
    }

    /// Arrays ready now.
    fn qsize(&self) -> u32 {
        self.raw.len()
    }

    #[getter]
    fn capacity(&self) -> u32 {
        self.raw.config().capacity
    }

    #[getter]
    fn acknowledged(&self) -> bool {
        self.raw.config().acknowledged
    }

    #[getter]
    fn closed(&self) -> bool {
        self.raw.is_closed()
    }

    /// Bytes one array may have at most.
    #[getter]
    fn max_array_bytes(&self) -> usize {
        self.layout.max_bytes
    }

    #[getter]
    fn name(&self) -> &str {
        self.raw.name().as_str()
    }

    #[getter]
    fn created(&self) -> bool {
        self.raw.created()
    }

    /// The queue's counters, as `RawWorkQueue.stats`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        stats_dict(py, &self.raw)
    }
}

/// A loaned slot: the base of the writable array over it. Dropped uncommitted, the slot is
/// given back.
#[pyclass(frozen, module = "shmbus._shmbus")]
pub(crate) struct ArrayLoan {
    // Declared first, so dropped before the queue it borrows.
    raw: Mutex<Option<RawReservation<'static>>>,
    _queue: Arc<RawQueue>,
}

#[pymethods]
impl ArrayLoan {
    /// Whether the loan was committed.
    #[getter]
    fn committed(&self) -> bool {
        self.raw.lock().unwrap_or_else(|p| p.into_inner()).is_none()
    }
}

/// An array taken from a queue, not finished yet. `array(cls)` gives read-only numpy views of
/// its slot; `ack()`/`refuse()` refuse to run while views are alive (`BufferError`), unless
/// `deferred`, when the last view's death runs them. Dropped unfinished: given back in an
/// acknowledged queue, done in an at-most-once one.
#[pyclass(frozen, module = "shmbus._shmbus")]
pub(crate) struct ArrayDelivery {
    // Declared first, so dropped before the queue it borrows.
    state: Mutex<DeliveryState>,
    item: ArrayItem,
    meta: Vec<u8>,
    deliveries: u32,
    _queue: Arc<RawQueue>,
}

/// What a delivery's views and its finishing agree on, under one lock: the delivery is taken
/// out to be finished only while no view is alive.
struct DeliveryState {
    raw: Option<RawDelivery<'static>>,
    views: usize,
    deferred: Option<Finish>,
}

impl DeliveryState {
    fn lock(m: &Mutex<DeliveryState>) -> std::sync::MutexGuard<'_, DeliveryState> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The base of one numpy view of an [`ArrayDelivery`]: keeps the delivery (so its slot) alive.
#[pyclass(frozen, module = "shmbus._shmbus")]
pub(crate) struct ArrayDeliveryView {
    delivery: Py<ArrayDelivery>,
}

impl Drop for ArrayDeliveryView {
    fn drop(&mut self) {
        Python::attach(|py| {
            let d = self.delivery.bind(py).get();
            let due = {
                let mut st = DeliveryState::lock(&d.state);
                st.views = st.views.saturating_sub(1);
                match (st.views, st.deferred) {
                    (0, Some(f)) => st.raw.take().map(|r| (r, f)),
                    _ => None,
                }
            };
            if let Some((r, f)) = due {
                // Nobody to report an error to: a failure leaves the item to the queue's
                // reclaiming (as if this process had died holding it).
                let _ = finish(r, f);
            }
        });
    }
}

/// What to do with a delivery once its last view is gone.
#[derive(Clone, Copy)]
enum Finish {
    Ack,
    Refuse,
}

fn finish(d: RawDelivery<'_>, f: Finish) -> Result<(), shmbus_core::queue::QueueError> {
    match f {
        Finish::Ack => d.ack(),
        Finish::Refuse => d.refuse().map(|_| ()),
    }
}

impl ArrayDelivery {
    fn finish(&self, py: Python<'_>, f: Finish, deferred: bool) -> PyResult<()> {
        let r = {
            let mut st = DeliveryState::lock(&self.state);
            if st.raw.is_none() {
                return Err(pyo3::exceptions::PyRuntimeError::new_err(
                    "this delivery was already acknowledged or refused",
                ));
            }
            if st.views > 0 {
                if deferred {
                    st.deferred = Some(f);
                    return Ok(());
                }
                return Err(PyBufferError::new_err(format!(
                    "cannot finish: {} numpy views of this delivery are alive",
                    st.views
                )));
            }
            st.raw.take().expect("checked above")
        };
        finish(r, f).map_err(|e| queue_error(py, &e))
    }
}

#[pymethods]
impl ArrayDelivery {
    /// A read-only `cls` view of the array (each call makes a new view; every view keeps the
    /// slot held).
    fn array<'py>(slf: &Bound<'py, Self>, cls: &Bound<'py, PyType>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let (ptr, len) = {
            let mut st = DeliveryState::lock(&this.state);
            let d = st
                .raw
                .as_ref()
                .ok_or_else(|| errors::error(py, "Error", "this delivery was finished"))?;
            let data = &d.bytes()[this.item.data.clone()];
            let at = (
                NonNull::new(data.as_ptr().cast_mut()).expect("mapped"),
                data.len(),
            );
            // Counted while the delivery is held under the lock: it cannot be finished
            // between here and the view's creation.
            st.views += 1;
            at
        };
        // On failure the view's Drop (which would uncount it) never runs.
        let owner = Bound::new(
            py,
            ArrayDeliveryView {
                delivery: slf.clone().unbind(),
            },
        )
        .inspect_err(|_| DeliveryState::lock(&this.state).views -= 1)?;
        let descr = PyArrayDescr::new(py, this.item.dtype.typestr())?;
        // SAFETY: the slot lies in the queue's mapping, kept alive by the delivery's
        // `Arc<RawQueue>` (the view's base keeps the delivery alive). The slot is TAKEN by this
        // handle's row until the delivery is finished, and it is finished only once no view is
        // alive (`finish` refuses, or defers to the last view's drop), so nobody writes it
        // while a view can read it. The view is not writeable; slots are 64-byte aligned.
        unsafe {
            array_over(
                cls,
                descr,
                this.item.shape.as_slice(),
                ptr,
                len,
                false,
                owner.into_any(),
            )
        }
    }

    /// The metadata bytes the producer put with the array.
    #[getter]
    fn meta<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.meta)
    }

    /// How many times the array has been delivered, this time included (1: the first).
    #[getter]
    fn deliveries(&self) -> u32 {
        self.deliveries
    }

    /// numpy views of this delivery alive now.
    #[getter]
    fn views(&self) -> usize {
        DeliveryState::lock(&self.state).views
    }

    /// Whether neither `ack()` nor `refuse()` has run yet.
    #[getter]
    fn pending(&self) -> bool {
        DeliveryState::lock(&self.state).raw.is_some()
    }

    /// The array is done: its slot is free again. `BufferError` while views are alive, unless
    /// `deferred` (then it runs when the last view dies).
    #[pyo3(signature = (deferred=false))]
    fn ack(&self, py: Python<'_>, deferred: bool) -> PyResult<()> {
        self.finish(py, Finish::Ack, deferred)
    }

    /// Gives the array back, to be delivered again (or dead-lettered at the limit); as `ack`.
    #[pyo3(signature = (deferred=false))]
    fn refuse(&self, py: Python<'_>, deferred: bool) -> PyResult<()> {
        self.finish(py, Finish::Refuse, deferred)
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RawArrayQueue>()?;
    m.add_class::<ArrayLoan>()?;
    m.add_class::<ArrayDelivery>()?;
    m.add_class::<ArrayDeliveryView>()?;
    Ok(())
}

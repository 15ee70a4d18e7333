//! Work queues, shared values, barriers and shared state from Python, on the same segments as
//! Rust's `shmbus::SerdeQueue<Vec<u8>>`, `shmbus::Value<T>`, `shmbus::Barrier` and the raw bytes
//! of a shared state. The Python package (`shmbus._work`) adds pickling and typecodes.
//!
//! Every wait releases the GIL and lasts at most 50 ms before Python runs its signal handlers,
//! so Ctrl-C interrupts a blocked `get`, `put`, `wait` or `wait_changed`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use shmbus_core::layout::{short_type_name, Codec, TypeInfo};
use shmbus_core::name::Name;
use shmbus_core::queue::{
    QueueError, QueueOpenError, QueueOptions, RawDelivery, RawQueue, RawReservation,
};
use shmbus_core::segment::Lifetime;
use shmbus_core::shared::{RawShared, SharedError};
use shmbus_core::value::{BarrierError, BarrierOpenError, RawBarrier, RawValue};
use shmbus_core::wire::frame;

use crate::errors;
use crate::sync::{deadline, expired, slice};

pub(crate) fn lifetime(persistent: bool) -> Lifetime {
    if persistent {
        Lifetime::Persistent
    } else {
        Lifetime::Scoped
    }
}

pub(crate) fn name(py: Python<'_>, name: &str) -> PyResult<Name> {
    Name::new(name).map_err(|e| errors::name(py, &e))
}

// ---------------------------------------------------------------------------------------------
// Queue

/// The item type a Python queue records: that of Rust's `SerdeQueue<Vec<u8>>`, whose items are
/// postcard-encoded byte vectors (a varint length, then the bytes) in a length-prefixed frame.
fn bytes_item_type() -> TypeInfo {
    TypeInfo::new(short_type_name::<Vec<u8>>(), 0, 1, Codec::Postcard)
        .expect("a short type name fits")
}

fn varint_len(mut n: usize, out: &mut [u8]) -> usize {
    let mut i = 0;
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out[i] = b;
            return i + 1;
        }
        out[i] = b | 0x80;
        i += 1;
    }
}

/// The bytes of a postcard-encoded `Vec<u8>`.
fn decode_bytes(m: &[u8]) -> Result<&[u8], String> {
    let (mut n, mut shift) = (0usize, 0u32);
    for (i, b) in m.iter().enumerate() {
        if shift > 63 {
            break;
        }
        n |= usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            let body = &m[i + 1..];
            return body
                .get(..n)
                .ok_or_else(|| format!("item of {n} bytes in a frame of {}", body.len()));
        }
    }
    Err("bad length prefix".into())
}

pub(crate) fn queue_error(py: Python<'_>, e: &QueueError) -> PyErr {
    match e {
        QueueError::Timeout | QueueError::Empty => errors::error(py, "Empty", e),
        QueueError::Full => errors::error(py, "Full", e),
        QueueError::Closed => errors::error(py, "Closed", e),
        QueueError::Corrupt(_) => errors::error(py, "Corrupt", e),
        QueueError::UsedAfterFork(f) => errors::fork(py, f),
        QueueError::Lock(shmbus_core::sync::LockError::NotRecoverable) => {
            errors::error(py, "NotRecoverable", e)
        }
        _ => errors::error(py, "Error", e),
    }
}

/// A named bounded multi-producer, multi-consumer work queue of byte strings: Rust's
/// `shmbus::SerdeQueue<Vec<u8>>` of the same name.
#[pyclass(frozen, module = "shmbus._shmbus")]
pub(crate) struct RawWorkQueue {
    pub(crate) raw: Arc<RawQueue>,
}

/// An item taken from an acknowledged queue, not yet acknowledged or refused. Dropped without
/// either, it is given back (refused).
#[pyclass(frozen, module = "shmbus._shmbus")]
pub(crate) struct RawDeliveryHandle {
    // Declared first, so dropped before the queue it borrows.
    raw: Mutex<Option<RawDelivery<'static>>>,
    data: Py<PyBytes>,
    deliveries: u32,
    _queue: Arc<RawQueue>,
}

/// Runs `once(slice)` in slices of at most 50 ms with the GIL released, running signal handlers
/// between them, until it succeeds, fails otherwise than with `again`, or `timeout` seconds
/// pass (then `kind` with `why`); a single non-waiting try if not `block`.
fn in_slices<T: Send>(
    py: Python<'_>,
    block: bool,
    timeout: Option<f64>,
    again: QueueError,
    (kind, why): (&str, &str),
    once: impl Fn(Duration) -> Result<T, QueueError> + Sync,
) -> PyResult<T> {
    if !block {
        return once(Duration::ZERO).map_err(|e| queue_error(py, &e));
    }
    let d = deadline(timeout);
    loop {
        let s = slice(d);
        match py.detach(|| once(s)) {
            Ok(x) => return Ok(x),
            Err(QueueError::Timeout) => {}
            Err(e) if std::mem::discriminant(&e) == std::mem::discriminant(&again) => {}
            Err(e) => return Err(queue_error(py, &e)),
        }
        py.check_signals()?;
        if expired(d) {
            return Err(errors::error(py, kind, why));
        }
    }
}

/// Takes the next item of `raw` (see [`in_slices`]; `Empty` after the timeout).
pub(crate) fn take_static(
    py: Python<'_>,
    raw: &Arc<RawQueue>,
    block: bool,
    timeout: Option<f64>,
) -> PyResult<RawDelivery<'static>> {
    let q: &RawQueue = raw;
    let why = ("Empty", "timed out waiting for an item");
    in_slices(py, block, timeout, QueueError::Empty, why, |t| {
        q.take(Some(t)).map(|d| {
            // SAFETY: the delivery borrows the `RawQueue` inside an `Arc`, whose address is
            // stable; every holder of the 'static delivery (a `RawDeliveryHandle` or an
            // `ArrayDelivery`) also holds a clone of that `Arc` and drops the delivery first.
            unsafe { std::mem::transmute::<RawDelivery<'_>, RawDelivery<'static>>(d) }
        })
    })
}

/// Reserves a slot of `raw` (see [`in_slices`]; `Full` after the timeout).
pub(crate) fn reserve_static(
    py: Python<'_>,
    raw: &Arc<RawQueue>,
    block: bool,
    timeout: Option<f64>,
) -> PyResult<RawReservation<'static>> {
    let q: &RawQueue = raw;
    let why = ("Full", "timed out waiting for a free slot");
    in_slices(py, block, timeout, QueueError::Full, why, |t| {
        q.reserve(Some(t)).map(|r| {
            // SAFETY: as in `take_static`: the reservation borrows the `RawQueue` inside an
            // `Arc`; its holder (an `ArrayLoan`) keeps a clone and drops the reservation first.
            unsafe { std::mem::transmute::<RawReservation<'_>, RawReservation<'static>>(r) }
        })
    })
}

/// Opens (or, with `create`, opens or creates) the queue `n` of items `ty`.
pub(crate) fn open_queue(
    py: Python<'_>,
    n: &Name,
    ty: &TypeInfo,
    opts: &QueueOptions,
    create: bool,
) -> PyResult<RawQueue> {
    py.detach(|| {
        if create {
            RawQueue::open_or_create(n, ty, opts)
        } else {
            RawQueue::open(n, ty, opts)
        }
    })
    .map_err(|e| match &e {
        QueueOpenError::Segment(s) => errors::segment(py, s),
        QueueOpenError::Config(_) | QueueOpenError::Mismatch { .. } => {
            errors::error(py, "InvalidArgument", &e)
        }
        QueueOpenError::TooManyParticipants { .. } => errors::error(py, "OutOfSpace", &e),
        QueueOpenError::Corrupt { .. } => errors::error(py, "Corrupt", &e),
        _ => errors::error(py, "Error", &e),
    })
}

/// A queue's counters as a dict: put, taken, done, lost, redelivered, dead_lettered,
/// abandoned, repairs.
pub(crate) fn stats_dict<'py>(
    py: Python<'py>,
    raw: &RawQueue,
) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
    let s = raw.stats();
    let d = pyo3::types::PyDict::new(py);
    d.set_item("put", s.put)?;
    d.set_item("taken", s.taken)?;
    d.set_item("done", s.done)?;
    d.set_item("lost", s.lost)?;
    d.set_item("redelivered", s.redelivered)?;
    d.set_item("dead_lettered", s.dead_lettered)?;
    d.set_item("abandoned", s.abandoned)?;
    d.set_item("repairs", s.repairs)?;
    Ok(d)
}

impl RawWorkQueue {
    fn take(
        &self,
        py: Python<'_>,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<RawDelivery<'static>> {
        take_static(py, &self.raw, block, timeout)
    }

    fn decode<'py>(py: Python<'py>, d: &RawDelivery<'_>) -> PyResult<Bound<'py, PyBytes>> {
        let body = frame::message(d.bytes())
            .map_err(|e| e.to_string())
            .and_then(decode_bytes)
            .map_err(|e| errors::error(py, "Corrupt", e))?;
        Ok(PyBytes::new(py, body))
    }
}

#[pymethods]
impl RawWorkQueue {
    #[new]
    #[pyo3(signature = (name, capacity=None, item_size=None, acknowledged=None, max_deliveries=None, create=true, max_participants=None, mode=0o600, persistent=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        name: &str,
        capacity: Option<u32>,
        item_size: Option<u32>,
        acknowledged: Option<bool>,
        max_deliveries: Option<u32>,
        create: bool,
        max_participants: Option<u32>,
        mode: u32,
        persistent: bool,
    ) -> PyResult<Self> {
        let n = self::name(py, name)?;
        // Room for the frame's length prefix and the item's own (at most 5 bytes).
        let slot_size = item_size.map(|s| s.saturating_add(16));
        let opts = QueueOptions {
            capacity: if create {
                capacity.or(Some(64))
            } else {
                capacity
            },
            slot_size: if create {
                slot_size.or(Some(4096 + 16))
            } else {
                slot_size.or(Some(1))
            },
            rows: max_participants,
            acknowledged,
            max_deliveries,
            mode: Some(mode),
            lifetime: Some(lifetime(persistent)),
            ..QueueOptions::default()
        };
        let raw = open_queue(py, &n, &bytes_item_type(), &opts, create)?;
        Ok(RawWorkQueue { raw: Arc::new(raw) })
    }

    /// Puts `data` (bytes-like): waits for a free slot at most `timeout` seconds (`None`: no
    /// limit); raises `Full` if none became free (at once if `block` is false), `Closed`.
    #[pyo3(signature = (data, block=true, timeout=None))]
    fn put_bytes(
        &self,
        py: Python<'_>,
        data: &[u8],
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        let room = frame::capacity(self.raw.slot_size()).saturating_sub(10);
        if data.len() > room {
            return Err(errors::error(
                py,
                "InvalidArgument",
                format!(
                    "an item of {} bytes does not fit the queue's items of {room} bytes \
                     (item_size)",
                    data.len()
                ),
            ));
        }
        let q: &RawQueue = &self.raw;
        let why = ("Full", "timed out waiting for a free slot");
        in_slices(py, block, timeout, QueueError::Full, why, |t| {
            let mut r = q.reserve(Some(t))?;
            let slot = r.bytes_mut();
            let body = frame::body_mut(slot);
            let k = varint_len(data.len(), body);
            body[k..k + data.len()].copy_from_slice(data);
            frame::set_len(slot, k + data.len()).map_err(|e| QueueError::Corrupt(e.to_string()))?;
            r.commit()
        })
    }

    /// Takes the next item and returns its bytes (acknowledged at once in an acknowledged
    /// queue); raises `Empty` after `timeout` seconds (at once if `block` is false), `Closed`
    /// once the queue is closed and drained.
    #[pyo3(signature = (block=true, timeout=None))]
    fn get_bytes<'py>(
        &self,
        py: Python<'py>,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let d = self.take(py, block, timeout)?;
        let b = Self::decode(py, &d);
        if b.is_err() {
            let _ = d.refuse();
        } else {
            d.ack().map_err(|e| queue_error(py, &e))?;
        }
        b
    }

    /// Takes the next item as a delivery to `ack()` or `refuse()`; waits as `get_bytes`.
    #[pyo3(signature = (block=true, timeout=None))]
    fn receive(
        &self,
        py: Python<'_>,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<RawDeliveryHandle> {
        let d = self.take(py, block, timeout)?;
        let data = match Self::decode(py, &d) {
            Ok(b) => b.unbind(),
            Err(e) => {
                let _ = d.refuse();
                return Err(e);
            }
        };
        Ok(RawDeliveryHandle {
            deliveries: d.deliveries(),
            raw: Mutex::new(Some(d)),
            data,
            _queue: self.raw.clone(),
        })
    }

    /// Closes the queue for everyone: puts fail, gets drain what is left, then fail.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.raw.close().map_err(|e| queue_error(py, &e))
    }

    /// Items ready now.
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

    /// Bytes an item may hold at most.
    #[getter]
    fn item_size(&self) -> usize {
        frame::capacity(self.raw.slot_size()).saturating_sub(10)
    }

    #[getter]
    fn name(&self) -> &str {
        self.raw.name().as_str()
    }

    #[getter]
    fn created(&self) -> bool {
        self.raw.created()
    }

    /// The queue's counters, a dict: put, taken, done, lost, redelivered, dead_lettered,
    /// abandoned, repairs.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        stats_dict(py, &self.raw)
    }
}

#[pymethods]
impl RawDeliveryHandle {
    /// The item's bytes.
    #[getter]
    fn data(&self, py: Python<'_>) -> Py<PyBytes> {
        self.data.clone_ref(py)
    }

    /// How many times the item has been delivered, this time included (1: the first).
    #[getter]
    fn deliveries(&self) -> u32 {
        self.deliveries
    }

    /// Whether neither `ack()` nor `refuse()` was called yet.
    #[getter]
    fn pending(&self) -> bool {
        self.raw.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// The item is done (its slot is freed).
    fn ack(&self, py: Python<'_>) -> PyResult<()> {
        let d = self.raw.lock().unwrap_or_else(|p| p.into_inner()).take();
        match d {
            Some(d) => d.ack().map_err(|e| queue_error(py, &e)),
            None => Err(pyo3::exceptions::PyRuntimeError::new_err(
                "this delivery was already acknowledged or refused",
            )),
        }
    }

    /// Gives the item back to be delivered again (or dead-lettered at the delivery limit).
    fn refuse(&self, py: Python<'_>) -> PyResult<()> {
        let d = self.raw.lock().unwrap_or_else(|p| p.into_inner()).take();
        match d {
            Some(d) => d.refuse().map(|_| ()).map_err(|e| queue_error(py, &e)),
            None => Err(pyo3::exceptions::PyRuntimeError::new_err(
                "this delivery was already acknowledged or refused",
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Value

/// The Rust type a typecode stands for, as the segment records it.
fn value_type(py: Python<'_>, typecode: &str) -> PyResult<(TypeInfo, usize)> {
    Ok(match typecode {
        "b" => (TypeInfo::pod::<i8>(), 1),
        "B" => (TypeInfo::pod::<u8>(), 1),
        "h" => (TypeInfo::pod::<i16>(), 2),
        "H" => (TypeInfo::pod::<u16>(), 2),
        "i" => (TypeInfo::pod::<i32>(), 4),
        "I" => (TypeInfo::pod::<u32>(), 4),
        "l" | "q" => (TypeInfo::pod::<i64>(), 8),
        "L" | "Q" => (TypeInfo::pod::<u64>(), 8),
        "f" => (TypeInfo::pod::<f32>(), 4),
        "d" => (TypeInfo::pod::<f64>(), 8),
        _ => {
            return Err(errors::error(
                py,
                "WrongDtype",
                format!("typecode {typecode:?}: shmbus.Value takes b B h H i I l L q Q f d"),
            ))
        }
    })
}

/// A named scalar: Rust's `shmbus::Value<T>` of the same name (bytes here; `shmbus.Value`
/// converts).
#[pyclass(frozen, module = "shmbus._shmbus")]
pub(crate) struct RawValueHandle {
    raw: RawValue,
    size: usize,
}

#[pymethods]
impl RawValueHandle {
    #[new]
    #[pyo3(signature = (name, typecode, initial, create=true, mode=0o600, persistent=false))]
    fn new(
        py: Python<'_>,
        name: &str,
        typecode: &str,
        initial: &[u8],
        create: bool,
        mode: u32,
        persistent: bool,
    ) -> PyResult<Self> {
        let n = self::name(py, name)?;
        let (ty, size) = value_type(py, typecode)?;
        if initial.len() != size {
            return Err(errors::error(py, "InvalidArgument", "initial: wrong size"));
        }
        let raw = py
            .detach(|| {
                if create {
                    RawValue::open_or_create(&n, &ty, initial, mode, lifetime(persistent))
                } else {
                    RawValue::open(&n, &ty)
                }
            })
            .map_err(|e| errors::segment(py, &e))?;
        Ok(RawValueHandle { raw, size })
    }

    fn load<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let mut b = vec![0u8; self.size];
        self.raw
            .load(&mut b)
            .map_err(|e| errors::error(py, "Error", e))?;
        Ok(PyBytes::new(py, &b))
    }

    fn store(&self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        if data.len() != self.size {
            return Err(errors::error(py, "InvalidArgument", "wrong size"));
        }
        self.raw
            .store(data)
            .map_err(|e| errors::error(py, "Error", e))
    }

    /// Adds `delta` (two's complement, wrapping at the value's width) in one atomic operation;
    /// returns the previous bits.
    fn fetch_add(&self, py: Python<'_>, delta: i128) -> PyResult<u64> {
        self.raw
            .fetch_add(delta as u64)
            .ok_or_else(|| errors::error(py, "WrongDtype", "fetch_add needs an integer value"))
    }

    /// Replaces the bytes by `f(old_bytes)` atomically (a compare-and-swap loop: `f` may run
    /// more than once); returns the new bytes.
    fn update<'py>(&self, py: Python<'py>, f: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        let mut err = None;
        let mut out = vec![0u8; self.size];
        self.raw
            .update(|old, new| {
                let r = f
                    .call1((PyBytes::new(py, old),))
                    .and_then(|v| v.extract::<Vec<u8>>());
                match r {
                    Ok(v) if v.len() == new.len() => {
                        new.copy_from_slice(&v);
                        err = None;
                    }
                    Ok(_) => {
                        new.copy_from_slice(old);
                        err = Some(errors::error(py, "InvalidArgument", "wrong size"));
                    }
                    Err(e) => {
                        new.copy_from_slice(old);
                        err = Some(e);
                    }
                }
                out.copy_from_slice(new);
            })
            .map_err(|e| errors::error(py, "Error", e))?;
        match err {
            Some(e) => Err(e),
            None => Ok(PyBytes::new(py, &out)),
        }
    }

    #[getter]
    fn name(&self) -> &str {
        self.raw.name().as_str()
    }
}

// ---------------------------------------------------------------------------------------------
// Barrier

/// A named barrier for `parties` processes: Rust's `shmbus::Barrier` of the same name.
#[pyclass(frozen, module = "shmbus._shmbus")]
pub(crate) struct Barrier {
    raw: RawBarrier,
}

fn barrier_error(py: Python<'_>, e: &BarrierError) -> PyErr {
    match e {
        BarrierError::PartyDied => errors::error(py, "BrokenBarrier", e),
        BarrierError::Timeout => errors::error(py, "Timeout", e),
        BarrierError::UsedAfterFork(f) => errors::fork(py, f),
        _ => errors::error(py, "Error", e),
    }
}

#[pymethods]
impl Barrier {
    #[new]
    #[pyo3(signature = (name, parties, mode=0o600, persistent=false))]
    fn new(
        py: Python<'_>,
        name: &str,
        parties: u32,
        mode: u32,
        persistent: bool,
    ) -> PyResult<Self> {
        let n = self::name(py, name)?;
        let raw = py
            .detach(|| RawBarrier::open_or_create(&n, parties, mode, lifetime(persistent)))
            .map_err(|e| match &e {
                BarrierOpenError::Segment(s) => errors::segment(py, s),
                BarrierOpenError::Full { .. } => errors::error(py, "OutOfSpace", &e),
                _ => errors::error(py, "Error", &e),
            })?;
        Ok(Barrier { raw })
    }

    /// Arrives and waits for every party, at most `timeout` seconds (`None`: no limit).
    /// Returns 0 in exactly one party per generation (the last to arrive) and 1 in the others
    /// (the Rust barrier tells who completed the generation, not the order of arrival). Raises
    /// `BrokenBarrier` when a party died before arriving, `Timeout` (this arrival withdrawn).
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<u32> {
        let d = deadline(timeout);
        loop {
            let s = slice(d);
            // A slice that times out withdraws this arrival; the next slice arrives again, so
            // the generation completes in whichever slice sees every party.
            match py.detach(|| self.raw.wait(Some(s))) {
                Ok(last) => return Ok(if last { 0 } else { 1 }),
                Err(BarrierError::Timeout) => {}
                Err(e) => return Err(barrier_error(py, &e)),
            }
            py.check_signals()?;
            if expired(d) {
                return Err(barrier_error(py, &BarrierError::Timeout));
            }
        }
    }

    #[getter]
    fn parties(&self) -> u32 {
        self.raw.parties()
    }

    /// Parties waiting now (a snapshot).
    #[getter]
    fn n_waiting(&self) -> u32 {
        self.raw.arrived()
    }

    /// Generations completed or broken so far.
    #[getter]
    fn generation(&self) -> u32 {
        self.raw.generation()
    }

    #[getter]
    fn name(&self) -> &str {
        self.raw.name().as_str()
    }

    fn __repr__(&self) -> String {
        format!(
            "shmbus.Barrier({:?}, parties={})",
            self.raw.name().as_str(),
            self.raw.parties()
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state

/// What a Python shared state records as its type: pickled bytes.
fn pickle_type() -> TypeInfo {
    TypeInfo::new("python-pickle", 0, 1, Codec::Bytes).expect("a short name")
}

fn shared_error(py: Python<'_>, e: &SharedError) -> PyErr {
    match e {
        SharedError::Timeout => errors::error(py, "Timeout", e),
        SharedError::TooLarge { .. } => errors::error(py, "OutOfSpace", e),
        SharedError::Corrupt(_) => errors::error(py, "Corrupt", e),
        _ => errors::error(py, "Error", e),
    }
}

/// A named, versioned state of at most `capacity` bytes (`shmbus.Shared` and `shmbus.Dict`
/// pickle into it).
#[pyclass(frozen, module = "shmbus._shmbus")]
pub(crate) struct RawSharedHandle {
    raw: RawShared,
}

#[pymethods]
impl RawSharedHandle {
    #[new]
    #[pyo3(signature = (name, capacity, initial, create=true, mode=0o600, persistent=false))]
    fn new(
        py: Python<'_>,
        name: &str,
        capacity: usize,
        initial: &[u8],
        create: bool,
        mode: u32,
        persistent: bool,
    ) -> PyResult<Self> {
        let n = self::name(py, name)?;
        let ty = pickle_type();
        let raw = py
            .detach(|| {
                if create {
                    RawShared::open_or_create(
                        &n,
                        &ty,
                        capacity,
                        initial,
                        mode,
                        lifetime(persistent),
                    )
                } else {
                    RawShared::open(&n, &ty)
                }
            })
            .map_err(|e| errors::segment(py, &e))?;
        Ok(RawSharedHandle { raw })
    }

    /// `(bytes, version)`: a consistent snapshot, without the lock.
    fn read<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let mut b = Vec::new();
        let v = py
            .detach(|| self.raw.read(&mut b))
            .map_err(|e| shared_error(py, &e))?;
        PyTuple::new(
            py,
            [
                PyBytes::new(py, &b).into_any(),
                v.into_pyobject(py)?.into_any(),
            ],
        )
    }

    /// Under the lock, stores `f(old_bytes)` as the next version and returns that version. An
    /// exception from `f` changes nothing and propagates.
    fn update(&self, py: Python<'_>, f: Py<PyAny>) -> PyResult<u64> {
        let r = py.detach(|| {
            self.raw.update(|old| {
                Python::attach(|py| {
                    f.bind(py)
                        .call1((PyBytes::new(py, old),))
                        .and_then(|v| v.extract::<Vec<u8>>())
                })
            })
        });
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(shared_error(py, &e)),
        }
    }

    /// The current version (0: the initial state; every update adds 1).
    #[getter]
    fn version(&self) -> u64 {
        self.raw.version()
    }

    #[getter]
    fn capacity(&self) -> usize {
        self.raw.capacity()
    }

    /// Waits until the version differs from `version`, at most `timeout` seconds (`None`: no
    /// limit); returns the newer version, raises `Timeout`.
    #[pyo3(signature = (version, timeout=None))]
    fn wait_changed(&self, py: Python<'_>, version: u64, timeout: Option<f64>) -> PyResult<u64> {
        let d = deadline(timeout);
        loop {
            let s = slice(d);
            match py.detach(|| self.raw.wait_changed(version, Some(s))) {
                Ok(v) => return Ok(v),
                Err(SharedError::Timeout) => {}
                Err(e) => return Err(shared_error(py, &e)),
            }
            py.check_signals()?;
            if expired(d) {
                return Err(shared_error(py, &SharedError::Timeout));
            }
        }
    }

    #[getter]
    fn name(&self) -> &str {
        self.raw.name().as_str()
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RawWorkQueue>()?;
    m.add_class::<RawDeliveryHandle>()?;
    m.add_class::<RawValueHandle>()?;
    m.add_class::<Barrier>()?;
    m.add_class::<RawSharedHandle>()?;
    Ok(())
}

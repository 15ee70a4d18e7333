//! Topics from Python: array topics (numpy arrays in pool blocks), Pod topics (numpy
//! structured dtypes laid out like `#[repr(C)]` structs) and bytes topics (postcard `Vec<u8>`,
//! the encoding of Rust's `serde_publisher::<Vec<u8>>`).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use numpy::PyArrayDescr;
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::MutexExt;
use pyo3::types::{PyBytes, PyType};
use shmbus::RecvError;
use shmbus_core::dtype::Dtype;
use shmbus_core::layout::{Codec, TypeInfo};
use shmbus_core::name::Name;
use shmbus_core::pool::{
    BlockLoan, BlockReceiveError, BlockReceived, DetachedBlock, PoolOptions, PoolPublisher,
    PoolSubscriber, DESCRIPTOR_SIZE,
};
use shmbus_core::ring::Overflow;
use shmbus_core::topic::{
    Copied, LoanError, PublishError, PublishManyError, RawPublisher, RawSubscriber, RawTopic,
    ReceiveError, Received, TopicOptions,
};
use shmbus_core::wire::{frame, type_name::ARRAY_TOPIC_PREFIX};

use crate::errors;
use crate::view::array_over;

/// How long one wait lasts before Python gets to run its signal handlers (Ctrl-C).
const SLICE: Duration = Duration::from_millis(50);

/// Topic settings from Python keyword arguments.
#[derive(Clone, Debug, FromPyObject)]
pub(crate) struct Qos {
    capacity: Option<u32>,
    overflow: Option<String>,
    max_subscribers: Option<u32>,
    max_publishers: Option<u32>,
    max_held: Option<u32>,
    timestamps: Option<bool>,
    mode: Option<u32>,
    slot_size: Option<u32>,
    history: u32,
    publish_timeout: Option<f64>,
}

impl Qos {
    fn options(&self, py: Python<'_>) -> PyResult<TopicOptions> {
        let overflow = match self.overflow.as_deref() {
            None => None,
            Some("overwrite") => Some(Overflow::Overwrite),
            Some("backpressure") | Some("back-pressure") => Some(Overflow::BackPressure),
            Some(o) => {
                return Err(errors::error(
                    py,
                    "InvalidArgument",
                    format!("overflow {o:?}: 'overwrite' or 'backpressure'"),
                ))
            }
        };
        Ok(TopicOptions {
            capacity: self.capacity,
            slot_size: self.slot_size,
            max_subscribers: self.max_subscribers,
            max_publishers: self.max_publishers,
            max_held: self.max_held,
            overflow,
            timestamps: self.timestamps,
            mode: self.mode,
            ..TopicOptions::default()
        })
    }
    fn timeout(&self) -> Option<Duration> {
        self.publish_timeout.map(Duration::from_secs_f64)
    }
}

fn type_info(
    py: Python<'_>,
    name: &str,
    size: u64,
    align: u64,
    codec: Codec,
) -> PyResult<TypeInfo> {
    TypeInfo::new(name, size, align, codec).ok_or_else(|| {
        errors::error(
            py,
            "InvalidArgument",
            format!("type name {name:?}: at most {} bytes", TypeInfo::MAX_NAME),
        )
    })
}

fn open_topic(
    py: Python<'_>,
    name: &str,
    info: &TypeInfo,
    opts: &TopicOptions,
) -> PyResult<Arc<RawTopic>> {
    let n = Name::new(name).map_err(|e| errors::name(py, &e))?;
    py.detach(|| RawTopic::open_or_create(&n, info, opts))
        .map_err(|e| errors::topic(py, &e))
}

/// Locks `m` (releasing the GIL while it waits), refusing a closed handle.
fn locked<'a, T>(
    py: Python<'_>,
    m: &'a Mutex<Option<T>>,
    what: &str,
) -> PyResult<MutexGuard<'a, Option<T>>> {
    let g = m.lock_py_attached(py).unwrap_or_else(|p| p.into_inner());
    if g.is_none() {
        return Err(errors::error(py, "Error", format!("this {what} is closed")));
    }
    Ok(g)
}

/// Runs `attempt` (a wait of at most `SLICE`) with the GIL released until it yields something or
/// `timeout` passes, checking for signals between slices so that Ctrl-C interrupts a wait.
fn wait<T: Send>(
    py: Python<'_>,
    timeout: Option<f64>,
    mut attempt: impl FnMut(Duration) -> Result<Option<T>, RecvError> + Send,
) -> PyResult<T> {
    let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
    loop {
        let slice = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).min(SLICE),
            None => SLICE,
        };
        match py.detach(|| attempt(slice)) {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => return Err(errors::recv(py, &e)),
        }
        py.check_signals()?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(errors::recv(py, &RecvError::Timeout));
        }
    }
}

fn receive_error(e: ReceiveError) -> RecvError {
    match e {
        ReceiveError::TooManyHeld(n) => RecvError::TooManyHeld(n),
        ReceiveError::Corrupt { reason, .. } => RecvError::Corrupt(reason),
        ReceiveError::UsedAfterFork(_) => RecvError::UsedAfterFork,
    }
}

// ---------------------------------------------------------------------------------------------
// Array topics

/// Publishes numpy arrays through an array topic: `loan` a block, fill the returned array in
/// place, `publish` it with its metadata bytes.
#[pyclass(frozen, module = "shmbus._shmbus")]
pub(crate) struct ArrayPublisher {
    inner: Mutex<Option<PoolPublisher>>,
    timeout: Option<Duration>,
    meta_size: usize,
    name: String,
    type_name: String,
    /// Loan objects alive (each may back a numpy array over a block of this pool).
    loans: Arc<AtomicUsize>,
}

/// A block on loan: the base of the numpy array `loan` returned.
#[pyclass(frozen, module = "shmbus._shmbus")]
pub(crate) struct Loan {
    publisher: Py<ArrayPublisher>,
    raw: Mutex<Option<BlockLoan>>,
    loans: Arc<AtomicUsize>,
}

impl Drop for Loan {
    fn drop(&mut self) {
        if let Some(raw) = self.raw.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            Python::attach(|py| {
                let p = self.publisher.bind(py).get();
                let mut g = p
                    .inner
                    .lock_py_attached(py)
                    .unwrap_or_else(|e| e.into_inner());
                if let Some(pool) = g.as_mut() {
                    pool.cancel(raw);
                }
            });
        }
        self.loans.fetch_sub(1, Ordering::AcqRel);
    }
}

#[pymethods]
impl ArrayPublisher {
    #[new]
    #[pyo3(signature = (name, type_name, meta_size, qos, pool_max_bytes=None, pool_blocks_per_segment=None, pool_history=None))]
    // The Python constructor's keywords, one argument each.
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        name: &str,
        type_name: &str,
        meta_size: usize,
        qos: Qos,
        pool_max_bytes: Option<u64>,
        pool_blocks_per_segment: Option<u32>,
        pool_history: Option<u32>,
    ) -> PyResult<Self> {
        let full = format!("{ARRAY_TOPIC_PREFIX}{type_name}");
        let size = (DESCRIPTOR_SIZE + meta_size) as u64;
        let info = type_info(py, &full, size, 64, Codec::Pod)?;
        let mut opts = qos.options(py)?;
        opts.max_publishers = Some(1);
        opts.slot_size = Some(size as u32);
        let topic = open_topic(py, name, &info, &opts)?;
        let mut pool_opts = PoolOptions::default();
        if let Some(b) = pool_max_bytes {
            pool_opts.max_bytes = b;
        }
        if let Some(n) = pool_blocks_per_segment {
            pool_opts.blocks_per_segment = n;
        }
        if let Some(n) = pool_history {
            pool_opts.history = n;
        }
        let pool = py
            .detach(|| PoolPublisher::new(topic, pool_opts))
            .map_err(|e| errors::topic(py, &e))?;
        Ok(ArrayPublisher {
            inner: Mutex::new(Some(pool)),
            timeout: qos.timeout(),
            meta_size,
            name: name.to_owned(),
            type_name: full,
            loans: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Loans a block for an array of `shape` and `typestr`; returns a writable `cls` array over
    /// it (its `base` is the loan). Its contents are an earlier array's: overwrite them.
    fn loan<'py>(
        slf: &Bound<'py, Self>,
        cls: &Bound<'py, PyType>,
        shape: Vec<usize>,
        typestr: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let dtype = Dtype::from_typestr(typestr).ok_or_else(|| {
            errors::error(
                py,
                "WrongDtype",
                format!("dtype {typestr:?} is not an array dtype shmbus sends"),
            )
        })?;
        let timeout = this.timeout;
        let mut g = locked(py, &this.inner, "publisher")?;
        let pool = g.as_mut().expect("checked open");
        let raw = py
            .detach(|| pool.loan(dtype, &shape, timeout))
            .map_err(|e| errors::pool_loan(py, &e))?;
        let (block, _) = pool.parts_mut(&raw);
        let (ptr, len) = (
            NonNull::new(block.as_mut_ptr()).expect("mapped"),
            block.len(),
        );
        drop(g);
        this.loans.fetch_add(1, Ordering::AcqRel);
        let loan = Bound::new(
            py,
            Loan {
                publisher: slf.clone().unbind(),
                raw: Mutex::new(Some(raw)),
                loans: this.loans.clone(),
            },
        )?;
        let descr = PyArrayDescr::new(py, typestr)?;
        // SAFETY: the block lies in a pool segment the publisher keeps mapped while it exists;
        // the loan (the array's base) keeps the publisher object alive, and `close` refuses to
        // drop the pool while any loan object lives. Blocks are page-aligned.
        unsafe { array_over(cls, descr, &shape, ptr, len, true, loan.into_any()) }
    }

    /// Publishes the loaned array with `meta` (the metadata struct's bytes); returns its
    /// sequence number. The array must not be written afterwards: subscribers read it.
    fn publish(&self, py: Python<'_>, loan: &Bound<'_, Loan>, meta: &[u8]) -> PyResult<u64> {
        if meta.len() != self.meta_size {
            return Err(errors::error(
                py,
                "InvalidArgument",
                format!(
                    "metadata of {} bytes for a topic of {}",
                    meta.len(),
                    self.meta_size
                ),
            ));
        }
        let l = loan.get();
        let mut slot = l.raw.lock().unwrap_or_else(|p| p.into_inner());
        let raw = slot
            .take()
            .ok_or_else(|| errors::error(py, "Error", "this loan was already published"))?;
        let mut g = locked(py, &self.inner, "publisher")?;
        let pool = g.as_mut().expect("checked open");
        let (_, m) = pool.parts_mut(&raw);
        m[..meta.len()].copy_from_slice(meta);
        let timeout = self.timeout;
        // The loan comes back on the rare failure path only (a back-pressure timeout).
        #[allow(clippy::result_large_err)]
        let r = py.detach(|| pool.publish(raw, timeout));
        match r {
            Ok(seq) => Ok(seq),
            Err((e, raw)) => {
                *slot = Some(raw);
                Err(errors::publish(py, &e))
            }
        }
    }

    /// Leaves the topic (waiting briefly for subscribers to map arrays in flight). Raises
    /// `BufferError` while arrays over this publisher's blocks are alive.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let n = self.loans.load(Ordering::Acquire);
        if n > 0 {
            return Err(PyBufferError::new_err(format!(
                "cannot close: {n} loaned arrays of this publisher are alive"
            )));
        }
        let pool = self
            .inner
            .lock_py_attached(py)
            .unwrap_or_else(|p| p.into_inner())
            .take();
        py.detach(move || drop(pool));
        Ok(())
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }
    #[getter]
    fn type_name(&self) -> &str {
        &self.type_name
    }
    fn __repr__(&self) -> String {
        format!(
            "<shmbus.ArrayPublisher {:?} type={:?}>",
            self.name, self.type_name
        )
    }
}

/// Receives numpy arrays from an array topic, read in place.
#[pyclass(frozen, module = "shmbus._shmbus")]
pub(crate) struct ArraySubscriber {
    pub(crate) inner: Mutex<Option<PoolSubscriber>>,
    meta_size: usize,
    name: String,
    type_name: String,
    samples: Arc<AtomicUsize>,
}

/// A received array: holds its block until released (or until it and every view over it are
/// gone). `array(cls)` gives read-only numpy views over the block.
#[pyclass(frozen, module = "shmbus._shmbus")]
pub(crate) struct Sample {
    subscriber: Py<ArraySubscriber>,
    block: Mutex<Option<DetachedBlock>>,
    meta: Vec<u8>,
    seq: u64,
    views: AtomicUsize,
    samples: Arc<AtomicUsize>,
}

/// The base of one numpy view of a [`Sample`]: keeps the sample (so its block) alive.
#[pyclass(frozen, module = "shmbus._shmbus")]
pub(crate) struct SampleView {
    sample: Py<Sample>,
}

impl Drop for SampleView {
    fn drop(&mut self) {
        Python::attach(|py| {
            self.sample
                .bind(py)
                .get()
                .views
                .fetch_sub(1, Ordering::AcqRel)
        });
    }
}

impl Sample {
    fn give_back(&self, py: Python<'_>) {
        let block = self.block.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(b) = block {
            let s = self.subscriber.bind(py).get();
            let g = s
                .inner
                .lock_py_attached(py)
                .unwrap_or_else(|p| p.into_inner());
            if let Some(sub) = g.as_ref() {
                sub.release_detached(b);
            }
        }
    }
}

impl Drop for Sample {
    fn drop(&mut self) {
        Python::attach(|py| self.give_back(py));
        self.samples.fetch_sub(1, Ordering::AcqRel);
    }
}

fn block_result(
    r: Result<BlockReceived<'_>, BlockReceiveError>,
) -> Result<Option<(DetachedBlock, Vec<u8>)>, RecvError> {
    match r {
        Ok(BlockReceived::Block(b)) => Ok(Some(b.detach())),
        Ok(BlockReceived::Empty) => Ok(None),
        Ok(BlockReceived::Lagged(n)) => Err(RecvError::Lagged(n)),
        Ok(BlockReceived::Disconnected) => Err(RecvError::Disconnected),
        Err(BlockReceiveError::BadDescriptor { seq, reason }) => {
            Err(RecvError::BadDescriptor { seq, reason })
        }
        Err(BlockReceiveError::Receive(e)) => Err(receive_error(e)),
    }
}

impl ArraySubscriber {
    fn sample(slf: &Bound<'_, Self>, got: (DetachedBlock, Vec<u8>)) -> PyResult<Py<Sample>> {
        let this = slf.get();
        let (block, mut meta) = got;
        meta.truncate(this.meta_size);
        this.samples.fetch_add(1, Ordering::AcqRel);
        Py::new(
            slf.py(),
            Sample {
                subscriber: slf.clone().unbind(),
                seq: block.seq(),
                block: Mutex::new(Some(block)),
                meta,
                views: AtomicUsize::new(0),
                samples: this.samples.clone(),
            },
        )
    }
}

#[pymethods]
impl ArraySubscriber {
    #[new]
    #[pyo3(signature = (name, type_name, meta_size, qos))]
    fn new(
        py: Python<'_>,
        name: &str,
        type_name: &str,
        meta_size: usize,
        qos: Qos,
    ) -> PyResult<Self> {
        let full = format!("{ARRAY_TOPIC_PREFIX}{type_name}");
        let size = (DESCRIPTOR_SIZE + meta_size) as u64;
        let info = type_info(py, &full, size, 64, Codec::Pod)?;
        let mut opts = qos.options(py)?;
        opts.slot_size = Some(size as u32);
        let topic = open_topic(py, name, &info, &opts)?;
        let sub = py
            .detach(|| PoolSubscriber::new(topic, qos.history))
            .map_err(|e| errors::topic(py, &e))?;
        Ok(ArraySubscriber {
            inner: Mutex::new(Some(sub)),
            meta_size,
            name: name.to_owned(),
            type_name: full,
            samples: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The next array, waiting up to `timeout` seconds (`None`: as long as a publisher lives).
    /// The GIL is released while waiting and Ctrl-C interrupts the wait.
    #[pyo3(signature = (timeout=None))]
    fn recv(slf: &Bound<'_, Self>, timeout: Option<f64>) -> PyResult<Py<Sample>> {
        let py = slf.py();
        let this = slf.get();
        drop(locked(py, &this.inner, "subscriber")?);
        let got = wait(py, timeout, |slice| {
            let g = this.inner.lock().unwrap_or_else(|p| p.into_inner());
            match g.as_ref() {
                Some(sub) => block_result(sub.receive(Some(slice))),
                None => Err(RecvError::Disconnected),
            }
        })?;
        Self::sample(slf, got)
    }

    /// The next array if one is there now; raises `Empty` otherwise.
    fn try_recv(slf: &Bound<'_, Self>) -> PyResult<Py<Sample>> {
        let py = slf.py();
        let this = slf.get();
        let g = locked(py, &this.inner, "subscriber")?;
        let r = block_result(g.as_ref().expect("checked open").try_receive());
        drop(g);
        match r {
            Ok(Some(got)) => Self::sample(slf, got),
            Ok(None) => Err(errors::recv(py, &RecvError::Empty)),
            Err(e) => Err(errors::recv(py, &e)),
        }
    }

    /// Leaves the topic. Raises `BufferError` while samples of this subscriber are alive.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let n = self.samples.load(Ordering::Acquire);
        if n > 0 {
            return Err(PyBufferError::new_err(format!(
                "cannot close: {n} samples of this subscriber are alive"
            )));
        }
        drop(
            self.inner
                .lock_py_attached(py)
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        Ok(())
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }
    #[getter]
    fn type_name(&self) -> &str {
        &self.type_name
    }
    fn __repr__(&self) -> String {
        format!(
            "<shmbus.ArraySubscriber {:?} type={:?}>",
            self.name, self.type_name
        )
    }
}

#[pymethods]
impl Sample {
    /// A read-only `cls` view of the array (each call makes a new view; every view keeps the
    /// block held).
    fn array<'py>(slf: &Bound<'py, Self>, cls: &Bound<'py, PyType>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let g = this.block.lock().unwrap_or_else(|p| p.into_inner());
        let b = g
            .as_ref()
            .ok_or_else(|| errors::error(py, "Error", "this sample was released"))?;
        let (ptr, len, shape, typestr) =
            (b.as_ptr(), b.len(), b.shape().to_vec(), b.dtype().typestr());
        drop(g);
        this.views.fetch_add(1, Ordering::AcqRel);
        let owner = Bound::new(
            py,
            SampleView {
                sample: slf.clone().unbind(),
            },
        )?;
        let descr = PyArrayDescr::new(py, typestr)?;
        // SAFETY: the block is mapped while the `DetachedBlock` (kept by the sample, which the
        // view's base keeps alive) lives, and `release` refuses to give it back while views
        // exist; nobody writes it while it is held. The view is not writeable.
        unsafe { array_over(cls, descr, &shape, ptr, len, false, owner.into_any()) }
    }

    /// The metadata bytes the publisher sent with the array.
    #[getter]
    fn meta<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.meta)
    }
    /// The message's sequence number.
    #[getter]
    fn seq(&self) -> u64 {
        self.seq
    }
    /// numpy views of this sample alive now.
    #[getter]
    fn views(&self) -> usize {
        self.views.load(Ordering::Acquire)
    }
    /// Whether the block was given back.
    #[getter]
    fn released(&self) -> bool {
        self.block
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }
    /// Gives the block back to the publisher now. Raises `BufferError` while numpy views of it
    /// are alive (like `mmap.close`).
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        let n = self.views.load(Ordering::Acquire);
        if n > 0 {
            return Err(PyBufferError::new_err(format!(
                "cannot release: {n} numpy views of this sample are alive"
            )));
        }
        self.give_back(py);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Pod and bytes topics

fn postcard_varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn postcard_bytes(msg: &[u8]) -> Result<Vec<u8>, String> {
    let mut len: usize = 0;
    for (i, &b) in msg.iter().enumerate().take(10) {
        len |= usize::from(b & 0x7f)
            .checked_shl(7 * i as u32)
            .ok_or("length overflows")?;
        if b & 0x80 == 0 {
            let body = &msg[i + 1..];
            return body
                .get(..len)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| format!("{len} bytes announced, {} there", body.len()));
        }
    }
    Err("bad length prefix".into())
}

/// Publishes fixed-size messages (`codec="pod"`: the bytes of a numpy structured value laid
/// out like a `#[repr(C)]` struct) or byte strings (`codec="bytes"`: postcard `Vec<u8>`).
#[pyclass(frozen, module = "shmbus._shmbus")]
pub(crate) struct Publisher {
    inner: Mutex<Option<RawPublisher>>,
    size: usize,
    pod: bool,
    timeout: Option<Duration>,
    name: String,
    type_name: String,
}

#[pymethods]
impl Publisher {
    #[new]
    #[pyo3(signature = (name, type_name, codec, size, align, qos))]
    fn new(
        py: Python<'_>,
        name: &str,
        type_name: &str,
        codec: &str,
        size: usize,
        align: usize,
        qos: Qos,
    ) -> PyResult<Self> {
        let (info, opts) = message_topic(py, type_name, codec, size, align, &qos)?;
        let topic = open_topic(py, name, &info, &opts)?;
        let raw = RawPublisher::new(topic).map_err(|e| errors::topic(py, &e))?;
        Ok(Publisher {
            inner: Mutex::new(Some(raw)),
            size,
            pod: codec == "pod",
            timeout: qos.timeout(),
            name: name.to_owned(),
            type_name: type_name.to_owned(),
        })
    }

    /// Copies `data` into a slot and publishes it; returns the sequence number.
    fn send(&self, py: Python<'_>, data: &[u8]) -> PyResult<u64> {
        let encoded;
        let body: &[u8] = if self.pod {
            if data.len() != self.size {
                return Err(errors::error(
                    py,
                    "WrongDtype",
                    format!("{} bytes for a message of {}", data.len(), self.size),
                ));
            }
            data
        } else {
            let mut v = Vec::with_capacity(data.len() + 10);
            postcard_varint(data.len(), &mut v);
            v.extend_from_slice(data);
            encoded = v;
            &encoded
        };
        let mut g = locked(py, &self.inner, "publisher")?;
        let raw = g.as_mut().expect("checked open");
        let loan = raw.loan().map_err(|e| errors::loan(py, &e))?;
        let slot = raw.slot_mut(&loan);
        if self.pod {
            slot[..body.len()].copy_from_slice(body);
        } else {
            let cap = frame::capacity(slot.len());
            if body.len() > cap {
                raw.cancel(loan);
                return Err(errors::error(
                    py,
                    "OutOfSpace",
                    format!("a message of {} bytes in slots of {cap}", body.len()),
                ));
            }
            frame::body_mut(slot)[..body.len()].copy_from_slice(body);
            if let Err(e) = frame::set_len(slot, body.len()) {
                raw.cancel(loan);
                return Err(errors::error(py, "Error", e));
            }
        }
        let timeout = self.timeout;
        match py.detach(|| raw.publish(loan, timeout)) {
            Ok(seq) => Ok(seq),
            Err((e, loan)) => {
                raw.cancel(loan);
                Err(errors::publish(py, &e))
            }
        }
    }

    /// Publishes `data`, fixed-size messages back to back, as consecutive messages in one
    /// batch (one fence and one look for sleeping subscribers for all of them); returns the
    /// sequence number of the first. On a failure part way, the error says how many went out.
    fn send_many(&self, py: Python<'_>, data: &[u8]) -> PyResult<u64> {
        if !self.pod || self.size == 0 || data.len() % self.size != 0 {
            return Err(errors::error(
                py,
                "WrongDtype",
                format!(
                    "{} bytes are not a whole number of messages of {} bytes",
                    data.len(),
                    self.size
                ),
            ));
        }
        let (size, count) = (self.size, data.len() / self.size);
        let mut g = locked(py, &self.inner, "publisher")?;
        let raw = g.as_mut().expect("checked open");
        let timeout = self.timeout;
        let r = py.detach(|| {
            raw.publish_many(count, timeout, |i, slot| {
                slot[..size].copy_from_slice(&data[i * size..(i + 1) * size]);
            })
        });
        r.map_err(|(e, sent)| {
            let kind = match &e {
                PublishManyError::Publish(PublishError::Timeout) => "Timeout",
                PublishManyError::Publish(PublishError::UsedAfterFork(_))
                | PublishManyError::Loan(LoanError::UsedAfterFork(_)) => "UsedAfterFork",
                _ => "Error",
            };
            errors::error(py, kind, format!("{e} (after {sent} of {count} messages)"))
        })
    }

    /// Leaves the topic.
    fn close(&self, py: Python<'_>) {
        drop(
            self.inner
                .lock_py_attached(py)
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }
    #[getter]
    fn type_name(&self) -> &str {
        &self.type_name
    }
    fn __repr__(&self) -> String {
        format!(
            "<shmbus.Publisher {:?} type={:?}>",
            self.name, self.type_name
        )
    }
}

fn message_topic(
    py: Python<'_>,
    type_name: &str,
    codec: &str,
    size: usize,
    align: usize,
    qos: &Qos,
) -> PyResult<(TypeInfo, TopicOptions)> {
    let mut opts = qos.options(py)?;
    let info = match codec {
        "pod" => {
            if size == 0 || align == 0 || align > 64 || !align.is_power_of_two() {
                return Err(errors::error(py, "InvalidArgument", format!("size {size}, alignment {align}: need a size > 0 and a power-of-two alignment up to 64")));
            }
            opts.slot_size =
                Some(u32::try_from(size).map_err(|_| PyValueError::new_err("message too large"))?);
            type_info(py, type_name, size as u64, align as u64, Codec::Pod)?
        }
        "bytes" => {
            opts.default_slot_size = Some(256);
            type_info(py, type_name, 0, 1, Codec::Postcard)?
        }
        other => {
            return Err(PyValueError::new_err(format!(
                "codec {other:?}: 'pod' or 'bytes'"
            )))
        }
    };
    Ok((info, opts))
}

/// Receives messages of a Pod or bytes topic (copied out of the slot: they are small).
#[pyclass(frozen, module = "shmbus._shmbus")]
pub(crate) struct Subscriber {
    pub(crate) inner: Mutex<Option<RawSubscriber>>,
    size: usize,
    pod: bool,
    name: String,
    type_name: String,
}

impl Subscriber {
    fn take(
        &self,
        sub: &RawSubscriber,
        r: Result<Received, ReceiveError>,
    ) -> Result<Option<Got>, RecvError> {
        match r.map_err(receive_error)? {
            Received::Message(held) => {
                let seq = held.seq();
                let stamp = sub.published_at(&held);
                let slot = sub.slot(&held);
                let data = if self.pod {
                    Ok(slot[..self.size].to_vec())
                } else {
                    frame::message(slot)
                        .map_err(|e| RecvError::Corrupt(e.to_string()))
                        .and_then(|m| postcard_bytes(m).map_err(RecvError::Decode))
                };
                sub.release(held);
                Ok(Some((seq, data?, stamp)))
            }
            Received::Empty => Ok(None),
            Received::Lagged(n) => Err(RecvError::Lagged(n)),
            Received::Disconnected => Err(RecvError::Disconnected),
        }
    }
}

impl Subscriber {
    /// `max` checked for a batch: a fixed-size topic, at least 1, at most the ring's capacity
    /// (a batch cannot hold more).
    fn batch_max(&self, py: Python<'_>, max: usize) -> PyResult<usize> {
        if !self.pod {
            return Err(PyValueError::new_err(
                "recv_many is for fixed-size (dtype) messages; receive byte strings one by one",
            ));
        }
        if max == 0 {
            return Err(PyValueError::new_err("max must be at least 1"));
        }
        let g = locked(py, &self.inner, "subscriber")?;
        let cap = g
            .as_ref()
            .expect("checked open")
            .topic()
            .ring()
            .config()
            .capacity;
        Ok(max.min(cap as usize))
    }

    /// One batch of copies (see [`RawSubscriber::try_copy`]); `timeout`: wait that long for
    /// the first. `None` when nothing came.
    fn copy_batch(
        &self,
        sub: &RawSubscriber,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<Option<Batch>, RecvError> {
        let mut buf = vec![0u8; self.size];
        let mut data = Vec::with_capacity(self.size * max);
        let mut seqs = Vec::with_capacity(max);
        let mut each = |bytes: &[u8], seq: u64, _: Option<u64>| {
            data.extend_from_slice(bytes);
            seqs.push(seq);
        };
        let r = match timeout {
            None => sub.try_copy(&mut buf, max, &mut each),
            Some(t) => sub.copy(&mut buf, max, Some(t), &mut each),
        };
        match r.map_err(receive_error)? {
            Copied::Messages(_) => Ok(Some((data, seqs))),
            Copied::Empty => Ok(None),
            Copied::Lagged(n) => Err(RecvError::Lagged(n)),
            Copied::Disconnected => Err(RecvError::Disconnected),
        }
    }
}

/// Sequence number, message bytes, publish time.
type Got = (u64, Vec<u8>, Option<u64>);

/// A batch of fixed-size messages back to back, and their sequence numbers.
type Batch = (Vec<u8>, Vec<u64>);

type Message<'py> = (u64, Bound<'py, PyBytes>, Option<u64>);

#[pymethods]
impl Subscriber {
    #[new]
    #[pyo3(signature = (name, type_name, codec, size, align, qos))]
    fn new(
        py: Python<'_>,
        name: &str,
        type_name: &str,
        codec: &str,
        size: usize,
        align: usize,
        qos: Qos,
    ) -> PyResult<Self> {
        let (info, opts) = message_topic(py, type_name, codec, size, align, &qos)?;
        let topic = open_topic(py, name, &info, &opts)?;
        let raw = RawSubscriber::new(topic, qos.history).map_err(|e| errors::topic(py, &e))?;
        Ok(Subscriber {
            inner: Mutex::new(Some(raw)),
            size,
            pod: codec == "pod",
            name: name.to_owned(),
            type_name: type_name.to_owned(),
        })
    }

    /// `(seq, bytes, published_at_ns or None)` of the next message, waiting up to `timeout`
    /// seconds (`None`: as long as a publisher lives); GIL released, Ctrl-C honoured.
    #[pyo3(signature = (timeout=None))]
    fn recv<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Message<'py>> {
        drop(locked(py, &self.inner, "subscriber")?);
        let (seq, data, stamp) = wait(py, timeout, |slice| {
            let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            match g.as_ref() {
                Some(sub) => self.take(sub, sub.receive(Some(slice))),
                None => Err(RecvError::Disconnected),
            }
        })?;
        Ok((seq, PyBytes::new(py, &data), stamp))
    }

    /// The next message if one is there now; raises `Empty` otherwise.
    fn try_recv<'py>(&self, py: Python<'py>) -> PyResult<Message<'py>> {
        let g = locked(py, &self.inner, "subscriber")?;
        let sub = g.as_ref().expect("checked open");
        match self.take(sub, sub.try_receive()) {
            Ok(Some((seq, data, stamp))) => Ok((seq, PyBytes::new(py, &data), stamp)),
            Ok(None) => Err(errors::recv(py, &RecvError::Empty)),
            Err(e) => Err(errors::recv(py, &e)),
        }
    }

    /// `(bytes, seqs)`: every message there is, up to `max`, copied out back to back (fixed-size
    /// messages only), with one cursor update; waits up to `timeout` seconds for the first
    /// (`None`: as long as a publisher lives); GIL released, Ctrl-C honoured.
    #[pyo3(signature = (max, timeout=None))]
    fn recv_many<'py>(
        &self,
        py: Python<'py>,
        max: usize,
        timeout: Option<f64>,
    ) -> PyResult<(Bound<'py, PyBytes>, Vec<u64>)> {
        let max = self.batch_max(py, max)?;
        let (data, seqs) = wait(py, timeout, |slice| {
            let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            match g.as_ref() {
                Some(sub) => self.copy_batch(sub, max, Some(slice)),
                None => Err(RecvError::Disconnected),
            }
        })?;
        Ok((PyBytes::new(py, &data), seqs))
    }

    /// [`recv_many`](Self::recv_many) without waiting; raises `Empty` when nothing is there.
    fn try_recv_many<'py>(
        &self,
        py: Python<'py>,
        max: usize,
    ) -> PyResult<(Bound<'py, PyBytes>, Vec<u64>)> {
        let max = self.batch_max(py, max)?;
        let g = locked(py, &self.inner, "subscriber")?;
        let sub = g.as_ref().expect("checked open");
        match self.copy_batch(sub, max, None) {
            Ok(Some((data, seqs))) => Ok((PyBytes::new(py, &data), seqs)),
            Ok(None) => Err(errors::recv(py, &RecvError::Empty)),
            Err(e) => Err(errors::recv(py, &e)),
        }
    }

    /// Leaves the topic.
    fn close(&self, py: Python<'_>) {
        drop(
            self.inner
                .lock_py_attached(py)
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }
    #[getter]
    fn type_name(&self) -> &str {
        &self.type_name
    }
    fn __repr__(&self) -> String {
        format!(
            "<shmbus.Subscriber {:?} type={:?}>",
            self.name, self.type_name
        )
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ArrayPublisher>()?;
    m.add_class::<ArraySubscriber>()?;
    m.add_class::<Loan>()?;
    m.add_class::<Sample>()?;
    m.add_class::<SampleView>()?;
    m.add_class::<Publisher>()?;
    m.add_class::<Subscriber>()?;
    Ok(())
}

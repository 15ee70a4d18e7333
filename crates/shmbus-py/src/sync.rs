//! Named locks and signals from Python, on the same segments as Rust's `shmbus::Mutex<u64>`,
//! `shmbus::Semaphore` and `shmbus::Event`.
//!
//! A Python `Lock` is the Rust `Mutex<u64>` of the same name: the segment records the type
//! `u64` (8 bytes, align 8, Pod), so either side opens what the other created. Python does not
//! read the value; a Rust user of the same name may keep a counter or generation in it.

use std::sync::Mutex;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::MutexExt;
use shmbus::{EventMode, Semaphore as RsSemaphore, SyncOptions};
use shmbus_core::layout::TypeInfo;
use shmbus_core::name::Name;
use shmbus_core::named::{RawEvent, RawMutex};
use shmbus_core::segment::Lifetime;
use shmbus_core::sync::{Acquired, LockError, TryLockError};

use crate::errors;

/// How long one wait lasts before Python gets to run its signal handlers (Ctrl-C).
const SLICE: Duration = Duration::from_millis(50);

/// A deadline from a Python timeout in seconds (`None` or negative: none).
pub(crate) fn deadline(timeout: Option<f64>) -> Option<Instant> {
    timeout
        .filter(|t| *t >= 0.0)
        .map(|t| Instant::now() + Duration::from_secs_f64(t))
}

pub(crate) fn slice(deadline: Option<Instant>) -> Duration {
    deadline.map_or(SLICE, |d| {
        d.saturating_duration_since(Instant::now()).min(SLICE)
    })
}

pub(crate) fn expired(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// Waits in slices with the GIL released, checking for signals between them, until `attempt`
/// says yes (`true`) or the deadline passes (`false`).
fn sliced(
    py: Python<'_>,
    timeout: Option<f64>,
    attempt: impl Fn(Duration) -> bool + Sync,
) -> PyResult<bool> {
    let d = deadline(timeout);
    loop {
        let s = slice(d);
        if py.detach(|| attempt(s)) {
            return Ok(true);
        }
        py.check_signals()?;
        if expired(d) {
            return Ok(false);
        }
    }
}

fn options(mode: u32, persistent: bool) -> SyncOptions {
    SyncOptions::new().mode(mode).persistent(persistent)
}

fn open_error(py: Python<'_>, e: &shmbus::OpenError) -> PyErr {
    match e {
        shmbus::OpenError::Name(n) => errors::name(py, n),
        shmbus::OpenError::Segment(s) => errors::segment(py, s),
        _ => errors::error(py, "Error", e),
    }
}

// ---------------------------------------------------------------------------------------------
// Lock

/// Who holds a `Lock` through this object.
#[derive(Clone, Copy, Debug)]
struct Holding {
    thread: ThreadId,
    pid: u32,
    owner_died: bool,
}

impl Holding {
    fn is_current(&self) -> bool {
        self.thread == std::thread::current().id() && self.pid == std::process::id()
    }
}

/// A named, robust, process-shared lock: the Rust `shmbus::Mutex<u64>` of the same name.
#[pyclass(frozen, module = "shmbus._shmbus")]
pub(crate) struct Lock {
    raw: RawMutex,
    timeout: Option<f64>,
    holding: Mutex<Option<Holding>>,
}

impl Drop for Lock {
    fn drop(&mut self) {
        let h = *self.holding.get_mut().unwrap_or_else(|p| p.into_inner());
        if h.is_some_and(|h| h.is_current()) {
            // SAFETY: `holding` records a successful lock through `self.raw` on this thread, in
            // this process, not released since (release clears it), and no guard exists (this
            // type makes none).
            unsafe { self.raw.unlock_raw() };
        }
    }
}

impl Lock {
    fn took(&self, py: Python<'_>, acquired: Acquired) -> PyResult<bool> {
        let owner_died = acquired == Acquired::OwnerDied;
        *self
            .holding
            .lock_py_attached(py)
            .unwrap_or_else(|p| p.into_inner()) = Some(Holding {
            thread: std::thread::current().id(),
            pid: std::process::id(),
            owner_died,
        });
        if owner_died {
            let cls = py.import("shmbus._errors")?.getattr("OwnerDiedWarning")?;
            let msg = std::ffi::CString::new(format!(
                "the previous holder of lock {:?} died holding it: repair what it guards, then \
                 call mark_consistent() before release()",
                self.raw.name().as_str()
            ))
            .expect("no NUL in a shmbus name");
            PyErr::warn(py, &cls, &msg, 2)?;
        }
        Ok(true)
    }

    fn current(&self, py: Python<'_>) -> Option<Holding> {
        let g = self
            .holding
            .lock_py_attached(py)
            .unwrap_or_else(|p| p.into_inner());
        g.filter(Holding::is_current)
    }
}

#[pymethods]
impl Lock {
    #[new]
    #[pyo3(signature = (name, create=true, timeout=None, mode=0o600, persistent=false))]
    fn new(
        py: Python<'_>,
        name: &str,
        create: bool,
        timeout: Option<f64>,
        mode: u32,
        persistent: bool,
    ) -> PyResult<Self> {
        let n = Name::new(name).map_err(|e| errors::name(py, &e))?;
        let ty = TypeInfo::pod::<u64>();
        let lifetime = if persistent {
            Lifetime::Persistent
        } else {
            Lifetime::Scoped
        };
        let raw = py
            .detach(|| {
                if create {
                    RawMutex::open_or_create(&n, &ty, 8, |_| {}, mode, lifetime)
                } else {
                    RawMutex::open(&n, &ty)
                }
            })
            .map_err(|e| errors::segment(py, &e))?;
        Ok(Lock {
            raw,
            timeout,
            holding: Mutex::new(None),
        })
    }

    /// Acquires the lock; `True` once held, `False` if `timeout` seconds (default: the one given
    /// at construction; `None`: no limit) passed or `blocking` is false and it is held.
    #[pyo3(signature = (blocking=true, timeout=None))]
    fn acquire(&self, py: Python<'_>, blocking: bool, timeout: Option<f64>) -> PyResult<bool> {
        if !blocking {
            return match self.raw.try_lock_raw() {
                Ok(a) => self.took(py, a),
                Err(TryLockError::WouldBlock) => Ok(false),
                Err(TryLockError::NotRecoverable) => Err(errors::error(
                    py,
                    "NotRecoverable",
                    LockError::NotRecoverable,
                )),
                Err(e) => Err(errors::error(py, "Error", e)),
            };
        }
        let d = deadline(timeout.or(self.timeout));
        loop {
            let s = slice(d);
            match py.detach(|| self.raw.lock_raw(Some(s))) {
                Ok(a) => return self.took(py, a),
                Err(LockError::Timeout) => {}
                Err(e @ LockError::NotRecoverable) => {
                    return Err(errors::error(py, "NotRecoverable", e))
                }
                Err(e @ LockError::Deadlock) => return Err(errors::error(py, "Deadlock", e)),
                Err(e) => return Err(errors::error(py, "Error", e)),
            }
            py.check_signals()?;
            if expired(d) {
                return Ok(false);
            }
        }
    }

    /// Releases the lock this thread holds. After an owner-died acquire without
    /// `mark_consistent()`, the lock becomes not recoverable for every process.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        let mut g = self
            .holding
            .lock_py_attached(py)
            .unwrap_or_else(|p| p.into_inner());
        match *g {
            Some(h) if h.is_current() => {
                // SAFETY: `holding` records a successful lock through `self.raw` on this thread,
                // in this process, not released since (it is cleared right here, under the same
                // lock), and this type makes no guards.
                unsafe { self.raw.unlock_raw() };
                *g = None;
                Ok(())
            }
            _ => Err(PyRuntimeError::new_err(
                "release of a shmbus.Lock this thread does not hold",
            )),
        }
    }

    /// Marks what the lock guards repaired after an acquire that found the previous holder dead
    /// (`owner_died`), so that `release()` leaves a normal lock. Does nothing otherwise.
    fn mark_consistent(&self, py: Python<'_>) -> PyResult<()> {
        let mut g = self
            .holding
            .lock_py_attached(py)
            .unwrap_or_else(|p| p.into_inner());
        match g.as_mut() {
            Some(h) if h.is_current() => {
                if h.owner_died {
                    // SAFETY: this thread holds the mutex through `self.raw` (`holding`).
                    unsafe { self.raw.make_consistent_raw() };
                    h.owner_died = false;
                }
                Ok(())
            }
            _ => Err(PyRuntimeError::new_err(
                "mark_consistent() on a shmbus.Lock this thread does not hold",
            )),
        }
    }

    /// Whether this thread holds the lock and the previous holder died holding it (until
    /// `mark_consistent()` or `release()`).
    #[getter]
    fn owner_died(&self, py: Python<'_>) -> bool {
        self.current(py).is_some_and(|h| h.owner_died)
    }

    /// Whether this thread holds the lock through this object.
    fn held(&self, py: Python<'_>) -> bool {
        self.current(py).is_some()
    }

    #[getter]
    fn name(&self) -> &str {
        self.raw.name().as_str()
    }

    #[getter]
    fn created(&self) -> bool {
        self.raw.created()
    }

    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        let py = slf.py();
        let t = slf.get().timeout;
        if !slf.get().acquire(py, true, t)? {
            return Err(errors::error(
                py,
                "Timeout",
                format!("timed out waiting for lock {:?}", slf.get().name()),
            ));
        }
        Ok(slf)
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.release(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!("shmbus.Lock({:?})", self.raw.name().as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Semaphore

/// A named counting semaphore: the Rust `shmbus::Semaphore` of the same name.
#[pyclass(frozen, module = "shmbus._shmbus")]
pub(crate) struct Semaphore {
    inner: RsSemaphore,
    timeout: Option<f64>,
}

#[pymethods]
impl Semaphore {
    #[new]
    #[pyo3(signature = (name, value=1, create=true, timeout=None, mode=0o600, persistent=false))]
    fn new(
        py: Python<'_>,
        name: &str,
        value: u32,
        create: bool,
        timeout: Option<f64>,
        mode: u32,
        persistent: bool,
    ) -> PyResult<Self> {
        let inner = py
            .detach(|| {
                if create {
                    RsSemaphore::open_or_create_with(name, value, options(mode, persistent))
                } else {
                    RsSemaphore::open(name)
                }
            })
            .map_err(|e| open_error(py, &e))?;
        Ok(Semaphore { inner, timeout })
    }

    /// Takes a unit; `True` once taken, `False` if `timeout` seconds (default: the one given at
    /// construction; `None`: no limit) passed or `blocking` is false and none was left.
    #[pyo3(signature = (blocking=true, timeout=None))]
    fn acquire(&self, py: Python<'_>, blocking: bool, timeout: Option<f64>) -> PyResult<bool> {
        if !blocking {
            return Ok(self.inner.try_wait());
        }
        sliced(py, timeout.or(self.timeout), |s| self.inner.wait_timeout(s))
    }

    /// Gives back `n` units.
    #[pyo3(signature = (n=1))]
    fn release(&self, py: Python<'_>, n: u32) -> PyResult<()> {
        for _ in 0..n {
            self.inner
                .post()
                .map_err(|e| errors::error(py, "InvalidArgument", e))?;
        }
        Ok(())
    }

    /// Units available now (a snapshot).
    #[getter]
    fn value(&self) -> u32 {
        self.inner.value()
    }

    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    #[getter]
    fn created(&self) -> bool {
        self.inner.created()
    }

    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        let py = slf.py();
        let t = slf.get().timeout;
        if !slf.get().acquire(py, true, t)? {
            return Err(errors::error(
                py,
                "Timeout",
                format!("timed out waiting for semaphore {:?}", slf.get().name()),
            ));
        }
        Ok(slf)
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.release(py, 1)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "shmbus.Semaphore({:?}, value={})",
            self.inner.name(),
            self.inner.value()
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Event

/// A named event, auto- or manual-reset: the Rust `shmbus::Event` of the same name. Held as
/// the core's `RawEvent` (what `shmbus::Event` wraps) so that `shmbus.wait` can sleep on it.
#[pyclass(frozen, module = "shmbus._shmbus")]
pub(crate) struct Event {
    pub(crate) inner: RawEvent,
}

#[pymethods]
impl Event {
    #[new]
    #[pyo3(signature = (name, auto_reset=false, create=true, initially_set=false, mode=0o600, persistent=false))]
    fn new(
        py: Python<'_>,
        name: &str,
        auto_reset: bool,
        create: bool,
        initially_set: bool,
        mode: u32,
        persistent: bool,
    ) -> PyResult<Self> {
        let em = if auto_reset {
            EventMode::AutoReset
        } else {
            EventMode::ManualReset
        };
        let n = Name::new(name).map_err(|e| errors::name(py, &e))?;
        let lifetime = if persistent {
            Lifetime::Persistent
        } else {
            Lifetime::Scoped
        };
        let inner = py
            .detach(|| {
                if create {
                    RawEvent::open_or_create(&n, em, initially_set, mode, lifetime)
                } else {
                    RawEvent::open(&n)
                }
            })
            .map_err(|e| errors::segment(py, &e))?;
        Ok(Event { inner })
    }

    /// Sets the event: wakes every waiter (manual-reset, which stays set) or one waiter, or the
    /// next to wait (auto-reset).
    fn set(&self) {
        self.inner.set();
    }

    /// Clears the event.
    fn clear(&self) {
        self.inner.reset();
    }

    /// Whether it is set (a snapshot; does not consume an auto-reset event).
    fn is_set(&self) -> bool {
        self.inner.is_set()
    }

    /// Waits until the event is set, at most `timeout` seconds (`None`: no limit); `True` if it
    /// was (an auto-reset event is consumed), `False` on timeout.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        sliced(py, timeout, |s| self.inner.wait(Some(s)))
    }

    /// Whether it is an auto-reset event.
    #[getter]
    fn auto_reset(&self) -> bool {
        self.inner.event_mode() == EventMode::AutoReset
    }

    #[getter]
    fn name(&self) -> &str {
        self.inner.name().as_str()
    }

    #[getter]
    fn created(&self) -> bool {
        self.inner.created()
    }

    fn __repr__(&self) -> String {
        format!(
            "shmbus.Event({:?}, auto_reset={})",
            self.inner.name().as_str(),
            if self.auto_reset() { "True" } else { "False" }
        )
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Lock>()?;
    m.add_class::<Semaphore>()?;
    m.add_class::<Event>()?;
    Ok(())
}

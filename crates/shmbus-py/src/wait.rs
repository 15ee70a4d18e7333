//! `shmbus.wait`: one thread sleeping on many subscribers, queues and events at once (the core's
//! `RawWaitSet`), in slices with the GIL released and signals checked in between.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use shmbus_core::named::RawEvent;
use shmbus_core::pool::PoolSubscriber;
use shmbus_core::queue::RawQueue;
use shmbus_core::topic::RawSubscriber;
use shmbus_core::waitset::{RawWaitSet, Source, WaitSetError};

use crate::array_queue::RawArrayQueue;
use crate::errors;
use crate::sync::Event;
use crate::topic::{ArraySubscriber, Subscriber};
use crate::work::RawWorkQueue;

/// How long one sleep lasts at most before signals are checked (as other blocking calls do).
const SLICE: Duration = Duration::from_millis(50);

/// One object to wait on, borrowed from its Python handle.
enum Item<'a> {
    Sub(&'a Mutex<Option<RawSubscriber>>),
    Pool(&'a Mutex<Option<PoolSubscriber>>),
    Queue(&'a RawQueue),
    Event(&'a RawEvent),
}

impl Item<'_> {
    /// The address of the handle's lock, for locking each one once and in one global order.
    fn lock_addr(&self) -> Option<usize> {
        match self {
            Item::Sub(m) => Some(std::ptr::from_ref(*m) as usize),
            Item::Pool(m) => Some(std::ptr::from_ref(*m) as usize),
            Item::Queue(_) | Item::Event(_) => None,
        }
    }
}

enum Guard<'a> {
    Sub(MutexGuard<'a, Option<RawSubscriber>>),
    Pool(MutexGuard<'a, Option<PoolSubscriber>>),
}

fn wait_error(py: Python<'_>, e: &WaitSetError) -> PyErr {
    match e {
        WaitSetError::UsedAfterFork(_) => errors::error(py, "UsedAfterFork", e),
        _ => errors::error(py, "Error", e),
    }
}

/// One slice of the wait, without the GIL: locks every subscriber handle (once each, in address
/// order, so that two threads waiting on overlapping lists cannot deadlock), attaches
/// everything to a fresh set, and waits at most `slice`. Returns the indices of the ready items
/// (a closed handle counts as ready: using it raises at once).
fn wait_slice(items: &[Item<'_>], slice: Duration) -> Result<Vec<usize>, WaitSetError> {
    let mut order: Vec<usize> = (0..items.len())
        .filter(|&i| items[i].lock_addr().is_some())
        .collect();
    order.sort_by_key(|&i| items[i].lock_addr());
    order.dedup_by_key(|i| items[*i].lock_addr());
    let mut guards: Vec<(usize, Guard<'_>)> = Vec::with_capacity(order.len());
    for i in order {
        let addr = items[i].lock_addr();
        let g = match &items[i] {
            Item::Sub(m) => Guard::Sub(m.lock().unwrap_or_else(|p| p.into_inner())),
            Item::Pool(m) => Guard::Pool(m.lock().unwrap_or_else(|p| p.into_inner())),
            Item::Queue(_) | Item::Event(_) => unreachable!("only handles with a lock"),
        };
        guards.push((addr.unwrap_or_default(), g));
    }
    let guard_of = |addr: usize| {
        guards
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|(_, g)| g)
            .expect("every lock was taken")
    };
    let mut set = RawWaitSet::new()?;
    let mut keys = Vec::with_capacity(items.len());
    let mut closed = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let source = match item {
            Item::Queue(q) => Some(Source::Queue(q)),
            Item::Event(e) => Some(Source::Event(e)),
            Item::Sub(_) | Item::Pool(_) => match guard_of(item.lock_addr().unwrap_or_default()) {
                Guard::Sub(g) => g.as_ref().map(Source::Subscriber),
                Guard::Pool(g) => g.as_ref().map(Source::Pool),
            },
        };
        match source {
            Some(s) => keys.push((set.attach(s)?, i)),
            None => closed.push(i),
        }
    }
    if !closed.is_empty() {
        return Ok(closed);
    }
    let ready = set.wait(Some(slice))?;
    let mut out: Vec<usize> = ready
        .iter()
        .filter_map(|(k, _)| keys.iter().find(|(key, _)| key == k).map(|(_, i)| *i))
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// Waits until at least one of `objects` is ready, at most `timeout` seconds (`None`: no limit);
/// returns the indices of those that are (empty: the timeout passed).
#[pyfunction]
#[pyo3(signature = (objects, timeout=None))]
pub(crate) fn wait(
    py: Python<'_>,
    objects: Vec<Bound<'_, PyAny>>,
    timeout: Option<f64>,
) -> PyResult<Vec<usize>> {
    let mut items = Vec::with_capacity(objects.len());
    for o in &objects {
        let item = if let Ok(s) = o.cast::<Subscriber>() {
            Item::Sub(&s.get().inner)
        } else if let Ok(s) = o.cast::<ArraySubscriber>() {
            Item::Pool(&s.get().inner)
        } else if let Ok(q) = o.cast::<RawWorkQueue>() {
            Item::Queue(q.get().raw.as_ref())
        } else if let Ok(q) = o.cast::<RawArrayQueue>() {
            Item::Queue(q.get().raw.as_ref())
        } else if let Ok(e) = o.cast::<Event>() {
            Item::Event(&e.get().inner)
        } else {
            return Err(PyTypeError::new_err(format!(
                "shmbus.wait takes subscribers, queues and events, not {}",
                o.get_type().name()?
            )));
        };
        items.push(item);
    }
    let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
    loop {
        let slice = deadline.map_or(SLICE, |d| {
            d.saturating_duration_since(Instant::now()).min(SLICE)
        });
        let ready = py
            .detach(|| wait_slice(&items, slice))
            .map_err(|e| wait_error(py, &e))?;
        if !ready.is_empty() {
            return Ok(ready);
        }
        py.check_signals()?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(ready);
        }
    }
}

//! [`WaitSet`]: one thread waiting on many subscribers, queues, events and timers at once.

use std::fmt;
use std::time::{Duration, Instant};

pub use shmbus_core::waitset::{Key, Readiness, WaitSetError};
use shmbus_core::waitset::{RawWaitSet, Source, MAX_ATTACHMENTS};

pub(crate) mod sealed {
    /// What a [`WaitSet`](super::WaitSet) needs of an attachment: the core's view of it.
    pub trait Sealed {
        fn source(&self) -> shmbus_core::waitset::Source<'_>;
    }
}

/// What a [`WaitSet`] can wait on: [`Subscriber`](crate::Subscriber),
/// [`SerdeSubscriber`](crate::SerdeSubscriber), [`ArraySubscriber`](crate::ArraySubscriber),
/// the consumer side of [`Queue`](crate::Queue), [`SerdeQueue`](crate::SerdeQueue) and
/// [`ArrayQueue`](crate::ArrayQueue), and [`Event`](crate::Event). Sealed: shmbus implements it.
///
/// # Examples
///
/// ```
/// use shmbus::{Event, EventMode, Waitable};
///
/// fn is_waitable<W: Waitable>(_: &W) {}
/// # let name = format!("doc-waitable-{}", std::process::id());
/// let stop = Event::open_or_create(&name, EventMode::ManualReset, false)?;
/// is_waitable(&stop);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Waitable: sealed::Sealed {}

impl<W: sealed::Sealed> Waitable for W {}

/// One thread's wait on many subscribers, queue consumers, events, deadlines and intervals: it
/// sleeps until any of them is ready, and [`wait`](Self::wait) returns every one that is, so
/// none starves another.
///
/// - A subscriber is ready when a receive would find something (a message, or a lag report);
///   it is reported [`Readiness::Disconnected`] when every publisher it saw is gone (dead or
///   left) and it read everything, as its `recv` would return `Disconnected`.
/// - A queue is ready when an item is waiting, and disconnected when it is closed and drained.
///   Several consumers may wait on one queue: being ready is a hint, the get that follows may
///   find the item taken by another ([`try_get`](crate::Queue::try_get) tells).
/// - A manual-reset [`Event`](crate::Event) is ready while set. An auto-reset event's set is
///   consumed by the wait that reports it: the set was the one waiter it let through.
/// - A deadline is ready once, then detaches itself; an interval is ready once per period.
///
/// Waiting costs nothing to publishers while nobody sleeps. A sleeping set is counted in as a
/// sleeper on every topic, queue and event it holds, exactly as a blocked receiver is, and
/// counted out before `wait` returns: detaching, or dropping the set, leaves nothing behind.
/// It sleeps on all their futex words at once with `futex_waitv` (Linux 5.16 or newer), in
/// slices of at most 50 ms to look for dead peers, as blocked receivers do. It holds at most
/// [`MAX_ATTACHMENTS`](Self::MAX_ATTACHMENTS) subscribers, queues and events.
///
/// The set borrows what it waits on; receive from it as usual once `wait` returned.
///
/// # Examples
///
/// ```
/// use shmbus::{Event, EventMode, QueueBuilder, Readiness, Topic, WaitSet};
/// use std::time::Duration;
///
/// # let n = std::process::id();
/// # let (poses, jobs, stop) = (format!("doc-ws-poses-{n}"), format!("doc-ws-jobs-{n}"), format!("doc-ws-stop-{n}"));
/// let mut publisher = Topic::builder(&poses).publisher::<[f32; 3]>()?;
/// let subscriber = Topic::builder(&poses).subscriber::<[f32; 3]>()?;
/// let queue = QueueBuilder::new(&jobs).open::<u64>()?;
/// let stop = Event::open_or_create(&stop, EventMode::ManualReset, false)?;
///
/// let mut set = WaitSet::new()?;
/// let pose = set.attach(&subscriber)?;
/// let job = set.attach(&queue)?;
/// let halt = set.attach(&stop)?;
///
/// publisher.send([1.0, 2.0, 3.0])?;
/// queue.put(42)?;
/// let ready = set.wait_timeout(Duration::from_secs(1))?;
/// assert!(ready.contains(pose) && ready.contains(job) && !ready.contains(halt));
/// assert_eq!(*subscriber.try_recv()?, [1.0, 2.0, 3.0]);
/// assert_eq!(queue.try_get()?, 42);
///
/// stop.set();
/// assert_eq!(set.wait()?.readiness(halt), Some(Readiness::Ready));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct WaitSet<'a> {
    raw: RawWaitSet<'a>,
}

impl fmt::Debug for WaitSet<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitSet")
            .field("attachments", &self.raw.len())
            .finish()
    }
}

impl<'a> WaitSet<'a> {
    /// Most subscribers, queues and events one set holds (the kernel's limit for
    /// `futex_waitv`); deadlines and intervals do not count.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(shmbus::WaitSet::MAX_ATTACHMENTS, 128);
    /// ```
    pub const MAX_ATTACHMENTS: usize = MAX_ATTACHMENTS;

    /// An empty set.
    ///
    /// # Errors
    ///
    /// [`WaitSetError::Unsupported`] on a kernel without `futex_waitv` (before Linux 5.16).
    ///
    /// # Examples
    ///
    /// ```
    /// let set = shmbus::WaitSet::new()?;
    /// assert!(set.is_empty());
    /// # Ok::<(), shmbus::WaitSetError>(())
    /// ```
    pub fn new() -> Result<WaitSet<'a>, WaitSetError> {
        Ok(WaitSet {
            raw: RawWaitSet::new()?,
        })
    }

    /// Attaches a subscriber, queue or event; the key names it in what [`wait`](Self::wait)
    /// returns. The same object may be attached twice (two keys, both reported).
    ///
    /// # Errors
    ///
    /// [`WaitSetError::Full`] beyond [`MAX_ATTACHMENTS`](Self::MAX_ATTACHMENTS);
    /// [`WaitSetError::UsedAfterFork`] for an object made before a fork, in the child.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{Topic, WaitSet};
    /// # let name = format!("doc-ws-attach-{}", std::process::id());
    /// let sub = Topic::builder(&name).subscriber::<u32>()?;
    /// let mut set = WaitSet::new()?;
    /// let key = set.attach(&sub)?;
    /// assert!(set.contains(key));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn attach<W: Waitable>(&mut self, what: &'a W) -> Result<Key, WaitSetError> {
        self.raw.attach(what.source())
    }

    /// Attaches a deadline: ready once, at or after `at`, then detached by itself.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// let mut set = shmbus::WaitSet::new()?;
    /// let soon = set.attach_deadline(Instant::now() + Duration::from_millis(10));
    /// assert!(set.wait()?.contains(soon));
    /// assert!(!set.contains(soon)); // fired once, gone
    /// # Ok::<(), shmbus::WaitSetError>(())
    /// ```
    pub fn attach_deadline(&mut self, at: Instant) -> Key {
        self.raw
            .attach(Source::Deadline(at))
            .expect("a deadline sleeps on no word and always fits")
    }

    /// Attaches an interval: ready once per `period`, the first one `period` from now; periods
    /// missed while the caller was busy are not made up (one report, then the next period).
    ///
    /// # Errors
    ///
    /// [`WaitSetError::ZeroInterval`] for a zero period.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// let mut set = shmbus::WaitSet::new()?;
    /// let tick = set.attach_interval(Duration::from_millis(5))?;
    /// let start = Instant::now();
    /// for _ in 0..3 {
    ///     assert!(set.wait()?.contains(tick));
    /// }
    /// assert!(start.elapsed() >= Duration::from_millis(15));
    /// assert!(set.attach_interval(Duration::ZERO).is_err());
    /// # Ok::<(), shmbus::WaitSetError>(())
    /// ```
    pub fn attach_interval(&mut self, period: Duration) -> Result<Key, WaitSetError> {
        self.raw.attach(Source::Interval(period))
    }

    /// Detaches `key`; returns whether it was attached. The object is left as if it had never
    /// been attached.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{Event, EventMode, WaitSet};
    /// # let name = format!("doc-ws-detach-{}", std::process::id());
    /// let e = Event::open_or_create(&name, EventMode::ManualReset, true)?;
    /// let mut set = WaitSet::new()?;
    /// let key = set.attach(&e)?;
    /// assert!(set.detach(key));
    /// assert!(!set.detach(key));
    /// assert!(set.wait_timeout(std::time::Duration::from_millis(1))?.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn detach(&mut self, key: Key) -> bool {
        self.raw.detach(key)
    }

    /// Whether `key` is attached.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Instant;
    /// let mut set = shmbus::WaitSet::new()?;
    /// let key = set.attach_deadline(Instant::now());
    /// assert!(set.contains(key));
    /// # Ok::<(), shmbus::WaitSetError>(())
    /// ```
    pub fn contains(&self, key: Key) -> bool {
        self.raw.contains(key)
    }

    /// How many attachments the set holds.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut set = shmbus::WaitSet::new()?;
    /// set.attach_interval(Duration::from_secs(1))?;
    /// assert_eq!(set.len(), 1);
    /// # Ok::<(), shmbus::WaitSetError>(())
    /// ```
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Whether the set holds nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(shmbus::WaitSet::new()?.is_empty());
    /// # Ok::<(), shmbus::WaitSetError>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Waits, without limit, until something is ready; returns everything that is. An empty
    /// set waits forever (attach a deadline to bound it).
    ///
    /// # Errors
    ///
    /// [`WaitSetError::Unsupported`] if the kernel refuses `futex_waitv`;
    /// [`WaitSetError::UsedAfterFork`] in a forked child.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{Event, EventMode, WaitSet};
    /// # let name = format!("doc-ws-wait-{}", std::process::id());
    /// let e = Event::open_or_create(&name, EventMode::AutoReset, false)?;
    /// let mut set = WaitSet::new()?;
    /// let key = set.attach(&e)?;
    /// std::thread::scope(|s| {
    ///     s.spawn(|| e.set());
    ///     assert!(set.wait().unwrap().contains(key)); // consumed the set
    /// });
    /// assert!(!e.is_set());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait(&mut self) -> Result<Ready, WaitSetError> {
        self.raw.wait(None).map(|list| Ready { list })
    }

    /// Waits at most `timeout` until something is ready; returns everything that is (nothing:
    /// the timeout passed).
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{Topic, WaitSet};
    /// use std::time::Duration;
    /// # let name = format!("doc-ws-timeout-{}", std::process::id());
    /// let sub = Topic::builder(&name).subscriber::<u32>()?;
    /// let mut set = WaitSet::new()?;
    /// set.attach(&sub)?;
    /// assert!(set.wait_timeout(Duration::from_millis(20))?.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Ready, WaitSetError> {
        self.raw.wait(Some(timeout)).map(|list| Ready { list })
    }
}

/// What a [`WaitSet::wait`] found: the ready attachments, in the order they were attached.
///
/// # Examples
///
/// ```
/// use shmbus::{Readiness, WaitSet};
/// use std::time::Instant;
/// let mut set = WaitSet::new()?;
/// let now = set.attach_deadline(Instant::now());
/// let ready = set.wait()?;
/// assert_eq!(ready.len(), 1);
/// for (key, how) in &ready {
///     assert_eq!((key, how), (now, Readiness::Ready));
/// }
/// # Ok::<(), shmbus::WaitSetError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ready {
    list: Vec<(Key, Readiness)>,
}

impl Ready {
    /// Whether `key` is ready (or disconnected).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Instant;
    /// let mut set = shmbus::WaitSet::new()?;
    /// let key = set.attach_deadline(Instant::now());
    /// assert!(set.wait()?.contains(key));
    /// # Ok::<(), shmbus::WaitSetError>(())
    /// ```
    pub fn contains(&self, key: Key) -> bool {
        self.readiness(key).is_some()
    }

    /// How `key` was found, if it was.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{Readiness, Topic, WaitSet};
    /// # let name = format!("doc-ws-readiness-{}", std::process::id());
    /// let sub = Topic::builder(&name).subscriber::<u32>()?;
    /// let publisher = Topic::builder(&name).publisher::<u32>()?;
    /// let mut set = WaitSet::new()?;
    /// let key = set.attach(&sub)?;
    /// drop(publisher); // the only publisher left: nothing will come
    /// assert_eq!(set.wait()?.readiness(key), Some(Readiness::Disconnected));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn readiness(&self, key: Key) -> Option<Readiness> {
        self.list.iter().find(|(k, _)| *k == key).map(|(_, r)| *r)
    }

    /// The ready attachments and how, in the order they were attached.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Instant;
    /// let mut set = shmbus::WaitSet::new()?;
    /// let (a, b) = (set.attach_deadline(Instant::now()), set.attach_deadline(Instant::now()));
    /// let keys: Vec<_> = set.wait()?.iter().map(|(k, _)| k).collect();
    /// assert_eq!(keys, [a, b]);
    /// # Ok::<(), shmbus::WaitSetError>(())
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = (Key, Readiness)> + '_ {
        self.list.iter().copied()
    }

    /// How many attachments are ready.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut set = shmbus::WaitSet::new()?;
    /// assert_eq!(set.wait_timeout(Duration::from_millis(1))?.len(), 0);
    /// # Ok::<(), shmbus::WaitSetError>(())
    /// ```
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether nothing is ready (the wait timed out).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut set = shmbus::WaitSet::new()?;
    /// assert!(set.wait_timeout(Duration::from_millis(1))?.is_empty());
    /// # Ok::<(), shmbus::WaitSetError>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

impl<'r> IntoIterator for &'r Ready {
    type Item = (Key, Readiness);
    type IntoIter = std::iter::Copied<std::slice::Iter<'r, (Key, Readiness)>>;
    fn into_iter(self) -> Self::IntoIter {
        self.list.iter().copied()
    }
}

impl IntoIterator for Ready {
    type Item = (Key, Readiness);
    type IntoIter = std::vec::IntoIter<(Key, Readiness)>;
    fn into_iter(self) -> Self::IntoIter {
        self.list.into_iter()
    }
}
